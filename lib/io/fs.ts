/**
 * File-system steps every writer shares: making an output folder, and telling whether two paths are
 * the same thing on disk. Each failure is a LorakitError('ERR_IO') naming the operation and the path.
 */
import * as fs from 'fs';
import * as path from 'path';
import { LorakitError } from '../errors';
import { ioError } from './config';

/**
 * Makes `dir` and any missing parents, one level at a time. Node's `mkdirSync(..., { recursive: true })`
 * loops forever on some pseudo file systems (`/proc/x`: mkdir says ENOENT for a parent that exists), so
 * the walk here is bounded by the path's depth and every error is final.
 */
export function makeDir(op: string, dir: string): void {
  const abs = path.resolve(dir);
  const missing: string[] = [];
  let cur = abs;
  for (;;) {
    let st: fs.Stats | undefined;
    try {
      st = fs.statSync(cur);
    } catch (e) {
      const code = (e as NodeJS.ErrnoException).code;
      if (code !== 'ENOENT') throw ioError(op, 'create folder', dir, e);
    }
    if (st) {
      if (!st.isDirectory())
        throw new LorakitError('ERR_IO', `${op}: cannot create folder '${dir}': '${cur}' exists and is not a folder`);
      break;
    }
    missing.push(cur);
    const parent = path.dirname(cur);
    if (parent === cur) break;
    cur = parent;
  }
  for (const d of missing.reverse()) {
    try {
      fs.mkdirSync(d);
    } catch (e) {
      if ((e as NodeJS.ErrnoException).code === 'EEXIST' && fs.statSync(d).isDirectory()) continue;
      throw ioError(op, 'create folder', dir, e);
    }
  }
}

/**
 * The real path of `p`, following symlinks, also when `p` (or its last parts) does not exist yet: the
 * nearest existing ancestor is resolved and the rest appended.
 */
export function realPath(p: string): string {
  const abs = path.resolve(p);
  const rest: string[] = [];
  let cur = abs;
  for (;;) {
    try {
      return path.join(fs.realpathSync(cur), ...rest.reverse());
    } catch {
      const parent = path.dirname(cur);
      if (parent === cur) return abs;
      rest.push(path.basename(cur));
      cur = parent;
    }
  }
}

/** True when `inner` is `outer` or lies inside it, after following symlinks on both. */
export function isSameOrInside(inner: string, outer: string): boolean {
  const a = realPath(inner), b = realPath(outer);
  if (a === b) return true;
  const rel = path.relative(b, a);
  return rel !== '' && !rel.startsWith('..') && !path.isAbsolute(rel);
}

/**
 * Refuses an output path that is, contains, or lies inside any input the command reads (compared by
 * real path, so a symlink to the model is caught): writing there would overwrite what the user did not
 * ask to change. `outName` names the output in the message (a flag such as --report, or a spec field).
 */
export function assertOutputApart(op: string, out: string, inputs: Record<string, string | undefined>, outName = '--out'): void {
  for (const [name, input] of Object.entries(inputs)) {
    if (input === undefined) continue;
    if (isSameOrInside(out, input) || isSameOrInside(input, out))
      throw new LorakitError(
        'ERR_IO',
        `${op}: ${outName} '${out}' resolves to '${realPath(out)}', which overlaps ${name} '${input}' ('${realPath(input)}'); ` +
          'choose an output folder apart from the inputs',
      );
  }
}

/**
 * Writes `text` to a temporary name beside `file` and renames it over `file`: a reader never sees half a
 * file, and a symlink at `file` is replaced rather than written through. Failures are ERR_IO naming `file`.
 */
export function writeTextFile(op: string, file: string, text: string): void {
  const tmp = `${file}.tmp-${process.pid}`;
  try {
    fs.writeFileSync(tmp, text);
    fs.renameSync(tmp, file);
  } catch (e) {
    fs.rmSync(tmp, { force: true });
    throw ioError(op, 'write', file, e);
  }
}
