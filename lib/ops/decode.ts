/**
 * The generation ops (#13): a paged KV cache (kvWrite, pagedAttention) and many LoRA adapters in one batch
 * (loraSegments). The pool layout is csrc/ops.h's: per layer a K pool and a V pool of [poolSlots, kvHeads ·
 * headDim] rows, handed out in blocks of `blockSize` slots; token t of sequence s sits in slot
 *   blockTable[s, t / blockSize] · blockSize + t % blockSize.
 * Shapes, dtypes and devices are checked here; the values of the index tensors (slots, sequence ids,
 * context lengths, block ids) are checked by the addon on the CPU, and clamped by the GPU kernels, since
 * checking them here would copy them back from the device on every step.
 */
import { native } from '../native/binding';
import { LorakitRangeError, LorakitTypeError } from '../errors';
import { Tensor, checkTensor } from '../tensor/tensor';
import { DTYPE_CODE } from '../tensor/dtype';
import { checkNumber, checkOptions, describe, shapeStr } from '../check';

const F32 = ['float32'] as const;
const POOL_DTYPES = ['float32', 'bfloat16'] as const;
const I64 = ['int64'] as const;

function sameDevice(op: string, arg: string, t: Tensor, device: string, first: string): void {
  if (t.device !== device)
    throw new LorakitTypeError('ERR_DEVICE', `${op}: '${arg}' is on ${t.device}, but '${first}' is on ${device}; all tensors must share one device`);
}

/** A float32 tensor of rows of a fixed width (its last dimension): the row count. */
function rowsOf(op: string, arg: string, t: Tensor, width?: number): number {
  checkTensor(op, arg, t, { dtypes: F32, minDim: 1 });
  const w = t.shape[t.ndim - 1]!;
  if (width !== undefined && w !== width)
    throw new LorakitRangeError('ERR_SHAPE', `${op}: '${arg}' must have rows of width ${width}, got shape ${shapeStr(t.shape)}`);
  return w === 0 ? t.shape.slice(0, -1).reduce((a, b) => a * b, 1) : t.numel / w;
}

/** The two pools: [poolSlots, width] each, one dtype (float32 or bfloat16), one shape. */
function checkPools(op: string, kPool: Tensor, vPool: Tensor, width: number, device: string, first: string): { poolSlots: number; dtype: number } {
  checkTensor(op, 'kPool', kPool, { dtypes: POOL_DTYPES, ndim: 2 });
  const poolSlots = kPool.shape[0]!;
  checkTensor(op, 'kPool', kPool, { shape: [poolSlots, width] });
  checkTensor(op, 'vPool', vPool, { dtypes: [kPool.dtype], shape: kPool.shape });
  sameDevice(op, 'kPool', kPool, device, first);
  sameDevice(op, 'vPool', vPool, device, first);
  return { poolSlots, dtype: DTYPE_CODE[kPool.dtype] };
}

/**
 * Writes rows of k and v ([..., width] float32, n rows in all) into slots (int64 [n]) of the pools
 * ([poolSlots, width], float32 or bfloat16, same device). A negative slot skips its row (padding); bfloat16
 * pools store each value rounded to nearest, ties to even.
 */
export function kvWrite(k: Tensor, v: Tensor, slots: Tensor, kPool: Tensor, vPool: Tensor): void {
  const op = 'kvWrite';
  const n = rowsOf(op, 'k', k);
  const width = k.shape[k.ndim - 1]!;
  checkTensor(op, 'v', v, { dtypes: F32, shape: k.shape });
  checkTensor(op, 'slots', slots, { dtypes: I64, shape: [n] });
  sameDevice(op, 'v', v, k.device, 'k');
  sameDevice(op, 'slots', slots, k.device, 'k');
  const { poolSlots, dtype } = checkPools(op, kPool, vPool, width, k.device, 'k');
  native().kvWrite({
    k: k.storage(), v: v.storage(), slots: slots.storage(), kPool: kPool.storage(), vPool: vPool.storage(),
    n, width, poolSlots, dtype,
  });
}

export interface PagedAttentionOptions {
  /** Query heads. */
  heads: number;
  /** Key/value heads (grouped-query attention); `heads` by default, and must divide it. */
  kvHeads?: number;
  /** Slots per block of the pools. */
  blockSize: number;
  /** int64 [numSeqs, maxBlocks]: each sequence's blocks, in order; entries past a sequence's end are never read. */
  blockTable: Tensor;
  /** int64 [n]: the sequence (row of blockTable) of each query row. */
  seq: Tensor;
  /** int64 [n]: how many of its sequence's tokens each query row attends to, itself included (its position + 1). */
  ctx: Tensor;
  /** Score scale; 1/sqrt(headDim) by default. */
  scale?: number;
}

/**
 * Causal attention of query rows over the paged KV cache: q [..., heads · headDim] float32 with n rows in
 * all; row i attends to tokens 0 .. ctx[i]-1 of sequence seq[i]. Serves a prefill (the rows of one
 * sequence, ctx 1..T) and a decode step (one row per sequence) alike. Returns out of q's shape.
 */
export function pagedAttention(q: Tensor, kPool: Tensor, vPool: Tensor, options: PagedAttentionOptions): Tensor {
  const op = 'pagedAttention';
  const o = checkOptions<PagedAttentionOptions>(op, options);
  const hq = checkNumber(op, 'heads', o.heads, { integer: true, min: 1 });
  const hkv = o.kvHeads === undefined ? hq : checkNumber(op, 'kvHeads', o.kvHeads, { integer: true, min: 1 });
  if (hq % hkv !== 0) throw new LorakitRangeError('ERR_SHAPE', `${op}: 'heads' (${hq}) must be a multiple of 'kvHeads' (${hkv})`);
  const n = rowsOf(op, 'q', q);
  const width = q.shape[q.ndim - 1]!;
  if (width % hq !== 0)
    throw new LorakitRangeError('ERR_SHAPE', `${op}: 'q' rows of width ${width} (shape ${shapeStr(q.shape)}) must split into ${hq} heads`);
  const d = width / hq;
  const blockSize = checkNumber(op, 'blockSize', o.blockSize, { integer: true, min: 1 });
  const { poolSlots, dtype } = checkPools(op, kPool, vPool, hkv * d, q.device, 'q');
  if (!(o.blockTable instanceof Tensor))
    throw new LorakitTypeError('ERR_INVALID_ARG', `${op}: 'blockTable' must be a Tensor, got ${describe(o.blockTable)}`);
  const blockTable = checkTensor(op, 'blockTable', o.blockTable, { dtypes: I64, ndim: 2 });
  const [numSeqs, maxBlocks] = blockTable.shape as [number, number];
  const seq = checkTensor(op, 'seq', o.seq, { dtypes: I64, shape: [n] });
  const ctx = checkTensor(op, 'ctx', o.ctx, { dtypes: I64, shape: [n] });
  for (const [arg, t] of [['blockTable', blockTable], ['seq', seq], ['ctx', ctx]] as const) sameDevice(op, arg, t, q.device, 'q');
  const scale = o.scale === undefined ? 1 / Math.sqrt(d) : checkNumber(op, 'scale', o.scale);
  const out = Tensor.empty(q.shape, 'float32', q.device, op);
  try {
    native().pagedAttention({
      q: q.storage(), kPool: kPool.storage(), vPool: vPool.storage(), blockTable: blockTable.storage(), seq: seq.storage(),
      ctx: ctx.storage(), out: out.storage(), dtype, n, hq, hkv, d, blockSize, maxBlocks, numSeqs, poolSlots, scale,
    });
  } catch (e) {
    out.dispose();
    throw e;
  }
  return out;
}

/**
 * One adapter module's weights for loraSegments, checked once: lora_A [r, in] and lora_B [out, r] (and
 * optionally lora_B transposed, [r, out], the layout the CPU kernel streams), float32 on one device, with
 * the adapter's scale. A server holds one per module for as long as the adapter is loaded, so that each
 * step checks only where its rows are and that the tensors are still alive.
 */
export class LoraSegmentWeights {
  readonly loraA: Tensor;
  readonly loraB: Tensor;
  readonly loraBT?: Tensor;
  readonly scale: number;
  readonly r: number;
  readonly inFeatures: number;
  readonly outFeatures: number;

  constructor(loraA: Tensor, loraB: Tensor, scale: number, loraBT?: Tensor, op = 'LoraSegmentWeights', arg = 'weights') {
    checkTensor(op, `${arg}.loraA`, loraA, { dtypes: F32, ndim: 2 });
    const [r, inF] = loraA.shape as [number, number];
    checkTensor(op, `${arg}.loraB`, loraB, { dtypes: F32, ndim: 2 });
    const out = loraB.shape[0]!;
    checkTensor(op, `${arg}.loraB`, loraB, { shape: [out, r] });
    sameDevice(op, `${arg}.loraB`, loraB, loraA.device, `${arg}.loraA`);
    if (loraBT !== undefined) {
      checkTensor(op, `${arg}.loraBT`, loraBT, { dtypes: F32, shape: [r, out] });
      sameDevice(op, `${arg}.loraBT`, loraBT, loraA.device, `${arg}.loraA`);
    }
    this.scale = checkNumber(op, `${arg}.scale`, scale);
    this.loraA = loraA;
    this.loraB = loraB;
    this.loraBT = loraBT;
    this.r = r;
    this.inFeatures = inF;
    this.outFeatures = out;
  }
}

/** One adapter of a loraSegments batch: its rows, and its weights (as tensors, or checked once beforehand). */
export type LoraSegmentSpec = {
  /** First row of the segment. */
  start: number;
  /** One past its last row. */
  end: number;
} & (
  | { weights: LoraSegmentWeights }
  | {
      /** lora_A [r, in], float32. */
      loraA: Tensor;
      /** lora_B [out, r], float32. */
      loraB: Tensor;
      /**
       * Optional: lora_B transposed, [r, out], equal to loraB. The CPU kernel then adds each row's update as r
       * contiguous axpys; a caller that serves an adapter for many steps makes it once (the GPU reads loraB).
       */
      loraBT?: Tensor;
      /** The adapter's scale (α/r, or α/√r for rsLoRA). */
      scale: number;
    }
);

/**
 * Many adapters in one batch, unmerged: for each segment, y[start:end] += scale · (x[start:end] · Aᵀ) · Bᵀ.
 * x is [m, in] (or [..., in]) and y [m, out] (or [..., out]), float32; ranks may differ between segments,
 * segments must not overlap, and rows in no segment are left as they were. In place on y; returns y.
 */
export function loraSegments(x: Tensor, y: Tensor, segments: readonly LoraSegmentSpec[]): Tensor {
  const op = 'loraSegments';
  const m = rowsOf(op, 'x', x);
  const inF = x.shape[x.ndim - 1]!;
  checkTensor(op, 'y', y, { dtypes: F32, minDim: 1 });
  const out = y.shape[y.ndim - 1]!;
  if (rowsOf(op, 'y', y) !== m)
    throw new LorakitRangeError('ERR_SHAPE', `${op}: 'y' ${shapeStr(y.shape)} must have as many rows as 'x' ${shapeStr(x.shape)} (${m})`);
  sameDevice(op, 'y', y, x.device, 'x');
  if (!Array.isArray(segments)) throw new LorakitTypeError('ERR_INVALID_ARG', `${op}: 'segments' must be an array, got ${describe(segments)}`);
  const specs = segments.map((s: unknown, j) => {
    const arg = `segments[${j}]`;
    if (s === null || typeof s !== 'object')
      throw new LorakitTypeError('ERR_INVALID_ARG', `${op}: '${arg}' must be an object {start, end, loraA, loraB, scale} or {start, end, weights}, got ${describe(s)}`);
    const spec = s as Record<string, unknown>;
    const start = checkNumber(op, `${arg}.start`, spec.start, { integer: true, min: 0, max: m });
    const end = checkNumber(op, `${arg}.end`, spec.end, { integer: true, min: start, max: m });
    const w = spec.weights instanceof LoraSegmentWeights
      ? spec.weights
      : new LoraSegmentWeights(spec.loraA as Tensor, spec.loraB as Tensor, spec.scale as number, spec.loraBT as Tensor | undefined, op, arg);
    if (w.inFeatures !== inF || w.outFeatures !== out)
      throw new LorakitRangeError('ERR_SHAPE', `${op}: '${arg}' maps ${w.inFeatures} -> ${w.outFeatures} features (loraA ${shapeStr(w.loraA.shape)}, loraB ${shapeStr(w.loraB.shape)}), but 'x' has rows of ${inF} and 'y' of ${out}`);
    sameDevice(op, `${arg}.loraA`, w.loraA, x.device, 'x');
    return {
      start, end, r: w.r, scale: w.scale,
      a: w.loraA.storage(op, `${arg}.loraA`), b: w.loraB.storage(op, `${arg}.loraB`), bt: w.loraBT?.storage(op, `${arg}.loraBT`),
    };
  });
  // Sorted by start, each non-empty segment must begin at or after the end of the one before it.
  const order = specs.map((_, j) => j).filter((j) => specs[j]!.start < specs[j]!.end).sort((i, j) => specs[i]!.start - specs[j]!.start);
  for (let i = 1; i < order.length; i++) {
    const prev = specs[order[i - 1]!]!, cur = specs[order[i]!]!;
    if (cur.start < prev.end)
      throw new LorakitRangeError(
        'ERR_OUT_OF_RANGE',
        `${op}: 'segments[${order[i]}]' (rows [${cur.start}, ${cur.end})) overlaps 'segments[${order[i - 1]}]' (rows [${prev.start}, ${prev.end}))`,
      );
  }
  native().loraSegments({ x: x.storage(), y: y.storage(), m, in: inF, out, ldx: inF, ldy: out, segments: specs });
  return y;
}
