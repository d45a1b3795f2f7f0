//! Calling a guest: one instance per plugin, fuel and memory limits on every call.
//!
//! Guests are deterministic, so a failure is a property of (state, event): the caller decides
//! what to do with the event, never retries the call. A trap poisons the instance; the next
//! call gets a fresh one from the pre-instantiated component, initialised again.

use std::fmt;

use serde::{Deserialize, Serialize};

use wasmtime::{Store, StoreLimits, StoreLimitsBuilder, Trap};

use crate::bindings::{
    migration::Migration, policy::Policy, projection::Projection, types, upcaster::Upcaster, v2,
};
use crate::component::{LoadedComponent, MigrationExport, PluginPre};
use crate::event::Event;
use crate::manifest::{Limits, PluginKind};
use crate::wasi::HostState;

/// Which export was called.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GuestCall {
    /// `init`.
    Init,
    /// `apply`.
    Apply,
    /// `query`.
    Query,
    /// `decide`.
    Decide,
    /// `upcast`.
    Upcast,
    /// `migrate`.
    Migrate,
}

impl fmt::Display for GuestCall {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            GuestCall::Init => "init",
            GuestCall::Apply => "apply",
            GuestCall::Query => "query",
            GuestCall::Decide => "decide",
            GuestCall::Upcast => "upcast",
            GuestCall::Migrate => "migrate",
        })
    }
}

/// Why a guest call produced no result.
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum GuestError {
    /// The guest returned an error: a business failure, as data.
    #[error("{call} returned an error: {code}: {message}")]
    Returned {
        /// The export.
        call: GuestCall,
        /// The guest's code.
        code: String,
        /// The guest's message.
        message: String,
    },
    /// The guest trapped (a Rust guest's panic aborts this way).
    #[error("{call} trapped: {message}")]
    Trap {
        /// The export.
        call: GuestCall,
        /// What wasmtime reported.
        message: String,
        /// The guest's stack, innermost frame first.
        backtrace: Option<String>,
    },
    /// The call used all the fuel the manifest allows.
    #[error("{call} ran out of fuel after {fuel} units (limits.fuel); the guest may loop")]
    OutOfFuel {
        /// The export.
        call: GuestCall,
        /// The limit.
        fuel: u64,
    },
    /// The guest tried to grow memory past the manifest's cap.
    #[error("{call} exceeded the memory cap of {mib} MiB (limits.memory-mib)")]
    OutOfMemory {
        /// The export.
        call: GuestCall,
        /// The cap.
        mib: u64,
    },
    /// The guest returned something the contract does not allow.
    #[error("{call} returned an invalid result: {message}")]
    InvalidOutput {
        /// The export.
        call: GuestCall,
        /// What is wrong with it.
        message: String,
    },
}

impl GuestError {
    /// A short name of the failure's kind: `error`, `trap`, `fuel`, `memory`, `invalid-output`.
    pub fn kind(&self) -> &'static str {
        match self {
            GuestError::Returned { .. } => "error",
            GuestError::Trap { .. } => "trap",
            GuestError::OutOfFuel { .. } => "fuel",
            GuestError::OutOfMemory { .. } => "memory",
            GuestError::InvalidOutput { .. } => "invalid-output",
        }
    }
}

enum Bound {
    Projection(Projection),
    Policy(Policy),
    Upcaster(Upcaster),
    ProjectionV2(v2::projection::Projection),
    PolicyV2(v2::policy::Policy),
}

/// A live instance's `migrate`, by contract version.
enum Migrator {
    V1(Migration),
    V2(v2::migration::Migration),
}

/// What one `fold` (or a policy's batch `decide`) returned, checked for its shape.
pub struct BatchFold {
    /// Per event, in order.
    pub outcomes: BatchOutcomes,
    /// Per changed key (an index into the batch's keys), its state after the batch.
    pub states: Vec<(u32, Vec<u8>)>,
}

/// A batch's guest-side outcomes before their effects are checked: effects, or decisions.
pub enum BatchOutcomes {
    /// A projection's.
    Effects(Vec<Result<Vec<types::Effect>, types::Error>>),
    /// A policy's.
    Decisions(Vec<Result<Vec<types::Decision>, types::Error>>),
}

/// A live instance of one plugin version.
pub struct GuestInstance {
    pre: PluginPre,
    migration: Option<MigrationExport>,
    /// The plugin's name, for what its guest writes to stdout and stderr; set when the
    /// component imports WASI.
    wasi_name: Option<String>,
    /// How calls are bounded (see [`crate::component::ComponentLoader::measuring`]).
    cpu: crate::component::CpuLimit,
    engine: wasmtime::Engine,
    limits: Limits,
    config: String,
    live: Option<(Store<HostState>, Bound, Option<Migrator>)>,
    instantiations: u64,
    fuel_used: u64,
    calls: u64,
}

impl GuestInstance {
    /// Instantiates `component` of plugin `name` and calls its `init` with `config` (JSON), if
    /// its world has one.
    pub fn new(
        name: &str,
        component: &LoadedComponent,
        engine: &wasmtime::Engine,
        limits: Limits,
        config: String,
    ) -> Result<Self, GuestError> {
        let mut guest = GuestInstance {
            pre: component.pre.clone(),
            migration: component.migration.clone(),
            wasi_name: component.wasi.then(|| name.to_string()),
            cpu: component.cpu,
            engine: engine.clone(),
            limits,
            config,
            live: None,
            instantiations: 0,
            fuel_used: 0,
            calls: 0,
        };
        guest.ensure_live()?;
        Ok(guest)
    }

    /// The world this instance serves.
    pub fn kind(&self) -> PluginKind {
        match self.pre {
            PluginPre::Projection(_) => PluginKind::Projection,
            PluginPre::Policy(_) => PluginKind::Policy,
            PluginPre::Upcaster(_) => PluginKind::Upcaster,
            PluginPre::ProjectionV2(_) => PluginKind::Projection,
            PluginPre::PolicyV2(_) => PluginKind::Policy,
        }
    }

    /// Whether the component folds batches and keeps states between calls (contract 0.2.0).
    pub fn batches(&self) -> bool {
        matches!(self.pre, PluginPre::ProjectionV2(_) | PluginPre::PolicyV2(_))
    }

    /// Fuel the calls have consumed so far (0 unless fuel bounds them).
    pub fn fuel_used(&self) -> u64 {
        self.fuel_used
    }

    /// Calls made into the guest so far (every export, `init` aside).
    pub fn calls(&self) -> u64 {
        self.calls
    }

    /// The limits every call runs within (the manifest's, unless the instance was made with
    /// others).
    pub fn limits(&self) -> &Limits {
        &self.limits
    }

    /// Whether an instance is live (a trap drops it; the next call makes a new one).
    pub fn is_live(&self) -> bool {
        self.live.is_some()
    }

    /// How many times an instance was created (1 + one per trap recovered from).
    pub fn instantiations(&self) -> u64 {
        self.instantiations
    }

    fn ensure_live(&mut self) -> Result<(), GuestError> {
        if self.live.is_some() {
            return Ok(());
        }
        let limits = store_limits(&self.limits);
        let captured = self.wasi_name.as_ref().map(|_| crate::wasi::Captured::default());
        let wasi = self
            .wasi_name
            .as_deref()
            .zip(captured.as_ref())
            .map(|(n, c)| crate::wasi::deny_all(n, c));
        let state =
            HostState { limits, wasi, captured: captured.clone(), table: Default::default() };
        let mut store = Store::new(&self.engine, state);
        store.limiter(|s| &mut s.limits);
        self.instantiations += 1;
        let output = captured.as_ref();
        let fail = |e| classify(GuestCall::Init, e, &self.limits, output);
        match self.cpu {
            crate::component::CpuLimit::Fuel => store.set_fuel(self.limits.fuel).map_err(fail)?,
            crate::component::CpuLimit::Epoch => store.set_epoch_deadline(u64::MAX / 2),
            crate::component::CpuLimit::Unbounded => {}
        }
        let (bound, instance) = match &self.pre {
            PluginPre::Projection(pre) => {
                let instance = pre.instance_pre().instantiate(&mut store).map_err(fail)?;
                let p = Projection::new(&mut store, &instance).map_err(fail)?;
                p.call_init(&mut store, &self.config)
                    .map_err(fail)?
                    .map_err(|e| returned(GuestCall::Init, e))?;
                (Bound::Projection(p), instance)
            }
            PluginPre::Policy(pre) => {
                let instance = pre.instance_pre().instantiate(&mut store).map_err(fail)?;
                let p = Policy::new(&mut store, &instance).map_err(fail)?;
                p.call_init(&mut store, &self.config)
                    .map_err(fail)?
                    .map_err(|e| returned(GuestCall::Init, e))?;
                (Bound::Policy(p), instance)
            }
            PluginPre::Upcaster(pre) => {
                let instance = pre.instance_pre().instantiate(&mut store).map_err(fail)?;
                (Bound::Upcaster(Upcaster::new(&mut store, &instance).map_err(fail)?), instance)
            }
            PluginPre::ProjectionV2(pre) => {
                let instance = pre.instance_pre().instantiate(&mut store).map_err(fail)?;
                let p = v2::projection::Projection::new(&mut store, &instance).map_err(fail)?;
                p.call_init(&mut store, &self.config)
                    .map_err(fail)?
                    .map_err(|e| returned(GuestCall::Init, e))?;
                (Bound::ProjectionV2(p), instance)
            }
            PluginPre::PolicyV2(pre) => {
                let instance = pre.instance_pre().instantiate(&mut store).map_err(fail)?;
                let p = v2::policy::Policy::new(&mut store, &instance).map_err(fail)?;
                p.call_init(&mut store, &self.config)
                    .map_err(fail)?
                    .map_err(|e| returned(GuestCall::Init, e))?;
                (Bound::PolicyV2(p), instance)
            }
        };
        // A `migrate` of the wrong type fails here, before any event is folded.
        let mismatch = |e: wasmtime::Error| GuestError::InvalidOutput {
            call: GuestCall::Migrate,
            message: format!("the `migration` export does not match the contract: {e:#}"),
        };
        let migration = match &self.migration {
            Some(MigrationExport::V1(indices)) => {
                Some(Migrator::V1(indices.load(&mut store, &instance).map_err(mismatch)?))
            }
            Some(MigrationExport::V2(indices)) => {
                Some(Migrator::V2(indices.load(&mut store, &instance).map_err(mismatch)?))
            }
            None => None,
        };
        self.live = Some((store, bound, migration));
        Ok(())
    }

    /// Runs one call with a fresh fuel budget; a trap drops the instance.
    fn call<T>(
        &mut self,
        call: GuestCall,
        f: impl FnOnce(
            &mut Store<HostState>,
            &Bound,
            Option<&Migrator>,
        ) -> wasmtime::Result<Result<T, types::Error>>,
    ) -> Result<T, GuestError> {
        let limits = self.limits.clone();
        self.call_within(call, limits, f)
    }

    /// [`GuestInstance::call`] within `limits` (fuel and memory) instead of the plugin's.
    fn call_within<T>(
        &mut self,
        call: GuestCall,
        limits: Limits,
        f: impl FnOnce(
            &mut Store<HostState>,
            &Bound,
            Option<&Migrator>,
        ) -> wasmtime::Result<Result<T, types::Error>>,
    ) -> Result<T, GuestError> {
        self.ensure_live()?;
        self.calls += 1;
        let (store, bound, migration) = self.live.as_mut().expect("instance is live");
        store.data_mut().limits = store_limits(&limits);
        let captured = store.data().captured.clone();
        let output = captured.as_ref();
        if let Some(c) = output {
            c.clear();
        }
        if self.cpu == crate::component::CpuLimit::Fuel {
            store.set_fuel(limits.fuel).map_err(|e| classify(call, e, &limits, output))?;
        }
        let outcome = f(store, bound, migration.as_ref());
        if self.cpu == crate::component::CpuLimit::Fuel {
            self.fuel_used += limits.fuel.saturating_sub(store.get_fuel().unwrap_or(0));
        }
        match outcome {
            Ok(Ok(value)) => Ok(value),
            Ok(Err(e)) => Err(returned(call, e)),
            Err(e) => {
                self.live = None;
                Err(classify(call, e, &limits, output))
            }
        }
    }

    /// `apply`: folds `event` into `state` (a projection).
    pub fn apply(
        &mut self,
        state: Option<&Vec<u8>>,
        event: &Event,
    ) -> Result<(Vec<u8>, Vec<types::Effect>), GuestError> {
        if self.batches() {
            let (outcomes, state) = self.fold_one(GuestCall::Apply, state, event)?;
            let BatchOutcomes::Effects(mut outcomes) = outcomes else {
                unreachable!("a projection's batch")
            };
            return outcomes
                .pop()
                .expect("one outcome, checked")
                .map(|e| (state, e))
                .map_err(|e| returned(GuestCall::Apply, e));
        }
        let event = types::Event::from(event);
        self.call(GuestCall::Apply, |store, bound, _| match bound {
            Bound::Projection(p) => p.call_apply(store, state, &event),
            _ => Err(wasmtime::Error::msg("this plugin is not a projection")),
        })
    }

    /// `decide`: a policy's decisions about `event`.
    pub fn decide(
        &mut self,
        state: Option<&Vec<u8>>,
        event: &Event,
    ) -> Result<(Vec<u8>, Vec<types::Decision>), GuestError> {
        if self.batches() {
            let (outcomes, state) = self.fold_one(GuestCall::Decide, state, event)?;
            let BatchOutcomes::Decisions(mut outcomes) = outcomes else {
                unreachable!("a policy's batch")
            };
            return outcomes
                .pop()
                .expect("one outcome, checked")
                .map(|d| (state, d))
                .map_err(|e| returned(GuestCall::Decide, e));
        }
        let event = types::Event::from(event);
        self.call(GuestCall::Decide, |store, bound, _| match bound {
            Bound::Policy(p) => p.call_decide(store, state, &event),
            _ => Err(wasmtime::Error::msg("this plugin is not a policy")),
        })
    }

    /// One event through a 0.2.0 instance, its key seeded with `state`: the outcome and, if
    /// it was accepted, the key's new state.
    fn fold_one(
        &mut self,
        call: GuestCall,
        state: Option<&Vec<u8>>,
        event: &Event,
    ) -> Result<(BatchOutcomes, Vec<u8>), GuestError> {
        let batch = v2::batching::Batch {
            keys: vec![String::new()],
            seeds: vec![v2::batching::Seed { key: 0, state: state.cloned() }],
            events: vec![v2::batching::KeyedEvent { key: 0, event: types::Event::from(event) }],
        };
        let BatchFold { outcomes, mut states } = self.fold_batch(&batch)?;
        let accepted = match &outcomes {
            BatchOutcomes::Effects(o) => o.first().map(Result::is_ok),
            BatchOutcomes::Decisions(o) => o.first().map(Result::is_ok),
        };
        let invalid = |message: &str| GuestError::InvalidOutput { call, message: message.into() };
        match accepted {
            None => Err(invalid("the batch of one event came back with no outcome")),
            Some(false) => Ok((outcomes, Vec::new())),
            Some(true) => match states.pop() {
                Some((0, state)) if states.is_empty() => Ok((outcomes, state)),
                _ => Err(invalid("the event was accepted but its key's state did not come back")),
            },
        }
    }

    /// `fold` (a projection) or the batch `decide` (a policy) of a 0.2.0 instance: one call,
    /// one fuel budget, for the whole batch. Checks that there is one outcome per event and
    /// that changed states name the batch's keys, each once.
    pub fn fold_batch(&mut self, batch: &v2::batching::Batch) -> Result<BatchFold, GuestError> {
        let projection = matches!(self.pre, PluginPre::ProjectionV2(_));
        let call = if projection { GuestCall::Apply } else { GuestCall::Decide };
        let (outcomes, states) = self.call(call, |store, bound, _| match bound {
            Bound::ProjectionV2(p) => p.call_fold(store, batch).map(|f| {
                let states = f.states.into_iter().map(|c| (c.key, c.state)).collect::<Vec<_>>();
                Ok((BatchOutcomes::Effects(f.outcomes), states))
            }),
            Bound::PolicyV2(p) => p.call_decide(store, batch).map(|d| {
                let states = d.states.into_iter().map(|c| (c.key, c.state)).collect::<Vec<_>>();
                Ok((BatchOutcomes::Decisions(d.outcomes), states))
            }),
            _ => Err(wasmtime::Error::msg("this plugin does not fold batches (contract 0.1.0)")),
        })?;
        let count = match &outcomes {
            BatchOutcomes::Effects(o) => o.len(),
            BatchOutcomes::Decisions(o) => o.len(),
        };
        let invalid = |message: String| GuestError::InvalidOutput { call, message };
        if count != batch.events.len() {
            return Err(invalid(format!(
                "{count} outcomes for a batch of {} events",
                batch.events.len()
            )));
        }
        let mut seen = vec![false; batch.keys.len()];
        for (key, _) in &states {
            match seen.get_mut(*key as usize) {
                Some(s) if !*s => *s = true,
                Some(_) => return Err(invalid(format!("key {key} came back twice"))),
                None => return Err(invalid(format!("a state for key {key}, not in the batch"))),
            }
        }
        Ok(BatchFold { outcomes, states })
    }

    /// Drops the states a 0.2.0 instance holds for `keys` (nothing for 0.1.0).
    pub fn forget(&mut self, keys: &[String]) -> Result<(), GuestError> {
        if !self.batches() || self.live.is_none() {
            return Ok(());
        }
        self.call(GuestCall::Apply, |store, bound, _| match bound {
            Bound::ProjectionV2(p) => p.call_forget(store, keys).map(Ok),
            Bound::PolicyV2(p) => p.call_forget(store, keys).map(Ok),
            _ => Ok(Ok(())),
        })
    }

    /// `query`: a projection's answer to `request` over `states`.
    ///
    /// The budget grows with the states asked about: the manifest's fuel for every
    /// [`QUERY_STATES_PER_FUEL`] states (one budget for fewer), and its memory cap plus room
    /// for the states themselves, so a query over every key costs in proportion to the keys,
    /// as an `apply` does per event. An instance that grew past its cap for a large query is
    /// dropped afterwards (the next call gets a fresh one), so its memory is not kept.
    pub fn query(
        &mut self,
        states: &[types::KeyedState],
        request: &str,
    ) -> Result<String, GuestError> {
        let mut limits = self.limits.clone();
        let parts = states.len().div_ceil(QUERY_STATES_PER_FUEL).max(1) as u64;
        limits.fuel = limits.fuel.saturating_mul(parts);
        // The states cross into guest memory, and are decoded there: room for three copies.
        let bytes: usize = states.iter().map(|s| s.key.len() + s.state.len() + 16).sum();
        let extra_mib = (bytes as u64).saturating_mul(3).div_ceil(1 << 20);
        limits.memory_mib = limits.memory_mib.saturating_add(extra_mib);
        let raised = parts > 1 || extra_mib > 1;
        let answer = self.call_within(GuestCall::Query, limits, |store, bound, _| match bound {
            Bound::Projection(p) => p.call_query(store, states, request),
            Bound::ProjectionV2(p) => p.call_query(store, states, request),
            _ => Err(wasmtime::Error::msg("this plugin is not a projection")),
        });
        if raised {
            self.live = None;
        }
        answer
    }

    /// Whether the component exports `migrate`.
    pub fn migrates(&self) -> bool {
        self.migration.is_some()
    }

    /// `migrate`: `state`, written under state version `from_version`, in the current one.
    pub fn migrate(&mut self, from_version: u32, state: &[u8]) -> Result<Vec<u8>, GuestError> {
        if self.migration.is_none() {
            return Err(GuestError::InvalidOutput {
                call: GuestCall::Migrate,
                message: "this component does not export `migrate`".into(),
            });
        }
        let state = state.to_vec();
        self.call(GuestCall::Migrate, |store, _, migration| match migration {
            Some(Migrator::V1(m)) => m.call_migrate(store, from_version, &state),
            Some(Migrator::V2(m)) => m.call_migrate(store, from_version, &state),
            None => Err(wasmtime::Error::msg("this component does not export `migrate`")),
        })
    }

    /// `upcast`: the event in its next schema version.
    pub fn upcast(&mut self, event: &Event) -> Result<Event, GuestError> {
        let wit_event = types::Event::from(event);
        let out = self.call(GuestCall::Upcast, |store, bound, _| match bound {
            Bound::Upcaster(u) => u.call_upcast(store, &wit_event),
            _ => Err(wasmtime::Error::msg("this plugin is not an upcaster")),
        })?;
        let out = Event::try_from(out)
            .map_err(|message| GuestError::InvalidOutput { call: GuestCall::Upcast, message })?;
        if out.sequence != event.sequence || out.message_id != event.message_id {
            return Err(GuestError::InvalidOutput {
                call: GuestCall::Upcast,
                message: "an upcaster must keep the event's sequence and message id".into(),
            });
        }
        if out.schema_version <= event.schema_version {
            return Err(GuestError::InvalidOutput {
                call: GuestCall::Upcast,
                message: format!(
                    "schema version went from {} to {}; an upcaster must raise it",
                    event.schema_version, out.schema_version
                ),
            });
        }
        Ok(out)
    }
}

/// How many states a `query` is given the manifest's fuel for (see [`GuestInstance::query`]).
pub const QUERY_STATES_PER_FUEL: usize = 1_000;

/// The store limits of a call bounded by `limits`.
fn store_limits(limits: &Limits) -> StoreLimits {
    StoreLimitsBuilder::new()
        .memory_size(
            usize::try_from(limits.memory_mib.saturating_mul(1 << 20)).unwrap_or(usize::MAX),
        )
        .instances(limits.instances)
        .tables(limits.tables)
        .memories(4)
        .trap_on_grow_failure(true)
        .build()
}

fn returned(call: GuestCall, e: types::Error) -> GuestError {
    GuestError::Returned { call, code: e.code, message: e.message }
}

/// What a guest wrote, without the lines its toolchain's runtime adds to every uncaught
/// exception (componentize-py's Rust runtime panics after printing the traceback;
/// componentize-js says how it aborts).
fn without_noise(text: &str) -> String {
    let python = crate::wasi::python_uncaught(text);
    let noise = |line: &str| {
        crate::wasi::js_runtime_line(line) || python && crate::wasi::python_runtime_line(line)
    };
    let kept: Vec<&str> = text.lines().filter(|l| !noise(l)).collect();
    kept.join("\n").trim_end().to_string()
}

/// A trapped guest's stack, innermost frame first, as an author reads it: function names
/// without their hashes, the frames of Rust's runtime, panic machinery, the bindings and the
/// SDK left out (counted), no code offsets (they change with every build). All frames when
/// none is the plugin's own.
fn guest_stack(trace: &wasmtime::WasmBacktrace) -> String {
    const RUNTIME: [&str; 12] = [
        "core::",
        "std::",
        "alloc::",
        "__rust",
        "rust_begin_unwind",
        "rust_panic",
        "panic_abort",
        "dlmalloc",
        "wit_bindgen",
        "jetfold_guest::",
        "cabi_",
        "__wasm",
    ];
    let names: Vec<String> = trace
        .frames()
        .iter()
        .map(|frame| match frame.func_name() {
            Some(name) => match rustc_demangle::try_demangle(name) {
                Ok(demangled) => format!("{demangled:#}"),
                Err(_) => name.to_string(),
            },
            None => format!("<function {}>", frame.func_index()),
        })
        .collect();
    let runtime = |name: &str| {
        // `<T as Trait>::f` and `<T>::f` belong to whoever owns T: `<my::State as
        // jetfold_guest::Projection>::apply` is the plugin's, `<core::… as …>` the runtime's.
        let owner = name.trim_start_matches('<');
        RUNTIME.iter().any(|prefix| owner.starts_with(prefix))
    };
    let own: Vec<&String> = names.iter().filter(|n| !runtime(n)).collect();
    let (shown, left_out) = match own.len() {
        0 => (names.iter().collect(), 0),
        n => (own, names.len() - n),
    };
    let mut out = match left_out {
        0 => "guest stack, innermost first:".to_string(),
        n => format!(
            "guest stack, innermost first ({n} frame{} of Rust's runtime and the SDK left out):",
            if n == 1 { "" } else { "s" }
        ),
    };
    for name in shown {
        out.push_str("\n  ");
        out.push_str(name);
    }
    out
}

/// Turns a wasmtime error into the failure's cause. `output` is what a guest that imports
/// WASI (Python, JavaScript, a Rust guest built for WASI) wrote during the call; none for one
/// that cannot write. A trap says what the guest wrote, if it wrote anything (a Python traceback, a JavaScript exception, a Rust panic
/// message); the wasm backtrace, which then shows only the interpreter's frames, is kept for
/// a guest that wrote nothing.
fn classify(
    call: GuestCall,
    error: wasmtime::Error,
    limits: &Limits,
    output: Option<&crate::wasi::Captured>,
) -> GuestError {
    let written = output.and_then(crate::wasi::Captured::text).map(|t| without_noise(&t));
    let backtrace = match written {
        Some(_) => None,
        None => error.downcast_ref::<wasmtime::WasmBacktrace>().map(guest_stack),
    };
    let trap = |message: String| GuestError::Trap {
        call,
        message: match &written {
            Some(text) => format!("{message}; the guest wrote:\n{text}"),
            None => message,
        },
        backtrace: backtrace.clone(),
    };
    match error.downcast_ref::<Trap>() {
        Some(Trap::OutOfFuel) => GuestError::OutOfFuel { call, fuel: limits.fuel },
        Some(Trap::UnreachableCodeReached) => trap(match (output, &written) {
            (None, _) => "wasm `unreachable` instruction executed (a Rust guest panicked or \
                          aborted; run its native tests to see the panic message)"
                .into(),
            (Some(_), Some(_)) => "the guest aborted (wasm `unreachable`)".into(),
            (Some(_), None) => "the guest aborted (wasm `unreachable`) and wrote nothing to \
                                stdout or stderr: in Python or JavaScript, an uncaught \
                                exception the toolchain could not print"
                .into(),
        }),
        Some(other) => trap(other.to_string()),
        None => {
            // The store limiter's refusal (`trap_on_grow_failure`) surfaces as a plain error.
            let cause = error.root_cause().to_string();
            if cause.contains("growing memory") || cause.contains("memory growth") {
                GuestError::OutOfMemory { call, mib: limits.memory_mib }
            } else {
                trap(cause)
            }
        }
    }
}

/// A guest call's failure as reports and dead letters record it (`jetfold test`'s golden
/// files, replays, queries, the daemon's rejections).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StepError {
    /// `error` (returned by the guest), `trap`, `fuel`, `memory`, `invalid-output` or
    /// `rejected-effect`.
    pub kind: String,
    /// The guest's error code, for `error`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub code: Option<String>,
    /// What happened.
    pub message: String,
    /// The guest's stack for traps (not part of golden comparisons).
    #[serde(skip)]
    pub backtrace: Option<String>,
}

impl From<GuestError> for StepError {
    fn from(e: GuestError) -> Self {
        let kind = e.kind().to_string();
        match e {
            GuestError::Returned { code, message, .. } => {
                StepError { kind, code: Some(code), message, backtrace: None }
            }
            GuestError::Trap { ref backtrace, .. } => {
                StepError { kind, code: None, backtrace: backtrace.clone(), message: e.to_string() }
            }
            other => StepError { kind, code: None, message: other.to_string(), backtrace: None },
        }
    }
}
