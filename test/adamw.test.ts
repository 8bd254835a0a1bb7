import * as path from 'node:path';
import { AdamW, DisposedError, LorakitRangeError, LorakitTypeError, gradNorm, tensor, zeros } from '../lib';
import { randomArray, readSafetensors } from './helpers/reference';

const fixture = readSafetensors(path.join(__dirname, 'fixtures/peft/adamw/expected.safetensors'));
const get = (k: string) => {
  const e = fixture.get(k);
  if (!e) throw new Error(`fixture has no ${k}`);
  return { shape: e.shape, data: Float32Array.from(e.data as Float64Array) };
};

function maxRel(x: Float32Array, ref: Float32Array): number {
  let worst = 0;
  x.forEach((v, i) => (worst = Math.max(worst, Math.abs(v - ref[i]!) / Math.max(Math.abs(ref[i]!), 1e-30))));
  return worst;
}

/** torch.optim.AdamW for one tensor, in float64 (the textbook update, independent of the kernel). */
function adamw64(p: Float64Array, grads: Float64Array[], h: { lr: number; b1: number; b2: number; eps: number; wd: number }) {
  const m = new Float64Array(p.length), v = new Float64Array(p.length);
  grads.forEach((g, t) => {
    const step = t + 1;
    for (let i = 0; i < p.length; i++) {
      p[i]! *= 1 - h.lr * h.wd;
      m[i] = h.b1 * m[i]! + (1 - h.b1) * g[i]!;
      v[i] = h.b2 * v[i]! + (1 - h.b2) * g[i]! * g[i]!;
      const mh = m[i]! / (1 - h.b1 ** step), vh = v[i]! / (1 - h.b2 ** step);
      p[i]! -= (h.lr * mh) / (Math.sqrt(vh) + h.eps);
    }
  });
  return { p, m, v };
}

describe('AdamW', () => {
  test('reproduces the torch.optim.AdamW trace (6 steps, two tensors) within 1e-6 relative', () => {
    const names = ['p0', 'p1'];
    const params = names.map((n) => {
      const init = get(`${n}.init`);
      return tensor(init.data, init.shape);
    });
    const opt = new AdamW(params, { lr: 3e-3, betas: [0.9, 0.95], eps: 1e-8, weightDecay: 0.1 });
    for (let s = 0; s < 6; s++) {
      const grads = names.map((n) => {
        const g = get(`${n}.grad${s}`);
        return tensor(g.data, g.shape);
      });
      opt.step(grads);
      grads.forEach((g) => g.dispose());
    }
    expect(opt.stepCount).toBe(6);
    names.forEach((n, i) => {
      expect(maxRel(params[i]!.toFloat32Array(), get(`${n}.final`).data)).toBeLessThan(1e-6);
      expect(maxRel(opt.state(i).expAvg.toFloat32Array(), get(`${n}.exp_avg`).data)).toBeLessThan(1e-6);
      expect(maxRel(opt.state(i).expAvgSq.toFloat32Array(), get(`${n}.exp_avg_sq`).data)).toBeLessThan(1e-6);
    });
    opt.dispose();
  });

  test('parameter groups keep their own hyperparameters, in one fused step', () => {
    const n = 70001; // spans several internal chunks
    const a0 = randomArray(n, 1), b0 = randomArray(33, 2);
    const ga = [randomArray(n, 3), randomArray(n, 4)], gb = [randomArray(33, 5), randomArray(33, 6)];
    const a = tensor(a0, [n]), b = tensor(b0, [3, 11]);
    const opt = new AdamW([{ params: [a], lr: 1e-2, weightDecay: 0 }, { params: [b], betas: [0.8, 0.99], eps: 1e-6 }], { lr: 5e-3, weightDecay: 0.05 });
    for (let s = 0; s < 2; s++) opt.step([tensor(ga[s]!, [n]), tensor(gb[s]!, [3, 11])]);
    const ra = adamw64(Float64Array.from(a0), ga.map((g) => Float64Array.from(g)), { lr: 1e-2, b1: 0.9, b2: 0.999, eps: 1e-8, wd: 0 });
    const rb = adamw64(Float64Array.from(b0), gb.map((g) => Float64Array.from(g)), { lr: 5e-3, b1: 0.8, b2: 0.99, eps: 1e-6, wd: 0.05 });
    const err = (x: Float32Array, r: Float64Array) => x.reduce((w, v, i) => Math.max(w, Math.abs(v - r[i]!)), 0);
    // Each step moves a parameter by at most ~lr; float32 rounding of that is far below 1e-6.
    expect(err(a.toFloat32Array(), ra.p)).toBeLessThan(1e-6);
    expect(err(b.toFloat32Array(), rb.p)).toBeLessThan(1e-6);
    expect(opt.groups[1]).toEqual({ lr: 5e-3, betas: [0.8, 0.99], eps: 1e-6, weightDecay: 0.05 });
  });

  test('clipping by global norm matches torch.nn.utils.clip_grad_norm_ followed by the step', () => {
    const g1 = randomArray(1000, 7, 3), g2 = randomArray(77, 8, 3);
    const norm64 = Math.sqrt([...g1, ...g2].reduce((s, v) => s + v * v, 0));
    expect(Math.abs(gradNorm([tensor(g1, [1000]), tensor(g2, [77])]) - norm64)).toBeLessThan(1e-9 * norm64);
    const p1 = randomArray(1000, 9), p2 = randomArray(77, 10);
    const P1 = tensor(p1, [1000]), P2 = tensor(p2, [77]);
    const opt = new AdamW([P1, P2], { lr: 1e-3, weightDecay: 0.1 });
    const res = opt.step([tensor(g1, [1000]), tensor(g2, [77])], { maxGradNorm: 1 });
    const coef = 1 / (norm64 + 1e-6);
    expect(res.gradNorm).toBeCloseTo(norm64, 6);
    expect(res.clipScale).toBeCloseTo(coef, 9);
    const r1 = adamw64(Float64Array.from(p1), [Float64Array.from(g1, (v) => v * coef)], { lr: 1e-3, b1: 0.9, b2: 0.999, eps: 1e-8, wd: 0.1 });
    expect(P1.toFloat32Array().reduce((w, v, i) => Math.max(w, Math.abs(v - r1.p[i]!)), 0)).toBeLessThan(1e-6);
    // Below the threshold nothing is scaled.
    expect(opt.step([tensor(g1, [1000]).to('float32'), tensor(g2, [77])], { maxGradNorm: 1e9 }).clipScale).toBe(1);
  });

  test('a non-finite gradient norm refuses the step and leaves the parameters alone', () => {
    const p = tensor([1, 2, 3]);
    const opt = new AdamW([p]);
    expect(() => opt.step([tensor([0, NaN, 0])], { maxGradNorm: 1 })).toThrow(/gradient norm is NaN; no parameter was updated/);
    expect(p.toArray()).toEqual([1, 2, 3]);
    expect(opt.stepCount).toBe(0);
  });

  test('tryStep returns a non-finite gradient norm as a value, updating nothing; a finite one as step() would', () => {
    const p = tensor([1, 2, 3]);
    const opt = new AdamW([p]);
    for (const bad of [NaN, Infinity]) {
      const r = opt.tryStep([tensor([0, bad, 0])], { maxGradNorm: 1 });
      expect(r).toEqual({ ok: false, reason: 'grad-norm', gradNorm: expect.anything() });
      expect(Number.isFinite(r.gradNorm)).toBe(false);
    }
    expect(p.toArray()).toEqual([1, 2, 3]);
    expect(opt.stepCount).toBe(0);
    const q = tensor([1, 2, 3]);
    const expected = new AdamW([q]).step([tensor([3, 0, 4])], { maxGradNorm: 1 });
    expect(opt.tryStep([tensor([3, 0, 4])], { maxGradNorm: 1 })).toEqual({ ok: true, ...expected });
    expect(p.toArray()).toEqual(q.toArray());
    expect(opt.tryStep([tensor([3, 0, 4])])).toEqual({ ok: true, clipScale: 1 });
    expect(opt.stepCount).toBe(2);
    // Bad input is still an error, named by the method.
    expect(() => opt.tryStep([])).toThrow(/AdamW\.tryStep: expected 1 gradients/);
  });

  test('bad input', () => {
    const p = zeros([2, 3]);
    expect(() => new AdamW([])).toThrow(LorakitTypeError);
    expect(() => new AdamW([zeros([2], { dtype: 'bfloat16' })])).toThrow(/'groups\[0\]\.params\[0\]' must be float32, got bfloat16/);
    expect(() => new AdamW([p, p])).toThrow(/appears twice/);
    expect(() => new AdamW([p], { betas: [0.9, 1] })).toThrow(/'betas\[1\]' must be < 1, got 1/);
    expect(() => new AdamW([p], { lr: -1 })).toThrow(LorakitRangeError);
    const opt = new AdamW([p]);
    expect(() => opt.step([])).toThrow(/expected 1 gradients \(one per parameter\), got 0/);
    expect(() => opt.step([zeros([3, 3])])).toThrow(/grads\[0\] has shape \[3, 3\], its parameter \[2, 3\]/);
    expect(() => opt.step([zeros([2, 3], { dtype: 'float16' })])).toThrow(/'grads\[0\]' must be float32, got float16/);
    expect(() => opt.state(5)).toThrow(/index 5 is out of range/);
    opt.dispose();
    expect(() => opt.step([zeros([2, 3])])).toThrow(DisposedError);
  });
});

describe('AdamW errors name what is wrong (mutants of lib/train/adamw.ts that survived)', () => {
  test('a disposed optimizer refuses step and loadState by name; a disposed parameter is named by its index', () => {
    const p = tensor([1, 2, 3]);
    const opt = new AdamW([p], { lr: 0.1 });
    opt.dispose();
    expect(() => opt.step([tensor([0.1, 0.2, 0.3])])).toThrow(new DisposedError('AdamW'));
    expect(() => opt.step([tensor([0.1, 0.2, 0.3])])).toThrow(/^AdamW has been disposed$/);
    expect(() => opt.loadState(0, [])).toThrow(/^AdamW has been disposed$/);
    const q = tensor([1, 2]);
    const o2 = new AdamW([q]);
    q.dispose();
    expect(() => o2.step([tensor([1, 1])])).toThrow(/^AdamW\.step: 'params\[0\]' \(a float32 tensor of shape \[2\]\) has been disposed$/);
    o2.dispose();
  });

  test('loadState names the moment of the wrong dtype', () => {
    const opt = new AdamW([tensor([1, 2, 3])], { lr: 0.1 });
    expect(() => opt.loadState(1, [{ expAvg: zeros([3], { dtype: 'bfloat16' }), expAvgSq: zeros([3]) }])).toThrow(
      /^AdamW\.loadState: 'moments\[0\]\.expAvg' must be float32, got bfloat16$/,
    );
    expect(() => opt.loadState(1, [{ expAvg: zeros([3]), expAvgSq: zeros([3], { dtype: 'bfloat16' }) }])).toThrow(
      /^AdamW\.loadState: 'moments\[0\]\.expAvgSq' must be float32, got bfloat16$/,
    );
    expect(opt.stepCount).toBe(0);
    opt.dispose();
  });
});
