//! A minimal Mux API client: `GET {api_base}/video/v1/assets/{id}` with basic auth.
//!
//! Used when a webhook does not carry enough of the asset (no playback ids). It owns one
//! reqwest `Client` (connection pool) and the base URL and timeout from `[mux]` config. The
//! access token is passed per call (credentials are decrypted only when an event needs them)
//! and never stored, logged or put in an error. Redirects are not followed (they would carry
//! the credentials elsewhere) and response bodies are capped.

use std::time::Duration;

use serde_json::Value;
use thiserror::Error;

use crate::config::MuxApiConfig;

/// Largest asset response we read; real ones are a few KiB.
pub const MAX_RESPONSE_BYTES: usize = 1 << 20;

/// Why an asset fetch failed. `is_retryable` tells the caller whether trying again later
/// can help.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum MuxApiError {
    #[error("Mux asset {0:?} not found")]
    NotFound(String),
    #[error("Mux refused the access token (HTTP {0}); check the connection's access_token_id/secret")]
    Unauthorized(u16),
    #[error("Mux API answered HTTP {0}")]
    Upstream(u16),
    #[error("Mux API unreachable: {0}")]
    Transport(String),
    #[error("Mux API response unusable: {0}")]
    InvalidResponse(&'static str),
    #[error("not a Mux asset id: {0:?}")]
    InvalidAssetId(String),
}

impl MuxApiError {
    /// Transport failures, 429, 5xx and an answer that is not the API's (a 200 that is not
    /// JSON or has no `data`: a proxy's page, a cut body) are worth retrying; the rest will
    /// fail the same way.
    pub fn is_retryable(&self) -> bool {
        match self {
            MuxApiError::Transport(_) | MuxApiError::InvalidResponse(_) => true,
            MuxApiError::Upstream(s) => *s == 429 || *s >= 500,
            _ => false,
        }
    }
}

/// Mux ids are URL-safe base62-ish strings; anything else is refused before building a URL.
fn valid_asset_id(id: &str) -> bool {
    !id.is_empty() && id.len() <= 128 && id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

#[derive(Clone)]
pub struct MuxApi {
    /// Shared pool; cheap to clone.
    client: reqwest::Client,
    /// `api_base` without a trailing slash.
    api_base: String,
}

impl std::fmt::Debug for MuxApi {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MuxApi").field("api_base", &self.api_base).finish_non_exhaustive()
    }
}

impl MuxApi {
    /// Builds the client from `[mux]` config (already validated: http(s) base, timeout ≥ 1 s).
    pub fn from_config(cfg: &MuxApiConfig) -> anyhow::Result<MuxApi> {
        MuxApi::new(&cfg.api_base, Duration::from_secs(cfg.timeout_seconds))
    }

    /// `timeout` bounds one whole call: connect, headers and body.
    pub fn new(api_base: &str, timeout: Duration) -> anyhow::Result<MuxApi> {
        let client = reqwest::Client::builder()
            .timeout(timeout)
            .connect_timeout(timeout)
            .redirect(reqwest::redirect::Policy::none())
            // Straight to `mux.api_base`, as every other outbound client goes to its target:
            // an `HTTPS_PROXY` in the daemon's environment is not a setting of hookline's.
            .no_proxy()
            .user_agent(concat!("hookline/", env!("CARGO_PKG_VERSION")))
            .build()?;
        Ok(MuxApi { client, api_base: api_base.trim_end_matches('/').to_string() })
    }

    /// Fetches one asset and returns its `data` object.
    pub async fn get_asset(&self, asset_id: &str, token_id: &str, token_secret: &str) -> Result<Value, MuxApiError> {
        if !valid_asset_id(asset_id) {
            return Err(MuxApiError::InvalidAssetId(asset_id.chars().take(64).collect()));
        }
        let url = format!("{}/video/v1/assets/{asset_id}", self.api_base);
        let started = std::time::Instant::now();
        let mut resp = self
            .client
            .get(&url)
            // reqwest marks the Authorization header sensitive, so it is never printed.
            .basic_auth(token_id, Some(token_secret))
            .header(reqwest::header::ACCEPT, "application/json")
            .send()
            .await
            .map_err(transport)?;
        let status = resp.status().as_u16();
        tracing::debug!(asset_id, status, elapsed_ms = started.elapsed().as_millis() as u64, "Mux GET asset");
        match status {
            200..=299 => {}
            401 | 403 => return Err(MuxApiError::Unauthorized(status)),
            404 => return Err(MuxApiError::NotFound(asset_id.to_string())),
            _ => return Err(MuxApiError::Upstream(status)),
        }
        if resp.content_length().is_some_and(|n| n > MAX_RESPONSE_BYTES as u64) {
            return Err(MuxApiError::InvalidResponse("larger than 1 MiB"));
        }
        let mut body = Vec::new();
        while let Some(chunk) = resp.chunk().await.map_err(transport)? {
            if body.len() + chunk.len() > MAX_RESPONSE_BYTES {
                return Err(MuxApiError::InvalidResponse("larger than 1 MiB"));
            }
            body.extend_from_slice(&chunk);
        }
        let mut v: Value = serde_json::from_slice(&body).map_err(|_| MuxApiError::InvalidResponse("not JSON"))?;
        match v.get_mut("data").map(Value::take) {
            Some(data @ Value::Object(_)) => Ok(data),
            _ => Err(MuxApiError::InvalidResponse("no data object")),
        }
    }
}

/// Describes a reqwest failure without the URL's query or any header.
fn transport(e: reqwest::Error) -> MuxApiError {
    let kind = if e.is_timeout() {
        "timed out"
    } else if e.is_connect() {
        "connection failed"
    } else if e.is_body() || e.is_decode() {
        "response body interrupted"
    } else {
        "request failed"
    };
    MuxApiError::Transport(kind.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use base64::Engine;
    use serde_json::json;
    use std::net::SocketAddr;
    use warp::Filter;

    const TOKEN_ID: &str = "tok-id-123";
    const TOKEN_SECRET: &str = "tok-secret-456";

    /// A fake Mux API on 127.0.0.1: checks basic auth like Mux does, serves one asset, and
    /// has routes that misbehave on purpose.
    async fn fake_mux() -> SocketAddr {
        let expected =
            format!("Basic {}", base64::engine::general_purpose::STANDARD.encode(format!("{TOKEN_ID}:{TOKEN_SECRET}")));
        let route = warp::path!("video" / "v1" / "assets" / String)
            .and(warp::get())
            .and(warp::header::optional::<String>("authorization"))
            .then(move |id: String, auth: Option<String>| {
                let ok = auth.as_deref() == Some(expected.as_str());
                async move {
                    use warp::http::StatusCode;
                    let reply = |code: StatusCode, body: Value| {
                        warp::http::Response::builder()
                            .status(code)
                            .header("content-type", "application/json")
                            .body(body.to_string())
                            .unwrap()
                    };
                    if !ok {
                        return reply(StatusCode::UNAUTHORIZED, json!({"error": {"type": "unauthorized"}}));
                    }
                    match id.as_str() {
                        "slow" => {
                            tokio::time::sleep(Duration::from_secs(30)).await;
                            reply(StatusCode::OK, json!({}))
                        }
                        "boom" => reply(StatusCode::BAD_GATEWAY, json!({})),
                        "ratelimited" => reply(StatusCode::TOO_MANY_REQUESTS, json!({})),
                        "huge" => reply(StatusCode::OK, json!({"data": {"pad": "x".repeat(MAX_RESPONSE_BYTES)}})),
                        "notjson" => warp::http::Response::builder().status(200).body("<html>".to_string()).unwrap(),
                        "nodata" => reply(StatusCode::OK, json!({"error": null})),
                        "redirect" => warp::http::Response::builder()
                            .status(302)
                            .header("location", "http://127.0.0.1:9/elsewhere")
                            .body(String::new())
                            .unwrap(),
                        id if id.starts_with("AsSeT") => {
                            reply(StatusCode::OK, json!({"data": crate::adapter::mux::asset::tests::api_asset(id)}))
                        }
                        _ => reply(StatusCode::NOT_FOUND, json!({"error": {"type": "not_found"}})),
                    }
                }
            });
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(warp::serve(route).incoming(listener).run());
        addr
    }

    fn install_crypto() {
        let _ = rustls::crypto::ring::default_provider().install_default();
    }

    #[tokio::test]
    async fn fetches_an_asset_with_basic_auth_and_maps_its_errors() {
        install_crypto();
        let addr = fake_mux().await;
        // A trailing slash on api_base is tolerated. (A generous timeout: none of these calls
        // waits on purpose, but a busy machine can take over a second to serve the 1 MiB one.)
        let api = MuxApi::new(&format!("http://{addr}/"), Duration::from_secs(30)).unwrap();

        let asset = api.get_asset("AsSeT123", TOKEN_ID, TOKEN_SECRET).await.unwrap();
        assert_eq!(asset["id"], "AsSeT123");
        let meta = crate::adapter::mux::asset_metadata(&asset);
        assert_eq!(meta["playback_url"], "https://stream.mux.com/PuBlIcPlAyBaCk01.m3u8");

        let err = |id: &'static str| {
            let api = api.clone();
            async move { api.get_asset(id, TOKEN_ID, TOKEN_SECRET).await.unwrap_err() }
        };
        let wrong = api.get_asset("AsSeT123", TOKEN_ID, "wrong-secret").await.unwrap_err();
        assert_eq!(wrong, MuxApiError::Unauthorized(401));
        assert!(!wrong.to_string().contains("wrong-secret") && !wrong.is_retryable());
        assert_eq!(err("missing").await, MuxApiError::NotFound("missing".into()));
        let boom = err("boom").await;
        assert_eq!(boom, MuxApiError::Upstream(502));
        assert!(boom.is_retryable());
        assert!(err("ratelimited").await.is_retryable());
        assert_eq!(err("huge").await, MuxApiError::InvalidResponse("larger than 1 MiB"));
        assert_eq!(err("notjson").await, MuxApiError::InvalidResponse("not JSON"));
        assert_eq!(err("nodata").await, MuxApiError::InvalidResponse("no data object"));
        assert!(err("notjson").await.is_retryable(), "not the API's answer: a proxy's page, a cut body");
        assert_eq!(err("redirect").await, MuxApiError::Upstream(302), "redirects are not followed");
        assert!(matches!(err("../admin").await, MuxApiError::InvalidAssetId(_)));
        assert!(matches!(err("").await, MuxApiError::InvalidAssetId(_)));
    }

    #[tokio::test]
    async fn times_out_and_reports_unreachable_servers() {
        install_crypto();
        let addr = fake_mux().await;
        let api = MuxApi::new(&format!("http://{addr}"), Duration::from_millis(200)).unwrap();
        let e = api.get_asset("slow", TOKEN_ID, TOKEN_SECRET).await.unwrap_err();
        assert_eq!(e, MuxApiError::Transport("timed out".into()));
        assert!(e.is_retryable());

        // A port nothing listens on: bind one, then free it.
        let free = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap().local_addr().unwrap();
        let api = MuxApi::new(&format!("http://{free}"), Duration::from_millis(500)).unwrap();
        let e = api.get_asset("AsSeT1", TOKEN_ID, TOKEN_SECRET).await.unwrap_err();
        assert!(matches!(e, MuxApiError::Transport(_)), "{e:?}");
    }

    #[test]
    fn from_config_uses_the_configured_base() {
        install_crypto();
        let cfg = MuxApiConfig { api_base: "http://127.0.0.1:1/".into(), timeout_seconds: 3 };
        let api = MuxApi::from_config(&cfg).unwrap();
        assert_eq!(api.api_base, "http://127.0.0.1:1");
        assert!(!format!("{api:?}").contains("client"));
    }
}
