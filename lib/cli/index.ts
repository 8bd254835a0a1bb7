#!/usr/bin/env node
/** The `lorakit` command line. Each command lives in lib/cli/commands and has its own --help. */
import yargs, { type Argv } from 'yargs';
import { hideBin } from 'yargs/helpers';
import { isLorakitError } from '../errors';
import { nearestName, kebab } from '../suggest';
import { evalCommand } from './commands/eval';
import { inspectCommand } from './commands/inspect';
import { mergeCommand } from './commands/merge';
import { trainCommand } from './commands/train';
import { analyzeCommand } from './commands/analyze';
import { planCommand } from './commands/plan';
import { sweepCommand } from './commands/sweep';
import { labCommand } from './commands/lab';
import { benchCommand } from './commands/bench';
import { exportCommand } from './commands/export';
import { serveCommand } from './commands/serve';
import { generateCommand } from './commands/generate';

const COMMANDS: [string, (y: Argv) => Argv][] = [
  ['train', trainCommand], ['inspect', inspectCommand], ['eval', evalCommand], ['merge', mergeCommand], ['analyze', analyzeCommand],
  ['sweep', sweepCommand], ['plan', planCommand], ['lab', labCommand], ['bench', benchCommand], ['export', exportCommand],
  ['generate', generateCommand], ['serve', serveCommand],
];

/**
 * The `--name` flags of `args` that the command does not know, each with the nearest option it does
 * know (by edit distance, when close enough to be a likely typo). yargs suggests only commands, and
 * its strict check runs after the required-option and positional checks, so a misspelt option would
 * otherwise read as a missing one.
 */
export function unknownOptions(args: readonly string[], known: Iterable<string>): { flag: string; nearest: string | null }[] {
  const names = new Set([...known].map(kebab));
  const out: { flag: string; nearest: string | null }[] = [];
  for (const a of args) {
    if (a === '--') break;
    if (!a.startsWith('--') || a.length < 3) continue;
    const name = kebab(a.slice(2).split('=')[0]!);
    if (names.has(name) || (name.startsWith('no-') && names.has(name.slice(3)))) continue;
    const nearest = nearestName(name, names);
    out.push({ flag: `--${name}`, nearest: nearest === null ? null : `--${nearest}` });
  }
  return out;
}

/**
 * Every option name (and alias) a command's builder declares, with yargs' own help and version. Read by
 * running the builder on a fresh parser, so the check needs no second list of each command's options.
 */
function optionsOf(add: (y: Argv) => Argv): string[] {
  let builder: ((a: Argv) => Argv) | undefined;
  const capture = { command: (_name: string, _describe: string, b: (a: Argv) => Argv) => ((builder = b), capture) };
  add(capture as unknown as Argv);
  const parser = yargs([]);
  builder!(parser);
  const o = (parser as unknown as { getOptions(): { key: Record<string, unknown>; alias: Record<string, string[]> } }).getOptions();
  return ['help', 'h', 'version', ...Object.keys(o.key), ...Object.entries(o.alias).flat(2)];
}

/**
 * The last word on an error nothing else caught: lorakit's own errors (a user mistake or a file that
 * cannot be read) are one line and exit code 1; anything else is a bug in lorakit, and keeps its stack.
 */
function reportUncaught(command: string | undefined, e: unknown): void {
  const prefix = `lorakit${command ? ` ${command}` : ''}: `;
  // Library errors start with their operation ("merge: ..."): not said twice.
  if (isLorakitError(e)) process.stderr.write(`${command && e.message.startsWith(`${command}: `) ? 'lorakit ' : prefix}${e.message}\n`);
  else process.stderr.write(`${prefix}internal error (a bug in lorakit; please report it with this trace):\n${e instanceof Error ? e.stack : String(e)}\n`);
  process.exitCode = 1;
}

/**
 * `lorakit ... | head` closes the pipe while lorakit still writes: that is the reader being done, not
 * a failure, so lorakit stops quietly with code 0 as other command-line tools do.
 */
function quietOnClosedPipe(): void {
  for (const stream of [process.stdout, process.stderr])
    stream.on('error', (e: NodeJS.ErrnoException) => {
      if (e.code === 'EPIPE') process.exit(0);
      throw e;
    });
}

export function main(argv: string[] = hideBin(process.argv)): void {
  quietOnClosedPipe();
  const first = argv.find((a) => !a.startsWith('-'));
  const command = COMMANDS.some(([name]) => name === first) ? first : undefined;
  const usageError = (msg: string): never => {
    const where = command ? `lorakit ${command}` : 'lorakit';
    process.stderr.write(`${where}: ${msg}\nRun \`${where} --help\` for usage.\n`);
    process.exit(2);
  };
  if (command) {
    const bad = unknownOptions(argv, optionsOf(COMMANDS.find(([name]) => name === command)![1]));
    if (bad.length) usageError(bad.map((b) => `unknown option ${b.flag}${b.nearest ? ` (did you mean ${b.nearest}?)` : ''}`).join('; '));
  }
  let y = yargs(argv).scriptName('lorakit').usage('$0 <command> [options]');
  for (const [, add] of COMMANDS) y = add(y);
  try {
    const parsed = y
      .demandCommand(1, 'Name a command; `lorakit --help` lists them.')
      .recommendCommands()
      .strict()
      .help()
      .alias('h', 'help')
      .version()
      .wrap(Math.min(110, process.stdout.columns || 110))
      .fail((msg, err) => {
        if (err) reportUncaught(command, err);
        else usageError(msg);
      })
      .parse();
    // yargs hands an async command's rejection to .fail above, and rejects this promise with it too.
    if (parsed instanceof Promise) parsed.catch(() => {});
  } catch (e) {
    reportUncaught(command, e);
  }
}

if (require.main === module) main();
