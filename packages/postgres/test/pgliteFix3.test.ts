/**
 * A PGlite branch whose work runs `RESET ALL` keeps its vote: the mark that tells Accord the work
 * did not end the branch's transaction survives it. The mark was a transaction-local setting
 * (`accord.branch_gid`) alone, which `RESET ALL` clears as it clears every setting: the branch read
 * "the work ended its transaction" and voted No (25000) for work that did nothing wrong. A work that
 * really ends its transaction is still refused, `RESET ALL` or not.
 */
import { TransactionId } from "@accord/core"
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

describe("PGlite: a work that runs RESET ALL", () => {
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

  it.live("prepares and commits", () =>
    Effect.gen(function* () {
      const p = yield* participant
      const ctx = yield* ctxOf(p)
      const before = yield* balanceOf(banks.dbA, 1)
      const vote = yield* p.prepare(ctx, async (s) => {
        await s.query("reset all")
        await adjust(1, -5)(s)
      })
      expect(vote).toMatchObject({ _tag: "Prepared" })
      expect(yield* p.commit(ctx)).toBe("Committed")
      expect(yield* balanceOf(banks.dbA, 1)).toBe(before! - 5)
    })
  )

  it.live("after its write, as a lone branch, commits", () =>
    Effect.gen(function* () {
      const p = yield* participant
      const before = yield* balanceOf(banks.dbA, 2)
      const result = yield* p.commitOnePhase(yield* ctxOf(p), async (s) => {
        await adjust(2, -5)(s)
        await s.query("reset all")
      })
      expect(result).toMatchObject({ _tag: "Committed" })
      expect(yield* balanceOf(banks.dbA, 2)).toBe(before! - 5)
    })
  )

  it.live("and reads only votes ReadOnly", () =>
    Effect.gen(function* () {
      const p = yield* participant
      const vote = yield* p.prepare(yield* ctxOf(p), async (s) => {
        await s.query("reset all")
        await s.query("select balance from accounts where id = 3")
      })
      expect(vote._tag).toBe("ReadOnly")
    })
  )

  it.live("and then ends its transaction with COMMIT and BEGIN still votes No (25000)", () =>
    Effect.gen(function* () {
      const p = yield* participant
      const before = yield* balanceOf(banks.dbA, 4)
      const vote = yield* p.prepare(yield* ctxOf(p), async (s) => {
        await s.query("reset all")
        await s.query("commit")
        await s.query("begin")
        await adjust(4, -5)(s)
      })
      expect(vote._tag).toBe("No")
      expect(vote._tag === "No" ? vote.sqlState : undefined).toBe("25000")
      expect(yield* balanceOf(banks.dbA, 4)).toBe(before)
    })
  )

  it.live("and then ends its transaction with ROLLBACK, as a lone branch, reports No (25000)", () =>
    Effect.gen(function* () {
      const p = yield* participant
      const before = yield* balanceOf(banks.dbA, 5)
      const result = yield* p.commitOnePhase(yield* ctxOf(p), async (s) => {
        await adjust(5, -5)(s)
        await s.query("reset all")
        await s.query("rollback")
      })
      expect(result._tag).toBe("No")
      expect(result._tag === "No" ? result.sqlState : undefined).toBe("25000")
      expect(yield* balanceOf(banks.dbA, 5)).toBe(before)
    })
  )
})
