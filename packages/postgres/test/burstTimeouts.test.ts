/**
 * More branches time out at once than a participant has connections for (a hot row locked by
 * someone else). Found by a review (2026-12-07): with the default postgres.js pool (10
 * connections), ten transfers on a locked row aborted at their 2 s bound as they should, and then
 * the participant's pool never answered again: a fresh transfer on a free row "timed out" after
 * 17 s against a 2 s bound, a plain `select 1` hung, recovery's scan failed, and an aborted
 * branch stayed prepared until another process recovered it. The branches whose statements were
 * cancelled closed their connections (a late cancel request must not reach the next user); the
 * pool reopened each for a statement waiting in its queue, and when that statement was cancelled
 * while the connection opened, the driver never told the pool the connection was ready: all ten
 * ended parked as "connecting" (fixed in `patches/postgres@3.4.9.patch`;
 * `driverPipelineCancel.test.ts` has the driver-level case).
 */
import { Participant, TransactionLog, TwoPhaseCommit } from "@accord/core"
import { afterAll, beforeAll, describe, expect, it } from "@effect/vitest"
import { Duration, Effect } from "effect"
import postgres from "postgres"
import * as PgParticipant from "../src/PgParticipant.js"
import * as TestDatabase from "../src/TestDatabase.js"
import { adjust, balance, createBank, endAndDropNothingOpen, preparedIn } from "./support/pg2pc.js"

const server = await TestDatabase.server()
const DB_A = "accord_t_burst_a"
const DB_B = "accord_t_burst_b"

describe.skipIf(server === undefined)("a burst of prepare timeouts on a hot row", () => {
  const adminUrl = server?.adminUrl ?? ""
  let a: postgres.Sql
  let b: postgres.Sql
  let locker: postgres.Sql

  beforeAll(async () => {
    // postgres.js's default pool size (10), as an application would have it.
    a = postgres(await createBank(adminUrl, DB_A, 8, 100), { onnotice: () => {} })
    b = postgres(await createBank(adminUrl, DB_B, 8, 100), { onnotice: () => {} })
    locker = postgres(TestDatabase.urlFor(adminUrl, DB_A), { max: 1, onnotice: () => {} })
  }, 60_000)

  afterAll(() => endAndDropNothingOpen(adminUrl, [a, b, locker], [DB_A, DB_B], [DB_A, DB_B]), 60_000)

  it.live(
    "aborts them all at their bound, and the participant's pool serves the next transfer at once",
    () =>
      Effect.gen(function* () {
        const pa = yield* PgParticipant.make({ name: "bank-a", sql: a })
        const pb = yield* PgParticipant.make({ name: "bank-b", sql: b })
        const transfer = (id: number) =>
          TwoPhaseCommit.run(
            [Participant.branch(pa, adjust(id, -1)), Participant.branch(pb, adjust(id, 1))],
            {
              prepareTimeout: Duration.seconds(1),
              transactionTimeout: Duration.seconds(1)
            }
          )
        const held = yield* Effect.promise(() => locker.reserve())
        yield* Effect.promise(() =>
          held`begin`.then(() => held`update accounts set balance = balance where id = 6`)
        )
        const outcomes = yield* Effect.all(
          Array.from({ length: 12 }, () => transfer(6)),
          { concurrency: "unbounded" }
        )
        expect(outcomes.map((o) => o._tag)).toEqual(Array.from({ length: 12 }, () => "Aborted"))
        yield* Effect.promise(() => held`rollback`)
        held.release()
        const started = performance.now()
        const next = yield* transfer(7)
        expect(next._tag).toBe("Committed")
        // Before the fix: an abort at the 1 s bound (the pool never answered), after 15 s or more.
        expect(performance.now() - started).toBeLessThan(1_000)
        expect(yield* balance(a, 7)).toBe(99)
        expect(yield* balance(a, 6)).toBe(100)
        expect(yield* Effect.promise(() => preparedIn(adminUrl, [DB_A, DB_B]))).toEqual([])
      }).pipe(Effect.provide(TransactionLog.layerMemory)),
    30_000
  )
})
