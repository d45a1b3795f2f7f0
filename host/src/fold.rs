//! The offline runner behind `jetfold test`: folds a fixture file through a plugin, keyed state
//! as the daemon keeps it, and reports every step. The report is also the golden-file format.

use std::{
    collections::BTreeMap,
    fmt,
    path::{Path, PathBuf},
};

use base64::Engine as _;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::bindings::types;
use crate::component::{ComponentLoader, LoadedComponent};
use crate::effect::{self, Effect};
use crate::event::{Event, EventRecord};
use crate::guest::{GuestInstance, StepError};
use crate::manifest::{Manifest, PluginKind};

/// A loaded plugin: its manifest, its checked component and a live instance.
pub struct Plugin {
    /// The manifest.
    pub manifest: Manifest,
    /// The component.
    pub component: LoadedComponent,
    /// The instance.
    pub guest: GuestInstance,
}

impl Plugin {
    /// Reads the manifest at `path` (a file or a plugin directory), loads and initialises the
    /// plugin. Errors name the file at fault.
    pub fn open(path: &Path, loader: &ComponentLoader) -> anyhow::Result<Plugin> {
        Self::open_with_defaults(path, loader, &toml::Table::new())
    }

    /// Like [`Plugin::open`], with `limits` (a config's `[limits]`) for what the manifest's
    /// own `[limits]` does not set, as a daemon runs it.
    pub fn open_with_defaults(
        path: &Path,
        loader: &ComponentLoader,
        limits: &toml::Table,
    ) -> anyhow::Result<Plugin> {
        let mut manifest = Manifest::load(path)?;
        manifest.limits = crate::manifest::Limits::merged(limits, &manifest.limits_set)
            .map_err(|e| anyhow::anyhow!("[limits]: {e}"))?;
        let wasm = manifest.wasm_path();
        let component = loader.load(manifest.kind, &wasm).map_err(|e| {
            if matches!(&e, crate::component::LoadError::Read { source, .. } if source.kind() == std::io::ErrorKind::NotFound)
                && manifest.build.is_some()
            {
                anyhow::anyhow!("{e}\n  build it first: jetfold build {}", manifest.dir.display())
            } else {
                anyhow::Error::new(e)
            }
        })?;
        let guest = GuestInstance::new(
            &manifest.name,
            &component,
            loader.engine(),
            manifest.limits.clone(),
            manifest.config_json(),
        )
        .map_err(|e| {
            anyhow::anyhow!("plugin `{}` ({}) failed to start: {e}", manifest.name, wasm.display())
        })?;
        Ok(Plugin { manifest, component, guest })
    }
}

/// One line of a fixture file: an event, or a query against the states so far.
#[derive(Debug, Clone)]
pub enum FixtureLine {
    /// An event to fold.
    Event(Event),
    /// A read-model request.
    Query {
        /// The request document.
        query: Value,
        /// Only this key's state, or all states.
        key: Option<String>,
    },
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct QueryLine {
    query: Value,
    #[serde(default)]
    key: Option<String>,
}

/// A fixture file that cannot be read.
#[derive(Debug, thiserror::Error)]
#[error("{}:{line}: {message}", path.display())]
pub struct FixtureError {
    /// The file.
    pub path: PathBuf,
    /// The line, from 1 (0: the whole file).
    pub line: usize,
    /// What is wrong.
    pub message: String,
}

/// Reads a JSONL fixture file: one event (or query) per line; blank lines and lines starting
/// with `//` are skipped.
pub fn read_fixture(path: &Path) -> Result<Vec<(usize, FixtureLine)>, FixtureError> {
    let text = std::fs::read_to_string(path).map_err(|e| FixtureError {
        path: path.to_path_buf(),
        line: 0,
        message: format!("cannot read: {e}"),
    })?;
    let mut lines = Vec::new();
    let mut position = 0;
    for (i, raw) in text.lines().enumerate() {
        let line_no = i + 1;
        let err = |message| FixtureError { path: path.to_path_buf(), line: line_no, message };
        if let Some(line) = parse_fixture_line(raw, &mut position).map_err(err)? {
            lines.push((line_no, line));
        }
    }
    Ok(lines)
}

/// One line of a fixture file as written: an event record or a query.
pub enum FixtureRecord {
    /// An event, as the file describes it.
    Event(Box<EventRecord>),
    /// A query line.
    Query {
        /// The request.
        query: Value,
        /// Only this key's state, or all states.
        key: Option<String>,
    },
}

/// One line of a fixture file, unresolved: `None` for a blank line or a `//` comment.
pub fn parse_fixture_record(raw: &str) -> Result<Option<FixtureRecord>, String> {
    let trimmed = raw.trim();
    if trimmed.is_empty() || trimmed.starts_with("//") {
        return Ok(None);
    }
    // A query line has a `query` field; found without reading any value as a number (a
    // payload's numbers may be of any size, which a JSON value cannot hold).
    type Fields<'a> = std::collections::BTreeMap<String, &'a serde_json::value::RawValue>;
    let is_query = match serde_json::from_str::<Fields<'_>>(trimmed) {
        Ok(fields) => fields.contains_key("query"),
        Err(_) => {
            // Not an object: say whether it is JSON at all.
            serde_json::from_str::<serde::de::IgnoredAny>(trimmed)
                .map_err(|e| format!("not JSON: {e}"))?;
            false
        }
    };
    if is_query {
        let q: QueryLine =
            serde_json::from_str(trimmed).map_err(|e| format!("not a query line: {e}"))?;
        return Ok(Some(FixtureRecord::Query { query: q.query, key: q.key }));
    }
    // From the text: a payload keeps its bytes.
    let record: EventRecord =
        serde_json::from_str(trimmed).map_err(|e| format!("not an event: {e}"))?;
    Ok(Some(FixtureRecord::Event(Box::new(record))))
}

/// One line of a fixture file: `None` for a blank line or a `//` comment; `position` counts
/// the events so far (an event's default sequence).
pub fn parse_fixture_line(raw: &str, position: &mut u64) -> Result<Option<FixtureLine>, String> {
    Ok(match parse_fixture_record(raw)? {
        None => None,
        Some(FixtureRecord::Query { query, key }) => Some(FixtureLine::Query { query, key }),
        Some(FixtureRecord::Event(record)) => {
            *position += 1;
            let event = record.into_event(*position).map_err(|m| format!("not an event: {m}"))?;
            Some(FixtureLine::Event(event))
        }
    })
}

/// One step of a fold.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "step", rename_all = "kebab-case")]
pub enum Step {
    /// An event went through the plugin.
    Event {
        /// Line in the fixture file.
        line: usize,
        /// Stream sequence.
        sequence: u64,
        /// Event type.
        #[serde(rename = "type")]
        event_type: String,
        /// State key.
        key: String,
        /// The effects (projection) or decisions (policy), if the event was accepted.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        effects: Option<Vec<Effect>>,
        /// The upcast event (upcaster).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        upcast: Option<Box<EventRecord>>,
        /// Why the event was rejected; its key's state is unchanged.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        error: Option<StepError>,
    },
    /// A query was answered.
    Query {
        /// Line in the fixture file (0: from the command line).
        line: usize,
        /// The request.
        request: Value,
        /// The key whose state was asked, if one.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        key: Option<String>,
        /// The answer.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        response: Option<Value>,
        /// Why there is no answer.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        error: Option<StepError>,
    },
}

impl Step {
    /// The failure of this step, if any.
    pub fn error(&self) -> Option<&StepError> {
        match self {
            Step::Event { error, .. } | Step::Query { error, .. } => error.as_ref(),
        }
    }
}

/// Everything a fold did: the golden-file format.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Report {
    /// The plugin's name.
    pub plugin: String,
    /// Its kind.
    pub kind: PluginKind,
    /// Each event and query, in order.
    pub steps: Vec<Step>,
    /// The final state of every key (JSON where the state is JSON, else `{"base64": …}`).
    pub state: BTreeMap<String, Value>,
}

impl Report {
    /// How many steps failed.
    pub fn failures(&self) -> usize {
        self.steps.iter().filter(|s| s.error().is_some()).count()
    }

    /// The report as the golden file stores it: pretty JSON with a final newline.
    pub fn to_golden(&self) -> String {
        // Through a `Value`, so raw JSON documents (rows, payloads) are laid out like the rest.
        let value = serde_json::to_value(self).expect("a report is always JSON");
        let mut text = serde_json::to_string_pretty(&value).expect("a value is always JSON");
        text.push('\n');
        text
    }
}

/// A fold in progress: a plugin and the state of every key it has seen.
pub struct Fold {
    plugin: Plugin,
    upcasters: crate::upcast::UpcastChain,
    states: BTreeMap<String, Vec<u8>>,
    steps: Vec<Step>,
}

impl Fold {
    /// Starts a fold with no state.
    pub fn new(plugin: Plugin) -> Self {
        Fold { plugin, upcasters: Default::default(), states: BTreeMap::new(), steps: Vec::new() }
    }

    /// Runs every event through `upcasters` first, as a daemon does with its stream's.
    pub fn with_upcasters(mut self, upcasters: crate::upcast::UpcastChain) -> Self {
        self.upcasters = upcasters;
        self
    }

    /// The plugin being folded.
    pub fn plugin(&self) -> &Plugin {
        &self.plugin
    }

    /// The state key of `event` under the manifest's `[state]` rule.
    pub fn key_of(&self, event: &Event) -> String {
        self.plugin.manifest.state_key(event)
    }

    /// Folds one event; a failure leaves the key's state as it was.
    pub fn feed(&mut self, line: usize, event: &Event) -> &Step {
        let key = self.key_of(event);
        let mut effects = None;
        let mut upcast = None;
        let mut error = None;
        let raised = self.upcasters.raise(event);
        let event = raised.as_deref().unwrap_or(event);
        if let Err(e) = &raised {
            error = Some(e.clone());
        } else if self.plugin.manifest.kind == PluginKind::Upcaster {
            match self.plugin.guest.upcast(event) {
                Ok(out) => upcast = Some(Box::new(EventRecord::from_event(&out))),
                Err(e) => error = Some(e.into()),
            }
        } else {
            let state = self.states.get(&key);
            match checked_step(&mut self.plugin.guest, &self.plugin.manifest, state, event) {
                Ok((new_state, accepted)) => {
                    self.states.insert(key.clone(), new_state);
                    effects = Some(accepted);
                }
                Err(e) => error = Some(e),
            }
        }
        self.steps.push(Step::Event {
            line,
            sequence: event.sequence,
            event_type: event.event_type.clone(),
            key,
            effects,
            upcast,
            error,
        });
        self.steps.last().expect("just pushed")
    }

    /// Asks the projection `request` over one key's state or all of them.
    pub fn query(&mut self, line: usize, request: Value, key: Option<String>) -> &Step {
        let states: Vec<types::KeyedState> = self
            .states
            .iter()
            .filter(|(k, _)| key.as_deref().is_none_or(|wanted| wanted == k.as_str()))
            .map(|(k, s)| types::KeyedState { key: k.clone(), state: s.clone() })
            .collect();
        let (response, error) = if self.plugin.manifest.kind != PluginKind::Projection {
            let message = format!(
                "only projections answer queries; this plugin is a {}",
                self.plugin.manifest.kind
            );
            (
                None,
                Some(StepError {
                    kind: "invalid-query".into(),
                    code: None,
                    message,
                    backtrace: None,
                }),
            )
        } else {
            match self.plugin.guest.query(&states, &request.to_string()) {
                Ok(text) => match serde_json::from_str(&text) {
                    Ok(v) => (Some(v), None),
                    Err(e) => {
                        let message = format!("query returned text that is not JSON: {e}");
                        (
                            None,
                            Some(StepError {
                                kind: "invalid-output".into(),
                                code: None,
                                message,
                                backtrace: None,
                            }),
                        )
                    }
                },
                Err(e) => (None, Some(e.into())),
            }
        };
        self.steps.push(Step::Query { line, request, key, response, error });
        self.steps.last().expect("just pushed")
    }

    /// Ends the fold.
    pub fn finish(self) -> Report {
        let state = self.states.into_iter().map(|(k, bytes)| (k, state_document(&bytes))).collect();
        Report {
            plugin: self.plugin.manifest.name.clone(),
            kind: self.plugin.manifest.kind,
            steps: self.steps,
            state,
        }
    }
}

impl From<effect::EffectRejection> for StepError {
    fn from(rejection: effect::EffectRejection) -> Self {
        StepError {
            kind: "rejected-effect".into(),
            code: None,
            message: rejection.to_string(),
            backtrace: None,
        }
    }
}

fn limit(kind: &str, message: String) -> StepError {
    StepError { kind: kind.into(), code: None, message, backtrace: None }
}

/// Refuses an event whose payload is over `limits.max-payload-bytes`, before any guest call.
pub fn payload_check(limits: &crate::manifest::Limits, event: &Event) -> Result<(), StepError> {
    if event.payload.len() > limits.max_payload_bytes {
        return Err(limit(
            "payload-too-large",
            format!(
                "the payload has {} bytes, more than limits.max-payload-bytes ({}); the plugin was not called",
                event.payload.len(),
                limits.max_payload_bytes
            ),
        ));
    }
    Ok(())
}

/// Refuses a call's output over `limits.max-state-bytes` or `limits.max-effects`.
pub fn output_check(
    limits: &crate::manifest::Limits,
    state_len: usize,
    effects: usize,
) -> Result<(), StepError> {
    if state_len > limits.max_state_bytes {
        return Err(limit(
            "state-too-large",
            format!(
                "the new state has {state_len} bytes, more than limits.max-state-bytes ({})",
                limits.max_state_bytes
            ),
        ));
    }
    if effects > limits.max_effects {
        return Err(limit(
            "too-many-effects",
            format!(
                "the call returned {effects} effects, more than limits.max-effects ({})",
                limits.max_effects
            ),
        ));
    }
    Ok(())
}

/// One event through a projection's `apply` or a policy's `decide`, its effects checked
/// against the manifest: the new state and the accepted effects, or why the event is
/// rejected. The offline runner and the daemon both go through here, so they agree.
pub fn checked_step(
    guest: &mut GuestInstance,
    manifest: &Manifest,
    state: Option<&Vec<u8>>,
    event: &Event,
) -> Result<(Vec<u8>, Vec<Effect>), StepError> {
    let limits = &manifest.limits;
    payload_check(limits, event)?;
    match manifest.kind {
        PluginKind::Projection => {
            let (new_state, effects) = guest.apply(state, event)?;
            output_check(limits, new_state.len(), effects.len())?;
            Ok((new_state, effect::accept(effects, &manifest.allow)?))
        }
        PluginKind::Policy => {
            let (new_state, decisions) = guest.decide(state, event)?;
            output_check(limits, new_state.len(), decisions.len())?;
            Ok((new_state, effect::accept_decisions(decisions, &manifest.allow)?))
        }
        PluginKind::Upcaster => Err(StepError {
            kind: "invalid-call".into(),
            code: None,
            message: "an upcaster neither applies nor decides".into(),
            backtrace: None,
        }),
    }
}

/// A state as JSON when it is JSON, else as `{"base64": …}`.
pub fn state_document(bytes: &[u8]) -> Value {
    serde_json::from_slice(bytes)
        .unwrap_or_else(|_| serde_json::json!({ "base64": base64::engine::general_purpose::STANDARD.encode(bytes) }))
}

/// How a report names an event's step: `line 3 · #3 StatusChanged [r-2]`.
pub fn event_title(line: usize, sequence: u64, event_type: &str, key: &str) -> String {
    format!("line {line} · #{sequence} {event_type} [{key}]")
}

/// How a report names a query: `line 4 · query [r-1] {…}` for a fixture line, `--query {…}`
/// for one from the command line (line 0).
pub fn query_title(line: usize, key: Option<&str>, request: &Value) -> String {
    let scope = key.map(|k| format!(" [{k}]")).unwrap_or_default();
    match line {
        0 => format!("--query{scope} {request}"),
        _ => format!("line {line} · query{scope} {request}"),
    }
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for step in &self.steps {
            match step {
                Step::Event { line, sequence, event_type, key, effects, upcast, error } => {
                    f.write_str(&event_title(*line, *sequence, event_type, key))?;
                    if let Some(e) = error {
                        match &e.code {
                            Some(code) if e.message.is_empty() => writeln!(f, " ✗ {code}")?,
                            Some(code) => writeln!(f, " ✗ {code}: {}", e.message)?,
                            None => writeln!(f, " ✗ {}: {}", e.kind, e.message)?,
                        }
                        if let Some(bt) = &e.backtrace {
                            for frame in bt.lines().take(12) {
                                writeln!(f, "      {frame}")?;
                            }
                        }
                    } else if let Some(effects) = effects {
                        writeln!(
                            f,
                            " → {} effect{}",
                            effects.len(),
                            if effects.len() == 1 { "" } else { "s" }
                        )?;
                        for effect in effects {
                            writeln!(f, "    {}", describe(effect))?;
                        }
                    } else if let Some(up) = upcast {
                        writeln!(f, " → v{}", up.schema_version.unwrap_or(1))?;
                        writeln!(f, "    {}", serde_json::to_string(up).unwrap_or_default())?;
                    }
                }
                Step::Query { line, request, key, response, error } => {
                    f.write_str(&query_title(*line, key.as_deref(), request))?;
                    match (response, error) {
                        (_, Some(e)) => writeln!(f, " ✗ {}", e.message)?,
                        (Some(r), None) => writeln!(f, "\n    = {r}")?,
                        (None, None) => writeln!(f)?,
                    }
                }
            }
        }
        if self.kind == PluginKind::Upcaster {
            return Ok(());
        }
        writeln!(
            f,
            "final state ({} key{}):",
            self.state.len(),
            if self.state.len() == 1 { "" } else { "s" }
        )?;
        for (key, state) in &self.state {
            writeln!(f, "  {key}: {state}")?;
        }
        Ok(())
    }
}

fn describe(effect: &Effect) -> String {
    match effect {
        Effect::Upsert { table, key, row } => format!("upsert {table}[{key}] {}", row.get()),
        Effect::Update { table, key, patch } => format!("update {table}[{key}] {}", patch.get()),
        Effect::Delete { table, key } => format!("delete {table}[{key}]"),
        Effect::Emit { kind, subject, message_type, payload, .. } => {
            let what = match kind {
                crate::effect::MessageKind::Event => "emit",
                crate::effect::MessageKind::Command => "command",
            };
            format!("{what} {message_type} → {subject} {}", payload.get())
        }
        Effect::Log { level, message } => format!("log {level:?}: {message}"),
    }
}
