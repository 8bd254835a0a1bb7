import { execFileSync } from 'node:child_process';
import * as path from 'node:path';
import { LorakitRangeError, LorakitTypeError, DisposedError, backend, ops, tensor, zeros } from '../lib';
import { native } from '../lib/native/binding';
import { bf16Bits, bf16Value, f16Bits, f16Value, matmul64, randomArray, relErr } from './helpers/reference';
import { cpuKernels, gpuCount, missingDevice } from './helpers/machine';

// Register-tiled shapes (m and n above 64) with full and edge tiles in every direction and K across
// several reduction blocks (KC = 256); then narrow shapes (n <= 64) and short-wide ones (m <= 64,
// computed as a transposed narrow product), including row counts that are not multiples of the 4-row
// and 256-row blocks of the narrow path.
const SHAPES: [number, number, number][] = [
  [129, 97, 300], [257, 19, 513], [65, 530, 66], [200, 1, 97],
  [1, 1, 1], [7, 5, 3], [8, 48, 16], [17, 33, 65], [100, 1, 47], [3, 700, 2], [64, 530, 9], [515, 300, 64], [258, 70, 200],
];

const kernels = (): string[] => cpuKernels('matmul.test');

afterAll(() => native().setGemmKernel('auto'));

describe.each(kernels())('matmul with the %s micro-kernel', (kernel) => {
  beforeAll(() => expect(native().setGemmKernel(kernel)).toBe(true));

  test.each(SHAPES)('m=%i k=%i n=%i, every transpose combination, against float64', (m, k, n) => {
    for (const ta of [false, true])
      for (const tb of [false, true]) {
        const [ar, ac] = ta ? [k, m] : [m, k];
        const [br, bc] = tb ? [n, k] : [k, n];
        const a = randomArray(ar * ac, m * 31 + k, 1);
        const b = randomArray(br * bc, n * 17 + k, 1);
        const ref = matmul64(a, ar, ac, ta, b, br, bc, tb);
        const c = ops.matmul(tensor(a, [ar, ac]), tensor(b, [br, bc]), { transposeA: ta, transposeB: tb });
        expect(c.shape).toEqual([m, n]);
        // float32 accumulation over k terms of size <= 1: error grows like sqrt(k) * 2^-24 relative.
        expect(relErr(c.toFloat32Array(), ref)).toBeLessThan(1e-5 * Math.sqrt(k) + 1e-6);
        c.dispose();
      }
  });
});

describe('matmul options and dtypes', () => {
  test('bias and alpha: alpha*A*B + bias', () => {
    const [m, k, n] = [37, 29, 53];
    const a = randomArray(m * k, 1), b = randomArray(k * n, 2), bias = randomArray(n, 3);
    const ref = matmul64(a, m, k, false, b, k, n, false).map((v, i) => -0.5 * v + bias[i % n]!);
    const c = ops.matmul(tensor(a, [m, k]), tensor(b, [k, n]), { alpha: -0.5, bias: tensor(bias, [n]) });
    expect(relErr(c.toFloat32Array(), ref)).toBeLessThan(1e-5);
  });

  test('short, wide products (the transposed path) with bias', () => {
    const [m, k, n] = [500, 40, 5];
    const a = randomArray(m * k, 4), b = randomArray(n * k, 5), bias = randomArray(n, 6);
    const ref = matmul64(a, m, k, false, b, n, k, true).map((v, i) => v + bias[i % n]!);
    const c = ops.matmul(tensor(a, [m, k]), tensor(b, [n, k]), { transposeB: true, bias: tensor(bias, [n]) });
    expect(relErr(c.toFloat32Array(), ref)).toBeLessThan(1e-5);
  });

  test('bfloat16 and float16 inputs accumulate in float32; mixed inputs give float32', () => {
    const [m, k, n] = [45, 300, 33];
    const a = randomArray(m * k, 7), b = randomArray(k * n, 8);
    const ab = new Uint16Array(a.length).map((_, i) => bf16Bits(a[i]!));
    const bh = new Uint16Array(b.length).map((_, i) => f16Bits(b[i]!));
    const av = Array.from(ab, bf16Value), bv = Array.from(bh, f16Value);
    const ref = matmul64(av, m, k, false, bv, k, n, false);
    const A = tensor(ab, [m, k], { dtype: 'bfloat16' }), B = tensor(bh, [k, n], { dtype: 'float16' });
    const c = ops.matmul(A, B);
    expect(c.dtype).toBe('float32');
    // The inputs are exact in float32, so only accumulation error remains.
    expect(relErr(c.toFloat32Array(), ref)).toBeLessThan(2e-5);
    const cb = ops.matmul(A, tensor(new Uint16Array(b.length).map((_, i) => bf16Bits(b[i]!)), [k, n], { dtype: 'bfloat16' }));
    expect(cb.dtype).toBe('bfloat16');
    const ref2 = matmul64(av, m, k, false, Array.from(b, (x) => bf16Value(bf16Bits(x))), k, n, false);
    // One bf16 rounding of the float32 result: 2^-9 relative.
    expect(relErr(cb.toFloat32Array(), ref2)).toBeLessThan(2 ** -8);
  });

  test('leading batch dimensions of a are flattened', () => {
    const a = randomArray(2 * 3 * 4 * 5, 9), b = randomArray(5 * 6, 10);
    const c = ops.matmul(tensor(a, [2, 3, 4, 5]), tensor(b, [5, 6]));
    expect(c.shape).toEqual([2, 3, 4, 6]);
    expect(relErr(c.toFloat32Array(), matmul64(a, 24, 5, false, b, 5, 6, false))).toBeLessThan(1e-6);
  });

  test('k = 0 gives zeros (plus bias); m = 0 gives an empty result', () => {
    expect(ops.matmul(zeros([2, 0]), zeros([0, 3])).toArray()).toEqual([[0, 0, 0], [0, 0, 0]]);
    expect(ops.matmul(zeros([2, 0]), zeros([0, 2]), { bias: tensor([1, 2]) }).toArray()).toEqual([[1, 2], [1, 2]]);
    expect(ops.matmul(zeros([0, 4]), zeros([4, 3])).shape).toEqual([0, 3]);
  });

  test('the result is bit-identical for 1, 2 and 3 threads', () => {
    const dist = JSON.stringify(path.resolve(__dirname, '../dist'));
    const script = `const L=require(${dist});const a=L.randn([301,517],{seed:1}),b=L.randn([517,283],{seed:2});` +
      `const c=L.ops.matmul(a,b).toFloat32Array();const d=L.ops.matmul(b,a,{transposeA:true,transposeB:true}).toFloat32Array();` +
      `let h=0n;for(const x of [c,d])for(const v of new Uint32Array(x.buffer))h=(h*1000003n+BigInt(v))%(2n**61n-1n);console.log(String(h))`;
    const run = (t: string) => execFileSync(process.execPath, ['-e', script], { env: { ...process.env, LORAKIT_NUM_THREADS: t } }).toString().trim();
    const one = run('1');
    expect(run('2')).toBe(one);
    expect(run('3')).toBe(one);
  });
});

describe('matmul bad input', () => {
  const a = tensor(new Float32Array(6), [2, 3]);
  const disposed = zeros([3, 2]);
  disposed.dispose();
  const table: [string, () => unknown, new (...x: never[]) => Error, RegExp][] = [
    ['inner mismatch', () => ops.matmul(a, zeros([2, 2])), LorakitRangeError, /ops\.matmul: inner dimensions differ: a \[2, 3\] has k=3, b \[2, 2\] has k=2/],
    ['1-D a', () => ops.matmul(zeros([3]), zeros([3, 2])), LorakitRangeError, /'a' must have at least 2 dimensions, got shape \[3\]/],
    ['3-D b', () => ops.matmul(a, zeros([3, 2, 1])), LorakitRangeError, /'b' must be 2-D, got shape \[3, 2, 1\]/],
    ['int32 a', () => ops.matmul(zeros([2, 3], { dtype: 'int32' }), zeros([3, 2])), LorakitTypeError, /'a' must be float32 or bfloat16 or float16, got int32/],
    ['not a tensor', () => ops.matmul(a, [[1, 2]] as never), LorakitTypeError, /'b' must be a Tensor, got an array/],
    ['disposed b', () => ops.matmul(a, disposed), DisposedError, /ops\.matmul: 'b'.*disposed/],
    ['bias shape', () => ops.matmul(a, zeros([3, 4]), { bias: zeros([3]) }), LorakitRangeError, /'bias' must have shape \[4\], got \[3\]/],
    ['bias dtype', () => ops.matmul(a, zeros([3, 4]), { bias: zeros([4], { dtype: 'bfloat16' }) }), LorakitTypeError, /'bias' must be float32/],
    ['transposeA on 3-D', () => ops.matmul(zeros([2, 2, 3]), zeros([2, 2]), { transposeA: true }), LorakitRangeError, /transposeA needs a 2-D/],
    ['options not an object', () => ops.matmul(a, zeros([3, 2]), 5 as never), LorakitTypeError, /options must be an object, got number 5/],
    ['alpha NaN', () => ops.matmul(a, zeros([3, 2]), { alpha: NaN }), LorakitTypeError, /'alpha' must be a finite number/],
  ];
  test.each(table)('%s', (_n, call, cls, msg) => {
    expect(call).toThrow(cls);
    expect(call).toThrow(msg);
  });

  // Calls that skip the TypeScript checks reach the native checks, which must throw, never crash.
  test('the native side re-checks sizes and kinds', () => {
    const n = native();
    const s = new n.Storage(16, 'cpu');
    const big = new n.Storage(4096, 'cpu');
    const op = (rows: number, cols: number, st = s) => ({ s: st, dtype: 0, rows, cols });
    expect(() => n.gemm({ a: op(100, 100), b: op(2, 2), c: big, m: 100, n: 2, k: 100, alpha: 1, beta: 0 })).toThrow(/'a' holds 16 bytes, the call needs 40000/);
    expect(() => n.gemm({ a: op(2, 2), b: op(3, 2, big), c: big, m: 2, n: 2, k: 2, alpha: 1, beta: 0 })).toThrow(/'b' is \[3, 2\].*expected \[2, 2\]/);
    expect(() => n.gemm({ a: op(2, 2), b: op(2, 2), c: {} as never, m: 2, n: 2, k: 2, alpha: 1, beta: 0 })).toThrow(/'c' must be a Storage/);
    expect(() => n.gemm({ a: { ...op(2, 2), dtype: 3 }, b: op(2, 2), c: big, m: 2, n: 2, k: 2, alpha: 1, beta: 0 })).toThrow(/must be float32, bfloat16 or float16, got int32/);
    expect(() => n.gemm({ a: { ...op(2, 2), dtype: 99 }, b: op(2, 2), c: big, m: 2, n: 2, k: 2, alpha: 1, beta: 0 })).toThrow(/unknown dtype code 99/);
    expect(() => n.gemm({ a: op(2, 2), b: op(2, 2), c: big, m: 2.5, n: 2, k: 2, alpha: 1, beta: 0 })).toThrow(/must be an integer/);
    expect(() => (n.gemm as unknown as (x: unknown) => void)(undefined)).toThrow(/expected an argument object/);
    s.free();
    expect(() => n.gemm({ a: op(2, 2), b: op(2, 2), c: big, m: 2, n: 2, k: 2, alpha: 1, beta: 0 })).toThrow(/has been disposed/);
    expect(() => s.download(new Uint8Array(16))).toThrow(/freed/);
    expect(() => big.upload(new Uint8Array(3))).toThrow(/3 bytes, the storage 4096/);
    expect(() => new n.Storage(-1, 'cpu')).toThrow(/non-negative integer/);
    if (gpuCount() === 0) expect(() => new n.Storage(8, 'cuda')).toThrow(/device 'cuda' is not available/);
    else expect(() => new n.Storage(8, missingDevice())).toThrow(/does not exist|out of range|invalid device/);
    big.free();
  });
});
