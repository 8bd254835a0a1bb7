/**
 * Qwen2 and Mistral run through lorakit's Llama-family model: tiny random checkpoints written here, their
 * logits checked against a float64 forward pass written out below (RMSNorm, RoPE with the config's theta,
 * grouped-query attention, SwiGLU, Qwen2's q/k/v biases, a tied or untied head), with a LoRA adapter
 * (W + s·B·A in float64), merged in process and by the `merge` command. The float64 forward is first
 * checked against transformers' own logits for the tiny-llama fixture, so it is not lorakit checked
 * against itself.
 */
import { spawnSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { LorakitRangeError, memory, tensor, type Tensor } from '../lib';
import { expectError } from './helpers/errors';
import { loadModel } from '../lib/models';
import { loadAdapter } from '../lib/adapters/adapter';
import { writeSafetensors } from '../lib/io/safetensors';
import { matmul64, randomArray, readSafetensors, relErr, rng } from './helpers/reference';

const CLI = path.resolve(__dirname, '../dist/cli/index.js');
const FIX = path.join(__dirname, 'fixtures/peft');
// float32 arithmetic against float64 on these shapes stays near 1e-6; 1e-5 leaves room and still catches
// any wrong constant (a bias, a theta, an epsilon, a head mapping each move the logits by 1e-2 or more).
const TOL = 1e-5;

type Vec = ArrayLike<number>;

/** The architecture as the reference reads it from config.json, field by field (transformers' meaning). */
interface Arch {
  V: number; D: number; L: number; H: number; KV: number; hd: number; F: number;
  eps: number; theta: number; tied: boolean; qkvBias: boolean; window: number | null;
  /** Which key/value head query head h reads; transformers' grouping by default. */
  kvHead?: (h: number) => number;
}

function archOf(cfg: Record<string, unknown>): Arch {
  const n = (k: string) => cfg[k] as number;
  const rope = cfg.rope_parameters as { rope_theta?: number } | undefined;
  return {
    V: n('vocab_size'), D: n('hidden_size'), L: n('num_hidden_layers'), H: n('num_attention_heads'),
    KV: n('num_key_value_heads'), hd: (cfg.head_dim as number | undefined) ?? n('hidden_size') / n('num_attention_heads'),
    F: n('intermediate_size'), eps: n('rms_norm_eps'), theta: rope?.rope_theta ?? n('rope_theta'),
    tied: cfg.tie_word_embeddings === true, qkvBias: cfg.model_type === 'qwen2' || cfg.attention_bias === true,
    window: cfg.model_type === 'mistral' ? ((cfg.sliding_window as number | null | undefined) ?? null) : null,
  };
}

/** x [T, inF] · Wᵀ (W [outF, inF]) + b. */
function lin(x: Vec, T: number, inF: number, w: Vec, outF: number, b?: Vec): Float64Array {
  const y = matmul64(x, T, inF, false, w, outF, inF, true);
  if (b) for (let t = 0; t < T; t++) for (let o = 0; o < outF; o++) y[t * outF + o] += b[o]!;
  return y;
}

function rmsNorm(x: Float64Array, T: number, D: number, w: Vec, eps: number): Float64Array {
  const y = new Float64Array(T * D);
  for (let t = 0; t < T; t++) {
    let ss = 0;
    for (let i = 0; i < D; i++) ss += x[t * D + i]! ** 2;
    const r = 1 / Math.sqrt(ss / D + eps);
    for (let i = 0; i < D; i++) y[t * D + i] = x[t * D + i]! * r * w[i]!;
  }
  return y;
}

/** Rotary positions as transformers applies them: dimension i pairs with i + hd/2 (rotate_half). */
function rope(x: Float64Array, T: number, heads: number, hd: number, theta: number): void {
  const half = hd / 2;
  for (let t = 0; t < T; t++)
    for (let h = 0; h < heads; h++)
      for (let i = 0; i < half; i++) {
        const ang = t * theta ** (-(2 * i) / hd);
        const c = Math.cos(ang), s = Math.sin(ang);
        const o = t * heads * hd + h * hd;
        const a = x[o + i]!, b = x[o + i + half]!;
        x[o + i] = a * c - b * s;
        x[o + i + half] = b * c + a * s;
      }
}

/**
 * Logits [T, V] of one sequence. `w(name)` gives a checkpoint tensor by its Hugging Face name (the base
 * weights, or W + s·B·A for the adapted projections); a missing bias reads as none.
 */
function reference(a: Arch, w: (name: string) => Vec | undefined, ids: number[]): Float64Array {
  const { D, H, KV, hd, F, V, eps } = a, T = ids.length, qW = H * hd, kvW = KV * hd;
  const get = (k: string) => {
    const v = w(k);
    if (!v) throw new Error(`reference: no ${k}`);
    return v;
  };
  const embed = get('model.embed_tokens.weight');
  let h = new Float64Array(T * D);
  ids.forEach((id, t) => {
    for (let i = 0; i < D; i++) h[t * D + i] = embed[id * D + i]!;
  });
  for (let l = 0; l < a.L; l++) {
    const p = `model.layers.${l}`;
    const x = rmsNorm(h, T, D, get(`${p}.input_layernorm.weight`), eps);
    const proj = (m: string, outF: number) => lin(x, T, D, get(`${p}.self_attn.${m}.weight`), outF, a.qkvBias ? get(`${p}.self_attn.${m}.bias`) : undefined);
    const q = proj('q_proj', qW), k = proj('k_proj', kvW), v = proj('v_proj', kvW);
    rope(q, T, H, hd, a.theta);
    rope(k, T, KV, hd, a.theta);
    const att = new Float64Array(T * qW);
    for (let hh = 0; hh < H; hh++) {
      // Query heads share key/value heads in consecutive groups (repeat_kv).
      const kh = a.kvHead ? a.kvHead(hh) : Math.floor(hh / (H / KV));
      for (let t = 0; t < T; t++) {
        const sc: number[] = [];
        for (let s = 0; s <= t; s++) {
          if (a.window !== null && t - s >= a.window) {
            sc.push(-Infinity);
            continue;
          }
          let d = 0;
          for (let i = 0; i < hd; i++) d += q[t * qW + hh * hd + i]! * k[s * kvW + kh * hd + i]!;
          sc.push(d / Math.sqrt(hd));
        }
        const mx = Math.max(...sc);
        const e = sc.map((z) => Math.exp(z - mx));
        const z = e.reduce((u, v2) => u + v2, 0);
        for (let s = 0; s <= t; s++)
          for (let i = 0; i < hd; i++) att[t * qW + hh * hd + i] += (e[s]! / z) * v[s * kvW + kh * hd + i]!;
      }
    }
    const o = lin(att, T, qW, get(`${p}.self_attn.o_proj.weight`), D);
    for (let i = 0; i < h.length; i++) h[i] += o[i]!;
    const m = rmsNorm(h, T, D, get(`${p}.post_attention_layernorm.weight`), eps);
    const g = lin(m, T, D, get(`${p}.mlp.gate_proj.weight`), F), u = lin(m, T, D, get(`${p}.mlp.up_proj.weight`), F);
    const act = g.map((gv, i) => (gv / (1 + Math.exp(-gv))) * u[i]!);
    const dn = lin(act, T, F, get(`${p}.mlp.down_proj.weight`), D);
    h = h.map((hv, i) => hv + dn[i]!);
  }
  const fin = rmsNorm(h, T, D, get('model.norm.weight'), eps);
  return matmul64(fin, T, D, false, a.tied ? embed : get('lm_head.weight'), V, D, true);
}

function referenceBatch(a: Arch, w: (name: string) => Vec | undefined, batch: number[][]): Float64Array {
  const out = new Float64Array(batch.length * batch[0]!.length * a.V);
  batch.forEach((ids, b) => out.set(reference(a, w, ids), b * ids.length * a.V));
  return out;
}

/** Mean next-token cross-entropy over every predicted position, from float64 logits. */
function referenceLoss(logits: Float64Array, batch: number[][], V: number): number {
  let sum = 0, n = 0;
  batch.forEach((ids, b) => {
    for (let t = 0; t + 1 < ids.length; t++) {
      const row = logits.subarray((b * ids.length + t) * V, (b * ids.length + t + 1) * V);
      const mx = Math.max(...row);
      let z = 0;
      for (const x of row) z += Math.exp(x - mx);
      sum += mx + Math.log(z) - row[ids[t + 1]!]!;
      n++;
    }
  });
  return sum / n;
}

const PROJ: [string, 'attn' | 'mlp'][] = [['q_proj', 'attn'], ['k_proj', 'attn'], ['v_proj', 'attn'], ['o_proj', 'attn'], ['gate_proj', 'mlp'], ['up_proj', 'mlp'], ['down_proj', 'mlp']];
const modulePath = (l: number, m: string, kind: 'attn' | 'mlp') => `model.layers.${l}.${kind === 'attn' ? 'self_attn' : 'mlp'}.${m}`;

/** Random weights for a config, by Hugging Face name with shapes (norm weights near one, biases sizeable). */
function randomWeights(cfg: Record<string, unknown>, seed: number): Map<string, { shape: number[]; data: Float32Array }> {
  const a = archOf(cfg);
  const out = new Map<string, { shape: number[]; data: Float32Array }>();
  let k = seed;
  const put = (name: string, shape: number[], scale: number, offset = 0) => {
    const data = randomArray(shape.reduce((x, y) => x * y, 1), k++, scale);
    if (offset) for (let i = 0; i < data.length; i++) data[i] += offset;
    out.set(name, { shape, data });
  };
  const qW = a.H * a.hd, kvW = a.KV * a.hd;
  // Embedding rows small enough (mean square near 1e-5) that the first RMSNorm's epsilon matters.
  put('model.embed_tokens.weight', [a.V, a.D], 0.005);
  for (let l = 0; l < a.L; l++) {
    const p = `model.layers.${l}`;
    put(`${p}.input_layernorm.weight`, [a.D], 0.3, 1);
    put(`${p}.post_attention_layernorm.weight`, [a.D], 0.3, 1);
    const dims: Record<string, [number, number]> = { q_proj: [qW, a.D], k_proj: [kvW, a.D], v_proj: [kvW, a.D], o_proj: [a.D, qW], gate_proj: [a.F, a.D], up_proj: [a.F, a.D], down_proj: [a.D, a.F] };
    for (const [m, kind] of PROJ) {
      const [o, i] = dims[m]!;
      put(`${modulePath(l, m, kind)}.weight`, [o, i], 1.5 / Math.sqrt(i));
      if (a.qkvBias && (m === 'q_proj' || m === 'k_proj' || m === 'v_proj')) put(`${modulePath(l, m, kind)}.bias`, [o], 0.5);
    }
  }
  put('model.norm.weight', [a.D], 0.3, 1);
  if (!a.tied) put('lm_head.weight', [a.V, a.D], 1 / Math.sqrt(a.D));
  return out;
}

function writeTensors(file: string, ts: Map<string, { shape: number[]; data: Float32Array }>): void {
  const obj: Record<string, Tensor> = {};
  for (const [k, v] of ts) obj[k] = tensor(v.data, v.shape);
  try {
    writeSafetensors(file, obj);
  } finally {
    for (const t of Object.values(obj)) t.dispose();
  }
}

let work: string;
beforeAll(() => {
  work = fs.mkdtempSync(path.join(os.tmpdir(), 'lorakit-qwen-mistral-'));
});
afterAll(() => fs.rmSync(work, { recursive: true, force: true }));

describe('the float64 reference itself', () => {
  test("reproduces transformers' Llama logits, base and with the rsLoRA adapter (tiny-llama fixture)", () => {
    const dir = path.join(FIX, 'tiny-llama');
    const cfg = JSON.parse(fs.readFileSync(path.join(dir, 'config.json'), 'utf8')) as Record<string, unknown>;
    const a = archOf(cfg);
    const base = readSafetensors(path.join(dir, 'model.safetensors'));
    const ad = readSafetensors(path.join(dir, 'adapter_model.safetensors'));
    const ac = JSON.parse(fs.readFileSync(path.join(dir, 'adapter_config.json'), 'utf8')) as { r: number; lora_alpha: number; use_rslora: boolean };
    const ex = readSafetensors(path.join(dir, 'expected.safetensors'));
    const idsAll = Array.from(ex.get('input_ids')!.data as BigInt64Array, Number);
    const batch = [idsAll.slice(0, 24), idsAll.slice(24)];
    const w = (k: string) => base.get(k)?.data as Float64Array | undefined;
    const baseRef = referenceBatch(a, w, batch);
    expect(relErr(baseRef, ex.get('base_logits')!.data as Float64Array)).toBeLessThan(TOL);
    const s = ac.use_rslora ? ac.lora_alpha / Math.sqrt(ac.r) : ac.lora_alpha / ac.r;
    const loraRef = referenceBatch(a, withAdapter(w, (k) => ad.get(k)?.data as Float64Array | undefined, s, ac.r), batch);
    expect(relErr(loraRef, ex.get('lora_logits')!.data as Float64Array)).toBeLessThan(TOL);
    expect(Math.abs(referenceLoss(loraRef, batch, a.V) - (ex.get('lora_loss')!.data as Float64Array)[0]!)).toBeLessThan(1e-5);
  });
});

/** W + s·B·A in float64 for every module the adapter holds; other tensors as they are. */
function withAdapter(w: (name: string) => Vec | undefined, ad: (name: string) => Vec | undefined, s: number, r: number): (name: string) => Vec | undefined {
  const cache = new Map<string, Float64Array>();
  return (name) => {
    const m = /^(.+)\.weight$/.exec(name);
    const A = m && ad(`base_model.model.${m[1]}.lora_A.weight`), B = m && ad(`base_model.model.${m[1]}.lora_B.weight`);
    if (!A || !B) return w(name);
    if (!cache.has(name)) {
      const W = w(name)!, outF = B.length / r, inF = A.length / r;
      const ba = matmul64(B, outF, r, false, A, r, inF, false);
      cache.set(name, Float64Array.from(ba, (x, i) => W[i]! + s * x));
    }
    return cache.get(name);
  };
}

interface Case {
  name: string;
  config: Record<string, unknown>;
  lora: { r: number; alpha: number; rslora: boolean };
}

const CASES: Case[] = [
  {
    name: 'qwen2, tied embeddings',
    config: {
      model_type: 'qwen2', vocab_size: 64, hidden_size: 32, intermediate_size: 48, num_hidden_layers: 2, num_attention_heads: 4,
      num_key_value_heads: 2, max_position_embeddings: 32, rms_norm_eps: 1e-6, rope_theta: 1000000, tie_word_embeddings: true,
      use_sliding_window: false, sliding_window: 32, hidden_act: 'silu',
    },
    lora: { r: 4, alpha: 8, rslora: false },
  },
  {
    name: 'qwen2, own lm_head, transformers 5 rope_parameters',
    config: {
      model_type: 'qwen2', vocab_size: 64, hidden_size: 32, intermediate_size: 40, num_hidden_layers: 2, num_attention_heads: 4,
      num_key_value_heads: 1, max_position_embeddings: 32, rms_norm_eps: 1e-6, rope_parameters: { rope_theta: 50000, rope_type: 'default' },
      tie_word_embeddings: false, hidden_act: 'silu',
    },
    lora: { r: 2, alpha: 6, rslora: false },
  },
  {
    name: 'mistral, head_dim apart from hidden/heads, no sliding window',
    config: {
      model_type: 'mistral', vocab_size: 64, hidden_size: 32, intermediate_size: 56, num_hidden_layers: 2, num_attention_heads: 4,
      num_key_value_heads: 1, head_dim: 12, max_position_embeddings: 32, rms_norm_eps: 1e-5, rope_theta: 1000000, sliding_window: null,
      tie_word_embeddings: false, hidden_act: 'silu',
    },
    lora: { r: 4, alpha: 8, rslora: true },
  },
];

// Two rows of 12 tokens.
const BATCH = [0, 1].map((b) => {
  const r = rng(77 + b);
  return Array.from({ length: 12 }, () => Math.floor(r() * 64));
});
const idsTensor = (batch: number[][]) => tensor(BigInt64Array.from(batch.flat(), BigInt), [batch.length, batch[0]!.length]);

describe.each(CASES)('$name', ({ name, config, lora }) => {
  const a = archOf(config);
  const weights = randomWeights(config, 1000);
  const w = (k: string) => weights.get(k)?.data;
  const adapter = new Map<string, { shape: number[]; data: Float32Array }>();
  PROJ.forEach(([m, kind], j) => {
    for (let l = 0; l < a.L; l++) {
      const W = weights.get(`${modulePath(l, m, kind)}.weight`)!;
      const [outF, inF] = W.shape as [number, number];
      const key = `base_model.model.${modulePath(l, m, kind)}`;
      adapter.set(`${key}.lora_A.weight`, { shape: [lora.r, inF], data: randomArray(lora.r * inF, 5000 + 10 * j + l, 1 / Math.sqrt(inF)) });
      adapter.set(`${key}.lora_B.weight`, { shape: [outF, lora.r], data: randomArray(outF * lora.r, 6000 + 10 * j + l, 0.3) });
    }
  });
  const scale = lora.rslora ? lora.alpha / Math.sqrt(lora.r) : lora.alpha / lora.r;
  const adapted = withAdapter(w, (k) => adapter.get(k)?.data, scale, lora.r);
  let dir: string, adir: string;

  beforeAll(() => {
    dir = path.join(work, name.replace(/\W+/g, '-'));
    adir = `${dir}-adapter`;
    fs.mkdirSync(dir);
    fs.mkdirSync(adir);
    fs.writeFileSync(path.join(dir, 'config.json'), JSON.stringify(config));
    writeTensors(path.join(dir, 'model.safetensors'), weights);
    fs.writeFileSync(path.join(adir, 'adapter_config.json'), JSON.stringify({
      peft_type: 'LORA', r: lora.r, lora_alpha: lora.alpha, use_rslora: lora.rslora, lora_dropout: 0, bias: 'none',
      target_modules: PROJ.map(([m]) => m), init_lora_weights: false,
    }));
    writeTensors(path.join(adir, 'adapter_model.safetensors'), adapter);
  });

  test('base model: logits and loss equal the float64 reference', () => {
    using model = loadModel(dir);
    const r = model.forward(idsTensor(BATCH), { returnLogits: true });
    using logits = r.logits!;
    const ref = referenceBatch(a, w, BATCH);
    expect(relErr(logits.toFloat32Array(), ref)).toBeLessThan(TOL);
    expect(Math.abs(r.loss - referenceLoss(ref, BATCH, a.V))).toBeLessThan(1e-5);
    expect(r.tokens).toBe(2 * 11);
  });

  test("the architecture's particulars matter: dropping any of them moves the reference far from lorakit", () => {
    using model = loadModel(dir);
    using logits = model.forward(idsTensor(BATCH), { returnLogits: true }).logits!;
    const got = logits.toFloat32Array();
    const farFrom = (b: Arch, ww: (k: string) => Vec | undefined = w) => expect(relErr(got, referenceBatch(b, ww, BATCH))).toBeGreaterThan(1e-3);
    farFrom({ ...a, theta: 10000 }); // the config's RoPE base, not the default
    farFrom({ ...a, eps: a.eps === 1e-6 ? 1e-5 : 1e-6 }); // the config's epsilon
    if (a.qkvBias) farFrom(a, (k) => (k.endsWith('.bias') ? new Float64Array(weights.get(k)!.data.length) : w(k)));
    if (a.KV > 1) farFrom({ ...a, kvHead: (h) => h % a.KV }); // interleaved instead of grouped heads
    else farFrom({ ...a, window: 4 }); // full attention: a window would change it
    if (!a.tied) farFrom(a, (k) => (k === 'lm_head.weight' ? w('model.embed_tokens.weight') : w(k)));
    else expect(weights.has('lm_head.weight')).toBe(false);
  });

  test('with the adapter: logits equal the reference with W + s·B·A, and merging keeps them', () => {
    using model = loadModel(dir);
    const cfg = loadAdapter(model, adir);
    expect(cfg.useRslora).toBe(lora.rslora);
    const ids = idsTensor(BATCH);
    const ref = referenceBatch(a, adapted, BATCH);
    const before = model.forward(ids, { returnLogits: true });
    using bl = before.logits!;
    const unmerged = bl.toFloat32Array();
    expect(relErr(unmerged, ref)).toBeLessThan(TOL);
    expect(Math.abs(before.loss - referenceLoss(ref, BATCH, a.V))).toBeLessThan(1e-5);
    // The adapter must change the logits well beyond the tolerance, or this would not test it.
    expect(relErr(unmerged, referenceBatch(a, w, BATCH))).toBeGreaterThan(1e-2);
    model.mergeAdapters();
    for (const [key, lin] of model.linears) {
      const want = adapted(`${key}.weight`)!;
      expect(relErr((lin.weight as Tensor).toFloat32Array(), want)).toBeLessThan(1e-6);
      lin.detach();
    }
    using ml = model.forward(ids, { returnLogits: true }).logits!;
    const merged = ml.toFloat32Array();
    expect(relErr(merged, Float64Array.from(unmerged))).toBeLessThan(TOL);
    expect(relErr(merged, ref)).toBeLessThan(TOL);
    // What a merged checkpoint is written from: every tensor of the file under its name, W + s·B·A for the
    // projections, the rest as loaded; a tied head is not written twice.
    const exported = model.exportWeights();
    try {
      expect(Object.keys(exported).sort()).toEqual([...weights.keys()].sort());
      for (const [k, t] of Object.entries(exported)) expect(relErr(t.toFloat32Array(), adapted(k)!)).toBeLessThan(k.includes('_proj.weight') ? 1e-6 : 1e-12);
    } finally {
      for (const t of Object.values(exported)) t.dispose();
    }
  });

  test('forward and backward passes free every tensor they make (a leak would grow each training step)', () => {
    using model = loadModel(dir);
    loadAdapter(model, adir);
    const ids = idsTensor(BATCH);
    model.forwardBackward(ids, { train: true, seed: 1 }); // gradients are allocated on the first pass
    const held = memory().tensors;
    model.forward(ids);
    expect(memory().tensors).toBe(held);
    model.forwardBackward(ids, { train: true, seed: 2 });
    expect(memory().tensors).toBe(held);
    model.forward(ids, { returnLogits: true }).logits!.dispose();
    expect(memory().tensors).toBe(held);
  });

  test('dispose frees every tensor the model and its adapter hold', () => {
    const before = memory().tensors;
    const model = loadModel(dir);
    loadAdapter(model, adir);
    expect(memory().tensors).toBeGreaterThan(before);
    model.dispose();
    expect(memory().tensors).toBe(before);
  });

  test('LoRA dropout in training: the same seed gives the same loss, another seed another one', () => {
    using model = loadModel(dir);
    loadAdapter(model, adir);
    for (const lin of model.linears.values()) if (lin.adapter) lin.adapter.dropout = 0.5;
    const ids = idsTensor(BATCH);
    const loss = (seed: number) => model.forward(ids, { train: true, seed }).loss;
    const eval0 = model.forward(ids).loss;
    expect(Math.abs(eval0 - referenceLoss(referenceBatch(a, adapted, BATCH), BATCH, a.V))).toBeLessThan(1e-5);
    const l1 = loss(1), l2 = loss(2), l3 = loss(3);
    expect(loss(1)).toBe(l1);
    for (const [x, y] of [[l1, l2], [l1, l3], [l2, l3], [l1, eval0]]) expect(Math.abs(x! - y!)).toBeGreaterThan(1e-6);
  });

  test('the merge command writes a checkpoint of W + s·B·A (biases and a tied head kept as they were) whose logits equal the adapter\'s', () => {
    const out = `${dir}-merged`;
    const r = spawnSync(process.execPath, [CLI, 'merge', '--model', dir, '--adapter', adir, '--out', out], { encoding: 'utf8' });
    expect(r.stderr).toBe('');
    expect(r.status).toBe(0);
    const written = readSafetensors(path.join(out, 'model.safetensors'));
    expect([...written.keys()].sort()).toEqual([...weights.keys()].sort());
    for (const [k, t] of written) {
      expect([k, t.shape]).toEqual([k, weights.get(k)!.shape]);
      const want = adapted(k)!;
      if (want === w(k)) expect([k, Array.from(t.data as Float64Array)]).toEqual([k, Array.from(want, Number)]); // untouched: bit for bit
      else expect(relErr(t.data as Float64Array, want)).toBeLessThan(1e-6);
    }
    expect(JSON.parse(fs.readFileSync(path.join(out, 'config.json'), 'utf8'))).toMatchObject({ ...config, dtype: 'float32' });
    using model = loadModel(out);
    using logits = model.forward(idsTensor(BATCH), { returnLogits: true }).logits!;
    expect(relErr(logits.toFloat32Array(), referenceBatch(a, adapted, BATCH))).toBeLessThan(TOL);
  });
});

test('a tied Qwen2 config uses the embedding as its head even when the file also holds an lm_head.weight (transformers ties over it)', () => {
  const config = CASES[0]!.config;
  const weights = randomWeights(config, 4000);
  weights.set('lm_head.weight', { shape: [64, 32], data: randomArray(64 * 32, 4999, 0.2) });
  const dir = path.join(work, 'tied-with-stray-head');
  fs.mkdirSync(dir);
  fs.writeFileSync(path.join(dir, 'config.json'), JSON.stringify(config));
  writeTensors(path.join(dir, 'model.safetensors'), weights);
  using model = loadModel(dir);
  using logits = model.forward(idsTensor(BATCH), { returnLogits: true }).logits!;
  const w = (k: string) => weights.get(k)?.data;
  expect(relErr(logits.toFloat32Array(), referenceBatch(archOf(config), w, BATCH))).toBeLessThan(TOL);
  expect(relErr(logits.toFloat32Array(), referenceBatch({ ...archOf(config), tied: false }, w, BATCH))).toBeGreaterThan(1e-2);
});

describe("Mistral's sliding window", () => {
  const base = CASES[2]!.config;
  const save = (name: string, config: Record<string, unknown>) => {
    const dir = path.join(work, name);
    fs.mkdirSync(dir);
    fs.writeFileSync(path.join(dir, 'config.json'), JSON.stringify(config));
    writeTensors(path.join(dir, 'model.safetensors'), randomWeights(config, 3000));
    return dir;
  };

  test('a window as long as the context is full attention, and matches the windowed reference', () => {
    const config = { ...base, max_position_embeddings: 16, sliding_window: 16 };
    const dir = save('window-16', config);
    const weights = randomWeights(config, 3000);
    using model = loadModel(dir);
    using logits = model.forward(idsTensor(BATCH), { returnLogits: true }).logits!;
    expect(relErr(logits.toFloat32Array(), referenceBatch(archOf(config), (k) => weights.get(k)?.data, BATCH))).toBeLessThan(TOL);
  });

  test('a window shorter than the context is refused at load, naming it', () => {
    const dir = save('window-15', { ...base, max_position_embeddings: 16, sliding_window: 15 });
    expect(() => loadModel(dir)).toThrow(/sliding-window attention \(15\) is not supported/);
  });

  test('a sequence longer than the window is refused rather than attended in full; packed documents within it run', () => {
    const config = { ...base, max_position_embeddings: 8, sliding_window: 8 };
    const dir = save('window-8', config);
    const weights = randomWeights(config, 3000);
    const ref = (batch: number[][]) => referenceBatch(archOf(config), (k) => weights.get(k)?.data, batch);
    using model = loadModel(dir);
    const doc = (n: number, seed: number) => Array.from({ length: n }, (_, i) => (i * 7 + seed) % 64);
    // Position 8 would see 9 tokens where transformers sees 8.
    expectError(() => model.forward(idsTensor([doc(9, 1)])), LorakitRangeError, 'ERR_SHAPE', /position 8 of a row attends to 9 tokens, beyond the sliding window of 8/);
    // 8 tokens fit the window: lorakit equals the windowed reference.
    using l8 = model.forward(idsTensor([doc(8, 1)]), { returnLogits: true }).logits!;
    expect(relErr(l8.toFloat32Array(), ref([doc(8, 1)]))).toBeLessThan(TOL);
    // A packed row of 14: documents of 8 and 6 each stay within the window; 9 and 5 do not.
    const row = (xs: number[]) => tensor(BigInt64Array.from(xs, BigInt), [1, xs.length]);
    const packed = (n: number) => {
      const [a, b] = [doc(n, 1), doc(14 - n, 2)];
      return {
        ids: row([...a, ...b]),
        opts: { returnLogits: true, positions: row([...a.keys(), ...b.keys()]), docStarts: row([...a.map(() => 0), ...b.map(() => n)]) },
        a, b,
      };
    };
    const ok = packed(8);
    using lp = model.forward(ok.ids, ok.opts).logits!;
    expect(relErr(lp.toFloat32Array(), Float64Array.from([...ref([ok.a]), ...ref([ok.b])]))).toBeLessThan(TOL);
    const bad = packed(9);
    expectError(() => model.forward(bad.ids, bad.opts), LorakitRangeError, 'ERR_SHAPE', /position 8 of a row attends to 9 tokens/);
    const late = packed(5); // the second document, 9 long, starts at 5: its last token is position 13
    expectError(() => model.forward(late.ids, late.opts), LorakitRangeError, 'ERR_SHAPE', /position 13 of a row attends to 9 tokens/);
  });
});
