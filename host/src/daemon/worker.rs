//! A worker's threads, their stop signal and the retry loop for transient failures.

use super::*;

/// What both of a plugin's threads share.
#[derive(Clone)]
pub(super) struct WorkerEnv {
    pub(super) rt: Handle,
    pub(super) stop: CancellationToken,
    pub(super) js: jetstream::Context,
    pub(super) target: SinkTarget,
    pub(super) progress: watch::Sender<Progress>,
    pub(super) drain: Drain,
}

/// Runs on the plugin's fold thread: starts the commit thread, reports readiness, folds until
/// stopped, then waits for the commit thread to drain.
pub(super) fn start_worker(
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
pub(super) struct Stopping;

/// A folded batch on its way to the commit thread.
pub(super) struct Job {
    pub(super) commit: Commit,
    /// Tables to create first (a new version may write tables the old one did not).
    pub(super) tables: Option<Vec<String>>,
    /// The shadow version's digest and the events it folded in this batch.
    pub(super) shadow: Option<(String, u64)>,
    /// The swap pause and the new version's first sequence, if the batch holds the first
    /// event of a new version, and how many versions took over since the last one counted
    /// (several swaps in a row, or with no event between them, each count).
    pub(super) swap_pause: Option<(Duration, u64, u64)>,
    /// The batch's last message: acking it acks the batch.
    pub(super) ack: Option<Message>,
    pub(super) events: u64,
    pub(super) rejected: u64,
    pub(super) fold_time: Duration,
    pub(super) stats: BatchStats,
}

/// The daemon's end of a worker's stop signal: [`StopSignal::stop`] tells the worker, and so
/// does dropping it (as when a `Daemon` is dropped without [`Daemon::stop`]).
pub(super) struct StopSignal(CancellationToken);

impl StopSignal {
    /// A signal, and the token the worker watches.
    pub(super) fn new() -> (StopSignal, CancellationToken) {
        let token = CancellationToken::new();
        (StopSignal(token.clone()), token)
    }

    /// Tells the worker to stop (it drains first).
    pub(super) fn stop(&self) {
        self.0.cancel();
    }
}

impl Drop for StopSignal {
    fn drop(&mut self) {
        self.0.cancel();
    }
}

/// The pauses between retries of a transient failure ([`crate::retry`], up to 10 s).
pub(super) struct Backoff(backon::ExponentialBackoff);

/// The longest pause between two attempts.
const MAX_PAUSE: Duration = Duration::from_secs(10);

impl Backoff {
    pub(super) fn new() -> Self {
        Backoff(crate::retry::pauses(MAX_PAUSE))
    }
    /// Waits out the next pause (cut short by a stop).
    pub(super) fn wait(&mut self, stop: &CancellationToken) {
        let pause = self.next();
        let deadline = Instant::now() + pause;
        while Instant::now() < deadline && !stop.is_cancelled() {
            std::thread::sleep(Duration::from_millis(20).min(pause));
        }
    }
    /// The next pause.
    pub(super) fn next(&mut self) -> Duration {
        self.0.next().unwrap_or(MAX_PAUSE)
    }
}

/// What a retry loop does once the daemon is stopping.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(super) enum OnStop {
    /// Give up after the attempt under way.
    GiveUp,
    /// Go on retrying for `drain-timeout-ms`: a commit, or the messages of committed batches,
    /// which the drain finishes if it can.
    Drain,
}

/// Runs `attempt` until it succeeds, backing off after each failure (logged at `level` with
/// `what`, counted in the plugin's progress); `None` if the daemon stops first (with
/// [`OnStop::Drain`], once the drain's time is over).
pub(super) fn retry<T>(
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
        if !env.stop.is_cancelled() {
            // A stop cuts the pause short: the next attempt is the drain's first.
            backoff.wait(&env.stop);
            if !env.stop.is_cancelled() || on_stop == OnStop::Drain {
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
pub(super) fn retry_sink<T>(
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
