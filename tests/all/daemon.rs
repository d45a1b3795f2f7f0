//! `jetfold run` against a real nats-server and a real SQLite file.

use std::path::Path;

use futures::StreamExt as _;
use jetfold_host::{config::Config, sink::sqlite::SqliteSink};

use crate::support::{
    NatsServer, checkpoint, create_stream, daemon_dir, eventually, plugin, publish_fixture,
    start_daemon,
};

pub(crate) fn config(dir: &Path, nats: &NatsServer) -> Config {
    let text = format!(
        "plugin-dir = \"plugins\"\nbatch-size = 4\nfetch-wait-ms = 50\ncache-dir = \"{}\"\n[nats]\nurl = \"{}\"\n[sink]\nsqlite = \"jetfold.db\"\n",
        crate::support::cache_dir().display(),
        nats.url()
    );
    Config::parse(&text, dir.to_path_buf(), |_| None).unwrap()
}

/// A nats-server whose INFRA stream holds the compute-resource fixture, and a daemon
/// directory with the plugin: the server, a client, the number of events, the directory.
pub(crate) async fn compute_resource_fixture_on_infra()
-> (NatsServer, async_nats::jetstream::Context, usize, tempfile::TempDir) {
    plugin("compute-resource");
    let nats = NatsServer::start();
    let js = nats.jetstream().await;
    create_stream(&js, "INFRA", &["infra.>"]).await;
    let fixture = crate::support::root().join("plugins/compute-resource/fixtures/events.jsonl");
    let n = publish_fixture(&js, &fixture).await;
    (nats, js, n, daemon_dir(&["compute-resource"]))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_flow_from_jetstream_to_sqlite_and_commands_exactly_once() {
    plugin("compute-resource");
    plugin("person-archive");
    let nats = NatsServer::start();
    let js = nats.jetstream().await;
    create_stream(&js, "INFRA", &["infra.>"]).await;
    create_stream(&js, "PEOPLE", &["people.person.>", "people.clock.>"]).await;
    create_stream(&js, "COMMANDS", &["people.commands.>"]).await;
    let root = crate::support::root();
    let infra = publish_fixture(&js, &root.join("plugins/compute-resource/fixtures/events.jsonl"))
        .await as u64;
    let people = publish_fixture(&js, &root.join("plugins/person-archive/fixtures/events.jsonl"))
        .await as u64;

    let dir = daemon_dir(&["compute-resource", "person-archive"]);
    let db = dir.path().join("jetfold.db");
    let (stop, task) = start_daemon(config(dir.path(), &nats));
    eventually(60, "both plugins to commit their streams", || {
        checkpoint(&db, "compute-resource") == infra && checkpoint(&db, "person-archive") == people
    })
    .await;
    stop.send(()).unwrap();
    task.await.unwrap().unwrap();

    // The read model: one row per resource, as the golden file's final state says.
    let mut sink = SqliteSink::open(&db).unwrap();
    let rows = sink.rows("compute_resources").unwrap();
    assert_eq!(rows.len(), 2, "{rows:?}");
    let r1: serde_json::Value = serde_json::from_str(&rows[0].1).unwrap();
    assert_eq!(
        (r1["id"].as_str(), r1["status"].as_str(), r1["version"].as_u64()),
        (Some("r-1"), Some("Decommissioned"), Some(7))
    );
    let r2: serde_json::Value = serde_json::from_str(&rows[1].1).unwrap();
    assert_eq!(r2["status"], "Provisioning");
    // The events the plugin refused are recorded with their reasons.
    let conn = rusqlite::Connection::open(&db).unwrap();
    let mut stmt = conn
        .prepare(
            "SELECT seq, code FROM jetfold_rejected WHERE plugin = 'compute-resource' ORDER BY seq",
        )
        .unwrap();
    let rejected: Vec<(i64, Option<String>)> =
        stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?))).unwrap().map(|r| r.unwrap()).collect();
    let codes: Vec<&str> = rejected.iter().map(|(_, c)| c.as_deref().unwrap_or("")).collect();
    assert_eq!(
        codes,
        [
            "invalid-transition",
            "already-registered",
            "decommissioned",
            "not-registered",
            "invalid-payload"
        ]
    );

    // The policy's commands, published once each, with id, correlation and causation.
    let commands =
        js.get_stream("COMMANDS").await.unwrap().get_info().await.unwrap().state.messages;
    assert_eq!(commands, 2);
    let consumer = js
        .get_stream("COMMANDS")
        .await
        .unwrap()
        .create_consumer(async_nats::jetstream::consumer::pull::OrderedConfig::default())
        .await
        .unwrap();
    let mut messages = consumer.messages().await.unwrap().take(2);
    let first = messages.next().await.unwrap().unwrap();
    let headers = first.headers.clone().unwrap();
    assert_eq!(first.subject.as_str(), "people.commands.linus.ArchivePerson");
    assert_eq!(headers.get("Event-Type").unwrap().as_str(), "ArchivePerson");
    assert_eq!(headers.get("Nats-Msg-Id").unwrap().as_str(), "person-archive:PEOPLE:6:0");
    assert_eq!(headers.get("Causation-Id").unwrap().as_str(), "people.clock.daily.DayStarted:6");
    assert_eq!(headers.get("Jetfold-Plugin").unwrap().as_str(), "person-archive");
    assert_eq!(headers.get("Event-Time").unwrap().as_str(), "2026-01-13T00:00:00+00:00");
    let payload: serde_json::Value = serde_json::from_slice(&first.payload).unwrap();
    assert_eq!(payload["person_id"], "linus");

    // A restart resumes from the checkpoint: nothing is applied or published twice.
    let (stop, task) = start_daemon(config(dir.path(), &nats));
    let later = dir.path().join("later.jsonl");
    std::fs::write(
        &later,
        [
            r#"{"subject":"infra.resource.r-3.ResourceRegistered","time":"2026-03-03T00:00:00Z","message_id":"later-1","payload":{"name":"cache-1","kind":"vm","region":"eu-west"}}"#,
            r#"{"subject":"infra.resource.r-3.StatusChanged","time":"2026-03-03T00:01:00Z","message_id":"later-2","payload":{"to":"Active"}}"#,
            r#"{"subject":"infra.resource.r-1.StatusChanged","time":"2026-03-03T00:02:00Z","message_id":"later-3","payload":{"to":"Active"}}"#,
        ]
        .join("\n"),
    )
    .unwrap();
    let more = publish_fixture(&js, &later).await as u64;
    eventually(60, "the new events to be committed", || {
        checkpoint(&db, "compute-resource") == infra + more
    })
    .await;
    stop.send(()).unwrap();
    task.await.unwrap().unwrap();
    assert_eq!(
        js.get_stream("COMMANDS").await.unwrap().get_info().await.unwrap().state.messages,
        2
    );
    assert_eq!(checkpoint(&db, "person-archive"), people);
    let rejected_after: i64 = conn
        .query_row(
            "SELECT COUNT(*) FROM jetfold_rejected WHERE plugin = 'compute-resource'",
            [],
            |r| r.get(0),
        )
        .unwrap();
    // Of the three later events only the one for decommissioned r-1 is refused.
    assert_eq!(rejected_after, 5 + 1);
    let rows = SqliteSink::open(&db).unwrap().rows("compute_resources").unwrap();
    assert_eq!(rows.len(), 3);
    assert!(rows[2].1.contains("\"status\":\"Active\""), "{rows:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_stream_is_named_and_the_daemon_stays_up() {
    plugin("event-counter");
    let nats = NatsServer::start();
    let dir = daemon_dir(&["event-counter"]);
    let db = dir.path().join("jetfold.db");
    let (stop, task) = start_daemon(config(dir.path(), &nats));
    // The stream does not exist yet: the worker keeps retrying; once it exists, events flow.
    let js = nats.jetstream().await;
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    if task.is_finished() {
        panic!("the daemon must stay up without its stream: {:?}", task.await);
    }
    create_stream(&js, "INFRA", &["infra.>"]).await;
    let n = publish_fixture(
        &js,
        &crate::support::root().join("plugins/event-counter/fixtures/events.jsonl"),
    )
    .await as u64;
    eventually(60, "events after the stream appeared", || checkpoint(&db, "event-counter") == n)
        .await;
    stop.send(()).unwrap();
    task.await.unwrap().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_daemon_reconnects_after_nats_server_restarts() {
    plugin("event-counter");
    let mut nats = NatsServer::start();
    let js = nats.jetstream().await;
    create_stream(&js, "INFRA", &["infra.>"]).await;
    let dir = daemon_dir(&["event-counter"]);
    let db = dir.path().join("jetfold.db");
    let (stop, task) = start_daemon(config(dir.path(), &nats));
    let events = dir.path().join("events.jsonl");
    let write_events = |from: usize, to: usize| {
        let lines: Vec<String> = (from..to)
            .map(|i| {
                format!(
                    r#"{{"subject":"infra.resource.r-{}.Pinged","time":"2026-03-03T00:00:00Z","message_id":"ping-{i}","payload":{{}}}}"#,
                    i % 7
                )
            })
            .collect();
        std::fs::write(&events, lines.join("\n")).unwrap();
    };
    write_events(0, 200);
    publish_fixture(&js, &events).await;
    eventually(60, "the first 200 events", || checkpoint(&db, "event-counter") == 200).await;

    nats.restart();
    let js = nats.jetstream().await;
    write_events(200, 400);
    publish_fixture(&js, &events).await;
    eventually(60, "the daemon to reconnect and commit the next 200", || {
        checkpoint(&db, "event-counter") == 400
    })
    .await;
    stop.send(()).unwrap();
    task.await.unwrap().unwrap();
    let total: u64 = SqliteSink::open(&db)
        .unwrap()
        .rows("event_counts")
        .unwrap()
        .iter()
        .map(|(_, doc)| {
            serde_json::from_str::<serde_json::Value>(doc).unwrap()["events"].as_u64().unwrap()
        })
        .sum();
    assert_eq!(total, 400, "every event counted once");
}

#[test]
fn the_demo_shows_the_read_model_rejections_and_commands() {
    plugin("compute-resource");
    plugin("person-archive");
    let plugins = crate::support::root().join("plugins");
    let run = crate::support::jetfold([Path::new("demo"), Path::new("--plugin-dir"), &plugins]);
    assert_eq!(run.code, 0, "{}", run.all());
    assert!(run.stdout.contains("started nats-server with JetStream"), "{}", run.all());
    assert!(
        run.stdout.contains("published 148 infra.resource.* and 210 people.* events"),
        "{}",
        run.all()
    );
    assert!(
        run.stdout
            .contains("by status: 24 Active, 8 Provisioning, 4 Maintenance, 4 Decommissioned"),
        "{}",
        run.all()
    );
    assert!(
        run.stdout.contains("#54 ResourceRegistered [r-013] already-registered"),
        "{}",
        run.all()
    );
    assert!(
        run.stdout.contains("commands the person-archive policy published on COMMANDS (3)"),
        "{}",
        run.all()
    );
    assert!(run.stdout.contains("people.commands.grace.ArchivePerson"), "{}", run.all());
}

#[test]
fn an_unreachable_nats_gives_up_with_a_clear_error_and_exit_code_2() {
    plugin("event-counter");
    let dir = daemon_dir(&["event-counter"]);
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let config = dir.path().join("jetfold.toml");
    std::fs::write(
        &config,
        format!("plugin-dir = \"plugins\"\n[nats]\nurl = \"nats://127.0.0.1:{port}\"\nconnect-timeout-secs = 1\n"),
    )
    .unwrap();
    let run = crate::support::jetfold([Path::new("run"), Path::new("--config"), &config]);
    assert_eq!(run.code, 2, "{}", run.all());
    assert!(
        run.stderr.contains(&format!("NATS at nats://127.0.0.1:{port} unreachable for 1 s")),
        "{}",
        run.all()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_payload_that_is_not_json_reaches_the_plugin_and_is_recorded_when_refused() {
    plugin("compute-resource");
    let nats = NatsServer::start();
    let js = nats.jetstream().await;
    create_stream(&js, "INFRA", &["infra.>"]).await;
    let mut headers = async_nats::HeaderMap::new();
    headers.insert("Content-Type", "application/octet-stream");
    js.publish_with_headers(
        "infra.resource.r-1.ResourceRegistered",
        headers,
        vec![0u8, 159, 146, 150].into(),
    )
    .await
    .unwrap()
    .await
    .unwrap();
    js.publish(
        "infra.resource.r-2.ResourceRegistered",
        r#"{"name":"ok","kind":"vm","region":"x"}"#.into(),
    )
    .await
    .unwrap()
    .await
    .unwrap();
    let dir = daemon_dir(&["compute-resource"]);
    let db = dir.path().join("jetfold.db");
    let (stop, task) = start_daemon(config(dir.path(), &nats));
    eventually(60, "both events", || checkpoint(&db, "compute-resource") == 2).await;
    stop.send(()).unwrap();
    task.await.unwrap().unwrap();
    let conn = rusqlite::Connection::open(&db).unwrap();
    let (seq, code, message): (i64, String, String) = conn
        .query_row("SELECT seq, code, message FROM jetfold_rejected", [], |r| {
            Ok((r.get(0)?, r.get(1)?, r.get(2)?))
        })
        .unwrap();
    assert_eq!((seq, code.as_str()), (1, "invalid-payload"));
    assert!(message.contains("cannot decode a `ResourceRegistered` payload"), "{message}");
    assert_eq!(SqliteSink::open(&db).unwrap().rows("compute_resources").unwrap().len(), 1);
}

/// The PostgreSQL the tests use: `$JETFOLD_TEST_POSTGRES_URL`, else the local one (trust auth).
pub fn postgres_url() -> String {
    std::env::var("JETFOLD_TEST_POSTGRES_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".into())
}

/// Every `compute_resources` row of `schema` (key, document) and the number of rejected
/// events; then the schema is dropped.
async fn postgres_outcome(schema: &str) -> (Vec<(String, serde_json::Value)>, i64) {
    let (url, schema) = (postgres_url(), schema.to_string());
    tokio::task::spawn_blocking(move || {
        let mut client = postgres::Client::connect(&url, postgres::NoTls).unwrap();
        let rows = client
            .query(
                &format!("SELECT key, doc::text FROM \"{schema}\".compute_resources ORDER BY key"),
                &[],
            )
            .unwrap()
            .into_iter()
            .map(|r| (r.get(0), serde_json::from_str(r.get::<_, &str>(1)).unwrap()))
            .collect();
        let rejected: i64 = client
            .query_one(&format!("SELECT COUNT(*) FROM \"{schema}\".jetfold_rejected"), &[])
            .unwrap()
            .get(0);
        client.batch_execute(&format!("DROP SCHEMA \"{schema}\" CASCADE")).unwrap();
        (rows, rejected)
    })
    .await
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn effects_and_checkpoints_go_to_postgres_in_a_schema_of_their_own() {
    let (nats, _js, n, dir) = compute_resource_fixture_on_infra().await;
    let schema = format!("jetfold_test_{}", std::process::id());
    let text = format!(
        "plugin-dir = \"plugins\"\nbatch-size = 4\nfetch-wait-ms = 50\ncache-dir = \"{}\"\n[nats]\nurl = \"{}\"\n[sink]\npostgres = \"{}\"\nschema = \"{schema}\"\n",
        crate::support::cache_dir().display(),
        nats.url(),
        postgres_url()
    );
    let config = Config::parse(&text, dir.path().to_path_buf(), |_| None).unwrap();
    let target = config.sink_target();
    let (stop, task) = start_daemon(config);
    let checkpoint = move || {
        let target = target.clone();
        std::thread::spawn(move || {
            jetfold_host::sink::Sink::open(&target)
                .ok()
                .and_then(|mut s| s.checkpoint("compute-resource").ok().flatten())
                .map(|c| c.last_seq)
                .unwrap_or(0)
        })
        .join()
        .unwrap()
    };
    eventually(60, "the fixture committed to PostgreSQL", || checkpoint() == n as u64).await;
    stop.send(()).unwrap();
    task.await.unwrap().unwrap();

    let (docs, rejected) = postgres_outcome(&schema).await;
    let rows: Vec<(String, String)> =
        docs.iter().map(|(k, d)| (k.clone(), d["status"].as_str().unwrap().to_string())).collect();
    assert_eq!(
        rows,
        vec![
            ("r-1".to_string(), "Decommissioned".to_string()),
            ("r-2".to_string(), "Provisioning".to_string())
        ]
    );
    assert_eq!(rejected, 5);
}

/// `count` resources r-<first>… registered and activated: two events each, in order.
async fn publish_resources(js: &async_nats::jetstream::Context, first: usize, count: usize) {
    let mut acks = Vec::new();
    for r in first..first + count {
        for (i, (ty, payload)) in [
            (
                "ResourceRegistered",
                serde_json::json!({"name": format!("vm-{r}"), "kind": "vm", "region": "eu"}),
            ),
            ("StatusChanged", serde_json::json!({"to": "Active"})),
        ]
        .into_iter()
        .enumerate()
        {
            let event = jetfold_host::event::Event {
                sequence: 0,
                subject: format!("infra.resource.r-{r}.{ty}"),
                message_id: format!("outage-{r}-{i}"),
                event_type: ty.into(),
                aggregate_id: format!("r-{r}"),
                correlation_id: None,
                causation_id: None,
                time: "2026-01-01T00:00:00Z".parse().unwrap(),
                schema_version: 1,
                headers: vec![],
                payload: serde_json::to_vec(&payload).unwrap(),
                content_type: jetfold_host::event::JSON.into(),
            };
            acks.push(jetfold_host::nats::publish_event(js, &event).await.unwrap());
        }
    }
    for ack in acks {
        ack.await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_database_outage_is_retried_and_nothing_is_lost_or_applied_twice() {
    let (nats, js, n, dir) = compute_resource_fixture_on_infra().await;
    let schema = format!("jetfold_outage_{}", std::process::id());
    // The daemon's connections carry a name of their own, so the test can cut exactly them.
    let app = format!("jetfold_outage_{}", std::process::id());
    let url = postgres_url();
    let sep = if url.contains('?') { '&' } else { '?' };
    let text = format!(
        "plugin-dir = \"plugins\"\nbatch-size = 4\nfetch-wait-ms = 50\ncache-dir = \"{}\"\n[nats]\nurl = \"{}\"\n[sink]\npostgres = \"{url}{sep}application_name={app}\"\nschema = \"{schema}\"\n",
        crate::support::cache_dir().display(),
        nats.url(),
    );
    let config = Config::parse(&text, dir.path().to_path_buf(), |_| None).unwrap();
    let daemon = jetfold_host::daemon::Daemon::start(config).await.unwrap();
    let mut progress = daemon.progress("compute-resource").unwrap();
    progress.wait_for(|p| p.committed_seq == n as u64).await.unwrap();

    // The outage: the read-model table disappears and the daemon's connections are cut.
    let sql = move |statement: String| {
        let url = postgres_url();
        std::thread::spawn(move || {
            let mut client = postgres::Client::connect(&url, postgres::NoTls).unwrap();
            client.batch_execute(&statement).unwrap();
        })
        .join()
        .unwrap()
    };
    sql(format!(
        "ALTER TABLE \"{schema}\".compute_resources RENAME TO compute_resources_away; \
         SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = '{app}';"
    ));
    publish_resources(&js, 3, 20).await;
    let during = progress.wait_for(|p| p.retries >= 3).await.unwrap().clone();
    assert_eq!(during.committed_seq, n as u64, "nothing may commit while the table is away");
    assert_eq!(during.events, n as u64);

    // The database comes back: everything published meanwhile is applied, once.
    sql(format!("ALTER TABLE \"{schema}\".compute_resources_away RENAME TO compute_resources"));
    let after = progress.wait_for(|p| p.committed_seq == n as u64 + 40).await.unwrap().clone();
    assert_eq!(after.events, n as u64 + 40);
    daemon.stop().await.unwrap();

    let (docs, rejected) = postgres_outcome(&schema).await;
    let rows: Vec<(String, String, String)> = docs
        .iter()
        .map(|(k, d)| {
            (k.clone(), d["status"].as_str().unwrap().to_string(), d["version"].to_string())
        })
        .collect();
    assert_eq!(rejected, 5, "the fixture's own rejections, and no others");
    assert_eq!(rows.len(), 22);
    for (key, status, version) in &rows[..] {
        if key == "r-1" || key == "r-2" {
            continue;
        }
        // Registered then activated: version 2 exactly, so neither event was applied twice.
        assert_eq!((status.as_str(), version.as_str()), ("Active", "2"), "{key}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_daemon_dropped_without_stop_lets_its_workers_end() {
    let (nats, _js, n, dir) = compute_resource_fixture_on_infra().await;
    let daemon = jetfold_host::daemon::Daemon::start(config(dir.path(), &nats)).await.unwrap();
    let mut progress = daemon.progress("compute-resource").unwrap();
    progress.wait_for(|p| p.committed_seq == n as u64).await.unwrap();
    drop(daemon);
    // The workers notice their daemon is gone and end: the last sender of progress goes.
    tokio::time::timeout(std::time::Duration::from_secs(30), async {
        while progress.changed().await.is_ok() {}
    })
    .await
    .expect("the workers of a dropped daemon did not end");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_maintenance_asks_once_per_incident_with_correlation_and_causation() {
    plugin("health-maintenance");
    let nats = NatsServer::start();
    let js = nats.jetstream().await;
    create_stream(&js, "INFRA", &["infra.resource.>"]).await;
    create_stream(&js, "COMMANDS", &["infra.commands.>"]).await;
    let fixture = crate::support::root().join("plugins/health-maintenance/fixtures/events.jsonl");
    let n = publish_fixture(&js, &fixture).await as u64;
    let dir = daemon_dir(&["health-maintenance"]);
    let db = dir.path().join("jetfold.db");
    let (stop, task) = start_daemon(config(dir.path(), &nats));
    eventually(60, "the policy to fold the stream", || checkpoint(&db, "health-maintenance") == n)
        .await;
    stop.send(()).unwrap();
    task.await.unwrap().unwrap();

    let mut reader =
        jetfold_host::nats::reader::StreamReader::open(&js, "COMMANDS", &[], None, None)
            .await
            .unwrap();
    let mut commands = Vec::new();
    while let Some(message) = reader.next().await {
        let message = message.unwrap();
        let header = |name: &str| {
            message.headers.as_ref().and_then(|h| h.get(name)).map(|v| v.as_str().to_string())
        };
        let payload: serde_json::Value = serde_json::from_slice(&message.payload).unwrap();
        commands.push((
            message.subject.to_string(),
            header("Correlation-Id"),
            header("Causation-Id"),
            payload,
        ));
    }
    assert_eq!(commands.len(), 2, "{commands:?}");
    let (subject, correlation, causation, payload) = &commands[0];
    assert_eq!(subject, "infra.commands.r-1.PutIntoMaintenance");
    assert_eq!(correlation.as_deref(), Some("incident-7"), "the incident's correlation id");
    assert_eq!(causation.as_deref(), Some("infra.resource.r-1.HealthCheckFailed:5"));
    assert_eq!(payload["failures"], 3);
    let (subject, correlation, causation, _) = &commands[1];
    assert_eq!(subject, "infra.commands.r-3.PutIntoMaintenance");
    // No correlation on the event: the command is correlated with the event itself.
    assert_eq!(correlation.as_deref(), Some("infra.resource.r-3.HealthCheckFailed:10"));
    assert_eq!(causation.as_deref(), Some("infra.resource.r-3.HealthCheckFailed:10"));
}

/// A `[plugins.<name>]` section that names no plugin (a typo) is refused with the closest
/// name, at start (exit 2, nothing folded) and on SIGHUP (the running config stays, so the
/// plugin the typo meant to disable keeps running).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_typo_in_a_plugin_section_is_refused_not_ignored() {
    let nats = NatsServer::start();
    let js = nats.jetstream().await;
    create_stream(&js, "INFRA", &["infra.>"]).await;
    let dir = daemon_dir(&["compute-resource"]);
    let config = dir.path().join("jetfold.toml");
    let base = format!(
        "plugin-dir = \"plugins\"\n[nats]\nurl = \"{}\"\n[sink]\nsqlite = \"jetfold.db\"\n[http]\nlisten = \"\"\n",
        nats.url()
    );
    let typo = format!("{base}[plugins.compute-resourse]\nenabled = false\n");
    std::fs::write(&config, &typo).unwrap();
    let run = crate::support::jetfold(["run", "--config", config.to_str().unwrap()]);
    assert_eq!(run.code, 2, "{}", run.all());
    assert!(run.stderr.contains("[plugins.compute-resourse] names no plugin"), "{}", run.all());
    assert!(run.stderr.contains("did you mean `compute-resource`?"), "{}", run.all());
    let db = dir.path().join("jetfold.db");
    assert_eq!(checkpoint(&db, "compute-resource"), 0);

    std::fs::write(&config, &base).unwrap();
    let daemon = crate::support::DaemonProcess::start(&config, &dir.path().join("daemon.log"));
    let register = |r: &str| {
        let (js, subject) = (js.clone(), format!("infra.resource.{r}.ResourceRegistered"));
        async move {
            let payload = r#"{"name":"vm","kind":"vm","region":"eu"}"#;
            js.publish(subject, payload.into()).await.unwrap().await.unwrap();
        }
    };
    register("r-1").await;
    daemon.wait(60, "the first event folded", || checkpoint(&db, "compute-resource") == 1).await;
    std::fs::write(&config, &typo).unwrap();
    daemon.signal("HUP");
    let said = |text: &str| {
        daemon.lines().iter().any(|l| {
            l["fields"]["message"].as_str().is_some_and(|m| m.contains(text))
                || l["fields"]["error"].as_str().is_some_and(|m| m.contains(text))
        })
    };
    daemon.wait(30, "the reload refused", || said("config not reloaded")).await;
    assert!(said("did you mean `compute-resource`?"));
    register("r-2").await;
    daemon.wait(30, "the plugin still folding", || checkpoint(&db, "compute-resource") == 2).await;
    assert_eq!(daemon.stop(), Some(0));
}

/// On PostgreSQL, a restart with every table already there logs nothing about them: the
/// server's "already exists, skipping" notices are debug lines, not INFO noise per start.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_notices_do_not_reach_the_info_log() {
    let nats = NatsServer::start();
    let js = nats.jetstream().await;
    create_stream(&js, "INFRA", &["infra.>"]).await;
    let schema = format!("jetfold_notices_{}", std::process::id());
    let dir = daemon_dir(&["compute-resource"]);
    let config = dir.path().join("jetfold.toml");
    let text = format!(
        "plugin-dir = \"plugins\"\n[nats]\nurl = \"{}\"\n[sink]\npostgres = \"{}\"\nschema = \"{schema}\"\n[http]\nlisten = \"\"\n",
        nats.url(),
        postgres_url()
    );
    std::fs::write(&config, text).unwrap();
    let log = dir.path().join("daemon.log");
    for _ in 0..2 {
        let daemon = crate::support::DaemonProcess::start(&config, &log);
        daemon
            .wait(60, "the plugin started", || {
                daemon.lines().iter().filter(|l| l["fields"]["message"] == "plugin started").count()
                    > 0
            })
            .await;
        assert_eq!(daemon.stop(), Some(0));
        std::fs::rename(&log, dir.path().join("first.log")).ok();
    }
    let second = std::fs::read_to_string(dir.path().join("first.log")).unwrap();
    assert!(second.contains("plugin started"), "{second}");
    assert!(!second.contains("already exists"), "{second}");
    postgres_outcome(&schema).await;
}

/// A batch's rejections and outbox messages are written by one statement each in
/// PostgreSQL: in the batch's order, the last rejection of a sequence standing, nothing twice
/// when the same batch commits again (a crash between commit and ack); SQLite the same.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn both_sinks_write_a_batch_of_rejections_and_outbox_messages_once_in_order() {
    use jetfold_host::sink::{Commit, OutboxMessage, Rejected, Sink, SinkTarget};
    let rejected = |seq: u64, code: Option<&str>, message: &str| Rejected {
        seq,
        key: format!("k-{seq}"),
        event_type: "Thing".into(),
        kind: "error".into(),
        code: code.map(str::to_string),
        message: message.into(),
    };
    // Ids out of their sort order: the outbox must keep the batch's.
    let outbox: Vec<OutboxMessage> = ["p:9:0", "p:2:1", "p:2:0", "p:10:0", "p:1:0"]
        .iter()
        .enumerate()
        .map(|(i, id)| OutboxMessage {
            msg_id: id.to_string(),
            subject: format!("out.{i}"),
            headers: vec![("Nats-Msg-Id".into(), id.to_string()), ("X-N".into(), i.to_string())],
            payload: vec![i as u8, 0, 255],
        })
        .collect();
    let batch = Commit {
        plugin: "p".into(),
        digest: "d".into(),
        last_seq: 10,
        state_version: 1,
        rejected: vec![
            rejected(3, Some("E1"), "first"),
            rejected(5, None, "an early try"),
            rejected(7, None, "seven"),
            rejected(5, Some("E5"), "five"),
        ],
        outbox: outbox.clone(),
        ..Default::default()
    };
    let dir = tempfile::tempdir().unwrap();
    let schema = format!("jf_rows_{}", std::process::id());
    let targets = [
        SinkTarget::Sqlite(dir.path().join("sink.db")),
        SinkTarget::Postgres { url: postgres_url(), schema: schema.clone() },
    ];
    for target in targets {
        let (batch, outbox, target2) = (&batch, outbox.clone(), target.clone());
        let rows = tokio::task::block_in_place(move || {
            let mut sink = Sink::open(&target2).unwrap();
            sink.commit(batch).unwrap();
            sink.commit(batch).unwrap();
            assert_eq!(sink.outbox("p").unwrap(), outbox, "{target2:?}");
            let query =
                "SELECT seq, code, message FROM jetfold_rejected WHERE plugin = 'p' ORDER BY seq";
            match &target2 {
                SinkTarget::Sqlite(path) => {
                    let db = rusqlite::Connection::open(path).unwrap();
                    let mut stmt = db.prepare(query).unwrap();
                    stmt.query_map([], |r| Ok((r.get::<_, i64>(0)?, r.get(1)?, r.get(2)?)))
                        .unwrap()
                        .map(Result::unwrap)
                        .collect::<Vec<(i64, Option<String>, String)>>()
                }
                SinkTarget::Postgres { url, schema } => {
                    let mut client = postgres::Client::connect(url, postgres::NoTls).unwrap();
                    client.batch_execute(&format!("SET search_path TO \"{schema}\"")).unwrap();
                    let rows = client.query(query, &[]).unwrap();
                    client.batch_execute(&format!("DROP SCHEMA \"{schema}\" CASCADE")).unwrap();
                    rows.iter().map(|r| (r.get(0), r.get(1), r.get(2))).collect()
                }
            }
        });
        assert_eq!(
            rows,
            vec![
                (3, Some("E1".to_string()), "first".to_string()),
                (5, Some("E5".to_string()), "five".to_string()),
                (7, None, "seven".to_string()),
            ],
            "{target:?}"
        );
    }
}
