//! What the daemon benchmarks share: the event stream they fold and small helpers.

#![allow(dead_code)] // each benchmark uses part of it

use jetfold_host::event::{Event, JSON};

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
