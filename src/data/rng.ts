/**
 * A small seeded PRNG for the data pipeline (xoshiro128**, seeded through a
 * 32-bit hash of a key). Pure JS, the same on every thread, so shuffling and
 * augmentation depend only on (seed, epoch, position), never on timing or on
 * how the work is split between workers.
 */

/** A 32-bit finaliser (lowbias32 by Chris Wellons): good avalanche, cheap. */
export function mix32(x: number): number {
  x >>>= 0;
  x ^= x >>> 16;
  x = Math.imul(x, 0x7feb352d);
  x ^= x >>> 15;
  x = Math.imul(x, 0x846ca68b);
  x ^= x >>> 16;
  return x >>> 0;
}

/** Hashes a list of numbers (each an integer up to 2^53 in magnitude) to 32 bits. */
export function hashWords(words: readonly number[]): number {
  let h = 0x9e3779b9;
  for (const w of words) {
    const lo = w >>> 0;
    const hi = Math.floor(w / 4294967296) >>> 0;
    h = mix32(h ^ mix32(lo + 0x632be5ab));
    h = mix32(h ^ mix32(hi + 0x85157af5));
  }
  return h;
}

/** Streams: distinct uses of the same seed never share random numbers. */
export const STREAM = { permutation: 1, augment: 2, synthetic: 3 } as const;

export class Rng {
  #a: number;
  #b: number;
  #c: number;
  #d: number;

  /** A generator for a key: e.g. `new Rng([seed, STREAM.augment, epoch, position])`. */
  constructor(key: readonly number[] | number) {
    let s = typeof key === 'number' ? hashWords([key]) : hashWords(key);
    // splitmix32 to fill the state; never all zero.
    const next = () => {
      s = (s + 0x9e3779b9) >>> 0;
      return mix32(s);
    };
    this.#a = next();
    this.#b = next();
    this.#c = next();
    this.#d = next() | 1;
  }

  /** A uniform 32-bit unsigned integer. */
  u32(): number {
    const b = this.#b;
    const r = Math.imul(rotl(Math.imul(b, 5), 7), 9) >>> 0;
    const t = b << 9;
    this.#c ^= this.#a;
    this.#d ^= this.#b;
    this.#b ^= this.#c;
    this.#a ^= this.#d;
    this.#c ^= t;
    this.#d = rotl(this.#d, 11);
    return r;
  }

  /** Uniform in [0, 1) with 32 random bits. */
  next(): number {
    return this.u32() / 4294967296;
  }

  /** Uniform in [lo, hi). */
  uniform(lo: number, hi: number): number {
    return lo + (hi - lo) * this.next();
  }

  /** Uniform integer in [0, n) (n <= 2^32; the bias is below 2^-32 * n). */
  int(n: number): number {
    return Math.floor(this.next() * n);
  }

  /** True with probability p. */
  bernoulli(p: number): boolean {
    return this.next() < p;
  }
}

function rotl(x: number, k: number): number {
  return ((x << k) | (x >>> (32 - k))) >>> 0;
}

/** The permutation of 0..n-1 for a key (Fisher-Yates). */
export function permutation(n: number, key: readonly number[]): Int32Array {
  const p = new Int32Array(n);
  for (let i = 0; i < n; i++) p[i] = i;
  const rng = new Rng(key);
  for (let i = n - 1; i > 0; i--) {
    const j = rng.int(i + 1);
    const t = p[i];
    p[i] = p[j];
    p[j] = t;
  }
  return p;
}
