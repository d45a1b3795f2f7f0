//! The fleet registry: two daemons sharing one NATS server follow what operators push, roll
//! back, pause, resume, shadow and promote with `jetfold plugin`, and refuse a component that
//! does not match its digest or a signature they do not trust.

use std::path::{Path, PathBuf};

use jetfold_host::{config::Config, daemon::Daemon, sink::sqlite::SqliteSink};

use crate::support::{
    DaemonProcess, NatsServer, cache_dir, create_stream, eventually, jetfold, plugin,
};
use crate::swap::{other_version, publish};

/// A nats-server whose INFRA stream holds 100 compute-resource events, the built plugin, a
/// temporary directory and in it the `jetfold plugin` CLI's config.
struct Fleet {
    built: PathBuf,
    nats: NatsServer,
    js: async_nats::jetstream::Context,
    root: tempfile::TempDir,
    cli: PathBuf,
}

impl Fleet {
    async fn start() -> Fleet {
        let built = plugin("compute-resource");
        let nats = NatsServer::start();
        let js = nats.jetstream().await;
        create_stream(&js, "INFRA", &["infra.>"]).await;
        publish(&js, 0, 100).await;
        let root = tempfile::tempdir().unwrap();
        let cli = root.path().join("cli.toml");
        let text = format!("plugin-dir = \".\"\n[nats]\nurl = \"{}\"\n", nats.url());
        std::fs::write(&cli, text).unwrap();
        Fleet { built, nats, js, root, cli }
    }
}

/// A daemon named `name` that follows the registry, in a directory of its own.
fn daemon_config(dir: &Path, name: &str, nats: &NatsServer) -> Config {
    std::fs::create_dir_all(dir.join("plugins")).unwrap();
    let text = format!(
        "name = \"{name}\"\nplugin-dir = \"plugins\"\nplugin-dir-poll-ms = 50\ncache-dir = \"{}\"\n[nats]\nurl = \"{}\"\n[sink]\nsqlite = \"{name}.db\"\n[registry]\nenabled = true\nstatus-interval-ms = 100\n",
        cache_dir().display(),
        nats.url()
    );
    Config::parse(&text, dir.to_path_buf(), |_| None).unwrap()
}

/// Where a daemon's plugin has got to: the last sequence and the digest that committed it.
fn checkpoint(db: &Path) -> (u64, String) {
    SqliteSink::open(db)
        .ok()
        .and_then(|mut s| s.checkpoint("compute-resource").ok().flatten())
        .map(|c| (c.last_seq, c.digest))
        .unwrap_or_default()
}

/// `jetfold plugin <args> --config <cli>`, which must succeed; its output.
fn plugin_cli(cli: &Path, args: &[&str]) -> String {
    let mut all: Vec<String> = vec!["plugin".into()];
    all.extend(args.iter().map(|a| a.to_string()));
    all.extend(["--config".into(), cli.display().to_string()]);
    let run = jetfold(&all);
    assert_eq!(run.code, 0, "jetfold {all:?}\n{}", run.all());
    run.stdout
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_daemons_follow_push_rollback_pause_resume_shadow_and_promote_and_refuse_a_forged_component()
 {
    let Fleet { built, nats, js, root, cli } = Fleet::start().await;

    let mut daemons = Vec::new();
    let mut dbs: Vec<PathBuf> = Vec::new();
    for name in ["daemon-a", "daemon-b"] {
        let dir = root.path().join(name);
        let daemon = Daemon::start(daemon_config(&dir, name, &nats)).await.unwrap();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(jetfold_host::daemon::supervise(daemon, None, async move {
            let _ = stopped.await;
        }));
        daemons.push((stop, task));
        dbs.push(dir.join(format!("{name}.db")));
    }
    let all_at = |seq: u64, digest: &str| {
        let (dbs, digest) = (dbs.clone(), digest.to_string());
        move || dbs.iter().all(|db| checkpoint(db) == (seq, digest.clone()))
    };
    let listed = |expect: Vec<&'static str>| {
        let cli = cli.clone();
        move || {
            let out = plugin_cli(&cli, &["list"]);
            // One line per daemon and plugin, each naming its daemon first.
            let lines: Vec<&str> = out.lines().filter(|l| l.starts_with("daemon-")).collect();
            lines.len() == 2 && expect.iter().all(|e| lines.iter().all(|l| l.contains(e)))
        }
    };

    // Push: both daemons load it and fold the stream.
    let out = plugin_cli(&cli, &["push", built.to_str().unwrap()]);
    let a = out.split_whitespace().nth(2).unwrap().to_string();
    assert!(out.starts_with("pushed compute-resource "), "{out}");
    eventually(60, "both daemons folded the stream", all_at(100, &a)).await;
    let short_a: &'static str = Box::leak(a[..12].to_string().into_boxed_str());
    eventually(30, "list shows both daemons running it", listed(vec![short_a, "running"])).await;

    // A second version: both swap to it.
    let v2 = root.path().join("v2");
    std::fs::create_dir_all(&v2).unwrap();
    std::fs::copy(built.join("plugin.toml"), v2.join("plugin.toml")).unwrap();
    let wasm = std::fs::read(built.join("compute_resource.wasm")).unwrap();
    std::fs::write(v2.join("compute_resource.wasm"), other_version(&wasm)).unwrap();
    let out = plugin_cli(&cli, &["push", v2.to_str().unwrap()]);
    let b = out.split_whitespace().nth(2).unwrap().to_string();
    assert_ne!(a, b);
    let short_b: &'static str = Box::leak(b[..12].to_string().into_boxed_str());
    eventually(30, "list shows both daemons on the new version", listed(vec![short_b])).await;
    publish(&js, 100, 150).await;
    eventually(60, "both daemons folded with the new version", all_at(150, &b)).await;

    // Roll back: the previous version again.
    let out = plugin_cli(&cli, &["rollback", "compute-resource"]);
    assert!(out.contains(&a), "{out}");
    eventually(30, "list shows both daemons back on the first version", listed(vec![short_a]))
        .await;
    publish(&js, 150, 200).await;
    eventually(60, "both daemons folded with the first version", all_at(200, &a)).await;

    // Pause: both stop; resume: both catch up from their checkpoints.
    plugin_cli(&cli, &["pause", "compute-resource"]);
    eventually(30, "list shows the plugin paused on both", listed(vec!["paused"])).await;
    publish(&js, 200, 250).await;
    assert!(dbs.iter().all(|db| checkpoint(db).0 == 200), "a paused plugin folds nothing");
    plugin_cli(&cli, &["resume", "compute-resource"]);
    eventually(60, "both daemons caught up after resume", all_at(250, &a)).await;

    // A shadow on both daemons: the same behaviour under a third digest, so no event differs;
    // then promoted, it becomes the live version everywhere.
    let v3 = root.path().join("v3");
    std::fs::create_dir_all(&v3).unwrap();
    std::fs::copy(built.join("plugin.toml"), v3.join("plugin.toml")).unwrap();
    std::fs::write(v3.join("compute_resource.wasm"), other_version(&other_version(&wasm))).unwrap();
    let out = plugin_cli(&cli, &["push", v3.to_str().unwrap(), "--shadow"]);
    let c = out.split_whitespace().nth(2).unwrap().to_string();
    let shadow_line: &'static str = Box::leak(format!("shadow {}", &c[..12]).into_boxed_str());
    eventually(30, "both daemons run the shadow", || {
        let out = plugin_cli(&cli, &["list"]);
        out.lines().filter(|l| l.contains(shadow_line)).count() == 2
    })
    .await;
    publish(&js, 250, 260).await;
    eventually(60, "both shadows folded the events, none differing", || {
        let out = plugin_cli(&cli, &["list"]);
        out.lines()
            .filter(|l| l.contains(shadow_line) && l.contains(": 0 of 10 events differ"))
            .count()
            == 2
    })
    .await;
    plugin_cli(&cli, &["promote", "compute-resource"]);
    let short_c: &'static str = Box::leak(c[..12].to_string().into_boxed_str());
    eventually(30, "list shows both daemons on the promoted version", listed(vec![short_c])).await;
    publish(&js, 260, 270).await;
    eventually(60, "both daemons folded with the promoted version", all_at(270, &c)).await;
    let a = c; // the live version from here on

    // A forged component: stored under a digest it does not have. Refused, the running
    // version stays, and the list says why.
    let store = js.get_object_store("jetfold-plugins").await.unwrap();
    let forged = format!("{:0>64}", "f0");
    store.put(forged.as_str(), &mut wasm.as_slice()).await.unwrap();
    let kv = js.get_key_value("jetfold-plugins").await.unwrap();
    let mut desired: serde_json::Value =
        serde_json::from_slice(&kv.get("compute-resource").await.unwrap().unwrap()).unwrap();
    desired["digest"] = forged.clone().into();
    kv.put("compute-resource", serde_json::to_vec(&desired).unwrap().into()).await.unwrap();
    eventually(30, "list shows the refusal on both", listed(vec!["does not match its digest"]))
        .await;
    publish(&js, 250, 300).await;
    eventually(60, "the running version goes on", all_at(300, &a)).await;

    for (stop, task) in daemons {
        stop.send(()).unwrap();
        task.await.unwrap().unwrap();
    }
    let rows: Vec<_> = dbs
        .iter()
        .map(|db| SqliteSink::open(db).unwrap().rows("compute_resources").unwrap())
        .collect();
    assert_eq!(rows[0], rows[1], "both daemons hold the same read model");
    assert_eq!(rows[0].len(), 300, "one row per resource registered by the 300 events");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_daemon_with_trusted_keys_loads_only_versions_they_signed() {
    let Fleet { built, nats, js, root, cli } = Fleet::start().await;
    let keygen = |file: &str| {
        let run = jetfold(["plugin", "keygen", root.path().join(file).to_str().unwrap()]);
        assert_eq!(run.code, 0, "{}", run.all());
        run.stdout.trim().to_string()
    };
    let (trusted, stranger) = (keygen("trusted.key"), keygen("stranger.key"));

    let dir = root.path().join("daemon");
    let mut config = daemon_config(&dir, "signed", &nats);
    config.registry.trusted_keys = vec![trusted];
    let daemon = Daemon::start(config).await.unwrap();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(jetfold_host::daemon::supervise(daemon, None, async move {
        let _ = stopped.await;
    }));
    let listed = |what: &'static str| {
        let cli = cli.clone();
        move || {
            plugin_cli(&cli, &["list"])
                .lines()
                .any(|l| l.starts_with("signed ") && l.contains(what))
        }
    };
    let plugin_path = built.to_str().unwrap();

    // Unsigned, then signed by a key the daemon does not trust: refused, nothing runs.
    plugin_cli(&cli, &["push", plugin_path]);
    eventually(30, "the unsigned version refused", listed("unsigned")).await;
    let stranger_key = root.path().join("stranger.key");
    plugin_cli(&cli, &["push", plugin_path, "--sign", stranger_key.to_str().unwrap()]);
    eventually(30, "the stranger's version refused", listed("not among [registry] trusted-keys"))
        .await;
    assert!(plugin_cli(&cli, &["list"]).contains(&stranger), "the refusal names the key");
    let db = dir.join("signed.db");
    assert_eq!(checkpoint(&db).0, 0, "no refused version ran");

    // Signed by the trusted key: it runs.
    let trusted_key = root.path().join("trusted.key");
    plugin_cli(&cli, &["push", plugin_path, "--sign", trusted_key.to_str().unwrap()]);
    eventually(60, "the signed version folded the stream", || checkpoint(&db).0 == 100).await;

    // The manifest changed after signing (a wider allow-list): the signature no longer
    // matches; refused, and the running version goes on.
    let kv = js.get_key_value("jetfold-plugins").await.unwrap();
    let mut desired: serde_json::Value =
        serde_json::from_slice(&kv.get("compute-resource").await.unwrap().unwrap()).unwrap();
    let widened =
        desired["manifest"].as_str().unwrap().replace("[allow]", "[allow]\nsubjects = [\">\"]");
    desired["manifest"] = widened.into();
    kv.put("compute-resource", serde_json::to_vec(&desired).unwrap().into()).await.unwrap();
    eventually(30, "the altered version refused", listed("signature does not match")).await;
    publish(&js, 100, 150).await;
    eventually(60, "the signed version goes on", || checkpoint(&db).0 == 150).await;

    stop.send(()).unwrap();
    task.await.unwrap().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_version_pushed_with_at_seq_takes_over_exactly_there_and_remove_purges_consumers() {
    let Fleet { built, nats, js, root, cli } = Fleet::start().await;
    let out = plugin_cli(&cli, &["push", built.to_str().unwrap()]);
    let a = out.split_whitespace().nth(2).unwrap().to_string();

    let dir = root.path().join("daemon");
    let daemon = Daemon::start(daemon_config(&dir, "promoter", &nats)).await.unwrap();
    let mut progress = daemon.progress("compute-resource").unwrap();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(jetfold_host::daemon::supervise(daemon, None, async move {
        let _ = stopped.await;
    }));
    progress.wait_for(|p| p.committed_seq == 100).await.unwrap();

    // Version B, to take over at sequence 150: the daemon holds it until then.
    let v2 = root.path().join("v2");
    std::fs::create_dir_all(&v2).unwrap();
    std::fs::copy(built.join("plugin.toml"), v2.join("plugin.toml")).unwrap();
    let wasm = std::fs::read(built.join("compute_resource.wasm")).unwrap();
    std::fs::write(v2.join("compute_resource.wasm"), other_version(&wasm)).unwrap();
    let out = plugin_cli(&cli, &["push", v2.to_str().unwrap(), "--at-seq", "150"]);
    let b = out.split_whitespace().nth(2).unwrap().to_string();
    let short_b = b[..12].to_string();
    eventually(30, "the daemon holds version B", || {
        plugin_cli(&cli, &["list"])
            .lines()
            .any(|l| l.starts_with("promoter ") && l.contains(&short_b))
    })
    .await;
    publish(&js, 100, 200).await;
    let p = progress.wait_for(|p| p.committed_seq == 200).await.unwrap().clone();
    assert_eq!(p.digest, b);
    assert_eq!((p.swaps, p.swapped_at_seq), (1, Some(150)), "B folded from 150 exactly");

    // A promotion at a sequence already folded cannot be exact: refused, B stays.
    plugin_cli(&cli, &["push", built.to_str().unwrap(), "--at-seq", "120"]);
    let refused =
        progress.wait_for(|p| p.refused.is_some()).await.unwrap().refused.clone().unwrap();
    assert!(refused.reason.contains("already past"), "{refused:?}");
    assert_eq!(refused.version, a);
    publish(&js, 200, 220).await;
    let p = progress.wait_for(|p| p.committed_seq == 220).await.unwrap().clone();
    assert_eq!((p.digest.as_str(), p.swaps), (b.as_str(), 1));

    // Removed with --purge: the daemon stops the plugin, then its consumer is deleted.
    let out = plugin_cli(&cli, &["remove", "compute-resource", "--purge"]);
    assert!(out.contains("purged consumer promoter-compute-resource"), "{out}");
    tokio::time::timeout(std::time::Duration::from_secs(30), async {
        while progress.changed().await.is_ok() {}
    })
    .await
    .expect("the removed plugin's worker stopped");
    let stream = js.get_stream("INFRA").await.unwrap();
    assert!(stream.consumer_info("promoter-compute-resource").await.is_err(), "consumer purged");

    stop.send(()).unwrap();
    task.await.unwrap().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_shadow_version_runs_beside_the_live_one_and_its_differences_are_recorded() {
    let Fleet { built, nats, js, root, cli } = Fleet::start().await;
    plugin_cli(&cli, &["push", built.to_str().unwrap()]);
    let dir = root.path().join("daemon");
    let daemon = Daemon::start(daemon_config(&dir, "shadowed", &nats)).await.unwrap();
    let mut progress = daemon.progress("compute-resource").unwrap();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(jetfold_host::daemon::supervise(daemon, None, async move {
        let _ = stopped.await;
    }));
    let live = progress.wait_for(|p| p.committed_seq == 100).await.unwrap().digest.clone();

    // Two candidate versions: the same behaviour under another digest, and one whose
    // manifest no longer allows the upserts the plugin makes.
    let wasm = std::fs::read(built.join("compute_resource.wasm")).unwrap();
    let manifest = std::fs::read_to_string(built.join("plugin.toml")).unwrap();
    let candidate = |name: &str, manifest: &str, component: Vec<u8>| {
        let dir = root.path().join(name);
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("plugin.toml"), manifest).unwrap();
        std::fs::write(dir.join("compute_resource.wasm"), component).unwrap();
        dir
    };
    let same = candidate("same", &manifest, other_version(&wasm));
    let strict = candidate(
        "strict",
        &manifest.replace("effects = [\"upsert\", \"log\"]", "effects = [\"log\"]"),
        other_version(&other_version(&wasm)),
    );
    assert_ne!(std::fs::read_to_string(strict.join("plugin.toml")).unwrap(), manifest);

    let out = plugin_cli(&cli, &["push", same.to_str().unwrap(), "--shadow"]);
    let same_digest = out.split_whitespace().nth(2).unwrap().to_string();
    eventually(30, "the shadow is handed to the worker", || {
        plugin_cli(&cli, &["list"]).contains("shadow ")
    })
    .await;
    publish(&js, 100, 150).await;
    let p = progress.wait_for(|p| p.committed_seq == 150).await.unwrap().clone();
    assert_eq!(p.digest, live, "a shadow never replaces the live version");
    assert_eq!(p.swaps, 0, "adding a shadow swaps nothing: the live version goes on");
    let shadow = p.shadow.unwrap();
    assert_eq!(
        (shadow.digest.as_str(), shadow.events, shadow.diffs),
        (same_digest.as_str(), 50, 0)
    );

    let out = plugin_cli(&cli, &["push", strict.to_str().unwrap(), "--shadow"]);
    let strict_digest = out.split_whitespace().nth(2).unwrap().to_string();
    eventually(30, "the strict shadow is handed to the worker", || {
        plugin_cli(&cli, &["list"]).contains(&format!("shadow {}", &strict_digest[..12]))
    })
    .await;
    publish(&js, 150, 200).await;
    let p = progress
        .wait_for(|p| p.committed_seq == 200 && p.shadow.as_ref().is_some_and(|s| s.diffs > 0))
        .await
        .unwrap()
        .clone();
    let shadow = p.shadow.unwrap();
    assert_eq!(shadow.digest, strict_digest);
    assert!(shadow.diffs > 0 && shadow.diffs == shadow.events, "every upsert differs: {shadow:?}");
    let conn = rusqlite::Connection::open(dir.join("shadowed.db")).unwrap();
    // Both outcomes as JSON documents: the live state and effects, the shadow's error.
    let (rows, refusals, with_effects): (i64, i64, i64) = conn
        .query_row(
            "SELECT COUNT(*), SUM(json_extract(shadow, '$.error.kind') = 'rejected-effect'), \
             SUM(json_type(live, '$.effects') = 'array') FROM jetfold_shadow_diffs WHERE seq > 150",
            [],
            |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
        )
        .unwrap();
    assert_eq!((rows, refusals, with_effects), (50, 50, 50));
    assert_eq!(checkpoint(&dir.join("shadowed.db")).1, live, "the live version's effects went on");

    // The good candidate again, promoted: it becomes the live version.
    plugin_cli(&cli, &["push", same.to_str().unwrap(), "--shadow"]);
    plugin_cli(&cli, &["promote", "compute-resource"]);
    eventually(30, "the promotion is handed over", || {
        let out = plugin_cli(&cli, &["list"]);
        out.lines().any(|l| l.starts_with("shadowed ") && l.contains(&same_digest[..12]))
            && !out.contains("  shadow ")
    })
    .await;
    // Idle, the checkpoint names the version now running at once (`verify` reads it).
    let db = dir.join("shadowed.db");
    eventually(30, "the checkpoint naming the promoted version", || {
        checkpoint(&db) == (200, same_digest.clone())
    })
    .await;
    publish(&js, 200, 210).await;
    let p = progress.wait_for(|p| p.committed_seq == 210).await.unwrap().clone();
    assert_eq!((p.digest.as_str(), p.shadow.is_none()), (same_digest.as_str(), true));
    assert_eq!(p.swaps, 1, "the promotion is the one swap");

    stop.send(()).unwrap();
    task.await.unwrap().unwrap();
}

/// Registry daemons on the settings a user gets: idle, they do not pile up consumers on the
/// registry's KV stream (its state comes from the watch, not a listing per status report); a
/// daemon that stops says so in its last report, and one killed is shown as not reporting
/// after three report intervals instead of "running" until its report expires.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_registry_daemons_keep_no_consumers_and_a_stopped_one_is_shown_stopped() {
    let Fleet { built, nats, root, cli, js } = Fleet::start().await;
    let mut daemons = Vec::new();
    for name in ["daemon-a", "daemon-b"] {
        let dir = root.path().join(name);
        daemons.push((registry_daemon(&dir, name, &nats), dir));
    }
    plugin_cli(&cli, &["push", built.to_str().unwrap()]);
    for (daemon, dir) in &daemons {
        let db = dir.join(format!("{}.db", dir.file_name().unwrap().to_str().unwrap()));
        daemon.wait(60, "the pushed plugin folded", || checkpoint(&db).0 == 100).await;
    }
    // Twelve seconds idle: six status reports and twelve observations each.
    let kv = js.get_stream("KV_jetfold-plugins").await.unwrap();
    let before = kv.get_info().await.unwrap().state.consumer_count;
    let mut most = before;
    for _ in 0..24 {
        tokio::time::sleep(std::time::Duration::from_millis(500)).await;
        most = most.max(kv.get_info().await.unwrap().state.consumer_count);
    }
    assert!(most <= before, "idle daemons made consumers on the registry's KV: {before} -> {most}");

    // A pause is logged as one.
    plugin_cli(&cli, &["pause", "compute-resource"]);
    for (daemon, _) in &daemons {
        daemon
            .wait(30, "the pause logged", || {
                daemon.lines().iter().any(|l| {
                    l["fields"]["message"]
                        .as_str()
                        .is_some_and(|m| m.starts_with("plugin paused: stopped"))
                })
            })
            .await;
        assert!(!daemon.lines().iter().any(|l| {
            l["fields"]["message"].as_str().is_some_and(|m| m.starts_with("plugin removed"))
        }));
    }
    plugin_cli(&cli, &["resume", "compute-resource"]);
    let lines = |daemon: &str| -> Vec<String> {
        let out = plugin_cli(&cli, &["list"]);
        out.lines().filter(|l| l.trim_start().starts_with(daemon)).map(str::to_string).collect()
    };
    let (b, _) = daemons.pop().unwrap();
    assert_eq!(b.stop(), Some(0));
    let listed = lines("daemon-b");
    assert!(listed.iter().any(|l| l.contains("stopped, last report")), "{listed:?}");
    assert!(
        listed.iter().any(|l| l.contains("compute-resource") && l.contains("daemon-gone")),
        "{listed:?}"
    );
    let (a, _) = daemons.pop().unwrap();
    a.signal("KILL");
    eventually(30, "the killed daemon shown as not reporting", || {
        let listed = lines("daemon-a");
        listed.iter().any(|l| l.contains("not reporting"))
            && listed.iter().any(|l| l.contains("daemon-gone"))
    })
    .await;
    let out = plugin_cli(&cli, &["remove", "compute-resource", "--purge"]);
    assert!(out.contains("purged consumer daemon-a-compute-resource"), "{out}");

    // A plugin whose stream does not exist has no consumers to purge: removed, exit 0.
    let lost = root.path().join("lost");
    std::fs::create_dir_all(&lost).unwrap();
    let manifest = std::fs::read_to_string(built.join("plugin.toml")).unwrap();
    let manifest = manifest.replace("stream = \"INFRA\"", "stream = \"NOSUCH\"");
    std::fs::write(lost.join("plugin.toml"), manifest).unwrap();
    std::fs::copy(built.join("compute_resource.wasm"), lost.join("compute_resource.wasm")).unwrap();
    plugin_cli(&cli, &["push", lost.to_str().unwrap()]);
    let out = plugin_cli(&cli, &["remove", "compute-resource", "--purge"]);
    assert!(out.contains("no consumers to purge: stream `NOSUCH` does not exist"), "{out}");
}

/// `plugin remove --purge` while a daemon rebuilds the plugin: a rebuilding plugin runs (it
/// commits), so its consumers stay until the daemon reports it stopped. (It was once told by
/// its status text, `running; rebuilding …` was not `running`, and the consumers went at once.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn remove_purge_waits_for_a_daemon_that_is_rebuilding_the_plugin() {
    use jetfold_host::registry::{Buckets, DaemonStatus, PluginStatus, Registry};
    use jetfold_host::status::PluginState;
    use std::io::BufRead as _;

    let Fleet { built, nats: _nats, js, root, cli } = Fleet::start().await;
    let out = plugin_cli(&cli, &["push", built.to_str().unwrap()]);
    let digest = out.split_whitespace().nth(2).unwrap().to_string();
    // A daemon `busy` with its consumer, in the middle of a rebuild, as its report says.
    let stream = js.get_stream("INFRA").await.unwrap();
    let consumer = async_nats::jetstream::consumer::pull::Config {
        durable_name: Some("busy-compute-resource".into()),
        ..Default::default()
    };
    stream.create_consumer(consumer).await.unwrap();
    let config =
        Config::parse(&std::fs::read_to_string(&cli).unwrap(), root.path().into(), |_| None)
            .unwrap();
    let registry =
        Registry::open(&js, &Buckets::named(&config.registry.bucket_prefix)).await.unwrap();
    let report = |plugins: Vec<PluginStatus>| DaemonStatus {
        daemon: "busy".into(),
        plugins,
        reported_at: Some(chrono::Utc::now()),
        report_interval_ms: 60_000,
        stopped: false,
    };
    let rebuilding = PluginStatus {
        name: "compute-resource".into(),
        kind: "projection".into(),
        digest: digest.clone(),
        status: PluginState::Rebuilding,
        pending: None,
        committed_seq: 100,
        lag: Some(0),
        last_error: None,
        rebuild: Some((digest, 40)),
        shadow: None,
    };
    registry.report(&report(vec![rebuilding])).await.unwrap();

    let mut remove = std::process::Command::new(env!("CARGO_BIN_EXE_jetfold"))
        .args(["plugin", "remove", "compute-resource", "--purge", "--config"])
        .arg(&cli)
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let (lines_tx, mut lines) = tokio::sync::mpsc::unbounded_channel();
    let stdout = remove.stdout.take().unwrap();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(stdout).lines() {
            let _ = lines_tx.send(line.unwrap());
        }
    });
    let mut seen = Vec::new();
    let waiting = tokio::time::timeout(std::time::Duration::from_secs(20), async {
        while let Some(line) = lines.recv().await {
            seen.push(line.clone());
            if line.starts_with("waiting for `compute-resource` to stop on busy (rebuilding)") {
                return;
            }
        }
    })
    .await;
    assert!(waiting.is_ok(), "remove --purge did not wait for the rebuilding daemon: {seen:?}");
    assert!(stream.consumer_info("busy-compute-resource").await.is_ok(), "not purged yet");

    // The daemon stops the removed plugin: now the consumer goes.
    registry.report(&report(vec![])).await.unwrap();
    let status = tokio::task::spawn_blocking(move || remove.wait()).await.unwrap().unwrap();
    assert!(status.success());
    while let Some(line) = lines.recv().await {
        seen.push(line);
    }
    assert!(seen.iter().any(|l| l == "purged consumer busy-compute-resource"), "{seen:?}");
    assert!(stream.consumer_info("busy-compute-resource").await.is_err(), "consumer purged");
}

/// A `jetfold run` process following the registry with default settings (only the HTTP
/// endpoint on a port of its own), in `dir`, its log in `dir/<name>-<n>.log`.
fn registry_daemon(dir: &Path, name: &str, nats: &NatsServer) -> DaemonProcess {
    std::fs::create_dir_all(dir.join("plugins")).unwrap();
    let config = dir.join("jetfold.toml");
    let text = format!(
        "name = \"{name}\"\nplugin-dir = \"plugins\"\n[nats]\nurl = \"{}\"\n[sink]\nsqlite = \"{name}.db\"\n[registry]\nenabled = true\n[http]\nlisten = \"127.0.0.1:0\"\n",
        nats.url()
    );
    std::fs::write(&config, text).unwrap();
    let runs = std::fs::read_dir(dir).unwrap().flatten();
    let n = runs.filter(|e| e.path().extension().is_some_and(|x| x == "log")).count();
    DaemonProcess::start(&config, &dir.join(format!("{name}-{n}.log")))
}

/// A copy of the built compute-resource plugin in `root/<dir>` whose component is `wasm`.
fn version(root: &Path, dir: &str, wasm: &[u8]) -> PathBuf {
    let built = plugin("compute-resource");
    let out = root.join(dir);
    std::fs::create_dir_all(&out).unwrap();
    std::fs::copy(built.join("plugin.toml"), out.join("plugin.toml")).unwrap();
    std::fs::write(out.join("compute_resource.wasm"), wasm).unwrap();
    out
}

/// The digest `jetfold plugin push` printed (`pushed <name> <digest>`).
fn pushed(out: &str) -> String {
    out.split_whitespace().nth(2).unwrap().to_string()
}

/// Whether `plugin list` has a line for `daemon`'s `plugin` containing every one of `what`.
fn lists(cli: &Path, daemon: &str, plugin: &str, what: &[&str]) -> bool {
    plugin_cli(cli, &["list"]).lines().any(|l| {
        l.split_whitespace().take(2).eq([daemon, plugin]) && what.iter().all(|w| l.contains(w))
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_daemon_restarted_before_an_at_seq_takes_over_there_as_the_others_do_and_a_refused_one_stays_refused()
 {
    let Fleet { built, nats, js, root, cli } = Fleet::start().await;
    let wasm = std::fs::read(built.join("compute_resource.wasm")).unwrap();
    let a = pushed(&plugin_cli(&cli, &["push", built.to_str().unwrap()]));
    let (alpha_dir, beta_dir) = (root.path().join("alpha"), root.path().join("beta"));
    let alpha = registry_daemon(&alpha_dir, "alpha", &nats);
    let mut beta = registry_daemon(&beta_dir, "beta", &nats);
    let dbs = [alpha_dir.join("alpha.db"), beta_dir.join("beta.db")];
    let both_at = |seq: u64, digest: &str| {
        let (dbs, digest) = (dbs.clone(), digest.to_string());
        move || dbs.iter().all(|db| checkpoint(db) == (seq, digest.clone()))
    };
    eventually(60, "both daemons folded the stream with A", both_at(100, &a)).await;

    // B takes over at 150. Beta holds it; alpha restarts before 150.
    let v2 = version(root.path(), "v2", &other_version(&wasm));
    let b = pushed(&plugin_cli(&cli, &["push", v2.to_str().unwrap(), "--at-seq", "150"]));
    eventually(30, "beta holds B", || beta.log().contains("new version handed to the worker"))
        .await;
    // Listed as it is: A folds, B waits for its sequence.
    eventually(30, "beta lists A running and B pending", || {
        let pending = format!("next {} takes over at sequence 150", &b[..12]);
        lists(&cli, "beta", "compute-resource", &[&a[..12], "running"])
            && plugin_cli(&cli, &["list"]).contains(&pending)
    })
    .await;
    assert_eq!(alpha.stop(), Some(0));
    let alpha = registry_daemon(&alpha_dir, "alpha", &nats);
    // Restarted, it lists what it folds (A) and what waits (B), as beta does.
    eventually(30, "alpha lists A running and B pending", || {
        let pending = format!("alpha          next {} takes over at sequence 150", &b[..12]);
        lists(&cli, "alpha", "compute-resource", &[&a[..12], "running"])
            && plugin_cli(&cli, &["list"]).contains(&pending)
    })
    .await;
    publish(&js, 100, 149).await;
    eventually(60, "both daemons folded 101..149 with A", both_at(149, &a)).await;
    publish(&js, 149, 200).await;
    eventually(60, "both daemons folded 150.. with B", both_at(200, &b)).await;
    // The takeover names the last sequence the old version folded, as swaps do.
    let takeover = |log: String| {
        log.lines().any(|l| l.contains("new version takes over") && l.contains("\"after_seq\":149"))
    };
    assert!(takeover(alpha.log()), "{}", alpha.log());
    assert!(takeover(beta.log()), "{}", beta.log());

    // C at 180, already past on both: refused, and still refused after a restart.
    let v3 = version(root.path(), "v3", &other_version(&other_version(&wasm)));
    let c = pushed(&plugin_cli(&cli, &["push", v3.to_str().unwrap(), "--at-seq", "180"]));
    eventually(30, "both daemons refuse C", || {
        ["alpha", "beta"].iter().all(|d| lists(&cli, d, "compute-resource", &["already past"]))
    })
    .await;
    assert_eq!(alpha.stop(), Some(0));
    let mut alpha = registry_daemon(&alpha_dir, "alpha", &nats);
    publish(&js, 200, 220).await;
    eventually(60, "both daemons go on with B", both_at(220, &b)).await;
    assert_ne!(checkpoint(&dbs[0]).1, c);
    alpha.assert_running();
    beta.assert_running();
    assert_eq!(alpha.stop(), Some(0));
    assert_eq!(beta.stop(), Some(0));
    let rows: Vec<_> = dbs
        .iter()
        .map(|db| SqliteSink::open(db).unwrap().rows("compute_resources").unwrap())
        .collect();
    assert_eq!(rows[0], rows[1], "both daemons hold the same read model");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pushed_version_the_daemons_refuse_never_stops_their_next_start() {
    let Fleet { built, nats, js, root, cli } = Fleet::start().await;
    let a = pushed(&plugin_cli(&cli, &["push", built.to_str().unwrap()]));
    plugin_cli(&cli, &["push", plugin("event-counter").to_str().unwrap()]);
    let dir = root.path().join("daemon");
    let daemon = registry_daemon(&dir, "solo", &nats);
    let db = dir.join("solo.db");
    eventually(60, "both plugins folded the stream", || {
        checkpoint(&db) == (100, a.clone())
            && crate::support::checkpoint(&db, "event-counter") == 100
    })
    .await;

    // 1000 random bytes as the component of a new version, and of a plugin never pushed.
    let mut x: u64 = 0x0BAD_B17E5;
    let noise: Vec<u8> = (0..1000)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect();
    let broken = version(root.path(), "broken", &noise);
    let fresh = root.path().join("fresh");
    std::fs::create_dir_all(&fresh).unwrap();
    let manifest = std::fs::read_to_string(broken.join("plugin.toml")).unwrap();
    let manifest = manifest.replace("name = \"compute-resource\"", "name = \"fresh\"");
    std::fs::write(fresh.join("plugin.toml"), manifest).unwrap();
    std::fs::write(fresh.join("compute_resource.wasm"), &noise).unwrap();
    let bad = pushed(&plugin_cli(&cli, &["push", broken.to_str().unwrap()]));
    plugin_cli(&cli, &["push", fresh.to_str().unwrap()]);
    let not_a_component = "is not a WebAssembly component";
    eventually(30, "the new version refused, the running one listed", || {
        lists(&cli, "solo", "compute-resource", &[&a[..12], not_a_component])
    })
    .await;

    // The next start runs the version that loaded last, and everything else.
    assert_eq!(daemon.stop(), Some(0));
    let mut daemon = registry_daemon(&dir, "solo", &nats);
    publish(&js, 100, 150).await;
    eventually(60, "both plugins fold on after the restart", || {
        checkpoint(&db) == (150, a.clone())
            && crate::support::checkpoint(&db, "event-counter") == 150
    })
    .await;
    eventually(30, "the refusals listed", || {
        lists(&cli, "solo", "compute-resource", &[&a[..12], &bad[..12], not_a_component])
            && lists(&cli, "solo", "fresh", &["refused", not_a_component])
    })
    .await;
    // Rolled back to the version that runs: the refusal is no longer shown.
    plugin_cli(&cli, &["rollback", "compute-resource"]);
    eventually(30, "the refusal gone after the rollback", || {
        lists(&cli, "solo", "compute-resource", &[&a[..12], "running"])
            && !lists(&cli, "solo", "compute-resource", &[not_a_component])
    })
    .await;
    daemon.assert_running();
    assert_eq!(daemon.stop(), Some(0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_rollback_goes_one_version_further_back_until_the_history_runs_out() {
    let Fleet { built, nats: _nats, js: _js, root, cli } = Fleet::start().await;
    let wasm = std::fs::read(built.join("compute_resource.wasm")).unwrap();
    let mut versions = Vec::new();
    for (i, name) in ["a", "b", "c", "d"].iter().enumerate() {
        let mut component = wasm.clone();
        for _ in 0..i {
            component = other_version(&component);
        }
        versions.push(version(root.path(), name, &component));
    }
    let push = |v: &Path| pushed(&plugin_cli(&cli, &["push", v.to_str().unwrap()]));
    let rollback = |args: &[&str]| {
        let mut all = vec!["rollback", "compute-resource"];
        all.extend(args);
        let out = plugin_cli(&cli, &all);
        out.trim().rsplit(' ').next().unwrap().to_string()
    };
    let (a, b, c) = (push(&versions[0]), push(&versions[1]), push(&versions[2]));
    assert_eq!(rollback(&[]), b);
    assert_eq!(rollback(&[]), a, "a second rollback goes one further back");
    let run =
        jetfold(["plugin", "rollback", "compute-resource", "--config", cli.to_str().unwrap()]);
    assert_eq!(run.code, 2, "{}", run.all());
    assert!(run.stderr.contains("no earlier version to roll back to"), "{}", run.all());
    assert!(run.stderr.contains(&a[..12]), "names the oldest version: {}", run.all());

    // A push after rollbacks goes on from the version rolled back to.
    let d = push(&versions[3]);
    assert_eq!(rollback(&[]), a, "the versions rolled back from left the history");
    // --to finds a version rolled back from among the record's revisions.
    assert_eq!(rollback(&["--to", &c[..12]]), c);
    assert_eq!(rollback(&[]), a, "--to is a step forward: a rollback returns from it");
    assert_eq!(rollback(&["--to", &d[..8]]), d);
    let run = jetfold([
        "plugin",
        "rollback",
        "compute-resource",
        "--to",
        "ffff",
        "--config",
        cli.to_str().unwrap(),
    ]);
    assert_eq!(run.code, 2, "{}", run.all());
    assert!(run.stderr.contains("never had a version ffff"), "{}", run.all());
}
