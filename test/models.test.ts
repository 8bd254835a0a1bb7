import * as path from 'node:path';
import { NF4Tensor, Tensor, nf4, tensor } from '../lib';
import { loadModel } from '../lib/models';
import { loadAdapter } from '../lib/adapters/adapter';
import { matmul64, normRelErr, readSafetensors, relErr } from './helpers/reference';

const FIX = path.join(__dirname, 'fixtures/peft');

describe.each(['tiny-gpt2', 'tiny-llama'])('%s matches transformers + PEFT', (name) => {
  const dir = path.join(FIX, name);
  const expected = readSafetensors(path.join(dir, 'expected.safetensors'));
  const ex = (k: string) => expected.get(k)!.data as Float64Array;
  const ids = () => {
    const e = expected.get('input_ids')!;
    return tensor(e.data as BigInt64Array, e.shape);
  };

  test('base model: logits and loss within 1e-5 relative', () => {
    using model = loadModel(dir);
    const r = model.forward(ids(), { returnLogits: true });
    expect(relErr(r.logits!.toFloat32Array(), ex('base_logits'))).toBeLessThan(1e-5);
    expect(Math.abs(r.loss - ex('base_loss')[0]!) / ex('base_loss')[0]!).toBeLessThan(1e-5);
    expect(r.tokens).toBe(2 * 23);
    r.logits!.dispose();
  });

  test('with the PEFT adapter: logits, loss, and every LoRA gradient', () => {
    using model = loadModel(dir);
    loadAdapter(model, dir);
    const r = model.forwardBackward(ids(), { returnLogits: true });
    expect(relErr(r.logits!.toFloat32Array(), ex('lora_logits'))).toBeLessThan(1e-5);
    expect(Math.abs(r.loss - ex('lora_loss')[0]!) / ex('lora_loss')[0]!).toBeLessThan(1e-5);
    let checked = 0;
    for (const [key, lin] of model.linears) {
      if (!lin.grads) continue;
      for (const ab of ['A', 'B'] as const) {
        const ref = ex(`grad.base_model.model.${key}.lora_${ab}.default.weight`);
        expect(ref).toBeDefined();
        expect(normRelErr(lin.grads[`lora${ab}`].toFloat32Array(), ref)).toBeLessThan(1e-4);
        checked++;
      }
    }
    expect(checked).toBe([...expected.keys()].filter((k) => k.startsWith('grad.')).length);
    // Gradients accumulate across calls until zeroGrad.
    const first = [...model.linears.values()][0]!.grads!.loraB.toFloat32Array();
    model.forwardBackward(ids());
    const twice = [...model.linears.values()][0]!.grads!.loraB.toFloat32Array();
    expect(normRelErr(twice, Float64Array.from(first, (v) => 2 * v))).toBeLessThan(1e-6);
    model.zeroGrad();
    expect([...model.linears.values()][0]!.grads!.loraB.toFloat32Array().every((v) => v === 0)).toBe(true);
  });

  test('merged into the base weights: logits match PEFT merge_and_unload, and unmerge restores the base', () => {
    using model = loadModel(dir);
    loadAdapter(model, dir);
    const err = model.mergeError(ids());
    expect(err.relative).toBeLessThan(1e-5);
    expect(err.maxAbs).toBeLessThan(1e-4);
    const merged = model.forward(ids(), { returnLogits: true });
    expect(relErr(merged.logits!.toFloat32Array(), ex('merged_logits'))).toBeLessThan(1e-5);
    model.unmergeAdapters();
    for (const l of model.linears.values()) l.detach();
    const base = model.forward(ids(), { returnLogits: true });
    expect(relErr(base.logits!.toFloat32Array(), ex('base_logits'))).toBeLessThan(1e-5);
  });

  test('an NF4 merge requantizes dequant(W) + s·B·A to within half an NF4 step per block', () => {
    using model = loadModel(dir);
    loadAdapter(model, dir);
    const lin = [...model.linears.values()][0]!;
    const w = lin.weight as Tensor;
    lin.weight = nf4.quantize(w, { blockSize: 64 });
    w.dispose();
    const before = nf4.dequantize(lin.weight as NF4Tensor).toFloat32Array();
    const { loraA, loraB, scale } = lin.adapter!;
    const ba = matmul64(loraB.toFloat32Array(), lin.outFeatures, loraB.shape[1]!, false, loraA.toFloat32Array(), loraA.shape[0]!, lin.inFeatures, false);
    const target = Float64Array.from(before, (v, i) => v + scale * ba[i]!);
    lin.merge();
    expect(lin.weight).toBeInstanceOf(NF4Tensor);
    const after = nf4.dequantize(lin.weight as NF4Tensor).toFloat32Array();
    const halfStep = Math.max(...nf4.NF4_CODE.slice(1).map((v, i) => v - nf4.NF4_CODE[i]!)) / 2; // widest gap, halved
    for (let b0 = 0; b0 < target.length; b0 += 64) {
      let amax = 0;
      for (let i = b0; i < Math.min(b0 + 64, target.length); i++) amax = Math.max(amax, Math.abs(target[i]!));
      for (let i = b0; i < Math.min(b0 + 64, target.length); i++) expect(Math.abs(after[i]! - target[i]!)).toBeLessThanOrEqual(halfStep * amax * (1 + 1e-5) + 1e-7);
    }
  });
});

describe.each(['tiny-gpt2', 'tiny-llama'])('%s: packed rows keep documents apart', (name) => {
  test('a row holding two documents gives each document its own logits, loss and gradients', () => {
    using model = loadModel(path.join(FIX, name));
    loadAdapter(model, path.join(FIX, name));
    const a = Array.from({ length: 7 }, (_, i) => (i * 31 + 3) % 512), b = Array.from({ length: 9 }, (_, i) => (i * 17 + 100) % 512);
    const row = (xs: number[]) => tensor(BigInt64Array.from(xs, BigInt), [1, xs.length]);
    const alone = (xs: number[]) => {
      model.zeroGrad();
      const r = model.forwardBackward(row(xs), { returnLogits: true });
      const grads = model.parameters().map((p) => p.grad.toFloat32Array());
      return { logits: r.logits!.toFloat32Array(), loss: r.loss, tokens: r.tokens, grads };
    };
    const ra = alone(a), rb = alone(b);
    model.zeroGrad();
    const packed = model.forwardBackward(row([...a, ...b]), {
      returnLogits: true,
      labels: row([...a, -100, ...b.slice(1)]),
      positions: row([...a.keys(), ...b.keys()]),
      docStarts: row([...a.map(() => 0), ...b.map(() => 7)]),
    });
    const V = 512;
    const pl = packed.logits!.toFloat32Array();
    expect(relErr(pl.subarray(0, 7 * V), Float64Array.from(ra.logits))).toBeLessThan(1e-5);
    expect(relErr(pl.subarray(7 * V), Float64Array.from(rb.logits))).toBeLessThan(1e-5);
    expect(packed.tokens).toBe(ra.tokens + rb.tokens);
    expect(Math.abs(packed.loss - (ra.loss * ra.tokens + rb.loss * rb.tokens) / packed.tokens)).toBeLessThan(1e-5);
    // The mean over both documents weights each one's gradient by its share of the tokens.
    const wa = ra.tokens / packed.tokens, wb = rb.tokens / packed.tokens;
    model.parameters().forEach((p, i) => {
      const want = Float64Array.from(ra.grads[i]!, (v, j) => wa * v + wb * rb.grads[i]![j]!);
      expect(normRelErr(p.grad.toFloat32Array(), want)).toBeLessThan(1e-4);
    });
  });
});

test('after merge and detach, a new adapter attaches and acts normally', () => {
  using model = loadModel(path.join(FIX, 'tiny-llama'));
  loadAdapter(model, path.join(FIX, 'tiny-llama'));
  model.mergeAdapters();
  for (const l of model.linears.values()) l.detach();
  const ids = tensor(BigInt64Array.from({ length: 12 }, (_, i) => BigInt(i + 3)), [1, 12]);
  const merged = model.forward(ids, { returnLogits: true }).logits!.toFloat32Array();
  // The same adapter again: it must be applied on top of the merged weights (not skipped).
  loadAdapter(model, path.join(FIX, 'tiny-llama'));
  const twice = model.forward(ids, { returnLogits: true }).logits!.toFloat32Array();
  expect(relErr(twice, Float64Array.from(merged))).toBeGreaterThan(1e-4);
  expect(() => model.mergeAdapters()).not.toThrow();
});
