/**
 * A late `ROLLBACK PREPARED` of an earlier run leaves only the gate hold it resolved, never a retry's
 * hold of the same gid. The gate was left by gid: run 1 of a caller's txId is aborted while its
 * branch's work still runs, so its rollback waits behind that transaction in PGlite; the caller
 * retries under the same txId, and the retry's branch enters the gate when run 1's branch ends.
 * The rollback then finds the gid gone (run 1 never prepared), and its `leave(gid)` freed the
 * retry's hold: the retry's branch went on prepared with the gate open, and the next branch of any
 * transaction to touch its rows would have waited for ever on a PGlite lock, freezing the process.
 */
import { TransactionId } from "@accord/core"
import { describe, expect, it } from "@effect/vitest"
import { Duration, Effect, Fiber } from "effect"
import { Gate } from "../src/internal/gate.js"
import * as PgParticipant from "../src/PgParticipant.js"
import { adjust } from "./support/pg2pc.js"
import { usePgliteBanks } from "./support/pglite.js"

/** A promise and its resolvers, to hold a work where the test wants it. */
const deferred = <A = void>() => {
  let resolve!: (value: A) => void
  let reject!: (error: unknown) => void
  const promise = new Promise<A>((res, rej) => {
    resolve = res
    reject = rej
  })
  return { promise, resolve, reject }
}

describe("PGlite gate: a late rollback of an earlier run of the same txId", () => {
  const banks = usePgliteBanks()

  it.live("leaves the retry's branch holding the gate, open and then prepared", () =>
    Effect.gen(function* () {
      const gate = PgParticipant.makeGate()
      const pa = yield* PgParticipant.makePglite({
        name: "bank-a",
        db: banks.dbA,
        gate,
        lockTimeout: Duration.seconds(10)
      })
      const txId = yield* TransactionId.make
      const ctx = { txId, branch: pa.name, gid: TransactionId.gid(txId, pa.name) }

      // Run 1: its work is under way when its coordinator gives up on it.
      const inRun1 = deferred()
      const endRun1 = deferred()
      const run1 = yield* Effect.fork(
        pa.prepare(ctx, async (s) => {
          await adjust(1, -1)(s)
          inRun1.resolve()
          await endRun1.promise
        })
      )
      yield* Effect.promise(() => inRun1.promise)
      // The retry of the same txId waits at the gate behind run 1's gid.
      const inRetry = deferred()
      const endRetry = deferred()
      const retry = yield* Effect.fork(
        pa.prepare(ctx, async (s) => {
          inRetry.resolve()
          await endRetry.promise
          await adjust(1, -1)(s)
        })
      )
      // Run 1's abort: its ROLLBACK PREPARED waits behind run 1's transaction in PGlite.
      const lateRollback = yield* Effect.fork(pa.rollback(ctx))
      yield* Effect.sleep(Duration.millis(100))

      // Run 1's work fails: its branch ends unprepared and the retry's branch enters.
      endRun1.reject(new Error("run 1 gives up"))
      expect((yield* Fiber.join(run1))._tag).toBe("No")
      yield* Effect.promise(() => inRetry.promise)
      // The retry's transaction is open: the gate is its transaction's.
      expect(gate.holder).toBe(txId)
      endRetry.resolve()
      expect((yield* Fiber.join(retry))._tag).toBe("Prepared")
      // Run 1's rollback found the gid gone (run 1 never prepared): a rollback for run 1.
      expect(yield* Fiber.join(lateRollback)).toBe("RolledBack")

      // The retry's branch is prepared, its row locked: no other transaction may enter.
      expect(gate.holder).toBe(txId)
      const other = yield* TransactionId.make
      const entered = yield* gate.enterHold(other, "accord_other_bank-a", Duration.millis(100))
      if (entered !== undefined) gate.leaveHold(entered)
      expect(entered).toBeUndefined()

      expect(yield* pa.rollback(ctx)).toBe("RolledBack")
      expect(gate.holder).toBeUndefined()
    })
  )
})

describe("Gate.resolving: a COMMIT/ROLLBACK PREPARED answer leaves the hold it is about", () => {
  const short = Duration.millis(100)

  it.live("a gid found gone leaves a hold that was prepared when the statement was sent", () =>
    Effect.gen(function* () {
      const gate = new Gate()
      const ticket = yield* gate.enterHold("T1", "g1", short)
      expect(ticket).toBeDefined()
      gate.markPrepared(ticket!)
      gate.resolving("g1")(false)
      expect(gate.holder).toBeUndefined()
    })
  )

  it.live("a gid found gone does not leave a hold whose branch had not prepared when it was sent", () =>
    Effect.gen(function* () {
      const gate = new Gate()
      const ticket = yield* gate.enterHold("T1", "g1", short)
      const late = gate.resolving("g1")
      // The branch prepares after the statement found its gid gone: the gid is prepared now.
      gate.markPrepared(ticket!)
      late(false)
      expect(gate.holder).toBe("T1")
      gate.resolving("g1")(true)
      expect(gate.holder).toBeUndefined()
    })
  )

  it.live("an answer about an earlier run's hold does not leave the retry's hold of the same gid", () =>
    Effect.gen(function* () {
      const gate = new Gate()
      const first = yield* gate.enterHold("T1", "g1", short)
      gate.markPrepared(first!)
      const late = gate.resolving("g1")
      // Another call resolved the first run's branch; the retry enters for the same gid.
      gate.resolving("g1")(true)
      const retry = yield* gate.enterHold("T1", "g1", short)
      expect(retry).toBeDefined()
      late(false)
      expect(gate.holder).toBe("T1")
      expect(yield* gate.enter("T2", "g2", short)).toBe(false)
      gate.leaveHold(retry!)
      expect(gate.holder).toBeUndefined()
    })
  )
})
