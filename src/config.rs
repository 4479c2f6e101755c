//! Configuration: one serde tree with a default for every key.
//!
//! Sources, later ones winning: built-in defaults, the TOML file, then the `HOOKLINE_*`
//! environment overrides of the contract. Unknown keys are rejected (a typo must not silently
//! drop a setting), and [`Config::validate`] runs right after loading so a bad value stops
//! the daemon at start-up with a message naming the key, never later.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context};
use serde::{Deserialize, Serialize};

// Each table says what it expects: serde's default names the Rust type (`server = 5`:
// "expected struct ServerConfig"), which the operator has never seen. (toml reports a
// wrong type for an enum such as `SmtpTls` in its own words.)
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields, expecting = "tables of settings ([server], [storage], …)")]
pub struct Config {
    pub server: ServerConfig,
    pub storage: StorageConfig,
    pub auth: AuthConfig,
    pub delivery: DeliveryConfig,
    pub mux: MuxApiConfig,
    pub ingest: IngestConfig,
    pub metrics: MetricsConfig,
}

/// What `/metrics` exports beyond the always-on series (see the README's Metrics).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields, expecting = "a table [metrics]")]
pub struct MetricsConfig {
    /// Also count ingest requests by bucket: `hookline_ingest_bucket_requests_total`, labelled
    /// `bucket_id` and `outcome`, for requests to a bucket that exists (a 404's ID, which
    /// anyone can make up, is never a label). Off by default: its series grow with the
    /// buckets (one per customer makes thousands), and a deleted bucket's stay, unchanging,
    /// until the daemon restarts.
    pub ingest_per_bucket: bool,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields, expecting = "a table [ingest]")]
pub struct IngestConfig {
    /// How often each source-adapter actor checks whether its time window is due. A window
    /// flushes at most this late.
    pub flush_tick_ms: u64,
}

impl Default for IngestConfig {
    fn default() -> Self {
        IngestConfig { flush_tick_ms: 250 }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields, expecting = "a table [mux]")]
pub struct MuxApiConfig {
    /// Base URL of the Mux API, for fetching assets a webhook does not fully describe.
    /// Tests point it at a local fake.
    pub api_base: String,
    /// Timeout of one Mux API call. The ingest answer waits for it, and Mux gives up on a
    /// webhook after 10 s (then retries it): the default leaves room for the rest.
    pub timeout_seconds: u64,
}

impl Default for MuxApiConfig {
    fn default() -> Self {
        MuxApiConfig { api_base: "https://api.mux.com".into(), timeout_seconds: 5 }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields, expecting = "a table [server]")]
pub struct ServerConfig {
    /// Address to listen on; port 0 picks a free port (printed at start-up).
    pub listen: String,
    /// Largest accepted request body; larger ones get 413 before being read.
    pub max_body_bytes: usize,
    /// Public base URL (e.g. `https://hooks.example.com`) used to show ingest URLs; none: `null`.
    pub public_url: Option<String>,
    /// How long shutdown waits for in-flight requests and actors before giving up.
    pub shutdown_timeout_seconds: u64,
    /// A client has this long to send a request's headers (else the connection is closed),
    /// and as long again for its body (else 408): a stalled client cannot hold a connection.
    pub read_timeout_seconds: u64,
    /// Enables `/v1/debug/*` (fault injection for supervision tests). Never in production.
    pub enable_debug_endpoints: bool,
    /// Most client connections open at once; more wait in the listen backlog. Keeps a flood
    /// of connections from taking the file descriptors the store needs (see `http::limits`).
    pub max_connections: usize,
    /// Most connections one client address (an IPv6 client: its /64) may hold open; its
    /// next ones are closed at once. Without it, one client could hold every
    /// `max_connections` slot. Above `max_connections` it is `max_connections`.
    pub max_connections_per_ip: usize,
    /// The most memory (MiB) that request bodies on the keyless upstream routes (ingest, Mux
    /// lifecycle) may hold while they are received and handled. Anyone who can reach the port
    /// can send those bodies, so without a bound, slow senders of large bodies could hold
    /// `max_connections` × `max_body_bytes`; past it, a body gets 503 (upstreams retry).
    pub max_upstream_body_memory_mb: usize,
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            listen: "127.0.0.1:8080".into(),
            max_body_bytes: 1024 * 1024,
            public_url: None,
            shutdown_timeout_seconds: 30,
            read_timeout_seconds: 30,
            enable_debug_endpoints: false,
            max_connections: 4096,
            max_connections_per_ip: 1024,
            max_upstream_body_memory_mb: 256,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields, expecting = "a table [storage]")]
pub struct StorageConfig {
    /// sled data directory (created if missing).
    pub path: PathBuf,
    /// sled's page cache, in MiB: on a large store, most of the daemon's resident memory.
    pub cache_capacity_mb: u64,
    /// Free space (MiB) the data directory's filesystem keeps: under it, ingests of new
    /// objects and published events are refused (503) until space is freed (see
    /// `store/room.rs`). 0: off.
    pub min_free_mb: u64,
}

impl Default for StorageConfig {
    fn default() -> Self {
        StorageConfig { path: PathBuf::from("./data"), cache_capacity_mb: 1024, min_free_mb: 256 }
    }
}

#[derive(Clone, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields, expecting = "a table [auth]")]
pub struct AuthConfig {
    /// Admin API keys. Empty: one is generated on first start, printed once, and only its
    /// SHA-256 is stored.
    pub api_keys: Vec<String>,
}

/// The longest retry delay accepted: 30 days (a longer one outlives any sane `max_age`).
const MAX_RETRY_DELAY_SECONDS: u64 = 30 * 24 * 3600;
/// The range of `delivery.max_queued_bytes_per_webhook`.
const MIN_QUEUED_BYTES: u64 = 64 * 1024;
const MAX_QUEUED_BYTES: u64 = 1 << 40;
/// Longest `delivery.max_age_hours`: a year. Larger values only overflow time arithmetic.
const MAX_AGE_HOURS: u64 = 24 * 366;

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields, expecting = "a table [delivery]")]
pub struct DeliveryConfig {
    /// Allow `http://` receivers (local development only).
    pub allow_insecure_http: bool,
    /// Allow loopback/private receivers (local development only).
    pub allow_private_networks: bool,
    /// Default per-attempt timeout for HTTP channels.
    pub request_timeout_seconds: u64,
    /// Retry an undelivered event for this long, then mark it dead.
    pub max_age_hours: u64,
    /// Delay before each retry; the last one repeats. ±20% jitter is applied.
    pub retry_schedule_seconds: Vec<u64>,
    /// Finer-grained override of `max_age_hours` (tests and development); unset by default.
    pub max_age_seconds: Option<u64>,
    /// Most concurrent requests per webhook (a slow receiver holds at most this many).
    pub max_in_flight_per_webhook: usize,
    /// Most pending deliveries of one webhook held in memory; the rest wait in the store
    /// and are read back in order as the queue drains (a dead receiver costs disk, not RAM).
    pub max_queued_in_memory_per_webhook: usize,
    /// Most bytes of pending deliveries (their events' stored size, plus about 1 KiB each)
    /// one webhook holds in memory; past it, as past the count, the rest wait in the store.
    /// A count alone does not bound memory: events reach ~1 MiB.
    pub max_queued_bytes_per_webhook: u64,
    /// A retry due later than this waits in the store (parked), not in memory.
    pub retry_in_memory_seconds: u64,
    /// An email or SMS attempt that reached a recipient starts no send to a further one
    /// after this long: the rest go in the next attempt, at once. Bounds how long one attempt holds its slot, and
    /// what a crash in its middle sends again (its reached recipients are recorded at its end).
    pub max_attempt_seconds: u64,
    /// The SMTP relay of `email` channels; unset: creating one is refused (422).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub email: Option<EmailSettings>,
    /// The Twilio-compatible API of `sms` channels; unset: creating one is refused (422).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sms: Option<SmsSettings>,
}

impl DeliveryConfig {
    /// The setting that bounds how long a delivery or writeback is tried, as an error names it.
    pub fn max_age_setting(&self) -> &'static str {
        match self.max_age_seconds {
            Some(_) => "delivery.max_age_seconds",
            None => "delivery.max_age_hours",
        }
    }
}

/// How the SMTP connection is secured.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SmtpTls {
    /// Plain connection upgraded with STARTTLS, which is required (usually port 587).
    #[default]
    Starttls,
    /// TLS from the first byte (usually port 465).
    Tls,
    /// No encryption: only with `delivery.allow_insecure_http` (local development).
    None,
}

/// `[delivery.email]`: where email channels send.
#[derive(Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, expecting = "a table [delivery.email]")]
pub struct EmailSettings {
    /// Any host, loopback and private addresses included, whatever
    /// `delivery.allow_private_networks` says: the relay is the operator's own choice (a
    /// local MTA on 127.0.0.1 is a common setup), and the API cannot change it (an email
    /// channel names recipients, never the relay), so it is no way to reach an internal
    /// address. `allow_private_networks` is for destinations the API chooses (receivers),
    /// and the SMS `api_base`, whose requests go through the receivers' guarded client.
    /// Turning it on for a local MTA would open private receivers to every webhook.
    pub smtp_host: String,
    /// Default by `tls`: 587 (starttls), 465 (tls), 25 (none).
    #[serde(default)]
    pub smtp_port: Option<u16>,
    #[serde(default)]
    pub tls: SmtpTls,
    #[serde(default)]
    pub username: Option<String>,
    /// Better from the environment: `HOOKLINE_SMTP_PASSWORD` wins over this.
    #[serde(default)]
    pub password: Option<String>,
    /// The sender, `address` or `Name <address>`.
    pub from: String,
    /// Bounds the whole send of one message (connect, TLS, login, every command).
    #[serde(default = "default_email_timeout")]
    pub timeout_seconds: u64,
}

/// `[delivery.sms]`: a Twilio-compatible Messages API.
#[derive(Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, expecting = "a table [delivery.sms]")]
pub struct SmsSettings {
    #[serde(default = "default_sms_api_base")]
    pub api_base: String,
    pub account_sid: String,
    /// Better from the environment: `HOOKLINE_SMS_AUTH_TOKEN` wins over this.
    #[serde(default)]
    pub auth_token: Option<String>,
    /// The sending number (E.164).
    pub from: String,
    #[serde(default = "default_channel_timeout")]
    pub timeout_seconds: u64,
}

fn default_channel_timeout() -> u64 {
    10
}

fn default_email_timeout() -> u64 {
    30
}

fn default_sms_api_base() -> String {
    "https://api.twilio.com".into()
}

impl EmailSettings {
    /// The port, or the usual one for the TLS mode.
    pub fn port(&self) -> u16 {
        self.smtp_port.unwrap_or(match self.tls {
            SmtpTls::Starttls => 587,
            SmtpTls::Tls => 465,
            SmtpTls::None => 25,
        })
    }
}

// Hand-written so a config printed for debugging never shows the secrets.
impl std::fmt::Debug for AuthConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AuthConfig").field("api_keys", &format_args!("({} set)", self.api_keys.len())).finish()
    }
}

impl std::fmt::Debug for EmailSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EmailSettings")
            .field("smtp_host", &self.smtp_host)
            .field("smtp_port", &self.smtp_port)
            .field("tls", &self.tls)
            .field("username", &self.username)
            .field("password", &self.password.as_ref().map(|_| "********"))
            .field("from", &self.from)
            .field("timeout_seconds", &self.timeout_seconds)
            .finish()
    }
}

impl std::fmt::Debug for SmsSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SmsSettings")
            .field("api_base", &self.api_base)
            .field("account_sid", &self.account_sid)
            .field("auth_token", &self.auth_token.as_ref().map(|_| "********"))
            .field("from", &self.from)
            .field("timeout_seconds", &self.timeout_seconds)
            .finish()
    }
}

impl Default for DeliveryConfig {
    fn default() -> Self {
        DeliveryConfig {
            allow_insecure_http: false,
            allow_private_networks: false,
            request_timeout_seconds: 10,
            max_age_hours: 72,
            retry_schedule_seconds: vec![5, 300, 1800, 7200, 18000, 36000, 50400, 72000, 86400],
            max_age_seconds: None,
            max_in_flight_per_webhook: 16,
            max_queued_in_memory_per_webhook: 10_000,
            max_queued_bytes_per_webhook: 64 * 1024 * 1024,
            retry_in_memory_seconds: 60,
            max_attempt_seconds: 300,
            email: None,
            sms: None,
        }
    }
}

/// Every environment variable the daemon reads, with what it sets: the one list behind
/// [`EnvOverrides::from_env`], the master key's lookup, `--help`, and the README's table
/// (a test compares them).
pub const ENVIRONMENT: &[(&str, &str)] = &[
    (LISTEN_VAR, "server.listen"),
    (DATA_DIR_VAR, "storage.path"),
    (API_KEYS_VAR, "auth.api_keys, comma-separated (each at least 16 characters)"),
    (MASTER_KEY_VAR, "the master key (base64 of 32 bytes) instead of {data dir}/master.key"),
    (SMTP_PASSWORD_VAR, "delivery.email.password"),
    (SMS_AUTH_TOKEN_VAR, "delivery.sms.auth_token"),
    (LOG_VAR, "log filter (default info)"),
    (LOG_FORMAT_VAR, "json for JSON logs, text (the default)"),
];
pub const LISTEN_VAR: &str = "HOOKLINE_LISTEN";
pub const DATA_DIR_VAR: &str = "HOOKLINE_DATA_DIR";
pub const API_KEYS_VAR: &str = "HOOKLINE_API_KEYS";
pub const MASTER_KEY_VAR: &str = "HOOKLINE_MASTER_KEY";
pub const SMTP_PASSWORD_VAR: &str = "HOOKLINE_SMTP_PASSWORD";
pub const SMS_AUTH_TOKEN_VAR: &str = "HOOKLINE_SMS_AUTH_TOKEN";
pub const LOG_VAR: &str = "RUST_LOG";
pub const LOG_FORMAT_VAR: &str = "HOOKLINE_LOG_FORMAT";

/// [`ENVIRONMENT`] as `--help` shows it.
pub fn environment_help() -> String {
    let mut help = String::from("Environment (overrides the config file):");
    for (name, what) in ENVIRONMENT {
        help.push_str(&format!("\n  {name:<24} {what}"));
    }
    help
}

/// serde's Rust type names in a TOML error (`expected usize`) in the operator's words.
/// Refuses a value of `doc` that is not a table where `defaults` has a table (see
/// [`Config::from_toml`]), naming its dotted path.
fn tables_are_tables(doc: &toml::Table, defaults: &toml::Table, within: &str) -> anyhow::Result<()> {
    for (key, default) in defaults {
        let (Some(given), toml::Value::Table(inner)) = (doc.get(key), default) else { continue };
        let path = if within.is_empty() { key.clone() } else { format!("{within}.{key}") };
        match given {
            toml::Value::Table(t) => tables_are_tables(t, inner, &path)?,
            // What serde would take; any other type it refuses itself, with the line.
            toml::Value::Array(_) => {
                anyhow::bail!(
                    "{path}: expected a table [{path}], not an array (settings are read by name, never by position)"
                )
            }
            _ => {}
        }
    }
    Ok(())
}

/// A URL as an error shows it: a user name or password in it (`https://user:pw@host`, also
/// written without `//`), a query and a fragment (where tokens go) replaced, since errors
/// are printed and logged.
fn without_login(url: &str) -> String {
    let (url, cut) = match url.find(['?', '#']) {
        Some(at) => (&url[..at], "?(not shown)"),
        None => (url, ""),
    };
    // The authority: after the scheme's `:` and any slashes, up to the next `/`.
    let after_scheme = url.find(':').map_or(0, |i| i + 1);
    let start = after_scheme + (url[after_scheme..].len() - url[after_scheme..].trim_start_matches('/').len());
    let end = url[start..].find('/').map_or(url.len(), |i| start + i);
    match url[start..end].rfind('@') {
        Some(at) => format!("{}********{}{cut}", &url[..start], &url[start + at..]),
        None => format!("{url}{cut}"),
    }
}

/// Whether a TOML source line names a key like a secret's (password, token, secret, key):
/// the word before each `=` is looked at, so an inline table's keys count too.
fn names_a_secret(line: &str) -> bool {
    let mut parts: Vec<&str> = line.split('=').collect();
    // What follows the last `=` is a value.
    parts.pop();
    parts.iter().any(|part| {
        let key = part.trim_end().rsplit([' ', '{', ',', '.', '"', '\'']).next().unwrap_or("").to_ascii_lowercase();
        ["password", "token", "secret", "key"].iter().any(|w| key.contains(w))
    })
}

/// A TOML error with any value a secret may be in hidden: the parser quotes the line it
/// stopped at (`5 | password=SmtpPw…`), serde's message may repeat the value (`invalid
/// type: string "…"`), and the error is printed and logged. A line naming a secret's key
/// keeps only what is before its first `=`, and then the message keeps only the value's
/// kind; an array item on a line of its own (no key) is hidden whole, whatever its array.
fn without_secrets(message: &str) -> String {
    let mut hid = false;
    let mut out = Vec::new();
    for line in message.lines() {
        let quoted = line
            .split_once(" | ")
            .filter(|(n, _)| !n.trim().is_empty() && n.trim().bytes().all(|b| b.is_ascii_digit()));
        let shown = match quoted {
            Some((number, text)) => {
                let item = text.trim_start().starts_with(['"', '\''])
                    || text.trim().trim_end_matches(',').parse::<f64>().is_ok();
                match text.split_once('=') {
                    Some((key, _)) if names_a_secret(text) => {
                        hid = true;
                        format!("{number} | {key}= (value not shown)")
                    }
                    None if item => {
                        hid = true;
                        format!("{number} | (value not shown)")
                    }
                    _ => line.to_string(),
                }
            }
            None => line.to_string(),
        };
        out.push(shown);
    }
    if hid {
        // `invalid type: string "…", expected …` → `invalid type: string, expected …`.
        for line in &mut out {
            if let Some(rest) = line.strip_prefix("invalid type: ").or_else(|| line.strip_prefix("invalid value: ")) {
                if let (Some(kind), Some(at)) = (rest.split_whitespace().next(), rest.rfind(", expected")) {
                    let head = if line.starts_with("invalid type") { "invalid type" } else { "invalid value" };
                    *line = format!("{head}: {}{}", kind.trim_end_matches(','), &rest[at..]);
                }
            }
        }
    }
    out.join("\n")
}

fn plain_types(message: &str) -> String {
    const WORDS: [(&str, &str); 9] = [
        ("usize", "a whole number, 0 or more"),
        ("u64", "a whole number, 0 or more"),
        // The narrow ones say their range: `70000` for a port is a whole number, 0 or more.
        ("u32", "a whole number from 0 to 4294967295"),
        ("u16", "a whole number from 0 to 65535"),
        ("u8", "a whole number from 0 to 255"),
        ("i64", "a whole number"),
        ("i32", "a whole number"),
        ("f64", "a number"),
        ("f32", "a number"),
    ];
    // Only as a whole word at a line's end: `expected u8` is not the start of `expected u64`.
    let plain = |line: &str| {
        WORDS.iter().find_map(|(ty, words)| {
            let head = line.strip_suffix(ty)?.strip_suffix("expected ")?;
            Some(format!("{head}expected {words}"))
        })
    };
    message.lines().map(|l| plain(l).unwrap_or_else(|| l.to_string())).collect::<Vec<_>>().join("\n")
}

/// A secret given in the environment for a channel the config does not set up: said, since
/// the operator believes it configured something.
fn unused_secret(var: &str, section: &str) {
    tracing::warn!("{var} is set but the config has no {section} section: it is not used");
}

/// Environment overrides, taken as arguments so tests do not have to mutate the process env.
#[derive(Default, Clone)]
pub struct EnvOverrides {
    pub listen: Option<String>,
    pub data_dir: Option<String>,
    pub api_keys: Option<String>,
    pub smtp_password: Option<String>,
    pub sms_auth_token: Option<String>,
}

impl std::fmt::Debug for EnvOverrides {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let hidden = |v: &Option<String>| v.as_ref().map(|_| "********");
        f.debug_struct("EnvOverrides")
            .field("listen", &self.listen)
            .field("data_dir", &self.data_dir)
            .field("api_keys", &hidden(&self.api_keys))
            .field("smtp_password", &hidden(&self.smtp_password))
            .field("sms_auth_token", &hidden(&self.sms_auth_token))
            .finish()
    }
}

impl EnvOverrides {
    pub fn from_env() -> Self {
        EnvOverrides {
            listen: std::env::var(LISTEN_VAR).ok(),
            data_dir: std::env::var(DATA_DIR_VAR).ok(),
            api_keys: std::env::var(API_KEYS_VAR).ok(),
            smtp_password: std::env::var(SMTP_PASSWORD_VAR).ok(),
            sms_auth_token: std::env::var(SMS_AUTH_TOKEN_VAR).ok(),
        }
    }

    /// The variable that set the setting a validation `message` names, if one did.
    fn source_of(&self, message: &str) -> Option<&'static str> {
        [
            (self.listen.is_some(), "server.listen", LISTEN_VAR),
            (self.data_dir.is_some(), "storage.path", DATA_DIR_VAR),
            (self.api_keys.is_some(), "auth.api_keys", API_KEYS_VAR),
            (self.smtp_password.is_some(), "delivery.email.password", SMTP_PASSWORD_VAR),
            (self.sms_auth_token.is_some(), "delivery.sms.auth_token", SMS_AUTH_TOKEN_VAR),
        ]
        .into_iter()
        .find(|(set, key, _)| *set && message.starts_with(key))
        .map(|(_, _, var)| var)
    }
}

impl Config {
    /// Reads `path` (a missing file is an error: the operator named it, or the default
    /// `./config.toml` is expected next to the binary), applies `env`, validates.
    pub fn load(path: &Path, env: &EnvOverrides) -> anyhow::Result<Config> {
        let text = std::fs::read_to_string(path).with_context(|| {
            format!("read config file {} (another one: --config <path>)", crate::util::path_shown(path))
        })?;
        let mut config = Config::from_toml(&text).with_context(|| format!("parse config file {}", path.display()))?;
        // An empty variable (a blank template value) must not silently drop the file's keys.
        if env.api_keys.as_deref().is_some_and(|k| k.split(',').all(|k| k.trim().is_empty())) {
            bail!("HOOKLINE_API_KEYS is set but lists no key; unset it to use auth.api_keys (or a generated key)");
        }
        config.apply_env(env);
        if let Err(e) = config.validate() {
            // The message names the setting; say so when the value came from the environment,
            // or the operator looks for it in a file that does not hold it.
            return Err(match env.source_of(&e.to_string()) {
                Some(var) => e.context(format!("{var} (which overrides the config file) is not valid")),
                None => e,
            });
        }
        Ok(config)
    }

    pub fn from_toml(text: &str) -> anyhow::Result<Config> {
        // serde's derived structs also take an array, field by field in declaration order:
        // `server = ["127.0.0.1:9999"]` would set `listen` without naming it. Every table of
        // the settings (all have defaults, so the defaults show them all) must be a table.
        // The optional ones (unset by default) are added to what the defaults show.
        if let (Ok(doc), Ok(toml::Value::Table(mut defaults))) =
            (text.parse::<toml::Table>(), toml::Value::try_from(Config::default()))
        {
            if let Some(toml::Value::Table(delivery)) = defaults.get_mut("delivery") {
                for optional in ["email", "sms"] {
                    delivery.entry(optional).or_insert_with(|| toml::Value::Table(toml::Table::new()));
                }
            }
            tables_are_tables(&doc, &defaults, "")?;
        }
        toml::from_str(text).map_err(|e| anyhow::anyhow!("{}", without_secrets(&plain_types(e.to_string().trim_end()))))
    }

    pub fn apply_env(&mut self, env: &EnvOverrides) {
        // Trimmed as the API keys are (a template's stray space); a path is taken as written.
        if let Some(l) = &env.listen {
            self.server.listen = l.trim().to_string();
        }
        if let Some(d) = &env.data_dir {
            self.storage.path = PathBuf::from(d);
        }
        if let Some(keys) = &env.api_keys {
            self.auth.api_keys = keys.split(',').map(str::trim).filter(|k| !k.is_empty()).map(String::from).collect();
        }
        if let Some(p) = &env.smtp_password {
            match self.delivery.email.as_mut() {
                Some(email) => email.password = Some(p.clone()),
                None => unused_secret(SMTP_PASSWORD_VAR, "[delivery.email]"),
            }
        }
        if let Some(t) = &env.sms_auth_token {
            match self.delivery.sms.as_mut() {
                Some(sms) => sms.auth_token = Some(t.clone()),
                None => unused_secret(SMS_AUTH_TOKEN_VAR, "[delivery.sms]"),
            }
        }
        // An empty secret (a blank line in the file, an empty variable) is no secret.
        if let Some(email) = self.delivery.email.as_mut() {
            email.password = email.password.take().filter(|p| !p.is_empty());
        }
        if let Some(sms) = self.delivery.sms.as_mut() {
            sms.auth_token = sms.auth_token.take().filter(|t| !t.is_empty());
        }
    }

    /// Checks every value that serde cannot; errors name the key.
    pub fn validate(&self) -> anyhow::Result<()> {
        self.listen_addr()?;
        if self.server.max_body_bytes == 0 {
            bail!("server.max_body_bytes must be greater than 0");
        }
        if !(16..=1 << 20).contains(&self.storage.cache_capacity_mb) {
            bail!("storage.cache_capacity_mb must be within 16..=1048576");
        }
        if self.storage.min_free_mb > 1 << 30 {
            bail!("storage.min_free_mb must be within 0..=1073741824 (MiB, so at most 1 PiB; 0 turns the check off)");
        }
        if !(1..=1 << 20).contains(&self.server.max_upstream_body_memory_mb) {
            bail!("server.max_upstream_body_memory_mb must be within 1..=1048576");
        }
        if self.server.max_upstream_body_memory_mb << 20 < self.server.max_body_bytes {
            bail!(
                "server.max_upstream_body_memory_mb ({} MiB) must hold at least one body of server.max_body_bytes ({} bytes)",
                self.server.max_upstream_body_memory_mb,
                self.server.max_body_bytes
            );
        }
        if !(1..=1_000_000).contains(&self.server.max_connections) {
            bail!("server.max_connections must be within 1..=1000000");
        }
        if !(1..=1_000_000).contains(&self.server.max_connections_per_ip) {
            bail!("server.max_connections_per_ip must be within 1..=1000000");
        }
        if !(1..=3600).contains(&self.server.read_timeout_seconds) {
            bail!("server.read_timeout_seconds must be within 1..=3600");
        }
        if !(1..=3600).contains(&self.server.shutdown_timeout_seconds) {
            bail!("server.shutdown_timeout_seconds must be within 1..=3600");
        }
        if let Some(u) = &self.server.public_url {
            // `webhook_url` is made from the text as written, which the URL parser below would
            // read past: surrounding spaces and line breaks dropped, `https:host` read as
            // `https://host/`. Written so, every webhook_url shown would be a broken URL.
            let plain = u.to_ascii_lowercase();
            // Nor a third slash before the host or a backslash for a slash, which it also reads past.
            let after_scheme = plain.split_once("://").map(|(_, r)| r).unwrap_or_default();
            if u.chars().any(|c| c.is_whitespace() || c.is_control() || c == '\\')
                || !(plain.starts_with("https://") || plain.starts_with("http://"))
                || after_scheme.starts_with('/')
            {
                bail!(
                    "server.public_url must be written as a plain http(s) URL, `https://host[/path]`, without spaces \
                     or control characters (a line break copied with it?); got {:?}",
                    without_login(u)
                );
            }
            // (Its scheme is http(s): checked as written above.)
            let parsed =
                url::Url::parse(u).with_context(|| format!("server.public_url {:?} is not a URL", without_login(u)))?;
            // The ingest path is appended to it: a query, a fragment or credentials would end
            // up in front of it, in every webhook_url shown.
            if parsed.query().is_some()
                || parsed.fragment().is_some()
                || !parsed.username().is_empty()
                || parsed.password().is_some()
            {
                bail!(
                    "server.public_url must be a plain base URL (scheme, host, optional path), without a query, fragment \
                     or credentials; got {:?}",
                    without_login(u)
                );
            }
        }
        if self.storage.path.as_os_str().is_empty() {
            bail!("storage.path must not be empty");
        }
        // A shell expands `~`, but none reads config.toml (nor a systemd unit's environment):
        // taken literally, `~/hldata` made a directory named `~` in the working directory and
        // a new, empty store there, the real one unseen.
        if self.storage.path.as_os_str().as_encoded_bytes().starts_with(b"~") {
            bail!(
                "storage.path {:?} starts with ~, which hookline does not expand (no shell reads config.toml); \
                 write the full path, such as /home/me/hldata",
                self.storage.path
            );
        }
        for (i, k) in self.auth.api_keys.iter().enumerate() {
            if k.trim().len() < 16 {
                bail!("auth.api_keys[{i}] is shorter than 16 characters; use a long random key");
            }
            // Sent in an HTTP header, which carries visible ASCII only: another key could
            // never be presented, and would look valid to whoever set it.
            if !k.trim().bytes().all(|b| b.is_ascii_graphic()) {
                bail!(
                    "auth.api_keys[{i}] has a character other than ASCII letters, digits and punctuation (a space, \
                     an accented letter…): it could never be sent in an Authorization header; use a long random key"
                );
            }
            if let Some(j) = self.auth.api_keys[..i].iter().position(|o| o.trim() == k.trim()) {
                bail!("auth.api_keys[{i}] repeats auth.api_keys[{j}]; list each key once");
            }
        }
        let d = &self.delivery;
        if d.request_timeout_seconds == 0 || d.request_timeout_seconds > 300 {
            bail!("delivery.request_timeout_seconds must be within 1..=300");
        }
        if !(1..=MAX_AGE_HOURS).contains(&d.max_age_hours) {
            bail!("delivery.max_age_hours must be within 1..={MAX_AGE_HOURS} (one year)");
        }
        if d.retry_schedule_seconds.is_empty() {
            bail!("delivery.retry_schedule_seconds must list at least one delay");
        }
        // A zero delay would retry a failing receiver in a hot loop until `max_age`.
        if let Some(i) = d.retry_schedule_seconds.iter().position(|s| *s == 0 || *s > MAX_RETRY_DELAY_SECONDS) {
            bail!(
                "delivery.retry_schedule_seconds[{i}] must be within 1..={MAX_RETRY_DELAY_SECONDS} (seconds), got {}",
                d.retry_schedule_seconds[i]
            );
        }
        if d.max_age_seconds.is_some_and(|s| !(1..=MAX_AGE_HOURS * 3600).contains(&s)) {
            bail!("delivery.max_age_seconds must be within 1..={} (one year) when set", MAX_AGE_HOURS * 3600);
        }
        if d.max_in_flight_per_webhook == 0 || d.max_in_flight_per_webhook > 1024 {
            bail!("delivery.max_in_flight_per_webhook must be within 1..=1024");
        }
        if !(1..=86_400).contains(&d.retry_in_memory_seconds) {
            bail!("delivery.retry_in_memory_seconds must be within 1..=86400");
        }
        // With one send's timeout (at most 300 s) after it, an attempt ends within the wait
        // a failed delivery actor's successor gives its sends (`delivery::lease::MAX_WAIT`).
        if !(1..=600).contains(&d.max_attempt_seconds) {
            bail!("delivery.max_attempt_seconds must be within 1..=600");
        }
        // Twice the sends in flight at least: a refill (at half) then never starves them.
        if d.max_queued_in_memory_per_webhook < 2 * d.max_in_flight_per_webhook
            || d.max_queued_in_memory_per_webhook > 10_000_000
        {
            bail!(
                "delivery.max_queued_in_memory_per_webhook must be within {}..=10000000 (at least twice \
                 max_in_flight_per_webhook, {})",
                2 * d.max_in_flight_per_webhook,
                d.max_in_flight_per_webhook
            );
        }
        // Below 64 KiB even small events would mostly wait in the store; past 1 TiB it bounds nothing.
        if !(MIN_QUEUED_BYTES..=MAX_QUEUED_BYTES).contains(&d.max_queued_bytes_per_webhook) {
            bail!("delivery.max_queued_bytes_per_webhook must be within {MIN_QUEUED_BYTES}..={MAX_QUEUED_BYTES} (64 KiB to 1 TiB)");
        }
        if let Some(e) = &d.email {
            if e.smtp_host.trim().is_empty() {
                bail!("delivery.email.smtp_host must not be empty");
            }
            // A host name or address, not a URL: `smtp://relay:25` would be looked up as a
            // host named so, and every message would fail.
            let host = e.smtp_host.as_str();
            let name = host.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'-');
            if !(name || host.parse::<std::net::IpAddr>().is_ok()) {
                bail!(
                    "delivery.email.smtp_host {:?} must be a host name or an IP address (no scheme, port, path or \
                     login: the port is smtp_port, the login username/password)",
                    e.smtp_host
                );
            }
            if e.smtp_port == Some(0) {
                bail!("delivery.email.smtp_port must not be 0");
            }
            if e.tls == SmtpTls::None && !d.allow_insecure_http {
                bail!("delivery.email.tls = \"none\" sends mail in clear text; it needs delivery.allow_insecure_http = true (local development only)");
            }
            if e.from.parse::<lettre::message::Mailbox>().is_err() {
                bail!("delivery.email.from {:?} is not an address like \"hookline <alerts@example.com>\"", e.from);
            }
            match (&e.username, &e.password) {
                (Some(_), None) => {
                    bail!("delivery.email.username is set without a password; set delivery.email.password or HOOKLINE_SMTP_PASSWORD")
                }
                (None, Some(_)) => bail!(
                    "delivery.email has a password (from the file or HOOKLINE_SMTP_PASSWORD) but no username; set delivery.email.username"
                ),
                _ => {}
            }
            if e.timeout_seconds == 0 || e.timeout_seconds > 300 {
                bail!("delivery.email.timeout_seconds must be within 1..=300");
            }
        }
        if let Some(s) = &d.sms {
            match url::Url::parse(&s.api_base) {
                Ok(u) if !plain_base(&u) => {
                    bail!("delivery.sms.api_base must be a plain base URL, without credentials, a query or a fragment")
                }
                Ok(u) if u.scheme() == "https" || (u.scheme() == "http" && d.allow_insecure_http) => {}
                Ok(u) if u.scheme() == "http" => {
                    bail!("delivery.sms.api_base is http://; that needs delivery.allow_insecure_http = true (local development only)")
                }
                _ => bail!("delivery.sms.api_base {:?} must be an https URL", s.api_base),
            }
            private_target("delivery.sms.api_base", &s.api_base, d)?;
            if s.account_sid.trim().is_empty() || !s.account_sid.bytes().all(|b| b.is_ascii_alphanumeric()) {
                bail!("delivery.sms.account_sid must be a non-empty alphanumeric ID");
            }
            if s.auth_token.as_deref().is_none_or(str::is_empty) {
                bail!("delivery.sms.auth_token is missing; set it or HOOKLINE_SMS_AUTH_TOKEN");
            }
            if s.from.trim().is_empty() {
                bail!("delivery.sms.from must name the sending number");
            }
            if s.timeout_seconds == 0 || s.timeout_seconds > 300 {
                bail!("delivery.sms.timeout_seconds must be within 1..=300");
            }
        }
        // The Mux token goes to it: in clear text only where http:// is allowed at all.
        match url::Url::parse(&self.mux.api_base) {
            // Credentials there would be logged (it is shown at start) and would replace the
            // connection's access token in every request (reqwest sends them as Basic auth).
            Ok(u) if !plain_base(&u) => {
                bail!("mux.api_base must be a plain base URL, without credentials, a query or a fragment")
            }
            Ok(u) if u.scheme() == "https" || (u.scheme() == "http" && d.allow_insecure_http) => {}
            Ok(u) if u.scheme() == "http" => {
                bail!(
                    "mux.api_base is http://; that needs delivery.allow_insecure_http = true (local development only)"
                )
            }
            _ => bail!("mux.api_base {:?} must be an https URL", self.mux.api_base),
        }
        // Not refused: the Mux API base is the operator's own setting (an internal proxy, a
        // mock), and the SMS rule that guards receivers would be the wrong switch for it.
        if private_target("mux.api_base", &self.mux.api_base, d).is_err() {
            tracing::warn!(
                "mux.api_base {:?} is a private, loopback or link-local address (allowed for the Mux API base): the \
                 Mux access token will be sent there",
                self.mux.api_base
            );
        }
        // Mux abandons a webhook attempt after 10 s and the ingest answer waits for the call,
        // so more than 9 s is of no use to Mux; more than 25 s could not be waited for (the
        // ingest answer waits 30 s for its actor, fetch included).
        if !(1..=25).contains(&self.mux.timeout_seconds) {
            bail!("mux.timeout_seconds must be within 1..=25 (Mux gives up on a webhook after 10 s: keep it below)");
        }
        if !(10..=5000).contains(&self.ingest.flush_tick_ms) {
            bail!("ingest.flush_tick_ms must be within 10..=5000");
        }
        Ok(())
    }

    pub fn listen_addr(&self) -> anyhow::Result<SocketAddr> {
        self.server.listen.parse().with_context(|| {
            format!(
                "server.listen {:?} is not an IP address and a port (0–65535) such as 127.0.0.1:8080 (a hostname \
                 is not accepted)",
                self.server.listen
            )
        })
    }
}

/// A base URL that holds nothing but where to send: no user name or password, query or
/// fragment.
fn plain_base(u: &url::Url) -> bool {
    u.username().is_empty() && u.password().is_none() && u.query().is_none() && u.fragment().is_none()
}

/// Refuses a provider base URL whose host is a loopback or private address (or
/// `localhost`) unless `allow_private_networks` says so, as for receivers: the provider's
/// credentials go there. (SMS sends check the address a name resolves to as well, so such
/// a base could never work; for the Mux API base it is only a warning.)
fn private_target(name: &str, raw: &str, d: &DeliveryConfig) -> anyhow::Result<()> {
    let Ok(u) = url::Url::parse(raw) else { return Ok(()) }; // reported above
    let policy = crate::delivery::netguard::NetPolicy { allow_insecure_http: true, ..d.into() };
    crate::delivery::netguard::check_url(&u, policy).map_err(|e| anyhow::anyhow!("{name}: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_output_shows_no_secret() {
        let auth = AuthConfig { api_keys: vec!["SECRET-key-0123456789".into()] };
        let env = EnvOverrides {
            listen: Some("127.0.0.1:1".into()),
            api_keys: Some("SECRET-key-0123456789".into()),
            smtp_password: Some("SECRET-a".into()),
            sms_auth_token: Some("SECRET-b".into()),
            ..Default::default()
        };
        let shown = format!("{auth:?} {env:?}");
        assert!(!shown.contains("SECRET") && shown.contains("(1 set)") && shown.contains("127.0.0.1:1"), "{shown}");
    }

    #[test]
    fn api_keys_must_be_sendable_and_listed_once() {
        for (keys, want) in [
            (vec!["ключключключключключ"], "auth.api_keys[0] has a character other than ASCII"),
            (vec!["aaaaaaaaaaaaaaaa bbbb"], "auth.api_keys[0] has a character other than ASCII"),
            (vec!["dupkey0123456789abcd", " dupkey0123456789abcd"], "auth.api_keys[1] repeats auth.api_keys[0]"),
        ] {
            let mut c = Config::default();
            c.auth.api_keys = keys.into_iter().map(String::from).collect();
            let e = c.validate().unwrap_err().to_string();
            assert!(e.contains(want), "{e}");
        }
        let mut c = Config::default();
        c.auth.api_keys = vec!["a-long_random.key~0123456789!".into()];
        c.validate().unwrap();
    }

    /// A TOML error quotes the line it stopped at: a secret's value is not shown in it.
    #[test]
    fn a_toml_error_shows_no_secret() {
        for text in [
            "[delivery.email]\nsmtp_host = \"h\"\nfrom = \"a@b.example\"\npassword=SmtpPw-SECRET42\n",
            "[auth]\napi_keys=[\"abcdefghijklmnopSECRET\", 5]\n",
            "[auth]\napi_keys = [\n  \"abcdefghijklmnopSECRET\",\n  5,\n]\n",
            "[delivery.sms]\naccount_sid = \"AC1\"\nauth_token = SECRET\nfrom = \"+1\"\n",
            "[delivery]\nemail = { smtp_host = \"h\", password = SECRET }\n",
        ] {
            let e = format!("{:#}", Config::from_toml(text).unwrap_err());
            assert!(!e.contains("SECRET") && e.contains("line"), "{text}: {e}");
        }
        // Other keys' lines are quoted as written, typos included, and their values named.
        let e = format!("{:#}", Config::from_toml("[server]\nlisten = 8080\n").unwrap_err());
        assert!(e.contains("listen = 8080"), "{e}");
        let e = format!("{:#}", Config::from_toml("[server]\nlisten \"127.0.0.1:8080\"\n").unwrap_err());
        assert!(e.contains("listen \"127.0.0.1:8080\""), "{e}");
        let e = format!("{:#}", Config::from_toml("[server]\npublic_url = 5\n").unwrap_err());
        assert!(e.contains("public_url = 5") && e.contains("invalid type: integer `5`"), "{e}");
    }

    /// The quoted line is not the only place a TOML error repeats a value: serde's
    /// "invalid type" message names it too (an all-digit SMTP password written unquoted,
    /// `api_keys` written as the comma-separated string `HOOKLINE_API_KEYS` takes).
    #[test]
    fn a_toml_type_error_shows_no_secret_value() {
        for text in [
            "[auth]\napi_keys = \"abcdefghijklmnop80417733\"\n",
            "[delivery.email]\nsmtp_host = \"h\"\nfrom = \"a@b.example\"\npassword = 80417733\n",
            "[delivery.sms]\naccount_sid = \"AC1\"\nfrom = \"+1\"\nauth_token = 80417733\n",
        ] {
            let e = format!("{:#}", Config::from_toml(text).unwrap_err());
            assert!(!e.contains("80417733"), "{text}: {e}");
        }
    }

    /// Every server.public_url error hides a login: also the parser's "is not a URL" (a bad
    /// port, no host after the login) and one written without `//`.
    #[test]
    fn every_public_url_error_hides_its_login() {
        for bad in ["https://user:SECRET@x.example:99999", "https://user:SECRET@", "https:user:SECRET@x.example"] {
            let mut c = Config::default();
            c.server.public_url = Some(bad.into());
            let e = format!("{:#}", c.validate().unwrap_err());
            assert!(e.contains("server.public_url") && !e.contains("SECRET"), "{bad}: {e}");
        }
    }

    #[test]
    fn public_url_is_a_plain_base() {
        for bad in [
            "https://x.example/?a=1",
            "https://x.example/#f",
            "https://user:SECRET@x.example",
            "https://:SECRET@x.example",
            "https://u:SECRET@x.example/a b",
            "https://x.example/?token=SECRET",
            "https://x.example/#SECRET",
            "ftp://x.example",
            " https://x.example",
            "https://x.example/in\n",
            "https://x.example/a b",
            "https:x.example",
            "https:///x.example",
            "https://x.example\\in",
        ] {
            let mut c = Config::default();
            c.server.public_url = Some(bad.into());
            let e = c.validate().unwrap_err().to_string();
            assert!(e.contains("server.public_url") && !e.contains("SECRET"), "{bad}: {e}");
        }
        let mut c = Config::default();
        c.server.public_url = Some("https://hooks.example/base/".into());
        c.validate().unwrap();
        // The provider bases too: credentials there would be logged and sent.
        for bad in ["https://u:SECRET@api.mux.com", "https://api.mux.com/?token=SECRET", "https://api.mux.com/#SECRET"]
        {
            let mut c = Config::default();
            c.mux.api_base = bad.into();
            let e = c.validate().unwrap_err().to_string();
            assert!(e.contains("mux.api_base must be a plain base URL") && !e.contains("SECRET"), "{bad}: {e}");
        }
    }

    #[test]
    fn provider_base_urls_follow_the_address_rules() {
        let text = "[delivery.sms]\napi_base = \"https://127.0.0.1:9443\"\naccount_sid = \"AC1\"\nauth_token = \"t\"\nfrom = \"+15550001111\"\n";
        let mut c = Config::from_toml(text).unwrap();
        let e = c.validate().unwrap_err().to_string();
        assert!(e.contains("delivery.sms.api_base") && e.contains("private"), "{e}");
        c.delivery.allow_private_networks = true;
        c.validate().unwrap();
        // The Mux API base only warns (an operator's internal proxy).
        let mut c = Config::default();
        c.mux.api_base = "https://127.0.0.1:9443".into();
        c.validate().unwrap();
        // The SMTP relay may be a local MTA without allow_private_networks (see
        // `EmailSettings::smtp_host`).
        for host in ["127.0.0.1", "localhost", "10.0.0.25", "::1"] {
            let text = format!("[delivery.email]\nsmtp_host = \"{host}\"\nfrom = \"a@example.com\"\n");
            let c = Config::from_toml(&text).unwrap();
            assert!(!c.delivery.allow_private_networks);
            c.validate().unwrap_or_else(|e| panic!("{host}: {e}"));
        }
        for url in [
            "smtp://smtp.example.com:25",
            "smtp.example.com/x",
            "u@smtp.example.com",
            "smtp.example.com:25",
            "127.0.0.1:2525",
            "[::1]",
        ] {
            let text = format!("[delivery.email]\nsmtp_host = \"{url}\"\nfrom = \"a@example.com\"\n");
            let e = Config::from_toml(&text).unwrap().validate().unwrap_err().to_string();
            assert!(e.contains("must be a host name or an IP address"), "{url}: {e}");
        }
    }

    #[test]
    fn shipped_config_parses_and_matches_defaults() {
        let text = include_str!("../config.toml");
        let c = Config::from_toml(text).unwrap();
        c.validate().unwrap();
        assert_eq!(c.server.listen, "127.0.0.1:8080");
        assert_eq!(c.storage.path, PathBuf::from("./data"));
        assert_eq!(c.delivery.retry_schedule_seconds, DeliveryConfig::default().retry_schedule_seconds);
        assert_eq!(c.delivery.max_queued_bytes_per_webhook, DeliveryConfig::default().max_queued_bytes_per_webhook);
        assert!(!c.metrics.ingest_per_bucket);
        // Its section is checked for typos like every other.
        let err = Config::from_toml("[metrics]\nper_bucket = true\n").unwrap_err();
        assert!(err.to_string().contains("per_bucket"), "{err}");
    }

    #[test]
    fn out_of_range_values_say_the_range_in_figures() {
        let text = "[delivery]\nmax_in_flight_per_webhook = 20\nmax_queued_in_memory_per_webhook = 30\n";
        let err = Config::from_toml(text).unwrap().validate().unwrap_err().to_string();
        assert!(err.contains("within 40..=10000000"), "{err}");
        let mut c = Config::default();
        c.server.listen = "127.0.0.1:99999".into();
        let err = c.listen_addr().unwrap_err().to_string();
        assert!(err.contains("port (0–65535)"), "{err}");
    }

    #[test]
    fn unknown_keys_are_named() {
        let err = Config::from_toml("[server]\nlisten = \"127.0.0.1:1\"\nmax_body_byte = 3\n").unwrap_err();
        assert!(err.to_string().contains("max_body_byte"), "{err}");
        let err = Config::from_toml("[sever]\n").unwrap_err();
        assert!(err.to_string().contains("sever"), "{err}");
    }

    #[test]
    fn env_overrides_win() {
        let mut c = Config::default();
        c.apply_env(&EnvOverrides {
            listen: Some("127.0.0.1:9999".into()),
            data_dir: Some("/tmp/x".into()),
            api_keys: Some("aaaaaaaaaaaaaaaaaaaa, bbbbbbbbbbbbbbbbbbbbbbbb".into()),
            ..Default::default()
        });
        assert_eq!(c.server.listen, "127.0.0.1:9999");
        assert_eq!(c.storage.path, PathBuf::from("/tmp/x"));
        assert_eq!(c.auth.api_keys.len(), 2);
        c.validate().unwrap();
    }

    #[test]
    fn bad_values_are_rejected_with_the_key() {
        let mut c = Config::default();
        c.server.listen = "nope".into();
        assert!(c.validate().unwrap_err().to_string().contains("server.listen"));
        let mut c = Config::default();
        c.delivery.retry_schedule_seconds.clear();
        assert!(c.validate().unwrap_err().to_string().contains("retry_schedule_seconds"));
        let mut c = Config::default();
        c.delivery.retry_schedule_seconds = vec![5, 0];
        assert!(c.validate().unwrap_err().to_string().contains("retry_schedule_seconds[1] must be within 1..="));
        let mut c = Config::default();
        c.mux.api_base = "http://127.0.0.1:9".into();
        assert!(c.validate().unwrap_err().to_string().contains("allow_insecure_http"));
        c.delivery.allow_insecure_http = true;
        c.validate().unwrap();
        // Values so large that time arithmetic would overflow (a panic per connection) or
        // that make no sense: refused at start-up, naming the key.
        type Set = fn(&mut Config);
        let cases: [(&str, Set); 10] = [
            ("server.read_timeout_seconds", |c| c.server.read_timeout_seconds = u64::MAX),
            ("delivery.max_attempt_seconds", |c| c.delivery.max_attempt_seconds = 0),
            ("storage.min_free_mb", |c| c.storage.min_free_mb = u64::MAX),
            ("server.shutdown_timeout_seconds", |c| c.server.shutdown_timeout_seconds = 0),
            ("delivery.max_age_hours", |c| c.delivery.max_age_hours = u64::MAX),
            ("delivery.max_age_seconds", |c| c.delivery.max_age_seconds = Some(u64::MAX)),
            ("delivery.retry_in_memory_seconds", |c| c.delivery.retry_in_memory_seconds = u64::MAX),
            ("delivery.max_queued_bytes_per_webhook", |c| c.delivery.max_queued_bytes_per_webhook = 1000),
            ("delivery.max_queued_bytes_per_webhook", |c| c.delivery.max_queued_bytes_per_webhook = u64::MAX),
            ("mux.timeout_seconds", |c| c.mux.timeout_seconds = 26),
        ];
        for (key, set) in cases {
            let mut c = Config::default();
            set(&mut c);
            let e = c.validate().unwrap_err().to_string();
            assert!(e.starts_with(key) && e.contains("within"), "{key}: {e}");
        }
    }

    #[test]
    fn type_errors_name_no_rust_types() {
        let e = Config::from_toml("[server]\nmax_body_bytes = -1\n").unwrap_err().to_string();
        assert!(e.ends_with("invalid value: integer `-1`, expected a whole number, 0 or more"), "{e}");
        let e = Config::from_toml("[delivery.email]\nsmtp_host = \"mx\"\nsmtp_port = 70000\n").unwrap_err().to_string();
        assert!(e.contains("expected a whole number from 0 to 65535"), "{e}");
        let e = Config::from_toml("[server]\nshutdown_timeout_seconds = 1.5\n").unwrap_err().to_string();
        assert!(e.ends_with("expected a whole number, 0 or more") && e.contains("1.5"), "{e}");
    }

    #[test]
    fn a_section_of_the_wrong_type_names_no_rust_type() {
        for (text, want) in [
            ("server = 5", "a table [server]"),
            ("storage = \"./data\"", "a table [storage]"),
            ("auth = \"key\"", "a table [auth]"),
            ("delivery = true", "a table [delivery]"),
            ("mux = 1.5", "a table [mux]"),
            ("ingest = 5", "a table [ingest]"),
            ("metrics = 5", "a table [metrics]"),
            ("[delivery]\nemail = 5", "a table [delivery.email]"),
            ("[delivery]\nsms = 5", "a table [delivery.sms]"),
        ] {
            let e = Config::from_toml(text).unwrap_err().to_string();
            assert!(e.contains(&format!("expected {want}")), "{text}: {e}");
            assert!(!e.contains("struct") && !e.contains("Config") && !e.contains("Settings"), "{text}: {e}");
        }
        for tls in ["5", "\"ssl\""] {
            let text = format!("[delivery.email]\nsmtp_host = \"h\"\nfrom = \"a@b.c\"\ntls = {tls}\n");
            let e = Config::from_toml(&text).unwrap_err().to_string();
            assert!(!e.contains("SmtpTls") && !e.contains("enum"), "{tls}: {e}");
        }
        let e = Config::from_toml("server = 5").unwrap_err().to_string();
        assert!(e.ends_with("invalid type: integer `5`, expected a table [server]"), "{e}");
        // An array would be read field by field in declaration order: refused, not taken.
        for (text, path) in [
            ("server = [\"127.0.0.1:9999\"]", "server"),
            ("auth = []", "auth"),
            ("[delivery]\nemail = [\"smtp.example.com\", 587]", "delivery.email"),
        ] {
            let e = Config::from_toml(text).unwrap_err().to_string();
            assert!(e.starts_with(&format!("{path}: expected a table [{path}], not an array")), "{text}: {e}");
        }
    }

    #[test]
    fn a_storage_path_starting_with_a_tilde_is_refused() {
        for path in ["~/hldata", "~", "~hookline/data"] {
            let text = format!("[storage]\npath = \"{path}\"\n");
            let e = Config::from_toml(&text).unwrap().validate().unwrap_err().to_string();
            assert!(e.starts_with("storage.path") && e.contains("does not expand") && e.contains(path), "{e}");
            assert!(e.contains("write the full path"), "{e}");
        }
        // From the environment too, naming its variable.
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("config.toml");
        std::fs::write(&file, "").unwrap();
        let env = EnvOverrides { data_dir: Some("~/hldata".into()), ..Default::default() };
        let e = format!("{:#}", Config::load(&file, &env).unwrap_err());
        assert!(e.starts_with("HOOKLINE_DATA_DIR (which overrides the config file) is not valid: storage.path"), "{e}");
        // A tilde further on is an ordinary character of a name.
        let mut c = Config::default();
        c.storage.path = PathBuf::from("/srv/hl~old/data");
        c.validate().unwrap();
    }

    #[test]
    fn a_bad_value_from_the_environment_names_its_variable() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("config.toml");
        std::fs::write(&path, "").unwrap();
        let env = EnvOverrides { listen: Some("localhost:1".into()), ..Default::default() };
        let e = format!("{:#}", Config::load(&path, &env).unwrap_err());
        assert!(e.starts_with("HOOKLINE_LISTEN (which overrides the config file) is not valid: server.listen"), "{e}");
        Config::load(&path, &EnvOverrides::default()).unwrap();
        // Spaces around it are a template's, not the address's.
        let env = EnvOverrides { listen: Some(" 127.0.0.1:18080 \n".into()), ..Default::default() };
        assert_eq!(Config::load(&path, &env).unwrap().server.listen, "127.0.0.1:18080");
    }

    #[test]
    fn email_and_sms_settings_are_checked_and_take_secrets_from_the_environment() {
        let text = "[delivery.email]\nsmtp_host = \"smtp.example.com\"\nfrom = \"hookline <a@example.com>\"\nusername = \"u\"\npassword = \"file-pw\"\n\n[delivery.sms]\naccount_sid = \"AC123\"\nfrom = \"+15550001111\"\n";
        let mut c = Config::from_toml(text).unwrap();
        let email = c.delivery.email.as_ref().unwrap();
        assert_eq!((email.port(), email.tls, email.timeout_seconds), (587, SmtpTls::Starttls, 30));
        assert!(c.validate().unwrap_err().to_string().contains("HOOKLINE_SMS_AUTH_TOKEN"));
        c.apply_env(&EnvOverrides {
            smtp_password: Some("pw".into()),
            sms_auth_token: Some("tok".into()),
            ..Default::default()
        });
        c.validate().unwrap();
        assert_eq!(c.delivery.sms.as_ref().unwrap().api_base, "https://api.twilio.com");
        let shown = format!("{c:?}");
        assert!(!shown.contains("pw\"") && !shown.contains("tok\""), "secrets must not show in Debug: {shown}");

        assert_eq!(c.delivery.email.as_ref().unwrap().password.as_deref(), Some("pw"), "the environment wins");
        let mut implicit = c.clone();
        implicit.delivery.email.as_mut().unwrap().tls = SmtpTls::Tls;
        assert_eq!(implicit.delivery.email.as_ref().unwrap().port(), 465);
        let mut no_pw = c.clone();
        no_pw.delivery.email.as_mut().unwrap().password = None;
        assert!(no_pw.validate().unwrap_err().to_string().contains("HOOKLINE_SMTP_PASSWORD"));
        let mut query = c.clone();
        query.delivery.sms.as_mut().unwrap().api_base = "https://api.example.com/?x=1".into();
        assert!(query.validate().unwrap_err().to_string().contains("plain base URL"));
        let mut plain = c.clone();
        plain.delivery.email.as_mut().unwrap().tls = SmtpTls::None;
        assert!(plain.validate().unwrap_err().to_string().contains("allow_insecure_http"));
        let mut bad = c.clone();
        bad.delivery.email.as_mut().unwrap().from = "not an address".into();
        assert!(bad.validate().unwrap_err().to_string().contains("delivery.email.from"));
        let mut http = c;
        http.delivery.sms.as_mut().unwrap().api_base = "http://127.0.0.1:9".into();
        assert!(http.validate().unwrap_err().to_string().contains("delivery.sms.api_base"));
        assert!(Config::from_toml("[delivery.email]\nsmtp_host = \"h\"\nfrom = \"a@b.c\"\nport = 25\n").is_err());
    }
}
