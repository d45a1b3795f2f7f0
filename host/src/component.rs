//! Loading a plugin's component: digest, precompiled cache, sandbox checks, world check.
//!
//! A component is refused at load if it imports anything but the contract's types and WASI
//! (linked deny-all, see [`crate::wasi`]; guests get no host functions) or does not export the
//! world its manifest names. Compiled code is cached
//! on disk under the component's sha256 digest and the engine's configuration, so a second
//! load only maps the precompiled artifact.

use std::{
    fmt,
    hash::{Hash, Hasher},
    path::{Path, PathBuf},
    sync::Arc,
    time::{Duration, Instant},
};

use sha2::{Digest as _, Sha256};
use wasmtime::component::{Component, Linker, types::ComponentItem};
use wasmtime::{Config, Engine};

use crate::bindings::{
    migration::MigrationIndices, policy::PolicyPre, projection::ProjectionPre,
    upcaster::UpcasterPre, v2,
};
use crate::manifest::PluginKind;
use crate::wasi::HostState;

/// The contract's type-only interfaces, which components may import: `types`, and in 0.2.0
/// the batch framing `batching`.
const TYPE_INTERFACES: [&str; 2] = ["jetfold:plugin/types@", "jetfold:plugin/batching@"];

/// The contract's optional `migration` interface, which projections and policies may export.
const MIGRATION_INTERFACE: &str = "jetfold:plugin/migration@";

/// A plugin version's identity: the sha256 digest of its `.wasm`.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PluginDigest([u8; 32]);

impl PluginDigest {
    /// The digest of a component's bytes.
    pub fn of(bytes: &[u8]) -> Self {
        PluginDigest(Sha256::digest(bytes).into())
    }

    /// The full hex digest.
    pub fn hex(&self) -> String {
        hex::encode(self.0)
    }

    /// The first 12 hex digits, for people.
    pub fn short(&self) -> String {
        self.hex()[..12].to_string()
    }
}

impl fmt::Display for PluginDigest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "sha256:{}", self.hex())
    }
}

impl fmt::Debug for PluginDigest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "sha256:{}", self.short())
    }
}

/// Why a component could not be loaded.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum LoadError {
    /// The file could not be read.
    #[error("cannot read component {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The file is not a WebAssembly component.
    #[error("{path} is not a WebAssembly component: {reason}")]
    NotAComponent {
        /// The file.
        path: PathBuf,
        /// What it is instead.
        reason: String,
    },
    /// The component imports something jetfold does not link.
    #[error(
        "{path} imports {}; jetfold links nothing into plugins but the contract's types and a deny-all WASI, so a plugin must import nothing else",
        .imports.iter().map(|i| format!("`{i}`")).collect::<Vec<_>>().join(", ")
    )]
    Imports {
        /// The file.
        path: PathBuf,
        /// The import names.
        imports: Vec<String>,
    },
    /// The component does not export the world the manifest names.
    #[error("{path} does not export the `{kind}` world its manifest declares (it exports {}): {reason}",
        if .exports.is_empty() { "nothing".to_string() } else { .exports.iter().map(|e| format!("`{e}`")).collect::<Vec<_>>().join(", ") })]
    WrongWorld {
        /// The file.
        path: PathBuf,
        /// The manifest's kind.
        kind: PluginKind,
        /// What the component exports.
        exports: Vec<String>,
        /// wasmtime's message.
        reason: String,
    },
    /// Compilation failed.
    #[error("cannot compile {path}: {reason}")]
    Compile {
        /// The file.
        path: PathBuf,
        /// wasmtime's message.
        reason: String,
    },
}

/// A component ready to instantiate, checked against its world.
#[derive(Clone)]
pub struct LoadedComponent {
    /// The component's identity.
    pub digest: PluginDigest,
    /// The world it exports.
    pub kind: PluginKind,
    /// Whether the compiled code came from the on-disk cache.
    pub from_cache: bool,
    /// How long loading took (read, digest, compile or map, checks).
    pub load_time: Duration,
    pub(crate) pre: PluginPre,
    /// The `migrate` export, if the component has one.
    pub(crate) migration: Option<MigrationExport>,
    /// The contract version it was built against: `0.1.0` (one event per call) or `0.2.0`
    /// (batches, states resident in the instance).
    pub contract: &'static str,
    /// Whether it imports WASI (linked deny-all, see [`crate::wasi`]).
    pub wasi: bool,
    /// How calls' CPU is bounded (fuel, but for the benchmark's [`ComponentLoader::measuring`]).
    pub(crate) cpu: CpuLimit,
}

impl LoadedComponent {
    /// Whether the component exports `migrate` (the `migration` interface), so it can take
    /// over states written under an earlier state version.
    pub fn migrates(&self) -> bool {
        self.migration.is_some()
    }
}

/// The instance-ready component, typed by world and contract version.
#[derive(Clone)]
pub(crate) enum PluginPre {
    Projection(ProjectionPre<HostState>),
    Policy(PolicyPre<HostState>),
    Upcaster(UpcasterPre<HostState>),
    ProjectionV2(v2::projection::ProjectionPre<HostState>),
    PolicyV2(v2::policy::PolicyPre<HostState>),
}

/// A component's `migration` export, by contract version.
#[derive(Clone)]
pub(crate) enum MigrationExport {
    V1(MigrationIndices),
    V2(v2::migration::MigrationIndices),
}

/// Compiles and checks components; owns the engine and the precompiled cache.
#[derive(Clone)]
pub struct ComponentLoader {
    engine: Engine,
    cache_dir: Option<PathBuf>,
    engine_key: Arc<str>,
    cpu: CpuLimit,
    /// Say on stderr when a component is compiled (the CLI: a Python component takes ~20 s).
    announce: bool,
}

/// How a guest call's CPU is bounded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CpuLimit {
    /// Fuel: a budget of wasm operations per call (deterministic); what the daemon runs.
    Fuel,
    /// An epoch deadline (for measuring its cost only: nothing advances the epoch here).
    Epoch,
    /// No bound at all: a looping guest never returns (for measuring the others' cost).
    Unbounded,
}

impl ComponentLoader {
    /// A loader with the host's engine configuration; `cache_dir` keeps precompiled code.
    pub fn new(cache_dir: Option<PathBuf>) -> anyhow::Result<Self> {
        Self::measuring(cache_dir, CpuLimit::Fuel)
    }

    /// A loader whose calls are bounded by `cpu`. Other than [`CpuLimit::Fuel`], only for
    /// measuring what fuel costs (the `guest_call` benchmark); the daemon and the CLI always
    /// use [`ComponentLoader::new`].
    pub fn measuring(cache_dir: Option<PathBuf>, cpu: CpuLimit) -> anyhow::Result<Self> {
        let mut config = Config::new();
        config.wasm_component_model(true);
        // Fuel bounds every call's CPU; the limit itself comes from the manifest.
        config.consume_fuel(cpu == CpuLimit::Fuel);
        config.epoch_interruption(cpu == CpuLimit::Epoch);
        // `JETFOLD_PERFMAP=1`: wasmtime writes /tmp/perf-PID.map, so that `perf report` names
        // the guests' functions (docs/performance.md, "Profiling a plugin").
        if std::env::var_os("JETFOLD_PERFMAP").is_some() {
            config.profiler(wasmtime::ProfilingStrategy::PerfMap);
        }
        let engine = Engine::new(&config)?;
        let mut hasher = std::hash::DefaultHasher::new();
        engine.precompile_compatibility_hash().hash(&mut hasher);
        let engine_key = format!("{:016x}", hasher.finish()).into();
        Ok(ComponentLoader { engine, cache_dir, engine_key, cpu, announce: false })
    }

    /// This loader, saying on stderr when it compiles a component rather than finding it in
    /// the cache, so that a long first run is not silent.
    pub fn announcing(mut self) -> Self {
        self.announce = true;
        self
    }

    /// The default cache directory: `$JETFOLD_CACHE_DIR`, else `$XDG_CACHE_HOME/jetfold`, else
    /// `~/.cache/jetfold`.
    pub fn default_cache_dir() -> Option<PathBuf> {
        if let Some(dir) = std::env::var_os("JETFOLD_CACHE_DIR") {
            return Some(PathBuf::from(dir));
        }
        if let Some(dir) = std::env::var_os("XDG_CACHE_HOME") {
            return Some(PathBuf::from(dir).join("jetfold"));
        }
        std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache/jetfold"))
    }

    /// The wasmtime engine every instance runs on.
    pub fn engine(&self) -> &Engine {
        &self.engine
    }

    /// Where the precompiled artifact of `digest` lives.
    pub fn cache_path(&self, digest: &PluginDigest) -> Option<PathBuf> {
        self.cache_dir
            .as_ref()
            .map(|dir| dir.join(format!("{}-{}.cwasm", digest.hex(), self.engine_key)))
    }

    /// Reads, checks and compiles (or maps from cache) the component at `path` as a `kind`.
    pub fn load(&self, kind: PluginKind, path: &Path) -> Result<LoadedComponent, LoadError> {
        let started = Instant::now();
        let bytes = std::fs::read(path)
            .map_err(|source| LoadError::Read { path: path.to_path_buf(), source })?;
        check_component_header(&bytes)
            .map_err(|reason| LoadError::NotAComponent { path: path.to_path_buf(), reason })?;
        let digest = PluginDigest::of(&bytes);
        let (component, from_cache) = self.compile_cached(&bytes, &digest, path)?;

        let ty = component.component_type();
        let mut linker = Linker::<HostState>::new(&self.engine);
        let mut refused = Vec::new();
        let mut wasi = false;
        for (name, item) in ty.imports(&self.engine) {
            // Toolchains such as componentize-py and componentize-js import WASI; it is
            // linked granting nothing (no files, environment, network, real clock or
            // randomness), see `crate::wasi`.
            if name.starts_with(crate::wasi::WASI_PREFIX) {
                wasi = true;
                continue;
            }
            // A world's `use types.{..}` imports the contract's type-only interface: it carries
            // no functions, so satisfying it grants nothing.
            let types_only = match &item.ty {
                ComponentItem::ComponentInstance(instance) => {
                    TYPE_INTERFACES.iter().any(|prefix| name.starts_with(prefix))
                        && instance
                            .exports(&self.engine)
                            .all(|(_, e)| matches!(e.ty, ComponentItem::Type(_)))
                }
                _ => false,
            };
            if types_only {
                linker.instance(name).map_err(|e| LoadError::Compile {
                    path: path.to_path_buf(),
                    reason: format!("{e:#}"),
                })?;
            } else {
                refused.push(name.to_string());
            }
        }
        if !refused.is_empty() {
            return Err(LoadError::Imports { path: path.to_path_buf(), imports: refused });
        }
        if wasi {
            wasmtime_wasi::p2::add_to_linker_sync(&mut linker).map_err(|e| LoadError::Compile {
                path: path.to_path_buf(),
                reason: format!("cannot link WASI: {e:#}"),
            })?;
        }
        let wrong_world = |reason: wasmtime::Error| LoadError::WrongWorld {
            path: path.to_path_buf(),
            kind,
            exports: ty.exports(&self.engine).map(|(name, _)| name.to_string()).collect(),
            reason: format!("{reason:#}"),
        };
        let instance_pre = linker.instantiate_pre(&component).map_err(wrong_world)?;
        let exported =
            ty.exports(&self.engine).find(|(name, _)| name.starts_with(MIGRATION_INTERFACE));
        let migration = match exported {
            None => None,
            Some(_) if kind == PluginKind::Upcaster => {
                return Err(wrong_world(wasmtime::Error::msg(
                    "an upcaster has no state, so it cannot export `migration`",
                )));
            }
            Some((name, _)) if name.ends_with("@0.1.0") => Some(MigrationExport::V1(
                MigrationIndices::new(&instance_pre).map_err(wrong_world)?,
            )),
            Some(_) => Some(MigrationExport::V2(
                v2::migration::MigrationIndices::new(&instance_pre).map_err(wrong_world)?,
            )),
        };
        // 0.2.0 worlds export `forget`; 0.1.0 ones do not.
        let batches = ty.exports(&self.engine).any(|(name, _)| name == "forget");
        let pre = match (kind, batches) {
            (PluginKind::Projection, false) => {
                PluginPre::Projection(ProjectionPre::new(instance_pre).map_err(wrong_world)?)
            }
            (PluginKind::Policy, false) => {
                PluginPre::Policy(PolicyPre::new(instance_pre).map_err(wrong_world)?)
            }
            (PluginKind::Projection, true) => PluginPre::ProjectionV2(
                v2::projection::ProjectionPre::new(instance_pre).map_err(wrong_world)?,
            ),
            (PluginKind::Policy, true) => {
                PluginPre::PolicyV2(v2::policy::PolicyPre::new(instance_pre).map_err(wrong_world)?)
            }
            (PluginKind::Upcaster, _) => {
                PluginPre::Upcaster(UpcasterPre::new(instance_pre).map_err(wrong_world)?)
            }
        };
        let contract = if batches { "0.2.0" } else { "0.1.0" };
        Ok(LoadedComponent {
            digest,
            kind,
            from_cache,
            load_time: started.elapsed(),
            pre,
            migration,
            contract,
            wasi,
            cpu: self.cpu,
        })
    }

    fn compile_cached(
        &self,
        bytes: &[u8],
        digest: &PluginDigest,
        path: &Path,
    ) -> Result<(Component, bool), LoadError> {
        let compile_error = |e: wasmtime::Error| LoadError::Compile {
            path: path.to_path_buf(),
            reason: format!("{e:#}"),
        };
        let Some(cached) = self.cache_path(digest) else {
            return Ok((Component::new(&self.engine, bytes).map_err(compile_error)?, false));
        };
        // Read into memory rather than map the file: a cache file changed or truncated later
        // by someone else must not be able to fault a running host.
        if let Ok(precompiled) = std::fs::read(&cached) {
            // SAFETY: the bytes were written by `precompile_component` of an engine with the same
            // compatibility hash (it is in the file name), into a cache directory we own; wasmtime
            // still checks the header and refuses artifacts of another engine configuration.
            match unsafe { Component::deserialize(&self.engine, &precompiled) } {
                Ok(component) => return Ok((component, true)),
                Err(e) => {
                    tracing::warn!(path = %cached.display(), error = %e, "ignoring unusable precompiled component")
                }
            }
        }
        if self.announce {
            eprintln!(
                "compiling {} ({:.1} MB; once per build, then cached in {})…",
                path.display(),
                bytes.len() as f64 / 1e6,
                cached.parent().map_or_else(|| cached.display(), Path::display)
            );
        }
        let compiled = self.engine.precompile_component(bytes).map_err(compile_error)?;
        if let Err(e) = write_atomically(&cached, &compiled) {
            tracing::warn!(path = %cached.display(), error = %e, "cannot write the precompiled-component cache");
        }
        // SAFETY: `compiled` was produced just now by this engine.
        let component =
            unsafe { Component::deserialize(&self.engine, &compiled) }.map_err(compile_error)?;
        Ok((component, false))
    }
}

/// Writes `bytes` to `path` through a temporary file and a rename, so readers never see half.
pub fn write_atomically(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let tmp = path.with_extension(format!("tmp{}", std::process::id()));
    std::fs::write(&tmp, bytes)?;
    std::fs::rename(&tmp, path)
}

/// Explains what a file is if it is not a component.
fn check_component_header(bytes: &[u8]) -> Result<(), String> {
    const MAGIC: &[u8] = b"\0asm";
    if bytes.len() < 8 || &bytes[..4] != MAGIC {
        return Err("it does not start with the WebAssembly magic bytes".into());
    }
    let layer = u16::from_le_bytes([bytes[6], bytes[7]]);
    if layer == 0 {
        return Err(
            "it is a core WebAssembly module; turn it into a component with `jetfold build` \
                    (or `wasm-tools component new`)"
                .into(),
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn headers_are_told_apart() {
        assert!(check_component_header(b"hello world").unwrap_err().contains("magic"));
        assert!(
            check_component_header(b"\0asm\x01\0\0\0")
                .unwrap_err()
                .contains("core WebAssembly module")
        );
        assert!(check_component_header(b"\0asm\x0d\0\x01\0").is_ok());
    }

    #[test]
    fn digests_print_as_sha256() {
        let d = PluginDigest::of(b"abc");
        assert_eq!(
            d.to_string(),
            "sha256:ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
        assert_eq!(d.short(), "ba7816bf8f01");
    }
}
