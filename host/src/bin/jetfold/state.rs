use super::*;

#[derive(clap::Args)]
pub(crate) struct StateArgs {
    /// The projection's name.
    pub(crate) plugin: String,
    /// The query, JSON [default: {}].
    pub(crate) query: Option<String>,
    /// Ask only this state key.
    #[arg(long, value_name = "KEY")]
    pub(crate) key: Option<String>,
    /// The daemon's configuration file: its NATS connection, and its `name`, the daemon asked.
    #[arg(long, short, value_name = "FILE", default_value = "jetfold.toml")]
    pub(crate) config: PathBuf,
    /// Give up after this many milliseconds.
    #[arg(long, value_name = "MS", default_value_t = 5000)]
    pub(crate) timeout_ms: u64,
}

pub(crate) fn run_state(args: &StateArgs) -> anyhow::Result<ExitCode> {
    use jetfold_host::query::{QueryReply, QueryRequest, daemon_subject};
    let config = jetfold_host::config::Config::load(&args.config)?;
    let request: serde_json::Value = serde_json::from_str(args.query.as_deref().unwrap_or("{}"))
        .with_context(|| {
            format!("the query is not JSON: {}", args.query.as_deref().unwrap_or(""))
        })?;
    let body = serde_json::to_vec(&QueryRequest { request, key: args.key.clone() })?;
    let reply = with_nats(&config, async |client| {
        // The daemon this config is (its `name`): daemons of one plugin with databases of their own
        // answer differently.
        let subject = daemon_subject(&config.name, &args.plugin);
        let ask = client.request(subject.clone(), body.into());
        match tokio::time::timeout(std::time::Duration::from_millis(args.timeout_ms), ask).await {
            Ok(Ok(message)) => anyhow::Ok(message.payload),
            Ok(Err(e)) if e.kind() == async_nats::RequestErrorKind::NoResponders => {
                if let Some(kind) = local_kind(&config, &args.plugin)
                    && kind != jetfold_host::manifest::PluginKind::Projection
                {
                    anyhow::bail!(
                        "plugin `{}` is a {kind}: only projections answer queries",
                        args.plugin
                    )
                }
                anyhow::bail!(
                    "daemon `{}` does not serve plugin `{}` (nothing listens on {subject})",
                    config.name,
                    args.plugin,
                )
            }
            Ok(Err(e)) => anyhow::bail!("cannot ask plugin `{}`: {e}", args.plugin),
            Err(_) => anyhow::bail!(
                "no answer from plugin `{}` within {} ms",
                args.plugin,
                args.timeout_ms
            ),
        }
    })?;
    match serde_json::from_slice::<QueryReply>(&reply)
        .context("the daemon's reply is not a query reply")?
    {
        QueryReply::Response(value) => {
            let mut out = std::io::stdout().lock();
            writeln!(out, "{}", serde_json::to_string_pretty(&value)?)?;
            out.flush()?;
            Ok(ExitCode::SUCCESS)
        }
        QueryReply::Error { kind, code, message } => {
            eprintln!(
                "query failed ({kind}{}): {message}",
                code.map(|c| format!(", {c}")).unwrap_or_default()
            );
            Ok(ExitCode::from(EXIT_CHECK_FAILED))
        }
    }
}

/// The kind of the plugin named `name` in the config's plugin directory, if one is there.
pub(crate) fn local_kind(
    config: &jetfold_host::config::Config,
    name: &str,
) -> Option<jetfold_host::manifest::PluginKind> {
    let dir = std::fs::read_dir(config.resolve(&config.plugin_dir)).ok()?;
    dir.flatten()
        .filter_map(|d| jetfold_host::manifest::Manifest::load(&d.path().join("plugin.toml")).ok())
        .find(|m| m.name == name)
        .map(|m| m.kind)
}
