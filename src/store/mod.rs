//! The store: the one place that owns hookline's on-disk format.
//!
//! Everything durable goes through [`Store`]: typed JSON values under keys of the form
//! `{keyspace}\0{key}`. Keyspaces are the named trees of the data model (buckets, objects,
//! outbox, …). They share one backend tree on purpose: a single [`Batch`] can then write an
//! object *and* its outbox event atomically, which sled only offers across separate trees
//! through slow, retrying transactions.
//!
//! Writes are made durable by the group committer ([`commit`]): callers submit a batch and
//! await a [`Durable`]; concurrent batches are merged into one record of our write-ahead log
//! ([`wal`]) and one fsync. A logged write is visible at once through the overlay
//! ([`overlay`]), which every read consults before the backend; the backend receives the
//! writes a little later, in groups, and persists them lazily.
//!
//! The backend is a trait ([`Backend`]) so a PostgreSQL-compatible backend can replace sled
//! later without touching callers. This module must not know about HTTP or actors.

mod backend;
mod commit;
#[cfg(test)]
mod crash_tests;
mod format;
mod overlay;
mod pieces;
mod room;
mod wal;

pub use backend::{Backend, SledBackend};
pub use commit::Durable;
/// Values longer than this are kept in pieces of this size (see `pieces.rs`).
pub use pieces::PIECE;
pub use room::Room;

use std::sync::Arc;

use serde::{de::DeserializeOwned, Serialize};

/// The write-ahead log's directory within a sled data directory.
const WAL_DIR: &str = "wal";

/// A named tree of the data model. The name is the key prefix on disk: never rename one
/// without a format migration (see `format.rs`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Keyspace(&'static str);

impl Keyspace {
    pub const META: Keyspace = Keyspace("meta");
    pub const CONNECTIONS: Keyspace = Keyspace("conn");
    pub const BUCKETS: Keyspace = Keyspace("bkt");
    pub const OBJECTS: Keyspace = Keyspace("obj");
    pub const BATCHES: Keyspace = Keyspace("batch");
    pub const DEDUP: Keyspace = Keyspace("dkey");
    /// Pages of a bucket's dedup keys, `{bucket_id}/{last object_id}` (see `adapter/records.rs`).
    pub const DEDUP_PAGES: Keyspace = Keyspace("dpage");
    pub const EXTERNAL_IDS: Keyspace = Keyspace("xref");
    pub const BUFFER: Keyspace = Keyspace("buf");
    pub const OUTBOX: Keyspace = Keyspace("outbox");
    pub const WEBHOOKS: Keyspace = Keyspace("wh");
    pub const DELIVERIES: Keyspace = Keyspace("dlv");
    /// Parked delivery retries, `{webhook_id}/{due_ms}/{delivery_id}` (see `delivery::worker`).
    pub const DUE: Keyspace = Keyspace("due");
    pub const EVENTS: Keyspace = Keyspace("evt");
    pub const STATS: Keyspace = Keyspace("stats");
    pub const WRITEBACKS: Keyspace = Keyspace("wb");
    /// Alerts on objects, `{bucket_id}/{object_id}/{alert_id}` (see `adapter::alert`).
    pub const ALERTS: Keyspace = Keyspace("alert");
    /// `Idempotency-Key`s of `POST /v1/events`, `{key}` (see `delivery::registry`).
    pub const PUBLISH_KEYS: Keyspace = Keyspace("pubkey");

    /// A keyspace by name, outside the list above (which should name every live prefix): for
    /// tests, and for migrations that read a retired keyspace (`format.rs`).
    pub const fn custom(name: &'static str) -> Keyspace {
        Keyspace(name)
    }

    pub fn name(&self) -> &'static str {
        self.0
    }

    fn prefix(&self) -> Vec<u8> {
        self.key("")
    }

    /// `{keyspace}\0{key}`, in one allocation of its final size (`concat` sums the lengths
    /// first): several per ingest, where a growing key showed as reallocations.
    fn key(&self, key: &str) -> Vec<u8> {
        [self.0.as_bytes(), b"\0", key.as_bytes()].concat()
    }
}

/// Errors from the store. Callers branch on `Corrupt` (a value that no longer decodes) vs
/// `Io` (the backend failed) vs `Closed` (shutting down).
#[derive(Debug, thiserror::Error, Clone)]
pub enum StoreError {
    #[error("storage backend error: {0}")]
    Io(String),
    #[error("stored value under {key} is unreadable: {reason}")]
    Corrupt { key: String, reason: String },
    #[error("the store is closed")]
    Closed,
    /// A write the disk refused failed the store earlier: it refuses every write until a
    /// restart (the daemon stops itself, see `app.rs`). Callers may answer 503: retry later.
    #[error("{0}")]
    Failed(String),
    #[error("{0}")]
    Format(String),
}

impl From<sled::Error> for StoreError {
    fn from(e: sled::Error) -> Self {
        StoreError::Io(e.to_string())
    }
}

/// One write operation of a batch.
#[derive(Debug, Clone)]
pub enum Op {
    Put(Vec<u8>, Vec<u8>),
    /// A put of a key that exists nowhere yet (it holds a newly generated ID). Logged as a
    /// plain put; in memory it lets a delete that follows soon cancel it: a buffered event
    /// flushed, or an outbox event fanned out, before the overlay moved into the backend
    /// then never reaches sled at all (see `overlay.rs`).
    PutNew(Vec<u8>, Vec<u8>),
    Delete(Vec<u8>),
}

/// An atomic set of writes. Applied all-or-nothing by the backend.
#[derive(Debug, Default, Clone)]
pub struct Batch {
    pub(crate) ops: Vec<Op>,
}

impl Batch {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn is_empty(&self) -> bool {
        self.ops.is_empty()
    }

    pub fn len(&self) -> usize {
        self.ops.len()
    }

    /// Stores `value` as JSON under `key` in `ks`.
    /// Adds a put; returns the stored value's size in bytes (for callers that bound what
    /// they hold).
    pub fn put<T: Serialize + ?Sized>(&mut self, ks: Keyspace, key: &str, value: &T) -> usize {
        self.push_put(Op::Put, ks, key, value)
    }

    /// [`Batch::put`] of a key that exists nowhere yet, not in the store nor in a batch
    /// submitted earlier: one built from an ID generated for it. Wrongly used on a key that
    /// exists, a delete that follows soon could leave its stored value in place.
    pub fn put_new<T: Serialize + ?Sized>(&mut self, ks: Keyspace, key: &str, value: &T) -> usize {
        self.push_put(Op::PutNew, ks, key, value)
    }

    /// Adds `value`'s JSON under `key` as the put `op` makes; returns its size.
    fn push_put<T: Serialize + ?Sized>(
        &mut self,
        op: fn(Vec<u8>, Vec<u8>) -> Op,
        ks: Keyspace,
        key: &str,
        value: &T,
    ) -> usize {
        // Serializing our own model types cannot fail (no non-string map keys, no custom
        // serializers that error); a failure would be a programming error caught by tests.
        let bytes = to_json(value).unwrap_or_else(|e| {
            tracing::error!(error = %e, keyspace = ks.name(), "serialize value for store");
            Vec::new()
        });
        let size = bytes.len();
        self.ops.push(op(ks.key(key), bytes));
        size
    }

    pub fn delete(&mut self, ks: Keyspace, key: &str) {
        self.ops.push(Op::Delete(ks.key(key)));
    }

    /// Leaves the first `at` operations here and returns the rest (none past the end).
    pub fn split_off(&mut self, at: usize) -> Batch {
        Batch { ops: self.ops.split_off(at.min(self.ops.len())) }
    }

    /// Appends all of `other`'s operations after this batch's.
    pub fn extend(&mut self, other: Batch) {
        self.ops.extend(other.ops);
    }
}

thread_local! {
    /// Where [`to_json`] serializes before copying out.
    static SCRATCH: std::cell::RefCell<Vec<u8>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// Largest scratch buffer kept between values: a rare large one does not hold its memory.
const SCRATCH_KEEP: usize = 64 << 10;

/// `value` as JSON in a vector of its size. `serde_json::to_vec` starts at 128 bytes and
/// doubles, and a stored record of a few hundred bytes took two or three reallocations (with
/// the keys', 1.3% of a time_window profile's samples); here it is written into a buffer kept
/// per thread and copied out once. A value that outgrew [`SCRATCH_KEEP`] takes the buffer
/// itself instead: copying it would hold it twice for nothing.
fn to_json<T: Serialize + ?Sized>(value: &T) -> serde_json::Result<Vec<u8>> {
    SCRATCH.with(|scratch| {
        // Serializing never stores, so this cannot be re-entered; if it ever were, do without.
        let Ok(mut buf) = scratch.try_borrow_mut() else {
            return serde_json::to_vec(value);
        };
        buf.clear();
        let written = serde_json::to_writer(&mut *buf, value);
        if buf.capacity() > SCRATCH_KEEP {
            let large = std::mem::take(&mut *buf);
            return written.map(|()| large);
        }
        written.map(|()| buf.to_vec())
    })
}

/// Handle to the store. Cheap to clone; all clones share one backend and one committer.
#[derive(Clone)]
pub struct Store {
    backend: Arc<dyn Backend>,
    /// Reads: the overlay of logged writes over the backend.
    reader: Arc<overlay::Layered>,
    committer: commit::Committer,
    wal_dir: Arc<std::path::PathBuf>,
    /// The log directory as opened, held open: deleted, it shows no links; deleted and made
    /// again, the path names another inode (and, held, this one cannot be reused meanwhile).
    wal_dir_handle: Option<Arc<std::fs::File>>,
}

/// What [`Store::close_after_losing_log`] could not do.
#[derive(Debug, thiserror::Error)]
pub enum LogLoss {
    #[error("the store could not close ({0}): writes acknowledged since the last checkpoint may be lost")]
    NotClosed(StoreError),
    #[error("the data directory {0} is gone, with the store in it")]
    DataDirGone(String),
    #[error("the store closed (nothing acknowledged is lost), but the log directory could not be made again: {0}")]
    DirNotMade(String),
}

impl Store {
    /// Opens (or creates) the sled store at `path` (its write-ahead log in `path/wal`),
    /// replays the log, checks the format version and starts the group committer.
    pub fn open_sled(path: &std::path::Path) -> Result<Store, StoreError> {
        Self::open_sled_with_cache(path, backend::DEFAULT_CACHE_BYTES)
    }

    /// [`Store::open_sled`] with sled's page cache bounded to `cache_bytes`.
    pub fn open_sled_with_cache(path: &std::path::Path, cache_bytes: u64) -> Result<Store, StoreError> {
        let backend: Arc<dyn Backend> = Arc::new(SledBackend::open_with_cache(path, cache_bytes)?);
        Self::open(backend, &path.join(WAL_DIR))
    }

    /// Opens a store over any backend, with its write-ahead log in `wal_dir`.
    pub fn open(backend: Arc<dyn Backend>, wal_dir: &std::path::Path) -> Result<Store, StoreError> {
        // The version first (it is written straight to the backend, flushed): a log written
        // by a newer binary must not be replayed by an older one. Keyspace migrations run
        // after the replay, which may hold writes in the older layout.
        format::check(backend.as_ref(), has_log(wal_dir)?)?;
        let log_from = format::log_from(backend.as_ref())?;
        if log_from.is_some() && !wal_dir.exists() {
            // hookline makes the directory with the store and never removes it: it was
            // deleted (or left out of a restore), with whatever it held.
            return Err(StoreError::Corrupt {
                key: wal_dir.display().to_string(),
                reason: "the write-ahead log directory is missing, though this store was written with one: writes \
                         acknowledged since the last checkpoint may be lost. Refusing to start: restore it from a \
                         backup; or, if hookline last stopped cleanly (\"store flushed; bye\" in its log) or the loss \
                         is accepted, create it empty, as the user hookline runs as (mkdir -m 700), and start again"
                    .into(),
            });
        }
        let next_segment = wal::recover(wal_dir, backend.as_ref(), log_from, &format::log_from_batch)?;
        if log_from != Some(next_segment) {
            // `recover` recorded it if it replayed segments; not for a log with none to
            // replay, nor for a store from before the record (then this writes it).
            backend.apply(&format::log_from_batch(next_segment))?;
            futures::executor::block_on(backend.flush())?;
        }
        format::finish(backend.as_ref())?;
        let overlay = Arc::new(overlay::Overlay::default());
        let committer =
            commit::Committer::start(backend.clone(), overlay.clone(), wal_dir.to_path_buf(), next_segment)?;
        let reader = Arc::new(overlay::Layered { overlay, backend: backend.clone() });
        let wal_dir_handle = std::fs::File::open(wal_dir).ok().map(Arc::new);
        Ok(Store { backend, reader, committer, wal_dir: Arc::new(wal_dir.to_path_buf()), wal_dir_handle })
    }

    /// Reads one value.
    pub fn get<T: DeserializeOwned>(&self, ks: Keyspace, key: &str) -> Result<Option<T>, StoreError> {
        let full = ks.key(key);
        match self.reader.get(&full)? {
            None => Ok(None),
            Some(bytes) => decode(ks, key, &bytes).map(Some),
        }
    }

    /// Reads one value with the size of its stored form (for callers that bound what they
    /// hold by it, without encoding it again to measure it).
    pub fn get_sized<T: DeserializeOwned>(&self, ks: Keyspace, key: &str) -> Result<Option<(T, usize)>, StoreError> {
        match self.reader.get(&ks.key(key))? {
            None => Ok(None),
            Some(bytes) => decode(ks, key, &bytes).map(|v| Some((v, bytes.len()))),
        }
    }

    /// Whether a key exists.
    pub fn contains(&self, ks: Keyspace, key: &str) -> Result<bool, StoreError> {
        Ok(self.reader.get(&ks.key(key))?.is_some())
    }

    /// Lists up to `limit` values whose key starts with `prefix`, in key order, starting
    /// strictly after the key `after` (a pagination cursor) when given.
    pub fn list<T: DeserializeOwned>(
        &self,
        ks: Keyspace,
        prefix: &str,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Vec<(String, T)>, StoreError> {
        let mut out = Vec::new();
        self.for_each_after(ks, prefix, after, |key, value| {
            out.push((key.to_string(), value));
            out.len() < limit
        })?;
        Ok(out)
    }

    /// [`Store::list`] from the start of `prefix`, stopping also once the values read hold
    /// `max_bytes` in their stored form (at least one is read): for callers that hold a
    /// slice of large values at once. The flag: whether it stopped at a bound (more may
    /// follow).
    pub fn list_within<T: DeserializeOwned>(
        &self,
        ks: Keyspace,
        prefix: &str,
        limit: usize,
        max_bytes: usize,
    ) -> Result<(Vec<(String, T)>, bool), StoreError> {
        let mut out = Vec::new();
        let (mut bytes, mut bounded) = (0usize, false);
        let visit = |key: &str, value: T, size: usize| {
            out.push((key.to_string(), value));
            bytes += size;
            bounded = out.len() >= limit || bytes >= max_bytes;
            !bounded
        };
        self.reader.scan_from(&scan_start(ks, prefix, None), &ks.key(prefix), &mut decoding_sized(ks, visit))?;
        Ok((out, bounded))
    }

    /// Visits the values under `prefix` in key order, starting strictly after the key `after`
    /// (a pagination cursor) when given; the visitor returns `false` to stop.
    pub fn for_each_after<T: DeserializeOwned>(
        &self,
        ks: Keyspace,
        prefix: &str,
        after: Option<&str>,
        f: impl FnMut(&str, T) -> bool,
    ) -> Result<(), StoreError> {
        self.reader.scan_from(&scan_start(ks, prefix, after), &ks.key(prefix), &mut decoding(ks, f))
    }

    /// Visits every value under `prefix` in key order; the visitor returns `false` to stop.
    pub fn for_each<T: DeserializeOwned>(
        &self,
        ks: Keyspace,
        prefix: &str,
        f: impl FnMut(&str, T) -> bool,
    ) -> Result<(), StoreError> {
        self.for_each_from(ks, prefix, prefix, f)
    }

    /// Like [`Store::for_each`], from the key `from` (inclusive) on; `from` starts with `prefix`.
    pub fn for_each_from<T: DeserializeOwned>(
        &self,
        ks: Keyspace,
        prefix: &str,
        from: &str,
        f: impl FnMut(&str, T) -> bool,
    ) -> Result<(), StoreError> {
        let full_prefix = ks.key(prefix);
        let start = ks.key(from);
        self.reader.scan_from(&start, &full_prefix, &mut decoding(ks, f))
    }

    /// Visits the values under `prefix` in descending key order, from just below
    /// `prefix + before` (all when `None`); the visitor returns `false` to stop.
    pub fn for_each_rev<T: DeserializeOwned>(
        &self,
        ks: Keyspace,
        prefix: &str,
        before: Option<&str>,
        f: impl FnMut(&str, T) -> bool,
    ) -> Result<(), StoreError> {
        let full_prefix = ks.key(prefix);
        let end = before.map(|b| ks.key(&format!("{prefix}{b}")));
        self.reader.scan_rev(&full_prefix, end.as_deref(), &mut decoding(ks, f))
    }

    /// Visits every key under `prefix` without decoding values.
    pub fn for_each_key(&self, ks: Keyspace, prefix: &str, f: impl FnMut(&str) -> bool) -> Result<(), StoreError> {
        self.for_each_key_after(ks, prefix, None, f)
    }

    /// [`Store::for_each_key`] starting strictly after the key `after` when given: for a list
    /// that pages by key but reads only the values it keeps (merging two prefixes, say).
    pub fn for_each_key_after(
        &self,
        ks: Keyspace,
        prefix: &str,
        after: Option<&str>,
        mut f: impl FnMut(&str) -> bool,
    ) -> Result<(), StoreError> {
        // Keys only: a long value is not assembled from its pieces just to be ignored.
        self.for_each_whole(ks, prefix, after, |k, _| Ok(f(k)))
    }

    /// Visits every key under `prefix` (strictly after the key `after` when given) with its
    /// value as stored when that is kept whole, and `None` for one kept in pieces (not
    /// assembled: read it with [`Store::get`] if needed). For a scan that needs only the
    /// start of most values. The visitor returns `false` to stop.
    pub fn for_each_whole(
        &self,
        ks: Keyspace,
        prefix: &str,
        after: Option<&str>,
        mut f: impl FnMut(&str, Option<&[u8]>) -> Result<bool, StoreError>,
    ) -> Result<(), StoreError> {
        let ks_prefix_len = ks.prefix().len();
        let start = scan_start(ks, prefix, after);
        self.reader.scan_keys_from(&start, &ks.key(prefix), &mut |k, v| {
            let whole = pieces::marker(v).is_none().then_some(v);
            f(&String::from_utf8_lossy(&k[ks_prefix_len..]), whole)
        })
    }

    /// Adds to `batch` the deletion of every key under `prefix` in each of `keyspaces` (what
    /// the scan sees: callers barrier first when their own writes must be in it).
    pub fn delete_under(&self, batch: &mut Batch, keyspaces: &[Keyspace], prefix: &str) -> Result<(), StoreError> {
        for &ks in keyspaces {
            self.for_each_key(ks, prefix, |k| {
                batch.delete(ks, k);
                true
            })?;
        }
        Ok(())
    }

    /// Counts the keys under `prefix`.
    pub fn count(&self, ks: Keyspace, prefix: &str) -> Result<usize, StoreError> {
        let mut n = 0;
        self.for_each_key(ks, prefix, |_| {
            n += 1;
            true
        })?;
        Ok(n)
    }

    /// Submits a batch to the group committer. The returned [`Durable`] resolves once the
    /// batch is on disk (in the log) *and* visible to reads: answer a client only after
    /// awaiting it. Batches become visible in submission order, each atomically with respect
    /// to a crash (a scan may see part of a batch that becomes visible during it).
    pub fn submit(&self, batch: Batch) -> Durable {
        self.committer.submit(batch)
    }

    /// Submits a batch and waits until it is durable.
    pub async fn commit(&self, batch: Batch) -> Result<(), StoreError> {
        self.submit(batch).await
    }

    /// Ends the store (at shutdown): waits until everything submitted before is durable, in
    /// the backend and checkpointed, so the next start has nothing to replay. Every later
    /// write fails with [`StoreError::Closed`].
    pub async fn close(&self) -> Result<(), StoreError> {
        self.committer.close().await
    }

    /// False once a write has failed (the store then refuses all writes until a restart) or
    /// the store is closed.
    pub fn healthy(&self) -> bool {
        self.committer.healthy()
    }

    /// Whether the write-ahead log directory was deleted (or replaced: deleted and made
    /// again), or the segment in use deleted from it, while the store is open: the log then
    /// goes on into unlinked files, acknowledging writes that a crash would lose and that no
    /// start could replay. The daemon checks it every 50 ms and answers with
    /// [`Store::close_after_losing_log`].
    pub fn log_lost(&self) -> bool {
        use std::os::unix::fs::MetadataExt;
        let writing = self.committer.writing_segment().map(|no| wal::segment_path(&self.wal_dir, no));
        if writing.is_some_and(|p| matches!(std::fs::metadata(p), Err(e) if e.kind() == std::io::ErrorKind::NotFound)) {
            return true;
        }
        let Some(Ok(held)) = self.wal_dir_handle.as_ref().map(|f| f.metadata()) else { return false };
        if held.nlink() == 0 {
            return true;
        }
        match std::fs::metadata(self.wal_dir.as_path()) {
            Ok(m) => (m.dev(), m.ino()) != (held.dev(), held.ino()),
            Err(e) => e.kind() == std::io::ErrorKind::NotFound,
        }
    }

    /// After [`Store::log_lost`]: closes the store, which moves every acknowledged write
    /// into sled and flushes it (the deleted segments stay readable through their open
    /// files), then makes the directory again if it is missing, so that the next start goes
    /// on with a new log, having lost nothing. [`LogLoss::NotClosed`] means writes
    /// acknowledged since the last checkpoint may be lost (the store had failed before): the
    /// directory is then not made, and the next start refuses (see [`Store::open`]), as it
    /// does after a crash before this is over.
    pub async fn close_after_losing_log(&self) -> Result<(), LogLoss> {
        self.close().await.map_err(LogLoss::NotClosed)?;
        let dir = self.wal_dir.as_path();
        if let Some(data) = dir.parent().filter(|d| !d.exists()) {
            return Err(LogLoss::DataDirGone(data.display().to_string()));
        }
        if dir.exists() {
            return Ok(()); // made again by someone: the next start uses it (see `wal::recover`)
        }
        wal::make_dir(dir, false).map_err(|e| LogLoss::DirNotMade(format!("{}: {e}", dir.display())))
    }

    /// Bytes used on disk, for the storage gauge.
    pub fn size_on_disk(&self) -> u64 {
        self.backend.size_on_disk().unwrap_or(0) + wal::size_on_disk(&self.wal_dir)
    }
}

/// Whether `wal_dir` holds log segments: the data directory was in use.
pub(crate) fn has_log(wal_dir: &std::path::Path) -> Result<bool, StoreError> {
    Ok(wal_dir.is_dir()
        && !wal::segments(wal_dir)
            .map_err(|e| StoreError::Io(format!("list log directory {}: {e}", wal_dir.display())))?
            .is_empty())
}

/// Refuses to start, touching nothing, when the filesystem lacks room to replay the log into
/// sled (which takes more than the log's size). Why: after a full disk, a start with too
/// little freed would grow sled by all of it mid-replay and fail again, each try (a service
/// manager restarting us) eating what the operator frees. The margin is generous on purpose:
/// twice the bytes of the segments' records plus 64 MiB. Called by the backend under the
/// data directory's lock, once the part-made files whose space opening needs are deleted
/// (they would otherwise count as taken).
pub(crate) fn enough_room_to_replay(path: &std::path::Path) -> Result<(), StoreError> {
    let log = wal::replay_bytes(&path.join(WAL_DIR));
    if log == 0 {
        return Ok(());
    }
    match fs2::available_space(path) {
        Ok(free) => room_to_replay(path, log, free),
        Err(_) => Ok(()), // unknown: the replay itself will tell
    }
}

/// The check of [`enough_room_to_replay`] for `log` bytes of segments and `free` bytes free.
fn room_to_replay(path: &std::path::Path, log: u64, free: u64) -> Result<(), StoreError> {
    let needed = 2 * log + (64 << 20);
    if free >= needed {
        return Ok(());
    }
    Err(StoreError::Io(format!(
        "not enough free space in {} to replay the write-ahead log: {} MiB free, about {} MiB needed \
         (sled takes more than the log's {} MiB of records); free space on that filesystem and start again \
         (nothing was changed)",
        path.display(),
        free >> 20,
        needed.div_ceil(1 << 20),
        log >> 20
    )))
}

/// Where a forward scan of `prefix` starts: its first key, or the first key strictly after
/// `after` (a pagination cursor).
fn scan_start(ks: Keyspace, prefix: &str, after: Option<&str>) -> Vec<u8> {
    match after {
        Some(a) => {
            let mut k = ks.key(a);
            k.push(0); // first key strictly greater than `a`
            k
        }
        None => ks.key(prefix),
    }
}

/// A raw scan visitor over `ks` that hands `f` each key (without the keyspace prefix) and its
/// decoded value; `f` returns `false` to stop.
fn decoding<T: DeserializeOwned>(
    ks: Keyspace,
    mut f: impl FnMut(&str, T) -> bool,
) -> impl FnMut(&[u8], &[u8]) -> Result<bool, StoreError> {
    decoding_sized(ks, move |key, value, _| f(key, value))
}

/// [`decoding`], handing the visitor each value's stored size too.
fn decoding_sized<T: DeserializeOwned>(
    ks: Keyspace,
    mut f: impl FnMut(&str, T, usize) -> bool,
) -> impl FnMut(&[u8], &[u8]) -> Result<bool, StoreError> {
    let ks_prefix_len = ks.prefix().len();
    move |k, v| {
        let key = String::from_utf8_lossy(&k[ks_prefix_len..]).into_owned();
        let value = decode(ks, &key, v)?;
        Ok(f(&key, value, v.len()))
    }
}

fn decode<T: DeserializeOwned>(ks: Keyspace, key: &str, bytes: &[u8]) -> Result<T, StoreError> {
    from_stored(bytes).map_err(|e| StoreError::Corrupt { key: format!("{}/{}", ks.name(), key), reason: e.to_string() })
}

/// Decodes a stored value without serde_json's nesting limit (128). Every request body is
/// parsed under that limit, and a stored record wraps what it accepted a level or more
/// deeper (an object holds its metadata, an outbox entry its event's payload): under the
/// limit here, one accepted event nested 125 deep could never be read back, and would stop
/// the outbox, an object list or an adapter's start for good. What was stored was parsed
/// under the limit first, so the depth here stays that plus the few levels of the record.
pub(crate) fn from_stored<T: DeserializeOwned>(bytes: &[u8]) -> serde_json::Result<T> {
    let mut de = serde_json::Deserializer::from_slice(bytes);
    de.disable_recursion_limit();
    let value = T::deserialize(&mut de)?;
    de.end()?;
    Ok(value)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    #[test]
    fn a_start_without_room_to_replay_the_log_is_refused_with_the_figures() {
        let path = std::path::Path::new("/data");
        let log = 32 << 20;
        let e = room_to_replay(path, log, 100 << 20).unwrap_err().to_string();
        assert!(e.contains("100 MiB free, about 128 MiB needed") && e.contains("nothing was changed"), "{e}");
        assert!(room_to_replay(path, log, 128 << 20).is_ok());
    }

    #[test]
    fn split_off_keeps_the_front_and_returns_the_rest() {
        let mut b = Batch::new();
        for i in 0..5 {
            b.put(Keyspace::META, &format!("k{i}"), &i);
        }
        let tail = b.split_off(3);
        assert_eq!((b.len(), tail.len()), (3, 2));
        assert_eq!(b.split_off(10).len(), 0, "past the end: nothing");
        assert_eq!(b.len(), 3);
        let mut whole = b;
        whole.extend(tail);
        assert_eq!(whole.len(), 5);
    }

    /// The scratch buffer changes nothing of what is stored: each value comes out as
    /// `serde_json` writes it, small or large, one after the other (no leftover of a longer
    /// value before a shorter one), under the key `{keyspace}\0{key}`.
    #[test]
    fn values_are_stored_as_serde_json_writes_them() {
        let large = serde_json::json!({"pad": "x".repeat(SCRATCH_KEEP * 2)});
        let values = [serde_json::json!({"a": [1, 2, "é\n"]}), large, serde_json::json!(7), serde_json::json!({})];
        let mut b = Batch::new();
        for (i, v) in values.iter().enumerate() {
            let size = b.put(Keyspace::META, &format!("k{i}"), v);
            let Op::Put(key, bytes) = &b.ops[i] else { panic!("a put") };
            assert_eq!(key.as_slice(), format!("meta\0k{i}").as_bytes());
            assert_eq!(bytes, &serde_json::to_vec(v).unwrap());
            assert_eq!(size, bytes.len());
        }
        SCRATCH.with(|s| assert!(s.borrow().capacity() <= SCRATCH_KEEP, "a large value's buffer is not kept"));
    }

    /// Opens the store over a directory a dropped store or backend just used: the store's
    /// threads and sled's own release the directory's lock a moment after the drop.
    pub(crate) async fn reopen(path: &std::path::Path) -> Store {
        for _ in 0..200 {
            if let Ok(s) = Store::open_sled(path) {
                return s;
            }
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
        Store::open_sled(path).expect("reopen the store")
    }

    #[tokio::test]
    async fn put_list_paginate_delete() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open_sled(dir.path()).unwrap();
        let mut b = Batch::new();
        for i in 0..5 {
            b.put(Keyspace::OBJECTS, &format!("bkt_a/obj_{i}"), &i);
        }
        b.put(Keyspace::OBJECTS, "bkt_b/obj_9", &9);
        store.commit(b).await.unwrap();

        let page: Vec<(String, i32)> = store.list(Keyspace::OBJECTS, "bkt_a/", None, 2).unwrap();
        assert_eq!(page.iter().map(|p| p.1).collect::<Vec<_>>(), vec![0, 1]);
        let page2: Vec<(String, i32)> = store.list(Keyspace::OBJECTS, "bkt_a/", Some(&page[1].0), 10).unwrap();
        assert_eq!(page2.iter().map(|p| p.1).collect::<Vec<_>>(), vec![2, 3, 4]);
        assert_eq!(store.count(Keyspace::OBJECTS, "bkt_b/").unwrap(), 1);

        let mut keys = Vec::new();
        store
            .for_each_key_after(Keyspace::OBJECTS, "bkt_a/", Some("bkt_a/obj_2"), |k| {
                keys.push(k.to_string());
                true
            })
            .unwrap();
        assert_eq!(keys, ["bkt_a/obj_3", "bkt_a/obj_4"], "keys strictly after, within the prefix");

        let mut d = Batch::new();
        d.delete(Keyspace::OBJECTS, "bkt_a/obj_0");
        store.commit(d).await.unwrap();
        assert_eq!(store.get::<i32>(Keyspace::OBJECTS, "bkt_a/obj_0").unwrap(), None);
        assert_eq!(store.get::<i32>(Keyspace::OBJECTS, "bkt_a/obj_1").unwrap(), Some(1));
    }

    /// A slice bounded by count and by the bytes of its values, at least one value taken.
    #[tokio::test]
    async fn a_list_within_bounds_stops_at_either() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open_sled(dir.path()).unwrap();
        let mut b = Batch::new();
        for i in 0..4 {
            b.put(Keyspace::OUTBOX, &format!("e{i}"), &"x".repeat(100));
        }
        store.commit(b).await.unwrap();
        let values = |(page, more): (Vec<(String, String)>, bool)| (page.len(), more);
        assert_eq!(values(store.list_within(Keyspace::OUTBOX, "", 10, 1 << 20).unwrap()), (4, false));
        assert_eq!(values(store.list_within(Keyspace::OUTBOX, "", 3, 1 << 20).unwrap()), (3, true));
        // 102 bytes stored each (the JSON string's quotes): the second reaches 150.
        assert_eq!(values(store.list_within(Keyspace::OUTBOX, "", 10, 150).unwrap()), (2, true));
        assert_eq!(values(store.list_within(Keyspace::OUTBOX, "", 10, 1).unwrap()), (1, true));
    }

    #[tokio::test]
    async fn concurrent_commits_are_all_durable_and_ordered() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open_sled(dir.path()).unwrap();
        let mut waits = Vec::new();
        for i in 0..200 {
            let mut b = Batch::new();
            b.put(Keyspace::META, "last", &i);
            b.put(Keyspace::OBJECTS, &format!("{i:05}"), &i);
            waits.push(store.submit(b));
        }
        for w in waits {
            w.await.unwrap();
        }
        assert_eq!(store.get::<i32>(Keyspace::META, "last").unwrap(), Some(199));
        assert_eq!(store.count(Keyspace::OBJECTS, "").unwrap(), 200);
    }

    #[tokio::test]
    async fn batches_are_applied_in_submission_order() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open_sled(dir.path()).unwrap();
        let mut waits = Vec::new();
        for i in 0..100 {
            let mut b = Batch::new();
            b.put(Keyspace::META, "k", &i);
            waits.push(store.submit(b));
        }
        for w in waits {
            w.await.unwrap();
        }
        // Answered means applied (visible), and the last write of the key wins.
        assert_eq!(store.get::<i32>(Keyspace::META, "k").unwrap(), Some(99));
    }

    #[tokio::test]
    async fn reopen_keeps_data_and_format_version() {
        let dir = tempfile::tempdir().unwrap();
        {
            let store = Store::open_sled(dir.path()).unwrap();
            let mut b = Batch::new();
            b.put(Keyspace::BUCKETS, "bkt_1", &"x");
            store.commit(b).await.unwrap();
        }
        let store = reopen(dir.path()).await;
        assert_eq!(store.get::<String>(Keyspace::BUCKETS, "bkt_1").unwrap().as_deref(), Some("x"));
    }

    #[tokio::test]
    async fn close_moves_everything_into_the_backend_and_refuses_later_writes() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open_sled(dir.path()).unwrap();
        let mut b = Batch::new();
        b.put(Keyspace::OBJECTS, "a", &1);
        store.commit(b).await.unwrap();
        assert!(store.healthy());
        store.close().await.unwrap();
        assert!(!store.healthy(), "a closed store is not ready (`/readyz`)");
        let mut later = Batch::new();
        later.put(Keyspace::OBJECTS, "b", &2);
        assert!(matches!(store.commit(later).await, Err(StoreError::Closed)));
        // Checkpointed: the log holds no segment with a record, only the spare.
        let logged: u64 = wal::segments(&dir.path().join("wal")).unwrap().iter().filter(|n| **n == 0).count() as u64;
        assert_eq!(logged, 0, "segment 0 (the one written) was removed by the final checkpoint");
        // And sled itself has the write.
        assert_eq!(store.reader.backend.get(&Keyspace::OBJECTS.key("a")).unwrap(), Some(b"1".to_vec()));
    }

    /// A backend whose writes can be made to fail, to test the committer's failure path.
    struct Flaky {
        inner: SledBackend,
        fail: std::sync::atomic::AtomicBool,
    }

    impl Backend for Flaky {
        fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
            self.inner.get(key)
        }
        fn scan_from(&self, start: &[u8], prefix: &[u8], visit: &mut backend::Visitor<'_>) -> Result<(), StoreError> {
            self.inner.scan_from(start, prefix, visit)
        }
        fn scan_rev(
            &self,
            prefix: &[u8],
            end: Option<&[u8]>,
            visit: &mut backend::Visitor<'_>,
        ) -> Result<(), StoreError> {
            self.inner.scan_rev(prefix, end, visit)
        }
        fn apply(&self, batch: &Batch) -> Result<(), StoreError> {
            if self.fail.load(std::sync::atomic::Ordering::Relaxed) {
                return Err(StoreError::Io("injected".into()));
            }
            self.inner.apply(batch)
        }
        fn flush(&self) -> std::pin::Pin<Box<dyn std::future::Future<Output = Result<(), StoreError>> + Send + '_>> {
            self.inner.flush()
        }
        fn size_on_disk(&self) -> Result<u64, StoreError> {
            self.inner.size_on_disk()
        }
    }

    #[tokio::test]
    async fn after_a_failed_apply_every_later_write_fails() {
        let dir = tempfile::tempdir().unwrap();
        let flaky = Arc::new(Flaky { inner: SledBackend::open(dir.path()).unwrap(), fail: false.into() });
        let store = Store::open(flaky.clone(), &dir.path().join("wal")).unwrap();
        store.commit(Batch::new()).await.unwrap();
        assert!(store.healthy());
        flaky.fail.store(true, std::sync::atomic::Ordering::Relaxed);
        // Logged, so durable and visible, even though the backend will refuse it.
        let mut b = Batch::new();
        b.put(Keyspace::OBJECTS, "kept", &1);
        store.commit(b).await.unwrap();
        assert_eq!(store.get::<i32>(Keyspace::OBJECTS, "kept").unwrap(), Some(1));
        for _ in 0..200 {
            if !store.healthy() {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
        assert!(!store.healthy(), "the failed apply poisons the store");
        flaky.fail.store(false, std::sync::atomic::Ordering::Relaxed);
        // Reads still see the write the backend refused; no later write is accepted, not
        // even an empty barrier.
        assert_eq!(store.get::<i32>(Keyspace::OBJECTS, "kept").unwrap(), Some(1));
        let mut later = Batch::new();
        later.put(Keyspace::OBJECTS, "refused", &2);
        assert!(store.commit(later).await.is_err());
        assert!(store.commit(Batch::new()).await.is_err());
        drop(store);
        drop(flaky);
        // The log kept the write for the next start's replay.
        let reopened = reopen(dir.path()).await;
        assert_eq!(reopened.get::<i32>(Keyspace::OBJECTS, "kept").unwrap(), Some(1));
        assert_eq!(reopened.get::<i32>(Keyspace::OBJECTS, "refused").unwrap(), None);
    }
}
