//! `jetfold replay` and `jetfold verify` against a real stream.

use std::path::Path;

use jetfold_host::config::Config;

use crate::support::{
    NatsServer, checkpoint, create_stream, daemon_dir, eventually, jetfold, plugin,
    publish_fixture, root, start_daemon, write_config,
};

/// A server whose INFRA stream holds the compute-resource fixture; the event count.
async fn infra() -> (NatsServer, usize) {
    let nats = NatsServer::start();
    let js = nats.jetstream().await;
    create_stream(&js, "INFRA", &["infra.>"]).await;
    let n =
        publish_fixture(&js, &root().join("plugins/compute-resource/fixtures/events.jsonl")).await;
    (nats, n)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replay_folds_the_stream_to_the_state_the_fixture_expects() {
    let compute = plugin("compute-resource").display().to_string();
    let (nats, n) = infra().await;
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path(), &nats);

    // The whole stream: the states the golden file of the same events holds.
    let run = jetfold(["replay", &compute, "--config", &config]);
    assert_eq!(run.code, 0, "{}", run.all());
    let summary: serde_json::Value = serde_json::from_str(&run.stdout).unwrap();
    let golden: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(root().join("plugins/compute-resource/fixtures/expected.json"))
            .unwrap(),
    )
    .unwrap();
    assert_eq!(summary["state"], golden["state"], "{}", run.all());
    assert_eq!(summary["events"], n as u64);
    assert_eq!(summary["last_seq"], n as u64);
    let rejected = golden["steps"].as_array().unwrap().iter().filter(|s| s.get("error").is_some());
    assert_eq!(summary["rejected"], rejected.count() as u64);

    // Time travel: up to a sequence, or an event time; and one key.
    let early = jetfold(["replay", &compute, "--config", &config, "--to-seq", "2"]);
    let early: serde_json::Value = serde_json::from_str(&early.stdout).unwrap();
    assert_eq!(early["events"], 2);
    assert_eq!(early["state"].as_object().unwrap().len(), 2, "{early}");
    assert_eq!(early["state"]["r-1"]["status"], "Provisioning", "{early}");
    let by_time =
        jetfold(["replay", &compute, "--config", &config, "--to-time", "2026-03-01T09:00:03Z"]);
    let by_time: serde_json::Value = serde_json::from_str(&by_time.stdout).unwrap();
    assert_eq!(by_time["events"], 1, "{by_time}");
    let from = jetfold(["replay", &compute, "--config", &config, "--from-seq", "3"]);
    let from: serde_json::Value = serde_json::from_str(&from.stdout).unwrap();
    assert_eq!(from["events"], n as u64 - 2, "{from}");
    let one = jetfold(["replay", &compute, "--config", &config, "--key", "r-1"]);
    let one: serde_json::Value = serde_json::from_str(&one.stdout).unwrap();
    assert_eq!(one["state"], serde_json::json!({"r-1": golden["state"]["r-1"]}), "{one}");

    // Several instances, each folding a share of the keys, come to the same states; none is
    // refused with a clear error.
    let parallel = jetfold(["replay", &compute, "--config", &config, "--jobs", "3"]);
    assert_eq!(parallel.code, 0, "{}", parallel.all());
    let parallel: serde_json::Value = serde_json::from_str(&parallel.stdout).unwrap();
    assert_eq!(parallel["state"], golden["state"], "{parallel}");
    assert_eq!(parallel["rejected"], summary["rejected"], "{parallel}");
    let none = jetfold(["replay", &compute, "--config", &config, "--jobs", "0"]);
    assert_eq!(none.code, 2, "{}", none.all());
    assert!(none.stderr.contains("--jobs"), "{}", none.all());

    // --effects: one line per event, then the states.
    let effects = jetfold(["replay", &compute, "--config", &config, "--effects"]);
    assert_eq!(effects.code, 0, "{}", effects.all());
    let lines: Vec<serde_json::Value> =
        effects.stdout.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(lines.len(), n + 1);
    assert_eq!(lines[0]["seq"], 1);
    assert_eq!(lines[0]["effects"][0]["effect"], "upsert", "{}", lines[0]);
    assert_eq!(lines[0]["effects"][0]["table"], "compute_resources", "{}", lines[0]);
    assert!(lines.iter().any(|l| l.get("error").is_some()), "the fixture's mistakes are rejected");
    assert_eq!(lines[n]["state"], golden["state"]);

    // On a terminal (a pseudo-terminal from util-linux's `script`), a progress line with the
    // count and rate; never in a pipe (above, stderr is empty).
    assert!(!effects.stderr.contains("events/s"), "{}", effects.all());
    let command =
        format!("{} replay {compute} --config {config} > /dev/null", env!("CARGO_BIN_EXE_jetfold"));
    let tty = std::process::Command::new("script")
        .args(["-qec", &command, "/dev/null"])
        .env("JETFOLD_CACHE_DIR", crate::support::cache_dir())
        .output()
        .unwrap();
    let shown = String::from_utf8_lossy(&tty.stdout);
    assert!(tty.status.success(), "{shown}");
    assert!(
        shown.contains(&format!("replay [########################] {n}/{n} (100%)")),
        "{shown}"
    );
    assert!(shown.contains("events/s"), "{shown}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replay_diff_names_the_first_event_two_versions_fold_differently() {
    let v1 = plugin("event-counter").display().to_string();
    let v2 = plugin("event-counter-v2").display().to_string();
    let (nats, n) = infra().await;
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path(), &nats);

    let same = jetfold(["replay", &v1, "--config", &config, "--diff", &v1]);
    assert_eq!(same.code, 0, "{}", same.all());
    assert!(same.stdout.contains(&format!("agree on all {n} events")), "{}", same.all());

    // Version 2 keeps its count in another state format: every event differs.
    let differ = jetfold(["replay", &v1, "--config", &config, "--diff", &v2]);
    assert_eq!(differ.code, 1, "{}", differ.all());
    let lines: Vec<&str> = differ.stdout.lines().collect();
    assert_eq!(lines.len(), n + 1, "{}", differ.all());
    let first: serde_json::Value = serde_json::from_str(lines[0]).unwrap();
    assert_eq!(first["seq"], 1);
    assert_ne!(first["left"]["state"], first["right"]["state"], "{first}");
    assert!(
        lines[n].starts_with("first divergence at sequence 1 (ResourceRegistered, key \"r-1\")"),
        "{}",
        differ.all()
    );
    assert!(lines[n].ends_with(&format!("{n} of {n} events differ")), "{}", differ.all());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn verify_agrees_with_a_daemon_and_finds_a_state_changed_behind_its_back() {
    plugin("event-counter");
    let (nats, n) = infra().await;
    let dir = daemon_dir(&["event-counter"]);
    let config = write_config(dir.path(), &nats);
    let db = dir.path().join("jetfold.db");
    let counter = dir.path().join("plugins/event-counter").display().to_string();

    let parsed = Config::load(Path::new(&config)).unwrap();
    let (stop, daemon) = start_daemon(parsed);
    eventually(60, "the daemon to fold the stream", || {
        checkpoint(&db, "event-counter") == n as u64
    })
    .await;

    // Verified while the daemon runs.
    let ok = jetfold(["verify", &counter, "--config", &config]);
    assert_eq!(ok.code, 0, "{}", ok.all());
    assert!(ok.stdout.contains(&format!("replayed {n} events up to sequence {n}")), "{}", ok.all());
    assert!(ok.stdout.contains("verified: all 3 states match"), "{}", ok.all());
    stop.send(()).unwrap();
    daemon.await.unwrap().unwrap();

    // A state changed in the database, as a non-deterministic plugin would leave it.
    let conn = rusqlite::Connection::open(&db).unwrap();
    let changed = conn
        .execute(
            "UPDATE jetfold_states SET state = CAST('999' AS BLOB) WHERE plugin = 'event-counter' AND key = 'r-2'",
            [],
        )
        .unwrap();
    assert_eq!(changed, 1);
    drop(conn);
    let bad = jetfold(["verify", &counter, "--config", &config]);
    assert_eq!(bad.code, 1, "{}", bad.all());
    assert!(bad.stdout.contains("1 of 3 states differ"), "{}", bad.all());
    assert!(bad.stdout.contains("\"key\":\"r-2\""), "{}", bad.all());
    assert!(bad.stdout.contains("\"stored\":999"), "{}", bad.all());

    // A plugin that never ran has nothing to verify.
    let compute = plugin("compute-resource").display().to_string();
    let none = jetfold(["verify", &compute, "--config", &config]);
    assert_eq!(none.code, 2, "{}", none.all());
    assert!(none.stderr.contains("no checkpoint"), "{}", none.all());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rebuild_restores_a_damaged_read_model_while_the_daemon_runs() {
    plugin("compute-resource");
    let (nats, n) = infra().await;
    let dir = daemon_dir(&["compute-resource"]);
    let config = write_config(dir.path(), &nats);
    let db = dir.path().join("jetfold.db");
    let parsed = Config::load(Path::new(&config)).unwrap();
    let target = parsed.sink_target();
    let (stop, daemon) = start_daemon(parsed);
    eventually(60, "the daemon to fold the stream", || {
        checkpoint(&db, "compute-resource") == n as u64
    })
    .await;
    let rows = |table: &str| jetfold_host::sink::Sink::open(&target).unwrap().rows(table).unwrap();
    let before = rows("compute_resources");
    assert!(!before.is_empty());

    // The read model damaged behind the daemon's back.
    let conn = rusqlite::Connection::open(&db).unwrap();
    conn.execute("DELETE FROM compute_resources WHERE key = 'r-1'", []).unwrap();
    conn.execute("UPDATE compute_resources SET doc = '{}' WHERE key = 'r-2'", []).unwrap();
    drop(conn);
    assert_ne!(rows("compute_resources"), before);

    let run = tokio::task::spawn_blocking(move || {
        jetfold(["rebuild", "compute-resource", "--config", &config])
    })
    .await
    .unwrap();
    assert_eq!(run.code, 0, "{}", run.all());
    assert!(
        run.stdout.contains(&format!("the new read model took over after sequence {n}")),
        "{}",
        run.all()
    );
    assert_eq!(rows("compute_resources"), before, "the rebuild restores every row");
    assert_eq!(checkpoint(&db, "compute-resource"), n as u64);
    let conn = rusqlite::Connection::open(&db).unwrap();
    let staging: i64 = conn
        .query_row(
            "SELECT count(*) FROM sqlite_master WHERE name LIKE '%__rebuild%' ESCAPE '\\'",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(staging, 0, "no staging table is left");
    drop(conn);

    // Again on a terminal (util-linux's `script`): the progress line, then the outcome.
    let command = format!(
        "{} rebuild compute-resource --config {}",
        env!("CARGO_BIN_EXE_jetfold"),
        dir.path().join("jetfold.toml").display()
    );
    let tty = tokio::task::spawn_blocking(move || {
        std::process::Command::new("script").args(["-qec", &command, "/dev/null"]).output()
    })
    .await
    .unwrap()
    .unwrap();
    let shown = String::from_utf8_lossy(&tty.stdout);
    assert!(tty.status.success(), "{shown}");
    assert!(shown.contains("rebuild compute-resource ["), "{shown}");
    assert!(shown.contains(&format!("{n}/{n} (100%)")), "{shown}");
    assert!(shown.contains(&format!("took over after sequence {n}")), "{shown}");
    assert_eq!(rows("compute_resources"), before);

    // A plugin the daemon does not run, and a daemon that is not there.
    let dir_path = dir.path().to_path_buf();
    let (missing, absent) = tokio::task::spawn_blocking(move || {
        let config = dir_path.join("jetfold.toml").display().to_string();
        let missing = jetfold(["rebuild", "nope", "--config", &config]);
        let other = dir_path.join("other.toml");
        let text = std::fs::read_to_string(&config).unwrap();
        std::fs::write(&other, format!("name = \"elsewhere\"\n{text}")).unwrap();
        let other = other.display().to_string();
        let absent =
            jetfold(["rebuild", "compute-resource", "--config", &other, "--timeout-secs", "1"]);
        (missing, absent)
    })
    .await
    .unwrap();
    assert_eq!(missing.code, 2, "{}", missing.all());
    assert!(
        missing.stderr.contains("plugin `nope` is not running on daemon `jetfold`"),
        "{}",
        missing.all()
    );
    assert_eq!(absent.code, 2, "{}", absent.all());
    assert!(absent.stderr.contains("no daemon `elsewhere` listens"), "{}", absent.all());

    stop.send(()).unwrap();
    daemon.await.unwrap().unwrap();
}

/// `--to-time` folds the events whose event time is at or before it wherever they are in the
/// stream: two batches whose times both start at 00:01 each give their early events.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replay_to_a_time_folds_every_event_at_or_before_it_whatever_the_stream_order() {
    let counter = plugin("event-counter").display().to_string();
    let nats = NatsServer::start();
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path(), &nats);
    let events = dir.path().join("events.jsonl");
    let mut lines = String::new();
    for batch in ["b1", "b2"] {
        for minute in 1..=30 {
            lines.push_str(&format!(
                "{{\"subject\":\"infra.resource.a-{minute}.Pinged\",\"time\":\"2026-01-01T00:{minute:02}:00Z\",\"message_id\":\"{batch}-{minute}\",\"payload\":{{}}}}\n"
            ));
        }
    }
    std::fs::write(&events, lines).unwrap();
    let events = events.display().to_string();
    let published = jetfold(["publish", &events, "--stream", "INFRA", "--config", &config]);
    assert_eq!(published.code, 0, "{}", published.all());

    let run =
        jetfold(["replay", &counter, "--config", &config, "--to-time", "2026-01-01T00:15:00Z"]);
    assert_eq!(run.code, 0, "{}", run.all());
    let summary: serde_json::Value = serde_json::from_str(&run.stdout).unwrap();
    assert_eq!(summary["events"], 30, "15 of each batch: {summary}");
    assert_eq!(summary["later"], 30, "{summary}");
    assert_eq!(summary["rejected"], 0, "{summary}");
    assert_eq!(summary["last_seq"], 45, "the last folded is the second batch's 00:15: {summary}");
    let state = summary["state"].as_object().unwrap();
    assert_eq!(state.len(), 15, "{summary}");
    assert_eq!(state["a-1"], 2, "{summary}");
    assert_eq!(state["a-15"], 2, "at the time itself: {summary}");
    assert!(state.get("a-16").is_none(), "{summary}");

    // Before the earliest event: nothing.
    let none =
        jetfold(["replay", &counter, "--config", &config, "--to-time", "2025-12-31T00:00:00Z"]);
    let none: serde_json::Value = serde_json::from_str(&none.stdout).unwrap();
    assert_eq!(none["events"], 0, "{none}");
    assert_eq!(none["later"], 60, "{none}");

    // A time without its offset is refused with one that has it.
    let local =
        jetfold(["replay", &counter, "--config", &config, "--to-time", "2026-01-01T00:15:00"]);
    assert_eq!(local.code, 2, "{}", local.all());
    assert!(
        local
            .stderr
            .contains("give an RFC 3339 time with its offset, such as 2026-03-01T12:00:00Z"),
        "{}",
        local.all()
    );
}

/// `verify` with a partitioned daemon's config checks that partition: its checkpoint, the
/// keys it folds.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn verify_checks_the_partition_of_a_partitioned_daemon() {
    plugin("event-counter");
    let (nats, n) = infra().await;
    let dir = daemon_dir(&["event-counter"]);
    let config = write_config(dir.path(), &nats);
    let text = std::fs::read_to_string(&config).unwrap();
    std::fs::write(
        &config,
        format!("{text}[partition]\nindex = 0\ncount = 2\n[http]\nlisten = \"127.0.0.1:0\"\n"),
    )
    .unwrap();
    let db = dir.path().join("jetfold.db");
    let (stop, daemon) = start_daemon(Config::load(Path::new(&config)).unwrap());
    eventually(60, "partition 0 to fold the stream", || {
        checkpoint(&db, "event-counter#0/2") == n as u64
    })
    .await;
    stop.send(()).unwrap();
    daemon.await.unwrap().unwrap();
    let owned = jetfold_host::sink::sqlite::SqliteSink::open(&db)
        .unwrap()
        .states("event-counter")
        .unwrap()
        .len();
    assert!(owned > 0, "partition 0 folds some of the keys");

    let counter = dir.path().join("plugins/event-counter").display().to_string();
    let ok =
        tokio::task::spawn_blocking(move || jetfold(["verify", &counter, "--config", &config]))
            .await
            .unwrap();
    assert_eq!(ok.code, 0, "{}", ok.all());
    assert!(
        ok.stdout.contains(&format!("verified: all {owned} states of partition 0/2 match")),
        "{}",
        ok.all()
    );
}

/// A read-model query over every key works past the few thousand keys one fuel budget
/// covers: its budget grows with the states asked about (the manifest's fuel per 1,000).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_query_over_every_key_answers_at_thousands_of_keys() {
    plugin("compute-resource");
    let nats = NatsServer::start();
    let js = nats.jetstream().await;
    create_stream(&js, "INFRA", &["infra.>"]).await;
    let dir = daemon_dir(&["compute-resource"]);
    let keys = 6_000;
    let events = dir.path().join("events.jsonl");
    let lines: String = (0..keys)
        .map(|i| {
            format!(
                "{{\"subject\":\"infra.resource.r-{i}.ResourceRegistered\",\"time\":\"2026-03-01T09:00:00Z\",\"payload\":{{\"name\":\"web-{i}\",\"kind\":\"vm\",\"region\":\"eu-west\"}}}}\n"
            )
        })
        .collect();
    std::fs::write(&events, lines).unwrap();
    let config = write_config(dir.path(), &nats);
    let text = std::fs::read_to_string(&config).unwrap();
    std::fs::write(&config, format!("{text}[http]\nlisten = \"127.0.0.1:0\"\n")).unwrap();
    let published = jetfold([
        "publish",
        &events.display().to_string(),
        "--stream",
        "INFRA",
        "--config",
        &config,
    ]);
    assert_eq!(published.code, 0, "{}", published.all());
    let db = dir.path().join("jetfold.db");
    let (stop, daemon) = start_daemon(Config::load(Path::new(&config)).unwrap());
    eventually(120, "the daemon to fold every registration", || {
        checkpoint(&db, "compute-resource") == keys
    })
    .await;

    let ask = move |query: &'static str| {
        let config = config.clone();
        tokio::task::spawn_blocking(move || {
            jetfold([
                "state",
                "compute-resource",
                query,
                "--config",
                &config,
                "--timeout-ms",
                "60000",
            ])
        })
    };
    let counts = ask("{\"count_by_status\":{}}").await.unwrap();
    assert_eq!(counts.code, 0, "{}", counts.all());
    let counts: serde_json::Value = serde_json::from_str(&counts.stdout).unwrap();
    assert_eq!(counts, serde_json::json!({"Provisioning": keys}));
    let one = ask("{\"resource\":{\"id\":\"r-5999\"}}").await.unwrap();
    assert_eq!(one.code, 0, "{}", one.all());
    let one: serde_json::Value = serde_json::from_str(&one.stdout).unwrap();
    assert_eq!(one["name"], "web-5999", "{one}");

    stop.send(()).unwrap();
    daemon.await.unwrap().unwrap();
}
