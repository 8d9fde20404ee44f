/**
 * A barrier work whose own COMMIT fails (review of 2026-12-07). A COMMIT that the server answers
 * with an error (a serialization failure or a deferred constraint at commit) rolled the whole
 * transaction back, barrier row included: nothing of the step was kept, and another attempt is safe.
 * It was read as a work that had ended the barrier's transaction with part of it committed (25000,
 * definite), so the compensation went Stuck on its first attempt. It now fails with the COMMIT's own
 * SQLSTATE. A commit that may have happened (the session lost at COMMIT), or a work that wrote
 * outside the barrier after its failed COMMIT, is not retried as before.
 */
import * as fs from "node:fs/promises"
import * as os from "node:os"
import * as path from "node:path"
import { afterAll, beforeAll, describe, expect, it } from "@effect/vitest"
import type { PGlite } from "@electric-sql/pglite"
import { Effect, Either } from "effect"
import postgres from "postgres"
import * as Barrier from "../src/Barrier.js"
import * as PgParticipant from "../src/PgParticipant.js"
import * as TestDatabase from "../src/TestDatabase.js"

const server = await TestDatabase.server()
const DB = "s22_barrier_commit_failed"

/**
 * `refund` with a CHECK, a deferred unique key, and a deferred trigger that fails the COMMIT with a
 * serialization failure (40001) when a row `'conflict'` is in the transaction, or ends its own
 * session (57P01 at COMMIT) for a row `'lost'`.
 */
const SCHEMA = [
  "create table refund (k text, amount int check (amount > 0), ref int unique deferrable initially deferred)",
  `create function refund_at_commit() returns trigger language plpgsql as $$
   begin
     if new.k = 'conflict' then
       raise exception 'could not serialize access at commit' using errcode = 'serialization_failure';
     end if;
     if new.k = 'lost' then
       perform pg_terminate_backend(pg_backend_pid());
       perform pg_sleep(5);
     end if;
     return null;
   end $$`,
  `create constraint trigger refund_at_commit after insert on refund deferrable initially deferred
   for each row execute function refund_at_commit()`
]

/** Part 1, then a row that fails the COMMIT (`k`), then its own COMMIT. */
const committingInto =
  (k: string, ref?: number) =>
  async (s: Barrier.BarrierSession): Promise<void> => {
    await s.query("insert into refund (k, amount, ref) values ($1, 10, $2)", [`part1-${k}`, ref ?? null])
    await s.query("insert into refund (k, amount, ref) values ($1, 10, $2)", [k, ref ?? null])
    await s.query("commit")
  }

/** The failure's fields that decide how it is read (plain, so that a mismatch prints). */
const fieldsOf = (run: Either.Either<unknown, Barrier.BarrierError>) =>
  Either.isLeft(run) && run.left._tag === "BarrierWorkError"
    ? { _tag: run.left._tag, sqlState: run.left.sqlState, connectionLost: run.left.connectionLost }
    : { run: Either.isLeft(run) ? run.left._tag : "succeeded" }

const rows = (conn: postgres.Sql | PGlite, like: string) =>
  Effect.promise(async () => {
    const text = "select count(*)::int as n from refund where k like $1"
    const result =
      typeof conn === "function"
        ? await conn.unsafe<Array<{ n: number }>>(text, [like])
        : (await conn.query<{ n: number }>(text, [like])).rows
    return result[0]!.n
  })

const barrierRows = (conn: postgres.Sql | PGlite, gid: string) =>
  Effect.promise(async () => {
    const text = "select op from accord_saga_barrier where gid = $1 order by op"
    const result =
      typeof conn === "function"
        ? await conn.unsafe<Array<{ op: string }>>(text, [gid])
        : (await conn.query<{ op: string }>(text, [gid])).rows
    return result.map((r) => r.op)
  })

/** A compensation whose COMMIT fails with 40001: retried, and the retry applies it once. */
const serializationAtCommit = (conn: postgres.Sql | PGlite, gid: string) =>
  Effect.gen(function* () {
    const target = { gid, branch: "b", op: "compensation" as const }
    yield* Barrier.run(conn, { ...target, op: "action" }, async () => "reserved")
    const failed = yield* Effect.either(Barrier.run(conn, target, committingInto("conflict")))
    expect(fieldsOf(failed)).toMatchObject({
      _tag: "BarrierWorkError",
      sqlState: "40001",
      connectionLost: false
    })
    if (Either.isLeft(failed)) {
      expect(Barrier.toCompensationStepError(failed.left)._tag).toBe("StepTransientError")
      expect(Barrier.toStepError(failed.left)._tag).toBe("StepTransientError")
    }
    // Nothing of it was kept: no part 1, no compensation row.
    expect(yield* rows(conn, "part1-conflict")).toBe(0)
    expect(yield* barrierRows(conn, gid)).toEqual(["action"])
    // The retry (the conflict gone) runs the whole work, once.
    const retried = yield* Barrier.run(conn, target, async (s) => {
      await s.query("insert into refund (k, amount) values ('part1-conflict', 10)")
    })
    expect(retried._tag).toBe("Applied")
    expect(yield* rows(conn, "part1-conflict")).toBe(1)
    expect(yield* barrierRows(conn, gid)).toEqual(["action", "compensation"])
    yield* Effect.promise(async () => {
      const text = "delete from refund where k like 'part1-%'"
      if (typeof conn === "function") await conn.unsafe(text)
      else await conn.query(text)
    })
  })

describe.skipIf(server === undefined)("a barrier work whose own COMMIT fails, on PostgreSQL", () => {
  const adminUrl = server?.adminUrl ?? ""
  let sql: postgres.Sql

  beforeAll(async () => {
    const url = await TestDatabase.createDatabase(adminUrl, DB)
    sql = postgres(url, { max: 3, onnotice: () => {} })
    await Barrier.migrate(sql)
    for (const statement of SCHEMA) await sql.unsafe(statement)
  }, 60_000)
  afterAll(async () => {
    await sql?.end({ timeout: 5 })
    await TestDatabase.dropDatabase(adminUrl, DB)
  }, 60_000)

  it.live("a serialization failure at COMMIT rolled everything back: retried, not Stuck", () =>
    serializationAtCommit(sql, `s22-conflict-${Date.now()}`)
  )

  it.live("a deferred unique violation at an action's COMMIT: the action did not act (23505)", () =>
    Effect.gen(function* () {
      const gid = `s22-unique-${Date.now()}`
      const failed = yield* Effect.either(
        Barrier.run(sql, { gid, branch: "b", op: "action" }, committingInto("dup", 7))
      )
      expect(fieldsOf(failed)).toMatchObject({ sqlState: "23505" })
      if (Either.isLeft(failed)) {
        expect(Barrier.toStepError(failed.left)._tag).toBe("StepBusinessError")
        expect(Barrier.toCompensationStepError(failed.left)._tag).toBe("StepTransientError")
      }
      expect(yield* rows(sql, "part1-dup")).toBe(0)
      expect(yield* barrierRows(sql, gid)).toEqual([])
    })
  )

  it.live("the session lost at the work's COMMIT stays in doubt", () =>
    Effect.gen(function* () {
      const gid = `s22-lost-${Date.now()}`
      const target = { gid, branch: "b", op: "compensation" as const }
      yield* Barrier.run(sql, { ...target, op: "action" }, async () => "reserved")
      const failed = yield* Effect.either(Barrier.run(sql, target, committingInto("lost")))
      expect(fieldsOf(failed)).toMatchObject({ connectionLost: true })
      if (Either.isLeft(failed))
        expect(Barrier.toCompensationStepError(failed.left)._tag).toBe("StepInDoubtError")
    })
  )

  it.live("a COMMIT through the work's tagged templates is read the same", () =>
    Effect.gen(function* () {
      const gid = `s22-tagged-${Date.now()}`
      const target = { gid, branch: "b", op: "compensation" as const }
      yield* Barrier.run(sql, { ...target, op: "action" }, async () => "reserved")
      const failed = yield* Effect.either(
        Barrier.run(sql, target, async (s) => {
          const tx = s.sql!
          await tx`insert into refund (k, amount) values (${"part1-tagged"}, ${10})`
          await tx`insert into refund (k, amount) values ('conflict', 10)`
          await tx`commit`
        })
      )
      expect(fieldsOf(failed)).toMatchObject({ sqlState: "40001" })
      expect(yield* rows(sql, "part1-tagged")).toBe(0)
      expect(yield* barrierRows(sql, gid)).toEqual(["action"])
    })
  )

  it.live("a work that ran its own ROLLBACK last and then failed kept nothing: read by its own error", () =>
    Effect.gen(function* () {
      const gid = `s22-rollback-${Date.now()}`
      const target = { gid, branch: "b", op: "compensation" as const }
      yield* Barrier.run(sql, { ...target, op: "action" }, async () => "reserved")
      const failed = yield* Effect.either(
        Barrier.run(sql, target, async (s) => {
          await s.query("insert into refund (k, amount) values ('part1-rollback', 10)")
          await s.query("rollback")
          throw new Error("not now")
        })
      )
      expect(fieldsOf(failed)).toMatchObject({ _tag: "BarrierWorkError", sqlState: undefined })
      if (Either.isLeft(failed))
        expect(Barrier.toCompensationStepError(failed.left)._tag).toBe("StepTransientError")
      expect(yield* rows(sql, "part1-rollback")).toBe(0)
      expect(yield* barrierRows(sql, gid)).toEqual(["action"])
    })
  )

  it.live("a statement whose text the barrier does not see (sql.file) keeps the failed COMMIT definite", () =>
    Effect.gen(function* () {
      const gid = `s22-file-${Date.now()}`
      const target = { gid, branch: "b", op: "compensation" as const }
      yield* Barrier.run(sql, { ...target, op: "action" }, async () => "reserved")
      // Ends the barrier's transaction and autocommits a row (the rest of the text's implicit transaction).
      const file = path.join(os.tmpdir(), `${gid}.sql`)
      yield* Effect.promise(() =>
        fs.writeFile(file, "rollback; insert into refund (k, amount) values ('part1-file', 10)")
      )
      const failed = yield* Effect.either(
        Barrier.run(sql, target, async (s) => {
          await s.sql!.file(file)
          // A transaction of its own, whose COMMIT fails: the barrier's was ended before.
          await s.query("begin")
          await s.query("insert into refund (k, amount) values ('conflict', 10)")
          await s.query("commit")
        })
      )
      yield* Effect.promise(() => fs.rm(file))
      // The autocommitted row is outside the barrier: a retry would write it again.
      expect(yield* rows(sql, "part1-file")).toBe(1)
      expect(fieldsOf(failed)).toMatchObject({ sqlState: "25000" })
      yield* Effect.promise(() => sql`delete from refund where k = 'part1-file'`)
    })
  )

  it.live("a work that writes outside the barrier after its failed COMMIT is still definite (25000)", () =>
    Effect.gen(function* () {
      const gid = `s22-after-${Date.now()}`
      const target = { gid, branch: "b", op: "compensation" as const }
      yield* Barrier.run(sql, { ...target, op: "action" }, async () => "reserved")
      const failed = yield* Effect.either(
        Barrier.run(sql, target, async (s) => {
          await committingInto("conflict")(s).catch(() => undefined)
          // Autocommitted, outside the barrier: a retry would write it again.
          await s.query("insert into refund (k, amount) values ('part1-after', 10)")
          throw new Error("gave up")
        })
      )
      expect(fieldsOf(failed)).toMatchObject({ sqlState: "25000" })
      if (Either.isLeft(failed))
        expect(Barrier.toCompensationStepError(failed.left)._tag).toBe("StepBusinessError")
      yield* Effect.promise(() => sql`delete from refund where k = 'part1-after'`)
    })
  )

  it.live("a work whose COMMIT succeeded and then failed is still definite (25000)", () =>
    Effect.gen(function* () {
      const gid = `s22-committed-${Date.now()}`
      const target = { gid, branch: "b", op: "compensation" as const }
      yield* Barrier.run(sql, { ...target, op: "action" }, async () => "reserved")
      const failed = yield* Effect.either(
        Barrier.run(sql, target, async (s) => {
          await s.query("insert into refund (k, amount) values ('part1-committed', 10)")
          await s.query("commit")
          throw new Error("failed after its commit")
        })
      )
      expect(fieldsOf(failed)).toMatchObject({ sqlState: "25000" })
      yield* Effect.promise(() => sql`delete from refund where k = 'part1-committed'`)
    })
  )
})

describe("a barrier work whose own COMMIT fails, on PGlite", () => {
  let db: PGlite
  beforeAll(async () => {
    db = await PgParticipant.openPglite()
    await Barrier.migrate(db)
    for (const statement of SCHEMA) await db.exec(statement)
  }, 60_000)
  afterAll(async () => {
    await db?.close()
  })

  it.live("a serialization failure at COMMIT rolled everything back: retried, not Stuck", () =>
    serializationAtCommit(db, "s22-pglite-conflict")
  )
})
