//! Batches give exactly what one event at a time gives: random event streams of the example
//! plugins, failing and trapping events mixed in, folded through the batch path
//! (`jetfold:plugin@0.2.0`, states resident in the instance) with batches of 1, 7 and 500
//! events and fresh instances at random batch boundaries (a restart: the host's committed
//! states are the truth), against the plain fold that seeds every call with the key's state.
//! Every outcome (effects, or the rejection's kind, code and message) and every final state
//! must be the same.

use std::collections::HashMap;

use jetfold_host::{
    component::ComponentLoader,
    event::Event,
    fold::{Plugin, checked_step},
    guest::StepError,
    pipeline::fold::{Keyed, ResidentGuest},
    replay::Replayer,
};
use proptest::prelude::*;

use crate::support::{cache_dir, plugin};

/// A plugin of `plugins/` by name, or a plugin directory by path.
fn open(name: &str) -> Plugin {
    let dir = if name.contains('/') { std::path::PathBuf::from(name) } else { plugin(name) };
    let loader = ComponentLoader::new(Some(cache_dir())).unwrap();
    let plugin = Plugin::open(&dir, &loader).unwrap();
    assert!(plugin.guest.batches(), "{name} is built against jetfold:plugin@0.2.0");
    plugin
}

/// The `jetfold new` plugin of `lang` and `kind`, built once per test binary.
fn scaffolded(
    lang: jetfold_host::manifest::BuildLang,
    kind: jetfold_host::manifest::PluginKind,
) -> String {
    use jetfold_host::builder::{BuildOptions, build_plugin};
    use jetfold_host::scaffold::{NewPlugin, scaffold};
    static ROOT: std::sync::OnceLock<tempfile::TempDir> = std::sync::OnceLock::new();
    let root = ROOT.get_or_init(|| tempfile::tempdir().unwrap());
    let dir = root.path().join(format!("{lang}-{kind}"));
    if !dir.exists() {
        let plugin = NewPlugin { name: format!("batch-{lang}-{kind}"), lang, kind, sdk: None };
        scaffold(&dir, &plugin).unwrap();
        let options = BuildOptions {
            target_dir: Some(crate::support::target_dir().join("jetfold-guests")),
            debug: false,
        };
        build_plugin(&dir, &options).unwrap();
    }
    dir.to_str().unwrap().to_string()
}

/// One outcome, comparable: effects as their debug text, or the rejection.
fn outcome(o: &Result<Vec<jetfold_host::effect::Effect>, StepError>) -> String {
    match o {
        Ok(effects) => format!("ok {effects:?}"),
        Err(e) => format!("err {} {:?} {}", e.kind, e.code, e.message),
    }
}

/// The plain fold: one call per event, its key's state handed in every time.
fn one_at_a_time(
    plugin: &mut Plugin,
    events: &[(String, Event)],
) -> (Vec<String>, HashMap<String, Vec<u8>>) {
    let mut states: HashMap<String, Vec<u8>> = HashMap::new();
    let mut outcomes = Vec::new();
    for (key, event) in events {
        match checked_step(&mut plugin.guest, &plugin.manifest, states.get(key), event) {
            Ok((state, effects)) => {
                states.insert(key.clone(), state);
                outcomes.push(outcome(&Ok(effects)));
            }
            Err(e) => outcomes.push(outcome(&Err(e))),
        }
    }
    (outcomes, states)
}

/// The batch path: batches of `size`, a fresh instance after the batches `restarts` names.
fn batched(
    name: &str,
    events: &[(String, Event)],
    size: usize,
    restarts: &[bool],
) -> (Vec<String>, HashMap<String, Vec<u8>>) {
    let plugin = open(name);
    let manifest = plugin.manifest.clone();
    let mut resident = ResidentGuest::new(plugin.guest);
    let mut states: HashMap<String, Vec<u8>> = HashMap::new();
    let mut outcomes = Vec::new();
    for (n, chunk) in events.chunks(size).enumerate() {
        if restarts.get(n).copied().unwrap_or(false) {
            resident = ResidentGuest::new(open(name).guest);
        }
        let keyed: Vec<Keyed<'_>> = chunk.iter().map(|(key, event)| Keyed { key, event }).collect();
        let folded = resident.fold(&manifest, &keyed, &states);
        assert_eq!(folded.outcomes.len(), chunk.len());
        outcomes.extend(folded.outcomes.iter().map(outcome));
        states.extend(folded.states);
    }
    (outcomes, states)
}

fn event(seq: u64, key: &str, event_type: &str, payload: serde_json::Value) -> Event {
    let record = jetfold_host::event::EventRecord {
        sequence: Some(seq),
        subject: format!("test.thing.{key}.{event_type}"),
        time: chrono::DateTime::from_timestamp(1_767_225_600 + seq as i64 * 60, 0).unwrap(),
        event_type: Some(event_type.into()),
        aggregate_id: Some(key.into()),
        message_id: Some(format!("m-{seq}")),
        correlation_id: None,
        causation_id: None,
        schema_version: None,
        headers: vec![],
        stored_headers: None,
        content_type: None,
        payload: Some(serde_json::value::to_raw_value(&payload).unwrap()),
        payload_base64: None,
    };
    record.into_event(seq).unwrap()
}

/// The picked `(key number, (event type, payload))`s as events with their keys, sequences
/// from 1 in order.
fn numbered(
    prefix: &str,
    picks: impl IntoIterator<Item = (u8, (&'static str, serde_json::Value))>,
) -> Vec<(String, Event)> {
    picks
        .into_iter()
        .enumerate()
        .map(|(i, (k, (ty, payload)))| {
            let key = format!("{prefix}{k}");
            let e = event(i as u64 + 1, &key, ty, payload);
            (key, e)
        })
        .collect()
}

/// Events of the `faulty` plugin: mostly accepted, with every way of failing mixed in.
fn faulty_stream() -> impl Strategy<Value = Vec<(String, Event)>> {
    let kind = prop_oneof![
        20 => Just("Ok"),
        4 => Just("Fail"),
        4 => Just("Spoil"),
        2 => Just("Panic"),
        2 => Just("Sneak"),
        2 => Just("Hoard"),
        2 => Just("Flood"),
        1 => Just("Bomb"),
        1 => Just("Loop"),
    ];
    prop::collection::vec((0..6u8, kind), 1..80).prop_map(|picks| {
        let picks = picks.into_iter().map(|(k, kind)| (k, (kind, serde_json::json!(kind))));
        numbered("k", picks)
    })
}

/// Events of `compute-resource`: registrations, transitions (valid or not), policies, for a
/// few resources, in any order (so that many are rejected by its state machine).
fn compute_resource_stream() -> impl Strategy<Value = Vec<(String, Event)>> {
    let step = prop_oneof![
        3 => Just(("ResourceRegistered", serde_json::json!({"name": "vm", "kind": "vm", "region": "eu"}))),
        4 => Just(("StatusChanged", serde_json::json!({"to": "Active"}))),
        3 => Just(("StatusChanged", serde_json::json!({"to": "Maintenance", "reason": "patching"}))),
        1 => Just(("StatusChanged", serde_json::json!({"to": "Decommissioned"}))),
        2 => Just(("PolicyAdded", serde_json::json!({"policy_id": "backup", "name": "Nightly"}))),
        1 => Just(("PolicyRemoved", serde_json::json!({"policy_id": "backup"}))),
        1 => Just(("OrganizationAssigned", serde_json::json!({"organization_id": "org-1"}))),
        1 => Just(("StatusChanged", serde_json::json!({"to": 17}))),
    ];
    prop::collection::vec((0..5u8, step), 1..120).prop_map(|picks| numbered("r-", picks))
}

/// Events of the scaffolds: creations and failed or passed checks of a few resources.
fn scaffold_stream() -> impl Strategy<Value = Vec<(String, Event)>> {
    let kind = prop_oneof![
        1 => Just(("Created", serde_json::json!({"name": "web"}))),
        3 => Just(("CheckFailed", serde_json::json!({"check": "http"}))),
        1 => Just(("CheckPassed", serde_json::json!({}))),
    ];
    prop::collection::vec((0..4u8, kind), 1..60).prop_map(|picks| numbered("r-", picks))
}

fn check(name: &str, events: &[(String, Event)], restarts: &[bool]) -> Result<(), TestCaseError> {
    let mut plain = open(name);
    let (want, want_states) = one_at_a_time(&mut plain, events);
    for size in [1, 7, 500] {
        let (got, got_states) = batched(name, events, size, restarts);
        for (i, (w, g)) in want.iter().zip(&got).enumerate() {
            prop_assert_eq!(
                w,
                g,
                "event {} (seq {}) with batches of {}",
                i,
                events[i].1.sequence,
                size
            );
        }
        prop_assert_eq!(&want_states, &got_states, "final states with batches of {}", size);
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 12, failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn faulty_streams_fold_the_same_in_batches(
        events in faulty_stream(),
        restarts in prop::collection::vec(prop::bool::weighted(0.2), 80),
    ) {
        check("faulty", &events, &restarts)?;
    }

    #[test]
    fn compute_resource_streams_fold_the_same_in_batches(
        events in compute_resource_stream(),
        restarts in prop::collection::vec(prop::bool::weighted(0.2), 120),
    ) {
        check("compute-resource", &events, &restarts)?;
    }
}

/// What `jetfold replay` and `verify` do: batches of `size` through `jobs` instances that each
/// fold a share of the keys, in parallel.
fn replayed(
    name: &str,
    events: &[(String, Event)],
    size: usize,
    jobs: usize,
) -> (Vec<String>, HashMap<String, Vec<u8>>) {
    let mut replayer = Replayer::parallel((0..jobs).map(|_| (open(name), None)).collect());
    assert_eq!(replayer.instances(), jobs);
    let all: Vec<Result<Event, StepError>> = events.iter().map(|(_, e)| Ok(e.clone())).collect();
    let mut outcomes = Vec::new();
    for (n, chunk) in all.chunks(size).enumerate() {
        let keys = &events[n * size..];
        for ((key, o), (want_key, _)) in replayer.fold(chunk).into_iter().zip(keys) {
            assert_eq!(&key, want_key);
            outcomes.push(match (o.effects, o.error) {
                (_, Some(e)) => outcome(&Err(e)),
                (effects, None) => outcome(&Ok(effects.expect("an accepted event has effects"))),
            });
        }
    }
    assert_eq!(replayer.events, events.len() as u64);
    let states = replayer.states().into_iter().map(|(k, v)| (k.clone(), v.clone())).collect();
    (outcomes, states)
}

fn check_replay(name: &str, events: &[(String, Event)]) -> Result<(), TestCaseError> {
    let mut plain = open(name);
    let (want, want_states) = one_at_a_time(&mut plain, events);
    for (size, jobs) in [(7, 1), (7, 2), (500, 3)] {
        let (got, got_states) = replayed(name, events, size, jobs);
        prop_assert_eq!(&want, &got, "outcomes with batches of {} over {} instances", size, jobs);
        prop_assert_eq!(
            &want_states,
            &got_states,
            "states with batches of {} over {} instances",
            size,
            jobs
        );
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 8, failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn replays_over_parallel_instances_fold_the_same(
        faulty in faulty_stream(),
        compute in compute_resource_stream(),
    ) {
        check_replay("faulty", &faulty)?;
        check_replay("compute-resource", &compute)?;
    }
}

proptest! {
    // Building Python and JavaScript components takes a while: fewer cases.
    #![proptest_config(ProptestConfig { cases: 4, failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn python_and_javascript_scaffolds_fold_the_same_in_batches(
        events in scaffold_stream(),
        restarts in prop::collection::vec(prop::bool::weighted(0.2), 60),
    ) {
        use jetfold_host::manifest::{BuildLang, PluginKind};
        for lang in [BuildLang::Python, BuildLang::Js] {
            for kind in [PluginKind::Projection, PluginKind::Policy] {
                check(&scaffolded(lang, kind), &events, &restarts)?;
            }
        }
    }
}

/// A batch whose every event is accepted is one guest call that hands no state in for keys
/// the instance holds: the second batch over the same keys seeds nothing (the resident path
/// is really taken, not the one-at-a-time fallback).
#[test]
fn a_second_batch_over_the_same_keys_hands_no_state_in() {
    let plugin = open("compute-resource");
    let manifest = plugin.manifest.clone();
    let mut resident = ResidentGuest::new(plugin.guest);
    let events: Vec<(String, Event)> = (0..10)
        .map(|r| {
            let key = format!("r-{r}");
            let e = event(
                r + 1,
                &key,
                "ResourceRegistered",
                serde_json::json!({"name": "vm", "kind": "vm", "region": "eu"}),
            );
            (key, e)
        })
        .collect();
    let keyed: Vec<Keyed<'_>> = events.iter().map(|(key, event)| Keyed { key, event }).collect();
    let first = resident.fold(&manifest, &keyed, &HashMap::new());
    assert!(first.outcomes.iter().all(Result::is_ok));
    assert_eq!(first.states.len(), 10);
    assert_eq!(resident.held_keys(), 10);
    let next: Vec<(String, Event)> = (0..10)
        .map(|r| {
            let key = format!("r-{r}");
            let e = event(r + 11, &key, "StatusChanged", serde_json::json!({"to": "Active"}));
            (key, e)
        })
        .collect();
    let keyed: Vec<Keyed<'_>> = next.iter().map(|(key, event)| Keyed { key, event }).collect();
    // No states at all: only what the instance holds can fold these (the daemon always
    // passes them; without them, a trap could not be recovered from).
    let second = resident.fold(&manifest, &keyed, &HashMap::new());
    assert!(
        second.outcomes.iter().all(Result::is_ok),
        "{:?}",
        second.outcomes.iter().map(outcome).collect::<Vec<_>>()
    );
    let state: serde_json::Value = serde_json::from_slice(&second.states["r-3"]).unwrap();
    assert_eq!(state["status"], "Active");
    // A batch of one event goes through a call of its own: the instance then holds that
    // key's new state, which the next batch folds from.
    let one = [(
        "r-3".to_string(),
        event(21, "r-3", "StatusChanged", serde_json::json!({"to": "Maintenance"})),
    )];
    let keyed: Vec<Keyed<'_>> = one.iter().map(|(key, event)| Keyed { key, event }).collect();
    let third = resident.fold(&manifest, &keyed, &HashMap::new());
    assert!(third.outcomes[0].is_ok(), "{}", outcome(&third.outcomes[0]));
    let pair = [
        ("r-3".to_string(), event(22, "r-3", "StatusChanged", serde_json::json!({"to": "Active"}))),
        (
            "r-4".to_string(),
            event(23, "r-4", "StatusChanged", serde_json::json!({"to": "Maintenance"})),
        ),
    ];
    let keyed: Vec<Keyed<'_>> = pair.iter().map(|(key, event)| Keyed { key, event }).collect();
    let fourth = resident.fold(&manifest, &keyed, &HashMap::new());
    assert!(
        fourth.outcomes.iter().all(Result::is_ok),
        "{:?}",
        fourth.outcomes.iter().map(outcome).collect::<Vec<_>>()
    );
    let state: serde_json::Value = serde_json::from_slice(&fourth.states["r-3"]).unwrap();
    assert_eq!(state["version"], 4, "registered, Active, Maintenance, Active: {state}");
}

/// One fuel budget (the manifest's `fuel`) bounds a whole batch call, so the host gives a call
/// no more events than half of it covers at the fuel its events took lately: a long batch of
/// costly events is a few calls, each within budget, not one call that runs out and is then
/// folded again one call per event.
#[test]
fn a_batch_of_costly_events_is_split_to_fit_the_fuel_budget() {
    let dir = plugin("compute-resource");
    let loader = ComponentLoader::new(Some(cache_dir())).unwrap();
    let manifest = Plugin::open(&dir, &loader).unwrap().manifest;
    let component = loader.load(manifest.kind, &manifest.wasm_path()).unwrap();
    let instance = |fuel: u64| {
        let mut limits = manifest.limits.clone();
        limits.fuel = fuel;
        let guest = jetfold_host::guest::GuestInstance::new(
            &manifest.name,
            &component,
            loader.engine(),
            limits,
            "{}".into(),
        )
        .unwrap();
        ResidentGuest::new(guest)
    };
    let change = |seq: u64| {
        let to = if seq.is_multiple_of(2) { "Maintenance" } else { "Active" };
        let reason = "kernel and firmware upgrade; ".repeat(30);
        (
            "r-1".to_string(),
            event(seq, "r-1", "StatusChanged", serde_json::json!({"to": to, "reason": reason})),
        )
    };
    let fold = |resident: &mut ResidentGuest,
                events: &[(String, Event)],
                states: &mut HashMap<String, Vec<u8>>| {
        let keyed: Vec<Keyed<'_>> =
            events.iter().map(|(key, event)| Keyed { key, event }).collect();
        let folded = resident.fold(&manifest, &keyed, states);
        assert!(
            folded.outcomes.iter().all(Result::is_ok),
            "{:?}",
            folded.outcomes.iter().map(outcome).collect::<Vec<_>>()
        );
        states.extend(folded.states);
    };
    // What one such event takes, in a call of its own, with the manifest's budget.
    let mut probe = instance(manifest.limits.fuel);
    let mut states = HashMap::new();
    let registered = event(
        1,
        "r-1",
        "ResourceRegistered",
        serde_json::json!({"name": "vm", "kind": "vm", "region": "eu"}),
    );
    fold(&mut probe, &[("r-1".to_string(), registered)], &mut states);
    let before = probe.guest().fuel_used();
    fold(&mut probe, &[change(3)], &mut states);
    let per_event = probe.guest().fuel_used() - before;

    // A budget for 40 of them; 400 in one batch, after one event that shows their cost.
    let mut resident = instance(per_event * 40);
    fold(&mut resident, &[change(4)], &mut states);
    let events: Vec<(String, Event)> = (5..405).map(change).collect();
    let calls = resident.guest().calls();
    fold(&mut resident, &events, &mut states);
    let calls = resident.guest().calls() - calls;
    assert!(calls >= 10, "400 events cannot fit one budget of 40 events' fuel: {calls} calls");
    assert!(
        calls <= 40,
        "400 events took {calls} calls: the batch ran out of fuel and fell back to one call per event"
    );
    let state: serde_json::Value = serde_json::from_slice(&states["r-1"]).unwrap();
    assert_eq!(state["version"], 403, "registered and 402 changes of status: {state}");
}

/// `events` with dead letters replayed into them as `jetfold dlq replay` publishes them: after
/// the events `picks` names, a copy of an earlier one (not a copy), for this plugin, naming
/// its original; sequences renumbered in stream order.
fn with_copies(
    plugin: &str,
    events: Vec<(String, Event)>,
    picks: &[Option<usize>],
) -> Vec<(String, Event)> {
    let mut out: Vec<(String, Event)> = Vec::new();
    let mut originals: Vec<usize> = Vec::new();
    for (i, (key, mut event)) in events.into_iter().enumerate() {
        event.sequence = out.len() as u64 + 1;
        event.message_id = format!("m-{}", event.sequence);
        originals.push(out.len());
        out.push((key, event));
        if let Some(Some(pick)) = picks.get(i) {
            let (key, original) = &out[originals[pick % originals.len()]];
            let mut copy = original.clone();
            copy.sequence = out.len() as u64 + 1;
            copy.headers.push(("Jetfold-Replay-For".into(), plugin.into()));
            copy.headers.push(("Jetfold-Replay-Of".into(), format!("TEST:{}", original.sequence)));
            copy.headers.sort();
            out.push((key.clone(), copy));
        }
    }
    out
}

/// The rule, plainly: one call per event, and a copy folded only where its original was
/// rejected and no copy of it folded yet.
fn one_at_a_time_with_copies(
    plugin: &mut Plugin,
    events: &[(String, Event)],
) -> (Vec<String>, HashMap<String, Vec<u8>>) {
    let mut states: HashMap<String, Vec<u8>> = HashMap::new();
    let (mut rejected, mut copied) =
        (std::collections::HashSet::new(), std::collections::HashSet::new());
    let mut outcomes = Vec::new();
    for (key, event) in events {
        let original = event
            .headers
            .iter()
            .find(|(k, _)| k == "Jetfold-Replay-Of")
            .map(|(_, v)| v.rsplit(':').next().unwrap().parse::<u64>().unwrap());
        if let Some(of) = original
            && (!rejected.contains(&of) || copied.contains(&of))
        {
            outcomes.push("passed".to_string());
            continue;
        }
        match checked_step(&mut plugin.guest, &plugin.manifest, states.get(key), event) {
            Ok((state, effects)) => {
                states.insert(key.clone(), state);
                outcomes.push(outcome(&Ok(effects)));
                if let Some(of) = original {
                    copied.insert(of);
                }
            }
            Err(e) => {
                outcomes.push(outcome(&Err(e)));
                if original.is_none() {
                    rejected.insert(event.sequence);
                }
            }
        }
    }
    (outcomes, states)
}

/// One replayed outcome, comparable with [`one_at_a_time_with_copies`]'s.
fn replayed_outcome(o: jetfold_host::replay::Outcome) -> String {
    match (o.passed_by, o.effects, o.error) {
        (Some(_), _, _) => "passed".to_string(),
        (None, _, Some(e)) => outcome(&Err(e)),
        (None, effects, None) => outcome(&Ok(effects.expect("an accepted event has effects"))),
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 8, failure_persistence: None, ..ProptestConfig::default() })]

    /// Replayed dead letters mixed into a stream fold by the rule (the copy of a rejected
    /// event folds once, where it is; other copies are passed by) the same one event at a
    /// time (`replay --diff`), in batches of any size, and over parallel instances (`replay`,
    /// `verify`). compute-resource rejects transitions that its state does not allow yet, so
    /// a copy may fold where its original failed, and a later copy must then be passed by.
    #[test]
    fn replayed_dead_letters_fold_once_in_batches_and_alone(
        compute in compute_resource_stream(),
        picks in prop::collection::vec(prop::option::weighted(0.3, any::<usize>()), 120),
    ) {
        let name = "compute-resource";
        let events = with_copies(name, compute, &picks);
        let (want, want_states) = one_at_a_time_with_copies(&mut open(name), &events);
        let mut alone = Replayer::new(open(name));
        let got: Vec<String> = events.iter().map(|(_, e)| replayed_outcome(alone.step(&Ok(e.clone())).1)).collect();
        prop_assert_eq!(&want, &got, "one event at a time");
        let states: HashMap<String, Vec<u8>> = alone.states().into_iter().map(|(k, v)| (k.clone(), v.clone())).collect();
        prop_assert_eq!(&want_states, &states);
        for (size, jobs) in [(1, 1), (7, 2), (500, 3)] {
            let mut replayer = Replayer::parallel((0..jobs).map(|_| (open(name), None)).collect());
            let all: Vec<Result<Event, StepError>> = events.iter().map(|(_, e)| Ok(e.clone())).collect();
            let got: Vec<String> = all.chunks(size).flat_map(|chunk| replayer.fold(chunk)).map(|(_, o)| replayed_outcome(o)).collect();
            prop_assert_eq!(&want, &got, "batches of {} over {} instances", size, jobs);
            let states: HashMap<String, Vec<u8>> = replayer.states().into_iter().map(|(k, v)| (k.clone(), v.clone())).collect();
            prop_assert_eq!(&want_states, &states, "batches of {} over {} instances", size, jobs);
        }
    }
}
