// The GPU kernels (csrc/gpu, the same sources nvcc and hipcc compile) run on the host emulator of
// test/emu against the CPU backend: every op of ops.h on odd shapes and every flag combination, at 32-lane
// warps (NVIDIA) and 64-lane warps (CDNA), each under two thread schedules (threads interleaved at random,
// and one warp at a time as far as the barriers let it run ahead), so that missing barriers, warp-width
// assumptions, unwritten or overrun outputs and unsynchronised stream work show up without a GPU; the
// vendor-library GEMM paths run against fake cuBLASLt and rocBLAS libraries. test/emu/build.mjs builds the
// binaries (incrementally); each prints one JSON line per case.
import { spawn } from 'node:child_process';
import { readFileSync } from 'node:fs';
import * as path from 'node:path';
import { buildEmulator, emulatorUnavailable } from './helpers/emulator';

const root = path.resolve(__dirname, '..');

// The emulator needs a C++20 compiler and POSIX (fibers, mmap, signals).
const missing = emulatorUnavailable();
if (missing)
  console.warn(`\n*** GPU emulator parity suite SKIPPED: ${missing}; the GPU kernels are NOT being tested ***\n`);
const suite = missing ? describe.skip : describe;

jest.setTimeout(15 * 60_000);

interface Case {
  op: string;
  case: string;
  maxAbsErr: number;
  maxRelErr: number;
  ok: boolean;
  detail?: string;
}

interface Run {
  label: string;
  cases: Case[];
  kernels: Record<string, number> | undefined;
  summary: { cases: number; failed: number } | undefined;
  exit: string;
  stderr: string;
}

// [binary, schedule, ops]: every op at both warp widths under both schedules, the GEMM cases once more
// with gemm.cu's cuBLASLt branch (the others take its rocBLAS branch), each against a fake library, and
// the attention cases with the tile sizes of AMD builds.
const configs: [string, string, string[]][] = [
  ['parity-w32', 'shuffle', []],
  ['parity-w64', 'shuffle', []],
  ['parity-w32', 'warps', []],
  ['parity-w64', 'warps', []],
  ['parity-cublaslt', 'shuffle', ['gemm']],
  ['parity-w64-lds', 'shuffle', ['attention_forward', 'attention_backward']],
];
const fullRuns = configs.filter(([, , ops]) => ops.length === 0).length;

function runBinary(binary: string, schedule: string, ops: string[]): Promise<Run> {
  const label = `${binary}, ${schedule} schedule${ops.length ? ` (${ops.join(', ')})` : ''}`;
  return new Promise((resolve) => {
    const child = spawn(path.join(root, 'build-emu', binary), ops, {
      cwd: root,
      env: { ...process.env, LORAKIT_EMU_SCHEDULE: schedule },
    });
    let stdout = '', stderr = '';
    child.stdout.on('data', (d: Buffer) => (stdout += d));
    child.stderr.on('data', (d: Buffer) => (stderr += d));
    child.on('error', (e) => resolve({ label, cases: [], kernels: undefined, summary: undefined, exit: String(e), stderr }));
    child.on('close', (code, signal) => {
      const run: Run = { label, cases: [], kernels: undefined, summary: undefined, exit: signal ? `signal ${signal}` : `code ${code}`, stderr };
      for (const line of stdout.split('\n')) {
        if (!line.startsWith('{')) continue;
        const v = JSON.parse(line) as Record<string, unknown>;
        if ('op' in v) run.cases.push(v as unknown as Case);
        else if ('kernels' in v) run.kernels = v.kernels as Record<string, number>;
        else if ('summary' in v) run.summary = v.summary as Run['summary'];
      }
      resolve(run);
    });
  });
}

// The op names of LORAKIT_DECLARE_OPS in csrc/ops.h.
function declaredOps(): string[] {
  const src = readFileSync(path.join(root, 'csrc/ops.h'), 'utf8');
  const body = /#define LORAKIT_DECLARE_OPS\(NS\)([\s\S]*?)\n\s*\}\s*\n/.exec(src);
  if (!body) throw new Error('LORAKIT_DECLARE_OPS not found in csrc/ops.h');
  const ops = [...body[1]!.matchAll(/\b([a-z_0-9]+)\s*\(/g)].map((m) => m[1]!).filter((n) => n !== 'namespace');
  if (ops.length < 30) throw new Error(`only ${ops.length} ops read from LORAKIT_DECLARE_OPS`);
  return ops;
}

suite('GPU kernels on the host emulator against the CPU backend', () => {
  let runs: Run[] = [];
  let kernels: Record<string, string[]> = {};

  beforeAll(async () => {
    buildEmulator(root);
    kernels = JSON.parse(readFileSync(path.join(root, 'build-emu/kernels.json'), 'utf8')) as Record<string, string[]>;
    // Two at a time: the runs are single-threaded but for the CPU reference.
    for (let i = 0; i < configs.length; i += 2)
      runs.push(...(await Promise.all(configs.slice(i, i + 2).map(([b, s, ops]) => runBinary(b, s, ops)))));
  });

  test.each(configs.map((c, i) => [i, c[0], c[1]] as const))('run %i, %s, %s schedule: every case agrees with the CPU', (i) => {
    const run = runs[i]!;
    // A crash (fault, UBSan report, deadlock guard) ends the run early; its report is on stderr.
    if (!run.summary)
      throw new Error(`${run.label}: the emulator stopped (${run.exit}) after ${run.cases.length} cases` +
        (run.cases.length ? `, the last "${run.cases.at(-1)!.op} [${run.cases.at(-1)!.case}]"` : '') +
        `:\n${run.stderr.slice(-3000)}`);
    const failed = run.cases.filter((c) => !c.ok);
    if (failed.length)
      throw new Error(`${run.label}: ${failed.length} of ${run.cases.length} cases differ from the CPU:\n` +
        failed.slice(0, 40).map((c) => `  ${c.op} [${c.case}] maxAbsErr ${c.maxAbsErr} maxRelErr ${c.maxRelErr}: ${c.detail}`).join('\n') +
        (failed.length > 40 ? `\n  ... and ${failed.length - 40} more` : ''));
    expect(run.summary.failed).toBe(0);
    expect(run.summary.cases).toBe(run.cases.length);
  });

  test('every op of LORAKIT_DECLARE_OPS has cases in every full run', () => {
    const ops = declaredOps();
    for (const run of runs.slice(0, fullRuns)) {
      const seen = new Set(run.cases.map((c) => c.op));
      const untested = ops.filter((op) => !seen.has(op));
      if (untested.length) throw new Error(`${run.label}: no case for ${untested.join(', ')} (add them to test/emu/parity.cc)`);
    }
  });

  test('every __global__ kernel of csrc/gpu was launched in every full run', () => {
    expect(Object.values(kernels).flat().length).toBeGreaterThan(20);
    for (const run of runs.slice(0, fullRuns)) {
      if (!run.kernels) continue;  // reported by the per-run test
      const idle = Object.entries(kernels).flatMap(([file, names]) =>
        names.filter((k) => !run.kernels![k]).map((k) => `${k} (csrc/gpu/${file})`));
      if (idle.length) throw new Error(`${run.label}: never launched: ${idle.join(', ')} (test/emu/parity.cc needs a case that reaches them)`);
    }
  });
});
