/**
 * A coordinator log whose connection stops answering (a network partition of that one connection):
 * the calls around it must still end. Found by a review (2026-12-07), both before the fix waited
 * until the test's own cap:
 *
 * - `TwoPhaseCommit.run` with `completion: "immediate"` waited for the completion update after its
 *   commit decision without a bound, past `transactionTimeout`. Now the completion is bounded by the
 *   deadline; the outcome (Committed) is known already, and a completion not written only leaves
 *   the decision for recovery to finish again.
 * - A recovery pass waited for its read of unfinished decisions without a bound, and so did every
 *   later pass of a sweep. Now each log call of a pass is bounded by `logTimeout`.
 *
 * A bound that fires on a connection that stopped answering also waits out the log's cancel bound
 * (5 s: the cancel request goes, the answer never comes), hence the limits below.
 */
import { Participant, Recovery, TransactionLog, TwoPhaseCommit } from "@accord/core"
import { afterAll, beforeAll, describe, expect, it } from "@effect/vitest"
import { Duration, Effect, Either } from "effect"
import postgres from "postgres"
import * as PgParticipant from "../src/PgParticipant.js"
import * as PgRecovery from "../src/PgRecovery.js"
import * as PgTransactionLog from "../src/PgTransactionLog.js"
import * as TestDatabase from "../src/TestDatabase.js"
import { adjust, balance, createBank, endAndDropNothingOpen, preparedIn } from "./support/pg2pc.js"
import * as TcpProxy from "./support/tcpProxy.js"

const server = await TestDatabase.server()
const DB_A = "accord_t_loghung_a"
const DB_B = "accord_t_loghung_b"
const DB_LOG = "accord_t_loghung_log"

describe.skipIf(server === undefined)("a coordinator log that stops answering", () => {
  const adminUrl = server?.adminUrl ?? ""
  let a: postgres.Sql
  let b: postgres.Sql
  let logUrl = ""
  const pools: Array<postgres.Sql> = []

  beforeAll(async () => {
    a = postgres(await createBank(adminUrl, DB_A, 4, 100), { max: 4, onnotice: () => {} })
    b = postgres(await createBank(adminUrl, DB_B, 4, 100), { max: 4, onnotice: () => {} })
    logUrl = await TestDatabase.createDatabase(adminUrl, DB_LOG)
  }, 60_000)

  afterAll(
    () => endAndDropNothingOpen(adminUrl, [a, b, ...pools], [DB_A, DB_B], [DB_A, DB_B, DB_LOG]),
    60_000
  )

  /** A proxy in front of the log's database, closed with the test's scope. */
  const proxyToLog = Effect.acquireRelease(
    Effect.promise(() => TcpProxy.start(logUrl)),
    (p) => Effect.promise(() => p.close())
  )

  /** The log on a one-connection pool through `proxy`. */
  const logThrough = (proxy: TcpProxy.TcpProxy, options: Omit<PgTransactionLog.Options, "sql"> = {}) => {
    const sql = postgres(proxy.url(logUrl), { max: 1, onnotice: () => {} })
    pools.push(sql)
    return PgTransactionLog.make({ sql, ...options })
  }

  it.live(
    "immediate completion: the run ends by its deadline, Committed, and recovery finishes the decision",
    () =>
      Effect.scoped(
        Effect.gen(function* () {
          const proxy = yield* proxyToLog
          const log = yield* logThrough(proxy, { completion: "immediate" })
          const pa = yield* PgParticipant.make({ name: "bank-a", sql: a })
          const pb = yield* PgParticipant.make({ name: "bank-b", sql: b })
          // The decision goes through; the completion update is held at the proxy for good.
          const frozen = proxy.freezeWhen((chunk) => chunk.includes("set completed_at"), { deliver: false })
          const started = performance.now()
          const outcome = yield* TwoPhaseCommit.run(
            [Participant.branch(pa, adjust(1, -1)), Participant.branch(pb, adjust(1, 1))],
            { transactionTimeout: Duration.seconds(1) }
          ).pipe(
            Effect.provideService(TransactionLog.TransactionLog, log),
            Effect.timeout(Duration.seconds(20)),
            Effect.either
          )
          const took = performance.now() - started
          yield* Effect.promise(() => frozen)
          expect(Either.isRight(outcome) && outcome.right._tag).toBe("Committed")
          // 1 s deadline + the log's 5 s cancel bound + slack; before: the 20 s cap.
          expect(took).toBeLessThan(9_000)
          expect(yield* balance(a, 1)).toBe(99)
          expect(yield* balance(b, 1)).toBe(101)
          // The held completion is dropped with the proxy's links, never written: the decision reads
          // unfinished, and recovery finishes it.
          yield* Effect.promise(() => proxy.close())
          const direct = postgres(logUrl, { max: 1, onnotice: () => {} })
          pools.push(direct)
          const healthy = yield* PgTransactionLog.make({ sql: direct })
          const txId = Either.isRight(outcome) ? outcome.right.txId : ""
          expect((yield* healthy.unfinished()).map((d) => d.txId)).toContain(txId)
          const report = yield* Recovery.run([pa, pb], { orphanAfter: Duration.zero }).pipe(
            Effect.provideService(TransactionLog.TransactionLog, healthy)
          )
          expect(report.heuristics).toEqual([])
          expect((yield* healthy.unfinished()).map((d) => d.txId)).not.toContain(txId)
        })
      ),
    30_000
  )

  it.live(
    "a recovery pass whose read of unfinished decisions is not answered fails with LogError at logTimeout",
    () =>
      Effect.scoped(
        Effect.gen(function* () {
          const proxy = yield* proxyToLog
          const log = yield* logThrough(proxy)
          const pa = yield* PgParticipant.make({ name: "bank-a", sql: a })
          const frozen = proxy.freezeWhen((chunk) => chunk.includes("completed_at is null"), {
            deliver: false
          })
          const started = performance.now()
          const pass = yield* PgRecovery.run({
            participants: [pa],
            log,
            options: { orphanAfter: Duration.zero, logTimeout: Duration.seconds(1), gc: false }
          }).pipe(Effect.timeout(Duration.seconds(20)), Effect.either)
          const took = performance.now() - started
          yield* Effect.promise(() => frozen)
          expect(Either.isLeft(pass) && pass.left._tag).toBe("LogError")
          if (Either.isLeft(pass) && pass.left._tag === "LogError") {
            expect(pass.left.operation).toBe("unfinished")
          }
          // 1 s + the log's 5 s cancel bound + slack; before: the 20 s cap (TimeoutException).
          expect(took).toBeLessThan(9_000)
          proxy.unfreeze()
          expect(yield* Effect.promise(() => preparedIn(adminUrl, [DB_A, DB_B]))).toEqual([])
        })
      ),
    30_000
  )
})
