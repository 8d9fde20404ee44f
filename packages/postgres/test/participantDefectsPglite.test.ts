/**
 * A PGlite branch whose work ends its own transaction is refused as the postgres.js path refuses
 * it (a `No` vote, SQLSTATE 25000), and a work's `SET LOCAL ROLE` does not reach the marker or the
 * PREPARE. Before: a work ending in ROLLBACK voted ReadOnly with its write gone (the other branches
 * would commit without it), one ending in COMMIT voted ReadOnly with its write committed outside
 * the decision, a lone branch ending in ROLLBACK reported Committed, and a work under another role
 * voted No (42501 on the marker insert).
 */
import { type Participant, TransactionId } from "@accord/core"
import type { PGlite } from "@electric-sql/pglite"
import { describe, expect, it } from "@effect/vitest"
import { Duration, Effect } from "effect"
import * as PgParticipant from "../src/PgParticipant.js"
import { adjust } from "./support/pg2pc.js"
import { usePgliteBanks } from "./support/pglite.js"

const balanceOf = (db: PGlite, id: number) =>
  Effect.promise(
    async () =>
      (await db.query<{ balance: number }>("select balance from accounts where id = $1", [id])).rows[0]
        ?.balance
  )

const prepared = (db: PGlite) =>
  Effect.promise(
    async () =>
      (await db.query<{ gid: string; owner: string }>("select gid, owner from pg_prepared_xacts")).rows
  )

const sqlStateOf = (result: Participant.Vote | Participant.OnePhaseResult) =>
  result._tag === "No" ? result.sqlState : undefined

describe("PGlite: a work that ends its own transaction", () => {
  const banks = usePgliteBanks()

  const participant = Effect.suspend(() =>
    PgParticipant.makePglite({
      name: "bank-a",
      db: banks.dbA,
      gate: PgParticipant.makeGate(),
      lockTimeout: Duration.seconds(2)
    })
  )

  const ctxOf = (p: PgParticipant.PgParticipant) =>
    Effect.map(TransactionId.make, (txId) => ({ txId, branch: p.name, gid: TransactionId.gid(txId, p.name) }))

  it.live("a work ending with ROLLBACK votes No (25000), not ReadOnly", () =>
    Effect.gen(function* () {
      const p = yield* participant
      const before = yield* balanceOf(banks.dbA, 1)
      const vote = yield* p.prepare(yield* ctxOf(p), async (s) => {
        await adjust(1, -5)(s)
        await s.query("rollback")
      })
      expect(vote._tag).toBe("No")
      expect(sqlStateOf(vote)).toBe("25000")
      expect(yield* balanceOf(banks.dbA, 1)).toBe(before)
      expect(yield* prepared(banks.dbA)).toEqual([])
    })
  )

  it.live("a work ending with COMMIT votes No (25000), not ReadOnly", () =>
    Effect.gen(function* () {
      const p = yield* participant
      const vote = yield* p.prepare(yield* ctxOf(p), async (s) => {
        await adjust(2, -5)(s)
        await s.query("commit")
      })
      expect(vote._tag).toBe("No")
      expect(sqlStateOf(vote)).toBe("25000")
      expect(yield* prepared(banks.dbA)).toEqual([])
      // Put back what the work committed on its own.
      yield* Effect.promise(() => banks.dbA.query("update accounts set balance = balance + 5 where id = 2"))
    })
  )

  it.live("a work that ends its transaction and begins another votes No (25000), nothing prepared", () =>
    Effect.gen(function* () {
      const p = yield* participant
      const before = yield* balanceOf(banks.dbA, 3)
      const vote = yield* p.prepare(yield* ctxOf(p), async (s) => {
        await s.query("rollback")
        await s.query("begin")
        await adjust(3, -5)(s)
      })
      expect(vote._tag).toBe("No")
      expect(sqlStateOf(vote)).toBe("25000")
      expect(yield* balanceOf(banks.dbA, 3)).toBe(before)
      expect(yield* prepared(banks.dbA)).toEqual([])
    })
  )

  it.live("a lone branch (one phase) ending with ROLLBACK reports No (25000), not Committed", () =>
    Effect.gen(function* () {
      const p = yield* participant
      const before = yield* balanceOf(banks.dbA, 4)
      const result = yield* p.commitOnePhase(yield* ctxOf(p), async (s) => {
        await adjust(4, -5)(s)
        await s.query("rollback")
      })
      expect(result._tag).toBe("No")
      expect(sqlStateOf(result)).toBe("25000")
      expect(yield* balanceOf(banks.dbA, 4)).toBe(before)
    })
  )

  it.live("a lone branch whose work caught a failed statement reports No (25P02)", () =>
    Effect.gen(function* () {
      const p = yield* participant
      const result = yield* p.commitOnePhase(yield* ctxOf(p), async (s) => {
        await adjust(5, -5)(s)
        await s.query("select 1/0").catch(() => undefined)
      })
      expect(result._tag).toBe("No")
      expect(sqlStateOf(result)).toBe("25P02")
    })
  )

  it.live("a work that runs as it should still prepares and commits", () =>
    Effect.gen(function* () {
      const p = yield* participant
      const ctx = yield* ctxOf(p)
      const before = yield* balanceOf(banks.dbA, 6)
      expect((yield* p.prepare(ctx, adjust(6, -5)))._tag).toBe("Prepared")
      expect(yield* p.commit(ctx)).toBe("Committed")
      expect(yield* balanceOf(banks.dbA, 6)).toBe(before! - 5)
      const readOnly = yield* p.prepare(yield* ctxOf(p), (s) => s.query("select 1"))
      expect(readOnly._tag).toBe("ReadOnly")
    })
  )
})

describe("PGlite: a work under SET LOCAL ROLE", () => {
  const banks = usePgliteBanks()

  it.live("the marker and the PREPARE run as the session's role: prepared, owned by it, committed", () =>
    Effect.gen(function* () {
      yield* Effect.promise(() =>
        banks.dbA.exec("create role defects_rls nologin; grant select, update on accounts to defects_rls")
      )
      const p = yield* PgParticipant.makePglite({
        name: "bank-a",
        db: banks.dbA,
        gate: PgParticipant.makeGate()
      })
      const txId = yield* TransactionId.make
      const ctx = { txId, branch: p.name, gid: TransactionId.gid(txId, p.name) }
      const before = yield* balanceOf(banks.dbA, 7)
      const vote = yield* p.prepare(ctx, async (s) => {
        await s.query("set local role defects_rls")
        await adjust(7, -5)(s)
      })
      expect(vote._tag).toBe("Prepared")
      expect(yield* prepared(banks.dbA)).toEqual([{ gid: ctx.gid, owner: "postgres" }])
      expect(yield* p.commit(ctx)).toBe("Committed")
      expect(yield* balanceOf(banks.dbA, 7)).toBe(before! - 5)
      const role = yield* Effect.promise(() => banks.dbA.query<{ u: string }>("select current_user as u"))
      expect(role.rows[0]?.u).toBe("postgres")
    })
  )
})
