//! The email channel: one message per delivery and address, through the SMTP relay of
//! `[delivery.email]`.
//!
//! The transport is built once from the config and shared by every email channel. The
//! `Message-ID` is derived from the delivery ID and the address, so every retry of one
//! delivery to one address carries the same one and a receiving system can drop duplicates,
//! while the messages to two addresses never share one. Any SMTP failure (refused connection,
//! 4xx, 5xx, timeout) is retried on the common schedule, like an HTTP channel's non-2xx: a
//! rejected relay login is an operator's fix, not a lost event.
//! Each address gets its own message (its own `To:`), as each SMS number does: an address the
//! relay refuses fails the attempt, naming it, but holds back none of the others, and the
//! delivery remembers the addresses reached, so a retry sends only to the rest. (One message
//! to all would let one mistyped address keep every other one waiting until `max_age_hours`.)
//!
//! `timeout_seconds` bounds one message's transaction, from the connection to the relay's
//! answer to its DATA (lettre's own timeout only covers the TCP connect). The QUIT after it
//! is sent apart: once the relay has said it took the message, a relay slow to say goodbye
//! must not turn a delivered message into a failed one, sent again. Connections are not
//! pooled: each message has its own, so a send cut off by the timeout takes its connection
//! with it instead of handing it back half-way through a transaction. (The transaction is
//! lettre's `AsyncSmtpConnection`, driven as its transport drives it, for that split.)

use std::time::Duration;

use lettre::address::Envelope;
use lettre::message::header::ContentType;
use lettre::message::Mailbox;
use lettre::transport::smtp::authentication::{Credentials, DEFAULT_MECHANISMS};
use lettre::transport::smtp::client::{AsyncSmtpConnection, TlsParameters};
use lettre::transport::smtp::extension::ClientId;
use lettre::transport::smtp::response::Response;

use super::{AttemptResult, Channel, EmailConfig, Message, SendFuture};
use crate::config::{EmailSettings, SmtpTls};
use crate::delivery::retry::Outcome;
use crate::delivery::template::Template;

pub const DEFAULT_SUBJECT: &str = "[hookline] {{ webhook_name }}: {{ event_type }}";
pub const DEFAULT_BODY: &str =
    "Event {{ event_id }} ({{ event_type }}) at {{ created_at }}\n\n{{ payload | pretty_json }}\n";

/// Longest subject sent (a template that renders more is cut).
const MAX_SUBJECT_CHARS: usize = 250;

/// How long a relay has to answer the QUIT after a message it took (see the module doc).
const QUIT_WAIT: Duration = Duration::from_secs(5);

/// The SMTP relay shared by every email channel.
pub struct Mailer {
    host: String,
    port: u16,
    /// How the connection is secured, with the relay's TLS parameters (none for `None`).
    tls: Option<(SmtpTls, TlsParameters)>,
    hello: ClientId,
    credentials: Option<Credentials>,
    from: Mailbox,
    timeout: Duration,
    /// The login and its base64 forms, hidden in every error an email channel records (see
    /// [`login_secrets`]).
    hidden: Vec<String>,
}

/// `<{delivery_id}.{tag}@hookline>`, the tag the first 8 bytes of the SHA-256 of the
/// address (lower-cased, as addresses are told apart), in hex: the same on every retry to
/// it, another for each address (RFC 5322: one ID, one message), and no address in clear.
fn message_id(delivery: &str, to: &Mailbox) -> String {
    use sha2::{Digest, Sha256};
    let digest = Sha256::digest(to.email.to_string().to_ascii_lowercase().as_bytes());
    format!("<{delivery}.{}@hookline>", const_hex::encode(&digest[..8]))
}

/// What of the relay login an error must not show: a relay's reply may echo the AUTH
/// exchange ("535 5.7.8 bad credentials: |user|password"), and the error goes into attempts,
/// `last_error`, the store and the log. The password and the user name, and the base64 forms
/// AUTH sends them in: `\0user\0password` (PLAIN), the user and the password each (LOGIN).
/// Each is also hidden in the forms [`super::http::secret_forms`] lists (another letter
/// case, percent-encoded), from 6 characters.
fn login_secrets(user: &str, password: &str) -> Vec<String> {
    use base64::Engine;
    let b64 = |s: &str| base64::engine::general_purpose::STANDARD.encode(s);
    let mut hidden = vec![password.to_string(), user.to_string()];
    hidden.extend([b64(&format!("\0{user}\0{password}")), b64(user), b64(password)]);
    hidden.retain(|s| !s.is_empty());
    hidden
}

impl Mailer {
    pub fn new(s: &EmailSettings) -> Result<Mailer, String> {
        let tls = match s.tls {
            SmtpTls::None => None,
            mode => Some((mode, TlsParameters::new(s.smtp_host.clone()).map_err(|e| format!("delivery.email: {e}"))?)),
        };
        let mut hidden = Vec::new();
        let credentials = s.username.as_ref().map(|user| {
            let password = s.password.clone().unwrap_or_default();
            hidden = login_secrets(user, &password);
            Credentials::new(user.clone(), password)
        });
        let from = s.from.parse::<Mailbox>().map_err(|e| format!("delivery.email.from: {e}"))?;
        Ok(Mailer {
            host: s.smtp_host.clone(),
            port: s.port(),
            tls,
            hello: ClientId::default(),
            credentials,
            from,
            timeout: Duration::from_secs(s.timeout_seconds),
            hidden,
        })
    }

    /// One message's transaction, up to the relay's answer to its DATA: the connection (TLS
    /// from the first byte, or upgraded with STARTTLS), the login, MAIL, RCPT and DATA, as
    /// lettre's transport makes them. The connection is returned for its QUIT.
    async fn transact(
        &self,
        envelope: &Envelope,
        raw: &[u8],
    ) -> Result<(AsyncSmtpConnection, Response), lettre::transport::smtp::Error> {
        let wrapper = match &self.tls {
            Some((SmtpTls::Tls, p)) => Some(p.clone()),
            _ => None,
        };
        let mut conn = AsyncSmtpConnection::connect_tokio1(
            (self.host.as_str(), self.port),
            Some(self.timeout),
            &self.hello,
            wrapper,
            None,
        )
        .await?;
        if let Some((SmtpTls::Starttls, p)) = &self.tls {
            conn.starttls(p.clone(), &self.hello).await?;
        }
        if let Some(c) = &self.credentials {
            conn.auth(DEFAULT_MECHANISMS, c).await?;
        }
        let response = conn.send(envelope, raw).await?;
        Ok((conn, response))
    }
}

pub struct EmailChannel {
    /// Each address as written in the channel's `to` (what `done_recipients` holds), parsed.
    to: Vec<(String, Mailbox)>,
    subject: Template,
    body: Template,
    mailer: std::sync::Arc<Mailer>,
}

impl EmailChannel {
    pub fn new(config: &EmailConfig, mailer: std::sync::Arc<Mailer>) -> Result<EmailChannel, String> {
        let to = config
            .to
            .iter()
            .map(|a| a.parse::<Mailbox>().map(|m| (a.clone(), m)).map_err(|e| format!("stored address {a:?}: {e}")))
            .collect::<Result<Vec<_>, _>>()?;
        let compile = |src: &Option<String>, default: &str, what: &str| {
            Template::load(src.as_deref().unwrap_or(default)).map_err(|e| format!("{what}: {e}"))
        };
        Ok(EmailChannel {
            to,
            subject: compile(&config.subject_template, DEFAULT_SUBJECT, "subject_template")?,
            body: compile(&config.body_template, DEFAULT_BODY, "body_template")?,
            mailer,
        })
    }

    async fn attempt(&self, msg: &Message<'_>) -> AttemptResult {
        let render = |t: &Template, what: &str| {
            t.render(msg.event, msg.webhook_name).map_err(|e| {
                AttemptResult::failed(Outcome::Permanent, "error", format!("{what} failed to render: {e}"))
            })
        };
        let mut subject = match render(&self.subject, "subject_template") {
            Ok(s) => one_line(&s),
            Err(r) => return r,
        };
        let body = match render(&self.body, "body_template") {
            Ok(b) => b,
            Err(r) => return r,
        };
        // No text to send, as an empty Slack text or SMS body: dead at once, not retried.
        if body.trim().is_empty() {
            return AttemptResult::failed(Outcome::Permanent, "error", EMPTY_BODY);
        }
        // A subject that renders blank (a payload field it names is missing, say): the
        // default one, which still says what the message is about.
        if subject.is_empty() {
            subject = match Template::load(DEFAULT_SUBJECT).and_then(|t| t.render(msg.event, msg.webhook_name)) {
                Ok(s) => one_line(&s),
                Err(e) => return AttemptResult::failed(Outcome::Permanent, "error", format!("default subject: {e}")),
            };
        }
        let mut reached = Vec::new();
        let mut failed: Vec<(String, AttemptResult)> = Vec::new();
        let mut last_ok = None;
        let mut untried = 0;
        let mut stopped = 0;
        let mut out_of_time = 0;
        for (written, mailbox) in &self.to {
            // Compared trimmed: a version that kept addresses with their whitespace recorded
            // them so.
            if msg.done_recipients.iter().any(|d| d.trim() == written) {
                continue;
            }
            if msg.stopping.is_cancelled() {
                stopped += 1;
                continue;
            }
            if failed.last().is_some_and(|(_, r)| relay_wide(r)) {
                untried += 1;
                continue;
            }
            if msg.out_of_time(!reached.is_empty()) {
                out_of_time += 1;
                continue;
            }
            // Biased: an answer that came with the cut-off counts.
            let sent = tokio::select! {
                biased;
                r = self.send_one(msg, mailbox, &subject, &body) => Some(r),
                () = msg.cut_off.cancelled() => None,
            };
            let Some(r) = sent else {
                stopped += 1;
                continue;
            };
            if r.outcome == Outcome::Delivered {
                reached.push(written.clone());
                last_ok = Some(r);
            } else {
                failed.push((written.clone(), r));
            }
        }
        let mut result = super::summarize(self.to.len(), reached, failed, last_ok, "addresses");
        if untried > 0 {
            result.error = result.error.map(|e| format!("{e}; {untried} not tried (a failure of the relay itself)"));
        }
        super::ended_early(result, stopped, out_of_time, "address(es)", msg.budget.1)
    }

    /// Sends the delivery's message to one address.
    async fn send_one(&self, msg: &Message<'_>, to: &Mailbox, subject: &str, body: &str) -> AttemptResult {
        let email = lettre::Message::builder()
            .from(self.mailer.from.clone())
            .to(to.clone())
            .subject(subject)
            .message_id(Some(message_id(msg.id, to)))
            // lettre adds MIME-Version only to multipart and singlepart bodies (RFC 2045 §4).
            .header(lettre::message::header::MIME_VERSION_1_0)
            .header(ContentType::TEXT_PLAIN)
            // RFC 3834: a machine's message; auto-responders (vacation replies) stay quiet.
            .raw_header(lettre::message::header::HeaderValue::new(
                lettre::message::header::HeaderName::new_from_ascii_str("Auto-Submitted"),
                "auto-generated".into(),
            ))
            .body(line_feeds(body));
        let email = match email {
            Ok(m) => m,
            Err(e) => return AttemptResult::failed(Outcome::Permanent, "error", format!("build the message: {e}")),
        };
        // The attempt's status code is the SMTP reply code, and its metrics label the reply's
        // class (2xx delivered, 4xx transient, 5xx permanent), as for HTTP.
        let raw = email.formatted();
        let sent = match tokio::time::timeout(self.mailer.timeout, self.mailer.transact(email.envelope(), &raw)).await {
            Ok(Ok((mut conn, response))) => {
                // The relay has the message: its QUIT decides nothing (see the module doc).
                tokio::spawn(async move {
                    let _ = tokio::time::timeout(QUIT_WAIT, conn.quit()).await;
                });
                Ok(response)
            }
            Ok(Err(e)) => Err(e),
            Err(_) => {
                let secs = self.mailer.timeout.as_secs_f64();
                return AttemptResult::failed(
                    Outcome::Retriable,
                    "timeout",
                    format!("smtp: timed out after {secs:.1}s"),
                );
            }
        };
        match sent {
            Ok(resp) => AttemptResult {
                outcome: Outcome::Delivered,
                status_code: Some(u16::from(resp.code())),
                error: None,
                retry_after: None,
                result: "2xx",
                reached: Vec::new(),
                interrupted: false,
            },
            Err(e) => {
                let result = if e.is_timeout() {
                    "timeout"
                } else if e.is_transient() {
                    "4xx"
                } else if e.is_permanent() {
                    "5xx"
                } else if e.is_tls() || no_starttls(&e) || no_login_mechanism(&e) {
                    // No TLS session with the relay (no certificate store, or a relay without
                    // the STARTTLS `tls` requires), or no login it offers that hookline speaks:
                    // a session that cannot be made, as with an unreachable relay. (A failed
                    // handshake is already lettre's connection error.)
                    "connect"
                } else if e.is_client() {
                    "error"
                } else {
                    "connect"
                };
                AttemptResult {
                    outcome: Outcome::Retriable,
                    status_code: e.status().map(u16::from),
                    error: Some(format!("smtp: {}", described(&e))),
                    retry_after: None,
                    result,
                    reached: Vec::new(),
                    interrupted: false,
                }
            }
        }
    }
}

/// Whether a failed send speaks for the relay, not for its address: unreachable, silent, or
/// a reply about the session (421 closing, 530/534/535/538 login refused). Trying the other
/// addresses would repeat it, a refused login once per address (which can lock the relay
/// account); they go with the retry. Anything else may be about the one address and holds
/// back no other: a reply such as 550 no such user, 553, 454 relay access denied (Postfix's
/// answer to one RCPT), a 451 for its message, or lettre refusing the envelope (a non-ASCII
/// address to a relay without SMTPUTF8). A TLS failure (a refused certificate, no STARTTLS
/// offered), or no login mechanism in common, is a failed connection: it speaks for the relay.
fn relay_wide(r: &AttemptResult) -> bool {
    matches!(r.result, "connect" | "timeout") || r.status_code.is_some_and(|c| matches!(c, 421 | 530 | 534 | 535 | 538))
}

/// lettre says that a relay offers no STARTTLS only in a client error's text.
fn no_starttls(e: &lettre::transport::smtp::Error) -> bool {
    e.is_client() && e.to_string().contains("STARTTLS is not supported")
}

/// Nor does it say otherwise that the relay offers no login mechanism it speaks (PLAIN,
/// LOGIN): a relay that offers none, or none before TLS.
fn no_login_mechanism(e: &lettre::transport::smtp::Error) -> bool {
    e.is_client() && e.to_string().contains("No compatible authentication mechanism")
}

/// A failed send's error as the attempt shows it: what the relay lacks said of the relay
/// (lettre calls it an "internal client error"), and lettre's nested repeats once.
fn described(e: &lettre::transport::smtp::Error) -> String {
    if no_starttls(e) {
        return "the relay does not offer STARTTLS, which tls = \"starttls\" requires (use \"tls\" for a relay \
                that takes TLS from the first byte, usually port 465)"
            .into();
    }
    if no_login_mechanism(e) {
        return "the relay offers no login mechanism hookline speaks (PLAIN or LOGIN) for delivery.email.username; \
                check that the relay takes logins on this port (some offer them only after TLS)"
            .into();
    }
    without_repeats(&e.to_string())
}

/// lettre's errors nest one kind in another of the same name ("Connection error: Connection
/// error: invalid peer certificate"): each part once.
fn without_repeats(text: &str) -> String {
    let mut parts: Vec<&str> = text.split(": ").collect();
    parts.dedup();
    parts.join(": ")
}

/// Every line break as a bare LF, which lettre sends as CRLF: a lone CR (from a template or
/// a payload) would otherwise reach the relay as is, and a relay that ends lines on it could
/// read `\r.\r` as the end of the message and what follows as commands (SMTP smuggling).
fn line_feeds(body: &str) -> String {
    // NUL is not allowed in a message (RFC 5322 §3.5): a payload's `\u0000` would go out raw
    // in a 7bit body, which relays may refuse or cut. It becomes U+FFFD, as a lost character.
    body.replace("\r\n", "\n").replace('\r', "\n").replace('\0', "\u{FFFD}")
}

/// The subject as one header line, cut at a sane length: whitespace runs (line breaks
/// included) become one space, and other control characters (NUL, ESC…), which some relays
/// refuse in a header, go.
fn one_line(s: &str) -> String {
    let joined = s.split_whitespace().collect::<Vec<_>>().join(" ");
    joined.chars().filter(|c| !c.is_control()).take(MAX_SUBJECT_CHARS).collect()
}

/// Why an email whose body renders blank is not sent.
const EMPTY_BODY: &str = "body_template rendered an empty body for this event: nothing to send (not retried)";

impl Channel for EmailChannel {
    fn kind(&self) -> &'static str {
        "email"
    }

    fn send<'a>(&'a self, msg: &'a Message<'a>) -> SendFuture<'a> {
        Box::pin(async move {
            let mut result = self.attempt(msg).await;
            // Every error this channel records, whatever produced it (see `login_secrets`).
            let hidden: Vec<&str> = self.mailer.hidden.iter().map(String::as_str).collect();
            result.error = result.error.map(|e| super::http::hide_in(&e, &hidden));
            result
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_message_id_is_stable_per_delivery_and_address() {
        let mb = |s: &str| s.parse::<Mailbox>().unwrap();
        let id = message_id("del_1", &mb("Ops <ops@example.com>"));
        assert!(id.starts_with("<del_1.") && id.ends_with("@hookline>") && !id.contains("ops"), "{id}");
        assert_eq!(id, message_id("del_1", &mb("OPS@Example.com")), "a retry, whatever the case or name");
        assert_ne!(id, message_id("del_1", &mb("lead@example.com")), "another address");
        assert_ne!(id, message_id("del_2", &mb("ops@example.com")), "another delivery");
    }

    #[test]
    fn nested_error_kinds_read_once() {
        assert_eq!(
            without_repeats("Connection error: Connection error: invalid peer certificate: UnknownIssuer"),
            "Connection error: invalid peer certificate: UnknownIssuer"
        );
        assert_eq!(without_repeats("permanent error (550): no such user"), "permanent error (550): no such user");
    }

    #[test]
    fn a_lone_cr_becomes_a_line_feed() {
        assert_eq!(line_feeds("a\r\nb\rc\nd\r\r\n.\r"), "a\nb\nc\nd\n\n.\n");
        assert_eq!(line_feeds("x\0y"), "x\u{FFFD}y", "no NUL in a message");
    }

    #[test]
    fn subjects_are_one_line() {
        assert_eq!(one_line("  a\nb\r\n c  "), "a b c");
        assert_eq!(one_line(&"x".repeat(400)).len(), MAX_SUBJECT_CHARS);
    }

    /// A relay that echoes the AUTH exchange, decoded or not, shows none of the login.
    #[test]
    fn an_echoed_login_is_hidden() {
        let hidden = login_secrets("smtpuser", "SMTPPASS_SENTINEL_7777");
        let hidden: Vec<&str> = hidden.iter().map(String::as_str).collect();
        let hide = |text: &str| super::super::http::hide_in(text, &hidden);
        assert_eq!(
            hide("smtp: permanent error (535): 5.7.8 bad credentials: |smtpuser|SMTPPASS_SENTINEL_7777"),
            "smtp: permanent error (535): 5.7.8 bad credentials: |********|********"
        );
        // AUTH PLAIN's `\0user\0password`, AUTH LOGIN's user and password, in base64.
        assert_eq!(
            hide("535 bad AUTH PLAIN AHNtdHB1c2VyAFNNVFBQQVNTX1NFTlRJTkVMXzc3Nzc="),
            "535 bad AUTH PLAIN ********"
        );
        assert_eq!(hide("334 c210cHVzZXI= then U01UUFBBU1NfU0VOVElORUxfNzc3Nw=="), "334 ******** then ********");
        assert_eq!(hide("smtp: lower-cased smtppass_sentinel_7777"), "smtp: lower-cased ********");
        assert_eq!(hide("550 no such user"), "550 no such user");
    }

    #[test]
    fn the_default_templates_compile_and_the_subject_names_the_webhook() {
        let event = Template::sample();
        let subject = Template::compile(DEFAULT_SUBJECT).unwrap().render(&event, "media team").unwrap();
        assert_eq!(subject, "[hookline] media team: object.created");
        Template::compile(DEFAULT_BODY).unwrap();
    }
}
