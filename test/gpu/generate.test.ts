// Generation on a GPU: the engine's KV pool, paged attention and segmented LoRA kernels on the device must
// give what the CPU gives: prefill logits within float32 reordering noise (a float32 pool) or bfloat16
// rounding (the default pool), and greedy tokens equal to the CPU's full forward argmax. Skipped, saying
// so, without a GPU backend.
import * as path from 'node:path';
import { loadModel } from '../../lib/models';
import { type CausalLM } from '../../lib/models/causal-lm';
import { addAdapter, saveAdapter } from '../../lib/adapters/adapter';
import { loadTokenizer } from '../../lib/tokenizer/hub';
import { Engine } from '../../lib/generate/engine';
import { gpuCount, backend } from '../../lib/backend';
import { normRelErr } from '../helpers/reference';
import { fullArgmax } from '../helpers/greedy';
import * as fs from 'node:fs';
import * as os from 'node:os';

const available = gpuCount() > 0;
if (!available) console.warn(`\n*** GPU generation test SKIPPED: no GPU backend is active (${backend().gpuUnavailableReason}) ***\n`);
const suite = available ? describe : describe.skip;
const quick = process.env.LORAKIT_GPU_TEST_QUICK === '1';
const MODEL = path.resolve(__dirname, '../../assets/default');
const tokenizer = loadTokenizer(MODEL);
const PROMPT = tokenizer.encode('Q: Where does Nell keep the yellow mirror?\nA:');
const NEW = quick ? 4 : 24;

/** The full forward's argmax (and its margin) after the prompt and each prefix of `tokens`. */
function argmaxTokens(m: CausalLM, prompt: readonly number[], tokens: readonly number[]): { ref: number[]; margins: number[] } {
  const steps = tokens.map((_, t) => fullArgmax(m, [...prompt, ...tokens.slice(0, t)]));
  return { ref: steps.map((s) => s.token), margins: steps.map((s) => s.margin) };
}

suite('generation on the GPU follows the CPU', () => {
  let adapterDir = '';
  let cpu: CausalLM;
  beforeAll(() => {
    cpu = loadModel(MODEL);
    addAdapter(cpu, { r: 8, loraAlpha: 16, targetModules: 'all-linear', initLoraWeights: false, seed: 2 });
    adapterDir = fs.mkdtempSync(path.join(os.tmpdir(), 'lorakit-gpu-gen-'));
    saveAdapter(cpu, adapterDir);
    cpu.dispose();
    cpu = loadModel(MODEL);
  });
  afterAll(() => {
    cpu.dispose();
    fs.rmSync(adapterDir, { recursive: true, force: true });
  });

  for (const kvDtype of ['float32', 'bfloat16'] as const)
    test(`prefill logits with a ${kvDtype} pool, base and adapter`, () => {
      using gpu = loadModel(MODEL, { device: 'cuda' });
      using eg = new Engine(gpu, tokenizer, { kvDtype });
      using ec = new Engine(cpu, tokenizer);
      eg.addAdapter('a', adapterDir);
      ec.addAdapter('a', adapterDir);
      for (const adapter of [null, 'a']) {
        const err = normRelErr(eg.prefillLogits(PROMPT, adapter), ec.prefillLogits(PROMPT, adapter));
        expect(err).toBeLessThan(kvDtype === 'float32' ? 1e-5 : 1e-2);
      }
      expect(eg.stats.usedBlocks).toBe(0);
    });

  test('greedy tokens of a mixed batch (base, adapter) equal the CPU full forward argmax', async () => {
    using gpu = loadModel(MODEL, { device: 'cuda' });
    using e = new Engine(gpu, tokenizer, { kvDtype: 'float32', blockSize: 8 });
    e.addAdapter('a', adapterDir);
    const [base, tuned] = await Promise.all([null, 'a'].map((adapter) => e.generate({ prompt: PROMPT, adapter, maxTokens: NEW, temperature: 0, stopAtEos: false }).result));
    const check = (m: CausalLM, tokens: number[]) => {
      const { ref, margins } = argmaxTokens(m, PROMPT, tokens);
      tokens.forEach((t, i) => {
        if (margins[i]! > 1e-4) expect({ i, t }).toEqual({ i, t: ref[i] });
      });
    };
    check(cpu, base!.tokens);
    using withAdapter = loadModel(MODEL);
    (await import('../../lib/adapters/adapter')).loadAdapter(withAdapter, adapterDir);
    check(withAdapter, tuned!.tokens);
    expect(tuned!.tokens).not.toEqual(base!.tokens);
    expect(e.stats.usedBlocks).toBe(0);
  });
});
