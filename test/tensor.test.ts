import { execFileSync } from 'node:child_process';
import * as path from 'node:path';
import {
  DisposedError, LorakitRangeError, LorakitTypeError, Tensor, arange, full, manualSeed, memory, ones, rand, randn, tensor, zeros,
} from '../lib';
import { bf16Bits, bf16Value, f16Bits, f16Value, randomArray } from './helpers/reference';
import { missingDevice, missingDeviceError } from './helpers/machine';

describe('creating tensors', () => {
  test('from a Float32Array with a shape', () => {
    const t = tensor(new Float32Array([1, 2, 3, 4, 5, 6]), [2, 3]);
    expect(t.shape).toEqual([2, 3]);
    expect(t.dtype).toBe('float32');
    expect(t.device).toBe('cpu');
    expect(Array.from(t.toFloat32Array())).toEqual([1, 2, 3, 4, 5, 6]);
    expect(t.toArray()).toEqual([[1, 2, 3], [4, 5, 6]]);
    t.dispose();
  });

  test('from nested arrays, shape inferred', () => {
    const t = tensor([[[1], [2]], [[3], [4]]]);
    expect(t.shape).toEqual([2, 2, 1]);
    expect(t.toArray()).toEqual([[[1], [2]], [[3], [4]]]);
    const s = tensor(7);
    expect(s.shape).toEqual([]);
    expect(s.toArray()).toBe(7);
  });

  test('every dtype round-trips its TypedArray', () => {
    const cases: [ArrayBufferView, 'int32' | 'int64' | 'uint8' | 'bfloat16' | 'float16'][] = [
      [new Int32Array([-2147483648, 0, 2147483647]), 'int32'],
      [new BigInt64Array([-(2n ** 63n), 0n, 2n ** 63n - 1n]), 'int64'],
      [new Uint8Array([0, 128, 255]), 'uint8'],
      [new Uint16Array([0x3f80, 0xbf80, 0x7f80]), 'bfloat16'],
      [new Uint16Array([0x3c00, 0xc000, 0x7c00]), 'float16'],
    ];
    for (const [arr, dtype] of cases) {
      const t = tensor(arr, [3], { dtype });
      expect(t.dtype).toBe(dtype);
      expect(t.nbytes).toBe(arr.byteLength);
      expect(Array.from(t.data() as ArrayLike<unknown>)).toEqual(Array.from(arr as unknown as ArrayLike<unknown>));
    }
    expect(tensor(new Uint16Array([0x3f80, 0xc000]), [2], { dtype: 'bfloat16' }).toArray()).toEqual([1, -2]);
    expect(tensor(new Uint16Array([0x3c00, 0x0001]), [2], { dtype: 'float16' }).toArray()).toEqual([1, 2 ** -24]);
    expect(tensor([[1n, 2n]]).toArray()).toEqual([[1n, 2n]]);
  });

  test('numbers into 16-bit dtypes round to nearest even', () => {
    const xs = Array.from(randomArray(2000, 11, 100));
    xs.push(1 + 2 ** -8, 1 + 3 * 2 ** -8, 65519, 65520, 2 ** -25, 3 * 2 ** -26, -0);
    const b = tensor(xs, [xs.length], { dtype: 'bfloat16' }).data() as Uint16Array;
    const h = tensor(xs, [xs.length], { dtype: 'float16' }).data() as Uint16Array;
    xs.forEach((x, i) => {
      expect(b[i]).toBe(bf16Bits(Math.fround(x)));
      expect(h[i]).toBe(f16Bits(Math.fround(x)));
    });
  });

  test('zeros, ones, full, arange', () => {
    expect(zeros([2, 2]).toArray()).toEqual([[0, 0], [0, 0]]);
    expect(ones([3], { dtype: 'int32' }).toArray()).toEqual([1, 1, 1]);
    expect(full([2], 0.1, { dtype: 'bfloat16' }).toArray()).toEqual([bf16Value(bf16Bits(0.1)), bf16Value(bf16Bits(0.1))]);
    expect(arange(5).toArray()).toEqual([0n, 1n, 2n, 3n, 4n]);
    expect(arange(1, 2, 0.25).toArray()).toEqual([1, 1.25, 1.5, 1.75]);
    expect(arange(5, 0, -2, { dtype: 'int32' }).toArray()).toEqual([5, 3, 1]);
    expect(arange(3, 3).shape).toEqual([0]);
    expect(zeros([0, 4]).toFloat32Array().length).toBe(0);
  });
});

describe('casts', () => {
  test('float32 -> bfloat16 is round-to-nearest-even, including ties and NaN', () => {
    const bits = new Uint32Array([0x3f808000, 0x3f818000, 0x3f808001, 0x7f7fffff, 0xff800000, 0x7fc00001, 0x00008000, 0x80018000]);
    const f = tensor(new Float32Array(bits.buffer), [bits.length]);
    const b = f.to('bfloat16').data() as Uint16Array;
    expect(Array.from(b)).toEqual([0x3f80, 0x3f82, 0x3f81, 0x7f80, 0xff80, 0x7fc0, 0x0000, 0x8002]);
    const rnd = randomArray(5000, 3, 1e4);
    const rb = tensor(rnd, [rnd.length]).to('bfloat16').data() as Uint16Array;
    rnd.forEach((x, i) => expect(rb[i]).toBe(bf16Bits(x)));
  });

  test('every float16 value survives float16 -> float32 -> float16', () => {
    const all = new Uint16Array(65536).map((_, i) => i);
    const f = tensor(all, [65536], { dtype: 'float16' }).to('float32');
    const back = f.to('float16').data() as Uint16Array;
    const vals = f.toFloat32Array();
    for (let i = 0; i < 65536; i++) {
      const v = f16Value(i);
      if (Number.isNaN(v)) {
        expect(Number.isNaN(vals[i])).toBe(true);
        expect((back[i]! & 0x7c00) === 0x7c00 && (back[i]! & 0x3ff) !== 0).toBe(true);
      } else {
        expect(vals[i]).toBe(v);
        expect(back[i]).toBe(i);
      }
    }
  });

  test('float32 -> float16 rounds to nearest even across normal, subnormal and overflow ranges', () => {
    const xs = [...randomArray(3000, 5, 70000), ...randomArray(2000, 6, 2 ** -13), ...randomArray(1000, 7, 2 ** -23)];
    const h = tensor(xs, [xs.length]).to('float16').data() as Uint16Array;
    xs.forEach((x, i) => expect(h[i]).toBe(f16Bits(Math.fround(x))));
  });

  test('floats to integers truncate and saturate; integers convert exactly', () => {
    const t = tensor([1.9, -1.9, 3e9, -3e9, NaN, 255.5, -0.5]);
    expect(t.to('int32').toArray()).toEqual([1, -1, 2147483647, -2147483648, 0, 255, 0]);
    expect(t.to('uint8').toArray()).toEqual([1, 0, 255, 0, 0, 255, 0]);
    const big = tensor(new BigInt64Array([2n ** 62n + 1n, -5n]), [2]);
    expect(big.to('int64').toArray()).toEqual([2n ** 62n + 1n, -5n]);
    expect(big.to('int32').toArray()).toEqual([1, -5]);
    expect(tensor([7, 200], undefined, { dtype: 'uint8' }).to('int64').toArray()).toEqual([7n, 200n]);
  });
});

describe('random numbers', () => {
  test('seeded draws repeat and differ between seeds', () => {
    const a = randn([1000], { seed: 42 }).toFloat32Array();
    const b = randn([1000], { seed: 42 }).toFloat32Array();
    const c = randn([1000], { seed: 43 }).toFloat32Array();
    expect(Array.from(a)).toEqual(Array.from(b));
    expect(Array.from(a)).not.toEqual(Array.from(c));
  });

  test('moments match the distributions', () => {
    const n = 200000;
    const z = randn([n], { seed: 1, mean: 2, std: 3 }).toFloat32Array();
    const u = rand([n], { seed: 2, low: -1, high: 3 }).toFloat32Array();
    const mean = (x: Float32Array) => x.reduce((s, v) => s + v, 0) / x.length;
    const variance = (x: Float32Array, m: number) => x.reduce((s, v) => s + (v - m) ** 2, 0) / x.length;
    // Standard errors: mean 3/sqrt(n) = 0.0067; 5 sigma bounds.
    expect(Math.abs(mean(z) - 2)).toBeLessThan(0.034);
    expect(Math.abs(Math.sqrt(variance(z, 2)) - 3)).toBeLessThan(0.03);
    expect(Math.abs(mean(u) - 1)).toBeLessThan(0.02);
    expect(Math.abs(variance(u, 1) - 16 / 12)).toBeLessThan(0.02);
    expect(u.reduce((a, v) => Math.min(a, v), Infinity)).toBeGreaterThanOrEqual(-1);
    expect(u.reduce((a, v) => Math.max(a, v), -Infinity)).toBeLessThan(3);
    // Kolmogorov-Smirnov against the normal CDF (erf via Abramowitz-Stegun 7.1.26, error < 1.5e-7).
    const erf = (x: number) => {
      const t = 1 / (1 + 0.3275911 * Math.abs(x));
      const y = 1 - ((((1.061405429 * t - 1.453152027) * t + 1.421413741) * t - 0.284496736) * t + 0.254829592) * t * Math.exp(-x * x);
      return x >= 0 ? y : -y;
    };
    const s = Array.from(z).map((v) => (v - 2) / 3).sort((p, q) => p - q);
    let d = 0;
    s.forEach((v, i) => (d = Math.max(d, Math.abs(0.5 * (1 + erf(v / Math.SQRT2)) - (i + 1) / n))));
    expect(d).toBeLessThan(1.63 / Math.sqrt(n)); // KS critical value at alpha = 0.01
  });

  test('the global stream advances and manualSeed resets it', () => {
    manualSeed(7);
    const a = randn([4]).toFloat32Array();
    const b = randn([4]).toFloat32Array();
    manualSeed(7);
    const ab = randn([8]).toFloat32Array();
    expect(Array.from(ab)).toEqual([...a, ...b]);
  });

  test('the same numbers with one thread as with many', () => {
    const script = `const L=require(${JSON.stringify(path.resolve(__dirname, '../dist'))});` +
      `const x=L.randn([100003],{seed:9}).toFloat32Array();const u=L.rand([77777],{seed:3}).toFloat32Array();` +
      `let h=0n;for(const a of [x,u])for(const v of new Uint32Array(a.buffer))h=(h*1000003n+BigInt(v))%(2n**61n-1n);` +
      `console.log(L.backend().cpu.threads+' '+h)`;
    const run = (threads: string) => execFileSync(process.execPath, ['-e', script], { env: { ...process.env, LORAKIT_NUM_THREADS: threads } }).toString().trim().split(' ');
    const one = run('1'), three = run('3');
    expect(one[0]).toBe('1');
    expect(three[0]).toBe('3');
    expect(one[1]).toBe(three[1]);
  });
});

describe('lifetimes', () => {
  test('dispose frees native memory and later use throws', () => {
    const before = memory();
    const t = zeros([1000]);
    expect(memory().hostBytes).toBe(before.hostBytes + 4000);
    expect(memory().tensors).toBe(before.tensors + 1);
    t.dispose();
    expect(t.disposed).toBe(true);
    expect(memory().hostBytes).toBe(before.hostBytes);
    expect(memory().tensors).toBe(before.tensors);
    expect(() => t.toFloat32Array()).toThrow(DisposedError);
    expect(() => t.to('bfloat16')).toThrow(/disposed/);
    t.dispose(); // idempotent
  });

  test('freed large blocks are kept for reuse by the next tensor of the same size', () => {
    const n = 300_001; // 1.2 MB: a cached size class
    const first = zeros([n]);
    const before = memory().hostCachedBytes;
    first.dispose();
    const cached = memory().hostCachedBytes;
    expect(cached - before).toBeGreaterThanOrEqual(n * 4);
    const again = ones([n]);
    expect(memory().hostCachedBytes).toBe(before);
    expect(again.toFloat32Array().every((v) => v === 1)).toBe(true);
    again.dispose();
  });

  test('Symbol.dispose releases the tensor at the end of a scope', () => {
    const before = memory().hostBytes;
    let escaped: Tensor | undefined;
    {
      using t = ones([256]);
      escaped = t;
      expect(memory().hostBytes).toBe(before + 1024);
    }
    expect(escaped.disposed).toBe(true);
    expect(memory().hostBytes).toBe(before);
  });

  test('reshape shares storage; the bytes go when the last view is disposed', () => {
    const before = memory().hostBytes;
    const t = arange(0, 12, 1, { dtype: 'float32' });
    const v = t.reshape([3, -1]);
    expect(v.shape).toEqual([3, 4]);
    expect(v.toArray()).toEqual([[0, 1, 2, 3], [4, 5, 6, 7], [8, 9, 10, 11]]);
    t.dispose();
    expect(v.toFloat32Array()[11]).toBe(11);
    expect(memory().hostBytes).toBe(before + 48);
    v.dispose();
    expect(memory().hostBytes).toBe(before);
  });

  test('garbage collection frees tensors that were never disposed (the safety net)', () => {
    const script = `const L=require(${JSON.stringify(path.resolve(__dirname, '../dist'))});` +
      `const base=L.memory().hostBytes;(()=>{for(let i=0;i<50;i++)L.zeros([1<<16])})();` +
      `const held=L.memory().hostBytes-base;` +
      `(async()=>{for(let i=0;i<20&&L.memory().hostBytes>base;i++){global.gc();await new Promise(r=>setTimeout(r,10))}` +
      `console.log(held+' '+(L.memory().hostBytes-base)+' '+L.memory().tensors)})()`;
    const [held, left, tensors] = execFileSync(process.execPath, ['--expose-gc', '-e', script]).toString().trim().split(' ').map(Number);
    expect(held).toBe(50 * 4 * 65536);
    expect(left).toBe(0);
    expect(tensors).toBe(0);
  });

  test('reshape rejects impossible shapes', () => {
    const t = zeros([2, 6]);
    expect(() => t.reshape([5, 2])).toThrow(LorakitRangeError);
    expect(() => t.reshape([-1, -1])).toThrow(/more than one -1/);
    expect(() => t.reshape([5, -1])).toThrow(/cannot infer/);
    expect(() => t.reshape([2.5, 4])).toThrow(/non-negative integers/);
  });
});

describe('bad input', () => {
  const table: [string, () => unknown, new (...a: never[]) => Error, RegExp][] = [
    ['length mismatch', () => tensor(new Float32Array(5), [2, 3]), LorakitRangeError, /tensor: data has 5 elements, shape \[2, 3\] needs 6/],
    ['ragged nesting', () => tensor([[1, 2], [3]]), LorakitRangeError, /ragged/],
    ['non-number element', () => tensor([1, 'a' as unknown as number]), LorakitTypeError, /elements must be numbers, got 'a'/],
    ['Uint16Array without dtype', () => tensor(new Uint16Array(2), [2]), LorakitTypeError, /bfloat16.*float16/],
    ['unknown dtype', () => tensor([1], undefined, { dtype: 'float64' as never }), LorakitTypeError, /unknown dtype 'float64'/],
    ['negative dim', () => zeros([2, -1]), LorakitRangeError, /shape must be an array of non-negative integers, got \[2, -1\]/],
    ['shape not an array', () => zeros(3 as unknown as number[]), LorakitTypeError, /shape must be an array/],
    ['a GPU this machine lacks', () => zeros([2], { device: missingDevice() as never }), LorakitTypeError, missingDeviceError()],
    ['bogus device', () => zeros([2], { device: 'tpu' as never }), LorakitTypeError, /device must be 'cpu' or 'cuda/],
    ['int32 out of range', () => tensor([3e9], undefined, { dtype: 'int32' }), LorakitRangeError, /not representable as int32/],
    ['fractional int64', () => tensor([1.5], undefined, { dtype: 'int64' }), LorakitRangeError, /not an integer/],
    ['arange step 0', () => arange(0, 1, 0), LorakitRangeError, /step must not be 0/],
    ['randn int dtype', () => randn([2], { dtype: 'int32' }), LorakitTypeError, /float32, bfloat16 or float16/],
    ['negative seed', () => randn([2], { seed: -1 }), LorakitRangeError, /seed must be a non-negative/],
    ['cast to unknown dtype', () => zeros([1]).to('x' as never), LorakitTypeError, /unknown dtype/],
    ['huge allocation', () => zeros([2 ** 26, 2 ** 26]), Error, /out of|cannot allocate|memory/i],
  ];
  test.each(table)('%s', (_name, call, cls, msg) => {
    expect(call).toThrow(cls);
    expect(call).toThrow(msg);
  });
});

test('the addon loads and computes in worker threads beside the main thread', async () => {
  const { Worker } = await import('node:worker_threads');
  const dist = JSON.stringify(path.resolve(__dirname, '../dist'));
  const code = `const L=require(${dist});const {parentPort}=require('worker_threads');` +
    `const c=L.ops.matmul(L.tensor([[1,2],[3,4]]),L.tensor([[5],[6]]));parentPort.postMessage(c.toArray());`;
  const results = await Promise.all(
    [0, 1].map(
      () =>
        new Promise<unknown>((resolve, reject) => {
          const w = new Worker(code, { eval: true });
          w.on('message', resolve).on('error', reject);
        }),
    ),
  );
  expect(results).toEqual([[[17], [39]], [[17], [39]]]);
  expect(tensor([[1, 2]]).toArray()).toEqual([[1, 2]]);
});
