//! Native tests that behave like the host.
//!
//! [`Projection::apply`] called directly keeps whatever it changed before returning `Err`; the
//! host does not: a failed event leaves its key's state as it was and its effects are dropped.
//! [`apply`] and [`decide`] fold one event the way the host does, and [`event`] builds an event
//! whose payload is decoded from JSON exactly as the host decodes it (the event type picks an
//! enum's variant), so a test can check that a payload reaches the plugin as intended.
//!
//! ```
//! use jetfold_guest::prelude::*;
//! use jetfold_guest::testing;
//!
//! #[derive(Debug, Deserialize)]
//! enum Ev { Opened { by: String }, #[serde(other)] Other }
//!
//! #[derive(Default, Serialize, Deserialize)]
//! struct Doors { open: u32 }
//!
//! impl Projection<Ev> for Doors {
//!     fn apply(&mut self, event: Event<Ev>, cx: &mut Context) -> Result<()> {
//!         self.open += 1;
//!         match event.payload {
//!             Ev::Opened { by } if by.is_empty() => Err(Error::rejected("nobody opened it")),
//!             _ => Ok(()),
//!         }
//!     }
//! }
//!
//! let mut state = Doors::default();
//! let opened = testing::event::<Ev>("d-1", "Opened", json!({ "by": "" })).unwrap();
//! assert!(testing::apply(&mut state, opened, &NoConfig).is_err());
//! assert_eq!(state.open, 0, "as on the host, the failed event changed nothing");
//! ```

use serde::{Serialize, de::DeserializeOwned};

use crate::{Context, Effect, Error, Event, Json, Policy, Projection, Result};

/// Folds `event` into `state` as the host does: `Ok` with the effects it recorded, or `Err`
/// with `state` as it was before the call (whatever `apply` changed is undone) and no effects.
/// A document `cx` could not encode is an `Err` too, as on the host.
pub fn apply<S, E, C>(state: &mut S, event: Event<E>, config: &C) -> Result<Vec<Effect>>
where
    S: Projection<E, C>,
    E: DeserializeOwned,
    C: DeserializeOwned + 'static,
{
    as_the_host(state, config, |s, cx| s.apply(event, cx))
}

/// [`apply`] for a [`Policy`]: decides about `event` as the host does.
pub fn decide<S, E, C>(state: &mut S, event: Event<E>, config: &C) -> Result<Vec<Effect>>
where
    S: Policy<E, C>,
    E: DeserializeOwned,
    C: DeserializeOwned + 'static,
{
    as_the_host(state, config, |s, cx| s.decide(event, cx))
}

fn as_the_host<S, C>(
    state: &mut S,
    config: &C,
    f: impl FnOnce(&mut S, &mut Context<C>) -> Result<()>,
) -> Result<Vec<Effect>>
where
    S: Serialize + DeserializeOwned,
{
    // The host holds the state as its encoding between events: the same is the baseline here.
    let before = serde_json::to_vec(state)
        .map_err(|e| Error::new("encode", format!("cannot encode the state: {e}")))?;
    let mut cx = Context::new(config);
    let outcome = f(state, &mut cx).and_then(|()| cx.finish());
    if outcome.is_err() {
        *state = serde_json::from_slice(&before).expect("a state decodes from its own encoding");
    }
    outcome
}

/// Decodes a payload as the host does for an event of `event_type`: an enum takes the variant
/// the event type names, with the payload as its content (an absent payload, `b""`, is a unit
/// variant, or a struct variant with every field defaulted); any other type reads the payload
/// as it is. The error is the one the host records (`invalid-payload`).
pub fn decode_payload<T: DeserializeOwned>(event_type: &str, payload: &[u8]) -> Result<T> {
    crate::payload::decode::<T>(event_type, payload).map_err(|e| {
        Error::new("invalid-payload", format!("cannot decode a `{event_type}` payload: {e}"))
    })
}

/// An event of `event_type` for `aggregate_id` (as [`Event::new`] makes one) whose payload is
/// `payload` decoded by [`decode_payload`].
pub fn event<T: DeserializeOwned>(
    aggregate_id: &str,
    event_type: &str,
    payload: Json,
) -> Result<Event<T>> {
    let bytes = serde_json::to_vec(&payload).expect("a JSON value encodes");
    let decoded = decode_payload::<T>(event_type, &bytes)?;
    Ok(Event::new(aggregate_id, decoded).with_type(event_type))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{LogLevel, NoConfig};
    use serde::Deserialize;
    use serde_json::json;

    #[derive(Default, Debug, PartialEq, Serialize, Deserialize)]
    struct Tally {
        n: u32,
    }

    impl Projection for Tally {
        fn apply(&mut self, event: Event, cx: &mut Context) -> Result<()> {
            self.n += 1;
            cx.log(LogLevel::Info, "counted");
            match event.event_type.as_str() {
                "Bad" => Err(Error::rejected("bad")),
                _ => Ok(()),
            }
        }
    }

    #[test]
    fn a_failed_event_leaves_the_state_as_it_was_and_records_no_effects() {
        let mut state = Tally::default();
        let ok = apply(&mut state, Event::new("k", json!({})).with_type("Good"), &NoConfig);
        assert_eq!(ok.unwrap().len(), 1);
        assert_eq!(state.n, 1);
        let bad = apply(&mut state, Event::new("k", json!({})).with_type("Bad"), &NoConfig);
        assert_eq!(bad.unwrap_err().code, "rejected");
        assert_eq!(state, Tally { n: 1 }, "what the failed apply changed is undone");
    }

    #[derive(Debug, PartialEq, Deserialize)]
    enum Ev {
        Shipped {},
        Noted {
            #[serde(default)]
            by: String,
        },
        Pinged,
        #[serde(other)]
        Other,
    }

    #[test]
    fn payloads_decode_as_the_host_decodes_them() {
        assert_eq!(decode_payload::<Ev>("Shipped", b"").unwrap(), Ev::Shipped {});
        assert_eq!(decode_payload::<Ev>("Noted", b"").unwrap(), Ev::Noted { by: String::new() });
        assert_eq!(decode_payload::<Ev>("Pinged", b"").unwrap(), Ev::Pinged);
        assert_eq!(decode_payload::<Ev>("Renamed", b"{\"x\":1}").unwrap(), Ev::Other);
        let e = event::<Ev>("o-1", "Noted", json!({ "by": 3 })).unwrap_err();
        assert_eq!(e.code, "invalid-payload");
        assert!(e.message.contains("cannot decode a `Noted` payload"), "{}", e.message);
        let ev = event::<Ev>("o-1", "Noted", json!({ "by": "ann" })).unwrap();
        assert_eq!((ev.event_type.as_str(), ev.payload), ("Noted", Ev::Noted { by: "ann".into() }));
    }
}
