import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { NF4Tensor, Tensor, io, lora, nf4, tensor } from '../lib';
import { loadModel } from '../lib/models';
import { relErr } from './helpers/reference';

const LLAMA = path.join(__dirname, 'fixtures/peft/tiny-llama');
const GPT2 = path.join(__dirname, 'fixtures/peft/tiny-gpt2');
const ids = () => tensor(new BigInt64Array(Array.from({ length: 2 * 16 }, (_, i) => BigInt((i * 53 + 11) % 512))), [2, 16]);
const logitsOf = (m: ReturnType<typeof loadModel>) => {
  const r = m.forward(ids(), { returnLogits: true });
  const out = r.logits!.toFloat32Array();
  r.logits!.dispose();
  return out;
};

describe('loading options', () => {
  test.each([LLAMA, GPT2])('bfloat16 linear weights stay within bf16 rounding of float32 (%s)', (dir) => {
    using f = loadModel(dir);
    using b = loadModel(dir, { dtype: 'bfloat16' });
    expect([...b.linears.values()].every((l) => (l.weight as Tensor).dtype === 'bfloat16')).toBe(true);
    const err = relErr(logitsOf(b), logitsOf(f));
    expect(err).toBeGreaterThan(0);
    expect(err).toBeLessThan(2e-2);
  });

  test('quantize: NF4 linears give the logits of the same weights quantized by hand', () => {
    using q = loadModel(LLAMA, { quantize: { doubleQuant: false, blockSize: 64, modules: ['q_proj', 'down_proj'] } });
    const kinds = [...q.linears.entries()].map(([n, l]) => [n.split('.').pop(), l.weight instanceof NF4Tensor]);
    expect(kinds.filter(([, isQ]) => isQ).map(([n]) => n).sort()).toEqual(['down_proj', 'down_proj', 'q_proj', 'q_proj']);
    using f = loadModel(LLAMA);
    for (const [name, l] of f.linears)
      if (/q_proj|down_proj/.test(name)) {
        const w = l.weight as Tensor;
        l.weight = nf4.quantize(w, { blockSize: 64 });
        w.dispose();
      }
    expect(Array.from(logitsOf(q))).toEqual(Array.from(logitsOf(f)));
    // QLoRA training path: gradients flow through NF4 bases.
    lora.addAdapter(q, { r: 4, initLoraWeights: false, seed: 2 });
    const r = q.forwardBackward(ids());
    expect(Number.isFinite(r.loss)).toBe(true);
    const g = q.linears.get('model.layers.0.self_attn.q_proj')!.grads!.loraA.toFloat32Array();
    expect(g.some((v) => v !== 0)).toBe(true);
  });

  test('a checkpoint bitsandbytes already quantized (nested absmax) loads as NF4', () => {
    const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'lorakit-bnb-'));
    fs.copyFileSync(path.join(LLAMA, 'config.json'), path.join(dir, 'config.json'));
    const src = io.openSafetensors(path.join(LLAMA, 'model.safetensors'));
    const out: Record<string, Tensor> = {};
    const code = tensor(nf4.NF4_CODE.slice(), [16]);
    for (const key of src.keys()) {
      const t = src.load(key);
      if (!/_proj\.weight$/.test(key)) {
        out[key] = t;
        continue;
      }
      // The layout bitsandbytes' QuantState.as_dict(packed=True) writes into a state dict.
      const q = nf4.quantize(t, { blockSize: 64, doubleQuant: true });
      out[key] = q.packed.reshape([q.packed.numel, 1]);
      out[`${key}.absmax`] = q.absmaxCodes!;
      out[`${key}.nested_absmax`] = q.absmaxScales!;
      out[`${key}.quant_map`] = code;
      out[`${key}.nested_quant_map`] = tensor(nf4.absmaxCodeBook(), [256]);
      const state = { quant_type: 'nf4', blocksize: 64, dtype: 'float32', shape: t.shape, nested_blocksize: 256, nested_dtype: 'float32', nested_offset: q.absmaxOffset };
      out[`${key}.quant_state.bitsandbytes__nf4`] = tensor(new Uint8Array(Buffer.from(JSON.stringify(state))), undefined, { dtype: 'uint8' });
    }
    io.writeSafetensors(path.join(dir, 'model.safetensors'), out);
    src.close();
    using pre = loadModel(dir);
    using ours = loadModel(LLAMA, { quantize: true });
    expect([...pre.linears.values()].every((l) => l.weight instanceof NF4Tensor)).toBe(true);
    expect(Array.from(logitsOf(pre))).toEqual(Array.from(logitsOf(ours)));
    // A different nested map (torch 1.x built one) would make the codes mean other values: refused.
    const other = nf4.absmaxCodeBook();
    other[200] = other[200]! * 1.0001;
    const saved = out['model.layers.1.mlp.up_proj.weight.nested_quant_map']!;
    out['model.layers.1.mlp.up_proj.weight.nested_quant_map'] = tensor(other, [256]);
    io.writeSafetensors(path.join(dir, 'model.safetensors'), out);
    expect(() => loadModel(dir)).toThrow(/up_proj\.weight' \(bitsandbytes NF4\): its nested_quant_map differs from bitsandbytes' signed dynamic map at entry 200/);
    out['model.layers.1.mlp.up_proj.weight.nested_quant_map'] = saved;
    // A quant state for another shape is refused with the module's name.
    const bad = JSON.stringify({ quant_type: 'nf4', blocksize: 64, dtype: 'float32', shape: [3, 3] });
    out['model.layers.0.self_attn.q_proj.weight.quant_state.bitsandbytes__nf4'] = tensor(new Uint8Array(Buffer.from(bad)), undefined, { dtype: 'uint8' });
    io.writeSafetensors(path.join(dir, 'model.safetensors'), out);
    expect(() => loadModel(dir)).toThrow(/q_proj\.weight' \(bitsandbytes NF4\): the quant state's shape \[3,3\] does not match the config's \[64, 64\]/);
  });

  test('bad options and checkpoints that do not fit the config', () => {
    expect(() => loadModel(LLAMA, { dtype: 'float16' as never })).toThrow(/'dtype' must be 'float32' or 'bfloat16'/);
    const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'lorakit-bad-'));
    const cfg = JSON.parse(fs.readFileSync(path.join(LLAMA, 'config.json'), 'utf8'));
    fs.writeFileSync(path.join(dir, 'config.json'), JSON.stringify({ ...cfg, intermediate_size: 100 }));
    fs.copyFileSync(path.join(LLAMA, 'model.safetensors'), path.join(dir, 'model.safetensors'));
    expect(() => loadModel(dir)).toThrow(/'model\.layers\.0\.mlp\.gate_proj\.weight' has shape \[176, 64\], the config implies \[100, 64\]/);
    fs.writeFileSync(path.join(dir, 'config.json'), JSON.stringify({ ...cfg, model_type: 'bert' }));
    expect(() => loadModel(dir)).toThrow(/model_type is "bert"; lorakit supports gpt2, llama, mistral, qwen2/);
    fs.writeFileSync(path.join(dir, 'config.json'), JSON.stringify(cfg));
    const bytes = fs.readFileSync(path.join(LLAMA, 'model.safetensors'));
    fs.writeFileSync(path.join(dir, 'model.safetensors'), bytes.subarray(0, bytes.length - 100));
    expect(() => loadModel(dir)).toThrow(/truncated/);
  });
});

test('GPT-2 checkpoints load with or without the transformer. prefix', () => {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'lorakit-noprefix-'));
  fs.copyFileSync(path.join(GPT2, 'config.json'), path.join(dir, 'config.json'));
  const src = io.openSafetensors(path.join(GPT2, 'model.safetensors'));
  const out: Record<string, Tensor> = {};
  for (const key of src.keys()) out[key.replace(/^transformer\./, '')] = src.load(key);
  src.close();
  expect(Object.keys(out).some((k) => k.startsWith('transformer.'))).toBe(false);
  io.writeSafetensors(path.join(dir, 'model.safetensors'), out);
  using a = loadModel(GPT2);
  using b = loadModel(dir);
  expect(Array.from(logitsOf(b))).toEqual(Array.from(logitsOf(a)));
  // Module names stay PEFT's (with the prefix), so the fixture's adapter still applies.
  expect([...b.linears.keys()][0]).toMatch(/^transformer\.h\.0\./);
});
