import { LorakitTypeError } from '../../errors';
import { readModelConfig } from '../../io/config';
import { ASSUMPTIONS, assumedLlama, gpuMemory, parseMemory, parseParams, plan, USABLE_SHARE } from '../../sweep/plan';
import { command, print } from '../run';
import { jsonOption } from '../options';
import { kebab } from '../../suggest';

const size = (b: number) => (b >= 2 ** 30 ? `${(b / 2 ** 30).toFixed(2)} GiB` : `${(b / 2 ** 20).toFixed(2)} MiB`);

export const planCommand = command({
  usage: 'plan',
  describe: 'Estimate the memory of full fine-tuning, LoRA and QLoRA of a model, whether each fits a GPU, and what batch and sequence length do',
  options: (a) =>
    a
      .option('model', { type: 'string', describe: 'a Hugging Face model folder (its config.json gives the shape)' })
      .option('params', { type: 'string', describe: 'a model size like 7B, without a folder: a Llama-like shape is assumed' })
      .option('batch-size', { type: 'number', default: 8, describe: 'sequences per micro-batch' })
      .option('seq-len', { type: 'number', default: 2048, describe: 'tokens per sequence' })
      .option('r', { type: 'number', default: 16, describe: 'LoRA rank, adapters on every linear layer' })
      .option('gradient-checkpointing', { type: 'boolean', default: false, describe: "keep only each layer's input, recomputing the rest in the backward pass" })
      .option('memory', { type: 'string', describe: 'GPU memory, like 24GB' })
      .option('gpu', { type: 'string', describe: 'a GPU by name: RTX 3090/4070/4090, A100 40GB/80GB, H100, H200, MI300X' })
      .option('json', jsonOption('print one JSON object')),
  run: (argv) => {
    if ((argv.model === undefined) === (argv.params === undefined)) throw new LorakitTypeError('ERR_INVALID_ARG', 'give --model or --params (one of them)');
    if (argv.memory !== undefined && argv.gpu !== undefined) throw new LorakitTypeError('ERR_INVALID_ARG', 'give --memory or --gpu, not both');
    for (const k of ['batchSize', 'seqLen', 'r'] as const)
      if (!Number.isInteger(argv[k]) || argv[k] < 1) throw new LorakitTypeError('ERR_INVALID_ARG', `--${kebab(k)} must be an integer >= 1, got ${argv[k]}`);
    const { config, assumption } = argv.model !== undefined ? { config: readModelConfig(argv.model), assumption: null } : assumedLlama(parseParams(argv.params!));
    const gpu = argv.gpu === undefined ? null : gpuMemory(argv.gpu);
    const memoryBytes = gpu?.bytes ?? (argv.memory === undefined ? null : parseMemory(argv.memory));
    const p = plan(config, { batchSize: argv.batchSize, seqLen: argv.seqLen, r: argv.r, memoryBytes, checkpointing: argv.gradientCheckpointing });
    if (argv.json) return print(JSON.stringify({ ...p, assumption, assumptions: ASSUMPTIONS, gpu: gpu?.name ?? null }, null, 2));
    if (assumption) print(assumption);
    print(`${config.modelType}: ${p.params.toLocaleString('en-US')} parameters, ${config.numLayers} layers, hidden ${config.hiddenSize}; LoRA r=${p.r} on every linear layer: ${p.loraParams.toLocaleString('en-US')} trainable`);
    print(`activations for batch ${p.batchSize} x ${p.seqLen} tokens (bf16, memory-efficient attention, ${p.checkpointing ? 'gradient checkpointing' : 'no gradient checkpointing'}): ${size(p.activationBytes)}`);
    for (const m of p.methods)
      print(`  ${m.method.padEnd(5)}  weights+grads+optimizer ${size(m.stateBytes).padStart(12)}  total ${size(m.totalBytes).padStart(12)}${m.fits === null ? '' : m.fits ? '  fits' : '  does not fit'}`);
    if (p.usableBytes !== null) print(`fit: within ${Math.round(USABLE_SHARE * 100)}% of ${gpu ? `${gpu.name}'s ` : ''}${size(p.memoryBytes!)} (${size(p.usableBytes)}); the rest is CUDA context and allocator slack`);
    if (p.fits) {
      print(`what fits in ${size(p.usableBytes!)} (r=${p.r}):`);
      const n = (x: number) => x.toLocaleString('en-US');
      for (const f of p.fits) {
        const how = `  ${f.method.padEnd(5)}  ${f.checkpointing ? 'with gradient checkpointing   ' : 'without gradient checkpointing'}  `;
        if (f.maxSeqLenBatch1 === 0) print(`${how}nothing: weights+grads+optimizer alone exceed the memory`);
        else if (f.maxBatchSize >= 1)
          print(`${how}batch up to ${n(f.maxBatchSize)} at ${n(p.seqLen)} tokens; at batch ${p.batchSize}, sequences up to ${n(f.maxSeqLen)} tokens`);
        else print(`${how}not one sequence of ${n(p.seqLen)} tokens; at batch 1, sequences up to ${n(f.maxSeqLenBatch1)} tokens${f.maxSeqLenBatch1 === config.maxPositions ? " (the model's limit)" : ''}`);
      }
    }
    print(`assumptions: bytes per parameter: ${ASSUMPTIONS.bytesPerParameter}.`);
    print(`  activations: ${ASSUMPTIONS.activations}; usable: ${ASSUMPTIONS.usableShare}.`);
  },
});
