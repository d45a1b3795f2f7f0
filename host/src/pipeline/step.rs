//! One fold step of a plugin version, the unit the fold thread, the offline tools
//! (`replay`, `verify`) and the benchmarks call: the [`Step`] trait, its implementations for a
//! component (one call per event for 0.1.0, resident batches for 0.2.0) and for a step behind
//! its stream's upcasters.

use std::collections::HashMap;

use crate::effect::Effect;
use crate::event::Event;
use crate::fold::checked_step;
use crate::guest::GuestInstance;
use crate::guest::StepError;
use crate::manifest::Manifest;
use crate::pipeline::fold::{Folded, Keyed, ResidentGuest, fold_each};
use crate::upcast::UpcastChain;

/// One fold step of a plugin: the key's new state and the checked effects of one event.
pub trait Step: Send {
    /// Folds `event` into `state`; an error rejects the event.
    fn step(
        &mut self,
        manifest: &Manifest,
        state: Option<&Vec<u8>>,
        event: &Event,
    ) -> Result<(Vec<u8>, Vec<Effect>), StepError>;

    /// Whether this version converts states of other state versions (`migrate`).
    fn migrates(&self) -> bool {
        false
    }

    /// Fuel its calls have consumed so far (0 for a native step).
    fn fuel_used(&self) -> u64 {
        0
    }

    /// `state`, written under state version `from_version`, in this version's.
    fn migrate(&mut self, from_version: u32, state: &[u8]) -> Result<Vec<u8>, String> {
        let _ = (from_version, state);
        Err("this version does not export `migrate`".into())
    }

    /// Folds `events` in order from `states`, which holds the state of every key of the batch
    /// that has one: the outcomes and new states of folding them one at a time (the default
    /// does exactly that; a step that [`Step::holds`] a key's state does not hand it in).
    fn fold_batch(
        &mut self,
        manifest: &Manifest,
        events: &[Keyed<'_>],
        states: &HashMap<String, Vec<u8>>,
    ) -> Folded {
        fold_each(|state, event| self.step(manifest, state, event), events, states)
    }

    /// Whether the step holds `key`'s state itself (a batch needs no state for it).
    fn holds(&self, key: &str) -> bool {
        let _ = key;
        false
    }

    /// Forgets every state the step holds (after a batch whose outcomes were not all used).
    fn forget_all(&mut self) {}
}

impl Step for ResidentGuest {
    fn step(
        &mut self,
        manifest: &Manifest,
        state: Option<&Vec<u8>>,
        event: &Event,
    ) -> Result<(Vec<u8>, Vec<Effect>), StepError> {
        ResidentGuest::step(self, manifest, state, event)
    }

    fn migrates(&self) -> bool {
        self.guest().migrates()
    }

    fn fuel_used(&self) -> u64 {
        self.guest().fuel_used()
    }

    fn migrate(&mut self, from_version: u32, state: &[u8]) -> Result<Vec<u8>, String> {
        self.guest_mut().migrate(from_version, state).map_err(|e| e.to_string())
    }

    fn fold_batch(
        &mut self,
        manifest: &Manifest,
        events: &[Keyed<'_>],
        states: &HashMap<String, Vec<u8>>,
    ) -> Folded {
        self.fold(manifest, events, states)
    }

    fn holds(&self, key: &str) -> bool {
        ResidentGuest::holds(self, key)
    }

    fn forget_all(&mut self) {
        ResidentGuest::forget_all(self)
    }
}

impl Step for GuestInstance {
    fn step(
        &mut self,
        manifest: &Manifest,
        state: Option<&Vec<u8>>,
        event: &Event,
    ) -> Result<(Vec<u8>, Vec<Effect>), StepError> {
        checked_step(self, manifest, state, event)
    }

    fn migrates(&self) -> bool {
        GuestInstance::migrates(self)
    }

    fn fuel_used(&self) -> u64 {
        GuestInstance::fuel_used(self)
    }

    fn migrate(&mut self, from_version: u32, state: &[u8]) -> Result<Vec<u8>, String> {
        GuestInstance::migrate(self, from_version, state).map_err(|e| e.to_string())
    }
}

/// A plugin's step behind its stream's upcasters.
struct Upcasting {
    chain: UpcastChain,
    inner: Box<dyn Step>,
}

impl Step for Upcasting {
    fn step(
        &mut self,
        manifest: &Manifest,
        state: Option<&Vec<u8>>,
        event: &Event,
    ) -> Result<(Vec<u8>, Vec<Effect>), StepError> {
        let event = self.chain.raise(event)?;
        self.inner.step(manifest, state, &event)
    }

    fn migrates(&self) -> bool {
        self.inner.migrates()
    }

    fn fuel_used(&self) -> u64 {
        self.inner.fuel_used() + self.chain.fuel_used()
    }

    fn migrate(&mut self, from_version: u32, state: &[u8]) -> Result<Vec<u8>, String> {
        self.inner.migrate(from_version, state)
    }

    fn fold_batch(
        &mut self,
        manifest: &Manifest,
        events: &[Keyed<'_>],
        states: &HashMap<String, Vec<u8>>,
    ) -> Folded {
        // Raised first, each alone; those an upcaster rejects are rejected, the rest folded.
        let raised: Vec<_> = events.iter().map(|e| self.chain.raise(e.event)).collect();
        let mut through = Vec::with_capacity(events.len());
        for (e, r) in events.iter().zip(&raised) {
            if let Ok(event) = r {
                through.push(Keyed { key: e.key, event: event.as_ref() });
            }
        }
        let inner = self.inner.fold_batch(manifest, &through, states);
        let mut outcomes = inner.outcomes.into_iter();
        let outcomes = raised
            .into_iter()
            .map(|r| match r {
                Ok(_) => outcomes.next().expect("one outcome per event folded"),
                Err(error) => Err(error),
            })
            .collect();
        Folded { outcomes, states: inner.states }
    }

    fn holds(&self, key: &str) -> bool {
        self.inner.holds(key)
    }

    fn forget_all(&mut self) {
        self.inner.forget_all()
    }
}

/// The step of a fresh instance: resident batches where its contract has them (0.2.0), one
/// call per event otherwise, behind `chain` when the stream has upcasters.
pub fn of_instance(guest: GuestInstance, chain: Option<UpcastChain>) -> Box<dyn Step> {
    let inner: Box<dyn Step> =
        if guest.batches() { Box::new(ResidentGuest::new(guest)) } else { Box::new(guest) };
    upcasting(inner, chain)
}

/// `inner` behind `chain`, if there is one.
pub fn upcasting(inner: Box<dyn Step>, chain: Option<UpcastChain>) -> Box<dyn Step> {
    match chain {
        Some(chain) => Box::new(Upcasting { chain, inner }),
        None => inner,
    }
}

/// Several instances of one version, each folding a share of the keys (by a fixed hash of
/// the key, so every key's events go to one of them, in order), a batch's shares in
/// parallel on threads of their own. Keys are independent, so the outcomes and states are
/// those of one instance.
pub struct Parallel {
    shards: Vec<Box<dyn Step>>,
}

impl Parallel {
    /// Over `shards` (at least one), steps of the same version.
    pub fn new(shards: Vec<Box<dyn Step>>) -> Self {
        assert!(!shards.is_empty(), "a parallel step needs an instance");
        Parallel { shards }
    }

    /// `shards` as one step: the only one itself, else [`Parallel`] over them.
    pub fn of(mut shards: Vec<Box<dyn Step>>) -> Box<dyn Step> {
        match shards.len() {
            1 => shards.pop().expect("one"),
            _ => Box::new(Parallel::new(shards)),
        }
    }

    /// Which instance folds `key`.
    fn shard_of(&self, key: &str) -> usize {
        // SipHash with fixed keys: the same share-out in every process.
        let mut hasher = std::hash::DefaultHasher::new();
        std::hash::Hash::hash(key, &mut hasher);
        (std::hash::Hasher::finish(&hasher) % self.shards.len() as u64) as usize
    }
}

impl Step for Parallel {
    fn step(
        &mut self,
        manifest: &Manifest,
        state: Option<&Vec<u8>>,
        event: &Event,
    ) -> Result<(Vec<u8>, Vec<Effect>), StepError> {
        let i = self.shard_of(&manifest.state_key(event));
        self.shards[i].step(manifest, state, event)
    }

    fn migrates(&self) -> bool {
        self.shards[0].migrates()
    }

    fn fuel_used(&self) -> u64 {
        self.shards.iter().map(|s| s.fuel_used()).sum()
    }

    fn migrate(&mut self, from_version: u32, state: &[u8]) -> Result<Vec<u8>, String> {
        self.shards[0].migrate(from_version, state)
    }

    fn fold_batch(
        &mut self,
        manifest: &Manifest,
        events: &[Keyed<'_>],
        states: &HashMap<String, Vec<u8>>,
    ) -> Folded {
        let mut share: Vec<Vec<usize>> = vec![Vec::new(); self.shards.len()];
        for (i, e) in events.iter().enumerate() {
            share[self.shard_of(e.key)].push(i);
        }
        let mine =
            |indices: &[usize]| -> Vec<Keyed<'_>> { indices.iter().map(|&i| events[i]).collect() };
        let folded: Vec<Folded> = std::thread::scope(|scope| {
            let mut shards = self.shards.iter_mut().zip(&share);
            // The first share on this thread, the others on threads of their own.
            let (first, first_share) = shards.next().expect("at least one instance");
            let running: Vec<_> = shards
                .filter(|(_, indices)| !indices.is_empty())
                .map(|(shard, indices)| {
                    let events = mine(indices);
                    scope.spawn(move || shard.fold_batch(manifest, &events, states))
                })
                .collect();
            let mut folded = vec![first.fold_batch(manifest, &mine(first_share), states)];
            for r in running {
                folded.push(r.join().unwrap_or_else(|panic| std::panic::resume_unwind(panic)));
            }
            folded
        });
        let mut outcomes: Vec<Option<crate::pipeline::fold::Outcome>> =
            (0..events.len()).map(|_| None).collect();
        let mut states = HashMap::new();
        let nonempty = share.iter().enumerate().filter(|(i, s)| *i == 0 || !s.is_empty());
        for ((_, indices), part) in nonempty.zip(folded) {
            for (&i, outcome) in indices.iter().zip(part.outcomes) {
                outcomes[i] = Some(outcome);
            }
            states.extend(part.states);
        }
        Folded {
            outcomes: outcomes.into_iter().map(|o| o.expect("every event folded")).collect(),
            states,
        }
    }

    fn holds(&self, key: &str) -> bool {
        self.shards[self.shard_of(key)].holds(key)
    }

    fn forget_all(&mut self) {
        for shard in &mut self.shards {
            shard.forget_all();
        }
    }
}
