/**
 * Issue #22, the command line as people call it: every command's --help against the options its source
 * declares, train --config (JSON and YAML) and --resume, the shipped default job, sweep, lab and
 * merge --dtype bfloat16, each checked on the numbers of the files it writes.
 */
import { spawn } from 'node:child_process';
import * as fs from 'node:fs';
import * as path from 'node:path';
import yargs, { type Argv } from 'yargs';
import { main, unknownOptions } from '../lib/cli';
import { labCommand } from '../lib/cli/commands/lab';
import { mergeCommand } from '../lib/cli/commands/merge';
import { sweepCommand } from '../lib/cli/commands/sweep';
import { trainCommand } from '../lib/cli/commands/train';
import { ARMS, QUICK } from '../lib/lab';
import { TASKS } from '../lib/lab/world';
import { tempDirs } from './helpers/tmp';

const ROOT = path.resolve(__dirname, '..');
const CLI = path.join(ROOT, 'dist/cli/index.js');
const LLAMA = path.join(__dirname, 'fixtures/peft/tiny-llama');
const DEFAULT = path.join(ROOT, 'assets/default');

const tmp = tempDirs('lorakit-usage-');

beforeAll(() => {
  if (!fs.existsSync(CLI)) throw new Error('dist/ is missing: run `npm run build` (npm test does) first');
});

interface Ran { code: number | null; out: string; err: string }

/** Runs the CLI to its end (killed after `limitMs`); several may run at once. */
function cli(args: string[], opts: { cwd?: string; limitMs?: number } = {}): Promise<Ran> {
  const child = spawn(process.execPath, [CLI, ...args], { stdio: ['ignore', 'pipe', 'pipe'], cwd: opts.cwd });
  let out = '', err = '';
  child.stdout.on('data', (d: Buffer) => (out += d.toString()));
  child.stderr.on('data', (d: Buffer) => (err += d.toString()));
  const timer = setTimeout(() => child.kill('SIGKILL'), opts.limitMs ?? 60_000);
  return new Promise((resolve) =>
    child.on('close', (code) => {
      clearTimeout(timer);
      resolve({ code, out, err });
    }),
  );
}

/**
 * Runs one command in this process, through the yargs builder and handler \`lorakit <command>\` runs
 * (so that mutation testing sees the command's code), with its stdout, stderr and exit code.
 */
async function inProcess(add: (y: Argv) => Argv, args: string[]): Promise<Ran> {
  let out = '', err = '';
  const o = jest.spyOn(process.stdout, 'write').mockImplementation((x: string | Uint8Array) => ((out += String(x)), true));
  const e = jest.spyOn(process.stderr, 'write').mockImplementation((x: string | Uint8Array) => ((err += String(x)), true));
  const saved = process.exitCode;
  process.exitCode = undefined;
  try {
    await add(yargs(args)).strict().exitProcess(false).parseAsync();
    return { code: process.exitCode ?? 0, out, err };
  } finally {
    o.mockRestore();
    e.mockRestore();
    process.exitCode = saved;
  }
}

/**
 * main() in this process for an argv that ends in a usage error: the process's exit is caught, and the
 * code and the stderr written before it returned.
 */
function mainExit(argv: string[]): { code: number | null; err: string } {
  let err = '';
  let code: number | null = null;
  const e = jest.spyOn(process.stderr, 'write').mockImplementation((x: string | Uint8Array) => ((err += String(x)), true));
  const x = jest.spyOn(process, 'exit').mockImplementation(((c?: number) => {
    code = c ?? 0;
    throw new Error('exit');
  }) as never);
  const listeners = [process.stdout, process.stderr].map((st) => st.listeners('error'));
  try {
    main(argv);
  } catch {
    // the exit
  } finally {
    e.mockRestore();
    x.mockRestore();
    // main() listens for EPIPE on both streams: those listeners go with the call.
    [process.stdout, process.stderr].forEach((st, i) => {
      for (const l of st.listeners('error')) if (!listeners[i]!.includes(l)) st.removeListener('error', l as (...a: unknown[]) => void);
    });
  }
  return { code, err };
}

const readJsonl = (f: string) => fs.readFileSync(f, 'utf8').trim().split('\n').filter(Boolean).map((l) => JSON.parse(l));
const stepsOf = (dir: string) => readJsonl(path.join(dir, 'metrics.jsonl')).filter((m) => m.type === 'step');

/** A learnable task over the tiny Llama's vocabulary: cycles through 32 token ids. */
function sequences(dir: string, n = 24, len = 20): string {
  const f = path.join(dir, 'seq.jsonl');
  fs.writeFileSync(f, Array.from({ length: n }, (_, i) => JSON.stringify({ input_ids: Array.from({ length: len }, (_, j) => 20 + (((i % 4) * 8 + j) % 32)) })).join('\n') + '\n');
  return f;
}

/** Tensors of a safetensors file as raw bytes, with dtype and shape (any dtype). */
function rawTensors(file: string): Map<string, { dtype: string; shape: number[]; bytes: Buffer }> {
  const buf = fs.readFileSync(file);
  const n = Number(buf.readBigUInt64LE(0));
  const header = JSON.parse(buf.subarray(8, 8 + n).toString('utf8')) as Record<string, { dtype: string; shape: number[]; data_offsets: [number, number] }>;
  const out = new Map<string, { dtype: string; shape: number[]; bytes: Buffer }>();
  for (const [name, t] of Object.entries(header)) if (name !== '__metadata__') out.set(name, { dtype: t.dtype, shape: t.shape, bytes: buf.subarray(8 + n + t.data_offsets[0], 8 + n + t.data_offsets[1]) });
  return out;
}
const f32 = (b: Buffer) => new Float32Array(b.buffer.slice(b.byteOffset, b.byteOffset + b.byteLength));

// ---- float64 statistics, written out here -------------------------------------------------------------
const mean = (xs: number[]) => xs.reduce((s, x) => s + x, 0) / xs.length;
const sd = (xs: number[]) => Math.sqrt(xs.reduce((s, x) => s + (x - mean(xs)) ** 2, 0) / (xs.length - 1));
/** Student t's 97.5% quantile in closed form for 1 and 2 degrees of freedom (Cauchy; and (2p-1)/sqrt(2p(1-p))). */
const T975: Record<number, number> = { 1: Math.tan(Math.PI * (0.975 - 0.5)), 2: (2 * 0.975 - 1) / Math.sqrt(2 * 0.975 * 0.025) };
const ci95 = (xs: number[]) => (T975[xs.length - 1]! * sd(xs)) / Math.sqrt(xs.length);
/**
 * Two-sided p of Student t with ν degrees of freedom: with x = √ν·cot φ the tail beyond |t| is
 * ∝ ∫_0^φ1 sin^(ν-1) φ dφ, φ1 = atan(√ν/|t|), and the whole ∝ the same to π/2. φ = u^(1/ν) makes the
 * integrand (sin φ / φ)^(ν-1) / ν, smooth at 0, for Simpson's rule.
 */
function tTwoSided(t: number, nu: number): number {
  const integral = (phi1: number) => {
    const n = 2000, h = phi1 ** nu / n;
    let s = 0;
    for (let i = 0; i <= n; i++) {
      const phi = (i * h) ** (1 / nu);
      const g = phi === 0 ? 1 : (Math.sin(phi) / phi) ** (nu - 1);
      s += (i === 0 || i === n ? 1 : i % 2 ? 4 : 2) * g;
    }
    return (s * h) / 3 / nu;
  };
  return integral(Math.atan(Math.sqrt(nu) / Math.abs(t))) / integral(Math.PI / 2);
}
const close = (got: number, want: number, rel = 1e-9) => expect(Math.abs(got - want)).toBeLessThanOrEqual(rel * Math.max(1e-300, Math.abs(want)));

describe('--help and usage errors', () => {
  const index = fs.readFileSync(path.join(ROOT, 'lib/cli/index.ts'), 'utf8');
  // The command list and each command's options, read from the source that declares them.
  const commands = [...index.matchAll(/\['(\w+)', (\w+)Command\]/g)].map((m) => m[1]!);
  const declared = (name: string) => {
    const src = fs.readFileSync(path.join(ROOT, 'lib/cli/commands', `${name}.ts`), 'utf8');
    return {
      options: [...src.matchAll(/\.option\('([\w-]+)'/g)].map((m) => m[1]!),
      positionals: [...src.matchAll(/\.positional\('([\w-]+)'/g)].map((m) => m[1]!),
    };
  };

  test('the source declares twelve commands, each in its own file', () => {
    expect(commands.sort()).toEqual(fs.readdirSync(path.join(ROOT, 'lib/cli/commands')).map((f) => f.replace(/\.ts$/, '')).sort());
    expect(commands).toHaveLength(12);
  });

  test('every command: --help exits 0, names the command and lists every option it declares', async () => {
    const [top, ...each] = await Promise.all([cli(['--help']), ...commands.map((c) => cli([c, '--help']))]);
    expect(top.code).toBe(0);
    for (const c of commands) expect(top.out).toMatch(new RegExp(`^  lorakit ${c}\\b`, 'm'));
    commands.forEach((c, i) => {
      const r = each[i]!;
      expect(r.code).toBe(0);
      expect(r.err).toBe('');
      expect(r.out.split('\n')[0]).toMatch(new RegExp(`^lorakit ${c}\\b`));
      const { options, positionals } = declared(c);
      expect(options.length).toBeGreaterThan(0);
      for (const o of options) expect(r.out).toMatch(new RegExp(`(^|[ ,])${o.length === 1 ? '-' : '--'}${o}(?![\\w-])`, 'm'));
      for (const p of positionals) expect(r.out).toMatch(new RegExp(`^ +${p} `, 'm'));
      expect(r.out).toMatch(/-h, --help/);
    });
    // train's Hugging Face spellings are listed beside the options they mean.
    expect(each[commands.indexOf('train')]!.out).toMatch(/--lr, --learning_rate/);
  });

  test('an unknown option of any command, or an unknown command, is a usage error with exit code 2', async () => {
    // Each command through main() in this process (the process's exit is caught), then three as a user runs them.
    for (const c of commands) {
      const r = mainExit([c, '--no-such-option']);
      expect(r).toEqual({ code: 2, err: `lorakit ${c}: unknown option --no-such-option\nRun \`lorakit ${c} --help\` for usage.\n` });
    }
    // Several at once, each with its nearest option when one is close; = values and camelCase are read as names.
    expect(mainExit(['train', '--stpes=2', '--seqLen', '8', '--lrr', '1', '--zzzzzzzz'])).toEqual({
      code: 2, err: 'lorakit train: unknown option --stpes (did you mean --steps?); unknown option --lrr (did you mean --lr?); unknown option --zzzzzzzz\nRun `lorakit train --help` for usage.\n',
    });
    const [typo, none, flag] = await Promise.all([cli(['trian']), cli([]), cli(['eval', '--modle', LLAMA])]);
    expect(typo!.code).toBe(2);
    expect(typo!.err).toBe('lorakit: Did you mean train?\nRun `lorakit --help` for usage.\n');
    expect(none!.code).toBe(2);
    expect(none!.err).toBe('lorakit: Name a command; `lorakit --help` lists them.\nRun `lorakit --help` for usage.\n');
    expect(flag!.code).toBe(2);
    expect(flag!.out).toBe('');
    expect(flag!.err).toBe('lorakit eval: unknown option --modle (did you mean --model?)\nRun `lorakit eval --help` for usage.\n');
  });

  test('known options in every spelling pass the check: kebab, camelCase, --no-, aliases, and nothing after --', () => {
    expect(unknownOptions(['--seq-len', '8', '--seqLen=8', '--no-pack', '--learning_rate', '1', '-r', '4', '--', '--anything'], ['seqLen', 'pack', 'learning_rate', 'r'])).toEqual([]);
    expect(unknownOptions(['--no-', '--pack-', '--x', '-', '--'], ['pack'])).toEqual([
      { flag: '--no-', nearest: null }, { flag: '--pack-', nearest: '--pack' }, { flag: '--x', nearest: null },
    ]);
  });
});

describe('train --config and --resume', () => {
  const common = (data: string) => ({ model: LLAMA, data, steps: 4, batchSize: 2, seqLen: 16, lr: 0.01, r: 4, alpha: 8, dropout: 0.1, evalSplit: 0, seed: 7, progress: 'none' });

  test('a JSON and a YAML config of the same options give the same run; a flag given beside a config wins', async () => {
    const dir = tmp();
    const data = sequences(dir);
    const o = common(data);
    const json = path.join(dir, 'job.json'), yaml = path.join(dir, 'job.yaml');
    fs.writeFileSync(json, JSON.stringify({ ...o, out: path.join(dir, 'a') }));
    // The same options under the YAML file's other spellings (kebab-case, Hugging Face, PEFT).
    fs.writeFileSync(yaml, [`model: ${LLAMA}`, `data: ${data}`, 'max_steps: 4', 'per_device_train_batch_size: 2', 'seq-len: 16', 'learning_rate: 0.01',
      'lora_r: 4', 'lora_alpha: 8', 'lora_dropout: 0.1', 'eval-split: 0', 'seed: 7', 'progress: none', `output_dir: ${path.join(dir, 'b')}`, ''].join('\n'));
    const a = await inProcess(trainCommand, ['train', '--config', json]);
    const b = await inProcess(trainCommand, ['train', '--config', yaml]);
    const c = await inProcess(trainCommand, ['train', '--config', yaml, '--lr', '0.002', '--out', path.join(dir, 'c')]);
    for (const r of [a, b, c]) {
      expect(r.err).toBe('');
      expect(r.code).toBe(0);
    }
    const [sa, sb, sc] = ['a', 'b', 'c'].map((x) => stepsOf(path.join(dir, x)));
    expect(sa).toHaveLength(4);
    expect(sb.map((s) => [s.step, s.loss, s.lr, s.gradNorm])).toEqual(sa!.map((s) => [s.step, s.loss, s.lr, s.gradNorm]));
    const adapter = (x: string) => fs.readFileSync(path.join(dir, x, 'last', 'adapter_model.safetensors'));
    expect(adapter('b').equals(adapter('a'))).toBe(true);
    // Cosine decay over 4 steps without warmup: lr_k = peak * (1 + cos(pi (k-1) / 4)) / 2.
    const cosine = (peak: number) => [0, 1, 2, 3].map((k) => (peak * (1 + Math.cos((Math.PI * k) / 4))) / 2);
    sa!.forEach((s, k) => close(s.lr, cosine(0.01)[k]!, 1e-12));
    // --lr 0.002 replaced the file's 0.01 and nothing else: the first loss (before any update) is the same run's.
    sc!.forEach((s, k) => close(s.lr, cosine(0.002)[k]!, 1e-12));
    expect(sc![0].loss).toBe(sa![0].loss);
    expect(sc![1].loss).not.toBe(sa![1].loss);
    const cfg = JSON.parse(fs.readFileSync(path.join(dir, 'b', 'last', 'adapter_config.json'), 'utf8'));
    expect([cfg.r, cfg.lora_alpha, cfg.lora_dropout]).toEqual([4, 8, 0.1]);
  });

  test('--resume from a mid-run checkpoint ends on the same weights, bit for bit, and the same losses', async () => {
    const dir = tmp();
    const data = sequences(dir);
    const out = path.join(dir, 'run');
    const whole = await inProcess(trainCommand, ['train', '--model', LLAMA, '--data', data, '--steps', '6', '--batch-size', '2', '--seq-len', '16', '--lr', '0.01', '--dropout', '0.1',
      '--grad-accum', '2', '--save-every', '3', '--save-total-limit', '5', '--eval-split', '0', '--seed', '3', '--progress', 'none', '--out', out]);
    expect(whole.code).toBe(0);
    const finalBytes = fs.readFileSync(path.join(out, 'last', 'adapter_model.safetensors'));
    const wholeSteps = stepsOf(out).map((s) => [s.step, s.loss, s.gradNorm]);
    expect(wholeSteps).toHaveLength(6);
    // A run stopped after step 3 leaves what checkpoint-3 holds: continue from it.
    fs.rmSync(path.join(out, 'last'), { recursive: true });
    const resumed = await inProcess(trainCommand, ['train', '--resume', path.join(out, 'checkpoint-3'), '--progress', 'none']);
    expect(resumed.err).toBe('');
    expect(resumed.code).toBe(0);
    expect(resumed.out).toMatch(/trained 6 steps/);
    expect(fs.readFileSync(path.join(out, 'last', 'adapter_model.safetensors')).equals(finalBytes)).toBe(true);
    // The resumed steps 4..6 append the same losses and gradient norms the unbroken run logged.
    const after = stepsOf(out).map((s) => [s.step, s.loss, s.gradNorm]);
    expect(after.slice(-3)).toEqual(wholeSteps.slice(3));
  });
});

describe('the shipped job', () => {
  test('`lorakit train --steps 2` (npm start, shortened) writes an r=8 adapter of the shipped model and its metrics', async () => {
    const dir = tmp();
    const r = await cli(['train', '--steps', '2', '--progress', 'none'], { cwd: dir, limitMs: 300_000 });
    expect(r.err).toBe('');
    expect(r.code).toBe(0);
    const out = path.join(dir, 'lorakit-default-run');
    expect(r.out).toContain(`running the small job shipped with lorakit (${DEFAULT}) with --steps as given`);
    const config = JSON.parse(fs.readFileSync(path.join(DEFAULT, 'config.json'), 'utf8'));
    const adapterConfig = JSON.parse(fs.readFileSync(path.join(out, 'last', 'adapter_config.json'), 'utf8'));
    expect(adapterConfig).toMatchObject({ r: 8, lora_alpha: 16, use_rslora: false, peft_type: 'LORA' });
    expect([...adapterConfig.target_modules].sort()).toEqual(['down_proj', 'gate_proj', 'k_proj', 'o_proj', 'q_proj', 'up_proj', 'v_proj']);
    // Every linear of every layer, with A: r x in and B: out x r from the model's config.
    const h = config.hidden_size, kv = config.num_key_value_heads * config.head_dim, m = config.intermediate_size;
    const io: Record<string, [number, number]> = { q_proj: [h, h], k_proj: [h, kv], v_proj: [h, kv], o_proj: [h, h], gate_proj: [h, m], up_proj: [h, m], down_proj: [m, h] };
    const tensors = rawTensors(path.join(out, 'last', 'adapter_model.safetensors'));
    expect(tensors.size).toBe(config.num_hidden_layers * 7 * 2);
    for (const [name, t] of tensors) {
      const [, mod, ab] = /\.(\w+_proj)\.lora_([AB])\.weight$/.exec(name)!;
      const [fin, fout] = io[mod!]!;
      expect(t.shape).toEqual(ab === 'A' ? [8, fin] : [fout, 8]);
      expect(t.dtype).toBe('F32');
    }
    // Two steps of lr 2e-3 decaying by cosine with no warmup; evals before and after, on both shipped sets.
    const metrics = readJsonl(path.join(out, 'metrics.jsonl'));
    const steps = metrics.filter((x) => x.type === 'step');
    expect(steps.map((s) => s.step)).toEqual([1, 2]);
    close(steps[0].lr, 2e-3, 1e-12);
    close(steps[1].lr, 1e-3, 1e-12);
    const evals = metrics.filter((x) => x.type === 'eval');
    expect(evals.map((e) => [e.step, e.split])).toEqual([[0, 'eval'], [0, 'retain'], [2, 'eval'], [2, 'retain']]);
    for (const e of evals) close(e.perplexity, Math.exp(e.loss), 1e-12);
    const last = (split: string) => evals.filter((e) => e.split === split).at(-1);
    expect(r.out).toContain(`eval: loss ${evals[0].loss.toFixed(4)} before -> ${last('eval').loss.toFixed(4)} after`);
    // The adapter written is the one the run evaluated: eval loads it beside the base and finds the same loss.
    const check = await cli(['eval', '--model', DEFAULT, '--adapter', path.join(out, 'last'), '--data', path.join(DEFAULT, 'eval.jsonl'), '--json']);
    expect(check.code).toBe(0);
    const e = JSON.parse(check.out);
    expect(e.tokens).toBe(last('eval').tokens);
    close(e.loss, last('eval').loss, 1e-6);
  }, 330_000);
});

describe('sweep and lab summaries', () => {
  test('sweep: each configuration is the mean and t-interval of its runs, and the comparison is their Welch test', async () => {
    const dir = tmp();
    sequences(dir, 40);
    fs.renameSync(path.join(dir, 'seq.jsonl'), path.join(dir, 'train.jsonl'));
    const spec = path.join(dir, 'spec.json');
    fs.writeFileSync(spec, JSON.stringify({
      base: { model: LLAMA, data: 'train.jsonl', steps: 3, batchSize: 2, seqLen: 16, lr: 0.02, dropout: 0, evalSplit: 0.2, progress: 'none' },
      axes: { r: [2, 4] }, seeds: [1, 2], out: 'sweep-out',
    }));
    const r = await inProcess(sweepCommand, ['sweep', spec, '--json']);
    expect(r.code).toBe(0);
    const report = JSON.parse(r.out);
    expect(report).toMatchObject({ metric: 'heldout', ran: 4, skipped: 0 });
    expect(report.configs.map((c: { label: string }) => c.label)).toEqual(['r=2', 'r=4']);
    const finals: number[][] = [];
    for (const c of report.configs) {
      const results = [1, 2].map((s) => JSON.parse(fs.readFileSync(path.join(dir, 'sweep-out', 'runs', c.id, `seed-${s}`, 'result.json'), 'utf8')));
      // Each run's final held-out loss is the last held-out eval its metrics.jsonl logged.
      results.forEach((res, i) => {
        const evals = readJsonl(path.join(dir, 'sweep-out', 'runs', c.id, `seed-${i + 1}`, 'metrics.jsonl')).filter((m) => m.type === 'eval' && m.split === 'heldout');
        expect(res.final.heldout).toBe(evals.at(-1).loss);
        expect(res.start.heldout).toBe(evals[0].loss);
      });
      const xs = results.map((x) => x.final.heldout as number);
      finals.push(xs);
      expect(c.seeds).toEqual([1, 2]);
      expect(c.loss.n).toBe(2);
      close(c.loss.mean, mean(xs));
      close(c.loss.sd, sd(xs));
      close(c.loss.ci95, ci95(xs));
      const speed = results.map((x) => x.tokensPerSec as number);
      close(c.tokensPerSec.mean, mean(speed));
    }
    // r changes the run: the two configurations' losses differ.
    expect(finals[0]).not.toEqual(finals[1]);
    expect(report.comparisons).toHaveLength(1);
    const cmp = report.comparisons[0];
    const [a, b] = finals as [number[], number[]];
    const va = sd(a) ** 2 / 2, vb = sd(b) ** 2 / 2;
    const t = (mean(a) - mean(b)) / Math.sqrt(va + vb);
    const nu = (va + vb) ** 2 / (va ** 2 + vb ** 2);
    close(cmp.diff, mean(a) - mean(b));
    close(cmp.p, tTwoSided(t, nu), 1e-6);
    // Holm over a single pair leaves p as it is.
    close(cmp.pAdjusted, cmp.p);
    expect(cmp.insideNoise).toBe(cmp.pAdjusted >= 0.05);
    // `sweep report` gathers the same summary from the files.
    const again = await inProcess(sweepCommand, ['sweep', 'report', spec, '--json']);
    expect(again.code).toBe(0);
    const gathered = JSON.parse(again.out);
    expect(gathered.summary.configs.map((c: { loss: unknown }) => c.loss)).toEqual(report.configs.map((c: { loss: unknown }) => c.loss));
    expect(gathered.runs.map((x: { index: number; seed: number; result: { final: unknown } }) => [x.index, x.seed, x.result.final])).toEqual(
      [0, 1, 2, 3].map((i) => [i, [1, 2][i % 2], { heldout: finals[Math.floor(i / 2)]![i % 2] }]),
    );
  }, 300_000);

  test('lab --quick: the tables are the mean and t-interval of each arm\'s runs, and every run found is skipped', async () => {
    const out = tmp();
    // Results of every run, as a quick lab leaves them, with numbers chosen here.
    const seeds = [1, 2, 3];
    const value = (t: number, a: number, s: number, k: number) => 1 + 0.1 * t + 0.01 * a + 0.001 * s * s + k;
    TASKS.forEach((task, t) => ARMS.forEach((arm, a) => seeds.forEach((seed) => {
      const dir = path.join(out, 'runs', task, arm.id, `seed-${seed}`);
      fs.mkdirSync(dir, { recursive: true });
      fs.writeFileSync(path.join(dir, 'result.json'), JSON.stringify({
        task, arm: arm.id, seed, settings: QUICK, trainableParameters: 1, trainLoss: value(t, a, seed, 0), eval: { loss: value(t, a, seed, 1), exactMatch: (seed + a) / 16, tokens: 100 },
        retainLoss: value(t, a, seed, 2), forgetting: value(t, a, seed, -1) / 10, intruders: seed + a, mergeError: arm.method === 'full' ? null : { maxAbs: 1e-5, relative: value(t, a, seed, 0) * 1e-7 },
        trainSeconds: 10 * seed + a, measureSeconds: 1, peakHostBytes: 2 ** 20 * (seed + a), peakRssBytes: 2 ** 27,
      }));
    })));
    const text = await inProcess(labCommand, ['lab', '--quick', '--out', out]);
    expect(text.code).toBe(0);
    const report = JSON.parse(fs.readFileSync(path.join(out, 'lab.json'), 'utf8'));
    expect(report).toMatchObject({ quick: true, settings: QUICK, ran: 0, skipped: TASKS.length * ARMS.length * 3, seeds });
    TASKS.forEach((task, t) => {
      const tr = report.tasks[task];
      expect(tr.arms.map((x: { arm: string }) => x.arm)).toEqual(ARMS.map((x) => x.id));
      close(tr.quantizationTax.lossRise, tr.nf4Base.loss - tr.base.loss);
      close(tr.quantizationTax.exactMatchChange, tr.nf4Base.exactMatch - tr.base.exactMatch);
      ARMS.forEach((arm, a) => {
        const s = tr.arms[a];
        const check = (got: { n: number; mean: number; ci95: number }, xs: number[]) => {
          expect(got.n).toBe(3);
          close(got.mean, mean(xs));
          close(got.ci95, ci95(xs));
        };
        check(s.evalLoss, seeds.map((x) => value(t, a, x, 1)));
        check(s.exactMatch, seeds.map((x) => (x + a) / 16));
        check(s.forgetting, seeds.map((x) => value(t, a, x, -1) / 10));
        check(s.intruders, seeds.map((x) => x + a));
        check(s.trainSeconds, seeds.map((x) => 10 * x + a));
        check(s.peakHostBytes, seeds.map((x) => 2 ** 20 * (x + a)));
        if (arm.method === 'full') expect(s.mergeErrorRelative).toBeNull();
        else check(s.mergeErrorRelative, seeds.map((x) => value(t, a, x, 0) * 1e-7));
        expect(s.scale).toBe(arm.method === 'full' ? null : arm.rslora ? arm.alpha / Math.sqrt(arm.r) : arm.alpha / arm.r);
      });
    });
    // r=8 on every linear of the 4-layer shipped model (192 wide, kv 96, MLP 672): r x (in + out) per linear.
    const r8 = report.tasks[TASKS[0]!].arms.find((x: { arm: string }) => x.arm === 'r8');
    expect(r8.trainableParameters).toBe(4 * 8 * ((192 + 192) * 2 + (192 + 96) * 2 + (192 + 672) * 3));
    // The tables print those numbers (knowledge, arm r8: eval loss mean ± half-width to 3 decimals).
    const a8 = ARMS.findIndex((x) => x.id === 'r8');
    const xs = seeds.map((x) => value(0, a8, x, 1));
    expect(text.out).toMatch(new RegExp(`^r8 .* ${mean(xs).toFixed(3)} ± ${ci95(xs).toFixed(3)} `, 'm'));
    expect(text.out).toContain(`0 runs trained, ${TASKS.length * ARMS.length * 3} resumed from earlier results`);
  }, 300_000);
});

describe('merge --dtype bfloat16', () => {
  test('the bf16 checkpoint is the float32 merge rounded to nearest even, and that merge is W + (alpha/sqrt r) B A', async () => {
    const dir = tmp();
    const a = await inProcess(mergeCommand, ['merge', '--model', LLAMA, '--adapter', LLAMA, '--out', path.join(dir, 'f32')]);
    const b = await inProcess(mergeCommand, ['merge', '--model', LLAMA, '--adapter', LLAMA, '--out', path.join(dir, 'bf16'), '--dtype', 'bfloat16']);
    expect(a.code).toBe(0);
    expect(b.code).toBe(0);
    // What it says: the folders and dtype, and the error of the written checkpoint on the fixed random probe
    // (2 x 64 tokens: the fixture's whole context), which bf16 rounding makes larger than float32's.
    const said = (r: Ran, dtype: string) => {
      const lines = r.out.trim().split('\n');
      expect(lines).toHaveLength(2);
      expect(lines[0]).toBe(`merged tiny-llama into tiny-llama -> ${path.join(dir, dtype === 'float32' ? 'f32' : 'bf16')} (${dtype})`);
      const m = new RegExp(`^merge error of the written ${dtype} checkpoint on a fixed random batch of 2 x 64 tokens: max \\|Δlogit\\| (\\S+), relative (\\S+)$`).exec(lines[1]!)!;
      return { max: Number(m[1]), relative: Number(m[2]) };
    };
    const ea = said(a, 'float32'), eb = said(b, 'bfloat16');
    expect(ea.relative).toBeLessThan(1e-5);
    expect(eb.relative).toBeGreaterThan(10 * ea.relative);
    expect(eb.max).toBeGreaterThan(ea.max);
    const full = rawTensors(path.join(dir, 'f32', 'model.safetensors'));
    const half = rawTensors(path.join(dir, 'bf16', 'model.safetensors'));
    expect([...half.keys()].sort()).toEqual([...full.keys()].sort());
    let rounded = 0;
    for (const [name, t] of full) {
      const h = half.get(name)!;
      expect(t.dtype).toBe('F32');
      expect(h.shape).toEqual(t.shape);
      expect(h.dtype).toBe('BF16');
      const bits = new Uint32Array(f32(t.bytes).buffer);
      const got = new Uint16Array(h.bytes.buffer.slice(h.bytes.byteOffset, h.bytes.byteOffset + h.bytes.byteLength));
      expect(got.length).toBe(bits.length);
      for (let i = 0; i < bits.length; i++) {
        // Round to nearest, ties to even, on the bits (no NaN in a checkpoint).
        const u = bits[i]!, lower = u & 0xffff, upper = u >>> 16;
        const want = lower > 0x8000 || (lower === 0x8000 && upper & 1) ? (upper + 1) & 0xffff : upper;
        if (got[i] !== want) throw new Error(`${name}[${i}]: bf16 ${got[i]!.toString(16)}, want ${want.toString(16)} from f32 ${u.toString(16)}`);
      }
      rounded++;
    }
    // Every tensor is stored in bf16, as torch's model.to(bfloat16) writes it: 7 linears and 2 norms per layer,
    // the final norm, the embeddings and the (untied) head.
    expect(rounded).toBe(2 * 9 + 3);
    const config = JSON.parse(fs.readFileSync(path.join(dir, 'bf16', 'config.json'), 'utf8'));
    expect(config.dtype).toBe('bfloat16');
    // The float32 merge against W + s·B·A in float64, s = alpha / sqrt(r) (the fixture is rsLoRA).
    const base = rawTensors(path.join(LLAMA, 'model.safetensors'));
    const lora = rawTensors(path.join(LLAMA, 'adapter_model.safetensors'));
    const ac = JSON.parse(fs.readFileSync(path.join(LLAMA, 'adapter_config.json'), 'utf8'));
    const s = ac.lora_alpha / Math.sqrt(ac.r);
    let merged = 0;
    for (const [name, t] of base) {
      const w = f32(t.bytes), got = f32(full.get(name)!.bytes);
      const key = `base_model.model.${name.replace(/\.weight$/, '')}`;
      const A = lora.get(`${key}.lora_A.weight`), B = lora.get(`${key}.lora_B.weight`);
      if (!A) {
        expect(Buffer.from(got.buffer).equals(Buffer.from(w.buffer))).toBe(true);
        continue;
      }
      const [out, inn] = t.shape as [number, number];
      const a64 = f32(A.bytes), b64 = f32(B!.bytes);
      // The update the merge added, against s·B·A: Frobenius-relative, so a merge that added nothing (or the
      // wrong scale) fails however small the update is beside W.
      let num = 0, den = 0;
      for (let i = 0; i < out; i++)
        for (let j = 0; j < inn; j++) {
          let d = 0;
          for (let k = 0; k < ac.r; k++) d += b64[i * ac.r + k]! * a64[k * inn + j]!;
          num += (got[i * inn + j]! - w[i * inn + j]! - s * d) ** 2;
          den += (s * d) ** 2;
        }
      expect(den).toBeGreaterThan(0);
      expect(Math.sqrt(num / den)).toBeLessThan(1e-4);
      merged++;
    }
    expect(merged).toBe(2 * 7);
  });
});
