//! The JetStream source: one durable pull consumer per plugin, and the event record built
//! from each message.
//!
//! How a message becomes an event is [`jetfold_contract::decode`].

use std::time::Duration;

use async_nats::jetstream::{self, consumer::pull, message::Message};

use crate::config::StartPosition;
use crate::event::Event;

pub use jetfold_contract::decode::Position;
pub use jetfold_contract::event::event_replay;
pub use jetfold_contract::headers::{self, Replay, is_event_header, replay_of_seq};

/// The header `name` of a message, if it has it (first value).
fn header_of<'a>(message: &'a async_nats::Message, name: &str) -> Option<&'a str> {
    message.headers.as_ref()?.get(name).map(|v| v.as_str())
}

/// What `message` is to `plugin`.
pub fn replay(message: &async_nats::Message, plugin: &str) -> Replay {
    Replay::of(|name| header_of(message, name), plugin)
}

/// The `Nats-Msg-Id` the event had (and its signature covers): a replayed copy's is its
/// original's, `""` when the original had none.
pub fn signed_msg_id(message: &async_nats::Message) -> &str {
    match header_of(message, headers::REPLAY_OF) {
        Some(_) => header_of(message, headers::REPLAY_MSG_ID).unwrap_or(""),
        None => header_of(message, headers::MSG_ID).unwrap_or(""),
    }
}

/// Whether deleting a consumer failed because there is none of that name.
pub fn is_consumer_not_found(e: &jetstream::stream::ConsumerError) -> bool {
    matches!(
        e.kind(),
        jetstream::stream::ConsumerErrorKind::JetStream(j)
            if j.error_code() == jetstream::ErrorCode::CONSUMER_NOT_FOUND
    )
}

/// The durable consumer of a plugin on a daemon: `<daemon>-<plugin>` (`jetfold-<plugin>`
/// for a daemon of the default name).
pub fn consumer_name(daemon: &str, plugin: &str) -> String {
    format!("{daemon}-{plugin}")
}

/// (Re)creates the plugin's durable pull consumer on `stream`, positioned just after the
/// committed checkpoint (`resume_after`), or at `start` for a plugin that never committed.
///
/// The checkpoint in the sink is the truth about what has been applied, so the consumer is
/// recreated on every start: messages a killed predecessor had fetched but not acked would
/// otherwise be redelivered only after newer ones, and skipping by checkpoint would then
/// drop them.
#[allow(clippy::too_many_arguments)]
pub async fn consumer(
    js: &jetstream::Context,
    stream: &str,
    daemon: &str,
    plugin: &str,
    subjects: &[String],
    start: StartPosition,
    resume_after: Option<u64>,
    ack_wait: Duration,
    max_ack_pending: usize,
) -> anyhow::Result<jetstream::consumer::PullConsumer> {
    let stream_handle = js.get_stream(stream).await.map_err(|e| {
        anyhow::anyhow!("stream `{stream}` (source of plugin `{plugin}`) cannot be opened: {e}; create it or fix [source] stream")
    })?;
    let name = consumer_name(daemon, plugin);
    let config = pull::Config {
        durable_name: Some(name.clone()),
        description: Some(format!("jetfold plugin {plugin}")),
        // One ack per committed batch: acking its last message acks the batch.
        ack_policy: jetstream::consumer::AckPolicy::All,
        ack_wait,
        max_ack_pending: max_ack_pending as i64,
        deliver_policy: match (resume_after, start) {
            (Some(seq), _) => {
                jetstream::consumer::DeliverPolicy::ByStartSequence { start_sequence: seq + 1 }
            }
            (None, StartPosition::All) => jetstream::consumer::DeliverPolicy::All,
            (None, StartPosition::New) => jetstream::consumer::DeliverPolicy::New,
        },
        filter_subjects: subjects.to_vec(),
        ..Default::default()
    };
    match stream_handle.delete_consumer(&name).await {
        Ok(_) => {}
        Err(e) if is_consumer_not_found(&e) => {}
        Err(e) => anyhow::bail!("cannot reset consumer `{name}` on stream `{stream}`: {e}"),
    }
    let consumer = stream_handle.create_consumer(config).await.map_err(|e| {
        anyhow::anyhow!("cannot create consumer `{name}` on stream `{stream}`: {e}")
    })?;
    Ok(consumer)
}

/// Every header of a message, names and values as stored (a name given twice keeps both values,
/// in order).
pub fn all_headers(message: &async_nats::Message) -> Vec<(String, String)> {
    let mut all = Vec::new();
    for (name, values) in message.headers.iter().flat_map(|h| h.iter()) {
        all.extend(values.iter().map(|v| (name.to_string(), v.as_str().to_string())));
    }
    all
}

/// Builds the event record of a JetStream message.
pub fn event_from_message(message: &Message) -> anyhow::Result<Event> {
    let info =
        message.info().map_err(|e| anyhow::anyhow!("message without JetStream metadata: {e}"))?;
    let at =
        Position { stream: info.stream, sequence: info.stream_sequence, published: info.published };
    decode_event(&message.message, at)
}

/// The event of a message as NATS delivered it, stored at `at` (see
/// [`jetfold_contract::decode`]).
pub fn decode_event(message: &async_nats::Message, at: Position<'_>) -> anyhow::Result<Event> {
    let headers = message.headers.iter().flat_map(|h| h.iter()).flat_map(|(name, values)| {
        let name: &str = name.as_ref();
        values.iter().map(move |v| (name, v.as_str()))
    });
    jetfold_contract::decode::decode(message.subject.as_str(), headers, &message.payload, at)
}
