//! Rebuild and replay rates over one pre-filled stream (1,000,000 compute-resource events by
//! default, `JETFOLD_BENCH_EVENTS` to change), measured in the same run:
//!
//! 1. the raw ordered-consumer rate: reading the stream with the reader `replay` uses, nothing
//!    else (the baseline);
//! 2. `replay`: the same read, every event folded through the compute-resource component with
//!    effects suppressed, states in memory;
//! 3. `rebuild`: a daemon that has folded the stream into SQLite is asked to rebuild it (as
//!    `jetfold rebuild` asks): from the request to the rebuilt tables swapped in;
//! 4. a restart of that daemon: from start to the next event committed (compare runs with
//!    different `JETFOLD_BENCH_EVENTS`: it does not grow with the stream);
//! 5. restarts after a crash (`jetfold run` killed with SIGKILL) that left 10,000 and then
//!    100,000 committed events after the last snapshot (`snapshot-interval`): the restart
//!    folds those again first, so its time grows with them, not with the stream.
//!
//! `JETFOLD_BENCH_BATCH` sets the daemon's `batch-size` (default 500, the config's default),
//! `JETFOLD_BENCH_SNAPSHOT` its `snapshot-interval` for 1.–4. (default 1: every commit).
//! Prints events/s and seconds; asserts nothing.

use std::{path::Path, time::Instant};

use futures::StreamExt as _;
use jetfold_host::{
    config::Config,
    daemon::{Daemon, RebuildReport, rebuild_subject, supervise},
    fold::Plugin,
    nats::reader::StreamReader,
    replay::{Range, Replayer, read_batches},
};

mod common;

fn main() {
    let n: usize = std::env::var("JETFOLD_BENCH_EVENTS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1_000_000);
    let plugin_dir = common::compute_resource();
    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.block_on(async {
        let (_nats, url, js) = common::infra().await;
        let filled = Instant::now();
        common::publish_all(&js, &common::events(n)).await;
        println!(
            "stream INFRA pre-filled with {n} compute-resource events in {:.1} s",
            filled.elapsed().as_secs_f64()
        );

        // 1. The baseline: the ordered reader alone.
        let started = Instant::now();
        let mut reader = StreamReader::open(&js, "INFRA", &[], None, None).await.unwrap();
        let mut read = 0u64;
        while let Some(m) = reader.next().await {
            std::hint::black_box(m.unwrap());
            read += 1;
        }
        let raw_secs = started.elapsed().as_secs_f64();
        let raw = read as f64 / raw_secs;
        println!("  raw ordered consumer                {raw:>9.0} events/s  ({raw_secs:.1} s)");

        // 2. replay: folded through the component, effects suppressed, as `jetfold replay`
        // folds (batches of replay::BATCH events), with one instance and with two in parallel.
        let cache = tempfile::tempdir().unwrap();
        let loader =
            jetfold_host::component::ComponentLoader::new(Some(cache.path().to_path_buf())).unwrap();
        for jobs in [1, 2] {
            let instances = (0..jobs)
                .map(|_| (Plugin::open(&plugin_dir, &loader).unwrap(), None))
                .collect();
            let mut replayer = Replayer::parallel(instances);
            let started = Instant::now();
            read_batches(&js, "INFRA", &[], &Range::default(), "compute-resource", &[], |_, batch, _| {
                replayer.fold(batch);
            })
            .await
            .unwrap();
            let replay_secs = started.elapsed().as_secs_f64();
            let replay = replayer.events as f64 / replay_secs;
            println!(
                "  replay (compute-resource, effects suppressed, --jobs {jobs}) {replay:>9.0} events/s  ({replay_secs:.1} s, {:.2}x raw; {} states)",
                replay / raw,
                replayer.states().len()
            );
        }

        // 3. rebuild: a daemon caught up with the stream rebuilds the read model blue/green.
        let dir = common::daemon_dir(&plugin_dir);
        let batch: usize = std::env::var("JETFOLD_BENCH_BATCH")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(500);
        let snapshot: u64 = std::env::var("JETFOLD_BENCH_SNAPSHOT")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(1);
        let config_text = |snapshot: u64| {
            format!(
                "plugin-dir = \"plugins\"\nbatch-size = {batch}\nsnapshot-interval = {snapshot}\ncache-dir = \"{}\"\n[nats]\nurl = \"{url}\"\n[sink]\nsqlite = \"bench.db\"\n",
                cache.path().display()
            )
        };
        let text = config_text(snapshot);
        let config = Config::parse(&text, dir.path().to_path_buf(), |_| None).unwrap();
        let name = config.name.clone();
        let daemon = Daemon::start(config).await.unwrap();
        let mut progress = daemon.progress("compute-resource").unwrap();
        let started = Instant::now();
        progress.wait_for(|p| p.committed_seq >= n as u64).await.unwrap();
        let first_secs = started.elapsed().as_secs_f64();
        println!(
            "  first fold into SQLite              {:>9.0} events/s  ({first_secs:.1} s, {:.2}x raw)",
            n as f64 / first_secs,
            n as f64 / first_secs / raw
        );
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let running = tokio::spawn(supervise(daemon, None, async move {
            let _ = stopped.await;
        }));
        let client = async_nats::connect(url.as_str()).await.unwrap();
        let inbox = client.new_inbox();
        let mut reports = client.subscribe(inbox.clone()).await.unwrap();
        let subject = rebuild_subject(&name, "compute-resource");
        // The daemon subscribes as it starts supervising: ask until it answers.
        let started = Instant::now();
        loop {
            client.publish_with_reply(subject.clone(), inbox.clone(), "".into()).await.unwrap();
            let first = reports.next().await.unwrap();
            if first.status.is_none() {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
        let after = loop {
            let report = reports.next().await.unwrap();
            match serde_json::from_slice::<RebuildReport>(&report.payload).unwrap() {
                RebuildReport::Rebuilding { .. } => {}
                RebuildReport::Done { after_seq } => break after_seq,
                RebuildReport::Failed { reason } => panic!("rebuild failed: {reason}"),
            }
        };
        let rebuild_secs = started.elapsed().as_secs_f64();
        println!(
            "  rebuild into SQLite (blue/green)    {:>9.0} events/s  ({rebuild_secs:.1} s for {after} events, {:.2}x the raw ordered read's {raw_secs:.1} s)",
            after as f64 / rebuild_secs,
            rebuild_secs / (raw_secs * after as f64 / read as f64)
        );
        stop.send(()).unwrap();
        running.await.unwrap().unwrap();

        // 4. Restart: states are committed with every batch, so a restart loads what it needs
        // and folds only new events; from start to one new event committed.
        let config = Config::parse(&text, dir.path().to_path_buf(), |_| None).unwrap();
        let mut more = common::events(10);
        for (i, e) in more.iter_mut().enumerate() {
            e.message_id = format!("after-restart-{i}");
        }
        common::publish_all(&js, &more[..1]).await;
        let started = Instant::now();
        let daemon = Daemon::start(config).await.unwrap();
        let mut progress = daemon.progress("compute-resource").unwrap();
        progress.wait_for(|p| p.committed_seq > n as u64).await.unwrap();
        let restart = started.elapsed().as_secs_f64();
        println!(
            "  restart after {n} events: start to the next event committed {:.0} ms",
            restart * 1e3
        );
        daemon.stop().await.unwrap(); // a clean stop: every state written

        // 5. Restarts after a crash between snapshots.
        let db = dir.path().join("bench.db");
        let mut last = n as u64 + 1;
        for (round, gap) in [10_000usize, 100_000].into_iter().enumerate() {
            // A daemon that writes no snapshot before it is killed folds `gap` new events.
            std::fs::write(dir.path().join("jetfold.toml"), config_text(i64::MAX as u64)).unwrap();
            // New resources: their lifecycles fold as the first ones did.
            // (`events` makes whole lifecycles, ten events per resource.)
            let mut events = common::events(gap + 10);
            for (i, e) in events.iter_mut().enumerate() {
                e.message_id = format!("gap-{round}-{i}");
                e.subject = e.subject.replacen(".r-", &format!(".g{round}-"), 1);
                e.aggregate_id = e.aggregate_id.replacen("r-", &format!("g{round}-"), 1);
            }
            common::publish_all(&js, &events[..gap]).await;
            let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_jetfold"))
                .args(["run", "--config"])
                .arg(dir.path().join("jetfold.toml"))
                .env("JETFOLD_LOG", "warn")
                .spawn()
                .unwrap();
            while checkpoint(&db).0 < last + gap as u64 {
                if let Some(status) = child.try_wait().unwrap() {
                    panic!("jetfold run exited: {status}");
                }
                tokio::time::sleep(std::time::Duration::from_millis(10)).await;
            }
            child.kill().unwrap();
            child.wait().unwrap();
            let (committed, snapshot_seq) = checkpoint(&db);
            last = committed;
            // Then one more event, and a restart: from start to that event committed.
            common::publish_all(&js, &events[gap..gap + 1]).await;
            let config = Config::parse(&text, dir.path().to_path_buf(), |_| None).unwrap();
            let started = Instant::now();
            let daemon = Daemon::start(config).await.unwrap();
            let mut progress = daemon.progress("compute-resource").unwrap();
            progress.wait_for(|p| p.committed_seq > last).await.unwrap();
            let restart = started.elapsed().as_secs_f64();
            println!(
                "  restart after a crash {} events past the last snapshot: start to the next event committed {:.0} ms",
                committed - snapshot_seq,
                restart * 1e3
            );
            daemon.stop().await.unwrap();
            last += 1;
        }
    });
}

/// The compute-resource checkpoint in `db`: last committed sequence and snapshot sequence.
fn checkpoint(db: &Path) -> (u64, u64) {
    jetfold_host::sink::sqlite::SqliteSink::open(db)
        .ok()
        .and_then(|mut s| s.checkpoint("compute-resource").ok().flatten())
        .map_or((0, 0), |c| (c.last_seq, c.snapshot_seq))
}
