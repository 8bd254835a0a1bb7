import * as path from 'node:path';
import { PACKAGE_ROOT } from '../../native/binding';
import { LorakitError } from '../../errors';
import { readTrainConfig, TRAIN_ALIASES, TRAIN_OPTION_KEYS } from '../../train/config';
import { DEFAULT_SAVE_EVERY, train, type TrainOptions } from '../../train/trainer';
import { command, print } from '../run';
import { kebab } from '../../suggest';

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

/** What a training option is called on the command line (yargs' kebab-case of the camelCase key). */
const flag = (k: string) => `--${kebab(k)}`;

/** The options of the argv that the user gave (yargs leaves the others undefined: none has a default). */
function given(argv: Record<string, unknown>): Record<string, unknown> {
  const out: Record<string, unknown> = {};
  for (const k of TRAIN_OPTION_KEYS) if (argv[k] !== undefined) out[k] = argv[k];
  if (out.init === 'true') out.init = true;
  else if (out.init === 'false') out.init = false;
  return out;
}

// What --resume takes beside the checkpoint: a longer step budget and how progress is shown.
const ON_RESUME = ['resume', 'steps', 'progress'];

/** The Hugging Face names of the training options (TRAIN_ALIASES), as yargs aliases of their flags. */
function hfAliases(): Record<string, string[]> {
  const out: Record<string, string[]> = {};
  for (const [hf, key] of Object.entries(TRAIN_ALIASES)) (out[kebab(key)] ??= []).push(hf);
  return out;
}

export const trainCommand = command({
  usage: 'train',
  describe: 'Fine-tune a model (LoRA, QLoRA or full) on your data; with no --model/--data, the small job shipped with lorakit (options given apply to it)',
  options: (a) =>
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
      .option('save-every', { type: 'number', describe: `checkpoint every N steps into <out>/checkpoint-N, and at the end; 0: at the end only [default: ${DEFAULT_SAVE_EVERY}]` })
      .option('save-total-limit', { type: 'number', describe: "how many of this run's checkpoints to keep, newest first [default: 2]" })
      .option('out', { type: 'string', describe: 'output folder [default: lorakit-out; lorakit-default-run for the shipped job]' })
      .option('overwrite', { type: 'boolean', describe: "replace the run --out already holds: its checkpoints, last/, best/, metrics.jsonl and run.json are removed, other files kept" })
      .option('device', { type: 'string', describe: 'where to train: cpu, cuda or cuda:N [default: cpu]' })
      .option('seed', { type: 'number', describe: 'seed for data order, initialisation and dropout [default: 42]' })
      .option('resume', { type: 'string', describe: 'a checkpoint folder to continue from (with --steps to extend the run)' })
      .option('progress', { choices: ['auto', 'bar', 'lines', 'none'] as const, describe: 'progress output on stderr [default: auto]' })
      .option('config', { type: 'string', describe: 'a .json, .yaml or .yml file of these options (camelCase, kebab-case or the Hugging Face names); options given on the command line win' })
      .alias(hfAliases())
      .epilog('Ctrl-C stops after the current step and saves a checkpoint; a second Ctrl-C exits at once (code 130), naming the last checkpoint.'),
  run: async (argv) => {
    const fromFile = typeof argv.config === 'string' ? readTrainConfig(argv.config) : {};
    const cli = given(argv as Record<string, unknown>);
    const job: Record<string, unknown> = { ...fromFile, ...cli };
    let options: TrainOptions;
    if (job.resume !== undefined) {
      // A resumed run continues with its saved options; anything else given would be ignored.
      const extra = Object.keys(job).filter((k) => !ON_RESUME.includes(k));
      if (extra.length)
        throw new LorakitError('ERR_INVALID_ARG', `train: --resume continues a run with the options it was started with; only --steps and --progress may change, but ${extra.map(flag).join(', ')} ${extra.length === 1 ? 'was' : 'were'} given`);
      options = { model: '', data: '', ...job } as TrainOptions;
    } else if (job.model === undefined && job.data === undefined) {
      // No model and no data: the shipped job, with every option given applied to it.
      // The shipped job's own folder is replaced run after run (`npm start` twice); a folder the user
      // names is not.
      options = { ...defaultJob('lorakit-default-run'), overwrite: job.out === undefined, ...job } as TrainOptions;
      const changed = Object.keys(job).filter((k) => k !== 'progress');
      print(`lorakit train: no --model/--data given, so running the small job shipped with lorakit (${DEFAULT_DIR})${changed.length ? ` with ${changed.map(flag).join(', ')} as given` : ''}`);
    } else if (job.model === undefined || job.data === undefined) {
      throw new LorakitError('ERR_INVALID_ARG', `train: give both --model and --data (or neither, for the job shipped with lorakit); only ${job.model === undefined ? '--data' : '--model'} was given`);
    } else {
      options = job as unknown as TrainOptions;
    }
    const r = await train(options).done;
    const last = new Map<string, number>();
    for (const e of r.evals) last.set(e.split, e.loss);
    // "before" is the loss before training began, which a resumed run reads from its checkpoint.
    for (const [split, after] of last) print(`${split}: loss ${r.baselines[split]?.toFixed(4) ?? '?'} before -> ${after.toFixed(4)} after`);
    print(`${r.stopped ? 'stopped early; ' : ''}trained ${r.steps} steps; weights in ${r.lastDir}${r.bestDir ? `, best in ${r.bestDir}` : ''}; metrics in ${r.metricsFile}`);
    if (r.stopped) process.exitCode = 130;
  },
  errorPrefix: 'lorakit ',
});
