"""{{name}}: a projection. Per resource (the event's aggregate id) it counts events and
remembers the last event type, and keeps the `{{table}}` table in step.

The host calls `apply` with one key's state (bytes this module wrote, or None for a key never
seen) and one event; it returns the new state and the effects for the host to perform. Pure:
no files, clock or network (the host denies them); time comes from `event.time`.
"""

import json

import wit_world
from componentize_py_types import Err
from wit_world.imports import types

TABLE = "{{table}}"


class WitWorld(wit_world.WitWorld):
    def init(self, config: str) -> None:
        # The manifest's [config], as JSON: this plugin takes none.
        if json.loads(config or "{}"):
            raise Err(types.Error(code="invalid-config", message="this plugin takes no configuration"))

    def apply(self, state, event):
        tally = json.loads(state) if state is not None else {"events": 0, "last_type": ""}
        tally = {"events": tally["events"] + 1, "last_type": event.event_type}
        row = json.dumps(tally)
        upsert = types.Effect_Upsert(types.UpsertRow(table=TABLE, key=event.aggregate_id, row=row))
        return row.encode(), [upsert]

    def query(self, states, request):
        # Every state the host selected (one key's, or all), by key.
        return json.dumps({s.key: json.loads(s.state) for s in states})
