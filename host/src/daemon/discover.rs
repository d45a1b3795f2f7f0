//! Finding plugins: the plugin directory, the config's `[plugins.<name>]` sections, the
//! versions a directory keeps (shadow, previous, at-seq).

use super::*;

/// Loads every plugin under the config's plugin directory; errors name the file at fault.
pub fn discover(config: &Config, loader: &ComponentLoader) -> anyhow::Result<Vec<DaemonPlugin>> {
    let (plugins, broken) = discover_runnable(config, loader)?;
    match broken.into_iter().next() {
        Some((_, e)) => Err(e),
        None => Ok(plugins),
    }
}

/// Plugin directories that cannot be loaded, with why.
pub(super) type BrokenDirs = Vec<(PathBuf, anyhow::Error)>;

/// Loads every plugin under the config's plugin directories: those ready to run, and the
/// directories of those that cannot be loaded.
pub(super) fn discover_runnable(
    config: &Config,
    loader: &ComponentLoader,
) -> anyhow::Result<(Vec<DaemonPlugin>, BrokenDirs)> {
    let (mut plugins, mut broken) = (Vec::new(), Vec::new());
    for found in discover_all(config, loader, Wanted::All)? {
        match found {
            Found::Plugin(p) => plugins.push(*p),
            Found::Disabled | Found::Upcaster(_) | Found::Unwanted(_) => {}
            Found::Broken(dir, e) => broken.push((dir, e)),
        }
    }
    Ok((plugins, broken))
}

/// Checks a plugin the registry staged in `staging` (see [`crate::registry::Registry::sync`])
/// as the daemon would run it: loaded with the config's settings and instantiated, with its
/// shadow and the versions it replaces before its `at_seq`.
pub(crate) fn check_staged(
    config: &Config,
    loader: &ComponentLoader,
    staging: &std::path::Path,
) -> anyhow::Result<()> {
    for found in discover_in(config, loader, Wanted::All, vec![staging.to_path_buf()])? {
        match found {
            Found::Plugin(plugin) => {
                let mut version = Some(&*plugin);
                while let Some(v) = version {
                    v.prepare(loader)?;
                    version = v.previous.as_deref();
                }
            }
            Found::Broken(_, e) => return Err(e),
            Found::Disabled | Found::Upcaster(_) | Found::Unwanted(_) => {}
        }
    }
    Ok(())
}

/// The `[plugins.<name>]` sections of `config` that name no plugin in its plugin directories
/// nor among `elsewhere` (e.g. the registry's), each as a sentence with the closest name
/// there is: a typo there would otherwise be ignored, silently.
pub fn unknown_plugin_sections(config: &Config, elsewhere: &[String]) -> Vec<String> {
    let mut known: Vec<String> = elsewhere.to_vec();
    for dir in plugin_dirs(config) {
        for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
            // The name alone, so a manifest broken elsewhere still counts as its plugin.
            let text = std::fs::read_to_string(entry.path().join(MANIFEST_FILE));
            let name = text.ok().and_then(|t| {
                let table: toml::Table = toml::from_str(&t).ok()?;
                table.get("name")?.as_str().map(str::to_string)
            });
            known.extend(name);
        }
    }
    let closest = |name: &str| {
        known
            .iter()
            .map(|k| (strsim::damerau_levenshtein(name, k), k))
            .filter(|(d, _)| *d <= 3)
            .min()
            .map(|(_, k)| format!(" (did you mean `{k}`?)"))
            .unwrap_or_default()
    };
    config
        .plugins
        .keys()
        .filter(|name| !known.contains(name))
        .map(|name| {
            format!(
                "the config's [plugins.{name}] names no plugin in {}{}",
                config.resolve(&config.plugin_dir).display(),
                closest(name)
            )
        })
        .collect()
}

/// Refuses a config whose `[plugins.<name>]` sections name plugins there are not, unless the
/// daemon follows a registry (where plugins come and go with pushes): then each is a warning.
pub(super) fn check_plugin_sections(
    config: &Config,
    follows_registry: bool,
    pushed: &[String],
) -> anyhow::Result<()> {
    let unknown = unknown_plugin_sections(config, pushed);
    if unknown.is_empty() {
        return Ok(());
    }
    if !follows_registry {
        bail!("{}", unknown.join("; "));
    }
    for problem in unknown {
        tracing::warn!("{problem}, nor in the registry: the section has no effect");
    }
    Ok(())
}

/// The upcasters a daemon with `config` runs before the plugins reading `stream` (for tools
/// that fold a stream as the daemon does: replay, verify).
pub fn stream_upcasters(
    config: &Config,
    loader: &ComponentLoader,
    stream: &str,
) -> anyhow::Result<Vec<UpcasterSpec>> {
    let mut upcasters = Vec::new();
    if !config.resolve(&config.plugin_dir).is_dir() {
        return Ok(upcasters); // a config for tools only: no plugins, so no upcasters
    }
    for found in discover_all(config, loader, Wanted::Upcasters)? {
        if let Found::Upcaster(u) = found
            && u.reads(stream)
        {
            upcasters.push(*u);
        }
    }
    Ok(upcasters)
}

/// What a plugin directory holds.
pub(super) enum Found {
    /// A plugin ready to run.
    Plugin(Box<DaemonPlugin>),
    /// A plugin the config disables.
    Disabled,
    /// An upcaster: not run on its own, but before the plugins of its stream.
    Upcaster(Box<UpcasterSpec>),
    /// A plugin of a kind the caller did not ask for (not loaded; it still replaces a
    /// same-named one of an earlier directory).
    Unwanted(String),
    /// A plugin that cannot be loaded: its directory and why.
    Broken(PathBuf, anyhow::Error),
}

/// The directories plugins are read from: the plugin directory, then (when the daemon follows
/// the registry) the registry's, whose plugins replace same-named ones of the first.
pub(super) fn plugin_dirs(config: &Config) -> Vec<PathBuf> {
    let mut dirs = vec![config.resolve(&config.plugin_dir)];
    if config.registry.enabled {
        dirs.push(config.resolve(&config.registry.dir));
    }
    dirs
}

/// Which plugins [`discover_all`] loads (the others' components are not read).
#[derive(Clone, Copy, PartialEq, Eq)]
pub(super) enum Wanted {
    All,
    Upcasters,
}

pub(super) fn discover_all(
    config: &Config,
    loader: &ComponentLoader,
    wanted: Wanted,
) -> anyhow::Result<Vec<Found>> {
    discover_in(config, loader, wanted, plugin_dirs(config))
}

/// [`discover_all`] over `dirs`, a later one's plugins replacing same-named ones of an earlier.
pub(super) fn discover_in(
    config: &Config,
    loader: &ComponentLoader,
    wanted: Wanted,
    dirs: Vec<PathBuf>,
) -> anyhow::Result<Vec<Found>> {
    let mut manifests: Vec<PathBuf> = Vec::new();
    for (i, dir) in dirs.into_iter().enumerate() {
        let entries = match std::fs::read_dir(&dir) {
            Ok(entries) => entries,
            // The registry's directory appears with the first push.
            Err(_) if i > 0 => continue,
            Err(e) => {
                return Err(e)
                    .with_context(|| format!("failed to read plugin directory {}", dir.display()));
            }
        };
        let mut found: Vec<PathBuf> = entries
            .filter_map(|e| e.ok().map(|e| e.path().join(MANIFEST_FILE)))
            .filter(|p| p.exists())
            .collect();
        found.sort();
        manifests.extend(found);
    }
    // The config's [limits] fill in what a manifest does not set.
    let with_defaults = |mut manifest: Manifest| -> anyhow::Result<Manifest> {
        manifest.limits = crate::manifest::Limits::merged(&config.limits, &manifest.limits_set)
            .map_err(|e| anyhow::anyhow!("{}: [limits]: {e}", manifest.dir.display()))?;
        Ok(manifest)
    };
    let load = |path: &PathBuf| -> anyhow::Result<Found> {
        let manifest = with_defaults(Manifest::load(path)?)?;
        let overrides = config.plugins.get(&manifest.name).cloned().unwrap_or_default();
        if !overrides.enabled {
            return Ok(Found::Disabled);
        }
        if wanted == Wanted::Upcasters && manifest.kind != PluginKind::Upcaster {
            return Ok(Found::Unwanted(manifest.name));
        }
        if manifest.kind == PluginKind::Upcaster {
            let component = loader.load(manifest.kind, &manifest.wasm_path())?;
            return Ok(Found::Upcaster(Box::new(UpcasterSpec { manifest, component })));
        }
        let stream = overrides.stream.or(manifest.source.stream.clone()).with_context(|| {
            format!(
                "{}: no [source] stream (and none in the config's [plugins.{}])",
                path.display(),
                manifest.name
            )
        })?;
        let subjects = overrides.subjects.unwrap_or_else(|| manifest.source.subjects.clone());
        let component = loader.load(manifest.kind, &manifest.wasm_path())?;
        let at_seq = read_at_seq(&manifest.dir)?;
        let shadow_manifest = manifest.dir.join(SHADOW_DIR).join(MANIFEST_FILE);
        let shadow = match shadow_manifest.exists() {
            true => {
                let m = with_defaults(Manifest::load(&shadow_manifest)?)?;
                if (m.name.as_str(), m.kind) != (manifest.name.as_str(), manifest.kind) {
                    bail!(
                        "{}: a shadow must be the same plugin ({} {}), not {} {}",
                        shadow_manifest.display(),
                        manifest.kind,
                        manifest.name,
                        m.kind,
                        m.name
                    );
                }
                let component = loader.load(m.kind, &m.wasm_path())?;
                Some(Box::new(DaemonPlugin {
                    manifest: m,
                    implementation: Implementation::Component(component),
                    stream: stream.clone(),
                    subjects: subjects.clone(),
                    start: StartPosition::default(),
                    at_seq: None,
                    shadow: None,
                    previous: None,
                    upcasters: Vec::new(),
                }))
            }
            false => None,
        };
        let start = overrides.start.unwrap_or_default();
        let previous = match at_seq {
            Some(_) => load_previous(config, loader, &manifest, (&stream, &subjects, start))?,
            None => None,
        };
        Ok(Found::Plugin(Box::new(DaemonPlugin {
            manifest,
            implementation: Implementation::Component(component),
            stream,
            subjects,
            start,
            at_seq,
            shadow,
            previous,
            upcasters: Vec::new(),
        })))
    };
    let mut all: Vec<Found> = manifests
        .iter()
        .map(|path| {
            let dir = path.parent().expect("a manifest path has a directory").to_path_buf();
            load(path).unwrap_or_else(|e| Found::Broken(dir, e))
        })
        .collect();
    // A later directory's plugin replaces an earlier one of the same name.
    let mut seen = std::collections::HashSet::new();
    for found in all.iter_mut().rev() {
        let name = match found {
            Found::Plugin(p) => &p.manifest.name,
            Found::Upcaster(u) => &u.manifest.name,
            Found::Unwanted(name) => name,
            _ => continue,
        };
        if !seen.insert(name.clone()) {
            *found = Found::Disabled;
        }
    }
    // Each plugin (and its shadow) gets the upcasters of its stream.
    let upcasters: Vec<UpcasterSpec> = all
        .iter()
        .filter_map(|f| match f {
            Found::Upcaster(u) => Some((**u).clone()),
            _ => None,
        })
        .collect();
    for found in &mut all {
        if let Found::Plugin(p) = found {
            let mine: Vec<UpcasterSpec> =
                upcasters.iter().filter(|u| u.reads(&p.stream)).cloned().collect();
            if let Some(shadow) = &mut p.shadow {
                shadow.upcasters.clone_from(&mine);
            }
            let mut previous = p.previous.as_deref_mut();
            while let Some(v) = previous {
                v.upcasters.clone_from(&mine);
                previous = v.previous.as_deref_mut();
            }
            p.upcasters = mine;
        }
    }
    Ok(all)
}

/// The version in the `previous/` directory beside `current`'s manifest (which has an
/// `at_seq`), if there is one: the same plugin, read from the same source, with the version
/// it replaced in turn when it has an `at_seq` of its own.
pub(super) fn load_previous(
    config: &Config,
    loader: &ComponentLoader,
    current: &Manifest,
    (stream, subjects, start): (&str, &[String], StartPosition),
) -> anyhow::Result<Option<Box<DaemonPlugin>>> {
    let path = current.dir.join(PREVIOUS_DIR).join(MANIFEST_FILE);
    if !path.exists() {
        return Ok(None);
    }
    let mut manifest = Manifest::load(&path)?;
    manifest.limits = crate::manifest::Limits::merged(&config.limits, &manifest.limits_set)
        .map_err(|e| anyhow::anyhow!("{}: [limits]: {e}", manifest.dir.display()))?;
    if (manifest.name.as_str(), manifest.kind) != (current.name.as_str(), current.kind) {
        bail!(
            "{}: the version a promoted one replaces must be the same plugin ({} {}), not {} {}",
            path.display(),
            current.kind,
            current.name,
            manifest.kind,
            manifest.name
        );
    }
    let component = loader.load(manifest.kind, &manifest.wasm_path())?;
    let at_seq = read_at_seq(&manifest.dir)?;
    let previous = match at_seq {
        Some(_) => load_previous(config, loader, &manifest, (stream, subjects, start))?,
        None => None,
    };
    Ok(Some(Box::new(DaemonPlugin {
        manifest,
        implementation: Implementation::Component(component),
        stream: stream.to_string(),
        subjects: subjects.to_vec(),
        start,
        at_seq,
        shadow: None,
        previous,
        upcasters: Vec::new(),
    })))
}
