use super::*;

#[derive(clap::Args)]
pub(crate) struct NewArgs {
    /// The plugin's name, in kebab-case (`my-counter`); also its directory.
    pub(crate) name: String,
    /// The source language.
    #[arg(long, value_enum)]
    pub(crate) lang: NewLang,
    /// What it is.
    #[arg(long, value_enum)]
    pub(crate) kind: NewKind,
    /// Write it here instead of ./<name>.
    #[arg(long, value_name = "DIR")]
    pub(crate) dir: Option<PathBuf>,
    /// The jetfold guest SDK a Rust plugin depends on [default: the one this jetfold was
    /// built from].
    #[arg(long, value_name = "DIR")]
    pub(crate) sdk: Option<PathBuf>,
}

/// The languages of [`BuildLang`](jetfold_host::manifest::BuildLang), as the command line
/// names them.
#[derive(Clone, Copy, ValueEnum)]
pub(crate) enum NewLang {
    /// A Rust crate using `jetfold-guest`, built for `wasm32-unknown-unknown`.
    Rust,
    /// A Python module, built with componentize-py.
    Python,
    /// A JavaScript module, built with componentize-js.
    Js,
}

#[derive(Clone, Copy, ValueEnum)]
pub(crate) enum NewKind {
    /// Folds events into state and a read model.
    Projection,
    /// Turns events into commands.
    Policy,
}

pub(crate) fn run_new(args: &NewArgs) -> anyhow::Result<ExitCode> {
    use jetfold_host::manifest::{BuildLang, PluginKind};
    use jetfold_host::scaffold::{NewPlugin, scaffold};
    let dir = args.dir.clone().unwrap_or_else(|| PathBuf::from(&args.name));
    let kind = match args.kind {
        NewKind::Projection => PluginKind::Projection,
        NewKind::Policy => PluginKind::Policy,
    };
    let lang = match args.lang {
        NewLang::Rust => BuildLang::Rust,
        NewLang::Python => BuildLang::Python,
        NewLang::Js => BuildLang::Js,
    };
    let plugin = NewPlugin { name: args.name.clone(), lang, kind, sdk: args.sdk.clone() };
    let files = scaffold(&dir, &plugin)?;
    for file in files {
        println!("{}", file.display());
    }
    eprintln!("next: {d}/build.sh && jetfold test {d}", d = dir.display());
    Ok(ExitCode::SUCCESS)
}
