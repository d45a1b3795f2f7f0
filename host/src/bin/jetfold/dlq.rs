use super::*;

#[derive(Subcommand)]
pub(crate) enum DlqCommand {
    /// Show a plugin's dead letters: dead-letter sequence, source sequence and subject, event
    /// type, failure kind and code, why. Only those of events from the plugin's stream (as
    /// the config and its manifest name it): another deployment on the same NATS server with a
    /// plugin of the same name shares the dead-letter subject unless it sets its own
    /// `[dead-letter] subject-prefix`.
    List {
        /// The plugin's name.
        plugin: String,
        #[command(flatten)]
        at: RegistryArgs,
    },
    /// After a fix: publish a plugin's dead letters again to the subjects they came from, for
    /// that plugin only (original payload and headers, a new message id,
    /// `Jetfold-Replay-For: <plugin>`, which every other plugin passes by, and
    /// `Jetfold-Replay-Of: <stream>:<seq>`), each event once however many copies of its dead
    /// letter there are, and remove them from the dead-letter stream (those of events from the
    /// plugin's stream only, as `list` shows them). A fold of the plugin
    /// folds such a copy only where it rejected the event it is a copy of, once: a replay,
    /// rebuild or new daemon that folds the event itself passes the copy by.
    Replay {
        /// The plugin's name.
        plugin: String,
        #[command(flatten)]
        at: RegistryArgs,
    },
}

pub(crate) fn run_dlq(command: &DlqCommand) -> anyhow::Result<ExitCode> {
    let (plugin, at) = match command {
        DlqCommand::List { plugin, at } | DlqCommand::Replay { plugin, at } => (plugin, at),
    };
    let config = jetfold_host::config::Config::load(&at.config)?;
    // The plugin's stream, as the daemon would read it: this deployment's dead letters are
    // those of events from it.
    let stream = config.plugins.get(plugin.as_str()).and_then(|o| o.stream.clone()).or_else(|| {
        jetfold_host::manifest::Manifest::load(&config.resolve(&config.plugin_dir).join(plugin))
            .ok()
            .and_then(|m| m.source.stream)
    });
    with_nats(&config, async |client| {
        let js = async_nats::jetstream::new(client);
        match command {
            DlqCommand::List { .. } => {
                let all = jetfold_host::dlq::list(&js, &config.dead_letter, plugin).await?;
                let (letters, left) = jetfold_host::dlq::of_stream(all, stream.as_deref());
                let mut out = std::io::stdout().lock();
                for l in &letters {
                    let kind = match &l.code {
                        Some(code) => format!("{}, {code}", l.kind),
                        None => l.kind.clone(),
                    };
                    let of = match l.copy_of {
                        Some(seq) => format!(" (a replayed copy of #{seq})"),
                        None => String::new(),
                    };
                    writeln!(
                        out,
                        "dead letter {} · source #{}{of} {} {} ({kind}): {}",
                        l.seq,
                        l.source_seq,
                        l.source_subject,
                        l.event_type,
                        // A trap's reason has the lines the guest wrote: indented under it.
                        l.reason.replace('\n', "\n    ")
                    )?;
                }
                writeln!(out, "{} dead letters of {plugin}", letters.len())?;
                if left.letters > 0 {
                    writeln!(
                        out,
                        "({} more on {}, of events from {}: another deployment's, not shown; give each deployment its own [dead-letter] subject-prefix)",
                        left.letters,
                        config.dead_letter.subject(plugin),
                        left.streams.join(", ")
                    )?;
                }
            }
            DlqCommand::Replay { .. } => {
                let done =
                    jetfold_host::dlq::replay(&js, &config.dead_letter, plugin, stream.as_deref())
                        .await?;
                if done.left.letters > 0 {
                    println!(
                        "left {} dead letters of events from {}: another deployment's",
                        done.left.letters,
                        done.left.streams.join(", ")
                    );
                }
                let copies = done.letters - done.events;
                println!(
                    "replayed {} dead letters of {plugin}{}",
                    done.events,
                    match copies {
                        0 => String::new(),
                        n => format!(" ({n} copies of them removed too)"),
                    }
                );
            }
        }
        anyhow::Ok(ExitCode::SUCCESS)
    })
}
