//! {{name}}: a policy. Per resource (the event's aggregate id) it counts failed checks since
//! the last passed one; at the third it asks for the resource to be quarantined.

use jetfold_guest::prelude::*;

/// Failed checks in a row that trigger the command.
const THRESHOLD: u64 = 3;

/// The state of one resource.
#[derive(Default, Debug, PartialEq, Serialize, Deserialize)]
pub struct Watch {
    pub failures: u64,
}

impl Policy for Watch {
    fn decide(&mut self, event: Event, cx: &mut Context) -> Result<()> {
        match event.event_type.as_str() {
            "CheckFailed" => {
                self.failures += 1;
                if self.failures == THRESHOLD {
                    let subject = format!("commands.{}.Quarantine", event.aggregate_id);
                    let payload = json!({ "id": event.aggregate_id, "failures": self.failures });
                    cx.command(&subject, "Quarantine", &payload);
                }
            }
            "CheckPassed" => self.failures = 0,
            _ => {}
        }
        Ok(())
    }
}

export_policy!(Watch);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_third_failure_in_a_row_asks_for_quarantine() {
        let mut cx = Context::new(&NoConfig);
        let mut state = Watch::default();
        for _ in 0..3 {
            state.decide(Event::new("r-1", json!({})).with_type("CheckFailed"), &mut cx).unwrap();
        }
        assert_eq!(cx.effects().len(), 1);
    }
}
