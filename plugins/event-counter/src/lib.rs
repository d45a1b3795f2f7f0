use jetfold_guest::prelude::*;

#[derive(Default, Serialize, Deserialize)]
pub struct Count(u64);

impl Projection for Count {
    fn apply(&mut self, event: Event, cx: &mut Context) -> Result<()> {
        self.0 += 1;
        cx.upsert("event_counts", &event.aggregate_id, &json!({ "events": self.0 }));
        Ok(())
    }
}
export_projection!(Count);
