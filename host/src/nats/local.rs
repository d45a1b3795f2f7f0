//! A local nats-server for the demo and the benchmarks: the 2.15 binary `scripts/setup`
//! installs, on a free port, with its store in a temporary directory.

use std::{
    path::PathBuf,
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};

/// A nats-server this process started; killed on drop.
pub struct LocalNats {
    child: Child,
    port: u16,
    store: tempfile::TempDir,
    config: Option<PathBuf>,
}

impl Drop for LocalNats {
    fn drop(&mut self) {
        self.child.kill().ok();
        self.child.wait().ok();
    }
}

/// The nats-server binary: `$JETFOLD_NATS_SERVER`, the one `scripts/setup` installs, or PATH.
pub fn nats_server_binary() -> PathBuf {
    if let Some(p) = std::env::var_os("JETFOLD_NATS_SERVER") {
        return PathBuf::from(p);
    }
    let cache = std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")));
    match cache.map(|c| c.join("jetfold/tools/bin/nats-server")) {
        Some(p) if p.exists() => p,
        _ => PathBuf::from("nats-server"),
    }
}

/// Starts nats-server with JetStream on a free port, its store in a temporary directory, and
/// waits until it accepts connections.
pub fn start() -> anyhow::Result<LocalNats> {
    start_with_config(None)
}

/// [`start`], with a nats-server configuration file's text (authorization, TLS, …) as well;
/// the address, port, JetStream and store given on the command line take precedence.
pub fn start_with_config(config: Option<&str>) -> anyhow::Result<LocalNats> {
    let store = tempfile::tempdir()?;
    let config = match config {
        Some(text) => {
            let path = store.path().join("nats-server.conf");
            std::fs::write(&path, text)?;
            Some(path)
        }
        None => None,
    };
    let port = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
    let child = spawn(port, &store, config.as_deref())?;
    let nats = LocalNats { child, port, store, config };
    nats.wait_ready()?;
    Ok(nats)
}

fn spawn(
    port: u16,
    store: &tempfile::TempDir,
    config: Option<&std::path::Path>,
) -> anyhow::Result<Child> {
    let binary = nats_server_binary();
    let mut command = Command::new(&binary);
    if let Some(config) = config {
        command.arg("-c").arg(config);
    }
    command
        .args(["-a", "127.0.0.1", "-p", &port.to_string(), "-js", "-sd"])
        .arg(store.path().join("jetstream"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .with_context(|| {
            format!("failed to start {} (run scripts/setup to install it)", binary.display())
        })
}

impl LocalNats {
    /// Its URL.
    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    /// Kills the server and starts it again on the same port and store.
    pub fn restart(&mut self) -> anyhow::Result<()> {
        self.stop();
        self.resume()
    }

    /// Kills the server; [`LocalNats::resume`] starts it again.
    pub fn stop(&mut self) {
        self.child.kill().ok();
        self.child.wait().ok();
    }

    /// Starts a stopped server again on the same port and store.
    pub fn resume(&mut self) -> anyhow::Result<()> {
        self.child = spawn(self.port, &self.store, self.config.as_deref())?;
        self.wait_ready()
    }

    fn wait_ready(&self) -> anyhow::Result<()> {
        let deadline = Instant::now() + Duration::from_secs(20);
        while std::net::TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            if Instant::now() > deadline {
                bail!("nats-server did not start on port {}", self.port);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(())
    }
}
