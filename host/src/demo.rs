//! `jetfold demo`: what a new user sees first. Starts a nats-server with JetStream in a
//! temporary directory (unless one is named), creates the streams, loads the example plugins,
//! publishes a burst of seed-shaped events, runs the daemon until it has folded them, and
//! prints the read model, the rejected events and the commands the policy decided.

use std::{
    path::Path,
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};
use chrono::{DateTime, Utc};
use futures::StreamExt as _;

use crate::config::Config;
use crate::event::{Event, JSON};
use crate::sink::sqlite::SqliteSink;

/// The example plugins the demo runs, from the plugin directory.
const PLUGINS: [&str; 2] = ["compute-resource", "person-archive"];

fn event(
    seq: u64,
    subject: String,
    time: DateTime<Utc>,
    payload: serde_json::Value,
    correlation: Option<String>,
) -> Event {
    let tokens: Vec<&str> = subject.split('.').collect();
    Event {
        sequence: seq,
        message_id: format!("demo-{}-{seq}", tokens[0]),
        event_type: tokens[3].to_string(),
        aggregate_id: tokens[2].to_string(),
        correlation_id: correlation,
        causation_id: None,
        time,
        schema_version: 1,
        headers: vec![],
        payload: serde_json::to_vec(&payload).expect("JSON"),
        content_type: JSON.into(),
        subject,
    }
}

/// A burst of compute-resource events: 40 resources onboarded by 4 teams, through their
/// lifecycle, with the mistakes real streams carry.
fn infra_burst() -> Vec<Event> {
    let start: DateTime<Utc> = "2026-03-01T08:00:00Z".parse().expect("time");
    let mut events = Vec::new();
    let mut t = 0;
    let mut push = |subject: String, payload: serde_json::Value, correlation: Option<String>| {
        t += 1;
        events.push(event(
            t,
            subject,
            start + chrono::Duration::minutes(t as i64),
            payload,
            correlation,
        ));
    };
    let kinds = ["vm", "vm", "gpu", "bare-metal"];
    let regions = ["eu-west", "eu-central", "us-east"];
    for r in 0..40 {
        let id = format!("r-{r:03}");
        let onboarding = Some(format!("onboard-{}", r / 10));
        let s = |ty: &str| format!("infra.resource.{id}.{ty}");
        push(
            s("ResourceRegistered"),
            serde_json::json!({"name": format!("{}-{r:02}", kinds[r % 4]), "kind": kinds[r % 4], "region": regions[r % 3]}),
            onboarding.clone(),
        );
        push(
            s("OrganizationAssigned"),
            serde_json::json!({"organization_id": format!("org-{}", r % 4)}),
            onboarding.clone(),
        );
        if r % 3 == 0 {
            push(
                s("PolicyAdded"),
                serde_json::json!({"policy_id": "backup", "name": "Nightly backup", "rules": {"retain_days": 14}}),
                None,
            );
        }
        if r % 7 == 3 {
            // A skipped step: Provisioning cannot go straight to Maintenance.
            push(
                s("StatusChanged"),
                serde_json::json!({"to": "Maintenance", "reason": "patching"}),
                None,
            );
        }
        if r % 5 != 4 {
            push(s("StatusChanged"), serde_json::json!({"to": "Active"}), None);
        }
        if r % 4 == 1 {
            push(
                s("StatusChanged"),
                serde_json::json!({"to": "Maintenance", "reason": "kernel upgrade"}),
                None,
            );
        }
        if r % 8 == 1 {
            push(
                s("StatusChanged"),
                serde_json::json!({"to": "Decommissioned", "reason": "replaced"}),
                None,
            );
        }
        if r == 13 {
            push(
                s("ResourceRegistered"),
                serde_json::json!({"name": "duplicate", "kind": "vm", "region": "eu-west"}),
                None,
            );
        }
    }
    events
}

/// A burst of people events over two years, with a daily-ish clock tick.
fn people_burst() -> Vec<Event> {
    let start: DateTime<Utc> = "2024-01-01T00:00:00Z".parse().expect("time");
    let people = ["ada", "grace", "linus", "barbara", "ken", "margaret", "dennis", "frances"];
    // The day each person last shows up; the rest stay active throughout.
    let last_seen = [700, 90, 300, 730, 420, 730, 150, 730];
    let mut events = Vec::new();
    let mut seq = 0;
    for day in (0..=730i64).step_by(10) {
        let time = start + chrono::Duration::days(day);
        seq += 1;
        events.push(event(
            seq,
            "people.clock.daily.DayStarted".into(),
            time,
            serde_json::json!({}),
            None,
        ));
        for (i, p) in people.iter().enumerate() {
            if day <= last_seen[i] && (day / 10 + i as i64) % 3 == 0 || day == 0 {
                let ty = if day == 0 { "PersonRegistered" } else { "PersonLoggedIn" };
                seq += 1;
                let subject = format!("people.person.{p}.{ty}");
                events.push(event(
                    seq,
                    subject,
                    time + chrono::Duration::hours(9),
                    serde_json::json!({}),
                    None,
                ));
            }
        }
    }
    events
}

/// Runs the demo with the example plugins found in `plugin_dir` (built with `jetfold build`).
pub async fn run(plugin_dir: &Path, nats_url: Option<String>) -> anyhow::Result<()> {
    let work = tempfile::tempdir()?;
    for name in PLUGINS {
        let src = plugin_dir.join(name);
        let manifest = crate::manifest::Manifest::load(&src)?;
        let wasm = manifest.wasm_path();
        if !wasm.exists() {
            bail!(
                "{} is missing: build it first with `jetfold build {}`",
                wasm.display(),
                src.display()
            );
        }
        let dest = work.path().join("plugins").join(name);
        std::fs::create_dir_all(&dest)?;
        std::fs::copy(
            src.join(crate::manifest::MANIFEST_FILE),
            dest.join(crate::manifest::MANIFEST_FILE),
        )?;
        std::fs::copy(&wasm, dest.join(&manifest.wasm))?;
    }
    let (_local, url) = match nats_url {
        Some(url) => (None, url),
        None => {
            let nats = crate::nats::local::start()?;
            let url = nats.url();
            println!(
                "started nats-server with JetStream at {url} (store in a temporary directory)"
            );
            (Some(nats), url)
        }
    };
    let client = async_nats::connect(url.as_str())
        .await
        .with_context(|| format!("cannot reach NATS at {url}"))?;
    let js = async_nats::jetstream::new(client);
    for (name, subjects) in [
        ("INFRA", vec!["infra.>"]),
        ("PEOPLE", vec!["people.person.>", "people.clock.>"]),
        ("COMMANDS", vec!["people.commands.>"]),
    ] {
        js.get_or_create_stream(async_nats::jetstream::stream::Config {
            name: name.into(),
            subjects: subjects.into_iter().map(String::from).collect(),
            ..Default::default()
        })
        .await
        .map_err(|e| anyhow::anyhow!("cannot create stream {name}: {e}"))?;
    }
    let (infra, people) = (infra_burst(), people_burst());
    let mut acks = Vec::new();
    for e in infra.iter().chain(people.iter()) {
        acks.push(crate::nats::publish_event(&js, e).await?);
    }
    let mut last = std::collections::HashMap::new();
    for ack in acks {
        let ack = ack.await.map_err(|e| anyhow::anyhow!("publish failed: {e}"))?;
        let seq = last.entry(ack.stream.clone()).or_insert(0u64);
        *seq = (*seq).max(ack.sequence);
    }
    println!("published {} infra.resource.* and {} people.* events", infra.len(), people.len());

    // A run of a few seconds: no HTTP endpoint (a running daemon may hold its port).
    let config_text = format!(
        "plugin-dir = \"plugins\"\nbatch-size = 100\nfetch-wait-ms = 50\n[http]\nlisten = \"\"\n[nats]\nurl = \"{url}\"\n[sink]\nsqlite = \"jetfold.db\"\n"
    );
    let config = Config::parse(&config_text, work.path().to_path_buf(), |_| None)?;
    let db = work.path().join("jetfold.db");
    let targets = [
        ("compute-resource", last.get("INFRA").copied().unwrap_or(0)),
        ("person-archive", last.get("PEOPLE").copied().unwrap_or(0)),
    ];
    let folded = {
        let db = db.clone();
        async move {
            let deadline = Instant::now() + Duration::from_secs(120);
            loop {
                let done = SqliteSink::open(&db).ok().is_some_and(|mut s| {
                    targets.iter().all(|(p, seq)| {
                        s.checkpoint(p).ok().flatten().is_some_and(|c| c.last_seq >= *seq)
                    })
                });
                if done || Instant::now() > deadline {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    };
    crate::daemon::run(config, folded).await?;
    print_read_model(&db, &js).await
}

async fn print_read_model(db: &Path, js: &async_nats::jetstream::Context) -> anyhow::Result<()> {
    let conn = rusqlite::Connection::open(db)?;
    println!("\nread model: compute_resources (SQLite, one row per resource)");
    println!(
        "  {:<6} {:<16} {:<11} {:<9} {:<15} policies",
        "id", "name", "region", "org", "status"
    );
    let mut stmt = conn.prepare(
        "SELECT key, json_extract(doc,'$.name'), json_extract(doc,'$.region'), json_extract(doc,'$.organization_id'), \
         json_extract(doc,'$.status'), json_extract(doc,'$.policy_count') FROM compute_resources ORDER BY key",
    )?;
    let rows = stmt.query_map([], |r| {
        Ok((
            r.get::<_, String>(0)?,
            r.get::<_, String>(1)?,
            r.get::<_, String>(2)?,
            r.get::<_, Option<String>>(3)?,
            r.get::<_, String>(4)?,
            r.get::<_, i64>(5)?,
        ))
    })?;
    for (i, row) in rows.enumerate() {
        let (id, name, region, org, status, policies) = row?;
        if i < 12 {
            println!(
                "  {id:<6} {name:<16} {region:<11} {:<9} {status:<15} {policies}",
                org.unwrap_or_default()
            );
        } else if i == 12 {
            println!("  …");
        }
    }
    let mut stmt = conn.prepare(
        "SELECT json_extract(doc,'$.status'), COUNT(*) FROM compute_resources GROUP BY 1 ORDER BY 2 DESC",
    )?;
    let counts: Vec<String> = stmt
        .query_map([], |r| Ok(format!("{} {}", r.get::<_, i64>(1)?, r.get::<_, String>(0)?)))?
        .collect::<Result<_, _>>()?;
    println!("  by status: {}", counts.join(", "));

    println!("\nrejected events (recorded in jetfold_rejected, never applied):");
    let mut stmt = conn.prepare("SELECT plugin, seq, key, event_type, COALESCE(code, kind), message FROM jetfold_rejected ORDER BY plugin, seq")?;
    let rejected = stmt.query_map([], |r| {
        Ok(format!(
            "  {} #{} {} [{}] {}: {}",
            r.get::<_, String>(0)?,
            r.get::<_, i64>(1)?,
            r.get::<_, String>(3)?,
            r.get::<_, String>(2)?,
            r.get::<_, String>(4)?,
            r.get::<_, String>(5)?
        ))
    })?;
    for line in rejected {
        println!("{}", line?);
    }

    let stream = js.get_stream("COMMANDS").await.map_err(|e| anyhow::anyhow!("{e}"))?;
    let count = stream.clone().get_info().await.map_err(|e| anyhow::anyhow!("{e}"))?.state.messages
        as usize;
    println!("\ncommands the person-archive policy published on COMMANDS ({count}):");
    if count > 0 {
        let consumer = stream
            .create_consumer(async_nats::jetstream::consumer::pull::OrderedConfig::default())
            .await
            .map_err(|e| anyhow::anyhow!("{e}"))?;
        let mut messages =
            consumer.messages().await.map_err(|e| anyhow::anyhow!("{e}"))?.take(count);
        while let Some(m) = messages.next().await {
            let m = m.map_err(|e| anyhow::anyhow!("{e}"))?;
            let header = |n: &str| {
                m.headers
                    .as_ref()
                    .and_then(|h| h.get(n))
                    .map(|v| v.as_str().to_string())
                    .unwrap_or_default()
            };
            println!(
                "  {}  {}  (Nats-Msg-Id {}, caused by {})",
                m.subject,
                String::from_utf8_lossy(&m.payload),
                header("Nats-Msg-Id"),
                header("Causation-Id")
            );
        }
    }
    Ok(())
}
