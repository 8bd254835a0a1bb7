import * as fs from 'node:fs';
import * as path from 'node:path';
import { ioError, readJsonFile, writeJsonFile } from '../../io/config';
import { isObject } from '../../check';
import { assertOutputApart, makeDir } from '../../io/fs';
import { writeSafetensors } from '../../io/safetensors';
import { jsonlRecords, tokenize, type LineRecord } from '../../data/jsonl';
import { splitExample } from '../../data/load';
import { loadAdapter } from '../../adapters/adapter';
import { loadModel } from '../../models';
import { logitsError } from '../../models/compare';
import { loadTokenizer } from '../../tokenizer';
import { tensor } from '../../tensor/tensor';
import { command, print } from '../run';


function copyFile(from: string, to: string): void {
  try {
    fs.copyFileSync(from, to);
  } catch (e) {
    throw ioError('merge', 'write', to, e);
  }
}

/**
 * Writes one output file to a temporary name and renames it over `file`, so that a link already there
 * is replaced rather than written through.
 */
function writeOutput(op: string, file: string, write: (tmp: string) => void): void {
  const tmp = `${file}.merge-${process.pid}.tmp`;
  try {
    write(tmp);
    fs.renameSync(tmp, file);
  } catch (e) {
    fs.rmSync(tmp, { force: true });
    throw ioError(op, 'write', file, e);
  }
}

// Files of a model folder that a merged checkpoint keeps unchanged.
const CARRIED = ['generation_config.json', 'tokenizer.json', 'tokenizer_config.json', 'special_tokens_map.json', 'vocab.json', 'merges.txt', 'tokenizer.model'];

export const mergeCommand = command({
  usage: 'merge',
  describe: 'Merge an adapter into its base model, write a loadable checkpoint, and print the error of what was written',
  options: (a) =>
    a
      .option('model', { type: 'string', demandOption: true, describe: 'base model folder' })
      .option('adapter', { type: 'string', demandOption: true, describe: 'PEFT adapter folder' })
      .option('out', { type: 'string', demandOption: true, describe: 'folder for the merged checkpoint' })
      .option('dtype', { choices: ['float32', 'bfloat16'] as const, default: 'float32' as const, describe: 'dtype of the written weights' })
      .option('data', { type: 'string', describe: 'JSONL whose first example measures the merge error (default: a fixed random batch)' }),
  run: (argv) => {
    const inputs = { '--model': argv.model, '--adapter': argv.adapter };
    // By real path, so that an --out that is a symlink to the model (or lies inside it) is refused.
    assertOutputApart('merge', argv.out, inputs);
    // Each file too, before anything is written: a file in --out may be a symlink into the model.
    const carried = CARRIED.filter((f) => fs.existsSync(path.join(argv.model, f)));
    for (const f of ['model.safetensors', 'config.json', ...carried]) assertOutputApart('merge', path.join(argv.out, f), inputs, 'output file');
    using model = loadModel(argv.model);
    loadAdapter(model, argv.adapter);
    let probe;
    let probeName: string;
    if (argv.data) {
      // Only the first record is read (the file may be large), and only its first context's worth of
      // tokens is run.
      // (An empty file throws, naming itself, before the iterator is done.)
      const record = (jsonlRecords(argv.data).next().value as LineRecord).record;
      const ex = splitExample(tokenize([record], record.kind === 'ids' ? null : loadTokenizer(argv.model), argv.data)[0]!, model.config.maxPositions)[0]!;
      probe = tensor(BigInt64Array.from(ex.inputIds, BigInt), [1, ex.inputIds.length]);
      probeName = `the first example of ${path.basename(argv.data)} (${ex.inputIds.length} tokens)`;
    } else {
      const seq = Math.min(64, model.config.maxPositions);
      let s = 12345;
      const ids = BigInt64Array.from({ length: 2 * seq }, () => BigInt((s = (s * 1103515245 + 12345) % 2147483648) % model.config.vocabSize));
      probe = tensor(ids, [2, seq]);
      probeName = `a fixed random batch of 2 x ${seq} tokens`;
    }
    try {
      // The reference: the base with the adapter beside it, unmerged, in float32.
      const reference = model.forward(probe, { returnLogits: true }).logits!;
      let exact: Float32Array;
      try {
        exact = reference.toFloat32Array();
      } finally {
        reference.dispose();
      }
      model.mergeAdapters();
      makeDir('merge', argv.out);
      const weights = model.exportWeights(argv.dtype);
      try {
        writeOutput('merge', path.join(argv.out, 'model.safetensors'), (tmp) => writeSafetensors(tmp, weights, { format: 'pt' }));
      } finally {
        for (const t of Object.values(weights)) t.dispose();
      }
      const config = readJsonFile('merge', path.join(argv.model, 'config.json'), 'ERR_CONFIG');
      if (isObject(config)) {
        if ('torch_dtype' in config) config.torch_dtype = argv.dtype;
        config.dtype = argv.dtype;
        // Weights are written untied only where the model has its own head; a tied head stays tied.
      }
      writeOutput('merge', path.join(argv.out, 'config.json'), (tmp) => writeJsonFile('merge', tmp, config));
      for (const f of carried) writeOutput('merge', path.join(argv.out, f), (tmp) => copyFile(path.join(argv.model, f), tmp));
      // The error of what was written: the saved checkpoint (bf16-rounded under --dtype bfloat16) read
      // back, against the unmerged float32 reference.
      using written = loadModel(argv.out);
      using logits = written.forward(probe, { returnLogits: true }).logits!;
      const err = logitsError(exact, logits.toFloat32Array());
      print(`merged ${path.basename(argv.adapter)} into ${path.basename(argv.model)} -> ${argv.out} (${argv.dtype})`);
      print(`merge error of the written ${argv.dtype} checkpoint on ${probeName}: max |Δlogit| ${err.maxAbs.toExponential(3)}, relative ${err.relative.toExponential(3)}`);
    } finally {
      probe.dispose();
    }
  },
});
