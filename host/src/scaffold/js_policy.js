// {{name}}: a policy. Per resource (the event's aggregate id) it counts failed checks since
// the last passed one; at the third it asks for the resource to be quarantined.
//
// `decide(state, event)` decides about one event: `state` is the key's state as JSON values
// (undefined for a key never seen), `event` has its fields in camelCase (u64 and s64 numbers
// are BigInts); it returns [new state, decisions]: commands to publish (the host sets their
// message id, correlation and causation). Throwing {code, message} rejects the event and keeps
// the key's state as it was. The host folds batches of events (contract jetfold:plugin@0.2.0):
// `batches` at the end of this file keeps the states between them. Pure: no files, clock or
// network.

// Failed checks in a row that trigger the command.
const THRESHOLD = 3;

function decideOne(state, event) {
  const watch = state === undefined ? { failures: 0 } : { ...state };
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
  return [watch, decisions];
}

export function init(config) {
  // The manifest's [config], as JSON: this plugin takes none.
  if (Object.keys(JSON.parse(config || '{}')).length > 0) {
    throw { code: 'invalid-config', message: 'this plugin takes no configuration' };
  }
}

{{batches}}
const folder = batches(decideOne);
export const decide = folder.fold;
export const forget = folder.forget;
