//! Latency from publish to committed effect at a steady rate (10,000 events/s by default,
//! `JETFOLD_BENCH_RATE`; 8 s by default, `JETFOLD_BENCH_SECONDS`): the daemon runs the WASM
//! compute-resource projection into SQLite, idle and caught up when publishing starts.
//!
//! Each event's publish time is taken just before it is handed to the client; its commit time
//! is when the daemon's progress first shows a checkpoint at or past its sequence (progress
//! is published after every commit; a waiter that wakes late only makes a latency longer).
//! The first second is warm-up and not counted. It prints percentiles; it asserts nothing.

use std::time::{Duration, Instant};

use jetfold_host::{config::Config, daemon::Daemon};

mod common;
use common::events;

fn main() {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_writer(std::io::stderr)
        .init();
    let env = |k: &str, d: u64| std::env::var(k).ok().and_then(|v| v.parse().ok()).unwrap_or(d);
    let rate = env("JETFOLD_BENCH_RATE", 10_000);
    let seconds = env("JETFOLD_BENCH_SECONDS", 8);
    let n = (rate * seconds) as usize;
    let plugin = common::compute_resource();
    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.block_on(async {
        let (_nats, url, js) = common::infra().await;
        let dir = common::daemon_dir(&plugin);
        let text = format!("plugin-dir = \"plugins\"\n[nats]\nurl = \"{url}\"\n[sink]\nsqlite = \"bench.db\"\n");
        let config = Config::parse(&text, dir.path().to_path_buf(), |_| None).unwrap();
        let daemon = Daemon::start(config).await.unwrap();
        let mut progress = daemon.progress("compute-resource").unwrap();

        // Commit times, recorded as the progress moves.
        let watcher = tokio::spawn(async move {
            let mut commits: Vec<(u64, Instant)> = Vec::new();
            while progress.changed().await.is_ok() {
                let seq = progress.borrow_and_update().committed_seq;
                commits.push((seq, Instant::now()));
                if seq >= n as u64 {
                    break;
                }
            }
            commits
        });

        // A steady publisher: every millisecond, the events due by then.
        let all = events(n);
        let mut published = Vec::with_capacity(n);
        // Acks are awaited as they come: the client bounds the acks in flight.
        let (ack_tx, mut ack_rx) = tokio::sync::mpsc::unbounded_channel();
        let acks = tokio::spawn(async move {
            let mut seqs = Vec::with_capacity(n);
            while let Some(ack) = ack_rx.recv().await {
                let ack: async_nats::jetstream::context::PublishAckFuture = ack;
                seqs.push(ack.await.unwrap().sequence);
            }
            seqs
        });
        let started = Instant::now();
        let mut tick = tokio::time::interval(Duration::from_millis(1));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
        while published.len() < n {
            tick.tick().await;
            let due = ((started.elapsed().as_secs_f64() * rate as f64) as usize + 1).min(n);
            while published.len() < due {
                let e = &all[published.len()];
                published.push(Instant::now());
                ack_tx.send(jetfold_host::nats::publish_event(&js, e).await.unwrap()).unwrap();
            }
        }
        let publish_secs = started.elapsed().as_secs_f64();
        drop(ack_tx);
        let seqs = acks.await.unwrap();
        let commits = watcher.await.unwrap();
        daemon.stop().await.unwrap();

        // Each event's commit: the first progress at or past its sequence.
        let mut latencies = Vec::with_capacity(n);
        let mut c = 0;
        let mut order: Vec<(u64, Instant)> = seqs.into_iter().zip(published).collect();
        order.sort_by_key(|(seq, _)| *seq);
        for (seq, at) in order.into_iter().skip(rate as usize) {
            while commits[c].0 < seq {
                c += 1;
            }
            latencies.push(commits[c].1.saturating_duration_since(at).as_secs_f64() * 1e3);
        }
        latencies.sort_by(f64::total_cmp);
        let pct = |p: f64| latencies[((latencies.len() - 1) as f64 * p) as usize];
        println!(
            "publish → committed, WASM compute-resource into SQLite, {n} events at {:.0}/s ({} counted, first second skipped), {} commits",
            n as f64 / publish_secs,
            latencies.len(),
            commits.len()
        );
        println!(
            "  p50 {:.2} ms   p90 {:.2} ms   p95 {:.2} ms   p99 {:.2} ms   p99.9 {:.2} ms   max {:.2} ms",
            pct(0.5),
            pct(0.9),
            pct(0.95),
            pct(0.99),
            pct(0.999),
            latencies[latencies.len() - 1]
        );
    });
}
