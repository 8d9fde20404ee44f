/**
 * A work's `sql.release()` (2026-12-07, found while checking which of postgres.js's methods let a
 * barrier step's work escape its transaction): the handle a work receives is the reserved
 * connection, whose `release()` (not in the `Sql` type, reached by a cast) gave the connection back
 * to the pool with the step's transaction open. The pool's next user then ran its statements inside
 * that transaction: an autocommitted insert answered as done, and was rolled back with the step.
 * The handle now refuses `release()` and `destroy()`, in a barrier step and in a branch alike.
 */
import { afterAll, beforeAll, describe, expect, it } from "@effect/vitest"
import { Effect, Either } from "effect"
import postgres from "postgres"
import * as Barrier from "../src/Barrier.js"
import * as Migrations from "../src/Migrations.js"
import * as PgParticipant from "../src/PgParticipant.js"
import * as TestDatabase from "../src/TestDatabase.js"
import { ctxFor, preparedIn } from "./support/pg2pc.js"

const server = await TestDatabase.server()
const DB = "fixe_barrier_release"

describe.skipIf(server === undefined)("a work's sql.release()", () => {
  const adminUrl = server?.adminUrl ?? ""
  let url: string
  let admin: postgres.Sql
  const pools: Array<postgres.Sql> = []
  /** A pool of one connection: the step's, until the step gives it back. */
  const pool = () => {
    const sql = postgres(url, { max: 1, onnotice: () => {} })
    pools.push(sql)
    return sql
  }
  const ids = async () => (await admin<{ id: number }[]>`select id from orders order by id`).map((r) => r.id)

  beforeAll(async () => {
    url = await TestDatabase.createDatabase(adminUrl, DB)
    admin = postgres(url, { max: 1, onnotice: () => {} })
    await Barrier.migrate(admin)
    await Effect.runPromise(Migrations.participant(admin))
    await admin`create table orders (id int primary key)`
  }, 60_000)
  afterAll(async () => {
    for (const sql of pools) await sql.end({ timeout: 5 })
    const left = await preparedIn(adminUrl, [DB])
    await admin?.end({ timeout: 5 })
    await TestDatabase.dropDatabase(adminUrl, DB)
    expect(left).toEqual([])
  }, 60_000)

  it.live("in a barrier step is refused: the pool's next user waits for the step, and its write stays", () =>
    Effect.gen(function* () {
      const sql = pool()
      let refusal: unknown
      let other: Promise<unknown> | undefined
      const run = yield* Barrier.run(
        sql,
        { gid: "fixe-release-1", branch: "place", op: "action" },
        async (s) => {
          await s.sql!`insert into orders values (1)`
          try {
            ;(s.sql as unknown as postgres.ReservedSql).release()
          } catch (error) {
            refusal = error
          }
          // Another user of the pool, sent now: it must not run inside this step's transaction.
          other = sql`insert into orders values (2)`.execute()
          throw new Error("the step fails")
        }
      ).pipe(Effect.either)
      expect(Either.isLeft(run)).toBe(true)
      yield* Effect.promise(() => other ?? Promise.resolve())
      // The step rolled back its own insert only; the other user's autocommitted insert stayed.
      expect(yield* Effect.promise(ids)).toEqual([2])
      expect(String(refusal)).toMatch(/release\(\) is refused/)
    })
  )

  it.live("in a branch is refused too, and the branch still prepares and commits", () =>
    Effect.gen(function* () {
      const p = yield* PgParticipant.make({ name: "a", sql: pool(), migrate: false })
      const ctx = yield* ctxFor("a")
      let refusal: unknown
      const vote = yield* p.prepare(ctx, async (s) => {
        await s.sql!`insert into orders values (3)`
        try {
          // Accord's postgres.js patch adds destroy() to a reserved connection.
          ;(s.sql as unknown as { destroy: () => void }).destroy()
        } catch (error) {
          refusal = error
        }
      })
      expect(String(refusal)).toMatch(/destroy\(\) is refused/)
      expect(vote._tag).toBe("Prepared")
      expect(yield* p.commit(ctx)).toBe("Committed")
      expect(yield* Effect.promise(ids)).toContain(3)
    })
  )
})
