/**
 * Runs one sweep run in a child process: `node child.js <options.json>` prints the run's outcome as
 * one JSON line. Parallel CPU sweeps use it so that each run has its own process, thread pool and
 * memory figures (runs sharing one process would share all three).
 */
import { spawn } from 'node:child_process';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { LorakitError } from '../errors';
import { PACKAGE_ROOT } from '../native/binding';
import { type TrainOptions } from '../train/trainer';
import { trainOne, type RunOne, type RunOutcome } from './run-one';

// The compiled file: under a TypeScript test runner this module is the .ts source, which node cannot run.
function script(): string {
  return __filename.endsWith('.ts') ? path.join(PACKAGE_ROOT, 'dist', 'sweep', 'child.js') : __filename;
}

/** A RunOne that trains in a child process with `threads` kernel threads. */
export function childRunner(threads: number): RunOne {
  return (options: TrainOptions) =>
    new Promise<RunOutcome>((resolve, reject) => {
      const file = path.join(fs.mkdtempSync(path.join(os.tmpdir(), 'lorakit-sweep-')), 'options.json');
      fs.writeFileSync(file, JSON.stringify(options));
      const child = spawn(process.execPath, [script(), file], {
        env: { ...process.env, LORAKIT_NUM_THREADS: String(threads) },
        stdio: ['ignore', 'pipe', 'pipe'],
      });
      let out = '', err = '';
      child.stdout.on('data', (d: Buffer) => (out += d.toString()));
      child.stderr.on('data', (d: Buffer) => (err += d.toString()));
      child.on('error', reject);
      child.on('exit', (code) => {
        fs.rmSync(path.dirname(file), { recursive: true, force: true });
        if (code === 0) {
          try {
            resolve(JSON.parse(out.trim().split('\n').pop() ?? '') as RunOutcome);
            return;
          } catch {
            // fall through to the error below, with the child's output
          }
        }
        const why = err.trim().split('\n').find((l) => /error/i.test(l)) ?? err.trim().split('\n')[0] ?? '';
        reject(new LorakitError('ERR_NATIVE', `sweep: the run in ${options.out} failed (exit ${code}): ${why}`));
      });
    });
}

if (require.main === module) {
  const options = JSON.parse(fs.readFileSync(process.argv[2]!, 'utf8')) as TrainOptions;
  trainOne(options).then(
    (outcome) => process.stdout.write(`${JSON.stringify(outcome)}\n`),
    (e: unknown) => {
      process.stderr.write(`${e instanceof Error ? e.message : String(e)}\n`);
      process.exitCode = 1;
    },
  );
}
