// The sweep statistics (lib/sweep/stats.ts) against references written out here in float64: closed forms of
// the incomplete beta and Student-t functions, a quadrature of the t density, and a brute-force power search.
// Nothing here calls lorakit to compute an expected value.
import { compareAll, holm, incompleteBeta, mean, pooledSd, sd, seedsNeeded, summarize, tQuantile, tTwoSidedP, variance, welch } from '../lib/sweep/stats';

/** Simpson's rule on [a, b] with n (even) intervals. */
function simpson(f: (x: number) => number, a: number, b: number, n: number): number {
  const h = (b - a) / n;
  let s = f(a) + f(b);
  for (let i = 1; i < n; i++) s += (i % 2 ? 4 : 2) * f(a + i * h);
  return (s * h) / 3;
}

/**
 * P(|T| >= t) for Student's t with nu >= 1 degrees of freedom, by quadrature. With t = sqrt(nu) tan(theta) the
 * density is proportional to cos^(nu-1)(theta) on [0, pi/2); theta = pi/2 - s^2 makes the integrand smooth at pi/2.
 */
function tailRef(t: number, nu: number, n = 2000): number {
  const g = (s: number) => 2 * s * Math.sin(s * s) ** (nu - 1);
  const theta = Math.atan(Math.abs(t) / Math.sqrt(nu));
  return simpson(g, 0, Math.sqrt(Math.PI / 2 - theta), n) / simpson(g, 0, Math.sqrt(Math.PI / 2), n);
}

/** The exact two-sided tail for integer nu (the finite series in theta = atan(t / sqrt(nu))). */
function tailExact(t: number, nu: number): number {
  const th = Math.atan(Math.abs(t) / Math.sqrt(nu));
  const c2 = Math.cos(th) ** 2;
  if (nu % 2 === 0) {
    let term = 1, sum = 1;
    for (let k = 1; k <= (nu - 2) / 2; k++) {
      term *= ((2 * k - 1) / (2 * k)) * c2;
      sum += term;
    }
    return 1 - Math.sin(th) * sum;
  }
  if (nu === 1) return 1 - (2 / Math.PI) * th;
  let term = Math.cos(th), sum = Math.cos(th);
  for (let k = 1; k <= (nu - 3) / 2; k++) {
    term *= ((2 * k) / (2 * k + 1)) * c2;
    sum += term;
  }
  return 1 - (2 / Math.PI) * (th + Math.sin(th) * sum);
}

/** The q quantile of t for integer nu, by bisection on the exact tail. */
function quantileRef(q: number, nu: number): number {
  const tail = 2 * (1 - q);
  let lo = 0, hi = 1;
  while (tailExact(hi, nu) > tail) hi *= 2;
  for (let i = 0; i < 60; i++) {
    const mid = (lo + hi) / 2;
    if (tailExact(mid, nu) > tail) lo = mid;
    else hi = mid;
  }
  return (lo + hi) / 2;
}

const binomial = (n: number, k: number): number => {
  let c = 1;
  for (let i = 1; i <= k; i++) c = (c * (n - k + i)) / i;
  return c;
};

/** I_x(a, b) for integer a, b: the probability of at least a successes in a + b - 1 trials of chance x. */
function betaBinomial(x: number, a: number, b: number): number {
  const n = a + b - 1;
  let s = 0;
  for (let j = a; j <= n; j++) s += binomial(n, j) * x ** j * (1 - x) ** (n - j);
  return s;
}

const close = (got: number, want: number, rel: number, abs = 0) => expect(Math.abs(got - want)).toBeLessThanOrEqual(rel * Math.abs(want) + abs);

describe('the incomplete beta function against closed forms', () => {
  test('integer a and b: a binomial tail, on both sides of the continued fraction switch', () => {
    for (const [a, b] of [[1, 1], [2, 3], [3, 2], [5, 7], [7, 5], [10, 1], [1, 10], [12, 12]] as const)
      for (const x of [0.01, 0.1, 0.3, 0.45, 0.5, 0.55, 0.7, 0.9, 0.99]) close(incompleteBeta(x, a, b), betaBinomial(x, a, b), 1e-11);
  });

  test('I_x(a, 1) = x^a and I_x(1, b) = 1 - (1 - x)^b, for fractional a and b (below 1/2 too)', () => {
    for (const a of [0.25, 0.4, 0.5, 1.5, 3.7])
      for (const x of [0.05, 0.3, 0.6, 0.95]) {
        close(incompleteBeta(x, a, 1), x ** a, 1e-11);
        close(incompleteBeta(x, 1, a), 1 - (1 - x) ** a, 1e-11);
      }
  });

  test('I_x(1/2, 1/2) = (2/pi) asin(sqrt x): both gamma arguments at 1/2', () => {
    for (const x of [0.02, 0.2, 0.5, 0.8, 0.98]) close(incompleteBeta(x, 0.5, 0.5), (2 / Math.PI) * Math.asin(Math.sqrt(x)), 1e-11);
  });

  test('outside (0, 1) it is 0 or 1', () => {
    expect(incompleteBeta(0, 2, 3)).toBe(0);
    expect(incompleteBeta(-0.5, 2, 3)).toBe(0);
    expect(incompleteBeta(1, 2, 3)).toBe(1);
    expect(incompleteBeta(1.5, 2, 3)).toBe(1);
  });
});

describe("Student's t", () => {
  test('two-sided p for integer degrees of freedom: the exact series', () => {
    for (const nu of [1, 2, 3, 4, 5, 6, 9, 10, 17, 30])
      for (const t of [0, 0.1, 0.7, 1, 2.1, 3.5, 8, 40]) close(tTwoSidedP(t, nu), tailExact(t, nu), 1e-10, 1e-15);
    // The sign of t does not matter.
    close(tTwoSidedP(-2.1, 5), tailExact(2.1, 5), 1e-10);
  });

  test('two-sided p for fractional degrees of freedom (as Welch gives): quadrature of the density', () => {
    for (const nu of [1.3, 2.5, 3.77, 7.2, 15.5])
      for (const t of [0.3, 1.1, 2.6, 5]) close(tTwoSidedP(t, nu), tailRef(t, nu), 1e-8);
  });

  test('infinite and NaN t', () => {
    expect(tTwoSidedP(Infinity, 3)).toBe(0);
    expect(tTwoSidedP(-Infinity, 3)).toBe(0);
    expect(tTwoSidedP(NaN, 3)).toBeNaN();
  });

  test('quantiles: closed forms for 1, 2 and 4 degrees of freedom', () => {
    for (const q of [0.6, 0.8, 0.9, 0.975, 0.995, 0.9995]) {
      close(tQuantile(q, 1), Math.tan(Math.PI * (q - 0.5)), 1e-10);
      close(tQuantile(q, 2), (2 * q - 1) / Math.sqrt(2 * q * (1 - q)), 1e-10);
      const alpha = 4 * q * (1 - q), r = Math.cos(Math.acos(Math.sqrt(alpha)) / 3) / Math.sqrt(alpha);
      close(tQuantile(q, 4), 2 * Math.sqrt(r - 1), 1e-9);
    }
  });

  test('quantiles for other degrees of freedom invert the exact tail', () => {
    for (const nu of [3, 7, 25])
      for (const q of [0.75, 0.95, 0.999]) {
        const t = tQuantile(q, nu);
        close(tailExact(t, nu), 2 * (1 - q), 1e-9);
      }
  });
});

describe('moments and intervals', () => {
  test('mean, variance, sd and pooled sd by hand', () => {
    expect(mean([])).toBeNaN();
    expect(mean([2, 4, 9])).toBe(5);
    // Deviations -3, -1, 4: squares 9 + 1 + 16 = 26 over n - 1 = 2.
    expect(variance([2, 4, 9])).toBe(13);
    expect(sd([2, 4, 9])).toBeCloseTo(Math.sqrt(13), 14);
    expect(variance([7])).toBeNaN();
    expect(variance([])).toBeNaN();
    // (2 * 13 + 1 * 2) / (3 + 2 - 2) for [2, 4, 9] and [1, 3].
    expect(pooledSd([2, 4, 9], [1, 3])).toBeCloseTo(Math.sqrt(28 / 3), 14);
  });

  test('the 95% half-width is t(0.975, n - 1) s / sqrt(n)', () => {
    // n = 2: t(0.975, 1) = tan(0.475 pi) = 12.7062; [2, 4]: s = sqrt 2.
    const two = summarize([2, 4]);
    expect(two).toMatchObject({ n: 2, mean: 3 });
    close(two.sd, Math.SQRT2, 1e-14);
    close(two.ci95, (Math.tan(0.475 * Math.PI) * Math.SQRT2) / Math.SQRT2, 1e-10);
    // n = 5: the 0.975 quantile of t(4) in closed form; [1, 2, 4, 7, 11]: mean 5, squares 16 9 1 4 36 = 66, s^2 = 16.5.
    const a = 4 * 0.975 * 0.025, r = Math.cos(Math.acos(Math.sqrt(a)) / 3) / Math.sqrt(a);
    const five = summarize([1, 2, 4, 7, 11]);
    expect(five.mean).toBe(5);
    close(five.ci95, (2 * Math.sqrt(r - 1) * Math.sqrt(16.5)) / Math.sqrt(5), 1e-9);
    const one = summarize([3]);
    expect(one.n).toBe(1);
    expect(one.mean).toBe(3);
    expect(one.sd).toBeNaN();
    expect(one.ci95).toBeNaN();
  });
});

describe("Welch's test", () => {
  /** Welch by the textbook formulas, p from the quadrature. */
  function welchRef(a: number[], b: number[]) {
    const m = (x: number[]) => x.reduce((s, v) => s + v, 0) / x.length;
    const v = (x: number[]) => x.reduce((s, y) => s + (y - m(x)) ** 2, 0) / (x.length - 1);
    const va = v(a) / a.length, vb = v(b) / b.length;
    const t = (m(a) - m(b)) / Math.sqrt(va + vb);
    const df = (va + vb) ** 2 / (va ** 2 / (a.length - 1) + vb ** 2 / (b.length - 1));
    return { diff: m(a) - m(b), t, df, p: tailRef(t, df) };
  }

  test('unequal sizes and spreads, against the formulas', () => {
    for (const [a, b] of [
      [[1.2, 1.9, 2.4, 0.8], [2.5, 3.1, 2.2]],
      [[10, 12, 9, 14, 11, 13], [10.5, 11]],
      [[0.31, 0.29, 0.35], [0.30, 0.28, 0.27, 0.33, 0.26]],
    ]) {
      const got = welch(a!, b!)!, want = welchRef(a!, b!);
      close(got.diff, want.diff, 1e-12);
      close(got.t, want.t, 1e-12);
      close(got.df, want.df, 1e-12);
      close(got.p, want.p, 1e-8);
    }
  });

  test('no spread at all: a certain difference, or none', () => {
    expect(welch([1, 1, 1], [3, 3])).toEqual({ diff: -2, t: -Infinity, df: 3, p: 0 });
    expect(welch([5, 5], [2, 2])).toEqual({ diff: 3, t: Infinity, df: 2, p: 0 });
    expect(welch([4, 4], [4, 4, 4, 4])).toEqual({ diff: 0, t: 0, df: 4, p: 1 });
    expect(welch([1, 2], [3])).toBeNull();
    expect(welch([1], [3, 4])).toBeNull();
  });
});

describe("Holm's adjustment", () => {
  test('by hand: sorted p times (m - k), made monotone, capped at 1, returned in input order', () => {
    // Sorted 0.001, 0.01, 0.02, 0.3: 4 * 0.001, 3 * 0.01, max(0.03, 2 * 0.02), max(0.04, 0.3).
    const got = holm([0.3, 0.01, 0.001, 0.02]);
    [0.3, 0.03, 0.004, 0.04].forEach((want, i) => close(got[i]!, want, 1e-12));
    // 0.02 * 3 = 0.06 first, then 2 * 0.025 = 0.05 is raised to 0.06: the running maximum.
    const mono = holm([0.025, 0.02, 0.9]);
    [0.06, 0.06, 0.9].forEach((want, i) => close(mono[i]!, want, 1e-12));
    // Capped at 1.
    expect(holm([0.6, 0.7])).toEqual([1, 1]);
    expect(holm([0.04])).toEqual([0.04]);
    expect(holm([])).toEqual([]);
  });
});

/** The smallest n >= max(2, atLeast) with 2 ((t(1 - alpha/2) + t(power)) sd / diff)^2 <= n, at 2n - 2 df (at most 1000, always even). */
function seedsRef(diff: number, s: number, alpha = 0.05, power = 0.8, atLeast = 2): number {
  const need = (n: number) => {
    const df = Math.min(2 * n - 2, 1000);
    return 2 * (((quantileRef(1 - alpha / 2, df) + quantileRef(power, df)) * s) / diff) ** 2;
  };
  for (let n = Math.max(2, atLeast); ; n++) if (need(n) <= n) return n;
}

describe('seeds needed', () => {
  test('a brute-force search over n agrees', () => {
    for (const [diff, s, o] of [
      [1, 1, {}],
      [-1, 1, {}],
      [2, 1, {}],
      [0.8, 0.5, { alpha: 0.01, power: 0.9 }],
      [1, 1, { alpha: 0.05 / 3 }],
      [3, 1, { power: 0.5 }],
    ] as const) {
      const o2 = o as { alpha?: number; power?: number };
      expect(seedsNeeded(diff, s, o)).toBe(seedsRef(diff, s, o2.alpha, o2.power));
    }
  });

  test('never fewer than two, nor fewer than atLeast', () => {
    // A huge effect: the formula alone would say under two seeds.
    expect(seedsRef(100, 1)).toBe(2);
    expect(seedsNeeded(100, 1)).toBe(2);
    expect(seedsNeeded(100, 1, { atLeast: 7 })).toBe(7);
    // atLeast below the answer changes nothing; above it, it is the answer.
    expect(seedsNeeded(1, 1, { atLeast: 3 })).toBe(seedsRef(1, 1));
    expect(seedsNeeded(1, 1, { atLeast: 40 })).toBe(40);
  });

  test('past 1000 degrees of freedom the quantiles are those at 1000', () => {
    // sd / diff = 20: n is in the thousands, where need(n) is the constant 2 (q * 20)^2 with q at df 1000.
    const q = quantileRef(0.975, 1000) + quantileRef(0.8, 1000);
    const want = Math.ceil(2 * (q * 20) ** 2);
    expect(seedsNeeded(0.05, 1)).toBe(want);
    expect(seedsNeeded(-0.05, 1)).toBe(want);
  });

  test('nothing to estimate from: Infinity', () => {
    expect(seedsNeeded(0, 1)).toBe(Infinity);
    expect(seedsNeeded(NaN, 1)).toBe(Infinity);
    expect(seedsNeeded(Infinity, 1)).toBe(Infinity);
    expect(seedsNeeded(1, NaN)).toBe(Infinity);
    expect(seedsNeeded(1, Infinity)).toBe(Infinity);
  });
});

describe('compareAll against a reference built from the formulas', () => {
  type Group = { id: string; values: number[] };
  function reference(groups: Group[], alpha = 0.05) {
    const m = (x: number[]) => x.reduce((s, v) => s + v, 0) / x.length;
    const v = (x: number[]) => x.reduce((s, y) => s + (y - m(x)) ** 2, 0) / (x.length - 1);
    const pairs: { a: Group; b: Group; p: number | null }[] = [];
    for (let i = 0; i < groups.length; i++)
      for (let j = i + 1; j < groups.length; j++) {
        const a = groups[i]!, b = groups[j]!;
        let p: number | null = null;
        if (a.values.length > 1 && b.values.length > 1) {
          const va = v(a.values) / a.values.length, vb = v(b.values) / b.values.length;
          const t = (m(a.values) - m(b.values)) / Math.sqrt(va + vb);
          p = tailRef(t, (va + vb) ** 2 / (va ** 2 / (a.values.length - 1) + vb ** 2 / (b.values.length - 1)));
        }
        pairs.push({ a, b, p });
      }
    // Holm over the tested pairs only.
    const tested = pairs.filter((x) => x.p !== null);
    const sorted = [...tested].sort((x, y) => x.p! - y.p!);
    const adj = new Map<(typeof pairs)[number], number>();
    let run = 0;
    sorted.forEach((x, k) => {
      run = Math.max(run, Math.min(1, (sorted.length - k) * x.p!));
      adj.set(x, run);
    });
    return pairs.map((x) => {
      const diff = m(x.a.values) - m(x.b.values);
      const tried = Math.min(x.a.values.length, x.b.values.length);
      if (x.p === null) return { a: x.a.id, b: x.b.id, diff, p: null, pAdjusted: null, insideNoise: true, seedsNeeded: null, seedsTried: tried };
      const pooled = Math.sqrt(((x.a.values.length - 1) * v(x.a.values) + (x.b.values.length - 1) * v(x.b.values)) / (x.a.values.length + x.b.values.length - 2));
      const seeds = diff === 0 ? null : seedsRef(diff, pooled, alpha / tested.length, 0.8, tried + 1);
      return { a: x.a.id, b: x.b.id, diff, p: x.p, pAdjusted: adj.get(x)!, insideNoise: !(adj.get(x)! < alpha), seedsNeeded: seeds, seedsTried: tried };
    });
  }

  function check(groups: Group[], alpha?: number) {
    const got = compareAll(groups, alpha), want = reference(groups, alpha);
    expect(got).toHaveLength(want.length);
    got.forEach((g, i) => {
      const w = want[i]!;
      expect([g.a, g.b, g.insideNoise, g.seedsNeeded, g.seedsTried]).toEqual([w.a, w.b, w.insideNoise, w.seedsNeeded, w.seedsTried]);
      close(g.diff, w.diff, 1e-12);
      if (w.p === null) expect([g.p, g.pAdjusted]).toEqual([null, null]);
      else {
        close(g.p!, w.p, 1e-8);
        close(g.pAdjusted!, w.pAdjusted!, 1e-8);
      }
    });
    return got;
  }

  test('three configurations, one clearly apart: its two pairs separated, the third inside the noise', () => {
    const got = check([
      { id: 'x', values: [2.0, 2.1, 1.9, 2.05] },
      { id: 'y', values: [2.02, 1.95, 2.12, 1.98] },
      { id: 'z', values: [1.0, 1.1, 0.95, 1.05] },
    ]);
    expect(got.map((c) => c.insideNoise)).toEqual([true, false, false]);
    expect(got[1]!.note).toBe('separated');
    expect(got[0]!.note).toBe(
      `inside the noise; ~${got[0]!.seedsNeeded} seeds each would separate a difference this size (80% power at the corrected level, from the observed difference and spread)`,
    );
  });

  test('a one-seed configuration is left out of the Holm family and the corrected level', () => {
    // Only the a-b pair is tested, so its adjusted p is its own p, and its seeds are at the full alpha.
    const got = check([
      { id: 'a', values: [1.0, 1.3, 1.1] },
      { id: 'b', values: [1.6, 1.4, 1.9, 1.5] },
      { id: 'c', values: [1.2] },
    ]);
    expect(got[0]!.pAdjusted).toBe(got[0]!.p);
    expect(got[1]).toMatchObject({ a: 'a', b: 'c', seedsTried: 1, note: 'one seed: noise cannot be told from effect' });
  });

  test('the level alpha is the one given, and an adjusted p equal to it is inside the noise', () => {
    const groups = [
      { id: 'p', values: [3.0, 3.4, 3.2] },
      { id: 'q', values: [3.5, 3.9, 3.6] },
    ];
    const [c] = check(groups, 0.2);
    const [d] = check(groups, 0.001);
    expect(c!.insideNoise).toBe(false);
    expect(d!.insideNoise).toBe(true);
    // alpha exactly at the p-value: not below it, so inside the noise.
    const [e] = compareAll(groups, c!.p!);
    expect(e!.insideNoise).toBe(true);
  });

  test('equal means: no estimate, and the note names the seeds tried', () => {
    const [c] = check([
      { id: 'a', values: [1, 2, 3, 4] },
      { id: 'b', values: [4, 1, 3, 2, 2.5] },
    ]);
    expect(c!.note).toBe('inside the noise; no difference to estimate from: more than 4 seeds each');
  });
});
