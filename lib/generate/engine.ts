/**
 * The generation engine: many requests decoded together on one base model, each with its own adapter (or
 * none), its own sampling and its own stop conditions. Requests join and leave the running batch between
 * steps (continuous batching, as Orca and vLLM do); every step is one forward pass over all running
 * sequences' new tokens, their keys and values kept in one paged KV pool (lib/models/kv-cache.ts), their
 * adapters applied unmerged by the segmented LoRA kernel (S-LoRA / Punica). A prompt is prefilled in
 * chunks of the step's token budget, so a long prompt does not stall the others' decoding.
 */
import * as path from 'node:path';
import { randomInt } from 'node:crypto';
import { LorakitError, LorakitRangeError, LorakitTypeError, DisposedError } from '../errors';
import { checkChoice, checkNumber, checkOptions, describe, show } from '../check';
import { tensor, type Tensor } from '../tensor/tensor';
import { type CausalLM } from '../models/causal-lm';
import { KvCache } from '../models/kv-cache';
import { type AdapterSegment, type LoraAdapterWeights } from '../models/linear';
import { transpose2d } from '../models/weights';
import { LoraSegmentWeights } from '../ops/decode';
import { loadModel, type LoadModelOptions } from '../models';
import { readAdapter } from '../adapters/adapter';
import { loadTokenizer } from '../tokenizer/hub';
import { type Tokenizer } from '../tokenizer/tokenizer';
import { Sampler, checkSamplingOptions, type SamplingOptions } from './sampling';
import { TextStream } from './text';

/** An adapter module's weights as the engine holds them: checked once for the segmented kernel, with Bᵀ on the CPU. */
type AdapterWeights = LoraAdapterWeights & { loraBT?: Tensor; segment?: LoraSegmentWeights };

export interface GenerationRequest extends SamplingOptions {
  /** Text (encoded with the tokenizer's special tokens, as training encodes a row) or token ids. */
  prompt: string | readonly number[];
  /** A registered adapter's name; null or undefined: the base model. */
  adapter?: string | null;
  /** Most tokens to generate (default 128). */
  maxTokens?: number;
  /** Generation ends before the first of these strings; it is not part of the text. */
  stop?: readonly string[];
  /** End at the model's end-of-sequence token (default true). */
  stopAtEos?: boolean;
}

export interface GenerationEvent {
  token: number;
  /** The text that became final with this token (possibly ''; a character split over tokens waits). */
  delta: string;
}

/** 'stop': an end-of-sequence token or a stop string; 'length': maxTokens or the context; 'abort': cancelled. */
export type FinishReason = 'stop' | 'length' | 'abort';

export interface GenerationResult {
  text: string;
  tokens: number[];
  finishReason: FinishReason;
  promptTokens: number;
}

/** A running request: its tokens as they come (for await ... of), and its result. */
export interface Generation extends AsyncIterable<GenerationEvent> {
  readonly result: Promise<GenerationResult>;
  /** Ends the generation now; its cache blocks go back to the pool at once. */
  cancel(): void;
}

export interface EngineOptions {
  /** Most sequences decoded together (default 32). */
  maxBatch?: number;
  /** Most requests waiting for a place in the batch; beyond it generate() throws ERR_BUSY (default 256). */
  maxQueue?: number;
  /** Tokens per KV-cache block (default 16). */
  blockSize?: number;
  /** Tokens the KV pool holds across all sequences (default: what fits in 512 MiB, at most maxBatch full contexts). */
  cacheTokens?: number;
  /** Most tokens one step runs (new decode tokens plus prefill chunks; default 512). */
  stepTokens?: number;
  /** Adapter memory above which the least recently used idle adapters are unloaded (default 1 GiB). */
  maxAdapterBytes?: number;
  /** The name the base model answers to (default: its folder's name, or 'base'). */
  modelName?: string;
  /** The KV pool's element type: float32 on the CPU, bfloat16 on a GPU by default (half the memory). */
  kvDtype?: 'float32' | 'bfloat16';
}

interface LoadedAdapter {
  dir: string;
  modules?: Map<string, AdapterWeights>;
  bytes: number;
  lastUsed: number;
  /** Running sequences using it: it cannot be unloaded while any does. */
  users: number;
}

interface Sequence {
  id: number;
  /** Prompt, then every generated token. */
  ids: number[];
  promptTokens: number;
  /** Tokens whose keys and values are in the cache. */
  cached: number;
  table: number[];
  adapter: string | null;
  maxTokens: number;
  stopAtEos: boolean;
  sampler: Sampler;
  text: TextStream | null;
  generated: number[];
  seen: Set<number>;
  /** Events not yet taken by the iterator, and the iterator waiting for one. */
  events: GenerationEvent[];
  wake?: () => void;
  finished?: FinishReason;
  /** A stop string ended it: the text stream's held-back tail is not text. */
  hitStop: boolean;
  /** Why a step failed under it (its result rejects with this). */
  error?: Error;
  resolve: (r: GenerationResult) => void;
  reject: (e: Error) => void;
  detach?: () => void;
}

const MiB = 2 ** 20;

export class Engine {
  readonly model: CausalLM;
  /** null: token ids in and out only (a random model without a vocabulary, in benchmarks); texts are empty. */
  readonly tokenizer: Tokenizer | null;
  readonly modelName: string;
  readonly cache: KvCache;
  readonly maxBatch: number;
  readonly maxQueue: number;
  readonly stepTokens: number;
  readonly maxAdapterBytes: number;
  /** The longest sequence (prompt + generation) one request may reach. */
  readonly maxContext: number;
  readonly #adapters = new Map<string, LoadedAdapter>();
  readonly #waiting: Sequence[] = [];
  readonly #running: Sequence[] = [];
  readonly #eos: Set<number>;
  #nextId = 0;
  #clock = 0;
  #loop?: Promise<void>;
  #closed = false;
  #disposed = false;
  #steps = 0;
  #ownsModel = false;

  constructor(model: CausalLM, tokenizer: Tokenizer | null, options: EngineOptions = {}) {
    const op = 'Engine';
    const o = checkOptions<EngineOptions>(op, options);
    if (model.disposed) throw new DisposedError(`${op}: the model`);
    this.model = model;
    this.tokenizer = tokenizer;
    this.maxBatch = checkNumber(op, 'maxBatch', o.maxBatch ?? 32, { integer: true, min: 1, max: 4096 });
    this.maxQueue = checkNumber(op, 'maxQueue', o.maxQueue ?? 256, { integer: true, min: 0 });
    this.stepTokens = checkNumber(op, 'stepTokens', o.stepTokens ?? 512, { integer: true, min: 1 });
    this.maxAdapterBytes = checkNumber(op, 'maxAdapterBytes', o.maxAdapterBytes ?? 1024 * MiB, { min: 0 });
    this.modelName = o.modelName ?? 'base';
    if (typeof this.modelName !== 'string' || this.modelName === '') throw new LorakitTypeError('ERR_INVALID_ARG', `${op}: 'modelName' must be a non-empty string, got ${describe(o.modelName)}`);
    const blockSize = checkNumber(op, 'blockSize', o.blockSize ?? 16, { integer: true, min: 1, max: 4096 });
    const config = model.config;
    const dtype = checkChoice(op, 'kvDtype', o.kvDtype ?? (model.device === 'cpu' ? 'float32' : 'bfloat16'), ['float32', 'bfloat16'] as const, "'float32' or 'bfloat16'");
    const perToken = KvCache.blockBytes(config, 1, dtype);
    const cacheTokens = o.cacheTokens === undefined
      ? Math.max(config.maxPositions, Math.min(this.maxBatch * config.maxPositions, Math.floor((512 * MiB) / perToken)))
      : checkNumber(op, 'cacheTokens', o.cacheTokens, { integer: true, min: 1 });
    this.cache = new KvCache(config, model.device, { blockSize, blocks: Math.ceil(cacheTokens / blockSize), dtype });
    this.maxContext = Math.min(config.maxPositions, this.cache.totalBlocks * blockSize);
    this.#eos = new Set(config.eosTokenId.length > 0 ? config.eosTokenId : tokenizer?.eosTokenId != null ? [tokenizer.eosTokenId] : []);
  }

  /** An engine on a model folder (config.json, safetensors, tokenizer files); it owns the model it loads. */
  static load(dir: string, options: EngineOptions & { model?: LoadModelOptions } = {}): Engine {
    const { model: modelOptions, ...engineOptions } = options;
    const model = loadModel(dir, modelOptions ?? {});
    try {
      const engine = new Engine(model, loadTokenizer(dir), { modelName: path.basename(path.resolve(dir)), ...engineOptions });
      engine.#ownsModel = true;
      return engine;
    } catch (e) {
      model.dispose();
      throw e;
    }
  }

  /** Registers a PEFT adapter folder under `name` and loads it (checked against the base model now). */
  addAdapter(name: string, dir: string): void {
    const op = 'Engine.addAdapter';
    this.#alive(op);
    if (typeof name !== 'string' || !/^[\w.:/-]{1,128}$/.test(name))
      throw new LorakitTypeError('ERR_INVALID_ARG', `${op}: 'name' must be 1-128 characters of letters, digits, '_', '-', '.', ':' or '/', got ${describe(name)}`);
    if (name === this.modelName) throw new LorakitTypeError('ERR_INVALID_ARG', `${op}: '${name}' is the base model's name; give the adapter another`);
    if (this.#adapters.has(name)) throw new LorakitTypeError('ERR_INVALID_ARG', `${op}: an adapter named '${name}' is already registered (remove it first)`);
    if (typeof dir !== 'string') throw new LorakitTypeError('ERR_INVALID_ARG', `${op}: 'dir' must be a folder path, got ${describe(dir)}`);
    const entry: LoadedAdapter = { dir, bytes: 0, lastUsed: 0, users: 0 };
    this.#load(entry);
    this.#adapters.set(name, entry);
    this.#evict(entry);
  }

  /** Unregisters an adapter; requests that use it must have finished. */
  removeAdapter(name: string): void {
    const op = 'Engine.removeAdapter';
    const entry = this.#registered(op, name);
    if (entry.users > 0 || this.#waiting.some((s) => s.adapter === name))
      throw new LorakitError('ERR_INVALID_ARG', `${op}: adapter '${name}' is in use by ${entry.users} running and ${this.#waiting.filter((s) => s.adapter === name).length} waiting requests`);
    this.#unload(entry);
    this.#adapters.delete(name);
  }

  get adapterNames(): readonly string[] {
    return [...this.#adapters.keys()];
  }

  get stats(): { running: number; waiting: number; usedBlocks: number; totalBlocks: number; adapterBytes: number; loadedAdapters: number; steps: number } {
    let adapterBytes = 0, loadedAdapters = 0;
    for (const a of this.#adapters.values())
      if (a.modules) {
        adapterBytes += a.bytes;
        loadedAdapters++;
      }
    return {
      running: this.#running.length, waiting: this.#waiting.length, usedBlocks: this.cache.usedBlocks, totalBlocks: this.cache.totalBlocks,
      adapterBytes, loadedAdapters, steps: this.#steps,
    };
  }

  /**
   * Starts a request. Throws at once (nothing queued) for a bad request, ERR_BUSY when maxQueue requests
   * are already waiting, ERR_CLOSED after close().
   */
  generate(request: GenerationRequest, options: { signal?: AbortSignal } = {}): Generation {
    const op = 'generate';
    this.#alive(op);
    if (this.#closed) throw new LorakitError('ERR_CLOSED', `${op}: the engine is shutting down and takes no new requests`);
    const r = checkOptions<GenerationRequest>(op, request);
    const ids = this.#prompt(op, r.prompt);
    const adapter = r.adapter ?? null;
    if (adapter !== null) this.#registered(op, adapter);
    const maxTokens = checkNumber(op, 'maxTokens', r.maxTokens ?? 128, { integer: true, min: 1 });
    if (ids.length >= this.maxContext)
      throw new LorakitRangeError('ERR_OUT_OF_RANGE', `${op}: the prompt has ${ids.length} tokens; this engine's context holds ${this.maxContext} (the model's ${this.model.config.maxPositions} positions, a KV pool of ${this.cache.totalBlocks * this.cache.blockSize} tokens), one of which must be left to generate`);
    const stop = r.stop ?? [];
    if (!Array.isArray(stop) || stop.some((s) => typeof s !== 'string' || s === ''))
      throw new LorakitTypeError('ERR_INVALID_ARG', `${op}: 'stop' must be an array of non-empty strings, got ${describe(stop)}`);
    if (stop.length > 0 && !this.tokenizer) throw new LorakitTypeError('ERR_INVALID_ARG', `${op}: stop strings need a tokenizer; this engine has none`);
    const stopAtEos = r.stopAtEos ?? true;
    if (typeof stopAtEos !== 'boolean') throw new LorakitTypeError('ERR_INVALID_ARG', `${op}: 'stopAtEos' must be true or false, got ${describe(stopAtEos)}`);
    const sampling = checkSamplingOptions(op, { temperature: r.temperature, topK: r.topK, topP: r.topP, repetitionPenalty: r.repetitionPenalty, seed: r.seed ?? randomInt(2 ** 31) });
    const signal = options.signal;
    if (signal?.aborted) throw new LorakitError('ERR_ABORTED', `${op}: the request was aborted before it started`);
    if (this.#waiting.length >= this.maxQueue)
      throw new LorakitError('ERR_BUSY', `${op}: ${this.#waiting.length} requests are already waiting (maxQueue ${this.maxQueue}); retry later`);

    let resolve!: (r: GenerationResult) => void, reject!: (e: Error) => void;
    const result = new Promise<GenerationResult>((res, rej) => ((resolve = res), (reject = rej)));
    // The iterator reports a failure too; a caller that only iterates must not get an unhandled rejection.
    result.catch(() => {});
    const seq: Sequence = {
      id: this.#nextId++, ids: [...ids], promptTokens: ids.length, cached: 0, table: [], adapter, maxTokens: Math.min(maxTokens, this.maxContext - ids.length),
      stopAtEos, sampler: new Sampler(sampling), text: this.tokenizer ? new TextStream(this.tokenizer, { stop, prompt: ids }) : null, generated: [], seen: new Set(ids), events: [], hitStop: false, resolve, reject,
    };
    // The request asked for more than the context leaves: it ends with 'length' there, as OpenAI's API does.
    if (signal) {
      const onAbort = () => this.#finish(seq, 'abort');
      signal.addEventListener('abort', onAbort, { once: true });
      seq.detach = () => signal.removeEventListener('abort', onAbort);
    }
    this.#waiting.push(seq);
    this.#kick();
    const engine = this;
    return {
      result,
      cancel: () => engine.#finish(seq, 'abort'),
      [Symbol.asyncIterator]: () => ({
        next: async (): Promise<IteratorResult<GenerationEvent>> => {
          for (;;) {
            const e = seq.events.shift();
            if (e) return { value: e, done: false };
            if (seq.error) throw seq.error;
            if (seq.finished) return { value: undefined, done: true };
            await new Promise<void>((wake) => (seq.wake = wake));
          }
        },
        return: async (): Promise<IteratorResult<GenerationEvent>> => {
          // A consumer that stops reading early (break) ends the request: nobody would read the rest.
          engine.#finish(seq, 'abort');
          return { value: undefined, done: true };
        },
      }),
    };
  }

  /**
   * The logits [prompt length × vocab] the cached path computes at every position of `prompt`, with an
   * adapter or none: one prefill through the KV pool, its blocks freed before it returns. What the
   * engine's first token is sampled from is the last row.
   */
  prefillLogits(prompt: string | readonly number[], adapter: string | null = null): Float32Array {
    const op = 'Engine.prefillLogits';
    this.#alive(op);
    const ids = this.#prompt(op, prompt);
    const entry = adapter === null ? undefined : this.#registered(op, adapter);
    if (ids.length > this.maxContext) throw new LorakitRangeError('ERR_OUT_OF_RANGE', `${op}: the prompt has ${ids.length} tokens; this engine's context holds ${this.maxContext}`);
    if (entry) this.#load(entry);
    const table: number[] = [];
    if (!this.cache.reserve(table, ids.length))
      throw new LorakitError('ERR_OUT_OF_MEMORY', `${op}: the KV pool has ${this.cache.freeBlocks} free blocks, the prompt needs ${this.cache.blocksFor(ids.length)}`);
    try {
      const n = ids.length;
      return this.#forward({
        ids: BigInt64Array.from(ids, BigInt), pos: BigInt64Array.from(ids, (_, i) => BigInt(i)),
        slots: BigInt64Array.from(ids, (_, i) => BigInt(this.cache.slot(table, i))), seq: new BigInt64Array(n),
        ctx: BigInt64Array.from(ids, (_, i) => BigInt(i + 1)), table: BigInt64Array.from(table, BigInt), sequences: 1,
        segments: entry ? [{ start: 0, end: n, modules: entry.modules! }] : [], rows: ids.map((_, i) => i),
      })!;
    } finally {
      this.cache.release(table);
    }
  }

  /**
   * Stops taking requests; lets waiting and running ones finish for up to `graceMs` (default 10 s), then
   * aborts the rest. Resolves when none is left.
   */
  async close(options: { graceMs?: number } = {}): Promise<void> {
    const graceMs = checkNumber('Engine.close', 'graceMs', options.graceMs ?? 10_000, { min: 0 });
    this.#closed = true;
    if (this.#loop) {
      let timer: NodeJS.Timeout | undefined;
      const expired = new Promise<void>((res) => (timer = setTimeout(res, graceMs)));
      await Promise.race([this.#loop, expired]);
      clearTimeout(timer);
    }
    for (const s of [...this.#waiting, ...this.#running]) this.#finish(s, 'abort');
    while (this.#loop) await this.#loop;
  }

  get closed(): boolean {
    return this.#closed;
  }

  /** Aborts everything and frees the cache and the adapters (and the model, when load() made it). */
  dispose(): void {
    if (this.#disposed) return;
    this.#closed = true;
    for (const s of [...this.#waiting, ...this.#running]) this.#finish(s, 'abort');
    this.#disposed = true;
    for (const a of this.#adapters.values()) this.#unload(a);
    this.#adapters.clear();
    this.cache.dispose();
    if (this.#ownsModel) this.model.dispose();
  }
  [Symbol.dispose](): void {
    this.dispose();
  }

  #alive(op: string): void {
    if (this.#disposed) throw new DisposedError(`${op}: the engine`);
  }

  #registered(op: string, name: unknown): LoadedAdapter {
    const entry = typeof name === 'string' ? this.#adapters.get(name) : undefined;
    if (!entry) throw new LorakitTypeError('ERR_INVALID_ARG', `${op}: no adapter named ${show(name)} (registered: ${this.adapterNames.join(', ') || 'none'})`);
    return entry;
  }

  #prompt(op: string, prompt: unknown): number[] {
    if (typeof prompt === 'string') {
      if (!this.tokenizer) throw new LorakitTypeError('ERR_INVALID_ARG', `${op}: this engine has no tokenizer: give the prompt as token ids`);
      const ids = this.tokenizer.encode(prompt);
      if (ids.length === 0) throw new LorakitRangeError('ERR_OUT_OF_RANGE', `${op}: the prompt encodes to no tokens; give at least one`);
      return ids;
    }
    if (!Array.isArray(prompt) || prompt.length === 0)
      throw new LorakitTypeError('ERR_INVALID_ARG', `${op}: 'prompt' must be a string or a non-empty array of token ids, got ${describe(prompt)}`);
    const vocab = this.model.config.vocabSize;
    prompt.forEach((id: unknown, i) => {
      if (typeof id !== 'number' || !Number.isInteger(id) || id < 0 || id >= vocab)
        throw new LorakitRangeError('ERR_OUT_OF_RANGE', `${op}: 'prompt[${i}]' must be a token id in [0, ${vocab}), got ${describe(id)}`);
    });
    return prompt as number[];
  }

  #load(entry: LoadedAdapter): void {
    if (entry.modules) return;
    const modules: Map<string, AdapterWeights> = readAdapter(this.model, entry.dir).modules;
    entry.modules = modules;
    // On the CPU each module also keeps Bᵀ, the layout in which the segmented kernel streams B (made once here,
    // not on every step); a GPU reads B as it is.
    if (this.model.device === 'cpu')
      try {
        for (const w of modules.values()) w.loraBT = transpose2d(w.loraB.clone());
      } catch (e) {
        this.#unload(entry);
        throw e;
      }
    for (const w of modules.values()) w.segment = new LoraSegmentWeights(w.loraA, w.loraB, w.scale, w.loraBT);
    let bytes = 0;
    for (const w of modules.values()) bytes += (w.loraA.numel + w.loraB.numel + (w.loraBT?.numel ?? 0)) * 4;
    entry.bytes = bytes;
  }

  #unload(entry: LoadedAdapter): void {
    for (const w of entry.modules?.values() ?? []) {
      w.loraA.dispose();
      w.loraB.dispose();
      w.loraBT?.dispose();
    }
    entry.modules = undefined;
  }

  /** Unloads the least recently used idle adapters until the loaded ones fit maxAdapterBytes (`keep` stays). */
  #evict(keep: LoadedAdapter): void {
    let total = 0;
    for (const a of this.#adapters.values()) if (a.modules) total += a.bytes;
    const idle = [...this.#adapters.values()].filter((a) => a.modules && a.users === 0 && a !== keep).sort((x, y) => x.lastUsed - y.lastUsed);
    for (const a of idle) {
      if (total <= this.maxAdapterBytes) break;
      total -= a.bytes;
      this.#unload(a);
    }
  }

  #finish(seq: Sequence, reason: FinishReason): void {
    if (seq.finished) return;
    seq.finished = reason;
    const w = this.#waiting.indexOf(seq);
    if (w >= 0) this.#waiting.splice(w, 1);
    const r = this.#running.indexOf(seq);
    if (r >= 0) {
      this.#running.splice(r, 1);
      if (seq.adapter !== null) this.#adapters.get(seq.adapter)!.users--;
    }
    this.cache.release(seq.table);
    seq.detach?.();
    // What the stop-string matcher held back is final now, unless a stop string cut it off.
    if (!seq.hitStop && !seq.error) {
      try {
        const tail = seq.text?.finish() ?? '';
        if (tail) seq.events.push({ token: seq.generated.at(-1) ?? -1, delta: tail });
      } catch (e) {
        seq.error = e instanceof Error ? e : new Error(String(e));
      }
    }
    if (seq.error) seq.reject(seq.error);
    else seq.resolve({ text: seq.text?.text ?? '', tokens: seq.generated, finishReason: reason, promptTokens: seq.promptTokens });
    seq.wake?.();
    seq.wake = undefined;
  }

  #kick(): void {
    if (this.#loop) return;
    this.#loop = this.#run().finally(() => {
      this.#loop = undefined;
      // A request that came in after the loop's last look at the queue, but before it ended, starts it again.
      if (!this.#disposed && (this.#waiting.length > 0 || this.#running.length > 0)) this.#kick();
    });
  }

  async #run(): Promise<void> {
    while (this.#waiting.length > 0 || this.#running.length > 0) {
      // Between steps the event loop serves the server's sockets, new requests and cancellations.
      await new Promise<void>((res) => setImmediate(res));
      if (this.#disposed) return;
      try {
        this.#step();
      } catch (e) {
        // A failed step fails the requests in it, never the process; the engine goes on with the rest.
        const err = e instanceof Error ? e : new Error(String(e));
        for (const s of [...this.#running]) this.#fail(s, err);
      }
    }
  }

  #fail(seq: Sequence, err: Error): void {
    seq.error = err;
    this.#finish(seq, 'abort');
  }

  /** Moves waiting requests into the batch while there is room in it and in the pool. */
  #admit(): void {
    while (this.#waiting.length > 0 && this.#running.length < this.maxBatch) {
      const seq = this.#waiting[0]!;
      // Its whole prompt must fit now; generation grows it a block at a time later.
      if (!this.cache.reserve(seq.table, Math.min(seq.ids.length, this.stepTokens) + 1)) break;
      this.#waiting.shift();
      if (seq.adapter !== null) {
        const a = this.#adapters.get(seq.adapter)!;
        this.#load(a);
        a.users++;
        a.lastUsed = ++this.#clock;
        this.#evict(a);
      }
      this.#running.push(seq);
    }
  }

  /** Puts the most recently admitted sequence back at the head of the queue, its cache freed (recomputed later). */
  #preempt(except: Sequence): boolean {
    for (let i = this.#running.length - 1; i >= 0; i--) {
      const s = this.#running[i]!;
      if (s === except) continue;
      this.#running.splice(i, 1);
      if (s.adapter !== null) this.#adapters.get(s.adapter)!.users--;
      this.cache.release(s.table);
      s.cached = 0;
      this.#waiting.unshift(s);
      return true;
    }
    return false;
  }

  #step(): void {
    this.#admit();
    if (this.#running.length === 0) return;
    // Each sequence's share of the step: every decoding sequence its one token first, then prompt chunks
    // in arrival order while the step's token budget lasts.
    const plan = new Map<Sequence, number>();
    let budget = this.stepTokens;
    const byNeed = [...this.#running].sort((a, b) => (a.ids.length - a.cached) - (b.ids.length - b.cached) || a.id - b.id);
    for (const s of byNeed) {
      if (budget === 0) break;
      const take = Math.min(s.ids.length - s.cached, budget);
      if (!this.#running.includes(s)) continue; // preempted below for an earlier one
      while (!this.cache.reserve(s.table, s.cached + take)) {
        if (!this.#preempt(s)) throw new LorakitError('ERR_OUT_OF_MEMORY', `generate: the KV pool (${this.cache.totalBlocks} blocks) cannot hold one sequence of ${s.cached + take} tokens`);
        for (const p of plan.keys()) if (!this.#running.includes(p)) plan.delete(p);
      }
      plan.set(s, take);
      budget -= take;
    }
    // Rows grouped by adapter, so each adapter's rows are one segment of the batched LoRA kernel.
    const order = [...plan.keys()].sort((a, b) => (a.adapter ?? '').localeCompare(b.adapter ?? '') || a.id - b.id);
    const n = order.reduce((t, s) => t + plan.get(s)!, 0);
    const maxBlocks = Math.max(...order.map((s) => s.table.length));
    const ids = new BigInt64Array(n), pos = new BigInt64Array(n), slots = new BigInt64Array(n), seqOf = new BigInt64Array(n), ctx = new BigInt64Array(n);
    const table = new BigInt64Array(order.length * maxBlocks);
    const rows: number[] = [], sampled: Sequence[] = [], segments: AdapterSegment[] = [];
    let row = 0;
    order.forEach((s, si) => {
      const take = plan.get(s)!;
      s.table.forEach((b, j) => (table[si * maxBlocks + j] = BigInt(b)));
      const start = row;
      for (let j = 0; j < take; j++, row++) {
        const p = s.cached + j;
        ids[row] = BigInt(s.ids[p]!);
        pos[row] = BigInt(p);
        slots[row] = BigInt(this.cache.slot(s.table, p));
        seqOf[row] = BigInt(si);
        ctx[row] = BigInt(p + 1);
      }
      if (s.adapter !== null) {
        const modules = this.#adapters.get(s.adapter)!.modules!;
        const last = segments.at(-1);
        if (last && last.modules === modules && last.end === start) last.end = row;
        else segments.push({ start, end: row, modules });
      }
      s.cached += take;
      if (s.cached === s.ids.length) {
        rows.push(row - 1);
        sampled.push(s);
      }
    });
    this.#steps++;
    const all = this.#forward({ ids, pos, slots, seq: seqOf, ctx, table, sequences: order.length, segments, rows });
    if (!all) return;
    const V = this.model.config.vocabSize;
    sampled.forEach((s, i) => {
      if (s.finished) return;
      const token = s.sampler.next(all.subarray(i * V, (i + 1) * V), s.seen);
      this.#emit(s, token);
    });
  }

  /**
   * One forward pass of a step's tokens through the model and the KV pool (see DecodeInputs): the float32
   * logits of the listed rows, or undefined when none is listed (prompt chunks only fill the cache).
   */
  #forward(t: { ids: BigInt64Array; pos: BigInt64Array; slots: BigInt64Array; seq: BigInt64Array; ctx: BigInt64Array; table: BigInt64Array; sequences: number; segments: AdapterSegment[]; rows: number[] }): Float32Array | undefined {
    const n = t.ids.length, device = this.model.device;
    using ids = tensor(t.ids, [1, n], { device });
    using pos = tensor(t.pos, [1, n], { device });
    using slots = tensor(t.slots, [n], { device });
    using seq = tensor(t.seq, [n], { device });
    using ctx = tensor(t.ctx, [n], { device });
    using blockTable = tensor(t.table, [t.sequences, t.table.length / t.sequences], { device });
    using logits = this.model.decodeStep(ids, pos, { cache: this.cache, slots, blockTable, seq, ctx, segments: t.segments }, t.rows);
    return logits?.toFloat32Array();
  }

  #emit(s: Sequence, token: number): void {
    if (s.stopAtEos && this.#eos.has(token)) {
      this.#finish(s, 'stop');
      return;
    }
    s.ids.push(token);
    s.generated.push(token);
    s.seen.add(token);
    const { delta, stopped } = s.text?.push(token) ?? { delta: '', stopped: false };
    s.events.push({ token, delta });
    s.wake?.();
    s.wake = undefined;
    if (stopped) {
      s.hitStop = true;
      this.#finish(s, 'stop');
    }
    else if (s.generated.length >= s.maxTokens) this.#finish(s, 'length');
  }
}
