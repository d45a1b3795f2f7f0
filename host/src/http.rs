//! The daemon's HTTP endpoint (`[http] listen`): Prometheus `/metrics`, `/healthz`, `/readyz`,
//! `/plugins` (JSON) and a status page at `/` that refreshes itself from `/plugins`.
//!
//! Everything served is read from an [`Observed`]: what the supervisor last saw of its plugins
//! (it observes every second), so a request never waits for a plugin or for NATS.

use std::{collections::BTreeMap, convert::Infallible, fmt::Write as _, sync::Arc};

use chrono::{DateTime, Utc};
use http_body_util::Full;
use hyper::{Method, Request, Response, StatusCode, body::Bytes, header};
use serde::Serialize;
use tokio::{net::TcpListener, sync::watch};

use crate::registry::PluginStatus;
use crate::telemetry::{Histogram, RecentFailure};

/// How long an observation stays fresh: older, `/healthz` says the supervisor is stuck.
pub const STALE_AFTER_SECS: i64 = 10;

/// What the daemon's supervisor last saw.
#[derive(Debug, Clone, Serialize)]
pub struct Observed {
    /// The daemon's name.
    pub daemon: String,
    /// When.
    pub observed_at: DateTime<Utc>,
    /// Whether every plugin runs within `ready_max_lag` events of its stream's end.
    pub ready: bool,
    /// The lag a plugin may have and still count as ready (`[http] ready-max-lag`).
    pub ready_max_lag: u64,
    /// Its plugins, by name.
    pub plugins: Vec<PluginObserved>,
}

/// One plugin as observed.
#[derive(Debug, Clone, Serialize)]
pub struct PluginObserved {
    /// Name, kind, version, status, checkpoint, lag, last refusal, shadow.
    #[serde(flatten)]
    pub status: PluginStatus,
    /// The stream it folds (empty if not running).
    pub stream: String,
    /// Whether it counts as ready: running and within the lag allowed.
    pub ready: bool,
    /// Events folded and committed since the daemon started (rejected ones included).
    pub events: u64,
    /// Events per second over the last observations.
    pub events_per_sec: f64,
    /// Events rejected, by kind (`error`, `trap`, `fuel`, `memory`, `rejected-effect`,
    /// `invalid-event`, `bad-signature`, …).
    pub failures: BTreeMap<String, u64>,
    /// Effects accepted, by kind (`upsert`, `update`, `delete`, `emit`, `command`, `log`).
    pub effects: BTreeMap<String, u64>,
    /// Events sent to the dead-letter subject.
    pub dead_letters: u64,
    /// Versions swapped in.
    pub swaps: u64,
    /// Transient failures retried (commits, publishes, state reads, binding the source).
    pub retries: u64,
    /// Fuel the guest calls consumed.
    pub fuel: u64,
    /// Guest call durations.
    pub guest_calls: Histogram,
    /// Seconds spent folding and committing.
    pub fold_seconds: f64,
    /// Seconds spent committing, publishing and acking.
    pub commit_seconds: f64,
    /// Time per stage of the pipeline (in `/metrics`; the status JSON leaves it out).
    #[serde(skip)]
    pub stages: crate::telemetry::Stages,
    /// The last failures, newest last.
    pub recent_failures: Vec<RecentFailure>,
}

/// Binds `address` (`host:port`).
pub async fn bind(address: &str) -> anyhow::Result<TcpListener> {
    use anyhow::Context as _;
    TcpListener::bind(address).await.with_context(|| format!("cannot listen on {address}"))
}

/// Serves the endpoint on `listener` until the task is dropped or aborted.
pub async fn serve(listener: TcpListener, observed: watch::Receiver<Arc<Observed>>) {
    loop {
        let (stream, _) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(e) => {
                // Out of file descriptors, say: the endpoint waits rather than spins.
                tracing::warn!(error = %e, "HTTP accept failed");
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                continue;
            }
        };
        let observed = observed.clone();
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |request| {
                let now = observed.borrow().clone();
                async move { Ok::<_, Infallible>(respond(&request, &now, Utc::now())) }
            });
            let io = hyper_util::rt::TokioIo::new(stream);
            // A client that hangs up mid-request is its business.
            let _ = hyper::server::conn::http1::Builder::new().serve_connection(io, service).await;
        });
    }
}

/// The answer to `request`, from `observed`, at `now`.
pub fn respond<B>(
    request: &Request<B>,
    observed: &Observed,
    now: DateTime<Utc>,
) -> Response<Full<Bytes>> {
    if request.method() != Method::GET && request.method() != Method::HEAD {
        return text(StatusCode::METHOD_NOT_ALLOWED, "only GET\n".into());
    }
    match request.uri().path() {
        "/" => reply(StatusCode::OK, "text/html; charset=utf-8", STATUS_PAGE.into()),
        "/metrics" => {
            reply(StatusCode::OK, "text/plain; version=0.0.4; charset=utf-8", metrics(observed))
        }
        "/plugins" => reply(
            StatusCode::OK,
            "application/json",
            serde_json::to_string_pretty(observed).expect("plain data serializes"),
        ),
        "/healthz" => {
            let age = (now - observed.observed_at).num_seconds();
            if age > STALE_AFTER_SECS {
                text(
                    StatusCode::SERVICE_UNAVAILABLE,
                    format!("stale: the daemon has not observed its plugins for {age} s\n"),
                )
            } else {
                text(StatusCode::OK, "ok\n".into())
            }
        }
        "/readyz" => {
            if observed.ready {
                text(StatusCode::OK, "ready\n".into())
            } else {
                let mut body = String::from("not ready:\n");
                for p in observed.plugins.iter().filter(|p| !p.ready) {
                    let lag = p.status.lag.map_or("unknown".to_string(), |l| l.to_string());
                    let _ = writeln!(body, "{}: {} (lag {lag})", p.status.name, p.status.status);
                }
                if observed.plugins.is_empty() {
                    body.push_str("no plugin is running\n");
                }
                text(StatusCode::SERVICE_UNAVAILABLE, body)
            }
        }
        _ => text(
            StatusCode::NOT_FOUND,
            "not found: try /, /metrics, /healthz, /readyz, /plugins\n".into(),
        ),
    }
}

fn text(status: StatusCode, body: String) -> Response<Full<Bytes>> {
    reply(status, "text/plain; charset=utf-8", body)
}

fn reply(status: StatusCode, content_type: &str, body: String) -> Response<Full<Bytes>> {
    Response::builder()
        .status(status)
        .header(header::CONTENT_TYPE, content_type)
        .header(header::CACHE_CONTROL, "no-store")
        .body(Full::new(Bytes::from(body)))
        .expect("a valid response")
}

/// A label value as the Prometheus text format writes it.
fn label(value: &str) -> String {
    value.replace('\\', "\\\\").replace('"', "\\\"").replace('\n', "\\n")
}

/// The Prometheus text exposition of `observed`.
pub fn metrics(observed: &Observed) -> String {
    let mut out = String::new();
    let mut family = |name: &str, kind: &str, help: &str, samples: Vec<(String, String)>| {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
        for (labels, value) in samples {
            let _ = writeln!(out, "{name}{labels} {value}");
        }
    };
    let ps = &observed.plugins;
    let each = |f: &dyn Fn(&PluginObserved) -> Option<String>| -> Vec<(String, String)> {
        ps.iter()
            .filter_map(|p| f(p).map(|v| (format!("{{plugin=\"{}\"}}", label(&p.status.name)), v)))
            .collect()
    };
    let by_kind = |f: &dyn Fn(&PluginObserved) -> &BTreeMap<String, u64>| -> Vec<(String, String)> {
        ps.iter()
            .flat_map(|p| {
                f(p).iter().map(|(kind, n)| {
                    (
                        format!(
                            "{{plugin=\"{}\",kind=\"{}\"}}",
                            label(&p.status.name),
                            label(kind)
                        ),
                        n.to_string(),
                    )
                })
            })
            .collect()
    };
    family(
        "jetfold_plugin_info",
        "gauge",
        "A plugin and its running version (sha256 of its component).",
        ps.iter()
            .map(|p| {
                let s = &p.status;
                (
                    format!(
                        "{{plugin=\"{}\",kind=\"{}\",digest=\"{}\",status=\"{}\"}}",
                        label(&s.name),
                        label(&s.kind),
                        label(&s.digest),
                        s.status.as_str()
                    ),
                    "1".to_string(),
                )
            })
            .collect(),
    );
    family(
        "jetfold_events_total",
        "counter",
        "Events folded and committed since the daemon started, rejected ones included.",
        each(&|p| Some(p.events.to_string())),
    );
    family(
        "jetfold_failures_total",
        "counter",
        "Events a plugin rejected, by kind of failure.",
        by_kind(&|p| &p.failures),
    );
    family(
        "jetfold_dead_letters_total",
        "counter",
        "Events sent to the dead-letter subject.",
        each(&|p| Some(p.dead_letters.to_string())),
    );
    family(
        "jetfold_effects_total",
        "counter",
        "Effects accepted from the guest, by kind.",
        by_kind(&|p| &p.effects),
    );
    family(
        "jetfold_consumer_lag",
        "gauge",
        "Events in the stream not yet delivered to the plugin's consumer (JetStream consumer info).",
        each(&|p| p.status.lag.map(|l| l.to_string())),
    );
    family(
        "jetfold_committed_sequence",
        "gauge",
        "The last stream sequence the plugin committed (its checkpoint).",
        each(&|p| Some(p.status.committed_seq.to_string())),
    );
    family(
        "jetfold_fuel_consumed_total",
        "counter",
        "Fuel (wasm instructions, roughly) the plugin's guest calls consumed.",
        each(&|p| Some(p.fuel.to_string())),
    );
    family(
        "jetfold_fold_seconds_total",
        "counter",
        "Time spent folding: guest calls and effect checks.",
        each(&|p| Some(format!("{:.6}", p.fold_seconds))),
    );
    family(
        "jetfold_commit_seconds_total",
        "counter",
        "Time spent committing, publishing emitted messages and acking.",
        each(&|p| Some(format!("{:.6}", p.commit_seconds))),
    );
    family(
        "jetfold_stage_seconds_total",
        "counter",
        "Time spent per stage of the pipeline: read, decode, states, guest, route (the fold thread); commit, publish, ack (the commit thread).",
        ps.iter()
            .flat_map(|p| {
                let s = &p.stages;
                let name = label(&p.status.name);
                [
                    ("read", s.read),
                    ("decode", s.decode),
                    ("states", s.states),
                    ("guest", s.guest),
                    ("route", s.route),
                    ("commit", s.commit),
                    ("publish", s.publish),
                    ("ack", s.ack),
                ]
                .map(|(stage, d)| {
                    (
                        format!("{{plugin=\"{name}\",stage=\"{stage}\"}}"),
                        format!("{:.6}", d.as_secs_f64()),
                    )
                })
            })
            .collect(),
    );
    family(
        "jetfold_swaps_total",
        "counter",
        "Plugin versions swapped in since the daemon started.",
        each(&|p| Some(p.swaps.to_string())),
    );
    family(
        "jetfold_retries_total",
        "counter",
        "Transient failures retried: commits, publishes, state reads, binding the source.",
        each(&|p| Some(p.retries.to_string())),
    );
    let mut calls = Vec::new();
    for p in ps {
        let name = label(&p.status.name);
        let h = &p.guest_calls;
        let mut cumulative = 0;
        for (bound, n) in Histogram::BOUNDS.iter().zip(&h.buckets) {
            cumulative += n;
            calls.push((
                format!("_bucket{{plugin=\"{name}\",le=\"{bound}\"}}"),
                cumulative.to_string(),
            ));
        }
        calls.push((format!("_bucket{{plugin=\"{name}\",le=\"+Inf\"}}"), h.count.to_string()));
        calls.push((
            format!("_sum{{plugin=\"{name}\"}}"),
            format!("{:.9}", h.sum_nanos as f64 / 1e9),
        ));
        calls.push((format!("_count{{plugin=\"{name}\"}}"), h.count.to_string()));
    }
    family(
        "jetfold_guest_call_seconds",
        "histogram",
        "Duration of each guest call that folds an event (upcasters included).",
        calls,
    );
    family(
        "jetfold_ready",
        "gauge",
        "1 when every plugin runs within the lag allowed (as /readyz), else 0.",
        vec![(String::new(), u8::from(observed.ready).to_string())],
    );
    out
}

/// The status page: plain HTML and a script that reads `/plugins` every two seconds.
pub const STATUS_PAGE: &str = include_str!("http/status.html");
