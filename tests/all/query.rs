//! Read-model queries to a running daemon: `jetfold state` over NATS, answered by the daemon
//! its config names.

use crate::daemon::{compute_resource_fixture_on_infra, config};
use crate::support::{checkpoint, daemon_dir, eventually, start_daemon};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jetfold_state_asks_the_running_daemon_and_the_projection_answers() {
    let (nats, _js, n, dir) = compute_resource_fixture_on_infra().await;
    let db = dir.path().join("jetfold.db");
    let config_file = dir.path().join("jetfold.toml");
    std::fs::write(
        &config_file,
        format!("plugin-dir = \"plugins\"\n[nats]\nurl = \"{}\"\n", nats.url()),
    )
    .unwrap();
    let (stop, task) = start_daemon(config(dir.path(), &nats));
    eventually(60, "the fixture to be committed", || {
        checkpoint(&db, "compute-resource") == n as u64
    })
    .await;

    let ask = |args: Vec<String>| {
        let config_file = config_file.clone();
        tokio::task::spawn_blocking(move || {
            let mut all = vec!["state".to_string()];
            all.extend(args);
            all.extend(["--config".to_string(), config_file.display().to_string()]);
            crate::support::jetfold(all)
        })
    };
    let counts =
        ask(vec!["compute-resource".into(), r#"{"count_by_status":{}}"#.into()]).await.unwrap();
    assert_eq!(counts.code, 0, "{}", counts.all());
    let counts: serde_json::Value = serde_json::from_str(&counts.stdout).unwrap();
    assert_eq!(counts, serde_json::json!({"Decommissioned": 1, "Provisioning": 1}));

    let one = ask(vec![
        "compute-resource".into(),
        r#"{"resource":{"id":"r-2"}}"#.into(),
        "--key".into(),
        "r-2".into(),
    ])
    .await
    .unwrap();
    assert_eq!(one.code, 0, "{}", one.all());
    assert!(one.stdout.contains("\"name\": \"db-1\""), "{}", one.all());

    let missing =
        ask(vec!["compute-resource".into(), r#"{"resource":{"id":"r-9"}}"#.into()]).await.unwrap();
    assert_eq!(missing.code, 1, "{}", missing.all());
    assert!(missing.stderr.contains("not-found"), "{}", missing.all());

    let nobody = ask(vec!["no-such-plugin".into()]).await.unwrap();
    assert_eq!(nobody.code, 2, "{}", nobody.all());
    assert!(
        nobody.stderr.contains("daemon `jetfold` does not serve plugin `no-such-plugin`"),
        "{}",
        nobody.all()
    );

    // Latency of the request/reply path, reported (never asserted).
    let client = async_nats::connect(nats.url()).await.unwrap();
    let mut times = Vec::new();
    for _ in 0..50 {
        let t = std::time::Instant::now();
        client
            .request(
                "jetfold.query.compute-resource",
                r#"{"request":{"count_by_status":{}}}"#.into(),
            )
            .await
            .unwrap();
        times.push(t.elapsed().as_secs_f64() * 1e3);
    }
    times.sort_by(|a, b| a.partial_cmp(b).unwrap());
    eprintln!(
        "query latency over 50 requests: median {:.2} ms, max {:.2} ms",
        times[25], times[49]
    );

    // A second daemon of the plugin, with a database of its own that holds nothing (it starts
    // at new events): `jetfold state` asks the daemon its config names, never the other.
    let other_dir = daemon_dir(&["compute-resource"]);
    let other_config = other_dir.path().join("jetfold.toml");
    std::fs::write(
        &other_config,
        format!(
            "name = \"other\"\nplugin-dir = \"plugins\"\ncache-dir = \"{}\"\n[nats]\nurl = \"{}\"\n\
             [sink]\nsqlite = \"jetfold.db\"\n[plugins.compute-resource]\nstart = \"new\"\n",
            crate::support::cache_dir().display(),
            nats.url()
        ),
    )
    .unwrap();
    let other = jetfold_host::config::Config::load(&other_config).unwrap();
    let (stop_other, other_task) = start_daemon(other);
    let query = r#"{"count_by_status":{}}"#;
    let other_answer = || {
        let other_config = other_config.display().to_string();
        tokio::task::spawn_blocking(move || {
            crate::support::jetfold(["state", "compute-resource", query, "--config", &other_config])
        })
    };
    let mut empty = other_answer().await.unwrap();
    for _ in 0..100 {
        if empty.code == 0 {
            break;
        }
        // Until the other daemon's query service is up.
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        empty = other_answer().await.unwrap();
    }
    assert_eq!(empty.code, 0, "{}", empty.all());
    assert_eq!(
        serde_json::from_str::<serde_json::Value>(&empty.stdout).unwrap(),
        serde_json::json!({})
    );
    for _ in 0..8 {
        let counts = ask(vec!["compute-resource".into(), query.into()]).await.unwrap();
        let counts: serde_json::Value = serde_json::from_str(&counts.stdout).unwrap();
        assert_eq!(counts, serde_json::json!({"Decommissioned": 1, "Provisioning": 1}));
    }
    stop_other.send(()).unwrap();
    other_task.await.unwrap().unwrap();
    stop.send(()).unwrap();
    task.await.unwrap().unwrap();
}
