//! Plugins in Python (componentize-py) and JavaScript (componentize-js), built from
//! `plugins/` with the toolchains scripts/setup installs: their golden files, the deny-all
//! WASI they run under, and both running in the daemon beside a Rust plugin.

use std::{path::Path, process::Command};

use jetfold_host::daemon::Daemon;

use crate::support::{NatsServer, cache_dir, create_stream, daemon_dir, jetfold, plugin};

#[test]
fn the_python_projection_and_the_javascript_policy_match_their_golden_files() {
    for name in ["resource-inventory", "decommission-notifier"] {
        let run = jetfold([Path::new("test"), &plugin(name)]);
        assert_eq!(run.code, 0, "{name}: {}", run.all());
        assert!(run.stderr.contains("ok: matches"), "{}", run.all());
    }
    let run = jetfold([Path::new("test"), &plugin("resource-inventory")]);
    assert!(run.stdout.contains("not-registered: r-9 is not registered"), "{}", run.all());
    assert!(
        run.stdout.contains(
            r#"{"eu-west":{"Active":1,"Provisioning":1},"us-east":{"Decommissioned":1}}"#
        ),
        "{}",
        run.all()
    );
    let run = jetfold([Path::new("test"), &plugin("decommission-notifier")]);
    assert!(
        run.stdout.contains("command ReleaseAddresses → infra.commands.r-1.ReleaseAddresses"),
        "{}",
        run.all()
    );
}

/// What the probe saw, from `jetfold test --format json`, and the log lines of the run.
fn probe() -> (serde_json::Value, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_jetfold"))
        .args(["test", "--format", "json"])
        .arg(plugin("wasi-probe"))
        .env("JETFOLD_CACHE_DIR", cache_dir())
        .env("JETFOLD_LOG", "info")
        .env("PROBE_SECRET", "must not be seen")
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    (report["state"]["r-1"].clone(), String::from_utf8_lossy(&out.stderr).into_owned())
}

#[test]
fn a_guest_that_imports_wasi_gets_no_files_environment_network_or_real_time() {
    assert!(Path::new("/etc/hostname").exists() || Path::new("/etc/passwd").exists());
    let (seen, log) = probe();
    assert!(seen["file"]["denied"].is_string(), "read a file: {seen}");
    assert!(seen["root"]["denied"].is_string(), "listed /: {seen}");
    assert_eq!(seen["environment"], serde_json::json!({}), "saw the environment: {seen}");
    assert_eq!(seen["time"], 0.0, "saw the real time: {seen}");
    assert!(seen["network"]["denied"].is_string(), "connected: {seen}");
    // What it printed went to the log, under its name.
    assert!(log.contains("guest: probe saw event 1"), "{log}");
    assert!(log.contains("wasi-probe"), "{log}");
    // Its randomness is seeded: another run (another process) draws the same number.
    let (again, _) = probe();
    assert_eq!(seen["random"], again["random"]);
}

fn config(dir: &Path, nats: &NatsServer) -> jetfold_host::config::Config {
    let text = format!(
        "plugin-dir = \"plugins\"\nbatch-size = 20\nfetch-wait-ms = 50\ncache-dir = \"{}\"\n[nats]\nurl = \"{}\"\n[sink]\nsqlite = \"jetfold.db\"\n",
        cache_dir().display(),
        nats.url()
    );
    jetfold_host::config::Config::parse(&text, dir.to_path_buf(), |_| None).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_and_javascript_plugins_run_in_the_daemon_beside_a_rust_one() {
    let names = ["compute-resource", "resource-inventory", "decommission-notifier"];
    for name in names {
        plugin(name);
    }
    let nats = NatsServer::start();
    let js = nats.jetstream().await;
    create_stream(&js, "INFRA", &["infra.resource.>"]).await;
    create_stream(&js, "COMMANDS", &["infra.commands.>"]).await;
    let fixture = plugin("decommission-notifier").join("fixtures/events.jsonl");
    crate::support::publish_fixture(&js, &fixture).await;
    let fixture = plugin("resource-inventory").join("fixtures/events.jsonl");
    crate::support::publish_fixture(&js, &fixture).await;
    // Fixture events' message ids are built from subject and line, so JetStream drops the
    // second fixture's events that repeat the first's: the stream says what was stored.
    let published =
        js.get_stream("INFRA").await.unwrap().get_info().await.unwrap().state.last_sequence;
    let dir = daemon_dir(&names);
    let daemon = Daemon::start(config(dir.path(), &nats)).await.unwrap();
    for name in names {
        let mut progress = daemon.progress(name).unwrap();
        progress.wait_for(|p| p.committed_seq == published).await.unwrap();
    }
    daemon.stop().await.unwrap();

    let mut sink =
        jetfold_host::sink::sqlite::SqliteSink::open(&dir.path().join("jetfold.db")).unwrap();
    // The Python projection's read model: the second fixture registers r-1 and r-2 again
    // (rejected), r-3 is new.
    let rows = sink.rows("resource_inventory").unwrap();
    let ids: Vec<&str> = rows.iter().map(|(k, _)| k.as_str()).collect();
    assert_eq!(ids, ["r-1", "r-2", "r-3"]);
    let r3: serde_json::Value = serde_json::from_str(&rows[2].1).unwrap();
    assert_eq!(
        (r3["region"].as_str(), r3["status"].as_str()),
        (Some("us-east"), Some("Decommissioned"))
    );
    // The Rust projection beside it folded the same events.
    assert_eq!(sink.rows("compute_resources").unwrap().len(), 3);
    // The JavaScript policy asked once per decommissioned resource, with correlation and
    // causation set by the host.
    let stream = js.get_stream("COMMANDS").await.unwrap();
    assert_eq!(stream.clone().get_info().await.unwrap().state.messages, 2);
    let consumer = stream
        .create_consumer(async_nats::jetstream::consumer::pull::OrderedConfig::default())
        .await
        .unwrap();
    use futures::StreamExt as _;
    let commands: Vec<_> = consumer.messages().await.unwrap().take(2).collect().await;
    let first = commands[0].as_ref().unwrap();
    assert_eq!(first.subject.as_str(), "infra.commands.r-1.ReleaseAddresses");
    let headers = first.headers.clone().unwrap();
    assert_eq!(headers.get("Correlation-Id").map(|v| v.as_str()), Some("retire-7"));
    assert_eq!(headers.get("Jetfold-Plugin").map(|v| v.as_str()), Some("decommission-notifier"));
    let second = commands[1].as_ref().unwrap();
    assert_eq!(second.subject.as_str(), "infra.commands.r-3.ReleaseAddresses");
}
