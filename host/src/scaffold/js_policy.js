// {{name}}: a policy. Per resource (the event's aggregate id) it counts failed checks since
// the last passed one; at the third it asks for the resource to be quarantined.
//
// The host calls `decide` with one key's state (a Uint8Array this module wrote, or undefined
// for a key never seen) and one event (fields in camelCase; u64 and s64 numbers are BigInts);
// it returns [new state, decisions]: commands to publish (the host sets their message id,
// correlation and causation). Throwing {code, message} rejects the event. Pure: no files,
// clock or network.

// Failed checks in a row that trigger the command.
const THRESHOLD = 3;
const encoder = new TextEncoder();
const decoder = new TextDecoder();

export function init(config) {
  // The manifest's [config], as JSON: this plugin takes none.
  if (Object.keys(JSON.parse(config || '{}')).length > 0) {
    throw { code: 'invalid-config', message: 'this plugin takes no configuration' };
  }
}

export function decide(state, event) {
  const watch = state === undefined ? { failures: 0 } : JSON.parse(decoder.decode(state));
  const decisions = [];
  if (event.eventType === 'CheckFailed') {
    watch.failures += 1;
    if (watch.failures === THRESHOLD) {
      decisions.push({
        tag: 'command',
        val: {
          kind: 'command',
          subject: `commands.${event.aggregateId}.Quarantine`,
          messageType: 'Quarantine',
          payload: JSON.stringify({ id: event.aggregateId, failures: watch.failures }),
          headers: [],
        },
      });
    }
  } else if (event.eventType === 'CheckPassed') {
    watch.failures = 0;
  }
  return [encoder.encode(JSON.stringify(watch)), decisions];
}
