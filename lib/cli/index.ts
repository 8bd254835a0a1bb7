#!/usr/bin/env node
/** The `lorakit` command line. Each command lives in lib/cli/commands and has its own --help. */
import yargs from 'yargs';
import { hideBin } from 'yargs/helpers';
import { evalCommand } from './commands/eval';
import { inspectCommand } from './commands/inspect';
import { mergeCommand } from './commands/merge';
import { trainCommand } from './commands/train';
import { analyzeCommand } from './commands/analyze';
import { planCommand } from './commands/plan';
import { sweepCommand } from './commands/sweep';
import { labCommand } from './commands/lab';
import { benchCommand } from './commands/bench';

export function main(argv: string[] = hideBin(process.argv)): void {
  let y = yargs(argv).scriptName('lorakit').usage('$0 <command> [options]');
  for (const add of [trainCommand, inspectCommand, evalCommand, mergeCommand, analyzeCommand, sweepCommand, planCommand, labCommand, benchCommand]) y = add(y);
  y.demandCommand(1, 'Name a command; `lorakit --help` lists them.')
    .strict()
    .help()
    .alias('h', 'help')
    .version()
    .wrap(Math.min(110, process.stdout.columns || 110))
    .fail((msg, err) => {
      if (err) throw err;
      process.stderr.write(`lorakit: ${msg}\nRun \`lorakit --help\` for usage.\n`);
      process.exit(2);
    })
    .parse();
}

if (require.main === module) main();
