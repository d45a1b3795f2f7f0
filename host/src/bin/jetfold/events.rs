use super::*;

#[derive(Subcommand)]
pub(crate) enum EventsCommand {
    /// Write a stream's events to stdout, one JSON record per line, in stream order.
    Export {
        /// The stream.
        stream: String,
        /// Only events on this subject (NATS wildcards allowed; repeatable).
        #[arg(long = "subject", value_name = "SUBJECT")]
        subjects: Vec<String>,
        #[command(flatten)]
        at: RegistryArgs,
    },
    /// Publish the events of a JSON Lines file (an export, or a fixture) to a stream, in
    /// order, with their message ids and headers; creates the stream if it does not exist.
    /// Events the stream already has (same message id) are not stored twice.
    Import {
        /// The file.
        file: PathBuf,
        /// The stream to publish to.
        #[arg(long, value_name = "NAME")]
        stream: String,
        /// The subjects of the stream when it must be created [default: `<first token>.>` of
        /// each event's subject].
        #[arg(long = "subject", value_name = "SUBJECT")]
        subjects: Vec<String>,
        #[command(flatten)]
        at: RegistryArgs,
    },
}

#[derive(clap::Args)]
pub(crate) struct PublishArgs {
    /// The events, one JSON object per line (the format of `jetfold test` fixtures).
    pub(crate) events: PathBuf,
    /// The stream to publish to.
    #[arg(long, value_name = "NAME")]
    pub(crate) stream: String,
    /// The subjects of the stream when it must be created [default: `<first token>.>` of
    /// each event's subject].
    #[arg(long = "subject", value_name = "SUBJECT")]
    pub(crate) subjects: Vec<String>,
    /// The configuration naming the NATS server.
    #[arg(long, short, value_name = "FILE", default_value = "jetfold.toml")]
    pub(crate) config: PathBuf,
}

pub(crate) fn run_publish(args: &PublishArgs) -> anyhow::Result<ExitCode> {
    let config = jetfold_host::config::Config::load(&args.config)?;
    let signing = &config.event_signing;
    let sign_key = match &signing.sign_key {
        Some(id) => signing.decoded_keys()?.into_iter().find(|(k, _)| k == id),
        None => None,
    };
    let done = with_nats(&config, async |client| {
        let js = async_nats::jetstream::new(client);
        let (path, stream) = (&args.events, &args.stream);
        jetfold_host::transfer::import(&js, path, stream, &args.subjects, sign_key.as_ref()).await
    })?;
    print_imported(&done, &args.stream);
    Ok(ExitCode::SUCCESS)
}

pub(crate) fn print_imported(done: &jetfold_host::transfer::Imported, stream: &str) {
    if done.stored == 0 && done.duplicates > 0 {
        println!(
            "nothing published: all {} events were already in {stream} (same message id, or the same message)",
            done.duplicates
        );
        return;
    }
    let events = |n: u64| format!("{n} event{}", if n == 1 { "" } else { "s" });
    println!("published {} to {stream} (last sequence {})", events(done.stored), done.last_seq);
    if done.duplicates > 0 {
        println!(
            "{} {} already in the stream (same message id, or the same message) and not stored again",
            events(done.duplicates),
            if done.duplicates == 1 { "was" } else { "were" }
        );
    }
}

pub(crate) fn run_events(command: &EventsCommand) -> anyhow::Result<ExitCode> {
    let config_path = match command {
        EventsCommand::Export { at, .. } | EventsCommand::Import { at, .. } => &at.config,
    };
    let config = jetfold_host::config::Config::load(config_path)?;
    with_nats(&config, async |client| {
        let js = async_nats::jetstream::new(client);
        match command {
            EventsCommand::Export { stream, subjects, .. } => {
                let mut progress = jetfold_host::progress::ProgressLine::new("export");
                let mut out = std::io::BufWriter::new(std::io::stdout().lock());
                let done =
                    jetfold_host::transfer::export(&js, stream, subjects, &mut out, |n, t| {
                        progress.update(n, t)
                    })
                    .await?;
                progress.finish(done.events, done.events);
                eprintln!("exported {} events from {stream}", done.events);
                if done.unreadable > 0 {
                    eprintln!(
                        "{} of them have unreadable Event-Time or Schema-Version headers: written with their headers as they are",
                        done.unreadable
                    );
                }
            }
            EventsCommand::Import { file, stream, subjects, .. } => {
                let done =
                    jetfold_host::transfer::import(&js, file, stream, subjects, None).await?;
                print_imported(&done, stream);
            }
        }
        anyhow::Ok(ExitCode::SUCCESS)
    })
}
