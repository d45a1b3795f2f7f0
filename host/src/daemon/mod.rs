//! `jetfold run`: the long-lived daemon. Each plugin runs on two threads of its own, a
//! pipeline of two stages:
//!
//! 1. the **fold** thread takes the messages its durable consumer has already delivered (a
//!    continuous pull keeps up to a batch in flight), calls the plugin for each event and
//!    checks the effects, and hands the batch on;
//! 2. the **commit** thread commits the batch's SQL effects, states, rejections, outbox and
//!    checkpoint in one transaction, publishes the outbox, then acks the batch (one ack: the
//!    consumer acks all up to the last message).
//!
//! The fold of batch N+1 overlaps the commit of batch N; the fold thread keeps the states of
//! the keys it has folded, so it never needs batch N's commit to go on. Under load batches
//! grow to `batch-size`; at a trickle each event is its own batch, so latency stays low.
//!
//! Guest calls and SQL run on these threads, off the async runtime that carries the NATS
//! connection. Failures running effects (database, NATS) are retried with exponential
//! backoff and nothing is acked meanwhile; guest failures are deterministic, so the event is
//! recorded in `jetfold_rejected` and acked.
//!
//! # Layout
//!
//! The stages, then the supervisor that runs them:
//!
//! - [`folder`]: the fold stage: a worker's loop (bind, catch up, fold until stopped,
//!   snapshots, take-overs).
//! - [`batch`]: one batch through the guest: receive, seed states, prepare, fold, settle.
//! - [`failures`]: what happens to an event that fails: signature checks, rejection, halt, the
//!   circuit breaker, dead letters; and routing accepted effects.
//! - [`commit`]: the commit stage: one transaction per batch (effects, states, rejections,
//!   outbox, checkpoint), then publish and ack.
//! - [`worker`]: a worker's threads, their stop signal and the retry policy for transient
//!   failures.
//! - [`discover`]: finding plugins: the plugin directory, the config's `[plugins.<name>]`
//!   sections, the versions a directory keeps (shadow, previous, at-seq).
//! - [`lifecycle`]: starting and stopping the daemon, its plugins and their workers.
//! - [`supervise`]: the supervisor loop: reloads, registry sync, rebuilds and status reports on
//!   their timers and signals.
//! - [`reload`]: reloads: the plugin directory, the config on SIGHUP, the registry; hot swaps
//!   at a batch boundary.
//! - [`rebuild`]: blue/green rebuilds: a new version folds the stream beside the live one and
//!   takes over when caught up.
//! - [`reporting`]: what the daemon says of itself: plugin status, lag, the status page's
//!   observations, reports to the registry.

use std::{
    collections::{BTreeMap, HashMap, HashSet},
    future::Future,
    path::PathBuf,
    sync::{Arc, mpsc},
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};
use async_nats::jetstream::{self, consumer::pull, message::Message};
use futures::{FutureExt as _, StreamExt as _};
use tokio::{runtime::Handle, sync::watch};
use tokio_util::sync::CancellationToken;

use crate::component::{ComponentLoader, LoadedComponent};
use crate::config::{Config, StartPosition};
use crate::effect::{self, Effect, LogLevel};
use crate::event::Event;
use crate::guest::{GuestInstance, StepError};
use crate::manifest::{MANIFEST_FILE, Manifest, OnError, PluginKind};
use crate::nats::{self, emit, source, source::headers};
use crate::pipeline::fold::{Folded, Keyed};
pub use crate::pipeline::step::{self, Step};
use crate::sink::{Checkpoint, Commit, OutboxMessage, Rejected, ShadowDiff, Sink, SinkTarget};
use crate::upcast::{UpcastChain, UpcasterSpec};

mod batch;
mod commit;
mod discover;
mod failures;
mod folder;
mod lifecycle;
mod rebuild;
mod reload;
mod reporting;
mod supervise;
mod worker;

pub use crate::plugin_dir::{AT_SEQ_FILE, PREVIOUS_DIR, SHADOW_DIR, read_at_seq};
pub use crate::telemetry::*;
use commit::*;
pub use discover::*;
use folder::*;
pub use supervise::*;
use worker::*;

/// Makes a native step (one per worker).
pub type NativeFactory = Arc<dyn Fn() -> anyhow::Result<Box<dyn Step>> + Send + Sync>;

/// What folds a plugin's events.
#[derive(Clone)]
pub enum Implementation {
    /// A WebAssembly component: what the daemon loads from the plugin directory.
    Component(LoadedComponent),
    /// The same contract compiled into the host, for embedding jetfold as a library and for
    /// the benchmark's native baseline. `digest` names the version in checkpoints.
    Native {
        /// The version's name in checkpoints and provenance headers.
        digest: String,
        /// Makes the step.
        make: NativeFactory,
    },
}

/// A plugin the daemon runs, with its source resolved.
#[derive(Clone)]
pub struct DaemonPlugin {
    /// The manifest.
    pub manifest: Manifest,
    /// What folds its events.
    pub implementation: Implementation,
    /// Stream to read.
    pub stream: String,
    /// Filter subjects.
    pub subjects: Vec<String>,
    /// Where a new consumer starts.
    pub start: StartPosition,
    /// When this version replaces a running one: exactly at this stream sequence (events
    /// before it are the old version's, from it on the new one's), rather than at the next
    /// batch. Read from a `promote-at-seq` file beside the manifest.
    pub at_seq: Option<u64>,
    /// A version run beside this one on the same events with its effects suppressed, its
    /// outcomes compared (read from a `shadow/` directory beside the manifest).
    pub shadow: Option<Box<DaemonPlugin>>,
    /// With `at_seq`: the version this one replaces, which folds the events before that
    /// sequence when a worker starts before it (read from a `previous/` directory beside the
    /// manifest; it may have an `at_seq` and a `previous` of its own).
    pub previous: Option<Box<DaemonPlugin>>,
    /// The upcasters of its stream, which raise old events' schema versions before it sees
    /// them (see [`crate::upcast`]).
    pub upcasters: Vec<UpcasterSpec>,
}

/// Appended to a plugin's name (its staging identity: states, checkpoint, consumer) and to
/// its tables' names while a new version rebuilds them.
pub const REBUILD_SUFFIX: &str = "__rebuild";

/// What a worker does.
#[derive(Clone)]
enum Role {
    /// Folds the plugin's events into its tables, effects performed.
    Live,
    /// Rebuilds a new version from the stream start under a staging identity, into tables of
    /// its own, emitted messages and logs suppressed, never past what the live version has
    /// committed (`ceiling`: the live worker's progress).
    Rebuild { staging: String, ceiling: watch::Receiver<Progress> },
}

impl Role {
    /// The keys this worker folds: the daemon's partition when live; every key when
    /// rebuilding (a rebuild is refused on a daemon that folds a partition).
    fn partition(&self, config: &Config) -> crate::config::Partition {
        match self {
            Role::Live => config.partition,
            Role::Rebuild { .. } => crate::config::Partition::default(),
        }
    }
}

/// What a plugin has done since the daemon started, updated after every commit.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Progress {
    /// The last stream sequence committed (the checkpoint).
    pub committed_seq: u64,
    /// The version that committed it.
    pub digest: String,
    /// Events folded and committed (rejected ones included).
    pub events: u64,
    /// Events the plugin rejected.
    pub rejected: u64,
    /// Batches committed.
    pub batches: u64,
    /// Transient failures retried so far: commits, publishes of emitted messages, state
    /// reads, binding the source.
    pub retries: u64,
    /// Time spent folding (guest calls and effect checks).
    pub fold_time: Duration,
    /// Time spent committing, publishing and acking.
    pub commit_time: Duration,
    /// Versions swapped in and folding (counted at the new version's first event).
    pub swaps: u64,
    /// The last swap's pause: from the end of the old version's last event to the start of
    /// the new version's first (idle time included, if no event was waiting).
    pub last_swap_pause: Option<Duration>,
    /// The last version refused since the running one was loaded, and why.
    pub refused: Option<Refusal>,
    /// The transient failure the plugin is retrying now (its stream missing, the database or
    /// NATS unreachable), if any: cleared when the retried operation succeeds.
    pub stalled: Option<String>,
    /// The stream sequence of the first event the last swapped-in version folded.
    pub swapped_at_seq: Option<u64>,
    /// The shadow version folding beside the live one, if any.
    pub shadow: Option<ShadowProgress>,
    /// A new version rebuilding its states and read model from the stream start, if any.
    pub rebuild: Option<RebuildProgress>,
    /// Events rejected, by kind of failure.
    pub failures: BTreeMap<String, u64>,
    /// Effects accepted, by kind.
    pub effects: BTreeMap<String, u64>,
    /// Events sent to the dead-letter subject.
    pub dead_letters: u64,
    /// Fuel the guest calls consumed.
    pub fuel: u64,
    /// Durations of the guest calls that folded events.
    pub calls: Histogram,
    /// Where the time went, stage by stage (see [`Stages`]).
    pub stages: Stages,
    /// The last failures (at most [`RECENT_FAILURES`]), oldest first.
    pub recent_failures: std::collections::VecDeque<RecentFailure>,
}

impl DaemonPlugin {
    /// The version's identity: the component's sha256, or the native step's name.
    pub fn digest(&self) -> String {
        match &self.implementation {
            Implementation::Component(c) => c.digest.hex(),
            Implementation::Native { digest, .. } => digest.clone(),
        }
    }

    /// A fresh, initialised instance of the plugin's component.
    fn instantiate(
        &self,
        component: &LoadedComponent,
        loader: &ComponentLoader,
    ) -> anyhow::Result<GuestInstance> {
        let m = &self.manifest;
        GuestInstance::new(&m.name, component, loader.engine(), m.limits.clone(), m.config_json())
            .map_err(|e| anyhow::anyhow!("plugin `{}` failed to start: {e}", m.name))
    }

    fn step(&self, loader: &ComponentLoader) -> anyhow::Result<Box<dyn Step>> {
        let chain = match self.upcasters.is_empty() {
            true => None,
            false => Some(UpcastChain::new(&self.upcasters, loader)?),
        };
        Ok(match &self.implementation {
            Implementation::Component(c) => step::of_instance(self.instantiate(c, loader)?, chain),
            Implementation::Native { make, .. } => step::upcasting(make()?, chain),
        })
    }

    /// Whether this version exports `migrate`, so it may change the state version in place.
    pub fn migrates(&self) -> bool {
        match &self.implementation {
            Implementation::Component(c) => c.migrates(),
            Implementation::Native { .. } => false,
        }
    }

    /// What a worker folds with: the plugin's step and, if it has one, its shadow's.
    fn prepare(&self, loader: &ComponentLoader) -> anyhow::Result<(Box<dyn Step>, Option<Shadow>)> {
        if let Some(shadow) = &self.shadow
            && shadow.manifest.state.version != self.manifest.state.version
        {
            bail!(
                "the shadow version declares state version {} and the live one {}: a shadow folds the live version's states, so they must agree",
                shadow.manifest.state.version,
                self.manifest.state.version
            );
        }
        let shadow = self.shadow.as_deref().map(|sh| Shadow::new(sh, loader)).transpose()?;
        Ok((self.step(loader)?, shadow))
    }
}

/// What one batch's folding counted, for the plugin's progress.
#[derive(Debug, Default)]
struct BatchStats {
    calls: Histogram,
    fuel: u64,
    effects: BTreeMap<&'static str, u64>,
    dead_letters: u64,
    stages: Stages,
}

/// An event of a [`PreparedBatch`]: its message's index, its key, its event and outcome.
type Slot = (usize, String, Option<(Event, crate::pipeline::fold::Outcome)>);

/// A batch folded ahead of [`Folder::fold`]'s loop, which takes each event's outcome in turn.
struct PreparedBatch {
    /// Per event folded, in message order: its message's index, its key, and (until the
    /// loop takes it) the event and its outcome.
    slots: Vec<Slot>,
    next: usize,
    /// The states of the keys the batch changed, as of its end.
    states: HashMap<String, Vec<u8>>,
    /// How many slots the loop has taken.
    taken: usize,
}

impl PreparedBatch {
    /// The event of message `index` and its outcome, if the batch folded it.
    fn take(&mut self, index: usize) -> Option<(Event, crate::pipeline::fold::Outcome)> {
        while self.slots.get(self.next).is_some_and(|(i, _, _)| *i < index) {
            self.next += 1;
        }
        let slot = self.slots.get_mut(self.next).filter(|(i, _, _)| *i == index)?;
        let item = slot.2.take();
        self.next += 1;
        self.taken = self.next;
        item
    }
}

/// The subject on which daemon `daemon` takes `jetfold rebuild` requests for `plugin`.
pub fn rebuild_subject(daemon: &str, plugin: &str) -> String {
    format!("jetfold.rebuild.{daemon}.{plugin}")
}

/// What a daemon answers a rebuild request with: progress reports, then how it ended.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(tag = "state", rename_all = "kebab-case")]
pub enum RebuildReport {
    /// Folding from the stream start into tables of its own.
    Rebuilding {
        /// The last sequence the rebuild committed.
        committed_seq: u64,
        /// The last sequence the live read model committed (what it catches up with).
        live_seq: u64,
    },
    /// The rebuilt read model took over.
    Done {
        /// It took over after this sequence.
        after_seq: u64,
    },
    /// The rebuild did not take over; the live read model goes on.
    Failed {
        /// Why.
        reason: String,
    },
}

/// How far a rebuild has got.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RebuildProgress {
    /// The version being rebuilt.
    pub digest: String,
    /// The last stream sequence it committed (into its own tables).
    pub committed_seq: u64,
}

/// What a shadow version has done since it started.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ShadowProgress {
    /// Its digest.
    pub digest: String,
    /// Events it folded beside the live version.
    pub events: u64,
    /// Events where its outcome (state, effects, or error) differed.
    pub diffs: u64,
}

/// An outcome as a shadow comparison sees it, as JSON: `{"state", "effects"}` or
/// `{"error": {"kind", "code", "message"}}`.
fn describe(outcome: &Result<(Vec<u8>, Vec<Effect>), StepError>) -> String {
    let doc = match outcome {
        Ok((state, effects)) => serde_json::json!({
            "state": crate::fold::state_document(state),
            "effects": effects,
        }),
        Err(e) => serde_json::json!({ "error": e }),
    };
    doc.to_string()
}

/// A version of a plugin that was not loaded; the running version stayed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    /// Its digest, or the plugin directory when it could not be read that far.
    pub version: String,
    /// Why.
    pub reason: String,
}

/// A new version of a running plugin, ready to fold.
struct Swap {
    plugin: DaemonPlugin,
    step: Box<dyn Step>,
    shadow: Option<Shadow>,
}

/// A shadow version, ready to fold beside the live one.
struct Shadow {
    digest: String,
    manifest: Manifest,
    step: Box<dyn Step>,
}

impl Shadow {
    /// Instantiates the shadow version `shadow`.
    fn new(shadow: &DaemonPlugin, loader: &ComponentLoader) -> anyhow::Result<Shadow> {
        let step = shadow
            .step(loader)
            .map_err(|e| anyhow::anyhow!("the shadow version failed to start: {e:#}"))?;
        Ok(Shadow { digest: shadow.digest(), manifest: shadow.manifest.clone(), step })
    }
}

/// One plugin's workers, as the daemon controls them.
struct Running {
    /// What the version last handed over is (digest, manifest, source): the running one, or
    /// the one rebuilding to replace it.
    fingerprint: String,
    stop: worker::StopSignal,
    swaps: mpsc::Sender<Swap>,
    thread: std::thread::JoinHandle<anyhow::Result<()>>,
    service: Option<tokio::task::JoinHandle<()>>,
    progress: watch::Receiver<Progress>,
    /// Where the daemon reports refused versions.
    report: watch::Sender<Progress>,
    /// The version handed to the workers last: its manifest's directory (a plugin whose
    /// directory goes away is stopped), kind, state version, source, digest and shadow.
    plugin: DaemonPlugin,
    /// A new version rebuilding beside it, to take over when caught up.
    rebuild: Option<Worker>,
}

/// A worker thread (a fold thread and its commit thread) and how to stop it.
struct Worker {
    /// The version it runs.
    plugin: DaemonPlugin,
    stop: worker::StopSignal,
    thread: std::thread::JoinHandle<anyhow::Result<()>>,
    progress: watch::Receiver<Progress>,
}

impl Worker {
    /// Stops it after it drains; its result.
    async fn stop(self, name: &str) -> Result<(), String> {
        self.stop.stop();
        let thread = self.thread;
        match tokio::task::spawn_blocking(move || thread.join()).await {
            Ok(Ok(Ok(()))) => Ok(()),
            Ok(Ok(Err(e))) => Err(format!("{name}: {e:#}")),
            _ => Err(format!("{name}: worker panicked")),
        }
    }
}

impl Running {
    fn refuse(&self, version: String, reason: String) {
        self.report.send_modify(|p| p.refused = Some(Refusal { version, reason }));
    }

    /// Stops the plugin's workers (and its rebuild's) after they drain; their result.
    async fn stop(self, name: &str) -> Result<(), String> {
        self.stop.stop();
        if let Some(service) = self.service {
            service.abort();
        }
        if let Some(rebuild) = self.rebuild
            && let Err(e) = rebuild.stop(name).await
        {
            tracing::warn!(plugin = %name, error = %e, "the rebuild stopped with an error");
        }
        let thread = self.thread;
        match tokio::task::spawn_blocking(move || thread.join()).await {
            Ok(Ok(Ok(()))) => Ok(()),
            Ok(Ok(Err(e))) => Err(format!("{name}: {e:#}")),
            _ => Err(format!("{name}: worker panicked")),
        }
    }
}

/// Whether `a` and `b` fold alike: the same version, source and upcasters, whatever shadow
/// each has beside it.
fn same_live_version(a: &DaemonPlugin, b: &DaemonPlugin) -> bool {
    let live = |p: &DaemonPlugin| fingerprint(&DaemonPlugin { shadow: None, ..p.clone() });
    live(a) == live(b)
}

fn fingerprint(plugin: &DaemonPlugin) -> String {
    let manifest = serde_json::to_string(&plugin.manifest).expect("a manifest serialises");
    let shadow = plugin.shadow.as_deref().map(fingerprint).unwrap_or_default();
    let upcasters: Vec<String> = plugin
        .upcasters
        .iter()
        .map(|u| {
            let m = serde_json::to_string(&u.manifest).expect("a manifest serialises");
            format!("{} {m}", u.component.digest.hex())
        })
        .collect();
    format!(
        "{} {manifest} {} {:?} {:?} {:?} shadow: {shadow} upcasters: {upcasters:?}",
        plugin.digest(),
        plugin.stream,
        plugin.subjects,
        plugin.start,
        plugin.at_seq
    )
}

/// A running daemon: every plugin's workers, until [`Daemon::stop`].
pub struct Daemon {
    config: Config,
    /// The plugin directory as last loaded.
    seen: Vec<(PathBuf, u64, Option<std::time::SystemTime>)>,
    loader: ComponentLoader,
    client: async_nats::Client,
    js: jetstream::Context,
    /// The fleet registry, when the daemon follows one.
    registry: Option<crate::registry::Registry>,
    running: BTreeMap<String, Running>,
    /// Pushed plugins not running because their version was refused, and why.
    refused: BTreeMap<String, Refusal>,
    /// The registry's desired versions as last read (on start and on each change the watch
    /// reports), so a status never reads the registry.
    pushed: Vec<crate::registry::Desired>,
    /// Plugins whose workers stopped on their own (circuit breaker, halt, error), and why.
    stopped: BTreeMap<String, Refusal>,
    /// Every plugin this daemon has run, as its workers last left it: a stopped, paused or
    /// restarted plugin still shows its kind, checkpoint and lag, and its counters go on from
    /// there (they count since the daemon started).
    history: BTreeMap<String, Past>,
    /// Set by [`Daemon::stop`]: the status lists what it ran as stopped.
    stopping: bool,
    /// The plugins running when [`Daemon::stop`] began.
    ran_to_stop: std::collections::BTreeSet<String>,
    /// How its workers drain when it stops.
    drain: Drain,
}

/// A plugin as its last workers left it.
struct Past {
    kind: PluginKind,
    stream: String,
    /// Their progress channel: it holds what they reported last, also after they stopped.
    progress: watch::Receiver<Progress>,
}

/// Runs the daemon until `shutdown` completes, then drains: every worker finishes (commits
/// and acks) the batches in hand and stops. The plugin directory is checked for new, changed
/// and removed plugins every `plugin-dir-poll-ms`.
pub async fn run(config: Config, shutdown: impl Future<Output = ()>) -> anyhow::Result<()> {
    supervise(Daemon::start(config).await?, None, shutdown).await
}

/// A digest's first 12 hex digits, as people read it.
fn short(digest: &str) -> &str {
    &digest[..digest.len().min(12)]
}

/// The digest of the component a plugin directory's manifest names (read without
/// validating the manifest), or `""` if there is none to read.
fn digest_in(dir: &std::path::Path) -> String {
    let wasm = std::fs::read_to_string(dir.join(MANIFEST_FILE))
        .ok()
        .and_then(|t| t.parse::<toml::Table>().ok())
        .and_then(|t| t.get("wasm").and_then(|w| w.as_str()).map(|w| dir.join(w)));
    wasm.and_then(|w| std::fs::read(w).ok())
        .map(|bytes| crate::component::PluginDigest::of(&bytes).hex())
        .unwrap_or_default()
}

/// The name a plugin directory's manifest gives (read without validating it), else the
/// directory's name.
fn name_in(dir: &std::path::Path) -> String {
    std::fs::read_to_string(dir.join(MANIFEST_FILE))
        .ok()
        .and_then(|t| t.parse::<toml::Table>().ok())
        .and_then(|t| t.get("name").and_then(|n| n.as_str()).map(str::to_string))
        .unwrap_or_else(|| dir.file_name().unwrap_or_default().to_string_lossy().into_owned())
}

/// Every file under the plugin directory's subdirectories, with its size and change time:
/// what tells a poll that something was written, renamed or removed.
fn plugin_dir_snapshot(config: &Config) -> Vec<(PathBuf, u64, Option<std::time::SystemTime>)> {
    let mut files = Vec::new();
    let entries = plugin_dirs(config).into_iter().flat_map(|d| std::fs::read_dir(d).into_iter());
    for entry in entries.flatten().flatten() {
        for file in std::fs::read_dir(entry.path()).into_iter().flatten().flatten() {
            if let Ok(meta) = file.metadata()
                && meta.is_file()
            {
                files.push((file.path(), meta.len(), meta.modified().ok()));
            }
        }
    }
    files.sort();
    files
}

/// What the registry's sync runs on a staged plugin before it installs it: [`check_staged`],
/// off the async threads.
fn staged_check(
    config: &Config,
    loader: &ComponentLoader,
) -> impl Fn(PathBuf) -> futures::future::BoxFuture<'static, anyhow::Result<()>> + Sync {
    let (config, loader) = (config.clone(), loader.clone());
    move |staging: PathBuf| {
        let (config, loader) = (config.clone(), loader.clone());
        let check = tokio::task::spawn_blocking(move || check_staged(&config, &loader, &staging));
        async move { check.await? }.boxed()
    }
}

fn loader(config: &Config) -> anyhow::Result<ComponentLoader> {
    let cache = config
        .cache_dir
        .clone()
        .map(|d| config.resolve(&d))
        .or_else(ComponentLoader::default_cache_dir);
    ComponentLoader::new(cache)
}

/// A stop that could not finish its drain within `drain-timeout-ms` (NATS or the database
/// unreachable): nothing is lost, and the next start finishes it. What was committed stays
/// committed; committed messages not yet published stay in the outbox, published first at the
/// next start; events not acked are delivered again and skipped by the checkpoint; events
/// folded but not committed are folded again.
#[derive(Debug, thiserror::Error)]
#[error(
    "the drain did not finish within drain-timeout-ms ({} ms); left for the next start: {}",
    timeout.as_millis(),
    left.join("; ")
)]
pub struct DrainCutShort {
    /// The bound.
    pub timeout: Duration,
    /// What was left, a line each.
    pub left: Vec<String>,
}

/// How long stopping workers have after the drain's deadline to give up and end.
const DRAIN_GRACE: Duration = Duration::from_millis(500);

/// How a stopping worker drains: until when it goes on retrying its commits and publishes,
/// and where it notes what it had to leave. Shared by the daemon's workers.
#[derive(Clone)]
struct Drain {
    timeout: Duration,
    /// Set when the daemon stops; a worker stopped alone gives itself `timeout`.
    deadline: Arc<std::sync::OnceLock<Instant>>,
    /// What stopping workers left unfinished, a line each.
    left: Arc<std::sync::Mutex<Vec<String>>>,
}

impl Drain {
    fn new(timeout: Duration) -> Drain {
        Drain { timeout, deadline: Default::default(), left: Default::default() }
    }

    /// When a worker that began draining at `since` gives up.
    fn until(&self, since: Instant) -> Instant {
        self.deadline.get().copied().unwrap_or(since + self.timeout)
    }

    fn leave(&self, what: String) {
        tracing::warn!("stopping: left for the next start: {what}");
        self.left.lock().unwrap_or_else(|e| e.into_inner()).push(what);
    }
}
