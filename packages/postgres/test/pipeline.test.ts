/**
 * Pipelined works (`Pipeline`) on PostgreSQL: a branch's BEGIN, statements, marker and PREPARE sent
 * before any answer is read, and every way the branch can then have to vote No although the server
 * prepared it (a refused check, a statement that failed on this side and was never sent).
 */
import { Participant, TransactionLog, TwoPhaseCommit } from "@accord/core"
import { afterAll, beforeAll, describe, expect, it } from "@effect/vitest"
import { integer, pgTable } from "drizzle-orm/pg-core"
import { drizzle } from "drizzle-orm/postgres-js"
import { eq, sql as dsql } from "drizzle-orm"
import { Effect } from "effect"
import postgres from "postgres"
import * as Barrier from "../src/Barrier.js"
import * as PgParticipant from "../src/PgParticipant.js"
import * as Pipeline from "../src/Pipeline.js"
import * as TestDatabase from "../src/TestDatabase.js"
import {
  balance,
  type CountingSql,
  countingPool,
  createBank,
  endAndDropNothingOpen,
  preparedIn
} from "./support/pg2pc.js"
import { usePgliteBanks } from "./support/pglite.js"

const server = await TestDatabase.server()
const DB_A = "accord_t_pipeline_a"
const DB_B = "accord_t_pipeline_b"

const UPDATE = "update accounts set balance = balance + $1 where id = $2"
const move = (id: number, delta: number, check?: Pipeline.Check): Pipeline.Statement =>
  check === undefined ? { text: UPDATE, params: [delta, id] } : { text: UPDATE, params: [delta, id], check }

/** The marker and PREPARE message of a branch (`markerAndPrepareSql`). */
const isPrepareScript = (statement: string) => /; PREPARE TRANSACTION '/.test(statement)

const withLog = <A, E>(effect: Effect.Effect<A, E, TransactionLog.TransactionLog>) =>
  effect.pipe(Effect.provide(TransactionLog.layerMemory))

describe("Pipeline.make", () => {
  it("refuses an empty list and statements that control the transaction", () => {
    expect(() => Pipeline.make([])).toThrow(TypeError)
    for (const text of [
      "COMMIT",
      "  begin",
      "rollback",
      "END",
      "abort",
      "prepare transaction 'x'",
      "start transaction"
    ]) {
      expect(() => Pipeline.make([move(1, 1), { text }]), text).toThrow(/controls the transaction/)
    }
    expect(() => Pipeline.make([{ text: "-- settle\ncommit" }])).toThrow("(COMMIT)")
    expect(() => Pipeline.make([{ text: "/* undo */ rollback" }])).toThrow("(ROLLBACK)")
    expect(() => Pipeline.make([{ text: "select 1 as committed" }, { text: "savepoint s" }])).not.toThrow()
  })

  it("expectRows accepts the count it names and explains any other", () => {
    expect(Pipeline.expectRows(1)({ rows: [], count: 1 })).toBeUndefined()
    expect(Pipeline.expectRows(1)({ rows: [], count: 0 })).toBe("expected 1 row, got 0")
    expect(Pipeline.expectRows(2)({ rows: [], count: 3 })).toBe("expected 2 rows, got 3")
  })
})

describe.skipIf(server === undefined)("Pipeline on postgres.js participants", () => {
  const adminUrl = server?.adminUrl ?? ""
  let a: CountingSql
  let b: CountingSql
  /** Bank A again, on one connection: the lock tests' participant, its statements already prepared on it. */
  let one: CountingSql
  let urlA: string
  let admin: postgres.Sql

  beforeAll(async () => {
    urlA = await createBank(adminUrl, DB_A, 10, 100)
    a = countingPool(urlA)
    one = countingPool(urlA, 1)
    b = countingPool(await createBank(adminUrl, DB_B, 10, 100))
    admin = postgres(adminUrl, { max: 2, onnotice: () => {} })
  }, 60_000)

  afterAll(
    () => endAndDropNothingOpen(adminUrl, [a?.sql, b?.sql, one?.sql, admin], [DB_A, DB_B], [DB_A, DB_B]),
    60_000
  )

  const participants = Effect.gen(function* () {
    const pa = yield* PgParticipant.make({ name: "bank-a", sql: a.sql })
    const pb = yield* PgParticipant.make({ name: "bank-b", sql: b.sql })
    return { pa, pb }
  })

  /** The statements `pool` sends while `effect` runs. */
  const sentDuring = <A, E, R>(pool: CountingSql, effect: Effect.Effect<A, E, R>) =>
    Effect.gen(function* () {
      const from = pool.statements.length
      const value = yield* effect
      return { value, sent: pool.statements.slice(from) }
    })

  /**
   * Runs a transfer of account `id` whose bank-a branch (on `one`, warmed first: postgres.js
   * describes a statement new to a connection before it sends anything after it) finds the row
   * locked elsewhere; returns what that branch had sent once its UPDATE waited on the lock.
   */
  const blockedTransfer = (id: number, work: (id: number, delta: number) => PgParticipant.PgWork) =>
    Effect.gen(function* () {
      const pa = yield* PgParticipant.make({ name: "bank-a", sql: one.sql })
      const { pb } = yield* participants
      const transfer = withLog(
        TwoPhaseCommit.run([Participant.branch(pa, work(id, -5)), Participant.branch(pb, work(id, 5))])
      )
      expect((yield* transfer)._tag).toBe("Committed")
      const holder = yield* Effect.promise(() => a.sql.reserve())
      yield* Effect.promise(() =>
        holder.unsafe(`begin; select * from accounts where id = ${id} for update`).simple()
      )
      const from = one.statements.length
      const run = yield* Effect.fork(transfer)
      for (let i = 0; i < 400; i++) {
        const waiting = yield* Effect.promise(
          () => admin`select 1 from pg_stat_activity where datname = ${DB_A} and wait_event_type = 'Lock'`
        )
        if (waiting.length > 0) break
        yield* Effect.sleep("25 millis")
      }
      const sentWhileBlocked = one.statements.slice(from)
      yield* Effect.promise(() => holder.unsafe("rollback"))
      holder.release()
      const outcome = yield* run.await.pipe(Effect.flatten)
      expect(outcome._tag).toBe("Committed")
      expect(yield* balance(a.sql, id)).toBe(90)
      expect(yield* balance(b.sql, id)).toBe(110)
      return sentWhileBlocked
    })

  it.live("the marker and PREPARE are sent while the branch's statement still waits for its answer", () =>
    Effect.gen(function* () {
      const sent = yield* blockedTransfer(1, (id, delta) => Pipeline.make([move(id, delta)]))
      expect(sent.map((s) => (isPrepareScript(s) ? "MARKER; PREPARE" : s.trim()))).toEqual([
        "BEGIN",
        UPDATE,
        "MARKER; PREPARE"
      ])
    })
  )

  it.live("a function work sends the PREPARE only after its statement answered (the contrast)", () =>
    Effect.gen(function* () {
      const sent = yield* blockedTransfer(2, (id, delta) => (s) => s.query(UPDATE, [delta, id]))
      expect(sent.map((s) => s.trim())).toEqual(["BEGIN", UPDATE])
    })
  )

  it.live(
    "drizzle builders and passing checks commit; each branch is BEGIN, its statements, one marker+PREPARE, COMMIT PREPARED",
    () =>
      Effect.gen(function* () {
        const { pa, pb } = yield* participants
        const accounts = pgTable("accounts", {
          id: integer("id").primaryKey(),
          balance: integer("balance").notNull()
        })
        const db = drizzle(a.sql)
        const debit = db
          .update(accounts)
          .set({ balance: dsql`${accounts.balance} - 7` })
          .where(eq(accounts.id, 3))
        const { value: outcome, sent } = yield* sentDuring(
          a,
          withLog(
            TwoPhaseCommit.run([
              Participant.branch(
                pa,
                Pipeline.make([{ query: debit, check: Pipeline.expectRows(1) }, { text: "select 1" }])
              ),
              Participant.branch(pb, Pipeline.make([move(3, 7, Pipeline.expectRows(1))]))
            ])
          )
        )
        expect(outcome._tag).toBe("Committed")
        expect(
          sent.map((s) => (isPrepareScript(s) ? "MARKER; PREPARE" : s.replace(/'.*'/, "'gid'").trim()))
        ).toEqual(["BEGIN", debit.toSQL().sql, "select 1", "MARKER; PREPARE", "COMMIT PREPARED 'gid'"])
        expect(yield* balance(a.sql, 3)).toBe(93)
        expect(yield* balance(b.sql, 3)).toBe(107)
      })
  )

  it.live(
    "a check that refuses an answer rolls the prepared branch back: a No, nothing moved, nothing prepared",
    () =>
      Effect.gen(function* () {
        const { pa, pb } = yield* participants
        // Bank B has no account 99: the credit updates no row and the check refuses it.
        const { value: outcome, sent } = yield* sentDuring(
          b,
          withLog(
            TwoPhaseCommit.run([
              Participant.branch(pa, Pipeline.make([move(4, -10, Pipeline.expectRows(1))])),
              Participant.branch(pb, Pipeline.make([move(99, 10, Pipeline.expectRows(1))]))
            ])
          )
        )
        expect(outcome._tag).toBe("Aborted")
        const vote = outcome.votes.find((v) => v.branch === "bank-b")?.vote
        expect(vote).toMatchObject({
          _tag: "No",
          reason: "statement 1 of the pipelined work: expected 1 row, got 0"
        })
        expect(sent.some((s) => s.startsWith("ROLLBACK PREPARED"))).toBe(true)
        expect(yield* balance(a.sql, 4)).toBe(100)
        expect(yield* Effect.promise(() => preparedIn(adminUrl, [DB_A, DB_B]))).toEqual([])
      })
  )

  it.live(
    "a statement the server refuses is a No with its SQLSTATE; nothing is prepared and the connection is clean",
    () =>
      Effect.gen(function* () {
        const { pa, pb } = yield* participants
        // balance >= 0 is a CHECK: the debit fails with 23514, so the marker finds the transaction aborted.
        const outcome = yield* withLog(
          TwoPhaseCommit.run([
            Participant.branch(pa, Pipeline.make([move(5, -1_000), { text: "select 1" }])),
            Participant.branch(pb, Pipeline.make([move(5, 1_000)]))
          ])
        )
        expect(outcome._tag).toBe("Aborted")
        expect(outcome.votes.find((v) => v.branch === "bank-a")?.vote).toMatchObject({
          _tag: "No",
          sqlState: "23514"
        })
        expect(yield* balance(b.sql, 5)).toBe(100)
        expect(yield* Effect.promise(() => preparedIn(adminUrl, [DB_A, DB_B]))).toEqual([])
        const idle = yield* Effect.promise(
          () =>
            admin`select state from pg_stat_activity where datname = ${DB_A} and state like 'idle in transaction%'`
        )
        expect(idle).toEqual([])
        const next = yield* withLog(
          TwoPhaseCommit.run([
            Participant.branch(pa, Pipeline.make([move(5, -1)])),
            Participant.branch(pb, Pipeline.make([move(5, 1)]))
          ])
        )
        expect(next._tag).toBe("Committed")
        expect(yield* balance(a.sql, 5)).toBe(99)
      })
  )

  it.live(
    "a statement that fails on this side is never sent; the PREPARE of the rest is rolled back: a No",
    () =>
      Effect.gen(function* () {
        const { pa, pb } = yield* participants
        // postgres.js serialises the parameter when it writes the statement; this one throws there,
        // so the server sees BEGIN, the debit, the marker and the PREPARE, and prepares them.
        const unsendable = {
          toJSON() {
            throw new Error("cannot serialise this parameter")
          }
        }
        const { value: outcome, sent } = yield* sentDuring(
          a,
          withLog(
            TwoPhaseCommit.run([
              Participant.branch(
                pa,
                Pipeline.make([move(6, -10), { text: "select $1::jsonb as doc", params: [unsendable] }])
              ),
              Participant.branch(pb, Pipeline.make([move(6, 10)]))
            ])
          )
        )
        expect(outcome._tag).toBe("Aborted")
        // The driver's own error (postgres.js names the parameter's type), with no SQLSTATE.
        expect(outcome.votes.find((v) => v.branch === "bank-a")?.vote).toMatchObject({
          _tag: "No",
          sqlState: undefined
        })
        expect(sent.some((s) => s.startsWith("ROLLBACK PREPARED"))).toBe(true)
        expect(yield* balance(a.sql, 6)).toBe(100)
        expect(yield* balance(b.sql, 6)).toBe(100)
        expect(yield* Effect.promise(() => preparedIn(adminUrl, [DB_A, DB_B]))).toEqual([])
      })
  )

  it.live(
    "a statement still blocked at the prepare bound: aborted, nothing prepared, the connection given back",
    () =>
      Effect.gen(function* () {
        // A pool new to the UPDATE: postgres.js describes it before it sends the marker and PREPARE.
        const cold = countingPool(urlA, 4)
        const pa = yield* PgParticipant.make({ name: "bank-a", sql: cold.sql })
        const { pb } = yield* participants
        const holder = yield* Effect.promise(() => a.sql.reserve())
        yield* Effect.promise(() =>
          holder.unsafe("begin; select * from accounts where id = 7 for update").simple()
        )
        const from0 = cold.statements.length
        const outcome = yield* withLog(
          TwoPhaseCommit.run(
            [
              Participant.branch(pa, Pipeline.make([move(7, -10)])),
              Participant.branch(pb, Pipeline.make([move(7, 10)]))
            ],
            { prepareTimeout: "300 millis" }
          )
        )
        // Cancelled and rolled back on its own connection, which was not ended: postgres.js hung a
        // reserved connection whose queued statement (the marker and PREPARE, behind the UPDATE's
        // describe) had been cancelled, until the clean-up terminated its session.
        expect(cold.statements.slice(from0).filter((s) => s.includes("pg_terminate_backend"))).toEqual([])
        yield* Effect.promise(() => holder.unsafe("rollback"))
        holder.release()
        expect(outcome._tag).toBe("Aborted")
        expect(yield* balance(a.sql, 7)).toBe(100)
        expect(yield* balance(b.sql, 7)).toBe(100)
        expect(yield* Effect.promise(() => preparedIn(adminUrl, [DB_A, DB_B]))).toEqual([])
        const next = yield* withLog(
          TwoPhaseCommit.run([
            Participant.branch(pa, Pipeline.make([move(7, -1)])),
            Participant.branch(pb, Pipeline.make([move(7, 1)]))
          ])
        )
        expect(next._tag).toBe("Committed")
        yield* Effect.promise(() => cold.sql.end({ timeout: 5 }))
      })
  )

  it.live(
    "at the prepare bound on a connection that already knows the statements, the running one is cancelled and the session closed, not reused",
    () =>
      Effect.gen(function* () {
        const pa = yield* PgParticipant.make({ name: "bank-a", sql: one.sql })
        const { pb } = yield* participants
        const transfer = (options?: TwoPhaseCommit.Options) =>
          withLog(
            TwoPhaseCommit.run(
              [
                Participant.branch(pa, Pipeline.make([move(3, -1), { text: "select 1" }])),
                Participant.branch(pb, Pipeline.make([move(3, 1)]))
              ],
              options
            )
          )
        // Warm: every statement of the branch is then written at once, and the UPDATE waits on the
        // lock with "select 1" and the marker and PREPARE written behind it.
        const start = (yield* balance(a.sql, 3))!
        expect((yield* transfer())._tag).toBe("Committed")
        const [session] = yield* Effect.promise(
          () => one.sql<{ pid: number }[]>`select pg_backend_pid() as pid`
        )
        const pid = session!.pid
        const holder = yield* Effect.promise(() => a.sql.reserve())
        yield* Effect.promise(() =>
          holder.unsafe("begin; select * from accounts where id = 3 for update").simple()
        )
        const from = one.statements.length
        const outcome = yield* transfer({ prepareTimeout: "300 millis" })
        yield* Effect.promise(() => holder.unsafe("rollback"))
        holder.release()
        expect(outcome._tag).toBe("Aborted")
        expect(one.statements.slice(from).filter((s) => s.includes("pg_terminate_backend"))).toEqual([])
        expect(yield* Effect.promise(() => preparedIn(adminUrl, [DB_A, DB_B]))).toEqual([])
        // The session that received the cancel request is gone (a late cancel could otherwise hit the
        // next branch's BEGIN on it); the next transfer runs on a new one.
        let alive = 1
        for (let i = 0; i < 200 && alive > 0; i++) {
          const rows = yield* Effect.promise(() => admin`select 1 from pg_stat_activity where pid = ${pid}`)
          alive = rows.length
          if (alive > 0) yield* Effect.sleep("10 millis")
        }
        expect(alive).toBe(0)
        expect((yield* transfer())._tag).toBe("Committed")
        expect(yield* balance(a.sql, 3)).toBe(start - 2)
      })
  )

  it.live("a lone pipelined branch commits in one phase only after its checks passed", () =>
    Effect.gen(function* () {
      const { pa } = yield* participants
      const refused = yield* sentDuring(
        a,
        withLog(
          TwoPhaseCommit.run([
            Participant.branch(
              pa,
              Pipeline.make([move(8, -3, Pipeline.expectRows(1)), move(98, 3, Pipeline.expectRows(1))])
            )
          ])
        )
      )
      expect(refused.value._tag).toBe("Aborted")
      expect(refused.sent.map((s) => s.trim())).toEqual(["BEGIN", UPDATE, UPDATE, "ROLLBACK"])
      expect(yield* balance(a.sql, 8)).toBe(100)
      const done = yield* sentDuring(
        a,
        withLog(
          TwoPhaseCommit.run([
            Participant.branch(
              pa,
              Pipeline.make([move(8, -3, Pipeline.expectRows(1)), move(9, 3, Pipeline.expectRows(1))])
            )
          ])
        )
      )
      expect(done.value).toMatchObject({ _tag: "Committed", onePhase: true })
      expect(done.sent.map((s) => s.trim())).toEqual(["BEGIN", UPDATE, UPDATE, "COMMIT"])
      expect(yield* balance(a.sql, 8)).toBe(97)
      expect(yield* balance(a.sql, 9)).toBe(103)
    })
  )

  it.live("in a saga barrier step, a refused check fails the step and rolls its transaction back", () =>
    Effect.gen(function* () {
      yield* Effect.promise(() => Barrier.migrate(a.sql))
      const stamp = Date.now()
      const missing = yield* Effect.either(
        Barrier.run(
          a.sql,
          { gid: `saga-pl-${stamp}`, branch: "debit", op: "action" },
          Pipeline.make([move(10, -1, Pipeline.expectRows(1)), move(97, 1, Pipeline.expectRows(1))])
        )
      )
      expect(missing._tag).toBe("Left")
      expect(yield* balance(a.sql, 10)).toBe(100)
      const applied = yield* Barrier.run(
        a.sql,
        { gid: `saga-pl-${stamp}-2`, branch: "debit", op: "action" },
        Pipeline.make([move(10, -1, Pipeline.expectRows(1))])
      )
      expect(applied._tag).toBe("Applied")
      expect(yield* balance(a.sql, 10)).toBe(99)
    })
  )
})

describe("Pipeline on PGlite participants", () => {
  const banks = usePgliteBanks()

  it.live("a pipelined transfer commits, and a refused check aborts with nothing moved", () =>
    Effect.gen(function* () {
      const pa = yield* PgParticipant.makePglite({ name: "bank-a", db: banks.dbA })
      const pb = yield* PgParticipant.makePglite({ name: "bank-b", db: banks.dbB })
      const committed = yield* withLog(
        TwoPhaseCommit.run([
          Participant.branch(pa, Pipeline.make([move(1, -4, Pipeline.expectRows(1))])),
          Participant.branch(pb, Pipeline.make([move(1, 4, Pipeline.expectRows(1))]))
        ])
      )
      expect(committed._tag).toBe("Committed")
      const aborted = yield* withLog(
        TwoPhaseCommit.run([
          Participant.branch(pa, Pipeline.make([move(2, -4, Pipeline.expectRows(1))])),
          Participant.branch(pb, Pipeline.make([move(77, 4, Pipeline.expectRows(1))]))
        ])
      )
      expect(aborted._tag).toBe("Aborted")
      const rows = yield* Effect.promise(async () => ({
        a: (
          await banks.dbA.query<{ id: number; balance: number }>(
            "select id, balance from accounts where id in (1, 2) order by id"
          )
        ).rows,
        b: (await banks.dbB.query<{ balance: number }>("select balance from accounts where id = 1")).rows
      }))
      expect(rows).toEqual({
        a: [
          { id: 1, balance: 96 },
          { id: 2, balance: 100 }
        ],
        b: [{ balance: 104 }]
      })
    })
  )
})
