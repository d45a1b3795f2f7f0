//! Folding a stream again, offline: `jetfold replay`, `replay --diff` and `verify`.
//!
//! A dry run: the stream is read in order by an ephemeral consumer that acknowledges nothing
//! ([`crate::nats::reader`]); each event goes through the plugin as the daemon would send it
//! (same state keys, same signature check, same limits and effect checks); states are kept in
//! memory and no effect is run.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use serde::Serialize;

use crate::effect::Effect;
use crate::event::Event;
use crate::fold::{Plugin, StepError, checked_step, state_document};
use crate::nats::{reader::StreamReader, source::event_from_message};

/// Which part of the stream to fold.
#[derive(Debug, Clone, Default)]
pub struct Range {
    /// First stream sequence (from the start when `None`).
    pub from_seq: Option<u64>,
    /// Last stream sequence.
    pub to_seq: Option<u64>,
    /// Stop before the first event whose event time is later.
    pub to_time: Option<DateTime<Utc>>,
}

/// What one event did in one plugin.
#[derive(Debug, Clone, Serialize)]
pub struct Outcome {
    /// The key's state after the event (unchanged when the event was rejected).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub state: Option<serde_json::Value>,
    /// The effects the host would have run.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub effects: Option<Vec<Effect>>,
    /// Why the event was rejected.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<StepError>,
}

/// A plugin folding events in memory.
pub struct Replayer {
    plugin: Plugin,
    upcasters: crate::upcast::UpcastChain,
    states: BTreeMap<String, Vec<u8>>,
    /// Events folded.
    pub events: u64,
    /// Events rejected.
    pub rejected: u64,
}

impl Replayer {
    /// A replayer starting with no state.
    pub fn new(plugin: Plugin) -> Self {
        Replayer {
            plugin,
            upcasters: Default::default(),
            states: BTreeMap::new(),
            events: 0,
            rejected: 0,
        }
    }

    /// Runs every event through `upcasters` first, as the daemon does.
    pub fn with_upcasters(mut self, upcasters: crate::upcast::UpcastChain) -> Self {
        self.upcasters = upcasters;
        self
    }

    /// The plugin.
    pub fn plugin(&self) -> &Plugin {
        &self.plugin
    }

    /// Folds one event; `Err` carries why it was rejected before the plugin saw it.
    pub fn step(&mut self, event: &Result<Event, StepError>) -> (String, Outcome) {
        self.events += 1;
        let event = match event {
            Ok(e) => e,
            Err(e) => {
                self.rejected += 1;
                let outcome = Outcome { state: None, effects: None, error: Some(e.clone()) };
                return (String::new(), outcome);
            }
        };
        let key = self.plugin.manifest.state_key(event);
        let state = self.states.get(&key);
        let (guest, manifest) = (&mut self.plugin.guest, &self.plugin.manifest);
        let stepped = self
            .upcasters
            .raise(event)
            .and_then(|event| checked_step(guest, manifest, state, &event));
        let outcome = match stepped {
            Ok((new_state, effects)) => {
                let doc = state_document(&new_state);
                self.states.insert(key.clone(), new_state);
                Outcome { state: Some(doc), effects: Some(effects), error: None }
            }
            Err(e) => {
                self.rejected += 1;
                Outcome { state: None, effects: None, error: Some(e) }
            }
        };
        (key, outcome)
    }

    /// Every key's state so far, as bytes.
    pub fn states(&self) -> &BTreeMap<String, Vec<u8>> {
        &self.states
    }
}

/// Reads `stream` over `range` and calls `each` with every event (or why it cannot be
/// folded) in order, its sequence, and how many the read will give in all; returns the last
/// sequence read.
pub async fn read_events(
    js: &async_nats::jetstream::Context,
    stream: &str,
    subjects: &[String],
    range: &Range,
    verify_keys: &[(String, Vec<u8>)],
    mut each: impl FnMut(u64, Result<Event, StepError>, u64),
) -> anyhow::Result<u64> {
    let mut reader = StreamReader::open(js, stream, subjects, range.from_seq, range.to_seq).await?;
    let mut last = 0;
    while let Some(message) = reader.next().await {
        let message = message?;
        let seq = message.info().map(|i| i.stream_sequence).unwrap_or(0);
        let rejected = |kind: &str, message: String| StepError {
            kind: kind.into(),
            code: None,
            message,
            backtrace: None,
        };
        let event = if verify_keys.is_empty() {
            Ok(())
        } else {
            crate::integrity::verify_message(&message, verify_keys)
                .map_err(|m| rejected("bad-signature", m))
        }
        .and_then(|()| {
            event_from_message(&message).map_err(|e| rejected("invalid-event", format!("{e:#}")))
        });
        if let (Some(until), Ok(e)) = (range.to_time, &event)
            && e.time > until
        {
            break;
        }
        last = seq;
        each(seq, event, reader.total);
    }
    Ok(last)
}
