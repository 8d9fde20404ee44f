/**
 * How a barrier run reads a work that ended the barrier's transaction itself, continued (review r3
 * of 2026-12-07, after `barrierS22bEnded.test.ts`):
 *
 * - `` s.sql`insert ...`.then(() => s.query("commit")) ``, the COMMIT refused by a deferred
 *   constraint (40001 at commit, nothing kept): postgres.js ran the work's `.then` callback before
 *   the run's own, so the COMMIT was recorded while the INSERT still counted as in flight, and the
 *   run read 25000 (definite) where 40001 (another attempt is safe) was right. The run is now told
 *   a tagged template settled before the work's callbacks run.
 * - COMMIT in a nested fragment (`` s.sql`${s.sql.unsafe("commit")}` ``, a text the run does not
 *   see), BEGIN, a failing statement: the run's question failed with 25P02 and, no ending statement
 *   seen, the run read the work's own 40001: a compensation was retried into a Duplicate with its
 *   first part committed and its second never applied. The run now ends the aborted transaction and
 *   asks the server whether the barrier's committed: 25000.
 */
import { afterAll, beforeAll, describe, expect, it } from "@effect/vitest"
import { PGlite } from "@electric-sql/pglite"
import { Effect, Either } from "effect"
import postgres from "postgres"
import * as Barrier from "../src/Barrier.js"
import * as TestDatabase from "../src/TestDatabase.js"
import { barrierOps, type Conn, countIn as count, readOf } from "./support/barrierReads.js"

const server = await TestDatabase.server()
const DB = "s22_bar3_ended"

const SCHEMA = `create table rv (k text, n int check (n > 0));
  create table rs (k text);
  create function rs_fail() returns trigger language plpgsql as $f$ begin
    raise exception 'deferred serialization failure' using errcode = '40001'; end $f$;
  create constraint trigger rs_deferred after insert on rs deferrable initially deferred
    for each row execute function rs_fail();`

const raise40001 = "do $$ begin raise exception 'serialization failure' using errcode = '40001'; end $$"

/** A work that swallowed a 40001 and went on: read by the 40001, and its connection still good. */
const swallowed = (conn: Conn, gid: string) =>
  Effect.gen(function* () {
    const run = yield* Effect.either(
      Barrier.run(conn, { gid, branch: "b", op: "action" }, async (s) => {
        await s.query("insert into rv (k, n) values ($1, 1)", [gid])
        await s.query(raise40001).catch(() => undefined)
        await s.query("select 1")
      })
    )
    expect(readOf(run)).toEqual({
      sqlState: "40001",
      action: "StepTransientError",
      compensation: "StepTransientError"
    })
    expect(yield* count(conn, "rv", gid)).toBe(0)
    expect(yield* barrierOps(conn, gid)).toEqual([])
    // The next run on the same connection starts clean and commits.
    const next = yield* Barrier.run(conn, { gid: `${gid}-next`, branch: "b", op: "action" }, async (s) => {
      await s.query("insert into rv (k, n) values ($1, 1)", [`${gid}-next`])
      return "done"
    })
    expect(next).toEqual({ _tag: "Applied", value: "done" })
    expect(yield* count(conn, "rv", `${gid}-next`)).toBe(1)
  })

/** COMMIT, BEGIN, a failure with the COMMIT's text known, in a compensation: 25000, not retried. */
const compensationCommitBeginFail = (conn: Conn, gid: string) =>
  Effect.gen(function* () {
    yield* Barrier.run(conn, { gid, branch: "b", op: "action" }, async () => "acted")
    const target = { gid, branch: "b", op: "compensation" as const }
    const first = yield* Effect.either(
      Barrier.run(conn, target, async (s) => {
        await s.query("insert into rv (k, n) values ($1, 1)", [`${gid}-part1`])
        await s.query("commit")
        await s.query("begin")
        await s.query("insert into rv (k, n) values ($1, 1)", [`${gid}-part2`])
        await s.query(raise40001)
      })
    )
    expect(readOf(first)).toMatchObject({ sqlState: "25000", compensation: "StepBusinessError" })
    expect(yield* count(conn, "rv", `${gid}-part1`)).toBe(1)
    expect(yield* count(conn, "rv", `${gid}-part2`)).toBe(0)
    expect(yield* barrierOps(conn, gid)).toEqual(["action", "compensation"])
  })

describe.skipIf(server === undefined)(
  "a barrier work that ended the barrier's transaction, r3, on PostgreSQL",
  () => {
    const adminUrl = server?.adminUrl ?? ""
    let url = ""
    let sql: postgres.Sql

    beforeAll(async () => {
      url = await TestDatabase.createDatabase(adminUrl, DB)
      sql = postgres(url, { max: 3, onnotice: () => {} })
      await Barrier.migrate(sql)
      await sql.unsafe(SCHEMA)
    }, 60_000)

    afterAll(async () => {
      await sql?.end({ timeout: 5 })
      await TestDatabase.dropDatabase(adminUrl, DB)
    }, 60_000)

    /** The work's own COMMIT, refused at commit (deferred 40001): nothing kept, read by the 40001. */
    const ownCommitRefused = (
      label: string,
      work: (s: Barrier.BarrierSession, k: string) => Promise<unknown>
    ) =>
      it.live(`the work's own COMMIT refused at commit, ${label}: 40001, transient`, () =>
        Effect.gen(function* () {
          const gid = `s22c-oc-${label.replace(/\W/g, "")}-${Date.now()}`
          const run = yield* Effect.either(
            Barrier.run(sql, { gid, branch: "b", op: "action" }, async (s) => {
              await work(s, gid)
            })
          )
          expect(yield* count(sql, "rs", gid)).toBe(0)
          expect(yield* barrierOps(sql, gid)).toEqual([])
          expect(readOf(run)).toEqual({
            sqlState: "40001",
            action: "StepTransientError",
            compensation: "StepTransientError"
          })
        })
      )
    ownCommitRefused("sent from a tagged INSERT's .then through query", (s, k) =>
      s.sql!`insert into rs values (${k})`.then(() => s.query("commit"))
    )
    ownCommitRefused("sent from a tagged INSERT's .then as a tagged template", (s, k) =>
      s.sql!`insert into rs values (${k})`.then(() => s.sql!`commit`)
    )

    it.live("a compensation: COMMIT in a nested fragment, BEGIN, a raised 40001: 25000, not retried", () =>
      Effect.gen(function* () {
        const gid = `s22c-frag-${Date.now()}`
        yield* Barrier.run(sql, { gid, branch: "b", op: "action" }, async () => "acted")
        const target = { gid, branch: "b", op: "compensation" as const }
        const undo = async (s: Barrier.BarrierSession) => {
          await s.query("insert into rv (k, n) values ($1, 1)", [`${gid}-part1`])
          await s.sql!`${s.sql!.unsafe("commit")}`
          await s.query("begin")
          await s.query("insert into rv (k, n) values ($1, 1)", [`${gid}-part2`])
          await s.query(raise40001)
        }
        const first = yield* Effect.either(Barrier.run(sql, target, undo))
        // Part 1 and the barrier row committed by the work's COMMIT; part 2 rolled back.
        expect(yield* count(sql, "rv", `${gid}-part1`)).toBe(1)
        expect(yield* count(sql, "rv", `${gid}-part2`)).toBe(0)
        expect(yield* barrierOps(sql, gid)).toEqual(["action", "compensation"])
        // Stuck for an operator, not retried into a Duplicate that never applies part 2.
        expect(readOf(first)).toEqual({
          sqlState: "25000",
          action: "StepBusinessError",
          compensation: "StepBusinessError"
        })
        if (Either.isLeft(first)) expect(first.left.message).toContain("ended the barrier's transaction")
      })
    )

    it.live(
      "an action: COMMIT in a nested fragment, BEGIN, a CHECK violation: 25000, not a business 23514",
      () =>
        Effect.gen(function* () {
          const gid = `s22c-fraga-${Date.now()}`
          const first = yield* Effect.either(
            Barrier.run(sql, { gid, branch: "b", op: "action" }, async (s) => {
              await s.query("insert into rv (k, n) values ($1, 1)", [`${gid}-part1`])
              await s.sql!`${s.sql!.unsafe("commit")}`
              await s.query("begin")
              await s.query("insert into rv (k, n) values ($1, 0)", [`${gid}-part2`])
            })
          )
          expect(yield* count(sql, "rv", `${gid}-part1`)).toBe(1)
          expect(yield* barrierOps(sql, gid)).toEqual(["action"])
          expect(readOf(first)).toMatchObject({ sqlState: "25000" })
        })
    )

    it.live("COMMIT, BEGIN, a failure, the COMMIT's text known: still 25000", () =>
      compensationCommitBeginFail(sql, `s22c-known-${Date.now()}`)
    )

    it.live("ROLLBACK, an autocommitted INSERT, BEGIN, a failure: 25000 (a retry would insert again)", () =>
      Effect.gen(function* () {
        const gid = `s22c-gap-${Date.now()}`
        const first = yield* Effect.either(
          Barrier.run(sql, { gid, branch: "b", op: "action" }, async (s) => {
            await s.query("rollback")
            await s.query("insert into rv (k, n) values ($1, 1)", [gid])
            await s.query("begin")
            await s.query(raise40001)
          })
        )
        expect(yield* count(sql, "rv", gid)).toBe(1)
        expect(yield* barrierOps(sql, gid)).toEqual([])
        expect(readOf(first)).toMatchObject({ sqlState: "25000", action: "StepBusinessError" })
      })
    )

    it.live("a swallowed 40001: read by it, no notice to the pool, the one connection reused clean", () =>
      Effect.gen(function* () {
        const notices: Array<unknown> = []
        const one = postgres(url, { max: 1, onnotice: (n) => void notices.push(n) })
        try {
          yield* swallowed(one, `s22c-sw-${Date.now()}`)
          // The run's own ROLLBACK found the transaction the diagnosis opened: no "there is no
          // transaction in progress" warning printed by the pool's onnotice (console.log by default).
          expect(notices).toEqual([])
          // Not left inside a transaction: two statements get two transaction ids.
          const a = yield* Effect.promise(() => one`select pg_current_xact_id()::text as x`)
          const b = yield* Effect.promise(() => one`select pg_current_xact_id()::text as x`)
          expect(a[0]!.x).not.toBe(b[0]!.x)
        } finally {
          yield* Effect.promise(() => one.end({ timeout: 5 }))
        }
      })
    )
  }
)

describe("a barrier work that ended the barrier's transaction, r3, on PGlite", () => {
  let db: PGlite

  beforeAll(async () => {
    db = await PGlite.create()
    await Barrier.migrate(db)
    await db.exec(SCHEMA)
  }, 60_000)

  afterAll(async () => {
    await db?.close()
  })

  it.live("a swallowed 40001: read by it, and the database's next transaction runs", () =>
    swallowed(db, `s22c-psw-${Date.now()}`)
  )

  it.live("COMMIT, BEGIN, a failure in a compensation: 25000, not retried", () =>
    compensationCommitBeginFail(db, `s22c-pknown-${Date.now()}`)
  )

  it.live("the work's own COMMIT refused at commit (deferred 40001): 40001, transient", () =>
    Effect.gen(function* () {
      const gid = `s22c-poc-${Date.now()}`
      const run = yield* Effect.either(
        Barrier.run(db, { gid, branch: "b", op: "action" }, async (s) => {
          await s.query("insert into rs values ($1)", [gid])
          await s.query("commit")
        })
      )
      expect(yield* count(db, "rs", gid)).toBe(0)
      expect(yield* barrierOps(db, gid)).toEqual([])
      expect(readOf(run)).toMatchObject({ sqlState: "40001", action: "StepTransientError" })
    })
  )
})
