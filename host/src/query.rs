//! Read-model queries against a running daemon: `jetfold.query.<daemon>.<plugin>` (NATS
//! request/reply; the daemon is the config's `name`) answered by the projection's `query`
//! export over its committed states. `jetfold.query.<plugin>` is answered by any one daemon
//! that runs the plugin (daemons sharing a database answer alike; daemons with databases of
//! their own do not, so `jetfold state` asks the daemon its config names).
//!
//! Request: `{"request": <JSON>, "key": "<state key>"}` (`key` optional: all keys). Reply:
//! `{"response": <JSON>}` or `{"error": {"kind", "code", "message"}}`. A dedicated instance
//! answers, so queries never wait for the worker's batch.

use futures::StreamExt as _;
use serde::{Deserialize, Serialize};

use crate::bindings::types;
use crate::guest::GuestInstance;
use crate::guest::StepError;
use crate::sink::{Sink, SinkTarget};

/// The subject on which any daemon running `plugin` answers its queries.
pub fn subject(plugin: &str) -> String {
    format!("jetfold.query.{plugin}")
}

/// The subject on which the daemon named `daemon` answers `plugin`'s queries.
pub fn daemon_subject(daemon: &str, plugin: &str) -> String {
    format!("jetfold.query.{daemon}.{plugin}")
}

/// A query request.
#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct QueryRequest {
    /// The request document the projection understands.
    pub request: serde_json::Value,
    /// Only this key's state; all states when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key: Option<String>,
}

/// A query reply.
#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum QueryReply {
    /// The projection's answer.
    Response(serde_json::Value),
    /// Why there is none.
    Error {
        /// `error` (the guest's), `trap`, `fuel`, `memory`, `invalid-request`, `internal`.
        kind: String,
        /// The guest's code.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        code: Option<String>,
        /// What went wrong.
        message: String,
    },
}

fn error(kind: &str, message: String) -> QueryReply {
    QueryReply::Error { kind: kind.into(), code: None, message }
}

/// What answers a plugin's queries: its own instance and, once the first query needs it, a
/// connection to the sink, both owned by the responder's thread.
pub struct Responder {
    plugin: String,
    guest: GuestInstance,
    target: SinkTarget,
    sink: Option<Sink>,
}

impl Responder {
    /// A responder of `plugin` answering with `guest` from the states in `target`.
    pub fn new(plugin: String, guest: GuestInstance, target: SinkTarget) -> Responder {
        Responder { plugin, guest, target, sink: None }
    }

    /// Answers one request (a [`QueryRequest`] as JSON) from committed states.
    pub fn answer(&mut self, payload: &[u8]) -> QueryReply {
        let request: QueryRequest = match serde_json::from_slice(payload) {
            Ok(r) => r,
            Err(e) => {
                return error(
                    "invalid-request",
                    format!("expected {{\"request\": …, \"key\": …}}: {e}"),
                );
            }
        };
        let sink = match &mut self.sink {
            Some(sink) => sink,
            None => match Sink::open(&self.target) {
                Ok(sink) => self.sink.insert(sink),
                Err(e) => return error("internal", format!("cannot open the sink: {e:#}")),
            },
        };
        let plugin = &self.plugin;
        let states = match &request.key {
            Some(key) => sink
                .state(plugin, key)
                .map(|s| s.map(|s| vec![(key.clone(), s)]).unwrap_or_default()),
            None => sink.states(plugin),
        };
        let states: Vec<types::KeyedState> = match states {
            Ok(s) => s.into_iter().map(|(key, state)| types::KeyedState { key, state }).collect(),
            Err(e) => {
                // The connection may be gone: open a new one for the next query.
                self.sink = None;
                return error("internal", format!("cannot read states: {e}"));
            }
        };
        match self.guest.query(&states, &request.request.to_string()) {
            Ok(text) => match serde_json::from_str(&text) {
                Ok(v) => QueryReply::Response(v),
                Err(e) => error(
                    "invalid-output",
                    format!("the plugin answered with text that is not JSON: {e}"),
                ),
            },
            Err(e) => {
                let StepError { kind, code, message, .. } = e.into();
                QueryReply::Error { kind, code, message }
            }
        }
    }
}

type Job = (Vec<u8>, tokio::sync::oneshot::Sender<QueryReply>);

/// Serves `jetfold.query.<daemon>.<plugin>` and `jetfold.query.<plugin>` until the
/// subscriptions end or the service is dropped.
pub async fn serve(
    client: async_nats::Client,
    daemon: &str,
    plugin: String,
    guest: GuestInstance,
    target: SinkTarget,
) -> anyhow::Result<()> {
    let mut requests = futures::stream::select(
        client.subscribe(daemon_subject(daemon, &plugin)).await?,
        client.subscribe(subject(&plugin)).await?,
    );
    // A plain thread, not the runtime's blocking pool: the PostgreSQL client runs a runtime of
    // its own, which can neither start nor be dropped inside ours. The thread ends when the
    // sender is dropped with this future.
    let (jobs, inbox) = std::sync::mpsc::channel::<Job>();
    let mut responder = Responder::new(plugin.clone(), guest, target);
    std::thread::Builder::new().name(format!("query-{plugin}")).spawn(move || {
        for (payload, reply) in inbox {
            let _ = reply.send(responder.answer(&payload));
        }
    })?;
    while let Some(message) = requests.next().await {
        let Some(reply) = message.reply.clone() else { continue };
        let (tx, rx) = tokio::sync::oneshot::channel();
        jobs.send((message.payload.to_vec(), tx))?;
        let answer = rx.await?;
        let body = serde_json::to_vec(&answer)?;
        if let Err(e) = client.publish(reply, body.into()).await {
            tracing::warn!(error = %e, "cannot send a query reply");
        }
    }
    Ok(())
}
