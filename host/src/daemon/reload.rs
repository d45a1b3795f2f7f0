//! Reloads: the plugin directory, the config on SIGHUP, the registry; hot swaps at a batch
//! boundary.

use super::*;

impl Daemon {
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
    pub(super) fn forget_refusals(&mut self) {
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
    pub(super) async fn apply(
        &mut self,
        config: Config,
        touched: Option<std::collections::BTreeSet<String>>,
    ) {
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
    pub(super) async fn sync_registry_touching(
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

    /// Records that `version` of plugin `name` was refused: on the running plugin's progress,
    /// or among the plugins not running.
    pub(super) fn refuse(&mut self, name: String, version: String, reason: String) {
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
    pub(super) async fn swap(&mut self, plugin: DaemonPlugin) -> anyhow::Result<()> {
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
    pub(super) fn pushed_names(&self) -> Vec<String> {
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
}
