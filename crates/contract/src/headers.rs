//! The headers jetfold reads and writes, and what NATS accepts as one.
//!
//! Names are compared without regard to case, as NATS servers and clients do.

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

/// Why [`check`] refuses a name.
pub const BAD_NAME: &str = "not a valid header name";

/// Why [`check`] refuses a value.
pub const BAD_VALUE: &str = "the value is not a valid header value";

/// Whether NATS can carry a header: a non-empty name of printable ASCII without `:`, a value
/// without CR or LF (the rules of the NATS clients); else which of the two is not.
pub fn check(name: &str, value: &str) -> Result<(), &'static str> {
    if name.is_empty() || name.contains(|c: char| !c.is_ascii_graphic() || c == ':') {
        return Err(BAD_NAME);
    }
    if value.contains(['\r', '\n']) {
        return Err(BAD_VALUE);
    }
    Ok(())
}

/// The first value of header `name` among `pairs`.
pub fn find<'a>(pairs: &'a [(String, String)], name: &str) -> Option<&'a str> {
    pairs.iter().find(|(k, _)| k.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
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
    pub fn of<'a>(find: impl Fn(&str) -> Option<&'a str>, plugin: &str) -> Replay {
        match find(REPLAY_FOR) {
            None => Replay::Event,
            Some(p) if p != plugin => Replay::ForAnother,
            Some(_) => {
                find(REPLAY_OF).and_then(replay_of_seq).map_or(Replay::Event, Replay::CopyOf)
            }
        }
    }
}

/// The headers of a message jetfold reads, found in one pass over them.
#[derive(Default)]
pub(crate) struct Known {
    pub(crate) msg_id: Option<String>,
    pub(crate) content_type: Option<String>,
    pub(crate) event_type: Option<String>,
    pub(crate) aggregate_id: Option<String>,
    pub(crate) correlation_id: Option<String>,
    pub(crate) causation_id: Option<String>,
    pub(crate) schema_version: Option<String>,
    pub(crate) event_time: Option<String>,
}

impl Known {
    /// The slot of a header jetfold reads (names compared without regard to case).
    pub(crate) fn slot(&mut self, name: &str) -> Option<&mut Option<String>> {
        let is = |h: &str| h.eq_ignore_ascii_case(name);
        Some(match () {
            _ if is(MSG_ID) => &mut self.msg_id,
            _ if is(CONTENT_TYPE) => &mut self.content_type,
            _ if is(EVENT_TYPE) => &mut self.event_type,
            _ if is(AGGREGATE_ID) => &mut self.aggregate_id,
            _ if is(CORRELATION_ID) => &mut self.correlation_id,
            _ if is(CAUSATION_ID) => &mut self.causation_id,
            _ if is(SCHEMA_VERSION) => &mut self.schema_version,
            _ if is(EVENT_TIME) => &mut self.event_time,
            _ => return None,
        })
    }

    /// Whether a field with a JSON fallback has no header.
    pub(crate) fn needs_payload(&self) -> bool {
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
