//! Small helpers shared by every module: timestamps, serde defaults, number and name checks.

use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;

use crate::error::ApiError;

/// Now, as RFC 3339 UTC with second precision (`2026-01-15T10:03:22Z`).
pub fn now_rfc3339() -> String {
    rfc3339(OffsetDateTime::now_utc())
}

pub fn rfc3339(t: OffsetDateTime) -> String {
    let t = t.replace_nanosecond(0).unwrap_or(t);
    t.format(&Rfc3339).unwrap_or_else(|_| t.unix_timestamp().to_string())
}

/// A path as an error shows it: a relative one with the working directory it is taken from
/// (`./data (in /srv/hookline)`), since the daemon may run elsewhere than its operator thinks.
pub fn path_shown(path: &std::path::Path) -> String {
    match std::env::current_dir() {
        Ok(cwd) if path.is_relative() => format!("{} (in {})", path.display(), cwd.display()),
        _ => path.display().to_string(),
    }
}

/// A map behind a lock, shared by clones: for what an actor keeps that must outlive it and
/// the actor that supervises it (the leases in `Shared`: a registry that fails takes its
/// actors down, and the registry started in its place must find their leases).
pub struct SharedMap<K, V>(std::sync::Arc<std::sync::Mutex<std::collections::HashMap<K, V>>>);

impl<K, V> Default for SharedMap<K, V> {
    fn default() -> Self {
        SharedMap(Default::default())
    }
}

impl<K, V> Clone for SharedMap<K, V> {
    fn clone(&self) -> Self {
        SharedMap(self.0.clone())
    }
}

impl<K: std::hash::Hash + Eq, V: Clone> SharedMap<K, V> {
    pub fn get(&self, k: &K) -> Option<V> {
        self.map().get(k).cloned()
    }

    pub fn put(&self, k: K, v: V) {
        self.map().insert(k, v);
    }

    /// The value, taken out.
    pub fn take(&self, k: &K) -> Option<V> {
        self.map().remove(k)
    }

    fn map(&self) -> std::sync::MutexGuard<'_, std::collections::HashMap<K, V>> {
        self.0.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// Milliseconds since the Unix epoch.
pub fn now_millis() -> u64 {
    (OffsetDateTime::now_utc().unix_timestamp_nanos() / 1_000_000) as u64
}

pub fn millis_to_rfc3339(ms: u64) -> String {
    OffsetDateTime::from_unix_timestamp_nanos(ms as i128 * 1_000_000).map(rfc3339).unwrap_or_default()
}

/// An RFC 3339 time (as [`millis_to_rfc3339`] writes it) in Unix milliseconds; `None` if it
/// does not parse or is before 1970.
pub fn rfc3339_to_millis(t: &str) -> Option<u64> {
    let at = OffsetDateTime::parse(t, &Rfc3339).ok()?;
    u64::try_from(at.unix_timestamp_nanos() / 1_000_000).ok()
}

/// For `#[serde(default, skip_serializing_if = "crate::util::is_zero")]`: a counter that
/// starts at zero is not written until it moves.
pub fn is_zero(n: &u64) -> bool {
    *n == 0
}

/// For `#[serde(default, deserialize_with)]` on an `Option` of a PATCH body: the field is
/// absent (`None`, unchanged) or a value; `null` is a 422 naming the field, not silently
/// "unchanged" (it reads as "clear this", which a required setting cannot be).
pub fn present<'de, D: serde::Deserializer<'de>, T: serde::Deserialize<'de>>(d: D) -> Result<Option<T>, D::Error> {
    T::deserialize(d).map(Some)
}

/// For `#[serde(deserialize_with)]`: `null` for a field with a default means the default (a
/// GET view, or a client that writes every key, sends optional fields so).
pub fn null_as_default<'de, D: serde::Deserializer<'de>, T: serde::Deserialize<'de> + Default>(
    d: D,
) -> Result<T, D::Error> {
    Ok(<Option<T> as serde::Deserialize>::deserialize(d)?.unwrap_or_default())
}

/// Whether a parsed JSON number is an integer past 64 bits, which JSON parsing keeps only
/// as the nearest double (at or beyond 2^63 in size, and written without a fraction: a
/// double that large has none).
pub fn is_integer_past_64_bits(n: &serde_json::Number) -> bool {
    // 2^63: i64 ends just below it, and a positive integer up to 2^64 - 1 is parsed as u64.
    // Closed below: -2^63 - 1 parses to the double -2^63 (-2^63 itself parses as an i64).
    const TWO_63: f64 = 9_223_372_036_854_775_808.0;
    n.is_f64() && n.as_f64().is_some_and(|f| !(f > -TWO_63 && f < TWO_63))
}

/// A name given through the API (a bucket's, a webhook's, a connection's): 1 to `max`
/// characters, not blank (nor only zero-width characters), and none that could pass for
/// something else where a name is shown: no control characters (a newline in a log line or
/// an email header starts a line of the caller's choosing), no line or paragraph separators,
/// and no bidirectional overrides (which show text in another order than it is).
pub fn check_name(field: &'static str, name: &str, max: usize) -> Result<(), ApiError> {
    let invisible = |c: char| c.is_whitespace() || matches!(c, '\u{200B}'..='\u{200D}' | '\u{2060}' | '\u{FEFF}');
    if name.chars().all(invisible) || name.chars().count() > max {
        return Err(ApiError::validation(field, format!("must be 1–{max} characters and not blank")));
    }
    let misleading = |c: char| {
        c.is_control()
            || matches!(c, '\u{2028}' | '\u{2029}' | '\u{061C}' | '\u{200E}' | '\u{200F}')
            || matches!(c, '\u{202A}'..='\u{202E}' | '\u{2066}'..='\u{2069}')
    };
    if name.chars().any(misleading) {
        return Err(ApiError::validation(
            field,
            "must not hold control characters (a newline, a tab, …), line separators or bidirectional overrides",
        ));
    }
    // Names are unique (a bucket's in its namespace) as written: `"orders "` or
    // `"or\u{200B}ders"` beside `"orders"` would be a second bucket that lists and dashboards
    // show as the same. (The zero-width joiners of emoji and scripts stay allowed.)
    if name.starts_with(char::is_whitespace) || name.ends_with(char::is_whitespace) {
        return Err(ApiError::validation(field, "must not begin or end with white space"));
    }
    if name.chars().any(|c| matches!(c, '\u{200B}' | '\u{2060}' | '\u{FEFF}' | '\u{00AD}')) {
        return Err(ApiError::validation(
            field,
            "must not hold invisible characters (a zero-width space, a word joiner, a byte order mark, a soft hyphen)",
        ));
    }
    Ok(())
}

/// A duration as people read it in a message: `42 s`, `3.5 min`, `72.0 h`.
pub fn rough_duration(d: std::time::Duration) -> String {
    let secs = d.as_secs_f64();
    match secs {
        s if s >= 3600.0 => format!("{:.1} h", s / 3600.0),
        s if s >= 60.0 => format!("{:.1} min", s / 60.0),
        s => format!("{s:.0} s"),
    }
}

/// `word` with its indefinite article, for messages that name a kind of thing (`an image
/// property`, `a video property`, `an sms channel`): by its first letter's sound, which for
/// the words messages put here (type, channel and adapter names) is the vowel rule, and for
/// an initialism said letter by letter (`sms`) that letter's name.
pub fn with_article(word: &str) -> String {
    let vowel_sound = match word.to_ascii_lowercase().as_str() {
        "sms" => true,
        w => w.starts_with(['a', 'e', 'i', 'o', 'u']),
    };
    format!("{} {word}", if vowel_sound { "an" } else { "a" })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_article_fits_its_word() {
        for (word, said) in [
            ("image", "an image"),
            ("audio", "an audio"),
            ("email", "an email"),
            ("int", "an int"),
            ("sms", "an sms"),
            ("video", "a video"),
            ("text", "a text"),
            ("string", "a string"),
            ("webhook", "a webhook"),
            ("supabase", "a supabase"),
        ] {
            assert_eq!(with_article(word), said);
        }
    }

    #[test]
    fn integers_past_64_bits_are_told_by_their_parsed_double() {
        let past = |raw: &str| match serde_json::from_str::<serde_json::Value>(raw).unwrap() {
            serde_json::Value::Number(n) => is_integer_past_64_bits(&n),
            _ => unreachable!(),
        };
        for yes in ["-9223372036854775809", "9223372036854775808.0", "18446744073709551616"] {
            assert!(past(yes), "{yes}");
        }
        for no in ["-9223372036854775808", "18446744073709551615", "9007199254740993.5", "-1.5"] {
            assert!(!past(no), "{no}");
        }
    }

    #[test]
    fn names_that_show_as_something_else_are_refused() {
        for bad in
            ["", " \t", "\u{200B}\u{FEFF}", "a\nb", "a\u{1b}[31m", "a\u{2028}b", "evil\u{202E}gpj.exe", "x\u{2066}y"]
                .into_iter()
                .chain(["orders ", " orders", "or\u{200B}ders", "orders\u{A0}", "or\u{AD}ders", "\u{FEFF}orders"])
        {
            assert!(check_name("name", bad, 200).is_err(), "{bad:?}");
        }
        for good in ["media hook", "Médias ✓", "family 👨\u{200D}👩\u{200D}👧", "日本語", "می\u{200C}خواهم"]
        {
            assert!(check_name("name", good, 200).is_ok(), "{good:?}");
        }
        assert!(check_name("name", &"x".repeat(201), 200).is_err());
    }
}
