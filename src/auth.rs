//! Admin API keys.
//!
//! Keys are only ever held as SHA-256 digests: configured keys are hashed at start-up, and a
//! generated key is printed once and persisted as its digest. A presented bearer token is
//! hashed and compared in constant time against every digest (no early exit), so timing
//! reveals neither which key nor how much of it matched.

use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use crate::store::{Batch, Keyspace, Store, StoreError};

#[derive(Clone)]
pub struct ApiKeys {
    digests: Vec<[u8; 32]>,
}

pub fn digest(key: &str) -> [u8; 32] {
    Sha256::digest(key.as_bytes()).into()
}

impl ApiKeys {
    /// Builds the key set: the configured keys if any (which retire a generated key), else the
    /// stored digests, else a newly generated key whose plain text is returned so the caller
    /// can print it exactly once.
    pub async fn init(configured: &[String], store: &Store) -> Result<(ApiKeys, Option<String>), StoreError> {
        let stored: Option<Vec<String>> = store.get(Keyspace::META, "api_key_digests")?;
        if !configured.is_empty() {
            // Configured keys replace a generated one for good: it must not come back if the
            // configured keys are later removed (it may be the leaked key they replaced).
            if stored.is_some() {
                let mut b = Batch::new();
                b.delete(Keyspace::META, "api_key_digests");
                store.commit(b).await?;
                tracing::info!(
                    "API keys are configured (auth.api_keys or HOOKLINE_API_KEYS): the generated API key is retired"
                );
            }
            // Trimmed like a presented token.
            return Ok((ApiKeys { digests: configured.iter().map(|k| digest(k.trim())).collect() }, None));
        }
        if let Some(list) = stored {
            let digests: Vec<[u8; 32]> = list.iter().filter_map(|h| const_hex::decode_to_array(h).ok()).collect();
            if !digests.is_empty() {
                return Ok((ApiKeys { digests }, None));
            }
        }
        let key = format!("hk_{}", crate::ids::random_alphanumeric(40));
        let d = digest(&key);
        let mut b = Batch::new();
        b.put(Keyspace::META, "api_key_digests", &vec![const_hex::encode(d)]);
        store.commit(b).await?;
        Ok((ApiKeys { digests: vec![d] }, Some(key)))
    }

    /// [`ApiKeys::verify_header`] on a request's headers: `Authorization` given more than
    /// once is refused (which one counts would be a guess).
    pub fn verify_headers(&self, headers: &warp::http::HeaderMap) -> bool {
        let mut given = headers.get_all(warp::http::header::AUTHORIZATION).iter();
        match (given.next(), given.next()) {
            (Some(one), None) => self.verify_header(one.to_str().ok()),
            _ => false,
        }
    }

    /// Checks an `Authorization` header value (`Bearer <key>`).
    pub fn verify_header(&self, header: Option<&str>) -> bool {
        // The scheme is case-insensitive (RFC 9110 §11.1): `Bearer`, `bearer`, `BEARER`.
        let token = header.and_then(|h| h.split_once(' ')).filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"));
        let Some((_, token)) = token else {
            return false;
        };
        let d = digest(token.trim());
        let mut ok = subtle::Choice::from(0u8);
        for known in &self.digests {
            ok |= known.ct_eq(&d);
        }
        ok.into()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn verify() {
        let keys = ApiKeys { digests: vec![digest("sekrit-key-0123456789")] };
        assert!(keys.verify_header(Some("Bearer sekrit-key-0123456789")));
        assert!(!keys.verify_header(Some("Bearer sekrit-key-012345678")));
        assert!(!keys.verify_header(Some("sekrit-key-0123456789")));
        assert!(!keys.verify_header(None));
        // Given twice, refused whichever is right.
        let mut headers = warp::http::HeaderMap::new();
        headers.append("authorization", "Bearer sekrit-key-0123456789".parse().unwrap());
        assert!(keys.verify_headers(&headers));
        headers.append("authorization", "Bearer wrong".parse().unwrap());
        assert!(!keys.verify_headers(&headers));
        for scheme in ["bearer", "BEARER", "BeArEr"] {
            assert!(keys.verify_header(Some(&format!("{scheme} sekrit-key-0123456789"))), "{scheme}");
        }
        for other in ["Basic sekrit-key-0123456789", "Bearersekrit-key-0123456789", "Bearer\tsekrit-key-0123456789"] {
            assert!(!keys.verify_header(Some(other)), "{other}");
        }
    }
}
