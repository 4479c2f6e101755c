//! The storage backend seam: the minimal key-value operations hookline needs, and the sled
//! implementation. A future PostgreSQL-compatible backend implements the same trait.

use std::future::Future;
use std::pin::Pin;

use super::pieces::Pieces;
use super::{Batch, Op, StoreError};

/// A visitor over `(key, value)` pairs; returns `Ok(false)` to stop the scan.
pub type Visitor<'a> = dyn FnMut(&[u8], &[u8]) -> Result<bool, StoreError> + 'a;

/// What a storage backend must provide. Keys and values are opaque bytes; the typed layer
/// in `store/mod.rs` owns the encoding.
pub trait Backend: Send + Sync + 'static {
    fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError>;
    /// Visits keys `>= start` in order while they start with `prefix`.
    fn scan_from(&self, start: &[u8], prefix: &[u8], visit: &mut Visitor<'_>) -> Result<(), StoreError>;
    /// Like `scan_from` for a caller that reads only the keys: the values it is given may be
    /// placeholders (a long value's marker, not the value).
    fn scan_keys_from(&self, start: &[u8], prefix: &[u8], visit: &mut Visitor<'_>) -> Result<(), StoreError> {
        self.scan_from(start, prefix, visit)
    }
    /// Visits the keys that start with `prefix` and are `< end` (all of them when `None`), in
    /// descending order (newest first for time-ordered keys).
    fn scan_rev(&self, prefix: &[u8], end: Option<&[u8]>, visit: &mut Visitor<'_>) -> Result<(), StoreError>;
    /// Applies the operations in order, not necessarily atomically nor durably: the
    /// write-ahead log in front of the backend provides both (see `store/wal.rs`), and
    /// `flush` makes everything applied durable in the backend itself.
    fn apply(&self, batch: &Batch) -> Result<(), StoreError>;
    /// Like `apply`, for operations borrowed from elsewhere (the overlay): `None` deletes.
    fn apply_each(&self, ops: &mut dyn Iterator<Item = (&[u8], Option<&[u8]>)>) -> Result<(), StoreError> {
        let mut batch = Batch::default();
        for (k, v) in ops {
            batch.ops.push(match v {
                Some(v) => Op::Put(k.to_vec(), v.to_vec()),
                None => Op::Delete(k.to_vec()),
            });
        }
        self.apply(&batch)
    }
    /// Like `apply`, for a batch replayed from the log at start: what a crash may have left
    /// half done (see `store/pieces.rs`) is cleaned up too.
    fn replay(&self, batch: &Batch) -> Result<(), StoreError> {
        self.apply(batch)
    }
    /// Makes every applied batch durable.
    fn flush(&self) -> Pin<Box<dyn Future<Output = Result<(), StoreError>> + Send + '_>>;
    fn size_on_disk(&self) -> Result<u64, StoreError>;
}

/// sled 0.34 backend. One tree holds every keyspace, a second the pieces of its long values
/// (see [`super::pieces`]). sled buffers writes and flushes every 500 ms by itself; nothing
/// relies on that: acknowledged writes are in the write-ahead log, and a checkpoint flushes
/// sled explicitly (see [`Backend::flush`] below) before retiring log segments.
pub struct SledBackend {
    db: sled::Db,
    trees: Pieces,
    /// Set by any sled error: see `Drop`.
    failed: std::sync::atomic::AtomicBool,
    /// `{path}/hookline.lock`, locked for as long as this backend lives (see [`lock_dir`]).
    _lock: std::fs::File,
    /// sled's data file (`{path}/db`), for the `fsync` that sled's own flush leaves out.
    file: std::fs::File,
}

/// sled flushes when its last handle drops, and after an I/O error (a full disk) that flush
/// waits forever: a daemon could then hang on its way out (or at start, when the replay's
/// flush fails). After an error the handles are leaked instead; nothing is lost, the write-ahead
/// log holds every acknowledged write and replays at the next start.
impl Drop for SledBackend {
    fn drop(&mut self) {
        if self.failed.load(std::sync::atomic::Ordering::Relaxed) {
            std::mem::forget(self.db.clone());
            std::mem::forget(self.trees.main.clone());
            std::mem::forget(self.trees.pieces.clone());
        }
    }
}

impl SledBackend {
    /// A value as stored in the main tree, made whole (see [`Pieces::resolve`]); an error
    /// is remembered as sled's own are.
    fn resolve(&self, key: &[u8], stored: sled::IVec) -> Result<Option<Vec<u8>>, StoreError> {
        self.trees.resolve(key, stored).inspect_err(|e| {
            if matches!(e, StoreError::Io(_)) {
                self.failed.store(true, std::sync::atomic::Ordering::Relaxed);
            }
        })
    }

    /// Visits the main tree's keys `>= start` under `prefix`, each with its value made whole
    /// (`resolve`) or as stored (a long value's marker).
    fn forward(&self, start: &[u8], prefix: &[u8], resolve: bool, visit: &mut Visitor<'_>) -> Result<(), StoreError> {
        for item in self.trees.main.range(start..) {
            let (k, v) = self.note(item)?;
            if !k.starts_with(prefix) {
                break;
            }
            let whole;
            let v: &[u8] = match resolve {
                true => match self.resolve(&k, v)? {
                    Some(w) => {
                        whole = w;
                        &whole
                    }
                    None => continue, // deleted while its pieces were read
                },
                false => &v,
            };
            if !visit(&k, v)? {
                break;
            }
        }
        Ok(())
    }

    /// Writes the operations in order (`replayed`: from the log at start, see
    /// [`Pieces::write`]). Not `apply_batch`: atomicity across a crash comes from the
    /// write-ahead log (store/wal.rs), and sled seals and writes its log buffer at the end
    /// of every `apply_batch`, which is most of what a group commit used to cost.
    fn write_each(
        &self,
        ops: &mut dyn Iterator<Item = (&[u8], Option<&[u8]>)>,
        replayed: bool,
    ) -> Result<(), StoreError> {
        self.note(self.trees.write_all(ops, replayed))
    }

    /// Passes on the result of a sled call (or of an I/O on sled's file), remembering an
    /// error (see `Drop`).
    fn note<T, E: Into<StoreError>>(&self, r: Result<T, E>) -> Result<T, StoreError> {
        r.map_err(|e| {
            self.failed.store(true, std::sync::atomic::Ordering::Relaxed);
            e.into()
        })
    }
}

/// sled's own default page cache (1 GiB): most of the daemon's memory on a large store.
pub const DEFAULT_CACHE_BYTES: u64 = 1 << 30;

impl SledBackend {
    pub fn open(path: &std::path::Path) -> Result<Self, StoreError> {
        Self::open_with_cache(path, DEFAULT_CACHE_BYTES)
    }

    /// Opens with sled's page cache bounded to `cache_bytes` (`storage.cache_capacity_mb`).
    pub fn open_with_cache(path: &std::path::Path, cache_bytes: u64) -> Result<Self, StoreError> {
        let lock = lock_dir(path)?;
        remove_unfinished_snapshots(path)?;
        let wal = path.join(super::WAL_DIR);
        super::wal::remove_unfinished(&wal)
            .map_err(|e| StoreError::Io(format!("remove unfinished log spares in {}: {e}", wal.display())))?;
        // sled would make a new `db` beside its old snapshot, then call the pair corrupt: a
        // `db` gone from a directory in use is the refusal the format check gives an empty one.
        if !path.join("db").exists() && super::has_log(&wal)? {
            return Err(super::format::store_missing());
        }
        super::enough_room_to_replay(path)?;
        let config = sled::Config::new().path(path).mode(sled::Mode::HighThroughput).cache_capacity(cache_bytes);
        let db = config.open().map_err(|e| match e.to_string() {
            m if m.contains("could not acquire lock") => in_use(path, &m),
            m => StoreError::Io(format!("open sled store at {}: {m}", path.display())),
        })?;
        let trees = Pieces::new(db.clone(), db.open_tree("hookline")?, db.open_tree("hookline-pieces")?);
        let data = path.join("db");
        // Opened for writing, as sled opens it: some platforms (Windows) refuse a sync
        // through a read-only handle.
        let file = std::fs::OpenOptions::new()
            .write(true)
            .open(&data)
            .map_err(|e| StoreError::Io(format!("open {}: {e}", data.display())))?;
        Ok(SledBackend { db, trees, failed: std::sync::atomic::AtomicBool::new(false), _lock: lock, file })
    }

    /// How many pieces of long values the store holds: every one should belong to a live
    /// value (a test checks that deletes leave none behind).
    pub fn piece_count(&self) -> usize {
        self.trees.pieces.len()
    }
}

/// A batch's operations as `(key, value)`, `None` deleting.
fn entries(batch: &Batch) -> impl Iterator<Item = (&[u8], Option<&[u8]>)> {
    batch.ops.iter().map(|op| match op {
        Op::Put(k, v) | Op::PutNew(k, v) => (k.as_slice(), Some(v.as_slice())),
        Op::Delete(k) => (k.as_slice(), None),
    })
}

fn in_use(path: &std::path::Path, detail: &str) -> StoreError {
    StoreError::Io(format!(
        "the data directory {} is in use by another hookline process ({detail}); \
         stop that one first, or give this one another storage.path",
        path.display()
    ))
}

/// Takes an exclusive lock on `{path}/hookline.lock` before anything in the directory is
/// touched. sled locks its own files too, but only once it opens: a second daemon started on
/// a directory in use would first remove "unfinished" snapshots that the running one is
/// writing. The lock is the kernel's (`flock`), so a crashed daemon leaves none behind.
fn lock_dir(path: &std::path::Path) -> Result<std::fs::File, StoreError> {
    std::fs::create_dir_all(path).map_err(|e| StoreError::Io(format!("create {}: {e}", path.display())))?;
    check_writable(path)?;
    let lock_path = path.join("hookline.lock");
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&lock_path)
        .map_err(|e| StoreError::Io(format!("open {}: {e}", lock_path.display())))?;
    match file.try_lock() {
        Ok(()) => Ok(file),
        Err(std::fs::TryLockError::WouldBlock) => Err(in_use(path, "hookline.lock is held")),
        Err(std::fs::TryLockError::Error(e)) => Err(StoreError::Io(format!("lock {}: {e}", lock_path.display()))),
    }
}

/// Refuses, naming the first one, what of the data directory this process may not use: the
/// directory itself and its log directory (read, write, enter), and every file hookline or
/// sled writes there (read and write); `master.key` is only read. A directory first used as
/// another user (root, say) would otherwise fail at whichever step first touched such a file,
/// in that step's words. Entries that are not hookline's (a mount point's `lost+found`) are
/// not looked at, and a read-only filesystem is left to those steps, which name it.
#[cfg(unix)]
fn check_writable(path: &std::path::Path) -> Result<(), StoreError> {
    use rustix::fs::{accessat, Access, AtFlags, CWD};
    let dir = Access::READ_OK | Access::WRITE_OK | Access::EXEC_OK;
    let file = Access::READ_OK | Access::WRITE_OK;
    let wal = path.join(super::WAL_DIR);
    let mut checks = vec![(path.to_path_buf(), dir), (wal.clone(), dir)];
    let listed = |d: &std::path::Path| -> Vec<std::path::PathBuf> {
        std::fs::read_dir(d).map(|r| r.flatten().map(|e| e.path()).collect()).unwrap_or_default()
    };
    for p in listed(path) {
        let name = p.file_name().and_then(|n| n.to_str()).unwrap_or_default();
        match name {
            "db" | "conf" | "blobs" | "hookline.lock" => checks.push((p, file)),
            n if n.starts_with("snap.") => checks.push((p, file)),
            crate::crypto::MASTER_KEY_FILE => checks.push((p, Access::READ_OK)),
            _ => {}
        }
    }
    checks.extend(listed(&wal).into_iter().map(|p| (p, file)));
    for (p, wanted) in checks {
        let wanted = if p.is_dir() { dir } else { wanted };
        // As the effective user, with its capabilities (`AT_EACCESS`): what opening will meet.
        match accessat(CWD, &p, wanted, AtFlags::EACCESS) {
            Err(e) if e == rustix::io::Errno::ACCESS || e == rustix::io::Errno::PERM => {
                use std::os::unix::fs::MetadataExt;
                let me = rustix::process::geteuid().as_raw();
                let what = if wanted == Access::READ_OK { "read" } else { "read and written" };
                // Its owner's own permissions stop it (a `chmod` fixes that), or another user
                // owns it (a `chown` does).
                let fix = match std::fs::metadata(&p).map(|m| m.uid()) {
                    Ok(owner) if owner == me => format!(
                        "it belongs to this user, but its permissions do not allow that: `chmod u+{} {}`",
                        if p.is_dir() {
                            "rwx"
                        } else if wanted == Access::READ_OK {
                            "r"
                        } else {
                            "rw"
                        },
                        p.display()
                    ),
                    Ok(owner) => format!(
                        "it belongs to user id {owner}: the data directory and what hookline keeps in it must \
                         belong to the user hookline runs as (was it first run as another user, such as root?)"
                    ),
                    Err(_) => "the data directory and what hookline keeps in it must belong to the user hookline \
                               runs as"
                        .to_string(),
                };
                return Err(StoreError::Io(format!(
                    "{} cannot be {what} by this process (user id {me}): {fix}",
                    p.display()
                )));
            }
            _ => {}
        }
    }
    Ok(())
}

#[cfg(not(unix))]
fn check_writable(_path: &std::path::Path) -> Result<(), StoreError> {
    Ok(())
}

/// sled 0.34.7 writes a snapshot as `snap.{lsn}.generating` and renames it once complete,
/// but at start it reads the highest `snap.*` whatever its suffix: a `kill -9` in the few
/// milliseconds a snapshot is being written (at start-up, among other times) left a store
/// that refused to open ever after ("corrupt snapshot file found"; sled issues #1387 and
/// #1527). An unfinished snapshot holds nothing that sled's own log does not (the rename is
/// its commit point), so it is removed before sled looks.
fn remove_unfinished_snapshots(path: &std::path::Path) -> Result<(), StoreError> {
    let entries = match std::fs::read_dir(path) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(StoreError::Io(format!("read {}: {e}", path.display()))),
    };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let name = name.to_string_lossy();
        if name.starts_with("snap.") && name.ends_with(".generating") {
            tracing::warn!(file = %name, "removing an unfinished sled snapshot left by a crash");
            std::fs::remove_file(entry.path())
                .map_err(|e| StoreError::Io(format!("remove the unfinished snapshot {name}: {e}")))?;
        }
    }
    Ok(())
}

impl Backend for SledBackend {
    fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        match self.note(self.trees.main.get(key))? {
            Some(v) => self.resolve(key, v),
            None => Ok(None),
        }
    }

    fn scan_from(&self, start: &[u8], prefix: &[u8], visit: &mut Visitor<'_>) -> Result<(), StoreError> {
        self.forward(start, prefix, true, visit)
    }

    fn scan_keys_from(&self, start: &[u8], prefix: &[u8], visit: &mut Visitor<'_>) -> Result<(), StoreError> {
        self.forward(start, prefix, false, visit)
    }

    fn scan_rev(&self, prefix: &[u8], end: Option<&[u8]>, visit: &mut Visitor<'_>) -> Result<(), StoreError> {
        let iter = match end {
            Some(e) if e <= prefix => return Ok(()),
            Some(e) => self.trees.main.range(prefix..e),
            None => self.trees.main.scan_prefix(prefix),
        };
        for item in iter.rev() {
            let (k, v) = self.note(item)?;
            if !k.starts_with(prefix) {
                continue; // only when `end` lies beyond every key of the prefix
            }
            let Some(v) = self.resolve(&k, v)? else { continue };
            if !visit(&k, &v)? {
                break;
            }
        }
        Ok(())
    }

    fn apply(&self, batch: &Batch) -> Result<(), StoreError> {
        self.write_each(&mut entries(batch), false)
    }

    fn apply_each(&self, ops: &mut dyn Iterator<Item = (&[u8], Option<&[u8]>)>) -> Result<(), StoreError> {
        self.write_each(ops, false)
    }

    fn replay(&self, batch: &Batch) -> Result<(), StoreError> {
        self.write_each(&mut entries(batch), true)
    }

    /// sled's flush writes its buffers with `sync_file_range`, which neither flushes the
    /// disk's write cache nor writes the file's metadata (spacejam/sled#1452): written, not
    /// durable. A checkpoint retires log segments on the strength of this flush, so it ends
    /// with an `fsync` of sled's file; otherwise a power cut soon after a checkpoint could
    /// lose acknowledged writes that are then in neither the log nor the disk. Blocking: the
    /// callers are the store's own threads (or start-up and shutdown).
    fn flush(&self) -> Pin<Box<dyn Future<Output = Result<(), StoreError>> + Send + '_>> {
        Box::pin(async move {
            self.note(self.db.flush_async().await)?;
            self.note(self.file.sync_all().map_err(|e| StoreError::Io(format!("sync the sled store's file: {e}"))))
        })
    }

    fn size_on_disk(&self) -> Result<u64, StoreError> {
        self.note(self.db.size_on_disk())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `open()` once sled's threads have let go of a dropped store's file lock, which they do
    /// a moment later (under load, not yet at the first try): retried while `held` says its
    /// error is that, for at most 5 s.
    fn when_released<T, E>(open: impl Fn() -> Result<T, E>, held: impl Fn(&E) -> bool) -> Result<T, E> {
        for _ in 0..100 {
            match open() {
                Err(e) if held(&e) => std::thread::sleep(std::time::Duration::from_millis(50)),
                other => return other,
            }
        }
        open()
    }

    /// [`SledBackend::open`] again, through [`when_released`].
    fn reopen_backend(dir: &std::path::Path) -> Result<SledBackend, StoreError> {
        when_released(|| SledBackend::open(dir), |e| e.to_string().contains("in use"))
    }
    use crate::store::pieces::{split, PIECE};

    /// A snapshot left unfinished by a crash (sled names it `.generating` until it is
    /// complete) no longer stops the store from opening.
    #[tokio::test]
    async fn an_unfinished_snapshot_does_not_stop_the_store_from_opening() {
        let dir = tempfile::tempdir().unwrap();
        {
            let b = SledBackend::open(dir.path()).unwrap();
            b.apply_each(&mut [(b"k".as_slice(), Some(b"v".as_slice()))].into_iter()).unwrap();
            b.flush().await.unwrap();
        }
        // Half a snapshot, newer than anything sled has: what a kill mid-write leaves.
        let partial = dir.path().join("snap.00000000FFFFFFFF.generating");
        std::fs::write(&partial, [0x5a; 4096]).unwrap();
        // (A restarted daemon's new process need not wait for the lock, as this one does.)
        let b = reopen_backend(dir.path()).expect("opens despite the unfinished snapshot");
        assert_eq!(b.get(b"k").unwrap().as_deref(), Some(b"v".as_slice()));
        assert!(!partial.exists(), "the unfinished snapshot is removed");
    }

    /// The vendored sled splits index nodes above 64 children (stock 0.34.7: 256) and merges
    /// them below 16, and a node split by an appending write keeps most of its entries (see
    /// vendor/sled/README.hookline.md). Enough appended keys for several levels of index
    /// splits, then a key inserted after each of the first 15,000 in scrambled order (every
    /// left leaf, about 11 keys after the appends, gets as many more and splits again, mostly
    /// in the middle), then most keys deleted (merges), then reopened: every key that should
    /// be there is, in order, and nothing else.
    #[tokio::test]
    async fn appended_and_inserted_keys_split_and_merge_nodes_and_survive_a_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let key = |i: u32| format!("o/bkt_{}/obj_{i:010}", i % 3).into_bytes();
        // Sorts right after `key(i)`, before `key(i + 3)`: lands inside full left nodes.
        let between = |i: u32| format!("o/bkt_{}/obj_{i:010}m", i % 3).into_bytes();
        let mut model = std::collections::BTreeSet::new();
        let check = |b: &SledBackend, model: &std::collections::BTreeSet<Vec<u8>>| {
            let mut seen = Vec::new();
            b.scan_from(b"o/", b"o/", &mut |k, v| {
                assert_eq!(v, &k[k.len() - 4..], "the value written with {}", String::from_utf8_lossy(k));
                seen.push(k.to_vec());
                Ok(true)
            })
            .unwrap();
            assert_eq!(seen.len(), model.len());
            assert!(seen.iter().eq(model.iter()), "the keys kept, in order");
        };
        let put = |b: &SledBackend, keys: &[Vec<u8>]| {
            b.apply_each(&mut keys.iter().map(|k| (k.as_slice(), Some(&k[k.len() - 4..])))).unwrap();
        };
        {
            let b = SledBackend::open(dir.path()).unwrap();
            for chunk in (0..50_000u32).collect::<Vec<_>>().chunks(1000) {
                let keys: Vec<Vec<u8>> = chunk.iter().map(|i| key(*i)).collect();
                put(&b, &keys);
                model.extend(keys);
            }
            check(&b, &model);
            // After each of the first 15,000, in a scrambled order (7919 is prime to 15,000).
            let scrambled: Vec<Vec<u8>> = (0..15_000u32).map(|n| between(n * 7919 % 15_000)).collect();
            put(&b, &scrambled);
            model.extend(scrambled);
            check(&b, &model);
            let gone: Vec<Vec<u8>> = (0..40_000u32).filter(|i| !i.is_multiple_of(10)).map(key).collect();
            b.apply_each(&mut gone.iter().map(|k| (k.as_slice(), None))).unwrap();
            for k in &gone {
                model.remove(k);
            }
            check(&b, &model);
            b.flush().await.unwrap();
        }
        let b = reopen_backend(dir.path()).unwrap();
        check(&b, &model);
    }

    /// The vendored sled's `insert_run` beside other writers of the same tree: four threads
    /// whose keys interleave (so they share leaves and lose races for them), three putting
    /// runs (in key order or not, with keys repeated and values unchanged) and one single
    /// puts and removes. Each gets back exactly the previous values its own writes left,
    /// and the tree ends holding every thread's last writes: by point reads, scans both
    /// ways and its length, then again after a reopen.
    #[test]
    fn runs_beside_other_writers_of_the_same_leaves_lose_and_return_nothing() {
        type Model = std::collections::BTreeMap<Vec<u8>, Vec<u8>>;
        let dir = tempfile::tempdir().unwrap();
        let db = sled::Config::new().path(dir.path()).open().unwrap();
        let tree = db.open_tree("t").unwrap();
        let models: Vec<Model> = std::thread::scope(|scope| {
            let workers: Vec<_> = (0..4u64)
                .map(|id| {
                    let tree = tree.clone();
                    scope.spawn(move || {
                        let mut model = Model::new();
                        let mut seed = 0x9e37_79b9_7f4a_7c15_u64 ^ (id + 1);
                        let mut next = move |n: u64| {
                            seed ^= seed << 13;
                            seed ^= seed >> 7;
                            seed ^= seed << 17;
                            seed % n
                        };
                        let mut appended = 0u64;
                        for round in 0..300u64 {
                            let mut pairs: Vec<(Vec<u8>, Vec<u8>)> = (0..40)
                                .map(|n| {
                                    let key = match next(4) {
                                        0 | 1 => {
                                            appended += 1;
                                            format!("z{appended:08}/{id}")
                                        }
                                        2 => format!("k{:05}/{id}", next(2000)),
                                        _ => format!("z{:08}/{id}", 1 + next(appended.max(1))),
                                    };
                                    let value = match next(10) {
                                        // The value it holds now, if any: a no-op put.
                                        0 => model.get(key.as_bytes()).cloned().unwrap_or_default(),
                                        _ => {
                                            format!("{id}:{round}:{n}:{}", "v".repeat(next(200) as usize)).into_bytes()
                                        }
                                    };
                                    (key.into_bytes(), value)
                                })
                                .collect();
                            if round % 2 == 0 {
                                pairs.sort_by(|a, b| a.0.cmp(&b.0));
                            }
                            let mut want = Vec::new();
                            let got: Vec<Option<Vec<u8>>> = if id == 3 {
                                pairs
                                    .iter()
                                    .map(|(k, v)| match next(5) {
                                        0 => {
                                            want.push(model.remove(k));
                                            tree.remove(k).unwrap().map(|v| v.to_vec())
                                        }
                                        _ => {
                                            want.push(model.insert(k.clone(), v.clone()));
                                            tree.insert(k, v.as_slice()).unwrap().map(|v| v.to_vec())
                                        }
                                    })
                                    .collect()
                            } else {
                                let refs: Vec<(&[u8], &[u8])> =
                                    pairs.iter().map(|(k, v)| (k.as_slice(), v.as_slice())).collect();
                                want.extend(pairs.iter().map(|(k, v)| model.insert(k.clone(), v.clone())));
                                tree.insert_run(&refs).unwrap().into_iter().map(|o| o.map(|v| v.to_vec())).collect()
                            };
                            assert_eq!(got, want, "the previous values of thread {id}'s round {round}");
                        }
                        model
                    })
                })
                .collect();
            workers.into_iter().map(|w| w.join().unwrap()).collect()
        });
        let all: Model = models.into_iter().flatten().collect();
        let check = |tree: &sled::Tree| {
            for (k, v) in &all {
                assert_eq!(tree.get(k).unwrap().as_deref(), Some(v.as_slice()), "get {}", String::from_utf8_lossy(k));
            }
            let forward: Vec<(Vec<u8>, Vec<u8>)> =
                tree.iter().map(|kv| kv.map(|(k, v)| (k.to_vec(), v.to_vec()))).collect::<Result<_, _>>().unwrap();
            assert!(forward.iter().map(|(k, v)| (k, v)).eq(all.iter()), "a scan finds every key, in order");
            assert!(tree.iter().rev().map(|kv| kv.unwrap().0.to_vec()).eq(all.keys().rev().cloned()), "and backwards");
            assert_eq!(tree.len(), all.len());
        };
        check(&tree);
        db.flush().unwrap();
        drop((tree, db));
        let db = when_released(|| sled::Config::new().path(dir.path()).open(), |_| true).unwrap();
        check(&db.open_tree("t").unwrap());
    }

    /// Puts reach sled in runs (`Pieces::write_all`, the vendored sled's `insert_run`: the
    /// keys that fall into one leaf with one copy of it). In one call, appended keys, keys
    /// written twice, overwrites of stored keys, values kept in pieces and deletes between
    /// them end as one write after another would leave them, in key order or not; the
    /// pieces of a value a run replaced are removed; all of it survives a reopen.
    #[tokio::test]
    async fn puts_written_in_runs_end_as_single_writes_would() {
        let dir = tempfile::tempdir().unwrap();
        let mut model = std::collections::BTreeMap::<Vec<u8>, Vec<u8>>::new();
        let mut seed = 0x2545_f491_4f6c_dd1d_u64;
        let mut next = move |n: u64| {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed % n
        };
        // `written`: every key ever written; those not in the model must read as absent.
        let check = |b: &SledBackend,
                     model: &std::collections::BTreeMap<Vec<u8>, Vec<u8>>,
                     written: &std::collections::BTreeSet<Vec<u8>>| {
            // A point read walks to the key's leaf: a key put into the wrong leaf would be
            // found by a scan, not by this.
            for k in written {
                assert_eq!(
                    b.get(k).unwrap().as_deref(),
                    model.get(k).map(Vec::as_slice),
                    "get {}",
                    String::from_utf8_lossy(k)
                );
            }
            let mut seen = Vec::new();
            b.scan_from(b"", b"", &mut |k, v| {
                seen.push((k.to_vec(), v.to_vec()));
                Ok(true)
            })
            .unwrap();
            assert_eq!(seen.len(), model.len(), "as many keys as single writes leave");
            for ((k, v), (mk, mv)) in seen.iter().zip(model) {
                assert_eq!((k, v.len()), (mk, mv.len()), "key and value length, in order");
                assert!(v == mv, "the value of {}", String::from_utf8_lossy(k));
            }
            // No piece but those of the values held in pieces now.
            let pieces: usize = model.values().filter(|v| split(v)).map(|v| v.len().div_ceil(PIECE)).sum();
            assert_eq!(b.trees.pieces.len(), pieces, "no piece left behind");
        };
        let mut appended = 0u32;
        let mut written = std::collections::BTreeSet::new();
        {
            let b = SledBackend::open(dir.path()).unwrap();
            for round in 0..30u32 {
                let mut ops: Vec<(Vec<u8>, Option<Vec<u8>>)> = Vec::new();
                for n in 0..400u32 {
                    let key = match next(20) {
                        0..=11 => {
                            appended += 1;
                            format!("o/obj_{appended:08}").into_bytes()
                        }
                        12..=16 if appended > 0 => format!("o/obj_{:08}", 1 + next(appended as u64)).into_bytes(),
                        17 => format!("o/obj_{appended:08}").into_bytes(),
                        _ => format!("s/stats_{}", next(5)).into_bytes(),
                    };
                    let value = match next(20) {
                        0 => None,
                        1 => Some(vec![b'L'; PIECE + 1 + next(3 * PIECE as u64) as usize]),
                        _ => Some(format!("{round}:{n}:{}", "v".repeat(next(300) as usize)).into_bytes()),
                    };
                    ops.push((key, value));
                }
                if round % 2 == 0 {
                    // In key order, as the overlay moves them (a stable sort: a key's writes
                    // keep their order).
                    ops.sort_by(|a, b| a.0.cmp(&b.0));
                }
                b.apply_each(&mut ops.iter().map(|(k, v)| (k.as_slice(), v.as_deref()))).unwrap();
                for (k, v) in ops {
                    written.insert(k.clone());
                    match v {
                        Some(v) => model.insert(k, v),
                        None => model.remove(&k),
                    };
                }
                check(&b, &model, &written);
            }
            b.flush().await.unwrap();
        }
        let b = reopen_backend(dir.path()).unwrap();
        check(&b, &model, &written);
    }

    /// A directory in use is refused before anything in it is touched: a snapshot the
    /// running daemon is writing stays where it is.
    #[test]
    fn a_directory_in_use_is_refused_before_anything_is_touched() {
        let dir = tempfile::tempdir().unwrap();
        let first = SledBackend::open(dir.path()).unwrap();
        let writing = dir.path().join("snap.00000000FFFFFFFF.generating");
        std::fs::write(&writing, [0x5a; 16]).unwrap();
        let err = SledBackend::open(dir.path()).err().expect("a second open is refused").to_string();
        assert!(err.contains("in use by another hookline process"), "{err}");
        assert!(writing.exists(), "the running daemon's snapshot is left alone");
        drop(first);
    }
}
