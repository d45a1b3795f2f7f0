//! Compute resources: registration, ownership, policies and a lifecycle state machine.
//!
//! ```text
//! Provisioning ──▶ Active ⇄ Maintenance ──▶ Decommissioned
//! ```
//!
//! Invalid transitions, double registration and events for unknown or decommissioned
//! resources are errors: the host records them and the state does not change. Every accepted
//! event rewrites the resource's row in `compute_resources`.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use jetfold_guest::prelude::*;

/// The read-model table.
pub const TABLE: &str = "compute_resources";

/// Lifecycle states.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub enum Status {
    Provisioning,
    Active,
    Maintenance,
    Decommissioned,
}

impl Status {
    /// Whether the state machine allows `self → to`.
    pub fn can_become(self, to: Status) -> bool {
        use Status::*;
        matches!(
            (self, to),
            (Provisioning, Active)
                | (Active, Maintenance)
                | (Maintenance, Active)
                | (Maintenance, Decommissioned)
        )
    }
}

/// A policy attached to a resource.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AttachedPolicy {
    pub name: String,
    #[serde(default, skip_serializing_if = "Json::is_null")]
    pub rules: Json,
    #[serde(with = "jetfold_guest::time")]
    pub added_at: DateTime<Utc>,
}

/// Everything known about one resource.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Resource {
    pub id: String,
    pub name: String,
    pub kind: String,
    pub region: String,
    pub status: Status,
    #[serde(default)]
    pub organization_id: Option<String>,
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    #[serde(default)]
    pub policies: BTreeMap<String, AttachedPolicy>,
    #[serde(default)]
    pub status_reason: Option<String>,
    // Written in one piece (the same text as chrono's): see `jetfold_guest::time`.
    #[serde(with = "jetfold_guest::time")]
    pub registered_at: DateTime<Utc>,
    #[serde(with = "jetfold_guest::time")]
    pub updated_at: DateTime<Utc>,
    /// Events applied to this resource.
    pub version: u64,
}

/// The state of one key: nothing until the resource is registered.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct ResourceState(pub Option<Resource>);

/// The events, by event type.
#[derive(Debug, Clone, Deserialize)]
pub enum ResourceEvent {
    ResourceRegistered {
        name: String,
        kind: String,
        region: String,
        #[serde(default)]
        labels: BTreeMap<String, String>,
    },
    OrganizationAssigned {
        organization_id: String,
    },
    PolicyAdded {
        policy_id: String,
        name: String,
        #[serde(default)]
        rules: Json,
    },
    PolicyRemoved {
        policy_id: String,
    },
    StatusChanged {
        to: Status,
        #[serde(default)]
        reason: Option<String>,
    },
}

impl Projection<ResourceEvent> for ResourceState {
    fn apply(&mut self, event: Event<ResourceEvent>, cx: &mut Context) -> Result<()> {
        let id = event.aggregate_id.clone();
        let time = event.time;
        if let ResourceEvent::ResourceRegistered { name, kind, region, labels } = event.payload {
            if self.0.is_some() {
                return Err(Error::new(
                    "already-registered",
                    format!("resource {id} is already registered"),
                ));
            }
            self.0 = Some(Resource {
                id,
                name,
                kind,
                region,
                status: Status::Provisioning,
                organization_id: None,
                labels,
                policies: BTreeMap::new(),
                status_reason: None,
                registered_at: time,
                updated_at: time,
                version: 1,
            });
        } else {
            let Some(resource) = self.0.as_mut() else {
                return Err(Error::new(
                    "not-registered",
                    format!("resource {id} is not registered"),
                ));
            };
            if resource.status == Status::Decommissioned {
                return Err(Error::new(
                    "decommissioned",
                    format!("resource {id} is decommissioned"),
                ));
            }
            match event.payload {
                ResourceEvent::ResourceRegistered { .. } => unreachable!("handled above"),
                ResourceEvent::OrganizationAssigned { organization_id } => {
                    resource.organization_id = Some(organization_id);
                }
                ResourceEvent::PolicyAdded { policy_id, name, rules } => {
                    if resource.policies.contains_key(&policy_id) {
                        return Err(Error::new(
                            "policy-exists",
                            format!("policy {policy_id} is already on {id}"),
                        ));
                    }
                    resource
                        .policies
                        .insert(policy_id, AttachedPolicy { name, rules, added_at: time });
                }
                ResourceEvent::PolicyRemoved { policy_id } => {
                    if resource.policies.remove(&policy_id).is_none() {
                        return Err(Error::new(
                            "no-such-policy",
                            format!("policy {policy_id} is not on {id}"),
                        ));
                    }
                }
                ResourceEvent::StatusChanged { to, reason } => {
                    if !resource.status.can_become(to) {
                        return Err(Error::new(
                            "invalid-transition",
                            format!("resource {id} cannot go from {:?} to {to:?}", resource.status),
                        ));
                    }
                    resource.status = to;
                    resource.status_reason = reason;
                    if to == Status::Decommissioned {
                        cx.log(LogLevel::Info, format!("resource {id} decommissioned"));
                    }
                }
            }
            resource.updated_at = time;
            resource.version += 1;
        }
        let resource = self.0.as_ref().expect("registered above");
        cx.upsert(TABLE, &resource.id, &row(resource));
        Ok(())
    }

    fn query(states: Vec<(String, Self)>, request: Json, _config: &NoConfig) -> Result<Json> {
        let request: Request = serde_json::from_value(request).map_err(|e| {
            Error::new(
                "invalid-request",
                format!(
                    "{e}; ask {{\"resource\": {{\"id\": ..}}}} or {{\"count_by_status\": {{}}}}"
                ),
            )
        })?;
        match request {
            Request::Resource { id } => {
                let found =
                    states.into_iter().find_map(|(_, ResourceState(r))| r.filter(|r| r.id == id));
                found
                    .map(|r| serde_json::to_value(r).expect("a resource is JSON"))
                    .ok_or_else(|| Error::new("not-found", format!("no resource {id}")))
            }
            Request::CountByStatus {} => {
                let mut counts = BTreeMap::<Status, u64>::new();
                for (_, ResourceState(r)) in states {
                    if let Some(r) = r {
                        *counts.entry(r.status).or_default() += 1;
                    }
                }
                Ok(serde_json::to_value(counts).expect("counts are JSON"))
            }
        }
    }
}

/// The questions the read model answers.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum Request {
    /// One resource, whole.
    Resource { id: String },
    /// How many resources are in each status.
    CountByStatus {},
}

/// The read-model row of a resource.
pub fn row(r: &Resource) -> Json {
    json!({
        "id": r.id,
        "name": r.name,
        "kind": r.kind,
        "region": r.region,
        "status": r.status,
        "organization_id": r.organization_id,
        "policy_count": r.policies.len(),
        "updated_at": jetfold_guest::time::text(&r.updated_at),
        "version": r.version,
    })
}

export_projection!(ResourceState);

#[cfg(test)]
mod tests {
    use super::*;

    fn at(minute: u32) -> DateTime<Utc> {
        format!("2026-03-01T10:{minute:02}:00Z").parse().unwrap()
    }

    fn registered() -> ResourceEvent {
        ResourceEvent::ResourceRegistered {
            name: "web-1".into(),
            kind: "vm".into(),
            region: "eu-west".into(),
            labels: BTreeMap::new(),
        }
    }

    fn status(to: Status) -> ResourceEvent {
        ResourceEvent::StatusChanged { to, reason: None }
    }

    /// Applies events in order and returns the state and every call's result.
    fn run(events: Vec<ResourceEvent>) -> (ResourceState, Vec<Result<Vec<Effect>>>) {
        let mut state = ResourceState::default();
        let mut results = Vec::new();
        for (i, payload) in events.into_iter().enumerate() {
            let before = state.clone();
            let mut cx = Context::new(&NoConfig);
            let event =
                Event::new("r-1", payload).with_time(at(i as u32)).with_sequence(i as u64 + 1);
            let result = state.apply(event, &mut cx).and_then(|()| cx.finish());
            if result.is_err() {
                // The host keeps the old state when the guest returns an error.
                state = before;
            }
            results.push(result);
        }
        (state, results)
    }

    #[test]
    fn lifecycle_follows_the_state_machine() {
        let (state, results) = run(vec![
            registered(),
            status(Status::Active),
            status(Status::Maintenance),
            status(Status::Active),
            status(Status::Maintenance),
            status(Status::Decommissioned),
        ]);
        assert!(results.iter().all(Result::is_ok), "{results:?}");
        let r = state.0.unwrap();
        assert_eq!(r.status, Status::Decommissioned);
        assert_eq!(r.version, 6);
        assert_eq!(r.updated_at, at(5));
        let last = results.last().unwrap().as_ref().unwrap();
        assert!(matches!(&last[0], Effect::Log { level: LogLevel::Info, .. }));
        assert_eq!(last[1].document().unwrap()["status"], "Decommissioned");
    }

    #[test]
    fn invalid_transitions_are_errors_not_changes() {
        let (state, results) =
            run(vec![registered(), status(Status::Maintenance), status(Status::Decommissioned)]);
        assert_eq!(results[1].as_ref().unwrap_err().code, "invalid-transition");
        assert_eq!(results[2].as_ref().unwrap_err().code, "invalid-transition");
        assert_eq!(state.0.unwrap().status, Status::Provisioning);
        for (from, to) in
            [(Status::Active, Status::Provisioning), (Status::Active, Status::Decommissioned)]
        {
            assert!(!from.can_become(to), "{from:?} -> {to:?}");
        }
    }

    #[test]
    fn double_registration_and_unknown_resources_are_refused() {
        let (_, results) = run(vec![registered(), registered()]);
        assert_eq!(results[1].as_ref().unwrap_err().code, "already-registered");
        let (state, results) = run(vec![status(Status::Active)]);
        assert_eq!(results[0].as_ref().unwrap_err().code, "not-registered");
        assert_eq!(state, ResourceState(None));
    }

    #[test]
    fn policies_and_organisation_show_in_the_row() {
        let (state, results) = run(vec![
            registered(),
            ResourceEvent::OrganizationAssigned { organization_id: "org-9".into() },
            ResourceEvent::PolicyAdded {
                policy_id: "p1".into(),
                name: "backup".into(),
                rules: json!({"daily": true}),
            },
            ResourceEvent::PolicyAdded {
                policy_id: "p1".into(),
                name: "again".into(),
                rules: Json::Null,
            },
            ResourceEvent::PolicyRemoved { policy_id: "p2".into() },
        ]);
        assert_eq!(results[3].as_ref().unwrap_err().code, "policy-exists");
        assert_eq!(results[4].as_ref().unwrap_err().code, "no-such-policy");
        let row = results[2].as_ref().unwrap()[0].document().unwrap();
        assert_eq!(row["organization_id"], "org-9");
        assert_eq!(row["policy_count"], 1);
        assert_eq!(state.0.unwrap().policies["p1"].name, "backup");
    }

    #[test]
    fn queries_answer_one_resource_or_counts() {
        let (a, _) = run(vec![registered(), status(Status::Active)]);
        let (b, _) = run(vec![registered()]);
        let mut b = b;
        b.0.as_mut().unwrap().id = "r-2".into();
        let states = vec![("r-1".to_string(), a), ("r-2".to_string(), b)];
        let counts = <ResourceState as Projection<ResourceEvent>>::query(
            states.clone(),
            json!({"count_by_status": {}}),
            &NoConfig,
        )
        .unwrap();
        assert_eq!(counts, json!({"Provisioning": 1, "Active": 1}));
        let one = <ResourceState as Projection<ResourceEvent>>::query(
            states.clone(),
            json!({"resource": {"id": "r-2"}}),
            &NoConfig,
        )
        .unwrap();
        assert_eq!(one["status"], "Provisioning");
        let missing = <ResourceState as Projection<ResourceEvent>>::query(
            states.clone(),
            json!({"resource": {"id": "r-3"}}),
            &NoConfig,
        );
        assert_eq!(missing.unwrap_err().code, "not-found");
        assert_eq!(
            <ResourceState as Projection<ResourceEvent>>::query(
                states,
                json!({"nope": 1}),
                &NoConfig
            )
            .unwrap_err()
            .code,
            "invalid-request"
        );
    }
}
