//! Upcasts compute-resource events from schema version 1 to 2.
//!
//! Version 1 of `ResourceRegistered` said `{"name", "type", "zone"}`; version 2 says
//! `{"name", "kind", "region", "labels"}`, the region being the zone without its trailing
//! letter (`eu-west-1a` → `eu-west-1`) and the zone kept as a label. Other event types did not
//! change shape: they only get the new version number.

use jetfold_guest::prelude::*;

pub struct ResourceV1ToV2;

impl Upcaster for ResourceV1ToV2 {
    fn upcast(mut event: Event) -> Result<Event> {
        if event.schema_version != 1 {
            let message =
                format!("this upcaster reads schema version 1, got {}", event.schema_version);
            return Err(Error::new("unsupported-version", message));
        }
        if event.event_type == "ResourceRegistered" {
            let v1 = event
                .payload
                .as_object_mut()
                .ok_or_else(|| Error::new("invalid-payload", "expected an object"))?;
            let text = |v1: &mut serde_json::Map<String, Json>, field: &str| match v1.remove(field)
            {
                Some(Json::String(s)) => Ok(s),
                _ => Err(Error::new(
                    "invalid-payload",
                    format!("v1 ResourceRegistered needs a string `{field}`"),
                )),
            };
            let name = text(v1, "name")?;
            let kind = text(v1, "type")?;
            let zone = text(v1, "zone")?;
            let region = zone
                .trim_end_matches(|c: char| c.is_ascii_lowercase() && zone.len() > 1)
                .to_string();
            event.payload =
                json!({ "name": name, "kind": kind, "region": region, "labels": { "zone": zone } });
        }
        event.schema_version = 2;
        Ok(event)
    }
}

export_upcaster!(ResourceV1ToV2);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn registration_gets_the_v2_shape() {
        let v1 = Event::new("r-1", json!({"name": "web-1", "type": "vm", "zone": "eu-west-1a"}))
            .with_type("ResourceRegistered");
        let v2 = ResourceV1ToV2::upcast(v1).unwrap();
        assert_eq!(v2.schema_version, 2);
        assert_eq!(
            v2.payload,
            json!({"name": "web-1", "kind": "vm", "region": "eu-west-1", "labels": {"zone": "eu-west-1a"}})
        );
    }

    #[test]
    fn other_events_only_change_version_and_bad_ones_are_errors() {
        let v1 = Event::new("r-1", json!({"to": "Active"})).with_type("StatusChanged");
        let v2 = ResourceV1ToV2::upcast(v1.clone()).unwrap();
        assert_eq!((v2.schema_version, v2.payload), (2, json!({"to": "Active"})));
        let mut already = v1;
        already.schema_version = 2;
        assert_eq!(ResourceV1ToV2::upcast(already).unwrap_err().code, "unsupported-version");
        let broken = Event::new("r-1", json!({"name": "x"})).with_type("ResourceRegistered");
        assert_eq!(ResourceV1ToV2::upcast(broken).unwrap_err().code, "invalid-payload");
    }
}
