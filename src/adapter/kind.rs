//! Every per-provider decision of the ingest pipeline, in one place.
//!
//! The pipeline (`pipeline.rs`) and the actor (`actor.rs`) are provider-agnostic: they ask
//! this module how to read an event type, whether a native signature is present and valid,
//! which document field_mapping / blob_source read ("the metadata document"), the default
//! event filter and file field, the external ID, and what the event does (create, update,
//! delete an object).
//!
//! `mux` reads `adapter/mux/` (Mux-Signature, asset metadata), `supabase` reads
//! `adapter/supabase.rs` (database-webhook payloads). Mux enrichment needs an HTTP fetch: it
//! must not run inside the actor's handler. [`MetadataSource::Fetch`] is the seam for it: the
//! actor spawns the fetch and receives the asset back as a continuation message (`actor/fetch.rs`).
//!
//! The metadata documents (what field_mapping and blob_source read):
//! - generic_webhook: the payload.
//! - mux: the payload, with `data` replaced by the asset used (the fetched one when the
//!   webhook lacked playback ids), and the adapter metadata of `mux::asset_metadata`
//!   (`asset_id`, `playback_url`, `duration`, …) at the top level; those win over a payload
//!   key of the same name (`created_at` is the asset's). So `duration` and `data.duration`
//!   both work, and seed 000's `dedup_key: data.id` reads the raw payload as before.
//! - supabase: the payload with `record` = the row (on DELETE, the deleted row), so mappings
//!   read `record.*` for every operation.

use std::borrow::Cow;

use bytes::Bytes;
use serde_json::Value;

use super::path;
use super::pipeline::PayloadError;
use super::spec::SourceAdapter;
use super::{mux, supabase};
use crate::catalog::connection::ProviderConfig;
use crate::catalog::ProviderType;

/// The request headers adapters look at (copied out of the HTTP request by the frontend).
#[derive(Clone, Default)]
pub struct SignatureHeaders {
    /// `X-Webhook-Secret`, accepted by every adapter.
    pub webhook_secret: Option<String>,
    /// `Mux-Signature: t=…,v1=…`, verified with the connection's `webhook_signing_secret`.
    pub mux_signature: Option<String>,
}

// Hand-written: whether each header came, not the secret it carries (a message holding
// these may be printed for debugging).
impl std::fmt::Debug for SignatureHeaders {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SignatureHeaders")
            .field("webhook_secret", &self.webhook_secret.as_ref().map(|_| "********"))
            .field("mux_signature", &self.mux_signature.as_ref().map(|_| "(set)"))
            .finish()
    }
}

/// Outcome of a provider-native signature check.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NativeSignature {
    /// The provider has no native scheme or the request carries no such header.
    Absent,
    /// A Mux adapter got a `Mux-Signature` but has no signing secret to check it with.
    NoSecret,
    Valid,
    Invalid(mux::MuxSignatureError),
}

/// Checks the provider's own signature scheme, if any. `connection` is the decrypted
/// connection (or inline credentials); without a signing secret a native signature cannot
/// authenticate ([`NativeSignature::NoSecret`]) and the `X-Webhook-Secret` fallback decides.
pub fn native_signature(
    kind: ProviderType,
    mux_signature: Option<&str>,
    raw_body: &Bytes,
    connection: Option<&ProviderConfig>,
) -> NativeSignature {
    match kind {
        ProviderType::GenericWebhook | ProviderType::Supabase => NativeSignature::Absent,
        ProviderType::Mux => {
            let secrets = connection.map(ProviderConfig::mux_signing_secrets).unwrap_or_default();
            let Some(header) = mux_signature else {
                return NativeSignature::Absent;
            };
            if secrets.is_empty() {
                return NativeSignature::NoSecret;
            }
            let now = time::OffsetDateTime::now_utc().unix_timestamp();
            match mux::verify_signature(header, raw_body, &secrets, now, mux::DEFAULT_TOLERANCE_SECS) {
                Ok(()) => NativeSignature::Valid,
                Err(e) => {
                    // The kind only (stale, mismatch, malformed): never the header or secret.
                    tracing::debug!(error = ?e, "Mux-Signature refused");
                    NativeSignature::Invalid(e)
                }
            }
        }
    }
}

/// [`native_signature`] from the head alone, where it decides: a Mux adapter's signature
/// that no body could make valid (no signing secret to check it with, or a header that is
/// malformed or stale). `None`: the body is needed (or there is no native signature).
pub fn native_signature_head(
    kind: ProviderType,
    mux_signature: Option<&str>,
    connection: Option<&ProviderConfig>,
) -> Option<NativeSignature> {
    let (ProviderType::Mux, Some(header)) = (kind, mux_signature) else {
        return None;
    };
    if connection.map(ProviderConfig::mux_signing_secrets).unwrap_or_default().is_empty() {
        return Some(NativeSignature::NoSecret);
    }
    let now = time::OffsetDateTime::now_utc().unix_timestamp();
    mux::check_fresh(header, now, mux::DEFAULT_TOLERANCE_SECS).err().map(NativeSignature::Invalid)
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

/// Dedup key used when the adapter sets none. Dedup applies to creating events only.
pub fn default_dedup_key(kind: ProviderType) -> Option<&'static str> {
    match kind {
        ProviderType::GenericWebhook => None,
        // Mux retries deliveries and may deliver twice: one asset makes one object.
        ProviderType::Mux => Some(mux::DEFAULT_DEDUP_KEY),
        // A row's events share its key, and an UPDATE must never be swallowed as a
        // duplicate of its INSERT: no default (the xid index finds the row's object).
        ProviderType::Supabase => None,
    }
}

/// Where the metadata document (read by field_mapping, blob_source) comes from.
pub enum MetadataSource<'a> {
    /// Available from the payload itself.
    Inline(Cow<'a, Value>),
    /// Needs the Mux asset from the API (the webhook lacks playback ids). The actor runs the
    /// fetch outside its handler, then builds the document with [`mux_document`].
    Fetch(FetchRequest),
}

/// What to fetch for [`MetadataSource::Fetch`].
#[derive(Debug, Clone)]
pub struct FetchRequest {
    pub asset_id: String,
}

/// The metadata document of an event (see the module doc).
pub fn metadata_document<'a>(adapter: &SourceAdapter, payload: &'a Value) -> Result<MetadataSource<'a>, PayloadError> {
    match adapter.adapter_type {
        ProviderType::GenericWebhook => Ok(MetadataSource::Inline(Cow::Borrowed(payload))),
        ProviderType::Mux => {
            // An upload's (a track's) `data` is not the asset: the asset must be fetched.
            if mux::is_asset_part_event(payload) {
                return Ok(match mux::event_asset_id(payload) {
                    Some(id) => MetadataSource::Fetch(FetchRequest { asset_id: id.into() }),
                    None => MetadataSource::Inline(Cow::Borrowed(payload)),
                });
            }
            let Some(asset) = mux::event_asset(payload) else {
                return Ok(MetadataSource::Inline(Cow::Borrowed(payload)));
            };
            match mux::asset_id(asset) {
                Some(id) if mux::needs_fetch(asset) => Ok(MetadataSource::Fetch(FetchRequest { asset_id: id.into() })),
                _ => Ok(MetadataSource::Inline(Cow::Owned(mux_document(payload, asset)))),
            }
        }
        ProviderType::Supabase => Ok(MetadataSource::Inline(Cow::Owned(db_event(payload)?.metadata_document()))),
    }
}

/// The Mux metadata document: the payload with `data` = `asset`, and the asset's adapter
/// metadata at the top level.
pub fn mux_document(payload: &Value, asset: &Value) -> Value {
    let mut doc = match payload {
        Value::Object(m) => m.clone(),
        _ => serde_json::Map::new(),
    };
    doc.insert("data".into(), asset.clone());
    if let Value::Object(meta) = mux::asset_metadata(asset) {
        doc.extend(meta);
    }
    Value::Object(doc)
}

fn db_event(payload: &Value) -> Result<supabase::DbEvent, PayloadError> {
    supabase::DbEvent::parse(payload).map_err(|e| PayloadError(e.to_string()))
}

/// The warning for a Mux adapter that has no API credentials (neither through its
/// connection nor inline): it still works, but maps only what each webhook carries. A
/// `video.asset.ready` without playback IDs then makes an object without its video, which
/// nothing else would point out.
pub fn no_api_credentials(
    shared: &crate::state::Shared,
    bucket_id: &crate::ids::BucketId,
    adapter: &SourceAdapter,
) -> Option<String> {
    if adapter.adapter_type != ProviderType::Mux {
        return None;
    }
    // Unreadable credentials are a different problem, reported when an ingest needs them.
    match super::verify::credentials(shared, bucket_id, adapter) {
        Ok(Some(ProviderConfig::Mux(m))) if m.api_token().is_some() => None,
        Err(_) => None,
        Ok(_) => Some(
            "source_adapter: no Mux API credentials (access_token_id / access_token_secret, in the connection of \
             connection_id or inline): objects are mapped from the asset each webhook carries; when it has no \
             playback IDs there is no playback_url (an object without its video, or a 422 with blob_source.file_field \
             \"playback_url\"), and upload or track events are refused"
                .into(),
        ),
    }
}

/// The warning for an adapter whose type has a default blob (Mux: the playback URL), left
/// without a `blob_source`, in a bucket with no `video` property of type video: that blob
/// goes nowhere, and every object is made without it, which nothing else would point out.
pub fn default_blob_unplaced(schema: &crate::catalog::BucketSchema, adapter: &SourceAdapter) -> Option<String> {
    let file_field = default_file_field(adapter.adapter_type)?;
    let video = super::spec::BlobType::Video.as_str();
    if adapter.blob_source.is_some() || has_default_blob_property(schema) {
        return None;
    }
    // Another property of type video can take it (blob_source.target_property).
    let other = schema.properties.iter().find(|(_, p)| p.kind.as_str() == video).map(|(name, _)| name.as_str());
    let keep = match other {
        Some(name) => format!("set blob_source {{\"target_property\": {name:?}}} to put it there"),
        None => "use a bucket whose schema has a property of type video (bucket_schema is set at creation)".into(),
    };
    Some(format!(
        "source_adapter.blob_source: left out, so the {} file URL ({file_field}) would go to a property \"video\" of \
         type video, which bucket_schema does not have: objects are made without it (metadata only; if that is \
         meant, nothing to do). To keep it, {keep}",
        adapter.adapter_type.as_str()
    ))
}

/// The property an adapter's default blob goes to when it has no `blob_source`.
pub const DEFAULT_BLOB_PROPERTY: &str = "video";

/// Whether `schema` has [`DEFAULT_BLOB_PROPERTY`] as a property of type video: where the
/// default blob goes (a bucket without it gets none: metadata only).
pub fn has_default_blob_property(schema: &crate::catalog::BucketSchema) -> bool {
    schema.get(DEFAULT_BLOB_PROPERTY).is_some_and(|p| p.kind.as_str() == super::spec::BlobType::Video.as_str())
}

/// The default `blob_source.file_field` when the adapter sets none.
pub fn default_file_field(kind: ProviderType) -> Option<&'static str> {
    match kind {
        ProviderType::GenericWebhook | ProviderType::Supabase => None,
        ProviderType::Mux => Some("playback_url"),
    }
}

/// Why a file field the adapter fills itself is missing from its document, where it can
/// tell: a Mux asset whose playback ID is not letters and digits gets no URLs made from it.
pub fn missing_file_reason(kind: ProviderType, doc: &Value, file_field: &str) -> Option<String> {
    match (kind, file_field) {
        (ProviderType::Mux, "playback_url" | "thumbnail_url") => match doc.get("playback_id").and_then(Value::as_str) {
            Some(id) => (!super::mux::usable_playback_id(id)).then(|| {
                format!(
                    "the asset's playback_id {:?} is not letters and digits, so no {file_field} is made from it",
                    id.chars().take(80).collect::<String>()
                )
            }),
            // Not the payload's field: hookline makes it from a playback ID, and there is none.
            None => {
                let status = doc.get("status").and_then(Value::as_str).map(|s| format!(" (its status: {s:?})"));
                Some(format!(
                    "the asset has no playback ID{}, so hookline cannot make its {file_field}: an asset gets one when \
                     created with a playback_policy, or later through Mux's API (for a webhook without playback IDs, \
                     an adapter with Mux API credentials reads the asset's current state from the Mux API)",
                    status.unwrap_or_default()
                ))
            }
        },
        _ => None,
    }
}

/// The upstream's ID of the thing the event is about (object `source.external_id`): the
/// dedup value for generic_webhook, the asset id for mux, the row's `id_column` for
/// supabase. Events that update or delete must have one. `parsed`: the payload's database
/// event when it was parsed already (each parse copies the rows), not parsed again.
pub fn external_id(
    adapter: &SourceAdapter,
    payload: &Value,
    dedup_value: Option<&str>,
    parsed: Option<&supabase::DbEvent>,
) -> Result<Option<String>, PayloadError> {
    match adapter.adapter_type {
        ProviderType::GenericWebhook => Ok(dedup_value.map(str::to_string)),
        ProviderType::Mux => Ok(mux::event_asset_id(payload).map(str::to_string)),
        ProviderType::Supabase => {
            let owned;
            let ev = match parsed {
                Some(ev) => ev,
                None => {
                    owned = db_event(payload)?;
                    &owned
                }
            };
            if let Some((schema, table)) = adapter.table() {
                if (ev.schema.as_str(), ev.table.as_str()) != (schema, table) {
                    return Err(PayloadError(format!(
                        "the event is about a row of {}.{}, and this adapter takes rows of {schema}.{table} only \
                         (source_adapter.table, schema)",
                        ev.schema, ev.table
                    )));
                }
            }
            let col = adapter.id_column();
            match ev.primary_key(col) {
                Some(id) => Ok(Some(id)),
                None => Err(PayloadError(match ev.row().ok().and_then(|r| r.get(col)) {
                    Some(Value::Number(n)) => {
                        format!("the row's {col:?} (id_column) is {}", path::number_key_problem(n))
                    }
                    Some(Value::String(s)) if s.contains('\0') => format!(
                        "the row's {col:?} (id_column) holds a NUL character, which no Postgres text value can: \
                         Supabase did not send this event"
                    ),
                    found => {
                        format!("the row's {col:?} (id_column) is {}: {}", path::not_a_key(found), path::KEY_WANTED)
                    }
                })),
            }
        }
    }
}

/// The upstream ID the thing had before the event, for an update that changes it: a
/// Supabase UPDATE whose `old_record` has another primary key than `record` (the row's key
/// was changed). `None` for every other event, and when `old_record` has no usable key (then
/// the update finds the objects by the new key, as before).
pub fn previous_external_id(adapter: &SourceAdapter, payload: &Value) -> Option<String> {
    match adapter.adapter_type {
        ProviderType::Supabase => supabase::old_primary_key(payload, adapter.id_column()),
        ProviderType::GenericWebhook | ProviderType::Mux => None,
    }
}

/// What an accepted event does to the bucket's objects.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Operation {
    Create,
    /// Re-map the objects with this external ID.
    Update,
    /// Delete the objects with this external ID.
    Delete,
}

/// Whether this adapter type's events can update or delete objects by upstream ID (see
/// [`operation`]), so its objects are worth indexing by external ID: generic_webhook events
/// only ever create, and its objects change through the objects API, by object ID. Not
/// indexing them saves an index write per object on the busiest path.
pub fn changes_by_external_id(kind: ProviderType) -> bool {
    match kind {
        ProviderType::Mux | ProviderType::Supabase => true,
        ProviderType::GenericWebhook => false,
    }
}

pub fn operation(kind: ProviderType, event_type: Option<&str>) -> Operation {
    match (kind, event_type) {
        (ProviderType::Supabase, Some("UPDATE")) => Operation::Update,
        (ProviderType::Supabase, Some("DELETE")) => Operation::Delete,
        // Only when filtered in on the ingest route; the connection-scoped lifecycle route
        // (`/v1/webhooks/mux/{connection_id}`) is the usual way.
        (ProviderType::Mux, Some("video.asset.updated")) => Operation::Update,
        (ProviderType::Mux, Some("video.asset.deleted")) => Operation::Delete,
        _ => Operation::Create,
    }
}

/// Whether an update of a row that has no object yet creates it. Supabase: yes (the INSERT
/// may predate the adapter or have been filtered out), as a create: when its dedup value is
/// already in the dedup set (the row's object was made and deleted since) it is a
/// `duplicate` instead, so a late UPDATE does not bring a deleted row back (see
/// `actor/lifecycle.rs`; without a dedup key it always creates). Mux: no, an asset becomes
/// an object when it is ready, and an `updated` of an unknown asset must not make a second one.
pub fn upsert_on_update(kind: ProviderType) -> bool {
    kind == ProviderType::Supabase
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

    #[test]
    fn supabase_operations_and_external_ids() {
        let mut a = crate::adapter::pipeline::tests::adapter(json!({"adapter_type": "supabase"}));
        assert_eq!(operation(ProviderType::Supabase, Some("INSERT")), Operation::Create);
        assert_eq!(operation(ProviderType::Supabase, Some("UPDATE")), Operation::Update);
        assert_eq!(operation(ProviderType::Supabase, Some("DELETE")), Operation::Delete);
        let del = json!({"type": "DELETE", "table": "t", "schema": "public", "record": null,
            "old_record": {"id": 7, "slug": "s"}});
        assert_eq!(external_id(&a, &del, None, None).unwrap().as_deref(), Some("7"));
        a.id_column = Some("slug".into());
        assert_eq!(external_id(&a, &del, None, None).unwrap().as_deref(), Some("s"));
        a.id_column = Some("nope".into());
        assert!(external_id(&a, &del, None, None).unwrap_err().0.contains("nope"));
        let MetadataSource::Inline(doc) = metadata_document(&a, &del).unwrap() else { panic!() };
        assert_eq!(doc["record"]["slug"], "s");
        assert!(metadata_document(&a, &json!({"type": "INSERT"})).is_err());
        assert_eq!(default_dedup_key(ProviderType::Supabase), None);
        // An UPDATE that changed the primary key names the old one; other events do not.
        a.id_column = None;
        let upd = |old: Value| {
            json!({"type": "UPDATE", "table": "t", "schema": "public",
            "record": {"id": 201}, "old_record": old})
        };
        assert_eq!(previous_external_id(&a, &upd(json!({"id": 200}))).as_deref(), Some("200"));
        assert_eq!(external_id(&a, &upd(json!({"id": 200})), None, None).unwrap().as_deref(), Some("201"));
        assert_eq!(previous_external_id(&a, &upd(json!({"title": "no key"}))), None);
        assert_eq!(previous_external_id(&a, &upd(Value::Null)), None);
        assert_eq!(previous_external_id(&a, &del), None, "a DELETE's old_record is its row");
    }

    #[test]
    fn mux_document_has_the_payload_and_the_asset_metadata() {
        let a = crate::adapter::pipeline::tests::adapter(json!({"adapter_type": "mux"}));
        let seed: Value = serde_json::from_str(crate::adapter::mux::asset::tests::SEED_003_READY).unwrap();
        let MetadataSource::Fetch(f) = metadata_document(&a, &seed).unwrap() else {
            panic!("seed 003 has no playback ids")
        };
        assert_eq!(f.asset_id, "0201p02fGKPE7MrbC269XRD7LpcHhrmbu0002");
        let asset = crate::adapter::mux::asset::tests::api_asset("AsSeT1");
        let doc = mux_document(&seed, &asset);
        assert_eq!(doc["playback_url"], "https://stream.mux.com/PuBlIcPlAyBaCk01.m3u8");
        assert_eq!(doc["data"]["meta"]["title"], "Launch video");
        assert_eq!(doc["environment"]["name"], "Demo pages");
        assert_eq!(doc["created_at"], "2020-12-13T16:27:25Z", "the asset's created_at wins");
        assert_eq!(
            external_id(&a, &seed, None, None).unwrap().as_deref(),
            Some("0201p02fGKPE7MrbC269XRD7LpcHhrmbu0002")
        );
        assert_eq!(operation(ProviderType::Mux, Some("video.asset.deleted")), Operation::Delete);
    }
}
