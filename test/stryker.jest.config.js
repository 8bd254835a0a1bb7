// The Jest configuration Stryker runs for each mutant: the project's, less the suites that never load
// lib/ in-process (they spawn dist/, build native code, pack the tarball or start a cluster), since a
// mutant of lib/*.ts cannot change their outcome and they would only slow every run.
// MUTATE_TESTS='test/train*.test.ts,test/cli.test.ts' narrows the run to those files: a quicker run whose
// score is a lower bound of the whole suite's (fewer tests can only kill fewer mutants).
const base = require('../jest.config.js');

const only = (process.env.MUTATE_TESTS ?? '').split(',').map((s) => s.trim()).filter(Boolean);

module.exports = {
  ...base,
  rootDir: '..',
  reporters: ['default'],
  // No dist/ rebuild or addon check per mutant run (the sandbox's lib/ is always newer than its dist/).
  globalSetup: undefined,
  globalTeardown: undefined,
  ...(only.length ? { testMatch: only.map((g) => `<rootDir>/${g}`) } : {}),
  testPathIgnorePatterns: [
    '/node_modules/',
    'test/package\\.test\\.ts$',
    'test/parallel\\.test\\.ts$',
    'test/readme\\.test\\.ts$',
    'test/gpu-emulated.*\\.test\\.ts$',
    'test/sweep-cluster\\.test\\.ts$',
    'test/bench-train\\.test\\.ts$',
  ],
};
