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
use http::header::{HeaderValue, ACCEPT, RETRY_AFTER, USER_AGENT};
use http_body_util::{BodyExt, Full};
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioTimer};
use tokio::time::{timeout_at, Instant};

use super::netguard::{GuardedResolver, NetPolicy, Refused};

/// A request as the channels build it: the whole body in memory.
pub type Request = http::Request<Full<Bytes>>;

/// Most response bytes read (for error messages); the rest is dropped unread.
pub const RESPONSE_CAP: usize = 4096;

const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// Idle pooled connections are closed after this (reqwest's default).
const POOL_IDLE: Duration = Duration::from_secs(90);
/// TCP keepalive and user timeout, as reqwest sets them: a receiver that vanished is noticed
/// on a pooled connection instead of hanging it.
const TCP_KEEPALIVE: Duration = Duration::from_secs(15);
const TCP_KEEPALIVE_RETRIES: u32 = 3;
const TCP_USER_TIMEOUT: Duration = Duration::from_secs(30);
/// Sends again at once (as reqwest does) when an HTTP/2 server says it did not process a
/// request: REFUSED_STREAM, or a graceful GOAWAY.
const H2_RETRIES: usize = 2;
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
    /// The first [`RESPONSE_CAP`] bytes of the body: what arrived before the deadline.
    pub body: Vec<u8>,
}

/// Why no [`Reply`] came back. The texts name no URL (a Slack URL is a credential).
#[derive(Debug, thiserror::Error)]
pub enum SendError {
    /// No answer (status line and headers) within the timeout, connecting included.
    #[error("timed out after {:.1}s", .0.as_secs_f64())]
    Timeout(Duration),
    /// The host name resolves only to addresses the policy refuses.
    #[error("connection failed: {0}")]
    Refused(String),
    /// No connection: DNS, TCP or TLS.
    #[error("connection failed: {0}")]
    Connect(String),
    /// Connected, but the exchange broke (reset, malformed response…).
    #[error("request failed: {0}")]
    Request(String),
}

impl DeliveryClient {
    pub fn new(policy: NetPolicy) -> Result<DeliveryClient, String> {
        Ok(Self::with_tls(policy, tls_config(None)?))
    }

    fn with_tls(policy: NetPolicy, tls: rustls::ClientConfig) -> DeliveryClient {
        let mut http =
            HttpConnector::new_with_resolver(GuardedResolver { allow_private_networks: policy.allow_private_networks });
        // https URLs reach this connector too: hyper-rustls wraps it and adds the TLS.
        http.enforce_http(false);
        http.set_nodelay(true);
        http.set_connect_timeout(Some(CONNECT_TIMEOUT));
        http.set_keepalive(Some(TCP_KEEPALIVE));
        http.set_keepalive_interval(Some(TCP_KEEPALIVE));
        http.set_keepalive_retries(Some(TCP_KEEPALIVE_RETRIES));
        http.set_tcp_user_timeout(Some(TCP_USER_TIMEOUT));
        let https = hyper_rustls::HttpsConnectorBuilder::new()
            .with_tls_config(tls)
            .https_or_http()
            .enable_all_versions()
            .wrap_connector(http);
        let inner = Client::builder(TokioExecutor::new())
            .pool_timer(TokioTimer::new())
            .pool_idle_timeout(POOL_IDLE)
            .build(https);
        DeliveryClient { inner }
    }

    /// Sends `req` and reads the start of the answer, all within `timeout`: the status must
    /// arrive in time (else [`SendError::Timeout`]); a body still arriving at the deadline is
    /// cut there, and the status stands. Adds `User-Agent` and `Accept` unless set.
    pub async fn send(&self, mut req: Request, timeout: Duration) -> Result<Reply, SendError> {
        let deadline = Instant::now() + timeout;
        let h = req.headers_mut();
        h.entry(USER_AGENT).or_insert(HeaderValue::from_static(AGENT));
        h.entry(ACCEPT).or_insert(HeaderValue::from_static("*/*"));
        // Only TLS connections can speak HTTP/2 (ALPN): only their requests may be sent again.
        let mut spare = (req.uri().scheme() == Some(&http::uri::Scheme::HTTPS)).then(|| copy(&req));
        let mut retries = 0;
        let resp = loop {
            match timeout_at(deadline, self.inner.request(req)).await {
                Err(_) => return Err(SendError::Timeout(timeout)),
                Ok(Ok(resp)) => break resp,
                Ok(Err(e)) => match spare.take() {
                    Some(again) if retries < H2_RETRIES && h2_not_processed(&e) => {
                        retries += 1;
                        spare = (retries < H2_RETRIES).then(|| copy(&again));
                        req = again;
                    }
                    _ => return Err(from_client_error(&e, timeout)),
                },
            }
        };
        let status = resp.status().as_u16();
        let retry_after = resp.headers().get(RETRY_AFTER).and_then(|v| v.to_str().ok()).and_then(retry_after);
        let mut body = Vec::new();
        // A 2xx's body is never used: read for a moment only (a short one lets the connection
        // be reused), not until the deadline: a receiver that answers 200 at once but never
        // ends its body would otherwise make every send last the whole timeout.
        let until = match status {
            200..=299 => deadline.min(Instant::now() + SUCCESS_BODY_GRACE),
            _ => deadline,
        };
        let _ = timeout_at(until, read_capped(resp.into_body(), &mut body)).await;
        Ok(Reply { status, retry_after, body })
    }
}

/// How long the body of a 2xx answer is read (see [`DeliveryClient::send`]).
const SUCCESS_BODY_GRACE: Duration = Duration::from_millis(200);

/// A `Retry-After` value: seconds, or an HTTP date (RFC 9110 allows both, and proxies and
/// servers send the date; one already past is no wait). `None` for anything else.
fn retry_after(value: &str) -> Option<Duration> {
    let value = value.trim();
    if let Ok(secs) = value.parse::<u64>() {
        return Some(Duration::from_secs(secs));
    }
    let at = httpdate::parse_http_date(value).ok()?;
    Some(at.duration_since(std::time::SystemTime::now()).unwrap_or(Duration::ZERO))
}

/// A copy of a request to send again (bodies are shared bytes: cheap).
fn copy(req: &Request) -> Request {
    let mut again = http::Request::new(req.body().clone());
    *again.method_mut() = req.method().clone();
    *again.uri_mut() = req.uri().clone();
    *again.version_mut() = req.version();
    *again.headers_mut() = req.headers().clone();
    again
}

/// Whether an HTTP/2 server told us it did not process the request (RFC 9113 §8.7).
fn h2_not_processed(e: &hyper_util::client::legacy::Error) -> bool {
    let mut src: Option<&(dyn std::error::Error + 'static)> = std::error::Error::source(e);
    while let Some(s) = src {
        if let Some(h2) = s.downcast_ref::<h2::Error>() {
            return h2.is_remote()
                && ((h2.is_go_away() && h2.reason() == Some(h2::Reason::NO_ERROR))
                    || (h2.is_reset() && h2.reason() == Some(h2::Reason::REFUSED_STREAM)));
        }
        src = s.source();
    }
    false
}

/// Reads at most [`RESPONSE_CAP`] bytes of a body into `out`. A small body read to its end
/// lets the connection go back to the pool; a larger one is dropped unread, which closes it.
async fn read_capped<B: http_body::Body<Data = Bytes> + Unpin>(mut body: B, out: &mut Vec<u8>) {
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
}

fn from_client_error(e: &hyper_util::client::legacy::Error, timeout: Duration) -> SendError {
    // hyper-util's connect timeout is its own, shorter than most channel timeouts.
    let timeout = if e.is_connect() { CONNECT_TIMEOUT.min(timeout) } else { timeout };
    classify(e.is_connect(), e, timeout)
}

/// Sorts a client error by its sources: hyper-util's own text is only "client error
/// (Connect)"; the useful part (refused by policy, connection refused, the TLS failure) is
/// the innermost source. A connect timeout is a timeout, whoever's clock ran out.
fn classify(is_connect: bool, e: &(dyn std::error::Error + 'static), timeout: Duration) -> SendError {
    let mut detail = e.to_string();
    let mut src: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(s) = src {
        if let Some(r) = s.downcast_ref::<Refused>() {
            return SendError::Refused(r.to_string());
        }
        if s.downcast_ref::<std::io::Error>().is_some_and(|io| io.kind() == std::io::ErrorKind::TimedOut) {
            return SendError::Timeout(timeout);
        }
        detail = s.to_string();
        src = s.source();
    }
    if is_connect {
        SendError::Connect(detail)
    } else {
        SendError::Request(detail)
    }
}

/// ring with the platform's roots (plus `extra_roots`, for tests), as reqwest sets it up.
/// ALPN is left to hyper-rustls (h2, http/1.1).
fn tls_config(
    extra_roots: Option<Vec<rustls::pki_types::CertificateDer<'static>>>,
) -> Result<rustls::ClientConfig, String> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("TLS protocol versions: {e}"))?;
    let verifier = match extra_roots {
        None => rustls_platform_verifier::Verifier::new(provider),
        Some(roots) => rustls_platform_verifier::Verifier::new_with_extra_roots(roots, provider),
    };
    match verifier {
        Ok(v) => Ok(builder.dangerous().with_custom_certificate_verifier(Arc::new(v)).with_no_client_auth()),
        // Not fatal: every https delivery then fails with a certificate error (and this is
        // logged) rather than the daemon refusing to start over a channel it may never use.
        Err(e) => {
            tracing::error!(error = %e, "load the platform's TLS roots; https deliveries will fail");
            Ok(builder.with_root_certificates(rustls::RootCertStore::empty()).with_no_client_auth())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    const DEV: NetPolicy = NetPolicy { allow_insecure_http: true, allow_private_networks: true };

    #[test]
    fn retry_after_takes_seconds_or_an_http_date() {
        assert_eq!(retry_after(" 7 "), Some(Duration::from_secs(7)));
        // The date form has whole seconds: 20 s ahead reads as a little over 19.
        let in_20s = httpdate::fmt_http_date(std::time::SystemTime::now() + Duration::from_secs(20));
        let wait = retry_after(&in_20s).unwrap();
        assert!(wait > Duration::from_secs(18) && wait <= Duration::from_secs(20), "{in_20s}: {wait:?}");
        assert_eq!(retry_after("Sun, 06 Nov 1994 08:49:37 GMT"), Some(Duration::ZERO), "a date already past");
        assert_eq!(retry_after("soon"), None);
        assert_eq!(retry_after("-1"), None);
    }

    fn post(uri: &str) -> Request {
        http::Request::post(uri).body(Full::new(Bytes::from_static(b"{}"))).unwrap()
    }

    fn pem_cert(pem: &[u8]) -> rustls::pki_types::CertificateDer<'static> {
        use rustls::pki_types::pem::PemObject;
        rustls::pki_types::CertificateDer::from_pem_slice(pem).unwrap()
    }

    /// The test CA of `tests/fixtures` (see its README).
    fn test_ca() -> rustls::pki_types::CertificateDer<'static> {
        pem_cert(include_bytes!("../../tests/fixtures/ca.crt"))
    }

    /// What a test server saw of one request.
    struct Seen {
        version: http::Version,
        headers: http::HeaderMap,
    }

    /// A hyper server on 127.0.0.1 (HTTP/1.1 and HTTP/2; TLS with the fixture certificate
    /// when `tls`) answering `status` with `body`. Counts connections, reports requests.
    async fn server(
        tls: bool,
        status: u16,
        body: &'static [u8],
    ) -> (String, Arc<AtomicUsize>, tokio::sync::mpsc::UnboundedReceiver<Seen>) {
        use rustls::pki_types::pem::PemObject;
        let acceptor = tls.then(|| {
            let cert = pem_cert(include_bytes!("../../tests/fixtures/leaf.crt"));
            let key = rustls::pki_types::PrivateKeyDer::from_pem_slice(include_bytes!("../../tests/fixtures/leaf.key"))
                .unwrap();
            let mut config =
                rustls::ServerConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
                    .with_safe_default_protocol_versions()
                    .unwrap()
                    .with_no_client_auth()
                    .with_single_cert(vec![cert], key)
                    .unwrap();
            config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
            tokio_rustls::TlsAcceptor::from(Arc::new(config))
        });
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        let connections = Arc::new(AtomicUsize::new(0));
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        let count = connections.clone();
        tokio::spawn(async move {
            while let Ok((stream, _)) = l.accept().await {
                count.fetch_add(1, Ordering::SeqCst);
                let (tx, acceptor) = (tx.clone(), acceptor.clone());
                tokio::spawn(async move {
                    let svc = hyper::service::service_fn(move |req: http::Request<hyper::body::Incoming>| {
                        let tx = tx.clone();
                        async move {
                            let (parts, incoming) = req.into_parts();
                            let _ = incoming.collect().await;
                            let _ = tx.send(Seen { version: parts.version, headers: parts.headers });
                            let mut resp = http::Response::new(Full::new(Bytes::from_static(body)));
                            *resp.status_mut() = http::StatusCode::from_u16(status).unwrap();
                            resp.headers_mut().insert(RETRY_AFTER, HeaderValue::from_static("7"));
                            Ok::<_, std::convert::Infallible>(resp)
                        }
                    });
                    let builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
                    let io_result = match acceptor {
                        Some(a) => match a.accept(stream).await {
                            Ok(s) => builder.serve_connection(hyper_util::rt::TokioIo::new(s), svc).await,
                            Err(_) => return,
                        },
                        None => builder.serve_connection(hyper_util::rt::TokioIo::new(stream), svc).await,
                    };
                    drop(io_result);
                });
            }
        });
        (format!("{}://{addr}", if tls { "https" } else { "http" }), connections, rx)
    }

    /// A raw TCP server on 127.0.0.1 that reads a request head and writes `response` as is,
    /// then keeps the connection open.
    async fn raw_server(response: &'static [u8]) -> String {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        tokio::spawn(async move {
            while let Ok((mut s, _)) = l.accept().await {
                tokio::spawn(async move {
                    let mut buf = vec![0u8; 16384];
                    let mut got = Vec::new();
                    while !got.windows(4).any(|w| w == b"\r\n\r\n") {
                        match s.read(&mut buf).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => got.extend_from_slice(&buf[..n]),
                        }
                    }
                    let _ = s.write_all(response).await;
                    // Hold the connection until the client goes.
                    let _ = s.read(&mut buf).await;
                });
            }
        });
        format!("http://{addr}")
    }

    #[tokio::test]
    async fn sends_default_headers_and_reuses_the_connection() {
        let (base, connections, mut seen) = server(false, 200, b"ok").await;
        let client = DeliveryClient::new(DEV).unwrap();
        for _ in 0..2 {
            let reply = client.send(post(&format!("{base}/hook")), Duration::from_secs(5)).await.unwrap();
            assert_eq!((reply.status, reply.body.as_slice()), (200, &b"ok"[..]));
        }
        assert_eq!(connections.load(Ordering::SeqCst), 1, "a small answer read to its end keeps the connection");
        let req = seen.recv().await.unwrap();
        assert_eq!(req.version, http::Version::HTTP_11);
        let h = |n: &str| req.headers.get(n).and_then(|v| v.to_str().ok()).unwrap_or_default().to_string();
        assert_eq!(h("user-agent"), AGENT);
        assert_eq!(h("accept"), "*/*");
        assert_eq!(h("host"), base.trim_start_matches("http://"));
        assert_eq!(h("content-length"), "2");
        // A request's own User-Agent is the only one sent.
        let mut own = post(&format!("{base}/x"));
        own.headers_mut().insert(USER_AGENT, HeaderValue::from_static("mine/1"));
        client.send(own, Duration::from_secs(5)).await.unwrap();
        let _ = seen.recv().await.unwrap();
        let req = seen.recv().await.unwrap();
        let agents: Vec<_> = req.headers.get_all(USER_AGENT).iter().collect();
        assert_eq!(agents, vec![HeaderValue::from_static("mine/1")]);
    }

    #[tokio::test]
    async fn reads_a_capped_body_and_retry_after() {
        let big: &'static [u8] = Box::leak(vec![b'x'; 3 * RESPONSE_CAP].into_boxed_slice());
        let (base, connections, _seen) = server(false, 503, big).await;
        let client = DeliveryClient::new(DEV).unwrap();
        for _ in 0..2 {
            let reply = client.send(post(&base), Duration::from_secs(5)).await.unwrap();
            assert_eq!(reply.status, 503);
            assert_eq!(reply.retry_after, Some(Duration::from_secs(7)));
            assert_eq!(reply.body.len(), RESPONSE_CAP);
        }
        assert_eq!(connections.load(Ordering::SeqCst), 2, "a body left unread closes its connection");
    }

    #[tokio::test]
    async fn a_stalled_body_keeps_the_status() {
        let base = raw_server(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nabc").await;
        // The body never completes, so the deadline always ends the read; it is long enough
        // for the status to arrive first on a busy machine (300 ms was not).
        let reply = DeliveryClient::new(DEV).unwrap().send(post(&base), Duration::from_secs(3)).await.unwrap();
        assert_eq!((reply.status, reply.body.as_slice()), (200, &b"abc"[..]));
    }

    #[tokio::test]
    async fn redirects_are_not_followed() {
        let base =
            raw_server(b"HTTP/1.1 302 Found\r\nLocation: http://127.0.0.1:9/\r\nContent-Length: 0\r\n\r\n").await;
        let reply = DeliveryClient::new(DEV).unwrap().send(post(&base), Duration::from_secs(5)).await.unwrap();
        assert_eq!(reply.status, 302);
    }

    #[tokio::test]
    async fn errors_are_classified() {
        // Nothing listens on a port just released (another process taking it in between
        // would fail this test, not pass it wrongly).
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let e = DeliveryClient::new(DEV)
            .unwrap()
            .send(post(&format!("http://127.0.0.1:{port}/")), Duration::from_secs(5))
            .await;
        assert!(matches!(e, Err(SendError::Connect(_))), "{e:?}");

        // A host name that resolves only to loopback, under the strict policy.
        let strict = NetPolicy { allow_insecure_http: true, allow_private_networks: false };
        let e = DeliveryClient::new(strict).unwrap().send(post("http://localhost:9/"), Duration::from_secs(5)).await;
        assert!(matches!(&e, Err(SendError::Refused(m)) if m.contains("delivery.allow_private_networks")), "{e:?}");

        // A server that accepts and never answers.
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        tokio::spawn(async move {
            let mut held = Vec::new();
            while let Ok((s, _)) = l.accept().await {
                held.push(s);
            }
        });
        let e =
            DeliveryClient::new(DEV).unwrap().send(post(&format!("http://{addr}/")), Duration::from_millis(300)).await;
        assert_eq!(e.unwrap_err().to_string(), "timed out after 0.3s");
    }

    #[test]
    fn a_connect_timeout_is_a_timeout() {
        #[derive(Debug, thiserror::Error)]
        #[error("tcp connect error")]
        struct Wrapper(#[source] std::io::Error);
        let e = Wrapper(std::io::Error::new(std::io::ErrorKind::TimedOut, "deadline has elapsed"));
        assert!(matches!(classify(true, &e, CONNECT_TIMEOUT), SendError::Timeout(t) if t == CONNECT_TIMEOUT));
        let e = Wrapper(std::io::Error::new(std::io::ErrorKind::ConnectionRefused, "refused"));
        assert!(matches!(classify(true, &e, CONNECT_TIMEOUT), SendError::Connect(m) if m == "refused"));
    }

    /// https is TLS with a verified certificate: a server whose chain reaches a trusted root
    /// answers (over HTTP/2, chosen by ALPN); one the roots do not vouch for, or whose
    /// certificate names another host, is refused at the handshake.
    #[tokio::test]
    async fn https_verifies_the_certificate_and_speaks_h2() {
        let (base, _, mut seen) = server(true, 200, b"ok").await;
        let trusting = DeliveryClient::with_tls(DEV, tls_config(Some(vec![test_ca()])).unwrap());
        let reply = trusting.send(post(&format!("{base}/tls")), Duration::from_secs(5)).await.unwrap();
        assert_eq!((reply.status, reply.body.as_slice()), (200, &b"ok"[..]));
        assert_eq!(seen.recv().await.unwrap().version, http::Version::HTTP_2);

        // The platform's roots do not include the test CA.
        let e = DeliveryClient::new(DEV).unwrap().send(post(&base), Duration::from_secs(5)).await.unwrap_err();
        assert!(matches!(&e, SendError::Connect(m) if m.contains("UnknownIssuer")), "{e}");

        // The certificate is for 127.0.0.1, not for the name `localhost`.
        let port = base.rsplit(':').next().unwrap();
        let e = trusting.send(post(&format!("https://localhost:{port}/")), Duration::from_secs(5)).await.unwrap_err();
        assert!(matches!(&e, SendError::Connect(m) if m.contains("not valid for name")), "{e}");
    }
}
