// Jest's global setup: the suite runs the code in this checkout, and leaves no temporary files behind.
// - dist/ (which the CLI tests spawn) is rebuilt when any lib/ source is newer than it, so `npx jest`
//   after an edit never tests yesterday's JavaScript; `npm test` has just built it.
// - The native addon the tests load must be newer than every C++ source compiled into it; if not, the
//   run stops, naming the file, rather than pass or fail on old native code.
// - TMPDIR points into one folder per run (children inherit it); the teardown removes it.
'use strict';
const fs = require('node:fs');
const os = require('node:os');
const path = require('node:path');
const { execFileSync } = require('node:child_process');

const root = path.resolve(__dirname, '../..');

function newest(dir, keep) {
  let best = { file: '', mtimeMs: 0 };
  for (const e of fs.readdirSync(dir, { withFileTypes: true })) {
    const f = path.join(dir, e.name);
    const r = e.isDirectory() ? newest(f, keep) : keep(f) ? { file: f, mtimeMs: fs.statSync(f).mtimeMs } : best;
    if (r.mtimeMs > best.mtimeMs) best = r;
  }
  return best;
}

function freshDist() {
  const src = newest(path.join(root, 'lib'), (f) => f.endsWith('.ts'));
  const out = path.join(root, 'dist', 'cli', 'index.js');
  const built = fs.existsSync(out) ? newest(path.join(root, 'dist'), (f) => f.endsWith('.js')).mtimeMs : 0;
  if (src.mtimeMs <= built) return;
  console.log(`\njest global setup: ${path.relative(root, src.file)} is newer than dist/: rebuilding it (tsc)`);
  execFileSync(process.execPath, [require.resolve('typescript/bin/tsc'), '-p', 'tsconfig.json'], { cwd: root, stdio: 'inherit' });
}

function freshAddon() {
  if (process.env.LORAKIT_ADDON) return; // named explicitly: the caller knows which build they test
  let addon;
  try {
    addon = require('node-gyp-build').path(root);
  } catch (e) {
    throw new Error(`jest global setup: no native addon is built (${e.message.split('\n')[0]}); run \`npm run build\``);
  }
  // The CPU addon's sources: everything in csrc/ but the GPU kernels and the GPU binding.
  const src = newest(path.join(root, 'csrc'), (f) => /\.(cc|h|hpp)$/.test(f) && !f.includes(`${path.sep}gpu${path.sep}`) && !f.endsWith('gpu.cc'));
  const built = fs.statSync(addon).mtimeMs;
  if (src.mtimeMs > built)
    throw new Error(
      `jest global setup: ${path.relative(root, src.file)} is newer than the native addon the tests would load ` +
        `(${path.relative(root, addon)}); run \`npm run build\` (or \`npm test\`, which builds first)`,
    );
}

module.exports = async function globalSetup() {
  freshDist();
  freshAddon();
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'lorakit-jest-'));
  process.env.LORAKIT_JEST_TMP = dir;
  process.env.TMPDIR = dir;
};
