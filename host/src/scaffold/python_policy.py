"""{{name}}: a policy. Per resource (the event's aggregate id) it counts failed checks since
the last passed one; at the third it asks for the resource to be quarantined.

`decide(state, event)` decides about one event: `state` is the key's state as JSON values
(None for a key never seen); it returns the new state and the decisions: commands to publish
(the host sets their message id, correlation and causation). The host folds batches of events
(contract jetfold:plugin@0.2.0) and `jetfold_batch` keeps the states between them. Pure: no
files, clock or network.
"""

import json

import wit_world
from componentize_py_types import Err
from wit_world.imports import batching, types

from jetfold_batch import Batches

# Failed checks in a row that trigger the command.
THRESHOLD = 3


def decide(state, event):
    watch = dict(state) if state is not None else {"failures": 0}
    decisions = []
    if event.event_type == "CheckFailed":
        watch["failures"] += 1
        if watch["failures"] == THRESHOLD:
            payload = json.dumps({"id": event.aggregate_id, "failures": watch["failures"]})
            command = types.Message(
                kind=types.MessageKind.COMMAND,
                subject=f"commands.{event.aggregate_id}.Quarantine",
                message_type="Quarantine",
                payload=payload,
                headers=[],
            )
            decisions.append(types.Decision_Command(command))
    elif event.event_type == "CheckPassed":
        watch["failures"] = 0
    return watch, decisions


BATCHES = Batches(decide)


class WitWorld(wit_world.WitWorld):
    def init(self, config: str) -> None:
        # The manifest's [config], as JSON: this plugin takes none.
        if json.loads(config or "{}"):
            raise Err(types.Error(code="invalid-config", message="this plugin takes no configuration"))

    def decide(self, batch):
        return BATCHES.fold(batch, batching.Decided, batching.ChangedState)

    def forget(self, keys):
        BATCHES.forget(keys)
