import { Participant, TransactionId, TransactionLog, TwoPhaseCommit } from "@accord/core"
import type { PGlite } from "@electric-sql/pglite"
import { afterAll, beforeAll, describe, expect, it } from "@effect/vitest"
import { Duration, Effect, Fiber, Ref } from "effect"
import postgres from "postgres"
import * as PgParticipant from "../src/PgParticipant.js"
import * as PgRecovery from "../src/PgRecovery.js"
import * as PgTransactionLog from "../src/PgTransactionLog.js"
import * as TestDatabase from "../src/TestDatabase.js"
import {
  adjust,
  BANK_DDL,
  branchContext,
  createBank,
  endAndDrop,
  prepareOnly,
  preparedIn
} from "./support/pg2pc.js"

/** Real clock and randomness (ids and ages matter here), with a scope. */
const scopedLive = <A, E>(
  name: string,
  f: () => Effect.Effect<A, E, import("effect").Scope.Scope>,
  timeout?: number
) => it.live(name, () => Effect.scoped(f()), timeout)

const server = await TestDatabase.server()
const DB_A = "accord_t_pg_rec_a"
const DB_B = "accord_t_pg_rec_b"
const DB_LOG = "accord_t_pg_rec_log"

/** What the recovery scenarios need from a setup, on PostgreSQL or on PGlite. */
interface Setup {
  readonly participants: () => Effect.Effect<
    readonly [PgParticipant.PgParticipant, PgParticipant.PgParticipant],
    unknown
  >
  readonly log: () => Effect.Effect<PgTransactionLog.PgTransactionLog, unknown, import("effect").Scope.Scope>
  readonly balance: (which: "a" | "b", id: number) => Effect.Effect<number>
  readonly prepared: () => Effect.Effect<ReadonlyArray<string>>
  /** Runs SQL on a participant database from outside Accord (an operator). */
  readonly operator: (which: "a" | "b", text: string) => Effect.Effect<void>
}

/** Prepares a transfer of `amount` from a/id to b/id without deciding: a coordinator that stops here. */
const prepareTransfer = (
  pa: PgParticipant.PgParticipant,
  pb: PgParticipant.PgParticipant,
  id: number,
  amount: number
) => Effect.map(prepareOnly([pa, pb], id, amount), ({ txId, ctxs: [ca, cb] }) => ({ txId, ca: ca!, cb: cb! }))

const scenarios = (name: string, setup: () => Setup) => {
  const now = { orphanAfter: Duration.zero }

  scopedLive(`${name}: a coordinator that stops after its commit decision is finished by recovery`, () =>
    Effect.gen(function* () {
      const s = setup()
      const [pa, pb] = yield* s.participants()
      const log = yield* s.log()
      const { txId, ca, cb } = yield* prepareTransfer(pa, pb, 1, 10)
      yield* log.decide({ txId, decision: "commit", branches: [ca, cb], decidedAt: Date.now() })
      const report = yield* PgRecovery.run({ participants: [pa, pb], log, options: now })
      expect(report.branchesCommitted).toBe(2)
      expect(report.heuristics).toEqual([])
      expect(yield* s.balance("a", 1)).toBe(90)
      expect(yield* s.balance("b", 1)).toBe(110)
      expect(yield* pa.state(ca)).toBe("committed")
      expect(yield* s.prepared()).toEqual([])
      expect((yield* log.unfinished()).map((d) => d.txId)).not.toContain(txId)
    })
  )

  scopedLive(`${name}: a coordinator that stops before its decision is rolled back by recovery`, () =>
    Effect.gen(function* () {
      const s = setup()
      const [pa, pb] = yield* s.participants()
      const log = yield* s.log()
      const { txId, ca, cb } = yield* prepareTransfer(pa, pb, 2, 10)
      const report = yield* PgRecovery.run({ participants: [pa, pb], log, options: now })
      expect(report.branchesRolledBack).toBe(2)
      expect(report.presumedAborts).toBeGreaterThanOrEqual(1)
      expect(yield* s.balance("a", 2)).toBe(100)
      expect(yield* s.balance("b", 2)).toBe(100)
      expect(yield* pb.state(cb)).toBe("aborted")
      expect(yield* s.prepared()).toEqual([])
      // The coordinator comes back and tries to commit: the presumed abort already holds.
      const late = yield* log.decide({ txId, decision: "commit", branches: [ca, cb], decidedAt: Date.now() })
      expect(late.decision).toBe("abort")
    })
  )

  scopedLive(`${name}: recovery run twice changes nothing the second time`, () =>
    Effect.gen(function* () {
      const s = setup()
      const [pa, pb] = yield* s.participants()
      const log = yield* s.log()
      const committed = yield* prepareTransfer(pa, pb, 3, 5)
      yield* log.decide({
        txId: committed.txId,
        decision: "commit",
        branches: [committed.ca, committed.cb],
        decidedAt: Date.now()
      })
      const first = yield* PgRecovery.run({ participants: [pa, pb], log, options: now })
      expect(first.branchesCommitted).toBe(2)
      const balances = [
        yield* s.balance("a", 3),
        yield* s.balance("b", 3),
        yield* s.balance("a", 4),
        yield* s.balance("b", 4)
      ]
      const second = yield* PgRecovery.run({ participants: [pa, pb], log, options: now })
      expect(second).toMatchObject({
        transactionsFinished: 0,
        branchesCommitted: 0,
        branchesRolledBack: 0,
        presumedAborts: 0,
        heuristics: [],
        unresolved: []
      })
      expect([
        yield* s.balance("a", 3),
        yield* s.balance("b", 3),
        yield* s.balance("a", 4),
        yield* s.balance("b", 4)
      ]).toEqual(balances)
      expect(balances).toEqual([95, 105, 100, 100])
      expect(yield* s.prepared()).toEqual([])
    })
  )

  scopedLive(
    `${name}: a manual ROLLBACK PREPARED after the commit decision is reported by recovery as a heuristic`,
    () =>
      Effect.gen(function* () {
        const s = setup()
        const [pa, pb] = yield* s.participants()
        const log = yield* s.log()
        const { txId, ca, cb } = yield* prepareTransfer(pa, pb, 5, 7)
        yield* log.decide({ txId, decision: "commit", branches: [ca, cb], decidedAt: Date.now() })
        yield* s.operator("a", `ROLLBACK PREPARED '${ca.gid}'`)
        const report = yield* PgRecovery.run({ participants: [pa, pb], log, options: now })
        expect(report.heuristics.map((h) => [h.txId, h.branch])).toEqual([[txId, "bank-a"]])
        expect((yield* log.heuristics).some((h) => h.txId === txId && h.branch === "bank-a")).toBe(true)
        expect(yield* s.balance("a", 5)).toBe(100)
        expect(yield* s.balance("b", 5)).toBe(107)
        expect(yield* s.prepared()).toEqual([])
      })
  )

  scopedLive(`${name}: young prepared branches are left to their coordinator`, () =>
    Effect.gen(function* () {
      const s = setup()
      const [pa, pb] = yield* s.participants()
      const log = yield* s.log()
      const { txId, ca, cb } = yield* prepareTransfer(pa, pb, 6, 1)
      const report = yield* PgRecovery.run({
        participants: [pa, pb],
        log,
        options: { orphanAfter: Duration.minutes(5) }
      })
      expect(report.youngLeft).toBe(2)
      expect(yield* pa.state(ca)).toBe("prepared")
      // Its coordinator finishes it.
      yield* log.decide({ txId, decision: "commit", branches: [ca, cb], decidedAt: Date.now() })
      expect(yield* pa.commit(ca)).toBe("Committed")
      expect(yield* pb.commit(cb)).toBe("Committed")
      yield* log.complete(txId)
      expect(yield* s.prepared()).toEqual([])
    })
  )
}

describe.skipIf(server === undefined)("PgRecovery on PostgreSQL", () => {
  const adminUrl = server?.adminUrl ?? ""
  let a: postgres.Sql
  let b: postgres.Sql
  let logSql: postgres.Sql

  beforeAll(async () => {
    a = postgres(await createBank(adminUrl, DB_A, 100, 100), { max: 8, onnotice: () => {} })
    b = postgres(await createBank(adminUrl, DB_B, 100, 100), { max: 8, onnotice: () => {} })
    logSql = postgres(await TestDatabase.createDatabase(adminUrl, DB_LOG), { max: 8, onnotice: () => {} })
  }, 60_000)

  afterAll(() => endAndDrop(adminUrl, [a, b, logSql], [DB_A, DB_B], [DB_A, DB_B, DB_LOG]), 60_000)

  const setup = (): Setup => ({
    participants: () =>
      Effect.all([
        PgParticipant.make({ name: "bank-a", sql: a }),
        PgParticipant.make({ name: "bank-b", sql: b })
      ]),
    log: () => PgTransactionLog.make({ sql: logSql }),
    balance: (which, id) =>
      Effect.promise(async () => {
        const rows = await (which === "a" ? a : b)<
          { balance: number }[]
        >`select balance from accounts where id = ${id}`
        return rows[0]!.balance
      }),
    prepared: () => Effect.promise(async () => (await preparedIn(adminUrl, [DB_A, DB_B])).map((p) => p.gid)),
    operator: (which, text) => Effect.promise(() => (which === "a" ? a : b).unsafe(text)).pipe(Effect.asVoid)
  })

  scenarios("PostgreSQL", setup)

  it.live(
    "recovery racing live transactions never splits one",
    () =>
      Effect.gen(function* () {
        const s = setup()
        const [pa, pb] = yield* s.participants()
        const log = yield* PgTransactionLog.make({ sql: logSql, groupCommit: true })
        const totalOf = (sql: postgres.Sql) =>
          Effect.promise(
            async () => (await sql<{ t: number }[]>`select sum(balance)::int as t from accounts`)[0]!.t
          )
        const before = (yield* totalOf(a)) + (yield* totalOf(b))
        const passes = yield* Ref.make(0)
        // A recovery loop that presumes abort for every prepared branch it sees, immediately.
        const sweeper = yield* PgRecovery.run({
          participants: [pa, pb],
          log,
          options: { orphanAfter: Duration.zero }
        }).pipe(
          Effect.tap(() => Ref.update(passes, (n) => n + 1)),
          Effect.forever,
          Effect.fork
        )
        const outcomes = yield* Effect.forEach(
          Array.from({ length: 120 }, (_, i) => i),
          (i) =>
            TwoPhaseCommit.run([
              Participant.branch(pa, adjust(50 + (i % 50), -1)),
              Participant.branch(pb, adjust(50 + (i % 50), 1))
            ]).pipe(Effect.provideService(TransactionLog.TransactionLog, log)),
          { concurrency: 12 }
        )
        yield* Fiber.interrupt(sweeper)
        const final = yield* PgRecovery.run({
          participants: [pa, pb],
          log,
          options: { orphanAfter: Duration.zero }
        })
        expect(yield* Ref.get(passes)).toBeGreaterThan(1)
        expect(final.heuristics).toEqual([])
        for (const outcome of outcomes) {
          const states = yield* Effect.all([
            pa.state(branchContext(outcome.txId, pa)),
            pb.state(branchContext(outcome.txId, pb))
          ])
          // All or nothing, and as the outcome said.
          expect(states[0]).toBe(states[1])
          expect(states[0]).toBe(outcome._tag === "Aborted" ? "aborted" : "committed")
        }
        const committed = outcomes.filter((o) => o._tag !== "Aborted").length
        expect(committed).toBeGreaterThan(0)
        expect((yield* totalOf(a)) + (yield* totalOf(b))).toBe(before)
        expect(yield* s.prepared()).toEqual([])
      }).pipe(Effect.scoped),
    120_000
  )

  scopedLive("completed transactions are garbage-collected: markers and log rows", () =>
    Effect.gen(function* () {
      const pa = yield* PgParticipant.make({ name: "bank-a", sql: a, markerGrace: Duration.zero })
      const pb = yield* PgParticipant.make({ name: "bank-b", sql: b, markerGrace: Duration.zero })
      const log = yield* PgTransactionLog.make({ sql: logSql })
      const outcome = yield* TwoPhaseCommit.run([
        Participant.branch(pa, adjust(90, -1)),
        Participant.branch(pb, adjust(90, 1))
      ]).pipe(Effect.provideService(TransactionLog.TransactionLog, log))
      expect(outcome._tag).toBe("Committed")
      const report = yield* PgRecovery.run({
        participants: [pa, pb],
        log,
        options: { gc: { after: Duration.zero } }
      })
      expect(report.decisionsPurged).toBeGreaterThanOrEqual(1)
      const markers = yield* Effect.promise(
        () => a`select count(*)::int as n from accord_branch where tx_id = ${outcome.txId}`
      )
      expect(markers[0]!.n).toBe(0)
      expect((yield* log.decision(outcome.txId))._tag).toBe("None")
      // The backstop: old markers by age.
      yield* Effect.promise(
        () =>
          a`insert into accord_branch (gid, tx_id, branch, created_at) values ('accord_old', 'x', 'bank-a', now() - interval '2 days')`
      )
      expect(yield* pa.gcMarkers(Duration.days(1))).toBe(1)
    })
  )

  scopedLive(
    "garbage collection reads past the oldest completed decisions of other services' participants",
    () =>
      Effect.gen(function* () {
        // Found by a review (2026-12-07): a pass read the oldest `limit` completed decisions and
        // skipped those naming a participant it does not have; once those filled the page, this
        // recovery purged nothing ever again (0, 0, 0 in three passes here).
        const pa = yield* PgParticipant.make({ name: "bank-a", sql: a, markerGrace: Duration.zero })
        const log = yield* PgTransactionLog.make({ sql: logSql, completion: "immediate" })
        const decided = (branches: ReadonlyArray<string>) =>
          Effect.gen(function* () {
            const txId = yield* TransactionId.make
            yield* log.decide({
              txId,
              decision: "commit",
              branches: branches.map((name) => ({
                branch: name as TransactionId.BranchName,
                gid: TransactionId.gid(txId, name as TransactionId.BranchName)
              })),
              decidedAt: Date.now()
            })
            yield* log.complete(txId)
            yield* Effect.sleep(Duration.millis(5))
            return txId
          })
        const foreign = [yield* decided(["bank-a", "other-svc"]), yield* decided(["bank-a", "other-svc"])]
        const own: Array<string> = []
        for (let i = 0; i < 6; i++) own.push(yield* decided(["bank-a"]))
        let purged = 0
        for (let pass = 0; pass < 3; pass++) {
          const report = yield* PgRecovery.run({
            participants: [pa],
            log,
            options: { orphanAfter: Duration.zero, gc: { after: Duration.zero, limit: 2 } }
          })
          purged += report.decisionsPurged
        }
        expect(purged).toBe(6)
        for (const txId of own)
          expect((yield* log.decision(txId as TransactionId.TransactionId))._tag).toBe("None")
        // The other service's decisions stay, for its own recovery.
        for (const txId of foreign) expect((yield* log.decision(txId))._tag).toBe("Some")
        yield* log.purge(foreign)
      })
  )
})

describe("PgRecovery on PGlite", () => {
  let dbA: PGlite
  let dbB: PGlite
  let dbLog: PGlite

  beforeAll(async () => {
    ;[dbA, dbB, dbLog] = await Promise.all([
      PgParticipant.openPglite(),
      PgParticipant.openPglite(),
      PgParticipant.openPglite()
    ])
    for (const db of [dbA, dbB]) {
      await db.exec(BANK_DDL)
      await db.exec("insert into accounts (id, balance) select g, 100 from generate_series(1, 100) g")
    }
  }, 120_000)

  afterAll(async () => {
    for (const db of [dbA, dbB]) {
      expect((await db.query("select gid from pg_prepared_xacts")).rows).toEqual([])
      await db.close()
    }
    await dbLog?.close()
  })

  const gate = PgParticipant.makeGate()
  scenarios("PGlite", () => ({
    participants: () =>
      Effect.all([
        PgParticipant.makePglite({ name: "bank-a", db: dbA, gate }),
        PgParticipant.makePglite({ name: "bank-b", db: dbB, gate })
      ]),
    log: () => PgTransactionLog.makePglite(dbLog),
    balance: (which, id) =>
      Effect.promise(async () => {
        const db = which === "a" ? dbA : dbB
        return (await db.query<{ balance: number }>("select balance from accounts where id = $1", [id]))
          .rows[0]!.balance
      }),
    prepared: () =>
      Effect.promise(async () => [
        ...(await dbA.query<{ gid: string }>("select gid from pg_prepared_xacts")).rows.map((r) => r.gid),
        ...(await dbB.query<{ gid: string }>("select gid from pg_prepared_xacts")).rows.map((r) => r.gid)
      ]),
    operator: (which, text) =>
      Effect.promise(() => (which === "a" ? dbA : dbB).exec(text)).pipe(Effect.asVoid)
  }))
})
