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
#[derive(Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MuxConfig {
    /// The Mux API access token (both parts or neither), which reads an asset a webhook does
    /// not carry in full. Empty when the connection only checks signatures. Stored empty
    /// rather than left out, so that an older version still opens the configuration.
    #[serde(default)]
    pub access_token_id: String,
    #[serde(default)]
    pub access_token_secret: String,
    /// One secret or several. Mux gives every webhook endpoint its own signing secret, so a
    /// connection whose events reach hookline at several URLs (each bucket's ingest URL, the
    /// lifecycle URL) holds one per endpoint; a rotation holds the old and the new one for a
    /// while. A signature made with any of them is accepted.
    #[serde(
        default,
        deserialize_with = "one_or_many",
        serialize_with = "one_as_string",
        skip_serializing_if = "Vec::is_empty"
    )]
    pub webhook_signing_secret: Vec<String>,
}

impl MuxConfig {
    /// The API token (ID, secret), when the connection has one.
    pub fn api_token(&self) -> Option<(&str, &str)> {
        let (id, secret) = (self.access_token_id.as_str(), self.access_token_secret.as_str());
        (!id.is_empty() && !secret.is_empty()).then_some((id, secret))
    }
}

/// One secret is stored as a plain string, as before lists were accepted: a connection
/// written by this version still opens in an older one (a rollback), unless it has several.
fn one_as_string<S: serde::Serializer>(v: &[String], s: S) -> Result<S::Ok, S::Error> {
    match v {
        [one] => s.serialize_str(one),
        many => many.serialize(s),
    }
}

/// What a Mux connection's view shows for one signing secret.
pub const SIGNING_SECRET_SHOWN: &str = "(set; never shown)";

/// What a Mux connection's view shows when its secrets cannot be decrypted (the master key
/// changed): a placeholder too, refused as a value like the others.
pub const SECRETS_UNREADABLE: &str = "(unreadable with the current master key)";

/// The `error` of a connection's view whose credentials cannot be decrypted.
pub const UNREADABLE_ERROR: &str = "its provider_config cannot be decrypted with the current master key (was it \
     changed?): restore the key, or PATCH the connection with its provider_config again";

/// Most signing secrets one Mux connection holds (each is tried on every signed request).
pub const MAX_SIGNING_SECRETS: usize = 10;

/// `"s"`, `["s1", "s2"]` or `null` (how a config stored before lists were accepted says none).
fn one_or_many<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Vec<String>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum OneOrMany {
        One(String),
        Many(Vec<String>),
    }
    match Option::<serde_json::Value>::deserialize(d)? {
        None | Some(serde_json::Value::Null) => Ok(Vec::new()),
        Some(v) => match serde_json::from_value::<OneOrMany>(v) {
            Ok(OneOrMany::One(s)) => Ok(vec![s]),
            Ok(OneOrMany::Many(v)) => Ok(v),
            Err(_) => Err(serde::de::Error::custom("expected a string or an array of strings")),
        },
    }
}

/// Supabase project credentials (PostgREST writeback).
#[derive(Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SupabaseConfig {
    pub url: String,
    pub service_role_key: String,
}

// The Debug impls of the decrypted configs are hand-written so that one printed for
// debugging (a `{:?}` in a log line, a test's failure) never shows a secret: the secrets
// are replaced, header values left out (an `Authorization` is one).
impl std::fmt::Debug for MuxConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MuxConfig")
            .field("access_token_id", &self.access_token_id)
            .field("access_token_secret", &crate::delivery::channel::REDACTED)
            .field("webhook_signing_secret", &format_args!("({} set)", self.webhook_signing_secret.len()))
            .finish()
    }
}

impl std::fmt::Debug for SupabaseConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SupabaseConfig")
            .field("url", &self.url)
            .field("service_role_key", &crate::delivery::channel::REDACTED)
            .finish()
    }
}

impl std::fmt::Debug for GenericConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GenericConfig")
            .field("headers", &self.headers.keys().collect::<Vec<_>>())
            .field("url", &self.url)
            .finish()
    }
}

/// Headers sent on generic writeback, and where they may go.
#[derive(Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GenericConfig {
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
    /// The writeback URL the headers are for: they go only to a `writeback_url` on its scheme,
    /// host and port, under its path. Required with headers (since they are never shown, any
    /// API-key holder could otherwise point an adapter's writeback at a server of their own
    /// and read them); `None` in a connection saved before that, whose headers go where the
    /// adapters configured then send them (a new adapter configuration refuses it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub url: Option<String>,
}

impl GenericConfig {
    /// Whether the headers may be sent to `target` (see [`GenericConfig::url`]). Without
    /// headers there is nothing to protect: callers check only a config that has some.
    pub fn allows(&self, target: &str) -> bool {
        let Some(base) = self.url.as_deref() else { return true };
        let (Ok(base), Ok(target)) = (url::Url::parse(base), url::Url::parse(target)) else { return false };
        let dir = base.path().trim_end_matches('/');
        base.scheme() == target.scheme()
            && base.host() == target.host()
            && base.port_or_known_default() == target.port_or_known_default()
            && (target.path() == dir || target.path().starts_with(&format!("{dir}/")) || dir.is_empty())
    }
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
        // Not echoing the value: a credential sent in the wrong type is still a secret.
        fn typed_at<T: serde::de::DeserializeOwned>(at: &str, v: serde_json::Value) -> Result<T, ApiError> {
            crate::error::deserialize_at(Some(at), v).map_err(ApiError::unquoted)
        }
        let field = |name: &str| format!("{at}.{name}");
        if let Some((path, shown)) = placeholder_in(&v) {
            return Err(ApiError::validation(
                format!("{at}.{path}"),
                format!(
                    "{shown:?} is how the API shows a stored secret, not a secret: send the real value (saved as \
                     is, it would be a secret anyone can read here)"
                ),
            ));
        }
        let cfg = match provider_type {
            ProviderType::Mux => {
                // `[]` would read as "no secret", silently: say so instead (leave the field out
                // for none).
                if v.get("webhook_signing_secret").and_then(|s| s.as_array()).is_some_and(|a| a.is_empty()) {
                    return Err(ApiError::validation(
                        field("webhook_signing_secret"),
                        "an empty list: give the signing secret of each Mux webhook endpoint that sends here \
                         (without one, Mux-Signature cannot be checked and signed ingests are refused), or leave the \
                         field out",
                    ));
                }
                let given = |name: &str| v.get(name).is_some();
                let list = v.get("webhook_signing_secret").is_some_and(serde_json::Value::is_array);
                let token = [given("access_token_id"), given("access_token_secret")];
                let c: MuxConfig = typed_at(at, v)?;
                // The API token is optional (a connection may only check signatures), but
                // half of one is a mistake, and so is a connection with nothing at all.
                match token {
                    [true, false] => {
                        return Err(ApiError::validation(
                            field("access_token_secret"),
                            "is required with access_token_id (the Mux API token's two parts)",
                        ))
                    }
                    [false, true] => {
                        return Err(ApiError::validation(
                            field("access_token_id"),
                            "is required with access_token_secret (the Mux API token's two parts)",
                        ))
                    }
                    [false, false] if c.webhook_signing_secret.is_empty() => {
                        return Err(ApiError::validation(
                            at,
                            "give access_token_id and access_token_secret (the Mux API token hookline reads assets \
                             with), webhook_signing_secret (to check Mux-Signature), or both",
                        ))
                    }
                    _ => {}
                }
                for (name, value) in
                    [("access_token_id", &c.access_token_id), ("access_token_secret", &c.access_token_secret)]
                {
                    if token[0] && value.trim().is_empty() {
                        return Err(ApiError::validation(field(name), "must not be empty"));
                    }
                }
                // A line break copied with a secret is kept as part of it: every signature
                // would then mismatch, every API call be refused, and nothing would say why.
                let one_line =
                    "must be one line without control characters (a line break copied with it from a file or \
                                a terminal?)";
                for (name, value) in
                    [("access_token_id", &c.access_token_id), ("access_token_secret", &c.access_token_secret)]
                {
                    if value.chars().any(char::is_control) {
                        return Err(ApiError::validation(field(name), one_line));
                    }
                    if !value.is_ascii() {
                        return Err(ApiError::validation(
                            field(name),
                            not_ascii("the Authorization header of Mux API calls"),
                        ));
                    }
                }
                if let Some(i) = c.webhook_signing_secret.iter().position(|s| s.chars().any(char::is_control)) {
                    let name = match list {
                        true => format!("webhook_signing_secret.{i}"),
                        false => "webhook_signing_secret".to_string(),
                    };
                    return Err(ApiError::validation(field(&name), one_line));
                }
                if c.webhook_signing_secret.len() > MAX_SIGNING_SECRETS {
                    return Err(ApiError::validation(
                        field("webhook_signing_secret"),
                        format!("at most {MAX_SIGNING_SECRETS} secrets"),
                    ));
                }
                if c.webhook_signing_secret.iter().any(|s| s.trim().is_empty()) {
                    return Err(ApiError::validation(field("webhook_signing_secret"), "must not be empty when given"));
                }
                ProviderConfig::Mux(c)
            }
            ProviderType::Supabase => {
                let c: SupabaseConfig = typed_at(at, v)?;
                if let Some(problem) = supabase_url_problem(&c.url) {
                    return Err(ApiError::validation(field("url"), problem));
                }
                if c.service_role_key.trim().is_empty() {
                    return Err(ApiError::validation(field("service_role_key"), "must not be empty"));
                }
                // Sent as the `apikey` and `Authorization` headers: a key no header can carry
                // would be sent without them (not echoed: it is a secret).
                if c.service_role_key.chars().any(char::is_control) {
                    return Err(ApiError::validation(
                        field("service_role_key"),
                        "must be one line without control characters (a line break copied with it from a file or a \
                         terminal?)",
                    ));
                }
                if !c.service_role_key.is_ascii() {
                    return Err(ApiError::validation(
                        field("service_role_key"),
                        not_ascii("the apikey and Authorization headers of writebacks"),
                    ));
                }
                ProviderConfig::Supabase(c)
            }
            ProviderType::GenericWebhook => {
                let c: GenericConfig = typed_at(at, if v.is_null() { serde_json::json!({}) } else { v })?;
                match c.url.as_deref() {
                    Some(raw) => {
                        // No userinfo: the url is shown in the connection's view.
                        let ok = url::Url::parse(raw).is_ok_and(|u| {
                            matches!(u.scheme(), "http" | "https")
                                && u.host().is_some()
                                && u.query().is_none()
                                && u.username().is_empty()
                                && u.password().is_none()
                        });
                        if !ok {
                            return Err(ApiError::validation(
                                field("url"),
                                "must be an http(s) URL without a query or a login: the writeback URL (or a prefix of \
                                 it) the headers are for",
                            ));
                        }
                    }
                    // Inline credentials are tied to their adapter's writeback_url already.
                    None if !c.headers.is_empty() && at == "provider_config" => {
                        return Err(ApiError::validation(
                            field("url"),
                            "required with headers: the writeback URL (or a prefix of it) they are for; they are sent \
                             to no other",
                        ));
                    }
                    None => {}
                }
                // The webhook channel's rules: a name once, whatever its letter case; not a
                // framing header (the HTTP client's), nor one the writeback sets itself. A
                // Content-Type replaces the writeback's default.
                let owned = |name: &str| {
                    if crate::delivery::channel::framing_header(name) {
                        Some("a framing header is the HTTP client's and cannot be set")
                    } else {
                        crate::adapter::writeback::sets_header(name)
                            .then_some(crate::delivery::channel::SET_BY_HOOKLINE)
                    }
                };
                crate::delivery::channel::check_header_set(
                    &c.headers,
                    |name| field(&format!("headers.{name}")),
                    owned,
                )?;
                // Credentials (an Authorization), sent as they are: ASCII, as a key or token is.
                if let Some(name) = c.headers.iter().find(|(_, v)| !v.is_ascii()).map(|(n, _)| n) {
                    return Err(ApiError::validation(
                        field(&format!("headers.{name}")),
                        not_ascii(&format!("the {name} header of writebacks")),
                    ));
                }
                let sized = c.headers.iter().map(|(n, v)| (n.as_str(), v.as_str(), field(&format!("headers.{n}"))));
                crate::delivery::channel::check_header_sizes(&field("headers"), sized)?;
                ProviderConfig::Generic(c)
            }
        };
        Ok(cfg)
    }
}

/// The refusal of a credential with a character outside ASCII. It goes into an HTTP header
/// (`header`), which carries ASCII only: the bytes of another character would be sent raw,
/// and no real key or token has one, so it is a placeholder (the docs' `…`) or a copy gone
/// wrong. The value is not quoted: it is a secret.
fn not_ascii(header: &str) -> String {
    format!(
        "must be ASCII: it is sent in {header}, and no real key or token has another character (a placeholder such as \
         the docs' ellipsis, or typographic quotes, copied with it?)"
    )
}

/// What is wrong with a Supabase `url`, if anything. It must be the project URL: hookline
/// adds `/rest/v1/{table}` itself, so a URL pasted with the dashboard's API path
/// (`https://xyz.supabase.co/rest/v1/`) would make every writeback PATCH
/// `/rest/v1/rest/v1/{table}`. Refused rather than stripped: the user learns what the field
/// means, and nothing stored differs from what was sent. Another path is a prefix a
/// self-hosted Supabase may sit behind (`https://host/supabase`), and is kept.
fn supabase_url_problem(raw: &str) -> Option<String> {
    const EXPECTED: &str = "the project URL, e.g. https://abcd.supabase.co, without /rest/v1";
    let u = match url::Url::parse(raw) {
        Ok(u) if matches!(u.scheme(), "http" | "https") && u.host().is_some() => u,
        _ => return Some(format!("must be an http(s) URL: {EXPECTED}")),
    };
    // Supabase's own hosts serve the API at the root: any path there is a pasted API or
    // dashboard URL (`/rest/v1`, `/graphql/v1`, `/dashboard/project/…`).
    // (A fully qualified name's trailing dot names the same host.)
    let hosted = u
        .host_str()
        .map(|h| h.trim_end_matches('.'))
        .is_some_and(|h| h.ends_with(".supabase.co") || h == "supabase.com" || h.ends_with(".supabase.com"));
    let api_path = u.path().split('/').collect::<Vec<_>>().windows(2).any(|w| w[0] == "rest" && w[1].starts_with('v'));
    if api_path || (hosted && !matches!(u.path(), "" | "/")) {
        let path: String = u.path().chars().take(80).collect();
        return Some(format!("has the path {path:?}; give {EXPECTED} (hookline adds /rest/v1/{{table}} to it)"));
    }
    if u.query().is_some() || u.fragment().is_some() {
        return Some(format!("has a query or fragment; give {EXPECTED}"));
    }
    None
}

impl ProviderConfig {
    /// Decodes decrypted JSON by the recorded provider type rather than by guessing the shape.
    pub fn decode(provider_type: ProviderType, plain: &[u8]) -> Result<ProviderConfig, DecryptError> {
        let decoded = match provider_type {
            ProviderType::Mux => serde_json::from_slice(plain).map(ProviderConfig::Mux),
            ProviderType::Supabase => serde_json::from_slice(plain).map(ProviderConfig::Supabase),
            ProviderType::GenericWebhook => serde_json::from_slice(plain).map(ProviderConfig::Generic),
        };
        decoded.map_err(|_| DecryptError::Format(provider_type.as_str()))
    }

    /// The Mux webhook signing secrets, when this is a Mux config (empty: none configured).
    pub fn mux_signing_secrets(&self) -> Vec<&str> {
        match self {
            ProviderConfig::Mux(m) => {
                m.webhook_signing_secret.iter().map(String::as_str).filter(|s| !s.is_empty()).collect()
            }
            _ => Vec::new(),
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

    /// Replaces the name and/or the configuration (sealed afresh), as `PATCH` asks.
    pub fn update(&mut self, name: Option<String>, config: Option<&ProviderConfig>, secrets: &SecretBox) {
        if let Some(name) = name {
            self.name = name;
        }
        if let Some(config) = config {
            let plaintext = serde_json::to_vec(config).unwrap_or_default();
            self.sealed_config = secrets.seal(&plaintext, self.connection_id.as_str());
        }
        self.updated_at = crate::util::now_rfc3339();
    }

    /// Decrypts the provider configuration. Call only when an event needs it; never log it.
    /// Decoding goes by the recorded provider type (see [`ProviderConfig::decode`]).
    pub fn open(&self, secrets: &SecretBox) -> Result<ProviderConfig, DecryptError> {
        let plain = secrets.open(&self.sealed_config, self.connection_id.as_str())?;
        ProviderConfig::decode(self.provider_type, &plain)
    }

    /// The public view: never includes the configuration. A Mux connection's view says
    /// whether it has a `webhook_signing_secret` (and how many) without showing it:
    /// `"(set; never shown)"`, `"(3 set; never shown)"`, or `null` (none: Mux-Signature cannot
    /// be checked, signed ingests are refused). Opening the configuration for that takes the
    /// master key; one that cannot open it is said so.
    pub fn view(&self, secrets: &SecretBox) -> serde_json::Value {
        let mut v = serde_json::json!({
            "connection_id": self.connection_id,
            "name": self.name,
            "provider_type": self.provider_type,
            "created_at": self.created_at,
            "updated_at": self.updated_at,
        });
        let opened = self.open(secrets);
        // Whatever the provider: a view that looks healthy while nothing in it can be used
        // would hide what the start-up log and the gauge say.
        match &opened {
            Err(DecryptError::Key) => v["error"] = UNREADABLE_ERROR.into(),
            Err(e @ DecryptError::Format(_)) => {
                v["error"] = format!("{e}: PATCH the connection with its provider_config again").into()
            }
            Ok(_) => {}
        }
        match self.provider_type {
            // Where its headers may go (no secret): null for a connection saved before it
            // was asked for.
            ProviderType::GenericWebhook => {
                v["url"] = match opened {
                    Ok(ProviderConfig::Generic(g)) => g.url.into(),
                    _ => serde_json::Value::Null,
                };
            }
            ProviderType::Mux => {
                v["webhook_signing_secret"] = match opened {
                    Ok(cfg) => match cfg.mux_signing_secrets().len() {
                        0 => serde_json::Value::Null,
                        1 => SIGNING_SECRET_SHOWN.into(),
                        n => format!("({n} set; never shown)").into(),
                    },
                    Err(_) => SECRETS_UNREADABLE.into(),
                };
            }
            ProviderType::Supabase => {}
        }
        v
    }
}

/// The first string in `v` that is one of the forms the API shows in place of a secret
/// (`(set; never shown)`, `(3 set; never shown)`, `********`), with its dot-path. Why: sent
/// back from a GET view as if it were the value, it would be saved as the secret, one that
/// anyone can read in this README (a Mux signing secret then lets anyone sign lifecycle
/// deletes). Nothing a provider issues looks like these.
fn placeholder_in(v: &serde_json::Value) -> Option<(String, String)> {
    match v {
        serde_json::Value::String(s) => is_placeholder(s).then(|| (String::new(), s.clone())),
        serde_json::Value::Array(items) => items
            .iter()
            .enumerate()
            .find_map(|(i, item)| placeholder_in(item).map(|(p, s)| (join_path(&i.to_string(), &p), s))),
        serde_json::Value::Object(m) => {
            m.iter().find_map(|(k, item)| placeholder_in(item).map(|(p, s)| (join_path(k, &p), s)))
        }
        _ => None,
    }
}

fn join_path(head: &str, rest: &str) -> String {
    if rest.is_empty() {
        head.to_string()
    } else {
        format!("{head}.{rest}")
    }
}

fn is_placeholder(s: &str) -> bool {
    let s = s.trim();
    if [SIGNING_SECRET_SHOWN, SECRETS_UNREADABLE, crate::delivery::channel::REDACTED].contains(&s) {
        return true;
    }
    s.strip_prefix('(')
        .and_then(|r| r.strip_suffix(" set; never shown)"))
        .is_some_and(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()))
}

/// `provider_config` as `Debug` shows it: its keys, never its values (secrets).
fn config_keys(config: &serde_json::Value) -> String {
    match config {
        serde_json::Value::Object(m) => format!("{{{}}}", m.keys().cloned().collect::<Vec<_>>().join(", ")),
        serde_json::Value::Null => "null".into(),
        _ => "(not an object)".into(),
    }
}

/// `POST /v1/organizations/connections` body.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CreateConnection {
    pub name: String,
    pub provider_type: ProviderType,
    #[serde(default)]
    pub provider_config: serde_json::Value,
}

impl std::fmt::Debug for CreateConnection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CreateConnection")
            .field("name", &self.name)
            .field("provider_type", &self.provider_type)
            .field("provider_config", &config_keys(&self.provider_config))
            .finish()
    }
}

fn check_name(name: &str) -> Result<(), ApiError> {
    crate::util::check_name("name", name, 200)
}

/// `PATCH /v1/organizations/connections/{id}` body: a new name, and/or a whole new
/// `provider_config` (replacing the old one: secrets are never returned, so there is nothing
/// to merge with). The provider type cannot change.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PatchConnection {
    /// `null` is a 422, not "unchanged" (see [`crate::util::present`]).
    #[serde(default, deserialize_with = "crate::util::present")]
    pub name: Option<String>,
    /// `Some(Value::Null)` for `null`: refused by name in [`PatchConnection::validate`].
    #[serde(default, deserialize_with = "crate::util::present")]
    pub provider_config: Option<serde_json::Value>,
}

impl std::fmt::Debug for PatchConnection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PatchConnection")
            .field("name", &self.name)
            .field("provider_config", &self.provider_config.as_ref().map(config_keys))
            .finish()
    }
}

impl PatchConnection {
    /// Checks the body against the connection's provider type. `{}` is valid and changes
    /// nothing, as a bucket's or a webhook's empty PATCH.
    /// `current_name`: the connection's; sent back unchanged, it is not checked again (a name
    /// saved before a rule was added must not refuse every other change).
    pub fn validate(
        self,
        provider_type: ProviderType,
        current_name: &str,
    ) -> Result<(Option<String>, Option<ProviderConfig>), ApiError> {
        if let Some(name) = self.name.as_deref().filter(|n| *n != current_name) {
            check_name(name)?;
        }
        let config = match self.provider_config {
            None => None,
            Some(serde_json::Value::Null) => {
                return Err(ApiError::validation("provider_config", "cannot be removed; delete the connection instead"))
            }
            Some(v) => Some(ProviderConfig::parse(provider_type, v)?),
        };
        Ok((self.name, config))
    }
}

impl CreateConnection {
    pub fn validate(self) -> Result<(String, ProviderType, ProviderConfig), ApiError> {
        check_name(&self.name)?;
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
    fn debug_output_shows_no_secret() {
        let mux = MuxConfig {
            access_token_id: "tok-id".into(),
            access_token_secret: "SECRET-a".into(),
            webhook_signing_secret: vec!["SECRET-b".into(), "SECRET-c".into()],
        };
        let supabase = SupabaseConfig { url: "https://x.supabase.co".into(), service_role_key: "SECRET-d".into() };
        let generic = GenericConfig {
            headers: BTreeMap::from([("Authorization".to_string(), "Bearer SECRET-e".to_string())]),
            url: Some("https://results.example.com/".into()),
        };
        let shown = format!(
            "{:?}",
            [ProviderConfig::Mux(mux), ProviderConfig::Supabase(supabase), ProviderConfig::Generic(generic)]
        );
        assert!(!shown.contains("SECRET"), "{shown}");
        for kept in ["tok-id", "(2 set)", "x.supabase.co", "Authorization", "results.example.com"] {
            assert!(shown.contains(kept), "{kept}: {shown}");
        }
    }

    #[test]
    fn generic_headers_go_only_under_their_url() {
        let g = |url: Option<&str>| GenericConfig { headers: BTreeMap::new(), url: url.map(str::to_string) };
        let pinned = g(Some("https://hooks.example.com/in"));
        for ok in
            ["https://hooks.example.com/in", "https://hooks.example.com/in/x?y=1", "https://hooks.example.com:443/in"]
        {
            assert!(pinned.allows(ok), "{ok}");
        }
        for refused in [
            "https://hooks.example.com/inx",
            "https://hooks.example.com/",
            "http://hooks.example.com/in",
            "https://hooks.example.com:8443/in",
            "https://evil.example.com/in",
            "https://hooks.example.com.evil.test/in",
            "not a url",
        ] {
            assert!(!pinned.allows(refused), "{refused}");
        }
        assert!(g(Some("https://hooks.example.com")).allows("https://hooks.example.com/any/path"));
        assert!(g(Some("https://hooks.example.com/in/")).allows("https://hooks.example.com/in/x"));
        assert!(g(None).allows("https://anywhere.example.com/"), "a connection saved before url was asked for");
    }

    #[test]
    fn a_shown_placeholder_is_refused_as_a_secret() {
        let field = |t: ProviderType, v: serde_json::Value| match ProviderConfig::parse(t, v) {
            Err(ApiError::Validation { field, .. }) => field,
            other => panic!("not refused: {other:?}"),
        };
        let mux = |secret: serde_json::Value| serde_json::json!({"access_token_id": "i", "access_token_secret": "s", "webhook_signing_secret": secret});
        assert_eq!(
            field(ProviderType::Mux, mux("(set; never shown)".into())),
            "provider_config.webhook_signing_secret"
        );
        assert_eq!(
            field(ProviderType::Mux, mux(serde_json::json!(["real-one", " (2 set; never shown)"]))),
            "provider_config.webhook_signing_secret.1"
        );
        assert_eq!(field(ProviderType::Mux, mux(SECRETS_UNREADABLE.into())), "provider_config.webhook_signing_secret");
        assert_eq!(
            field(
                ProviderType::Supabase,
                serde_json::json!({"url": "https://x.supabase.co", "service_role_key": "********"})
            ),
            "provider_config.service_role_key"
        );
        assert_eq!(
            field(
                ProviderType::GenericWebhook,
                serde_json::json!({"url": "https://h.example.com", "headers": {"Authorization": "********"}})
            ),
            "provider_config.headers.Authorization"
        );
        // Look-alikes are secrets like any other.
        for ok in ["(set; shown)", "(x set; never shown)", "***", "a ******** b"] {
            assert!(ProviderConfig::parse(ProviderType::Mux, mux(ok.into())).is_ok(), "{ok}");
        }
    }

    /// A credential that goes into a header is ASCII; a Mux signing secret, an HMAC key that
    /// never does, may hold any character.
    #[test]
    fn a_header_credential_is_ascii() {
        let refused = |t: ProviderType, v: serde_json::Value| match ProviderConfig::parse(t, v) {
            Err(ApiError::Validation { field, message }) => {
                assert!(message.starts_with("must be ASCII") && !message.contains('é'), "{message}");
                field
            }
            other => panic!("not refused: {other:?}"),
        };
        let supabase = |key: &str| serde_json::json!({"url": "https://x.supabase.co", "service_role_key": key});
        assert_eq!(refused(ProviderType::Supabase, supabase("…")), "provider_config.service_role_key");
        assert_eq!(refused(ProviderType::Supabase, supabase("eyJé")), "provider_config.service_role_key");
        let mux = |id: &str, secret: &str| serde_json::json!({"access_token_id": id, "access_token_secret": secret});
        assert_eq!(refused(ProviderType::Mux, mux("idé", "s")), "provider_config.access_token_id");
        assert_eq!(refused(ProviderType::Mux, mux("i", "“s”")), "provider_config.access_token_secret");
        assert!(ProviderConfig::parse(ProviderType::Supabase, supabase("eyJ.abc-_~!")).is_ok());
        let generic =
            serde_json::json!({"url": "https://h.example.com", "headers": {"X-Key": "k", "Authorization": "Bearer …"}});
        assert_eq!(refused(ProviderType::GenericWebhook, generic), "provider_config.headers.Authorization");
        let signing = serde_json::json!({"webhook_signing_secret": "clé"});
        assert!(ProviderConfig::parse(ProviderType::Mux, signing).is_ok());
    }

    /// A credential sent in the wrong type is refused without its value in the message.
    #[test]
    fn a_credential_of_the_wrong_type_is_not_echoed() {
        let cases = [
            (
                ProviderType::Supabase,
                serde_json::json!({"url": "https://x.supabase.co", "service_role_key": 98765432123u64}),
            ),
            (
                ProviderType::GenericWebhook,
                serde_json::json!({"url": "https://h.example.com", "headers": {"Authorization": 98765432123u64}}),
            ),
            (ProviderType::Mux, serde_json::json!({"access_token_id": "i", "access_token_secret": 98765432123u64})),
        ];
        for (t, v) in cases {
            let Err(ApiError::Validation { field, message }) = ProviderConfig::parse(t, v) else { panic!("{t:?}") };
            assert!(!message.contains("98765432123") && message.contains("not a number"), "{field}: {message}");
        }
    }

    /// A configuration that decrypts but is not of its recorded kind (another version wrote
    /// it) is not blamed on the master key.
    #[test]
    fn a_config_that_does_not_decode_is_not_called_undecryptable() {
        let secrets = SecretBox::new([1u8; 32]);
        let cfg = ProviderConfig::parse(
            ProviderType::Supabase,
            serde_json::json!({"url": "https://x.supabase.co", "service_role_key": "srk-123"}),
        )
        .unwrap();
        let mut conn = Connection::new("sb".into(), ProviderType::Supabase, &cfg, &secrets);
        conn.sealed_config = secrets.seal(br#"{"url": 5}"#, conn.connection_id.as_str());
        assert!(matches!(conn.open(&secrets), Err(DecryptError::Format("supabase"))));
        let error = conn.view(&secrets)["error"].as_str().unwrap_or_default().to_string();
        assert!(error.contains("do not decode as a supabase configuration"), "{error}");
        assert!(!error.contains("master key"), "{error}");
        // A wrong key is still said to be one.
        let error = conn.view(&SecretBox::new([2u8; 32]))["error"].as_str().unwrap_or_default().to_string();
        assert!(error.contains("cannot be decrypted with the current master key"), "{error}");
    }

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
        assert!(!conn.view(&secrets).to_string().contains("srk-123"));
        let mux = |secret: serde_json::Value| {
            let cfg = ProviderConfig::parse(
                ProviderType::Mux,
                serde_json::json!({"access_token_id": "i", "access_token_secret": "s", "webhook_signing_secret": secret}),
            )
            .unwrap();
            Connection::new("m".into(), ProviderType::Mux, &cfg, &secrets).view(&secrets)
        };
        assert_eq!(mux(serde_json::json!("whsec-abc"))["webhook_signing_secret"], SIGNING_SECRET_SHOWN);
        assert_eq!(mux(serde_json::json!(["a1", "b2"]))["webhook_signing_secret"], "(2 set; never shown)");
        assert!(mux(serde_json::Value::Null)["webhook_signing_secret"].is_null());
        assert!(!mux(serde_json::json!("whsec-abc")).to_string().contains("whsec-abc"));
    }

    #[test]
    fn a_mux_signing_secret_is_one_string_or_several() {
        let mux = |secret: serde_json::Value| {
            ProviderConfig::parse(
                ProviderType::Mux,
                serde_json::json!({"access_token_id": "i", "access_token_secret": "s", "webhook_signing_secret": secret}),
            )
        };
        assert_eq!(mux(serde_json::json!("a")).unwrap().mux_signing_secrets(), vec!["a"]);
        assert_eq!(mux(serde_json::json!(["a", "b"])).unwrap().mux_signing_secrets(), vec!["a", "b"]);
        assert!(mux(serde_json::Value::Null).unwrap().mux_signing_secrets().is_empty());
        for bad in [serde_json::json!(""), serde_json::json!(["a", " "]), serde_json::json!(7), serde_json::json!([])] {
            let e = mux(bad.clone()).err().unwrap_or_else(|| panic!("{bad} accepted"));
            assert!(e.to_string().contains("webhook_signing_secret"), "{bad}: {e}");
        }
        let many: Vec<String> = (0..=MAX_SIGNING_SECRETS).map(|i| format!("s{i}")).collect();
        assert!(mux(serde_json::json!(many)).is_err());
        // One secret is stored as a string (an older version can still open it).
        let one = mux(serde_json::json!(["a"])).unwrap();
        assert!(serde_json::to_string(&one).unwrap().contains(r#""webhook_signing_secret":"a""#));
        // A config stored before lists were accepted (one string, or null) still opens.
        for (stored, want) in [(r#""old""#, vec!["old"]), ("null", vec![])] {
            let plain =
                format!(r#"{{"access_token_id":"i","access_token_secret":"s","webhook_signing_secret":{stored}}}"#);
            let cfg = ProviderConfig::decode(ProviderType::Mux, plain.as_bytes()).unwrap();
            assert_eq!(cfg.mux_signing_secrets(), want);
        }
    }

    #[test]
    fn a_supabase_url_is_the_project_url_without_the_api_path() {
        let parse = |url: &str| {
            ProviderConfig::parse(ProviderType::Supabase, serde_json::json!({"url": url, "service_role_key": "k"}))
        };
        // A path that is not the API's is a self-hosted prefix.
        for ok in
            ["https://abcd.supabase.co", "https://abcd.supabase.co/", "http://127.0.0.1:54321", "https://h/supabase"]
        {
            assert!(parse(ok).is_ok(), "{ok}");
        }
        for bad in [
            "https://abcd.supabase.co/rest/v1/",
            "https://abcd.supabase.co/rest/v1",
            "https://h/supabase/rest/v1/",
            "https://abcd.supabase.co/graphql/v1",
            "https://supabase.com/dashboard/project/abcd",
            "https://abcd.supabase.co./x",
            "https://ABCD.Supabase.CO./graphql/v1",
            "https://abcd.supabase.co/?a=b",
            "https://abcd.supabase.co#f",
            "ftp://abcd.supabase.co",
            "abcd.supabase.co",
        ] {
            let e = parse(bad).err().unwrap_or_else(|| panic!("{bad} accepted")).to_string();
            assert!(e.starts_with("provider_config.url: "), "{bad}: {e}");
            assert!(e.contains("the project URL, e.g. https://abcd.supabase.co, without /rest/v1"), "{bad}: {e}");
        }
    }

    /// The request bodies of the connection routes hold the raw `provider_config`: printed
    /// for debugging (a `{:?}` in a log line, a panic message), they show its keys only, as
    /// the decrypted configs do (see `debug_output_shows_no_secret`).
    #[test]
    fn request_bodies_debug_output_shows_no_secret() {
        let body = serde_json::json!({"name": "m", "provider_type": "mux", "provider_config":
            {"access_token_id": "i", "access_token_secret": "SECRET-a", "webhook_signing_secret": "SECRET-b"}});
        let create: CreateConnection = serde_json::from_value(body).unwrap();
        let patch: PatchConnection = serde_json::from_value(serde_json::json!({"provider_config":
            {"url": "https://x.supabase.co", "service_role_key": "SECRET-c"}}))
        .unwrap();
        let shown = format!("{create:?} {patch:?}");
        assert!(!shown.contains("SECRET"), "{shown}");
    }
}
