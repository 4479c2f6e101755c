//! The `Mux-Signature` scheme: `t=<unix seconds>,v1=<hex HMAC-SHA256 of "<t>.<raw body>">`.
//!
//! Pure functions, no I/O and no clock of their own (the caller passes `now`), so every case is
//! unit-testable. Several `v1` values may appear (Mux sends one per active secret while a secret
//! is being rotated) and the caller may hold several candidate secrets; any pair that matches
//! is enough. Comparisons go through `Mac::verify_slice` (constant time). The message is
//! `"{t}.{body}"` with `t` in canonical decimal, exactly what Mux's Node SDK recomputes.
//! Error messages never contain a secret or a signature.

use hmac::{Hmac, KeyInit, Mac};
use sha2::Sha256;
use thiserror::Error;

type HmacSha256 = Hmac<Sha256>;

/// Name of the header Mux signs its webhooks with (HTTP header names are case-insensitive).
pub const SIGNATURE_HEADER: &str = "mux-signature";

/// Mux's documented replay window: 5 minutes either side of `now`.
pub const DEFAULT_TOLERANCE_SECS: i64 = 300;

/// Longest header we parse; real ones are well under 200 bytes.
const MAX_HEADER_LEN: usize = 4096;

/// Most `v1` values we try, bounding the work an unauthenticated caller can cause.
const MAX_SIGNATURES: usize = 8;

/// Why a `Mux-Signature` was refused. Callers answer 401 for all of them, with this message
/// (it names the kind of failure, never a secret, the expected signature or the server's
/// exact clock).
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum MuxSignatureError {
    #[error("no Mux-Signature header")]
    Missing,
    #[error("malformed Mux-Signature header: {0}")]
    Malformed(&'static str),
    /// `skew_secs` = now − t: positive when too old, negative when too far in the future.
    // The skew stays out of the message (the debug log has it). Old or future is said, and
    // checked before the HMAC (no HMAC work for a stale header): the server's clock is no
    // secret, every answer's `Date` header gives it to the second.
    #[error("{}", stale_message(*skew_secs))]
    Stale { skew_secs: i64 },
    #[error(
        "Mux-Signature does not match the body with any of the webhook_signing_secrets it was checked against \
         (a secret of another Mux endpoint or environment, a rotated one, or a body changed on the way)"
    )]
    Mismatch,
}

fn stale_message(skew_secs: i64) -> String {
    if skew_secs > 0 {
        format!(
            "Mux-Signature timestamp (t=) is more than {DEFAULT_TOLERANCE_SECS} s old: a replayed or long-delayed \
             request, or the sender's clock is behind"
        )
    } else {
        format!(
            "Mux-Signature timestamp (t=) is more than {DEFAULT_TOLERANCE_SECS} s in the future: the sender's clock \
             is ahead"
        )
    }
}

/// A parsed header: the timestamp and the decoded `v1` tags (unknown schemes are ignored,
/// as Mux may add new ones).
#[derive(Debug)]
struct Parsed {
    t: i64,
    tags: Vec<Vec<u8>>,
}

fn parse(header: &str) -> Result<Parsed, MuxSignatureError> {
    if header.len() > MAX_HEADER_LEN {
        return Err(MuxSignatureError::Malformed("header too long"));
    }
    let mut t = None;
    let mut tags = Vec::new();
    for item in header.split(',') {
        let item = item.trim();
        if item.is_empty() {
            continue;
        }
        let Some((key, value)) = item.split_once('=') else {
            return Err(MuxSignatureError::Malformed("an item is not key=value"));
        };
        match key.trim() {
            "t" => {
                if t.is_some() {
                    return Err(MuxSignatureError::Malformed("more than one t="));
                }
                let value = value.trim();
                // The HMAC covers the timestamp as we print it: a `t=0…` with leading zeros
                // would be checked against another string than the one it came as.
                let leading_zero = value.len() > 1 && value.starts_with('0');
                if value.is_empty() || value.len() > 18 || leading_zero || !value.bytes().all(|b| b.is_ascii_digit()) {
                    return Err(MuxSignatureError::Malformed("t= is not a unix timestamp"));
                }
                t = Some(value.parse::<i64>().map_err(|_| MuxSignatureError::Malformed("t= is not a unix timestamp"))?);
            }
            "v1" => {
                if tags.len() == MAX_SIGNATURES {
                    return Err(MuxSignatureError::Malformed("too many v1= values"));
                }
                // Digits only: const_hex would also take a `0x` prefix, which Mux never sends.
                let value = value.trim();
                // Empty: a sender that wrote no signature, not one that signed with another
                // secret (a mismatch would send the operator looking for a wrong secret).
                let tag = Some(value)
                    .filter(|v| !v.is_empty() && v.bytes().all(|b| b.is_ascii_hexdigit()))
                    .and_then(|v| const_hex::decode(v).ok())
                    .ok_or(MuxSignatureError::Malformed("v1= is empty or not hex"))?;
                tags.push(tag);
            }
            _ => {}
        }
    }
    let t = t.ok_or(MuxSignatureError::Malformed("no t="))?;
    if tags.is_empty() {
        return Err(MuxSignatureError::Malformed("no v1="));
    }
    Ok(Parsed { t, tags })
}

fn mac_for(secret: &str, t: i64, body: &[u8]) -> HmacSha256 {
    // HMAC takes keys of any length, so this cannot fail.
    let mut mac = <HmacSha256 as KeyInit>::new_from_slice(secret.as_bytes()).expect("HMAC accepts any key length");
    mac.update(t.to_string().as_bytes());
    mac.update(b".");
    mac.update(body);
    mac
}

/// Verifies a `Mux-Signature` header value against the raw request body.
///
/// Accepts when the timestamp is within `tolerance_secs` of `now_unix` (either side) and some
/// `v1` value equals HMAC-SHA256(secret, "{t}.{body}") for some non-empty secret in `secrets`.
pub fn verify_signature(
    header_value: &str,
    raw_body: &[u8],
    secrets: &[&str],
    now_unix: i64,
    tolerance_secs: i64,
) -> Result<(), MuxSignatureError> {
    let parsed = parse_fresh(header_value, now_unix, tolerance_secs)?;
    // An empty secret would make the signature forgeable by anyone: never a candidate.
    for secret in secrets.iter().filter(|s| !s.is_empty()) {
        let mac = mac_for(secret, parsed.t, raw_body);
        // Check every tag even after a match? Not needed: which pair matched is not secret,
        // only the bytes of the expected tag are, and verify_slice compares them in constant time.
        if parsed.tags.iter().any(|tag| mac.clone().verify_slice(tag).is_ok()) {
            return Ok(());
        }
    }
    Err(MuxSignatureError::Mismatch)
}

/// The checks of [`verify_signature`] that need no body and no secret: the header is there,
/// well formed, and its timestamp within `tolerance_secs` of `now_unix`. A request that fails
/// them is refused before its body is read (as `verify_signature` would refuse it after).
pub fn check_fresh(header_value: &str, now_unix: i64, tolerance_secs: i64) -> Result<(), MuxSignatureError> {
    parse_fresh(header_value, now_unix, tolerance_secs).map(|_| ())
}

fn parse_fresh(header_value: &str, now_unix: i64, tolerance_secs: i64) -> Result<Parsed, MuxSignatureError> {
    if header_value.trim().is_empty() {
        return Err(MuxSignatureError::Missing);
    }
    let parsed = parse(header_value)?;
    // Cheap replay check first: no HMAC work for a stale header.
    let skew = now_unix.saturating_sub(parsed.t);
    if skew > tolerance_secs || skew < -tolerance_secs {
        return Err(MuxSignatureError::Stale { skew_secs: skew });
    }
    Ok(parsed)
}

/// Verifies an optional header (absent → [`MuxSignatureError::Missing`]).
pub fn verify_header(
    header_value: Option<&str>,
    raw_body: &[u8],
    secrets: &[&str],
    now_unix: i64,
    tolerance_secs: i64,
) -> Result<(), MuxSignatureError> {
    verify_signature(header_value.unwrap_or(""), raw_body, secrets, now_unix, tolerance_secs)
}

/// Makes a `Mux-Signature` header value as Mux does (tests, benches, the cross-check).
pub fn sign(secret: &str, t: i64, body: &[u8]) -> String {
    format!("t={t},v1={}", const_hex::encode(mac_for(secret, t, body).finalize().into_bytes()))
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECRET: &str = "whsec_mux_test_secret";
    const NOW: i64 = 1_767_225_600;
    const TOL: i64 = DEFAULT_TOLERANCE_SECS;

    fn v1(secret: &str, t: i64, body: &[u8]) -> String {
        sign(secret, t, body).split_once(",v1=").unwrap().1.to_string()
    }

    #[test]
    fn known_vector_matches_an_independent_hmac() {
        // sign() is plain HMAC-SHA256 over "t.body", hex, as computed independently with
        // `printf '1700000000.{}' | openssl dgst -sha256 -hmac secret`.
        assert_eq!(
            sign("secret", 1_700_000_000, b"{}"),
            "t=1700000000,v1=b8569b78799ff9e3cbff0fc2d63a33a2b57f3282abd07c37ae5e8e7d79a5f163"
        );
    }

    #[test]
    fn accepts_a_fresh_valid_signature() {
        let body = br#"{"type":"video.asset.ready"}"#;
        let h = sign(SECRET, NOW, body);
        assert_eq!(verify_signature(&h, body, &[SECRET], NOW, TOL), Ok(()));
        // Edges of the window are inside it.
        assert_eq!(verify_signature(&sign(SECRET, NOW - TOL, body), body, &[SECRET], NOW, TOL), Ok(()));
        assert_eq!(verify_signature(&sign(SECRET, NOW + TOL, body), body, &[SECRET], NOW, TOL), Ok(()));
        // Whitespace around items is tolerated.
        let spaced = format!("t={NOW}, v1={}", v1(SECRET, NOW, body));
        assert_eq!(verify_signature(&spaced, body, &[SECRET], NOW, TOL), Ok(()));
    }

    #[test]
    fn rejects_a_tampered_body() {
        let h = sign(SECRET, NOW, br#"{"id":"a"}"#);
        assert_eq!(verify_signature(&h, br#"{"id":"b"}"#, &[SECRET], NOW, TOL), Err(MuxSignatureError::Mismatch));
        // Re-serialised JSON is not the raw body either.
        assert_eq!(verify_signature(&h, br#"{ "id": "a" }"#, &[SECRET], NOW, TOL), Err(MuxSignatureError::Mismatch));
    }

    #[test]
    fn rejects_a_tampered_timestamp() {
        let body = b"{}";
        let sig = v1(SECRET, NOW, body);
        let h = format!("t={},v1={sig}", NOW - 1);
        assert_eq!(verify_signature(&h, body, &[SECRET], NOW, TOL), Err(MuxSignatureError::Mismatch));
    }

    #[test]
    fn rejects_stale_and_future_timestamps() {
        let body = b"{}";
        let old = sign(SECRET, NOW - TOL - 1, body);
        assert_eq!(
            verify_signature(&old, body, &[SECRET], NOW, TOL),
            Err(MuxSignatureError::Stale { skew_secs: TOL + 1 })
        );
        let future = sign(SECRET, NOW + TOL + 1, body);
        assert_eq!(
            verify_signature(&future, body, &[SECRET], NOW, TOL),
            Err(MuxSignatureError::Stale { skew_secs: -TOL - 1 })
        );
        let ancient = sign(SECRET, 0, body);
        assert!(matches!(verify_signature(&ancient, body, &[SECRET], NOW, TOL), Err(MuxSignatureError::Stale { .. })));
    }

    #[test]
    fn rejects_a_wrong_secret_and_ignores_empty_secrets() {
        let body = b"{}";
        let h = sign(SECRET, NOW, body);
        assert_eq!(verify_signature(&h, body, &["other"], NOW, TOL), Err(MuxSignatureError::Mismatch));
        assert_eq!(verify_signature(&h, body, &[], NOW, TOL), Err(MuxSignatureError::Mismatch));
        // Someone signing with an empty key must not get through a misconfigured empty secret.
        let empty = sign("", NOW, body);
        assert_eq!(verify_signature(&empty, body, &[""], NOW, TOL), Err(MuxSignatureError::Mismatch));
    }

    #[test]
    fn rotation_two_v1_values_and_two_secrets() {
        let body = br#"{"id":"rot"}"#;
        let (old, new) = ("secret-old", "secret-new");
        // Mux during rotation: one v1 per secret, in any order.
        let h = format!("t={NOW},v1={},v1={}", v1(old, NOW, body), v1(new, NOW, body));
        assert_eq!(verify_signature(&h, body, &[new], NOW, TOL), Ok(()));
        assert_eq!(verify_signature(&h, body, &[old], NOW, TOL), Ok(()));
        assert_eq!(verify_signature(&h, body, &["third"], NOW, TOL), Err(MuxSignatureError::Mismatch));
        // We hold two candidate secrets; the header carries one.
        let h_new = sign(new, NOW, body);
        assert_eq!(verify_signature(&h_new, body, &[old, new], NOW, TOL), Ok(()));
        assert_eq!(verify_signature(&h_new, body, &[new, old], NOW, TOL), Ok(()));
        // An unknown scheme beside a good v1 is ignored.
        let h_v0 = format!("t={NOW},v0=deadbeef,v1={}", v1(new, NOW, body));
        assert_eq!(verify_signature(&h_v0, body, &[new], NOW, TOL), Ok(()));
    }

    #[test]
    fn missing_and_malformed_headers() {
        let body = b"{}";
        let sig = v1(SECRET, NOW, body);
        assert_eq!(verify_header(None, body, &[SECRET], NOW, TOL), Err(MuxSignatureError::Missing));
        assert_eq!(verify_signature("  ", body, &[SECRET], NOW, TOL), Err(MuxSignatureError::Missing));
        let cases = [
            format!("v1={sig}"),                                           // no t
            format!("t={NOW}"),                                            // no v1
            format!("t={NOW},v0={sig}"),                                   // only unknown schemes
            format!("t=abc,v1={sig}"),                                     // t not a number
            format!("t=-5,v1={sig}"),                                      // t negative
            format!("t=0{NOW},v1={sig}"),                                  // t with a leading zero
            format!("t={NOW}.5,v1={sig}"),                                 // t fractional
            format!("t={NOW},t={NOW},v1={sig}"),                           // t twice
            format!("t={NOW},v1=zz{}", &sig[2..]),                         // v1 not hex
            format!("t={NOW},v1=0x{sig}"),                                 // v1 with a 0x prefix
            format!("t={NOW},v1="),                                        // v1 empty
            format!("t={NOW},v1= ,v1={sig}"),                              // one v1 blank
            format!("t={NOW};v1={sig}"),                                   // wrong separator
            format!("t={NOW},v1={sig},garbage"),                           // item without '='
            format!("t={NOW},{}", vec![format!("v1={sig}"); 9].join(",")), // too many v1
            format!("t={NOW},v1={}", "a".repeat(5000)),                    // too long
            "t=99999999999999999999,v1=00".to_string(),                    // t overflows
        ];
        for h in cases {
            assert!(
                matches!(verify_signature(&h, body, &[SECRET], NOW, TOL), Err(MuxSignatureError::Malformed(_))),
                "{h:.80} should be malformed"
            );
        }
        // A v1 of the wrong length is well-formed hex but simply does not match.
        let short = format!("t={NOW},v1={}", &sig[..32]);
        assert_eq!(verify_signature(&short, body, &[SECRET], NOW, TOL), Err(MuxSignatureError::Mismatch));
    }

    #[test]
    fn errors_never_echo_secrets_or_signatures() {
        let body = b"{}";
        let h = sign(SECRET, NOW, body);
        let err = verify_signature(&h, b"x", &[SECRET], NOW, TOL).unwrap_err().to_string();
        assert!(!err.contains(SECRET) && !err.contains(&v1(SECRET, NOW, body)), "{err}");
    }
}
