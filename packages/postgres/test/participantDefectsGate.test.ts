/**
 * The PGlite gate never admits a branch next to a prepared transaction whose row locks it could
 * wait on: PGlite's lock waits never end and block the JavaScript thread, so such a branch froze
 * the whole process. Two ways it was admitted before: a retry under the same txId while the first
 * run's branch was still prepared (the owning transaction's branches all entered, the same gid
 * included), and a branch of the transaction owning the gate when a participant started beside
 * transactions found prepared (start-up holds joined that owner's set).
 *
 * On the old gate the PGlite tests below froze the test process (no assertion could fail, the
 * event loop stopped); the `Gate` tests fail with an assertion.
 */
import { Participant, TransactionId, TwoPhaseCommit } from "@accord/core"
import { describe, expect, it } from "@effect/vitest"
import { Duration, Effect, Fiber, Layer } from "effect"
import { Gate } from "../src/internal/gate.js"
import * as PgParticipant from "../src/PgParticipant.js"
import * as PgTransactionLog from "../src/PgTransactionLog.js"
import { adjust } from "./support/pg2pc.js"
import { usePgliteBanks } from "./support/pglite.js"

const short = Duration.millis(100)

describe("the PGlite gate refuses a gid it already holds", () => {
  it.live("the same gid again, from the owning transaction, waits and is refused after its timeout", () =>
    Effect.gen(function* () {
      const gate = new Gate()
      const first = yield* gate.enterHold("T1", "g1", short)
      expect(first).toBeDefined()
      expect(yield* gate.enter("T1", "g1", short)).toBe(false)
      // The first entry still holds it.
      expect(gate.holder).toBe("T1")
      gate.leaveHold(first!)
      expect(gate.holder).toBeUndefined()
    })
  )

  it.live(
    "a retry waiting behind its own gid enters once that gid is left, beside its transaction's others",
    () =>
      Effect.gen(function* () {
        const gate = new Gate()
        const g1 = yield* gate.enterHold("T1", "g1", short)
        const g2 = yield* gate.enterHold("T1", "g2", short)
        expect(g1).toBeDefined()
        expect(g2).toBeDefined()
        const retry = yield* Effect.fork(gate.enterHold("T1", "g1", Duration.seconds(5)))
        yield* Effect.sleep(Duration.millis(20))
        // g2 still held by T1: the gate stays T1's, and the retry of g1 enters.
        gate.leaveHold(g1!)
        const retried = yield* Fiber.join(retry)
        expect(retried).toBeDefined()
        gate.leaveHold(retried!)
        gate.leaveHold(g2!)
        expect(gate.holder).toBeUndefined()
      })
  )

  it.live("a retry interrupted while it waits behind its own gid leaves the earlier hold in place", () =>
    Effect.gen(function* () {
      const gate = new Gate()
      const first = yield* gate.enterHold("T1", "g1", short)
      expect(first).toBeDefined()
      const retry = yield* Effect.fork(gate.enter("T1", "g1", Duration.seconds(5)))
      yield* Effect.sleep(Duration.millis(20))
      yield* Fiber.interrupt(retry)
      expect(gate.holder).toBe("T1")
      expect(yield* gate.enter("T2", "g2", short)).toBe(false)
      gate.leaveHold(first!)
    })
  )
})

describe("start-up holds close the gate to every transaction", () => {
  it.live("the transaction owning the gate when start-up gids are held cannot enter beside them", () =>
    Effect.gen(function* () {
      const gate = new Gate()
      const g1 = yield* gate.enterHold("T1", "g1", short)
      expect(g1).toBeDefined()
      gate.holdFor(["found-at-start"], "found at start-up")
      expect(yield* gate.enter("T1", "g2", short)).toBe(false)
      gate.leaveHold(g1!)
      // Still held by the start-up gid, for nobody's branches.
      expect(gate.holder).toBeDefined()
      expect(yield* gate.enter("T1", "g3", short)).toBe(false)
      expect(gate.holderDescription).toContain("found at start-up")
      // Its recovery's COMMIT/ROLLBACK PREPARED ends it.
      gate.resolving("found-at-start")(true)
      const g3 = yield* gate.enterHold("T1", "g3", short)
      expect(g3).toBeDefined()
      gate.leaveHold(g3!)
      expect(gate.holder).toBeUndefined()
    })
  )
})

describe("PGlite: no branch next to a prepared transaction's locks", () => {
  const banks = usePgliteBanks()

  it.live(
    "a retry under the same txId while the first run's branch is prepared votes No (busy), without freezing",
    () =>
      Effect.gen(function* () {
        const gate = PgParticipant.makeGate()
        const lockTimeout = Duration.millis(300)
        const pa = yield* PgParticipant.makePglite({ name: "bank-a", db: banks.dbA, gate, lockTimeout })
        const txId = yield* TransactionId.make
        const ctx = { txId, branch: pa.name, gid: TransactionId.gid(txId, pa.name) }
        expect((yield* pa.prepare(ctx, adjust(1, -1)))._tag).toBe("Prepared")
        // The first run ended without a decision (its decision write failed); the caller retries.
        const started = Date.now()
        const again = yield* pa.prepare(ctx, adjust(1, -1))
        expect(again._tag).toBe("No")
        expect(again._tag === "No" ? again.sqlState : undefined).toBe("55P03")
        expect(Date.now() - started).toBeLessThan(3_000)
        // The first run's branch is still prepared and still holds the gate.
        expect(gate.holder).toBe(txId)
        expect(yield* pa.rollback(ctx)).toBe("RolledBack")
        expect(gate.holder).toBeUndefined()
      })
  )

  it.live("a retry interrupted while it waits at the gate leaves the first run's branch holding it", () =>
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
      expect((yield* pa.prepare(ctx, adjust(1, -1)))._tag).toBe("Prepared")
      const retry = yield* Effect.fork(pa.prepare(ctx, adjust(1, -1)))
      yield* Effect.sleep(Duration.millis(100))
      yield* Fiber.interrupt(retry)
      // Still held for the prepared branch: another transaction's branch is busy, not frozen.
      expect(gate.holder).toBe(txId)
      const other = yield* TransactionId.make
      expect(yield* gate.enter(other, "other-gid", Duration.millis(100))).toBe(false)
      expect(yield* pa.rollback(ctx)).toBe("RolledBack")
      expect(gate.holder).toBeUndefined()
    })
  )

  it.live(
    "a two-participant retry after a failed decision write aborts at once, the first run still prepared",
    () =>
      Effect.gen(function* () {
        const gate = PgParticipant.makeGate()
        const options = { gate, lockTimeout: Duration.millis(300) }
        const pa = yield* PgParticipant.makePglite({ name: "bank-a", db: banks.dbA, ...options })
        const pb = yield* PgParticipant.makePglite({ name: "bank-b", db: banks.dbB, ...options })
        const txId = yield* TransactionId.make
        const ctxs = [pa, pb].map((p) => ({ txId, branch: p.name, gid: TransactionId.gid(txId, p.name) }))
        // The first run: both prepared, no decision (a coordinator that stopped there).
        expect((yield* pa.prepare(ctxs[0]!, adjust(2, -1)))._tag).toBe("Prepared")
        expect((yield* pb.prepare(ctxs[1]!, adjust(2, 1)))._tag).toBe("Prepared")
        const retry = TwoPhaseCommit.run(
          [Participant.branch(pa, adjust(2, -1)), Participant.branch(pb, adjust(2, 1))],
          { txId, prepareTimeout: Duration.seconds(2) }
        ).pipe(Effect.provide(Layer.orDie(PgTransactionLog.layerPglite(banks.dbLog))))
        const started = Date.now()
        const outcome = yield* retry
        expect(outcome._tag).toBe("Aborted")
        expect(Date.now() - started).toBeLessThan(5_000)
        // The first run's branches are still prepared; resolving them frees the gate.
        expect(gate.holder).toBe(txId)
        expect(yield* pa.rollback(ctxs[0]!)).toBe("RolledBack")
        expect(yield* pb.rollback(ctxs[1]!)).toBe("RolledBack")
        expect(gate.holder).toBeUndefined()
      })
  )

  it.live(
    "a branch of the transaction owning the gate does not enter beside transactions found prepared at start-up",
    () =>
      Effect.gen(function* () {
        const gate = PgParticipant.makeGate()
        const lockTimeout = Duration.millis(300)
        const pa = yield* PgParticipant.makePglite({ name: "bank-a", db: banks.dbA, gate, lockTimeout })
        const txId = yield* TransactionId.make
        const ctxA = { txId, branch: pa.name, gid: TransactionId.gid(txId, pa.name) }
        expect((yield* pa.prepare(ctxA, adjust(3, -1)))._tag).toBe("Prepared")
        // Meanwhile a participant starts on an instance holding a transaction prepared by hand.
        yield* Effect.promise(() =>
          banks.dbB.exec(
            "begin; update accounts set balance = balance + 1 where id = 3; prepare transaction 'defects_by_hand'"
          )
        )
        const pb = yield* PgParticipant.makePglite({ name: "bank-b", db: banks.dbB, gate, lockTimeout })
        // The owning transaction's next branch touches the row the hand-prepared transaction holds.
        const ctxB = { txId, branch: pb.name, gid: TransactionId.gid(txId, pb.name) }
        const started = Date.now()
        const vote = yield* pb.prepare(ctxB, adjust(3, 1))
        expect(vote._tag).toBe("No")
        expect(vote._tag === "No" ? vote.reason : "").toContain("defects_by_hand")
        expect(Date.now() - started).toBeLessThan(3_000)
        expect(yield* pa.rollback(ctxA)).toBe("RolledBack")
        yield* Effect.promise(() => banks.dbB.exec("rollback prepared 'defects_by_hand'"))
        yield* pb.inDoubt
        expect(gate.holder).toBeUndefined()
      })
  )
})
