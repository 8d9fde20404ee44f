/**
 * The transfer workload: random transfers between the two banks, `concurrency` at a time, each
 * one global transaction with a branch per bank. Amounts are log-uniform from 1 to 5,000 against
 * balances seeded at 1,000, so a share of debits overdraw and the database refuses them.
 *
 * @since 0.1.0
 */
import { TransactionId } from "@accord/core"
import { Effect } from "effect"
import * as Bank from "./Bank.js"
import type { Journal } from "./Journal.js"

/**
 * One transfer.
 * @since 0.1.0
 */
export interface Transfer {
  readonly txId: string
  readonly from: { readonly bank: "a" | "b"; readonly account: number }
  readonly to: { readonly bank: "a" | "b"; readonly account: number }
  readonly amount: number
}

/**
 * How a protocol reports a transfer's end.
 * @since 0.1.0
 */
export type Result =
  | { readonly _tag: "Committed" }
  | { readonly _tag: "CommitPending" }
  | { readonly _tag: "Aborted"; readonly reason: string; readonly sqlState: string | undefined }
  /** No decision reached by the coordinator (3PC quorum mode); recovery decides. */
  | { readonly _tag: "Undecided"; readonly reason: string }

/**
 * Runs one transfer under a protocol: the work of each bank's branch is given.
 * @since 0.1.0
 */
export type Execute = (
  txId: string,
  work: { readonly a: Bank.Work; readonly b: Bank.Work }
) => Effect.Effect<Result, { readonly message: string }>

/**
 * What a run did.
 * @since 0.1.0
 */
export interface Stats {
  committed: number
  aborted: number
  commitPending: number
  /** Calls that failed without an outcome (in doubt; recovery decides). */
  unknown: number
  insufficientFunds: number
  lockTimeouts: number
  otherAborts: number
  readonly latenciesMs: Array<number>
  elapsedMs: number
  readonly errors: Array<string>
  /** A few distinct reasons of aborts that were neither insufficient funds nor lock timeouts. */
  readonly otherReasons: Array<string>
}

const randomInt = (min: number, max: number) => min + Math.floor(Math.random() * (max - min + 1))

/**
 * A random transfer between the two banks.
 * @since 0.1.0
 */
export const randomTransfer = (txId: string, accounts: number): Transfer => {
  const fromBank = Math.random() < 0.5 ? "a" : "b"
  return {
    txId,
    from: { bank: fromBank, account: randomInt(1, accounts) },
    to: { bank: fromBank === "a" ? "b" : "a", account: randomInt(1, accounts) },
    amount: Math.max(1, Math.floor(Math.exp(Math.random() * Math.log(5000))))
  }
}

/**
 * The branch work of each bank for a transfer.
 * @since 0.1.0
 */
export const workOf = (t: Transfer): { readonly a: Bank.Work; readonly b: Bank.Work } => {
  const debit = Bank.applyWork(t.txId, t.from.account, -t.amount)
  const credit = Bank.applyWork(t.txId, t.to.account, t.amount)
  return t.from.bank === "a" ? { a: debit, b: credit } : { a: credit, b: debit }
}

/**
 * Waits for the event loop's next check phase (`setImmediate`): a macrotask, so the loop first
 * runs its I/O phase, where the process's signal handlers and due timers run. Effect's own yields
 * are microtasks, and PGlite's work is all in this process (WASM behind promise chains), so without
 * this a PGlite run never reaches that phase: a SIGINT/SIGTERM would wait for the run's end.
 */
const yieldToEventLoop: Effect.Effect<void> = Effect.async<void>((resume) => {
  const handle = setImmediate(() => resume(Effect.void))
  return Effect.sync(() => clearImmediate(handle))
})

/**
 * Runs `transfers` transfers, `concurrency` at a time; `tick` is called after each one. Each
 * worker yields to the event loop before each transfer, so a signal is handled (and the run
 * interrupted) between transfers, on PGlite as on PostgreSQL.
 * @since 0.1.0
 */
export const run = Effect.fn("BankTransfer.workload")(function* (options: {
  readonly transfers: number
  readonly concurrency: number
  readonly accounts: number
  readonly protocol: string
  readonly execute: Execute
  readonly journal: Journal
  readonly tick: (stats: Stats) => void
}) {
  const stats: Stats = {
    committed: 0,
    aborted: 0,
    commitPending: 0,
    unknown: 0,
    insufficientFunds: 0,
    lockTimeouts: 0,
    otherAborts: 0,
    latenciesMs: [],
    elapsedMs: 0,
    errors: [],
    otherReasons: []
  }
  const started = performance.now()
  const one = Effect.gen(function* () {
    yield* yieldToEventLoop
    const txId = yield* TransactionId.make
    const transfer = randomTransfer(txId, options.accounts)
    options.journal.write({ event: "intent", protocol: options.protocol, ...transfer })
    const t0 = performance.now()
    const result = yield* Effect.either(options.execute(txId, workOf(transfer)))
    stats.latenciesMs.push(performance.now() - t0)
    if (result._tag === "Left") {
      stats.unknown++
      if (stats.errors.length < 5) stats.errors.push(result.left.message)
      options.journal.write({ event: "outcome", txId, outcome: "Unknown", reason: result.left.message })
    } else {
      const r = result.right
      if (r._tag === "Undecided") {
        stats.unknown++
        options.journal.write({ event: "outcome", txId, outcome: "Unknown", reason: r.reason })
        options.tick(stats)
        return
      }
      if (r._tag === "Committed") stats.committed++
      else if (r._tag === "CommitPending") stats.commitPending++
      else {
        stats.aborted++
        if (r.sqlState === "23514") stats.insufficientFunds++
        else if (r.sqlState === "55P03") stats.lockTimeouts++
        else {
          stats.otherAborts++
          const reason = r.sqlState === undefined ? r.reason : `${r.sqlState} ${r.reason}`
          if (stats.otherReasons.length < 3 && !stats.otherReasons.includes(reason))
            stats.otherReasons.push(reason)
        }
      }
      options.journal.write({
        event: "outcome",
        txId,
        outcome: r._tag,
        ...(r._tag === "Aborted" ? { reason: r.reason } : {})
      })
    }
    options.tick(stats)
  })
  yield* Effect.forEach(Array.from({ length: options.transfers }), () => one, {
    concurrency: options.concurrency,
    discard: true
  })
  stats.elapsedMs = performance.now() - started
  return stats
})

/**
 * The `q` quantile (0..1) of `values`, nearest rank.
 * @since 0.1.0
 */
export const quantile = (values: ReadonlyArray<number>, q: number): number => {
  if (values.length === 0) return 0
  const sorted = [...values].sort((x, y) => x - y)
  const rank = Math.min(sorted.length - 1, Math.max(0, Math.ceil(q * sorted.length) - 1))
  return sorted[rank]!
}
