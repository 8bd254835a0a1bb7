/**
 * Issue #22, the trainer's smaller modules, in-process (the CLI tests run dist/, which mutation testing
 * never changes): evaluation against a cross-entropy written out here in float64, the progress output
 * character by character, option names and --config files, and the training record beside an adapter.
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import { evaluate, evaluateAsync } from '../lib/train/evaluate';
import { Progress, type StepInfo } from '../lib/train/progress';
import { nearestTrainOption, readTrainConfig, toTrainOptions, trainOptionKey } from '../lib/train/config';
import { trainingRecord } from '../lib/train/record';
import { checkpointRunId, prepareOut, removeStaleTemporaries, runCheckpoints } from '../lib/train/outdir';
import { loadOptimizer, readState, saveCheckpoint, saveWeights, tmpFolderName, writeFolderAtomically, type TrainerState } from '../lib/train/checkpoint';
import { AdamW, gradNorm } from '../lib/train/adamw';
import { resolveOptions, train } from '../lib/train/trainer';
import { writeSafetensors } from '../lib/io/safetensors';
import { spawnSync } from 'node:child_process';
import { loadModel } from '../lib/models';
import { loadAdapter } from '../lib/adapters/adapter';
import { tensor, zeros } from '../lib/tensor/tensor';
import { type Example } from '../lib/data/example';
import { tempDirs } from './helpers/tmp';

const LLAMA = path.join(__dirname, 'fixtures/peft/tiny-llama');

const tmp = tempDirs('lorakit-trainmut-');

describe('evaluate against a float64 cross-entropy', () => {
  const model = loadModel(LLAMA);
  afterAll(() => model.dispose());
  const V = model.config.vocabSize;

  /** Sum of -log softmax(logits[t])[label[t+1]] over the counted positions of one sequence, and their number. */
  function ceSum(ids: number[], labels: number[]): { sum: number; n: number } {
    using x = tensor(BigInt64Array.from(ids, BigInt), [1, ids.length]);
    const logits = model.forward(x, { returnLogits: true }).logits!;
    const z = logits.toFloat32Array();
    logits.dispose();
    let sum = 0, n = 0;
    for (let t = 0; t + 1 < ids.length; t++) {
      const y = labels[t + 1]!;
      if (y === -100) continue;
      let max = -Infinity;
      for (let k = 0; k < V; k++) max = Math.max(max, z[t * V + k]!);
      let s = 0;
      for (let k = 0; k < V; k++) s += Math.exp(z[t * V + k]! - max);
      sum += max + Math.log(s) - z[t * V + y]!;
      n++;
    }
    return { sum, n };
  }

  const seq = (n: number, a: number) => Array.from({ length: n }, (_, j) => 5 + ((a + j * 7) % 300));
  // A plain example, one whose prompt is masked, a one-token example (nothing to predict), and one past
  // the model's 64 positions (read as pieces of 64 and 16, the second not predicting its first token).
  const examples: Example[] = [
    { inputIds: seq(9, 1), labels: seq(9, 1) },
    { inputIds: seq(12, 2), labels: [...Array(5).fill(-100), ...seq(12, 2).slice(5)] },
    { inputIds: [7], labels: [7] },
    { inputIds: seq(80, 3), labels: seq(80, 3) },
  ];

  test('loss is the token-weighted mean over every example; perplexity its exp; tokens and examples counted', async () => {
    let sum = 0, n = 0;
    for (const ex of examples.slice(0, 3)) {
      const r = ceSum(ex.inputIds, ex.labels);
      sum += r.sum;
      n += r.n;
    }
    const long = examples[3]!;
    for (const [a, b] of [[0, 64], [64, 80]] as const) {
      const r = ceSum(long.inputIds.slice(a, b), long.labels.slice(a, b));
      sum += r.sum;
      n += r.n;
    }
    expect(n).toBe(8 + 7 + 0 + 63 + 15);
    const want = sum / n;
    const r = evaluate(model, examples);
    expect(r.tokens).toBe(n);
    expect(r.examples).toBe(4);
    expect(Math.abs(r.loss - want)).toBeLessThan(1e-5 * want);
    expect(Math.abs(r.perplexity - Math.exp(want))).toBeLessThan(1e-4 * Math.exp(want));
    const a = await evaluateAsync(model, examples);
    expect(a).toEqual(r);
  });

  test('nothing to predict: loss and perplexity NaN, 0 tokens', async () => {
    const r = evaluate(model, [{ inputIds: [4, 5, 6], labels: [-100, -100, -100] }]);
    expect(r.tokens).toBe(0);
    expect(r.loss).toBeNaN();
    expect(r.perplexity).toBeNaN();
    expect(r.examples).toBe(1);
  });

  test('evaluateAsync stops as soon as stop() says so, yielding to the event loop between examples', async () => {
    let asked = 0;
    expect(await evaluateAsync(model, examples, () => ++asked > 2)).toBeNull();
    expect(asked).toBe(3);
    // A stop that never comes evaluates everything, and the event loop gets a turn before each example:
    // a ticker that runs once per turn has moved on each time stop() is asked. (Counted in turns, not
    // timer milliseconds, which a fast machine can finish two examples inside.)
    let ticks = 0, running = true;
    const tick = () => {
      ticks++;
      if (running) setImmediate(tick);
    };
    setImmediate(tick);
    const seen: number[] = [];
    const r = await evaluateAsync(model, examples.slice(0, 2), () => (seen.push(ticks), false));
    running = false;
    expect(r!.tokens).toBe(15);
    expect(seen).toHaveLength(2);
    expect(seen[0]).toBeGreaterThan(0);
    expect(seen[1]).toBeGreaterThan(seen[0]!);
  });

  test('a token id outside the vocabulary is refused naming the example and the vocabulary size', async () => {
    const bad: Example[] = [examples[0]!, { inputIds: [3, V, 4], labels: [3, V, 4] }];
    expect(() => evaluate(model, bad)).toThrow(`evaluate: example 2 has token id ${V}, outside the model's vocabulary of ${V}`);
    await expect(evaluateAsync(model, bad)).rejects.toThrow(`example 2 has token id ${V}`);
    // The largest id in the vocabulary is fine.
    expect(evaluate(model, [{ inputIds: [3, V - 1, 4], labels: [3, V - 1, 4] }]).tokens).toBe(2);
  });
});

describe('progress output', () => {
  const sink = (isTTY: boolean) => {
    const s = { text: '', isTTY, write: (t: string) => ((s.text += t), true) };
    return s;
  };
  const info = (o: Partial<StepInfo>): StepInfo => ({ step: 1, total: 10, stepsThisRun: 1, loss: 2.345678, lr: 1.5e-4, tokensPerSec: 99.6, elapsedSec: 3, ...o });

  test('plain lines: the first and last step and every total/50-th, with loss, lr, loss tok/s and ETA', () => {
    const s = sink(false);
    const p = new Progress('auto', s as unknown as NodeJS.WriteStream);
    for (let step = 1; step <= 120; step++) p.step(info({ step, total: 120, stepsThisRun: step, elapsedSec: step * 0.5 }));
    const lines = s.text.split('\n').filter(Boolean);
    // Every floor(120/50) = 2 steps, and step 1.
    expect(lines.map((l) => Number(/^step (\d+)\//.exec(l)![1]))).toEqual([1, ...Array.from({ length: 60 }, (_, i) => 2 * (i + 1))]);
    // ETA: (120 - 1) steps left at 0.5 s each = 59.5 s, shown rounded as 1:00.
    expect(lines[0]).toBe('step 1/120  loss 2.3457  lr 1.50e-4  100 loss tok/s  ETA 1:00');
    expect(lines.at(-1)).toBe('step 120/120  loss 2.3457  lr 1.50e-4  100 loss tok/s  ETA 0:00');
    // A run shorter than 50 steps prints every step; the last one even when off the period.
    const t = sink(false);
    const q = new Progress('lines', t as unknown as NodeJS.WriteStream);
    for (let step = 1; step <= 3; step++) q.step(info({ step, total: 3 }));
    expect(t.text.split('\n').filter(Boolean)).toHaveLength(3);
    const u = sink(false);
    const w = new Progress('lines', u as unknown as NodeJS.WriteStream);
    for (let step = 1; step <= 101; step++) w.step(info({ step, total: 101 }));
    expect(u.text.split('\n').filter(Boolean).map((l) => Number(/^step (\d+)\//.exec(l)![1]))).toEqual([1, ...Array.from({ length: 50 }, (_, i) => 2 * (i + 1)), 101]);
  });

  test('ETA clock: m:ss under an hour, h:mm:ss past it, --:-- when unknown', () => {
    const eta = (o: Partial<StepInfo>) => {
      const s = sink(false);
      new Progress('lines', s as unknown as NodeJS.WriteStream).step(info({ step: 1, ...o }));
      return /ETA (.*)\n$/.exec(s.text)![1];
    };
    // (total - step) · elapsed / stepsThisRun
    expect(eta({ total: 11, elapsedSec: 6.04, stepsThisRun: 1 })).toBe('1:00');
    expect(eta({ total: 2, elapsedSec: 59.4, stepsThisRun: 1 })).toBe('0:59');
    expect(eta({ total: 3, elapsedSec: 1830.6, stepsThisRun: 1 })).toBe('1:01:01');
    expect(eta({ total: 2, elapsedSec: 3600 * 10 + 9, stepsThisRun: 1 })).toBe('10:00:09');
    expect(eta({ total: 5, elapsedSec: 3599.4, stepsThisRun: 4 })).toBe('59:59');
    expect(eta({ total: 5, elapsedSec: 10, stepsThisRun: 0 })).toBe('0:40');
    expect(eta({ total: 2, elapsedSec: Infinity })).toBe('--:--');
    expect(eta({ total: 2, elapsedSec: NaN })).toBe('--:--');
  });

  test('a bar on a terminal: redrawn in place, a message on its own line, a newline at the end', () => {
    const s = sink(true);
    const p = new Progress('auto', s as unknown as NodeJS.WriteStream);
    p.step(info({ step: 5, total: 12, loss: 1, lr: 2e-5, tokensPerSec: 10.4, elapsedSec: 5, stepsThisRun: 5 }));
    // 24 · 5/12 = 10 marks.
    expect(s.text).toBe(`\r[${'#'.repeat(10)}${'.'.repeat(14)}] step 5/12  loss 1.0000  lr 2.00e-5  10 loss tok/s  ETA 0:07\x1b[K`);
    s.text = '';
    p.line('eval');
    expect(s.text).toBe('\neval\n');
    s.text = '';
    p.line('again');
    expect(s.text).toBe('again\n');
    p.step(info({ step: 12, total: 12 }));
    expect(s.text).toContain(`[${'#'.repeat(24)}]`);
    s.text = '';
    p.end();
    expect(s.text).toBe('\n');
    s.text = '';
    p.end();
    p.line('after');
    expect(s.text).toBe('after\n');
    // A zero total draws an empty bar rather than dividing by zero.
    const z = sink(true);
    new Progress('bar', z as unknown as NodeJS.WriteStream).step(info({ step: 0, total: 0 }));
    expect(z.text).toContain(`[${'.'.repeat(24)}]`);
  });

  test("'none' writes nothing; 'lines' on a terminal writes lines; end() without a bar writes nothing", () => {
    const s = sink(true);
    const p = new Progress('none', s as unknown as NodeJS.WriteStream);
    p.step(info({}));
    p.line('x');
    p.end();
    expect(s.text).toBe('');
    const t = sink(true);
    const q = new Progress('lines', t as unknown as NodeJS.WriteStream);
    q.step(info({}));
    q.end();
    expect(t.text).toBe('step 1/10  loss 2.3457  lr 1.50e-4  100 loss tok/s  ETA 0:27\n');
  });
});

describe('training option names and --config files', () => {
  test('camelCase, kebab-case and the other projects\' names (snake or kebab) map onto options; others are null', () => {
    expect(trainOptionKey('batchSize')).toBe('batchSize');
    expect(trainOptionKey('batch-size')).toBe('batchSize');
    expect(trainOptionKey('save-total-limit')).toBe('saveTotalLimit');
    expect(trainOptionKey('learning_rate')).toBe('lr');
    expect(trainOptionKey('learning-rate')).toBe('lr');
    expect(trainOptionKey('gradient-accumulation-steps')).toBe('gradAccum');
    expect(trainOptionKey('num_train_epochs')).toBe('epochs');
    expect(trainOptionKey('batch_size')).toBeNull();
    expect(trainOptionKey('Batch-Size')).toBeNull();
    // Names of Object's own properties are no option (they once came back as functions).
    for (const k of ['toString', 'constructor', '__proto__', 'has-own-property']) expect(trainOptionKey(k)).toBeNull();
    expect(() => toTrainOptions({ constructor: 1 }, 'cfg')).toThrow("cfg: 'constructor' is not a training option");
    expect(trainOptionKey('')).toBeNull();
  });

  test('a near miss is named as the kebab-case option or alias; a far one gets no suggestion', () => {
    expect(nearestTrainOption('batchSzie')).toBe("; did you mean 'batch-size'?");
    expect(nearestTrainOption('learning_rat')).toBe("; did you mean 'learning_rate'?");
    expect(nearestTrainOption('saveTotalLimt')).toBe("; did you mean 'save-total-limit'?");
    expect(nearestTrainOption('zzzzzzzzzzzz')).toBe('');
  });

  test('toTrainOptions renames keys, and refuses unknown keys and two names for one option', () => {
    expect(toTrainOptions({ learning_rate: 0.1, 'batch-size': 2, steps: 3 }, 'here')).toEqual({ lr: 0.1, batchSize: 2, steps: 3 });
    expect(() => toTrainOptions({ lerning_rate: 1 }, 'cfg.yaml')).toThrow("cfg.yaml: 'lerning_rate' is not a training option; did you mean 'learning_rate'? (`lorakit train --help` lists them)");
    expect(() => toTrainOptions({ lr: 1, learning_rate: 2 }, 'cfg')).toThrow("cfg: 'lr' and 'learning_rate' both set 'lr'; give one");
    try {
      toTrainOptions({ nope: 1 }, 'x');
      throw new Error('no error');
    } catch (e) {
      expect((e as { code?: string }).code).toBe('ERR_CONFIG');
    }
  });

  test('readTrainConfig: JSON and YAML (any case of extension) with any names; everything else an error naming the file', () => {
    const d = tmp();
    const f = (name: string, text: string) => {
      const p = path.join(d, name);
      fs.writeFileSync(p, text);
      return p;
    };
    expect(readTrainConfig(f('a.json', '{"learning_rate": 0.5, "lora-r": 4}'))).toEqual({ lr: 0.5, r: 4 });
    expect(readTrainConfig(f('b.YML', 'max_steps: 7\nschedule: linear\n'))).toEqual({ steps: 7, schedule: 'linear' });
    expect(readTrainConfig(f('c.yaml', 'warmup-steps: 2\n'))).toEqual({ warmup: 2 });
    const js = f('c.js', 'module.exports = {}');
    expect(() => readTrainConfig(js)).toThrow(`train --config: '${js}' has extension '.js'; a config file is .json, .yaml or .yml`);
    const none = f('noext', '{}');
    expect(() => readTrainConfig(none)).toThrow(`has extension '(none)'`);
    expect(() => readTrainConfig(path.join(d, 'missing.json'))).toThrow(/missing\.json/);
    const big = f('big.json', `{"lr": 1, "pad": "${'x'.repeat(1_000_001)}"}`);
    expect(() => readTrainConfig(big)).toThrow(`train --config: '${big}' is over 1 MB; a config file is a short list of options`);
    // Exactly 1 MB is allowed (and then refused only for its content).
    const edge = f('edge.json', `{"steps": 1}${' '.repeat(1_000_000 - 12)}`);
    expect(fs.statSync(edge).size).toBe(1_000_000);
    expect(readTrainConfig(edge)).toEqual({ steps: 1 });
    const badJson = f('bad.json', '{"lr": }');
    expect(() => readTrainConfig(badJson)).toThrow(new RegExp(`^train --config: '${badJson.replace(/[.\\/]/g, '\\$&')}' is not valid JSON: `));
    const badYaml = f('bad.yaml', 'a: [1\nb: 2\n');
    expect(() => readTrainConfig(badYaml)).toThrow(/is not valid YAML: [^\n]+$/);
    expect(() => readTrainConfig(f('n.json', 'null'))).toThrow(/must hold an object of options \(key: value\), found null$/);
    expect(() => readTrainConfig(f('l.yaml', '- 1\n- 2\n'))).toThrow(/found a list$/);
    expect(() => readTrainConfig(f('s.json', '3'))).toThrow(/found number$/);
    const unknown = f('u.yaml', 'lerning_rate: 1\n');
    expect(() => readTrainConfig(unknown)).toThrow(`train --config '${unknown}': 'lerning_rate' is not a training option`);
    // YAML anchors and aliases are read, up to a bound on their expansion.
    expect(readTrainConfig(f('anchor.yaml', 'lr: &x 0.25\nalpha: *x\n'))).toEqual({ lr: 0.25, alpha: 0.25 });
    const bomb = ['a: &a [x, x, x, x, x, x, x, x, x, x]', ...Array.from({ length: 8 }, (_, i) => `${String.fromCharCode(98 + i)}: &${String.fromCharCode(98 + i)} [${Array(10).fill(`*${String.fromCharCode(97 + i)}`).join(', ')}]`)].join('\n');
    expect(() => readTrainConfig(f('bomb.yaml', bomb))).toThrow(/is not valid YAML/);
  });
});

describe('the training record beside an adapter', () => {
  test("a checkpoint's trainer_state.json; last/ and best/ the run's run.json; other folders none", () => {
    const run = tmp();
    for (const sub of ['checkpoint-3', 'last', 'best', 'other']) fs.mkdirSync(path.join(run, sub));
    fs.writeFileSync(path.join(run, 'checkpoint-3', 'trainer_state.json'), JSON.stringify({ options: { method: 'qlora' } }));
    fs.writeFileSync(path.join(run, 'run.json'), JSON.stringify({ options: { method: 'full' } }));
    expect(trainingRecord(path.join(run, 'checkpoint-3'))).toEqual({ method: 'qlora', file: path.join(run, 'checkpoint-3', 'trainer_state.json') });
    expect(trainingRecord(path.join(run, 'last'))).toEqual({ method: 'full', file: path.join(run, 'last', '..', 'run.json') });
    expect(trainingRecord(path.join(run, 'best') + path.sep)).toEqual({ method: 'full', file: path.join(run, 'best', '..', 'run.json') });
    expect(trainingRecord(path.join(run, 'other'))).toBeNull();
    // A last/ with its own trainer_state.json: that comes first.
    fs.writeFileSync(path.join(run, 'last', 'trainer_state.json'), JSON.stringify({ options: { method: 'lora' } }));
    expect(trainingRecord(path.join(run, 'last'))!.method).toBe('lora');
    // A record without a method string is no record; the next candidate is read.
    fs.writeFileSync(path.join(run, 'last', 'trainer_state.json'), JSON.stringify({ options: { method: 3 } }));
    expect(trainingRecord(path.join(run, 'last'))!.method).toBe('full');
    fs.writeFileSync(path.join(run, 'run.json'), JSON.stringify({ options: null }));
    expect(trainingRecord(path.join(run, 'last'))).toBeNull();
    fs.writeFileSync(path.join(run, 'run.json'), JSON.stringify([1]));
    expect(trainingRecord(path.join(run, 'best'))).toBeNull();
    fs.writeFileSync(path.join(run, 'run.json'), '{oops');
    expect(() => trainingRecord(path.join(run, 'best'))).toThrow(new RegExp(`^inspect: '${path.join(run, 'run.json').replace(/[.\\/]/g, '\\$&')}' `));
  });
});

describe('the output folder of a run', () => {
  const ckpt = (out: string, step: number, runId?: unknown) => {
    const d = path.join(out, `checkpoint-${step}`);
    fs.mkdirSync(d, { recursive: true });
    fs.writeFileSync(path.join(d, 'trainer_state.json'), JSON.stringify(runId === undefined ? { step } : { step, runId }));
  };

  test("a checkpoint's run id, and this run's checkpoints in step order (numeric, not by name)", () => {
    const out = tmp();
    for (const s of [100, 9, 20]) ckpt(out, s, 'run-a');
    ckpt(out, 50, 'run-b');
    ckpt(out, 60);
    ckpt(out, 70, 7);
    fs.mkdirSync(path.join(out, 'checkpoint-80'));
    fs.mkdirSync(path.join(out, 'checkpoint-x'));
    fs.writeFileSync(path.join(out, 'checkpoint-80', 'trainer_state.json'), '{broken');
    fs.mkdirSync(path.join(out, 'my-checkpoint-5'));
    expect(runCheckpoints('t', out, 'run-a')).toEqual([9, 20, 100]);
    expect(runCheckpoints('t', out, 'run-b')).toEqual([50]);
    expect(checkpointRunId(path.join(out, 'checkpoint-9'))).toBe('run-a');
    for (const s of [60, 70, 80]) expect(checkpointRunId(path.join(out, `checkpoint-${s}`))).toBeNull();
    expect(checkpointRunId(path.join(out, 'nowhere'))).toBeNull();
    expect(() => runCheckpoints('t', path.join(out, 'nowhere'), 'run-a')).toThrow(`t: cannot list '${path.join(out, 'nowhere')}'`);
  });

  test("stale temporaries of dead writers are removed (sorted in the note), live writers' and other names kept", () => {
    const out = tmp();
    const dead = Number(spawnSync(process.execPath, ['-e', 'process.stdout.write(String(process.pid))'], { encoding: 'utf8' }).stdout);
    const stale = [`.best.tmp-${dead}`, `.checkpoint-12.tmp-${dead}`, `run.json.tmp-${dead}`, `.last.tmp-${dead}`];
    const keep = [`.last.tmp-${process.pid}`, `.best.tmp-${process.ppid}`, `.other.tmp-${dead}`, `checkpoint-3.tmp-${dead}`, `.checkpoint-x.tmp-${dead}`, `x.last.tmp-${dead}`, `.last.tmp-${dead}x`];
    for (const f of [...stale, ...keep]) fs.mkdirSync(path.join(out, f));
    expect(removeStaleTemporaries('t', out)).toEqual([`removed 4 temporary file(s) left by an interrupted run in ${out}: ${[...stale].sort().join(', ')}`]);
    expect(fs.readdirSync(out).sort()).toEqual([...keep].sort());
    expect(removeStaleTemporaries('t', out)).toEqual([]);
  });

  test('prepareOut: a new folder is made; a folder holding a run is refused or, with overwrite, cleared of that run only', () => {
    const root = tmp();
    const model = path.join(root, 'model');
    fs.mkdirSync(model);
    const fresh = path.join(root, 'a', 'b');
    expect(prepareOut('train', fresh, false, { model, data: null })).toEqual([]);
    expect(fs.statSync(fresh).isDirectory()).toBe(true);
    expect(() => prepareOut('train', path.join(model, 'out'), false, { model, data: null })).toThrow(
      `train: --out '${path.join(model, 'out')}' is inside the model folder '${model}'; choose an output folder apart from the model`,
    );
    expect(() => prepareOut('train', model, false, { model, data: null })).toThrow(/is inside the model folder/);
    // Data inside --out is fine as long as nothing removed holds it.
    const out = path.join(root, 'out');
    fs.mkdirSync(out);
    const data = path.join(out, 'data.jsonl');
    fs.writeFileSync(data, '{}');
    expect(prepareOut('train', out, false, { model, data })).toEqual([]);
    for (const s of [10, 9]) ckpt(out, s, 'r');
    fs.mkdirSync(path.join(out, 'checkpoint-11'));
    for (const f of ['metrics.jsonl', 'run.json']) fs.writeFileSync(path.join(out, f), '');
    fs.mkdirSync(path.join(out, 'best'));
    expect(() => prepareOut('train', out, false, { model, data })).toThrow(
      `train: --out '${out}' already holds a run (checkpoint-9, checkpoint-10, best, metrics.jsonl, run.json); give --overwrite to replace it ` +
        `(its checkpoints, last/, best/, metrics.jsonl and run.json are removed; other files are kept), --resume ${path.join(out, 'checkpoint-10')} to continue it, or another --out`,
    );
    // Only run files and no checkpoint: no --resume to suggest.
    const only = path.join(root, 'only');
    fs.mkdirSync(only);
    fs.writeFileSync(path.join(only, 'metrics.jsonl'), '');
    expect(() => prepareOut('train', only, false, { model, data: null })).toThrow(/already holds a run \(metrics\.jsonl\); give --overwrite to replace it \(.*are kept\), or another --out$/);
    // An input inside what would be removed: refused, nothing removed.
    const evalData = path.join(out, 'best', 'eval.jsonl');
    fs.writeFileSync(evalData, '{}');
    expect(() => prepareOut('train', out, true, { model, data, 'eval data': evalData })).toThrow(
      `train: --overwrite would remove '${path.join(out, 'best')}', which holds the eval data '${evalData}' this run reads; choose another --out`,
    );
    expect(fs.existsSync(path.join(out, 'checkpoint-9'))).toBe(true);
    fs.rmSync(evalData);
    expect(prepareOut('train', out, true, { model, data, 'eval data': null })).toEqual([
      `--overwrite: removed the earlier run in ${out} (checkpoint-9, checkpoint-10, best, metrics.jsonl, run.json); other files there are kept`,
    ]);
    expect(fs.readdirSync(out).sort()).toEqual(['checkpoint-11', 'data.jsonl']);
  });
});

describe('checkpoints on disk', () => {
  const state = (o: Partial<TrainerState> = {}): TrainerState => ({ version: 1, step: 3, totalSteps: 9, microBatches: 6, bestEvalLoss: null, options: { method: 'full' }, ...o });

  test('moments and step round-trip through a checkpoint, by parameter name', () => {
    const dir = path.join(tmp(), 'checkpoint-3');
    using model = loadModel(LLAMA);
    model.requireFullGrad();
    const ps = model.parameters().slice(0, 2);
    const opt = new AdamW(ps.map((p) => p.param), { lr: 1e-3 });
    const grads = ps.map((p, i) => tensor(Float32Array.from({ length: p.param.numel }, (_, k) => Math.sin(k + i)), p.param.shape));
    opt.step(grads);
    opt.step(grads);
    saveCheckpoint(dir, model, opt, ps.map((p) => p.name), state(), LLAMA);
    expect(fs.readdirSync(path.dirname(dir))).toEqual(['checkpoint-3']);
    expect(readState(dir)).toEqual(state());
    const back = new AdamW(ps.map((p) => zeros(p.param.shape)), { lr: 1e-3 });
    loadOptimizer(dir, back, ps.map((p) => p.name));
    expect(back.stepCount).toBe(2);
    ps.forEach((_, i) => {
      expect(back.state(i).expAvg.toFloat32Array()).toEqual(opt.state(i).expAvg.toFloat32Array());
      expect(back.state(i).expAvgSq.toFloat32Array()).toEqual(opt.state(i).expAvgSq.toFloat32Array());
    });
    // Moments saved under other names: refused, naming the first missing one.
    expect(() => loadOptimizer(dir, back, ['x', 'y'])).toThrow(`resume: '${dir}/optimizer.safetensors' has no moments for 'x': the checkpoint is for other trainable parameters`);
    // A full checkpoint carries the model's config and generation config.
    for (const f of ['config.json', 'generation_config.json', 'model.safetensors']) expect(fs.existsSync(path.join(dir, f))).toBe(true);
    opt.dispose();
    back.dispose();
    grads.forEach((g) => g.dispose());
  });

  test('an optimizer file without a valid step, and trainer states that are not version-1 states, are refused', () => {
    const dir = tmp();
    const opt = new AdamW([zeros([2])]);
    for (const step of ['-1', '1.5', 'x']) {
      writeSafetensors(path.join(dir, 'optimizer.safetensors'), { 'p.exp_avg': zeros([2]), 'p.exp_avg_sq': zeros([2]) }, { step });
      expect(() => loadOptimizer(dir, opt, ['p'])).toThrow(`resume: '${dir}/optimizer.safetensors' has no valid step in its metadata`);
    }
    writeSafetensors(path.join(dir, 'optimizer.safetensors'), { 'p.exp_avg': zeros([2]), 'p.exp_avg_sq': zeros([2]) }, { step: '0' });
    loadOptimizer(dir, opt, ['p']);
    expect(opt.stepCount).toBe(0);
    opt.dispose();
    expect(() => readState(dir)).toThrow(`resume: '${dir}' is not a lorakit checkpoint (it has no trainer_state.json)`);
    const file = path.join(dir, 'trainer_state.json');
    for (const bad of [[], { ...state(), version: 2 }, { ...state(), step: '3' }, { ...state(), microBatches: null }, { ...state(), options: 'x' }]) {
      fs.writeFileSync(file, JSON.stringify(bad));
      expect(() => readState(dir)).toThrow(`resume: '${file}' is not a version-1 trainer state`);
    }
  });

  test('a folder is written whole or not at all', () => {
    const root = tmp();
    const dir = path.join(root, 'last');
    expect(tmpFolderName(dir)).toBe(path.join(root, `.last.tmp-${process.pid}`));
    writeFolderAtomically(dir, (t) => {
      fs.mkdirSync(t);
      fs.writeFileSync(path.join(t, 'a'), '1');
    });
    // A failing writer leaves the old folder and no temporary one, and the error names the folder.
    expect(() =>
      writeFolderAtomically(dir, (t) => {
        fs.mkdirSync(t);
        fs.writeFileSync(path.join(t, 'b'), '2');
        fs.readFileSync(path.join(t, 'missing'));
      }),
    ).toThrow(`train: cannot write '${dir}'`);
    expect(fs.readdirSync(root)).toEqual(['last']);
    expect(fs.readdirSync(dir)).toEqual(['a']);
    // A leftover temporary folder is replaced; the old folder is replaced whole.
    fs.mkdirSync(tmpFolderName(dir));
    fs.writeFileSync(path.join(tmpFolderName(dir), 'stale'), '');
    writeFolderAtomically(dir, (t) => {
      fs.mkdirSync(t);
      fs.writeFileSync(path.join(t, 'c'), '3');
    });
    expect(fs.readdirSync(dir)).toEqual(['c']);
    expect(fs.readdirSync(root)).toEqual(['last']);
  });

  test('saved adapter weights carry the tokenizer files the base has, and not its generation config', () => {
    const base = tmp();
    for (const f of fs.readdirSync(LLAMA)) fs.copyFileSync(path.join(LLAMA, f), path.join(base, f));
    fs.writeFileSync(path.join(base, 'tokenizer_config.json'), '{"x": 1}');
    fs.writeFileSync(path.join(base, 'merges.txt'), 'a b');
    using model = loadModel(base);
    loadAdapter(model, LLAMA);
    const out = path.join(tmp(), 'w');
    saveWeights(model, out, 'lora', base);
    expect(fs.readdirSync(out).sort()).toEqual(['adapter_config.json', 'adapter_model.safetensors', 'merges.txt', 'tokenizer_config.json']);
    expect(JSON.parse(fs.readFileSync(path.join(out, 'adapter_config.json'), 'utf8')).base_model_name_or_path).toBe(path.resolve(base));
    const full = path.join(tmp(), 'f');
    saveWeights(model, full, 'full', base);
    expect(fs.readdirSync(full).sort()).toEqual(['config.json', 'generation_config.json', 'merges.txt', 'model.safetensors', 'tokenizer_config.json']);
    expect(JSON.parse(fs.readFileSync(path.join(full, 'config.json'), 'utf8'))).toEqual(JSON.parse(fs.readFileSync(path.join(base, 'config.json'), 'utf8')));
  });
});

describe("AdamW's step options and edges", () => {
  test('a step with an lr override, a gradient scale and clipping equals the float64 formulas (clip of the scaled gradients)', () => {
    const n = 50;
    const p0 = Float32Array.from({ length: n }, (_, i) => Math.cos(i) * 0.5);
    const g = Float32Array.from({ length: n }, (_, i) => Math.sin(3 * i + 1));
    const p = tensor(p0, [5, 10]);
    const opt = new AdamW([{ params: [p], weightDecay: 0.2 }], { lr: 0.5, betas: [0.8, 0.9], eps: 1e-3 });
    using gt = tensor(g, [5, 10]);
    let sq = 0;
    for (const x of g) sq += (0.25 * x) ** 2;
    const norm = Math.sqrt(sq);
    const max = norm / 2;
    const res = opt.step([gt], { lr: 0.01, gradScale: 0.25, maxGradNorm: max });
    const coef = max / (norm + 1e-6);
    expect(Math.abs(res.gradNorm! - norm)).toBeLessThan(1e-6 * norm);
    expect(Math.abs(res.clipScale - coef)).toBeLessThan(1e-6);
    const got = p.toFloat32Array();
    for (let i = 0; i < n; i++) {
      const gi = g[i]! * 0.25 * coef;
      const m = 0.2 * gi, v = 0.1 * gi * gi;
      const want = p0[i]! * (1 - 0.01 * 0.2) - (0.01 * (m / 0.2)) / (Math.sqrt(v / 0.1) + 1e-3);
      expect(Math.abs(got[i]! - want)).toBeLessThan(1e-7);
    }
    expect(opt.stepCount).toBe(1);
    // No clipping asked: no norm, scale 1; the group's lr when no override.
    const before = p.toFloat32Array();
    const r2 = opt.step([gt]);
    expect(r2).toEqual({ clipScale: 1 });
    expect(opt.stepCount).toBe(2);
    const moved = p.toFloat32Array().reduce((w, x, i) => Math.max(w, Math.abs(x - before[i]!)), 0);
    // Step 2 at lr 0.5: each element moves by about 0.5 (far more than the 0.01 of step 1).
    expect(moved).toBeGreaterThan(0.2);
    opt.dispose();
  });

  test('hyperparameters are checked, each error naming the group and the value', () => {
    const p = zeros([2]);
    expect(() => new AdamW([p], { betas: [0.9] as never })).toThrow("AdamW: 'betas' must be [beta1, beta2], got");
    expect(() => new AdamW([p], { betas: 0.9 as never })).toThrow("AdamW: 'betas' must be [beta1, beta2], got");
    expect(() => new AdamW([{ params: [p], betas: [0.9, 0.99, 0.5] as never }])).toThrow("AdamW: 'groups[0].betas' must be [beta1, beta2]");
    expect(() => new AdamW([p], { betas: [-0.1, 0.9] })).toThrow("AdamW: 'betas[0]' must be >= 0, got -0.1");
    expect(new AdamW([p], { betas: [0, 0.5] }).groups[0]!.betas).toEqual([0, 0.5]);
    expect(() => new AdamW([p], { eps: -1 })).toThrow("AdamW: 'eps' must be >= 0, got -1");
    expect(() => new AdamW([p], { weightDecay: -1 })).toThrow("AdamW: 'weightDecay' must be >= 0, got -1");
    expect(() => new AdamW([{ params: [p], lr: -2 }])).toThrow("AdamW: 'groups[0].lr' must be >= 0, got -2");
    expect(() => new AdamW([{ params: [p], eps: -2 }])).toThrow("AdamW: 'groups[0].eps' must be >= 0");
    expect(() => new AdamW([{ params: [p], weightDecay: -2 }])).toThrow("AdamW: 'groups[0].weightDecay' must be >= 0");
    expect(new AdamW([p], {}).groups).toEqual([{ lr: 1e-3, betas: [0.9, 0.999], eps: 1e-8, weightDecay: 1e-2 }]);
    expect(new AdamW([{ params: [p] }, { params: [zeros([1])], eps: 0 }], { lr: 0, weightDecay: 0 }).groups).toEqual([
      { lr: 0, betas: [0.9, 0.999], eps: 1e-8, weightDecay: 0 },
      { lr: 0, betas: [0.9, 0.999], eps: 0, weightDecay: 0 },
    ]);
    expect(() => new AdamW('x' as never)).toThrow('AdamW: expected a non-empty array of tensors or parameter groups, got');
    expect(() => new AdamW([{ params: [p] }, null] as never)).toThrow('AdamW: groups[1] must be { params: Tensor[], ... }, got');
    expect(() => new AdamW([{ params: [p] }, 3] as never)).toThrow('AdamW: groups[1] must be { params: Tensor[], ... }');
    expect(() => new AdamW([{ params: [p] }, { params: 'x' }] as never)).toThrow('AdamW: groups[1] must be { params: Tensor[], ... }');
    expect(() => new AdamW([{ params: [p] }, { params: [zeros([1]), p] }])).toThrow('AdamW: groups[1].params[1] appears twice');
  });

  test('step and loadState refuse bad options and shapes; state() names its range; dispose is idempotent', () => {
    const a = zeros([2]), b = zeros([3]);
    const opt = new AdamW([a, b]);
    expect(opt.params).toEqual([a, b]);
    const g = [zeros([2]), zeros([3])];
    expect(() => opt.step(g, { lr: -1 })).toThrow("AdamW.step: 'lr' must be >= 0, got -1");
    expect(() => opt.step(g, { gradScale: -1 })).toThrow("AdamW.step: 'gradScale' must be >= 0, got -1");
    expect(() => opt.step(g, { maxGradNorm: -1 })).toThrow("AdamW.step: 'maxGradNorm' must be >= 0, got -1");
    expect(() => opt.step(g, 5 as never)).toThrow('AdamW.step: options must be an object');
    expect(() => opt.step('x' as never)).toThrow("AdamW.step: expected 2 gradients (one per parameter), got 'x'");
    expect(() => opt.step([g[0]!])).toThrow('AdamW.step: expected 2 gradients (one per parameter), got 1');
    expect(() => opt.step([g[0]!, zeros([4])])).toThrow('AdamW.step: grads[1] has shape [4], its parameter [3]');
    expect(opt.stepCount).toBe(0);
    opt.step(g, { lr: 0, gradScale: 0, maxGradNorm: 0 });
    expect(opt.stepCount).toBe(1);
    expect(() => opt.state(2)).toThrow('AdamW.state: index 2 is out of range (0..1)');
    expect(() => opt.state(-1)).toThrow('AdamW.state: index -1 is out of range (0..1)');
    const m = (n: number, v: number) => ({ expAvg: tensor(new Float32Array(n).fill(v), [n]), expAvgSq: tensor(new Float32Array(n).fill(2 * v), [n]) });
    const moments = [m(2, 1), m(3, 3)];
    expect(() => opt.loadState(-1, moments)).toThrow("AdamW.loadState: 'step' must be >= 0, got -1");
    expect(() => opt.loadState(1.5, moments)).toThrow("AdamW.loadState: 'step' must be an integer, got 1.5");
    expect(() => opt.loadState(1, [moments[0]!])).toThrow('AdamW.loadState: expected moments for 2 parameters, got 1');
    expect(() => opt.loadState(1, 'x' as never)).toThrow("AdamW.loadState: expected moments for 2 parameters, got 'x'");
    expect(() => opt.loadState(1, [moments[0]!, m(4, 1)])).toThrow('AdamW.loadState: moments[1].expAvg has 4 elements, its parameter 3');
    expect(() => opt.loadState(1, [moments[0]!, { expAvg: m(3, 1).expAvg, expAvgSq: zeros([2]) }])).toThrow('AdamW.loadState: moments[1].expAvgSq has 2 elements, its parameter 3');
    // A refused load changes nothing.
    expect(opt.stepCount).toBe(1);
    expect(Array.from(opt.state(1).expAvg.toFloat32Array())).toEqual([0, 0, 0]);
    opt.loadState(7, moments);
    expect(opt.stepCount).toBe(7);
    expect(Array.from(opt.state(1).expAvg.toFloat32Array())).toEqual([3, 3, 3]);
    expect(Array.from(opt.state(1).expAvgSq.toFloat32Array())).toEqual([6, 6, 6]);
    // Copied: the caller's tensors stay the caller's.
    moments[1]!.expAvg.fill(9);
    expect(Array.from(opt.state(1).expAvg.toFloat32Array())).toEqual([3, 3, 3]);
    expect(opt.disposed).toBe(false);
    opt.dispose();
    opt.dispose();
    expect(opt.disposed).toBe(true);
    expect(() => opt.loadState(1, moments)).toThrow('AdamW');
    expect(opt.state(0).expAvg.disposed).toBe(true);
    expect(a.disposed).toBe(false);
    let held: AdamW;
    {
      using o2 = new AdamW([zeros([1])]);
      held = o2;
    }
    expect(held.disposed).toBe(true);
  });

  test('gradNorm is the float64 L2 norm over every tensor, and checks its input', () => {
    const x = Float32Array.from({ length: 301 }, (_, i) => Math.sin(i) * (i % 7));
    const y = Float32Array.from([3, -4]);
    let sq = 0;
    for (const v of [...x, ...y]) sq += v * v;
    expect(Math.abs(gradNorm([tensor(x, [301]), tensor(y, [2])]) - Math.sqrt(sq))).toBeLessThan(1e-9 * Math.sqrt(sq));
    expect(gradNorm([tensor(y, [2])])).toBeCloseTo(5, 12);
    expect(() => gradNorm('x' as never)).toThrow('gradNorm: expected an array of tensors, got');
    expect(() => gradNorm([zeros([2], { dtype: 'bfloat16' })])).toThrow("gradNorm: 'grads[0]' must be float32, got bfloat16");
  });
});

describe("the trainer's options and run plan", () => {
  test('defaults: LoRA and full fine-tuning', () => {
    const lora = resolveOptions({ model: 'm', data: 'd' });
    expect(lora).toEqual({
      model: 'm', data: 'd', method: 'lora', r: 16, alpha: 32, target: 'all-linear', rslora: false, init: true, dropout: 0.05, lr: 2e-4,
      steps: null, epochs: null, batchSize: 8, gradAccum: 1, seqLen: 256, warmup: null, schedule: 'cosine', weightDecay: 0, maxGradNorm: 1,
      pack: true, evalSplit: 0.05, evalData: null, retainData: null, evalEvery: null, saveEvery: 100, saveTotalLimit: 2, out: 'lorakit-out',
      overwrite: false, seed: 42, device: 'cpu', progress: 'auto',
    });
    const full = resolveOptions({ model: 'm', data: 'd', method: 'full', r: 4 });
    expect([full.lr, full.weightDecay, full.alpha]).toEqual([2e-5, 0.01, 8]);
    expect(resolveOptions({ model: 'm', data: 'd', method: 'qlora', rslora: true, overwrite: true, init: false, pack: false, warmup: 0, saveEvery: 0, seed: 0 })).toMatchObject({
      method: 'qlora', lr: 2e-4, weightDecay: 0, rslora: true, overwrite: true, init: false, pack: false, warmup: 0, saveEvery: 0, seed: 0,
    });
    expect(resolveOptions({ model: 'm', data: 'd', target: 'q_proj|v_proj', init: 'gaussian', lr: 1, dropout: 0.99, evalSplit: 0.5, seqLen: 2, epochs: 1e-9 })).toMatchObject({
      target: 'q_proj|v_proj', init: 'gaussian', lr: 1, dropout: 0.99, evalSplit: 0.5, seqLen: 2, epochs: 1e-9,
    });
    // An option set to undefined is as if not given.
    expect(resolveOptions({ model: 'm', data: 'd', bogus: undefined } as never).method).toBe('lora');
  });

  test.each([
    [{ model: '' }, "train: 'model' must be a path, got"],
    [{ data: 3 }, "train: 'data' must be a path, got"],
    [{ method: 'dora' }, "'method' must be lora, qlora or full"],
    [{ r: 0 }, "train: 'r' must be an integer >= 1, got number 0"],
    [{ r: 1.5 }, "'r' must be an integer >= 1"],
    [{ steps: 2, epochs: 1 }, "give 'steps' or 'epochs', not both"],
    [{ target: 'a b' }, "'target' 'a b' is not all-linear, attention, mlp or module names"],
    [{ alpha: -1 }, "train: 'alpha' must be a number in [0, Infinity], got"],
    [{ dropout: 1 }, "'dropout' must be a number in [0, 0.99]"],
    [{ lr: 1.5 }, "'lr' must be a number in [0, 1]"],
    [{ lr: NaN }, "'lr' must be a number in [0, 1]"],
    [{ epochs: 0 }, "'epochs' must be a number in [1e-9, Infinity]"],
    [{ seqLen: 1 }, "'seqLen' must be an integer >= 2"],
    [{ warmup: -1 }, "'warmup' must be an integer >= 0"],
    [{ gradAccum: 0 }, "'gradAccum' must be an integer >= 1"],
    [{ batchSize: 0 }, "'batchSize' must be an integer >= 1"],
    [{ schedule: 'step' }, "'schedule' must be cosine, linear or constant"],
    [{ weightDecay: 2 }, "'weightDecay' must be a number in [0, 1]"],
    [{ maxGradNorm: -1 }, "'maxGradNorm' must be a number in [0, Infinity]"],
    [{ evalSplit: 0.6 }, "'evalSplit' must be a number in [0, 0.5]"],
    [{ evalEvery: 0 }, "'evalEvery' must be an integer >= 1"],
    [{ saveEvery: -1 }, "'saveEvery' must be an integer >= 0"],
    [{ saveTotalLimit: 0 }, "'saveTotalLimit' must be an integer >= 1"],
    [{ seed: -1 }, "'seed' must be an integer >= 0"],
    [{ out: '' }, "'out' must be a folder path, got"],
    [{ init: 'lora-ga' }, "'init' must be true, false, gaussian or pissa"],
    [{ batchSzie: 2 }, "train: 'batchSzie' is not an option; did you mean 'batch-size'?"],
  ] as [Record<string, unknown>, string][])('%j is refused', (o, msg) => {
    expect(() => resolveOptions({ model: 'm', data: 'd', ...o } as never)).toThrow(msg);
  });

  test('options must be an object', () => {
    expect(() => resolveOptions(null as never)).toThrow('train: options must be an object, got');
  });

  test('a run by epochs: held-out share, batches, steps, eval period and the short-run warning follow from the data', async () => {
    // 20 examples of 8 tokens; 10% held out = 2; 18 left make 9 batches of 2 per epoch; 2 epochs at 3
    // micro-batches a step are ceil(18/3) = 6 steps; evaluations every ceil(6/5) = 2 steps.
    const d = tmp();
    const data = path.join(d, 'd.jsonl');
    fs.writeFileSync(data, Array.from({ length: 20 }, (_, i) => JSON.stringify({ input_ids: Array.from({ length: 8 }, (_, j) => 10 + ((i * 3 + j) % 50)) })).join('\n'));
    const out = path.join(d, 'out');
    const logs: string[] = [];
    const h = train({ model: LLAMA, data, r: 2, batchSize: 2, gradAccum: 3, epochs: 2, seqLen: 8, pack: false, evalSplit: 0.1, out, progress: 'none', saveEvery: 4 });
    h.on('log', (l) => logs.push(l));
    const r = await h.done;
    expect(r.steps).toBe(6);
    expect(logs).toContain(`lorakit train: lora on tiny-llama (llama), ${(2 * 2 * (128 + 96 + 96 + 128 + 240 + 240 + 240)).toLocaleString('en-US')} trainable parameters, on cpu`);
    expect(logs).toContain('data: 18 training examples, 9 batches of 2 x 8 per epoch; 6 steps (grad accum 3), lr 0.0002 cosine, warmup 0');
    expect(logs).toContain(`checkpoints: every 4 steps and at the end, in ${out}/checkpoint-N (the newest 2 kept)`);
    expect(logs).toContain(
      'warning: this run has only 6 optimizer steps (2 epochs of 18 examples packs into 9 batches of 2 x 8, 3 per step); fewer than 20 rarely teach a model anything: give more --steps or --epochs (the data repeats), or a smaller --batch-size or --seq-len',
    );
    const evals = r.evals.filter((e) => e.split === 'heldout');
    expect(evals.map((e) => e.step)).toEqual([0, 2, 4, 6]);
    expect(evals.every((e) => e.tokens === 2 * 7)).toBe(true);
    expect(r.baselines).toEqual({ heldout: evals[0]!.loss });
    expect(fs.readdirSync(out).filter((f) => f.startsWith('checkpoint-')).sort()).toEqual(['checkpoint-4', 'checkpoint-6']);
    const steps = fs.readFileSync(r.metricsFile, 'utf8').trim().split('\n').map((l) => JSON.parse(l)).filter((m) => m.type === 'step');
    expect(steps.map((m) => m.tokens)).toEqual(Array(6).fill(3 * 2 * 7));
    // trainLoss: the mean of the logged losses (all 6 of the last 20).
    expect(Math.abs(r.trainLoss - steps.reduce((a, m) => a + m.loss, 0) / 6)).toBeLessThan(1e-12);
    const run = JSON.parse(fs.readFileSync(path.join(out, 'run.json'), 'utf8'));
    expect(run.options).toMatchObject({ epochs: 2, steps: null, gradAccum: 3, evalSplit: 0.1 });
    // One step and one epoch, without accumulation: the warning's singular forms.
    const one: string[] = [];
    const h1 = train({ model: LLAMA, data, r: 2, batchSize: 18, seqLen: 8, pack: false, evalSplit: 0.1, out: path.join(d, 'o1'), progress: 'none', saveEvery: 0 });
    h1.on('log', (l) => one.push(l));
    await h1.done;
    expect(one).toContain('warning: this run has only 1 optimizer step (1 epoch of 18 examples packs into 1 batch of 18 x 8); fewer than 20 rarely teach a model anything: give more --steps or --epochs (the data repeats), or a smaller --batch-size or --seq-len');
    expect(one).toContain(`checkpoints: at the end only (--save-every 0), in ${path.join(d, 'o1')}/checkpoint-N`);
  });
});
