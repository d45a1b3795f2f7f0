//! `jetfold events export` and `import`: a stream as JSON Lines (the fixture format, one
//! [`EventRecord`] per line) and back, for moving events between streams and servers.
//!
//! What is kept: the order, every message id, subject, event time, type, aggregate id,
//! correlation and causation, schema version, content type, every other header as it was
//! (signatures included) and the payload bytes. Imported messages carry the documented headers
//! explicitly, so an event whose type or time came from its payload or subject reads back
//! the same but now has them as headers too.

use std::io::{BufRead, Write};
use std::path::Path;

use anyhow::Context as _;
use async_nats::jetstream;

use crate::event::{Event, EventRecord};
use crate::fold::{FixtureLine, parse_fixture_line};
use crate::nats::{publish_event, reader::StreamReader, source::event_from_message};

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
        let record = match event_from_message(&message) {
            Ok(event) => EventRecord::from_event(&event),
            Err(_) => {
                done.unreadable += 1;
                raw_record(&message)?
            }
        };
        serde_json::to_writer(&mut *out, &record)?;
        out.write_all(b"\n")?;
        done.events += 1;
        progress(done.events, reader.total);
    }
    out.flush()?;
    Ok(done)
}

/// The record of a message whose headers do not decode: all headers kept as other headers.
fn raw_record(message: &jetstream::Message) -> anyhow::Result<EventRecord> {
    let info = message.info().map_err(|e| anyhow::anyhow!("{e}"))?;
    let headers = message
        .headers
        .iter()
        .flat_map(|h| h.iter())
        .flat_map(|(k, vs)| vs.iter().map(move |v| (k.to_string(), v.as_str().to_string())))
        .collect();
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
        headers,
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
    /// Events the stream already had (same message id within its duplicate window).
    pub duplicates: u64,
    /// The stream sequence of the last one stored.
    pub last_seq: u64,
}

/// How many publishes are in flight before their acknowledgements are awaited.
const CHUNK: usize = 1000;

/// Publishes the events of a JSON Lines file to `stream`, in order, creating the stream with
/// `subjects` if it does not exist (every `<first token>.>` of the file's subjects when
/// empty). With `sign`, each event gets a `Jetfold-Signature` by that key.
pub async fn import(
    js: &jetstream::Context,
    path: &Path,
    stream: &str,
    subjects: &[String],
    sign: Option<&(String, Vec<u8>)>,
) -> anyhow::Result<Imported> {
    let subjects = if subjects.is_empty() {
        // A first pass over the file, checking every line before anything is published.
        let mut first_tokens = std::collections::BTreeSet::new();
        for event in events(path)? {
            let event = event?;
            first_tokens.insert(event.subject.split('.').next().unwrap_or_default().to_string());
        }
        first_tokens.into_iter().map(|t| format!("{t}.>")).collect()
    } else {
        subjects.to_vec()
    };
    js.get_or_create_stream(jetstream::stream::Config {
        name: stream.to_string(),
        subjects,
        ..Default::default()
    })
    .await
    .map_err(|e| anyhow::anyhow!("cannot open or create stream `{stream}`: {e}"))?;

    let mut done = Imported::default();
    let mut chunk = Vec::with_capacity(CHUNK);
    for event in events(path)? {
        chunk.push(event?);
        if chunk.len() == CHUNK {
            publish_chunk(js, stream, sign, &mut chunk, &mut done).await?;
        }
    }
    publish_chunk(js, stream, sign, &mut chunk, &mut done).await?;
    Ok(done)
}

/// Publishes `chunk` (emptying it), then awaits every acknowledgement.
async fn publish_chunk(
    js: &jetstream::Context,
    stream: &str,
    sign: Option<&(String, Vec<u8>)>,
    chunk: &mut Vec<Event>,
    done: &mut Imported,
) -> anyhow::Result<()> {
    let mut pending = Vec::with_capacity(chunk.len());
    for mut event in chunk.drain(..) {
        if let Some((id, key)) = sign {
            crate::integrity::sign_event(&mut event, id, key);
        }
        pending.push(publish_event(js, &event).await?);
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

/// The events of a JSON Lines file, read a line at a time; an error names the line.
fn events(path: &Path) -> anyhow::Result<impl Iterator<Item = anyhow::Result<Event>> + '_> {
    let file = std::fs::File::open(path)
        .map(std::io::BufReader::new)
        .with_context(|| format!("cannot read {}", path.display()))?;
    let mut position = 0;
    let lines = file.lines().enumerate().map(move |(i, line)| {
        let line = line.with_context(|| format!("cannot read {}", path.display()))?;
        parse_fixture_line(&line, &mut position)
            .map_err(|m| anyhow::anyhow!("{}:{}: {m}", path.display(), i + 1))
    });
    Ok(lines.filter_map(|line| match line {
        Ok(Some(FixtureLine::Event(event))) => Some(Ok(event)),
        Ok(Some(FixtureLine::Query { .. }) | None) => None,
        Err(e) => Some(Err(e)),
    }))
}
