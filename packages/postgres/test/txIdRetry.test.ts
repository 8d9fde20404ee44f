/**
 * A run under a txId the caller gave, while an earlier run of the same txId still holds its branches
 * prepared (its coordinator died after its commit decision, or its decision write went unanswered
 * and the caller retried). The second run's prepare waits on the first run's locks (its rows, or the
 * marker's unique gid) and times out: no definite answer. Its abort then rolled those gids back,
 * which are the first run's: Accord itself undid a transaction whose commit decision is logged, and
 * recovery found both branches gone ("rolled back outside the protocol"). Found by a review
 * (2026-12-07); the first test failed before the fix with n = 0 in both banks.
 *
 * Now the abort first writes an abort decision (first writer wins, as recovery does): a commit
 * decision that holds keeps the gids for it; an abort decision that holds fences the first run,
 * which then aborts too.
 */
import { Participant, Recovery, TransactionId, TransactionLog, TwoPhaseCommit } from "@accord/core"
import { afterAll, beforeAll, describe, expect, it } from "@effect/vitest"
import { Duration, Effect } from "effect"
import postgres from "postgres"
import * as PgParticipant from "../src/PgParticipant.js"
import * as PgTransactionLog from "../src/PgTransactionLog.js"
import * as TestDatabase from "../src/TestDatabase.js"
import {
  adjust,
  balance,
  branchContext,
  createBank,
  endAndDropNothingOpen,
  preparedIn
} from "./support/pg2pc.js"

const server = await TestDatabase.server()
const DB_A = "accord_t_txretry_a"
const DB_B = "accord_t_txretry_b"
const DB_LOG = "accord_t_txretry_log"

describe.skipIf(server === undefined)(
  "TwoPhaseCommit.run again under a txId whose earlier run is prepared",
  () => {
    const adminUrl = server?.adminUrl ?? ""
    let a: postgres.Sql
    let b: postgres.Sql
    let logSql: postgres.Sql

    beforeAll(async () => {
      a = postgres(await createBank(adminUrl, DB_A, 4, 100), { max: 4, onnotice: () => {} })
      b = postgres(await createBank(adminUrl, DB_B, 4, 100), { max: 4, onnotice: () => {} })
      logSql = postgres(await TestDatabase.createDatabase(adminUrl, DB_LOG), { max: 4, onnotice: () => {} })
    }, 60_000)

    afterAll(
      () => endAndDropNothingOpen(adminUrl, [a, b, logSql], [DB_A, DB_B], [DB_A, DB_B, DB_LOG]),
      60_000
    )

    const setup = Effect.gen(function* () {
      const log = yield* PgTransactionLog.make({ sql: logSql })
      const pa = yield* PgParticipant.make({ name: "bank-a", sql: a })
      const pb = yield* PgParticipant.make({ name: "bank-b", sql: b })
      return { log, pa, pb }
    })

    /** The first run: both branches prepared (account `id`: -1 in bank-a, +1 in bank-b), then it stops. */
    const firstRun = (pa: PgParticipant.PgParticipant, pb: PgParticipant.PgParticipant, id: number) =>
      Effect.gen(function* () {
        const txId = yield* TransactionId.make
        const ctxs = [branchContext(txId, pa), branchContext(txId, pb)] as const
        expect((yield* pa.prepare(ctxs[0], adjust(id, -1)))._tag).toBe("Prepared")
        expect((yield* pb.prepare(ctxs[1], adjust(id, 1)))._tag).toBe("Prepared")
        return { txId, ctxs }
      })

    const retry = (
      pa: PgParticipant.PgParticipant,
      pb: PgParticipant.PgParticipant,
      txId: string,
      id: number
    ) =>
      TwoPhaseCommit.run([Participant.branch(pa, adjust(id, -1)), Participant.branch(pb, adjust(id, 1))], {
        txId,
        prepareTimeout: Duration.millis(800),
        callTimeout: Duration.seconds(1)
      })

    it.live(
      "the earlier run's commit decision holds: its branches are left prepared and recovery commits them",
      () =>
        Effect.scoped(
          Effect.gen(function* () {
            const { log, pa, pb } = yield* setup
            const { txId, ctxs } = yield* firstRun(pa, pb, 1)
            yield* log.decide({
              txId,
              decision: "commit",
              branches: ctxs.map(({ branch, gid }) => ({ branch, gid })),
              decidedAt: Date.now()
            })
            const again = yield* retry(pa, pb, txId, 1).pipe(
              Effect.provideService(TransactionLog.TransactionLog, log)
            )
            expect(again._tag).toBe("Aborted")
            if (again._tag === "Aborted")
              expect(again.reason).toContain("commit decision from an earlier run")
            // The earlier run's branches are still prepared, for its decision.
            const prepared = yield* Effect.promise(() => preparedIn(adminUrl, [DB_A, DB_B]))
            expect(prepared.map((p) => p.gid).sort()).toEqual(ctxs.map((c) => c.gid).sort())
            const report = yield* Recovery.run([pa, pb], { orphanAfter: Duration.zero }).pipe(
              Effect.provideService(TransactionLog.TransactionLog, log)
            )
            expect(report.heuristics).toEqual([])
            expect(report.branchesCommitted).toBe(2)
            // Applied once: the earlier run's transfer, not the retry's.
            expect(yield* balance(a, 1)).toBe(99)
            expect(yield* balance(b, 1)).toBe(101)
            expect(yield* Effect.promise(() => preparedIn(adminUrl, [DB_A, DB_B]))).toEqual([])
          })
        )
    )

    it.live(
      "no decision yet: the retry's abort decision fences the earlier run, whose branches are rolled back",
      () =>
        Effect.scoped(
          Effect.gen(function* () {
            const { log, pa, pb } = yield* setup
            const { txId, ctxs } = yield* firstRun(pa, pb, 2)
            const again = yield* retry(pa, pb, txId, 2).pipe(
              Effect.provideService(TransactionLog.TransactionLog, log)
            )
            expect(again._tag).toBe("Aborted")
            expect(yield* Effect.promise(() => preparedIn(adminUrl, [DB_A, DB_B]))).toEqual([])
            // The earlier run, still alive, now tries to decide commit: the abort decision holds.
            const late = yield* log.decide({
              txId,
              decision: "commit",
              branches: ctxs.map(({ branch, gid }) => ({ branch, gid })),
              decidedAt: Date.now()
            })
            expect(late.decision).toBe("abort")
            expect(yield* balance(a, 2)).toBe(100)
            expect(yield* balance(b, 2)).toBe(100)
          })
        )
    )

    it.live("a log that does not answer the abort decision: the uncertain gids are left to recovery", () =>
      Effect.scoped(
        Effect.gen(function* () {
          const { log, pa, pb } = yield* setup
          const { txId, ctxs } = yield* firstRun(pa, pb, 3)
          // Decisions of this txId never answer (the earlier run's commit may be landing).
          const hung: TransactionLog.TransactionLog["Type"] = {
            ...log,
            direct: undefined,
            decide: (record) => (record.txId === txId ? Effect.never : log.decide(record))
          }
          const again = yield* retry(pa, pb, txId, 3).pipe(
            Effect.provideService(TransactionLog.TransactionLog, hung)
          )
          expect(again._tag).toBe("Aborted")
          if (again._tag === "Aborted") expect(again.reason).toContain("recovery decides")
          const prepared = yield* Effect.promise(() => preparedIn(adminUrl, [DB_A, DB_B]))
          expect(prepared.map((p) => p.gid).sort()).toEqual(ctxs.map((c) => c.gid).sort())
          // No decision in the log: recovery presumes abort.
          const report = yield* Recovery.run([pa, pb], { orphanAfter: Duration.zero }).pipe(
            Effect.provideService(TransactionLog.TransactionLog, log)
          )
          expect(report.branchesRolledBack).toBe(2)
          expect(yield* Effect.promise(() => preparedIn(adminUrl, [DB_A, DB_B]))).toEqual([])
          expect(yield* balance(a, 3)).toBe(100)
        })
      )
    )
  }
)
