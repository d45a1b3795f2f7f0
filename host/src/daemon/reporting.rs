//! What the daemon says of itself: plugin status, lag, the status page's observations, reports
//! to the registry.

use super::*;

impl Daemon {
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
    pub(super) async fn lag(&self, stream: &str, plugin: &str) -> Option<u64> {
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

    pub(super) async fn report_status(&self) {
        let Some(registry) = &self.registry else { return };
        let status = self.status().await;
        if let Err(e) = registry.report(&status).await {
            tracing::warn!(error = %format!("{e:#}"), "cannot report status to the registry");
        }
    }
}
