// Node 20 defines Symbol.dispose only in the main realm; inside vm contexts (jest, sandboxes) it is
// missing. Node's own polyfill uses the registered symbol below, so both realms agree on the key.
const S = Symbol as unknown as { dispose?: symbol; asyncDispose?: symbol };
S.dispose ??= Symbol.for('nodejs.dispose');
S.asyncDispose ??= Symbol.for('nodejs.asyncDispose');
export {};
