/**
 * The real install path: npm 11 skips a dependency's install scripts unless the user approves them, so
 * the packed tarball must work installed with --ignore-scripts, on the prebuilt addon alone.
 *
 * The package is packed as `npm pack` and `npm publish` pack it, lifecycle scripts included, from a copy
 * of the source tree in the state of a fresh clone (no dist/, no build folders, no prebuilds/): the
 * tarball must then hold what its own prepack and prepare steps make, not whatever a developer's earlier
 * builds left in the working tree.
 */
import { execFileSync, spawnSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { parse as parseYaml } from 'yaml';

const root = path.resolve(__dirname, '..');
const npm = process.platform === 'win32' ? 'npm.cmd' : 'npm';
const platform = `${process.platform}-${process.arch}`;
let work: string;
let listing: string[];
let installed: string;

/** A fresh clone of the working tree: every file git tracks or would track, and no build output. */
function copySourceTree(dst: string): void {
  const files = execFileSync('git', ['ls-files', '-z', '--cached', '--others', '--exclude-standard'], { cwd: root }).toString().split('\0');
  for (const f of files) {
    const from = path.join(root, f);
    // Deleted but not yet committed, or a submodule: not part of a clone's files.
    if (!f || !fs.existsSync(from) || !fs.lstatSync(from).isFile()) continue;
    fs.mkdirSync(path.dirname(path.join(dst, f)), { recursive: true });
    fs.copyFileSync(from, path.join(dst, f));
  }
  // The dependencies as `npm install` left them (the build tools among them), shared rather than copied.
  fs.symlinkSync(path.join(root, 'node_modules'), path.join(dst, 'node_modules'), 'junction');
}

describe('the tarball `npm pack` makes from a fresh clone', () => {
  beforeAll(() => {
    work = fs.mkdtempSync(path.join(os.tmpdir(), 'lorakit-pack-'));
    const src = path.join(work, 'src');
    copySourceTree(src);
    for (const built of ['dist', 'build', 'build-cmake', 'prebuilds']) expect(fs.existsSync(path.join(src, built))).toBe(false);
    execFileSync(npm, ['pack', '--pack-destination', work], { cwd: src, stdio: 'pipe' });
    const tarball = path.join(work, fs.readdirSync(work).find((f) => f.endsWith('.tgz'))!);
    listing = execFileSync('tar', ['-tzf', tarball]).toString().split('\n').filter(Boolean).map((f) => f.replace(/^package\//, ''));
    const app = path.join(work, 'app');
    fs.mkdirSync(app);
    fs.writeFileSync(path.join(app, 'package.json'), JSON.stringify({ name: 'app', version: '1.0.0', private: true }));
    execFileSync(npm, ['install', '--ignore-scripts', '--no-audit', '--no-fund', '--prefer-offline', tarball], { cwd: app, stdio: 'pipe' });
    installed = path.join(app, 'node_modules', 'lorakit');
  }, 300000);

  afterAll(() => {
    if (work) fs.rmSync(work, { recursive: true, force: true });
  });

  const runIn = (dir: string, code: string): string => execFileSync(process.execPath, ['-e', code], { cwd: dir }).toString().trim();

  test('packed from a fresh clone, the tarball carries the prebuild its prepack step made, the typings and the sources for a rebuild, and no build folder', () => {
    const libc = process.platform !== 'linux' ? '' : fs.existsSync('/etc/alpine-release') ? '.musl' : '.glibc';
    expect(listing).toContain(`prebuilds/${platform}/lorakit.napi${libc}.node`);
    expect(listing.some((f) => f.startsWith('build/') || f.startsWith('build-cmake/'))).toBe(false);
    for (const f of ['dist/index.js', 'dist/index.d.ts', 'dist/cli/index.js', 'binding.gyp', 'CMakeLists.txt', 'csrc/ops.h']) expect(listing).toContain(f);
  });

  test('the tarball carries the MIT licence that package.json declares', () => {
    expect(listing).toContain('LICENSE');
    const text = fs.readFileSync(path.join(installed, 'LICENSE'), 'utf8');
    expect(JSON.parse(fs.readFileSync(path.join(installed, 'package.json'), 'utf8')).license).toBe('MIT');
    expect(text).toMatch(/^MIT License\n\nCopyright \(c\) 2026 the lorakit authors\n/);
    expect(text).toMatch(/THE SOFTWARE IS PROVIDED "AS IS", WITHOUT WARRANTY OF ANY KIND/);
  });

  test('every source map in the tarball points at sources the tarball also ships', () => {
    const missing: string[] = [];
    for (const map of listing.filter((f) => f.endsWith('.map'))) {
      const { sources } = JSON.parse(fs.readFileSync(path.join(installed, map), 'utf8')) as { sources: string[] };
      for (const s of sources) {
        const shipped = path.posix.normalize(path.posix.join(path.posix.dirname(map), s));
        if (!listing.includes(shipped)) missing.push(`${map} -> ${shipped}`);
      }
    }
    expect(missing).toEqual([]);
  });

  test('installed with --ignore-scripts, it loads the prebuild and runs a kernel', () => {
    const app = path.dirname(path.dirname(installed));
    expect(fs.existsSync(path.join(installed, 'build'))).toBe(false);
    const code = `const L=require('lorakit');const {ops,tensor,nf4,backend}=L;` +
      `const c=ops.matmul(tensor([[1,2,3],[4,5,6]]),tensor([[1,0],[0,1],[1,1]]));` +
      `const q=nf4.dequantize(nf4.quantize(tensor([0.5,-1,0,1],[4]),{blockSize:32}));` +
      `console.log(JSON.stringify({c:c.toArray(),q:Array.from(q.toFloat32Array()),b:backend().active}))`;
    expect(JSON.parse(runIn(app, code))).toEqual({ c: [[4, 5], [10, 11]], q: [0.44070982933044434, -1, 0, 1], b: 'cpu' });
    // ESM import of the CommonJS build works too.
    const esm = execFileSync(process.execPath, ['--input-type=module', '-e', "import { tensor } from 'lorakit'; console.log(tensor([1, 2]).toArray().join(','))"], { cwd: app }).toString().trim();
    expect(esm).toBe('1,2');
  });

  test('`npm run build:gpu` runs from the installed package: its script, CMake project and GPU sources are shipped and cmake-js is installed with it', () => {
    const gpuSources = fs.readdirSync(path.join(root, 'csrc', 'gpu')).map((f) => `csrc/gpu/${f}`);
    for (const f of ['scripts/build-gpu.js', 'CMakeLists.txt', 'csrc/napi/gpu.cc', ...gpuSources]) expect(listing).toContain(f);
    // A CUDA compiler that does not exist stops CMake at its CUDA check, seconds into the real build path:
    // the script ran, cmake-js configured the installed package's CMakeLists.txt, and only the compiler
    // was missing (a full CUDA build takes minutes; CI's scripts/check-gpu-build.sh does that).
    const nvcc = path.join(work, 'no-such-nvcc');
    const r = spawnSync(npm, ['run', 'build:gpu'], {
      cwd: installed,
      encoding: 'utf8',
      env: { ...process.env, LORAKIT_GPU: 'cuda', CUDACXX: nvcc, LORAKIT_CUDA_ARCHS: '90' },
      timeout: 120000,
    });
    const out = `${r.stdout}${r.stderr}`;
    expect(out).not.toMatch(/Cannot find module/);
    expect(out).toContain(`build:gpu: cuda build into build-gpu`);
    expect(out).toContain(nvcc);
    expect(r.status).not.toBe(0);
    expect(fs.readFileSync(path.join(installed, 'build-gpu', 'CMakeCache.txt'), 'utf8')).toContain(`CMAKE_HOME_DIRECTORY:INTERNAL=${fs.realpathSync(installed)}`);
  });

  test('without any binary the error says which command builds one', () => {
    fs.rmSync(path.join(installed, 'prebuilds'), { recursive: true });
    const app = path.dirname(path.dirname(installed));
    const out = runIn(app, "try{require('lorakit').zeros([1])}catch(e){console.log(e.code+'|'+e.message)}");
    expect(out).toMatch(/^ERR_NO_BINARY\|/);
    expect(out).toMatch(/npm run build:gyp/);
  });
});

describe('the release workflow (.github/workflows/release.yml)', () => {
  interface Step { run?: string; uses?: string; with?: Record<string, unknown> }
  interface Target { platform: string; arch: string; libc?: string }
  const workflow = parseYaml(fs.readFileSync(path.join(root, '.github', 'workflows', 'release.yml'), 'utf8')) as {
    on: Record<string, unknown>;
    jobs: { prebuild: { strategy: { matrix: { include: Target[] } }; steps: Step[] }; publish: { needs: string; steps: Step[] } };
  };
  const targets = workflow.jobs.prebuild.strategy.matrix.include;
  // The file name node-gyp-build loads on each platform, as scripts/prebuild.js names it (and as the pack test above finds it here).
  const prebuildFile = (t: Target) => `${t.platform}-${t.arch}/lorakit.napi${t.libc ? `.${t.libc}` : ''}.node`;

  test('builds a prebuild on every platform the package declares: Linux x64/arm64 with glibc and musl, macOS arm64/x64, Windows x64', () => {
    expect(targets.map((t) => `${t.platform}-${t.arch}${t.libc ? `-${t.libc}` : ''}`).sort()).toEqual([
      'darwin-arm64', 'darwin-x64', 'linux-arm64-glibc', 'linux-arm64-musl', 'linux-x64-glibc', 'linux-x64-musl', 'win32-x64',
    ]);
    const pkg = JSON.parse(fs.readFileSync(path.join(root, 'package.json'), 'utf8')) as { os: string[] };
    expect([...new Set(targets.map((t) => t.platform))].sort()).toEqual([...pkg.os].sort());
    expect(Object.keys(workflow.on)).toContain('push');
  });

  test('each build runs the prepack build, loads the result and uploads prebuilds/', () => {
    const runs = workflow.jobs.prebuild.steps.filter((s) => s.run).map((s) => s.run!);
    expect(runs.length).toBeGreaterThan(0);
    // Every path (on the runner, or in an Alpine container) builds with the script npm pack runs, then runs a kernel on it.
    for (const r of runs) {
      expect(r).toContain('npm ci --ignore-scripts');
      expect(r).toContain('node scripts/prebuild.js');
      expect(r).toMatch(/ops\.matmul/);
    }
    const upload = workflow.jobs.prebuild.steps.find((s) => s.uses?.startsWith('actions/upload-artifact'));
    expect(upload?.with?.path).toBe('prebuilds/');
  });

  test('publishing waits for every build, checks that each prebuild arrived, and packs them as built', () => {
    const pub = workflow.jobs.publish;
    expect(pub.needs).toBe('prebuild');
    const download = pub.steps.findIndex((s) => s.uses?.startsWith('actions/download-artifact'));
    expect(pub.steps[download]!.with).toMatchObject({ path: 'prebuilds/', 'merge-multiple': true });
    const check = pub.steps.findIndex((s) => s.run?.includes('lorakit.napi'));
    expect(check).toBeGreaterThan(download);
    for (const t of targets) expect(pub.steps[check]!.run).toContain(prebuildFile(t));
    const publish = pub.steps.findIndex((s) => s.run?.includes('npm publish'));
    expect(publish).toBeGreaterThan(check);
    // --ignore-scripts: prepack would rebuild this runner's prebuild over the one the matrix built and checked.
    expect(pub.steps[publish]!.run).toContain('--ignore-scripts');
  });
});
