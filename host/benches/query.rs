//! Read-model queries over all keys: `count_by_status` of compute-resource at 10,000, 100,000
//! and 1,000,000 keys, through the path the daemon's query responder takes (states read from
//! the SQLite sink, then the guest), beside reading the states alone (the floor). Medians of
//! JETFOLD_BENCH_ROUNDS rounds (default 3); nothing here asserts on time.

use std::time::Instant;

use chrono::{DateTime, Utc};
use compute_resource::{Resource, ResourceState, Status};
use jetfold_host::{
    component::ComponentLoader,
    guest::GuestInstance,
    manifest::Manifest,
    query::{QueryReply, QueryRequest, Responder},
    sink::{Commit, Sink, SinkTarget},
};

mod common;

fn median(mut xs: Vec<f64>) -> f64 {
    xs.sort_by(|a, b| a.partial_cmp(b).unwrap());
    xs[xs.len() / 2]
}

fn time(s: &str) -> DateTime<Utc> {
    s.parse().unwrap()
}

/// A resource's state as the fixture leaves it: about 300 bytes of JSON.
fn state(i: usize) -> Vec<u8> {
    let status =
        [Status::Provisioning, Status::Active, Status::Maintenance, Status::Decommissioned][i % 4];
    let resource = Resource {
        id: format!("r-{i}"),
        name: format!("web-{i}"),
        kind: "vm".into(),
        region: "eu-west-1".into(),
        status,
        organization_id: Some("org-7".into()),
        labels: [("tier".to_string(), "frontend".to_string())].into_iter().collect(),
        policies: Default::default(),
        status_reason: None,
        registered_at: time("2026-03-01T09:00:00Z"),
        updated_at: time("2026-03-01T09:10:00Z"),
        version: 3,
    };
    serde_json::to_vec(&ResourceState(Some(resource))).unwrap()
}

fn main() {
    let rounds: usize =
        std::env::var("JETFOLD_BENCH_ROUNDS").ok().and_then(|r| r.parse().ok()).unwrap_or(3);
    let plugin_dir = common::compute_resource();
    let manifest = Manifest::load(&plugin_dir).unwrap();
    let cache = tempfile::tempdir().unwrap();
    let loader = ComponentLoader::new(Some(cache.path().to_path_buf())).unwrap();
    let component = loader.load(manifest.kind, &manifest.wasm_path()).unwrap();
    let request = serde_json::to_vec(&QueryRequest {
        request: serde_json::json!({"count_by_status": {}}),
        key: None,
    })
    .unwrap();
    println!(
        "count_by_status over every key of compute-resource (states of ~{} bytes), SQLite sink:",
        state(0).len()
    );
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("query.db");
    let target = SinkTarget::Sqlite(db.clone());
    let mut stored = 0;
    for keys in [10_000usize, 100_000, 1_000_000] {
        {
            let mut sink = Sink::open(&target).unwrap();
            for chunk in (stored..keys).collect::<Vec<_>>().chunks(50_000) {
                let states = chunk.iter().map(|&i| (format!("r-{i}"), state(i))).collect();
                let commit = Commit {
                    plugin: manifest.name.clone(),
                    last_seq: chunk[chunk.len() - 1] as u64 + 1,
                    snapshot_seq: chunk[chunk.len() - 1] as u64 + 1,
                    states,
                    ..Default::default()
                };
                sink.commit(&commit).unwrap();
            }
            stored = keys;
        }
        let guest = GuestInstance::new(
            &manifest.name,
            &component,
            loader.engine(),
            manifest.limits.clone(),
            "{}".into(),
        )
        .unwrap();
        let mut responder = Responder::new(manifest.name.clone(), guest, target.clone());
        let mut read = Vec::new();
        let mut answered = Vec::new();
        let mut answer = None;
        for _ in 0..rounds {
            let started = Instant::now();
            let states = Sink::open(&target).unwrap().states(&manifest.name).unwrap();
            read.push(started.elapsed().as_secs_f64());
            assert_eq!(states.len(), keys);
            drop(states);
            let started = Instant::now();
            let reply = responder.answer(&request);
            answered.push(started.elapsed().as_secs_f64());
            answer = Some(reply);
        }
        let answer = match answer.unwrap() {
            QueryReply::Response(v) => v.to_string(),
            QueryReply::Error { kind, message, .. } => format!("failed ({kind}): {message}"),
        };
        println!(
            "  {keys:>9} keys: query {:>8.1} ms   (reading the states alone {:>7.1} ms, {:.2}x)   {answer}",
            median(answered.clone()) * 1e3,
            median(read.clone()) * 1e3,
            median(answered) / median(read),
        );
    }
}
