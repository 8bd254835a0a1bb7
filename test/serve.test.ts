/**
 * lorakit serve as users call it: the official `openai` client against the server on a free loopback port,
 * with the real engine on the shipped model and two random LoRA adapters. The engine, called directly, is the
 * independent path (the one `lorakit generate` takes): every text the server sends must be the text the engine
 * gives for the same request.
 */
import { spawn, spawnSync } from 'node:child_process';
import * as http from 'node:http';
import * as path from 'node:path';
import OpenAI, { APIError, AuthenticationError, BadRequestError, NotFoundError, RateLimitError } from 'openai';
import { Engine, type GenerationRequest } from '../lib/generate/engine';
import { chatPrompt } from '../lib/generate/chat';
import { startServer, type Server } from '../lib/serve/server';
import { type ChatMessage } from '../lib/data/chat';
import { loadModel } from '../lib/models';
import { addAdapter, saveAdapter } from '../lib/lora-api';
import { loadTokenizer, type Tokenizer } from '../lib/tokenizer';
import { defaultModelWithTemplate } from './helpers/chat-model';
import { tempDirs } from './helpers/tmp';

const ROOT = path.resolve(__dirname, '..');
const CLI = path.join(ROOT, 'dist', 'cli', 'index.js');
const KEY = 'test-key-0123456789';
const PROMPTS = ['The red key', 'Once upon a time', 'A small dog', 'In the morning'];
// Prompts in the shipped corpus's question-and-answer form, which the model continues past 64 tokens.
const LONG = ['Q: What is the name of the goat?\nA:', 'Q: How many plums did Corin gather in all?\nA: Six.\nQ:'];
const CHAT: ChatMessage[] = [{ role: 'system', content: 'Answer briefly.' }, { role: 'user', content: 'Where is the red key?' }];

const tmp = tempDirs('lorakit-serve-');
let modelDir: string;
let adapterDirs: Record<string, string>;
/** The model ids the main server answers to: the base (its folder's name) and the two adapters. */
let MODELS: string[];
let engine: Engine;
let server: Server;
let client: OpenAI;
let tokenizer: Tokenizer;

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));
async function until(cond: () => boolean, ms: number): Promise<boolean> {
  for (const end = Date.now() + ms; Date.now() < end; await sleep(10)) if (cond()) return true;
  return cond();
}

const adapterOf = (model: string): string | null => (model === MODELS[0] ? null : model);

/** What the engine itself writes for a request, greedy. */
async function direct(e: Engine, model: string, prompt: GenerationRequest['prompt'], maxTokens: number, stop?: string[]) {
  return e.generate({ prompt, adapter: adapterOf(model), maxTokens, temperature: 0, stop }).result;
}

async function apiError(p: Promise<unknown>): Promise<APIError> {
  try {
    await p;
  } catch (e) {
    if (e instanceof APIError) return e;
    throw e;
  }
  throw new Error('the request succeeded; an error was expected');
}

function openaiClient(url: string, apiKey = KEY): OpenAI {
  return new OpenAI({ baseURL: `${url}/v1`, apiKey, maxRetries: 0, timeout: 60_000 });
}

beforeAll(async () => {
  const work = tmp();
  // The base model's id is its folder's name. Its chat template makes the chat routes render one.
  modelDir = defaultModelWithTemplate(path.join(work, 'tiny'));
  tokenizer = loadTokenizer(modelDir);
  // Two adapters unlike each other (targets, ranks), with random B so that each changes what the model writes.
  adapterDirs = { alpha: path.join(work, 'alpha'), beta: path.join(work, 'beta') };
  const specs: [string, Parameters<typeof addAdapter>[1]][] = [
    ['alpha', { r: 4, loraAlpha: 8, targetModules: ['q_proj', 'v_proj'], initLoraWeights: false, seed: 1 }],
    ['beta', { r: 8, loraAlpha: 16, targetModules: 'all-linear', initLoraWeights: false, seed: 2 }],
  ];
  for (const [name, options] of specs) {
    using m = loadModel(modelDir);
    addAdapter(m, options);
    saveAdapter(m, adapterDirs[name]!);
  }
  engine = Engine.load(modelDir, { maxBatch: 16 });
  for (const [name, dir] of Object.entries(adapterDirs)) engine.addAdapter(name, dir);
  MODELS = [engine.modelName, ...engine.adapterNames];
  server = await startServer(engine, { port: 0, apiKey: KEY, maxTokensLimit: 64, maxBodyBytes: 64 * 1024 });
  client = openaiClient(server.url);
});

afterAll(async () => {
  await server?.close({ graceMs: 0 });
  engine?.dispose();
});

describe('the OpenAI API, through the openai client', () => {
  test('/v1/models lists the base model and each adapter', async () => {
    const list = [];
    for await (const m of client.models.list()) list.push(m);
    expect(list.map((m) => m.id)).toEqual(['tiny', 'alpha', 'beta']);
    for (const m of list) {
      expect(m.object).toBe('model');
      expect(m.owned_by).toBe('lorakit');
    }
    const alpha = await client.models.retrieve('alpha');
    expect(alpha).toMatchObject({ id: 'alpha', parent: 'tiny' });
    const e = await apiError(client.models.retrieve('gamma'));
    expect(e).toBeInstanceOf(NotFoundError);
    expect(e.code).toBe('model_not_found');
  });

  test('completions equal the engine for the base and each adapter, streaming and not, with the right usage', async () => {
        const texts = new Set<string>();
    for (const model of MODELS) {
      const prompt = PROMPTS[0]!;
      const want = await direct(engine, model, prompt, 12);
      expect(want.tokens.length).toBeGreaterThan(3);
      texts.add(want.text);
      const got = await client.completions.create({ model, prompt, max_tokens: 12, temperature: 0 });
      expect(got).toMatchObject({ object: 'text_completion', model });
      expect(got.id).toMatch(/^cmpl-/);
      expect(got.choices).toEqual([{ index: 0, text: want.text, logprobs: null, finish_reason: want.finishReason }]);
      const promptTokens = tokenizer.encode(prompt).length;
      expect(got.usage).toEqual({ prompt_tokens: promptTokens, completion_tokens: want.tokens.length, total_tokens: promptTokens + want.tokens.length });

      const stream = await client.completions.create({ model, prompt, max_tokens: 12, temperature: 0, stream: true, stream_options: { include_usage: true } });
      const pieces: string[] = [];
      const finishes: (string | null)[] = [];
      let usage;
      for await (const chunk of stream) {
        expect(chunk.object).toBe('text_completion');
        expect(chunk.id).toMatch(/^cmpl-/);
        for (const c of chunk.choices) {
          if (c.text) pieces.push(c.text);
          finishes.push(c.finish_reason);
        }
        if (chunk.usage) usage = chunk.usage;
      }
      expect(pieces.length).toBeGreaterThan(2); // streamed as it was written, not in one piece
      expect(pieces.join('')).toBe(want.text);
      expect(finishes.filter((f) => f !== null)).toEqual([want.finishReason]);
      expect(finishes.at(-1)).toBe(want.finishReason);
      expect(usage).toEqual(got.usage);
    }
    // Each adapter changes what the model writes, so 'model' picking the wrong one would show.
    expect(texts.size).toBe(3);
  });

  test('chat completions equal the engine on the chat prompt, streaming and not', async () => {
    for (const model of MODELS) {
      const ids = chatPrompt(tokenizer, CHAT);
      const want = await direct(engine, model, ids, 10);
      const got = await client.chat.completions.create({ model, messages: CHAT, max_completion_tokens: 10, temperature: 0 });
      expect(got).toMatchObject({ object: 'chat.completion', model });
      expect(got.id).toMatch(/^chatcmpl-/);
      expect(got.choices[0]).toMatchObject({ index: 0, message: { role: 'assistant', content: want.text }, finish_reason: want.finishReason });
      expect(got.usage).toEqual({ prompt_tokens: ids.length, completion_tokens: want.tokens.length, total_tokens: ids.length + want.tokens.length });
      // max_tokens is read when max_completion_tokens is not given.
      const old = await client.chat.completions.create({ model, messages: CHAT, max_tokens: 4, temperature: 0 });
      expect(old.usage!.completion_tokens).toBe(Math.min(4, want.tokens.length));

      const stream = await client.chat.completions.create({ model, messages: CHAT, max_tokens: 10, temperature: 0, stream: true });
      const chunks: OpenAI.ChatCompletionChunk[] = [];
      for await (const chunk of stream) chunks.push(chunk);
      expect(chunks.every((c) => c.object === 'chat.completion.chunk' && c.id === chunks[0]!.id)).toBe(true);
      expect(chunks[0]!.choices[0]!.delta.role).toBe('assistant');
      expect(chunks.map((c) => c.choices[0]!.delta.content ?? '').join('')).toBe(want.text);
      expect(chunks.map((c) => c.choices[0]!.finish_reason)).toEqual([...chunks.slice(1).map(() => null), want.finishReason]);
    }
  });

  test('stop strings end the text before them, as the engine ends it', async () => {
    const model = MODELS[1]!;
    const full = await direct(engine, model, PROMPTS[1]!, 16);
    expect(full.text.length).toBeGreaterThan(8);
    const stop = full.text.slice(4, 7);
    const want = full.text.slice(0, full.text.indexOf(stop));
    const got = await client.completions.create({ model, prompt: PROMPTS[1]!, max_tokens: 16, temperature: 0, stop });
    expect(got.choices[0]).toMatchObject({ text: want, finish_reason: 'stop' });
    const both = await client.completions.create({ model, prompt: PROMPTS[1]!, max_tokens: 16, temperature: 0, stop: ['zzzq', stop] });
    expect(both.choices[0]!.text).toBe(want);
    expect((await direct(engine, model, PROMPTS[1]!, 16, [stop])).text).toBe(want);
  });

  test('token-id prompts, seeds and the lorakit sampling extras reach the engine', async () => {
    const ids = tokenizer.encode(PROMPTS[2]!);
    const want = await direct(engine, 'beta', ids, 8);
    const got = await client.completions.create({ model: 'beta', prompt: ids, max_tokens: 8, temperature: 0 });
    expect(got.choices[0]!.text).toBe(want.text);
    // Sampled with a seed, the server's answer is the engine's for the same seed and filters.
    const sampling = { temperature: 1.3, topP: 0.9, topK: 20, repetitionPenalty: 1.2, seed: 42 };
    const sampled = await engine.generate({ prompt: PROMPTS[2]!, adapter: 'beta', maxTokens: 12, ...sampling }).result;
    const greedy = await direct(engine, 'beta', PROMPTS[2]!, 12);
    expect(sampled.text).not.toBe(greedy.text);
    const body = { model: 'beta', prompt: PROMPTS[2]!, max_tokens: 12, temperature: 1.3, top_p: 0.9, top_k: 20, repetition_penalty: 1.2, seed: 42 };
    const viaServer = await client.completions.create(body as OpenAI.CompletionCreateParamsNonStreaming);
    expect(viaServer.choices[0]!.text).toBe(sampled.text);
  });

  test('bad fields are 400s naming the field, what was expected and what came', async () => {
    const cases: [Record<string, unknown>, string, RegExp][] = [
      [{ temperature: 'hot' }, 'temperature', /'temperature' must be a number from 0 to 2, got "hot"/],
      [{ temperature: 2.5 }, 'temperature', /'temperature' must be a number from 0 to 2, got 2.5/],
      [{ n: 2 }, 'n', /'n' must be 1 \(lorakit serve writes one choice per request\), got 2/],
      [{ max_tokens: 65 }, 'max_tokens', /'max_tokens' must be an integer from 1 to 64 \(this server's limit\), got 65/],
      [{ max_tokens: 1.5 }, 'max_tokens', /'max_tokens' must be an integer from 1 to 64/],
      [{ top_p: 0 }, 'top_p', /'top_p' must be a number above 0 and at most 1, got 0/],
      [{ top_k: -1 }, 'top_k', /'top_k' must be an integer of at least 0, got -1/],
      [{ repetition_penalty: 0 }, 'repetition_penalty', /'repetition_penalty' must be a number above 0, got 0/],
      [{ seed: 'x' }, 'seed', /'seed' must be an integer, got "x"/],
      [{ stop: ['a', 'b', 'c', 'd', 'e'] }, 'stop', /'stop' must be a non-empty string or an array of at most 4 of them, got \["a"/],
      [{ stream: 'yes' }, 'stream', /'stream' must be true or false, got "yes"/],
      [{ prompt: { text: 'hi' } }, 'prompt', /'prompt' must be a string or a non-empty array of token ids \(one prompt per request\), got \{"text":"hi"\}/],
      [{ prompt: ['one', 'two'] }, 'prompt', /'prompt' must be a string or a non-empty array of token ids/],
      [{ logprobs: 2 }, 'logprobs', /'logprobs' is not supported by lorakit serve; leave it out \(got 2\)/],
      [{ echo: true }, 'echo', /'echo' is not supported/],
    ];
    for (const [change, param, message] of cases) {
      const e = await apiError(client.completions.create({ model: 'alpha', prompt: 'x', max_tokens: 2, ...change } as never));
      expect(e).toBeInstanceOf(BadRequestError);
      expect([e.param, e.type]).toEqual([param, 'invalid_request_error']);
      expect(e.message).toMatch(message);
    }
    const chat = await apiError(client.chat.completions.create({ model: 'alpha', messages: [{ role: 'robot', content: 'x' }] } as never));
    expect(chat).toBeInstanceOf(BadRequestError);
    expect(chat.param).toBe('messages');
    expect(chat.message).toMatch(/'messages\[0\]\.role' must be 'system', 'user' or 'assistant', got "robot"/);
    const none = await apiError(client.chat.completions.create({ model: 'alpha', messages: [] }));
    expect(none.message).toMatch(/'messages' must be a non-empty array/);
    // The engine's own checks come back as 400s too: a prompt longer than the context.
    const long = await apiError(client.completions.create({ model: 'alpha', prompt: new Array(300).fill(5), max_tokens: 2 }));
    expect(long).toBeInstanceOf(BadRequestError);
    expect(long.message).toMatch(/the prompt has 300 tokens; this engine's context holds 256/);
    const outside = await apiError(client.completions.create({ model: 'alpha', prompt: [5, 99999], max_tokens: 2 }));
    expect(outside.message).toMatch(/'prompt\[1\]' must be a token id in \[0, 1024\), got number 99999/);
    // An unknown model is OpenAI's 404.
    const missing = await apiError(client.completions.create({ model: 'gamma', prompt: 'x', max_tokens: 2 }));
    expect(missing).toBeInstanceOf(NotFoundError);
    expect([missing.status, missing.code, missing.param]).toEqual([404, 'model_not_found', 'model']);
    expect(missing.message).toMatch(/the model 'gamma' does not exist here; this server serves tiny, alpha, beta/);
  });

  test('the bearer token is required when the server has one', async () => {
    const wrong = await apiError(openaiClient(server.url, 'not-the-key').completions.create({ model: 'alpha', prompt: 'x', max_tokens: 2 }));
    expect(wrong).toBeInstanceOf(AuthenticationError);
    expect([wrong.status, wrong.code]).toEqual([401, 'invalid_api_key']);
    const prefix = await apiError(openaiClient(server.url, KEY.slice(0, -1)).models.list());
    expect(prefix).toBeInstanceOf(AuthenticationError);
    const bare = await fetch(`${server.url}/v1/models`);
    expect(bare.status).toBe(401);
    expect(bare.headers.get('www-authenticate')).toBe('Bearer');
    expect((await client.models.list()).data).toHaveLength(3);
  });

  test('HTTP errors: malformed JSON 400, wrong method 405, unknown path 404, oversized body 413', async () => {
    const auth = { authorization: `Bearer ${KEY}`, 'content-type': 'application/json' };
    const post = (p: string, body: string) => fetch(`${server.url}${p}`, { method: 'POST', headers: auth, body });
    const malformed = await post('/v1/completions', '{"model": "alpha", ');
    expect(malformed.status).toBe(400);
    const m = (await malformed.json()) as { error: Record<string, unknown> };
    expect(m.error).toMatchObject({ type: 'invalid_request_error', param: null });
    expect(m.error.message).toMatch(/^the request body is not valid JSON/);
    expect((await post('/v1/completions', '[1, 2]')).status).toBe(400);
    const get = await fetch(`${server.url}/v1/completions`, { headers: auth });
    expect([get.status, get.headers.get('allow')]).toEqual([405, 'POST']);
    expect((await fetch(`${server.url}/v1/models`, { method: 'DELETE', headers: auth })).status).toBe(405);
    const unknown = await fetch(`${server.url}/v1/embeddings`, { method: 'POST', headers: auth, body: '{}' });
    expect(unknown.status).toBe(404);
    expect(((await unknown.json()) as { error: { message: string } }).error.message).toMatch(/there is no \/v1\/embeddings here/);
    const big = await post('/v1/completions', JSON.stringify({ model: 'alpha', prompt: 'x'.repeat(70 * 1024) }));
    expect(big.status).toBe(413);
    expect(((await big.json()) as { error: { message: string } }).error.message).toMatch(/larger than this server's limit of 65536 bytes/);
    // A body streamed without a length is cut at the limit too.
    const chunked = await fetch(`${server.url}/v1/completions`, {
      method: 'POST', headers: auth, duplex: 'half',
      body: new ReadableStream({ start: (c) => { for (let i = 0; i < 80; i++) c.enqueue(new Uint8Array(1024).fill(32)); c.close(); } }),
    } as RequestInit);
    expect(chunked.status).toBe(413);
    // And the server still answers.
    expect((await client.completions.create({ model: 'alpha', prompt: 'x', max_tokens: 1 })).choices).toHaveLength(1);
  });

  test('64 concurrent clients over mixed adapters, streaming and not, all get their own texts', async () => {
    const jobs = Array.from({ length: 64 }, (_, i) => ({ model: MODELS[i % 3]!, prompt: PROMPTS[i % 4]!, stream: i % 2 === 0, chat: i % 8 === 1 }));
    const key = (j: (typeof jobs)[number]) => `${j.model}|${j.chat ? 'chat' : j.prompt}`;
    const want = new Map<string, string>();
    for (const j of jobs)
      if (!want.has(key(j))) want.set(key(j), (await direct(engine, j.model, j.chat ? chatPrompt(tokenizer, [{ role: 'user', content: j.prompt }]) : j.prompt, 8)).text);
    expect(new Set(want.values()).size).toBe(want.size);
    let mostRunning = 0;
    const watch = setInterval(() => (mostRunning = Math.max(mostRunning, engine.stats.running)), 5);
    const run = async (j: (typeof jobs)[number]): Promise<string> => {
      const common = { model: j.model, max_tokens: 8, temperature: 0 };
      if (j.chat) {
        const messages: ChatMessage[] = [{ role: 'user', content: j.prompt }];
        if (!j.stream) return (await client.chat.completions.create({ ...common, messages })).choices[0]!.message.content!;
        let text = '';
        for await (const c of await client.chat.completions.create({ ...common, messages, stream: true })) text += c.choices[0]?.delta.content ?? '';
        return text;
      }
      if (!j.stream) return (await client.completions.create({ ...common, prompt: j.prompt })).choices[0]!.text;
      let text = '';
      for await (const c of await client.completions.create({ ...common, prompt: j.prompt, stream: true })) text += c.choices[0]?.text ?? '';
      return text;
    };
    const got = await Promise.all(jobs.map(run)).finally(() => clearInterval(watch));
    jobs.forEach((j, i) => expect([key(j), got[i]]).toEqual([key(j), want.get(key(j))]));
    // They ran together, in the engine's batch, rather than one after another.
    expect(mostRunning).toBeGreaterThan(4);
    expect(await until(() => engine.stats.usedBlocks === 0, 5000)).toBe(true);
  });

  test('clients killed mid-stream free their cache blocks', async () => {
    // Requests that, left alone, run to the 64-token limit (others meet eos first), so only their cancellation
    // can end them early.
    const candidates = MODELS.flatMap((model) => [...LONG, ...PROMPTS].map((prompt) => ({ model, prompt })));
    const alone = await Promise.all(candidates.map((j) => direct(engine, j.model, j.prompt, 64)));
    const jobs = candidates.filter((_, i) => alone[i]!.finishReason === 'length');
    expect(jobs.length).toBeGreaterThanOrEqual(4);
    const generate = jest.spyOn(engine, 'generate');
    try {
      const controllers = jobs.map(() => new AbortController());
      // Each client reads up to its first piece of text, then stops reading with the connection open.
      await Promise.all(
        jobs.map(async (j, i) => {
          const stream = await client.completions.create({ model: j.model, prompt: j.prompt, max_tokens: 64, temperature: 0, stream: true }, { signal: controllers[i]!.signal });
          const chunks = stream[Symbol.asyncIterator]();
          for (let c = await chunks.next(); !c.done && !c.value.choices[0]?.text; c = await chunks.next());
        }),
      );
      expect(engine.stats.usedBlocks).toBeGreaterThan(0);
      for (const c of controllers) c.abort();
      expect(await until(() => engine.stats.usedBlocks === 0 && engine.stats.running === 0, 5000)).toBe(true);
      const results = await Promise.all(generate.mock.results.map((r) => (r.value as { result: Promise<{ finishReason: string; tokens: number[] }> }).result));
      expect(results).toHaveLength(jobs.length);
      for (const r of results) {
        expect(r.finishReason).toBe('abort');
        expect(r.tokens.length).toBeLessThan(64);
      }
    } finally {
      generate.mockRestore();
    }
    // The server goes on serving.
    const want = await direct(engine, 'alpha', PROMPTS[0]!, 6);
    expect((await client.completions.create({ model: 'alpha', prompt: PROMPTS[0]!, max_tokens: 6, temperature: 0 })).choices[0]!.text).toBe(want.text);
  });
});

describe('a small queue under a flood, and shutdown', () => {
  let small: Engine;
  let smallServer: Server;
  let smallClient: OpenAI;
  beforeAll(async () => {
    small = Engine.load(modelDir, { maxBatch: 2, maxQueue: 2 });
    small.addAdapter('alpha', adapterDirs.alpha!);
    smallServer = await startServer(small, { port: 0, retryAfterSeconds: 2 });
    smallClient = openaiClient(smallServer.url);
  });
  afterAll(async () => {
    await smallServer.close({ graceMs: 0 });
    small.dispose();
  });

  test('a flood beyond the queue gets 429 with Retry-After, the rest their texts, and the server serves on', async () => {
    const want = await direct(small, 'alpha', PROMPTS[0]!, 32);
    const flood = Array.from({ length: 24 }, () => smallClient.completions.create({ model: 'alpha', prompt: PROMPTS[0]!, max_tokens: 32, temperature: 0 }));
    const outcomes = await Promise.allSettled(flood);
    const done = outcomes.filter((o) => o.status === 'fulfilled');
    const refused = outcomes.filter((o): o is PromiseRejectedResult => o.status === 'rejected');
    // Two running and two waiting are taken at once; the rest come faster than 32 tokens are written.
    expect(done.length).toBeGreaterThanOrEqual(4);
    expect(refused.length).toBeGreaterThan(0);
    for (const o of done) expect(o.value.choices[0]!.text).toBe(want.text);
    for (const o of refused) {
      expect(o.reason).toBeInstanceOf(RateLimitError);
      expect(o.reason.status).toBe(429);
      expect(o.reason.headers.get('retry-after')).toBe('2');
      expect([o.reason.code, o.reason.message]).toEqual(['rate_limit_exceeded', expect.stringMatching(/^429 lorakit serve is busy: .*\(maxQueue 2\)/)]);
    }
    expect(await until(() => small.stats.usedBlocks === 0, 5000)).toBe(true);
    expect((await smallClient.completions.create({ model: 'alpha', prompt: PROMPTS[0]!, max_tokens: 32, temperature: 0 })).choices[0]!.text).toBe(want.text);
  });

  test('close() ends the streams in flight, resolves, and the port then refuses connections', async () => {
    // Two running, then one waiting for a place; each would write 200 tokens.
    const read = async (): Promise<string> => {
      const stream = await smallClient.completions.create({ model: 'alpha', prompt: LONG[1]!, max_tokens: 200, temperature: 0, stream: true });
      let text = '';
      for await (const c of stream) text += c.choices[0]?.text ?? '';
      return text;
    };
    // Settled as they go: each rejects during close(), before the test looks at it.
    const outcomes = [Promise.allSettled([read()]), Promise.allSettled([read()])];
    expect(await until(() => small.stats.running === 2 && small.stats.usedBlocks > 0, 10_000)).toBe(true);
    outcomes.push(Promise.allSettled([read()]));
    expect(await until(() => small.stats.waiting === 1, 10_000)).toBe(true);
    // A request whose body is still arriving when the shutdown starts is answered 503, not left hanging.
    const body = JSON.stringify({ model: 'alpha', prompt: 'x', max_tokens: 2 });
    const late = http.request(`${smallServer.url}/v1/completions`, { method: 'POST', headers: { 'content-type': 'application/json', 'content-length': body.length } });
    const lateAnswer = new Promise<{ status?: number; retryAfter?: string; body: string }>((resolve, reject) => {
      late.on('response', (res) => {
        let text = '';
        res.on('data', (d) => (text += d));
        res.on('end', () => resolve({ status: res.statusCode, retryAfter: res.headers['retry-after'], body: text }));
      });
      late.on('error', reject);
    });
    late.write(body.slice(0, 10));
    await until(() => late.socket !== null && late.socket.bytesWritten > 0, 5000);
    const t0 = Date.now();
    const closing = smallServer.close({ graceMs: 50 });
    late.end(body.slice(10));
    await closing;
    expect(Date.now() - t0).toBeLessThan(5000);
    const answer = await lateAnswer;
    expect([answer.status, answer.retryAfter]).toEqual([503, '2']);
    expect(JSON.parse(answer.body).error).toMatchObject({ type: 'server_error', code: 'server_shutting_down' });
    const settled = (await Promise.all(outcomes)).flat();
    for (const s of settled) {
      expect(s.status).toBe('rejected');
      const reason = (s as PromiseRejectedResult).reason;
      expect(reason).toBeInstanceOf(APIError);
      expect(reason.message).toMatch(/lorakit serve is shutting down: .*before this completion finished/);
    }
    expect(small.stats.usedBlocks).toBe(0);
    const refused = await fetch(`${smallServer.url}/v1/models`).then(() => null, (e: Error & { cause?: { code?: string } }) => e.cause?.code);
    expect(refused).toBe('ECONNREFUSED');
    // A second close() is the same shutdown.
    await smallServer.close();
  });
});

describe('lorakit serve (the command)', () => {
  test('serves the openai client, and exits 0 on SIGTERM', async () => {
    const env = { ...process.env, LORAKIT_API_KEY: KEY };
    const child = spawn(process.execPath, [CLI, 'serve', '--model', modelDir, '--adapters', `alpha=${adapterDirs.alpha}`, `beta=${adapterDirs.beta}`, '--port', '0'], { env });
    let out = '';
    let err = '';
    child.stdout.on('data', (d) => (out += d));
    child.stderr.on('data', (d) => (err += d));
    const exited = new Promise<number | null>((resolve) => child.on('exit', (code) => resolve(code)));
    try {
      expect(await until(() => /^models: /m.test(out) || child.exitCode !== null, 30_000)).toBe(true);
      const url = /listening on (http:\/\/\S+)\/v1/.exec(out)?.[1];
      expect([url, err]).toEqual([expect.stringMatching(/^http:\/\/127\.0\.0\.1:\d+$/), '']);
      expect(out).toMatch(/^models: tiny, alpha, beta$/m);
      const ids = chatPrompt(tokenizer, CHAT);
      const want = await direct(engine, 'beta', ids, 8);
      const got = await openaiClient(url!).chat.completions.create({ model: 'beta', messages: CHAT, max_tokens: 8, temperature: 0 });
      expect(got.choices[0]!.message.content).toBe(want.text);
      // What `lorakit generate` prints, for the base model and each adapter, streamed and not.
      const prompt = 'Once upon a time';
      const texts: string[] = [];
      for (const [model, extra] of [['tiny', []], ['alpha', ['--adapter', adapterDirs.alpha!]], ['beta', ['--adapter', adapterDirs.beta!]]] as const) {
        const cli = spawnSync(process.execPath, [CLI, 'generate', '--model', modelDir, ...extra, '--prompt', prompt, '--max-tokens', '12', '--json'], { encoding: 'utf8' });
        expect(cli.stderr).toBe('');
        const text = (JSON.parse(cli.stdout) as { text: string }).text;
        const client = openaiClient(url!);
        const plain = await client.completions.create({ model, prompt, max_tokens: 12, temperature: 0 });
        expect(plain.choices[0]!.text).toBe(text);
        let streamed = '';
        for await (const chunk of await client.completions.create({ model, prompt, max_tokens: 12, temperature: 0, stream: true })) streamed += chunk.choices[0]?.text ?? '';
        expect(streamed).toBe(text);
        texts.push(text);
      }
      expect(new Set(texts).size).toBe(3);
      expect((await apiError(openaiClient(url!, 'wrong').models.list())).status).toBe(401);
    } finally {
      child.kill('SIGTERM');
    }
    expect(await until(() => child.exitCode !== null, 15_000)).toBe(true);
    expect(await exited).toBe(0);
    expect(out).toMatch(/SIGTERM: finishing the requests in flight, then exiting/);
  });

  test('refuses a non-loopback host without an API key, saying why', () => {
    const env = { ...process.env };
    delete env.LORAKIT_API_KEY;
    const r = spawnSync(process.execPath, [CLI, 'serve', '--model', modelDir, '--host', '0.0.0.0'], { encoding: 'utf8', env });
    expect(r.status).toBe(1);
    expect(r.stderr).toMatch(/^lorakit serve: --host 0\.0\.0\.0 can be reached from other machines, and without an API key anyone .*give --api-key \(or LORAKIT_API_KEY\), or --allow-remote/);
    const bad = spawnSync(process.execPath, [CLI, 'serve', '--model', modelDir, '--adapters', 'alpha'], { encoding: 'utf8', env });
    expect(bad.status).toBe(1);
    expect(bad.stderr).toMatch(/--adapters takes name=dir pairs .* got 'alpha'/);
  });
});
