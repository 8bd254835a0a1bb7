/**
 * Reading a model's weights out of a checkpoint, in the form the CPU path computes with: norms and
 * embeddings as float32, linear weights as float32, bfloat16 or NF4 (QLoRA), including linears that
 * bitsandbytes already quantized (`*.weight.absmax`, `*.weight.quant_map`, `*.weight.nested_absmax`,
 * `*.weight.quant_state.bitsandbytes__nf4`).
 */
import { LorakitError, LorakitRangeError, LorakitTypeError } from '../errors';
import { type TensorSource } from '../io/safetensors';
import { checkDevice, type Device, isObject, shapeStr, show } from '../check';
import { NF4Tensor, NF4_CODE, absmaxCodeBook, quantize } from '../nf4';
import { Tensor, tensor } from '../tensor/tensor';

export interface LoadModelOptions {
  /** Storage of the linear weights (default float32). Everything else stays float32. */
  dtype?: 'float32' | 'bfloat16';
  /**
   * QLoRA: store the linear weights as NF4. `true` quantizes every linear with block size 64 and
   * double quantization; an object picks the block size, double quantization and which modules
   * (module-name suffixes, default all).
   */
  quantize?: boolean | { blockSize?: number; doubleQuant?: boolean; modules?: string[] };
  /** Where the weights live ('cpu' by default; 'cuda[:N]' with the GPU backend). */
  device?: Device;
}

export class CheckpointWeights {
  readonly #src: TensorSource;
  readonly #dtype: 'float32' | 'bfloat16';
  readonly #quant?: { blockSize: number; doubleQuant: boolean; modules?: string[] };
  readonly #device: Device;

  constructor(src: TensorSource, options: LoadModelOptions = {}) {
    this.#src = src;
    this.#device = checkDevice('loadModel', options.device);
    if (options.dtype !== undefined && options.dtype !== 'float32' && options.dtype !== 'bfloat16')
      throw new LorakitTypeError('ERR_DTYPE', `loadModel: 'dtype' must be 'float32' or 'bfloat16', got ${show(options.dtype)}`);
    this.#dtype = options.dtype ?? 'float32';
    const q = options.quantize;
    if (q === true) this.#quant = { blockSize: 64, doubleQuant: true };
    else if (isObject(q)) this.#quant = { blockSize: q.blockSize ?? 64, doubleQuant: q.doubleQuant ?? true, modules: q.modules };
    else if (q !== undefined && q !== false) throw new LorakitTypeError('ERR_INVALID_ARG', `loadModel: 'quantize' must be a boolean or an object, got ${show(q)}`);
  }

  has(name: string): boolean {
    return this.#src.has(name);
  }

  /** A float32 tensor of the given shape. */
  get(name: string, shape: readonly number[]): Tensor {
    if (!this.#src.has(name)) throw new LorakitTypeError('ERR_INVALID_ARG', `model weights: '${name}' is missing from the checkpoint`);
    const info = this.#src.info(name);
    checkShape(name, info.shape, shape);
    return this.#onDevice(this.#src.load(name, { dtype: 'float32' }));
  }

  // Checkpoints are read into host memory, then moved; quantization happens after the move.
  #onDevice(t: Tensor): Tensor {
    if (t.device === this.#device) return t;
    try {
      return t.to(this.#device);
    } finally {
      t.dispose();
    }
  }

  /**
   * The weight of linear module `module` as [out, in]. `storedTransposed` marks GPT-2's Conv1D,
   * saved [in, out].
   */
  linear(module: string, out: number, inF: number, storedTransposed: boolean): Tensor | NF4Tensor {
    const name = `${module}.weight`;
    if (this.#src.has(`${name}.quant_state.bitsandbytes__nf4`)) {
      if (storedTransposed)
        throw new LorakitTypeError('ERR_INVALID_ARG', `model weights: '${name}' is a bitsandbytes-quantized Conv1D weight stored [in, out]; lorakit cannot transpose NF4 codes without requantizing, so load the float checkpoint and quantize with { quantize: true }`);
      const q = this.#prequantized(name, out, inF);
      if (this.#device === 'cpu') return q;
      try {
        return q.to(this.#device);
      } finally {
        q.dispose();
      }
    }
    let w = this.get(name, storedTransposed ? [inF, out] : [out, inF]);
    if (storedTransposed) w = transpose2d(w);
    if (this.#quant && (!this.#quant.modules || this.#quant.modules.some((m) => module === m || module.endsWith(`.${m}`)))) {
      try {
        return quantize(w, { blockSize: this.#quant.blockSize, doubleQuant: this.#quant.doubleQuant, name });
      } finally {
        w.dispose();
      }
    }
    if (this.#dtype === 'float32') return w;
    try {
      return w.to(this.#dtype);
    } finally {
      w.dispose();
    }
  }

  #prequantized(name: string, out: number, inF: number): NF4Tensor {
    const fail = (msg: string) => new LorakitError('ERR_SAFETENSORS', `model weights: '${name}' (bitsandbytes NF4): ${msg}`);
    const stateKey = `${name}.quant_state.bitsandbytes__nf4`;
    let state: unknown;
    {
      using raw = this.#src.load(stateKey);
      if (raw.dtype !== 'uint8') throw fail(`'${stateKey}' must be uint8 JSON bytes, got ${raw.dtype}`);
      try {
        state = JSON.parse(Buffer.from(raw.data() as Uint8Array).toString('utf8'));
      } catch (e) {
        throw fail(`'${stateKey}' is not JSON: ${(e as Error).message}`);
      }
    }
    if (!isObject(state)) throw fail(`the quant state is not a JSON object: ${show(state)}`);
    if (state.quant_type !== 'nf4') throw fail(`quant_type ${show(state.quant_type)} is not supported (only nf4)`);
    const shape = state.shape;
    if (!Array.isArray(shape) || shape.length !== 2 || shape[0] !== out || shape[1] !== inF)
      throw fail(`the quant state's shape ${show(shape)} does not match the config's [${out}, ${inF}]`);
    const blockSize = state.blocksize;
    if (typeof blockSize !== 'number' || !Number.isInteger(blockSize) || blockSize < 32 || blockSize > 4096 || (blockSize & (blockSize - 1)) !== 0)
      throw fail(`blocksize ${show(blockSize)} is not a power of two from 32 to 4096`);
    const dtype = state.dtype === 'bfloat16' || state.dtype === 'float16' || state.dtype === 'float32' ? state.dtype : 'float32';
    const n = out * inF, blocks = Math.ceil(n / blockSize);
    const owned: Tensor[] = [];
    const load = (key: string, dtypeWanted: 'uint8' | 'float32', numel: number) => {
      if (!this.#src.has(key)) throw fail(`'${key}' is missing`);
      const t = this.#src.load(key);
      owned.push(t);
      if (t.dtype !== dtypeWanted || t.numel !== numel) throw fail(`'${key}' is ${t.dtype} ${shapeStr(t.shape)}, expected ${dtypeWanted} with ${numel} elements`);
      return t.reshape([numel]);
    };
    try {
      const map = load(`${name}.quant_map`, 'float32', 16);
      const code = map.toFloat32Array();
      map.dispose();
      if (code.some((v, i) => Math.abs(v - NF4_CODE[i]!) > 1e-6)) throw fail(`its quant_map is not the NF4 table`);
      const packed = load(name, 'uint8', Math.ceil(n / 2));
      if ('nested_absmax' in state || this.#src.has(`${name}.nested_absmax`)) {
        if (state.nested_blocksize !== 256) throw fail(`nested_blocksize ${show(state.nested_blocksize)} is not 256`);
        if (typeof state.nested_offset !== 'number') throw fail(`nested_offset ${show(state.nested_offset)} is not a number`);
        // The absmax codes mean what this map says; torch 1.x built a slightly different map, whose
        // codes lorakit's decoder would misread.
        const nestedMap = load(`${name}.nested_quant_map`, 'float32', 256).toFloat32Array();
        const ours = absmaxCodeBook();
        const differs = nestedMap.findIndex((v, i) => v !== ours[i]);
        if (differs >= 0) throw fail(`its nested_quant_map differs from bitsandbytes' signed dynamic map at entry ${differs} (${nestedMap[differs]} vs ${ours[differs]}); re-quantize from the float checkpoint`);
        const absmaxCodes = load(`${name}.absmax`, 'uint8', blocks);
        const absmaxScales = load(`${name}.nested_absmax`, 'float32', Math.ceil(blocks / 256));
        for (const t of owned) t.dispose();
        return new NF4Tensor({ packed, absmaxCodes, absmaxScales, absmaxOffset: state.nested_offset, blockSize, shape: [out, inF], dtype });
      }
      const absmax = load(`${name}.absmax`, 'float32', blocks);
      for (const t of owned) t.dispose();
      return new NF4Tensor({ packed, absmax, blockSize, shape: [out, inF], dtype });
    } catch (e) {
      for (const t of owned) t.dispose();
      throw e;
    }
  }
}

function checkShape(name: string, got: readonly number[], want: readonly number[]): void {
  if (got.length !== want.length || got.some((d, i) => d !== want[i]))
    throw new LorakitRangeError('ERR_SHAPE', `model weights: '${name}' has shape ${shapeStr(got)}, the config implies ${shapeStr(want)}`);
}

/** [rows, cols] -> [cols, rows]; disposes the input. */
export function transpose2d(t: Tensor): Tensor {
  const [r, c] = t.shape as [number, number];
  try {
    const src = t.data();
    const dst = new (src.constructor as new (n: number) => typeof src)(src.length);
    for (let i = 0; i < r; i++) for (let j = 0; j < c; j++) dst[j * r + i] = src[i * c + j]!;
    // A load- and save-time reshuffle, done in host memory; the result goes back where t was.
    return tensor(dst as ArrayBufferView, [c, r], { dtype: t.dtype, device: t.device });
  } finally {
    t.dispose();
  }
}
