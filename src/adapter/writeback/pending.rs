//! The pending writeback jobs a worker holds in memory (see `worker.rs`), with the indexes
//! its loop reads, so that each pass costs about the same however many jobs wait.
//!
//! The worker's loop runs once per completed attempt, and each run needs the next job due
//! and the due jobs to start. Walking every job for them, working out each one's row key
//! again (three strings cloned), made draining a backlog of N jobs cost O(N²) CPU (writeback
//! code review: 16,000 jobs took 73–81 CPU seconds in a debug build, 2,000 under 2). Here
//! each job's row and due time are worked out once, when it is stored, and the jobs waiting
//! to start are kept ordered by due time: the next ones come from the head of that order.
//! Its object is indexed too, for the re-keys of a newly found job's older ones.
//!
//! Every change goes through [`Pending::insert`] and [`Pending::remove`] (and
//! [`Pending::fly`] / [`Pending::land`] for the in-flight mark): they alone touch the
//! indexes, so those cannot get out of step with the jobs. A job's fields are changed by
//! storing it again ([`Pending::update`]).
//!
//! All pending jobs are held in memory, as before: a backlog costs memory in proportion to
//! its size (reading the rest back from the store as the head drains is not done).

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};

use super::job::Job;
use crate::catalog::ProviderType;
use crate::ids::ObjectId;

/// The source row a job writes: the table and schema its object came from (as `send.rs`
/// reads them: none is the adapter's, `public` the default schema; a job of another table than
/// the adapter's is given up there, and must not take another row's fields), and its external
/// ID. generic_webhook writes one URL: its jobs differ by external ID alone. A job without an
/// external ID (a generic object without one) is its object's row, [`NO_EXTERNAL_ID`].
pub(super) type RowKey = (String, String, String);

/// The table part of the row of a job without an external ID: the object alone (see [`RowKey`]).
const NO_EXTERNAL_ID: &str = "\0object";

/// One pending job, with what the indexes need of it, worked out when it was stored.
struct Held {
    job: Job,
    /// `None`: no row (see [`Pending::row`]).
    row: Option<RowKey>,
    /// See [`Pending::due_at`].
    due_at: u64,
}

/// The pending jobs of one worker, by key, and their indexes.
pub(super) struct Pending {
    /// The worker's adapter type: a job it may not send has no row and is due at once.
    kind: ProviderType,
    /// The adapter's (schema, table), when pinned: the row of a job that names none.
    pinned: Option<(String, String)>,
    jobs: BTreeMap<String, Held>,
    /// `(due_at, key)` of every job not in flight: the order attempts start in (the longest
    /// due first; alert keys sort before batch keys, so a tie goes to an alert).
    waiting: BTreeSet<(u64, String)>,
    /// The keys of each row's jobs, in flight or not: what `coalesce` merges.
    rows: HashMap<RowKey, BTreeSet<String>>,
    /// The keys of each object's jobs: what `rekey_older` gives a newer job's ID.
    objects: HashMap<ObjectId, BTreeSet<String>>,
    /// The keys of the jobs whose attempt is in flight.
    flying: HashSet<String>,
}

impl Pending {
    /// Holds nothing yet, for an adapter of type `kind`, pinned to `pinned` (schema, table).
    pub fn new(kind: ProviderType, pinned: Option<(&str, &str)>) -> Pending {
        Pending {
            kind,
            pinned: pinned.map(|(s, t)| (s.to_string(), t.to_string())),
            jobs: BTreeMap::new(),
            waiting: BTreeSet::new(),
            rows: HashMap::new(),
            objects: HashMap::new(),
            flying: HashSet::new(),
        }
    }

    pub fn get(&self, key: &str) -> Option<&Job> {
        self.jobs.get(key).map(|h| &h.job)
    }

    pub fn contains(&self, key: &str) -> bool {
        self.jobs.contains_key(key)
    }

    /// The row of the job at `key` (see [`RowKey`]): `None` when it has none, or it is a
    /// job this adapter may not send (given up at its attempt, it must neither lend its fields
    /// to this adapter's jobs of the same ID nor take theirs), or there is no such job.
    pub fn row(&self, key: &str) -> Option<&RowKey> {
        self.jobs.get(key)?.row.as_ref()
    }

    /// Stores `job` at `key`, in place of any job there (in flight, it stays in flight).
    pub fn insert(&mut self, key: String, job: Job) {
        self.unindex(&key);
        let row = self.row_of(&job);
        let due_at = self.due_at(&job);
        if let Some(r) = &row {
            self.rows.entry(r.clone()).or_default().insert(key.clone());
        }
        self.objects.entry(job.object_id.clone()).or_default().insert(key.clone());
        if !self.flying.contains(&key) {
            self.waiting.insert((due_at, key.clone()));
        }
        self.jobs.insert(key, Held { job, row, due_at });
    }

    /// Drops the job at `key` (its in-flight mark too); returns it.
    pub fn remove(&mut self, key: &str) -> Option<Job> {
        self.flying.remove(key);
        self.unindex(key).map(|h| h.job)
    }

    /// Changes the job at `key` through `change`, which returns what it returns; `None` when
    /// there is no such job. Stored again: its row may change with it.
    pub fn update<T>(&mut self, key: &str, change: impl FnOnce(&mut Job) -> T) -> Option<T> {
        let mut job = self.unindex(key)?.job;
        let out = change(&mut job);
        self.insert(key.to_string(), job);
        Some(out)
    }

    /// Marks the job at `key` in flight: it waits no longer, and its row is busy.
    pub fn fly(&mut self, key: &str) {
        if let Some(h) = self.jobs.get(key) {
            self.waiting.remove(&(h.due_at, key.to_string()));
            self.flying.insert(key.to_string());
        }
    }

    /// Its attempt ended: the job at `key` waits again (until it is stored again or removed).
    pub fn land(&mut self, key: &str) {
        if self.flying.remove(key) {
            if let Some(h) = self.jobs.get(key) {
                self.waiting.insert((h.due_at, key.to_string()));
            }
        }
    }

    pub fn is_flying(&self, key: &str) -> bool {
        self.flying.contains(key)
    }

    /// When the next job that may start is due (`None`: none waits). Not a job held back for
    /// its row's attempt in flight: due, it would make the worker's loop spin until that
    /// attempt ends (a completion wakes it anyway).
    pub fn next_due(&self) -> Option<u64> {
        let busy = self.busy_rows();
        let next = self.waiting.iter().find(|(_, k)| self.row(k).is_none_or(|r| !busy.contains(r)));
        next.map(|(at, _)| *at)
    }

    /// The keys of the jobs due at `now` to start, at most `room`: the longest due first, one
    /// per row, none of a row with an attempt in flight (one attempt per row at a time).
    ///
    /// Taken from the head of the due order: the jobs it passes over are those of a busy row
    /// (or of a row already chosen), which `coalesce` keeps to about one each (more only when
    /// a newer one in flight left older ones holding the fields it lacks), so a pass reads
    /// about `room` + `CONCURRENCY` entries, not the backlog.
    pub fn due(&self, now: u64, room: usize) -> Vec<String> {
        let mut busy = self.busy_rows();
        let mut due = Vec::new();
        let mut head = self.waiting.iter().take_while(|(at, _)| *at <= now);
        while due.len() < room {
            let Some((_, k)) = head.next() else { break };
            if self.row(k).is_none_or(|r| busy.insert(r)) {
                due.push(k.clone());
            }
        }
        due
    }

    /// The key lists of the rows holding more than one job (each in key order), for
    /// `coalesce`.
    pub fn crowded_rows(&self) -> Vec<Vec<String>> {
        self.rows.values().filter(|keys| keys.len() > 1).map(|keys| keys.iter().cloned().collect()).collect()
    }

    /// The keys of `object`'s jobs, in key order.
    pub fn of_object(&self, object: &ObjectId) -> Vec<String> {
        self.objects.get(object).map(|keys| keys.iter().cloned().collect()).unwrap_or_default()
    }

    /// The rows with an attempt in flight (at most `CONCURRENCY`).
    fn busy_rows(&self) -> HashSet<&RowKey> {
        self.flying.iter().filter_map(|k| self.row(k)).collect()
    }

    /// Takes the job at `key` out of the map and every index but the in-flight mark.
    fn unindex(&mut self, key: &str) -> Option<Held> {
        let held = self.jobs.remove(key)?;
        self.waiting.remove(&(held.due_at, key.to_string()));
        if let Some(r) = &held.row {
            forget(&mut self.rows, r, key);
        }
        forget(&mut self.objects, &held.job.object_id, key);
        Some(held)
    }

    fn row_of(&self, j: &Job) -> Option<RowKey> {
        if j.barred_for(self.kind).is_some() {
            return None;
        }
        let pinned = self.pinned.as_ref().map(|(s, t)| (s.as_str(), t.as_str()));
        let Some(external_id) = j.external_id.clone() else {
            // An object without an external ID (a generic_webhook one without dedup_key) is
            // still one record to its receiver: its jobs are ordered by the object. (A table
            // name that no real row has: Supabase tables are plain identifiers, generic ones
            // empty. A Supabase job without one is given up at its attempt all the same.)
            return Some((String::new(), NO_EXTERNAL_ID.to_string(), j.object_id.as_str().to_string()));
        };
        let schema = j.schema.as_deref().or(pinned.map(|p| p.0)).unwrap_or(crate::adapter::supabase::DEFAULT_SCHEMA);
        let table = j.table.as_deref().or(pinned.map(|p| p.1)).unwrap_or_default();
        Some((schema.to_string(), table.to_string(), external_id))
    }

    /// When `j` is due: a job this adapter may not send at once, so that it is given up (and
    /// said so) when the adapter changes type, not at an attempt hours away, by when a PATCH
    /// back could have brought it to life again.
    fn due_at(&self, j: &Job) -> u64 {
        match j.barred_for(self.kind) {
            None => j.next_attempt_ms,
            Some(_) => 0,
        }
    }
}

/// Takes `key` out of `index`'s set for `at`, and the set once empty (no entry is left
/// behind for a row or object whose jobs are gone).
fn forget<K: std::hash::Hash + Eq>(index: &mut HashMap<K, BTreeSet<String>>, at: &K, key: &str) {
    if let Some(keys) = index.get_mut(at) {
        keys.remove(key);
        if keys.is_empty() {
            index.remove(at);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::Map;

    fn job(object: &ObjectId, external_id: Option<&str>, next_attempt_ms: u64) -> Job {
        Job {
            object_id: object.clone(),
            batch_id: None,
            alert_id: None,
            external_id: external_id.map(str::to_string),
            fields: Map::new(),
            queued_by: Some(ProviderType::Supabase),
            object_from: None,
            table: Some("listings".into()),
            schema: None,
            created_at_ms: 1,
            caused_at_ms: Some(1),
            attempts: 0,
            next_attempt_ms,
            last_error: None,
        }
    }

    fn pending() -> Pending {
        Pending::new(ProviderType::Supabase, Some(("public", "listings")))
    }

    impl Pending {
        /// Every index says what the jobs say (the invariant `insert`/`remove` keep).
        fn assert_in_step(&self) {
            let waiting: BTreeSet<(u64, String)> = self
                .jobs
                .iter()
                .filter(|(k, _)| !self.flying.contains(*k))
                .map(|(k, h)| (self.due_at(&h.job), k.clone()))
                .collect();
            assert_eq!(self.waiting, waiting, "waiting");
            let mut rows: HashMap<RowKey, BTreeSet<String>> = HashMap::new();
            let mut objects: HashMap<ObjectId, BTreeSet<String>> = HashMap::new();
            for (k, h) in &self.jobs {
                assert_eq!(h.row, self.row_of(&h.job), "row of {k}");
                if let Some(r) = self.row_of(&h.job) {
                    rows.entry(r).or_default().insert(k.clone());
                }
                objects.entry(h.job.object_id.clone()).or_default().insert(k.clone());
            }
            assert_eq!(self.rows, rows, "rows");
            assert_eq!(self.objects, objects, "objects");
            assert!(self.flying.iter().all(|k| self.jobs.contains_key(k)), "in flight but not held");
        }
    }

    #[test]
    fn the_indexes_follow_every_change() {
        let (a, b) = (ObjectId::generate(), ObjectId::generate());
        let mut p = pending();
        p.insert("k1".into(), job(&a, Some("1"), 10));
        p.insert("k2".into(), job(&a, Some("1"), 5));
        p.insert("k3".into(), job(&b, Some("2"), 7));
        p.assert_in_step();
        assert_eq!(p.crowded_rows(), vec![vec!["k1".to_string(), "k2".to_string()]]);
        assert_eq!(p.of_object(&a), ["k1", "k2"]);
        // Re-keyed: another row.
        p.update("k2", |j| j.external_id = Some("9".into()));
        p.assert_in_step();
        assert!(p.crowded_rows().is_empty());
        // Replaced in flight (a re-key while its attempt runs): still in flight.
        p.fly("k3");
        p.insert("k3".into(), job(&b, Some("3"), 8));
        assert!(p.is_flying("k3"));
        p.assert_in_step();
        p.land("k3");
        p.assert_in_step();
        // Removed in flight: the mark goes with it.
        p.fly("k1");
        assert_eq!(p.remove("k1").map(|j| j.next_attempt_ms), Some(10));
        assert!(!p.is_flying("k1"));
        p.assert_in_step();
        assert!(p.of_object(&a) == ["k2"] && p.remove("k1").is_none() && p.update("k1", |_| ()).is_none());
        p.remove("k2");
        p.remove("k3");
        p.assert_in_step();
        assert!(p.rows.is_empty() && p.objects.is_empty() && p.waiting.is_empty(), "no entry left behind");
    }

    #[test]
    fn the_longest_due_start_first_one_per_row_none_of_a_busy_row() {
        let o = ObjectId::generate();
        let mut p = pending();
        for (k, id, at) in [("a", "1", 30), ("b", "1", 10), ("c", "2", 20), ("d", "3", 40), ("e", "4", 99)] {
            p.insert(k.into(), job(&o, Some(id), at));
        }
        // Due at 50: b (row 1), c, d; a shares b's row.
        assert_eq!(p.due(50, 8), ["b", "c", "d"]);
        assert_eq!(p.due(50, 2), ["b", "c"]);
        assert_eq!(p.next_due(), Some(10));
        // Row 1 busy: neither of its jobs starts, nor sets the wait.
        p.fly("b");
        assert_eq!(p.due(50, 8), ["c", "d"]);
        assert_eq!(p.next_due(), Some(20));
        p.fly("c");
        p.fly("d");
        assert_eq!(p.next_due(), Some(99), "the next that may start");
        p.land("b");
        assert_eq!(p.due(50, 8), ["b"]);
        p.assert_in_step();
    }

    #[test]
    fn a_job_this_adapter_may_not_send_is_due_at_once_and_has_no_row() {
        let o = ObjectId::generate();
        let mut p = pending();
        let mut other = job(&o, Some("1"), 1_000);
        other.queued_by = Some(ProviderType::GenericWebhook);
        p.insert("x".into(), other);
        p.insert("y".into(), job(&o, Some("1"), 1_000));
        assert_eq!(p.row("x"), None);
        assert_eq!(p.row("y"), Some(&("public".to_string(), "listings".to_string(), "1".to_string())));
        assert_eq!(p.due(0, 8), ["x"]);
        // No external ID: no row, so never held back by one.
        p.insert("z".into(), job(&o, None, 0));
        p.fly("y");
        assert_eq!(p.due(0, 8), ["x", "z"]);
        p.assert_in_step();
    }
}
