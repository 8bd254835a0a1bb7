// GPU parity: every op of the backend on random inputs (odd shapes included), the GPU result against the
// CPU backend's on the same inputs, within the tolerance of the dtype. GPU allocations are poisoned with
// NaN (LORAKIT_GPU_POISON), so an output element a kernel forgets to write fails the comparison.
// Without a GPU backend the whole suite is skipped, and says so.
process.env.LORAKIT_GPU_POISON = '1';

import { AdamW, NF4Tensor, Tensor, backend, gradNorm, lora, nf4, ops, rand, randn, tensor, zeros } from '../../lib';
import { gpuCount } from '../../lib/backend';
import { native } from '../../lib/native/binding';
import { type DType } from '../../lib/tensor/dtype';

const GPU = 'cuda';
const available = gpuCount() > 0;
if (!available)
  console.warn(`\n*** GPU parity suite SKIPPED: no GPU backend is active (${backend().gpuUnavailableReason}) ***\n`);
const suite = available ? describe : describe.skip;

const owned: Tensor[] = [];
afterEach(() => {
  for (const t of owned.splice(0)) t.dispose();
});
function keep<T extends Tensor | undefined>(t: T): T {
  if (t) owned.push(t);
  return t;
}
const toGpu = (t: Tensor) => keep(t.to(GPU));

// Elementwise |gpu - cpu| <= atol + rtol |cpu|, NaN only where the CPU has NaN; reports the worst element.
function expectClose(gpu: Tensor, cpu: Tensor, rtol: number, atol: number, what: string): void {
  expect(gpu.device).toMatch(/^cuda:\d+$/);
  expect(gpu.shape).toEqual(cpu.shape);
  const g = gpu.toFloat32Array(), c = cpu.toFloat32Array();
  let worst = -1, excess = 0;
  for (let i = 0; i < c.length; i++) {
    const d = Math.abs(g[i]! - c[i]!);
    const bad = Number.isNaN(c[i]!) ? !Number.isNaN(g[i]!) : !(d <= atol + rtol * Math.abs(c[i]!));
    if (bad && (worst < 0 || !(d <= excess))) {
      worst = i;
      excess = d;
    }
  }
  if (worst >= 0) throw new Error(`${what}: element ${worst} is ${g[worst]} on the GPU, ${c[worst]} on the CPU (rtol ${rtol}, atol ${atol})`);
}

function expectEqualBits(gpu: Tensor, cpu: Tensor, what: string): void {
  const g = gpu.data(), c = cpu.data();
  expect(g.length).toBe(c.length);
  for (let i = 0; i < c.length; i++) if (g[i] !== c[i]) throw new Error(`${what}: element ${i} is ${g[i]} on the GPU, ${c[i]} on the CPU`);
}

// Tolerances: float32 kernels differ from the CPU's only in summation order.
const F32 = { rtol: 2e-4, atol: 2e-5 };
const BF16_IN = { rtol: 2e-3, atol: 2e-3 };

suite('GPU parity with the CPU backend', () => {
  test('tensor basics: fill, arange, upload/download round trip, casts between every dtype', () => {
    const dtypes: DType[] = ['float32', 'bfloat16', 'float16', 'int32', 'int64', 'uint8'];
    const src = keep(tensor(Float32Array.from({ length: 1001 }, (_, i) => (i % 7 === 0 ? -1 : 1) * (i * 0.37 - 50))));
    const gsrc = toGpu(src);
    for (const from of dtypes) {
      const c0 = keep(src.to(from)), g0 = keep(gsrc.to(from));
      expectEqualBits(g0, c0, `cast float32->${from}`);
      for (const to of dtypes) expectEqualBits(keep(g0.to(to)), keep(c0.to(to)), `cast ${from}->${to}`);
    }
    expectEqualBits(keep(ops.addInPlace(keep(zeros([5], { device: GPU })).fill(2.5), keep(tensor([1, 2, 3, 4, 5]).to(GPU)), -2)), tensor([0.5, -1.5, -3.5, -5.5, -7.5]), 'axpy');
  });

  test('rand and randn draw the same Philox streams', () => {
    for (const n of [1, 7, 4096 + 3]) {
      expectEqualBits(keep(rand([n], { seed: 11, device: GPU })), keep(rand([n], { seed: 11 })), `rand ${n}`);
      expectClose(keep(randn([n], { seed: 12, device: GPU })), keep(randn([n], { seed: 12 })), 1e-5, 1e-6, `randn ${n}`);
    }
  });

  const shapes: [number, number, number][] = [[1, 1, 1], [3, 5, 7], [17, 33, 65], [64, 64, 64], [129, 257, 95], [0, 8, 8]];
  for (const engine of ['library', 'fallback'] as const)
    test(`matmul (${engine} GEMM): dtypes, transposes, bias, alpha, odd shapes`, () => {
      const ordinal = 0;
      native().gpu!.setGemmFallback(ordinal, engine === 'fallback');
      try {
        for (const [m, k, n] of shapes)
          for (const [da, db] of [['float32', 'float32'], ['bfloat16', 'bfloat16'], ['float16', 'float16'], ['bfloat16', 'float32']] as [DType, DType][])
            for (const [ta, tb] of [[false, false], [true, false], [false, true], [true, true]]) {
              const a = keep(randn(ta ? [k, m] : [m, k], { seed: m + k, dtype: da }));
              const b = keep(randn(tb ? [n, k] : [k, n], { seed: n + 1, dtype: db }));
              const bias = keep(randn([n], { seed: 5 }));
              const opts = { transposeA: ta, transposeB: tb, bias, alpha: 0.75 };
              const tol = da === 'float32' && db === 'float32' ? F32 : BF16_IN;
              expectClose(keep(ops.matmul(toGpu(a), toGpu(b), { ...opts, bias: toGpu(bias) })), keep(ops.matmul(a, b, opts)), tol.rtol, tol.atol,
                `matmul ${m}x${k}x${n} ${da}${ta ? 'ᵀ' : ''}·${db}${tb ? 'ᵀ' : ''}`);
            }
        // Batched a [2, 3, m, k].
        const a = keep(randn([2, 3, 9, 20], { seed: 1 })), b = keep(randn([20, 11], { seed: 2 }));
        expectClose(keep(ops.matmul(toGpu(a), toGpu(b))), keep(ops.matmul(a, b)), F32.rtol, F32.atol, 'batched matmul');
      } finally {
        native().gpu!.setGemmFallback(ordinal, false);
      }
    });

  test('NF4: quantize is bit-identical (block sizes, double quant, odd n), dequantize and NF4 matmul agree', () => {
    for (const n of [1, 63, 64 * 33 + 5, 4096])
      for (const blockSize of [64, 128, 2048])
        for (const doubleQuant of [false, true])
          for (const dt of ['float32', 'bfloat16'] as DType[]) {
            const x = keep(randn([n], { seed: n + blockSize, dtype: dt }));
            using qc = nf4.quantize(x, { blockSize, doubleQuant });
            using qg = nf4.quantize(toGpu(x), { blockSize, doubleQuant });
            const what = `nf4 n=${n} block ${blockSize}${doubleQuant ? ' dq' : ''} ${dt}`;
            expectEqualBits(qg.packed, qc.packed, `${what} packed`);
            if (doubleQuant) {
              expectEqualBits(qg.absmaxCodes!, qc.absmaxCodes!, `${what} absmax codes`);
              expectClose(qg.absmaxScales!, qc.absmaxScales!, 1e-6, 0, `${what} absmax scales`);
              expect(Math.abs(qg.absmaxOffset! - qc.absmaxOffset!)).toBeLessThanOrEqual(1e-6 * Math.abs(qc.absmaxOffset!));
            } else expectEqualBits(qg.absmax!, qc.absmax!, `${what} absmax`);
            for (const out of ['float32', 'bfloat16', 'float16'] as DType[])
              expectClose(keep(nf4.dequantize(qg, { dtype: out })), keep(nf4.dequantize(qc, { dtype: out })), 1e-6, 0, `${what} -> ${out}`);
          }
    const w = keep(randn([48, 200], { seed: 3 })), x = keep(randn([13, 200], { seed: 4, dtype: 'bfloat16' }));
    using qc = nf4.quantize(w, { doubleQuant: true });
    using qg = nf4.quantize(toGpu(w), { doubleQuant: true });
    // Against a bf16 input the GPU dequantizes NF4 to bf16 before its GEMM, as bitsandbytes does (the CPU
    // keeps float32), so the reference multiplies by the bf16-rounded weight; against float32 both are exact.
    using wb = nf4.dequantize(qc, { dtype: 'bfloat16' });
    expectClose(keep(ops.matmul(toGpu(x), qg as NF4Tensor, { transposeB: true })), keep(ops.matmul(x, wb, { transposeB: true, outDtype: 'float32' })), 1e-4, 1e-5, 'bf16 x·NF4ᵀ');
    using x32 = x.to('float32');
    expectClose(keep(ops.matmul(toGpu(x32), qg as NF4Tensor, { transposeB: true })), keep(ops.matmul(x32, qc, { transposeB: true })), F32.rtol, F32.atol, 'f32 x·NF4ᵀ');
  });

  test('LoRA linear forward and backward: dropout, bias, accumulation, bf16 input, NF4 weight', () => {
    for (const [m, inF, outF, r] of [[1, 8, 4, 1], [37, 65, 33, 4], [128, 256, 384, 16]] as const)
      for (const dropout of [0, 0.1])
        for (const quantized of [false, true]) {
          const w = keep(randn([outF, inF], { seed: 1, std: 0.2 }));
          const bias = keep(randn([outF], { seed: 2 }));
          const a = keep(randn([r, inF], { seed: 3, std: 0.1 })), b = keep(randn([outF, r], { seed: 4, std: 0.1 }));
          const x = keep(randn([m, inF], { seed: 5, dtype: quantized ? 'bfloat16' : 'float32' }));
          const dy = keep(randn([m, outF], { seed: 6, dtype: quantized ? 'bfloat16' : 'float32' }));
          using qc = quantized ? nf4.quantize(w) : undefined;
          using qg = quantized ? nf4.quantize(toGpu(w)) : undefined;
          // The GPU dequantizes NF4 to the input's dtype (bf16 here) before its GEMMs; the CPU reference
          // gets that bf16 weight explicitly.
          using wq = qc ? nf4.dequantize(qc, { dtype: 'bfloat16' }) : undefined;
          const pc = { weight: wq ?? w, bias, loraA: a, loraB: b, scale: 2 };
          const pg = { weight: qg ?? toGpu(w), bias: toGpu(bias), loraA: toGpu(a), loraB: toGpu(b), scale: 2 };
          const what = `lora ${m}x${inF}->${outF} r${r} p=${dropout}${quantized ? ' nf4' : ''}`;
          const tol = quantized ? BF16_IN : F32;
          const fc = lora.linearForward(x, pc, { dropout, seed: 9 });
          const fg = lora.linearForward(toGpu(x), pg, { dropout, seed: 9 });
          [fc.y, fc.xa, fg.y, fg.xa].forEach(keep);
          expectClose(fg.y, fc.y, tol.rtol, tol.atol, `${what} y`);
          expectClose(fg.xa, fc.xa, tol.rtol, tol.atol, `${what} xa`);
          // Accumulate into existing gradients, as gradient accumulation does.
          const acc = () => ({ loraA: keep(randn([r, inF], { seed: 7 })), loraB: keep(randn([outF, r], { seed: 8 })), bias: keep(randn([outF], { seed: 10 })) });
          const ac = acc();
          const ag = { loraA: toGpu(ac.loraA), loraB: toGpu(ac.loraB), bias: toGpu(ac.bias) };
          const bc = lora.linearBackward(dy, x, fc.xa, pc, { dropout, seed: 9, accumulateInto: ac });
          const bg = lora.linearBackward(toGpu(dy), toGpu(x), fg.xa, pg, { dropout, seed: 9, accumulateInto: ag });
          keep(bc.dx);
          keep(bg.dx);
          expectClose(bg.dx!, bc.dx!, tol.rtol, tol.atol, `${what} dx`);
          expectClose(ag.loraA, ac.loraA, tol.rtol, tol.atol * 10, `${what} dA`);
          expectClose(ag.loraB, ac.loraB, tol.rtol, tol.atol * 10, `${what} dB`);
          expectClose(ag.bias, ac.bias, F32.rtol, F32.atol * 10, `${what} dbias`);
          if (!quantized) {
            const dwc = lora.linearBackward(dy, x, fc.xa, pc, { weightGrad: true, inputGrad: false });
            const dwg = lora.linearBackward(toGpu(dy), toGpu(x), fg.xa, pg, { weightGrad: true, inputGrad: false });
            [dwc.dLoraA, dwc.dLoraB, dwc.dBias, dwc.dWeight, dwg.dLoraA, dwg.dLoraB, dwg.dBias, dwg.dWeight].forEach(keep);
            expectClose(dwg.dWeight!, dwc.dWeight!, F32.rtol, F32.atol * 10, `${what} dW`);
            expectClose(dwg.dLoraA, dwc.dLoraA, F32.rtol, F32.atol * 10, `${what} dA (fresh)`);
          }
        }
  });

  test('AdamW (one launch over many tensors, with clipping and grad scale) and the gradient norm', () => {
    const shapes = [[1], [7], [33, 65], [768, 64], [4099]];
    const make = (device?: string) => shapes.map((s, i) => keep(randn(s, { seed: 100 + i, device: device as never })));
    const pc = make(), pg = make(GPU);
    const oc = new AdamW(pc, { lr: 1e-2, weightDecay: 0.1 });
    const og = new AdamW(pg, { lr: 1e-2, weightDecay: 0.1 });
    try {
      for (let step = 0; step < 5; step++) {
        const gc = shapes.map((s, i) => keep(randn(s, { seed: 1000 * step + i })));
        const gg = gc.map(toGpu);
        const nc = gradNorm(gc), ng = gradNorm(gg);
        expect(Math.abs(ng - nc)).toBeLessThanOrEqual(1e-6 * nc);
        oc.step(gc, { maxGradNorm: 1, gradScale: 0.5 });
        og.step(gg, { maxGradNorm: 1, gradScale: 0.5 });
      }
      pg.forEach((p, i) => expectClose(p, pc[i]!, 1e-5, 1e-6, `AdamW param ${i}`));
      pg.forEach((_, i) => expectClose(og.state(i).expAvgSq, oc.state(i).expAvgSq, 1e-5, 1e-9, `AdamW v ${i}`));
    } finally {
      oc.dispose();
      og.dispose();
    }
  });

  test('LayerNorm and RMSNorm forward and backward', () => {
    for (const [rows, dim] of [[1, 1], [3, 7], [65, 768], [8, 4099]]) {
      const x = keep(randn([rows, dim], { seed: dim, mean: 0.5, std: 2 })), w = keep(randn([dim], { seed: 1 })), b = keep(randn([dim], { seed: 2 }));
      const dy = keep(randn([rows, dim], { seed: 3 }));
      const lc = ops.layerNorm(x, w, b, 1e-5), lg = ops.layerNorm(toGpu(x), toGpu(w), toGpu(b), 1e-5);
      [lc.y, lg.y].forEach(keep);
      expectClose(lg.y, lc.y, F32.rtol, F32.atol, `layerNorm ${rows}x${dim}`);
      const gwc = keep(zeros([dim])).fill(1), gbc = keep(zeros([dim])).fill(-1);
      const gwg = toGpu(gwc), gbg = toGpu(gbc);
      expectClose(keep(ops.layerNormBackward(toGpu(dy), toGpu(x), toGpu(w), lg.saved, { weight: gwg, bias: gbg })),
        keep(ops.layerNormBackward(dy, x, w, lc.saved, { weight: gwc, bias: gbc })), F32.rtol, F32.atol, `layerNorm dx ${rows}x${dim}`);
      expectClose(gwg, gwc, F32.rtol, F32.atol * 10, `layerNorm dw ${rows}x${dim}`);
      expectClose(gbg, gbc, F32.rtol, F32.atol * 10, `layerNorm db ${rows}x${dim}`);
      const rc = ops.rmsNorm(x, w, 1e-6), rg = ops.rmsNorm(toGpu(x), toGpu(w), 1e-6);
      [rc.y, rg.y].forEach(keep);
      expectClose(rg.y, rc.y, F32.rtol, F32.atol, `rmsNorm ${rows}x${dim}`);
      const rwc = keep(zeros([dim])), rwg = toGpu(rwc);
      expectClose(keep(ops.rmsNormBackward(toGpu(dy), toGpu(x), toGpu(w), rg.saved, { weight: rwg })),
        keep(ops.rmsNormBackward(dy, x, w, rc.saved, { weight: rwc })), F32.rtol, F32.atol, `rmsNorm dx ${rows}x${dim}`);
      expectClose(rwg, rwc, F32.rtol, F32.atol * 10, `rmsNorm dw ${rows}x${dim}`);
    }
  });

  test('RoPE forward and inverse, default and explicit positions', () => {
    for (const [batch, seq, heads, hd] of [[1, 1, 1, 2], [2, 17, 3, 16], [3, 64, 4, 128]]) {
      const x = keep(randn([batch, seq, heads * hd], { seed: seq }));
      const pos = keep(tensor(Array.from({ length: batch * seq }, (_, i) => BigInt((i * 7) % 300)), [batch, seq], { dtype: 'int64' }));
      for (const positions of [undefined, pos])
        for (const inverse of [false, true]) {
          const c = keep(x.clone()), g = toGpu(x);
          ops.ropeInPlace(c, { heads, theta: 10000, positions, inverse });
          ops.ropeInPlace(g, { heads, theta: 10000, positions: positions && toGpu(positions), inverse });
          expectClose(g, c, 1e-5, 1e-5, `rope ${batch}x${seq}x${heads}x${hd}${positions ? ' pos' : ''}${inverse ? ' inverse' : ''}`);
        }
    }
  });

  test('causal attention forward and backward: grouped-query heads, packed documents, odd sizes', () => {
    for (const [batch, seq, hq, hkv, d] of [[1, 1, 1, 1, 8], [2, 19, 4, 2, 16], [1, 130, 6, 2, 24], [2, 64, 4, 4, 64], [1, 200, 2, 1, 128]]) {
      const q = keep(randn([batch, seq, hq * d], { seed: 1 })), k = keep(randn([batch, seq, hkv * d], { seed: 2 })), v = keep(randn([batch, seq, hkv * d], { seed: 3 }));
      const dout = keep(randn([batch, seq, hq * d], { seed: 4 }));
      const starts = keep(tensor(Array.from({ length: batch * seq }, (_, i) => BigInt(i % seq < seq / 3 ? 0 : Math.floor(seq / 3))), [batch, seq], { dtype: 'int64' }));
      for (const docStarts of [undefined, starts]) {
        const o = { heads: hq, kvHeads: hkv, docStarts };
        const og = { ...o, docStarts: docStarts && toGpu(docStarts) };
        const fc = ops.attention(q, k, v, o), fg = ops.attention(toGpu(q), toGpu(k), toGpu(v), og);
        [fc.out, fc.lse, fg.out, fg.lse].forEach(keep);
        const what = `attention b${batch} t${seq} h${hq}/${hkv} d${d}${docStarts ? ' packed' : ''}`;
        expectClose(fg.out, fc.out, 1e-4, 1e-5, `${what} out`);
        expectClose(fg.lse, fc.lse, 1e-5, 1e-5, `${what} lse`);
        const bc = ops.attentionBackward(dout, q, k, v, fc.out, fc.lse, o);
        const bg = ops.attentionBackward(toGpu(dout), toGpu(q), toGpu(k), toGpu(v), fg.out, fg.lse, og);
        for (const key of ['dq', 'dk', 'dv'] as const) {
          keep(bc[key]);
          keep(bg[key]);
          expectClose(bg[key], bc[key], 1e-3, 1e-4, `${what} ${key}`);
        }
      }
    }
  });

  test('document starts outside [0, t] are clamped to it on the GPU (never read back to be checked), as the CPU computes the clamped ones', () => {
    const [batch, seq, h, d] = [2, 9, 2, 8];
    const q = keep(randn([batch, seq, h * d], { seed: 5 })), k = keep(randn([batch, seq, h * d], { seed: 6 })), v = keep(randn([batch, seq, h * d], { seed: 7 }));
    const dout = keep(randn([batch, seq, h * d], { seed: 8 }));
    const bad = Array.from({ length: batch * seq }, (_, i) => (i % 3 === 0 ? -5 : i % 3 === 1 ? (i % seq) + 4 : 2));
    const clamped = bad.map((s, i) => Math.min(Math.max(s, 0), i % seq));
    const starts = (a: number[]) => keep(tensor(a.map(BigInt), [batch, seq], { dtype: 'int64' }));
    const oc = { heads: h, docStarts: starts(clamped) }, og = { heads: h, docStarts: toGpu(starts(bad)) };
    const fc = ops.attention(q, k, v, oc), fg = ops.attention(toGpu(q), toGpu(k), toGpu(v), og);
    [fc.out, fc.lse, fg.out, fg.lse].forEach(keep);
    expectClose(fg.out, fc.out, 1e-4, 1e-5, 'clamped starts out');
    expectClose(fg.lse, fc.lse, 1e-5, 1e-5, 'clamped starts lse');
    const bc = ops.attentionBackward(dout, q, k, v, fc.out, fc.lse, oc);
    const bg = ops.attentionBackward(toGpu(dout), toGpu(q), toGpu(k), toGpu(v), fg.out, fg.lse, og);
    for (const key of ['dq', 'dk', 'dv'] as const) expectClose(keep(bg[key]), keep(bc[key]), 1e-3, 1e-4, `clamped starts ${key}`);
  });

  test('GELU, SwiGLU, embedding and cross-entropy forward and backward', () => {
    for (const n of [1, 5, 4099]) {
      const x = keep(randn([n], { seed: n, std: 3 })), u = keep(randn([n], { seed: n + 1 })), dy = keep(randn([n], { seed: n + 2 }));
      expectClose(keep(ops.gelu(toGpu(x))), keep(ops.gelu(x)), 1e-5, 1e-6, `gelu ${n}`);
      expectClose(keep(ops.geluBackward(toGpu(dy), toGpu(x))), keep(ops.geluBackward(dy, x)), 1e-5, 1e-6, `gelu backward ${n}`);
      expectClose(keep(ops.swiglu(toGpu(x), toGpu(u))), keep(ops.swiglu(x, u)), 1e-5, 1e-6, `swiglu ${n}`);
      const sc = ops.swigluBackward(dy, x, u), sg = ops.swigluBackward(toGpu(dy), toGpu(x), toGpu(u));
      [sc.dGate, sc.dUp, sg.dGate, sg.dUp].forEach(keep);
      expectClose(sg.dGate, sc.dGate, 1e-5, 1e-6, `swiglu dgate ${n}`);
      expectClose(sg.dUp, sc.dUp, 1e-5, 1e-6, `swiglu dup ${n}`);
    }
    for (const [n, vocab, dim] of [[1, 3, 1], [37, 50, 24], [2048, 1000, 768]]) {
      const ids = keep(tensor(Array.from({ length: n }, (_, i) => BigInt((i * 7919) % vocab)), [n], { dtype: 'int64' }));
      const table = keep(randn([vocab, dim], { seed: 1 })), dout = keep(randn([n, dim], { seed: 2 }));
      expectClose(keep(ops.embedding(toGpu(ids), toGpu(table))), keep(ops.embedding(ids, table)), 0, 0, `embedding ${n}x${dim}`);
      const dtc = keep(randn([vocab, dim], { seed: 3 })), dtg = toGpu(dtc);
      ops.embeddingBackward(ids, dout, dtc);
      ops.embeddingBackward(toGpu(ids), toGpu(dout), dtg);
      expectClose(dtg, dtc, 1e-5, 1e-5, `embedding backward ${n}x${dim}`);
    }
    for (const [rows, vocab] of [[1, 2], [33, 1000], [64, 50257], [4, 131072]]) {
      const logits = keep(randn([rows, vocab], { seed: vocab, std: 2 }));
      const labels = keep(tensor(Array.from({ length: rows }, (_, i) => BigInt(i % 5 === 3 ? -100 : (i * 104729) % vocab)), [rows], { dtype: 'int64' }));
      const c = keep(logits.clone()), g = toGpu(logits);
      const lc = ops.crossEntropy(c, labels, { gradInPlace: true, gradScale: 0.5 });
      const lg = ops.crossEntropy(g, toGpu(labels), { gradInPlace: true, gradScale: 0.5 });
      expect(lg.count).toBe(lc.count);
      expect(Math.abs(lg.loss - lc.loss)).toBeLessThanOrEqual(1e-5 * Math.abs(lc.loss) + 1e-6);
      expectClose(g, c, 1e-4, 1e-8, `cross-entropy dlogits ${rows}x${vocab}`);
    }
  });

  test('column copies and device errors', () => {
    const src = keep(randn([9, 12], { seed: 1 })), dst = keep(randn([9, 20], { seed: 2 }));
    const gsrc = toGpu(src), gdst = toGpu(dst);
    ops.copyColumns(src, 3, dst, 5, 7, true);
    ops.copyColumns(gsrc, 3, gdst, 5, 7, true);
    expectClose(gdst, dst, 0, 1e-7, 'copyColumns');
    expect(() => ops.matmul(gsrc, keep(randn([12, 2])))).toThrow(/matmul: 'b' is on cpu but 'a' is on cuda:0; move tensors with .to\(device\) first/);
  });
});
