//! The effects a guest returns (any strings at all) → what the host accepts and runs. Never
//! panics. What it accepts stays inside the manifest's `[allow]`, can be published (header
//! names and values NATS takes) and stored (no NUL, which PostgreSQL's `text` and `jsonb`
//! refuse); and a batch's per-table plan leaves the same rows as running the accepted effects
//! one by one.
#![no_main]

use std::collections::BTreeMap;

use jetfold_contract::{
    commit::{Commit, merge_patch},
    effect::{self, Effect, EffectRejection, LogLevel, MessageKind},
    headers,
    manifest::{Allow, EffectKind},
};
use libfuzzer_sys::{
    arbitrary::{Result, Unstructured},
    fuzz_target,
};

const TABLES: [&str; 3] = ["resources", "people", "audit"];
const TOKENS: [&str; 6] = ["infra", "cmd", "resource", "*", ">", "x"];
const KINDS: [EffectKind; 6] = [
    EffectKind::Upsert,
    EffectKind::Update,
    EffectKind::Delete,
    EffectKind::Emit,
    EffectKind::Command,
    EffectKind::Log,
];

fn text(u: &mut Unstructured<'_>, common: &[&str]) -> Result<String> {
    Ok(if u.ratio(3, 4)? { (*u.choose(common)?).to_string() } else { u.arbitrary()? })
}

fn subject(u: &mut Unstructured<'_>) -> Result<String> {
    if u.ratio(1, 8)? {
        return u.arbitrary();
    }
    let n = u.int_in_range(1..=4)?;
    let tokens: Result<Vec<&str>> = (0..n).map(|_| u.choose(&TOKENS).copied()).collect();
    Ok(tokens?.join("."))
}

/// A JSON object, usually well-formed and small, sometimes anything.
fn document(u: &mut Unstructured<'_>) -> Result<String> {
    if u.ratio(1, 8)? {
        return u.arbitrary();
    }
    let n = u.int_in_range(0..=3)?;
    let mut fields = Vec::new();
    for _ in 0..n {
        let name = *u.choose(&["a", "b", "nested", "\\u0000"])?;
        let value = match u.int_in_range(0..=4)? {
            0 => "null".to_string(),
            1 => u.int_in_range(-5i32..=5)?.to_string(),
            2 => serde_json::to_string(&u.arbitrary::<String>()?).unwrap(),
            3 => "{\"a\":1,\"c\":null}".to_string(),
            _ => "[1,2]".to_string(),
        };
        fields.push(format!("\"{name}\":{value}"));
    }
    Ok(format!("{{{}}}", fields.join(",")))
}

/// A message as a guest returns it (the WIT `message` record).
#[derive(Clone)]
struct Message {
    kind: MessageKind,
    subject: String,
    message_type: String,
    payload: String,
    headers: Vec<(String, String)>,
}

/// An effect as a guest returns it (the WIT `effect` variant): strings, unchecked.
#[derive(Clone)]
enum Guest {
    Upsert { table: String, key: String, row: String },
    Update { table: String, key: String, patch: String },
    Delete { table: String, key: String },
    Emit(Message),
    Log(String),
}

/// A policy's decision (the WIT `decision` variant).
enum Decision {
    Command(Message),
    Effect(Guest),
}

fn message(u: &mut Unstructured<'_>) -> Result<Message> {
    let headers = (0..u.int_in_range(0..=2)?)
        .map(|_| Ok((text(u, &["X-Trace", "Nats-Msg-Id"])?, u.arbitrary()?)))
        .collect::<Result<_>>()?;
    Ok(Message {
        kind: if u.arbitrary()? { MessageKind::Event } else { MessageKind::Command },
        subject: subject(u)?,
        message_type: text(u, &["ArchivePerson", "Maintenance"])?,
        payload: document(u)?,
        headers,
    })
}

fn guest_effect(u: &mut Unstructured<'_>) -> Result<Guest> {
    let key = |u: &mut Unstructured<'_>| text(u, &["r-1", "r-2", "r-3"]);
    Ok(match u.int_in_range(0..=4)? {
        0 => Guest::Upsert { table: text(u, &TABLES)?, key: key(u)?, row: document(u)? },
        1 => Guest::Update { table: text(u, &TABLES)?, key: key(u)?, patch: document(u)? },
        2 => Guest::Delete { table: text(u, &TABLES)?, key: key(u)? },
        3 => Guest::Emit(message(u)?),
        _ => Guest::Log(u.arbitrary()?),
    })
}

/// What the host does with each WIT case (`jetfold_host::effect::from_guest`).
fn convert(i: usize, e: Guest) -> std::result::Result<Effect, EffectRejection> {
    match e {
        Guest::Upsert { table, key, row } => Effect::upsert(i, table, key, row),
        Guest::Update { table, key, patch } => Effect::update(i, table, key, patch),
        Guest::Delete { table, key } => Ok(Effect::Delete { table, key }),
        Guest::Emit(m) => convert_message(i, m),
        Guest::Log(message) => Ok(Effect::Log { level: LogLevel::Info, message }),
    }
}

fn convert_message(i: usize, m: Message) -> std::result::Result<Effect, EffectRejection> {
    Effect::message(i, m.kind, m.subject, m.message_type, m.payload, m.headers)
}

fn allow(u: &mut Unstructured<'_>) -> Result<Allow> {
    let mut allow = Allow::default();
    for t in TABLES {
        if u.arbitrary()? {
            allow.tables.push(t.to_string());
        }
    }
    for _ in 0..u.int_in_range(0..=2)? {
        allow.subjects.push(subject(u)?);
    }
    for k in KINDS {
        if u.ratio(1, 3)? {
            allow.effects.push(k);
        }
    }
    Ok(allow)
}

fn has_nul(value: &serde_json::Value) -> bool {
    match value {
        serde_json::Value::String(s) => s.contains('\0'),
        serde_json::Value::Array(items) => items.iter().any(has_nul),
        serde_json::Value::Object(m) => m.iter().any(|(k, v)| k.contains('\0') || has_nul(v)),
        _ => false,
    }
}

type Rows = BTreeMap<(String, String), serde_json::Value>;

fn check_accepted(effects: &[Effect], allow: &Allow) {
    for e in effects {
        match e {
            Effect::Upsert { table, key, .. }
            | Effect::Update { table, key, .. }
            | Effect::Delete { table, key } => {
                assert!(allow.tables.contains(table), "table {table:?} is not allowed");
                assert!(!key.contains('\0'), "a key with NUL was accepted");
            }
            Effect::Emit { subject, headers, message_type, .. } => {
                assert!(allow.subjects.iter().any(|p| effect::subject_matches(p, subject)));
                assert!(
                    subject.split('.').all(|t| !t.is_empty() && t != "*" && t != ">"),
                    "wildcard subject {subject:?} accepted"
                );
                assert!(!subject.contains(char::is_control), "subject {subject:?} accepted");
                // What NATS takes (the host's tests hold this grammar to async-nats's).
                let mut all = headers.clone();
                all.push(("Event-Type".into(), message_type.clone()));
                for (name, value) in &all {
                    headers::check(name, value).expect("accepted headers can be published");
                }
            }
            Effect::Log { .. } => {}
        }
        if !allow.effects.is_empty() {
            assert!(allow.effects.contains(&e.kind()));
        }
        let document = match e {
            Effect::Upsert { row, .. } => Some(row),
            Effect::Update { patch, .. } => Some(patch),
            Effect::Emit { payload, .. } => Some(payload),
            _ => None,
        };
        if let Some(doc) = document {
            let value: serde_json::Value = serde_json::from_str(doc.get()).unwrap();
            assert!(!has_nul(&value), "a document with NUL was accepted: {}", doc.get());
        }
    }
}

/// Runs SQL effects one by one, as the manifest documents them.
fn one_by_one(rows: &mut Rows, effects: &[Effect]) {
    for e in effects {
        match e {
            Effect::Upsert { table, key, row } => {
                rows.insert((table.clone(), key.clone()), serde_json::from_str(row.get()).unwrap());
            }
            Effect::Update { table, key, patch } => {
                if let Some(row) = rows.get_mut(&(table.clone(), key.clone())) {
                    merge_patch(row, &serde_json::from_str(patch.get()).unwrap());
                }
            }
            Effect::Delete { table, key } => {
                rows.remove(&(table.clone(), key.clone()));
            }
            _ => {}
        }
    }
}

/// Runs a batch's plan, as the sinks do.
fn planned(rows: &mut Rows, commit: &Commit) {
    for (table, plan) in commit.plan() {
        for (key, doc, _) in &plan.upserts {
            rows.insert((table.to_string(), key.clone()), serde_json::from_str(doc).unwrap());
        }
        for key in &plan.deletes {
            rows.remove(&(table.to_string(), key.clone()));
        }
        for (key, patches) in &plan.patches {
            if let Some(row) = rows.get_mut(&(table.to_string(), key.clone())) {
                for (_, patch) in patches {
                    merge_patch(row, patch);
                }
            }
        }
    }
}

fuzz_target!(|data: &[u8]| {
    let mut u = Unstructured::new(data);
    let Ok(allow) = allow(&mut u) else { return };
    // Rows already stored, which updates patch and deletes remove.
    let stored: Rows = (0..u.int_in_range(0..=3usize).unwrap_or(0))
        .map(|i| ((TABLES[i % 3].to_string(), format!("r-{i}")), serde_json::json!({"a": i})))
        .collect();
    let mut effects = Vec::new();
    let mut decisions = Vec::new();
    while !u.is_empty() && effects.len() < 16 {
        let Ok(e) = guest_effect(&mut u) else { break };
        decisions.push(match u.arbitrary::<bool>() {
            Ok(true) => match message(&mut u) {
                Ok(m) => Decision::Command(m),
                Err(_) => break,
            },
            _ => Decision::Effect(e.clone()),
        });
        effects.push(e);
    }
    // As `jetfold_host::effect::accept_decisions`: a command decision is a command message.
    let decided = effect::accept_all(decisions, &allow, |i, d| match d {
        Decision::Command(m) => convert_message(i, Message { kind: MessageKind::Command, ..m }),
        Decision::Effect(e) => convert(i, e),
    });
    if let Ok(accepted) = decided {
        check_accepted(&accepted, &allow);
    }
    let Ok(accepted) = effect::accept_all(effects, &allow, convert) else { return };
    check_accepted(&accepted, &allow);

    let commit = Commit {
        effects: accepted.iter().enumerate().map(|(i, e)| (i as u64 + 1, e.clone())).collect(),
        ..Commit::default()
    };
    let (mut expected, mut got) = (stored.clone(), stored);
    one_by_one(&mut expected, &accepted);
    planned(&mut got, &commit);
    assert_eq!(got, expected, "the batch plan differs from running the effects in order");
});
