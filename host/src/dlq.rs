//! Dead letters: the events a plugin failed on, as the daemon published them to
//! `<dead-letter subject-prefix>.<plugin>` (payload and headers as they came, plus why).
//! `jetfold dlq list` shows them; `jetfold dlq replay` publishes them again to the subjects
//! they came from, once the plugin is fixed, and removes them from the dead-letter stream.
//!
//! A replayed dead letter is for its plugin alone: it carries `Jetfold-Replay-For: <plugin>`,
//! and every other plugin reading the subject passes it by (the daemon and `replay` alike).
//! Copies of one dead letter (two daemons of the plugin failed on the same event, further
//! apart than the dead-letter stream's duplicate window) are published once.

use anyhow::Context as _;
use async_nats::jetstream;
use futures::StreamExt as _;

use crate::config::DeadLetterConfig;
use crate::nats::source::headers;

/// The longest reason a dead letter carries, in characters (a trap's message with the last
/// 4 KB the guest wrote fits).
const REASON_CHARS: usize = 8192;

/// A failure's reason as the `Jetfold-Dlq-Reason` header carries it: on one line (a header
/// value cannot hold a line break), `\n` for each line break and `\\` for a backslash, other
/// control characters as spaces, at most [`REASON_CHARS`] characters. [`decode_reason`] gives
/// the lines back.
pub fn encode_reason(reason: &str) -> String {
    let mut out = String::with_capacity(reason.len());
    for c in reason.chars().take(REASON_CHARS) {
        match c {
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            c if c.is_control() => out.push(' '),
            c => out.push(c),
        }
    }
    out
}

/// The reason [`encode_reason`] wrote, with its line breaks.
pub fn decode_reason(header: &str) -> String {
    let mut out = String::with_capacity(header.len());
    let mut chars = header.chars();
    while let Some(c) = chars.next() {
        if c != '\\' {
            out.push(c);
            continue;
        }
        match chars.next() {
            Some('n') => out.push('\n'),
            Some('\\') => out.push('\\'),
            // Not an escape (a reason written before they were): kept as it is.
            other => out.extend(std::iter::once('\\').chain(other)),
        }
    }
    out
}

/// One dead letter.
#[derive(Debug, Clone)]
pub struct DeadLetter {
    /// Its sequence in the dead-letter stream.
    pub seq: u64,
    /// The sequence the event had in its own stream.
    pub source_seq: u64,
    /// The subject it was published on.
    pub source_subject: String,
    /// The stream it was read from.
    pub source_stream: String,
    /// Its event type: the `Event-Type` header, else the payload's `type`, else the last
    /// subject token (as the daemon read it).
    pub event_type: String,
    /// How the plugin failed: `error`, `trap`, `fuel`, `memory`, `rejected-effect`, …
    pub kind: String,
    /// The plugin's error code, when it returned one.
    pub code: Option<String>,
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
        let find = |name: &str| {
            all.iter().find(|(k, _)| k.eq_ignore_ascii_case(name)).map(|(_, v)| v.clone())
        };
        let get = |name: &str| find(name).unwrap_or_default();
        let source_subject = get(headers::DLQ_SOURCE_SUBJECT);
        let event_type = find(headers::EVENT_TYPE)
            .or_else(|| {
                #[derive(serde::Deserialize)]
                struct Typed {
                    #[serde(rename = "type")]
                    event_type: String,
                }
                serde_json::from_slice::<Typed>(&message.payload).ok().map(|t| t.event_type)
            })
            .unwrap_or_else(|| crate::event::subject_event_type(&source_subject).to_string());
        letters.push(DeadLetter {
            seq: info.stream_sequence,
            source_seq: get(headers::SOURCE_SEQ).parse().unwrap_or(0),
            source_stream: get(headers::DLQ_SOURCE_STREAM),
            event_type,
            kind: get(headers::DLQ_KIND),
            code: find(headers::DLQ_CODE),
            reason: decode_reason(&get(headers::DLQ_REASON)),
            source_subject,
            payload: message.payload.to_vec(),
            headers: all,
        });
    }
    Ok(letters)
}

/// What a replay did.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Replayed {
    /// Events published again.
    pub events: usize,
    /// Dead letters removed (copies of one event included).
    pub letters: usize,
}

/// Publishes every dead letter of `plugin` again to the subject it came from, for `plugin`
/// alone, and removes it from the dead-letter stream. Each event is published once however
/// many copies of its dead letter there are, with its original headers, a message id of its
/// own (`<original id>:replay:<plugin>`, so the stream stores it and a replay interrupted and
/// run again within the stream's duplicate window stores it once) and `Jetfold-Replay-For`.
pub async fn replay(
    js: &jetstream::Context,
    config: &DeadLetterConfig,
    plugin: &str,
) -> anyhow::Result<Replayed> {
    let letters = list(js, config, plugin).await?;
    let stream = js.get_stream(&config.stream).await?;
    let mut done = Replayed::default();
    // The copies of one event's dead letter, in the order of the first.
    let mut events: Vec<(String, u64, Vec<&DeadLetter>)> = Vec::new();
    for letter in &letters {
        let at = (letter.source_stream.clone(), letter.source_seq);
        match events.iter_mut().find(|(s, q, _)| (s, q) == (&at.0, &at.1) && at.1 > 0) {
            Some((_, _, copies)) => copies.push(letter),
            None => events.push((at.0, at.1, vec![letter])),
        }
    }
    for (source_stream, source_seq, copies) in events {
        let letter = copies[0];
        let mut h = async_nats::HeaderMap::new();
        let mut original_id = None;
        for (k, v) in &letter.headers {
            if k.eq_ignore_ascii_case(headers::DLQ_SOURCE_MSG_ID) {
                original_id = Some(v.clone());
            } else if !k.starts_with("Jetfold-") && !k.eq_ignore_ascii_case(headers::MSG_ID) {
                h.append(k.as_str(), v.as_str());
            }
        }
        let id = original_id.unwrap_or_else(|| match source_seq {
            0 => format!("dead-letter-{}", letter.seq),
            seq => format!("{source_stream}:{seq}"),
        });
        h.insert(headers::MSG_ID, format!("{id}:replay:{plugin}").as_str());
        h.insert(headers::REPLAY_FOR, plugin);
        js.publish_with_headers(letter.source_subject.clone(), h, letter.payload.clone().into())
            .await?
            .await
            .with_context(|| format!("cannot publish to {}", letter.source_subject))?;
        done.events += 1;
        for copy in copies {
            stream.delete_message(copy.seq).await.map_err(|e| {
                anyhow::anyhow!("replayed, but cannot remove dead letter {}: {e}", copy.seq)
            })?;
            done.letters += 1;
        }
    }
    Ok(done)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        /// A reason reads back as it was, line breaks included, from a header value that is
        /// one line a NATS header can carry.
        #[test]
        fn a_reason_reads_back_with_its_lines(reason in "[a-z \\\\\n:]{0,64}") {
            let header = encode_reason(&reason);
            prop_assert!(!header.contains(['\n', '\r']));
            prop_assert!(crate::nats::header(crate::nats::source::headers::DLQ_REASON, &header).is_ok());
            prop_assert_eq!(decode_reason(&header), reason);
        }
    }

    #[test]
    fn a_long_reason_is_cut_and_an_old_one_kept() {
        assert_eq!(encode_reason(&"x".repeat(10_000)).len(), REASON_CHARS);
        assert_eq!(encode_reason("a\tb"), "a b");
        assert_eq!(decode_reason("C:\\dir end\\"), "C:\\dir end\\");
    }
}
