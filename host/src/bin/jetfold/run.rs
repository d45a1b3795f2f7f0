use super::*;

#[derive(clap::Args)]
pub(crate) struct RunArgs {
    /// The daemon's configuration file.
    #[arg(long, short, value_name = "FILE", default_value = "jetfold.toml")]
    pub(crate) config: PathBuf,
    /// Log lines as JSON objects instead of text.
    #[arg(long, value_enum, default_value_t = LogFormat::Text)]
    pub(crate) log_format: LogFormat,
}

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
pub(crate) enum LogFormat {
    /// Human-readable.
    Text,
    /// One JSON object per line.
    Json,
}

pub(crate) fn run_daemon(args: &RunArgs) -> anyhow::Result<ExitCode> {
    let runtime = tokio::runtime::Runtime::new()?;
    // First of all: a SIGTERM while the config loads and plugins start is taken as a stop once
    // they have (the default action would kill the process on the spot).
    let signals = {
        let _entered = runtime.enter();
        StopSignals::install()
    };
    let config = jetfold_host::config::Config::load(&args.config)?;
    let config_file = Some(args.config.clone());
    let drain_timeout = config.drain_timeout();
    let outcome = runtime.block_on(async {
        let daemon = jetfold_host::daemon::Daemon::start(config).await?;
        let shutdown = shutdown_signal(signals, drain_timeout);
        jetfold_host::daemon::supervise(daemon, config_file, shutdown).await
    });
    // Threads a drain left behind end with the process; the runtime does not wait for them.
    runtime.shutdown_background();
    match outcome {
        Ok(()) => Ok(ExitCode::SUCCESS),
        Err(e) => match e.downcast_ref::<jetfold_host::daemon::DrainCutShort>() {
            Some(cut) => {
                tracing::warn!("{cut}");
                Ok(ExitCode::from(EXIT_DRAIN_CUT_SHORT))
            }
            None => Err(e),
        },
    }
}

/// SIGTERM and SIGINT, caught from the moment they are installed.
pub(crate) struct StopSignals {
    pub(crate) term: tokio::signal::unix::Signal,
    pub(crate) int: tokio::signal::unix::Signal,
}

impl StopSignals {
    pub(crate) fn install() -> StopSignals {
        use tokio::signal::unix::{SignalKind, signal};
        StopSignals {
            term: signal(SignalKind::terminate()).expect("install SIGTERM handler"),
            int: signal(SignalKind::interrupt()).expect("install SIGINT handler"),
        }
    }
}

/// Completes on SIGTERM or SIGINT, which starts the drain. From then on a second signal, or
/// the drain still going a second past `drain_timeout` (a call hanging on NATS or the
/// database), exits at once with [`EXIT_DRAIN_CUT_SHORT`]: as after a crash, nothing is lost.
pub(crate) async fn shutdown_signal(signals: StopSignals, drain_timeout: std::time::Duration) {
    let StopSignals { mut term, mut int } = signals;
    tokio::select! {
        _ = term.recv() => tracing::info!("SIGTERM received"),
        _ = int.recv() => tracing::info!("SIGINT received"),
    }
    tokio::spawn(async move {
        let why = tokio::select! {
            _ = term.recv() => "SIGTERM received again",
            _ = int.recv() => "SIGINT received again",
            _ = tokio::time::sleep(drain_timeout + std::time::Duration::from_secs(1)) => {
                "the drain is still going past drain-timeout-ms"
            }
        };
        tracing::warn!(
            "{why}: exiting now; what was committed stays, the rest is done again at the next start"
        );
        std::process::exit(EXIT_DRAIN_CUT_SHORT.into());
    });
}
