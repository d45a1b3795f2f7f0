//! Archive people who have been inactive for longer than a configured period.
//!
//! Time is event time, never a clock: the policy keeps the latest event time it has seen (its
//! watermark) and each person's last activity. Whenever the watermark passes a person's last
//! activity plus the period, it decides one `ArchivePerson` command for them. Any event moves
//! the watermark, so a daily `people.clock.<day>.DayStarted` tick is enough to notice people
//! who have gone quiet.
//!
//! Silence is a property of one person relative to everyone else's time, so this policy keeps
//! one global state (`[state] key = "global"`): its size grows with the number of people it
//! tracks, and archived people leave it.

use std::collections::{BTreeMap, BTreeSet};

use chrono::{DateTime, Duration, Utc};
use jetfold_guest::prelude::*;

/// The policy's configuration (`[config]` in plugin.toml).
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct ArchiveConfig {
    /// Days without activity after which a person is archived (at least 1).
    #[serde(deserialize_with = "at_least_one_day")]
    pub inactive_days: u32,
    /// Commands go to `<command-prefix>.<person id>.ArchivePerson`.
    #[serde(default = "default_prefix")]
    pub command_prefix: String,
}

fn default_prefix() -> String {
    "people.commands".into()
}

fn at_least_one_day<'de, D: serde::Deserializer<'de>>(d: D) -> std::result::Result<u32, D::Error> {
    let days = u32::deserialize(d)?;
    if days == 0 {
        return Err(serde::de::Error::custom("inactive-days must be at least 1"));
    }
    Ok(days)
}

/// What the policy remembers.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Watch {
    /// The latest event time seen.
    pub watermark: Option<DateTime<Utc>>,
    /// Each tracked person's last activity.
    pub last_active: BTreeMap<String, DateTime<Utc>>,
    /// People already asked to be archived, awaiting `PersonArchived`.
    pub requested: BTreeSet<String>,
}

/// The payload of the `ArchivePerson` command.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ArchivePerson {
    pub person_id: String,
    pub last_active: DateTime<Utc>,
    pub inactive_days: i64,
}

impl Policy<Json, ArchiveConfig> for Watch {
    fn decide(&mut self, event: Event<Json>, cx: &mut Context<ArchiveConfig>) -> Result<()> {
        let config = cx.config();
        // `people.person.<id>.<type>` is about a person; anything else (a clock tick) only
        // tells the time.
        let about_person = event.subject.split('.').nth(1) == Some("person");
        if about_person {
            let person = event.aggregate_id.clone();
            if event.event_type == "PersonArchived" {
                self.last_active.remove(&person);
                self.requested.remove(&person);
            } else {
                // Activity: an older event (late arrival) never moves the last activity back.
                let last = self.last_active.entry(person.clone()).or_insert(event.time);
                if event.time > *last {
                    *last = event.time;
                    self.requested.remove(&person);
                }
            }
        }
        if self.watermark.is_none_or(|w| event.time > w) {
            self.watermark = Some(event.time);
        }
        let Some(now) = self.watermark else {
            return Ok(());
        };
        let period = Duration::days(i64::from(config.inactive_days));
        for (person, &last) in &self.last_active {
            if now - last > period && self.requested.insert(person.clone()) {
                let subject = format!("{}.{person}.ArchivePerson", config.command_prefix);
                let inactive_days = (now - last).num_days();
                cx.command(
                    &subject,
                    "ArchivePerson",
                    &ArchivePerson { person_id: person.clone(), last_active: last, inactive_days },
                );
                cx.log(
                    LogLevel::Info,
                    format!("{person} inactive for {inactive_days} days: archiving"),
                );
            }
        }
        Ok(())
    }
}

export_policy!(Watch);

#[cfg(test)]
mod tests {
    use super::*;

    fn config(days: u32) -> ArchiveConfig {
        ArchiveConfig { inactive_days: days, command_prefix: "people.commands".into() }
    }

    fn day(d: i64) -> DateTime<Utc> {
        DateTime::<Utc>::UNIX_EPOCH + Duration::days(20_000 + d)
    }

    fn person(id: &str, event_type: &str, d: i64) -> Event<Json> {
        let mut e = Event::new(id, json!({})).with_type(event_type).with_time(day(d));
        e.subject = format!("people.person.{id}.{event_type}");
        e
    }

    fn tick(d: i64) -> Event<Json> {
        let mut e = Event::new("daily", json!({})).with_type("DayStarted").with_time(day(d));
        e.subject = "people.clock.daily.DayStarted".into();
        e
    }

    fn commands(effects: &[Effect]) -> Vec<(String, Json)> {
        effects
            .iter()
            .filter_map(|e| match e {
                Effect::Emit { kind: MessageKind::Command, subject, .. } => {
                    Some((subject.clone(), e.document().unwrap()))
                }
                _ => None,
            })
            .collect()
    }

    fn step(watch: &mut Watch, cfg: &ArchiveConfig, event: Event<Json>) -> Vec<(String, Json)> {
        let mut cx = Context::new(cfg);
        watch.decide(event, &mut cx).unwrap();
        commands(&cx.finish().unwrap())
    }

    #[test]
    fn archives_once_after_the_period_in_event_time() {
        let cfg = config(30);
        let mut w = Watch::default();
        assert!(step(&mut w, &cfg, person("p-1", "PersonRegistered", 0)).is_empty());
        assert!(
            step(&mut w, &cfg, tick(30)).is_empty(),
            "exactly the period is not longer than it"
        );
        let cmds = step(&mut w, &cfg, tick(31));
        assert_eq!(cmds.len(), 1);
        assert_eq!(cmds[0].0, "people.commands.p-1.ArchivePerson");
        assert_eq!(cmds[0].1["inactive_days"], 31);
        assert!(step(&mut w, &cfg, tick(40)).is_empty(), "asked once only");
        step(&mut w, &cfg, person("p-1", "PersonArchived", 41));
        assert!(w.last_active.is_empty() && w.requested.is_empty());
    }

    #[test]
    fn activity_resets_the_clock_and_late_events_do_not_rewind_it() {
        let cfg = config(10);
        let mut w = Watch::default();
        step(&mut w, &cfg, person("p-1", "PersonRegistered", 0));
        step(&mut w, &cfg, person("p-1", "PersonLoggedIn", 8));
        step(&mut w, &cfg, person("p-1", "PersonLoggedIn", 2));
        assert_eq!(w.last_active["p-1"], day(8));
        assert!(step(&mut w, &cfg, tick(18)).is_empty());
        assert_eq!(step(&mut w, &cfg, tick(19)).len(), 1);
        step(&mut w, &cfg, person("p-1", "PersonLoggedIn", 20));
        assert!(w.requested.is_empty(), "activity withdraws the pending request");
    }

    #[test]
    fn configuration_is_validated() {
        let bad: std::result::Result<ArchiveConfig, _> =
            serde_json::from_value(json!({"inactive-days": 0}));
        assert!(bad.unwrap_err().to_string().contains("at least 1"));
        let unknown: std::result::Result<ArchiveConfig, _> =
            serde_json::from_value(json!({"inactive-days": 3, "x": 1}));
        assert!(unknown.is_err());
        let ok: ArchiveConfig = serde_json::from_value(json!({"inactive-days": 3})).unwrap();
        assert_eq!(ok.command_prefix, "people.commands");
    }
}
