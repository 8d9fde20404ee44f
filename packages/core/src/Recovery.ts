/**
 * Recovery: drives every logged decision and every orphan branch to an end.
 *
 * 1. Unfinished decisions: each listed branch is told the decision again (commit and rollback
 *    are idempotent); a commit that finds the branch gone without its marker is a heuristic
 *    outcome, recorded and reported. When every branch acknowledged, the entry is completed.
 * 2. Orphans: an Accord branch prepared on a participant with no decision is presumed aborted
 *    by *inserting* an abort decision under the transaction's key. The coordinator's commit
 *    decision is an insert into the same key and the first writer wins, so recovery can never
 *    roll back a branch whose transaction is about to commit (citus#1029), whatever the clocks.
 *    `orphanAfter` only spares young, probably live, transactions a needless abort.
 *
 * Another deployment's gids (`Participant.owns`), in the log or in a participant's database, are
 * left alone and listed in the report (`foreign`), so that an operator sees them.
 *
 * Safe to run twice and from several processes at once: every step is idempotent.
 *
 * @since 0.1.0
 */
import { Clock, Duration, Effect, Option, Schedule } from "effect"
import type { AnyParticipant, BranchContext, InDoubtBranch } from "./Participant.js"
import { forEachConcurrently, forEachWithin } from "./internal/concurrently.js"
import { foreignGids, foreignListed as internalForeignListed } from "./internal/foreign.js"
import { guardedCall } from "./internal/guarded.js"
import { BranchCallError, LogError } from "./TransactionError.js"
import { type BranchName, type Gid, gid as gidOf, parseGid, type TransactionId } from "./TransactionId.js"
import {
  type DecisionRecord,
  type HeuristicRecord,
  heuristicDetail,
  heuristicKey,
  TransactionLog,
  type UnfinishedCursor
} from "./TransactionLog.js"

/**
 * Defaults of `Options`.
 * @since 0.1.0
 */
export const defaults = {
  callTimeout: Duration.seconds(5),
  /** Bound on each statement to the log (a page of unfinished decisions can be large). */
  logTimeout: Duration.seconds(30),
  /** Unfinished decisions read per page of the log (the pass reads page after page). */
  limit: 100_000
} as const

/**
 * Bounds of a recovery pass.
 * @since 0.1.0
 */
export interface Options {
  /**
   * Prepared branches younger than this with no decision, and unfinished decisions younger than
   * this, are left for their coordinator. Default 30 s; 0 after a crash, when no coordinator is live.
   */
  readonly orphanAfter?: Duration.DurationInput
  /** Bound on each commit or rollback call. Default 5 s. */
  readonly callTimeout?: Duration.DurationInput
  /**
   * Bound on each call to the log (a page of unfinished decisions, a decision, completions,
   * heuristic records). Default 30 s. A log that does not answer fails the pass with `LogError`
   * instead of holding it, and every later pass of a sweep behind it.
   */
  readonly logTimeout?: Duration.DurationInput
  /** Retries of a failed call within one pass. Default: 3 retries, exponential from 20 ms. */
  readonly retrySchedule?: Schedule.Schedule<unknown, BranchCallError>
  /** Transactions resolved at once (bounded in practice by the participants' pools). Default 64. */
  readonly concurrency?: number
  /** Decisions per `finishMany` round (participants that offer it). Default 256. */
  readonly batch?: number
  /**
   * Unfinished decisions read per page of the log, the oldest first. Default 100,000. A pass goes
   * through the log page by page with a keyset cursor on (`decidedAt`, `txId`), each page driven
   * (and its completions written) before the next is read, so it reaches every unfinished decision
   * old enough however many of the oldest stay unresolved (a participant gone for good), while it
   * holds one page at a time. It stops at the first page that is not full, or that ends with a
   * decision decided at or after the pass began (those are left for the next pass), so decisions
   * that keep arriving cannot keep it going.
   */
  readonly limit?: number
}

/**
 * What a recovery pass did.
 * @since 0.1.0
 */
export interface RecoveryReport {
  /** Decisions driven to completion in this pass. */
  readonly transactionsFinished: number
  /** Branches committed (or found committed) in this pass. */
  readonly branchesCommitted: number
  /**
   * Branches rolled back (or found not prepared) in this pass: an abort decision's rollbacks are
   * idempotent, and a branch that never prepared, or was rolled back already, counts here too.
   */
  readonly branchesRolledBack: number
  /** Orphans presumed aborted by this pass (abort decisions it wrote). */
  readonly presumedAborts: number
  /** Young prepared branches left alone (see `orphanAfter`). */
  readonly youngLeft: number
  /** Heuristic outcomes found in this pass. */
  readonly heuristics: ReadonlyArray<HeuristicRecord>
  /** Branches this pass could not resolve, with the reason; the next pass retries them. */
  readonly unresolved: ReadonlyArray<{
    readonly txId: TransactionId
    readonly branch: string
    readonly reason: string
  }>
  /**
   * Another deployment's gids this pass saw and left alone, per participant (only those that saw
   * any; empty when none): see `ForeignGids`. Nothing was sent for them.
   */
  readonly foreign: ReadonlyArray<ForeignGids>
}

/**
 * Gids that one participant of a recovery pass met and left alone, because they are not this
 * deployment's to drive: a gid the participant does not own (`Participant.owns`: another gid
 * namespace, a deployment sharing the log or the database under the same participant names), named
 * by an unfinished decision in the log or found prepared by its in-doubt scan; and a gid its scan
 * found of another participant that no participant of the pass owns (one sharing its database that
 * is not registered here). Each pass reports them again while they last: a prepared one holds its
 * locks until its own deployment's recovery ends it.
 * @since 0.1.0
 */
export interface ForeignGids {
  /** The participant of the pass that met them (named by the decision, or whose scan found them). */
  readonly participant: string
  /** How many distinct gids. */
  readonly count: number
  /** Of `count`, how many its in-doubt scan found prepared (the rest only a logged decision names). */
  readonly prepared: number
  /** The first `foreignListed` of them, in the order met. */
  readonly gids: ReadonlyArray<Gid>
}

/**
 * How many gids `ForeignGids.gids` lists at most (`count` has them all).
 * @since 0.1.0
 */
export const foreignListed = internalForeignListed

/** Every participant call of a pass: one that throws or dies does not end the pass. */
const guarded = guardedCall

const defaultRetry = Schedule.exponential(Duration.millis(20), 2).pipe(Schedule.intersect(Schedule.recurs(3)))

/** What driving one decision's branches did. */
interface Finished {
  readonly decision: DecisionRecord
  readonly results: ReadonlyArray<BranchResult>
  readonly allDone: boolean
}

type BranchResult =
  | { readonly _tag: "Done"; readonly committed: boolean; readonly heuristic?: HeuristicRecord }
  | { readonly _tag: "Failed"; readonly branch: string; readonly reason: string }

/**
 * One log call bounded by `timeout`: a `LogError` for `operation` when it does not answer. Recovery
 * bounds every log call of a pass with it (`logTimeout`); `PgRecovery` its garbage collection's.
 * @since 0.1.0
 */
export const logCallWithin =
  (operation: string, timeout: Duration.Duration) =>
  <A>(effect: Effect.Effect<A, LogError>): Effect.Effect<A, LogError> =>
    Effect.timeoutFail(effect, {
      duration: timeout,
      onTimeout: () => new LogError({ operation, reason: `no answer within ${Duration.format(timeout)}` })
    })

/** `log` with every call recovery makes bounded by `timeout` (a `LogError` when it does not answer). */
const bounded = (log: TransactionLog["Type"], timeout: Duration.Duration): TransactionLog["Type"] => {
  const within = (operation: string) => logCallWithin(operation, timeout)
  const completeMany = log.completeMany
  return {
    ...log,
    decide: (record) => within("decide")(log.decide(record)),
    decision: (txId) => within("decision")(log.decision(txId)),
    complete: (txId) => within("complete")(log.complete(txId)),
    ...(completeMany === undefined
      ? {}
      : {
          completeMany: (txIds: ReadonlyArray<TransactionId>) => within("completeMany")(completeMany(txIds))
        }),
    unfinished: (options) => within("unfinished")(log.unfinished(options)),
    recordHeuristic: (record) => within("recordHeuristic")(log.recordHeuristic(record)),
    heuristics: within("heuristics")(log.heuristics),
    direct: undefined
  }
}

/**
 * One recovery pass over the given participants and the log in context.
 * @since 0.1.0
 */
export const run: (
  participants: ReadonlyArray<AnyParticipant>,
  options?: Options
) => Effect.Effect<RecoveryReport, LogError | BranchCallError, TransactionLog> = Effect.fn("Recovery.run")(
  function* (participants: ReadonlyArray<AnyParticipant>, options: Options = {}) {
    const log = bounded(yield* TransactionLog, Duration.decode(options.logTimeout ?? defaults.logTimeout))
    const byName = new Map<string, AnyParticipant>(participants.map((p) => [p.name, p]))
    const callTimeout = Duration.decode(options.callTimeout ?? defaults.callTimeout)
    const retry = options.retrySchedule ?? defaultRetry
    const concurrency = options.concurrency ?? 64
    const batch = Math.max(1, options.batch ?? 256)
    const orphanAfterMillis = Duration.toMillis(Duration.decode(options.orphanAfter ?? Duration.seconds(30)))

    /**
     * A heuristic outcome is written to the log once. A decision that stays unfinished (another of
     * its branches unreachable) meets the same outcome again on every pass, and a coordinator
     * (CommitPending) may have recorded it already: the log's records are read once per pass, the
     * first time one is found, and a record already there is not written again. This only saves
     * writes; another process meeting the same outcome at the same time is covered by the log,
     * whose `recordHeuristic` writes a record once (`heuristicKey`).
     */
    const knownHeuristics = yield* Effect.cached(
      Effect.map(log.heuristics, (hs) => new Set(hs.map(heuristicKey)))
    )
    const recordHeuristic = (record: HeuristicRecord): Effect.Effect<void, LogError> =>
      Effect.flatMap(knownHeuristics, (known) => {
        const key = heuristicKey(record)
        if (known.has(key)) return Effect.void
        known.add(key)
        return log.recordHeuristic(record)
      })

    const call = <A>(
      ctx: BranchContext,
      phase: "commit" | "rollback",
      effect: () => Effect.Effect<A, BranchCallError>
    ) =>
      guarded(ctx, phase, effect).pipe(
        Effect.timeoutFail({
          duration: callTimeout,
          onTimeout: () =>
            new BranchCallError({
              txId: ctx.txId,
              branch: ctx.branch,
              phase,
              reason: `no answer within ${Duration.format(callTimeout)}`,
              inDoubt: true
            })
        }),
        Effect.retry(retry)
      )

    const driveBranch = (
      decision: DecisionRecord,
      branch: BranchName,
      gid: Gid
    ): Effect.Effect<BranchResult, LogError> => {
      const participant = byName.get(branch)
      if (participant === undefined) {
        return Effect.succeed({
          _tag: "Failed",
          branch,
          reason: `participant ${branch} is not registered with recovery`
        })
      }
      const ctx: BranchContext = { txId: decision.txId, branch, gid }
      const heuristic = (detail: string): HeuristicRecord => ({
        txId: decision.txId,
        branch,
        gid,
        decision: decision.decision,
        detail
      })
      const driven: Effect.Effect<BranchResult, BranchCallError | LogError> =
        decision.decision === "commit"
          ? call(ctx, "commit", () => participant.commit(ctx)).pipe(
              Effect.flatMap((ack) => {
                if (ack === "Committed")
                  return Effect.succeed<BranchResult>({ _tag: "Done", committed: true })
                const record = heuristic(heuristicDetail.commit)
                // Gone without its marker, but the decision may have been completed meanwhile by
                // another run (another process's recovery that read it too, or whose lost completion
                // this pass re-drives): every branch acknowledged, then its markers were forgotten.
                // That branch was committed, not rolled back by hand; whoever completed it reported
                // any heuristic.
                return log
                  .decision(decision.txId)
                  .pipe(
                    Effect.flatMap((now) =>
                      Option.isSome(now) && now.value.completedAt !== undefined
                        ? Effect.succeed<BranchResult>({ _tag: "Done", committed: true })
                        : recordHeuristic(record).pipe(
                            Effect.as<BranchResult>({ _tag: "Done", committed: false, heuristic: record })
                          )
                    )
                  )
              })
            )
          : call(ctx, "rollback", () => participant.rollback(ctx)).pipe(
              Effect.flatMap((ack) => {
                if (ack === "RolledBack")
                  return Effect.succeed<BranchResult>({ _tag: "Done", committed: false })
                // The coordinator's text for the same outcome: one record if it recorded it too.
                const record = heuristic(heuristicDetail.abort)
                return recordHeuristic(record).pipe(
                  Effect.as<BranchResult>({ _tag: "Done", committed: true, heuristic: record })
                )
              })
            )
      return driven.pipe(
        Effect.catchTag("BranchCallError", (e) =>
          Effect.succeed<BranchResult>({ _tag: "Failed", branch, reason: e.message })
        )
      )
    }

    const finishedTxIds: Array<TransactionId> = []
    const forgettable = new Map<string, Array<BranchContext>>()
    /** Completion and marker clean-up are batched (`writeFinished`, after each page and at the end). */
    const markFinished = (
      decision: DecisionRecord,
      branches: ReadonlyArray<{ branch: BranchName; gid: Gid }>
    ) => {
      finishedTxIds.push(decision.txId)
      for (const b of branches) {
        const list = forgettable.get(b.branch) ?? []
        list.push({ txId: decision.txId, branch: b.branch, gid: b.gid })
        forgettable.set(b.branch, list)
      }
    }

    /** One call per branch, no per-call wrapping (see `finishDecision`). */
    const attempt = (
      decision: DecisionRecord,
      b: { branch: BranchName; gid: Gid },
      participant: AnyParticipant
    ) => {
      const ctx: BranchContext = { txId: decision.txId, branch: b.branch, gid: b.gid }
      return decision.decision === "commit"
        ? Effect.map(
            guarded(ctx, "commit", () => participant.commit(ctx)),
            (ack) => ack === "Committed"
          )
        : Effect.map(
            guarded(ctx, "rollback", () => participant.rollback(ctx)),
            (ack) => ack === "RolledBack"
          )
    }

    /**
     * Fast path first: every branch's call concurrently under ONE `callTimeout` bound, without a
     * timeout and a retry schedule per call (those cost more client CPU than the call itself on a
     * small machine). A branch whose call failed, timed out or ended against the decision goes
     * through `driveBranch` (per-call timeout, retries, heuristic records).
     */
    const finishDecision = (
      decision: DecisionRecord,
      branches: ReadonlyArray<{ branch: BranchName; gid: Gid }>
    ) =>
      Effect.gen(function* () {
        const first = yield* forEachWithin(
          branches,
          (b) => {
            const participant = byName.get(b.branch)
            return participant === undefined
              ? Effect.succeed(false)
              : Effect.orElseSucceed(attempt(decision, b, participant), () => false)
          },
          callTimeout
        )
        const results: Array<BranchResult> = []
        const again: Array<number> = []
        for (const [i, r] of first.entries()) {
          if (Option.isSome(r) && r.value) {
            results[i] = { _tag: "Done", committed: decision.decision === "commit" }
          } else again.push(i)
        }
        if (again.length > 0) {
          const retried = yield* forEachConcurrently(again, (i) =>
            driveBranch(decision, branches[i]!.branch, branches[i]!.gid)
          )
          for (const [k, i] of again.entries()) results[i] = retried[k]!
        }
        const allDone = results.every((r) => r._tag === "Done")
        if (allDone) markFinished(decision, branches)
        return { decision, results, allDone }
      })

    const rollBackDuplicate = (decision: DecisionRecord, b: InDoubtBranch) =>
      Effect.gen(function* () {
        const participant = byName.get(b.branch)!
        const ctx: BranchContext = { txId: b.txId, branch: b.branch, gid: b.gid }
        // The scan saw it prepared before the decision was read complete: it may be the branch
        // itself, committed since by another run that then completed the decision and forgot the
        // markers (gone without its marker, which a rollback answers as `RolledBack` too). Once
        // complete, nothing commits it any more, so one still prepared now is a duplicate.
        if (decision.completedAt !== undefined) {
          const state = yield* Effect.disconnect(guarded(ctx, "state", () => participant.state(ctx))).pipe(
            Effect.timeout(callTimeout),
            Effect.orElseSucceed(() => "unknown" as const)
          )
          if (state === "aborted") return { decision, results: [], allDone: false } satisfies Finished
        }
        const rolledBack = yield* call(ctx, "rollback", () => participant.rollback(ctx)).pipe(
          Effect.map((ack): BranchResult => ({ _tag: "Done", committed: ack === "HeuristicCommit" })),
          Effect.catchTag("BranchCallError", (e) =>
            Effect.succeed<BranchResult>({ _tag: "Failed", branch: b.branch, reason: e.message })
          )
        )
        // Gone with its marker: not a duplicate but the branch itself, committed under the decision
        // between this pass's scan and its read of the decision (its coordinator, or another
        // recovery, finished phase 2 meanwhile). Nothing to report.
        if (rolledBack._tag === "Done" && rolledBack.committed) {
          return { decision, results: [rolledBack], allDone: false }
        }
        if (rolledBack._tag === "Done") {
          const record: HeuristicRecord = {
            txId: b.txId,
            branch: b.branch,
            gid: b.gid,
            decision: "commit",
            detail: "branch prepared again after its transaction completed (duplicate delivery); rolled back"
          }
          yield* recordHeuristic(record)
          return { decision, results: [{ ...rolledBack, heuristic: record }], allDone: false }
        }
        return { decision, results: [rolledBack], allDone: false }
      })

    /**
     * A presumed abort only knows the branches it found prepared. One of the transaction's other
     * branches that is gone with its marker was committed by hand (an operator's COMMIT PREPARED)
     * while no decision was logged: the transaction is split, reported as a heuristic commit. Each
     * other participant is asked once, for the gid this transaction would have there, within one
     * `callTimeout`; a participant that cannot answer is not reported (nothing is known).
     */
    const committedByHand = (decision: DecisionRecord, found: ReadonlyArray<InDoubtBranch>) =>
      Effect.gen(function* () {
        const namespace = Option.getOrUndefined(parseGid(found[0]!.gid))?.namespace
        const foundHere = new Set<string>(found.map((b) => b.branch))
        const others = participants.filter((p) => !foundHere.has(p.name))
        if (others.length === 0) return undefined
        const ctxs = others.map(
          (p): BranchContext => ({
            txId: decision.txId,
            branch: p.name,
            gid: gidOf(decision.txId, p.name, namespace)
          })
        )
        const states = yield* forEachWithin(
          others,
          (p, i) =>
            Effect.orElseSucceed(
              Effect.disconnect(guarded(ctxs[i]!, "state", () => p.state(ctxs[i]!))),
              () => "unknown" as const
            ),
          callTimeout
        )
        const results: Array<BranchResult> = []
        for (const [i, state] of states.entries()) {
          if (Option.isNone(state) || state.value !== "committed") continue
          const ctx = ctxs[i]!
          const record: HeuristicRecord = {
            txId: decision.txId,
            branch: ctx.branch,
            gid: ctx.gid,
            decision: "abort",
            // The same outcome as a rollback that finds its branch committed, in the same words:
            // the coordinator that aborted this transaction (its abort writes no decision) may
            // have recorded this branch already, and the log then keeps one record.
            detail: heuristicDetail.abort
          }
          yield* recordHeuristic(record)
          results.push({ _tag: "Done", committed: true, heuristic: record })
        }
        return results.length === 0 ? undefined : ({ decision, results, allDone: false } satisfies Finished)
      })

    let transactionsFinished = 0
    let branchesCommitted = 0
    let branchesRolledBack = 0
    let presumedAborts = 0
    let youngLeft = 0
    const heuristics: Array<HeuristicRecord> = []
    const unresolved: Array<{ txId: TransactionId; branch: string; reason: string }> = []
    const tally = (r: {
      decision: DecisionRecord
      results: ReadonlyArray<BranchResult>
      allDone: boolean
    }) => {
      if (r.allDone) transactionsFinished++
      for (const b of r.results) {
        if (b._tag === "Failed") {
          unresolved.push({ txId: r.decision.txId, branch: b.branch, reason: b.reason })
          continue
        }
        if (b.heuristic !== undefined) heuristics.push(b.heuristic)
        if (b.committed) branchesCommitted++
        else branchesRolledBack++
      }
    }

    // Not forced: a lost completion only makes the next pass re-drive idempotent calls. Written
    // after each page of phase 1 and at the end of the pass, so what a page finished is recorded
    // even if a later step fails, and the lists hold one page's worth.
    const writeFinished = Effect.suspend(() => {
      const txIds = finishedTxIds.splice(0)
      const forget = [...forgettable]
      forgettable.clear()
      const completions =
        txIds.length === 0
          ? Effect.void
          : log.completeMany === undefined
            ? Effect.forEach(txIds, (txId) => log.complete(txId), { concurrency, discard: true })
            : log.completeMany(txIds)
      // Marker rows are bookkeeping once the entry is complete; one call per participant.
      const forgets = Effect.forEach(
        forget,
        ([branch, ctxs]) => {
          const p = byName.get(branch)
          return p === undefined
            ? Effect.void
            : Effect.disconnect(guarded({ txId: "", branch: p.name }, "recover", () => p.forget(ctxs))).pipe(
                Effect.timeout(callTimeout),
                Effect.ignore
              )
        },
        { concurrency: "unbounded", discard: true }
      )
      return Effect.zipRight(completions, forgets)
    })

    /** Gids of the branches phase 1 drove: the orphan scan leaves them alone. */
    const handled = new Set<string>()
    /** Another deployment's gids met and left alone, for the report. */
    const foreign = foreignGids(participants)
    // Fast path for participants with `finishMany`: a round of up to `batch` decisions sends each
    // participant's branches in one call, all participants at once, under one `callTimeout` bound.
    // Decisions whose every branch came back `true` are done; the rest take the per-decision path.
    const batched = new Set(participants.filter((p) => p.finishMany !== undefined).map((p) => p.name))
    /** Whether `gid` is this recovery's to drive: its participant owns it, or cannot tell. */
    const owned = (branch: BranchName, gid: Gid): boolean => {
      const p = byName.get(branch)
      return p?.owns === undefined || p.owns(gid)
    }
    const drivePage = (page: ReadonlyArray<DecisionRecord>) =>
      Effect.gen(function* () {
        // Another deployment's decisions (a shared log, the same participant names, another gid
        // namespace) are left to it: driving them here sent their gids to this deployment's
        // databases, read "gone" as heuristics, and completed decisions whose branches were still
        // prepared elsewhere, which that deployment then rolled back as duplicates.
        const unfinished = page.filter((d) => {
          const theirs = d.branches.filter((b) => !owned(b.branch, b.gid))
          for (const b of theirs) foreign.add(b.branch, b.gid, false)
          return theirs.length === 0
        })
        const rest: Array<DecisionRecord> = []
        for (let start = 0; start < unfinished.length; start += batch) {
          const round = unfinished.slice(start, start + batch)
          const fast = round.filter(
            (d) => d.branches.length > 0 && d.branches.every((b) => batched.has(b.branch))
          )
          for (const d of round) if (!fast.includes(d)) rest.push(d)
          if (fast.length === 0) continue
          const byParticipant = new Map<
            string,
            { phase: "commit" | "rollback"; ctxs: Array<BranchContext> }[]
          >()
          for (const d of fast) {
            for (const b of d.branches) {
              const groups = byParticipant.get(b.branch) ?? []
              let group = groups.find((g) => g.phase === (d.decision === "commit" ? "commit" : "rollback"))
              if (group === undefined) {
                group = { phase: d.decision === "commit" ? "commit" : "rollback", ctxs: [] }
                groups.push(group)
                byParticipant.set(b.branch, groups)
              }
              group.ctxs.push({ txId: d.txId, branch: b.branch, gid: b.gid })
            }
          }
          const calls = [...byParticipant.entries()].flatMap(([name, groups]) =>
            groups.map((g) => ({ participant: byName.get(name)!, ...g }))
          )
          const answers = yield* forEachWithin(
            calls,
            // A failed or dying call (a participant's bug) leaves its decisions to the slow path.
            (c) =>
              Effect.orElseSucceed(
                guarded({ txId: "", branch: c.participant.name }, "recover", () =>
                  c.participant.finishMany!(c.phase, c.ctxs)
                ),
                () => [] as ReadonlyArray<boolean>
              ),
            callTimeout
          )
          const done = new Set<string>()
          for (const [i, c] of calls.entries()) {
            const answer = answers[i]!
            if (Option.isNone(answer)) continue
            for (const [k, ctx] of c.ctxs.entries()) if (answer.value[k] === true) done.add(ctx.gid)
          }
          for (const d of fast) {
            if (!d.branches.every((b) => done.has(b.gid))) {
              rest.push(d)
              continue
            }
            markFinished(d, d.branches)
            for (const b of d.branches) handled.add(b.gid)
            tally({
              decision: d,
              results: d.branches.map(() => ({ _tag: "Done", committed: d.decision === "commit" })),
              allDone: true
            })
          }
        }
        const finished = yield* Effect.forEach(rest, (d) => finishDecision(d, d.branches), { concurrency })
        for (const r of finished) {
          tally(r)
          for (const b of r.decision.branches) handled.add(b.gid)
        }
      })

    // 1. Logged decisions that never completed, page by page (keyset cursor on decidedAt, txId).
    // Young decisions are most likely in their coordinator's phase 2: re-driving them is safe
    // (idempotent) but only adds contention, so they get the same grace as orphans.
    const pageSize = Math.max(1, options.limit ?? defaults.limit)
    // Decisions keep arriving while the pass runs: the pass does not read past the first page that
    // ends with one decided at or after it began (the next pass starts there), so it ends.
    const passStartedAt = yield* Clock.currentTimeMillis
    let after: UnfinishedCursor | undefined
    for (;;) {
      const page = yield* log.unfinished({
        olderThanMillis: orphanAfterMillis,
        limit: pageSize,
        ...(after === undefined ? {} : { after })
      })
      yield* drivePage(page)
      yield* writeFinished
      const last = page[page.length - 1]
      if (page.length < pageSize || last === undefined || last.decidedAt >= passStartedAt) break
      // A log that does not move past the cursor would hand out the same page for ever.
      if (after !== undefined && last.txId === after.txId && last.decidedAt === after.decidedAt) break
      after = { decidedAt: last.decidedAt, txId: last.txId }
    }

    // 2. Prepared branches that no unfinished decision names.
    const now = yield* Clock.currentTimeMillis
    const scans = yield* Effect.forEach(
      participants,
      (p) =>
        // An unreachable participant must not hold the pass for ever. Disconnected: the timeout does
        // not wait for the interrupted scan to stop (a statement on a partitioned connection may
        // never settle); it ends in the background.
        Effect.disconnect(guarded({ txId: "", branch: p.name }, "recover", () => p.inDoubt)).pipe(
          Effect.timeoutFail({
            duration: callTimeout,
            onTimeout: () =>
              new BranchCallError({
                txId: "" as TransactionId,
                branch: p.name,
                phase: "recover",
                reason: `no answer to the in-doubt scan within ${Duration.format(callTimeout)}`,
                inDoubt: false
              })
          }),
          Effect.map((found) => ({ participant: p.name, found, error: Option.none<string>() })),
          Effect.catchTag("BranchCallError", (e) =>
            Effect.succeed({
              participant: p.name,
              found: [] as ReadonlyArray<InDoubtBranch>,
              error: Option.some(e.message)
            })
          )
        ),
      { concurrency: "unbounded" }
    )
    const orphans: Array<InDoubtBranch> = []
    for (const scan of scans) {
      if (Option.isSome(scan.error)) {
        unresolved.push({ txId: "" as TransactionId, branch: scan.participant, reason: scan.error.value })
      }
      for (const b of scan.found) {
        // Only the scanning participant's own branches: two participants in one database both see
        // each other's gids (each branch was processed twice, or, its participant not registered
        // here, ended the pass), and another namespace's are another deployment's.
        if (b.branch !== scan.participant || !owned(b.branch, b.gid)) {
          // Reported unless another participant of this pass owns it (its own scan finds it).
          const other = b.branch === scan.participant ? undefined : byName.get(b.branch)
          if (other === undefined || !owned(other.name, b.gid)) foreign.add(scan.participant, b.gid, true)
          continue
        }
        if (handled.has(b.gid)) continue
        // `preparedAt` is on this host's clock (`InDoubtBranch`; PostgreSQL computes the age on the
        // server), so skew does not shift the age. Safety never depends on it anyway (first writer
        // wins); with `orphanAfter` 0 no age is compared at all.
        if (orphanAfterMillis > 0 && now - b.preparedAt < orphanAfterMillis) {
          youngLeft++
          continue
        }
        orphans.push(b)
      }
    }
    // One decision per transaction, whatever number of its branches were found.
    const orphansByTx = new Map<string, Array<InDoubtBranch>>()
    for (const b of orphans) {
      const list = orphansByTx.get(b.txId)
      if (list === undefined) orphansByTx.set(b.txId, [b])
      else list.push(b)
    }
    const resolvedOrphans = yield* Effect.forEach(
      orphansByTx.values(),
      (found) =>
        Effect.gen(function* () {
          const txId = found[0]!.txId
          const decidedAt = yield* Clock.currentTimeMillis
          // First writer wins: if the coordinator's commit landed first, this returns it.
          const decision = yield* log.decide({
            txId,
            decision: "abort",
            branches: found.map((b) => ({ branch: b.branch, gid: b.gid })),
            decidedAt
          })
          if (decision.decision === "abort") {
            const results = [yield* finishDecision(decision, found)]
            if (decision.decidedAt === decidedAt) {
              presumedAborts++
              const byHand = yield* committedByHand(decision, found)
              if (byHand !== undefined) results.push(byHand)
            }
            return results
          }
          // A commit decision: its own branch list is what commits. A found branch it does not list
          // (or, once the decision is complete, any found branch: every listed one acknowledged
          // before completion) is the same gid prepared again, a duplicated late delivery of the
          // work: committing it would apply the work twice, so it is rolled back.
          const listed = new Set<string>(decision.branches.map((b) => b.gid))
          const strays = found.filter((b) => decision.completedAt !== undefined || !listed.has(b.gid))
          const results: Array<Finished> = yield* Effect.forEach(strays, (b) =>
            rollBackDuplicate(decision, b)
          )
          // Every listed branch is driven, not only the ones found here: completing the decision
          // after committing some of them would leave the others to be taken for duplicates.
          if (decision.completedAt === undefined)
            results.push(yield* finishDecision(decision, decision.branches))
          return results
        }),
      { concurrency }
    )
    for (const r of resolvedOrphans.flat()) tally(r)

    // What the orphans' decisions finished.
    yield* writeFinished

    return {
      transactionsFinished,
      branchesCommitted,
      branchesRolledBack,
      presumedAborts,
      youngLeft,
      heuristics,
      unresolved,
      foreign: foreign.report()
    } satisfies RecoveryReport
  }
)

/**
 * Runs `pass` now and then every `every`, for ever: a pass that leaves branches unresolved is logged
 * (a warning listing up to 10 of them), and one that fails, a defect included, is logged and the next
 * one runs on schedule. `sweep` and `PgRecovery.sweep` are this over their passes.
 * @since 0.1.0
 */
export const repeatPasses = <R extends RecoveryReport, E, Env>(
  pass: Effect.Effect<R, E, Env>,
  every: Duration.DurationInput
): Effect.Effect<never, never, Env> =>
  pass.pipe(
    // A pass that ends with branches still in doubt is not a failed pass, but a sweep has no other
    // way to tell anyone: the report would be dropped.
    Effect.tap((report) =>
      report.unresolved.length === 0
        ? Effect.void
        : Effect.logWarning(
            `recovery pass left ${report.unresolved.length} branch(es) unresolved: ` +
              report.unresolved
                .slice(0, 10)
                .map((u) => `${u.txId === "" ? "(scan)" : u.txId}/${u.branch}: ${u.reason}`)
                .join("; ") +
              (report.unresolved.length > 10 ? "; ..." : "")
          )
    ),
    // Any cause, defects included: a participant's bug must not end the sweep for good.
    Effect.catchAllCause((cause) => Effect.logWarning("recovery pass failed", cause)),
    Effect.repeat(Schedule.spaced(every)),
    Effect.andThen(Effect.never)
  )

/**
 * Runs recovery now and then every `every`, forever (fork it). A failed pass, or one that died
 * (a defect), is logged and the next one runs on schedule; so is a pass that left branches
 * unresolved (a warning listing them).
 * @since 0.1.0
 */
export const sweep = (
  participants: ReadonlyArray<AnyParticipant>,
  every: Duration.DurationInput,
  options: Options = {}
): Effect.Effect<never, never, TransactionLog> => repeatPasses(run(participants, options), every)
