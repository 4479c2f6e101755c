//! Writeback (seed 000, "Writeback"): pushing processing results back to the source system,
//! a PostgREST PATCH for `supabase`, an HTTP POST to `writeback_url` for `generic_webhook`;
//! `mux` has none.
//!
//! - this file: the `writeback` settings, their shape and validation (no I/O);
//! - [`job`]: the job recorded per object when a batch completes or an alert fires, in the
//!   same atomic store batch, and the "processing result" its `field_mapping` reads (the
//!   object itself plus `status: "completed"`, with an alert's `results` merged over it: see
//!   there);
//! - [`send`]: one attempt over HTTP, under the delivery side's outbound-address rules;
//! - [`worker`]: the per-bucket task (owned by the adapter actor) that sends jobs with
//!   retries, survives restarts, counts outcomes and reports the last error;
//! - [`operator`]: the operator's view of the jobs (`writeback_id`, the list) and the
//!   re-queue of a dead one.
//!
//! Triggers: `on_batch_complete` fires when a batch completes (auto_submit in the flush, or
//! `POST …/batches/{id}/submit`). `on_alert` fires when an alert is raised on an object with
//! `POST …/objects/{id}/alerts` (see `adapter::alert`): the seeds name the trigger but no
//! way to raise an alert, so that endpoint is hookline's own.

use serde::{Deserialize, Serialize};

mod job;
pub mod operator;
mod pending;
mod send;
mod worker;

pub use job::{
    alert_document, next_external_id, on_alert, on_batch_complete, record, record_alert, record_batch, result_document,
    sends, source_location, Job, RESULT_KEYS,
};
pub use send::sets_header;
pub use worker::{follow_mapping, give_up_barred, Lease, Leases, Worker};

use super::path;
use crate::catalog::ProviderType;
use crate::error::ApiError;

/// When a writeback fires.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Trigger {
    /// After an alert is raised on the object (`POST …/objects/{id}/alerts`).
    OnAlert,
    /// After the object's batch completes (`batch.completed`).
    OnBatchComplete,
}

/// One field written back: a dot-path into the processing result → a column or field name.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WritebackField {
    pub source_path: String,
    pub target_field: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Writeback {
    #[serde(default = "yes")]
    pub enabled: bool,
    #[serde(default = "default_trigger")]
    pub trigger: Trigger,
    /// The object metadata field holding the source record's id (for Supabase, the value
    /// matched against `id_column`); none: the object's `source.external_id`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub external_id_field: Option<String>,
    /// Required (1–256 pairs) while enabled; `{"enabled": false}` alone turns writeback off.
    #[serde(default)]
    pub field_mapping: Vec<WritebackField>,
    /// generic_webhook only: where results are POSTed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub writeback_url: Option<String>,
}

fn yes() -> bool {
    true
}

fn default_trigger() -> Trigger {
    Trigger::OnBatchComplete
}

impl Writeback {
    /// Checks the settings for an adapter of type `kind`; errors name the field under
    /// `source_adapter.writeback.`.
    pub fn validate(&self, kind: ProviderType) -> Result<(), ApiError> {
        let f = |name: &str| format!("source_adapter.writeback.{name}");
        if kind == ProviderType::Mux {
            return Err(ApiError::validation(
                "source_adapter.writeback",
                "mux adapters do not support writeback; remove the writeback key",
            ));
        }
        if let Some(x) = &self.external_id_field {
            if !path::is_valid(x) {
                return Err(ApiError::validation(f("external_id_field"), "must be a dot-path such as listing_url"));
            }
        }
        // Turned off, it may be as short as `{"enabled": false}`: what it would send is
        // checked when it is turned on (a PATCH replaces the whole adapter).
        let off = !self.enabled && self.field_mapping.is_empty();
        if (self.field_mapping.is_empty() && !off) || self.field_mapping.len() > 256 {
            return Err(ApiError::validation(f("field_mapping"), "list 1–256 {source_path, target_field} pairs"));
        }
        for (i, m) in self.field_mapping.iter().enumerate() {
            if !path::is_valid(&m.source_path) {
                return Err(ApiError::validation(f(&format!("field_mapping[{i}].source_path")), "must be a dot-path"));
            }
            let ok = match kind {
                // The column goes into a PostgREST body: a plain SQL identifier.
                ProviderType::Supabase => super::supabase::is_safe_identifier(&m.target_field),
                _ => !m.target_field.trim().is_empty() && m.target_field.len() <= 200,
            };
            if let Some(j) = self.field_mapping[..i].iter().position(|o| o.target_field == m.target_field) {
                return Err(ApiError::validation(
                    f(&format!("field_mapping[{i}].target_field")),
                    format!("{:?} is already the target of field_mapping[{j}]: one value per field", m.target_field),
                ));
            }
            if !ok {
                let why = if kind == ProviderType::Supabase {
                    "must be a column name (letters, digits, _; at most 63 bytes)"
                } else {
                    "must be 1–200 characters"
                };
                return Err(ApiError::validation(f(&format!("field_mapping[{i}].target_field")), why));
            }
        }
        match (kind, &self.writeback_url) {
            (ProviderType::GenericWebhook, None) if off => Ok(()),
            (ProviderType::GenericWebhook, None) => {
                Err(ApiError::validation(f("writeback_url"), "generic_webhook writeback needs a writeback_url"))
            }
            (ProviderType::GenericWebhook, Some(u)) => match url::Url::parse(u) {
                Ok(u) if matches!(u.scheme(), "http" | "https") && u.host().is_some() => Ok(()),
                _ => Err(ApiError::validation(f("writeback_url"), "must be an http(s) URL")),
            },
            (_, Some(_)) => Err(ApiError::validation(
                f("writeback_url"),
                "only generic_webhook adapters take a writeback_url (supabase writes back through PostgREST)",
            )),
            (_, None) => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn field_of(v: serde_json::Value, kind: ProviderType) -> String {
        let w: Writeback = serde_json::from_value(v).unwrap();
        match w.validate(kind).unwrap_err() {
            ApiError::Validation { field, .. } => field,
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn seed_example_validates_and_errors_name_the_field() {
        let seed = json!({"enabled": true, "trigger": "on_alert", "external_id_field": "listing_url",
            "field_mapping": [{"source_path": "verdict_classification", "target_field": "mp_verdict"}]});
        let w: Writeback = serde_json::from_value(seed.clone()).unwrap();
        w.validate(ProviderType::Supabase).unwrap();
        assert_eq!(w.trigger, Trigger::OnAlert);
        assert_eq!(field_of(seed.clone(), ProviderType::Mux), "source_adapter.writeback");
        assert_eq!(field_of(seed.clone(), ProviderType::GenericWebhook), "source_adapter.writeback.writeback_url");
        let mut g = seed.clone();
        g["writeback_url"] = json!("https://example.test/results");
        serde_json::from_value::<Writeback>(g.clone()).unwrap().validate(ProviderType::GenericWebhook).unwrap();
        assert_eq!(field_of(g, ProviderType::Supabase), "source_adapter.writeback.writeback_url");
        let mut bad = seed.clone();
        bad["field_mapping"][0]["target_field"] = json!("mp verdict; drop");
        assert_eq!(field_of(bad, ProviderType::Supabase), "source_adapter.writeback.field_mapping[0].target_field");
        let mut empty = seed;
        empty["field_mapping"] = json!([]);
        assert_eq!(field_of(empty, ProviderType::Supabase), "source_adapter.writeback.field_mapping");
        // Off: nothing else is needed; on (the default), the mapping is.
        let off: Writeback = serde_json::from_value(json!({"enabled": false})).unwrap();
        off.validate(ProviderType::Supabase).unwrap();
        off.validate(ProviderType::GenericWebhook).unwrap();
        assert_eq!(field_of(json!({}), ProviderType::Supabase), "source_adapter.writeback.field_mapping");
        let mut off_bad = json!({"enabled": false, "field_mapping": [{"source_path": "a", "target_field": "b c"}]});
        assert_eq!(
            field_of(off_bad.clone(), ProviderType::Supabase),
            "source_adapter.writeback.field_mapping[0].target_field"
        );
        off_bad["field_mapping"][0]["target_field"] = json!("b");
        assert_eq!(field_of(off_bad, ProviderType::GenericWebhook), "source_adapter.writeback.writeback_url");
    }
}
