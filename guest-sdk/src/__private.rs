//! Glue between the generated bindings (expanded in the plugin crate by the export macros)
//! and the traits. Not part of the API.

use std::any::Any;
use std::cell::RefCell;
use std::collections::HashMap;
use std::marker::PhantomData;
use std::sync::OnceLock;

use chrono::{DateTime, Utc};
use serde::de::DeserializeOwned;

use crate::{Context, Effect, Error, Event, Json, Migrate, Policy, Projection, Upcaster, payload};

pub use wit_bindgen;

/// An event as it crosses the boundary, before its payload is decoded.
#[derive(Clone)]
pub struct RawEvent {
    pub sequence: u64,
    pub subject: String,
    pub message_id: String,
    pub event_type: String,
    pub aggregate_id: String,
    pub correlation_id: Option<String>,
    pub causation_id: Option<String>,
    pub seconds: i64,
    pub nanoseconds: u32,
    pub schema_version: u32,
    pub headers: Vec<(String, String)>,
    pub payload: Vec<u8>,
    pub content_type: String,
}

static CONFIG: OnceLock<Box<dyn Any + Send + Sync>> = OnceLock::new();

pub fn init_projection<P, E, C>(config: &str) -> Result<(), Error>
where
    P: Projection<E, C>,
    E: DeserializeOwned,
    C: DeserializeOwned + Send + Sync + 'static,
{
    init::<C>(config)
}

pub fn init_policy<P, E, C>(config: &str) -> Result<(), Error>
where
    P: Policy<E, C>,
    E: DeserializeOwned,
    C: DeserializeOwned + Send + Sync + 'static,
{
    init::<C>(config)
}

fn init<C: DeserializeOwned + Send + Sync + 'static>(config: &str) -> Result<(), Error> {
    let parsed: C = serde_json::from_str(config).map_err(|e| Error::config(e.to_string()))?;
    // A fresh instance is initialised once; a second init keeps the first configuration.
    let _ = CONFIG.set(Box::new(parsed));
    Ok(())
}

fn config<C: 'static>() -> Result<&'static C, Error> {
    CONFIG
        .get()
        .and_then(|c| c.downcast_ref::<C>())
        .ok_or_else(|| Error::new("not-initialised", "the host called the plugin before `init`"))
}

fn decode_event<T: DeserializeOwned>(raw: RawEvent) -> Result<Event<T>, Error> {
    let time = DateTime::<Utc>::from_timestamp(raw.seconds, raw.nanoseconds).ok_or_else(|| {
        Error::new("invalid-event", format!("event time {}s is out of range", raw.seconds))
    })?;
    let payload = payload::decode::<T>(&raw.event_type, &raw.payload).map_err(|e| {
        Error::new("invalid-payload", format!("cannot decode a `{}` payload: {e}", raw.event_type))
    })?;
    Ok(Event {
        sequence: raw.sequence,
        subject: raw.subject,
        message_id: raw.message_id,
        event_type: raw.event_type,
        aggregate_id: raw.aggregate_id,
        correlation_id: raw.correlation_id,
        causation_id: raw.causation_id,
        time,
        schema_version: raw.schema_version,
        headers: raw.headers,
        content_type: raw.content_type,
        payload,
    })
}

fn decode_state<S: Default + DeserializeOwned>(state: Option<&[u8]>) -> Result<S, Error> {
    match state {
        None => Ok(S::default()),
        Some(bytes) => serde_json::from_slice(bytes).map_err(|e| {
            Error::new("invalid-state", format!("cannot decode the stored state: {e}"))
        }),
    }
}

fn encode_state<S: serde::Serialize>(state: &S) -> Result<Vec<u8>, Error> {
    serde_json::to_vec(state)
        .map_err(|e| Error::new("encode", format!("cannot encode the state: {e}")))
}

/// One fold step: decode the key's state and the event, run `f`, encode the new state.
fn step<S, E, C>(
    state: Option<Vec<u8>>,
    event: RawEvent,
    f: impl FnOnce(&mut S, Event<E>, &mut Context<C>) -> Result<(), Error>,
) -> Result<(Vec<u8>, Vec<Effect>), Error>
where
    S: Default + DeserializeOwned + serde::Serialize,
    E: DeserializeOwned,
    C: Send + Sync + 'static,
{
    let mut state: S = decode_state(state.as_deref())?;
    let event = decode_event::<E>(event)?;
    let mut cx = Context::new(config::<C>()?);
    f(&mut state, event, &mut cx)?;
    let effects = cx.finish()?;
    Ok((encode_state(&state)?, effects))
}

pub fn apply<P, E, C>(
    state: Option<Vec<u8>>,
    event: RawEvent,
) -> Result<(Vec<u8>, Vec<Effect>), Error>
where
    P: Projection<E, C>,
    E: DeserializeOwned,
    C: DeserializeOwned + Send + Sync + 'static,
{
    step(state, event, P::apply)
}

pub fn query<P, E, C>(states: Vec<(String, Vec<u8>)>, request: String) -> Result<String, Error>
where
    P: Projection<E, C>,
    E: DeserializeOwned,
    C: DeserializeOwned + Send + Sync + 'static,
{
    let states = states
        .into_iter()
        .map(|(key, bytes)| Ok((key, decode_state::<P>(Some(&bytes))?)))
        .collect::<Result<Vec<_>, Error>>()?;
    let request: Json = serde_json::from_str(&request)
        .map_err(|e| Error::new("invalid-request", format!("the query is not JSON: {e}")))?;
    let response = P::query(states, request, config::<C>()?)?;
    serde_json::to_string(&response).map_err(|e| Error::new("encode", e.to_string()))
}

pub fn decide<P, E, C>(
    state: Option<Vec<u8>>,
    event: RawEvent,
) -> Result<(Vec<u8>, Vec<Effect>), Error>
where
    P: Policy<E, C>,
    E: DeserializeOwned,
    C: DeserializeOwned + Send + Sync + 'static,
{
    step(state, event, P::decide)
}

pub fn migrate<M: Migrate + serde::Serialize>(
    from_version: u32,
    state: Vec<u8>,
) -> Result<Vec<u8>, Error> {
    let old: Json = serde_json::from_slice(&state).map_err(|e| {
        Error::new("invalid-state", format!("the state of version {from_version} is not JSON: {e}"))
    })?;
    encode_state(&M::migrate(from_version, old)?)
}

pub fn upcast<U: Upcaster>(event: RawEvent) -> Result<RawEvent, Error> {
    let event = decode_event::<Json>(event)?;
    let out = U::upcast(event)?;
    let payload =
        serde_json::to_vec(&out.payload).map_err(|e| Error::new("encode", e.to_string()))?;
    Ok(RawEvent {
        sequence: out.sequence,
        subject: out.subject,
        message_id: out.message_id,
        event_type: out.event_type,
        aggregate_id: out.aggregate_id,
        correlation_id: out.correlation_id,
        causation_id: out.causation_id,
        seconds: out.time.timestamp(),
        nanoseconds: out.time.timestamp_subsec_nanos(),
        schema_version: out.schema_version,
        headers: out.headers,
        payload,
        content_type: out.content_type,
    })
}

/// How a resident state's baseline is kept for a batch (see `fold_batch`).
pub enum Backup<S> {
    /// A copy (the state type is `Clone`).
    Copy(fn(&S) -> S),
    /// The state encoded, decoded again when needed.
    Encoded,
}

/// Picks a [`Backup`] for a concrete state type at the export macro's expansion: `Copy` if
/// it is `Clone`, else `Encoded` (autoref specialisation; `(&&Probe::<S>(..)).backup()`).
pub struct Probe<S>(pub PhantomData<S>);

/// `Copy` for a `Clone` state.
pub trait BackupByCopy<S> {
    fn backup(&self) -> Backup<S>;
}
impl<S: Clone> BackupByCopy<S> for &Probe<S> {
    fn backup(&self) -> Backup<S> {
        Backup::Copy(S::clone)
    }
}

/// `Encoded` for any other.
pub trait BackupByEncoding<S> {
    fn backup(&self) -> Backup<S>;
}
impl<S> BackupByEncoding<S> for Probe<S> {
    fn backup(&self) -> Backup<S> {
        Backup::Encoded
    }
}

thread_local! {
    /// The decoded states this instance holds, by key (a `HashMap<String, S>`).
    static RESIDENT: RefCell<Option<Box<dyn Any>>> = const { RefCell::new(None) };
}

fn with_resident<S: 'static, R>(f: impl FnOnce(&mut HashMap<String, S>) -> R) -> R {
    RESIDENT.with(|cell| {
        let mut slot = cell.borrow_mut();
        let map = slot.get_or_insert_with(|| Box::new(HashMap::<String, S>::new()));
        f(map.downcast_mut::<HashMap<String, S>>().expect("one state type per instance"))
    })
}

/// A batch as the export macros hand it over: keys, seeds (key index, state) and events
/// (key index, event).
pub struct RawBatch {
    pub keys: Vec<String>,
    pub seeds: Vec<(u32, Option<Vec<u8>>)>,
    pub events: Vec<(u32, RawEvent)>,
}

/// Per event its effects or error, and the encoded states of the keys accepted events folded.
pub type BatchResult = (Vec<Result<Vec<Effect>, Error>>, Vec<(u32, Vec<u8>)>);

/// A plugin's per-event function: `Projection::apply` or `Policy::decide`.
type Fold<S, E, C> = fn(&mut S, Event<E>, &mut Context<C>) -> Result<(), Error>;

/// What a key's state was when the batch first touched it, so that a rejected event can
/// leave the key as the one-event-at-a-time fold would.
enum Baseline<S> {
    /// The state the host seeded in this batch, as it came (`None`: the default state).
    Seed(Option<Vec<u8>>),
    /// A copy of the resident state (the state type is `Clone`).
    Copy(S),
    /// The resident state, encoded.
    Encoded(Vec<u8>),
}

/// A key's undo record within one batch: its baseline and copies of the events accepted
/// since, to fold again onto the baseline when a later event of the key is rejected.
struct Undo<S> {
    baseline: Baseline<S>,
    redo: Vec<RawEvent>,
}

impl<S: Default + DeserializeOwned + serde::Serialize> Undo<S> {
    fn of(state: &S, backup: &Backup<S>) -> Result<Self, Error> {
        let baseline = match backup {
            Backup::Copy(copy) => Baseline::Copy(copy(state)),
            Backup::Encoded => Baseline::Encoded(encode_state(state)?),
        };
        Ok(Undo { baseline, redo: Vec::new() })
    }

    /// The baseline, decoded or copied (the record keeps it).
    fn restore(&self, backup: &Backup<S>) -> Result<S, Error> {
        match (&self.baseline, backup) {
            (Baseline::Seed(bytes), _) => decode_state(bytes.as_deref()),
            (Baseline::Copy(s), Backup::Copy(copy)) => Ok(copy(s)),
            (Baseline::Copy(_), Backup::Encoded) => unreachable!("a copy needs a Clone state"),
            (Baseline::Encoded(bytes), _) => decode_state(Some(bytes)),
        }
    }
}

/// Folds a batch into the resident states: seeds replace what is held, each event runs `f`
/// on its key's decoded state, and every key an accepted event folded is encoded once at the
/// end. No copy of a state is taken per event: the first event of a key in the batch records
/// the key's baseline (the seed itself, or one copy), the accepted events after it are kept,
/// and a rejected event puts its key back to the baseline with those events folded again,
/// which is the state before the rejected event because plugins are pure.
fn fold_batch<S, E, C>(batch: RawBatch, backup: Backup<S>, f: Fold<S, E, C>) -> BatchResult
where
    S: Default + DeserializeOwned + serde::Serialize + 'static,
    E: DeserializeOwned,
    C: Send + Sync + 'static,
{
    let RawBatch { keys, seeds, events } = batch;
    with_resident::<S, _>(|held| {
        let mut broken: HashMap<u32, Error> = HashMap::new();
        let mut undo: Vec<Option<Undo<S>>> = (0..keys.len()).map(|_| None).collect();
        for (key, state) in seeds {
            let name = &keys[key as usize];
            match decode_state::<S>(state.as_deref()) {
                Ok(s) => {
                    held.insert(name.clone(), s);
                    undo[key as usize] =
                        Some(Undo { baseline: Baseline::Seed(state), redo: Vec::new() });
                }
                Err(e) => {
                    held.remove(name);
                    broken.insert(key, e);
                }
            }
        }
        // Events after which their key has another in the batch: only those are kept for a redo.
        let mut last = vec![usize::MAX; keys.len()];
        for (i, (key, _)) in events.iter().enumerate() {
            last[*key as usize] = i;
        }
        let mut changed = vec![false; keys.len()];
        let mut outcomes = Vec::with_capacity(events.len());
        for (i, (key, raw)) in events.into_iter().enumerate() {
            if let Some(e) = broken.get(&key) {
                outcomes.push(Err(e.clone()));
                continue;
            }
            let k = key as usize;
            let name = &keys[k];
            let Some(state) = held.get_mut(name) else {
                panic!(
                    "the host sent an event for key `{name}`, which this instance neither holds nor was given"
                );
            };
            let record = match &mut undo[k] {
                Some(record) => record,
                slot => match Undo::of(state, &backup) {
                    Ok(record) => slot.insert(record),
                    Err(e) => {
                        outcomes.push(Err(e));
                        continue;
                    }
                },
            };
            let keep = (last[k] != i).then(|| raw.clone());
            let mut ran = false;
            let outcome = (|| {
                let event = decode_event::<E>(raw)?;
                let mut cx = Context::new(config::<C>()?);
                ran = true;
                f(state, event, &mut cx).and_then(|()| cx.finish())
            })();
            match &outcome {
                Ok(_) => {
                    changed[k] = true;
                    record.redo.extend(keep);
                }
                Err(_) if ran => {
                    *state = redo(record, &backup, f).unwrap_or_else(|e| {
                        // The host folds the batch again one event per call.
                        panic!(
                            "cannot restore the state of key `{name}`: {}: {}",
                            e.code, e.message
                        )
                    });
                }
                Err(_) => {}
            }
            outcomes.push(outcome);
        }
        let states = changed
            .iter()
            .enumerate()
            .filter(|(_, c)| **c)
            .map(|(i, _)| {
                let state = &held[&keys[i]];
                match encode_state(state) {
                    Ok(bytes) => (i as u32, bytes),
                    // The host folds the batch again one event per call and rejects the event.
                    Err(e) => panic!("{}: {}", e.code, e.message),
                }
            })
            .collect();
        (outcomes, states)
    })
}

/// The state before a rejected event: the key's baseline with its accepted events of the
/// batch folded again (their effects were already taken); the record then starts afresh
/// from that state.
fn redo<S, E, C>(record: &mut Undo<S>, backup: &Backup<S>, f: Fold<S, E, C>) -> Result<S, Error>
where
    S: Default + DeserializeOwned + serde::Serialize,
    E: DeserializeOwned,
    C: Send + Sync + 'static,
{
    let mut state = record.restore(backup)?;
    let config = config::<C>()?;
    for raw in record.redo.drain(..) {
        let event = decode_event::<E>(raw)?;
        let mut cx = Context::new(config);
        f(&mut state, event, &mut cx).and_then(|()| cx.finish()).map_err(|e| {
            Error::new(
                "impure",
                format!(
                    "an event accepted earlier in the batch is rejected when folded again: {}",
                    e.message
                ),
            )
        })?;
    }
    *record = Undo::of(&state, backup)?;
    Ok(state)
}

/// Drops the resident states of `keys`.
pub fn forget<S: 'static>(keys: Vec<String>) {
    with_resident::<S, _>(|held| {
        for key in keys {
            held.remove(&key);
        }
    })
}

pub fn fold_projection<P, E, C>(batch: RawBatch, backup: Backup<P>) -> BatchResult
where
    P: Projection<E, C> + 'static,
    E: DeserializeOwned,
    C: DeserializeOwned + Send + Sync + 'static,
{
    fold_batch(batch, backup, P::apply)
}

pub fn fold_policy<P, E, C>(batch: RawBatch, backup: Backup<P>) -> BatchResult
where
    P: Policy<E, C> + 'static,
    E: DeserializeOwned,
    C: DeserializeOwned + Send + Sync + 'static,
{
    fold_batch(batch, backup, P::decide)
}
