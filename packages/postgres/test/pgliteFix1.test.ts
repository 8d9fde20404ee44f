/**
 * A PGlite participant that finds, at start-up, an Accord branch prepared under another participant
 * name (a renamed participant, an older data directory) or any transaction it does not resolve.
 * Recovery scans only the participant's own name, so nothing here resolves such a branch, and it
 * must stay held (a branch waiting on its row locks would freeze the process). Before, each branch
 * waited `lockTimeout` and was refused as "busy", told to run "their own participant's recovery",
 * nothing was logged, and a transaction resolved by hand kept the gate closed until the next
 * in-doubt scan. Now: refused at once, the refusal and a start-up warning name the gid and the
 * participant to register with recovery; that participant's recovery resolves it as the log
 * decided; one resolved by hand lets the next branch in.
 */
import { TransactionId } from "@accord/core"
import type { PGlite } from "@electric-sql/pglite"
import { afterAll, beforeAll, describe, expect, it } from "@effect/vitest"
import { Duration, Effect, Fiber, Logger } from "effect"
import { Gate } from "../src/internal/gate.js"
import * as PgParticipant from "../src/PgParticipant.js"
import * as PgRecovery from "../src/PgRecovery.js"
import * as PgTransactionLog from "../src/PgTransactionLog.js"
import { adjust } from "./support/pg2pc.js"
import { seedBank } from "./support/pglite.js"

const lockTimeout = Duration.seconds(5)
const TEST_TIMEOUT = 120_000

const ctxOf = (txId: TransactionId.TransactionId, branch: string) => ({
  txId,
  branch: branch as TransactionId.BranchName,
  gid: TransactionId.gid(txId, branch as TransactionId.BranchName)
})

const balanceOf = (db: PGlite, id: number) =>
  Effect.promise(
    async () =>
      (await db.query<{ balance: number }>("select balance from accounts where id = $1", [id])).rows[0]
        ?.balance
  )

const preparedGids = (db: PGlite) =>
  Effect.promise(async () =>
    (await db.query<{ gid: string }>("select gid from pg_prepared_xacts")).rows.map((r) => r.gid)
  )

/** The warnings logged where `collect` is provided. */
const warningsLogged = () => {
  const warnings: Array<string> = []
  const collect = Logger.replace(
    Logger.defaultLogger,
    Logger.make(({ logLevel, message }) => {
      if (logLevel._tag === "Warning")
        warnings.push(Array.isArray(message) ? message.join(" ") : String(message))
    })
  )
  return { warnings, collect }
}

/**
 * An instance where participant `bank-old` prepared a branch (account 1, -7) and its process
 * stopped before any decision; the process starting now names its participant `bank-new`.
 */
const renamed = Effect.gen(function* () {
  const db = yield* Effect.promise(async () => {
    const db = await PgParticipant.openPglite()
    await seedBank(db)
    return db
  })
  const before = yield* PgParticipant.makePglite({ name: "bank-old", db, gate: PgParticipant.makeGate() })
  const txId = yield* TransactionId.make
  const ctx = ctxOf(txId, "bank-old")
  expect((yield* before.prepare(ctx, adjust(1, -7)))._tag).toBe("Prepared")
  yield* Effect.addFinalizer(() => Effect.promise(() => db.close()))
  return { db, txId, gid: ctx.gid }
})

describe("a PGlite participant started beside an Accord branch of another participant name", () => {
  let dbLog: PGlite

  beforeAll(async () => {
    dbLog = await PgParticipant.openPglite()
  }, 60_000)

  afterAll(async () => {
    await dbLog.close()
  })

  it.live(
    "refuses a branch at once, naming the gid and the participant to register with recovery",
    () =>
      Effect.gen(function* () {
        const { db, gid } = yield* renamed
        const p = yield* PgParticipant.makePglite({
          name: "bank-new",
          db,
          gate: PgParticipant.makeGate(),
          lockTimeout
        })
        const startedAt = Date.now()
        const vote = yield* p.commitOnePhase(ctxOf(yield* TransactionId.make, "bank-new"), adjust(2, 1))
        expect(Date.now() - startedAt).toBeLessThan(Duration.toMillis(lockTimeout) / 2)
        expect(vote._tag).toBe("No")
        if (vote._tag === "No") {
          expect(vote.sqlState).toBe("55P03")
          expect(vote.reason).toContain(gid)
          expect(vote.reason).toContain('makePglite({ name: "bank-old"')
        }
        // Still held: it is still prepared, holding account 1.
        expect(yield* preparedGids(db)).toEqual([gid])
        yield* Effect.promise(() => db.exec(`rollback prepared '${gid}'`))
      }).pipe(Effect.scoped),
    TEST_TIMEOUT
  )

  it.live(
    "warns when it is made, naming the gid and what resolves it",
    () =>
      Effect.gen(function* () {
        const { db, gid } = yield* renamed
        const { warnings, collect } = warningsLogged()
        yield* PgParticipant.makePglite({ name: "bank-new", db, gate: PgParticipant.makeGate() }).pipe(
          Effect.provide(collect)
        )
        expect(warnings.some((w) => w.includes(gid) && w.includes('name: "bank-old"'))).toBe(true)
        yield* Effect.promise(() => db.exec(`rollback prepared '${gid}'`))
      }).pipe(Effect.scoped),
    TEST_TIMEOUT
  )

  it.live(
    "stops warning once a participant of the former name has taken the gid over",
    () =>
      Effect.gen(function* () {
        const { db, gid } = yield* renamed
        const { warnings, collect } = warningsLogged()
        const gate = PgParticipant.makeGate()
        const p = yield* PgParticipant.makePglite({ name: "bank-new", db, gate, lockTimeout })
        yield* PgParticipant.makePglite({ name: "bank-old", db, gate, lockTimeout })
        // Held for bank-old's recovery now: branches wait for it, nobody is refused.
        yield* p.inDoubt.pipe(Effect.provide(collect))
        expect(warnings.filter((w) => w.includes(gid) && w.includes("is refused"))).toEqual([])
        yield* Effect.promise(() => db.exec(`rollback prepared '${gid}'`))
      }).pipe(Effect.scoped),
    TEST_TIMEOUT
  )

  it.live(
    "a participant of the former name registered with recovery rolls it back (no decision) and the gate opens",
    () =>
      Effect.gen(function* () {
        const { db } = yield* renamed
        const gate = PgParticipant.makeGate()
        const p = yield* PgParticipant.makePglite({ name: "bank-new", db, gate, lockTimeout })
        const former = yield* PgParticipant.makePglite({ name: "bank-old", db, gate, lockTimeout })
        const log = yield* PgTransactionLog.makePglite(dbLog)
        const report = yield* PgRecovery.run({
          participants: [p, former],
          log,
          options: { orphanAfter: Duration.zero }
        })
        expect(report.presumedAborts).toBe(1)
        expect(report.branchesRolledBack).toBe(1)
        expect(gate.holder).toBeUndefined()
        expect(yield* preparedGids(db)).toEqual([])
        const ok = yield* p.commitOnePhase(ctxOf(yield* TransactionId.make, "bank-new"), adjust(1, 1))
        expect(ok._tag).toBe("Committed")
        expect(yield* balanceOf(db, 1)).toBe(101)
      }).pipe(Effect.scoped),
    TEST_TIMEOUT
  )

  it.live(
    "a participant of the former name registered with recovery commits it as the log decided",
    () =>
      Effect.gen(function* () {
        const { db, txId, gid } = yield* renamed
        const gate = PgParticipant.makeGate()
        const p = yield* PgParticipant.makePglite({ name: "bank-new", db, gate, lockTimeout })
        const former = yield* PgParticipant.makePglite({ name: "bank-old", db, gate, lockTimeout })
        const log = yield* PgTransactionLog.makePglite(dbLog)
        yield* log.decide({
          txId,
          decision: "commit",
          branches: [{ branch: former.name, gid }],
          decidedAt: Date.now()
        })
        const report = yield* PgRecovery.run({
          participants: [p, former],
          log,
          options: { orphanAfter: Duration.zero }
        })
        expect(report.branchesCommitted).toBe(1)
        expect(gate.holder).toBeUndefined()
        expect(yield* balanceOf(db, 1)).toBe(93)
        const ok = yield* p.commitOnePhase(ctxOf(yield* TransactionId.make, "bank-new"), adjust(1, 1))
        expect(ok._tag).toBe("Committed")
      }).pipe(Effect.scoped),
    TEST_TIMEOUT
  )

  it.live(
    "resolved by hand, the next branch enters without waiting for an in-doubt scan",
    () =>
      Effect.gen(function* () {
        const { db, gid } = yield* renamed
        const gate = PgParticipant.makeGate()
        const p = yield* PgParticipant.makePglite({ name: "bank-new", db, gate, lockTimeout })
        yield* Effect.promise(() => db.exec(`rollback prepared '${gid}'`))
        const ok = yield* p.commitOnePhase(ctxOf(yield* TransactionId.make, "bank-new"), adjust(1, 1))
        expect(ok._tag).toBe("Committed")
        expect(yield* balanceOf(db, 1)).toBe(101)
        expect(gate.holder).toBeUndefined()
      }).pipe(Effect.scoped),
    TEST_TIMEOUT
  )
})

describe("the gate's foreign holds", () => {
  it.live("refuse an entry at once, where any other hold makes it wait", () =>
    Effect.gen(function* () {
      const gate = new Gate()
      gate.holdForeign("by-hand", "'by-hand', prepared outside Accord")
      const startedAt = Date.now()
      expect(yield* gate.enter("T1", "g1", Duration.seconds(5))).toBe(false)
      expect(Date.now() - startedAt).toBeLessThan(1_000)
      expect(gate.holderDescription).toContain("'by-hand'")
      // A participant that resolves it (held as its own start-up branch) turns the refusal into a wait.
      gate.holdFor(["by-hand"], "found at start-up")
      const waited = yield* Effect.fork(gate.enterHold("T1", "g1", Duration.seconds(5)))
      yield* Effect.sleep(Duration.millis(50))
      gate.resolving("by-hand")(true)
      const ticket = yield* Fiber.join(waited)
      expect(ticket).toBeDefined()
      gate.leaveHold(ticket!)
      expect(gate.holder).toBeUndefined()
    })
  )
})
