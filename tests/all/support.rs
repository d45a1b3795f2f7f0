//! Shared helpers: building plugins once per run, running the `jetfold` binary.

use std::{
    collections::HashMap,
    path::{Path, PathBuf},
    process::{Command, Output},
    sync::{Mutex, OnceLock},
};

use jetfold_host::builder::{BuildOptions, build_plugin};

/// The repository root.
pub fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap().to_path_buf()
}

/// Cargo's target directory of this test run (the test binary lives in `<target>/debug/deps`).
pub fn target_dir() -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    exe.ancestors().nth(3).unwrap().to_path_buf()
}

/// The precompiled-component cache shared by this run's tests.
pub fn cache_dir() -> PathBuf {
    target_dir().join("jetfold-test-cache")
}

/// Builds `plugins/<name>` once per test binary and returns its directory.
pub fn plugin(name: &str) -> PathBuf {
    static BUILT: OnceLock<Mutex<HashMap<String, PathBuf>>> = OnceLock::new();
    let mut built = BUILT.get_or_init(Default::default).lock().unwrap_or_else(|e| e.into_inner());
    if let Some(dir) = built.get(name) {
        return dir.clone();
    }
    let dir = root().join("plugins").join(name);
    // A target directory of its own: the outer `cargo test` holds the lock on the main one.
    let options =
        BuildOptions { target_dir: Some(target_dir().join("jetfold-guests")), debug: false };
    let out =
        build_plugin(&dir, &options).unwrap_or_else(|e| panic!("building plugin {name}: {e:#}"));
    assert!(out.wasm.exists());
    built.insert(name.to_string(), dir.clone());
    dir
}

/// Copies a built plugin's manifest and component into a fresh temporary directory.
pub fn plugin_copy(name: &str) -> tempfile::TempDir {
    let src = plugin(name);
    let tmp = tempfile::tempdir().unwrap();
    for entry in std::fs::read_dir(&src).unwrap() {
        let path = entry.unwrap().path();
        let keep = path.extension().is_some_and(|e| e == "wasm")
            || path.file_name().unwrap() == "plugin.toml";
        if keep {
            std::fs::copy(&path, tmp.path().join(path.file_name().unwrap())).unwrap();
        }
    }
    std::fs::create_dir(tmp.path().join("fixtures")).unwrap();
    if let Ok(events) = std::fs::read(src.join("fixtures/events.jsonl")) {
        std::fs::write(tmp.path().join("fixtures/events.jsonl"), events).unwrap();
    }
    tmp
}

/// The result of running `jetfold`.
pub struct Run {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

impl Run {
    /// Both streams, for assertion messages.
    pub fn all(&self) -> String {
        format!("exit {}\n--- stdout\n{}\n--- stderr\n{}", self.code, self.stdout, self.stderr)
    }
}

/// Runs the `jetfold` binary with `args`.
pub fn jetfold<I, S>(args: I) -> Run
where
    I: IntoIterator<Item = S>,
    S: AsRef<std::ffi::OsStr>,
{
    let Output { status, stdout, stderr } = Command::new(env!("CARGO_BIN_EXE_jetfold"))
        .args(args)
        .env("JETFOLD_CACHE_DIR", cache_dir())
        .output()
        .expect("run jetfold");
    Run {
        code: status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&stdout).into_owned(),
        stderr: String::from_utf8_lossy(&stderr).into_owned(),
    }
}

/// A real nats-server (2.15, from scripts/setup) on a free port with a temporary store
/// directory, stopped on drop.
pub struct NatsServer(jetfold_host::nats::local::LocalNats);

impl NatsServer {
    /// Starts a server with JetStream and waits until it accepts connections.
    pub fn start() -> NatsServer {
        // Never a nats-server from PATH: Debian's 2.9 ignores multi-filter consumers.
        let binary = jetfold_host::nats::local::nats_server_binary();
        assert!(binary.is_absolute(), "the 2.15 nats-server is missing: run scripts/setup");
        NatsServer(jetfold_host::nats::local::start().expect("start nats-server"))
    }

    /// Its URL.
    pub fn url(&self) -> String {
        self.0.url()
    }

    /// Kills the server and starts it again on the same port and store.
    pub fn restart(&mut self) {
        self.0.restart().expect("restart nats-server");
    }

    /// Kills the server (clients see it unreachable); [`NatsServer::resume`] starts it again.
    pub fn stop(&mut self) {
        self.0.stop();
    }

    /// Starts a stopped server again on the same port and store.
    pub fn resume(&mut self) {
        self.0.resume().expect("start nats-server again");
    }

    /// A client with JetStream.
    pub async fn jetstream(&self) -> async_nats::jetstream::Context {
        async_nats::jetstream::new(async_nats::connect(self.url()).await.unwrap())
    }
}

/// Creates a stream capturing `subjects`.
pub async fn create_stream(js: &async_nats::jetstream::Context, name: &str, subjects: &[&str]) {
    js.create_stream(async_nats::jetstream::stream::Config {
        name: name.into(),
        subjects: subjects.iter().map(|s| s.to_string()).collect(),
        ..Default::default()
    })
    .await
    .unwrap();
}

/// Publishes the events of a fixture file (its query lines skipped); returns how many. Acks
/// are awaited 1,000 at a time: with many more in flight, publishing stalls.
pub async fn publish_fixture(js: &async_nats::jetstream::Context, fixture: &Path) -> usize {
    let lines = jetfold_host::fold::read_fixture(fixture).unwrap();
    let mut acks = Vec::new();
    let mut n = 0;
    for (_, line) in lines {
        if let jetfold_host::fold::FixtureLine::Event(event) = line {
            acks.push(jetfold_host::nats::publish_event(js, &event).await.unwrap());
            n += 1;
        }
        if acks.len() == 1_000 {
            for ack in acks.drain(..) {
                ack.await.unwrap();
            }
        }
    }
    for ack in acks {
        ack.await.unwrap();
    }
    n
}

/// A daemon layout in a temporary directory: `plugins/<name>` copies of built plugins.
pub fn daemon_dir(plugins: &[&str]) -> tempfile::TempDir {
    let tmp = tempfile::tempdir().unwrap();
    for name in plugins {
        let copy = plugin_copy(name);
        let dest = tmp.path().join("plugins").join(name);
        std::fs::create_dir_all(&dest).unwrap();
        for entry in std::fs::read_dir(copy.path()).unwrap() {
            let path = entry.unwrap().path();
            if path.is_file() {
                std::fs::copy(&path, dest.join(path.file_name().unwrap())).unwrap();
            }
        }
    }
    tmp
}

/// Polls `check` every 20 ms until it holds; panics with `what` after `secs` seconds.
pub async fn eventually(secs: u64, what: &str, mut check: impl FnMut() -> bool) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(secs);
    while !check() {
        assert!(std::time::Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
}

/// The last sequence a plugin committed to the SQLite file `db` (0 before its first commit).
pub fn checkpoint(db: &Path, plugin: &str) -> u64 {
    jetfold_host::sink::sqlite::SqliteSink::open(db)
        .ok()
        .and_then(|mut s| s.checkpoint(plugin).ok().flatten())
        .map(|c| c.last_seq)
        .unwrap_or(0)
}

/// Starts the daemon in-process with `config`; the sender stops it (it drains first).
pub fn start_daemon(
    config: jetfold_host::config::Config,
) -> (tokio::sync::oneshot::Sender<()>, tokio::task::JoinHandle<anyhow::Result<()>>) {
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(jetfold_host::daemon::run(config, async move {
        let _ = rx.await;
    }));
    (tx, task)
}

/// Writes `dir/jetfold.toml` for a daemon on `nats` with `plugins/` and `jetfold.db` in `dir`
/// (batches of 4, quick fetches); returns its path.
pub fn write_config(dir: &Path, nats: &NatsServer) -> String {
    let path = dir.join("jetfold.toml");
    let text = format!(
        "plugin-dir = \"plugins\"\nbatch-size = 4\nfetch-wait-ms = 50\ncache-dir = \"{}\"\n[nats]\nurl = \"{}\"\n[sink]\nsqlite = \"jetfold.db\"\n",
        cache_dir().display(),
        nats.url()
    );
    std::fs::write(&path, text).unwrap();
    path.display().to_string()
}

/// A `jetfold run --config CONFIG` process (JSON logs at `info` into a file), killed on drop.
pub struct DaemonProcess {
    pub child: std::process::Child,
    pub log: PathBuf,
}

impl DaemonProcess {
    /// Starts the daemon with `config`; its log goes to `log` (appended).
    pub fn start(config: &Path, log: &Path) -> DaemonProcess {
        let file = std::fs::OpenOptions::new().create(true).append(true).open(log).unwrap();
        let child = Command::new(env!("CARGO_BIN_EXE_jetfold"))
            .args(["run", "--log-format", "json", "--config"])
            .arg(config)
            .env("JETFOLD_LOG", "info")
            .env("JETFOLD_CACHE_DIR", cache_dir())
            .stdout(std::process::Stdio::null())
            .stderr(file)
            .spawn()
            .unwrap();
        DaemonProcess { child, log: log.to_path_buf() }
    }

    /// The log lines written so far, as JSON.
    pub fn lines(&self) -> Vec<serde_json::Value> {
        std::fs::read_to_string(&self.log)
            .unwrap_or_default()
            .lines()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect()
    }

    /// Waits (20 ms apart) until `check` holds; panics after `secs` with the log.
    pub async fn wait(&self, secs: u64, what: &str, mut check: impl FnMut() -> bool) {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(secs);
        while !check() {
            assert!(
                std::time::Instant::now() < deadline,
                "timed out waiting for {what}; log:\n{}",
                std::fs::read_to_string(&self.log).unwrap_or_default()
            );
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
    }

    /// The log as written so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Panics if the process has exited.
    pub fn assert_running(&mut self) {
        if let Some(status) = self.child.try_wait().unwrap() {
            panic!("the daemon exited ({status}); log:\n{}", self.log());
        }
    }

    /// Sends `signal` (`TERM`, `INT`, `HUP`, `KILL`).
    pub fn signal(&self, signal: &str) {
        let status = Command::new("kill")
            .args([format!("-{signal}"), self.child.id().to_string()])
            .status()
            .unwrap();
        assert!(status.success());
    }

    /// SIGTERM, then its exit code once it exits.
    pub fn stop(mut self) -> Option<i32> {
        self.signal("TERM");
        self.child.wait().unwrap().code()
    }
}

impl Drop for DaemonProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
