/**
 * A barrier work that catches a failed statement and goes on (review of 2026-12-07, helper 78).
 * Its next statement, or the barrier's own, then fails with 25P02 ("current transaction is
 * aborted"), and the step was classified by that: a business failure, never retried, although
 * what the work swallowed was a 40001 serialization failure worth another attempt. The run now
 * reports the first failure of the transaction, its SQLSTATE kept, the message saying both.
 */
import { afterAll, beforeAll, describe, expect, it } from "@effect/vitest"
import type { PGlite } from "@electric-sql/pglite"
import { Effect, Either } from "effect"
import postgres from "postgres"
import * as Barrier from "../src/Barrier.js"
import * as PgParticipant from "../src/PgParticipant.js"
import * as TestDatabase from "../src/TestDatabase.js"

const server = await TestDatabase.server()
const DB = "accord_t_barrier_swallowed"

/** Raises `sqlState` in the transaction, as the server would (40001: could not serialize). */
const raising = (sqlState: string) =>
  `do $$ begin raise exception 'simulated' using errcode = '${sqlState}'; end $$`

const swallowing =
  (sqlState: string, after: "work" | "barrier") =>
  async (s: Barrier.BarrierSession): Promise<string> => {
    await s.query("insert into audit (note) values ('before')")
    try {
      await s.query(raising(sqlState))
    } catch {
      // e.g. a best-effort statement whose failure the work ignores
    }
    if (after === "work") await s.query("insert into audit (note) values ('after')")
    return "done"
  }

/**
 * A work that recovers from one failure with a savepoint, or meets a driver error raised before
 * anything was sent, then swallows another: reported by the one that aborted the transaction
 * (helper 82: the first failure of the run was reported, a retryable failure made definite).
 */
const recovering =
  (first: "savepoint" | "driver", sqlState: string) =>
  async (s: Barrier.BarrierSession): Promise<string> => {
    if (first === "savepoint") {
      await s.query("savepoint a")
      await s.query(raising("23505")).catch(() => undefined)
      await s.query("rollback to savepoint a")
    } else {
      // postgres.js refuses an undefined parameter before sending anything.
      await s.sql!`select ${undefined as unknown as string}`.catch(() => undefined)
    }
    await s.query(raising(sqlState)).catch(() => undefined)
    await s.query("insert into audit (note) values ('after')")
    return "done"
  }

const cases = [
  ["40001", "work", "StepTransientError"],
  ["40001", "barrier", "StepTransientError"],
  ["23514", "work", "StepBusinessError"]
] as const

const check = (conn: postgres.Sql | PGlite, key: string) =>
  Effect.forEach(cases, ([sqlState, after, tag], i) =>
    Effect.gen(function* () {
      const run = yield* Effect.either(
        Barrier.run(
          conn,
          { gid: `${key}-${i}`, branch: "reserve", op: "action" },
          swallowing(sqlState, after)
        )
      )
      expect(Either.isLeft(run) && run.left).toMatchObject({ _tag: "BarrierWorkError", sqlState })
      if (Either.isLeft(run)) {
        expect(run.left.message).toContain("25P02")
        expect(Barrier.toStepError(run.left)._tag).toBe(tag)
      }
    })
  )

describe.skipIf(server === undefined)("a barrier work that swallowed a failure, on PostgreSQL", () => {
  const adminUrl = server?.adminUrl ?? ""
  let sql: postgres.Sql

  beforeAll(async () => {
    const url = await TestDatabase.createDatabase(adminUrl, DB)
    sql = postgres(url, { max: 4, onnotice: () => {} })
    await Barrier.migrate(sql)
    await sql`create table audit (note text)`
  }, 60_000)
  afterAll(async () => {
    await sql?.end({ timeout: 5 })
    await TestDatabase.dropDatabase(adminUrl, DB)
  }, 60_000)

  it.live("after recovering from an earlier failure, is reported by the failure that aborted it", () =>
    Effect.gen(function* () {
      const key = `pg-recovered-${Date.now()}`
      for (const [i, [first, sqlState, tag]] of (
        [
          ["savepoint", "40001", "StepTransientError"],
          ["driver", "23514", "StepBusinessError"]
        ] as const
      ).entries()) {
        const run = yield* Effect.either(
          Barrier.run(
            sql,
            { gid: `${key}-${i}`, branch: "reserve", op: "action" },
            recovering(first, sqlState)
          )
        )
        expect(Either.isLeft(run) && run.left).toMatchObject({ _tag: "BarrierWorkError", sqlState })
        if (Either.isLeft(run)) {
          expect(Barrier.toStepError(run.left)._tag).toBe(tag)
          // The SQLSTATE once, at the front (the first version wrote it twice).
          expect(run.left.reason.startsWith(`${sqlState} ${sqlState}`)).toBe(false)
        }
      }
    })
  )

  it.live("is reported by the failure it swallowed, not by the 25P02 after it", () =>
    Effect.gen(function* () {
      yield* check(sql, `pg-${Date.now()}`)
      // Nothing of the runs was committed.
      expect((yield* Effect.promise(() => sql`select count(*)::int as n from audit`))[0]!.n).toBe(0)
    })
  )
})

describe("a barrier work that swallowed a failure, on PGlite", () => {
  let db: PGlite

  beforeAll(async () => {
    db = await PgParticipant.openPglite()
    await Barrier.migrate(db)
    await db.exec("create table audit (note text)")
  }, 60_000)
  afterAll(async () => {
    await db?.close()
  })

  it.live("is reported by the failure it swallowed, not by the 25P02 after it", () =>
    Effect.gen(function* () {
      yield* check(db, "pglite")
      expect(
        (yield* Effect.promise(() => db.query<{ n: number }>("select count(*)::int as n from audit")))
          .rows[0]!.n
      ).toBe(0)
    })
  )
})
