import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import yargs from 'yargs';
import { readModelConfig } from '../lib/io/config';
import { compareAll, holm, mean, seedsNeeded, summarize, tQuantile, tTwoSidedP, variance, welch } from '../lib/sweep/stats';
import { configurations, parseSpec, type SweepSpec } from '../lib/sweep/spec';
import { gatherReport, listRuns, runIndex, runSweep, trainOne, type RunOne } from '../lib/sweep/runner';
import { slurmScript } from '../lib/sweep/slurm';
import { BYTES, assumedLlama, gpuMemory, parseMemory, plan } from '../lib/sweep/plan';
import { formatReport } from '../lib/cli/commands/sweep';
import { planCommand } from '../lib/cli/commands/plan';

const LLAMA = path.join(__dirname, 'fixtures/peft/tiny-llama');
const tmp = () => fs.mkdtempSync(path.join(os.tmpdir(), 'lorakit-sweep-'));

function sequences(n: number, offset = 0): string {
  const f = path.join(tmp(), 'seq.jsonl');
  const lines = Array.from({ length: n }, (_, i) => JSON.stringify({ input_ids: Array.from({ length: 24 }, (_, j) => 20 + offset + (((i % 4) * 8 + j) % 32)) }));
  fs.writeFileSync(f, `${lines.join('\n')}\n`);
  return f;
}

/** A seeded normal generator (mulberry32 + Box-Muller), so the noise tests are the same on every run. */
function normals(seed: number): () => number {
  let a = seed >>> 0;
  const uniform = () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
  return () => Math.sqrt(-2 * Math.log(1 - uniform())) * Math.cos(2 * Math.PI * uniform());
}

describe('statistics, against hand-worked values', () => {
  test('mean, variance and the 95% interval use Student t', () => {
    expect(mean([1, 2, 3])).toBe(2);
    expect(variance([1, 2, 3])).toBe(1);
    // Published two-sided 95% critical values.
    for (const [df, t] of [[1, 12.706], [2, 4.303], [4, 2.776], [10, 2.228], [30, 2.042]] as const) expect(tQuantile(0.975, df)).toBeCloseTo(t, 3);
    expect(tQuantile(0.975, 1e6)).toBeCloseTo(1.96, 3);
    // [1, 2, 3]: sd 1, so the half-width is t(0.975, 2) / sqrt(3) = 4.3027 / 1.7321 = 2.4841.
    const s = summarize([1, 2, 3]);
    expect(s).toMatchObject({ n: 3, mean: 2, sd: 1 });
    expect(s.ci95).toBeCloseTo(2.4841, 4);
    expect(summarize([5]).ci95).toBeNaN();
  });

  test("Welch's t-test", () => {
    // With df = 1 and df = 2 the t tail has a closed form: 1 - (2/pi) atan t, and 1 - t / sqrt(2 + t^2).
    expect(tTwoSidedP(1, 1)).toBeCloseTo(0.5, 10);
    expect(tTwoSidedP(3, 2)).toBeCloseTo(1 - 3 / Math.sqrt(11), 10);
    // [1, 3] vs [4, 6]: variances 2 and 2, se^2 = 2/2 + 2/2 = 2, t = -3 / sqrt 2, df = 2^2 / (1/1 + 1/1) = 2.
    const w = welch([1, 3], [4, 6])!;
    expect(w.diff).toBe(-3);
    expect(w.t).toBeCloseTo(-3 / Math.SQRT2, 12);
    expect(w.df).toBeCloseTo(2, 12);
    expect(w.p).toBeCloseTo(1 - 4.5 ** 0.5 / Math.sqrt(6.5), 10);
    // Unequal variances: [1, 2, 3] (var 1) vs [4..8] (var 2.5): se^2 = 1/3 + 1/2 = 5/6, t = -4 / sqrt(5/6) = -4.3818,
    // df = (5/6)^2 / ((1/3)^2 / 2 + (1/2)^2 / 4) = 0.69444 / 0.11806 = 5.8824.
    const u = welch([1, 2, 3], [4, 5, 6, 7, 8])!;
    expect(u.t).toBeCloseTo(-4.3818, 4);
    expect(u.df).toBeCloseTo(5.8824, 4);
    expect(u.p).toBeCloseTo(0.004883, 5);
    expect(welch([1], [2, 3])).toBeNull();
  });

  test('Holm adjustment and the seeds estimate', () => {
    // Sorted 0.01, 0.03, 0.04: 3 * 0.01, max(0.03, 2 * 0.03), max(0.06, 1 * 0.04).
    expect(holm([0.01, 0.04, 0.03])).toEqual([0.03, 0.06, 0.06].map((x) => expect.closeTo(x, 12)));
    // The normal approximation 2 * ((1.95996 + 0.84162) * 1 / 0.5)^2 = 62.79 says 63; the t quantiles at
    // 2n - 2 degrees of freedom add one.
    expect(seedsNeeded(0.5, 1)).toBe(64);
    expect(seedsNeeded(0, 1)).toBe(Infinity);
    expect(seedsNeeded(0.5, 1, { atLeast: 100 })).toBe(100);
  });

  test('the seeds estimate has the power it claims: Welch at that many seeds separates the difference 80% of the time', () => {
    // Monte Carlo, the reference no formula shares: normal runs, the true difference and spread given.
    const z = normals(4242);
    const power = (diff: number, n: number, alpha: number, trials = 1500) => {
      let hits = 0;
      for (let k = 0; k < trials; k++) {
        const a = Array.from({ length: n }, () => z()), b = Array.from({ length: n }, () => diff + z());
        if (welch(a, b)!.p < alpha) hits++;
      }
      return hits / trials;
    };
    for (const [diff, alpha] of [[1.5, 0.05], [3, 0.05], [1.5, 0.05 / 3]] as const) {
      const n = seedsNeeded(diff, 1, { alpha });
      expect(power(diff, n, alpha)).toBeGreaterThan(0.77);
      // And not far more than needed: one seed fewer falls short of (or near) 80%.
      expect(power(diff, n - 1, alpha)).toBeLessThan(0.83);
    }
  });

  test('a pair that n seeds failed to separate is never told that n (or fewer) would', () => {
    // Two seeds 0.6 apart with spread 0.14: Welch p = 0.051, inside the noise; the normal formula said ~2.
    const [c] = compareAll([{ id: 'a', values: [1.0, 1.2] }, { id: 'b', values: [1.6, 1.8] }]);
    expect(c!.insideNoise).toBe(true);
    expect(c!.seedsNeeded).toBeGreaterThan(2);
    expect(c!.note).toMatch(new RegExp(`~${c!.seedsNeeded} seeds each would separate`));
    // Equal means: nothing to estimate from, and the note says so.
    const [same] = compareAll([{ id: 'a', values: [1, 2, 3] }, { id: 'b', values: [3, 2, 1] }]);
    expect(same!.seedsNeeded).toBeNull();
    expect(same!.note).toMatch(/more than 3 seeds each/);
    // Across random noise sweeps: every estimate exceeds the seeds tried.
    for (let k = 0; k < 50; k++) {
      const z = normals(77 + k);
      const groups = ['a', 'b', 'c'].map((id) => ({ id, values: Array.from({ length: 3 }, () => z()) }));
      for (const cmp of compareAll(groups)) if (cmp.insideNoise && cmp.seedsNeeded !== null) expect(cmp.seedsNeeded).toBeGreaterThan(3);
    }
  });

  test('with one seed, noise cannot be told from effect', () => {
    const [c] = compareAll([{ id: 'a', values: [1] }, { id: 'b', values: [2] }]);
    expect(c).toMatchObject({ insideNoise: true, p: null, note: 'one seed: noise cannot be told from effect' });
  });

  test('on pure noise, at most about 5% of sweeps flag any pair (Holm keeps the family-wise rate)', () => {
    let flagged = 0;
    for (let k = 0; k < 200; k++) {
      const z = normals(1000 + k);
      const groups = ['a', 'b', 'c', 'd'].map((id) => ({ id, values: Array.from({ length: 5 }, () => 2 + 0.05 * z()) }));
      if (compareAll(groups).some((c) => !c.insideNoise)) flagged++;
    }
    expect(flagged / 200).toBeLessThan(0.1);
  });
});

describe('sweep specs', () => {
  const good = { base: { model: LLAMA, data: 'train.jsonl', steps: 5 }, axes: { r: [8, 64], lr: [1e-4, 2e-4] }, seeds: [1, 2], out: 'sweep' };
  test('a good spec expands to its grid, with stable ids', () => {
    const s = parseSpec(good, '/tmp/x');
    expect(s.out).toBe('/tmp/x/sweep');
    expect(s.base.data).toBe('/tmp/x/train.jsonl');
    expect(s).toMatchObject({ mode: 'grid', parallel: 1, seeds: [1, 2] });
    const configs = configurations(s);
    expect(configs.map((c) => c.label)).toEqual(['r=8 lr=0.0001', 'r=8 lr=0.0002', 'r=64 lr=0.0001', 'r=64 lr=0.0002']);
    expect(new Set(configs.map((c) => c.id)).size).toBe(4);
    expect(configurations(parseSpec(good, '/tmp/x')).map((c) => c.id)).toEqual(configs.map((c) => c.id));
    // The id covers the base job too: a changed base never reuses another job's runs.
    expect(configurations(parseSpec({ ...good, base: { ...good.base, steps: 6 } }, '/tmp/x'))[0]!.id).not.toBe(configs[0]!.id);
  });

  test('a base job may set every training option the sweep does not set per run', () => {
    expect(parseSpec({ ...good, base: { ...good.base, saveTotalLimit: 2, saveEvery: 0 } }, '/tmp/x').base).toMatchObject({ saveTotalLimit: 2, saveEvery: 0 });
  });

  test.each([
    [{ ...good, axes: { rr: [1] } }, /'axes\.rr': is not an axis/],
    [{ ...good, axes: { r: [8, 'x'] } }, /'axes\.r\[1\]': must be an integer >= 1/],
    [{ ...good, axes: { lr: [] } }, /'axes\.lr': must be a non-empty list/],
    [{ ...good, axes: { method: ['dora'] } }, /'axes\.method\[0\]'/],
    [{ ...good, axes: { init: ['lora-ga'] } }, /'axes\.init\[0\]': must be true, false, gaussian or pissa/],
    [{ ...good, seeds: [1, -2] }, /'seeds\[1\]'/],
    [{ ...good, seeds: [1, 1] }, /'seeds': lists a seed twice/],
    [{ ...good, mode: 'random' }, /'samples': must be an integer >= 1 in random mode/],
    [{ ...good, base: { ...good.base, seed: 3 } }, /'base\.seed': is set by the sweep/],
    [{ ...good, base: { ...good.base, learningRate: 3 } }, /'base\.learningRate': is not a training option/],
    [{ ...good, base: { ...good.base, overwrite: true } }, /'base\.overwrite': is set by the sweep for each run/],
    [{ ...good, base: { ...good.base, batchSize: 0 } }, /configuration .*'batchSize' must be an integer >= 1/],
    [{ ...good, parallel: 0 }, /'parallel'/],
    [{ ...good, out: 3 }, /'out'/],
    [{ ...good, extra: 1 }, /'extra': is not a sweep field/],
  ])('a bad field is named: %#', (raw, message) => {
    expect(() => parseSpec(raw, '/tmp')).toThrow(message);
  });
});

describe('the runner', () => {
  const fakeSpec = (axes: SweepSpec['axes'], seeds: number[], extra: Partial<SweepSpec> = {}): SweepSpec =>
    parseSpec({ base: { model: LLAMA, data: sequences(40), steps: 5 }, axes, seeds, out: tmp(), ...extra }, '/');
  /** Losses drawn from one distribution per configuration: `shift` moves some of them. */
  const fake = (shift: (o: { r?: number }) => number = () => 0): RunOne => async (o) => {
    const z = normals(o.seed! * 7919 + (o.r ?? 0));
    return { start: { heldout: 3, retain: 2 }, final: { heldout: 2 + shift(o) + 0.05 * z(), retain: 2.1 + 0.01 * z() }, wallSec: 1, tokensPerSec: 100, peakRssBytes: 1e8, peakTensorBytes: 1e6, intruders: 0 };
  };

  test('a pure-noise sweep marks every comparison as inside the noise', async () => {
    const report = await runSweep(fakeSpec({ r: [4, 8, 16] }, [1, 2, 3, 4, 5]), { runOne: fake() });
    expect(report.comparisons).toHaveLength(3);
    for (const c of report.comparisons) {
      expect(c.insideNoise).toBe(true);
      expect(c.note).toMatch(/^inside the noise/);
      expect(c.seedsNeeded).toBeGreaterThan(5);
    }
    expect(report.configs[0]!.forgetting!.mean).toBeGreaterThan(0);
    const text = formatReport(report).join('\n');
    expect(text).toMatch(/inside the noise/);
    expect(JSON.parse(fs.readFileSync(path.join(report.out, 'sweep.json'), 'utf8')).comparisons).toHaveLength(3);
  });

  test('a planted large effect is detected, and only it', async () => {
    const report = await runSweep(fakeSpec({ r: [4, 8, 64] }, [1, 2, 3, 4, 5]), { runOne: fake((o) => (o.r === 64 ? -0.5 : 0)) });
    const label = new Map(report.configs.map((c) => [c.id, c.label]));
    for (const c of report.comparisons) expect(c.insideNoise).toBe(!(label.get(c.a) === 'r=64' || label.get(c.b) === 'r=64'));
  });

  test('one seed: the report says noise cannot be told from effect', async () => {
    const report = await runSweep(fakeSpec({ r: [4, 8] }, [1]), { runOne: fake() });
    expect(report.comparisons[0]!.note).toBe('one seed: noise cannot be told from effect');
    expect(formatReport(report).join('\n')).toMatch(/one seed per configuration: noise cannot be told from effect/);
  });

  test('dataSize trains on a truncated copy of the data, and random mode draws a fixed subset', async () => {
    const seen: string[] = [];
    const spec = fakeSpec({ r: [4, 8, 16], dataSize: [10, 20] }, [1], { mode: 'random', samples: 3 });
    const runOne: RunOne = async (o) => {
      seen.push(o.data);
      return fake()(o);
    };
    const report = await runSweep(spec, { runOne });
    expect(report.configs).toHaveLength(3);
    for (const f of seen) {
      expect(path.dirname(f)).toBe(path.join(spec.out, 'data'));
      const n = Number(/-(\d+)\.jsonl$/.exec(f)![1]);
      expect(fs.readFileSync(f, 'utf8').trim().split('\n')).toHaveLength(n);
    }
    const again = parseSpec({ base: { model: LLAMA, data: spec.base.data, steps: 5 }, axes: spec.axes, seeds: [1], out: spec.out, mode: 'random', samples: 3 }, '/');
    expect((await runSweep(again, { runOne })).configs.map((c) => c.id)).toEqual(report.configs.map((c) => c.id));
  });

  test('parallel runs train in child processes, each giving the same results as a run in this process', async () => {
    const base = { model: LLAMA, data: sequences(60), steps: 4, batchSize: 4, seqLen: 32, lr: 1e-2, dropout: 0, progress: 'none' as const };
    const together = parseSpec({ base, axes: { r: [2, 4] }, seeds: [1], out: tmp(), parallel: 2 }, '/');
    const alone = parseSpec({ base, axes: { r: [2, 4] }, seeds: [1], out: tmp() }, '/');
    const a = await runSweep(together), b = await runSweep(alone);
    expect(a.caveat).toMatch(/separate processes/);
    // The kernels are deterministic for any thread count, so the children's losses are this process's.
    expect(a.configs.map((c) => c.loss.mean)).toEqual(b.configs.map((c) => c.loss.mean));
  });

  test('a real tiny sweep writes result.json per run, and a second invocation resumes: it skips finished runs and redoes a cut-short one', async () => {
    const spec = parseSpec({
      base: { model: LLAMA, data: sequences(60), retainData: sequences(12, 100), steps: 5, batchSize: 4, seqLen: 32, lr: 1e-2, dropout: 0, progress: 'none' },
      axes: { r: [2, 4] }, seeds: [1, 2], out: tmp(),
    }, '/');
    let calls = 0;
    const counting: RunOne = async (o) => {
      calls++;
      return trainOne(o);
    };
    const first = await runSweep(spec, { runOne: counting });
    expect(calls).toBe(4);
    const results = first.configs.flatMap((c) => spec.seeds.map((s) => path.join(spec.out, 'runs', c.id, `seed-${s}`, 'result.json')));
    for (const f of results) {
      const r = JSON.parse(fs.readFileSync(f, 'utf8'));
      expect(r.final.heldout).toBeGreaterThan(0);
      expect(r.forgetting).toBeCloseTo(r.final.retain - r.start.retain, 12);
      expect(r.tokensPerSec).toBeGreaterThan(0);
      expect(r.peakRssBytes).toBeGreaterThan(1e6);
      expect(Number.isInteger(r.intruders) && r.intruders >= 0).toBe(true);
    }
    expect(Number.isFinite(first.configs[0]!.intruders.mean)).toBe(true);
    expect(first.configs[0]!.loss.n).toBe(2);

    calls = 0;
    const second = await runSweep(spec, { runOne: counting });
    expect(calls).toBe(0);
    expect(second).toMatchObject({ ran: 0, skipped: 4 });
    expect(second.configs).toEqual(first.configs);

    // A run killed part-way: its folder holds training output but no result.json.
    fs.rmSync(results[3]!);
    calls = 0;
    const third = await runSweep(spec, { runOne: counting });
    expect(calls).toBe(1);
    expect(third).toMatchObject({ ran: 1, skipped: 3 });
    expect(fs.existsSync(results[3]!)).toBe(true);
  });
});

describe('a sweep as a list of runs, one index at a time', () => {
  const spec = () => parseSpec({ base: { model: LLAMA, data: sequences(40), steps: 5 }, axes: { r: [4, 8] }, seeds: [3, 1, 2], out: tmp() }, '/');
  const fake = (calls: number[]): RunOne => async (o) => {
    calls.push(o.seed!);
    const z = normals(o.seed! * 31 + (o.r ?? 0));
    return { start: { heldout: 3 }, final: { heldout: 2 + 0.1 * z() + (o.r === 8 ? -0.2 : 0) }, wallSec: 1, tokensPerSec: 100, peakRssBytes: 1e8, peakTensorBytes: 1e6, intruders: 1 };
  };

  test('indices follow the spec: configurations in order, each with its seeds in order', () => {
    const s = spec();
    expect(listRuns(s).map((r) => [r.index, r.config.label, r.seed, path.relative(s.out, r.dir)])).toEqual([
      [0, 'r=4', 3, `runs/${configurations(s)[0]!.id}/seed-3`], [1, 'r=4', 1, `runs/${configurations(s)[0]!.id}/seed-1`], [2, 'r=4', 2, `runs/${configurations(s)[0]!.id}/seed-2`],
      [3, 'r=8', 3, `runs/${configurations(s)[1]!.id}/seed-3`], [4, 'r=8', 1, `runs/${configurations(s)[1]!.id}/seed-1`], [5, 'r=8', 2, `runs/${configurations(s)[1]!.id}/seed-2`],
    ]);
  });

  test('runIndex trains exactly its run, is a no-op when the result exists, and the gathered report equals the local sweep', async () => {
    const s = spec(), calls: number[] = [];
    expect(() => gatherReport(s)).toThrow(/6 of 6 runs have no result in .*: 0 \(r=4 seed 3\), 1 \(r=4 seed 1\)/);
    const first = await runIndex(s, 4, { runOne: fake(calls) });
    expect([first.ran, first.run.seed, calls]).toEqual([true, 1, [1]]);
    expect(JSON.parse(fs.readFileSync(path.join(first.run.dir, 'result.json'), 'utf8'))).toEqual(first.record);
    const again = await runIndex(s, 4, { runOne: fake(calls) });
    expect([again.ran, calls]).toEqual([false, [1]]);
    expect(again.record).toEqual(first.record);
    await expect(runIndex(s, 6, { runOne: fake(calls) })).rejects.toMatchObject({ code: 'ERR_OUT_OF_RANGE', message: expect.stringMatching(/from 0 to 5 \(the sweep has 6 runs\), got 6/) });
    expect(() => gatherReport(s)).toThrow(/5 of 6 runs have no result/);
    for (const i of [5, 0, 3, 1, 2]) await runIndex(s, i, { runOne: fake(calls) });
    const gathered = gatherReport(s);
    const local = await runSweep({ ...s, out: tmp() }, { runOne: fake([]) });
    expect(gathered.configs).toEqual(local.configs);
    expect(gathered.comparisons).toEqual(local.comparisons);
    expect(JSON.parse(fs.readFileSync(path.join(s.out, 'sweep.json'), 'utf8')).configs).toHaveLength(2);
  });

  test('the SLURM job-array script: one task per index, the options as #SBATCH lines, bad ones refused', () => {
    const s = spec();
    const text = slurmScript(s, '/x/spec.json', [0, 1, 2, 5], { partition: 'gpu', gpusPerTask: 1, cpusPerTask: 4, time: '1-02:00:00', maxParallel: 2, sbatchArgs: ['--account=proj'] });
    const sbatch = text.split('\n').filter((l) => l.startsWith('#SBATCH'));
    expect(sbatch.slice(1)).toEqual([
      '#SBATCH --array=0-2,5%2', `#SBATCH --output="${s.out}/slurm/logs/%A_%a.log"`, '#SBATCH --ntasks=1', '#SBATCH --cpus-per-task=4',
      '#SBATCH --partition=gpu', '#SBATCH --gpus-per-task=1', '#SBATCH --time=1-02:00:00', '#SBATCH --account=proj',
    ]);
    expect(text).toMatch(/sweep run '\/x\/spec\.json' --index "\$SLURM_ARRAY_TASK_ID"\n$/);
    expect(() => slurmScript(s, '/x/spec.json', [0], { time: '1 hour' })).toThrow(/--time must be minutes, MM:SS, HH:MM:SS/);
    expect(() => slurmScript(s, '/x/spec.json', [0], { sbatchArgs: ['rm -rf /'] })).toThrow(/--sbatch-arg must be one sbatch option/);
    expect(() => slurmScript(s, '/x/spec.json', [0], { maxParallel: 0 })).toThrow(/--max-parallel must be an integer >= 1, got 0/);
  });
});

describe('lorakit plan', () => {
  test('tiny-llama, counted by hand', () => {
    const c = readModelConfig(LLAMA);
    const p = plan(c, { batchSize: 4, seqLen: 32, r: 16, memoryBytes: 2 ** 20 });
    // Per layer: q 64x64, k and v 32x64, o 64x64, gate/up/down 176x64 = 46080 linear + 2 x 64 norm weights;
    // two layers, untied 512x64 embedding and lm_head, final norm 64.
    const linear = 2 * 46080;
    expect(p.params).toBe(2 * (46080 + 128) + 2 * 512 * 64 + 64);
    expect(p.params).toBe(158016);
    // r (in + out): q 16(64+64), k and v 16(64+32), o 16(64+64), gate/up/down 16(64+176), two layers.
    expect(p.loraParams).toBe(2 * (2048 + 2 * 1536 + 2048 + 3 * 3840));
    // Activations per token and layer: 2 (4*64 + 2*64 + 2*32 + 4*176) + 4*4 = 2320; logits 6*512; 4*32 tokens.
    expect(p.activationBytes).toBe(4 * 32 * (2 * 2320 + 6 * 512));
    const by = Object.fromEntries(p.methods.map((m) => [m.method, m]));
    expect(by.full!.stateBytes).toBe(16 * 158016);
    expect(by.lora!.stateBytes).toBe(2 * 158016 + 16 * 37376);
    expect(by.qlora!.stateBytes).toBeCloseTo(linear * (0.5 + 1 / 64 + 4 / 16384) + 2 * (158016 - linear) + 16 * 37376, 6);
    // 1 MiB, 90% usable (943718 bytes): nothing fits; 2 MiB (1887437): QLoRA's 1764407 does, LoRA's 1901184 does not.
    expect(p.methods.map((m) => m.fits)).toEqual([false, false, false]);
    expect(plan(c, { batchSize: 4, seqLen: 32, memoryBytes: 2 * 2 ** 20 }).methods.map((m) => m.fits)).toEqual([false, false, true]);
  });

  test('--params 7B assumes the Llama-2-7B shape, counted by hand', () => {
    const { config, assumption } = assumedLlama(7e9);
    expect(assumption).toMatch(/assuming Llama-2-7B's shape/);
    const p = plan(config, { batchSize: 1, seqLen: 512, r: 16 });
    // 32 layers of 4 x 4096^2 + 3 x 4096 x 11008 linear weights and 2 x 4096 norm weights; 2 x 32000 x 4096 embeddings + 4096.
    const linear = 32 * (4 * 4096 ** 2 + 3 * 4096 * 11008);
    expect(p.params).toBe(linear + 32 * 8192 + 2 * 32000 * 4096 + 4096);
    expect(p.params).toBe(6738415616);
    expect(p.loraParams).toBe(32 * 16 * (4 * 8192 + 3 * (4096 + 11008)));
    // Per token and layer 2 (4 x 4096 + 2 x 4096 + 2 x 4096 + 4 x 11008) + 4 x 32 = 153728, logits 6 x 32000.
    expect(p.activationBytes).toBe(512 * (32 * 153728 + 192000));
    const lora = 2 * 6738415616 + 16 * p.loraParams + p.activationBytes;
    const qlora = BYTES.nf4 * linear + 2 * (6738415616 - linear) + 16 * p.loraParams + p.activationBytes;
    expect(p.methods.map((m) => m.totalBytes)).toEqual([16 * 6738415616 + p.activationBytes, lora, expect.closeTo(qlora, 3)]);
    // RTX 4070 (12 GiB, 10.8 usable): QLoRA's 7.1e9 only. 24 GB (21.6 GiB usable): LoRA's 16.7e9 too. Full needs 110e9.
    const fits = (bytes: number) => plan(config, { batchSize: 1, seqLen: 512, memoryBytes: bytes }).methods.map((m) => m.fits);
    expect(fits(gpuMemory('RTX 4070').bytes)).toEqual([false, false, true]);
    expect(fits(parseMemory('24GB'))).toEqual([false, true, true]);
    expect(fits(gpuMemory('H200').bytes)).toEqual([true, true, true]);
    expect(() => gpuMemory('A100')).toThrow(/A100 40GB or A100 80GB/);
    // Gradient checkpointing keeps 2 x 4096 bytes per token and layer, plus one layer's 153728 and the logits.
    const ckpt = plan(config, { batchSize: 8, seqLen: 2048, checkpointing: true });
    expect(ckpt.activationBytes).toBe(8 * 2048 * (32 * 8192 + 153728 + 192000));
  });

  test('the command prints the plan as JSON', async () => {
    const out: string[] = [];
    const spy = jest.spyOn(process.stdout, 'write').mockImplementation((s) => {
      out.push(String(s));
      return true;
    });
    try {
      await planCommand(yargs(['plan', '--params', '7B', '--gpu', 'RTX 4090', '--batch-size', '1', '--seq-len', '512', '--json'])).parseAsync();
    } finally {
      spy.mockRestore();
    }
    const j = JSON.parse(out.join(''));
    expect(j).toMatchObject({ gpu: 'RTX 4090', params: 6738415616, assumption: expect.stringMatching(/Llama-2-7B/) });
    expect(j.methods.map((m: { fits: boolean }) => m.fits)).toEqual([false, true, true]);
  });
});
