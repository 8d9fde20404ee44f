/**
 * A barrier work that ends its transaction itself (COMMIT) and then fails (review of 2026-12-07,
 * helper 82). What it wrote before the COMMIT was committed with its barrier row; the failure was
 * read as any compensation failure, retried, and the retry found the row and answered Duplicate
 * without running the rest: the compensation half applied and recorded as done. It is now a
 * definite failure (25000): the action is compensated, the compensation goes Stuck for an operator.
 */
import { afterAll, beforeAll, describe, expect, it } from "@effect/vitest"
import type { PGlite } from "@electric-sql/pglite"
import { Effect, Either } from "effect"
import postgres from "postgres"
import * as Barrier from "../src/Barrier.js"
import * as PgParticipant from "../src/PgParticipant.js"
import * as TestDatabase from "../src/TestDatabase.js"

const server = await TestDatabase.server()
const DB = "accord_t_barrier_ended_by_work"

/** Inserts part 1, commits, then fails on part 2 (the CHECK refuses a negative amount). */
const halfCommitting = async (s: Barrier.BarrierSession) => {
  await s.query("insert into refund values ('part1', 10)")
  await s.query("commit")
  await s.query("insert into refund values ('part2', -1)")
}

const check = (conn: postgres.Sql | PGlite, gid: string) =>
  Effect.gen(function* () {
    const target = { gid, branch: "b", op: "compensation" as const }
    yield* Barrier.run(conn, { ...target, op: "action" }, async () => "reserved")
    const run = yield* Effect.either(Barrier.run(conn, target, halfCommitting))
    expect(Either.isLeft(run) && run.left).toMatchObject({ _tag: "BarrierWorkError", sqlState: "25000" })
    if (Either.isLeft(run)) {
      expect(run.left.message).toContain("ended the barrier's transaction itself")
      expect(Barrier.toCompensationStepError(run.left)._tag).toBe("StepBusinessError")
      expect(Barrier.toStepError(run.left)._tag).toBe("StepBusinessError")
    }
  })

/** A work that fails inside its transaction is still retried as before (nothing of it was kept). */
const failingInside = async (s: Barrier.BarrierSession) => {
  await s.query("insert into refund values ('inside', 10)")
  await s.query("insert into refund values ('inside', -1)")
}

describe.skipIf(server === undefined)(
  "a barrier work that ends its transaction itself, on PostgreSQL",
  () => {
    const adminUrl = server?.adminUrl ?? ""
    let sql: postgres.Sql

    beforeAll(async () => {
      const url = await TestDatabase.createDatabase(adminUrl, DB)
      sql = postgres(url, { max: 3, onnotice: () => {} })
      await Barrier.migrate(sql)
      await sql`create table refund (k text, amount int check (amount > 0))`
    }, 60_000)
    afterAll(async () => {
      await sql?.end({ timeout: 5 })
      await TestDatabase.dropDatabase(adminUrl, DB)
    }, 60_000)

    it.live("then fails: a definite failure, never a retry answered Duplicate", () =>
      Effect.gen(function* () {
        yield* check(sql, `ended-${Date.now()}`)
        const target = { gid: `inside-${Date.now()}`, branch: "b", op: "compensation" as const }
        yield* Barrier.run(sql, { ...target, op: "action" }, async () => "reserved")
        const run = yield* Effect.either(Barrier.run(sql, target, failingInside))
        expect(Either.isLeft(run) && run.left).toMatchObject({ sqlState: "23514" })
        if (Either.isLeft(run))
          expect(Barrier.toCompensationStepError(run.left)._tag).toBe("StepTransientError")
      })
    )
  }
)

describe("a barrier work that ends its transaction itself, on PGlite", () => {
  let db: PGlite
  beforeAll(async () => {
    db = await PgParticipant.openPglite()
    await Barrier.migrate(db)
    await db.exec("create table refund (k text, amount int check (amount > 0))")
  }, 60_000)
  afterAll(async () => {
    await db?.close()
  })

  it.live("then fails: a definite failure", () => check(db, "pglite-ended"))
})
