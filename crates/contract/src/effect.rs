//! Effects as the host holds them, and the check against the manifest's `[allow]`.
//!
//! A guest's JSON documents stay as validated raw JSON: checked once here, then written
//! verbatim by the executors.

use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

use crate::manifest::{Allow, EffectKind};

/// Whether a message states a fact or asks for an action.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum MessageKind {
    /// An event.
    Event,
    /// A command.
    Command,
}

/// Log severities.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum LogLevel {
    /// Trace.
    Trace,
    /// Debug.
    Debug,
    /// Info.
    Info,
    /// Warn.
    Warn,
    /// Error.
    Error,
}

/// An effect a guest asked for, JSON documents validated.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "effect", rename_all = "kebab-case")]
pub enum Effect {
    /// Insert or replace a row.
    Upsert {
        /// Table.
        table: String,
        /// Primary key.
        key: String,
        /// The row (a JSON object).
        row: Box<RawValue>,
    },
    /// Merge a patch into a row.
    Update {
        /// Table.
        table: String,
        /// Primary key.
        key: String,
        /// The patch (a JSON object).
        patch: Box<RawValue>,
    },
    /// Delete a row.
    Delete {
        /// Table.
        table: String,
        /// Primary key.
        key: String,
    },
    /// Publish an event or a command.
    Emit {
        /// Event or command.
        kind: MessageKind,
        /// Subject.
        subject: String,
        /// Message type.
        #[serde(rename = "type")]
        message_type: String,
        /// Payload (JSON).
        payload: Box<RawValue>,
        /// Extra headers.
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        headers: Vec<(String, String)>,
    },
    /// Write a log line.
    Log {
        /// Severity.
        level: LogLevel,
        /// Text.
        message: String,
    },
}

impl PartialEq for Effect {
    fn eq(&self, other: &Self) -> bool {
        serde_json::to_value(self).ok() == serde_json::to_value(other).ok()
    }
}

/// Why an effect was refused before it was run.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum EffectRejection {
    /// A row, patch or payload is not valid JSON (or a row/patch is not an object).
    #[error("effect #{index} ({kind}): {what} is not a JSON object: {reason}")]
    InvalidDocument {
        /// Position in the guest's list, from 0.
        index: usize,
        /// The effect kind.
        kind: EffectKind,
        /// Which document.
        what: &'static str,
        /// The parser's message.
        reason: String,
    },
    /// The manifest does not allow this kind of effect.
    #[error(
        "effect #{index}: `{kind}` effects are not allowed by the manifest (allow.effects: {declared})"
    )]
    KindNotAllowed {
        /// Position in the guest's list.
        index: usize,
        /// The effect kind.
        kind: EffectKind,
        /// The kinds the manifest allows, for the message.
        declared: String,
    },
    /// The manifest does not allow writing this table.
    #[error(
        "effect #{index} ({kind}): table `{table}` is not declared in the manifest's allow.tables ({declared})"
    )]
    TableNotAllowed {
        /// Position in the guest's list.
        index: usize,
        /// The effect kind.
        kind: EffectKind,
        /// The table.
        table: String,
        /// The tables the manifest declares, for the message (`declared: a, b`).
        declared: String,
    },
    /// The manifest does not allow publishing to this subject.
    #[error(
        "effect #{index} ({kind}): subject `{subject}` is not declared in the manifest's allow.subjects ({declared})"
    )]
    SubjectNotAllowed {
        /// Position in the guest's list.
        index: usize,
        /// The effect kind.
        kind: EffectKind,
        /// The subject.
        subject: String,
        /// The subject patterns the manifest declares, for the message.
        declared: String,
    },
    /// A header of an emitted message that NATS cannot carry, or that the host sets itself.
    #[error("effect #{index} ({kind}): header {name:?}: {reason}")]
    HeaderNotAllowed {
        /// Position in the guest's list.
        index: usize,
        /// The effect kind.
        kind: EffectKind,
        /// The header's name (`Event-Type` for the message type).
        name: String,
        /// Why.
        reason: &'static str,
    },
    /// A row key or document holds a NUL character, which PostgreSQL cannot store.
    #[error("effect #{index} ({kind}): the {what} contains a NUL character (\\u0000)")]
    Nul {
        /// Position in the guest's list.
        index: usize,
        /// The effect kind.
        kind: EffectKind,
        /// `key`, `row`, `patch` or `payload`.
        what: &'static str,
    },
}

/// The names a manifest declares, for a rejection's message: `declared: a, b`, or `it
/// declares none`.
fn declared(names: &[String]) -> String {
    if names.is_empty() {
        "it declares none".into()
    } else {
        format!("declared: {}", names.join(", "))
    }
}

/// Headers the host sets on every emitted message (and `Nats-*`, which steer the server):
/// a plugin's own headers may not name them.
const HOST_HEADERS: [&str; 4] = ["Event-Type", "Correlation-Id", "Causation-Id", "Event-Time"];

/// What [`document`] says of a document that has a NUL character.
const NUL: &str = "a string contains a NUL character (\\u0000), which PostgreSQL cannot store";

/// Walks a JSON document without building it, refusing what the sinks could not store: a
/// number out of the range of a double, a NUL character in a string or member name.
struct Storable;

impl<'de> Deserialize<'de> for Storable {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(Storable)
    }
}

impl<'de> serde::de::Visitor<'de> for Storable {
    type Value = Storable;
    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("a JSON value")
    }
    fn visit_bool<E>(self, _: bool) -> Result<Storable, E> {
        Ok(Storable)
    }
    fn visit_i64<E>(self, _: i64) -> Result<Storable, E> {
        Ok(Storable)
    }
    fn visit_u64<E>(self, _: u64) -> Result<Storable, E> {
        Ok(Storable)
    }
    fn visit_f64<E>(self, _: f64) -> Result<Storable, E> {
        Ok(Storable)
    }
    fn visit_unit<E>(self) -> Result<Storable, E> {
        Ok(Storable)
    }
    fn visit_str<E: serde::de::Error>(self, s: &str) -> Result<Storable, E> {
        if s.contains('\0') { Err(E::custom(NUL)) } else { Ok(Storable) }
    }
    fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut a: A) -> Result<Storable, A::Error> {
        while a.next_element::<Storable>()?.is_some() {}
        Ok(Storable)
    }
    fn visit_map<A: serde::de::MapAccess<'de>>(self, mut a: A) -> Result<Storable, A::Error> {
        while a.next_key::<Storable>()?.is_some() {
            a.next_value::<Storable>()?;
        }
        Ok(Storable)
    }
}

/// Checks a guest's JSON document: valid, storable, and an object when `object`.
fn document(
    index: usize,
    kind: EffectKind,
    what: &'static str,
    text: String,
    object: bool,
) -> Result<Box<RawValue>, EffectRejection> {
    let invalid = |reason: String| EffectRejection::InvalidDocument { index, kind, what, reason };
    if let Err(e) = serde_json::from_str::<Storable>(&text) {
        return Err(if e.to_string().starts_with(NUL) {
            EffectRejection::Nul { index, kind, what }
        } else {
            invalid(e.to_string())
        });
    }
    let raw = RawValue::from_string(text).map_err(|e| invalid(e.to_string()))?;
    if object && !raw.get().trim_start().starts_with('{') {
        return Err(invalid("expected an object".into()));
    }
    Ok(raw)
}

impl Effect {
    /// The kind of this effect, as a manifest names it.
    pub fn kind(&self) -> EffectKind {
        match self {
            Effect::Upsert { .. } => EffectKind::Upsert,
            Effect::Update { .. } => EffectKind::Update,
            Effect::Delete { .. } => EffectKind::Delete,
            Effect::Emit { kind: MessageKind::Event, .. } => EffectKind::Emit,
            Effect::Emit { kind: MessageKind::Command, .. } => EffectKind::Command,
            Effect::Log { .. } => EffectKind::Log,
        }
    }

    /// An upsert of `row` (a JSON object, validated) into `table` at `key`; `index` is the
    /// effect's position in the guest's list, for errors.
    pub fn upsert(
        index: usize,
        table: String,
        key: String,
        row: String,
    ) -> Result<Effect, EffectRejection> {
        Ok(Effect::Upsert {
            row: document(index, EffectKind::Upsert, "row", row, true)?,
            table,
            key,
        })
    }

    /// A merge of `patch` (a JSON object, validated) into the row of `table` at `key`.
    pub fn update(
        index: usize,
        table: String,
        key: String,
        patch: String,
    ) -> Result<Effect, EffectRejection> {
        Ok(Effect::Update {
            patch: document(index, EffectKind::Update, "patch", patch, true)?,
            table,
            key,
        })
    }

    /// A message to publish (an emitted event, or a command), its JSON payload validated.
    pub fn message(
        index: usize,
        kind: MessageKind,
        subject: String,
        message_type: String,
        payload: String,
        headers: Vec<(String, String)>,
    ) -> Result<Effect, EffectRejection> {
        let effect_kind =
            if kind == MessageKind::Event { EffectKind::Emit } else { EffectKind::Command };
        let payload = document(index, effect_kind, "payload", payload, false)?;
        Ok(Effect::Emit { kind, subject, message_type, payload, headers })
    }

    /// Checks this effect against the manifest's `[allow]`.
    pub fn check(&self, index: usize, allow: &Allow) -> Result<(), EffectRejection> {
        let kind = self.kind();
        if !allow.effects.is_empty() && !allow.effects.contains(&kind) {
            let kinds: Vec<String> = allow.effects.iter().map(ToString::to_string).collect();
            return Err(EffectRejection::KindNotAllowed {
                index,
                kind,
                declared: kinds.join(", "),
            });
        }
        match self {
            Effect::Upsert { table, key, .. }
            | Effect::Update { table, key, .. }
            | Effect::Delete { table, key } => {
                if !allow.tables.iter().any(|t| t == table) {
                    return Err(EffectRejection::TableNotAllowed {
                        index,
                        kind,
                        table: table.clone(),
                        declared: declared(&allow.tables),
                    });
                }
                if key.contains('\0') {
                    return Err(EffectRejection::Nul { index, kind, what: "key" });
                }
            }
            Effect::Emit { subject, message_type, headers, .. } => {
                let header = |name: &str, reason| EffectRejection::HeaderNotAllowed {
                    index,
                    kind,
                    name: name.to_string(),
                    reason,
                };
                if crate::headers::check("Event-Type", message_type).is_err() {
                    return Err(header(
                        "Event-Type",
                        "the message type is not a valid header value",
                    ));
                }
                for (name, value) in headers {
                    if let Err(why) = crate::headers::check(name, value) {
                        return Err(header(name, why));
                    }
                    let starts = |prefix: &str| {
                        name.get(..prefix.len()).is_some_and(|p| p.eq_ignore_ascii_case(prefix))
                    };
                    if starts("nats-")
                        || starts("jetfold-")
                        || HOST_HEADERS.iter().any(|h| h.eq_ignore_ascii_case(name))
                    {
                        return Err(header(name, "set by the host, not by plugins"));
                    }
                }
                let valid = !subject.is_empty()
                    && subject.split('.').all(|t| {
                        !t.is_empty()
                            && t != "*"
                            && t != ">"
                            && !t.contains(|c: char| c.is_whitespace() || c.is_control())
                    });
                if !valid || !allow.subjects.iter().any(|pattern| subject_matches(pattern, subject))
                {
                    return Err(EffectRejection::SubjectNotAllowed {
                        index,
                        kind,
                        subject: subject.clone(),
                        declared: declared(&allow.subjects),
                    });
                }
            }
            Effect::Log { .. } => {}
        }
        Ok(())
    }
}

/// Whether a concrete `subject` matches a NATS subject `pattern` (`*` one token, `>` the rest).
pub fn subject_matches(pattern: &str, subject: &str) -> bool {
    let mut subject_tokens = subject.split('.');
    for p in pattern.split('.') {
        match (p, subject_tokens.next()) {
            (">", Some(_)) => return true,
            ("*", Some(_)) => {}
            (p, Some(s)) if p == s => {}
            _ => return false,
        }
    }
    subject_tokens.next().is_none()
}

/// Converts (with `convert`, which validates each effect's JSON) and checks a guest's list
/// of effects against `allow`; the first refusal rejects the whole list.
pub fn accept_all<T>(
    guest: Vec<T>,
    allow: &Allow,
    convert: impl Fn(usize, T) -> Result<Effect, EffectRejection>,
) -> Result<Vec<Effect>, EffectRejection> {
    guest
        .into_iter()
        .enumerate()
        .map(|(i, e)| {
            let effect = convert(i, e)?;
            effect.check(i, allow)?;
            Ok(effect)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subjects_match_nats_wildcards() {
        assert!(subject_matches("a.b.c", "a.b.c"));
        assert!(subject_matches("a.*.c", "a.x.c"));
        assert!(subject_matches("a.>", "a.x.y.z"));
        assert!(!subject_matches("a.>", "a"));
        assert!(!subject_matches("a.*", "a.x.y"));
        assert!(!subject_matches("a.b", "a.b.c"));
        assert!(!subject_matches("a.b.c", "a.b"));
    }
}
