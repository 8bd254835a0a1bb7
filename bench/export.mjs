// Decode speed of exported GGUF files in node-llama-cpp (CPU, prebuilt binary): the shipped model and a
// randomly initialised SmolLM-135M-shaped model (the shipped tokenizer, its vocabulary padded to 49152),
// each as f32, f16 and q8_0, beside lorakit's own CPU decode of the same model (its generation engine, float32,
// the same prompt, thread count and number of tokens). Prints one markdown row per file for bench/RESULTS.md.
import { spawnSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { createRequire } from 'node:module';

const require = createRequire(import.meta.url);
const root = path.resolve(path.dirname(new URL(import.meta.url).pathname), '..');
const threads = Number(process.env.THREADS ?? os.cpus().length);
// lorakit's thread pool reads this when the addon loads: the same threads as llama.cpp gets.
process.env.LORAKIT_NUM_THREADS = String(threads);
const { exportGguf } = require(path.join(root, 'dist/export/index.js'));
const { randomModel, MODEL_SHAPES } = require(path.join(root, 'dist/models/random.js'));
const { writeSafetensors } = require(path.join(root, 'dist/io/safetensors.js'));
const { loadModel } = require(path.join(root, 'dist/models/index.js'));
const { Engine } = require(path.join(root, 'dist/generate/engine.js'));
const PROMPT = [1, 2, 3, 4];
const NEW = 129;

/** lorakit's decode tokens/s at batch 1: greedy tokens after the first (the prompt's prefill excluded), as timed in node-llama-cpp. */
async function lorakitDecode(dir) {
  const model = loadModel(dir);
  const engine = new Engine(model, null, { maxBatch: 1 });
  try {
    let first = 0n, n = 0;
    for await (const _ of engine.generate({ prompt: PROMPT, maxTokens: NEW, temperature: 0, stopAtEos: false })) if (n++ === 0) first = process.hrtime.bigint();
    return (n - 1) / (Number(process.hrtime.bigint() - first) / 1e9);
  } finally {
    engine.dispose();
    model.dispose();
  }
}
const work = fs.mkdtempSync(path.join(os.tmpdir(), 'lorakit-bench-export-'));
const def = path.join(root, 'assets', 'default');
try {
  const smol = path.join(work, 'smollm');
  fs.mkdirSync(smol);
  {
    const config = { ...MODEL_SHAPES['smollm-135m'], hidden_act: 'silu' };
    const m = randomModel(config);
    const w = m.exportWeights('float32');
    writeSafetensors(path.join(smol, 'model.safetensors'), w, { format: 'pt' });
    for (const t of Object.values(w)) t.dispose();
    m.dispose();
    fs.writeFileSync(path.join(smol, 'config.json'), JSON.stringify(config));
    for (const f of ['tokenizer.json', 'tokenizer_config.json']) fs.copyFileSync(path.join(def, f), path.join(smol, f));
  }
  for (const [name, dir] of [['shipped model (2.2M)', def], ['SmolLM-135M shape', smol]]) {
    const own = await lorakitDecode(dir);
    for (const dtype of ['f32', 'f16', 'q8_0']) {
      const out = path.join(work, `m-${dtype}.gguf`);
      const r = exportGguf({ model: dir, out, dtype });
      const req = path.join(work, 'req.json');
      fs.writeFileSync(req, JSON.stringify({ model: out, prompts: [PROMPT], n: NEW, threads, kvType: 'F16' }));
      const p = spawnSync(process.execPath, [path.join(root, 'test/fixtures/export/run-llama.mjs'), req], { encoding: 'utf8', maxBuffer: 1 << 26 });
      if (p.status !== 0) throw new Error(p.stderr);
      const a = JSON.parse(p.stdout);
      const theirs = a.decodeTokens / a.decodeSeconds;
      console.log(`| ${name} | ${dtype} | ${(r.bytes / 2 ** 20).toFixed(1)} MiB | ${theirs.toFixed(1)} | ${own.toFixed(1)} | ${(own / theirs).toFixed(2)} | ${threads} |`);
      fs.rmSync(out);
    }
  }
} finally {
  fs.rmSync(work, { recursive: true, force: true });
}
