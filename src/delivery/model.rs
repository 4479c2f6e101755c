//! Webhooks and deliveries: the stored shapes, the API bodies and their validation, and
//! the event-type catalog.
//!
//! Store layout (keyspaces from `store`):
//! - `wh/{webhook_id}` → [`StoredWebhook`]: public fields, channels with secrets redacted,
//!   and `sealed` = the signing secret and full channel configs, encrypted (`crypto.rs`,
//!   AAD = webhook ID).
//! - `dlv/{webhook_id}/{delivery_id}` → [`Delivery`]: one event to one channel of one
//!   webhook, with its attempts. Keyed under the webhook so its queue is one prefix scan
//!   and deleting a webhook deletes its queue.
//! - `evt/{event_id}` → the [`EventRecord`] its deliveries send, stored once however many
//!   webhooks receive it (a delivery names it by ID), so each attempt's outcome rewrites a
//!   small record rather than a copy of the event. Deleted by the registry's hourly sweep
//!   once no delivery names it.

use std::sync::Arc;

use serde::{Deserialize, Serialize};

use super::channel::{ChannelConfig, ChannelRules};
use crate::error::ApiError;
use crate::events::EventRecord;
use crate::ids::{DeliveryId, EventId, WebhookId};

/// The catalog of event types hookline (and the platform it mirrors) emits. Any other
/// well-formed type can still be published with `POST /v1/events` and subscribed to.
pub const EVENT_TYPES: &[(&str, &str)] = &[
    ("object.created", "An object was registered in a bucket"),
    ("object.updated", "An object's metadata changed"),
    ("object.deleted", "An object was deleted"),
    ("batch.completed", "A batch finished processing"),
    ("batch.failed", "A batch failed"),
    ("alert.triggered", "An alert was raised on an object (POST …/objects/{object_id}/alerts)"),
    ("cluster.created", "A cluster was created"),
    ("cluster.completed", "A clustering run finished"),
    ("cluster.execution.completed", "A cluster execution completed"),
    ("cluster.execution.failed", "A cluster execution failed"),
    ("taxonomy.created", "A taxonomy was created"),
    ("taxonomy.materialized", "Taxonomy enrichment completed"),
    ("collection.documents.written", "Documents were written to a collection"),
];

/// A well-formed event type name: at most 100 bytes, words of `[A-Za-z0-9_-]` joined by dots.
pub fn valid_event_type(s: &str) -> bool {
    // Dots separate words: `object.` or `a..b` would be families with an empty member
    // (`object.*` matched `object.`).
    s.len() <= 100
        && s.split('.')
            .all(|word| !word.is_empty() && word.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-'))
}

/// Whether a subscription pattern matches: `*` (all), `prefix.*`, or the exact type.
pub fn matches(pattern: &str, event_type: &str) -> bool {
    if pattern == "*" {
        return true;
    }
    match pattern.strip_suffix(".*") {
        Some(prefix) => event_type.strip_prefix(prefix).is_some_and(|r| r.starts_with('.')),
        None => pattern == event_type,
    }
}

/// The secret part of a webhook, stored only encrypted.
#[derive(Serialize, Deserialize)]
pub struct WebhookSecrets {
    pub signing_secret: String,
    pub channels: Vec<ChannelConfig>,
}

/// A webhook as stored.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct StoredWebhook {
    pub webhook_id: WebhookId,
    pub webhook_name: String,
    pub event_types: Vec<String>,
    /// Channels as shown by the API (secrets redacted).
    pub channels: Vec<serde_json::Value>,
    pub is_active: bool,
    pub created_at: String,
    pub updated_at: String,
    pub last_error: Option<String>,
    /// When `last_error` was set (absent for errors stored before it was recorded, and
    /// cleared with the error).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_error_at: Option<String>,
    /// [`WebhookSecrets`] sealed under the master key.
    pub sealed: String,
}

impl StoredWebhook {
    pub fn view(&self) -> serde_json::Value {
        // Channels stored before IDs existed are shown with their legacy ones.
        let channels: Vec<serde_json::Value> =
            (self.channels.iter().enumerate()).map(|(i, c)| with_channel_id(c.clone(), &self.channel_id(i))).collect();
        serde_json::json!({
            "webhook_id": self.webhook_id,
            "webhook_name": self.webhook_name,
            "event_types": self.event_types,
            "channels": channels,
            "is_active": self.is_active,
            "created_at": self.created_at,
            "updated_at": self.updated_at,
            "last_error": self.last_error,
            "last_error_at": self.last_error_at,
        })
    }

    pub fn subscribed(&self, event_type: &str) -> bool {
        self.event_types.iter().any(|p| matches(p, event_type))
    }

    /// The stable ID of channel `index` (see [`CHANNEL_ID`]).
    pub fn channel_id(&self, index: usize) -> std::borrow::Cow<'_, str> {
        match self.channels.get(index).and_then(|c| c.get(CHANNEL_ID)).and_then(|v| v.as_str()) {
            Some(id) => std::borrow::Cow::Borrowed(id),
            None => std::borrow::Cow::Owned(legacy_channel_id(index)),
        }
    }

    /// The stable ID of each channel, in order.
    pub fn channel_ids(&self) -> Vec<String> {
        (0..self.channels.len()).map(|i| self.channel_id(i).into_owned()).collect()
    }
}

/// A channel's JSON (as stored or shown) carrying its ID.
pub fn with_channel_id(mut channel: serde_json::Value, id: &str) -> serde_json::Value {
    if let Some(m) = channel.as_object_mut() {
        m.insert(CHANNEL_ID.into(), serde_json::Value::String(id.to_string()));
    }
    channel
}

/// The key of a channel's stable ID, in the stored (redacted) channel and in the API.
///
/// Pending deliveries name their channel by this ID, not by its position, so a PATCH that
/// removes or reorders channels cannot send a delivery to another channel: a delivery
/// follows its channel wherever it moves, and fails (`dead`) if its channel is removed.
pub const CHANNEL_ID: &str = "channel_id";

/// A new channel ID.
pub fn new_channel_id() -> String {
    format!("ch_{}", crate::ids::random_alphanumeric(10))
}

/// The ID of channel `index` of a webhook stored before channels had IDs (and of that
/// webhook's deliveries, which name their channel by index): stable until its first PATCH,
/// which keeps it for the channels it keeps.
pub fn legacy_channel_id(index: usize) -> String {
    format!("ch_{index}")
}

/// The keys of a channel object in a create/PATCH body.
const CHANNEL_KEYS: &[&str] = &["channel", "configs", CHANNEL_ID];

/// Takes the `channel_id` out of each channel object of a create/PATCH body, in order (the
/// channel configs themselves refuse unknown fields). 422 when one is not a string.
pub fn take_channel_ids(body: &mut serde_json::Value) -> Result<Vec<Option<String>>, ApiError> {
    let Some(channels) = body.get_mut("channels").and_then(|c| c.as_array_mut()) else { return Ok(Vec::new()) };
    let mut ids = Vec::with_capacity(channels.len());
    for (i, c) in channels.iter_mut().enumerate() {
        // Named here, where `channel_id` is known: serde's own refusal would list only the
        // other two, and a mistyped `chanel_id` would read as "channel_id is not taken".
        if let Some(key) = c.as_object().and_then(|m| m.keys().find(|k| !CHANNEL_KEYS.contains(&k.as_str()))) {
            return Err(ApiError::validation(
                format!("channels[{i}].{key}"),
                format!("unknown field {key:?}: a channel takes channel, configs and channel_id"),
            ));
        }
        let id = match c.as_object_mut().and_then(|m| m.remove(CHANNEL_ID)) {
            None | Some(serde_json::Value::Null) => None,
            Some(serde_json::Value::String(s)) => Some(s),
            Some(_) => return Err(ApiError::validation(format!("channels[{i}].{CHANNEL_ID}"), "must be a string")),
        };
        ids.push(id);
    }
    Ok(ids)
}

/// `POST /v1/organizations/webhooks` body.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CreateWebhook {
    pub webhook_name: String,
    pub event_types: Vec<String>,
    pub channels: Vec<ChannelConfig>,
    #[serde(default = "yes")]
    pub is_active: bool,
    /// Ignored on create (IDs are assigned); see [`take_channel_ids`].
    #[serde(skip)]
    pub channel_ids: Vec<Option<String>>,
}

fn yes() -> bool {
    true
}

/// `PATCH /v1/organizations/webhooks/{id}` body: any subset of the fields.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PatchWebhook {
    #[serde(default, deserialize_with = "crate::util::present")]
    pub webhook_name: Option<String>,
    #[serde(default, deserialize_with = "crate::util::present")]
    pub event_types: Option<Vec<String>>,
    #[serde(default, deserialize_with = "crate::util::present")]
    pub channels: Option<Vec<ChannelConfig>>,
    #[serde(default, deserialize_with = "crate::util::present")]
    pub is_active: Option<bool>,
    /// `true`: a new `signing_secret` replaces the current one (returned once, in the PATCH
    /// answer); every attempt made after the PATCH is signed with it.
    #[serde(default, deserialize_with = "crate::util::null_as_default")]
    pub rotate_signing_secret: bool,
    /// The `channel_id` sent with each channel, if any ([`take_channel_ids`]).
    #[serde(skip)]
    pub channel_ids: Vec<Option<String>>,
    /// The GET view's own `webhook_id`: a view sent back whole is taken; another webhook's
    /// ID is refused (`http/outbound.rs`), since it names another webhook.
    #[serde(default)]
    pub webhook_id: Option<String>,
    /// The GET view's read-only fields: ignored, so a view can be edited and sent back.
    #[serde(default)]
    pub created_at: Option<serde::de::IgnoredAny>,
    #[serde(default)]
    pub updated_at: Option<serde::de::IgnoredAny>,
    #[serde(default)]
    pub last_error: Option<serde::de::IgnoredAny>,
    #[serde(default)]
    pub last_error_at: Option<serde::de::IgnoredAny>,
    /// What a view or an answer adds: the view's `error` (secrets that cannot be opened), an
    /// answer's `warnings`.
    #[serde(default)]
    pub error: Option<serde::de::IgnoredAny>,
    #[serde(default)]
    pub warnings: Option<serde::de::IgnoredAny>,
}

pub fn validate_name(name: &str) -> Result<(), ApiError> {
    crate::util::check_name("webhook_name", name, 200)
}

/// `event_types` without repeats, in the order first given: a type listed twice is one
/// subscription (stored, shown and warned about once).
pub fn dedup_event_types(types: &mut Vec<String>) {
    let mut seen = std::collections::HashSet::with_capacity(types.len());
    types.retain(|t| seen.insert(t.clone()));
}

pub fn validate_event_types(types: &[String]) -> Result<(), ApiError> {
    if types.is_empty() {
        return Err(ApiError::validation("event_types", "list at least one event type (\"*\" for all)"));
    }
    // As for an adapter's event filter: `*` and `prefix.*` cover families.
    if types.len() > 100 {
        return Err(ApiError::validation("event_types", "at most 100 event types (use \"prefix.*\" for a family)"));
    }
    check_each_event_type(types)
}

/// Each of `types` is an event type, `*` or `prefix.*`. Run on the list as given, before
/// [`dedup_event_types`], so that the 422 names the index the caller sent.
pub fn check_each_event_type(types: &[String]) -> Result<(), ApiError> {
    for (i, t) in types.iter().enumerate() {
        let base = t.strip_suffix(".*").unwrap_or(t);
        // A family whose members would all be longer than an event type may be matches none.
        if t.ends_with(".*") && valid_event_type(base) && !valid_event_type(&format!("{base}.x")) {
            return Err(ApiError::validation(
                format!("event_types[{i}]"),
                format!(
                    "{t:?} can match no event: every event type it covers would be longer than an event type may be"
                ),
            ));
        }
        if t != "*" && !valid_event_type(base) {
            return Err(ApiError::validation(
                format!("event_types[{i}]"),
                format!(
                    "{t:?} is not an event type (words of letters, digits, _ -, joined by dots; \"*\" for all; \"prefix.*\" for a family)"
                ),
            ));
        }
    }
    Ok(())
}

pub fn validate_channels(channels: &[ChannelConfig], rules: ChannelRules) -> Result<(), ApiError> {
    if channels.is_empty() {
        return Err(ApiError::validation("channels", "list at least one channel"));
    }
    if channels.len() > 10 {
        return Err(ApiError::validation("channels", "at most 10 channels per webhook"));
    }
    for (i, c) in channels.iter().enumerate() {
        c.validate(&format!("channels[{i}]"), rules)?;
    }
    Ok(())
}

impl CreateWebhook {
    pub fn validate(&self, rules: ChannelRules) -> Result<(), ApiError> {
        validate_name(&self.webhook_name)?;
        validate_event_types(&self.event_types)?;
        validate_channels(&self.channels, rules)
    }
}

impl PatchWebhook {
    /// Everything but `webhook_name`, which is checked against the stored one (see
    /// [`PatchWebhook::validate_name_against`]).
    pub fn validate(&self, rules: ChannelRules) -> Result<(), ApiError> {
        if let Some(t) = &self.event_types {
            validate_event_types(t)?;
        }
        if let Some(c) = &self.channels {
            validate_channels(c, rules)?;
        }
        Ok(())
    }

    /// A new `webhook_name` is checked; the one the webhook has, sent back (its GET view,
    /// edited elsewhere), is not checked again: a name saved before a rule was added must not
    /// refuse every other change.
    pub fn validate_name_against(&self, stored: &str) -> Result<(), ApiError> {
        match &self.webhook_name {
            Some(n) if n != stored => validate_name(n),
            _ => Ok(()),
        }
    }
}

/// `POST /v1/events` body.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PublishEvent {
    pub event_type: String,
    pub payload: serde_json::Value,
    /// Optional: left out or `null`, none.
    #[serde(default, deserialize_with = "crate::util::null_as_default")]
    pub cache_scopes: Vec<serde_json::Value>,
}

impl PublishEvent {
    pub fn validate(&self) -> Result<(), ApiError> {
        if !valid_event_type(&self.event_type) {
            return Err(ApiError::validation(
                "event_type",
                "must be 1–100 characters: words of letters, digits, _ -, joined by dots (object.created)",
            ));
        }
        // Like every event hookline publishes itself: templates and receivers read fields.
        if !self.payload.is_object() {
            return Err(ApiError::validation("payload", "must be a JSON object"));
        }
        Ok(())
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DeliveryStatus {
    Pending,
    Succeeded,
    Dead,
}

impl DeliveryStatus {
    pub fn parse(s: &str) -> Option<DeliveryStatus> {
        match s {
            "pending" => Some(DeliveryStatus::Pending),
            "succeeded" => Some(DeliveryStatus::Succeeded),
            "dead" => Some(DeliveryStatus::Dead),
            _ => None,
        }
    }
}

/// One attempt, as logged on the delivery.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Attempt {
    pub at: String,
    pub status_code: Option<u16>,
    pub error: Option<String>,
    pub duration_ms: u64,
}

/// Most attempts kept on a delivery (the oldest are dropped beyond it).
pub const MAX_ATTEMPTS_KEPT: usize = 50;

/// One event to one channel of one webhook.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Delivery {
    pub delivery_id: DeliveryId,
    pub webhook_id: WebhookId,
    pub channel_index: usize,
    /// The channel's stable ID ([`CHANNEL_ID`]); absent in deliveries stored before IDs
    /// existed, whose channel is [`legacy_channel_id`] of their index.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub channel_id: Option<String>,
    pub channel: String,
    pub status: DeliveryStatus,
    pub attempts: Vec<Attempt>,
    /// Failed attempts since `window_start_ms` (drives the schedule).
    pub failures: u32,
    /// When the current retry window began (queued, or manually re-queued): `max_age`
    /// counts from here.
    pub window_start_ms: u64,
    /// When the next attempt is due (pending only).
    pub next_attempt_ms: Option<u64>,
    /// When it became `succeeded` or `dead` (absent while pending, and in deliveries stored
    /// before this was recorded): the retention counts from here.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub finished_at_ms: Option<u64>,
    pub created_at: String,
    pub event_id: EventId,
    pub event_type: String,
    /// Recipients (as written in the channel's `to`: a PATCH may reorder or change the list)
    /// already reached by earlier attempts of a multi-recipient channel (SMS, email): a retry sends
    /// only to the others.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub done_recipients: Vec<String>,
    /// The event to send, stored once under `evt/` (see the module docs) and attached when
    /// the delivery is queued; `None` only if that record is gone.
    #[serde(skip)]
    pub event: Option<Arc<EventRecord>>,
}

/// Whether `id` has the shape [`Delivery::new`] gives: `del_{event ULID}_{webhook}_{index}`
/// (a `before` cursor of another shape would page from an arbitrary place).
pub fn is_delivery_id_shape(id: &str) -> bool {
    let mut parts = id.splitn(4, '_');
    let (Some("del"), Some(evt), Some(wh), Some(index)) = (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return false;
    };
    // As IDs are written (a ULID in lower case, an index without sign or leading zero): a
    // ULID in capitals parses too, but sorts before every stored key, and its page would be
    // empty, which ends a client's paging.
    let canonical_index = index == "0" || (!index.starts_with('0') && index.bytes().all(|b| b.is_ascii_digit()));
    ulid::Ulid::from_string(evt).is_ok()
        && evt.bytes().all(|b| !b.is_ascii_uppercase())
        && !wh.is_empty()
        && canonical_index
        && index.parse::<usize>().is_ok()
}

impl Delivery {
    /// The delivery of `event` to channel `index` of `webhook`. The ID is derived from the
    /// event, webhook and channel, so an event fanned out twice (crash between the fan-out
    /// write and the outbox delete cannot happen, but a restored backup could) yields the
    /// same IDs, and receivers see the same `webhook-id`.
    pub fn new(
        event: Arc<EventRecord>,
        webhook: &WebhookId,
        index: usize,
        channel_id: &str,
        channel: &str,
        now_ms: u64,
    ) -> Delivery {
        let evt = event.event_id.as_str().strip_prefix("evt_").unwrap_or(event.event_id.as_str());
        let wh = webhook.as_str().strip_prefix("wh_").unwrap_or(webhook.as_str());
        let id = format!("del_{evt}_{wh}_{index}");
        Delivery {
            delivery_id: DeliveryId::parse(&id).unwrap_or_else(DeliveryId::generate),
            webhook_id: webhook.clone(),
            channel_index: index,
            channel_id: Some(channel_id.to_string()),
            channel: channel.to_string(),
            status: DeliveryStatus::Pending,
            attempts: Vec::new(),
            failures: 0,
            window_start_ms: now_ms,
            next_attempt_ms: Some(now_ms),
            finished_at_ms: None,
            created_at: crate::util::millis_to_rfc3339(now_ms),
            event_id: event.event_id.clone(),
            event_type: event.event_type.clone(),
            done_recipients: Vec::new(),
            event: Some(event),
        }
    }

    /// The ID of the channel this delivery goes to.
    pub fn channel_ref(&self) -> String {
        self.channel_id.clone().unwrap_or_else(|| legacy_channel_id(self.channel_index))
    }

    /// Whether this delivery goes to the channel `id` (as `channel_ref() == id`, without
    /// building the ID: checked for every delivery queued and every outcome).
    pub fn channel_is(&self, id: &str) -> bool {
        match &self.channel_id {
            Some(c) => c == id,
            None => legacy_channel_id(self.channel_index) == id,
        }
    }

    /// Store key (within `Keyspace::DELIVERIES`).
    pub fn key(&self) -> String {
        delivery_key(&self.webhook_id, &self.delivery_id)
    }

    pub fn view(&self) -> serde_json::Value {
        serde_json::json!({
            "delivery_id": self.delivery_id,
            "webhook_id": self.webhook_id,
            "event_id": self.event_id,
            "event_type": self.event_type,
            "channel": self.channel,
            "channel_id": self.channel_ref(),
            "status": self.status,
            "attempts": self.attempts,
            "next_attempt_at": self.next_attempt_ms.filter(|_| self.status == DeliveryStatus::Pending).map(crate::util::millis_to_rfc3339),
            // One finished before finish times were stored shows its last attempt's time.
            "finished_at": (self.status != DeliveryStatus::Pending).then(|| {
                self.finished_at_ms.map(crate::util::millis_to_rfc3339).or_else(|| self.attempts.last().map(|a| a.at.clone()))
            }).flatten(),
            "created_at": self.created_at,
        })
    }

    pub fn log_attempt(&mut self, a: Attempt) {
        self.attempts.push(a);
        if self.attempts.len() > MAX_ATTEMPTS_KEPT {
            let extra = self.attempts.len() - MAX_ATTEMPTS_KEPT;
            self.attempts.drain(..extra);
        }
    }
}

pub fn delivery_key(webhook: &WebhookId, delivery: &DeliveryId) -> String {
    format!("{}/{}", webhook.as_str(), delivery.as_str())
}

/// An error as a worker states it (`"{channel} delivery {delivery_id}: {error}"`), without
/// its delivery ID: what two deliveries failing the same way share.
pub fn without_delivery_id(error: &str) -> (&str, &str) {
    match error.split_once(" delivery ").and_then(|(channel, rest)| Some((channel, rest.split_once(": ")?.1))) {
        Some(failure) => failure,
        None => (error, ""),
    }
}

/// The kind of failure an error names, for when a failure began (`last_error_at`): as
/// [`without_delivery_id`], and an HTTP answer by its status alone (`HTTP 500`), since the
/// excerpt of its body after it often differs from one attempt to the next (a request ID, a
/// time) while the receiver fails the same way.
pub fn failure_kind(error: &str) -> (&str, &str) {
    let (channel, failure) = without_delivery_id(error);
    match failure.strip_prefix("HTTP ").and_then(|rest| rest.get(..3)).filter(|c| c.bytes().all(|b| b.is_ascii_digit()))
    {
        Some(_) => (channel, failure.split_once(": ").map_or(failure, |(status, _)| status)),
        None => (channel, failure),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_http_failure_is_of_its_status_whatever_its_body() {
        let kind = failure_kind;
        assert_eq!(kind("webhook delivery del_1: HTTP 500: boom, request 7"), ("webhook", "HTTP 500"));
        assert_eq!(kind("webhook delivery del_2: HTTP 500: boom, request 8"), kind("webhook delivery del_1: HTTP 500"));
        assert_ne!(kind("webhook delivery del_1: HTTP 500: x"), kind("webhook delivery del_1: HTTP 503: x"));
        // Other failures as written (their text is no answer's body).
        assert_eq!(kind("sms delivery del_1: connect: refused"), ("sms", "connect: refused"));
        assert_eq!(kind("webhook delivery del_1: HTTP/2 reset: x"), ("webhook", "HTTP/2 reset: x"));
    }

    #[test]
    fn pattern_matching() {
        assert!(matches("*", "object.created"));
        assert!(matches("object.created", "object.created"));
        assert!(!matches("object.created", "object.updated"));
        assert!(matches("object.*", "object.deleted"));
        assert!(matches("cluster.*", "cluster.execution.failed"));
        assert!(!matches("object.*", "objects.created"));
        assert!(!matches("object.*", "object"));
    }

    #[test]
    fn repeated_event_types_are_one_in_the_order_given() {
        let mut types: Vec<String> = ["zz.a", "b", "zz.a", "*", "b"].iter().map(|s| s.to_string()).collect();
        dedup_event_types(&mut types);
        assert_eq!(types, ["zz.a", "b", "*"]);
    }

    #[test]
    fn delivery_ids_are_deterministic_and_valid() {
        let ev = Arc::new(EventRecord {
            event_id: crate::ids::EventId::generate(),
            event_type: "x".into(),
            created_at: "t".into(),
            payload: serde_json::Value::Null,
            cache_scopes: vec![],
            stored: false,
            stored_size: Default::default(),
        });
        let wh = WebhookId::generate();
        let a = Delivery::new(ev.clone(), &wh, 0, "ch_a", "webhook", 1);
        let b = Delivery::new(ev, &wh, 0, "ch_a", "webhook", 2);
        assert_eq!(a.delivery_id, b.delivery_id);
        assert!(DeliveryId::parse(a.delivery_id.as_str()).is_some());
        assert!(is_delivery_id_shape(a.delivery_id.as_str()), "{}", a.delivery_id.as_str());
        for bad in ["del_nope", "del_zzzz", "del_", "evt_x", "del_01jz0000000000000000000000_wh_x"] {
            assert!(!is_delivery_id_shape(bad), "{bad}");
        }
    }
}
