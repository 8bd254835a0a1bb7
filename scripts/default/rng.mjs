/**
 * A small seeded random source for the default-asset builder: a Weyl counter run through an integer
 * hash, so the same seed gives the same data on every machine and Node version.
 */
export class Rng {
  #state;

  constructor(seed) {
    this.#state = (seed * 0x2545f491) >>> 0;
  }

  /** The next 32-bit unsigned integer. */
  u32() {
    this.#state = (this.#state + 0x9e3779b9) >>> 0;
    let z = this.#state;
    z = Math.imul(z ^ (z >>> 16), 0x21f0aaad);
    z = Math.imul(z ^ (z >>> 15), 0x735a2d97);
    return (z ^ (z >>> 15)) >>> 0;
  }

  /** Uniform in [0, 1). */
  float() {
    return this.u32() / 4294967296;
  }

  /** Uniform integer in [lo, hi] (both ends included). */
  int(lo, hi) {
    return lo + Math.floor(this.float() * (hi - lo + 1));
  }

  /** One element of a non-empty array. */
  pick(list) {
    return list[Math.floor(this.float() * list.length)];
  }

  /** True with probability p. */
  chance(p) {
    return this.float() < p;
  }

  /** A new array with the elements of `list` in a random order (Fisher-Yates). */
  shuffle(list) {
    const out = list.slice();
    for (let i = out.length - 1; i > 0; i--) {
      const j = Math.floor(this.float() * (i + 1));
      [out[i], out[j]] = [out[j], out[i]];
    }
    return out;
  }

  /** `k` distinct elements of `list`. */
  sample(list, k) {
    return this.shuffle(list).slice(0, k);
  }
}
