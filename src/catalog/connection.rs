//! Org-level connections: provider credentials, encrypted at rest.
//!
//! The API accepts `provider_config` once, validates it against the provider's shape, and
//! stores it only sealed (see `crypto.rs`). No response ever contains it; adapters open it
//! when an event needs it.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::crypto::{DecryptError, SecretBox};
use crate::error::ApiError;
use crate::ids::ConnectionId;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ProviderType {
    Mux,
    Supabase,
    GenericWebhook,
}

impl ProviderType {
    pub fn as_str(&self) -> &'static str {
        match self {
            ProviderType::Mux => "mux",
            ProviderType::Supabase => "supabase",
            ProviderType::GenericWebhook => "generic_webhook",
        }
    }
}

/// Mux credentials.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MuxConfig {
    pub access_token_id: String,
    pub access_token_secret: String,
    #[serde(default)]
    pub webhook_signing_secret: Option<String>,
}

/// Supabase project credentials (PostgREST writeback).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SupabaseConfig {
    pub url: String,
    pub service_role_key: String,
}

/// Headers sent on generic writeback.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GenericConfig {
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
}

/// Decrypted provider configuration.
#[derive(Debug, Clone, Serialize)]
#[serde(untagged)]
pub enum ProviderConfig {
    Mux(MuxConfig),
    Supabase(SupabaseConfig),
    Generic(GenericConfig),
}

impl ProviderConfig {
    /// Parses and validates `provider_config` for `provider_type`; errors name the field.
    pub fn parse(provider_type: ProviderType, v: serde_json::Value) -> Result<ProviderConfig, ApiError> {
        Self::parse_at("provider_config", provider_type, v)
    }

    /// As [`ProviderConfig::parse`], with errors named under `at` (inline adapter credentials
    /// are `source_adapter.connection.credentials`).
    pub fn parse_at(at: &str, provider_type: ProviderType, v: serde_json::Value) -> Result<ProviderConfig, ApiError> {
        fn typed_at<T: serde::de::DeserializeOwned>(at: &str, v: serde_json::Value) -> Result<T, ApiError> {
            crate::error::deserialize_at(Some(at), v)
        }
        let field = |name: &str| format!("{at}.{name}");
        let cfg = match provider_type {
            ProviderType::Mux => {
                let c: MuxConfig = typed_at(at, v)?;
                if c.access_token_id.trim().is_empty() {
                    return Err(ApiError::validation(field("access_token_id"), "must not be empty"));
                }
                if c.access_token_secret.trim().is_empty() {
                    return Err(ApiError::validation(field("access_token_secret"), "must not be empty"));
                }
                if c.webhook_signing_secret.as_ref().is_some_and(|s| s.trim().is_empty()) {
                    return Err(ApiError::validation(field("webhook_signing_secret"), "must not be empty when given"));
                }
                ProviderConfig::Mux(c)
            }
            ProviderType::Supabase => {
                let c: SupabaseConfig = typed_at(at, v)?;
                match url::Url::parse(&c.url) {
                    Ok(u) if matches!(u.scheme(), "http" | "https") && u.host().is_some() => {}
                    _ => {
                        return Err(ApiError::validation(
                            field("url"),
                            "must be an http(s) URL such as https://xyz.supabase.co",
                        ))
                    }
                }
                if c.service_role_key.trim().is_empty() {
                    return Err(ApiError::validation(field("service_role_key"), "must not be empty"));
                }
                ProviderConfig::Supabase(c)
            }
            ProviderType::GenericWebhook => {
                let c: GenericConfig = typed_at(at, if v.is_null() { serde_json::json!({}) } else { v })?;
                for name in c.headers.keys() {
                    if warp::http::HeaderName::from_bytes(name.as_bytes()).is_err() {
                        return Err(ApiError::validation(field(&format!("headers.{name}")), "not a valid header name"));
                    }
                }
                ProviderConfig::Generic(c)
            }
        };
        Ok(cfg)
    }
}

impl ProviderConfig {
    /// Decodes decrypted JSON by the recorded provider type rather than by guessing the shape.
    pub fn decode(provider_type: ProviderType, plain: &[u8]) -> Result<ProviderConfig, DecryptError> {
        let decoded = match provider_type {
            ProviderType::Mux => serde_json::from_slice(plain).map(ProviderConfig::Mux),
            ProviderType::Supabase => serde_json::from_slice(plain).map(ProviderConfig::Supabase),
            ProviderType::GenericWebhook => serde_json::from_slice(plain).map(ProviderConfig::Generic),
        };
        decoded.map_err(|_| DecryptError)
    }

    /// The Mux webhook signing secret, when this is a Mux config that has one.
    pub fn mux_signing_secret(&self) -> Option<&str> {
        match self {
            ProviderConfig::Mux(m) => m.webhook_signing_secret.as_deref().filter(|s| !s.is_empty()),
            _ => None,
        }
    }
}

/// A connection as stored: `sealed_config` is the encrypted `provider_config`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Connection {
    pub connection_id: ConnectionId,
    pub name: String,
    pub provider_type: ProviderType,
    pub sealed_config: String,
    pub created_at: String,
    pub updated_at: String,
}

impl Connection {
    pub fn new(name: String, provider_type: ProviderType, config: &ProviderConfig, secrets: &SecretBox) -> Connection {
        let connection_id = ConnectionId::generate();
        let plaintext = serde_json::to_vec(config).unwrap_or_default();
        let sealed_config = secrets.seal(&plaintext, connection_id.as_str());
        let now = crate::util::now_rfc3339();
        Connection { connection_id, name, provider_type, sealed_config, created_at: now.clone(), updated_at: now }
    }

    /// Decrypts the provider configuration. Call only when an event needs it; never log it.
    /// Decoding goes by the recorded provider type (see [`ProviderConfig::decode`]).
    pub fn open(&self, secrets: &SecretBox) -> Result<ProviderConfig, DecryptError> {
        let plain = secrets.open(&self.sealed_config, self.connection_id.as_str())?;
        ProviderConfig::decode(self.provider_type, &plain)
    }

    /// The public view: never includes the configuration.
    pub fn view(&self) -> serde_json::Value {
        serde_json::json!({
            "connection_id": self.connection_id,
            "name": self.name,
            "provider_type": self.provider_type,
            "created_at": self.created_at,
            "updated_at": self.updated_at,
        })
    }
}

/// `POST /v1/organizations/connections` body.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CreateConnection {
    pub name: String,
    pub provider_type: ProviderType,
    #[serde(default)]
    pub provider_config: serde_json::Value,
}

impl CreateConnection {
    pub fn validate(self) -> Result<(String, ProviderType, ProviderConfig), ApiError> {
        if self.name.trim().is_empty() || self.name.chars().count() > 200 {
            return Err(ApiError::validation("name", "must be 1–200 characters and not blank"));
        }
        if self.provider_config.is_null() && self.provider_type != ProviderType::GenericWebhook {
            return Err(ApiError::validation("provider_config", "is required for this provider_type"));
        }
        let cfg = ProviderConfig::parse(self.provider_type, self.provider_config)?;
        Ok((self.name, self.provider_type, cfg))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sealed_config_opens_only_with_the_right_key() {
        let secrets = SecretBox::new([1u8; 32]);
        let cfg = ProviderConfig::parse(
            ProviderType::Supabase,
            serde_json::json!({"url": "https://x.supabase.co", "service_role_key": "srk-123"}),
        )
        .unwrap();
        let conn = Connection::new("sb".into(), ProviderType::Supabase, &cfg, &secrets);
        assert!(!conn.sealed_config.contains("srk-123"));
        match conn.open(&secrets).unwrap() {
            ProviderConfig::Supabase(s) => assert_eq!(s.service_role_key, "srk-123"),
            other => panic!("wrong kind {other:?}"),
        }
        assert!(conn.open(&SecretBox::new([2u8; 32])).is_err());
        assert!(!conn.view().to_string().contains("srk-123"));
    }
}
