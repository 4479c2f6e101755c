//! The thin warp frontend.
//!
//! One warp filter captures method, path, query, headers and body; [`route`] matches the
//! path against the route table and calls a handler. Handlers parse and authenticate, then
//! forward work to actors (writes) or read the store (reads). Doing the routing ourselves
//! gives exact 404 vs 405 answers, one body limit that also covers chunked uploads (413),
//! and a bounded `route` label for metrics.
//!
//! This module owns no state of its own and must not hold actor state.

/// Dispatches on the request method for one route; any other method is 405.
macro_rules! methods {
    ($m:expr, $label:expr, { $($meth:ident => $handler:expr),+ $(,)? }) => {{
        // HEAD is answered as GET is where GET is taken (RFC 9110 §9.3.2): hyper sends the
        // head of the answer, never its body.
        let allowed: &[&str] = &[$(stringify!($meth)),+];
        let method = match $m {
            warp::http::Method::HEAD if allowed.contains(&"GET") => warp::http::Method::GET,
            other => other,
        };
        let result: Result<$crate::http::Response, $crate::error::ApiError> = match method {
            $(warp::http::Method::$meth => $handler.await,)+
            other => Err($crate::error::ApiError::MethodNotAllowed {
                method: other.to_string(),
                route: $label,
                allow: &[$(stringify!($meth)),+],
            }),
        };
        ($label, $crate::http::into_response(result))
    }};
}

mod admin;
mod alerts;
mod inbound;
mod limits;
pub mod listen;
mod ops;
mod outbound;
mod page;
mod per_ip;
pub mod refusals;
mod request;
mod writebacks;

pub use ops::IngestHolds;
pub use page::PAGE_BYTES;
pub use request::Request;

use std::future::Future;
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures::StreamExt;
use warp::http::header::CONNECTION;
use warp::http::{HeaderMap, Method, StatusCode};
use warp::hyper::body::Bytes as HyperBytes;
use warp::Filter;

use crate::auth::ApiKeys;
use crate::error::ApiError;
use crate::state::Shared;

/// What the HTTP layer needs: shared handles plus the API keys and the metrics renderer.
#[derive(Clone)]
pub struct HttpState {
    pub shared: Shared,
    pub keys: ApiKeys,
    pub metrics: metrics_exporter_prometheus::PrometheusHandle,
    /// Slots for native signature checks (see `inbound::in_check_slot`).
    pub signature_checks: std::sync::Arc<tokio::sync::Semaphore>,
    /// Ingests held by tests (debug endpoints only, see [`ops::IngestHolds`]).
    pub holds: std::sync::Arc<ops::IngestHolds>,
    /// The last refused ingest of each bucket, in memory only (see [`refusals`]).
    pub refusals: std::sync::Arc<refusals::Refusals>,
    /// The refused Mux lifecycle webhooks of each connection, for the log (see [`refusals`]).
    pub lifecycle_refusals: std::sync::Arc<refusals::Refusals<crate::ids::ConnectionId>>,
}

impl HttpState {
    /// Half the cores (at least one) for signature checks: anyone can send
    /// a request with a bogus `Mux-Signature` and a fresh timestamp, and each costs an HMAC
    /// of the body per signing secret. A flood of them queues for these slots and leaves the
    /// other cores to everything else (a request authenticated by `X-Webhook-Secret` needs
    /// no slot).
    pub fn signature_checks() -> std::sync::Arc<tokio::sync::Semaphore> {
        let cores = std::thread::available_parallelism().map_or(2, |n| n.get());
        std::sync::Arc::new(tokio::sync::Semaphore::new((cores / 2).max(1)))
    }
}

pub type Response = warp::http::Response<warp::hyper::body::Bytes>;

/// Serves until `shutdown` resolves, then lets in-flight requests finish.
pub async fn serve(
    state: HttpState,
    listener: tokio::net::TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) {
    let read_timeout = Duration::from_secs(state.shared.config.server.read_timeout_seconds);
    let max_connections = state.shared.config.server.max_connections;
    let per_ip_cap = state.shared.config.server.max_connections_per_ip;
    let server = &state.shared.config.server;
    let upstream_bodies = BodyBudget::new(server.max_upstream_body_memory_mb, server.max_body_bytes);
    // One reference count per request, not one per handle the state holds.
    let state = std::sync::Arc::new(state);
    let filter = warp::method()
        .and(warp::path::full())
        .and(warp::query::raw().or(warp::any().map(String::new)).unify())
        .and(warp::header::headers_cloned())
        .and(warp::body::stream())
        .then(move |method: Method, path: warp::path::FullPath, query: String, headers: HeaderMap, body| {
            let state = state.clone();
            let upstream_bodies = upstream_bodies.clone();
            async move {
                let started = Instant::now();
                let limit = state.shared.config.server.max_body_bytes;
                // An admin request without a valid key is answered (401) without routing its
                // body: an anonymous client makes hookline hold at most 64 KiB for a second, not
                // `max_body_bytes` for `read_timeout`. Every admin handler authenticates before
                // it looks at the body.
                let keyless = keyless(path.as_str());
                let upstream = keyless.is_some();
                let anonymous_admin = !upstream && !state.keys.verify_headers(&headers);
                // Of the keyless routes only a POST to ingest or Mux lifecycle has a body that
                // is read, and charged to the upstream budget. The probes, `/metrics`, and other
                // methods on the upstream paths (a 405) need none: theirs is read as an anonymous
                // admin request's is, or anyone could hold the budget with bodies to `/healthz`.
                let upstream_body = keyless == Some(Keyless::Upstream) && method == Method::POST;
                // Likewise an upstream request that its head already refuses (an unknown bucket,
                // a wrong secret): its body would take a share of the upstream budget.
                let (refused, head_proof) = match upstream_body {
                    true => match inbound::answer_before_body(&state, path.as_str(), &headers) {
                        inbound::Head::Answer(label, resp) => (Some((label, resp)), None),
                        inbound::Head::Authentic(proof) => (None, Some(proof)),
                        inbound::Head::Read => (None, None),
                    },
                    false => (None, None),
                };
                // A body not read to its end leaves the connection unusable: the answer says
                // so (`Connection: close`), or a pooling client sends its next request on a
                // connection the server is closing and sees it fail.
                let mut unread = false;
                let body = match anonymous_admin || refused.is_some() || (upstream && !upstream_body) {
                    // A small body is still read (for a second at most) so that the client,
                    // still sending it, reads the answer rather than a reset connection.
                    true => {
                        unread = read_body(&headers, body, 64 << 10, Duration::from_secs(1), None).await.is_err();
                        Ok((Bytes::new(), Held::default()))
                    }
                    false => {
                        let budget = upstream_body.then_some((&upstream_bodies, head_proof.is_some()));
                        read_body(&headers, body, limit, read_timeout, budget).await
                    }
                };
                let (label, resp) = match (refused, body) {
                    (Some(answer), _) => answer,
                    // The body's share of the budget is held until it has been handled.
                    (None, Ok((body, _held))) => {
                        // And its share of the handling bound, held until it is answered.
                        let handling = match upstream_body {
                            true => upstream_bodies.handle(body.len()).await.map(Some),
                            false => Ok(None),
                        };
                        match handling {
                            Ok(_handling) => {
                                let mut req = Request::new(method.clone(), path.as_str(), &query, headers, body);
                                req.head_proof = head_proof;
                                route(&state, req).await
                            }
                            Err(e) => {
                                (body_error_label(&state, &method, path.as_str(), &e, started), error_response(&e))
                            }
                        }
                    }
                    (None, Err(e)) => {
                        unread = true;
                        (body_error_label(&state, &method, path.as_str(), &e, started), error_response(&e))
                    }
                };
                // Without a valid key, an admin route answers 401 whatever the method (the
                // contract: a missing key is 401), not a 405 listing the methods it takes.
                let mut resp = match anonymous_admin && resp.status() == StatusCode::METHOD_NOT_ALLOWED {
                    true => error_response(&ApiError::Unauthorized),
                    false => resp,
                };
                if unread {
                    resp.headers_mut().insert(CONNECTION, warp::http::HeaderValue::from_static("close"));
                }
                // A HEAD answer is the head alone (RFC 9110 §9.3.2): hyper leaves the body out
                // over HTTP/1 only, and over HTTP/2 would send it as DATA frames, which the
                // client refuses (RFC 9113 §8.1: PROTOCOL_ERROR). The GET answer's length stays.
                if method == Method::HEAD {
                    let len = resp.body().len();
                    resp.headers_mut()
                        .entry(warp::http::header::CONTENT_LENGTH)
                        .or_insert_with(|| warp::http::HeaderValue::from(len));
                    *resp.body_mut() = HyperBytes::new();
                }
                crate::metrics::http_request(label, method.as_str(), resp.status().as_u16(), started.elapsed());
                resp
            }
        });
    let max_connections = limits::connection_cap(max_connections);
    let caps = Caps { total: max_connections, per_ip: per_ip_cap.min(max_connections) };
    accept_loop(move || warp::service(filter.clone()), listener, read_timeout, caps, shutdown).await;
}

/// The routes that take no API key.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Keyless {
    /// Probes and metrics: no body is needed.
    Probe,
    /// The signed upstream routes (ingest, Mux lifecycle), whose handlers read the body to
    /// check its signature.
    Upstream,
}

fn keyless(path: &str) -> Option<Keyless> {
    match request::segments(path).as_slice() {
        ["healthz" | "readyz" | "metrics"] => Some(Keyless::Probe),
        ["v1", "buckets", _, "source-adapter", "ingest"] | ["v1", "webhooks", "mux", _] => Some(Keyless::Upstream),
        _ => None,
    }
}

/// The most an HTTP/1 connection buffers of request heads (hyper's `max_buf_size`).
const MAX_HEAD_BYTES: usize = 64 << 10;

/// Most bytes of a connection's answers the kernel holds unsent (`TCP_NOTSENT_LOWAT`).
const UNSENT_BYTES: u32 = 64 << 10;

/// Bytes a connection that is winding down must send per idle check (a quarter of
/// `read_timeout`) to count as read: HTTP/2 control frames (a PING's answer is 17 bytes)
/// do not, a slow reader of a large answer does.
const PROGRESS_FLOOR: u64 = 1 << 10;

/// However fast its answers are read, a connection winding down is dropped after this
/// (or 4 × `read_timeout`, if longer): 1 KiB per check would otherwise hold it forever.
const MAX_WIND_DOWN: Duration = Duration::from_secs(60);

/// How long after the shutdown began a connection may still be sending the head of its next
/// request. hyper's graceful shutdown closes only an HTTP/1 connection that is between
/// requests: one whose first request's head is half read counts as busy, and hyper would
/// keep reading it for the whole `read_timeout`, holding up every restart. A real client
/// sends a head in milliseconds; a second is ample, and short next to the shutdown's grace.
const HEAD_GRACE: Duration = Duration::from_secs(1);

/// How many client connections may be open: in all, and from one client address.
struct Caps {
    total: usize,
    per_ip: usize,
}

/// warp's server without its two gaps: it gives hyper no timer, so a client that sends half
/// its headers holds a connection (and a graceful shutdown) forever (here it has
/// `read_timeout` to send them; the body's own deadline is in [`read_body`]); and it logs every
/// client that hangs up mid-request at `error`. Connections are served by hyper-util (HTTP/1
/// and h2c, as warp does); a connection idle for `read_timeout` is closed; on shutdown the
/// listener closes and open connections finish their request (the caller bounds how long
/// that may take), while one whose next request has not reached the service within
/// [`HEAD_GRACE`] is closed.
async fn accept_loop<S, B>(
    service: impl Fn() -> S,
    listener: tokio::net::TcpListener,
    read_timeout: Duration,
    caps: Caps,
    shutdown: impl Future<Output = ()>,
) where
    S: tower_service::Service<warp::http::Request<warp::hyper::body::Incoming>, Response = warp::http::Response<B>>
        + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
    S::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    B: http_body::Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    use hyper_util::rt::{TokioIo, TokioTimer};
    // HTTP/2 streams run as tasks of their own: they end with this future too.
    let streams = tokio_util::sync::CancellationToken::new();
    let _end_streams = streams.clone().drop_guard();
    let mut builder = hyper_util::server::conn::auto::Builder::new(StreamExecutor { stop: streams });
    // hyper buffers up to ~400 KB of a request's head (or of pipelined requests) per
    // connection by default, outside any memory budget: 64 KiB is ample for real headers
    // (a larger head is a 431).
    builder.http1().timer(TokioTimer::new()).header_read_timeout(read_timeout).max_buf_size(MAX_HEAD_BYTES);
    builder
        .http2()
        // hyper's default is 200 streams per connection, each with a body of its own: the
        // connection cap would not bound much.
        .max_concurrent_streams(64)
        // hyper's default lets each stream buffer ~400 KB of an answer the client does not
        // read; 64 of them add up.
        .max_send_buf_size(64 << 10)
        .timer(TokioTimer::new())
        .keep_alive_interval(Some(Duration::from_secs(30)))
        .keep_alive_timeout(read_timeout);
    // Connections live in this set, not as detached tasks: when this future is dropped (the
    // caller gave up waiting after a shutdown), every connection is aborted with it.
    let mut conns = tokio::task::JoinSet::new();
    // Tells connections still waiting for their first byte that we are shutting down.
    let closing = tokio_util::sync::CancellationToken::new();
    let mut shutdown = std::pin::pin!(shutdown);
    // One permit per open connection, held by its task: at the cap, new clients wait in the
    // listen backlog instead of taking file descriptors the store needs.
    let open = std::sync::Arc::new(tokio::sync::Semaphore::new(caps.total));
    let max_connections = caps.total;
    // A client at its own cap has its new connections closed at once (not kept waiting: a
    // waiting connection would hold one of everyone's slots).
    let per_ip = per_ip::PerIp::new(caps.per_ip);
    let mut warned_full: Option<std::time::Instant> = None;
    let mut warned_ip: Option<std::time::Instant> = None;
    loop {
        let next = async {
            let permit = open.clone().acquire_owned().await;
            (permit, listener.accept().await)
        };
        let (permit, io, peer) = tokio::select! {
            (permit, accepted) = next => match (permit, accepted) {
                (Ok(permit), Ok((io, peer))) => (permit, io, peer),
                (_, Err(e)) => {
                    accept_failed(e).await;
                    continue;
                }
                (Err(_), _) => break, // the semaphore is never closed
            },
            Some(_) = conns.join_next(), if !conns.is_empty() => continue,
            _ = &mut shutdown => break,
        };
        let Some(client_slot) = per_ip.take(peer.ip()) else {
            crate::metrics::connection_refused();
            if warned_ip.is_none_or(|t| t.elapsed() > Duration::from_secs(60)) {
                tracing::warn!(client = %peer.ip(), max_connections_per_ip = caps.per_ip,
                    "server.max_connections_per_ip reached by a client: its new connections are closed (logged once a minute)");
                warned_ip = Some(std::time::Instant::now());
            }
            continue;
        };
        // Set once the connection's first request reaches the service (see below).
        let got_request = tokio_util::sync::CancellationToken::new();
        let activity = std::sync::Arc::new(Activity::default());
        let svc = {
            use warp::hyper::service::Service as _;
            let inner = hyper_util::service::TowerToHyperService::new(service());
            let (got_request, activity) = (got_request.clone(), activity.clone());
            warp::hyper::service::service_fn(move |mut req: warp::http::Request<warp::hyper::body::Incoming>| {
                if !got_request.is_cancelled() {
                    got_request.cancel(); // once per connection (it takes a lock)
                }
                if req.version() == warp::http::Version::HTTP_2 {
                    activity.h2.store(true, std::sync::atomic::Ordering::Relaxed);
                }
                // A CONNECT's target is an authority with no path, on which warp's path
                // filter panics (warp 0.4.3): route it as `/`, which answers 404.
                if req.uri().path_and_query().is_none() {
                    *req.uri_mut() = warp::http::Uri::from_static("/");
                }
                let busy = Activity::start(&activity);
                let answer = inner.call(req);
                async move {
                    let r = answer.await;
                    drop(busy);
                    r
                }
            })
        };
        if open.available_permits() == 0 && warned_full.is_none_or(|t| t.elapsed() > Duration::from_secs(60)) {
            tracing::warn!(max_connections, "server.max_connections reached: new connections wait");
            warned_full = Some(std::time::Instant::now());
        }
        // The kernel takes writes while its send buffer (autotuned up to megabytes) has
        // room: hyper's writes to a slow reader of a large answer would move only each time
        // much of it drained, and look stalled (see `Progress`). Bounding what is not yet
        // sent keeps them moving, and autotuning of what is in flight on.
        if let Err(e) = socket2::SockRef::from(&io).set_tcp_notsent_lowat(UNSENT_BYTES) {
            tracing::debug!(error = %e, "set a connection's TCP_NOTSENT_LOWAT");
        }
        let (builder, closing) = (builder.clone(), closing.clone());
        conns.spawn(async move {
            let _permit = (permit, client_slot);
            let deadline = tokio::time::Instant::now() + read_timeout;
            // hyper's header timer starts once it has seen which protocol the client speaks:
            // a client that connects and sends nothing is dropped here (at once on shutdown:
            // the shutdown waits for this task).
            let mut first = [0u8; 1];
            tokio::select! {
                // A client whose first bytes are here is served, even at the moment of shutdown.
                biased;
                peeked = tokio::time::timeout_at(deadline, io.peek(&mut first)) => {
                    if !matches!(peeked, Ok(Ok(1))) {
                        return;
                    }
                }
                _ = closing.cancelled() => return,
            }
            // Nor does anything time the protocol detection (up to the 24 bytes of the HTTP/2
            // preface) or an HTTP/2 client's first request: a client that sends `P` and stalls
            // would hold the connection forever. The first request must arrive within
            // `read_timeout` of the accept; after it, hyper's own timers take over.
            let first_request_late = async {
                tokio::time::sleep_until(deadline).await;
                if got_request.is_cancelled() {
                    std::future::pending::<()>().await;
                }
            };
            let io = Progress { io, activity: activity.clone() };
            let mut conn = std::pin::pin!(builder.serve_connection_with_upgrades(TokioIo::new(io), svc).into_owned());
            let mut first_request_late = std::pin::pin!(first_request_late);
            // hyper closes an idle HTTP/1 connection when its next request's headers are late,
            // but keeps an HTTP/2 one that answers pings open for good, holding a
            // `max_connections` slot: any connection idle for `read_timeout` is wound down.
            let mut idle_check = tokio::time::interval_at(deadline, read_timeout / 4);
            // When the wind-down began. A graceful shutdown waits for the answers being
            // written, and a client that never reads would hold its slot forever: once its
            // answers have not moved (by [`PROGRESS_FLOOR`] per check) for `read_timeout`, or
            // after [`MAX_WIND_DOWN`], the connection is dropped. A slow reader of a large
            // answer moves it.
            let mut winding_down: Option<tokio::time::Instant> = None;
            let wind_down_cap = MAX_WIND_DOWN.max(read_timeout * 4);
            let (mut sent, mut moved_at) = (0u64, tokio::time::Instant::now());
            // Once the shutdown began: when to look again for a connection that owes its
            // client nothing (see [`HEAD_GRACE`]).
            let mut shutting_down = false;
            let mut head_check = std::pin::pin!(tokio::time::sleep_until(deadline));
            loop {
                tokio::select! {
                    r = conn.as_mut() => {
                        if let Err(e) = r {
                            tracing::debug!(error = %e, "HTTP connection ended with an error");
                        }
                        return;
                    }
                    () = &mut first_request_late => {
                        tracing::debug!("no request within read_timeout_seconds: connection closed");
                        return;
                    }
                    // Shutting down: open requests finish, then the connection closes.
                    _ = closing.cancelled(), if !shutting_down => {
                        shutting_down = true;
                        head_check.as_mut().reset(tokio::time::Instant::now() + HEAD_GRACE);
                        if winding_down.is_none() {
                            conn.as_mut().graceful_shutdown();
                            winding_down = Some(tokio::time::Instant::now());
                        }
                    }
                    // hyper may still be waiting for a request head: no request of this
                    // connection is in the service and none of its answers is left to write,
                    // so closing it cuts nothing.
                    () = &mut head_check, if shutting_down => {
                        if activity.owes_nothing() {
                            tracing::debug!("no request under way a second into the shutdown: connection closed");
                            return;
                        }
                        head_check.as_mut().reset(tokio::time::Instant::now() + HEAD_GRACE);
                    }
                    tick = idle_check.tick() => {
                        let idle = activity.idle_for() >= read_timeout;
                        let now_sent = activity.sent();
                        if now_sent >= sent + PROGRESS_FLOOR {
                            moved_at = tick;
                        }
                        sent = now_sent;
                        match winding_down {
                            None if idle => {
                                tracing::debug!("connection idle for read_timeout_seconds: closing it");
                                conn.as_mut().graceful_shutdown();
                                winding_down = Some(tick);
                            }
                            // No request in flight, and its answers stuck: nothing is cut
                            // but answers no one reads.
                            Some(since)
                                if idle
                                    && tick - since >= read_timeout
                                    && (tick - moved_at >= read_timeout || tick - since >= wind_down_cap) =>
                            {
                                tracing::debug!("answers unread for read_timeout_seconds: connection dropped");
                                return;
                            }
                            _ => {}
                        }
                    }
                }
            }
        });
    }
    drop(listener);
    // Open requests finish; idle and still silent connections close.
    closing.cancel();
    while conns.join_next().await.is_some() {}
}

/// A connection's requests in flight and when the last one ended: what tells an idle
/// connection (see [`accept_loop`]).
struct Activity {
    in_flight: std::sync::atomic::AtomicUsize,
    /// Milliseconds from `since` to the end of the last request (or to the accept).
    last_ms: std::sync::atomic::AtomicU64,
    /// Bytes written to the client so far.
    sent: std::sync::atomic::AtomicU64,
    /// hyper has tried to write since its last flush: an answer of a request that has left
    /// the service may still be in its buffer, unsent. (HTTP/1 flushes its socket only once
    /// its buffer is empty, and tries a write whenever it holds bytes.)
    writing: std::sync::atomic::AtomicBool,
    /// An HTTP/2 request arrived: its answer's body may wait for the client's flow-control
    /// window with nothing in flight and nothing being written, so [`Activity::owes_nothing`]
    /// cannot tell.
    h2: std::sync::atomic::AtomicBool,
    since: std::time::Instant,
}

impl Default for Activity {
    fn default() -> Self {
        Activity {
            in_flight: Default::default(),
            last_ms: Default::default(),
            sent: Default::default(),
            writing: Default::default(),
            h2: Default::default(),
            since: std::time::Instant::now(),
        }
    }
}

/// One request in flight; its drop (answered or cancelled) marks the connection active now.
struct Busy(std::sync::Arc<Activity>);

impl Activity {
    fn start(this: &std::sync::Arc<Activity>) -> Busy {
        this.in_flight.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        Busy(this.clone())
    }

    /// How long no request has been in flight (zero while one is).
    fn idle_for(&self) -> Duration {
        use std::sync::atomic::Ordering::Relaxed;
        if self.in_flight.load(Relaxed) > 0 {
            return Duration::ZERO;
        }
        self.since.elapsed().saturating_sub(Duration::from_millis(self.last_ms.load(Relaxed)))
    }

    /// `n` more bytes went out to the client.
    fn wrote(&self, n: usize) {
        self.sent.fetch_add(n as u64, std::sync::atomic::Ordering::Relaxed);
    }

    /// Bytes written to the client so far.
    fn sent(&self) -> u64 {
        self.sent.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Whether closing the connection now cuts nothing: an HTTP/1 connection (or one with no
    /// request yet) with no request in the service and no answer left to write. All hyper
    /// can be doing is reading a request head. (An answer is buffered and written in the same
    /// poll in which its request leaves the service, so no check falls in between.)
    fn owes_nothing(&self) -> bool {
        use std::sync::atomic::Ordering::Relaxed;
        self.in_flight.load(Relaxed) == 0 && !self.writing.load(Relaxed) && !self.h2.load(Relaxed)
    }
}

/// A connection's socket, counting for its [`Activity`] the bytes that go out: a client
/// reading a large answer slowly makes progress, one that never reads makes none.
struct Progress<T> {
    io: T,
    activity: std::sync::Arc<Activity>,
}

impl<T> Progress<T> {
    fn note(&self, r: &std::task::Poll<std::io::Result<usize>>) {
        self.activity.writing.store(true, std::sync::atomic::Ordering::Relaxed);
        if let std::task::Poll::Ready(Ok(n)) = r {
            self.activity.wrote(*n);
        }
    }
}

impl<T: tokio::io::AsyncRead + Unpin> tokio::io::AsyncRead for Progress<T> {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.io).poll_read(cx, buf)
    }
}

impl<T: tokio::io::AsyncWrite + Unpin> tokio::io::AsyncWrite for Progress<T> {
    fn poll_write(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        let r = std::pin::Pin::new(&mut self.io).poll_write(cx, buf);
        self.note(&r);
        r
    }

    fn poll_write_vectored(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> std::task::Poll<std::io::Result<usize>> {
        let r = std::pin::Pin::new(&mut self.io).poll_write_vectored(cx, bufs);
        self.note(&r);
        r
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        let r = std::pin::Pin::new(&mut self.io).poll_flush(cx);
        if let std::task::Poll::Ready(Ok(())) = r {
            self.activity.writing.store(false, std::sync::atomic::Ordering::Relaxed);
        }
        r
    }

    fn poll_shutdown(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.io).poll_shutdown(cx)
    }
}

impl Drop for Busy {
    fn drop(&mut self) {
        use std::sync::atomic::Ordering::Relaxed;
        let now = u64::try_from(self.0.since.elapsed().as_millis()).unwrap_or(u64::MAX);
        self.0.last_ms.fetch_max(now, Relaxed);
        self.0.in_flight.fetch_sub(1, Relaxed);
    }
}

/// Spawns hyper's HTTP/2 stream tasks so that they stop once `stop` is cancelled (when the
/// accept loop ends or is dropped), instead of outliving the server.
#[derive(Clone)]
struct StreamExecutor {
    stop: tokio_util::sync::CancellationToken,
}

impl<F> warp::hyper::rt::Executor<F> for StreamExecutor
where
    F: Future + Send + 'static,
    F::Output: Send + 'static,
{
    fn execute(&self, fut: F) {
        let stop = self.stop.clone();
        tokio::spawn(async move {
            tokio::select! {
                _ = fut => {}
                _ = stop.cancelled() => {}
            }
        });
    }
}

/// Too many open files and the like: wait a moment rather than spin (as hyper 0.14 did).
async fn accept_failed(e: std::io::Error) {
    use std::io::ErrorKind::{ConnectionAborted, ConnectionRefused, ConnectionReset};
    if matches!(e.kind(), ConnectionAborted | ConnectionRefused | ConnectionReset) {
        return;
    }
    tracing::error!(error = %e, "accepting a connection failed; retrying in 1 s");
    tokio::time::sleep(Duration::from_secs(1)).await;
}

/// Memory for bodies being received on the keyless routes, in KiB permits: a body takes its
/// share as its buffer grows with the bytes that arrive (a sender that stalls holds at most
/// twice what it sent, and at least 8 KiB) and gives it back once handled. Past the bound a
/// body is refused with 503 rather than held: a flood of slow senders can delay ingest
/// (upstreams retry) but cannot exhaust the daemon's memory. A body whose head did not
/// authenticate it (a `Mux-Signature`, checked against the body once it is in; an adapter
/// still starting) may also take no more than half of the bound, with the others: anyone
/// who knows a Mux bucket's ID can send such bodies, and they must not crowd out the
/// senders that `X-Webhook-Secret` already authenticated. (Half, or one largest body if that
/// is more: a bound that no body could fit in would refuse every signed request.)
///
/// Handling a body takes many times its size (its parsed JSON, the object, its records and
/// their copies on the way to the store: measured at 15–25× for a 1 MiB body), so a body
/// received is charged again, at [`HANDLING_FACTOR`] times its size (at most the whole
/// bound), to a second bound of the same size, `handling`, held until it has been answered.
/// A body waits up to [`HANDLING_WAIT`] for its share, then gets 503: 64 authenticated 1 MiB
/// bodies at once used to take 2–4 GB.
#[derive(Clone)]
struct BodyBudget {
    all: std::sync::Arc<tokio::sync::Semaphore>,
    unproven: std::sync::Arc<tokio::sync::Semaphore>,
    handling: std::sync::Arc<tokio::sync::Semaphore>,
    /// The bound, in KiB.
    kib: usize,
}

/// How many times its size a body is charged to the handling bound (see [`BodyBudget`]).
const HANDLING_FACTOR: usize = 16;

/// How long a body received waits for its share of the handling bound before its 503.
const HANDLING_WAIT: Duration = Duration::from_secs(2);

/// A body's share of a [`BodyBudget`], given back when dropped.
#[derive(Default)]
struct Held {
    all: Option<tokio::sync::OwnedSemaphorePermit>,
    unproven: Option<tokio::sync::OwnedSemaphorePermit>,
}

impl BodyBudget {
    fn new(mib: usize, max_body_bytes: usize) -> BodyBudget {
        let kib = mib.saturating_mul(1024);
        let unproven = (kib / 2).max(max_body_bytes.div_ceil(1024)).min(kib);
        BodyBudget {
            all: std::sync::Arc::new(tokio::sync::Semaphore::new(kib)),
            unproven: std::sync::Arc::new(tokio::sync::Semaphore::new(unproven)),
            handling: std::sync::Arc::new(tokio::sync::Semaphore::new(kib)),
            kib,
        }
    }

    /// The share of the handling bound for a body of `bytes` (see [`BodyBudget`]): waited for
    /// up to [`HANDLING_WAIT`], else 503.
    async fn handle(&self, bytes: usize) -> Result<tokio::sync::OwnedSemaphorePermit, ApiError> {
        let want = bytes.saturating_mul(HANDLING_FACTOR).div_ceil(1024).clamp(1, self.kib.max(1)) as u32;
        // At once when there is room (every small body): no timer for it.
        if let Ok(permit) = self.handling.clone().try_acquire_many_owned(want) {
            return Ok(permit);
        }
        let acquire = self.handling.clone().acquire_many_owned(want);
        match tokio::time::timeout(HANDLING_WAIT, acquire).await {
            Ok(Ok(permit)) => Ok(permit),
            _ => {
                crate::metrics::upstream_body_refused();
                Err(ApiError::Unavailable(
                    "too many large request bodies are being handled at once (server.max_upstream_body_memory_mb); \
                     retry shortly"
                        .into(),
                ))
            }
        }
    }

    /// Grows `held` to cover `bytes` (from the unproven half too, unless `proven`), or refuses.
    fn cover(&self, held: &mut Held, bytes: usize, proven: bool) -> Result<(), ApiError> {
        let want = bytes.div_ceil(1024) as u32;
        let have = held.all.as_ref().map_or(0, |p| p.num_permits() as u32);
        if want <= have {
            return Ok(());
        }
        let refused = || {
            crate::metrics::upstream_body_refused();
            ApiError::Unavailable(
                "too many request bodies are being received at once (server.max_upstream_body_memory_mb); retry shortly"
                    .into(),
            )
        };
        // Taken first, and given back with the rest if the whole bound is spent.
        let unproven = match proven {
            true => None,
            false => Some(self.unproven.clone().try_acquire_many_owned(want - have).map_err(|_| refused())?),
        };
        let all = self.all.clone().try_acquire_many_owned(want - have).map_err(|_| refused())?;
        fn grow(held: &mut Option<tokio::sync::OwnedSemaphorePermit>, more: tokio::sync::OwnedSemaphorePermit) {
            match held {
                Some(p) => p.merge(more),
                None => *held = Some(more),
            }
        }
        grow(&mut held.all, all);
        if let Some(more) = unproven {
            grow(&mut held.unproven, more);
        }
        Ok(())
    }
}

/// Reads the whole body, refusing more than `limit` bytes (by Content-Length up front, and by
/// counting for chunked bodies), and more than `timeout` to receive it all (408). With a
/// `budget` (and whether the request's head authenticated it), the buffer holding the bytes
/// received is charged to it by its capacity (503 when it is spent, once the rest has been
/// read and dropped, for a second at most); the [`Held`] returned is the body's share, to
/// hold until the body has been handled.
async fn read_body<S, B>(
    headers: &HeaderMap,
    body: S,
    limit: usize,
    timeout: Duration,
    budget: Option<(&BodyBudget, bool)>,
) -> Result<(Bytes, Held), ApiError>
where
    S: futures::Stream<Item = Result<B, warp::Error>> + Unpin,
    B: bytes::Buf,
{
    // Past the limit the rest of the body is read and thrown away (up to a bound) before
    // answering 413: a client still sending would otherwise see a reset connection instead of
    // the answer. Beyond the bound the connection is dropped with the 413.
    let discard_cap = limit.saturating_mul(4).max(8 * 1024 * 1024) as u64;
    let declared = headers
        .get(warp::http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|len| len > discard_cap) {
        return Err(ApiError::PayloadTooLarge(limit));
    }
    let mut body = body;
    let mut too_large = declared.is_some_and(|len| len > limit as u64);
    // Copied into one buffer that grows as the bytes arrive, and charged by its capacity:
    // what it holds in memory, not what the sender declared (an allocator may commit a
    // capacity reserved ahead at once), nor only the bytes (kept as hyper's chunks, a body
    // sent in tiny writes pinned a read buffer of 8 KiB per chunk, uncharged).
    let mut buf: Vec<u8> = Vec::new();
    let mut held = Held::default();
    let mut seen: u64 = 0;
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        let next = tokio::time::timeout_at(deadline, body.next()).await;
        let Some(chunk) = next.map_err(|_| ApiError::RequestTimeout(timeout.as_secs()))? else { break };
        let mut chunk = chunk.map_err(|e| ApiError::BadRequest {
            code: "bad_body",
            message: format!("could not read request body: {e}"),
        })?;
        while bytes::Buf::has_remaining(&chunk) {
            let part = bytes::Buf::chunk(&chunk);
            let n = part.len();
            seen += n as u64;
            if !too_large && buf.len() + n > limit {
                too_large = true;
                buf = Vec::new();
            }
            if too_large {
                if seen > discard_cap {
                    return Err(ApiError::PayloadTooLarge(limit));
                }
            } else {
                if buf.capacity() - buf.len() < n {
                    // Doubling, but never past the limit (the last step would double a
                    // 600 KiB buffer to 1.2 MiB for a 1 MiB limit).
                    let grown = (buf.capacity() * 2).max(buf.len() + n).max(8 << 10).min(limit);
                    if let Some((budget, proven)) = budget {
                        if let Err(refused) = budget.cover(&mut held, grown, proven) {
                            // Nothing more is charged or kept: the share goes back now, and
                            // the rest is read and dropped as for a 413, so that a client
                            // still sending reads the 503 rather than a reset connection.
                            drop((buf, held, chunk));
                            let until = deadline.min(tokio::time::Instant::now() + REFUSED_DRAIN);
                            drain(&mut body, until, discard_cap.saturating_sub(seen)).await;
                            return Err(refused);
                        }
                    }
                    buf.reserve_exact(grown - buf.len());
                }
                buf.extend_from_slice(part);
            }
            bytes::Buf::advance(&mut chunk, n);
        }
    }
    if too_large {
        return Err(ApiError::PayloadTooLarge(limit));
    }
    Ok((Bytes::from(buf), held))
}

/// How long a body refused by the upstream budget is still read (and dropped) for.
const REFUSED_DRAIN: Duration = Duration::from_secs(1);

/// Reads and drops the rest of a refused body, until it ends, `until` passes, more than
/// `cap` bytes come, or it fails: the answer follows in each case.
async fn drain<S, B>(body: &mut S, until: tokio::time::Instant, cap: u64)
where
    S: futures::Stream<Item = Result<B, warp::Error>> + Unpin,
    B: bytes::Buf,
{
    let mut left = cap;
    while let Ok(Some(Ok(chunk))) = tokio::time::timeout_at(until, body.next()).await {
        match left.checked_sub(bytes::Buf::remaining(&chunk) as u64) {
            Some(rest) => left = rest,
            None => return,
        }
    }
}

/// The route table. Returns the route template (metrics label) and the response.
async fn route(state: &HttpState, req: Request) -> (&'static str, Response) {
    let segs = req.segments();
    let m = req.method.clone();
    match segs.as_slice() {
        // HEAD too: load balancers probe with it (hyper leaves the body out).
        ["healthz"] => methods!(m, "/healthz", { GET => ops::healthz(state), HEAD => ops::healthz(state) }),
        ["readyz"] => methods!(m, "/readyz", { GET => ops::readyz(state), HEAD => ops::readyz(state) }),
        ["metrics"] => methods!(m, "/metrics", { GET => ops::metrics(state) }),
        ["v1", "debug", "crash", actor] => {
            if !state.shared.config.server.enable_debug_endpoints {
                return ("(unknown)", error_response(&not_found_route()));
            }
            methods!(m, "/v1/debug/crash/{actor}", { POST => ops::crash(state, &req, actor) })
        }
        ["v1", "debug", "hold-ingest", bucket_id] if state.shared.config.server.enable_debug_endpoints => {
            methods!(m, "/v1/debug/hold-ingest/{bucket_id}", {
                POST => ops::hold_ingest(state, &req, bucket_id),
                GET => ops::hold_ingest(state, &req, bucket_id),
                DELETE => ops::hold_ingest(state, &req, bucket_id),
            })
        }
        ["v1", "debug", "stall-adapter", bucket_id] if state.shared.config.server.enable_debug_endpoints => {
            methods!(m, "/v1/debug/stall-adapter/{bucket_id}", {
                POST => ops::stall_adapter(state, &req, bucket_id),
                DELETE => ops::stall_adapter(state, &req, bucket_id),
            })
        }
        ["v1", "debug", "buffer", bucket_id] if state.shared.config.server.enable_debug_endpoints => {
            methods!(m, "/v1/debug/buffer/{bucket_id}", { GET => ops::buffer(state, &req, bucket_id) })
        }
        ["v1", "organizations", "connections"] => methods!(m, "/v1/organizations/connections", {
            GET => admin::list_connections(state, &req),
            POST => admin::create_connection(state, &req),
        }),
        ["v1", "organizations", "connections", id] => methods!(m, "/v1/organizations/connections/{connection_id}", {
            GET => admin::get_connection(state, &req, id),
            PATCH => admin::patch_connection(state, &req, id),
            DELETE => admin::delete_connection(state, &req, id),
        }),
        ["v1", "buckets"] => methods!(m, "/v1/buckets", {
            GET => admin::list_buckets(state, &req),
            POST => admin::create_bucket(state, &req),
        }),
        ["v1", "buckets", id] => methods!(m, "/v1/buckets/{bucket_id}", {
            GET => admin::get_bucket(state, &req, id),
            PATCH => inbound::patch_bucket(state, &req, id),
            DELETE => admin::delete_bucket(state, &req, id),
        }),
        // Inbound: source adapters, objects, batches (http/inbound.rs).
        ["v1", "buckets", _, "source-adapter" | "objects" | "batches", ..] => inbound::route(state, &req, &segs).await,
        ["v1", "webhooks", ..] => inbound::route(state, &req, &segs).await,
        // Outbound: webhooks, deliveries, events (http/outbound.rs).
        ["v1", "organizations", "webhooks", ..] | ["v1", "events", ..] => outbound::route(state, &req, &segs).await,
        _ => ("(unknown)", error_response(&not_found_route())),
    }
}

/// The metrics label of a request refused while reading its body: `(body)`, except on the
/// ingest route, which upstream senders hit and operators watch (also counted as an ingest,
/// outcome `too_large` or `timeout`).
///
/// A body too large or too slow for an ingest is also the bucket's last refused ingest (its
/// status shows it): the event is lost unless the sender changes something, and the sender
/// sends it again as it is. In memory only, as a 401 is: its head may not be authentic yet.
/// (Only a bucket with a running adapter, and a head that may be authentic, gets its body read.)
fn body_error_label(state: &HttpState, method: &Method, path: &str, e: &ApiError, started: Instant) -> &'static str {
    let segs = request::segments(path);
    let ["v1", "buckets", bucket, "source-adapter", "ingest"] = segs.as_slice() else {
        return "(body)";
    };
    if method != Method::POST {
        return inbound::INGEST_ROUTE;
    }
    let outcome = match e {
        ApiError::PayloadTooLarge(_) => "too_large",
        ApiError::RequestTimeout(_) => "timeout",
        // The upstream body bounds (server.max_upstream_body_memory_mb) are in use.
        ApiError::Unavailable(_) => "unavailable",
        _ => "invalid",
    };
    crate::metrics::ingest_request(bucket, outcome, started.elapsed());
    if let (Some(id), "too_large" | "timeout") = (crate::ids::BucketId::parse(bucket), outcome) {
        inbound::note_refused(state, &id, outcome, &e.to_string());
    }
    inbound::INGEST_ROUTE
}

pub(crate) fn not_found_route() -> ApiError {
    ApiError::NotFound("no such route; see the README for the API".into())
}

pub(crate) fn into_response(r: Result<Response, ApiError>) -> Response {
    match r {
        Ok(resp) => resp,
        Err(e) => error_response(&e),
    }
}

/// The `Retry-After` of every 503, in seconds. One value, whatever the cause: most 503s end
/// within seconds (an actor restarting, a busy adapter, the upstream body bound in use), and
/// those that last until someone acts (a disabled adapter, a short disk) are answered
/// cheaply each time (nothing is stored), so a sender that honours it resumes within 5 s of
/// their end rather than at its own next backoff step.
pub const RETRY_AFTER_SECONDS: u16 = 5;

/// The one mapping from [`ApiError`] to an HTTP response.
pub fn error_response(e: &ApiError) -> Response {
    if let ApiError::Internal(inner) = e {
        tracing::error!(error = format!("{inner:#}"), "internal error while serving a request");
    }
    let mut resp = json(e.status(), &e.body());
    if matches!(e, ApiError::Unauthorized | ApiError::UnauthorizedMsg(_)) {
        resp.headers_mut().insert(warp::http::header::WWW_AUTHENTICATE, warp::http::HeaderValue::from_static("Bearer"));
    }
    // Every 503 is one to retry (an actor restarting, the disk short, an adapter disabled,
    // a dependency down): `Retry-After` says when, one value for all (see the constant).
    if matches!(e, ApiError::Unavailable(_)) {
        resp.headers_mut().insert(warp::http::header::RETRY_AFTER, warp::http::HeaderValue::from(RETRY_AFTER_SECONDS));
    }
    // RFC 9110: a 405 lists the methods the route takes.
    if let ApiError::MethodNotAllowed { allow, .. } = e {
        if let Ok(v) = warp::http::HeaderValue::from_str(&crate::error::allowed(allow).join(", ")) {
            resp.headers_mut().insert(warp::http::header::ALLOW, v);
        }
    }
    resp
}

/// A JSON response.
pub fn json<T: serde::Serialize + ?Sized>(status: StatusCode, body: &T) -> Response {
    let bytes = serde_json::to_vec(body).unwrap_or_else(|_| b"{}".to_vec());
    let mut resp = Response::new(HyperBytes::from(bytes));
    *resp.status_mut() = status;
    resp.headers_mut()
        .insert(warp::http::header::CONTENT_TYPE, warp::http::HeaderValue::from_static("application/json"));
    resp
}

/// An empty response (204).
pub fn empty(status: StatusCode) -> Response {
    let mut resp = Response::new(HyperBytes::new());
    *resp.status_mut() = status;
    resp
}

/// The 503 of an actor call that got no answer. Past the timeout the call may still be
/// handled (a change committed after the caller stopped waiting: a PATCH whose adapter was
/// slow to restart, say), and an actor that failed while handling it may have committed it,
/// so the client is told to read back before sending it again; only a call that never
/// reached the actor surely changed nothing.
pub fn unanswered<T>(e: ractor::RactorErr<T>) -> ApiError {
    const READ_BACK: &str = "what this request asked for may still be done: read it back before sending it again";
    ApiError::Unavailable(match e {
        ractor::RactorErr::Messaging(ractor::MessagingErr::SendErr(_)) => {
            "the actor that handles this is not running: nothing was done; retry shortly".into()
        }
        ractor::RactorErr::Timeout => format!("no answer within 30 s; {READ_BACK}"),
        e => format!("no answer ({e}); {READ_BACK}"),
    })
}

/// Calls an actor and maps mailbox/timeout failures to 503 (see [`unanswered`]).
#[macro_export]
macro_rules! ask {
    ($actor:expr, $msg:expr) => {{
        match ractor::call_t!($actor, $msg, 30_000) {
            Ok(r) => r,
            Err(e) => Err($crate::http::unanswered(e)),
        }
    }};
    ($actor:expr, $msg:expr, $($args:expr),*) => {{
        match ractor::call_t!($actor, $msg, 30_000, $($args),*) {
            Ok(r) => r,
            Err(e) => Err($crate::http::unanswered(e)),
        }
    }};
}

#[cfg(test)]
mod tests {
    /// Only a call that never reached its actor surely changed nothing; one past its timeout
    /// may still be handled, so the client is told to read back first.
    #[test]
    fn an_unanswered_call_says_whether_it_may_have_been_done() {
        let said = |e: ractor::RactorErr<u8>| super::unanswered(e).to_string();
        let late = said(ractor::RactorErr::Timeout);
        assert!(late.contains("within 30 s") && late.contains("read it back before sending it again"), "{late}");
        let failed = said(ractor::RactorErr::Messaging(ractor::MessagingErr::ChannelClosed));
        assert!(failed.contains("read it back"), "{failed}");
        let unsent = said(ractor::RactorErr::Messaging(ractor::MessagingErr::SendErr(7)));
        assert!(unsent.contains("nothing was done") && !unsent.contains("read it back"), "{unsent}");
    }
}
