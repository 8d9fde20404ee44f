import { describe, expect, it } from "@effect/vitest"
import { Duration, Effect, Fiber } from "effect"
import { Gate } from "../src/internal/gate.js"

describe("the PGlite gate", () => {
  it.live(
    "a waiter interrupted in the tick that admits it leaves the gate, instead of holding it for nobody",
    () =>
      Effect.gen(function* () {
        let stuck = 0
        for (let i = 0; i < 50; i++) {
          const gate = new Gate()
          expect(yield* gate.enter("T1", "g1", Duration.seconds(1))).toBe(true)
          // Shaped like the PGlite branch: the wait is the only interruptible part.
          const branch = yield* Effect.fork(
            Effect.uninterruptibleMask((restore) =>
              Effect.gen(function* () {
                if (!(yield* restore(gate.enter("T2", "g2", Duration.seconds(10))))) return "busy"
                gate.leave("g2")
                return "ran"
              })
            )
          )
          yield* Effect.sleep(Duration.millis(2))
          // T1's COMMIT PREPARED admits T2's waiter while T2's prepare timeout interrupts it.
          gate.leave("g1")
          yield* Fiber.interrupt(branch)
          if (gate.holder !== undefined) stuck++
        }
        expect(stuck).toBe(0)
      })
  )

  it.live("a waiter whose timeout fires is not admitted later", () =>
    Effect.gen(function* () {
      const gate = new Gate()
      yield* gate.enter("T1", "g1", Duration.seconds(1))
      expect(yield* gate.enter("T2", "g2", Duration.millis(20))).toBe(false)
      gate.leave("g1")
      expect(gate.holder).toBeUndefined()
      expect(yield* gate.enter("T3", "g3", Duration.millis(20))).toBe(true)
      expect(gate.holder).toBe("T3")
    })
  )
})
