/**
 * Issue #11, the trainer's part: Ctrl-C, periodic checkpoints, a reused --out, file-system errors,
 * --config files, options without --model, and the rough edges of `lorakit train`.
 */
import { spawn, spawnSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { Progress } from '../lib/train/progress';
import { train, type TrainOptions } from '../lib/train/trainer';
import { tempDirs } from './helpers/tmp';

const LLAMA = path.join(__dirname, 'fixtures/peft/tiny-llama');
const DEFAULT = path.join(__dirname, '../assets/default');
const CLI = path.resolve(__dirname, '../dist/cli/index.js');
const PKG = JSON.parse(fs.readFileSync(path.join(__dirname, '../package.json'), 'utf8'));

const tmp = tempDirs('lorakit-htrain-');

/** A learnable task: four cycles through 32 token ids. */
function sequences(n = 240, len = 24): string {
  const f = path.join(tmp(), 'seq.jsonl');
  const lines = Array.from({ length: n }, (_, i) => JSON.stringify({ input_ids: Array.from({ length: len }, (_, j) => 20 + (((i % 4) * 8 + j) % 32)) }));
  fs.writeFileSync(f, `${lines.join('\n')}\n`);
  return f;
}

const base = (o: Partial<TrainOptions>): TrainOptions => ({ model: LLAMA, data: sequences(), batchSize: 4, seqLen: 32, progress: 'none', out: tmp(), seed: 1, ...o });

const readJsonl = (f: string) => fs.readFileSync(f, 'utf8').trim().split('\n').filter(Boolean).map((l) => JSON.parse(l));

/** Runs the CLI to its end (killed after `limitMs`), returning its exit code, output and duration. */
function cli(args: string[], limitMs = 60_000, cwd?: string): Promise<{ code: number | null; signal: string | null; out: string; err: string; ms: number }> {
  const t0 = Date.now();
  const child = spawn(process.execPath, [CLI, ...args], { stdio: ['ignore', 'pipe', 'pipe'], cwd });
  let out = '', err = '';
  child.stdout.on('data', (d: Buffer) => (out += d.toString()));
  child.stderr.on('data', (d: Buffer) => (err += d.toString()));
  const timer = setTimeout(() => child.kill('SIGKILL'), limitMs);
  return new Promise((r) =>
    child.on('exit', (code, signal) => {
      clearTimeout(timer);
      r({ code, signal, out, err, ms: Date.now() - t0 });
    }),
  );
}

describe('Ctrl-C and periodic checkpoints', () => {
  test('a second Ctrl-C exits at once with code 130, saying what was saved', async () => {
    const out = tmp();
    // One optimizer step of 3000 micro-batches: many seconds of work before the first Ctrl-C's stop.
    const child = spawn(
      process.execPath,
      [CLI, 'train', '--model', LLAMA, '--data', sequences(), '--steps', '2', '--grad-accum', '3000', '--batch-size', '4', '--seq-len', '32', '--eval-split', '0', '--progress', 'lines', '--out', out],
      { stdio: ['ignore', 'pipe', 'pipe'] },
    );
    let err = '';
    let first = 0, second = 0;
    const killer = setTimeout(() => child.kill('SIGKILL'), 60_000);
    child.stderr.on('data', (d: Buffer) => {
      err += d.toString();
      if (!first && /checkpoints: |data: /.test(err)) {
        first = Date.now();
        // Give the loop a moment to enter the step's micro-batches.
        setTimeout(() => child.kill('SIGINT'), 300);
      }
      if (first && !second && /Ctrl-C again/.test(err)) {
        second = Date.now();
        child.kill('SIGINT');
      }
    });
    // Without an answer to the first Ctrl-C, send the second anyway after a few seconds.
    const fallback = setInterval(() => {
      if (first && !second && Date.now() - first > 5000) {
        second = Date.now();
        child.kill('SIGINT');
      }
    }, 100);
    const code = await new Promise<number | null>((r) => child.on('exit', (c) => r(c)));
    const exitedAfter = Date.now() - second;
    clearTimeout(killer);
    clearInterval(fallback);
    expect(code).toBe(130);
    expect(err).toMatch(/Ctrl-C: stopping after step 1 to save a checkpoint; press Ctrl-C again to exit at once without saving \(nothing was saved/);
    expect(err).toMatch(/second Ctrl-C: exiting now, step 0 not saved; nothing was saved: this run has written no checkpoint yet/);
    // The step left had seconds of work; the exit came long before it would have ended.
    expect(exitedAfter).toBeLessThan(2000);
    expect(fs.readdirSync(out).filter((f) => f.startsWith('checkpoint-'))).toEqual([]);
  });

  test('a run checkpoints every 100 steps by default, and --save-every 0 only at the end', async () => {
    const data = sequences(60);
    const r = await train(base({ data, steps: 110, evalSplit: 0, batchSize: 1, seqLen: 8 })).done;
    const saved = readJsonl(r.metricsFile).filter((m) => m.type === 'checkpoint').map((m) => m.step);
    expect(saved).toEqual([100, 110]);
    expect(fs.existsSync(path.join(path.dirname(r.metricsFile), 'checkpoint-100', 'trainer_state.json'))).toBe(true);
    const logs: string[] = [];
    const h = train(base({ data, steps: 3, saveEvery: 0, evalSplit: 0, batchSize: 1, seqLen: 8 }));
    h.on('log', (l) => logs.push(l));
    const r0 = await h.done;
    expect(readJsonl(r0.metricsFile).filter((m) => m.type === 'checkpoint').map((m) => m.step)).toEqual([3]);
    expect(logs).toContain(`checkpoints: at the end only (--save-every 0), in ${path.dirname(r0.metricsFile)}/checkpoint-N`);
  });

  test('a long evaluation hands the event loop a turn between examples', async () => {
    // 800 held-out sequences: evaluated in one go, they would block the loop for over a second even on a
    // fast machine (200 took 0.4 s on CI's), so the bound below has room to fail.
    const evalData = sequences(800, 30);
    let loaded = 0, evaluated = 0;
    const ticks: number[] = [];
    const timer = setInterval(() => ticks.push(Date.now()), 5);
    try {
      const h = train(base({ data: sequences(40), evalData, steps: 1, batchSize: 1, seqLen: 8 }));
      // Measured from the end of loading (synchronous file reads) to the end of the first evaluation.
      h.on('log', (l) => {
        if (l.startsWith('data:')) loaded = Date.now();
      });
      h.on('eval', (e) => {
        if (e.split === 'eval' && !evaluated) evaluated = Date.now();
      });
      await h.done;
    } finally {
      clearInterval(timer);
    }
    // Robust statistics of the timer's turns during the evaluation (one slow turn on a loaded machine
    // must not fail it; an evaluation run in one go gives no turn at all): how many it got, and the
    // 90th percentile of the gaps between them.
    const during = ticks.filter((t) => t > loaded && t < evaluated);
    const edges = [loaded, ...during, evaluated];
    const gaps = edges.slice(1).map((t, i) => t - edges[i]!).sort((x, y) => x - y);
    const p90 = gaps[Math.floor(0.9 * (gaps.length - 1))]!;
    const evalMs = evaluated - loaded;
    expect(evalMs).toBeGreaterThan(500);
    expect(during.length).toBeGreaterThan(evalMs / 100);
    expect(p90).toBeLessThan(evalMs / 10);
  });
});

describe('a reused --out', () => {
  /** Earlier run's checkpoints, renamed to steps 490 and 500, as a longer run would leave them. */
  async function earlierRun(out: string): Promise<void> {
    await train(base({ steps: 2, saveEvery: 1, evalSplit: 0, out })).done;
    fs.renameSync(path.join(out, 'checkpoint-1'), path.join(out, 'checkpoint-490'));
    fs.renameSync(path.join(out, 'checkpoint-2'), path.join(out, 'checkpoint-500'));
    fs.writeFileSync(path.join(out, 'notes.txt'), 'mine');
  }

  test('is refused, naming what it holds, unless --overwrite; --overwrite removes only the old run', async () => {
    const out = tmp();
    await earlierRun(out);
    const before = fs.readFileSync(path.join(out, 'checkpoint-500', 'adapter_model.safetensors'));
    const refused = train(base({ steps: 6, saveEvery: 2, evalSplit: 0, out })).done;
    await expect(refused).rejects.toMatchObject({ code: 'ERR_IO' });
    await expect(refused).rejects.toThrow(
      `train: --out '${out}' already holds a run (checkpoint-490, checkpoint-500, last, metrics.jsonl, run.json); give --overwrite to replace it ` +
        `(its checkpoints, last/, best/, metrics.jsonl and run.json are removed; other files are kept), --resume ${out}/checkpoint-500 to continue it, or another --out`,
    );
    // Refused means untouched.
    expect(fs.readFileSync(path.join(out, 'checkpoint-500', 'adapter_model.safetensors')).equals(before)).toBe(true);

    const logs: string[] = [];
    const h = train(base({ steps: 6, saveEvery: 2, evalSplit: 0, out, overwrite: true }));
    h.on('log', (l) => logs.push(l));
    const r = await h.done;
    expect(logs).toContain(`--overwrite: removed the earlier run in ${out} (checkpoint-490, checkpoint-500, last, metrics.jsonl, run.json); other files there are kept`);
    // This run's two newest checkpoints stay; the old run's are gone; the user's file stays.
    expect(fs.readdirSync(out).sort()).toEqual(['checkpoint-4', 'checkpoint-6', 'last', 'metrics.jsonl', 'notes.txt', 'run.json']);
    expect(readJsonl(r.metricsFile).filter((m) => m.type === 'checkpoint').map((m) => m.step)).toEqual([2, 4, 6]);
    expect(JSON.parse(fs.readFileSync(path.join(out, 'checkpoint-6', 'trainer_state.json'), 'utf8')).step).toBe(6);
  });

  test("pruning leaves another run's checkpoints alone, and a resumed run prunes its own", async () => {
    const out = tmp();
    const data = sequences();
    const h = train(base({ data, steps: 8, saveEvery: 2, evalSplit: 0, out }));
    h.on('step', (s) => {
      if (s.step === 5) h.stop();
    });
    await h.done;
    // A checkpoint of some other run copied in beside this run's (newer by step).
    fs.cpSync(path.join(out, 'checkpoint-4'), path.join(out, 'checkpoint-900'), { recursive: true });
    const state = JSON.parse(fs.readFileSync(path.join(out, 'checkpoint-900', 'trainer_state.json'), 'utf8'));
    fs.writeFileSync(path.join(out, 'checkpoint-900', 'trainer_state.json'), JSON.stringify({ ...state, runId: 'another-run', step: 900 }));
    expect(fs.readdirSync(out).filter((f) => f.startsWith('checkpoint-')).sort()).toEqual(['checkpoint-4', 'checkpoint-5', 'checkpoint-900']);
    const r = await train({ model: '', data: '', resume: path.join(out, 'checkpoint-5'), progress: 'none' }).done;
    expect(r.steps).toBe(8);
    expect(fs.readdirSync(out).filter((f) => f.startsWith('checkpoint-')).sort()).toEqual(['checkpoint-6', 'checkpoint-8', 'checkpoint-900']);
  });

  test('temporary folders of killed writers are removed, those of live processes kept', async () => {
    const out = tmp();
    const dead = spawnSync(process.execPath, ['-e', 'process.stdout.write(String(process.pid))'], { encoding: 'utf8' });
    const deadPid = Number(dead.stdout);
    const left = [`.checkpoint-7.tmp-${deadPid}`, `.last.tmp-${deadPid}`];
    const live = `.checkpoint-8.tmp-${process.ppid}`;
    for (const d of [...left, live]) {
      fs.mkdirSync(path.join(out, d));
      fs.writeFileSync(path.join(out, d, 'adapter_model.safetensors'), 'half');
    }
    fs.writeFileSync(path.join(out, `run.json.tmp-${deadPid}`), '{');
    const logs: string[] = [];
    const h = train(base({ steps: 1, evalSplit: 0, out }));
    h.on('log', (l) => logs.push(l));
    await h.done;
    expect(fs.readdirSync(out).filter((f) => f.includes('.tmp-'))).toEqual([live]);
    expect(logs[0]).toBe(`removed 3 temporary file(s) left by an interrupted run in ${out}: ${[...left, `run.json.tmp-${deadPid}`].sort().join(', ')}`);
  });
});

describe('file-system errors are one line naming the path', () => {
  test.each([
    ['/proc/lorakit-x', /^lorakit train: cannot create folder '\/proc\/lorakit-x': .*\((ENOENT|EACCES|EPERM|EROFS)\)\n$/],
    ['/dev/null', /^lorakit train: cannot create folder '\/dev\/null': '\/dev\/null' exists and is not a folder\n$/],
    ['/sys/lorakit-x', /^lorakit train: cannot create folder '\/sys\/lorakit-x': .*\((ENOENT|EACCES|EPERM|EROFS)\)\n$/],
    ['FILE/sub', /^lorakit train: cannot create folder '.*\/a-file\/sub': not a directory \(ENOTDIR\)\n$/],
  ])('--out %s', async (out, expected) => {
    const file = path.join(tmp(), 'a-file');
    fs.writeFileSync(file, 'x');
    const r = await cli(['train', '--model', LLAMA, '--data', sequences(8), '--steps', '1', '--progress', 'none', '--out', out.replace('FILE', file)], 30_000);
    expect(r.signal).toBeNull();
    expect(r.code).toBe(1);
    expect(r.err).toMatch(expected);
    expect(r.ms).toBeLessThan(20_000);
  });
});

describe('--config files and options without --model', () => {
  test('a .js config is refused, never run; bad files are errors naming them', async () => {
    const dir = tmp();
    const ran = path.join(dir, 'ran');
    const js = path.join(dir, 'run.js');
    fs.writeFileSync(js, `require('fs').writeFileSync(${JSON.stringify(ran)}, 'x'); module.exports = { steps: 1 };`);
    const cases: [string, string, RegExp][] = [
      [js, '', /^lorakit train --config: '.*run\.js' has extension '\.js'; a config file is \.json, \.yaml or \.yml\n$/],
      [path.join(dir, 'missing.yaml'), null as never, /^lorakit train --config: cannot read '.*missing\.yaml': .*\(ENOENT\)\n$/],
      [path.join(dir, 'bad.yaml'), 'steps: [1\n', /^lorakit train --config: '.*bad\.yaml' is not valid YAML: /],
      [path.join(dir, 'bad.json'), '{"steps": 1,}', /^lorakit train --config: '.*bad\.json' is not valid JSON: /],
      [path.join(dir, 'list.yml'), '- steps\n- 5\n', /^lorakit train --config: '.*list\.yml' must hold an object of options \(key: value\), found a list\n$/],
      [path.join(dir, 'typo.yaml'), 'learning_rat: 0.001\n', /^lorakit train --config '.*typo\.yaml': 'learning_rat' is not a training option; did you mean 'learning_rate'\? /],
    ];
    for (const [file, text, expected] of cases) {
      if (text) fs.writeFileSync(file, text);
      const r = await cli(['train', '--config', file, '--out', path.join(dir, 'out')]);
      expect(r.err).toMatch(expected);
      expect(r.code).toBe(1);
    }
    expect(fs.existsSync(ran)).toBe(false);
    expect(fs.existsSync(path.join(dir, 'out'))).toBe(false);
  });

  test('a YAML config is applied, with its Hugging Face names, and the command line wins', async () => {
    const dir = tmp();
    const out = path.join(dir, 'run');
    const file = path.join(dir, 'job.yaml');
    fs.writeFileSync(file, `model: ${LLAMA}\ndata: ${sequences()}\nlearning_rate: 0.001\nlora_r: 4\nmax-seq-length: 16\nbatchSize: 2\nsteps: 50\noutput_dir: ${out}\nprogress: none\neval-split: 0\n`);
    const r = await cli(['train', '--config', file, '--steps', '2']);
    expect(r.err).toBe('');
    expect(r.code).toBe(0);
    const run = JSON.parse(fs.readFileSync(path.join(out, 'run.json'), 'utf8'));
    expect(run.options).toMatchObject({ lr: 0.001, r: 4, seqLen: 16, batchSize: 2, steps: 2, out });
    expect(readJsonl(path.join(out, 'metrics.jsonl')).filter((m) => m.type === 'step')).toHaveLength(2);
  });

  test('options without --model apply to the shipped job; --resume refuses options it would ignore', async () => {
    const dir = tmp();
    const out = path.join(dir, 'default-run');
    // Small eval and retain sets keep the shipped job's evaluations short.
    const evalData = path.join(dir, 'eval.jsonl');
    fs.writeFileSync(evalData, fs.readFileSync(path.join(DEFAULT, 'eval.jsonl'), 'utf8').split('\n').slice(0, 4).join('\n'));
    const retain = path.join(dir, 'retain.txt');
    fs.writeFileSync(retain, fs.readFileSync(path.join(DEFAULT, 'retain.txt'), 'utf8').slice(0, 400));
    const r = await cli(['train', '--steps', '2', '--lr', '1e-6', '--batch-size', '2', '--seq-len', '32', '--eval-data', evalData, '--retain-data', retain, '--out', out, '--progress', 'none']);
    expect(r.code).toBe(0);
    expect(r.out).toContain(`running the small job shipped with lorakit (${path.resolve(DEFAULT)}) with --lr, --steps, --batch-size, --seq-len, --eval-data, --retain-data, --out as given`);
    const steps = readJsonl(path.join(out, 'metrics.jsonl')).filter((m) => m.type === 'step');
    expect(steps).toHaveLength(2);
    // lr 1e-6, cosine with no warmup: step 1 at the peak, step 2 at its floor.
    expect(steps[0].lr).toBeCloseTo(1e-6, 12);
    const run = JSON.parse(fs.readFileSync(path.join(out, 'run.json'), 'utf8'));
    expect(run.options).toMatchObject({ model: path.resolve(DEFAULT), lr: 1e-6, batchSize: 2, seqLen: 32, evalData, retainData: retain, r: 8 });

    // Without --out, the shipped job replaces its own earlier run (`npm start` twice).
    const small = ['train', '--steps', '1', '--batch-size', '2', '--seq-len', '32', '--eval-data', evalData, '--retain-data', retain, '--progress', 'lines'];
    expect((await cli(small, 60_000, dir)).code).toBe(0);
    const again = await cli(small, 60_000, dir);
    expect(again.code).toBe(0);
    expect(again.err).toContain(`--overwrite: removed the earlier run in lorakit-default-run (checkpoint-1, last, best, metrics.jsonl, run.json); other files there are kept`);

    const resumed = await cli(['train', '--resume', path.join(out, 'checkpoint-2'), '--lr', '0.1', '--seed', '3']);
    expect(resumed.code).toBe(1);
    expect(resumed.err).toBe('lorakit train: --resume continues a run with the options it was started with; only --steps and --progress may change, but --lr, --seed were given\n');
    const half = await cli(['train', '--model', LLAMA]);
    expect(half.code).toBe(1);
    expect(half.err).toBe('lorakit train: give both --model and --data (or neither, for the job shipped with lorakit); only --model was given\n');
  });

  test('the Hugging Face / PEFT / axolotl argument names are aliases', async () => {
    const out = path.join(tmp(), 'run');
    const r = await cli([
      'train', '--model', LLAMA, '--data', sequences(40), '--learning_rate', '0.003', '--lora_r', '4', '--lora_alpha', '8', '--num_train_epochs', '1',
      '--gradient_accumulation_steps', '2', '--max_seq_length', '16', '--per_device_train_batch_size', '2', '--output_dir', out, '--save_total_limit', '1',
      '--save_steps', '3', '--eval-split', '0', '--progress', 'none',
    ]);
    expect(r.err).toBe('');
    expect(r.code).toBe(0);
    const run = JSON.parse(fs.readFileSync(path.join(out, 'run.json'), 'utf8'));
    expect(run.options).toMatchObject({ lr: 0.003, r: 4, alpha: 8, epochs: 1, gradAccum: 2, seqLen: 16, batchSize: 2, out, saveTotalLimit: 1, saveEvery: 3 });
    // 40 examples of 24 tokens pack into 60 rows of 16: 30 micro-batches of 2, 15 steps of 2.
    const steps = readJsonl(path.join(out, 'metrics.jsonl')).filter((m) => m.type === 'step');
    expect(steps).toHaveLength(15);
    expect(fs.readdirSync(out).filter((f) => f.startsWith('checkpoint-'))).toEqual(['checkpoint-15']);
    expect(JSON.parse(fs.readFileSync(path.join(out, 'last', 'adapter_config.json'), 'utf8'))).toMatchObject({ r: 4, lora_alpha: 8 });
  });
});

describe('rough edges', () => {
  test('after a stop and --resume, "before" is the loss before training began', async () => {
    const out = tmp();
    const h = train(base({ steps: 6, evalEvery: 3, out, lr: 1e-2 }));
    h.on('step', (s) => {
      if (s.step === 2) h.stop();
    });
    await h.done;
    const r = await cli(['train', '--resume', path.join(out, 'checkpoint-2'), '--progress', 'none']);
    expect(r.code).toBe(0);
    const evals = readJsonl(path.join(out, 'metrics.jsonl')).filter((m) => m.type === 'eval');
    expect(evals.map((e) => e.step)).toEqual([0, 3, 6]);
    expect(r.out).toContain(`heldout: loss ${evals[0].loss.toFixed(4)} before -> ${evals[2].loss.toFixed(4)} after`);
    expect(evals[0].loss.toFixed(4)).not.toBe(evals[2].loss.toFixed(4));
  });

  test('the ETA of a resumed run counts only the steps this process ran; tok/s says it counts loss tokens', () => {
    let text = '';
    const stream = { isTTY: false, write: (s: string) => ((text += s), true) } as unknown as NodeJS.WriteStream;
    const p = new Progress('lines', stream);
    // Resumed at step 90 of 100: two steps in 4 s leave 8 steps, 16 s.
    p.step({ step: 92, total: 100, stepsThisRun: 2, loss: 1.5, lr: 1e-4, tokensPerSec: 1234.4, elapsedSec: 4 });
    p.step({ step: 100, total: 100, stepsThisRun: 10, loss: 1.5, lr: 1e-4, tokensPerSec: 1234.4, elapsedSec: 20 });
    expect(text).toBe('step 92/100  loss 1.5000  lr 1.00e-4  1234 loss tok/s  ETA 0:16\nstep 100/100  loss 1.5000  lr 1.00e-4  1234 loss tok/s  ETA 0:00\n');
  });

  test('a run too short to learn says so once; a long enough one does not', async () => {
    const logs = async (o: Partial<TrainOptions>) => {
      const lines: string[] = [];
      const h = train(base({ evalSplit: 0, ...o }));
      h.on('log', (l) => lines.push(l));
      const r = await h.done;
      return { lines: lines.filter((l) => l.startsWith('warning:')), steps: r.steps };
    };
    // 200 examples of 24 tokens, one epoch: 150 rows of 32, 18 full batches of 8.
    const short = await logs({ data: sequences(200), batchSize: 8 });
    expect(short.steps).toBe(18);
    expect(short.lines).toEqual([
      'warning: this run has only 18 optimizer steps (1 epoch of 200 examples packs into 18 batches of 8 x 32); fewer than 20 rarely teach a model anything: ' +
        'give more --steps or --epochs (the data repeats), or a smaller --batch-size or --seq-len',
    ]);
    expect((await logs({ data: sequences(200), batchSize: 8, steps: 20 })).lines).toEqual([]);
  });

  test('a retain loss that explodes brings a warning to lower the learning rate', async () => {
    // Text of another kind: token ids the training data never uses.
    const retainData = path.join(tmp(), 'retain.jsonl');
    fs.writeFileSync(retainData, Array.from({ length: 16 }, (_, i) => JSON.stringify({ input_ids: Array.from({ length: 24 }, (_, j) => 300 + ((i * 5 + j * 7) % 150)) })).join('\n'));
    const run = async (o: Partial<TrainOptions>) => {
      const lines: string[] = [];
      const h = train(base({ retainData, evalSplit: 0, steps: 6, evalEvery: 3, ...o }));
      h.on('log', (l) => lines.push(l));
      const r = await h.done;
      const retain = r.evals.filter((e) => e.split === 'retain').map((e) => e.loss);
      return { warnings: lines.filter((l) => l.startsWith('warning:')).filter((l) => l.includes('retain')), retain };
    };
    // Full fine-tuning at a LoRA rate (and more): the model unlearns the rest of its vocabulary.
    const bad = await run({ method: 'full', lr: 3e-2 });
    const [start, ...later] = bad.retain;
    const blown = later.findIndex((l) => l > 2 * start! || l - start! > 1);
    expect(blown).toBeGreaterThanOrEqual(0);
    expect(bad.warnings).toEqual([
      `warning: the retain loss rose from ${start!.toFixed(4)} to ${later[blown]!.toFixed(4)}: the model is losing what it knew. The learning rate 0.03 is likely too high ` +
        "for full fine-tuning, which needs rates about 10x below LoRA's (lorakit's default for full is 2e-5); lower --lr",
    ]);
    const fine = await run({ lr: 1e-2 });
    expect(fine.retain[1]! - fine.retain[0]!).toBeLessThan(1);
    expect(fine.warnings).toEqual([]);
  });

  test('last/ and best/ adapters carry the tokenizer files; run.json records the run', async () => {
    const out = tmp();
    const t0 = Date.now();
    const evalData = path.join(tmp(), 'eval.jsonl');
    fs.writeFileSync(evalData, fs.readFileSync(path.join(DEFAULT, 'eval.jsonl'), 'utf8').split('\n').slice(0, 3).join('\n'));
    const r = await train({ model: DEFAULT, data: path.join(DEFAULT, 'train.jsonl'), evalData, steps: 1, batchSize: 1, seqLen: 64, progress: 'none', out, lr: 1e-3 }).done;
    for (const dir of [r.lastDir, r.bestDir!])
      for (const f of ['tokenizer.json', 'tokenizer_config.json']) expect(fs.readFileSync(path.join(dir, f)).equals(fs.readFileSync(path.join(DEFAULT, f)))).toBe(true);
    const run = JSON.parse(fs.readFileSync(path.join(out, 'run.json'), 'utf8'));
    expect(run.lorakit).toBe(PKG.version);
    expect(run.model).toBe(path.resolve(DEFAULT));
    expect(Date.parse(run.startedAt)).toBeGreaterThanOrEqual(t0 - 1000);
    expect(run.options).toMatchObject({ method: 'lora', r: 16, lr: 1e-3, steps: 1, batchSize: 1, seqLen: 64, evalData, out, saveEvery: 100 });
    expect(JSON.parse(fs.readFileSync(path.join(out, 'checkpoint-1', 'trainer_state.json'), 'utf8')).runId).toBe(run.runId);
  });
});
