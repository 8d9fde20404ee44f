/**
 * Two recoveries on one log, the second having read the unfinished decisions before the first
 * finished them, with markers older than `markerGrace` (a restart after an outage of more than
 * 5 minutes): the first pass commits, completes and forgets the markers; the second then finds the
 * gids gone without a marker. That is not a branch rolled back by hand.
 */
import { afterAll, beforeAll, describe, expect, it } from "@effect/vitest"
import { Duration, Effect, Schedule } from "effect"
import postgres from "postgres"
import * as PgParticipant from "../src/PgParticipant.js"
import * as PgRecovery from "../src/PgRecovery.js"
import * as PgTransactionLog from "../src/PgTransactionLog.js"
import * as TestDatabase from "../src/TestDatabase.js"
import { adjust, balance, createBank, endAndDrop, prepareOnly } from "./support/pg2pc.js"

const server = await TestDatabase.server()
const DB_A = "accord_t_rstale_a"
const DB_B = "accord_t_rstale_b"
const DB_LOG = "accord_t_rstale_log"

describe("Recovery with a stale read of the unfinished decisions", () => {
  const adminUrl = server?.adminUrl ?? ""
  let a: postgres.Sql
  let b: postgres.Sql
  let logSql: postgres.Sql
  beforeAll(async () => {
    a = postgres(await createBank(adminUrl, DB_A, 20, 100), { max: 4, onnotice: () => {} })
    b = postgres(await createBank(adminUrl, DB_B, 20, 100), { max: 4, onnotice: () => {} })
    logSql = postgres(await TestDatabase.createDatabase(adminUrl, DB_LOG), { max: 4, onnotice: () => {} })
  }, 60_000)
  afterAll(() => endAndDrop(adminUrl, [a, b, logSql], [DB_A, DB_B], [DB_A, DB_B, DB_LOG]), 60_000)

  it.live(
    "a decision another recovery finished (and forgot the markers of) meanwhile is no heuristic",
    () =>
      Effect.scoped(
        Effect.gen(function* () {
          // markerGrace 0: the markers are as old as after a long outage.
          const pa = yield* PgParticipant.make({ name: "bank-a", sql: a, markerGrace: Duration.zero })
          const pb = yield* PgParticipant.make({ name: "bank-b", sql: b, markerGrace: Duration.zero })
          const log = yield* PgTransactionLog.make({ sql: logSql, completion: "immediate" })
          const { txId, ctxs } = yield* prepareOnly([pa, pb], 1, 10)
          yield* log.decide({ txId, decision: "commit", branches: ctxs, decidedAt: Date.now() })
          // The second process read the unfinished decisions first ...
          const stale = yield* log.unfinished({ olderThanMillis: 0 })
          expect(stale.map((d) => d.txId)).toEqual([txId])
          // ... the first process's pass then finishes the transaction.
          const first = yield* PgRecovery.run({
            participants: [pa, pb],
            log,
            options: { orphanAfter: 0, gc: false }
          })
          expect(first.transactionsFinished).toBe(1)
          const second = yield* PgRecovery.run({
            participants: [pa, pb],
            log: { ...log, unfinished: () => Effect.succeed(stale) },
            options: { orphanAfter: 0, gc: false, retrySchedule: Schedule.stop }
          })
          expect(yield* balance(a, 1)).toBe(90)
          expect(yield* balance(b, 1)).toBe(110)
          expect(second.heuristics).toEqual([])
          expect(second.branchesRolledBack).toBe(0)
          expect(yield* log.heuristics).toEqual([])
        })
      ),
    30_000
  )

  it.live(
    "a branch scanned prepared, then committed and its decision completed by another recovery, is no duplicate",
    () =>
      Effect.scoped(
        Effect.gen(function* () {
          const pa = yield* PgParticipant.make({ name: "bank-a", sql: a, markerGrace: Duration.zero })
          const pb = yield* PgParticipant.make({ name: "bank-b", sql: b, markerGrace: Duration.zero })
          const log = yield* PgTransactionLog.make({ sql: logSql, completion: "immediate" })
          const { txId, ctxs } = yield* prepareOnly([pa, pb], 2, 10)
          yield* log.decide({ txId, decision: "commit", branches: ctxs, decidedAt: Date.now() })
          // The second process scanned both databases (and read no unfinished decision) first ...
          const scanA = yield* pa.inDoubt
          const scanB = yield* pb.inDoubt
          expect([...scanA, ...scanB].map((x) => x.gid).sort()).toEqual(ctxs.map((c) => c.gid).sort())
          // ... the first process's pass then finishes the transaction.
          const first = yield* PgRecovery.run({
            participants: [pa, pb],
            log,
            options: { orphanAfter: 0, gc: false }
          })
          expect(first.transactionsFinished).toBe(1)
          const second = yield* PgRecovery.run({
            participants: [
              { ...pa, inDoubt: Effect.succeed(scanA) },
              { ...pb, inDoubt: Effect.succeed(scanB) }
            ],
            log: { ...log, unfinished: () => Effect.succeed([]) },
            options: { orphanAfter: 0, gc: false, retrySchedule: Schedule.stop }
          })
          expect(yield* balance(a, 2)).toBe(90)
          expect(yield* balance(b, 2)).toBe(110)
          expect(second.heuristics).toEqual([])
          expect(second.branchesRolledBack).toBe(0)
          expect(yield* log.heuristics).toEqual([])
        })
      ),
    30_000
  )

  it.live(
    "a gid really prepared again after its decision completed is still rolled back and reported",
    () =>
      Effect.scoped(
        Effect.gen(function* () {
          const pa = yield* PgParticipant.make({ name: "bank-a", sql: a, markerGrace: Duration.zero })
          const pb = yield* PgParticipant.make({ name: "bank-b", sql: b, markerGrace: Duration.zero })
          const log = yield* PgTransactionLog.make({ sql: logSql, completion: "immediate" })
          const { txId, ctxs } = yield* prepareOnly([pa, pb], 3, 10)
          yield* log.decide({ txId, decision: "commit", branches: ctxs, decidedAt: Date.now() })
          const first = yield* PgRecovery.run({
            participants: [pa, pb],
            log,
            options: { orphanAfter: 0, gc: false }
          })
          expect(first.transactionsFinished).toBe(1)
          // A late duplicate of A's prepare delivers the work again under the same gid.
          expect((yield* pa.prepare(ctxs[0]!, adjust(3, -10)))._tag).toBe("Prepared")
          const second = yield* PgRecovery.run({
            participants: [pa, pb],
            log,
            options: { orphanAfter: 0, gc: false }
          })
          expect(second.branchesRolledBack).toBe(1)
          expect(second.heuristics.map((h) => [h.branch, h.detail])).toEqual([
            [
              "bank-a",
              "branch prepared again after its transaction completed (duplicate delivery); rolled back"
            ]
          ])
          expect(yield* balance(a, 3)).toBe(90)
          expect(yield* balance(b, 3)).toBe(110)
        })
      ),
    30_000
  )
})
