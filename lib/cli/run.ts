/** Shared plumbing of the CLI commands: output and error reporting. */
import { LorakitError, LorakitRangeError, LorakitTypeError } from '../errors';

/** Runs a command body; lorakit's errors become one line on stderr and exit code 1 (no stack). */
export function runCommand(name: string, body: () => void): void {
  try {
    body();
  } catch (e) {
    if (e instanceof LorakitError || e instanceof LorakitTypeError || e instanceof LorakitRangeError) {
      process.stderr.write(`lorakit ${name}: ${e.message}\n`);
      process.exitCode = 1;
      return;
    }
    throw e;
  }
}

export function print(line: string): void {
  process.stdout.write(`${line}\n`);
}
