/**
 * What a production work function or pool does that the participant must survive: a work that
 * throws a non-database error carrying a network code, a work that keeps `session.sql` after it
 * returned or catches a lost connection on it, a pool with a column transform (`postgres.camel`).
 */
import { Participant } from "@accord/core"
import { afterAll, beforeAll, describe, expect, it } from "@effect/vitest"
import { Effect, Either, Logger } from "effect"
import postgres from "postgres"
import * as PgParticipant from "../src/PgParticipant.js"
import * as TestDatabase from "../src/TestDatabase.js"
import { createBank, ctxFor, endAndDrop } from "./support/pg2pc.js"

const server = await TestDatabase.server()
const DB = "accord_t_pg_misuse"

describe.skipIf(server === undefined)("PgParticipant against misbehaving works and pools", () => {
  const adminUrl = server?.adminUrl ?? ""
  let url: string
  let admin: postgres.Sql
  const pools: Array<postgres.Sql> = []
  const pool = (options: postgres.Options<Record<string, postgres.PostgresType>> = {}) => {
    const sql = postgres(url, { max: 2, onnotice: () => {}, ...options })
    pools.push(sql)
    return sql
  }

  beforeAll(async () => {
    url = await createBank(adminUrl, DB, 10, 100)
    admin = postgres(adminUrl, { max: 1, onnotice: () => {} })
  }, 60_000)

  afterAll(async () => {
    await endAndDrop(adminUrl, [...pools, admin], [DB], [DB])
  }, 60_000)

  const idleInTransaction = () =>
    Effect.promise(
      () =>
        admin<{ pid: number }[]>`
          select pid from pg_stat_activity
          where datname = ${DB} and state like 'idle in transaction%'`
    )

  it.live("a work that throws a non-database error with a network code leaves no transaction open", () =>
    Effect.gen(function* () {
      const sql = pool()
      const p = yield* PgParticipant.make({ name: "bank-a", sql })
      const ctx = yield* ctxFor("bank-a")
      const vote = yield* p.prepare(ctx, async (s) => {
        await s.query("update accounts set balance = balance - 10 where id = 1")
        // e.g. an HTTP call to a fraud service that failed: not the branch's connection.
        throw Object.assign(new Error("fraud service unreachable"), { code: "ECONNRESET" })
      })
      expect(vote._tag).toBe("No")
      yield* Effect.sleep("200 millis")
      expect(yield* idleInTransaction()).toEqual([])
      // The row is free again: the next branch on it does not wait for the failed one's lock.
      const next = yield* ctxFor("bank-a")
      const again = yield* p.prepare(next, async (s) => {
        await s.query("set local lock_timeout = '2s'")
        await s.query("update accounts set balance = balance - 10 where id = 1")
      })
      expect(again._tag).toBe("Prepared")
      expect(yield* p.rollback(next)).toBe("RolledBack")
    })
  )

  it.live("session.sql kept after the work returned is refused, never run on the released connection", () =>
    Effect.gen(function* () {
      const sql = pool()
      const p = yield* PgParticipant.make({ name: "bank-a", sql })
      const ctx = yield* ctxFor("bank-a")
      let kept: postgres.Sql | undefined
      const vote = yield* p.prepare(ctx, async (s) => {
        kept = s.sql
        await s.sql!`update accounts set balance = balance - 10 where id = 2`
      })
      expect(vote._tag).toBe("Prepared")
      const late = yield* Effect.promise(() =>
        Promise.resolve(kept!`select 1 as one`).then(
          () => "ran",
          (error: unknown) => String(error)
        )
      )
      expect(late).toContain("the branch has ended")
      expect(yield* p.rollback(ctx)).toBe("RolledBack")
    })
  )

  it.live(
    "a participant on a pool of one connection is made with a warning (its max is documented as 2 or more)",
    () =>
      Effect.gen(function* () {
        const warnings: Array<string> = []
        const logger = Logger.make(({ logLevel, message }) => {
          if (logLevel._tag === "Warning") warnings.push(String(message))
        })
        const capture = Logger.replace(Logger.defaultLogger, logger)
        yield* PgParticipant.make({ name: "bank-a", sql: pool({ max: 1 }) }).pipe(Effect.provide(capture))
        expect(warnings.join("\n")).toMatch(/pool has max 1: .*give the pool max 2 or more/)
        warnings.length = 0
        yield* PgParticipant.make({ name: "bank-a", sql: pool({ max: 2 }) }).pipe(Effect.provide(capture))
        expect(warnings.filter((w) => w.includes("pool has max"))).toEqual([])
      })
  )

  it.live("a lost connection caught by the work on session.sql is a No vote, not ReadOnly or Prepared", () =>
    Effect.gen(function* () {
      // One connection: once it closes, the pool reconnects that same connection on demand.
      const sql = pool({ max: 1 })
      const p = yield* PgParticipant.make({ name: "bank-a", sql })
      const before = (yield* Effect.promise(() => sql`select balance from accounts where id = 3`))[0]!.balance
      for (const tracked of [false, true]) {
        const ctx = yield* ctxFor("bank-a")
        const vote = yield* Effect.either(
          p.prepare(ctx, async (s) => {
            if (tracked) await s.query("update accounts set balance = balance - 10 where id = 3")
            else await s.sql!`update accounts set balance = balance - 10 where id = 3`
            try {
              // The backend dies under the branch (an operator, a failover): the work catches it.
              await s.sql!`select pg_terminate_backend(pg_backend_pid())`
            } catch {
              // e.g. a best-effort audit insert whose failure the work ignores
            }
            // Something else of the application uses the pool meanwhile: the connection reconnects.
            await sql`select 1`
          })
        )
        // Anything but a success vote: the debit was lost with the session.
        const succeeded = Either.isRight(vote) && vote.right._tag !== "No"
        expect({ tracked, vote: Either.isRight(vote) ? vote.right._tag : "error", succeeded }).toEqual({
          tracked,
          vote: Either.isRight(vote) ? "No" : "error",
          succeeded: false
        })
        if (Either.isRight(vote) && vote.right._tag === "Prepared") yield* p.rollback(ctx)
      }
      const after = (yield* Effect.promise(() => sql`select balance from accounts where id = 3`))[0]!.balance
      expect(after).toBe(before)
      expect(yield* idleInTransaction()).toEqual([])
    })
  )

  for (const [how, end] of [
    ["COMMIT", "commit"],
    ["END", "end"],
    ["ROLLBACK", "rollback"],
    ["PREPARE TRANSACTION", "prepare transaction 'by_the_work'"]
  ] as const) {
    it.live(`a work that ends the branch's transaction itself (${how}) votes No, never Prepared`, () =>
      Effect.gen(function* () {
        const sql = pool()
        const p = yield* PgParticipant.make({ name: "bank-a", sql })
        const balanceOf = () =>
          Effect.promise(
            async () => (await sql`select balance from accounts where id = 5`)[0]!.balance as number
          )
        const before = yield* balanceOf()
        const ctx = yield* ctxFor("bank-a")
        const vote = yield* p.prepare(ctx, async (s) => {
          await s.query("update accounts set balance = balance - 10 where id = 5")
          await s.query(end)
        })
        const prepared = yield* Effect.promise(
          () => admin`select gid from pg_prepared_xacts where database = ${DB}`
        )
        for (const { gid } of prepared) yield* Effect.promise(() => sql.unsafe(`rollback prepared '${gid}'`))
        const committed = (yield* balanceOf()) !== before
        if (committed) yield* Effect.promise(() => sql`update accounts set balance = ${before} where id = 5`)
        expect(vote._tag).toBe("No")
        expect(yield* p.state(ctx)).toBe("aborted")
      })
    )
  }

  it.live(
    "a one-phase work that ends its transaction itself (ROLLBACK, then writes) is No, not Committed",
    () =>
      Effect.gen(function* () {
        const sql = pool()
        const p = yield* PgParticipant.make({ name: "bank-a", sql })
        const balanceOf = () =>
          Effect.promise(
            async () => (await sql`select balance from accounts where id = 7`)[0]!.balance as number
          )
        const before = yield* balanceOf()
        const ctx = yield* ctxFor("bank-a")
        const result = yield* p.commitOnePhase(ctx, async (s) => {
          await s.query("update accounts set balance = balance - 10 where id = 7")
          await s.query("rollback")
          // Autocommitted: outside the branch's transaction, which is gone.
          await s.query("update accounts set balance = balance - 1 where id = 7")
        })
        yield* Effect.promise(() => sql`update accounts set balance = ${before} where id = 7`)
        expect(result._tag).toBe("No")
      })
  )

  it.live("a work that uses savepoints (rolled back to, released) still prepares", () =>
    Effect.gen(function* () {
      const sql = pool()
      const p = yield* PgParticipant.make({ name: "bank-a", sql })
      const ctx = yield* ctxFor("bank-a")
      const vote = yield* p.prepare(ctx, async (s) => {
        await s.query("update accounts set balance = balance - 10 where id = 6")
        await s.query("savepoint sp")
        await s.query("update accounts set balance = balance - 10 where id = 6")
        await s.query("rollback to savepoint sp")
        await s.query("release savepoint sp")
        await s.query("begin") // a warning: the transaction is already open
      })
      expect(vote._tag).toBe("Prepared")
      expect(yield* p.rollback(ctx)).toBe("RolledBack")
    })
  )

  it.live("a pool with postgres.camel works: make, prepare, state, inDoubt, commit", () =>
    Effect.gen(function* () {
      const sql = pool({ max: 3, transform: postgres.camel })
      const made = yield* Effect.either(PgParticipant.make({ name: "bank-a", sql, namespace: "camel" }))
      expect(Either.isRight(made) ? "made" : made.left.message).toBe("made")
      if (Either.isLeft(made)) return
      const p = made.right
      const ctx = yield* Effect.map(ctxFor("bank-a"), (c) => ({
        ...c,
        gid: `accord-camel_${c.txId}_bank-a` as typeof c.gid
      }))
      expect(
        (yield* p.prepare(ctx, (s) => s.query("update accounts set balance = balance - 1 where id = 4")))._tag
      ).toBe("Prepared")
      expect(yield* p.state(ctx)).toBe("prepared")
      const found = (yield* p.inDoubt).filter((b) => b.gid === ctx.gid)
      expect(found.length).toBe(1)
      expect(Number.isFinite(found[0]!.preparedAt)).toBe(true)
      expect(yield* p.commit(ctx)).toBe("Committed")
      expect(yield* p.state(ctx)).toBe("committed")
      expect(yield* Effect.either(p.finishMany!("commit", [ctx]))).toEqual(Either.right([true]))
      expect(yield* p.commit(ctx)).toBe("Committed")
      const vote = yield* p.prepare(yield* ctxFor("bank-a"), async () => undefined).pipe(Effect.either)
      expect(Either.isRight(vote) && vote.right).toEqual(Participant.Vote.ReadOnly())
    })
  )
})
