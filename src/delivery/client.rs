//! The outgoing HTTP client of the delivery channels (webhook, Slack, SMS): hyper-util's
//! pooled client over hyper-rustls, resolving host names through [`GuardedResolver`].
//!
//! Why not reqwest, which hookline uses elsewhere (write-backs, the Mux API): reqwest is a
//! convenience layer over this same hyper-util client, and its per-request work (redirect
//! and retry layers cloned for every request, the URL parsed again for every response) was
//! about 7% of the CPU per delivery in `cargo bench --bench delivery`. Deliveries are the
//! one hot path that sends, so here a channel builds an `http::Request` from a URI parsed
//! when the webhook was saved, and this module does what reqwest did for it: the TLS setup
//! (ring, the platform's roots, h2 and http/1.1 by ALPN, as reqwest), the connect timeout,
//! the `User-Agent`, one timeout over the whole exchange and a capped read of the body.
//! No redirect is followed (the caller sees the 3xx) and no proxy is used (a proxy would
//! resolve names for us and bypass the address check).
//!
//! This module must not decide outcomes: the channels turn a [`Reply`] into an attempt result.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::header::{HeaderValue, RETRY_AFTER, USER_AGENT};
use http_body_util::{BodyExt, Full};
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioTimer};

use super::netguard::{GuardedResolver, NetPolicy};

/// A request as the channels build it: the whole body in memory.
pub type Request = http::Request<Full<Bytes>>;

/// Most response bytes read (for error messages); the rest is dropped unread.
pub const RESPONSE_CAP: usize = 4096;

const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// Idle pooled connections are closed after this (reqwest's default).
const POOL_IDLE: Duration = Duration::from_secs(90);
const AGENT: &str = concat!("hookline/", env!("CARGO_PKG_VERSION"));

/// Cheap to clone: clones share one connection pool.
#[derive(Clone)]
pub struct DeliveryClient {
    inner: Client<HttpsConnector<HttpConnector<GuardedResolver>>, Full<Bytes>>,
}

/// What a receiver answered.
#[derive(Debug)]
pub struct Reply {
    pub status: u16,
    /// `Retry-After` in seconds, when given as a number.
    pub retry_after: Option<Duration>,
    /// The first [`RESPONSE_CAP`] bytes of the body.
    pub body: Vec<u8>,
}

/// Why no [`Reply`] came back. The texts name no URL (a Slack URL is a credential).
#[derive(Debug, thiserror::Error)]
pub enum SendError {
    #[error("timed out after {:.1}s", .0.as_secs_f64())]
    Timeout(Duration),
    /// No connection: refused by the address policy, DNS, TCP or TLS.
    #[error("connection failed: {0}")]
    Connect(String),
    /// Connected, but the exchange broke (reset, malformed response…).
    #[error("request failed: {0}")]
    Request(String),
}

impl SendError {
    /// A host name resolved only to addresses the policy refuses.
    pub fn refused(&self) -> bool {
        matches!(self, SendError::Connect(m) if m.contains("refused (delivery.allow_private_networks)"))
    }
}

impl DeliveryClient {
    pub fn new(policy: NetPolicy) -> DeliveryClient {
        let mut http =
            HttpConnector::new_with_resolver(GuardedResolver { allow_private_networks: policy.allow_private_networks });
        http.enforce_http(false);
        http.set_nodelay(true);
        http.set_connect_timeout(Some(CONNECT_TIMEOUT));
        let https = hyper_rustls::HttpsConnectorBuilder::new()
            .with_tls_config(tls_config())
            .https_or_http()
            .enable_all_versions()
            .wrap_connector(http);
        let inner = Client::builder(TokioExecutor::new())
            .pool_timer(TokioTimer::new())
            .pool_idle_timeout(POOL_IDLE)
            .build(https);
        DeliveryClient { inner }
    }

    /// Sends `req` and reads the start of the answer, all within `timeout`. Adds hookline's
    /// `User-Agent` unless the request has one.
    pub async fn send(&self, mut req: Request, timeout: Duration) -> Result<Reply, SendError> {
        req.headers_mut().entry(USER_AGENT).or_insert(HeaderValue::from_static(AGENT));
        let exchange = async {
            let resp = self.inner.request(req).await.map_err(from_client_error)?;
            let status = resp.status().as_u16();
            let retry_after = resp
                .headers()
                .get(RETRY_AFTER)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.trim().parse::<u64>().ok())
                .map(Duration::from_secs);
            let body = read_capped(resp.into_body()).await;
            Ok(Reply { status, retry_after, body })
        };
        tokio::time::timeout(timeout, exchange).await.unwrap_or(Err(SendError::Timeout(timeout)))
    }
}

/// Reads at most [`RESPONSE_CAP`] bytes of a body. A small body read to its end lets the
/// connection go back to the pool; a larger one is dropped unread, which closes it.
async fn read_capped<B: http_body::Body<Data = Bytes> + Unpin>(mut body: B) -> Vec<u8> {
    let mut out = Vec::new();
    while out.len() < RESPONSE_CAP {
        match body.frame().await {
            Some(Ok(frame)) => {
                if let Some(data) = frame.data_ref() {
                    out.extend_from_slice(&data[..data.len().min(RESPONSE_CAP - out.len())]);
                }
            }
            // The end, or a broken body: the status is what counts.
            _ => break,
        }
    }
    out
}

fn from_client_error(e: hyper_util::client::legacy::Error) -> SendError {
    // The useful part (refused by policy, connection refused, the TLS failure) is the
    // innermost source; hyper-util's own text is only "client error (Connect)".
    let mut detail = e.to_string();
    let mut src: Option<&dyn std::error::Error> = std::error::Error::source(&e);
    while let Some(s) = src {
        detail = s.to_string();
        src = s.source();
    }
    if e.is_connect() {
        SendError::Connect(detail)
    } else {
        SendError::Request(detail)
    }
}

/// ring with the platform's roots, as reqwest sets it up. If the roots cannot be loaded,
/// an empty store: every https delivery then fails with a certificate error (and this is
/// logged) rather than the daemon refusing to start over a channel it may never use.
fn tls_config() -> rustls::ClientConfig {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder =
        match rustls::ClientConfig::builder_with_provider(provider.clone()).with_safe_default_protocol_versions() {
            Ok(b) => b,
            Err(e) => {
                tracing::error!(error = %e, "TLS protocol versions; https deliveries will fail");
                return rustls::ClientConfig::builder()
                    .with_root_certificates(rustls::RootCertStore::empty())
                    .with_no_client_auth();
            }
        };
    match rustls_platform_verifier::Verifier::new(provider) {
        Ok(v) => builder.dangerous().with_custom_certificate_verifier(Arc::new(v)).with_no_client_auth(),
        Err(e) => {
            tracing::error!(error = %e, "load the platform's TLS roots; https deliveries will fail");
            builder.with_root_certificates(rustls::RootCertStore::empty()).with_no_client_auth()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const DEV: NetPolicy = NetPolicy { allow_insecure_http: true, allow_private_networks: true };

    fn post(uri: &str) -> Request {
        http::Request::post(uri).body(Full::new(Bytes::from_static(b"{}"))).unwrap()
    }

    /// A one-shot HTTP/1.1 server on 127.0.0.1 answering every request with `response`,
    /// and handing back the raw requests it read.
    async fn server(response: &'static [u8]) -> (String, tokio::sync::mpsc::UnboundedReceiver<String>) {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        tokio::spawn(async move {
            while let Ok((mut s, _)) = l.accept().await {
                let tx = tx.clone();
                tokio::spawn(async move {
                    let mut buf = vec![0u8; 16384];
                    let mut got = Vec::new();
                    while !got.windows(4).any(|w| w == b"\r\n\r\n") {
                        match s.read(&mut buf).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => got.extend_from_slice(&buf[..n]),
                        }
                    }
                    let _ = tx.send(String::from_utf8_lossy(&got).into_owned());
                    let _ = s.write_all(response).await;
                    let _ = s.shutdown().await;
                });
            }
        });
        (format!("http://{addr}"), rx)
    }

    #[tokio::test]
    async fn sends_with_user_agent_and_reads_a_capped_body() {
        let big: &'static [u8] = Box::leak(
            format!(
                "HTTP/1.1 503 Service Unavailable\r\nRetry-After: 7\r\nContent-Length: 10000\r\n\r\n{}",
                "x".repeat(10000)
            )
            .into_bytes()
            .into_boxed_slice(),
        );
        let (base, mut seen) = server(big).await;
        let client = DeliveryClient::new(DEV);
        let reply = client.send(post(&format!("{base}/hook")), Duration::from_secs(5)).await.unwrap();
        assert_eq!(reply.status, 503);
        assert_eq!(reply.retry_after, Some(Duration::from_secs(7)));
        assert_eq!(reply.body.len(), RESPONSE_CAP);
        let req = seen.recv().await.unwrap();
        assert!(req.starts_with("POST /hook HTTP/1.1\r\n"), "{req}");
        assert!(req.to_ascii_lowercase().contains(&format!("user-agent: {AGENT}")), "{req}");
        // A request's own User-Agent is the only one sent.
        let mut own = post(&format!("{base}/x"));
        own.headers_mut().insert(USER_AGENT, HeaderValue::from_static("mine/1"));
        client.send(own, Duration::from_secs(5)).await.unwrap();
        let req = seen.recv().await.unwrap().to_ascii_lowercase();
        assert_eq!(req.matches("user-agent:").count(), 1, "{req}");
        assert!(req.contains("user-agent: mine/1"), "{req}");
    }

    #[tokio::test]
    async fn redirects_are_not_followed() {
        let (base, mut seen) =
            server(b"HTTP/1.1 302 Found\r\nLocation: http://127.0.0.1:9/\r\nContent-Length: 0\r\n\r\n").await;
        let reply = DeliveryClient::new(DEV).send(post(&base), Duration::from_secs(5)).await.unwrap();
        assert_eq!(reply.status, 302);
        assert!(seen.recv().await.is_some());
    }

    #[tokio::test]
    async fn errors_are_classified() {
        // Nothing listens on a port just released.
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let e = DeliveryClient::new(DEV).send(post(&format!("http://127.0.0.1:{port}/")), Duration::from_secs(5)).await;
        assert!(matches!(e, Err(SendError::Connect(_))), "{e:?}");

        // A host name that resolves only to loopback, under the strict policy.
        let strict = NetPolicy { allow_insecure_http: true, allow_private_networks: false };
        let e =
            DeliveryClient::new(strict).send(post("http://localhost:9/"), Duration::from_secs(5)).await.unwrap_err();
        assert!(e.refused(), "{e}");

        // A server that accepts and never answers.
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        let _keep = tokio::spawn(async move {
            let mut held = Vec::new();
            while let Ok((s, _)) = l.accept().await {
                held.push(s);
            }
        });
        let e = DeliveryClient::new(DEV).send(post(&format!("http://{addr}/")), Duration::from_millis(300)).await;
        assert!(matches!(e, Err(SendError::Timeout(_))), "{e:?}");
        assert_eq!(e.unwrap_err().to_string(), "timed out after 0.3s");
    }

    /// https is really TLS and certificates are really verified: a loopback server whose
    /// certificate (a self-signed test fixture) no root vouches for is refused at the
    /// handshake, before any request is written.
    #[tokio::test]
    async fn https_verifies_the_certificate() {
        use rustls::pki_types::pem::PemObject;
        use rustls::pki_types::{CertificateDer, PrivateKeyDer};
        let cert = CertificateDer::from_pem_slice(include_bytes!("../../tests/fixtures/selfsigned.crt")).unwrap();
        let key = PrivateKeyDer::from_pem_slice(include_bytes!("../../tests/fixtures/selfsigned.key")).unwrap();
        let config = rustls::ServerConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(vec![cert], key)
            .unwrap();
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        let (tx, rx) = tokio::sync::oneshot::channel();
        tokio::spawn(async move {
            if let Ok((s, _)) = l.accept().await {
                let _ = tx.send(acceptor.accept(s).await.map(|_| ()).map_err(|e| e.to_string()));
            }
        });
        let e =
            DeliveryClient::new(DEV).send(post(&format!("https://{addr}/")), Duration::from_secs(5)).await.unwrap_err();
        assert!(matches!(&e, SendError::Connect(m) if m.contains("certificate")), "{e}");
        let server_side = rx.await.unwrap();
        assert!(server_side.is_err(), "the handshake must fail: {server_side:?}");
    }
}
