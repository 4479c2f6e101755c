//! Writes that are in the log but not yet in the backend: where every read looks first.
//!
//! Why: a write is durable once its log record is synced, and answering its writer then,
//! rather than once sled has it too, takes sled's insert (the costliest step of a busy
//! ingest) and a thread hand-off off every request's path. Writes also reach sled in
//! groups, in key order, and a key written twice meanwhile reaches it once: a delivery's
//! pending record and its outcome, an outbox entry and its removal.
//!
//! Two layers: the log thread adds each synced group to `active`; the apply thread freezes
//! it (a swap), writes the frozen layer into the backend, then drops it. A read sees
//! `active`, then `frozen`, then the backend, so a write is visible from the moment its
//! writer is answered, and stays visible while it moves into the backend.
//!
//! A key written by [`Op::PutNew`] exists nowhere below `active`: deleted while still there,
//! it leaves `active` altogether, and neither write reaches the backend (a buffered event
//! flushed within the interval: most of them, under load).
//!
//! This module must not know what the keys mean.

use std::collections::{btree_map, BTreeMap};
use std::ops::Bound;
use std::sync::{Arc, Condvar, Mutex, RwLock, RwLockReadGuard, RwLockWriteGuard};
use std::time::Duration;

use bytes::Bytes;

use super::backend::Visitor;
use super::{Backend, Batch, Op, StoreError};

/// Each key's newest logged state.
type Layer = BTreeMap<Vec<u8>, Entry>;

/// A key's newest logged state in one layer.
#[derive(Debug, Clone, PartialEq)]
struct Entry {
    /// `None` is a delete. `Bytes` (taken over from the batch without a copy) so a scan's
    /// copy of the overlay shares them.
    value: Option<Bytes>,
    /// The key exists in no layer below this one nor in the backend (it came from an
    /// [`Op::PutNew`]): a delete removes the entry instead of recording itself.
    fresh: bool,
}

/// Above this many bytes in `active`, the apply thread is asked to freeze it at once.
pub(crate) const SOFT_BYTES: usize = 8 << 20;
/// Above this many, the log thread waits for the apply thread (memory stays bounded when
/// the backend is slower than the log).
const HARD_BYTES: usize = 64 << 20;

#[derive(Default)]
struct Layers {
    active: Layer,
    active_bytes: usize,
    /// Whether a group was added since the last freeze (`active` may be empty even so,
    /// every write of it cancelled: the segments it came from still count as applied).
    logged: bool,
    /// The highest log segment holding a write of `active`.
    active_segment: Option<u64>,
    frozen: Option<Arc<Layer>>,
}

/// The two layers, shared by the log thread (writes), the apply thread and all readers.
#[derive(Default)]
pub(crate) struct Overlay {
    layers: RwLock<Layers>,
    /// Signalled whenever the frozen layer is dropped (room for a waiting log thread).
    applied: (Mutex<()>, Condvar),
}

/// A frozen layer on its way into the backend.
pub(crate) struct Frozen {
    layer: Arc<Layer>,
    /// Every write of a segment below this one is in this layer or an earlier one.
    pub(crate) segment: Option<u64>,
}

impl Overlay {
    fn read(&self) -> RwLockReadGuard<'_, Layers> {
        self.layers.read().unwrap_or_else(|p| p.into_inner())
    }

    fn write(&self) -> RwLockWriteGuard<'_, Layers> {
        self.layers.write().unwrap_or_else(|p| p.into_inner())
    }

    /// Adds a synced group (log order) from `segment`. Returns whether `active` is now
    /// over [`SOFT_BYTES`] (time to freeze).
    pub(crate) fn insert(&self, batch: Batch, segment: u64) -> bool {
        let mut guard = self.write();
        let l = &mut *guard;
        for op in batch.ops {
            let (key, value, new) = match op {
                Op::Put(k, v) => (k, Some(Bytes::from(v)), false),
                Op::PutNew(k, v) => (k, Some(Bytes::from(v)), true),
                Op::Delete(k) => (k, None, false),
            };
            let bytes = key.len() + value.as_ref().map_or(0, Bytes::len);
            match l.active.entry(key) {
                // A key already in `active` stays as new as it was: a put keeps it out of
                // the layers below, a delete of a new one cancels it.
                btree_map::Entry::Occupied(mut e) => {
                    if value.is_none() && e.get().fresh {
                        // Its bytes no longer count towards a freeze.
                        let held = e.key().len() + e.remove().value.map_or(0, |v| v.len());
                        l.active_bytes = l.active_bytes.saturating_sub(held);
                        continue;
                    }
                    e.get_mut().value = value;
                }
                // New unless the frozen layer shows it; for the backend the caller's word
                // stands (a key built from a newly generated ID).
                btree_map::Entry::Vacant(e) => {
                    let fresh = new && !l.frozen.as_ref().is_some_and(|f| f.contains_key(e.key()));
                    e.insert(Entry { value, fresh });
                }
            }
            l.active_bytes += bytes;
        }
        l.logged = true;
        l.active_segment = Some(segment);
        l.active_bytes > SOFT_BYTES
    }

    /// Whether the log thread must wait before adding more (see [`HARD_BYTES`]).
    pub(crate) fn full(&self) -> bool {
        let l = self.read();
        l.active_bytes > HARD_BYTES && l.frozen.is_some()
    }

    /// Waits (at most `timeout`) for the frozen layer to be dropped.
    pub(crate) fn wait_applied(&self, timeout: Duration) {
        let guard = self.applied.0.lock().unwrap_or_else(|p| p.into_inner());
        if self.read().frozen.is_some() {
            let _ = self.applied.1.wait_timeout(guard, timeout);
        }
    }

    /// Freezes `active` for the apply thread; `None` when nothing was logged since the last
    /// freeze. A layer whose every write cancelled out is frozen empty, so the log segments
    /// it came from still count as applied. Only one layer is frozen at a time: call
    /// [`Overlay::applied`] before freezing again.
    pub(crate) fn freeze(&self) -> Option<Frozen> {
        let mut l = self.write();
        if !l.logged || l.frozen.is_some() {
            return None;
        }
        let layer = Arc::new(std::mem::take(&mut l.active));
        l.logged = false;
        l.active_bytes = 0;
        l.frozen = Some(layer.clone());
        Some(Frozen { layer, segment: l.active_segment })
    }

    /// Writes a frozen layer into the backend, in key order.
    pub(crate) fn apply(frozen: &Frozen, backend: &dyn Backend) -> Result<(), StoreError> {
        backend.apply_each(&mut frozen.layer.iter().map(|(k, e)| (k.as_slice(), e.value.as_deref())))
    }

    /// Drops the frozen layer once the backend holds it.
    pub(crate) fn applied(&self) {
        self.write().frozen = None;
        let _guard = self.applied.0.lock().unwrap_or_else(|p| p.into_inner());
        self.applied.1.notify_all();
    }

    /// The newest logged state of `key`: `Some(None)` if deleted, `None` if the overlay
    /// does not hold it (ask the backend).
    fn lookup(&self, key: &[u8]) -> Option<Option<Vec<u8>>> {
        let l = self.read();
        let e = l.active.get(key).or_else(|| l.frozen.as_ref().and_then(|f| f.get(key)))?;
        Some(e.value.as_deref().map(<[u8]>::to_vec))
    }

    /// The overlay's entries `>= start` and `< end` (no bound when `None`) that start with
    /// `prefix`, newest state per key, in key order.
    fn range(&self, start: &[u8], end: Option<&[u8]>, prefix: &[u8]) -> Vec<(Vec<u8>, Option<Bytes>)> {
        let l = self.read();
        let mut merged: BTreeMap<Vec<u8>, Option<Bytes>> = BTreeMap::new();
        let upper = end.map_or(Bound::Unbounded, Bound::Excluded);
        let layers = l.frozen.iter().map(|f| f.as_ref()).chain(std::iter::once(&l.active));
        for layer in layers {
            // Later layers are newer: they overwrite.
            for (k, e) in layer.range::<[u8], _>((Bound::Included(start), upper)) {
                if !k.starts_with(prefix) {
                    break;
                }
                merged.insert(k.clone(), e.value.clone());
            }
        }
        merged.into_iter().collect()
    }
}

/// What readers use: the overlay over the backend.
pub(crate) struct Layered {
    pub(crate) overlay: Arc<Overlay>,
    pub(crate) backend: Arc<dyn Backend>,
}

impl Layered {
    pub(crate) fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        match self.overlay.lookup(key) {
            Some(v) => Ok(v),
            None => self.backend.get(key),
        }
    }

    /// Visits keys `>= start` that start with `prefix`, in order, the overlay's state
    /// winning over the backend's. The overlay's part is taken first: a layer applied and
    /// dropped meanwhile is still seen, in the copy.
    pub(crate) fn scan_from(&self, start: &[u8], prefix: &[u8], visit: &mut Visitor<'_>) -> Result<(), StoreError> {
        self.forward(start, prefix, |b, v| b.scan_from(start, prefix, v), visit)
    }

    /// [`Layered::scan_from`] for a caller that reads only the keys (the values it is given
    /// may be placeholders: see `Backend::scan_keys_from`).
    pub(crate) fn scan_keys_from(
        &self,
        start: &[u8],
        prefix: &[u8],
        visit: &mut Visitor<'_>,
    ) -> Result<(), StoreError> {
        self.forward(start, prefix, |b, v| b.scan_keys_from(start, prefix, v), visit)
    }

    /// The overlay's entries from `start` merged into the backend's forward `scan`.
    fn forward(
        &self,
        start: &[u8],
        prefix: &[u8],
        scan: impl Fn(&dyn Backend, &mut Visitor<'_>) -> Result<(), StoreError>,
        visit: &mut Visitor<'_>,
    ) -> Result<(), StoreError> {
        let newer = self.overlay.range(start, None, prefix);
        if newer.is_empty() {
            return scan(self.backend.as_ref(), visit);
        }
        merge(newer, |a, b| a < b, |v| scan(self.backend.as_ref(), v), visit)
    }

    /// [`Layered::scan_from`] backwards: keys under `prefix` below `end`, descending.
    pub(crate) fn scan_rev(
        &self,
        prefix: &[u8],
        end: Option<&[u8]>,
        visit: &mut Visitor<'_>,
    ) -> Result<(), StoreError> {
        if end.is_some_and(|e| e <= prefix) {
            return Ok(()); // an empty range (and a BTreeMap range that would panic)
        }
        let mut newer = self.overlay.range(prefix, end, prefix);
        newer.reverse();
        if newer.is_empty() {
            return self.backend.scan_rev(prefix, end, visit);
        }
        merge(newer, |a, b| a > b, |v| self.backend.scan_rev(prefix, end, v), visit)
    }
}

type Entries = std::iter::Peekable<std::vec::IntoIter<(Vec<u8>, Option<Bytes>)>>;

/// Merges the overlay's entries `newer` (in scan order) into the backend's `scan` (same
/// order), the overlay's state of a key winning (a delete hides it); `precedes(a, b)` says
/// whether key `a` comes before key `b` in that order.
fn merge(
    newer: Vec<(Vec<u8>, Option<Bytes>)>,
    precedes: fn(&[u8], &[u8]) -> bool,
    scan: impl FnOnce(&mut Visitor<'_>) -> Result<(), StoreError>,
    visit: &mut Visitor<'_>,
) -> Result<(), StoreError> {
    let mut newer = newer.into_iter().peekable();
    let mut go_on = true;
    scan(&mut |k, v| {
        go_on = emit_until(Some(k), precedes, &mut newer, visit)?;
        if !go_on {
            return Ok(false);
        }
        if let Some((nk, nv)) = newer.next_if(|(nk, _)| nk.as_slice() == k) {
            // The overlay holds a newer state of this key (a value, or a delete).
            if let Some(nv) = nv {
                go_on = visit(&nk, &nv)?;
            }
            return Ok(go_on);
        }
        go_on = visit(k, v)?;
        Ok(go_on)
    })?;
    if go_on {
        emit_until(None, precedes, &mut newer, visit)?;
    }
    Ok(())
}

/// Visits the overlay's entries that come before `upto` in scan order (all when `None`),
/// skipping deletes. Returns false when the visitor asked to stop.
fn emit_until(
    upto: Option<&[u8]>,
    precedes: fn(&[u8], &[u8]) -> bool,
    newer: &mut Entries,
    visit: &mut Visitor<'_>,
) -> Result<bool, StoreError> {
    while let Some((k, v)) = newer.next_if(|(k, _)| upto.is_none_or(|u| precedes(k, u))) {
        if let Some(v) = v {
            if !visit(&k, &v)? {
                return Ok(false);
            }
        }
    }
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::SledBackend;

    fn scan(l: &Layered, prefix: &[u8]) -> Vec<(String, String)> {
        let mut out = Vec::new();
        l.scan_from(prefix, prefix, &mut |k, v| {
            out.push((String::from_utf8_lossy(k).into_owned(), String::from_utf8_lossy(v).into_owned()));
            Ok(true)
        })
        .unwrap();
        out
    }

    fn put(b: &mut Batch, k: &str, v: &str) {
        b.ops.push(Op::Put(k.as_bytes().to_vec(), v.as_bytes().to_vec()));
    }

    /// An empty overlay over a sled backend that holds `stored` (its directory lives as
    /// long as the returned guard).
    fn over(stored: &[(&str, &str)]) -> (tempfile::TempDir, Layered) {
        let dir = tempfile::tempdir().unwrap();
        let backend: Arc<dyn Backend> = Arc::new(SledBackend::open(dir.path()).unwrap());
        let mut base = Batch::new();
        for (k, v) in stored {
            put(&mut base, k, v);
        }
        backend.apply(&base).unwrap();
        (dir, Layered { overlay: Arc::default(), backend })
    }

    #[test]
    fn reads_see_active_then_frozen_then_the_backend() {
        let (_dir, l) = over(&[("a/1", "old"), ("a/3", "old"), ("a/5", "old"), ("b/1", "old")]);
        let backend = l.backend.clone();

        let mut first = Batch::new();
        put(&mut first, "a/2", "new");
        put(&mut first, "a/3", "new");
        first.ops.push(Op::Delete(b"a/5".to_vec()));
        l.overlay.insert(first, 0);
        let frozen = l.overlay.freeze().unwrap();
        let mut second = Batch::new();
        put(&mut second, "a/3", "newest");
        put(&mut second, "a/9", "new");
        l.overlay.insert(second, 1);

        let expect = vec![
            ("a/1".to_string(), "old".to_string()),
            ("a/2".into(), "new".into()),
            ("a/3".into(), "newest".into()),
            ("a/9".into(), "new".into()),
        ];
        assert_eq!(scan(&l, b"a/"), expect);
        assert_eq!(l.get(b"a/5").unwrap(), None);
        assert_eq!(l.get(b"a/3").unwrap().as_deref(), Some(&b"newest"[..]));
        assert_eq!(scan(&l, b"b/"), vec![("b/1".to_string(), "old".to_string())]);

        // The same view while the frozen layer moves into the backend, and after.
        Overlay::apply(&frozen, backend.as_ref()).unwrap();
        assert_eq!(scan(&l, b"a/"), expect);
        l.overlay.applied();
        assert_eq!(scan(&l, b"a/"), expect);
        assert_eq!(l.get(b"a/5").unwrap(), None);
        assert_eq!(frozen.segment, Some(0));
        let rest = l.overlay.freeze().unwrap();
        assert_eq!(rest.segment, Some(1));
        Overlay::apply(&rest, backend.as_ref()).unwrap();
        l.overlay.applied();
        assert!(l.overlay.freeze().is_none());
        assert_eq!(scan(&l, b"a/"), expect);
    }

    /// A new key deleted while still in `active` leaves no trace for the backend; one
    /// deleted after its layer froze, or a key that existed, is deleted there as usual.
    #[test]
    fn a_new_key_deleted_within_its_layer_never_reaches_the_backend() {
        let (_dir, l) = over(&[("k/old", "stored")]);
        let backend = l.backend.clone();
        let new = |b: &mut Batch, k: &str| b.ops.push(Op::PutNew(k.as_bytes().to_vec(), b"v".to_vec()));
        let del = |b: &mut Batch, k: &str| b.ops.push(Op::Delete(k.as_bytes().to_vec()));

        let mut first = Batch::new();
        new(&mut first, "k/a"); // deleted in the same layer, by a later group
        new(&mut first, "k/b"); // deleted after its layer froze
        new(&mut first, "k/c"); // rewritten, then deleted: still new
        l.overlay.insert(first, 0);
        assert_eq!(l.get(b"k/a").unwrap().as_deref(), Some(&b"v"[..]), "visible once logged");
        let mut second = Batch::new();
        del(&mut second, "k/a");
        put(&mut second, "k/c", "w");
        del(&mut second, "k/c");
        del(&mut second, "k/old"); // existed: its delete must reach the backend
        l.overlay.insert(second, 0);
        assert_eq!(l.get(b"k/a").unwrap(), None);
        let frozen = l.overlay.freeze().unwrap();
        let keys: Vec<&[u8]> = frozen.layer.keys().map(Vec::as_slice).collect();
        assert_eq!(keys, vec![&b"k/b"[..], b"k/old"], "the cancelled keys are gone from the layer");
        assert_eq!(frozen.layer.get(&b"k/old"[..]).map(|e| &e.value), Some(&None));

        let mut third = Batch::new();
        new(&mut third, "k/b"); // claimed new while the frozen layer holds it: not taken as new,
        del(&mut third, "k/b"); // so its delete is kept
        l.overlay.insert(third, 1);
        Overlay::apply(&frozen, backend.as_ref()).unwrap();
        l.overlay.applied();
        let rest = l.overlay.freeze().unwrap();
        assert_eq!(rest.layer.get(&b"k/b"[..]).map(|e| &e.value), Some(&None), "a delete after the freeze is kept");
        Overlay::apply(&rest, backend.as_ref()).unwrap();
        l.overlay.applied();
        assert_eq!(scan(&l, b"k/"), Vec::new());
        assert_eq!(backend.get(b"k/b").unwrap(), None);
        assert_eq!(backend.get(b"k/old").unwrap(), None);

        // A layer whose every write cancelled still freezes (empty), so its segment counts
        // as applied; with nothing logged since, there is nothing to freeze.
        let mut gone = Batch::new();
        new(&mut gone, "k/d");
        del(&mut gone, "k/d");
        l.overlay.insert(gone, 2);
        assert_eq!(l.overlay.read().active_bytes, 0, "a cancelled write no longer counts towards a freeze");
        let empty = l.overlay.freeze().expect("an empty layer with a segment");
        assert!(empty.layer.is_empty());
        assert_eq!(empty.segment, Some(2));
        l.overlay.applied();
        assert!(l.overlay.freeze().is_none());
    }

    fn scan_rev(l: &Layered, prefix: &[u8], end: Option<&[u8]>, most: usize) -> Vec<(String, String)> {
        let mut out = Vec::new();
        l.scan_rev(prefix, end, &mut |k, v| {
            out.push((String::from_utf8_lossy(k).into_owned(), String::from_utf8_lossy(v).into_owned()));
            Ok(out.len() < most)
        })
        .unwrap();
        out
    }

    #[test]
    fn a_reverse_scan_merges_the_layers_newest_key_first() {
        let old = ["a/1", "a/3", "a/5", "a/7", "b/1", "a"].map(|k| (k, "old"));
        let (_dir, l) = over(&old);
        let mut first = Batch::new();
        put(&mut first, "a/2", "new");
        put(&mut first, "a/3", "new"); // in both layers: the active one wins
        put(&mut first, "a0", "new"); // shares a byte prefix, not the prefix
        first.ops.push(Op::Delete(b"a/5".to_vec()));
        l.overlay.insert(first, 0);
        let _frozen = l.overlay.freeze().unwrap();
        let mut second = Batch::new();
        put(&mut second, "a/3", "newest");
        put(&mut second, "a/8", "new");
        put(&mut second, "a/0", "new"); // below every backend key
        l.overlay.insert(second, 1);

        let kv = |k: &str, v: &str| (k.to_string(), v.to_string());
        let all = vec![
            kv("a/8", "new"),
            kv("a/7", "old"),
            kv("a/3", "newest"),
            kv("a/2", "new"),
            kv("a/1", "old"),
            kv("a/0", "new"),
        ];
        assert_eq!(scan_rev(&l, b"a/", None, 100), all);
        assert_eq!(scan_rev(&l, b"a/", Some(b"a/7"), 100), all[2..].to_vec(), "strictly below the end");
        assert_eq!(scan_rev(&l, b"a/", Some(b"a/8"), 100), all[1..].to_vec(), "an end on an overlay-only key");
        // Stops right after an overlay key, a backend key, and an overlay key winning over one.
        assert_eq!(scan_rev(&l, b"a/", None, 1), all[..1].to_vec());
        assert_eq!(scan_rev(&l, b"a/", None, 2), all[..2].to_vec());
        assert_eq!(scan_rev(&l, b"a/", None, 3), all[..3].to_vec());
        assert_eq!(scan_rev(&l, b"a/", Some(b"a/3"), 1), vec![kv("a/2", "new")]);
        assert_eq!(scan_rev(&l, b"a/", Some(b"a/"), 100), Vec::new());
        assert_eq!(scan_rev(&l, b"a/", Some(b"0"), 100), Vec::new(), "an end below the prefix");
        assert_eq!(scan_rev(&l, b"b/", None, 100), vec![kv("b/1", "old")]);
    }

    #[test]
    fn a_scan_stops_when_the_visitor_says_so() {
        let (_dir, l) = over(&[("k/2", "b"), ("k/4", "b")]);
        let mut newer = Batch::new();
        put(&mut newer, "k/1", "o");
        put(&mut newer, "k/3", "o");
        put(&mut newer, "k/5", "o");
        l.overlay.insert(newer, 0);
        for limit in 1..=5 {
            let mut seen = Vec::new();
            l.scan_from(b"k/", b"k/", &mut |k, _| {
                seen.push(String::from_utf8_lossy(k).into_owned());
                Ok(seen.len() < limit)
            })
            .unwrap();
            let all = ["k/1", "k/2", "k/3", "k/4", "k/5"];
            assert_eq!(seen, all[..limit].to_vec(), "limit {limit}");
        }
        // A start key inside the range (a pagination cursor).
        let mut seen = Vec::new();
        l.scan_from(b"k/3", b"k/", &mut |k, _| {
            seen.push(String::from_utf8_lossy(k).into_owned());
            Ok(true)
        })
        .unwrap();
        assert_eq!(seen, vec!["k/3", "k/4", "k/5"]);
    }
}
