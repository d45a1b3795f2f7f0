//! The event a message stored in a stream makes.
//!
//! Headers, in order of precedence over the documented JSON payload fields and the subject
//! (`<domain>.<aggregate>.<id>.<event_type>`):
//!
//! | field | header | JSON field | else |
//! | --- | --- | --- | --- |
//! | message id | `Nats-Msg-Id` | | `<stream>:<seq>` |
//! | event type | `Event-Type` | `type` | last subject token |
//! | aggregate id | `Aggregate-Id` | `aggregate_id` | third subject token, else the subject |
//! | correlation id | `Correlation-Id` | `correlation_id` | none |
//! | causation id | `Causation-Id` | `causation_id` | none |
//! | schema version | `Schema-Version` | `schema_version` | 1 |
//! | event time | `Event-Time` (RFC 3339) | `time` | the stream's timestamp of the message |
//! | content type | `Content-Type` | | `application/json` |
//!
//! A dead letter replayed by `jetfold dlq replay` has the message id of the event it is a copy
//! of: `Jetfold-Replay-Msg-Id`, else the `<stream>:<seq>` of `Jetfold-Replay-Of`.

use chrono::{DateTime, Utc};
use serde::Deserialize;

use crate::event::{Event, JSON, subject_aggregate_id, subject_event_type};
use crate::headers::{self, Known};

#[derive(Deserialize, Default)]
struct PayloadFields {
    #[serde(default, rename = "type")]
    event_type: Option<String>,
    #[serde(default)]
    aggregate_id: Option<String>,
    #[serde(default)]
    correlation_id: Option<String>,
    #[serde(default)]
    causation_id: Option<String>,
    #[serde(default)]
    schema_version: Option<u32>,
    #[serde(default)]
    time: Option<DateTime<Utc>>,
}

/// Where a message sits in its stream, as JetStream's reply subject says.
#[derive(Debug, Clone, Copy)]
pub struct Position<'a> {
    /// The stream.
    pub stream: &'a str,
    /// The stream sequence.
    pub sequence: u64,
    /// When the server stored it.
    pub published: DateTime<Utc>,
}

/// The event of a message (its subject, its headers in order, its payload) stored at `at`: the
/// headers jetfold reads (ids, type, time, schema version, content type), then the payload's
/// documented JSON fields where a header is missing, then the subject's tokens.
pub fn decode<'h>(
    subject: &str,
    headers: impl IntoIterator<Item = (&'h str, &'h str)>,
    payload: &[u8],
    at: Position<'_>,
) -> anyhow::Result<Event> {
    let mut known = Known::default();
    let mut other_headers = Vec::new();
    for (name, value) in headers {
        match known.slot(name) {
            // The first value of a header jetfold reads.
            Some(slot) => {
                if slot.is_none() {
                    *slot = Some(value.to_string());
                }
            }
            None => other_headers.push((name.to_string(), value.to_string())),
        }
    }
    other_headers.sort();
    let content_type = known.content_type.take().unwrap_or_else(|| JSON.into());
    // The documented JSON fields are read only when a header is missing, and only from JSON.
    let fields = if known.needs_payload() && content_type == JSON {
        serde_json::from_slice::<PayloadFields>(payload).unwrap_or_default()
    } else {
        PayloadFields::default()
    };
    let subject = subject.to_string();
    let schema_version = match known.schema_version {
        Some(v) => v
            .trim()
            .parse()
            .map_err(|_| anyhow::anyhow!("header Schema-Version {v:?} is not a number"))?,
        None => fields.schema_version.unwrap_or(1),
    };
    let time = match known.event_time {
        Some(t) => DateTime::parse_from_rfc3339(t.trim())
            .map_err(|e| anyhow::anyhow!("header Event-Time {t:?} is not RFC 3339: {e}"))?
            .with_timezone(&Utc),
        None => fields.time.unwrap_or(at.published),
    };
    // A replayed dead letter is the event it is a copy of, with the id that event had.
    let message_id = match headers::find(&other_headers, headers::REPLAY_OF) {
        Some(of) => headers::find(&other_headers, headers::REPLAY_MSG_ID).unwrap_or(of).to_string(),
        None => known.msg_id.unwrap_or_else(|| format!("{}:{}", at.stream, at.sequence)),
    };
    Ok(Event {
        sequence: at.sequence,
        message_id,
        event_type: known
            .event_type
            .or(fields.event_type)
            .unwrap_or_else(|| subject_event_type(&subject).to_string()),
        aggregate_id: known
            .aggregate_id
            .or(fields.aggregate_id)
            .unwrap_or_else(|| subject_aggregate_id(&subject).unwrap_or(&subject).to_string()),
        correlation_id: known.correlation_id.or(fields.correlation_id),
        causation_id: known.causation_id.or(fields.causation_id),
        time,
        schema_version,
        headers: other_headers,
        payload: payload.to_vec(),
        content_type,
        subject,
    })
}
