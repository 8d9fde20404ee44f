/**
 * A small seeded pseudo-random generator (mulberry32) for the simulator's fault schedule.
 *
 * The protocol code under test draws its own randomness from Effect's `Random` service, seeded
 * with the same seed; this generator picks the faults. Both are consumed in the deterministic
 * order of the simulated runtime, so a seed always yields the same schedule.
 *
 * @since 0.1.0
 */

/**
 * A seeded generator.
 * @since 0.1.0
 */
export interface Rng {
  /** A float in [0, 1). */
  readonly next: () => number
  /** An integer in [min, max] (both inclusive). */
  readonly int: (min: number, max: number) => number
  /** True with probability `p`. */
  readonly chance: (p: number) => boolean
  /** One element of a non-empty list. */
  readonly pick: <A>(items: ReadonlyArray<A>) => A
  /** A generator derived from this one (for an independent stream, e.g. per participant). */
  readonly fork: () => Rng
}

/**
 * A generator from a 32-bit seed.
 * @since 0.1.0
 */
export const make = (seed: number): Rng => {
  let state = (seed ^ 0x9e3779b9) >>> 0
  const next = (): number => {
    state = (state + 0x6d2b79f5) >>> 0
    let t = state
    t = Math.imul(t ^ (t >>> 15), t | 1)
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61)
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296
  }
  const rng: Rng = {
    next,
    int: (min, max) => min + Math.floor(next() * (max - min + 1)),
    chance: (p) => p > 0 && next() < p,
    pick: (items) => items[Math.floor(next() * items.length)]!,
    fork: () => make(Math.floor(next() * 4294967296))
  }
  return rng
}
