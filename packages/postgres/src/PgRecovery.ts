/**
 * Recovery against PostgreSQL: the core `Recovery` pass over Postgres participants and a
 * `PgTransactionLog`, followed by garbage collection of finished bookkeeping.
 *
 * The core pass finishes unfinished decisions (COMMIT/ROLLBACK PREPARED by gid; the marker rows
 * tell "already committed" from "rolled back by hand", reported as heuristics) and presumes abort
 * for Accord-prefixed prepared branches of each participant's own database with no decision, by
 * inserting the abort decision under the transaction's key (first writer wins).
 *
 * Then, for decisions completed more than `gc.after` ago, each participant forgets their markers
 * and the decisions are purged from the log. A forgotten marker stays `markerGrace` (default 5
 * minutes) after that forget, whatever `gc.after` is: the participant deletes it at a later forget.
 * (Until 2026-12-07 this said `gc.after` must exceed `markerGrace`: the grace then ran from the
 * marker's creation, and a shorter `gc.after` left markers behind. It runs from the forget now, so
 * `gc.after` has no bound from it; `test/gcDefects.test.ts` pins that.)
 *
 * Safe to run twice and from several processes at once.
 *
 * @since 0.1.0
 */
import { type Participant, Recovery, TransactionError, TransactionId, TransactionLog } from "@accord/core"
import { Duration, Effect, Option } from "effect"
import { finiteDuration } from "./internal/retention.js"
import type { PgTransactionLog } from "./PgTransactionLog.js"

/**
 * Options of a Postgres recovery pass.
 * @since 0.1.0
 */
export interface Options extends Recovery.Options {
  /**
   * Garbage collection of completed transactions: markers and log rows of decisions completed
   * more than `after` ago (default 10 minutes; zero or more, finite), at most `limit` per pass
   * (default 10,000; a positive integer). `false` turns it off. A value that is not valid (NaN, a
   * negative or infinite duration, which Effect's `Duration.decode` would otherwise read as zero:
   * "purge everything now") fails the pass with a `ConfigurationError` before anything is done.
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
}) => Effect.Effect<
  Report,
  TransactionError.LogError | TransactionError.BranchCallError | TransactionError.ConfigurationError
> = Effect.fn("PgRecovery.run")(function* (args: {
  readonly participants: ReadonlyArray<Participant.AnyParticipant>
  readonly log: PgTransactionLog
  readonly options?: Options
}) {
  const options = args.options ?? {}
  // Checked before the pass: a gc that is not valid must not leave a pass half done either.
  const gc = options.gc === false ? undefined : yield* checkGc(options.gc ?? {})
  const report = yield* Recovery.run(args.participants, options).pipe(
    Effect.provideService(TransactionLog.TransactionLog, args.log)
  )
  const decisionsPurged =
    gc === undefined
      ? 0
      : yield* collect(
          args.participants,
          args.log,
          gc,
          Duration.decode(options.callTimeout ?? Recovery.defaults.callTimeout),
          Duration.decode(options.logTimeout ?? Recovery.defaults.logTimeout)
        )
  return { ...report, decisionsPurged } satisfies Report
})

const checkGc = (gc: {
  readonly after?: Duration.DurationInput
  readonly limit?: number
}): Effect.Effect<
  { readonly after: Duration.Duration; readonly limit: number },
  TransactionError.ConfigurationError
> => {
  const refuse = (reason: string, fix: string) =>
    Effect.fail(new TransactionError.ConfigurationError({ participant: "PgRecovery", reason, fix }))
  const after = finiteDuration(gc.after ?? Duration.minutes(10))
  if (Option.isNone(after)) {
    return refuse(
      `gc.after must be a finite duration of zero or more (got ${String(gc.after)})`,
      'give gc.after as e.g. Duration.minutes(10) or "10 minutes", or pass gc: false to turn garbage collection off'
    )
  }
  const limit = gc.limit ?? 10_000
  if (!Number.isSafeInteger(limit) || limit < 1) {
    return refuse(
      `gc.limit must be a positive integer (got ${String(gc.limit)})`,
      "give gc.limit as e.g. 10000"
    )
  }
  return Effect.succeed({ after: after.value, limit })
}

/**
 * Most exclusions gc's page query carries. A page is read again as long as it held another
 * deployment's decision not left out yet: each read leaves out at least one more namespace (one
 * pattern per participant name and namespace, so a handful in practice), or, for a gid that does
 * not parse, that gid alone; this bounds the query's size should the log hold many such gids.
 */
const MAX_EXCLUSIONS = 1_000

/** A LIKE pattern matching exactly `text`. */
const likeExactly = (text: string): string => text.replace(/[\\%_]/g, (c) => `\\${c}`)

/**
 * How another deployment's gids of `branch` are left out of gc's page: by their gid namespace
 * (`owns` is by name and namespace, see `Participant.owns`), checked on a second gid of that
 * namespace; a gid that does not parse, or an `owns` that is not by namespace, by the gid itself.
 */
const foreignPattern = (p: Participant.AnyParticipant, gid: TransactionId.Gid): string => {
  const parsed = TransactionId.parseGid(gid)
  if (Option.isSome(parsed)) {
    const probe = TransactionId.gid(
      "00000000000000000000000000" as TransactionId.TransactionId,
      parsed.value.branch,
      parsed.value.namespace
    )
    if (p.owns?.(probe) === false) return TransactionId.gidLikePattern(parsed.value.namespace)
  }
  return likeExactly(gid)
}

const collect = (
  participants: ReadonlyArray<Participant.AnyParticipant>,
  log: PgTransactionLog,
  gc: { readonly after: Duration.Duration; readonly limit: number },
  callTimeout: Duration.Duration,
  logTimeout: Duration.Duration
) =>
  Effect.gen(function* () {
    const within = (operation: string) => Recovery.logCallWithin(operation, logTimeout)
    const byName = new Map(participants.map((p) => [p.name as string, p]))
    const owned = (b: { readonly branch: string; readonly gid: TransactionId.Gid }) => {
      const p = byName.get(b.branch)
      return p !== undefined && (p.owns === undefined || p.owns(b.gid))
    }
    // Another deployment sharing the log under the same participant names (another gid namespace)
    // is left out by the query, not after it: its decisions, however many, would otherwise fill
    // every page of `limit` and this deployment's would never be purged. Its namespaces are learnt
    // from the pages themselves (a participant does not tell its namespace), so a page that held
    // some is read again without them.
    const excluding: Array<{ readonly branch: string; readonly gidLike: string }> = []
    const excluded = new Set<string>()
    let done: ReadonlyArray<TransactionLog.DecisionRecord> = []
    for (;;) {
      done = yield* within("completed")(
        log.completed({
          limit: gc.limit,
          olderThanMillis: Duration.toMillis(gc.after),
          branches: participants.map((p) => p.name),
          excluding
        })
      )
      let learnt = false
      for (const decision of done) {
        for (const b of decision.branches) {
          const p = byName.get(b.branch)
          if (p === undefined || owned(b)) continue
          const gidLike = foreignPattern(p, b.gid)
          const key = `${b.branch}\u0000${gidLike}`
          if (excluded.has(key)) continue
          excluded.add(key)
          excluding.push({ branch: b.branch, gidLike })
          learnt = true
        }
      }
      if (!learnt || excluding.length > MAX_EXCLUSIONS) break
    }
    if (done.length === 0) return 0
    const purgeable: Array<(typeof done)[number]["txId"]> = []
    const perParticipant = new Map<string, Array<Participant.BranchContext>>()
    for (const decision of done) {
      // A decision whose participant is not here keeps its row, so that its markers can still be
      // found; so does another deployment's (the same participant names, another gid namespace).
      if (!decision.branches.every(owned)) continue
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
