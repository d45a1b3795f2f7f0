//! A message as NATS delivers it (subject, headers, payload, stream position) → the event the
//! host folds. Never panics; what it decodes keeps the message's sequence, subject and payload
//! bytes; the event's JSON record (fixtures, `jetfold events export`) reads back as the same
//! event; a signature made over it verifies, and not after the payload changes.
#![no_main]

use chrono::{DateTime, Utc};
use jetfold_contract::{
    decode::{Position, decode},
    event::{Event, EventRecord},
    headers,
    integrity::Signed,
};
use libfuzzer_sys::{arbitrary::Unstructured, fuzz_target};

/// Header names the decoder reads, so that inputs reach them often.
const KNOWN: [&str; 9] = [
    headers::MSG_ID,
    headers::EVENT_TYPE,
    headers::AGGREGATE_ID,
    headers::CORRELATION_ID,
    headers::CAUSATION_ID,
    headers::SCHEMA_VERSION,
    headers::EVENT_TIME,
    headers::CONTENT_TYPE,
    "X-Custom",
];

/// A message as NATS delivers it: subject, headers in order, payload.
struct Message {
    subject: String,
    headers: Vec<(String, String)>,
    payload: Vec<u8>,
}

fn input(u: &mut Unstructured<'_>) -> libfuzzer_sys::arbitrary::Result<(Message, u64, i64)> {
    let subject: String = if u.arbitrary()? {
        let id: u8 = u.arbitrary()?;
        let ty = *u.choose(&["Registered", "StatusChanged", "", "a b"])?;
        format!("infra.resource.r-{id}.{ty}")
    } else {
        u.arbitrary()?
    };
    let mut headers = Vec::new();
    let n: u8 = u.int_in_range(0..=6)?;
    for _ in 0..n {
        let name: String =
            if u.arbitrary()? { (*u.choose(&KNOWN)?).to_string() } else { u.arbitrary()? };
        let value: String = match u.int_in_range(0..=3)? {
            0 => "2026-03-01T09:00:00+02:00".into(),
            1 => u.int_in_range(0u32..=5)?.to_string(),
            _ => u.arbitrary()?,
        };
        // NATS delivers only valid header names and values; others never reach the decoder.
        if headers::check(&name, &value).is_ok() {
            headers.push((name, value));
        }
    }
    let sequence: u64 = u.arbitrary()?;
    let published: i64 = u.int_in_range(0..=4_102_444_800)?;
    let payload = u.bytes(u.len())?.to_vec();
    Ok((Message { subject, headers, payload }, sequence, published))
}

fn valid_subject(s: &str) -> bool {
    !s.is_empty() && s.split('.').all(|t| !t.is_empty() && !t.contains(char::is_whitespace))
}

fuzz_target!(|data: &[u8]| {
    let mut u = Unstructured::new(data);
    let Ok((message, sequence, published)) = input(&mut u) else { return };
    let published: DateTime<Utc> = DateTime::from_timestamp(published, 0).unwrap();
    let at = Position { stream: "EVENTS", sequence, published };
    let pairs = message.headers.iter().map(|(k, v)| (k.as_str(), v.as_str()));
    let Ok(event) = decode(&message.subject, pairs, &message.payload, at) else { return };
    assert_eq!(event.sequence, sequence);
    assert_eq!(event.subject, message.subject);
    assert_eq!(event.payload, message.payload);

    if valid_subject(&event.subject) {
        let record = EventRecord::from_event(&event);
        let line = serde_json::to_string(&record).expect("a record serializes");
        assert!(!line.contains('\n'), "a record is one line of JSONL");
        let back: EventRecord = serde_json::from_str(&line).expect("a record reads back");
        let again: Event = back.into_event(0).expect("a record of a decoded event is valid");
        assert_eq!(again, event, "the JSON record of an event reads back as the same event");
    }

    let key = [("k".to_string(), b"secret".to_vec())];
    let time = event.time.to_rfc3339();
    let signed = Signed::of_event(&event, &time);
    let signature = signed.sign("k", b"secret");
    assert_eq!(signed.verify(Some(&signature), &key), Ok(()));
    let mut altered = event.payload.clone();
    altered.push(b' ');
    let changed = Signed { payload: &altered, ..signed };
    assert!(changed.verify(Some(&signature), &key).is_err());
});
