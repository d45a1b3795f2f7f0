//! `jetfold events export` and `import`: a stream as JSON Lines (the fixture format, one
//! [`EventRecord`] per line) and back, for moving events between streams and servers.
//!
//! An export record holds every header exactly as the stream stored it (`stored_headers`),
//! beside the fields read from them, and the payload bytes; an import publishes those headers
//! and no other, so the far side stores what the near side did: the same subject, header
//! names and values (an `Event-Time` string as it was, signatures that still hold) and payload
//! bytes. Only the order of distinct header names is not kept: NATS clients hold headers in a
//! map. A record without `stored_headers` (a fixture) is published the way `jetfold publish`
//! publishes, with the documented headers.
//!
//! An import stores each event once however often it runs: before publishing it reads what
//! the stream holds, and skips an event whose message id is there (an event without a
//! `Nats-Msg-Id` is matched by subject, headers and payload); JetStream's duplicate window
//! covers another import running at the same moment.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::io::{BufRead, Write};
use std::path::Path;

use anyhow::Context as _;
use async_nats::jetstream;

use crate::effect::subject_matches;
use crate::event::{Event, EventRecord};
use crate::fold::{FixtureRecord, parse_fixture_record};
use crate::nats::header_map;
use crate::nats::reader::StreamReader;
use crate::nats::source::{all_headers, event_from_message, headers};

/// What an export wrote.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Exported {
    /// Events written.
    pub events: u64,
    /// Of them, messages whose jetfold headers could not be read (a bad `Event-Time` or
    /// `Schema-Version`): written with their headers as they are, time from the server.
    pub unreadable: u64,
}

/// Writes the messages of `stream` (those on `subjects`, all when empty), in order, as one
/// JSON record per line.
pub async fn export(
    js: &jetstream::Context,
    stream: &str,
    subjects: &[String],
    out: &mut dyn Write,
    mut progress: impl FnMut(u64, u64),
) -> anyhow::Result<Exported> {
    let mut reader = StreamReader::open(js, stream, subjects, None, None).await?;
    let mut done = Exported::default();
    while let Some(message) = reader.next().await {
        let message = message?;
        let mut record = match event_from_message(&message) {
            Ok(event) => EventRecord::from_event(&event),
            Err(_) => {
                done.unreadable += 1;
                raw_record(&message)?
            }
        };
        record.headers = Vec::new();
        record.stored_headers = Some(all_headers(&message));
        serde_json::to_writer(&mut *out, &record)?;
        out.write_all(b"\n")?;
        done.events += 1;
        progress(done.events, reader.total);
    }
    out.flush()?;
    Ok(done)
}

/// The record of a message whose headers do not decode: its fields from the server.
fn raw_record(message: &jetstream::Message) -> anyhow::Result<EventRecord> {
    let info = message.info().map_err(|e| anyhow::anyhow!("{e}"))?;
    let event = Event {
        sequence: info.stream_sequence,
        subject: message.subject.to_string(),
        message_id: format!("{}:{}", info.stream, info.stream_sequence),
        event_type: crate::event::subject_event_type(&message.subject).to_string(),
        aggregate_id: String::new(),
        correlation_id: None,
        causation_id: None,
        time: info.published,
        schema_version: 1,
        headers: Vec::new(),
        payload: message.payload.to_vec(),
        content_type: "application/octet-stream".into(),
    };
    let mut record = EventRecord::from_event(&event);
    record.event_type = None;
    record.aggregate_id = None;
    record.schema_version = None;
    Ok(record)
}

/// What an import or a publish stored.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Imported {
    /// Events stored.
    pub stored: u64,
    /// Events the stream already had (same message id, or the same message when it has none).
    pub duplicates: u64,
    /// The stream sequence of the last one stored.
    pub last_seq: u64,
}

/// How many publishes are in flight before their acknowledgements are awaited.
const CHUNK: usize = 1000;

/// A message to publish, as the stream will store it.
struct Outgoing {
    subject: String,
    headers: Vec<(String, String)>,
    payload: Vec<u8>,
    /// What makes it the same event as one already stored.
    identity: Identity,
}

/// An event's identity in a stream: its message id, else the digest of the whole message.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
enum Identity {
    MessageId(String),
    Content([u8; 32]),
}

impl Identity {
    fn of(subject: &str, headers: &[(String, String)], payload: &[u8]) -> Identity {
        if let Some(id) = headers::find(headers, headers::MSG_ID) {
            return Identity::MessageId(id.to_string());
        }
        let mut sorted: Vec<&(String, String)> = headers.iter().collect();
        sorted.sort();
        let mut digest = ring::digest::Context::new(&ring::digest::SHA256);
        digest.update(subject.as_bytes());
        for (k, v) in sorted {
            for part in [b"\n".as_slice(), k.as_bytes(), b":", v.as_bytes()] {
                digest.update(part);
            }
        }
        digest.update(b"\n\n");
        digest.update(payload);
        let mut out = [0; 32];
        out.copy_from_slice(digest.finish().as_ref());
        Identity::Content(out)
    }
}

/// What a stream holds already: message ids, and how many of each message without one.
#[derive(Default)]
struct Stored {
    ids: HashSet<String>,
    contents: HashMap<[u8; 32], u64>,
}

impl Stored {
    /// Reads every message of `stream` (headers only unless messages without an id must be
    /// compared whole).
    async fn read(js: &jetstream::Context, stream: &str, whole: bool) -> anyhow::Result<Stored> {
        let mut stored = Stored::default();
        let mut reader = StreamReader::open_with(js, stream, &[], None, None, !whole).await?;
        while let Some(message) = reader.next().await {
            let message = message?;
            let all = all_headers(&message);
            let all: Vec<_> = all
                .into_iter()
                .filter(|(k, _)| whole || k.eq_ignore_ascii_case(headers::MSG_ID))
                .collect();
            match Identity::of(&message.subject, &all, &message.payload) {
                Identity::MessageId(id) => {
                    stored.ids.insert(id);
                }
                Identity::Content(digest) if whole => {
                    *stored.contents.entry(digest).or_default() += 1
                }
                Identity::Content(_) => {}
            }
        }
        Ok(stored)
    }

    /// Whether `identity` is stored; if not, counts it as stored from now on.
    fn take(&mut self, identity: &Identity) -> bool {
        match identity {
            Identity::MessageId(id) => !self.ids.insert(id.clone()),
            // The same message twice in a file is two events: each matches one stored copy.
            Identity::Content(digest) => match self.contents.get_mut(digest) {
                Some(n) if *n > 0 => {
                    *n -= 1;
                    true
                }
                _ => false,
            },
        }
    }
}

/// What a first pass over the file found.
#[derive(Default)]
struct Survey {
    subjects: BTreeSet<String>,
    /// Whether some event has no message id.
    anonymous: bool,
}

/// Publishes the events of a JSON Lines file to `stream`, in order, creating the stream with
/// `subjects` if it does not exist (every `<first token>.>` of the file's subjects when
/// empty). With `sign`, each event gets a `Jetfold-Signature` by that key. Every line is
/// checked, and every subject against the stream's, before anything is published.
pub async fn import(
    js: &jetstream::Context,
    path: &Path,
    stream: &str,
    subjects: &[String],
    sign: Option<&(String, Vec<u8>)>,
) -> anyhow::Result<Imported> {
    let mut survey = Survey::default();
    for outgoing in outgoing(path, sign)? {
        let outgoing = outgoing?;
        survey.anonymous |= matches!(outgoing.identity, Identity::Content(_));
        survey.subjects.insert(outgoing.subject);
    }
    let existing = match js.get_stream(stream).await {
        Ok(mut s) => Some(s.info().await?.config.subjects.clone()),
        Err(e) if is_not_found(&e) => None,
        Err(e) => anyhow::bail!("cannot open stream `{stream}`: {e}"),
    };
    let stream_subjects = match &existing {
        Some(subjects) => subjects.clone(),
        None if subjects.is_empty() => {
            let first_tokens: BTreeSet<&str> =
                survey.subjects.iter().map(|s| s.split('.').next().unwrap_or_default()).collect();
            first_tokens.into_iter().map(|t| format!("{t}.>")).collect()
        }
        None => subjects.to_vec(),
    };
    let outside: Vec<&String> = survey
        .subjects
        .iter()
        .filter(|s| !stream_subjects.iter().any(|p| subject_matches(p, s)))
        .collect();
    if !outside.is_empty() {
        let shown: Vec<&str> = outside.iter().take(5).map(|s| s.as_str()).collect();
        anyhow::bail!(
            "stream `{stream}` does not capture {} of the file's subjects ({}{}; it holds {}): nothing was published",
            outside.len(),
            shown.join(", "),
            if outside.len() > 5 { ", …" } else { "" },
            if stream_subjects.is_empty() {
                "none".to_string()
            } else {
                stream_subjects.join(", ")
            },
        );
    }
    let mut stored = match existing {
        Some(_) => Stored::read(js, stream, survey.anonymous).await?,
        None => {
            js.create_stream(jetstream::stream::Config {
                name: stream.to_string(),
                subjects: stream_subjects,
                ..Default::default()
            })
            .await
            .map_err(|e| anyhow::anyhow!("cannot open or create stream `{stream}`: {e}"))?;
            Stored::default()
        }
    };

    let mut done = Imported::default();
    let mut chunk = Vec::with_capacity(CHUNK);
    for outgoing in outgoing(path, sign)? {
        let outgoing = outgoing?;
        if stored.take(&outgoing.identity) {
            done.duplicates += 1;
            continue;
        }
        chunk.push(outgoing);
        if chunk.len() == CHUNK {
            publish_chunk(js, stream, &mut chunk, &mut done).await?;
        }
    }
    publish_chunk(js, stream, &mut chunk, &mut done).await?;
    Ok(done)
}

/// Whether a stream lookup failed because there is no such stream.
fn is_not_found(e: &jetstream::context::GetStreamError) -> bool {
    use jetstream::context::GetStreamErrorKind;
    matches!(e.kind(), GetStreamErrorKind::JetStream(j)
        if j.error_code() == jetstream::ErrorCode::STREAM_NOT_FOUND)
}

/// Publishes `chunk` (emptying it), then awaits every acknowledgement.
async fn publish_chunk(
    js: &jetstream::Context,
    stream: &str,
    chunk: &mut Vec<Outgoing>,
    done: &mut Imported,
) -> anyhow::Result<()> {
    let mut pending = Vec::with_capacity(chunk.len());
    for outgoing in chunk.drain(..) {
        let headers = header_map(outgoing.headers.iter().map(|(k, v)| (k.as_str(), v.as_str())))?;
        let ack =
            js.publish_with_headers(outgoing.subject, headers, outgoing.payload.into()).await?;
        pending.push(ack);
    }
    for ack in pending {
        let ack = ack.await.map_err(|e| anyhow::anyhow!("publishing failed: {e}"))?;
        if ack.stream != stream {
            anyhow::bail!(
                "an event was stored in stream `{}`, not `{stream}`: their subjects overlap",
                ack.stream
            );
        }
        if ack.duplicate {
            done.duplicates += 1;
        } else {
            done.stored += 1;
            done.last_seq = ack.sequence;
        }
    }
    Ok(())
}

/// The messages a JSON Lines file describes, read a line at a time, each checked (its headers
/// too); an error names the line.
fn outgoing<'a>(
    path: &'a Path,
    sign: Option<&'a (String, Vec<u8>)>,
) -> anyhow::Result<impl Iterator<Item = anyhow::Result<Outgoing>> + 'a> {
    let file = std::fs::File::open(path)
        .map(std::io::BufReader::new)
        .with_context(|| format!("cannot read {}", path.display()))?;
    let mut position = 0;
    let lines = file.lines().enumerate().filter_map(move |(i, line)| {
        let at = |m: String| anyhow::anyhow!("{}:{}: {m}", path.display(), i + 1);
        let line = match line {
            Ok(line) => line,
            Err(e) => return Some(Err(anyhow::anyhow!("cannot read {}: {e}", path.display()))),
        };
        let record = match parse_fixture_record(&line) {
            Ok(Some(FixtureRecord::Event(record))) => record,
            Ok(Some(FixtureRecord::Query { .. }) | None) => return None,
            Err(m) => return Some(Err(at(m))),
        };
        position += 1;
        // The time as the line writes it (its offset kept: the record holds it in UTC).
        #[derive(serde::Deserialize)]
        struct Time {
            time: Option<String>,
        }
        let time = serde_json::from_str::<Time>(&line).ok().and_then(|t| t.time);
        Some(to_outgoing(*record, position, time, sign).map_err(at))
    });
    Ok(lines)
}

/// The message of one record: its stored headers as they are, else the documented headers of
/// its event, `Event-Time` as `time_text` writes it; signed with `sign` (replacing any
/// signature it had).
fn to_outgoing(
    record: EventRecord,
    position: u64,
    time_text: Option<String>,
    sign: Option<&(String, Vec<u8>)>,
) -> Result<Outgoing, String> {
    let stored = record.stored_headers.clone();
    let event = record.into_event(position).map_err(|m| format!("not an event: {m}"))?;
    let mut headers = match stored {
        Some(stored) => stored,
        None => {
            let mut headers = crate::nats::event_headers(&event);
            if let Some(text) = time_text {
                let h = crate::nats::source::headers::EVENT_TIME;
                for (_, v) in headers.iter_mut().filter(|(k, _)| k == h) {
                    *v = text.trim().to_string();
                }
            }
            headers
        }
    };
    if let Some((id, key)) = sign {
        headers.retain(|(k, _)| !k.eq_ignore_ascii_case(crate::integrity::SIGNATURE));
        let signature =
            crate::integrity::Signed::from_headers(&event.subject, &headers, &event.payload)
                .sign(id, key);
        headers.push((crate::integrity::SIGNATURE.to_string(), signature));
    }
    header_map(headers.iter().map(|(k, v)| (k.as_str(), v.as_str())))
        .map_err(|e| format!("event {:?}: {e}", event.message_id))?;
    let identity = Identity::of(&event.subject, &headers, &event.payload);
    Ok(Outgoing { subject: event.subject, headers, payload: event.payload, identity })
}
