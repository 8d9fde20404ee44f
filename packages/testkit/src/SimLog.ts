/**
 * A simulated coordinator log: durable decisions shared by every coordinator process (the
 * original and the ones that recover after it), with failing writes drawn from the fault
 * schedule. A failed write fails before it lands or after it landed (the caller cannot tell).
 * Each process gets its own view, so a process can crash before or after each write.
 *
 * The log also records every decision it ever returned, so the checker can tell whether a
 * decision changed, and when each commit decision became durable.
 *
 * @since 0.1.0
 */
import { Duration, Effect, Option } from "effect"
import { LogError } from "@accord/core/TransactionError"
import type { TransactionId } from "@accord/core/TransactionId"
import {
  type DecisionRecord,
  type HeuristicRecord,
  heuristicKey,
  type TransactionLog,
  unfinishedPage
} from "@accord/core/TransactionLog"
import type * as Faults from "./Faults.js"
import type * as SimNetwork from "./SimNetwork.js"
import type * as Trace from "./Trace.js"

/**
 * The durable contents and ghost observations of a simulated log.
 * @since 0.1.0
 */
export class SimLog {
  readonly decisions = new Map<TransactionId, DecisionRecord>()
  /** Virtual time at which each decision became durable. */
  readonly durableAt = new Map<TransactionId, number>()
  readonly completed = new Set<TransactionId>()
  readonly heuristics: Array<HeuristicRecord> = []
  /** Every decision value handed out per transaction, in order. */
  readonly observed = new Map<TransactionId, Array<"commit" | "abort">>()
  constructor(
    readonly injector: Faults.Injector,
    readonly trace: Trace.Trace,
    readonly now: () => number,
    /** A broken log for the checker's own tests: commit decisions are acknowledged, never stored. */
    readonly losesCommitDecisions = false
  ) {}

  private observe(record: DecisionRecord): void {
    const list = this.observed.get(record.txId)
    if (list === undefined) this.observed.set(record.txId, [record.decision])
    else if (list[list.length - 1] !== record.decision) list.push(record.decision)
  }

  private write<A>(
    process: SimNetwork.Process,
    operation: string,
    txId: string | undefined,
    apply: () => A
  ): Effect.Effect<A, LogError> {
    return durableWrite(this.injector, process, "log", operation, txId, Effect.sync(apply))
  }

  private read<A>(operation: string, read: () => A): Effect.Effect<A, LogError> {
    return Effect.suspend(() =>
      this.injector.roll("logFailure")
        ? Effect.fail(failure(this.injector, "log", operation, undefined, false))
        : Effect.succeed(read())
    )
  }

  /** The log as process `process` uses it. */
  service(process: SimNetwork.Process): TransactionLog["Type"] {
    return {
      decide: (record) =>
        this.write(process, `decide ${record.decision}`, record.txId, () => {
          const existing = this.decisions.get(record.txId)
          if (existing !== undefined) {
            this.observe(existing)
            return existing
          }
          this.trace.add(process.name, `decision ${record.txId.slice(-6)} = ${record.decision}`)
          if (!(this.losesCommitDecisions && record.decision === "commit")) {
            this.decisions.set(record.txId, record)
            this.durableAt.set(record.txId, this.now())
          }
          this.observe(record)
          return record
        }),
      decision: (txId) =>
        this.read("decision", () => {
          const d = this.decisions.get(txId)
          if (d !== undefined) this.observe(d)
          return Option.fromNullable(d)
        }),
      complete: (txId) =>
        this.write(process, "complete", txId, () => {
          this.completed.add(txId)
        }),
      unfinished: (options) =>
        this.read("unfinished", () => {
          // Every unfinished decision, whatever its age (`olderThanMillis` is not simulated), one
          // page after `options.after`.
          const rows = unfinishedPage(
            this.decisions.values(),
            (txId) => this.completed.has(txId),
            Number.POSITIVE_INFINITY,
            options
          )
          for (const d of rows) this.observe(d)
          return rows
        }),
      recordHeuristic: (record) =>
        this.write(process, "heuristic", record.txId, () => {
          // Written once, as a database log does (a unique key): processes meeting the same outcome
          // leave one record.
          const key = heuristicKey(record)
          if (!this.heuristics.some((h) => heuristicKey(h) === key)) this.heuristics.push(record)
        }),
      heuristics: this.read("heuristics", () => [...this.heuristics])
    }
  }
}

const failure = (
  injector: Faults.Injector,
  who: string,
  operation: string,
  txId: string | undefined,
  landed: boolean
): LogError => {
  injector.inject(
    "log-failure",
    who,
    `${operation}${txId ? ` ${txId.slice(-6)}` : ""} failed ${landed ? "after" : "before"} it landed`
  )
  return new LogError({
    operation,
    ...(txId === undefined ? {} : { txId }),
    reason: "simulated write failure"
  })
}

/**
 * A forced write to a simulated durable log, as process `process` performs it: the process may
 * die just before or just after it, it takes a few virtual milliseconds, and it may fail before it
 * landed or after (the writer cannot tell which).
 * @since 0.1.0
 */
export const durableWrite = <A, E>(
  injector: Faults.Injector,
  process: SimNetwork.Process,
  who: string,
  operation: string,
  txId: string | undefined,
  write: Effect.Effect<A, E>
): Effect.Effect<A, E | LogError> =>
  Effect.gen(function* () {
    yield* process.boundary(`before log ${operation}`)
    yield* Effect.sleep(Duration.millis(injector.healed ? 1 : injector.rng.int(1, 3)))
    if (injector.roll("logFailure")) {
      const landed = injector.rng.chance(0.5)
      if (landed) yield* write
      return yield* failure(injector, who, operation, txId, landed)
    }
    const result = yield* write
    yield* process.boundary(`after log ${operation}`)
    return result
  })
