/** Asserts that `fn` throws an error of `type` with `code` whose message contains every part. */
export function expectError(fn: () => unknown, type: new (...args: never[]) => Error, code: string, ...parts: (string | RegExp)[]): void {
  let caught: unknown;
  try {
    fn();
  } catch (e) {
    caught = e;
  }
  expect(caught).toBeInstanceOf(type);
  const e = caught as Error & { code: string };
  expect(e.code).toBe(code);
  for (const p of parts) expect(e.message).toMatch(p);
}
