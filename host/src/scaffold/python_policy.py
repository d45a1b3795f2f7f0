"""{{name}}: a policy. Per resource (the event's aggregate id) it counts failed checks since
the last passed one; at the third it asks for the resource to be quarantined.

The host calls `decide` with one key's state (bytes this module wrote, or None for a key never
seen) and one event; it returns the new state and the decisions: commands to publish (the host
sets their message id, correlation and causation). Pure: no files, clock or network.
"""

import json

import wit_world
from componentize_py_types import Err
from wit_world.imports import types

# Failed checks in a row that trigger the command.
THRESHOLD = 3


class WitWorld(wit_world.WitWorld):
    def init(self, config: str) -> None:
        # The manifest's [config], as JSON: this plugin takes none.
        if json.loads(config or "{}"):
            raise Err(types.Error(code="invalid-config", message="this plugin takes no configuration"))

    def decide(self, state, event):
        watch = json.loads(state) if state is not None else {"failures": 0}
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
        return json.dumps(watch).encode(), decisions
