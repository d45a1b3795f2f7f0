// decommission-notifier: a policy written in JavaScript (built with componentize-js).
//
// Per compute resource (the event's aggregate id) it remembers whether the resource was
// decommissioned; the first time it is, it decides a `ReleaseAddresses` command on
// `<command-prefix>.<id>.ReleaseAddresses` (the host adds message id, correlation and
// causation) and logs it. A second decommissioning asks for nothing.
//
// `decide(state, event)` gets one key's state (a Uint8Array this module returned, or undefined)
// and the event (camelCase fields; u64 and s64 are BigInts) and returns [state, decisions].
// Throwing {code, message} rejects the event.

const encoder = new TextEncoder();
const decoder = new TextDecoder();
let prefix = 'infra.commands';

export function init(config) {
  const parsed = JSON.parse(config || '{}');
  for (const key of Object.keys(parsed)) {
    if (key !== 'command-prefix') {
      throw { code: 'invalid-config', message: `unknown configuration key \`${key}\`` };
    }
  }
  if (parsed['command-prefix'] !== undefined) {
    prefix = String(parsed['command-prefix']);
  }
}

export function decide(state, event) {
  const resource = state === undefined ? { decommissioned: false } : JSON.parse(decoder.decode(state));
  const decisions = [];
  if (event.eventType === 'StatusChanged') {
    let payload;
    try {
      payload = JSON.parse(decoder.decode(event.payload));
    } catch (e) {
      throw { code: 'invalid-payload', message: `the payload is not JSON: ${e}` };
    }
    if (payload.to === 'Decommissioned' && !resource.decommissioned) {
      resource.decommissioned = true;
      decisions.push({
        tag: 'command',
        val: {
          kind: 'command',
          subject: `${prefix}.${event.aggregateId}.ReleaseAddresses`,
          messageType: 'ReleaseAddresses',
          payload: JSON.stringify({ id: event.aggregateId, reason: payload.reason ?? null }),
          headers: [],
        },
      });
      decisions.push({
        tag: 'effect',
        val: { tag: 'log', val: { level: 'info', message: `release the addresses of ${event.aggregateId}` } },
      });
    }
  }
  return [encoder.encode(JSON.stringify(resource)), decisions];
}
