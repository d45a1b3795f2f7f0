//! The `jetfold` command: plugin runner and builder.

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
    /// non-determinism or a changed component. Exit 1 on a difference. With a partitioned
    /// daemon's config, its partition: that partition's checkpoint and the keys it folds.
    Verify(VerifyArgs),
    /// Rebuild a running plugin's read model from the stream start, blue/green: a running
    /// daemon folds the stream again into tables of its own, beside the live ones (which go
    /// on serving), and swaps them in in one transaction when caught up. Shows progress
    /// until then.
    Rebuild(RebuildArgs),
}

#[derive(clap::Args)]
struct RebuildArgs {
    /// The plugin's name.
    plugin: String,
    /// The daemon's configuration (its `name` says which daemon is asked).
    #[arg(long, short, value_name = "FILE", default_value = "jetfold.toml")]
    config: PathBuf,
    /// How long to wait for the daemon's first answer.
    #[arg(long, value_name = "SECS", default_value_t = 5)]
    timeout_secs: u64,
}

/// Where a replay reads: the plugin, its stream and the range.
#[derive(clap::Args)]
struct ReplaySource {
    /// The plugin: its directory or its plugin.toml.
    plugin: PathBuf,
    /// The configuration naming the NATS server (and the sink, for verify).
    #[arg(long, short, value_name = "FILE", default_value = "jetfold.toml")]
    config: PathBuf,
    /// Read this stream instead of the manifest's (or the config's `[plugins.<name>]`).
    #[arg(long, value_name = "NAME")]
    stream: Option<String>,
    /// Instances of the plugin that fold in parallel, each a share of the keys (every key's
    /// events in order in one of them) [default: one per core beyond the first, at least 1].
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u16).range(1..))]
    jobs: Option<u16>,
}

impl ReplaySource {
    /// Instances to fold with.
    fn jobs(&self) -> usize {
        match self.jobs {
            Some(n) => n.into(),
            None => std::thread::available_parallelism().map_or(1, |n| n.get() - 1).max(1),
        }
    }
}

#[derive(clap::Args)]
struct ReplayArgs {
    #[command(flatten)]
    source: ReplaySource,
    /// First stream sequence to fold [default: the stream's first].
    #[arg(long, value_name = "SEQ")]
    from_seq: Option<u64>,
    /// Last stream sequence to fold.
    #[arg(long, value_name = "SEQ", conflicts_with = "to_time")]
    to_seq: Option<u64>,
    /// Fold only the events whose event time is at or before this (RFC 3339), wherever they
    /// are in the stream: event time is not stream order, so the whole stream (from
    /// --from-seq) is read and later events are passed by (counted as `later`).
    #[arg(long, value_name = "TIME")]
    to_time: Option<chrono::DateTime<chrono::Utc>>,
    /// Print each event's effects (one JSON line per event) before the states.
    #[arg(long)]
    effects: bool,
    /// Fold the same events through this other version of the plugin too, and print each
    /// event where the two differ (state, effects or error); exit 1 if any does.
    #[arg(long, value_name = "PLUGIN", conflicts_with = "effects")]
    diff: Option<PathBuf>,
    /// Print only this key's state.
    #[arg(long, value_name = "KEY")]
    key: Option<String>,
}

#[derive(clap::Args)]
struct VerifyArgs {
    #[command(flatten)]
    source: ReplaySource,
}

#[derive(Subcommand)]
enum EventsCommand {
    /// Write a stream's events to stdout, one JSON record per line, in stream order.
    Export {
        /// The stream.
        stream: String,
        /// Only events on this subject (NATS wildcards allowed; repeatable).
        #[arg(long = "subject", value_name = "SUBJECT")]
        subjects: Vec<String>,
        #[command(flatten)]
        at: RegistryArgs,
    },
    /// Publish the events of a JSON Lines file (an export, or a fixture) to a stream, in
    /// order, with their message ids and headers; creates the stream if it does not exist.
    /// Events the stream already has (same message id) are not stored twice.
    Import {
        /// The file.
        file: PathBuf,
        /// The stream to publish to.
        #[arg(long, value_name = "NAME")]
        stream: String,
        /// The subjects of the stream when it must be created [default: `<first token>.>` of
        /// each event's subject].
        #[arg(long = "subject", value_name = "SUBJECT")]
        subjects: Vec<String>,
        #[command(flatten)]
        at: RegistryArgs,
    },
}

#[derive(Subcommand)]
enum DlqCommand {
    /// Show a plugin's dead letters: dead-letter sequence, source sequence and subject, event
    /// type, failure kind and code, why.
    List {
        /// The plugin's name.
        plugin: String,
        #[command(flatten)]
        at: RegistryArgs,
    },
    /// After a fix: publish a plugin's dead letters again to the subjects they came from, for
    /// that plugin only (original payload and headers, a new message id, and
    /// `Jetfold-Replay-For: <plugin>`, which every other plugin passes by), each event once
    /// however many copies of its dead letter there are, and remove them from the
    /// dead-letter stream.
    Replay {
        /// The plugin's name.
        plugin: String,
        #[command(flatten)]
        at: RegistryArgs,
    },
}

#[derive(Subcommand)]
enum PluginCommand {
    /// Store a plugin's component under its sha256 and make it the desired version.
    Push {
        /// The plugin: its directory or its plugin.toml.
        plugin: PathBuf,
        /// Take over exactly at this stream sequence (the running version folds the events
        /// before it, also on a daemon that restarts meanwhile) instead of at each daemon's
        /// next batch. A sequence a daemon has already committed is refused there for good.
        #[arg(long, value_name = "SEQ")]
        at_seq: Option<u64>,
        /// Sign the version with this private key (from `jetfold plugin keygen`).
        #[arg(long, value_name = "KEY_FILE")]
        sign: Option<PathBuf>,
        /// Run it beside the live version on live events, effects suppressed; events where
        /// the two differ are recorded in the sink's jetfold_shadow_diffs.
        #[arg(long, conflicts_with = "at_seq")]
        shadow: bool,
        #[command(flatten)]
        at: RegistryArgs,
    },
    /// Make an ed25519 signing key: writes the private key to FILE (mode 0600; an existing
    /// file is never overwritten), prints the public key for `[registry] trusted-keys`.
    Keygen {
        /// Where to write the private key (created; not overwritten).
        file: PathBuf,
    },
    /// Show the desired versions, every daemon (up, stopped, or not reporting, with its last
    /// report's age), then every daemon's plugins: kind, digest, status (running, rebuilding,
    /// stalled, paused, refused, stopped, daemon-gone), checkpoint, lag, last error, and a
    /// version pending `--at-seq` or rebuilding.
    List {
        #[command(flatten)]
        at: RegistryArgs,
    },
    /// Go back one version: to the one the current version replaced (each rollback goes one
    /// further back, dropping the version it leaves; a push after it starts from there), or
    /// --to a digest (prefix).
    Rollback {
        /// The plugin's name.
        name: String,
        /// The digest (or a prefix of it) to return to: from the history, else from the
        /// registry's revisions of the plugin's record.
        #[arg(long, value_name = "DIGEST")]
        to: Option<String>,
        #[command(flatten)]
        at: RegistryArgs,
    },
    /// Stop a plugin on every daemon and forget it; with --purge, also delete its durable
    /// consumers (`<daemon>-<plugin>`) once every daemon has stopped it.
    Remove {
        /// The plugin's name.
        name: String,
        /// Delete the daemons' durable consumers of the plugin too.
        #[arg(long)]
        purge: bool,
        #[command(flatten)]
        at: RegistryArgs,
    },
    /// Make the shadow version the live one.
    Promote {
        /// The plugin's name.
        name: String,
        #[command(flatten)]
        at: RegistryArgs,
    },
    /// Stop a plugin on every daemon (consumers and checkpoints are kept).
    Pause {
        /// The plugin's name.
        name: String,
        #[command(flatten)]
        at: RegistryArgs,
    },
    /// Start a paused plugin again, from its checkpoint.
    Resume {
        /// The plugin's name.
        name: String,
        #[command(flatten)]
        at: RegistryArgs,
    },
}

#[derive(clap::Args)]
struct RegistryArgs {
    /// The configuration naming the NATS server and the registry's buckets.
    #[arg(long, short, value_name = "FILE", default_value = "jetfold.toml")]
    config: PathBuf,
}

#[derive(clap::Args)]
struct StateArgs {
    /// The projection's name.
    plugin: String,
    /// The query, JSON [default: {}].
    query: Option<String>,
    /// Ask only this state key.
    #[arg(long, value_name = "KEY")]
    key: Option<String>,
    /// The daemon's configuration file (for its NATS connection).
    #[arg(long, short, value_name = "FILE", default_value = "jetfold.toml")]
    config: PathBuf,
    /// Give up after this many milliseconds.
    #[arg(long, value_name = "MS", default_value_t = 5000)]
    timeout_ms: u64,
}

#[derive(clap::Args)]
struct PublishArgs {
    /// The events, one JSON object per line (the format of `jetfold test` fixtures).
    events: PathBuf,
    /// The stream to publish to.
    #[arg(long, value_name = "NAME")]
    stream: String,
    /// The subjects of the stream when it must be created [default: `<first token>.>` of
    /// each event's subject].
    #[arg(long = "subject", value_name = "SUBJECT")]
    subjects: Vec<String>,
    /// The configuration naming the NATS server.
    #[arg(long, short, value_name = "FILE", default_value = "jetfold.toml")]
    config: PathBuf,
}

#[derive(clap::Args)]
struct DemoArgs {
    /// Directory holding the example plugins.
    #[arg(long, value_name = "DIR", default_value = "plugins")]
    plugin_dir: PathBuf,
    /// Use this NATS server (2.10 or later) instead of starting one.
    #[arg(long, value_name = "URL")]
    nats_url: Option<String>,
}

#[derive(clap::Args)]
struct RunArgs {
    /// The daemon's configuration file.
    #[arg(long, short, value_name = "FILE", default_value = "jetfold.toml")]
    config: PathBuf,
    /// Log lines as JSON objects instead of text.
    #[arg(long, value_enum, default_value_t = LogFormat::Text)]
    log_format: LogFormat,
}

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
enum LogFormat {
    /// Human-readable.
    Text,
    /// One JSON object per line.
    Json,
}

#[derive(clap::Args)]
struct TestArgs {
    /// The plugin: its directory or its plugin.toml.
    plugin: PathBuf,
    /// The events, one JSON object per line [default: <plugin dir>/fixtures/events.jsonl].
    #[arg(long, value_name = "FILE")]
    events: Option<PathBuf>,
    /// Compare the run with this golden file; exit 1 with a diff if it differs [default:
    /// <plugin dir>/fixtures/expected.json, when it exists and none of --events, --query,
    /// --key is given].
    #[arg(long, value_name = "FILE")]
    expect: Option<PathBuf>,
    /// Write the run into the golden file instead of comparing (with --events, --query or
    /// --key, only into one named with --expect).
    #[arg(long)]
    update: bool,
    /// A query (JSON) to ask the projection after the last event; repeatable. Shown, not
    /// compared with the default golden file; the exit code is 1 only if a query fails.
    #[arg(long, value_name = "JSON")]
    query: Vec<String>,
    /// Ask the --query of this state key only; without --query, show only this key's final
    /// state.
    #[arg(long, value_name = "KEY")]
    key: Option<String>,
    /// Output format.
    #[arg(long, value_enum, default_value_t = Format::Text)]
    format: Format,
    /// Run every event through this upcaster first (a directory or manifest; repeatable: a
    /// chain, each raising the schema versions it reads, as a daemon runs its stream's).
    #[arg(long = "upcaster", value_name = "PLUGIN")]
    upcasters: Vec<PathBuf>,
}

#[derive(Clone, Copy, ValueEnum)]
enum Format {
    /// Readable steps and final state.
    Text,
    /// The report, as a golden file stores it.
    Json,
}

#[derive(clap::Args)]
struct NewArgs {
    /// The plugin's name, in kebab-case (`my-counter`); also its directory.
    name: String,
    /// The source language.
    #[arg(long, value_enum)]
    lang: jetfold_host::manifest::BuildLang,
    /// What it is.
    #[arg(long, value_enum)]
    kind: NewKind,
    /// Write it here instead of ./<name>.
    #[arg(long, value_name = "DIR")]
    dir: Option<PathBuf>,
    /// The jetfold guest SDK a Rust plugin depends on [default: the one this jetfold was
    /// built from].
    #[arg(long, value_name = "DIR")]
    sdk: Option<PathBuf>,
}

#[derive(Clone, Copy, ValueEnum)]
enum NewKind {
    /// Folds events into state and a read model.
    Projection,
    /// Turns events into commands.
    Policy,
}

#[derive(clap::Args)]
struct BuildArgs {
    /// Plugin directories or plugin.toml files.
    #[arg(required = true)]
    plugins: Vec<PathBuf>,
    /// Cargo target directory for Rust plugins.
    #[arg(long, value_name = "DIR")]
    target_dir: Option<PathBuf>,
    /// Build without optimisations.
    #[arg(long)]
    debug: bool,
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
        Command::Test(args) => run_test(&cli, args),
        Command::Build(args) => run_build(args),
        Command::New(args) => run_new(args),
        Command::Run(args) => run_daemon(args),
        Command::State(args) => run_state(args),
        Command::Publish(args) => run_publish(args),
        Command::Plugin(command) => run_plugin(command),
        Command::Dlq(command) => run_dlq(command),
        Command::Events(command) => run_events(command),
        Command::Replay(args) => run_replay(&cli, args),
        Command::Verify(args) => run_verify(&cli, args),
        Command::Rebuild(args) => run_rebuild(args),
        Command::Demo(args) => tokio::runtime::Runtime::new()
            .map_err(anyhow::Error::from)
            .and_then(|rt| {
                rt.block_on(jetfold_host::demo::run(&args.plugin_dir, args.nats_url.clone()))
            })
            .map(|()| ExitCode::SUCCESS),
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
    e.chain().any(|cause| {
        cause
            .downcast_ref::<std::io::Error>()
            .is_some_and(|io| io.kind() == std::io::ErrorKind::BrokenPipe)
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

fn run_test(cli: &Cli, args: &TestArgs) -> anyhow::Result<ExitCode> {
    let loader = loader(cli)?;
    let plugin = Plugin::open(&args.plugin, &loader)?;
    let plugin_dir = plugin.manifest.dir.clone();
    let events =
        args.events.clone().unwrap_or_else(|| plugin.manifest.dir.join("fixtures/events.jsonl"));
    let lines = read_fixture(&events)?;
    let mut queries = Vec::new();
    for (i, q) in args.query.iter().enumerate() {
        let value: serde_json::Value = serde_json::from_str(q)
            .with_context(|| format!("--query #{} is not JSON: {q}", i + 1))?;
        queries.push(value);
    }

    let mut out = std::io::stdout().lock();
    if matches!(args.format, Format::Text) {
        writeln!(
            out,
            "{} ({}, {}) over {}",
            plugin.manifest.name,
            plugin.manifest.kind,
            plugin.component.digest,
            events.display()
        )?;
    }
    let mut specs = Vec::new();
    for path in &args.upcasters {
        let manifest = jetfold_host::manifest::Manifest::load(path)?;
        if manifest.kind != jetfold_host::manifest::PluginKind::Upcaster {
            anyhow::bail!(
                "--upcaster {}: `{}` is a {}, not an upcaster",
                path.display(),
                manifest.name,
                manifest.kind
            );
        }
        let component = loader.load(manifest.kind, &manifest.wasm_path())?;
        specs.push(jetfold_host::upcast::UpcasterSpec { manifest, component });
    }
    let chain = jetfold_host::upcast::UpcastChain::new(&specs, &loader)?;
    let mut fold = Fold::new(plugin).with_upcasters(chain);
    for (line, entry) in lines {
        match entry {
            FixtureLine::Event(event) => {
                fold.feed(line, &event);
            }
            FixtureLine::Query { query, key } => {
                fold.query(line, query, key);
            }
        }
    }
    for q in queries {
        fold.query(0, q, args.key.clone());
    }
    let mut report = fold.finish();
    if let Some(key) = &args.key {
        if !report.state.contains_key(key) {
            let known: Vec<&str> = report.state.keys().take(5).map(String::as_str).collect();
            let more = report.state.len().saturating_sub(known.len());
            eprintln!(
                "no key `{key}` has a state after these events{}",
                match (known.is_empty(), more) {
                    (true, _) => String::new(),
                    (false, 0) => format!(" (keys: {})", known.join(", ")),
                    (false, n) => format!(" (keys: {} and {n} more)", known.join(", ")),
                }
            );
        }
        if args.query.is_empty() {
            report.state.retain(|k, _| k == key);
        }
    }
    match args.format {
        Format::Text => write!(out, "{report}")?,
        Format::Json => write!(out, "{}", report.to_golden())?,
    }
    out.flush()?;
    drop(out);

    let default_golden = plugin_dir.join("fixtures/expected.json");
    // A look at the read model (`--query`, `--key`), or at other events, is not the run the
    // golden file records.
    let look = !args.query.is_empty() || args.key.is_some();
    let ad_hoc = args.events.is_some() || look;
    let expect = args.expect.clone().or_else(|| {
        (!ad_hoc && (args.update || default_golden.exists())).then_some(default_golden)
    });
    let Some(expect) = &expect else {
        if args.update {
            anyhow::bail!(
                "--update with --events, --query or --key writes only to a golden file you name: give --expect FILE"
            );
        }
        // A look at the read model fails only if a query does; the fixture's rejections are
        // in the output.
        let failures = report
            .steps
            .iter()
            .filter(|s| s.error().is_some())
            .filter(|s| !look || matches!(s, jetfold_host::fold::Step::Query { .. }))
            .count();
        if failures > 0 {
            let plural = failures != 1;
            if look {
                eprintln!("{failures} quer{} failed", if plural { "ies" } else { "y" });
            } else {
                eprintln!(
                    "{failures} step{} failed (record expected failures in a golden file with --expect FILE --update)",
                    if plural { "s" } else { "" }
                );
            }
            return Ok(ExitCode::from(EXIT_CHECK_FAILED));
        }
        return Ok(ExitCode::SUCCESS);
    };
    let actual = report.to_golden();
    if args.update {
        write_file(expect, &actual)?;
        eprintln!("wrote {}", expect.display());
        return Ok(ExitCode::SUCCESS);
    }
    let expected = std::fs::read_to_string(expect).with_context(|| {
        format!("failed to read the golden file {} (create it with --update)", expect.display())
    })?;
    let expected: serde_json::Value =
        serde_json::from_str(&expected).context("the golden file is not JSON")?;
    let actual: serde_json::Value = serde_json::from_str(&actual)?;
    if jetfold_host::golden::same(&expected, &actual) {
        eprintln!("ok: matches {}", expect.display());
        Ok(ExitCode::SUCCESS)
    } else {
        eprintln!("golden file {} differs:", expect.display());
        eprint!("{}", jetfold_host::golden::diff(&expected, &actual));
        let failing = jetfold_host::golden::failing_steps;
        let new_failures = failing(&actual).saturating_sub(failing(&expected));
        if new_failures > 0 {
            eprintln!(
                "{new_failures} more step{} fail than the golden file expects: fix the plugin or its \
                 manifest, or, if the failures are right, rerun with --update to record them",
                if new_failures == 1 { "" } else { "s" }
            );
        } else {
            eprintln!("if the new behaviour is right, rerun with --update");
        }
        Ok(ExitCode::from(EXIT_CHECK_FAILED))
    }
}

fn run_new(args: &NewArgs) -> anyhow::Result<ExitCode> {
    use jetfold_host::manifest::PluginKind;
    use jetfold_host::scaffold::{NewPlugin, scaffold};
    let dir = args.dir.clone().unwrap_or_else(|| PathBuf::from(&args.name));
    let kind = match args.kind {
        NewKind::Projection => PluginKind::Projection,
        NewKind::Policy => PluginKind::Policy,
    };
    let plugin =
        NewPlugin { name: args.name.clone(), lang: args.lang, kind, sdk: args.sdk.clone() };
    let files = scaffold(&dir, &plugin)?;
    for file in files {
        println!("{}", file.display());
    }
    eprintln!("next: {d}/build.sh && jetfold test {d}", d = dir.display());
    Ok(ExitCode::SUCCESS)
}

fn write_file(path: &Path, text: &str) -> anyhow::Result<()> {
    jetfold_host::component::write_atomically(path, text.as_bytes())
        .with_context(|| format!("failed to write {}", path.display()))
}

fn run_daemon(args: &RunArgs) -> anyhow::Result<ExitCode> {
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

fn run_plugin(command: &PluginCommand) -> anyhow::Result<ExitCode> {
    use jetfold_host::registry::{Buckets, Registry};
    if let PluginCommand::Keygen { file } = command {
        let (private, public) = jetfold_host::registry::generate_key()?;
        use std::os::unix::fs::OpenOptionsExt as _;
        // Readable by its owner only, and never over an existing key.
        let mut out =
            match std::fs::OpenOptions::new().write(true).create_new(true).mode(0o600).open(file) {
                Ok(out) => out,
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => anyhow::bail!(
                    "{} exists: not overwritten (remove it first to make a new key)",
                    file.display()
                ),
                Err(e) => {
                    return Err(e).with_context(|| format!("cannot create {}", file.display()));
                }
            };
        std::io::Write::write_all(&mut out, format!("{private}\n").as_bytes())?;
        println!("{public}");
        return Ok(ExitCode::SUCCESS);
    }
    let at = match command {
        PluginCommand::Keygen { .. } => unreachable!("handled above"),
        PluginCommand::Push { at, .. }
        | PluginCommand::List { at }
        | PluginCommand::Rollback { at, .. }
        | PluginCommand::Pause { at, .. }
        | PluginCommand::Promote { at, .. }
        | PluginCommand::Remove { at, .. }
        | PluginCommand::Resume { at, .. } => at,
    };
    let config = jetfold_host::config::Config::load(&at.config)?;
    let runtime = tokio::runtime::Runtime::new()?;
    runtime.block_on(async {
        let client = jetfold_host::nats::connect(&config).await?;
        let js = async_nats::jetstream::new(client.clone());
        let registry = Registry::open(&js, &Buckets::named(&config.registry.bucket_prefix)).await?;
        let short = |d: &str| d.chars().take(12).collect::<String>();
        match command {
            PluginCommand::Keygen { .. } => unreachable!("handled above"),
            PluginCommand::Push { plugin, at_seq, sign, shadow: true, .. } => {
                let d = registry.push(plugin, *at_seq, sign.as_deref(), true).await?;
                let s = d.shadow.as_ref().expect("a shadow push sets it");
                println!("pushed {} {} as the shadow of {}", d.name, s.digest, d.digest);
            }
            PluginCommand::Remove { name, purge, .. } => {
                let removed = registry.remove(name).await?;
                let Some(desired) = removed else {
                    anyhow::bail!("no plugin `{name}` was pushed");
                };
                println!("removed {name}");
                if *purge {
                    purge_consumers(&registry, &js, &desired).await?;
                }
            }
            PluginCommand::Promote { name, .. } => {
                let d = registry.promote(name).await?;
                println!("promoted {} {}", d.name, d.digest);
            }
            PluginCommand::Push { plugin, at_seq, sign, .. } => {
                let d = registry.push(plugin, *at_seq, sign.as_deref(), false).await?;
                let paused = if d.paused { " (paused: resume it to run it)" } else { "" };
                println!("pushed {} {}{paused}", d.name, d.digest);
            }
            PluginCommand::Rollback { name, to, .. } => {
                let d = registry.rollback(name, to.as_deref()).await?;
                println!("rolled back {} to {}", d.name, d.digest);
            }
            PluginCommand::Pause { name, .. } => {
                registry.set_paused(name, true).await?;
                println!("paused {name}");
            }
            PluginCommand::Resume { name, .. } => {
                registry.set_paused(name, false).await?;
                println!("resumed {name}");
            }
            PluginCommand::List { .. } => {
                println!("desired versions");
                for d in registry.all().await? {
                    let paused = if d.paused { "paused" } else { "" };
                    println!("  {:<24} {} {paused}", d.name, short(&d.digest));
                }
                let now = chrono::Utc::now();
                let statuses = registry.statuses().await?;
                println!("\ndaemons");
                for status in &statuses {
                    let seen = status.reported_at.map_or("-".to_string(), |at| {
                        format!("{:.1} s ago", (now - at).num_milliseconds() as f64 / 1000.0)
                    });
                    let state = match (status.stopped, status.gone(now)) {
                        (true, _) => "stopped",
                        (false, true) => "not reporting",
                        (false, false) => "up",
                    };
                    println!("  {:<24} {state}, last report {seen}", status.daemon);
                }
                println!(
                    "\n{:<12} {:<24} {:<11} {:<12} {:<8} {:>10} {:>8}  last error",
                    "daemon", "plugin", "kind", "digest", "status", "seq", "lag"
                );
                for status in statuses {
                    for p in status.plugins_at(now) {
                        let lag = p.lag.map(|l| l.to_string()).unwrap_or_else(|| "-".into());
                        println!(
                            "{:<12} {:<24} {:<11} {:<12} {:<8} {:>10} {:>8}  {}",
                            status.daemon,
                            p.name,
                            p.kind,
                            short(&p.digest),
                            p.status,
                            p.committed_seq,
                            lag,
                            p.last_error.unwrap_or_default()
                        );
                        if let Some((digest, seq)) = &p.rebuild {
                            println!(
                                "{:<12}   rebuilding {} (at {seq} of {})",
                                status.daemon,
                                short(digest),
                                p.committed_seq
                            );
                        }
                        if let Some((digest, at)) = &p.pending {
                            println!(
                                "{:<12}   next {} takes over at sequence {at}",
                                status.daemon,
                                short(digest)
                            );
                        }
                        if let Some((digest, events, diffs)) = p.shadow {
                            println!(
                                "{:<12}   shadow {}: {diffs} of {events} events differ",
                                status.daemon,
                                short(&digest)
                            );
                        }
                    }
                }
            }
        }
        client.flush().await?;
        anyhow::Ok(())
    })?;
    Ok(ExitCode::SUCCESS)
}

/// Waits (up to 30 s) until no daemon reports `desired`'s plugin running, then deletes every
/// reporting daemon's durable consumer of it on the stream its manifest names.
async fn purge_consumers(
    registry: &jetfold_host::registry::Registry,
    js: &async_nats::jetstream::Context,
    desired: &jetfold_host::registry::Desired,
) -> anyhow::Result<()> {
    let name = &desired.name;
    let manifest: toml::Table = toml::from_str(&desired.manifest)?;
    let stream = manifest
        .get("source")
        .and_then(|s| s.get("stream"))
        .and_then(|s| s.as_str())
        .with_context(|| format!("the manifest of `{name}` names no [source] stream"))?;
    let daemons: Vec<String> = registry.statuses().await?.into_iter().map(|s| s.daemon).collect();
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(30);
    loop {
        // A plugin rebuilding or retrying runs too; a daemon that stopped or went silent does
        // not.
        let now = chrono::Utc::now();
        let running: Vec<String> = registry
            .statuses()
            .await?
            .into_iter()
            .filter(|s| s.plugins_at(now).iter().any(|p| &p.name == name && p.status.is_started()))
            .map(|s| s.daemon)
            .collect();
        if running.is_empty() {
            break;
        }
        if tokio::time::Instant::now() > deadline {
            anyhow::bail!("`{name}` still runs on {}: consumers not purged", running.join(", "));
        }
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
    let stream = match js.get_stream(stream).await {
        Ok(stream) => stream,
        Err(e)
            if matches!(
                e.kind(),
                async_nats::jetstream::context::GetStreamErrorKind::JetStream(j)
                    if j.error_code() == async_nats::jetstream::ErrorCode::STREAM_NOT_FOUND
            ) =>
        {
            // Its stream is gone (or never existed): no consumer of it is left to delete.
            println!("no consumers to purge: stream `{stream}` does not exist");
            return Ok(());
        }
        Err(e) => return Err(e.into()),
    };
    for daemon in daemons {
        let consumer = jetfold_host::nats::source::consumer_name(&daemon, name);
        match stream.delete_consumer(&consumer).await {
            Ok(_) => println!("purged consumer {consumer}"),
            Err(e) if e.to_string().contains("not found") => {}
            Err(e) => anyhow::bail!("cannot delete consumer {consumer}: {e}"),
        }
    }
    Ok(())
}

fn run_dlq(command: &DlqCommand) -> anyhow::Result<ExitCode> {
    let (plugin, at) = match command {
        DlqCommand::List { plugin, at } | DlqCommand::Replay { plugin, at } => (plugin, at),
    };
    let config = jetfold_host::config::Config::load(&at.config)?;
    let runtime = tokio::runtime::Runtime::new()?;
    runtime.block_on(async {
        let client = jetfold_host::nats::connect(&config).await?;
        let js = async_nats::jetstream::new(client);
        match command {
            DlqCommand::List { .. } => {
                let letters = jetfold_host::dlq::list(&js, &config.dead_letter, plugin).await?;
                let mut out = std::io::stdout().lock();
                for l in &letters {
                    let kind = match &l.code {
                        Some(code) => format!("{}, {code}", l.kind),
                        None => l.kind.clone(),
                    };
                    writeln!(
                        out,
                        "dead letter {} · source #{} {} {} ({kind}): {}",
                        l.seq,
                        l.source_seq,
                        l.source_subject,
                        l.event_type,
                        // A trap's reason has the lines the guest wrote: indented under it.
                        l.reason.replace('\n', "\n    ")
                    )?;
                }
                writeln!(out, "{} dead letters of {plugin}", letters.len())?;
            }
            DlqCommand::Replay { .. } => {
                let done = jetfold_host::dlq::replay(&js, &config.dead_letter, plugin).await?;
                let copies = done.letters - done.events;
                println!(
                    "replayed {} dead letters of {plugin}{}",
                    done.events,
                    match copies {
                        0 => String::new(),
                        n => format!(" ({n} copies of them removed too)"),
                    }
                );
            }
        }
        anyhow::Ok(ExitCode::SUCCESS)
    })
}

fn run_publish(args: &PublishArgs) -> anyhow::Result<ExitCode> {
    let config = jetfold_host::config::Config::load(&args.config)?;
    let signing = &config.event_signing;
    let sign_key = match &signing.sign_key {
        Some(id) => signing.decoded_keys()?.into_iter().find(|(k, _)| k == id),
        None => None,
    };
    let runtime = tokio::runtime::Runtime::new()?;
    let done = runtime.block_on(async {
        let client = jetfold_host::nats::connect(&config).await?;
        let js = async_nats::jetstream::new(client);
        let (path, stream) = (&args.events, &args.stream);
        jetfold_host::transfer::import(&js, path, stream, &args.subjects, sign_key.as_ref()).await
    })?;
    print_imported(&done, &args.stream);
    Ok(ExitCode::SUCCESS)
}

fn print_imported(done: &jetfold_host::transfer::Imported, stream: &str) {
    if done.stored == 0 && done.duplicates > 0 {
        println!(
            "nothing published: all {} events were already in {stream} (same message id, or the same message)",
            done.duplicates
        );
        return;
    }
    println!("published {} events to {stream} (last sequence {})", done.stored, done.last_seq);
    if done.duplicates > 0 {
        println!(
            "{} events were already in the stream (same message id, or the same message) and were not stored again",
            done.duplicates
        );
    }
}

fn run_events(command: &EventsCommand) -> anyhow::Result<ExitCode> {
    let config_path = match command {
        EventsCommand::Export { at, .. } | EventsCommand::Import { at, .. } => &at.config,
    };
    let config = jetfold_host::config::Config::load(config_path)?;
    let runtime = tokio::runtime::Runtime::new()?;
    runtime.block_on(async {
        let client = jetfold_host::nats::connect(&config).await?;
        let js = async_nats::jetstream::new(client);
        match command {
            EventsCommand::Export { stream, subjects, .. } => {
                let mut progress = jetfold_host::progress::ProgressLine::new("export");
                let mut out = std::io::BufWriter::new(std::io::stdout().lock());
                let done = jetfold_host::transfer::export(&js, stream, subjects, &mut out, |n, t| {
                    progress.update(n, t)
                })
                .await?;
                progress.finish(done.events, done.events);
                eprintln!("exported {} events from {stream}", done.events);
                if done.unreadable > 0 {
                    eprintln!(
                        "{} of them have unreadable Event-Time or Schema-Version headers: written with their headers as they are",
                        done.unreadable
                    );
                }
            }
            EventsCommand::Import { file, stream, subjects, .. } => {
                let done = jetfold_host::transfer::import(&js, file, stream, subjects, None).await?;
                print_imported(&done, stream);
            }
        }
        anyhow::Ok(ExitCode::SUCCESS)
    })
}

/// A plugin opened for replay: its config's `[limits]` defaults applied, its stream and
/// subjects as the daemon would read them, and the keys its signatures are checked with.
struct ReplayTarget {
    config: jetfold_host::config::Config,
    stream: String,
    subjects: Vec<String>,
    verify_keys: Vec<(String, Vec<u8>)>,
    /// The upcasters the daemon of this config runs before the plugins of this stream.
    upcasters: Vec<jetfold_host::upcast::UpcasterSpec>,
}

impl ReplayTarget {
    /// Reads the config once and opens the plugin of `source` as its daemon would run it.
    fn open(source: &ReplaySource, loader: &ComponentLoader) -> anyhow::Result<(Self, Plugin)> {
        let config = jetfold_host::config::Config::load(&source.config)?;
        let plugin = Plugin::open_with_defaults(&source.plugin, loader, &config.limits)?;
        let manifest = &plugin.manifest;
        let overrides = config.plugins.get(&manifest.name);
        let stream = source
            .stream
            .clone()
            .or_else(|| overrides.and_then(|o| o.stream.clone()))
            .or_else(|| manifest.source.stream.clone())
            .with_context(|| {
                format!("plugin `{}` names no [source] stream: give --stream", manifest.name)
            })?;
        let subjects = overrides
            .and_then(|o| o.subjects.clone())
            .unwrap_or_else(|| manifest.source.subjects.clone());
        let verify_keys = if config.event_signing.verify {
            config.event_signing.decoded_keys()?
        } else {
            Vec::new()
        };
        let upcasters = jetfold_host::daemon::stream_upcasters(&config, loader, &stream)?;
        Ok((ReplayTarget { config, stream, subjects, verify_keys, upcasters }, plugin))
    }

    /// Another plugin (a `--diff` version) opened with the same config's `[limits]` defaults.
    fn open_plugin(&self, path: &Path, loader: &ComponentLoader) -> anyhow::Result<Plugin> {
        Plugin::open_with_defaults(path, loader, &self.config.limits)
    }

    /// A replayer of `plugin` behind instances of the stream's upcasters, with `jobs - 1`
    /// more instances of it opened from `path`.
    fn replayer(
        &self,
        plugin: Plugin,
        path: &Path,
        jobs: usize,
        loader: &ComponentLoader,
    ) -> anyhow::Result<jetfold_host::replay::Replayer> {
        let chain = || -> anyhow::Result<_> {
            Ok(match self.upcasters.is_empty() {
                true => None,
                false => Some(jetfold_host::upcast::UpcastChain::new(&self.upcasters, loader)?),
            })
        };
        let mut instances = vec![(plugin, chain()?)];
        for _ in 1..jobs {
            instances.push((self.open_plugin(path, loader)?, chain()?));
        }
        Ok(jetfold_host::replay::Replayer::parallel(instances))
    }
}

fn run_replay(cli: &Cli, args: &ReplayArgs) -> anyhow::Result<ExitCode> {
    use jetfold_host::replay::{Range, read_batches, read_events};
    let loader = loader(cli)?;
    let (target, plugin) = ReplayTarget::open(&args.source, &loader)?;
    let mut other = match &args.diff {
        Some(path) => {
            Some(target.replayer(target.open_plugin(path, &loader)?, path, 1, &loader)?)
        }
        None => None,
    };
    let digest = plugin.component.digest.hex();
    let name = plugin.manifest.name.clone();
    // --diff compares event by event, states included: one instance, one event at a time.
    let jobs = if args.diff.is_some() { 1 } else { args.source.jobs() };
    let mut replayer = target.replayer(plugin, &args.source.plugin, jobs, &loader)?;
    let range = Range { from_seq: args.from_seq, to_seq: args.to_seq, to_time: args.to_time };
    let mut progress = jetfold_host::progress::ProgressLine::new("replay");
    let mut out = std::io::BufWriter::new(std::io::stdout().lock());
    let (mut differ, mut first): (u64, Option<(u64, String, String)>) = (0, None);
    let mut write_error = None;
    let runtime = tokio::runtime::Runtime::new()?;
    let last = runtime.block_on(async {
        let client = jetfold_host::nats::connect(&target.config).await?;
        let js = async_nats::jetstream::new(client);
        let mut write = |line: serde_json::Value| {
            if write_error.is_none()
                && let Err(e) = writeln!(out, "{line}")
            {
                write_error = Some(e);
            }
        };
        // --diff compares event by event; without it events are folded a batch at a time, and
        // with --effects each one's effects are printed as its batch ends.
        let read = if let Some(other) = &mut other {
            read_events(&js, &target.stream, &target.subjects, &range, &name, &target.verify_keys, |seq, event, total| {
                let event_type = event.as_ref().map(|e| e.event_type.clone()).unwrap_or_default();
                let (key, outcome) = replayer.step(&event);
                let (_, theirs) = other.step(&event);
                let (a, b) = (serde_json::to_value(&outcome), serde_json::to_value(&theirs));
                if a.ok() != b.ok() {
                    differ += 1;
                    first.get_or_insert((seq, event_type.clone(), key.clone()));
                    write(serde_json::json!({"seq": seq, "type": event_type, "key": key, "left": outcome, "right": theirs}));
                }
                progress.update(replayer.events, total);
            })
            .await?
        } else {
            read_batches(&js, &target.stream, &target.subjects, &range, &name, &target.verify_keys, |seqs, batch, total| {
                let outcomes = replayer.fold(batch);
                if args.effects {
                    for ((seq, event), (key, outcome)) in seqs.iter().zip(batch).zip(outcomes) {
                        let event_type = event.as_ref().map(|e| e.event_type.as_str()).unwrap_or_default();
                        let mut line = serde_json::json!({"seq": seq, "type": event_type, "key": key});
                        match (&outcome.effects, &outcome.error) {
                            (_, Some(e)) => line["error"] = serde_json::to_value(e).unwrap_or_default(),
                            (Some(fx), None) => line["effects"] = serde_json::to_value(fx).unwrap_or_default(),
                            (None, None) => {}
                        }
                        write(line);
                    }
                }
                progress.update(replayer.events, total);
            })
            .await?
        };
        anyhow::Ok(read)
    })?;
    progress.finish(replayer.events, replayer.events);
    if let Some(e) = write_error {
        return Err(e.into());
    }
    if let Some(other) = &other {
        out.flush()?;
        drop(out);
        let events = replayer.events;
        match first {
            None => println!(
                "no divergence: {name} and {} agree on all {events} events",
                other.digest()
            ),
            Some((seq, event_type, key)) => {
                println!(
                    "first divergence at sequence {seq} ({event_type}, key {key:?}); {differ} of {events} events differ"
                );
                return Ok(ExitCode::from(EXIT_CHECK_FAILED));
            }
        }
        return Ok(ExitCode::SUCCESS);
    }
    let states: serde_json::Map<String, serde_json::Value> = replayer
        .states()
        .into_iter()
        .filter(|(k, _)| args.key.as_ref().is_none_or(|want| want == *k))
        .map(|(k, v)| (k.clone(), jetfold_host::fold::state_document(v)))
        .collect();
    let mut summary = serde_json::json!({
        "plugin": name,
        "digest": digest,
        "stream": target.stream,
        "last_seq": last.last_seq,
        "events": replayer.events,
        "rejected": replayer.rejected,
        "state": states,
    });
    if args.to_time.is_some() {
        summary["later"] = last.later.into();
    }
    if args.effects {
        writeln!(out, "{summary}")?;
    } else {
        writeln!(out, "{}", serde_json::to_string_pretty(&summary)?)?;
    }
    out.flush()?;
    Ok(ExitCode::SUCCESS)
}

fn run_verify(cli: &Cli, args: &VerifyArgs) -> anyhow::Result<ExitCode> {
    use jetfold_host::replay::{Range, read_batches};
    let loader = loader(cli)?;
    let (target, plugin) = ReplayTarget::open(&args.source, &loader)?;
    let name = plugin.manifest.name.clone();
    let digest = plugin.component.digest.hex();
    // The checkpoint and the states it goes with (as of its last snapshot), read again if a
    // daemon wrote a snapshot between.
    let mut sink = jetfold_host::sink::Sink::open(&target.config.sink_target())?;
    let mut attempts = 0;
    let snapshot = |c: &Option<jetfold_host::sink::Checkpoint>| {
        c.as_ref().map(|c| (c.snapshot_seq, c.state_version))
    };
    // A partitioned daemon's config verifies its partition: its checkpoint, its keys.
    let partition = target.config.partition;
    let checkpoint_name = partition.checkpoint_name(&name);
    let (checkpoint, stored) = loop {
        let before = sink.checkpoint(&checkpoint_name)?;
        let states = sink.states(&name)?;
        if snapshot(&sink.checkpoint(&checkpoint_name)?) == snapshot(&before) {
            break (before, states);
        }
        attempts += 1;
        if attempts == 20 {
            anyhow::bail!(
                "plugin `{name}` committed during each of 20 reads of its states: verify it when its stream is quiet"
            );
        }
    };
    let Some(checkpoint) = checkpoint else {
        if partition.count > 1 {
            anyhow::bail!(
                "plugin `{name}` has no checkpoint `{checkpoint_name}` in the sink: partition {}/{} has not committed yet",
                partition.index,
                partition.count
            );
        }
        anyhow::bail!(
            "plugin `{name}` has no checkpoint in the sink: nothing to verify (for a partitioned daemon, give its config, which names its [partition])"
        );
    };
    let mut replayer = target.replayer(plugin, &args.source.plugin, args.source.jobs(), &loader)?;
    let range = Range { to_seq: Some(checkpoint.snapshot_seq), ..Range::default() };
    let mut progress = jetfold_host::progress::ProgressLine::new("verify");
    let runtime = tokio::runtime::Runtime::new()?;
    runtime.block_on(async {
        let client = jetfold_host::nats::connect(&target.config).await?;
        let js = async_nats::jetstream::new(client);
        read_batches(
            &js,
            &target.stream,
            &target.subjects,
            &range,
            &name,
            &target.verify_keys,
            |_, batch, total| {
                replayer.fold(batch);
                progress.update(replayer.events, total);
            },
        )
        .await?;
        anyhow::Ok(())
    })?;
    progress.finish(replayer.events, replayer.events);
    let replayed: std::collections::BTreeMap<String, Vec<u8>> = replayer
        .states()
        .into_iter()
        .filter(|(k, _)| partition.owns(k))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    let stored: std::collections::BTreeMap<String, Vec<u8>> =
        stored.into_iter().filter(|(k, _)| partition.owns(k)).collect();
    let mut keys: Vec<&String> = stored.keys().chain(replayed.keys()).collect();
    keys.sort();
    keys.dedup();
    let doc = |s: Option<&Vec<u8>>| s.map(|b| jetfold_host::fold::state_document(b));
    let differ: Vec<&String> =
        keys.into_iter().filter(|k| stored.get(*k) != replayed.get(*k)).collect();
    println!(
        "{name}: replayed {} events up to sequence {} (states as of that sequence; checkpoint at {} by {}, replayed with {digest})",
        replayer.events, checkpoint.snapshot_seq, checkpoint.last_seq, checkpoint.digest
    );
    if differ.is_empty() {
        let of = match partition.count {
            0 | 1 => String::new(),
            n => format!(" of partition {}/{n}", partition.index),
        };
        println!("verified: all {} states{of} match", stored.len());
        return Ok(ExitCode::SUCCESS);
    }
    if checkpoint.digest != digest {
        println!("the component differs from the version that wrote the checkpoint");
    }
    println!("{} of {} states differ:", differ.len(), stored.len().max(replayed.len()));
    for key in differ.iter().take(20) {
        let line = serde_json::json!({"key": key, "stored": doc(stored.get(*key)), "replayed": doc(replayed.get(*key))});
        println!("{line}");
    }
    if differ.len() > 20 {
        println!("… and {} more", differ.len() - 20);
    }
    Ok(ExitCode::from(EXIT_CHECK_FAILED))
}

fn run_rebuild(args: &RebuildArgs) -> anyhow::Result<ExitCode> {
    use futures::StreamExt as _;
    use jetfold_host::daemon::{RebuildReport, rebuild_subject};
    let config = jetfold_host::config::Config::load(&args.config)?;
    let subject = rebuild_subject(&config.name, &args.plugin);
    let runtime = tokio::runtime::Runtime::new()?;
    runtime.block_on(async {
        let client = jetfold_host::nats::connect(&config).await?;
        let inbox = client.new_inbox();
        let mut reports = client.subscribe(inbox.clone()).await?;
        client.publish_with_reply(subject.clone(), inbox, "".into()).await?;
        client.flush().await?;
        let mut progress =
            jetfold_host::progress::ProgressLine::new(format!("rebuild {}", args.plugin));
        let mut wait = std::time::Duration::from_secs(args.timeout_secs);
        loop {
            let Ok(next) = tokio::time::timeout(wait, reports.next()).await else {
                anyhow::bail!(
                    "no daemon `{}` answered on {subject}: is it running with this config?",
                    config.name
                );
            };
            let message = next.context("the connection closed")?;
            if message.status == Some(async_nats::StatusCode::NO_RESPONDERS) {
                anyhow::bail!(
                    "no daemon `{}` listens on {subject}: is it running with this config?",
                    config.name
                );
            }
            // Reports come every 250 ms while the rebuild runs.
            wait = std::time::Duration::from_secs(60);
            match serde_json::from_slice::<RebuildReport>(&message.payload)? {
                RebuildReport::Rebuilding { committed_seq, live_seq } => {
                    progress.update(committed_seq, live_seq.max(committed_seq))
                }
                RebuildReport::Done { after_seq } => {
                    progress.finish(after_seq, after_seq);
                    println!(
                        "rebuilt {}: the new read model took over after sequence {after_seq}",
                        args.plugin
                    );
                    return Ok(ExitCode::SUCCESS);
                }
                RebuildReport::Failed { reason } => {
                    anyhow::bail!("the rebuild of `{}` failed: {reason}", args.plugin)
                }
            }
        }
    })
}

fn run_state(args: &StateArgs) -> anyhow::Result<ExitCode> {
    use jetfold_host::query::{QueryReply, QueryRequest, subject};
    let config = jetfold_host::config::Config::load(&args.config)?;
    let request: serde_json::Value = serde_json::from_str(args.query.as_deref().unwrap_or("{}"))
        .with_context(|| {
            format!("the query is not JSON: {}", args.query.as_deref().unwrap_or(""))
        })?;
    let body = serde_json::to_vec(&QueryRequest { request, key: args.key.clone() })?;
    let runtime = tokio::runtime::Runtime::new()?;
    let reply = runtime.block_on(async {
        let client = jetfold_host::nats::connect(&config).await?;
        let ask = client.request(subject(&args.plugin), body.into());
        match tokio::time::timeout(std::time::Duration::from_millis(args.timeout_ms), ask).await {
            Ok(Ok(message)) => anyhow::Ok(message.payload),
            Ok(Err(e)) if e.kind() == async_nats::RequestErrorKind::NoResponders => {
                if let Some(kind) = local_kind(&config, &args.plugin)
                    && kind != jetfold_host::manifest::PluginKind::Projection
                {
                    anyhow::bail!(
                        "plugin `{}` is a {kind}: only projections answer queries",
                        args.plugin
                    )
                }
                anyhow::bail!(
                    "no daemon serves plugin `{}` (nothing listens on {})",
                    args.plugin,
                    subject(&args.plugin)
                )
            }
            Ok(Err(e)) => anyhow::bail!("cannot ask plugin `{}`: {e}", args.plugin),
            Err(_) => anyhow::bail!(
                "no answer from plugin `{}` within {} ms",
                args.plugin,
                args.timeout_ms
            ),
        }
    })?;
    match serde_json::from_slice::<QueryReply>(&reply)
        .context("the daemon's reply is not a query reply")?
    {
        QueryReply::Response(value) => {
            let mut out = std::io::stdout().lock();
            writeln!(out, "{}", serde_json::to_string_pretty(&value)?)?;
            out.flush()?;
            Ok(ExitCode::SUCCESS)
        }
        QueryReply::Error { kind, code, message } => {
            eprintln!(
                "query failed ({kind}{}): {message}",
                code.map(|c| format!(", {c}")).unwrap_or_default()
            );
            Ok(ExitCode::from(EXIT_CHECK_FAILED))
        }
    }
}

/// The kind of the plugin named `name` in the config's plugin directory, if one is there.
fn local_kind(
    config: &jetfold_host::config::Config,
    name: &str,
) -> Option<jetfold_host::manifest::PluginKind> {
    let dir = std::fs::read_dir(config.resolve(&config.plugin_dir)).ok()?;
    dir.flatten()
        .filter_map(|d| jetfold_host::manifest::Manifest::load(&d.path().join("plugin.toml")).ok())
        .find(|m| m.name == name)
        .map(|m| m.kind)
}

/// SIGTERM and SIGINT, caught from the moment they are installed.
struct StopSignals {
    term: tokio::signal::unix::Signal,
    int: tokio::signal::unix::Signal,
}

impl StopSignals {
    fn install() -> StopSignals {
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
async fn shutdown_signal(signals: StopSignals, drain_timeout: std::time::Duration) {
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

fn run_build(args: &BuildArgs) -> anyhow::Result<ExitCode> {
    let options = BuildOptions { target_dir: args.target_dir.clone(), debug: args.debug };
    for plugin in &args.plugins {
        let built = build_plugin(plugin, &options)?;
        println!("{} {}", built.digest, built.wasm.display());
    }
    Ok(ExitCode::SUCCESS)
}
