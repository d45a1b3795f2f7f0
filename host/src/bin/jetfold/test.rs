use super::*;

#[derive(clap::Args)]
pub(crate) struct TestArgs {
    /// The plugin: its directory or its plugin.toml.
    pub(crate) plugin: PathBuf,
    /// The events, one JSON object per line [default: <plugin dir>/fixtures/events.jsonl].
    #[arg(long, value_name = "FILE")]
    pub(crate) events: Option<PathBuf>,
    /// Compare the run with this golden file; exit 1 with a diff if it differs [default:
    /// <plugin dir>/fixtures/expected.json, when it exists and none of --events, --query,
    /// --key is given].
    #[arg(long, value_name = "FILE")]
    pub(crate) expect: Option<PathBuf>,
    /// Write the run into the golden file instead of comparing (with --events, --query or
    /// --key, only into one named with --expect).
    #[arg(long)]
    pub(crate) update: bool,
    /// A query (JSON) to ask the projection after the last event; repeatable. Shown, not
    /// compared with the default golden file; the exit code is 1 only if a query fails.
    #[arg(long, value_name = "JSON")]
    pub(crate) query: Vec<String>,
    /// Ask the --query of this state key only; without --query, show only this key's final
    /// state.
    #[arg(long, value_name = "KEY")]
    pub(crate) key: Option<String>,
    /// Output format.
    #[arg(long, value_enum, default_value_t = Format::Text)]
    pub(crate) format: Format,
    /// Run every event through this upcaster first (a directory or manifest; repeatable: a
    /// chain, each raising the schema versions it reads, as a daemon runs its stream's).
    #[arg(long = "upcaster", value_name = "PLUGIN")]
    pub(crate) upcasters: Vec<PathBuf>,
}

#[derive(Clone, Copy, ValueEnum)]
pub(crate) enum Format {
    /// Readable steps and final state.
    Text,
    /// The report, as a golden file stores it.
    Json,
}

pub(crate) fn run_test(cli: &Cli, args: &TestArgs) -> anyhow::Result<ExitCode> {
    let loader = loader(cli)?;
    let plugin = Plugin::open(&args.plugin, &loader)?;
    let plugin_dir = plugin.manifest.dir.clone();
    let events =
        args.events.clone().unwrap_or_else(|| plugin.manifest.dir.join("fixtures/events.jsonl"));
    let lines = read_fixture(&events)?;
    let mut queries = Vec::new();
    for (i, q) in args.query.iter().enumerate() {
        let value: serde_json::Value = serde_json::from_str(q)
            .with_context(|| format!("--query #{} is not JSON: {q}", i + 1))?;
        queries.push(value);
    }

    let mut out = std::io::stdout().lock();
    if matches!(args.format, Format::Text) {
        writeln!(
            out,
            "{} ({}, {}) over {}",
            plugin.manifest.name,
            plugin.manifest.kind,
            plugin.component.digest,
            events.display()
        )?;
    }
    let mut specs = Vec::new();
    for path in &args.upcasters {
        let manifest = jetfold_host::manifest::Manifest::load(path)?;
        if manifest.kind != jetfold_host::manifest::PluginKind::Upcaster {
            anyhow::bail!(
                "--upcaster {}: `{}` is a {}, not an upcaster",
                path.display(),
                manifest.name,
                manifest.kind
            );
        }
        let component = loader.load(manifest.kind, &manifest.wasm_path())?;
        specs.push(jetfold_host::upcast::UpcasterSpec { manifest, component });
    }
    let chain = jetfold_host::upcast::UpcastChain::new(&specs, &loader)?;
    let mut fold = Fold::new(plugin).with_upcasters(chain);
    for (line, entry) in lines {
        match entry {
            FixtureLine::Event(event) => {
                fold.feed(line, &event);
            }
            FixtureLine::Query { query, key } => {
                fold.query(line, query, key);
            }
        }
    }
    for q in queries {
        fold.query(0, q, args.key.clone());
    }
    let mut report = fold.finish();
    if let Some(key) = &args.key {
        if !report.state.contains_key(key) {
            let known: Vec<&str> = report.state.keys().take(5).map(String::as_str).collect();
            let more = report.state.len().saturating_sub(known.len());
            eprintln!(
                "no key `{key}` has a state after these events{}",
                match (known.is_empty(), more) {
                    (true, _) => String::new(),
                    (false, 0) => format!(" (keys: {})", known.join(", ")),
                    (false, n) => format!(" (keys: {} and {n} more)", known.join(", ")),
                }
            );
        }
        if args.query.is_empty() {
            report.state.retain(|k, _| k == key);
        }
    }
    match args.format {
        Format::Text => write!(out, "{report}")?,
        Format::Json => write!(out, "{}", report.to_golden())?,
    }
    out.flush()?;
    drop(out);

    let default_golden = plugin_dir.join("fixtures/expected.json");
    // A look at the read model (`--query`, `--key`), or at other events, is not the run the
    // golden file records.
    let look = !args.query.is_empty() || args.key.is_some();
    let ad_hoc = args.events.is_some() || look;
    let expect = args.expect.clone().or_else(|| {
        (!ad_hoc && (args.update || default_golden.exists())).then_some(default_golden)
    });
    let Some(expect) = &expect else {
        if args.update {
            anyhow::bail!(
                "--update with --events, --query or --key writes only to a golden file you name: give --expect FILE"
            );
        }
        // A look at the read model fails only if a query does; the fixture's rejections are
        // in the output.
        let failures = report
            .steps
            .iter()
            .filter(|s| s.error().is_some())
            .filter(|s| !look || matches!(s, jetfold_host::fold::Step::Query { .. }))
            .count();
        if failures > 0 {
            let plural = failures != 1;
            if look {
                eprintln!("{failures} quer{} failed", if plural { "ies" } else { "y" });
            } else {
                eprintln!(
                    "{failures} step{} failed (record expected failures in a golden file with --expect FILE --update)",
                    if plural { "s" } else { "" }
                );
            }
            return Ok(ExitCode::from(EXIT_CHECK_FAILED));
        }
        return Ok(ExitCode::SUCCESS);
    };
    let actual = report.to_golden();
    if args.update {
        write_file(expect, &actual)?;
        eprintln!("wrote {}", expect.display());
        return Ok(ExitCode::SUCCESS);
    }
    let expected = std::fs::read_to_string(expect).with_context(|| {
        format!("failed to read the golden file {} (create it with --update)", expect.display())
    })?;
    let expected: serde_json::Value =
        serde_json::from_str(&expected).context("the golden file is not JSON")?;
    let actual: serde_json::Value = serde_json::from_str(&actual)?;
    if jetfold_host::golden::same(&expected, &actual) {
        eprintln!("ok: matches {}", expect.display());
        Ok(ExitCode::SUCCESS)
    } else {
        eprintln!("golden file {} differs:", expect.display());
        eprint!("{}", jetfold_host::golden::diff(&expected, &actual));
        let failing = jetfold_host::golden::failing_steps;
        let new_failures = failing(&actual).saturating_sub(failing(&expected));
        if new_failures > 0 {
            eprintln!(
                "{new_failures} more {} than the golden file expects: fix the plugin or its \
                 manifest, or, if the failures are right, rerun with --update to record them",
                if new_failures == 1 { "step fails" } else { "steps fail" }
            );
        } else {
            eprintln!("if the new behaviour is right, rerun with --update");
        }
        Ok(ExitCode::from(EXIT_CHECK_FAILED))
    }
}
