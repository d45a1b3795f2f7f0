//! The event record as the host holds it, and its JSON form (fixture files, exports).
//!
//! Subjects follow `<domain>.<aggregate>.<id>.<event_type>`; where an event does not say its
//! type or aggregate id, they are read from those subject tokens.

use base64::Engine as _;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::headers::{self, Replay};

/// One event as the host passes it to guests.
#[derive(Debug, Clone, PartialEq)]
pub struct Event {
    /// The stream sequence.
    pub sequence: u64,
    /// The subject it was published on.
    pub subject: String,
    /// The message id (`Nats-Msg-Id`), which is also the event's id.
    pub message_id: String,
    /// The event type.
    pub event_type: String,
    /// The aggregate the event is about.
    pub aggregate_id: String,
    /// The business flow's id, if any.
    pub correlation_id: Option<String>,
    /// The causing event's or command's id, if any.
    pub causation_id: Option<String>,
    /// Event time, from the message.
    pub time: DateTime<Utc>,
    /// The payload's schema version.
    pub schema_version: u32,
    /// Other headers, in order.
    pub headers: Vec<(String, String)>,
    /// The payload bytes.
    pub payload: Vec<u8>,
    /// The payload's media type.
    pub content_type: String,
}

/// The default payload media type.
pub const JSON: &str = "application/json";

/// An RFC 3339 time, as chrono's serde reads it, with an error that names the field and the
/// form expected.
fn rfc3339<'de, D: serde::Deserializer<'de>>(d: D) -> Result<DateTime<Utc>, D::Error> {
    let text = match serde_json::Value::deserialize(d)? {
        serde_json::Value::String(text) => text,
        other => {
            return Err(serde::de::Error::custom(format!(
                "`time` {other} is not an RFC 3339 time such as \"2026-03-01T12:00:00Z\" (a string)"
            )));
        }
    };
    text.parse::<DateTime<chrono::FixedOffset>>().map(|t| t.with_timezone(&Utc)).map_err(|e| {
        serde::de::Error::custom(format!(
            "`time` {text:?} is not an RFC 3339 time such as \"2026-03-01T12:00:00Z\" ({e})"
        ))
    })
}

/// The JSON form of an event, one per line in a fixture file.
///
/// Only `subject` and `time` are required; see `wit/README.md` for the defaults.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EventRecord {
    /// Stream sequence; defaults to the event's position in the file, from 1.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sequence: Option<u64>,
    /// The subject.
    pub subject: String,
    /// Event time, RFC 3339.
    #[serde(deserialize_with = "rfc3339")]
    pub time: DateTime<Utc>,
    /// Defaults to the last subject token.
    #[serde(default, rename = "type", skip_serializing_if = "Option::is_none")]
    pub event_type: Option<String>,
    /// Defaults to the third subject token.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub aggregate_id: Option<String>,
    /// Defaults to `<subject>:<sequence>`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message_id: Option<String>,
    /// Correlation id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub correlation_id: Option<String>,
    /// Causation id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub causation_id: Option<String>,
    /// Defaults to 1.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub schema_version: Option<u32>,
    /// Other headers.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub headers: Vec<(String, String)>,
    /// Every header exactly as the stream stored it, names and values, documented ones
    /// included (what `events export` writes, instead of `headers`): `events import` publishes
    /// these and no other. The fields above are what was read from them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stored_headers: Option<Vec<(String, String)>>,
    /// Defaults to `application/json`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub content_type: Option<String>,
    /// A JSON payload, its bytes exactly as written (a payload's bytes are what signatures
    /// cover).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub payload: Option<Box<serde_json::value::RawValue>>,
    /// A payload that is not JSON, base64-encoded (instead of `payload`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub payload_base64: Option<String>,
}

impl EventRecord {
    /// The event this record describes; `position` (from 1) is its default sequence.
    pub fn into_event(self, position: u64) -> Result<Event, String> {
        let sequence = self.sequence.unwrap_or(position);
        let tokens: Vec<&str> = self.subject.split('.').collect();
        if self.subject.is_empty() || tokens.iter().any(|t| t.is_empty()) {
            return Err(format!("subject {:?} is not a valid NATS subject", self.subject));
        }
        let event_type = match self.event_type {
            Some(t) => t,
            None => subject_event_type(&self.subject).to_string(),
        };
        let aggregate_id = match self.aggregate_id {
            Some(id) => id,
            None => subject_aggregate_id(&self.subject)
                .ok_or_else(|| {
                    format!(
                        "no `aggregate_id`, and subject {:?} does not follow <domain>.<aggregate>.<id>.<event_type>",
                        self.subject
                    )
                })?
                .to_string(),
        };
        let payload = match (self.payload, self.payload_base64) {
            (Some(_), Some(_)) => return Err("give `payload` or `payload_base64`, not both".into()),
            (Some(json), None) => json.get().as_bytes().to_vec(),
            (None, Some(b64)) => base64::engine::general_purpose::STANDARD
                .decode(b64.as_bytes())
                .map_err(|e| format!("`payload_base64` is not base64: {e}"))?,
            (None, None) => Vec::new(),
        };
        let headers = match self.stored_headers {
            Some(_) if !self.headers.is_empty() => {
                return Err("give `headers` or `stored_headers`, not both".into());
            }
            // The event's other headers: those jetfold does not read into a field.
            Some(stored) => {
                let mut other: Vec<_> = stored
                    .into_iter()
                    .filter(|(name, _)| !headers::is_event_header(name))
                    .collect();
                other.sort(); // as the daemon reads them
                other
            }
            None => self.headers,
        };
        Ok(Event {
            sequence,
            message_id: self.message_id.unwrap_or_else(|| format!("{}:{sequence}", self.subject)),
            subject: self.subject,
            event_type,
            aggregate_id,
            correlation_id: self.correlation_id,
            causation_id: self.causation_id,
            time: self.time,
            schema_version: self.schema_version.unwrap_or(1),
            headers,
            payload,
            content_type: self.content_type.unwrap_or_else(|| JSON.into()),
        })
    }

    /// The record of an event, JSON payloads inline and anything else in base64 (a JSON
    /// payload laid out over several lines too, so a record stays one line).
    pub fn from_event(event: &Event) -> EventRecord {
        let json = match std::str::from_utf8(&event.payload) {
            // Inline, the text must come back the same: one line, and no whitespace around it
            // (a JSON reader drops that).
            Ok(text)
                if event.content_type == JSON
                    && !text.contains(['\n', '\r'])
                    && text.trim_matches([' ', '\t']).len() == text.len() =>
            {
                serde_json::value::RawValue::from_string(text.to_string()).ok()
            }
            _ => None,
        };
        let payload_base64 = match (&json, event.payload.is_empty()) {
            (None, false) => Some(base64::engine::general_purpose::STANDARD.encode(&event.payload)),
            _ => None,
        };
        EventRecord {
            sequence: Some(event.sequence),
            subject: event.subject.clone(),
            time: event.time,
            event_type: Some(event.event_type.clone()),
            aggregate_id: Some(event.aggregate_id.clone()),
            message_id: Some(event.message_id.clone()),
            correlation_id: event.correlation_id.clone(),
            causation_id: event.causation_id.clone(),
            schema_version: Some(event.schema_version),
            headers: event.headers.clone(),
            stored_headers: None,
            content_type: (event.content_type != JSON).then(|| event.content_type.clone()),
            payload: json,
            payload_base64,
        }
    }
}

impl PartialEq for EventRecord {
    fn eq(&self, other: &Self) -> bool {
        serde_json::to_value(self).ok() == serde_json::to_value(other).ok()
    }
}

/// What a decoded event is to `plugin` (its other headers hold the replay's).
pub fn event_replay(event: &Event, plugin: &str) -> Replay {
    Replay::of(|name| headers::find(&event.headers, name), plugin)
}

/// The event type a subject names: its last token.
pub fn subject_event_type(subject: &str) -> &str {
    subject.rsplit('.').next().unwrap_or(subject)
}

/// The aggregate id a `<domain>.<aggregate>.<id>.<event_type>` subject names.
pub fn subject_aggregate_id(subject: &str) -> Option<&str> {
    let tokens: Vec<&str> = subject.split('.').collect();
    (tokens.len() >= 4).then(|| tokens[2])
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(json: &str) -> EventRecord {
        serde_json::from_str(json).unwrap()
    }

    #[test]
    fn defaults_come_from_the_subject_and_position() {
        let e = record(r#"{"subject":"infra.resource.r-1.ResourceRegistered","time":"2026-01-02T03:04:05Z","payload":{"a":1}}"#)
            .into_event(7)
            .unwrap();
        assert_eq!(e.sequence, 7);
        assert_eq!(e.event_type, "ResourceRegistered");
        assert_eq!(e.aggregate_id, "r-1");
        assert_eq!(e.message_id, "infra.resource.r-1.ResourceRegistered:7");
        assert_eq!(e.payload, br#"{"a":1}"#);
        assert_eq!(e.content_type, JSON);
        assert_eq!(e.schema_version, 1);
    }

    #[test]
    fn bad_records_are_explained() {
        let e = record(r#"{"subject":"short.subject","time":"2026-01-02T03:04:05Z"}"#)
            .into_event(1)
            .unwrap_err();
        assert!(e.contains("aggregate_id"), "{e}");
        let e = serde_json::from_str::<EventRecord>(r#"{"subject":"a.b.c.D","time":"yesterday"}"#)
            .unwrap_err();
        assert!(
            e.to_string().contains("input contains invalid characters")
                || e.to_string().contains("premature"),
            "{e}"
        );
        assert!(
            serde_json::from_str::<EventRecord>(
                r#"{"subject":"a.b.c.D","time":"2026-01-01T00:00:00Z","paylod":1}"#
            )
            .is_err()
        );
    }

    #[test]
    fn a_record_round_trips() {
        let e = record(r#"{"subject":"x.y.z.T","time":"2026-01-02T03:04:05Z","payload_base64":"AAEC","content_type":"application/octet-stream"}"#)
            .into_event(1)
            .unwrap();
        assert_eq!(e.payload, vec![0, 1, 2]);
        let back = EventRecord::from_event(&e).into_event(99).unwrap();
        assert_eq!(back, e);
    }
}
