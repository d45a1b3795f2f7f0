use super::*;

#[derive(clap::Args)]
pub(crate) struct RebuildArgs {
    /// The plugin's name.
    pub(crate) plugin: String,
    /// The daemon's configuration (its `name` says which daemon is asked).
    #[arg(long, short, value_name = "FILE", default_value = "jetfold.toml")]
    pub(crate) config: PathBuf,
    /// How long to wait for the daemon's first answer.
    #[arg(long, value_name = "SECS", default_value_t = 5)]
    pub(crate) timeout_secs: u64,
}

pub(crate) fn run_rebuild(args: &RebuildArgs) -> anyhow::Result<ExitCode> {
    use futures::StreamExt as _;
    use jetfold_host::daemon::{RebuildReport, rebuild_subject};
    let config = jetfold_host::config::Config::load(&args.config)?;
    let subject = rebuild_subject(&config.name, &args.plugin);
    with_nats(&config, async |client| {
        let inbox = client.new_inbox();
        let mut reports = client.subscribe(inbox.clone()).await?;
        client.publish_with_reply(subject.clone(), inbox, "".into()).await?;
        client.flush().await?;
        let mut progress =
            jetfold_host::progress::ProgressLine::new(format!("rebuild {}", args.plugin));
        let mut wait = std::time::Duration::from_secs(args.timeout_secs);
        loop {
            let Ok(next) = tokio::time::timeout(wait, reports.next()).await else {
                anyhow::bail!(
                    "no daemon `{}` answered on {subject}: is it running with this config?",
                    config.name
                );
            };
            let message = next.context("the connection closed")?;
            if message.status == Some(async_nats::StatusCode::NO_RESPONDERS) {
                anyhow::bail!(
                    "no daemon `{}` listens on {subject}: is it running with this config?",
                    config.name
                );
            }
            // Reports come every 250 ms while the rebuild runs.
            wait = std::time::Duration::from_secs(60);
            match serde_json::from_slice::<RebuildReport>(&message.payload)? {
                RebuildReport::Rebuilding { committed_seq, live_seq } => {
                    progress.update(committed_seq, live_seq.max(committed_seq))
                }
                RebuildReport::Done { after_seq } => {
                    progress.finish(after_seq, after_seq);
                    println!(
                        "rebuilt {}: the new read model took over after sequence {after_seq}",
                        args.plugin
                    );
                    return Ok(ExitCode::SUCCESS);
                }
                RebuildReport::Failed { reason } => {
                    anyhow::bail!("the rebuild of `{}` failed: {reason}", args.plugin)
                }
            }
        }
    })
}
