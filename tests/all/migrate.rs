//! A new version that changes `[state] version` and exports `migrate`: every stored state is
//! converted when it takes over (hot, while events flow, or at a restart), in one commit;
//! nothing is lost or counted twice, and a version that cannot convert never replaces the
//! running one. Without `migrate`, the new version is rebuilt from the stream beside the
//! running one and takes over when caught up.

use std::{collections::BTreeMap, path::Path, sync::atomic::Ordering, time::Duration};

use jetfold_host::{component::write_atomically, daemon::Daemon};

use crate::support::{NatsServer, create_stream, daemon_dir, plugin_copy};
use crate::swap::{config, event, keep_publishing, publish};

/// Installs the state-version-2 event counter over `plugins/<dir_name>`, under `name`: the
/// component first, the manifest last, as an operator would.
fn install_v2(plugins: &Path, dir_name: &str, name: &str) {
    let v2 = plugin_copy("event-counter-v2");
    let dest = plugins.join(dir_name);
    std::fs::copy(v2.path().join("event_counter_v2.wasm"), dest.join("event_counter_v2.wasm"))
        .unwrap();
    let manifest = std::fs::read_to_string(v2.path().join("plugin.toml")).unwrap();
    let manifest = manifest.replace("name = \"event-counter\"", &format!("name = \"{name}\""));
    write_atomically(&dest.join("plugin.toml"), manifest.as_bytes()).unwrap();
}

/// Events per aggregate among the first `total` events of the stream.
fn expected_counts(total: u64) -> BTreeMap<String, u64> {
    let mut counts = BTreeMap::new();
    for i in 0..total {
        *counts.entry(event(i).aggregate_id).or_default() += 1;
    }
    counts
}

/// The `event_counts` rows' counts, and the checkpoint's state version and every stored state.
fn counted(db: &Path) -> (BTreeMap<String, u64>, u32, Vec<serde_json::Value>) {
    let mut sink = jetfold_host::sink::sqlite::SqliteSink::open(db).unwrap();
    let rows = sink.rows("event_counts").unwrap();
    let counts = rows
        .into_iter()
        .map(|(k, doc)| {
            let doc: serde_json::Value = serde_json::from_str(&doc).unwrap();
            (k, doc["events"].as_u64().unwrap())
        })
        .collect();
    let version = sink.checkpoint("event-counter").unwrap().unwrap().state_version;
    let states = sink
        .states("event-counter")
        .unwrap()
        .into_iter()
        .map(|(_, s)| serde_json::from_slice(&s).unwrap())
        .collect();
    (counts, version, states)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_state_version_converts_every_state_once_while_events_flow() {
    plugin_copy("event-counter-v2");
    let nats = NatsServer::start();
    let js = nats.jetstream().await;
    create_stream(&js, "INFRA", &["infra.>"]).await;
    publish(&js, 0, 1_000).await;
    let dir = daemon_dir(&["event-counter", "compute-resource"]);
    let plugins = dir.path().join("plugins");
    let db = dir.path().join("jetfold.db");
    let daemon = Daemon::start(config(dir.path(), &nats, "jetfold.db")).await.unwrap();
    let mut progress = daemon.progress("event-counter").unwrap();
    let mut resources = daemon.progress("compute-resource").unwrap();
    let v1 = progress.wait_for(|p| p.committed_seq == 1_000).await.unwrap().digest.clone();
    let (counts, version, states) = counted(&db);
    assert_eq!(counts, expected_counts(1_000));
    assert_eq!(version, 1);
    assert!(states.iter().all(|s| s.is_u64()), "version 1 stores bare counts");
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let supervisor = tokio::spawn(jetfold_host::daemon::supervise(daemon, None, async move {
        let _ = stopped.await;
    }));

    // Version 2 arrives while events keep coming.
    let (publishing, publisher) = keep_publishing(&js, 1_000);
    install_v2(&plugins, "event-counter", "event-counter");
    let swapped =
        tokio::time::timeout(Duration::from_secs(60), progress.wait_for(|p| p.swaps == 1))
            .await
            .expect("version 2 did not take over")
            .unwrap()
            .clone();
    assert_ne!(swapped.digest, v1);
    assert_eq!(swapped.refused, None);
    // Let version 2 fold a while after the takeover.
    let after = swapped.committed_seq + 300;
    progress.wait_for(|p| p.committed_seq >= after).await.unwrap();
    publishing.store(false, Ordering::SeqCst);
    let total = publisher.await.unwrap();
    progress.wait_for(|p| p.committed_seq == total).await.unwrap();

    // Every event counted once across the two versions, every state in version 2.
    let (counts, version, states) = counted(&db);
    assert_eq!(counts, expected_counts(total));
    assert_eq!(version, 2);
    assert_eq!(states.len(), 500);
    for state in &states {
        assert!(state["events"].is_u64(), "a version 2 state: {state}");
    }
    let converted_only = states.iter().filter(|s| s["last_type"].is_null()).count();
    assert!(converted_only < 500, "version 2 folded events after the takeover");

    // A version that cannot convert the states it would take over is refused, and the running
    // one goes on: the compute-resource states are not counts.
    let running = resources.borrow().digest.clone();
    install_v2(&plugins, "compute-resource", "compute-resource");
    // A version takes over (or is refused) when the next events arrive.
    publish(&js, total, total + 20).await;
    let refused = resources.wait_for(|p| p.refused.is_some()).await.unwrap().clone();
    let reason = refused.refused.unwrap().reason;
    assert!(reason.contains("a version 1 state is a count"), "{reason}");
    let p = resources.wait_for(|p| p.committed_seq == total + 20).await.unwrap().clone();
    assert_eq!((p.digest, p.swaps), (running, 0));

    stop.send(()).unwrap();
    supervisor.await.unwrap().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn states_of_an_earlier_version_are_converted_at_start_and_a_downgrade_is_refused() {
    plugin_copy("event-counter-v2");
    let nats = NatsServer::start();
    let js = nats.jetstream().await;
    create_stream(&js, "INFRA", &["infra.>"]).await;
    publish(&js, 0, 700).await;
    let dir = daemon_dir(&["event-counter"]);
    let plugins = dir.path().join("plugins");
    let db = dir.path().join("jetfold.db");
    let daemon = Daemon::start(config(dir.path(), &nats, "jetfold.db")).await.unwrap();
    let mut progress = daemon.progress("event-counter").unwrap();
    progress.wait_for(|p| p.committed_seq == 700).await.unwrap();
    daemon.stop().await.unwrap();
    let v1_manifest = std::fs::read(plugins.join("event-counter/plugin.toml")).unwrap();

    // Stopped with version 1's states; started with version 2: converted before any event.
    install_v2(&plugins, "event-counter", "event-counter");
    let daemon = Daemon::start(config(dir.path(), &nats, "jetfold.db")).await.unwrap();
    let mut progress = daemon.progress("event-counter").unwrap();
    crate::support::eventually(60, "the states converted at start", || counted(&db).1 == 2).await;
    let (counts, _, states) = counted(&db);
    assert_eq!(counts, expected_counts(700));
    assert!(states.iter().all(|s| s["events"].is_u64() && s["last_type"].is_null()));
    assert_eq!(crate::support::checkpoint(&db, "event-counter"), 700);
    publish(&js, 700, 1_200).await;
    progress.wait_for(|p| p.committed_seq == 1_200).await.unwrap();
    daemon.stop().await.unwrap();
    assert_eq!(counted(&db).0, expected_counts(1_200));

    // Back to version 1, which cannot read version 2's states: it does not start.
    write_atomically(&plugins.join("event-counter/plugin.toml"), &v1_manifest).unwrap();
    let refused = Daemon::start(config(dir.path(), &nats, "jetfold.db")).await.err().unwrap();
    let message = format!("{refused:#}");
    assert!(message.contains("state version 2") && message.contains("`migrate`"), "{message}");
    assert_eq!(counted(&db).1, 2, "nothing was changed");
}

/// The plugin's manifest in `plugins/<name>` with `[state] version = 2` added.
fn bump_state_version(plugins: &Path, name: &str) {
    let path = plugins.join(name).join("plugin.toml");
    let manifest = std::fs::read_to_string(&path).unwrap();
    let bumped = if manifest.contains("[state]") {
        manifest.replace("[state]", "[state]\nversion = 2")
    } else {
        format!("{manifest}\n[state]\nversion = 2\n")
    };
    write_atomically(&path, bumped.as_bytes()).unwrap();
}

/// The names of the SQLite file's tables.
fn tables(db: &Path) -> Vec<String> {
    let conn = rusqlite::Connection::open(db).unwrap();
    let mut stmt = conn.prepare("SELECT name FROM sqlite_master WHERE type = 'table'").unwrap();
    stmt.query_map([], |r| r.get(0)).unwrap().collect::<Result<_, _>>().unwrap()
}

/// Messages stored on `stream`.
async fn stored(js: &async_nats::jetstream::Context, stream: &str) -> u64 {
    js.get_stream(stream).await.unwrap().info().await.unwrap().state.messages
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_state_version_without_migrate_is_rebuilt_beside_the_live_one_then_takes_over() {
    let nats = NatsServer::start();
    let js = nats.jetstream().await;
    create_stream(&js, "INFRA", &["infra.>"]).await;
    create_stream(&js, "PEOPLE", &["people.person.>", "people.clock.>"]).await;
    create_stream(&js, "COMMANDS", &["people.commands.>"]).await;
    publish(&js, 0, 3_000).await;
    let fixture = crate::support::plugin("person-archive").join("fixtures/events.jsonl");
    let people = crate::support::publish_fixture(&js, &fixture).await as u64;
    let dir = daemon_dir(&["event-counter", "person-archive"]);
    let plugins = dir.path().join("plugins");
    let db = dir.path().join("jetfold.db");
    let daemon = Daemon::start(config(dir.path(), &nats, "jetfold.db")).await.unwrap();
    let mut counter = daemon.progress("event-counter").unwrap();
    let mut policy = daemon.progress("person-archive").unwrap();
    let v1 = counter.wait_for(|p| p.committed_seq == 3_000).await.unwrap().digest.clone();
    policy.wait_for(|p| p.committed_seq == people).await.unwrap();
    let commands = stored(&js, "COMMANDS").await;
    assert!(commands > 0, "the policy decided commands");
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let supervisor = tokio::spawn(jetfold_host::daemon::supervise(daemon, None, async move {
        let _ = stopped.await;
    }));

    // The same component declaring state version 2, without `migrate`: it rebuilds from the
    // stream start into tables of its own while version 1 goes on folding new events.
    let (publishing, publisher) = keep_publishing(&js, 3_000);
    bump_state_version(&plugins, "event-counter");
    let wait = Duration::from_secs(60);
    // A watch shows the latest progress only: on a busy machine the rebuild may be over by
    // the time this task looks, so either sight will do.
    let seen = counter.wait_for(|p| p.rebuild.is_some() || p.swaps == 1);
    let seen = tokio::time::timeout(wait, seen).await.expect("no rebuild started").unwrap().clone();
    if seen.rebuild.is_some() {
        assert_eq!(seen.digest, v1, "version 1 stays live while version 2 rebuilds");
    }
    let watching = counter.clone();
    let took_over = tokio::time::timeout(wait, counter.wait_for(|p| p.swaps == 1))
        .await
        .unwrap_or_else(|_| {
            panic!("the rebuilt version did not take over: {:?}", watching.borrow())
        })
        .unwrap()
        .clone();
    assert_eq!(took_over.rebuild, None);
    let at = took_over.swapped_at_seq.unwrap();
    assert!(at > 3_000, "version 1 folded events during the rebuild (took over at {at})");
    // The new version goes on live.
    counter.wait_for(|p| p.committed_seq >= at + 200).await.unwrap();
    publishing.store(false, Ordering::SeqCst);
    let total = publisher.await.unwrap();
    counter.wait_for(|p| p.committed_seq == total).await.unwrap();
    let (counts, version, states) = counted(&db);
    assert_eq!(counts, expected_counts(total), "every event counted once");
    assert_eq!(version, 2);
    assert_eq!(states.len(), 500);
    let staging = tables(&db).into_iter().filter(|t| t.ends_with("__rebuild")).collect::<Vec<_>>();
    assert!(staging.is_empty(), "the rebuilt tables replaced the live ones: {staging:?}");
    let mut sink = jetfold_host::sink::sqlite::SqliteSink::open(&db).unwrap();
    assert!(sink.states("event-counter__rebuild").unwrap().is_empty());
    assert_eq!(sink.checkpoint("event-counter__rebuild").unwrap(), None);

    // A policy rebuilt the same way decides its past commands again, but publishes none of
    // them: they were published when they were decided.
    bump_state_version(&plugins, "person-archive");
    tokio::time::timeout(wait, policy.wait_for(|p| p.swaps == 1))
        .await
        .expect("the rebuilt policy did not take over")
        .unwrap();
    assert_eq!(stored(&js, "COMMANDS").await, commands, "a rebuild publishes nothing");
    let mut sink = jetfold_host::sink::sqlite::SqliteSink::open(&db).unwrap();
    let checkpoint = sink.checkpoint("person-archive").unwrap().unwrap();
    assert_eq!((checkpoint.last_seq, checkpoint.state_version), (people, 2));

    stop.send(()).unwrap();
    supervisor.await.unwrap().unwrap();
}

/// A batch of `plugin` writing `rows` into `items` (under `suffix`), committed at `seq`.
fn batch(
    plugin: &str,
    suffix: &str,
    seq: u64,
    rows: &[(&str, &str)],
) -> jetfold_host::sink::Commit {
    use jetfold_host::effect::Effect;
    let raw = |s: &str| serde_json::value::RawValue::from_string(s.to_string()).unwrap();
    jetfold_host::sink::Commit {
        plugin: plugin.into(),
        digest: format!("digest-{plugin}"),
        last_seq: seq,
        state_version: 2,
        snapshot_seq: seq,
        table_suffix: suffix.into(),
        effects: rows
            .iter()
            .map(|(k, doc)| {
                (seq, Effect::Upsert { table: "items".into(), key: k.to_string(), row: raw(doc) })
            })
            .collect(),
        states: rows.iter().map(|(k, _)| (k.to_string(), b"{}".to_vec())).collect(),
        ..Default::default()
    }
}

/// Promoting a staging build twice in a row, in SQLite and in PostgreSQL: each time the live
/// table, states and checkpoint become exactly the staging ones, and nothing of staging stays.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_staging_build_replaces_the_live_tables_in_one_step_in_both_databases() {
    use jetfold_host::sink::{Sink, SinkTarget};
    let dir = tempfile::tempdir().unwrap();
    let url = crate::daemon::postgres_url();
    let schema = format!("jetfold_promote_{}", std::process::id());
    let targets = [
        SinkTarget::Sqlite(dir.path().join("promote.db")),
        SinkTarget::Postgres { url: url.clone(), schema: schema.clone() },
    ];
    tokio::task::spawn_blocking(move || {
        for target in targets {
            let mut sink = Sink::open(&target).unwrap();
            let suffix = jetfold_host::daemon::REBUILD_SUFFIX;
            let staging = format!("p{suffix}");
            let items = vec!["items".to_string()];
            sink.ensure_tables(&items).unwrap();
            sink.commit(&batch("p", "", 5, &[("a", r#"{"v":"live"}"#), ("old", "{}")])).unwrap();
            for round in 1..=2 {
                let built = vec![format!("items{suffix}")];
                sink.reset_staging(&staging, &built).unwrap();
                sink.ensure_tables(&built).unwrap();
                let doc = format!(r#"{{"v":"rebuilt {round}"}}"#);
                sink.commit(&batch(&staging, suffix, 7, &[("a", &doc)])).unwrap();
                sink.promote_staging(&staging, "p", &items, suffix).unwrap();
                assert_eq!(sink.rows("items").unwrap().len(), 1, "{target:?}");
                let (_, row) = &sink.rows("items").unwrap()[0];
                let row: serde_json::Value = serde_json::from_str(row).unwrap();
                assert_eq!(row["v"], format!("rebuilt {round}"), "{target:?}");
                let states = sink.states("p").unwrap();
                assert_eq!(states.iter().map(|(k, _)| k.as_str()).collect::<Vec<_>>(), ["a"]);
                let checkpoint = sink.checkpoint("p").unwrap().unwrap();
                assert_eq!(
                    (checkpoint.last_seq, checkpoint.digest.as_str()),
                    (7, "digest-p__rebuild")
                );
                assert_eq!(sink.checkpoint(&staging).unwrap(), None);
                assert!(sink.states(&staging).unwrap().is_empty());
            }
        }
        let mut client = postgres::Client::connect(&url, postgres::NoTls).unwrap();
        client.batch_execute(&format!("DROP SCHEMA \"{schema}\" CASCADE")).unwrap();
    })
    .await
    .unwrap();
}

/// A version with a new state version and `migrate`, promoted at a sequence (`--at-seq`, here
/// the plain directory's `promote-at-seq`): it folds the event at that very sequence from the
/// converted state of its key, so nothing is rejected and every event counts once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_version_promoted_at_a_sequence_folds_it_from_the_converted_states() {
    plugin_copy("event-counter-v2");
    let nats = NatsServer::start();
    let js = nats.jetstream().await;
    create_stream(&js, "INFRA", &["infra.>"]).await;
    publish(&js, 0, 1_000).await;
    let dir = daemon_dir(&["event-counter"]);
    let plugins = dir.path().join("plugins");
    let db = dir.path().join("jetfold.db");
    let config = config(dir.path(), &nats, "jetfold.db");
    let mut daemon = Daemon::start(config.clone()).await.unwrap();
    let mut progress = daemon.progress("event-counter").unwrap();
    progress.wait_for(|p| p.committed_seq == 1_000).await.unwrap();
    // The sequence first, then the new version, as the README says; handed over at once.
    std::fs::write(plugins.join("event-counter/promote-at-seq"), "1200\n").unwrap();
    install_v2(&plugins, "event-counter", "event-counter");
    daemon.reload(config).await;
    // The events at and after 1200, in batches that straddle it.
    publish(&js, 1_000, 1_500).await;
    let p = progress.wait_for(|p| p.committed_seq == 1_500).await.unwrap().clone();
    assert_eq!((p.swaps, p.swapped_at_seq), (1, Some(1_200)), "{p:?}");
    assert_eq!(p.rejected, 0, "no event was folded from an unconverted state: {p:?}");
    daemon.stop().await.unwrap();
    let (counts, version, _) = counted(&db);
    assert_eq!(counts, expected_counts(1_500));
    assert_eq!(version, 2);
}
