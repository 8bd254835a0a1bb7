// Decode tokens/s of the generation engine (lib/generate/engine.ts) at batch 1, 8 and 32, each beside its
// baseline measured in the same run:
//   - the floor: a hand-written greedy loop without a KV cache (a full forward over the whole sequence for
//     every new token, argmax of the last position), at the same batch;
//   - with one unmerged LoRA adapter (r=16, all-linear, random non-zero B): the engine serving it against
//     the same adapter merged into the base weights (the ceiling: unmerged serving cannot beat it).
// Models: the shipped model (assets/default, with its tokenizer) and a SmolLM-135M-shaped random model
// (no tokenizer, prompts as ids). Fixed prompt of 32 tokens, fixed new tokens, greedy, stopAtEos false.
// Two rates per row: tokens/s = generated tokens / wall time of the whole request set, prefill included
// (the floor's first forward is its prefill too); and decode-only = the tokens after the first over the
// wall time minus that of the same run with 1 new token (prefill and the first token). The engine's
// and the baseline's greedy tokens are compared as a check.
//
//   node bench/decode.mjs     (after npx tsc -p tsconfig.json)
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { createRequire } from 'node:module';
import { fileURLToPath } from 'node:url';

const require = createRequire(import.meta.url);
const lk = require('../dist/index.js');
const { Engine } = require('../dist/generate/engine.js');
const { randomModel, MODEL_SHAPES } = require('../dist/models/random.js');
const adapters = require('../dist/adapters/adapter.js');

export const SHIPPED = fileURLToPath(new URL('../assets/default', import.meta.url));
export const PROMPT = 32;
export const BATCHES = [1, 8, 32];
// The 135M model's no-cache floor at batch 32 re-runs ~9k tokens through 135M parameters for 8 new
// tokens; more would not fit the suite's few minutes on a 2-core machine.
export const MODELS = [
  { name: 'shipped (assets/default)', newTokens: 64, make: (device) => ({ model: lk.loadModel(SHIPPED, { device }), tokenizer: lk.loadTokenizer(SHIPPED) }) },
  { name: 'smollm-135m shape (random)', newTokens: 8, make: (device) => ({ model: randomModel(MODEL_SHAPES['smollm-135m'], { device }), tokenizer: null }) },
];

/** `count` prompts of `len` ids: windows of the shipped corpus when there is a tokenizer, else a fixed pattern. */
export function makePrompts(model, tokenizer, count, len = PROMPT) {
  const V = model.config.vocabSize;
  if (!tokenizer) return Array.from({ length: count }, (_, b) => Array.from({ length: len }, (_, i) => (i * 37 + b * 101 + 1) % V));
  const ids = tokenizer.encode(fs.readFileSync(path.join(SHIPPED, 'corpus.txt'), 'utf8').slice(0, 200_000), { addSpecialTokens: false });
  return Array.from({ length: count }, (_, b) => ids.slice(b * 97, b * 97 + len));
}

/**
 * Writes `count` PEFT adapters (all-linear, rank r, alpha 2r, random non-zero A and B) under `dir` and
 * returns their folders; the model is left without an adapter.
 */
export function makeAdapters(model, dir, count, r, targetModules = 'all-linear') {
  const dirs = [];
  for (let i = 0; i < count; i++) {
    adapters.addAdapter(model, { r, loraAlpha: 2 * r, targetModules, initLoraWeights: false, seed: i + 1 });
    const d = path.join(dir, `adapter-${[targetModules].flat().join('-')}-${i}`);
    adapters.saveAdapter(model, d);
    for (const l of model.linears.values()) l.detach();
    model.adapterConfig = undefined;
    dirs.push(d);
  }
  return dirs;
}

/** The floor: greedy without a cache, every new token from a full forward over its batch's whole sequences. */
export function noCacheGreedy(model, prompts, newTokens) {
  const B = prompts.length, V = model.config.vocabSize;
  const seqs = prompts.map((p) => [...p]);
  const t0 = performance.now();
  for (let k = 0; k < newTokens; k++) {
    const T = seqs[0].length;
    const ids = lk.tensor(BigInt64Array.from(seqs.flat(), BigInt), [B, T], { device: model.device });
    const logits = model.forward(ids, { returnLogits: true }).logits;
    const all = logits.toFloat32Array();
    ids.dispose();
    logits.dispose();
    for (let b = 0; b < B; b++) {
      const row = all.subarray(((b + 1) * T - 1) * V, (b + 1) * T * V);
      let best = 0;
      for (let v = 1; v < V; v++) if (row[v] > row[best]) best = v;
      seqs[b].push(best);
    }
  }
  const ms = performance.now() - t0;
  return { ms, tokens: seqs.map((s) => s.slice(prompts[0].length)) };
}

/** All prompts submitted to the engine at once (adapterOf(b): row b's adapter or null); wall time to the last result. */
export async function engineGreedy(engine, prompts, newTokens, adapterOf = () => null) {
  const t0 = performance.now();
  const gens = prompts.map((prompt, b) => engine.generate({ prompt, adapter: adapterOf(b), maxTokens: newTokens, temperature: 0, stopAtEos: false }));
  const results = await Promise.all(gens.map((g) => g.result));
  return { ms: performance.now() - t0, tokens: results.map((r) => r.tokens) };
}

/**
 * The run with newTokens and the 1-token run, after an untimed one: a new engine's KV pool is untouched
 * memory, and its first pass pays the page faults (a cold pool made the merged rows, each on a new
 * engine, read up to 1.7x slower than the unmerged ones run after a warm engine's first pass).
 */
export async function timedPair(engine, prompts, newTokens, adapterOf) {
  await engineGreedy(engine, prompts, newTokens, adapterOf);
  return [await engineGreedy(engine, prompts, newTokens, adapterOf), await engineGreedy(engine, prompts, 1, adapterOf)];
}

export function newEngine(model, tokenizer, batch, newTokens) {
  // A pool for the batch's whole sequences, one block of slack each; every prompt prefilled in one step.
  return new Engine(model, tokenizer, { maxBatch: batch, blockSize: 16, cacheTokens: batch * (PROMPT + newTokens + 16), stepTokens: Math.max(512, batch * PROMPT) });
}

/** fn(engine), then the engine (its KV pool and adapters; not the model) is freed. */
export async function withEngine(engine, fn) {
  try {
    return await fn(engine);
  } finally {
    engine.dispose();
  }
}

const tps = (r) => r.tokens.reduce((n, t) => n + t.length, 0) / (r.ms / 1e3);
// Tokens after each row's first, per second of the time beyond a 1-token run's.
const decodeTps = (r, first) => r.tokens.reduce((n, t) => n + t.length - 1, 0) / ((r.ms - first.ms) / 1e3);
const row = (fields, value, first, baseline, baselineFirst) => ({
  ...fields, value: tps(value), baseline: tps(baseline), decode: decodeTps(value, first), decodeBaseline: decodeTps(baseline, baselineFirst),
  same: `${agree(value.tokens, baseline.tokens)}/${value.tokens.length}`,
});
const agree = (a, b) => a.filter((t, i) => t.length === b[i].length && t.every((x, j) => x === b[i][j])).length;

/** Every row of one model: engine vs floor, and unmerged adapter vs merged, at each batch. */
export async function runModel(spec, { device = 'cpu', batches = BATCHES, newTokens = spec.newTokens } = {}) {
  const { model, tokenizer } = spec.make(device);
  const tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'lorakit-decode-'));
  const rows = [];
  try {
    const [adapterDir] = makeAdapters(model, tmp, 1, 16);
    const prompts = makePrompts(model, tokenizer, Math.max(...batches));
    // Warm-up: the first pass pays for thread start-up and first-touch allocation.
    await withEngine(newEngine(model, tokenizer, 1, 2), (e) => engineGreedy(e, prompts.slice(0, 1), 2));
    noCacheGreedy(model, prompts.slice(0, 1), 1);
    const unmerged = {};
    for (const B of batches) {
      const p = prompts.slice(0, B);
      const floor = noCacheGreedy(model, p, newTokens), floor1 = noCacheGreedy(model, p, 1);
      await withEngine(newEngine(model, tokenizer, B, newTokens), async (e) => {
        e.addAdapter('a', adapterDir);
        rows.push(row({ model: spec.name, batch: B, newTokens, name: 'engine', baselineName: 'no-cache loop' }, ...(await timedPair(e, p, newTokens)), floor, floor1));
        unmerged[B] = await timedPair(e, p, newTokens, () => 'a');
      });
    }
    // The ceiling: the same adapter folded into the base weights, served as the base model.
    adapters.loadAdapter(model, adapterDir);
    model.mergeAdapters();
    for (const B of batches) {
      const p = prompts.slice(0, B);
      const merged = await withEngine(newEngine(model, tokenizer, B, newTokens), (e) => timedPair(e, p, newTokens));
      rows.push(row({ model: spec.name, batch: B, newTokens, name: 'engine + 1 unmerged adapter r16', baselineName: 'merged adapter' }, ...unmerged[B], ...merged));
    }
  } finally {
    model.dispose();
    fs.rmSync(tmp, { recursive: true, force: true });
  }
  for (const r of rows) {
    r.ratio = r.value / r.baseline;
    r.decodeRatio = r.decode / r.decodeBaseline;
  }
  return rows;
}

export async function run() {
  const rows = [];
  for (const spec of MODELS) rows.push(...(await runModel(spec)));
  return { rows };
}

export function print({ rows }) {
  console.log(`prompt ${PROMPT} tokens, greedy; tok/s: generated tokens / wall time, prefill included; decode: tokens after the first / time beyond a 1-token run; "same": rows whose greedy tokens equal the baseline's`);
  const f = (v) => v.toFixed(1).padStart(7);
  for (const r of rows)
    console.log(
      `${r.model.padEnd(28)} B=${String(r.batch).padEnd(3)} +${String(r.newTokens).padEnd(3)} ${r.name.padEnd(32)} ${f(r.value)} tok/s (decode ${f(r.decode)})   ` +
        `${r.baselineName.padEnd(15)} ${f(r.baseline)} tok/s (decode ${f(r.decodeBaseline)})   ratio ${r.ratio.toFixed(2).padStart(6)} (decode ${r.decodeRatio.toFixed(2).padStart(6)})   same ${r.same}`,
    );
}

if (process.argv[1] === fileURLToPath(import.meta.url)) print(await run());
