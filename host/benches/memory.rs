//! Memory per plugin: a daemon with 100 plugins loaded (`JETFOLD_BENCH_PLUGINS`), each a copy
//! of the compute-resource projection under its own name, each having folded the same 2,000
//! events over 200 resources (states cached, query instance made). The resident memory they
//! add, over the same daemon with no plugin (the baseline, same process), divided by their
//! number. Target: at most 10 MiB per plugin. Also the time to start them all (components
//! loaded from the precompiled cache). Prints figures; asserts nothing.

use std::time::Instant;

use jetfold_host::{config::Config, daemon::Daemon};

mod common;

/// The process's resident memory, in bytes.
fn rss() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let kib: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap();
    kib * 1024
}

fn main() {
    let n: usize =
        std::env::var("JETFOLD_BENCH_PLUGINS").ok().and_then(|v| v.parse().ok()).unwrap_or(100);
    let events = 2_000;
    let plugin = common::compute_resource();
    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.block_on(async {
        let (_nats, url, js) = common::infra().await;
        common::publish_all(&js, &common::events(events)).await;
        let dir = tempfile::tempdir().unwrap();
        let cache = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("plugins")).unwrap();
        let text = format!(
            "plugin-dir = \"plugins\"\ncache-dir = \"{}\"\n[http]\nlisten = \"\"\n[nats]\nurl = \"{url}\"\n[sink]\nsqlite = \"bench.db\"\n",
            cache.path().display()
        );
        let config = || Config::parse(&text, dir.path().to_path_buf(), |_| None).unwrap();

        // The baseline: the same daemon with no plugin (its runtime, NATS client, sink).
        let empty = Daemon::start(config()).await.unwrap();
        let before = rss();
        empty.stop().await.unwrap();

        // The component compiled once into the cache, as a daemon that ran it before has it.
        let manifest = std::fs::read_to_string(plugin.join("plugin.toml")).unwrap();
        for i in 0..n {
            let dest = dir.path().join(format!("plugins/cr-{i:03}"));
            std::fs::create_dir_all(&dest).unwrap();
            let renamed = manifest.replace("name = \"compute-resource\"", &format!("name = \"cr-{i:03}\""));
            std::fs::write(dest.join("plugin.toml"), renamed).unwrap();
            std::fs::copy(plugin.join("compute_resource.wasm"), dest.join("compute_resource.wasm"))
                .unwrap();
        }
        let warm = Daemon::start(config()).await.unwrap();
        warm.stop().await.unwrap();
        std::fs::remove_file(dir.path().join("bench.db")).unwrap();

        let started = Instant::now();
        let daemon = Daemon::start(config()).await.unwrap();
        let start_secs = started.elapsed().as_secs_f64();
        for name in daemon.plugins() {
            let mut progress = daemon.progress(&name).unwrap();
            progress.wait_for(|p| p.committed_seq >= events as u64).await.unwrap();
        }
        let folded_secs = started.elapsed().as_secs_f64();
        let after = rss();
        let per = (after.saturating_sub(before)) as f64 / n as f64 / (1 << 20) as f64;
        println!(
            "  {n} plugins (compute-resource copies, {events} events folded each): {per:.2} MiB per plugin \
             (target 10 MiB); resident {:.0} MiB with them vs {:.0} MiB with none",
            after as f64 / (1 << 20) as f64,
            before as f64 / (1 << 20) as f64
        );
        println!(
            "  start with {n} plugins (from the precompiled cache): {:.0} ms; all {events} events folded by all: {folded_secs:.1} s",
            start_secs * 1e3
        );
        daemon.stop().await.unwrap();
    });
}
