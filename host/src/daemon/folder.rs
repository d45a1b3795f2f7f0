//! The fold stage: a worker's loop (bind, catch up, fold until stopped, snapshots, take-overs).

use super::*;

/// The fold stage: the plugin's source, its step and the states of the keys it folded.
pub(super) struct Folder {
    /// The daemon's name (its consumers are `<daemon>-<plugin>`).
    pub(super) daemon: String,
    /// The plugin's name, or a rebuild's staging name: what it commits and reads under.
    pub(super) name: String,
    /// The keys this daemon folds.
    pub(super) partition: crate::config::Partition,
    /// The name of its checkpoint, if not `name` (one per partition).
    pub(super) checkpoint_name: Option<String>,
    /// Live, or rebuilding under a staging name.
    pub(super) role: Role,
    /// Where events the plugin fails on go.
    pub(super) dead_letters: crate::config::DeadLetterConfig,
    /// Keys to verify incoming events with (none: not verified).
    pub(super) verify_keys: Vec<(String, Vec<u8>)>,
    /// The key emitted events are signed with, if any.
    pub(super) sign_key: Option<(String, Vec<u8>)>,
    /// Messages received past a rebuild's ceiling, to fold once the live version is past them.
    pub(super) held: Vec<Message>,
    /// Malfunctions in a row (the circuit breaker's count): traps, exhausted limits, refused
    /// effects, unreadable messages; the plugin's own errors in between neither count nor reset.
    pub(super) consecutive_failures: u64,
    /// The plugin's own errors in a row, counted when its manifest sets
    /// `max-consecutive-errors`.
    pub(super) consecutive_errors: u64,
    /// Why the circuit breaker stopped the plugin, once it has.
    pub(super) tripped: Option<String>,
    /// How many messages of the last batch were folded (the rest, after a trip, are not).
    pub(super) consumed: usize,
    pub(super) digest: String,
    pub(super) plugin: DaemonPlugin,
    pub(super) step: Box<dyn Step>,
    /// Reads states of keys this process has not folded yet.
    pub(super) reader: Sink,
    pub(super) env: WorkerEnv,
    pub(super) swaps: mpsc::Receiver<Swap>,
    /// Tables a swapped-in version may write, to create before its first commit.
    pub(super) new_tables: Option<Vec<String>>,
    /// When the old version finished its last event, until the new one starts its first.
    pub(super) swapped_after: Option<Instant>,
    /// A version took over at a batch boundary: the next commit (made at once if no event
    /// waits) records its digest in the checkpoint.
    pub(super) announce: bool,
    pub(super) last_step_end: Option<Instant>,
    /// The pause of a swap whose new version has folded its first event, and that event's
    /// sequence.
    pub(super) pause: Option<(Duration, u64)>,
    /// Versions that took over since the last swap was counted.
    pub(super) takeovers: u64,
    /// Versions waiting for their promotion sequences, in the order they take over.
    pub(super) promotions: Vec<Swap>,
    /// A version folding beside the live one, effects suppressed, outcomes compared.
    pub(super) shadow: Option<Shadow>,
    /// Events the shadow folded in the last batch.
    pub(super) shadow_events: u64,
    /// What the last batch's folding counted.
    pub(super) stats: BatchStats,
    pub(super) states: HashMap<String, Vec<u8>>,
    /// The state version the plugin's states are in (the running version's, once migrated).
    pub(super) state_version: u32,
    /// Keys whose states were converted to a new state version, to commit with the next batch.
    pub(super) rewrite: HashSet<String>,
    /// Keys of the batches handed to the commit thread, by their last sequence: the states
    /// that must stay in memory until those batches are committed.
    pub(super) uncommitted: std::collections::VecDeque<(u64, Vec<String>)>,
    /// How many states to keep in memory before forgetting committed ones.
    pub(super) cache_keys: usize,
    /// Keys whose states changed since the last snapshot: kept in memory until one is written.
    pub(super) pending: HashSet<String>,
    /// The sequence the last snapshot (handed on for commit) is as of.
    pub(super) snapshot_seq: u64,
    /// Events folded since the last snapshot.
    pub(super) since_snapshot: u64,
    /// Events between snapshots (`snapshot-interval`).
    pub(super) snapshot_interval: u64,
    /// The next commit takes a snapshot whatever the interval (after a state conversion).
    pub(super) snapshot_due: bool,
    /// Whether the events since the last snapshot are being folded again at start (effects,
    /// dead letters, the shadow and the circuit breaker suppressed).
    pub(super) catching_up: bool,
    /// The states in memory may be ahead of what was handed on (a batch abandoned halfway
    /// when the daemon stopped): no snapshot may be taken from them.
    pub(super) abandoned: bool,
    /// The last stream sequence folded (committed, or queued for commit).
    pub(super) folded: u64,
    pub(super) batch_size: usize,
    pub(super) ack_wait: Duration,
    pub(super) pull_expiry: Duration,
    /// Time taken waiting for and taking messages since the last batch (see [`Stages::read`]).
    pub(super) read_time: Duration,
    /// Rejected events a replayed copy may still come for, by their sequence, in this
    /// process's batches not yet committed (the database answers for the rest): whether a
    /// copy folded it, and the sequence of the batch that recorded that (see
    /// [`Folder::folds_copy`]).
    pub(super) copies: HashMap<u64, (bool, u64)>,
    /// While catching up: the events the committed fold rejected since the snapshot. One this
    /// fold folds instead (a fixed version deployed before the restart) is noted as folded, so
    /// that its copies are passed by.
    pub(super) rejected_before: HashSet<u64>,
    /// What such events owe the next commit: their effects, and the record that they folded
    /// themselves (where no copy folded them).
    pub(super) carried: Commit,
    /// While catching up: the keys of such events, whose later events' rows follow.
    pub(super) diverged: HashSet<String>,
}

impl Folder {
    pub(super) fn new(
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
            copies: HashMap::new(),
            rejected_before: HashSet::new(),
            carried: Commit::default(),
            diverged: HashSet::new(),
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
    pub(super) fn all_states(&mut self) -> Result<HashMap<String, Vec<u8>>, String> {
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
    pub(super) fn adopt(&mut self, migrated: HashMap<String, Vec<u8>>, version: u32) {
        self.rewrite = migrated.keys().cloned().collect();
        self.states = migrated;
        self.state_version = version;
    }

    /// (Re)creates the consumer just after the last folded event and pulls from it.
    pub(super) fn bind(&self) -> anyhow::Result<pull::Stream> {
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
    pub(super) fn run(mut self, jobs: mpsc::SyncSender<Job>) -> anyhow::Result<()> {
        // After a crash between snapshots, the states are brought up to the checkpoint first.
        if self.snapshot_seq < self.folded && !self.catch_up() {
            return Ok(());
        }
        // States converted at start are committed before any event is folded.
        if !self.rewrite.is_empty() && !self.fold_and_hand_on(Vec::new(), &jobs) {
            return Ok(());
        }
        // Events rejected before a crash that the running version folded while catching up:
        // their rows are written now, with a snapshot, not at the next event.
        if self.owes() && !self.snapshot_now(&jobs) {
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

    /// Whether events folded again after a crash owe the next commit something (see
    /// [`Folder::carried`]).
    pub(super) fn owes(&self) -> bool {
        let c = &self.carried;
        !(c.replayed.is_empty() && c.effects.is_empty() && c.outbox.is_empty())
    }

    /// Hands on a commit of every state changed since the last snapshot, with no events;
    /// false if the daemon stops.
    pub(super) fn snapshot_now(&mut self, jobs: &mpsc::SyncSender<Job>) -> bool {
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
    pub(super) fn catch_up(&mut self) -> bool {
        let (from, to) = (self.snapshot_seq, self.folded);
        let started = Instant::now();
        tracing::info!(plugin = %self.name, snapshot_seq = from, checkpoint = to, "folding the events since the last snapshot again (effects suppressed)");
        let (reader, env, name) = (&mut self.reader, &self.env, &self.name);
        let Some(rejected) =
            retry_sink(name, "cannot read the rejections", env, OnStop::GiveUp, reader, |r| {
                r.rejections_between(name, from, to)
            })
        else {
            return false;
        };
        self.rejected_before = rejected.into_iter().collect();
        self.folded = from;
        self.catching_up = true;
        let mut backoff = Backoff::new();
        while self.folded < to {
            if self.env.stop.is_cancelled() {
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
        self.rejected_before.clear();
        self.diverged.clear();
        let took_ms = started.elapsed().as_millis() as u64;
        tracing::info!(plugin = %self.name, events = self.since_snapshot, keys = self.pending.len(), took_ms, "caught up with the checkpoint");
        true
    }

    /// The folding loop: pulls, folds and hands on batches, takes over new versions, until
    /// the daemon stops or the plugin does.
    pub(super) fn fold_until_stopped(&mut self, jobs: &mpsc::SyncSender<Job>) {
        let mut source = None;
        let mut backoff = Backoff::new();
        while !self.env.stop.is_cancelled() {
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
    pub(super) fn fold_and_hand_on(
        &mut self,
        messages: Vec<Message>,
        jobs: &mpsc::SyncSender<Job>,
    ) -> bool {
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
    pub(super) fn promote_later(&mut self, swap: Swap) {
        let at = swap.plugin.at_seq;
        self.promotions.retain(|queued| queued.plugin.at_seq < at);
        self.promotions.push(swap);
    }

    /// A rebuild's ceiling: the live version's committed sequence (none for a live worker).
    pub(super) fn ceiling(&self) -> Option<u64> {
        match &self.role {
            Role::Live => None,
            Role::Rebuild { ceiling, .. } => Some(ceiling.borrow().committed_seq),
        }
    }

    /// Moves the messages past the ceiling (and all after them) from `messages` to `held`.
    pub(super) fn hold_past_ceiling(&mut self, messages: &mut Vec<Message>) {
        let Some(ceiling) = self.ceiling() else { return };
        if let Some(i) = messages.iter().position(|m| message_seq(m) > ceiling) {
            let mut past = messages.split_off(i);
            past.append(&mut self.held);
            self.held = past;
        }
    }

    /// Waits until the live version has committed `seq` (false if the daemon stops first).
    pub(super) fn wait_for_ceiling(&mut self, seq: u64) -> bool {
        let Role::Rebuild { ceiling, .. } = &mut self.role else { return true };
        let stop = self.env.stop.clone();
        self.env.rt.block_on(async {
            tokio::select! {
                reached = ceiling.wait_for(|p| p.committed_seq >= seq) => reached.is_ok(),
                _ = stop.cancelled() => false,
            }
        })
    }

    /// Forgets committed states once more than `cache_keys` are held: they are read back
    /// from the database when next needed. States of batches not yet committed stay, and so
    /// do states changed since the last snapshot (the database has older ones).
    pub(super) fn trim_states(&mut self) {
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
    pub(super) fn take_over(&mut self, swap: Swap, after_seq: u64) -> bool {
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
}
