//! Dead letters: the events a plugin failed on, as the daemon published them to
//! `<dead-letter subject-prefix>.<plugin>` (payload and headers as they came, plus why).
//! `jetfold dlq list` shows them; `jetfold dlq replay` publishes them again to the subjects
//! they came from, once the plugin is fixed, and removes them from the dead-letter stream.

use anyhow::Context as _;
use async_nats::jetstream;
use futures::StreamExt as _;

use crate::config::DeadLetterConfig;
use crate::nats::source::headers;

/// One dead letter.
#[derive(Debug, Clone)]
pub struct DeadLetter {
    /// Its sequence in the dead-letter stream.
    pub seq: u64,
    /// The sequence the event had in its own stream.
    pub source_seq: u64,
    /// The subject it was published on.
    pub source_subject: String,
    /// Its event type, if it had one.
    pub event_type: String,
    /// How the plugin failed: `error`, `trap`, `fuel`, `memory`, `rejected-effect`, …
    pub kind: String,
    /// Why.
    pub reason: String,
    /// Every header it carries.
    pub headers: Vec<(String, String)>,
    /// The payload, as published.
    pub payload: Vec<u8>,
}

/// The dead letters of `plugin`, oldest first.
pub async fn list(
    js: &jetstream::Context,
    config: &DeadLetterConfig,
    plugin: &str,
) -> anyhow::Result<Vec<DeadLetter>> {
    let stream = js
        .get_stream(&config.stream)
        .await
        .with_context(|| format!("no dead-letter stream `{}`", config.stream))?;
    let subject = config.subject(plugin);
    // An ephemeral consumer that reads, filtered, without acknowledging anything.
    let mut consumer = stream
        .create_consumer(jetstream::consumer::pull::Config {
            filter_subject: subject.clone(),
            ack_policy: jetstream::consumer::AckPolicy::None,
            inactive_threshold: std::time::Duration::from_secs(30),
            ..Default::default()
        })
        .await
        .context("cannot read the dead-letter stream")?;
    let pending = consumer.info().await?.num_pending as usize;
    let mut letters = Vec::with_capacity(pending);
    let mut messages = consumer.messages().await?.take(pending);
    while let Some(message) = messages.next().await {
        let message = message?;
        if message.subject.as_str() != subject {
            continue;
        }
        let info = message.info().map_err(|e| anyhow::anyhow!("{e}"))?;
        let mut all = Vec::new();
        if let Some(h) = &message.headers {
            for (name, values) in h.iter() {
                for v in values {
                    all.push((name.to_string(), v.as_str().to_string()));
                }
            }
        }
        let get = |name: &str| {
            all.iter()
                .find(|(k, _)| k.eq_ignore_ascii_case(name))
                .map(|(_, v)| v.clone())
                .unwrap_or_default()
        };
        letters.push(DeadLetter {
            seq: info.stream_sequence,
            source_seq: get(headers::SOURCE_SEQ).parse().unwrap_or(0),
            source_subject: get(headers::DLQ_SOURCE_SUBJECT),
            event_type: get(headers::EVENT_TYPE),
            kind: get(headers::DLQ_KIND),
            reason: get(headers::DLQ_REASON),
            payload: message.payload.to_vec(),
            headers: all,
        });
    }
    Ok(letters)
}

/// Publishes every dead letter of `plugin` again to the subject it came from, with its
/// original headers (a new message id, so the stream stores it), and removes it from the
/// dead-letter stream; how many were replayed.
pub async fn replay(
    js: &jetstream::Context,
    config: &DeadLetterConfig,
    plugin: &str,
) -> anyhow::Result<usize> {
    let letters = list(js, config, plugin).await?;
    let stream = js.get_stream(&config.stream).await?;
    for letter in &letters {
        let mut h = async_nats::HeaderMap::new();
        let mut original_id = None;
        for (k, v) in &letter.headers {
            if k.eq_ignore_ascii_case(headers::DLQ_SOURCE_MSG_ID) {
                original_id = Some(v.clone());
            } else if !k.starts_with("Jetfold-") && !k.eq_ignore_ascii_case(headers::MSG_ID) {
                h.append(k.as_str(), v.as_str());
            }
        }
        let id = original_id.unwrap_or_else(|| format!("dead-letter-{}", letter.seq));
        h.insert(headers::MSG_ID, format!("{id}:replay:{}", letter.seq).as_str());
        js.publish_with_headers(letter.source_subject.clone(), h, letter.payload.clone().into())
            .await?
            .await
            .with_context(|| format!("cannot publish to {}", letter.source_subject))?;
        stream.delete_message(letter.seq).await.map_err(|e| {
            anyhow::anyhow!("replayed, but cannot remove dead letter {}: {e}", letter.seq)
        })?;
    }
    Ok(letters.len())
}
