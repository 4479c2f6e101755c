//! Helpers shared by the benchmarks.

use std::time::Duration;

/// User + system CPU time of this process so far, from `/proc/self/stat` (Linux; `None`
/// elsewhere). Ticks are USER_HZ, 100 per second on Linux.
pub fn process_cpu() -> Option<Duration> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    Some(ticks_to_time(stat_ticks(&stat)?))
}

/// User + system CPU time so far of this process's threads whose name starts with `prefix`
/// (`/proc/self/task/*/`; Linux, `None` elsewhere). A thread that ended meanwhile takes its
/// time with it: read it for threads that live as long as the run, a runtime's workers.
#[allow(dead_code)] // each bench compiles this module: the delivery bench does not use it
pub fn threads_cpu(prefix: &str) -> Option<Duration> {
    let mut ticks = 0;
    for task in std::fs::read_dir("/proc/self/task").ok()?.flatten() {
        let dir = task.path();
        // A thread may end between the listing and the reads: skipped.
        let named = std::fs::read_to_string(dir.join("comm")).is_ok_and(|c| c.starts_with(prefix));
        if let Some(t) = named.then(|| std::fs::read_to_string(dir.join("stat")).ok()).flatten() {
            ticks += stat_ticks(&t)?;
        }
    }
    Some(ticks_to_time(ticks))
}

/// utime + stime of a `stat` line. Fields after the command name (which may hold spaces)
/// start after the last ')'.
fn stat_ticks(stat: &str) -> Option<u64> {
    let rest = &stat[stat.rfind(')')? + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    Some(fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?)
}

fn ticks_to_time(ticks: u64) -> Duration {
    Duration::from_millis(ticks * 10)
}
