//! Swap pause: the WASM compute-resource projection folds a backlog of 300,000 events
//! (`JETFOLD_BENCH_EVENTS`) into SQLite while the plugin directory receives a new version 50
//! times (`JETFOLD_BENCH_SWAPS`), alternating two builds with different digests and the same
//! behaviour, each written atomically as an operator would. The pause of a swap runs from the
//! end of the old version's last event to the start of the new version's first; with a
//! backlog there is always an event waiting, so it is the swap's own cost. Prints p50, p99
//! and max; asserts nothing.

use std::time::{Duration, Instant};

use jetfold_host::{config::Config, daemon::Daemon};

mod common;
use common::events;

fn main() {
    let env = |k: &str, d: usize| std::env::var(k).ok().and_then(|v| v.parse().ok()).unwrap_or(d);
    let n = env("JETFOLD_BENCH_EVENTS", 300_000);
    let swaps = env("JETFOLD_BENCH_SWAPS", 50) as u64;
    let plugin = common::compute_resource();
    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.block_on(async {
        let (_nats, url, js) = common::infra().await;
        common::publish_all(&js, &events(n)).await;
        let dir = common::daemon_dir(&plugin);
        let wasm = dir.path().join("plugins/compute-resource/compute_resource.wasm");
        let a = std::fs::read(plugin.join("compute_resource.wasm")).unwrap();
        // The same component with a custom section appended: another digest.
        let mut b = a.clone();
        b.extend_from_slice(&[0, 10, 9]); // custom section: size 10, name of 9 bytes
        b.extend_from_slice(b"jetfold-b");
        let text = format!(
            "plugin-dir = \"plugins\"\nplugin-dir-poll-ms = 5\ncache-dir = \"cache\"\n[nats]\nurl = \"{url}\"\n[sink]\nsqlite = \"bench.db\"\n"
        );
        let config = Config::parse(&text, dir.path().to_path_buf(), |_| None).unwrap();
        // Both versions compiled into the cache first, as `jetfold plugin push` will.
        let loader = jetfold_host::component::ComponentLoader::new(Some(dir.path().join("cache"))).unwrap();
        for bytes in [&a, &b] {
            let tmp = dir.path().join("warm.wasm");
            std::fs::write(&tmp, bytes).unwrap();
            loader.load(jetfold_host::manifest::PluginKind::Projection, &tmp).unwrap();
        }
        let daemon = Daemon::start(config).await.unwrap();
        let mut progress = daemon.progress("compute-resource").unwrap();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let supervisor = tokio::spawn(jetfold_host::daemon::supervise(daemon, None, async move {
            let _ = stopped.await;
        }));
        progress.wait_for(|p| p.committed_seq > 0).await.unwrap();
        let started = Instant::now();
        let mut pauses = Vec::new();
        for k in 1..=swaps {
            let next = if k % 2 == 1 { &b } else { &a };
            jetfold_host::component::write_atomically(&wasm, next).unwrap();
            let p = progress.wait_for(|p| p.swaps == k).await.unwrap().clone();
            pauses.push(p.last_swap_pause.unwrap());
        }
        let elapsed = started.elapsed();
        let at = progress.borrow().committed_seq;
        stop.send(()).unwrap();
        supervisor.await.unwrap().unwrap();
        assert!(at < n as u64, "the backlog ran out before the last swap: raise JETFOLD_BENCH_EVENTS");
        pauses.sort();
        let ms = |d: Duration| d.as_secs_f64() * 1e3;
        println!(
            "{swaps} swaps in {:.2} s over a backlog (committed {at} of {n} events by the last):",
            elapsed.as_secs_f64()
        );
        println!(
            "  swap pause p50 {:.3} ms   p99 {:.3} ms   max {:.3} ms",
            ms(pauses[pauses.len() / 2]),
            ms(pauses[(pauses.len() * 99).div_ceil(100) - 1]),
            ms(pauses[pauses.len() - 1])
        );
    });
}
