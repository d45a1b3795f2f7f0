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
//!
//! A dead letter replayed by `jetfold dlq replay` has the message id of the event it is a copy
//! of: `Jetfold-Replay-Msg-Id`, else the `<stream>:<seq>` of `Jetfold-Replay-Of`.

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
    /// Provenance of emitted messages: plugin name.
    pub const PLUGIN: &str = "Jetfold-Plugin";
    /// Provenance: plugin digest.
    pub const PLUGIN_DIGEST: &str = "Jetfold-Plugin-Digest";
    /// Provenance: the source event's stream sequence.
    pub const SOURCE_SEQ: &str = "Jetfold-Source-Seq";
    /// `event` or `command`.
    pub const KIND: &str = "Jetfold-Kind";
    /// A dead letter's failure kind (`error`, `trap`, `fuel`, `memory`, …).
    pub const DLQ_KIND: &str = "Jetfold-Dlq-Kind";
    /// A dead letter's error code, when the plugin returned one.
    pub const DLQ_CODE: &str = "Jetfold-Dlq-Code";
    /// Why the plugin failed on the event, one line.
    pub const DLQ_REASON: &str = "Jetfold-Dlq-Reason";
    /// The original message id of a dead letter.
    pub const DLQ_SOURCE_MSG_ID: &str = "Jetfold-Source-Msg-Id";
    /// The stream a dead letter was read from.
    pub const DLQ_SOURCE_STREAM: &str = "Jetfold-Source-Stream";
    /// The subject a dead letter was published on.
    pub const DLQ_SOURCE_SUBJECT: &str = "Jetfold-Source-Subject";
    /// On a dead letter published again by `jetfold dlq replay`: the one plugin it is for
    /// (every other plugin reading the subject passes it by).
    pub const REPLAY_FOR: &str = "Jetfold-Replay-For";
    /// On a replayed dead letter: where the event it is a copy of is, `<stream>:<sequence>`.
    pub const REPLAY_OF: &str = "Jetfold-Replay-Of";
    /// On a replayed dead letter: the `Nats-Msg-Id` of the event it is a copy of, when it had
    /// one (the copy's own id is new, so that the stream stores it).
    pub const REPLAY_MSG_ID: &str = "Jetfold-Replay-Msg-Id";
}

/// The header `name` of a message, if it has it (first value).
fn header_of<'a>(message: &'a async_nats::Message, name: &str) -> Option<&'a str> {
    message.headers.as_ref()?.get(name).map(|v| v.as_str())
}

/// The sequence of the event a `Jetfold-Replay-Of` value names.
pub fn replay_of_seq(value: &str) -> Option<u64> {
    value.rsplit_once(':')?.1.trim().parse().ok()
}

/// What a message is to a plugin, as far as `jetfold dlq replay` is concerned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Replay {
    /// An event: not a replayed dead letter, or one replayed for this plugin before copies
    /// named their originals (folded as a new event).
    Event,
    /// A dead letter replayed for another plugin: passed by.
    ForAnother,
    /// A dead letter replayed for this plugin, a copy of the event at this sequence.
    CopyOf(u64),
}

impl Replay {
    /// The sequence of the event it is a copy of, if it is one.
    pub fn copy_of(self) -> Option<u64> {
        match self {
            Replay::CopyOf(seq) => Some(seq),
            _ => None,
        }
    }

    /// What headers (looked up by `find`) make a message to `plugin`.
    fn of<'a>(find: impl Fn(&str) -> Option<&'a str>, plugin: &str) -> Replay {
        match find(headers::REPLAY_FOR) {
            None => Replay::Event,
            Some(p) if p != plugin => Replay::ForAnother,
            Some(_) => find(headers::REPLAY_OF)
                .and_then(replay_of_seq)
                .map_or(Replay::Event, Replay::CopyOf),
        }
    }
}

/// What `message` is to `plugin`.
pub fn replay(message: &async_nats::Message, plugin: &str) -> Replay {
    Replay::of(|name| header_of(message, name), plugin)
}

/// What a decoded event is to `plugin` (its other headers hold the replay's).
pub fn event_replay(event: &Event, plugin: &str) -> Replay {
    let find = |name: &str| {
        event.headers.iter().find(|(k, _)| k.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
    };
    Replay::of(find, plugin)
}

/// The `Nats-Msg-Id` the event had (and its signature covers): a replayed copy's is its
/// original's, `""` when the original had none.
pub fn signed_msg_id(message: &async_nats::Message) -> &str {
    match header_of(message, headers::REPLAY_OF) {
        Some(_) => header_of(message, headers::REPLAY_MSG_ID).unwrap_or(""),
        None => header_of(message, headers::MSG_ID).unwrap_or(""),
    }
}

/// Whether deleting a consumer failed because there is none of that name.
pub fn is_consumer_not_found(e: &jetstream::stream::ConsumerError) -> bool {
    matches!(
        e.kind(),
        jetstream::stream::ConsumerErrorKind::JetStream(j)
            if j.error_code() == jetstream::ErrorCode::CONSUMER_NOT_FOUND
    )
}

/// The durable consumer of a plugin on a daemon: `<daemon>-<plugin>` (`jetfold-<plugin>`
/// for a daemon of the default name).
pub fn consumer_name(daemon: &str, plugin: &str) -> String {
    format!("{daemon}-{plugin}")
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
    daemon: &str,
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
    let name = consumer_name(daemon, plugin);
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
        Err(e) if is_consumer_not_found(&e) => {}
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

/// The headers of a message jetfold reads, found in one pass over them.
#[derive(Default)]
struct Known {
    msg_id: Option<String>,
    content_type: Option<String>,
    event_type: Option<String>,
    aggregate_id: Option<String>,
    correlation_id: Option<String>,
    causation_id: Option<String>,
    schema_version: Option<String>,
    event_time: Option<String>,
}

impl Known {
    /// The slot of a header jetfold reads (names compared without regard to case).
    fn slot(&mut self, name: &str) -> Option<&mut Option<String>> {
        let is = |h: &str| h.eq_ignore_ascii_case(name);
        Some(match () {
            _ if is(headers::MSG_ID) => &mut self.msg_id,
            _ if is(headers::CONTENT_TYPE) => &mut self.content_type,
            _ if is(headers::EVENT_TYPE) => &mut self.event_type,
            _ if is(headers::AGGREGATE_ID) => &mut self.aggregate_id,
            _ if is(headers::CORRELATION_ID) => &mut self.correlation_id,
            _ if is(headers::CAUSATION_ID) => &mut self.causation_id,
            _ if is(headers::SCHEMA_VERSION) => &mut self.schema_version,
            _ if is(headers::EVENT_TIME) => &mut self.event_time,
            _ => return None,
        })
    }

    /// Whether a field with a JSON fallback has no header.
    fn needs_payload(&self) -> bool {
        [
            &self.event_type,
            &self.aggregate_id,
            &self.correlation_id,
            &self.causation_id,
            &self.schema_version,
            &self.event_time,
        ]
        .iter()
        .any(|h| h.is_none())
    }
}

/// Whether jetfold reads header `name` into a field of the event (its id, type, aggregate,
/// correlation, causation, schema version, time or content type), not into its other headers.
pub fn is_event_header(name: &str) -> bool {
    Known::default().slot(name).is_some()
}

/// Every header of a message, names and values as stored (a name given twice keeps both values,
/// in order).
pub fn all_headers(message: &async_nats::Message) -> Vec<(String, String)> {
    let mut all = Vec::new();
    for (name, values) in message.headers.iter().flat_map(|h| h.iter()) {
        all.extend(values.iter().map(|v| (name.to_string(), v.as_str().to_string())));
    }
    all
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

/// Builds the event record of a JetStream message.
pub fn event_from_message(message: &Message) -> anyhow::Result<Event> {
    let info =
        message.info().map_err(|e| anyhow::anyhow!("message without JetStream metadata: {e}"))?;
    let at =
        Position { stream: info.stream, sequence: info.stream_sequence, published: info.published };
    decode_event(&message.message, at)
}

/// Builds the event record of a message stored at `at`: the headers jetfold reads (ids,
/// type, time, schema version, content type), then the payload's documented JSON fields where
/// a header is missing, then the subject's tokens.
pub fn decode_event(message: &async_nats::Message, at: Position<'_>) -> anyhow::Result<Event> {
    let mut known = Known::default();
    let mut other_headers = Vec::new();
    if let Some(h) = &message.headers {
        for (name, values) in h.iter() {
            let name: &str = name.as_ref();
            match known.slot(name) {
                Some(slot) => {
                    if let Some(first) = values.first() {
                        *slot = Some(first.as_str().to_string());
                    }
                }
                None => other_headers
                    .extend(values.iter().map(|v| (name.to_string(), v.as_str().to_string()))),
            }
        }
        other_headers.sort();
    }
    let content_type = known.content_type.take().unwrap_or_else(|| JSON.into());
    // The documented JSON fields are read only when a header is missing, and only from JSON.
    let fields = if known.needs_payload() && content_type == JSON {
        serde_json::from_slice::<PayloadFields>(&message.payload).unwrap_or_default()
    } else {
        PayloadFields::default()
    };
    let subject = message.subject.to_string();
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
    let copy_of = other_headers
        .iter()
        .find(|(k, _)| k.eq_ignore_ascii_case(headers::REPLAY_OF))
        .map(|(_, of)| of.clone());
    let message_id = match copy_of {
        Some(of) => other_headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(headers::REPLAY_MSG_ID))
            .map_or(of, |(_, id)| id.clone()),
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
        payload: message.payload.to_vec(),
        content_type,
        subject,
    })
}
