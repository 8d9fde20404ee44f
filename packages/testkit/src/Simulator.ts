/**
 * The deterministic fault simulator: runs Accord's real protocol code (`TwoPhaseCommit.run`,
 * `Recovery.run`, ...) against simulated participants, network and log, with faults drawn from
 * a seed, then checks the protocol's invariants. The same seed always replays the same run.
 *
 * ```ts
 * import { Simulator } from "@accord/testkit"
 * const result = await Simulator.run({ protocol: "2pc", seed: 42 })
 * if (!result.ok) console.log(Simulator.format(result))
 * ```
 *
 * Your own participants plug in through `participants` (see `Plugged`): the simulator wraps
 * them in its network, crashes them, and checks them like its own.
 *
 * @since 0.1.0
 */
import { Cause, Effect, Exit } from "effect"
import * as Invariants from "./Invariants.js"
import { runDeterministic } from "./SimRuntime.js"
import * as saga from "./internal/saga.js"
import * as threePhase from "./internal/threePhase.js"
import * as twoPhase from "./internal/twoPhase.js"
import * as World from "./internal/world.js"

/**
 * The protocols the simulator drives.
 * @since 0.1.0
 */
export type Protocol = "2pc" | "3pc" | "3pc-quorum" | "saga"

/**
 * The protocols, for CLIs.
 * @since 0.1.0
 */
export const protocols: ReadonlyArray<Protocol> = ["2pc", "3pc", "3pc-quorum", "saga"]

/**
 * A participant plugged into a 2PC/3PC simulation: your `Participant` implementation, how to
 * draw the work of one branch, and hooks the simulator calls when it crashes and restarts it.
 * Build it inside the `participants` effect so each seed starts from fresh state.
 * @since 0.1.0
 */
export type Plugged<Work> = twoPhase.Plugged<Work>

/**
 * A saga step of your own plugged into a saga simulation: `action(key)` and `compensation(key)`
 * receive the step's idempotency key and are called through the faulty simulated network;
 * `observe(key)` tells the checkers whether the action ever took effect and how many times it was
 * undone. Build the steps inside the `steps` effect so each seed starts from fresh state.
 * @since 0.1.0
 */
export type PluggedStep = saga.PluggedStep

/**
 * Which implementation runs: the real one, or a deliberately broken variant (to prove the
 * checkers can fail).
 * @since 0.1.0
 */
export type Variant = twoPhase.Variant | saga.Variant | "classic-under-partitions"

/**
 * Options of one simulated run.
 * @since 0.1.0
 */
export interface Options {
  readonly protocol: Protocol
  readonly seed: number
  readonly variant?: Variant
  /** Your participants (2PC/3PC), made fresh for each seed. Default: simulated Postgres-like participants. */
  readonly participants?: Effect.Effect<ReadonlyArray<twoPhase.AnyPlugged>>
  /** Your saga steps (protocol `saga`), made fresh for each seed. Default: simulated services. */
  readonly steps?: Effect.Effect<ReadonlyArray<saga.PluggedStep>>
}

/**
 * The result of one simulated run.
 * @since 0.1.0
 */
export interface Result {
  readonly protocol: Protocol
  readonly seed: number
  readonly variant: Variant
  readonly ok: boolean
  readonly violations: ReadonlyArray<string>
  readonly faultsInjected: number
  readonly faults: Readonly<Record<string, number>>
  readonly transactions: number
  readonly virtualMillis: number
  readonly trace: ReadonlyArray<string>
}

/**
 * Runs one seed.
 * @since 0.1.0
 */
export const run = async (options: Options): Promise<Result> => {
  const variant = options.variant ?? "correct"
  let world: World.World | undefined
  let transactions = 0
  const outcome = await runDeterministic(
    (clock) =>
      Effect.gen(function* () {
        // Classic 3PC promises atomicity under crash failures with bounded delays only.
        const w = World.make(options.seed, clock, {
          crashOnly: options.protocol === "3pc",
          partitions: options.protocol === "3pc-quorum"
        })
        world = w
        switch (options.protocol) {
          case "2pc": {
            const plugged = options.participants === undefined ? undefined : yield* options.participants
            const { plans, log } = yield* twoPhase.run(w, plugged, variant as twoPhase.Variant)
            transactions = plans.length
            for (const tx of yield* twoPhase.finals(plans, log))
              w.violations.push(...Invariants.atomicCommit(tx))
            return
          }
          case "3pc":
          case "3pc-quorum": {
            // The broken variant runs classic mode under the quorum protocol's faults (partitions).
            const plans = yield* threePhase.run(
              w,
              options.protocol === "3pc-quorum",
              variant === "classic-under-partitions"
            )
            transactions = plans.length
            for (const tx of threePhase.finals(plans)) w.violations.push(...Invariants.atomicCommit(tx))
            return
          }
          case "saga": {
            const steps = options.steps === undefined ? undefined : yield* options.steps
            const { services, result } = yield* saga.run(w, variant as saga.Variant, steps)
            transactions = 1
            saga.check(w, services, result)
            return
          }
        }
      }),
    { seed: options.seed }
  ).catch((error: unknown) => {
    world?.violations.push(`liveness: ${error instanceof Error ? error.message : String(error)}`)
    return undefined
  })
  if (world === undefined) throw new Error("the simulation did not start")
  if (outcome !== undefined && Exit.isFailure(outcome.exit)) {
    world.violations.push(`defect: ${Cause.pretty(outcome.exit.cause)}`)
  }
  return {
    protocol: options.protocol,
    seed: options.seed,
    variant,
    ok: world.violations.length === 0,
    violations: world.violations,
    faultsInjected: world.injector.total,
    faults: world.injector.counts,
    transactions,
    virtualMillis: outcome?.virtualMillis ?? 0,
    trace: world.trace.lines
  }
}

/**
 * A readable report of one run: the violations, then the trace.
 * @since 0.1.0
 */
export const format = (result: Result): string =>
  [
    `protocol ${result.protocol}, seed ${result.seed}${result.variant === "correct" ? "" : `, variant ${result.variant}`}: ${
      result.ok ? "ok" : `${result.violations.length} violation(s)`
    }`,
    ...result.violations.map((v) => `  VIOLATION ${v}`),
    `faults injected: ${result.faultsInjected} ${JSON.stringify(result.faults)}`,
    "trace:",
    ...result.trace.map((l) => `  ${l}`),
    `replay: pnpm sim -- --protocol ${result.protocol} --seed ${result.seed}${result.variant === "correct" ? "" : ` --variant ${result.variant}`}`
  ].join("\n")

/**
 * The summary of many seeds.
 * @since 0.1.0
 */
export interface Summary {
  readonly protocol: Protocol
  readonly variant: Variant
  readonly seeds: number
  readonly firstSeed: number
  readonly violations: number
  readonly failingSeeds: ReadonlyArray<number>
  /** Violations by kind (the word before the colon: atomicity, outcome, write-ahead, ...). */
  readonly violationKinds: Readonly<Record<string, number>>
  readonly faultsInjected: number
  readonly faults: Readonly<Record<string, number>>
  readonly transactions: number
  readonly elapsedMillis: number
}

/**
 * Runs seeds `from .. from + seeds - 1` one after the other. `onFailure` sees each failing run.
 * @since 0.1.0
 */
export const runMany = async (options: {
  readonly protocol: Protocol
  readonly seeds: number
  readonly from?: number
  readonly variant?: Variant
  readonly participants?: Options["participants"]
  readonly steps?: Options["steps"]
  readonly stopAfterFailures?: number
  readonly onFailure?: (result: Result) => void
}): Promise<Summary> => {
  const started = performance.now()
  const from = options.from ?? 0
  const faults: Record<string, number> = {}
  const failingSeeds: Array<number> = []
  const violationKinds: Record<string, number> = {}
  let violations = 0
  let faultsInjected = 0
  let transactions = 0
  let seeds = 0
  for (let seed = from; seed < from + options.seeds; seed++) {
    // A run never touches Node's event loop; let the host process breathe between seeds.
    await new Promise<void>((resolve) => setImmediate(resolve))
    const result = await run({
      protocol: options.protocol,
      seed,
      ...(options.variant === undefined ? {} : { variant: options.variant }),
      ...(options.participants === undefined ? {} : { participants: options.participants }),
      ...(options.steps === undefined ? {} : { steps: options.steps })
    })
    seeds++
    faultsInjected += result.faultsInjected
    transactions += result.transactions
    for (const [k, v] of Object.entries(result.faults)) faults[k] = (faults[k] ?? 0) + v
    if (!result.ok) {
      violations += result.violations.length
      failingSeeds.push(seed)
      for (const v of result.violations) {
        const kind = v.split(":")[0]!
        violationKinds[kind] = (violationKinds[kind] ?? 0) + 1
      }
      options.onFailure?.(result)
      if (options.stopAfterFailures !== undefined && failingSeeds.length >= options.stopAfterFailures) break
    }
  }
  return {
    protocol: options.protocol,
    variant: options.variant ?? "correct",
    seeds,
    firstSeed: from,
    violations,
    failingSeeds,
    violationKinds,
    faultsInjected,
    faults,
    transactions,
    elapsedMillis: Math.round(performance.now() - started)
  }
}
