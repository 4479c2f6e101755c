//! The on-disk format version and its migrations.
//!
//! `meta\0format_version` holds the version that wrote the data. A newer binary migrates an
//! older format in place; an older binary refuses a newer format instead of misreading it.
//!
//! Versions:
//! - 1: sled only.
//! - 2: the write-ahead log in `wal/` holds writes sled may not have yet (a version-1 binary
//!   would ignore it and lose them); keyspaces unchanged.
//! - 3: the dedup set and the external-ID index are keyed by object ID (`dkey`, `xref`)
//!   instead of by hash (`dedup`, `xid`): see `adapter/records.rs`.
//! - 4: a delivery names its event (`event_id`, `event_type`) instead of holding a copy; the
//!   event is stored once under `evt/`: see `delivery/model.rs`.
//! - 5: a value longer than 4 KiB is kept in pieces in a second sled tree, the main tree
//!   holding a marker (see `store/pieces.rs`); an older binary would read the marker as the
//!   value. Values written before stay whole until they are next written: no rewrite.
//! - 6: an object's (or buffer entry's) dedup key is kept in its record (`dedup`) and, once
//!   256 keys are paged or the actor restarts, in a page of keys (`dpage`), and `dkey` holds
//!   only the keys of deleted objects and
//!   tombstones (see `adapter/records.rs`); an older binary would not see those keys and let
//!   their events in again. Keys written before stay in `dkey`, where they still count: no
//!   rewrite (an actor's first start pages its objects' keys).
//! - 7: the write-ahead log's records are stamped with their segment's number, and a retired
//!   segment becomes a later one without being zeroed again (see `store/wal.rs`); an older
//!   binary would take a segment in that layout for a torn write and lose its records.
//!   Keyspaces unchanged.
//! - 8: a change of a bucket's dedup path keeps the set it leaves (`dedup_kept`), and a
//!   change back puts that set's generation in force again, so generations no longer only
//!   grow (`dedup_generation_high` holds the highest); `dkey` entries of a kept set are tagged
//!   with its generation (`{hash}@{generation}`: see `adapter/records.rs`). An older binary
//!   would make its next generation `dedup_generation + 1`, one a kept set's marks may hold,
//!   and count them in the new set (or, rewriting a bucket, drop the highest it does not know
//!   of); and it would not count the tagged keys of a set put back in force. No rewrite.
//!
//! Additions that an older binary never reads need no new version (it keeps working on the
//! directory, and a newer one finds its data as left): the `alert` keyspace, and alert
//! writeback jobs, kept in `wb` under their own `{bucket}/ajob/` and `{bucket}/adead/` keys
//! (see `adapter/writeback/job.rs`). A job names its `batch_id` or its `alert_id`, both
//! optional, so jobs stored before alerts decode as they are. (An older binary deleting a
//! bucket leaves its `alert` records behind, unread.) So are optional fields an older binary
//! ignores and a newer one defaults: a delivery's `finished_at_ms`, a batch's
//! `deleted_object_ids`, an alert's `writeback_skipped` (its `writeback` stays a value the
//! older binary knows).
//!
//! A migration runs in two steps around the log replay, because the log of an older binary
//! holds writes in the older layout: [`check`] (before the replay) records the new version
//! together with `meta\0migrate_from`, so an older binary refuses the directory from then
//! on, and [`finish`] (after the replay) rewrites the keyspaces and clears the marker. Each
//! step is idempotent: a crash in between reruns what is left at the next start.

use super::{Backend, Batch, Keyspace, Op, StoreError};

/// Bump when the encoding of any keyspace (or the log) changes, and add a migration step below.
pub const FORMAT_VERSION: u32 = 8;

const VERSION_KEY: &str = "format_version";
const MIGRATE_FROM_KEY: &str = "migrate_from";
/// The first write-ahead log segment that may hold writes the backend has not flushed: every
/// segment from it to the newest must be there at start-up (see `wal::recover`). Written with
/// each checkpoint's flush, and after each replay. Added without a new format version: an
/// older binary ignores it, and a store without it is not checked.
const LOG_FROM_KEY: &str = "wal_from";

/// The refusal of a data directory whose store (`db`) is gone or empty beside the log.
pub(crate) fn store_missing() -> StoreError {
    StoreError::Format(
        "the store (the data directory's `db`) is empty or missing, but its write-ahead log (`wal/`) \
         shows the directory was in use: the store was damaged, deleted or replaced. Refusing to \
         start as a new install; restore the data directory from a backup (or move it away to \
         start afresh)"
            .into(),
    )
}

/// Checks the version before the log replay; see the module docs. `has_log`: the log
/// directory holds segments, so this directory was used before.
pub(crate) fn check(backend: &dyn Backend, has_log: bool) -> Result<(), StoreError> {
    match read::<u32>(backend, VERSION_KEY)? {
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
            // The version is the first thing written (and flushed) to a new store, before its
            // log exists: an empty store beside a log was emptied, deleted or swapped, and
            // starting as a new install would forget every bucket, webhook and dedup key.
            if has_log {
                return Err(store_missing());
            }
            write_meta(backend, &[(VERSION_KEY, FORMAT_VERSION)])
        }
        Some(v) if v > FORMAT_VERSION => Err(StoreError::Format(format!(
            "the data directory has format version {v}, newer than this binary's {FORMAT_VERSION}; upgrade hookline"
        ))),
        Some(v) if v < FORMAT_VERSION => {
            tracing::info!(from = v, to = FORMAT_VERSION, "migrating the data directory's format");
            // An older binary may have left its own migration unfinished: keep its steps.
            let from = read::<u32>(backend, MIGRATE_FROM_KEY)?.map_or(v, |pending| pending.min(v));
            write_meta(backend, &[(MIGRATE_FROM_KEY, from), (VERSION_KEY, FORMAT_VERSION)])
        }
        Some(_) => Ok(()),
    }
}

/// Runs the keyspace migrations a [`check`] left pending, after the log replay.
pub(crate) fn finish(backend: &dyn Backend) -> Result<(), StoreError> {
    let Some(from) = read::<u32>(backend, MIGRATE_FROM_KEY)? else {
        return Ok(());
    };
    // 1 → 2 changes no keyspace. 2 → 3 re-keys the dedup set and the external-ID index.
    if from < 3 {
        // `dedup\0{bucket}/{hash}` = {"object_id": …} → `dkey\0{bucket}/{object_id}` = "hash"
        rewrite(backend, Keyspace::custom("dedup"), |rest, value| {
            let (bucket, hash) = rest.split_once('/')?;
            let v: serde_json::Value = super::from_stored(value).ok()?;
            Some(moved(Keyspace::DEDUP, &format!("{bucket}/{}", v.get("object_id")?.as_str()?), hash))
        })?;
        // `xid\0{bucket}/{hash}/{object_id}` → `xref\0{bucket}/{object_id}` = "hash"
        rewrite(backend, Keyspace::custom("xid"), |rest, _| {
            let (bucket, rest) = rest.split_once('/')?;
            let (hash, object_id) = rest.split_once('/')?;
            Some(moved(Keyspace::EXTERNAL_IDS, &format!("{bucket}/{object_id}"), hash))
        })?;
    }
    if from < 4 {
        // `dlv\0…` = {…, "event": {…}} → {…, "event_id", "event_type"} + `evt\0{event_id}`.
        rewrite(backend, Keyspace::DELIVERIES, |_, value| {
            let mut d: serde_json::Value = super::from_stored(value).ok()?;
            let Some(event) = d.as_object_mut()?.remove("event") else {
                return Some(Vec::new()); // migrated already
            };
            let event_id = event.get("event_id")?.as_str()?.to_string();
            d["event_id"] = event_id.clone().into();
            d["event_type"] = event.get("event_type")?.clone();
            let mut b = Batch::new();
            b.put(Keyspace::EVENTS, &event_id, &event);
            b.ops.push(Op::Put(Vec::new(), serde_json::to_vec(&d).ok()?)); // key filled in below
            Some(b.ops)
        })?;
    }
    // 4 → 5, 5 → 6, 6 → 7 and 7 → 8 rewrite nothing (see the module docs).
    let mut b = Batch::new();
    b.delete(Keyspace::META, MIGRATE_FROM_KEY);
    backend.apply(&b)?;
    futures::executor::block_on(backend.flush())?;
    tracing::info!(from, to = FORMAT_VERSION, "data directory migrated");
    Ok(())
}

/// Rewrites every entry of `ks` in slices. `map` gets the key (after the keyspace prefix)
/// and value and gives the operations that replace the entry, where an empty key means the
/// entry itself (`None`: unreadable, kept). Callers write a new entry before deleting the
/// old one, so a crash leaves each entry in one place or both, and a rerun finishes.
fn rewrite(
    backend: &dyn Backend,
    ks: Keyspace,
    map: impl Fn(&str, &[u8]) -> Option<Vec<Op>>,
) -> Result<(), StoreError> {
    const SLICE: usize = 10_000;
    let prefix = ks.prefix();
    let mut start = prefix.clone();
    loop {
        let mut b = Batch::new();
        let mut n = 0;
        let mut last = None;
        backend.scan_from(&start, &prefix, &mut |k, v| {
            match map(&String::from_utf8_lossy(&k[prefix.len()..]), v) {
                Some(ops) => b.ops.extend(ops.into_iter().map(|op| match op {
                    Op::Put(key, value) if key.is_empty() => Op::Put(k.to_vec(), value),
                    Op::Delete(key) if key.is_empty() => Op::Delete(k.to_vec()),
                    other => other,
                })),
                None => tracing::warn!(
                    key = %String::from_utf8_lossy(k), "unreadable entry left in place by the migration"
                ),
            }
            n += 1;
            last = Some(k.to_vec());
            Ok(n < SLICE)
        })?;
        backend.apply(&b)?;
        match last {
            Some(mut k) if n == SLICE => {
                k.push(0);
                start = k;
            }
            _ => return Ok(()),
        }
    }
}

/// The entry becomes `key` = `value` (a JSON string) in `to`: written, then the old deleted.
fn moved(to: Keyspace, key: &str, value: &str) -> Vec<Op> {
    let mut b = Batch::new();
    b.put(to, key, value);
    b.ops.push(Op::Delete(Vec::new()));
    b.ops
}

fn read<T: serde::de::DeserializeOwned>(backend: &dyn Backend, key: &str) -> Result<Option<T>, StoreError> {
    match backend.get(&Keyspace::META.key(key))? {
        None => Ok(None),
        Some(bytes) => super::from_stored(&bytes)
            .map(Some)
            .map_err(|e| StoreError::Corrupt { key: format!("meta/{key}"), reason: e.to_string() }),
    }
}

/// Where the log must start (see [`LOG_FROM_KEY`]); `None` for a store from before it.
pub(crate) fn log_from(backend: &dyn Backend) -> Result<Option<u64>, StoreError> {
    read(backend, LOG_FROM_KEY)
}

/// The write that records [`log_from`], for the backend's next flush to make durable.
pub(crate) fn log_from_batch(segment: u64) -> Batch {
    let mut b = Batch::new();
    b.put(Keyspace::META, LOG_FROM_KEY, &segment);
    b
}

/// Writes `meta` entries straight to the backend, flushed.
fn write_meta(backend: &dyn Backend, entries: &[(&str, u32)]) -> Result<(), StoreError> {
    let mut b = Batch::new();
    for (k, v) in entries {
        b.put(Keyspace::META, k, v);
    }
    backend.apply(&b)?;
    futures::executor::block_on(backend.flush())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::SledBackend;

    fn raw_put(b: &mut Batch, key: &str, value: &str) {
        b.ops.push(Op::Put(key.as_bytes().to_vec(), value.as_bytes().to_vec()));
    }

    /// A data dir as a binary of format `version` left it (`seed` writes its keys), opened
    /// by this one: the migration runs.
    async fn open_seeded(path: &std::path::Path, version: u32, seed: impl FnOnce(&mut Batch)) -> crate::store::Store {
        {
            let backend = SledBackend::open(path).unwrap();
            let mut b = Batch::new();
            b.put(Keyspace::META, VERSION_KEY, &version);
            seed(&mut b);
            backend.apply(&b).unwrap();
            futures::executor::block_on(backend.flush()).unwrap();
        }
        crate::store::tests::reopen(path).await
    }

    #[tokio::test]
    async fn version_2_dedup_and_xid_entries_are_rekeyed_by_object() {
        let dir = tempfile::tempdir().unwrap();
        let store = open_seeded(dir.path(), 2, |b| {
            raw_put(b, "dedup\0bkt_a/h1", r#"{"object_id":"obj_1","at_ms":5}"#);
            raw_put(b, "dedup\0bkt_a/h2", r#"{"object_id":"obj_2","at_ms":6}"#);
            raw_put(b, "xid\0bkt_a/h1/obj_1", r#""obj_1""#);
            raw_put(b, "xid\0bkt_b/h9/obj_7", r#""obj_7""#);
            raw_put(b, "obj\0bkt_a/obj_1", "{}");
        })
        .await;
        let dedup: Vec<(String, String)> = store.list(Keyspace::DEDUP, "", None, 10).unwrap();
        assert_eq!(dedup, vec![("bkt_a/obj_1".into(), "h1".into()), ("bkt_a/obj_2".into(), "h2".into())]);
        let xref: Vec<(String, String)> = store.list(Keyspace::EXTERNAL_IDS, "", None, 10).unwrap();
        assert_eq!(xref, vec![("bkt_a/obj_1".into(), "h1".into()), ("bkt_b/obj_7".into(), "h9".into())]);
        assert_eq!(store.count(Keyspace::custom("dedup"), "").unwrap(), 0);
        assert_eq!(store.count(Keyspace::custom("xid"), "").unwrap(), 0);
        assert_eq!(store.get::<u32>(Keyspace::META, VERSION_KEY).unwrap(), Some(FORMAT_VERSION));
        assert_eq!(store.get::<u32>(Keyspace::META, MIGRATE_FROM_KEY).unwrap(), None);
        assert_eq!(store.count(Keyspace::OBJECTS, "").unwrap(), 1, "other keyspaces untouched");
    }

    #[test]
    fn a_newer_format_is_refused_and_an_interrupted_migration_resumes() {
        let dir = tempfile::tempdir().unwrap();
        let backend = SledBackend::open(dir.path()).unwrap();
        write_meta(&backend, &[(VERSION_KEY, FORMAT_VERSION + 1)]).unwrap();
        assert!(matches!(check(&backend, false), Err(StoreError::Format(_))));
        // Interrupted after `check`: the version is already new, the marker still set.
        write_meta(&backend, &[(VERSION_KEY, FORMAT_VERSION), (MIGRATE_FROM_KEY, 2)]).unwrap();
        let mut b = Batch::new();
        raw_put(&mut b, "dedup\0bkt_a/h1", r#"{"object_id":"obj_1","at_ms":5}"#);
        raw_put(&mut b, "dkey\0bkt_a/obj_0", r#""h0""#); // migrated before the crash
        backend.apply(&b).unwrap();
        check(&backend, false).unwrap();
        finish(&backend).unwrap();
        assert_eq!(backend.get(b"dkey\0bkt_a/obj_1").unwrap().as_deref(), Some(&b"\"h1\""[..]));
        assert_eq!(backend.get(b"dkey\0bkt_a/obj_0").unwrap().as_deref(), Some(&b"\"h0\""[..]));
        assert_eq!(backend.get(b"dedup\0bkt_a/h1").unwrap(), None);
        assert_eq!(read::<u32>(&backend, MIGRATE_FROM_KEY).unwrap(), None);
    }

    #[test]
    fn an_upgrade_over_an_unfinished_migration_keeps_its_steps() {
        let dir = tempfile::tempdir().unwrap();
        let backend = SledBackend::open(dir.path()).unwrap();
        // A format-3 binary stopped inside its 2 → 3 migration.
        write_meta(&backend, &[(VERSION_KEY, 3), (MIGRATE_FROM_KEY, 2)]).unwrap();
        let mut b = Batch::new();
        raw_put(&mut b, "dedup\0bkt_a/h1", r#"{"object_id":"obj_1","at_ms":5}"#);
        backend.apply(&b).unwrap();
        check(&backend, false).unwrap();
        finish(&backend).unwrap();
        assert_eq!(backend.get(b"dkey\0bkt_a/obj_1").unwrap().as_deref(), Some(&b"\"h1\""[..]));
        assert_eq!(read::<u32>(&backend, VERSION_KEY).unwrap(), Some(FORMAT_VERSION));
    }

    #[tokio::test]
    async fn version_3_deliveries_name_their_event_stored_once() {
        let dir = tempfile::tempdir().unwrap();
        let store = open_seeded(dir.path(), 3, |b| {
            let event = r#"{"event_id":"evt_1","event_type":"object.created","created_at":"t","payload":{"a":1},"cache_scopes":[]}"#;
            for (wh, del) in [("wh_a", "del_1_a_0"), ("wh_b", "del_1_b_0")] {
                let d = format!(r#"{{"delivery_id":"{del}","status":"pending","event":{event}}}"#);
                raw_put(b, &format!("dlv\0{wh}/{del}"), &d);
            }
        })
        .await;
        let ds: Vec<(String, serde_json::Value)> = store.list(Keyspace::DELIVERIES, "", None, 10).unwrap();
        assert_eq!(ds.len(), 2);
        for (_, d) in &ds {
            assert_eq!(d["event_id"], "evt_1");
            assert_eq!(d["event_type"], "object.created");
            assert_eq!(d["status"], "pending", "the rest of the delivery is kept");
            assert!(d.get("event").is_none());
        }
        let events: Vec<(String, serde_json::Value)> = store.list(Keyspace::EVENTS, "", None, 10).unwrap();
        assert_eq!(events.len(), 1);
        assert_eq!(events[0].1["payload"]["a"], 1);
    }
}
