//! The same plugin in Rust, Python and JavaScript: the scaffold projection of `jetfold new`
//! (count events per resource, remember the last type, upsert a row), built with each
//! language's toolchain, folding the same events. Reports per `apply` call, memory per
//! instance (resident memory added by 20 more live instances), component size, compile time,
//! and the load time from the precompiled cache. The Rust plugin, measured in the same run,
//! is the baseline; nothing here asserts on time.

use std::{collections::HashMap, time::Instant};

use jetfold_host::{
    builder::{BuildOptions, build_plugin},
    component::ComponentLoader,
    event::Event,
    fold::{FixtureLine, read_fixture},
    guest::GuestInstance,
    manifest::{BuildLang, Manifest, PluginKind},
    pipeline::fold::{Keyed, ResidentGuest},
    scaffold::{NewPlugin, scaffold},
};

mod common;

const ROUNDS: usize = 5;
const CALLS: usize = 2_000;
const INSTANCES: usize = 20;

/// Resident memory of this process, in bytes.
fn resident() -> u64 {
    let statm = std::fs::read_to_string("/proc/self/statm").unwrap();
    statm.split_whitespace().nth(1).unwrap().parse::<u64>().unwrap() * 4096
}

struct Figures {
    lang: BuildLang,
    size_mib: f64,
    compile_ms: f64,
    load_ms: f64,
    instantiate_ms: f64,
    call_us: f64,
    batch_us: f64,
    instance_mib: f64,
}

fn measure(lang: BuildLang, root: &std::path::Path, cache: &std::path::Path) -> Figures {
    let dir = root.join(lang.to_string());
    let name = format!("bench-{lang}");
    let plugin = NewPlugin { name, lang, kind: PluginKind::Projection, sdk: None };
    scaffold(&dir, &plugin).unwrap();
    let options = BuildOptions {
        target_dir: Some(common::target_dir().join("jetfold-guests")),
        debug: false,
    };
    let built = build_plugin(&dir, &options).unwrap();
    let manifest = Manifest::load(&dir).unwrap();
    let size_mib = std::fs::metadata(&built.wasm).unwrap().len() as f64 / (1 << 20) as f64;

    let loader = ComponentLoader::new(Some(cache.to_path_buf())).unwrap();
    let started = Instant::now();
    let component = loader.load(manifest.kind, &built.wasm).unwrap();
    let compile_ms = started.elapsed().as_secs_f64() * 1e3;
    assert!(!component.from_cache);
    let load_ms = common::median(
        (0..ROUNDS)
            .map(|_| {
                let warm = ComponentLoader::new(Some(cache.to_path_buf())).unwrap();
                let c = warm.load(manifest.kind, &built.wasm).unwrap();
                assert!(c.from_cache);
                c.load_time.as_secs_f64() * 1e3
            })
            .collect(),
    );

    let new_instance = || {
        GuestInstance::new(
            &manifest.name,
            &component,
            loader.engine(),
            manifest.limits.clone(),
            manifest.config_json(),
        )
        .unwrap()
    };
    let instantiate_ms = common::median(
        (0..ROUNDS)
            .map(|_| {
                let t = Instant::now();
                std::hint::black_box(new_instance());
                t.elapsed().as_secs_f64() * 1e3
            })
            .collect(),
    );

    let events: Vec<Event> = read_fixture(&dir.join("fixtures/events.jsonl"))
        .unwrap()
        .into_iter()
        .filter_map(|(_, line)| match line {
            FixtureLine::Event(e) => Some(e),
            _ => None,
        })
        .collect();
    let mut guest = new_instance();
    let mut states: HashMap<String, Vec<u8>> = HashMap::new();
    let mut call = |i: usize| {
        let event = &events[i % events.len()];
        let (state, effects) = guest.apply(states.get(&event.aggregate_id), event).unwrap();
        assert_eq!(effects.len(), 1);
        states.insert(event.aggregate_id.clone(), state);
    };
    for i in 0..CALLS / 10 {
        call(i);
    }
    let call_us = common::median(
        (0..ROUNDS)
            .map(|_| {
                let t = Instant::now();
                for i in 0..CALLS {
                    call(i);
                }
                t.elapsed().as_secs_f64() * 1e6 / CALLS as f64
            })
            .collect(),
    );

    // The batch path the daemon runs (every scaffold is built against jetfold:plugin@0.2.0):
    // 500 events per call, the states resident in the instance.
    let mut resident_guest = ResidentGuest::new(new_instance());
    let batch: Vec<Keyed<'_>> = (0..500)
        .map(|i| {
            let event = &events[i % events.len()];
            Keyed { key: &event.aggregate_id, event }
        })
        .collect();
    let mut held: HashMap<String, Vec<u8>> = HashMap::new();
    let mut fold = || {
        let folded = resident_guest.fold(&manifest, &batch, &held);
        assert!(folded.outcomes.iter().all(Result::is_ok));
        held.extend(folded.states);
    };
    fold();
    let batch_us = common::median(
        (0..ROUNDS)
            .map(|_| {
                let t = Instant::now();
                for _ in 0..CALLS / 500 {
                    fold();
                }
                t.elapsed().as_secs_f64() * 1e6 / (CALLS / 500 * 500) as f64
            })
            .collect(),
    );

    let before = resident();
    let mut live = Vec::new();
    for _ in 0..INSTANCES {
        let mut g = new_instance();
        g.apply(None, &events[0]).unwrap();
        live.push(g);
    }
    let instance_mib =
        (resident().saturating_sub(before)) as f64 / INSTANCES as f64 / (1 << 20) as f64;
    drop(live);
    Figures { lang, size_mib, compile_ms, load_ms, instantiate_ms, call_us, batch_us, instance_mib }
}

fn main() {
    let root = tempfile::tempdir().unwrap();
    let cache = tempfile::tempdir().unwrap();
    let figures: Vec<Figures> = [BuildLang::Rust, BuildLang::Python, BuildLang::Js]
        .into_iter()
        .map(|lang| measure(lang, root.path(), cache.path()))
        .collect();
    let base = figures[0].call_us;
    println!("\nthe `jetfold new` projection, same events (medians of {ROUNDS} rounds)\n");
    println!(
        "| language | µs per apply (one event per call) | µs per event, batches of 500 | batches vs one per call | batches vs Rust's batches | memory per instance | component | compile (cold) | load from cache | instantiate + init |"
    );
    println!("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |");
    let base_batch = figures[0].batch_us;
    for f in &figures {
        println!(
            "| {} | {:.1} ({:.1}× Rust) | {:.2} | {:.1}× faster | {:.1}× | {:.2} MiB | {:.1} MiB | {:.0} ms | {:.2} ms | {:.2} ms |",
            f.lang,
            f.call_us,
            f.call_us / base,
            f.batch_us,
            f.call_us / f.batch_us,
            f.batch_us / base_batch,
            f.instance_mib,
            f.size_mib,
            f.compile_ms,
            f.load_ms,
            f.instantiate_ms
        );
    }
}
