//! Room left on the data directory's filesystem, and the floor under which new work waits.
//!
//! Why: a write the disk refuses fails the store for good (the daemon stops, for a restart
//! once space is freed, see `app.rs`). Refusing *new* work (ingests that would make a new
//! object, published events) while the free space is under `storage.min_free_mb` keeps the
//! daemon up instead: reads, changes, deletes and the deliveries that drain the outbox go on,
//! the work already accepted (buffered batches, delivery records) writes into the reserve,
//! and new work resumes by itself once an operator frees space. Senders are answered 503,
//! which upstreams retry.
//!
//! This module only measures and remembers; its readers decide what to refuse (the adapter
//! actor an ingest's new object, the HTTP layer a published event).

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

/// The data directory's free space against its floor. Sampled by a periodic task
/// (`app.rs`) and read lock-free on every ingest.
#[derive(Debug)]
pub struct Room {
    dir: PathBuf,
    /// Bytes; 0: never short.
    floor: u64,
    available: AtomicU64,
    short: AtomicBool,
}

impl Room {
    /// Not short until a sample says so.
    pub fn new(dir: &Path, floor: u64) -> Room {
        Room { dir: dir.to_path_buf(), floor, available: AtomicU64::new(u64::MAX), short: AtomicBool::new(false) }
    }

    /// Measures the free space now (a `statvfs`), and returns it. A failed measurement
    /// changes nothing (the last sample stands).
    pub fn sample(&self) -> std::io::Result<u64> {
        let available = fs2::available_space(&self.dir)?;
        self.record(available);
        Ok(available)
    }

    /// Takes `available` as the free space; logs when the state changes. Short under the
    /// floor, and again long only over the floor plus a tenth: free space moving around the
    /// floor (a log segment made and deleted) must not flap the state, nor the log.
    fn record(&self, available: u64) {
        self.available.store(available, Ordering::Relaxed);
        let resume = self.floor.saturating_add(self.floor / 10);
        let short = self.floor > 0 && available < if self.short() { resume } else { self.floor };
        if self.short.swap(short, Ordering::Relaxed) != short {
            let (free_mb, floor_mb) = (available >> 20, self.floor >> 20);
            if short {
                tracing::warn!(
                    free_mb,
                    min_free_mb = floor_mb,
                    dir = %self.dir.display(),
                    "the data directory is short of disk space: new objects (ingests) and published events are refused \
                     (503) until it has storage.min_free_mb (plus a tenth) free again; reads, changes, deletes and \
                     deliveries go on"
                );
            } else {
                tracing::info!(
                    free_mb,
                    min_free_mb = floor_mb,
                    "disk space is back over storage.min_free_mb (plus a tenth): new work is taken again"
                );
            }
        }
    }

    /// Whether new work should wait (free space under the floor at the last sample).
    pub fn short(&self) -> bool {
        self.short.load(Ordering::Relaxed)
    }

    /// Free bytes at the last sample (`u64::MAX` before the first).
    pub fn available(&self) -> u64 {
        self.available.load(Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn short_under_the_floor_and_back_over_it() {
        let room = Room::new(Path::new("."), 100 << 20);
        assert!(!room.short(), "not short before a sample");
        room.record(100 << 20);
        assert!(!room.short(), "the floor itself is enough");
        room.record(99 << 20);
        assert!(room.short());
        assert_eq!(room.available(), 99 << 20);
        room.record(105 << 20);
        assert!(room.short(), "back over the floor, but not by a tenth: still short (no flapping)");
        room.record(110 << 20);
        assert!(!room.short(), "over the floor plus a tenth");
        room.record(105 << 20);
        assert!(!room.short(), "and long until under the floor again");
    }

    #[test]
    fn a_zero_floor_is_never_short() {
        let room = Room::new(Path::new("."), 0);
        room.record(0);
        assert!(!room.short());
    }

    #[test]
    fn a_sample_measures_the_directory() {
        let dir = tempfile::tempdir().unwrap();
        let room = Room::new(dir.path(), 1);
        assert!(room.sample().unwrap() > 0);
        assert!(!room.short(), "a test machine has more than a byte free");
        let gone = Room::new(&dir.path().join("missing"), 1);
        assert!(gone.sample().is_err());
        assert!(!gone.short(), "a failed measurement changes nothing");
    }
}
