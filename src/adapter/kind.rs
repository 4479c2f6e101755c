//! Every per-provider decision of the ingest pipeline, in one place.
//!
//! The pipeline (`pipeline.rs`) and the actor (`actor.rs`) are provider-agnostic: they ask
//! this module how to read an event type, whether a native signature is present and valid,
//! which document field_mapping / blob_source read ("the metadata document"), the default
//! event filter and file field, the external ID, and what the event does (create, update,
//! delete an object).
//!
//! `generic_webhook` is complete here. The `mux` and `supabase` arms are placeholders that
//! behave like generic except for obvious defaults; **issue 4** replaces them with calls into
//! `adapter/mux.rs` and `adapter/supabase.rs` (Mux-Signature verification, asset metadata,
//! API fetch; Supabase payload parsing). Mux enrichment needs an HTTP fetch: it must not run
//! inside the actor's handler. [`MetadataSource::Fetch`] is the seam for it: the actor spawns
//! the fetch and receives the document back as a continuation message (see `actor.rs`).

use bytes::Bytes;
use serde_json::Value;

use super::path;
use super::spec::SourceAdapter;
use crate::catalog::connection::ProviderConfig;
use crate::catalog::ProviderType;

/// The request headers adapters look at (copied out of the HTTP request by the frontend).
#[derive(Debug, Clone, Default)]
pub struct SignatureHeaders {
    /// `X-Webhook-Secret`, accepted by every adapter.
    pub webhook_secret: Option<String>,
    /// `Mux-Signature: t=…,v1=…` (verified in issue 4).
    pub mux_signature: Option<String>,
}

/// Outcome of a provider-native signature check.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NativeSignature {
    /// The provider has no native scheme or the request carries no such header.
    Absent,
    Valid,
    Invalid,
}

/// Checks the provider's own signature scheme, if any.
pub fn native_signature(
    kind: ProviderType,
    headers: &SignatureHeaders,
    _raw_body: &Bytes,
    _connection: Option<&ProviderConfig>,
) -> NativeSignature {
    match kind {
        ProviderType::GenericWebhook | ProviderType::Supabase => NativeSignature::Absent,
        // Issue 4: verify `Mux-Signature` with the connection's webhook_signing_secret
        // (adapter/mux.rs). Until then a Mux-Signature alone never authenticates.
        ProviderType::Mux => match headers.mux_signature {
            None => NativeSignature::Absent,
            Some(_) => NativeSignature::Absent,
        },
    }
}

/// Whether the request is authentic: a valid native signature, or the `X-Webhook-Secret`
/// fallback (constant-time, see `spec.rs`).
pub fn authentic(
    adapter: &SourceAdapter,
    headers: &SignatureHeaders,
    raw_body: &Bytes,
    connection: Option<&ProviderConfig>,
) -> bool {
    if native_signature(adapter.adapter_type, headers, raw_body, connection) == NativeSignature::Valid {
        return true;
    }
    headers.webhook_secret.as_deref().is_some_and(|s| adapter.secret_matches(s))
}

/// The event's type, if the payload names one.
pub fn event_type(adapter: &SourceAdapter, payload: &Value) -> Option<String> {
    let field = match adapter.adapter_type {
        ProviderType::GenericWebhook => adapter.event_type_field.as_deref().unwrap_or("type"),
        // Mux (`type`: video.asset.ready) and Supabase (`type`: INSERT/UPDATE/DELETE) both use
        // a top-level `type`.
        ProviderType::Mux | ProviderType::Supabase => "type",
    };
    path::lookup(payload, field).and_then(path::scalar_string)
}

/// Event types handled when the adapter has no `event_filter`; `None` means every event.
pub fn default_event_types(kind: ProviderType) -> Option<&'static [&'static str]> {
    match kind {
        ProviderType::GenericWebhook => None,
        ProviderType::Mux => Some(&["video.asset.ready"]),
        ProviderType::Supabase => Some(&["INSERT", "UPDATE"]),
    }
}

/// Dedup key used when the adapter sets none.
pub fn default_dedup_key(kind: ProviderType) -> Option<&'static str> {
    match kind {
        ProviderType::GenericWebhook | ProviderType::Supabase => None,
        // Mux retries deliveries: its asset ID is the natural key (issue 4 may refine).
        ProviderType::Mux => Some("data.id"),
    }
}

/// Where the metadata document (read by field_mapping, blob_source) comes from.
pub enum MetadataSource<'a> {
    /// Available in the payload itself.
    Inline(&'a Value),
    /// Needs an asynchronous fetch (issue 4: Mux asset API). The actor must run it outside
    /// its handler and continue with the fetched document; no variant is produced yet.
    #[allow(dead_code)]
    Fetch(FetchRequest),
}

/// What to fetch for [`MetadataSource::Fetch`] (filled in by issue 4).
#[derive(Debug, Clone)]
pub struct FetchRequest {
    pub external_id: String,
}

/// The metadata document of an event.
pub fn metadata_document<'a>(kind: ProviderType, payload: &'a Value) -> MetadataSource<'a> {
    match kind {
        ProviderType::GenericWebhook | ProviderType::Mux => MetadataSource::Inline(payload),
        // Supabase database webhooks carry the row under `record` (issue 4 may refine).
        ProviderType::Supabase => MetadataSource::Inline(payload.get("record").unwrap_or(payload)),
    }
}

/// The default `blob_source.file_field` when the adapter sets none.
pub fn default_file_field(kind: ProviderType) -> Option<&'static str> {
    match kind {
        ProviderType::GenericWebhook | ProviderType::Supabase => None,
        // Issue 4 derives playback_url in the Mux metadata document.
        ProviderType::Mux => Some("playback_url"),
    }
}

/// The upstream's ID of the thing the event is about (object `source.external_id`).
pub fn external_id(kind: ProviderType, payload: &Value, dedup_value: Option<&str>) -> Option<String> {
    match kind {
        ProviderType::GenericWebhook => dedup_value.map(str::to_string),
        ProviderType::Mux => path::lookup(payload, "data.id").and_then(path::scalar_string),
        ProviderType::Supabase => {
            path::lookup(payload, "record.id").and_then(path::scalar_string).or(dedup_value.map(str::to_string))
        }
    }
}

/// What an accepted event does to the bucket's objects.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Operation {
    Create,
    /// Re-map the objects with this external ID (issue 4).
    Update,
    /// Delete the objects with this external ID (issue 4).
    Delete,
}

pub fn operation(kind: ProviderType, _event_type: Option<&str>) -> Operation {
    match kind {
        // Issue 4: Supabase UPDATE/DELETE and Mux asset updates map to Update/Delete.
        ProviderType::GenericWebhook | ProviderType::Mux | ProviderType::Supabase => Operation::Create,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn generic_reads_type_from_configured_field() {
        let mut a = crate::adapter::pipeline::tests::adapter(json!({"adapter_type": "generic_webhook"}));
        assert_eq!(event_type(&a, &json!({"type": "x.y"})).as_deref(), Some("x.y"));
        a.event_type_field = Some("meta.kind".into());
        assert_eq!(event_type(&a, &json!({"meta": {"kind": "k"}})).as_deref(), Some("k"));
        assert_eq!(event_type(&a, &json!({"type": "x"})), None);
        assert_eq!(default_event_types(ProviderType::GenericWebhook), None);
        assert_eq!(operation(ProviderType::GenericWebhook, Some("x")), Operation::Create);
    }
}
