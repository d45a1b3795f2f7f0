//! Memory per plugin: a daemon with 100 plugins loaded (`JETFOLD_BENCH_PLUGINS`), each a copy
//! of the compute-resource projection under its own name, each having folded the same 2,000
//! events over 200 resources (states cached, query instance made). The resident memory the
//! 99 beyond the first add, over the same daemon with one plugin (the baseline, same
//! process), divided by 99. Target: at most 10 MiB per plugin. Also the time to start them all (components
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
        let cache = tempfile::tempdir().unwrap();
        let manifest = std::fs::read_to_string(plugin.join("plugin.toml")).unwrap();
        // A daemon directory with `count` copies of the plugin, each under a name of its own.
        let layout = |count: usize| {
            let dir = tempfile::tempdir().unwrap();
            for i in 0..count {
                let dest = dir.path().join(format!("plugins/cr-{i:03}"));
                std::fs::create_dir_all(&dest).unwrap();
                let renamed = manifest
                    .replace("name = \"compute-resource\"", &format!("name = \"cr-{i:03}\""));
                std::fs::write(dest.join("plugin.toml"), renamed).unwrap();
                std::fs::copy(
                    plugin.join("compute_resource.wasm"),
                    dest.join("compute_resource.wasm"),
                )
                .unwrap();
            }
            let text = format!(
                "plugin-dir = \"plugins\"\ncache-dir = \"{}\"\n[http]\nlisten = \"\"\n[nats]\nurl = \"{url}\"\n[sink]\nsqlite = \"bench.db\"\n",
                cache.path().display()
            );
            let config = Config::parse(&text, dir.path().to_path_buf(), |_| None).unwrap();
            (dir, config)
        };
        // Started, and every plugin caught up with the stream: the start time and the time
        // until all have folded it.
        let run = async |config: Config| {
            let started = Instant::now();
            let daemon = Daemon::start(config).await.unwrap();
            let start = started.elapsed().as_secs_f64();
            for name in daemon.plugins() {
                let mut progress = daemon.progress(&name).unwrap();
                progress.wait_for(|p| p.committed_seq >= events as u64).await.unwrap();
            }
            (daemon, start, started.elapsed().as_secs_f64())
        };

        // The baseline: the same daemon with one plugin (it also fills the precompiled cache,
        // as a daemon that ran the plugin before has it).
        let (_one, config) = layout(1);
        let (daemon, _, _) = run(config).await;
        let with_one = rss();
        daemon.stop().await.unwrap();

        let (_all, config) = layout(n);
        let (daemon, start_secs, folded_secs) = run(config).await;
        let with_all = rss();
        let mib = |b: u64| b as f64 / (1 << 20) as f64;
        let per = mib(with_all.saturating_sub(with_one)) / (n - 1).max(1) as f64;
        println!(
            "  {n} plugins (compute-resource copies, {events} events folded by each): {per:.2} MiB per plugin \
             (target 10 MiB); resident {:.0} MiB with {n}, {:.0} MiB with one",
            mib(with_all),
            mib(with_one)
        );
        println!(
            "  start with {n} plugins (components from the precompiled cache): {:.0} ms; all {events} events folded by all: {folded_secs:.1} s",
            start_secs * 1e3
        );
        daemon.stop().await.unwrap();
    });
}
