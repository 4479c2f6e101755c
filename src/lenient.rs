//! Upstream JSON read as senders write it, not as a strict parser would refuse it: a leading
//! byte order mark, and escapes of half a UTF-16 surrogate pair.
//!
//! It only mends bodies for serde_json (and parses the one mending serde_json's `Value` does
//! not cover); what the JSON means is the caller's. The raw body, which signatures are
//! checked against, is never changed.

/// RFC 8259 lets a parser ignore a leading UTF-8 byte order mark, and some senders (.NET's
/// default encoder among them) write one.
pub fn without_bom(body: &[u8]) -> &[u8] {
    body.strip_prefix(b"\xEF\xBB\xBF".as_slice()).unwrap_or(body)
}

/// What a lone surrogate escape becomes (see [`mend_lone_surrogates`]).
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Mend {
    /// U+FFFD, the replacement character, as a lossy UTF-16 decode reads it: what the
    /// payload holds.
    Replace,
    /// The escape's own text (`\uD83D`, its hex in capitals), with every backslash the
    /// string held doubled, so that the result tells a half from text that spells one
    /// (`"\\uD83D"`): what a dedup key is made of (see [`parse_keeping_lone_surrogates`]).
    Text,
}

/// JSON's grammar allows a `\u` escape of half a UTF-16 surrogate pair without its other half
/// (RFC 8259 §8.2), and JavaScript senders write one when they cut a string inside an emoji.
/// A Rust string cannot hold it, so serde_json refuses the whole body, and an upstream
/// answered 400 drops its event. So, once a body has failed to parse, each such escape is
/// rewritten as `mend` says: `None` when the body holds none. [`Mend::Replace`] keeps each
/// escape's length, so an error left is placed as in the body.
pub fn mend_lone_surrogates(body: &[u8], mend: Mend) -> Option<Vec<u8>> {
    /// The code unit of a `\uXXXX` escape starting at `at` (hex decoded as everywhere else,
    /// by `const_hex`: four digits are two bytes, and a `0x` prefix leaves too few).
    fn unit_at(body: &[u8], at: usize) -> Option<u16> {
        let esc = body.get(at..at + 6)?;
        esc.strip_prefix(b"\\u").and_then(|hex| const_hex::decode_to_array(hex).ok()).map(u16::from_be_bytes)
    }
    const HIGH: std::ops::Range<u16> = 0xD800..0xDC00;
    const LOW: std::ops::Range<u16> = 0xDC00..0xE000;
    let mut out = Vec::with_capacity(body.len() + 16);
    let (mut changed, mut in_string, mut i) = (false, false, 0);
    while let Some(&b) = body.get(i) {
        if !in_string || b != b'\\' {
            in_string ^= b == b'"';
            out.push(b);
            i += 1;
            continue;
        }
        let len = match unit_at(body, i) {
            // A whole pair: kept as it is.
            Some(u) if HIGH.contains(&u) && unit_at(body, i + 6).is_some_and(|n| LOW.contains(&n)) => 12,
            Some(u) if HIGH.contains(&u) || LOW.contains(&u) => {
                match mend {
                    Mend::Replace => out.extend_from_slice(b"\\uFFFD"),
                    // An escaped backslash, then `uXXXX`: one byte longer than the escape.
                    Mend::Text => out.extend_from_slice(format!("\\\\u{u:04X}").as_bytes()),
                }
                changed = true;
                i += 6;
                continue;
            }
            // An escaped backslash (`\\`, or `\u005C`): one more in the text (see `Mend::Text`).
            Some(0x5C) if mend == Mend::Text => {
                out.extend_from_slice(br"\\\\");
                i += 6;
                continue;
            }
            Some(_) => 6,
            None if mend == Mend::Text && body.get(i + 1) == Some(&b'\\') => {
                out.extend_from_slice(br"\\\\");
                i += 2;
                continue;
            }
            // Any other escape: the backslash and the byte it escapes (a quote among them).
            None => 2,
        };
        out.extend_from_slice(&body[i..(i + len).min(body.len())]);
        i += len;
    }
    changed.then_some(out)
}

/// The body parsed with each lone surrogate escape kept as its text ([`Mend::Text`]):
/// `None` when it holds none, or does not parse so. A payload reads them as U+FFFD, so
/// `"id": "a\ud83d"` and `"id": "a\ud83e"` are the same string there; a dedup key read from
/// this parse keeps such events apart (see `adapter::pipeline::dedup_hash`).
pub fn parse_keeping_lone_surrogates(body: &[u8]) -> Option<serde_json::Value> {
    let mended = mend_lone_surrogates(without_bom(body), Mend::Text)?;
    serde_json::from_slice(&mended).ok()
}

/// Whether a string of [`parse_keeping_lone_surrogates`]'s holds a lone half: a backslash
/// that is not one of a doubled pair.
pub fn holds_lone_half(kept: &str) -> bool {
    let mut chars = kept.chars();
    while let Some(c) = chars.next() {
        if c == '\\' && chars.next() != Some('\\') {
            return true;
        }
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lone_halves_become_their_text_and_pairs_stay_whole() {
        let parse = |s: &str| parse_keeping_lone_surrogates(s.as_bytes());
        let title = |s: &str| parse(s).unwrap()["t"].as_str().unwrap().to_string();
        assert_eq!(title(r#"{"t": "cut \ud83d"}"#), "cut \\uD83D");
        assert_ne!(title(r#"{"t": "cut \ud83d"}"#), title(r#"{"t": "cut \ud83e"}"#));
        assert_eq!(title(r#"{"t": "\ude00 then \ud83d\ude00"}"#), "\\uDE00 then \u{1F600}");
        // An escaped backslash is not an escape, and is doubled: text that spells a half is
        // not the half, whichever comes first.
        assert_eq!(title("\u{FEFF}{\"t\": \"\\\\ud800 \\ud800\"}"), "\\\\ud800 \\uD800");
        assert_ne!(title(r#"{"t": "\ud800\\uD800"}"#), title(r#"{"t": "\\uD800\ud800"}"#));
        // A backslash written as `\u005C` is one too.
        assert_eq!(title(r#"{"t": "\u005CuD800 \ud800"}"#), title(r#"{"t": "\\uD800 \ud800"}"#));
        assert_ne!(title(r#"{"t": "\u005CuD800 \ud800"}"#), title(r#"{"t": "\ud800 \ud800"}"#));
        for (kept, half) in [("a\\uD800", true), ("a\\\\uD800", false), ("\\\\\\uD800", true), ("plain", false)] {
            assert_eq!(holds_lone_half(kept), half, "{kept}");
        }
        // A body without a lone half is not mended.
        assert!(parse(r#"{"t": "\ud83d\ude00"}"#).is_none());
        assert!(parse(r#"{"t": "\ud800",}"#).is_none());
    }
}
