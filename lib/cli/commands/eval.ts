import type { Argv } from 'yargs';
import * as path from 'node:path';
import { readJsonl } from '../../data/jsonl';
import { loadExamples } from '../../data/load';
import { loadAdapter } from '../../lora/adapter';
import { loadModel } from '../../models';
import { loadTokenizer } from '../../tokenizer';
import { evaluate } from '../../train/evaluate';
import { print, runCommand } from '../run';

export function evalCommand(y: Argv): Argv {
  return y.command(
    'eval',
    'Loss and perplexity of a model (and adapter) on a JSONL file, one sequence per line',
    (a) =>
      a
        .option('model', { type: 'string', demandOption: true, describe: 'model folder' })
        .option('adapter', { type: 'string', describe: 'PEFT adapter folder' })
        .option('data', { type: 'string', demandOption: true, describe: 'JSONL ({"text"}, {"prompt","completion"}, {"messages"} or {"input_ids"} per line) or .txt' })
        .option('json', { type: 'boolean', default: false, describe: 'print one JSON object: loss, tokens, perplexity, examples' }),
    (argv) =>
      runCommand('eval', () => {
        // input_ids lines need no tokenizer; anything else loads the model's (which names what is missing).
        const idsOnly = path.extname(argv.data) === '.jsonl' && readJsonl(argv.data).every((r) => r.kind === 'ids');
        const examples = loadExamples(argv.data, idsOnly ? null : loadTokenizer(argv.model));
        using model = loadModel(argv.model);
        if (argv.adapter) loadAdapter(model, argv.adapter);
        const r = evaluate(model, examples);
        if (argv.json) return print(JSON.stringify(r));
        const what = argv.adapter ? `${path.basename(argv.model)} + ${path.basename(argv.adapter)}` : path.basename(argv.model);
        print(`${what} on ${path.basename(argv.data)}: loss ${r.loss.toFixed(6)}, perplexity ${r.perplexity.toFixed(4)} over ${r.tokens} tokens in ${r.examples} examples`);
      }),
  );
}
