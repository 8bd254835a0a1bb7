#!/usr/bin/env node
// Copies the cmake-js build of the CPU addon into prebuilds/<platform>-<arch>/, named so that
// node-gyp-build selects it (N-API, and the C library on Linux) when no local build exists.
'use strict';
const fs = require('node:fs');
const path = require('node:path');
const { execFileSync } = require('node:child_process');

const root = path.resolve(__dirname, '..');
const src = path.join(root, 'build-cmake', 'Release', 'lorakit.node');
if (!fs.existsSync(src)) {
  console.error(`prebuild: ${path.relative(root, src)} is missing; run \`npm run build:native\` first`);
  process.exit(1);
}
const libc = process.platform === 'linux' ? (fs.existsSync('/etc/alpine-release') ? '.musl' : '.glibc') : '';
const dir = path.join(root, 'prebuilds', `${process.platform}-${process.arch}`);
fs.mkdirSync(dir, { recursive: true });
const dst = path.join(dir, `lorakit.napi${libc}.node`);
const tmp = `${dst}.tmp-${process.pid}`;
fs.copyFileSync(src, tmp);
if (process.platform === 'linux') {
  try {
    execFileSync('strip', ['--strip-unneeded', tmp]);
  } catch {
    // strip is an optimisation only; an unstripped addon works the same.
  }
}
fs.renameSync(tmp, dst);
console.log(`prebuild: wrote ${path.relative(root, dst)} (${fs.statSync(dst).size} bytes)`);
