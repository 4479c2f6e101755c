//! Which catalog credentials the current master key cannot open: connections and adapters'
//! inline credentials, kept by the bucket registry (their owner) from its start and after each
//! change of one, for `hookline_credentials_unreadable` and the start-up log.
//!
//! A changed `HOOKLINE_MASTER_KEY` or `master.key` leaves a daemon that starts and answers
//! ready while what needs those credentials (Mux signature checks, asset fetches, writebacks)
//! fails. The start-up log names each one, but an operator's alerting reads metrics: the
//! gauge stays above zero until every one is set again (or deleted). Webhooks' secrets are
//! counted by the delivery registry, which owns them. Nothing here opens a credential for use.

use std::collections::HashSet;

use crate::catalog::{Bucket, Connection};
use crate::crypto::SecretBox;
use crate::ids::{BucketId, ConnectionId};
use crate::store::{Keyspace, Store, StoreError};

/// What fails while credentials cannot be opened (said in each line that names some).
const FAILS: &str = "what needs them (Mux signature checks, which then answer 503, asset fetches, writebacks) fails";

/// The unreadable connections and adapters, by ID.
#[derive(Default)]
pub struct Unreadable {
    connections: HashSet<ConnectionId>,
    adapters: HashSet<BucketId>,
}

impl Unreadable {
    /// Reads every connection and calls `bucket` on every bucket (the registry's own scan, so
    /// buckets are read once), logging each whose credentials cannot be opened.
    pub fn scan(store: &Store, secrets: &SecretBox, mut bucket: impl FnMut(&Bucket)) -> Result<Unreadable, StoreError> {
        let mut found = Unreadable::default();
        // Record by record: one that does not even decode (written by a newer version, say)
        // is reported and counted, and must not stop a start that reads it nowhere else.
        let mut keys = Vec::new();
        store.for_each_key(Keyspace::CONNECTIONS, "", |k| {
            keys.push(k.to_string());
            true
        })?;
        for key in keys {
            let Some(id) = ConnectionId::parse(&key) else { continue };
            let why = match store.get::<Connection>(Keyspace::CONNECTIONS, &key) {
                Ok(Some(c)) => c.open(secrets).err().map(|e| e.to_string()),
                Ok(None) => None,
                Err(e) => {
                    tracing::error!(connection_id = %id, error = %e,
                        "a stored connection cannot be read at all (written by a newer hookline, or damaged): what \
                         uses it fails; run the version that wrote it, or DELETE the connection (once no adapter \
                         uses it) and create it again");
                    found.connections.insert(id);
                    continue;
                }
            };
            if let Some(e) = why {
                tracing::error!(connection_id = %id, error = %e,
                    "the connection's credentials cannot be opened: {FAILS}, until they are set again with a PATCH \
                     of the connection");
                found.connections.insert(id);
            }
        }
        store.for_each::<Bucket>(Keyspace::BUCKETS, "", |_, b| {
            if let Some(e) = adapter_error(&b, secrets) {
                tracing::error!(bucket_id = %b.bucket_id, error = %e,
                    "the source adapter's inline credentials cannot be opened: {FAILS}, until they are set again \
                     with a PATCH of the bucket's source_adapter.connection.credentials");
                found.adapters.insert(b.bucket_id.clone());
            }
            bucket(&b);
            true
        })?;
        let unreadable = found.connections.len() + found.adapters.len();
        if unreadable > 0 {
            // The count is the connections' and adapters': each webhook whose secrets cannot
            // be opened has its own line (the delivery registry owns them).
            tracing::error!(
                unreadable,
                "stored connection and adapter credentials cannot be opened (each is named above, with why; \
                 webhooks' secrets are logged apart)"
            );
        }
        found.publish();
        Ok(found)
    }

    /// After a connection was written: a PATCH of its name alone keeps what it held.
    pub fn connection_written(&mut self, conn: &Connection, secrets: &SecretBox) {
        let unreadable = conn.open(secrets).is_err();
        self.mark(|u| &mut u.connections, conn.connection_id.clone(), unreadable);
    }

    pub fn connection_deleted(&mut self, id: &ConnectionId) {
        self.mark(|u| &mut u.connections, id.clone(), false);
    }

    /// After a bucket was written: its adapter may keep the credentials it had.
    pub fn bucket_written(&mut self, bucket: &Bucket, secrets: &SecretBox) {
        let unreadable = adapter_error(bucket, secrets).is_some();
        self.mark(|u| &mut u.adapters, bucket.bucket_id.clone(), unreadable);
    }

    pub fn bucket_deleted(&mut self, id: &BucketId) {
        self.mark(|u| &mut u.adapters, id.clone(), false);
    }

    /// Puts `id` in or out of the set `which` picks, and publishes the gauges if that changed.
    fn mark<K: Eq + std::hash::Hash>(&mut self, which: impl Fn(&mut Self) -> &mut HashSet<K>, id: K, unreadable: bool) {
        let set = which(self);
        let changed = if unreadable { set.insert(id) } else { set.remove(&id) };
        if changed {
            self.publish();
        }
    }

    fn publish(&self) {
        crate::metrics::credentials_unreadable("connection", self.connections.len());
        crate::metrics::credentials_unreadable("adapter", self.adapters.len());
    }
}

/// Why the bucket's adapter's inline credentials cannot be opened, if they cannot.
pub fn adapter_error(bucket: &Bucket, secrets: &SecretBox) -> Option<crate::crypto::DecryptError> {
    bucket.source_adapter.as_ref()?.inline_credentials(&bucket.bucket_id, secrets)?.err()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Inline credentials that decrypt but do not decode (another version wrote them) are
    /// unreadable too, and said so as a format, not a key, problem.
    #[test]
    fn inline_credentials_that_do_not_decode_are_unreadable() {
        let secrets = SecretBox::new([7u8; 32]);
        let bucket_id = crate::ids::BucketId::generate();
        let mut bucket: Bucket = serde_json::from_value(serde_json::json!({
            "bucket_id": bucket_id, "bucket_name": "b", "namespace": "default",
            "bucket_schema": {"properties": {}},
            "source_adapter": {"adapter_type": "supabase", "enabled": true,
                "batching": {"mode": "immediate"}, "webhook_secret_sha256": "00", "configured_at": ""},
            "created_at": "", "updated_at": ""}))
        .expect("a bucket");
        let sealed = |plain: &[u8]| Some(secrets.seal(plain, bucket_id.as_str()));
        let adapter = bucket.source_adapter.as_mut().expect("an adapter");
        adapter.sealed_credentials = sealed(br#"{"url": "https://x.supabase.co", "service_role_key": "k"}"#);
        assert!(adapter_error(&bucket, &secrets).is_none());
        bucket.source_adapter.as_mut().expect("an adapter").sealed_credentials = sealed(br#"{"url": 5}"#);
        assert!(matches!(adapter_error(&bucket, &secrets), Some(crate::crypto::DecryptError::Format("supabase"))));
        assert!(matches!(adapter_error(&bucket, &SecretBox::new([8u8; 32])), Some(crate::crypto::DecryptError::Key)));
    }
}
