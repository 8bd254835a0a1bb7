// Issue #11, the native and tensor layer: metadata that cannot be rewritten, sizes whose products are
// checked before a kernel trusts them, integers that are stored exactly or refused, NF4 input that is
// finite or refused, and create/dispose cycles that do not grow memory. Anything that crashed or spun
// before the fix runs in a child process, so that a segfault fails its test instead of killing jest.
import { spawnSync } from 'node:child_process';
import * as path from 'node:path';
import { inspect } from 'node:util';
import { LorakitRangeError, arange, full, memory, nf4, tensor, zeros } from '../lib';
import { NF4_CODE } from '../lib/nf4';

const dist = path.resolve(__dirname, '../dist');

// Runs `body` (L = lorakit, N = the addon's functions) in a fresh Node process and returns the JSON it
// returned; a crash, a signal or a hang fails with what the child printed.
function child(body: string, args: string[] = []): unknown {
  const script =
    `'use strict'; const L = require(${JSON.stringify(dist)}); const N = require(${JSON.stringify(path.join(dist, 'native/binding.js'))}).native();` +
    `const out = (() => { ${body} })(); process.stdout.write(JSON.stringify(out));`;
  const r = spawnSync(process.execPath, [...args, '-e', script], { encoding: 'utf8', timeout: 60_000 });
  if (r.status !== 0) throw new Error(`child failed (${r.status ?? r.signal}): ${r.stderr.slice(-2000)}`);
  return JSON.parse(r.stdout);
}

describe('metadata cannot be rewritten (issue #11, item 5)', () => {
  test("the issue's attack: rewritten shapes, then matmul, gives an error or the true product, never a crash", () => {
    // Sloppy mode, as a plain script: the assignments must not take; strict mode: they must throw.
    const attack =
      `const a = L.tensor([[1, 2], [3, 4]]), b = L.tensor([[5, 6], [7, 8]]);` +
      `a.shape = [4096, 2 ** 52]; b.shape = [2 ** 52, 4096]; const c = L.ops.matmul(a, b);` +
      `a.dtype = 'bfloat16'; a.device = 'cuda:7'; process.stdout.write(JSON.stringify([a.shape, a.dtype, a.device, c.toArray()]));`;
    const r = spawnSync(process.execPath, ['-e', `const L = require(${JSON.stringify(dist)});` + attack], { encoding: 'utf8', timeout: 60_000 });
    expect(r.signal).toBeNull();
    expect(r.stderr).toBe('');
    expect(JSON.parse(r.stdout)).toEqual([[2, 2], 'float32', 'cpu', [[19, 22], [43, 50]]]);

    const strict = child(`
      const a = L.tensor([[1, 2], [3, 4]]);
      const tries = {
        shape: () => { a.shape = [4096, 2 ** 52]; },
        dim: () => { a.shape[1] = 2 ** 52; },
        dtype: () => { a.dtype = 'int64'; },
        device: () => { a.device = 'cuda:0'; },
        define: () => { Object.defineProperty(a, 'shape', { value: [4096, 2 ** 52] }); },
        nf4BlockSize: () => { L.nf4.quantize(L.zeros([64])).blockSize = 2 ** 40; },
        nf4Shape: () => { L.nf4.quantize(L.zeros([64])).shape = [2 ** 40]; },
      };
      const out = {};
      for (const [k, f] of Object.entries(tries)) try { f(); out[k] = 'assigned'; } catch (e) { out[k] = e.constructor.name; }
      out.after = [a.shape, a.dtype, a.device, a.toArray()];
      return out;`);
    expect(strict).toEqual({
      shape: 'TypeError', dim: 'TypeError', dtype: 'TypeError', device: 'TypeError', define: 'TypeError',
      nf4BlockSize: 'TypeError', nf4Shape: 'TypeError', after: [[2, 2], 'float32', 'cpu', [[1, 2], [3, 4]]],
    });
  });

  test('assigning metadata throws in this (strict) module too, and the tensor is unchanged', () => {
    const t = zeros([2, 3]);
    expect(() => {
      (t as unknown as { shape: number[] }).shape = [3, 2];
    }).toThrow(TypeError);
    expect(() => {
      (t.shape as number[])[0] = 6;
    }).toThrow(TypeError);
    expect([t.shape, t.numel, t.nbytes]).toEqual([[2, 3], 6, 24]);
    // Getters do not print: a tensor says what it is through toString instead of as `Tensor {}`.
    expect(inspect(t)).toBe('Tensor(float32, [2, 3], cpu)');
    t.dispose();
  });
});

describe('native size products are checked (issue #11, item 5)', () => {
  // Every case names sizes whose product wraps around 64 bits (to 0 bytes, which a 64-byte storage
  // "holds"), or exceeds 2^53; the addon must refuse each with ERR_OUT_OF_RANGE before a kernel runs.
  test('direct addon calls with huge dimensions throw a clear error instead of crashing or spinning', () => {
    const out = child(`
      const s = () => new N.Storage(64, 'cpu');
      const f32 = (rows, cols) => ({ s: s(), dtype: 0, rows, cols, trans: false });
      const H = 2 ** 32, K = 2 ** 52;
      const cases = {
        gemm: () => N.gemm({ a: f32(4096, K), b: f32(K, 4096), c: s(), m: 4096, n: 4096, k: K, alpha: 1, beta: 0, bias: null }),
        gemmNf4: () => N.gemm({ a: f32(H, H), b: { rows: H, cols: H, trans: false, nf4: { packed: s(), absmax: s(), blockSize: 64 } }, c: s(), m: H, n: H, k: H, alpha: 1, beta: 0, bias: null }),
        lora: () => N.loraForward({ m: H, in: H, out: 1, r: 1, scale: 1, dropout: 0, seed: 0, x: f32(H, H), w: f32(1, H), a: s(), b: s(), y: s(), xa: s() }),
        attention: () => N.attentionForward({ q: s(), k: s(), v: s(), out: s(), lse: s(), batch: H, seq: H, hq: 1, hkv: 1, d: 1, scale: 1 }),
        attentionBackward: () => N.attentionBackward({ q: s(), k: s(), v: s(), out: s(), lse: s(), dout: s(), dq: s(), dk: s(), dv: s(), batch: H, seq: H, hq: 1, hkv: 1, d: 1, scale: 1 }),
        rope: () => N.rope({ x: s(), tokens: H, heads: 2 ** 16, headDim: 2 ** 16, seq: 1, theta: 10000, inverse: false }),
        rmsNorm: () => N.rmsNormForward({ x: s(), w: s(), y: s(), rstd: s(), rows: H, dim: H, eps: 1e-5 }),
        embedding: () => N.embeddingForward({ ids: s(), table: s(), out: s(), n: H, dim: H, vocab: 1 }),
        crossEntropy: () => N.crossEntropy({ logits: s(), labels: s(), rows: H, vocab: H, ignoreIndex: -100, gradScale: 1, wantGrad: false }),
        copy2d: () => N.copy2d({ src: s(), srcLd: H, srcOffset: 0, dst: s(), dstLd: H, dstOffset: 0, rows: H, cols: 1, accumulate: false }),
        svd: () => N.svdLeft({ w: s(), m: H, n: H, k: 1, u: s(), s: s() }),
        negative: () => N.gemm({ a: f32(-H, -H), b: f32(-H, 1), c: s(), m: -H, n: 1, k: -H, alpha: 1, beta: 0, bias: null }),
      };
      const out = {};
      for (const [k, f] of Object.entries(cases)) try { f(); out[k] = 'ran'; } catch (e) { out[k] = e.code + ' ' + e.message; }
      return out;`) as Record<string, string>;
    for (const [name, result] of Object.entries(out)) {
      expect([name, result]).toEqual([name, expect.stringMatching(/^ERR_OUT_OF_RANGE \w/)]);
      expect([name, result]).toEqual([name, expect.stringMatching(/2\^53|negative|holds \d+ bytes, the call needs/)]);
    }
    // The products themselves are named, with their factors.
    expect(out.gemm).toBe(`ERR_OUT_OF_RANGE matmul: 'a' would need 4096 x ${2 ** 52}, more than the 2^53 a call can address; the sizes are wrong`);
    expect(out.attention).toMatch(/^ERR_OUT_OF_RANGE attention: 'q' would need 4294967296 x 4294967296 x 1 x 1/);
  });
});

describe('integers are stored exactly or refused (issue #11, item 10)', () => {
  const I64_MAX = 2n ** 63n - 1n, I64_MIN = -(2n ** 63n);

  test('the extremes of each integer dtype round-trip exactly', () => {
    expect(tensor([I64_MIN, I64_MAX, -1n]).toArray()).toEqual([I64_MIN, I64_MAX, -1n]);
    expect(tensor([2 ** 53, -(2 ** 53)], undefined, { dtype: 'int64' }).toArray()).toEqual([2n ** 53n, -(2n ** 53n)]);
    expect(tensor([-(2 ** 31), 2 ** 31 - 1, 7n], undefined, { dtype: 'int32' }).toArray()).toEqual([-(2 ** 31), 2 ** 31 - 1, 7]);
    expect(tensor([0, 255, 3n], undefined, { dtype: 'uint8' }).toArray()).toEqual([0, 255, 3]);
    expect(tensor(new Float64Array([-(2 ** 31), 5]), [2], { dtype: 'int32' }).toArray()).toEqual([-(2 ** 31), 5]);
  });

  const rejected: [string, () => unknown, RegExp][] = [
    ['2n ** 70n into int64 (the issue: stored 0n)', () => tensor([2n ** 70n]), /tensor: element 0 \(1180591620717411303424\) is not representable as int64: int64 holds integers in \[-9223372036854775808, 9223372036854775807\]/],
    ['2n ** 63n into int64', () => tensor([1n, 2n ** 63n]), /element 1 \(9223372036854775808\) is not representable as int64/],
    ['-(2n ** 63n) - 1n into int64', () => tensor([I64_MIN - 1n]), /element 0 \(-9223372036854775809\) is not representable as int64/],
    ['the number 2 ** 63 into int64', () => tensor([2 ** 63], undefined, { dtype: 'int64' }), /element 0 \(9223372036854776000\) is not representable as int64/],
    ['1e20 from a Float64Array into int64', () => tensor(new Float64Array([0, 1e20]), [2], { dtype: 'int64' }), /element 1 \(100000000000000000000\) is not representable as int64/],
    ['0.5 into int64', () => tensor([0.5], undefined, { dtype: 'int64' }), /element 0 \(0\.5\) is not an integer; int64 holds integers/],
    ['NaN into int64', () => tensor([1, NaN], undefined, { dtype: 'int64' }), /element 1 \(NaN\) is not an integer/],
    ['Infinity into int32', () => tensor([Infinity], undefined, { dtype: 'int32' }), /element 0 \(Infinity\) is not an integer; int32 holds integers in \[-2147483648, 2147483647\]/],
    ['NaN into uint8', () => tensor([NaN], undefined, { dtype: 'uint8' }), /element 0 \(NaN\) is not an integer; uint8 holds integers in \[0, 255\]/],
    ['2 ** 31 into int32', () => tensor([2 ** 31], undefined, { dtype: 'int32' }), /element 0 \(2147483648\) is not representable as int32/],
    ['a bigint 2n ** 40n into int32', () => tensor([2n ** 40n], undefined, { dtype: 'int32' }), /element 0 \(1099511627776\) is not representable as int32/],
    ['a BigInt64Array into uint8', () => tensor(new BigInt64Array([255n, 256n]), [2], { dtype: 'uint8' }), /element 1 \(256\) is not representable as uint8/],
    ['-1 into uint8', () => tensor([-1], undefined, { dtype: 'uint8' }), /element 0 \(-1\) is not representable as uint8/],
    ['full: 2 ** 31 as int32', () => full([2], 2 ** 31, { dtype: 'int32' }), /full: value \(2147483648\) is not representable as int32/],
    ['full: 1.5 as int64', () => full([2], 1.5, { dtype: 'int64' }), /full: value \(1\.5\) is not an integer/],
    ['fill: NaN into int32', () => zeros([2], { dtype: 'int32' }).fill(NaN), /Tensor\.fill: value \(NaN\) is not an integer/],
    ['fill: 256 into uint8', () => zeros([2], { dtype: 'uint8' }).fill(256), /Tensor\.fill: value \(256\) is not representable as uint8/],
    ['arange past int32', () => arange(2 ** 31 - 2, 2 ** 31 + 1, 1, { dtype: 'int32' }), /arange: the last value \(2147483648\) is not representable as int32/],
    ['arange below uint8', () => arange(-1, 3, 1, { dtype: 'uint8' }), /arange: start \(-1\) is not representable as uint8/],
  ];
  test.each(rejected)('%s', (_name, call, message) => {
    expect(call).toThrow(LorakitRangeError);
    expect(call).toThrow(message);
    try {
      call();
    } catch (e) {
      expect((e as { code: string }).code).toBe('ERR_OUT_OF_RANGE');
    }
  });

  test('the addon refuses a non-integer fill of an integer dtype even when lib/ is bypassed', () => {
    const out = child(`
      const s = new N.Storage(64, 'cpu');
      const r = {};
      for (const [k, a] of Object.entries({ nan: { dtype: 3, n: 4, value: NaN }, big: { dtype: 5, n: 4, value: 300 }, arange: { dtype: 3, n: 4, start: 2 ** 31 - 2, step: 1 } }))
        try { 'start' in a ? N.arange({ dst: s, ...a }) : N.fill({ dst: s, ...a }); r[k] = 'ran'; } catch (e) { r[k] = e.code; }
      return r;`);
    expect(out).toEqual({ nan: 'ERR_OUT_OF_RANGE', big: 'ERR_OUT_OF_RANGE', arange: 'ERR_OUT_OF_RANGE' });
  });
});

describe('NF4 refuses non-finite input (issue #11, item 10)', () => {
  // bitsandbytes' quantize_4bit codes a block holding +inf as NaN around a -inf (absmax inf, inf / inf
  // is NaN, and NaN takes code 0, -1.0): silently wrong weights. lorakit refuses the tensor instead,
  // naming it and the first bad element.
  test.each([
    ['float32', Infinity, 70],
    ['float32', -Infinity, 0],
    ['float32', NaN, 127],
    ['bfloat16', Infinity, 64],
    ['float16', NaN, 1],
    ['float16', 70000, 3], // beyond float16: rounds to +inf on the way in
  ] as const)('%s holding %s at element %i', (dtype, bad, at) => {
    const values = Array.from({ length: 128 }, (_, i) => (i === at || (i > at && i % 50 === 0) ? bad : Math.sin(i)));
    using t = tensor(values, [2, 64], { dtype });
    const row = Math.floor(at / 64), col = at % 64;
    expect(() => nf4.quantize(t, { name: 'model.layers.0.mlp.up_proj.weight' })).toThrow(
      new RegExp(`nf4\\.quantize: 'model\\.layers\\.0\\.mlp\\.up_proj\\.weight' \\(a ${dtype} tensor of shape \\[2, 64\\]\\) holds NaN or an infinity at element ${at} \\(\\[${row}, ${col}\\]\\)`),
    );
    expect(() => nf4.quantize(t, { doubleQuant: true })).toThrow(LorakitRangeError);
  });

  test('finite input still quantizes to the NF4 code book exactly', () => {
    // Scaled code values come back exactly: each is absmax times a code.
    const absmax = 3;
    const values = Array.from({ length: 64 }, (_, i) => NF4_CODE[i % 16]! * absmax);
    using t = tensor(values, [64]);
    using q = nf4.quantize(t);
    using back = nf4.dequantize(q);
    expect(Array.from(back.toFloat32Array())).toEqual(Array.from(Float32Array.from(values)));
  });
});

describe('memory (issue #11, item 11)', () => {
  test('20,000 create/dispose cycles of small tensors do not grow resident memory', () => {
    // 16 KiB tensors, made three ways, in a synchronous loop (N-API wrappers are only finalized when the
    // event loop turns). Before the fix each cycle took fresh pages: about 300 MB for this loop.
    const r = child(`
      const src = new Float32Array(4096);
      const cycle = (i) => {
        const t = i % 3 === 0 ? L.tensor(src, [4096]) : i % 3 === 1 ? L.zeros([64, 64]) : L.full([4096], 1);
        t.dispose();
      };
      for (let i = 0; i < 2000; i++) cycle(i);
      const before = process.memoryUsage().rss;
      for (let i = 0; i < 20000; i++) cycle(i);
      const grown = process.memoryUsage().rss - before;
      return { grownMB: grown / 2 ** 20, mem: L.memory() };
    `) as { grownMB: number; mem: { tensors: number; hostBytes: number; hostCachedBytes: number } };
    expect(r.grownMB).toBeLessThan(30);
    expect(r.mem.tensors).toBe(0);
    expect(r.mem.hostBytes).toBe(0);
    // The freed block is kept for the next tensor of its size class, and only that.
    expect(r.mem.hostCachedBytes).toBe(16384);
  });

  test('small freed blocks are reused by the next tensor of the same size class', () => {
    const t = zeros([1000]); // 4000 bytes: the 4 KiB class
    const base = memory().hostCachedBytes;
    t.dispose();
    expect(memory().hostCachedBytes).toBe(base + 4096);
    const again = full([1024], 2);
    expect(memory().hostCachedBytes).toBe(base);
    expect(Array.from(again.toFloat32Array())).toEqual(new Array(1024).fill(2));
    again.dispose();
  });
});

describe('a quantized load names the weight that holds a non-finite value', () => {
  test('loadModel({ quantize: true }) on a checkpoint with an inf in one projection', async () => {
    const fs = await import('node:fs');
    const os = await import('node:os');
    const { openSafetensors, writeSafetensors } = await import('../lib/io');
    const { loadModel } = await import('../lib/models');
    const src = path.join(__dirname, 'fixtures/peft/tiny-llama');
    const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'lorakit-nf4-inf-'));
    try {
      fs.copyFileSync(path.join(src, 'config.json'), path.join(dir, 'config.json'));
      const file = openSafetensors(path.join(src, 'model.safetensors'));
      const bad = 'model.layers.1.self_attn.v_proj.weight';
      const tensors = Object.fromEntries(file.keys().map((k) => [k, file.load(k)]));
      file.close();
      const old = tensors[bad]!;
      const values = old.toFloat32Array();
      values[5] = Infinity;
      tensors[bad] = tensor(values, [...old.shape]);
      old.dispose();
      writeSafetensors(path.join(dir, 'model.safetensors'), tensors);
      for (const t of Object.values(tensors)) t.dispose();
      expect(() => loadModel(dir, { quantize: true })).toThrow(`'${bad}'`);
    } finally {
      fs.rmSync(dir, { recursive: true, force: true });
    }
  });
});
