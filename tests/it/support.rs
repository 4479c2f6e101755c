//! Test support: the real `hookline` binary on 127.0.0.1 with a temp data dir, an HTTP
//! client, and a poll-until helper. Every integration test talks to the daemon over HTTP.

#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

pub const API_KEY: &str = "test-api-key-0123456789abcdef";

/// Options for starting a daemon.
#[derive(Clone)]
pub struct Options {
    /// Extra TOML appended to the generated config (sections must not repeat the defaults below).
    pub extra_toml: String,
    /// Whether to configure `API_KEY` (false: let the daemon generate one).
    pub with_api_key: bool,
    /// Extra environment variables.
    pub env: Vec<(String, String)>,
    /// Whole `[delivery]` section override.
    pub delivery_toml: Option<String>,
    /// Extra `[server]` keys (TOML lines), e.g. timeouts.
    pub server_toml: String,
    /// Extra `[storage]` keys (TOML lines).
    pub storage_toml: String,
    /// The daemon's largest file, in bytes (`RLIMIT_FSIZE`; `SIGXFSZ` ignored, so a write past
    /// it fails as a full disk would, with an I/O error). Takes effect at the next start.
    pub file_size_limit: Option<u64>,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            extra_toml: String::new(),
            with_api_key: true,
            env: Vec::new(),
            delivery_toml: None,
            server_toml: String::new(),
            storage_toml: String::new(),
            file_size_limit: None,
        }
    }
}

pub struct TestApp {
    pub addr: SocketAddr,
    pub base: String,
    pub api_key: String,
    pub data_dir: PathBuf,
    pub dir: tempfile::TempDir,
    pub client: reqwest::Client,
    /// Lines the daemon printed on stdout (the generated key, the listen line).
    pub stdout_lines: Vec<String>,
    opts: Options,
    child: Option<Child>,
}

pub fn client() -> reqwest::Client {
    let _ = rustls::crypto::ring::default_provider().install_default();
    reqwest::Client::builder().timeout(Duration::from_secs(30)).build().expect("build reqwest client")
}

impl TestApp {
    pub async fn start() -> TestApp {
        Self::start_with(Options::default()).await
    }

    pub async fn start_with(opts: Options) -> TestApp {
        let dir = tempfile::tempdir().expect("tempdir");
        let data_dir = dir.path().join("data");
        let mut app = TestApp {
            addr: "127.0.0.1:0".parse().unwrap(),
            base: String::new(),
            api_key: API_KEY.to_string(),
            data_dir,
            dir,
            client: client(),
            stdout_lines: Vec::new(),
            opts,
            child: None,
        };
        app.write_config();
        app.spawn(None).await;
        app
    }

    fn config_path(&self) -> PathBuf {
        self.dir.path().join("config.toml")
    }

    fn write_config(&self) {
        let keys = if self.opts.with_api_key { format!("[\"{API_KEY}\"]") } else { "[]".into() };
        let delivery = self.opts.delivery_toml.clone().unwrap_or_else(|| {
            "[delivery]\nallow_insecure_http = true\nallow_private_networks = true\nrequest_timeout_seconds = 2\nmax_age_hours = 1\nretry_schedule_seconds = [1, 1, 2]\n".into()
        });
        let mut server = self.opts.server_toml.clone();
        if !server.contains("shutdown_timeout_seconds") {
            server.push_str("\nshutdown_timeout_seconds = 10\n");
        }
        let toml = format!(
            "[server]\nlisten = \"{listen}\"\nenable_debug_endpoints = true\n{server}\n\n[storage]\npath = \"{data}\"\n{storage}\n\n[auth]\napi_keys = {keys}\n\n{delivery}\n{extra}\n",
            listen = "127.0.0.1:0",
            data = self.data_dir.display(),
            storage = self.opts.storage_toml,
            extra = self.opts.extra_toml,
        );
        std::fs::write(self.config_path(), toml).expect("write config");
    }

    /// Starts the binary; `listen` pins the address (a restart keeps the same port so that
    /// URLs handed out stay valid).
    async fn spawn(&mut self, listen: Option<SocketAddr>) {
        // A store this test process just dropped can hold the data dir's lock a moment longer:
        // a daemon that another test spawns at that instant holds a copy of the lock's
        // descriptor until its `exec`. Only that refusal is retried.
        for _ in 0..20 {
            let log_before = self.log().len();
            match self.try_spawn(listen).await {
                Ok(()) => return,
                Err(()) if self.log().get(log_before..).is_some_and(|l| l.contains("hookline.lock is held")) => {
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                Err(()) => break,
            }
        }
        panic!("hookline did not start; log:\n{}", self.log());
    }

    async fn try_spawn(&mut self, listen: Option<SocketAddr>) -> Result<(), ()> {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_hookline"));
        cmd.arg("serve").arg("--config").arg(self.config_path());
        if let Some(l) = listen {
            cmd.env("HOOKLINE_LISTEN", l.to_string());
        }
        cmd.env("RUST_LOG", std::env::var("TEST_RUST_LOG").unwrap_or_else(|_| "info".into()));
        cmd.env_remove("HOOKLINE_API_KEYS").env_remove("HOOKLINE_DATA_DIR").env_remove("HOOKLINE_MASTER_KEY");
        for (k, v) in &self.opts.env {
            cmd.env(k, v);
        }
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.path().join("daemon.log"))
            .expect("open daemon log");
        cmd.stdout(Stdio::piped()).stderr(Stdio::from(log));
        if let Some(limit) = self.opts.file_size_limit {
            use std::os::unix::process::CommandExt;
            // SAFETY: between fork and exec only async-signal-safe calls: signal(2) and
            // setrlimit(2) (rlimit's wrapper makes no allocation).
            unsafe {
                cmd.pre_exec(move || {
                    libc::signal(libc::SIGXFSZ, libc::SIG_IGN);
                    rlimit::setrlimit(rlimit::Resource::FSIZE, limit, limit)
                });
            }
        }
        let mut child = cmd.spawn().expect("spawn hookline");
        let stdout = child.stdout.take().expect("stdout");
        let (tx, rx) = std::sync::mpsc::channel::<String>();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let remaining = deadline.saturating_duration_since(Instant::now());
            match rx.recv_timeout(remaining) {
                Ok(line) => {
                    let listening =
                        line.strip_prefix("hookline listening on http://").map(|a| a.trim().parse::<SocketAddr>());
                    self.stdout_lines.push(line);
                    if let Some(Ok(addr)) = listening {
                        self.addr = addr;
                        self.base = format!("http://{addr}");
                        break;
                    }
                }
                Err(_) => {
                    let _ = child.kill();
                    let _ = child.wait();
                    return Err(());
                }
            }
        }
        // Keep draining stdout so the daemon never blocks on a full pipe.
        std::thread::spawn(move || while rx.recv().is_ok() {});
        self.child = Some(child);
        self.wait_ready().await;
        Ok(())
    }

    async fn wait_ready(&self) {
        let ok = eventually(Duration::from_secs(30), || async {
            matches!(self.client.get(self.url("/readyz")).send().await, Ok(r) if r.status() == 200)
        })
        .await;
        assert!(ok, "daemon never became ready; log:\n{}", self.log());
    }

    /// The daemon's log (stderr) so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("daemon.log")).unwrap_or_default()
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{}", self.base, path)
    }

    /// Sends the daemon a signal (`kill -<name>`) and goes on.
    pub fn signal(&self, name: &str) {
        let pid = self.child.as_ref().map(|c| c.id()).expect("the daemon is running");
        let sent = Command::new("kill").arg(format!("-{name}")).arg(pid.to_string()).status();
        assert!(sent.is_ok_and(|s| s.success()), "kill -{name} {pid}");
    }

    /// SIGTERM, wait for a clean exit; returns the exit status code.
    pub fn stop(&mut self) -> Option<i32> {
        let mut child = self.child.take()?;
        let _ = Command::new("kill").arg("-TERM").arg(child.id().to_string()).status();
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Ok(Some(status)) = child.try_wait() {
                return status.code();
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                panic!("hookline did not stop on SIGTERM; log:\n{}", self.log());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// The CPU time (user + system) the daemon has used so far, from `/proc` (Linux).
    pub fn cpu_seconds(&self) -> f64 {
        let pid = self.child.as_ref().map(|c| c.id()).expect("the daemon is running");
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).expect("/proc/<pid>/stat");
        // Fields after the command name (which may hold spaces, so split after its `)`):
        // utime and stime are the 14th and 15th fields, in clock ticks.
        let rest = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or_default();
        let fields: Vec<&str> = rest.split_whitespace().collect();
        let ticks: f64 = fields[11].parse::<f64>().unwrap() + fields[12].parse::<f64>().unwrap();
        let per_second = Command::new("getconf").arg("CLK_TCK").output().ok();
        let hz = per_second.and_then(|o| String::from_utf8(o.stdout).ok()?.trim().parse::<f64>().ok()).unwrap_or(100.0);
        ticks / hz
    }

    /// SIGKILL: no chance to flush anything.
    pub fn kill9(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Graceful restart on the same data dir and port.
    pub async fn restart(&mut self) {
        self.stop();
        let addr = self.addr;
        self.spawn(Some(addr)).await;
    }

    /// Replaces the extra `[storage]` keys of the config (takes effect at the next start).
    pub fn set_storage_toml(&mut self, toml: String) {
        self.opts.storage_toml = toml;
        self.write_config();
    }

    /// Replaces the `[delivery]` section of the config (takes effect at the next start).
    pub fn set_delivery_toml(&mut self, toml: String) {
        self.opts.delivery_toml = Some(toml);
        self.write_config();
    }

    /// Sets an environment variable of the daemon (takes effect at the next start), e.g.
    /// another `HOOKLINE_MASTER_KEY`.
    pub fn set_env(&mut self, key: &str, value: &str) {
        self.opts.env.retain(|(k, _)| k != key);
        self.opts.env.push((key.to_string(), value.to_string()));
    }

    /// Whether the config names `API_KEY` (takes effect at the next start).
    pub fn set_configured_api_key(&mut self, on: bool) {
        self.opts.with_api_key = on;
        self.write_config();
    }

    /// Starts again on the same data dir and port after [`TestApp::stop`] (e.g. once the test
    /// has changed the data dir while no daemon held it).
    pub async fn start_again(&mut self) {
        let addr = self.addr;
        self.spawn(Some(addr)).await;
    }

    /// The sled tree of a stopped daemon's data dir, with its write-ahead log replayed into
    /// it, for tests that edit the data as an older binary left it.
    pub async fn stopped_sled(&self) -> hookline::store::SledBackend {
        assert!(self.child.is_none(), "stop the daemon first");
        // Opening the store replays the log into sled; dropping it lets go of sled a moment later.
        // Both opens retry: the lock of a store or backend this test just dropped can outlive it
        // briefly (the store's threads release it a moment after the drop, and a daemon another
        // test spawns at that instant holds a copy of the lock's descriptor until its `exec`).
        let mut store = None;
        for _ in 0..200 {
            match hookline::store::Store::open_sled(&self.data_dir) {
                Ok(s) => {
                    store = Some(s);
                    break;
                }
                Err(_) => tokio::time::sleep(Duration::from_millis(10)).await,
            }
        }
        drop(store.unwrap_or_else(|| hookline::store::Store::open_sled(&self.data_dir).expect("open the store")));
        for _ in 0..200 {
            match hookline::store::SledBackend::open(&self.data_dir) {
                Ok(b) => return b,
                Err(_) => tokio::time::sleep(Duration::from_millis(10)).await, // still held
            }
        }
        panic!("sled was not released by the store");
    }

    /// Crash (SIGKILL) and start again on the same data dir and port.
    pub async fn crash_restart(&mut self) {
        self.kill9();
        let addr = self.addr;
        self.spawn(Some(addr)).await;
    }

    /// Waits up to `timeout` for the daemon to exit by itself; its exit code (`None` while
    /// it still runs, or when a signal ended it).
    pub async fn wait_exit(&mut self, timeout: Duration) -> Option<i32> {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if let Some(status) = self.child.as_mut().and_then(|c| c.try_wait().ok().flatten()) {
                self.child = None;
                return status.code();
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        None
    }

    /// Sets [`Options::file_size_limit`] for the next start.
    pub fn set_file_size_limit(&mut self, limit: Option<u64>) {
        self.opts.file_size_limit = limit;
    }

    pub fn is_running(&mut self) -> bool {
        match self.child.as_mut() {
            Some(c) => c.try_wait().ok().flatten().is_none(),
            None => false,
        }
    }

    /// Sends a request with the API key; returns status and JSON body (`Null` when empty or
    /// not JSON).
    pub async fn call(&self, method: reqwest::Method, path: &str, body: Option<Value>) -> (u16, Value) {
        self.call_as(method, path, body, Some(&self.api_key), None).await
    }

    pub async fn call_as(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<Value>,
        key: Option<&str>,
        namespace: Option<&str>,
    ) -> (u16, Value) {
        let mut rb = self.client.request(method, self.url(path));
        if let Some(k) = key {
            rb = rb.bearer_auth(k);
        }
        if let Some(ns) = namespace {
            rb = rb.header("X-Namespace", ns);
        }
        if let Some(b) = body {
            rb = rb.json(&b);
        }
        let resp = rb.send().await.unwrap_or_else(|e| panic!("request: {e:?}"));
        let status = resp.status().as_u16();
        let text = resp.text().await.unwrap_or_default();
        (status, serde_json::from_str(&text).unwrap_or(Value::Null))
    }

    pub async fn get(&self, path: &str) -> (u16, Value) {
        self.call(reqwest::Method::GET, path, None).await
    }

    pub async fn post(&self, path: &str, body: Value) -> (u16, Value) {
        self.call(reqwest::Method::POST, path, Some(body)).await
    }

    pub async fn patch(&self, path: &str, body: Value) -> (u16, Value) {
        self.call(reqwest::Method::PATCH, path, Some(body)).await
    }

    pub async fn delete(&self, path: &str) -> (u16, Value) {
        self.call(reqwest::Method::DELETE, path, None).await
    }

    /// Raw body POST with custom headers (for ingest).
    pub async fn post_raw(&self, path: &str, body: impl Into<reqwest::Body>, headers: &[(&str, &str)]) -> (u16, Value) {
        let mut rb = self.client.post(self.url(path)).body(body);
        for (k, v) in headers {
            rb = rb.header(*k, *v);
        }
        let resp = rb.send().await.unwrap_or_else(|e| panic!("request: {e:?}"));
        let status = resp.status().as_u16();
        let text = resp.text().await.unwrap_or_default();
        (status, serde_json::from_str(&text).unwrap_or(Value::Null))
    }

    /// The `/metrics` text.
    pub async fn metrics(&self) -> String {
        self.client.get(self.url("/metrics")).send().await.expect("metrics").text().await.unwrap_or_default()
    }

    /// Creates a bucket with the given schema properties; returns its ID.
    pub async fn create_bucket(&self, name: &str, properties: Value) -> String {
        let (s, b) = self
            .post("/v1/buckets", serde_json::json!({"bucket_name": name, "bucket_schema": {"properties": properties}}))
            .await;
        assert_eq!(s, 201, "create bucket: {b}");
        b["bucket_id"].as_str().expect("bucket_id").to_string()
    }
}

impl Drop for TestApp {
    fn drop(&mut self) {
        self.kill9();
        if std::thread::panicking() {
            eprintln!("---- daemon log ----\n{}", self.log());
        }
    }
}

/// Polls `f` until it returns true or `timeout` passes. Returns whether it succeeded.
pub async fn eventually<F, Fut>(timeout: Duration, mut f: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if f().await {
            return true;
        }
        if Instant::now() > deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

/// Reads a counter/gauge value from Prometheus text: the sum of all series of `name` whose
/// labels contain every `label="value"` pair given.
pub fn metric_value(text: &str, name: &str, labels: &[(&str, &str)]) -> f64 {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter(|l| l.starts_with(name) && (l[name.len()..].starts_with('{') || l[name.len()..].starts_with(' ')))
        .filter(|l| labels.iter().all(|(k, v)| l.contains(&format!("{k}=\"{v}\""))))
        .filter_map(|l| l.rsplit(' ').next().and_then(|v| v.parse::<f64>().ok()))
        .sum()
}

/// Polls `/metrics` until the series sum of `name` (filtered by `labels`) reaches `min`.
/// Counters move when the work is acknowledged internally, which may be a moment after the
/// effect is visible through the API.
pub async fn metric_reaches(app: &TestApp, name: &str, labels: &[(&str, &str)], min: f64) -> bool {
    eventually(Duration::from_secs(10), || async { metric_value(&app.metrics().await, name, labels) >= min }).await
}

/// Every file under `dir` (recursively) with its bytes, for "no secret on disk" checks. While
/// a daemon runs a file may vanish between the listing and the read (a log spare renamed, a
/// checkpointed log segment deleted): such a file is skipped.
pub fn data_files(dir: &std::path::Path) -> Vec<(PathBuf, Vec<u8>)> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let p = e.path();
        if p.is_dir() {
            out.extend(data_files(&p));
        } else if let Ok(bytes) = std::fs::read(&p) {
            out.push((p, bytes));
        }
    }
    out
}

pub fn contains_bytes(hay: &[u8], needle: &[u8]) -> bool {
    hay.windows(needle.len()).any(|w| w == needle)
}

/// Asserts that none of `leaks` is in plain text in the daemon's data files, once the last
/// outcome's write has had a moment to reach the log.
pub async fn assert_not_in_data_files(app: &TestApp, leaks: &[&str]) {
    app.get("/healthz").await;
    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    for (f, bytes) in data_files(&app.data_dir) {
        for leak in leaks {
            assert!(!contains_bytes(&bytes, leak.as_bytes()), "{leak} in plain text in {}", f.display());
        }
    }
}

/// The entries of keyspace `ks` whose key (after `{ks}\0`) starts with `within`, in key
/// order, from a stopped daemon's store (see [`TestApp::stopped_sled`]): (key without the
/// keyspace, raw value).
pub fn stored_entries(backend: &hookline::store::SledBackend, ks: &str, within: &str) -> Vec<(String, Vec<u8>)> {
    use hookline::store::Backend;
    let prefix = format!("{ks}\0{within}");
    let mut found = Vec::new();
    backend
        .scan_from(prefix.as_bytes(), prefix.as_bytes(), &mut |k, v| {
            found.push((String::from_utf8_lossy(&k[ks.len() + 1..]).into_owned(), v.to_vec()));
            Ok(true)
        })
        .expect("scan the store");
    found
}

/// Stops the daemon cleanly (everything it submitted is on disk, and it sends nothing more)
/// and opens its store: what a "nothing else happened" check reads, rather than waiting.
pub async fn stop_and_open(app: &mut TestApp) -> hookline::store::SledBackend {
    assert_eq!(app.stop(), Some(0), "a clean stop; log:\n{}", app.log());
    app.stopped_sled().await
}

/// Every recorded event of `event_type` in a stopped daemon's store: those still in the
/// outbox and those fanned out (kept under `evt/` for their deliveries).
pub fn stored_events(backend: &hookline::store::SledBackend, event_type: &str) -> Vec<Value> {
    ["outbox", "evt"]
        .into_iter()
        .flat_map(|ks| stored_entries(backend, ks, ""))
        .map(|(_, v)| serde_json::from_slice::<Value>(&v).expect("an event record"))
        .filter(|e| e["event_type"] == event_type)
        .collect()
}
