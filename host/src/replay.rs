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
use crate::fold::{Plugin, StepError, state_document};
use crate::manifest::Manifest;
use crate::nats::{
    reader::StreamReader,
    source::{event_from_message, replayed_for_another},
};
use crate::pipeline::{
    fold::Keyed,
    step::{self, Step},
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
}

/// Events [`Replayer::fold`] is given at a time by the tools: what a daemon's batch holds.
pub const BATCH: usize = 512;

/// One instance of the plugin and the states of the keys it folds.
struct Shard {
    step: Box<dyn Step>,
    states: HashMap<String, Vec<u8>>,
}

impl Shard {
    /// Folds `events` (each with its key) as one batch.
    fn fold(
        &mut self,
        manifest: &Manifest,
        events: &[(&str, &Event)],
    ) -> Vec<Result<Vec<Effect>, StepError>> {
        let keyed: Vec<Keyed<'_>> =
            events.iter().map(|&(key, event)| Keyed { key, event }).collect();
        let folded = self.step.fold_batch(manifest, &keyed, &self.states);
        self.states.extend(folded.states);
        folded.outcomes
    }
}

/// A plugin folding events in memory: one instance, or several that each fold a share of
/// the keys (each key in order, in one of them), in parallel.
pub struct Replayer {
    manifest: Manifest,
    digest: String,
    shards: Vec<Shard>,
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
    /// Keys are shared out among them by a hash of the key.
    pub fn parallel(instances: Vec<(Plugin, Option<UpcastChain>)>) -> Self {
        let mut manifest = None;
        let mut digest = String::new();
        let shards = instances
            .into_iter()
            .map(|(plugin, chain)| {
                digest = plugin.component.digest.hex();
                manifest.get_or_insert(plugin.manifest);
                Shard { step: step::of_instance(plugin.guest, chain), states: HashMap::new() }
            })
            .collect();
        Replayer {
            manifest: manifest.expect("at least one instance"),
            digest,
            shards,
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
        self.shards.len()
    }

    fn shard_of(&self, key: &str) -> usize {
        if self.shards.len() == 1 {
            return 0;
        }
        // SipHash with fixed keys: the same share-out on every run.
        let mut hasher = std::hash::DefaultHasher::new();
        std::hash::Hash::hash(key, &mut hasher);
        (std::hash::Hasher::finish(&hasher) % self.shards.len() as u64) as usize
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
        let key = self.manifest.state_key(event);
        let i = self.shard_of(&key);
        let shard = &mut self.shards[i];
        let stepped = shard.step.step(&self.manifest, shard.states.get(&key), event);
        let outcome = match stepped {
            Ok((new_state, effects)) => {
                let doc = state_document(&new_state);
                shard.states.insert(key.clone(), new_state);
                Outcome { state: Some(doc), effects: Some(effects), error: None }
            }
            Err(e) => {
                self.rejected += 1;
                Outcome { state: None, effects: None, error: Some(e) }
            }
        };
        (key, outcome)
    }

    /// Folds `events` in order as one batch (through the plugin's batch calls where it has
    /// them, each instance its keys' events, the instances in parallel): per event its key
    /// and outcome, without the state ([`Outcome::state`]); the outcomes and states are those
    /// of folding the events one at a time.
    pub fn fold(&mut self, events: &[Result<Event, StepError>]) -> Vec<(String, Outcome)> {
        let keys: Vec<String> = events
            .iter()
            .map(|e| e.as_ref().map(|e| self.manifest.state_key(e)).unwrap_or_default())
            .collect();
        // Per instance, the indices of its events.
        let mut share: Vec<Vec<usize>> = vec![Vec::new(); self.shards.len()];
        for (i, (event, key)) in events.iter().zip(&keys).enumerate() {
            if event.is_ok() {
                share[self.shard_of(key)].push(i);
            }
        }
        let manifest = &self.manifest;
        let shard_events = |indices: &[usize]| -> Vec<(&str, &Event)> {
            indices
                .iter()
                .map(|&i| {
                    (keys[i].as_str(), events[i].as_ref().expect("only events are shared out"))
                })
                .collect()
        };
        let folded: Vec<Vec<Result<Vec<Effect>, StepError>>> = match self.shards.as_mut_slice() {
            [one] => vec![one.fold(manifest, &shard_events(&share[0]))],
            shards => std::thread::scope(|scope| {
                let running: Vec<_> = shards
                    .iter_mut()
                    .zip(&share)
                    .map(|(shard, indices)| {
                        let mine = shard_events(indices);
                        scope.spawn(move || shard.fold(manifest, &mine))
                    })
                    .collect();
                running
                    .into_iter()
                    .map(|r| r.join().unwrap_or_else(|panic| std::panic::resume_unwind(panic)))
                    .collect()
            }),
        };
        let mut outcomes: Vec<Option<Outcome>> = events
            .iter()
            .map(|e| {
                e.as_ref().err().map(|e| Outcome {
                    state: None,
                    effects: None,
                    error: Some(e.clone()),
                })
            })
            .collect();
        for (indices, results) in share.iter().zip(folded) {
            for (&i, result) in indices.iter().zip(results) {
                outcomes[i] = Some(match result {
                    Ok(effects) => Outcome { state: None, effects: Some(effects), error: None },
                    Err(e) => Outcome { state: None, effects: None, error: Some(e) },
                });
            }
        }
        self.events += events.len() as u64;
        keys.into_iter()
            .zip(outcomes)
            .map(|(key, outcome)| {
                let outcome = outcome.expect("every event folded");
                if outcome.error.is_some() {
                    self.rejected += 1;
                }
                (key, outcome)
            })
            .collect()
    }

    /// Every key's state so far, as bytes, in key order.
    pub fn states(&self) -> BTreeMap<&String, &Vec<u8>> {
        self.shards.iter().flat_map(|s| &s.states).collect()
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
        if replayed_for_another(&message, plugin) {
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
