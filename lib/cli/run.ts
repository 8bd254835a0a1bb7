/** Shared plumbing of the CLI commands: declaring one, its output and its error reporting. */
import type { ArgumentsCamelCase, Argv } from 'yargs';
import { isLorakitError } from '../errors';

// lorakit's errors become one line on stderr and exit code 1 (no stack); anything else is a bug and
// keeps its stack.
function reportError(prefix: string, e: unknown): void {
  if (isLorakitError(e)) {
    // Library errors start with their operation ("merge: cannot create folder ..."): not said twice.
    const op = prefix.replace(/^lorakit /, '');
    process.stderr.write(`${op && e.message.startsWith(op) ? 'lorakit ' : prefix}${e.message}\n`);
    process.exitCode = 1;
    return;
  }
  throw e;
}

// A synchronous body stays synchronous, so that yargs' parse() of a synchronous command returns at once.
function guarded(prefix: string, body: () => void | Promise<void>): void | Promise<void> {
  try {
    const done = body();
    if (done instanceof Promise) return done.catch((e: unknown) => reportError(prefix, e));
  } catch (e) {
    reportError(prefix, e);
  }
}

/** Runs a command body, reporting lorakit's errors as `lorakit <name>: <message>`. */
export function runCommand(name: string, body: () => void): void {
  void guarded(`lorakit ${name}: `, body);
}

export interface CommandSpec<O> {
  /** yargs' command string: the name, then any positionals (`inspect <model-dir>`). */
  usage: string;
  describe: string;
  options: (a: Argv) => Argv<O>;
  run: (argv: ArgumentsCamelCase<O>) => void | Promise<void>;
  /** What comes before each error message [default: `lorakit <name>: `]. */
  errorPrefix?: string;
}

/** A command as the CLI adds it to its parser, its body's errors reported as runCommand does. */
export function command<O>(spec: CommandSpec<O>): (y: Argv) => Argv {
  const prefix = spec.errorPrefix ?? `lorakit ${spec.usage.split(' ')[0]}: `;
  return (y) => y.command(spec.usage, spec.describe, spec.options, (argv) => guarded(prefix, () => spec.run(argv)));
}

export function print(line: string): void {
  process.stdout.write(`${line}\n`);
}

/** Says where an HTML report went: on stderr under --json, so that stdout stays one JSON object. */
export function printReportWritten(file: string, json: boolean): void {
  const where = `report written to ${file}`;
  if (json) process.stderr.write(`${where}\n`);
  else print(where);
}
