//! Glue between the generated bindings (expanded in the plugin crate by the export macros)
//! and the traits. Not part of the API.

use std::any::Any;
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

fn decode_state<S: Default + DeserializeOwned>(state: Option<Vec<u8>>) -> Result<S, Error> {
    match state {
        None => Ok(S::default()),
        Some(bytes) => serde_json::from_slice(&bytes).map_err(|e| {
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
    let mut state: S = decode_state(state)?;
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
        .map(|(key, bytes)| Ok((key, decode_state::<P>(Some(bytes))?)))
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
