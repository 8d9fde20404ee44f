/**
 * A drive counts its lease on a monotonic clock. Counted on the wall clock (`Date.now`), a step
 * back of that clock (NTP) made a drive whose renewals were failing believe it held the lease that
 * much longer than the log did, so it ran its step on while another drive, having claimed the lapsed
 * saga, ran it too (a review measured two runs of one step at once with a 3 s step back).
 */
import { describe, expect, it } from "@effect/vitest"
import { Effect, Exit } from "effect"
import * as Saga from "../src/Saga.js"
import { SagaLog, makeMemory } from "../src/SagaLog.js"

describe("a drive's lease and the wall clock", () => {
  it.live(
    "renewals unanswered: the step stops when the lease runs out, though the wall clock stepped back",
    () =>
      Effect.gen(function* () {
        const log = yield* makeMemory
        const unanswered: SagaLog["Type"] = { ...log, renewLease: () => Effect.never }
        const saga = Saga.make({
          name: "long-step",
          steps: [Saga.step({ name: "slow", action: () => Effect.sleep("5 seconds"), timeout: "1 hour" })]
        })
        const realNow = Date.now
        const stepBack = setTimeout(() => {
          Date.now = () => realNow() - 3_000
        }, 100)
        const began = performance.now()
        const exit = yield* Saga.run(saga, null, { sagaId: "clock-1", leaseFor: "600 millis" }).pipe(
          Effect.provideService(SagaLog, unanswered),
          Effect.exit,
          Effect.ensuring(
            Effect.sync(() => {
              clearTimeout(stepBack)
              Date.now = realNow
            })
          )
        )
        const elapsed = performance.now() - began
        expect(Exit.isFailure(exit)).toBe(true)
        expect(String(exit)).toContain("LeaseLostError")
        // The lease is 600 ms from the start; on the wall clock it lasted 3.6 s.
        expect(elapsed).toBeLessThan(1_500)
      })
  )
})
