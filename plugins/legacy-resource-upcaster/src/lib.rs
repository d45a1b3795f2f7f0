//! Upcasts the legacy inventory tool's events (schema version 0) to compute-resource schema
//! version 1, the first link of the chain v0 → v1 → v2 (`resource-upcaster` does v1 → v2).
//!
//! The legacy tool said `ResourceCreated {"hostname", "type", "zone"}` where version 1 says
//! `ResourceRegistered {"name", "type", "zone"}`, and `StatusSet {"state"}` where version 1
//! says `StatusChanged {"to"}`. Other event types only get the new version number.

use jetfold_guest::prelude::*;

pub struct LegacyV0ToV1;

/// Moves `from` to `to` in `payload`, which must be an object holding `from`.
fn rename(payload: &mut Json, from: &str, to: &str, event_type: &str) -> Result<()> {
    let fields = payload
        .as_object_mut()
        .ok_or_else(|| Error::new("invalid-payload", "expected an object"))?;
    let value = fields
        .remove(from)
        .ok_or_else(|| Error::new("invalid-payload", format!("v0 {event_type} needs `{from}`")))?;
    fields.insert(to.to_string(), value);
    Ok(())
}

impl Upcaster for LegacyV0ToV1 {
    fn upcast(mut event: Event) -> Result<Event> {
        if event.schema_version != 0 {
            let message =
                format!("this upcaster reads schema version 0, got {}", event.schema_version);
            return Err(Error::new("unsupported-version", message));
        }
        match event.event_type.as_str() {
            "ResourceCreated" => {
                rename(&mut event.payload, "hostname", "name", "ResourceCreated")?;
                event.event_type = "ResourceRegistered".into();
            }
            "StatusSet" => {
                rename(&mut event.payload, "state", "to", "StatusSet")?;
                event.event_type = "StatusChanged".into();
            }
            _ => {}
        }
        event.schema_version = 1;
        Ok(event)
    }
}

export_upcaster!(LegacyV0ToV1);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn legacy_events_get_the_v1_names() {
        let v0 =
            Event::new("r-1", json!({"hostname": "web-1", "type": "vm", "zone": "eu-west-1a"}))
                .with_type("ResourceCreated")
                .with_schema_version(0);
        let v1 = LegacyV0ToV1::upcast(v0).unwrap();
        assert_eq!((v1.schema_version, v1.event_type.as_str()), (1, "ResourceRegistered"));
        assert_eq!(v1.payload, json!({"name": "web-1", "type": "vm", "zone": "eu-west-1a"}));
        let v0 = Event::new("r-1", json!({"state": "Active"}))
            .with_type("StatusSet")
            .with_schema_version(0);
        let v1 = LegacyV0ToV1::upcast(v0).unwrap();
        assert_eq!(
            (v1.event_type.as_str(), v1.payload),
            ("StatusChanged", json!({"to": "Active"}))
        );
    }

    #[test]
    fn other_versions_and_broken_events_are_errors() {
        let v1 = Event::new("r-1", json!({})).with_type("StatusChanged");
        assert_eq!(LegacyV0ToV1::upcast(v1).unwrap_err().code, "unsupported-version");
        let broken = Event::new("r-1", json!({"name": "x"}))
            .with_type("ResourceCreated")
            .with_schema_version(0);
        assert_eq!(LegacyV0ToV1::upcast(broken).unwrap_err().code, "invalid-payload");
    }
}
