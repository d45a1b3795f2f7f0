//! Put a compute resource into maintenance when its health checks keep failing.
//!
//! After `failures` `HealthCheckFailed` events for one resource within `window-secs` of event
//! time (never a clock: the window ends at the latest failure's own time, and a late event
//! counts at its time), the policy decides
//! one `PutIntoMaintenance` command for it. The host publishes it with the correlation id of
//! the event (or its id) and the event's id as causation. A passed check clears the failures;
//! after the command, no other is sent until the resource is back `Active` (a `StatusChanged`
//! to `Active`) or a check passes, so a flapping resource is not asked twice.

use chrono::{DateTime, Duration, Utc};
use jetfold_guest::prelude::*;

/// The policy's configuration (`[config]` in plugin.toml).
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct HealthConfig {
    /// Failed checks within the window that trigger maintenance (at least 1).
    #[serde(deserialize_with = "at_least_one")]
    pub failures: u32,
    /// The window, in seconds of event time (at least 1).
    #[serde(deserialize_with = "at_least_one")]
    pub window_secs: u32,
    /// Commands go to `<command-prefix>.<resource id>.PutIntoMaintenance`.
    #[serde(default = "default_prefix")]
    pub command_prefix: String,
}

fn at_least_one<'de, D: serde::Deserializer<'de>>(d: D) -> std::result::Result<u32, D::Error> {
    let n = u32::deserialize(d)?;
    if n == 0 {
        return Err(serde::de::Error::custom("failures and window-secs must be at least 1"));
    }
    Ok(n)
}

fn default_prefix() -> String {
    "infra.commands".into()
}

/// What the policy remembers of one resource.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Health {
    /// Event times of the failed checks still inside the window, oldest first.
    pub failures: Vec<DateTime<Utc>>,
    /// When maintenance was asked for, until the resource is healthy again.
    pub requested_at: Option<DateTime<Utc>>,
}

/// The payload of the `PutIntoMaintenance` command.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PutIntoMaintenance {
    pub resource_id: String,
    pub reason: String,
    pub failures: usize,
    pub first_failure: DateTime<Utc>,
    pub last_failure: DateTime<Utc>,
}

impl Policy<Json, HealthConfig> for Health {
    fn decide(&mut self, event: Event<Json>, cx: &mut Context<HealthConfig>) -> Result<()> {
        let config = cx.config();
        match event.event_type.as_str() {
            "HealthCheckFailed" => {
                let window = Duration::seconds(i64::from(config.window_secs));
                let now = event.time;
                // A late event counts where it belongs; the failures kept are those within
                // one window of the latest.
                let at = self.failures.partition_point(|t| *t <= now);
                self.failures.insert(at, now);
                let latest = *self.failures.last().expect("just inserted");
                self.failures.retain(|t| *t > latest - window);
                let recent = self.failures.len();
                if recent >= config.failures as usize && self.requested_at.is_none() {
                    let id = &event.aggregate_id;
                    let subject = format!("{}.{id}.PutIntoMaintenance", config.command_prefix);
                    let command = PutIntoMaintenance {
                        resource_id: id.clone(),
                        reason: format!(
                            "{recent} failed health checks within {} s",
                            config.window_secs
                        ),
                        failures: recent,
                        first_failure: self.failures[0],
                        last_failure: latest,
                    };
                    cx.command(&subject, "PutIntoMaintenance", &command);
                    cx.log(
                        LogLevel::Warn,
                        format!("{id}: {}; asking for maintenance", command.reason),
                    );
                    self.requested_at = Some(now);
                }
            }
            "HealthCheckPassed" => *self = Health::default(),
            "StatusChanged" if event.payload.get("to").and_then(Json::as_str) == Some("Active") => {
                *self = Health::default()
            }
            _ => {}
        }
        Ok(())
    }
}

export_policy!(Health);

#[cfg(test)]
mod tests {
    use super::*;

    fn config() -> HealthConfig {
        HealthConfig { failures: 3, window_secs: 600, command_prefix: "infra.commands".into() }
    }

    fn at(minute: i64) -> DateTime<Utc> {
        "2026-04-01T10:00:00Z".parse::<DateTime<Utc>>().unwrap() + Duration::minutes(minute)
    }

    fn event(event_type: &str, minute: i64) -> Event<Json> {
        Event::new("r-1", json!({})).with_type(event_type).with_time(at(minute))
    }

    /// The commands one event makes.
    fn step(health: &mut Health, event: Event<Json>) -> Vec<(String, Json)> {
        let cfg = config();
        let mut cx = Context::new(&cfg);
        health.decide(event, &mut cx).unwrap();
        cx.finish()
            .unwrap()
            .iter()
            .filter_map(|e| match e {
                Effect::Emit { kind: MessageKind::Command, subject, .. } => {
                    Some((subject.clone(), e.document().unwrap()))
                }
                _ => None,
            })
            .collect()
    }

    #[test]
    fn the_third_failure_within_ten_minutes_asks_for_maintenance_once() {
        let mut h = Health::default();
        assert!(step(&mut h, event("HealthCheckFailed", 0)).is_empty());
        assert!(step(&mut h, event("HealthCheckFailed", 4)).is_empty());
        let commands = step(&mut h, event("HealthCheckFailed", 9));
        assert_eq!(commands.len(), 1);
        assert_eq!(commands[0].0, "infra.commands.r-1.PutIntoMaintenance");
        assert_eq!(commands[0].1["failures"], 3);
        assert!(step(&mut h, event("HealthCheckFailed", 10)).is_empty(), "asked once");
        // Healthy again: the count starts over.
        step(&mut h, event("HealthCheckPassed", 11));
        assert_eq!(h, Health::default());
    }

    #[test]
    fn failures_spread_wider_than_the_window_do_not() {
        let mut h = Health::default();
        for minute in [0, 8, 16, 24] {
            assert!(step(&mut h, event("HealthCheckFailed", minute)).is_empty(), "{minute}");
        }
        assert_eq!(h.failures, vec![at(16), at(24)]);
    }

    #[test]
    fn a_late_failure_counts_in_its_own_window() {
        let mut h = Health::default();
        step(&mut h, event("HealthCheckFailed", 20));
        step(&mut h, event("HealthCheckFailed", 22));
        // Arrives late, stamped between the two: three within ten minutes of 22.
        let commands = step(&mut h, event("HealthCheckFailed", 21));
        assert_eq!(commands.len(), 1);
    }

    #[test]
    fn back_to_active_allows_another_request() {
        let mut h = Health::default();
        for m in [0, 1, 2] {
            step(&mut h, event("HealthCheckFailed", m));
        }
        assert!(h.requested_at.is_some());
        let active = Event::new("r-1", json!({"to": "Active"})).with_type("StatusChanged");
        step(&mut h, active.with_time(at(30)));
        assert_eq!(h, Health::default());
    }
}
