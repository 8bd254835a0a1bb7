/** What the commands' options have in common: --json. */

/** A `--json` that is off unless given; `describe` says what the one JSON object holds. */
export const jsonOption = (describe: string) => ({ type: 'boolean', default: false, describe }) as const;
