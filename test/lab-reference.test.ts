/**
 * The lab's numbers against references written out here in float64: the exact-match and loss of
 * score() on hand-made logits and on a real model's logits, the parameter counts and update scales of
 * the arms by closed form, and a miniature lab's base scores, quantization tax and forgetting recomputed
 * from the models it measured.
 */
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { type Example } from '../lib/data/example';
import { loadExamples } from '../lib/data/load';
import { ARMS, LAB_BASE, armScale, formatLab, makeTask, runLab, score, trainableParameters, type LabReport } from '../lib/lab';
import { loadAdapter } from '../lib/adapters/adapter';
import { loadModel, type CausalLM } from '../lib/models';
import { tensor } from '../lib/tensor/tensor';
import { loadTokenizer } from '../lib/tokenizer';
import { labArm, quickLab, summary as sum } from './helpers/lab';

const LLAMA = path.join(__dirname, 'fixtures/peft/tiny-llama');

/** Per example: the float64 log-softmax loss of every position t whose label t+1 is not -100, and the argmax check. */
function reference(logits: ArrayLike<number>, vocab: number, labels: readonly number[]): { sum: number; count: number; exact: boolean } {
  let sum = 0, count = 0, exact = true;
  for (let t = 0; t + 1 < labels.length; t++) {
    const want = labels[t + 1]!;
    if (want === -100) continue;
    let max = -Infinity, arg = -1;
    for (let v = 0; v < vocab; v++) if (logits[t * vocab + v]! > max) [max, arg] = [logits[t * vocab + v]!, v];
    let z = 0;
    for (let v = 0; v < vocab; v++) z += Math.exp(logits[t * vocab + v]! - max);
    sum += max + Math.log(z) - logits[t * vocab + want]!;
    count++;
    if (arg !== want) exact = false;
  }
  return { sum, count, exact: exact && count > 0 };
}

/** Scores a list of examples in float64 from each example's logits. */
function referenceScore(examples: readonly Example[], logitsOf: (ex: Example) => ArrayLike<number>, vocab: number) {
  let sum = 0, count = 0, hits = 0;
  for (const ex of examples) {
    const r = reference(logitsOf(ex), vocab, ex.labels);
    sum += r.sum;
    count += r.count;
    if (r.exact) hits++;
  }
  return { loss: sum / count, exactMatch: hits / examples.length, tokens: count };
}

/**
 * A stand-in model whose logits are given per example (looked up by the first input id), and whose
 * loss is the per-example mean the real model reports; it records what score() asked of it.
 */
function fakeModel(vocab: number, table: Map<number, number[]>) {
  const calls: { returnLogits: boolean }[] = [];
  const model = {
    config: { vocabSize: vocab },
    forward(ids: { toArray(): unknown }, o: { labels: { toArray(): unknown }; returnLogits?: boolean }) {
      const inputs = Array.from(ids.toArray() as ArrayLike<bigint>[])[0]!;
      const labels = Array.from((o.labels.toArray() as ArrayLike<bigint>[])[0]!, Number);
      const logits = table.get(Number(inputs[0]))!;
      calls.push({ returnLogits: o.returnLogits === true });
      const r = reference(logits, vocab, labels);
      return { loss: r.count > 0 ? r.sum / r.count : NaN, tokens: r.count, logits: o.returnLogits ? tensor(Float32Array.from(logits), [1, labels.length, vocab]) : undefined };
    },
  };
  return { model: model as unknown as CausalLM, calls };
}

describe('score() on hand-made logits', () => {
  const V = 4;
  // Row t of each example is the distribution predicting token t+1. One-hot-ish rows: 3 on the argmax.
  const row = (arg: number, other = 0) => Array.from({ length: V }, (_, v) => (v === arg ? 3 : other + 0.25 * v));
  const ex = (first: number, labels: number[]): Example => ({ inputIds: [first, ...labels.slice(1).map((l) => (l < 0 ? 0 : l))], labels });
  // a: prompt [0], completion [2, 1]: rows 0 and 1 predict 2 and 1 -> a match.
  const a = ex(0, [-100, 2, 1]);
  // b: completion [3, 3] but row 1 argmax is 0 -> a miss at the last position only.
  const b = ex(1, [-100, 3, 3]);
  // c: the argmax of row t is label t (not t+1): a match only for a scorer shifted by one.
  const c = ex(2, [1, 2, 3, 0]);
  // d: nothing to predict (every label -100 past position 0).
  const d = ex(3, [5, -100, -100]);
  const table = new Map<number, number[]>([
    [0, [...row(2), ...row(1), ...row(0)]],
    [1, [...row(3), ...row(0), ...row(1)]],
    [2, [...row(1), ...row(2), ...row(3), ...row(0)]],
    [3, [...row(0), ...row(0), ...row(0)]],
  ]);

  test('exact match counts examples whose every completion token is the argmax of the position before it', () => {
    const { model } = fakeModel(V, table);
    const examples = [a, b, c, d];
    const s = score(model, examples);
    // Only a matches: b misses its last token, c would match only if logits row t were compared with label t, d has nothing to predict.
    expect(s.exactMatch).toBe(1 / 4);
    const ref = referenceScore(examples, (e) => table.get(e.inputIds[0]!)!, V);
    expect(ref.exactMatch).toBe(1 / 4);
    expect(s.tokens).toBe(2 + 2 + 3);
    expect(s.loss).toBeCloseTo(ref.loss, 6);
    // Each example on its own.
    expect([a, b, c, d].map((e) => score(model, [e]).exactMatch)).toEqual([1, 0, 0, 0]);
  });

  test('a miss at the first completion token or a tie lost to a lower id fails the example', () => {
    // Row 0 is a tie between ids 1 and 3 (both 3): the argmax is the first, 1, so label 3 misses and label 1 matches.
    const tie = [0, 3, 0, 3].concat(row(2), row(0));
    const { model } = fakeModel(V, new Map([[7, tie]]));
    expect(score(model, [{ inputIds: [7, 1, 2], labels: [-100, 3, 2] }]).exactMatch).toBe(0);
    expect(score(model, [{ inputIds: [7, 1, 2], labels: [-100, 1, 2] }]).exactMatch).toBe(1);
    // Label -100 in the middle is skipped, the positions around it still count.
    expect(score(model, [{ inputIds: [7, 1, 2], labels: [-100, 1, -100] }]).exactMatch).toBe(1);
    expect(score(model, [{ inputIds: [7, 1, 2], labels: [-100, -100, 1] }]).exactMatch).toBe(0);
    // A row's argmax looks at that row only, not into the next row's first logit.
    const next = [0, 0, 1, 0, 9, 0, 0, 0, ...row(0)];
    expect(score(fakeModel(V, new Map([[7, next]])).model, [{ inputIds: [7, 2, 0], labels: [-100, 2, 0] }]).exactMatch).toBe(1);
    // The last vocabulary id can be the argmax.
    const last = row(3).concat(row(3), row(0));
    expect(score(fakeModel(V, new Map([[7, last]])).model, [{ inputIds: [7, 3, 3], labels: [-100, 3, 3] }]).exactMatch).toBe(1);
  });

  test('the loss is weighted by tokens across examples, not a mean of per-example means', () => {
    const { model } = fakeModel(V, table);
    const s = score(model, [a, c]);
    const ra = reference(table.get(0)!, V, a.labels), rc = reference(table.get(2)!, V, c.labels);
    expect(s.tokens).toBe(ra.count + rc.count);
    expect(s.loss).toBeCloseTo((ra.sum + rc.sum) / (ra.count + rc.count), 6);
    expect(Math.abs(s.loss - (ra.sum / ra.count + rc.sum / rc.count) / 2)).toBeGreaterThan(1e-3);
  });

  test('without exact match no logits are asked for and nothing matches; nothing to score is NaN', () => {
    const { model, calls } = fakeModel(V, table);
    const s = score(model, [a, b], false);
    expect(calls.map((c) => c.returnLogits)).toEqual([false, false]);
    expect(s.exactMatch).toBe(0);
    expect(s.loss).toBeCloseTo(referenceScore([a, b], (e) => table.get(e.inputIds[0]!)!, V).loss, 6);
    const none = score(model, [d]);
    expect([Number.isNaN(none.loss), none.exactMatch, none.tokens]).toEqual([true, 0, 0]);
    const empty = score(model, []);
    expect([Number.isNaN(empty.loss), Number.isNaN(empty.exactMatch), empty.tokens]).toEqual([true, true, 0]);
  });
});

describe('score() on a real model', () => {
  test('a greedy continuation scores exact match 1, its loss the float64 cross-entropy of the logits', () => {
    using model = loadModel(LLAMA);
    const vocab = model.config.vocabSize;
    const logitsOf = (ids: readonly number[]) => {
      using t = tensor(BigInt64Array.from(ids, BigInt), [1, ids.length]);
      using l = model.forward(t, { returnLogits: true }).logits!;
      return Float64Array.from(l.toFloat32Array());
    };
    // Greedy decoding of 5 tokens after a 4-token prompt, done here with argmax over the logits.
    const ids = [11, 42, 7, 300];
    for (let k = 0; k < 5; k++) {
      const l = logitsOf(ids), at = (ids.length - 1) * vocab;
      let best = 0;
      for (let v = 1; v < vocab; v++) if (l[at + v]! > l[at + best]!) best = v;
      ids.push(best);
    }
    const greedy: Example = { inputIds: ids, labels: ids.map((t, i) => (i < 4 ? -100 : t)) };
    // The same sequence with its last completion token replaced: no longer what greedy decoding writes.
    const wrong = [...ids.slice(0, -1), (ids[ids.length - 1]! + 1) % vocab];
    const edited: Example = { inputIds: wrong, labels: wrong.map((t, i) => (i < 4 ? -100 : t)) };
    const s = score(model, [greedy, edited]);
    const ref = referenceScore([greedy, edited], (e) => logitsOf(e.inputIds), vocab);
    expect(ref.exactMatch).toBe(0.5);
    expect(s.exactMatch).toBe(0.5);
    expect(s.tokens).toBe(10);
    expect(Math.abs(s.loss - ref.loss) / ref.loss).toBeLessThan(1e-5);
  });
});

describe('the arms', () => {
  test('update scale: alpha/r, or alpha/sqrt(r) for rsLoRA; none for full fine-tuning', () => {
    const scale = Object.fromEntries(ARMS.map((a) => [a.id, armScale(a)]));
    expect(scale).toEqual({ 'attn-r32': 2, 'all-r11': 2, r8: 2, 'r8-rs': 16 / Math.sqrt(8), r64: 0.25, 'r64-rs': 2, 'qlora-r8': 2, full: null });
  });

  test('trainable parameters by closed form on the default Llama (hidden 192, kv 96, MLP 672, 4 layers, tied head)', () => {
    // Per layer and rank: A is r x in, B is out x r, so a rank costs in + out per module.
    const attention = (192 + 192) + (192 + 96) + (192 + 96) + (192 + 192);
    const mlp = 2 * (192 + 672) + (672 + 192);
    const full = 1024 * 192 + 4 * (192 * 192 * 2 + 192 * 96 * 2 + 3 * 192 * 672 + 2 * 192) + 192;
    const expected: Record<string, number> = {
      'attn-r32': 4 * 32 * attention, 'all-r11': 4 * 11 * (attention + mlp), r8: 4 * 8 * (attention + mlp), 'r8-rs': 4 * 8 * (attention + mlp),
      r64: 4 * 64 * (attention + mlp), 'r64-rs': 4 * 64 * (attention + mlp), 'qlora-r8': 4 * 8 * (attention + mlp), full,
    };
    for (const arm of ARMS) expect([arm.id, trainableParameters(LAB_BASE, arm)]).toEqual([arm.id, expected[arm.id]]);
  });
});

/** The float64 loss, exact match and token count of a model over examples. */
function measure(model: CausalLM, examples: readonly Example[]) {
  const vocab = model.config.vocabSize;
  return referenceScore(examples, (ex) => {
    using t = tensor(BigInt64Array.from(ex.inputIds, BigInt), [1, ex.inputIds.length]);
    using l = model.forward(t, { returnLogits: true }).logits!;
    return l.toFloat32Array();
  }, vocab);
}

// Student t 97.5% quantile for one degree of freedom: tan(0.475 pi).
const T1 = Math.tan(0.475 * Math.PI);

describe('a miniature lab, measured again', () => {
  const out = fs.mkdtempSync(path.join(os.tmpdir(), 'lorakit-labref-'));
  let report: LabReport;
  let evalExamples: Example[], retainExamples: Example[];

  beforeAll(async () => {
    report = await runLab({
      out, tasks: ['behaviour'], arms: ['r8', 'qlora-r8'], seeds: [1, 2],
      settings: { steps: 2, batchSize: 2, seqLen: 32, evalExamples: 5, retainDocs: 3 },
    });
    const tok = loadTokenizer(LAB_BASE);
    evalExamples = loadExamples(path.join(out, 'data', 'behaviour', 'eval.jsonl'), tok);
    retainExamples = loadExamples(path.join(out, 'data', 'retain.txt'), tok);
  }, 120_000);
  afterAll(() => fs.rmSync(out, { recursive: true, force: true }));

  test('the data are the task\'s first held-out questions and the first retain documents', () => {
    const pairs = fs.readFileSync(path.join(out, 'data', 'behaviour', 'eval.jsonl'), 'utf8').trim().split('\n').map((l) => JSON.parse(l) as unknown);
    expect(pairs).toEqual(makeTask('behaviour').eval.slice(0, 5));
    const docs = fs.readFileSync(path.join(LAB_BASE, 'retain.txt'), 'utf8').split(/\n\s*\n/).map((d) => d.trim()).filter(Boolean);
    expect(fs.readFileSync(path.join(out, 'data', 'retain.txt'), 'utf8')).toBe(docs.slice(0, 3).join('\n\n') + '\n');
    expect(report.retain.documents).toBe(3);
    expect(report.tasks.behaviour!.eval).toBe(5);
    expect(report.tasks.behaviour!.train).toBe(makeTask('behaviour').train.length);
  });

  test('base scores and the quantization tax: NF4 base minus float32 base, recomputed', () => {
    using float = loadModel(LAB_BASE);
    using nf4 = loadModel(LAB_BASE, { quantize: true });
    const f = measure(float, evalExamples), q = measure(nf4, evalExamples);
    const t = report.tasks.behaviour!;
    expect(t.base.tokens).toBe(f.tokens);
    expect(Math.abs(t.base.loss - f.loss)).toBeLessThan(1e-5 * f.loss);
    expect(Math.abs(t.nf4Base.loss - q.loss)).toBeLessThan(1e-5 * q.loss);
    expect([t.base.exactMatch, t.nf4Base.exactMatch]).toEqual([f.exactMatch, q.exactMatch]);
    // The tax is not zero here: a sign error or a swapped base would show.
    expect(Math.abs(q.loss - f.loss)).toBeGreaterThan(1e-4);
    expect(Math.abs(t.quantizationTax.lossRise - (q.loss - f.loss))).toBeLessThan(1e-5 * f.loss);
    expect(t.quantizationTax.exactMatchChange).toBeCloseTo(q.exactMatch - f.exactMatch, 12);
    const fr = measure(float, retainExamples), qr = measure(nf4, retainExamples);
    expect(Math.abs(report.retain.baseLoss - fr.loss)).toBeLessThan(1e-5 * fr.loss);
    expect(Math.abs(report.retain.nf4BaseLoss - qr.loss)).toBeLessThan(1e-5 * qr.loss);
  });

  test('each run: eval score and forgetting (retain loss rise over the base the arm started from), recomputed from its adapter', () => {
    using float = loadModel(LAB_BASE);
    using nf4 = loadModel(LAB_BASE, { quantize: true });
    const baseRetain = { r8: measure(float, retainExamples).loss, 'qlora-r8': measure(nf4, retainExamples).loss };
    expect(report.runs.map((r) => [r.arm, r.seed])).toEqual([['r8', 1], ['r8', 2], ['qlora-r8', 1], ['qlora-r8', 2]]);
    for (const r of report.runs) {
      const arm = r.arm as 'r8' | 'qlora-r8';
      using tuned = loadModel(LAB_BASE, { quantize: arm === 'qlora-r8' });
      loadAdapter(tuned, path.join(out, 'runs', 'behaviour', arm, `seed-${r.seed}`, 'train', 'last'));
      const e = measure(tuned, evalExamples), retain = measure(tuned, retainExamples).loss;
      expect(Math.abs(r.eval.loss - e.loss)).toBeLessThan(1e-5 * e.loss);
      expect(r.eval.exactMatch).toBe(e.exactMatch);
      expect(r.eval.tokens).toBe(e.tokens);
      expect(Math.abs(r.retainLoss - retain)).toBeLessThan(1e-5 * retain);
      expect(Math.abs(r.forgetting - (retain - baseRetain[arm]))).toBeLessThan(1e-5 * retain);
      expect(r.trainableParameters).toBe(4 * 8 * 3936);
    }
  });

  test('per arm: mean over seeds and the Student-t 95% half-width', () => {
    for (const a of report.tasks.behaviour!.arms) {
      const runs = report.runs.filter((r) => r.arm === a.arm);
      const check = (s: { n: number; mean: number; ci95: number }, xs: number[]) => {
        const m = (xs[0]! + xs[1]!) / 2, sd = Math.abs(xs[0]! - xs[1]!) / Math.SQRT2;
        expect(s.n).toBe(2);
        expect(s.mean).toBeCloseTo(m, 10);
        expect(s.ci95).toBeCloseTo((T1 * sd) / Math.SQRT2, 8);
      };
      check(a.evalLoss, runs.map((r) => r.eval.loss));
      check(a.exactMatch, runs.map((r) => r.eval.exactMatch));
      check(a.forgetting, runs.map((r) => r.forgetting));
      check(a.intruders, runs.map((r) => r.intruders));
      check(a.mergeErrorRelative!, runs.map((r) => r.mergeError!.relative));
      expect(a.seeds).toEqual([1, 2]);
      expect(a.scale).toBe(2);
    }
  });
});

describe('formatLab', () => {
  const arm = labArm({
    arm: 'r8', what: 'w', method: 'lora', seeds: [1, 2, 3],
    evalLoss: sum(1.23456, 0.0456), exactMatch: sum(0.4375, 0.125), forgetting: sum(0.01234, 0.002), intruders: sum(2.5, 1.25),
    mergeErrorRelative: sum(3.21e-7, 1e-8), trainSeconds: sum(12.34, 0.56), peakHostBytes: sum(3 * 2 ** 20, 2 ** 19),
  });
  const report = quickLab(
    { seeds: [1, 2, 3], retain: { documents: 64, baseLoss: 2.34567, nf4BaseLoss: 2.4 }, ran: 5, skipped: 1, wallSeconds: 99.6 },
    {
      base: { loss: 3.21, exactMatch: 0.0625 }, nf4Base: { loss: 3.3, exactMatch: 0 }, quantizationTax: { lossRise: 0.09, exactMatchChange: -0.0625 },
      arms: [arm, { ...arm, arm: 'full', forgetting: sum(-0.5, NaN), mergeErrorRelative: null }],
    },
  );

  test('every number as the table prints it: means ± half-widths, percents, signs and MB', () => {
    const lines = formatLab(report);
    expect(lines[0]).toBe('lorakit lab --quick: 3 seeds, 40 steps of 8 x 64 tokens, lr 0.002 (LoRA/QLoRA) and 0.0005 (full)');
    expect(lines[1]).toBe('retain: 64 documents, base loss 2.346 (NF4 base 2.400)');
    // The legend states the definitions the numbers follow.
    expect(lines[2]).toContain('exact: the greedy completion is the reference, token for token');
    expect(lines[3]).toContain('forgetting: retain loss rise over the base the arm started from (the NF4 base for QLoRA); intruders at k 10, epsilon 0.5');
    expect(lines[4]).toContain('merge err: merged vs unmerged logits on the float32 base, relative Frobenius');
    expect(lines[5]).toBe('');
    expect(lines).toContain('knowledge: 2000 train, 150 held-out eval; base eval loss 3.210, exact 6.3%');
    const header = lines.find((l) => l.startsWith('arm'))!;
    const rows = lines.slice(lines.indexOf(header), lines.indexOf(header) + 3);
    expect(rows.map((r) => r.split(/ {2,}/))).toEqual([
      ['arm', 'params', 'eval loss', 'exact %', 'forgetting', 'intruders', 'merge err (rel)', 'train s', 'peak MB'],
      ['r8', '125,952', '1.235 ± 0.046', '43.8 ± 12.5', '+0.012 ± 0.002', '2.5 ± 1.3', '3.2e-7', '12.3 ± 0.6', '3 ± 1'],
      ['full', '125,952', '1.235 ± 0.046', '43.8 ± 12.5', '-0.500', '2.5 ± 1.3', '-', '12.3 ± 0.6', '3 ± 1'],
    ]);
    // Columns after the first are right-aligned to the widest cell, the first left-aligned.
    expect(rows[1]!.indexOf('125,952')).toBe(rows[0]!.indexOf('params') + 'params'.length - '125,952'.length);
    expect(rows[2]!.startsWith('full  ')).toBe(true);
    expect(lines).toContain('quantization tax (NF4 base vs float32 base on the eval data): loss +0.0900, exact -6.3 points');
    expect(lines[lines.length - 1]).toBe('5 runs trained, 1 resumed from earlier results; 100 s');
    expect(lines[lines.length - 2]).toBe('');
    // Right-aligned columns end together on every row.
    const end = (row: string, cell: string) => row.indexOf(cell) + cell.length;
    expect([end(rows[1]!, '1.235 ± 0.046'), end(rows[2]!, '1.235 ± 0.046')]).toEqual([end(rows[0]!, 'eval loss'), end(rows[0]!, 'eval loss')]);
    expect([end(rows[1]!, '3 ± 1'), end(rows[2]!, '3 ± 1')]).toEqual([end(rows[0]!, 'peak MB'), end(rows[0]!, 'peak MB')]);
    expect(lines.filter((l) => l.startsWith('behaviour'))).toEqual([]);
  });

  test('a full lab has no --quick, and a falling loss under quantization gets no plus sign', () => {
    const t = report.tasks.knowledge!;
    const lines = formatLab({ ...report, quick: false, tasks: { knowledge: { ...t, quantizationTax: { lossRise: -0.01, exactMatchChange: 0.125 } } } });
    expect(lines[0]!.startsWith('lorakit lab: 3 seeds')).toBe(true);
    expect(lines).toContain('quantization tax (NF4 base vs float32 base on the eval data): loss -0.0100, exact +12.5 points');
 
    // Zero is signed as a rise: no change is not a fall.
    const zero = formatLab({ ...report, tasks: { knowledge: { ...t, quantizationTax: { lossRise: 0, exactMatchChange: 0 }, arms: [{ ...t.arms[0]!, forgetting: { n: 3, mean: 0, sd: 0, ci95: 0.001 } }] } } });
    expect(zero).toContain('quantization tax (NF4 base vs float32 base on the eval data): loss +0.0000, exact +0.0 points');
    expect(zero.find((l) => l.startsWith('r8'))!.split(/ {2,}/)[4]).toBe('+0.000 ± 0.001');
  });
});
