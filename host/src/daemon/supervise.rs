//! The supervisor loop: reloads, registry sync, rebuilds and status reports on their timers and
//! signals.

use super::*;

/// Keeps `daemon` running until `shutdown`: polls the plugin directory, and with
/// `config_file`, SIGHUP re-reads that file and applies it (changed plugins swap, unchanged
/// ones are untouched). Then drains and stops.
pub async fn supervise(
    mut daemon: Daemon,
    config_file: Option<PathBuf>,
    shutdown: impl Future<Output = ()>,
) -> anyhow::Result<()> {
    let mut hangups = match &config_file {
        Some(_) => Some(
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())
                .context("cannot listen for SIGHUP")?,
        ),
        None => None,
    };
    let hangup = async |h: &mut Option<tokio::signal::unix::Signal>| match h {
        Some(h) => h.recv().await,
        None => std::future::pending().await,
    };
    let mut changes = None;
    let mut report_due = tokio::time::Instant::now();
    // Stopped workers and rebuilds are checked on a clock of their own: the loop's other
    // timers restart each turn.
    let mut housekeeping = tokio::time::interval(Duration::from_millis(50));
    let mut rebuild_requests = daemon
        .client
        .subscribe(format!("jetfold.rebuild.{}.*", daemon.config.name))
        .await
        .context("cannot listen for rebuild requests")?;
    housekeeping.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // The HTTP endpoint serves the last observation, renewed every second.
    let (observed, observations) = watch::channel(Arc::new(daemon.observe(None).await));
    let http = match daemon.config.http.listen.as_str() {
        "" => None,
        address => match crate::http::bind(address).await {
            Ok(listener) => {
                let at = listener.local_addr().map_or(address.to_string(), |a| a.to_string());
                tracing::info!(address = %at, "serving the status page at http://{at}/ and /metrics, /healthz, /readyz, /plugins");
                Some(tokio::spawn(crate::http::serve(listener, observations)))
            }
            Err(e) => {
                tracing::error!(error = %format!("{e:#}"), "no HTTP endpoint (metrics, health, status page); the daemon goes on without it");
                None
            }
        },
    };
    let mut polling: Option<(u64, tokio::time::Interval)> = None;
    let mut observing = tokio::time::interval(Duration::from_secs(1));
    observing.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tokio::pin!(shutdown);
    loop {
        if let Some(registry) = &daemon.registry {
            if changes.is_none() {
                match registry.watch().await {
                    Ok(watch) => changes = Some(watch),
                    Err(e) => {
                        tracing::warn!(error = %format!("{e:#}"), "cannot watch the registry; retrying")
                    }
                }
            }
            if tokio::time::Instant::now() >= report_due {
                // Reporting and observing only read: a stop does not wait for them (with NATS
                // unreachable, each of their requests waits out its timeout).
                tokio::select! {
                    _ = daemon.report_status() => {}
                    _ = &mut shutdown => break,
                }
                report_due = tokio::time::Instant::now()
                    + Duration::from_millis(daemon.config.registry.status_interval_ms.max(100));
            }
        }
        let change = async {
            match &mut changes {
                Some(watch) => watch.next().await,
                None => std::future::pending().await,
            }
        };
        let report = tokio::time::sleep_until(report_due);
        // The poll keeps its own clock across turns (a sleep made anew each turn would never
        // finish while other timers turn the loop faster), remade when a reload changes it.
        let poll = daemon.config.plugin_dir_poll_ms;
        if polling.as_ref().map(|(ms, _)| *ms) != Some(poll) {
            polling = (poll > 0).then(|| {
                let start = tokio::time::Instant::now() + Duration::from_millis(poll);
                let mut clock = tokio::time::interval_at(start, Duration::from_millis(poll));
                clock.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                (poll, clock)
            });
        }
        let tick = async {
            match &mut polling {
                Some((_, clock)) => clock.tick().await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            _ = &mut shutdown => break,
            _ = hangup(&mut hangups) => {
                let path = config_file.as_ref().expect("SIGHUP is only watched with a config file");
                tracing::info!(config = %path.display(), "SIGHUP: reloading the config");
                let checked = Config::load(path).and_then(|config| {
                    let pushed = daemon.pushed_names();
                    check_plugin_sections(&config, daemon.registry.is_some(), &pushed)?;
                    Ok(config)
                });
                match checked {
                    Ok(config) => daemon.reload(config).await,
                    Err(e) => tracing::error!(error = %format!("{e:#}"), "config not reloaded; the running one stays"),
                }
            }
            _ = tick => daemon.poll_plugin_dir().await,
            change = change => match change {
                Some(Ok(entry)) => {
                    // Changes already waiting (the watch's first entries, a burst of pushes)
                    // are applied by one sync.
                    let mut touched = std::collections::BTreeSet::from([entry.key]);
                    if let Some(watch) = &mut changes {
                        use futures::FutureExt as _;
                        while let Some(Some(Ok(entry))) = watch.next().now_or_never() {
                            touched.insert(entry.key);
                        }
                    }
                    daemon.sync_registry_touching(Some(touched)).await
                }
                Some(Err(e)) => {
                    tracing::warn!(error = %e, "registry watch failed; watching again");
                    changes = None;
                }
                None => changes = None,
            },
            _ = report, if daemon.registry.is_some() => {}
            Some(request) = rebuild_requests.next() => daemon.rebuild_on_request(request).await,
            _ = housekeeping.tick() => {
                daemon.reap().await;
                if daemon.rebuilding() {
                    daemon.advance_rebuilds().await;
                }
            }
            _ = observing.tick() => {
                let previous = observed.borrow().clone();
                tokio::select! {
                    now = daemon.observe(Some(&previous)) => { observed.send_replace(Arc::new(now)); }
                    _ = &mut shutdown => break,
                }
            }
        }
    }
    if let Some(http) = http {
        http.abort();
    }
    daemon.stop().await
}
