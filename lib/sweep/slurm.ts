/**
 * Sweeps on SLURM: one job-array task per run, `lorakit sweep run --index $SLURM_ARRAY_TASK_ID` in each.
 * The results folder is the only coordination: a task whose result exists does nothing, and a rerun
 * submits only the runs with no result that are not already queued.
 */
import { createHash } from 'node:crypto';
import { spawnSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { LorakitError, LorakitTypeError } from '../errors';
import { readJsonFile, writeJsonFile } from '../io/config';
import { makeDir, writeTextFile } from '../io/fs';
import { PACKAGE_ROOT } from '../native/binding';
import { listRuns, resultFile } from './runner';
import { type SweepSpec } from './spec';

/** A sweep's scheduler job name, the same for every submission of it: squeue finds its tasks by it. */
export function jobName(spec: SweepSpec): string {
  return `lorakit-sweep-${createHash('sha256').update(spec.out).digest('hex').slice(0, 10)}`;
}

/** The command-line entry point a task runs: this node and this lorakit, by absolute path. */
export function lorakitCommand(): string[] {
  return [process.execPath, path.join(PACKAGE_ROOT, 'dist', 'cli', 'index.js')];
}

/** Indices as SLURM's --array takes them: [0, 1, 2, 5, 7, 8] is "0-2,5,7-8". */
export function indexRanges(indices: readonly number[]): string {
  const sorted = [...new Set(indices)].sort((a, b) => a - b);
  const parts: string[] = [];
  for (let i = 0; i < sorted.length; ) {
    let j = i;
    while (j + 1 < sorted.length && sorted[j + 1] === sorted[j]! + 1) j++;
    parts.push(i === j ? `${sorted[i]}` : `${sorted[i]}-${sorted[j]}`);
    i = j + 1;
  }
  return parts.join(',');
}

const quote = (s: string) => `'${s.replace(/'/g, `'\\''`)}'`;

export interface SlurmOptions {
  partition?: string;
  gpusPerTask?: number;
  cpusPerTask?: number;
  /** SLURM's time format: minutes, MM:SS, HH:MM:SS, D-HH, D-HH:MM or D-HH:MM:SS. */
  time?: string;
  /** Tasks running at once (the array's %K). */
  maxParallel?: number;
  /** More #SBATCH lines, each an sbatch option as written on its command line. */
  sbatchArgs?: string[];
}

function checkOptions(o: SlurmOptions): void {
  const bad = (what: string, expected: string, got: unknown) => new LorakitTypeError('ERR_INVALID_ARG', `sweep: submit --slurm: ${what} must be ${expected}, got ${JSON.stringify(got)}`);
  if (o.partition !== undefined && !/^[\w.,-]+$/.test(o.partition)) throw bad('--partition', 'a partition name (or a comma-separated list)', o.partition);
  for (const [k, v, min] of [['--gpus-per-task', o.gpusPerTask, 0], ['--cpus-per-task', o.cpusPerTask, 1], ['--max-parallel', o.maxParallel, 1]] as const)
    if (v !== undefined && !(Number.isInteger(v) && v >= min)) throw bad(k, `an integer >= ${min}`, v);
  if (o.time !== undefined && !/^(\d+|\d+:\d\d|\d+:\d\d:\d\d|\d+-\d+|\d+-\d+:\d\d|\d+-\d+:\d\d:\d\d)$/.test(o.time))
    throw bad('--time', 'minutes, MM:SS, HH:MM:SS, D-HH, D-HH:MM or D-HH:MM:SS', o.time);
  for (const a of o.sbatchArgs ?? []) if (!/^--?\w/.test(a) || /[\n\r]/.test(a)) throw bad('--sbatch-arg', 'one sbatch option such as --account=proj or --qos=high', a);
}

/** The job-array script that runs `indices` of the sweep in `specFile`, one run per task, a log per task. */
export function slurmScript(spec: SweepSpec, specFile: string, indices: readonly number[], o: SlurmOptions = {}): string {
  checkOptions(o);
  if (indices.length === 0) throw new LorakitError('ERR_INVALID_ARG', 'sweep: submit --slurm: no runs to submit');
  const logs = path.join(spec.out, 'slurm', 'logs');
  const lines = [
    '#!/bin/bash',
    `#SBATCH --job-name=${jobName(spec)}`,
    `#SBATCH --array=${indexRanges(indices)}${o.maxParallel ? `%${o.maxParallel}` : ''}`,
    // %A is the array's job id, %a the task's index: one log per task, kept across resubmissions.
    `#SBATCH --output="${logs}/%A_%a.log"`,
    '#SBATCH --ntasks=1',
    `#SBATCH --cpus-per-task=${o.cpusPerTask ?? 1}`,
    ...(o.partition ? [`#SBATCH --partition=${o.partition}`] : []),
    ...(o.gpusPerTask ? [`#SBATCH --gpus-per-task=${o.gpusPerTask}`] : []),
    ...(o.time ? [`#SBATCH --time=${o.time}`] : []),
    ...(o.sbatchArgs ?? []).map((a) => `#SBATCH ${a}`),
    '',
    `# ${spec.seeds.length} seed(s) x ${listRuns(spec).length / spec.seeds.length} configuration(s); each task trains the run at its index,`,
    '# and does nothing when that run already has a result, so requeued and resubmitted tasks are safe.',
    'export LORAKIT_NUM_THREADS="${SLURM_CPUS_PER_TASK:-1}"',
    `exec ${lorakitCommand().map(quote).join(' ')} sweep run ${quote(path.resolve(specFile))} --index "$SLURM_ARRAY_TASK_ID"`,
    '',
  ];
  return lines.join('\n');
}

function slurmTool(tool: string, args: string[]): { ok: boolean; out: string; err: string } {
  const r = spawnSync(tool, args, { encoding: 'utf8', timeout: 60_000 });
  if (r.error) return { ok: false, out: '', err: (r.error as NodeJS.ErrnoException).code === 'ENOENT' ? `${tool} is not installed or not on PATH` : r.error.message };
  return { ok: r.status === 0, out: r.stdout, err: r.stderr.trim() || `${tool} exited with code ${r.status}` };
}

/** The sweep's tasks SLURM still holds, index to state (PENDING, RUNNING, ...); null when squeue fails. */
export function queuedTasks(spec: SweepSpec): { tasks: Map<number, { jobId: string; state: string }> | null; error: string | null } {
  const r = slurmTool('squeue', ['--noheader', '--array', `--name=${jobName(spec)}`, '--format=%i|%T']);
  if (!r.ok) return { tasks: null, error: r.err };
  const tasks = new Map<number, { jobId: string; state: string }>();
  for (const line of r.out.split('\n')) {
    const m = /^(\d+)_(\d+)\|(\S+)$/.exec(line.trim());
    if (m) tasks.set(Number(m[2]), { jobId: m[1]!, state: m[3]! });
  }
  return { tasks, error: null };
}

export interface Submission {
  /** The runs submitted now. */
  indices: number[];
  script: string | null;
  jobId: string | null;
  /** Runs left out: finished, or still queued or running. */
  finished: number;
  queued: number;
}

const jobsFile = (spec: SweepSpec) => path.join(spec.out, 'slurm', 'jobs.json');

/**
 * Writes the job-array script for the runs that have no result and are not queued, and submits it with
 * sbatch unless `dryRun`. Each submission's job id is kept in out/slurm/jobs.json for `sweep status`.
 */
export function submitSlurm(spec: SweepSpec, specFile: string, o: SlurmOptions & { dryRun?: boolean } = {}): Submission {
  checkOptions(o);
  const runs = listRuns(spec);
  const unfinished = runs.filter((r) => !fs.existsSync(resultFile(r))).map((r) => r.index);
  let queued = new Map<number, unknown>();
  if (!o.dryRun) {
    const q = queuedTasks(spec);
    if (q.tasks === null) throw new LorakitError('ERR_IO', `sweep: submit --slurm: cannot ask squeue what is queued: ${q.error}`);
    queued = q.tasks;
  }
  const indices = unfinished.filter((i) => !queued.has(i));
  const counts = { finished: runs.length - unfinished.length, queued: unfinished.length - indices.length };
  if (indices.length === 0) return { indices, script: null, jobId: null, ...counts };
  const dir = path.join(spec.out, 'slurm');
  makeDir('sweep', path.join(dir, 'logs'));
  const script = path.join(dir, 'array.sbatch');
  writeTextFile('sweep', script, slurmScript(spec, specFile, indices, o));
  if (o.dryRun) return { indices, script, jobId: null, ...counts };
  const r = slurmTool('sbatch', ['--parsable', script]);
  if (!r.ok) throw new LorakitError('ERR_IO', `sweep: submit --slurm: sbatch refused ${script}: ${r.err}`);
  // --parsable prints "jobid" or "jobid;cluster".
  const jobId = r.out.trim().split(';')[0]!;
  const jobs = fs.existsSync(jobsFile(spec)) ? (readJsonFile('sweep', jobsFile(spec), 'ERR_IO') as { jobId: string; indices: number[] }[]) : [];
  writeJsonFile('sweep', jobsFile(spec), [...jobs, { jobId, indices, submitted: new Date().toISOString() }]);
  return { indices, script, jobId, ...counts };
}

export interface RunStatus {
  index: number;
  label: string;
  seed: number;
  /** done (its result exists), a SLURM state from squeue, sacct or scontrol (PENDING, RUNNING, FAILED, CANCELLED, ...), or unknown. */
  state: string;
  /** Where the state came from. */
  source: 'result' | 'squeue' | 'sacct' | 'scontrol' | 'none';
  jobId: string | null;
}

/**
 * Every run's state: its result first (the truth), then squeue for tasks still held, then sacct for how
 * the last task of a run without result ended (sacct needs SLURM accounting; without it scontrol, which
 * remembers ended jobs for a few minutes, and `notes` says so; older ones read unknown).
 */
export function sweepStatus(spec: SweepSpec): { runs: RunStatus[]; notes: string[] } {
  const notes: string[] = [];
  const runs = listRuns(spec);
  const q = queuedTasks(spec);
  if (q.error) notes.push(`squeue: ${q.error}`);
  const jobs = fs.existsSync(jobsFile(spec)) ? (readJsonFile('sweep', jobsFile(spec), 'ERR_IO') as { jobId: string; indices: number[] }[]) : [];
  const ended = new Map<number, { jobId: string; state: string; source: 'sacct' | 'scontrol' }>();
  const missing = runs.filter((r) => !fs.existsSync(resultFile(r)) && !q.tasks?.has(r.index));
  if (jobs.length && missing.length) {
    const ids = jobs.map((j) => j.jobId);
    // Later submissions override earlier ones: jobs.json is in submission order.
    const order = new Map(ids.map((id, i) => [id, i]));
    const seen = new Map<number, number>();
    const record = (jobId: string, index: number, state: string) => {
      const at = order.get(jobId) ?? -1;
      if (at < (seen.get(index) ?? -1)) return;
      seen.set(index, at);
      ended.set(index, { jobId, state, source: how });
    };
    let how: 'sacct' | 'scontrol' = 'sacct';
    const r = slurmTool('sacct', ['--noheader', '--parsable2', '--allocations', `--jobs=${ids.join(',')}`, '--format=JobID,State']);
    if (r.ok) {
      for (const line of r.out.split('\n')) {
        const m = /^(\d+)_(\d+)\|(\S+)/.exec(line.trim());
        if (m) record(m[1]!, Number(m[2]), m[3]!);
      }
    } else {
      // Without accounting, the controller still remembers jobs that ended in the last MinJobAge
      // (300 s by default): enough to tell a task just cancelled or failed from one never started.
      how = 'scontrol';
      const missed: string[] = [];
      for (const id of ids) {
        const c = slurmTool('scontrol', ['--oneliner', 'show', 'job', id]);
        if (!c.ok) {
          missed.push(id);
          continue;
        }
        for (const line of c.out.split('\n')) {
          const task = /\bArrayJobId=(\d+) ArrayTaskId=(\d+)\b/.exec(line), state = /\bJobState=(\S+)/.exec(line);
          if (task && state && task[1] === id) record(id, Number(task[2]), state[1]!);
        }
      }
      notes.push(`sacct: ${r.err}; states of ended tasks come from scontrol, which keeps a job only minutes after it ends` +
        (missed.length ? ` (jobs ${missed.join(', ')} are no longer known)` : ''));
    }
  }
  const lastJob = new Map<number, string>();
  for (const j of jobs) for (const i of j.indices) lastJob.set(i, j.jobId);
  return {
    notes,
    runs: runs.map((r): RunStatus => {
      const base = { index: r.index, label: r.config.label || 'base', seed: r.seed };
      if (fs.existsSync(resultFile(r))) return { ...base, state: 'done', source: 'result', jobId: lastJob.get(r.index) ?? null };
      const queued = q.tasks?.get(r.index);
      if (queued) return { ...base, state: queued.state, source: 'squeue', jobId: queued.jobId };
      const e = ended.get(r.index);
      if (e) return { ...base, state: e.state, source: e.source, jobId: e.jobId };
      return { ...base, state: lastJob.has(r.index) ? 'unknown' : 'not submitted', source: 'none', jobId: lastJob.get(r.index) ?? null };
    }),
  };
}
