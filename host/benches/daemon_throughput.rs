//! Daemon throughput: a pre-filled stream of compute-resource events (200,000 by default,
//! `JETFOLD_BENCH_EVENTS` to change), consumed in the same run by
//!
//! 1. raw JetStream consumption the way the daemon consumes (continuous pull of 500 in
//!    flight, one ack per 500): the limit;
//! 2. the daemon with the projection compiled natively into the host (the same SDK code path
//!    without the WebAssembly boundary), then with the WASM component, into SQLite;
//! 3. the same two into PostgreSQL (`JETFOLD_BENCH_POSTGRES_URL`, default the local one).
//!
//! Each daemon run starts from an empty database at the stream's start and ends when the
//! last event's batch is committed. It prints events/s, ratios, and where the daemon's time
//! went (fold stage: guest calls and effect checks; commit stage: SQL, publish, ack); it
//! asserts nothing. `JETFOLD_BENCH_ROUNDS` repeats each daemon run and reports the median.

use std::time::Instant;

use futures::StreamExt as _;
use jetfold_host::{
    bindings::types,
    config::Config,
    daemon::{Daemon, DaemonPlugin, Implementation, Step},
    effect::{self, Effect},
    event::Event,
    guest::StepError,
    manifest::Manifest,
};
use std::sync::Arc;

mod common;
use common::{events, median};

/// compute-resource compiled into the host: the SDK's own step, effects checked like a
/// guest's.
struct NativeComputeResource;

impl Step for NativeComputeResource {
    fn step(
        &mut self,
        manifest: &Manifest,
        state: Option<&Vec<u8>>,
        event: &Event,
    ) -> Result<(Vec<u8>, Vec<Effect>), StepError> {
        use jetfold_guest::{__private as sdk, Effect as E};
        let raw = common::raw(event);
        let (state, effects) = sdk::apply::<
            compute_resource::ResourceState,
            compute_resource::ResourceEvent,
            jetfold_guest::NoConfig,
        >(state.cloned(), raw)
        .map_err(|e| StepError {
            kind: "error".into(),
            code: Some(e.code),
            message: e.message,
            backtrace: None,
        })?;
        let effects = effects
            .into_iter()
            .map(|e| match e {
                E::Upsert { table, key, row } => {
                    types::Effect::Upsert(types::UpsertRow { table, key, row })
                }
                E::Update { table, key, patch } => {
                    types::Effect::Update(types::UpdateRow { table, key, patch })
                }
                E::Delete { table, key } => types::Effect::Delete(types::DeleteRow { table, key }),
                other => panic!("compute-resource makes no {other:?}"),
            })
            .collect();
        let effects = effect::accept(effects, &manifest.allow).map_err(|e| StepError {
            kind: "rejected-effect".into(),
            code: None,
            message: e.to_string(),
            backtrace: None,
        })?;
        Ok((state, effects))
    }
}

/// Runs a daemon over the whole stream into an empty database: events/s, and the share of
/// the fold and commit stages (busy time over wall time).
async fn daemon_rate(
    dir: &std::path::Path,
    url: &str,
    sink: &str,
    n: u64,
    native: bool,
) -> (f64, f64, f64, jetfold_host::daemon::Stages) {
    let text =
        format!("plugin-dir = \"plugins\"\nbatch-size = 500\n[nats]\nurl = \"{url}\"\n{sink}");
    let config = Config::parse(&text, dir.to_path_buf(), |_| None).unwrap();
    let started = Instant::now();
    let daemon = if native {
        let manifest = Manifest::load(&dir.join("plugins/compute-resource/plugin.toml")).unwrap();
        let plugin = DaemonPlugin {
            stream: manifest.source.stream.clone().unwrap(),
            subjects: manifest.source.subjects.clone(),
            start: Default::default(),
            at_seq: None,
            shadow: None,
            previous: None,
            upcasters: Vec::new(),
            manifest,
            implementation: Implementation::Native {
                digest: "native-compute-resource".into(),
                make: Arc::new(|| {
                    jetfold_guest::__private::init_projection::<
                        compute_resource::ResourceState,
                        compute_resource::ResourceEvent,
                        jetfold_guest::NoConfig,
                    >("{}")
                    .map_err(|e| anyhow::anyhow!(e.message))?;
                    Ok(Box::new(NativeComputeResource) as Box<dyn Step>)
                }),
            },
        };
        Daemon::start_with(config, vec![plugin]).await.unwrap()
    } else {
        Daemon::start(config).await.unwrap()
    };
    let mut progress = daemon.progress("compute-resource").unwrap();
    let done = progress.wait_for(|p| p.committed_seq >= n).await.unwrap().clone();
    let elapsed = started.elapsed().as_secs_f64();
    daemon.stop().await.unwrap();
    (
        n as f64 / elapsed,
        done.fold_time.as_secs_f64() / elapsed,
        done.commit_time.as_secs_f64() / elapsed,
        done.stages,
    )
}

/// The stages' time per event, in microseconds: `read 1.2 decode 3.4 ...`.
fn per_event(stages: &jetfold_host::daemon::Stages, n: u64) -> String {
    let us = |d: std::time::Duration| d.as_secs_f64() * 1e6 / n as f64;
    format!(
        "fold thread: read {:.2} decode {:.2} states {:.2} guest {:.2} route {:.2}; commit thread: commit {:.2} publish {:.2} ack {:.2} (µs/event)",
        us(stages.read),
        us(stages.decode),
        us(stages.states),
        us(stages.guest),
        us(stages.route),
        us(stages.commit),
        us(stages.publish),
        us(stages.ack)
    )
}

fn main() {
    let n: usize =
        std::env::var("JETFOLD_BENCH_EVENTS").ok().and_then(|v| v.parse().ok()).unwrap_or(200_000);
    let rounds: usize =
        std::env::var("JETFOLD_BENCH_ROUNDS").ok().and_then(|v| v.parse().ok()).unwrap_or(1);
    let plugin = common::compute_resource();
    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.block_on(async {
        let (_nats, url, js) = common::infra().await;
        common::publish_all(&js, &events(n)).await;
        println!("stream INFRA pre-filled with {n} compute-resource events; medians of {rounds} round(s)");

        // 1. Raw consumption, as the daemon consumes: the limit.
        let stream = js.get_stream("INFRA").await.unwrap();
        let mut raws = Vec::new();
        for round in 0..rounds {
            let consumer = stream
                .create_consumer(async_nats::jetstream::consumer::pull::Config {
                    durable_name: Some(format!("raw-{round}")),
                    ack_policy: async_nats::jetstream::consumer::AckPolicy::All,
                    max_ack_pending: 4_000,
                    ..Default::default()
                })
                .await
                .unwrap();
            let started = Instant::now();
            let mut messages = consumer.stream().max_messages_per_batch(500).messages().await.unwrap();
            let mut seen = 0;
            while seen < n {
                let m = messages.next().await.unwrap().unwrap();
                seen += 1;
                if seen % 500 == 0 || seen == n {
                    m.ack().await.unwrap();
                }
            }
            raws.push(n as f64 / started.elapsed().as_secs_f64());
        }
        let raw = median(raws);
        println!("  raw JetStream consumption (500 in flight, one ack per 500)   {raw:>9.0} events/s");

        let dir = common::daemon_dir(&plugin);
        let pg = std::env::var("JETFOLD_BENCH_POSTGRES_URL").unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".into());
        let mut schemas = Vec::new();
        for sink in ["SQLite", "PostgreSQL"] {
            let mut native_rate = 0.0;
            for native in [true, false] {
                let mut runs = Vec::new();
                for round in 0..rounds {
                    let id = format!("{}_{}_{round}", if native { "native" } else { "wasm" }, std::process::id());
                    let conf = if sink == "SQLite" {
                        format!("[sink]\nsqlite = \"bench-{id}.db\"\n")
                    } else {
                        let schema = format!("jetfold_bench_{id}");
                        schemas.push(schema.clone());
                        format!("[sink]\npostgres = \"{pg}\"\nschema = \"{schema}\"\n")
                    };
                    runs.push(daemon_rate(dir.path(), &url, &conf, n as u64, native).await);
                }
                runs.sort_by(|a, b| a.0.total_cmp(&b.0));
                let (rate, fold, commit, stages) = runs[runs.len() / 2];
                let what = if native { "native projection" } else { "WASM projection  " };
                let vs_native = if native {
                    native_rate = rate;
                    String::new()
                } else {
                    format!(", {:.2}x native", rate / native_rate)
                };
                println!(
                    "  daemon, {what}, into {sink:<10}   {rate:>9.0} events/s  ({:.2}x raw{vs_native}; fold stage busy {:.0}%, commit stage {:.0}%)",
                    rate / raw,
                    fold * 100.0,
                    commit * 100.0
                );
                println!("      {}", per_event(&stages, n as u64));
            }
        }
        tokio::task::spawn_blocking(move || {
            let mut c = postgres::Client::connect(&pg, postgres::NoTls).unwrap();
            for schema in schemas {
                c.batch_execute(&format!("DROP SCHEMA \"{schema}\" CASCADE")).unwrap();
            }
        })
        .await
        .unwrap();
    });
}
