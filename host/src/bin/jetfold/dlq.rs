use super::*;

#[derive(Subcommand)]
pub(crate) enum DlqCommand {
    /// Show a plugin's dead letters: dead-letter sequence, source sequence and subject, event
    /// type, failure kind and code, why.
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
    /// letter there are, and remove them from the dead-letter stream. A fold of the plugin
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
    with_nats(&config, async |client| {
        let js = async_nats::jetstream::new(client);
        match command {
            DlqCommand::List { .. } => {
                let letters = jetfold_host::dlq::list(&js, &config.dead_letter, plugin).await?;
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
            }
            DlqCommand::Replay { .. } => {
                let done = jetfold_host::dlq::replay(&js, &config.dead_letter, plugin).await?;
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
