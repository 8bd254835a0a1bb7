/**
 * The output folder of a run: what a run leaves in it, refusing to mix two runs in one folder, removing
 * a replaced run's files (and only those), and the temporary folders a killed run left behind.
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import { LorakitError } from '../errors';
import { ioError } from '../io/config';
import { isObject } from '../check';
import { isSameOrInside, makeDir } from '../io/fs';
import { STATE_FILE } from './checkpoint';

const CHECKPOINT = /^checkpoint-(\d+)$/;
/** Everything a run writes at the top of its folder; other files there are the user's and stay. */
const RUN_FILES = ['last', 'best', 'metrics.jsonl', 'run.json'];
// What a writer killed mid-write leaves: `.checkpoint-N.tmp-PID`, `.last.tmp-PID`, `.best.tmp-PID`
// folders (checkpoint.ts) and `run.json.tmp-PID` (writeJsonFile).
const TEMPORARY = /^(?:\.(?:checkpoint-\d+|last|best)|run\.json)\.tmp-(\d+)$/;

function list(op: string, dir: string): string[] {
  try {
    return fs.readdirSync(dir);
  } catch (e) {
    throw ioError(op, 'list', dir, e);
  }
}

function remove(op: string, p: string): void {
  try {
    fs.rmSync(p, { recursive: true, force: true });
  } catch (e) {
    throw ioError(op, 'remove', p, e);
  }
}

/** The run id in a checkpoint's trainer state, or null when it has none or cannot be read. */
export function checkpointRunId(dir: string): string | null {
  try {
    const s: unknown = JSON.parse(fs.readFileSync(path.join(dir, STATE_FILE), 'utf8'));
    return isObject(s) && typeof s.runId === 'string' ? s.runId : null;
  } catch {
    return null;
  }
}

/** The steps of the `checkpoint-N` folders in `dir` that belong to run `runId`, oldest first. */
export function runCheckpoints(op: string, dir: string, runId: string): number[] {
  return list(op, dir)
    .map((f) => CHECKPOINT.exec(f))
    .filter((m): m is RegExpExecArray => m !== null && checkpointRunId(path.join(dir, m[0])) === runId)
    .map((m) => Number(m[1]))
    .sort((a, b) => a - b);
}

function alive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch (e) {
    // EPERM: the process exists but belongs to someone else.
    return (e as NodeJS.ErrnoException).code === 'EPERM';
  }
}

/** Removes the temporary folders and files of writers that are no longer running; returns lines for the log. */
export function removeStaleTemporaries(op: string, dir: string): string[] {
  const gone: string[] = [];
  for (const f of list(op, dir).sort()) {
    const m = TEMPORARY.exec(f);
    if (!m || Number(m[1]) === process.pid || alive(Number(m[1]))) continue;
    remove(op, path.join(dir, f));
    gone.push(f);
  }
  return gone.length ? [`removed ${gone.length} temporary file(s) left by an interrupted run in ${dir}: ${gone.join(', ')}`] : [];
}

/**
 * Makes the output folder of a new run. A folder that already holds a run (checkpoints, last/, best/,
 * metrics.jsonl, run.json) is refused unless `overwrite`, which removes those and nothing else.
 * `inputs` are the paths the run reads: neither the folder nor anything removed may hold them.
 * Returns lines for the log.
 */
export function prepareOut(op: string, out: string, overwrite: boolean, inputs: Record<string, string | null>): string[] {
  for (const [name, input] of Object.entries(inputs))
    if (input !== null && name === 'model' && isSameOrInside(out, input))
      throw new LorakitError('ERR_IO', `${op}: --out '${out}' is inside the model folder '${input}'; choose an output folder apart from the model`);
  makeDir(op, out);
  const notes = removeStaleTemporaries(op, out);
  const checkpoints = list(op, out).filter((f) => CHECKPOINT.test(f) && fs.existsSync(path.join(out, f, STATE_FILE)));
  const runFiles = RUN_FILES.filter((f) => fs.existsSync(path.join(out, f)));
  const found = [...checkpoints.sort((a, b) => Number(a.slice(11)) - Number(b.slice(11))), ...runFiles];
  if (found.length === 0) return notes;
  if (!overwrite) {
    const newest = checkpoints.at(-1);
    throw new LorakitError(
      'ERR_IO',
      `${op}: --out '${out}' already holds a run (${found.join(', ')}); give --overwrite to replace it ` +
        `(its checkpoints, last/, best/, metrics.jsonl and run.json are removed; other files are kept)` +
        `${newest ? `, --resume ${path.join(out, newest)} to continue it` : ''}, or another --out`,
    );
  }
  for (const f of found) {
    const p = path.join(out, f);
    for (const [name, input] of Object.entries(inputs))
      if (input !== null && isSameOrInside(input, p))
        throw new LorakitError('ERR_IO', `${op}: --overwrite would remove '${p}', which holds the ${name} '${input}' this run reads; choose another --out`);
  }
  for (const f of found) remove(op, path.join(out, f));
  notes.push(`--overwrite: removed the earlier run in ${out} (${found.join(', ')}); other files there are kept`);
  return notes;
}
