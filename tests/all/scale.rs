//! Horizontal scale: two `jetfold run` processes split the keys of the same plugins
//! (`[partition]` 0 and 1 of 2) over one nats-server and one PostgreSQL schema, and one of them
//! is killed and restarted while they work. Together they leave exactly what one daemon folding
//! alone leaves (the same events folded offline): every row, state, rejection and command,
//! once.

use std::{
    collections::BTreeMap,
    path::Path,
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use jetfold_host::sink::{Sink, SinkTarget};

use crate::crash::Rng;
use crate::support::{NatsServer, cache_dir, create_stream, publish_fixture};

fn spawn_node(config: &Path, log: &Path) -> Child {
    let log = std::fs::OpenOptions::new().create(true).append(true).open(log).unwrap();
    Command::new(env!("CARGO_BIN_EXE_jetfold"))
        .args(["run", "--log-format", "json", "--config"])
        .arg(config)
        .env("JETFOLD_LOG", "info")
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .unwrap()
}

/// The checkpoint of every plugin and partition in the schema (0 before the first commit).
async fn checkpoints(target: &SinkTarget) -> BTreeMap<String, u64> {
    let target = target.clone();
    // The PostgreSQL client blocks: off the async threads.
    tokio::task::spawn_blocking(move || {
        let mut all = BTreeMap::new();
        let Ok(mut sink) = Sink::open(&target) else { return all };
        for plugin in ["compute-resource", "person-archive"] {
            for index in 0..2 {
                let name = format!("{plugin}#{index}/2");
                let seq = sink.checkpoint(&name).ok().flatten().map_or(0, |c| c.last_seq);
                all.insert(name, seq);
            }
        }
        all
    })
    .await
    .unwrap()
}

type States = BTreeMap<String, serde_json::Value>;

/// The read model's rows, each plugin's states and rejection count, and whether the policy's
/// outbox is empty; then the schema is dropped.
fn outcome(url: &str, schema: &str) -> (States, BTreeMap<String, (States, usize)>, bool) {
    let target = SinkTarget::Postgres { url: url.to_string(), schema: schema.to_string() };
    let mut sink = Sink::open(&target).unwrap();
    let json = |s: &str| serde_json::from_str::<serde_json::Value>(s).unwrap();
    let rows =
        sink.rows("compute_resources").unwrap().into_iter().map(|(k, d)| (k, json(&d))).collect();
    let mut client = postgres::Client::connect(url, postgres::NoTls).unwrap();
    let mut plugins = BTreeMap::new();
    for name in ["compute-resource", "person-archive"] {
        let states = sink
            .states(name)
            .unwrap()
            .into_iter()
            .map(|(k, s)| (k, serde_json::from_slice(&s).unwrap()))
            .collect();
        let rejected: i64 = client
            .query_one(
                &format!("SELECT COUNT(*) FROM \"{schema}\".jetfold_rejected WHERE plugin = $1"),
                &[&name],
            )
            .unwrap()
            .get(0);
        plugins.insert(name.to_string(), (states, rejected as usize));
    }
    let outbox_empty = sink.outbox("person-archive").unwrap().is_empty();
    client.batch_execute(&format!("DROP SCHEMA \"{schema}\" CASCADE")).unwrap();
    (rows, plugins, outbox_empty)
}

/// `jetfold_events_total` of `plugin` on the daemon whose JSON log is `log`.
fn events_folded(log: &Path, plugin: &str) -> u64 {
    let text = std::fs::read_to_string(log).unwrap();
    let address = text
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .find_map(|l| l["fields"]["address"].as_str().map(str::to_string))
        .expect("the daemon logs its HTTP address");
    let (code, body) = crate::http::get(&address, "/metrics");
    assert_eq!(code, 200);
    crate::http::sample(&body, &format!("jetfold_events_total{{plugin=\"{plugin}\"}}")) as u64
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_daemons_split_the_keys_and_together_fold_every_event_exactly_once() {
    let crate::crash::Workload { dir, infra_file, people_file, expected_infra, expected_people } =
        crate::crash::workload(&mut Rng(0x5CA1E));

    let nats = NatsServer::start();
    let js = nats.jetstream().await;
    create_stream(&js, "INFRA", &["infra.>"]).await;
    create_stream(&js, "PEOPLE", &["people.person.>", "people.clock.>"]).await;
    create_stream(&js, "COMMANDS", &["people.commands.>"]).await;
    assert_eq!(publish_fixture(&js, &infra_file).await, 15_000);
    assert_eq!(publish_fixture(&js, &people_file).await, 5_000);

    let url = crate::daemon::postgres_url();
    let schema = format!("jetfold_scale_{}", std::process::id());
    let target = SinkTarget::Postgres { url: url.clone(), schema: schema.clone() };
    let nodes: Vec<(std::path::PathBuf, std::path::PathBuf)> = (0..2)
        .map(|index| {
            let config = dir.path().join(format!("node-{index}.toml"));
            std::fs::write(
                &config,
                format!(
                    "name = \"node-{index}\"\nplugin-dir = \"plugins\"\nbatch-size = 200\nfetch-wait-ms = 50\nack-wait-secs = 2\n\
                     cache-dir = \"{}\"\n[partition]\nindex = {index}\ncount = 2\n[http]\nlisten = \"127.0.0.1:0\"\n\
                     [nats]\nurl = \"{}\"\n[sink]\npostgres = \"{url}\"\nschema = \"{schema}\"\n",
                    cache_dir().display(),
                    nats.url()
                ),
            )
            .unwrap();
            (config, dir.path().join(format!("node-{index}.log")))
        })
        .collect();
    let mut children: Vec<Child> = nodes.iter().map(|(c, l)| spawn_node(c, l)).collect();
    let log_of = |i: usize| std::fs::read_to_string(&nodes[i].1).unwrap_or_default();

    // node-0 is killed once it has committed part of its share, and started again.
    let deadline = Instant::now() + Duration::from_secs(120);
    while checkpoints(&target).await["compute-resource#0/2"] < 3_000 {
        assert!(Instant::now() < deadline, "node-0 made no progress:\n{}", log_of(0));
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    children[0].kill().unwrap();
    children[0].wait().unwrap();
    let killed_at = checkpoints(&target).await["compute-resource#0/2"];
    assert!(killed_at < 15_000, "killed before the end ({killed_at})");
    children[0] = spawn_node(&nodes[0].0, &nodes[0].1);

    let deadline = Instant::now() + Duration::from_secs(300);
    loop {
        let all = checkpoints(&target).await;
        let done = all
            .iter()
            .all(|(name, seq)| *seq == if name.starts_with("compute") { 15_000 } else { 5_000 });
        if done {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "not finished: {all:?}\nnode-0:\n{}\nnode-1:\n{}",
            log_of(0),
            log_of(1)
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // node-1, never stopped, folded part of the resources' events, not all, and none twice.
    let by_one = events_folded(&nodes[1].1, "compute-resource");
    assert!(by_one > 2_000 && by_one < 13_000, "node-1 folded {by_one} of 15,000");
    for child in &mut children {
        Command::new("kill").args(["-TERM", &child.id().to_string()]).status().unwrap();
        assert_eq!(child.wait().unwrap().code(), Some(0), "{}\n{}", log_of(0), log_of(1));
    }

    // What they left together is what one daemon leaves.
    let (rows, plugins, outbox_empty) =
        tokio::task::spawn_blocking(move || outcome(&url, &schema)).await.unwrap();
    assert_eq!(rows.len(), expected_infra.rows.len());
    assert!(rows == expected_infra.rows, "read model differs from one daemon's");
    for (name, expected) in
        [("compute-resource", &expected_infra), ("person-archive", &expected_people)]
    {
        let (states, rejected) = &plugins[name];
        assert!(*states == expected.states, "{name}: states differ from one daemon's");
        assert_eq!(*rejected, expected.rejected, "{name}: rejections");
    }
    assert!(outbox_empty, "every emitted command was published");

    // Every command published once.
    crate::crash::assert_commands_once(&js, &expected_people).await;
}
