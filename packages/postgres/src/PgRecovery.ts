/**
 * Recovery against PostgreSQL: the core `Recovery` pass over Postgres participants and a
 * `PgTransactionLog`, followed by garbage collection of finished bookkeeping.
 *
 * The core pass finishes unfinished decisions (COMMIT/ROLLBACK PREPARED by gid; the marker rows
 * tell "already committed" from "rolled back by hand", reported as heuristics) and presumes abort
 * for Accord-prefixed prepared branches of each participant's own database with no decision, by
 * inserting the abort decision under the transaction's key (first writer wins).
 *
 * Then, for decisions completed more than `gcAfter` ago, each participant deletes its marker rows
 * and the decisions are purged from the log. `gcAfter` must exceed the participants'
 * `markerGrace` (default 5 minutes), so that the markers are old enough to be deleted.
 *
 * Safe to run twice and from several processes at once.
 *
 * @since 0.1.0
 */
import { type Participant, Recovery, type TransactionError, TransactionLog } from "@accord/core"
import { Duration, Effect } from "effect"
import type { PgTransactionLog } from "./PgTransactionLog.js"

/**
 * Options of a Postgres recovery pass.
 * @since 0.1.0
 */
export interface Options extends Recovery.Options {
  /**
   * Garbage collection of completed transactions: markers and log rows of decisions completed
   * more than `after` ago (default 10 minutes), at most `limit` per pass (default 10,000).
   * `false` turns it off.
   */
  readonly gc?: { readonly after?: Duration.DurationInput; readonly limit?: number } | false
}

/**
 * What a pass did: the core report plus garbage collection.
 * @since 0.1.0
 */
export interface Report extends Recovery.RecoveryReport {
  /** Completed decisions purged from the log (their markers deleted) in this pass. */
  readonly decisionsPurged: number
}

/**
 * One recovery pass.
 * @since 0.1.0
 */
export const run: (args: {
  readonly participants: ReadonlyArray<Participant.AnyParticipant>
  readonly log: PgTransactionLog
  readonly options?: Options
}) => Effect.Effect<Report, TransactionError.LogError | TransactionError.BranchCallError> = Effect.fn(
  "PgRecovery.run"
)(function* (args: {
  readonly participants: ReadonlyArray<Participant.AnyParticipant>
  readonly log: PgTransactionLog
  readonly options?: Options
}) {
  const options = args.options ?? {}
  const report = yield* Recovery.run(args.participants, options).pipe(
    Effect.provideService(TransactionLog.TransactionLog, args.log)
  )
  const decisionsPurged =
    options.gc === false
      ? 0
      : yield* collect(
          args.participants,
          args.log,
          options.gc ?? {},
          Duration.decode(options.callTimeout ?? Recovery.defaults.callTimeout),
          Duration.decode(options.logTimeout ?? Recovery.defaults.logTimeout)
        )
  return { ...report, decisionsPurged } satisfies Report
})

const collect = (
  participants: ReadonlyArray<Participant.AnyParticipant>,
  log: PgTransactionLog,
  gc: { readonly after?: Duration.DurationInput; readonly limit?: number },
  callTimeout: Duration.Duration,
  logTimeout: Duration.Duration
) =>
  Effect.gen(function* () {
    const within = (operation: string) => Recovery.logCallWithin(operation, logTimeout)
    const after = Duration.decode(gc.after ?? Duration.minutes(10))
    const done = yield* within("completed")(
      log.completed({
        limit: gc.limit ?? 10_000,
        olderThanMillis: Duration.toMillis(after),
        branches: participants.map((p) => p.name)
      })
    )
    if (done.length === 0) return 0
    const byName = new Map(participants.map((p) => [p.name as string, p]))
    const purgeable: Array<(typeof done)[number]["txId"]> = []
    const perParticipant = new Map<string, Array<Participant.BranchContext>>()
    for (const decision of done) {
      // A decision whose participant is not here keeps its row, so that its markers can still be
      // found; so does another deployment's (the same participant names, another gid namespace).
      const ours = decision.branches.every((b) => {
        const p = byName.get(b.branch)
        return p !== undefined && (p.owns === undefined || p.owns(b.gid))
      })
      if (!ours) continue
      purgeable.push(decision.txId)
      for (const b of decision.branches) {
        const list = perParticipant.get(b.branch) ?? []
        list.push({ txId: decision.txId, branch: b.branch, gid: b.gid })
        perParticipant.set(b.branch, list)
      }
    }
    const forgotten = yield* Effect.forEach(
      [...perParticipant.entries()],
      ([name, ctxs]) =>
        // Bounded, and not waiting for an interrupted statement to stop: an unreachable
        // participant must not hold the pass; its markers are forgotten by a later pass.
        Effect.disconnect(byName.get(name)!.forget(ctxs)).pipe(
          Effect.timeout(callTimeout),
          Effect.as(true),
          Effect.catchAll(() => Effect.succeed(false))
        ),
      { concurrency: "unbounded" }
    )
    // Purge only when every participant's markers went: otherwise the next pass tries again.
    if (!forgotten.every(Boolean)) return 0
    return yield* within("purge")(log.purge(purgeable))
  }).pipe(Effect.withSpan("PgRecovery.collect"))

/**
 * Runs a pass now and then every `every`, forever (fork it). A failed pass, or one that died (a
 * defect), is logged and the next one runs on schedule; so is a pass that left branches
 * unresolved (a warning listing them).
 * @since 0.1.0
 */
export const sweep = (args: {
  readonly participants: ReadonlyArray<Participant.AnyParticipant>
  readonly log: PgTransactionLog
  readonly every: Duration.DurationInput
  readonly options?: Options
}): Effect.Effect<never> => Recovery.repeatPasses(run(args), args.every)
