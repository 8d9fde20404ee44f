/**
 * A barrier work that deletes the barrier's own rows (review of 2026-12-07). The step committed
 * without its row: a retry or a redelivery ran the work again (`Applied`, never `Duplicate`), a
 * compensation that deleted its action's row let the late action apply, and the result's update
 * after the work (`keep`), which also forces the commit (`synchronous_commit`), matched no row, so a
 * work that had turned `synchronous_commit` off for its transaction committed unforced. Such a run
 * is now refused and rolled back: `BarrierWorkError`, SQLSTATE 0A000, definite.
 */
import { afterAll, beforeAll, describe, expect, it } from "@effect/vitest"
import type { PGlite } from "@electric-sql/pglite"
import { Effect, Either } from "effect"
import postgres from "postgres"
import * as Barrier from "../src/Barrier.js"
import * as PgParticipant from "../src/PgParticipant.js"
import * as TestDatabase from "../src/TestDatabase.js"

const server = await TestDatabase.server()
const DB = "s22_barrier_own_row"

type Conn = postgres.Sql | PGlite

const rowsOf = <T>(conn: Conn, text: string, params: Array<unknown>) =>
  Effect.promise(async () =>
    typeof conn === "function"
      ? Array.from(await conn.unsafe<Array<T>>(text, params as Array<postgres.ParameterOrJSON<never>>))
      : (await conn.query<T>(text, params)).rows
  )

const sold = (conn: Conn, k: string) =>
  Effect.map(
    rowsOf<{ n: number }>(conn, "select count(*)::int as n from sale where k = $1", [k]),
    (rows) => rows[0]!.n
  )

const barrierRows = (conn: Conn, gid: string) =>
  Effect.map(
    rowsOf<{ op: string }>(conn, "select op from accord_saga_barrier where gid = $1 order by op", [gid]),
    (rows) => rows.map((r) => r.op)
  )

/** The failure's fields that decide how it is read (plain, so that a mismatch prints). */
const fieldsOf = (run: Either.Either<unknown, Barrier.BarrierError>) =>
  Either.isLeft(run) && run.left._tag === "BarrierWorkError"
    ? { _tag: run.left._tag, sqlState: run.left.sqlState }
    : { run: Either.isRight(run) ? (run.right as { _tag: string })._tag : run.left._tag }

/** An action that sells `k` and deletes its own barrier row (relaxing its commit first). */
const deletingItsRow = (conn: Conn, gid: string) =>
  Effect.gen(function* () {
    const target = { gid, branch: "b", op: "action" as const }
    const work = async (s: Barrier.BarrierSession) => {
      await s.query("set local synchronous_commit = off")
      await s.query("insert into sale values ($1)", [gid])
      await s.query("delete from accord_saga_barrier where gid = $1 and branch = 'b' and op = 'action'", [
        gid
      ])
      return "sold"
    }
    const first = yield* Effect.either(Barrier.run(conn, target, work))
    expect(fieldsOf(first)).toEqual({ _tag: "BarrierWorkError", sqlState: "0A000" })
    if (Either.isLeft(first)) {
      expect(first.left.message).toContain("barrier row")
      expect(Barrier.toStepError(first.left)._tag).toBe("StepBusinessError")
      expect(Barrier.toCompensationStepError(first.left)._tag).toBe("StepBusinessError")
    }
    // Rolled back whole: the sale with its row; a second delivery is refused the same way.
    expect(yield* sold(conn, gid)).toBe(0)
    expect(yield* barrierRows(conn, gid)).toEqual([])
    const again = yield* Effect.either(Barrier.run(conn, target, work))
    expect(fieldsOf(again)).toEqual({ _tag: "BarrierWorkError", sqlState: "0A000" })
    expect(yield* sold(conn, gid)).toBe(0)
  })

/** A compensation that deletes its action's barrier row: the late action would then apply. */
const deletingTheActionRow = (conn: Conn, gid: string) =>
  Effect.gen(function* () {
    const target = { gid, branch: "b", op: "compensation" as const }
    yield* Barrier.run(conn, { ...target, op: "action" }, async (s) => {
      await s.query("insert into sale values ($1)", [gid])
    })
    const compensated = yield* Effect.either(
      Barrier.run(conn, target, async (s) => {
        await s.query("delete from sale where k = $1", [gid])
        await s.query("delete from accord_saga_barrier where gid = $1 and op = 'action'", [gid])
      })
    )
    expect(fieldsOf(compensated)).toEqual({ _tag: "BarrierWorkError", sqlState: "0A000" })
    expect(yield* sold(conn, gid)).toBe(1)
    expect(yield* barrierRows(conn, gid)).toEqual(["action"])
    // The action delivered again is still a duplicate.
    const late = yield* Barrier.run(conn, { ...target, op: "action" }, async (s) => {
      await s.query("insert into sale values ($1)", [gid])
    })
    expect(late._tag).toBe("Duplicate")
    expect(yield* sold(conn, gid)).toBe(1)
  })

describe.skipIf(server === undefined)("a barrier work that deletes its barrier rows, on PostgreSQL", () => {
  const adminUrl = server?.adminUrl ?? ""
  let sql: postgres.Sql

  beforeAll(async () => {
    const url = await TestDatabase.createDatabase(adminUrl, DB)
    sql = postgres(url, { max: 3, onnotice: () => {} })
    await Barrier.migrate(sql)
    await sql`create table sale (k text)`
  }, 60_000)
  afterAll(async () => {
    await sql?.end({ timeout: 5 })
    await TestDatabase.dropDatabase(adminUrl, DB)
  }, 60_000)

  it.live("an action that deletes its own row is refused and rolled back", () =>
    deletingItsRow(sql, `s22-own-${Date.now()}`)
  )
  it.live("a compensation that deletes its action's row is refused and rolled back", () =>
    deletingTheActionRow(sql, `s22-action-row-${Date.now()}`)
  )
  it.live("a work that updates its row's result itself is not refused", () =>
    Effect.gen(function* () {
      const gid = `s22-touch-${Date.now()}`
      const target = { gid, branch: "b", op: "action" as const }
      const work = async (s: Barrier.BarrierSession) => {
        await s.query("update accord_saga_barrier set result = 'null' where gid = $1", [gid])
        return 1
      }
      expect((yield* Barrier.run(sql, target, work))._tag).toBe("Applied")
      expect(yield* Barrier.run(sql, target, work)).toEqual({ _tag: "Duplicate", value: 1 })
    })
  )
})

describe("a barrier work that deletes its barrier rows, on PGlite", () => {
  let db: PGlite
  beforeAll(async () => {
    db = await PgParticipant.openPglite()
    await Barrier.migrate(db)
    await db.exec("create table sale (k text)")
  }, 60_000)
  afterAll(async () => {
    await db?.close()
  })

  it.live("an action that deletes its own row is refused and rolled back", () =>
    deletingItsRow(db, "s22-pglite-own")
  )
  it.live("a compensation that deletes its action's row is refused and rolled back", () =>
    deletingTheActionRow(db, "s22-pglite-action-row")
  )
})
