/**
 * Issue #11, the data slice: sequences longer than the model's context, data files read in chunks, hostile
 * chat templates and tokenizer regexes, and target_modules that name no module of the model.
 */
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { LorakitError, LorakitTypeError, lora } from '../lib';
import { loadExamples } from '../lib/data';
import { loadModel } from '../lib/models';
import { loadTokenizer } from '../lib/tokenizer';
import { expectError } from './helpers/errors';
import { byteLevelJson } from './helpers/tokenizers';

const LLAMA = path.join(__dirname, 'fixtures/peft/tiny-llama');

let tmp: string;
beforeAll(() => {
  tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'lorakit-hardening-data-'));
});
afterAll(() => fs.rmSync(tmp, { recursive: true, force: true }));

let dirCount = 0;
function freshDir(): string {
  const dir = path.join(tmp, `d-${dirCount++}`);
  fs.mkdirSync(dir);
  return dir;
}

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
    fs.writeFileSync(path.join(dir, 'chat_template.jinja'), nested);
    expectError(() => loadExamples(data, loadTokenizer(dir)), LorakitError, 'ERR_TOKENIZER', `the chat template in '${path.join(dir, 'chat_template.jinja')}' did not finish`);
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
