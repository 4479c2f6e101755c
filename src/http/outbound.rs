//! Outbound routes: webhooks (subscriptions), their deliveries, the event-type catalog and
//! `POST /v1/events`. Writes go to the delivery registry (which hands back a `Durable` the
//! handler awaits before answering); reads come from the store.

use ractor::ActorRef;
use warp::http::StatusCode;

use super::page::Page;
use super::{empty, json, HttpState, Request, Response};
use crate::ask;
use crate::delivery::model::{
    check_each_event_type, dedup_event_types, take_channel_ids, CreateWebhook, Delivery, DeliveryStatus, PatchWebhook,
    PublishEvent, StoredWebhook, EVENT_TYPES,
};
use crate::delivery::registry::PublishDigests;
use crate::delivery::DeliveryMsg;
use crate::error::ApiError;
use crate::ids::{DeliveryId, WebhookId};
use crate::store::{Keyspace, StoreError};

/// Routes under `/v1/organizations/webhooks` and `/v1/events`.
pub async fn route(state: &HttpState, req: &Request, segs: &[&str]) -> (&'static str, Response) {
    let m = req.method.clone();
    match segs {
        ["v1", "events"] => methods!(m, "/v1/events", { POST => publish(state, req) }),
        ["v1", "organizations", "webhooks"] => methods!(m, "/v1/organizations/webhooks", {
            GET => list(state, req),
            POST => create(state, req),
        }),
        ["v1", "organizations", "webhooks", "event-types"] => {
            methods!(m, "/v1/organizations/webhooks/event-types", { GET => event_types(state, req) })
        }
        ["v1", "organizations", "webhooks", id] => methods!(m, "/v1/organizations/webhooks/{webhook_id}", {
            GET => get(state, req, id),
            PATCH => update(state, req, id),
            DELETE => delete(state, req, id),
        }),
        ["v1", "organizations", "webhooks", id, "deliveries"] => {
            methods!(m, "/v1/organizations/webhooks/{webhook_id}/deliveries", { GET => deliveries(state, req, id) })
        }
        ["v1", "organizations", "webhooks", id, "deliveries", did] => methods!(m,
            "/v1/organizations/webhooks/{webhook_id}/deliveries/{delivery_id}", { GET => delivery(state, req, id, did) }),
        ["v1", "organizations", "webhooks", id, "deliveries", did, "retry"] => methods!(m,
            "/v1/organizations/webhooks/{webhook_id}/deliveries/{delivery_id}/retry", { POST => retry(state, req, id, did) }),
        _ => ("(unknown)", super::error_response(&super::not_found_route())),
    }
}

fn registry(state: &HttpState) -> Result<ActorRef<DeliveryMsg>, ApiError> {
    ActorRef::where_is(state.shared.names.delivery_registry())
        .ok_or_else(|| ApiError::Unavailable("the delivery registry is restarting; retry shortly".into()))
}

fn webhook_id(id: &str) -> Result<WebhookId, ApiError> {
    WebhookId::parse(id).ok_or_else(|| ApiError::NotFound(format!("webhook {id} not found")))
}

fn load(state: &HttpState, id: &str) -> Result<StoredWebhook, ApiError> {
    let wid = webhook_id(id)?;
    state
        .shared
        .store
        .get::<StoredWebhook>(Keyspace::WEBHOOKS, wid.as_str())?
        .ok_or_else(|| ApiError::NotFound(format!("webhook {id} not found")))
}

async fn durable(d: crate::store::Durable) -> Result<(), ApiError> {
    d.await.map_err(|e: StoreError| ApiError::Internal(anyhow::Error::new(e).context("make the change durable")))
}

/// Unpaged before pages existed: without `limit` a page holds every webhook that fits in its
/// byte budget (all of them, unless their templates add up to megabytes).
async fn list(state: &HttpState, req: &Request) -> Result<Response, ApiError> {
    req.authenticate_list(state, &["limit", "cursor"])?;
    let mut page = Page::results(req.page_limit_or(usize::MAX)?);
    let after = req.cursor(|c| WebhookId::parse(c).is_some())?;
    state.shared.store.for_each_after::<StoredWebhook>(Keyspace::WEBHOOKS, "", after, |key, w| {
        page.offer(key, &webhook_view(state, &w))
    })?;
    Ok(page.finish())
}

/// A channel's `configs` hold secrets (a Slack or receiver URL, a header's token, the
/// signing `secret`), and a channel or its `configs` sent as a string may be one: an error
/// there is refused without the value quoted, but for the settings known to hold none
/// (`timeout`, the templates, the recipients `to`).
fn quiet_configs(e: ApiError) -> ApiError {
    let harmless = |field: &str| {
        field.ends_with(".timeout") || field.ends_with("_template") || field.ends_with(".to") || field.contains(".to[")
    };
    match &e {
        ApiError::Validation { field, .. } if field.starts_with("channels") && !harmless(field) => e.unquoted(),
        _ => e,
    }
}

/// A `signing_secret` in a PATCH (a create or rotation answer sent back, where it is shown
/// once): refused with what to do instead.
fn signing_secret_hint(e: ApiError) -> ApiError {
    super::request::generated_secret_hint(e, "signing_secret", "signing secret", "webhook", "rotate_signing_secret")
}

async fn create(state: &HttpState, req: &Request) -> Result<Response, ApiError> {
    req.authenticate(state)?;
    let mut value = req.json_value()?;
    let channel_ids = take_channel_ids(&mut value)?;
    let mut body = CreateWebhook { channel_ids, ..super::request::from_value(value).map_err(quiet_configs)? };
    check_each_event_type(&body.event_types)?;
    dedup_event_types(&mut body.event_types);
    let warnings = uncatalogued(&body.event_types);
    let reg = registry(state)?;
    let (view, d) = ask!(reg, |reply| DeliveryMsg::Create { body, reply })?;
    durable(d).await?;
    Ok(json(StatusCode::CREATED, &with_warnings(view, warnings)))
}

/// A warning for each subscribed type that no catalogued event type matches: legal (any type
/// can be published through `POST /v1/events`), but more often a typo (`object.craeted`).
fn uncatalogued(event_types: &[String]) -> Vec<String> {
    event_types
        .iter()
        .filter(|p| !EVENT_TYPES.iter().any(|(t, _)| crate::delivery::model::matches(p, t)))
        .map(|p| {
            format!(
                "event type {p:?} matches nothing in the catalog (GET /v1/organizations/webhooks/event-types); \
                 it receives only events published with that type"
            )
        })
        .collect()
}

fn with_warnings(mut view: serde_json::Value, warnings: Vec<String>) -> serde_json::Value {
    if !warnings.is_empty() {
        view["warnings"] = warnings.into();
    }
    view
}

async fn get(state: &HttpState, req: &Request, id: &str) -> Result<Response, ApiError> {
    req.authenticate(state)?;
    Ok(json(StatusCode::OK, &webhook_view(state, &load(state, id)?)))
}

/// A stored webhook's view, with an `error` when the master key cannot open its secrets:
/// its masked channels look as always, while none of them can send.
fn webhook_view(state: &HttpState, w: &StoredWebhook) -> serde_json::Value {
    let mut view = w.view();
    if state.shared.secrets.open(&w.sealed, w.webhook_id.as_str()).is_err() {
        view["error"] = "its secrets cannot be decrypted with the current master key (was it changed?): its \
                         deliveries wait, unsent; restore the key, or delete the webhook and create it again"
            .into();
    }
    view
}

async fn update(state: &HttpState, req: &Request, id: &str) -> Result<Response, ApiError> {
    req.authenticate(state)?;
    let webhook_id = webhook_id(id)?;
    let mut value = req.json_value()?;
    let channel_ids = take_channel_ids(&mut value)?;
    let parsed = super::request::from_value(value).map_err(quiet_configs).map_err(signing_secret_hint)?;
    let mut patch = PatchWebhook { channel_ids, ..parsed };
    if patch.webhook_id.as_deref().is_some_and(|sent| sent != webhook_id.as_str()) {
        return Err(ApiError::validation(
            "webhook_id",
            format!("names another webhook than the path's {webhook_id}; leave it out (a webhook's ID never changes)"),
        ));
    }
    if let Some(types) = &mut patch.event_types {
        check_each_event_type(types)?;
        dedup_event_types(types);
    }
    let warnings = patch.event_types.as_deref().map(uncatalogued).unwrap_or_default();
    let reg = registry(state)?;
    let updated = ask!(reg, |reply| DeliveryMsg::Update { webhook_id, patch, reply })?;
    durable(updated.durable).await?;
    let mut warnings = warnings;
    if let Some(applied) = updated.applied {
        // The new secret is stored and shown now whatever happens (it is shown only once).
        if !matches!(tokio::time::timeout(std::time::Duration::from_secs(5), applied).await, Ok(Ok(()))) {
            warnings.push(
                "the delivery actor had not switched to the new signing secret within 5 s (a long backlog): \
                 attempts it starts until it does are signed with the old one"
                    .to_string(),
            );
        }
    }
    Ok(json(StatusCode::OK, &with_warnings(updated.view, warnings)))
}

async fn delete(state: &HttpState, req: &Request, id: &str) -> Result<Response, ApiError> {
    req.authenticate(state)?;
    req.no_fields()?; // a DELETE with `{"dry_run": true}` must not delete
    let webhook_id = webhook_id(id)?;
    let reg = registry(state)?;
    let d = ask!(reg, |reply| DeliveryMsg::Delete { webhook_id, reply })?;
    durable(d).await?;
    Ok(empty(StatusCode::NO_CONTENT))
}

async fn event_types(state: &HttpState, req: &Request) -> Result<Response, ApiError> {
    req.authenticate(state)?;
    let types: Vec<_> =
        EVENT_TYPES.iter().map(|(t, d)| serde_json::json!({ "event_type": t, "description": d })).collect();
    Ok(json(StatusCode::OK, &serde_json::json!({ "results": types })))
}

async fn publish(state: &HttpState, req: &Request) -> Result<Response, ApiError> {
    req.authenticate(state)?;
    let body: PublishEvent = req.json()?;
    body.validate()?;
    // Such a number would reach receivers rounded (a double), under a valid signature: the
    // publisher, who can send it as a string, hears of it instead.
    super::request::refuse_rounded_integers(&req.body, || {
        vec![("payload", body.payload.clone()), ("cache_scopes", serde_json::Value::Array(body.cache_scopes.clone()))]
    })?;
    if state.shared.room.short() {
        return Err(ApiError::short_of_disk());
    }
    let key = idempotency_key(req, &body)?;
    let reg = registry(state)?;
    let PublishEvent { event_type, payload, cache_scopes } = body;
    let published = ask!(reg, |reply| DeliveryMsg::Publish { event_type, payload, cache_scopes, key, reply })?;
    match published.durable.await {
        Ok(r) => r?,
        Err(_) => return Err(ApiError::Unavailable("the delivery registry stopped; publish again".into())),
    }
    Ok(match published.repeat {
        true => json(StatusCode::OK, &serde_json::json!({ "event_id": published.event_id, "status": "duplicate" })),
        false => json(StatusCode::ACCEPTED, &serde_json::json!({ "event_id": published.event_id })),
    })
}

/// A publish's `Idempotency-Key` (1–255 visible ASCII characters), with the SHA-256 of its
/// event as read: a repeat of a publish (a retry after a lost answer) sends both the same.
/// The event, not the body's bytes: a retry by another client or serializer (other spacing,
/// keys in another order, `"cache_scopes": []` written out) is the same event, not "another
/// request" to refuse, after which a publisher might publish it again under a new key.
fn idempotency_key(req: &Request, body: &PublishEvent) -> Result<Option<(String, PublishDigests)>, ApiError> {
    use sha2::{Digest, Sha256};
    const FIELD: &str = "Idempotency-Key";
    let mut values = req.headers.get_all(FIELD).iter();
    let Some(value) = values.next() else { return Ok(None) };
    if values.next().is_some() {
        return Err(ApiError::validation(FIELD, "given more than once: send it once"));
    }
    let key = value
        .to_str()
        .ok()
        .filter(|k| (1..=255).contains(&k.len()) && k.bytes().all(|b| b.is_ascii_graphic()))
        .ok_or_else(|| ApiError::validation(FIELD, "must be 1–255 visible ASCII characters (no spaces)"))?;
    // serde_json's maps are sorted (no `preserve_order`): one encoding per event, written
    // as the array `[event_type, payload, cache_scopes]` straight from the request's fields.
    let event = serde_json::to_vec(&(&body.event_type, &body.payload, &body.cache_scopes))
        .map_err(|e| ApiError::Internal(anyhow::anyhow!("encode the event for its Idempotency-Key: {e}")))?;
    let digests = PublishDigests { event: Sha256::digest(event).into(), body: Sha256::digest(&req.body).into() };
    Ok(Some((key.to_string(), digests)))
}

/// The refusal of a `before=` that is no delivery ID: any one is a position in the list.
const NOT_A_POSITION: &str =
    "not a delivery_id as this list returns them: any one works as a position, this webhook's or not";

/// `GET …/deliveries?status=&limit=&before=`: newest first, at most `limit` (default 100,
/// max 1000), older than the delivery `before` when given (the last ID of the previous page).
/// Delivery IDs start with their event's time-ordered ID, so key order is time order and a
/// page reads only what it returns (plus, with `status`, the deliveries it skips).
async fn deliveries(state: &HttpState, req: &Request, id: &str) -> Result<Response, ApiError> {
    req.authenticate_list(state, &["status", "limit", "before"])?;
    let w = load(state, id)?;
    let status =
        match req.query.get("status") {
            None => None,
            Some(s) => Some(DeliveryStatus::parse(s).ok_or_else(|| {
                ApiError::validation("status", format!("{s:?} is not one of pending, succeeded, dead"))
            })?),
        };
    let limit = req.page_limit()?;
    let before = match req.query.get("before") {
        None => None,
        Some(b) => Some(
            DeliveryId::parse(b)
                .filter(|d| crate::delivery::model::is_delivery_id_shape(d.as_str()))
                .ok_or_else(|| ApiError::validation("before", NOT_A_POSITION))?,
        ),
    };
    // A page may end before `limit` at its byte budget: the next one still starts at
    // `before=<its last delivery_id>`.
    let mut page = Page::array(limit);
    let prefix = format!("{}/", w.webhook_id.as_str());
    state.shared.store.for_each_rev::<Delivery>(
        Keyspace::DELIVERIES,
        &prefix,
        before.as_ref().map(DeliveryId::as_str),
        |_, d| {
            if status.is_none_or(|s| s == d.status) {
                page.push(&shown(&w, &d));
            }
            !page.full()
        },
    )?;
    Ok(page.finish())
}

async fn delivery(state: &HttpState, req: &Request, id: &str, did: &str) -> Result<Response, ApiError> {
    req.authenticate(state)?;
    let w = load(state, id)?;
    let not_found = || ApiError::NotFound(format!("delivery {did} not found for webhook {id}"));
    let did = DeliveryId::parse(did).ok_or_else(not_found)?;
    let key = crate::delivery::model::delivery_key(&w.webhook_id, &did);
    let d = state.shared.store.get::<Delivery>(Keyspace::DELIVERIES, &key)?.ok_or_else(not_found)?;
    Ok(json(StatusCode::OK, &shown(&w, &d)))
}

/// A delivery as the API shows it; a pending one of a paused webhook says why its
/// `next_attempt_at` may be in the past.
fn shown(w: &StoredWebhook, d: &Delivery) -> serde_json::Value {
    let mut view = d.view();
    if !w.is_active && d.status == DeliveryStatus::Pending {
        view["held"] = HELD.into();
    }
    view
}

/// Why a pending delivery is not sent (and its `next_attempt_at` may be in the past).
const HELD: &str = "the webhook is paused (is_active: false); sent when it is resumed";

async fn retry(state: &HttpState, req: &Request, id: &str, did: &str) -> Result<Response, ApiError> {
    req.authenticate(state)?;
    req.no_fields()?;
    let webhook_id = webhook_id(id)?;
    let delivery_id = DeliveryId::parse(did)
        .ok_or_else(|| ApiError::NotFound(format!("delivery {did} not found for webhook {id}")))?;
    let reg = registry(state)?;
    let answer =
        ractor::call_t!(reg, |reply| DeliveryMsg::Retry { webhook_id: webhook_id.clone(), delivery_id, reply }, 30_000);
    let (mut view, d) = match answer {
        Ok(r) => r?,
        // The webhook's worker stopped with the retry in its mailbox: deleted meanwhile (a
        // 404 like any later request gets), or restarting after a failure (503).
        Err(e) => {
            let exists =
                ractor::call_t!(reg, |reply| DeliveryMsg::Exists { webhook_id: webhook_id.clone(), reply }, 5_000);
            return Err(match exists {
                Ok(false) => ApiError::NotFound(format!("webhook {webhook_id} not found")),
                _ => ApiError::Unavailable(format!("the webhook's delivery actor did not answer ({e}); retry shortly")),
            });
        }
    };
    durable(d).await?;
    // (The retry is done and durable: a webhook deleted meanwhile only loses the hint.)
    if load(state, id).is_ok_and(|w| !w.is_active) {
        view["held"] = HELD.into();
    }
    Ok(json(StatusCode::ACCEPTED, &view))
}
