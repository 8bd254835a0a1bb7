/**
 * The generation engine against the model's own full forward pass (no cache), and against transformers'
 * logits (the peer fixtures): the paged KV cache, chunked prefill, continuous batching and the batched
 * multi-adapter LoRA path must change nothing but float rounding.
 */
import * as path from 'node:path';
import { loadModel } from '../lib/models';
import { randomModel } from '../lib/models/random';
import { type CausalLM } from '../lib/models/causal-lm';
import { addAdapter, loadAdapter, saveAdapter } from '../lib/adapters/adapter';
import { loadTokenizer } from '../lib/tokenizer/hub';
import { openSafetensors } from '../lib/io/safetensors';
import { Engine, type GenerationRequest } from '../lib/generate/engine';
import { tempDirs } from './helpers/tmp';
import { fullArgmax } from './helpers/greedy';

const ROOT = path.join(__dirname, '..');
const FIXTURES = path.join(ROOT, 'test', 'fixtures', 'peft');
// The shipped model's tokenizer (1024 ids) decodes every id of the 512-token test models.
const tokenizer = loadTokenizer(path.join(ROOT, 'assets', 'default'));
const tmp = tempDirs('lorakit-generate-');

const SHAPES: Record<string, Record<string, unknown>> = {
  gpt2: { model_type: 'gpt2', n_layer: 2, n_embd: 64, n_head: 4, vocab_size: 512, n_positions: 128 },
  llama: {
    model_type: 'llama', hidden_size: 64, intermediate_size: 176, num_hidden_layers: 2, num_attention_heads: 4,
    num_key_value_heads: 2, vocab_size: 512, max_position_embeddings: 256,
  },
  qwen2: {
    model_type: 'qwen2', hidden_size: 64, intermediate_size: 96, num_hidden_layers: 2, num_attention_heads: 4,
    num_key_value_heads: 1, vocab_size: 512, max_position_embeddings: 256, tie_word_embeddings: true, rope_theta: 1000000,
  },
  mistral: {
    model_type: 'mistral', hidden_size: 64, intermediate_size: 112, num_hidden_layers: 2, num_attention_heads: 8,
    num_key_value_heads: 2, head_dim: 16, vocab_size: 512, max_position_embeddings: 256, sliding_window: null,
  },
};

function model(shape: string, quantize: boolean): CausalLM {
  return randomModel(SHAPES[shape]!, { seed: 7, quantize });
}

/** An adapter whose B is not zero (init_lora_weights=False), so that it changes what the model says. */
function randomAdapter(m: CausalLM, seed: number, r: number): void {
  addAdapter(m, { r, loraAlpha: 2 * r, targetModules: 'all-linear', initLoraWeights: false, seed });
}

/**
 * Every greedy token the engine produced is the full forward's argmax after the prompt and the tokens
 * before it. Where the top two logits are closer than float32 reassociation can move them, the step is
 * counted as a tie instead (and there must be few).
 */
function expectGreedyMatches(m: CausalLM, prompt: readonly number[], tokens: readonly number[]): void {
  let ties = 0;
  tokens.forEach((tok, t) => {
    const ref = fullArgmax(m, [...prompt, ...tokens.slice(0, t)]);
    if (ref.margin < 1e-4) ties++;
    else expect({ step: t, token: tok }).toEqual({ step: t, token: ref.token });
  });
  expect(ties).toBeLessThanOrEqual(1);
}

const PROMPT = [5, 17, 300, 42, 8, 99, 411];

describe('greedy generation equals the argmax of the full forward at every step', () => {
  for (const shape of Object.keys(SHAPES))
    for (const quantize of [false, true])
      for (const adapter of [false, true])
        test(`${shape}, ${quantize ? 'NF4' : 'float32'} base, ${adapter ? 'with' : 'without'} an adapter`, async () => {
          using m = model(shape, quantize);
          if (adapter) randomAdapter(m, 3, 4);
          // A small block size and step budget: the prompt is prefilled in chunks across blocks.
          using engine = new Engine(m, tokenizer, { blockSize: 4, stepTokens: 3 });
          const r = await engine.generate({ prompt: PROMPT, maxTokens: 12, temperature: 0 }).result;
          expect(r.tokens).toHaveLength(12);
          expect(r.finishReason).toBe('length');
          expectGreedyMatches(m, PROMPT, r.tokens);
          expect(engine.stats.usedBlocks).toBe(0);
        });
});

describe('prefill logits equal transformers\' (peer fixtures)', () => {
  for (const name of ['tiny-gpt2', 'tiny-llama'])
    for (const withAdapter of [false, true])
      test(`${name} ${withAdapter ? 'with its PEFT adapter (unmerged, through the segmented kernel)' : 'base'}`, () => {
        const dir = path.join(FIXTURES, name);
        using m = loadModel(dir);
        using engine = new Engine(m, tokenizer, { blockSize: 8 });
        if (withAdapter) engine.addAdapter('peft', dir);
        using ref = openSafetensors(path.join(dir, 'expected.safetensors'));
        using ids = ref.load('input_ids');
        using expected = ref.load(withAdapter ? 'lora_logits' : 'base_logits');
        const [, seq] = ids.shape as [number, number];
        const row0 = Array.from(ids.data() as BigInt64Array, Number).slice(0, seq);
        const logits = engine.prefillLogits(row0, withAdapter ? 'peft' : null);
        const want = expected.toFloat32Array().subarray(0, seq * m.config.vocabSize);
        let diff = 0, norm = 0;
        for (let i = 0; i < want.length; i++) {
          diff += (logits[i]! - want[i]!) ** 2;
          norm += want[i]! ** 2;
        }
        expect(Math.sqrt(diff / norm)).toBeLessThan(1e-5);
        expect(engine.stats.usedBlocks).toBe(0);
      });
});

describe('many adapters in one batch', () => {
  test('a mixed batch (adapters A, B with different ranks, and none) gives each request what it gets alone', async () => {
    const dirs: Record<string, string> = {};
    for (const [name, seed, r] of [['A', 11, 4], ['B', 12, 8]] as const) {
      using m = model('llama', false);
      randomAdapter(m, seed, r);
      dirs[name] = tmp();
      saveAdapter(m, dirs[name]);
    }
    using base = model('llama', false);
    const requests: GenerationRequest[] = [];
    for (let i = 0; i < 9; i++)
      requests.push({ prompt: PROMPT.slice(0, 3 + (i % 5)).map((t) => (t + i * 7) % 512), adapter: [null, 'A', 'B'][i % 3], maxTokens: 6 + (i % 4), temperature: 0 });
    const alone: number[][] = [];
    for (const req of requests) {
      using e = new Engine(base, tokenizer, { blockSize: 4 });
      for (const [n, d] of Object.entries(dirs)) e.addAdapter(n, d);
      alone.push((await e.generate(req).result).tokens);
    }
    using mixed = new Engine(base, tokenizer, { blockSize: 4, stepTokens: 16 });
    for (const [n, d] of Object.entries(dirs)) mixed.addAdapter(n, d);
    const together = await Promise.all(requests.map((r) => mixed.generate(r).result));
    expect(together.map((r) => r.tokens)).toEqual(alone);
    // And each equals the model with that adapter attached, by the full forward.
    for (const name of ['A', 'B']) {
      using m = model('llama', false);
      loadAdapter(m, dirs[name]!);
      requests.forEach((req, i) => {
        if (req.adapter === name) expectGreedyMatches(m, req.prompt as number[], alone[i]!);
      });
    }
    // The adapters did change the output: otherwise this test proves nothing.
    expect(new Set(alone.slice(0, 3).map((t) => t.join(','))).size).toBe(3);
  });

  test('the adapter memory cap unloads the least recently used idle adapter and reloads it on demand', async () => {
    using m = model('llama', false);
    randomAdapter(m, 21, 4);
    const dir = tmp();
    saveAdapter(m, dir);
    using base = model('llama', false);
    // A, B and (on the CPU, the kernel's streaming layout) Bᵀ, in float32.
    const bytesOfOne = [...m.linears.values()].reduce((t, l) => t + (l.adapter ? (l.adapter.loraA.numel + 2 * l.adapter.loraB.numel) * 4 : 0), 0);
    using e = new Engine(base, tokenizer, { maxAdapterBytes: bytesOfOne * 2 });
    for (const n of ['x', 'y', 'z']) e.addAdapter(n, dir);
    expect(e.stats.loadedAdapters).toBe(2);
    expect(e.stats.adapterBytes).toBe(bytesOfOne * 2);
    const first = await e.generate({ prompt: PROMPT, adapter: 'x', maxTokens: 4, temperature: 0 }).result;
    const again = await e.generate({ prompt: PROMPT, adapter: 'z', maxTokens: 4, temperature: 0 }).result;
    expect(again.tokens).toEqual(first.tokens);
    expect(e.stats.loadedAdapters).toBe(2);
  });
});

describe('the engine under load and misuse', () => {
  test('a pool too small for every sequence preempts and recomputes, with the same tokens', async () => {
    using m = model('gpt2', false);
    const reqs = [0, 1, 2, 3].map((i) => ({ prompt: PROMPT.map((t) => (t + i) % 512), maxTokens: 10, temperature: 0 }));
    const roomy = new Engine(m, tokenizer, { blockSize: 4 });
    const want = await Promise.all(reqs.map((r) => roomy.generate(r).result));
    roomy.dispose();
    // 8 blocks of 4 = 32 tokens; four sequences of 17 need 20 blocks.
    using tight = new Engine(m, tokenizer, { blockSize: 4, cacheTokens: 32 });
    const got = await Promise.all(reqs.map((r) => tight.generate(r).result));
    expect(got.map((r) => r.tokens)).toEqual(want.map((r) => r.tokens));
    expect(tight.stats.usedBlocks).toBe(0);
  });

  test('streaming events concatenate to the result; cancel frees the blocks at once', async () => {
    using m = model('llama', false);
    using e = new Engine(m, tokenizer, { blockSize: 4 });
    const g = e.generate({ prompt: PROMPT, maxTokens: 10, temperature: 0 });
    const tokens: number[] = [];
    let text = '';
    for await (const ev of g) {
      tokens.push(ev.token);
      text += ev.delta;
    }
    const r = await g.result;
    expect(tokens.filter((t) => t >= 0)).toEqual(r.tokens.slice(0, tokens.length));
    expect(text).toBe(r.text);
    const long = e.generate({ prompt: PROMPT, maxTokens: 100, temperature: 0 });
    let seen = 0;
    for await (const _ of long) if (++seen === 3) break; // break cancels
    expect((await long.result).finishReason).toBe('abort');
    expect(e.stats.usedBlocks).toBe(0);
  });

  test('a full queue refuses with ERR_BUSY; a closed engine with ERR_CLOSED; bad requests name the field', async () => {
    using m = model('gpt2', false);
    using e = new Engine(m, tokenizer, { maxQueue: 2, maxBatch: 1 });
    // Admission happens between steps: until then both requests wait, and the queue is full.
    const a = e.generate({ prompt: PROMPT, maxTokens: 3 });
    e.generate({ prompt: PROMPT, maxTokens: 3 });
    expect(() => e.generate({ prompt: PROMPT, maxTokens: 3 })).toThrow(expect.objectContaining({ code: 'ERR_BUSY' }));
    expect(() => e.generate({ prompt: [], maxTokens: 3 })).toThrow(/'prompt'/);
    expect(() => e.generate({ prompt: [600], maxTokens: 3 })).toThrow(/'prompt\[0\]'.*\[0, 512\)/);
    expect(() => e.generate({ prompt: PROMPT, maxTokens: 0 })).toThrow(/maxTokens/);
    expect(() => e.generate({ prompt: PROMPT, adapter: 'nope' })).toThrow(/no adapter named "nope"/);
    expect(() => e.generate({ prompt: new Array(200).fill(1) })).toThrow(/200 tokens.*128/);
    await e.close({ graceMs: 10_000 });
    expect((await a.result).tokens).toHaveLength(3);
    expect(() => e.generate({ prompt: PROMPT })).toThrow(expect.objectContaining({ code: 'ERR_CLOSED' }));
  });

  test('stop strings end the text before them; a seed makes sampling repeatable', async () => {
    using m = model('llama', false);
    using e = new Engine(m, tokenizer);
    const free = await e.generate({ prompt: PROMPT, maxTokens: 12, temperature: 0 }).result;
    const cut = free.text.slice(2, 4);
    const stopped = await e.generate({ prompt: PROMPT, maxTokens: 12, temperature: 0, stop: [cut] }).result;
    expect(stopped.finishReason).toBe('stop');
    expect(stopped.text).toBe(free.text.slice(0, free.text.indexOf(cut)));
    const s1 = await e.generate({ prompt: PROMPT, maxTokens: 12, temperature: 1, seed: 5 }).result;
    const s2 = await e.generate({ prompt: PROMPT, maxTokens: 12, temperature: 1, seed: 5 }).result;
    expect(s2.tokens).toEqual(s1.tokens);
  });
});

describe('model.generate from the package', () => {
  test('streams the tokens the full forward picks, with the attached adapter, and frees its engine', async () => {
    const pkg = await import('../lib');
    using m = model('llama', false);
    randomAdapter(m, 9, 4);
    const g = m.generate(tokenizer, { prompt: PROMPT, maxTokens: 8, temperature: 0 });
    const streamed: number[] = [];
    let text = '';
    for await (const e of g) {
      streamed.push(e.token);
      text += e.delta;
    }
    const r = await g.result;
    expect(streamed.slice(0, r.tokens.length)).toEqual(r.tokens);
    expect(text).toBe(r.text);
    expect(r.text).toBe(tokenizer.decode(r.tokens, { skipSpecialTokens: true }));
    expectGreedyMatches(m, PROMPT, r.tokens);
    expect(typeof pkg.Engine).toBe('function');
    // The package's generate is the same path.
    const again = await pkg.generate(m, tokenizer, { prompt: PROMPT, maxTokens: 8, temperature: 0 }).result;
    expect(again.tokens).toEqual(r.tokens);
  });
});
