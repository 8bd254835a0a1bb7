import type { Argv } from 'yargs';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { LorakitError } from '../../errors';
import { readJsonFile, writeJsonFile, isObject } from '../../io/config';
import { writeSafetensors } from '../../io/safetensors';
import { readJsonl, tokenize } from '../../data/jsonl';
import { loadAdapter } from '../../lora/adapter';
import { loadModel } from '../../models';
import { loadTokenizer } from '../../tokenizer';
import { tensor } from '../../tensor/tensor';
import { print, runCommand } from '../run';

// Files of a model folder that a merged checkpoint keeps unchanged.
const CARRIED = ['generation_config.json', 'tokenizer.json', 'tokenizer_config.json', 'special_tokens_map.json', 'vocab.json', 'merges.txt', 'tokenizer.model'];

export function mergeCommand(y: Argv): Argv {
  return y.command(
    'merge',
    'Merge an adapter into its base model, write a loadable checkpoint, and print the merge error',
    (a) =>
      a
        .option('model', { type: 'string', demandOption: true, describe: 'base model folder' })
        .option('adapter', { type: 'string', demandOption: true, describe: 'PEFT adapter folder' })
        .option('out', { type: 'string', demandOption: true, describe: 'folder for the merged checkpoint' })
        .option('dtype', { choices: ['float32', 'bfloat16'] as const, default: 'float32' as const, describe: 'dtype of the written weights' })
        .option('data', { type: 'string', describe: 'JSONL whose first example measures the merge error (default: a fixed random batch)' }),
    (argv) =>
      runCommand('merge', () => {
        if (path.resolve(argv.out) === path.resolve(argv.model)) throw new LorakitError('ERR_INVALID_ARG', `--out must differ from --model (${argv.model})`);
        using model = loadModel(argv.model);
        loadAdapter(model, argv.adapter);
        let probe;
        let probeName: string;
        if (argv.data) {
          const records = readJsonl(argv.data).slice(0, 1);
          const ex = tokenize(records, records[0]!.kind === 'ids' ? null : loadTokenizer(argv.model), argv.data)[0]!;
          probe = tensor(BigInt64Array.from(ex.inputIds, BigInt), [1, ex.inputIds.length]);
          probeName = `the first example of ${path.basename(argv.data)} (${ex.inputIds.length} tokens)`;
        } else {
          const seq = Math.min(64, model.config.maxPositions);
          let s = 12345;
          const ids = BigInt64Array.from({ length: 2 * seq }, () => BigInt((s = (s * 1103515245 + 12345) % 2147483648) % model.config.vocabSize));
          probe = tensor(ids, [2, seq]);
          probeName = `a fixed random batch of 2 x ${seq} tokens`;
        }
        const err = model.mergeError(probe);
        probe.dispose();
        const weights = model.exportWeights(argv.dtype);
        try {
          fs.mkdirSync(argv.out, { recursive: true });
          writeSafetensors(path.join(argv.out, 'model.safetensors'), weights, { format: 'pt' });
        } finally {
          for (const t of Object.values(weights)) t.dispose();
        }
        const config = readJsonFile('merge', path.join(argv.model, 'config.json'), 'ERR_CONFIG');
        if (isObject(config)) {
          if ('torch_dtype' in config) config.torch_dtype = argv.dtype;
          config.dtype = argv.dtype;
          // Weights are written untied only where the model has its own head; a tied head stays tied.
        }
        writeJsonFile('merge', path.join(argv.out, 'config.json'), config);
        for (const f of CARRIED) if (fs.existsSync(path.join(argv.model, f))) fs.copyFileSync(path.join(argv.model, f), path.join(argv.out, f));
        print(`merged ${path.basename(argv.adapter)} into ${path.basename(argv.model)} -> ${argv.out} (${argv.dtype})`);
        print(`merge error on ${probeName}: max |Δlogit| ${err.maxAbs.toExponential(3)}, relative ${err.relative.toExponential(3)}`);
      }),
  );
}
