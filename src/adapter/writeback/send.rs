//! One writeback attempt over HTTP: Supabase → PostgREST `PATCH`, generic_webhook → `POST`
//! of `{object_id, external_id, fields}` to `writeback_url` with the connection's headers
//! (and `writeback_id`; an alert's job adds `alert_id` and `"trigger": "on_alert"`, a
//! batch's `batch_id` and `"trigger": "on_batch_complete"`).
//!
//! Targets are user-configured URLs, so the delivery side's outbound rules apply: the URL is
//! checked with [`netguard::check_url`] and the client resolves through its guarded resolver
//! (`delivery.allow_insecure_http` / `allow_private_networks`). Credentials are opened for
//! the attempt only, sent as sensitive headers, and never appear in errors or logs.

use std::time::Duration;

use reqwest::header::{HeaderMap, HeaderName, HeaderValue, CONTENT_TYPE};
use serde_json::json;

use super::job::Job;
use crate::adapter::spec::SourceAdapter;
use crate::adapter::supabase::{WritebackRequest, WritebackTarget, DEFAULT_SCHEMA};
use crate::catalog::connection::ProviderConfig;
use crate::catalog::{Connection, ProviderType};
use crate::delivery::client::RESPONSE_CAP;
use crate::delivery::netguard::{check_url, NetPolicy};
use crate::delivery::retry::{classify_status, Outcome};
use crate::ids::BucketId;
use crate::state::Shared;
use crate::store::Keyspace;

/// How an attempt failed, and whether trying again can help.
#[derive(Debug, Clone, PartialEq)]
pub struct Failure {
    pub message: String,
    pub outcome: Outcome,
}

fn retriable(message: impl Into<String>) -> Failure {
    Failure { message: message.into(), outcome: Outcome::Retriable }
}

fn permanent(message: impl Into<String>) -> Failure {
    Failure { message: message.into(), outcome: Outcome::Permanent }
}

/// What an attempt needs besides the job.
pub struct Sender {
    pub shared: Shared,
    pub bucket_id: BucketId,
    pub adapter: SourceAdapter,
    pub client: reqwest::Client,
    pub policy: NetPolicy,
    pub timeout: Duration,
}

impl Sender {
    /// The adapter's credentials: its connection's, else the inline ones. `Err` when they
    /// exist but cannot be opened (a lost master key): retried, the key may come back.
    pub fn credentials(&self) -> Result<Option<ProviderConfig>, Failure> {
        let secrets = &self.shared.secrets;
        if let Some(id) = &self.adapter.connection_id {
            let conn = self
                .shared
                .store
                .get::<Connection>(Keyspace::CONNECTIONS, id.as_str())
                .map_err(|e| retriable(format!("read connection {id}: {e}")))?;
            return match conn {
                None => Err(permanent(format!("connection {id} no longer exists"))),
                Some(c) => c.open(secrets).map(Some).map_err(|e| retriable(format!("open connection {id}: {e}"))),
            };
        }
        // (The error says whether they do not decrypt or do not decode.)
        self.adapter
            .inline_credentials(&self.bucket_id, secrets)
            .transpose()
            .map_err(|e| retriable(format!("open the adapter's inline credentials: {e}")))
    }

    /// Sends one job once.
    pub async fn attempt(&self, job: &Job, creds: &Option<ProviderConfig>) -> Result<(), Failure> {
        if let Some(why) = job.barred_for(self.adapter.adapter_type) {
            return Err(permanent(why));
        }
        if job.queued_by.is_none() {
            self.check_untyped(job)?;
        }
        let external_id = job.external_id.as_deref();
        if external_id.is_none() && super::job::needs_external_id(self.adapter.adapter_type) {
            return Err(permanent(super::job::no_external_id(self.adapter.writeback.as_ref())));
        }
        if job.fields.is_empty() {
            return Err(permanent("none of the field_mapping source_paths is present in the processing result"));
        }
        let rb = match self.adapter.adapter_type {
            ProviderType::Supabase => {
                let Some(ProviderConfig::Supabase(cfg)) = creds else {
                    return Err(permanent(
                        "the supabase adapter has no url/service_role_key (connection or credentials)",
                    ));
                };
                // The adapter's table, never the event's (see `SourceAdapter::table`). A
                // job from before the pin waits for it (retried), so setting it lets the
                // pending ones through.
                let Some((schema, table)) = self.adapter.table() else {
                    return Err(retriable(
                        "source_adapter.table is not set: a supabase writeback goes only to the table the adapter \
                         is pinned to (set table, and schema if not public, with a PATCH of the bucket)",
                    ));
                };
                let from = (job.schema.as_deref().unwrap_or(DEFAULT_SCHEMA), job.table.as_deref().unwrap_or(table));
                if from != (schema, table) {
                    return Err(permanent(format!(
                        "the object came from {}.{}, and the adapter writes back to {schema}.{table} only",
                        from.0, from.1
                    )));
                }
                let target = WritebackTarget {
                    url: &cfg.url,
                    service_role_key: &cfg.service_role_key,
                    schema,
                    table,
                    id_column: self.adapter.id_column(),
                };
                let req = WritebackRequest::build(target, external_id.unwrap_or_default(), &job.fields)
                    .map_err(|e| permanent(format!("build the PostgREST request: {e}")))?;
                self.check(&req.url)?;
                // Retried: it goes through once the key is set again.
                req.send(&self.client).map_err(retriable)?
            }
            ProviderType::GenericWebhook => {
                let Some(url) = self.adapter.writeback.as_ref().and_then(|w| w.writeback_url.as_deref()) else {
                    return Err(permanent("no writeback_url"));
                };
                self.check(url)?;
                let generic = match creds {
                    Some(ProviderConfig::Generic(g)) => Some(g),
                    _ => None,
                };
                if let Some(g) = generic.filter(|g| !g.headers.is_empty() && !g.allows(url)) {
                    return Err(permanent(format!(
                        "writeback_url is not under the connection's url ({}): its headers are sent to no other URL",
                        g.url.as_deref().unwrap_or_default()
                    )));
                }
                let body = generic_body(job, external_id).to_string();
                let headers = generic_headers(generic.into_iter().flat_map(|g| &g.headers), &body)?;
                self.client.post(url).headers(headers).body(body)
            }
            ProviderType::Mux => return Err(permanent("mux adapters do not support writeback")),
        };
        let mut resp = rb.timeout(self.timeout).send().await.map_err(|e| {
            let kind = if e.is_timeout() { "timed out" } else { "failed" };
            // Without the URL: its query may hold a token (`?token=…`) or a row's id (a
            // Supabase filter, `?id=eq.alice@example.com`), and this text is logged and
            // shown as last_error. Where it went is in the adapter's settings.
            retriable(format!("request {kind}: {}", error_chain(&e.without_url())))
        })?;
        let status = resp.status().as_u16();
        // Read a small body (so the connection is reused): on a failure, its start is the
        // clearest error there is (PostgREST: "Could not find the 'x' column", "JWT expired").
        let body = read_capped(&mut resp).await;
        match classify_status(status) {
            Outcome::Delivered => Ok(()),
            _ => {
                let sent: Vec<&str> = match creds {
                    Some(ProviderConfig::Supabase(c)) => vec![c.service_role_key.as_str()],
                    Some(ProviderConfig::Generic(g)) => g.headers.values().map(String::as_str).collect(),
                    _ => Vec::new(),
                };
                let text = crate::delivery::channel::http::excerpt_hiding(&body, &sent);
                Err(retriable(if text.is_empty() {
                    format!("the target answered HTTP {status}")
                } else {
                    format!("the target answered HTTP {status}: {text}")
                }))
            }
        }
    }

    /// A job stored by a binary from before jobs recorded their adapter type (see
    /// `Job::queued_by`): its object's source says whether it is this adapter's. One made by
    /// another type (a generic object, after a PATCH to supabase made with the old binary)
    /// is given up, as a typed one is. With its object gone, a Supabase job that names no
    /// table cannot show it came from a row of this table: not sent as a service-role PATCH.
    fn check_untyped(&self, job: &Job) -> Result<(), Failure> {
        let key = crate::adapter::records::key(&self.bucket_id, job.object_id.as_str());
        let rec = self
            .shared
            .store
            .get::<crate::adapter::records::ObjectRecord>(Keyspace::OBJECTS, &key)
            .map_err(|e| retriable(format!("read the job's object: {e}")))?;
        let kind = self.adapter.adapter_type;
        match rec {
            Some(rec) if rec.source.adapter_type != kind => {
                Err(permanent(super::job::made_by_another(rec.source.adapter_type, kind)))
            }
            None if kind == ProviderType::Supabase && job.table.is_none() => Err(permanent(
                "the job was stored by an older hookline without its source, and its object is gone: nothing shows \
                 it is a row of the adapter's table, so it is not sent",
            )),
            _ => Ok(()),
        }
    }

    fn check(&self, url: &str) -> Result<(), Failure> {
        let u = url::Url::parse(url).map_err(|_| permanent("the writeback URL does not parse"))?;
        check_url(&u, self.policy).map_err(retriable)
    }
}

/// The generic_webhook body: `{object_id, external_id, fields, writeback_id}` (`external_id`
/// null for an object without one), plus the cause: `alert_id` and `"trigger": "on_alert"`,
/// or `batch_id` and `"trigger": "on_batch_complete"`.
fn generic_body(job: &Job, external_id: Option<&str>) -> serde_json::Value {
    let mut body = json!({"object_id": job.object_id, "external_id": external_id, "fields": job.fields});
    // The job, as the writebacks list names it (its content may change between sends: a
    // merge, a retry by hand mapped again; `Idempotency-Key` is the content's).
    if let Some(id) = super::operator::WritebackId::of(job) {
        body["writeback_id"] = json!(id.to_string());
    }
    if let Some(alert_id) = &job.alert_id {
        body["alert_id"] = json!(alert_id);
        body["trigger"] = json!("on_alert");
    } else if let Some(batch_id) = &job.batch_id {
        // Named as an alert's is: the receiver can tell what caused it.
        body["batch_id"] = json!(batch_id);
        body["trigger"] = json!("on_batch_complete");
    }
    body
}

/// The header that carries [`idempotency_key`].
const IDEMPOTENCY_KEY: &str = "idempotency-key";

/// Whether the generic writeback sets the header `name` (any letter case) itself, so that a
/// connection may not (refused when it is saved): it would go out beside the writeback's
/// own, or replace what a receiver drops repeats by. (`Content-Type` it may: see
/// [`generic_headers`].)
pub fn sets_header(name: &str) -> bool {
    name.eq_ignore_ascii_case(IDEMPOTENCY_KEY)
}

/// The headers of a generic writeback: the connection's `configured` ones, a `Content-Type`
/// among them in place of the default (as on a webhook channel), and the `Idempotency-Key`
/// of `body`. Each name once (inserted, not appended): a connection saved before a name given
/// twice in two letter cases, or the writeback's own header, was refused still sends one of
/// each, the writeback's own `Idempotency-Key` winning. Framing headers are the HTTP
/// client's: refused when a connection is saved now, skipped here for one saved before.
fn generic_headers<'a>(
    configured: impl Iterator<Item = (&'a String, &'a String)>,
    body: &str,
) -> Result<HeaderMap, Failure> {
    let mut h = HeaderMap::new();
    for (k, v) in configured.filter(|(k, _)| !crate::delivery::channel::framing_header(k)) {
        let (Ok(name), Ok(mut value)) = (HeaderName::from_bytes(k.as_bytes()), HeaderValue::from_str(v)) else {
            return Err(permanent(format!("connection header {k:?} is not a valid HTTP header")));
        };
        // Connection headers usually carry tokens.
        value.set_sensitive(true);
        h.insert(name, value);
    }
    h.entry(CONTENT_TYPE).or_insert(HeaderValue::from_static("application/json"));
    let key = HeaderValue::try_from(idempotency_key(body)).map_err(|e| permanent(format!("{IDEMPOTENCY_KEY}: {e}")))?;
    h.insert(IDEMPOTENCY_KEY, key);
    Ok(h)
}

/// The same for every send of the same body (a retry of the job, one after a crash, one
/// whose 2xx was lost to a timeout), another for any other: what a receiver drops repeats
/// by. Of the content, not of the job: a job whose fields changed (merged with an older one
/// of its row, mapped again by a retry by hand) must not be dropped as a repeat.
fn idempotency_key(body: &str) -> String {
    use sha2::Digest;
    const_hex::encode(&sha2::Sha256::digest(body.as_bytes())[..16])
}

/// The write-back client: the guarded resolver, no redirects, no proxies (a proxy would
/// resolve names for us and bypass the address check), hookline's `User-Agent`. No fallback
/// when it cannot be built: a client without the guard must never send.
pub fn client(policy: NetPolicy) -> Result<reqwest::Client, reqwest::Error> {
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .no_proxy()
        .dns_resolver(std::sync::Arc::new(crate::delivery::netguard::GuardedResolver {
            allow_private_networks: policy.allow_private_networks,
        }))
        .connect_timeout(Duration::from_secs(10))
        .tcp_nodelay(true)
        .user_agent(concat!("hookline/", env!("CARGO_PKG_VERSION")))
        .build()
}

/// Reads at most [`RESPONSE_CAP`] bytes of a response body, never the whole of a large one: a
/// small body read to its end lets the connection go back to the pool.
async fn read_capped(resp: &mut reqwest::Response) -> Vec<u8> {
    let mut body = Vec::new();
    while body.len() < RESPONSE_CAP {
        match resp.chunk().await {
            Ok(Some(c)) => body.extend_from_slice(&c[..c.len().min(RESPONSE_CAP - body.len())]),
            _ => break,
        }
    }
    body
}

fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut out = e.to_string();
    let mut cur = e.source();
    while let Some(s) = cur {
        out.push_str(": ");
        out.push_str(&s.to_string());
        cur = s.source();
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Headers as a connection saved before the checks may hold them: each goes out once.
    #[test]
    fn each_header_goes_out_once_the_writebacks_own_key_winning() {
        let configured: std::collections::BTreeMap<String, String> = [
            ("Content-Type", "application/json; charset=utf-8"),
            ("Idempotency-Key", "static-key"),
            ("Authorization", "Bearer one"),
            ("authorization", "Bearer two"),
            ("Host", "elsewhere.example"),
        ]
        .into_iter()
        .map(|(n, v)| (n.to_string(), v.to_string()))
        .collect();
        let h = generic_headers(configured.iter(), "{}").expect("valid headers");
        let count = |name: &str| h.get_all(name).iter().count();
        assert_eq!([count("content-type"), count("idempotency-key"), count("authorization")], [1, 1, 1]);
        assert_eq!(h["content-type"], "application/json; charset=utf-8");
        assert_eq!(h["idempotency-key"].to_str().ok(), Some(idempotency_key("{}").as_str()));
        assert!(h.get("host").is_none(), "a framing header is the client's");
        let default = generic_headers(std::iter::empty(), "{}").expect("no headers");
        assert_eq!(default["content-type"], "application/json");
    }
}
