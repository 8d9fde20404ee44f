/**
 * The fault schedule of one simulated run, drawn from its seed: how often the network drops,
 * delays, duplicates or loses answers, how often log writes fail, when participants crash and
 * where the coordinator dies. Every fault injected is counted and traced.
 *
 * @since 0.1.0
 */
import type * as Rng from "./Rng.js"
import type * as Trace from "./Trace.js"

/**
 * Probabilities and bounds of one run's faults.
 * @since 0.1.0
 */
export interface Profile {
  /** A request never reaches the participant (the caller sees a connection error). */
  readonly dropRequest: number
  /** The participant acted but its answer is lost (the caller is in doubt). */
  readonly loseResponse: number
  /** The request is delivered twice. */
  readonly duplicate: number
  /** The request or answer is held back long enough to reorder it and fire timeouts. */
  readonly longDelay: number
  /** A log write fails (before or after it landed). */
  readonly logFailure: number
  /** Each participant crashes once during the run with this probability. */
  readonly participantCrash: number
  /** The coordinator crashes at one of its durable boundaries with this probability. */
  readonly coordinatorCrash: number
  /** A recovery sweep (another process) runs while transactions are in flight. */
  readonly concurrentSweep: number
  /** The network splits in two for a while (only where the protocol claims to survive it). */
  readonly partition: number
}

/**
 * No faults at all.
 * @since 0.1.0
 */
export const none: Profile = {
  dropRequest: 0,
  loseResponse: 0,
  duplicate: 0,
  longDelay: 0,
  logFailure: 0,
  participantCrash: 0,
  coordinatorCrash: 0,
  concurrentSweep: 0,
  partition: 0
}

/**
 * Draws a run's profile: some seeds are calm, some stormy, most in between.
 * `crashOnly` keeps only crash faults and short delays (no lost messages, no long delays): the
 * failure model classic 3PC promises to survive. Partitions only with `partitions`.
 * @since 0.1.0
 */
export const draw = (
  rng: Rng.Rng,
  options: { readonly crashOnly?: boolean; readonly partitions?: boolean } = {}
): Profile => {
  const level = rng.pick([0, 0.02, 0.05, 0.1, 0.2])
  const drawn = {
    dropRequest: level * rng.next(),
    loseResponse: level * rng.next(),
    duplicate: level * rng.next(),
    longDelay: level * rng.next() * 2,
    logFailure: level * rng.next(),
    participantCrash: Math.min(1, level * 3 * rng.next()),
    coordinatorCrash: rng.pick([0, 0.3, 0.5, 0.7]),
    concurrentSweep: rng.pick([0, 0, 0.3]),
    partition: rng.pick([0, 0.5, 0.9]) * (options.partitions === true ? 1 : 0)
  }
  return options.crashOnly === true
    ? { ...drawn, dropRequest: 0, loseResponse: 0, longDelay: 0, partition: 0 }
    : drawn
}

/**
 * The live fault state of a run: the profile, the generator, counters, and a switch that heals
 * everything for the settling phase.
 * @since 0.1.0
 */
export class Injector {
  healed = false
  readonly counts: Record<string, number> = {}
  constructor(
    readonly profile: Profile,
    readonly rng: Rng.Rng,
    readonly trace: Trace.Trace
  ) {}
  /** Decides whether a fault of `kind` (with probability field `field`) happens now. */
  roll(field: keyof Profile): boolean {
    if (this.healed) return false
    return this.rng.chance(this.profile[field])
  }
  /** Counts and traces an injected fault. */
  inject(kind: string, who: string, detail: string): void {
    this.counts[kind] = (this.counts[kind] ?? 0) + 1
    this.trace.add(who, `FAULT ${kind}: ${detail}`)
  }
  get total(): number {
    let n = 0
    for (const k in this.counts) n += this.counts[k]!
    return n
  }
}
