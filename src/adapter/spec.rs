//! The `source_adapter` settings of a bucket: API input, validation, stored form, public view.
//!
//! `PATCH /v1/buckets/{id}` replaces the whole `source_adapter` object (fields left out take
//! their defaults); the webhook secret survives a replacement unless `rotate_secret` is set.
//!
//! Secrets at rest: the webhook secret is stored only as its SHA-256 digest. The secret is 32
//! random bytes, so the digest cannot be brute-forced, and verification hashes the presented
//! header and compares digests with `subtle` (constant time). Inline `connection.credentials`
//! are sealed with the master key (bound to the bucket ID). Neither is ever in a response
//! after the PATCH that made the secret, nor in a log line.
//!
//! This module is pure data and rules; the registry actor performs the checks that need the
//! store (the connection exists and matches `adapter_type`).

use std::collections::BTreeMap;

use serde::{Deserialize, Deserializer, Serialize};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use super::path;
use super::writeback::{Trigger, Writeback};
use crate::catalog::connection::ProviderConfig;
use crate::catalog::{BucketSchema, ProviderType};
use crate::error::ApiError;

/// The adapter types share their names with connection provider types.
pub type AdapterType = ProviderType;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EventFilter {
    /// Each type once, first mention first, as a webhook keeps its (and warned about once).
    #[serde(deserialize_with = "unique")]
    pub event_types: Vec<String>,
}

fn unique<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<String>, D::Error> {
    let mut types = Vec::<String>::deserialize(d)?;
    crate::delivery::model::dedup_event_types(&mut types);
    Ok(types)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum BlobType {
    #[default]
    Video,
    Image,
    Audio,
    Text,
    Json,
}

impl BlobType {
    pub fn as_str(&self) -> &'static str {
        match self {
            BlobType::Video => "video",
            BlobType::Image => "image",
            BlobType::Audio => "audio",
            BlobType::Text => "text",
            BlobType::Json => "json",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BlobSource {
    /// Dot-path to the file URL in the metadata document; none: the adapter's default.
    #[serde(default)]
    pub file_field: Option<String>,
    /// `null` too means the default (as for the adapter's other optional settings).
    #[serde(default, deserialize_with = "crate::util::null_as_default")]
    pub blob_type: BlobType,
    /// Schema property the blob belongs to; none: the blob type's name.
    #[serde(default)]
    pub target_property: Option<String>,
    /// Supabase: the Storage bucket a file field that is a path (`listings/7/front.jpg`, as
    /// tables usually keep files) is read from: its public URL under the connection's project
    /// URL. A file field that is an http(s) URL is kept as it is.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub storage_bucket: Option<String>,
}

impl BlobSource {
    pub fn property(&self) -> &str {
        self.target_property.as_deref().unwrap_or(self.blob_type.as_str())
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum BatchMode {
    Immediate,
    #[default]
    TimeWindow,
    Count,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Batching {
    pub mode: BatchMode,
    pub window_seconds: u64,
    pub max_batch_size: usize,
    pub auto_submit: bool,
}

impl Default for Batching {
    fn default() -> Self {
        Batching { mode: BatchMode::TimeWindow, window_seconds: 30, max_batch_size: 100, auto_submit: true }
    }
}

impl Batching {
    /// Settings changed from their defaults that this mode never reads (a count batch has no
    /// timer, `immediate` makes no batches): accepted, since a bucket's view shows them all and
    /// may be sent back, but said, since whoever set them expected something of them.
    pub fn unused_settings(&self) -> Vec<String> {
        let d = Batching::default();
        let mode = match self.mode {
            BatchMode::TimeWindow => return Vec::new(),
            BatchMode::Count => "count (a batch flushes only when it is full)",
            BatchMode::Immediate => "immediate (each event is an object at once, in no batch)",
        };
        let mut unused = Vec::new();
        if self.window_seconds != d.window_seconds {
            unused.push("window_seconds");
        }
        if self.mode == BatchMode::Immediate {
            if self.max_batch_size != d.max_batch_size {
                unused.push("max_batch_size");
            }
            if self.auto_submit != d.auto_submit {
                unused.push("auto_submit");
            }
        }
        unused.into_iter().map(|name| format!("source_adapter.batching.{name} has no effect in mode {mode}")).collect()
    }
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InlineConnection {
    #[serde(default)]
    pub credentials: Credentials,
}

/// What every view shows in place of inline credentials.
pub const CREDENTIALS_SHOWN: &str = "(set; never shown)";

/// `connection.credentials` as sent: an object, or the placeholder a GET shows in its place
/// ([`CREDENTIALS_SHOWN`]), which keeps the stored ones, so that a bucket's GET view can be
/// sent back as a PATCH without re-entering (or losing) its credentials.
#[derive(Clone)]
pub enum Credentials {
    Given(serde_json::Map<String, serde_json::Value>),
    Kept,
}

// Hand-written: the names of the credentials given, never their values.
impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Credentials::Given(m) => f.debug_tuple("Given").field(&m.keys().collect::<Vec<_>>()).finish(),
            Credentials::Kept => f.write_str("Kept"),
        }
    }
}

impl Default for Credentials {
    fn default() -> Self {
        Credentials::Given(serde_json::Map::new())
    }
}

impl Credentials {
    /// The credentials sent, if any (`{}` is none, as seed 000's default).
    pub fn given(&self) -> Option<&serde_json::Map<String, serde_json::Value>> {
        match self {
            Credentials::Given(m) if !m.is_empty() => Some(m),
            _ => None,
        }
    }
}

impl<'de> Deserialize<'de> for Credentials {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        match serde_json::Value::deserialize(d)? {
            serde_json::Value::Object(m) => Ok(Credentials::Given(m)),
            serde_json::Value::Null => Ok(Credentials::default()),
            serde_json::Value::String(s) if s == CREDENTIALS_SHOWN => Ok(Credentials::Kept),
            _ => Err(serde::de::Error::custom(format!(
                "expected an object of credentials (or {CREDENTIALS_SHOWN:?}, as a GET shows them, to keep the stored ones)"
            ))),
        }
    }
}

fn null_yes<'de, D: Deserializer<'de>>(d: D) -> Result<bool, D::Error> {
    Ok(Option::<bool>::deserialize(d)?.unwrap_or(true))
}

/// The `source_adapter` object of a PATCH body.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SourceAdapterInput {
    pub adapter_type: AdapterType,
    #[serde(default = "yes", deserialize_with = "null_yes")]
    pub enabled: bool,
    #[serde(default)]
    pub connection_id: Option<String>,
    #[serde(default)]
    pub connection: Option<InlineConnection>,
    #[serde(default)]
    pub event_filter: Option<EventFilter>,
    #[serde(default, deserialize_with = "crate::util::null_as_default")]
    pub field_mapping: BTreeMap<String, String>,
    #[serde(default)]
    pub blob_source: Option<BlobSource>,
    #[serde(default, deserialize_with = "crate::util::null_as_default")]
    pub batching: Batching,
    #[serde(default)]
    pub dedup_key: Option<String>,
    #[serde(default)]
    pub writeback: Option<Writeback>,
    /// generic_webhook only: dot-path of the event type (default `type`).
    #[serde(default)]
    pub event_type_field: Option<String>,
    /// supabase only: the primary-key column whose value is the object's external id
    /// (default `id`).
    #[serde(default)]
    pub id_column: Option<String>,
    /// supabase only: the table whose rows this adapter takes (events from any other are
    /// refused) and writes back to. Required with a writeback: see [`SourceAdapter::table`].
    #[serde(default)]
    pub table: Option<String>,
    /// supabase only: the table's schema (default `public`); needs `table`.
    #[serde(default)]
    pub schema: Option<String>,
    /// `None` (absent or null) is `false`, unless the PATCH says otherwise outside.
    #[serde(default)]
    pub rotate_secret: Option<bool>,
    /// Read-only fields of the GET view, accepted and ignored so that a bucket's
    /// `source_adapter` can be read, edited and sent back as is.
    #[serde(default)]
    pub configured_at: Option<serde::de::IgnoredAny>,
    #[serde(default)]
    pub ingest_path: Option<serde::de::IgnoredAny>,
    #[serde(default)]
    pub webhook_url: Option<serde::de::IgnoredAny>,
    /// The GET view's `effective` settings (defaults filled in): read-only, ignored, so that
    /// a field left at its default stays a default (and follows the adapter type's).
    #[serde(default)]
    pub effective: Option<serde::de::IgnoredAny>,
}

fn yes() -> bool {
    true
}

/// `PATCH /v1/buckets/{id}` body. `source_adapter` distinguishes absent (unchanged) from
/// `null` (remove).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PatchBucket {
    #[serde(default, deserialize_with = "crate::util::present")]
    pub source_adapter: Option<Option<SourceAdapterInput>>,
    /// Absent: unchanged; `null`: cleared, as a bucket created without one.
    #[serde(default, deserialize_with = "crate::util::present")]
    pub description: Option<Option<String>>,
    /// Rotates the webhook secret of the existing adapter (also accepted inside
    /// `source_adapter`; the two must not contradict each other).
    #[serde(default)]
    pub rotate_secret: Option<bool>,
}

/// The adapter as stored in the bucket record.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SourceAdapter {
    pub adapter_type: AdapterType,
    pub enabled: bool,
    /// Read by `Shared::connection_users` at `/source_adapter/connection_id`: keep the name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub connection_id: Option<crate::ids::ConnectionId>,
    /// Inline credentials, sealed with the master key (AAD: the bucket ID).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sealed_credentials: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub event_filter: Option<EventFilter>,
    #[serde(default)]
    pub field_mapping: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub blob_source: Option<BlobSource>,
    pub batching: Batching,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dedup_key: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub writeback: Option<Writeback>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub event_type_field: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id_column: Option<String>,
    /// Supabase: the table the adapter takes rows of and writes back to. Why pinned here and
    /// not taken from each event: the event's `table` and `schema` come from whoever holds
    /// the webhook secret, and a writeback PATCHes with the service-role key, which passes
    /// row-level security; taken from the event, that secret would aim service-role writes
    /// at any row of any table. Adapters saved before it existed have none: they still
    /// ingest, but write nothing back until it is set.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub table: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub schema: Option<String>,
    /// Hex SHA-256 of the webhook secret (never the secret itself).
    pub webhook_secret_sha256: String,
    pub configured_at: String,
}

impl SourceAdapter {
    /// Whether `other` holds the same settings (all but `configured_at`): a PATCH that sends
    /// them changes nothing.
    pub fn same_settings(&self, other: &SourceAdapter) -> bool {
        let settings = |a: &SourceAdapter| SourceAdapter { configured_at: String::new(), ..a.clone() };
        settings(self) == settings(other)
    }

    /// The settings this adapter has that `new`, of the same type, leaves out (or back at
    /// their defaults): a PATCH replaces `source_adapter` whole, so `{"adapter_type": …,
    /// "enabled": false}`, meant as a pause, drops its mapping and dedup key. The PATCH's
    /// `warnings` name them.
    pub fn dropped_by(&self, new: &SourceAdapter) -> Vec<&'static str> {
        if self.adapter_type != new.adapter_type {
            return Vec::new();
        }
        let had = |old: bool, now: bool| old && !now;
        [
            (
                "connection",
                had(
                    self.connection_id.is_some() || self.sealed_credentials.is_some(),
                    new.connection_id.is_some() || new.sealed_credentials.is_some(),
                ),
            ),
            ("event_filter", had(self.event_filter.is_some(), new.event_filter.is_some())),
            ("field_mapping", had(!self.field_mapping.is_empty(), !new.field_mapping.is_empty())),
            ("blob_source", had(self.blob_source.is_some(), new.blob_source.is_some())),
            ("batching", self.batching != new.batching && new.batching == Batching::default()),
            ("dedup_key", had(self.dedup_key.is_some(), new.dedup_key.is_some())),
            ("writeback", had(self.writeback.is_some(), new.writeback.is_some())),
            ("event_type_field", had(self.event_type_field.is_some(), new.event_type_field.is_some())),
            ("id_column", had(self.id_column.is_some(), new.id_column.is_some())),
            ("table", had(self.table.is_some(), new.table.is_some())),
            ("schema", had(self.schema.is_some(), new.schema.is_some())),
        ]
        .into_iter()
        .filter_map(|(name, dropped)| dropped.then_some(name))
        .collect()
    }

    /// The Supabase primary-key column (`id_column`, default `id`).
    pub fn id_column(&self) -> &str {
        self.id_column.as_deref().unwrap_or(super::supabase::DEFAULT_ID_COLUMN)
    }

    /// The inline `connection.credentials`, decrypted (sealed under `bucket_id`) and decoded
    /// as this adapter type's; `None` when there are none. One place for every reader (the
    /// actor, the writeback sender, the start-up scan, the view): credentials that decrypt
    /// but do not decode are an error to all of them, not "none".
    pub fn inline_credentials(
        &self,
        bucket_id: &crate::ids::BucketId,
        secrets: &crate::crypto::SecretBox,
    ) -> Option<Result<ProviderConfig, crate::crypto::DecryptError>> {
        let sealed = self.sealed_credentials.as_deref()?;
        Some(
            secrets
                .open(sealed, bucket_id.as_str())
                .and_then(|plain| ProviderConfig::decode(self.adapter_type, &plain)),
        )
    }

    /// Supabase: the pinned `(schema, table)` (schema default `public`), if `table` is set.
    pub fn table(&self) -> Option<(&str, &str)> {
        self.table.as_deref().map(|t| (self.schema.as_deref().unwrap_or(super::supabase::DEFAULT_SCHEMA), t))
    }

    /// The public view: no secret digest, no sealed credentials; plus `effective`, the
    /// event filter and dedup key in force, defaults filled in (see [`SourceAdapter::effective`]).
    pub fn view(&self) -> serde_json::Value {
        let mut v = serde_json::to_value(self).unwrap_or_default();
        if let Some(obj) = v.as_object_mut() {
            obj.remove("webhook_secret_sha256");
            if obj.remove("sealed_credentials").is_some() {
                obj.insert("connection".into(), serde_json::json!({ "credentials": CREDENTIALS_SHOWN }));
            }
            obj.insert("effective".into(), self.effective());
        }
        v
    }

    /// What the adapter does with `event_filter` and `dedup_key` as set or left out:
    /// `event_filter.event_types` (`null`: every event is handled), `dedup_key` (`null`: no
    /// dedup); a Supabase table's `schema` and the blob's `file_field` and `target_property`
    /// in force; and `defaults`, the settings left out and so taken from the adapter type
    /// (a default follows the adapter type if it is changed). Read-only: a PATCH ignores
    /// it, so a GET view sent back leaves the defaults as defaults.
    pub fn effective(&self) -> serde_json::Value {
        let event_types: Option<Vec<String>> = match &self.event_filter {
            Some(f) => Some(f.event_types.clone()),
            None => {
                super::kind::default_event_types(self.adapter_type).map(|l| l.iter().map(|t| t.to_string()).collect())
            }
        };
        let dedup_key = self.dedup_key.as_deref().or(super::kind::default_dedup_key(self.adapter_type));
        let mut defaults = Vec::new();
        if self.event_filter.is_none() {
            defaults.push("event_filter");
        }
        if self.dedup_key.is_none() {
            defaults.push("dedup_key");
        }
        let mut effective = serde_json::json!({
            "event_filter": {"event_types": event_types},
            "dedup_key": dedup_key,
        });
        // A Supabase adapter's table's schema (`public` when left out), where it has a table.
        if let Some((schema, _)) = self.table() {
            effective["schema"] = schema.into();
            if self.schema.is_none() {
                defaults.push("schema");
            }
        }
        // The blob's file field and property, where left to their defaults.
        if let Some(b) = &self.blob_source {
            let file_field = b.file_field.as_deref().or(super::kind::default_file_field(self.adapter_type));
            if b.file_field.is_none() {
                defaults.push("blob_source.file_field");
            }
            if b.target_property.is_none() {
                defaults.push("blob_source.target_property");
            }
            effective["blob_source"] = serde_json::json!({"file_field": file_field, "target_property": b.property()});
        }
        effective["defaults"] = serde_json::json!(defaults);
        effective
    }
}

/// A stored webhook secret digest (hex SHA-256) as bytes; `None` if it is not one.
pub fn secret_digest(hex_digest: &str) -> Option<[u8; 32]> {
    const_hex::decode_to_array(hex_digest).ok()
}

/// Whether `presented` hashes to `digest`, compared in constant time (`subtle`): the time
/// taken tells nothing of how much of the digest matched.
pub fn digest_matches(digest: &[u8; 32], presented: &str) -> bool {
    let actual: [u8; 32] = Sha256::digest(presented.as_bytes()).into();
    actual.ct_eq(digest).into()
}

/// A new webhook secret: 32 random bytes as hex. Returns (secret, its digest).
pub fn new_secret() -> (String, String) {
    let bytes: [u8; 32] = rand::random();
    let secret = const_hex::encode(bytes);
    let digest = const_hex::encode(Sha256::digest(secret.as_bytes()));
    (secret, digest)
}

/// The `type` values of a Supabase database webhook.
const SUPABASE_EVENT_TYPES: &[&str] = &["INSERT", "UPDATE", "DELETE"];

impl SourceAdapterInput {
    /// Settings that are valid but probably not what was meant, for the PATCH answer's
    /// `warnings`: a Mux event type Mux does not send (a typo ignores every event it meant),
    /// a Supabase writeback's row looked up by another column than its id's.
    pub fn warnings(&self) -> Vec<String> {
        let mut warnings = self.batching.unused_settings();
        warnings.extend(self.credentials_beside_a_connection());
        warnings.extend(self.external_id_elsewhere());
        warnings.extend(self.writeback_paths_outside_the_result());
        let Some(filter) = self.event_filter.as_ref().filter(|_| self.adapter_type == ProviderType::Mux) else {
            return warnings;
        };
        warnings.extend(
            filter.event_types.iter().filter(|t| !super::mux::KNOWN_EVENT_TYPES.contains(&t.as_str())).map(|t| {
                format!(
                    "source_adapter.event_filter.event_types: {t:?} is not a Mux event type hookline knows; \
                     events of the types Mux sends will be ignored unless listed"
                )
            }),
        );
        warnings
    }

    /// Inline credentials beside a `connection_id`: valid (seed 000 calls them a fallback),
    /// but the connection's are the ones used, and a caller who sent both may well expect
    /// the inline ones to be (a signature checked with their secret fails as a 401).
    fn credentials_beside_a_connection(&self) -> Option<String> {
        (self.connection_id.is_some() && self.has_inline_credentials()).then(|| {
            "source_adapter.connection.credentials: not used while connection_id is set (the connection's \
             credentials are; inline ones are the fallback of an adapter without a connection): remove one of \
             the two"
                .to_string()
        })
    }

    /// A Supabase writeback whose `external_id_field` is mapped from another column than
    /// `id_column`: its value is matched against `id_column` (`PATCH …?id=eq.<it>`), which
    /// finds no row unless the two columns agree, and PostgREST answers that with a 204.
    fn external_id_elsewhere(&self) -> Option<String> {
        if self.adapter_type != ProviderType::Supabase {
            return None;
        }
        let field = self.writeback.as_ref().filter(|w| w.enabled)?.external_id_field.as_deref()?;
        let id_column = self.id_column();
        let (source, _) = self.field_mapping.iter().find(|(_, target)| target.as_str() == field)?;
        let column = source.strip_prefix("record.").filter(|c| !c.contains('.'))?;
        (column != id_column).then(|| {
            format!(
                "source_adapter.writeback.external_id_field: {field:?} holds the row's {column:?} column, and \
                 writebacks look rows up by id_column {id_column:?} (PATCH …?{id_column}=eq.<its value>), which \
                 matches no row unless the two agree; set id_column to {column:?} if that is the key"
            )
        })
    }

    /// The Supabase primary-key column (`id_column`, default `id`), as [`SourceAdapter::id_column`].
    fn id_column(&self) -> &str {
        self.id_column.as_deref().unwrap_or(super::supabase::DEFAULT_ID_COLUMN)
    }

    /// `on_batch_complete` writeback source paths that start outside the processing result
    /// (`writeback::job`'s module doc): such a path writes nothing, and a job whose every
    /// path does is given up. `title` for the property is the usual slip (`metadata.title`).
    /// An `on_alert` writeback reads the alert's `results` at the top level too: any path may
    /// be found there.
    fn writeback_paths_outside_the_result(&self) -> Vec<String> {
        let Some(wb) = self.writeback.as_ref().filter(|w| w.enabled && w.trigger == Trigger::OnBatchComplete) else {
            return Vec::new();
        };
        let keys = super::writeback::RESULT_KEYS;
        wb.field_mapping
            .iter()
            .enumerate()
            .filter(|(_, f)| !keys.contains(&f.source_path.split('.').next().unwrap_or_default()))
            .map(|(i, f)| {
                let path = &f.source_path;
                format!(
                    "source_adapter.writeback.field_mapping[{i}].source_path: {path:?} is not in a completed \
                     object's processing result (it starts with one of {}), so it writes nothing; a property \
                     of the object is metadata.{path}",
                    keys.join(", ")
                )
            })
            .collect()
    }

    /// Whether the body gives inline credentials, or keeps the stored ones (their shown
    /// placeholder, checked against what is stored by the registry).
    fn has_inline_credentials(&self) -> bool {
        self.connection
            .as_ref()
            .is_some_and(|c| c.credentials.given().is_some() || matches!(c.credentials, Credentials::Kept))
    }

    /// Every check that needs only the body and the bucket schema; errors name the field
    /// under `source_adapter.`.
    pub fn validate(&self, schema: &BucketSchema) -> Result<(), ApiError> {
        let f = |name: &str| format!("source_adapter.{name}");
        if let Some(id) = &self.connection_id {
            if crate::ids::ConnectionId::parse(id).is_none() {
                return Err(ApiError::validation(f("connection_id"), "must be a connection ID (conn_…)"));
            }
        }
        if let Some(filter) = &self.event_filter {
            if filter.event_types.is_empty() {
                return Err(ApiError::validation(
                    f("event_filter.event_types"),
                    "list at least one event type, or leave out event_filter for the adapter's default",
                ));
            }
            if filter.event_types.len() > 100 {
                return Err(ApiError::validation(f("event_filter.event_types"), "at most 100 event types"));
            }
            // Named by value: the list was deduplicated as it was read, so an index could
            // point at another entry than the one sent there.
            if let Some(t) = filter.event_types.iter().find(|t| t.trim().is_empty() || t.len() > 200) {
                return Err(ApiError::validation(
                    f("event_filter.event_types"),
                    format!("{t:?} is not an event type: each is 1–200 characters, not blank"),
                ));
            }
            // Supabase sends exactly these three: any other entry (`insert`) would match
            // nothing, and every event would be acknowledged as ignored, never retried.
            if self.adapter_type == ProviderType::Supabase {
                if let Some(t) = filter.event_types.iter().find(|t| !SUPABASE_EVENT_TYPES.contains(&t.as_str())) {
                    return Err(ApiError::validation(
                        f("event_filter.event_types"),
                        format!(
                            "{t:?} is not a Supabase database webhook type: use INSERT, UPDATE or DELETE (upper case)"
                        ),
                    ));
                }
            }
        }
        if self.field_mapping.len() > 256 {
            return Err(ApiError::validation(f("field_mapping"), "at most 256 mappings"));
        }
        let mut targets = std::collections::HashMap::new();
        for (source, target) in &self.field_mapping {
            // Named quoted (`field_mapping["data.id"]`): the key's own dots are not steps of
            // the field's path, and a key that is not a dot-path (`""`, `a..b`) reads as sent.
            let field = format!("field_mapping[{source:?}]");
            if let Some(first) = targets.insert(target, source) {
                // One would silently win (by key order), whichever the payload holds.
                return Err(ApiError::validation(
                    f(&field),
                    format!("{first:?} already maps to {target:?}: map each property from one path"),
                ));
            }
            if !path::is_valid(source) {
                return Err(ApiError::validation(
                    f(&field),
                    "keys are dot-paths such as data.duration or data.tracks.0.duration",
                ));
            }
            if schema.get(target).is_none() {
                return Err(ApiError::validation(
                    f(&field),
                    format!("target {target:?} is not a property of bucket_schema"),
                ));
            }
        }
        if let Some(blob) = &self.blob_source {
            if let Some(source) = targets.get(&blob.property().to_string()) {
                return Err(ApiError::validation(
                    f("blob_source.target_property"),
                    format!("field_mapping {source:?} already maps to {:?}: one source per property", blob.property()),
                ));
            }
            if let Some(ff) = &blob.file_field {
                if !path::is_valid(ff) {
                    return Err(ApiError::validation(f("blob_source.file_field"), "must be a dot-path"));
                }
            }
            if let Some(b) = &blob.storage_bucket {
                if self.adapter_type != ProviderType::Supabase {
                    return Err(ApiError::validation(
                        f("blob_source.storage_bucket"),
                        "only a supabase adapter reads files from Supabase Storage",
                    ));
                }
                // Supabase's own rule for bucket names (its `limits.ts`); the URL encodes them.
                let name_ok = (1..=100).contains(&b.chars().count())
                    && b.chars().all(|c| c.is_alphanumeric() || "_!-.*'() &$@=;:+,?".contains(c))
                    && !matches!(b.as_str(), "." | "..");
                if !name_ok {
                    return Err(ApiError::validation(
                        f("blob_source.storage_bucket"),
                        "must be a Storage bucket name: 1–100 letters, digits, spaces and _!-.*'()&$@=;:+,?",
                    ));
                }
                if self.connection_id.is_none() && !self.has_inline_credentials() {
                    return Err(ApiError::validation(
                        f("blob_source.storage_bucket"),
                        "needs the project's URL: set connection_id (or connection.credentials)",
                    ));
                }
            }
            // The property the blob goes to, named or by default (the blob type's name).
            {
                let tp = blob.property();
                match schema.get(tp) {
                    None => {
                        return Err(ApiError::validation(
                            f("blob_source.target_property"),
                            match &blob.target_property {
                                Some(_) => format!("{tp:?} is not a property of bucket_schema"),
                                None => format!(
                                    "bucket_schema has no {tp:?} property for the blob; add one or set target_property"
                                ),
                            },
                        ))
                    }
                    Some(p) if p.kind.as_str() != blob.blob_type.as_str() => {
                        return Err(ApiError::validation(
                            f("blob_source.target_property"),
                            format!(
                                "property {tp:?} has type {}, but blob_type is {}",
                                p.kind.as_str(),
                                blob.blob_type.as_str()
                            ),
                        ))
                    }
                    Some(_) => {}
                }
            }
        }
        // A required property that nothing here fills would refuse every event (a 422 each,
        // found only once events arrive): refuse the configuration instead. The blob fills
        // its property when it has a file field (given, or the adapter type's default); with
        // no blob_source, the default one goes to a `video` property (see `materialize`).
        let default_ff = super::kind::default_file_field(self.adapter_type).is_some();
        // Without a file field, and none by default for this type, the blob could never be
        // found: it would be left out of every object without a word.
        if self.blob_source.as_ref().is_some_and(|b| b.file_field.is_none()) && !default_ff {
            return Err(ApiError::validation(
                f("blob_source.file_field"),
                format!(
                    "{} has no default file field: name the dot-path of the payload's file URL (or leave out \
                     blob_source)",
                    self.adapter_type.as_str()
                ),
            ));
        }
        let blob_property = match &self.blob_source {
            Some(b) if b.file_field.is_some() || default_ff => Some(b.property()),
            Some(_) => None,
            None => Some(super::kind::DEFAULT_BLOB_PROPERTY)
                .filter(|_| default_ff && super::kind::has_default_blob_property(schema)),
        };
        for (name, p) in &schema.properties {
            if p.required && !targets.contains_key(name) && blob_property != Some(name.as_str()) {
                return Err(ApiError::validation(
                    f("field_mapping"),
                    format!(
                        "bucket_schema's required property {name:?} is filled by nothing: map a payload path to it \
                         (or, for a file property, set blob_source), or every event would be refused"
                    ),
                ));
            }
        }
        let b = &self.batching;
        if !(5..=300).contains(&b.window_seconds) {
            return Err(ApiError::validation(f("batching.window_seconds"), "must be within 5–300 seconds"));
        }
        if !(1..=1000).contains(&b.max_batch_size) {
            return Err(ApiError::validation(f("batching.max_batch_size"), "must be within 1–1000"));
        }
        if let Some(dk) = &self.dedup_key {
            if !path::is_valid(dk) {
                return Err(ApiError::validation(f("dedup_key"), "must be a dot-path such as data.id"));
            }
        }
        if let Some(w) = &self.writeback {
            w.validate(self.adapter_type)?;
            // It reads the object's metadata, which holds bucket_schema's properties only: any
            // other name would give every job up ("the object has no …").
            if let Some(x) = &w.external_id_field {
                let first = x.split('.').next().unwrap_or(x);
                if schema.get(first).is_none() {
                    return Err(ApiError::validation(
                        f("writeback.external_id_field"),
                        format!(
                            "{x:?} is read from the object's metadata, and {first:?} is not a property of \
                             bucket_schema: name the property that holds the source record's id (or leave it out \
                             for the object's source.external_id)"
                        ),
                    ));
                }
            }
            // The row's key column is what the PATCH finds the row by: writing it would move
            // the row out from under its own key (with the service-role key, past RLS).
            if self.adapter_type == ProviderType::Supabase {
                let id_column = self.id_column();
                if let Some(i) = w.field_mapping.iter().position(|m| m.target_field == id_column) {
                    return Err(ApiError::validation(
                        f(&format!("writeback.field_mapping[{i}].target_field")),
                        format!(
                            "{id_column:?} is the row's id_column: writebacks find the row by it and do not change it"
                        ),
                    ));
                }
            }
            // `on_batch_complete` fires when a batch completes, and `immediate` makes none:
            // accepted, it would silently never write back.
            if w.enabled && w.trigger == super::writeback::Trigger::OnBatchComplete && b.mode == BatchMode::Immediate {
                return Err(ApiError::validation(
                    f("writeback.trigger"),
                    "on_batch_complete writes back when a batch completes, and batching.mode immediate makes no \
                     batches: use mode time_window or count (count with max_batch_size 1 writes back each \
                     object as it arrives)",
                ));
            }
            // A Supabase writeback PATCHes PostgREST with the adapter's credentials: without
            // any, every job would fail after the fact.
            if w.enabled
                && self.adapter_type == ProviderType::Supabase
                && self.connection_id.is_none()
                && !self.has_inline_credentials()
            {
                return Err(ApiError::validation(
                    f("writeback"),
                    "a supabase writeback needs the project's url and service_role_key: \
                     set connection_id or connection.credentials",
                ));
            }
        }
        if let Some(c) = &self.connection {
            if let Some(m) = c.credentials.given() {
                // Both may be given (seed 000 lists both); connection_id then wins at runtime.
                // Same shape as a connection's provider_config, so one reader serves both.
                let parsed = ProviderConfig::parse_at(
                    &f("connection.credentials"),
                    self.adapter_type,
                    serde_json::Value::Object(m.clone()),
                )?;
                // As for a connection (see the registry's `check_generic_headers`): headers go
                // only to URLs under their `url`; a writeback_url outside it would have every
                // job given up at its first attempt.
                let target = self.writeback.as_ref().and_then(|w| w.writeback_url.as_deref());
                if let (ProviderConfig::Generic(g), Some(target), None) = (&parsed, target, &self.connection_id) {
                    if let Some(url) = g.url.as_deref().filter(|_| !g.headers.is_empty() && !g.allows(target)) {
                        return Err(ApiError::validation(
                            f("writeback.writeback_url"),
                            format!(
                                "not under {url}, the url of connection.credentials: its headers are sent to no \
                                 other URL"
                            ),
                        ));
                    }
                }
            }
        }
        if let Some(col) = &self.id_column {
            if self.adapter_type != ProviderType::Supabase {
                return Err(ApiError::validation(f("id_column"), "only supabase adapters take it"));
            }
            if !super::supabase::is_safe_identifier(col) {
                return Err(ApiError::validation(
                    f("id_column"),
                    "must be a column name (letters, digits, _; at most 63 bytes)",
                ));
            }
        }
        for (name, value) in [("table", &self.table), ("schema", &self.schema)] {
            let Some(value) = value else { continue };
            if self.adapter_type != ProviderType::Supabase {
                return Err(ApiError::validation(f(name), "only supabase adapters take it"));
            }
            if !super::supabase::is_safe_identifier(value) {
                return Err(ApiError::validation(
                    f(name),
                    format!("must be a plain {name} name (letters, digits, _; at most 63 bytes)"),
                ));
            }
        }
        if self.schema.is_some() && self.table.is_none() {
            return Err(ApiError::validation(f("schema"), "names the schema of `table`: set table too"));
        }
        if self.adapter_type == ProviderType::Supabase
            && self.table.is_none()
            && self.writeback.as_ref().is_some_and(|w| w.enabled)
        {
            return Err(ApiError::validation(
                f("table"),
                "a supabase writeback PATCHes with the service-role key: set table (and schema, default public) \
                 to the table the rows come from; events from any other table are then refused",
            ));
        }
        if let Some(etf) = &self.event_type_field {
            if self.adapter_type != ProviderType::GenericWebhook {
                return Err(ApiError::validation(f("event_type_field"), "only generic_webhook adapters take it"));
            }
            if !path::is_valid(etf) {
                return Err(ApiError::validation(f("event_type_field"), "must be a dot-path"));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn a_supabase_external_id_from_another_column_than_id_column_is_warned_of() {
        let input = |extra: serde_json::Value| {
            let mut v = json!({"adapter_type": "supabase", "table": "listings",
                "field_mapping": {"record.listing_url": "url", "record.title": "title"},
                "writeback": {"trigger": "on_alert", "external_id_field": "url",
                    "field_mapping": [{"source_path": "v", "target_field": "v"}]}});
            if let (Some(v), Some(extra)) = (v.as_object_mut(), extra.as_object()) {
                v.extend(extra.clone());
            }
            serde_json::from_value::<SourceAdapterInput>(v).unwrap().warnings()
        };
        let w = input(json!({}));
        assert!(w.len() == 1 && w[0].contains("set id_column to \"listing_url\""), "{w:?}");
        assert!(input(json!({"id_column": "listing_url"})).is_empty());
        // Not known to come from another column (not mapped, or nested): no warning.
        let unmapped = json!({"field_mapping": {"record.title": "title"}});
        assert!(input(unmapped).is_empty());
        let nested = json!({"field_mapping": {"record.links.url": "url"}});
        assert!(input(nested).is_empty());
    }

    #[test]
    fn inline_credentials_beside_a_connection_are_warned_of() {
        let warnings = |v: serde_json::Value| serde_json::from_value::<SourceAdapterInput>(v).unwrap().warnings();
        let creds = json!({"credentials": {"access_token_id": "i", "access_token_secret": "s"}});
        let both = warnings(json!({"adapter_type": "mux", "connection_id": "conn_x", "connection": creds}));
        assert!(both.len() == 1 && both[0].contains("not used while connection_id is set"), "{both:?}");
        // Sent back from a view ("(set; never shown)"): still both.
        let kept = json!({"credentials": "(set; never shown)"});
        assert_eq!(warnings(json!({"adapter_type": "mux", "connection_id": "conn_x", "connection": kept})).len(), 1);
        assert!(warnings(json!({"adapter_type": "mux", "connection": creds})).is_empty());
        assert!(warnings(json!({"adapter_type": "mux", "connection_id": "conn_x"})).is_empty());
    }

    #[test]
    fn an_unknown_mux_event_type_is_warned_of_once() {
        let v = json!({"adapter_type": "mux",
            "event_filter": {"event_types": ["video.asset.redy", "video.asset.ready", "video.asset.redy"]}});
        let input = serde_json::from_value::<SourceAdapterInput>(v).unwrap();
        assert_eq!(input.event_filter.as_ref().unwrap().event_types, ["video.asset.redy", "video.asset.ready"]);
        let w = input.warnings();
        assert!(w.len() == 1 && w[0].contains("\"video.asset.redy\" is not a Mux event type"), "{w:?}");
    }

    #[test]
    fn credentials_debug_shows_their_names_only() {
        let c: InlineConnection =
            serde_json::from_value(json!({"credentials": {"service_role_key": "SECRET-a"}})).unwrap();
        let shown = format!("{c:?}");
        assert!(shown.contains("service_role_key") && !shown.contains("SECRET"), "{shown}");
    }

    fn schema() -> BucketSchema {
        serde_json::from_value(json!({"properties": {"video": {"type": "video"}, "duration": {"type": "float"}}}))
            .unwrap()
    }

    fn input(v: serde_json::Value) -> Result<SourceAdapterInput, ApiError> {
        crate::error::deserialize_at(Some("source_adapter"), v)
    }

    fn field_of(e: ApiError) -> String {
        match e {
            ApiError::Validation { field, .. } => field,
            other => panic!("not a validation error: {other:?}"),
        }
    }

    #[test]
    fn defaults_and_errors_name_the_field() {
        let ok = input(json!({"adapter_type": "generic_webhook"})).unwrap();
        ok.validate(&schema()).unwrap();
        assert!(ok.enabled);
        assert_eq!(ok.batching, Batching::default());
        let cases = [
            (json!({"adapter_type": "ftp"}), "source_adapter.adapter_type"),
            (
                json!({"adapter_type": "mux", "batching": {"window_seconds": 4}}),
                "source_adapter.batching.window_seconds",
            ),
            (
                json!({"adapter_type": "mux", "batching": {"max_batch_size": 1001}}),
                "source_adapter.batching.max_batch_size",
            ),
            (json!({"adapter_type": "mux", "field_mapping": {"a": "nope"}}), r#"source_adapter.field_mapping["a"]"#),
            (json!({"adapter_type": "mux", "colour": 1}), "source_adapter.colour"),
            (json!({"adapter_type": "mux", "event_type_field": "kind"}), "source_adapter.event_type_field"),
            (json!({"adapter_type": "mux", "id_column": "id"}), "source_adapter.id_column"),
            (json!({"adapter_type": "supabase", "id_column": "a-b"}), "source_adapter.id_column"),
            (json!({"adapter_type": "mux", "table": "t"}), "source_adapter.table"),
            (json!({"adapter_type": "supabase", "table": "t; drop"}), "source_adapter.table"),
            (json!({"adapter_type": "supabase", "table": "t", "schema": "a.b"}), "source_adapter.schema"),
            (json!({"adapter_type": "supabase", "schema": "media"}), "source_adapter.schema"),
            (
                json!({"adapter_type": "supabase", "connection_id": "conn_x", "batching": {"mode": "count"},
                    "writeback": {"field_mapping": [{"source_path": "a", "target_field": "b"}]}}),
                "source_adapter.table",
            ),
            (
                json!({"adapter_type": "mux", "connection": {"credentials": {"access_token_id": "x"}}}),
                "source_adapter.connection.credentials.access_token_secret",
            ),
            (
                json!({"adapter_type": "supabase", "writeback": {"field_mapping": [], "trigger": "on_alert"}}),
                "source_adapter.writeback.field_mapping",
            ),
            (
                json!({"adapter_type": "supabase", "writeback": {"field_mapping": [{"source_path": "a", "target_field": "b"}]}}),
                "source_adapter.writeback",
            ),
            (
                json!({"adapter_type": "mux", "field_mapping": {"data.a": "duration", "data.b": "duration"}}),
                r#"source_adapter.field_mapping["data.b"]"#,
            ),
            (
                json!({"adapter_type": "generic_webhook", "field_mapping": {"data.v": "video"},
                    "blob_source": {"file_field": "data.url", "blob_type": "video"}}),
                "source_adapter.blob_source.target_property",
            ),
            (
                json!({"adapter_type": "mux", "blob_source": {"blob_type": "image", "target_property": "video"}}),
                "source_adapter.blob_source.target_property",
            ),
            (
                json!({"adapter_type": "supabase", "blob_source": {"blob_type": "video", "target_property": "video"}}),
                "source_adapter.blob_source.file_field",
            ),
            // A writeback that would rewrite the row's key, write one field twice, or look the
            // row up by a name the object's metadata cannot hold.
            (
                json!({"adapter_type": "supabase", "table": "t", "connection_id": "conn_x", "batching": {"mode": "count"},
                    "writeback": {"field_mapping": [{"source_path": "status", "target_field": "x"},
                        {"source_path": "object_id", "target_field": "id"}]}}),
                "source_adapter.writeback.field_mapping[1].target_field",
            ),
            (
                json!({"adapter_type": "generic_webhook", "batching": {"mode": "count"},
                    "writeback": {"writeback_url": "https://x.example/wb", "field_mapping": [
                        {"source_path": "status", "target_field": "a"}, {"source_path": "object_id", "target_field": "a"}]}}),
                "source_adapter.writeback.field_mapping[1].target_field",
            ),
            (
                json!({"adapter_type": "generic_webhook", "batching": {"mode": "count"},
                    "writeback": {"writeback_url": "https://x.example/wb", "external_id_field": "nope",
                        "field_mapping": [{"source_path": "status", "target_field": "a"}]}}),
                "source_adapter.writeback.external_id_field",
            ),
        ];
        for (body, field) in cases {
            let err = input(body.clone()).and_then(|i| i.validate(&schema()).map(|_| i)).unwrap_err();
            assert_eq!(field_of(err), field, "{body}");
        }
    }

    #[test]
    fn secret_is_checked_against_its_digest() {
        let (secret, digest) = new_secret();
        assert_eq!(secret.len(), 64);
        let a = SourceAdapter {
            adapter_type: ProviderType::GenericWebhook,
            enabled: true,
            connection_id: None,
            sealed_credentials: None,
            event_filter: None,
            field_mapping: BTreeMap::new(),
            blob_source: None,
            batching: Batching::default(),
            dedup_key: None,
            writeback: None,
            event_type_field: None,
            id_column: None,
            table: None,
            schema: None,
            webhook_secret_sha256: digest,
            configured_at: String::new(),
        };
        let d = secret_digest(&a.webhook_secret_sha256).unwrap();
        assert!(digest_matches(&d, &secret));
        assert!(!digest_matches(&d, "nope"));
        assert!(!digest_matches(&d, &secret[..63]));
        assert!(secret_digest("not hex").is_none() && secret_digest(&"ab".repeat(31)).is_none());
        assert!(a.view().get("webhook_secret_sha256").is_none());
        // Every event, no dedup: a generic adapter's defaults.
        assert_eq!(
            a.view()["effective"],
            json!({"event_filter": {"event_types": null}, "dedup_key": null, "defaults": ["event_filter", "dedup_key"]})
        );
        let mux = SourceAdapter { adapter_type: ProviderType::Mux, dedup_key: Some("data.x".into()), ..a };
        assert_eq!(
            mux.view()["effective"],
            json!({"event_filter": {"event_types": ["video.asset.ready"]}, "dedup_key": "data.x", "defaults": ["event_filter"]})
        );
        // A blob whose property is left to its default shows it; `blob_type: null` is the
        // default type.
        let blob: BlobSource = serde_json::from_value(json!({"file_field": "u", "blob_type": null})).unwrap();
        assert_eq!(blob.blob_type, BlobType::default());
        let blob = BlobSource { blob_type: BlobType::Image, ..blob };
        let with_blob = SourceAdapter { blob_source: Some(blob), ..mux };
        let e = &with_blob.view()["effective"];
        assert_eq!(e["blob_source"], json!({"file_field": "u", "target_property": "image"}), "{e}");
        assert_eq!(e["defaults"], json!(["event_filter", "blob_source.target_property"]), "{e}");
        let rows = SourceAdapter { adapter_type: ProviderType::Supabase, table: Some("listings".into()), ..with_blob };
        let e = &rows.view()["effective"];
        assert_eq!((&e["schema"], e["defaults"].to_string().contains("\"schema\"")), (&json!("public"), true), "{e}");
    }
}
