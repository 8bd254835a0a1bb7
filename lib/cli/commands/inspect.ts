import type { Argv } from 'yargs';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { readModelConfig, type ModelConfig } from '../../io/config';
import { print, runCommand } from '../run';

/** Parameter counts per part, from the config (exact for the supported architectures). */
export function parameterCounts(c: ModelConfig): { total: number; embedding: number; linear: Map<string, { count: number; out: number; in: number }> } {
  const D = c.hiddenSize, F = c.intermediateSize, V = c.vocabSize;
  const linear = new Map<string, { count: number; out: number; in: number }>();
  let total = 0;
  const add = (name: string, out: number, inF: number, bias: boolean) => {
    const e = linear.get(name) ?? { count: 0, out, in: inF };
    e.count += c.numLayers;
    linear.set(name, e);
    total += c.numLayers * (out * inF + (bias ? out : 0));
  };
  let embedding: number;
  if (c.modelType === 'gpt2') {
    embedding = V * D + c.maxPositions * D;
    total += embedding + 2 * D + c.numLayers * 4 * D;
    add('c_attn', 3 * D, D, true);
    add('attn.c_proj', D, D, true);
    add('c_fc', F, D, true);
    add('mlp.c_proj', D, F, true);
  } else {
    const q = c.numHeads * c.headDim, kv = c.numKvHeads * c.headDim;
    embedding = V * D * (c.tieWordEmbeddings ? 1 : 2);
    total += embedding + D + c.numLayers * 2 * D;
    add('q_proj', q, D, c.attentionBias);
    add('k_proj', kv, D, c.attentionBias);
    add('v_proj', kv, D, c.attentionBias);
    add('o_proj', D, q, c.attentionOutBias);
    add('gate_proj', F, D, c.mlpBias);
    add('up_proj', F, D, c.mlpBias);
    add('down_proj', D, F, c.mlpBias);
  }
  return { total, embedding, linear };
}

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
