//! What one batch commits: its SQL effects, the states it changed, the events it rejected,
//! the messages to publish after it and the checkpoint; and the per-table plan the sinks run,
//! equivalent to running the effects in order.

use crate::effect::Effect;

/// Where a plugin has got to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Checkpoint {
    /// The plugin version that committed it (hex sha256).
    pub digest: String,
    /// The last stream sequence applied.
    pub last_seq: u64,
    /// The `[state] version` the plugin's stored states are written in.
    pub state_version: u32,
    /// The sequence the stored states are as of (the last snapshot): `last_seq` when states
    /// are written with every commit; below it when events since were committed without them.
    pub snapshot_seq: u64,
}

/// An event a plugin rejected, recorded with the batch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rejected {
    /// Stream sequence.
    pub seq: u64,
    /// The state key.
    pub key: String,
    /// Event type.
    pub event_type: String,
    /// `error`, `trap`, `fuel`, `memory`, `rejected-effect`, …
    pub kind: String,
    /// The guest's code, if it returned one.
    pub code: Option<String>,
    /// What happened.
    pub message: String,
}

/// A message to publish after the commit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutboxMessage {
    /// `Nats-Msg-Id`: `<plugin>:<source stream>:<source seq>:<index>`, so a re-publish is dropped
    /// by JetStream.
    pub msg_id: String,
    /// Subject.
    pub subject: String,
    /// Headers (including the id, correlation and provenance).
    pub headers: Vec<(String, String)>,
    /// Payload.
    pub payload: Vec<u8>,
}

/// Everything one batch commits.
#[derive(Debug, Default)]
pub struct Commit {
    /// The plugin.
    pub plugin: String,
    /// The name its checkpoint is kept under, if not the plugin's (one per partition when
    /// daemons split its keys).
    pub checkpoint: Option<String>,
    /// Its version.
    pub digest: String,
    /// The highest sequence in the batch.
    pub last_seq: u64,
    /// The `[state] version` of the states committed (all of the plugin's states are in it).
    pub state_version: u32,
    /// Appended to every table name the effects write (a rebuild writes tables of its own).
    pub table_suffix: String,
    /// SQL effects with the sequence of the event that made them, in order.
    pub effects: Vec<(u64, Effect)>,
    /// New states by key: with a snapshot, every state changed since the last one.
    pub states: Vec<(String, Vec<u8>)>,
    /// The sequence the stored states are as of once this commits: `last_seq` when the
    /// commit holds a snapshot, else the last snapshot's.
    pub snapshot_seq: u64,
    /// Rejected events.
    pub rejected: Vec<Rejected>,
    /// Rejected events folded since, by a replayed copy (`jetfold dlq replay`): the rejected
    /// event's sequence and the copy's.
    pub replayed: Vec<(u64, u64)>,
    /// Messages to publish.
    pub outbox: Vec<OutboxMessage>,
    /// Events where a shadow version disagreed with the live one.
    pub shadow_diffs: Vec<ShadowDiff>,
}

/// An event where a shadow version's outcome differs from the live version's.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ShadowDiff {
    /// The shadow version's digest.
    pub shadow_digest: String,
    /// Stream sequence.
    pub seq: u64,
    /// State key.
    pub key: String,
    /// The live version's outcome: new state and effects, or the error.
    pub live: String,
    /// The shadow version's outcome.
    pub shadow: String,
}

/// What a batch's SQL effects leave behind in one table, key by key: the effects of a batch
/// folded in order, so each key gets one write however many effects named it.
#[derive(Debug, Default, PartialEq)]
pub struct TablePlan {
    /// Rows to insert or replace whole: key, JSON document, sequence of the last effect.
    pub upserts: Vec<(String, String, i64)>,
    /// Rows to remove: key.
    pub deletes: Vec<String>,
    /// Keys whose last write is a merge patch onto the row already stored: the patches in
    /// order with their sequences (a patch onto a missing row does nothing).
    pub patches: Vec<(String, Vec<(i64, serde_json::Value)>)>,
}

enum Final<'a> {
    /// The row as the plugin wrote it, or as merged since.
    Upsert(Result<&'a str, serde_json::Value>, i64),
    Delete,
    Patches(Vec<(i64, serde_json::Value)>),
}

impl Commit {
    /// The name the checkpoint row is written under.
    pub fn checkpoint_name(&self) -> &str {
        self.checkpoint.as_deref().unwrap_or(&self.plugin)
    }

    /// The batch's SQL effects as one plan per table, equivalent to running them in order.
    pub fn plan(&self) -> std::collections::BTreeMap<&str, TablePlan> {
        use std::collections::{BTreeMap, HashMap, hash_map::Entry};
        let mut finals: BTreeMap<&str, (Vec<&str>, HashMap<&str, Final<'_>>)> = BTreeMap::new();
        let parse = |raw: &serde_json::value::RawValue| {
            serde_json::from_str::<serde_json::Value>(raw.get()).unwrap_or_default()
        };
        for (seq, effect) in &self.effects {
            let seq = *seq as i64;
            let (table, key, next) = match effect {
                Effect::Upsert { table, key, row } => {
                    (table, key, Some(Final::Upsert(Ok(row.get()), seq)))
                }
                Effect::Delete { table, key } => (table, key, Some(Final::Delete)),
                Effect::Update { table, key, .. } => (table, key, None),
                Effect::Emit { .. } | Effect::Log { .. } => continue,
            };
            let (order, keys) = finals.entry(table.as_str()).or_default();
            let slot = match keys.entry(key.as_str()) {
                Entry::Occupied(slot) => slot.into_mut(),
                Entry::Vacant(slot) => {
                    order.push(key.as_str());
                    slot.insert(Final::Patches(Vec::new()))
                }
            };
            match (next, effect) {
                (Some(next), _) => *slot = next,
                (None, Effect::Update { patch, .. }) => match slot {
                    Final::Upsert(doc, at) => {
                        let mut merged = match doc {
                            Ok(text) => serde_json::from_str(text).unwrap_or_default(),
                            Err(value) => std::mem::take(value),
                        };
                        merge_patch(&mut merged, &parse(patch));
                        *doc = Err(merged);
                        *at = seq;
                    }
                    Final::Delete => {}
                    Final::Patches(list) => list.push((seq, parse(patch))),
                },
                (None, _) => unreachable!("only updates carry no replacement"),
            }
        }
        finals
            .into_iter()
            .map(|(table, (order, mut keys))| {
                let mut plan = TablePlan::default();
                for key in order {
                    match keys.remove(key).expect("every ordered key has a final write") {
                        Final::Upsert(doc, seq) => {
                            let doc = doc.map_or_else(|v| v.to_string(), str::to_string);
                            plan.upserts.push((key.to_string(), doc, seq))
                        }
                        Final::Delete => plan.deletes.push(key.to_string()),
                        Final::Patches(list) if list.is_empty() => {}
                        Final::Patches(list) => plan.patches.push((key.to_string(), list)),
                    }
                }
                (table, plan)
            })
            .collect()
    }
}

/// RFC 7386 JSON merge patch of `patch` into `target`.
pub fn merge_patch(target: &mut serde_json::Value, patch: &serde_json::Value) {
    use serde_json::Value;
    match patch {
        Value::Object(fields) => {
            if !target.is_object() {
                *target = Value::Object(Default::default());
            }
            let map = target.as_object_mut().expect("made an object above");
            for (k, v) in fields {
                if v.is_null() {
                    map.remove(k);
                } else {
                    merge_patch(map.entry(k.clone()).or_insert(Value::Null), v);
                }
            }
        }
        other => *target = other.clone(),
    }
}

#[cfg(test)]
mod tests {
    use super::{Commit, TablePlan, merge_patch};
    use crate::effect::Effect;
    use serde_json::{json, value::RawValue};

    #[test]
    fn a_plan_gives_each_key_the_write_its_effects_leave_in_order() {
        let raw = |s: &str| RawValue::from_string(s.into()).unwrap();
        let (t, k) = (|| "t".to_string(), |k: &str| k.to_string());
        let upsert =
            |key: &str, row: &str| Effect::Upsert { table: t(), key: k(key), row: raw(row) };
        let update = |key: &str, p: &str| Effect::Update { table: t(), key: k(key), patch: raw(p) };
        let delete = |key: &str| Effect::Delete { table: t(), key: k(key) };
        let batch = Commit {
            effects: vec![
                (1, upsert("a", r#"{"n":1,"x":{"y":1}}"#)),
                (2, update("a", r#"{"n":2,"x":{"y":null}}"#)),
                (3, update("stored", r#"{"m":1}"#)),
                (4, update("stored", r#"{"m":2}"#)),
                (5, upsert("gone", r#"{}"#)),
                (6, delete("gone")),
                (7, update("gone", r#"{"z":1}"#)),
                (8, delete("back")),
                (9, upsert("back", r#"{"b":1}"#)),
                (10, Effect::Log { level: crate::effect::LogLevel::Info, message: "x".into() }),
            ],
            ..Default::default()
        };
        let plan = batch.plan();
        assert_eq!(plan.len(), 1);
        assert_eq!(
            plan["t"],
            TablePlan {
                upserts: vec![
                    ("a".into(), r#"{"n":2,"x":{}}"#.into(), 2),
                    ("back".into(), r#"{"b":1}"#.into(), 9),
                ],
                deletes: vec!["gone".into()],
                patches: vec![("stored".into(), vec![(3, json!({"m":1})), (4, json!({"m":2}))])],
            }
        );
    }

    #[test]
    fn merge_patch_follows_rfc_7386() {
        let mut doc = json!({"a": "b", "c": {"d": "e", "f": "g"}});
        merge_patch(&mut doc, &json!({"a": "z", "c": {"f": null}}));
        assert_eq!(doc, json!({"a": "z", "c": {"d": "e"}}));
        let mut doc = json!({"a": [1]});
        merge_patch(&mut doc, &json!({"a": {"b": 1}, "n": 2}));
        assert_eq!(doc, json!({"a": {"b": 1}, "n": 2}));
    }
}
