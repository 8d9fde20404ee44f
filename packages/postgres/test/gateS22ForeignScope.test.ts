/**
 * A foreign hold (a transaction found prepared on a PGlite instance that no participant of the
 * gate resolves) keeps out the branches of its own instance only. The gate is shared by every
 * PGlite participant of the process, and until 2026-12-07 such a hold refused the branches of
 * every instance on it, though a branch on another instance cannot wait on its row locks and the
 * hold waits for nothing (it is in no cycle of waits across instances). Holds are keyed by
 * instance too: the same gid prepared on two instances (copies of one data directory) is two
 * holds, and the recovery of one does not let go of the other.
 */
import { TransactionId } from "@accord/core"
import type { PGlite } from "@electric-sql/pglite"
import { afterAll, beforeAll, describe, expect, it } from "@effect/vitest"
import { Duration, Effect } from "effect"
import { Gate } from "../src/internal/gate.js"
import * as PgParticipant from "../src/PgParticipant.js"
import * as PgRecovery from "../src/PgRecovery.js"
import * as PgTransactionLog from "../src/PgTransactionLog.js"
import { adjust } from "./support/pg2pc.js"
import { seedBank } from "./support/pglite.js"

const lockTimeout = Duration.seconds(5)
const TEST_TIMEOUT = 60_000

const ctxOf = (txId: TransactionId.TransactionId, branch: string) => ({
  txId,
  branch: branch as TransactionId.BranchName,
  gid: TransactionId.gid(txId, branch as TransactionId.BranchName)
})

const preparedGids = (db: PGlite) =>
  Effect.promise(async () =>
    (await db.query<{ gid: string }>("select gid from pg_prepared_xacts")).rows.map((r) => r.gid)
  )

/** A seeded in-memory instance, closed with the scope. */
const bank = Effect.acquireRelease(
  Effect.promise(async () => {
    const db = await PgParticipant.openPglite()
    await seedBank(db)
    return db
  }),
  (db) => Effect.promise(() => db.close())
)

/** Prepares, by hand on `db`, a transaction `gid` that holds account 1. */
const prepareByHand = (db: PGlite, gid: string) =>
  Effect.promise(() =>
    db.exec(`begin; update accounts set balance = balance - 1 where id = 1; prepare transaction '${gid}'`)
  )

describe("a foreign hold on a shared PGlite gate", () => {
  let dbLog: PGlite

  beforeAll(async () => {
    dbLog = await PgParticipant.openPglite()
  }, 60_000)

  afterAll(async () => {
    await dbLog.close()
  })

  it.live(
    "refuses the branches of its own instance at once, and lets another instance's branches in",
    () =>
      Effect.gen(function* () {
        const dbA = yield* bank
        const dbB = yield* bank
        yield* prepareByHand(dbA, "by-hand")
        const gate = PgParticipant.makeGate()
        const pa = yield* PgParticipant.makePglite({ name: "bank-a", db: dbA, gate, lockTimeout })
        const pb = yield* PgParticipant.makePglite({ name: "bank-b", db: dbB, gate, lockTimeout })

        const startedAt = Date.now()
        const onB = yield* pb.commitOnePhase(ctxOf(yield* TransactionId.make, "bank-b"), adjust(1, 1))
        expect(onB._tag).toBe("Committed")
        expect(Date.now() - startedAt).toBeLessThan(Duration.toMillis(lockTimeout) / 2)
        // A branch on B prepares, and is resolved, as any does.
        const prepared = ctxOf(yield* TransactionId.make, "bank-b")
        expect((yield* pb.prepare(prepared, adjust(2, 1)))._tag).toBe("Prepared")
        expect(yield* pb.commit(prepared)).toBe("Committed")

        const refusedAt = Date.now()
        const onA = yield* pa.commitOnePhase(ctxOf(yield* TransactionId.make, "bank-a"), adjust(2, 1))
        expect(Date.now() - refusedAt).toBeLessThan(Duration.toMillis(lockTimeout) / 2)
        expect(onA._tag).toBe("No")
        if (onA._tag === "No") {
          expect(onA.sqlState).toBe("55P03")
          expect(onA.reason).toContain("'by-hand'")
        }

        yield* Effect.promise(() => dbA.exec("rollback prepared 'by-hand'"))
        expect(yield* preparedGids(dbA)).toEqual([])
        expect(yield* preparedGids(dbB)).toEqual([])
      }).pipe(Effect.scoped),
    TEST_TIMEOUT
  )

  it.live(
    "a branch kept out behind another instance's foreign hold and a transaction of its own instance is told only of the latter",
    () =>
      Effect.gen(function* () {
        const dbA = yield* bank
        const dbB = yield* bank
        yield* prepareByHand(dbA, "by-hand")
        const gate = PgParticipant.makeGate()
        yield* PgParticipant.makePglite({ name: "bank-a", db: dbA, gate, lockTimeout })
        const pb = yield* PgParticipant.makePglite({
          name: "bank-b",
          db: dbB,
          gate,
          lockTimeout: Duration.millis(300)
        })
        const first = ctxOf(yield* TransactionId.make, "bank-b")
        expect((yield* pb.prepare(first, adjust(1, 1)))._tag).toBe("Prepared")
        const second = yield* pb.commitOnePhase(ctxOf(yield* TransactionId.make, "bank-b"), adjust(2, 1))
        expect(second._tag).toBe("No")
        if (second._tag === "No") {
          expect(second.reason).toContain("busy")
          expect(second.reason).toContain(first.txId)
          expect(second.reason).not.toContain("'by-hand'")
        }
        expect(yield* pb.rollback(first)).toBe("RolledBack")
        yield* Effect.promise(() => dbA.exec("rollback prepared 'by-hand'"))
        expect(yield* preparedGids(dbA)).toEqual([])
        expect(yield* preparedGids(dbB)).toEqual([])
      }).pipe(Effect.scoped),
    TEST_TIMEOUT
  )

  it.live(
    "the same gid prepared on two instances: the recovery of one instance's branch leaves the other's foreign hold",
    () =>
      Effect.gen(function* () {
        const dbA = yield* bank
        const dbB = yield* bank
        // B's participant prepared a branch and its process stopped before any decision; A has a
        // transaction prepared under the same gid that no participant of A resolves.
        const txId = yield* TransactionId.make
        const onB = ctxOf(txId, "bank-b")
        const before = yield* PgParticipant.makePglite({ name: "bank-b", db: dbB, gate: new Gate() })
        expect((yield* before.prepare(onB, adjust(1, -1)))._tag).toBe("Prepared")
        yield* prepareByHand(dbA, onB.gid)

        const gate = PgParticipant.makeGate()
        const pa = yield* PgParticipant.makePglite({ name: "bank-a", db: dbA, gate, lockTimeout })
        const pb = yield* PgParticipant.makePglite({ name: "bank-b", db: dbB, gate, lockTimeout })
        const log = yield* PgTransactionLog.makePglite(dbLog)
        const report = yield* PgRecovery.run({
          participants: [pa, pb],
          log,
          options: { orphanAfter: Duration.zero }
        })
        expect(report.branchesRolledBack).toBe(1)
        expect(yield* preparedGids(dbB)).toEqual([])

        // A's transaction is still prepared, holding account 1: A's branches are still refused.
        expect(yield* preparedGids(dbA)).toEqual([onB.gid])
        const onA = yield* pa.commitOnePhase(ctxOf(yield* TransactionId.make, "bank-a"), adjust(2, 1))
        expect(onA._tag).toBe("No")
        if (onA._tag === "No") {
          expect(onA.sqlState).toBe("55P03")
          expect(onA.reason).toContain(onB.gid)
        }
        // B's are not.
        const next = yield* pb.commitOnePhase(ctxOf(yield* TransactionId.make, "bank-b"), adjust(1, 1))
        expect(next._tag).toBe("Committed")

        yield* Effect.promise(() => dbA.exec(`rollback prepared '${onB.gid}'`))
        expect(yield* preparedGids(dbA)).toEqual([])
      }).pipe(Effect.scoped),
    TEST_TIMEOUT
  )
})

describe("the gate's foreign holds, by instance", () => {
  const a = { closed: false }
  const b = { closed: false }

  it.live("one instance's foreign hold lets another instance's branch in and refuses its own at once", () =>
    Effect.gen(function* () {
      const gate = new Gate()
      gate.holdForeign("by-hand", "'by-hand', prepared outside Accord", a)
      expect(gate.closedByForeign(a)).toBe(true)
      expect(gate.closedByForeign(b)).toBe(false)
      const onB = yield* gate.enterHold("T1", "g1", Duration.seconds(5), b)
      expect(onB).toBeDefined()
      const startedAt = Date.now()
      expect(yield* gate.enterHold("T1", "g2", Duration.seconds(5), a)).toBeUndefined()
      expect(Date.now() - startedAt).toBeLessThan(1_000)
      expect(gate.holderDescriptionFor(a)).toContain("'by-hand'")
      expect(gate.holderDescriptionFor(b)).not.toContain("'by-hand'")
      gate.leaveHold(onB!)
      expect(gate.heldForeign("by-hand", a)).toBe(true)
    })
  )

  it.live("a foreign hold of no known instance keeps out every branch", () =>
    Effect.gen(function* () {
      const gate = new Gate()
      gate.holdForeign("by-hand", "'by-hand', prepared outside Accord")
      expect(yield* gate.enterHold("T1", "g1", Duration.seconds(5), b)).toBeUndefined()
      expect(yield* gate.enterHold("T1", "g1", Duration.seconds(5))).toBeUndefined()
    })
  )

  it.live("a participant of another instance does not take over a foreign hold of the same gid", () =>
    Effect.gen(function* () {
      const gate = new Gate()
      gate.holdForeign("g", "'g', prepared outside Accord", a)
      gate.holdFor(["g"], "found at start-up", b)
      expect(gate.heldForeign("g", a)).toBe(true)
      // B's recovery ends B's gid, not A's.
      gate.resolving("g", b)(true)
      expect(gate.heldForeign("g", a)).toBe(true)
      expect(yield* gate.enterHold("T1", "g1", Duration.millis(50), a)).toBeUndefined()
      const onB = yield* gate.enterHold("T1", "g1", Duration.millis(50), b)
      expect(onB).toBeDefined()
      gate.leaveHold(onB!)
    })
  )
})
