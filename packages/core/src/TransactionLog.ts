/**
 * The coordinator log: the durable record of commit decisions.
 *
 * Decisions are keyed by transaction id and the first writer wins: the coordinator's commit
 * decision and recovery's presumed-abort decision are inserts into the same key, so recovery can
 * never roll back a branch that the coordinator is about to commit (the citus#1029 race) and no
 * clock assumption is needed. A commit decision is forced before any branch is told to commit.
 *
 * @since 0.1.0
 */
import { Clock, Context, Effect, Layer, Option, Ref } from "effect"
import type { Started } from "./Participant.js"
import type { LogError } from "./TransactionError.js"
import type { BranchName, Gid, TransactionId } from "./TransactionId.js"

/**
 * The decision of a global transaction.
 * @since 0.1.0
 */
export type Decision = "commit" | "abort"

/**
 * A branch as the log records it: enough for recovery to find and finish it.
 * @since 0.1.0
 */
export interface BranchRecord {
  readonly branch: BranchName
  readonly gid: Gid
}

/**
 * A decision row.
 * @since 0.1.0
 */
export interface DecisionRecord {
  readonly txId: TransactionId
  readonly decision: Decision
  readonly branches: ReadonlyArray<BranchRecord>
  /** Epoch milliseconds when the decision was written. */
  readonly decidedAt: number
  /**
   * Epoch milliseconds when the transaction was completed (every branch acknowledged), when the
   * log knows it. Recovery uses it to refuse committing a branch prepared again after completion.
   */
  readonly completedAt?: number
}

/**
 * A heuristic outcome: a branch ended differently from the decision, outside the protocol.
 * @since 0.1.0
 */
export interface HeuristicRecord {
  readonly txId: TransactionId
  readonly branch: BranchName
  readonly gid: Gid
  readonly decision: Decision
  readonly detail: string
}

/**
 * Where a page of `unfinished` decisions starts: just after the decision with this `decidedAt`
 * and `txId`, in the order of (`decidedAt`, `txId`). Take it from the last record of the previous
 * page; a log compares it with that decision as it stored it.
 * @since 0.1.0
 */
export interface UnfinishedCursor {
  readonly decidedAt: number
  readonly txId: TransactionId
}

/**
 * The order of `unfinished` for logs held in memory, as a sort comparator: (`decidedAt`, `txId`)
 * ascending, txIds compared as strings (UTF-16 code units). A database log has its own (its
 * collation decides between txIds); callers only need it to be a total order a cursor follows.
 * @since 0.1.0
 */
export const compareUnfinished = (a: UnfinishedCursor, b: UnfinishedCursor): number =>
  a.decidedAt !== b.decidedAt ? a.decidedAt - b.decidedAt : a.txId < b.txId ? -1 : a.txId > b.txId ? 1 : 0

/**
 * One page of unfinished decisions from an in-memory collection (`unfinished` of a log held in
 * memory): `rows` not yet completed and decided at or before `decidedBefore`, ordered, after the
 * cursor, at most `limit`.
 * @since 0.1.0
 */
export const unfinishedPage = (
  rows: Iterable<DecisionRecord>,
  isCompleted: (txId: TransactionId) => boolean,
  decidedBefore: number,
  options?: { readonly limit?: number; readonly after?: UnfinishedCursor }
): ReadonlyArray<DecisionRecord> => {
  const after = options?.after
  const page = [...rows]
    .filter(
      (d) =>
        !isCompleted(d.txId) &&
        d.decidedAt <= decidedBefore &&
        (after === undefined || compareUnfinished(d, after) > 0)
    )
    .sort(compareUnfinished)
  return options?.limit === undefined ? page : page.slice(0, Math.max(0, options.limit))
}

/**
 * What a heuristic record says, by the decision its branch went against: one text per outcome,
 * whoever meets it (the coordinator as it finishes the transaction, a recovery pass after it,
 * 3PC). The record's identity includes its detail (`heuristicKey`), so two texts for one outcome
 * left two records of one branch's one outcome, for example an abort heuristic recorded by the
 * coordinator and again by recovery; a different outcome of the same branch (a duplicate
 * delivery) keeps a text, and a record, of its own.
 * @since 0.1.0
 */
export const heuristicDetail = {
  commit: "branch was rolled back outside the protocol after the commit decision",
  abort: "branch was committed outside the protocol although the transaction aborted"
} as const satisfies Record<Decision, string>

/**
 * The identity of a heuristic record: two records with the same key report the same outcome
 * (`recordHeuristic` writes it once).
 * @since 0.1.0
 */
export const heuristicKey = (h: HeuristicRecord): string =>
  JSON.stringify([h.txId, h.gid, h.decision, h.detail])

/**
 * The coordinator log service.
 * @since 0.1.0
 */
export class TransactionLog extends Context.Tag("@accord/core/TransactionLog")<
  TransactionLog,
  {
    /**
     * Writes a decision unless one exists; returns the decision that holds (the first written).
     * A `commit` decision is durable (forced) when this succeeds.
     */
    readonly decide: (record: DecisionRecord) => Effect.Effect<DecisionRecord, LogError>
    /** Reads the decision of a transaction, if any. */
    readonly decision: (txId: TransactionId) => Effect.Effect<Option.Option<DecisionRecord>, LogError>
    /** Marks a decided transaction finished: every branch acknowledged (not forced). */
    readonly complete: (txId: TransactionId) => Effect.Effect<void, LogError>
    /** Optional: marks many transactions finished in one write (recovery batches with it). */
    readonly completeMany?: (txIds: ReadonlyArray<TransactionId>) => Effect.Effect<void, LogError>
    /**
     * Decisions without completion (commit and abort), in the order of (`decidedAt`, `txId`)
     * ascending: oldest first, ties by txId. One page of them: at most `limit`, decided at least
     * `olderThanMillis` ago, and only those after `after` in that order (a keyset cursor, the last
     * record of the previous page), so a reader can go through every unfinished decision page by
     * page however many of the first ones stay unfinished.
     */
    readonly unfinished: (options?: {
      readonly olderThanMillis?: number
      readonly limit?: number
      readonly after?: UnfinishedCursor
    }) => Effect.Effect<ReadonlyArray<DecisionRecord>, LogError>
    /**
     * Records a heuristic outcome for operators. Idempotent: a record equal to one already in the
     * log (same txId, gid, decision and detail) is not written again, so two recoveries, or a
     * coordinator and a recovery, that meet the same outcome leave one record.
     */
    readonly recordHeuristic: (record: HeuristicRecord) => Effect.Effect<void, LogError>
    /** The recorded heuristic outcomes. */
    readonly heuristics: Effect.Effect<ReadonlyArray<HeuristicRecord>, LogError>
    /**
     * Optional: `decide` as a started Promise, for a log whose writes are Promises underneath (a
     * database driver). The coordinator then bounds the commit decision's write with one timer in
     * one `Effect.async` instead of a fiber (`Participant.direct` is the same idea for branch
     * calls). It must behave exactly as `decide` (build `decide` with `Participant.fromStarted` over
     * it), and is used only while `decide` is still its twin (`direct.twins.decide`), so a wrapper
     * that replaces `decide` is called, not bypassed.
     */
    readonly direct?: {
      readonly decide: (record: DecisionRecord) => Started<DecisionRecord, LogError>
      /** Optional: `complete` as a started Promise, under the same rule (`twins.complete`). */
      readonly complete?: (txId: TransactionId) => Started<void, LogError>
      readonly twins: {
        readonly decide: (record: DecisionRecord) => Effect.Effect<DecisionRecord, LogError>
        readonly complete?: (txId: TransactionId) => Effect.Effect<void, LogError>
      }
    }
  }
>() {}

/**
 * An in-memory log, for unit tests and the simulator. Not durable.
 * @since 0.1.0
 */
export const makeMemory: Effect.Effect<
  TransactionLog["Type"] & { readonly snapshot: Effect.Effect<MemoryState> }
> = Effect.gen(function* () {
  const state = yield* Ref.make<MemoryState>({ decisions: new Map(), completed: new Map(), heuristics: [] })
  return {
    decide: (record) =>
      Ref.modify(state, (s) => {
        const existing = s.decisions.get(record.txId)
        if (existing !== undefined) return [withCompletion(s)(existing), s]
        const decisions = new Map(s.decisions)
        decisions.set(record.txId, record)
        return [record, { ...s, decisions }]
      }),
    decision: (txId) =>
      Ref.get(state).pipe(
        Effect.map((s) => Option.fromNullable(s.decisions.get(txId)).pipe(Option.map(withCompletion(s))))
      ),
    complete: (txId) =>
      Clock.currentTimeMillis.pipe(
        Effect.flatMap((now) =>
          Ref.update(state, (s) => {
            if (s.completed.has(txId)) return s
            const completed = new Map(s.completed)
            completed.set(txId, now)
            return { ...s, completed }
          })
        )
      ),
    unfinished: (options) =>
      Effect.zip(Ref.get(state), Clock.currentTimeMillis).pipe(
        Effect.map(([s, now]) =>
          unfinishedPage(
            s.decisions.values(),
            (txId) => s.completed.has(txId),
            now - (options?.olderThanMillis ?? 0),
            options
          )
        )
      ),
    recordHeuristic: (record) =>
      Ref.update(state, (s) => {
        const key = heuristicKey(record)
        return s.heuristics.some((h) => heuristicKey(h) === key)
          ? s
          : { ...s, heuristics: [...s.heuristics, record] }
      }),
    heuristics: Ref.get(state).pipe(Effect.map((s) => s.heuristics)),
    snapshot: Ref.get(state)
  }
})

const withCompletion =
  (s: MemoryState) =>
  (record: DecisionRecord): DecisionRecord => {
    const completedAt = s.completed.get(record.txId)
    return completedAt === undefined ? record : { ...record, completedAt }
  }

/**
 * The in-memory log's contents.
 * @since 0.1.0
 */
export interface MemoryState {
  readonly decisions: ReadonlyMap<TransactionId, DecisionRecord>
  readonly completed: ReadonlyMap<TransactionId, number>
  readonly heuristics: ReadonlyArray<HeuristicRecord>
}

/**
 * A layer with a fresh in-memory log.
 * @since 0.1.0
 */
export const layerMemory: Layer.Layer<TransactionLog> = Layer.effect(TransactionLog, makeMemory)
