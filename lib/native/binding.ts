/**
 * The one typed interface of the native module, and its loader. Nothing outside lib/ sees these types:
 * the public classes wrap them.
 */
import * as path from 'node:path';
import { NoBinaryError, fromNative } from '../errors';

/** Native bytes on one device; freed explicitly by `free()`. */
export interface AddonStorage {
  readonly bytes: number;
  readonly device: string;
  upload(src: ArrayBufferView): void;
  download(dst: ArrayBufferView): void;
  free(): void;
}

export interface AddonNF4 {
  packed: AddonStorage;
  absmax: AddonStorage;
  blockSize: number;
}

/** A row-major [rows, cols] matrix as stored; `trans` makes the op use its transpose. */
export interface AddonOperand {
  s?: AddonStorage;
  dtype?: number;
  rows: number;
  cols: number;
  trans?: boolean;
  nf4?: AddonNF4;
}

export interface AddonLoraCommon {
  m: number;
  in: number;
  out: number;
  r: number;
  scale: number;
  dropout: number;
  seed: number;
  a: AddonStorage;
  b: AddonStorage;
}

export interface AddonAdamWTensor {
  param: AddonStorage;
  grad: AddonStorage;
  expAvg: AddonStorage;
  expAvgSq: AddonStorage;
  numel: number;
  lr: number;
  beta1: number;
  beta2: number;
  eps: number;
  weightDecay: number;
}

export interface AddonBackendInfo {
  threads: number;
  gemmKernel: string;
  avx2: boolean;
  avx512: boolean;
  gpu: boolean;
}

type S = AddonStorage;
type Opt = AddonStorage | null | undefined;

export interface Addon {
  layerNormForward(a: { x: S; w: S; b?: Opt; y: S; mean: S; rstd: S; rows: number; dim: number; eps: number }): void;
  layerNormBackward(a: { dy: S; x: S; w: S; mean: S; rstd: S; dx?: Opt; dw?: Opt; db?: Opt; rows: number; dim: number }): void;
  rmsNormForward(a: { x: S; w: S; y: S; rstd: S; rows: number; dim: number; eps: number }): void;
  rmsNormBackward(a: { dy: S; x: S; w: S; rstd: S; dx?: Opt; dw?: Opt; rows: number; dim: number }): void;
  rope(a: { x: S; tokens: number; heads: number; headDim: number; seq: number; pos?: Opt; theta: number; inverse: boolean }): void;
  attentionForward(a: { q: S; k: S; v: S; out: S; lse: S; starts?: Opt; batch: number; seq: number; hq: number; hkv: number; d: number; scale: number }): void;
  attentionBackward(a: {
    q: S; k: S; v: S; out: S; lse: S; dout: S; dq: S; dk: S; dv: S; starts?: Opt;
    batch: number; seq: number; hq: number; hkv: number; d: number; scale: number;
  }): void;
  geluForward(a: { x: S; y: S; n: number }): void;
  geluBackward(a: { dy: S; x: S; dx: S; n: number }): void;
  swigluForward(a: { gate: S; up: S; y: S; n: number }): void;
  swigluBackward(a: { dy: S; gate: S; up: S; dgate: S; dup: S; n: number }): void;
  embeddingForward(a: { ids: S; table: S; out: S; n: number; dim: number; vocab: number }): void;
  embeddingBackward(a: { ids: S; dout: S; dtable: S; n: number; dim: number; vocab: number }): void;
  crossEntropy(a: { logits: S; labels: S; rows: number; vocab: number; ignoreIndex: number; gradScale: number; wantGrad: boolean }): { loss: number; count: number };
  copy2d(a: { src: S; srcLd: number; srcOffset: number; dst: S; dstLd: number; dstOffset: number; rows: number; cols: number; accumulate: boolean }): void;
  axpy(a: { x: S; y: S; alpha: number; n: number }): void;

  Storage: new (bytes: number, device: string) => AddonStorage;
  fill(a: { dst: AddonStorage; dtype: number; n: number; value: number }): void;
  arange(a: { dst: AddonStorage; dtype: number; n: number; start: number; step: number }): void;
  cast(a: { src: AddonStorage; from: number; dst: AddonStorage; to: number; n: number }): void;
  randUniform(a: { dst: AddonStorage; n: number; seed: number; offset: number; p0: number; p1: number }): void;
  randNormal(a: { dst: AddonStorage; n: number; seed: number; offset: number; p0: number; p1: number }): void;
  gemm(a: {
    a: AddonOperand;
    b: AddonOperand;
    c: AddonStorage;
    m: number;
    n: number;
    k: number;
    alpha: number;
    beta: number;
    bias?: AddonStorage | null;
  }): void;
  loraForward(
    a: AddonLoraCommon & { x: AddonOperand; w: AddonOperand; bias?: AddonStorage | null; y: AddonStorage; xa: AddonStorage },
  ): void;
  loraBackward(
    a: AddonLoraCommon & {
      dy: AddonOperand;
      x: AddonOperand;
      w: AddonOperand;
      xa: AddonStorage;
      accumulate: boolean;
      dx?: AddonStorage | null;
      da?: AddonStorage | null;
      db?: AddonStorage | null;
      dbias?: AddonStorage | null;
      dw?: AddonStorage | null;
    },
  ): void;
  nf4Quantize(a: { src: AddonStorage; dtype: number; n: number; blockSize: number; packed: AddonStorage; absmax: AddonStorage }): void;
  nf4Dequantize(a: AddonNF4 & { n: number; dst: AddonStorage; dtype: number }): void;
  absmaxQuantize(a: { absmax: AddonStorage; n: number; codes: AddonStorage; scales: AddonStorage }): number;
  absmaxDequantize(a: { codes: AddonStorage; scales: AddonStorage; offset: number; n: number; absmax: AddonStorage }): void;
  adamwStep(a: { tensors: AddonAdamWTensor[]; step: number; gradScale: number }): void;
  gradNorm(a: { grads: { s: AddonStorage; numel: number }[] }): number;
  backendInfo(): AddonBackendInfo;
  setGemmKernel(name: string): boolean;
  memory(): { hostBytes: number; hostCachedBytes: number };
  /** Top-k left singular vectors u [m, k] (float64, row-major) and values s [k] of float32 w [m, n]. */
  svdLeft(a: { w: S; m: number; n: number; k: number; u: S; s: S }): void;
}

export const PACKAGE_ROOT = path.resolve(__dirname, '..', '..');

let addon: Addon | undefined;

/** Loads the CPU addon: a local build if there is one, else the prebuild for this platform. */
export function native(): Addon {
  if (addon) return addon;
  try {
    // LORAKIT_ADDON names an addon file explicitly (a development build); otherwise node-gyp-build picks
    // a local build, then the prebuild for this platform.
    const explicit = process.env.LORAKIT_ADDON;
    // eslint-disable-next-line @typescript-eslint/no-require-imports
    const load = require('node-gyp-build') as (dir: string) => unknown;
    addon = wrapErrors((explicit ? require(path.resolve(explicit)) : load(PACKAGE_ROOT)) as Addon);
  } catch (e) {
    throw new NoBinaryError(
      `lorakit could not load its native addon for ${process.platform}-${process.arch} (Node ${process.version}): ` +
        `${(e as Error).message}\nBuild it from source with \`npm run build:gyp\` in ${PACKAGE_ROOT} ` +
        `(needs python3, make and a C++17 compiler), or \`npx cmake-js compile\` for the full build.`,
    );
  }
  return addon;
}

// Every native function rethrows its errors as lorakit's classes with the caller's stack.
function wrapErrors(raw: Addon): Addon {
  const out: Record<string, unknown> = {};
  for (const [name, value] of Object.entries(raw)) {
    if (typeof value === 'function' && name !== 'Storage') {
      out[name] = (...args: unknown[]) => {
        try {
          return (value as (...a: unknown[]) => unknown)(...args);
        } catch (e) {
          throw fromNative(e, new Error().stack);
        }
      };
    } else {
      out[name] = value;
    }
  }
  return out as unknown as Addon;
}
