//! Starting and stopping the daemon, its plugins and their workers.

use super::*;

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

    pub(super) async fn start_plugins(
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
    pub(super) fn query_service(
        &self,
        plugin: &DaemonPlugin,
        guest: GuestInstance,
    ) -> tokio::task::JoinHandle<()> {
        let name = plugin.manifest.name.clone();
        let daemon = self.config.name.clone();
        let client = self.client.clone();
        let (plugin_name, target) = (name.clone(), self.config.sink_target());
        let service =
            async move { crate::query::serve(client, &daemon, plugin_name, guest, target).await };
        tokio::spawn(async move {
            if let Err(e) = service.await {
                tracing::error!(plugin = %name, error = %format!("{e:#}"), "query service stopped");
            }
        })
    }

    /// A fresh instance for a projection's queries, made off the async threads.
    pub(super) async fn query_instance(
        &self,
        plugin: &DaemonPlugin,
    ) -> anyhow::Result<Option<GuestInstance>> {
        let Implementation::Component(c) = &plugin.implementation else { return Ok(None) };
        if plugin.manifest.kind != PluginKind::Projection {
            return Ok(None);
        }
        let (c, loader, plugin) = (c.clone(), self.loader.clone(), plugin.clone());
        let guest = tokio::task::spawn_blocking(move || plugin.instantiate(&c, &loader)).await??;
        Ok(Some(guest))
    }

    pub(super) async fn start_plugin(&mut self, plugin: DaemonPlugin) -> anyhow::Result<()> {
        self.start_plugin_with(plugin, None).await
    }

    /// Starts `plugin`'s workers; with `report`, they report on that progress channel (a
    /// version taking over after a rebuild goes on with the one its predecessor used).
    pub(super) async fn start_plugin_with(
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
    pub(super) async fn spawn_worker(
        &self,
        plugin: &DaemonPlugin,
        progress: watch::Sender<Progress>,
        swaps: mpsc::Receiver<Swap>,
        role: Role,
    ) -> anyhow::Result<Worker> {
        let name = plugin.manifest.name.clone();
        let (stop_tx, stop_rx) = worker::StopSignal::new();
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
    pub(super) fn remember(&mut self, name: &str, running: &Running) {
        let progress = running.progress.clone();
        let (kind, stream) = (running.plugin.manifest.kind, running.plugin.stream.clone());
        self.history.insert(name.to_string(), Past { kind, stream, progress });
    }

    /// The progress a plugin starts with: its counters so far (they count since the daemon
    /// started), nothing of its last workers' state.
    pub(super) fn carried(&self, name: &str) -> Progress {
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
    pub(super) fn running_where(&self, f: impl Fn(&Running) -> bool) -> Vec<String> {
        self.running.iter().filter(|(_, r)| f(r)).map(|(name, _)| name.clone()).collect()
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
            running.stop.stop();
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
