//! The event record (in [`jetfold_contract::event`]) and its WIT form, as guests get it.

pub use jetfold_contract::event::*;

use chrono::{DateTime, Utc};

use crate::bindings::types;

impl From<&Event> for types::Event {
    fn from(e: &Event) -> Self {
        types::Event {
            sequence: e.sequence,
            subject: e.subject.clone(),
            message_id: e.message_id.clone(),
            event_type: e.event_type.clone(),
            aggregate_id: e.aggregate_id.clone(),
            correlation_id: e.correlation_id.clone(),
            causation_id: e.causation_id.clone(),
            time: types::Timestamp {
                seconds: e.time.timestamp(),
                nanoseconds: e.time.timestamp_subsec_nanos(),
            },
            schema_version: e.schema_version,
            headers: e.headers.clone(),
            payload: e.payload.clone(),
            content_type: e.content_type.clone(),
        }
    }
}

impl TryFrom<types::Event> for Event {
    type Error = String;

    fn try_from(e: types::Event) -> Result<Self, String> {
        let time = DateTime::<Utc>::from_timestamp(e.time.seconds, e.time.nanoseconds).ok_or_else(
            || format!("event time {}s {}ns is out of range", e.time.seconds, e.time.nanoseconds),
        )?;
        Ok(Event {
            sequence: e.sequence,
            subject: e.subject,
            message_id: e.message_id,
            event_type: e.event_type,
            aggregate_id: e.aggregate_id,
            correlation_id: e.correlation_id,
            causation_id: e.causation_id,
            time,
            schema_version: e.schema_version,
            headers: e.headers,
            payload: e.payload,
            content_type: e.content_type,
        })
    }
}
