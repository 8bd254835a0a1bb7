import * as path from 'node:path';
import { Tensor, tensor } from '../lib';
import { loadModel } from '../lib/models';
import { loadAdapter } from '../lib/adapters/adapter';
import { matmul64, normRelErr, readSafetensors } from './helpers/reference';

const FIX = path.join(__dirname, 'fixtures/peft');

describe.each(['tiny-gpt2', 'tiny-llama'])('full fine-tuning gradients of %s', (name) => {
  const dir = path.join(FIX, name);
  const expected = readSafetensors(path.join(dir, 'expected.safetensors'));
  const e = expected.get('input_ids')!;
  const ids = () => tensor(e.data as BigInt64Array, e.shape);

  test('every linear dW agrees with PEFT: s·Bᵀ·dW = dA and s·dW·Aᵀ = dB', () => {
    using model = loadModel(dir);
    loadAdapter(model, dir);
    model.requireFullGrad();
    model.forwardBackward(ids());
    let checked = 0;
    for (const [mod, lin] of model.linears) {
      if (!lin.adapter) continue;
      const { loraA, loraB, scale } = lin.adapter;
      const [out, inF, r] = [lin.outFeatures, lin.inFeatures, loraA.shape[0]!];
      const dW = lin.baseGrads!.weight.toFloat32Array();
      const dA = matmul64(loraB.toFloat32Array(), out, r, true, dW, out, inF, false).map((v) => scale * v);
      const dB = matmul64(dW, out, inF, false, loraA.toFloat32Array(), r, inF, true).map((v) => scale * v);
      expect(normRelErr(dA, expected.get(`grad.base_model.model.${mod}.lora_A.default.weight`)!.data as Float64Array)).toBeLessThan(1e-4);
      expect(normRelErr(dB, expected.get(`grad.base_model.model.${mod}.lora_B.default.weight`)!.data as Float64Array)).toBeLessThan(1e-4);
      checked++;
    }
    expect(checked).toBe(model.linears.size);
  });

  test('embeddings, norms, biases and the head agree with central differences of the loss', () => {
    using model = loadModel(dir);
    model.requireFullGrad();
    model.forwardBackward(ids());
    const params = model.parameters();
    expect(params.length).toBeGreaterThan(model.linears.size);
    const pick = name === 'tiny-gpt2'
      ? ['transformer.wte.weight', 'transformer.wpe.weight', 'transformer.ln_f.weight', 'transformer.h.0.ln_1.bias', 'transformer.h.1.attn.c_attn.bias', 'transformer.h.0.mlp.c_fc.weight']
      : ['model.embed_tokens.weight', 'lm_head.weight', 'model.norm.weight', 'model.layers.0.input_layernorm.weight', 'model.layers.1.post_attention_layernorm.weight', 'model.layers.0.self_attn.k_proj.weight'];
    for (const pname of pick) {
      const p = params.find((x) => x.name === pname);
      expect(p).toBeDefined();
      const g = p!.grad.toFloat32Array();
      // The three largest gradient entries: where a wrong gradient would show most.
      const idx = [...g.keys()].sort((a, b) => Math.abs(g[b]!) - Math.abs(g[a]!)).slice(0, 3);
      for (const i of idx) {
        const fd = centralDifference(model, p!.param, i, ids);
        expect(Math.abs(fd - g[i]!)).toBeLessThan(1e-4 + 2e-2 * Math.abs(g[i]!));
      }
    }
  });
});

function centralDifference(model: ReturnType<typeof loadModel>, param: Tensor, i: number, ids: () => Tensor): number {
  const h = 1e-2;
  const data = param.toFloat32Array();
  const orig = data[i]!;
  const lossAt = (v: number) => {
    data[i] = v;
    param.storage().upload(data);
    return model.forward(ids()).loss;
  };
  const up = lossAt(orig + h), dn = lossAt(orig - h);
  lossAt(orig);
  return (up - dn) / (Math.fround(orig + h) - Math.fround(orig - h));
}
