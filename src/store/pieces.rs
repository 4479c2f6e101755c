//! Large values kept in pieces, so that sled's pages stay small.
//!
//! Why: sled 0.34 holds up to 16 entries per leaf page and evicts pages from its cache late
//! (each of its 256 cache shards acts on accesses in groups of 64) and not at all when a
//! page is larger than its blob threshold (128 KiB with the default segment size: the page
//! is then counted at the size of a pointer). With events and objects of 20–200 KiB, reading
//! a backlog back grew the daemon to 1.9 GB whatever `cache_capacity_mb` said; with values
//! of at most a few KiB the same reads stay within ~100 MB.
//!
//! So a value longer than [`PIECE`] goes into the `hookline-pieces` tree, in pieces of at
//! most [`PIECE`] bytes, under `{key}\0{generation}{index}`, and the main tree holds a short
//! marker (`0xFF`, `P`, the generation and the length), which no JSON value starts with.
//! A new generation per write means a rewrite never touches the pieces a reader may be
//! assembling: the new pieces are written, then the marker, then the old pieces removed. A
//! reader that finds pieces missing reads the marker again (the value was rewritten or
//! deleted meanwhile) and assembles what it says now.
//!
//! This module knows nothing of what keys and values mean; the write-ahead log in front of
//! the backend makes each batch atomic and durable (a crash between a value's pieces and its
//! marker is repaired by the replay, which writes the value again).

use super::StoreError;

/// The longest value kept whole in the main tree, and the size of a piece: 16 entries of
/// this size (a leaf) stay well below sled's 128 KiB blob threshold.
pub const PIECE: usize = 4096;

/// The first byte of a marker (never the first byte of UTF-8 text, so of a JSON value).
const MARKER: u8 = 0xFF;
const MARKER_LEN: usize = 18;

/// How often a reader re-reads a marker whose pieces went missing before calling the
/// value corrupt (each retry means the value was rewritten meanwhile).
const RETRIES: usize = 8;

/// The longest value a marker may name: what one log record can hold (4 GiB). A longer one
/// is a damaged marker, reported corrupt rather than allocated.
const MAX_LEN: usize = u32::MAX as usize;

/// Whether `value` is kept in pieces when written.
pub fn split(value: &[u8]) -> bool {
    value.len() > PIECE || value.first() == Some(&MARKER)
}

/// The generation and length a marker holds (`None`: a value kept whole).
pub fn marker(value: &[u8]) -> Option<(u64, usize)> {
    if value.len() != MARKER_LEN || value[0] != MARKER || value[1] != b'P' {
        return None;
    }
    let generation = u64::from_be_bytes(value[2..10].try_into().ok()?);
    let len = u64::from_be_bytes(value[10..18].try_into().ok()?);
    Some((generation, usize::try_from(len).ok()?))
}

fn encode_marker(generation: u64, len: usize) -> [u8; MARKER_LEN] {
    let mut m = [0u8; MARKER_LEN];
    m[0] = MARKER;
    m[1] = b'P';
    m[2..10].copy_from_slice(&generation.to_be_bytes());
    m[10..18].copy_from_slice(&(len as u64).to_be_bytes());
    m
}

/// `{key}\0`: the prefix of every piece of `key`, of any generation. Keys hold no NUL, so
/// no other key's pieces share it (checked by length when removing, all the same).
fn pieces_prefix(key: &[u8]) -> Vec<u8> {
    let mut p = Vec::with_capacity(key.len() + 13);
    p.extend_from_slice(key);
    p.push(0);
    p
}

fn piece_key(key: &[u8], generation: u64, index: u32) -> Vec<u8> {
    let mut k = pieces_prefix(key);
    k.extend_from_slice(&generation.to_be_bytes());
    k.extend_from_slice(&index.to_be_bytes());
    k
}

/// The main tree and the pieces tree, and where generations come from.
pub struct Pieces {
    /// Generations come from sled's persistent ID generator: never one used before, even
    /// after a restart with the clock set back (a reused generation would let a new value's
    /// pieces overwrite a live value's in place).
    db: sled::Db,
    pub main: sled::Tree,
    pub pieces: sled::Tree,
}

impl Pieces {
    pub fn new(db: sled::Db, main: sled::Tree, pieces: sled::Tree) -> Pieces {
        Pieces { db, main, pieces }
    }

    /// Writes `key` = `value` (`None`: deletes it), in pieces when it is long. `replayed`: a
    /// write replayed from the log at start, after a crash that may have saved a delete or a
    /// short rewrite but not the removal of the old pieces after it: they are looked for
    /// whatever the key holds.
    pub fn write(&self, key: &[u8], value: Option<&[u8]>, replayed: bool) -> sled::Result<()> {
        let old = match value {
            Some(v) if split(v) => {
                let generation = self.db.generate_id()?;
                for (i, piece) in v.chunks(PIECE).enumerate() {
                    self.pieces.insert(piece_key(key, generation, i as u32), piece)?;
                }
                self.main.insert(key, &encode_marker(generation, v.len()))?;
                // The previous value's pieces, and any a crash orphaned.
                return self.remove_pieces(key, Some(generation));
            }
            Some(v) => self.main.insert(key, v)?,
            None => self.main.remove(key)?,
        };
        if replayed || old.as_deref().and_then(marker).is_some() {
            self.remove_pieces(key, None)?;
        }
        Ok(())
    }

    /// Writes `ops` in order, as [`Pieces::write`] of each would. The puts of values kept
    /// whole go into the main tree in runs (`insert_run`, a patch of the vendored sled: the
    /// keys that fall into one leaf with one copy of the leaf and one new page version,
    /// not one each). The store moves its writes here in key order, mostly appended
    /// (time-ordered IDs), so most of a run lands in the leaf at the end of a key range.
    pub fn write_all(&self, ops: &mut dyn Iterator<Item = (&[u8], Option<&[u8]>)>, replayed: bool) -> sled::Result<()> {
        let mut run: Vec<(&[u8], &[u8])> = Vec::new();
        for (key, value) in ops {
            match value {
                Some(v) if !split(v) => run.push((key, v)),
                _ => {
                    self.put_run(&mut run, replayed)?;
                    self.write(key, value, replayed)?;
                }
            }
        }
        self.put_run(&mut run, replayed)
    }

    /// Puts `run` (values kept whole) into the main tree, then removes the pieces a value
    /// it replaced had, as [`Pieces::write`] does; empties `run`.
    fn put_run(&self, run: &mut Vec<(&[u8], &[u8])>, replayed: bool) -> sled::Result<()> {
        if run.is_empty() {
            return Ok(());
        }
        let old = self.main.insert_run(run)?;
        for ((key, _), old) in run.iter().zip(old) {
            if replayed || old.as_deref().and_then(marker).is_some() {
                self.remove_pieces(key, None)?;
            }
        }
        run.clear();
        Ok(())
    }

    /// Removes the pieces of `key` of every generation but `keep`.
    fn remove_pieces(&self, key: &[u8], keep: Option<u64>) -> sled::Result<()> {
        let prefix = pieces_prefix(key);
        let mut gone = Vec::new();
        for item in self.pieces.scan_prefix(&prefix) {
            let (k, _) = item?;
            if k.len() != prefix.len() + 12 {
                continue;
            }
            let generation = k[prefix.len()..prefix.len() + 8].try_into().map(u64::from_be_bytes).ok();
            if generation != keep {
                gone.push(k);
            }
        }
        for k in gone {
            self.pieces.remove(k)?;
        }
        Ok(())
    }

    /// The whole value of `key`, given what the main tree holds for it (`stored`): itself, or
    /// assembled from its pieces. `None` when the key was deleted while its pieces were read.
    pub fn resolve(&self, key: &[u8], stored: sled::IVec) -> Result<Option<Vec<u8>>, StoreError> {
        let mut stored = stored;
        for _ in 0..RETRIES {
            let Some((generation, len)) = marker(&stored) else { return Ok(Some(stored.to_vec())) };
            if let Some(value) = self.assemble(key, generation, len)? {
                return Ok(Some(value));
            }
            // Rewritten or deleted meanwhile: what does the key hold now?
            match self.main.get(key)? {
                Some(now) => stored = now,
                None => return Ok(None),
            }
        }
        Err(StoreError::Corrupt {
            key: String::from_utf8_lossy(key).into_owned(),
            reason: "the pieces of a large value are missing".into(),
        })
    }

    /// Reads the pieces of one generation (`None`: not all there, or not as the marker says).
    fn assemble(&self, key: &[u8], generation: u64, len: usize) -> Result<Option<Vec<u8>>, StoreError> {
        if len > MAX_LEN {
            return Err(StoreError::Corrupt {
                key: String::from_utf8_lossy(key).into_owned(),
                reason: format!("a large value's marker names {len} bytes"),
            });
        }
        let count = len.div_ceil(PIECE);
        let (first, last) = (piece_key(key, generation, 0), piece_key(key, generation, count as u32));
        let mut out = Vec::with_capacity(len);
        for (i, item) in self.pieces.range(first..last).enumerate() {
            let (k, piece) = item?;
            // Each piece in its place and of its size: the last holds what is left.
            let index = k.len().checked_sub(4).and_then(|at| k[at..].try_into().ok()).map(u32::from_be_bytes);
            if index != Some(i as u32) || piece.len() != PIECE.min(len - out.len()) {
                return Ok(None);
            }
            out.extend_from_slice(&piece);
        }
        Ok((out.len() == len).then_some(out))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn open() -> (tempfile::TempDir, Pieces) {
        let dir = tempfile::tempdir().unwrap();
        let db = sled::Config::new().path(dir.path()).temporary(true).open().unwrap();
        let p = Pieces::new(db.clone(), db.open_tree("m").unwrap(), db.open_tree("p").unwrap());
        (dir, p)
    }

    fn get(p: &Pieces, key: &[u8]) -> Option<Vec<u8>> {
        let stored = p.main.get(key).unwrap()?;
        p.resolve(key, stored).unwrap()
    }

    #[test]
    fn long_values_round_trip_in_pieces_and_short_ones_stay_whole() {
        let (_d, p) = open();
        let long: Vec<u8> = (0..3 * PIECE + 17).map(|i| (i % 251) as u8).collect();
        for value in [b"{\"a\":1}".to_vec(), vec![b'x'; PIECE], vec![b'y'; PIECE + 1], long.clone(), vec![MARKER]] {
            p.write(b"k", Some(&value), false).unwrap();
            assert_eq!(get(&p, b"k"), Some(value.clone()));
            let pieces = p.pieces.len();
            assert_eq!(pieces, if split(&value) { value.len().div_ceil(PIECE) } else { 0 }, "old pieces removed");
        }
        assert_eq!(p.main.get(b"k").unwrap().map(|v| v.len()), Some(MARKER_LEN), "a marker, not the value");
        p.write(b"k", None, false).unwrap();
        assert_eq!(get(&p, b"k"), None);
        assert_eq!(p.pieces.len(), 0, "a delete removes the pieces");
    }

    #[test]
    fn keys_that_share_a_prefix_keep_their_own_pieces() {
        let (_d, p) = open();
        let (a, b) = (vec![b'a'; 2 * PIECE], vec![b'b'; 3 * PIECE]);
        p.write(b"key", Some(&a), false).unwrap();
        p.write(b"key2", Some(&b), false).unwrap();
        p.write(b"key", Some(b"\"short\""), false).unwrap();
        assert_eq!(get(&p, b"key2"), Some(b));
        assert_eq!(get(&p, b"key"), Some(b"\"short\"".to_vec()));
    }

    #[test]
    fn a_reader_holding_an_old_marker_gets_the_value_written_since() {
        let (_d, p) = open();
        p.write(b"k", Some(&vec![b'1'; 2 * PIECE]), false).unwrap();
        let old_marker = p.main.get(b"k").unwrap().unwrap();
        p.write(b"k", Some(&vec![b'2'; 3 * PIECE]), false).unwrap();
        assert_eq!(p.resolve(b"k", old_marker.clone()).unwrap(), Some(vec![b'2'; 3 * PIECE]));
        p.write(b"k", None, false).unwrap();
        assert_eq!(p.resolve(b"k", old_marker).unwrap(), None, "deleted meanwhile");
    }

    #[test]
    fn pieces_orphaned_by_a_crash_go_with_the_next_write_of_the_key() {
        let (_d, p) = open();
        // Pieces written, the marker not (a crash in between); the replay writes it again.
        p.pieces.insert(piece_key(b"k", 7, 0), &[1u8; 10][..]).unwrap();
        p.write(b"k", Some(&vec![b'z'; PIECE + 1]), false).unwrap();
        assert_eq!(p.pieces.len(), 2);
        assert_eq!(get(&p, b"k"), Some(vec![b'z'; PIECE + 1]));
    }

    #[test]
    fn a_replayed_delete_or_short_write_removes_pieces_a_crash_left() {
        let (_d, p) = open();
        for replayed_value in [None, Some(&b"\"short\""[..])] {
            p.write(b"k", Some(&vec![b'v'; 3 * PIECE]), false).unwrap();
            // Saved by sled before the crash: the delete (or short write), not the removal of
            // the pieces after it. The log replays the same write.
            p.main.remove(b"k").unwrap();
            assert_eq!(p.pieces.len(), 3);
            p.write(b"k", replayed_value, true).unwrap();
            assert_eq!(p.pieces.len(), 0, "{replayed_value:?}");
        }
    }

    #[test]
    fn a_piece_out_of_place_or_a_damaged_marker_is_not_taken_as_the_value() {
        let (_d, p) = open();
        p.write(b"k", Some(&vec![b'a'; 2 * PIECE + 10]), false).unwrap();
        let stored = p.main.get(b"k").unwrap().unwrap();
        let (generation, _) = marker(&stored).unwrap();
        // The last piece replaced by a full-size one: the length check alone would pass
        // only by luck; the piece's size must match what is left.
        p.pieces.insert(piece_key(b"k", generation, 2), &[b'b'; PIECE][..]).unwrap();
        assert!(matches!(p.resolve(b"k", stored.clone()), Err(StoreError::Corrupt { .. })));
        let huge = encode_marker(generation, usize::MAX);
        assert!(matches!(p.resolve(b"k", sled::IVec::from(&huge[..])), Err(StoreError::Corrupt { .. })));
    }

    #[test]
    fn missing_pieces_with_an_unchanged_marker_are_corruption() {
        let (_d, p) = open();
        p.write(b"k", Some(&vec![b'q'; 2 * PIECE]), false).unwrap();
        let first = p.pieces.iter().next().unwrap().unwrap().0;
        p.pieces.remove(first).unwrap();
        let stored = p.main.get(b"k").unwrap().unwrap();
        assert!(matches!(p.resolve(b"k", stored), Err(StoreError::Corrupt { .. })));
    }
}
