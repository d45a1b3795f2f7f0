//! Stopping `jetfold run` with NATS unreachable, on the default `drain-timeout-ms`: SIGTERM
//! ends the drain at its bound (exit 3) and the next start finishes what it left, losing
//! nothing and applying nothing twice; a second signal ends the drain at once.

use std::{
    path::Path,
    process::{Child, Command, ExitStatus, Stdio},
    time::{Duration, Instant},
};

use jetfold_host::sink::sqlite::SqliteSink;

use crate::crash::{Rng, Workload, assert_commands_once, assert_sink_matches, workload};
use crate::support::{
    NatsServer, cache_dir, checkpoint, create_stream, daemon_dir, eventually, publish_fixture,
};

/// A daemon config on the defaults (batch size, fetch wait, ack wait, drain timeout), without
/// the HTTP endpoint.
fn write_config(dir: &Path, nats: &NatsServer) {
    let text = format!(
        "plugin-dir = \"plugins\"\ncache-dir = \"{}\"\n[nats]\nurl = \"{}\"\n[sink]\nsqlite = \"jetfold.db\"\n[http]\nlisten = \"\"\n",
        cache_dir().display(),
        nats.url()
    );
    std::fs::write(dir.join("jetfold.toml"), text).unwrap();
}

fn spawn_daemon(dir: &Path) -> Child {
    let log =
        std::fs::OpenOptions::new().create(true).append(true).open(dir.join("daemon.log")).unwrap();
    Command::new(env!("CARGO_BIN_EXE_jetfold"))
        .args(["run", "--config"])
        .arg(dir.join("jetfold.toml"))
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .unwrap()
}

fn log(dir: &Path) -> String {
    std::fs::read_to_string(dir.join("daemon.log")).unwrap_or_default()
}

fn signal(child: &Child, name: &str) {
    let sent = Command::new("kill").args([&format!("-{name}"), &child.id().to_string()]).status();
    assert!(sent.unwrap().success());
}

/// Waits for the daemon to exit; fails, with its log, if it is still running after `secs`.
async fn exit_status(child: &mut Child, secs: u64, dir: &Path) -> ExitStatus {
    let deadline = Instant::now() + Duration::from_secs(secs);
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return status;
        }
        if Instant::now() > deadline {
            child.kill().ok();
            panic!("the daemon did not exit within {secs} s; log:\n{}", log(dir));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_with_nats_down_exits_at_the_drain_bound_and_the_next_start_finishes_it() {
    let Workload { dir, infra_file, people_file, expected_infra, expected_people } =
        workload(&mut Rng(0xD1A1_0057));
    let dir = dir.path();
    let mut nats = NatsServer::start();
    let js = nats.jetstream().await;
    create_stream(&js, "INFRA", &["infra.>"]).await;
    create_stream(&js, "PEOPLE", &["people.person.>", "people.clock.>"]).await;
    create_stream(&js, "COMMANDS", &["people.commands.>"]).await;
    publish_fixture(&js, &infra_file).await;
    publish_fixture(&js, &people_file).await;
    write_config(dir, &nats);
    let db = dir.join("jetfold.db");

    // NATS goes away while the daemon is folding, then the daemon is told to stop.
    let mut child = spawn_daemon(dir);
    eventually(120, "the daemon folding both streams", || {
        checkpoint(&db, "compute-resource") > 0 && checkpoint(&db, "person-archive") > 0
    })
    .await;
    nats.stop();
    let stopped_at = checkpoint(&db, "compute-resource") + checkpoint(&db, "person-archive");
    signal(&child, "TERM");
    let status = exit_status(&mut child, 120, dir).await;
    let text = log(dir);
    assert_eq!(status.code(), Some(3), "a drain cut short exits 3; log:\n{text}");
    assert!(
        text.contains("the drain did not finish within drain-timeout-ms (10000 ms)"),
        "the default bound, and what it left, are logged:\n{text}"
    );
    assert!(!text.contains("exiting now"), "the daemon ended its drain itself:\n{text}");
    let left = text.lines().find(|l| l.contains("the drain did not finish")).unwrap().to_string();
    // The drain committed what was folded after NATS went away: its dead letters wait in the
    // outbox.
    let waiting = SqliteSink::open(&db).unwrap().outbox("compute-resource").unwrap().len();
    assert!(waiting > 0, "{left}");
    assert!(
        left.contains(&format!("compute-resource: {waiting} committed messages not published"))
    );

    // NATS and the daemon again: the next start finishes what the drain left.
    nats.resume();
    let mut child = spawn_daemon(dir);
    eventually(300, "the daemon finishing both streams", || {
        checkpoint(&db, "compute-resource") == 15_000 && checkpoint(&db, "person-archive") == 5_000
    })
    .await;
    signal(&child, "TERM");
    let status = exit_status(&mut child, 120, dir).await;
    assert_eq!(status.code(), Some(0), "a full drain exits 0; log:\n{}", log(dir));
    assert_sink_matches(&db, &expected_infra, &expected_people);
    let js = nats.jetstream().await;
    assert_commands_once(&js, &expected_people).await;
    // Every dead letter published, those the drain left too, each once.
    assert!(SqliteSink::open(&db).unwrap().outbox("compute-resource").unwrap().is_empty());
    let dlq = js.get_stream("JETFOLD_DLQ").await.unwrap().get_info().await.unwrap();
    assert_eq!(dlq.state.messages as usize, expected_infra.rejected);
    eprintln!("stopped at {stopped_at} of 20000 committed events: {left}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_signal_ends_the_drain_at_once() {
    let mut nats = NatsServer::start();
    let js = nats.jetstream().await;
    create_stream(&js, "INFRA", &["infra.>"]).await;
    let fixture = crate::support::root().join("plugins/compute-resource/fixtures/events.jsonl");
    let n = publish_fixture(&js, &fixture).await as u64;
    let dir = daemon_dir(&["compute-resource"]);
    let dir = dir.path();
    write_config(dir, &nats);
    let db = dir.join("jetfold.db");
    let mut child = spawn_daemon(dir);
    eventually(120, "the daemon folding the fixture", || checkpoint(&db, "compute-resource") == n)
        .await;

    nats.stop();
    signal(&child, "TERM");
    eventually(60, "the drain starting", || log(dir).contains("stopping: draining")).await;
    signal(&child, "INT");
    let status = exit_status(&mut child, 60, dir).await;
    let text = log(dir);
    assert_eq!(status.code(), Some(3), "{text}");
    // It was the second signal that ended it, not the drain's bound.
    assert!(text.contains("SIGINT received again: exiting now"), "{text}");
    assert!(!text.contains("the drain did not finish"), "{text}");

    // Nothing was lost: the next start has nothing to do but resume after the checkpoint.
    nats.resume();
    let mut child = spawn_daemon(dir);
    eventually(60, "the daemon started again", || log(dir).matches("plugin started").count() == 2)
        .await;
    signal(&child, "TERM");
    assert_eq!(exit_status(&mut child, 60, dir).await.code(), Some(0), "{}", log(dir));
    assert_eq!(checkpoint(&db, "compute-resource"), n);
}

/// The systemd unit gives the drain its whole bound (and the second after it) before it
/// kills the daemon, and counts a drain cut short as a clean stop.
#[test]
fn the_units_stop_timeout_leaves_the_drain_its_bound() {
    let root = crate::support::root();
    let unit = std::fs::read_to_string(root.join("deploy/jetfold.service")).unwrap();
    let value = |key: &str| {
        unit.lines().find_map(|l| l.strip_prefix(key)?.strip_prefix('=')).map(str::to_string)
    };
    let stop_secs: u64 = value("TimeoutStopSec").unwrap().parse().unwrap();
    let example = std::fs::read_to_string(root.join("deploy/jetfold.toml")).unwrap();
    let config = jetfold_host::config::Config::parse(&example, root, |_| None).unwrap();
    assert!(
        stop_secs * 1000 > config.drain_timeout_ms + 1000,
        "TimeoutStopSec={stop_secs} must exceed drain-timeout-ms = {}",
        config.drain_timeout_ms
    );
    assert_eq!(value("SuccessExitStatus").as_deref(), Some("3"));
}

/// A SIGTERM that arrives while the daemon is still starting its plugins is a stop like any
/// other once they have started (exit 0), not the signal's default action killing it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sigterm_while_the_daemon_starts_is_a_clean_stop() {
    let nats = NatsServer::start();
    let js = nats.jetstream().await;
    create_stream(&js, "INFRA", &["infra.>"]).await;
    let dir = daemon_dir(&["compute-resource"]);
    let dir = dir.path();
    write_config(dir, &nats);
    let mut child = spawn_daemon(dir);
    // Connected, plugins not necessarily started yet.
    eventually(60, "the daemon connecting", || log(dir).contains("connected to NATS")).await;
    signal(&child, "TERM");
    let status = exit_status(&mut child, 60, dir).await;
    let text = log(dir);
    assert_eq!(status.code(), Some(0), "{text}");
    assert!(text.contains("SIGTERM received"), "{text}");
}
