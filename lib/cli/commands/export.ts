import { exportGguf } from '../../export';
import { command, print } from '../run';

export const exportCommand = command({
  usage: 'export',
  describe: 'Write a model (with an adapter merged) or an adapter alone as a GGUF file for llama.cpp, node-llama-cpp and Ollama',
  options: (a) =>
    a
      .option('model', { type: 'string', demandOption: true, describe: 'base model folder (config.json, safetensors, tokenizer.json)' })
      .option('adapter', { type: 'string', describe: 'PEFT adapter folder: merged into the model, or written alone with --format lora' })
      .option('out', { type: 'string', demandOption: true, describe: 'the .gguf file to write' })
      .option('dtype', { choices: ['f32', 'f16', 'bf16', 'q8_0'] as const, default: 'f32' as const, describe: 'storage of the 2-D weights (norms and biases stay f32)' })
      .option('format', { choices: ['model', 'lora'] as const, default: 'model' as const, describe: "'lora': the adapter alone, for llama.cpp's --lora" })
      .option('qlora', { type: 'boolean', describe: "the adapter was trained against the NF4 base: measure the merge error against that model [default: as the adapter's lorakit training record (run.json, trainer_state.json) says]" })
      .option('merge-into', { choices: ['original', 'nf4'] as const, describe: 'merge into the original weights (default) or into their NF4 quantization' }),
  run: (argv) => {
    const r = exportGguf({
      model: argv.model, adapter: argv.adapter, out: argv.out, dtype: argv.dtype, format: argv.format,
      qlora: argv.qlora, mergeInto: argv.mergeInto,
    });
    print(`wrote ${r.file}: ${r.architecture}, ${r.tensors} tensors, ${(r.bytes / 2 ** 20).toFixed(1)} MiB (${argv.format === 'lora' ? 'LoRA adapter' : argv.dtype})`);
    if (r.mergeError)
      print(`merge error of ${r.mergeError.mergedInto} against ${r.mergeError.reference} (float32 logits on a fixed random batch): max |Δlogit| ${r.mergeError.maxAbs.toExponential(3)}, relative ${r.mergeError.relative.toExponential(3)}`);
    if (r.weightError)
      print(`${argv.dtype} weight error against float32, over every 2-D weight: relative ${r.weightError.relative.toExponential(3)}, max |Δw| ${r.weightError.maxAbs.toExponential(3)}`);
    for (const n of r.notes) print(`note: ${n}`);
  },
});
