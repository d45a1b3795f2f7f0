use super::*;

#[derive(clap::Args)]
pub(crate) struct DemoArgs {
    /// Directory holding the example plugins.
    #[arg(long, value_name = "DIR", default_value = "plugins")]
    pub(crate) plugin_dir: PathBuf,
    /// Use this NATS server (2.10 or later) instead of starting one.
    #[arg(long, value_name = "URL")]
    pub(crate) nats_url: Option<String>,
}

pub(crate) fn run_demo(args: &DemoArgs) -> anyhow::Result<ExitCode> {
    let runtime = tokio::runtime::Runtime::new()?;
    runtime.block_on(jetfold_host::demo::run(&args.plugin_dir, args.nats_url.clone()))?;
    Ok(ExitCode::SUCCESS)
}
