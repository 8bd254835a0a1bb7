// Multi-adapter serving on the shipped model (assets/default): 32 concurrent streams over 1, 8 and 32
// distinct adapters (r=8, random non-zero B, all loaded unmerged in one engine; all-linear, and on q_proj and
// v_proj, PEFT's default for Llama and the kind of adapter S-LoRA served), against the
// same load on one model with one adapter merged into its weights (the baseline; issue #13's goal: at
// least 0.8x its tokens/s with 32 distinct adapters). The load is bounded and closed-loop: each stream
// sends its requests one after another (fixed request count), so at most 32 are in flight.
// Per-token latency is the time between successive streamed tokens of one request (the first token's
// wait, prefill and queueing included, is reported apart as TTFT). The same load is then sent over HTTP
// on loopback to the OpenAI-compatible server (lib/serve/server.ts), read as server-sent events with
// node's fetch; there a gap is between successive text chunks (the server skips tokens whose text is
// not final yet, e.g. half a character) and tokens are counted from the usage the server reports.
//
//   node bench/serve.mjs      (after npx tsc -p tsconfig.json)
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { createRequire } from 'node:module';
import { fileURLToPath } from 'node:url';
import { SHIPPED, makeAdapters, makePrompts, withEngine, PROMPT } from './decode.mjs';

const require = createRequire(import.meta.url);
const lk = require('../dist/index.js');
const { Engine } = require('../dist/generate/engine.js');
const adapters = require('../dist/adapters/adapter.js');

export const STREAMS = 32, REQUESTS = 8, NEW_TOKENS = 64, RANK = 8;
export const ADAPTER_COUNTS = [1, 8, 32];

const quantile = (sorted, q) => (sorted.length ? sorted[Math.min(sorted.length - 1, Math.floor(q * sorted.length))] : NaN);

function summarize(ms, tokens, gaps, ttft) {
  gaps.sort((a, b) => a - b);
  ttft.sort((a, b) => a - b);
  return { ms, tokens, tps: tokens / (ms / 1e3), p50: quantile(gaps, 0.5), p99: quantile(gaps, 0.99), ttft50: quantile(ttft, 0.5) };
}

/** The bounded load through engine.generate: `streams` closed-loop clients, request r of stream s on adapterOf(s). */
export async function engineLoad(engine, prompts, { streams = STREAMS, requests = REQUESTS, newTokens = NEW_TOKENS, adapterOf }) {
  const gaps = [], ttft = [];
  let tokens = 0;
  const t0 = performance.now();
  await Promise.all(Array.from({ length: streams }, async (_, s) => {
    for (let r = 0; r < requests; r++) {
      const gen = engine.generate({ prompt: prompts[(s + r * streams) % prompts.length], adapter: adapterOf(s), maxTokens: newTokens, temperature: 0, stopAtEos: false });
      let last = performance.now(), seen = 0;
      for await (const _ of gen) {
        // The engine's last event may carry only the text it held back (no new token): not a token's gap.
        if (seen === newTokens) continue;
        const now = performance.now();
        (seen++ === 0 ? ttft : gaps).push(now - last);
        last = now;
      }
      const { tokens: got } = await gen.result;
      tokens += got.length;
    }
  }));
  return summarize(performance.now() - t0, tokens, gaps, ttft);
}

/** The same load as OpenAI streaming completions on `url` (model = adapter name or modelName). */
export async function httpLoad(url, prompts, { streams = STREAMS, requests = REQUESTS, newTokens = NEW_TOKENS, modelOf }) {
  const gaps = [], ttft = [];
  let tokens = 0;
  const t0 = performance.now();
  await Promise.all(Array.from({ length: streams }, async (_, s) => {
    for (let r = 0; r < requests; r++) {
      const body = { model: modelOf(s), prompt: prompts[(s + r * streams) % prompts.length], max_tokens: newTokens, temperature: 0, stream: true, stream_options: { include_usage: true } };
      let last = performance.now(), first = true;
      const res = await fetch(`${url}/v1/completions`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify(body) });
      if (!res.ok) throw new Error(`bench/serve: HTTP ${res.status}: ${await res.text()}`);
      const decoder = new TextDecoder();
      let buf = '';
      for await (const bytes of res.body) {
        buf += decoder.decode(bytes, { stream: true });
        let end;
        while ((end = buf.indexOf('\n\n')) >= 0) {
          const line = buf.slice(0, end);
          buf = buf.slice(end + 2);
          if (!line.startsWith('data: ') || line === 'data: [DONE]') continue;
          const ev = JSON.parse(line.slice(6));
          if (ev.error) throw new Error(`bench/serve: stream error ${JSON.stringify(ev.error)}`);
          if (ev.usage) tokens += ev.usage.completion_tokens;
          if (!ev.choices?.[0]?.text) continue;
          const now = performance.now();
          (first ? ttft : gaps).push(now - last);
          first = false;
          last = now;
        }
      }
    }
  }));
  return summarize(performance.now() - t0, tokens, gaps, ttft);
}

/**
 * One engine holding every adapter unmerged, then one on the merged model. `open(engine)` gives
 * { load(name, options), close() }: load runs the bounded load with stream s on adapter name(s) (null: the
 * base model); close ends what open started (the HTTP server, which closes the engine with it).
 */
export async function adapterCases(model, tokenizer, dirs, open, { counts = ADAPTER_COUNTS, streams = STREAMS, newTokens = NEW_TOKENS, requests = REQUESTS } = {}) {
  // A pool for every stream's whole sequence; all 32 prompts prefilled in one step.
  const options = { maxBatch: streams, blockSize: 16, cacheTokens: streams * (PROMPT + newTokens + 16), stepTokens: Math.max(512, streams * PROMPT) };
  const cases = {};
  await withEngine(new Engine(model, tokenizer, options), async (engine) => {
    dirs.forEach((d, i) => engine.addAdapter(`a${i}`, d));
    const target = await open(engine);
    try {
      // Warm-up: one wave of every stream touches the whole KV pool once (a new pool is untouched memory).
      await target.load(() => 'a0', { streams, requests: 1, newTokens });
      for (const n of counts) cases[n] = await target.load((s) => `a${s % n}`, { streams, requests, newTokens });
    } finally {
      await target.close();
    }
  });
  adapters.loadAdapter(model, dirs[0]);
  model.mergeAdapters();
  cases.merged = await withEngine(new Engine(model, tokenizer, options), async (engine) => {
    const target = await open(engine);
    try {
      await target.load(() => null, { streams, requests: 1, newTokens });
      return await target.load(() => null, { streams, requests, newTokens });
    } finally {
      await target.close();
    }
  });
  for (const l of model.linears.values()) l.detach();
  model.adapterConfig = undefined;
  return cases;
}

function rowsOf(via, cases, counts, targets) {
  const base = cases.merged;
  return [
    ...counts.map((n) => ({ via, targets, name: `${n} distinct adapter${n > 1 ? 's' : ''} unmerged`, ...cases[n], baseline: base.tps, ratio: cases[n].tps / base.tps })),
    { via, targets, name: '1 adapter merged (baseline)', ...base, baseline: base.tps, ratio: 1 },
  ];
}

/**
 * A model, not a measurement: float32 bytes a decode step must read for the weights, the base's once for the
 * whole batch, and each distinct adapter's A and B (or Bᵀ) once for its rows. With 32 distinct adapters every
 * step reads them all; their share of the traffic bounds what unmerged serving can keep of the merged speed
 * where a step is memory-bound.
 */
function trafficModel(model, dir) {
  const cfg = JSON.parse(fs.readFileSync(path.join(dir, 'adapter_config.json'), 'utf8'));
  const st = fs.statSync(path.join(dir, 'adapter_model.safetensors')).size;
  let base = 0;
  for (const l of model.linears.values()) base += l.inFeatures * l.outFeatures * 4;
  return { targets: [cfg.target_modules].flat().join(','), adapterBytes: st, baseBytes: base };
}

export async function run() {
  const model = lk.loadModel(SHIPPED);
  const tokenizer = lk.loadTokenizer(SHIPPED);
  const tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'lorakit-serve-'));
  const rows = [], traffic = [];
  try {
    const dirs = makeAdapters(model, tmp, Math.max(...ADAPTER_COUNTS), RANK);
    const qv = makeAdapters(model, tmp, Math.max(...ADAPTER_COUNTS), RANK, ['q_proj', 'v_proj']);
    traffic.push(trafficModel(model, dirs[0]), trafficModel(model, qv[0]));
    const prompts = makePrompts(model, tokenizer, STREAMS * REQUESTS);
    const onEngine = (engine) => ({ load: (name, o) => engineLoad(engine, prompts, { ...o, adapterOf: name }), close: async () => {} });
    rows.push(...rowsOf('engine', await adapterCases(model, tokenizer, dirs, onEngine), ADAPTER_COUNTS, 'all-linear'));
    rows.push(...rowsOf('engine', await adapterCases(model, tokenizer, qv, onEngine), ADAPTER_COUNTS, 'q,v'));
    let startServer;
    try {
      ({ startServer } = require('../dist/serve/server.js'));
    } catch {
      console.log('bench/serve: no dist/serve/server.js; the HTTP rows are skipped');
    }
    if (startServer) {
      const viaHttp = await adapterCases(model, tokenizer, dirs, async (engine) => {
        const server = await startServer(engine, { port: 0, maxTokensLimit: NEW_TOKENS });
        return { load: (name, o) => httpLoad(server.url, prompts, { ...o, modelOf: (s) => name(s) ?? engine.modelName }), close: () => server.close() };
      });
      rows.push(...rowsOf('http', viaHttp, ADAPTER_COUNTS, 'all-linear'));
    }
  } finally {
    model.dispose();
    fs.rmSync(tmp, { recursive: true, force: true });
  }
  return { rows, traffic };
}

export function print({ rows, traffic }) {
  console.log(`${STREAMS} concurrent streams x ${REQUESTS} requests each, prompt ${PROMPT} + ${NEW_TOKENS} new tokens, greedy, r=${RANK}; baseline: the same load on one merged model`);
  for (const t of traffic ?? [])
    console.log(`traffic model (not measured): base linears ${(t.baseBytes / 2 ** 20).toFixed(1)} MiB per step; one ${t.targets} adapter ${(t.adapterBytes / 2 ** 20).toFixed(2)} MiB, 32 of them ${((32 * t.adapterBytes) / 2 ** 20).toFixed(1)} MiB (${((32 * t.adapterBytes) / t.baseBytes).toFixed(2)}x the base)`);
  for (const r of rows)
    console.log(
      `${r.via.padEnd(6)} ${r.targets.padEnd(10)} ${r.name.padEnd(30)} ${r.tps.toFixed(1).padStart(8)} tok/s   merged ${r.baseline.toFixed(1).padStart(8)} tok/s   ratio ${r.ratio.toFixed(2)}   ` +
        `per-token p50 ${r.p50.toFixed(1)} ms p99 ${r.p99.toFixed(1)} ms   TTFT p50 ${r.ttft50.toFixed(0)} ms   (${r.tokens} tokens in ${(r.ms / 1e3).toFixed(1)} s)`,
    );
}

if (process.argv[1] === fileURLToPath(import.meta.url)) print(await run());
