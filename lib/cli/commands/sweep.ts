import type { Argv } from 'yargs';
import * as path from 'node:path';
import { assertOutputApart } from '../../io/fs';
import { readSpec } from '../../sweep/spec';
import { runSweep, type SweepReport } from '../../sweep/runner';
import { type Summary } from '../../sweep/stats';
import { sweepRuns, writeReport } from '../../report';
import { print, runCommandAsync } from '../run';

function pm(s: Summary, digits: number, signed = false): string {
  const f = (x: number) => `${signed && x >= 0 ? '+' : ''}${x.toFixed(digits)}`;
  return Number.isNaN(s.ci95) ? `${f(s.mean)} (no CI)` : `${f(s.mean)} ± ${s.ci95.toFixed(digits)}`;
}

function table(rows: string[][]): string[] {
  const widths = rows[0]!.map((_, i) => Math.max(...rows.map((r) => r[i]!.length)));
  return rows.map((r) => r.map((c, i) => c.padEnd(widths[i]!)).join('  ').trimEnd());
}

/** The report as people read it: one row per configuration, then every comparison with its verdict. */
export function formatReport(r: SweepReport): string[] {
  const label = new Map(r.configs.map((c) => [c.id, c.label || c.id]));
  const lines = table([
    ['config', 'values', 'seeds', `${r.metric} loss (95% CI)`, 'retain rise', 'intruders', 'wall s', 'tokens/s', 'peak MB'],
    ...r.configs.map((c) => [
      c.id, c.label || '(base)', String(c.seeds.length), pm(c.loss, 4), c.forgetting ? pm(c.forgetting, 4, true) : '-', pm(c.intruders, 1),
      pm(c.wallSec, 1), pm(c.tokensPerSec, 0), (c.peakRssBytes / 2 ** 20).toFixed(0),
    ]),
  ]);
  if (r.configs[0]?.seeds.length === 1) lines.push('', 'one seed per configuration: noise cannot be told from effect; give more seeds to compare.');
  if (r.comparisons.length) {
    lines.push('', `comparisons of the final ${r.metric} loss (Welch's t-test, Holm-corrected over ${r.comparisons.length} pair${r.comparisons.length > 1 ? 's' : ''}, 5% level):`);
    for (const c of r.comparisons) {
      const p = c.p === null ? '' : ` (p ${c.p.toPrecision(2)}, adjusted ${c.pAdjusted!.toPrecision(2)})`;
      lines.push(`  ${label.get(c.a)} vs ${label.get(c.b)}: ${c.diff >= 0 ? '+' : ''}${c.diff.toFixed(4)}${p}: ${c.note}`);
    }
  }
  if (r.caveat) lines.push('', `note: ${r.caveat}`);
  lines.push('', `${r.ran} runs trained, ${r.skipped} already done; report in ${r.out}/sweep.json`);
  return lines;
}

/** The spec format, with an example, for `lorakit sweep --help` (the README shows the same example). */
export const SPEC_EXAMPLE = `{
  "base": { "model": "./SmolLM-135M", "data": "train.jsonl", "evalData": "val.jsonl",
            "retainData": "web.txt", "method": "lora", "steps": 300, "batchSize": 8 },
  "axes": { "r": [8, 32], "lr": [0.0001, 0.0003] },
  "seeds": [1, 2, 3],
  "out": "sweep-out"
}`;

const SPEC_HELP = [
  'The spec is a JSON file:',
  SPEC_EXAMPLE,
  'base: the training job every run shares: any `lorakit train` option in camelCase (model and data required; out, seed and resume belong to the sweep). Paths are relative to the spec\'s folder.',
  'axes: lists of values to vary: r, lr, method, rslora, target, alpha, dropout, init, and dataSize (train on the first N examples). mode "grid" (the default) runs every combination; mode "random" with "samples": N runs a fixed random N of them.',
  'seeds: every configuration runs once per seed (three or more to compare configurations). out: the runs go to out/runs/<config>/seed-<s>/ and the report to out/sweep.json; a sweep run again skips finished runs. parallel: runs at a time, each in its own process (default 1).',
  'The report compares every pair of configurations on the final eval (else held-out) loss with Welch\'s t-test, Holm-corrected, and for a pair inside the noise estimates the seeds each that would separate it (a power analysis of the observed difference and spread).',
].join('\n\n');

export function sweepCommand(y: Argv): Argv {
  return y.command(
    'sweep <spec>',
    'Train every configuration of a sweep spec over several seeds, resuming where a previous invocation stopped, and say which differences are real',
    (a) =>
      a
        .positional('spec', { type: 'string', demandOption: true, describe: 'a JSON sweep spec (paths in it are relative to its folder)' })
        .option('json', { type: 'boolean', default: false, describe: 'print the report as one JSON object' })
        .option('report', { type: 'string', describe: 'also write a self-contained HTML report to this file' })
        .epilogue(SPEC_HELP),
    async (argv) => {
      await runCommandAsync('lorakit sweep: ', async () => {
        const spec = readSpec(argv.spec as string);
        // Checked before hours of training: the report must not land on anything the sweep reads or writes.
        if (argv.report !== undefined)
          assertOutputApart('sweep', argv.report, {
            'the spec': argv.spec as string, 'base.model': spec.base.model, 'base.data': spec.base.data, 'base.evalData': spec.base.evalData,
            'base.retainData': spec.base.retainData, "the sweep's sweep.json": path.join(spec.out, 'sweep.json'), "the sweep's runs": path.join(spec.out, 'runs'),
            "the sweep's data copies": path.join(spec.out, 'data'),
          }, '--report');
        const report = await runSweep(spec, { log: (line) => process.stderr.write(`${line}\n`) });
        if (argv.json) print(JSON.stringify(report, null, 2));
        else for (const line of formatReport(report)) print(line);
        if (argv.report !== undefined) {
          const where = `report written to ${writeReport(argv.report, { title: `lorakit sweep: ${report.out}`, sweep: report, runs: sweepRuns(report) })}`;
          // With --json, stdout stays one JSON object: where the report went is said on stderr.
          if (argv.json) process.stderr.write(`${where}\n`);
          else print(where);
        }
      });
    },
  );
}
