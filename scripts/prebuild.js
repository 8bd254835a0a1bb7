#!/usr/bin/env node
// The prebuild of this platform's CPU addon, made with prebuildify, which names it and puts it where
// node-gyp-build looks when no local build exists: prebuilds/<platform>-<arch>/lorakit.napi[.glibc|.musl].node.
// `npm pack` and `npm publish` run this (the prepack script), so a tarball always carries it; so does
// `npm run build`.
//
// prebuildify builds by running node-gyp; it runs this same script in node-gyp's place instead (with
// `rebuild` and node-gyp's options), because the prebuild is the full cmake-js build (CMakeLists.txt:
// libstdc++ linked statically, hidden symbols), not the node-gyp source fallback of binding.gyp. That
// step compiles incrementally into build-cmake/, the tree `npm run build:native` keeps, and leaves the
// addon where node-gyp would have, under the folder prebuildify runs it in (build-cmake/build/Release/),
// from where prebuildify moves it into prebuilds/ (the same file system, so the move is a rename and a
// reader never sees a half-written file). The node-gyp options are not needed: a Node-API addon is the
// same for every Node version, and each prebuild is made on the platform it is for.
'use strict';
const fs = require('node:fs');
const path = require('node:path');
const { execFileSync } = require('node:child_process');

const root = path.resolve(__dirname, '..');
const cmakeOut = path.join(root, 'build-cmake');

function compile() {
  execFileSync(process.execPath, [require.resolve('cmake-js/bin/cmake-js'), 'compile', '--out', cmakeOut], { cwd: root, stdio: 'inherit' });
  const built = path.join(cmakeOut, 'Release', 'lorakit.node');
  if (!fs.existsSync(built)) {
    console.error(`prebuild: cmake-js finished without ${path.relative(root, built)}`);
    process.exit(1);
  }
  const staged = path.join(process.cwd(), 'build', 'Release', 'lorakit.node');
  fs.mkdirSync(path.dirname(staged), { recursive: true });
  fs.copyFileSync(built, staged);
  if (process.platform === 'linux') {
    try {
      execFileSync('strip', ['--strip-unneeded', staged]);
    } catch {
      // strip is an optimisation only; an unstripped addon works the same.
    }
  }
}

function prebuild() {
  fs.mkdirSync(cmakeOut, { recursive: true });
  const dir = path.join(root, 'prebuilds', `${process.platform}-${process.arch}`);
  const options = {
    cwd: cmakeOut,
    out: root,
    // prebuildify names the file after `name` and the tags; node-gyp-build reads a `napi` tag as "any
    // Node version", and this is the name prebuilds have always had here, so none is left beside it.
    name: 'lorakit.napi',
    napi: true,
    platform: process.platform,
    arch: process.arch,
    // node-gyp-build tells glibc from musl builds by this tag; other systems have one C library.
    tagLibc: process.platform === 'linux',
    nodeGyp: `"${process.execPath}" "${__filename}"`,
    // The build command above is node and this script: a command line, run through the shell.
    shell: true,
  };
  require('prebuildify')(options, (err) => {
    if (err) {
      console.error(`prebuild: ${err.message}`);
      process.exit(1);
    }
    const built = fs.readdirSync(dir).filter((f) => f.endsWith('.node')).map((f) => path.join(dir, f));
    for (const f of built) console.log(`prebuild: ${path.relative(root, f)} (${fs.statSync(f).size} bytes)`);
    // node-gyp-build prefers a local build (build/Release) to the prebuild, so one older than this
    // prebuild (the source fallback `npm ci` compiled, say) would shadow it: the tests and the CLI would
    // run stale native code. A newer one (an `npm run build:gyp` since) is the developer's choice and stays.
    const local = path.join(root, 'build', 'Release', 'lorakit.node');
    const newest = Math.max(...built.map((f) => fs.statSync(f).mtimeMs));
    if (fs.existsSync(local) && fs.statSync(local).mtimeMs < newest) {
      fs.rmSync(local);
      console.log(`prebuild: removed ${path.relative(root, local)}, older than the prebuild it would shadow`);
    }
  });
}

if (process.argv[2] === 'rebuild') compile();
else prebuild();
