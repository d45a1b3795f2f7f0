//! The `jetfold` command: plugin runner and builder.
//!
//! # Layout
//!
//! This file holds the command line (`Cli`, `Command`), the exit codes, logging set-up and
//! the helpers every command shares; each command is a module of its own, with its
//! arguments and what it runs:
//!
//! - [`test`]: `jetfold test`, a fixture folded offline and compared with its golden file.
//! - [`build`]: `jetfold build`, sources to components.
//! - [`new`]: `jetfold new`, a plugin scaffold.
//! - [`run`]: `jetfold run`, the daemon, with its stop signals.
//! - [`state`]: `jetfold state`, a read-model query to a running daemon.
//! - [`events`]: `jetfold publish` and `jetfold events export|import`.
//! - [`demo`]: `jetfold demo`.
//! - [`plugin`]: `jetfold plugin …`, the fleet registry.
//! - [`dlq`]: `jetfold dlq list|replay`.
//! - [`replay`]: `jetfold replay`, and the stream a replay reads (shared with `verify`).
//! - [`verify`]: `jetfold verify`.
//! - [`rebuild`]: `jetfold rebuild`.

mod build;
mod demo;
mod dlq;
mod events;
mod new;
mod plugin;
mod rebuild;
mod replay;
mod run;
mod state;
mod test;
mod verify;

use build::BuildArgs;
use demo::DemoArgs;
use dlq::DlqCommand;
use events::{EventsCommand, PublishArgs};
use new::NewArgs;
use plugin::PluginCommand;
use rebuild::RebuildArgs;
use replay::ReplayArgs;
use run::{LogFormat, RunArgs};
use state::StateArgs;
use test::TestArgs;
use verify::VerifyArgs;

use std::{
    path::{Path, PathBuf},
    process::ExitCode,
};

use std::io::Write as _;

use anyhow::Context as _;
use clap::{Parser, Subcommand, ValueEnum};
use jetfold_host::{
    builder::{BuildOptions, build_plugin},
    component::ComponentLoader,
    fold::{FixtureLine, Fold, Plugin, read_fixture},
};

/// Exit code: the run failed a check (golden file differs, or events were rejected).
const EXIT_CHECK_FAILED: u8 = 1;
/// Exit code: the command could not run (bad arguments, manifest, component or fixture).
const EXIT_ERROR: u8 = 2;
/// Exit code of `run`: stopped before the drain finished (`drain-timeout-ms` passed, or a
/// second signal); nothing is lost, the next start finishes it.
const EXIT_DRAIN_CUT_SHORT: u8 = 3;

#[derive(Parser)]
#[command(
    name = "jetfold",
    version,
    about = "Folds NATS JetStream events through sandboxed WebAssembly plugins"
)]
#[command(
    after_help = "Exit codes: 0 success (`run`: stopped by SIGTERM or SIGINT after draining); \
1 a check failed (golden file differs, events were rejected without --expect, `replay --diff` found \
a divergence, `verify` a state that differs); 2 the command could not run (arguments, config, \
manifest, component, fixture, a stream or daemon that is not there, or NATS unreachable past \
nats.connect-timeout-secs)."
)]
struct Cli {
    /// Directory of precompiled components [default: $JETFOLD_CACHE_DIR, else ~/.cache/jetfold]
    #[arg(long, global = true, value_name = "DIR")]
    cache_dir: Option<PathBuf>,
    /// Compile components every time instead of using the precompiled cache.
    #[arg(long, global = true)]
    no_cache: bool,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Fold a file of events through a plugin and show each step's effects and the final state.
    Test(TestArgs),
    /// Build plugins from source into the components their manifests name.
    Build(BuildArgs),
    /// Start a new plugin: manifest, source, an event fixture, its golden file and a build
    /// script, which builds and passes `jetfold test` as it is.
    New(NewArgs),
    /// Run the daemon: consume JetStream, fold events through every plugin, run their effects.
    ///
    /// The plugin directory is watched (`plugin-dir-poll-ms`): a new plugin starts, a changed
    /// one swaps versions at its next batch, a removed one stops. SIGHUP re-reads the config
    /// file and applies it the same way. SIGTERM or SIGINT drain (commit, publish, ack) and
    /// exit 0; exit 3 if the drain did not finish within `drain-timeout-ms` (default 10 s) or
    /// a second signal came first: nothing is lost, the next start finishes it; exit 2 if it
    /// cannot start. HTTP on `[http] listen` (default 127.0.0.1:9477): the status page at /,
    /// /metrics (Prometheus), /healthz, /readyz, /plugins (JSON).
    Run(RunArgs),
    /// Ask a running daemon's projection a read-model query (JSON), over NATS.
    State(StateArgs),
    /// Publish a file of events (a fixture: one JSON event per line) to a JetStream stream,
    /// creating the stream if it does not exist; signed with `[event-signing] sign-key` when
    /// the config names one.
    Publish(PublishArgs),
    /// Start a local nats-server, publish a burst of events through the example plugins and
    /// show the resulting read model (build the plugins first).
    Demo(DemoArgs),
    /// The fleet registry on JetStream: push, shadow, promote, roll back, pause, resume,
    /// remove plugin versions; list every daemon's plugins.
    ///
    /// Daemons with `[registry] enabled = true` follow it: a pushed version is loaded and
    /// swapped in at a batch boundary on every one of them.
    #[command(subcommand)]
    Plugin(PluginCommand),
    /// Dead letters: the events a plugin failed on (`on-error = "dead-letter"`, the default),
    /// kept on the dead-letter stream with the reason.
    #[command(subcommand)]
    Dlq(DlqCommand),
    /// Move events between streams and servers as JSON Lines (the fixture format), keeping
    /// order, message ids, headers and payload bytes.
    #[command(subcommand)]
    Events(EventsCommand),
    /// Fold a plugin's stream again, effects suppressed (a dry run that acknowledges nothing),
    /// and print the states at the end; with --effects, each event's effects first; with
    /// --diff, where another version of the plugin folds differently.
    Replay(ReplayArgs),
    /// Replay a plugin's stream up to the sequence its stored states are as of (its checkpoint,
    /// or the last snapshot before it) and compare with those states: any difference means
    /// non-determinism, a changed component or manifest, or events the daemon rejected that
    /// this version folds (named; their replayed dead letters fold them later). Exit 1 on a
    /// difference. With a partitioned
    /// daemon's config, its partition: that partition's checkpoint and the keys it folds.
    Verify(VerifyArgs),
    /// Rebuild a running plugin's read model from the stream start, blue/green: a running
    /// daemon folds the stream again into tables of its own, beside the live ones (which go
    /// on serving), and swaps them in in one transaction when caught up. Shows progress
    /// until then.
    Rebuild(RebuildArgs),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let (default_level, json) = match &cli.command {
        Command::Run(args) => ("info", args.log_format == LogFormat::Json),
        // The demo prints what matters itself; the daemon's per-event warnings would drown it.
        Command::Demo(_) => ("error", false),
        _ => ("warn", false),
    };
    let filter = tracing_subscriber::EnvFilter::try_from_env("JETFOLD_LOG")
        .unwrap_or_else(|_| default_level.into());
    // Colours only on a terminal: a journal or a file gets plain text.
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let logs = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(ansi);
    if json {
        logs.json().init();
    } else {
        logs.init();
    }
    let result = match &cli.command {
        Command::Test(args) => test::run_test(&cli, args),
        Command::Build(args) => build::run_build(args),
        Command::New(args) => new::run_new(args),
        Command::Run(args) => run::run_daemon(args),
        Command::State(args) => state::run_state(args),
        Command::Publish(args) => events::run_publish(args),
        Command::Plugin(command) => plugin::run_plugin(command),
        Command::Dlq(command) => dlq::run_dlq(command),
        Command::Events(command) => events::run_events(command),
        Command::Replay(args) => replay::run_replay(&cli, args),
        Command::Verify(args) => verify::run_verify(&cli, args),
        Command::Rebuild(args) => rebuild::run_rebuild(args),
        Command::Demo(args) => demo::run_demo(args),
    };
    match result {
        Ok(code) => code,
        // The reader went away (`jetfold state … | head -3`): nothing more to say to anyone.
        Err(e) if is_broken_pipe(&e) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(EXIT_ERROR)
        }
    }
}

/// Whether an error is stdout's reader having closed the pipe.
fn is_broken_pipe(e: &anyhow::Error) -> bool {
    use std::io::ErrorKind::BrokenPipe;
    e.chain().any(|cause| {
        cause.downcast_ref::<std::io::Error>().is_some_and(|io| io.kind() == BrokenPipe)
            // serde_json's writer error does not give its io::Error as a source.
            || cause
                .downcast_ref::<serde_json::Error>()
                .is_some_and(|json| json.io_error_kind() == Some(BrokenPipe))
    })
}

#[derive(clap::Args)]
struct RegistryArgs {
    /// The configuration naming the NATS server and the registry's buckets.
    #[arg(long, short, value_name = "FILE", default_value = "jetfold.toml")]
    config: PathBuf,
}

/// Runs `work` with a connection to the NATS server `config` names, on a runtime of its own:
/// what every command that talks to NATS does (the daemon and the demo set up their own).
fn with_nats<T>(
    config: &jetfold_host::config::Config,
    work: impl AsyncFnOnce(async_nats::Client) -> anyhow::Result<T>,
) -> anyhow::Result<T> {
    let runtime = tokio::runtime::Runtime::new()?;
    runtime.block_on(async {
        let client = jetfold_host::nats::connect(config).await?;
        work(client).await
    })
}

fn loader(cli: &Cli) -> anyhow::Result<ComponentLoader> {
    let cache = if cli.no_cache {
        None
    } else {
        cli.cache_dir.clone().or_else(ComponentLoader::default_cache_dir)
    };
    Ok(ComponentLoader::new(cache)?.announcing())
}

fn write_file(path: &Path, text: &str) -> anyhow::Result<()> {
    jetfold_host::component::write_atomically(path, text.as_bytes())
        .with_context(|| format!("failed to write {}", path.display()))
}
