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
                # A projection's effects are types.Effect_*, a policy's types.Decision_*.
                if not type(effect).__name__.startswith(("Effect_", "Decision_")):
                    raise TypeError(
                        f"{step.__name__}'s effect #{i} is not an effect value "
                        f"(types.Effect_Upsert(types.UpsertRow(...)), ...): {effect!r:.200}"
                    )
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
