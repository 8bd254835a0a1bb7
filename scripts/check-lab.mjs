#!/usr/bin/env node
// Checks a finished `lorakit lab` folder the way CI needs it: lab.json holds both tasks and every arm with
// finite means and intervals, and the HTML report, opened in headless Chromium, drew every lab plot with a
// mark per arm. The report is its report.html when there is one, else rendered from lab.json here.
// Usage: node scripts/check-lab.mjs LAB_DIR   (needs `npm run build:ts` and /usr/bin/chromium)
import { spawnSync } from 'node:child_process';
import * as fs from 'node:fs';
import { createRequire } from 'node:module';
import * as os from 'node:os';
import * as path from 'node:path';

const require = createRequire(import.meta.url);
const dist = path.join(path.dirname(new URL(import.meta.url).pathname), '..', 'dist');

function fail(message) {
  process.stderr.write(`check-lab: ${message}\n`);
  process.exit(1);
}

const dir = process.argv[2];
if (!dir) fail('usage: node scripts/check-lab.mjs LAB_DIR');
if (!fs.existsSync(path.join(dist, 'lab', 'index.js'))) fail(`${dist} is not built: run \`npm run build:ts\` first`);
const { ARMS, TASKS } = require(path.join(dist, 'lab', 'index.js'));
const { renderReport } = require(path.join(dist, 'report', 'index.js'));

const labFile = path.join(dir, 'lab.json');
if (!fs.existsSync(labFile)) fail(`${labFile} does not exist: did the lab finish?`);
const lab = JSON.parse(fs.readFileSync(labFile, 'utf8'));

const problems = [];
const armIds = ARMS.map((a) => a.id);
// Every summary the lab reports; merge error is null by design where nothing is merged (full fine-tuning).
const SUMMARIES = ['evalLoss', 'exactMatch', 'forgetting', 'intruders', 'mergeErrorRelative', 'trainSeconds', 'peakHostBytes'];
for (const task of TASKS) {
  const t = lab.tasks?.[task];
  if (!t) {
    problems.push(`lab.json has no ${task} task`);
    continue;
  }
  const got = (t.arms ?? []).map((a) => a.arm);
  const missing = armIds.filter((id) => !got.includes(id));
  if (missing.length) problems.push(`${task}: arms missing: ${missing.join(', ')}`);
  for (const a of t.arms ?? []) {
    for (const key of SUMMARIES) {
      const s = a[key];
      if (s === null && key === 'mergeErrorRelative' && a.method === 'full') continue;
      if (!s || !Number.isFinite(s.mean) || !Number.isFinite(s.ci95)) problems.push(`${task}/${a.arm}: ${key} has no finite mean and interval (${JSON.stringify(s)})`);
    }
  }
  if (!Number.isFinite(t.quantizationTax?.lossRise)) problems.push(`${task}: quantization tax is not finite`);
}
if (problems.length) fail(`${labFile}:\n  ${problems.join('\n  ')}`);

const reportFile = path.join(dir, 'report.html');
const chromium = ['/usr/bin/chromium', '/usr/bin/chromium-browser'].find((f) => fs.existsSync(f));
if (!chromium) fail('chromium is not installed (apt-get install chromium)');
const tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'check-lab-'));
const rendered = !fs.existsSync(reportFile);
const page = rendered ? path.join(tmp, 'report.html') : reportFile;
if (rendered) fs.writeFileSync(page, renderReport({ title: 'lorakit lab', lab }));
const r = spawnSync(chromium, ['--headless', '--no-sandbox', '--disable-gpu', '--disable-background-networking', '--disable-component-update', '--disable-sync', '--no-first-run', `--user-data-dir=${path.join(tmp, 'profile')}`, '--dump-dom', `file://${path.resolve(page)}`], { encoding: 'utf8', timeout: 90000, maxBuffer: 64 * 2 ** 20 });
fs.rmSync(tmp, { recursive: true, force: true });
if (r.status !== 0) fail(`chromium failed (${r.status ?? r.signal}): ${r.stderr}`);

const drawn = new Map([...r.stdout.matchAll(/<svg\b[^>]*data-plot="([^"]+)"[^>]*>([\s\S]*?)<\/svg>/g)].map((m) => [m[1], [...m[2].matchAll(/<(?:circle|rect)\b[^>]*class="mark\b/g)].length]));
const expected = [
  ...TASKS.flatMap((task) => ['eval', 'exact', 'forgetting', 'tradeoff', 'intruders'].map((kind) => [`lab-${kind}-${task}`, armIds.length])),
  ['lab-quantization', TASKS.length],
];
for (const [name, marks] of expected) {
  if (!drawn.has(name)) problems.push(`plot ${name} is not in the rendered page`);
  else if (drawn.get(name) !== marks) problems.push(`plot ${name} drew ${drawn.get(name)} marks, expected ${marks}`);
}
const shown = rendered ? `the report rendered from ${labFile}` : reportFile;
if (problems.length) fail(`${shown} as Chromium rendered it:\n  ${problems.join('\n  ')}`);

process.stdout.write(`check-lab: ${TASKS.length} tasks × ${armIds.length} arms, finite means and 95% CIs; ${expected.length} lab plots drawn in Chromium with ${expected.reduce((s, [, m]) => s + m, 0)} marks (${shown})\n`);
