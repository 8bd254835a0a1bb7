// Sweep specs (lib/sweep/spec.ts): the grid a spec expands to, the random subset, the truncated data copies and
// the field checks, each against expectations written out by hand.
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { configurations, jobFor, parseSpec, readSpec, truncatedData } from '../lib/sweep/spec';
import { LorakitTypeError } from '../lib/errors';
import { expectError } from './helpers/errors';

const LLAMA = path.join(__dirname, 'fixtures/peft/tiny-llama');
let tmp: string;
beforeAll(() => {
  tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'lorakit-sweep-spec-'));
});
afterAll(() => fs.rmSync(tmp, { recursive: true, force: true }));

const good = () => ({ base: { model: LLAMA, data: 'train.jsonl', steps: 5 }, axes: {} as Record<string, unknown[]>, seeds: [1], out: 'o' });

describe('the grid', () => {
  test('axes vary in the fixed axis order (not the order the spec lists them), the last fastest', () => {
    const s = parseSpec({ ...good(), axes: { dropout: [0, 0.1], r: [4, 8], target: ['all', ['q_proj', 'v_proj']] } }, '/d');
    expect(configurations(s).map((c) => c.label)).toEqual([
      'r=4 target=all dropout=0', 'r=4 target=all dropout=0.1', 'r=4 target=q_proj,v_proj dropout=0', 'r=4 target=q_proj,v_proj dropout=0.1',
      'r=8 target=all dropout=0', 'r=8 target=all dropout=0.1', 'r=8 target=q_proj,v_proj dropout=0', 'r=8 target=q_proj,v_proj dropout=0.1',
    ]);
    expect(configurations(s)[2]!.values).toEqual({ r: 4, target: ['q_proj', 'v_proj'], dropout: 0 });
  });

  test('no axes: one configuration, the base job, with an empty label', () => {
    const [c, ...rest] = configurations(parseSpec(good(), '/d'));
    expect(rest).toEqual([]);
    expect(c!.label).toBe('');
    expect(c!.values).toEqual({});
    expect(c!.id).toMatch(/^[0-9a-f]{10}$/);
  });

  test('ids are 10 hex digits, distinct per configuration, and the same for the same spec read twice', () => {
    const raw = { ...good(), axes: { r: [1, 2, 3], lr: [0.1, 0.2] } };
    const ids = configurations(parseSpec(raw, '/d')).map((c) => c.id);
    expect(new Set(ids).size).toBe(6);
    for (const id of ids) expect(id).toMatch(/^[0-9a-f]{10}$/);
    expect(configurations(parseSpec(raw, '/elsewhere/../d')).map((c) => c.id)).toEqual(ids);
  });

  test('random mode: `samples` distinct grid points, in grid order, the same every time; all of them when samples >= grid', () => {
    const raw = { ...good(), axes: { r: [1, 2, 3, 4], alpha: [1, 2, 4] }, mode: 'random', samples: 5 };
    const grid = configurations(parseSpec({ ...raw, mode: 'grid', samples: undefined }, '/d'));
    const picked = configurations(parseSpec(raw, '/d'));
    expect(picked).toHaveLength(5);
    const positions = picked.map((c) => grid.findIndex((g) => g.label === c.label));
    expect(positions.every((p) => p >= 0)).toBe(true);
    expect(positions).toEqual([...positions].sort((a, b) => a - b));
    expect(new Set(positions).size).toBe(5);
    // The ids of a picked configuration are its grid ids.
    picked.forEach((c, i) => expect(c.id).toBe(grid[positions[i]!]!.id));
    expect(configurations(parseSpec(raw, '/d'))).toEqual(picked);
    expect(configurations(parseSpec({ ...raw, samples: 12 }, '/d')).map((c) => c.label)).toEqual(grid.map((c) => c.label));
    expect(configurations(parseSpec({ ...raw, samples: 40 }, '/d'))).toHaveLength(12);
  });
});

describe('paths and jobs', () => {
  test('relative paths are taken from the spec folder; absolute ones are kept', () => {
    const s = parseSpec({ ...good(), base: { model: LLAMA, data: 'a/train.jsonl', evalData: 'e.jsonl', retainData: '/abs/r.jsonl', steps: 5 }, out: '../runs' }, '/x/y');
    expect(s.base).toMatchObject({ model: LLAMA, data: '/x/y/a/train.jsonl', evalData: '/x/y/e.jsonl', retainData: '/abs/r.jsonl' });
    expect(s.out).toBe('/x/runs');
    expect(s).toMatchObject({ mode: 'grid', samples: null, parallel: 1 });
  });

  test('readSpec reads a file and resolves from its folder', () => {
    const dir = path.join(tmp, 'spec');
    fs.mkdirSync(dir);
    const file = path.join(dir, 'sweep.json');
    fs.writeFileSync(file, JSON.stringify({ ...good(), parallel: 3 }));
    expect(readSpec(file)).toMatchObject({ out: path.join(dir, 'o'), parallel: 3, base: { data: path.join(dir, 'train.jsonl') } });
  });

  test('jobFor: base, then the configuration values (dataSize left out), the given data and out, progress none unless the base says', () => {
    const s = parseSpec({ ...good(), axes: { r: [4], dataSize: [10] } }, '/d');
    const [c] = configurations(s);
    expect(jobFor(s, c!, '/out/1')).toEqual({ model: LLAMA, data: '/d/train.jsonl', steps: 5, r: 4, out: '/out/1', progress: 'none' });
    expect(jobFor(s, c!, '/out/1', '/d/small.jsonl').data).toBe('/d/small.jsonl');
    const bar = parseSpec({ ...good(), base: { ...good().base, progress: 'bar' } }, '/d');
    expect(jobFor(bar, configurations(bar)[0]!, '/o').progress).toBe('bar');
  });
});

describe('truncatedData', () => {
  test('.jsonl: the first n non-blank lines, written once as <name>-<n>.jsonl', () => {
    const dir = path.join(tmp, 'trunc-jsonl');
    fs.mkdirSync(dir);
    const file = path.join(dir, 'train.jsonl');
    fs.writeFileSync(file, '{"a":1}\r\n\n{"a":2}\n  \n{"a":3}\n');
    const out = path.join(dir, 'data');
    const two = truncatedData(file, 2, out);
    expect(two).toBe(path.join(out, 'train-2.jsonl'));
    expect(fs.readFileSync(two, 'utf8')).toBe('{"a":1}\n{"a":2}\n');
    // An existing copy is not rewritten.
    fs.writeFileSync(two, 'kept\n');
    expect(truncatedData(file, 2, out)).toBe(two);
    expect(fs.readFileSync(two, 'utf8')).toBe('kept\n');
    expect(fs.readFileSync(truncatedData(file, 3, out), 'utf8')).toBe('{"a":1}\n{"a":2}\n{"a":3}\n');
    expectError(() => truncatedData(file, 4, out), LorakitTypeError, 'ERR_INVALID_ARG', `sweep spec 'axes.dataSize': 4 examples asked for, but ${file} holds 3`);
  });

  test('.txt: the first n documents, separated by one blank line', () => {
    const dir = path.join(tmp, 'trunc-txt');
    fs.mkdirSync(dir);
    const file = path.join(dir, 'c.TXT');
    // The copy's extension is written in lower case.
    fs.writeFileSync(file, 'one\nline two\n\n \n\nsecond\r\n\r\nthird\n');
    expect(fs.readFileSync(truncatedData(file, 2, dir), 'utf8')).toBe('one\nline two\n\nsecond\n');
    expect(path.basename(truncatedData(file, 1, dir))).toBe('c-1.txt');
  });
});

describe('field checks', () => {
  test.each([
    [3, `sweep spec: must be a JSON object, got 3`],
    [{ ...good(), base: [] }, `sweep spec 'base': must be an object of training options, got []`],
    [{ ...good(), base: { data: 'd.jsonl' } }, `sweep spec 'base.model': must be a path, got nothing`],
    [{ ...good(), base: { model: LLAMA, data: '' } }, `sweep spec 'base.data': must be a path, got ""`],
    [{ ...good(), base: { model: LLAMA, data: 'd', evalData: 3 } }, `sweep spec 'base.evalData': must be a path, got 3`],
    [{ ...good(), base: { ...good().base, out: 'x' } }, `sweep spec 'base.out': is set by the sweep (use the spec's 'out')`],
    [{ ...good(), base: { ...good().base, seed: 1 } }, `sweep spec 'base.seed': is set by the sweep (use the spec's 'seeds')`],
    [{ ...good(), base: { ...good().base, resume: true } }, `sweep spec 'base.resume': is set by the sweep for each run`],
    [{ ...good(), axes: [] }, `sweep spec 'axes': must be an object of value lists, got []`],
    [{ ...good(), axes: { r: 4 } }, `sweep spec 'axes.r': must be a non-empty list, got 4`],
    [{ ...good(), axes: { r: [4, 4] } }, `sweep spec 'axes.r': lists a value twice`],
    [{ ...good(), axes: { target: [['q_proj'], ['q_proj']] } }, `sweep spec 'axes.target': lists a value twice`],
    [{ ...good(), axes: { r: [0] } }, `'axes.r[0]': must be an integer >= 1, got 0`],
    [{ ...good(), axes: { lr: [0] } }, `'axes.lr[0]': must be a number > 0, got 0`],
    [{ ...good(), axes: { lr: [Infinity] } }, `'axes.lr[0]': must be a number > 0`],
    [{ ...good(), axes: { alpha: [-1] } }, `'axes.alpha[0]': must be a number >= 0, got -1`],
    [{ ...good(), axes: { dropout: [1] } }, `'axes.dropout[0]': must be a number in [0, 0.99], got 1`],
    [{ ...good(), axes: { dropout: [-0.1] } }, `'axes.dropout[0]': must be a number in [0, 0.99]`],
    [{ ...good(), axes: { rslora: ['yes'] } }, `'axes.rslora[0]': must be true or false, got "yes"`],
    [{ ...good(), axes: { target: [''] } }, `'axes.target[0]': must be a preset or module name(s), got ""`],
    [{ ...good(), axes: { target: [[]] } }, `'axes.target[0]': must be a preset or module name(s), got []`],
    [{ ...good(), axes: { target: [['q_proj', '']] } }, `'axes.target[0]': must be a preset or module name(s)`],
    [{ ...good(), axes: { method: ['qlora', 'dora'] } }, `'axes.method[1]': must be lora, qlora or full, got "dora"`],
    [{ ...good(), axes: { dataSize: [1.5] } }, `'axes.dataSize[0]': must be an integer >= 1, got 1.5`],
    [{ ...good(), mode: 'sobol' }, `sweep spec 'mode': must be "grid" or "random", got "sobol"`],
    [{ ...good(), samples: 2 }, `sweep spec 'samples': applies only to mode "random"`],
    [{ ...good(), mode: 'random', samples: 0 }, `sweep spec 'samples': must be an integer >= 1 in random mode, got 0`],
    [{ ...good(), seeds: [] }, `sweep spec 'seeds': must be a non-empty list of integers, got []`],
    [{ ...good(), seeds: [0, 1.5] }, `sweep spec 'seeds[1]': must be an integer >= 0, got 1.5`],
    [{ ...good(), out: '' }, `sweep spec 'out': must be a folder path, got ""`],
    [{ ...good(), parallel: 1.5 }, `sweep spec 'parallel': must be an integer >= 1, got 1.5`],
  ])('%#: %s', (raw, message) => {
    expectError(() => parseSpec(raw, '/d'), LorakitTypeError, 'ERR_INVALID_ARG', message);
  });

  test('boundary values that are allowed', () => {
    const s = parseSpec({ ...good(), axes: { dropout: [0, 0.99], alpha: [0], r: [1], rslora: [true, false], init: [true, false, 'gaussian', 'pissa'], method: ['lora', 'full'] }, seeds: [0] }, '/d');
    expect(configurations(s)).toHaveLength(2 * 2 * 4 * 2);
  });
});
