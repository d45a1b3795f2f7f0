//! Hot loading from the plugin directory: versions swap at a batch boundary while events
//! flow, and nothing is lost or applied twice; broken versions never replace a running one.

use std::{
    path::Path,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use jetfold_host::{config::Config, daemon::Daemon, event::Event, sink::sqlite::SqliteSink};

use crate::support::{
    DaemonProcess, NatsServer, cache_dir, checkpoint, create_stream, daemon_dir, plugin,
    plugin_copy,
};

const RESOURCES: u64 = 500;

/// The `i`-th event of an endless compute-resource stream: resources registered in turn, then
/// switched between Active and Maintenance.
pub fn event(i: u64) -> Event {
    let r = i % RESOURCES;
    let round = i / RESOURCES;
    let (ty, payload) = match round {
        0 => (
            "ResourceRegistered",
            serde_json::json!({"name": format!("vm-{r}"), "kind": "vm", "region": "eu"}),
        ),
        n if n % 2 == 1 => ("StatusChanged", serde_json::json!({"to": "Active"})),
        _ => ("StatusChanged", serde_json::json!({"to": "Maintenance", "reason": "patch"})),
    };
    Event {
        sequence: 0,
        subject: format!("infra.resource.r-{r}.{ty}"),
        message_id: format!("swap-{i}"),
        event_type: ty.into(),
        aggregate_id: format!("r-{r}"),
        correlation_id: None,
        causation_id: None,
        time: chrono::DateTime::from_timestamp(1_767_225_600 + i as i64, 0).unwrap(),
        schema_version: 1,
        headers: vec![],
        payload: serde_json::to_vec(&payload).unwrap(),
        content_type: jetfold_host::event::JSON.into(),
    }
}

/// Publishes events `from..to`, waiting for the stream to store them.
pub async fn publish(js: &async_nats::jetstream::Context, from: u64, to: u64) {
    let mut acks = Vec::new();
    for i in from..to {
        acks.push(jetfold_host::nats::publish_event(js, &event(i)).await.unwrap());
    }
    for a in acks {
        a.await.unwrap();
    }
}

/// A daemon config for `dir`'s plugin directory, polled every 10 ms, into SQLite file `db`.
pub fn config(dir: &Path, nats: &NatsServer, db: &str) -> Config {
    let text = format!(
        "plugin-dir = \"plugins\"\nbatch-size = 50\nfetch-wait-ms = 50\nplugin-dir-poll-ms = 10\ncache-dir = \"{}\"\n[nats]\nurl = \"{}\"\n[sink]\nsqlite = \"{db}\"\n",
        cache_dir().display(),
        nats.url()
    );
    Config::parse(&text, dir.to_path_buf(), |_| None).unwrap()
}

/// Publishes events from `from` on, 50 at a time, until the returned flag is cleared; the
/// task returns the number published up to.
pub fn keep_publishing(
    js: &async_nats::jetstream::Context,
    from: u64,
) -> (Arc<AtomicBool>, tokio::task::JoinHandle<u64>) {
    let publishing = Arc::new(AtomicBool::new(true));
    let task = {
        let (js, publishing) = (js.clone(), publishing.clone());
        tokio::spawn(async move {
            let mut next = from;
            while publishing.load(Ordering::SeqCst) {
                publish(&js, next, next + 50).await;
                next += 50;
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            next
        })
    };
    (publishing, task)
}

/// The same component with a custom section appended: another digest, the same behaviour.
pub fn other_version(wasm: &[u8]) -> Vec<u8> {
    let (name, body) = (b"jetfold-test-version".as_slice(), b"2".as_slice());
    let mut section = vec![name.len() as u8];
    section.extend_from_slice(name);
    section.extend_from_slice(body);
    let mut out = wasm.to_vec();
    out.push(0); // custom section id
    out.push(section.len() as u8); // LEB128, < 128
    out.extend(section);
    out
}

/// Every read-model row and rejection a run left, and its checkpoint.
type Outcome = (Vec<(String, String)>, Vec<(i64, String, String)>, u64);

fn outcome(db: &Path) -> Outcome {
    let mut sink = SqliteSink::open(db).unwrap();
    let rows = sink.rows("compute_resources").unwrap();
    let conn = rusqlite::Connection::open(db).unwrap();
    let mut stmt =
        conn.prepare("SELECT seq, kind, message FROM jetfold_rejected ORDER BY seq").unwrap();
    let rejected = stmt
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    let seq = sink.checkpoint("compute-resource").unwrap().unwrap().last_seq;
    (rows, rejected, seq)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fifty_swaps_back_and_forth_lose_nothing_and_apply_nothing_twice() {
    plugin("compute-resource");
    let nats = NatsServer::start();
    let js = nats.jetstream().await;
    create_stream(&js, "INFRA", &["infra.>"]).await;
    publish(&js, 0, 5_000).await;

    // Events keep coming while versions swap.
    let publishing = Arc::new(AtomicBool::new(true));
    let publisher = {
        let (js, publishing) = (js.clone(), publishing.clone());
        tokio::spawn(async move {
            let mut next = 5_000;
            while publishing.load(Ordering::SeqCst) {
                publish(&js, next, next + 200).await;
                next += 200;
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            next
        })
    };

    let dir = daemon_dir(&["compute-resource"]);
    let wasm_path = dir.path().join("plugins/compute-resource/compute_resource.wasm");
    let a = std::fs::read(&wasm_path).unwrap();
    let b = other_version(&a);
    let daemon = Daemon::start(config(dir.path(), &nats, "swapped.db")).await.unwrap();
    let mut progress = daemon.progress("compute-resource").unwrap();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let supervisor = tokio::spawn(jetfold_host::daemon::supervise(daemon, None, async move {
        let _ = stopped.await;
    }));

    // 50 swaps, each written atomically into the plugin directory as an operator would;
    // each counts once the new version has folded its first event.
    let mut pauses = Vec::new();
    let mut digests = std::collections::BTreeSet::new();
    for k in 1..=50u64 {
        let next = if k % 2 == 1 { &b } else { &a };
        jetfold_host::component::write_atomically(&wasm_path, next).unwrap();
        let p = tokio::time::timeout(Duration::from_secs(60), progress.wait_for(|p| p.swaps == k))
            .await
            .unwrap_or_else(|_| panic!("swap {k} did not happen"))
            .unwrap()
            .clone();
        pauses.push(p.last_swap_pause.unwrap());
        digests.insert(p.digest);
    }
    publishing.store(false, Ordering::SeqCst);
    let published = publisher.await.unwrap();
    let total = {
        let stream = js.get_stream("INFRA").await.unwrap().info().await.unwrap().state.messages;
        assert_eq!(stream, published, "every published event is in the stream");
        stream
    };
    progress.wait_for(|p| p.committed_seq == total).await.unwrap();
    stop.send(()).unwrap();
    supervisor.await.unwrap().unwrap();
    assert!(digests.len() >= 2, "both versions committed batches: {digests:?}");

    // The same stream folded without swaps.
    let reference = Daemon::start(config(dir.path(), &nats, "reference.db")).await.unwrap();
    let mut done = reference.progress("compute-resource").unwrap();
    done.wait_for(|p| p.committed_seq == total).await.unwrap();
    reference.stop().await.unwrap();

    let swapped = outcome(&dir.path().join("swapped.db"));
    let clean = outcome(&dir.path().join("reference.db"));
    assert_eq!(swapped.2, total);
    assert_eq!(swapped.0.len() as u64, RESOURCES);
    assert_eq!(swapped.1, clean.1, "the same events rejected, for the same reasons");
    assert_eq!(swapped.0, clean.0, "the same read model, row by row");
    // Every event applied once: a row's version counts the events applied to its resource.
    let applied: u64 = swapped
        .0
        .iter()
        .map(|(_, doc)| {
            serde_json::from_str::<serde_json::Value>(doc).unwrap()["version"].as_u64().unwrap()
        })
        .sum();
    assert_eq!(applied + swapped.1.len() as u64, total);

    pauses.sort();
    let ms = |d: Duration| d.as_secs_f64() * 1e3;
    eprintln!(
        "swap pause over {} swaps (debug build): p50 {:.3} ms, p99 {:.3} ms, max {:.3} ms; {total} events",
        pauses.len(),
        ms(pauses[pauses.len() / 2]),
        ms(pauses[pauses.len() * 99 / 100]),
        ms(pauses[pauses.len() - 1])
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_plugin_directory_is_watched_and_a_broken_version_never_replaces_a_running_one() {
    plugin("compute-resource");
    plugin("person-archive");
    plugin("event-counter");
    let nats = NatsServer::start();
    let js = nats.jetstream().await;
    create_stream(&js, "INFRA", &["infra.>"]).await;
    publish(&js, 0, 100).await;
    let dir = daemon_dir(&["compute-resource"]);
    let plugin_dir = dir.path().join("plugins/compute-resource");
    let wasm_path = plugin_dir.join("compute_resource.wasm");
    let good = std::fs::read(&wasm_path).unwrap();
    let daemon = Daemon::start(config(dir.path(), &nats, "jetfold.db")).await.unwrap();
    let mut progress = daemon.progress("compute-resource").unwrap();
    let digest = progress.wait_for(|p| p.committed_seq == 100).await.unwrap().digest.clone();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let supervisor = tokio::spawn(jetfold_host::daemon::supervise(daemon, None, async move {
        let _ = stopped.await;
    }));

    // Broken versions: not a component, a component of the wrong world, a manifest with an
    // unknown key. Each time, more events are folded by the version that was running.
    let policy = crate::support::plugin("person-archive").join("person_archive.wasm");
    let manifest = std::fs::read_to_string(plugin_dir.join("plugin.toml")).unwrap();
    let mut published = 100;
    let mut previous = None;
    for (file, bytes, reason) in [
        ("compute_resource.wasm", b"\0asm but not really".to_vec(), "compute_resource.wasm"),
        ("compute_resource.wasm", std::fs::read(&policy).unwrap(), "projection"),
        ("plugin.toml", format!("{manifest}\nsurprise = true\n").into_bytes(), "surprise"),
    ] {
        let path = plugin_dir.join(file);
        let before = std::fs::read(&path).unwrap();
        jetfold_host::component::write_atomically(&path, &bytes).unwrap();
        let refused = progress.wait_for(|p| p.refused.is_some() && p.refused != previous);
        let refusal = refused.await.unwrap().refused.clone().unwrap();
        assert!(refusal.reason.contains(reason), "{file}: {refusal:?}");
        publish(&js, published, published + 50).await;
        published += 50;
        let p = progress.wait_for(|p| p.committed_seq == published).await.unwrap().clone();
        assert_eq!(
            (p.digest.as_str(), p.swaps),
            (digest.as_str(), 0),
            "{file} replaced the running version"
        );
        // The good version back: nothing to swap; the refusal stays on record until a newer
        // version loads.
        jetfold_host::component::write_atomically(&path, &before).unwrap();
        previous = Some(refusal);
    }
    assert_eq!(std::fs::read(&wasm_path).unwrap(), good);

    // A new plugin written into the directory starts and folds the stream.
    let counter = crate::support::plugin_copy("event-counter");
    let dest = dir.path().join("plugins/event-counter");
    std::fs::create_dir_all(&dest).unwrap();
    // The component first, the manifest last: a plugin appears when its manifest does.
    std::fs::copy(counter.path().join("event_counter.wasm"), dest.join("event_counter.wasm"))
        .unwrap();
    jetfold_host::component::write_atomically(
        &dest.join("plugin.toml"),
        &std::fs::read(counter.path().join("plugin.toml")).unwrap(),
    )
    .unwrap();
    let db = dir.path().join("jetfold.db");
    crate::support::eventually(60, "the new plugin folded the stream", || {
        crate::support::checkpoint(&db, "event-counter") == published
    })
    .await;

    // A removed plugin stops: its worker ends (and its checkpoint stays).
    std::fs::remove_dir_all(&plugin_dir).unwrap();
    tokio::time::timeout(Duration::from_secs(60), async {
        while progress.changed().await.is_ok() {}
    })
    .await
    .expect("the removed plugin's worker did not stop");
    assert_eq!(crate::support::checkpoint(&db, "compute-resource"), published);

    stop.send(()).unwrap();
    supervisor.await.unwrap().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_reloads_the_config_file_and_leaves_unchanged_plugins_alone() {
    plugin("compute-resource");
    plugin("event-counter");
    let nats = NatsServer::start();
    let js = nats.jetstream().await;
    create_stream(&js, "INFRA", &["infra.>"]).await;
    publish(&js, 0, 100).await;
    let dir = daemon_dir(&["compute-resource", "event-counter"]);
    let config_file = dir.path().join("jetfold.toml");
    let write_config = |counter_enabled: bool| {
        let text = format!(
            "plugin-dir = \"plugins\"\nplugin-dir-poll-ms = 0\ncache-dir = \"{}\"\n[nats]\nurl = \"{}\"\n[sink]\nsqlite = \"jetfold.db\"\n[plugins.event-counter]\nenabled = {counter_enabled}\n",
            cache_dir().display(),
            nats.url()
        );
        jetfold_host::component::write_atomically(&config_file, text.as_bytes()).unwrap();
    };
    write_config(true);
    let log = dir.path().join("daemon.log");
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_jetfold"))
        .args(["run", "--config"])
        .arg(&config_file)
        .env("JETFOLD_LOG", "info")
        .stdout(std::process::Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    let signal = |name: &str| {
        let status = std::process::Command::new("kill")
            .args([format!("-{name}"), child.id().to_string()])
            .status()
            .unwrap();
        assert!(status.success());
    };
    let db = dir.path().join("jetfold.db");
    let checkpoint = |plugin: &str| crate::support::checkpoint(&db, plugin);
    let log_text = || std::fs::read_to_string(&log).unwrap_or_default();
    let both_at = |seq: u64| {
        move || checkpoint("compute-resource") == seq && checkpoint("event-counter") == seq
    };
    crate::support::eventually(60, "both plugins folded the stream", both_at(100)).await;

    // Disable one plugin in the file and send SIGHUP: it stops, the other goes on.
    write_config(false);
    signal("HUP");
    crate::support::eventually(60, "the disabled plugin stopped", || {
        log_text().lines().any(|l| {
            l.contains("plugin disabled in the config: stopped") && l.contains("event-counter")
        })
    })
    .await;
    publish(&js, 100, 150).await;
    crate::support::eventually(60, "compute-resource went on", || {
        checkpoint("compute-resource") == 150
    })
    .await;
    assert_eq!(checkpoint("event-counter"), 100, "a stopped plugin folds nothing");

    // Enable it again: it resumes from its checkpoint.
    write_config(true);
    signal("HUP");
    crate::support::eventually(60, "the re-enabled plugin caught up", both_at(150)).await;
    let text = log_text();
    assert!(
        !text.contains("new version takes over"),
        "nothing changed the running version:\n{text}"
    );
    assert_eq!(text.matches("plugin started").count(), 3, "{text}");

    signal("TERM");
    let status = child.wait().unwrap();
    assert!(status.success(), "SIGTERM drains and exits 0:\n{}", log_text());
}

/// With the settings a user gets (`plugin-dir-poll-ms` unset: every second), the running
/// daemon sees a plugin directory moved in, a new component copied over a running one and an
/// edited manifest, without a SIGHUP.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_plugin_directory_is_polled_with_the_default_settings() {
    let nats = NatsServer::start();
    let js = nats.jetstream().await;
    create_stream(&js, "INFRA", &["infra.>"]).await;
    let dir = daemon_dir(&["event-counter"]);
    let config = dir.path().join("jetfold.toml");
    // Only what the README requires, and where NATS and the database are.
    let text = format!(
        "plugin-dir = \"plugins\"\n[nats]\nurl = \"{}\"\n[sink]\nsqlite = \"jetfold.db\"\n[http]\nlisten = \"\"\n",
        nats.url()
    );
    std::fs::write(&config, text).unwrap();
    let db = dir.path().join("jetfold.db");
    let daemon = DaemonProcess::start(&config, &dir.path().join("daemon.log"));
    publish(&js, 0, 10).await;
    daemon.wait(60, "event-counter folding", || checkpoint(&db, "event-counter") == 10).await;

    // A new plugin directory, moved in whole.
    let staged = tempfile::tempdir_in(dir.path()).unwrap();
    let copy = plugin_copy("compute-resource");
    for file in ["plugin.toml", "compute_resource.wasm"] {
        std::fs::copy(copy.path().join(file), staged.path().join(file)).unwrap();
    }
    std::fs::rename(staged.path(), dir.path().join("plugins/compute-resource")).unwrap();
    daemon.wait(30, "the new plugin folding", || checkpoint(&db, "compute-resource") == 10).await;

    // A new build of a running plugin's component (another digest), copied over it.
    let wasm = dir.path().join("plugins/event-counter/event_counter.wasm");
    let new = other_version(&std::fs::read(&wasm).unwrap());
    let digest = jetfold_host::component::PluginDigest::of(&new).hex();
    let tmp = dir.path().join("plugins/event-counter/.new.wasm");
    std::fs::write(&tmp, &new).unwrap();
    std::fs::rename(&tmp, &wasm).unwrap();
    daemon
        .wait(30, "the new component taking over", || {
            daemon.lines().iter().any(|l| {
                l["fields"]["message"].as_str().is_some_and(|m| m.starts_with("new version handed"))
                    && l["fields"]["digest"] == digest.as_str()
            })
        })
        .await;
    publish(&js, 10, 20).await;
    daemon
        .wait(30, "a commit by the new component", || {
            let mut sink = SqliteSink::open(&db).unwrap();
            sink.checkpoint("event-counter").unwrap().is_some_and(|c| c.digest == digest)
        })
        .await;

    // An edited manifest is a new version of the plugin too.
    let manifest = dir.path().join("plugins/event-counter/plugin.toml");
    let text = std::fs::read_to_string(&manifest).unwrap();
    std::fs::write(&manifest, text.replace("description = ", "description = \"edited\"\n# "))
        .unwrap();
    daemon
        .wait(30, "the edited manifest loaded", || {
            daemon
                .lines()
                .iter()
                .filter(|l| {
                    l["fields"]["message"]
                        .as_str()
                        .is_some_and(|m| m.starts_with("new version handed"))
                        && l["fields"]["plugin"] == "event-counter"
                })
                .count()
                == 2
        })
        .await;
    assert_eq!(daemon.stop(), Some(0));
}
