//! Dead letters replayed with `jetfold dlq replay`: a copy is folded in place of the event it is
//! a copy of, once, by every fold of the stream (the daemon that failed, a replay, `verify`, a
//! rebuild, a new daemon), and the copies of a copy that failed again do not pile up.

use std::path::Path;

use crate::support::{NatsServer, cache_dir, create_stream, daemon_dir, jetfold, plugin};

/// A daemon config folding `faulty` from TEST into `db`, verifying and signing events; every
/// other setting as a user gets it.
fn signed_config(dir: &Path, nats: &NatsServer, name: &str, db: &str) -> std::path::PathBuf {
    use base64::Engine as _;
    let key = base64::engine::general_purpose::STANDARD.encode(b"a shared secret of 32 bytes.....");
    let path = dir.join(format!("{name}.toml"));
    let text = format!(
        "name = \"{name}\"\nplugin-dir = \"plugins\"\ncache-dir = \"{}\"\n[nats]\nurl = \"{}\"\n\
         [sink]\nsqlite = \"{db}\"\n[event-signing]\nverify = true\nsign-key = \"k1\"\n[event-signing.keys]\nk1 = \"{key}\"\n\
         [plugins.faulty]\nstream = \"TEST\"\nsubjects = [\"test.>\"]\n",
        cache_dir().display(),
        nats.url()
    );
    std::fs::write(&path, text).unwrap();
    path
}

/// A NATS server with the stream TEST, and a daemon directory with `faulty` limited to payloads
/// of 1 KiB: its manifest's path and its text without the limit (the fix).
async fn limited_faulty()
-> (NatsServer, async_nats::jetstream::Context, tempfile::TempDir, std::path::PathBuf, String) {
    plugin("faulty");
    let nats = NatsServer::start();
    let js = nats.jetstream().await;
    create_stream(&js, "TEST", &["test.>"]).await;
    let dir = daemon_dir(&["faulty"]);
    let manifest = dir.path().join("plugins/faulty/plugin.toml");
    let fixed = std::fs::read_to_string(&manifest).unwrap();
    let limited = fixed.replace("[limits]", "[limits]\nmax-payload-bytes = 1024");
    std::fs::write(&manifest, limited).unwrap();
    (nats, js, dir, manifest, fixed)
}

/// The `faulty` plugin's count of `Ok` events (key `a`) in `db`, and its rejected events: their
/// sequences and the copies that folded them since.
fn folded(db: &Path) -> (serde_json::Value, Vec<(i64, Option<i64>)>) {
    let conn = rusqlite::Connection::open(db).unwrap();
    let doc: String =
        conn.query_row("SELECT doc FROM faults WHERE key = 'a'", [], |r| r.get(0)).unwrap();
    let mut stmt = conn
        .prepare(
            "SELECT seq, replayed_seq FROM jetfold_rejected WHERE plugin = 'faulty' ORDER BY seq",
        )
        .unwrap();
    let rejected = stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?))).unwrap();
    (serde_json::from_str(&doc).unwrap(), rejected.map(Result::unwrap).collect())
}

/// The operator's story: a payload over the plugin's limit and a business error are
/// dead-lettered; the limit is raised and `dlq replay` run: the large event folds (its copy's
/// signature holds), the other fails again and is dead-lettered again, and replayed again its
/// copy is still of the first event (ids do not grow). Then every fold from the stream start
/// counts each event once, as the daemon did: `replay` (which shows the copy it passes by),
/// `verify`, a new daemon, a rebuild; the version before the fix folds the copies too (and
/// rejects them, as it rejected the event).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replayed_dead_letter_is_folded_once_by_every_fold_of_the_stream() {
    let (nats, js, dir, manifest, fixed) = limited_faulty().await;
    // The version before the fix, kept for a replay.
    let before = dir.path().join("before/faulty");
    std::fs::create_dir_all(&before).unwrap();
    for entry in std::fs::read_dir(dir.path().join("plugins/faulty")).unwrap() {
        let path = entry.unwrap().path();
        std::fs::copy(&path, before.join(path.file_name().unwrap())).unwrap();
    }
    let config_a = signed_config(dir.path(), &nats, "a", "a.db");
    let config = || jetfold_host::config::Config::load(&config_a).unwrap();
    let arg = config_a.display().to_string();
    let db_a = dir.path().join("a.db");

    // Four signed events: Ok, Ok over the limit, Fail, Ok.
    let fixture = dir.path().join("events.jsonl");
    let big = serde_json::json!({ "pad": "x".repeat(2_000) });
    let lines = [
        serde_json::json!({"subject": "test.fault.a.Ok", "time": "2026-01-01T00:00:00Z", "payload": {}}),
        serde_json::json!({"subject": "test.fault.a.Ok", "time": "2026-01-01T00:00:01Z", "payload": big}),
        serde_json::json!({"subject": "test.fault.a.Fail", "time": "2026-01-01T00:00:02Z", "payload": {}}),
        serde_json::json!({"subject": "test.fault.a.Ok", "time": "2026-01-01T00:00:03Z", "payload": {}}),
    ];
    let text: String = lines.iter().map(|l| format!("{l}\n")).collect();
    std::fs::write(&fixture, text).unwrap();
    let fixture_arg = fixture.display().to_string();
    let published = jetfold(["publish", &fixture_arg, "--stream", "TEST", "--config", &arg]);
    assert_eq!(published.code, 0, "{}", published.all());

    let fold_to = |seq: u64| async move {
        let daemon = jetfold_host::daemon::Daemon::start(config()).await.unwrap();
        let mut p = daemon.progress("faulty").unwrap();
        p.wait_for(|p| p.committed_seq == seq).await.unwrap();
        daemon
    };
    let daemon = fold_to(4).await;
    daemon.stop().await.unwrap();
    let (doc, rejected) = folded(&db_a);
    assert_eq!((doc["ok"].as_u64(), rejected), (Some(2), vec![(2, None), (3, None)]));

    // The limit raised; the dead letters replayed to the daemon running the fixed version.
    std::fs::write(&manifest, &fixed).unwrap();
    let daemon = fold_to(4).await;
    let replay = tokio::task::spawn_blocking({
        let arg = arg.clone();
        move || jetfold(["dlq", "replay", "faulty", "--config", &arg])
    });
    let replay = replay.await.unwrap();
    assert_eq!(replay.code, 0, "{}", replay.all());
    assert!(replay.stdout.contains("replayed 2 dead letters of faulty"), "{}", replay.all());
    let mut p = daemon.progress("faulty").unwrap();
    p.wait_for(|p| p.committed_seq == 6).await.unwrap();
    let (doc, rejected) = folded(&db_a);
    assert_eq!(doc["ok"], 3, "the large event folded from its copy (its signature held)");
    assert_eq!(rejected, vec![(2, Some(5)), (3, None), (6, None)], "the Fail failed again");
    let letters = jetfold_host::dlq::list(&js, &config().dead_letter, "faulty").await.unwrap();
    assert_eq!(letters.len(), 1, "{letters:?}");
    assert_eq!(letters[0].source_seq, 6);

    // Replayed again: the copy's copy is of the first event, under an id that does not grow.
    let replay = tokio::task::spawn_blocking({
        let arg = arg.clone();
        move || jetfold(["dlq", "replay", "faulty", "--config", &arg])
    });
    assert_eq!(replay.await.unwrap().code, 0);
    p.wait_for(|p| p.committed_seq == 7).await.unwrap();
    let stream = js.get_stream("TEST").await.unwrap();
    for (seq, of) in [(5, "TEST:2"), (6, "TEST:3"), (7, "TEST:3")] {
        let raw = stream.get_raw_message(seq).await.unwrap();
        let header = |name: &str| raw.headers.get(name).map(|v| v.as_str().to_string());
        assert_eq!(header("Jetfold-Replay-Of").as_deref(), Some(of), "copy at {seq}");
        assert_eq!(header("Jetfold-Replay-For").as_deref(), Some("faulty"));
        let id = header("Nats-Msg-Id").unwrap();
        assert_eq!(id.matches(":replay:").count(), 1, "copy at {seq}: {id}");
    }
    let (doc, rejected) = folded(&db_a);
    assert_eq!(doc["ok"], 3);
    assert_eq!(rejected, vec![(2, Some(5)), (3, None), (6, None), (7, None)]);
    let live = doc;

    // A replay from the start: each event counted once; the copy of the event that folds
    // now is passed by, and `--effects` says why.
    let dir_arg = dir.path().join("plugins/faulty").display().to_string();
    let run = jetfold(["replay", &dir_arg, "--config", &arg]);
    assert_eq!(run.code, 0, "{}", run.all());
    let summary: serde_json::Value = serde_json::from_str(&run.stdout).unwrap();
    assert_eq!(summary["state"]["a"]["ok"], 3, "{summary}");
    assert_eq!((summary["events"].as_u64(), summary["rejected"].as_u64()), (Some(6), Some(3)));
    let run = jetfold(["replay", &dir_arg, "--config", &arg, "--effects"]);
    let passed: Vec<serde_json::Value> = run
        .stdout
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|l| l.get("passed_by").is_some())
        .collect();
    assert_eq!(passed.len(), 1, "{}", run.all());
    assert_eq!(passed[0]["seq"], 5);
    assert!(passed[0]["passed_by"].as_str().unwrap().contains("of sequence 2"), "{}", passed[0]);
    // The version before the fix fails on the copy too: there the copy stays rejected.
    let before_arg = before.display().to_string();
    let run = jetfold(["replay", &before_arg, "--config", &arg]);
    let summary: serde_json::Value = serde_json::from_str(&run.stdout).unwrap();
    assert_eq!(summary["state"]["a"]["ok"], 2, "{}", run.all());
    assert_eq!((summary["events"].as_u64(), summary["rejected"].as_u64()), (Some(7), Some(5)));
    // verify agrees with the daemon's states.
    let verify = jetfold(["verify", &dir_arg, "--config", &arg]);
    assert_eq!(verify.code, 0, "{}", verify.all());
    assert!(verify.stdout.contains("verified"), "{}", verify.all());

    // A rebuild while the daemon runs (as `jetfold run` runs it, serving requests): the same
    // count, the copy left out where the event folded.
    daemon.stop().await.unwrap();
    let (stop, running) = crate::support::start_daemon(config());
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    let rebuild = loop {
        let arg = arg.clone();
        let run =
            tokio::task::spawn_blocking(move || jetfold(["rebuild", "faulty", "--config", &arg]));
        let run = run.await.unwrap();
        // Until the daemon serves requests.
        if !run.stderr.contains("no daemon `a` listens") || std::time::Instant::now() > deadline {
            break run;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    };
    assert_eq!(rebuild.code, 0, "{}", rebuild.all());
    stop.send(()).unwrap();
    running.await.unwrap().unwrap();
    let (doc, rejected) = folded(&db_a);
    assert_eq!(doc, live, "the rebuilt read model");
    assert_eq!(rejected, vec![(3, None), (6, None), (7, None)], "the large event folded itself");

    // A second daemon with a database of its own, from the stream start: the same.
    let config_b = signed_config(dir.path(), &nats, "b", "b.db");
    let daemon =
        jetfold_host::daemon::Daemon::start(jetfold_host::config::Config::load(&config_b).unwrap())
            .await
            .unwrap();
    let mut p = daemon.progress("faulty").unwrap();
    p.wait_for(|p| p.committed_seq == 7).await.unwrap();
    daemon.stop().await.unwrap();
    let (doc, rejected) = folded(&dir.path().join("b.db"));
    assert_eq!(doc, live);
    assert_eq!(rejected, vec![(3, None), (6, None), (7, None)]);
}

/// `dir/jetfold.toml` for a daemon folding `faulty` from TEST into `jetfold.db`, writing states
/// every 1,000 events only (so that a crash leaves events to fold again).
fn snapshotting_config(dir: &Path, nats: &NatsServer) -> std::path::PathBuf {
    let config = dir.join("jetfold.toml");
    let text = format!(
        "plugin-dir = \"plugins\"\nfetch-wait-ms = 50\nsnapshot-interval = 1000\ncache-dir = \"{}\"\n[nats]\nurl = \"{}\"\n\
         [sink]\nsqlite = \"jetfold.db\"\n[plugins.faulty]\nstream = \"TEST\"\nsubjects = [\"test.>\"]\n",
        cache_dir().display(),
        nats.url()
    );
    std::fs::write(&config, text).unwrap();
    config
}

/// Killed between snapshots after folding replayed dead letters, a daemon folds the events
/// since its last snapshot again as it folded them: the copy that folded its event folds it
/// again (its rejection says which copy), the copy that failed fails again, and the next
/// event counts on from there.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_a_sigkill_the_copies_since_the_snapshot_fold_as_they_did() {
    use crate::support::{DaemonProcess, checkpoint};
    let (nats, js, dir, manifest, fixed) = limited_faulty().await;
    let config = snapshotting_config(dir.path(), &nats);
    let db = dir.path().join("jetfold.db");
    let log = dir.path().join("run.log");
    let big = serde_json::json!({ "pad": "x".repeat(2_000) }).to_string();
    for (ty, payload) in [("Ok", "{}"), ("Ok", big.as_str()), ("Fail", "{}"), ("Ok", "{}")] {
        let subject = format!("test.fault.a.{ty}");
        js.publish(subject, payload.to_string().into()).await.unwrap().await.unwrap();
    }
    let daemon = DaemonProcess::start(&config, &log);
    daemon.wait(60, "the first four events", || checkpoint(&db, "faulty") == 4).await;
    daemon.stop();
    std::fs::write(&manifest, &fixed).unwrap();
    // Before the replay, verify with the fixed version tells why the states differ.
    let arg = config.display().to_string();
    let plugin_dir = dir.path().join("plugins/faulty").display().to_string();
    let verify = jetfold(["verify", &plugin_dir, "--config", &arg]);
    assert_eq!(verify.code, 1, "{}", verify.all());
    assert!(
        verify.stdout.contains("1 event the daemon rejected folds with this version (sequence 2)"),
        "{}",
        verify.all()
    );
    let daemon = DaemonProcess::start(&config, &log);
    let replay = jetfold(["dlq", "replay", "faulty", "--config", &arg]);
    assert_eq!(replay.code, 0, "{}", replay.all());
    daemon.wait(60, "the two copies", || checkpoint(&db, "faulty") == 6).await;
    let ok = || {
        let conn = rusqlite::Connection::open(&db).unwrap();
        let doc: String =
            conn.query_row("SELECT doc FROM faults WHERE key = 'a'", [], |r| r.get(0)).unwrap();
        serde_json::from_str::<serde_json::Value>(&doc).unwrap()["ok"].as_u64().unwrap()
    };
    assert_eq!(ok(), 3);
    let mut sink = jetfold_host::sink::sqlite::SqliteSink::open(&db).unwrap();
    let snapshot_seq = sink.checkpoint("faulty").unwrap().unwrap().snapshot_seq;
    drop(sink);
    assert_eq!(snapshot_seq, 4, "the copies are folded after the last snapshot");
    daemon.signal("KILL");
    drop(daemon);

    let daemon = DaemonProcess::start(&config, &log);
    js.publish("test.fault.a.Ok", "{}".into()).await.unwrap().await.unwrap();
    daemon.wait(60, "the next event", || checkpoint(&db, "faulty") == 7).await;
    assert_eq!(ok(), 4, "the copy folded again before the next event counted");
    let log_text = daemon.log();
    assert!(log_text.contains("folding the events since the last snapshot again"), "{log_text}");
    daemon.stop();
    let letters = jetfold_host::dlq::list(
        &js,
        &jetfold_host::config::Config::load(&config).unwrap().dead_letter,
        "faulty",
    )
    .await
    .unwrap();
    assert_eq!(
        letters.iter().map(|l| (l.source_seq, l.copy_of)).collect::<Vec<_>>(),
        vec![(6, Some(3))]
    );
}

/// Killed after rejecting an event, and started again with the fix: the events since the last
/// snapshot are folded again by the fixed version, which folds the rejected one where it is
/// (its rows, and those of the later events of its key, follow with the next commit); its
/// copy, replayed after, is passed by (the rejection record says the event folded itself), so
/// the event counts once, in the states and the read model.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fix_deployed_across_a_crash_folds_the_event_once_with_its_copy() {
    use crate::support::{DaemonProcess, checkpoint};
    let (nats, js, dir, manifest, fixed) = limited_faulty().await;
    let config = snapshotting_config(dir.path(), &nats);
    let (db, log) = (dir.path().join("jetfold.db"), dir.path().join("run.log"));
    let daemon = DaemonProcess::start(&config, &log);
    js.publish("test.fault.a.Ok", "{}".into()).await.unwrap().await.unwrap();
    daemon.wait(60, "the first event", || checkpoint(&db, "faulty") == 1).await;
    let big = serde_json::json!({ "pad": "x".repeat(2_000) }).to_string();
    js.publish("test.fault.a.Ok", big.into()).await.unwrap().await.unwrap();
    js.publish("test.fault.a.Ok", "{}".into()).await.unwrap().await.unwrap();
    daemon.wait(60, "the large event's rejection", || checkpoint(&db, "faulty") == 3).await;
    assert_eq!(folded(&db).0["ok"], 2);
    daemon.signal("KILL");
    drop(daemon);

    std::fs::write(&manifest, &fixed).unwrap();
    let daemon = DaemonProcess::start(&config, &log);
    // Folded again with the fix, the large event counts in the read model at once, with a
    // snapshot of the states that counted it.
    let snapshot = || {
        let mut sink = jetfold_host::sink::sqlite::SqliteSink::open(&db).unwrap();
        sink.checkpoint("faulty").unwrap().map(|c| c.snapshot_seq)
    };
    daemon.wait(60, "a snapshot after catching up", || snapshot() == Some(3)).await;
    assert_eq!(folded(&db).0["ok"], 3);
    let arg = config.display().to_string();
    let replay = jetfold(["dlq", "replay", "faulty", "--config", &arg]);
    assert_eq!(replay.code, 0, "{}", replay.all());
    daemon.wait(60, "the copy", || checkpoint(&db, "faulty") == 4).await;
    // The row follows the state folded after the crash, the event after the large one
    // included, before any snapshot is written.
    assert_eq!(folded(&db).0["ok"], 3, "the read model counts the large event once");
    assert_eq!(daemon.stop(), Some(0));
    let (doc, rejected) = folded(&db);
    assert_eq!(doc["ok"], 3, "the large event counts once");
    assert_eq!(rejected, vec![(2, Some(2))], "it folded itself, after the crash");
    let plugin_dir = dir.path().join("plugins/faulty").display().to_string();
    let verify = jetfold(["verify", &plugin_dir, "--config", &arg]);
    assert_eq!(verify.code, 0, "{}", verify.all());
}
