//! `jetfold run`: the long-lived daemon. One worker thread per plugin runs the path of an
//! event in a straight line: fetch a batch from the plugin's durable consumer, call the guest
//! for each event, check the effects, commit SQL effects + states + rejections + outbox +
//! checkpoint in one transaction, publish the outbox, then ack the batch.
//!
//! Guest calls and SQL run on the worker's own thread, off the async runtime that carries the
//! NATS connection. Failures running effects (database, NATS) are retried with exponential
//! backoff and nothing is acked meanwhile; guest failures are deterministic, so the event is
//! recorded in `jetfold_rejected` and acked.

use std::{
    collections::HashMap,
    future::Future,
    path::PathBuf,
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};
use async_nats::jetstream::{self, message::Message};
use futures::StreamExt as _;
use tokio::{runtime::Handle, sync::watch};

use crate::component::{ComponentLoader, LoadedComponent};
use crate::config::{Config, StartPosition};
use crate::effect::{self, Effect, LogLevel};
use crate::event::Event;
use crate::fold::{StepError, checked_step};
use crate::guest::GuestInstance;
use crate::manifest::{MANIFEST_FILE, Manifest, PluginKind};
use crate::nats::{self, source, source::headers};
use crate::sink::{Commit, OutboxMessage, Rejected, Sink, SinkTarget};

/// A plugin the daemon runs, with its source resolved.
pub struct DaemonPlugin {
    /// The manifest.
    pub manifest: Manifest,
    /// The checked component.
    pub component: LoadedComponent,
    /// Stream to read.
    pub stream: String,
    /// Filter subjects.
    pub subjects: Vec<String>,
    /// Where a new consumer starts.
    pub start: StartPosition,
}

impl DaemonPlugin {
    /// A fresh, initialised instance of the plugin.
    pub fn instantiate(&self, loader: &ComponentLoader) -> anyhow::Result<GuestInstance> {
        let m = &self.manifest;
        GuestInstance::new(&self.component, loader.engine(), m.limits.clone(), m.config_json())
            .map_err(|e| anyhow::anyhow!("plugin `{}` failed to start: {e}", m.name))
    }
}

/// Loads every plugin under the config's plugin directory; errors name the file at fault.
pub fn discover(config: &Config, loader: &ComponentLoader) -> anyhow::Result<Vec<DaemonPlugin>> {
    let dir = config.resolve(&config.plugin_dir);
    let mut manifests: Vec<PathBuf> = std::fs::read_dir(&dir)
        .with_context(|| format!("failed to read plugin directory {}", dir.display()))?
        .filter_map(|e| e.ok().map(|e| e.path().join(MANIFEST_FILE)))
        .filter(|p| p.exists())
        .collect();
    manifests.sort();
    let mut plugins = Vec::new();
    for path in manifests {
        let manifest = Manifest::load(&path)?;
        let overrides = config.plugins.get(&manifest.name).cloned().unwrap_or_default();
        if !overrides.enabled || manifest.kind == PluginKind::Upcaster {
            continue;
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
        plugins.push(DaemonPlugin {
            manifest,
            component,
            stream,
            subjects,
            start: overrides.start.unwrap_or_default(),
        });
    }
    Ok(plugins)
}

/// Runs the daemon until `shutdown` completes, then drains: every worker finishes (commits
/// and acks) the batch in hand and stops.
pub async fn run(config: Config, shutdown: impl Future<Output = ()>) -> anyhow::Result<()> {
    let cache = config
        .cache_dir
        .clone()
        .map(|d| config.resolve(&d))
        .or_else(ComponentLoader::default_cache_dir);
    let loader = ComponentLoader::new(cache)?;
    let plugins = discover(&config, &loader)?;
    if plugins.is_empty() {
        bail!("no plugins to run in {}", config.resolve(&config.plugin_dir).display());
    }
    let target = config.sink_target();
    let client = nats::connect(&config).await?;
    let js = jetstream::new(client.clone());
    let (stop_tx, stop_rx) = watch::channel(false);
    let mut workers = Vec::new();
    let mut services = Vec::new();
    for plugin in plugins {
        if plugin.manifest.kind == PluginKind::Projection {
            let m = &plugin.manifest;
            let guest = plugin.instantiate(&loader)?;
            let service =
                crate::query::serve(client.clone(), m.name.clone(), guest, target.clone());
            let name = m.name.clone();
            services.push(tokio::spawn(async move {
                if let Err(e) = service.await {
                    tracing::error!(plugin = %name, error = %format!("{e:#}"), "query service stopped");
                }
            }));
        }
        let name = plugin.manifest.name.clone();
        let handle = Handle::current();
        let stop = stop_rx.clone();
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        let (loader, config, target, js) =
            (loader.clone(), config.clone(), target.clone(), js.clone());
        // The worker is built on its own thread: database clients may run runtimes of their
        // own, which cannot start inside this one.
        let thread = std::thread::Builder::new()
            .name(format!("plugin-{name}"))
            .spawn(move || match Worker::new(plugin, &loader, &config, &target, js) {
                Ok(worker) => {
                    let _ = ready_tx.send(Ok(()));
                    worker.run(&handle, &stop)
                }
                Err(e) => {
                    let _ = ready_tx.send(Err(e));
                    Ok(())
                }
            })
            .context("failed to start a worker thread")?;
        tokio::task::spawn_blocking(move || ready_rx.recv())
            .await?
            .map_err(|_| anyhow::anyhow!("worker thread for `{name}` ended before starting"))??;
        tracing::info!(plugin = %name, "plugin started");
        workers.push((name, thread));
    }
    shutdown.await;
    tracing::info!("stopping: draining in-flight batches");
    let _ = stop_tx.send(true);
    let mut failed = Vec::new();
    for (name, thread) in workers {
        let joined = tokio::task::spawn_blocking(move || thread.join()).await?;
        match joined {
            Ok(Ok(())) => {}
            Ok(Err(e)) => failed.push(format!("{name}: {e:#}")),
            Err(_) => failed.push(format!("{name}: worker panicked")),
        }
    }
    for service in services {
        service.abort();
    }
    client.flush().await.ok();
    if !failed.is_empty() {
        bail!("plugins stopped with errors: {}", failed.join("; "));
    }
    Ok(())
}

struct Worker {
    name: String,
    digest: String,
    plugin: DaemonPlugin,
    guest: GuestInstance,
    sink: Sink,
    js: jetstream::Context,
    states: HashMap<String, Vec<u8>>,
    checkpoint: u64,
    batch_size: usize,
    ack_wait: Duration,
    fetch_wait: Duration,
}

/// Exponential backoff between retries of a transient failure.
struct Backoff(Duration);

impl Backoff {
    fn new() -> Self {
        Backoff(Duration::from_millis(100))
    }
    fn wait(&mut self, stop: &watch::Receiver<bool>) {
        let deadline = Instant::now() + self.0;
        while Instant::now() < deadline && !*stop.borrow() {
            std::thread::sleep(Duration::from_millis(20).min(self.0));
        }
        self.0 = (self.0 * 2).min(Duration::from_secs(10));
    }
}

/// Runs `attempt` until it succeeds, backing off after each failure (logged at `level` with
/// `what`); `None` if the daemon is stopping first.
fn retry<T>(
    plugin: &str,
    what: &str,
    level: tracing::Level,
    stop: &watch::Receiver<bool>,
    mut attempt: impl FnMut() -> anyhow::Result<T>,
) -> Option<T> {
    let mut backoff = Backoff::new();
    loop {
        match attempt() {
            Ok(value) => return Some(value),
            Err(e) if level == tracing::Level::ERROR => {
                tracing::error!(plugin, error = %format!("{e:#}"), "{what}; retrying")
            }
            Err(e) => tracing::warn!(plugin, error = %format!("{e:#}"), "{what}; retrying"),
        }
        backoff.wait(stop);
        if *stop.borrow() {
            return None;
        }
    }
}

impl Worker {
    fn new(
        plugin: DaemonPlugin,
        loader: &ComponentLoader,
        config: &Config,
        target: &SinkTarget,
        js: jetstream::Context,
    ) -> anyhow::Result<Worker> {
        let m = &plugin.manifest;
        let guest = plugin.instantiate(loader)?;
        let mut sink = Sink::open(target)?;
        sink.ensure_tables(&m.allow.tables).context("failed to create read-model tables")?;
        let checkpoint = sink.checkpoint(&m.name)?.map(|c| c.last_seq).unwrap_or(0);
        Ok(Worker {
            name: m.name.clone(),
            digest: plugin.component.digest.hex(),
            guest,
            sink,
            js,
            states: HashMap::new(),
            checkpoint,
            batch_size: config.batch_size,
            ack_wait: config.ack_wait(),
            fetch_wait: config.fetch_wait(),
            plugin,
        })
    }

    fn run(mut self, rt: &Handle, stop: &watch::Receiver<bool>) -> anyhow::Result<()> {
        // Messages committed before a crash but not confirmed published go out first.
        let pending = self.sink.outbox(&self.name)?;
        if !pending.is_empty() && !self.publish(rt, &pending, stop) {
            return Ok(());
        }
        let p = &self.plugin;
        let resume_after = (self.checkpoint > 0).then_some(self.checkpoint);
        let bind = || {
            rt.block_on(source::consumer(
                &self.js,
                &p.stream,
                &self.name,
                &p.subjects,
                p.start,
                resume_after,
                self.ack_wait,
                self.batch_size * 4,
            ))
        };
        let Some(consumer) =
            retry(&self.name, "cannot bind the source", tracing::Level::ERROR, stop, bind)
        else {
            return Ok(());
        };
        let mut backoff = Backoff::new();
        while !*stop.borrow() {
            let fetched = rt.block_on(async {
                let mut batch = consumer
                    .fetch()
                    .max_messages(self.batch_size)
                    .expires(self.fetch_wait)
                    .messages()
                    .await?;
                let mut messages = Vec::new();
                while let Some(m) = batch.next().await {
                    match m {
                        Ok(m) => messages.push(m),
                        Err(e) if messages.is_empty() => return Err(anyhow::anyhow!(e)),
                        Err(_) => break,
                    }
                }
                anyhow::Ok(messages)
            });
            let messages = match fetched {
                Ok(m) => m,
                Err(e) => {
                    tracing::warn!(plugin = %self.name, error = %format!("{e:#}"), "fetch failed; retrying");
                    backoff.wait(stop);
                    continue;
                }
            };
            backoff = Backoff::new();
            if messages.is_empty() {
                continue;
            }
            if !self.handle_batch(rt, &messages, stop) {
                break;
            }
        }
        Ok(())
    }

    /// Folds, commits, publishes and acks one batch; false if stopped before the commit.
    fn handle_batch(
        &mut self,
        rt: &Handle,
        messages: &[Message],
        stop: &watch::Receiver<bool>,
    ) -> bool {
        let mut commit = self.fold(messages);
        if commit.last_seq > self.checkpoint {
            let committed = retry(
                &self.name,
                "commit failed (nothing acked)",
                tracing::Level::WARN,
                stop,
                || self.sink.commit(&commit),
            );
            if committed.is_none() {
                return false;
            }
            self.checkpoint = commit.last_seq;
            self.states.extend(std::mem::take(&mut commit.states));
            if !commit.outbox.is_empty() && !self.publish(rt, &commit.outbox, stop) {
                return false;
            }
        }
        rt.block_on(async {
            for m in messages {
                if let Err(e) = m.ack().await {
                    tracing::warn!(plugin = %self.name, error = %e, "ack failed; the event will be redelivered and skipped");
                }
            }
        });
        true
    }

    /// Publishes outbox messages and waits for JetStream to confirm each; then forgets them.
    fn publish(
        &mut self,
        rt: &Handle,
        outbox: &[OutboxMessage],
        stop: &watch::Receiver<bool>,
    ) -> bool {
        let js = &self.js;
        let publish_all = || {
            rt.block_on(async {
                let mut acks = Vec::with_capacity(outbox.len());
                for m in outbox {
                    let mut h = async_nats::HeaderMap::new();
                    for (k, v) in &m.headers {
                        h.append(k.as_str(), v.as_str());
                    }
                    acks.push(
                        js.publish_with_headers(m.subject.clone(), h, m.payload.clone().into())
                            .await?,
                    );
                }
                for ack in acks {
                    ack.await?;
                }
                anyhow::Ok(())
            })
        };
        let what = "publishing emitted messages failed (nothing acked)";
        if retry(&self.name, what, tracing::Level::WARN, stop, publish_all).is_none() {
            return false;
        }
        let ids: Vec<String> = outbox.iter().map(|m| m.msg_id.clone()).collect();
        if let Err(e) = self.sink.clear_outbox(&ids) {
            // Harmless: a later start re-publishes them and JetStream drops the duplicates.
            tracing::warn!(plugin = %self.name, error = %e, "cannot clear the outbox");
        }
        true
    }

    fn state_of(&mut self, key: &str, dirty: &HashMap<String, Vec<u8>>) -> Option<Vec<u8>> {
        if let Some(s) = dirty.get(key).or_else(|| self.states.get(key)) {
            return Some(s.clone());
        }
        match self.sink.state(&self.name, key) {
            Ok(Some(s)) => {
                self.states.insert(key.to_string(), s.clone());
                Some(s)
            }
            Ok(None) => None,
            Err(e) => {
                tracing::error!(plugin = %self.name, key, error = %e, "cannot load state");
                None
            }
        }
    }

    /// Runs the guest over the batch: what to commit, new states included.
    fn fold(&mut self, messages: &[Message]) -> Commit {
        let mut commit = Commit {
            plugin: self.name.clone(),
            digest: self.digest.clone(),
            last_seq: self.checkpoint,
            ..Default::default()
        };
        let mut dirty: HashMap<String, Vec<u8>> = HashMap::new();
        for message in messages {
            let Ok(info) = message.info() else { continue };
            let seq = info.stream_sequence;
            if seq <= self.checkpoint {
                continue; // redelivered after a crash: already applied
            }
            commit.last_seq = commit.last_seq.max(seq);
            let event = match source::event_from_message(message) {
                Ok(e) => e,
                Err(e) => {
                    tracing::warn!(plugin = %self.name, seq, error = %format!("{e:#}"), "event rejected: unreadable message");
                    commit.rejected.push(Rejected {
                        seq,
                        key: String::new(),
                        event_type: String::new(),
                        kind: "invalid-event".into(),
                        code: None,
                        message: format!("{e:#}"),
                    });
                    continue;
                }
            };
            let key = self.plugin.manifest.state_key(&event);
            let state = self.state_of(&key, &dirty);
            let outcome =
                checked_step(&mut self.guest, &self.plugin.manifest, state.as_ref(), &event);
            match outcome {
                Ok((new_state, effects)) => {
                    for (index, effect) in effects.into_iter().enumerate() {
                        self.route(&mut commit, &event, index, effect);
                    }
                    dirty.insert(key, new_state);
                }
                Err(StepError { kind, code, message, .. }) => {
                    tracing::warn!(
                        plugin = %self.name, digest = %&self.digest[..12], seq, key = %key,
                        correlation_id = event.correlation_id.as_deref().unwrap_or(""),
                        reason = %message, "event rejected"
                    );
                    commit.rejected.push(Rejected {
                        seq,
                        key,
                        event_type: event.event_type.clone(),
                        kind,
                        code,
                        message,
                    });
                }
            }
        }
        commit.states = dirty.into_iter().collect();
        commit
    }

    /// Sends one accepted effect where it goes: SQL into the commit, emits into the outbox,
    /// logs to the log.
    fn route(&self, commit: &mut Commit, event: &Event, index: usize, effect: Effect) {
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
                commit.outbox.push(OutboxMessage {
                    msg_id,
                    subject,
                    headers: h,
                    payload: payload.get().as_bytes().to_vec(),
                });
            }
            Effect::Log { level, message } => {
                let (plugin, seq) = (&self.name, event.sequence);
                let corr = event.correlation_id.as_deref().unwrap_or("");
                match level {
                    LogLevel::Trace => {
                        tracing::trace!(plugin, seq, correlation_id = corr, "{message}")
                    }
                    LogLevel::Debug => {
                        tracing::debug!(plugin, seq, correlation_id = corr, "{message}")
                    }
                    LogLevel::Info => {
                        tracing::info!(plugin, seq, correlation_id = corr, "{message}")
                    }
                    LogLevel::Warn => {
                        tracing::warn!(plugin, seq, correlation_id = corr, "{message}")
                    }
                    LogLevel::Error => {
                        tracing::error!(plugin, seq, correlation_id = corr, "{message}")
                    }
                }
            }
            sql => commit.effects.push((event.sequence, sql)),
        }
    }
}
