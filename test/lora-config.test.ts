/**
 * lib/lora/config.ts: PEFT's LoraConfig as lorakit reads it. Each rule against what PEFT's files and docs say,
 * written out here: defaults of a sparse adapter_config.json, every refused field with its message, the
 * rank/alpha patterns, target matching (lists by name suffix, strings as full regexes, exclusions, layers),
 * lorakit's presets, and the scale alpha/r or alpha/sqrt(r).
 */
import { LorakitError, LorakitRangeError, LorakitTypeError } from '../lib';
import { INIT_LORA_WEIGHTS, LORA_DEFAULTS, isTargetSpec, loraScale, matchTargets, moduleScale, parseLoraConfig, resolveTarget, type LoraConfig } from '../lib/lora/config';

const F = '/a/adapter_config.json';
const refused = (j: unknown): string => {
  try {
    parseLoraConfig(j, F);
  } catch (e) {
    expect(e).toBeInstanceOf(LorakitError);
    expect((e as LorakitError).code).toBe('ERR_INVALID_ARG');
    return (e as Error).message;
  }
  throw new Error('expected a refusal');
};

describe('parseLoraConfig', () => {
  test("a sparse file takes PEFT's defaults (r 8, alpha 8, dropout 0, no targets, init true)", () => {
    expect(parseLoraConfig({}, F)).toEqual({
      r: 8, loraAlpha: 8, loraDropout: 0, targetModules: [], excludeModules: null, useRslora: false,
      initLoraWeights: true, rankPattern: {}, alphaPattern: {}, layersToTransform: null,
    });
    expect(parseLoraConfig({ r: null, lora_alpha: null, lora_dropout: null, exclude_modules: null, rank_pattern: null, layers_to_transform: null }, F)).toMatchObject({
      r: 8, loraAlpha: 8, loraDropout: 0, excludeModules: null, rankPattern: {}, layersToTransform: null,
    });
  });

  test('every field read as written', () => {
    const c = parseLoraConfig({
      peft_type: 'LORA', r: 4, lora_alpha: 12.5, lora_dropout: 0.1, target_modules: 'q_proj|v_proj', exclude_modules: ['lm_head'],
      use_rslora: true, init_lora_weights: 'pissa', rank_pattern: { 'mlp.c_fc': 2 }, alpha_pattern: { c_fc: 0.5 }, layers_to_transform: 3, bias: 'none',
    }, F);
    expect(c).toEqual({
      r: 4, loraAlpha: 12.5, loraDropout: 0.1, targetModules: 'q_proj|v_proj', excludeModules: ['lm_head'], useRslora: true,
      initLoraWeights: 'pissa', rankPattern: { 'mlp.c_fc': 2 }, alphaPattern: { c_fc: 0.5 }, layersToTransform: [3],
    });
    expect(parseLoraConfig({ layers_to_transform: [0, 2], use_rslora: 'yes' }, F)).toMatchObject({ layersToTransform: [0, 2], useRslora: false });
    for (const init of INIT_LORA_WEIGHTS) expect(parseLoraConfig({ init_lora_weights: init }, F).initLoraWeights).toBe(init);
  });

  test.each<[unknown, string]>([
    [[], 'expected a JSON object, got []'],
    [null, 'expected a JSON object, got null'],
    [{ peft_type: 'IA3' }, 'peft_type must be "LORA", got "IA3"'],
    [{ r: 0 }, "'r' must be a positive integer, got 0"],
    [{ r: 2.5 }, "'r' must be a positive integer, got 2.5"],
    [{ r: '8' }, "'r' must be a positive integer, got \"8\""],
    [{ lora_alpha: 'x' }, "'lora_alpha' must be a number, got \"x\""],
    [{ lora_dropout: 'x' }, "'lora_dropout' must be a number, got \"x\""],
    [{ lora_dropout: -0.1 }, "'lora_dropout' must be in [0, 1), got -0.1"],
    [{ lora_dropout: 1 }, "'lora_dropout' must be in [0, 1), got 1"],
    [{ bias: 'all' }, 'bias "all" is not supported (only "none")'],
    [{ target_modules: ['q_proj', 3] }, "'target_modules' must be a list of names or a regex string, got [\"q_proj\",3]"],
    [{ exclude_modules: 5 }, "'exclude_modules' must be a list of names or a regex string, got 5"],
    [{ init_lora_weights: 'olora' }, "'init_lora_weights' \"olora\" is not supported (true, false, \"gaussian\" or \"pissa\")"],
    [{ layers_to_transform: 1.5 }, "'layers_to_transform' must be a layer index or a list of them, got 1.5"],
    [{ layers_to_transform: [0, '1'] }, "'layers_to_transform' must be a layer index or a list of them, got [0,\"1\"]"],
    [{ rank_pattern: [] }, "'rank_pattern' must be an object of module pattern to number, got []"],
    [{ rank_pattern: { q: 0 } }, "'rank_pattern.q' must be a positive integer, got 0"],
    [{ alpha_pattern: { q: 'x' } }, "'alpha_pattern.q' must be a number, got \"x\""],
  ])('%j is refused', (j, message) => {
    expect(refused(j)).toBe(`adapter: ${F}: ${message}`);
  });

  test('an alpha pattern may be fractional; a rank pattern may not', () => {
    expect(parseLoraConfig({ alpha_pattern: { q: 0.5 } }, F).alphaPattern).toEqual({ q: 0.5 });
    expect(refused({ rank_pattern: { q: 1.5 } })).toMatch(/'rank_pattern\.q' must be a positive integer, got 1\.5/);
  });
});

describe('loraScale and moduleScale', () => {
  test('alpha / r, or alpha / sqrt(r) with rsLoRA', () => {
    expect(loraScale(32, 16)).toBe(2);
    expect(loraScale(32, 16, true)).toBe(8);
    expect(loraScale(8, 2, true)).toBe(8 / Math.SQRT2);
    expect(() => loraScale(16, 0)).toThrow(LorakitRangeError);
    expect(() => loraScale(16, 0)).toThrow("loraScale: 'r' must be >= 1, got 0");
    expect(() => loraScale(16, 2.5)).toThrow("loraScale: 'r' must be an integer, got 2.5");
    expect(() => loraScale(NaN, 4)).toThrow(LorakitTypeError);
    expect(() => loraScale(NaN, 4)).toThrow("loraScale: 'loraAlpha' must be a finite number, got number NaN");
  });

  const config: LoraConfig = { ...LORA_DEFAULTS, r: 8, loraAlpha: 16, rankPattern: { 'layers\\.1\\.mlp\\.up_proj': 4, down_proj: 2 }, alphaPattern: { up_proj: 4 } };

  test('a pattern matches a whole name or a suffix after a dot, as a regex', () => {
    expect(moduleScale(config, 'model.layers.0.self_attn.q_proj')).toEqual({ r: 8, scale: 2 });
    expect(moduleScale(config, 'model.layers.1.mlp.up_proj')).toEqual({ r: 4, scale: 1 });
    expect(moduleScale(config, 'model.layers.0.mlp.up_proj')).toEqual({ r: 8, scale: 0.5 });
    expect(moduleScale(config, 'model.layers.0.mlp.down_proj')).toEqual({ r: 2, scale: 8 });
    expect(moduleScale(config, 'down_proj')).toEqual({ r: 2, scale: 8 });
    // A suffix must start after a dot: 'xdown_proj' is another module.
    expect(moduleScale(config, 'model.layers.0.mlp.xdown_proj')).toEqual({ r: 8, scale: 2 });
    expect(moduleScale({ ...config, useRslora: true }, 'model.layers.0.mlp.down_proj')).toEqual({ r: 2, scale: 16 / Math.SQRT2 });
  });

  test('a pattern JavaScript cannot compile is the config\'s error, naming the key', () => {
    expect(() => moduleScale({ ...config, rankPattern: { '(': 2 } }, 'q_proj')).toThrow(/adapter: 'rank_pattern' "\(" is not a valid regular expression/);
    expect(() => moduleScale({ ...config, alphaPattern: { '(': 2 } }, 'q_proj')).toThrow(/adapter: 'alpha_pattern' "\(" is not a valid regular expression/);
    expect(() => matchTargets(['q_proj'], { ...LORA_DEFAULTS, targetModules: '(' })).toThrow(/adapter: 'target_modules' "\(" is not a valid regular expression/);
    expect(() => matchTargets(['q_proj'], { ...LORA_DEFAULTS, excludeModules: '(' })).toThrow(/adapter: 'exclude_modules' "\(" is not a valid regular expression/);
  });
});

describe('matchTargets', () => {
  const llama = ['model.layers.0.self_attn.q_proj', 'model.layers.0.self_attn.v_proj', 'model.layers.0.mlp.up_proj', 'model.layers.1.self_attn.q_proj', 'model.layers.1.mlp.up_proj'];
  const base = { ...LORA_DEFAULTS };

  test("'all-linear' takes every linear; a list matches names or dotted suffixes", () => {
    expect(matchTargets(llama, base)).toEqual(llama);
    expect(matchTargets(llama, { ...base, targetModules: ['q_proj'] })).toEqual([llama[0], llama[3]]);
    expect(matchTargets(llama, { ...base, targetModules: ['self_attn.v_proj', 'mlp.up_proj'] })).toEqual([llama[1], llama[2], llama[4]]);
    expect(matchTargets(llama, { ...base, targetModules: ['proj'] })).toEqual([]);
    // A module named exactly so (a top-level module) matches too.
    expect(matchTargets(['lm_head', 'x.lm_head2'], { ...base, targetModules: ['lm_head'] })).toEqual(['lm_head']);
  });

  test('a string is a regex over the whole name', () => {
    expect(matchTargets(llama, { ...base, targetModules: '.*q_proj' })).toEqual([llama[0], llama[3]]);
    expect(matchTargets(llama, { ...base, targetModules: 'q_proj' })).toEqual([]);
    expect(matchTargets(llama, { ...base, targetModules: '.*\\.1\\..*' })).toEqual([llama[3], llama[4]]);
  });

  test('exclusions and layers narrow the match', () => {
    expect(matchTargets(llama, { ...base, excludeModules: ['up_proj'] })).toEqual([llama[0], llama[1], llama[3]]);
    expect(matchTargets(llama, { ...base, excludeModules: '.*layers\\.0\\..*' })).toEqual([llama[3], llama[4]]);
    expect(matchTargets(llama, { ...base, layersToTransform: [1] })).toEqual([llama[3], llama[4]]);
    expect(matchTargets(['transformer.h.2.attn.c_attn', 'transformer.h.0.attn.c_attn'], { ...base, layersToTransform: [2] })).toEqual(['transformer.h.2.attn.c_attn']);
    expect(matchTargets(['model.layers.12.mlp.up_proj', 'model.layers.2.mlp.up_proj'], { ...base, layersToTransform: [12] })).toEqual(['model.layers.12.mlp.up_proj']);
    // A module outside any layer is left out once layers are named.
    expect(matchTargets(['lm_head'], { ...base, layersToTransform: [0] })).toEqual([]);
    expect(matchTargets(['lm_head'], { ...base, layersToTransform: [1] })).toEqual([]);
  });
});

describe('target presets', () => {
  const gpt2 = ['transformer.h.0.attn.c_attn', 'transformer.h.0.attn.c_proj', 'transformer.h.0.mlp.c_fc', 'transformer.h.0.mlp.c_proj'];
  const llama = ['model.layers.0.self_attn.q_proj', 'model.layers.0.self_attn.o_proj', 'model.layers.0.mlp.gate_proj', 'model.layers.0.mlp.down_proj'];

  test('each preset keeps the names the model has', () => {
    expect(resolveTarget('all-linear', gpt2)).toBe('all-linear');
    expect(resolveTarget('attention', gpt2)).toEqual(['c_attn', 'attn.c_proj']);
    expect(resolveTarget('mlp', gpt2)).toEqual(['c_fc', 'mlp.c_proj']);
    expect(resolveTarget('attention', llama)).toEqual(['q_proj', 'o_proj']);
    expect(resolveTarget('mlp', llama)).toEqual(['gate_proj', 'down_proj']);
  });

  test('module names split on commas; a regex and a list pass through', () => {
    expect(resolveTarget('q_proj,,o_proj', llama)).toEqual(['q_proj', 'o_proj']);
    expect(resolveTarget('.*q_proj', llama)).toBe('.*q_proj');
    const list = ['q_proj'];
    expect(resolveTarget(list, llama)).toEqual(['q_proj']);
    expect(resolveTarget(list, llama)).not.toBe(list);
  });

  test('a target spec is a preset, names, or a regex of name characters', () => {
    expect(['all-linear', 'attention', 'mlp', 'q_proj,v_proj', '.*(q|v)_proj', 'layers\\.0\\..*'].map(isTargetSpec)).toEqual([true, true, true, true, true, true]);
    expect(['q_proj v_proj', 'a/b', '', 'x;y'].map(isTargetSpec)).toEqual([false, false, false, false]);
  });
});
