//! Upcasters in a running daemon: a stream holding three schema generations is folded through
//! the chain v0 → v1 → v2 before compute-resource sees it; `replay` runs the same chain.

use jetfold_host::config::Config;

use crate::support::{
    NatsServer, checkpoint, create_stream, daemon_dir, eventually, jetfold, plugin,
    publish_fixture, root, start_daemon, write_config,
};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_daemon_folds_every_schema_generation_through_its_upcasters() {
    for p in ["compute-resource", "legacy-resource-upcaster", "resource-upcaster"] {
        plugin(p);
    }
    let nats = NatsServer::start();
    let js = nats.jetstream().await;
    create_stream(&js, "INFRA", &["infra.>"]).await;
    let fixture = root().join("plugins/compute-resource/fixtures/legacy-events.jsonl");
    let n = publish_fixture(&js, &fixture).await as u64;
    let dir = daemon_dir(&["compute-resource", "legacy-resource-upcaster", "resource-upcaster"]);
    let config = std::path::PathBuf::from(write_config(dir.path(), &nats));
    let db = dir.path().join("jetfold.db");
    let parsed = Config::load(&config).unwrap();
    let target = parsed.sink_target();
    let (stop, daemon) = start_daemon(parsed);
    eventually(60, "the daemon to fold the stream", || checkpoint(&db, "compute-resource") == n)
        .await;
    stop.send(()).unwrap();
    daemon.await.unwrap().unwrap();

    // The rows the golden file of the same events through the same chain says.
    let golden: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(
            root().join("plugins/compute-resource/fixtures/legacy-expected.json"),
        )
        .unwrap(),
    )
    .unwrap();
    let mut sink = jetfold_host::sink::Sink::open(&target).unwrap();
    let rows = sink.rows("compute_resources").unwrap();
    let keys: Vec<&str> = rows.iter().map(|(k, _)| k.as_str()).collect();
    assert_eq!(keys, ["r-7", "r-8", "r-9"]);
    let r7: serde_json::Value = serde_json::from_str(&rows[0].1).unwrap();
    assert_eq!(r7["region"], "us-east-1", "{r7}");
    assert_eq!(r7["status"], golden["state"]["r-7"]["status"], "{r7}");
    // The v0 event the first upcaster refuses is rejected with the upcaster's reason.
    let conn = rusqlite::Connection::open(&db).unwrap();
    let (code, message): (String, String) = conn
        .query_row(
            "SELECT code, message FROM jetfold_rejected WHERE plugin = 'compute-resource'",
            [],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .unwrap();
    assert_eq!(code, "invalid-payload");
    assert!(message.contains("upcaster `legacy-resource-upcaster`"), "{message}");

    // replay finds the same upcasters in the config's plugin directory.
    let compute = dir.path().join("plugins/compute-resource").display().to_string();
    let config_arg = config.display().to_string();
    let run = jetfold(["replay", &compute, "--config", &config_arg]);
    assert_eq!(run.code, 0, "{}", run.all());
    let summary: serde_json::Value = serde_json::from_str(&run.stdout).unwrap();
    assert_eq!(summary["state"], golden["state"], "{}", run.all());
    assert_eq!(summary["rejected"], 1);
}
