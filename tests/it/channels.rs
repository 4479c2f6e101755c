//! Slack, email and SMS channels, each against a real local server: an HTTP server playing
//! Slack's incoming webhook and the Twilio Messages API, and the Python `aiosmtpd` SMTP server
//! (installed by tests/crosscheck/setup.sh) writing what it receives to a Maildir.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use base64::Engine;
use serde_json::json;

use crate::outbound::{create_webhook, deliveries, publish};
use crate::outbound_receiver::Receiver;
use crate::support::{eventually, Options, TestApp};

const WAIT: Duration = Duration::from_secs(20);

fn dev_delivery(extra: &str) -> Options {
    Options {
        delivery_toml: Some(format!(
            "[delivery]\nallow_insecure_http = true\nallow_private_networks = true\nrequest_timeout_seconds = 2\nmax_age_hours = 1\nretry_schedule_seconds = [1, 1, 2]\n\n{extra}"
        )),
        ..Options::default()
    }
}

#[tokio::test]
async fn slack_gets_text_or_a_whole_block_kit_payload_and_its_url_stays_secret() {
    let slack = Receiver::start(200).await;
    let app = TestApp::start().await;
    let url = slack.url("/services/T000/B000/very-secret-token");
    let (plain, _) = create_webhook(
        &app,
        json!({"webhook_name": "team", "event_types": ["object.created"], "channels": [
            {"channel": "slack", "configs": {"webhook_url": url}}]}),
    )
    .await;
    create_webhook(
        &app,
        json!({"webhook_name": "blocks", "event_types": ["batch.completed"], "channels": [
            {"channel": "slack", "configs": {"webhook_url": slack.url("/services/blocks"),
             "template": "{\"blocks\": [{\"type\": \"section\", \"text\": {\"type\": \"mrkdwn\", \"text\": \"{{ payload.batch_id }} done\"}}]}"}}]}),
    )
    .await;

    // The URL is a credential: shown without its path, never in full again.
    let (s, got) = app.get(&format!("/v1/organizations/webhooks/{plain}")).await;
    assert_eq!(s, 200);
    let shown = got["channels"][0]["configs"]["webhook_url"].as_str().unwrap().to_string();
    assert!(!shown.contains("very-secret-token") && shown.ends_with("/********"), "{shown}");

    // A first failure is retried like any channel's.
    slack.then(500, Duration::ZERO);
    let evt = publish(&app, "object.created", json!({"object_id": "obj_1"})).await;
    assert!(eventually(WAIT, || async { slack.count() >= 2 }).await, "slack retried");
    let first = &slack.captured()[1];
    assert_eq!(first.path, "/services/T000/B000/very-secret-token");
    let text = first.json()["text"].as_str().unwrap_or_default().to_string();
    assert!(text.contains("*object.created*") && text.contains(&evt) && text.contains("\"obj_1\""), "{text}");
    assert!(
        eventually(WAIT, || async {
            deliveries(&app, &plain, Some("succeeded"))
                .await
                .first()
                .is_some_and(|d| d["attempts"].as_array().unwrap().len() == 2)
        })
        .await
    );

    publish(&app, "batch.completed", json!({"batch_id": "bat_7"})).await;
    assert!(eventually(WAIT, || async { slack.captured().iter().any(|c| c.path == "/services/blocks") }).await);
    let sent = slack.captured().into_iter().find(|c| c.path == "/services/blocks").unwrap();
    assert_eq!(sent.json()["blocks"][0]["text"]["text"], "bat_7 done", "a JSON object template is the whole payload");
    assert!(sent.json().get("text").is_none());

    // GET → edit → PATCH with the redacted URL keeps the stored one; a made-up one is refused.
    let mut channels = got["channels"].clone();
    let (s, b) = app
        .patch(
            &format!("/v1/organizations/webhooks/{plain}"),
            json!({"webhook_name": "renamed", "channels": channels.clone()}),
        )
        .await;
    assert_eq!(s, 200, "{b}");
    let before = slack.count();
    publish(&app, "object.created", json!({"object_id": "obj_2"})).await;
    assert!(eventually(WAIT, || async { slack.count() > before }).await);
    assert_eq!(slack.captured().last().unwrap().path, "/services/T000/B000/very-secret-token");
    channels[0]["configs"]["webhook_url"] = json!("https://elsewhere.example.com/********");
    let (s, b) = app.patch(&format!("/v1/organizations/webhooks/{plain}"), json!({"channels": channels})).await;
    assert_eq!(s, 422, "{b}");
    assert_eq!(b["error"]["field"], "channels[0].configs.webhook_url");
}

#[tokio::test]
async fn sms_texts_every_number_through_a_twilio_compatible_api() {
    let api = Receiver::start(201).await;
    // The auth token comes from the environment (the config file has none).
    let app = TestApp::start_with(Options {
        env: vec![("HOOKLINE_SMS_AUTH_TOKEN".into(), "tok-123".into())],
        ..dev_delivery(&format!(
            "[delivery.sms]\napi_base = \"{}\"\naccount_sid = \"AC123\"\nfrom = \"+15550001111\"\n",
            api.url("")
        ))
    })
    .await;

    let (s, b) = app
        .post(
            "/v1/organizations/webhooks",
            json!({"webhook_name": "x", "event_types": ["*"], "channels": [{"channel": "sms", "configs": {"to": ["555-1234"]}}]}),
        )
        .await;
    assert_eq!(s, 422, "{b}");
    assert_eq!(b["error"]["field"], "channels[0].configs.to[0]");

    let (wh, _) = create_webhook(
        &app,
        json!({"webhook_name": "oncall", "event_types": ["object.deleted"], "channels": [
            {"channel": "sms", "configs": {"to": ["+15550002222", "+15550003333"],
             "template": "{{ event_type }}: {{ payload.object_id }}"}}]}),
    )
    .await;
    // The second number fails once: the attempt fails, and the retry texts both again.
    api.then(201, Duration::ZERO);
    api.then(400, Duration::ZERO);
    publish(&app, "object.deleted", json!({"object_id": "obj_9"})).await;
    assert!(eventually(WAIT, || async { api.count() >= 4 }).await, "retried after the failure");
    let sent = api.captured();
    let auth = format!("Basic {}", base64::engine::general_purpose::STANDARD.encode("AC123:tok-123"));
    for c in &sent {
        assert_eq!(c.path, "/2010-04-01/Accounts/AC123/Messages.json");
        assert_eq!(c.header("authorization"), Some(auth.as_str()));
        assert_eq!(c.header("content-type"), Some("application/x-www-form-urlencoded"));
    }
    let form =
        |i: usize| -> Vec<(String, String)> { url::form_urlencoded::parse(&sent[i].body).into_owned().collect() };
    let to: Vec<String> = (0..4).map(|i| form(i).into_iter().find(|(k, _)| k == "To").unwrap().1).collect();
    assert_eq!(to, ["+15550002222", "+15550003333", "+15550002222", "+15550003333"]);
    assert!(form(0).contains(&("From".into(), "+15550001111".into())));
    assert!(form(0).contains(&("Body".into(), "object.deleted: obj_9".into())));
    assert!(
        eventually(WAIT, || async {
            deliveries(&app, &wh, Some("succeeded")).await.first().is_some_and(|d| {
                let a = d["attempts"].as_array().unwrap();
                a.len() == 2
                    && a[0]["error"].as_str().unwrap_or("").contains("to +15550003333 (after 1 of 2 sent): HTTP 400")
            })
        })
        .await,
        "{:?}",
        deliveries(&app, &wh, None).await
    );
}

/// aiosmtpd on a free 127.0.0.1 port, delivering into a Maildir.
struct Smtp {
    child: Child,
    port: u16,
    maildir: PathBuf,
}

impl Smtp {
    fn start(port: u16, maildir: &Path) -> Smtp {
        let root = Path::new(env!("CARGO_MANIFEST_DIR"));
        let py = root.join("target/crosscheck/py");
        assert!(
            py.join("aiosmtpd").exists(),
            "aiosmtpd is missing from {}; run tests/crosscheck/setup.sh",
            py.display()
        );
        let child = Command::new("python3")
            .args(["-m", "aiosmtpd", "-n", "-l", &format!("127.0.0.1:{port}"), "-c", "aiosmtpd.handlers.Mailbox"])
            .arg(maildir)
            .env("PYTHONPATH", &py)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start aiosmtpd");
        Smtp { child, port, maildir: maildir.to_path_buf() }
    }

    async fn wait_listening(&self) {
        let port = self.port;
        let up = eventually(Duration::from_secs(15), || async move {
            tokio::net::TcpStream::connect(("127.0.0.1", port)).await.is_ok()
        })
        .await;
        assert!(up, "aiosmtpd did not listen on {port}");
    }

    /// Every message received so far (raw RFC 5322 text).
    fn messages(&self) -> Vec<String> {
        let Ok(dir) = std::fs::read_dir(self.maildir.join("new")) else { return Vec::new() };
        dir.filter_map(|e| std::fs::read_to_string(e.ok()?.path()).ok()).collect()
    }

    fn stop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Smtp {
    fn drop(&mut self) {
        self.stop();
    }
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

#[tokio::test]
async fn email_goes_through_smtp_and_a_retry_keeps_its_message_id() {
    let tmp = tempfile::tempdir().unwrap();
    let port = free_port();
    let app = TestApp::start_with(dev_delivery(&format!(
        "[delivery.email]\nsmtp_host = \"127.0.0.1\"\nsmtp_port = {port}\ntls = \"none\"\nfrom = \"hookline <alerts@example.com>\"\ntimeout_seconds = 2\n"
    )))
    .await;

    let (s, b) = app
        .post(
            "/v1/organizations/webhooks",
            json!({"webhook_name": "x", "event_types": ["*"], "channels": [{"channel": "email", "configs": {"to": ["ops@example.com", "nope"]}}]}),
        )
        .await;
    assert_eq!(s, 422, "{b}");
    assert_eq!(b["error"]["field"], "channels[0].configs.to[1]");

    let (wh, _) = create_webhook(
        &app,
        json!({"webhook_name": "ops mail", "event_types": ["batch.*"], "channels": [
            {"channel": "email", "configs": {"to": ["ops@example.com", "Lead <lead@example.com>"],
             "subject_template": "Batch {{ payload.batch_id }}: {{ event_type }}"}}]}),
    )
    .await;

    // No SMTP server yet: the attempt fails and is retried; then the server comes up.
    let evt = publish(&app, "batch.completed", json!({"batch_id": "bat_42", "objects": 3})).await;
    assert!(
        eventually(WAIT, || async {
            deliveries(&app, &wh, None).await.first().is_some_and(|d| {
                d["attempts"]
                    .as_array()
                    .is_some_and(|a| a.first().is_some_and(|x| x["error"].as_str().unwrap_or("").starts_with("smtp")))
            })
        })
        .await,
        "a failed SMTP attempt is logged: {:?}",
        deliveries(&app, &wh, None).await
    );
    let smtp = Smtp::start(port, &tmp.path().join("mail"));
    smtp.wait_listening().await;
    assert!(eventually(WAIT, || async { !smtp.messages().is_empty() }).await, "mail arrives after the retry");
    assert!(eventually(WAIT, || async { !deliveries(&app, &wh, Some("succeeded")).await.is_empty() }).await);
    let d = deliveries(&app, &wh, Some("succeeded")).await.remove(0);
    let attempts = d["attempts"].as_array().unwrap();
    assert_eq!(attempts.last().unwrap()["status_code"], 250, "{d}");

    let mail = smtp.messages().remove(0);
    let delivery_id = d["delivery_id"].as_str().unwrap();
    assert!(mail.contains("Subject: Batch bat_42: batch.completed"), "{mail}");
    assert!(mail.contains(&format!("Message-ID: <{delivery_id}@hookline>")), "{mail}");
    assert!(mail.contains("From: hookline <alerts@example.com>"), "{mail}");
    assert!(mail.contains("X-RcptTo: ops@example.com, lead@example.com"), "{mail}");
    assert!(mail.contains(&evt) && mail.contains("\"batch_id\": \"bat_42\""), "default body has the event: {mail}");
    assert!(app.metrics().await.contains("channel=\"email\""), "email deliveries are counted");
}

#[tokio::test]
async fn email_and_sms_need_their_provider_configured() {
    let app = TestApp::start().await;
    for (channel, configs) in [("email", json!({"to": ["a@example.com"]})), ("sms", json!({"to": ["+15550001111"]}))] {
        let (s, b) = app
            .post(
                "/v1/organizations/webhooks",
                json!({"webhook_name": "x", "event_types": ["*"], "channels": [{"channel": channel, "configs": configs}]}),
            )
            .await;
        assert_eq!(s, 422, "{b}");
        let msg = b["error"]["message"].as_str().unwrap_or_default();
        assert!(msg.contains(&format!("[delivery.{channel}]")), "{msg}");
    }
}
