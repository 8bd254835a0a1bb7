#!/usr/bin/env node
// Builds the GPU emulator's parity binaries, build-emu/parity-w32 and build-emu/parity-w64: every
// csrc/gpu/*.cu compiled as host C++ against test/emu/shim (LORAKIT_EMU), the CPU backend (csrc/cpu) as
// the reference, and the driver test/emu/parity.cc. The two differ only in the emulated warp width, which
// lives in the emulator's runtime (warpSize is a run-time value, as in CUDA), so every other object is
// compiled once and linked into both. A third, build-emu/parity-cublaslt, has gemm.cu built with
// LORAKIT_CUDA, so that its cuBLASLt branch (the HIP-like emulator build takes the rocBLAS one) runs
// against the test's fake cuBLASLt; a fourth, build-emu/parity-w64-lds, has attention.cu with the AMD tile
// sizes (LORAKIT_LDS_TILES) at 64-lane warps.
//
// The .cu sources are not edited; build-emu/gen/ gets copies of them and of common.cuh with three
// mechanical rewrites that keep every line where it was (a #line directive points diagnostics at the
// original file):
//   kernel<<<grid, block, smem, stream>>>(args)
//     -> ::emu::launch(site, grid, block, smem, stream)([](auto&&... a) { kernel(a...); }, args)
//   __shared__ T name[N];            -> static T name[N]; ::emu::shared_var(&name, sizeof(name));
//   extern __shared__ T name[];      -> T* const name = static_cast<T*>(::emu::dynamic_shared());
// It also lists every __global__ kernel in build-emu/kernels.json, so that the test can check each one ran.
//
// Incremental (an object is rebuilt when its source, a header it included, or its command changed) and
// parallel: LORAKIT_EMU_JOBS jobs, 2 by default. Prints one line per compile and a summary; exits non-zero
// on the first failure.
import { execFileSync, spawn } from 'node:child_process';
import { existsSync, mkdirSync, readdirSync, readFileSync, statSync, writeFileSync } from 'node:fs';
import * as path from 'node:path';
import { fileURLToPath } from 'node:url';

const root = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../..');
const out = path.join(root, 'build-emu');
const gen = path.join(out, 'gen');
const shim = path.join(root, 'test/emu/shim');
const cxx = process.env.CXX || 'g++';
const jobs = Math.max(1, Number(process.env.LORAKIT_EMU_JOBS) || 2);
const rel = (p) => path.relative(root, p);

// ---- source rewriting ---------------------------------------------------------------------------------

// Comments and string/char literals blanked to spaces (newlines kept), so that the scanners below never
// match inside them while every offset stays valid for the original text.
function code(src) {
  let s = '';
  for (let i = 0; i < src.length; ) {
    if (src.startsWith('//', i)) {
      const e = src.indexOf('\n', i);
      const end = e < 0 ? src.length : e;
      s += ' '.repeat(end - i);
      i = end;
    } else if (src.startsWith('/*', i)) {
      const e = src.indexOf('*/', i + 2);
      const end = e < 0 ? src.length : e + 2;
      s += src.slice(i, end).replace(/[^\n]/g, ' ');
      i = end;
    } else if (src[i] === '"' || src[i] === "'") {
      const q = src[i];
      let j = i + 1;
      while (j < src.length && src[j] !== q) j += src[j] === '\\' ? 2 : 1;
      s += q + ' '.repeat(Math.max(0, j - i - 1)) + (j < src.length ? q : '');
      i = j + 1;
    } else {
      s += src[i++];
    }
  }
  return s;
}

// Index of the bracket closing the one at `open` (which is one of ( [ {), in blanked code.
function closing(c, open) {
  const pairs = { '(': ')', '[': ']', '{': '}' };
  const stack = [];
  for (let i = open; i < c.length; i++) {
    if (pairs[c[i]]) stack.push(pairs[c[i]]);
    else if (c[i] === ')' || c[i] === ']' || c[i] === '}') {
      if (stack.pop() !== c[i]) throw new Error(`unbalanced '${c[i]}' at offset ${i}`);
      if (stack.length === 0) return i;
    }
  }
  throw new Error(`no closing bracket for offset ${open}`);
}

// Splits at commas outside brackets.
function splitTop(text) {
  const parts = [];
  let depth = 0, start = 0;
  for (let i = 0; i < text.length; i++) {
    const ch = text[i];
    if ('([{'.includes(ch)) depth++;
    else if (')]}'.includes(ch)) depth--;
    else if (ch === ',' && depth === 0) {
      parts.push(text.slice(start, i));
      start = i + 1;
    }
  }
  parts.push(text.slice(start));
  return parts;
}

const lineOf = (src, at) => src.slice(0, at).split('\n').length;

// Applies [start, end, text] edits (non-overlapping) to src.
function apply(src, edits) {
  edits.sort((a, b) => a[0] - b[0]);
  let s = '', at = 0;
  for (const [start, end, text] of edits) {
    s += src.slice(at, start) + text;
    at = end;
  }
  return s + src.slice(at);
}

// Whether offset `at` of blanked code c is at namespace scope (every enclosing brace opens a namespace or
// an extern "C" block).
function atNamespaceScope(c, at) {
  const stack = [];
  for (let i = 0; i < at; i++) {
    if (c[i] === '{') stack.push(/(namespace(\s+[\w:]+)?|extern\s+")\s*$/.test(c.slice(Math.max(0, i - 200), i)));
    else if (c[i] === '}') stack.pop();
  }
  return stack.every(Boolean);
}

function rewriteShared(src, file) {
  const c = code(src);
  const edits = [];
  for (const m of c.matchAll(/\b__shared__\b/g)) {
    const at = m.index;
    if (/#\s*define[^\n]*$/.test(c.slice(c.lastIndexOf('\n', at) + 1, at))) continue;
    const end = c.indexOf(';', at);
    const before = c.slice(c.lastIndexOf('\n', at) + 1, at);
    if (/\bextern\s*$/.test(before)) {
      // extern __shared__ T name[];  ->  T* const name = static_cast<T*>(::emu::dynamic_shared());
      const start = at - before.length + before.search(/\bextern\s*$/);
      const decl = src.slice(at + '__shared__'.length, end).replace(/__align__\s*\([^)]*\)/g, ' ');
      const dm = /^([\s\S]*?)\b([A-Za-z_]\w*)\s*\[\s*\]\s*$/.exec(decl);
      if (!dm) throw new Error(`${file}:${lineOf(src, at)}: cannot read the extern __shared__ declaration`);
      const type = dm[1].trim();
      edits.push([start, end + 1, `${type}* const ${dm[2]} = static_cast<${type}*>(::emu::dynamic_shared());`]);
      continue;
    }
    const declarators = splitTop(c.slice(at + '__shared__'.length, end));
    const names = declarators.map((d) => {
      const stripped = d.replace(/__align__\s*\([^)]*\)/g, ' ').replace(/=[\s\S]*$/, '').replace(/\[[^\]]*\]/g, ' ');
      const ids = stripped.match(/[A-Za-z_]\w*/g);
      if (!ids) throw new Error(`${file}:${lineOf(src, at)}: cannot read the __shared__ declaration`);
      return ids[ids.length - 1];
    });
    const register = atNamespaceScope(c, at) ? '' : names.map((n) => ` ::emu::shared_var(&${n}, sizeof(${n}));`).join('');
    edits.push([at, at + '__shared__'.length, 'static']);
    edits.push([end + 1, end + 1, register]);
  }
  return apply(src, edits);
}

function rewriteLaunches(src, file) {
  const c = code(src);
  const edits = [];
  let from = 0;
  for (;;) {
    const open = c.indexOf('<<<', from);
    if (open < 0) break;
    // The kernel: an identifier (maybe qualified), maybe with template arguments, right before <<<.
    let k = open;
    while (k > 0 && /\s/.test(c[k - 1])) k--;
    if (c[k - 1] === '>') {
      let depth = 0;
      do {
        k--;
        if (c[k] === '>') depth++;
        else if (c[k] === '<') depth--;
      } while (depth > 0 && k > 0);
    }
    while (k > 0 && /[\w:]/.test(c[k - 1])) k--;
    const kernel = src.slice(k, open).trim();
    if (!/^[A-Za-z_:]/.test(kernel)) throw new Error(`${file}:${lineOf(src, open)}: cannot find the kernel before <<<`);
    // The configuration, up to >>> outside parentheses.
    let close = -1, depth = 0;
    for (let i = open + 3; i < c.length; i++) {
      if (c[i] === '(' || c[i] === '[' || c[i] === '{') depth++;
      else if (c[i] === ')' || c[i] === ']' || c[i] === '}') depth--;
      else if (depth === 0 && c.startsWith('>>>', i)) {
        close = i;
        break;
      }
    }
    if (close < 0) throw new Error(`${file}:${lineOf(src, open)}: no >>> after <<<`);
    let p = close + 3;
    while (/\s/.test(c[p])) p++;
    if (c[p] !== '(') throw new Error(`${file}:${lineOf(src, open)}: no argument list after >>>`);
    const argsEnd = closing(c, p);
    const config = src.slice(open + 3, close);
    const args = src.slice(p + 1, argsEnd);
    const label = kernel.replace(/\s+/g, ' ');
    edits.push([
      k,
      argsEnd + 1,
      `::emu::launch(::emu::Site{"${label}", __FILE__, __LINE__}, ${config})` +
        `([](auto&&... emu_a) { ${kernel}(emu_a...); }${args.trim() ? ', ' : ''}${args})`,
    ]);
    from = argsEnd + 1;
  }
  return apply(src, edits);
}

// __global__ functions of a source, by name.
function kernelsOf(src) {
  const c = code(src);
  const bounds = String.raw`(?:__launch_bounds__\s*\((?:[^()]|\([^()]*\))*\)\s*)?`;
  const re = new RegExp(String.raw`\b__global__\s+${bounds}void\s+${bounds}([A-Za-z_]\w*)\s*\(`, 'g');
  return [...c.matchAll(re)].map((m) => m[1]);
}

function writeIfChanged(file, text) {
  if (existsSync(file) && readFileSync(file, 'utf8') === text) return;
  writeFileSync(file, text);
}

// ---- compiling ----------------------------------------------------------------------------------------

const mtime = (f) => (existsSync(f) ? statSync(f).mtimeMs : -1);

// Whether obj is missing or older than its source, any header its .d file lists, or built by another command.
function stale(obj, src, command) {
  if (mtime(obj) < 0 || mtime(obj) < mtime(src)) return true;
  const cmdFile = `${obj}.cmd`;
  if (!existsSync(cmdFile) || readFileSync(cmdFile, 'utf8') !== command) return true;
  const dep = `${obj.replace(/\.o$/, '')}.d`;
  if (!existsSync(dep)) return true;
  const deps = readFileSync(dep, 'utf8').replace(/\\\n/g, ' ').split(':').slice(1).join(':').trim().split(/\s+/);
  return deps.some((d) => d && mtime(d) > mtime(obj));
}

function run(argv, input) {
  return new Promise((resolve) => {
    const child = spawn(argv[0], argv.slice(1), { cwd: root, stdio: [input === undefined ? 'ignore' : 'pipe', 'pipe', 'pipe'] });
    if (input !== undefined) child.stdin.end(input);
    let text = '';
    child.stdout.on('data', (d) => (text += d));
    child.stderr.on('data', (d) => (text += d));
    child.on('error', (e) => resolve({ code: 127, text: String(e) }));
    child.on('close', (code) => resolve({ code, text }));
  });
}

async function pool(tasks, n) {
  const results = [];
  let next = 0, failed = false;
  async function worker() {
    while (next < tasks.length && !failed) {
      const task = tasks[next++];
      const r = await task();
      results.push(r);
      if (!r.ok) failed = true;
    }
  }
  await Promise.all(Array.from({ length: n }, worker));
  return { results, failed };
}

async function main() {
  const started = Date.now();
  mkdirSync(gen, { recursive: true });
  mkdirSync(path.join(out, 'obj'), { recursive: true });

  const gpuDir = path.join(root, 'csrc/gpu');
  const cuFiles = readdirSync(gpuDir).filter((f) => f.endsWith('.cu')).sort();
  const kernels = {};
  for (const f of readdirSync(gpuDir).filter((f) => f.endsWith('.cu') || f.endsWith('.cuh')).sort()) {
    const src = readFileSync(path.join(gpuDir, f), 'utf8');
    const file = `csrc/gpu/${f}`;
    const text = `#line 1 "${file}"\n` + rewriteLaunches(rewriteShared(src, file), file);
    writeIfChanged(path.join(gen, f.endsWith('.cu') ? f.replace(/\.cu$/, '.cc') : f), text);
    if (f.endsWith('.cu')) kernels[f] = kernelsOf(src);
  }
  writeIfChanged(path.join(out, 'kernels.json'), JSON.stringify(kernels, null, 1) + '\n');

  // The kernels' own warnings are the CUDA and HIP compile checks' business; the launch rewrite moves
  // template arguments into generic lambdas, where g++ loses track of their uses.
  const warn = ['-Wall', '-Wno-unknown-pragmas', '-Wno-unused-but-set-variable'];
  const common = ['-std=c++20', '-pthread', '-ffp-contract=off', '-U_FORTIFY_SOURCE', ...warn];
  const emuFlags = [...common, '-O1', '-DLORAKIT_EMU', `-I${rel(shim)}`, '-Icsrc/gpu', '-Icsrc'];
  // The kernels also run under UBSan's alignment and bounds checks: a 16-byte vector access at an address
  // that is not 16-byte aligned faults on a GPU but not on x86, and a shared array indexed past its size
  // (say, by a warp count at 64 lanes) corrupts silently. Left out where the compiler lacks the runtime.
  const ubsan = ['-fsanitize=alignment,bounds,integer-divide-by-zero,vla-bound', '-fno-sanitize-recover=all'];
  const probe = await run([cxx, ...ubsan, '-x', 'c++', '-', '-o', path.join(out, 'ubsan-probe')], 'int main() { return 0; }\n');
  const kernelFlags = probe.code === 0 ? [...emuFlags, ...ubsan] : emuFlags;
  if (probe.code !== 0) process.stdout.write('build-emu: UBSan is not available: kernels run without alignment checks\n');
  const cpuFlags = ['-std=c++17', '-pthread', '-O2', '-ffp-contract=off', '-fno-math-errno', ...warn, '-Icsrc'];
  const objects = [];  // [src, obj, flags]
  for (const f of cuFiles) objects.push([path.join(gen, f.replace(/\.cu$/, '.cc')), path.join(out, 'obj', `gpu_${f.replace(/\.cu$/, '.o')}`), kernelFlags]);
  for (const f of readdirSync(path.join(root, 'csrc/cpu')).filter((f) => f.endsWith('.cc')).sort())
    objects.push([path.join(root, 'csrc/cpu', f), path.join(out, 'obj', `cpu_${f.replace(/\.cc$/, '.o')}`), cpuFlags]);
  objects.push([path.join(root, 'test/emu/parity.cc'), path.join(out, 'obj', 'parity.o'), emuFlags]);
  // gemm.cu once more with LORAKIT_CUDA, for its cuBLASLt branch (the test's fake library stands in).
  const gemmLt = path.join(out, 'obj', 'gpu_gemm_cublaslt.o');
  objects.push([path.join(gen, 'gemm.cc'), gemmLt, [...kernelFlags, '-DLORAKIT_CUDA=1']]);
  // attention.cu once more with the AMD tile sizes (LORAKIT_LDS_TILES, as under LORAKIT_HIP).
  const attentionLds = path.join(out, 'obj', 'gpu_attention_lds.o');
  objects.push([path.join(gen, 'attention.cc'), attentionLds, [...kernelFlags, '-DLORAKIT_LDS_TILES=1']]);
  for (const w of [32, 64])
    objects.push([path.join(shim, 'emu_runtime.cc'), path.join(out, 'obj', `emu_runtime_w${w}.o`), [...emuFlags, `-DLORAKIT_EMU_WARP=${w}`]]);

  // The emulated addon, build-emu/lorakit_emu.node: the GPU addon's sources (csrc/napi with the GPU
  // backend, csrc/cpu, csrc/gpu) on the emulator, so that the TypeScript GPU suites (test/gpu) run without a
  // GPU too. Position-independent objects of its own, without UBSan (whose runtime a Node addon would drag in).
  const napiInclude = (pkg) => execFileSync(process.execPath, ['-p', `require('${pkg}').include_dir`], { cwd: root, encoding: 'utf8' }).trim();
  // It also carries the HIP build's default architecture list (read from CMakeLists.txt), so that the
  // loader's report on a device the binary has no code for can be tested with LORAKIT_EMU_ARCH.
  const hipArchs = /set\(LORAKIT_HIP_ARCHS "([^"]+)"/.exec(readFileSync(path.join(root, 'CMakeLists.txt'), 'utf8'));
  if (!hipArchs) throw new Error('CMakeLists.txt: no default LORAKIT_HIP_ARCHS');
  const addonDefs = ['-fPIC', '-DLORAKIT_EMU_ADDON', '-DLORAKIT_WITH_GPU', `-DLORAKIT_BUILT_ARCHS="${hipArchs[1].replace(/;/g, ',')}"`, '-DNAPI_VERSION=8', '-DNAPI_CPP_EXCEPTIONS', '-DNODE_ADDON_API_DISABLE_DEPRECATED',
    `-I${napiInclude('node-api-headers')}`, `-I${napiInclude('node-addon-api')}`];
  const addonObjects = [];
  for (const f of cuFiles) addonObjects.push([path.join(gen, f.replace(/\.cu$/, '.cc')), path.join(out, 'addon', `gpu_${f.replace(/\.cu$/, '.o')}`), [...emuFlags, ...addonDefs]]);
  for (const f of readdirSync(path.join(root, 'csrc/cpu')).filter((f) => f.endsWith('.cc')).sort())
    addonObjects.push([path.join(root, 'csrc/cpu', f), path.join(out, 'addon', `cpu_${f.replace(/\.cc$/, '.o')}`), [...cpuFlags, ...addonDefs]]);
  for (const f of readdirSync(path.join(root, 'csrc/napi')).filter((f) => f.endsWith('.cc')).sort())
    addonObjects.push([path.join(root, 'csrc/napi', f), path.join(out, 'addon', `napi_${f.replace(/\.cc$/, '.o')}`), [...cpuFlags, ...addonDefs]]);
  addonObjects.push([path.join(shim, 'emu_runtime.cc'), path.join(out, 'addon', 'emu_runtime.o'), [...emuFlags, ...addonDefs, '-DLORAKIT_EMU_WARP=32']]);
  mkdirSync(path.join(out, 'addon'), { recursive: true });
  objects.push(...addonObjects);

  let compiled = 0;
  const tasks = objects.map(([src, obj, flags]) => async () => {
    const argv = [cxx, ...flags, '-MMD', '-MF', obj.replace(/\.o$/, '.d'), '-c', rel(src), '-o', rel(obj)];
    const command = argv.join(' ');
    if (!stale(obj, src, command)) return { ok: true };
    const t = Date.now();
    const r = await run(argv);
    if (r.code !== 0) {
      process.stderr.write(`\nbuild-emu: FAILED ${rel(src)}\n${command}\n${r.text}\n`);
      return { ok: false };
    }
    writeFileSync(`${obj}.cmd`, command);
    compiled++;
    process.stdout.write(`build-emu: ${rel(src)} (${((Date.now() - t) / 1000).toFixed(1)} s)\n`);
    if (r.text.trim()) process.stdout.write(r.text);
    return { ok: true };
  });
  const { failed } = await pool(tasks, jobs);
  if (failed) process.exit(1);

  const shared = objects.filter(([, obj]) => !/emu_runtime_w|gemm_cublaslt|attention_lds|[\\/]addon[\\/]/.test(obj)).map(([, obj]) => obj);
  const binaries = [
    ['parity-w32', [...shared, path.join(out, 'obj', 'emu_runtime_w32.o')]],
    ['parity-w64', [...shared, path.join(out, 'obj', 'emu_runtime_w64.o')]],
    ['parity-cublaslt', [...shared.filter((o) => !o.endsWith('gpu_gemm.o')), gemmLt, path.join(out, 'obj', 'emu_runtime_w32.o')]],
    ['parity-w64-lds', [...shared.filter((o) => !o.endsWith('gpu_attention.o')), attentionLds, path.join(out, 'obj', 'emu_runtime_w64.o')]],
  ];
  binaries.push(['lorakit_emu.node', addonObjects.map(([, obj]) => obj)]);
  const links = binaries.map(([name, inputs]) => async () => {
    const exe = path.join(out, name);
    const addon = name.endsWith('.node');
    const argv = addon
      ? [cxx, '-shared', '-pthread', ...inputs.map(rel), '-o', rel(exe), '-ldl']
      : [cxx, '-pthread', ...(kernelFlags === emuFlags ? [] : ubsan), ...inputs.map(rel), '-o', rel(exe), '-ldl'];
    if (mtime(exe) >= Math.max(...inputs.map(mtime)) && existsSync(`${exe}.cmd`) && readFileSync(`${exe}.cmd`, 'utf8') === argv.join(' '))
      return { ok: true };
    const r = await run(argv);
    if (r.code !== 0) {
      process.stderr.write(`\nbuild-emu: FAILED to link ${rel(exe)}\n${r.text}\n`);
      return { ok: false };
    }
    writeFileSync(`${exe}.cmd`, argv.join(' '));
    return { ok: true };
  });
  if ((await pool(links, jobs)).failed) process.exit(1);
  process.stdout.write(`build-emu: ${compiled} of ${objects.length} objects compiled, binaries in ${rel(out)}/ ` +
    `(${((Date.now() - started) / 1000).toFixed(1)} s)\n`);
}

main().catch((e) => {
  process.stderr.write(`build-emu: ${e.stack || e}\n`);
  process.exit(1);
});
