/** What the host emulator of the GPU kernels (test/emu) needs: a C++20 compiler and a POSIX system. */
import { execFileSync } from 'node:child_process';

/** Why the emulator cannot run here, or '' when it can. */
export function emulatorUnavailable(): string {
  if (process.platform === 'win32') return 'the emulator needs a POSIX system';
  const cxx = process.env.CXX || 'g++';
  try {
    execFileSync(cxx, ['--version'], { stdio: 'ignore' });
    return '';
  } catch {
    return `${cxx} is not installed`;
  }
}

/** Builds (incrementally) the emulator's parity binaries and emulated addon into build-emu/. */
export function buildEmulator(root: string): void {
  try {
    execFileSync(process.execPath, [`${root}/test/emu/build.mjs`], { cwd: root, encoding: 'utf8', stdio: 'pipe' });
  } catch (e) {
    const err = e as { stdout?: string; stderr?: string };
    throw new Error(`test/emu/build.mjs failed:\n${err.stdout ?? ''}${err.stderr ?? ''}`);
  }
}
