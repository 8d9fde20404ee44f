/**
 * How a barrier run reads a work that ended the barrier's transaction itself (review of 2026-12-07,
 * after `barrierS22CommitFailed.test.ts`):
 *
 * - The order the run records the work's statements in is not always the order they ran: a tagged
 *   template is recorded when postgres.js runs it, a microtask after `query` statements called
 *   after it. `` s.sql`rollback`.execute() `` with an INSERT sent through `query` beside it ran the
 *   ROLLBACK first and the INSERT autocommitted after it, outside the barrier; the run read the
 *   ROLLBACK as the work's last statement and reported the work's own error (transient), and the
 *   retry inserted again. An ending statement recorded while another was in flight is now never
 *   "the last": 25000.
 * - COMMIT, BEGIN, then a failing statement: the run's question failed with 25P02 (the work's new
 *   transaction, aborted) and was read as "not ended": an action got the failure's own 23514 (a
 *   business failure, never compensated) with its first part and barrier row committed, and a
 *   compensation was retried into a Duplicate with half its undo applied. Now 25000 (PostgreSQL
 *   and PGlite).
 */
import { afterAll, beforeAll, describe, expect, it } from "@effect/vitest"
import { PGlite } from "@electric-sql/pglite"
import { Effect, Either } from "effect"
import postgres from "postgres"
import * as Barrier from "../src/Barrier.js"
import * as TestDatabase from "../src/TestDatabase.js"
import { barrierOps, type Conn, countIn, readOf } from "./support/barrierReads.js"

const server = await TestDatabase.server()
const DB = "s22_bar2_ended"

/** Rows of the test table `rv` whose `k` is `k`. */
const count = (conn: Conn, k: string) => countIn(conn, "rv", k)

/** Part 1 committed by the work's own COMMIT, then BEGIN and a CHECK violation (23514). */
const commitBeginFail =
  (k: string) =>
  async (s: Barrier.BarrierSession): Promise<void> => {
    await s.query("insert into rv (k, n) values ($1, 1)", [`part1-${k}`])
    await s.query("commit")
    await s.query("begin")
    await s.query("insert into rv (k, n) values ($1, 0)", [`part2-${k}`])
  }

/** An action that committed part 1 and its row, then failed in a new transaction: 25000, compensated. */
const actionCommitBeginFail = (conn: Conn, gid: string) =>
  Effect.gen(function* () {
    const target = { gid, branch: "b", op: "action" as const }
    const first = yield* Effect.either(Barrier.run(conn, target, commitBeginFail(gid)))
    expect(yield* count(conn, `part1-${gid}`)).toBe(1)
    expect(yield* barrierOps(conn, gid)).toEqual(["action"])
    // Not "the business said no" (StepBusinessError, never compensated): part 1 is committed.
    expect(readOf(first)).toEqual({
      sqlState: "25000",
      action: "StepBusinessError",
      compensation: "StepBusinessError"
    })
    if (Either.isLeft(first)) expect(first.left.message).toContain("ended the barrier's transaction")
  })

/** The same in a compensation: Stuck at once (not retried into a Duplicate, half its undo applied). */
const compensationCommitBeginFail = (conn: Conn, gid: string) =>
  Effect.gen(function* () {
    yield* Barrier.run(conn, { gid, branch: "b", op: "action" }, async () => "acted")
    const target = { gid, branch: "b", op: "compensation" as const }
    const first = yield* Effect.either(Barrier.run(conn, target, commitBeginFail(gid)))
    expect(readOf(first)).toMatchObject({ sqlState: "25000" })
    if (Either.isLeft(first) && first.left._tag === "BarrierWorkError")
      expect(Barrier.toCompensationStepError(first.left)._tag).not.toBe("StepTransientError")
    expect(yield* barrierOps(conn, gid)).toEqual(["action", "compensation"])
    expect(yield* count(conn, `part2-${gid}`)).toBe(0)
  })

describe.skipIf(server === undefined)(
  "a barrier work that ended the barrier's transaction, on PostgreSQL",
  () => {
    const adminUrl = server?.adminUrl ?? ""
    let sql: postgres.Sql

    beforeAll(async () => {
      const url = await TestDatabase.createDatabase(adminUrl, DB)
      sql = postgres(url, { max: 3, onnotice: () => {} })
      await Barrier.migrate(sql)
      await sql.unsafe("create table rv (k text, n int check (n > 0))")
    }, 60_000)

    afterAll(async () => {
      await sql?.end({ timeout: 5 })
      await TestDatabase.dropDatabase(adminUrl, DB)
    }, 60_000)

    it.live(
      "a tagged ROLLBACK with a query statement in flight beside it: 25000, and no retry inserts again",
      () =>
        Effect.gen(function* () {
          const gid = `s22b-order-${Date.now()}`
          const target = { gid, branch: "b", op: "action" as const }
          const work = async (s: Barrier.BarrierSession) => {
            const rolledBack = s.sql!`rollback`.execute()
            const inserted = s.query("insert into rv (k, n) values ($1, 1)", [gid])
            await Promise.all([rolledBack, inserted])
            throw new Error("boom after the rollback")
          }
          const first = yield* Effect.either(Barrier.run(sql, target, work))
          // The INSERT ran after the ROLLBACK: autocommitted, outside the barrier, which kept no row.
          expect(yield* count(sql, gid)).toBe(1)
          expect(yield* barrierOps(sql, gid)).toEqual([])
          // Definite: the step is not retried, so the insert is not repeated.
          expect(readOf(first)).toEqual({
            sqlState: "25000",
            action: "StepBusinessError",
            compensation: "StepBusinessError"
          })
        })
    )

    it.live("the same called the other way round: 25000 (which ran first is not known to the run)", () =>
      Effect.gen(function* () {
        const gid = `s22b-order2-${Date.now()}`
        const target = { gid, branch: "b", op: "action" as const }
        const work = async (s: Barrier.BarrierSession) => {
          const inserted = s.sql!`insert into rv (k, n) values (${gid}, 1)`.execute()
          const rolledBack = s.query("rollback")
          await Promise.all([rolledBack, inserted])
          throw new Error("boom after the rollback")
        }
        const first = yield* Effect.either(Barrier.run(sql, target, work))
        // Here the INSERT ran first and rolled back, but the record, [rollback, insert], cannot tell.
        expect(readOf(first)).toMatchObject({ sqlState: "25000" })
      })
    )

    it.live("a statement fired without waiting after the ROLLBACK, then a throw: still 25000", () =>
      Effect.gen(function* () {
        const gid = `s22b-fired-${Date.now()}`
        const target = { gid, branch: "b", op: "action" as const }
        const first = yield* Effect.either(
          Barrier.run(sql, target, async (s) => {
            await s.sql!`rollback`
            void s.sql!`insert into rv (k, n) values (${gid}, 1)`.execute()
            throw new Error("boom")
          })
        )
        yield* Effect.sleep("200 millis")
        expect(readOf(first)).toMatchObject({ sqlState: "25000" })
      })
    )

    it.live("a lone ROLLBACK awaited alone as the last statement is still read by the work's error", () =>
      Effect.gen(function* () {
        const gid = `s22b-lone-${Date.now()}`
        const target = { gid, branch: "b", op: "action" as const }
        const first = yield* Effect.either(
          Barrier.run(sql, target, async (s) => {
            await s.query("insert into rv (k, n) values ($1, 1)", [gid])
            await s.sql!`rollback`
            throw Object.assign(new Error("try later"), { code: "40001" })
          })
        )
        expect(yield* count(sql, gid)).toBe(0)
        expect(readOf(first)).toMatchObject({ sqlState: "40001", action: "StepTransientError" })
      })
    )

    it.live("an action: COMMIT, BEGIN, a failing statement is 25000, not the business failure", () =>
      actionCommitBeginFail(sql, `s22b-cbf-${Date.now()}`)
    )

    it.live("a compensation: COMMIT, BEGIN, a failing statement is 25000, not retried into a Duplicate", () =>
      compensationCommitBeginFail(sql, `s22b-cbf2-${Date.now()}`)
    )

    it.live("a failing statement the work caught, no ending statement: read by its SQLSTATE as before", () =>
      Effect.gen(function* () {
        const gid = `s22b-plain-${Date.now()}`
        const first = yield* Effect.either(
          Barrier.run(sql, { gid, branch: "b", op: "action" }, async (s) => {
            await s.query("insert into rv (k, n) values ($1, 0)", [gid])
          })
        )
        expect(readOf(first)).toMatchObject({ sqlState: "23514", action: "StepBusinessError" })
        expect(yield* barrierOps(sql, gid)).toEqual([])
      })
    )
  }
)

describe("a barrier work that ended the barrier's transaction, on PGlite", () => {
  let db: PGlite
  beforeAll(async () => {
    db = new PGlite()
    await Barrier.migrate(db)
    await db.exec("create table rv (k text, n int check (n > 0))")
  }, 60_000)
  afterAll(async () => {
    await db?.close()
  })

  it.live("an action: COMMIT, BEGIN, a failing statement is 25000", () => actionCommitBeginFail(db, "cbf"))

  it.live("a compensation: COMMIT, BEGIN, a failing statement is 25000", () =>
    compensationCommitBeginFail(db, "cbf2")
  )
})
