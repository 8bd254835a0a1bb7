import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { ARMS, LAB_BASE, behaviourTask, formatLab, knowledgeTask, makePeople, runLab, trainableParameters, type LabReport } from '../lib/lab';

const readPairs = (file: string) => fs.readFileSync(file, 'utf8').trim().split('\n').map((l) => JSON.parse(l) as { prompt: string; completion: string });

describe('lab tasks', () => {
  test('the knowledge task is the shipped split, generated again', () => {
    const t = knowledgeTask();
    expect(t.train).toEqual(readPairs(path.join(LAB_BASE, 'train.jsonl')));
    expect(t.eval).toEqual(readPairs(path.join(LAB_BASE, 'eval.jsonl')));
  });

  test.each([
    ['knowledge', knowledgeTask],
    ['behaviour', behaviourTask],
  ])('%s: deterministic, and no held-out prompt is in training', (_, make) => {
    const a = make(), b = make();
    expect(a).toEqual(b);
    const train = new Set(a.train.map((p) => p.prompt));
    expect(a.eval.length).toBeGreaterThan(0);
    expect(a.eval.filter((p) => train.has(p.prompt))).toEqual([]);
    expect(new Set(a.eval.map((p) => p.prompt)).size).toBe(a.eval.length);
  });

  test('the behaviour task asks facts the pre-training corpus states, in a format it never uses', () => {
    const corpus = fs.readFileSync(path.join(LAB_BASE, 'corpus.txt'), 'utf8');
    for (const p of makePeople()) {
      expect(corpus).toContain(`Q: Where does ${p.name} live?\nA: In ${p.village.name}.`);
      expect(corpus).toContain(`Q: How old is ${p.name}?\nA: ${p.age} years old.`);
    }
    const { train, eval: held } = behaviourTask();
    expect(train.length + held.length).toBe(24 * 5 + 8);
    expect(corpus).not.toContain('{"');
    for (const p of [...train, ...held]) expect(() => JSON.parse(p.completion)).not.toThrow();
  });

  test('attention and all-linear arms train about the same number of parameters', () => {
    const count = (id: string) => trainableParameters(LAB_BASE, ARMS.find((a) => a.id === id)!);
    const attn = count('attn-r32'), all = count('all-r11');
    expect(attn).toBe(4 * 32 * (2 * (192 + 192) + 2 * (192 + 96)));
    expect(Math.abs(all - attn) / attn).toBeLessThan(0.01);
  });
});

describe('a miniature lab', () => {
  const out = fs.mkdtempSync(path.join(os.tmpdir(), 'lorakit-lab-'));
  const options = {
    out, tasks: ['knowledge'] as const, arms: ['r8', 'full'], seeds: [1, 2],
    settings: { steps: 3, batchSize: 4, seqLen: 64, evalExamples: 6, retainDocs: 6 },
  };
  let first: LabReport;

  beforeAll(async () => {
    first = await runLab(options);
  }, 60_000);
  afterAll(() => fs.rmSync(out, { recursive: true, force: true }));

  test('writes lab.json with every field, finite numbers and intervals', () => {
    const report = JSON.parse(fs.readFileSync(path.join(out, 'lab.json'), 'utf8')) as LabReport;
    expect(report).toEqual(JSON.parse(JSON.stringify(first)));
    expect(report.ran).toBe(4);
    expect(report.runs).toHaveLength(4);
    const task = report.tasks.knowledge!;
    expect(task.eval).toBe(6);
    expect(Number.isFinite(task.quantizationTax.lossRise)).toBe(true);
    expect(task.arms.map((a) => a.arm)).toEqual(['r8', 'full']);
    for (const a of task.arms) {
      expect(a.seeds).toEqual([1, 2]);
      for (const s of [a.evalLoss, a.exactMatch, a.forgetting, a.intruders, a.trainSeconds, a.peakHostBytes]) {
        expect(s.n).toBe(2);
        expect(Number.isFinite(s.mean)).toBe(true);
        expect(Number.isFinite(s.ci95)).toBe(true);
      }
      expect(a.trainableParameters).toBeGreaterThan(0);
    }
    expect(task.arms[0]!.mergeErrorRelative!.mean).toBeLessThan(1e-3);
    expect(task.arms[1]!.mergeErrorRelative).toBeNull();
    expect(task.arms[1]!.trainableParameters).toBe(2_188_992);
    for (const r of report.runs) {
      expect(fs.existsSync(path.join(out, 'runs', r.task, r.arm, `seed-${r.seed}`, 'result.json'))).toBe(true);
      expect(r.eval.exactMatch).toBeGreaterThanOrEqual(0);
      expect(r.eval.exactMatch).toBeLessThanOrEqual(1);
    }
    const text = formatLab(report).join('\n');
    expect(text).toMatch(/knowledge: .* 6 held-out eval/);
    expect(text).toMatch(/quantization tax/);
  });

  test('resuming skips finished runs and reruns a missing one', async () => {
    fs.rmSync(path.join(out, 'runs', 'knowledge', 'full', 'seed-2', 'result.json'));
    const again = await runLab(options);
    expect(again.skipped).toBe(3);
    expect(again.ran).toBe(1);
    const key = (r: LabReport) => r.runs.filter((x) => x.arm === 'r8').map((x) => x.eval.loss);
    expect(key(again)).toEqual(key(first));
  }, 60_000);
});
