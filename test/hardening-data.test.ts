/**
 * Issue #11, the data slice: sequences longer than the model's context, data files read in chunks, hostile
 * chat templates and tokenizer regexes, and target_modules that name no module of the model.
 */
import { spawnSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { ByteTokenizer, LorakitError, LorakitTypeError, lora } from '../lib';
import { loadExamples, type Example } from '../lib/data';
import { tokenizeChat, type ChatMessage } from '../lib/data/chat';
import { loadModel } from '../lib/models';
import { loadTokenizer, type Tokenizer } from '../lib/tokenizer';
import { train } from '../lib/train/trainer';
import { expectError } from './helpers/errors';
import { byteLevelJson } from './helpers/tokenizers';
import { tempDirs } from './helpers/tmp';

const LLAMA = path.join(__dirname, 'fixtures/peft/tiny-llama');
// The shipped model: a real byte-level BPE tokenizer, and a context of 256 positions.
const DEFAULT = path.join(__dirname, '../assets/default');
const CLI = path.resolve(__dirname, '../dist/cli/index.js');

const freshDir = tempDirs('lorakit-hardening-data-');

/** A model folder with the byte-level BPE test tokenizer, tokenizer.json changed by `overrides`, and this tokenizer_config.json. */
function modelDir(config: Record<string, unknown>, overrides: Record<string, unknown> = {}): string {
  const dir = freshDir();
  fs.writeFileSync(path.join(dir, 'tokenizer.json'), JSON.stringify(byteLevelJson(overrides)));
  fs.writeFileSync(path.join(dir, 'tokenizer_config.json'), JSON.stringify(config));
  return dir;
}

function dataFile(name: string, text: string): string {
  const file = path.join(freshDir(), name);
  fs.writeFileSync(file, text);
  return file;
}

const chat = (content: string) => JSON.stringify({ messages: [{ role: 'user', content: 'hi' }, { role: 'assistant', content }] }) + '\n';

/** `ids` cut into consecutive pieces of at most `n`: the reference for splitting. */
function chunks<T>(ids: readonly T[], n: number): T[][] {
  const out: T[][] = [];
  for (let k = 0; k < ids.length; k += n) out.push(ids.slice(k, k + n));
  return out;
}

/** Positions whose next token carries a loss, as the model counts them (it shifts labels by one). */
const lossTokens = (examples: readonly Example[]) => examples.reduce((n, ex) => n + ex.labels.slice(1).filter((l) => l !== -100).length, 0);

describe('sequences longer than the context', () => {
  test('a JSONL line of 120 KB is split at the context, with one warning; the pieces are the whole line\'s tokens', () => {
    const tok = loadTokenizer(DEFAULT);
    let huge = '';
    for (let i = 0; huge.length < 120_000; i++) huge += `line ${i} of a document far longer than any context. `;
    const completion = 'a completion '.repeat(40);
    const file = dataFile('long.jsonl', [{ text: huge }, { text: 'short' }, { prompt: 'q', completion }].map((l) => JSON.stringify(l)).join('\n') + '\n');
    const warnings: string[] = [];
    const examples = loadExamples(file, tok, { maxLength: 256, onWarning: (m) => warnings.push(m) });
    // The reference: the unsplit examples, cut into pieces of 256.
    const whole = loadExamples(file, tok);
    expect(whole.map((e) => e.inputIds.length > 256)).toEqual([true, false, true]);
    const expected = whole.flatMap((ex) => chunks(ex.inputIds, 256).map((ids, k) => ({ inputIds: ids, labels: chunks(ex.labels, 256)[k]! })));
    expect(examples).toEqual(expected);
    expect(Math.max(...examples.map((e) => e.inputIds.length))).toBe(256);
    expect(whole[0]!.inputIds).toEqual(tok.encode(huge));
    const pieces = expected.length - 1;
    expect(warnings).toEqual([`${file}: 2 of 3 examples had more than 256 tokens, the longest sequence allowed; each was split into pieces of at most 256 tokens (${pieces} pieces), each read as its own sequence`]);
  });

  test('eval splits at the model\'s context and says so: the count of scored tokens is that of the pieces', () => {
    // 2007 ids: 7 pieces of 256 and one of 215; each piece's first token has no prediction.
    const long = Array.from({ length: 2007 }, (_, i) => (i * 31) % 1000);
    const file = dataFile('ids.jsonl', `${JSON.stringify({ input_ids: long })}\n${JSON.stringify({ input_ids: [1, 2, 3, 4] })}\n`);
    const r = spawnSync(process.execPath, [CLI, 'eval', '--model', DEFAULT, '--data', file, '--json'], { encoding: 'utf8', timeout: 120_000 });
    expect(r.status).toBe(0);
    const out = JSON.parse(r.stdout);
    expect(out.tokens).toBe(lossTokens([...chunks(long, 256), [1, 2, 3, 4]].map((ids) => ({ inputIds: ids, labels: ids }))));
    expect(out.tokens).toBe(2007 - 8 + 3);
    expect(out.examples).toBe(9);
    expect(r.stderr.match(/warning/g)).toHaveLength(1);
    expect(r.stderr).toContain(`lorakit eval: warning: ${file}: 1 of 2 examples had more than 256 tokens, the longest sequence allowed; it was split into pieces of at most 256 tokens (8 pieces)`);
  });

  test('train splits its training and eval data at the model\'s context, one warning for each file', async () => {
    // tiny-llama takes 64 positions.
    const long = Array.from({ length: 150 }, (_, i) => 20 + (i % 32));
    const short = Array.from({ length: 24 }, (_, i) => (20 + i * 7) % 512);
    const lines = (n: number) => [...Array.from({ length: n }, () => JSON.stringify({ input_ids: short })), JSON.stringify({ input_ids: long })].join('\n') + '\n';
    const data = dataFile('train.jsonl', lines(16));
    const evalData = dataFile('eval.jsonl', lines(2));
    const h = train({ model: LLAMA, data, evalData, batchSize: 2, seqLen: 32, steps: 1, progress: 'none', out: path.join(freshDir(), 'run'), seed: 1 });
    const logs: string[] = [];
    h.on('log', (l: string) => logs.push(l));
    const r = await h.done;
    expect(logs.filter((l) => l.includes('warning:') && l.includes('longest sequence allowed'))).toEqual([
      `warning: ${data}: 1 of 17 examples had more than 64 tokens, the longest sequence allowed; it was split into pieces of at most 64 tokens (3 pieces), each read as its own sequence`,
      `warning: ${evalData}: 1 of 3 examples had more than 64 tokens, the longest sequence allowed; it was split into pieces of at most 64 tokens (3 pieces), each read as its own sequence`,
    ]);
    const evalTokens = lossTokens([short, short, ...chunks(long, 64)].map((ids) => ({ inputIds: ids, labels: ids })));
    expect(r.evals.filter((e) => e.split === 'eval').map((e) => e.tokens)).toEqual([evalTokens, evalTokens]);
  });
});

describe('every reader of examples stops at the context (the siblings of eval and train)', () => {
  // 150 ids on models of 64 positions: pieces of 64, 64 and 22, each losing its first prediction.
  const long = Array.from({ length: 150 }, (_, i) => 20 + (i % 32));

  test('the library evaluate() reads a long example in pieces, on GPT-2 (learned positions) and Llama (RoPE)', async () => {
    const { evaluate } = await import('../lib/train/evaluate');
    const { tensor } = await import('../lib');
    for (const dir of [path.join(__dirname, 'fixtures/peft/tiny-gpt2'), LLAMA]) {
      using model = loadModel(dir);
      const r = evaluate(model, [{ inputIds: long, labels: long }]);
      expect(r.tokens).toBe(150 - 3);
      // The reference: each piece run by hand, the losses weighted by their predictions.
      let sum = 0;
      for (const ids of chunks(long, 64)) {
        using t = tensor(BigInt64Array.from(ids, BigInt), [1, ids.length]);
        sum += model.forward(t, { labels: t }).loss * (ids.length - 1);
      }
      expect(r.loss).toBeCloseTo(sum / 147, 5);
    }
  });

  test('merge --data runs only the first record, cut at the context', () => {
    const data = dataFile('probe.jsonl', `${JSON.stringify({ input_ids: long })}\n${JSON.stringify({ input_ids: [1, 2] })}\n`);
    const out = path.join(freshDir(), 'merged');
    const r = spawnSync(process.execPath, [CLI, 'merge', '--model', LLAMA, '--adapter', LLAMA, '--out', out, '--data', data], { encoding: 'utf8', timeout: 120_000 });
    expect(r.stderr).toBe('');
    expect(r.status).toBe(0);
    expect(r.stdout).toContain(`the first example of probe.jsonl (64 tokens)`);
  });

  test('analyze reads long retain and data examples in pieces, and says so', () => {
    const data = dataFile('retain.jsonl', `${JSON.stringify({ input_ids: long })}\n`);
    const r = spawnSync(process.execPath, [CLI, 'analyze', '--base', LLAMA, '--adapter', LLAMA, '--retain', data, '--json'], { encoding: 'utf8', timeout: 120_000 });
    expect(r.status).toBe(0);
    expect(JSON.parse(r.stdout).forgetting).toMatchObject({ examples: 3, tokens: 147 });
    expect(r.stderr).toBe(`lorakit analyze: warning: ${data}: 1 of 1 examples had more than 64 tokens, the longest sequence allowed; it was split into pieces of at most 64 tokens (3 pieces), each read as its own sequence\n`);
  });
});

describe('long conversations', () => {
  test('a conversation of many turns is tokenized once, not once per assistant message; its labels are the assistant turns', () => {
    const TEMPLATE = "{% for m in messages %}{{ '<|' + m.role + '|>' + m.content + '<|endoftext|>' }}{% endfor %}{% if add_generation_prompt %}{{ '<|assistant|>' }}{% endif %}";
    const hub = loadTokenizer(modelDir({ chat_template: TEMPLATE, eos_token: '<|endoftext|>' }));
    // Counts the characters the chat code has tokenized.
    let chars = 0;
    const counting: Tokenizer = {
      vocabSize: hub.vocabSize, bosTokenId: hub.bosTokenId, eosTokenId: hub.eosTokenId, padTokenId: hub.padTokenId,
      chatTemplate: hub.chatTemplate, chatTemplateFile: hub.chatTemplateFile, modelMaxLength: hub.modelMaxLength,
      encode: (text, o) => ((chars += text.length), hub.encode(text, o)),
      decode: (ids, o) => hub.decode(ids, o),
      tokenToId: (t) => hub.tokenToId(t),
    };
    const messages: ChatMessage[] = Array.from({ length: 120 }, (_, i) =>
      i % 2 ? { role: 'assistant', content: `hello world, answer ${i}.` } : { role: 'user', content: `the question ${i}, hello?` });
    const ex = tokenizeChat(messages, counting, 'chat');
    const text = messages.map((m) => `<|${m.role}|>${m.content}<|endoftext|>`).join('');
    expect(hub.decode(ex.inputIds)).toBe(text);
    // The reference: what is trained is each assistant message and the eos after it.
    const trained = ex.inputIds.filter((_, k) => ex.labels[k] !== -100);
    expect(hub.decode(trained)).toBe(messages.filter((m) => m.role === 'assistant').map((m) => `${m.content}<|endoftext|>`).join(''));
    // Once for the whole text, and once more piece by piece; each of the 60 assistant messages tokenizing all
    // before it would be 30 times the text.
    expect(chars).toBeLessThanOrEqual(2 * text.length);
  });
});

describe('data files are read in chunks', () => {
  // Multi-byte characters, CRLF line ends, blank and whitespace-only lines, no final line break.
  const TEXT = 'héllo wörld\r\nsecond line ☃\n\n  \n\tdoc two 𝄞 \r\n \t\r\n\r\nlast\r\nlines\r';
  const JSONL = ['{"text": "ä"}', '', '{"prompt": "☃ q", "completion": "𝄞"}\r', '  ', '{"text": "end"}'].join('\n');
  // The reference: the whole file read at once, split as the format says.
  const wholeTxt = (text: string) => text.split(/\r?\n(?:[ \t]*\r?\n)+/).map((d) => d.replace(/^(?:[ \t]*\r?\n)+|(?:\r?\n[ \t]*)+$/g, '')).filter((d) => d.trim() !== '');
  const tok = new ByteTokenizer({ bos: true, eos: true });

  test('any chunk size gives the examples of reading the whole file', () => {
    const txt = dataFile('d.txt', TEXT);
    const jsonl = dataFile('d.jsonl', JSONL);
    const docs = wholeTxt(TEXT);
    expect(docs).toEqual(['héllo wörld\r\nsecond line ☃', '\tdoc two 𝄞 ', 'last\r\nlines\r']);
    const txtExpected = docs.map((d) => ({ inputIds: tok.encode(d), labels: tok.encode(d) }));
    const records = JSONL.split('\n').filter((l) => l.trim() !== '').map((l) => JSON.parse(l));
    const p = tok.encode(records[1].prompt), c = tok.encode(records[1].completion, { addSpecialTokens: false });
    const jsonlExpected = [
      { inputIds: tok.encode('ä'), labels: tok.encode('ä') },
      { inputIds: [...p, ...c, tok.eosTokenId!], labels: [...p.map(() => -100), ...c, tok.eosTokenId!] },
      { inputIds: tok.encode('end'), labels: tok.encode('end') },
    ];
    for (const chunkBytes of [1, 2, 3, 5, 7, 64, 1 << 20]) {
      expect(loadExamples(txt, tok, { chunkBytes })).toEqual(txtExpected);
      expect(loadExamples(jsonl, tok, { chunkBytes })).toEqual(jsonlExpected);
    }
  });

  test('a line (or a text document) over the bound is an error naming the file and the line', () => {
    const line = JSON.stringify({ text: 'x'.repeat(200) });
    const jsonl = dataFile('big.jsonl', `{"text": "a"}\n${line}\n`);
    expectError(() => loadExamples(jsonl, new ByteTokenizer(), { maxLineBytes: 150, chunkBytes: 16 }), LorakitError, 'ERR_INVALID_ARG', `${jsonl}:2: the line is longer than 150 bytes`);
    expect(loadExamples(jsonl, new ByteTokenizer(), { maxLineBytes: line.length, chunkBytes: 16 })).toHaveLength(2);
    const txt = dataFile('big.txt', `a\n\n${'word '.repeat(20)}\n`.repeat(1) + `${'more '.repeat(20)}\n`.repeat(3));
    expectError(() => loadExamples(txt, new ByteTokenizer(), { maxLineBytes: 250, chunkBytes: 16 }), LorakitError, 'ERR_INVALID_ARG', `${txt}:3: the document starting at this line is longer than 250 bytes`);
  });
});

describe('hostile model folders', () => {
  const CHATML = "{% for m in messages %}{{ '<|' + m.role + '|>' + m.content }}{% endfor %}{% if add_generation_prompt %}{{ '<|assistant|>' }}{% endif %}";

  test('a chat template that loops for ever stops within its step budget, naming tokenizer_config.json', () => {
    const data = dataFile('chat.jsonl', chat('hello'));
    // The reference: the same conversation under a plain template renders as written.
    const good = loadTokenizer(modelDir({ chat_template: CHATML }));
    const ex = loadExamples(data, good);
    expect(good.decode(ex[0]!.inputIds)).toBe('<|user|>hi<|assistant|>hello');
    // 10^10 steps, in little memory: without a budget this runs for hours.
    // A text or a list doubled n times, in n steps.
    const doubled = (n: number, start = "'x'") => `{% set ns = namespace(s=${start}) %}{% for i in range(${n}) %}{% set ns.s = ns.s + ns.s %}{% endfor %}`;
    const nested = doubled(17, '[0]') + "{% for a in ns.s %}{% for b in ns.s %}{{ '' }}{% endfor %}{% endfor %}" + CHATML;
    for (const [template, what] of [
      [nested, /did not finish within 10\d{4} steps/],
      // One call that would build a list of 10^8 numbers.
      ['{% for i in range(100000000) %}{% endfor %}' + CHATML, /asked for range\(100000000\), more than the 10\d{4} steps a render may take/],
      // A text doubled 40 times: 2^40 characters.
      [doubled(40) + CHATML, /built a text of 16777216 characters \(the limit is 160000\d\d\)/],
    ] as const) {
      const dir = modelDir({ chat_template: template });
      expectError(() => loadExamples(data, loadTokenizer(dir)), LorakitError, 'ERR_TOKENIZER',
        `${data}:1: the chat template in '${path.join(dir, 'tokenizer_config.json')}'`, what);
    }
    // From chat_template.jinja, that file is named.
    const dir = modelDir({});
    fs.writeFileSync(path.join(dir, 'chat_template.jinja'), '{% for i in range(100000000) %}{% endfor %}' + CHATML);
    expectError(() => loadExamples(data, loadTokenizer(dir)), LorakitError, 'ERR_TOKENIZER', `the chat template in '${path.join(dir, 'chat_template.jinja')}' asked for range(100000000)`);
    // range() within the budget works as Jinja's does, steps included.
    const ranged = loadTokenizer(modelDir({ chat_template: "{% for i in range(3) %}{{ i }}{% endfor %}{% for i in range(10, 0, -4) %}{{ i }}{% endfor %}" + CHATML }));
    expect(ranged.decode(loadExamples(data, ranged)[0]!.inputIds)).toBe('012' + '1062' + '<|user|>hi<|assistant|>hello');
  });

  test('a tokenizer regex that backtracks exponentially is refused at load, naming tokenizer.json; the patterns real tokenizers use load', () => {
    const split = (regex: string) => ({
      pre_tokenizer: { type: 'Sequence', pretokenizers: [
        { type: 'Split', pattern: { Regex: regex }, behavior: 'Isolated', invert: false },
        { type: 'ByteLevel', add_prefix_space: false, trim_offsets: true, use_regex: false },
      ] },
    });
    for (const [regex, group] of [['(a+)+$', '(a+)+'], ['x|((?:ab*)*c)', '(?:ab*)*'], ['(\\s{1,}[a-z])*$', '(\\s{1,}[a-z])*']]) {
      const dir = modelDir({}, split(regex));
      expectError(() => loadTokenizer(dir), LorakitError, 'ERR_TOKENIZER', `'${path.join(dir, 'tokenizer.json')}': pre_tokenizer.pretokenizers[0].pattern.Regex`,
        `repeats ${JSON.stringify(group)}`, /catastrophic backtracking/);
    }
    const dir = modelDir({}, { normalizer: { type: 'Replace', pattern: { Regex: '(\\w+\\s?)*$' }, content: '' } });
    expectError(() => loadTokenizer(dir), LorakitError, 'ERR_TOKENIZER', 'normalizer.pattern.Regex');
    // GPT-2's, Llama 3's and Qwen2's split patterns, and bounded repeats of repeats, are fine, and split as they should.
    for (const regex of [
      "'s|'t|'re|'ve|'m|'ll|'d| ?\\p{L}+| ?\\p{N}+| ?[^\\s\\p{L}\\p{N}]+|\\s+(?!\\S)|\\s+",
      "(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}{1,3}| ?[^\\s\\p{L}\\p{N}]+[\\r\\n]*|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+",
      "(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}| ?[^\\s\\p{L}\\p{N}]+[\\r\\n]*|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+",
      '(?:\\d{1,3}){2}|[(+*?]+|\\(a+\\)+',
    ]) {
      const tok = loadTokenizer(modelDir({}, split(regex)));
      expect(tok.decode(tok.encode('Hello world 12345 (a+)+'))).toBe('Hello world 12345 (a+)+');
    }
  });
});

describe('target_modules that name no module (PEFT: "Target modules ... not found in the base model")', () => {
  test('a list with an unknown name is refused, naming it and the modules that exist; the model is left untouched', () => {
    using m = loadModel(LLAMA);
    // The reference: the distinct last parts of the model's linear module names.
    const kinds = [...new Set([...m.linears.keys()].map((n) => n.split('.').pop()!))];
    expect(kinds).toEqual(['q_proj', 'k_proj', 'v_proj', 'o_proj', 'gate_proj', 'up_proj', 'down_proj']);
    expectError(() => lora.addAdapter(m, { targetModules: ['q_proj', 'nonexistent'] }), LorakitTypeError, 'ERR_INVALID_ARG',
      /target_modules \["nonexistent"\] match no module of this llama model \(not found in the base model\)/, `its linear modules are ${kinds.join(', ')}`);
    expect(m.adapterConfig).toBeUndefined();
    expect([...m.linears.values()].filter((l) => l.adapter)).toHaveLength(0);
    // A name must be a whole dotted part: 'proj' is not one.
    expectError(() => lora.addAdapter(m, { targetModules: ['proj', 'self_attn.q_proj'] }), LorakitTypeError, 'ERR_INVALID_ARG', /target_modules \["proj"\] match no module/);
  });

  test('a regex (PEFT full-matches it) that matches no module is refused, and a regex JavaScript cannot compile is a lorakit error', () => {
    using m = loadModel(LLAMA);
    expectError(() => lora.addAdapter(m, { targetModules: '.*\\.attn\\.q_proj' }), LorakitTypeError, 'ERR_INVALID_ARG', /the target_modules regex "\.\*\\\\\.attn\\\\\.q_proj" matches no module/);
    // A partial match is no match.
    expectError(() => lora.addAdapter(m, { targetModules: 'q_proj' }), LorakitTypeError, 'ERR_INVALID_ARG', /regex "q_proj" matches no module/);
    expectError(() => lora.addAdapter(m, { targetModules: '(q_proj' }), LorakitTypeError, 'ERR_INVALID_ARG', /'target_modules' "\(q_proj" is not a valid regular expression/);
    expectError(() => lora.addAdapter(m, { targetModules: ['q_proj'], rankPattern: { '[q': 2 } }), LorakitTypeError, 'ERR_INVALID_ARG', /'rank_pattern' "\[q" is not a valid regular expression/);
    expect([...m.linears.values()].filter((l) => l.adapter)).toHaveLength(0);
    lora.addAdapter(m, { targetModules: '.*\\.self_attn\\.q_proj' });
    expect([...m.linears.values()].filter((l) => l.adapter).map((l) => l.name)).toEqual(['model.layers.0.self_attn.q_proj', 'model.layers.1.self_attn.q_proj']);
  });

  test('loading an adapter whose adapter_config.json targets a module the model lacks is refused, naming the file', () => {
    using m = loadModel(LLAMA);
    const dir = freshDir();
    fs.copyFileSync(path.join(LLAMA, 'adapter_model.safetensors'), path.join(dir, 'adapter_model.safetensors'));
    const cfg = JSON.parse(fs.readFileSync(path.join(LLAMA, 'adapter_config.json'), 'utf8'));
    fs.writeFileSync(path.join(dir, 'adapter_config.json'), JSON.stringify({ ...cfg, target_modules: [...cfg.target_modules, 'qkv_proj'] }));
    expectError(() => lora.loadAdapter(m, dir), LorakitTypeError, 'ERR_INVALID_ARG',
      `adapter: ${path.join(dir, 'adapter_config.json')}: target_modules ["qkv_proj"] match no module`, /its linear modules are q_proj, k_proj/);
    expect(m.adapterConfig).toBeUndefined();
    expect([...m.linears.values()].filter((l) => l.adapter)).toHaveLength(0);
    // The unchanged config loads.
    fs.writeFileSync(path.join(dir, 'adapter_config.json'), JSON.stringify(cfg));
    lora.loadAdapter(m, dir);
    expect([...m.linears.values()].filter((l) => l.adapter).length).toBeGreaterThan(0);
  });
});
