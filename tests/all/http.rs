//! The daemon as an operator runs it: `jetfold run` with the command line and environment of
//! the systemd unit in `deploy/`, configured from the example config there; scraped over HTTP
//! (`/metrics`, `/healthz`, `/readyz`, `/plugins`), its JSON logs read, and its status page
//! loaded in a real headless Chromium.

use std::{
    io::{Read as _, Write as _},
    net::TcpStream,
    path::Path,
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use crate::support::{NatsServer, cache_dir, create_stream, daemon_dir, plugin, root};

/// `GET path` on `address`: the status code and the body.
pub(crate) fn get(address: &str, path: &str) -> (u16, String) {
    let mut stream = TcpStream::connect(address).unwrap();
    stream.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    write!(stream, "GET {path} HTTP/1.1\r\nHost: {address}\r\nConnection: close\r\n\r\n").unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).unwrap();
    let (head, body) = response.split_once("\r\n\r\n").expect("a response head");
    let code = head.split(' ').nth(1).and_then(|c| c.parse().ok()).expect("a status code");
    (code, body.to_string())
}

/// The value of the sample `name{labels}` in a Prometheus text exposition.
pub(crate) fn sample(metrics: &str, series: &str) -> f64 {
    metrics
        .lines()
        .find_map(|l| l.strip_prefix(series).and_then(|rest| rest.strip_prefix(' ')))
        .unwrap_or_else(|| panic!("no sample {series} in\n{metrics}"))
        .parse()
        .unwrap()
}

/// The unit's `key=value` lines for `key`.
fn unit_values<'a>(unit: &'a str, key: &str) -> Vec<&'a str> {
    unit.lines().filter_map(|l| l.strip_prefix(key).and_then(|r| r.strip_prefix('='))).collect()
}

/// Starts `jetfold` as `deploy/jetfold.service` does, with `config` in place of
/// `/etc/jetfold/jetfold.toml`; its stderr goes to `log`.
fn start_as_the_unit_says(config: &Path, log: &Path) -> Child {
    let unit = std::fs::read_to_string(root().join("deploy/jetfold.service")).unwrap();
    let exec = unit_values(&unit, "ExecStart");
    assert_eq!(exec.len(), 1, "one ExecStart");
    let mut words = exec[0].split_whitespace();
    assert_eq!(words.next(), Some("/usr/local/bin/jetfold"));
    let args: Vec<String> = words
        .map(|w| match w {
            "/etc/jetfold/jetfold.toml" => config.display().to_string(),
            other => other.to_string(),
        })
        .collect();
    assert!(args.iter().any(|a| a == &config.display().to_string()), "{args:?}");
    // systemd's own check of the unit (syntax, options, the command), where systemd is
    // installed, with the binary where the unit expects it.
    if let Some(analyze) = which("systemd-analyze") {
        let dir = tempfile::tempdir().unwrap();
        let copy = dir.path().join("jetfold.service");
        let binary = env!("CARGO_BIN_EXE_jetfold");
        std::fs::write(&copy, unit.replace("/usr/local/bin/jetfold", binary)).unwrap();
        let out = Command::new(analyze).arg("verify").arg(&copy).output().unwrap();
        let said = String::from_utf8_lossy(&out.stderr).to_string()
            + &String::from_utf8_lossy(&out.stdout);
        assert!(out.status.success() && said.trim().is_empty(), "systemd-analyze verify: {said}");
    }
    let mut command = Command::new(env!("CARGO_BIN_EXE_jetfold"));
    command.args(&args);
    for assignment in unit_values(&unit, "Environment") {
        let (key, value) = assignment.split_once('=').unwrap();
        command.env(key, value);
    }
    let log = std::fs::File::create(log).unwrap();
    command.stdout(Stdio::null()).stderr(log).spawn().unwrap()
}

/// The example config, pointed at `dir`, `nats` and a free port, with the test's streams.
fn example_config(dir: &Path, nats: &NatsServer) -> std::path::PathBuf {
    let example = std::fs::read_to_string(root().join("deploy/jetfold.toml")).unwrap();
    let mut text = String::new();
    for line in example.lines() {
        let key = line.split('=').next().unwrap_or("").trim();
        let line = match key {
            "plugin-dir" => format!("plugin-dir = \"{}\"", dir.join("plugins").display()),
            "cache-dir" => format!("cache-dir = \"{}\"", cache_dir().display()),
            "sqlite" => format!("sqlite = \"{}\"", dir.join("jetfold.db").display()),
            "url" => format!("url = \"{}\"", nats.url()),
            "listen" => "listen = \"127.0.0.1:0\"".to_string(),
            _ => line.to_string(),
        };
        text.push_str(&line);
        text.push('\n');
    }
    for name in ["faulty", "event-counter"] {
        text.push_str(&format!("[plugins.{name}]\nstream = \"TEST\"\nsubjects = [\"test.>\"]\n"));
    }
    let path = dir.join("jetfold.toml");
    std::fs::write(&path, text).unwrap();
    path
}

/// The JSON log lines written so far.
fn log_lines(log: &Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(log)
        .unwrap_or_default()
        .lines()
        .map(|l| {
            serde_json::from_str(l).unwrap_or_else(|e| panic!("not a JSON log line ({e}): {l}"))
        })
        .collect()
}

/// Polls until `check` holds (20 ms apart), or panics after `secs` with the daemon's log.
fn wait(secs: u64, what: &str, log: &Path, mut check: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(secs);
    while !check() {
        assert!(
            Instant::now() < deadline,
            "timed out waiting for {what}; log:\n{}",
            std::fs::read_to_string(log).unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A cell of the status page's plugin row, as Chromium rendered it.
fn cell<'a>(dom: &'a str, plugin: &str, field: &str) -> &'a str {
    let row = &dom[dom
        .find(&format!("<tr data-plugin=\"{plugin}\">"))
        .unwrap_or_else(|| panic!("no row for {plugin}:\n{dom}"))..];
    let row = &row[..row.find("</tr>").unwrap()];
    let at = row
        .find(&format!("data-field=\"{field}\""))
        .unwrap_or_else(|| panic!("no {field} in {row}"));
    let text = &row[at..];
    let text = &text[text.find('>').unwrap() + 1..];
    &text[..text.find("</td>").unwrap()]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_daemon_run_as_the_systemd_unit_says_serves_metrics_health_logs_and_its_status_page() {
    let chromium = which("chromium").expect("Debian's chromium is missing: run scripts/setup");
    plugin("faulty");
    plugin("event-counter");
    let nats = NatsServer::start();
    let js = nats.jetstream().await;
    create_stream(&js, "TEST", &["test.>"]).await;
    let publish = |types: &'static [&'static str], first: usize| {
        let js = js.clone();
        async move {
            for (i, ty) in types.iter().enumerate() {
                let mut headers = async_nats::HeaderMap::new();
                headers.insert("Correlation-Id", format!("corr-{}", first + i).as_str());
                js.publish_with_headers(format!("test.fault.a.{ty}"), headers, "{}".into())
                    .await
                    .unwrap()
                    .await
                    .unwrap();
            }
        }
    };
    // Three ways to fail among four good events; never two failures in a row.
    publish(&["Ok", "Fail", "Ok", "Sneak", "Ok", "Panic", "Ok"], 0).await;
    let dir = daemon_dir(&["faulty", "event-counter"]);
    // Two malfunctions in a row stop `faulty` (its circuit breaker).
    let manifest = dir.path().join("plugins/faulty/plugin.toml");
    let text = std::fs::read_to_string(&manifest).unwrap();
    std::fs::write(&manifest, text.replace("[limits]", "[limits]\nmax-consecutive-failures = 2"))
        .unwrap();
    let config = example_config(dir.path(), &nats);
    let log = dir.path().join("daemon.log");
    let mut daemon = start_as_the_unit_says(&config, &log);

    // The address it serves on, from its (JSON) log.
    let mut address = String::new();
    wait(60, "the HTTP endpoint's address in the log", &log, || {
        let lines = std::fs::read_to_string(&log).unwrap_or_default();
        let found = lines
            .lines()
            .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
            .find_map(|l| l["fields"]["address"].as_str().map(str::to_string));
        found.map(|a| address = a).is_some()
    });
    wait(60, "both plugins to commit the 7 events", &log, || {
        let (_, body) = get(&address, "/plugins");
        let plugins: serde_json::Value = serde_json::from_str(&body).unwrap();
        plugins["plugins"].as_array().unwrap().iter().filter(|p| p["committed_seq"] == 7).count()
            == 2
    });

    assert_eq!(get(&address, "/healthz"), (200, "ok\n".to_string()));
    wait(10, "/readyz to see the lag drop to 0", &log, || get(&address, "/readyz").0 == 200);
    let (code, metrics) = get(&address, "/metrics");
    assert_eq!(code, 200);
    let faulty = |series: &str, labels: &str| {
        sample(&metrics, &format!("{series}{{plugin=\"faulty\"{labels}}}"))
    };
    assert_eq!(sample(&metrics, "jetfold_events_total{plugin=\"event-counter\"}"), 7.0);
    assert_eq!(faulty("jetfold_events_total", ""), 7.0);
    assert_eq!(faulty("jetfold_failures_total", ",kind=\"error\""), 1.0);
    assert_eq!(faulty("jetfold_failures_total", ",kind=\"trap\""), 1.0);
    assert_eq!(faulty("jetfold_failures_total", ",kind=\"rejected-effect\""), 1.0);
    assert_eq!(faulty("jetfold_dead_letters_total", ""), 3.0);
    assert_eq!(faulty("jetfold_effects_total", ",kind=\"upsert\""), 4.0);
    assert_eq!(faulty("jetfold_consumer_lag", ""), 0.0);
    assert_eq!(faulty("jetfold_committed_sequence", ""), 7.0);
    assert_eq!(faulty("jetfold_guest_call_seconds_count", ""), 7.0);
    assert_eq!(faulty("jetfold_guest_call_seconds_bucket", ",le=\"+Inf\""), 7.0);
    assert!(faulty("jetfold_guest_call_seconds_sum", "") > 0.0);
    assert!(faulty("jetfold_fuel_consumed_total", "") > 0.0);
    // Where the time went, stage by stage: every stage is there, the working ones above zero.
    for stage in ["read", "decode", "states", "guest", "route", "commit", "publish", "ack"] {
        let spent = faulty("jetfold_stage_seconds_total", &format!(",stage=\"{stage}\""));
        assert!(spent >= 0.0, "{stage}: {metrics}");
    }
    for stage in ["decode", "guest", "commit"] {
        let spent = faulty("jetfold_stage_seconds_total", &format!(",stage=\"{stage}\""));
        assert!(spent > 0.0, "{stage}: {metrics}");
    }
    assert_eq!(sample(&metrics, "jetfold_ready"), 1.0);
    // The version it names is the one that committed.
    let mut sink =
        jetfold_host::sink::sqlite::SqliteSink::open(&dir.path().join("jetfold.db")).unwrap();
    let digest = sink.checkpoint("faulty").unwrap().unwrap().digest;
    let info = format!(
        "jetfold_plugin_info{{plugin=\"faulty\",kind=\"projection\",digest=\"{digest}\",status=\"running\"}}"
    );
    assert_eq!(sample(&metrics, &info), 1.0);

    // Every log line about an event names the plugin, digest, sequence and correlation id.
    let rejected: Vec<serde_json::Value> = log_lines(&log)
        .into_iter()
        .filter(|l| l["fields"]["message"] == "event rejected" && l["fields"]["plugin"] == "faulty")
        .collect();
    assert_eq!(rejected.len(), 3, "{rejected:?}");
    let fail = rejected.iter().find(|l| l["fields"]["seq"] == 2).expect("the Fail event's line");
    assert_eq!(fail["fields"]["correlation_id"], "corr-1");
    // And why: the kind of failure and the plugin's own error code.
    assert_eq!(
        (&fail["fields"]["kind"], &fail["fields"]["code"]),
        (&"error".into(), &"rejected".into())
    );
    assert_eq!(fail["fields"]["digest"], digest[..12]);
    assert_eq!(fail["level"], "WARN");

    // The status page, rendered by Chromium after its script has run (and refreshed).
    let dom = status_page(&chromium, &address);
    assert!(dom.contains("<span id=\"daemon\">jetfold</span>"), "{dom}");
    assert_eq!(cell(&dom, "faulty", "events"), "7");
    assert_eq!(cell(&dom, "event-counter", "events"), "7");
    assert_eq!(cell(&dom, "faulty", "lag"), "0");
    assert_eq!(cell(&dom, "faulty", "dead-letters"), "3");
    assert_eq!(cell(&dom, "faulty", "failures"), "error 1, rejected-effect 1, trap 1");
    assert_eq!(cell(&dom, "faulty", "ready"), "yes");
    assert!(cell(&dom, "faulty", "digest").contains(&digest[..12]), "{dom}");
    assert!(dom.contains("asked to fail"), "recent failures list the Fail event: {dom}");
    let refreshes: u32 = dom
        .split("data-refreshes=\"")
        .nth(1)
        .and_then(|r| r.split('"').next())
        .and_then(|n| n.parse().ok())
        .expect("the page counts its refreshes");
    assert!(refreshes >= 2, "the page refreshed itself: {refreshes}");

    // Two malfunctions in a row trip faulty's circuit breaker: not ready, and the page says why.
    publish(&["Panic", "Sneak"], 7).await;
    wait(30, "/readyz to name the stopped plugin", &log, || {
        let (code, body) = get(&address, "/readyz");
        code == 503 && body.contains("faulty: stopped")
    });
    let dom = status_page(&chromium, &address);
    assert_eq!(cell(&dom, "faulty", "ready"), "no");
    assert!(cell(&dom, "faulty", "status").contains("circuit open"), "{dom}");
    assert_eq!(cell(&dom, "event-counter", "events"), "9");

    // SIGTERM drains and exits 0, as the unit's KillSignal expects.
    Command::new("kill").args(["-TERM", &daemon.id().to_string()]).status().unwrap();
    let status = daemon.wait().unwrap();
    assert_eq!(status.code(), Some(0), "{}", std::fs::read_to_string(&log).unwrap());
}

/// The status page at `address` as headless Chromium leaves it after 5 s of (virtual) time.
fn status_page(chromium: &Path, address: &str) -> String {
    let profile = tempfile::tempdir().unwrap();
    let out = Command::new(chromium)
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--no-first-run",
            "--virtual-time-budget=5000",
            "--dump-dom",
        ])
        .arg(format!("--user-data-dir={}", profile.path().display()))
        .arg(format!("http://{address}/"))
        .output()
        .unwrap();
    assert!(out.status.success(), "chromium: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).unwrap()
}

/// `name` on PATH.
fn which(name: &str) -> Option<std::path::PathBuf> {
    std::env::var_os("PATH")?
        .to_str()?
        .split(':')
        .map(|d| Path::new(d).join(name))
        .find(|p| p.is_file())
}

/// The address a daemon's log says it serves HTTP on.
async fn served_at(daemon: &crate::support::DaemonProcess) -> String {
    let mut address = String::new();
    daemon
        .wait(60, "the HTTP address in the log", || {
            let found = daemon
                .lines()
                .iter()
                .find_map(|l| l["fields"]["address"].as_str().map(str::to_string));
            found.map(|a| address = a).is_some()
        })
        .await;
    address
}

/// One plugin's row of `/plugins`, if it has one.
fn row(address: &str, plugin: &str) -> Option<serde_json::Value> {
    let (_, body) = get(address, "/plugins");
    let all: serde_json::Value = serde_json::from_str(&body).unwrap();
    all["plugins"].as_array().unwrap().iter().find(|p| p["name"] == plugin).cloned()
}

/// What an operator sees is true for plugins that are not simply running, with the settings a
/// user gets: one stopped by its circuit breaker keeps its kind, checkpoint and lag, and its
/// counters go on after a resume; one whose stream is missing is `stalled` with the reason; a
/// new plugin whose component is not one is listed as refused with its digest, until it is
/// fixed; `/readyz` names each.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_status_of_stopped_stalled_and_refused_plugins_is_true() {
    let nats = NatsServer::start();
    let js = nats.jetstream().await;
    create_stream(&js, "TEST", &["test.>"]).await;
    let publish = |types: Vec<&'static str>| {
        let js = js.clone();
        async move {
            for ty in types {
                let subject = format!("test.fault.a.{ty}");
                js.publish(subject, "{}".into()).await.unwrap().await.unwrap();
            }
        }
    };
    publish([vec!["Ok"; 3], vec!["Panic"; 100], vec!["Ok"; 20]].concat()).await;
    // event-counter reads INFRA, which does not exist yet.
    let dir = daemon_dir(&["faulty", "event-counter"]);
    let config = dir.path().join("jetfold.toml");
    let text = format!(
        "plugin-dir = \"plugins\"\n[nats]\nurl = \"{}\"\n[sink]\nsqlite = \"jetfold.db\"\n[http]\nlisten = \"127.0.0.1:0\"\n\
         [plugins.faulty]\nstream = \"TEST\"\nsubjects = [\"test.>\"]\n",
        nats.url()
    );
    std::fs::write(&config, text).unwrap();
    let daemon = crate::support::DaemonProcess::start(&config, &dir.path().join("daemon.log"));
    let address = served_at(&daemon).await;

    // Stopped by its breaker at the 100th trap (sequence 103): 20 events behind.
    daemon
        .wait(60, "faulty stopped", || {
            row(&address, "faulty").is_some_and(|r| r["status"] == "stopped")
        })
        .await;
    let faulty = row(&address, "faulty").unwrap();
    assert_eq!(faulty["kind"], "projection", "{faulty}");
    assert_eq!(faulty["committed_seq"], 103, "{faulty}");
    assert_eq!(faulty["lag"], 20, "{faulty}");
    assert_eq!(faulty["events"], 103, "{faulty}");
    assert!(faulty["last_error"].as_str().unwrap().contains("circuit open"), "{faulty}");
    assert_eq!(faulty["digest"].as_str().unwrap().len(), 64, "{faulty}");
    let (_, metrics) = get(&address, "/metrics");
    assert_eq!(sample(&metrics, "jetfold_committed_sequence{plugin=\"faulty\"}"), 103.0);
    assert_eq!(sample(&metrics, "jetfold_consumer_lag{plugin=\"faulty\"}"), 20.0);
    assert!(metrics.contains("kind=\"projection\""), "{metrics}");

    // Its stream missing: stalled, saying so.
    daemon
        .wait(30, "event-counter stalled", || {
            row(&address, "event-counter").is_some_and(|r| r["status"] == "stalled")
        })
        .await;
    let counter = row(&address, "event-counter").unwrap();
    assert!(counter["last_error"].as_str().unwrap().contains("INFRA"), "{counter}");
    let (code, body) = get(&address, "/readyz");
    assert_eq!(code, 503);
    assert!(body.contains("faulty: stopped") && body.contains("event-counter: stalled"), "{body}");

    // A new plugin whose component is not one: listed, refused, with its digest.
    let broken = dir.path().join("staged");
    std::fs::create_dir(&broken).unwrap();
    let garbage: Vec<u8> =
        (0..1000u32).map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8).collect();
    std::fs::write(broken.join("broken.wasm"), &garbage).unwrap();
    std::fs::write(
        broken.join("plugin.toml"),
        "name = \"broken\"\nkind = \"projection\"\nwasm = \"broken.wasm\"\n[source]\nstream = \"TEST\"\nsubjects = [\"test.>\"]\n[allow]\ntables = [\"b\"]\n",
    )
    .unwrap();
    std::fs::rename(&broken, dir.path().join("plugins/broken")).unwrap();
    daemon
        .wait(30, "the broken plugin listed", || {
            row(&address, "broken").is_some_and(|r| r["status"] == "refused")
        })
        .await;
    let refused = row(&address, "broken").unwrap();
    let digest = jetfold_host::component::PluginDigest::of(&garbage).hex();
    assert_eq!(refused["digest"], digest.as_str(), "{refused}");
    assert!(refused["last_error"].as_str().unwrap().starts_with(&digest[..12]), "{refused}");
    assert!(get(&address, "/readyz").1.contains("broken: refused"));
    std::fs::remove_dir_all(dir.path().join("plugins/broken")).unwrap();
    daemon.wait(30, "the removed plugin gone", || row(&address, "broken").is_none()).await;
    // Those changes were another plugin's: the one its breaker stopped stays stopped.
    let faulty = row(&address, "faulty").unwrap();
    assert_eq!(
        (faulty["status"].as_str(), faulty["committed_seq"].as_u64()),
        (Some("stopped"), Some(103))
    );

    // The stream appears: event-counter folds. Resumed (SIGHUP), faulty goes on from its
    // checkpoint, and its counters from where they were.
    create_stream(&js, "INFRA", &["infra.>"]).await;
    daemon
        .wait(30, "event-counter running", || {
            row(&address, "event-counter")
                .is_some_and(|r| r["status"] == "running" && r["last_error"].is_null())
        })
        .await;
    daemon.signal("HUP");
    daemon
        .wait(30, "faulty caught up", || {
            row(&address, "faulty")
                .is_some_and(|r| r["status"] == "running" && r["committed_seq"] == 123)
        })
        .await;
    let faulty = row(&address, "faulty").unwrap();
    assert_eq!(faulty["events"], 123, "counted since the daemon started: {faulty}");
    assert_eq!(faulty["failures"]["trap"], 100, "{faulty}");
    daemon.wait(10, "ready", || get(&address, "/readyz").0 == 200).await;

    // Disabled in the config: still listed, as disabled, its counters kept; ready.
    let text = std::fs::read_to_string(&config).unwrap();
    std::fs::write(&config, format!("{text}[plugins.event-counter]\nenabled = false\n")).unwrap();
    daemon.signal("HUP");
    daemon
        .wait(30, "event-counter disabled", || {
            row(&address, "event-counter").is_some_and(|r| r["status"] == "disabled")
        })
        .await;
    assert_eq!(get(&address, "/readyz").0, 200);
    let (_, metrics) = get(&address, "/metrics");
    assert!(metrics.contains("jetfold_events_total{plugin=\"event-counter\"}"), "{metrics}");
    assert_eq!(daemon.stop(), Some(0));
}
