//! Blue/green rebuilds: a new version folds the stream beside the live one and takes over when
//! caught up.

use super::*;

impl Daemon {
    /// Starts rebuilding `plugin`, a new version of a running one, from the stream start into
    /// tables of its own; it takes over when caught up ([`Daemon::advance_rebuilds`]). A
    /// rebuild already under way for the plugin is dropped.
    pub(super) async fn start_rebuild(&mut self, plugin: DaemonPlugin) -> anyhow::Result<()> {
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

    /// Answers a `jetfold rebuild` request: rebuilds the plugin's running version from the
    /// stream start beside the live one (as a new version without `migrate` is), and reports
    /// its progress to the requester until it takes over or fails.
    pub(super) async fn rebuild_on_request(&mut self, request: async_nats::Message) {
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
    pub(super) async fn take_over_from_rebuild(&mut self, name: &str) {
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
}
