//! Folding a stream again, offline: `jetfold replay`, `replay --diff` and `verify`.
//!
//! A dry run: the stream is read in order by an ephemeral consumer that acknowledges nothing
//! ([`crate::nats::reader`]); each event goes through the plugin as the daemon would send it
//! (same state keys, same signature check, same limits and effect checks); states are kept in
//! memory and no effect is run.

use std::collections::{BTreeMap, HashMap};

use chrono::{DateTime, Utc};
use serde::Serialize;

use crate::effect::Effect;
use crate::event::Event;
use crate::fold::{Plugin, state_document};
use crate::guest::StepError;
use crate::manifest::Manifest;
use crate::nats::{
    reader::StreamReader,
    source::{self, Replay, event_from_message},
};
use crate::pipeline::{
    fold::Keyed,
    step::{self, Parallel, Step},
};
use crate::upcast::UpcastChain;

/// Which part of the stream to fold.
#[derive(Debug, Clone, Default)]
pub struct Range {
    /// First stream sequence (from the start when `None`).
    pub from_seq: Option<u64>,
    /// Last stream sequence.
    pub to_seq: Option<u64>,
    /// Fold only the events whose event time is at or before this, wherever they are in the
    /// stream (event time is not stream order): the later ones are passed by.
    pub to_time: Option<DateTime<Utc>>,
}

/// What one event did in one plugin.
#[derive(Debug, Clone, Serialize)]
pub struct Outcome {
    /// The key's state after the event (unchanged when the event was rejected); only
    /// [`Replayer::step`] gives it, a batch ([`Replayer::fold`]) has the states of its end.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub state: Option<serde_json::Value>,
    /// The effects the host would have run.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub effects: Option<Vec<Effect>>,
    /// Why the event was rejected.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<StepError>,
    /// Why the plugin was not given the event: a dead letter replayed for it whose original
    /// this fold did not reject, or folded a copy of already.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub passed_by: Option<String>,
}

impl Outcome {
    /// An event rejected for `error`.
    fn rejected(error: StepError) -> Self {
        Outcome { state: None, effects: None, error: Some(error), passed_by: None }
    }

    /// A replayed copy of the event at `original`, not folded.
    fn passed_by(original: u64, folded: bool) -> Self {
        let why = if folded {
            format!("a replayed dead letter of sequence {original}, which a copy before it folded")
        } else {
            format!("a replayed dead letter of sequence {original}, which this fold did not reject")
        };
        Outcome { state: None, effects: None, error: None, passed_by: Some(why) }
    }

    fn folded(state: Option<serde_json::Value>, effects: Vec<Effect>) -> Self {
        Outcome { state, effects: Some(effects), error: None, passed_by: None }
    }
}

/// Events [`Replayer::fold`] is given at a time by the tools: what a daemon's batch holds.
pub const BATCH: usize = 512;

/// A plugin folding events in memory: one instance, or several that each fold a share of
/// the keys (each key in order, in one of them), in parallel ([`Parallel`]).
pub struct Replayer {
    manifest: Manifest,
    digest: String,
    instances: usize,
    step: Box<dyn Step>,
    states: HashMap<String, Vec<u8>>,
    /// Events this fold rejected, by sequence, that a replayed copy may come for: whether a
    /// copy folded it (the daemon's rule: a copy is folded in place of a rejected original,
    /// once).
    copies: HashMap<u64, bool>,
    /// Events folded.
    pub events: u64,
    /// Events rejected.
    pub rejected: u64,
}

impl Replayer {
    /// A replayer of one instance, starting with no state.
    pub fn new(plugin: Plugin) -> Self {
        Self::parallel(vec![(plugin, None)])
    }

    /// A replayer over several instances of one plugin (opened from the same manifest), each
    /// behind its instance of the stream's upcasters if it has them, as the daemon runs it.
    pub fn parallel(instances: Vec<(Plugin, Option<UpcastChain>)>) -> Self {
        let mut manifest = None;
        let mut digest = String::new();
        let shards: Vec<Box<dyn Step>> = instances
            .into_iter()
            .map(|(plugin, chain)| {
                digest = plugin.component.digest.hex();
                manifest.get_or_insert(plugin.manifest);
                step::of_instance(plugin.guest, chain)
            })
            .collect();
        Replayer {
            manifest: manifest.expect("at least one instance"),
            digest,
            instances: shards.len(),
            step: Parallel::of(shards),
            states: HashMap::new(),
            copies: HashMap::new(),
            events: 0,
            rejected: 0,
        }
    }

    /// The plugin's manifest.
    pub fn manifest(&self) -> &Manifest {
        &self.manifest
    }

    /// The plugin version's digest.
    pub fn digest(&self) -> &str {
        &self.digest
    }

    /// Instances folding in parallel.
    pub fn instances(&self) -> usize {
        self.instances
    }

    /// The sequence of the event `event` is a replayed copy of, if it is one for this plugin.
    fn copy_of(&self, event: &Result<Event, StepError>) -> Option<u64> {
        source::event_replay(event.as_ref().ok()?, &self.manifest.name).copy_of()
    }

    /// Why a copy of `original` is passed by, if it is: this fold did not reject the
    /// original, or a copy before it folded it.
    fn passed(&self, original: u64) -> Option<Outcome> {
        match self.copies.get(&original) {
            Some(false) => None,
            Some(true) => Some(Outcome::passed_by(original, true)),
            None => Some(Outcome::passed_by(original, false)),
        }
    }

    /// Notes what an event's outcome means for a replayed copy of it (or, for a copy, of its
    /// original).
    fn note(&mut self, event: &Result<Event, StepError>, copy_of: Option<u64>, outcome: &Outcome) {
        let Ok(event) = event else { return };
        match (copy_of, &outcome.error) {
            (Some(original), None) => {
                self.copies.insert(original, true);
            }
            (Some(_), Some(_)) => {} // its original stays rejected
            (None, Some(_)) => {
                self.copies.insert(event.sequence, false);
            }
            (None, None) => {}
        }
    }

    /// Folds one event; `Err` carries why it was rejected before the plugin saw it.
    pub fn step(&mut self, event: &Result<Event, StepError>) -> (String, Outcome) {
        let key = event.as_ref().map(|e| self.manifest.state_key(e)).unwrap_or_default();
        let copy_of = self.copy_of(event);
        if let Some(passed) = copy_of.and_then(|original| self.passed(original)) {
            return (key, passed);
        }
        self.events += 1;
        let outcome = match event {
            Err(e) => Outcome::rejected(e.clone()),
            Ok(event) => match self.step.step(&self.manifest, self.states.get(&key), event) {
                Ok((new_state, effects)) => {
                    let doc = state_document(&new_state);
                    self.states.insert(key.clone(), new_state);
                    Outcome::folded(Some(doc), effects)
                }
                Err(e) => Outcome::rejected(e),
            },
        };
        if outcome.error.is_some() {
            self.rejected += 1;
        }
        self.note(event, copy_of, &outcome);
        (key, outcome)
    }

    /// Folds `events` in order as one batch (through the plugin's batch calls where it has
    /// them, the instances in parallel): per event its key and outcome, without the state
    /// ([`Outcome::state`]); the outcomes and states are those of folding the events one at
    /// a time. A dead letter replayed for the plugin is folded after the events before it, as
    /// their outcomes decide.
    pub fn fold(&mut self, events: &[Result<Event, StepError>]) -> Vec<(String, Outcome)> {
        let mut outcomes = Vec::with_capacity(events.len());
        let mut start = 0;
        for (at, copy) in events.iter().enumerate() {
            let Some(original) = self.copy_of(copy) else { continue };
            // The events before it first: their outcomes decide its fate.
            outcomes.extend(self.fold_plain(&events[start..at]));
            start = at + 1;
            match self.passed(original) {
                Some(passed) => {
                    let key = copy.as_ref().map(|e| self.manifest.state_key(e)).unwrap_or_default();
                    outcomes.push((key, passed));
                }
                None => {
                    let folded = self.fold_plain(std::slice::from_ref(copy));
                    for (_, outcome) in &folded {
                        self.note(copy, Some(original), outcome);
                    }
                    outcomes.extend(folded);
                }
            }
        }
        outcomes.extend(self.fold_plain(&events[start..]));
        outcomes
    }

    /// [`Replayer::fold`] of events none of which is a replayed copy (or of one copy alone,
    /// whose fate is decided).
    fn fold_plain(&mut self, events: &[Result<Event, StepError>]) -> Vec<(String, Outcome)> {
        if events.is_empty() {
            return Vec::new();
        }
        let keys: Vec<String> = events
            .iter()
            .map(|e| e.as_ref().map(|e| self.manifest.state_key(e)).unwrap_or_default())
            .collect();
        let keyed: Vec<Keyed<'_>> = events
            .iter()
            .zip(&keys)
            .filter_map(|(e, key)| e.as_ref().ok().map(|event| Keyed { key, event }))
            .collect();
        let folded = self.step.fold_batch(&self.manifest, &keyed, &self.states);
        self.states.extend(folded.states);
        let mut folded = folded.outcomes.into_iter();
        self.events += events.len() as u64;
        let outcomes: Vec<(String, Outcome)> = events
            .iter()
            .zip(keys)
            .map(|(e, key)| {
                let outcome = match e {
                    Err(e) => Err(e.clone()),
                    Ok(_) => folded.next().expect("one outcome per event folded"),
                };
                let outcome = match outcome {
                    Ok(effects) => Outcome::folded(None, effects),
                    Err(e) => Outcome::rejected(e),
                };
                (key, outcome)
            })
            .collect();
        self.rejected += outcomes.iter().filter(|(_, o)| o.error.is_some()).count() as u64;
        for (event, (_, outcome)) in events.iter().zip(&outcomes) {
            self.note(event, None, outcome);
        }
        outcomes
    }

    /// Every key's state so far, as bytes, in key order.
    pub fn states(&self) -> BTreeMap<&String, &Vec<u8>> {
        self.states.iter().collect()
    }
}

/// What [`read_events`] read.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Read {
    /// The last sequence given to `each`.
    pub last_seq: u64,
    /// Events passed by for an event time later than the range's `to_time`.
    pub later: u64,
}

/// Reads `stream` over `range` and calls `each` with every event for `plugin` (or why it
/// cannot be folded) in order, its sequence, and how many the read will give in all. Dead
/// letters replayed for another plugin are passed by, as the daemon passes them by.
pub async fn read_events(
    js: &async_nats::jetstream::Context,
    stream: &str,
    subjects: &[String],
    range: &Range,
    plugin: &str,
    verify_keys: &[(String, Vec<u8>)],
    mut each: impl FnMut(u64, Result<Event, StepError>, u64),
) -> anyhow::Result<Read> {
    let mut reader = StreamReader::open(js, stream, subjects, range.from_seq, range.to_seq).await?;
    let mut read = Read::default();
    while let Some(message) = reader.next().await {
        let message = message?;
        if source::replay(&message, plugin) == Replay::ForAnother {
            continue;
        }
        let seq = message.info().map(|i| i.stream_sequence).unwrap_or(0);
        let rejected = |kind: &str, message: String| StepError {
            kind: kind.into(),
            code: None,
            message,
            backtrace: None,
        };
        let decoded =
            event_from_message(&message).map_err(|e| rejected("invalid-event", format!("{e:#}")));
        // An event without a readable time is folded (and rejected), whatever the range.
        if let (Some(until), Ok(e)) = (range.to_time, &decoded)
            && e.time > until
        {
            read.later += 1;
            continue;
        }
        let event = if verify_keys.is_empty() {
            Ok(())
        } else {
            crate::integrity::verify_message(&message, verify_keys).map_err(|e| StepError {
                code: Some(e.code.to_string()),
                ..rejected("bad-signature", e.message)
            })
        }
        .and(decoded);
        read.last_seq = seq;
        each(seq, event, reader.total);
    }
    Ok(read)
}

/// [`read_events`] a batch of [`BATCH`] at a time: `each` is given every full batch and then
/// the rest, the events' sequences beside them, and the stream's total.
pub async fn read_batches(
    js: &async_nats::jetstream::Context,
    stream: &str,
    subjects: &[String],
    range: &Range,
    plugin: &str,
    verify_keys: &[(String, Vec<u8>)],
    mut each: impl FnMut(&[u64], &[Result<Event, StepError>], u64),
) -> anyhow::Result<Read> {
    let (mut seqs, mut events) = (Vec::with_capacity(BATCH), Vec::with_capacity(BATCH));
    let mut total = 0;
    let read = read_events(js, stream, subjects, range, plugin, verify_keys, |seq, event, t| {
        total = t;
        seqs.push(seq);
        events.push(event);
        if events.len() == BATCH {
            each(&seqs, &events, t);
            seqs.clear();
            events.clear();
        }
    })
    .await?;
    if !events.is_empty() {
        each(&seqs, &events, total);
    }
    Ok(read)
}
