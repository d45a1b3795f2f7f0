//! One batch through the guest: receive, seed states, prepare, fold, settle.

use super::*;

impl Folder {
    /// Waits for the first message (or the stop, or [`IDLE_CHECK`]), then takes what has already
    /// arrived, up to a batch; with the error that ended the stream, if one did.
    pub(super) fn receive(
        &mut self,
        stream: &mut pull::Stream,
    ) -> (Vec<Message>, Option<anyhow::Error>) {
        let stop = self.env.stop.clone();
        let limit = self.batch_size;
        self.env.rt.block_on(async move {
            let mut messages = Vec::new();
            let first = tokio::select! {
                next = stream.next() => next,
                _ = stop.cancelled() => return (messages, None),
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
    pub(super) fn state_of(&mut self, key: &str) -> Result<Option<Vec<u8>>, Stopping> {
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
    pub(super) fn prepare_batch(&mut self, messages: &[Message]) -> Option<Option<PreparedBatch>> {
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
            match source::replay(message, &self.plugin.manifest.name) {
                source::Replay::Event => {}
                source::Replay::ForAnother => continue,
                // Folded or passed by as its original's fate says, which the batch's own
                // outcomes may decide: the loop folds the batch one event at a time.
                source::Replay::CopyOf(_) => {
                    self.stats.stages.decode += decoding.elapsed();
                    return Some(None);
                }
            }
            if self.verify(message).is_err() {
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
    pub(super) fn settle_batch(&mut self, batch: PreparedBatch, messages: &[Message]) {
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
    pub(super) fn fold(&mut self, messages: &[Message]) -> Option<(Commit, u64, u64)> {
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
            // (A rebuild's name is its staging one: dead letters are replayed for the plugin's.)
            let replay = source::replay(message, &self.plugin.manifest.name);
            if replay == source::Replay::ForAnother {
                events -= 1;
                continue; // a dead letter replayed for another plugin
            }
            let copy_of = replay.copy_of();
            if let Some(original) = copy_of {
                match self.folds_copy(original, seq) {
                    Err(Stopping) => return None,
                    Ok(true) => {}
                    Ok(false) => {
                        tracing::debug!(plugin = %self.name, seq, original, "a replayed dead letter passed by: this fold did not reject its original, or folded a copy of it already");
                        events -= 1;
                        continue;
                    }
                }
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
                    // Rejected before a crash, folded now (a fixed version deployed before the
                    // restart): its effects were never committed, so they go with the next
                    // commit, and its copies are passed by. The later events of its key fold
                    // from another state than they did: their rows follow it (their SQL
                    // effects go too; what they emitted or logged was, before the crash).
                    let refold =
                        copy_of.is_none() && self.catching_up && self.rejected_before.remove(&seq);
                    let follows = !refold && self.catching_up && self.diverged.contains(&key);
                    if refold {
                        self.diverged.insert(key.clone());
                    }
                    let mut carried =
                        (refold || follows).then(|| std::mem::take(&mut self.carried));
                    // Folding committed events again, their effects are committed already.
                    let mut into = match (&mut carried, self.catching_up) {
                        (Some(carried), _) => Some(carried),
                        (None, true) => None,
                        (None, false) => Some(&mut commit),
                    };
                    for (index, effect) in effects.into_iter().enumerate() {
                        *self.stats.effects.entry(effect.kind().as_str()).or_default() += 1;
                        if follows && matches!(effect, Effect::Emit { .. } | Effect::Log { .. }) {
                            continue;
                        }
                        if let Some(into) = into.as_deref_mut() {
                            self.route(into, &event, index, effect);
                        }
                    }
                    if let Some(mut carried) = carried {
                        if refold {
                            carried.replayed.push((seq, seq));
                            self.note_copy(seq, true, u64::MAX);
                        }
                        self.carried = carried;
                    }
                    if let Some(new_state) = new_state {
                        self.states.insert(key.clone(), new_state);
                    }
                    dirty.insert(key);
                    if let Some(original) = copy_of {
                        self.note_copy(original, true, seq);
                        if !self.catching_up {
                            commit.replayed.push((original, seq));
                        }
                    }
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
        if self.owes() && !self.catching_up {
            // What events folded again after a crash owe (see `refold` above), before this
            // batch's own.
            let carried = std::mem::take(&mut self.carried);
            commit.effects.splice(0..0, carried.effects);
            commit.outbox.splice(0..0, carried.outbox);
            commit.replayed.extend(carried.replayed);
        }
        // A promotion may have swapped versions inside the batch: the checkpoint names the
        // version that folded its last event.
        commit.digest.clone_from(&self.digest);
        commit.state_version = self.state_version;
        self.shadow_events = shadow_events;
        let rejected = commit.rejected.len() as u64;
        Some((commit, events, rejected))
    }
}
