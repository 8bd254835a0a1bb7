/**
 * The real install path: npm 11 skips a dependency's install scripts unless the user approves them, so
 * the packed tarball must work installed with --ignore-scripts, on the prebuilt addon alone.
 */
import { execFileSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';

const root = path.resolve(__dirname, '..');
const npm = process.platform === 'win32' ? 'npm.cmd' : 'npm';
let work: string;
let installed: string;

beforeAll(() => {
  const prebuilds = path.join(root, 'prebuilds', `${process.platform}-${process.arch}`);
  if (!fs.existsSync(prebuilds) || !fs.existsSync(path.join(root, 'dist', 'index.js')))
    throw new Error('no prebuild or dist/: run `npm run build` (npm test does) before this test');
  work = fs.mkdtempSync(path.join(os.tmpdir(), 'lorakit-pack-'));
  const out = execFileSync(npm, ['pack', '--ignore-scripts', '--json', '--pack-destination', work], { cwd: root }).toString();
  const tarball = path.join(work, (JSON.parse(out) as { filename: string }[])[0]!.filename);
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

test('the tarball ships the prebuild, the typings and the sources for a rebuild, and no build folder', () => {
  expect(fs.existsSync(path.join(installed, 'build'))).toBe(false);
  expect(fs.readdirSync(path.join(installed, 'prebuilds', `${process.platform}-${process.arch}`)).some((f) => f.endsWith('.node'))).toBe(true);
  for (const f of ['dist/index.js', 'dist/index.d.ts', 'binding.gyp', 'CMakeLists.txt', 'csrc/ops.h']) expect(fs.existsSync(path.join(installed, f))).toBe(true);
});

test('installed with --ignore-scripts, it loads and runs a kernel', () => {
  const app = path.dirname(path.dirname(installed));
  const code = `const L=require('lorakit');const {ops,tensor,nf4,backend}=L;` +
    `const c=ops.matmul(tensor([[1,2,3],[4,5,6]]),tensor([[1,0],[0,1],[1,1]]));` +
    `const q=nf4.dequantize(nf4.quantize(tensor([0.5,-1,0,1],[4]),{blockSize:32}));` +
    `console.log(JSON.stringify({c:c.toArray(),q:Array.from(q.toFloat32Array()),b:backend().active}))`;
  expect(JSON.parse(runIn(app, code))).toEqual({ c: [[4, 5], [10, 11]], q: [0.44070982933044434, -1, 0, 1], b: 'cpu' });
  // ESM import of the CommonJS build works too.
  const esm = execFileSync(process.execPath, ['--input-type=module', '-e', "import { tensor } from 'lorakit'; console.log(tensor([1, 2]).toArray().join(','))"], { cwd: app }).toString().trim();
  expect(esm).toBe('1,2');
});

test('without any binary the error says which command builds one', () => {
  fs.rmSync(path.join(installed, 'prebuilds'), { recursive: true });
  const app = path.dirname(path.dirname(installed));
  const out = runIn(app, "try{require('lorakit').zeros([1])}catch(e){console.log(e.code+'|'+e.message)}");
  expect(out).toMatch(/^ERR_NO_BINARY\|/);
  expect(out).toMatch(/npm run build:gyp/);
});
