// {{name}}: a projection. Per resource (the event's aggregate id) it counts events and
// remembers the last event type, and keeps the `{{table}}` table in step.
//
// `apply(state, event)` folds one event: `state` is the key's state as JSON values (undefined
// for a key never seen), `event` has its fields in camelCase (u64 and s64 numbers are
// BigInts); it returns [new state, effects]. Throwing {code, message} rejects the event and
// keeps the key's state as it was. The host folds batches of events (contract
// jetfold:plugin@0.2.0): `batches` at the end of this file keeps the states between them.
// Pure: no files, clock or network (the host denies them); time comes from `event.time`.

const TABLE = '{{table}}';

function apply(state, event) {
  const tally = state === undefined ? { events: 0, last_type: '' } : state;
  const next = { events: tally.events + 1, last_type: event.eventType };
  const upsert = { tag: 'upsert', val: { table: TABLE, key: event.aggregateId, row: JSON.stringify(next) } };
  return [next, [upsert]];
}

export function init(config) {
  // The manifest's [config], as JSON: this plugin takes none.
  if (Object.keys(JSON.parse(config || '{}')).length > 0) {
    throw { code: 'invalid-config', message: 'this plugin takes no configuration' };
  }
}

export function query(states, request) {
  // Every state the host selected (one key's, or all), by key.
  const out = {};
  for (const { key, state } of states) {
    out[key] = JSON.parse(decoder.decode(state));
  }
  return JSON.stringify(out);
}

{{batches}}
const folder = batches(apply);
export const fold = folder.fold;
export const forget = folder.forget;
