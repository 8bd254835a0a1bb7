/** Shared plumbing of the CLI commands: output and error reporting. */
import { LorakitError, LorakitRangeError, LorakitTypeError } from '../errors';

// lorakit's errors become one line on stderr and exit code 1 (no stack); anything else is a bug and
// keeps its stack.
function reportError(prefix: string, e: unknown): void {
  if (e instanceof LorakitError || e instanceof LorakitTypeError || e instanceof LorakitRangeError) {
    // Library errors start with their operation ("merge: cannot create folder ..."): not said twice.
    const op = prefix.replace(/^lorakit /, '');
    process.stderr.write(`${op && e.message.startsWith(op) ? 'lorakit ' : prefix}${e.message}\n`);
    process.exitCode = 1;
    return;
  }
  throw e;
}

/** Runs a command body, reporting lorakit's errors as `lorakit <name>: <message>`. */
export function runCommand(name: string, body: () => void): void {
  try {
    body();
  } catch (e) {
    reportError(`lorakit ${name}: `, e);
  }
}

/** The same for an async body; `prefix` comes before each error message. */
export async function runCommandAsync(prefix: string, body: () => Promise<void>): Promise<void> {
  try {
    await body();
  } catch (e) {
    reportError(prefix, e);
  }
}

export function print(line: string): void {
  process.stdout.write(`${line}\n`);
}
