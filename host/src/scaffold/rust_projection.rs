//! {{name}}: a projection. Per resource (the event's aggregate id) it counts events and
//! remembers the last event type, and keeps the `{{table}}` table in step.

use jetfold_guest::prelude::*;

/// The state of one resource.
#[derive(Default, Debug, PartialEq, Serialize, Deserialize)]
pub struct Tally {
    pub events: u64,
    pub last_type: String,
}

impl Projection for Tally {
    fn apply(&mut self, event: Event, cx: &mut Context) -> Result<()> {
        self.events += 1;
        self.last_type = event.event_type.clone();
        cx.upsert(
            "{{table}}",
            &event.aggregate_id,
            &json!({ "events": self.events, "last_type": self.last_type }),
        );
        Ok(())
    }

    /// Every state the host selected (one key's, or all), by key.
    fn query(states: Vec<(String, Self)>, _request: Json, _config: &NoConfig) -> Result<Json> {
        Ok(Json::Object(states.into_iter().map(|(key, state)| (key, json!(state))).collect()))
    }
}

export_projection!(Tally);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_events_and_remembers_the_last_type() {
        let mut cx = Context::new(&NoConfig);
        let mut state = Tally::default();
        state.apply(Event::new("r-1", json!({})).with_type("Created"), &mut cx).unwrap();
        state.apply(Event::new("r-1", json!({})).with_type("CheckFailed"), &mut cx).unwrap();
        assert_eq!(state, Tally { events: 2, last_type: "CheckFailed".into() });
        assert_eq!(cx.effects().len(), 2);
    }
}
