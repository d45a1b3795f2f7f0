//! What the daemon benchmarks share: the event stream they fold and small helpers.

#![allow(dead_code)] // each benchmark uses part of it

use std::path::PathBuf;

use jetfold_host::{
    builder::{BuildOptions, build_plugin},
    event::{Event, JSON},
    nats::local::LocalNats,
};

/// Builds `plugins/compute-resource` into its component (release) and returns its directory.
pub fn compute_resource() -> PathBuf {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).parent().unwrap().to_path_buf();
    let plugin = root.join("plugins/compute-resource");
    let options =
        BuildOptions { target_dir: Some(target_dir().join("jetfold-guests")), debug: false };
    build_plugin(&plugin, &options).expect("build compute-resource");
    plugin
}

/// A local nats-server with an empty INFRA stream (`infra.>`): the server, its URL, a client.
pub async fn infra() -> (LocalNats, String, async_nats::jetstream::Context) {
    let nats = jetfold_host::nats::local::start().unwrap();
    let url = nats.url();
    let js = async_nats::jetstream::new(async_nats::connect(url.as_str()).await.unwrap());
    js.create_stream(async_nats::jetstream::stream::Config {
        name: "INFRA".into(),
        subjects: vec!["infra.>".into()],
        ..Default::default()
    })
    .await
    .unwrap();
    (nats, url, js)
}

/// Publishes `events`, 5,000 in flight at a time, until the stream has stored them all.
pub async fn publish_all(js: &async_nats::jetstream::Context, events: &[Event]) {
    for chunk in events.chunks(5_000) {
        let mut acks = Vec::new();
        for e in chunk {
            acks.push(jetfold_host::nats::publish_event(js, e).await.unwrap());
        }
        for a in acks {
            a.await.unwrap();
        }
    }
}

/// A daemon directory holding `plugins/compute-resource` (manifest and component).
pub fn daemon_dir(plugin: &std::path::Path) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let dest = dir.path().join("plugins/compute-resource");
    std::fs::create_dir_all(&dest).unwrap();
    std::fs::copy(plugin.join("plugin.toml"), dest.join("plugin.toml")).unwrap();
    std::fs::copy(plugin.join("compute_resource.wasm"), dest.join("compute_resource.wasm"))
        .unwrap();
    dir
}

/// The cargo target directory the benchmark runs from.
pub fn target_dir() -> std::path::PathBuf {
    std::env::current_exe().unwrap().ancestors().nth(3).unwrap().to_path_buf()
}

/// `n` compute-resource events over `n / 10` resources: registration, organisation, a
/// policy, six status changes, the policy removed, in that order for every resource.
pub fn events(n: usize) -> Vec<Event> {
    let start: chrono::DateTime<chrono::Utc> = "2026-01-01T00:00:00Z".parse().unwrap();
    let resources = n / 10;
    let mut out = Vec::with_capacity(n);
    for step in 0..10 {
        for r in 0..resources {
            let (ty, payload) = match step {
                0 => (
                    "ResourceRegistered",
                    serde_json::json!({"name": format!("vm-{r}"), "kind": "vm", "region": "eu-west"}),
                ),
                1 => (
                    "OrganizationAssigned",
                    serde_json::json!({"organization_id": format!("org-{}", r % 50)}),
                ),
                2 => (
                    "PolicyAdded",
                    serde_json::json!({"policy_id": "backup", "name": "Nightly backup"}),
                ),
                3 | 5 | 7 => ("StatusChanged", serde_json::json!({"to": "Active"})),
                4 | 6 | 8 => (
                    "StatusChanged",
                    serde_json::json!({"to": "Maintenance", "reason": "patching"}),
                ),
                _ => ("PolicyRemoved", serde_json::json!({"policy_id": "backup"})),
            };
            let seq = out.len() as u64 + 1;
            out.push(Event {
                sequence: seq,
                subject: format!("infra.resource.r-{r}.{ty}"),
                message_id: format!("bench-{seq}"),
                event_type: ty.into(),
                aggregate_id: format!("r-{r}"),
                correlation_id: None,
                causation_id: None,
                time: start + chrono::Duration::seconds(seq as i64),
                schema_version: 1,
                headers: vec![],
                payload: serde_json::to_vec(&payload).unwrap(),
                content_type: JSON.into(),
            });
        }
    }
    out
}

/// The median of a non-empty list.
pub fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// An event as the guest SDK's native entry points take it.
pub fn raw(e: &Event) -> jetfold_guest::__private::RawEvent {
    jetfold_guest::__private::RawEvent {
        sequence: e.sequence,
        subject: e.subject.clone(),
        message_id: e.message_id.clone(),
        event_type: e.event_type.clone(),
        aggregate_id: e.aggregate_id.clone(),
        correlation_id: e.correlation_id.clone(),
        causation_id: e.causation_id.clone(),
        seconds: e.time.timestamp(),
        nanoseconds: e.time.timestamp_subsec_nanos(),
        schema_version: e.schema_version,
        headers: e.headers.clone(),
        payload: e.payload.clone(),
        content_type: e.content_type.clone(),
    }
}
