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

use crate::component::{ComponentLoader, LoadedComponent};
use crate::config::{Config, StartPosition};
use crate::effect::{self, Effect, LogLevel};
use crate::event::Event;
use crate::fold::StepError;
use crate::guest::GuestInstance;
use crate::manifest::{MANIFEST_FILE, Manifest, OnError, PluginKind};
use crate::nats::{self, emit, source, source::headers};
use crate::pipeline::fold::{Folded, Keyed};
pub use crate::pipeline::step::{self, Step};
use crate::sink::{Checkpoint, Commit, OutboxMessage, Rejected, ShadowDiff, Sink, SinkTarget};
use crate::upcast::{UpcastChain, UpcasterSpec};

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

/// The directory beside a manifest that holds a shadow version.
pub const SHADOW_DIR: &str = "shadow";

/// The directory beside a manifest that holds the version a promoted one replaces.
pub const PREVIOUS_DIR: &str = "previous";

/// The file beside a manifest that holds a version's promotion sequence.
pub const AT_SEQ_FILE: &str = "promote-at-seq";

/// The promotion sequence in a plugin directory's [`AT_SEQ_FILE`], if it has one.
pub fn read_at_seq(dir: &std::path::Path) -> anyhow::Result<Option<u64>> {
    let path = dir.join(AT_SEQ_FILE);
    match std::fs::read_to_string(&path) {
        Ok(text) => Ok(Some(
            text.trim()
                .parse::<u64>()
                .with_context(|| format!("{}: not a stream sequence: {text:?}", path.display()))?,
        )),
        Err(_) => Ok(None),
    }
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

/// Loads every plugin under the config's plugin directory; errors name the file at fault.
pub fn discover(config: &Config, loader: &ComponentLoader) -> anyhow::Result<Vec<DaemonPlugin>> {
    let (plugins, broken) = discover_runnable(config, loader)?;
    match broken.into_iter().next() {
        Some((_, e)) => Err(e),
        None => Ok(plugins),
    }
}

/// Plugin directories that cannot be loaded, with why.
type BrokenDirs = Vec<(PathBuf, anyhow::Error)>;

/// Loads every plugin under the config's plugin directories: those ready to run, and the
/// directories of those that cannot be loaded.
fn discover_runnable(
    config: &Config,
    loader: &ComponentLoader,
) -> anyhow::Result<(Vec<DaemonPlugin>, BrokenDirs)> {
    let (mut plugins, mut broken) = (Vec::new(), Vec::new());
    for found in discover_all(config, loader, Wanted::All)? {
        match found {
            Found::Plugin(p) => plugins.push(*p),
            Found::Disabled | Found::Upcaster(_) | Found::Unwanted(_) => {}
            Found::Broken(dir, e) => broken.push((dir, e)),
        }
    }
    Ok((plugins, broken))
}

/// Checks a plugin the registry staged in `staging` (see [`crate::registry::Registry::sync`])
/// as the daemon would run it: loaded with the config's settings and instantiated, with its
/// shadow and the versions it replaces before its `at_seq`.
pub(crate) fn check_staged(
    config: &Config,
    loader: &ComponentLoader,
    staging: &std::path::Path,
) -> anyhow::Result<()> {
    for found in discover_in(config, loader, Wanted::All, vec![staging.to_path_buf()])? {
        match found {
            Found::Plugin(plugin) => {
                let mut version = Some(&*plugin);
                while let Some(v) = version {
                    v.prepare(loader)?;
                    version = v.previous.as_deref();
                }
            }
            Found::Broken(_, e) => return Err(e),
            Found::Disabled | Found::Upcaster(_) | Found::Unwanted(_) => {}
        }
    }
    Ok(())
}

/// The `[plugins.<name>]` sections of `config` that name no plugin in its plugin directories
/// nor among `elsewhere` (e.g. the registry's), each as a sentence with the closest name
/// there is: a typo there would otherwise be ignored, silently.
pub fn unknown_plugin_sections(config: &Config, elsewhere: &[String]) -> Vec<String> {
    let mut known: Vec<String> = elsewhere.to_vec();
    for dir in plugin_dirs(config) {
        for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
            // The name alone, so a manifest broken elsewhere still counts as its plugin.
            let text = std::fs::read_to_string(entry.path().join(MANIFEST_FILE));
            let name = text.ok().and_then(|t| {
                let table: toml::Table = toml::from_str(&t).ok()?;
                table.get("name")?.as_str().map(str::to_string)
            });
            known.extend(name);
        }
    }
    let closest = |name: &str| {
        known
            .iter()
            .map(|k| (strsim::damerau_levenshtein(name, k), k))
            .filter(|(d, _)| *d <= 3)
            .min()
            .map(|(_, k)| format!(" (did you mean `{k}`?)"))
            .unwrap_or_default()
    };
    config
        .plugins
        .keys()
        .filter(|name| !known.contains(name))
        .map(|name| {
            format!(
                "the config's [plugins.{name}] names no plugin in {}{}",
                config.resolve(&config.plugin_dir).display(),
                closest(name)
            )
        })
        .collect()
}

/// Refuses a config whose `[plugins.<name>]` sections name plugins there are not, unless the
/// daemon follows a registry (where plugins come and go with pushes): then each is a warning.
fn check_plugin_sections(
    config: &Config,
    follows_registry: bool,
    pushed: &[String],
) -> anyhow::Result<()> {
    let unknown = unknown_plugin_sections(config, pushed);
    if unknown.is_empty() {
        return Ok(());
    }
    if !follows_registry {
        bail!("{}", unknown.join("; "));
    }
    for problem in unknown {
        tracing::warn!("{problem}, nor in the registry: the section has no effect");
    }
    Ok(())
}

/// The upcasters a daemon with `config` runs before the plugins reading `stream` (for tools
/// that fold a stream as the daemon does: replay, verify).
pub fn stream_upcasters(
    config: &Config,
    loader: &ComponentLoader,
    stream: &str,
) -> anyhow::Result<Vec<UpcasterSpec>> {
    let mut upcasters = Vec::new();
    if !config.resolve(&config.plugin_dir).is_dir() {
        return Ok(upcasters); // a config for tools only: no plugins, so no upcasters
    }
    for found in discover_all(config, loader, Wanted::Upcasters)? {
        if let Found::Upcaster(u) = found
            && u.reads(stream)
        {
            upcasters.push(*u);
        }
    }
    Ok(upcasters)
}

/// What a plugin directory holds.
enum Found {
    /// A plugin ready to run.
    Plugin(Box<DaemonPlugin>),
    /// A plugin the config disables.
    Disabled,
    /// An upcaster: not run on its own, but before the plugins of its stream.
    Upcaster(Box<UpcasterSpec>),
    /// A plugin of a kind the caller did not ask for (not loaded; it still replaces a
    /// same-named one of an earlier directory).
    Unwanted(String),
    /// A plugin that cannot be loaded: its directory and why.
    Broken(PathBuf, anyhow::Error),
}

/// The directories plugins are read from: the plugin directory, then (when the daemon follows
/// the registry) the registry's, whose plugins replace same-named ones of the first.
fn plugin_dirs(config: &Config) -> Vec<PathBuf> {
    let mut dirs = vec![config.resolve(&config.plugin_dir)];
    if config.registry.enabled {
        dirs.push(config.resolve(&config.registry.dir));
    }
    dirs
}

/// Which plugins [`discover_all`] loads (the others' components are not read).
#[derive(Clone, Copy, PartialEq, Eq)]
enum Wanted {
    All,
    Upcasters,
}

fn discover_all(
    config: &Config,
    loader: &ComponentLoader,
    wanted: Wanted,
) -> anyhow::Result<Vec<Found>> {
    discover_in(config, loader, wanted, plugin_dirs(config))
}

/// [`discover_all`] over `dirs`, a later one's plugins replacing same-named ones of an earlier.
fn discover_in(
    config: &Config,
    loader: &ComponentLoader,
    wanted: Wanted,
    dirs: Vec<PathBuf>,
) -> anyhow::Result<Vec<Found>> {
    let mut manifests: Vec<PathBuf> = Vec::new();
    for (i, dir) in dirs.into_iter().enumerate() {
        let entries = match std::fs::read_dir(&dir) {
            Ok(entries) => entries,
            // The registry's directory appears with the first push.
            Err(_) if i > 0 => continue,
            Err(e) => {
                return Err(e)
                    .with_context(|| format!("failed to read plugin directory {}", dir.display()));
            }
        };
        let mut found: Vec<PathBuf> = entries
            .filter_map(|e| e.ok().map(|e| e.path().join(MANIFEST_FILE)))
            .filter(|p| p.exists())
            .collect();
        found.sort();
        manifests.extend(found);
    }
    // The config's [limits] fill in what a manifest does not set.
    let with_defaults = |mut manifest: Manifest| -> anyhow::Result<Manifest> {
        manifest.limits = crate::manifest::Limits::merged(&config.limits, &manifest.limits_set)
            .map_err(|e| anyhow::anyhow!("{}: [limits]: {e}", manifest.dir.display()))?;
        Ok(manifest)
    };
    let load = |path: &PathBuf| -> anyhow::Result<Found> {
        let manifest = with_defaults(Manifest::load(path)?)?;
        let overrides = config.plugins.get(&manifest.name).cloned().unwrap_or_default();
        if !overrides.enabled {
            return Ok(Found::Disabled);
        }
        if wanted == Wanted::Upcasters && manifest.kind != PluginKind::Upcaster {
            return Ok(Found::Unwanted(manifest.name));
        }
        if manifest.kind == PluginKind::Upcaster {
            let component = loader.load(manifest.kind, &manifest.wasm_path())?;
            return Ok(Found::Upcaster(Box::new(UpcasterSpec { manifest, component })));
        }
        let stream = overrides.stream.or(manifest.source.stream.clone()).with_context(|| {
            format!(
                "{}: no [source] stream (and none in the config's [plugins.{}])",
                path.display(),
                manifest.name
            )
        })?;
        let subjects = overrides.subjects.unwrap_or_else(|| manifest.source.subjects.clone());
        let component = loader.load(manifest.kind, &manifest.wasm_path())?;
        let at_seq = read_at_seq(&manifest.dir)?;
        let shadow_manifest = manifest.dir.join(SHADOW_DIR).join(MANIFEST_FILE);
        let shadow = match shadow_manifest.exists() {
            true => {
                let m = with_defaults(Manifest::load(&shadow_manifest)?)?;
                if (m.name.as_str(), m.kind) != (manifest.name.as_str(), manifest.kind) {
                    bail!(
                        "{}: a shadow must be the same plugin ({} {}), not {} {}",
                        shadow_manifest.display(),
                        manifest.kind,
                        manifest.name,
                        m.kind,
                        m.name
                    );
                }
                let component = loader.load(m.kind, &m.wasm_path())?;
                Some(Box::new(DaemonPlugin {
                    manifest: m,
                    implementation: Implementation::Component(component),
                    stream: stream.clone(),
                    subjects: subjects.clone(),
                    start: StartPosition::default(),
                    at_seq: None,
                    shadow: None,
                    previous: None,
                    upcasters: Vec::new(),
                }))
            }
            false => None,
        };
        let start = overrides.start.unwrap_or_default();
        let previous = match at_seq {
            Some(_) => load_previous(config, loader, &manifest, (&stream, &subjects, start))?,
            None => None,
        };
        Ok(Found::Plugin(Box::new(DaemonPlugin {
            manifest,
            implementation: Implementation::Component(component),
            stream,
            subjects,
            start,
            at_seq,
            shadow,
            previous,
            upcasters: Vec::new(),
        })))
    };
    let mut all: Vec<Found> = manifests
        .iter()
        .map(|path| {
            let dir = path.parent().expect("a manifest path has a directory").to_path_buf();
            load(path).unwrap_or_else(|e| Found::Broken(dir, e))
        })
        .collect();
    // A later directory's plugin replaces an earlier one of the same name.
    let mut seen = std::collections::HashSet::new();
    for found in all.iter_mut().rev() {
        let name = match found {
            Found::Plugin(p) => &p.manifest.name,
            Found::Upcaster(u) => &u.manifest.name,
            Found::Unwanted(name) => name,
            _ => continue,
        };
        if !seen.insert(name.clone()) {
            *found = Found::Disabled;
        }
    }
    // Each plugin (and its shadow) gets the upcasters of its stream.
    let upcasters: Vec<UpcasterSpec> = all
        .iter()
        .filter_map(|f| match f {
            Found::Upcaster(u) => Some((**u).clone()),
            _ => None,
        })
        .collect();
    for found in &mut all {
        if let Found::Plugin(p) = found {
            let mine: Vec<UpcasterSpec> =
                upcasters.iter().filter(|u| u.reads(&p.stream)).cloned().collect();
            if let Some(shadow) = &mut p.shadow {
                shadow.upcasters.clone_from(&mine);
            }
            let mut previous = p.previous.as_deref_mut();
            while let Some(v) = previous {
                v.upcasters.clone_from(&mine);
                previous = v.previous.as_deref_mut();
            }
            p.upcasters = mine;
        }
    }
    Ok(all)
}

/// The version in the `previous/` directory beside `current`'s manifest (which has an
/// `at_seq`), if there is one: the same plugin, read from the same source, with the version
/// it replaced in turn when it has an `at_seq` of its own.
fn load_previous(
    config: &Config,
    loader: &ComponentLoader,
    current: &Manifest,
    (stream, subjects, start): (&str, &[String], StartPosition),
) -> anyhow::Result<Option<Box<DaemonPlugin>>> {
    let path = current.dir.join(PREVIOUS_DIR).join(MANIFEST_FILE);
    if !path.exists() {
        return Ok(None);
    }
    let mut manifest = Manifest::load(&path)?;
    manifest.limits = crate::manifest::Limits::merged(&config.limits, &manifest.limits_set)
        .map_err(|e| anyhow::anyhow!("{}: [limits]: {e}", manifest.dir.display()))?;
    if (manifest.name.as_str(), manifest.kind) != (current.name.as_str(), current.kind) {
        bail!(
            "{}: the version a promoted one replaces must be the same plugin ({} {}), not {} {}",
            path.display(),
            current.kind,
            current.name,
            manifest.kind,
            manifest.name
        );
    }
    let component = loader.load(manifest.kind, &manifest.wasm_path())?;
    let at_seq = read_at_seq(&manifest.dir)?;
    let previous = match at_seq {
        Some(_) => load_previous(config, loader, &manifest, (stream, subjects, start))?,
        None => None,
    };
    Ok(Some(Box::new(DaemonPlugin {
        manifest,
        implementation: Implementation::Component(component),
        stream: stream.to_string(),
        subjects: subjects.to_vec(),
        start,
        at_seq,
        shadow: None,
        previous,
        upcasters: Vec::new(),
    })))
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

/// How many recent failures a plugin's progress keeps.
pub const RECENT_FAILURES: usize = 20;

/// An event a plugin rejected, as the status page lists it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct RecentFailure {
    /// When it was committed.
    pub at: chrono::DateTime<chrono::Utc>,
    /// Stream sequence.
    pub seq: u64,
    /// State key.
    pub key: String,
    /// Kind of failure.
    pub kind: String,
    /// What happened.
    pub message: String,
}

/// Counts of durations in fixed buckets (Prometheus' histogram, non-cumulative here).
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct Histogram {
    /// Observations at most each of [`Histogram::BOUNDS`] (and above the one before).
    pub buckets: [u64; Histogram::BOUNDS.len()],
    /// Observations.
    pub count: u64,
    /// Their sum, in nanoseconds.
    pub sum_nanos: u64,
}

impl Histogram {
    /// Upper bounds of the buckets, in seconds: a guest call takes tens of microseconds.
    pub const BOUNDS: [f64; 12] =
        [0.00001, 0.000025, 0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.01, 0.05, 0.25, 1.0];

    /// Counts one duration.
    pub fn observe(&mut self, d: Duration) {
        let secs = d.as_secs_f64();
        if let Some(i) = Self::BOUNDS.iter().position(|b| secs <= *b) {
            self.buckets[i] += 1;
        }
        self.count += 1;
        self.sum_nanos += d.as_nanos() as u64;
    }

    /// Adds `other`'s counts.
    pub fn merge(&mut self, other: &Histogram) {
        for (a, b) in self.buckets.iter_mut().zip(&other.buckets) {
            *a += b;
        }
        self.count += other.count;
        self.sum_nanos += other.sum_nanos;
    }
}

/// Time spent per stage of the pipeline, summed over the batches committed: what
/// `docs/performance.md` reads per event.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Stages {
    /// Fold thread: waiting for messages and taking them from the client (the client itself
    /// reads them off the connection on the runtime's threads). In a backlog it stays near
    /// zero unless the stream delivers slower than the plugin folds.
    pub read: Duration,
    /// Fold thread: checking and decoding the messages into events, computing their keys.
    pub decode: Duration,
    /// Fold thread: reading the states of keys not in memory.
    pub states: Duration,
    /// Fold thread: the guest calls (with the effect checks of the batch path).
    pub guest: Duration,
    /// Fold thread: the rest of the fold: routing effects, rejections, snapshots.
    pub route: Duration,
    /// Commit thread: the transaction (SQL effects, states, rejections, outbox, checkpoint).
    pub commit: Duration,
    /// Commit thread: publishing the outbox.
    pub publish: Duration,
    /// Commit thread: acking the batch.
    pub ack: Duration,
}

impl Stages {
    fn add(&mut self, other: &Stages) {
        self.read += other.read;
        self.decode += other.decode;
        self.states += other.states;
        self.guest += other.guest;
        self.route += other.route;
        self.commit += other.commit;
        self.publish += other.publish;
        self.ack += other.ack;
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
    stop: watch::Sender<bool>,
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
    stop: watch::Sender<bool>,
    thread: std::thread::JoinHandle<anyhow::Result<()>>,
    progress: watch::Receiver<Progress>,
}

impl Worker {
    /// Stops it after it drains; its result.
    async fn stop(self, name: &str) -> Result<(), String> {
        let _ = self.stop.send(true);
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
        let _ = self.stop.send(true);
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

/// Keeps `daemon` running until `shutdown`: polls the plugin directory, and with
/// `config_file`, SIGHUP re-reads that file and applies it (changed plugins swap, unchanged
/// ones are untouched). Then drains and stops.
pub async fn supervise(
    mut daemon: Daemon,
    config_file: Option<PathBuf>,
    shutdown: impl Future<Output = ()>,
) -> anyhow::Result<()> {
    let mut hangups = match &config_file {
        Some(_) => Some(
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())
                .context("cannot listen for SIGHUP")?,
        ),
        None => None,
    };
    let hangup = async |h: &mut Option<tokio::signal::unix::Signal>| match h {
        Some(h) => h.recv().await,
        None => std::future::pending().await,
    };
    let mut changes = None;
    let mut report_due = tokio::time::Instant::now();
    // Stopped workers and rebuilds are checked on a clock of their own: the loop's other
    // timers restart each turn.
    let mut housekeeping = tokio::time::interval(Duration::from_millis(50));
    let mut rebuild_requests = daemon
        .client
        .subscribe(format!("jetfold.rebuild.{}.*", daemon.config.name))
        .await
        .context("cannot listen for rebuild requests")?;
    housekeeping.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // The HTTP endpoint serves the last observation, renewed every second.
    let (observed, observations) = watch::channel(Arc::new(daemon.observe(None).await));
    let http = match daemon.config.http.listen.as_str() {
        "" => None,
        address => match crate::http::bind(address).await {
            Ok(listener) => {
                let at = listener.local_addr().map_or(address.to_string(), |a| a.to_string());
                tracing::info!(address = %at, "serving the status page at http://{at}/ and /metrics, /healthz, /readyz, /plugins");
                Some(tokio::spawn(crate::http::serve(listener, observations)))
            }
            Err(e) => {
                tracing::error!(error = %format!("{e:#}"), "no HTTP endpoint (metrics, health, status page); the daemon goes on without it");
                None
            }
        },
    };
    let mut polling: Option<(u64, tokio::time::Interval)> = None;
    let mut observing = tokio::time::interval(Duration::from_secs(1));
    observing.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tokio::pin!(shutdown);
    loop {
        if let Some(registry) = &daemon.registry {
            if changes.is_none() {
                match registry.watch().await {
                    Ok(watch) => changes = Some(watch),
                    Err(e) => {
                        tracing::warn!(error = %format!("{e:#}"), "cannot watch the registry; retrying")
                    }
                }
            }
            if tokio::time::Instant::now() >= report_due {
                // Reporting and observing only read: a stop does not wait for them (with NATS
                // unreachable, each of their requests waits out its timeout).
                tokio::select! {
                    _ = daemon.report_status() => {}
                    _ = &mut shutdown => break,
                }
                report_due = tokio::time::Instant::now()
                    + Duration::from_millis(daemon.config.registry.status_interval_ms.max(100));
            }
        }
        let change = async {
            match &mut changes {
                Some(watch) => watch.next().await,
                None => std::future::pending().await,
            }
        };
        let report = tokio::time::sleep_until(report_due);
        // The poll keeps its own clock across turns (a sleep made anew each turn would never
        // finish while other timers turn the loop faster), remade when a reload changes it.
        let poll = daemon.config.plugin_dir_poll_ms;
        if polling.as_ref().map(|(ms, _)| *ms) != Some(poll) {
            polling = (poll > 0).then(|| {
                let start = tokio::time::Instant::now() + Duration::from_millis(poll);
                let mut clock = tokio::time::interval_at(start, Duration::from_millis(poll));
                clock.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                (poll, clock)
            });
        }
        let tick = async {
            match &mut polling {
                Some((_, clock)) => clock.tick().await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            _ = &mut shutdown => break,
            _ = hangup(&mut hangups) => {
                let path = config_file.as_ref().expect("SIGHUP is only watched with a config file");
                tracing::info!(config = %path.display(), "SIGHUP: reloading the config");
                let checked = Config::load(path).and_then(|config| {
                    let pushed = daemon.pushed_names();
                    check_plugin_sections(&config, daemon.registry.is_some(), &pushed)?;
                    Ok(config)
                });
                match checked {
                    Ok(config) => daemon.reload(config).await,
                    Err(e) => tracing::error!(error = %format!("{e:#}"), "config not reloaded; the running one stays"),
                }
            }
            _ = tick => daemon.poll_plugin_dir().await,
            change = change => match change {
                Some(Ok(entry)) => {
                    // Changes already waiting (the watch's first entries, a burst of pushes)
                    // are applied by one sync.
                    let mut touched = std::collections::BTreeSet::from([entry.key]);
                    if let Some(watch) = &mut changes {
                        use futures::FutureExt as _;
                        while let Some(Some(Ok(entry))) = watch.next().now_or_never() {
                            touched.insert(entry.key);
                        }
                    }
                    daemon.sync_registry_touching(Some(touched)).await
                }
                Some(Err(e)) => {
                    tracing::warn!(error = %e, "registry watch failed; watching again");
                    changes = None;
                }
                None => changes = None,
            },
            _ = report, if daemon.registry.is_some() => {}
            Some(request) = rebuild_requests.next() => daemon.rebuild_on_request(request).await,
            _ = housekeeping.tick() => {
                daemon.reap().await;
                if daemon.rebuilding() {
                    daemon.advance_rebuilds().await;
                }
            }
            _ = observing.tick() => {
                let previous = observed.borrow().clone();
                tokio::select! {
                    now = daemon.observe(Some(&previous)) => { observed.send_replace(Arc::new(now)); }
                    _ = &mut shutdown => break,
                }
            }
        }
    }
    if let Some(http) = http {
        http.abort();
    }
    daemon.stop().await
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

impl Daemon {
    /// Loads the plugins of the config's plugin directory and starts them.
    pub async fn start(config: Config) -> anyhow::Result<Daemon> {
        let loader = loader(&config)?;
        let client = nats::connect(&config).await?;
        let js = jetstream::new(client.clone());
        let mut refused = BTreeMap::new();
        let registry = match config.registry.enabled {
            true => {
                let buckets = crate::registry::Buckets::named(&config.registry.bucket_prefix);
                let registry = crate::registry::Registry::open(&js, &buckets).await?;
                let dir = config.resolve(&config.registry.dir);
                let check = staged_check(&config, &loader);
                for (name, digest, reason) in
                    registry.sync(&dir, &config.registry.trusted_keys, check).await?
                {
                    tracing::error!(plugin = %name, digest = %digest, error = %reason, "pushed version refused; the last version that loaded (if any) runs");
                    refused.insert(name, Refusal { version: digest, reason });
                }
                Some(registry)
            }
            false => None,
        };
        let pushed = match &registry {
            Some(registry) => registry.all().await?,
            None => Vec::new(),
        };
        let names: Vec<String> = pushed.iter().map(|d| d.name.clone()).collect();
        check_plugin_sections(&config, registry.is_some(), &names)?;
        let (plugins, broken) = {
            let (config, loader) = (config.clone(), loader.clone());
            tokio::task::spawn_blocking(move || discover_runnable(&config, &loader)).await??
        };
        // One plugin that cannot be loaded does not keep the others from running.
        for (dir, e) in broken {
            let (name, version) = (name_in(&dir), digest_in(&dir));
            let reason = format!("{e:#}");
            tracing::error!(dir = %dir.display(), digest = %version, error = %reason, "plugin not loaded; the others start");
            refused.insert(name, Refusal { version, reason });
        }
        if plugins.is_empty() && registry.is_none() {
            match refused.pop_first() {
                Some((_, r)) => bail!("no plugin could be loaded: {}: {}", r.version, r.reason),
                None => {
                    bail!("no plugins to run in {}", config.resolve(&config.plugin_dir).display())
                }
            }
        }
        let mut daemon = Daemon::start_plugins(config, loader, client, registry, plugins).await?;
        daemon.pushed = pushed;
        if daemon.running.is_empty() && daemon.registry.is_none() {
            let reasons: Vec<String> =
                daemon.refused.iter().map(|(name, r)| format!("{name}: {}", r.reason)).collect();
            daemon.stop().await.ok();
            bail!("no plugin could start: {}", reasons.join("; "));
        }
        for (name, Refusal { version, reason }) in refused {
            daemon.refuse(name, version, reason);
        }
        Ok(daemon)
    }

    /// Starts the given plugins (the config's plugin directory is not read).
    pub async fn start_with(config: Config, plugins: Vec<DaemonPlugin>) -> anyhow::Result<Daemon> {
        let loader = loader(&config)?;
        let client = nats::connect(&config).await?;
        Daemon::start_plugins(config, loader, client, None, plugins).await
    }

    async fn start_plugins(
        config: Config,
        loader: ComponentLoader,
        client: async_nats::Client,
        registry: Option<crate::registry::Registry>,
        plugins: Vec<DaemonPlugin>,
    ) -> anyhow::Result<Daemon> {
        let js = jetstream::new(client.clone());
        let dlq = &config.dead_letter;
        js.get_or_create_stream(jetstream::stream::Config {
            name: dlq.stream.clone(),
            subjects: vec![format!("{}.>", dlq.subject_prefix)],
            description: Some("jetfold: events plugins failed on".into()),
            ..Default::default()
        })
        .await
        .map_err(|e| {
            anyhow::anyhow!("cannot open or create the dead-letter stream `{}`: {e}", dlq.stream)
        })?;
        let seen = plugin_dir_snapshot(&config);
        let drain = Drain::new(config.drain_timeout());
        let mut daemon = Daemon {
            config,
            seen,
            loader,
            client,
            js,
            registry,
            running: BTreeMap::new(),
            refused: BTreeMap::new(),
            pushed: Vec::new(),
            stopped: BTreeMap::new(),
            history: BTreeMap::new(),
            stopping: false,
            ran_to_stop: Default::default(),
            drain,
        };
        // The database must answer (else exit 2, and systemd retries); then a plugin that
        // cannot start is refused on its own and the others run.
        let target = daemon.config.sink_target();
        // On a thread of its own: a database client may run a runtime of its own.
        let opened = std::thread::spawn(move || Sink::open(&target).map(drop));
        let opened = tokio::task::spawn_blocking(move || opened.join()).await?;
        let opened = opened.unwrap_or_else(|_| Err(anyhow::anyhow!("opening the sink panicked")));
        if let Err(e) = opened {
            daemon.stop().await.ok();
            return Err(e);
        }
        for plugin in plugins {
            let (name, digest) = (plugin.manifest.name.clone(), plugin.digest());
            if let Err(e) = daemon.start_plugin(plugin).await {
                let reason = format!("{e:#}");
                tracing::error!(plugin = %name, digest = %digest, error = %reason, "plugin not started; the others run");
                daemon.refused.insert(name, Refusal { version: digest, reason });
            }
        }
        Ok(daemon)
    }

    /// A projection's query service, on an instance of its own.
    fn query_service(
        &self,
        plugin: &DaemonPlugin,
        guest: GuestInstance,
    ) -> tokio::task::JoinHandle<()> {
        let name = plugin.manifest.name.clone();
        let service = crate::query::serve(
            self.client.clone(),
            name.clone(),
            guest,
            self.config.sink_target(),
        );
        tokio::spawn(async move {
            if let Err(e) = service.await {
                tracing::error!(plugin = %name, error = %format!("{e:#}"), "query service stopped");
            }
        })
    }

    /// A fresh instance for a projection's queries, made off the async threads.
    async fn query_instance(&self, plugin: &DaemonPlugin) -> anyhow::Result<Option<GuestInstance>> {
        let Implementation::Component(c) = &plugin.implementation else { return Ok(None) };
        if plugin.manifest.kind != PluginKind::Projection {
            return Ok(None);
        }
        let (c, loader, plugin) = (c.clone(), self.loader.clone(), plugin.clone());
        let guest = tokio::task::spawn_blocking(move || plugin.instantiate(&c, &loader)).await??;
        Ok(Some(guest))
    }

    async fn start_plugin(&mut self, plugin: DaemonPlugin) -> anyhow::Result<()> {
        self.start_plugin_with(plugin, None).await
    }

    /// Starts `plugin`'s workers; with `report`, they report on that progress channel (a
    /// version taking over after a rebuild goes on with the one its predecessor used).
    async fn start_plugin_with(
        &mut self,
        plugin: DaemonPlugin,
        report: Option<watch::Sender<Progress>>,
    ) -> anyhow::Result<()> {
        let name = plugin.manifest.name.clone();
        let query = self.query_instance(&plugin).await?;
        emit::ensure_streams(&self.js, &plugin.manifest).await;
        let service = query.map(|guest| self.query_service(&plugin, guest));
        let report = report.unwrap_or_else(|| watch::channel(self.carried(&name)).0);
        let (swaps_tx, swaps_rx) = mpsc::channel();
        let worker = match self.spawn_worker(&plugin, report.clone(), swaps_rx, Role::Live).await {
            Ok(worker) => worker,
            Err(e) => {
                if let Some(service) = service {
                    service.abort();
                }
                return Err(e);
            }
        };
        tracing::info!(plugin = %name, "plugin started");
        self.refused.remove(&name);
        self.stopped.remove(&name);
        self.running.insert(
            name,
            Running {
                fingerprint: fingerprint(&plugin),
                stop: worker.stop,
                swaps: swaps_tx,
                thread: worker.thread,
                service,
                progress: worker.progress,
                report,
                plugin,
                rebuild: None,
            },
        );
        Ok(())
    }

    /// Starts a worker thread for `plugin` in `role`, reporting on `progress`; returns once
    /// it is folding, or with the reason it could not start.
    async fn spawn_worker(
        &self,
        plugin: &DaemonPlugin,
        progress: watch::Sender<Progress>,
        swaps: mpsc::Receiver<Swap>,
        role: Role,
    ) -> anyhow::Result<Worker> {
        let name = plugin.manifest.name.clone();
        let (stop_tx, stop_rx) = watch::channel(false);
        let progress_rx = progress.subscribe();
        let env = WorkerEnv {
            rt: Handle::current(),
            stop: stop_rx,
            js: self.js.clone(),
            target: self.config.sink_target(),
            progress,
            drain: self.drain.clone(),
        };
        let (ready_tx, ready_rx) = mpsc::channel();
        let (loader, config, p) = (self.loader.clone(), self.config.clone(), plugin.clone());
        // Workers are built on threads of their own: database clients may run runtimes of
        // their own, which cannot start inside this one.
        let thread = std::thread::Builder::new()
            .name(format!("fold-{name}"))
            .spawn(move || start_worker(p, &loader, &config, env, swaps, ready_tx, role))
            .context("failed to start a worker thread")?;
        let started = tokio::task::spawn_blocking(move || ready_rx.recv()).await?;
        let failed = match started {
            Ok(Ok(())) => None,
            Ok(Err(e)) => Some(e),
            Err(_) => Some(anyhow::anyhow!("worker thread for `{name}` ended before starting")),
        };
        if let Some(e) = failed {
            let _ = thread.join();
            return Err(e);
        }
        Ok(Worker { plugin: plugin.clone(), stop: stop_tx, thread, progress: progress_rx })
    }

    /// Starts rebuilding `plugin`, a new version of a running one, from the stream start into
    /// tables of its own; it takes over when caught up ([`Daemon::advance_rebuilds`]). A
    /// rebuild already under way for the plugin is dropped.
    async fn start_rebuild(&mut self, plugin: DaemonPlugin) -> anyhow::Result<()> {
        let name = plugin.manifest.name.clone();
        if self.config.partition.is_split() {
            bail!(
                "this daemon folds partition {} of {} of the keys: a rebuild swaps whole tables, so it needs one daemon folding every key (stop the others, set [partition] count = 1)",
                self.config.partition.index,
                self.config.partition.count
            );
        }
        if plugin.at_seq.is_some() {
            bail!(
                "a version that changes the state version without `migrate` is rebuilt from the stream and takes over when caught up, not at a given sequence"
            );
        }
        let tables: Vec<String> =
            plugin.manifest.allow.tables.iter().map(|t| format!("{t}{REBUILD_SUFFIX}")).collect();
        if let Some(long) = tables.iter().find(|t| !crate::manifest::is_identifier(t)) {
            bail!(
                "cannot rebuild into `{long}`: table names must leave room for `{REBUILD_SUFFIX}` (at most 63 characters)"
            );
        }
        let running = self.running.get_mut(&name).expect("the caller checked");
        if let Some(old) = running.rebuild.take() {
            tracing::info!(plugin = %name, digest = %old.plugin.digest(), "rebuild dropped for a newer version");
            let _ = old.stop(&name).await;
        }
        let staging = format!("{name}{REBUILD_SUFFIX}");
        let (target, s) = (self.config.sink_target(), staging.clone());
        tokio::task::spawn_blocking(move || Sink::open(&target)?.reset_staging(&s, &tables))
            .await?
            .context("cannot clear an earlier rebuild's tables")?;
        let ceiling = running.progress.clone();
        let (_, swaps) = mpsc::channel();
        let progress = watch::channel(Progress::default()).0;
        let role = Role::Rebuild { staging, ceiling };
        let worker = self
            .spawn_worker(&plugin, progress, swaps, role)
            .await
            .map_err(|e| anyhow::anyhow!("the new version failed to start its rebuild: {e:#}"))?;
        let digest = plugin.digest();
        tracing::info!(plugin = %name, digest = %digest, "rebuilding the new version from the stream start; the running version goes on until it catches up");
        let running = self.running.get_mut(&name).expect("checked above");
        running.fingerprint = fingerprint(&plugin);
        running.report.send_modify(|p| {
            p.refused = None;
            p.rebuild = Some(RebuildProgress { digest, committed_seq: 0 });
        });
        running.rebuild = Some(worker);
        Ok(())
    }

    /// Forgets the plugins whose workers stopped on their own (the circuit breaker, or an
    /// error): they are listed as refused with the reason, and start again at the next reload
    /// (`jetfold plugin resume`, SIGHUP, a change in the plugin directory).
    pub async fn reap(&mut self) {
        for name in self.running_where(|r| r.thread.is_finished()) {
            let running = self.running.remove(&name).expect("listed above");
            self.remember(&name, &running);
            let digest = running.plugin.digest();
            let reason = running.progress.borrow().refused.clone().map(|r| r.reason);
            let outcome = running.stop(&name).await;
            let reason = reason
                .or_else(|| outcome.err())
                .unwrap_or_else(|| "the plugin's worker stopped".into());
            tracing::error!(plugin = %name, "plugin stopped: {reason}");
            self.stopped.insert(name, Refusal { version: digest, reason });
        }
    }

    /// Keeps what `running`'s workers left (kind, stream, checkpoint, counters) as it stops.
    fn remember(&mut self, name: &str, running: &Running) {
        let progress = running.progress.clone();
        let (kind, stream) = (running.plugin.manifest.kind, running.plugin.stream.clone());
        self.history.insert(name.to_string(), Past { kind, stream, progress });
    }

    /// The progress a plugin starts with: its counters so far (they count since the daemon
    /// started), nothing of its last workers' state.
    fn carried(&self, name: &str) -> Progress {
        let Some(past) = self.history.get(name) else { return Progress::default() };
        let p = &*past.progress.borrow();
        Progress {
            committed_seq: p.committed_seq,
            events: p.events,
            rejected: p.rejected,
            batches: p.batches,
            retries: p.retries,
            fold_time: p.fold_time,
            commit_time: p.commit_time,
            swaps: p.swaps,
            failures: p.failures.clone(),
            effects: p.effects.clone(),
            dead_letters: p.dead_letters,
            fuel: p.fuel,
            calls: p.calls.clone(),
            recent_failures: p.recent_failures.clone(),
            ..Progress::default()
        }
    }

    /// The running plugins for which `f` holds, by name.
    fn running_where(&self, f: impl Fn(&Running) -> bool) -> Vec<String> {
        self.running.iter().filter(|(_, r)| f(r)).map(|(name, _)| name.clone()).collect()
    }

    /// Answers a `jetfold rebuild` request: rebuilds the plugin's running version from the
    /// stream start beside the live one (as a new version without `migrate` is), and reports
    /// its progress to the requester until it takes over or fails.
    async fn rebuild_on_request(&mut self, request: async_nats::Message) {
        let Some(reply) = request.reply.clone() else { return };
        let plugin = request.subject.rsplit('.').next().unwrap_or_default().to_string();
        let client = self.client.clone();
        let send = move |report: RebuildReport| {
            let (client, reply) = (client.clone(), reply.clone());
            async move {
                let body = serde_json::to_vec(&report).expect("a report is JSON");
                let _ = client.publish(reply, body.into()).await;
                let _ = client.flush().await;
            }
        };
        let Some(running) = self.running.get(&plugin) else {
            let reason =
                format!("plugin `{plugin}` is not running on daemon `{}`", self.config.name);
            return send(RebuildReport::Failed { reason }).await;
        };
        if running.rebuild.is_some() {
            let reason = format!("plugin `{plugin}` is already rebuilding");
            return send(RebuildReport::Failed { reason }).await;
        }
        let (version, swaps) = (running.plugin.clone(), running.report.borrow().swaps);
        let mut progress = running.report.subscribe();
        tracing::info!(plugin = %plugin, "rebuild requested: resetting the read model beside the live one");
        if let Err(e) = self.start_rebuild(version).await {
            return send(RebuildReport::Failed { reason: format!("{e:#}") }).await;
        }
        tokio::spawn(async move {
            loop {
                let p = progress.borrow_and_update().clone();
                let report = if p.swaps > swaps {
                    RebuildReport::Done { after_seq: p.swapped_at_seq.unwrap_or(1) - 1 }
                } else if let Some(r) = &p.rebuild {
                    RebuildReport::Rebuilding {
                        committed_seq: r.committed_seq,
                        live_seq: p.committed_seq,
                    }
                } else {
                    // The refusal follows the end of the rebuild: give it a moment to arrive.
                    let _ = tokio::time::timeout(Duration::from_secs(1), progress.changed()).await;
                    let reason = progress.borrow().refused.clone().map_or_else(
                        || "the rebuild stopped (see the daemon's log)".to_string(),
                        |r| r.reason,
                    );
                    RebuildReport::Failed { reason }
                };
                let last = !matches!(report, RebuildReport::Rebuilding { .. });
                send(report).await;
                if last {
                    return;
                }
                tokio::time::sleep(Duration::from_millis(250)).await;
                if progress.has_changed().is_err() {
                    let reason = "the daemon stopped".to_string();
                    return send(RebuildReport::Failed { reason }).await;
                }
            }
        });
    }

    /// Whether any plugin is rebuilding a new version.
    pub fn rebuilding(&self) -> bool {
        self.running.values().any(|r| r.rebuild.is_some())
    }

    /// Reports how far each rebuild has got, and lets each one that has caught up with its
    /// live version take over.
    pub async fn advance_rebuilds(&mut self) {
        for name in self.running_where(|r| r.rebuild.is_some()) {
            let running = self.running.get_mut(&name).expect("listed above");
            let rebuild = running.rebuild.as_ref().expect("listed above");
            let built = rebuild.progress.borrow().committed_seq;
            let live = running.progress.borrow().committed_seq;
            running.report.send_modify(|p| {
                if let Some(r) = &mut p.rebuild {
                    r.committed_seq = built;
                }
            });
            if rebuild.thread.is_finished() {
                let rebuild = running.rebuild.take().expect("checked above");
                let digest = rebuild.plugin.digest();
                let error = rebuild.stop(&name).await.err().unwrap_or_else(|| "it stopped".into());
                let reason = format!("the rebuild failed: {error}; the running version goes on");
                tracing::error!(plugin = %name, digest = %digest, "{reason}");
                running.report.send_modify(|p| p.rebuild = None);
                running.fingerprint = fingerprint(&running.plugin);
                running.refuse(digest, reason);
                continue;
            }
            // Close enough: the live version stops, and the rebuild folds the rest while it
            // waits (at most a few batches).
            if live.saturating_sub(built) <= 2 * self.config.batch_size as u64 {
                self.take_over_from_rebuild(&name).await;
            }
        }
    }

    /// The rebuilt version takes over: the live version stops after committing what it
    /// folded; the rebuild folds up to that very sequence and stops; then one transaction
    /// replaces the live tables, states and checkpoint with the rebuilt ones, and the new
    /// version goes on live from there. If anything fails, the old version is started again.
    async fn take_over_from_rebuild(&mut self, name: &str) {
        let mut running = self.running.remove(name).expect("the caller checked");
        let rebuild = running.rebuild.take().expect("the caller checked");
        let (report, old) = (running.report.clone(), running.plugin.clone());
        let started = Instant::now();
        if let Err(e) = running.stop(name).await {
            tracing::warn!(plugin = %name, error = %e, "the live version stopped with an error");
        }
        let last = report.borrow().committed_seq;
        let mut built = rebuild.progress.clone();
        let caught_up = built.wait_for(|p| p.committed_seq >= last).await.is_ok();
        let new = rebuild.plugin.clone();
        let stopped = rebuild.stop(name).await;
        let promoted = match (caught_up, stopped) {
            (true, Ok(())) => {
                let (target, live) = (self.config.sink_target(), name.to_string());
                let tables = new.manifest.allow.tables.clone();
                tokio::task::spawn_blocking(move || {
                    let staging = format!("{live}{REBUILD_SUFFIX}");
                    Sink::open(&target)?.promote_staging(&staging, &live, &tables, REBUILD_SUFFIX)
                })
                .await
                .map_err(anyhow::Error::from)
                .and_then(|r| r)
                .map_err(|e| format!("{e:#}"))
            }
            (false, _) => Err("the rebuild stopped before it caught up".to_string()),
            (true, Err(e)) => Err(e),
        };
        if let Err(e) = promoted {
            let reason = format!("the rebuilt version could not take over: {e}");
            tracing::error!(plugin = %name, digest = %new.digest(), "{reason}; the previous version starts again");
            report.send_modify(|p| p.rebuild = None);
            match self.start_plugin_with(old, Some(report)).await {
                Ok(()) => self.refuse(name.to_string(), new.digest(), reason),
                Err(e) => {
                    tracing::error!(plugin = %name, error = %format!("{e:#}"), "the previous version failed to start again")
                }
            }
            return;
        }
        let consumer = source::consumer_name(&self.config.name, &format!("{name}{REBUILD_SUFFIX}"));
        if let Ok(stream) = self.js.get_stream(&new.stream).await {
            let _ = stream.delete_consumer(&consumer).await;
        }
        let digest = new.digest();
        report.send_modify(|p| {
            p.rebuild = None;
            p.refused = None;
            p.digest.clone_from(&digest);
            p.swaps += 1;
            p.swapped_at_seq = Some(last + 1);
        });
        let pause = started.elapsed();
        match self.start_plugin_with(new, Some(report.clone())).await {
            Ok(()) => {
                report.send_modify(|p| p.last_swap_pause = Some(pause));
                tracing::info!(plugin = %name, digest = %digest, after_seq = last, pause_ms = pause.as_millis() as u64, "the rebuilt version took over");
            }
            Err(e) => {
                tracing::error!(plugin = %name, digest = %digest, error = %format!("{e:#}"), "the rebuilt version took over its tables but failed to start")
            }
        }
    }

    /// Applies `config` and the plugin directory as they are now: new plugins start, changed
    /// ones swap at their next batch, removed or disabled ones stop, unchanged ones are
    /// untouched. A plugin that cannot be loaded never replaces its running version: the error
    /// is logged and the running version stays. Settings other than the plugins' apply to
    /// plugins started from now on.
    pub async fn reload(&mut self, config: Config) {
        self.forget_refusals();
        self.apply(config, None).await;
    }

    /// Forgets the versions refused so far: each load finds its refusals afresh, so one
    /// fixed (or rolled back) no longer shows. The registry's refusals of plugins not
    /// running stay until the next sync finds them again.
    fn forget_refusals(&mut self) {
        for running in self.running.values() {
            if running.report.borrow().refused.is_some() {
                running.report.send_modify(|p| p.refused = None);
            }
        }
        let pushed = self.pushed_names();
        self.refused.retain(|name, _| pushed.contains(name));
    }

    /// [`Daemon::reload`] without forgetting refusals first.
    /// A plugin its circuit breaker (or a halt) stopped starts again only when `touched` is
    /// `None` (SIGHUP, a reload asked for) or names it (its directory or registry record
    /// changed: `plugin resume`, a new version), not at every unrelated change.
    async fn apply(&mut self, config: Config, touched: Option<std::collections::BTreeSet<String>>) {
        self.config = config;
        self.seen = plugin_dir_snapshot(&self.config);
        let found = {
            let (config, loader) = (self.config.clone(), self.loader.clone());
            match tokio::task::spawn_blocking(move || discover_all(&config, &loader, Wanted::All))
                .await
            {
                Ok(Ok(found)) => found,
                Ok(Err(e)) => {
                    tracing::error!(error = %format!("{e:#}"), "plugins not reloaded");
                    return;
                }
                Err(e) => {
                    tracing::error!(error = %e, "plugins not reloaded");
                    return;
                }
            }
        };
        let mut keep = std::collections::BTreeSet::new();
        for found in found {
            match found {
                Found::Plugin(plugin) => {
                    let name = plugin.manifest.name.clone();
                    keep.insert(name.clone());
                    let digest = plugin.digest();
                    let left_stopped = self.stopped.get(&name).is_some_and(|r| r.version == digest)
                        && touched.as_ref().is_some_and(|t| !t.contains(&name));
                    if !self.running.contains_key(&name) && left_stopped {
                        continue;
                    }
                    let outcome = if self.running.contains_key(&name) {
                        self.swap(*plugin).await
                    } else {
                        self.start_plugin(*plugin).await
                    };
                    if let Err(e) = outcome {
                        let reason = format!("{e:#}");
                        tracing::error!(plugin = %name, digest = %digest, error = %reason, "plugin not loaded; the running version (if any) stays");
                        self.refuse(name, digest, reason);
                    }
                }
                Found::Broken(dir, e) => {
                    let reason = format!("{e:#}");
                    let version = digest_in(&dir);
                    tracing::error!(dir = %dir.display(), digest = %version, error = %reason, "plugin not loaded; the running version (if any) stays");
                    let mut running_here = false;
                    for (name, running) in &self.running {
                        if running.plugin.manifest.dir == dir {
                            keep.insert(name.clone());
                            running.refuse(version.clone(), reason.clone());
                            running_here = true;
                        }
                    }
                    // A new plugin that cannot start is listed as refused, not left out.
                    if !running_here {
                        let name = name_in(&dir);
                        self.refused.insert(name, Refusal { version, reason });
                    }
                }
                Found::Disabled | Found::Upcaster(_) | Found::Unwanted(_) => {}
            }
        }
        let gone: Vec<String> =
            self.running.keys().filter(|name| !keep.contains(*name)).cloned().collect();
        for name in gone {
            let running = self.running.remove(&name).expect("listed above");
            self.remember(&name, &running);
            let why = if self.config.plugins.get(&name).is_some_and(|o| !o.enabled) {
                "disabled in the config"
            } else if self.pushed.iter().any(|d| d.name == name && d.paused) {
                "paused"
            } else {
                "removed"
            };
            match running.stop(&name).await {
                Ok(()) => {
                    tracing::info!(plugin = %name, "plugin {why}: stopped; its checkpoint stays in the sink")
                }
                Err(e) => {
                    tracing::error!(error = %e, "plugin removed; its worker stopped with an error")
                }
            }
        }
    }

    /// Brings the registry's directory in step with the desired versions, then reloads.
    pub async fn sync_registry(&mut self) {
        self.sync_registry_touching(None).await;
    }

    /// [`Daemon::sync_registry`] after changes to the records of `touched` (all: `None`).
    async fn sync_registry_touching(
        &mut self,
        touched: Option<std::collections::BTreeSet<String>>,
    ) {
        if self.registry.is_none() {
            return;
        }
        // Every sync checks every desired version again, so refusals are found afresh.
        self.refused.clear();
        self.forget_refusals();
        let Some(registry) = &self.registry else { return };
        let dir = self.config.resolve(&self.config.registry.dir);
        let check = staged_check(&self.config, &self.loader);
        match registry.sync(&dir, &self.config.registry.trusted_keys, check).await {
            Ok(refused) => {
                for (name, digest, reason) in refused {
                    tracing::error!(plugin = %name, digest = %digest, error = %reason, "pushed version refused; the running version (if any) stays");
                    self.refuse(name, digest, reason);
                }
            }
            Err(e) => {
                tracing::error!(error = %format!("{e:#}"), "cannot read the registry");
                return;
            }
        }
        let Some(registry) = &self.registry else { return };
        match registry.all().await {
            Ok(pushed) => self.pushed = pushed,
            Err(e) => tracing::warn!(error = %format!("{e:#}"), "cannot read the registry"),
        }
        self.apply(self.config.clone(), touched).await;
    }

    /// This daemon's plugins as the registry lists them: every plugin it runs, and every one
    /// it ran, was refused or is paused, each with its kind, version, checkpoint and lag.
    pub async fn status(&self) -> crate::registry::DaemonStatus {
        use crate::registry::PluginStatus;
        use crate::status::PluginState;
        let mut names: std::collections::BTreeSet<&String> = self.running.keys().collect();
        names.extend(self.stopped.keys());
        names.extend(self.refused.keys());
        names.extend(self.history.keys());
        names.extend(self.pushed.iter().filter(|d| d.paused).map(|d| &d.name));
        let mut plugins = Vec::new();
        for name in names {
            let past = self.history.get(name);
            let paused = self.pushed.iter().find(|d| &d.name == name && d.paused);
            let (state, progress, kind, stream, digest, last_error, pending) =
                if let Some(running) = self.running.get(name) {
                    let p = running.progress.borrow().clone();
                    let wanted = running.plugin.digest();
                    // Until a version handed over for a later sequence folds, the one before
                    // it does.
                    let digest =
                        if p.digest.is_empty() { wanted.clone() } else { p.digest.clone() };
                    // The wanted version waits for its sequence, or was refused because the
                    // sequence was already past when it arrived (also across a restart, whose
                    // sync forgets refusals the worker reported at its start).
                    let waiting = running.plugin.at_seq.filter(|_| digest != wanted);
                    let pending = waiting.filter(|at| *at > p.committed_seq);
                    let past = waiting.filter(|at| *at <= p.committed_seq).map(|at| {
                        format!(
                            "{} refused: promotion at sequence {at} is already past",
                            short(&wanted)
                        )
                    });
                    let pending = pending.map(|at| (wanted, at));
                    let state = match (&p.stalled, &p.rebuild) {
                        (Some(_), _) => PluginState::Stalled,
                        (None, Some(_)) => PluginState::Rebuilding,
                        (None, None) => PluginState::Running,
                    };
                    let error = p.stalled.clone().or(past).or_else(|| {
                        p.refused
                            .as_ref()
                            .map(|r| format!("{} refused: {}", short(&r.version), r.reason))
                    });
                    let (kind, stream) =
                        (running.plugin.manifest.kind.to_string(), running.plugin.stream.clone());
                    (state, p, kind, stream, digest, error, pending)
                } else {
                    let p = past.map(|p| p.progress.borrow().clone()).unwrap_or_default();
                    let (kind, stream) = past.map_or((String::new(), String::new()), |p| {
                        (p.kind.to_string(), p.stream.clone())
                    });
                    let refusal = self.refused.get(name).map(|r| (PluginState::Refused, r));
                    let (state, refusal) = match (paused, self.stopped.get(name), refusal) {
                        (Some(_), _, _) => (PluginState::Paused, None),
                        (None, Some(r), _) => (PluginState::Stopped, Some(r)),
                        (None, None, Some((state, r))) => (state, Some(r)),
                        // Disabled on purpose, in the config.
                        (None, None, None)
                            if past.is_some()
                                && self.config.plugins.get(name).is_some_and(|o| !o.enabled) =>
                        {
                            (PluginState::Disabled, None)
                        }
                        // The daemon stopping: every plugin it ran to the end stops with it.
                        (None, None, None) if self.stopping && self.ran_to_stop.contains(name) => {
                            (PluginState::Stopped, None)
                        }
                        // Removed or disabled: no row.
                        (None, None, None) => continue,
                    };
                    let digest = match (paused, refusal) {
                        (Some(d), _) => d.digest.clone(),
                        (None, Some(r)) => r.version.clone(),
                        (None, None) => p.digest.clone(),
                    };
                    let error = refusal.map(|r| match state {
                        PluginState::Stopped => r.reason.clone(),
                        _ => format!("{} refused: {}", short(&r.version), r.reason),
                    });
                    (state, p, kind, stream, digest, error, None)
                };
            let lag = match stream.as_str() {
                "" => None,
                stream => self.lag(stream, name).await,
            };
            let shadow = self.running.get(name).and_then(|r| r.plugin.shadow.as_ref()).map(|s| {
                let d = s.digest();
                match &progress.shadow {
                    Some(s) if s.digest == d => (d, s.events, s.diffs),
                    _ => (d, 0, 0),
                }
            });
            plugins.push(PluginStatus {
                name: name.clone(),
                kind,
                digest,
                status: state,
                pending,
                rebuild: progress.rebuild.as_ref().map(|r| (r.digest.clone(), r.committed_seq)),
                committed_seq: progress.committed_seq,
                lag,
                last_error,
                shadow,
            });
        }
        crate::registry::DaemonStatus {
            daemon: self.config.name.clone(),
            plugins,
            reported_at: Some(chrono::Utc::now()),
            report_interval_ms: self.config.registry.status_interval_ms,
            stopped: false,
        }
    }

    /// How far the plugin's durable consumer on `stream` is behind: events of its subjects not
    /// delivered yet, and delivered but not acked (not committed yet). `None` if it cannot be
    /// read (no stream, no consumer yet).
    async fn lag(&self, stream: &str, plugin: &str) -> Option<u64> {
        let consumer = source::consumer_name(&self.config.name, plugin);
        // A status never waits long on NATS (it may be down): no answer, no lag.
        let info = tokio::time::timeout(Duration::from_secs(1), async {
            let stream = self.js.get_stream(stream).await.ok()?;
            stream.consumer_info(&consumer).await.ok()
        });
        let info = info.await.ok()??;
        Some(info.num_pending + info.num_ack_pending as u64)
    }

    /// What the HTTP endpoint shows: every plugin's status and progress, and readiness;
    /// `previous`, the last observation, gives the event rates.
    pub async fn observe(&self, previous: Option<&crate::http::Observed>) -> crate::http::Observed {
        let status = self.status().await;
        let now = chrono::Utc::now();
        let max_lag = self.config.http.ready_max_lag;
        let plugins: Vec<crate::http::PluginObserved> = status
            .plugins
            .into_iter()
            .map(|s| {
                let running = self.running.get(&s.name);
                let past = self.history.get(&s.name);
                let p = match running {
                    Some(r) => r.progress.borrow().clone(),
                    None => past.map(|p| p.progress.borrow().clone()).unwrap_or_default(),
                };
                let stream = match running {
                    Some(r) => r.plugin.stream.clone(),
                    None => past.map(|p| p.stream.clone()).unwrap_or_default(),
                };
                let before = previous.and_then(|o| {
                    o.plugins
                        .iter()
                        .find(|q| q.status.name == s.name)
                        .map(|q| (q.events, o.observed_at))
                });
                let events_per_sec = match before {
                    Some((events, at)) if now > at => {
                        let secs = (now - at).num_milliseconds() as f64 / 1000.0;
                        p.events.saturating_sub(events) as f64 / secs.max(0.001)
                    }
                    _ => 0.0,
                };
                // A paused plugin is paused on purpose: it does not hold readiness back.
                use crate::status::PluginState;
                let ready = match s.status {
                    PluginState::Paused | PluginState::Disabled => true,
                    PluginState::Running | PluginState::Rebuilding => {
                        s.lag.is_some_and(|l| l <= max_lag)
                    }
                    _ => false,
                };
                crate::http::PluginObserved {
                    stream,
                    ready,
                    events: p.events,
                    events_per_sec,
                    failures: p.failures,
                    effects: p.effects,
                    dead_letters: p.dead_letters,
                    swaps: p.swaps,
                    retries: p.retries,
                    fuel: p.fuel,
                    guest_calls: p.calls,
                    fold_seconds: p.fold_time.as_secs_f64(),
                    commit_seconds: p.commit_time.as_secs_f64(),
                    stages: p.stages,
                    recent_failures: p.recent_failures.into(),
                    status: s,
                }
            })
            .collect();
        crate::http::Observed {
            daemon: status.daemon,
            observed_at: now,
            ready: plugins.iter().all(|p| p.ready),
            ready_max_lag: max_lag,
            plugins,
        }
    }

    async fn report_status(&self) {
        let Some(registry) = &self.registry else { return };
        let status = self.status().await;
        if let Err(e) = registry.report(&status).await {
            tracing::warn!(error = %format!("{e:#}"), "cannot report status to the registry");
        }
    }

    /// Records that `version` of plugin `name` was refused: on the running plugin's progress,
    /// or among the plugins not running.
    fn refuse(&mut self, name: String, version: String, reason: String) {
        match self.running.get(&name) {
            Some(running) => running.refuse(version, reason),
            None => {
                self.refused.insert(name, Refusal { version, reason });
            }
        }
    }

    /// Reloads if anything under the plugin directory changed since the last load.
    pub async fn poll_plugin_dir(&mut self) {
        let now = plugin_dir_snapshot(&self.config);
        if now == self.seen {
            return;
        }
        // The plugins whose directories changed (a file written, renamed or removed).
        let changed = now.iter().filter(|f| !self.seen.contains(f));
        let gone = self.seen.iter().filter(|f| !now.contains(f));
        let touched =
            changed.chain(gone).filter_map(|(path, _, _)| path.parent().map(name_in)).collect();
        self.forget_refusals();
        self.apply(self.config.clone(), Some(touched)).await;
    }

    /// Hands a new version of a running plugin to its workers, prepared off the hot path.
    async fn swap(&mut self, plugin: DaemonPlugin) -> anyhow::Result<()> {
        let name = plugin.manifest.name.clone();
        let running = self.running.get(&name).expect("the caller checked");
        let new_fingerprint = fingerprint(&plugin);
        if running.fingerprint == new_fingerprint {
            return Ok(());
        }
        let current = &running.plugin;
        if plugin.manifest.kind != current.manifest.kind {
            bail!(
                "the new version is a {} and the running one a {}",
                plugin.manifest.kind,
                current.manifest.kind
            );
        }
        if plugin.manifest.state.version != current.manifest.state.version && !plugin.migrates() {
            // Nothing converts the stored states: the new version rebuilds its own from the
            // stream, beside the running one, and takes over when caught up.
            return self.start_rebuild(plugin).await;
        }
        if let Some(rebuild) = self.running.get_mut(&name).and_then(|r| r.rebuild.take()) {
            tracing::info!(plugin = %name, digest = %rebuild.plugin.digest(), "rebuild dropped: another version replaces it");
            self.running[&name].report.send_modify(|p| p.rebuild = None);
            let _ = rebuild.stop(&name).await;
        }
        let running = &self.running[&name];
        let committed = running.progress.borrow().committed_seq;
        if let Some(at) = plugin.at_seq
            && at <= committed
        {
            bail!(
                "promotion at sequence {at} is already past (committed up to {committed}): refused"
            );
        }
        let current = &running.plugin;
        let same_source =
            (&current.stream, &current.subjects) == (&plugin.stream, &plugin.subjects);
        if plugin.at_seq.is_some() && !same_source {
            bail!(
                "a version promoted at a sequence must read the same stream and subjects as the running one"
            );
        }
        let (step, shadow) = {
            let (p, loader) = (plugin.clone(), self.loader.clone());
            tokio::task::spawn_blocking(move || p.prepare(&loader))
                .await?
                .map_err(|e| anyhow::anyhow!("the new version failed to start: {e:#}"))?
        };
        let query = self.query_instance(&plugin).await?;
        emit::ensure_streams(&self.js, &plugin.manifest).await;
        let digest = plugin.digest();
        let service = query.map(|guest| self.query_service(&plugin, guest));
        let plugin_copy = plugin.clone();
        let running = self.running.get_mut(&name).expect("checked above");
        let handed = match plugin.at_seq {
            _ if same_live_version(&running.plugin, &plugin) => {
                "the same version with another shadow handed to the worker; the live version goes on".to_string()
            }
            Some(at) => format!("new version handed to the worker; it takes over at sequence {at}"),
            None => "new version handed to the worker; it takes over at the next batch".to_string(),
        };
        if running.swaps.send(Swap { plugin, step, shadow }).is_err() {
            bail!("the plugin's worker has stopped");
        }
        running.fingerprint = new_fingerprint;
        running.plugin = plugin_copy;
        running.report.send_modify(|p| p.refused = None);
        if let Some(service) = service
            && let Some(old) = running.service.replace(service)
        {
            old.abort();
        }
        tracing::info!(plugin = %name, digest = %digest, "{handed}");
        Ok(())
    }

    /// The names of the plugins pushed to the registry (none without one).
    fn pushed_names(&self) -> Vec<String> {
        self.pushed.iter().map(|d| d.name.clone()).collect()
    }

    /// What a plugin has done so far; `None` for a plugin this daemon does not run.
    pub fn progress(&self, plugin: &str) -> Option<watch::Receiver<Progress>> {
        self.running.get(plugin).map(|r| r.progress.clone())
    }

    /// The plugins running, by name.
    pub fn plugins(&self) -> Vec<String> {
        self.running.keys().cloned().collect()
    }

    /// Drains: every worker commits the batches in hand, publishes their messages and acks
    /// them, then stops; after `drain-timeout-ms` whatever is left stays for the next start
    /// ([`DrainCutShort`]).
    pub async fn stop(mut self) -> anyhow::Result<()> {
        let timeout = self.drain.timeout;
        let deadline = Instant::now() + timeout;
        let _ = self.drain.deadline.set(deadline);
        // What plugins stopped before left was logged then; this stop reports its own.
        self.drain.left.lock().unwrap_or_else(|e| e.into_inner()).clear();
        // The workers give up at the deadline; a moment after it, they are left behind.
        let deadline = tokio::time::Instant::from_std(deadline) + DRAIN_GRACE;
        tracing::info!(
            drain_timeout_ms = timeout.as_millis() as u64,
            "stopping: draining in-flight batches"
        );
        for running in self.running.values() {
            let _ = running.stop.send(true);
        }
        let mut failed = Vec::new();
        let mut left = Vec::new();
        self.ran_to_stop = self.running.keys().cloned().collect();
        for (name, running) in std::mem::take(&mut self.running) {
            self.remember(&name, &running);
            match tokio::time::timeout_at(deadline, running.stop(&name)).await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => failed.push(e),
                // Its thread goes on until the process exits; what it had not committed is
                // folded again at the next start.
                Err(_) => left.push(format!("{name}: still draining")),
            }
        }
        // The last report says so, so `plugin list` shows this daemon stopped at once.
        self.stopping = true;
        if let Some(registry) = &self.registry {
            let report = async {
                let mut status = self.status().await;
                status.stopped = true;
                registry.report(&status).await
            };
            match tokio::time::timeout_at(deadline, report).await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => {
                    tracing::warn!(error = %format!("{e:#}"), "cannot report the stop to the registry")
                }
                Err(_) => {
                    left.push("the stop not reported to the registry (NATS unreachable)".into())
                }
            }
        }
        // Acks are published without confirmation: this sends them, if NATS is there.
        if tokio::time::timeout_at(deadline, self.client.flush()).await.is_err() {
            left.push("acks not sent (NATS unreachable)".into());
        }
        let mut left_by_workers = self.drain.left.lock().unwrap_or_else(|e| e.into_inner()).clone();
        left_by_workers.append(&mut left);
        if !failed.is_empty() {
            bail!("plugins stopped with errors: {}", failed.join("; "));
        }
        if !left_by_workers.is_empty() {
            return Err(DrainCutShort { timeout, left: left_by_workers }.into());
        }
        Ok(())
    }
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

/// What both of a plugin's threads share.
#[derive(Clone)]
struct WorkerEnv {
    rt: Handle,
    stop: watch::Receiver<bool>,
    js: jetstream::Context,
    target: SinkTarget,
    progress: watch::Sender<Progress>,
    drain: Drain,
}

/// Runs on the plugin's fold thread: starts the commit thread, reports readiness, folds until
/// stopped, then waits for the commit thread to drain.
fn start_worker(
    plugin: DaemonPlugin,
    loader: &ComponentLoader,
    config: &Config,
    env: WorkerEnv,
    swaps: mpsc::Receiver<Swap>,
    ready: mpsc::Sender<anyhow::Result<()>>,
    role: Role,
) -> anyhow::Result<()> {
    let (name, suffix) = match &role {
        Role::Live => (plugin.manifest.name.clone(), ""),
        Role::Rebuild { staging, .. } => (staging.clone(), REBUILD_SUFFIX),
    };
    let checkpoint_name = role.partition(config).checkpoint_name(&name);
    let (jobs_tx, jobs_rx) = mpsc::sync_channel::<Job>(2);
    let (committer_ready_tx, committer_ready_rx) = mpsc::channel();
    let committer = {
        let tables: Vec<String> =
            plugin.manifest.allow.tables.iter().map(|t| format!("{t}{suffix}")).collect();
        let (env, name) = (env.clone(), name.clone());
        std::thread::Builder::new().name(format!("commit-{name}")).spawn(move || {
            let committer = Committer::open(name, checkpoint_name, &tables, env);
            match committer {
                Ok((committer, checkpoint)) => {
                    let _ = committer_ready_tx.send(Ok(checkpoint));
                    committer.run(jobs_rx)
                }
                Err(e) => {
                    let _ = committer_ready_tx.send(Err(e));
                    Ok(())
                }
            }
        })
    };
    let started = committer.context("failed to start a commit thread").and_then(|thread| {
        let checkpoint = committer_ready_rx
            .recv()
            .map_err(|_| anyhow::anyhow!("commit thread for `{name}` ended before starting"))??;
        let folder = Folder::new(plugin, loader, config, env, swaps, checkpoint.as_ref(), role)?;
        Ok((thread, folder))
    });
    let (thread, folder) = match started {
        Ok(started) => started,
        Err(e) => {
            let _ = ready.send(Err(e));
            return Ok(());
        }
    };
    let _ = ready.send(Ok(()));
    let folded = folder.run(jobs_tx);
    let committed = thread.join().map_err(|_| anyhow::anyhow!("commit thread panicked"))?;
    folded.and(committed)
}

/// The daemon stopped before a transient failure cleared.
struct Stopping;

/// A folded batch on its way to the commit thread.
struct Job {
    commit: Commit,
    /// Tables to create first (a new version may write tables the old one did not).
    tables: Option<Vec<String>>,
    /// The shadow version's digest and the events it folded in this batch.
    shadow: Option<(String, u64)>,
    /// The swap pause and the new version's first sequence, if the batch holds the first
    /// event of a new version, and how many versions took over since the last one counted
    /// (several swaps in a row, or with no event between them, each count).
    swap_pause: Option<(Duration, u64, u64)>,
    /// The batch's last message: acking it acks the batch.
    ack: Option<Message>,
    events: u64,
    rejected: u64,
    fold_time: Duration,
    stats: BatchStats,
}

/// Whether the daemon is stopping: told to, or gone without saying (its stop sender dropped,
/// as when a `Daemon` is dropped without [`Daemon::stop`]).
fn stopping(stop: &watch::Receiver<bool>) -> bool {
    *stop.borrow() || stop.has_changed().is_err()
}

/// Exponential backoff between retries of a transient failure.
struct Backoff(Duration);

impl Backoff {
    fn new() -> Self {
        Backoff(Duration::from_millis(100))
    }
    /// Waits out the pause (cut short by a stop); the next pause is twice as long.
    fn wait(&mut self, stop: &watch::Receiver<bool>) {
        let deadline = Instant::now() + self.0;
        while Instant::now() < deadline && !stopping(stop) {
            std::thread::sleep(Duration::from_millis(20).min(self.0));
        }
        self.next();
    }
    /// The pause, doubled for next time.
    fn next(&mut self) -> Duration {
        let pause = self.0;
        self.0 = (self.0 * 2).min(Duration::from_secs(10));
        pause
    }
}

/// What a retry loop does once the daemon is stopping.
#[derive(Clone, Copy, PartialEq, Eq)]
enum OnStop {
    /// Give up after the attempt under way.
    GiveUp,
    /// Go on retrying for `drain-timeout-ms`: a commit, or the messages of committed batches,
    /// which the drain finishes if it can.
    Drain,
}

/// Runs `attempt` until it succeeds, backing off after each failure (logged at `level` with
/// `what`, counted in the plugin's progress); `None` if the daemon stops first (with
/// [`OnStop::Drain`], once the drain's time is over).
fn retry<T>(
    plugin: &str,
    what: &str,
    level: tracing::Level,
    env: &WorkerEnv,
    on_stop: OnStop,
    mut attempt: impl FnMut() -> anyhow::Result<T>,
) -> Option<T> {
    let mut backoff = Backoff::new();
    let mut drain_since = None;
    loop {
        let error = match attempt() {
            Ok(value) => {
                if env.progress.borrow().stalled.is_some() {
                    env.progress.send_modify(|p| p.stalled = None);
                }
                return Some(value);
            }
            Err(e) => format!("{e:#}"),
        };
        match level {
            tracing::Level::ERROR => tracing::error!(plugin, error = %error, "{what}; retrying"),
            _ => tracing::warn!(plugin, error = %error, "{what}; retrying"),
        }
        env.progress.send_modify(|p| {
            p.retries += 1;
            p.stalled = Some(format!("{what}: {error}; retrying"));
        });
        if !stopping(&env.stop) {
            // A stop cuts the pause short: the next attempt is the drain's first.
            backoff.wait(&env.stop);
            if !stopping(&env.stop) || on_stop == OnStop::Drain {
                continue;
            }
        }
        if on_stop == OnStop::GiveUp {
            return None;
        }
        let until = env.drain.until(*drain_since.get_or_insert_with(Instant::now));
        let now = Instant::now();
        if now >= until {
            tracing::warn!(plugin, "{what}: no more retries, the drain's time is over");
            return None;
        }
        std::thread::sleep(backoff.next().min(until - now));
    }
}

/// [`retry`] for a database operation: after a failure the connection may be gone, so each
/// next attempt runs on a new one (opening it creates nothing but jetfold's own tables).
fn retry_sink<T>(
    plugin: &str,
    what: &str,
    env: &WorkerEnv,
    on_stop: OnStop,
    sink: &mut Sink,
    mut op: impl FnMut(&mut Sink) -> anyhow::Result<T>,
) -> Option<T> {
    let mut failed = false;
    let attempt = || {
        if std::mem::take(&mut failed) {
            *sink = Sink::open(&env.target)?;
        }
        op(sink).inspect_err(|_| failed = true)
    };
    retry(plugin, what, tracing::Level::WARN, env, on_stop, attempt)
}

/// The commit stage: the only writer of the plugin's tables and checkpoint.
struct Committer {
    name: String,
    sink: Sink,
    env: WorkerEnv,
    checkpoint: u64,
    /// The state version of the states committed.
    state_version: Option<u32>,
    /// The version the checkpoint names.
    digest: Option<String>,
    /// Publishing was given up as the daemon stops: the batches still queued are committed
    /// without publishing or acking, and the outbox is published once at the end of the drain.
    deferred: bool,
    /// The last message of the batches committed since, acked once their messages are out.
    unacked: Option<Message>,
    /// This thread's stage times of the batch being handled.
    stages: Stages,
}

impl Committer {
    /// Opens the sink, creates the plugin's tables; the checkpoint (kept under
    /// `checkpoint_name`) to resume after.
    fn open(
        name: String,
        checkpoint_name: String,
        tables: &[String],
        env: WorkerEnv,
    ) -> anyhow::Result<(Committer, Option<Checkpoint>)> {
        let mut sink = Sink::open(&env.target)?;
        sink.ensure_tables(tables).context("failed to create read-model tables")?;
        let stored = sink.checkpoint(&checkpoint_name)?;
        let checkpoint = stored.as_ref().map_or(0, |c| c.last_seq);
        let state_version = stored.as_ref().map(|c| c.state_version);
        let digest = stored.as_ref().map(|c| c.digest.clone());
        env.progress.send_modify(|p| p.committed_seq = checkpoint);
        let committer = Committer {
            name,
            sink,
            env,
            checkpoint,
            state_version,
            digest,
            deferred: false,
            unacked: None,
            stages: Stages::default(),
        };
        Ok((committer, stored))
    }

    fn run(mut self, jobs: mpsc::Receiver<Job>) -> anyhow::Result<()> {
        // Messages committed before a crash but not confirmed published go out first.
        let pending = self.sink.outbox(&self.name)?;
        if !pending.is_empty() && !self.publish(&pending, OnStop::GiveUp) {
            self.deferred = true;
        }
        // Jobs still queued when the daemon stops are committed too: that is the drain.
        for job in jobs {
            let started = Instant::now();
            if let Some(tables) = &job.tables {
                let what = "cannot create the new version's tables";
                let (sink, on_stop) = (&mut self.sink, OnStop::Drain);
                if retry_sink(&self.name, what, &self.env, on_stop, sink, |s| {
                    s.ensure_tables(tables)
                })
                .is_none()
                {
                    self.leave_uncommitted();
                    break;
                }
            }
            if !self.handle(&job) {
                self.leave_uncommitted();
                break;
            }
            self.env.progress.send_modify(|p| {
                p.committed_seq = self.checkpoint;
                p.digest.clone_from(&job.commit.digest);
                match &job.shadow {
                    Some((digest, events)) => {
                        if p.shadow.as_ref().is_none_or(|s| &s.digest != digest) {
                            p.shadow = Some(ShadowProgress {
                                digest: digest.clone(),
                                ..Default::default()
                            });
                        }
                        let s = p.shadow.as_mut().expect("set above");
                        s.events += events;
                        s.diffs += job.commit.shadow_diffs.len() as u64;
                    }
                    None => p.shadow = None,
                }
                if let Some((pause, seq, takeovers)) = job.swap_pause {
                    p.swaps += takeovers;
                    p.last_swap_pause = Some(pause);
                    p.swapped_at_seq = Some(seq);
                }
                p.events += job.events;
                p.rejected += job.rejected;
                p.batches += 1;
                p.fold_time += job.fold_time;
                p.commit_time += started.elapsed();
                p.calls.merge(&job.stats.calls);
                let mut stages = std::mem::take(&mut self.stages);
                stages.add(&job.stats.stages);
                p.stages.add(&stages);
                p.fuel += job.stats.fuel;
                p.dead_letters += job.stats.dead_letters;
                for (kind, n) in &job.stats.effects {
                    *p.effects.entry(kind.to_string()).or_default() += n;
                }
                let at = chrono::Utc::now();
                for r in &job.commit.rejected {
                    *p.failures.entry(r.kind.clone()).or_default() += 1;
                    if p.recent_failures.len() == RECENT_FAILURES {
                        p.recent_failures.pop_front();
                    }
                    p.recent_failures.push_back(RecentFailure {
                        at,
                        seq: r.seq,
                        key: r.key.clone(),
                        kind: r.kind.clone(),
                        message: r.message.chars().take(500).collect(),
                    });
                }
            });
        }
        if self.deferred {
            self.publish_at_drain_end();
        }
        Ok(())
    }

    /// Notes, as the drain gives up, that the batches still queued were not committed.
    fn leave_uncommitted(&self) {
        self.env.drain.leave(format!(
            "{}: events after sequence {} not committed (folded again at the next start)",
            self.name, self.checkpoint
        ));
    }

    /// The drain's last step after publishing was put off: the whole outbox, retried for
    /// what is left of `drain-timeout-ms`; what does not go out stays for the next start.
    fn publish_at_drain_end(&mut self) {
        let what = "cannot read the outbox";
        let (sink, name) = (&mut self.sink, self.name.clone());
        let outbox = retry_sink(&name, what, &self.env, OnStop::Drain, sink, |s| s.outbox(&name));
        let left = match outbox {
            Some(outbox) if outbox.is_empty() || self.publish(&outbox, OnStop::Drain) => {
                if let Some(message) = self.unacked.take() {
                    self.ack(&message);
                }
                return;
            }
            Some(outbox) => outbox.len(),
            None => 0,
        };
        self.env.drain.leave(format!(
            "{}: {left} committed messages not published (they stay in the outbox, published first at the next start)",
            self.name
        ));
    }

    /// Commits, publishes and acks one batch; false if stopped before the commit.
    fn handle(&mut self, job: &Job) -> bool {
        let commit = &job.commit;
        // A batch of events already committed (redelivered) commits nothing, unless it carries
        // states (a snapshot, or the plugin's states converted to a new state version) or
        // names a version that took over.
        if commit.last_seq > self.checkpoint
            || self.state_version != Some(commit.state_version)
            || !commit.states.is_empty()
            || (commit.last_seq == self.checkpoint
                && self.digest.as_deref() != Some(commit.digest.as_str()))
        {
            let what = "commit failed (nothing acked)";
            let (sink, on_stop) = (&mut self.sink, OnStop::Drain);
            let committing = Instant::now();
            let committed =
                retry_sink(&self.name, what, &self.env, on_stop, sink, |s| s.commit(commit));
            self.stages.commit += committing.elapsed();
            if committed.is_none() {
                return false;
            }
            self.checkpoint = self.checkpoint.max(commit.last_seq);
            self.state_version = Some(commit.state_version);
            self.digest = Some(commit.digest.clone());
            // While stopping, a publish that fails is put off to the drain's end, so that the
            // batches still queued are committed first.
            let publishing = Instant::now();
            if !commit.outbox.is_empty()
                && (self.deferred || !self.publish(&commit.outbox, OnStop::GiveUp))
            {
                self.deferred = true;
            }
            self.stages.publish += publishing.elapsed();
        }
        let acking = Instant::now();
        match &job.ack {
            // Acked once the messages before are out (acking one acks all before it).
            Some(message) if self.deferred => self.unacked = Some(message.clone()),
            Some(message) => self.ack(message),
            None => {}
        }
        self.stages.ack += acking.elapsed();
        true
    }

    fn ack(&self, message: &Message) {
        if let Err(e) = self.env.rt.block_on(message.ack()) {
            tracing::warn!(plugin = %self.name, error = %e, "ack failed; the events will be redelivered and skipped");
        }
    }

    /// Publishes outbox messages and waits for JetStream to confirm each; then forgets them.
    /// False if the daemon stops first: with [`OnStop::GiveUp`], after the attempt under way
    /// (cut short) or, when already stopping, after one; with [`OnStop::Drain`], once the
    /// drain's time is over.
    fn publish(&mut self, outbox: &[OutboxMessage], on_stop: OnStop) -> bool {
        let (js, rt, drain) = (&self.env.js, &self.env.rt, &self.env.drain);
        let mut first = true;
        let publish_all = || {
            // Once an attempt failed, a subject no stream captures is reported as the cause
            // and not published again until one does: its core subscribers would get a copy
            // per attempt.
            let check_first = !std::mem::replace(&mut first, false);
            let mut stop = self.env.stop.clone();
            // A stop that comes during the attempt puts it off; once stopping, one attempt.
            let put_off = on_stop == OnStop::GiveUp && !stopping(&stop);
            // A drain's attempt ends with the drain.
            let now = Instant::now();
            let bound = match on_stop == OnStop::Drain && stopping(&stop) {
                true => PUBLISH_ATTEMPT.min(drain.until(now).saturating_duration_since(now)),
                false => PUBLISH_ATTEMPT,
            };
            let subjects = || outbox.iter().map(|m| m.subject.as_str());
            let attempt = async {
                if check_first && let Some(subject) = emit::uncaptured(js, subjects()).await {
                    return Err(emit::no_stream_error(&subject));
                }
                match publish_outbox(js, outbox).await {
                    Ok(()) => Ok(()),
                    Err(e) => match emit::uncaptured(js, subjects()).await {
                        Some(subject) => Err(emit::no_stream_error(&subject)),
                        None => Err(e),
                    },
                }
            };
            rt.block_on(async {
                tokio::select! {
                    outcome = tokio::time::timeout(bound, attempt) => outcome
                        .unwrap_or_else(|_| Err(anyhow::anyhow!("JetStream confirmed nothing within {bound:?}"))),
                    // A stop puts off the publish, so that the drain commits what is queued first.
                    _ = stop.wait_for(|stopping| *stopping), if put_off => {
                        Err(anyhow::anyhow!("put off to the end of the drain: the daemon is stopping"))
                    }
                }
            })
        };
        let what = "publishing emitted messages failed (nothing acked)";
        let level = tracing::Level::WARN;
        if retry(&self.name, what, level, &self.env, on_stop, publish_all).is_none() {
            return false;
        }
        let ids: Vec<String> = outbox.iter().map(|m| m.msg_id.clone()).collect();
        if let Err(e) = self.sink.clear_outbox(&ids) {
            // Harmless: a later start re-publishes them and JetStream drops the duplicates.
            tracing::warn!(plugin = %self.name, error = %e, "cannot clear the outbox");
        }
        true
    }
}

/// How often an idle worker looks for a new version to take over.
const IDLE_CHECK: Duration = Duration::from_millis(100);

/// The longest one attempt to publish a batch's messages may take (JetStream confirms each
/// within 5 s, or fails it).
const PUBLISH_ATTEMPT: Duration = Duration::from_secs(15);

/// Publishes `outbox` to JetStream and waits until it confirms every message.
async fn publish_outbox(js: &jetstream::Context, outbox: &[OutboxMessage]) -> anyhow::Result<()> {
    let mut acks = Vec::with_capacity(outbox.len());
    for m in outbox {
        let h = crate::nats::header_map(m.headers.iter().map(|(k, v)| (k.as_str(), v.as_str())))?;
        acks.push(js.publish_with_headers(m.subject.clone(), h, m.payload.clone().into()).await?);
    }
    for ack in acks {
        ack.await?;
    }
    Ok(())
}

/// A message's `Correlation-Id` header, for log lines about a message not decoded (empty if
/// it has none).
fn correlation_of(message: &Message) -> &str {
    message.headers.as_ref().and_then(|h| h.get(headers::CORRELATION_ID)).map_or("", |v| v.as_str())
}

/// A message's stream sequence (0 if it carries no JetStream info).
fn message_seq(message: &Message) -> u64 {
    message.info().map_or(0, |i| i.stream_sequence)
}

/// The keys whose states `commit` writes.
fn state_keys(commit: &Commit) -> Vec<String> {
    commit.states.iter().map(|(k, _)| k.clone()).collect()
}

/// `states`, written under state version `from`, converted by `step`'s `migrate`.
fn migrate_states(
    plugin: &str,
    step: &mut dyn Step,
    from: u32,
    states: HashMap<String, Vec<u8>>,
) -> Result<HashMap<String, Vec<u8>>, String> {
    let started = Instant::now();
    let migrated = states
        .into_iter()
        .map(|(key, state)| match step.migrate(from, &state) {
            Ok(new) => Ok((key, new)),
            Err(e) => Err(format!("the state of key `{key}`: {e}")),
        })
        .collect::<Result<HashMap<_, _>, _>>()?;
    let took_ms = started.elapsed().as_millis() as u64;
    tracing::info!(
        plugin,
        from,
        keys = migrated.len(),
        took_ms,
        "states converted to the new state version"
    );
    Ok(migrated)
}

/// The versions of `plugin` (and those it replaces, [`DaemonPlugin::previous`]) a live worker
/// runs when it starts after `checkpoint`: the one it starts with, those that take over later at
/// their promotion sequences (oldest first), and refusals of those whose sequence is already
/// past. This is what a worker that never stopped runs: a version with an `at_seq` N takes
/// over at N exactly (it did, if it committed the checkpoint), and one whose N was already
/// committed when it came was refused and stays refused.
fn versions_at_start(
    plugin: DaemonPlugin,
    checkpoint: Option<&Checkpoint>,
) -> (DaemonPlugin, Vec<DaemonPlugin>, Vec<Refusal>) {
    let (folded, committed_by) = checkpoint.map_or((0, ""), |c| (c.last_seq, c.digest.as_str()));
    let mut newer = Vec::new(); // newest first
    let mut next = Some(Box::new(plugin));
    while let Some(mut version) = next {
        next = version.previous.take();
        newer.push(*version);
    }
    let first = newer
        .iter()
        .position(|v| match v.at_seq {
            None => true,
            Some(at) => at <= folded && v.digest() == committed_by,
        })
        .unwrap_or(newer.len() - 1);
    let first = newer.drain(first..).next().expect("the position is in range");
    if newer.is_empty()
        && let Some(at) = first.at_seq.filter(|at| *at > folded + 1)
    {
        tracing::warn!(
            plugin = %first.manifest.name, digest = %first.digest(), at_seq = at,
            "a version waiting for its promotion sequence, without the version it replaces beside it ({PREVIOUS_DIR}/): it folds the events before {at} too"
        );
    }
    let (mut later, mut refused) = (Vec::new(), Vec::new());
    for version in newer.into_iter().rev() {
        let at = version.at_seq.expect("only versions with a promotion sequence wait");
        let before = later.last().unwrap_or(&first);
        let reason = if at <= folded {
            Some(format!(
                "promotion at sequence {at} is already past (committed up to {folded}): refused"
            ))
        } else if (&before.stream, &before.subjects) != (&version.stream, &version.subjects) {
            Some("a version promoted at a sequence must read the same stream and subjects as the running one".into())
        } else if before.manifest.state.version != version.manifest.state.version
            && !version.migrates()
        {
            Some("a version that changes the state version without `migrate` is rebuilt from the stream and takes over when caught up, not at a given sequence".into())
        } else {
            None
        };
        match reason {
            Some(reason) => refused.push(Refusal { version: version.digest(), reason }),
            None => later.push(version),
        }
    }
    (first, later, refused)
}

/// The fold stage: the plugin's source, its step and the states of the keys it folded.
struct Folder {
    /// The daemon's name (its consumers are `<daemon>-<plugin>`).
    daemon: String,
    /// The plugin's name, or a rebuild's staging name: what it commits and reads under.
    name: String,
    /// The keys this daemon folds.
    partition: crate::config::Partition,
    /// The name of its checkpoint, if not `name` (one per partition).
    checkpoint_name: Option<String>,
    /// Live, or rebuilding under a staging name.
    role: Role,
    /// Where events the plugin fails on go.
    dead_letters: crate::config::DeadLetterConfig,
    /// Keys to verify incoming events with (none: not verified).
    verify_keys: Vec<(String, Vec<u8>)>,
    /// The key emitted events are signed with, if any.
    sign_key: Option<(String, Vec<u8>)>,
    /// Messages received past a rebuild's ceiling, to fold once the live version is past them.
    held: Vec<Message>,
    /// Malfunctions in a row (the circuit breaker's count): traps, exhausted limits, refused
    /// effects, unreadable messages; the plugin's own errors in between neither count nor reset.
    consecutive_failures: u64,
    /// The plugin's own errors in a row, counted when its manifest sets
    /// `max-consecutive-errors`.
    consecutive_errors: u64,
    /// Why the circuit breaker stopped the plugin, once it has.
    tripped: Option<String>,
    /// How many messages of the last batch were folded (the rest, after a trip, are not).
    consumed: usize,
    digest: String,
    plugin: DaemonPlugin,
    step: Box<dyn Step>,
    /// Reads states of keys this process has not folded yet.
    reader: Sink,
    env: WorkerEnv,
    swaps: mpsc::Receiver<Swap>,
    /// Tables a swapped-in version may write, to create before its first commit.
    new_tables: Option<Vec<String>>,
    /// When the old version finished its last event, until the new one starts its first.
    swapped_after: Option<Instant>,
    /// A version took over at a batch boundary: the next commit (made at once if no event
    /// waits) records its digest in the checkpoint.
    announce: bool,
    last_step_end: Option<Instant>,
    /// The pause of a swap whose new version has folded its first event, and that event's
    /// sequence.
    pause: Option<(Duration, u64)>,
    /// Versions that took over since the last swap was counted.
    takeovers: u64,
    /// Versions waiting for their promotion sequences, in the order they take over.
    promotions: Vec<Swap>,
    /// A version folding beside the live one, effects suppressed, outcomes compared.
    shadow: Option<Shadow>,
    /// Events the shadow folded in the last batch.
    shadow_events: u64,
    /// What the last batch's folding counted.
    stats: BatchStats,
    states: HashMap<String, Vec<u8>>,
    /// The state version the plugin's states are in (the running version's, once migrated).
    state_version: u32,
    /// Keys whose states were converted to a new state version, to commit with the next batch.
    rewrite: HashSet<String>,
    /// Keys of the batches handed to the commit thread, by their last sequence: the states
    /// that must stay in memory until those batches are committed.
    uncommitted: std::collections::VecDeque<(u64, Vec<String>)>,
    /// How many states to keep in memory before forgetting committed ones.
    cache_keys: usize,
    /// Keys whose states changed since the last snapshot: kept in memory until one is written.
    pending: HashSet<String>,
    /// The sequence the last snapshot (handed on for commit) is as of.
    snapshot_seq: u64,
    /// Events folded since the last snapshot.
    since_snapshot: u64,
    /// Events between snapshots (`snapshot-interval`).
    snapshot_interval: u64,
    /// The next commit takes a snapshot whatever the interval (after a state conversion).
    snapshot_due: bool,
    /// Whether the events since the last snapshot are being folded again at start (effects,
    /// dead letters, the shadow and the circuit breaker suppressed).
    catching_up: bool,
    /// The states in memory may be ahead of what was handed on (a batch abandoned halfway
    /// when the daemon stopped): no snapshot may be taken from them.
    abandoned: bool,
    /// The last stream sequence folded (committed, or queued for commit).
    folded: u64,
    batch_size: usize,
    ack_wait: Duration,
    pull_expiry: Duration,
    /// Time taken waiting for and taking messages since the last batch (see [`Stages::read`]).
    read_time: Duration,
}

impl Folder {
    fn new(
        plugin: DaemonPlugin,
        loader: &ComponentLoader,
        config: &Config,
        env: WorkerEnv,
        swaps: mpsc::Receiver<Swap>,
        checkpoint: Option<&Checkpoint>,
        role: Role,
    ) -> anyhow::Result<Folder> {
        let (plugin, later, refused) = match role {
            Role::Live => versions_at_start(plugin, checkpoint),
            Role::Rebuild { .. } => (plugin, Vec::new(), Vec::new()),
        };
        let (step, shadow) = plugin.prepare(loader)?;
        let name = match &role {
            Role::Live => plugin.manifest.name.clone(),
            Role::Rebuild { staging, .. } => staging.clone(),
        };
        // A rebuild starts over whenever it starts, so its states are written once, when it
        // has caught up and stops to take over (or when it holds too many).
        let (snapshot_interval, first_snapshot) = match role {
            Role::Live => (config.snapshot_interval.max(1), checkpoint.is_none()),
            Role::Rebuild { .. } => (u64::MAX, false),
        };
        let reader = Sink::open(&env.target)?;
        let declared = plugin.manifest.state.version;
        let keys = config.event_signing.decoded_keys()?;
        let partition = role.partition(config);
        let checkpoint_name = partition.is_split().then(|| partition.checkpoint_name(&name));
        let mut folder = Folder {
            daemon: config.name.clone(),
            partition,
            checkpoint_name,
            name,
            role,
            dead_letters: config.dead_letter.clone(),
            verify_keys: if config.event_signing.verify { keys.clone() } else { Vec::new() },
            sign_key: config
                .event_signing
                .sign_key
                .as_ref()
                .and_then(|id| keys.iter().find(|(k, _)| k == id).cloned()),
            held: Vec::new(),
            consecutive_failures: 0,
            consecutive_errors: 0,
            tripped: None,
            consumed: 0,
            digest: plugin.digest(),
            step,
            reader,
            env,
            swaps,
            new_tables: None,
            swapped_after: None,
            announce: false,
            last_step_end: None,
            pause: None,
            takeovers: 0,
            promotions: Vec::new(),
            shadow,
            shadow_events: 0,
            stats: BatchStats::default(),
            states: HashMap::new(),
            state_version: checkpoint.map_or(declared, |c| c.state_version),
            rewrite: HashSet::new(),
            uncommitted: Default::default(),
            cache_keys: config.state_cache_keys,
            pending: HashSet::new(),
            snapshot_seq: checkpoint.map_or(0, |c| c.snapshot_seq),
            since_snapshot: 0,
            snapshot_interval,
            // The first commit holds a snapshot, so that the events folded again after a crash
            // are always ones this plugin folded (it may have started past the stream start).
            snapshot_due: first_snapshot,
            catching_up: false,
            abandoned: false,
            folded: checkpoint.map_or(0, |c| c.last_seq),
            batch_size: config.batch_size,
            ack_wait: config.ack_wait(),
            pull_expiry: config.fetch_wait(),
            read_time: Duration::ZERO,
            plugin,
        };
        // The version folding is shown from the start, before its first commit.
        let folding = folder.digest.clone();
        folder.env.progress.send_modify(|p| p.digest = folding);
        for version in later {
            let (step, shadow) = version.prepare(loader)?;
            tracing::info!(
                plugin = %folder.name, digest = %version.digest(), at_seq = version.at_seq, folding = %folder.digest,
                "version waiting for its promotion sequence; the version it replaces folds until then"
            );
            folder.promote_later(Swap { plugin: version, step, shadow });
        }
        for refusal in refused {
            tracing::error!(plugin = %folder.name, digest = %refusal.version, "{}", refusal.reason);
            folder.env.progress.send_modify(|p| p.refused = Some(refusal));
        }
        // States stored by a version with another state version are converted before the
        // first event (committed at once, see `run`); without `migrate` the plugin cannot start.
        if folder.state_version != declared {
            let from = folder.state_version;
            if !folder.step.migrates() {
                bail!(
                    "its states are stored in state version {from} and this version declares {declared}, and it does not export `migrate` to convert them; a version without `migrate` is rebuilt from the stream when it replaces a running one, so start the daemon with the previous version and then install this one"
                );
            }
            let migrated = folder
                .all_states()
                .and_then(|all| migrate_states(&folder.name, folder.step.as_mut(), from, all));
            let migrated = migrated.map_err(|e| {
                anyhow::anyhow!(
                    "converting its states from state version {from} to {declared} failed: {e}"
                )
            })?;
            folder.adopt(migrated, declared);
        }
        Ok(folder)
    }

    /// Every state of the plugin: those committed, overlaid with those folded since.
    fn all_states(&mut self) -> Result<HashMap<String, Vec<u8>>, String> {
        let (reader, env, name) = (&mut self.reader, &self.env, &self.name);
        let stored = retry_sink(
            name,
            "cannot read the states to convert",
            env,
            OnStop::GiveUp,
            reader,
            |r| r.states(name),
        )
        .ok_or_else(|| "the daemon is stopping".to_string())?;
        // Another partition's states are another daemon's to convert.
        let partition = self.partition;
        let mut all: HashMap<String, Vec<u8>> =
            stored.into_iter().filter(|(key, _)| partition.owns(key)).collect();
        all.extend(self.states.iter().map(|(k, v)| (k.clone(), v.clone())));
        Ok(all)
    }

    /// Makes `migrated` the plugin's states, in state version `version`, to be committed with
    /// the next batch.
    fn adopt(&mut self, migrated: HashMap<String, Vec<u8>>, version: u32) {
        self.rewrite = migrated.keys().cloned().collect();
        self.states = migrated;
        self.state_version = version;
    }

    /// (Re)creates the consumer just after the last folded event and pulls from it.
    fn bind(&self) -> anyhow::Result<pull::Stream> {
        let p = &self.plugin;
        self.env.rt.block_on(async {
            let consumer = source::consumer(
                &self.env.js,
                &p.stream,
                &self.daemon,
                &self.name,
                &p.subjects,
                // A rebuild starts from the stream start, whatever the live version's start.
                match self.role {
                    Role::Live => p.start,
                    Role::Rebuild { .. } => StartPosition::All,
                },
                (self.folded > 0).then_some(self.folded),
                self.ack_wait,
                self.batch_size * 8,
            )
            .await?;
            let messages = consumer
                .stream()
                .max_messages_per_batch(self.batch_size * 2)
                .expires(self.pull_expiry)
                .messages()
                .await?;
            anyhow::Ok(messages)
        })
    }

    /// Folds until stopped; every batch goes to the commit thread through `jobs`.
    fn run(mut self, jobs: mpsc::SyncSender<Job>) -> anyhow::Result<()> {
        // After a crash between snapshots, the states are brought up to the checkpoint first.
        if self.snapshot_seq < self.folded && !self.catch_up() {
            return Ok(());
        }
        // States converted at start are committed before any event is folded.
        if !self.rewrite.is_empty() && !self.fold_and_hand_on(Vec::new(), &jobs) {
            return Ok(());
        }
        self.fold_until_stopped(&jobs);
        // What changed since the last snapshot is written as the worker stops, so a clean
        // stop leaves nothing to fold again at the next start.
        if !self.abandoned && self.snapshot_seq < self.folded {
            self.snapshot_now(&jobs);
        }
        Ok(())
    }

    /// Hands on a commit of every state changed since the last snapshot, with no events;
    /// false if the daemon stops.
    fn snapshot_now(&mut self, jobs: &mpsc::SyncSender<Job>) -> bool {
        self.snapshot_due = true;
        let Some((commit, _, _)) = self.fold(&[]) else {
            self.abandoned = true;
            return false;
        };
        self.uncommitted.push_back((commit.last_seq, state_keys(&commit)));
        let job = Job {
            tables: self.new_tables.take(),
            shadow: self.shadow.as_ref().map(|s| (s.digest.clone(), 0)),
            swap_pause: None,
            commit,
            ack: None,
            events: 0,
            rejected: 0,
            fold_time: Duration::ZERO,
            stats: BatchStats::default(),
        };
        jobs.send(job).is_ok()
    }

    /// Folds the events committed after the last snapshot again, effects suppressed, so that
    /// the states in memory are those the checkpoint goes with; false if the daemon stops
    /// first. Events the stream no longer holds (its limits dropped them) are skipped with a
    /// warning: their keys' states stay as the snapshot has them.
    fn catch_up(&mut self) -> bool {
        let (from, to) = (self.snapshot_seq, self.folded);
        let started = Instant::now();
        tracing::info!(plugin = %self.name, snapshot_seq = from, checkpoint = to, "folding the events since the last snapshot again (effects suppressed)");
        self.folded = from;
        self.catching_up = true;
        let mut backoff = Backoff::new();
        while self.folded < to {
            if stopping(&self.env.stop) {
                return false;
            }
            let (p, env) = (&self.plugin, &self.env);
            let opened = env.rt.block_on(nats::reader::StreamReader::open(
                &env.js,
                &p.stream,
                &p.subjects,
                Some(self.folded + 1),
                Some(to),
            ));
            let mut reader = match opened {
                Ok(reader) => reader,
                Err(e) => {
                    tracing::warn!(plugin = %self.name, error = %format!("{e:#}"), "cannot read the events since the last snapshot; retrying");
                    backoff.wait(&self.env.stop);
                    continue;
                }
            };
            let mut failed = false;
            loop {
                let mut batch = Vec::with_capacity(self.batch_size);
                while batch.len() < self.batch_size {
                    match self.env.rt.block_on(reader.next()) {
                        Some(Ok(message)) => batch.push(message),
                        Some(Err(e)) => {
                            tracing::warn!(plugin = %self.name, error = %format!("{e:#}"), "reading the events since the last snapshot failed; retrying");
                            failed = true;
                            break;
                        }
                        None => break,
                    }
                }
                let done = batch.len() < self.batch_size;
                if !batch.is_empty() && self.fold(&batch).is_none() {
                    return false; // stopping
                }
                if done {
                    break;
                }
            }
            if failed {
                backoff.wait(&self.env.stop);
                continue;
            }
            if self.folded < to {
                tracing::warn!(plugin = %self.name, from = self.folded + 1, to, "the stream no longer holds some events since the last snapshot: their keys' states are as of the snapshot");
                self.folded = to;
            }
        }
        self.catching_up = false;
        let took_ms = started.elapsed().as_millis() as u64;
        tracing::info!(plugin = %self.name, events = self.since_snapshot, keys = self.pending.len(), took_ms, "caught up with the checkpoint");
        true
    }

    /// The folding loop: pulls, folds and hands on batches, takes over new versions, until
    /// the daemon stops or the plugin does.
    fn fold_until_stopped(&mut self, jobs: &mpsc::SyncSender<Job>) {
        let mut source = None;
        let mut backoff = Backoff::new();
        while !stopping(&self.env.stop) {
            if !self.held.is_empty() {
                // A rebuild waits for the live version to pass what it holds.
                let first = message_seq(&self.held[0]);
                if !self.wait_for_ceiling(first) {
                    break;
                }
                let mut messages = std::mem::take(&mut self.held);
                self.hold_past_ceiling(&mut messages);
                if !messages.is_empty() && !self.fold_and_hand_on(messages, jobs) {
                    break;
                }
                continue;
            }
            let stream = match &mut source {
                Some(stream) => stream,
                None => {
                    let what = "cannot bind the source";
                    let level = tracing::Level::ERROR;
                    let Some(stream) =
                        retry(&self.name, what, level, &self.env, OnStop::GiveUp, || self.bind())
                    else {
                        break;
                    };
                    source.insert(stream)
                }
            };
            let pulled = Instant::now();
            let (mut messages, broken) = self.receive(stream);
            if !messages.is_empty() {
                self.read_time += pulled.elapsed();
            }
            self.hold_past_ceiling(&mut messages);
            if let Some(e) = broken {
                // Messages delivered after a failure could be out of order: start over just
                // after the last folded event (held ones too).
                self.held.clear();
                tracing::warn!(plugin = %self.name, error = %format!("{e:#}"), "source failed; rebinding");
                source = None;
                if messages.is_empty() {
                    backoff.wait(&self.env.stop);
                }
            } else {
                backoff = Backoff::new();
            }
            // A new version takes over at a batch boundary (an idle plugin is at one), or waits
            // for its sequence.
            let mut rebind = false;
            while let Ok(swap) = self.swaps.try_recv() {
                match swap.plugin.at_seq {
                    Some(at) if at <= self.folded => {
                        let reason = format!(
                            "promotion at sequence {at} is already past (folded up to {}): refused",
                            self.folded
                        );
                        tracing::error!(plugin = %self.name, digest = %swap.plugin.digest(), "{reason}");
                        let version = swap.plugin.digest();
                        self.env
                            .progress
                            .send_modify(|p| p.refused = Some(Refusal { version, reason }));
                    }
                    Some(_) => self.promote_later(swap),
                    None if same_live_version(&self.plugin, &swap.plugin) => {
                        // The running version is wanted (again) and only the shadow beside it
                        // may have changed (`push --shadow`, a rollback of a version pending
                        // at a sequence): it goes on as it is.
                        self.promotions.clear();
                        self.shadow = swap.shadow;
                        self.plugin = swap.plugin;
                    }
                    None => {
                        self.promotions.clear();
                        // The states the running version leaves are written before the next
                        // one folds (a restart would fold the events since with the new one).
                        if self.snapshot_seq < self.folded
                            && !self.abandoned
                            && !self.snapshot_now(jobs)
                        {
                            return;
                        }
                        rebind |= self.take_over(swap, self.folded);
                        // The checkpoint names the version now running, also before it folds.
                        self.announce = true;
                    }
                }
            }
            if rebind {
                // The source changed: what was pulled under the old one is dropped unfolded
                // and unacked, and the new source starts just after the last folded event.
                source = None;
                self.held.clear();
                continue;
            }
            // States converted by a takeover while idle are committed at once, and so is the
            // name of a version that took over.
            let converted = !self.rewrite.is_empty() || std::mem::take(&mut self.announce);
            if (!messages.is_empty() || converted) && !self.fold_and_hand_on(messages, jobs) {
                break;
            }
        }
    }

    /// Folds `messages` and hands the batch to the commit thread; false if the daemon stops.
    fn fold_and_hand_on(&mut self, messages: Vec<Message>, jobs: &mpsc::SyncSender<Job>) -> bool {
        let started = Instant::now();
        let Some((commit, events, rejected)) = self.fold(&messages) else {
            self.abandoned = true;
            return false;
        };
        self.uncommitted.push_back((commit.last_seq, state_keys(&commit)));
        self.trim_states();
        let consumed = self.consumed;
        let job = Job {
            tables: self.new_tables.take(),
            shadow: self.shadow.as_ref().map(|s| (s.digest.clone(), self.shadow_events)),
            swap_pause: self
                .pause
                .take()
                .map(|(pause, seq)| (pause, seq, std::mem::take(&mut self.takeovers).max(1))),
            commit,
            // Acking a message acks all before it: only what was folded.
            ack: messages.into_iter().take(consumed).last(),
            events,
            rejected,
            fold_time: started.elapsed(),
            stats: {
                let mut stats = std::mem::take(&mut self.stats);
                let s = &mut stats.stages;
                s.route = started.elapsed().saturating_sub(s.decode + s.states + s.guest);
                s.read = std::mem::take(&mut self.read_time);
                stats
            },
        };
        // An error: the commit thread stopped, the daemon is stopping.
        if jobs.send(job).is_err() {
            return false;
        }
        if let Some(reason) = &self.tripped {
            tracing::error!(plugin = %self.name, digest = %self.digest, "{reason}");
            let (version, reason) = (self.digest.clone(), reason.clone());
            self.env.progress.send_modify(|p| p.refused = Some(Refusal { version, reason }));
            return false; // the worker drains what it handed on and stops
        }
        true
    }

    /// Queues `swap` to take over at its promotion sequence. Versions queued for that sequence
    /// or a later one are dropped: the newest push decides from its sequence on.
    fn promote_later(&mut self, swap: Swap) {
        let at = swap.plugin.at_seq;
        self.promotions.retain(|queued| queued.plugin.at_seq < at);
        self.promotions.push(swap);
    }

    /// A rebuild's ceiling: the live version's committed sequence (none for a live worker).
    fn ceiling(&self) -> Option<u64> {
        match &self.role {
            Role::Live => None,
            Role::Rebuild { ceiling, .. } => Some(ceiling.borrow().committed_seq),
        }
    }

    /// Moves the messages past the ceiling (and all after them) from `messages` to `held`.
    fn hold_past_ceiling(&mut self, messages: &mut Vec<Message>) {
        let Some(ceiling) = self.ceiling() else { return };
        if let Some(i) = messages.iter().position(|m| message_seq(m) > ceiling) {
            let mut past = messages.split_off(i);
            past.append(&mut self.held);
            self.held = past;
        }
    }

    /// Waits until the live version has committed `seq` (false if the daemon stops first).
    fn wait_for_ceiling(&mut self, seq: u64) -> bool {
        let Role::Rebuild { ceiling, .. } = &mut self.role else { return true };
        let mut stop = self.env.stop.clone();
        self.env.rt.block_on(async {
            tokio::select! {
                reached = ceiling.wait_for(|p| p.committed_seq >= seq) => reached.is_ok(),
                _ = stop.wait_for(|stopping| *stopping) => false,
            }
        })
    }

    /// Forgets committed states once more than `cache_keys` are held: they are read back
    /// from the database when next needed. States of batches not yet committed stay, and so
    /// do states changed since the last snapshot (the database has older ones).
    fn trim_states(&mut self) {
        if self.states.len() <= self.cache_keys {
            return;
        }
        let committed = self.env.progress.borrow().committed_seq;
        while self.uncommitted.front().is_some_and(|(seq, _)| *seq <= committed) {
            self.uncommitted.pop_front();
        }
        let keep: HashSet<&String> = self.uncommitted.iter().flat_map(|(_, keys)| keys).collect();
        let pending = &self.pending;
        self.states.retain(|key, _| keep.contains(key) || pending.contains(key));
    }

    /// Replaces the running version with `swap`'s; true if the source changed. A version that
    /// declares another state version first converts every state; if that fails the swap is
    /// refused and the running version goes on.
    fn take_over(&mut self, swap: Swap, after_seq: u64) -> bool {
        let Swap { plugin, mut step, shadow } = swap;
        let declared = plugin.manifest.state.version;
        if declared != self.state_version {
            let from = self.state_version;
            let migrated = self
                .all_states()
                .and_then(|all| migrate_states(&self.name, step.as_mut(), from, all));
            match migrated {
                Ok(migrated) => self.adopt(migrated, declared),
                Err(e) => {
                    let reason = format!(
                        "converting the states from state version {} to {declared} failed: {e}; the running version goes on",
                        self.state_version
                    );
                    tracing::error!(plugin = %self.name, digest = %plugin.digest(), "{reason}");
                    let version = plugin.digest();
                    self.env
                        .progress
                        .send_modify(|p| p.refused = Some(Refusal { version, reason }));
                    return false;
                }
            }
        }
        self.shadow = shadow;
        let old = &self.plugin;
        let source_changed = (&old.stream, &old.subjects) != (&plugin.stream, &plugin.subjects);
        let tables = plugin.manifest.allow.tables.clone();
        if tables.iter().any(|t| !old.manifest.allow.tables.contains(t)) {
            self.new_tables = Some(tables);
        }
        tracing::info!(
            plugin = %self.name, from = %self.digest, to = %plugin.digest(), after_seq,
            "new version takes over"
        );
        self.digest = plugin.digest();
        self.plugin = plugin;
        self.step = step;
        self.swapped_after = Some(self.last_step_end.unwrap_or_else(Instant::now));
        self.takeovers += 1;
        source_changed
    }

    /// Waits for the first message (or the stop, or [`IDLE_CHECK`]), then takes what has already
    /// arrived, up to a batch; with the error that ended the stream, if one did.
    fn receive(&mut self, stream: &mut pull::Stream) -> (Vec<Message>, Option<anyhow::Error>) {
        let mut stop = self.env.stop.clone();
        let limit = self.batch_size;
        self.env.rt.block_on(async move {
            let mut messages = Vec::new();
            let first = tokio::select! {
                next = stream.next() => next,
                _ = stop.wait_for(|stopping| *stopping) => return (messages, None),
                // An idle plugin looks for new versions now and then.
                _ = tokio::time::sleep(IDLE_CHECK) => return (messages, None),
            };
            let mut next = first;
            loop {
                match next {
                    Some(Ok(m)) => messages.push(m),
                    Some(Err(e)) => return (messages, Some(anyhow::Error::new(e))),
                    None => {
                        return (messages, Some(anyhow::anyhow!("the consumer's stream ended")));
                    }
                }
                if messages.len() >= limit {
                    return (messages, None);
                }
                match stream.next().now_or_never() {
                    Some(n) => next = n,
                    None => return (messages, None),
                }
            }
        })
    }

    /// The key's state: folded by this process, else committed before; `Err` only when the
    /// daemon stops while the database cannot be read (a state is never guessed).
    fn state_of(&mut self, key: &str) -> Result<Option<Vec<u8>>, Stopping> {
        if let Some(s) = self.states.get(key) {
            return Ok(Some(s.clone()));
        }
        let (reader, env, name) = (&mut self.reader, &self.env, &self.name);
        let state = retry_sink(name, "cannot read a state", env, OnStop::GiveUp, reader, |r| {
            r.state(name, key)
        })
        .ok_or(Stopping)?;
        if let Some(s) = &state {
            self.states.insert(key.to_string(), s.clone());
        }
        Ok(state)
    }

    /// Folds in one batch the events of `messages` the plugin will be called with, before
    /// the loop of [`Folder::fold`] handles each message: `None` if the daemon stopped while
    /// states were read, `Some(None)` where events are folded one at a time instead (a shadow
    /// compares each event's outcome from the same state; a version takes over inside the
    /// batch).
    #[allow(clippy::option_option)]
    fn prepare_batch(&mut self, messages: &[Message]) -> Option<Option<PreparedBatch>> {
        let last = messages.last().map_or(0, message_seq);
        let promotes =
            self.promotions.first().is_some_and(|s| s.plugin.at_seq.is_some_and(|at| at <= last));
        if (self.shadow.is_some() && !self.catching_up) || promotes || self.tripped.is_some() {
            return Some(None);
        }
        // The same tests as the loop's, in its order, without their side effects: what fails
        // one is left to the loop.
        let decoding = Instant::now();
        let mut folded = self.folded;
        let mut items = Vec::new();
        for (index, message) in messages.iter().enumerate() {
            let Ok(info) = message.info() else { continue };
            let seq = info.stream_sequence;
            if seq <= folded {
                continue;
            }
            folded = seq;
            if source::replayed_for_another(message, &self.name) || self.verify(message).is_err() {
                continue;
            }
            // Decoded with the metadata just read (parsing it again costs as much).
            let at =
                source::Position { stream: info.stream, sequence: seq, published: info.published };
            let Ok(event) = source::decode_event(&message.message, at) else { continue };
            let key = self.plugin.manifest.state_key(&event);
            if !self.partition.owns(&key) {
                continue;
            }
            items.push((index, key, event));
        }
        self.stats.stages.decode += decoding.elapsed();
        if items.is_empty() {
            return Some(None);
        }
        let reading = Instant::now();
        // Every key's state, held by the instance or not (after a trap the batch is folded
        // again from them): those not in memory in one query.
        let mut missing: Vec<&str> = items
            .iter()
            .map(|(_, key, _)| key.as_str())
            .filter(|k| !self.states.contains_key(*k))
            .collect();
        missing.sort_unstable();
        missing.dedup();
        if !missing.is_empty() {
            let (reader, env, name) = (&mut self.reader, &self.env, &self.name);
            let found = retry_sink(name, "cannot read states", env, OnStop::GiveUp, reader, |r| {
                r.states_of(name, &missing)
            })?;
            self.states.extend(found);
        }
        self.stats.stages.states += reading.elapsed();
        if let Some(after) = self.swapped_after.take() {
            self.pause = Some((after.elapsed(), message_seq(&messages[items[0].0])));
        }
        let keyed: Vec<Keyed<'_>> =
            items.iter().map(|(_, key, event)| Keyed { key, event }).collect();
        let (call, fuel) = (Instant::now(), self.step.fuel_used());
        let folded = self.step.fold_batch(&self.plugin.manifest, &keyed, &self.states);
        let now = Instant::now();
        self.last_step_end = Some(now);
        self.stats.stages.guest += now - call;
        let per_event = (now - call) / items.len() as u32;
        for _ in 0..items.len() {
            self.stats.calls.observe(per_event);
        }
        self.stats.fuel += self.step.fuel_used().saturating_sub(fuel);
        let Folded { outcomes, states } = folded;
        let slots = items
            .into_iter()
            .zip(outcomes)
            .map(|((index, key, event), outcome)| (index, key, Some((event, outcome))))
            .collect();
        Some(Some(PreparedBatch { slots, next: 0, states, taken: 0 }))
    }

    /// After the loop: the batch's states become the plugin's if the loop took every event's
    /// outcome; if it stopped short (the plugin halted or its circuit opened), the events it
    /// took are folded again alone, so that the states are as of the last one.
    fn settle_batch(&mut self, batch: PreparedBatch, messages: &[Message]) {
        if batch.taken == batch.slots.len() {
            self.states.extend(batch.states);
            return;
        }
        self.step.forget_all();
        let taken: Vec<(&str, Event)> = batch.slots[..batch.taken]
            .iter()
            .filter_map(|(index, key, _)| {
                Some((key.as_str(), source::event_from_message(&messages[*index]).ok()?))
            })
            .collect();
        let keyed: Vec<Keyed<'_>> = taken.iter().map(|(key, event)| Keyed { key, event }).collect();
        let again = self.step.fold_batch(&self.plugin.manifest, &keyed, &self.states);
        self.states.extend(again.states);
    }

    /// Runs the step over the batch: what to commit (new states included), the number of
    /// events folded and of those rejected; `None` if the daemon stopped meanwhile.
    fn fold(&mut self, messages: &[Message]) -> Option<(Commit, u64, u64)> {
        let mut commit = Commit {
            plugin: self.name.clone(),
            checkpoint: self.checkpoint_name.clone(),
            digest: self.digest.clone(),
            last_seq: self.folded,
            table_suffix: match self.role {
                Role::Live => String::new(),
                Role::Rebuild { .. } => REBUILD_SUFFIX.to_string(),
            },
            ..Default::default()
        };
        let mut dirty = HashSet::new();
        let mut events = 0;
        // Events read past the last folded one, another partition's included.
        let mut read = 0;
        let mut shadow_events = 0;
        self.consumed = 0;
        self.stats = BatchStats::default();
        // The events the plugin will be called with are folded in one batch first (see
        // `prepare_batch`); the loop below then handles each message in order as before,
        // taking those events' outcomes from the batch.
        let Some(mut batch) = self.prepare_batch(messages) else {
            return None; // stopping while states were read
        };
        for (index, message) in messages.iter().enumerate() {
            if self.tripped.is_some() {
                break; // the circuit breaker stopped the plugin: the rest stays unacked
            }
            self.consumed = index + 1;
            let Ok(info) = message.info() else { continue };
            let seq = info.stream_sequence;
            if seq <= self.folded {
                continue; // redelivered: already folded
            }
            let previous = self.folded;
            self.folded = seq;
            commit.last_seq = seq;
            events += 1;
            read += 1;
            if source::replayed_for_another(message, &self.name) {
                events -= 1;
                continue; // a dead letter replayed for another plugin
            }
            let prepared = batch.as_mut().and_then(|b| b.take(index));
            let (event, precomputed) = if let Some((event, outcome)) = prepared {
                (event, Some(outcome))
            } else {
                if let Err(bad) = self.verify(message) {
                    if !self.partition.owns_seq(seq) {
                        events -= 1;
                        continue; // another daemon's to record
                    }
                    tracing::warn!(
                        plugin = %self.name, digest = %self.short_digest(), seq,
                        correlation_id = correlation_of(message), reason = %bad,
                        "event rejected: bad signature"
                    );
                    // The key and type as far as the message says them (not to be trusted).
                    let event = source::event_from_message(message).ok();
                    let rejected = Rejected {
                        seq,
                        key: event
                            .as_ref()
                            .map(|e| self.plugin.manifest.state_key(e))
                            .unwrap_or_default(),
                        event_type: event.map(|e| e.event_type).unwrap_or_default(),
                        kind: "bad-signature".into(),
                        code: Some(bad.code.into()),
                        message: bad.message,
                    };
                    // A bad signature is the publisher's fault: it does not count toward the
                    // plugin's circuit breaker.
                    if self.reject(&mut commit, message, (previous, index), rejected, false) {
                        events -= 1;
                        break;
                    }
                    continue;
                }
                let event = match source::event_from_message(message) {
                    Ok(e) => e,
                    Err(_) if !self.partition.owns_seq(seq) => {
                        events -= 1;
                        continue; // another daemon's to record
                    }
                    Err(e) => {
                        tracing::warn!(
                            plugin = %self.name, digest = %self.short_digest(), seq,
                            correlation_id = correlation_of(message), error = %format!("{e:#}"),
                            "event rejected: unreadable message"
                        );
                        let rejected = Rejected {
                            seq,
                            key: String::new(),
                            event_type: String::new(),
                            kind: "invalid-event".into(),
                            code: None,
                            message: format!("{e:#}"),
                        };
                        if self.reject(&mut commit, message, (previous, index), rejected, true) {
                            events -= 1;
                            break;
                        }
                        continue;
                    }
                };
                (event, None)
            };
            // A version promoted at this sequence takes over before the event's key and state
            // are read: it folds the event from its own (converted) states.
            while self
                .promotions
                .first()
                .is_some_and(|s| s.plugin.at_seq.is_some_and(|at| seq >= at))
            {
                let swap = self.promotions.remove(0);
                // Same source: checked before the version was handed over. The old version
                // folded up to the event before this one.
                self.take_over(swap, previous);
            }
            let key = self.plugin.manifest.state_key(&event);
            if !self.partition.owns(&key) {
                events -= 1;
                continue; // another daemon folds this key
            }
            let outcome = match precomputed {
                // Folded in the batch: its state comes with the batch's.
                Some(outcome) => outcome.map(|effects| (None, effects)),
                None => {
                    let Ok(state) = self.state_of(&key) else {
                        return None; // stopping: nothing of this batch is committed or acked
                    };
                    if let Some(after) = self.swapped_after.take() {
                        self.pause = Some((after.elapsed(), seq));
                    }
                    let (call, fuel) = (Instant::now(), self.step.fuel_used());
                    let outcome = self.step.step(&self.plugin.manifest, state.as_ref(), &event);
                    let now = Instant::now();
                    self.last_step_end = Some(now);
                    self.stats.calls.observe(now - call);
                    self.stats.fuel += self.step.fuel_used().saturating_sub(fuel);
                    let replaying = self.catching_up;
                    if let Some(shadow) = self.shadow.as_mut().filter(|_| !replaying) {
                        let theirs = shadow.step.step(&shadow.manifest, state.as_ref(), &event);
                        shadow_events += 1;
                        let (live, theirs) = (describe(&outcome), describe(&theirs));
                        if live != theirs {
                            commit.shadow_diffs.push(ShadowDiff {
                                shadow_digest: shadow.digest.clone(),
                                seq,
                                key: key.clone(),
                                live,
                                shadow: theirs,
                            });
                        }
                    }
                    outcome.map(|(state, effects)| (Some(state), effects))
                }
            };
            match outcome {
                Ok((new_state, effects)) => {
                    for (index, effect) in effects.into_iter().enumerate() {
                        *self.stats.effects.entry(effect.kind().as_str()).or_default() += 1;
                        self.route(&mut commit, &event, index, effect);
                    }
                    if let Some(new_state) = new_state {
                        self.states.insert(key.clone(), new_state);
                    }
                    dirty.insert(key);
                    self.consecutive_failures = 0;
                    self.consecutive_errors = 0;
                }
                Err(StepError { kind, code, message: reason, .. }) => {
                    tracing::warn!(
                        plugin = %self.name, digest = %self.short_digest(), seq, key = %key,
                        correlation_id = event.correlation_id.as_deref().unwrap_or(""),
                        kind = %kind, code = code.as_deref().unwrap_or(""),
                        reason = %reason, "event rejected"
                    );
                    let rejected = Rejected {
                        seq,
                        key,
                        event_type: event.event_type.clone(),
                        kind,
                        code,
                        message: reason,
                    };
                    if self.reject(&mut commit, message, (previous, index), rejected, true) {
                        events -= 1;
                        break;
                    }
                }
            }
        }
        if let Some(batch) = batch {
            self.settle_batch(batch, messages);
        }
        if !self.rewrite.is_empty() {
            dirty.extend(self.rewrite.drain());
            self.snapshot_due = true;
        }
        self.pending.extend(dirty);
        // Stream distance: a partition's snapshots move past the keys it does not fold too.
        self.since_snapshot += read;
        // A snapshot: every state changed since the last one, as of this batch's end.
        let snapshot = self.snapshot_due
            || self.since_snapshot >= self.snapshot_interval
            || self.pending.len() > self.cache_keys;
        if snapshot && !self.catching_up {
            commit.states = self
                .pending
                .drain()
                .map(|key: String| {
                    let state = self.states[&key].clone();
                    (key, state)
                })
                .collect();
            self.snapshot_seq = commit.last_seq;
            self.since_snapshot = 0;
            self.snapshot_due = false;
        }
        commit.snapshot_seq = self.snapshot_seq;
        // A promotion may have swapped versions inside the batch: the checkpoint names the
        // version that folded its last event.
        commit.digest.clone_from(&self.digest);
        commit.state_version = self.state_version;
        self.shadow_events = shadow_events;
        let rejected = commit.rejected.len() as u64;
        Some((commit, events, rejected))
    }

    /// The running version's digest, shortened as log lines name it.
    fn short_digest(&self) -> &str {
        &self.digest[..self.digest.len().min(12)]
    }

    /// With `[event-signing] verify`, checks the message's signature.
    fn verify(&self, message: &Message) -> Result<(), crate::integrity::BadSignature> {
        if self.verify_keys.is_empty() {
            return Ok(());
        }
        crate::integrity::verify_message(message, &self.verify_keys)
    }

    /// Handles an event the plugin failed on, by its `on-error`: records it (and dead-letters
    /// it, and counts it toward the circuit breaker when `counts`), or halts before it. True if
    /// the plugin halted: the caller ends the batch. `at` is the sequence folded before the
    /// event and the event's index in the batch.
    fn reject(
        &mut self,
        commit: &mut Commit,
        message: &Message,
        at: (u64, usize),
        rejected: Rejected,
        counts: bool,
    ) -> bool {
        if self.plugin.manifest.on_error == OnError::Halt
            && matches!(self.role, Role::Live)
            && !self.catching_up
        {
            self.halt(commit, at, &rejected);
            return true;
        }
        if self.dead_letter(commit, message, &rejected) {
            self.stats.dead_letters += 1;
        }
        if counts && !self.catching_up {
            self.count_failure(&rejected);
        }
        commit.rejected.push(rejected);
        false
    }

    /// Stops the plugin before the event it failed on: the batch ends with the event before,
    /// and the failed one stays unacked, to be folded again when the plugin restarts.
    fn halt(&mut self, commit: &mut Commit, (previous, index): (u64, usize), rejected: &Rejected) {
        self.folded = previous;
        commit.last_seq = previous;
        self.consumed = index;
        self.tripped = Some(format!(
            "halted at sequence {} (on-error = \"halt\"): {}: {}; the event is folded again when \
             the plugin restarts (`jetfold plugin resume`, SIGHUP or a change in its directory)",
            rejected.seq, rejected.kind, rejected.message
        ));
    }

    /// Counts a failed event toward the circuit breaker, which judges malfunctions (traps,
    /// exhausted fuel, memory or limits, refused effects, unreadable messages): it trips at
    /// `max-consecutive-failures` of them in a row. The plugin's own errors are outcomes it
    /// chose (a business rejection), and the publisher's faults (a payload too large) are not
    /// the version's: neither counts, unless the manifest sets `max-consecutive-errors` for a
    /// run of the plugin's own errors.
    fn count_failure(&mut self, rejected: &Rejected) {
        if !matches!(self.role, Role::Live) {
            return;
        }
        let limits = &self.plugin.manifest.limits;
        let (count, limit, what) = match rejected.kind.as_str() {
            "payload-too-large" => return,
            "error" => {
                self.consecutive_errors += 1;
                (self.consecutive_errors, limits.max_consecutive_errors, "returned an error")
            }
            _ => {
                self.consecutive_failures += 1;
                (self.consecutive_failures, limits.max_consecutive_failures, "malfunctioned")
            }
        };
        if limit > 0 && count >= limit {
            self.tripped = Some(format!(
                "circuit open: the plugin {what} on {limit} events in a row, the last at sequence {} ({}: {}); \
                 the plugin is stopped until `jetfold plugin resume`, SIGHUP or a change in its directory",
                rejected.seq, rejected.kind, rejected.message
            ));
        }
    }

    /// With `on-error = "dead-letter"`, puts the message the plugin failed on into the outbox,
    /// for the dead-letter subject: its payload and headers as they came, the reason, the
    /// plugin's digest and where it came from. Committed with the batch, so published once.
    /// True if it was dead-lettered.
    fn dead_letter(&self, commit: &mut Commit, message: &Message, rejected: &Rejected) -> bool {
        if self.plugin.manifest.on_error != OnError::DeadLetter
            || matches!(self.role, Role::Rebuild { .. })
            || self.catching_up
        {
            return false;
        }
        let one_line = |s: &str| -> String {
            let s: String = s.chars().map(|c| if c.is_control() { ' ' } else { c }).collect();
            s.chars().take(1024).collect()
        };
        let msg_id = format!("{}:{}:dead-letter", self.name, rejected.seq);
        let mut h: Vec<(String, String)> = Vec::new();
        let mut source_msg_id = None;
        if let Some(headers) = &message.headers {
            for (name, values) in headers.iter() {
                let name: &str = name.as_ref();
                for v in values {
                    if name.eq_ignore_ascii_case(headers::MSG_ID) {
                        source_msg_id = Some(v.as_str().to_string());
                    } else {
                        h.push((name.to_string(), v.as_str().to_string()));
                    }
                }
            }
        }
        h.push((headers::MSG_ID.into(), msg_id.clone()));
        if let Some(id) = source_msg_id {
            h.push((headers::DLQ_SOURCE_MSG_ID.into(), id));
        }
        h.push((headers::DLQ_KIND.into(), rejected.kind.clone()));
        if let Some(code) = &rejected.code {
            h.push((headers::DLQ_CODE.into(), one_line(code)));
        }
        h.push((headers::DLQ_REASON.into(), crate::dlq::encode_reason(&rejected.message)));
        h.push((headers::PLUGIN.into(), self.name.clone()));
        h.push((headers::PLUGIN_DIGEST.into(), self.digest.clone()));
        h.push((headers::SOURCE_SEQ.into(), rejected.seq.to_string()));
        h.push((headers::DLQ_SOURCE_STREAM.into(), self.plugin.stream.clone()));
        h.push((headers::DLQ_SOURCE_SUBJECT.into(), message.subject.to_string()));
        commit.outbox.push(OutboxMessage {
            msg_id,
            subject: self.dead_letters.subject(&self.name),
            headers: h,
            payload: message.payload.to_vec(),
        });
        true
    }

    /// Sends one accepted effect where it goes: SQL into the commit, emits into the outbox,
    /// logs to the log.
    fn route(&self, commit: &mut Commit, event: &Event, index: usize, effect: Effect) {
        if matches!(self.role, Role::Rebuild { .. })
            && matches!(effect, Effect::Emit { .. } | Effect::Log { .. })
        {
            return; // a rebuild replays the past: what it emitted and logged happened already
        }
        if self.catching_up {
            return; // folding committed events again: their effects are committed already
        }
        match effect {
            Effect::Emit { kind, subject, message_type, payload, headers: extra } => {
                let msg_id = format!("{}:{}:{index}", self.name, event.sequence);
                let kind = match kind {
                    effect::MessageKind::Event => "event",
                    effect::MessageKind::Command => "command",
                };
                let mut h = vec![
                    (headers::MSG_ID.to_string(), msg_id.clone()),
                    (headers::EVENT_TYPE.to_string(), message_type),
                    (
                        headers::CORRELATION_ID.to_string(),
                        event.correlation_id.clone().unwrap_or_else(|| event.message_id.clone()),
                    ),
                    (headers::CAUSATION_ID.to_string(), event.message_id.clone()),
                    (headers::EVENT_TIME.to_string(), event.time.to_rfc3339()),
                    (headers::PLUGIN.to_string(), self.name.clone()),
                    (headers::PLUGIN_DIGEST.to_string(), self.digest.clone()),
                    (headers::SOURCE_SEQ.to_string(), event.sequence.to_string()),
                    (headers::KIND.to_string(), kind.to_string()),
                ];
                h.extend(extra);
                let payload = payload.get().as_bytes().to_vec();
                if let Some((id, key)) = &self.sign_key {
                    let signed = crate::integrity::Signed::from_headers(&subject, &h, &payload);
                    let signature = signed.sign(id, key);
                    h.push((crate::integrity::SIGNATURE.to_string(), signature));
                }
                commit.outbox.push(OutboxMessage { msg_id, subject, headers: h, payload });
            }
            Effect::Log { level, message } => {
                let (plugin, seq) = (&self.name, event.sequence);
                let digest = self.short_digest();
                let corr = event.correlation_id.as_deref().unwrap_or("");
                match level {
                    LogLevel::Trace => {
                        tracing::trace!(plugin, digest, seq, correlation_id = corr, "{message}")
                    }
                    LogLevel::Debug => {
                        tracing::debug!(plugin, digest, seq, correlation_id = corr, "{message}")
                    }
                    LogLevel::Info => {
                        tracing::info!(plugin, digest, seq, correlation_id = corr, "{message}")
                    }
                    LogLevel::Warn => {
                        tracing::warn!(plugin, digest, seq, correlation_id = corr, "{message}")
                    }
                    LogLevel::Error => {
                        tracing::error!(plugin, digest, seq, correlation_id = corr, "{message}")
                    }
                }
            }
            sql => commit.effects.push((event.sequence, sql)),
        }
    }
}
