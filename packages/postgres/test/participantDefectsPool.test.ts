/**
 * One connection of a postgres.js pool is always left for COMMIT PREPARED, however many
 * participants share the pool: the branch limit is the pool's, not each participant's. Before, two
 * participants on one pool of 3 each allowed 2 branches; three branches waiting on a prepared
 * row's lock held all three connections, and the COMMIT PREPARED that would free the row waited for
 * a connection until it timed out.
 */
import { TransactionId } from "@accord/core"
import { afterAll, beforeAll, describe, expect, it } from "@effect/vitest"
import { Duration, Effect, Either, Fiber } from "effect"
import postgres from "postgres"
import type { BranchSession } from "../src/PgParticipant.js"
import * as PgParticipant from "../src/PgParticipant.js"
import * as TestDatabase from "../src/TestDatabase.js"

const server = await TestDatabase.server()
const DB = "accord_t_participant_defects_pool"

const ctxOf = (name: string) =>
  Effect.map(TransactionId.make, (txId) => ({
    txId,
    branch: name as TransactionId.BranchName,
    gid: TransactionId.gid(txId, name as TransactionId.BranchName)
  }))

describe.skipIf(server === undefined)("participants sharing one postgres.js pool", () => {
  const adminUrl = server?.adminUrl ?? ""
  let url: string
  let admin: postgres.Sql

  beforeAll(async () => {
    url = await TestDatabase.createDatabase(adminUrl, DB)
    admin = postgres(url, { max: 1, onnotice: () => {} })
    await admin.unsafe("create table t (id int primary key, v int not null); insert into t values (1, 0)")
  }, 60_000)
  afterAll(async () => {
    await admin?.end({ timeout: 5 })
    const left = await TestDatabase.preparedOnServer(adminUrl)
    await TestDatabase.dropDatabase(adminUrl, DB)
    expect(left.filter((p) => p.database === DB)).toEqual([])
  }, 60_000)

  it.live(
    "branches of two participants waiting on a prepared row leave a connection for its COMMIT PREPARED",
    () =>
      Effect.gen(function* () {
        const sql = postgres(url, { max: 3, onnotice: () => {} })
        yield* Effect.addFinalizer(() => Effect.promise(() => sql.end({ timeout: 5 })))
        const orders = yield* PgParticipant.make({ name: "orders", sql })
        const stock = yield* PgParticipant.make({ name: "stock", sql })
        const bump = (s: BranchSession) => s.query("update t set v = v + 1 where id = 1")
        const x = yield* ctxOf("orders")
        expect((yield* orders.prepare(x, bump))._tag).toBe("Prepared")
        // Three later branches wait on X's row lock (then give up: a No vote, nothing left prepared).
        const waitThenFail = async (s: BranchSession) => {
          await bump(s)
          throw new Error("done waiting")
        }
        const waiters = [
          yield* Effect.fork(orders.prepare(yield* ctxOf("orders"), waitThenFail)),
          yield* Effect.fork(stock.prepare(yield* ctxOf("stock"), waitThenFail)),
          yield* Effect.fork(stock.prepare(yield* ctxOf("stock"), waitThenFail))
        ]
        yield* Effect.sleep(Duration.millis(500))
        const committed = yield* Effect.either(orders.commit(x).pipe(Effect.timeout(Duration.seconds(3))))
        // Clean-up first, whatever the outcome: waiters still blocked are interrupted, X committed.
        const votes = yield* Effect.forEach(
          waiters,
          (f) => Fiber.join(f).pipe(Effect.timeout(Duration.seconds(5)), Effect.either),
          { concurrency: "unbounded" }
        )
        for (const f of waiters) yield* Fiber.interrupt(f)
        yield* orders.commit(x)
        expect(committed).toEqual(Either.right("Committed"))
        for (const vote of votes) expect(Either.map(vote, (v) => v._tag)).toEqual(Either.right("No"))
      }).pipe(Effect.scoped),
    30_000
  )

  it.live("a participant asking for another maxBranches on a shared pool is refused", () =>
    Effect.gen(function* () {
      const sql = postgres(url, { max: 4, onnotice: () => {} })
      yield* Effect.addFinalizer(() => Effect.promise(() => sql.end({ timeout: 5 })))
      yield* PgParticipant.make({ name: "orders", sql, maxBranches: 2 })
      yield* PgParticipant.make({ name: "stock", sql })
      yield* PgParticipant.make({ name: "billing", sql, maxBranches: 2 })
      const refused = yield* Effect.flip(PgParticipant.make({ name: "other", sql, maxBranches: 3 }))
      expect(refused._tag).toBe("ConfigurationError")
      expect(refused.reason).toContain("maxBranches 3")
    }).pipe(Effect.scoped)
  )
})
