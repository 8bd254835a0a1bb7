// Removes the run's temporary folder (see global-setup.js); LORAKIT_KEEP_TMP=1 keeps it for a post-mortem.
'use strict';
const fs = require('node:fs');

module.exports = async function globalTeardown() {
  const dir = process.env.LORAKIT_JEST_TMP;
  if (!dir) return;
  if (process.env.LORAKIT_KEEP_TMP === '1') console.log(`\njest: temporary files kept in ${dir}`);
  else fs.rmSync(dir, { recursive: true, force: true });
};
