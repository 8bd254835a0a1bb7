import * as fs from 'node:fs';
import * as path from 'node:path';
import { LorakitError } from '../../errors';
import { parameterCounts, readJsonFile, readModelConfig } from '../../io/config';
import { readSafetensorsHeader } from '../../io/safetensors';
import { readLoraConfig } from '../../adapters/adapter';
import { loraScale } from '../../lora/config';
import { trainingRecord } from '../../train/record';
import { command, print } from '../run';
import { jsonOption } from '../options';

/** A PEFT adapter folder described: its config's LoRA settings and what its safetensors file holds. */
export function describeAdapter(dir: string) {
  const configFile = path.join(dir, 'adapter_config.json');
  const c = readLoraConfig(configFile);
  const raw = readJsonFile('inspect', configFile, 'ERR_INVALID_ARG') as Record<string, unknown>;
  const tensors = readSafetensorsHeader(path.join(dir, 'adapter_model.safetensors')).tensors;
  let trainable = 0;
  const modules = new Set<string>(), dtypes = new Set<string>();
  for (const [name, t] of tensors) {
    trainable += t.shape.reduce((a, b) => a * b, 1);
    dtypes.add(t.dtype);
    const m = /^base_model\.model\.(.+)\.lora_[AB]\.weight$/.exec(name);
    if (m) modules.add(m[1]!);
  }
  const record = trainingRecord(dir);
  return {
    baseModel: typeof raw.base_model_name_or_path === 'string' ? raw.base_model_name_or_path : null,
    r: c.r, alpha: c.loraAlpha, rslora: c.useRslora, scale: loraScale(c.loraAlpha, c.r, c.useRslora), dropout: c.loraDropout,
    targetModules: c.targetModules, rankPattern: c.rankPattern, alphaPattern: c.alphaPattern,
    trainableParameters: trainable, tensors: tensors.size, modules: modules.size, dtypes: [...dtypes].sort(),
    trainedWith: record ? { method: record.method, record: record.file } : null,
  };
}

function printAdapter(a: ReturnType<typeof describeAdapter>): void {
  print(`LoRA adapter: r=${a.r}, alpha ${a.alpha}, ${a.rslora ? `rsLoRA (scale alpha/sqrt(r) = ${a.scale.toPrecision(4)})` : `scale alpha/r = ${a.scale.toPrecision(4)}`}, dropout ${a.dropout}`);
  if (Object.keys(a.rankPattern).length || Object.keys(a.alphaPattern).length)
    print(`  per-module overrides: rank ${JSON.stringify(a.rankPattern)}, alpha ${JSON.stringify(a.alphaPattern)}`);
  print(`base model: ${a.baseModel ?? 'not recorded (base_model_name_or_path is empty)'}`);
  print(`target modules: ${Array.isArray(a.targetModules) ? a.targetModules.join(', ') : a.targetModules}`);
  print(`trainable parameters: ${a.trainableParameters.toLocaleString('en-US')} in ${a.tensors} tensors (${a.modules} modules), ${a.dtypes.join(', ')}`);
  if (a.trainedWith) print(`trained with lorakit: ${a.trainedWith.method} (${a.trainedWith.record})`);
}

export const inspectCommand = command({
  usage: 'inspect <model-dir>',
  describe: 'Architecture, parameter count, dtype and the modules LoRA can target; or a PEFT adapter: base model, rank, alpha, targets, trainable parameters',
  options: (a) =>
    a
      .positional('model-dir', { type: 'string', demandOption: true, describe: 'a Hugging Face model folder (config.json + safetensors) or a PEFT adapter folder (adapter_config.json + adapter_model.safetensors)' })
      .option('json', jsonOption('print one JSON object (an adapter is under "adapter")'))
      .option('r', { type: 'number', default: 16, describe: 'rank for the LoRA parameter estimate' }),
  run: (argv) => {
    const dir = argv['model-dir'] as string;
    const isAdapter = fs.existsSync(path.join(dir, 'adapter_config.json'));
    const isModel = fs.existsSync(path.join(dir, 'config.json'));
    if (!isAdapter && !isModel)
      throw new LorakitError('ERR_IO', `inspect: '${dir}' holds neither config.json (a model folder) nor adapter_config.json (a PEFT adapter folder)`);
    const adapter = isAdapter ? describeAdapter(dir) : null;
    if (!isModel) {
      if (argv.json) return print(JSON.stringify({ adapter }));
      return printAdapter(adapter!);
    }
    const c = readModelConfig(dir);
    const counts = parameterCounts(c);
    const r = argv.r;
    const modules = [...counts.linear].map(([name, e]) => ({ name, count: e.count, shape: [e.out, e.in], loraParams: e.count * r * (e.out + e.in) }));
    const loraAll = modules.reduce((s, m) => s + m.loraParams, 0);
    const files = ['tokenizer.json', 'tokenizer_config.json', 'model.safetensors', 'model.safetensors.index.json', 'adapter_config.json', 'adapter_model.safetensors'].filter((f) => fs.existsSync(path.join(dir, f)));
    const info = {
      modelType: c.modelType, layers: c.numLayers, hidden: c.hiddenSize, heads: c.numHeads, kvHeads: c.numKvHeads, headDim: c.headDim,
      intermediate: c.intermediateSize, vocab: c.vocabSize, maxPositions: c.maxPositions, tiedEmbeddings: c.tieWordEmbeddings,
      dtype: c.dtype, parameters: counts.total, modules, loraRank: r, loraParamsAllLinear: loraAll, files, ...(adapter ? { adapter } : {}),
    };
    if (argv.json) return print(JSON.stringify(info));
    print(`${c.modelType}: ${c.numLayers} layers, hidden ${c.hiddenSize}, ${c.numHeads} heads (${c.numKvHeads} kv, head dim ${c.headDim}), MLP ${c.intermediateSize}, vocab ${c.vocabSize}, ${c.maxPositions} positions`);
    print(`parameters: ${counts.total.toLocaleString('en-US')} (${(counts.total / 1e6).toFixed(2)}M); saved as ${c.dtype ?? 'unspecified dtype'}; embeddings ${c.tieWordEmbeddings ? 'tied' : 'untied'}`);
    print(`LoRA target modules (target_modules names):`);
    for (const m of modules) print(`  ${m.name.padEnd(12)} x${String(m.count).padEnd(4)} [${m.shape.join(', ')}]   r=${r}: ${m.loraParams.toLocaleString('en-US')} params`);
    print(`all-linear at r=${r}: ${loraAll.toLocaleString('en-US')} trainable parameters (${((100 * loraAll) / counts.total).toFixed(3)}% of the model)`);
    print(`files: ${files.join(', ')}`);
    if (adapter) printAdapter(adapter);
  },
});
