/**
 * Issue #22, the trainer's numbers against independent references: the learning-rate schedules
 * against their closed forms, one trainer step against a step driven by hand (clip by global norm and
 * AdamW written out here in float64), and gradient accumulation against one larger batch.
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import { learningRate, type ScheduleKind } from '../lib/train/schedule';
import { train, type TrainOptions } from '../lib/train/trainer';
import { loadModel } from '../lib/models';
import { type CausalLM } from '../lib/models/causal-lm';
import { addAdapter, loadAdapter } from '../lib/adapters/adapter';
import { tensor } from '../lib/tensor/tensor';
import { tempDirs } from './helpers/tmp';

const LLAMA = path.join(__dirname, 'fixtures/peft/tiny-llama');
const GPT2 = path.join(__dirname, 'fixtures/peft/tiny-gpt2');

const tmp = tempDirs('lorakit-trainref-');

const readJsonl = (f: string) => fs.readFileSync(f, 'utf8').trim().split('\n').filter(Boolean).map((l) => JSON.parse(l));

/** `n` rows of exactly `len` token ids (a deterministic pattern), as an input_ids .jsonl file. */
function rowsFile(n: number, len: number, salt = 0): { file: string; rows: number[][] } {
  const rows = Array.from({ length: n }, (_, i) => Array.from({ length: len }, (_, j) => 3 + ((i * 37 + j * 11 + salt * 5 + ((i * j) % 7)) % 200)));
  const file = path.join(tmp(), 'rows.jsonl');
  fs.writeFileSync(file, `${rows.map((r) => JSON.stringify({ input_ids: r })).join('\n')}\n`);
  return { file, rows };
}

/**
 * The schedule lorakit documents, written out in float64: a linear warmup over `w` steps whose last
 * warmup step reaches the peak (0-based step s runs at peak·(s+1)/w), then, over the remaining
 * total - w steps, a cosine (peak·cos²(π·f/2), which is peak·½(1 + cos πf)) or a linear decay
 * (peak·(1 - f)) towards zero, f the fraction of the decay steps done; or the peak throughout.
 */
function closedForm(s: number, total: number, peak: number, w: number, kind: ScheduleKind): number {
  if (s < w) return (peak / w) * (s + 1);
  if (kind === 'constant') return peak;
  const decaySteps = total - w > 0 ? total - w : 1;
  const f = s - w >= decaySteps ? 1 : (s - w) / decaySteps;
  if (kind === 'cosine') return peak * Math.cos((Math.PI * f) / 2) ** 2;
  return (peak * (decaySteps - Math.min(s - w, decaySteps))) / decaySteps;
}

describe('learning-rate schedules against their closed forms', () => {
  const close = (x: number, y: number) => expect(Math.abs(x - y)).toBeLessThanOrEqual(1e-15 * Math.max(1, Math.abs(y)));

  test('hand-computed values: warmup 2 of 10 steps, peak 1', () => {
    // Warmup: steps 0 and 1 at 1/2 and 2/2; decay over the 8 steps 2..9, step 2 at fraction 0.
    const want: Record<ScheduleKind, number[]> = {
      cosine: [0.5, 1, 1, (2 + Math.sqrt(2 + Math.SQRT2)) / 4, (2 + Math.SQRT2) / 4, (2 + Math.sqrt(2 - Math.SQRT2)) / 4, 0.5, (2 - Math.sqrt(2 - Math.SQRT2)) / 4, (2 - Math.SQRT2) / 4, (2 - Math.sqrt(2 + Math.SQRT2)) / 4],
      linear: [0.5, 1, 1, 7 / 8, 6 / 8, 5 / 8, 4 / 8, 3 / 8, 2 / 8, 1 / 8],
      constant: [0.5, 1, 1, 1, 1, 1, 1, 1, 1, 1],
    };
    for (const kind of ['cosine', 'linear', 'constant'] as const) want[kind].forEach((v, s) => close(learningRate(s, 10, 1, 2, kind), v));
    // The middle of the cosine decay is half the peak: a cosine that decays only half-way is at 0.85 there.
    close(learningRate(6, 10, 3e-4, 2, 'cosine'), 1.5e-4);
  });

  test.each([
    ['cosine', 100, 2e-4, 6],
    ['linear', 100, 2e-4, 6],
    ['constant', 100, 2e-4, 6],
    ['cosine', 37, 1e-3, 0],
    ['linear', 37, 1e-3, 0],
    ['constant', 37, 1e-3, 0],
    ['cosine', 5, 0.5, 5],
    ['linear', 7, 0.5, 1],
  ] as [ScheduleKind, number, number, number][])('%s, %i steps, peak %d, warmup %i: every step', (kind, total, peak, w) => {
    for (let s = 0; s < total; s++) close(learningRate(s, total, peak, w, kind), closedForm(s, total, peak, w, kind));
    // First step, warmup boundary, middle and last step, named.
    close(learningRate(0, total, peak, w, kind), w > 0 ? peak / w : peak);
    if (w > 0) close(learningRate(w - 1, total, peak, w, kind), peak);
    if (w < total) close(learningRate(w, total, peak, w, kind), peak);
    const last = learningRate(total - 1, total, peak, w, kind);
    if (kind === 'constant' || w >= total - 1) close(last, peak);
    else {
      const f = (total - 1 - w) / (total - w);
      close(last, kind === 'cosine' ? (peak * (1 + Math.cos(Math.PI * f))) / 2 : peak * (1 - f));
      expect(last).toBeLessThan(peak / 4);
    }
  });

  test('past the end the decaying schedules stay at zero, never below', () => {
    for (const kind of ['cosine', 'linear'] as const)
      for (const s of [10, 11, 25]) {
        expect(learningRate(s, 10, 1e-3, 2, kind)).toBeGreaterThanOrEqual(0);
        close(learningRate(s, 10, 1e-3, 2, kind), 0);
      }
  });

  test.each([
    ['cosine', 12, 3],
    ['linear', 12, 3],
    ['constant', 12, 3],
    ['cosine', 40, null],
  ] as [ScheduleKind, number, number | null][])('metrics.jsonl of a real %s run of %i steps (warmup %s) logs the closed-form lr at every step', async (kind, steps, warmup) => {
    const { file } = rowsFile(4, 8);
    const out = tmp();
    const lines: string[] = [];
    const h = train({
      model: LLAMA, data: file, method: 'lora', r: 2, batchSize: 1, seqLen: 8, pack: false, evalSplit: 0, steps, schedule: kind,
      lr: 3e-3, ...(warmup === null ? {} : { warmup }), saveEvery: 0, progress: 'none', out, seed: 3,
    });
    h.on('log', (l) => lines.push(l));
    const emitted: number[] = [];
    h.on('step', (s) => emitted.push(s.lr));
    await h.done;
    // The default warmup is 3% of the run, rounded down: 1 step of 40.
    const w = warmup ?? Math.floor(steps * 0.03);
    if (warmup === null) expect(w).toBe(1);
    expect(lines.join('\n')).toContain(`lr 0.003 ${kind}, warmup ${w}`);
    const logged = readJsonl(path.join(out, 'metrics.jsonl')).filter((m) => m.type === 'step');
    expect(logged.map((m) => m.step)).toEqual(Array.from({ length: steps }, (_, i) => i + 1));
    logged.forEach((m, i) => {
      const want = closedForm(i, steps, 3e-3, w, kind);
      expect(Math.abs(m.lr - want)).toBeLessThanOrEqual(1e-18 + 1e-15 * want);
      expect(Math.abs(emitted[i]! - want)).toBeLessThanOrEqual(1e-18 + 1e-15 * want);
    });
  });
});

/** What decoupled weight decay skips, by the documented rule (Hugging Face Trainer's): biases and norm weights. */
const decays = (name: string) => !/\.bias$/.test(name) && !/(^|\.)(ln_\d|ln_f|[a-z_]*norm)\./.test(name);

interface Hand {
  params: Map<string, Float64Array>;
  norms: number[];
  losses: number[];
}

/**
 * `steps` optimizer steps driven by hand: the library's forward/backward for the gradient of the
 * batch's mean loss, then clip-by-global-norm (torch's coefficient max/(norm + 1e-6), capped at 1) and
 * AdamW (β 0.9/0.999, ε 1e-8, decoupled weight decay, bias-corrected moments) in float64. The float32
 * parameters the next forward pass reads are the float64 ones rounded.
 */
function handSteps(model: CausalLM, rows: number[][], o: { steps: number; lr: number; weightDecay: number; maxGradNorm: number }): Hand {
  const [b1, b2, eps] = [0.9, 0.999, 1e-8];
  const ps = model.parameters();
  const p64 = ps.map((p) => Float64Array.from(p.param.toFloat32Array()));
  const m = ps.map((p) => new Float64Array(p.param.numel)), v = ps.map((p) => new Float64Array(p.param.numel));
  const T = rows[0]!.length;
  const norms: number[] = [], losses: number[] = [];
  for (let t = 1; t <= o.steps; t++) {
    model.zeroGrad();
    using ids = tensor(BigInt64Array.from(rows.flat(), BigInt), [rows.length, T]);
    losses.push(model.forwardBackward(ids, { labels: ids, train: true }).loss);
    const g = ps.map((p) => Float64Array.from(p.grad.toFloat32Array()));
    let sq = 0;
    for (const a of g) for (const x of a) sq += x * x;
    const norm = Math.sqrt(sq);
    norms.push(norm);
    const coef = Math.min(1, o.maxGradNorm / (norm + 1e-6));
    ps.forEach((p, i) => {
      const wd = decays(p.name) ? o.weightDecay : 0;
      const [w, mi, vi, gi] = [p64[i]!, m[i]!, v[i]!, g[i]!];
      for (let k = 0; k < w.length; k++) {
        const gk = gi[k]! * coef;
        w[k] = w[k]! * (1 - o.lr * wd);
        mi[k] = b1 * mi[k]! + (1 - b1) * gk;
        vi[k] = b2 * vi[k]! + (1 - b2) * gk * gk;
        const mHat = mi[k]! / (1 - b1 ** t), vHat = vi[k]! / (1 - b2 ** t);
        w[k] = w[k]! - (o.lr * mHat) / (Math.sqrt(vHat) + eps);
      }
      p.param.storage().upload(Float32Array.from(w));
    });
  }
  return { params: new Map(ps.map((p, i) => [p.name, p64[i]!])), norms, losses };
}

/** The trained parameters of a run's last/ folder, by name, in the model's own layout. */
function trainedParams(method: 'full' | 'lora', base: string, lastDir: string): Map<string, Float32Array> {
  using model = loadModel(method === 'full' ? lastDir : base);
  if (method === 'full') model.requireFullGrad();
  else loadAdapter(model, lastDir);
  return new Map(model.parameters().map((p) => [p.name, p.param.toFloat32Array()]));
}

/**
 * How far trained weights are from the reference's, in units of the learning rate (the size of one
 * Adam step): the worst element and the mean over the tensor. In float32 an element whose gradient
 * nearly cancels gets a visibly different Adam direction (its update is about g/|g|), so the worst
 * element is allowed more than the mean.
 */
function inLr(x: ArrayLike<number>, ref: ArrayLike<number>, lr: number): { worst: number; mean: number } {
  let worst = 0, sum = 0;
  for (let i = 0; i < ref.length; i++) {
    const d = Math.abs(x[i]! - ref[i]!) / lr;
    worst = Math.max(worst, d);
    sum += d;
  }
  return { worst, mean: sum / ref.length };
}

describe('trainer steps equal steps driven by hand (clip by global norm and AdamW in float64)', () => {
  test.each([
    ['full', 'tiny-gpt2'],
    ['full', 'tiny-llama'],
    ['lora', 'tiny-llama'],
  ] as ['full' | 'lora', string][])('%s fine-tuning of %s: 2 steps at a constant lr, clipping on, weight decay on matrices only', async (method, fixture) => {
    const dir = fixture === 'tiny-gpt2' ? GPT2 : LLAMA;
    const K = 4, T = 12, lr = 1e-2, weightDecay = 0.1, steps = 2;
    const { file, rows } = rowsFile(K, T, 1);
    const lora = { r: 4, alpha: 8, seed: 5 };
    const prepare = (model: CausalLM) => {
      if (method === 'full') model.requireFullGrad();
      else addAdapter(model, { r: lora.r, loraAlpha: lora.alpha, loraDropout: 0, targetModules: 'all-linear', seed: lora.seed });
    };
    // The first gradient's norm, to set a clip threshold that cuts both steps' gradients.
    let firstNorm: number;
    {
      using probe = loadModel(dir);
      prepare(probe);
      firstNorm = handSteps(probe, rows, { steps: 1, lr: 0, weightDecay: 0, maxGradNorm: Infinity }).norms[0]!;
    }
    const maxGradNorm = firstNorm / 3;
    using model = loadModel(dir);
    prepare(model);
    const hand = handSteps(model, rows, { steps, lr, weightDecay, maxGradNorm });
    expect(hand.norms.every((n) => n > maxGradNorm)).toBe(true);

    const r = await train({
      model: dir, data: file, method, ...(method === 'lora' ? { r: lora.r, alpha: lora.alpha, dropout: 0, seed: lora.seed } : { seed: lora.seed }),
      batchSize: K, seqLen: T, pack: false, evalSplit: 0, steps, lr, schedule: 'constant', warmup: 0, weightDecay, maxGradNorm,
      saveEvery: 0, progress: 'none', out: tmp(),
    }).done;
    const logged = readJsonl(r.metricsFile).filter((m) => m.type === 'step');
    logged.forEach((m, i) => {
      expect(m.lr).toBe(lr);
      expect(Math.abs(m.gradNorm - hand.norms[i]!)).toBeLessThan(1e-4 * hand.norms[i]!);
      expect(Math.abs(m.loss - hand.losses[i]!)).toBeLessThan(1e-5 * hand.losses[i]!);
    });
    const got = trainedParams(method, dir, r.lastDir);
    expect([...got.keys()].sort()).toEqual([...hand.params.keys()].sort());
    let decayed = 0, kept = 0;
    for (const [name, ref] of hand.params) {
      const e = inLr(got.get(name)!, ref, lr);
      if (e.worst > 0.03 || e.mean > 1e-3) throw new Error(`${name}: the trainer's weights are up to ${e.worst} lr (mean ${e.mean} lr) from the hand-driven steps'`);
      if (decays(name)) decayed++;
      else kept++;
    }
    expect(decayed).toBeGreaterThan(0);
    if (method === 'full') expect(kept).toBeGreaterThan(0);
  });
});

describe('gradient accumulation', () => {
  test.each(['full', 'lora'] as const)('%s: 4 micro-batches of 2 rows are one batch of 8 rows (same losses, gradient norms and weights)', async (method) => {
    const { file, rows } = rowsFile(8, 10, 2);
    // A clip threshold between the batch gradient's norm and 4 times it.
    let norm: number;
    {
      using probe = loadModel(LLAMA);
      if (method === 'full') probe.requireFullGrad();
      else addAdapter(probe, { r: 4, loraAlpha: 8, loraDropout: 0, targetModules: 'all-linear', seed: 9 });
      norm = handSteps(probe, rows, { steps: 1, lr: 0, weightDecay: 0, maxGradNorm: Infinity }).norms[0]!;
    }
    const common: TrainOptions = {
      model: LLAMA, data: file, method, r: 4, alpha: 8, dropout: 0, seed: 9, seqLen: 10, pack: false, evalSplit: 0, steps: 3, lr: 5e-3,
      schedule: 'linear', warmup: 1, weightDecay: 0.05, maxGradNorm: 2 * norm, saveEvery: 0, progress: 'none',
    };
    const one = await train({ ...common, batchSize: 8, gradAccum: 1, out: tmp() }).done;
    const acc = await train({ ...common, batchSize: 2, gradAccum: 4, out: tmp() }).done;
    const a = readJsonl(one.metricsFile).filter((m) => m.type === 'step'), b = readJsonl(acc.metricsFile).filter((m) => m.type === 'step');
    expect(b).toHaveLength(3);
    expect(Math.abs(a[0].gradNorm - norm)).toBeLessThan(1e-4 * norm);
    b.forEach((m, i) => {
      expect(m.tokens).toBe(a[i].tokens);
      expect(m.tokens).toBe(8 * 9);
      expect(Math.abs(m.loss - a[i].loss)).toBeLessThan(1e-5 * a[i].loss);
      expect(Math.abs(m.gradNorm - a[i].gradNorm)).toBeLessThan(1e-4 * a[i].gradNorm);
    });
    const wa = trainedParams(method, LLAMA, one.lastDir), wb = trainedParams(method, LLAMA, acc.lastDir);
    for (const [name, ref] of wa) {
      const e = inLr(wb.get(name)!, ref, common.lr!);
      if (e.worst > 0.03 || e.mean > 1e-3) throw new Error(`${name}: accumulated weights are up to ${e.worst} lr (mean ${e.mean} lr) from the one-batch run's`);
    }
  });
});
