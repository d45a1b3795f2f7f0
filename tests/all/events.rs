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
        assert_eq!(after, before, "event {}", before.message_id);
    }
    // The stream was created with the subjects the events have.
    let info =
        b.jetstream().await.get_stream("DST").await.unwrap().info().await.unwrap().config.clone();
    assert_eq!(info.subjects, vec!["infra.>".to_string(), "other.>".to_string()]);

    // Importing again stores nothing twice: the message ids were kept.
    let again = jetfold(["events", "import", &file_arg, "--stream", "DST", "--config", &config_b]);
    assert!(
        again.stdout.contains(&format!("{} events were already in the stream", original.len())),
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
    let headers = record["headers"].as_array().unwrap();
    assert!(headers.contains(&serde_json::json!(["Schema-Version", "abc"])), "{record}");
    assert!(headers.contains(&serde_json::json!(["X-Trace", "t-1"])), "{record}");

    let file = dir.path().join("src.jsonl");
    std::fs::write(&file, &exported.stdout).unwrap();
    let file = file.display().to_string();
    let imported = jetfold(["events", "import", &file, "--stream", "DST", "--config", &config_b]);
    assert_eq!(imported.code, 0, "{}", imported.all());
    let copied = read_all(&b.jetstream().await, "DST").await;
    assert_eq!(copied.len(), 1);
    assert_eq!(copied[0].1, b"{\"name\":\"x\"}", "the payload's bytes");
    assert!(copied[0].0.headers.contains(&("X-Trace".into(), "t-1".into())), "{:?}", copied[0]);
}
