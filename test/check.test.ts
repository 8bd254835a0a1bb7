/**
 * lib/check.ts, the one module of argument checks: every message a user reads about a wrong value comes from
 * here, so each rule is pinned to the words it must produce (written out by hand, not built by the code).
 */
import { backend, LorakitRangeError, LorakitTypeError } from '../lib';
import { checkChoice, checkDevice, checkNumber, checkOptions, checkSetting, checkShape, describe as describeValue, isObject, shapeStr, show } from '../lib/check';
import { gpuCount, missingDevice } from './helpers/machine';

const thrown = (f: () => unknown): { error: unknown; message: string } => {
  try {
    f();
  } catch (error) {
    return { error, message: (error as Error).message };
  }
  throw new Error('expected a throw');
};

describe('describe: an argument as a message names it', () => {
  test.each<[unknown, string]>([
    [null, 'null'],
    [undefined, 'undefined undefined'],
    [[1, 2, 3], 'an array of length 3'],
    [[], 'an array of length 0'],
    [new Float32Array(2), 'a Float32Array'],
    [{}, 'an object (Object)'],
    [new Map(), 'an object (Map)'],
    [Object.create(null), 'an object (Object)'],
    ['x', "'x'"],
    [NaN, 'number NaN'],
    [3, 'number 3'],
    [true, 'boolean true'],
    [10n, 'bigint 10'],
  ])('%p is %s', (x, text) => {
    expect(describeValue(x)).toBe(text);
  });
});

describe('show: a value read from a file, as JSON, cut short', () => {
  test('JSON for JSON values, "nothing" for a missing one, describe for the rest', () => {
    expect(show('x')).toBe('"x"');
    expect(show({ a: [1, null] })).toBe('{"a":[1,null]}');
    expect(show(undefined)).toBe('nothing');
    expect(show(() => 1)).toBe('function () => 1');
  });

  test('80 characters pass whole; 81 become the first 77 and "..."', () => {
    const eighty = `"${'a'.repeat(78)}"`;
    expect(show('a'.repeat(78))).toBe(eighty);
    expect(show('a'.repeat(79))).toBe(`"${'a'.repeat(76)}...`);
    expect(show('a'.repeat(79))).toHaveLength(80);
  });
});

test('isObject: plain objects only', () => {
  expect([{}, Object.create(null), new Map()].map(isObject)).toEqual([true, true, true]);
  expect([null, [], 'x', 1, undefined].map(isObject)).toEqual([false, false, false, false, false]);
});

describe('checkShape', () => {
  test('a copy of a shape of non-negative safe integers', () => {
    const s = [2, 0, 3];
    const out = checkShape('op', s);
    expect(out).toEqual([2, 0, 3]);
    expect(out).not.toBe(s);
    expect(shapeStr(out)).toBe('[2, 0, 3]');
  });

  test.each<[unknown, string]>([
    ['2', "op: shape must be an array of non-negative integers, got '2'"],
    [['2'], 'op: shape must be an array of non-negative integers, got [2]'],
    [[2, -1], 'op: shape must be an array of non-negative integers, got [2, -1]'],
    [[1.5], 'op: shape must be an array of non-negative integers, got [1.5]'],
    [[2 ** 53], `op: shape must be an array of non-negative integers, got [${2 ** 53}]`],
  ])('%p is refused', (shape, message) => {
    const r = thrown(() => checkShape('op', shape));
    expect(r.message).toBe(message);
    expect((r.error as { code: string }).code).toBe('ERR_SHAPE');
  });
});

describe('checkDevice', () => {
  test("'cpu' and nothing are the CPU", () => {
    expect(checkDevice('op', 'cpu')).toBe('cpu');
    expect(checkDevice('op', undefined)).toBe('cpu');
  });

  test.each<unknown>(['gpu', 'xcuda', 'cuda:', 'cuda:0x', 'cuda:-1', 'CUDA', 0, null])('%p is not a device name', (d) => {
    const r = thrown(() => checkDevice('op', d));
    expect(r.error).toBeInstanceOf(LorakitTypeError);
    expect(r.message).toBe(`op: device must be 'cpu' or 'cuda[:N]', got ${describeValue(d)}`);
  });

  test('an ordinal of several digits is a device name (refused only if this machine lacks it)', () => {
    const r = thrown(() => checkDevice('op', 'cuda:12'));
    expect(r.message).toMatch(gpuCount() === 0 ? /^op: device 'cuda:12' is not available/ : /^op: device 'cuda:12' does not exist/);
  });

  test('a GPU this machine does not have is refused with the reason', () => {
    const gpus = gpuCount();
    const r = thrown(() => checkDevice('op', missingDevice()));
    expect((r.error as { code: string }).code).toBe('ERR_DEVICE');
    if (gpus === 0) {
      const reason = backend().gpuUnavailableReason ?? 'unknown reason';
      expect(r.message).toBe(`op: device 'cuda:0' is not available: no GPU backend is active (${reason})`);
    } else {
      expect(r.message).toBe(`op: device 'cuda:${gpus}' does not exist: ${gpus} GPU(s) visible (cuda:0..cuda:${gpus - 1})`);
      expect(checkDevice('op', 'cuda')).toBe('cuda:0');
      expect(checkDevice('op', `cuda:${gpus - 1}`)).toBe(`cuda:${gpus - 1}`);
    }
  });
});

describe('checkNumber', () => {
  test('bounds are inclusive unless maxExclusive', () => {
    expect(checkNumber('op', 'x', 0, { min: 0, max: 1 })).toBe(0);
    expect(checkNumber('op', 'x', 1, { min: 0, max: 1 })).toBe(1);
    expect(checkNumber('op', 'x', 0.5, { max: 1, maxExclusive: true })).toBe(0.5);
    expect(thrown(() => checkNumber('op', 'x', 1, { max: 1, maxExclusive: true })).message).toBe("op: 'x' must be < 1, got 1");
    expect(thrown(() => checkNumber('op', 'x', 1.5, { max: 1 })).message).toBe("op: 'x' must be <= 1, got 1.5");
    expect(thrown(() => checkNumber('op', 'x', -1, { min: 0 })).message).toBe("op: 'x' must be >= 0, got -1");
  });

  test('finite numbers only; integers when asked', () => {
    const nan = thrown(() => checkNumber('op', 'x', NaN));
    expect(nan.error).toBeInstanceOf(LorakitTypeError);
    expect(nan.message).toBe("op: 'x' must be a finite number, got number NaN");
    expect(thrown(() => checkNumber('op', 'x', '1')).message).toBe("op: 'x' must be a finite number, got '1'");
    const frac = thrown(() => checkNumber('op', 'x', 1.5, { integer: true }));
    expect(frac.error).toBeInstanceOf(LorakitRangeError);
    expect(frac.message).toBe("op: 'x' must be an integer, got 1.5");
    expect(checkNumber('op', 'x', 2 ** 53 - 1, { integer: true })).toBe(2 ** 53 - 1);
    expect(thrown(() => checkNumber('op', 'x', 2 ** 53, { integer: true })).message).toBe(`op: 'x' must be an integer, got ${2 ** 53}`);
  });
});

describe('checkSetting', () => {
  test('an integer setting: >= min, any size above', () => {
    expect(checkSetting('train', 'steps', 1, { integer: true, min: 1 })).toBe(1);
    expect(checkSetting('train', 'seed', 0, { integer: true, min: 0 })).toBe(0);
    for (const v of [0, 1.5, '3', NaN])
      expect(thrown(() => checkSetting('train', 'steps', v, { integer: true, min: 1 })).message).toBe(`train: 'steps' must be an integer >= 1, got ${describeValue(v)}`);
  });

  test('a number setting: within [min, max], both ends included; Infinity as the open end', () => {
    expect(checkSetting('train', 'lr', 0, { min: 0, max: 1 })).toBe(0);
    expect(checkSetting('train', 'lr', 1, { min: 0, max: 1 })).toBe(1);
    expect(checkSetting('train', 'alpha', 1e9, { min: 0 })).toBe(1e9);
    expect(thrown(() => checkSetting('train', 'lr', 1.01, { min: 0, max: 1 })).message).toBe("train: 'lr' must be a number in [0, 1], got number 1.01");
    expect(thrown(() => checkSetting('train', 'alpha', -1, { min: 0 })).message).toBe("train: 'alpha' must be a number in [0, Infinity], got number -1");
    expect(thrown(() => checkSetting('train', 'alpha', Infinity, { min: 0 })).message).toBe("train: 'alpha' must be a number in [0, Infinity], got number Infinity");
    const r = thrown(() => checkSetting('train', 'lr', NaN, { min: 0, max: 1 }));
    expect(r.error).toBeInstanceOf(LorakitRangeError);
    expect((r.error as { code: string }).code).toBe('ERR_OUT_OF_RANGE');
  });
});

test('checkChoice: one of the listed values, by identity', () => {
  const choices = [true, false, 'gaussian'] as const;
  expect(checkChoice('op', 'init', false, choices, 'true, false or gaussian')).toBe(false);
  expect(checkChoice('op', 'init', 'gaussian', choices, 'true, false or gaussian')).toBe('gaussian');
  const r = thrown(() => checkChoice('op', 'init', 'true', choices, 'true, false or gaussian'));
  expect(r.error).toBeInstanceOf(LorakitTypeError);
  expect(r.message).toBe("op: 'init' must be true, false or gaussian, got 'true'");
});

test('checkOptions: nothing, or a plain object', () => {
  expect(checkOptions('op', undefined)).toEqual({});
  const o = { a: 1 };
  expect(checkOptions('op', o)).toBe(o);
  for (const bad of [null, [], 'x', 3])
    expect(thrown(() => checkOptions('op', bad)).message).toBe(`op: options must be an object, got ${describeValue(bad)}`);
});
