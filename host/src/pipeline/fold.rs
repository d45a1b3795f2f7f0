//! Folding a batch of keyed events: one guest call per batch where the plugin's contract
//! allows it (`jetfold:plugin@0.2.0`), with the key's states resident in the instance, and one
//! call per event otherwise. Both give the outcomes and states of the plain one-event-at-a-time
//! fold; `tests/all/batching.rs` compares them on random streams.
//!
//! A batch call that cannot stand for the events one at a time (a trap, exhausted fuel or
//! memory, an effect the manifest refuses, a state or effect count over its limit) is
//! thrown away and its events are folded again one per call, from the states as they were:
//! so a failure rejects exactly its event and the others fold as if alone.

use std::collections::HashMap;

use crate::bindings::{types, v2::batching};
use crate::effect::{self, Effect};
use crate::event::Event;
use crate::fold::{checked_step, output_check, payload_check};
use crate::guest::StepError;
use crate::guest::{BatchFold, BatchOutcomes, GuestCall, GuestError, GuestInstance};
use crate::manifest::{Manifest, PluginKind};

/// One event of a batch with its state key.
#[derive(Clone, Copy)]
pub struct Keyed<'a> {
    /// The key whose state the event folds into.
    pub key: &'a str,
    /// The event.
    pub event: &'a Event,
}

/// Per event its accepted effects, or why it is rejected (its key's state unchanged).
pub type Outcome = Result<Vec<Effect>, StepError>;

/// What a batch came to.
#[derive(Default)]
pub struct Folded {
    /// Per event, in order.
    pub outcomes: Vec<Outcome>,
    /// The state after the batch of every key an accepted event folded into.
    pub states: HashMap<String, Vec<u8>>,
}

/// Folds `events` one call per event through `step`, from `states` (the state of every key
/// of the batch that has one): what every step without batches does.
pub fn fold_each(
    mut step: impl FnMut(Option<&Vec<u8>>, &Event) -> Result<(Vec<u8>, Vec<Effect>), StepError>,
    events: &[Keyed<'_>],
    states: &HashMap<String, Vec<u8>>,
) -> Folded {
    let mut folded = Folded { outcomes: Vec::with_capacity(events.len()), states: HashMap::new() };
    for e in events {
        let state = folded.states.get(e.key).or_else(|| states.get(e.key));
        match step(state, e.event) {
            Ok((new_state, effects)) => {
                folded.states.insert(e.key.to_string(), new_state);
                folded.outcomes.push(Ok(effects));
            }
            Err(error) => folded.outcomes.push(Err(error)),
        }
    }
    folded
}

/// A 0.2.0 plugin instance with the host's record of which keys' states it holds.
///
/// The host keeps the truth: after each batch it has the encoded state of every key the batch
/// changed (the daemon commits them), so what the instance holds is only a cache of decoded
/// states. A key it holds is not handed over again; any doubt (a trap, a fresh instance, a
/// call whose outcome the host overrode) forgets the key, and the next batch seeds it again.
pub struct ResidentGuest {
    guest: GuestInstance,
    /// Keys the instance holds: the batch that last touched each, and its encoded size.
    held: HashMap<String, (u64, usize)>,
    held_bytes: usize,
    /// The instance's generation the record is about; a new instance holds nothing.
    generation: u64,
    batches: u64,
    /// Events per guest call; halved when a call runs out of fuel, grown back after.
    chunk: usize,
    /// The fuel an event of this plugin has taken lately (rising at once, falling slowly),
    /// so that a call is given no more events than half the manifest's budget covers: one
    /// budget bounds the whole call, and a call that runs out is folded again event by event.
    fuel_per_event: f64,
    /// What the instance may hold: its memory cap divided by this (4, doubled each time a
    /// batch runs out of memory, up to 64, so that resident states do not crowd the events
    /// out).
    residency_divisor: u64,
}

/// One accepted event's effects or decisions, before the manifest's check.
enum Either {
    Effects(Vec<types::Effect>),
    Decisions(Vec<types::Decision>),
}

impl Either {
    fn len(&self) -> usize {
        match self {
            Either::Effects(e) => e.len(),
            Either::Decisions(d) => d.len(),
        }
    }

    fn accept(self, manifest: &Manifest) -> Result<Vec<Effect>, effect::EffectRejection> {
        match self {
            Either::Effects(e) => effect::accept(e, &manifest.allow),
            Either::Decisions(d) => effect::accept_decisions(d, &manifest.allow),
        }
    }
}

trait IntoEither {
    fn into_either(self) -> Vec<Result<Either, types::Error>>;
}

impl IntoEither for BatchOutcomes {
    fn into_either(self) -> Vec<Result<Either, types::Error>> {
        match self {
            BatchOutcomes::Effects(list) => {
                list.into_iter().map(|o| o.map(Either::Effects)).collect()
            }
            BatchOutcomes::Decisions(list) => {
                list.into_iter().map(|o| o.map(Either::Decisions)).collect()
            }
        }
    }
}

/// Most events a batch call takes.
const MAX_CHUNK: usize = 4096;

impl ResidentGuest {
    /// Wraps a 0.2.0 instance (see [`GuestInstance::batches`]).
    pub fn new(guest: GuestInstance) -> Self {
        let generation = guest.instantiations();
        ResidentGuest {
            guest,
            held: HashMap::new(),
            held_bytes: 0,
            generation,
            batches: 0,
            chunk: MAX_CHUNK,
            fuel_per_event: 0.0,
            residency_divisor: 4,
        }
    }

    /// The instance.
    pub fn guest(&self) -> &GuestInstance {
        &self.guest
    }

    /// The instance, to call it directly (what it then holds is not recorded: forget all).
    pub fn guest_mut(&mut self) -> &mut GuestInstance {
        &mut self.guest
    }

    /// Whether the instance holds `key`'s state (so a batch needs no state for it).
    pub fn holds(&self, key: &str) -> bool {
        self.held.contains_key(key)
    }

    /// Keys held (for tests and metrics).
    pub fn held_keys(&self) -> usize {
        self.held.len()
    }

    /// Forgets every key: the host's record no longer vouches for what the instance holds.
    pub fn forget_all(&mut self) {
        let keys: Vec<String> = self.held.drain().map(|(k, _)| k).collect();
        self.held_bytes = 0;
        // Freeing the memory is all `forget` does; an instance that fails it is dropped.
        if self.guest.forget(&keys).is_err() {
            self.generation = u64::MAX;
        }
    }

    fn unhold(&mut self, key: &str) {
        if let Some((_, bytes)) = self.held.remove(key) {
            self.held_bytes -= bytes;
        }
    }

    fn hold(&mut self, key: &str, bytes: usize) {
        let batch = self.batches;
        if let Some((_, old)) = self.held.insert(key.to_string(), (batch, bytes)) {
            self.held_bytes -= old;
        }
        self.held_bytes += bytes;
    }

    /// Drops the record if the instance was replaced (a trap drops it).
    fn check_generation(&mut self) {
        if self.guest.instantiations() != self.generation || !self.guest.is_live() {
            self.held.clear();
            self.held_bytes = 0;
            self.generation = self.guest.instantiations();
        }
    }

    /// One event, its key seeded with its state: the plain fold of one event.
    pub fn step(
        &mut self,
        manifest: &Manifest,
        state: Option<&Vec<u8>>,
        event: &Event,
    ) -> Result<(Vec<u8>, Vec<Effect>), StepError> {
        // The instance ends up holding the key's state or a rejected version of it: no record.
        let outcome = checked_step(&mut self.guest, manifest, state, event);
        self.check_generation();
        let key = manifest.state_key(event);
        self.unhold(&key);
        outcome
    }

    /// Folds `events` in order from `states`, which must hold the state of every key of the
    /// batch that has one, held or not: a key held is not handed in, but after a trap every
    /// key is seeded again from `states`.
    pub fn fold(
        &mut self,
        manifest: &Manifest,
        events: &[Keyed<'_>],
        states: &HashMap<String, Vec<u8>>,
    ) -> Folded {
        self.check_generation();
        self.batches += 1;
        let mut outcomes: Vec<Option<Outcome>> = (0..events.len()).map(|_| None).collect();
        let mut changed: HashMap<String, Vec<u8>> = HashMap::new();
        // A payload over the limit is refused before any call, as one at a time.
        let mut pending = Vec::with_capacity(events.len());
        for (i, e) in events.iter().enumerate() {
            match payload_check(&manifest.limits, e.event) {
                Ok(()) => pending.push(i),
                Err(error) => outcomes[i] = Some(Err(error)),
            }
        }
        let mut rest = &pending[..];
        while !rest.is_empty() {
            let n = rest.len().min(self.chunk_within());
            let (chunk, after) = rest.split_at(n);
            rest = after;
            if !self.try_chunk(manifest, events, chunk, states, &mut changed, &mut outcomes) {
                for &i in chunk {
                    let outcome = self.single(manifest, events[i], states, &mut changed);
                    outcomes[i] = Some(outcome);
                }
            } else if self.chunk < MAX_CHUNK {
                self.chunk = (self.chunk * 2).min(MAX_CHUNK);
            }
        }
        self.bound_residency(manifest);
        Folded {
            outcomes: outcomes.into_iter().map(|o| o.expect("every event folded")).collect(),
            states: changed,
        }
    }

    /// Events the next call may take: the backed-off chunk, and no more than half the fuel
    /// budget covers at the recent fuel per event.
    fn chunk_within(&self) -> usize {
        if self.fuel_per_event <= 0.0 {
            return self.chunk;
        }
        let fits = (self.guest.limits().fuel as f64 / 2.0 / self.fuel_per_event) as usize;
        fits.clamp(1, self.chunk)
    }

    /// Records what a call of `events` events that returned took (a call that ran out of
    /// fuel halves [`ResidentGuest::chunk`] instead).
    fn note_fuel(&mut self, used: u64, events: usize) {
        if events == 0 || used == 0 {
            return;
        }
        let per = used as f64 / events as f64;
        self.fuel_per_event =
            if per > self.fuel_per_event { per } else { 0.75 * self.fuel_per_event + 0.25 * per };
    }

    /// One batch call: the fuel it took per event noted if it returned, and the record of
    /// what the instance holds dropped if the instance did not survive it.
    fn call(&mut self, batch: &batching::Batch) -> Result<BatchFold, GuestError> {
        let fuel_before = self.guest.fuel_used();
        let result = self.guest.fold_batch(batch);
        if result.is_ok() {
            self.note_fuel(self.guest.fuel_used() - fuel_before, batch.events.len());
        }
        self.check_generation();
        result
    }

    /// Folds `chunk` (indices into `events`) in one call; false if its outcome cannot stand for
    /// the events one at a time (nothing of it is kept then).
    fn try_chunk(
        &mut self,
        manifest: &Manifest,
        events: &[Keyed<'_>],
        chunk: &[usize],
        states: &HashMap<String, Vec<u8>>,
        changed: &mut HashMap<String, Vec<u8>>,
        outcomes: &mut [Option<Outcome>],
    ) -> bool {
        if chunk.len() == 1 {
            return false; // one event: the plain call, which handles every failure
        }
        let mut index: HashMap<&str, u32> = HashMap::new();
        let mut batch = batching::Batch {
            keys: Vec::new(),
            seeds: Vec::new(),
            events: Vec::with_capacity(chunk.len()),
        };
        for &i in chunk {
            let e = events[i];
            let key = *index.entry(e.key).or_insert_with(|| {
                let k = batch.keys.len() as u32;
                batch.keys.push(e.key.to_string());
                if !self.held.contains_key(e.key) {
                    let state = changed.get(e.key).or_else(|| states.get(e.key)).cloned();
                    batch.seeds.push(batching::Seed { key: k, state });
                }
                k
            });
            batch.events.push(batching::KeyedEvent { key, event: types::Event::from(e.event) });
        }
        // What the guest writes during the call is logged inside this span: which events it
        // was folding (a batch that fails is folded again one event at a time, each in a span
        // of its own, so a line written twice is told apart).
        let (first, last) =
            (events[chunk[0]].event.sequence, events[chunk[chunk.len() - 1]].event.sequence);
        let span = tracing::info_span!("guest call", seq = first, to = last);
        let result = span.in_scope(|| self.call(&batch));
        let (raw, new_states) = match result {
            Ok(BatchFold { outcomes, states }) => (outcomes, states),
            Err(GuestError::OutOfFuel { .. }) => {
                // One budget for the whole call: fewer events per call from now on.
                self.chunk = (chunk.len() / 2).max(1);
                return false;
            }
            Err(GuestError::OutOfMemory { .. }) => {
                self.residency_divisor = (self.residency_divisor * 2).min(64);
                return false;
            }
            Err(_) => return false,
        };
        let limits = &manifest.limits;
        let call =
            if manifest.kind == PluginKind::Policy { GuestCall::Decide } else { GuestCall::Apply };
        let returned = |e: types::Error| {
            StepError::from(GuestError::Returned { call, code: e.code, message: e.message })
        };
        let mut checked: Vec<Outcome> = Vec::with_capacity(chunk.len());
        let mut accepted_keys = vec![false; batch.keys.len()];
        let ok = raw.into_either().into_iter().zip(&batch.events).all(|(o, e)| match o {
            Ok(effects) => {
                if output_check(limits, 0, effects.len()).is_err() {
                    return false;
                }
                match effects.accept(manifest) {
                    Ok(accepted) => {
                        accepted_keys[e.key as usize] = true;
                        checked.push(Ok(accepted));
                        true
                    }
                    Err(_) => false,
                }
            }
            Err(error) => {
                checked.push(Err(returned(error)));
                true
            }
        });
        let mut returned_keys = vec![false; batch.keys.len()];
        for (key, state) in &new_states {
            returned_keys[*key as usize] = true;
            if state.len() > limits.max_state_bytes {
                return self.give_up(&batch.keys);
            }
        }
        // Every key an accepted event folded comes back, and only those.
        if !ok || returned_keys != accepted_keys {
            return self.give_up(&batch.keys);
        }
        for (&i, outcome) in chunk.iter().zip(checked) {
            outcomes[i] = Some(outcome);
        }
        // Seeded keys are held now, as they were seeded or as the batch left them.
        for seed in &batch.seeds {
            let key = &batch.keys[seed.key as usize];
            self.hold(key, seed.state.as_ref().map_or(0, Vec::len));
        }
        for (key, state) in new_states {
            let key = &batch.keys[key as usize];
            self.hold(key, state.len());
            changed.insert(key.clone(), state);
        }
        true
    }

    /// A batch call whose outcome the host does not take: the instance may hold states the
    /// host never had, so none of the batch's keys counts as held.
    fn give_up(&mut self, keys: &[String]) -> bool {
        for key in keys {
            self.unhold(key);
        }
        false
    }

    /// One event in a call of its own, its key seeded: every failure is this event's.
    fn single(
        &mut self,
        manifest: &Manifest,
        e: Keyed<'_>,
        states: &HashMap<String, Vec<u8>>,
        changed: &mut HashMap<String, Vec<u8>>,
    ) -> Outcome {
        let _span = tracing::info_span!("guest call", seq = e.event.sequence).entered();
        // Seeded unless the instance holds it; by its name, so that what the instance holds
        // afterwards is that key's.
        let seeds = if self.held.contains_key(e.key) {
            Vec::new()
        } else {
            let state = changed.get(e.key).or_else(|| states.get(e.key)).cloned();
            vec![batching::Seed { key: 0, state }]
        };
        let batch = batching::Batch {
            keys: vec![e.key.to_string()],
            seeds,
            events: vec![batching::KeyedEvent { key: 0, event: types::Event::from(e.event) }],
        };
        let result = self.call(&batch);
        // Whatever happens, the next batch hands the key's state again unless it is accepted.
        self.unhold(e.key);
        let BatchFold { outcomes: raw, states: mut new_states } = result?;
        let call =
            if manifest.kind == PluginKind::Policy { GuestCall::Decide } else { GuestCall::Apply };
        let effects = raw.into_either().pop().expect("one outcome, checked");
        let effects = effects.map_err(|e| {
            StepError::from(GuestError::Returned { call, code: e.code, message: e.message })
        })?;
        let Some((0, new_state)) = new_states.pop() else {
            return Err(StepError::from(GuestError::InvalidOutput {
                call,
                message: "the event was accepted but its key's state did not come back".into(),
            }));
        };
        output_check(&manifest.limits, new_state.len(), effects.len())?;
        let accepted = effects.accept(manifest)?;
        self.hold(e.key, new_state.len());
        changed.insert(e.key.to_string(), new_state);
        Ok(accepted)
    }

    /// Keeps what the instance holds within a quarter of its memory cap (counted as encoded
    /// bytes; decoded states are larger), less after a batch ran out of memory: the keys
    /// folded longest ago are forgotten first.
    fn bound_residency(&mut self, manifest: &Manifest) {
        let cap = usize::try_from(
            manifest.limits.memory_mib.saturating_mul(1 << 20) / self.residency_divisor,
        )
        .unwrap_or(usize::MAX);
        if self.held_bytes <= cap {
            return;
        }
        let mut by_age: Vec<(u64, String)> =
            self.held.iter().map(|(k, (batch, _))| (*batch, k.clone())).collect();
        by_age.sort_unstable();
        let target = cap / 2;
        let mut forget = Vec::new();
        for (_, key) in by_age {
            if self.held_bytes <= target {
                break;
            }
            self.unhold(&key);
            forget.push(key);
        }
        if self.guest.forget(&forget).is_err() {
            self.check_generation();
        }
    }
}
