//! Isolation: the throughput of a well-behaved plugin (compute-resource, WASM, into SQLite)
//! alone, and beside a plugin that loops on every event until its fuel runs out (`faulty`'s
//! `Loop`, with the circuit breaker off so it keeps looping), in the same run. Each plugin has
//! its own threads; on this machine's two cores the looping one takes CPU, not the NATS
//! connection or the other plugin's pipeline. Prints events/s and the ratio; asserts nothing.

use std::time::Instant;

use jetfold_host::{
    builder::{BuildOptions, build_plugin},
    config::Config,
    daemon::Daemon,
};

mod common;

async fn rate(dir: &std::path::Path, url: &str, n: u64, db: &str) -> f64 {
    let mut text = format!(
        "plugin-dir = \"plugins\"\nbatch-size = 500\n[nats]\nurl = \"{url}\"\n[sink]\nsqlite = \"{db}\"\n"
    );
    // The looping plugin reads its own stream (a section for a plugin the directory does not
    // hold is refused as a typo).
    if dir.join("plugins/faulty").exists() {
        text.push_str("[plugins.faulty]\nstream = \"LOOPS\"\nsubjects = [\"loops.>\"]\n");
    }
    let config = Config::parse(&text, dir.to_path_buf(), |_| None).unwrap();
    let started = Instant::now();
    let daemon = Daemon::start(config).await.unwrap();
    let mut progress = daemon.progress("compute-resource").unwrap();
    progress.wait_for(|p| p.committed_seq >= n).await.unwrap();
    let elapsed = started.elapsed().as_secs_f64();
    if let Some(faulty) = daemon.progress("faulty") {
        let looped = faulty.borrow().events;
        println!("    (the looping plugin meanwhile failed {looped} events on its fuel limit)");
    }
    daemon.stop().await.unwrap();
    n as f64 / elapsed
}

fn main() {
    let n: usize =
        std::env::var("JETFOLD_BENCH_EVENTS").ok().and_then(|v| v.parse().ok()).unwrap_or(50_000);
    let rounds: usize =
        std::env::var("JETFOLD_BENCH_ROUNDS").ok().and_then(|v| v.parse().ok()).unwrap_or(3);
    let plugin = common::compute_resource();
    let root = std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).parent().unwrap().to_path_buf();
    let faulty = root.join("plugins/faulty");
    let options = BuildOptions {
        target_dir: Some(common::target_dir().join("jetfold-guests")),
        debug: false,
    };
    build_plugin(&faulty, &options).unwrap();
    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.block_on(async {
        let (_nats, url, js) = common::infra().await;
        common::publish_all(&js, &common::events(n)).await;
        js.create_stream(async_nats::jetstream::stream::Config {
            name: "LOOPS".into(),
            subjects: vec!["loops.>".into()],
            ..Default::default()
        })
        .await
        .unwrap();
        // Acks are awaited a chunk at a time: the client bounds those in flight.
        for chunk in 0..20 {
            let mut acks = Vec::new();
            for i in 0..5_000 {
                let subject = format!("loops.fault.l{}.Loop", (chunk * 5_000 + i) % 10);
                acks.push(js.publish(subject, "{}".into()).await.unwrap());
            }
            for a in acks {
                a.await.unwrap();
            }
        }
        println!("INFRA pre-filled with {n} compute-resource events, LOOPS with 100,000 Loop events; medians of {rounds} rounds");

        let alone = common::daemon_dir(&plugin);
        let beside = common::daemon_dir(&plugin);
        let dest = beside.path().join("plugins/faulty");
        std::fs::create_dir_all(&dest).unwrap();
        std::fs::copy(faulty.join("faulty.wasm"), dest.join("faulty.wasm")).unwrap();
        let manifest = std::fs::read_to_string(faulty.join("plugin.toml")).unwrap();
        let manifest = manifest
            .replace("[limits]", "[limits]\nmax-consecutive-failures = 0")
            .replace("kind = \"projection\"", "kind = \"projection\"\non-error = \"skip\"");
        std::fs::write(dest.join("plugin.toml"), manifest).unwrap();
        let (mut a, mut b) = (Vec::new(), Vec::new());
        for round in 0..rounds {
            a.push(rate(alone.path(), &url, n as u64, &format!("alone-{round}.db")).await);
            b.push(rate(beside.path(), &url, n as u64, &format!("beside-{round}.db")).await);
        }
        let (a, b) = (common::median(a), common::median(b));
        println!("  compute-resource alone                      {a:>9.0} events/s");
        println!("  compute-resource beside a looping plugin    {b:>9.0} events/s  ({:.2}x alone)", b / a);
    });
}
