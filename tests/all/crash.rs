//! Exactly once under SIGKILL: the `jetfold run` process is killed at random moments while
//! 20,000 events flow, restarted each time, and the result is compared with the same events
//! folded offline (the clean run): every row, every state, every emitted command, every
//! rejection; nothing missing, nothing twice. Once with states written with every commit,
//! once with a snapshot interval, so that kills land between snapshots and every restart
//! first folds the events since the last one again.

use std::{
    collections::BTreeMap,
    path::Path,
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use futures::StreamExt as _;
use jetfold_host::{
    component::ComponentLoader,
    effect::Effect,
    event::EventRecord,
    fold::{FixtureLine, Fold, Plugin, Step, read_fixture},
    sink::sqlite::SqliteSink,
};

use crate::support::{
    NatsServer, cache_dir, checkpoint, create_stream, daemon_dir, plugin, publish_fixture,
};

/// A small deterministic generator (xorshift), so every run of the test is the same run.
pub(crate) struct Rng(pub u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

fn record(
    subject: String,
    time: chrono::DateTime<chrono::Utc>,
    payload: serde_json::Value,
) -> String {
    let r = EventRecord {
        sequence: None,
        subject,
        time,
        event_type: None,
        aggregate_id: None,
        message_id: None,
        correlation_id: None,
        causation_id: None,
        schema_version: None,
        headers: vec![],
        stored_headers: None,
        content_type: None,
        payload: Some(serde_json::value::to_raw_value(&payload).unwrap()),
        payload_base64: None,
    };
    serde_json::to_string(&r).unwrap()
}

/// 15,000 compute-resource events: 2,500 resources through their lifecycle, interleaved,
/// with invalid transitions among them.
fn infra_events(rng: &mut Rng) -> Vec<String> {
    let start: chrono::DateTime<chrono::Utc> = "2026-01-01T00:00:00Z".parse().unwrap();
    let steps = ["Active", "Maintenance", "Active", "Maintenance", "Decommissioned"];
    let mut progress = vec![0usize; 2500];
    let mut lines = Vec::new();
    let mut t = 0i64;
    while lines.len() < 15_000 {
        let r = rng.below(2500) as usize;
        t += 1;
        let time = start + chrono::Duration::seconds(t);
        let subject = |ty: &str| format!("infra.resource.r-{r}.{ty}");
        let line = match progress[r] {
            0 => record(
                subject("ResourceRegistered"),
                time,
                serde_json::json!({"name": format!("vm-{r}"), "kind": "vm", "region": "eu-west"}),
            ),
            n if rng.below(10) == 0 => {
                // A mistake a real stream contains: a transition the state machine refuses.
                let _ = n;
                record(subject("StatusChanged"), time, serde_json::json!({"to": "Provisioning"}))
            }
            n if n <= steps.len() => {
                record(subject("StatusChanged"), time, serde_json::json!({"to": steps[n - 1]}))
            }
            _ => record(
                subject("PolicyAdded"),
                time,
                serde_json::json!({"policy_id": format!("p-{t}"), "name": "late"}),
            ),
        };
        progress[r] += 1;
        lines.push(line);
    }
    lines
}

/// 5,000 people events over ~4 years: 100 people log in now and then, some stop; a daily
/// tick tells the time, so the policy archives the quiet ones.
fn people_events(rng: &mut Rng) -> Vec<String> {
    let start: chrono::DateTime<chrono::Utc> = "2023-01-01T00:00:00Z".parse().unwrap();
    let mut lines = Vec::new();
    let quits: Vec<u64> = (0..100).map(|_| rng.below(1500)).collect();
    let mut day = 0i64;
    while lines.len() < 5_000 {
        let time = start + chrono::Duration::days(day);
        lines.push(record("people.clock.daily.DayStarted".into(), time, serde_json::json!({})));
        for _ in 0..2 {
            let p = rng.below(100) as usize;
            if (day as u64) < quits[p] && lines.len() < 5_000 {
                let ty = if day == 0 { "PersonRegistered" } else { "PersonLoggedIn" };
                lines.push(record(
                    format!("people.person.p-{p}.{ty}"),
                    time + chrono::Duration::hours(9),
                    serde_json::json!({}),
                ));
            }
        }
        day += 1;
    }
    lines.truncate(5_000);
    lines
}

/// The two streams' events in files of a daemon directory holding both plugins, and what the
/// clean run makes of them.
pub(crate) struct Workload {
    pub dir: tempfile::TempDir,
    pub infra_file: std::path::PathBuf,
    pub people_file: std::path::PathBuf,
    pub expected_infra: Expected,
    pub expected_people: Expected,
}

/// 15,000 compute-resource and 5,000 people events drawn from `rng`, written to files in a
/// daemon directory with both plugins, and folded offline.
pub(crate) fn workload(rng: &mut Rng) -> Workload {
    let infra = infra_events(rng);
    let people = people_events(rng);
    let dir = daemon_dir(&["compute-resource", "person-archive"]);
    let (infra_file, people_file) =
        (dir.path().join("infra.jsonl"), dir.path().join("people.jsonl"));
    std::fs::write(&infra_file, infra.join("\n")).unwrap();
    std::fs::write(&people_file, people.join("\n")).unwrap();
    let expected_infra = fold_offline("compute-resource", &infra_file);
    let expected_people = fold_offline("person-archive", &people_file);
    Workload { dir, infra_file, people_file, expected_infra, expected_people }
}

/// Checks that the COMMANDS stream holds each command of the clean run once (by message id),
/// as it emitted it; returns how many.
pub(crate) async fn assert_commands_once(
    js: &async_nats::jetstream::Context,
    expected: &Expected,
) -> usize {
    let stream = js.get_stream("COMMANDS").await.unwrap();
    let count = stream.clone().get_info().await.unwrap().state.messages as usize;
    assert_eq!(count, expected.commands.len(), "commands published");
    let consumer = stream
        .create_consumer(async_nats::jetstream::consumer::pull::OrderedConfig::default())
        .await
        .unwrap();
    let mut messages = consumer.messages().await.unwrap().take(count);
    let mut seen = BTreeMap::new();
    while let Some(m) = messages.next().await {
        let m = m.unwrap();
        let id = m.headers.as_ref().unwrap().get("Nats-Msg-Id").unwrap().as_str().to_string();
        let payload: serde_json::Value = serde_json::from_slice(&m.payload).unwrap();
        assert!(
            seen.insert(id.clone(), (m.subject.to_string(), payload)).is_none(),
            "{id} published twice"
        );
    }
    assert!(seen == expected.commands, "emitted commands differ from the clean run");
    count
}

/// Checks every row, state and rejection the daemon committed to `db`, and its empty outbox,
/// against the clean run; returns how many rows.
pub(crate) fn assert_sink_matches(
    db: &Path,
    expected_infra: &Expected,
    expected_people: &Expected,
) -> usize {
    let mut sink = SqliteSink::open(db).unwrap();
    let rows: BTreeMap<String, serde_json::Value> = sink
        .rows("compute_resources")
        .unwrap()
        .into_iter()
        .map(|(k, doc)| (k, serde_json::from_str(&doc).unwrap()))
        .collect();
    assert_eq!(rows.len(), expected_infra.rows.len());
    assert!(rows == expected_infra.rows, "read model differs from the clean run");
    for (name, expected) in
        [("compute-resource", expected_infra), ("person-archive", expected_people)]
    {
        let states: BTreeMap<String, serde_json::Value> = sink
            .states(name)
            .unwrap()
            .into_iter()
            .map(|(k, s)| (k, serde_json::from_slice(&s).unwrap()))
            .collect();
        assert!(states == expected.states, "{name}: states differ from the clean run");
        let conn = rusqlite::Connection::open(db).unwrap();
        let rejected: i64 = conn
            .query_row("SELECT COUNT(*) FROM jetfold_rejected WHERE plugin = ?1", [name], |r| {
                r.get(0)
            })
            .unwrap();
        assert_eq!(rejected as usize, expected.rejected, "{name}: rejections");
    }
    assert!(sink.outbox("person-archive").unwrap().is_empty());
    rows.len()
}

/// The clean run: the same events folded offline through the same components.
pub(crate) struct Expected {
    pub rows: BTreeMap<String, serde_json::Value>,
    pub states: BTreeMap<String, serde_json::Value>,
    pub rejected: usize,
    pub commands: BTreeMap<String, (String, serde_json::Value)>,
}

pub(crate) fn fold_offline(name: &str, fixture: &Path) -> Expected {
    let loader = ComponentLoader::new(Some(cache_dir())).unwrap();
    // The daemon's message ids name the stream it read: the manifest's.
    let manifest = jetfold_host::manifest::Manifest::load(&plugin(name)).unwrap();
    let stream = manifest.source.stream.clone().expect("the plugin names its stream");
    let mut fold = Fold::new(Plugin::open(&plugin(name), &loader).unwrap());
    for (line, entry) in read_fixture(fixture).unwrap() {
        if let FixtureLine::Event(e) = entry {
            fold.feed(line, &e);
        }
    }
    let report = fold.finish();
    let mut expected = Expected {
        rows: BTreeMap::new(),
        states: report.state.clone(),
        rejected: 0,
        commands: BTreeMap::new(),
    };
    for step in &report.steps {
        let Step::Event { sequence, effects, error, .. } = step else { continue };
        if error.is_some() {
            expected.rejected += 1;
        }
        for (index, effect) in effects.iter().flatten().enumerate() {
            match effect {
                Effect::Upsert { key, row, .. } => {
                    expected.rows.insert(key.clone(), serde_json::from_str(row.get()).unwrap());
                }
                Effect::Emit { subject, payload, .. } => {
                    let id = format!("{name}:{stream}:{sequence}:{index}");
                    expected.commands.insert(
                        id,
                        (subject.clone(), serde_json::from_str(payload.get()).unwrap()),
                    );
                }
                _ => {}
            }
        }
    }
    expected
}

fn spawn_daemon(dir: &Path, log: &Path) -> Child {
    spawn_daemon_logging(dir, log, "warn")
}

/// [`spawn_daemon`] at the log level `level` (`JETFOLD_LOG`).
fn spawn_daemon_logging(dir: &Path, log: &Path, level: &str) -> Child {
    let log = std::fs::OpenOptions::new().create(true).append(true).open(log).unwrap();
    Command::new(env!("CARGO_BIN_EXE_jetfold"))
        .args(["run", "--config"])
        .arg(dir.join("jetfold.toml"))
        .env("JETFOLD_LOG", level)
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_at_random_moments_loses_nothing_and_repeats_nothing() {
    // A small state cache: committed states are forgotten and read back all along.
    kill_and_compare(0x5EED_F00D, &format!("{QUICK}state-cache-keys = 50\n"), 22).await;
}

/// The same with the settings a user gets (batches of 500, 200 ms fetches, a 30 s ack wait):
/// a restart does not wait for JetStream to redeliver what the killed daemon had in flight.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_with_the_default_settings_loses_nothing_and_repeats_nothing() {
    kill_and_compare(0x0DEF_A017, "", 6).await;
}

/// Small batches, quick fetches and a short ack wait: more kills land mid-batch.
const QUICK: &str = "batch-size = 200\nfetch-wait-ms = 50\nack-wait-secs = 2\n";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_between_snapshots_folds_the_events_since_again_and_repeats_no_effect() {
    let gaps = kill_and_compare(0xC0FFEE, &format!("{QUICK}snapshot-interval = 4000\n"), 12).await;
    // Most kills left committed events after the last snapshot, for the restart to fold again.
    assert!(gaps >= 6, "only {gaps} kills landed between snapshots");
}

/// The highest committed sequence past the last snapshot, over both plugins (0: none).
fn snapshot_gap(db: &Path) -> u64 {
    let Ok(mut sink) = SqliteSink::open(db) else { return 0 };
    ["compute-resource", "person-archive"]
        .iter()
        .filter_map(|name| sink.checkpoint(name).ok().flatten())
        .map(|c| c.last_seq - c.snapshot_seq)
        .max()
        .unwrap_or(0)
}

/// Kills the daemon `kills` times while the events flow (with `settings` in its config), then
/// checks everything against the clean run; returns how many kills left committed events
/// after the last snapshot.
async fn kill_and_compare(default_seed: u64, settings: &str, kills_wanted: usize) -> usize {
    let seed = std::env::var("JETFOLD_CRASH_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(default_seed);
    let mut rng = Rng(seed);
    let Workload { dir, infra_file, people_file, expected_infra, expected_people } =
        workload(&mut rng);
    assert!(expected_people.commands.len() > 20, "the policy must have commands to emit");
    assert!(expected_infra.rejected > 500, "the stream must carry mistakes");

    let nats = NatsServer::start();
    let js = nats.jetstream().await;
    create_stream(&js, "INFRA", &["infra.>"]).await;
    create_stream(&js, "PEOPLE", &["people.person.>", "people.clock.>"]).await;
    create_stream(&js, "COMMANDS", &["people.commands.>"]).await;
    std::fs::write(
        dir.path().join("jetfold.toml"),
        format!(
            "plugin-dir = \"plugins\"\n{settings}cache-dir = \"{}\"\n[nats]\nurl = \"{}\"\n[sink]\nsqlite = \"jetfold.db\"\n[http]\nlisten = \"\"\n",
            cache_dir().display(),
            nats.url()
        ),
    )
    .unwrap();
    let db = dir.path().join("jetfold.db");
    let log = dir.path().join("daemon.log");

    // Events flow in while the daemon is killed: 20,000 events published in chunks.
    let publisher = {
        let (js, infra_file, people_file) = (js.clone(), infra_file.clone(), people_file.clone());
        tokio::spawn(async move {
            for (file, lines) in [(&infra_file, 15_000usize), (&people_file, 5_000)] {
                let all = std::fs::read_to_string(file).unwrap();
                let all: Vec<&str> = all.lines().collect();
                for (i, chunk) in all.chunks(500).enumerate() {
                    let part = file.with_extension(format!("part{i}"));
                    // Positions restart per chunk, so give each event its own id.
                    let text: Vec<String> = chunk
                        .iter()
                        .enumerate()
                        .map(|(j, l)| {
                            let mut v: serde_json::Value = serde_json::from_str(l).unwrap();
                            v["message_id"] = format!("{}-{}", file.display(), i * 500 + j).into();
                            v.to_string()
                        })
                        .collect();
                    std::fs::write(&part, text.join("\n")).unwrap();
                    publish_fixture(&js, &part).await;
                    tokio::time::sleep(Duration::from_millis(120)).await;
                }
                assert_eq!(all.len(), lines);
            }
        })
    };

    let mut kills = 0;
    let mut gaps = 0;
    let mut progress = Vec::new();
    let started = Instant::now();
    while kills < kills_wanted {
        let before = checkpoint(&db, "compute-resource") + checkpoint(&db, "person-archive");
        let mut child = spawn_daemon(dir.path(), &log);
        // Kill at a random moment once this incarnation has made progress (or after a while).
        let deadline = Instant::now() + Duration::from_secs(5);
        while checkpoint(&db, "compute-resource") + checkpoint(&db, "person-archive") == before
            && Instant::now() < deadline
        {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        tokio::time::sleep(Duration::from_millis(rng.below(150))).await;
        child.kill().unwrap();
        child.wait().unwrap();
        kills += 1;
        gaps += usize::from(snapshot_gap(&db) > 0);
        progress.push(checkpoint(&db, "compute-resource") + checkpoint(&db, "person-archive"));
        assert!(started.elapsed() < Duration::from_secs(600), "kill loop took too long");
    }
    publisher.await.unwrap();

    // The last incarnation finishes the streams and is stopped gracefully, once it runs both
    // plugins (the killed ones may have finished the streams already: then only its start
    // tells that it is up, and a process not yet started is not the daemon's to drain).
    let mut child = spawn_daemon_logging(dir.path(), &log, "warn,jetfold_host::daemon=info");
    let deadline = Instant::now() + Duration::from_secs(300);
    let started_both =
        || std::fs::read_to_string(&log).unwrap().matches("plugin started").count() >= 2;
    while checkpoint(&db, "compute-resource") < 15_000
        || checkpoint(&db, "person-archive") < 5_000
        || !started_both()
    {
        assert!(
            Instant::now() < deadline,
            "daemon did not finish; log:\n{}",
            std::fs::read_to_string(&log).unwrap()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Command::new("kill").args(["-TERM", &child.id().to_string()]).status().unwrap();
    let status = child.wait().unwrap();
    assert_eq!(
        status.code(),
        Some(0),
        "graceful stop exits 0; log:\n{}",
        std::fs::read_to_string(&log).unwrap()
    );
    // A graceful stop writes every state: nothing is left to fold again.
    assert_eq!(snapshot_gap(&db), 0, "states written at the stop");

    let rows = assert_sink_matches(&db, &expected_infra, &expected_people);

    // Every command published exactly once, as the clean run emitted it.
    let count = assert_commands_once(&js, &expected_people).await;
    eprintln!(
        "seed {seed:#x}: {kills} kills at committed totals {progress:?} ({gaps} between snapshots); {rows} rows, {count} commands"
    );
    // The kills landed while events were flowing, not all before or after.
    let during = progress.iter().filter(|&&p| p > 0 && p < 20_000).count();
    assert!(during >= kills_wanted - 2, "{progress:?}");
    gaps
}
