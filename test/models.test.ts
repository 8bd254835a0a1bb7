import * as path from 'node:path';
import { tensor } from '../lib';
import { loadModel } from '../lib/models';
import { loadAdapter } from '../lib/lora/adapter';
import { normRelErr, readSafetensors, relErr } from './helpers/reference';

const FIX = path.join(__dirname, 'fixtures/peft');

describe.each(['tiny-gpt2', 'tiny-llama'])('%s matches transformers + PEFT', (name) => {
  const dir = path.join(FIX, name);
  const expected = readSafetensors(path.join(dir, 'expected.safetensors'));
  const ex = (k: string) => expected.get(k)!.data as Float64Array;
  const ids = () => {
    const e = expected.get('input_ids')!;
    return tensor(e.data as BigInt64Array, e.shape);
  };

  test('base model: logits and loss within 1e-5 relative', () => {
    using model = loadModel(dir);
    const r = model.forward(ids(), { returnLogits: true });
    expect(relErr(r.logits!.toFloat32Array(), ex('base_logits'))).toBeLessThan(1e-5);
    expect(Math.abs(r.loss - ex('base_loss')[0]!) / ex('base_loss')[0]!).toBeLessThan(1e-5);
    expect(r.tokens).toBe(2 * 23);
    r.logits!.dispose();
  });

  test('with the PEFT adapter: logits, loss, and every LoRA gradient', () => {
    using model = loadModel(dir);
    loadAdapter(model, dir);
    const r = model.forwardBackward(ids(), { returnLogits: true });
    expect(relErr(r.logits!.toFloat32Array(), ex('lora_logits'))).toBeLessThan(1e-5);
    expect(Math.abs(r.loss - ex('lora_loss')[0]!) / ex('lora_loss')[0]!).toBeLessThan(1e-5);
    let checked = 0;
    for (const [key, lin] of model.linears) {
      if (!lin.grads) continue;
      for (const ab of ['A', 'B'] as const) {
        const ref = ex(`grad.base_model.model.${key}.lora_${ab}.default.weight`);
        expect(ref).toBeDefined();
        expect(normRelErr(lin.grads[`lora${ab}`].toFloat32Array(), ref)).toBeLessThan(1e-4);
        checked++;
      }
    }
    expect(checked).toBe([...expected.keys()].filter((k) => k.startsWith('grad.')).length);
    // Gradients accumulate across calls until zeroGrad.
    const first = [...model.linears.values()][0]!.grads!.loraB.toFloat32Array();
    model.forwardBackward(ids());
    const twice = [...model.linears.values()][0]!.grads!.loraB.toFloat32Array();
    expect(normRelErr(twice, Float64Array.from(first, (v) => 2 * v))).toBeLessThan(1e-6);
    model.zeroGrad();
    expect([...model.linears.values()][0]!.grads!.loraB.toFloat32Array().every((v) => v === 0)).toBe(true);
  });
});
