/**
 * `--recovery N`: how long recovery takes to finish N in-doubt transactions.
 *
 * Two measurements, because a server holds at most `max_prepared_transactions` prepared branches
 * at once (64 on this machine, shared with other users of the server):
 *
 * 1. `inDoubt`: the real case. Each transaction has both branches prepared and its commit decision
 *    written, and phase 2 never ran (the coordinator died at the commit point). Recovery must
 *    COMMIT PREPARED every branch and complete the decision. All N in one pass when
 *    `max_prepared_transactions` leaves room for 2N branches; otherwise built and recovered in
 *    batches that fit, and the recovery time is the sum over batches.
 * 2. `unacknowledged`: all N at once. Each transaction's decision is written and its branches
 *    committed, but the completion record is missing (the coordinator died after phase 2).
 *    Recovery re-drives every branch (found committed by its marker) and completes each decision.
 *
 * @since 0.1.0
 */
import { type Participant, Recovery, TransactionId, TransactionLog } from "@accord/core"
import * as PgParticipant from "@accord/postgres/PgParticipant"
import * as PgTransactionLog from "@accord/postgres/PgTransactionLog"
import { Clock, Duration, Effect, Schedule } from "effect"
import postgres from "postgres"
import * as Server from "./Server.js"

type Log = TransactionLog.TransactionLog["Type"]
type P = Participant.Participant<PgParticipant.PgWork>

let nextAccount = 0

/**
 * Each transaction updates its own account (the same id in both banks), round-robin: a prepared
 * branch keeps its row lock until recovery, so random accounts would make later set-up branches
 * wait for (and time out on) rows held by earlier in-doubt ones as the batch grows.
 */
const work =
  (account: number, delta: number): PgParticipant.PgWork =>
  async (session) => {
    await session.query("UPDATE accounts SET balance = balance + $1 WHERE id = $2", [delta, account])
  }

/** Prepares both branches and writes the commit decision; optionally commits the branches too. */
const leaveInDoubt = (pa: P, pb: P, log: Log, commitBranches: boolean) =>
  Effect.gen(function* () {
    const txId = yield* TransactionId.make
    const ctxA = { txId, branch: pa.name, gid: TransactionId.gid(txId, pa.name) }
    const ctxB = { txId, branch: pb.name, gid: TransactionId.gid(txId, pb.name) }
    const account = (nextAccount++ % Server.accounts) + 1
    const [va, vb] = yield* Effect.all(
      [pa.prepare(ctxA, work(account, -1)), pb.prepare(ctxB, work(account, 1))],
      {
        concurrency: 2
      }
    )
    if (va?._tag !== "Prepared" || vb?._tag !== "Prepared") {
      // A refused setup branch (lock timeout, no free prepared slot): undo and try another one.
      yield* Effect.all([pa.rollback(ctxA), pb.rollback(ctxB)], { concurrency: 2 })
      const reason = [va, vb].find((v) => v?._tag === "No")
      return yield* Effect.fail(`setup transaction refused: ${reason?._tag === "No" ? reason.reason : "?"}`)
    }
    const decidedAt = yield* Clock.currentTimeMillis
    yield* log.decide({
      txId,
      decision: "commit",
      branches: [
        { branch: ctxA.branch, gid: ctxA.gid },
        { branch: ctxB.branch, gid: ctxB.gid }
      ],
      decidedAt
    })
    if (commitBranches) yield* Effect.all([pa.commit(ctxA), pb.commit(ctxB)], { concurrency: 2 })
  })

const retried = <A, E, R>(effect: Effect.Effect<A, E, R>) =>
  effect.pipe(
    Effect.retry(Schedule.spaced(Duration.millis(20)).pipe(Schedule.intersect(Schedule.recurs(20))))
  )

const preparedCount = async (adminUrl: string) => {
  const admin = postgres(adminUrl, { max: 1, onnotice: () => {} })
  try {
    const [row] = await admin<{ n: number; max: number }[]>`
      SELECT (SELECT count(*)::int FROM pg_prepared_xacts) AS n,
             current_setting('max_prepared_transactions')::int AS max`
    return row!
  } finally {
    await admin.end({ timeout: 5 })
  }
}

/**
 * In-doubt transactions built and recovered per pass, given the server's free prepared slots: all
 * N at once when the server has room for their 2N branches (with 64 to spare); otherwise a quarter
 * of the free slots (the server is shared, and other sessions need slots too). At most one
 * transaction per account (see `work`).
 * @since 0.1.0
 */
export const batchSize = (freeSlots: number, n: number): number =>
  Math.min(Server.accounts, freeSlots >= 2 * n + 64 ? n : Math.max(1, Math.floor(freeSlots / 4)))

/**
 * What the in-doubt measurement found.
 * @since 0.1.0
 */
export interface InDoubtResult {
  readonly transactions: number
  readonly batchSize: number
  readonly batches: number
  readonly branchesCommitted: number
  readonly recoverySeconds: number
  readonly coordinatorCpuSeconds: number
  readonly transactionsPerSecond: number
  readonly extrapolatedSecondsFor10000: number
}

/**
 * The target, "recovery of 10,000 in-doubt transactions in <= 10 s", judged only from a run
 * that recovered at least 10,000 in one pass (`met` null otherwise: fewer, or batches whose fixed
 * cost per pass a real crash does not pay; the extrapolation is shown, not judged), and only met
 * when every branch was committed and nothing was left prepared.
 * @since 0.1.0
 */
export const target = (
  inDoubt: InDoubtResult,
  preparedLeft: number
): { readonly target: string; readonly measured: string; readonly met: boolean | null } => {
  const complete = inDoubt.branchesCommitted === 2 * inDoubt.transactions && preparedLeft === 0
  const judged = inDoubt.transactions >= 10_000 && inDoubt.batches === 1
  const measured = `${inDoubt.transactions} in ${inDoubt.batches} pass${inDoubt.batches === 1 ? "" : "es"}: ${inDoubt.recoverySeconds} s (${inDoubt.extrapolatedSecondsFor10000} s per 10,000${judged ? "" : ", extrapolated"}), ${inDoubt.branchesCommitted}/${2 * inDoubt.transactions} branches committed, ${preparedLeft} left prepared`
  return {
    target: "recovery of 10,000 in-doubt transactions <= 10 s",
    measured,
    met: !complete ? false : judged ? inDoubt.recoverySeconds <= 10 : null
  }
}

/**
 * Runs both measurements for `n` transactions.
 * @since 0.1.0
 */
export const run = async (
  adminUrl: string,
  dbs: Server.Databases,
  n: number,
  log: (line: string) => void
) => {
  const a = Server.pool(dbs.a, 20)
  const b = Server.pool(dbs.b, 20)
  const c = Server.pool(dbs.coordinator, 20)
  try {
    return await Effect.runPromise(
      Effect.scoped(
        Effect.gen(function* () {
          const pa = yield* PgParticipant.make({ name: "bank-a", sql: a })
          const pb = yield* PgParticipant.make({ name: "bank-b", sql: b })
          const txLog = yield* PgTransactionLog.make({ sql: c })
          const recover = Recovery.run([pa, pb], { orphanAfter: Duration.zero, concurrency: 16 }).pipe(
            Effect.provideService(TransactionLog.TransactionLog, txLog)
          )
          // Whatever an earlier run left.
          yield* recover

          // 1. Real in-doubt transactions, in batches under max_prepared_transactions.
          const server = yield* Effect.promise(() => preparedCount(adminUrl))
          const batch = batchSize(server.max - server.n, n)
          let left = n
          let recoverMillis = 0
          let recoverCpuMillis = 0
          let committed = 0
          let batches = 0
          while (left > 0) {
            const k = Math.min(batch, left)
            yield* Effect.forEach(
              Array.from({ length: k }),
              () => retried(leaveInDoubt(pa, pb, txLog, false)),
              {
                concurrency: 8,
                discard: true
              }
            )
            const t0 = performance.now()
            const cpu0 = process.cpuUsage()
            const report = yield* recover
            recoverMillis += performance.now() - t0
            const cpu = process.cpuUsage(cpu0)
            recoverCpuMillis += (cpu.user + cpu.system) / 1000
            committed += report.branchesCommitted
            batches++
            left -= k
            if (batches % 50 === 0) log(`recovery: ${n - left}/${n} in-doubt transactions recovered`)
          }
          const inDoubt: InDoubtResult = {
            transactions: n,
            batchSize: batch,
            batches,
            branchesCommitted: committed,
            recoverySeconds: Math.round(recoverMillis) / 1000,
            coordinatorCpuSeconds: Math.round(recoverCpuMillis) / 1000,
            transactionsPerSecond: Math.round((n / recoverMillis) * 1000),
            extrapolatedSecondsFor10000: Math.round((recoverMillis / n) * 10_000) / 1000
          }
          log(`recovery (in doubt, batches of ${batch}): ${JSON.stringify(inDoubt)}`)

          // 2. N unacknowledged decisions at once.
          yield* Effect.forEach(Array.from({ length: n }), () => retried(leaveInDoubt(pa, pb, txLog, true)), {
            concurrency: 16,
            discard: true
          })
          Server.resetCounters()
          const t1 = performance.now()
          const cpu1 = process.cpuUsage()
          const report = yield* recover
          const millis = performance.now() - t1
          const cpu = process.cpuUsage(cpu1)
          const unacknowledged = {
            transactions: n,
            transactionsFinished: report.transactionsFinished,
            branchesCommitted: report.branchesCommitted,
            heuristics: report.heuristics.length,
            recoverySeconds: Math.round(millis) / 1000,
            coordinatorCpuSeconds: Math.round((cpu.user + cpu.system) / 1000) / 1000,
            statementsPerTransaction: Math.round((Server.counters.statements / n) * 10) / 10,
            transactionsPerSecond: Math.round((n / millis) * 1000)
          }
          log(`recovery (unacknowledged, all at once): ${JSON.stringify(unacknowledged)}`)
          const preparedLeft = yield* Effect.promise(() => Server.preparedIn(adminUrl, [dbs.a, dbs.b]))
          return { target: target(inDoubt, preparedLeft), inDoubt, unacknowledged, preparedLeft }
        })
      )
    )
  } finally {
    await Promise.all([a.end({ timeout: 5 }), b.end({ timeout: 5 }), c.end({ timeout: 5 })])
  }
}
