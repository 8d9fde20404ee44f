/**
 * Two coordinator processes sharing one log, each with group commit, write batches that hold the
 * same transactions in opposite orders (a recovery pass presuming abort while the live
 * coordinator commits). Each row insert waits for the other writer's uncommitted row, so batches
 * written in arrival order can wait on each other in a cycle (deadlock, 40P01: one batch fails
 * with a LogError). Written in one order (by txId) they cannot: the first test checks that order
 * directly (the deadlock needs two inserts to overlap within a millisecond), the second the outcome.
 */
import { TransactionId, type TransactionLog } from "@accord/core"
import { describe, expect, it } from "@effect/vitest"
import { type Context, Effect, Either } from "effect"
import * as PgTransactionLog from "../src/PgTransactionLog.js"
import * as TestDatabase from "../src/TestDatabase.js"
import { usePoolsOnDatabase } from "./support/sagaLog.js"

const server = await TestDatabase.server()
const DB = "accord_t_batch_order"

describe.skipIf(server === undefined)("group-commit batches from two processes on one log", () => {
  const { pool } = usePoolsOnDatabase(server?.adminUrl ?? "", DB, { max: 4, endTimeout: 5 })

  const record = (decision: "commit" | "abort", txId: TransactionId.TransactionId) => {
    const branch = "bank-a" as TransactionId.BranchName
    return {
      txId,
      decision,
      branches: [{ branch, gid: TransactionId.gid(txId, branch) }],
      decidedAt: Date.now()
    }
  }

  it.live(
    "a group-commit batch inserts its rows in txId order, whatever order its decisions arrived in",
    () =>
      Effect.scoped(
        Effect.gen(function* () {
          const sql = pool()
          const log = yield* PgTransactionLog.make({ sql, groupCommit: { maxBatch: 64 } })
          // The order the inserts wrote their rows (and locked their keys), noted by a row trigger
          // with the writing transaction. (Physical order, ctid, is not it: a row that does not fit
          // on the current page may go to an earlier page with free space.)
          yield* Effect.promise(() =>
            sql.unsafe(`
              create table insert_order (n bigserial primary key, tx_id text, xid xid8 default pg_current_xact_id());
              create function note_insert() returns trigger language plpgsql as
                $$ begin insert into insert_order (tx_id) values (new.tx_id); return new; end $$;
              create trigger note_insert before insert on accord_decision for each row execute function note_insert();
            `)
          )
          const txIds = yield* Effect.forEach(Array.from({ length: 120 }), () => TransactionId.make)
          // Arrival in descending txId order.
          const arriving = [...txIds].sort().reverse()
          yield* Effect.forEach(arriving, (t) => log.decide(record("commit", t)), {
            concurrency: "unbounded"
          })
          const rows = yield* Effect.promise(
            () => sql<{ tx_id: string; xid: string }[]>`
            select tx_id, xid::text as xid from insert_order
            where tx_id = any(${txIds}::text[]) order by n`
          )
          yield* Effect.promise(() => sql.unsafe("drop trigger note_insert on accord_decision"))
          const byInsert = new Map<string, Array<string>>()
          for (const r of rows) byInsert.set(r.xid, [...(byInsert.get(r.xid) ?? []), r.tx_id])
          const batches = [...byInsert.values()].filter((b) => b.length > 1)
          expect(batches.length).toBeGreaterThan(0)
          for (const batch of batches) expect(batch).toEqual([...batch].sort())
        })
      )
  )
  it.live(
    "batches holding the same transactions in opposite orders never deadlock, and agree row by row",
    () =>
      Effect.scoped(
        Effect.gen(function* () {
          const one = yield* PgTransactionLog.make({ sql: pool(), groupCommit: { maxBatch: 64 } })
          const two = yield* PgTransactionLog.make({ sql: pool(), groupCommit: { maxBatch: 64 } })
          const decideAll = (
            log: Context.Tag.Service<typeof TransactionLog.TransactionLog>,
            records: ReadonlyArray<TransactionLog.DecisionRecord>
          ) => Effect.forEach(records, (r) => Effect.either(log.decide(r)), { concurrency: "unbounded" })
          const failures: Array<string> = []
          for (let round = 0; round < 20; round++) {
            const txIds = yield* Effect.forEach(Array.from({ length: 48 }), () => TransactionId.make)
            const [x, y] = yield* Effect.all(
              [
                decideAll(
                  one,
                  txIds.map((t) => record("commit", t))
                ),
                decideAll(
                  two,
                  [...txIds].reverse().map((t) => record("abort", t))
                )
              ],
              { concurrency: 2 }
            )
            const fromTwo = [...y].reverse()
            for (const [i, r] of x.entries()) {
              const s = fromTwo[i]!
              if (Either.isLeft(r)) failures.push(r.left.reason)
              if (Either.isLeft(s)) failures.push(s.left.reason)
              if (Either.isRight(r) && Either.isRight(s)) expect(r.right).toEqual(s.right)
            }
          }
          expect(failures).toEqual([])
        })
      ),
    120_000
  )
})
