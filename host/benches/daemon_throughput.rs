//! Daemon throughput: a pre-filled stream of compute-resource events (200,000 by default,
//! `JETFOLD_BENCH_EVENTS` to change), consumed in the same run by
//!
//! 1. raw JetStream consumption (pull consumer, batches of 500, explicit acks): the limit;
//! 2. the daemon with the WASM projection, committing into SQLite;
//! 3. the same into PostgreSQL (`JETFOLD_BENCH_POSTGRES_URL`, default the local one).
//!
//! It prints events/s and ratios; it asserts nothing.

use std::time::{Duration, Instant};

use futures::StreamExt as _;
use jetfold_host::{
    builder::{BuildOptions, build_plugin},
    config::Config,
    event::{Event, JSON},
    sink::Sink,
};

fn target_dir() -> std::path::PathBuf {
    std::env::current_exe().unwrap().ancestors().nth(3).unwrap().to_path_buf()
}

fn events(n: usize) -> Vec<Event> {
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

async fn daemon_rate(dir: &std::path::Path, url: &str, sink: &str, n: u64) -> f64 {
    let text = format!(
        "plugin-dir = \"plugins\"\nbatch-size = 500\nfetch-wait-ms = 100\n[nats]\nurl = \"{url}\"\n{sink}"
    );
    let config = Config::parse(&text, dir.to_path_buf(), |_| None).unwrap();
    let target = config.sink_target();
    let started = Instant::now();
    let done = async move {
        loop {
            let t = target.clone();
            let seq = tokio::task::spawn_blocking(move || {
                Sink::open(&t)
                    .ok()
                    .and_then(|mut s| s.checkpoint("compute-resource").ok().flatten())
                    .map(|c| c.last_seq)
            })
            .await
            .unwrap()
            .unwrap_or(0);
            if seq >= n {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    };
    jetfold_host::daemon::run(config, done).await.unwrap();
    n as f64 / started.elapsed().as_secs_f64()
}

fn main() {
    let n: usize =
        std::env::var("JETFOLD_BENCH_EVENTS").ok().and_then(|v| v.parse().ok()).unwrap_or(200_000);
    let root = std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).parent().unwrap().to_path_buf();
    let plugin = root.join("plugins/compute-resource");
    let options =
        BuildOptions { target_dir: Some(target_dir().join("jetfold-guests")), debug: false };
    build_plugin(&plugin, &options).expect("build compute-resource");
    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.block_on(async {
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
        let all = events(n);
        for chunk in all.chunks(5_000) {
            let mut acks = Vec::new();
            for e in chunk {
                acks.push(jetfold_host::nats::publish_event(&js, e).await.unwrap());
            }
            for a in acks {
                a.await.unwrap();
            }
        }
        println!("stream INFRA pre-filled with {n} compute-resource events");

        // 1. Raw consumption: the limit.
        let stream = js.get_stream("INFRA").await.unwrap();
        let consumer = stream
            .create_consumer(async_nats::jetstream::consumer::pull::Config {
                durable_name: Some("raw".into()),
                ack_policy: async_nats::jetstream::consumer::AckPolicy::Explicit,
                ..Default::default()
            })
            .await
            .unwrap();
        let started = Instant::now();
        let mut seen = 0;
        while seen < n {
            let mut batch = consumer.fetch().max_messages(500).expires(Duration::from_millis(100)).messages().await.unwrap();
            while let Some(m) = batch.next().await {
                m.unwrap().ack().await.unwrap();
                seen += 1;
            }
        }
        let raw = n as f64 / started.elapsed().as_secs_f64();
        println!("  raw JetStream consumption (batches of 500, explicit acks) {raw:>10.0} events/s");

        // 2. The daemon, WASM projection, into SQLite.
        let dir = tempfile::tempdir().unwrap();
        let dest = dir.path().join("plugins/compute-resource");
        std::fs::create_dir_all(&dest).unwrap();
        std::fs::copy(plugin.join("plugin.toml"), dest.join("plugin.toml")).unwrap();
        std::fs::copy(plugin.join("compute_resource.wasm"), dest.join("compute_resource.wasm")).unwrap();
        let sqlite = daemon_rate(dir.path(), &url, "[sink]\nsqlite = \"bench.db\"\n", n as u64).await;
        println!("  daemon, WASM projection, into SQLite                      {sqlite:>10.0} events/s  ({:.2}x raw)", sqlite / raw);

        // 3. Into PostgreSQL.
        let pg = std::env::var("JETFOLD_BENCH_POSTGRES_URL").unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".into());
        let schema = format!("jetfold_bench_{}", std::process::id());
        let rate = daemon_rate(dir.path(), &url, &format!("[sink]\npostgres = \"{pg}\"\nschema = \"{schema}\"\n"), n as u64).await;
        println!("  daemon, WASM projection, into PostgreSQL                  {rate:>10.0} events/s  ({:.2}x raw)", rate / raw);
        tokio::task::spawn_blocking(move || {
            let mut c = postgres::Client::connect(&pg, postgres::NoTls).unwrap();
            c.batch_execute(&format!("DROP SCHEMA \"{schema}\" CASCADE")).unwrap();
        })
        .await
        .unwrap();
    });
}
