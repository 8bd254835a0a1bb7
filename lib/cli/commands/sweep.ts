import * as path from 'node:path';
import { assertOutputApart } from '../../io/fs';
import { LorakitTypeError } from '../../errors';
import { readSpec, type SweepSpec } from '../../sweep/spec';
import { gatherReport, listRuns, readResults, runIndex, runSweep, type SweepReport } from '../../sweep/runner';
import { indexRanges, submitSlurm, sweepStatus } from '../../sweep/slurm';
import { applyJob, indexedJob, kubeconfigFound, writeManifest } from '../../sweep/k8s';
import { type Summary } from '../../sweep/stats';
import { sweepRuns, writeReport } from '../../report';
import { command, print, printReportWritten } from '../run';
import { kebab } from '../../suggest';

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
  'Run it here with `lorakit sweep spec.json`, or hand its runs to a scheduler: `sweep list` prints the runs with their indices, `sweep run spec.json --index N` trains exactly one (a no-op when its result exists), `sweep submit spec.json --slurm` writes and sbatch-submits a job array of the runs without a result (--dry-run only writes it), `sweep submit spec.json --k8s --image I --pvc CLAIM` writes an Indexed Job manifest and creates it when a kubeconfig is found, `sweep status` reads squeue, sacct and the results folder, and `sweep report` reports the results gathered from anywhere.',
  'The report compares every pair of configurations on the final eval (else held-out) loss with Welch\'s t-test, Holm-corrected, and for a pair inside the noise estimates the seeds each that would separate it (a power analysis of the observed difference and spread).',
].join('\n\n');

const ACTIONS = ['list', 'run', 'submit', 'status', 'report'] as const;
type Action = (typeof ACTIONS)[number] | 'sweep';

/** Which action each option belongs to: one given to another action is refused, not silently ignored. */
const OPTION_ACTIONS: Record<string, readonly Action[]> = {
  json: ['sweep', 'list', 'status', 'report'], report: ['sweep', 'report'], index: ['run'],
  slurm: ['submit'], k8s: ['submit'], dryRun: ['submit'], gpusPerTask: ['submit'], cpusPerTask: ['submit'],
  partition: ['submit'], time: ['submit'], maxParallel: ['submit'], sbatchArg: ['submit'],
  image: ['submit'], namespace: ['submit'], parallelism: ['submit'], pvc: ['submit'], mount: ['submit'], gpuResource: ['submit'], backoffLimitPerIndex: ['submit'],
};
const SLURM_ONLY = ['partition', 'time', 'maxParallel', 'sbatchArg'];
const K8S_ONLY = ['image', 'namespace', 'parallelism', 'pvc', 'mount', 'gpuResource', 'backoffLimitPerIndex'];

function usage(msg: string): LorakitTypeError {
  return new LorakitTypeError('ERR_INVALID_ARG', `sweep: ${msg}`);
}

/** The report and every run behind it, as `sweep report --json` prints it. */
export function reportJson(spec: SweepSpec, report: SweepReport): unknown {
  const records = readResults(spec);
  return {
    runs: listRuns(spec).map((r) => ({ index: r.index, configId: r.config.id, label: r.config.label, values: r.config.values, seed: r.seed, result: records.get(r.index) ?? null })),
    summary: report,
  };
}

async function submit(spec: SweepSpec, specFile: string, argv: Record<string, unknown>): Promise<void> {
  const slurm = argv.slurm === true, k8s = argv.k8s === true;
  if (slurm === k8s) throw usage('submit needs one of --slurm or --k8s');
  for (const k of slurm ? K8S_ONLY : SLURM_ONLY) if (argv[k] !== undefined) throw usage(`--${kebab(k)} applies to ${slurm ? '--k8s' : '--slurm'}, not ${slurm ? '--slurm' : '--k8s'}`);
  const num = (k: string) => (argv[k] === undefined ? undefined : (argv[k] as number));
  if (slurm) {
    const s = submitSlurm(spec, specFile, {
      partition: argv.partition as string | undefined, gpusPerTask: num('gpusPerTask'), cpusPerTask: num('cpusPerTask'), time: argv.time as string | undefined,
      maxParallel: num('maxParallel'), sbatchArgs: argv.sbatchArg as string[] | undefined, dryRun: argv.dryRun === true,
    });
    const left = `${s.finished} finished, ${s.queued} still queued or running`;
    if (!s.indices.length) print(`nothing to submit: ${left}`);
    else if (s.jobId === null) print(`wrote ${s.script} for runs ${indexRanges(s.indices)} (${left}); submit it with: sbatch ${s.script}`);
    else print(`submitted job ${s.jobId}: runs ${indexRanges(s.indices)} (${left}); script ${s.script}, logs in ${path.join(spec.out, 'slurm', 'logs')}`);
    return;
  }
  if (argv.image === undefined) throw usage('submit --k8s needs --image, a container image with lorakit on its PATH');
  if (argv.pvc === undefined) throw usage('submit --k8s needs --pvc, the PersistentVolumeClaim (ReadWriteMany) that holds the spec, its inputs and its out');
  const manifest = indexedJob(spec, specFile, {
    image: argv.image as string, namespace: argv.namespace as string | undefined, parallelism: num('parallelism'), gpusPerTask: num('gpusPerTask'),
    gpuResource: argv.gpuResource as string | undefined, cpusPerTask: num('cpusPerTask'), pvc: argv.pvc as string, mount: argv.mount as string | undefined,
    backoffLimitPerIndex: num('backoffLimitPerIndex'),
  });
  const file = writeManifest(spec, manifest);
  const kubeconfig = kubeconfigFound();
  if (argv.dryRun === true || kubeconfig === null) {
    print(`wrote ${file}${kubeconfig === null ? ' (no kubeconfig found)' : ''}; apply it with: kubectl apply -f ${file}`);
    return;
  }
  const uid = await applyJob(manifest);
  const name = (manifest.metadata as { name: string }).name;
  print(`created Job ${name} (uid ${uid}) with ${listRuns(spec).length} indices from ${kubeconfig}; manifest in ${file}; follow it with: kubectl get job ${name} -n ${(manifest.metadata as { namespace: string }).namespace}`);
}

export const sweepCommand = command({
  usage: 'sweep <what> [spec]',
  describe: 'Train every configuration of a sweep spec over several seeds here, or hand its runs to SLURM or Kubernetes, and say which differences are real',
  options: (a) =>
    a
      .positional('what', { type: 'string', demandOption: true, describe: `a sweep spec to run here, or one of ${ACTIONS.join(', ')} followed by the spec` })
      .positional('spec', { type: 'string', describe: 'the JSON sweep spec, after an action (paths in it are relative to its folder)' })
      .option('json', { type: 'boolean', describe: 'print the report (or the list, or the status) as one JSON object' })
      .option('report', { type: 'string', describe: 'also write a self-contained HTML report to this file' })
      .option('index', { type: 'number', describe: 'run: the index of the one run to train (from `sweep list`)' })
      .option('slurm', { type: 'boolean', describe: 'submit: as a SLURM job array through sbatch' })
      .option('k8s', { type: 'boolean', describe: 'submit: as a Kubernetes Indexed Job' })
      .option('dry-run', { type: 'boolean', describe: 'submit: write the job script or manifest, do not submit it' })
      .option('gpus-per-task', { type: 'number', describe: 'submit: GPUs for each run' })
      .option('cpus-per-task', { type: 'number', describe: 'submit: CPUs for each run (its kernel threads; SLURM default 1)' })
      .option('partition', { type: 'string', describe: 'submit --slurm: the partition' })
      .option('time', { type: 'string', describe: 'submit --slurm: time limit of each run, as SLURM writes it (01:00:00)' })
      .option('max-parallel', { type: 'number', describe: 'submit --slurm: runs at once (the array\'s %K)' })
      .option('sbatch-arg', { type: 'string', array: true, describe: 'submit --slurm: another sbatch option for the script (repeatable, written with =: --sbatch-arg=--account=proj)' })
      .option('image', { type: 'string', describe: 'submit --k8s: a container image with lorakit on its PATH' })
      .option('namespace', { type: 'string', describe: 'submit --k8s: the namespace (default "default")' })
      .option('parallelism', { type: 'number', describe: 'submit --k8s: pods at once (default every run)' })
      .option('pvc', { type: 'string', describe: 'submit --k8s: the PersistentVolumeClaim (ReadWriteMany) holding the spec, its inputs and its out' })
      .option('mount', { type: 'string', describe: "submit --k8s: where the claim is mounted in each pod (default the spec's folder: the spec's paths must mean the same there)" })
      .option('gpu-resource', { type: 'string', describe: 'submit --k8s: the resource a GPU is requested as (default nvidia.com/gpu)' })
      .option('backoff-limit-per-index', { type: 'number', describe: 'submit --k8s: retries of one run before it counts as failed; the others go on (default 1)' })
      .epilogue(SPEC_HELP),
  run: async (argv) => {
    const named = ACTIONS.find((x) => x === argv.what);
    const action: Action = named ?? 'sweep';
    if (named === undefined && argv.spec !== undefined) throw usage(`'${argv.what}' is not an action (${ACTIONS.join(', ')}); to run a spec here, name only the spec`);
    if (named !== undefined && argv.spec === undefined) throw usage(`${named} needs the spec: lorakit sweep ${named} spec.json`);
    for (const [k, actions] of Object.entries(OPTION_ACTIONS))
      if (argv[k] !== undefined && !actions.includes(action)) throw usage(`--${kebab(k)} does not apply to ${named ? `sweep ${named}` : 'a local sweep'} (it belongs to sweep ${actions.map((x) => (x === 'sweep' ? '<spec>' : x)).join(', ')})`);
    const specFile = (named ? argv.spec : argv.what) as string;
    const spec = readSpec(specFile);
    const json = argv.json === true;
    // Checked before hours of training: the report must not land on anything the sweep reads or writes.
    if (argv.report !== undefined)
      assertOutputApart('sweep', argv.report, {
        'the spec': specFile, 'base.model': spec.base.model, 'base.data': spec.base.data, 'base.evalData': spec.base.evalData,
        'base.retainData': spec.base.retainData, "the sweep's sweep.json": path.join(spec.out, 'sweep.json'), "the sweep's runs": path.join(spec.out, 'runs'),
        "the sweep's data copies": path.join(spec.out, 'data'),
      }, '--report');
    if (action === 'list') {
      const runs = listRuns(spec);
      if (json) print(JSON.stringify(runs.map((r) => ({ index: r.index, configId: r.config.id, label: r.config.label, values: r.config.values, seed: r.seed, dir: r.dir })), null, 2));
      else for (const line of table([['index', 'config', 'values', 'seed', 'folder'], ...runs.map((r) => [String(r.index), r.config.id, r.config.label || '(base)', String(r.seed), r.dir])])) print(line);
    } else if (action === 'run') {
      if (argv.index === undefined) throw usage('run needs --index N, the run to train (0 to one less than `sweep list` counts)');
      const { run, record, ran } = await runIndex(spec, argv.index as number);
      print(`${ran ? 'trained' : 'already finished:'} run ${run.index} (${run.config.label || 'base'} seed ${run.seed}): final ${JSON.stringify(record.final)}; result in ${path.join(run.dir, 'result.json')}`);
    } else if (action === 'submit') await submit(spec, specFile, argv);
    else if (action === 'status') {
      const st = sweepStatus(spec);
      if (json) print(JSON.stringify(st, null, 2));
      else {
        const counts = new Map<string, number>();
        for (const r of st.runs) counts.set(r.state, (counts.get(r.state) ?? 0) + 1);
        for (const line of table([['index', 'values', 'seed', 'state', 'job'], ...st.runs.map((r) => [String(r.index), r.label, String(r.seed), r.state, r.jobId ?? '-'])])) print(line);
        print('');
        print(`${st.runs.length} runs: ${[...counts].map(([k, v]) => `${v} ${k}`).join(', ')}`);
        for (const n of st.notes) print(`note: ${n}`);
      }
    } else {
      const report = action === 'report' ? gatherReport(spec) : await runSweep(spec, { log: (line) => process.stderr.write(`${line}\n`) });
      if (json) print(JSON.stringify(action === 'report' ? reportJson(spec, report) : report, null, 2));
      else for (const line of formatReport(report)) print(line);
      if (argv.report !== undefined) printReportWritten(writeReport(argv.report, { title: `lorakit sweep: ${report.out}`, sweep: report, runs: sweepRuns(report) }), json);
    }
  },
});
