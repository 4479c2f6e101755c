//! The on-disk format version and its migrations.
//!
//! `meta\0format_version` holds the version that wrote the data. A newer binary migrates an
//! older format in place; an older binary refuses a newer format instead of misreading it.
//!
//! Versions: 1 = sled only. 2 = the write-ahead log in `wal/` holds writes sled may not have
//! yet (a version-1 binary would ignore it and lose them), keyspaces unchanged.

use super::{Backend, Batch, Keyspace, StoreError};

/// Bump when the encoding of any keyspace (or the log) changes, and add a migration step below.
pub const FORMAT_VERSION: u32 = 2;

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
            write_version(backend)
        }
        Some(bytes) => {
            let v: u32 = serde_json::from_slice(&bytes)
                .map_err(|e| StoreError::Corrupt { key: "meta/format_version".into(), reason: e.to_string() })?;
            if v > FORMAT_VERSION {
                return Err(StoreError::Format(format!(
                    "the data directory has format version {v}, newer than this binary's {FORMAT_VERSION}; upgrade hookline"
                )));
            }
            if v < FORMAT_VERSION {
                // 1 → 2 changes no keyspace: the log comes into use with this binary.
                tracing::info!(from = v, to = FORMAT_VERSION, "migrating the data directory's format");
                write_version(backend)?;
            }
            Ok(())
        }
    }
}

/// Records this binary's version, flushed: from here on an older binary refuses the data.
fn write_version(backend: &dyn Backend) -> Result<(), StoreError> {
    let mut b = Batch::new();
    b.put(Keyspace::META, "format_version", &FORMAT_VERSION);
    backend.apply(&b)?;
    futures::executor::block_on(backend.flush())
}
