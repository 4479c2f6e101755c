//! Wiring: store → secrets → API keys → supervision tree → HTTP, and the orderly shutdown.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use ractor::{Actor, ActorRef};

use crate::auth::ApiKeys;
use crate::config::Config;
use crate::crypto::SecretBox;
use crate::delivery::DeliveryMsg;
use crate::http::HttpState;
use crate::state::{Names, Shared};
use crate::store::{LogLoss, Store};
use crate::supervisor::Supervisor;

/// Turns transparent huge pages off for this process; the binary calls it once logging is
/// up, before it starts the daemon (and the benches, which run the daemon in their own
/// process, call it first thing).
///
/// Why: the allocator asks the kernel for huge pages (mimalloc's default), and a fault on one
/// zeroes 2 MiB at once. The daemon's memory grows as sled's cache fills and the log's
/// records come and go, so under load those faults cost about 5% of all CPU
/// (`clear_page_erms` in the profiles; with 4 KiB pages, 0.03%), and time_window ingest's p99
/// latency was 8.5 ms against about 5 without them (benches/HISTORY.md, 2026-12-05 evening).
/// Redis turns them off for itself the same way, for its latency. Best effort: a kernel
/// without the setting (before 3.15) keeps its huge pages, with a debug line.
pub fn disable_transparent_huge_pages() {
    #[cfg(target_os = "linux")]
    if let Err(e) = rustix::thread::disable_transparent_huge_pages(true) {
        tracing::debug!(error = %e, "could not turn transparent huge pages off for this process");
    }
}

/// Runs hookline on `listener` until `shutdown` resolves (or the supervision tree gives up).
///
/// Shutdown order: stop accepting and finish in-flight requests, stop the actors, flush the
/// store. Returns an error if start-up failed or the supervision tree stopped on its own.
pub async fn run(
    config: Config,
    listener: tokio::net::TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    run_with_hurry(config, listener, shutdown, std::future::pending()).await
}

/// As [`run`]; once `shutdown` has resolved, `hurry` resolving (a second signal) cuts the
/// wait for open requests and deliveries in flight short: the actors stop and the store is
/// flushed at once. Nothing acknowledged is lost; a delivery cut off is sent again after the
/// restart (with its `webhook-id`), a request cut off gets no answer.
pub async fn run_with_hurry(
    config: Config,
    listener: tokio::net::TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
    hurry: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    // reqwest and lettre share ring's rustls provider; installing twice is harmless.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let metrics = crate::metrics::install();
    crate::metrics::set_ingest_per_bucket(config.metrics.ingest_per_bucket);

    // Checked before the disk is touched: a mistyped key must not leave a new store behind.
    let env_key = match std::env::var(crate::config::MASTER_KEY_VAR) {
        Ok(k) => {
            SecretBox::env_key(&k)?;
            Some(k)
        }
        Err(std::env::VarError::NotPresent) => None,
        Err(std::env::VarError::NotUnicode(_)) => {
            anyhow::bail!("HOOKLINE_MASTER_KEY is not valid UTF-8 (base64 expected)")
        }
    };
    let data_dir = config.storage.path.clone();
    // sled's files: a directory without them holds no store yet (whatever else is in it).
    let fresh = !data_dir.join("db").exists() && !data_dir.join("conf").exists();
    create_dir_durably(&data_dir)
        .with_context(|| format!("create data directory {}", crate::util::path_shown(&data_dir)))?;
    // The absolute directory in the log: a relative `storage.path` is taken from the working
    // directory, and a daemon started elsewhere would otherwise quietly use a new, empty store.
    let shown_dir = std::fs::canonicalize(&data_dir).unwrap_or_else(|_| data_dir.clone());
    let cache = config.storage.cache_capacity_mb << 20;
    let store = Store::open_sled_with_cache(&data_dir, cache)
        .with_context(|| format!("open store in {}", crate::util::path_shown(&data_dir)))?;
    if fresh {
        tracing::info!(data_dir = %shown_dir.display(), "no store in the data directory: created a new, empty one");
    }
    if env_key.is_none() && !data_dir.join(crate::crypto::MASTER_KEY_FILE).exists() && holds_sealed_values(&store)? {
        // A new key would make every stored credential unreadable, found out only per event.
        anyhow::bail!(
            "{} is missing, but the store holds credentials encrypted with it (connections, webhook \
             channels or adapter credentials): restore it from your backup (or set HOOKLINE_MASTER_KEY); \
             if it is lost, write a new key there (see the README) and recreate what can no longer be read",
            data_dir.join(crate::crypto::MASTER_KEY_FILE).display()
        );
    }
    let secrets = SecretBox::load(env_key.as_deref(), &data_dir)?;
    warn_if_exposed(&shown_dir, "the data directory (payloads, receiver URLs, sealed credentials)");
    if env_key.is_none() {
        warn_if_exposed(&data_dir.join(crate::crypto::MASTER_KEY_FILE), "the master key");
    }
    let (keys, generated) = ApiKeys::init(&config.auth.api_keys, &store).await.context("initialise API keys")?;
    if let Some(key) = generated {
        // Printed once, to stdout only: it is never logged and never shown again.
        println!("hookline: no API key configured; generated one (shown only this once): {key}");
    }

    let room = Arc::new(crate::store::Room::new(&data_dir, config.storage.min_free_mb << 20));
    if let Err(e) = room.sample() {
        tracing::warn!(error = %e, "measure the data directory's free space");
    }
    let shared = Shared {
        config: Arc::new(config),
        store: store.clone(),
        room: room.clone(),
        secrets,
        names: Names::new(),
        bus: crate::events::EventBus::new(),
        gates: crate::adapter::verify::Gates::default(),
        shutdown: tokio_util::sync::CancellationToken::new(),
        cut_off: tokio_util::sync::CancellationToken::new(),
        adapter_leases: Default::default(),
        delivery_leases: Default::default(),
    };
    let (supervisor, supervisor_handle) = Actor::spawn(Some(shared.names.supervisor()), Supervisor, shared.clone())
        .await
        .context("start the supervision tree")?;

    let addr = listener.local_addr()?;
    println!("hookline listening on http://{addr}");
    tracing::info!(%addr, data_dir = %shown_dir.display(), version = env!("CARGO_PKG_VERSION"), "hookline started");

    let upkeep = {
        let metrics = metrics.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_secs(1));
            for n in 0u64.. {
                tick.tick().await;
                // Every second: a burst can fill the last of the floor quickly. (A failed
                // measurement keeps the last one; `/metrics` exports the last.)
                let _ = room.sample();
                if n % 5 == 0 {
                    metrics.run_upkeep();
                }
            }
        })
    };

    // The tree stopping by itself (restart budget spent) also ends the server.
    let tree_stopped = Arc::new(tokio::sync::Notify::new());
    // Set when the signal arrives: from then on the open connections have the shutdown
    // timeout to finish (a client that never finishes its request must not keep us up).
    let signalled = Arc::new(tokio::sync::Notify::new());
    let http_shutdown = {
        let (tree_stopped, signalled) = (tree_stopped.clone(), signalled.clone());
        async move {
            tokio::select! {
                _ = shutdown => signalled.notify_one(),
                _ = tree_stopped.notified() => {}
            }
        }
    };
    if shared.config.server.enable_debug_endpoints {
        // They can crash actors and stall ingests (with an API key): said where it is seen.
        tracing::warn!(
            "server.enable_debug_endpoints is on: /v1/debug/* can crash and stall actors; never in production"
        );
    }
    // Development switches: said at every start, so one left on in production is seen.
    let delivery = &shared.config.delivery;
    for (on, key) in [
        (delivery.allow_insecure_http, "delivery.allow_insecure_http"),
        (delivery.allow_private_networks, "delivery.allow_private_networks"),
    ] {
        if on {
            tracing::warn!("{key} is on: for local development only, never in production (see the README)");
        }
    }
    let http_state = HttpState {
        holds: Arc::new(crate::http::IngestHolds::new(shared.config.server.enable_debug_endpoints)),
        shared: shared.clone(),
        keys,
        metrics,
        signature_checks: HttpState::signature_checks(),
        refusals: Arc::default(),
        lifecycle_refusals: Arc::default(),
    };
    let mut server = tokio::spawn(crate::http::serve(http_state, listener, http_shutdown));
    let mut supervisor_handle = supervisor_handle;
    let grace = Duration::from_secs(shared.config.server.shutdown_timeout_seconds);
    let mut quiesced = false;
    let mut store_failed = false;
    // The store's close after its log was deleted (see `store_failure`): a task, so that
    // nothing cuts it short; the last stage awaits it.
    let mut log_lost: Option<LogLostClose> = None;
    // Set when shutting down begins: the stages after the first share what is left of its
    // grace (each gets at least [`LAST_STAGES_MIN`]), so the whole shutdown takes about one
    // grace, not one per stage.
    let mut deadline = None;
    let mut hurry = std::pin::pin!(hurry);
    // Biased: an idle server finishes as soon as the signal stops it, and the signal's branch
    // (which waits for the deliveries in flight) must still be the one taken.
    let failed = tokio::select! {
        biased;
        _ = signalled.notified() => {
            deadline = Some(tokio::time::Instant::now() + grace);
            // One grace for both: the open requests finish while the deliveries in flight do.
            shared.shutdown.cancel();
            let waited = async { tokio::join!(drain_http(&mut server, grace), quiesce_deliveries(&shared, grace)) };
            let hurried = tokio::select! {
                _ = waited => false,
                () = &mut hurry => true,
            };
            if hurried {
                // The sends in flight end now, and are logged as attempts if their workers
                // take their ends within a moment (the actors' stop would drop them).
                shared.cut_off.cancel();
                ask_quiesce(&shared, HURRIED_CUT_OFF_WAIT).await;
                tracing::warn!(
                    "second shutdown signal: open requests are cut off and deliveries in flight stopped (they are \
                     sent again after the restart); flushing the store"
                );
                server.abort();
                // The stages left get their least time only.
                deadline = Some(tokio::time::Instant::now());
            }
            quiesced = true;
            false
        }
        _ = &mut supervisor_handle => {
            deadline = Some(tokio::time::Instant::now() + grace);
            tree_stopped.notify_one();
            drain_http(&mut server, grace).await;
            true
        }
        _ = store_failure(&store, &mut log_lost) => {
            // Nothing can be acknowledged any more, and freeing the disk does not mend a
            // failed store: only a restart does (start-up refuses cleanly until the cause is
            // fixed, and the log replays every acknowledged write). So stop, and let the
            // service manager start us again, as a database does after a failed fsync.
            // (A deleted log directory says its own.)
            if log_lost.is_none() {
                tracing::error!(
                    "the store refuses writes after a failure (see the error above; a full disk?): shutting down, \
                     exit status 1, for the service manager to restart hookline once the cause is fixed; \
                     nothing acknowledged is lost"
                );
            }
            store_failed = true;
            deadline = Some(tokio::time::Instant::now() + grace);
            // Deliveries stop first: an outcome can no longer be recorded, so every send
            // from now on would be sent again after the restart.
            shared.shutdown.cancel();
            tree_stopped.notify_one();
            drain_http(&mut server, grace).await;
            false
        }
        _ = &mut server => false,
    };
    tracing::info!("HTTP server stopped; stopping actors");
    let deadline = *deadline.get_or_insert_with(|| tokio::time::Instant::now() + grace);
    let left = || deadline.saturating_duration_since(tokio::time::Instant::now()).max(LAST_STAGES_MIN);
    if !failed {
        shared.shutdown.cancel();
        // (With a failed store, deliveries in flight could not record their outcomes.)
        if !quiesced && !store_failed {
            quiesce_deliveries(&shared, left()).await;
        }
        let _ = supervisor.stop_and_wait(Some("shutdown".into()), Some(left())).await;
    }
    upkeep.abort();
    if let Some(close) = log_lost {
        // Waited for however long it takes: the deleted log could not replay what a
        // cut-short close leaves.
        let outcome = close.await.unwrap_or_else(|e| Err(format!("the close failed: {e}")));
        std::mem::forget(store);
        match outcome {
            Ok(()) => anyhow::bail!(
                "the write-ahead log directory was deleted while hookline ran; the store kept everything \
                 acknowledged: start hookline again"
            ),
            Err(loss) => anyhow::bail!("the write-ahead log directory was deleted while hookline ran: {loss}"),
        }
    }
    // Writes still queued (delivery outcomes, a stopping actor's last batch) are logged and
    // synced, moved into sled and checkpointed before we exit: the next start replays nothing.
    // Bounded: stopping early is safe, the log is only deleted after sled's flush.
    match tokio::time::timeout(left(), store.close()).await {
        Ok(Ok(())) => tracing::info!("store flushed; bye"),
        Ok(Err(e)) => {
            // sled's own flush on drop would wait forever after an I/O error (a full disk):
            // leave it undropped. The log holds every acknowledged write and replays at start.
            std::mem::forget(store);
            // (After a store failure this close fails too: the failure is the error said below.)
            if !store_failed {
                return Err(
                    anyhow::Error::new(e).context("final store flush (the log is kept and replays at the next start)")
                );
            }
        }
        Err(_) => {
            tracing::warn!(
                "the store did not finish moving its log into sled within the shutdown timeout; \
                 the log is kept and replays at the next start"
            );
            std::mem::forget(store);
        }
    }
    if failed {
        anyhow::bail!("the supervision tree stopped after repeated actor failures; see the log");
    }
    if store_failed {
        anyhow::bail!("the store failed (see the log); restart hookline once the cause is fixed");
    }
    Ok(())
}

/// Resolves once the store has failed for good (a log write, an fsync or sled refused by the
/// disk) or was closed because its log directory was deleted: from then on it refuses every
/// write. That close runs in a task, left in `log_lost` for the last stage to await.
async fn store_failure(store: &Store, log_lost: &mut Option<LogLostClose>) {
    let mut tick = tokio::time::interval(Duration::from_millis(50));
    loop {
        tick.tick().await;
        if store.log_lost() {
            tracing::error!(
                "the write-ahead log directory (or the segment in use) was deleted while hookline ran: closing \
                 the store (moving everything acknowledged into sled and flushing it), then shutting down"
            );
            let store = store.clone();
            *log_lost = Some(tokio::spawn(async move {
                let outcome = store.close_after_losing_log().await;
                match &outcome {
                    Ok(()) => tracing::info!(
                        "store flushed after its log was deleted: nothing acknowledged is lost; start \
                         hookline again"
                    ),
                    Err(e @ LogLoss::NotClosed(_)) => tracing::error!(
                        "after its log was deleted, {e}; the next start refuses while the directory is \
                         missing: restore it from a backup, or create it empty (mkdir -m 700) to accept the loss"
                    ),
                    Err(e @ LogLoss::DataDirGone(_)) => tracing::error!(
                        "after its log was deleted, {e}: everything in it is lost; the next start makes a \
                         new, empty store"
                    ),
                    Err(e @ LogLoss::DirNotMade(_)) => tracing::error!(
                        "after its log was deleted, {e}; create it (mkdir -m 700) as the user hookline \
                         runs as, then start hookline"
                    ),
                }
                outcome.map_err(|e| e.to_string())
            }));
            // The shutdown goes on meanwhile: the actors' last writes are moved into sled
            // with the rest if they come before the close, refused (and retried by their
            // senders) if after.
            return;
        }
        if !store.healthy() {
            return;
        }
    }
}

/// The store's close after its log was deleted (see [`store_failure`]): what was lost, if
/// anything (the task also logs it).
type LogLostClose = tokio::task::JoinHandle<Result<(), String>>;

/// The least time each shutdown stage after the grace gets (stopping the actors, moving the
/// store's log into sled), even when the grace is spent: each usually takes milliseconds, and
/// cutting one short is safe (every acknowledged write is in the log, which replays at start).
const LAST_STAGES_MIN: Duration = Duration::from_secs(2);

/// Lets the deliveries in flight finish (and records their outcomes) for up to `grace`:
/// a deploy does not cut a slow receiver off mid-request. Those still running near its end
/// are cut off ([`Shared::cut_off`](crate::state::Shared::cut_off)) and logged as attempts,
/// and sent again after the restart, with the same `webhook-id`.
async fn quiesce_deliveries(shared: &crate::state::Shared, grace: Duration) {
    let started = std::time::Instant::now();
    // The last part of the grace is kept for the sends still running then, to be cut off and
    // logged as attempts: they would otherwise vanish from the attempt log with the runtime.
    let last = (grace / 4).min(CUT_OFF_WAIT);
    if ask_quiesce(shared, grace.saturating_sub(last)).await {
        tracing::info!(waited_ms = started.elapsed().as_millis() as u64, "deliveries in flight finished");
        return;
    }
    shared.cut_off.cancel();
    if ask_quiesce(shared, last).await {
        tracing::warn!(
            "deliveries were still in flight at the end of the shutdown timeout: those still running were cut off, \
             each logged as an attempt and sent again after the restart"
        );
    } else {
        tracing::warn!("deliveries still in flight after the shutdown timeout; they are sent again after the restart");
    }
}

/// Asks the delivery workers to answer once none has a send in flight; false if they did
/// not within `limit`.
async fn ask_quiesce(shared: &crate::state::Shared, limit: Duration) -> bool {
    let Some(registry) = ActorRef::<DeliveryMsg>::where_is(shared.names.delivery_registry()) else { return true };
    matches!(registry.call(DeliveryMsg::Quiesce, Some(limit)).await, Ok(ractor::rpc::CallResult::Success(())))
}

/// The most of the shutdown's grace kept for cutting off the sends still running (a quarter
/// of it, at most this): the time their workers take to log them.
const CUT_OFF_WAIT: Duration = Duration::from_secs(1);

/// After a second stop signal, how long the sends it cut off have to be logged.
const HURRIED_CUT_OFF_WAIT: Duration = Duration::from_millis(200);

/// Lets open connections finish their requests for up to `grace`, then closes them.
async fn drain_http(server: &mut tokio::task::JoinHandle<()>, grace: Duration) {
    if tokio::time::timeout(grace, &mut *server).await.is_err() {
        tracing::warn!("HTTP connections still open after the shutdown timeout; closing them");
        server.abort();
    }
}

/// Whether any stored record holds a value sealed with the master key.
fn holds_sealed_values(store: &Store) -> anyhow::Result<bool> {
    use crate::store::Keyspace;
    let mut any = false;
    for ks in [Keyspace::CONNECTIONS, Keyspace::WEBHOOKS] {
        store.for_each_key(ks, "", |_| {
            any = true;
            false
        })?;
    }
    store.for_each::<crate::catalog::Bucket>(Keyspace::BUCKETS, "", |_, b| {
        any |= b.source_adapter.as_ref().is_some_and(|a| a.sealed_credentials.is_some());
        !any
    })?;
    Ok(any)
}

/// Warns (as ssh does of a key file) when `path` is open to other users than the daemon's:
/// hookline makes the data directory 0700 and the master key 0600, and one made or changed
/// by hand may have lost that. Not refused: a deployment may put a trusted group in.
fn warn_if_exposed(path: &std::path::Path, what: &str) {
    use std::os::unix::fs::MetadataExt;
    let Ok(meta) = std::fs::metadata(path) else { return };
    let open_to_others = meta.mode() & 0o077;
    let owner = meta.uid();
    let me = rustix::process::geteuid().as_raw();
    if open_to_others != 0 || owner != me {
        // Said as it is: the mode, the owner, or both.
        let problem = match (open_to_others != 0, owner != me) {
            (true, false) => "is open to other users than the daemon's: chmod go-rwx it",
            (false, _) => "is owned by another user than the daemon's: chown it to the daemon's user",
            (true, true) => {
                "is open to other users and owned by another one than the daemon's: chmod go-rwx it and chown it to \
                 the daemon's user"
            }
        };
        tracing::warn!(
            path = %path.display(),
            mode = format!("{:o}", meta.mode() & 0o777),
            owner,
            daemon_uid = me,
            "{what} {problem}"
        );
    }
}

/// `create_dir_all`, and the new directories' entries synced (up to the first one that
/// existed): a first start's writes must not vanish with a directory a power loss forgot.
/// New directories are private (0700): the store holds payloads, metadata and receiver
/// URLs, which other local users have no business reading. An existing one is left as is.
fn create_dir_durably(dir: &std::path::Path) -> std::io::Result<()> {
    use std::os::unix::fs::DirBuilderExt;
    if dir.exists() && !dir.is_dir() {
        return Err(std::io::Error::other("it exists and is not a directory"));
    }
    let mut created = Vec::new();
    let mut d = Some(dir);
    while let Some(p) = d.filter(|p| !p.as_os_str().is_empty() && !p.exists()) {
        created.push(p.to_path_buf());
        d = p.parent();
    }
    std::fs::DirBuilder::new().recursive(true).mode(0o700).create(dir)?;
    for p in &created {
        let parent = p.parent().filter(|q| !q.as_os_str().is_empty()).unwrap_or(std::path::Path::new("."));
        // Best effort: a parent we may create in but not read (a drop directory) cannot be
        // opened to sync; that must not stop a start.
        if let Err(e) = std::fs::File::open(parent).and_then(|f| f.sync_all()) {
            tracing::warn!(dir = %parent.display(), error = %e, "could not sync the data directory's parent");
        }
    }
    Ok(())
}
