use super::*;

#[derive(Subcommand)]
pub(crate) enum PluginCommand {
    /// Store a plugin's component under its sha256 and make it the desired version.
    Push {
        /// The plugin: its directory or its plugin.toml.
        plugin: PathBuf,
        /// Take over exactly at this stream sequence (the running version folds the events
        /// before it, also on a daemon that restarts meanwhile) instead of at each daemon's
        /// next batch. A sequence a daemon has already committed is refused there for good.
        #[arg(long, value_name = "SEQ")]
        at_seq: Option<u64>,
        /// Sign the version with this private key (from `jetfold plugin keygen`).
        #[arg(long, value_name = "KEY_FILE")]
        sign: Option<PathBuf>,
        /// Run it beside the live version on live events, effects suppressed; events where
        /// the two differ are recorded in the sink's jetfold_shadow_diffs.
        #[arg(long, conflicts_with = "at_seq")]
        shadow: bool,
        #[command(flatten)]
        at: RegistryArgs,
    },
    /// Make an ed25519 signing key: writes the private key to FILE (mode 0600; an existing
    /// file is never overwritten), prints the public key for `[registry] trusted-keys`.
    Keygen {
        /// Where to write the private key (created; not overwritten).
        file: PathBuf,
    },
    /// Show the desired versions, every daemon (up, stopped, or not reporting, with its last
    /// report's age), then every daemon's plugins: kind, digest, status (running, rebuilding,
    /// stalled, paused, refused, stopped, daemon-gone), checkpoint, lag, last error, and a
    /// version pending `--at-seq` or rebuilding.
    List {
        #[command(flatten)]
        at: RegistryArgs,
    },
    /// Go back one version: to the one the current version replaced (each rollback goes one
    /// further back, dropping the version it leaves; a push after it starts from there), or
    /// --to a digest (prefix).
    Rollback {
        /// The plugin's name.
        name: String,
        /// The digest (or a prefix of it) to return to: from the history, else from the
        /// registry's revisions of the plugin's record.
        #[arg(long, value_name = "DIGEST")]
        to: Option<String>,
        #[command(flatten)]
        at: RegistryArgs,
    },
    /// Stop a plugin on every daemon and forget it; with --purge, also delete its durable
    /// consumers (`<daemon>-<plugin>`) once every daemon has stopped it.
    Remove {
        /// The plugin's name.
        name: String,
        /// Delete the daemons' durable consumers of the plugin too.
        #[arg(long)]
        purge: bool,
        #[command(flatten)]
        at: RegistryArgs,
    },
    /// Make the shadow version the live one.
    Promote {
        /// The plugin's name.
        name: String,
        #[command(flatten)]
        at: RegistryArgs,
    },
    /// Stop a plugin on every daemon (consumers and checkpoints are kept).
    Pause {
        /// The plugin's name.
        name: String,
        #[command(flatten)]
        at: RegistryArgs,
    },
    /// Start a paused plugin again, from its checkpoint.
    Resume {
        /// The plugin's name.
        name: String,
        #[command(flatten)]
        at: RegistryArgs,
    },
}

pub(crate) fn run_plugin(command: &PluginCommand) -> anyhow::Result<ExitCode> {
    use jetfold_host::registry::{Buckets, Registry};
    if let PluginCommand::Keygen { file } = command {
        let (private, public) = jetfold_host::registry::generate_key()?;
        use std::os::unix::fs::OpenOptionsExt as _;
        // Readable by its owner only, and never over an existing key.
        let mut out =
            match std::fs::OpenOptions::new().write(true).create_new(true).mode(0o600).open(file) {
                Ok(out) => out,
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => anyhow::bail!(
                    "{} exists: not overwritten (remove it first to make a new key)",
                    file.display()
                ),
                Err(e) => {
                    return Err(e).with_context(|| format!("cannot create {}", file.display()));
                }
            };
        std::io::Write::write_all(&mut out, format!("{private}\n").as_bytes())?;
        println!("{public}");
        return Ok(ExitCode::SUCCESS);
    }
    let at = match command {
        PluginCommand::Keygen { .. } => unreachable!("handled above"),
        PluginCommand::Push { at, .. }
        | PluginCommand::List { at }
        | PluginCommand::Rollback { at, .. }
        | PluginCommand::Pause { at, .. }
        | PluginCommand::Promote { at, .. }
        | PluginCommand::Remove { at, .. }
        | PluginCommand::Resume { at, .. } => at,
    };
    let config = jetfold_host::config::Config::load(&at.config)?;
    with_nats(&config, async |client| {
        let js = async_nats::jetstream::new(client.clone());
        let registry = Registry::open(&js, &Buckets::named(&config.registry.bucket_prefix)).await?;
        let short = |d: &str| d.chars().take(12).collect::<String>();
        match command {
            PluginCommand::Keygen { .. } => unreachable!("handled above"),
            PluginCommand::Push { plugin, at_seq, sign, shadow: true, .. } => {
                let d = registry.push(plugin, *at_seq, sign.as_deref(), true).await?;
                let s = d.shadow.as_ref().expect("a shadow push sets it");
                println!("pushed {} {} as the shadow of {}", d.name, s.digest, d.digest);
            }
            PluginCommand::Remove { name, purge, .. } => {
                let removed = registry.remove(name).await?;
                let Some(desired) = removed else {
                    anyhow::bail!("no plugin `{name}` was pushed");
                };
                println!("removed {name}");
                if *purge {
                    purge_consumers(&registry, &js, &desired).await?;
                }
            }
            PluginCommand::Promote { name, .. } => {
                let d = registry.promote(name).await?;
                println!("promoted {} {}", d.name, d.digest);
            }
            PluginCommand::Push { plugin, at_seq, sign, .. } => {
                let d = registry.push(plugin, *at_seq, sign.as_deref(), false).await?;
                let paused = if d.paused { " (paused: resume it to run it)" } else { "" };
                println!("pushed {} {}{paused}", d.name, d.digest);
            }
            PluginCommand::Rollback { name, to, .. } => {
                let d = registry.rollback(name, to.as_deref()).await?;
                println!("rolled back {} to {}", d.name, d.digest);
            }
            PluginCommand::Pause { name, .. } => {
                registry.set_paused(name, true).await?;
                println!("paused {name}");
            }
            PluginCommand::Resume { name, .. } => {
                registry.set_paused(name, false).await?;
                println!("resumed {name}");
            }
            PluginCommand::List { .. } => {
                println!("desired versions");
                for d in registry.all().await? {
                    let paused = if d.paused { "paused" } else { "" };
                    println!("  {:<24} {} {paused}", d.name, short(&d.digest));
                }
                let now = chrono::Utc::now();
                let statuses = registry.statuses().await?;
                println!("\ndaemons");
                for status in &statuses {
                    let seen = status.reported_at.map_or("-".to_string(), |at| {
                        format!("{:.1} s ago", (now - at).num_milliseconds() as f64 / 1000.0)
                    });
                    let state = match (status.stopped, status.gone(now)) {
                        (true, _) => "stopped",
                        (false, true) => "not reporting",
                        (false, false) => "up",
                    };
                    println!("  {:<24} {state}, last report {seen}", status.daemon);
                }
                println!(
                    "\n{:<12} {:<24} {:<11} {:<12} {:<8} {:>10} {:>8}  last error",
                    "daemon", "plugin", "kind", "digest", "status", "seq", "lag"
                );
                for status in statuses {
                    for p in status.plugins_at(now) {
                        let lag = p.lag.map(|l| l.to_string()).unwrap_or_else(|| "-".into());
                        println!(
                            "{:<12} {:<24} {:<11} {:<12} {:<8} {:>10} {:>8}  {}",
                            status.daemon,
                            p.name,
                            p.kind,
                            short(&p.digest),
                            p.status,
                            p.committed_seq,
                            lag,
                            p.last_error.unwrap_or_default()
                        );
                        if let Some((digest, seq)) = &p.rebuild {
                            println!(
                                "{:<12}   rebuilding {} (at {seq} of {})",
                                status.daemon,
                                short(digest),
                                p.committed_seq
                            );
                        }
                        if let Some((digest, at)) = &p.pending {
                            println!(
                                "{:<12}   next {} takes over at sequence {at}",
                                status.daemon,
                                short(digest)
                            );
                        }
                        if let Some((digest, events, diffs)) = p.shadow {
                            println!(
                                "{:<12}   shadow {}: {diffs} of {events} events differ",
                                status.daemon,
                                short(&digest)
                            );
                        }
                    }
                }
            }
        }
        client.flush().await?;
        anyhow::Ok(())
    })?;
    Ok(ExitCode::SUCCESS)
}

/// Waits (up to 30 s) until no daemon reports `desired`'s plugin running, then deletes every
/// reporting daemon's durable consumer of it on the stream its manifest names.
pub(crate) async fn purge_consumers(
    registry: &jetfold_host::registry::Registry,
    js: &async_nats::jetstream::Context,
    desired: &jetfold_host::registry::Desired,
) -> anyhow::Result<()> {
    let name = &desired.name;
    let manifest: toml::Table = toml::from_str(&desired.manifest)?;
    let stream = manifest
        .get("source")
        .and_then(|s| s.get("stream"))
        .and_then(|s| s.as_str())
        .with_context(|| format!("the manifest of `{name}` names no [source] stream"))?;
    let daemons: Vec<String> = registry.statuses().await?.into_iter().map(|s| s.daemon).collect();
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(30);
    let mut told = Vec::new();
    loop {
        // A plugin rebuilding or retrying runs too; a daemon that stopped or went silent does
        // not.
        let now = chrono::Utc::now();
        let running: Vec<(String, jetfold_host::status::PluginState)> = registry
            .statuses()
            .await?
            .into_iter()
            .filter_map(|s| {
                let p = s.plugins_at(now).into_iter().find(|p| &p.name == name)?;
                p.status.is_started().then_some((s.daemon, p.status))
            })
            .collect();
        if running.is_empty() {
            break;
        }
        let on: Vec<String> = running.iter().map(|(d, state)| format!("{d} ({state})")).collect();
        if tokio::time::Instant::now() > deadline {
            anyhow::bail!("`{name}` still runs on {}: consumers not purged", on.join(", "));
        }
        if on != told {
            println!("waiting for `{name}` to stop on {}", on.join(", "));
            told = on;
        }
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
    let stream = match js.get_stream(stream).await {
        Ok(stream) => stream,
        Err(e)
            if matches!(
                e.kind(),
                async_nats::jetstream::context::GetStreamErrorKind::JetStream(j)
                    if j.error_code() == async_nats::jetstream::ErrorCode::STREAM_NOT_FOUND
            ) =>
        {
            // Its stream is gone (or never existed): no consumer of it is left to delete.
            println!("no consumers to purge: stream `{stream}` does not exist");
            return Ok(());
        }
        Err(e) => return Err(e.into()),
    };
    for daemon in daemons {
        let consumer = jetfold_host::nats::source::consumer_name(&daemon, name);
        match stream.delete_consumer(&consumer).await {
            Ok(_) => println!("purged consumer {consumer}"),
            Err(e) if jetfold_host::nats::source::is_consumer_not_found(&e) => {}
            Err(e) => anyhow::bail!("cannot delete consumer {consumer}: {e}"),
        }
    }
    Ok(())
}
