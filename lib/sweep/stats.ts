/**
 * The statistics a sweep reports: means with Student-t confidence intervals over seeds, Welch's t-test
 * between configurations (Holm-corrected, because a sweep makes many comparisons at once), and a
 * power analysis of the seeds needed to separate two configurations.
 */

export function mean(xs: readonly number[]): number {
  return xs.length ? xs.reduce((s, x) => s + x, 0) / xs.length : NaN;
}

/** Sample variance (n - 1 in the denominator); NaN for fewer than two values. */
export function variance(xs: readonly number[]): number {
  if (xs.length < 2) return NaN;
  const m = mean(xs);
  return xs.reduce((s, x) => s + (x - m) ** 2, 0) / (xs.length - 1);
}

export function sd(xs: readonly number[]): number {
  return Math.sqrt(variance(xs));
}

/** ln Γ(x) for x > 0 (Lanczos, g = 7, 9 terms: about 15 significant digits; the series holds for every x > 0). */
function lnGamma(x: number): number {
  const c = [0.99999999999980993, 676.5203681218851, -1259.1392167224028, 771.32342877765313, -176.61502916214059, 12.507343278686905, -0.13857109526572012, 9.9843695780195716e-6, 1.5056327351493116e-7];
  const z = x - 1;
  let s = c[0]!;
  for (let i = 1; i < 9; i++) s += c[i]! / (z + i);
  const t = z + 7.5;
  return 0.5 * Math.log(2 * Math.PI) + (z + 0.5) * Math.log(t) - t + Math.log(s);
}

/** Continued fraction of the incomplete beta function (modified Lentz), converging for x < (a+1)/(a+b+2). */
function betaFraction(x: number, a: number, b: number): number {
  const tiny = 1e-300;
  let c = 1, d = 1 - ((a + b) * x) / (a + 1);
  if (Math.abs(d) < tiny) d = tiny;
  d = 1 / d;
  let h = d;
  for (let m = 1; m <= 300; m++) {
    const m2 = 2 * m;
    for (const num of [(m * (b - m) * x) / ((a + m2 - 1) * (a + m2)), (-(a + m) * (a + b + m) * x) / ((a + m2) * (a + m2 + 1))]) {
      d = 1 + num * d;
      if (Math.abs(d) < tiny) d = tiny;
      c = 1 + num / c;
      if (Math.abs(c) < tiny) c = tiny;
      d = 1 / d;
      h *= d * c;
    }
    if (Math.abs(d * c - 1) < 1e-15) break;
  }
  return h;
}

/** The regularized incomplete beta function I_x(a, b). */
export function incompleteBeta(x: number, a: number, b: number): number {
  if (x <= 0) return 0;
  if (x >= 1) return 1;
  const front = Math.exp(lnGamma(a + b) - lnGamma(a) - lnGamma(b) + a * Math.log(x) + b * Math.log(1 - x));
  // The fraction converges fast on one side of the mean; the symmetry I_x(a,b) = 1 - I_{1-x}(b,a) covers the other.
  return x < (a + 1) / (a + b + 2) ? (front * betaFraction(x, a, b)) / a : 1 - (front * betaFraction(1 - x, b, a)) / b;
}

/** P(|T| >= |t|) for Student's t with df degrees of freedom (df need not be an integer: Welch's is not). */
export function tTwoSidedP(t: number, df: number): number {
  if (!Number.isFinite(t)) return Number.isNaN(t) ? NaN : 0;
  return incompleteBeta(df / (df + t * t), df / 2, 0.5);
}

/** The q quantile (q > 0.5) of Student's t, by bisection on the exact distribution function. */
export function tQuantile(q: number, df: number): number {
  const tail = 2 * (1 - q);
  let lo = 0, hi = 1;
  while (tTwoSidedP(hi, df) > tail) hi *= 2;
  for (let i = 0; i < 200 && hi - lo > 1e-12 * hi; i++) {
    const mid = (lo + hi) / 2;
    if (tTwoSidedP(mid, df) > tail) lo = mid;
    else hi = mid;
  }
  return (lo + hi) / 2;
}

export interface Summary {
  n: number;
  mean: number;
  sd: number;
  /** Half-width of the 95% confidence interval of the mean; NaN with one value, where there is no interval. */
  ci95: number;
}

export function summarize(xs: readonly number[]): Summary {
  const n = xs.length, s = sd(xs);
  return { n, mean: mean(xs), sd: s, ci95: n < 2 ? NaN : (tQuantile(0.975, n - 1) * s) / Math.sqrt(n) };
}

export interface Welch {
  /** a's mean minus b's. */
  diff: number;
  t: number;
  /** Welch-Satterthwaite degrees of freedom. */
  df: number;
  /** Two-sided p-value. */
  p: number;
}

/** Welch's unequal-variance t-test; null when either side has fewer than two values. */
export function welch(a: readonly number[], b: readonly number[]): Welch | null {
  if (a.length < 2 || b.length < 2) return null;
  const va = variance(a) / a.length, vb = variance(b) / b.length;
  const diff = mean(a) - mean(b), se2 = va + vb;
  if (se2 === 0) return { diff, t: diff === 0 ? 0 : Math.sign(diff) * Infinity, df: a.length + b.length - 2, p: diff === 0 ? 1 : 0 };
  const t = diff / Math.sqrt(se2);
  const df = (se2 * se2) / ((va * va) / (a.length - 1) + (vb * vb) / (b.length - 1));
  return { diff, t, df, p: tTwoSidedP(t, df) };
}

/** Holm's step-down adjustment: family-wise error stays at alpha however many comparisons a sweep makes. */
export function holm(ps: readonly number[]): number[] {
  const order = ps.map((p, i) => [p, i] as const).sort((x, y) => x[0] - y[0]);
  const adjusted = new Array<number>(ps.length);
  let running = 0;
  order.forEach(([p, i], k) => {
    running = Math.max(running, Math.min(1, (ps.length - k) * p));
    adjusted[i] = running;
  });
  return adjusted;
}

/**
 * Seeds per configuration for a two-sided Welch test at level `alpha` to separate means `diff` apart with
 * probability `power`, when each run's standard deviation is `pooledSd`. The power analysis of a two-sample
 * t-test: n = 2·((t_{1-α/2} + t_{power})·sd/Δ)², with the t quantiles at the 2n - 2 degrees of freedom of n
 * seeds each (the normal approximation's z quantiles undercount small n).
 * At least `atLeast`: a sweep that just failed to separate the pair with n seeds needs more than n.
 * Infinity when there is nothing to estimate from (no difference, or no spread measured).
 */
export function seedsNeeded(diff: number, pooledSd: number, options: { alpha?: number; power?: number; atLeast?: number } = {}): number {
  const { alpha = 0.05, power = 0.8, atLeast = 2 } = options;
  if (diff === 0 || !Number.isFinite(diff) || !Number.isFinite(pooledSd)) return Infinity;
  const ratio = pooledSd / Math.abs(diff);
  // Past 1000 degrees of freedom t is within 0.1% of the normal, and its quantiles are slow to compute there.
  const quantiles = new Map<number, number>();
  const need = (n: number) => {
    const df = Math.min(2 * n - 2, 1000);
    if (!quantiles.has(df)) quantiles.set(df, tQuantile(1 - alpha / 2, df) + tQuantile(power, df));
    return 2 * (quantiles.get(df)! * ratio) ** 2;
  };
  // need(n) falls as n grows (so do the t quantiles) and never below its value at the capped degrees of
  // freedom: that bounds the answer from below, need(lo) from above, and bisection finds the smallest n
  // with need(n) <= n between them.
  let lo = Math.max(2, atLeast, Math.ceil(need(1e9)) - 1);
  if (need(lo) <= lo) return lo;
  let hi = Math.ceil(need(lo));
  while (hi - lo > 1) {
    const mid = Math.floor((lo + hi) / 2);
    if (need(mid) <= mid) hi = mid;
    else lo = mid;
  }
  return hi;
}

/** The pooled standard deviation of two samples (weighted by degrees of freedom). */
export function pooledSd(a: readonly number[], b: readonly number[]): number {
  return Math.sqrt(((a.length - 1) * variance(a) + (b.length - 1) * variance(b)) / (a.length + b.length - 2));
}

export interface Comparison {
  a: string;
  b: string;
  /** mean(a) - mean(b). */
  diff: number;
  /** Welch's p, and after Holm's adjustment over every pair of the sweep; null with one seed. */
  p: number | null;
  pAdjusted: number | null;
  /** True when the difference could be seed noise (adjusted p >= alpha, or too few seeds to tell). */
  insideNoise: boolean;
  /**
   * Seeds per configuration an 80%-power test at the Holm-corrected level would need for the observed
   * difference and spread, always more than were tried; null with one seed, or when there is nothing to
   * estimate from (equal means): then more than `seedsTried` is all that is known.
   */
  seedsNeeded: number | null;
  /** Seeds of the smaller side. */
  seedsTried: number;
  note: string;
}

/** Every pair of configurations compared on one metric, Welch's t-test with Holm's correction at level alpha. */
export function compareAll(groups: readonly { id: string; values: readonly number[] }[], alpha = 0.05): Comparison[] {
  const pairs: { a: (typeof groups)[number]; b: (typeof groups)[number]; w: Welch | null }[] = [];
  for (let i = 0; i < groups.length; i++) for (let j = i + 1; j < groups.length; j++) pairs.push({ a: groups[i]!, b: groups[j]!, w: welch(groups[i]!.values, groups[j]!.values) });
  const tested = pairs.filter((p) => p.w !== null);
  const adjusted = holm(tested.map((p) => p.w!.p));
  return pairs.map((pair) => {
    const { a, b, w } = pair;
    const diff = mean(a.values) - mean(b.values);
    const tried = Math.min(a.values.length, b.values.length);
    if (w === null)
      return { a: a.id, b: b.id, diff, p: null, pAdjusted: null, insideNoise: true, seedsNeeded: null, seedsTried: tried, note: 'one seed: noise cannot be told from effect' };
    const pAdj = adjusted[tested.indexOf(pair)]!;
    // Holm tests the smallest p at alpha / m: the level a pair must clear when it is the only real one.
    const need = seedsNeeded(diff, pooledSd(a.values, b.values), { alpha: alpha / tested.length, atLeast: tried + 1 });
    const inside = !(pAdj < alpha);
    const note = !inside
      ? 'separated'
      : Number.isFinite(need)
        ? `inside the noise; ~${need} seeds each would separate a difference this size (80% power at the corrected level, from the observed difference and spread)`
        : `inside the noise; no difference to estimate from: more than ${tried} seeds each`;
    return { a: a.id, b: b.id, diff, p: w.p, pAdjusted: pAdj, insideNoise: inside, seedsNeeded: Number.isFinite(need) ? need : null, seedsTried: tried, note };
  });
}
