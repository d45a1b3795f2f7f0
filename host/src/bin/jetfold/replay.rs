use super::*;

/// Where a replay reads: the plugin, its stream and the range.
#[derive(clap::Args)]
pub(crate) struct ReplaySource {
    /// The plugin: its directory or its plugin.toml.
    pub(crate) plugin: PathBuf,
    /// The configuration naming the NATS server (and the sink, for verify).
    #[arg(long, short, value_name = "FILE", default_value = "jetfold.toml")]
    pub(crate) config: PathBuf,
    /// Read this stream instead of the manifest's (or the config's `[plugins.<name>]`).
    #[arg(long, value_name = "NAME")]
    pub(crate) stream: Option<String>,
    /// Instances of the plugin that fold in parallel, each a share of the keys (every key's
    /// events in order in one of them) [default: one per core beyond the first, at least 1].
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u16).range(1..))]
    pub(crate) jobs: Option<u16>,
}

impl ReplaySource {
    /// Instances to fold with.
    pub(crate) fn jobs(&self) -> usize {
        match self.jobs {
            Some(n) => n.into(),
            None => std::thread::available_parallelism().map_or(1, |n| n.get() - 1).max(1),
        }
    }
}

#[derive(clap::Args)]
pub(crate) struct ReplayArgs {
    #[command(flatten)]
    pub(crate) source: ReplaySource,
    /// First stream sequence to fold [default: the stream's first].
    #[arg(long, value_name = "SEQ")]
    pub(crate) from_seq: Option<u64>,
    /// Last stream sequence to fold.
    #[arg(long, value_name = "SEQ", conflicts_with = "to_time")]
    pub(crate) to_seq: Option<u64>,
    /// Fold only the events whose event time is at or before this (RFC 3339), wherever they
    /// are in the stream: event time is not stream order, so the whole stream (from
    /// --from-seq) is read and later events are passed by (counted as `later`).
    #[arg(long, value_name = "TIME", value_parser = rfc3339)]
    pub(crate) to_time: Option<chrono::DateTime<chrono::Utc>>,
    /// Print each event's effects (one JSON line per event) before the states.
    #[arg(long)]
    pub(crate) effects: bool,
    /// Fold the same events through this other version of the plugin too, and print each
    /// event where the two differ (state, effects or error); exit 1 if any does.
    #[arg(long, value_name = "PLUGIN", conflicts_with = "effects")]
    pub(crate) diff: Option<PathBuf>,
    /// Print only this key's state.
    #[arg(long, value_name = "KEY")]
    pub(crate) key: Option<String>,
}

/// A plugin opened for replay: its config's `[limits]` defaults applied, its stream and
/// subjects as the daemon would read them, and the keys its signatures are checked with.
pub(crate) struct ReplayTarget {
    pub(crate) config: jetfold_host::config::Config,
    pub(crate) stream: String,
    pub(crate) subjects: Vec<String>,
    pub(crate) verify_keys: Vec<(String, Vec<u8>)>,
    /// The upcasters the daemon of this config runs before the plugins of this stream.
    pub(crate) upcasters: Vec<jetfold_host::upcast::UpcasterSpec>,
}

impl ReplayTarget {
    /// [`read_batches`](jetfold_host::replay::read_batches) of this target's stream, as the
    /// plugin `plugin`'s daemon reads it.
    pub(crate) async fn read_batches(
        &self,
        js: &async_nats::jetstream::Context,
        range: &jetfold_host::replay::Range,
        plugin: &str,
        each: impl FnMut(
            &[u64],
            &[Result<jetfold_host::event::Event, jetfold_host::guest::StepError>],
            u64,
        ),
    ) -> anyhow::Result<jetfold_host::replay::Read> {
        jetfold_host::replay::read_batches(
            js,
            &self.stream,
            &self.subjects,
            range,
            plugin,
            &self.verify_keys,
            each,
        )
        .await
    }

    /// Reads the config once and opens the plugin of `source` as its daemon would run it.
    pub(crate) fn open(
        source: &ReplaySource,
        loader: &ComponentLoader,
    ) -> anyhow::Result<(Self, Plugin)> {
        let config = jetfold_host::config::Config::load(&source.config)?;
        let plugin = Plugin::open_with_defaults(&source.plugin, loader, &config.limits)?;
        let manifest = &plugin.manifest;
        let overrides = config.plugins.get(&manifest.name);
        let stream = source
            .stream
            .clone()
            .or_else(|| overrides.and_then(|o| o.stream.clone()))
            .or_else(|| manifest.source.stream.clone())
            .with_context(|| {
                format!("plugin `{}` names no [source] stream: give --stream", manifest.name)
            })?;
        let subjects = overrides
            .and_then(|o| o.subjects.clone())
            .unwrap_or_else(|| manifest.source.subjects.clone());
        let verify_keys = if config.event_signing.verify {
            config.event_signing.decoded_keys()?
        } else {
            Vec::new()
        };
        let upcasters = jetfold_host::daemon::stream_upcasters(&config, loader, &stream)?;
        Ok((ReplayTarget { config, stream, subjects, verify_keys, upcasters }, plugin))
    }

    /// Another plugin (a `--diff` version) opened with the same config's `[limits]` defaults.
    pub(crate) fn open_plugin(
        &self,
        path: &Path,
        loader: &ComponentLoader,
    ) -> anyhow::Result<Plugin> {
        Plugin::open_with_defaults(path, loader, &self.config.limits)
    }

    /// A replayer of `plugin` behind instances of the stream's upcasters, with `jobs - 1`
    /// more instances of it opened from `path`.
    pub(crate) fn replayer(
        &self,
        plugin: Plugin,
        path: &Path,
        jobs: usize,
        loader: &ComponentLoader,
    ) -> anyhow::Result<jetfold_host::replay::Replayer> {
        let chain = || -> anyhow::Result<_> {
            Ok(match self.upcasters.is_empty() {
                true => None,
                false => Some(jetfold_host::upcast::UpcastChain::new(&self.upcasters, loader)?),
            })
        };
        let mut instances = vec![(plugin, chain()?)];
        for _ in 1..jobs {
            instances.push((self.open_plugin(path, loader)?, chain()?));
        }
        Ok(jetfold_host::replay::Replayer::parallel(instances))
    }
}

pub(crate) fn run_replay(cli: &Cli, args: &ReplayArgs) -> anyhow::Result<ExitCode> {
    use jetfold_host::replay::{Range, read_events};
    let loader = loader(cli)?;
    let (target, plugin) = ReplayTarget::open(&args.source, &loader)?;
    let mut other = match &args.diff {
        Some(path) => {
            Some(target.replayer(target.open_plugin(path, &loader)?, path, 1, &loader)?)
        }
        None => None,
    };
    let digest = plugin.component.digest.hex();
    let name = plugin.manifest.name.clone();
    // --diff compares event by event, states included: one instance, one event at a time.
    let jobs = if args.diff.is_some() { 1 } else { args.source.jobs() };
    let mut replayer = target.replayer(plugin, &args.source.plugin, jobs, &loader)?;
    let range = Range { from_seq: args.from_seq, to_seq: args.to_seq, to_time: args.to_time };
    let mut progress = jetfold_host::progress::ProgressLine::new("replay");
    let mut out = std::io::BufWriter::new(std::io::stdout().lock());
    let (mut differ, mut first): (u64, Option<(u64, String, String)>) = (0, None);
    let mut write_error = None;
    let last = with_nats(&target.config, async |client| {
        let js = async_nats::jetstream::new(client);
        let mut write = |line: serde_json::Value| {
            if write_error.is_none()
                && let Err(e) = writeln!(out, "{line}")
            {
                write_error = Some(e);
            }
        };
        // --diff compares event by event; without it events are folded a batch at a time, and
        // with --effects each one's effects are printed as its batch ends.
        let read = if let Some(other) = &mut other {
            read_events(&js, &target.stream, &target.subjects, &range, &name, &target.verify_keys, |seq, event, total| {
                let event_type = event.as_ref().map(|e| e.event_type.clone()).unwrap_or_default();
                let (key, outcome) = replayer.step(&event);
                let (_, theirs) = other.step(&event);
                let (a, b) = (serde_json::to_value(&outcome), serde_json::to_value(&theirs));
                if a.ok() != b.ok() {
                    differ += 1;
                    first.get_or_insert((seq, event_type.clone(), key.clone()));
                    write(serde_json::json!({"seq": seq, "type": event_type, "key": key, "left": outcome, "right": theirs}));
                }
                progress.update(replayer.events, total);
            })
            .await?
        } else {
            target
                .read_batches(&js, &range, &name, |seqs, batch, total| {
                    let outcomes = replayer.fold(batch);
                    if args.effects {
                        for ((seq, event), (key, outcome)) in seqs.iter().zip(batch).zip(outcomes) {
                            let event_type =
                                event.as_ref().map(|e| e.event_type.as_str()).unwrap_or_default();
                            let mut line =
                                serde_json::json!({"seq": seq, "type": event_type, "key": key});
                            match (&outcome.effects, &outcome.error) {
                                (_, Some(e)) => {
                                    line["error"] = serde_json::to_value(e).unwrap_or_default()
                                }
                                (Some(fx), None) => {
                                    line["effects"] = serde_json::to_value(fx).unwrap_or_default()
                                }
                                (None, None) => {
                                    if let Some(why) = &outcome.passed_by {
                                        line["passed_by"] = why.as_str().into();
                                    }
                                }
                            }
                            write(line);
                        }
                    }
                    progress.update(replayer.events, total);
                })
                .await?
        };
        anyhow::Ok(read)
    })?;
    progress.finish(replayer.events, replayer.events);
    if let Some(e) = write_error {
        return Err(e.into());
    }
    if let Some(other) = &other {
        out.flush()?;
        drop(out);
        let events = replayer.events;
        match first {
            None => println!(
                "no divergence: {name} and {} agree on all {events} events",
                other.digest()
            ),
            Some((seq, event_type, key)) => {
                println!(
                    "first divergence at sequence {seq} ({event_type}, key {key:?}); {differ} of {events} events differ"
                );
                return Ok(ExitCode::from(EXIT_CHECK_FAILED));
            }
        }
        return Ok(ExitCode::SUCCESS);
    }
    let states: serde_json::Map<String, serde_json::Value> = replayer
        .states()
        .into_iter()
        .filter(|(k, _)| args.key.as_ref().is_none_or(|want| want == *k))
        .map(|(k, v)| (k.clone(), jetfold_host::fold::state_document(v)))
        .collect();
    let mut summary = serde_json::json!({
        "plugin": name,
        "digest": digest,
        "stream": target.stream,
        "last_seq": last.last_seq,
        "events": replayer.events,
        "rejected": replayer.rejected,
        "state": states,
    });
    if args.to_time.is_some() {
        summary["later"] = last.later.into();
    }
    if args.effects {
        writeln!(out, "{summary}")?;
    } else {
        writeln!(out, "{}", serde_json::to_string_pretty(&summary)?)?;
    }
    out.flush()?;
    Ok(ExitCode::SUCCESS)
}

/// An RFC 3339 time for `--to-time`, with a message that shows one.
fn rfc3339(text: &str) -> Result<chrono::DateTime<chrono::Utc>, String> {
    chrono::DateTime::parse_from_rfc3339(text).map(|t| t.with_timezone(&chrono::Utc)).map_err(|e| {
        format!("{e}: give an RFC 3339 time with its offset, such as 2026-03-01T12:00:00Z or 2026-03-01T14:00:00+02:00")
    })
}
