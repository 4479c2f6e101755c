//! The Mux asset fetch, run outside the actor's handler.
//!
//! When a Mux webhook lacks playback ids, the handler builds a [`FetchJob`] (the screened
//! event plus the connection's access token, decrypted for this event only), spawns
//! `GET {mux.api_base}/video/v1/assets/{id}` on a task, and returns to its mailbox. The task
//! sends back [`Fetched`] with the original reply port; the continuation maps the asset and
//! creates (re-checking dedup) or updates, then answers. The token lives only in the job
//! and the task, and is never logged (MuxApi errors never contain it).

use ractor::RpcReplyPort;
use serde_json::Value;

use super::{AdapterMsg, AdapterState, Apply, IngestErr, IngestOk, IngestResult, IngestStatus, Origin};
use crate::adapter::kind::{self, FetchRequest, Operation};
use crate::adapter::mux::{MuxApi, MuxApiError};
use crate::adapter::pipeline::{self, PayloadError, Screened};
use crate::catalog::connection::ProviderConfig;
use crate::util::now_millis;

/// A fetch to run, and what to do with its result.
pub struct FetchJob {
    asset_id: String,
    token_id: String,
    token_secret: String,
    next: Continuation,
    /// A lifecycle event's fetch, shared with the other buckets of its connection.
    pub(super) shared: Option<super::lifecycle::SharedFetch>,
}

/// The event waiting for its asset.
struct Continuation {
    screened: Screened,
    payload: Value,
    dedup_hash: Option<String>,
    origin: Origin,
    /// Fetched a second time, after an update made the first answer outdated (once only).
    refetched: bool,
}

/// The continuation message.
pub struct Fetched {
    asset_id: String,
    next: Continuation,
    result: Result<Value, MuxApiError>,
    reply: RpcReplyPort<IngestResult>,
}

impl AdapterState {
    /// Decrypts the adapter's credentials (see [`crate::adapter::verify::credentials`]).
    pub(super) fn credentials(&self) -> Result<Option<ProviderConfig>, String> {
        crate::adapter::verify::credentials(&self.shared, self.bucket_id(), &self.adapter)
    }

    /// A fetch job when the adapter has Mux API credentials; `None` maps without a fetch.
    pub(super) fn fetch_job(
        &mut self,
        req: FetchRequest,
        screened: &Screened,
        payload: &Value,
        dedup_hash: &Option<String>,
        origin: Origin,
    ) -> Result<Option<FetchJob>, String> {
        let Some((token_id, token_secret)) = self.api_token()? else { return Ok(None) };
        Ok(Some(FetchJob {
            asset_id: req.asset_id,
            token_id,
            token_secret,
            next: Continuation {
                screened: screened.clone(),
                payload: payload.clone(),
                dedup_hash: dedup_hash.clone(),
                origin,
                refetched: false,
            },
            shared: None,
        }))
    }

    /// The Mux API token of the adapter's credentials (ID, secret), for this fetch only;
    /// `None` without one (a connection that only checks signatures, or none).
    fn api_token(&self) -> Result<Option<(String, String)>, String> {
        Ok(match self.credentials()? {
            Some(ProviderConfig::Mux(m)) => m.api_token().map(|(id, secret)| (id.to_string(), secret.to_string())),
            _ => None,
        })
    }

    /// Whether `asset_id` has a fetch in flight for an event that creates its object: a
    /// lifecycle update that finds no object marks it outdated (see [`AdapterState::fetched`]).
    pub(super) fn mark_outdated_if_creating(&mut self, asset_id: &str) {
        if self.creating.contains_key(asset_id) {
            self.outdated.insert(asset_id.to_string());
        }
    }

    /// One creating fetch of `asset_id` ended: whether an update made its answer outdated.
    /// The mark stays until the last fetch of the asset in flight has ended, so that every
    /// one of them is made again (two deliveries of one `ready`, say): the first redone
    /// would otherwise leave the other to make the object from its older answer.
    fn creating_fetch_ended(&mut self, asset_id: &str) -> bool {
        let outdated = self.outdated.contains(asset_id);
        if let Some(n) = self.creating.get_mut(asset_id) {
            *n -= 1;
            if *n == 0 {
                self.creating.remove(asset_id);
                self.outdated.remove(asset_id);
                self.create_fetches.remove(asset_id);
            }
        }
        outdated
    }

    fn mux_api(&mut self) -> anyhow::Result<MuxApi> {
        if let Some(api) = &self.mux_api {
            return Ok(api.clone());
        }
        let api = MuxApi::from_config(&self.shared.config.mux)?;
        self.mux_api = Some(api.clone());
        Ok(api)
    }

    pub(super) fn spawn_fetch(&mut self, mut job: FetchJob, reply: RpcReplyPort<IngestResult>) {
        let api = match self.mux_api() {
            Ok(api) => api,
            Err(e) => {
                let err = self.retry(now_millis(), format!("build the Mux API client: {e}"));
                let _ = reply.send(Err(err));
                return;
            }
        };
        if job.next.screened.operation == Operation::Create {
            *self.creating.entry(job.asset_id.clone()).or_default() += 1;
            // Deliveries of one asset's creation while its fetch is in flight (a Mux retry,
            // an upload's event beside the asset's) wait for that fetch rather than each
            // reading the asset from the Mux API, which rate-limits those reads: the first
            // makes the object, the others find it in the dedup set. Not a second fetch
            // after an update, which needs a newer answer.
            if job.shared.is_none() && !job.next.refetched {
                job.shared = Some(self.create_fetches.entry(job.asset_id.clone()).or_default().clone());
            }
        }
        let myself = self.myself.clone();
        tokio::spawn(async move {
            let FetchJob { asset_id, token_id, token_secret, next, shared } = job;
            let fetch = || api.get_asset(&asset_id, &token_id, &token_secret);
            let result = match shared {
                Some(once) => once.get_or_init(fetch).await.clone(),
                None => fetch().await,
            };
            drop((token_id, token_secret));
            // If the actor is gone, the reply port drops and the caller answers 503.
            let _ = myself.cast(AdapterMsg::Fetched(Box::new(Fetched { asset_id, next, result, reply })));
        });
    }

    /// The 422 for a token Mux refused (401/403): the field and message name the adapter's
    /// connection (or its inline credentials), not the payload.
    fn token_refused(&self, code: u16, asset_id: &str) -> (&'static str, String) {
        let why = format!(
            "Mux refused its access token (HTTP {code}) fetching asset {asset_id:?}: the token is wrong, revoked, \
             lacks Mux Video read access, or is of another Mux environment. The event is fine"
        );
        match &self.adapter.connection_id {
            Some(id) => (
                "source_adapter.connection_id",
                format!(
                    "connection {id}: {why}: PATCH /v1/organizations/connections/{id} with a valid \
                     access_token_id/access_token_secret, and Mux's retries will succeed"
                ),
            ),
            None => (
                "source_adapter.connection.credentials",
                format!(
                    "the adapter's inline connection.credentials: {why}: PATCH the bucket's source_adapter with \
                     valid ones (or a connection_id), and Mux's retries will succeed"
                ),
            ),
        }
    }

    /// The continuation: map the fetched asset, then create or change.
    pub(super) async fn fetched(&mut self, f: Fetched) {
        let Fetched { asset_id, mut next, result, reply } = f;
        let create = next.screened.operation == Operation::Create;
        if create && self.creating_fetch_ended(&asset_id) && result.is_ok() && !next.refetched && !self.closing {
            // A lifecycle update of this asset came while it was fetched: the answer may
            // predate it (the object would keep the old state, the update being answered
            // already). Fetched again, once; without credentials now, the answer stands.
            if let Ok(Some((token_id, token_secret))) = self.api_token() {
                next.refetched = true;
                let job = FetchJob { asset_id, token_id, token_secret, next, shared: None };
                self.spawn_fetch(job, reply);
                return;
            }
        }
        let Continuation { screened, payload, dedup_hash, origin, .. } = next;
        let now = now_millis();
        let result = match result {
            Err(e) if e.is_retryable() => Err(self.retry(now, format!("fetch the Mux asset: {e}"))),
            // The event is fine; the credentials are not: name them, and say how to fix them.
            Err(MuxApiError::Unauthorized(code)) => {
                let (field, message) = self.token_refused(code, &asset_id);
                Err(refused_fetch(self.fail_at(now, field, message)))
            }
            // An asset Mux does not know (usually a token of another environment) or another
            // 4xx: the event is fine, and Mux's retry may pass once the connection is fixed.
            Err(e @ (MuxApiError::NotFound(_) | MuxApiError::Upstream(_))) => {
                Err(refused_fetch(self.fail(now, PayloadError(format!("fetch the Mux asset: {e}")))))
            }
            Err(e) => Err(self.fail(now, PayloadError(format!("fetch the Mux asset: {e}")))),
            Ok(asset) => {
                let doc = kind::mux_document(&payload, &asset);
                match pipeline::materialize(&self.adapter, &self.bucket.bucket_schema, &payload, &doc, &screened) {
                    Err(e) => Err(self.fail(now, e)),
                    Ok(draft) if screened.operation == Operation::Create => {
                        if self.closing {
                            Err(IngestErr::Gone)
                        } else if let Some(oid) = dedup_hash.as_ref().and_then(|h| self.dedup.get(h)).cloned() {
                            // Another delivery of the same asset won the race.
                            let mut batch = crate::store::Batch::new();
                            self.stats.processed(now);
                            self.put_stats(&mut batch);
                            let commit = self.submit(batch, Vec::new());
                            Ok(IngestOk::new(IngestStatus::Duplicate, Some(oid), Some(commit)))
                        } else if self.shared.room.short() {
                            // Checked before the fetch too; the disk may have filled meanwhile.
                            Err(IngestErr::ShortOfDisk)
                        } else {
                            Ok(self.accept(now, draft, dedup_hash))
                        }
                    }
                    Ok(draft) => self.apply_change(Apply { screened, draft: Some(draft), dedup_hash, origin }).await,
                }
            }
        };
        let _ = reply.send(result);
    }
}

/// Marks a failure as the Mux API's refusal of the fetch (see `IngestErr::Invalid`).
fn refused_fetch(e: IngestErr) -> IngestErr {
    match e {
        IngestErr::Invalid { field, message, commit, .. } => {
            IngestErr::Invalid { field, message, commit, refused_fetch: true }
        }
        other => other,
    }
}
