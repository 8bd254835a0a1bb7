/**
 * Issue #11, the data slice: sequences longer than the model's context, data files read in chunks, hostile
 * chat templates and tokenizer regexes, and target_modules that name no module of the model.
 */
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { LorakitTypeError, lora } from '../lib';
import { loadModel } from '../lib/models';
import { expectError } from './helpers/errors';

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
