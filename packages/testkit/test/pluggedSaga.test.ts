import { Effect } from "effect"
import * as Saga from "@accord/core/Saga"
import { describe, expect, it } from "vitest"
import * as Simulator from "../src/Simulator.js"

/**
 * A user's own saga step over an in-memory service. `idempotentCompensation: false` is a bug a
 * user could write: a compensation delivered twice (a retry after a lost answer) undoes twice.
 */
const makeStep = (
  name: string,
  options: { readonly refuses: boolean; readonly idempotentCompensation: boolean }
) =>
  Effect.sync((): Simulator.PluggedStep => {
    const applied = new Set<string>()
    const nullCompensated = new Set<string>()
    const undone = new Map<string, number>()
    return {
      name,
      action: (key) =>
        Effect.suspend(() => {
          if (nullCompensated.has(key))
            return Effect.fail(new Saga.StepBusinessError({ reason: "compensated already" }))
          if (options.refuses) return Effect.fail(new Saga.StepBusinessError({ reason: "out of stock" }))
          applied.add(key)
          return Effect.void
        }),
      compensation: (key) =>
        Effect.sync(() => {
          if (!applied.has(key)) {
            nullCompensated.add(key)
            return
          }
          if (options.idempotentCompensation && (undone.get(key) ?? 0) > 0) return
          undone.set(key, (undone.get(key) ?? 0) + 1)
        }),
      observe: (key) => Effect.succeed({ applied: applied.has(key), compensations: undone.get(key) ?? 0 })
    }
  })

const steps = (idempotentCompensation: boolean) =>
  Effect.all([
    makeStep("reserve", { refuses: false, idempotentCompensation }),
    makeStep("charge", { refuses: false, idempotentCompensation }),
    makeStep("ship", { refuses: true, idempotentCompensation })
  ])

describe("plugged saga steps", () => {
  it("a user's idempotent steps hold every saga invariant under faults", async () => {
    const summary = await Simulator.runMany({ protocol: "saga", seeds: 400, steps: steps(true) })
    expect(summary.faultsInjected).toBeGreaterThan(0)
    expect(summary.failingSeeds).toEqual([])
  }, 120_000)

  it("a user's compensation that undoes twice on redelivery is caught", async () => {
    const summary = await Simulator.runMany({
      protocol: "saga",
      seeds: 400,
      steps: steps(false),
      stopAfterFailures: 1
    })
    expect(summary.violations).toBeGreaterThan(0)
    expect(Object.keys(summary.violationKinds)).toContain("compensation")
  }, 120_000)
})
