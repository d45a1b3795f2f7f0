//! Dead letters: the events a plugin failed on, as the daemon published them to
//! `<dead-letter subject-prefix>.<plugin>` (payload and headers as they came, plus why).
//! `jetfold dlq list` shows them; `jetfold dlq replay` publishes them again to the subjects
//! they came from, once the plugin is fixed, and removes them from the dead-letter stream.
//!
//! A replayed dead letter is for its plugin alone: it carries `Jetfold-Replay-For: <plugin>`,
//! and every other plugin reading the subject passes it by (the daemon and `replay` alike).
//! It says which event it is a copy of (`Jetfold-Replay-Of`), and a fold of its plugin folds
//! it only in place of that event, where the fold rejected it, once.
//! Copies of one dead letter (two daemons of the plugin failed on the same event, further
//! apart than the dead-letter stream's duplicate window) are published once.

use anyhow::Context as _;
use async_nats::jetstream;
use futures::StreamExt as _;

use crate::config::DeadLetterConfig;
use crate::nats::source::{self, headers};

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
    /// When the event was itself a replayed dead letter: the sequence of the event it is a
    /// copy of.
    pub copy_of: Option<u64>,
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
        // The last value: the event's own provenance headers (an event a plugin emitted) come
        // before the dead letter's of the same names.
        let find = |name: &str| {
            all.iter().rev().find(|(k, _)| k.eq_ignore_ascii_case(name)).map(|(_, v)| v.clone())
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
            copy_of: find(headers::REPLAY_OF).and_then(|of| source::replay_of_seq(&of)),
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
    /// Dead letters left, of events from other streams than the one asked for.
    pub left: Left,
}

/// Dead letters on a plugin's subject of events from other streams: another deployment's.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Left {
    /// How many.
    pub letters: usize,
    /// Their streams, sorted.
    pub streams: Vec<String>,
}

/// `letters` split into those of events from `stream` (all, when `None`) and what is left.
pub fn of_stream(letters: Vec<DeadLetter>, stream: Option<&str>) -> (Vec<DeadLetter>, Left) {
    let (mine, others): (Vec<_>, Vec<_>) = letters.into_iter().partition(|l| l.is_from(stream));
    let mut streams: Vec<String> = others.iter().map(|l| l.source_stream.clone()).collect();
    streams.sort_unstable();
    streams.dedup();
    (mine, Left { letters: others.len(), streams })
}

/// Publishes every dead letter of `plugin` again to the subject it came from, for `plugin`
/// alone, and removes it from the dead-letter stream. Each event is published once however
/// many copies of its dead letter there are, with its original headers (signature included),
/// `Jetfold-Replay-For: <plugin>`, `Jetfold-Replay-Of: <stream>:<sequence>` (where the event it
/// is a copy of is; for the dead letter of a copy that failed again, the first event) and its
/// original `Nats-Msg-Id` as `Jetfold-Replay-Msg-Id`. Its own message id is
/// `<original id>:replay:<plugin>:<dead letter's sequence>`, so the stream stores it, and a
/// replay interrupted and run again within the stream's duplicate window stores it once.
///
/// A fold of `plugin` folds the copy only if it rejected the event it is a copy of and has not
/// folded a copy of it yet (see `docs/decisions.md`, 48): a replay, a rebuild or a new daemon
/// reading the stream from the start does not fold the event twice.
///
/// With `stream`, only the dead letters of events read from that stream (the dead-letter
/// subject is the plugin's name only, so deployments sharing a NATS server and a plugin name
/// share it, unless each sets its own `subject-prefix`).
pub async fn replay(
    js: &jetstream::Context,
    config: &DeadLetterConfig,
    plugin: &str,
    stream: Option<&str>,
) -> anyhow::Result<Replayed> {
    let (letters, left) = of_stream(list(js, config, plugin).await?, stream);
    let stream = js.get_stream(&config.stream).await?;
    let mut done = Replayed { left, ..Replayed::default() };
    // The copies of one event's dead letter, in the order of the first.
    let mut events: Vec<(Original, Vec<&DeadLetter>)> = Vec::new();
    for letter in &letters {
        let original = Original::of(letter);
        match events.iter_mut().find(|(o, _)| o.seq > 0 && o.place() == original.place()) {
            Some((_, copies)) => copies.push(letter),
            None => events.push((original, vec![letter])),
        }
    }
    for (original, copies) in events {
        let letter = copies[0];
        let mut h = async_nats::HeaderMap::new();
        for (k, v) in letter.event_headers() {
            h.append(k, v);
        }
        let id = original.msg_id.clone().unwrap_or_else(|| match original.seq {
            0 => format!("dead-letter-{}", letter.seq),
            seq => format!("{}:{seq}", original.stream),
        });
        h.insert(headers::MSG_ID, format!("{id}:replay:{plugin}:{}", letter.seq).as_str());
        h.insert(headers::REPLAY_FOR, plugin);
        if original.seq > 0 {
            h.insert(headers::REPLAY_OF, format!("{}:{}", original.stream, original.seq).as_str());
        }
        if let Some(id) = &original.msg_id {
            h.insert(headers::REPLAY_MSG_ID, id.as_str());
        }
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

/// The event a dead letter is of: the one the plugin failed on, or, when that was a replayed
/// copy, the event it is a copy of.
struct Original {
    stream: String,
    /// 0 when the dead letter does not say.
    seq: u64,
    /// Its `Nats-Msg-Id`, if it had one.
    msg_id: Option<String>,
}

impl Original {
    fn of(letter: &DeadLetter) -> Original {
        let find = |name: &str| headers::find(&letter.headers, name);
        match find(headers::REPLAY_OF) {
            Some(of) => Original {
                stream: of.rsplit_once(':').map_or(of, |(s, _)| s).to_string(),
                seq: source::replay_of_seq(of).unwrap_or(0),
                msg_id: find(headers::REPLAY_MSG_ID).map(str::to_string),
            },
            None => Original {
                stream: letter.source_stream.clone(),
                seq: letter.source_seq,
                msg_id: find(headers::DLQ_SOURCE_MSG_ID).map(str::to_string),
            },
        }
    }

    fn place(&self) -> (&str, u64) {
        (&self.stream, self.seq)
    }
}

impl DeadLetter {
    /// Whether it is of an event read from `stream` (any, when `None`; a dead letter that does
    /// not say counts as from every stream).
    pub fn is_from(&self, stream: Option<&str>) -> bool {
        stream.is_none_or(|s| self.source_stream.is_empty() || self.source_stream == s)
    }

    /// The headers the event itself carried: without the dead letter's own (its id, why, by
    /// whom, from where) and a replayed copy's.
    pub fn event_headers(&self) -> impl Iterator<Item = (&str, &str)> {
        // The dead letter appends its provenance after the event's headers of the same names.
        let last =
            |name: &str| self.headers.iter().rposition(|(k, _)| k.eq_ignore_ascii_case(name));
        let theirs = [headers::PLUGIN, headers::PLUGIN_DIGEST, headers::SOURCE_SEQ].map(last);
        self.headers.iter().enumerate().filter_map(move |(i, (k, v))| {
            let own = [
                headers::MSG_ID,
                headers::DLQ_KIND,
                headers::DLQ_CODE,
                headers::DLQ_REASON,
                headers::DLQ_SOURCE_MSG_ID,
                headers::DLQ_SOURCE_STREAM,
                headers::DLQ_SOURCE_SUBJECT,
                headers::REPLAY_FOR,
                headers::REPLAY_OF,
                headers::REPLAY_MSG_ID,
            ]
            .iter()
            .any(|h| k.eq_ignore_ascii_case(h));
            (!own && !theirs.contains(&Some(i))).then_some((k.as_str(), v.as_str()))
        })
    }
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
