//! What happens to an event that fails: signature checks, rejection, halt, the circuit breaker,
//! dead letters; and routing accepted effects.

use super::*;

impl Folder {
    /// The running version's digest, shortened as log lines name it.
    pub(super) fn short_digest(&self) -> &str {
        &self.digest[..self.digest.len().min(12)]
    }

    /// With `[event-signing] verify`, checks the message's signature.
    pub(super) fn verify(&self, message: &Message) -> Result<(), crate::integrity::BadSignature> {
        if self.verify_keys.is_empty() {
            return Ok(());
        }
        crate::integrity::verify_message(message, &self.verify_keys)
    }

    /// Whether to fold a dead letter replayed for this plugin, the copy at `seq` of the event
    /// at `original`: only if this fold rejected that event and has not folded a copy of it,
    /// so that a fold from before the original (a new daemon, a rebuild, after a restart)
    /// folds the event once, where it folded it the first time. `Err` when the daemon stops
    /// while the database cannot be read.
    pub(super) fn folds_copy(&mut self, original: u64, seq: u64) -> Result<bool, Stopping> {
        if let Some((folded, _)) = self.copies.get(&original) {
            return Ok(!folded);
        }
        let (reader, env, name) = (&mut self.reader, &self.env, &self.name);
        let rejection =
            retry_sink(name, "cannot read a rejection", env, OnStop::GiveUp, reader, |r| {
                r.rejection(name, original)
            })
            .ok_or(Stopping)?;
        Ok(match rejection {
            None => false,
            Some(None) => true,
            // Folding the committed events again after a restart: the copies up to the one that
            // folded it were folded then.
            Some(Some(replayed)) => replayed >= seq,
        })
    }

    /// Notes what a copy of `original` may find: that this fold rejected it (`folded` false)
    /// or that a copy folded it, in the batch ending at `at`; forgets what the database holds.
    pub(super) fn note_copy(&mut self, original: u64, folded: bool, at: u64) {
        if self.copies.len() >= 4096 {
            let committed = self.env.progress.borrow().committed_seq;
            self.copies.retain(|_, (_, noted)| *noted > committed);
        }
        self.copies.insert(original, (folded, at));
    }

    /// Handles an event the plugin failed on, by its `on-error`: records it (and dead-letters
    /// it, and counts it toward the circuit breaker when `counts`), or halts before it. True if
    /// the plugin halted: the caller ends the batch. `at` is the sequence folded before the
    /// event and the event's index in the batch.
    pub(super) fn reject(
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
        // A copy of it may come; a copy that fails leaves its original's rejection as it is.
        if !self.catching_up
            && source::replay(message, &self.plugin.manifest.name).copy_of().is_none()
        {
            self.note_copy(rejected.seq, false, rejected.seq);
        }
        if counts && !self.catching_up {
            self.count_failure(&rejected);
        }
        commit.rejected.push(rejected);
        false
    }

    /// Stops the plugin before the event it failed on: the batch ends with the event before,
    /// and the failed one stays unacked, to be folded again when the plugin restarts.
    pub(super) fn halt(
        &mut self,
        commit: &mut Commit,
        (previous, index): (u64, usize),
        rejected: &Rejected,
    ) {
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
    pub(super) fn count_failure(&mut self, rejected: &Rejected) {
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
    pub(super) fn dead_letter(
        &self,
        commit: &mut Commit,
        message: &Message,
        rejected: &Rejected,
    ) -> bool {
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
        // The stream too: the same plugin name on another stream has the same sequences, and the
        // dead-letter stream would drop its letters as duplicates.
        let msg_id = format!("{}:{}:{}:dead-letter", self.name, self.plugin.stream, rejected.seq);
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
    /// logs to the log. (While catching up the caller routes only what was never committed.)
    pub(super) fn route(&self, commit: &mut Commit, event: &Event, index: usize, effect: Effect) {
        if matches!(self.role, Role::Rebuild { .. })
            && matches!(effect, Effect::Emit { .. } | Effect::Log { .. })
        {
            return; // a rebuild replays the past: what it emitted and logged happened already
        }
        match effect {
            Effect::Emit { kind, subject, message_type, payload, headers: extra } => {
                let msg_id =
                    format!("{}:{}:{}:{index}", self.name, self.plugin.stream, event.sequence);
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
