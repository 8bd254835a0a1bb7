// Prints jest's totals as one plain line ("N passed, N failed, N skipped") as the very last output of
// a run, the closing line CI reads to know that tests ran. Written at exit so that it follows jest's
// own summary.
const fs = require('node:fs');

class SummaryReporter {
  onRunComplete(_contexts, results) {
    const skipped = results.numPendingTests + results.numTodoTests;
    const failed = results.numFailedTests + results.numRuntimeErrorTestSuites;
    process.once('exit', () => fs.writeSync(1, `${results.numPassedTests} passed, ${failed} failed, ${skipped} skipped\n`));
  }
}
module.exports = SummaryReporter;
