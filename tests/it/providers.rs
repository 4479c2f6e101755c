//! Mux and Supabase adapters, Mux lifecycle webhooks.
//!
//! Phase 1 (here now): the Mux signature scheme cross-checked against Mux's official Node SDK.
//! The end-to-end tests through the daemon's ingest and lifecycle endpoints come with the
//! pipeline.

use std::io::Write;
use std::path::PathBuf;
use std::process::{Command, Stdio};

use hookline::adapter::mux::{self, MuxSignatureError, DEFAULT_TOLERANCE_SECS};
use serde_json::{json, Value};

/// Mux's `video.asset.ready` example (seed 003), as raw bytes on the wire.
const SEED_003_READY: &str = r#"{"type":"video.asset.ready","request_id":null,"object":{"type":"asset","id":"0201p02fGKPE7MrbC269XRD7LpcHhrmbu0002"},"id":"3a56ac3d-33da-4366-855b-f592d898409d","environment":{"name":"Demo pages","id":"j0863n"},"data":{"tracks":[{"type":"video","max_width":1280,"max_height":544,"max_frame_rate":23.976,"id":"0201p02fGKPE7MrbC269XRD7LpcHhrmbu0002","duration":153.361542},{"type":"audio","max_channels":2,"max_channel_layout":"stereo","id":"FzB95vBizv02bYNqO5QVzNWRrVo5SnQju","duration":153.361497}],"status":"ready","max_stored_resolution":"SD","max_stored_frame_rate":23.976,"id":"0201p02fGKPE7MrbC269XRD7LpcHhrmbu0002","duration":153.361542,"created_at":"2018-02-15T01:04:45.000Z","aspect_ratio":"40:17"},"created_at":"2018-02-15T01:04:45.000Z","accessor_source":null,"accessor":null}"#;

struct Case {
    name: &'static str,
    body: String,
    header: String,
    secret: &'static str,
    /// What hookline's verifier says.
    ours: Result<(), MuxSignatureError>,
    /// What the SDK must say.
    sdk_ok: bool,
}

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// Runs tests/crosscheck/verify_mux_signature.cjs on the cases; returns the SDK's verdicts.
fn sdk_verdicts(cases: &[Case]) -> Vec<Value> {
    let sdk = repo().join("target/crosscheck/node/node_modules/@mux/mux-node/package.json");
    assert!(
        sdk.exists(),
        "Mux's Node SDK is not installed at {}: run tests/crosscheck/setup.sh (needs node and npm)",
        sdk.display()
    );
    let mut child = Command::new("node")
        .arg(repo().join("tests/crosscheck/verify_mux_signature.cjs"))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run `node` ({e}): install Node.js, then run tests/crosscheck/setup.sh"));
    let mut input = String::new();
    for c in cases {
        let expect = if c.sdk_ok { "ok" } else { "fail" };
        input += &json!({"body": c.body, "header": c.header, "secret": c.secret, "expect": expect}).to_string();
        input.push('\n');
    }
    child.stdin.take().unwrap().write_all(input.as_bytes()).unwrap();
    let out = child.wait_with_output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_ne!(out.status.code(), Some(2), "run tests/crosscheck/setup.sh: {stderr}");
    let verdicts: Vec<Value> = stdout.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(verdicts.len(), cases.len(), "node script output: {stdout}\nstderr: {stderr}");
    verdicts
}

#[test]
fn mux_signatures_agree_with_the_official_node_sdk() {
    let now = time::OffsetDateTime::now_utc().unix_timestamp();
    let (secret, old_secret) = ("mux-signing-secret-new", "mux-signing-secret-old");
    let seed = SEED_003_READY.to_string();
    // Non-ASCII and odd whitespace: the MAC is over the raw bytes, not re-serialised JSON.
    let unicode =
        "{ \"type\": \"video.asset.ready\",\n  \"data\": {\"id\": \"a1\", \"passthrough\": \"caf\u{e9} \u{1f3ac}\"} }"
            .to_string();
    let v1 = |secret: &str, t: i64, body: &str| {
        mux::sign(secret, t, body.as_bytes()).split_once(",v1=").unwrap().1.to_string()
    };
    let rotated = format!("t={now},v1={},v1={}", v1(old_secret, now, &seed), v1(secret, now, &seed));
    let stale_t = now - DEFAULT_TOLERANCE_SECS - 60;
    let future_t = now + DEFAULT_TOLERANCE_SECS + 60;

    let cases = vec![
        Case {
            name: "seed 003 example",
            body: seed.clone(),
            header: mux::sign(secret, now, seed.as_bytes()),
            secret,
            ours: Ok(()),
            sdk_ok: true,
        },
        Case {
            name: "raw unicode body",
            body: unicode.clone(),
            header: mux::sign(secret, now, unicode.as_bytes()),
            secret,
            ours: Ok(()),
            sdk_ok: true,
        },
        Case {
            name: "rotation, new secret",
            body: seed.clone(),
            header: rotated.clone(),
            secret,
            ours: Ok(()),
            sdk_ok: true,
        },
        Case {
            name: "rotation, old secret",
            body: seed.clone(),
            header: rotated.clone(),
            secret: old_secret,
            ours: Ok(()),
            sdk_ok: true,
        },
        Case {
            name: "tampered body",
            body: seed.replace("\"ready\"", "\"errored\""),
            header: mux::sign(secret, now, seed.as_bytes()),
            secret,
            ours: Err(MuxSignatureError::Mismatch),
            sdk_ok: false,
        },
        Case {
            name: "wrong secret",
            body: seed.clone(),
            header: mux::sign("someone-else", now, seed.as_bytes()),
            secret,
            ours: Err(MuxSignatureError::Mismatch),
            sdk_ok: false,
        },
        Case {
            name: "stale timestamp",
            body: seed.clone(),
            header: mux::sign(secret, stale_t, seed.as_bytes()),
            secret,
            ours: Err(MuxSignatureError::Stale { skew_secs: now - stale_t }),
            sdk_ok: false,
        },
        // A deliberate difference: the SDK only bounds the age, hookline also refuses a
        // timestamp more than 5 minutes in the future (a signature made for later replay).
        Case {
            name: "future timestamp",
            body: seed.clone(),
            header: mux::sign(secret, future_t, seed.as_bytes()),
            secret,
            ours: Err(MuxSignatureError::Stale { skew_secs: now - future_t }),
            sdk_ok: true,
        },
    ];

    // The cases are built around `now`; the node run happens within the tolerance, and ours
    // is checked at the same `now`, so no case depends on timing.
    for c in &cases {
        let ours = mux::verify_signature(&c.header, c.body.as_bytes(), &[c.secret], now, DEFAULT_TOLERANCE_SECS);
        assert_eq!(ours, c.ours, "hookline on case {:?}", c.name);
    }
    let verdicts = sdk_verdicts(&cases);
    for (c, v) in cases.iter().zip(&verdicts) {
        let sdk_ok = v["result"] == "ok";
        assert_eq!(sdk_ok, c.sdk_ok, "@mux/mux-node on case {:?}: {v}", c.name);
        // Where the SDK accepts a current timestamp, hookline accepts too, and vice versa.
        if c.name != "future timestamp" {
            assert_eq!(sdk_ok, c.ours.is_ok(), "hookline and the SDK disagree on case {:?}: {v}", c.name);
        }
    }
}
