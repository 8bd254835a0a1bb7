/** Option names as users type them, and suggestions for misspelt ones (options, config keys): the one place the edit-distance rule lives. */

/** The kebab-case of a camelCase option key, as yargs spells the flag (`batchSize` is `--batch-size`). */
export const kebab = (key: string): string => key.replace(/[A-Z]/g, (c) => `-${c.toLowerCase()}`);

/** Levenshtein distance: how many single-character edits turn `a` into `b`. */
export function editDistance(a: string, b: string): number {
  let prev = Array.from({ length: b.length + 1 }, (_, j) => j);
  for (let i = 1; i <= a.length; i++) {
    const cur = [i];
    for (let j = 1; j <= b.length; j++) cur[j] = Math.min(prev[j]! + 1, cur[j - 1]! + 1, prev[j - 1]! + (a[i - 1] === b[j - 1] ? 0 : 1));
    prev = cur;
  }
  return prev[b.length]!;
}

/**
 * The candidate nearest to `name`, or null when none is within a third of the name's length (at least
 * 2 edits): farther than that, a suggestion is a guess.
 */
export function nearestName(name: string, candidates: Iterable<string>): string | null {
  let nearest: string | null = null, best = Infinity;
  for (const c of candidates) {
    const d = editDistance(name, c);
    if (d < best) [best, nearest] = [d, c];
  }
  return nearest !== null && best <= Math.max(2, Math.floor(name.length / 3)) ? nearest : null;
}
