/**
 * The paged key/value cache of generation (vLLM's PagedAttention layout): per layer one K pool and one V
 * pool of `blocks × blockSize` rows, handed out a block at a time, so that many sequences of different
 * lengths share one allocation and a finished sequence gives its blocks straight back. A sequence's
 * blocks need not be adjacent: its block table says where each run of `blockSize` tokens lives.
 */
import { LorakitError, LorakitRangeError, DisposedError } from '../errors';
import { checkNumber, checkChoice, type Device } from '../check';
import { Tensor } from '../tensor/tensor';
import { type ModelConfig } from '../io/config';

export interface KvCacheOptions {
  /** Tokens per block (16 by default, as vLLM). */
  blockSize?: number;
  /** Blocks in the pool; each holds blockSize tokens of every layer. */
  blocks: number;
  /** float32 by default on the CPU, bfloat16 on a GPU (half the memory, as the issue asks). */
  dtype?: 'float32' | 'bfloat16';
}

export class KvCache {
  readonly blockSize: number;
  readonly totalBlocks: number;
  readonly dtype: 'float32' | 'bfloat16';
  readonly device: Device;
  /** [layer] → [blocks·blockSize, kvHeads·headDim] */
  readonly k: readonly Tensor[];
  readonly v: readonly Tensor[];
  /** Free block ids; a stack, so a block just freed is the next one reused (still warm in cache). */
  readonly #free: number[];
  #disposed = false;

  constructor(config: ModelConfig, device: Device, options: KvCacheOptions) {
    const op = 'KvCache';
    this.blockSize = checkNumber(op, 'blockSize', options.blockSize ?? 16, { integer: true, min: 1, max: 4096 });
    this.totalBlocks = checkNumber(op, 'blocks', options.blocks, { integer: true, min: 1 });
    this.dtype = checkChoice(op, 'dtype', options.dtype ?? (device === 'cpu' ? 'float32' : 'bfloat16'), ['float32', 'bfloat16'] as const, "'float32' or 'bfloat16'");
    this.device = device;
    const width = config.numKvHeads * config.headDim;
    const rows = this.totalBlocks * this.blockSize;
    const k: Tensor[] = [], v: Tensor[] = [];
    try {
      for (let l = 0; l < config.numLayers; l++) {
        k.push(Tensor.empty([rows, width], this.dtype, device, op));
        v.push(Tensor.empty([rows, width], this.dtype, device, op));
      }
    } catch (e) {
      for (const t of [...k, ...v]) t.dispose();
      throw e;
    }
    this.k = k;
    this.v = v;
    this.#free = Array.from({ length: this.totalBlocks }, (_, i) => this.totalBlocks - 1 - i);
  }

  /** Bytes of one block across all layers, K and V: what a pool of a given size costs. */
  static blockBytes(config: ModelConfig, blockSize: number, dtype: 'float32' | 'bfloat16'): number {
    return 2 * config.numLayers * blockSize * config.numKvHeads * config.headDim * (dtype === 'float32' ? 4 : 2);
  }

  get freeBlocks(): number {
    return this.#free.length;
  }
  get usedBlocks(): number {
    return this.totalBlocks - this.#free.length;
  }

  /** Blocks a sequence of `tokens` tokens occupies. */
  blocksFor(tokens: number): number {
    return Math.ceil(tokens / this.blockSize);
  }

  /** Grows `table` to hold `tokens` tokens; false (and `table` unchanged) when the pool has too few free blocks. */
  reserve(table: number[], tokens: number): boolean {
    this.#alive();
    const need = this.blocksFor(tokens) - table.length;
    if (need <= 0) return true;
    if (need > this.#free.length) return false;
    for (let i = 0; i < need; i++) table.push(this.#free.pop()!);
    return true;
  }

  /** Returns a sequence's blocks to the pool and empties its table. */
  release(table: number[]): void {
    for (const b of table) {
      if (!Number.isInteger(b) || b < 0 || b >= this.totalBlocks)
        throw new LorakitRangeError('ERR_OUT_OF_RANGE', `KvCache.release: block ${b} is not a block of this pool (0..${this.totalBlocks - 1})`);
      this.#free.push(b);
    }
    if (this.#free.length > this.totalBlocks) throw new LorakitError('ERR_INVALID_ARG', 'KvCache.release: a block was released twice');
    table.length = 0;
  }

  /** The pool row of a sequence's token `t`. */
  slot(table: readonly number[], t: number): number {
    return table[Math.floor(t / this.blockSize)]! * this.blockSize + (t % this.blockSize);
  }

  get disposed(): boolean {
    return this.#disposed;
  }

  #alive(): void {
    if (this.#disposed) throw new DisposedError('KvCache');
  }

  dispose(): void {
    if (this.#disposed) return;
    this.#disposed = true;
    for (const t of [...this.k, ...this.v]) t.dispose();
  }
  [Symbol.dispose](): void {
    this.dispose();
  }
}
