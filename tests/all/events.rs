//! `jetfold events export` / `import`: a stream to JSON Lines and into another server's
//! stream, every event the same on the other side.

use async_nats::jetstream;
use jetfold_host::{
    event::Event,
    nats::{reader::StreamReader, source::event_from_message},
};

use crate::support::{NatsServer, create_stream, jetfold};

fn config(dir: &std::path::Path, nats: &NatsServer, name: &str) -> String {
    let path = dir.join(name);
    std::fs::write(&path, format!("plugin-dir = \"plugins\"\n[nats]\nurl = \"{}\"\n", nats.url()))
        .unwrap();
    path.display().to_string()
}

/// Every message of `stream`: the event as the host reads it, and the raw payload.
async fn read_all(js: &jetstream::Context, stream: &str) -> Vec<(Event, Vec<u8>)> {
    let mut reader = StreamReader::open(js, stream, &[], None, None).await.unwrap();
    let mut out = Vec::new();
    while let Some(message) = reader.next().await {
        let message = message.unwrap();
        out.push((event_from_message(&message).unwrap(), message.payload.to_vec()));
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_exported_stream_imports_into_another_server_unchanged() {
    let (a, b) = (NatsServer::start(), NatsServer::start());
    let dir = tempfile::tempdir().unwrap();
    let (config_a, config_b) = (config(dir.path(), &a, "a.toml"), config(dir.path(), &b, "b.toml"));
    let js = a.jetstream().await;
    create_stream(&js, "SRC", &["infra.>", "other.>"]).await;

    // A fixture published the documented way, with headers of its own.
    let fixture = crate::support::plugin("compute-resource").join("fixtures/events.jsonl");
    let published = jetfold([
        "publish",
        &fixture.display().to_string(),
        "--stream",
        "SRC",
        "--config",
        &config_a,
    ]);
    assert_eq!(published.code, 0, "{}", published.all());
    // A bare message: no headers, JSON laid out its own way (the bytes must survive).
    let bare = "{ \"type\": \"Registered\",  \"time\": \"2026-05-01T10:00:00Z\" }";
    js.publish("infra.resource.r-9.Registered", bare.into()).await.unwrap().await.unwrap();
    // Headers of every kind, and a payload that is not JSON.
    let mut h = async_nats::HeaderMap::new();
    h.insert("Nats-Msg-Id", "binary-1");
    h.insert("Content-Type", "application/octet-stream");
    h.insert("Event-Time", "2026-05-01T12:00:00+02:00");
    h.insert("Correlation-Id", "corr-7");
    h.append("X-Trace", "one");
    h.append("X-Trace", "two");
    let binary: &[u8] = &[0, 159, 146, 150, 255, b'\n'];
    js.publish_with_headers("other.thing.t-1.Blob", h, binary.to_vec().into())
        .await
        .unwrap()
        .await
        .unwrap();
    let original = read_all(&js, "SRC").await;
    assert!(original.len() > 3);

    let exported = jetfold(["events", "export", "SRC", "--config", &config_a]);
    assert_eq!(exported.code, 0, "{}", exported.all());
    assert_eq!(exported.stdout.lines().count(), original.len(), "{}", exported.all());
    let file = dir.path().join("src.jsonl");
    std::fs::write(&file, &exported.stdout).unwrap();

    let file_arg = file.display().to_string();
    let imported =
        jetfold(["events", "import", &file_arg, "--stream", "DST", "--config", &config_b]);
    assert_eq!(imported.code, 0, "{}", imported.all());
    assert!(
        imported.stdout.contains(&format!("published {} events to DST", original.len())),
        "{}",
        imported.all()
    );
    let copied = read_all(&b.jetstream().await, "DST").await;
    assert_eq!(copied.len(), original.len());
    for ((before, before_bytes), (after, after_bytes)) in original.iter().zip(&copied) {
        assert_eq!(after_bytes, before_bytes, "payload bytes of {}", before.message_id);
        // The bare message had no id: on each side, the stream's name and its sequence.
        let mut after = after.clone();
        if after.message_id.starts_with("DST:") {
            after.message_id = after.message_id.replace("DST:", "SRC:");
        }
        assert_eq!(&after, before, "event {}", before.message_id);
    }
    assert_eq!(stored(&b.jetstream().await, "DST").await, stored(&js, "SRC").await);
    // The stream was created with the subjects the events have.
    let info =
        b.jetstream().await.get_stream("DST").await.unwrap().info().await.unwrap().config.clone();
    assert_eq!(info.subjects, vec!["infra.>".to_string(), "other.>".to_string()]);

    // Importing again stores nothing twice: the message ids were kept.
    let again = jetfold(["events", "import", &file_arg, "--stream", "DST", "--config", &config_b]);
    assert!(
        again.stdout.contains(&format!("all {} events were already in DST", original.len())),
        "{}",
        again.all()
    );

    // A subject filter exports only those events, in order.
    let only = jetfold(["events", "export", "SRC", "--subject", "other.>", "--config", &config_a]);
    assert_eq!(only.code, 0, "{}", only.all());
    assert_eq!(only.stdout.lines().count(), 1, "{}", only.all());
    assert!(only.stdout.contains("\"message_id\":\"binary-1\""), "{}", only.all());
    // An export of a stream that does not exist says so.
    let missing = jetfold(["events", "export", "NOPE", "--config", &config_a]);
    assert_eq!(missing.code, 2, "{}", missing.all());
    assert!(missing.stderr.contains("no stream `NOPE`"), "{}", missing.all());

    // A reader that closes the pipe (`| head`) ends the export quietly: far more events than
    // a pipe holds, so jetfold is still writing when `head` exits.
    create_stream(&js, "BIG", &["big.>"]).await;
    let pad = "x".repeat(1_000);
    for i in 0..400 {
        let payload = format!("{{\"pad\":\"{pad}\"}}");
        js.publish(format!("big.r.r-{i}.Padded"), payload.into()).await.unwrap().await.unwrap();
    }
    let command = format!(
        "{} events export BIG --config {config_a} | head -1 > /dev/null",
        env!("CARGO_BIN_EXE_jetfold")
    );
    let run = std::process::Command::new("bash")
        .args(["-o", "pipefail", "-c", &command])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&run.stderr);
    assert_eq!(run.status.code(), Some(0), "{stderr}");
    assert!(!stderr.contains("error"), "{stderr}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn what_cannot_be_published_or_read_is_refused_with_the_reason() {
    let nats = NatsServer::start();
    let dir = tempfile::tempdir().unwrap();
    let config = config(dir.path(), &nats, "a.toml");
    let js = nats.jetstream().await;
    create_stream(&js, "INFRA", &["infra.>"]).await;
    let fixture = crate::support::plugin("compute-resource").join("fixtures/events.jsonl");
    let fixture = fixture.display().to_string();

    // A stream whose subjects overlap an existing one's cannot be created.
    let overlap = jetfold([
        "publish",
        &fixture,
        "--stream",
        "OTHER",
        "--subject",
        "infra.resource.>",
        "--config",
        &config,
    ]);
    assert_eq!(overlap.code, 2, "{}", overlap.all());
    assert!(overlap.stderr.contains("cannot open or create stream `OTHER`"), "{}", overlap.all());
    assert!(overlap.stderr.contains("overlap"), "{}", overlap.all());

    // A header NATS cannot carry: refused naming the event, nothing published.
    let bad = dir.path().join("bad.jsonl");
    std::fs::write(
        &bad,
        "{\"subject\":\"infra.resource.r-1.X\",\"time\":\"2026-01-01T00:00:00Z\",\"message_id\":\"m-1\",\"headers\":[[\"bad:name\",\"v\"]]}\n",
    )
    .unwrap();
    let bad = bad.display().to_string();
    let refused = jetfold(["events", "import", &bad, "--stream", "INFRA", "--config", &config]);
    assert_eq!(refused.code, 2, "{}", refused.all());
    assert!(
        refused.stderr.contains("event \"m-1\": \"bad:name\" is not a valid header name"),
        "{}",
        refused.all()
    );
    let stored = js.get_stream("INFRA").await.unwrap().info().await.unwrap().state.messages;
    assert_eq!(stored, 0);

    // Dead letters of a server that has no dead-letter stream.
    let dlq = jetfold(["dlq", "list", "compute-resource", "--config", &config]);
    assert_eq!(dlq.code, 2, "{}", dlq.all());
    assert!(dlq.stderr.contains("no dead-letter stream `JETFOLD_DLQ`"), "{}", dlq.all());

    // A query no daemon answers says so once.
    let state = jetfold(["state", "compute-resource", "--config", &config]);
    assert_eq!(state.code, 2, "{}", state.all());
    assert!(
        state.stderr.contains(
            "daemon `jetfold` does not serve plugin `compute-resource` (nothing listens on jetfold.query.jetfold.compute-resource)"
        ),
        "{}",
        state.all()
    );
    assert!(!state.stderr.contains("no responders: no responders"), "{}", state.all());

    // A policy answers no queries, and the plugin directory says which kind it is.
    let policy = dir.path().join("plugins/person-archive");
    std::fs::create_dir_all(&policy).unwrap();
    let manifest = crate::support::root().join("plugins/person-archive/plugin.toml");
    std::fs::copy(manifest, policy.join("plugin.toml")).unwrap();
    let state = jetfold(["state", "person-archive", "--config", &config]);
    assert_eq!(state.code, 2, "{}", state.all());
    assert!(
        state
            .stderr
            .contains("plugin `person-archive` is a policy: only projections answer queries"),
        "{}",
        state.all()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_whose_headers_do_not_decode_is_exported_as_it_is_not_dropped() {
    let (a, b) = (NatsServer::start(), NatsServer::start());
    let dir = tempfile::tempdir().unwrap();
    let (config_a, config_b) = (config(dir.path(), &a, "a.toml"), config(dir.path(), &b, "b.toml"));
    let js = a.jetstream().await;
    create_stream(&js, "SRC", &["infra.>"]).await;
    let mut h = async_nats::HeaderMap::new();
    h.insert("Schema-Version", "abc");
    h.insert("X-Trace", "t-1");
    js.publish_with_headers("infra.resource.r-1.Registered", h, "{\"name\":\"x\"}".into())
        .await
        .unwrap()
        .await
        .unwrap();

    let exported = jetfold(["events", "export", "SRC", "--config", &config_a]);
    assert_eq!(exported.code, 0, "{}", exported.all());
    assert_eq!(exported.stdout.lines().count(), 1, "{}", exported.all());
    assert!(exported.stderr.contains("1 of them have unreadable"), "{}", exported.all());
    let record: serde_json::Value = serde_json::from_str(exported.stdout.trim()).unwrap();
    let headers = record["stored_headers"].as_array().unwrap();
    assert!(headers.contains(&serde_json::json!(["Schema-Version", "abc"])), "{record}");
    assert!(headers.contains(&serde_json::json!(["X-Trace", "t-1"])), "{record}");

    let file = dir.path().join("src.jsonl");
    std::fs::write(&file, &exported.stdout).unwrap();
    let file = file.display().to_string();
    let imported = jetfold(["events", "import", &file, "--stream", "DST", "--config", &config_b]);
    assert_eq!(imported.code, 0, "{}", imported.all());
    // Stored as it was, the header that does not decode included.
    let copied = stored(&b.jetstream().await, "DST").await;
    assert_eq!(copied.len(), 1);
    assert_eq!(copied[0].2, b"{\"name\":\"x\"}", "the payload's bytes");
    assert_eq!(copied, stored(&js, "SRC").await);
}

/// Every message of `stream` as stored: subject, headers (sorted: NATS clients keep no order
/// between names), payload bytes.
async fn stored(
    js: &jetstream::Context,
    stream: &str,
) -> Vec<(String, Vec<(String, String)>, Vec<u8>)> {
    let mut reader = StreamReader::open(js, stream, &[], None, None).await.unwrap();
    let mut out = Vec::new();
    while let Some(message) = reader.next().await {
        let message = message.unwrap();
        let mut headers = jetfold_host::nats::source::all_headers(&message);
        headers.sort();
        out.push((message.subject.to_string(), headers, message.payload.to_vec()));
    }
    out
}

/// Publishes `payload` on `subject` with `headers` as given, signed by `k1` over exactly
/// those headers (as a publisher of its own would sign them).
async fn publish_signed(
    js: &jetstream::Context,
    subject: &str,
    headers: &[(&str, &str)],
    payload: &[u8],
    secret: &[u8],
) {
    let mut all: Vec<(String, String)> =
        headers.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
    let signature =
        jetfold_host::integrity::Signed::from_headers(subject, &all, payload).sign("k1", secret);
    all.push((jetfold_host::integrity::SIGNATURE.into(), signature));
    let map =
        jetfold_host::nats::header_map(all.iter().map(|(k, v)| (k.as_str(), v.as_str()))).unwrap();
    js.publish_with_headers(subject.to_string(), map, payload.to_vec().into())
        .await
        .unwrap()
        .await
        .unwrap();
}

/// Export, then import into another server: every message stored there byte for byte as at
/// the source (headers as they were, none added, `Event-Time` strings untouched), and the
/// signatures still hold for a plugin that verifies them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_import_stores_every_message_as_it_was_exported_and_signatures_still_hold() {
    use base64::Engine as _;
    let (a, b) = (NatsServer::start(), NatsServer::start());
    let dir = tempfile::tempdir().unwrap();
    let secret = b"a shared secret of 32 bytes.....";
    let signing = format!(
        "[event-signing]\nverify = true\n[event-signing.keys]\nk1 = \"{}\"\n",
        base64::engine::general_purpose::STANDARD.encode(secret)
    );
    let config_a = config(dir.path(), &a, "a.toml");
    let config_b = dir.path().join("b.toml");
    std::fs::write(
        &config_b,
        format!(
            "plugin-dir = \"plugins\"\ncache-dir = \"{}\"\n[nats]\nurl = \"{}\"\n{signing}",
            crate::support::cache_dir().display(),
            b.url()
        ),
    )
    .unwrap();
    let config_b = config_b.display().to_string();
    let js = a.jetstream().await;
    create_stream(&js, "INFRA", &["infra.>"]).await;
    let s = "infra.resource";
    // An offset kept as written, a `Z`, nanoseconds, no Event-Time at all, no message id.
    publish_signed(
        &js,
        &format!("{s}.r-1.Registered"),
        &[("Nats-Msg-Id", "e-1"), ("Event-Time", "2026-03-01T12:00:00.123456789+02:00")],
        b"{\"name\":\"one\"}",
        secret,
    )
    .await;
    publish_signed(
        &js,
        &format!("{s}.r-1.Renamed"),
        &[
            ("Nats-Msg-Id", "e-2"),
            ("Event-Time", "2026-03-01T10:00:01Z"),
            ("Event-Type", "Renamed"),
        ],
        b"{\"name\":\"two\"}",
        secret,
    )
    .await;
    publish_signed(&js, &format!("{s}.r-2.Registered"), &[("Nats-Msg-Id", "e-3")], b"{}", secret)
        .await;
    publish_signed(
        &js,
        &format!("{s}.r-3.Registered"),
        &[("Event-Time", "2026-03-01T10:00:03.5-05:30"), ("x-lower-case", "kept")],
        b"{ \"name\" : \"spaced\" }",
        secret,
    )
    .await;
    let original = stored(&js, "INFRA").await;
    assert_eq!(original.len(), 4);

    let exported = jetfold(["events", "export", "INFRA", "--config", &config_a]);
    assert_eq!(exported.code, 0, "{}", exported.all());
    let file = dir.path().join("infra.jsonl");
    std::fs::write(&file, &exported.stdout).unwrap();
    let file = file.display().to_string();
    let imported = jetfold(["events", "import", &file, "--stream", "INFRA", "--config", &config_b]);
    assert_eq!(imported.code, 0, "{}", imported.all());

    let copied = stored(&b.jetstream().await, "INFRA").await;
    assert_eq!(copied, original, "the far side stores what the near side did");

    // A plugin folding the far side with `verify = true` accepts every one of them.
    let counter = crate::support::plugin("event-counter").display().to_string();
    let replay = jetfold(["replay", &counter, "--config", &config_b]);
    assert_eq!(replay.code, 0, "{}", replay.all());
    let summary: serde_json::Value = serde_json::from_str(&replay.stdout).unwrap();
    assert_eq!(summary["events"], 4, "{summary}");
    assert_eq!(summary["rejected"], 0, "every signature holds: {summary}");
}

/// A payload's numbers, of any size or precision, go out and come back as written.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn numbers_of_any_size_survive_export_and_import() {
    let (a, b) = (NatsServer::start(), NatsServer::start());
    let dir = tempfile::tempdir().unwrap();
    let (config_a, config_b) = (config(dir.path(), &a, "a.toml"), config(dir.path(), &b, "b.toml"));
    let js = a.jetstream().await;
    create_stream(&js, "INFRA", &["infra.>"]).await;
    let payload =
        "{\"a\":1.0000000000000001, \"b\": 1e400, \"c\": -123456789012345678901234567890}";
    js.publish("infra.resource.r-1.Measured", payload.into()).await.unwrap().await.unwrap();

    let exported = jetfold(["events", "export", "INFRA", "--config", &config_a]);
    assert_eq!(exported.code, 0, "{}", exported.all());
    assert!(exported.stdout.contains(payload), "inline, as written: {}", exported.all());
    let file = dir.path().join("infra.jsonl");
    std::fs::write(&file, &exported.stdout).unwrap();
    let file = file.display().to_string();
    let imported = jetfold(["events", "import", &file, "--stream", "INFRA", "--config", &config_b]);
    assert_eq!(imported.code, 0, "{}", imported.all());
    let copied = stored(&b.jetstream().await, "INFRA").await;
    assert_eq!(copied.len(), 1);
    assert_eq!(copied[0].2, payload.as_bytes());
    assert_eq!(copied, stored(&js, "INFRA").await);
}

/// Importing a file again, or publishing a fixture again, long after JetStream's duplicate
/// window has passed, stores nothing twice; messages without a message id included.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_repeated_import_or_publish_stores_nothing_twice_beyond_the_duplicate_window() {
    let (a, b) = (NatsServer::start(), NatsServer::start());
    let dir = tempfile::tempdir().unwrap();
    let (config_a, config_b) = (config(dir.path(), &a, "a.toml"), config(dir.path(), &b, "b.toml"));
    let js = a.jetstream().await;
    create_stream(&js, "INFRA", &["infra.>"]).await;
    let fixture = crate::support::plugin("compute-resource").join("fixtures/events.jsonl");
    let fixture = fixture.display().to_string();
    let published = jetfold(["publish", &fixture, "--stream", "INFRA", "--config", &config_a]);
    assert_eq!(published.code, 0, "{}", published.all());
    // Two messages alike without a message id: two events, both copied, once each.
    for _ in 0..2 {
        js.publish("infra.resource.r-9.Pinged", "{}".into()).await.unwrap().await.unwrap();
    }
    let total = stored(&js, "INFRA").await.len();

    let exported = jetfold(["events", "export", "INFRA", "--config", &config_a]);
    assert_eq!(exported.code, 0, "{}", exported.all());
    let file = dir.path().join("infra.jsonl");
    std::fs::write(&file, &exported.stdout).unwrap();
    let file = file.display().to_string();
    // The far side's stream forgets message ids after 100 ms.
    let far = b.jetstream().await;
    far.create_stream(jetstream::stream::Config {
        name: "COPY".into(),
        subjects: vec!["infra.>".into()],
        duplicate_window: std::time::Duration::from_millis(100),
        ..Default::default()
    })
    .await
    .unwrap();
    let import = || jetfold(["events", "import", &file, "--stream", "COPY", "--config", &config_b]);
    let first = import();
    assert_eq!(first.code, 0, "{}", first.all());
    assert!(first.stdout.contains(&format!("published {total} events to COPY")), "{}", first.all());
    // Waiting out the duplicate window is the point here.
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    let again = import();
    assert_eq!(again.code, 0, "{}", again.all());
    assert!(
        again.stdout.contains(&format!("all {total} events were already in COPY")),
        "{}",
        again.all()
    );
    assert_eq!(stored(&far, "COPY").await.len(), total);

    // `publish` of the same fixture again, past the window too.
    far.create_stream(jetstream::stream::Config {
        name: "FIXTURE".into(),
        subjects: vec!["other.>".into()],
        duplicate_window: std::time::Duration::from_millis(100),
        ..Default::default()
    })
    .await
    .unwrap();
    let events = dir.path().join("other.jsonl");
    // Times as the file writes them, offsets included.
    let times =
        ["2026-01-01T00:00:01Z", "2026-01-01T02:00:02+02:00", "2026-01-01T00:00:03.5-00:30"];
    std::fs::write(
        &events,
        times
            .iter()
            .enumerate()
            .map(|(i, t)| format!("{{\"subject\":\"other.thing.t-{i}.Made\",\"time\":\"{t}\"}}\n"))
            .collect::<String>(),
    )
    .unwrap();
    let events = events.display().to_string();
    let publish = || jetfold(["publish", &events, "--stream", "FIXTURE", "--config", &config_b]);
    assert_eq!(publish().code, 0);
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    let twice = publish();
    assert_eq!(twice.code, 0, "{}", twice.all());
    assert!(twice.stdout.contains("all 3 events were already in FIXTURE"), "{}", twice.all());
    let fixture = stored(&far, "FIXTURE").await;
    assert_eq!(fixture.len(), 3);
    for ((_, headers, _), time) in fixture.iter().zip(times) {
        let stored = headers.iter().find(|(k, _)| k == "Event-Time").map(|(_, v)| v.as_str());
        assert_eq!(stored, Some(time), "{headers:?}");
    }
}

/// `--stream` names where the events go: events the stream does not capture are refused
/// before anything is published, even when another stream would take them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_import_into_a_stream_that_does_not_capture_its_subjects_publishes_nothing() {
    let nats = NatsServer::start();
    let dir = tempfile::tempdir().unwrap();
    let config = config(dir.path(), &nats, "a.toml");
    let js = nats.jetstream().await;
    create_stream(&js, "INFRA", &["infra.>"]).await;
    create_stream(&js, "SIG", &["sig.>"]).await;
    let file = dir.path().join("mixed.jsonl");
    std::fs::write(
        &file,
        "{\"subject\":\"infra.resource.r-1.Made\",\"time\":\"2026-01-01T00:00:00Z\"}\n\
         {\"subject\":\"sig.key.k-1.Made\",\"time\":\"2026-01-01T00:00:01Z\"}\n",
    )
    .unwrap();
    let file = file.display().to_string();
    let refused = jetfold(["events", "import", &file, "--stream", "INFRA", "--config", &config]);
    assert_eq!(refused.code, 2, "{}", refused.all());
    assert!(
        refused.stderr.contains(
            "stream `INFRA` does not capture 1 of the file's subjects (sig.key.k-1.Made; it holds infra.>): nothing was published"
        ),
        "{}",
        refused.all()
    );
    for stream in ["INFRA", "SIG"] {
        assert_eq!(stored(&js, stream).await.len(), 0, "{stream}");
    }
    // Nor is a stream created with --subject that would not hold them.
    let created = jetfold([
        "events",
        "import",
        &file,
        "--stream",
        "NEW",
        "--subject",
        "infra.>",
        "--config",
        &config,
    ]);
    assert_eq!(created.code, 2, "{}", created.all());
    assert!(created.stderr.contains("stream `NEW` does not capture 1"), "{}", created.all());
    assert!(js.get_stream("NEW").await.is_err(), "no stream was created");
}

/// A daemon `name` on `nats` with `plugins` copied into its own directory and SQLite file.
fn dlq_daemon(
    nats: &NatsServer,
    name: &str,
    plugins: &[&str],
) -> (tempfile::TempDir, jetfold_host::config::Config) {
    let dir = crate::support::daemon_dir(plugins);
    let path = dir.path().join("jetfold.toml");
    std::fs::write(
        &path,
        format!(
            "name = \"{name}\"\nplugin-dir = \"plugins\"\nbatch-size = 4\nfetch-wait-ms = 50\ncache-dir = \"{}\"\n\
             [nats]\nurl = \"{}\"\n[sink]\nsqlite = \"jetfold.db\"\n[http]\nlisten = \"127.0.0.1:0\"\n",
            crate::support::cache_dir().display(),
            nats.url()
        ),
    )
    .unwrap();
    let config = jetfold_host::config::Config::load(&path).unwrap();
    (dir, config)
}

/// Dead letters of one plugin name on two streams, at the same sequences, are two dead letters:
/// their message ids name the stream (they were dropped as duplicates of each other).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dead_letters_of_one_plugin_on_two_streams_are_kept_apart() {
    use crate::support::{plugin, publish_fixture, root};
    plugin("compute-resource");
    let nats = NatsServer::start();
    let js = nats.jetstream().await;
    create_stream(&js, "INFRA", &["infra.>"]).await;
    create_stream(&js, "OTHER", &["other.>"]).await;
    let fixture = root().join("plugins/compute-resource/fixtures/events.jsonl");
    let n = publish_fixture(&js, &fixture).await as u64;
    let tmp = tempfile::tempdir().unwrap();
    let other = tmp.path().join("other.jsonl");
    let text = std::fs::read_to_string(&fixture).unwrap();
    std::fs::write(&other, text.replace("\"subject\":\"infra.", "\"subject\":\"other.")).unwrap();
    assert_eq!(publish_fixture(&js, &other).await as u64, n, "the same sequences on OTHER");
    let golden: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(root().join("plugins/compute-resource/fixtures/expected.json"))
            .unwrap(),
    )
    .unwrap();
    let failed = golden["steps"].as_array().unwrap().iter().filter(|s| s.get("error").is_some());
    let failed = failed.count() as u64;
    assert!(failed > 0);

    let (dir_a, config_a) = dlq_daemon(&nats, "a", &["compute-resource"]);
    let (dir_b, _) = dlq_daemon(&nats, "b", &["compute-resource"]);
    let path_b = dir_b.path().join("jetfold.toml");
    let mut text_b = std::fs::read_to_string(&path_b).unwrap();
    text_b.push_str("[plugins.compute-resource]\nstream = \"OTHER\"\nsubjects = [\"other.>\"]\n");
    std::fs::write(&path_b, text_b).unwrap();
    let config_b = jetfold_host::config::Config::load(&path_b).unwrap();
    for config in [config_a.clone(), config_b] {
        let daemon = jetfold_host::daemon::Daemon::start(config).await.unwrap();
        let mut p = daemon.progress("compute-resource").unwrap();
        p.wait_for(|p| p.committed_seq == n).await.unwrap();
        daemon.stop().await.unwrap();
    }
    let letters = jetfold_host::dlq::list(&js, &config_a.dead_letter, "compute-resource");
    let letters = letters.await.unwrap();
    let from = |stream: &str| letters.iter().filter(|l| l.source_stream == stream).count() as u64;
    assert_eq!((from("INFRA"), from("OTHER")), (failed, failed), "{letters:?}");

    // Each deployment's `dlq` sees and replays the dead letters of its own stream only.
    let (arg_a, arg_b) =
        (dir_a.path().join("jetfold.toml").display().to_string(), path_b.display().to_string());
    let list = jetfold(["dlq", "list", "compute-resource", "--config", &arg_a]);
    assert_eq!(list.code, 0, "{}", list.all());
    assert!(
        list.stdout.contains(&format!("{failed} dead letters of compute-resource\n")),
        "{}",
        list.all()
    );
    assert!(list.stdout.contains(&format!("({failed} more on jetfold.dlq.compute-resource, of events from OTHER: another deployment's")), "{}", list.all());
    assert!(!list.stdout.contains("other.resource"), "{}", list.all());
    let infra_last = || async {
        js.get_stream("INFRA").await.unwrap().get_info().await.unwrap().state.last_sequence
    };
    let before = infra_last().await;
    let replay = jetfold(["dlq", "replay", "compute-resource", "--config", &arg_b]);
    assert_eq!(replay.code, 0, "{}", replay.all());
    assert!(
        replay.stdout.contains(&format!("replayed {failed} dead letters of compute-resource")),
        "{}",
        replay.all()
    );
    assert!(
        replay.stdout.contains(&format!("left {failed} dead letters of events from INFRA")),
        "{}",
        replay.all()
    );
    assert_eq!(infra_last().await, before, "nothing published to the other deployment's stream");
}

/// `dlq replay` reaches only the plugin that failed, and each event once: a second plugin on
/// the same subject passes the replayed events by, and the copies a second daemon of the
/// plugin dead-lettered (past the dead-letter stream's duplicate window) are published once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_letter_replay_reaches_only_its_plugin_once_across_daemons() {
    use crate::support::{plugin, publish_fixture, root};
    plugin("compute-resource");
    plugin("event-counter");
    let nats = NatsServer::start();
    let js = nats.jetstream().await;
    create_stream(&js, "INFRA", &["infra.>"]).await;
    // An operator's dead-letter stream that remembers message ids for 100 ms only.
    js.create_stream(jetstream::stream::Config {
        name: "JETFOLD_DLQ".into(),
        subjects: vec!["jetfold.dlq.>".into()],
        duplicate_window: std::time::Duration::from_millis(100),
        ..Default::default()
    })
    .await
    .unwrap();
    let fixture = root().join("plugins/compute-resource/fixtures/events.jsonl");
    let n = publish_fixture(&js, &fixture).await as u64;
    let golden: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(root().join("plugins/compute-resource/fixtures/expected.json"))
            .unwrap(),
    )
    .unwrap();
    let failed = golden["steps"].as_array().unwrap().iter().filter(|s| s.get("error").is_some());
    let failed = failed.count();
    let dead_letters = || async {
        js.get_stream("JETFOLD_DLQ").await.unwrap().get_info().await.unwrap().state.messages
    };

    // Daemon a runs both plugins; compute-resource fails on some events, event-counter on none.
    let (dir_a, config_a) = dlq_daemon(&nats, "a", &["compute-resource", "event-counter"]);
    let db_a = dir_a.path().join("jetfold.db");
    let daemon_a = jetfold_host::daemon::Daemon::start(config_a.clone()).await.unwrap();
    for name in ["compute-resource", "event-counter"] {
        let mut p = daemon_a.progress(name).unwrap();
        p.wait_for(|p| p.committed_seq == n).await.unwrap();
    }
    assert_eq!(dead_letters().await, failed as u64);
    // Daemon b of compute-resource fails on the same events, later than the window.
    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    let (_dir_b, config_b) = dlq_daemon(&nats, "b", &["compute-resource"]);
    let daemon_b = jetfold_host::daemon::Daemon::start(config_b).await.unwrap();
    let mut p = daemon_b.progress("compute-resource").unwrap();
    p.wait_for(|p| p.committed_seq == n).await.unwrap();
    daemon_b.stop().await.unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while dead_letters().await != 2 * failed as u64 {
        assert!(std::time::Instant::now() < deadline, "the second daemon's dead letters");
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    let target = config_a.sink_target();
    let counted = || {
        let mut sink = jetfold_host::sink::Sink::open(&target).unwrap();
        (sink.states("event-counter").unwrap(), sink.rows("event_counts").unwrap())
    };
    let before = counted();

    let config_arg = dir_a.path().join("jetfold.toml").display().to_string();
    let replay = tokio::task::spawn_blocking(move || {
        jetfold(["dlq", "replay", "compute-resource", "--config", &config_arg])
    })
    .await
    .unwrap();
    assert_eq!(replay.code, 0, "{}", replay.all());
    assert!(
        replay.stdout.contains(&format!(
            "replayed {failed} dead letters of compute-resource ({failed} copies of them removed too)"
        )),
        "{}",
        replay.all()
    );
    let end = n + failed as u64;
    let last = js.get_stream("INFRA").await.unwrap().get_info().await.unwrap().state.last_sequence;
    assert_eq!(last, end, "each event published again once");

    // Both plugins read past the replayed events; only compute-resource folded them.
    for name in ["compute-resource", "event-counter"] {
        let mut p = daemon_a.progress(name).unwrap();
        p.wait_for(|p| p.committed_seq == end).await.unwrap();
    }
    daemon_a.stop().await.unwrap();
    assert_eq!(crate::support::checkpoint(&db_a, "event-counter"), end);
    assert_eq!(counted(), before, "event-counter passed the replayed events by");
    let conn = rusqlite::Connection::open(&db_a).unwrap();
    let refolded: i64 = conn
        .query_row(
            "SELECT count(*) FROM jetfold_rejected WHERE plugin = 'compute-resource' AND seq > ?1",
            [n as i64],
            |r| r.get(0),
        )
        .unwrap();
    assert!(refolded > 0, "compute-resource folded the replayed events (and failed again)");
    let again = jetfold_host::dlq::list(&js, &config_a.dead_letter, "compute-resource").await;
    let again = again.unwrap();
    assert_eq!(again.len() as i64, refolded, "{again:?}");
    assert!(again.iter().all(|l| l.source_seq > n), "the replayed copies are gone: {again:?}");

    // A replay of the offline fold passes them by as the daemon did.
    let counter = dir_a.path().join("plugins/event-counter").display().to_string();
    let config_arg = dir_a.path().join("jetfold.toml").display().to_string();
    let verify = jetfold(["verify", &counter, "--config", &config_arg]);
    assert_eq!(verify.code, 0, "{}", verify.all());
    assert!(verify.stdout.contains("verified"), "{}", verify.all());
}
