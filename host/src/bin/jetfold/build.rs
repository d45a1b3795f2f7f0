use super::*;

#[derive(clap::Args)]
pub(crate) struct BuildArgs {
    /// Plugin directories or plugin.toml files.
    #[arg(required = true)]
    pub(crate) plugins: Vec<PathBuf>,
    /// Cargo target directory for Rust plugins.
    #[arg(long, value_name = "DIR")]
    pub(crate) target_dir: Option<PathBuf>,
    /// Build without optimisations.
    #[arg(long)]
    pub(crate) debug: bool,
}

pub(crate) fn run_build(args: &BuildArgs) -> anyhow::Result<ExitCode> {
    let options = BuildOptions { target_dir: args.target_dir.clone(), debug: args.debug };
    for plugin in &args.plugins {
        let built = build_plugin(plugin, &options)?;
        println!("{} {}", built.digest, built.wasm.display());
    }
    Ok(ExitCode::SUCCESS)
}
