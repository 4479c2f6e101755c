//! A store-level crash stress (ignored: minutes of heavy disk writes; run it by hand after a
//! change to the store, see the README's Testing section). The parent runs this test binary
//! again as a child that writes through the store from 32 tasks (values of 100 B to 17 MiB:
//! pieces, log records over 1 MiB, segment switches and reuse, the one-record oversized
//! segment) and prints "ACK i" once each batch is durable; it kills it with SIGKILL at a
//! random moment, then checks in another child that the store opens and holds every
//! acknowledged write, and none of the acknowledged deletes (verifiers are killed during
//! their replay too, so a log is replayed more than once). Environment: STORE_CRASH_ROUNDS
//! (default 20), STORE_CRASH_TMP (a directory on the filesystem to test), STORE_CRASH_KEEP
//! (keep a copy of a failing data directory), STORE_CRASH_EARLY_MAX and STORE_CRASH_EARLY_N
//! (how late, in ms, and how many times a verifier may be killed in its replay).

use super::*;
use std::io::{BufRead, Write};

const TASKS: u64 = 32;
const DEL_DIST: u64 = 64;

fn size(i: u64) -> usize {
    let h = i.wrapping_mul(0x9e37_79b9_7f4a_7c15) >> 40;
    match h % 100 {
        0..=49 => 100,
        50..=89 => 5_000 + (h as usize % 15_000),
        90..=98 => 300_000 + (h as usize % 1_200_000),
        _ => {
            if h.is_multiple_of(7) {
                17 << 20
            } else {
                2_000_000
            }
        }
    }
}

fn val(i: u64) -> String {
    let mut s = format!("{i}:");
    s.push_str(&"x".repeat(size(i)));
    s
}

fn key(i: u64) -> String {
    format!("k{i:012}")
}

/// Whether op(i) deletes key(i - DEL_DIST).
fn deletes(i: u64, base: u64) -> bool {
    i.is_multiple_of(3) && i >= base + DEL_DIST
}

fn open_retrying(dir: &std::path::Path) -> Result<Store, StoreError> {
    let mut last = None;
    for _ in 0..300 {
        match Store::open_sled(dir) {
            Ok(s) => return Ok(s),
            Err(e) if e.to_string().contains("in use") => {
                last = Some(e);
                std::thread::sleep(std::time::Duration::from_millis(10));
            }
            Err(e) => return Err(e),
        }
    }
    Err(last.unwrap())
}

/// The child's part (nothing without STORE_CRASH_ROLE): `write` or `verify`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore]
async fn child() {
    let Ok(role) = std::env::var("STORE_CRASH_ROLE") else { return };
    let dir = std::path::PathBuf::from(std::env::var("STORE_CRASH_DIR").unwrap());
    let store = match open_retrying(&dir) {
        Ok(s) => s,
        Err(e) => {
            let mut out = std::io::stdout().lock();
            writeln!(out, "OPENFAIL {e}").unwrap();
            out.flush().unwrap();
            std::process::exit(3);
        }
    };
    {
        let mut out = std::io::stdout().lock();
        writeln!(out, "OPENED").unwrap();
        out.flush().unwrap();
    }
    if role == "verify" {
        // Expectations on stdin-less file: STORE_CRASH_EXPECT holds "P i" (present) / "A i" (absent) lines.
        let exp = std::fs::read_to_string(std::env::var("STORE_CRASH_EXPECT").unwrap()).unwrap();
        let mut bad = 0;
        for line in exp.lines() {
            let (what, i) = line.split_once(' ').unwrap();
            let i: u64 = i.parse().unwrap();
            let got: Option<String> = store.get(Keyspace::OBJECTS, &key(i)).unwrap();
            let ok = match what {
                "P" => got.as_deref() == Some(val(i).as_str()),
                "A" => got.is_none(),
                _ => unreachable!(),
            };
            if !ok {
                bad += 1;
                let mut out = std::io::stdout().lock();
                writeln!(out, "BAD {what} {i} got {:?}", got.map(|g| g.len())).unwrap();
            }
        }
        let mut out = std::io::stdout().lock();
        writeln!(out, "VERIFIED bad={bad}").unwrap();
        out.flush().unwrap();
        std::process::exit(if bad == 0 { 0 } else { 4 });
    }
    let base: u64 = std::env::var("STORE_CRASH_BASE").unwrap().parse().unwrap();
    let mut tasks = Vec::new();
    for t in 0..TASKS {
        let store = store.clone();
        tasks.push(tokio::spawn(async move {
            let mut i = base + t;
            loop {
                let mut b = Batch::new();
                b.put_new(Keyspace::OBJECTS, &key(i), &val(i));
                if deletes(i, base) {
                    b.delete(Keyspace::OBJECTS, &key(i - DEL_DIST));
                }
                b.put(Keyspace::META, &format!("last{t}"), &i);
                if store.commit(b).await.is_err() {
                    std::process::exit(5);
                }
                {
                    let mut out = std::io::stdout().lock();
                    writeln!(out, "ACK {i}").unwrap();
                    out.flush().unwrap();
                }
                i += TASKS;
            }
        }));
    }
    for t in tasks {
        let _ = t.await;
    }
}

fn run_child(
    role: &str,
    dir: &std::path::Path,
    base: u64,
    expect: &std::path::Path,
    kill_after_ms: Option<u64>,
) -> (Vec<String>, Option<i32>) {
    let exe = std::env::current_exe().unwrap();
    let mut child = std::process::Command::new(exe)
        .args(["store::crash_tests::child", "--exact", "--ignored", "--nocapture", "--test-threads=1"])
        .env("STORE_CRASH_ROLE", role)
        .env("STORE_CRASH_DIR", dir)
        .env("STORE_CRASH_BASE", base.to_string())
        .env("STORE_CRASH_EXPECT", expect)
        .stdout(std::process::Stdio::piped())
        .stderr(
            std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(std::env::temp_dir().join(format!("store-crash-child-{role}.err")))
                .unwrap(),
        )
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let reader = std::thread::spawn(move || {
        std::io::BufReader::new(stdout).lines().map_while(Result::ok).collect::<Vec<String>>()
    });
    let status = match kill_after_ms {
        Some(ms) => {
            std::thread::sleep(std::time::Duration::from_millis(ms));
            let _ = child.kill(); // SIGKILL
            child.wait().unwrap()
        }
        None => {
            let deadline = std::time::Instant::now() + std::time::Duration::from_secs(120);
            loop {
                if let Some(s) = child.try_wait().unwrap() {
                    break s;
                }
                if std::time::Instant::now() > deadline {
                    let _ = child.kill();
                    break child.wait().unwrap();
                }
                std::thread::sleep(std::time::Duration::from_millis(10));
            }
        }
    };
    (reader.join().unwrap(), status.code())
}

/// Rounds of: a writer killed at 0-2.5 s, verifiers killed in their replay, a verifier that
/// checks every write acknowledged in any round so far.
#[test]
#[ignore]
fn kill_9_stress() {
    use rand::Rng;
    let rounds: usize = std::env::var("STORE_CRASH_ROUNDS").ok().and_then(|r| r.parse().ok()).unwrap_or(20);
    let keep = std::env::var("STORE_CRASH_KEEP").is_ok();
    let tmp = match std::env::var("STORE_CRASH_TMP") {
        Ok(t) => tempfile::tempdir_in(t).unwrap(),
        Err(_) => tempfile::tempdir().unwrap(),
    };
    let dir = tmp.path().join("data");
    let early_max: u64 = std::env::var("STORE_CRASH_EARLY_MAX").ok().and_then(|r| r.parse().ok()).unwrap_or(40);
    let early_n: usize = std::env::var("STORE_CRASH_EARLY_N").ok().and_then(|r| r.parse().ok()).unwrap_or(1);
    let expect = tmp.path().join("expect");
    std::fs::write(&expect, "").unwrap();
    let mut rng = rand::rng();
    // acked puts and acked deletes (of key i - DEL_DIST by op i).
    let mut acked: std::collections::BTreeSet<u64> = Default::default();
    let mut bases: Vec<u64> = Vec::new();
    let mut base = 0u64;
    for round in 0..rounds {
        bases.push(base);
        let kill = match rng.random_range(0..10) {
            0 => rng.random_range(0..60),
            _ => rng.random_range(200..2500),
        };
        let (lines, code) = run_child("write", &dir, base, &expect, Some(kill));
        // (OPENFAIL shares its line with libtest's "test …::child ... " prefix.)
        if let Some(l) = lines.iter().find(|l| l.contains("OPENFAIL")) {
            panic!("round {round}: the writer could not open the store: {l}");
        }
        // A writer that ended by itself (a failed commit exits 5, a panic 101) is a failure,
        // not a round with fewer acknowledgements.
        assert_eq!(code, None, "round {round}: the writer exited by itself before its kill: {:?}", lines.last());
        let mut max = base;
        let mut n = 0;
        for l in &lines {
            if let Some(i) = l.strip_prefix("ACK ") {
                let i: u64 = i.parse().unwrap();
                acked.insert(i);
                max = max.max(i);
                n += 1;
            }
        }
        // Expectations over every round so far.
        let mut exp = String::new();
        for &i in &acked {
            let b = *bases.iter().rev().find(|b| **b <= i).unwrap();
            let del_by = i + DEL_DIST;
            let deleted_ack = deletes(del_by, b) && acked.contains(&del_by);
            if deleted_ack {
                exp.push_str(&format!("A {i}\n"));
            } else if !(deletes(del_by, b)) {
                exp.push_str(&format!("P {i}\n"));
            }
        }
        std::fs::write(&expect, exp).unwrap();
        // Verify; sometimes kill the verifier early (a crash during the replay).
        for _ in 0..early_n {
            if rng.random_range(0..5) < 3 {
                let (l, _) = run_child("verify", &dir, base, &expect, Some(rng.random_range(0..early_max)));
                if let Some(l) = l.iter().find(|l| l.contains("OPENFAIL")) {
                    panic!("round {round}: an early-killed verifier could not open: {l}");
                }
            }
        }
        let (lines, code) = run_child("verify", &dir, base, &expect, None);
        let bad: Vec<&String> = lines.iter().filter(|l| l.starts_with("BAD") || l.contains("OPENFAIL")).collect();
        eprintln!("round {round}: killed after {kill} ms, {n} acked (total {}), verify exit {code:?}", acked.len());
        if code != Some(0) {
            if keep {
                let kept = std::env::temp_dir().join(format!("store-crash-kept-{round}"));
                let _ = std::process::Command::new("cp").arg("-a").arg(&dir).arg(&kept).status();
                eprintln!("kept a copy in {}", kept.display());
            }
            let tail: Vec<&String> = lines.iter().rev().take(5).collect();
            panic!("round {round}: verify failed ({code:?}): {:?} tail {tail:?}", &bad[..bad.len().min(20)]);
        }
        base = max + 10_000;
    }
    // Rounds that acknowledged nothing checked nothing.
    assert!(!acked.is_empty(), "no write was acknowledged in {rounds} rounds");
}
