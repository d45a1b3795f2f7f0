//! Subjects plugins publish to: a stream must capture them for JetStream to confirm a
//! message. The daemon creates one where none captures a plugin's `[allow] subjects`, so the
//! policy of `jetfold new` runs as docs/authoring.md says on a fresh server; where it cannot,
//! the error names the subject, and the command is not published again until a stream
//! captures it.

use std::{
    collections::BTreeMap,
    path::Path,
    process::{Child, Command, Stdio},
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use futures::StreamExt as _;

use crate::support::{
    NatsServer, cache_dir, checkpoint, create_stream, daemon_dir, eventually, jetfold, plugin,
    publish_fixture, root,
};

fn write_config(dir: &Path, nats: &NatsServer) -> String {
    let path = dir.join("jetfold.toml");
    let text = format!(
        "plugin-dir = \"plugins\"\ncache-dir = \"{}\"\n[nats]\nurl = \"{}\"\n[sink]\nsqlite = \"jetfold.db\"\n[http]\nlisten = \"\"\n",
        cache_dir().display(),
        nats.url()
    );
    std::fs::write(&path, text).unwrap();
    path.display().to_string()
}

fn spawn_daemon(dir: &Path) -> Child {
    let log = std::fs::File::create(dir.join("daemon.log")).unwrap();
    Command::new(env!("CARGO_BIN_EXE_jetfold"))
        .args(["run", "--config"])
        .arg(dir.join("jetfold.toml"))
        .env("JETFOLD_CACHE_DIR", cache_dir())
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .unwrap()
}

fn log(dir: &Path) -> String {
    std::fs::read_to_string(dir.join("daemon.log")).unwrap_or_default()
}

/// SIGTERM, and the exit code once it exits.
fn stop(mut child: Child) -> Option<i32> {
    let sent = Command::new("kill").args(["-TERM", &child.id().to_string()]).status().unwrap();
    assert!(sent.success());
    child.wait().unwrap().code()
}

/// Every message a core subscriber of `subject` receives, by subject, as they come.
async fn core_subscriber(nats: &NatsServer, subject: &str) -> Arc<Mutex<Vec<String>>> {
    let client = async_nats::connect(nats.url()).await.unwrap();
    let mut subscription = client.subscribe(subject.to_string()).await.unwrap();
    client.flush().await.unwrap();
    let received = Arc::new(Mutex::new(Vec::new()));
    let sink = received.clone();
    tokio::spawn(async move {
        let _client = client;
        while let Some(m) = subscription.next().await {
            sink.lock().unwrap().push(m.subject.to_string());
        }
    });
    received
}

/// The messages of `stream`, by message id: subject and payload.
async fn stored(
    js: &async_nats::jetstream::Context,
    stream: &str,
) -> BTreeMap<String, (String, serde_json::Value)> {
    let stream = js.get_stream(stream).await.unwrap();
    let count = stream.clone().get_info().await.unwrap().state.messages as usize;
    let consumer = stream
        .create_consumer(async_nats::jetstream::consumer::pull::OrderedConfig::default())
        .await
        .unwrap();
    let mut messages = consumer.messages().await.unwrap().take(count);
    let mut all = BTreeMap::new();
    while let Some(m) = messages.next().await {
        let m = m.unwrap();
        let id = m.headers.as_ref().unwrap().get("Nats-Msg-Id").unwrap().as_str().to_string();
        let payload = serde_json::from_slice(&m.payload).unwrap();
        assert!(all.insert(id.clone(), (m.subject.to_string(), payload)).is_none(), "{id} twice");
    }
    all
}

async fn stream_messages(js: &async_nats::jetstream::Context, stream: &str) -> u64 {
    match js.get_stream(stream).await {
        Ok(mut s) => s.info().await.map_or(0, |i| i.state.messages),
        Err(_) => 0,
    }
}

/// docs/authoring.md with the policy of `jetfold new`: built, copied into a daemon's
/// plugin directory, its fixture published with `jetfold publish`, run on a fresh server
/// where no stream captures `commands.>`. The daemon creates one, the command is stored
/// once, and a core subscriber gets it once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_scaffolded_policy_publishes_its_command_on_a_fresh_server() {
    let nats = NatsServer::start();
    let root = tempfile::tempdir().unwrap();
    let project = root.path().join("my-policy");
    let made = jetfold(
        ["new", "my-policy", "--lang", "rust", "--kind", "policy", "--dir"]
            .map(String::from)
            .into_iter()
            .chain([project.display().to_string()]),
    );
    assert_eq!(made.code, 0, "{}", made.all());
    let (built, build_log) = crate::scaffold::build_script(&project);
    assert!(built, "{build_log}");

    let daemon = root.path().join("daemon");
    let plugin_dir = daemon.join("plugins/my-policy");
    std::fs::create_dir_all(&plugin_dir).unwrap();
    for file in ["plugin.toml", "my_policy.wasm"] {
        std::fs::copy(project.join(file), plugin_dir.join(file)).unwrap();
    }
    let config = write_config(&daemon, &nats);
    let events = project.join("fixtures/events.jsonl").display().to_string();
    let published = jetfold(["publish", &events, "--stream", "DEMO", "--config", &config]);
    assert_eq!(published.code, 0, "{}", published.all());
    let received = core_subscriber(&nats, "commands.>").await;

    let child = spawn_daemon(&daemon);
    let js = nats.jetstream().await;
    let db = daemon.join("jetfold.db");
    eventually(120, "the fixture folded", || checkpoint(&db, "my-policy") == 7).await;
    let deadline = Instant::now() + Duration::from_secs(60);
    while stream_messages(&js, "JETFOLD_COMMANDS").await < 1 {
        assert!(Instant::now() < deadline, "no command stored; log:\n{}", log(&daemon));
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let text = log(&daemon);
    assert!(text.contains("created a stream for the subjects the plugin may publish to"), "{text}");
    assert_eq!(stop(child), Some(0), "{}", log(&daemon));
    let commands = stored(&js, "JETFOLD_COMMANDS").await;
    let (subject, payload) = &commands["my-policy:DEMO:7:0"];
    assert_eq!(subject, "commands.r-1.Quarantine");
    assert_eq!(payload, &serde_json::json!({"id": "r-1", "failures": 3}));
    assert_eq!(commands.len(), 1, "{commands:?}");
    // A round trip on the subscriber's server: anything published has been delivered.
    async_nats::connect(nats.url()).await.unwrap().flush().await.unwrap();
    assert_eq!(*received.lock().unwrap(), ["commands.r-1.Quarantine"]);
    assert!(!log(&daemon).contains("retrying"), "{}", log(&daemon));
}

/// person-archive may publish to `people.commands.>`, but a stream already captures one
/// subject of it (`people.commands.audit`), so no stream can be created for all of it: the
/// start says so, each retry names the subject no stream captures, and the command is not
/// published again (a core subscriber gets no more copies) until a stream captures it; then
/// it is stored once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_command_no_stream_captures_is_held_with_an_error_naming_its_subject() {
    plugin("person-archive");
    let nats = NatsServer::start();
    let js = nats.jetstream().await;
    create_stream(&js, "PEOPLE", &["people.person.>", "people.clock.>"]).await;
    create_stream(&js, "AUDIT", &["people.commands.audit"]).await;
    let fixture = root().join("plugins/person-archive/fixtures/events.jsonl");
    let n = publish_fixture(&js, &fixture).await as u64;
    let expected = crate::crash::fold_offline("person-archive", &fixture).commands;
    assert!(!expected.is_empty());
    let dir = daemon_dir(&["person-archive"]);
    let dir = dir.path();
    write_config(dir, &nats);
    let received = core_subscriber(&nats, "people.commands.>").await;

    let child = spawn_daemon(dir);
    let errors = || log(dir).matches("no stream captures subject `people.commands.").count();
    eventually(60, "the first publish failing", || errors() >= 1).await;
    let copies = received.lock().unwrap().len();
    assert!(copies >= 1, "the first attempt published");
    eventually(60, "two more attempts", || errors() >= 3).await;
    let text = log(dir);
    assert!(
        text.contains("no stream captures all of the subjects `people.commands.>`"),
        "the start names the subjects no stream captures:\n{text}"
    );
    assert!(text.contains("AUDIT"), "and the stream in the way:\n{text}");
    assert_eq!(received.lock().unwrap().len(), copies, "retries published no more copies");

    // A stream for the commands: they go out, each stored once.
    create_stream(&js, "ARCHIVES", &["people.commands.*.ArchivePerson"]).await;
    let deadline = Instant::now() + Duration::from_secs(60);
    while stream_messages(&js, "ARCHIVES").await < expected.len() as u64
        || checkpoint(&dir.join("jetfold.db"), "person-archive") < n
    {
        assert!(Instant::now() < deadline, "commands not stored; log:\n{}", log(dir));
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(stop(child), Some(0), "{}", log(dir));
    // Stored once each (`stored` checks the message ids), as the offline fold emits them.
    let mut commands: Vec<_> = stored(&js, "ARCHIVES").await.into_values().collect();
    let mut wanted: Vec<_> = expected.values().cloned().collect();
    commands.sort_by_key(|c| c.0.clone());
    wanted.sort_by_key(|c| c.0.clone());
    assert_eq!(commands, wanted);
    async_nats::connect(nats.url()).await.unwrap().flush().await.unwrap();
    // Each command reached the core subscriber at most twice: the first attempt, and once
    // a stream captured it.
    let received = received.lock().unwrap().clone();
    for (subject, _) in expected.values() {
        let n = received.iter().filter(|s| *s == subject).count();
        assert!((1..=2).contains(&n), "{subject}: {n} copies in {received:?}");
    }
}
