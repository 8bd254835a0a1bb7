import type { Argv } from 'yargs';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { parameterCounts, readModelConfig } from '../../io/config';
import { print, runCommand } from '../run';

export function inspectCommand(y: Argv): Argv {
  return y.command(
    'inspect <model-dir>',
    'Architecture, parameter count, dtype, and the modules LoRA can target',
    (a) =>
      a
        .positional('model-dir', { type: 'string', demandOption: true, describe: 'a Hugging Face model folder (config.json + safetensors)' })
        .option('json', { type: 'boolean', default: false, describe: 'print one JSON object' })
        .option('r', { type: 'number', default: 16, describe: 'rank for the LoRA parameter estimate' }),
    (argv) =>
      runCommand('inspect', () => {
        const dir = argv['model-dir'] as string;
        const c = readModelConfig(dir);
        const counts = parameterCounts(c);
        const r = argv.r;
        const modules = [...counts.linear].map(([name, e]) => ({ name, count: e.count, shape: [e.out, e.in], loraParams: e.count * r * (e.out + e.in) }));
        const loraAll = modules.reduce((s, m) => s + m.loraParams, 0);
        const files = ['tokenizer.json', 'tokenizer_config.json', 'model.safetensors', 'model.safetensors.index.json'].filter((f) => fs.existsSync(path.join(dir, f)));
        const info = {
          modelType: c.modelType, layers: c.numLayers, hidden: c.hiddenSize, heads: c.numHeads, kvHeads: c.numKvHeads, headDim: c.headDim,
          intermediate: c.intermediateSize, vocab: c.vocabSize, maxPositions: c.maxPositions, tiedEmbeddings: c.tieWordEmbeddings,
          dtype: c.dtype, parameters: counts.total, modules, loraRank: r, loraParamsAllLinear: loraAll, files,
        };
        if (argv.json) return print(JSON.stringify(info));
        print(`${c.modelType}: ${c.numLayers} layers, hidden ${c.hiddenSize}, ${c.numHeads} heads (${c.numKvHeads} kv, head dim ${c.headDim}), MLP ${c.intermediateSize}, vocab ${c.vocabSize}, ${c.maxPositions} positions`);
        print(`parameters: ${counts.total.toLocaleString('en-US')} (${(counts.total / 1e6).toFixed(2)}M); saved as ${c.dtype ?? 'unspecified dtype'}; embeddings ${c.tieWordEmbeddings ? 'tied' : 'untied'}`);
        print(`LoRA target modules (target_modules names):`);
        for (const m of modules) print(`  ${m.name.padEnd(12)} x${String(m.count).padEnd(4)} [${m.shape.join(', ')}]   r=${r}: ${m.loraParams.toLocaleString('en-US')} params`);
        print(`all-linear at r=${r}: ${loraAll.toLocaleString('en-US')} trainable parameters (${((100 * loraAll) / counts.total).toFixed(3)}% of the model)`);
        print(`files: ${files.join(', ')}`);
      }),
  );
}
