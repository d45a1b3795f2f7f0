//! A local nats-server for the demo and the benchmarks: the 2.15 binary `scripts/setup`
//! installs, on a free port, with its store in a temporary directory.

use std::{
    path::PathBuf,
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};

/// A nats-server the demo started; killed on drop.
pub struct LocalNats {
    child: Child,
    _store: tempfile::TempDir,
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

/// Starts nats-server with JetStream on a free port, its store in a temporary directory;
/// returns it (killed on drop) and its URL.
pub fn start() -> anyhow::Result<(LocalNats, String)> {
    let store = tempfile::tempdir()?;
    let port = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
    let binary = nats_server_binary();
    let child = Command::new(&binary)
        .args(["-a", "127.0.0.1", "-p", &port.to_string(), "-js", "-sd"])
        .arg(store.path())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .with_context(|| {
            format!("failed to start {} (run scripts/setup to install it)", binary.display())
        })?;
    let nats = LocalNats { child, _store: store };
    let deadline = Instant::now() + Duration::from_secs(20);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        if Instant::now() > deadline {
            bail!("nats-server did not start on port {port}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    Ok((nats, format!("nats://127.0.0.1:{port}")))
}
