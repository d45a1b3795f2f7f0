// {{name}}: a projection. Per resource (the event's aggregate id) it counts events and
// remembers the last event type, and keeps the `{{table}}` table in step.
//
// The host calls `apply` with one key's state (a Uint8Array this module wrote, or undefined for
// a key never seen) and one event (fields in camelCase; u64 and s64 numbers are BigInts); it
// returns [new state, effects]. Throwing {code, message} rejects the event. Pure: no files,
// clock or network (the host denies them); time comes from `event.time`.

const TABLE = '{{table}}';
const encoder = new TextEncoder();
const decoder = new TextDecoder();

export function init(config) {
  // The manifest's [config], as JSON: this plugin takes none.
  if (Object.keys(JSON.parse(config || '{}')).length > 0) {
    throw { code: 'invalid-config', message: 'this plugin takes no configuration' };
  }
}

export function apply(state, event) {
  const tally = state === undefined ? { events: 0, last_type: '' } : JSON.parse(decoder.decode(state));
  const next = { events: tally.events + 1, last_type: event.eventType };
  const row = JSON.stringify(next);
  const upsert = { tag: 'upsert', val: { table: TABLE, key: event.aggregateId, row } };
  return [encoder.encode(row), [upsert]];
}

export function query(states, request) {
  // Every state the host selected (one key's, or all), by key.
  const out = {};
  for (const { key, state } of states) {
    out[key] = JSON.parse(decoder.decode(state));
  }
  return JSON.stringify(out);
}
