//! The cost of one `apply` through the component, beside the same projection called natively.
//!
//! compute-resource, a ~4 KB state and ~1 KB events (StatusChanged Active ⇄ Maintenance with a
//! long reason). Native: the SDK's own apply path (decode state and event, apply, encode state,
//! collect effects) compiled into this binary. Component: the host's guest call, plus the
//! host's effect check. Then the same per-event cost with 1,000 and 100,000 keys, and the cold
//! load of a plugin from the precompiled cache. Figures are medians of several rounds; nothing
//! here asserts on time.

use std::{
    collections::{BTreeMap, HashMap},
    path::PathBuf,
    time::{Duration, Instant},
};

use chrono::{DateTime, Utc};
use compute_resource::{AttachedPolicy, Resource, ResourceEvent, ResourceState, Status};
use jetfold_host::{
    builder::{BuildOptions, build_plugin},
    component::{ComponentLoader, CpuLimit},
    effect,
    event::Event,
    guest::GuestInstance,
    manifest::Manifest,
    pipeline::fold::{Keyed, ResidentGuest},
};

const ROUNDS: usize = 7;

mod common;

fn target_dir() -> PathBuf {
    std::env::current_exe().unwrap().ancestors().nth(3).unwrap().to_path_buf()
}

fn median(mut xs: Vec<f64>) -> f64 {
    xs.sort_by(|a, b| a.partial_cmp(b).unwrap());
    xs[xs.len() / 2]
}

/// Runs `f` `n` times per round; returns the median per-call time in µs.
fn per_call(n: usize, mut f: impl FnMut(usize)) -> f64 {
    for i in 0..n / 10 {
        f(i);
    }
    let rounds = (0..ROUNDS)
        .map(|_| {
            let start = Instant::now();
            for i in 0..n {
                f(i);
            }
            start.elapsed().as_secs_f64() * 1e6 / n as f64
        })
        .collect();
    median(rounds)
}

/// Like [`per_call`] for two variants of one call, their rounds alternating so that the
/// machine's drift falls on both alike; returns both medians.
fn per_call_paired(n: usize, mut a: impl FnMut(usize), mut b: impl FnMut(usize)) -> (f64, f64) {
    for i in 0..n / 10 {
        a(i);
        b(i);
    }
    let round = |f: &mut dyn FnMut(usize)| {
        let start = Instant::now();
        for i in 0..n {
            f(i);
        }
        start.elapsed().as_secs_f64() * 1e6 / n as f64
    };
    let (mut xs, mut ys) = (Vec::new(), Vec::new());
    for _ in 0..ROUNDS {
        xs.push(round(&mut a));
        ys.push(round(&mut b));
    }
    (median(xs), median(ys))
}

fn time(s: &str) -> DateTime<Utc> {
    s.parse().unwrap()
}

/// A registered, active resource whose JSON state is about 4 KB.
fn big_state(id: &str) -> Vec<u8> {
    let mut policies = BTreeMap::new();
    for i in 0..14 {
        policies.insert(
            format!("policy-{i:02}"),
            AttachedPolicy {
                name: format!("Backup and retention policy number {i}"),
                rules: serde_json::json!({"schedule": "0 2 * * *", "retain_days": 14 + i, "targets": ["disk-a", "disk-b"], "encrypted": true}),
                added_at: time("2026-03-01T09:02:00Z"),
            },
        );
    }
    let labels =
        (0..10).map(|i| (format!("label-{i}"), format!("value-{i}-{}", "x".repeat(8)))).collect();
    let resource = Resource {
        id: id.into(),
        name: "web-frontend-01".into(),
        kind: "vm".into(),
        region: "eu-west-1".into(),
        status: Status::Active,
        organization_id: Some("org-7".into()),
        labels,
        policies,
        status_reason: None,
        registered_at: time("2026-03-01T09:00:00Z"),
        updated_at: time("2026-03-01T09:10:00Z"),
        version: 4,
    };
    serde_json::to_vec(&ResourceState(Some(resource))).unwrap()
}

/// A ~1 KB StatusChanged event; even sequences go to Maintenance, odd ones back to Active.
fn event(seq: u64, id: &str) -> Event {
    let to = if seq.is_multiple_of(2) { "Maintenance" } else { "Active" };
    let reason = format!("scheduled window {seq}: {}", "kernel and firmware upgrade; ".repeat(34));
    let payload = serde_json::to_vec(&serde_json::json!({ "to": to, "reason": reason })).unwrap();
    Event {
        sequence: seq,
        subject: format!("infra.resource.{id}.StatusChanged"),
        message_id: format!("m-{seq}"),
        event_type: "StatusChanged".into(),
        aggregate_id: id.into(),
        correlation_id: Some("corr-1".into()),
        causation_id: None,
        time: time("2026-03-02T00:00:00Z") + chrono::Duration::seconds(seq as i64),
        schema_version: 1,
        headers: vec![],
        payload,
        content_type: "application/json".into(),
    }
}

fn main() {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).parent().unwrap().to_path_buf();
    let plugin_dir = root.join("plugins/compute-resource");
    let options =
        BuildOptions { target_dir: Some(target_dir().join("jetfold-guests")), debug: false };
    build_plugin(&plugin_dir, &options).expect("build compute-resource");
    let manifest = Manifest::load(&plugin_dir).unwrap();
    let cache = tempfile::tempdir().unwrap();
    let loader = ComponentLoader::new(Some(cache.path().to_path_buf())).unwrap();
    let component = loader.load(manifest.kind, &manifest.wasm_path()).unwrap();
    let mut guest = GuestInstance::new(
        &manifest.name,
        &component,
        loader.engine(),
        manifest.limits.clone(),
        "{}".into(),
    )
    .unwrap();

    let state = big_state("r-1");
    let events: Vec<Event> = (1..=1000).map(|s| event(s, "r-1")).collect();
    println!(
        "compute-resource apply: state {} bytes, event payload {} bytes",
        state.len(),
        events[0].payload.len()
    );

    // Same-state calls: every event starts from the same 4 KB Active state; odd events would be
    // invalid transitions, so only even (Maintenance) events are used for the timed loop.
    let maint: Vec<&Event> = events.iter().filter(|e| e.sequence.is_multiple_of(2)).collect();
    let raws: Vec<_> = maint.iter().map(|e| common::raw(e)).collect();
    jetfold_guest::__private::init_projection::<
        ResourceState,
        ResourceEvent,
        jetfold_guest::NoConfig,
    >("{}")
    .unwrap();
    let native = per_call(20_000, |i| {
        let (s, fx) = jetfold_guest::__private::apply::<
            ResourceState,
            ResourceEvent,
            jetfold_guest::NoConfig,
        >(Some(state.clone()), raws[i % raws.len()].clone())
        .unwrap();
        std::hint::black_box((s, fx));
    });
    let wasm = per_call(20_000, |i| {
        let out = guest.apply(Some(&state), maint[i % maint.len()]).unwrap();
        std::hint::black_box(out);
    });
    let wasm_checked = per_call(20_000, |i| {
        let (s, fx) = guest.apply(Some(&state), maint[i % maint.len()]).unwrap();
        let fx = effect::accept(fx, &manifest.allow).unwrap();
        std::hint::black_box((s, fx));
    });
    // Where the native time goes: the state's JSON codec dominates.
    let decode = per_call(20_000, |_| {
        std::hint::black_box(serde_json::from_slice::<ResourceState>(&state).unwrap());
    });
    let decoded: ResourceState = serde_json::from_slice(&state).unwrap();
    let encode = per_call(20_000, |_| {
        std::hint::black_box(serde_json::to_vec(&decoded).unwrap());
    });
    println!(
        "  native: decode state {decode:.2} µs, encode state {encode:.2} µs (of the call below)"
    );
    println!("  native (same code, no boundary)   {native:8.2} µs/call");
    println!(
        "  component apply                   {wasm:8.2} µs/call   ratio {:.2}x native",
        wasm / native
    );
    println!(
        "  component apply + effect check    {wasm_checked:8.2} µs/call   ratio {:.2}x native",
        wasm_checked / native
    );

    // The batch path (jetfold:plugin@0.2.0, what the daemon runs): 500 events per call, the
    // key's state resident in the instance (handed in once), its encoded state returned once
    // per call; the host's effect check included. Events alternate Maintenance and Active, so
    // every one is accepted from the state the previous one left.
    let batch_instance = |name: &str,
                          limits: &jetfold_host::manifest::Limits,
                          c: &jetfold_host::component::LoadedComponent| {
        ResidentGuest::new(
            GuestInstance::new(name, c, loader.engine(), limits.clone(), "{}".into()).unwrap(),
        )
    };
    let mut resident = batch_instance(&manifest.name, &manifest.limits, &component);
    let mut start = HashMap::new();
    start.insert("r-1".to_string(), state.clone());
    let alternating: Vec<Event> = (2..=1001).map(|s| event(s, "r-1")).collect();
    let keyed: Vec<Keyed<'_>> =
        alternating.iter().map(|e| Keyed { key: "r-1", event: e }).collect();
    let mut held = start;
    let mut round = 0usize;
    let batch_cost = per_call(40, |_| {
        // Two batches of 500 per round trip over the 1,000 alternating events.
        let part = &keyed[(round % 2) * 500..(round % 2) * 500 + 500];
        round += 1;
        let folded = resident.fold(&manifest, part, &held);
        assert!(folded.outcomes.iter().all(Result::is_ok), "every event of the batch is accepted");
        held.extend(folded.states);
    }) / 500.0;
    println!(
        "  component, batches of 500 (state resident)  {batch_cost:8.2} µs/event   ratio {:.2}x native apply",
        batch_cost / native
    );

    // What the CPU limit costs: the same component on engines bounding calls by an epoch
    // deadline, and not at all (which the daemon never runs), rounds alternating with the
    // fuel-metered instance.
    let instance = |cpu| {
        let loader = ComponentLoader::measuring(None, cpu).unwrap();
        let component = loader.load(manifest.kind, &manifest.wasm_path()).unwrap();
        GuestInstance::new(
            &manifest.name,
            &component,
            loader.engine(),
            manifest.limits.clone(),
            "{}".into(),
        )
        .unwrap()
    };
    let mut unbounded = instance(CpuLimit::Unbounded);
    let mut epoch = instance(CpuLimit::Epoch);
    let (fueled, unfueled) = per_call_paired(
        20_000,
        |i| {
            std::hint::black_box(guest.apply(Some(&state), maint[i % maint.len()]).unwrap());
        },
        |i| {
            std::hint::black_box(unbounded.apply(Some(&state), maint[i % maint.len()]).unwrap());
        },
    );
    let (epoched, unfueled_again) = per_call_paired(
        20_000,
        |i| {
            std::hint::black_box(epoch.apply(Some(&state), maint[i % maint.len()]).unwrap());
        },
        |i| {
            std::hint::black_box(unbounded.apply(Some(&state), maint[i % maint.len()]).unwrap());
        },
    );
    println!(
        "  fuel: apply with fuel {fueled:.2} µs/call, without a bound (baseline) {unfueled:.2} µs/call: overhead {:+.1}%",
        (fueled / unfueled - 1.0) * 100.0
    );
    println!(
        "  epoch deadline instead: {epoched:.2} µs/call, without a bound {unfueled_again:.2} µs/call: overhead {:+.1}%",
        (epoched / unfueled_again - 1.0) * 100.0
    );

    // The floor: the ten-line event-counter (8-byte state, tiny event) through the component.
    let counter_dir = root.join("plugins/event-counter");
    build_plugin(&counter_dir, &options).expect("build event-counter");
    let counter = Manifest::load(&counter_dir).unwrap();
    let counter_component = loader.load(counter.kind, &counter.wasm_path()).unwrap();
    let mut counter_guest = GuestInstance::new(
        &counter.name,
        &counter_component,
        loader.engine(),
        counter.limits.clone(),
        "{}".into(),
    )
    .unwrap();
    let mut small = event(2, "r-1");
    small.payload = b"{}".to_vec();
    let count_state = b"41".to_vec();
    let floor = per_call(50_000, |_| {
        std::hint::black_box(counter_guest.apply(Some(&count_state), &small).unwrap());
    });
    println!("  floor: event-counter through the component {floor:8.2} µs/call");
    let mut counter_resident = batch_instance(&counter.name, &counter.limits, &counter_component);
    let smalls: Vec<Event> = (1..=500u64)
        .map(|s| {
            let mut e = event(s, "r-1");
            e.payload = b"{}".to_vec();
            e
        })
        .collect();
    let counter_keyed: Vec<Keyed<'_>> =
        smalls.iter().map(|e| Keyed { key: "r-1", event: e }).collect();
    let mut counter_states = HashMap::new();
    let floor_batch = per_call(100, |_| {
        let folded = counter_resident.fold(&counter, &counter_keyed, &counter_states);
        counter_states.extend(folded.states);
    }) / 500.0;
    println!("  floor: event-counter, batches of 500 {floor_batch:8.2} µs/event");

    // The daemon's guest stage in isolation: the daemon benchmark's stream (200,000 events
    // over 20,000 resources, each resource's events 20,000 apart), in batches of 500
    // consecutive events (so each key once per batch), states resident in the instance,
    // changed states taken back after every batch; the host's effect check included.
    let stream = common::events(200_000);
    let mut spread = batch_instance(&manifest.name, &manifest.limits, &component);
    let spread_cost = median(
        (0..3)
            .map(|_| {
                let mut states: HashMap<String, Vec<u8>> = HashMap::new();
                let started = Instant::now();
                for part in stream.chunks(500) {
                    let keyed: Vec<Keyed<'_>> =
                        part.iter().map(|e| Keyed { key: &e.aggregate_id, event: e }).collect();
                    let folded = spread.fold(&manifest, &keyed, &states);
                    std::hint::black_box(&folded.outcomes);
                    states.extend(folded.states);
                }
                spread.forget_all();
                started.elapsed().as_secs_f64() * 1e6 / stream.len() as f64
            })
            .collect(),
    );
    println!(
        "  component, the daemon benchmark's stream in batches of 500 (20,000 keys, each once per batch, states resident) {spread_cost:8.2} µs/event"
    );

    // Keyed state: the cost of an event with 1,000 and with 100,000 keys held by the host.
    for keys in [1_000usize, 100_000] {
        let mut states: HashMap<String, Vec<u8>> =
            (0..keys).map(|k| (format!("r-{k}"), big_state(&format!("r-{k}")))).collect();
        let ids: Vec<String> = (0..keys).map(|k| format!("r-{k}")).collect();
        let mut seqs = vec![1u64; keys];
        // A fixed pseudo-random walk over the keys, the same for every run.
        let mut x: u64 = 0x9E3779B97F4A7C15;
        let cost = per_call(20_000, |_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let k = (x % keys as u64) as usize;
            seqs[k] += 1;
            let ev = event(seqs[k], &ids[k]);
            let current = states.get(&ids[k]);
            let (new_state, fx) = guest.apply(current, &ev).unwrap();
            std::hint::black_box(fx);
            states.insert(ids[k].clone(), new_state);
        });
        println!(
            "  {keys:>7} keys: {cost:8.2} µs/event (includes building the event and the state map update)"
        );
    }

    // Cold load from the precompiled cache: read, digest, deserialize, checks; then instantiate + init.
    let warm_loader = ComponentLoader::new(Some(cache.path().to_path_buf())).unwrap();
    let mut loads = Vec::new();
    let mut starts = Vec::new();
    for _ in 0..25 {
        let t = Instant::now();
        let c = warm_loader.load(manifest.kind, &manifest.wasm_path()).unwrap();
        loads.push(t.elapsed());
        assert!(c.from_cache);
        let t = Instant::now();
        let g = GuestInstance::new(
            &manifest.name,
            &c,
            warm_loader.engine(),
            manifest.limits.clone(),
            "{}".into(),
        )
        .unwrap();
        starts.push(t.elapsed());
        std::hint::black_box(g);
    }
    let ms = |d: Vec<Duration>| median(d.into_iter().map(|d| d.as_secs_f64() * 1e3).collect());
    println!("  load from precompiled cache       {:8.3} ms (median of 25)", ms(loads));
    println!("  instantiate + init               {:8.3} ms (median of 25)", ms(starts));
}
