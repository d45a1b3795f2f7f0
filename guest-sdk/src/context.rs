//! What one call may do: read its configuration and record effects for the host to perform.

use serde::{Deserialize, Deserializer, Serialize};

use crate::Error;

/// The configuration of a plugin that takes none: accepts only an empty `[config]`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct NoConfig;

impl<'de> Deserialize<'de> for NoConfig {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        use serde::de::Error as _;
        match Option::<serde_json::Map<String, serde_json::Value>>::deserialize(deserializer)? {
            Some(map) if !map.is_empty() => Err(D::Error::custom(format!(
                "this plugin takes no configuration, found keys: {}",
                map.keys().cloned().collect::<Vec<_>>().join(", ")
            ))),
            _ => Ok(NoConfig),
        }
    }
}

/// Whether an emitted message states a fact or asks for an action.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MessageKind {
    /// Something that happened.
    Event,
    /// Something another component is asked to do.
    Command,
}

/// Log severities.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogLevel {
    /// Very detailed tracing.
    Trace,
    /// Debugging detail.
    Debug,
    /// Normal operation.
    Info,
    /// Something unexpected but handled.
    Warn,
    /// Something failed.
    Error,
}

/// A side effect for the host to perform, after checking it against the manifest.
///
/// Rows, patches and payloads are JSON text.
#[derive(Debug, Clone, PartialEq)]
pub enum Effect {
    /// Insert the row, or replace it whole.
    Upsert {
        /// Table name.
        table: String,
        /// Primary key.
        key: String,
        /// The row, a JSON object.
        row: String,
    },
    /// Merge fields into an existing row (JSON merge patch).
    Update {
        /// Table name.
        table: String,
        /// Primary key.
        key: String,
        /// The fields to set, a JSON object.
        patch: String,
    },
    /// Remove a row.
    Delete {
        /// Table name.
        table: String,
        /// Primary key.
        key: String,
    },
    /// Publish an event or a command.
    Emit {
        /// Event or command.
        kind: MessageKind,
        /// Subject to publish on.
        subject: String,
        /// The message type.
        message_type: String,
        /// The payload, a JSON document.
        payload: String,
        /// Extra headers.
        headers: Vec<(String, String)>,
    },
    /// Write a log line under the plugin's name.
    Log {
        /// Severity.
        level: LogLevel,
        /// The text.
        message: String,
    },
}

impl Effect {
    /// The JSON document this effect carries (row, patch or payload), parsed; for tests.
    pub fn document(&self) -> Option<serde_json::Value> {
        match self {
            Effect::Upsert { row: doc, .. }
            | Effect::Update { patch: doc, .. }
            | Effect::Emit { payload: doc, .. } => serde_json::from_str(doc).ok(),
            Effect::Delete { .. } | Effect::Log { .. } => None,
        }
    }
}

/// One call's context: the plugin's configuration and the effects recorded so far.
pub struct Context<'a, C = NoConfig> {
    config: &'a C,
    effects: Vec<Effect>,
    failure: Option<Error>,
}

impl<'a, C> Context<'a, C> {
    /// A context over `config` with no effects recorded; use it in native unit tests.
    pub fn new(config: &'a C) -> Self {
        Context { config, effects: Vec::new(), failure: None }
    }

    /// The plugin's configuration.
    pub fn config(&self) -> &'a C {
        self.config
    }

    /// The effects recorded so far, in order.
    pub fn effects(&self) -> &[Effect] {
        &self.effects
    }

    /// Takes the recorded effects; fails with the first document that could not be encoded.
    pub fn finish(self) -> Result<Vec<Effect>, Error> {
        match self.failure {
            Some(error) => Err(error),
            None => Ok(self.effects),
        }
    }

    /// Insert `row` into `table` under `key`, or replace the row there.
    pub fn upsert(&mut self, table: &str, key: &str, row: &impl Serialize) {
        if let Some(row) = self.encode(row) {
            self.effects.push(Effect::Upsert { table: table.into(), key: key.into(), row });
        }
    }

    /// Merge the fields of `patch` into the row of `table` under `key`, if it exists.
    pub fn update(&mut self, table: &str, key: &str, patch: &impl Serialize) {
        if let Some(patch) = self.encode(patch) {
            self.effects.push(Effect::Update { table: table.into(), key: key.into(), patch });
        }
    }

    /// Delete the row of `table` under `key`.
    pub fn delete(&mut self, table: &str, key: &str) {
        self.effects.push(Effect::Delete { table: table.into(), key: key.into() });
    }

    /// Publish an event of type `event_type` on `subject`.
    pub fn emit(&mut self, subject: &str, event_type: &str, payload: &impl Serialize) {
        self.message(MessageKind::Event, subject, event_type, payload);
    }

    /// Publish a command of type `command_type` on `subject`; the host sets its
    /// correlation id (from the event) and causation id (the event's id).
    pub fn command(&mut self, subject: &str, command_type: &str, payload: &impl Serialize) {
        self.message(MessageKind::Command, subject, command_type, payload);
    }

    /// Write a log line under the plugin's name.
    pub fn log(&mut self, level: LogLevel, message: impl Into<String>) {
        self.effects.push(Effect::Log { level, message: message.into() });
    }

    fn message(
        &mut self,
        kind: MessageKind,
        subject: &str,
        message_type: &str,
        payload: &impl Serialize,
    ) {
        if let Some(payload) = self.encode(payload) {
            self.effects.push(Effect::Emit {
                kind,
                subject: subject.into(),
                message_type: message_type.into(),
                payload,
                headers: Vec::new(),
            });
        }
    }

    fn encode(&mut self, document: &impl Serialize) -> Option<String> {
        match serde_json::to_string(document) {
            Ok(text) => Some(text),
            Err(e) => {
                self.failure.get_or_insert_with(|| {
                    Error::new("encode", format!("cannot encode a document as JSON: {e}"))
                });
                None
            }
        }
    }
}
