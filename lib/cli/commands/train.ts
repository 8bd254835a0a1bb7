import type { Argv } from 'yargs';
import * as path from 'node:path';
import { PACKAGE_ROOT } from '../../native/binding';
import { train, type TrainOptions } from '../../train/trainer';
import { print, runCommandAsync } from '../run';

/** The job `lorakit train` runs with no arguments: everything it needs ships in the package. */
export const DEFAULT_DIR = path.join(PACKAGE_ROOT, 'assets', 'default');

export function defaultJob(out: string): TrainOptions {
  return {
    model: DEFAULT_DIR,
    data: path.join(DEFAULT_DIR, 'train.jsonl'),
    evalData: path.join(DEFAULT_DIR, 'eval.jsonl'),
    retainData: path.join(DEFAULT_DIR, 'retain.txt'),
    method: 'lora',
    r: 8,
    alpha: 16,
    dropout: 0,
    lr: 2e-3,
    steps: 200,
    batchSize: 8,
    seqLen: 128,
    evalEvery: 50,
    pack: true,
    out,
  };
}

export function trainCommand(y: Argv): Argv {
  return y.command(
    'train',
    'Fine-tune a model (LoRA, QLoRA or full) on your data; with no options, a small job shipped with lorakit',
    (a) =>
      a
        .option('model', { type: 'string', describe: 'model folder (config.json, safetensors, tokenizer.json)' })
        .option('data', { type: 'string', describe: 'training data: .jsonl (text, prompt/completion, messages, input_ids) or .txt' })
        .option('method', { choices: ['lora', 'qlora', 'full'] as const, describe: 'what to train [default: lora]' })
        .option('r', { type: 'number', describe: 'LoRA rank [default: 16]' })
        .option('alpha', { type: 'number', describe: 'LoRA alpha [default: 2r]' })
        .option('target', { type: 'string', describe: 'all-linear | attention | mlp | q_proj,v_proj,... [default: all-linear]' })
        .option('rslora', { type: 'boolean', describe: 'scale by alpha/sqrt(r) (rsLoRA)' })
        .option('init', { choices: ['true', 'false', 'gaussian', 'pissa'] as const, describe: 'LoRA initialisation (PEFT init_lora_weights) [default: true]' })
        .option('dropout', { type: 'number', describe: 'LoRA dropout [default: 0.05]' })
        .option('lr', { type: 'number', describe: 'peak learning rate [default: 2e-4, full: 2e-5]' })
        .option('steps', { type: 'number', describe: 'optimizer steps' })
        .option('epochs', { type: 'number', describe: 'passes over the data (instead of --steps) [default: 1]' })
        .option('batch-size', { type: 'number', describe: 'sequences per micro-batch [default: 8]' })
        .option('grad-accum', { type: 'number', describe: 'micro-batches per optimizer step [default: 1]' })
        .option('seq-len', { type: 'number', describe: 'tokens per sequence [default: 256]' })
        .option('warmup', { type: 'number', describe: 'warmup steps [default: 3% of the run]' })
        .option('schedule', { choices: ['cosine', 'linear', 'constant'] as const, describe: 'learning-rate decay [default: cosine]' })
        .option('weight-decay', { type: 'number', describe: 'decoupled weight decay on matrices [default: 0, full: 0.01]' })
        .option('max-grad-norm', { type: 'number', describe: 'gradient clipping [default: 1.0]' })
        .option('pack', { type: 'boolean', describe: 'pack examples into full rows, attention kept per example [default: true]' })
        .option('eval-split', { type: 'number', describe: 'share of the data held out for evaluation when no --eval-data [default: 0.05]' })
        .option('eval-data', { type: 'string', describe: 'evaluation data (same formats)' })
        .option('retain-data', { type: 'string', describe: "text from the base model's distribution: its loss rise is forgetting" })
        .option('eval-every', { type: 'number', describe: 'evaluate every N steps [default: 5 times per run]' })
        .option('save-every', { type: 'number', describe: 'checkpoint every N steps [default: at the end]' })
        .option('out', { type: 'string', describe: 'output folder [default: lorakit-out]' })
        .option('device', { type: 'string', describe: 'where to train: cpu, cuda or cuda:N [default: cpu]' })
        .option('seed', { type: 'number', describe: 'seed for data order, initialisation and dropout [default: 42]' })
        .option('resume', { type: 'string', describe: 'a checkpoint folder to continue from' })
        .option('progress', { choices: ['auto', 'bar', 'lines', 'none'] as const, describe: 'progress output on stderr [default: auto]' })
        .config('config', 'a JSON file holding any of these options (camelCase or kebab-case keys)'),
    async (argv) => {
      const pick = <K extends keyof TrainOptions>(k: K, v: unknown) => (v === undefined ? {} : ({ [k]: v } as Pick<TrainOptions, K>));
      let options: TrainOptions;
      if (argv.resume) {
        options = { model: '', data: '', resume: argv.resume, ...pick('steps', argv.steps), ...pick('progress', argv.progress) };
      } else if (argv.model === undefined && argv.data === undefined) {
        options = { ...defaultJob(argv.out ?? 'lorakit-default-run'), ...pick('progress', argv.progress), ...pick('steps', argv.steps) };
        print(`lorakit train: no --model/--data given, so running the small job shipped with lorakit (${DEFAULT_DIR})`);
      } else if (argv.model === undefined || argv.data === undefined) {
        process.stderr.write(`lorakit train: give both --model and --data (or neither, for the job shipped with lorakit)\n`);
        process.exitCode = 2;
        return;
      } else {
        options = {
          model: argv.model, data: argv.data,
          ...pick('method', argv.method), ...pick('r', argv.r), ...pick('alpha', argv.alpha),
          ...pick('target', argv.target), ...pick('rslora', argv.rslora),
          ...pick('init', argv.init === undefined ? undefined : argv.init === 'true' ? true : argv.init === 'false' ? false : argv.init), ...pick('dropout', argv.dropout), ...pick('lr', argv.lr),
          ...pick('steps', argv.steps), ...pick('epochs', argv.epochs), ...pick('batchSize', argv.batchSize), ...pick('gradAccum', argv.gradAccum),
          ...pick('seqLen', argv.seqLen), ...pick('warmup', argv.warmup), ...pick('schedule', argv.schedule), ...pick('weightDecay', argv.weightDecay),
          ...pick('maxGradNorm', argv.maxGradNorm), ...pick('pack', argv.pack), ...pick('evalSplit', argv.evalSplit), ...pick('evalData', argv.evalData),
          ...pick('retainData', argv.retainData), ...pick('evalEvery', argv.evalEvery), ...pick('saveEvery', argv.saveEvery), ...pick('out', argv.out),
          ...pick('device', argv.device), ...pick('seed', argv.seed), ...pick('progress', argv.progress),
        };
      }
      await runCommandAsync('lorakit ', async () => {
        const r = await train(options).done;
        const first = new Map<string, number>(), last = new Map<string, number>();
        for (const e of r.evals) {
          if (!first.has(e.split)) first.set(e.split, e.loss);
          last.set(e.split, e.loss);
        }
        for (const [split, before] of first) print(`${split}: loss ${before.toFixed(4)} before -> ${last.get(split)!.toFixed(4)} after`);
        print(`${r.stopped ? 'stopped early; ' : ''}trained ${r.steps} steps; weights in ${r.lastDir}${r.bestDir ? `, best in ${r.bestDir}` : ''}; metrics in ${r.metricsFile}`);
        if (r.stopped) process.exitCode = 130;
      });
    },
  );
}
