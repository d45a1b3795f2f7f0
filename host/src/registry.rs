//! The fleet registry on JetStream: components in an Object Store bucket under their sha256
//! digest, the desired version of each plugin in a KV bucket, and each daemon's status in a
//! second KV bucket.
//!
//! A daemon with `[registry] enabled = true` keeps a directory of its own (`registry-dir`) in
//! step with the desired versions: each plugin's manifest and component, the component fetched
//! by digest and checked against it before it is written. That directory is read like the
//! plugin directory, so a pushed version is loaded, swapped, paused (its directory removed, its
//! checkpoint kept) and resumed by the same code that serves the plugin directory.

use std::path::{Path, PathBuf};

use anyhow::{Context as _, bail};
use async_nats::jetstream::{self, kv, object_store};
use futures::StreamExt as _;
use serde::{Deserialize, Serialize};
use tokio::io::AsyncReadExt as _;

use crate::component::{PluginDigest, write_atomically};
use crate::manifest::{MANIFEST_FILE, Manifest};

/// How many revisions of each plugin's record the KV bucket keeps (`rollback --to` looks
/// there for a version no longer in a record's history).
const HISTORY: i64 = 64;
/// How many earlier versions a plugin's record keeps, newest last: what `plugin rollback`
/// goes back through, one per rollback.
pub const VERSIONS_KEPT: usize = 32;
/// How many earlier versions a daemon keeps on disk for versions waiting for their `--at-seq`
/// (each runs before the next one's sequence).
const PREVIOUS_DEPTH: usize = 8;
/// How long a daemon's status stays listed after its last report.
const STATUS_TTL: std::time::Duration = std::time::Duration::from_secs(30);

/// The buckets of a registry.
#[derive(Debug, Clone)]
pub struct Buckets {
    /// Object Store bucket holding components, and KV bucket of desired versions.
    pub plugins: String,
    /// KV bucket of daemons' status reports.
    pub status: String,
}

impl Buckets {
    /// The buckets named after `prefix` (`<prefix>-plugins`, `<prefix>-daemons`).
    pub fn named(prefix: &str) -> Buckets {
        Buckets { plugins: format!("{prefix}-plugins"), status: format!("{prefix}-daemons") }
    }
}

/// The desired version of a plugin, as the KV bucket holds it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Desired {
    /// The plugin's name (the KV key).
    pub name: String,
    /// sha256 of the component: its name in the Object Store.
    pub digest: String,
    /// The manifest's text.
    pub manifest: String,
    /// Stopped until resumed.
    #[serde(default)]
    pub paused: bool,
    /// Take over exactly at this stream sequence instead of at the next batch.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub at_seq: Option<u64>,
    /// An ed25519 signature of the version, if it was pushed with a signing key.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signature: Option<Signature>,
    /// A version run beside this one, effects suppressed, its differences recorded.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub shadow: Option<Box<Desired>>,
    /// The versions this one replaced, oldest first (at most [`VERSIONS_KEPT`]): a rollback
    /// returns to the last and drops it; a push or a promotion appends the version it
    /// replaces. With an `at_seq`, the last is also what runs before that sequence. `None` in
    /// records written before jetfold kept a history.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub history: Option<Vec<Desired>>,
}

impl Desired {
    /// This version as a later one's history keeps it: no pause, shadow or history of its own.
    fn as_earlier(&self) -> Desired {
        Desired { paused: false, shadow: None, history: None, ..self.clone() }
    }

    /// The history of a version that replaces this one: this one's, then this one.
    fn history_after(&self) -> Vec<Desired> {
        let mut history = self.history.clone().unwrap_or_default();
        history.push(self.as_earlier());
        let excess = history.len().saturating_sub(VERSIONS_KEPT);
        history.drain(..excess);
        history
    }

    /// The version that runs before this one takes over at its `at_seq`: the one it replaced
    /// (with the versions before that as its history). None without an `at_seq`.
    pub fn before_at_seq(&self) -> Option<Desired> {
        self.at_seq?;
        let mut history = self.history.clone()?;
        let mut previous = history.pop()?;
        previous.history = Some(history);
        Some(previous)
    }
}

/// An ed25519 signature of a pushed version: of its name, component digest and manifest.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Signature {
    /// The signer's public key, base64.
    pub key: String,
    /// The signature, base64.
    pub signature: String,
}

/// What a signature covers: the name, the component's digest and the manifest's digest (the
/// manifest declares what the plugin may do).
fn signed_message(d: &Desired) -> Vec<u8> {
    let manifest = PluginDigest::of(d.manifest.as_bytes()).hex();
    format!("jetfold-plugin\n{}\n{}\n{manifest}\n", d.name, d.digest).into_bytes()
}

/// A new signing key: the private key (PKCS#8, base64) to keep, and the public key (base64)
/// to list under `[registry] trusted-keys`.
pub fn generate_key() -> anyhow::Result<(String, String)> {
    use base64::Engine as _;
    use ring::signature::KeyPair as _;
    let b64 = base64::engine::general_purpose::STANDARD;
    let rng = ring::rand::SystemRandom::new();
    let pkcs8 = ring::signature::Ed25519KeyPair::generate_pkcs8(&rng)
        .map_err(|_| anyhow::anyhow!("cannot generate a key"))?;
    let pair = ring::signature::Ed25519KeyPair::from_pkcs8(pkcs8.as_ref())
        .map_err(|_| anyhow::anyhow!("cannot read the generated key"))?;
    Ok((b64.encode(pkcs8.as_ref()), b64.encode(pair.public_key().as_ref())))
}

/// Signs `d` with the private key in `key_file` (as [`generate_key`] writes it).
pub fn sign(d: &mut Desired, key_file: &Path) -> anyhow::Result<()> {
    use base64::Engine as _;
    use ring::signature::KeyPair as _;
    let b64 = base64::engine::general_purpose::STANDARD;
    let text = std::fs::read_to_string(key_file)
        .with_context(|| format!("cannot read the signing key {}", key_file.display()))?;
    let pkcs8 = b64.decode(text.trim()).context("the signing key is not base64")?;
    let pair = ring::signature::Ed25519KeyPair::from_pkcs8(&pkcs8)
        .map_err(|_| anyhow::anyhow!("{} is not an ed25519 private key", key_file.display()))?;
    let signature = pair.sign(&signed_message(d));
    d.signature = Some(Signature {
        key: b64.encode(pair.public_key().as_ref()),
        signature: b64.encode(signature.as_ref()),
    });
    Ok(())
}

/// Checks `d`'s signature against `trusted` public keys (base64); no keys, no check.
pub fn verify(d: &Desired, trusted: &[String]) -> anyhow::Result<()> {
    use base64::Engine as _;
    if trusted.is_empty() {
        return Ok(());
    }
    let Some(sig) = &d.signature else {
        bail!("unsigned, and [registry] trusted-keys requires a signature: refused");
    };
    if !trusted.iter().any(|k| k.trim() == sig.key) {
        bail!("signed by {}, which is not among [registry] trusted-keys: refused", sig.key);
    }
    let b64 = base64::engine::general_purpose::STANDARD;
    let key = b64.decode(&sig.key).context("the signature's key is not base64")?;
    let signature = b64.decode(&sig.signature).context("the signature is not base64")?;
    ring::signature::UnparsedPublicKey::new(&ring::signature::ED25519, key)
        .verify(&signed_message(d), &signature)
        .map_err(|_| anyhow::anyhow!("the signature does not match this version: refused"))
}

/// A registry on one NATS server.
pub struct Registry {
    plugins: kv::Store,
    objects: object_store::ObjectStore,
    status: kv::Store,
}

impl Registry {
    /// Opens the buckets, creating them if needed.
    pub async fn open(js: &jetstream::Context, buckets: &Buckets) -> anyhow::Result<Registry> {
        let plugins = match js.get_key_value(&buckets.plugins).await {
            Ok(kv) => kv,
            Err(_) => js
                .create_key_value(kv::Config {
                    bucket: buckets.plugins.clone(),
                    description: "jetfold: desired plugin versions".into(),
                    history: HISTORY,
                    ..Default::default()
                })
                .await
                .with_context(|| format!("cannot create the KV bucket {}", buckets.plugins))?,
        };
        let objects = match js.get_object_store(&buckets.plugins).await {
            Ok(store) => store,
            Err(_) => js
                .create_object_store(object_store::Config {
                    bucket: buckets.plugins.clone(),
                    description: Some("jetfold: plugin components by sha256".into()),
                    ..Default::default()
                })
                .await
                .with_context(|| {
                    format!("cannot create the Object Store bucket {}", buckets.plugins)
                })?,
        };
        let status = match js.get_key_value(&buckets.status).await {
            Ok(kv) => kv,
            Err(_) => js
                .create_key_value(kv::Config {
                    bucket: buckets.status.clone(),
                    description: "jetfold: daemons' status".into(),
                    history: 1,
                    max_age: STATUS_TTL,
                    ..Default::default()
                })
                .await
                .with_context(|| format!("cannot create the KV bucket {}", buckets.status))?,
        };
        Ok(Registry { plugins, objects, status })
    }

    /// Stores the plugin at `path` (a manifest or its directory) and makes it the desired
    /// version. The manifest must parse; the component is stored under its digest.
    /// With `shadow`, the version runs beside the live one instead of replacing it.
    pub async fn push(
        &self,
        path: &Path,
        at_seq: Option<u64>,
        sign_with: Option<&Path>,
        shadow: bool,
    ) -> anyhow::Result<Desired> {
        let manifest = Manifest::load(path)?;
        let manifest_path =
            if path.is_dir() { path.join(MANIFEST_FILE) } else { path.to_path_buf() };
        let text = std::fs::read_to_string(&manifest_path)?;
        let wasm_path = manifest.wasm_path();
        let bytes = std::fs::read(&wasm_path)
            .with_context(|| format!("cannot read the component {}", wasm_path.display()))?;
        let digest = PluginDigest::of(&bytes).hex();
        if self.objects.info(&digest).await.is_err() {
            self.objects
                .put(digest.as_str(), &mut bytes.as_slice())
                .await
                .with_context(|| format!("cannot store component {digest}"))?;
        }
        let current = self.desired(&manifest.name).await?;
        let paused = current.as_ref().is_some_and(|d| d.paused);
        // The same version pushed again (another `--at-seq`, a signature) replaces nothing.
        let history = match &current {
            Some(c) if (c.digest.as_str(), c.manifest.as_str()) == (&digest, &text) => {
                c.history.clone().unwrap_or_default()
            }
            Some(c) => c.history_after(),
            None => Vec::new(),
        };
        let mut desired = Desired {
            name: manifest.name,
            digest,
            manifest: text,
            paused,
            at_seq,
            signature: None,
            shadow: None,
            history: (!shadow).then_some(history),
        };
        if let Some(key) = sign_with {
            sign(&mut desired, key)?;
        }
        if shadow {
            let mut live = current.with_context(|| {
                format!("`{}` has no live version to shadow: push one first", desired.name)
            })?;
            live.shadow = Some(Box::new(desired));
            self.put(&live).await?;
            return Ok(live);
        }
        self.put(&desired).await?;
        Ok(desired)
    }

    async fn put(&self, desired: &Desired) -> anyhow::Result<()> {
        self.plugins
            .put(&desired.name, serde_json::to_vec(desired)?.into())
            .await
            .with_context(|| format!("cannot set the desired version of {}", desired.name))?;
        Ok(())
    }

    /// The desired version of `name`, if any was pushed.
    pub async fn desired(&self, name: &str) -> anyhow::Result<Option<Desired>> {
        match self.plugins.get(name).await? {
            Some(bytes) if !bytes.is_empty() => Ok(Some(serde_json::from_slice(&bytes)?)),
            _ => Ok(None),
        }
    }

    /// Every plugin's desired version.
    pub async fn all(&self) -> anyhow::Result<Vec<Desired>> {
        let mut keys = self.plugins.keys().await?;
        let mut names = Vec::new();
        while let Some(key) = keys.next().await {
            names.push(key?);
        }
        names.sort();
        let mut out = Vec::new();
        for name in names {
            if let Some(d) = self.desired(&name).await? {
                out.push(d);
            }
        }
        Ok(out)
    }

    /// Makes an earlier version desired again: `to` (a digest, or a prefix of one), or else
    /// the version the current one replaced. Each rollback goes one version further back
    /// through the record's history and drops the version it leaves; `to` a version no
    /// longer in the history (one rolled back from, or older) finds it among the KV bucket's
    /// revisions and returns to it as a push would.
    pub async fn rollback(&self, name: &str, to: Option<&str>) -> anyhow::Result<Desired> {
        let current =
            self.desired(name).await?.with_context(|| format!("no plugin `{name}` was pushed"))?;
        let short = |d: &str| d.chars().take(12).collect::<String>();
        if let Some(prefix) = to
            && current.digest.starts_with(prefix)
        {
            bail!("`{name}` is at {} already", short(&current.digest));
        }
        let mut history = match current.history.clone() {
            Some(history) => history,
            // A record from before histories were kept: the newest earlier revision with
            // another digest, once; its history starts empty.
            None => self
                .revisions(name)
                .await?
                .into_iter()
                .rev()
                .filter(|d| d.digest != current.digest)
                .take(1)
                .collect(),
        };
        let in_history = match to {
            Some(prefix) => history.iter().rposition(|d| d.digest.starts_with(prefix)),
            None => history.len().checked_sub(1),
        };
        let mut target = match (in_history, to) {
            (Some(i), _) => {
                let target = history.remove(i);
                history.truncate(i);
                target
            }
            (None, None) => bail!(
                "`{name}` has no earlier version to roll back to: {} is the oldest version its history holds (each push keeps the version it replaces, up to {VERSIONS_KEPT}; each rollback drops the one it leaves); `plugin rollback {name} --to DIGEST` finds older ones among the registry's revisions",
                short(&current.digest)
            ),
            (None, Some(prefix)) => {
                let found = self
                    .revisions(name)
                    .await?
                    .into_iter()
                    .rev()
                    .find(|d| d.digest.starts_with(prefix));
                let Some(target) = found else {
                    bail!(
                        "`{name}` never had a version {prefix} (among the last {HISTORY} revisions of its record)"
                    );
                };
                history = current.history_after();
                target
            }
        };
        target.paused = current.paused;
        target.at_seq = None;
        target.shadow = None;
        target.history = Some(history);
        self.put(&target).await?;
        Ok(target)
    }

    /// Every revision of `name`'s record the KV bucket keeps, oldest first.
    async fn revisions(&self, name: &str) -> anyhow::Result<Vec<Desired>> {
        let mut history = self.plugins.history(name).await?;
        let mut revisions = Vec::new();
        while let Some(entry) = history.next().await {
            let entry = entry?;
            if let Ok(d) = serde_json::from_slice::<Desired>(&entry.value) {
                revisions.push(d);
            }
        }
        Ok(revisions)
    }

    /// Forgets a plugin: every daemon following the registry stops it. Returns what was
    /// desired, if anything.
    pub async fn remove(&self, name: &str) -> anyhow::Result<Option<Desired>> {
        let current = self.desired(name).await?;
        if current.is_some() {
            self.plugins
                .delete(name)
                .await
                .with_context(|| format!("cannot remove `{name}` from the registry"))?;
        }
        Ok(current)
    }

    /// Makes the shadow version the live one (at each daemon's next batch).
    pub async fn promote(&self, name: &str) -> anyhow::Result<Desired> {
        let current =
            self.desired(name).await?.with_context(|| format!("no plugin `{name}` was pushed"))?;
        let mut promoted = *current
            .shadow
            .clone()
            .with_context(|| format!("`{name}` has no shadow version to promote"))?;
        promoted.paused = current.paused;
        promoted.history = Some(current.history_after());
        self.put(&promoted).await?;
        Ok(promoted)
    }

    /// Pauses or resumes a plugin on every daemon.
    pub async fn set_paused(&self, name: &str, paused: bool) -> anyhow::Result<Desired> {
        let mut d =
            self.desired(name).await?.with_context(|| format!("no plugin `{name}` was pushed"))?;
        d.paused = paused;
        self.put(&d).await?;
        Ok(d)
    }

    /// The component stored under `digest`, checked against it.
    pub async fn component(&self, digest: &str) -> anyhow::Result<Vec<u8>> {
        let mut object = self
            .objects
            .get(digest)
            .await
            .with_context(|| format!("component {digest} is not in the registry"))?;
        let mut bytes = Vec::new();
        object.read_to_end(&mut bytes).await?;
        let actual = PluginDigest::of(&bytes).hex();
        if actual != digest {
            bail!(
                "component {digest} does not match its digest (its bytes hash to {actual}): refused"
            );
        }
        Ok(bytes)
    }

    /// Brings `dir` (one subdirectory per plugin) in step with the desired, unpaused versions
    /// and removes the others. A plugin whose version changed is written into a staging
    /// directory first ([`STAGING_DIR`]`/<name>`: its component and manifest, and while it
    /// waits for its `--at-seq` the version it replaces in `previous/`; then its shadow in
    /// `shadow/`) and moved into place only once `check` accepts the staging directory (the
    /// daemon loads and instantiates what it holds, as it would run it). So `dir` holds only
    /// versions that loaded, and a daemon's next start runs the last of them. A version
    /// refused (its signature missing or wrong when `trusted` keys are given, its component
    /// missing or not matching its digest, or `check` failing) leaves the one there in place;
    /// a shadow refused leaves the live version installed without one. Each refusal's name,
    /// digest and reason are returned.
    pub async fn sync(
        &self,
        dir: &Path,
        trusted: &[String],
        check: impl Fn(PathBuf) -> futures::future::BoxFuture<'static, anyhow::Result<()>> + Sync,
    ) -> anyhow::Result<Vec<(String, String, String)>> {
        std::fs::create_dir_all(dir)?;
        let desired = self.all().await?;
        let staging = dir.join(STAGING_DIR);
        let mut refused = Vec::new();
        for d in &desired {
            let plugin_dir = dir.join(&d.name);
            if d.paused {
                if plugin_dir.exists() {
                    std::fs::remove_dir_all(&plugin_dir)?;
                }
                continue;
            }
            let shadow_dir = plugin_dir.join(crate::plugin_dir::SHADOW_DIR);
            let shadow_installed = match &d.shadow {
                Some(shadow) => installed(shadow, &shadow_dir, PREVIOUS_DEPTH),
                None => !shadow_dir.exists(),
            };
            if installed(d, &plugin_dir, 0) && shadow_installed {
                continue;
            }
            if staging.exists() {
                std::fs::remove_dir_all(&staging)?;
            }
            let staged = staging.join(&d.name);
            let live = async {
                self.materialise(d, &staged, trusted, 0).await?;
                check(staging.clone()).await
            };
            if let Err(e) = live.await {
                refused.push((d.name.clone(), d.digest.clone(), format!("{e:#}")));
                continue;
            }
            if let Some(shadow) = &d.shadow {
                let staged_shadow = staged.join(crate::plugin_dir::SHADOW_DIR);
                let outcome = async {
                    self.materialise(shadow, &staged_shadow, trusted, PREVIOUS_DEPTH).await?;
                    check(staging.clone()).await
                };
                if let Err(e) = outcome.await {
                    if staged_shadow.exists() {
                        std::fs::remove_dir_all(&staged_shadow)?;
                    }
                    refused.push((d.name.clone(), shadow.digest.clone(), format!("shadow: {e:#}")));
                }
            }
            replace_dir(&staged, &plugin_dir)?;
        }
        for entry in std::fs::read_dir(dir)? {
            let path = entry?.path();
            let name = path.file_name().and_then(|n| n.to_str()).unwrap_or_default().to_string();
            if path.is_dir() && !desired.iter().any(|d| d.name == name) {
                std::fs::remove_dir_all(&path)?;
            }
        }
        Ok(refused)
    }

    /// Writes `d`, checked against `trusted` keys, into a new directory `plugin_dir`: the
    /// version it replaces first (in `previous/`, when `d` waits for an `--at-seq`; and so on,
    /// `depth` counting down to [`PREVIOUS_DEPTH`]), then the promotion sequence and the
    /// component, the manifest last.
    async fn materialise(
        &self,
        d: &Desired,
        plugin_dir: &Path,
        trusted: &[String],
        depth: usize,
    ) -> anyhow::Result<()> {
        verify(d, trusted)?;
        let (text, file) = installed_manifest(d, plugin_dir)?;
        std::fs::create_dir_all(plugin_dir)?;
        if let Some(previous) = d.before_at_seq().filter(|_| depth < PREVIOUS_DEPTH) {
            let at = d.at_seq.unwrap_or_default();
            let previous_dir = plugin_dir.join(crate::plugin_dir::PREVIOUS_DIR);
            Box::pin(self.materialise(&previous, &previous_dir, trusted, depth + 1))
                .await
                .with_context(|| {
                    format!("{}, the version it replaces before sequence {at}", previous.digest)
                })?;
        }
        let bytes = self.component(&d.digest).await?;
        if let Some(seq) = d.at_seq {
            let at_seq_file = plugin_dir.join(crate::plugin_dir::AT_SEQ_FILE);
            write_atomically(&at_seq_file, format!("{seq}\n").as_bytes())?;
        }
        write_atomically(&plugin_dir.join(file), &bytes)?;
        write_atomically(&plugin_dir.join(MANIFEST_FILE), text.as_bytes())?;
        Ok(())
    }

    /// Watches the desired versions: the stream yields each one as it is now, then on every
    /// change, so a push made between a daemon's start and its watch is not missed.
    pub async fn watch(&self) -> anyhow::Result<kv::Watch> {
        Ok(self.plugins.watch_with_history(">").await?)
    }

    /// Publishes a daemon's status (listed until [`STATUS_TTL`] after the last report).
    pub async fn report(&self, status: &DaemonStatus) -> anyhow::Result<()> {
        self.status.put(&status.daemon, serde_json::to_vec(status)?.into()).await?;
        Ok(())
    }

    /// Every daemon's last status report.
    pub async fn statuses(&self) -> anyhow::Result<Vec<DaemonStatus>> {
        let mut keys = self.status.keys().await?;
        let mut out = Vec::new();
        while let Some(key) = keys.next().await {
            if let Some(bytes) = self.status.get(key?).await?
                && let Ok(status) = serde_json::from_slice(&bytes)
            {
                out.push(status);
            }
        }
        out.sort_by(|a: &DaemonStatus, b| a.daemon.cmp(&b.daemon));
        Ok(out)
    }
}

/// Where [`Registry::sync`] writes a changed plugin before it is checked, inside the registry
/// directory (plugin names never start with a dot).
pub const STAGING_DIR: &str = ".incoming";

/// The manifest as a daemon's registry directory holds it (its component beside it, under the
/// file name the manifest gives), and that file name.
fn installed_manifest(d: &Desired, plugin_dir: &Path) -> anyhow::Result<(String, PathBuf)> {
    let manifest =
        Manifest::parse(&d.manifest, &plugin_dir.join(MANIFEST_FILE), plugin_dir.to_path_buf())?;
    let file =
        PathBuf::from(manifest.wasm.file_name().context("the manifest names no component file")?);
    let mut text = d.manifest.clone();
    if manifest.wasm != file {
        text = text.replace(&manifest.wasm.display().to_string(), &file.display().to_string());
    }
    Ok((text, file))
}

/// Whether `plugin_dir` holds `d` as [`Registry::sync`] writes it (with the versions before
/// its `at_seq`, from `depth` on).
fn installed(d: &Desired, plugin_dir: &Path, depth: usize) -> bool {
    let Ok((text, file)) = installed_manifest(d, plugin_dir) else { return false };
    let present = std::fs::read(plugin_dir.join(file)).ok().map(|b| PluginDigest::of(&b).hex());
    let manifest_now = std::fs::read_to_string(plugin_dir.join(MANIFEST_FILE)).ok();
    let at_seq_now = crate::plugin_dir::read_at_seq(plugin_dir).ok().flatten();
    let previous_dir = plugin_dir.join(crate::plugin_dir::PREVIOUS_DIR);
    let previous = match d.before_at_seq().filter(|_| depth < PREVIOUS_DEPTH) {
        Some(previous) => installed(&previous, &previous_dir, depth + 1),
        None => !previous_dir.exists(),
    };
    present.as_deref() == Some(d.digest.as_str())
        && manifest_now.as_deref() == Some(text.as_str())
        && at_seq_now == d.at_seq
        && previous
}

/// Moves the directory `staged` to `target`, replacing what is there. A crash in between
/// leaves no `target`: the next sync writes it again.
fn replace_dir(staged: &Path, target: &Path) -> std::io::Result<()> {
    if target.exists() {
        let aside = target.with_file_name(".replaced");
        if aside.exists() {
            std::fs::remove_dir_all(&aside)?;
        }
        std::fs::rename(target, &aside)?;
        std::fs::rename(staged, target)?;
        return std::fs::remove_dir_all(&aside);
    }
    std::fs::rename(staged, target)
}

/// What a daemon reports about itself.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DaemonStatus {
    /// The daemon's name.
    pub daemon: String,
    /// Its plugins.
    pub plugins: Vec<PluginStatus>,
    /// When it reported this.
    #[serde(default)]
    pub reported_at: Option<chrono::DateTime<chrono::Utc>>,
    /// How often it reports (`[registry] status-interval-ms`).
    #[serde(default)]
    pub report_interval_ms: u64,
    /// True in the report a daemon makes as it stops.
    #[serde(default)]
    pub stopped: bool,
}

impl DaemonStatus {
    /// Whether the daemon is gone at `now`: it said it stopped, or has not reported for
    /// three of its intervals (a crash; its report would otherwise linger until it expires).
    pub fn gone(&self, now: chrono::DateTime<chrono::Utc>) -> bool {
        let silent = self.reported_at.is_some_and(|at| {
            let allowed = 3 * self.report_interval_ms.max(100) as i64;
            (now - at).num_milliseconds() > allowed
        });
        self.stopped || silent
    }

    /// The plugins as they stand at `now`: each of a gone daemon's is `daemon-gone`.
    pub fn plugins_at(&self, now: chrono::DateTime<chrono::Utc>) -> Vec<PluginStatus> {
        let gone = self.gone(now);
        let mut plugins = self.plugins.clone();
        if gone {
            for p in &mut plugins {
                p.status = crate::status::PluginState::DaemonGone;
            }
        }
        plugins
    }
}

/// One plugin on one daemon.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PluginStatus {
    /// Name.
    pub name: String,
    /// `projection`, `policy`.
    pub kind: String,
    /// The version that folds (for a stopped or refused one: the version concerned).
    pub digest: String,
    /// What it is doing.
    pub status: crate::status::PluginState,
    /// A version handed over to take over at a sequence (`--at-seq`), not folding yet: its
    /// digest and that sequence.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pending: Option<(String, u64)>,
    /// The last sequence committed.
    pub committed_seq: u64,
    /// Events of its stream (its subjects) after its checkpoint: not yet delivered to its
    /// consumer or not yet acked.
    pub lag: Option<u64>,
    /// The last version refused, and why.
    pub last_error: Option<String>,
    /// The version rebuilding beside it, and the sequence its rebuild has committed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rebuild: Option<(String, u64)>,
    /// The shadow version beside it: digest, events folded, events that differed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub shadow: Option<(String, u64, u64)>,
}
