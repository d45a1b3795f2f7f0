//! The JetStream source: one durable pull consumer per plugin, and the event record built
//! from each message.
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

use std::time::Duration;

use async_nats::jetstream::{self, consumer::pull, message::Message};
use chrono::{DateTime, Utc};
use serde::Deserialize;

use crate::config::StartPosition;
use crate::event::{Event, JSON, subject_aggregate_id, subject_event_type};

/// Headers jetfold reads and writes.
pub mod headers {
    /// The message id JetStream deduplicates on.
    pub const MSG_ID: &str = "Nats-Msg-Id";
    /// Event (or command) type.
    pub const EVENT_TYPE: &str = "Event-Type";
    /// Aggregate id.
    pub const AGGREGATE_ID: &str = "Aggregate-Id";
    /// Correlation id.
    pub const CORRELATION_ID: &str = "Correlation-Id";
    /// Causation id.
    pub const CAUSATION_ID: &str = "Causation-Id";
    /// Schema version.
    pub const SCHEMA_VERSION: &str = "Schema-Version";
    /// Event time, RFC 3339.
    pub const EVENT_TIME: &str = "Event-Time";
    /// Payload media type.
    pub const CONTENT_TYPE: &str = "Content-Type";
    /// The headers that fill event fields and fall back to JSON payload fields; together with
    /// `MSG_ID` and `CONTENT_TYPE`, the headers an event does not repeat in its `headers`.
    pub const WITH_JSON_FALLBACK: [&str; 6] =
        [EVENT_TYPE, AGGREGATE_ID, CORRELATION_ID, CAUSATION_ID, SCHEMA_VERSION, EVENT_TIME];
    /// Provenance of emitted messages: plugin name.
    pub const PLUGIN: &str = "Jetfold-Plugin";
    /// Provenance: plugin digest.
    pub const PLUGIN_DIGEST: &str = "Jetfold-Plugin-Digest";
    /// Provenance: the source event's stream sequence.
    pub const SOURCE_SEQ: &str = "Jetfold-Source-Seq";
    /// `event` or `command`.
    pub const KIND: &str = "Jetfold-Kind";
}

/// The durable consumer name of a plugin.
pub fn consumer_name(plugin: &str) -> String {
    format!("jetfold-{plugin}")
}

/// (Re)creates the plugin's durable pull consumer on `stream`, positioned just after the
/// committed checkpoint (`resume_after`), or at `start` for a plugin that never committed.
///
/// The checkpoint in the sink is the truth about what has been applied, so the consumer is
/// recreated on every start: messages a killed predecessor had fetched but not acked would
/// otherwise be redelivered only after newer ones, and skipping by checkpoint would then
/// drop them.
#[allow(clippy::too_many_arguments)]
pub async fn consumer(
    js: &jetstream::Context,
    stream: &str,
    plugin: &str,
    subjects: &[String],
    start: StartPosition,
    resume_after: Option<u64>,
    ack_wait: Duration,
    max_ack_pending: usize,
) -> anyhow::Result<jetstream::consumer::PullConsumer> {
    let stream_handle = js.get_stream(stream).await.map_err(|e| {
        anyhow::anyhow!("stream `{stream}` (source of plugin `{plugin}`) cannot be opened: {e}; create it or fix [source] stream")
    })?;
    let name = consumer_name(plugin);
    let config = pull::Config {
        durable_name: Some(name.clone()),
        description: Some(format!("jetfold plugin {plugin}")),
        // One ack per committed batch: acking its last message acks the batch.
        ack_policy: jetstream::consumer::AckPolicy::All,
        ack_wait,
        max_ack_pending: max_ack_pending as i64,
        deliver_policy: match (resume_after, start) {
            (Some(seq), _) => {
                jetstream::consumer::DeliverPolicy::ByStartSequence { start_sequence: seq + 1 }
            }
            (None, StartPosition::All) => jetstream::consumer::DeliverPolicy::All,
            (None, StartPosition::New) => jetstream::consumer::DeliverPolicy::New,
        },
        filter_subjects: subjects.to_vec(),
        ..Default::default()
    };
    match stream_handle.delete_consumer(&name).await {
        Ok(_) => {}
        Err(e) if e.to_string().contains("not found") => {}
        Err(e) => anyhow::bail!("cannot reset consumer `{name}` on stream `{stream}`: {e}"),
    }
    let consumer = stream_handle.create_consumer(config).await.map_err(|e| {
        anyhow::anyhow!("cannot create consumer `{name}` on stream `{stream}`: {e}")
    })?;
    Ok(consumer)
}

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

/// Builds the event record of a JetStream message.
pub fn event_from_message(message: &Message) -> anyhow::Result<Event> {
    let info =
        message.info().map_err(|e| anyhow::anyhow!("message without JetStream metadata: {e}"))?;
    let header = |name: &str| {
        message.headers.as_ref().and_then(|h| h.get(name)).map(|v| v.as_str().to_string())
    };
    let content_type = header(headers::CONTENT_TYPE).unwrap_or_else(|| JSON.into());
    let needs_payload = headers::WITH_JSON_FALLBACK.iter().any(|h| header(h).is_none());
    // The documented JSON fields are read only when a header is missing, and only from JSON.
    let fields = if needs_payload && content_type == JSON {
        serde_json::from_slice::<PayloadFields>(&message.payload).unwrap_or_default()
    } else {
        PayloadFields::default()
    };
    let subject = message.subject.to_string();
    let schema_version = match header(headers::SCHEMA_VERSION) {
        Some(v) => v
            .trim()
            .parse()
            .map_err(|_| anyhow::anyhow!("header Schema-Version {v:?} is not a number"))?,
        None => fields.schema_version.unwrap_or(1),
    };
    let time = match header(headers::EVENT_TIME) {
        Some(t) => DateTime::parse_from_rfc3339(t.trim())
            .map_err(|e| anyhow::anyhow!("header Event-Time {t:?} is not RFC 3339: {e}"))?
            .with_timezone(&Utc),
        None => fields.time.unwrap_or(info.published),
    };
    let mut other_headers = Vec::new();
    if let Some(h) = &message.headers {
        for (name, values) in h.iter() {
            let name: &str = name.as_ref();
            let mut read = headers::WITH_JSON_FALLBACK
                .iter()
                .chain([&headers::MSG_ID, &headers::CONTENT_TYPE]);
            if read.any(|x| x.eq_ignore_ascii_case(name)) {
                continue;
            }
            for v in values {
                other_headers.push((name.to_string(), v.as_str().to_string()));
            }
        }
        other_headers.sort();
    }
    Ok(Event {
        sequence: info.stream_sequence,
        message_id: header(headers::MSG_ID)
            .unwrap_or_else(|| format!("{}:{}", info.stream, info.stream_sequence)),
        event_type: header(headers::EVENT_TYPE)
            .or(fields.event_type)
            .unwrap_or_else(|| subject_event_type(&subject).to_string()),
        aggregate_id: header(headers::AGGREGATE_ID)
            .or(fields.aggregate_id)
            .unwrap_or_else(|| subject_aggregate_id(&subject).unwrap_or(&subject).to_string()),
        correlation_id: header(headers::CORRELATION_ID).or(fields.correlation_id),
        causation_id: header(headers::CAUSATION_ID).or(fields.causation_id),
        time,
        schema_version,
        headers: other_headers,
        payload: message.payload.to_vec(),
        content_type,
        subject,
    })
}
