//! Slack, email and SMS channels, each against a real local server: an HTTP server playing
//! Slack's incoming webhook and the Twilio Messages API, and the Python `aiosmtpd` SMTP server
//! (installed by tests/crosscheck/setup.sh, run by tests/crosscheck/smtp_server.py) writing
//! what it accepts to a Maildir.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use base64::Engine;
use serde_json::json;

use crate::outbound::{create_webhook, deliveries, failed_attempt_recorded, publish};
use crate::outbound_receiver::Receiver;
use crate::support::{eventually, stored_entries, Options, TestApp};

const WAIT: Duration = Duration::from_secs(20);

fn delivery_toml(extra: &str) -> String {
    format!(
        "[delivery]\nallow_insecure_http = true\nallow_private_networks = true\nrequest_timeout_seconds = 2\nmax_age_hours = 1\nretry_schedule_seconds = [1, 1, 2]\n\n{extra}"
    )
}

fn dev_delivery(extra: &str) -> Options {
    Options { delivery_toml: Some(delivery_toml(extra)), ..Options::default() }
}

fn sms_section(api: &Receiver) -> String {
    format!("[delivery.sms]\napi_base = \"{}\"\naccount_sid = \"AC123\"\nfrom = \"+15550001111\"\n", api.url(""))
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
             "template": "{\"blocks\": [{\"type\": \"section\", \"text\": {\"type\": \"mrkdwn\", \"text\": {{ (payload.batch_id ~ ' done') | tojson }}}}]}"}}]}),
    )
    .await;

    // The URL is a credential: shown without its path, never in full again.
    let (s, got) = app.get(&format!("/v1/organizations/webhooks/{plain}")).await;
    assert_eq!(s, 200);
    let shown = got["channels"][0]["configs"]["webhook_url"].as_str().unwrap().to_string();
    assert!(!shown.contains("very-secret-token") && shown.contains("/********-"), "{shown}");

    // A first failure is retried like any channel's.
    slack.then(500, Duration::ZERO);
    // The payload is an upstream's text: its markup is shown, not acted on (see below).
    let title = "```\n<!channel> log in at <https://evil.example/x|https://slack.com> & `now` ```";
    let evt = publish(&app, "object.created", json!({"object_id": "obj_1", "title": title})).await;
    assert!(eventually(WAIT, || async { slack.count() >= 2 }).await, "slack retried");
    let first = &slack.captured()[1];
    assert_eq!(first.path, "/services/T000/B000/very-secret-token");
    // The failure's answer echoed the URL: the error shows it hidden, as the API does.
    let failed = deliveries(&app, &plain, None).await;
    let error = failed.first().and_then(|d| d["attempts"][0]["error"].as_str()).unwrap_or_default().to_string();
    assert_eq!(error, "HTTP 500: receiver says no to ********", "{failed:?}");
    let text = first.json()["text"].as_str().unwrap_or_default().to_string();
    assert!(text.contains("*object.created*") && text.contains(&evt) && text.contains("\"obj_1\""), "{text}");
    let block = text.split_once("```").and_then(|(_, b)| b.strip_suffix("```")).unwrap_or_default();
    assert!(!block.contains(['`', '<', '>']), "{text}");
    let shown = block.replace("&lt;", "<").replace("&gt;", ">").replace("&amp;", "&");
    assert_eq!(serde_json::from_str::<serde_json::Value>(&shown).unwrap()["title"], title, "{text}");
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

    // A JSON template must render a JSON object (checked on a sample event); `{{` opens text.
    let (s, b) = app
        .post(
            "/v1/organizations/webhooks",
            json!({"webhook_name": "bad", "event_types": ["*"], "channels": [{"channel": "slack", "configs": {
                "webhook_url": slack.url("/x"), "template": "{\"text\": \"{{ event_type }}\""}}]}),
        )
        .await;
    assert_eq!(s, 422, "{b}");
    assert_eq!(b["error"]["field"], "channels[0].configs.template");
    let (s, b) = app
        .post(
            "/v1/organizations/webhooks",
            json!({"webhook_name": "text", "event_types": ["nothing.here"], "channels": [{"channel": "slack", "configs": {
                "webhook_url": slack.url("/x"), "template": "{{ event_type }}: {\"not\": json"}}]}),
        )
        .await;
    assert_eq!(s, 201, "a template starting with {{{{ is text: {b}");

    // The redacted form is not a URL to create a webhook with.
    let (s, b) = app
        .post(
            "/v1/organizations/webhooks",
            json!({"webhook_name": "copy", "event_types": ["*"], "channels": [got["channels"][0].clone()]}),
        )
        .await;
    assert_eq!(s, 422, "{b}");
    assert_eq!(b["error"]["field"], "channels[0].configs.webhook_url");

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
    // Two Slack channels show differently; dropping the first keeps the second's URL.
    let (two, _) = create_webhook(
        &app,
        json!({"webhook_name": "two", "event_types": ["batch.failed"], "channels": [
            {"channel": "slack", "configs": {"webhook_url": slack.url("/services/T1/B1/first")}},
            {"channel": "slack", "configs": {"webhook_url": slack.url("/services/T1/B2/second")}}]}),
    )
    .await;
    let (_, shown) = app.get(&format!("/v1/organizations/webhooks/{two}")).await;
    assert_ne!(shown["channels"][0]["configs"]["webhook_url"], shown["channels"][1]["configs"]["webhook_url"]);
    let (s, b) = app
        .patch(&format!("/v1/organizations/webhooks/{two}"), json!({"channels": [shown["channels"][1].clone()]}))
        .await;
    assert_eq!(s, 200, "{b}");
    publish(&app, "batch.failed", json!({})).await;
    assert!(eventually(WAIT, || async { slack.captured().iter().any(|c| c.path.starts_with("/services/T1/")) }).await);
    let paths: Vec<String> =
        slack.captured().iter().filter(|c| c.path.starts_with("/services/T1/")).map(|c| c.path.clone()).collect();
    assert_eq!(paths, ["/services/T1/B2/second"]);

    channels[0]["configs"]["webhook_url"] = json!("https://elsewhere.example.com/********");
    let (s, b) = app.patch(&format!("/v1/organizations/webhooks/{plain}"), json!({"channels": channels})).await;
    assert_eq!(s, 422, "{b}");
    assert_eq!(b["error"]["field"], "channels[0].configs.webhook_url");
    assert!(b["error"]["message"].as_str().unwrap_or_default().contains("not the one stored for this channel"), "{b}");
}

/// A JSON template whose values were missing (`{"text": null}`) gives Slack nothing to show,
/// which it refuses: the delivery is dead at once with the reason, as a blank text's is,
/// and nothing is sent; the same template with the value is sent.
#[tokio::test]
async fn a_slack_json_message_with_nothing_to_show_is_not_sent() {
    let slack = Receiver::start(200).await;
    let app = TestApp::start().await;
    let (wh, _) = create_webhook(
        &app,
        json!({"webhook_name": "json", "event_types": ["note.*"], "channels": [
            {"channel": "slack", "configs": {"webhook_url": slack.url("/services/json"),
             "template": "{\"text\": {{ payload.t | tojson }}}"}}]}),
    )
    .await;
    publish(&app, "note.blank", json!({})).await;
    assert!(eventually(WAIT, || async { !deliveries(&app, &wh, Some("dead")).await.is_empty() }).await, "not dead");
    let dead = deliveries(&app, &wh, Some("dead")).await;
    let error = dead[0]["attempts"][0]["error"].as_str().unwrap_or_default();
    assert!(error.contains("text is null or blank"), "{dead:?}");
    publish(&app, "note.said", json!({"t": "hello"})).await;
    assert!(eventually(WAIT, || async { slack.count() == 1 }).await, "the message with a text is sent");
    assert_eq!(slack.captured()[0].json(), json!({"text": "hello"}), "only it");
}

#[tokio::test]
async fn sms_texts_every_number_through_a_twilio_compatible_api() {
    let api = Receiver::start(201).await;
    // The auth token comes from the environment (the config file has none).
    let app = TestApp::start_with(Options {
        env: vec![("HOOKLINE_SMS_AUTH_TOKEN".into(), "tok-123".into())],
        ..dev_delivery(&sms_section(&api))
    })
    .await;

    for (to, field) in [
        (json!(["555-1234"]), "channels[0].configs.to[0]"),
        (json!(["+15550002222", "+15550002222"]), "channels[0].configs.to[1]"),
        (json!(["+015551234567"]), "channels[0].configs.to[0]"),
    ] {
        let (s, b) = app
            .post(
                "/v1/organizations/webhooks",
                json!({"webhook_name": "x", "event_types": ["*"], "channels": [{"channel": "sms", "configs": {"to": to}}]}),
            )
            .await;
        assert_eq!(s, 422, "{b}");
        assert_eq!(b["error"]["field"], field);
    }

    let (wh, _) = create_webhook(
        &app,
        json!({"webhook_name": "oncall", "event_types": ["object.deleted"], "channels": [
            {"channel": "sms", "configs": {"to": ["+15550002222", "+15550003333"],
             "template": "{{ webhook_name }} {{ event_type }}: {{ payload.object_id }}"}}]}),
    )
    .await;
    // The second number fails once: the attempt fails, and the retry texts only that one.
    api.then(201, Duration::ZERO);
    api.then(400, Duration::ZERO);
    publish(&app, "object.deleted", json!({"object_id": "obj_9"})).await;
    assert!(eventually(WAIT, || async { api.count() >= 3 }).await, "retried after the failure");
    let sent = api.captured();
    let auth = format!("Basic {}", base64::engine::general_purpose::STANDARD.encode("AC123:tok-123"));
    for c in &sent {
        assert_eq!(c.path, "/2010-04-01/Accounts/AC123/Messages.json");
        assert_eq!(c.header("authorization"), Some(auth.as_str()));
        assert_eq!(c.header("content-type"), Some("application/x-www-form-urlencoded"));
        assert!(c.header("user-agent").is_some_and(|ua| ua.starts_with("hookline/")));
    }
    let form =
        |i: usize| -> Vec<(String, String)> { url::form_urlencoded::parse(&sent[i].body).into_owned().collect() };
    let to: Vec<String> = (0..sent.len()).map(|i| form(i).into_iter().find(|(k, _)| k == "To").unwrap().1).collect();
    assert_eq!(to, ["+15550002222", "+15550003333", "+15550003333"], "the reached number is not texted again");
    assert!(form(0).contains(&("From".into(), "+15550001111".into())));
    assert!(form(0).contains(&("Body".into(), "oncall object.deleted: obj_9".into())), "{:?}", form(0));
    assert!(
        eventually(WAIT, || async {
            deliveries(&app, &wh, Some("succeeded")).await.first().is_some_and(|d| {
                let a = d["attempts"].as_array().unwrap();
                a.len() == 2
                    && a[0]["error"].as_str().unwrap_or("").contains("1 of 2 numbers failed; to +15550003333: HTTP 400")
            })
        })
        .await,
        "{:?}",
        deliveries(&app, &wh, None).await
    );
}

/// An SMS provider that does not answer in time fails the whole attempt once: each other
/// number would wait as long again. They are "not tried", and the retry texts them all.
#[tokio::test]
async fn an_sms_provider_that_does_not_answer_is_tried_once_per_attempt() {
    let api = Receiver::start(201).await;
    let app = TestApp::start_with(Options {
        env: vec![("HOOKLINE_SMS_AUTH_TOKEN".into(), "tok-123".into())],
        ..dev_delivery(&format!("{}timeout_seconds = 1\n", sms_section(&api)))
    })
    .await;
    let (wh, _) = create_webhook(
        &app,
        json!({"webhook_name": "oncall", "event_types": ["*"], "channels": [
            {"channel": "sms", "configs": {"to": ["+15550002222", "+15550003333", "+15550004444"]}}]}),
    )
    .await;
    api.then(201, Duration::from_secs(3));
    publish(&app, "object.deleted", json!({"object_id": "obj_9"})).await;
    let done = || async { deliveries(&app, &wh, Some("succeeded")).await.len() == 1 };
    assert!(eventually(WAIT, done).await, "{:?}", deliveries(&app, &wh, None).await);
    let d = &deliveries(&app, &wh, None).await[0];
    let first = d["attempts"][0]["error"].as_str().unwrap_or_default();
    assert!(first.starts_with("1 of 3 numbers failed; to +15550002222: timed out after 1.0s"), "{d}");
    assert!(first.ends_with("2 not tried (the provider did not answer in time: sent on the retry)"), "{d}");
    assert_eq!(api.count(), 4, "one try, then the three numbers on the retry");
}

/// aiosmtpd on a free 127.0.0.1 port (it binds port 0 and prints the port), storing what it
/// accepts in a Maildir; the first `reject_first` messages get a transient 451.
struct Smtp {
    child: Child,
    port: u16,
    maildir: PathBuf,
}

impl Smtp {
    fn start(maildir: &Path, reject_first: u32) -> Smtp {
        let root = Path::new(env!("CARGO_MANIFEST_DIR"));
        let py = root.join("target/crosscheck/py");
        assert!(
            py.join("aiosmtpd").exists(),
            "aiosmtpd is missing from {}; run tests/crosscheck/setup.sh",
            py.display()
        );
        let mut child = Command::new("python3")
            .arg(root.join("tests/crosscheck/smtp_server.py"))
            .arg(maildir)
            .arg(reject_first.to_string())
            .env("PYTHONPATH", &py)
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start aiosmtpd");
        let mut line = String::new();
        let stdout = child.stdout.take().expect("stdout");
        BufReader::new(stdout).read_line(&mut line).expect("read the SMTP port");
        let port = line.trim().parse().unwrap_or_else(|_| panic!("aiosmtpd did not start (printed {line:?})"));
        Smtp { child, port, maildir: maildir.to_path_buf() }
    }

    /// Every message accepted so far (raw RFC 5322 text).
    fn messages(&self) -> Vec<String> {
        let Ok(dir) = std::fs::read_dir(self.maildir.join("new")) else { return Vec::new() };
        dir.filter_map(|e| std::fs::read_to_string(e.ok()?.path()).ok()).collect()
    }
}

impl Drop for Smtp {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The three numbers the shutdown tests text.
const NUMBERS: [&str; 3] = ["+15550000001", "+15550000002", "+15550000003"];

/// An SMS provider, a daemon (its `[server]` settings `server`) whose retries are an hour
/// apart (so the numbers not tried go out as soon as it is back, not at a retry: a cut
/// attempt is no failure), and a webhook texting [`NUMBERS`]: the provider, the daemon and
/// the webhook's ID.
async fn texting_three_numbers(server: &str) -> (Receiver, TestApp, String) {
    texting_three_numbers_with(server, "retry_schedule_seconds = [3600]\n").await
}

/// [`texting_three_numbers`] with these `[delivery]` settings (besides the loopback ones).
async fn texting_three_numbers_with(server: &str, delivery: &str) -> (Receiver, TestApp, String) {
    let api = Receiver::start(201).await;
    let delivery = format!(
        "[delivery]\nallow_insecure_http = true\nallow_private_networks = true\n{delivery}\n{}",
        sms_section(&api)
    );
    let app = TestApp::start_with(Options {
        env: vec![("HOOKLINE_SMS_AUTH_TOKEN".into(), "tok-123".into())],
        delivery_toml: Some(delivery),
        server_toml: server.into(),
        ..Options::default()
    })
    .await;
    let (wh, _) = create_webhook(
        &app,
        json!({"webhook_name": "oncall", "event_types": ["*"],
            "channels": [{"channel": "sms", "configs": {"to": NUMBERS}}]}),
    )
    .await;
    (api, app, wh)
}

/// A shutdown during an SMS attempt to several numbers starts no send to the next one: the
/// attempt ends within the grace, the number it reached recorded, and the restart texts
/// only the others, so each number gets the text once. The attempt is logged, but a
/// shutdown says nothing of the provider: it is not the webhook's `last_error`.
// Multi-threaded: the receiver must answer while this thread waits for the daemon's exit.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_shutdown_mid_attempt_texts_each_number_once() {
    let (api, mut app, wh) = texting_three_numbers("").await;
    // The provider takes 2 s over the first number: the shutdown comes meanwhile.
    api.then(201, Duration::from_secs(2));
    publish(&app, "object.deleted", json!({"object_id": "obj_1"})).await;
    assert!(eventually(WAIT, || async { api.count() == 1 }).await);
    assert_eq!(app.stop(), Some(0), "{}", app.log());
    assert_eq!(api.count(), 1, "a send started after the shutdown signal");
    // As stored at the stop (after the restart, the retry's success would hide it).
    let sled = app.stopped_sled().await;
    let stored = |ks: &str, prefix: &str| -> Vec<serde_json::Value> {
        let entries = stored_entries(&sled, ks, prefix);
        entries.into_iter().map(|(_, v)| serde_json::from_slice(&v).expect("a stored record")).collect()
    };
    let (webhook, dl) = (stored("wh", &wh), stored("dlv", &format!("{wh}/")));
    drop(sled);
    assert_eq!(dl.len(), 1, "{dl:?}");
    let error = dl[0]["attempts"][0]["error"].as_str().unwrap_or_default();
    assert!(error.contains("2 number(s) not tried or cut off: hookline was shutting down"), "{dl:?}");
    assert_eq!(webhook.len(), 1);
    assert!(webhook[0]["last_error"].is_null(), "a shutdown made the webhook's last_error: {}", webhook[0]);
    app.start_again().await;
    assert!(eventually(WAIT, || async { !deliveries(&app, &wh, Some("succeeded")).await.is_empty() }).await);
    let texted: Vec<String> = api.captured().iter().map(|c| String::from_utf8_lossy(&c.body).to_string()).collect();
    for n in NUMBERS {
        let to = format!("To={}", n.replace('+', "%2B"));
        assert_eq!(texted.iter().filter(|b| b.contains(&to)).count(), 1, "{n}: {texted:?}");
    }
}

/// An SMS attempt that runs past `delivery.max_attempt_seconds` starts no send to its next
/// number: the rest go in the next attempt, at once (not an hour later, as a failure's retry
/// would here), each number is texted once, and the cut is no failure: not the webhook's
/// `last_error`.
#[tokio::test]
async fn an_attempt_out_of_time_leaves_the_rest_to_the_next_at_once() {
    let (api, app, wh) =
        texting_three_numbers_with("", "retry_schedule_seconds = [3600]\nmax_attempt_seconds = 2\n").await;
    // 1.5 s a number: the second starts within the 2 s, the third would start past them.
    api.then(201, Duration::from_millis(1500));
    api.then(201, Duration::from_millis(1500));
    publish(&app, "object.deleted", json!({"object_id": "obj_1"})).await;
    assert!(eventually(WAIT, || async { !deliveries(&app, &wh, Some("succeeded")).await.is_empty() }).await);
    let d = deliveries(&app, &wh, Some("succeeded")).await.remove(0);
    let attempts = d["attempts"].as_array().cloned().unwrap_or_default();
    assert_eq!(attempts.len(), 2, "{d}");
    let first = attempts[0]["error"].as_str().unwrap_or_default();
    assert!(first.contains("1 number(s) not tried: the attempt ran for 2 s (delivery.max_attempt_seconds)"), "{d}");
    let texted: Vec<String> = api.captured().iter().map(|c| String::from_utf8_lossy(&c.body).to_string()).collect();
    let times = |n: &str| texted.iter().filter(|b| b.contains(&format!("To={}", n.replace('+', "%2B")))).count();
    assert_eq!(NUMBERS.map(times), [1, 1, 1], "{texted:?}");
    let (_, w) = app.get(&format!("/v1/organizations/webhooks/{wh}")).await;
    assert!(w["last_error"].is_null(), "{w}");
}

/// A number whose text fails slowly (a 5xx after longer than `delivery.max_attempt_seconds`)
/// does not hold back the numbers after it: the attempt's time counts only once it reached
/// someone, so every attempt tries them (the rest would otherwise wait behind the same first
/// number in every attempt, until the delivery is dead).
#[tokio::test]
async fn a_slowly_failing_number_does_not_starve_the_numbers_after_it() {
    let (api, app, wh) =
        texting_three_numbers_with("", "retry_schedule_seconds = [1, 1, 1, 1, 1, 1]\nmax_attempt_seconds = 1\n").await;
    // The first number's text fails after 1.2 s, in each of the next attempts too.
    for _ in 0..6 {
        api.then(500, Duration::from_millis(1200));
    }
    publish(&app, "object.deleted", json!({"object_id": "obj_1"})).await;
    let attempts = || async {
        deliveries(&app, &wh, None).await.first().and_then(|d| d["attempts"].as_array().map(Vec::len)).unwrap_or(0)
    };
    assert!(eventually(WAIT, || async { attempts().await >= 3 }).await, "{:?}", deliveries(&app, &wh, None).await);
    let texted: Vec<String> = api.captured().iter().map(|c| String::from_utf8_lossy(&c.body).to_string()).collect();
    let times = |n: &str| texted.iter().filter(|b| b.contains(&format!("To={}", n.replace('+', "%2B")))).count();
    assert!(
        times(NUMBERS[1]) >= 1 && times(NUMBERS[2]) >= 1,
        "after 3 attempts the 2nd and 3rd numbers were never texted: {:?}; {:?}",
        NUMBERS.map(times),
        deliveries(&app, &wh, None).await
    );
}

/// A shutdown whose grace runs out while the provider holds a number's text cuts that send
/// off, but the attempt keeps the number it had reached: after the restart that one is not
/// texted again; the cut-off one and the one never tried are.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_send_cut_off_mid_attempt_keeps_the_numbers_it_reached() {
    let (api, mut app, wh) = texting_three_numbers("shutdown_timeout_seconds = 2\n").await;
    // The first number at once; the provider holds the second past the grace.
    api.then(201, Duration::ZERO);
    api.then(201, Duration::from_secs(60));
    publish(&app, "object.deleted", json!({"object_id": "obj_1"})).await;
    assert!(eventually(WAIT, || async { api.count() == 2 }).await);
    assert_eq!(app.stop(), Some(0), "{}", app.log());
    app.start_again().await;
    assert!(eventually(WAIT, || async { !deliveries(&app, &wh, Some("succeeded")).await.is_empty() }).await);
    let texted: Vec<String> = api.captured().iter().map(|c| String::from_utf8_lossy(&c.body).to_string()).collect();
    let times = |n: &str| texted.iter().filter(|b| b.contains(&format!("To={}", n.replace('+', "%2B")))).count();
    assert_eq!(NUMBERS.map(times), [1, 2, 1], "{texted:?}");
    let d = deliveries(&app, &wh, Some("succeeded")).await.remove(0);
    let first = d["attempts"][0]["error"].as_str().unwrap_or_default();
    assert!(first.contains("2 number(s) not tried or cut off: hookline was shutting down"), "{d}");
}

#[tokio::test]
async fn email_goes_through_smtp_and_a_retry_keeps_its_message_id() {
    let tmp = tempfile::tempdir().unwrap();
    // The relay refuses the first message with a transient 451: the attempt fails and is
    // retried on the schedule.
    let smtp = Smtp::start(&tmp.path().join("mail"), 1);
    let app = TestApp::start_with(dev_delivery(&format!(
        "[delivery.email]\nsmtp_host = \"127.0.0.1\"\nsmtp_port = {}\ntls = \"none\"\nfrom = \"hookline <alerts@example.com>\"\ntimeout_seconds = 5\n",
        smtp.port
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
    // The same address twice (whatever its display name or case) would get it twice.
    let (s, b) = app
        .post(
            "/v1/organizations/webhooks",
            json!({"webhook_name": "x", "event_types": ["*"], "channels": [{"channel": "email", "configs": {"to": ["ops@example.com", "Ops <OPS@example.com>"]}}]}),
        )
        .await;
    assert_eq!((s, b["error"]["field"].as_str()), (422, Some("channels[0].configs.to[1]")), "{b}");
    // A domain without a dot is a mistyped one (every message would bounce).
    let (s, b) = app
        .post(
            "/v1/organizations/webhooks",
            json!({"webhook_name": "x", "event_types": ["*"], "channels": [{"channel": "email", "configs": {"to": ["ops@example.com", "Ops <ops@example>"]}}]}),
        )
        .await;
    assert_eq!((s, b["error"]["field"].as_str()), (422, Some("channels[0].configs.to[1]")), "{b}");
    assert!(b["error"]["message"].as_str().unwrap().contains("has no dot"), "{b}");
    // An IP address without the brackets of an address literal is not a domain.
    let (s, b) = app
        .post(
            "/v1/organizations/webhooks",
            json!({"webhook_name": "x", "event_types": ["*"], "channels": [{"channel": "email", "configs": {"to": ["a@1.2.3.4"]}}]}),
        )
        .await;
    assert_eq!((s, b["error"]["field"].as_str()), (422, Some("channels[0].configs.to[0]")), "{b}");
    assert!(b["error"]["message"].as_str().unwrap().contains("IP address"), "{b}");

    let (wh, _) = create_webhook(
        &app,
        json!({"webhook_name": "ops mail", "event_types": ["batch.*"], "channels": [
            {"channel": "email", "configs": {"to": ["ops@example.com", "Lead <lead@example.com>"],
             "subject_template": "Batch {{ payload.batch_id }}: {{ event_type }}"}}]}),
    )
    .await;
    let evt = publish(&app, "batch.completed", json!({"batch_id": "bat_42", "objects": 3})).await;
    assert!(eventually(WAIT, || async { !deliveries(&app, &wh, Some("succeeded")).await.is_empty() }).await);
    let d = deliveries(&app, &wh, Some("succeeded")).await.remove(0);
    let attempts = d["attempts"].as_array().unwrap();
    assert_eq!(attempts.len(), 2, "{d}");
    // Each address has its own message: the relay refused the first (ops), not lead's.
    assert_eq!(attempts[0]["status_code"], 451, "{d}");
    let error = attempts[0]["error"].as_str().unwrap_or("");
    assert!(error.starts_with("1 of 2 addresses failed; to ops@example.com: smtp: "), "{d}");
    assert_eq!(attempts[1]["status_code"], 250, "{d}");

    let mails = smtp.messages();
    assert_eq!(mails.len(), 2, "one accepted message per address, none twice: {mails:?}");
    let delivery_id = d["delivery_id"].as_str().unwrap();
    let mut ids = std::collections::HashSet::new();
    for (to, other) in [("lead@example.com", "ops@example.com"), ("ops@example.com", "lead@example.com")] {
        let mail = mails.iter().find(|m| m.contains(&format!("X-RcptTo: {to}"))).expect("a message for each address");
        assert!(!mail.contains(other), "its own message, its own To: {mail}");
        assert!(mail.contains("Subject: Batch bat_42: batch.completed"), "{mail}");
        // The delivery's ID and a tag of the address: the same on each retry, one per message.
        let id = mail.lines().find_map(|l| l.strip_prefix("Message-ID: ")).expect("a Message-ID");
        assert!(id.starts_with(&format!("<{delivery_id}.")) && id.ends_with("@hookline>"), "{mail}");
        assert!(!id.contains(to.split('@').next().unwrap()), "no address in clear: {id}");
        ids.insert(id.to_string());
        assert!(mail.contains("MIME-Version: 1.0"), "{mail}");
        assert!(mail.contains("Auto-Submitted: auto-generated"), "{mail}");
        assert!(mail.contains("From: hookline <alerts@example.com>"), "{mail}");
        assert!(mail.contains(&evt) && mail.contains("\"batch_id\": \"bat_42\""), "default body has the event: {mail}");
    }
    assert_eq!(ids.len(), 2, "two messages, two Message-IDs: {ids:?}");
    assert!(mails.iter().any(|m| m.contains("To: Lead <lead@example.com>")), "the display name is kept: {mails:?}");
    let m = app.metrics().await;
    assert!(m.contains("channel=\"email\",result=\"4xx\"") || m.contains("result=\"4xx\",channel=\"email\""), "{m}");
}

/// A subject that renders blank falls back to the default one, and loses its control
/// characters; a body that renders blank is not sent (dead at once, as an empty SMS or Slack
/// text is).
#[tokio::test]
async fn a_blank_subject_is_the_default_and_a_blank_body_is_not_sent() {
    let tmp = tempfile::tempdir().unwrap();
    let smtp = Smtp::start(&tmp.path().join("mail"), 0);
    let app = TestApp::start_with(dev_delivery(&format!(
        "[delivery.email]\nsmtp_host = \"127.0.0.1\"\nsmtp_port = {}\ntls = \"none\"\nfrom = \"alerts@example.com\"\n",
        smtp.port
    )))
    .await;
    let (wh, _) = create_webhook(
        &app,
        json!({"webhook_name": "ops", "event_types": ["*"], "channels": [{"channel": "email", "configs": {
            "to": ["ops@example.com"], "subject_template": "{{ payload.s }}", "body_template": "{{ payload.b }}"}}]}),
    )
    .await;
    publish(&app, "object.created", json!({"s": "", "b": "first body"})).await;
    publish(&app, "object.created", json!({"s": "A\u{0}B\u{1b}C", "b": "second body"})).await;
    publish(&app, "object.created", json!({"s": "subject", "b": "  "})).await;
    assert!(eventually(WAIT, || async { deliveries(&app, &wh, Some("succeeded")).await.len() == 2 }).await);
    assert!(eventually(WAIT, || async { deliveries(&app, &wh, Some("dead")).await.len() == 1 }).await);
    let dead = deliveries(&app, &wh, Some("dead")).await.remove(0);
    assert!(dead["attempts"][0]["error"].as_str().is_some_and(|e| e.contains("empty body")), "{dead}");
    let mails = smtp.messages();
    let first = mails.iter().find(|m| m.contains("first body")).expect("the first message");
    assert!(first.contains("Subject: [hookline] ops: object.created"), "{first}");
    let second = mails.iter().find(|m| m.contains("second body")).expect("the second message");
    assert!(second.contains("Subject: ABC\r\n") || second.contains("Subject: ABC\n"), "{second:?}");
    assert_eq!(mails.len(), 2, "{mails:?}");
}

/// An address the relay refuses (a typo) fails the attempt, naming it, and holds back no
/// other address: each has its own message, and a retry sends only to the addresses not
/// yet reached.
#[tokio::test]
async fn a_refused_address_holds_back_no_other() {
    let tmp = tempfile::tempdir().unwrap();
    let smtp = Smtp::start(&tmp.path().join("mail"), 0);
    let (app, wh) = three_address_email(smtp.port, "none").await;
    // Two attempts: the first reached ops and lead, the retry asked for bounce alone.
    let d = delivery_with_attempts(&app, &wh, 2).await;
    assert_eq!(d["status"], "pending", "{d}");
    for a in d["attempts"].as_array().unwrap().iter().take(2) {
        assert_eq!(a["status_code"], 550, "{d}");
    }
    let first = d["attempts"][0]["error"].as_str().unwrap();
    assert!(
        first.starts_with("1 of 3 addresses failed; to bounce@example.com: smtp: permanent error (550)"),
        "{first}"
    );
    let mails = smtp.messages();
    let to = |addr: &str| mails.iter().filter(|m| m.contains(&format!("X-RcptTo: {addr}"))).count();
    assert_eq!((to("ops@example.com"), to("lead@example.com"), mails.len()), (1, 1, 2), "each reached once: {mails:?}");
}

#[tokio::test]
async fn email_to_a_silent_relay_times_out_and_is_retried() {
    // A relay that accepts connections and never says a word.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((sock, _)) = listener.accept().await {
            held.push(sock);
        }
    });
    let app = TestApp::start_with(dev_delivery(&format!(
        "[delivery.email]\nsmtp_host = \"127.0.0.1\"\nsmtp_port = {port}\ntls = \"none\"\nfrom = \"a@example.com\"\ntimeout_seconds = 1\n"
    )))
    .await;
    let wh = email_webhook(&app).await;
    publish(&app, "object.created", json!({})).await;
    assert!(
        eventually(WAIT, || async {
            deliveries(&app, &wh, None).await.first().is_some_and(|d| {
                d["status"] == "pending"
                    && d["attempts"].as_array().is_some_and(|a| {
                        a.len() >= 2 && a.iter().all(|x| x["error"] == "to ops@example.com: smtp: timed out after 1.0s")
                    })
            })
        })
        .await,
        "{:?}",
        deliveries(&app, &wh, None).await
    );
}

/// A relay that takes each message (250 after its DATA) and then never answers QUIT: the
/// message was delivered, so the attempt succeeds, reaching all three addresses, each once.
/// Before, QUIT was under the attempt's timeout: a delivered message was a failed attempt
/// that held back the other addresses, and the first one got it again at every retry.
#[tokio::test]
async fn a_relay_silent_after_taking_the_message_is_a_delivery() {
    use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let taken = std::sync::Arc::new(std::sync::Mutex::new(Vec::<String>::new()));
    let recorded = taken.clone();
    tokio::spawn(async move {
        while let Ok((sock, _)) = listener.accept().await {
            let recorded = recorded.clone();
            tokio::spawn(async move {
                let (read, mut write) = sock.into_split();
                let mut lines = BufReader::new(read).lines();
                let _ = write.write_all(b"220 stand-in ESMTP\r\n").await;
                let (mut rcpt, mut in_data) = (String::new(), false);
                while let Ok(Some(line)) = lines.next_line().await {
                    let reply = if in_data {
                        if line != "." {
                            continue;
                        }
                        in_data = false;
                        recorded.lock().unwrap().push(rcpt.clone());
                        "250 2.0.0 queued\r\n"
                    } else if line.starts_with("EHLO") {
                        "250-stand-in\r\n250 8BITMIME\r\n"
                    } else if let Some(to) = line.strip_prefix("RCPT TO:") {
                        rcpt = to.trim_matches(['<', '>', ' ']).to_string();
                        "250 ok\r\n"
                    } else if line == "DATA" {
                        in_data = true;
                        "354 go ahead\r\n"
                    } else if line == "QUIT" {
                        // The message is queued; the relay just never says goodbye.
                        tokio::time::sleep(Duration::from_secs(3600)).await;
                        return;
                    } else {
                        "250 ok\r\n"
                    };
                    if write.write_all(reply.as_bytes()).await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    let (app, wh) = three_address_email(port, "none").await;
    let d = delivery_with_attempts(&app, &wh, 1).await;
    assert!(eventually(WAIT, || async { deliveries(&app, &wh, Some("succeeded")).await.len() == 1 }).await, "{d}");
    let d = deliveries(&app, &wh, None).await.remove(0);
    assert_eq!(d["attempts"].as_array().map(Vec::len), Some(1), "{d}");
    let mut got = taken.lock().unwrap().clone();
    got.sort();
    assert_eq!(got, ["bounce@example.com", "lead@example.com", "ops@example.com"], "each once");
}

/// A webhook on every event with one email channel to ops@example.com; its ID.
async fn email_webhook(app: &TestApp) -> String {
    let body = json!({"webhook_name": "m", "event_types": ["*"],
        "channels": [{"channel": "email", "configs": {"to": ["ops@example.com"]}}]});
    create_webhook(app, body).await.0
}

/// An SMTP stand-in that refuses every login with a 535 echoing the credentials, decoded
/// (`|user|password`) and as sent (AUTH PLAIN's base64).
/// Also counts the logins it refused.
async fn smtp_echoing_logins() -> (u16, std::sync::Arc<std::sync::atomic::AtomicUsize>) {
    use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let logins = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let counted = logins.clone();
    tokio::spawn(async move {
        while let Ok((sock, _)) = listener.accept().await {
            let counted = counted.clone();
            tokio::spawn(async move {
                let (read, mut write) = sock.into_split();
                let mut lines = BufReader::new(read).lines();
                let _ = write.write_all(b"220 stand-in ESMTP\r\n").await;
                while let Ok(Some(line)) = lines.next_line().await {
                    let reply = match line.split_whitespace().collect::<Vec<_>>().as_slice() {
                        ["EHLO", ..] => "250-stand-in\r\n250 AUTH PLAIN LOGIN\r\n".to_string(),
                        ["AUTH", "PLAIN", b64] => {
                            counted.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                            let decoded = base64::engine::general_purpose::STANDARD.decode(b64).unwrap_or_default();
                            let shown = String::from_utf8_lossy(&decoded).replace('\0', "|");
                            format!("535 5.7.8 bad credentials: {shown} ({b64})\r\n")
                        }
                        ["QUIT"] => "221 bye\r\n".to_string(),
                        _ => "502 not here\r\n".to_string(),
                    };
                    if write.write_all(reply.as_bytes()).await.is_err() {
                        break;
                    }
                }
            });
        }
    });
    (port, logins)
}

/// A relay that echoes the login in its refusal puts none of it into an attempt's error,
/// the webhook's `last_error`, the data directory or the log. A refused login speaks for the
/// relay: an attempt logs in once, not once per address.
#[tokio::test]
async fn an_smtp_relay_echoing_the_login_does_not_leak_it() {
    const USER: &str = "smtpuser";
    const PASSWORD: &str = "SMTPPASS_SENTINEL_7777";
    let (port, logins) = smtp_echoing_logins().await;
    let app = TestApp::start_with(Options {
        env: vec![("HOOKLINE_SMTP_PASSWORD".into(), PASSWORD.into())],
        ..dev_delivery(&format!(
            "[delivery.email]\nsmtp_host = \"127.0.0.1\"\nsmtp_port = {port}\ntls = \"none\"\nusername = \"{USER}\"\nfrom = \"a@example.com\"\ntimeout_seconds = 5\n"
        ))
    })
    .await;
    let (wh, _) = create_webhook(
        &app,
        json!({"webhook_name": "three", "event_types": ["*"], "channels": [{"channel": "email",
            "configs": {"to": ["ops@example.com", "lead@example.com", "oncall@example.com"]}}]}),
    )
    .await;
    publish(&app, "object.created", json!({})).await;
    let refused = eventually(WAIT, || failed_attempt_recorded(&app, &wh)).await;
    assert!(refused, "no failed attempt; log:\n{}", app.log());
    let d = &deliveries(&app, &wh, None).await[0];
    let attempts = d["attempts"].as_array().unwrap().len();
    // At most the one of an attempt under way besides those recorded (three per attempt, were
    // the addresses tried one by one).
    let seen = logins.load(std::sync::atomic::Ordering::SeqCst);
    assert!(seen >= 1 && seen <= attempts + 1, "{seen} logins for {attempts} attempts");
    assert_eq!(d["attempts"][0]["status_code"], 535, "{d}");
    assert_eq!(
        d["attempts"][0]["error"],
        "1 of 3 addresses failed; to ops@example.com: smtp: permanent error (535): 5.7.8 bad credentials: \
         |********|******** (********); 2 not tried (a failure of the relay itself)",
        "{d}"
    );
    let (_, w) = app.get(&format!("/v1/organizations/webhooks/{wh}")).await;
    let plain = base64::engine::general_purpose::STANDARD.encode(format!("\0{USER}\0{PASSWORD}"));
    let leaks = [PASSWORD, USER, plain.as_str()];
    for text in [d.to_string(), w.to_string(), app.log()] {
        for leak in leaks {
            assert!(!text.contains(leak), "{leak} in {text}");
        }
    }
    crate::support::assert_not_in_data_files(&app, &leaks).await;
}

#[tokio::test]
async fn removing_a_provider_keeps_its_deliveries_pending_with_the_reason() {
    let api = Receiver::start(201).await;
    let mut app = TestApp::start_with(Options {
        env: vec![("HOOKLINE_SMS_AUTH_TOKEN".into(), "t".into())],
        ..dev_delivery(&sms_section(&api))
    })
    .await;
    let (wh, _) = create_webhook(
        &app,
        json!({"webhook_name": "sms", "event_types": ["*"], "channels": [{"channel": "sms", "configs": {"to": ["+15550002222"]}}]}),
    )
    .await;
    app.stop();
    app.set_delivery_toml(delivery_toml(""));
    app.start_again().await;
    publish(&app, "object.created", json!({"object_id": "obj_1"})).await;
    assert!(
        eventually(WAIT, || async {
            deliveries(&app, &wh, None).await.first().is_some_and(|d| {
                d["status"] == "pending"
                    && d["attempts"].as_array().is_some_and(|a| {
                        a.len() >= 2 && a.iter().all(|x| x["error"].as_str().unwrap_or("").contains("[delivery.sms]"))
                    })
            })
        })
        .await,
        "retried, not dead: {:?}",
        deliveries(&app, &wh, None).await
    );
    assert_eq!(api.count(), 0);
    let (_, w) = app.get(&format!("/v1/organizations/webhooks/{wh}")).await;
    assert!(w["last_error"].as_str().unwrap_or("").contains("[delivery.sms] is not configured"), "{w}");
}

#[test]
fn check_config_never_prints_provider_secrets() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("config.toml");
    std::fs::write(
        &path,
        "[delivery.email]\nsmtp_host = \"smtp.example.com\"\nusername = \"u\"\npassword = \"file-secret-pw\"\nfrom = \"a@example.com\"\n\n[delivery.sms]\naccount_sid = \"AC1\"\nfrom = \"+15550001111\"\n",
    )
    .unwrap();
    // `check-config` on that file, in an environment of only the SMS token and `extra`.
    let check_config = |extra: &[(&str, &str)]| {
        Command::new(env!("CARGO_BIN_EXE_hookline"))
            .args(["check-config", "--config"])
            .arg(&path)
            .env_clear()
            .env("HOOKLINE_SMS_AUTH_TOKEN", "env-secret-token")
            .envs(extra.iter().copied())
            .output()
            .unwrap()
    };
    let out = check_config(&[]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text} {}", String::from_utf8_lossy(&out.stderr));
    assert!(text.contains("[delivery.email]") && text.contains("[delivery.sms]"), "{text}");
    assert!(!text.contains("file-secret-pw") && !text.contains("env-secret-token"), "{text}");
    assert_eq!(text.matches("<redacted>").count(), 2, "{text}");

    // A master key `serve` would refuse is refused here too.
    let out = check_config(&[("HOOKLINE_MASTER_KEY", "abc")]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("HOOKLINE_MASTER_KEY"), "{err}");

    // An empty HOOKLINE_API_KEYS must not silently replace the file's keys with none.
    let out = check_config(&[("HOOKLINE_API_KEYS", " , ")]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("HOOKLINE_API_KEYS is set but lists no key"), "{err}");
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

/// An empty template (which would fail every delivery with "rendered an empty message") is
/// refused when saved, naming the field; leaving it out gives the default.
#[tokio::test]
async fn empty_templates_are_refused_when_saved() {
    let api = Receiver::start(201).await;
    let app = TestApp::start_with(Options {
        env: vec![("HOOKLINE_SMS_AUTH_TOKEN".into(), "tok-123".into())],
        ..dev_delivery(&format!(
            "{}\n[delivery.email]\nsmtp_host = \"127.0.0.1\"\nsmtp_port = 1\ntls = \"none\"\nfrom = \"alerts@example.com\"\n",
            sms_section(&api)
        ))
    })
    .await;
    for (channel, configs, field) in [
        ("slack", json!({"webhook_url": api.url("/s"), "template": ""}), "template"),
        ("sms", json!({"to": ["+15550002222"], "template": "  "}), "template"),
        ("email", json!({"to": ["ops@example.com"], "subject_template": ""}), "subject_template"),
        ("email", json!({"to": ["ops@example.com"], "body_template": "\n"}), "body_template"),
        ("webhook", json!({"url": api.url("/w"), "payload_template": ""}), "payload_template"),
    ] {
        let (s, b) = app
            .post(
                "/v1/organizations/webhooks",
                json!({"webhook_name": "x", "event_types": ["*"], "channels": [{"channel": channel, "configs": configs}]}),
            )
            .await;
        assert_eq!(
            (s, b["error"]["field"].as_str()),
            (422, Some(format!("channels[0].configs.{field}").as_str())),
            "{b}"
        );
        assert!(b["error"]["message"].as_str().unwrap_or_default().contains("leave it out"), "{b}");
    }
    // Left out, or null: the default.
    create_webhook(
        &app,
        json!({"webhook_name": "x", "event_types": ["*"], "channels": [
            {"channel": "sms", "configs": {"to": ["+15550002222"], "template": null}},
            {"channel": "email", "configs": {"to": ["ops@example.com"]}}]}),
    )
    .await;
}

/// A relay that cannot give the TLS the config asks for (no STARTTLS; or plain text where TLS
/// was expected) fails the whole attempt once: every other address is "not tried".
#[tokio::test]
async fn a_relay_without_the_tls_asked_for_is_tried_once_per_attempt() {
    let tmp = tempfile::tempdir().unwrap();
    let smtp = Smtp::start(&tmp.path().join("mail"), 0);
    for tls in ["starttls", "tls"] {
        let (app, wh) = three_address_email(smtp.port, tls).await;
        let d = delivery_with_attempts(&app, &wh, 1).await;
        let first = &d["attempts"][0];
        assert!(
            first["error"].as_str().unwrap().ends_with("2 not tried (a failure of the relay itself)"),
            "{tls}: {d}"
        );
        if tls == "starttls" {
            let said = first["error"].as_str().unwrap_or_default();
            assert!(said.contains("the relay does not offer STARTTLS, which tls = \"starttls\" requires"), "{d}");
        }
    }
    assert_eq!(smtp.messages().len(), 0);
}

/// A relay that offers no login hookline speaks (here none at all, on a plain connection)
/// fails the whole attempt once, and the error says what the relay lacks.
#[tokio::test]
async fn a_relay_offering_no_login_is_tried_once_per_attempt() {
    let tmp = tempfile::tempdir().unwrap();
    let smtp = Smtp::start(&tmp.path().join("mail"), 0);
    let (app, wh) = three_address_email_as(smtp.port, "none", Some(("u", "a-password-for-the-relay"))).await;
    let d = delivery_with_attempts(&app, &wh, 1).await;
    let error = d["attempts"][0]["error"].as_str().unwrap_or_default();
    assert!(error.contains("the relay offers no login mechanism hookline speaks (PLAIN or LOGIN)"), "{d}");
    assert!(error.ends_with("2 not tried (a failure of the relay itself)"), "{d}");
    assert!(!error.contains("internal client error"), "{d}");
    assert_eq!(smtp.messages().len(), 0);
}

/// A daemon whose relay is `127.0.0.1:{port}` with `tls`, a webhook emailing three addresses
/// (ops, bounce, lead @example.com), and one event published to it; the webhook's ID.
async fn three_address_email(port: u16, tls: &str) -> (TestApp, String) {
    three_address_email_as(port, tls, None).await
}

/// [`three_address_email`], logging in to the relay as `login` (user, password) when given.
async fn three_address_email_as(port: u16, tls: &str, login: Option<(&str, &str)>) -> (TestApp, String) {
    let user = login.map(|(u, _)| format!("username = \"{u}\"\n")).unwrap_or_default();
    let app = TestApp::start_with(Options {
        env: login.map(|(_, p)| ("HOOKLINE_SMTP_PASSWORD".to_string(), p.to_string())).into_iter().collect(),
        ..dev_delivery(&format!(
            "[delivery.email]\nsmtp_host = \"127.0.0.1\"\nsmtp_port = {port}\ntls = \"{tls}\"\n{user}from = \"a@example.com\"\ntimeout_seconds = 5\n"
        ))
    })
    .await;
    let (wh, _) = create_webhook(
        &app,
        json!({"webhook_name": "three", "event_types": ["*"], "channels": [
            {"channel": "email", "configs": {"to": ["ops@example.com", "bounce@example.com", "lead@example.com"]}}]}),
    )
    .await;
    publish(&app, "object.created", json!({"n": 1})).await;
    (app, wh)
}

/// The webhook's first delivery, once it has at least `attempts` attempts.
async fn delivery_with_attempts(app: &TestApp, wh: &str, attempts: usize) -> serde_json::Value {
    let enough = || async {
        deliveries(app, wh, None)
            .await
            .first()
            .is_some_and(|d| d["attempts"].as_array().is_some_and(|a| a.len() >= attempts))
    };
    assert!(eventually(WAIT, enough).await, "{:?}", deliveries(app, wh, None).await);
    deliveries(app, wh, None).await.remove(0)
}

/// A lone CR in a rendered body (from the payload) reaches the relay as a line break (CRLF),
/// never as a bare CR: a relay that ends lines on one could read `\r.\r` as the end of the
/// message and what follows as commands (SMTP smuggling).
#[tokio::test]
async fn a_lone_cr_in_an_email_body_reaches_the_relay_as_crlf() {
    use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
    // A relay that accepts everything and keeps each message's DATA bytes as sent.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let (data_tx, mut data_rx) = tokio::sync::mpsc::unbounded_channel::<Vec<u8>>();
    tokio::spawn(async move {
        while let Ok((sock, _)) = listener.accept().await {
            let data_tx = data_tx.clone();
            tokio::spawn(async move {
                let (read, mut write) = sock.into_split();
                let mut read = BufReader::new(read);
                let _ = write.write_all(b"220 stand-in ESMTP\r\n").await;
                let mut line = Vec::new();
                loop {
                    line.clear();
                    if read.read_until(b'\n', &mut line).await.unwrap_or(0) == 0 {
                        break;
                    }
                    let reply: &[u8] = if line.starts_with(b"EHLO") {
                        b"250 stand-in\r\n"
                    } else if line.starts_with(b"DATA") {
                        let _ = write.write_all(b"354 go on\r\n").await;
                        let mut data = Vec::new();
                        loop {
                            let start = data.len();
                            if read.read_until(b'\n', &mut data).await.unwrap_or(0) == 0 || &data[start..] == b".\r\n" {
                                break;
                            }
                        }
                        let _ = data_tx.send(data);
                        b"250 queued\r\n"
                    } else if line.starts_with(b"QUIT") {
                        let _ = write.write_all(b"221 bye\r\n").await;
                        break;
                    } else {
                        b"250 ok\r\n"
                    };
                    if write.write_all(reply).await.is_err() {
                        break;
                    }
                }
            });
        }
    });
    let app = TestApp::start_with(dev_delivery(&format!(
        "[delivery.email]\nsmtp_host = \"127.0.0.1\"\nsmtp_port = {port}\ntls = \"none\"\nfrom = \"a@example.com\"\ntimeout_seconds = 5\n"
    )))
    .await;
    let body = json!({"webhook_name": "cr", "event_types": ["*"], "channels": [{"channel": "email",
        "configs": {"to": ["ops@example.com"], "body_template": "B {{ payload.s }} E"}}]});
    create_webhook(&app, body).await;
    publish(&app, "object.created", json!({"s": "x\n.\nRSET\n.\r\nQUIT\r\n\r.\r\nNOOP\r\n.\r"})).await;
    let data = tokio::time::timeout(WAIT, data_rx.recv()).await.expect("no message reached the relay").unwrap();
    let lone_cr = data.windows(2).any(|w| w[0] == b'\r' && w[1] != b'\n') || data.last() == Some(&b'\r');
    assert!(!lone_cr, "a lone CR reached the relay: {:?}", String::from_utf8_lossy(&data));
    let text = String::from_utf8_lossy(&data);
    assert!(text.contains("B x\r\n..\r\nRSET\r\n..\r\nQUIT\r\n\r\n..\r\nNOOP\r\n..\r\n E"), "{text:?}");
}
