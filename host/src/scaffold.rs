//! `jetfold new`: a plugin that builds and passes `jetfold test` from the first minute.
//!
//! Every scaffold is the same small plugin in its language: a projection that counts events
//! per resource and remembers the last event type (writing one table), or a policy that asks
//! for a resource to be quarantined at its third failed check in a row (one command). The
//! event fixture and the golden file are shared by the languages: the same events give the
//! same report whichever language folds them.

use std::path::{Path, PathBuf};

use anyhow::{Context as _, bail};

use crate::component::write_atomically;
use crate::manifest::{BuildLang, MANIFEST_FILE, PluginKind, is_name};

/// The event fixture every scaffold starts with.
const EVENTS: &str = include_str!("scaffold/events.jsonl");
const RUST_PROJECTION: &str = include_str!("scaffold/rust_projection.rs");
const RUST_POLICY: &str = include_str!("scaffold/rust_policy.rs");
const PYTHON_PROJECTION: &str = include_str!("scaffold/python_projection.py");
const PYTHON_POLICY: &str = include_str!("scaffold/python_policy.py");
const JS_PROJECTION: &str = include_str!("scaffold/js_projection.js");
const JS_POLICY: &str = include_str!("scaffold/js_policy.js");
/// The batch export of `jetfold:plugin@0.2.0` for Python plugins written one event at a time.
const PYTHON_BATCH: &str = include_str!("scaffold/python_batch.py");
/// The same for JavaScript, written into the plugin's module (componentize-js builds one file).
const JS_BATCH: &str = include_str!("scaffold/js_batch.js");
const PROJECTION_GOLDEN: &str = include_str!("scaffold/projection.expected.json");
const POLICY_GOLDEN: &str = include_str!("scaffold/policy.expected.json");

/// What to scaffold.
#[derive(Debug, Clone)]
pub struct NewPlugin {
    /// The plugin's name (kebab-case: `my-counter`).
    pub name: String,
    /// Its source language.
    pub lang: BuildLang,
    /// Projection or policy.
    pub kind: PluginKind,
    /// The jetfold guest SDK for a Rust plugin's path dependency (default: the SDK this
    /// jetfold was built from).
    pub sdk: Option<PathBuf>,
}

/// The guest SDK beside the sources this binary was built from.
pub fn default_sdk() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../guest-sdk")
}

/// Whether `name` suits a new plugin: kebab-case words (`my-counter`), as WIT names its
/// packages, starting with a letter because the table it writes is named after it
/// (`my_counter`). Manifests accept more (underscores, any dashes); a new plugin keeps to the
/// form every toolchain takes.
fn is_new_name(name: &str) -> bool {
    is_name(name)
        && name.starts_with(|c: char| c.is_ascii_lowercase())
        && name.split('-').all(|word| !word.is_empty() && !word.contains('_'))
}

/// Writes the plugin into `dir` (created; it must not exist or be empty); the files written.
pub fn scaffold(dir: &Path, plugin: &NewPlugin) -> anyhow::Result<Vec<PathBuf>> {
    if !is_new_name(&plugin.name) {
        bail!(
            "`{}` is not a plugin name: use words of lowercase letters and digits joined by \
             single dashes, starting with a letter (like `my-counter`)",
            plugin.name
        );
    }
    if plugin.kind == PluginKind::Upcaster {
        bail!("`jetfold new` makes projections and policies");
    }
    if dir.exists() && dir.read_dir().map(|mut d| d.next().is_some()).unwrap_or(true) {
        bail!("{} already exists and is not empty", dir.display());
    }
    let snake = plugin.name.replace('-', "_");
    let wasm = format!("{snake}.wasm");
    let vars = Vars { name: &plugin.name, snake: &snake, kind: plugin.kind };
    let mut files: Vec<(PathBuf, String)> = vec![
        (MANIFEST_FILE.into(), manifest(plugin, &wasm, &snake)),
        ("fixtures/events.jsonl".into(), EVENTS.to_string()),
        ("fixtures/expected.json".into(), vars.fill(golden(plugin.kind))),
        ("build.sh".into(), BUILD_SH.to_string()),
        ("README.md".into(), vars.fill(&readme(plugin))),
    ];
    match plugin.lang {
        BuildLang::Rust => {
            let sdk = plugin.sdk.clone().unwrap_or_else(default_sdk);
            let sdk = sdk.canonicalize().unwrap_or(sdk);
            let source = match plugin.kind {
                PluginKind::Projection => RUST_PROJECTION,
                _ => RUST_POLICY,
            };
            files.push(("src/lib.rs".into(), vars.fill(source)));
            files.push(("Cargo.toml".into(), cargo_toml(&plugin.name, &sdk)));
            files.push((".gitignore".into(), "/target\n*.wasm\n".into()));
        }
        BuildLang::Python => {
            let source = match plugin.kind {
                PluginKind::Projection => PYTHON_PROJECTION,
                _ => PYTHON_POLICY,
            };
            files.push(("app.py".into(), vars.fill(source)));
            files.push(("jetfold_batch.py".into(), PYTHON_BATCH.to_string()));
            files.push((".gitignore".into(), "__pycache__/\n*.wasm\n".into()));
        }
        BuildLang::Js => {
            let source = match plugin.kind {
                PluginKind::Projection => JS_PROJECTION,
                _ => JS_POLICY,
            };
            files.push(("plugin.js".into(), vars.fill(source).replace("{{batches}}", JS_BATCH)));
            files.push((".gitignore".into(), "*.wasm\n".into()));
        }
    }
    let mut written = Vec::new();
    for (relative, text) in files {
        let path = dir.join(&relative);
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent)
                .with_context(|| format!("cannot create {}", parent.display()))?;
        }
        write_atomically(&path, text.as_bytes())
            .with_context(|| format!("cannot write {}", path.display()))?;
        written.push(path);
    }
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt as _;
        let script = dir.join("build.sh");
        std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755))
            .with_context(|| format!("cannot make {} executable", script.display()))?;
    }
    Ok(written)
}

/// The placeholders of the templates.
struct Vars<'a> {
    name: &'a str,
    snake: &'a str,
    kind: PluginKind,
}

impl Vars<'_> {
    fn fill(&self, template: &str) -> String {
        template
            .replace("{{name}}", self.name)
            .replace("{{table}}", self.snake)
            .replace("{{kind}}", &self.kind.to_string())
    }
}

fn golden(kind: PluginKind) -> &'static str {
    match kind {
        PluginKind::Projection => PROJECTION_GOLDEN,
        _ => POLICY_GOLDEN,
    }
}

fn manifest(plugin: &NewPlugin, wasm: &str, table: &str) -> String {
    let (description, allow) = match plugin.kind {
        PluginKind::Projection => (
            "Counts events per resource and remembers the last event type",
            format!("[allow]\ntables = [\"{table}\"]\n"),
        ),
        _ => (
            "Asks for a resource to be quarantined at its third failed check in a row",
            "[allow]\nsubjects = [\"commands.>\"]\neffects = [\"command\", \"log\"]\n".to_string(),
        ),
    };
    format!(
        "name = \"{name}\"\nkind = \"{kind}\"\nwasm = \"{wasm}\"\ndescription = \"{description}\"\n\n\
         [build]\nlang = \"{lang}\"\n{contract}\n\
         # Where the daemon reads this plugin's events (override per daemon in jetfold.toml).\n\
         [source]\nstream = \"DEMO\"\nsubjects = [\"demo.>\"]\n\n\
         # What the plugin may do: anything else it returns rejects the event.\n{allow}",
        name = plugin.name,
        kind = plugin.kind,
        lang = plugin.lang,
        contract = match plugin.lang {
            BuildLang::Rust => "",
            _ =>
                "# The contract its module is written against (batches of events per call).\ncontract = \"0.2.0\"\n",
        },
    )
}

fn cargo_toml(name: &str, sdk: &Path) -> String {
    format!(
        "[package]\nname = \"{name}\"\nversion = \"0.1.0\"\nedition = \"2024\"\npublish = false\n\n\
         [lib]\ncrate-type = [\"cdylib\", \"rlib\"]\n\n\
         [dependencies]\njetfold-guest = {{ path = \"{sdk}\" }}\n\
         serde = {{ version = \"1\", features = [\"derive\"] }}\nserde_json = \"1\"\n\n\
         # A workspace of its own, wherever the plugin lives.\n[workspace]\n",
        sdk = sdk.display()
    )
}

const BUILD_SH: &str = "#!/bin/sh\n# Builds this plugin's component (the `wasm` its plugin.toml names).\nset -e\ncd \"$(dirname \"$0\")\"\nexec jetfold build .\n";

fn readme(plugin: &NewPlugin) -> String {
    let native = match plugin.lang {
        BuildLang::Rust => "cargo test                     # the native unit tests in src/lib.rs\n",
        _ => "",
    };
    format!(
        "# {{{{name}}}}\n\nA jetfold {{{{kind}}}} in {lang}, made by `jetfold new`. The contract, and how to write, test \
         and ship a plugin: jetfold's `docs/authoring.md`.\n\n```sh\n\
         ./build.sh                     # builds the component ({{{{name}}}} -> its .wasm)\n\
         jetfold test .                 # folds fixtures/events.jsonl, compares with fixtures/expected.json\n\
         jetfold test . --update        # after a change you mean: rewrite the golden file\n{native}```\n\n\
         To run it, copy this directory (plugin.toml and the .wasm are what the daemon reads) into\n\
         a daemon's `plugin-dir`, or push it to a fleet with `jetfold plugin push`.\n",
        lang = plugin.lang,
    )
}
