/** What the commands' options have in common: how a key is spelt on the command line, and --json. */

/** yargs' kebab-case of a camelCase option key: the flag as typed (`batchSize` is `--batch-size`). */
export const kebab = (key: string) => key.replace(/[A-Z]/g, (c) => `-${c.toLowerCase()}`);

/** A `--json` that is off unless given; `describe` says what the one JSON object holds. */
export const jsonOption = (describe: string) => ({ type: 'boolean', default: false, describe }) as const;
