//! The `hookline` binary: CLI, logging, config; everything else is in `hookline::app`.

use std::path::PathBuf;

use anyhow::Context;
use clap::{Parser, Subcommand};
use hookline::config::{Config, EnvOverrides};

/// glibc's malloc spends a large share of the CPU under load (sled copies tree nodes on
/// every write, serde and hyper allocate per request); mimalloc halves that.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(
    name = "hookline",
    version,
    about = "Webhooks in, notifications out: a single-binary daemon",
    after_help = hookline::config::environment_help()
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the daemon.
    #[command(after_help = hookline::config::environment_help())]
    Serve {
        /// Path of the TOML config file.
        #[arg(long, short, default_value = "config.toml")]
        config: PathBuf,
    },
    /// Load and validate the config file, print the effective settings, and exit.
    #[command(after_help = hookline::config::environment_help())]
    CheckConfig {
        /// Path of the TOML config file.
        #[arg(long, short, default_value = "config.toml")]
        config: PathBuf,
    },
}

fn init_tracing() {
    use hookline::config::{LOG_FORMAT_VAR, LOG_VAR};
    use tracing_subscriber::EnvFilter;
    // A setting that cannot be used is said once logging is up, not silently dropped.
    let mut unusable = Vec::new();
    let filter = match std::env::var(LOG_VAR) {
        Ok(v) if !v.trim().is_empty() => EnvFilter::try_new(&v).unwrap_or_else(|e| {
            unusable.push(format!("{LOG_VAR}={v:?} is not a log filter ({e}); logging at info"));
            EnvFilter::new("info")
        }),
        _ => EnvFilter::new("info"),
    };
    let given = std::env::var(LOG_FORMAT_VAR).unwrap_or_default();
    let format = given.trim().to_ascii_lowercase();
    if !matches!(format.as_str(), "" | "json" | "text") {
        unusable.push(format!("{LOG_FORMAT_VAR}={given:?} is neither json nor text; logging as text"));
    }
    // Colours for a terminal only: a log file or journal gets plain text.
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).with_ansi(ansi);
    if format == "json" {
        // Without spans: an actor's span has a `name` field beside the span's own name, and
        // a JSON object with a key twice is refused or misread by log pipelines. Every event
        // names what it is about in its own fields (bucket_id, webhook_id, …).
        builder.json().with_current_span(false).with_span_list(false).init();
    } else {
        builder.init();
    }
    for message in unusable {
        tracing::warn!("{message}");
    }
}

fn main() -> std::process::ExitCode {
    match run() {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            // The error and its causes as anyhow prints them, but never a backtrace:
            // `RUST_BACKTRACE` set for some other program must not bury a configuration
            // error under frames of the daemon's start-up.
            eprintln!("Error: {e}");
            let causes: Vec<String> = e.chain().skip(1).map(ToString::to_string).collect();
            match causes.as_slice() {
                [] => {}
                [one] => eprintln!("\nCaused by:\n    {one}"),
                many => {
                    eprintln!("\nCaused by:");
                    for (i, cause) in many.iter().enumerate() {
                        eprintln!("    {i}: {cause}");
                    }
                }
            }
            std::process::ExitCode::FAILURE
        }
    }
}

fn run() -> anyhow::Result<()> {
    let cli = Cli::parse();
    init_tracing();
    // Before the daemon allocates much; after logging is up, which says if it could not.
    hookline::app::disable_transparent_huge_pages();
    match cli.command {
        Command::CheckConfig { config } => {
            let mut cfg = Config::load(&config, &EnvOverrides::from_env())?;
            // `serve` would refuse it: say so now.
            if let Some(k) = std::env::var_os(hookline::config::MASTER_KEY_VAR) {
                hookline::crypto::SecretBox::env_key(&k.to_string_lossy())?;
            }
            cfg.auth.api_keys = cfg.auth.api_keys.iter().map(|_| "<redacted>".to_string()).collect();
            // The effective cap: one above the total is the total.
            cfg.server.max_connections_per_ip = cfg.server.max_connections_per_ip.min(cfg.server.max_connections);
            if let Some(e) = cfg.delivery.email.as_mut() {
                e.password = e.password.as_ref().map(|_| "<redacted>".to_string());
                // The effective settings: the TLS mode's usual port when none is given.
                e.smtp_port = Some(e.port());
            }
            if let Some(s) = cfg.delivery.sms.as_mut() {
                s.auth_token = s.auth_token.as_ref().map(|_| "<redacted>".to_string());
            }
            println!("{}", toml::to_string_pretty(&cfg)?);
            Ok(())
        }
        Command::Serve { config } => {
            let cfg = Config::load(&config, &EnvOverrides::from_env())?;
            let runtime = tokio::runtime::Runtime::new().context("start the tokio runtime")?;
            let result = runtime.block_on(async move {
                // First: SIGHUP is ignored from here on, a long start (a log replay) included.
                let (shutdown, hurry) = shutdown_signals();
                let addr = cfg.listen_addr()?;
                let listener = match hookline::http::listen::bind(addr) {
                    Ok(listener) => listener,
                    Err(e) if e.kind() == std::io::ErrorKind::AddrInUse => {
                        return Err(anyhow::Error::new(e).context(format!(
                            "bind {addr}: another process (another hookline?) listens there; set server.listen in \
                             the config file, or HOOKLINE_LISTEN, to another address"
                        )))
                    }
                    Err(e) => return Err(anyhow::Error::new(e).context(format!("bind {addr}"))),
                };
                hookline::app::run_with_hurry(cfg, listener, shutdown, hurry).await
            });
            // Everything that matters is done (the store is flushed): a blocking task still
            // running (a DNS lookup of a stuck delivery, say) must not hold the exit, which
            // a plain drop of the runtime would wait for.
            runtime.shutdown_timeout(std::time::Duration::from_millis(200));
            result
        }
    }
}

/// A second stop signal sooner than this after the first is taken as the same one.
#[cfg(unix)]
const DOUBLE_SIGNAL: std::time::Duration = std::time::Duration::from_secs(1);

/// The shutdown signals: the first future resolves on SIGINT or SIGTERM (a graceful stop),
/// the second on the next one after it (the stop cut short: an operator pressing Ctrl-C
/// again, or a service manager that does not want to wait out `shutdown_timeout_seconds`
/// for a client that holds a request open). SIGHUP, whose default is to end the process
/// on the spot (a closed terminal, an `ExecReload=kill -HUP`), is logged and ignored: there
/// is no reload, and the configuration is read at start only. Its handler is installed when
/// this is called, before the start (a log replay may take a while), so it is ignored then
/// too (and logged once the daemon serves). SIGINT and SIGTERM get theirs when the first
/// future is first polled, once the daemon serves: until then their default ends a start on
/// the spot, which is safe (the log replays at the next start), where a handler would make
/// a stop wait for the whole start.
#[cfg(unix)]
fn shutdown_signals() -> (impl std::future::Future<Output = ()>, impl std::future::Future<Output = ()>) {
    use tokio::signal::unix::{signal, SignalKind};
    fn listen(kind: SignalKind, name: &str) -> Option<tokio::signal::unix::Signal> {
        signal(kind)
            .inspect_err(|e| tracing::warn!(error = %e, "could not handle {name}: it keeps its default action"))
            .ok()
    }
    /// Until SIGINT or SIGTERM (forever if neither could be handled).
    async fn next_stop(
        interrupt: &mut Option<tokio::signal::unix::Signal>,
        terminate: &mut Option<tokio::signal::unix::Signal>,
        hangup: &mut Option<tokio::signal::unix::Signal>,
    ) {
        loop {
            tokio::select! {
                Some(()) = async { interrupt.as_mut()?.recv().await } => return,
                Some(()) = async { terminate.as_mut()?.recv().await } => return,
                Some(()) = async { hangup.as_mut()?.recv().await } => {
                    tracing::warn!("SIGHUP ignored: hookline has no reload; restart it to apply a changed config");
                }
                else => std::future::pending::<()>().await,
            }
        }
    }
    let mut hangup = listen(SignalKind::hangup(), "SIGHUP");
    let hurry = std::sync::Arc::new(tokio::sync::Notify::new());
    let first = {
        let hurry = hurry.clone();
        async move {
            let mut interrupt = listen(SignalKind::interrupt(), "SIGINT");
            let mut terminate = listen(SignalKind::terminate(), "SIGTERM");
            next_stop(&mut interrupt, &mut terminate, &mut hangup).await;
            tracing::info!("shutdown signal received (another one, a second or more later, cuts the shutdown short)");
            let first_at = std::time::Instant::now();
            tokio::spawn(async move {
                loop {
                    next_stop(&mut interrupt, &mut terminate, &mut hangup).await;
                    // The same stop twice (a wrapper that forwards a terminal's Ctrl-C to its
                    // process group, which got it too) is not an operator asking twice.
                    if first_at.elapsed() >= DOUBLE_SIGNAL {
                        break;
                    }
                    tracing::info!("a second shutdown signal within a second of the first: taken as the same one");
                }
                // A permit if no one waits yet: the shutdown sees it when it looks.
                hurry.notify_one();
            });
        }
    };
    (first, async move { hurry.notified().await })
}

#[cfg(not(unix))]
fn shutdown_signals() -> (impl std::future::Future<Output = ()>, impl std::future::Future<Output = ()>) {
    let first = async {
        let _ = tokio::signal::ctrl_c().await;
        tracing::info!("shutdown signal received");
    };
    (first, std::future::pending())
}
