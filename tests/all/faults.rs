//! Guests that fail: errors, panics, loops, memory bombs, undeclared effects.

use std::path::Path;

use crate::support::{jetfold, plugin};

#[test]
fn every_failure_is_reported_per_event_and_the_fold_goes_on() {
    let dir = plugin("faulty");
    let run = jetfold([Path::new("test"), &dir, Path::new("--format"), Path::new("json")]);
    assert_eq!(run.code, 1, "{}", run.all());
    let report: serde_json::Value = serde_json::from_str(&run.stdout).unwrap();
    let steps = report["steps"].as_array().unwrap();
    let outcome =
        |i: usize| (steps[i]["type"].as_str().unwrap().to_string(), steps[i]["error"].clone());
    let kinds: Vec<(String, String)> = (0..steps.len())
        .map(|i| (outcome(i).0, outcome(i).1["kind"].as_str().unwrap_or("ok").to_string()))
        .collect();
    let expected = [
        ("Ok", "ok"),
        ("Fail", "error"),
        ("Panic", "trap"),
        ("Ok", "ok"),
        ("Loop", "fuel"),
        ("Ok", "ok"),
        ("Bomb", "memory"),
        ("Sneak", "rejected-effect"),
        ("Ok", "ok"),
        ("Hoard", "state-too-large"),
        ("Flood", "too-many-effects"),
        ("Ok", "ok"),
    ];
    let expected: Vec<(String, String)> =
        expected.iter().map(|(a, b)| (a.to_string(), b.to_string())).collect();
    assert_eq!(kinds, expected);
    assert_eq!(steps[1]["error"]["code"], "rejected");
    assert!(steps[2]["error"]["message"].as_str().unwrap().contains("panicked"));
    assert!(steps[7]["error"]["message"].as_str().unwrap().contains("table `secrets`"));
    // Failed events leave the state alone; the instance recovers after each trap.
    assert!(steps[9]["error"]["message"].as_str().unwrap().contains("max-state-bytes"));
    assert!(steps[10]["error"]["message"].as_str().unwrap().contains("10000 effects"));
    assert_eq!(report["state"]["a"]["ok"], 5);
}

#[test]
fn a_panic_is_shown_with_the_guest_stack() {
    let dir = plugin("faulty");
    let run = jetfold([Path::new("test"), &dir]);
    assert!(run.stdout.contains("#3 Panic [a] ✗ trap: apply trapped"), "{}", run.all());
    // The plugin's own frames, first, named as in its source: no hashes, no code offsets
    // (they change with every build), the runtime's and the SDK's frames left out.
    let stack: Vec<&str> = run
        .stdout
        .lines()
        .skip_while(|l| !l.contains("guest stack, innermost first ("))
        .skip(1)
        .take_while(|l| l.starts_with("        "))
        .map(str::trim)
        .collect();
    assert!(
        stack.first().is_some_and(|f| f.starts_with("<faulty::Seen as jetfold_guest::Projection<")),
        "{}",
        run.all()
    );
    for frame in &stack {
        let hash = |part: &str| {
            part.len() == 17
                && part.starts_with('h')
                && part[1..].chars().all(|c| c.is_ascii_hexdigit())
        };
        assert!(!frame.contains("0x") && !frame.split("::").any(hash), "{frame}: {}", run.all());
        assert!(!frame.starts_with("core::") && !frame.starts_with("std::"), "{}", run.all());
    }
    assert!(
        run.stdout.contains("#5 Loop [a] ✗ fuel: apply ran out of fuel after 20000000 units"),
        "{}",
        run.all()
    );
    assert!(
        run.stdout.contains("#7 Bomb [a] ✗ memory: apply exceeded the memory cap of 16 MiB"),
        "{}",
        run.all()
    );
    assert!(run.stderr.contains("7 steps failed"), "{}", run.all());
}

#[test]
fn a_guest_rejecting_its_configuration_stops_the_run() {
    let tmp = crate::support::plugin_copy("person-archive");
    let manifest = tmp.path().join("plugin.toml");
    let text = std::fs::read_to_string(&manifest)
        .unwrap()
        .replace("inactive-days = 365", "inactive-days = 0");
    std::fs::write(&manifest, text).unwrap();
    let run = jetfold([Path::new("test"), tmp.path()]);
    assert_eq!(run.code, 2, "{}", run.all());
    assert!(run.stderr.contains("plugin `person-archive`"), "{}", run.all());
    assert!(
        run.stderr.contains("invalid-config: inactive-days must be at least 1"),
        "{}",
        run.all()
    );
}

/// A daemon running the misbehaving plugin beside a well-behaved one on the same events:
/// every hostile event ends on the dead-letter subject with its reason, the well-behaved
/// plugin folds everything, the daemon stays up; after a restart nothing is dead-lettered
/// twice; `jetfold dlq list` shows them and `jetfold dlq replay` publishes them again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_events_go_to_the_dead_letter_subject_and_nothing_else_stops() {
    use futures::StreamExt as _;
    plugin("faulty");
    plugin("event-counter");
    let nats = crate::support::NatsServer::start();
    let js = nats.jetstream().await;
    crate::support::create_stream(&js, "TEST", &["test.>"]).await;
    // The faulty fixture's events, with JSON payloads the event counter reads too, and a
    // payload over faulty's max-payload-bytes (rejected before the plugin sees it).
    let types =
        ["Ok", "Fail", "Panic", "Ok", "Loop", "Ok", "Bomb", "Sneak", "Ok", "Hoard", "Flood", "Ok"];
    let big = serde_json::json!({ "pad": "x".repeat(4_000) }).to_string();
    for (i, ty) in types.iter().enumerate() {
        let payload = if i == types.len() - 1 { big.clone() } else { "{}".to_string() };
        js.publish(format!("test.fault.a.{ty}"), payload.into()).await.unwrap().await.unwrap();
    }
    let total = js.get_stream("TEST").await.unwrap().get_info().await.unwrap().state.last_sequence;

    let dir = crate::support::daemon_dir(&["faulty", "event-counter"]);
    let manifest = dir.path().join("plugins/faulty/plugin.toml");
    let text = std::fs::read_to_string(&manifest).unwrap();
    std::fs::write(&manifest, text.replace("[limits]", "[limits]\nmax-payload-bytes = 1024"))
        .unwrap();
    let config_file = dir.path().join("jetfold.toml");
    let text = format!(
        "plugin-dir = \"plugins\"\nfetch-wait-ms = 50\ncache-dir = \"{}\"\n[nats]\nurl = \"{}\"\n[sink]\nsqlite = \"jetfold.db\"\n\
         [plugins.faulty]\nstream = \"TEST\"\nsubjects = [\"test.>\"]\n[plugins.event-counter]\nstream = \"TEST\"\nsubjects = [\"test.>\"]\n",
        crate::support::cache_dir().display(),
        nats.url()
    );
    std::fs::write(&config_file, text).unwrap();
    let config = || jetfold_host::config::Config::load(&config_file).unwrap();
    let daemon = jetfold_host::daemon::Daemon::start(config()).await.unwrap();
    for name in ["faulty", "event-counter"] {
        let mut p = daemon.progress(name).unwrap();
        p.wait_for(|p| p.committed_seq == total).await.unwrap();
    }
    let failing = ["Fail", "Panic", "Loop", "Bomb", "Sneak", "Hoard", "Flood", "Ok"];
    let dlq = || async {
        let stream = js.get_stream("JETFOLD_DLQ").await.unwrap();
        stream.clone().get_info().await.unwrap().state.messages
    };
    let listed = jetfold_host::dlq::list(&js, &config().dead_letter, "faulty").await.unwrap();
    let others =
        jetfold_host::dlq::list(&js, &config().dead_letter, "event-counter").await.unwrap();
    assert!(others.is_empty(), "{others:?}");
    assert_eq!(dlq().await, failing.len() as u64, "{listed:?}");
    daemon.stop().await.unwrap();

    // The well-behaved plugin counted every event.
    let db = dir.path().join("jetfold.db");
    let mut sink = jetfold_host::sink::sqlite::SqliteSink::open(&db).unwrap();
    let counted: serde_json::Value =
        serde_json::from_str(&sink.rows("event_counts").unwrap()[0].1).unwrap();
    assert_eq!(counted["events"], total);

    // Each dead letter: its payload and headers as published, and why.
    let consumer = js
        .get_stream("JETFOLD_DLQ")
        .await
        .unwrap()
        .create_consumer(async_nats::jetstream::consumer::pull::OrderedConfig::default())
        .await
        .unwrap();
    let letters: Vec<_> = consumer.messages().await.unwrap().take(failing.len()).collect().await;
    let kinds: Vec<(String, String)> = letters
        .iter()
        .map(|m| {
            let m = m.as_ref().unwrap();
            let h = m.headers.as_ref().unwrap();
            assert_eq!(m.subject.as_str(), "jetfold.dlq.faulty");
            assert_eq!(h.get("Jetfold-Plugin").unwrap().as_str(), "faulty");
            assert!(h.get("Jetfold-Dlq-Reason").is_some_and(|r| !r.as_str().is_empty()));
            assert!(h.get("Jetfold-Source-Seq").is_some());
            let subject = h.get("Jetfold-Source-Subject").unwrap().as_str().to_string();
            let kind = h.get("Jetfold-Dlq-Kind").unwrap().as_str().to_string();
            (subject.rsplit('.').next().unwrap().to_string(), kind)
        })
        .collect();
    let expected: Vec<(String, String)> = [
        ("Fail", "error"),
        ("Panic", "trap"),
        ("Loop", "fuel"),
        ("Bomb", "memory"),
        ("Sneak", "rejected-effect"),
        ("Hoard", "state-too-large"),
        ("Flood", "too-many-effects"),
        ("Ok", "payload-too-large"),
    ]
    .iter()
    .map(|(a, b)| (a.to_string(), b.to_string()))
    .collect();
    assert_eq!(kinds, expected);
    let big = letters.last().unwrap().as_ref().unwrap();
    assert_eq!(big.payload.len(), 4_010, "the payload is kept as it came");

    // A restart re-reads nothing and dead-letters nothing twice.
    let daemon = jetfold_host::daemon::Daemon::start(config()).await.unwrap();
    daemon.stop().await.unwrap();
    assert_eq!(dlq().await, failing.len() as u64);

    // The CLI lists them, and replays them to their subjects.
    let config_arg = config_file.display().to_string();
    let list = jetfold(["dlq", "list", "faulty", "--config", &config_arg]);
    assert_eq!(list.code, 0, "{}", list.all());
    assert!(list.stdout.contains("8 dead letters of faulty"), "{}", list.all());
    assert!(list.stdout.contains("test.fault.a.Loop"), "{}", list.all());
    let replay = jetfold(["dlq", "replay", "faulty", "--config", &config_arg]);
    assert_eq!(replay.code, 0, "{}", replay.all());
    assert!(replay.stdout.contains("replayed 8 dead letters"), "{}", replay.all());
    assert_eq!(dlq().await, 0);
    let after = js.get_stream("TEST").await.unwrap().get_info().await.unwrap().state.last_sequence;
    assert_eq!(after, total + 8, "each dead letter is an event again");
}

/// The circuit breaker: after `max-consecutive-failures` malfunctions in a row, the plugin
/// stops (nothing after the last failure is folded or acked) and is listed with the reason;
/// a reload starts it again from its checkpoint and it folds the rest.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_plugin_failing_again_and_again_is_stopped_until_resumed() {
    plugin("faulty");
    let nats = crate::support::NatsServer::start();
    let js = nats.jetstream().await;
    crate::support::create_stream(&js, "TEST", &["test.>"]).await;
    for ty in ["Ok", "Panic", "Panic", "Panic", "Ok", "Ok"] {
        js.publish(format!("test.fault.a.{ty}"), "{}".into()).await.unwrap().await.unwrap();
    }
    let dir = crate::support::daemon_dir(&["faulty"]);
    // The breaker's threshold from the config's [limits] defaults (the manifest sets none).
    let config = faulty_on_test(dir.path(), &nats, "[limits]\nmax-consecutive-failures = 3\n");
    let mut daemon = jetfold_host::daemon::Daemon::start(config.clone()).await.unwrap();
    let mut progress = daemon.progress("faulty").unwrap();
    let tripped = progress.wait_for(|p| p.refused.is_some()).await.unwrap().clone();
    let reason = tripped.refused.unwrap().reason;
    assert!(
        reason.contains("circuit open: the plugin malfunctioned on 3 events in a row"),
        "{reason}"
    );
    // Its worker stops after committing up to the third failure, and the daemon lets it go.
    until_stopped(&mut daemon).await;
    let status = daemon.status().await;
    use jetfold_host::status::PluginState;
    assert_eq!(status.plugins[0].status, PluginState::Stopped, "{:?}", status.plugins);
    assert_eq!(status.plugins[0].kind, "projection", "a stopped plugin keeps its kind");
    assert_eq!(status.plugins[0].committed_seq, 4, "and its checkpoint");
    assert!(status.plugins[0].last_error.as_deref().unwrap().contains("circuit open"));
    let db = dir.path().join("jetfold.db");
    assert_eq!(crate::support::checkpoint(&db, "faulty"), 4);

    // Resumed (here by a reload, as SIGHUP or `plugin resume` do): it goes on from there.
    daemon.reload(config).await;
    let mut progress = daemon.progress("faulty").expect("started again");
    progress.wait_for(|p| p.committed_seq == 6).await.unwrap();
    daemon.stop().await.unwrap();
    let rows = jetfold_host::sink::sqlite::SqliteSink::open(&db).unwrap().rows("faults").unwrap();
    let seen: serde_json::Value = serde_json::from_str(&rows[0].1).unwrap();
    assert_eq!(seen["ok"], 3, "every Ok event folded once");
}

/// `[event-signing]`: a daemon that verifies folds only events signed by one of its keys
/// (`jetfold publish` signs them), dead-letters unsigned and tampered ones as
/// `bad-signature`, and signs the commands its policy emits.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_are_verified_in_and_signed_out() {
    use base64::Engine as _;
    use futures::StreamExt as _;
    plugin("person-archive");
    let nats = crate::support::NatsServer::start();
    let js = nats.jetstream().await;
    crate::support::create_stream(&js, "PEOPLE", &["people.person.>", "people.clock.>"]).await;
    crate::support::create_stream(&js, "COMMANDS", &["people.commands.>"]).await;
    let dir = crate::support::daemon_dir(&["person-archive"]);
    let secret = b"a shared secret of 32 bytes.....";
    let key = base64::engine::general_purpose::STANDARD.encode(secret);
    let config_file = dir.path().join("jetfold.toml");
    let text = format!(
        "plugin-dir = \"plugins\"\nfetch-wait-ms = 50\ncache-dir = \"{}\"\n[nats]\nurl = \"{}\"\n[sink]\nsqlite = \"jetfold.db\"\n\
         [event-signing]\nverify = true\nsign-key = \"k1\"\n[event-signing.keys]\nk1 = \"{key}\"\n",
        crate::support::cache_dir().display(),
        nats.url()
    );
    std::fs::write(&config_file, text).unwrap();
    let fixture = plugin("person-archive").join("fixtures/events.jsonl");
    let config_arg = config_file.display().to_string();
    let fixture_arg = fixture.display().to_string();
    let published =
        jetfold(["publish", &fixture_arg, "--stream", "PEOPLE", "--config", &config_arg]);
    assert_eq!(published.code, 0, "{}", published.all());
    // One unsigned event, one whose payload was changed after signing.
    js.publish("people.person.eve.PersonRegistered", "{}".into()).await.unwrap().await.unwrap();
    let mut tampered = jetfold_host::event::Event {
        sequence: 0,
        subject: "people.person.mallory.PersonRegistered".into(),
        message_id: "mallory-1".into(),
        event_type: "PersonRegistered".into(),
        aggregate_id: "mallory".into(),
        correlation_id: None,
        causation_id: None,
        time: chrono::DateTime::from_timestamp(1_767_225_600, 0).unwrap(),
        schema_version: 1,
        headers: vec![],
        payload: br#"{"name":"Mallory"}"#.to_vec(),
        content_type: jetfold_host::event::JSON.into(),
    };
    jetfold_host::integrity::sign_event(&mut tampered, "k1", secret);
    tampered.payload = br#"{"name":"Mallory the admin"}"#.to_vec();
    jetfold_host::nats::publish_event(&js, &tampered).await.unwrap().await.unwrap();
    let total =
        js.get_stream("PEOPLE").await.unwrap().get_info().await.unwrap().state.last_sequence;

    let config = jetfold_host::config::Config::load(&config_file).unwrap();
    let daemon = jetfold_host::daemon::Daemon::start(config.clone()).await.unwrap();
    let mut progress = daemon.progress("person-archive").unwrap();
    let p = progress.wait_for(|p| p.committed_seq == total).await.unwrap().clone();
    assert_eq!(p.rejected, 2, "only the unsigned and the tampered events are rejected");
    daemon.stop().await.unwrap();

    let letters =
        jetfold_host::dlq::list(&js, &config.dead_letter, "person-archive").await.unwrap();
    let kinds: Vec<(&str, &str)> =
        letters.iter().map(|l| (l.source_subject.as_str(), l.kind.as_str())).collect();
    assert_eq!(
        kinds,
        [
            ("people.person.eve.PersonRegistered", "bad-signature"),
            ("people.person.mallory.PersonRegistered", "bad-signature")
        ]
    );
    assert!(letters[0].reason.contains("not signed"), "{}", letters[0].reason);
    assert!(letters[1].reason.contains("does not match"), "{}", letters[1].reason);
    // Recorded with the key and type the message names, and why as a code; `dlq list` shows
    // them, the type read from the subject when there is no Event-Type header.
    let conn = rusqlite::Connection::open(dir.path().join("jetfold.db")).unwrap();
    let mut rows = conn
        .prepare("SELECT key, event_type, kind, code FROM jetfold_rejected WHERE plugin = 'person-archive' ORDER BY seq")
        .unwrap();
    let rows: Vec<(String, String, String, Option<String>)> = rows
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)))
        .unwrap()
        .map(Result::unwrap)
        .collect();
    // (person-archive keeps one global state.)
    let row = |code: &str| {
        let (key, ty) = ("_global".to_string(), "PersonRegistered".to_string());
        (key, ty, "bad-signature".to_string(), Some(code.to_string()))
    };
    assert_eq!(rows, [row("unsigned"), row("mismatch")]);
    let list = jetfold(["dlq", "list", "person-archive", "--config", &config_arg]);
    assert_eq!(list.code, 0, "{}", list.all());
    assert!(
        list.stdout.contains("people.person.eve.PersonRegistered PersonRegistered (bad-signature, unsigned): the event is not signed"),
        "{}",
        list.all()
    );
    assert!(list.stdout.contains("(bad-signature, mismatch)"), "{}", list.all());

    // The policy's commands are signed with k1.
    let keys = config.event_signing.decoded_keys().unwrap();
    let stream = js.get_stream("COMMANDS").await.unwrap();
    let n = stream.clone().get_info().await.unwrap().state.messages as usize;
    assert!(n > 0);
    let consumer = stream
        .create_consumer(async_nats::jetstream::consumer::pull::OrderedConfig::default())
        .await
        .unwrap();
    let commands: Vec<_> = consumer.messages().await.unwrap().take(n).collect().await;
    for command in commands {
        let command = command.unwrap();
        let h: Vec<(String, String)> = command
            .headers
            .as_ref()
            .unwrap()
            .iter()
            .map(|(k, v)| (k.to_string(), v[0].as_str().to_string()))
            .collect();
        let signature = h.iter().find(|(k, _)| k == "Jetfold-Signature").map(|(_, v)| v.as_str());
        let signed = jetfold_host::integrity::Signed::from_headers(
            command.subject.as_str(),
            &h,
            &command.payload,
        );
        assert_eq!(signed.verify(signature, &keys), Ok(()), "{}", command.subject);
    }
}

/// `on-error = "halt"`: the plugin stops before the event it fails on, which stays unacked
/// and uncommitted; after a fix (here: the manifest says `skip`) a reload folds it again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_halting_plugin_stops_before_the_event_and_folds_it_after_a_fix() {
    plugin("faulty");
    let nats = crate::support::NatsServer::start();
    let js = nats.jetstream().await;
    crate::support::create_stream(&js, "TEST", &["test.>"]).await;
    for ty in ["Ok", "Ok", "Fail", "Ok"] {
        js.publish(format!("test.fault.a.{ty}"), "{}".into()).await.unwrap().await.unwrap();
    }
    let dir = crate::support::daemon_dir(&["faulty"]);
    let manifest = dir.path().join("plugins/faulty/plugin.toml");
    let original = std::fs::read_to_string(&manifest).unwrap();
    let with = |mode: &str| {
        original.replace(
            "kind = \"projection\"",
            &format!("kind = \"projection\"\non-error = \"{mode}\""),
        )
    };
    std::fs::write(&manifest, with("halt")).unwrap();
    let config = faulty_on_test(dir.path(), &nats, "");
    let mut daemon = jetfold_host::daemon::Daemon::start(config.clone()).await.unwrap();
    let mut progress = daemon.progress("faulty").unwrap();
    let halted = progress.wait_for(|p| p.refused.is_some()).await.unwrap().clone();
    assert!(halted.refused.unwrap().reason.contains("halted at sequence 3"));
    until_stopped(&mut daemon).await;
    let db = dir.path().join("jetfold.db");
    assert_eq!(crate::support::checkpoint(&db, "faulty"), 2, "nothing of the failed event");
    let dlq = js.get_stream("JETFOLD_DLQ").await.unwrap().get_info().await.unwrap();
    assert_eq!(dlq.state.messages, 0, "a halt dead-letters nothing");

    // The fix: the same plugin, now skipping what it fails on. It starts from the
    // checkpoint, so the failed event is folded (and recorded) this time.
    std::fs::write(&manifest, with("skip")).unwrap();
    daemon.reload(config).await;
    let mut progress = daemon.progress("faulty").expect("started again");
    progress.wait_for(|p| p.committed_seq == 4).await.unwrap();
    daemon.stop().await.unwrap();
    let conn = rusqlite::Connection::open(&db).unwrap();
    let rejected: Vec<i64> = conn
        .prepare("SELECT seq FROM jetfold_rejected WHERE plugin = 'faulty'")
        .unwrap()
        .query_map([], |r| r.get(0))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    assert_eq!(rejected, [3]);
}

/// A daemon config running `faulty` on the stream `TEST` (`test.>`), with `extra` tables.
fn faulty_on_test(
    dir: &Path,
    nats: &crate::support::NatsServer,
    extra: &str,
) -> jetfold_host::config::Config {
    let text = format!(
        "plugin-dir = \"plugins\"\nfetch-wait-ms = 50\ncache-dir = \"{}\"\n[nats]\nurl = \"{}\"\n[sink]\nsqlite = \"jetfold.db\"\n\
         {extra}[plugins.faulty]\nstream = \"TEST\"\nsubjects = [\"test.>\"]\n",
        crate::support::cache_dir().display(),
        nats.url()
    );
    jetfold_host::config::Config::parse(&text, dir.to_path_buf(), |_| None).unwrap()
}

/// Waits until every plugin of `daemon` has stopped on its own and been let go.
async fn until_stopped(daemon: &mut jetfold_host::daemon::Daemon) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while !daemon.plugins().is_empty() {
        assert!(std::time::Instant::now() < deadline, "the plugin's worker did not stop");
        daemon.reap().await;
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
}

/// The circuit breaker judges malfunctions, not outcomes, with the settings a user gets: 300
/// business rejections in a row (a status set again: `invalid-transition`) leave
/// compute-resource folding, while 100 traps in a row (the default `max-consecutive-failures`)
/// stop faulty; with `max-consecutive-errors` a manifest asks to be stopped by its own errors.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_circuit_breaker_stops_malfunctions_and_not_business_rejections() {
    let nats = crate::support::NatsServer::start();
    let js = nats.jetstream().await;
    crate::support::create_stream(&js, "INFRA", &["infra.>"]).await;
    crate::support::create_stream(&js, "TEST", &["test.>"]).await;
    let mut acks = Vec::new();
    for round in ["ResourceRegistered", "Active", "Active"] {
        for r in 0..300 {
            let (ty, payload) = match round {
                "ResourceRegistered" => (round, r#"{"name":"vm","kind":"vm","region":"eu"}"#),
                _ => ("StatusChanged", r#"{"to":"Active"}"#),
            };
            let subject = format!("infra.resource.r-{r}.{ty}");
            acks.push(js.publish(subject, payload.into()).await.unwrap());
        }
    }
    for _ in 0..150 {
        acks.push(js.publish("test.fault.a.Panic", "{}".into()).await.unwrap());
    }
    for _ in 0..5 {
        acks.push(js.publish("test.fault.b.Fail", "{}".into()).await.unwrap());
    }
    for ack in acks {
        ack.await.unwrap();
    }
    let dir = crate::support::daemon_dir(&["compute-resource", "faulty"]);
    // A plugin whose manifest asks to be stopped by its own errors: faulty under another name,
    // with `max-consecutive-errors = 5`, on its Fail events.
    let strict = dir.path().join("plugins/strict");
    std::fs::create_dir(&strict).unwrap();
    std::fs::copy(dir.path().join("plugins/faulty/faulty.wasm"), strict.join("faulty.wasm"))
        .unwrap();
    let manifest = std::fs::read_to_string(dir.path().join("plugins/faulty/plugin.toml")).unwrap();
    let manifest = manifest
        .replace("name = \"faulty\"", "name = \"strict\"")
        .replace("[limits]", "[limits]\nmax-consecutive-errors = 5");
    std::fs::write(strict.join("plugin.toml"), manifest).unwrap();
    let config = dir.path().join("jetfold.toml");
    let text = format!(
        "plugin-dir = \"plugins\"\n[nats]\nurl = \"{}\"\n[sink]\nsqlite = \"jetfold.db\"\n[http]\nlisten = \"\"\n\
         [plugins.faulty]\nstream = \"TEST\"\nsubjects = [\"test.fault.a.>\"]\n\
         [plugins.strict]\nstream = \"TEST\"\nsubjects = [\"test.fault.b.>\"]\n",
        nats.url()
    );
    std::fs::write(&config, text).unwrap();
    let db = dir.path().join("jetfold.db");
    let daemon = crate::support::DaemonProcess::start(&config, &dir.path().join("daemon.log"));
    daemon
        .wait(120, "compute-resource past its 300 rejections", || {
            crate::support::checkpoint(&db, "compute-resource") == 900
        })
        .await;
    let stopped = |name: &str, what: &str| {
        daemon.lines().iter().any(|l| {
            l["fields"]["plugin"] == name
                && l["fields"]["message"].as_str().is_some_and(|m| m.contains(what))
        })
    };
    daemon.wait(60, "faulty's breaker", || stopped("faulty", "circuit open")).await;
    daemon.wait(60, "strict's breaker", || stopped("strict", "circuit open")).await;
    assert!(!stopped("compute-resource", "circuit open"), "business rejections tripped it");
    let conn = rusqlite::Connection::open(&db).unwrap();
    let count = |plugin: &str| -> i64 {
        conn.query_row("SELECT count(*) FROM jetfold_rejected WHERE plugin = ?1", [plugin], |r| {
            r.get(0)
        })
        .unwrap()
    };
    assert_eq!(count("compute-resource"), 300, "each repeated status rejected once");
    // Stopped at the 100th trap (the default), the 5th error: nothing after it committed.
    assert_eq!(crate::support::checkpoint(&db, "faulty"), 100);
    assert_eq!(crate::support::checkpoint(&db, "strict"), 155);
    assert_eq!(count("faulty"), 100);
    assert_eq!(count("strict"), 5);
    let reason = daemon
        .lines()
        .into_iter()
        .find(|l| {
            l["fields"]["plugin"] == "faulty"
                && l["fields"]["message"].as_str().is_some_and(|m| m.contains("circuit open"))
        })
        .unwrap();
    let reason = reason["fields"]["message"].as_str().unwrap().to_string();
    assert!(reason.contains("malfunctioned on 100 events in a row"), "{reason}");
    assert_eq!(daemon.stop(), Some(0));
}
