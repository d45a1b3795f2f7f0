// --- The batch export of jetfold:plugin@0.2.0, written by `jetfold new` ---------------------
// jetfold hands a 0.2.0 plugin a batch of events per call and lets it keep its keys' states
// between calls, so a state is decoded once, not once per event. `batches(step)` does that for
// a function `step(state, event) -> [state, effects]`: it keeps every state it has folded as
// JSON.parse gives it (undefined for a key never seen), calls `step` for each event in order,
// and hands the host the states the batch changed, encoded with JSON.stringify, once per call.
// A `step` that throws {code, message} rejects its event and the key keeps its state: return
// a new state rather than changing the one you are given in place. Anything else it throws
// stops the call: componentize-js writes its message and stack to stderr, which the host
// shows with the trap.
const encoder = new TextEncoder();
const decoder = new TextDecoder();

// For error messages: JSON where it can be (a BigInt cannot), else the value as a string.
function show(value) {
  try {
    return JSON.stringify(value);
  } catch {
    return String(value);
  }
}

// The string fields of each effect's record (componentize-js names them in camelCase), so an
// effect of the wrong shape is named here, with the plugin's name, rather than failing later
// inside the generated bindings with "expected a string".
const EFFECT_FIELDS = {
  upsert: ['table', 'key', 'row'],
  update: ['table', 'key', 'patch'],
  delete: ['table', 'key'],
  emit: ['kind', 'subject', 'messageType', 'payload'],
  command: ['kind', 'subject', 'messageType', 'payload'],
  log: ['level', 'message'],
};

// Why `effect` is not an effect (or a policy's decision), or null when it is one.
function effectProblem(effect) {
  if (!effect || typeof effect.tag !== 'string' || typeof effect.val !== 'object' || effect.val === null) {
    return "it is not { tag: 'upsert', val: { table, key, row } } or another effect";
  }
  if (effect.tag === 'effect') {
    return effectProblem(effect.val);
  }
  const fields = EFFECT_FIELDS[effect.tag];
  if (!fields) {
    return `its tag '${effect.tag}' is none of ${Object.keys(EFFECT_FIELDS).join(', ')}, effect`;
  }
  for (const field of fields) {
    if (typeof effect.val[field] !== 'string') {
      const hint = field === 'row' || field === 'patch' || field === 'payload' ? ' (JSON.stringify it)' : '';
      return `its ${effect.tag}'s ${field} must be a string${hint}, not ${show(effect.val[field])}`;
    }
  }
  if ((effect.tag === 'emit' || effect.tag === 'command') && !Array.isArray(effect.val.headers)) {
    return `its ${effect.tag}'s headers must be an array of [name, value] pairs ([] for none), not ${show(effect.val.headers)}`;
  }
  return null;
}

function batches(step) {
  const held = new Map();
  return {
    fold(batch) {
      const { keys, seeds, events } = batch;
      for (const seed of seeds) {
        held.set(keys[seed.key], seed.state === undefined ? undefined : JSON.parse(decoder.decode(seed.state)));
      }
      const outcomes = [];
      const changed = new Set();
      for (const item of events) {
        const key = keys[item.key];
        let out;
        try {
          out = step(held.get(key), item.event);
          if (!Array.isArray(out) || out.length !== 2) {
            throw new TypeError(`${step.name} must return [state, effects], not ${show(out)}`);
          }
          if (!Array.isArray(out[1])) {
            throw new TypeError(`${step.name} must return its effects as an array, not ${show(out[1])}`);
          }
          out[1].forEach((effect, i) => {
            const problem = effectProblem(effect);
            if (problem) {
              throw new TypeError(`${step.name}'s effect #${i}: ${problem}: ${show(effect)}`);
            }
          });
        } catch (e) {
          if (e && typeof e === 'object' && 'code' in e && typeof e.code !== 'string') {
            throw new TypeError(`${step.name} threw { code, message } with a code that is not a string: ${show(e)}`);
          }
          if (e && typeof e.code === 'string') {
            outcomes.push({ tag: 'err', val: { code: e.code, message: String(e.message ?? '') } });
            continue;
          }
          throw e;
        }
        held.set(key, out[0]);
        changed.add(item.key);
        outcomes.push({ tag: 'ok', val: out[1] });
      }
      const states = [...changed].map((k) => {
        let json;
        try {
          json = JSON.stringify(held.get(keys[k]));
        } catch (e) {
          throw new TypeError(`the state ${step.name} returned for key ${keys[k]} cannot be kept as JSON: ${e.message} (a BigInt, such as event.sequence, needs Number() or String())`);
        }
        return { key: k, state: encoder.encode(json) };
      });
      return { outcomes, states };
    },
    forget(keys) {
      for (const key of keys) {
        held.delete(key);
      }
    },
  };
}
