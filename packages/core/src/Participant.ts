/**
 * The participant of a two-phase commit: one resource manager (a database) that can prepare a
 * branch of a global transaction, then commit or roll it back by gid, and answer what state a
 * branch is in for recovery.
 *
 * A participant is generic in its `Work`: what the caller asks it to do inside the branch
 * (for Postgres, queries on the branch's connection). The core never looks inside it.
 *
 * @since 0.1.0
 */
import { Data, Effect, type Either } from "effect"
import type { BranchCallError, ConfigurationError } from "./TransactionError.js"
import type { BranchName, Gid, TransactionId } from "./TransactionId.js"

/**
 * A participant's answer to prepare.
 * - `Prepared`: the branch is durably prepared and will commit or roll back as told.
 * - `ReadOnly`: the branch changed nothing; it is finished and takes no part in phase 2.
 * - `No`: the branch refused (or failed); it is rolled back. `sqlState` carries the database's code.
 * @since 0.1.0
 */
export type Vote = Data.TaggedEnum<{
  Prepared: {}
  ReadOnly: {}
  No: { readonly reason: string; readonly sqlState?: string | undefined }
}>
/** @since 0.1.0 */
export const Vote = Data.taggedEnum<Vote>()

/**
 * What happened when a branch was told to commit.
 * - `Committed`: committed now, or found committed already (re-driven, idempotent).
 * - `HeuristicRollback`: the branch is gone without a commit marker: someone rolled it back
 *   outside the protocol after the commit decision. Reported, never hidden.
 * @since 0.1.0
 */
export type CommitAck = "Committed" | "HeuristicRollback"

/**
 * What happened when a branch was told to roll back.
 * - `RolledBack`: rolled back now, or never prepared, or found rolled back already.
 * - `HeuristicCommit`: the branch had committed (marker present) although the decision is abort.
 * @since 0.1.0
 */
export type RollbackAck = "RolledBack" | "HeuristicCommit"

/**
 * A branch's state as the participant knows it.
 * @since 0.1.0
 */
export type BranchState = "prepared" | "committed" | "aborted"

/**
 * The identity of one branch of one global transaction.
 * @since 0.1.0
 */
export interface BranchContext {
  readonly txId: TransactionId
  readonly branch: BranchName
  readonly gid: Gid
}

/**
 * A prepared branch found by a recovery scan.
 * @since 0.1.0
 */
export interface InDoubtBranch {
  readonly gid: Gid
  readonly txId: TransactionId
  readonly branch: BranchName
  /**
   * When the branch was prepared, in epoch milliseconds on the clock of the caller of `inDoubt`
   * (its Effect `Clock`), so that recovery's age (its `now` minus this) compares one clock with
   * itself: a participant whose own clock differs converts (PostgreSQL: the scan's server-side
   * age subtracted from the caller's now). Recovery leaves young branches alone.
   */
  readonly preparedAt: number
}

/**
 * The result of a one-phase commit: the branch committed, or refused with a reason.
 * - `ReadOnly`: the branch changed nothing and is finished (the one-phase twin of the `ReadOnly`
 *   vote, so that the outcome reports a lone branch as a prepare would have). A participant that
 *   cannot tell answers `Committed`.
 * @since 0.1.0
 */
export type OnePhaseResult = Data.TaggedEnum<{
  Committed: {}
  ReadOnly: {}
  No: { readonly reason: string; readonly sqlState?: string | undefined }
}>
/** @since 0.1.0 */
export const OnePhaseResult = Data.taggedEnum<OnePhaseResult>()

/**
 * A 2PC participant. Every method must be idempotent when re-driven by recovery:
 * `commit` of a committed branch is `Committed`, `rollback` of an unknown gid is `RolledBack`.
 * @since 0.1.0
 */
export interface Participant<in out Work = unknown> {
  /** The branch name, unique within a coordinator; part of every gid. */
  readonly name: BranchName
  /** Checks that the participant can take part at all (run when it is registered). */
  readonly verify: Effect.Effect<void, ConfigurationError | BranchCallError>
  /** Runs the work in a new branch and prepares it. Errors in the work are a `No` vote, not a failure. */
  readonly prepare: (ctx: BranchContext, work: Work) => Effect.Effect<Vote, BranchCallError>
  /** Runs the work and commits it in one step (a lone branch needs no prepare). */
  readonly commitOnePhase: (ctx: BranchContext, work: Work) => Effect.Effect<OnePhaseResult, BranchCallError>
  /** `COMMIT PREPARED`; idempotent. */
  readonly commit: (ctx: BranchContext) => Effect.Effect<CommitAck, BranchCallError>
  /** `ROLLBACK PREPARED`; idempotent, and fine for a gid that was never prepared. */
  readonly rollback: (ctx: BranchContext) => Effect.Effect<RollbackAck, BranchCallError>
  /** The branch's state, for recovery and for operators. */
  readonly state: (ctx: BranchContext) => Effect.Effect<BranchState, BranchCallError>
  /**
   * Whether `gid` is one of this participant's branches: its name and its deployment's gid
   * namespace. Optional; when given, a transaction whose namespace the participant does not own is
   * refused before anything is sent (recovery would never find its branches), and recovery leaves
   * a logged decision naming a gid it does not own to the deployment that does (another one sharing
   * the log under the same participant names), and ignores such gids in the in-doubt scan.
   */
  readonly owns?: (gid: Gid) => boolean
  /** Accord's prepared branches on this participant (its own database only). */
  readonly inDoubt: Effect.Effect<ReadonlyArray<InDoubtBranch>, BranchCallError>
  /**
   * Optional batch form of `commit` / `rollback` for recovery, which may have thousands of branches
   * to finish: one call for many gids (e.g. their statements sent together). Per context, `true`
   * means the branch now stands as decided (finished by this call or before it); `false` means
   * "not known here": the caller then uses `commit` / `rollback` for it, which also retries and
   * reports heuristics. Must never fail.
   */
  readonly finishMany?: (
    phase: "commit" | "rollback",
    ctxs: ReadonlyArray<BranchContext>
  ) => Effect.Effect<ReadonlyArray<boolean>>
  /** Forgets the bookkeeping of a finished transaction (marker rows); best effort. */
  readonly forget: (ctxs: ReadonlyArray<BranchContext>) => Effect.Effect<void, BranchCallError>
  /**
   * Optional: `prepare`, `commitOnePhase` and `commit` as started Promises, for a participant whose
   * calls are Promises underneath (a database driver). When every branch of a transaction has
   * them, the coordinator runs a phase's calls inside ONE `Effect.async` instead of one fiber per
   * call (a fork and join cost about 20 us of CPU each on the benchmark box, as much as the
   * driver's own work for a statement). Each must behave exactly as its Effect twin: build the
   * Effect twins with `fromStarted` over these, so that there is one implementation.
   * A call is used only while the participant's Effect call is still its twin (`direct.twins`):
   * a wrapper that replaces `commit` (`{ ...p, commit: ... }`) is called, not bypassed.
   */
  readonly direct?: Direct<Work>
  /**
   * How the Promise facade turns `[participant, operation, params]` triples into this
   * participant's work, in order, in one branch. Absent: the facade cannot drive it.
   */
  readonly fromOperations?: (calls: ReadonlyArray<OperationCall>) => Work
}

/**
 * A call started as a Promise. `result` settles with the call's value or its typed failure; it
 * rejects only for a defect. `abandon()` is the call's interruption: the call stops as its Effect
 * twin does when interrupted (statements cancelled, the branch rolled back), and `result` then
 * settles once that clean-up is done, or rejects when the participant gave up waiting for it.
 * @since 0.1.0
 */
export interface Started<A, E> {
  readonly result: Promise<Either.Either<A, E>>
  readonly abandon: () => void
}

/**
 * The Promise-level calls of `Participant.direct`.
 * @since 0.1.0
 */
export interface Direct<in out Work> {
  readonly prepare: (ctx: BranchContext, work: Work) => Started<Vote, BranchCallError>
  readonly commitOnePhase: (ctx: BranchContext, work: Work) => Started<OnePhaseResult, BranchCallError>
  readonly commit: (ctx: BranchContext) => Started<CommitAck, BranchCallError>
  /** The Effect calls these are the twins of (the very functions the participant holds). */
  readonly twins: Pick<Participant<Work>, "prepare" | "commitOnePhase" | "commit">
}

/**
 * The participant's Promise-level `call`, if it has one and its Effect `call` is still the twin.
 * @since 0.1.0
 */
export const directCall = <Work, K extends "prepare" | "commitOnePhase" | "commit">(
  participant: Participant<Work>,
  call: K
): Direct<Work>[K] | undefined => {
  const direct = participant.direct
  return direct !== undefined && direct.twins[call] === participant[call] ? direct[call] : undefined
}

/**
 * A started call as an Effect: `start` runs when the Effect runs; interrupted, the call is
 * abandoned and its clean-up awaited.
 * @since 0.1.0
 */
export const fromStarted = <A, E>(start: () => Started<A, E>): Effect.Effect<A, E> =>
  Effect.async<A, E>((resume) => {
    const call = start()
    call.result.then(resume, (defect: unknown) => resume(Effect.die(defect)))
    return Effect.promise(() => {
      call.abandon()
      return call.result.then(
        () => undefined,
        () => undefined
      )
    })
  })

/**
 * One `[participant, operation, params]` triple of the Promise facade: `operation` is a name the
 * participant knows, or a function it can run.
 * @since 0.1.0
 */
export interface OperationCall {
  readonly operation: string | ((...args: ReadonlyArray<never>) => unknown)
  readonly params: unknown
}

/**
 * A participant with its work erased, as a coordinator holds it.
 * @since 0.1.0
 */
// biome-ignore lint/suspicious/noExplicitAny: the work type is contravariant and erased on purpose
export type AnyParticipant = Participant<any>

/**
 * One branch of a transaction: a participant and the work it runs in that branch.
 * @since 0.1.0
 */
export interface Branch<Work = unknown> {
  readonly participant: Participant<Work>
  readonly work: Work
}

/**
 * A branch with its work type erased, as a transaction's list holds it.
 * @since 0.1.0
 */
// biome-ignore lint/suspicious/noExplicitAny: each branch has its own work type
export type AnyBranch = Branch<any>

/**
 * Pairs a participant with its work, keeping the two types in step.
 * @since 0.1.0
 */
export const branch = <Work>(participant: Participant<Work>, work: Work): Branch<Work> => ({
  participant,
  work
})

/**
 * Default no-op implementations for optional members when building a participant by hand.
 * @since 0.1.0
 */
export const defaults = {
  verify: Effect.void,
  inDoubt: Effect.succeed([] as ReadonlyArray<InDoubtBranch>),
  forget: (_: ReadonlyArray<BranchContext>) => Effect.void
}
