//! The commit stage: one transaction per batch (effects, states, rejections, outbox,
//! checkpoint), then publish and ack.

use super::*;

/// The commit stage: the only writer of the plugin's tables and checkpoint.
pub(super) struct Committer {
    pub(super) name: String,
    pub(super) sink: Sink,
    pub(super) env: WorkerEnv,
    pub(super) checkpoint: u64,
    /// The state version of the states committed.
    pub(super) state_version: Option<u32>,
    /// The version the checkpoint names.
    pub(super) digest: Option<String>,
    /// Publishing was given up as the daemon stops: the batches still queued are committed
    /// without publishing or acking, and the outbox is published once at the end of the drain.
    pub(super) deferred: bool,
    /// The last message of the batches committed since, acked once their messages are out.
    pub(super) unacked: Option<Message>,
    /// This thread's stage times of the batch being handled.
    pub(super) stages: Stages,
}

impl Committer {
    /// Opens the sink, creates the plugin's tables; the checkpoint (kept under
    /// `checkpoint_name`) to resume after.
    pub(super) fn open(
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

    pub(super) fn run(mut self, jobs: mpsc::Receiver<Job>) -> anyhow::Result<()> {
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
    pub(super) fn leave_uncommitted(&self) {
        self.env.drain.leave(format!(
            "{}: events after sequence {} not committed (folded again at the next start)",
            self.name, self.checkpoint
        ));
    }

    /// The drain's last step after publishing was put off: the whole outbox, retried for
    /// what is left of `drain-timeout-ms`; what does not go out stays for the next start.
    pub(super) fn publish_at_drain_end(&mut self) {
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
    pub(super) fn handle(&mut self, job: &Job) -> bool {
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

    pub(super) fn ack(&self, message: &Message) {
        if let Err(e) = self.env.rt.block_on(message.ack()) {
            tracing::warn!(plugin = %self.name, error = %e, "ack failed; the events will be redelivered and skipped");
        }
    }

    /// Publishes outbox messages and waits for JetStream to confirm each; then forgets them.
    /// False if the daemon stops first: with [`OnStop::GiveUp`], after the attempt under way
    /// (cut short) or, when already stopping, after one; with [`OnStop::Drain`], once the
    /// drain's time is over.
    pub(super) fn publish(&mut self, outbox: &[OutboxMessage], on_stop: OnStop) -> bool {
        let (js, rt, drain) = (&self.env.js, &self.env.rt, &self.env.drain);
        let mut first = true;
        let publish_all = || {
            // Once an attempt failed, a subject no stream captures is reported as the cause
            // and not published again until one does: its core subscribers would get a copy
            // per attempt.
            let check_first = !std::mem::replace(&mut first, false);
            let stop = self.env.stop.clone();
            // A stop that comes during the attempt puts it off; once stopping, one attempt.
            let put_off = on_stop == OnStop::GiveUp && !stop.is_cancelled();
            // A drain's attempt ends with the drain.
            let now = Instant::now();
            let bound = match on_stop == OnStop::Drain && stop.is_cancelled() {
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
                    _ = stop.cancelled(), if put_off => {
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
pub(super) const IDLE_CHECK: Duration = Duration::from_millis(100);

/// The longest one attempt to publish a batch's messages may take (JetStream confirms each
/// within 5 s, or fails it).
pub(super) const PUBLISH_ATTEMPT: Duration = Duration::from_secs(15);

/// Publishes `outbox` to JetStream and waits until it confirms every message.
pub(super) async fn publish_outbox(
    js: &jetstream::Context,
    outbox: &[OutboxMessage],
) -> anyhow::Result<()> {
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
pub(super) fn correlation_of(message: &Message) -> &str {
    message.headers.as_ref().and_then(|h| h.get(headers::CORRELATION_ID)).map_or("", |v| v.as_str())
}

/// A message's stream sequence (0 if it carries no JetStream info).
pub(super) fn message_seq(message: &Message) -> u64 {
    message.info().map_or(0, |i| i.stream_sequence)
}

/// The keys whose states `commit` writes.
pub(super) fn state_keys(commit: &Commit) -> Vec<String> {
    commit.states.iter().map(|(k, _)| k.clone()).collect()
}

/// `states`, written under state version `from`, converted by `step`'s `migrate`.
pub(super) fn migrate_states(
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
pub(super) fn versions_at_start(
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
