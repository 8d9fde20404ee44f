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
          const held = yield* gate.enterHold("T1", "g1", Duration.seconds(1))
          expect(held).toBeDefined()
          // Shaped like the PGlite branch: the wait is the only interruptible part.
          const branch = yield* Effect.fork(
            Effect.uninterruptibleMask((restore) =>
              Effect.gen(function* () {
                const ticket = yield* restore(gate.enterHold("T2", "g2", Duration.seconds(10)))
                if (ticket === undefined) return "busy"
                gate.leaveHold(ticket)
                return "ran"
              })
            )
          )
          yield* Effect.sleep(Duration.millis(2))
          // T1's COMMIT PREPARED admits T2's waiter while T2's prepare timeout interrupts it.
          gate.leaveHold(held!)
          yield* Fiber.interrupt(branch)
          if (gate.holder !== undefined) stuck++
        }
        expect(stuck).toBe(0)
      })
  )

  it.live("a waiter whose timeout fires is not admitted later", () =>
    Effect.gen(function* () {
      const gate = new Gate()
      const held = yield* gate.enterHold("T1", "g1", Duration.seconds(1))
      expect(yield* gate.enter("T2", "g2", Duration.millis(20))).toBe(false)
      gate.leaveHold(held!)
      expect(gate.holder).toBeUndefined()
      expect(yield* gate.enter("T3", "g3", Duration.millis(20))).toBe(true)
      expect(gate.holder).toBe("T3")
    })
  )
})
