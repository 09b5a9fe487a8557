/**
 * Seeded property runs for the fuzz tests: a fixed seed and a fixed number of runs, so a run takes
 * the same time and finds the same things every time. fast-check prints the seed and the shrunk
 * counterexample of a failure; NATLENS_FUZZ_SEED=<n> replays or explores another seed.
 */
import fc from 'fast-check';

export const FUZZ_SEED = process.env.NATLENS_FUZZ_SEED !== undefined ? Number(process.env.NATLENS_FUZZ_SEED) : 0x6e61746c;

/** Options for fc.assert: this seed, `numRuns` runs, the seed in the failure message. */
export function fuzzRuns(numRuns: number): fc.Parameters<unknown> {
  return { seed: FUZZ_SEED, numRuns, verbose: 1 };
}

/** A deterministic PRNG (mulberry32) for loops that are not properties; same seed as above by default. */
export function rng(seed: number = FUZZ_SEED): () => number {
  let s = seed | 0;
  return () => {
    s = (s + 0x6d2b79f5) | 0;
    let t = Math.imul(s ^ (s >>> 15), 1 | s);
    t = (t + Math.imul(t ^ (t >>> 7), 61 | t)) ^ t;
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}
