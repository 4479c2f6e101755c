//! Cross-check: the reference Python `standardwebhooks` package (PyPI, installed by
//! tests/crosscheck/setup.sh into target/crosscheck/py) verifies the signatures of real
//! deliveries hookline sent, including retries.

use std::io::Write;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::Duration;

use base64::Engine;
use serde_json::json;

use crate::outbound::{create_webhook, http_channel, publish};
use crate::outbound_receiver::Receiver;
use crate::support::{eventually, TestApp};

#[tokio::test]
async fn standardwebhooks_verifies_our_signatures() {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let py = root.join("target/crosscheck/py");
    assert!(
        py.join("standardwebhooks").is_dir(),
        "the Python standardwebhooks package is missing from {}; run tests/crosscheck/setup.sh",
        py.display()
    );
    let app = TestApp::start().await;
    let rx = Receiver::start(200).await;
    rx.then(500, Duration::ZERO); // one retry, so a re-signed attempt is checked too
    let template = r#"{"kind": "{{ event_type }}", "unicode": "héllo ✓"}"#;
    let (_, secret) = create_webhook(
        &app,
        json!({"webhook_name": "xc", "event_types": ["*"], "channels": [
            http_channel(&rx.url("/a")),
            {"channel": "webhook", "configs": {"url": rx.url("/b"), "payload_template": template}}
        ]}),
    )
    .await;
    for i in 0..3 {
        publish(&app, "object.created", json!({"i": i, "text": "naïve \"quoted\" \n"})).await;
    }
    assert!(eventually(Duration::from_secs(15), || async { rx.count() >= 7 }).await, "log:\n{}", app.log());
    let deliveries: Vec<_> = rx
        .captured()
        .iter()
        .map(|c| {
            json!({
                "headers": c.headers,
                "body": base64::engine::general_purpose::STANDARD.encode(&c.body),
            })
        })
        .collect();
    let input = json!({"secret": secret, "deliveries": deliveries}).to_string();
    let mut child = Command::new("python3")
        .arg(root.join("tests/crosscheck/verify_standardwebhooks.py"))
        .env("PYTHONPATH", &py)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run python3");
    child.stdin.take().unwrap().write_all(input.as_bytes()).unwrap();
    let out = child.wait_with_output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "standardwebhooks rejected a delivery: {stdout}{stderr}");
    assert_eq!(stdout.trim(), format!("verified {}", deliveries.len()));
}
