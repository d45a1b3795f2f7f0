//! Guests that fail: errors, panics, loops, memory bombs, undeclared effects.

use std::path::Path;

use crate::support::{jetfold, plugin};

#[test]
fn every_failure_is_reported_per_event_and_the_fold_goes_on() {
    let dir = plugin("faulty");
    let run = jetfold([Path::new("test"), &dir, Path::new("--format"), Path::new("json")]);
    assert_eq!(run.code, 1, "{}", run.all());
    let report: serde_json::Value = serde_json::from_str(&run.stdout).unwrap();
    let steps = report["steps"].as_array().unwrap();
    let outcome =
        |i: usize| (steps[i]["type"].as_str().unwrap().to_string(), steps[i]["error"].clone());
    let kinds: Vec<(String, String)> = (0..steps.len())
        .map(|i| (outcome(i).0, outcome(i).1["kind"].as_str().unwrap_or("ok").to_string()))
        .collect();
    let expected = [
        ("Ok", "ok"),
        ("Fail", "error"),
        ("Panic", "trap"),
        ("Ok", "ok"),
        ("Loop", "fuel"),
        ("Ok", "ok"),
        ("Bomb", "memory"),
        ("Sneak", "rejected-effect"),
        ("Ok", "ok"),
    ];
    let expected: Vec<(String, String)> =
        expected.iter().map(|(a, b)| (a.to_string(), b.to_string())).collect();
    assert_eq!(kinds, expected);
    assert_eq!(steps[1]["error"]["code"], "rejected");
    assert!(steps[2]["error"]["message"].as_str().unwrap().contains("panicked"));
    assert!(steps[7]["error"]["message"].as_str().unwrap().contains("table `secrets`"));
    // Failed events leave the state alone; the instance recovers after each trap.
    assert_eq!(report["state"]["a"]["ok"], 4);
}

#[test]
fn a_panic_is_shown_with_the_guest_stack() {
    let dir = plugin("faulty");
    let run = jetfold([Path::new("test"), &dir]);
    assert!(run.stdout.contains("#3 Panic [a] ✗ trap: apply trapped"), "{}", run.all());
    assert!(run.stdout.contains("faulty::Seen as jetfold_guest::Projection"), "{}", run.all());
    assert!(
        run.stdout.contains("#5 Loop [a] ✗ fuel: apply ran out of fuel after 20000000 units"),
        "{}",
        run.all()
    );
    assert!(
        run.stdout.contains("#7 Bomb [a] ✗ memory: apply exceeded the memory cap of 16 MiB"),
        "{}",
        run.all()
    );
    assert!(run.stderr.contains("5 steps failed"), "{}", run.all());
}

#[test]
fn a_guest_rejecting_its_configuration_stops_the_run() {
    let tmp = crate::support::plugin_copy("person-archive");
    let manifest = tmp.path().join("plugin.toml");
    let text = std::fs::read_to_string(&manifest)
        .unwrap()
        .replace("inactive-days = 365", "inactive-days = 0");
    std::fs::write(&manifest, text).unwrap();
    let run = jetfold([Path::new("test"), tmp.path()]);
    assert_eq!(run.code, 2, "{}", run.all());
    assert!(run.stderr.contains("plugin `person-archive`"), "{}", run.all());
    assert!(
        run.stderr.contains("invalid-config: inactive-days must be at least 1"),
        "{}",
        run.all()
    );
}
