//! `jetfold build`: turns a plugin's source into the component its manifest names.
//!
//! Rust plugins are compiled for `wasm32-unknown-unknown` (no WASI) and the core module is
//! wrapped into a component with `wit-component`, so the result imports nothing. Python
//! plugins are built with componentize-py and JavaScript ones with componentize-js, against
//! the contract this jetfold carries; their components import WASI, which the host links
//! deny-all ([`crate::wasi`]). `scripts/setup` installs both toolchains, pinned, under
//! `~/.cache/jetfold/tools`.

use std::{
    io::{BufRead, BufReader},
    path::{Path, PathBuf},
    process::{Command, Stdio},
};

use anyhow::{Context as _, bail};

use crate::component::{PluginDigest, write_atomically};
use crate::manifest::{BuildLang, Manifest};

/// Where and how to build.
#[derive(Debug, Clone, Default)]
pub struct BuildOptions {
    /// Cargo's target directory (default: cargo's own choice).
    pub target_dir: Option<PathBuf>,
    /// Build with cargo's `dev` profile instead of `release`.
    pub debug: bool,
}

/// What a build produced.
#[derive(Debug, Clone)]
pub struct Built {
    /// The component file written.
    pub wasm: PathBuf,
    /// Its digest: the plugin version's identity.
    pub digest: PluginDigest,
}

/// Builds the plugin whose manifest is at `path` (a `plugin.toml` or its directory).
pub fn build_plugin(path: &Path, options: &BuildOptions) -> anyhow::Result<Built> {
    let manifest = Manifest::load(path)?;
    let lang = match &manifest.build {
        Some(build) => build.lang,
        None if manifest.dir.join("Cargo.toml").exists() => BuildLang::Rust,
        None => bail!(
            "{}: no [build] section and no Cargo.toml beside it, so jetfold does not know how to build this plugin",
            manifest.dir.join(crate::manifest::MANIFEST_FILE).display()
        ),
    };
    let core = match lang {
        BuildLang::Rust => build_rust(&manifest, options)?,
        BuildLang::Python | BuildLang::Js => {
            let component = build_componentized(&manifest, lang)?;
            return Ok(Built { digest: PluginDigest::of(&component), wasm: manifest.wasm_path() });
        }
    };
    let bytes =
        std::fs::read(&core).with_context(|| format!("failed to read {}", core.display()))?;
    let component = wit_component::ComponentEncoder::default()
        .module(&bytes)
        .and_then(|encoder| encoder.validate(true).encode())
        .with_context(|| format!("failed to turn {} into a component", core.display()))?;
    let wasm = manifest.wasm_path();
    write_atomically(&wasm, &component)
        .with_context(|| format!("failed to write {}", wasm.display()))?;
    Ok(Built { wasm, digest: PluginDigest::of(&component) })
}

fn build_rust(manifest: &Manifest, options: &BuildOptions) -> anyhow::Result<PathBuf> {
    let cargo_toml = manifest.dir.join("Cargo.toml");
    let cargo_toml = cargo_toml
        .canonicalize()
        .with_context(|| format!("failed to find {}", cargo_toml.display()))?;
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let mut cmd = Command::new(cargo);
    cmd.args([
        "build",
        "--lib",
        "--target",
        "wasm32-unknown-unknown",
        "--message-format=json-render-diagnostics",
    ])
    .arg("--manifest-path")
    .arg(&cargo_toml)
    .stdout(Stdio::piped())
    .stderr(Stdio::inherit());
    if !options.debug {
        cmd.arg("--release");
    }
    if let Some(dir) = &options.target_dir {
        cmd.env("CARGO_TARGET_DIR", dir);
    }
    let mut child = cmd.spawn().context("failed to run cargo (is a Rust toolchain installed?)")?;
    let stdout = child.stdout.take().expect("piped");
    let mut artifact = None;
    for line in BufReader::new(stdout).lines() {
        let line = line?;
        let Ok(msg) = serde_json::from_str::<serde_json::Value>(&line) else {
            continue;
        };
        if msg["reason"] != "compiler-artifact" {
            continue;
        }
        let same_crate = msg["manifest_path"]
            .as_str()
            .map(Path::new)
            .and_then(|p| p.canonicalize().ok())
            .as_deref()
            == Some(cargo_toml.as_path());
        let is_cdylib =
            msg["target"]["kind"].as_array().is_some_and(|k| k.iter().any(|k| k == "cdylib"));
        if same_crate && is_cdylib {
            artifact = msg["filenames"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|f| f.as_str())
                .find(|f| f.ends_with(".wasm"))
                .map(PathBuf::from);
        }
    }
    let status = child.wait()?;
    if !status.success() {
        bail!(
            "cargo failed to build {} for wasm32-unknown-unknown ({status}); if the target is missing, run `rustup target add wasm32-unknown-unknown`",
            cargo_toml.display()
        );
    }
    artifact.with_context(|| {
        format!(
            "cargo built no .wasm for {}: is its [lib] crate-type = [\"cdylib\", \"rlib\"]?",
            cargo_toml.display()
        )
    })
}

/// The current contract, `jetfold:plugin@0.2.0` (batches), handed to the Python and JavaScript
/// toolchains for a module whose manifest says `[build] contract = "0.2.0"`.
pub const CONTRACT: &str = include_str!("../../wit/plugin.wit");

/// `jetfold:plugin@0.1.0` (one event per call), for the modules written against it (the
/// default for Python and JavaScript, so that they keep building).
pub const CONTRACT_0_1: &str = include_str!("../../wit/0.1.0/plugin.wit");

/// Where `scripts/setup` installs the plugin toolchains: `$JETFOLD_TOOLS`, else
/// `$XDG_CACHE_HOME/jetfold/tools`, else `~/.cache/jetfold/tools`.
pub fn tools_dir() -> Option<PathBuf> {
    if let Some(dir) = std::env::var_os("JETFOLD_TOOLS") {
        return Some(PathBuf::from(dir));
    }
    let cache = std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))?;
    Some(cache.join("jetfold/tools"))
}

/// A toolchain command: the copy `scripts/setup` installed, else the one on `PATH`.
fn tool(relative: &str, name: &str) -> PathBuf {
    tools_dir()
        .map(|d| d.join(relative))
        .filter(|p| p.exists())
        .unwrap_or_else(|| PathBuf::from(name))
}

/// Builds a Python or JavaScript plugin into its component; the component's bytes.
fn build_componentized(manifest: &Manifest, lang: BuildLang) -> anyhow::Result<Vec<u8>> {
    let build = manifest.build.as_ref();
    let world =
        build.and_then(|b| b.world.clone()).unwrap_or_else(|| manifest.kind.world().to_string());
    let contract = match build.and_then(|b| b.contract.as_deref()) {
        None | Some("0.1.0") => CONTRACT_0_1,
        Some("0.2.0") => CONTRACT,
        Some(other) => bail!(
            "{}: [build] contract = \"{other}\" is not a contract version this jetfold has (0.1.0, 0.2.0)",
            manifest.dir.join(crate::manifest::MANIFEST_FILE).display()
        ),
    };
    let wit = tempfile::tempdir().context("cannot make a temporary directory")?;
    std::fs::write(wit.path().join("plugin.wit"), contract)?;
    // The toolchain runs in the plugin's directory, so every path it is given is absolute.
    let dir = manifest
        .dir
        .canonicalize()
        .with_context(|| format!("cannot find {}", manifest.dir.display()))?;
    let out = dir.join(&manifest.wasm);
    let tmp_out = out.with_extension(format!("building{}", std::process::id()));
    let mut cmd = match lang {
        BuildLang::Python => {
            let module = build.and_then(|b| b.source.clone()).unwrap_or_else(|| "app".into());
            let mut cmd = Command::new(tool("py/bin/componentize-py", "componentize-py"));
            cmd.arg("-d").arg(wit.path()).args(["-w", &world, "componentize"]);
            cmd.arg("-p").arg(&dir).arg(&module).arg("-o").arg(&tmp_out);
            cmd
        }
        BuildLang::Js => {
            let source = build.and_then(|b| b.source.clone()).unwrap_or_else(|| "plugin.js".into());
            let mut cmd =
                Command::new(tool("node/node_modules/.bin/componentize-js", "componentize-js"));
            cmd.arg(dir.join(&source));
            cmd.arg("--wit").arg(wit.path()).args(["--world-name", &world]);
            // No HTTP: the host links none. Clocks, randomness and stdio stay in the
            // runtime: the host's deny-all WASI gives a fixed clock, seeded randomness and
            // stdout/stderr into its log.
            cmd.args(["--disable", "http", "fetch-event"]);
            cmd.arg("--out").arg(&tmp_out);
            cmd
        }
        BuildLang::Rust => unreachable!("Rust plugins are built by cargo"),
    };
    cmd.current_dir(&dir).stdout(Stdio::inherit()).stderr(Stdio::inherit());
    let program = cmd.get_program().to_string_lossy().into_owned();
    let status = cmd.status().with_context(|| {
        format!("failed to run {program}: install the {lang} plugin toolchain with scripts/setup")
    })?;
    if !status.success() {
        let _ = std::fs::remove_file(&tmp_out);
        bail!("{program} failed to build {} ({status})", manifest.dir.display());
    }
    let component = std::fs::read(&tmp_out)
        .with_context(|| format!("{program} wrote no {}", tmp_out.display()))?;
    std::fs::rename(&tmp_out, &out)
        .with_context(|| format!("failed to write {}", out.display()))?;
    Ok(component)
}
