//! The event counter, state version 2: a new version of `plugins/event-counter` (same plugin
//! name) whose state also remembers the last event type. It exports `migrate`, so it takes
//! over from version 1 in a running daemon: every stored count becomes a version 2 state.

use jetfold_guest::prelude::*;

#[derive(Default, Debug, PartialEq, Serialize, Deserialize)]
pub struct Tally {
    pub events: u64,
    pub last_type: Option<String>,
}

impl Projection for Tally {
    fn apply(&mut self, event: Event, cx: &mut Context) -> Result<()> {
        self.events += 1;
        self.last_type = Some(event.event_type.clone());
        cx.upsert(
            "event_counts",
            &event.aggregate_id,
            &json!({ "events": self.events, "last_type": self.last_type }),
        );
        Ok(())
    }
}

impl Migrate for Tally {
    fn migrate(from_version: u32, state: Json) -> Result<Self> {
        match from_version {
            // Version 1 stored the bare count.
            1 => {
                let events = state.as_u64().ok_or_else(|| {
                    Error::new(
                        "invalid-state",
                        format!("a version 1 state is a count, not {state}"),
                    )
                })?;
                Ok(Tally { events, last_type: None })
            }
            v => Err(Error::new("unknown-version", format!("no migration from state version {v}"))),
        }
    }
}

export_projection!(Tally, migrate);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_version_1_count_becomes_a_tally() {
        assert_eq!(Tally::migrate(1, json!(7)).unwrap(), Tally { events: 7, last_type: None });
        assert_eq!(Tally::migrate(1, json!({"x": 1})).unwrap_err().code, "invalid-state");
        assert_eq!(Tally::migrate(3, json!(7)).unwrap_err().code, "unknown-version");
    }
}
