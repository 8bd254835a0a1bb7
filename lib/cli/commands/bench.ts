import { LorakitTypeError } from '../../errors';
import { readJsonFile } from '../../io/config';
import { MODEL_SHAPES } from '../../models/random';
import { backend } from '../../backend';
import { type Device } from '../../check';
import { benchTrain } from '../../train/bench';
import { type Method } from '../../train/trainer';
import { command, print } from '../run';
import { jsonOption } from '../options';

const ARCH_DEFAULT: Record<string, string> = { gpt2: 'gpt2-124m', llama: 'smollm-135m' };

export const benchCommand = command({
  usage: 'bench <what>',
  describe: 'Measure lorakit on this machine (bench train: training-step throughput)',
  options: (b) =>
    b
      .positional('what', { choices: ['train'] as const, describe: 'what to measure' })
      .option('arch', { choices: ['gpt2', 'llama'] as const, describe: 'architecture; picks the default shape (gpt2-124m or smollm-135m)' })
      .option('config', {
        type: 'string',
        describe: `a shape (${Object.keys(MODEL_SHAPES).join(', ')}) or a config.json file`,
      })
      .option('method', { choices: ['lora', 'qlora', 'full'] as const, default: 'lora' as const })
      .option('r', { type: 'number', default: 16, describe: 'LoRA rank (all-linear adapter)' })
      .option('batch-size', { type: 'number', default: 4 })
      .option('seq-len', { type: 'number', default: 128 })
      .option('steps', { type: 'number', default: 5, describe: 'measured steps' })
      .option('warmup-steps', { type: 'number', default: 1 })
      .option('dtype', { choices: ['float32', 'bfloat16'] as const, default: 'float32' as const, describe: 'frozen linear weights (lora)' })
      .option('device', { type: 'string', default: 'cpu', describe: 'cpu, cuda or cuda:N' })
      .option('json', jsonOption('print one JSON object')),
  run: async (argv) => {
    const given = argv.config ?? ARCH_DEFAULT[argv.arch ?? 'gpt2']!;
    let shape: string | Record<string, unknown> = given;
    if (!(given in MODEL_SHAPES)) {
      const raw = readJsonFile('bench train', given, 'ERR_CONFIG');
      if (raw === null || typeof raw !== 'object' || Array.isArray(raw))
        throw new LorakitTypeError('ERR_INVALID_ARG', `bench train: '${given}' must hold a config.json object`);
      shape = raw as Record<string, unknown>;
    }
    const type = String((typeof shape === 'string' ? MODEL_SHAPES[shape]! : shape).model_type);
    const family = type === 'gpt2' ? 'gpt2' : 'llama';
    if (argv.arch && argv.arch !== family)
      throw new LorakitTypeError('ERR_INVALID_ARG', `bench train: --arch ${argv.arch} but '${given}' is model_type ${type}`);
    const r = await benchTrain({
      shape, method: argv.method as Method, r: argv.r, batchSize: argv['batch-size'], seqLen: argv['seq-len'], steps: argv.steps,
      warmupSteps: argv['warmup-steps'], dtype: argv.dtype, device: argv.device as Device,
    });
    if (argv.json) {
      print(JSON.stringify({ ...r, backend: backend().active }));
      return;
    }
    const gib = (b: number) => (b / 2 ** 30).toFixed(2);
    print(`${r.shape} (${r.modelType}, ${(r.parameters / 1e6).toFixed(1)}M params), ${r.method}, ${r.trainable.toLocaleString('en-US')} trainable, on ${r.device}`);
    print(`batch ${r.batchSize} x ${r.seqLen}: ${Math.round(r.tokensPerSecond).toLocaleString('en-US')} tokens/s, ${r.stepMs.toFixed(1)} ms/step (median of ${r.steps})`);
    print(`peak memory ${gib(r.peakBytes)} GiB (${r.peakOf === 'gpu-allocator' ? "lorakit's GPU allocator" : 'process resident set'}); loss ${r.losses.map((l) => l.toFixed(3)).join(' ')}`);
  },
  errorPrefix: 'lorakit ',
});
