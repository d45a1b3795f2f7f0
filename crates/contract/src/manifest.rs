//! `plugin.toml`: what a plugin is, where its component is, what it may do.
//!
//! Unknown keys are refused so that a typo never silently weakens a limit or a permission.

use std::{
    fmt,
    path::{Path, PathBuf},
};

use serde::{Deserialize, Serialize};

/// The file name of a manifest inside a plugin directory.
pub const MANIFEST_FILE: &str = "plugin.toml";

/// Why a manifest could not be used.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ManifestError {
    /// The file could not be read.
    #[error("cannot read plugin manifest {path}: {source}")]
    Read {
        /// The manifest path.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The TOML is malformed, has an unknown key, misses a field or has a wrong type.
    #[error("invalid plugin manifest {path}: {message}")]
    Invalid {
        /// The manifest path.
        path: PathBuf,
        /// The parser's message, with line and column.
        message: String,
    },
}

/// The kinds of plugin, one per world of the WIT contract.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum PluginKind {
    /// Folds events into state and a read model (`init`, `apply`, `query`).
    Projection,
    /// Turns events into commands (`init`, `decide`).
    Policy,
    /// Rewrites events to the next schema version (`upcast`).
    Upcaster,
}

impl PluginKind {
    /// The WIT world a component of this kind must export.
    pub fn world(self) -> &'static str {
        match self {
            PluginKind::Projection => "projection",
            PluginKind::Policy => "policy",
            PluginKind::Upcaster => "upcaster",
        }
    }
}

impl fmt::Display for PluginKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.world())
    }
}

/// A plugin manifest (`plugin.toml`).
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct Manifest {
    /// The plugin's name: names its durable consumer, its checkpoint and its log lines.
    pub name: String,
    /// Which world the component exports.
    pub kind: PluginKind,
    /// The component file, relative to the manifest's directory.
    pub wasm: PathBuf,
    /// A line for people.
    #[serde(default)]
    pub description: Option<String>,
    /// Where the plugin's events come from.
    #[serde(default)]
    pub source: Source,
    /// How events map to state keys.
    #[serde(default)]
    pub state: StateConfig,
    /// The effects the plugin may make; anything else is rejected.
    #[serde(default)]
    pub allow: Allow,
    /// Resource limits for each guest call.
    #[serde(default)]
    pub limits: Limits,
    /// What the daemon does with an event the plugin fails on (an error, a trap, a limit, an
    /// effect it may not make): `dead-letter` (default), `skip`, `halt`.
    #[serde(default)]
    pub on_error: OnError,
    /// For an upcaster: the schema version it reads (it writes the next one).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub upcast: Option<Upcast>,
    /// How to build the component from source (`jetfold build`).
    #[serde(default)]
    pub build: Option<Build>,
    /// The plugin's configuration, handed to its `init` as JSON.
    #[serde(default)]
    pub config: toml::Table,
    /// The directory the manifest was read from (not part of the file).
    #[serde(skip)]
    pub dir: PathBuf,
    /// The `[limits]` the file itself sets (the rest are defaults).
    #[serde(skip)]
    pub limits_set: toml::Table,
}

/// Which events an upcaster rewrites: those of its `[source]` subjects at this schema version.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct Upcast {
    /// The schema version it reads; it writes `from-version + 1` or later.
    pub from_version: u32,
}

/// The stream and subjects a plugin consumes.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct Source {
    /// The JetStream stream name.
    #[serde(default)]
    pub stream: Option<String>,
    /// Filter subjects (NATS wildcards allowed); empty means the whole stream.
    #[serde(default)]
    pub subjects: Vec<String>,
}

/// How an event's state key is chosen, and the state's version.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct StateConfig {
    /// `aggregate-id` (default), `global` (one state for the whole plugin) or `subject-token`.
    #[serde(default)]
    pub key: StateKey,
    /// With `key = "subject-token"`: which dot-separated token of the subject (from 0).
    #[serde(default)]
    pub token: Option<usize>,
    /// The version of the state's encoding. A new version of the plugin that declares the same
    /// number continues from the old version's states and checkpoint when it is swapped in.
    #[serde(default = "first_state_version")]
    pub version: u32,
}

impl Default for StateConfig {
    fn default() -> Self {
        StateConfig { key: StateKey::default(), token: None, version: first_state_version() }
    }
}

fn first_state_version() -> u32 {
    1
}

/// The ways to derive a state key from an event.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum StateKey {
    /// The event's aggregate id.
    #[default]
    AggregateId,
    /// One key for every event.
    Global,
    /// A token of the subject, chosen by `state.token`.
    SubjectToken,
}

/// The key used when a plugin keeps one global state.
pub const GLOBAL_KEY: &str = "_global";

/// The effects a plugin may make.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct Allow {
    /// Tables the plugin may write.
    #[serde(default)]
    pub tables: Vec<String>,
    /// Subjects the plugin may publish to (NATS wildcards `*` and `>` allowed).
    #[serde(default)]
    pub subjects: Vec<String>,
    /// Effect kinds the plugin may make; empty means every kind its tables and subjects allow.
    #[serde(default)]
    pub effects: Vec<EffectKind>,
}

/// The kinds of effect a manifest can allow.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum EffectKind {
    /// Insert or replace a row.
    Upsert,
    /// Merge into a row.
    Update,
    /// Delete a row.
    Delete,
    /// Publish an event.
    Emit,
    /// Publish a command.
    Command,
    /// Write a log line.
    Log,
}

impl EffectKind {
    /// Its name, as manifests and metrics write it.
    pub fn as_str(self) -> &'static str {
        match self {
            EffectKind::Upsert => "upsert",
            EffectKind::Update => "update",
            EffectKind::Delete => "delete",
            EffectKind::Emit => "emit",
            EffectKind::Command => "command",
            EffectKind::Log => "log",
        }
    }
}

impl fmt::Display for EffectKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What the daemon does with an event a plugin fails on. Either way the event is recorded in
/// `jetfold_rejected`, the key keeps its state, and the stream goes on.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum OnError {
    /// Also publish it to the plugin's dead-letter subject, with the reason.
    #[default]
    DeadLetter,
    /// Only record and log it.
    Skip,
    /// Stop the plugin before the event: nothing of it is committed or acked, and it is
    /// folded again when the plugin restarts (after a fix).
    Halt,
}

/// Limits on each guest call: fuel, memory, instances and tables are enforced by wasmtime;
/// payload, state and effect counts by the host around the call.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct Limits {
    /// Fuel (roughly, WebAssembly instructions) one call may use before it is stopped.
    #[serde(default = "Limits::default_fuel")]
    pub fuel: u64,
    /// The most linear memory one instance may grow to, in MiB.
    #[serde(default = "Limits::default_memory_mib")]
    pub memory_mib: u64,
    /// The most core instances one plugin instance may create.
    #[serde(default = "Limits::default_instances")]
    pub instances: usize,
    /// The most tables one plugin instance may create.
    #[serde(default = "Limits::default_instances")]
    pub tables: usize,
    /// The largest event payload handed to the plugin; a larger one is rejected unread.
    #[serde(default = "Limits::default_bytes")]
    pub max_payload_bytes: usize,
    /// The largest state a call may return.
    #[serde(default = "Limits::default_bytes")]
    pub max_state_bytes: usize,
    /// The most effects (or decisions) one event may produce.
    #[serde(default = "Limits::default_effects")]
    pub max_effects: usize,
    /// The circuit breaker: after this many malfunctions in a row (traps, exhausted fuel,
    /// memory or limits, refused effects, unreadable messages; the plugin's own errors in
    /// between neither count nor reset), the daemon stops the plugin (until `jetfold plugin
    /// resume`, SIGHUP or a change in the plugin directory); 0 never stops it.
    #[serde(default = "Limits::default_consecutive_failures")]
    pub max_consecutive_failures: u64,
    /// The same for the plugin's own errors (business rejections): after this many in a row
    /// the plugin is stopped; 0 (the default) never: an error is an outcome the plugin chose.
    #[serde(default)]
    pub max_consecutive_errors: u64,
}

impl Limits {
    /// `defaults` (a `[limits]` table, e.g. the daemon config's) under the values `set`
    /// explicitly; an error names an unknown key or a wrong type.
    pub fn merged(defaults: &toml::Table, set: &toml::Table) -> Result<Limits, String> {
        let mut table = defaults.clone();
        table.extend(set.clone());
        toml::Value::Table(table).try_into().map_err(|e: toml::de::Error| e.to_string())
    }

    fn default_fuel() -> u64 {
        1_000_000_000
    }
    fn default_memory_mib() -> u64 {
        64
    }
    fn default_instances() -> usize {
        32
    }
    fn default_bytes() -> usize {
        1 << 20
    }
    fn default_effects() -> usize {
        1_000
    }
    fn default_consecutive_failures() -> u64 {
        100
    }
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            fuel: Self::default_fuel(),
            memory_mib: Self::default_memory_mib(),
            instances: Self::default_instances(),
            tables: Self::default_instances(),
            max_payload_bytes: Self::default_bytes(),
            max_state_bytes: Self::default_bytes(),
            max_effects: Self::default_effects(),
            max_consecutive_failures: Self::default_consecutive_failures(),
            max_consecutive_errors: 0,
        }
    }
}

/// How `jetfold build` turns the plugin's source into its component.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct Build {
    /// The source language: `rust` builds the crate in the plugin directory, `python` the
    /// module with componentize-py, `js` the module with componentize-js.
    pub lang: BuildLang,
    /// The source to build, for Python (a module name, default `app`, i.e. `app.py`) and
    /// JavaScript (a file, default `plugin.js`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source: Option<String>,
    /// The world the component exports (default: the plugin's kind; a plugin exporting
    /// `migrate` names `projection-with-migration` or `policy-with-migration`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub world: Option<String>,
    /// For Python and JavaScript, the contract version the module is written against:
    /// `0.2.0` (batches, what `jetfold new` writes) or `0.1.0` (one event per call, the
    /// default, so that modules written before 0.2.0 keep building). A Rust plugin's contract
    /// is its SDK's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub contract: Option<String>,
}

/// Source languages `jetfold build` knows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum BuildLang {
    /// A Rust crate using `jetfold-guest`, built for `wasm32-unknown-unknown`.
    Rust,
    /// A Python module, built with componentize-py.
    Python,
    /// A JavaScript module, built with componentize-js.
    Js,
}

impl fmt::Display for BuildLang {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            BuildLang::Rust => "rust",
            BuildLang::Python => "python",
            BuildLang::Js => "js",
        })
    }
}

impl Manifest {
    /// Reads a manifest from a `plugin.toml` path or from a plugin directory containing one.
    pub fn load(path: &Path) -> Result<Manifest, ManifestError> {
        let path = if path.is_dir() { path.join(MANIFEST_FILE) } else { path.to_path_buf() };
        let text = std::fs::read_to_string(&path)
            .map_err(|source| ManifestError::Read { path: path.clone(), source })?;
        let dir = path.parent().map(Path::to_path_buf).unwrap_or_default();
        Self::parse(&text, &path, dir)
    }

    /// Parses manifest text; `path` names it in errors, `dir` anchors relative paths.
    pub fn parse(text: &str, path: &Path, dir: PathBuf) -> Result<Manifest, ManifestError> {
        let invalid =
            |message: String| ManifestError::Invalid { path: path.to_path_buf(), message };
        let mut manifest: Manifest =
            toml::from_str(text).map_err(|e| invalid(e.to_string().trim_end().to_string()))?;
        manifest.dir = dir;
        let raw: toml::Table = toml::from_str(text).unwrap_or_default();
        if let Some(toml::Value::Table(limits)) = raw.get("limits") {
            manifest.limits_set = limits.clone();
        }
        manifest.validate().map_err(invalid)?;
        Ok(manifest)
    }

    fn validate(&self) -> Result<(), String> {
        if !is_name(&self.name) {
            return Err(format!(
                "`name` must be non-empty lowercase letters, digits, `-` or `_` (it names a durable consumer), got {:?}",
                self.name
            ));
        }
        if self.state.key == StateKey::SubjectToken && self.state.token.is_none() {
            return Err(
                "`state.key = \"subject-token\"` needs `state.token`, the token's index".into()
            );
        }
        if self.state.key != StateKey::SubjectToken && self.state.token.is_some() {
            return Err(
                "`state.token` is only meaningful with `state.key = \"subject-token\"`".into()
            );
        }
        match (self.kind, &self.upcast) {
            (PluginKind::Upcaster, None) => {
                return Err(
                    "an upcaster needs `[upcast] from-version`, the schema version it reads".into(),
                );
            }
            (PluginKind::Projection | PluginKind::Policy, Some(_)) => {
                return Err("`[upcast]` is only meaningful for `kind = \"upcaster\"`".into());
            }
            _ => {}
        }
        if self.limits.fuel == 0 || self.limits.memory_mib == 0 {
            return Err("`limits.fuel` and `limits.memory-mib` must be above zero".into());
        }
        for table in &self.allow.tables {
            if !is_identifier(table) {
                return Err(format!(
                    "`allow.tables` entry {table:?} is not a table name (letters, digits and `_`, not starting with a digit)"
                ));
            }
        }
        Ok(())
    }

    /// The component's path, resolved against the manifest's directory.
    pub fn wasm_path(&self) -> PathBuf {
        self.dir.join(&self.wasm)
    }

    /// The state key of `event` under the manifest's `[state]` rule.
    pub fn state_key(&self, event: &crate::event::Event) -> String {
        match self.state.key {
            StateKey::AggregateId => event.aggregate_id.clone(),
            StateKey::Global => GLOBAL_KEY.to_string(),
            StateKey::SubjectToken => {
                let index = self.state.token.unwrap_or(0);
                event.subject.split('.').nth(index).unwrap_or(GLOBAL_KEY).to_string()
            }
        }
    }

    /// The `[config]` table as the JSON document `init` receives.
    pub fn config_json(&self) -> String {
        serde_json::to_string(&self.config).unwrap_or_else(|_| "{}".into())
    }
}

/// Whether `name` is lowercase letters, digits, `-` and `_` (not empty): what names plugins and
/// daemons, and so durable consumers and KV keys.
pub fn is_name(name: &str) -> bool {
    !name.is_empty()
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '_')
}

/// Whether `name` is a plain SQL identifier, safe to use as a table name.
pub fn is_identifier(name: &str) -> bool {
    let mut chars = name.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
        && name.len() <= 63
}

#[cfg(test)]
mod limit_defaults {
    use super::Limits;

    #[test]
    fn a_manifest_value_wins_over_a_default_which_wins_over_the_built_in_one() {
        let defaults: toml::Table = toml::from_str("fuel = 5\nmax-effects = 7").unwrap();
        let set: toml::Table = toml::from_str("fuel = 9").unwrap();
        let limits = Limits::merged(&defaults, &set).unwrap();
        assert_eq!((limits.fuel, limits.max_effects, limits.memory_mib), (9, 7, 64));
        let typo: toml::Table = toml::from_str("fule = 5").unwrap();
        assert!(Limits::merged(&typo, &toml::Table::new()).unwrap_err().contains("fule"));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Manifest, ManifestError> {
        Manifest::parse(text, Path::new("plugin.toml"), PathBuf::from("/p"))
    }

    #[test]
    fn a_full_manifest_parses() {
        let m = parse(
            r#"
            name = "compute-resource"
            kind = "projection"
            wasm = "compute_resource.wasm"
            [source]
            stream = "INFRA"
            subjects = ["infra.resource.>"]
            [allow]
            tables = ["compute_resources"]
            effects = ["upsert", "log"]
            [limits]
            fuel = 5000
            [config]
            region = "eu"
            "#,
        )
        .unwrap();
        assert_eq!(m.kind, PluginKind::Projection);
        assert_eq!(m.wasm_path(), PathBuf::from("/p/compute_resource.wasm"));
        assert_eq!(m.limits.fuel, 5000);
        assert_eq!(m.limits.memory_mib, 64);
        assert_eq!(m.config_json(), r#"{"region":"eu"}"#);
    }

    #[test]
    fn unknown_keys_and_missing_fields_are_refused() {
        let e = parse("name = \"a\"\nkind = \"projection\"\nwasm = \"a.wasm\"\nfule = 3\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("plugin.toml") && e.contains("unknown field `fule`"), "{e}");
        let e = parse("name = \"a\"\nkind = \"projection\"\n").unwrap_err().to_string();
        assert!(e.contains("missing field `wasm`"), "{e}");
        let e = parse("name = \"a\"\nkind = \"projector\"\nwasm = \"a.wasm\"\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("projector"), "{e}");
        let e = parse("name = \"a\"\nkind = \"policy\"\nwasm = \"a.wasm\"\n[limits]\nmemory = 3\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("unknown field `memory`"), "{e}");
    }

    #[test]
    fn an_upcaster_says_which_schema_version_it_reads_and_only_an_upcaster_does() {
        let upcaster = "name = \"u\"\nkind = \"upcaster\"\nwasm = \"u.wasm\"\n";
        let e = parse(upcaster).unwrap_err().to_string();
        assert!(e.contains("an upcaster needs `[upcast] from-version`"), "{e}");
        let m = parse(&format!("{upcaster}[upcast]\nfrom-version = 0\n")).unwrap();
        assert_eq!(m.upcast.map(|u| u.from_version), Some(0));
        let e = parse(
            "name = \"p\"\nkind = \"projection\"\nwasm = \"p.wasm\"\n[upcast]\nfrom-version = 1\n",
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("`[upcast]` is only meaningful for `kind = \"upcaster\"`"), "{e}");
    }

    #[test]
    fn names_and_tables_are_checked() {
        let e = parse("name = \"Bad Name\"\nkind = \"policy\"\nwasm = \"a.wasm\"\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("`name`"), "{e}");
        let e = parse(
            "name = \"a\"\nkind = \"policy\"\nwasm = \"a.wasm\"\n[allow]\ntables = [\"x; drop\"]\n",
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("not a table name"), "{e}");
        let e = parse("name = \"a\"\nkind = \"policy\"\nwasm = \"a.wasm\"\n[state]\nkey = \"subject-token\"\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("state.token"), "{e}");
    }
}
