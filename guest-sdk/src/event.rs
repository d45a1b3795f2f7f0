//! The event a plugin receives.

use chrono::{DateTime, Utc};

/// One event, with its payload decoded into `T`.
///
/// Every field comes from the message, never from a clock: replaying the stream gives the
/// plugin the same events.
#[derive(Debug, Clone, PartialEq)]
pub struct Event<T = serde_json::Value> {
    /// The stream sequence.
    pub sequence: u64,
    /// The subject it was published on, e.g. `infra.resource.r-17.StatusChanged`.
    pub subject: String,
    /// The publisher's message id, which is also the event's id.
    pub message_id: String,
    /// The event type, e.g. `StatusChanged`.
    pub event_type: String,
    /// The aggregate the event is about, e.g. `r-17`.
    pub aggregate_id: String,
    /// The business flow this event belongs to, if any.
    pub correlation_id: Option<String>,
    /// The event or command that caused this one, if any.
    pub causation_id: Option<String>,
    /// When it happened (event time).
    pub time: DateTime<Utc>,
    /// The payload's schema version.
    pub schema_version: u32,
    /// The other message headers, in order.
    pub headers: Vec<(String, String)>,
    /// The payload's media type.
    pub content_type: String,
    /// The decoded payload.
    pub payload: T,
}

impl<T> Event<T> {
    /// An event for native unit tests: sequence 1, event time at the Unix epoch, an empty
    /// event type (set it with [`Event::with_type`]; [`crate::testing::event`] sets it and
    /// decodes the payload from JSON as the host does). Adjust fields with the `with_*` methods.
    pub fn new(aggregate_id: impl Into<String>, payload: T) -> Self {
        let aggregate_id = aggregate_id.into();
        Event {
            sequence: 1,
            subject: format!("test.{aggregate_id}"),
            message_id: format!("test-{aggregate_id}-1"),
            event_type: String::new(),
            aggregate_id,
            correlation_id: None,
            causation_id: None,
            time: DateTime::<Utc>::UNIX_EPOCH,
            schema_version: 1,
            headers: Vec::new(),
            content_type: "application/json".into(),
            payload,
        }
    }

    /// Sets the event time.
    pub fn with_time(mut self, time: DateTime<Utc>) -> Self {
        self.time = time;
        self
    }

    /// Sets the stream sequence.
    pub fn with_sequence(mut self, sequence: u64) -> Self {
        self.sequence = sequence;
        self
    }

    /// Sets the event type.
    pub fn with_type(mut self, event_type: impl Into<String>) -> Self {
        self.event_type = event_type.into();
        self
    }

    /// Sets the payload's schema version.
    pub fn with_schema_version(mut self, version: u32) -> Self {
        self.schema_version = version;
        self
    }

    /// The value of a header, if present.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(k, _)| k.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
    }

    /// The same event with another payload.
    pub fn map<U>(self, f: impl FnOnce(T) -> U) -> Event<U> {
        Event {
            sequence: self.sequence,
            subject: self.subject,
            message_id: self.message_id,
            event_type: self.event_type,
            aggregate_id: self.aggregate_id,
            correlation_id: self.correlation_id,
            causation_id: self.causation_id,
            time: self.time,
            schema_version: self.schema_version,
            headers: self.headers,
            content_type: self.content_type,
            payload: f(self.payload),
        }
    }
}
