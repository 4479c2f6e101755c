//! A fake webhook receiver on 127.0.0.1 for the outbound tests: records every request
//! (headers + body) and answers with a scripted status, optionally after a delay.

#![allow(dead_code)]

use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use warp::{Filter, Reply};

#[derive(Debug, Clone)]
pub struct Captured {
    /// When the request arrived.
    pub at: std::time::Instant,
    pub path: String,
    pub headers: HashMap<String, String>,
    pub body: Vec<u8>,
}

impl Captured {
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).unwrap_or(serde_json::Value::Null)
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).map(String::as_str)
    }
}

#[derive(Default)]
struct Script {
    /// Statuses to answer first, in order; then `default`.
    next: VecDeque<(u16, Duration)>,
    default: u16,
    captured: Vec<Captured>,
    /// Sent as `Retry-After` (seconds) with every 429.
    retry_after: Option<u64>,
}

#[derive(Clone)]
pub struct Receiver {
    pub addr: SocketAddr,
    script: Arc<Mutex<Script>>,
}

impl Receiver {
    /// Starts a receiver answering `default` to everything.
    pub async fn start(default: u16) -> Receiver {
        let script = Arc::new(Mutex::new(Script { default, ..Default::default() }));
        let s = script.clone();
        let filter = warp::path::full().and(warp::header::headers_cloned()).and(warp::body::bytes()).then(
            move |path: warp::path::FullPath, headers: warp::http::HeaderMap, body: bytes::Bytes| {
                let s = s.clone();
                async move {
                    let (status, delay, retry_after) = {
                        let mut g = s.lock().unwrap();
                        // A repeated header shows as one, its values joined by ", " (as HTTP reads it).
                        let mut h: HashMap<String, String> = HashMap::new();
                        for (k, v) in &headers {
                            let v = v.to_str().unwrap_or("");
                            h.entry(k.as_str().to_string())
                                .and_modify(|e| {
                                    e.push_str(", ");
                                    e.push_str(v);
                                })
                                .or_insert_with(|| v.to_string());
                        }
                        g.captured.push(Captured {
                            at: std::time::Instant::now(),
                            path: path.as_str().to_string(),
                            headers: h,
                            body: body.to_vec(),
                        });
                        let (status, delay) = g.next.pop_front().unwrap_or((g.default, Duration::ZERO));
                        (status, delay, g.retry_after)
                    };
                    if !delay.is_zero() {
                        tokio::time::sleep(delay).await;
                    }
                    let code = warp::http::StatusCode::from_u16(status).unwrap();
                    // A failure echoes the path, as a proxy's or a framework's error page does.
                    let text = if code.is_success() {
                        "receiver says hi".to_string()
                    } else {
                        format!("receiver says no to {}", path.as_str())
                    };
                    let reply = warp::reply::with_status(text, code);
                    match retry_after.filter(|_| status == 429) {
                        Some(secs) => warp::reply::with_header(reply, "retry-after", secs.to_string()).into_response(),
                        None => reply.into_response(),
                    }
                }
            },
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(warp::serve(filter).incoming(listener).run());
        Receiver { addr, script }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.addr, path)
    }

    /// Answers the next requests with these statuses (and delays) before the default.
    pub fn then(&self, status: u16, delay: Duration) {
        self.script.lock().unwrap().next.push_back((status, delay));
    }

    /// Sends `Retry-After: secs` with every 429 from now on.
    pub fn set_retry_after(&self, secs: u64) {
        self.script.lock().unwrap().retry_after = Some(secs);
    }

    pub fn set_default(&self, status: u16) {
        self.script.lock().unwrap().default = status;
    }

    pub fn captured(&self) -> Vec<Captured> {
        self.script.lock().unwrap().captured.clone()
    }

    pub fn count(&self) -> usize {
        self.script.lock().unwrap().captured.len()
    }
}
