"""The batch export of jetfold:plugin@0.2.0 for a plugin written one event at a time.

jetfold hands a 0.2.0 plugin a batch of events per call and lets it keep its keys' states
between calls, so a state is decoded once, not once per event. `Batches` does that for a
function `step(state, event) -> (state, effects)` (a projection's `apply`, a policy's
`decide`): it keeps every state it has folded as `json.loads` gives it (None for a key never
seen), calls `step` for each event in order, and hands the host the states the batch changed,
encoded with `json.dumps`, once per call. Raising `Err(types.Error(...))` rejects the event
and keeps its key's state as it was: return a new state rather than changing the one you are
given in place. Any other exception stops the call: the host shows its traceback with the
trap. Written by `jetfold new`; you should not need to change it.
"""

import json

from componentize_py_types import Err, Ok


# The string fields of each effect's record, so an effect of the wrong shape is named here,
# with the plugin's line, rather than failing later inside componentize-py's runtime.
_FIELDS = {
    "UpsertRow": ("table", "key", "row"),
    "UpdateRow": ("table", "key", "patch"),
    "DeleteRow": ("table", "key"),
    "Message": ("subject", "message_type", "payload"),
    "LogRecord": ("message",),
}
_DOCUMENTS = ("row", "patch", "payload")


def _effect_problem(effect):
    """Why `effect` is not an effect (a projection's types.Effect_*, a policy's
    types.Decision_*), or None."""
    name = type(effect).__name__
    if not name.startswith(("Effect_", "Decision_")):
        return "it is not an effect value (types.Effect_Upsert(types.UpsertRow(...)), ...)"
    value = getattr(effect, "value", None)
    if name == "Decision_Effect":
        return _effect_problem(value)
    fields = _FIELDS.get(type(value).__name__)
    if fields is None:
        return f"its value is not a record of the contract: {value!r:.100}"
    for field in fields:
        got = getattr(value, field, None)
        if not isinstance(got, str):
            hint = " (json.dumps it)" if field in _DOCUMENTS else ""
            return f"its {field} must be a str{hint}, not {type(got).__name__} {got!r:.100}"
    headers = getattr(value, "headers", [])
    if not isinstance(headers, list) or not all(
        isinstance(h, tuple) and len(h) == 2 and all(isinstance(x, str) for x in h) for h in headers
    ):
        return f"its headers must be a list of (name, value) str pairs, not {headers!r:.100}"
    return None


class Batches:
    def __init__(self, step):
        self.step = step
        self.held = {}

    def fold(self, batch, result, changed_state):
        """Folds `batch`; `result` is the record to return (`batching.Folded` for a
        projection, `batching.Decided` for a policy), `changed_state` `batching.ChangedState`."""
        keys = batch.keys
        held = self.held
        for seed in batch.seeds:
            held[keys[seed.key]] = None if seed.state is None else json.loads(seed.state)
        step = self.step
        outcomes = []
        changed = {}
        for item in batch.events:
            key = keys[item.key]
            try:
                out = step(held[key], item.event)
            except Err as e:
                outcomes.append(Err(e.value))
                continue
            if not isinstance(out, (tuple, list)) or len(out) != 2:
                raise TypeError(
                    f"{step.__name__} must return (state, effects), not {out!r:.200}"
                )
            state, effects = out
            if not isinstance(effects, list):
                raise TypeError(
                    f"{step.__name__} must return its effects as a list, not {effects!r:.200}"
                )
            for i, effect in enumerate(effects):
                problem = _effect_problem(effect)
                if problem:
                    raise TypeError(f"{step.__name__}'s effect #{i}: {problem}: {effect!r:.200}")
            held[key] = state
            changed[item.key] = True
            outcomes.append(Ok(effects))
        states = [
            changed_state(key=k, state=json.dumps(held[keys[k]]).encode()) for k in changed
        ]
        return result(outcomes=outcomes, states=states)

    def forget(self, keys):
        for key in keys:
            self.held.pop(key, None)
