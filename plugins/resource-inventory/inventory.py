"""resource-inventory: a projection written in Python (built with componentize-py).

Per compute resource (the event's aggregate id) it keeps name, region and status, and the
`resource_inventory` table in step; `query` counts resources per region and status. Events of
a resource never registered are rejected, as are payloads that are not JSON objects.

The host calls `apply(state, event)` with one key's state (the bytes this module returned last
time, or None) and returns (new state, effects). It runs with no files, no environment, no
network, a clock stopped at 1970 and seeded randomness: time comes from the event.
"""

import json

import wit_world
from componentize_py_types import Err
from wit_world.imports import types

TABLE = "resource_inventory"


def rejected(code, message):
    return Err(types.Error(code=code, message=message))


def payload_of(event):
    try:
        payload = json.loads(event.payload)
    except ValueError as e:
        raise rejected("invalid-payload", f"the payload is not JSON: {e}")
    if not isinstance(payload, dict):
        raise rejected("invalid-payload", "the payload is not a JSON object")
    return payload


class WitWorld(wit_world.WitWorld):
    def init(self, config: str) -> None:
        if json.loads(config or "{}"):
            raise rejected("invalid-config", "resource-inventory takes no configuration")

    def apply(self, state, event):
        payload = payload_of(event)
        resource = json.loads(state) if state is not None else None
        if event.event_type == "ResourceRegistered":
            if resource is not None:
                raise rejected("already-registered", f"{event.aggregate_id} is already registered")
            resource = {
                "name": payload.get("name", ""),
                "region": payload.get("region", "unknown"),
                "status": "Provisioning",
                "events": 0,
            }
        elif resource is None:
            raise rejected("not-registered", f"{event.aggregate_id} is not registered")
        elif event.event_type == "StatusChanged":
            if "to" not in payload:
                raise rejected("invalid-payload", "StatusChanged needs `to`")
            resource["status"] = payload["to"]
        resource["events"] += 1
        row = dict(resource, id=event.aggregate_id)
        upsert = types.Effect_Upsert(
            types.UpsertRow(table=TABLE, key=event.aggregate_id, row=json.dumps(row))
        )
        return json.dumps(resource).encode(), [upsert]

    def query(self, states, request):
        counts = {}
        for s in states:
            resource = json.loads(s.state)
            by_status = counts.setdefault(resource["region"], {})
            by_status[resource["status"]] = by_status.get(resource["status"], 0) + 1
        return json.dumps(counts)
