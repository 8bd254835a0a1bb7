import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { LorakitError, LorakitRangeError, LorakitTypeError, Tensor, io, lora, tensor } from '../lib';
import { loadModel } from '../lib/models';
import { jacobiEigenvalues, readSafetensors, relErr } from './helpers/reference';

const FIX = path.join(__dirname, 'fixtures/peft');
const GPT2 = path.join(FIX, 'tiny-gpt2');
const LLAMA = path.join(FIX, 'tiny-llama');
const ids = () => tensor(new BigInt64Array(Array.from({ length: 2 * 12 }, (_, i) => BigInt((i * 37 + 5) % 512))), [2, 12]);
const tmp = () => fs.mkdtempSync(path.join(os.tmpdir(), 'lorakit-adapter-'));
const logits = (m: ReturnType<typeof loadModel>) => m.forward(ids(), { returnLogits: true }).logits!.toFloat32Array();

describe('choosing modules (PEFT semantics)', () => {
  test('all-linear, lists, regexes, exclusions, layers and patterns', () => {
    using g = loadModel(GPT2);
    expect(lora.targetModules(g, { ...lora.LORA_DEFAULTS, targetModules: 'all-linear' })).toHaveLength(8);
    using m = loadModel(LLAMA);
    const pick = (o: Partial<lora.LoraConfig>) => lora.targetModules(m, { ...lora.LORA_DEFAULTS, ...o });
    expect(pick({ targetModules: ['q_proj', 'v_proj'] })).toEqual([
      'model.layers.0.self_attn.q_proj', 'model.layers.0.self_attn.v_proj', 'model.layers.1.self_attn.q_proj', 'model.layers.1.self_attn.v_proj',
    ]);
    expect(pick({ targetModules: '.*layers\\.1\\.mlp\\.(up|down)_proj' })).toEqual(['model.layers.1.mlp.up_proj', 'model.layers.1.mlp.down_proj']);
    expect(pick({ targetModules: 'all-linear', excludeModules: ['o_proj', 'mlp.gate_proj'] })).toHaveLength(10);
    expect(pick({ targetModules: ['k_proj'], layersToTransform: [1] })).toEqual(['model.layers.1.self_attn.k_proj']);
    // 'proj' alone is not a module name: suffixes match whole dotted parts only.
    expect(pick({ targetModules: ['proj'] })).toEqual([]);
    const cfg = lora.addAdapter(m, { r: 4, loraAlpha: 8, targetModules: ['q_proj', 'down_proj'], rankPattern: { down_proj: 2 }, alphaPattern: { 'layers.1.self_attn.q_proj': 16 } });
    expect(cfg.r).toBe(4);
    const q0 = m.linears.get('model.layers.0.self_attn.q_proj')!, q1 = m.linears.get('model.layers.1.self_attn.q_proj')!, d0 = m.linears.get('model.layers.0.mlp.down_proj')!;
    expect(q0.adapter!.loraA.shape).toEqual([4, 64]);
    expect(q0.adapter!.scale).toBe(2);
    expect(q1.adapter!.scale).toBe(4);
    expect(d0.adapter!.loraB.shape).toEqual([64, 2]);
    expect(d0.adapter!.scale).toBe(4);
    expect(() => lora.addAdapter(m, { targetModules: ['c_attn'] })).toThrow(/target_modules \["c_attn"\] match no module of this llama model/);
  });
});

describe('initialisation', () => {
  test('true: B = 0 so the model is unchanged; A is Kaiming-uniform', () => {
    using m = loadModel(LLAMA);
    const base = logits(m);
    lora.addAdapter(m, { r: 8, seed: 3 });
    expect(Array.from(logits(m))).toEqual(Array.from(base));
    const a = m.linears.get('model.layers.0.mlp.down_proj')!.adapter!.loraA.toFloat32Array();
    const bound = 1 / Math.sqrt(176);
    const mx = a.reduce((x, v) => Math.max(x, Math.abs(v)), 0);
    expect(mx).toBeLessThanOrEqual(bound);
    expect(mx).toBeGreaterThan(0.98 * bound);
    const variance = a.reduce((x, v) => x + v * v, 0) / a.length;
    expect(Math.abs(variance - (bound * bound) / 3) / ((bound * bound) / 3)).toBeLessThan(0.1);
  });

  test("'gaussian': A ~ N(0, 1/r); false: both random, so outputs move", () => {
    using m = loadModel(LLAMA);
    const base = logits(m);
    lora.addAdapter(m, { r: 8, initLoraWeights: 'gaussian', seed: 1 });
    const a = Array.from(m.linears.get('model.layers.0.mlp.up_proj')!.adapter!.loraA.toFloat32Array());
    const sd = Math.sqrt(a.reduce((x, v) => x + v * v, 0) / a.length);
    expect(Math.abs(sd - 1 / 8) / (1 / 8)).toBeLessThan(0.1);
    lora.addAdapter(m, { r: 8, initLoraWeights: false, seed: 1 });
    expect(relErr(logits(m), base)).toBeGreaterThan(1e-4);
  });

  test("'pissa': s·B·A is W's best rank-r part, the base keeps the rest, and the model is unchanged", () => {
    using m = loadModel(GPT2);
    const name = 'transformer.h.0.mlp.c_fc';
    const w0 = (m.linears.get(name)!.weight as Tensor).toFloat32Array();
    const [out, inF] = [256, 64];
    const base = logits(m);
    lora.addAdapter(m, { r: 4, loraAlpha: 8, initLoraWeights: 'pissa', targetModules: ['c_fc'] });
    expect(relErr(logits(m), base)).toBeLessThan(1e-4);
    const lin = m.linears.get(name)!;
    const res = (lin.weight as Tensor).toFloat32Array();
    const principal = Float64Array.from(w0, (v, i) => v - res[i]!);
    // ||W_r||² = sum of the r largest eigenvalues of WᵀW (float64 Jacobi, independent of lorakit).
    const gram = new Float64Array(inF * inF);
    for (let i = 0; i < out; i++) for (let a = 0; a < inF; a++) for (let b = 0; b < inF; b++) gram[a * inF + b] += w0[i * inF + a]! * w0[i * inF + b]!;
    const eig = jacobiEigenvalues(gram, inF).sort((x, y) => y - x);
    const top = eig.slice(0, 4).reduce((x, v) => x + v, 0);
    const got = principal.reduce((x, v) => x + v * v, 0);
    expect(Math.abs(got - top) / top).toBeLessThan(1e-4);
  });
});

describe('saving and loading in PEFT format', () => {
  test('a saved adapter has exactly PEFT keys, shapes and config, and reloads to the same logits', () => {
    using m = loadModel(GPT2);
    lora.addAdapter(m, { r: 4, loraAlpha: 8, targetModules: ['c_attn', 'c_proj', 'c_fc'], initLoraWeights: false, seed: 9 });
    const before = logits(m);
    const dir = tmp();
    lora.saveAdapter(m, dir, { baseModelNameOrPath: 'tiny-gpt2' });
    expect(fs.readdirSync(dir).sort()).toEqual(['adapter_config.json', 'adapter_model.safetensors']);
    const ours = io.readSafetensorsHeader(path.join(dir, 'adapter_model.safetensors')).tensors;
    const peft = io.readSafetensorsHeader(path.join(GPT2, 'adapter_model.safetensors')).tensors;
    expect([...ours.keys()].sort()).toEqual([...peft.keys()].sort());
    for (const [k, info] of peft) expect(ours.get(k)!.shape).toEqual(info.shape);
    const cfg = JSON.parse(fs.readFileSync(path.join(dir, 'adapter_config.json'), 'utf8'));
    expect(cfg).toMatchObject({ peft_type: 'LORA', task_type: 'CAUSAL_LM', r: 4, lora_alpha: 8, bias: 'none', fan_in_fan_out: true, use_rslora: false, base_model_name_or_path: 'tiny-gpt2' });
    expect(cfg.target_modules).toEqual(['c_attn', 'c_proj', 'c_fc']);
    using again = loadModel(GPT2);
    lora.loadAdapter(again, dir);
    expect(Array.from(logits(again))).toEqual(Array.from(before));
  });

  test('the PEFT fixture adapter survives a load/save/load round trip bit for bit', () => {
    using m = loadModel(LLAMA);
    lora.loadAdapter(m, LLAMA);
    const dir = tmp();
    lora.saveAdapter(m, dir);
    const a = readSafetensors(path.join(LLAMA, 'adapter_model.safetensors'));
    const b = readSafetensors(path.join(dir, 'adapter_model.safetensors'));
    for (const [k, v] of a) expect(Array.from(b.get(k)!.data as Float64Array)).toEqual(Array.from(v.data as Float64Array));
    expect(lora.readLoraConfig(path.join(dir, 'adapter_config.json'))).toMatchObject({ r: 8, loraAlpha: 16, useRslora: true });
  });
});

describe('bad adapters', () => {
  test('an adapter for another architecture names the missing module', () => {
    using m = loadModel(GPT2);
    expect(() => lora.loadAdapter(m, LLAMA)).toThrow(LorakitTypeError);
    expect(() => lora.loadAdapter(m, LLAMA)).toThrow(/module 'model\.layers\.\d\..*' does not exist in this gpt2 model.*another architecture/);
    expect(m.adapterConfig).toBeUndefined();
    expect([...m.linears.values()].every((l) => !l.adapter)).toBe(true);
  });

  test('wrong shapes, broken configs and missing files', () => {
    using m = loadModel(LLAMA);
    const dir = tmp();
    fs.copyFileSync(path.join(LLAMA, 'adapter_model.safetensors'), path.join(dir, 'adapter_model.safetensors'));
    const cfg = JSON.parse(fs.readFileSync(path.join(LLAMA, 'adapter_config.json'), 'utf8'));
    const write = (c: unknown) => fs.writeFileSync(path.join(dir, 'adapter_config.json'), typeof c === 'string' ? c : JSON.stringify(c));
    write({ ...cfg, r: 4 });
    expect(() => lora.loadAdapter(m, dir)).toThrow(LorakitRangeError);
    expect(() => lora.loadAdapter(m, dir)).toThrow(/has shape \[8, \d+\], module '.*' with r=4 needs \[4, \d+\]/);
    write({ ...cfg, r: 0 });
    expect(() => lora.loadAdapter(m, dir)).toThrow(/'r' must be a positive integer, got 0/);
    write({ ...cfg, bias: 'all' });
    expect(() => lora.loadAdapter(m, dir)).toThrow(/bias "all" is not supported/);
    write('{"r": 8,');
    expect(() => lora.loadAdapter(m, dir)).toThrow(/adapter_config\.json' is not valid JSON/);
    fs.rmSync(path.join(dir, 'adapter_config.json'));
    expect(() => lora.loadAdapter(m, dir)).toThrow(LorakitError);
    expect(() => lora.loadAdapter(m, dir)).toThrow(/adapter_config\.json/);
    write(cfg);
    fs.writeFileSync(path.join(dir, 'adapter_model.safetensors'), Buffer.alloc(5));
    expect(() => lora.loadAdapter(m, dir)).toThrow(/adapter_model\.safetensors/);
    expect(() => lora.saveAdapter(m, dir)).toThrow(/has no adapter/);
  });
});
