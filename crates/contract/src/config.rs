//! `jetfold.toml`: the daemon's configuration. Unknown keys are refused; a few environment
//! variables override the file (`NATS_URL`, `JETFOLD_SQLITE`, `JETFOLD_PLUGIN_DIR`).

use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
    time::Duration,
};

use anyhow::{Context as _, bail};
use serde::Deserialize;

/// The whole daemon configuration.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct Config {
    /// The daemon's name: prefixes its consumers (`<name>-<plugin>`) and names it in the
    /// registry's status. Daemons sharing a NATS server and a plugin need different names.
    #[serde(default = "defaults::name")]
    pub name: String,
    /// The fleet registry on JetStream.
    #[serde(default)]
    pub registry: RegistryConfig,
    /// Where events plugins fail on are published.
    #[serde(default)]
    pub dead_letter: DeadLetterConfig,
    /// Defaults for the plugins' `[limits]`: a key a manifest does not set comes from here,
    /// then from the built-in defaults.
    #[serde(default)]
    pub limits: toml::Table,
    /// HMAC-SHA256 signatures: verifying incoming events, signing emitted ones.
    #[serde(default)]
    pub event_signing: EventSigningConfig,
    /// How to reach NATS.
    #[serde(default)]
    pub nats: NatsConfig,
    /// The HTTP endpoint: metrics, health, readiness, the status page.
    #[serde(default)]
    pub http: HttpConfig,
    /// The share of every plugin's keys this daemon folds, when several daemons split them.
    #[serde(default)]
    pub partition: Partition,
    /// Where effects and checkpoints are written.
    #[serde(default)]
    pub sink: SinkConfig,
    /// Directory whose subdirectories each hold a plugin (`plugin.toml` + component).
    pub plugin_dir: PathBuf,
    /// Events fetched and committed together, per plugin.
    #[serde(default = "defaults::batch_size")]
    pub batch_size: usize,
    /// How long JetStream waits for an ack before redelivering, in seconds.
    #[serde(default = "defaults::ack_wait_secs")]
    pub ack_wait_secs: u64,
    /// Expiry of each pull request the consumer keeps open, in milliseconds.
    #[serde(default = "defaults::fetch_wait_ms")]
    pub fetch_wait_ms: u64,
    /// States each plugin keeps in memory before it forgets committed ones (and reads them
    /// back from the database when their keys come up again).
    #[serde(default = "defaults::state_cache_keys")]
    pub state_cache_keys: usize,
    /// Events between snapshots of a plugin's states: states are written with the first
    /// commit after this many events (and when the plugin stops, swaps or holds more
    /// changed states than `state-cache-keys`); the events since the last snapshot are folded
    /// again, effects suppressed, when a crashed daemon restarts. 1: with every commit.
    #[serde(default = "defaults::snapshot_interval")]
    pub snapshot_interval: u64,
    /// How often the plugin directory is checked for new, changed and removed plugins, in
    /// milliseconds; 0: only on SIGHUP.
    #[serde(default = "defaults::plugin_dir_poll_ms")]
    pub plugin_dir_poll_ms: u64,
    /// How long a stop (SIGTERM, SIGINT) may take, in milliseconds: the workers commit what
    /// they folded and retry publishing and acking until then; whatever is left is safe (the
    /// outbox is published at the next start, unacked events are redelivered and skipped).
    #[serde(default = "defaults::drain_timeout_ms")]
    pub drain_timeout_ms: u64,
    /// Directory of precompiled components (default: the user cache).
    #[serde(default)]
    pub cache_dir: Option<PathBuf>,
    /// Per-plugin overrides of the manifest's `[source]`, by plugin name.
    #[serde(default)]
    pub plugins: BTreeMap<String, PluginOverride>,
    /// The directory relative paths are resolved against (the config file's).
    #[serde(skip)]
    pub base_dir: PathBuf,
}

/// The dead-letter subjects: an event a plugin fails on (with `on-error = "dead-letter"`, the
/// default) is published to `<subject-prefix>.<plugin>`, kept by `stream` (created at start).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct DeadLetterConfig {
    /// The stream that keeps dead letters.
    #[serde(default = "defaults::dead_letter_stream")]
    pub stream: String,
    /// Dead letters of plugin `p` go to `<subject-prefix>.p`.
    #[serde(default = "defaults::dead_letter_prefix")]
    pub subject_prefix: String,
}

impl Default for DeadLetterConfig {
    fn default() -> Self {
        DeadLetterConfig {
            stream: defaults::dead_letter_stream(),
            subject_prefix: defaults::dead_letter_prefix(),
        }
    }
}

impl DeadLetterConfig {
    /// The dead-letter subject of `plugin`.
    pub fn subject(&self, plugin: &str) -> String {
        format!("{}.{plugin}", self.subject_prefix)
    }
}

/// HMAC-SHA256 signatures on events ([`crate::integrity`]).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct EventSigningConfig {
    /// Fold only events signed by one of `keys`; others are rejected (`bad-signature`) and
    /// dead-lettered.
    #[serde(default)]
    pub verify: bool,
    /// Sign the events and commands plugins emit with this key of `keys`.
    #[serde(default)]
    pub sign_key: Option<String>,
    /// Shared secrets by key id, base64.
    #[serde(default)]
    pub keys: BTreeMap<String, String>,
}

impl EventSigningConfig {
    /// The keys, decoded.
    pub fn decoded_keys(&self) -> anyhow::Result<Vec<(String, Vec<u8>)>> {
        use base64::Engine as _;
        self.keys
            .iter()
            .map(|(id, secret)| {
                let key = base64::engine::general_purpose::STANDARD.decode(secret.trim()).map_err(
                    |e| anyhow::anyhow!("[event-signing] key `{id}` is not base64: {e}"),
                )?;
                if key.len() < 16 {
                    bail!("[event-signing] key `{id}` is {} bytes; use at least 16", key.len());
                }
                Ok((id.clone(), key))
            })
            .collect()
    }
}

/// The fleet registry: desired plugin versions pushed with `jetfold plugin push`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct RegistryConfig {
    /// Follow the registry: load, swap, pause and resume the plugins pushed to it.
    #[serde(default)]
    pub enabled: bool,
    /// Buckets are `<bucket-prefix>-plugins` (KV and Object Store) and `<bucket-prefix>-daemons`.
    #[serde(default = "defaults::bucket_prefix")]
    pub bucket_prefix: String,
    /// Where the daemon keeps the pushed plugins it runs.
    #[serde(default = "defaults::registry_dir")]
    pub dir: PathBuf,
    /// How often the daemon reports its status, in milliseconds.
    #[serde(default = "defaults::status_interval_ms")]
    pub status_interval_ms: u64,
    /// ed25519 public keys (base64, as `jetfold plugin keygen` prints them): when any are
    /// given, a pushed version must be signed by one of them or it is refused.
    #[serde(default)]
    pub trusted_keys: Vec<String>,
}

impl Default for RegistryConfig {
    fn default() -> Self {
        RegistryConfig {
            enabled: false,
            bucket_prefix: defaults::bucket_prefix(),
            dir: defaults::registry_dir(),
            status_interval_ms: defaults::status_interval_ms(),
            trusted_keys: Vec::new(),
        }
    }
}

/// Which keys of every plugin this daemon folds: those whose hash falls in partition `index`
/// of `count`. Daemons with the same plugins, the same `count` and each an `index` of their
/// own (and names of their own) split the work; each reads the whole stream in order, so every
/// key's events are folded in order, by one daemon.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct Partition {
    /// This daemon's partition, from 0.
    pub index: u32,
    /// How many partitions (daemons) share the keys; 1: this daemon folds them all.
    pub count: u32,
}

impl Default for Partition {
    fn default() -> Self {
        Partition { index: 0, count: 1 }
    }
}

impl Partition {
    /// Whether several daemons share the keys.
    pub fn is_split(&self) -> bool {
        self.count > 1
    }

    /// Whether the events of state key `key` are this daemon's (FNV-1a of its bytes, a hash
    /// that every daemon, version and platform computes alike).
    pub fn owns(&self, key: &str) -> bool {
        if self.count <= 1 {
            return true;
        }
        let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
        for byte in key.as_bytes() {
            hash ^= u64::from(*byte);
            hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
        }
        hash % u64::from(self.count) == u64::from(self.index)
    }

    /// Whether a message whose key cannot be known (it does not decode, or its signature is
    /// bad) is this daemon's to record: by its stream sequence.
    pub fn owns_seq(&self, seq: u64) -> bool {
        self.count <= 1 || seq % u64::from(self.count) == u64::from(self.index)
    }

    /// The name plugin `plugin`'s checkpoint is kept under: the plugin's own when the daemon
    /// folds every key, else one per partition (states, rejections and read-model rows stay
    /// the plugin's: the partitions' keys do not overlap).
    pub fn checkpoint_name(&self, plugin: &str) -> String {
        if self.count <= 1 {
            plugin.to_string()
        } else {
            format!("{plugin}#{}/{}", self.index, self.count)
        }
    }
}

/// The daemon's HTTP endpoint (`/metrics`, `/healthz`, `/readyz`, `/plugins`, `/`).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct HttpConfig {
    /// `host:port` to serve on; empty turns the endpoint off. Port 0 picks a free one (the
    /// daemon logs which).
    #[serde(default = "defaults::http_listen")]
    pub listen: String,
    /// `/readyz` answers 200 while every plugin runs within this many events of the end of
    /// its stream.
    #[serde(default = "defaults::ready_max_lag")]
    pub ready_max_lag: u64,
}

impl Default for HttpConfig {
    fn default() -> Self {
        HttpConfig { listen: defaults::http_listen(), ready_max_lag: defaults::ready_max_lag() }
    }
}

/// NATS connection settings; every authentication method NATS offers.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct NatsConfig {
    /// Server URL(s), comma-separated.
    #[serde(default = "defaults::nats_url")]
    pub url: String,
    /// A `.creds` file (JWT + nkey seed).
    #[serde(default)]
    pub creds_file: Option<PathBuf>,
    /// A file holding an nkey seed (`SU…`).
    #[serde(default)]
    pub nkey_seed_file: Option<PathBuf>,
    /// User name (with `password`).
    #[serde(default)]
    pub user: Option<String>,
    /// Password (with `user`).
    #[serde(default)]
    pub password: Option<String>,
    /// Authentication token.
    #[serde(default)]
    pub token: Option<String>,
    /// CA certificate (PEM) that signed the server's certificate; enables TLS.
    #[serde(default)]
    pub tls_ca_file: Option<PathBuf>,
    /// Client certificate (PEM) for mutual TLS, with `tls-key-file`.
    #[serde(default)]
    pub tls_cert_file: Option<PathBuf>,
    /// Client key (PEM) for mutual TLS.
    #[serde(default)]
    pub tls_key_file: Option<PathBuf>,
    /// Give up after this many seconds without a first connection (0: never).
    #[serde(default = "defaults::connect_timeout_secs")]
    pub connect_timeout_secs: u64,
}

impl Default for NatsConfig {
    fn default() -> Self {
        NatsConfig {
            url: defaults::nats_url(),
            creds_file: None,
            nkey_seed_file: None,
            user: None,
            password: None,
            token: None,
            tls_ca_file: None,
            tls_cert_file: None,
            tls_key_file: None,
            connect_timeout_secs: defaults::connect_timeout_secs(),
        }
    }
}

/// The database effects, states and checkpoints go to: SQLite unless `postgres` is given.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct SinkConfig {
    /// An SQLite file, created if missing (default `jetfold.db`).
    #[serde(default)]
    pub sqlite: Option<PathBuf>,
    /// A PostgreSQL URL, e.g. `postgres://jetfold@127.0.0.1/jetfold`.
    #[serde(default)]
    pub postgres: Option<String>,
    /// With `postgres`: the schema for jetfold's and the plugins' tables (default `jetfold`).
    #[serde(default)]
    pub schema: Option<String>,
}

/// Where a plugin starts reading when its durable consumer is first created.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum StartPosition {
    /// From the first event in the stream.
    #[default]
    All,
    /// Only events published after the consumer is created.
    New,
}

/// Overrides of one plugin's source.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct PluginOverride {
    /// The stream to read.
    #[serde(default)]
    pub stream: Option<String>,
    /// Filter subjects.
    #[serde(default)]
    pub subjects: Option<Vec<String>>,
    /// Where a new consumer starts.
    #[serde(default)]
    pub start: Option<StartPosition>,
    /// `false` loads nothing for this plugin.
    #[serde(default = "defaults::enabled")]
    pub enabled: bool,
}

impl Default for PluginOverride {
    fn default() -> Self {
        PluginOverride { stream: None, subjects: None, start: None, enabled: true }
    }
}

mod defaults {
    pub fn name() -> String {
        "jetfold".into()
    }
    pub fn dead_letter_stream() -> String {
        "JETFOLD_DLQ".into()
    }
    pub fn dead_letter_prefix() -> String {
        "jetfold.dlq".into()
    }
    pub fn bucket_prefix() -> String {
        "jetfold".into()
    }
    pub fn registry_dir() -> std::path::PathBuf {
        "registry".into()
    }
    pub fn status_interval_ms() -> u64 {
        2000
    }
    pub fn batch_size() -> usize {
        500
    }
    pub fn ack_wait_secs() -> u64 {
        30
    }
    pub fn state_cache_keys() -> usize {
        100_000
    }
    pub fn snapshot_interval() -> u64 {
        1
    }
    pub fn http_listen() -> String {
        "127.0.0.1:9477".into()
    }
    pub fn ready_max_lag() -> u64 {
        1000
    }
    pub fn plugin_dir_poll_ms() -> u64 {
        1000
    }
    pub fn drain_timeout_ms() -> u64 {
        10_000
    }
    pub fn fetch_wait_ms() -> u64 {
        200
    }
    pub fn nats_url() -> String {
        "nats://127.0.0.1:4222".into()
    }
    pub fn connect_timeout_secs() -> u64 {
        60
    }
    pub fn enabled() -> bool {
        true
    }
}

impl Config {
    /// Reads `path`, applies environment overrides and resolves relative paths.
    pub fn load(path: &Path) -> anyhow::Result<Config> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("failed to read config file {}", path.display()))?;
        let base = path.parent().map(Path::to_path_buf).unwrap_or_default();
        Config::parse(&text, base, |k| std::env::var(k).ok())
            .with_context(|| format!("invalid config file {}", path.display()))
    }

    /// Parses config text; `env` looks up environment overrides.
    pub fn parse(
        text: &str,
        base_dir: PathBuf,
        env: impl Fn(&str) -> Option<String>,
    ) -> anyhow::Result<Config> {
        let mut config: Config = toml::from_str(text)?;
        if let Some(url) = env("NATS_URL") {
            config.nats.url = url;
        }
        if let Some(sqlite) = env("JETFOLD_SQLITE") {
            config.sink.sqlite = Some(PathBuf::from(sqlite));
        }
        if let Some(url) = env("JETFOLD_POSTGRES_URL") {
            config.sink.postgres = Some(url);
        }
        if let Some(dir) = env("JETFOLD_PLUGIN_DIR") {
            config.plugin_dir = PathBuf::from(dir);
        }
        if let Some(listen) = env("JETFOLD_HTTP_LISTEN") {
            config.http.listen = listen;
        }
        config.base_dir = base_dir;
        if config.batch_size == 0 {
            bail!("batch-size must be at least 1");
        }
        if config.partition.count == 0 || config.partition.index >= config.partition.count {
            bail!(
                "[partition] index {} of count {}: the index goes from 0 to count - 1",
                config.partition.index,
                config.partition.count
            );
        }
        if !crate::manifest::is_name(&config.name) {
            bail!("name {:?}: use lowercase letters, digits, `-` and `_`", config.name);
        }
        if !crate::manifest::is_name(&config.registry.bucket_prefix) {
            bail!(
                "registry.bucket-prefix {:?}: use lowercase letters, digits, `-` and `_`",
                config.registry.bucket_prefix
            );
        }
        if config.nats.user.is_some() != config.nats.password.is_some() {
            bail!("nats.user and nats.password go together");
        }
        if config.nats.tls_cert_file.is_some() != config.nats.tls_key_file.is_some() {
            bail!("nats.tls-cert-file and nats.tls-key-file go together");
        }
        crate::manifest::Limits::merged(&config.limits, &toml::Table::new())
            .map_err(|e| anyhow::anyhow!("[limits]: {e}"))?;
        let keys = config.event_signing.decoded_keys()?;
        if config.event_signing.verify && keys.is_empty() {
            bail!("[event-signing] verify = true needs at least one key in [event-signing.keys]");
        }
        if let Some(id) = &config.event_signing.sign_key
            && !keys.iter().any(|(k, _)| k == id)
        {
            bail!("[event-signing] sign-key = {id:?} is not one of [event-signing.keys]");
        }
        if config.sink.sqlite.is_some() && config.sink.postgres.is_some() {
            bail!("[sink] takes `sqlite` or `postgres`, not both");
        }
        if let Some(schema) = &config.sink.schema
            && (config.sink.postgres.is_none() || !crate::manifest::is_identifier(schema))
        {
            bail!("[sink] schema = {schema:?} needs `postgres` and must be a plain identifier");
        }
        Ok(config)
    }

    /// `path` resolved against the config file's directory.
    pub fn resolve(&self, path: &Path) -> PathBuf {
        if path.is_absolute() { path.to_path_buf() } else { self.base_dir.join(path) }
    }

    /// The database to write to.
    pub fn sink_target(&self) -> SinkTarget {
        match &self.sink.postgres {
            Some(url) => SinkTarget::Postgres {
                url: url.clone(),
                schema: self.sink.schema.clone().unwrap_or_else(|| "jetfold".into()),
            },
            None => SinkTarget::Sqlite(
                self.resolve(self.sink.sqlite.as_deref().unwrap_or(Path::new("jetfold.db"))),
            ),
        }
    }

    /// The ack wait as a duration.
    pub fn ack_wait(&self) -> Duration {
        Duration::from_secs(self.ack_wait_secs.max(1))
    }

    /// The drain timeout as a duration.
    pub fn drain_timeout(&self) -> Duration {
        Duration::from_millis(self.drain_timeout_ms)
    }

    /// The fetch wait as a duration.
    pub fn fetch_wait(&self) -> Duration {
        Duration::from_millis(self.fetch_wait_ms.max(10))
    }
}

/// Which database a daemon writes to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SinkTarget {
    /// An SQLite file (the embedded default).
    Sqlite(PathBuf),
    /// A PostgreSQL database and the schema to use in it.
    Postgres {
        /// Connection URL.
        url: String,
        /// Schema holding jetfold's and the plugins' tables.
        schema: String,
    },
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_key_belongs_to_exactly_one_partition_and_always_the_same() {
        let parts: Vec<Partition> = (0..3).map(|index| Partition { index, count: 3 }).collect();
        let mut sizes = [0; 3];
        for i in 0..3_000 {
            let key = format!("r-{i}");
            let owners: Vec<u32> = parts.iter().filter(|p| p.owns(&key)).map(|p| p.index).collect();
            assert_eq!(owners.len(), 1, "{key}: {owners:?}");
            sizes[owners[0] as usize] += 1;
            assert_eq!(parts.iter().filter(|p| p.owns_seq(i)).count(), 1);
        }
        // Spread, not all on one daemon.
        assert!(sizes.iter().all(|&n| n > 800), "{sizes:?}");
        // FNV-1a is fixed: a key's partition never changes between versions.
        assert!(Partition { index: 1, count: 2 }.owns("r-1"));
        assert!(Partition::default().owns("anything"));
        assert_eq!(Partition { index: 1, count: 2 }.checkpoint_name("p"), "p#1/2");
        let bad = Config::parse(
            "plugin-dir = \"p\"\n[partition]\nindex = 2\ncount = 2\n",
            PathBuf::new(),
            |_| None,
        );
        assert!(bad.unwrap_err().to_string().contains("index goes from 0 to count - 1"));
    }

    #[test]
    fn broken_limits_and_signing_settings_are_refused_with_the_key_at_fault() {
        let base = "plugin-dir = \"plugins\"\n";
        let refused = |extra: &str| {
            let text = format!("{base}{extra}");
            format!("{:#}", Config::parse(&text, PathBuf::from("/"), |_| None).unwrap_err())
        };
        assert!(refused("[limits]\nfule = 5\n").contains("fule"));
        assert!(refused("[event-signing]\nverify = true\n").contains("needs at least one key"));
        let key = "c2l4dGVlbiBieXRlcyBvZiBrZXk="; // "sixteen bytes of key", 20 bytes
        let e = refused(&format!(
            "[event-signing]\nsign-key = \"k2\"\n[event-signing.keys]\nk1 = \"{key}\"\n"
        ));
        assert!(e.contains("sign-key = \"k2\" is not one of"), "{e}");
        assert!(refused("[event-signing.keys]\nk1 = \"not base64!\"\n").contains("not base64"));
        assert!(refused("[event-signing.keys]\nk1 = \"c2hvcnQ=\"\n").contains("at least 16"));
        let text = format!(
            "{base}[limits]\nmax-effects = 7\n[event-signing]\nverify = true\nsign-key = \"k1\"\n[event-signing.keys]\nk1 = \"{key}\"\n"
        );
        let ok = Config::parse(&text, PathBuf::from("/"), |_| None).unwrap();
        assert_eq!(ok.event_signing.decoded_keys().unwrap()[0].1, b"sixteen bytes of key");
        assert_eq!(ok.limits.get("max-effects").and_then(|v| v.as_integer()), Some(7));
    }

    #[test]
    fn the_readme_example_config_is_accepted_as_written() {
        let readme = include_str!("../../../README.md");
        let start = readme.find("A complete `jetfold.toml`").expect("the README shows a config");
        let block = &readme[start..];
        let body = &block[block.find("```toml\n").unwrap() + 8..];
        let text = &body[..body.find("```").unwrap()];
        let c = Config::parse(text, PathBuf::from("/etc/jetfold"), |_| None).unwrap();
        assert_eq!((c.name.as_str(), c.batch_size, c.state_cache_keys), ("jetfold", 500, 100_000));
        assert!(!c.registry.enabled);
        assert_eq!(c.plugins["compute-resource"].stream.as_deref(), Some("INFRA"));
    }

    #[test]
    fn a_minimal_config_gets_defaults_and_env_overrides() {
        let env = |k: &str| (k == "NATS_URL").then(|| "nats://elsewhere:4333".to_string());
        let c = Config::parse("plugin-dir = \"plugins\"\n", PathBuf::from("/etc/jetfold"), env)
            .unwrap();
        assert_eq!(c.nats.url, "nats://elsewhere:4333");
        assert_eq!(c.batch_size, 500);
        assert_eq!(c.resolve(&c.plugin_dir), PathBuf::from("/etc/jetfold/plugins"));
        assert_eq!(c.sink_target(), SinkTarget::Sqlite(PathBuf::from("/etc/jetfold/jetfold.db")));
    }

    #[test]
    fn unknown_keys_and_half_credentials_are_refused() {
        let none = |_: &str| None;
        let e = Config::parse("plugin-dir = \"p\"\nbatch = 3\n", PathBuf::new(), none).unwrap_err();
        assert!(format!("{e:#}").contains("unknown field `batch`"), "{e:#}");
        let e = Config::parse("plugin-dir = \"p\"\n[nats]\nuser = \"a\"\n", PathBuf::new(), none)
            .unwrap_err();
        assert!(e.to_string().contains("go together"), "{e:#}");
        let e = Config::parse(
            "plugin-dir = \"p\"\n[plugins.x]\nstrat = \"new\"\n",
            PathBuf::new(),
            none,
        )
        .unwrap_err();
        assert!(format!("{e:#}").contains("unknown field `strat`"), "{e:#}");
        // The daemon's name prefixes consumer names: NATS-unsafe names are refused.
        let e = Config::parse("name = \"a.b\"\nplugin-dir = \"p\"\n", PathBuf::new(), none)
            .unwrap_err();
        assert!(e.to_string().contains("name \"a.b\""), "{e:#}");
        let e = Config::parse(
            "plugin-dir = \"p\"\n[registry]\nbucket-prefix = \"Fleet*\"\n",
            PathBuf::new(),
            none,
        )
        .unwrap_err();
        assert!(e.to_string().contains("bucket-prefix"), "{e:#}");
    }
}
