"""{{name}}: a projection. Per resource (the event's aggregate id) it counts events and
remembers the last event type, and keeps the `{{table}}` table in step.

`apply(state, event)` folds one event: `state` is the key's state as JSON values (None for a
key never seen); it returns the new state and the effects for the host to perform. The host
folds batches of events (contract jetfold:plugin@0.2.0) and `jetfold_batch` keeps the states
between them. Pure: no files, clock or network (the host denies them); time comes from
`event.time`.
"""

import json

import wit_world
from componentize_py_types import Err
from wit_world.imports import batching, types

from jetfold_batch import Batches

TABLE = "{{table}}"


def apply(state, event):
    tally = state if state is not None else {"events": 0, "last_type": ""}
    tally = {"events": tally["events"] + 1, "last_type": event.event_type}
    upsert = types.Effect_Upsert(
        types.UpsertRow(table=TABLE, key=event.aggregate_id, row=json.dumps(tally))
    )
    return tally, [upsert]


BATCHES = Batches(apply)


class WitWorld(wit_world.WitWorld):
    def init(self, config: str) -> None:
        # The manifest's [config], as JSON: this plugin takes none.
        if json.loads(config or "{}"):
            raise Err(types.Error(code="invalid-config", message="this plugin takes no configuration"))

    def fold(self, batch):
        return BATCHES.fold(batch, batching.Folded, batching.ChangedState)

    def forget(self, keys):
        BATCHES.forget(keys)

    def query(self, states, request):
        # Every state the host selected (one key's, or all), by key.
        return json.dumps({s.key: json.loads(s.state) for s in states})
