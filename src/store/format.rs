//! The on-disk format version and its migrations.
//!
//! `meta\0format_version` holds the version that wrote the data. A newer binary migrates an
//! older format in place (none exist yet); an older binary refuses a newer format instead of
//! misreading it.

use super::{Backend, Batch, Keyspace, StoreError};

/// Bump when the encoding of any keyspace changes, and add a migration step below.
pub const FORMAT_VERSION: u32 = 1;

pub(crate) fn check_and_migrate(backend: &dyn Backend) -> Result<(), StoreError> {
    let key = Keyspace::META.key("format_version");
    match backend.get(&key)? {
        None => {
            let mut any = false;
            backend.scan_from(&[], &[], &mut |_, _| {
                any = true;
                Ok(false)
            })?;
            if any {
                return Err(StoreError::Format(
                    "the data directory holds data without a format version; it was not written by hookline".into(),
                ));
            }
            let mut b = Batch::new();
            b.put(Keyspace::META, "format_version", &FORMAT_VERSION);
            backend.apply(&b)?;
            Ok(())
        }
        Some(bytes) => {
            let v: u32 = serde_json::from_slice(&bytes)
                .map_err(|e| StoreError::Corrupt { key: "meta/format_version".into(), reason: e.to_string() })?;
            if v > FORMAT_VERSION {
                return Err(StoreError::Format(format!(
                    "the data directory has format version {v}, newer than this binary's {FORMAT_VERSION}; upgrade hookline"
                )));
            }
            // v < FORMAT_VERSION: run migrations v → v+1 here when there are any.
            Ok(())
        }
    }
}
