/**
 * Three-phase commit (Skeen 1981) with its termination protocol, and the quorum variant
 * (Skeen 1982) that stays safe under network partitions (docs/3pc.md).
 *
 * Participant states: `initial` → `uncertain` (voted yes, branch prepared) → `precommitted` →
 * `committed`; or `aborted` (from `initial` or `uncertain`, or through `preaborted` in quorum
 * mode). `precommitted` and `preaborted` are exclusive and sticky: a participant in one of them
 * refuses the other. That single rule is what makes the quorum variant safe.
 *
 * Phases run by the coordinator (`run`), each bounded on the coordinator side:
 * 1. CanCommit (`canCommitTimeout`): every member prepares its branch and votes. The vote `yes`
 *    is durable together with the list of members, so that anyone can run the termination
 *    protocol later. A No, a failure or a timeout aborts: every member is rolled back.
 * 2. PreCommit (`precommitTimeout`): every member durably records `precommitted` and acks.
 *    Classic mode decides commit after *all* acks; quorum mode after `commit` acks (Vc).
 *    Anything less: the coordinator runs the termination protocol itself.
 * 3. DoCommit (`commitTimeout`, retried with `commitSchedule`): `Committed`, or `CommitPending`
 *    when some member has not acknowledged yet (its agent or `recover` finishes it).
 *
 * ## Does 3PC need a coordinator log?
 * No, and this module writes none. In 2PC the decision exists only in the coordinator's log, so a
 * lost log means blocked branches. In 3PC the decision is *reconstructible* from the members'
 * durable states: the coordinator commits only after the members recorded `precommitted` (all
 * of them in classic mode, a commit quorum in quorum mode), and nobody precommits before every
 * member voted yes. A crashed coordinator is therefore replaced by the termination protocol, run
 * by any member's agent (`agent`, `watch`), by a standby process or by `recover` after a restart;
 * the durable state lives with the participants (for Postgres: `pg_prepared_xacts`, the branch
 * marker and the `accord_3pc_state` row).
 *
 * ## The termination protocol (`terminate`)
 * Over the members it can reach, in order:
 * - any `committed` → commit the rest; any `aborted` or `initial` (never voted yes) → abort (an
 *   `aborted` member is an abort quorum in classic mode: precommitted members are rolled back too);
 * - classic: any `precommitted` → precommit the rest, then commit; every member `uncertain` →
 *   abort, only with every member reached (one it cannot reach may be precommitted or committed:
 *   members restart, so unreachable is not gone for good); else `Blocked` until it can;
 * - quorum (V members, commit quorum Vc, abort quorum Va, Vc + Va > V): with at least one
 *   `precommitted` and `precommitted + uncertain ≥ Vc`, precommit the uncertain ones and commit
 *   once Vc are precommitted; else with `preaborted + uncertain ≥ Va`, preabort the uncertain
 *   ones and abort once Va are preaborted; else `Blocked` (the minority side of a partition).
 *
 * ## What each mode promises
 * - **Classic** (default): atomic when members crash and restart, and non-blocking while a
 *   precommitted member can be reached; when only uncertain members can be reached and another
 *   cannot, it blocks until that one is back (it may have committed). Messages must arrive within
 *   the timeouts: a member's agent must wait at least `minimumAgentTimeout` =
 *   1.25 × (`canCommitTimeout + precommitTimeout`) so that a slow coordinator is not mistaken
 *   for a dead one; `run` refuses (`UnsafeTimeoutError`) phases that its `agentTimeout` option
 *   (the agents' timeout, default 20 s) does not outlast. **Not proven under network
 *   partitions**: a terminator that aborts with every member uncertain races the coordinator's
 *   precommits, and if the network then splits a member precommitted in that race from the
 *   members rolled back, its side commits it. Until 2026-12-06 the uncertain side of any split
 *   aborted without the members it could not reach, which split a transaction whose coordinator
 *   died after precommitting A only ({A} | {B, C}), and under crashes alone a member that
 *   restarted while the committed one was down. Use quorum mode where partitions matter.
 * - **Quorum**: atomic under crashes, partitions, lost and late messages, and concurrent
 *   terminators (two quorums of opposite kinds cannot both form because a member is in at most one
 *   of `precommitted`/`preaborted` and Vc + Va > V). The price: a side of a partition that holds
 *   neither quorum blocks (`Blocked`) until the partition heals, like 2PC does.
 *
 * @since 0.1.0
 */
import {
  Clock,
  Data,
  Duration,
  Effect,
  Either,
  Metric,
  MetricBoundaries,
  Option,
  Ref,
  Schedule,
  Schema
} from "effect"
import {
  type BranchContext,
  type CommitAck,
  type InDoubtBranch,
  type OperationCall,
  type RollbackAck,
  Vote
} from "./Participant.js"
import {
  type BranchCallError,
  type ConfigurationError,
  InvalidTransactionError,
  TimeoutError
} from "./TransactionError.js"
import * as TransactionId from "./TransactionId.js"
import { guardedCall } from "./internal/guarded.js"
import { foreignGids } from "./internal/foreign.js"
import type { ForeignGids } from "./Recovery.js"
import { type HeuristicRecord, heuristicDetail, TransactionLog } from "./TransactionLog.js"
import { type BranchVote, type Heuristic, defaults as twoPhaseDefaults } from "./TwoPhaseCommit.js"

/**
 * A member's state in 3PC.
 * - `initial`: has not voted yes (no branch, or a branch that is not yet prepared).
 * - `uncertain`: voted yes; the branch is prepared; the outcome is unknown to it.
 * - `precommitted`: durably recorded that every member voted yes and the outcome will be commit
 *   unless (quorum mode) an abort quorum forms first.
 * - `preaborted`: (quorum mode) durably recorded its consent to abort; refuses to precommit.
 * - `committed` / `aborted`: final.
 * @since 0.1.0
 */
export type State = "initial" | "uncertain" | "precommitted" | "preaborted" | "committed" | "aborted"

/**
 * A branch context that also names every member of the transaction, so that a member that voted
 * yes can find its peers for the termination protocol after a restart.
 * @since 0.1.0
 */
export interface MemberContext extends BranchContext {
  readonly members: ReadonlyArray<TransactionId.BranchName>
  /**
   * The transaction's mode with its quorum sizes; participants record it with the yes vote, so
   * recovery and agents terminate the transaction under the rules it ran with.
   */
  readonly mode?: Mode
}

/**
 * A prepared branch found by a scan, with what the participant recorded about it.
 * `members` is absent when the participant never recorded a yes vote (the coordinator cannot
 * have precommitted anyone, so rolling the branch back is safe).
 * @since 0.1.0
 */
export interface InDoubtMember extends InDoubtBranch {
  readonly state: State
  readonly members: ReadonlyArray<TransactionId.BranchName> | undefined
  /** The mode recorded with the yes vote (absent when none was recorded). */
  readonly mode?: Mode | undefined
}

/**
 * What a 3PC `rollback` answers: the 2PC acks, plus `"Precommitted"` when it refused a member that
 * is precommitted (the member is left precommitted), and `"Voted"` when, told `onlyIfUnvoted`, it
 * refused a member that has recorded its yes vote (the member is left as it is).
 * @since 0.1.0
 */
export type ThreePhaseRollbackAck = RollbackAck | "Precommitted" | "Voted"

/**
 * Options of a 3PC `rollback`.
 * @since 0.1.0
 */
export interface RollbackOptions {
  /**
   * Roll back a precommitted member too. Only a terminator that sees an abort quorum sets it: Va
   * members aborted or preaborted in quorum mode, one aborted member in classic mode (Va = 1: the
   * coordinator commits only once every member is precommitted). Either way no commit can happen
   * any more.
   */
  readonly overPrecommit?: boolean
  /**
   * Fence the gid only while the member has not voted yes; once its yes vote is recorded, refuse
   * (`"Voted"`) and leave it. A terminator that decided abort because a member *had not voted*
   * fences that member this way first: the fence then proves that the member can never vote yes
   * (so nobody can ever be precommitted), and a view gone stale in between is re-read instead of
   * aborting a member that others may have precommitted on.
   */
  readonly onlyIfUnvoted?: boolean
}

/**
 * A 3PC participant. It parallels the 2PC `Participant` (same `verify`, `commit`, `rollback`,
 * `forget`, `fromOperations`) and adds the durable `precommit`/`preabort` transitions and the 3PC
 * `state`. Every method is idempotent, and:
 * - `prepare` answers `Prepared` only after the branch is prepared **and** the yes vote with
 *   `ctx.members` is durable; it answers `No` when the gid was already rolled back (fenced).
 * - `precommit` moves `uncertain → precommitted` and `preabort` moves `uncertain → preaborted`;
 *   each returns the state afterwards and never moves a member out of the other one.
 * - `rollback` of a gid that is not prepared yet fences it: a later `prepare` of that gid votes No
 *   (so a termination protocol racing a slow prepare cannot be overtaken by it).
 * - `rollback` never moves a member out of `committed` (`"HeuristicCommit"`), nor out of
 *   `precommitted` unless told `overPrecommit` (an abort quorum exists): it refuses and
 *   answers `"Precommitted"`, so a terminator that decided abort on a stale view re-evaluates
 *   instead of splitting the transaction.
 * - told `onlyIfUnvoted`, `rollback` fences or rolls back only a member without a recorded yes
 *   vote, atomically with that check against `prepare`'s vote; otherwise it answers `"Voted"`.
 * @since 0.1.0
 */
export interface ThreePhaseParticipant<in out Work = unknown> {
  /** The branch name, unique within a transaction; part of every gid. */
  readonly name: TransactionId.BranchName
  /** Checks that the participant can take part at all (run when it is registered). */
  readonly verify: Effect.Effect<void, ConfigurationError | BranchCallError>
  /** CanCommit: runs the work in a new branch, prepares it and votes. Errors in the work are a No vote. */
  readonly prepare: (ctx: MemberContext, work: Work) => Effect.Effect<Vote, BranchCallError>
  /** PreCommit: durably `uncertain → precommitted`; returns the state afterwards. */
  readonly precommit: (ctx: BranchContext) => Effect.Effect<State, BranchCallError>
  /** Quorum mode: durably `uncertain → preaborted`; returns the state afterwards. */
  readonly preabort: (ctx: BranchContext) => Effect.Effect<State, BranchCallError>
  /** DoCommit: commits the prepared branch; idempotent. */
  readonly commit: (ctx: BranchContext) => Effect.Effect<CommitAck, BranchCallError>
  /**
   * Rolls the branch back (or fences a gid not prepared yet); idempotent. Refuses a committed
   * member (`"HeuristicCommit"`) and, unless `options.overPrecommit`, a precommitted one
   * (`"Precommitted"`, left as it is).
   */
  readonly rollback: (
    ctx: BranchContext,
    options?: RollbackOptions
  ) => Effect.Effect<ThreePhaseRollbackAck, BranchCallError>
  /** The member's state, from durable records only. */
  readonly state: (ctx: BranchContext) => Effect.Effect<State, BranchCallError>
  /**
   * Whether `gid` is one of this participant's branches: its name and its deployment's gid
   * namespace (the contract of 2PC's `Participant.owns`). Optional; when given, a transaction whose
   * namespace the participant does not own is refused before anything is sent (`plan`, so `run`,
   * `terminate` and `agent`), and `recover` and `watch` leave a scanned gid it does not own to the
   * deployment that does (another one sharing the database under the same participant names, or
   * another participant's branch in the same database).
   */
  readonly owns?: (gid: TransactionId.Gid) => boolean
  /** Accord's prepared branches on this participant, with their recorded state and members. */
  readonly inDoubt: Effect.Effect<ReadonlyArray<InDoubtMember>, BranchCallError>
  /** Forgets the bookkeeping of finished transactions; best effort. */
  readonly forget: (ctxs: ReadonlyArray<BranchContext>) => Effect.Effect<void, BranchCallError>
  /** Turns the facade's `[participant, operation, params]` triples into work. */
  readonly fromOperations?: (calls: ReadonlyArray<OperationCall>) => Work
}

/**
 * A 3PC participant with its work type erased.
 * @since 0.1.0
 */
// biome-ignore lint/suspicious/noExplicitAny: the work type is contravariant and erased on purpose
export type AnyThreePhaseParticipant = ThreePhaseParticipant<any>

/**
 * One branch of a 3PC transaction.
 * @since 0.1.0
 */
export interface Branch<Work = unknown> {
  readonly participant: ThreePhaseParticipant<Work>
  readonly work: Work
}

/**
 * Pairs a 3PC participant with its work.
 * @since 0.1.0
 */
export const branch = <Work>(participant: ThreePhaseParticipant<Work>, work: Work): Branch<Work> => ({
  participant,
  work
})

/**
 * A branch with its work type erased.
 * @since 0.1.0
 */
// biome-ignore lint/suspicious/noExplicitAny: each branch has its own work type
export type AnyBranch = Branch<any>

/**
 * Explicit quorum sizes (one vote per member): `commit` (Vc) precommitted members are needed to
 * commit, `abort` (Va) preaborted ones to abort, with Vc + Va > V.
 * @since 0.1.0
 */
export interface Quorum {
  readonly commit: number
  readonly abort: number
}

/**
 * `"classic"` (default), `"quorum"` (Vc = ⌊V/2⌋ + 1, Va = V − Vc + 1) or explicit quorum sizes.
 * @since 0.1.0
 */
export type Mode = "classic" | "quorum" | Quorum

/**
 * A mode checked against a member count.
 * @since 0.1.0
 */
export type ResolvedMode =
  | { readonly kind: "classic"; readonly members: number }
  | { readonly kind: "quorum"; readonly members: number; readonly commit: number; readonly abort: number }

/**
 * A mode that is not one (an unknown name, sizes that are not integers), or quorum sizes that
 * cannot be safe (Vc + Va ≤ V) or cannot be met. Nothing was sent. `commit` and `abort` are NaN
 * when the mode gave no sizes, and `members` when it was refused before any member count.
 * @since 0.1.0
 */
export class InvalidQuorumError extends Schema.TaggedError<InvalidQuorumError>()("InvalidQuorumError", {
  members: Schema.Number,
  commit: Schema.Number,
  abort: Schema.Number,
  reason: Schema.String
}) {
  override get message(): string {
    // Sizes that are not numbers say nothing: the reason quotes what was given instead.
    if (Number.isNaN(this.commit) || Number.isNaN(this.abort)) return `invalid 3PC mode: ${this.reason}`
    const members = Number.isNaN(this.members) ? "" : `V=${this.members}, `
    return `invalid quorum (${members}Vc=${this.commit}, Va=${this.abort}): ${this.reason}`
  }
}

const acceptedModes = 'use "classic", "quorum" or { commit, abort } quorum sizes'

/** What was given as a mode, for an error message. */
const describeGiven = (value: unknown): string => {
  if (typeof value === "string") return JSON.stringify(value)
  if (typeof value === "object" && value !== null && !Array.isArray(value)) {
    const { commit, abort } = value as Record<string, unknown>
    return `{ commit: ${describeGiven(commit)}, abort: ${describeGiven(abort)} }`
  }
  return String(value)
}

/**
 * Checks a mode's shape before any member count is known: a known name, or integer quorum sizes of
 * at least 1. `resolveMode` checks the sizes against the members too.
 * @since 0.1.0
 */
export const checkMode = (mode: unknown, members = Number.NaN): Either.Either<Mode, InvalidQuorumError> => {
  const fail = (reason: string, commit = Number.NaN, abort = Number.NaN) =>
    Either.left(new InvalidQuorumError({ members, commit, abort, reason }))
  if (mode === "classic" || mode === "quorum") return Either.right(mode)
  if (typeof mode === "string") {
    const near = mode.trim().toLowerCase()
    const hint = near === "classic" || near === "quorum" ? ` (did you mean ${JSON.stringify(near)}?)` : ""
    return fail(`unknown 3PC mode ${JSON.stringify(mode)}${hint}: ${acceptedModes}`)
  }
  if (typeof mode !== "object" || mode === null || Array.isArray(mode)) {
    return fail(`unknown 3PC mode ${describeGiven(mode)}: ${acceptedModes}`)
  }
  const { commit, abort } = mode as Record<string, unknown>
  if (!Number.isInteger(commit) || !Number.isInteger(abort)) {
    return fail(`quorum sizes must be integers, got ${describeGiven(mode)}: ${acceptedModes}`)
  }
  const sizes = { commit: commit as number, abort: abort as number }
  if (sizes.commit < 1 || sizes.abort < 1)
    return fail("quorum sizes must be at least 1", sizes.commit, sizes.abort)
  return Either.right(sizes)
}

/**
 * Checks a mode for `members` members.
 * @since 0.1.0
 */
export const resolveMode = (
  mode: Mode | undefined,
  members: number
): Either.Either<ResolvedMode, InvalidQuorumError> => {
  if (mode === undefined || mode === "classic") return Either.right({ kind: "classic", members })
  if (mode === "quorum") {
    const commit = Math.floor(members / 2) + 1
    return Either.right({ kind: "quorum", members, commit, abort: members - commit + 1 })
  }
  const checked = checkMode(mode, members)
  if (Either.isLeft(checked)) return Either.left(checked.left)
  const { commit, abort } = checked.right as Quorum
  const fail = (reason: string) => Either.left(new InvalidQuorumError({ members, commit, abort, reason }))
  if (commit > members || abort > members) return fail("a quorum larger than the members can never form")
  if (commit + abort <= members) {
    return fail(
      "Vc + Va must exceed V, or a commit quorum and an abort quorum could form on two sides of a partition"
    )
  }
  return Either.right({ kind: "quorum", members, commit, abort })
}

/**
 * Bounds of one 3PC transaction. Every wait is explicit.
 * @since 0.1.0
 */
export interface Options {
  /** Use this id instead of a fresh one (a ULID). */
  readonly txId?: string
  /** A per-deployment gid namespace (`[a-z0-9]{1,16}`). */
  readonly namespace?: string
  /** Classic (default) or quorum. */
  readonly mode?: Mode
  /** Bound on each member's prepare and vote. A timeout is a No vote. Default 10 s. */
  readonly canCommitTimeout?: Duration.DurationInput
  /** Bound on the PreCommit phase. Default 5 s. */
  readonly precommitTimeout?: Duration.DurationInput
  /**
   * The `timeout` the members' agents run with (`agent`, `watch`), declared here because the
   * coordinator's phases must fit in it: in classic mode `run` refuses, with `UnsafeTimeoutError`
   * and before anything is sent, phases for which it is below `minimumAgentTimeout`. It does not
   * configure the agents (they run in the members' processes): give them the same value.
   * Default 20 s (`defaults.agentTimeout`).
   */
  readonly agentTimeout?: Duration.DurationInput
  /** Bound on the DoCommit phase (retries included); then `CommitPending`. Default 10 s. */
  readonly commitTimeout?: Duration.DurationInput
  /** Bound on each single call (rollback, state, commit attempt). Default 5 s. */
  readonly callTimeout?: Duration.DurationInput
  /** Retry policy of commit calls. Default: exponential from 10 ms, jittered, capped at 1 s. */
  readonly commitSchedule?: Schedule.Schedule<unknown, BranchCallError | TimeoutError>
}

/**
 * The defaults of `Options` and of the agent.
 * @since 0.1.0
 */
export const defaults = {
  canCommitTimeout: Duration.seconds(10),
  precommitTimeout: Duration.seconds(5),
  commitTimeout: Duration.seconds(10),
  callTimeout: Duration.seconds(5),
  /** An agent's wait for news from the coordinator; at least `minimumAgentTimeout` (18.75 s by default). */
  agentTimeout: Duration.seconds(20),
  /** The same retry policy as 2PC's phase 2. */
  commitSchedule: twoPhaseDefaults.commitSchedule,
  /** How many transactions `recover` terminates at a time. */
  recoverConcurrency: 16
} as const

/**
 * The shortest safe agent `timeout` for a classic-mode coordinator with these bounds:
 * 1.25 × (`canCommitTimeout + precommitTimeout`), 18.75 s for the defaults.
 *
 * An agent's clock starts at the earliest when its member voted, which is after the coordinator
 * started CanCommit; the coordinator's last PreCommit is sent within `canCommitTimeout` and
 * acknowledged within `precommitTimeout` of that. An agent that hears nothing for longer can take
 * the coordinator for dead. The extra quarter covers a PreCommit landing after the coordinator
 * stopped waiting for it, and timers running at slightly different rates in different processes.
 * Shorter, a slow but live coordinator races the agents: an agent that sees every member
 * uncertain aborts while the coordinator precommits, which leaves the transaction blocked
 * (aborted and precommitted members) or, once the aborted ones crash, split.
 * @since 0.1.0
 */
export const minimumAgentTimeout = (
  options: {
    readonly canCommitTimeout?: Duration.DurationInput | undefined
    readonly precommitTimeout?: Duration.DurationInput | undefined
  } = {}
): Duration.Duration =>
  Duration.times(
    Duration.sum(
      Duration.decode(options.canCommitTimeout ?? defaults.canCommitTimeout),
      Duration.decode(options.precommitTimeout ?? defaults.precommitTimeout)
    ),
    1.25
  )

/**
 * Classic-mode coordinator bounds that the agents' timeout does not outlast
 * (`agentTimeout < minimumAgentTimeout`). Nothing was sent.
 * @since 0.1.0
 */
export class UnsafeTimeoutError extends Schema.TaggedError<UnsafeTimeoutError>()("UnsafeTimeoutError", {
  agentTimeoutMillis: Schema.Number,
  minimumMillis: Schema.Number,
  canCommitTimeoutMillis: Schema.Number,
  precommitTimeoutMillis: Schema.Number
}) {
  override get message(): string {
    return (
      `classic 3PC needs the agents' timeout (agentTimeout, ${this.agentTimeoutMillis} ms) to be at least ` +
      `1.25 × (canCommitTimeout ${this.canCommitTimeoutMillis} ms + precommitTimeout ${this.precommitTimeoutMillis} ms) ` +
      `= ${this.minimumMillis} ms, or a slow coordinator is taken for a dead one and the transaction can split; ` +
      "raise agentTimeout (and the agents' timeout), lower the coordinator's timeouts, or use quorum mode"
    )
  }
}

/**
 * Checks that agents waiting `agentTimeout` (default 20 s) outlast a coordinator with these
 * bounds. Classic mode only: quorum mode stays atomic under any timeouts (an agent that runs too
 * early can only make the transaction abort or block).
 * @since 0.1.0
 */
export const checkAgentTimeout = (options: {
  readonly mode?: Mode | undefined
  readonly canCommitTimeout?: Duration.DurationInput | undefined
  readonly precommitTimeout?: Duration.DurationInput | undefined
  readonly agentTimeout?: Duration.DurationInput | undefined
}): Either.Either<void, UnsafeTimeoutError> => {
  if (options.mode !== undefined && options.mode !== "classic") return Either.void
  const minimum = minimumAgentTimeout(options)
  const agentTimeout = Duration.decode(options.agentTimeout ?? defaults.agentTimeout)
  if (Duration.greaterThanOrEqualTo(agentTimeout, minimum)) return Either.void
  return Either.left(
    new UnsafeTimeoutError({
      agentTimeoutMillis: Duration.toMillis(agentTimeout),
      minimumMillis: Duration.toMillis(minimum),
      canCommitTimeoutMillis: Duration.toMillis(
        Duration.decode(options.canCommitTimeout ?? defaults.canCommitTimeout)
      ),
      precommitTimeoutMillis: Duration.toMillis(
        Duration.decode(options.precommitTimeout ?? defaults.precommitTimeout)
      )
    })
  )
}

/**
 * The outcome of a 3PC transaction, shaped like `TwoPhaseCommit.Outcome` plus the protocol:
 * - `Committed`: every member acknowledged the commit.
 * - `CommitPending`: the outcome is commit (durable in the members' precommitted states);
 *   `pending` members have not acknowledged; their agents or `recover` finish them.
 * - `Aborted`: nothing was committed, except the branches in `heuristics` when present.
 *
 * `heuristics` name the branches that ended against the decision, as in 2PC: rolled back by hand
 * although the outcome is commit (the commit found the branch gone without its marker,
 * `HeuristicRollback`), or committed by hand although it is abort (`HeuristicCommit`). When a
 * `TransactionLog` is in the context they are also recorded there (`recordHeuristic`, the record
 * 2PC writes); 3PC needs no log otherwise.
 * - `Blocked`: (quorum mode) neither quorum could be reached from the coordinator; the members'
 *   agents decide when enough of them can talk to each other. No member has committed or
 *   aborted by the coordinator's hand.
 * @since 0.1.0
 */
export type Outcome = Data.TaggedEnum<{
  Committed: {
    readonly txId: TransactionId.TransactionId
    readonly votes: ReadonlyArray<BranchVote>
    readonly heuristics: ReadonlyArray<Heuristic>
    readonly protocol: "3pc"
    readonly mode: "classic" | "quorum"
  }
  CommitPending: {
    readonly txId: TransactionId.TransactionId
    readonly votes: ReadonlyArray<BranchVote>
    readonly pending: ReadonlyArray<TransactionId.BranchName>
    /** Members that acknowledged, but had been rolled back by hand. */
    readonly heuristics: ReadonlyArray<Heuristic>
    readonly protocol: "3pc"
    readonly mode: "classic" | "quorum"
  }
  Aborted: {
    readonly txId: TransactionId.TransactionId
    readonly votes: ReadonlyArray<BranchVote>
    readonly reason: string
    /** Present only when a rollback found its branch committed by hand. */
    readonly heuristics?: ReadonlyArray<Heuristic>
    readonly protocol: "3pc"
    readonly mode: "classic" | "quorum"
  }
  Blocked: {
    readonly txId: TransactionId.TransactionId
    readonly votes: ReadonlyArray<BranchVote>
    readonly reason: string
    readonly protocol: "3pc"
    readonly mode: "classic" | "quorum"
  }
}>
/** @since 0.1.0 */
export const Outcome = Data.taggedEnum<Outcome>()

/**
 * A member's state as a terminator saw it (`unreachable` when it could not ask).
 * @since 0.1.0
 */
export interface Observed {
  readonly branch: TransactionId.BranchName
  readonly state: State | "unreachable"
}

/**
 * What a run of the termination protocol decided.
 * - `Committed` / `Aborted`: decided and applied to the reachable members; `pending` names the
 *   members it could not tell (their own agents, or a later run, finish them); `heuristics` the
 *   members it found ended against the decision (rolled back, or committed, by hand), which it
 *   also records in the `TransactionLog` when one is in the context.
 * - `Blocked`: it may not decide from what it can reach (quorum mode minority, or no member
 *   reachable); nothing was changed except harmless `precommitted`/`preaborted` moves.
 * @since 0.1.0
 */
export type Termination = Data.TaggedEnum<{
  Committed: {
    readonly txId: TransactionId.TransactionId
    readonly rule: string
    readonly observed: ReadonlyArray<Observed>
    readonly pending: ReadonlyArray<TransactionId.BranchName>
    readonly heuristics: ReadonlyArray<Heuristic>
  }
  Aborted: {
    readonly txId: TransactionId.TransactionId
    readonly rule: string
    readonly observed: ReadonlyArray<Observed>
    readonly pending: ReadonlyArray<TransactionId.BranchName>
    readonly heuristics: ReadonlyArray<Heuristic>
  }
  Blocked: {
    readonly txId: TransactionId.TransactionId
    readonly reason: string
    readonly observed: ReadonlyArray<Observed>
  }
}>
/** @since 0.1.0 */
export const Termination = Data.taggedEnum<Termination>()

/** Transactions by outcome. @since 0.1.0 */
export const outcomes = Metric.counter("accord_3pc_outcomes_total", {
  description: "3PC transactions by outcome",
  incremental: true
})
/** Transaction latency. @since 0.1.0 */
export const latency = Metric.histogram(
  "accord_3pc_latency_ms",
  MetricBoundaries.exponential({ start: 0.5, factor: 2, count: 16 }),
  "3PC transaction latency in milliseconds"
)
/** Termination protocol runs by result. @since 0.1.0 */
export const terminations = Metric.counter("accord_3pc_terminations_total", {
  description: "3PC termination protocol runs by result",
  incremental: true
})

/**
 * Who can reach whom: `(from, to)` answers whether a call from `from` to member `to` gets
 * through. `from` is the member whose agent runs the protocol, or `"coordinator"`/a standby name.
 * Injected to simulate partitions; in production, calls that fail or time out count as
 * unreachable anyway.
 * @since 0.1.0
 */
export type Reachability = (from: string, to: TransactionId.BranchName) => boolean | Effect.Effect<boolean>

/**
 * Options of `terminate`.
 * @since 0.1.0
 */
export interface TerminateOptions {
  /** Every member of the transaction (V). Default: the names of the given participants. */
  readonly members?: ReadonlyArray<string>
  readonly namespace?: string
  readonly mode?: Mode
  /** Who runs the protocol (for `reachable`). Default `"standby"`. */
  readonly from?: string
  readonly reachable?: Reachability
  /** Bound on each call. Default 5 s. */
  readonly callTimeout?: Duration.DurationInput
  /** Retries of a commit or rollback within one run. Default 3, exponential from 20 ms. */
  readonly retrySchedule?: Schedule.Schedule<unknown, BranchCallError | TimeoutError>
  /** Re-evaluations when states move under the protocol (a precommit refused, ...). Default 3. */
  readonly rounds?: number
}

interface Member {
  readonly name: TransactionId.BranchName
  readonly ctx: MemberContext
  readonly participant: AnyThreePhaseParticipant | undefined
}

interface Plan {
  readonly txId: TransactionId.TransactionId
  readonly mode: ResolvedMode
  readonly members: ReadonlyArray<Member>
}

/**
 * Checks the members of a transaction and the mode; builds every member's context. Refuses a
 * member whose participant does not own its gid (`ThreePhaseParticipant.owns`: another namespace).
 * @since 0.1.0
 */
export const plan = (
  txId: string,
  participants: ReadonlyArray<AnyThreePhaseParticipant>,
  options: {
    readonly members?: ReadonlyArray<string>
    readonly namespace?: string
    readonly mode?: Mode
  } = {}
): Either.Either<Plan, InvalidTransactionError | InvalidQuorumError> =>
  Either.gen(function* () {
    const id = yield* TransactionId.parseTransactionId(txId)
    if (!Array.isArray(participants)) {
      return yield* Either.left(new InvalidTransactionError({ reason: "participants must be an array" }))
    }
    const names = options.members ?? participants.map((p) => p?.name)
    if (!Array.isArray(names) || names.length === 0) {
      return yield* Either.left(
        new InvalidTransactionError({ reason: "a transaction needs at least one member" })
      )
    }
    const ns = options.namespace
    if (ns !== undefined && !TransactionId.namespacePattern.test(ns)) {
      return yield* Either.left(
        new InvalidTransactionError({ reason: `invalid namespace ${JSON.stringify(ns)}` })
      )
    }
    const parsed: Array<TransactionId.BranchName> = []
    for (const n of names) {
      const name = yield* TransactionId.parseBranchName(n)
      if (parsed.includes(name)) {
        return yield* Either.left(new InvalidTransactionError({ reason: `member ${name} is listed twice` }))
      }
      parsed.push(name)
    }
    const byName = new Map<string, AnyThreePhaseParticipant>()
    for (const p of participants) {
      if (p === null || typeof p !== "object" || typeof p.name !== "string") {
        return yield* Either.left(new InvalidTransactionError({ reason: "a participant has no name" }))
      }
      if (!parsed.includes(p.name)) {
        return yield* Either.left(
          new InvalidTransactionError({
            reason: `unknown participant ${JSON.stringify(p.name)}: not a member of transaction ${id}`
          })
        )
      }
      if (byName.has(p.name)) {
        return yield* Either.left(
          new InvalidTransactionError({ reason: `participant ${p.name} given twice` })
        )
      }
      byName.set(p.name, p)
    }
    const mode = yield* resolveMode(options.mode, parsed.length)
    const members: Array<Member> = []
    for (const name of parsed) {
      const gid = yield* TransactionId.validateGid(
        ns === undefined ? `accord_${id}_${name}` : `accord-${ns}_${id}_${name}`
      )
      // A participant of another namespace would prepare a branch its own recovery never finds, or
      // (a terminator, an agent) drive the branch of another deployment sharing its database.
      const participant = byName.get(name)
      if (participant?.owns !== undefined && !participant.owns(gid)) {
        return yield* Either.left(
          new InvalidTransactionError({
            reason: `participant ${name} does not own gid ${gid}: give the transaction the participant's namespace (${
              ns === undefined ? "none was given" : `${ns} was given`
            })`
          })
        )
      }
      members.push({
        name,
        ctx: {
          txId: id,
          branch: name,
          gid,
          members: parsed,
          mode: mode.kind === "classic" ? "classic" : { commit: mode.commit, abort: mode.abort }
        },
        participant
      })
    }
    return { txId: id, mode, members }
  })

const isFinal = (s: State | "unreachable"): s is "committed" | "aborted" =>
  s === "committed" || s === "aborted"

/**
 * A participant's defect (a bug, or a rejected Promise under `Effect.promise`) in a call as the
 * failed call, in doubt, that the protocol handles as it handles any failed call: a No vote, a
 * commit retried, a member unreachable for the termination protocol, a scan that did not answer.
 * 2PC did this; 3PC let the defect end the whole run, after a commit decision too, with one member
 * committed and the other left prepared (found by a review: a commit whose first attempt died with
 * a rejected Promise would have succeeded on its retry).
 *
 * It takes the call itself, not its Effect: a method that throws when called (instead of returning
 * an Effect), or returns something that is not an Effect, is a defect of that call too. Called
 * eagerly, the throw escaped the guard: a commit that threw rejected the whole run with one member
 * committed, a prepare or precommit that threw left the other members prepared or precommitted.
 * Every participant call of this module goes through here (or `timed`), once per attempt.
 */
const contained = <A, E>(
  call: () => Effect.Effect<A, E>,
  ctx: { readonly txId: string; readonly branch: string },
  phase: "precommit" | "preabort" | "commit" | "rollback" | "state" | "prepare" | "recover"
): Effect.Effect<A, E | BranchCallError> => guardedCall(ctx, phase, call)

const timed = <A>(
  call: () => Effect.Effect<A, BranchCallError>,
  ctx: BranchContext,
  phase: "precommit" | "preabort" | "commit" | "rollback" | "state" | "prepare",
  timeout: Duration.Duration
): Effect.Effect<A, BranchCallError | TimeoutError> =>
  contained(call, ctx, phase).pipe(
    Effect.timeoutFail({
      duration: timeout,
      onTimeout: () =>
        new TimeoutError({ txId: ctx.txId, branch: ctx.branch, phase, millis: Duration.toMillis(timeout) })
    })
  )

const defaultRetry = Schedule.exponential(Duration.millis(20), 2).pipe(Schedule.intersect(Schedule.recurs(3)))

const heuristicOf = (m: { readonly ctx: BranchContext }, decision: "commit" | "abort"): Heuristic => ({
  branch: m.ctx.branch,
  gid: m.ctx.gid,
  detail: heuristicDetail[decision]
})

/**
 * Records heuristic outcomes in the `TransactionLog` when one is in the context, in 2PC's record
 * shape; 3PC runs without a log otherwise. Each write is bounded by `timeout`; one that fails is
 * logged, not fatal (the outcome reports the heuristics all the same).
 */
const recordHeuristics = (
  txId: TransactionId.TransactionId,
  decision: "commit" | "abort",
  heuristics: ReadonlyArray<Heuristic>,
  timeout: Duration.Duration
): Effect.Effect<void> =>
  heuristics.length === 0
    ? Effect.void
    : Effect.flatMap(Effect.serviceOption(TransactionLog), (log) =>
        Option.isNone(log)
          ? Effect.void
          : Effect.forEach(
              heuristics,
              (h) => {
                const record: HeuristicRecord = {
                  txId,
                  branch: h.branch,
                  gid: h.gid,
                  decision,
                  detail: h.detail
                }
                return log.value.recordHeuristic(record).pipe(
                  Effect.timeoutFail({
                    duration: timeout,
                    onTimeout: () => new Error(`no answer within ${Duration.format(timeout)}`)
                  }),
                  Effect.catchAll((e) =>
                    Effect.logWarning(
                      `3PC ${txId}: cannot record the heuristic outcome of ${h.branch} (${h.detail}): ${e.message}`
                    )
                  )
                )
              },
              { discard: true }
            )
      )

/**
 * Runs the termination protocol once over the members it can reach, without the coordinator.
 * Safe to run from several places at once (agents, standby coordinators, recovery).
 *
 * Fails only on invalid input (unknown participants, bad quorum sizes, a namespace the participants
 * do not own): nothing was sent then.
 * @since 0.1.0
 */
export const terminate: (
  txId: string,
  participants: ReadonlyArray<AnyThreePhaseParticipant>,
  options?: TerminateOptions
) => Effect.Effect<Termination, InvalidTransactionError | InvalidQuorumError> = Effect.fn(
  "ThreePhaseCommit.terminate"
)(function* (
  txId: string,
  participants: ReadonlyArray<AnyThreePhaseParticipant>,
  options: TerminateOptions = {}
) {
  const p = yield* plan(txId, participants, options)
  return yield* terminatePlan(p, options)
})

const terminatePlan = (p: Plan, options: TerminateOptions): Effect.Effect<Termination> =>
  terminateOnce(p, options).pipe(
    Effect.tap((result) => Metric.increment(Metric.tagged(terminations, "result", result._tag))),
    Effect.tap((result) =>
      result._tag === "Blocked"
        ? Effect.void
        : recordHeuristics(
            result.txId,
            result._tag === "Committed" ? "commit" : "abort",
            result.heuristics,
            Duration.decode(options.callTimeout ?? defaults.callTimeout)
          )
    ),
    Effect.withSpan("ThreePhaseCommit.termination", {
      attributes: { txId: p.txId, mode: p.mode.kind, from: options.from ?? "standby", phase: "recover" }
    })
  )

const terminateOnce = (p: Plan, options: TerminateOptions): Effect.Effect<Termination> =>
  Effect.gen(function* () {
    const callTimeout = Duration.decode(options.callTimeout ?? defaults.callTimeout)
    const retry = options.retrySchedule ?? defaultRetry
    const rounds = Math.max(1, options.rounds ?? 3)
    const from = options.from ?? "standby"
    const reach = (m: Member): Effect.Effect<boolean> => {
      if (m.participant === undefined) return Effect.succeed(false)
      if (options.reachable === undefined) return Effect.succeed(true)
      const answer = options.reachable(from, m.name)
      return typeof answer === "boolean" ? Effect.succeed(answer) : answer
    }
    // A call that fails or times out means "unreachable right now".
    const ask = <A>(
      m: Member,
      phase: Parameters<typeof timed>[2],
      f: (q: AnyThreePhaseParticipant) => Effect.Effect<A, BranchCallError>
    ) =>
      Effect.gen(function* () {
        if (!(yield* reach(m))) return Option.none<A>()
        return yield* timed(() => f(m.participant!), m.ctx, phase, callTimeout).pipe(
          Effect.map(Option.some),
          Effect.catchAll(() => Effect.succeed(Option.none<A>()))
        )
      })
    const tell = <A>(
      m: Member,
      phase: "commit" | "rollback",
      f: (q: AnyThreePhaseParticipant) => Effect.Effect<A, BranchCallError>
    ) =>
      Effect.gen(function* () {
        if (!(yield* reach(m))) return Option.none<A>()
        return yield* timed(() => f(m.participant!), m.ctx, phase, callTimeout).pipe(
          Effect.retry(retry),
          Effect.map(Option.some),
          Effect.catchAll(() => Effect.succeed(Option.none<A>()))
        )
      })
    const observe = Effect.forEach(p.members, (m) => ask(m, "state", (q) => q.state(m.ctx)), {
      concurrency: "unbounded"
    })
    const toObserved = (states: ReadonlyArray<Option.Option<State>>): ReadonlyArray<Observed> =>
      p.members.map((m, i) => ({
        branch: m.name,
        state: Option.getOrElse(states[i]!, () => "unreachable" as const)
      }))

    // An abort may roll back precommitted members only when no commit quorum can ever form: once
    // Va members are aborted or preaborted (neither can become precommitted). Classic mode is the
    // case Vc = V, Va = 1: one aborted member and nobody can ever commit (the coordinator commits
    // only after every member precommitted, and an aborted member never precommits). Without this,
    // a member precommitted just before it crashed, while the others were aborted in its absence
    // ("every member was uncertain"), refused every rollback once it restarted: the
    // transaction never ended and its branch stayed prepared, holding its row locks.
    const overPrecommit = (states: ReadonlyArray<Option.Option<State>>): boolean => {
      const fenced = states.filter(
        (s) => Option.isSome(s) && (s.value === "aborted" || s.value === "preaborted")
      ).length
      return fenced >= (p.mode.kind === "quorum" ? p.mode.abort : 1)
    }
    // `unvoted`: the members whose missing yes vote is the reason for an abort. They are fenced
    // first, each only if it still has not voted (`onlyIfUnvoted`); one such fence proves that no
    // member can ever be precommitted, and only then are the others rolled back. Rolled back all at
    // once on a view gone stale (the member voted meanwhile and the coordinator precommitted the
    // others), the member would be aborted while the others refuse as precommitted and stay free
    // to form a commit quorum elsewhere: a split.
    const finishWith = (
      decision: "commit" | "abort",
      rule: string,
      states: ReadonlyArray<Option.Option<State>>,
      unvoted: ReadonlyArray<number> = []
    ) =>
      Effect.gen(function* () {
        const fenced = new Set<number>()
        if (decision === "abort" && unvoted.length > 0) {
          const fences = yield* Effect.forEach(
            unvoted,
            (i) =>
              tell(p.members[i]!, "rollback", (q) => q.rollback(p.members[i]!.ctx, { onlyIfUnvoted: true })),
            { concurrency: "unbounded" }
          )
          fences.forEach((f, k) => {
            if (Option.isSome(f) && f.value === "RolledBack") fenced.add(unvoted[k]!)
          })
          // Every such member voted meanwhile (or did not answer): the view is stale; re-read it.
          if (fenced.size === 0) return undefined
        }
        const rollbackOptions: RollbackOptions = { overPrecommit: overPrecommit(states) }
        // Members that answered a commit with HeuristicRollback: told (the decision stands), and
        // reported, as 2PC reports them.
        const rolledBackByHand = new Set<number>()
        const acks = yield* Effect.forEach(
          p.members,
          (m, i) => {
            const s = states[i]!
            if (fenced.has(i)) return Effect.succeed(true)
            if (Option.isSome(s) && s.value === (decision === "commit" ? "committed" : "aborted")) {
              return Effect.succeed(true)
            }
            // Unreachable members are still told if they answer now: a decision is a decision.
            return decision === "commit"
              ? tell(m, "commit", (q) => q.commit(m.ctx)).pipe(
                  Effect.map((ack) => {
                    if (Option.isSome(ack) && ack.value === "HeuristicRollback") rolledBackByHand.add(i)
                    return Option.isSome(ack)
                  })
                )
              : tell(m, "rollback", (q) => q.rollback(m.ctx, rollbackOptions)).pipe(
                  Effect.map((ack) =>
                    Option.isSome(ack)
                      ? ack.value === "Precommitted" || ack.value === "Voted"
                        ? ("refused" as const)
                        : ack.value === "HeuristicCommit"
                          ? ("committed" as const)
                          : true
                      : false
                  )
                )
          },
          { concurrency: "unbounded" }
        )
        // A member refused the rollback because it is precommitted: the abort was decided on a
        // stale view (the coordinator or another terminator moved on). Re-evaluate, do not abort.
        if (acks.includes("refused")) return undefined
        // A member answered that it is committed (HeuristicCommit) and no member is aborted (none
        // was before, none was fenced, none was rolled back now: no ack is `true`): the abort was
        // decided on a stale view of a transaction that committed meanwhile. Re-evaluate (the next
        // round sees it committed and commits the rest) instead of reporting Aborted. With an
        // aborted member besides, it is a heuristic outcome (a branch finished by hand): the abort
        // stands, as before.
        if (acks.includes("committed") && !acks.includes(true)) return undefined
        const pending = p.members
          .filter((_, i) => acks[i] !== true && acks[i] !== "committed")
          .map((m) => m.name)
        const observed = toObserved(states)
        const heuristics = p.members.flatMap((m, i) =>
          (decision === "commit" ? rolledBackByHand.has(i) : acks[i] === "committed")
            ? [heuristicOf(m, decision)]
            : []
        )
        return decision === "commit"
          ? Termination.Committed({ txId: p.txId, rule, observed, pending, heuristics })
          : Termination.Aborted({ txId: p.txId, rule, observed, pending, heuristics })
      })

    let states = yield* observe
    let rereads = 0
    for (let round = 0; round < rounds; round++) {
      const seen = states.flatMap((s) => (Option.isSome(s) ? [s.value] : []))
      const count = (s: State) => seen.filter((x) => x === s).length
      if (seen.length === 0) {
        return Termination.Blocked({
          txId: p.txId,
          reason: "no member reachable",
          observed: toObserved(states)
        })
      }
      if (count("committed") > 0) return (yield* finishWith("commit", "a member had committed", states))!
      // No correct run has a member that never voted yes beside a precommitted one: PreCommit is
      // sent only once every member voted yes. Seen, it is either a stale read (taken before that
      // member voted: read again) or a member whose vote record is gone (`forget` called before
      // every member was final), which may have committed. Fencing and aborting on it rolled the
      // precommitted members back while it kept its commit (a review measured a debit kept and its
      // credit rolled back). Still seen after two more reads: Blocked, an operator decides.
      if (count("initial") > 0 && count("aborted") === 0 && count("precommitted") > 0) {
        if (rereads < 2) {
          rereads++
          states = yield* observe
          continue
        }
        return Termination.Blocked({
          txId: p.txId,
          reason:
            "a member reads as never having voted yes while another is precommitted: its vote record is gone (forgotten before every member was final?); it may have committed, so nothing is aborted",
          observed: toObserved(states)
        })
      }
      const abortRule =
        count("aborted") > 0
          ? "a member had aborted"
          : count("initial") > 0
            ? "a member had not voted yes"
            : undefined
      if (abortRule !== undefined) {
        const unvoted =
          count("aborted") > 0
            ? []
            : states.flatMap((s, i) => (Option.isSome(s) && s.value === "initial" ? [i] : []))
        const t = yield* finishWith("abort", abortRule, states, unvoted)
        if (t !== undefined) return t
        states = yield* observe
        continue
      }

      const precommitted = count("precommitted")
      const uncertain = count("uncertain")
      const preaborted = count("preaborted")
      // Moves every reachable uncertain member with `move`; returns the states afterwards.
      const moveUncertain = (move: "precommit" | "preabort") =>
        Effect.forEach(
          p.members,
          (m, i) => {
            const s = states[i]!
            if (!Option.isSome(s) || s.value !== "uncertain") return Effect.succeed(s)
            return ask(m, move, (q) => (move === "precommit" ? q.precommit(m.ctx) : q.preabort(m.ctx)))
          },
          { concurrency: "unbounded" }
        )

      if (p.mode.kind === "classic") {
        if (preaborted > 0) {
          return Termination.Blocked({
            txId: p.txId,
            reason:
              "a member is preaborted: a quorum-mode terminator works on this transaction; terminate it in quorum mode",
            observed: toObserved(states)
          })
        }
        if (precommitted > 0) {
          states = yield* moveUncertain("precommit")
          const after = states.flatMap((s) => (Option.isSome(s) ? [s.value] : []))
          if (after.every((s) => s === "precommitted" || s === "committed")) {
            return (yield* finishWith(
              "commit",
              "a member was precommitted: precommitted the rest, then committed",
              states
            ))!
          }
          states = yield* observe
          continue
        }
        // Every member uncertain: abort, but only with every member seen. An unreachable member may
        // be precommitted, or even committed: a terminator that could not reach *this* member
        // (crashed then, restarted since) may have committed it under the rule above. Members
        // restart (a database does), so "unreachable" does not mean "gone for good": aborting
        // without it split transactions (simulator seed 37017: the coordinator committed p0 while
        // p1 was down; p1 restarted uncertain while p0 was down, and p1's agent aborted it).
        if (seen.length < p.members.length) {
          return Termination.Blocked({
            txId: p.txId,
            reason: `every reachable member is uncertain and ${p.members.length - seen.length} of ${p.members.length} cannot be reached: an unreachable member may be precommitted or committed, so classic 3PC waits for it`,
            observed: toObserved(states)
          })
        }
        const t = yield* finishWith("abort", "every member was uncertain", states)
        if (t !== undefined) return t
        states = yield* observe
        continue
      }

      const { commit: vc, abort: va } = p.mode
      if (precommitted > 0 && precommitted + uncertain >= vc) {
        states = yield* moveUncertain("precommit")
        const reached = states.filter((s) => Option.isSome(s) && s.value === "precommitted").length
        if (reached >= vc) {
          return (yield* finishWith(
            "commit",
            `commit quorum: ${reached} of ${p.mode.members} precommitted (Vc=${vc})`,
            states
          ))!
        }
        states = yield* observe
        continue
      }
      if (preaborted + uncertain >= va) {
        states = yield* moveUncertain("preabort")
        const reached = states.filter((s) => Option.isSome(s) && s.value === "preaborted").length
        if (reached >= va) {
          const t = yield* finishWith(
            "abort",
            `abort quorum: ${reached} of ${p.mode.members} preaborted (Va=${va})`,
            states
          )
          if (t !== undefined) return t
        }
        states = yield* observe
        continue
      }
      return Termination.Blocked({
        txId: p.txId,
        reason: `no quorum reachable: ${precommitted} precommitted, ${uncertain} uncertain, ${preaborted} preaborted of ${p.mode.members} (Vc=${vc}, Va=${va})`,
        observed: toObserved(states)
      })
    }
    return Termination.Blocked({
      txId: p.txId,
      reason: `no decision after ${rounds} rounds: members refused or did not answer the moves`,
      observed: toObserved(states)
    })
  })

/**
 * Why `run` refuses a transaction; in every case nothing was sent.
 * @since 0.1.0
 */
export type RunError = InvalidTransactionError | InvalidQuorumError | UnsafeTimeoutError

/**
 * Runs one global transaction with three-phase commit. Needs no coordinator log (see the module
 * documentation). Fails only on invalid input (nothing was sent): bad members or quorum sizes, a
 * namespace the participants do not own (`ThreePhaseParticipant.owns`), and in classic mode phases
 * that the agents' declared timeout does not outlast (`UnsafeTimeoutError`).
 * @since 0.1.0
 */
export const run: (
  branches: ReadonlyArray<AnyBranch>,
  options?: Options
) => Effect.Effect<Outcome, RunError> = Effect.fn("ThreePhaseCommit.run")(function* (
  branches: ReadonlyArray<AnyBranch>,
  options: Options = {}
) {
  const started = yield* Clock.currentTimeMillis
  const txId =
    options.txId === undefined
      ? yield* TransactionId.make
      : yield* TransactionId.parseTransactionId(options.txId)
  if (!Array.isArray(branches) || branches.length === 0) {
    return yield* new InvalidTransactionError({ reason: "a transaction needs at least one branch" })
  }
  for (const b of branches) {
    if (b === null || typeof b !== "object" || b.participant === undefined || b.participant === null) {
      return yield* new InvalidTransactionError({ reason: "a branch has no participant" })
    }
  }
  const p = yield* plan(
    txId,
    branches.map((b) => b.participant),
    {
      ...(options.namespace === undefined ? {} : { namespace: options.namespace }),
      ...(options.mode === undefined ? {} : { mode: options.mode })
    }
  )
  if (p.mode.kind === "classic") yield* checkAgentTimeout({ ...options, mode: "classic" })
  yield* Effect.annotateCurrentSpan({ txId, branches: branches.length, mode: p.mode.kind })
  const mode = p.mode.kind
  const canCommitTimeout = Duration.decode(options.canCommitTimeout ?? defaults.canCommitTimeout)
  const precommitTimeout = Duration.decode(options.precommitTimeout ?? defaults.precommitTimeout)
  const commitTimeout = Duration.decode(options.commitTimeout ?? defaults.commitTimeout)
  const callTimeout = Duration.decode(options.callTimeout ?? defaults.callTimeout)
  const schedule = options.commitSchedule ?? defaults.commitSchedule
  const members = p.members.map((m, i) => ({
    ...m,
    participant: branches[i]!.participant,
    work: branches[i]!.work
  }))
  const finish = (outcome: Outcome) =>
    Effect.gen(function* () {
      const millis = (yield* Clock.currentTimeMillis) - started
      yield* Metric.increment(Metric.tagged(outcomes, "outcome", outcome._tag))
      yield* Metric.update(latency, millis)
      yield* Effect.annotateCurrentSpan({ outcome: outcome._tag, millis })
      return outcome
    })

  // Phase 1: CanCommit.
  const prepared = yield* Effect.forEach(
    members,
    (m) =>
      canCommit(m.participant, m.ctx, m.work, canCommitTimeout).pipe(
        Effect.map((vote) => ({ vote, definite: true })),
        Effect.catchAll((e) => Effect.succeed({ vote: Vote.No({ reason: e.message }), definite: false }))
      ),
    { concurrency: "unbounded" }
  )
  const votes: ReadonlyArray<BranchVote> = members.map((m, i) => ({
    branch: m.name,
    gid: m.ctx.gid,
    vote: prepared[i]!.vote
  }))
  const refused = votes.find((v) => v.vote._tag !== "Prepared")
  if (refused !== undefined) {
    // Nobody was precommitted, so aborting needs no quorum. Rolling back a member whose prepare
    // timed out fences its gid, so a late prepare votes No. A rollback left unanswered leaves the
    // member to its agent or `recover`; one that finds its branch committed (by hand: nobody can
    // have committed it through the protocol) is a heuristic outcome.
    const toRollBack = members.filter((_, i) => !(prepared[i]!.definite && prepared[i]!.vote._tag === "No"))
    const rollbacks = yield* Effect.forEach(
      toRollBack,
      (m) => timed(() => m.participant.rollback(m.ctx), m.ctx, "rollback", callTimeout).pipe(Effect.option),
      { concurrency: "unbounded" }
    )
    const heuristics = toRollBack.flatMap((m, i) => {
      const ack = rollbacks[i]!
      return Option.isSome(ack) && ack.value === "HeuristicCommit" ? [heuristicOf(m, "abort")] : []
    })
    yield* recordHeuristics(txId, "abort", heuristics, callTimeout)
    const reason =
      refused.vote._tag === "No"
        ? `${refused.branch}: ${refused.vote.reason}`
        : `${refused.branch}: voted read-only; 3PC needs every member prepared`
    return yield* finish(
      Outcome.Aborted({
        txId,
        votes,
        reason,
        ...(heuristics.length === 0 ? {} : { heuristics }),
        protocol: "3pc",
        mode
      })
    )
  }

  // Phase 2: PreCommit.
  const acks = yield* Effect.forEach(
    members,
    (m) =>
      preCommit(m.participant, m.ctx).pipe(
        Effect.timeout(precommitTimeout),
        Effect.map(Option.some),
        Effect.catchAll(() => Effect.succeed(Option.none<State>()))
      ),
    { concurrency: "unbounded" }
  )
  const precommitted = acks.filter((a) => Option.isSome(a) && a.value === "precommitted").length
  const decided = p.mode.kind === "classic" ? precommitted === members.length : precommitted >= p.mode.commit

  if (!decided) {
    // Some member did not ack (or refused): the coordinator is just another terminator now. The
    // termination protocol records the heuristics it met.
    const t = yield* terminatePlan({ ...p, members }, { from: "coordinator", callTimeout })
    return yield* finish(
      Termination.$match(t, {
        Committed: ({ heuristics, pending }) =>
          pending.length === 0
            ? Outcome.Committed({ txId, votes, heuristics, protocol: "3pc", mode })
            : Outcome.CommitPending({ txId, votes, pending, heuristics, protocol: "3pc", mode }),
        Aborted: ({ heuristics, rule }) =>
          Outcome.Aborted({
            txId,
            votes,
            reason: `precommit phase incomplete; ${rule}`,
            ...(heuristics.length === 0 ? {} : { heuristics }),
            protocol: "3pc",
            mode
          }),
        Blocked: ({ reason }) => Outcome.Blocked({ txId, votes, reason, protocol: "3pc", mode })
      })
    )
  }

  // Phase 3: DoCommit. From here the outcome is commit, whatever happens.
  const commits = yield* Effect.forEach(
    members,
    (m) =>
      doCommit(m.participant, m.ctx, callTimeout, schedule).pipe(
        Effect.timeout(commitTimeout),
        Effect.map((ack): Option.Option<CommitAck> => Option.some(ack)),
        Effect.catchAll(() => Effect.succeed(Option.none<CommitAck>()))
      ),
    { concurrency: "unbounded" }
  )
  const pending = members.filter((_, i) => Option.isNone(commits[i]!)).map((m) => m.name)
  const heuristics: Array<Heuristic> = members.flatMap((m, i) => {
    const ack = commits[i]!
    return Option.isSome(ack) && ack.value === "HeuristicRollback" ? [heuristicOf(m, "commit")] : []
  })
  yield* recordHeuristics(txId, "commit", heuristics, callTimeout)
  if (pending.length > 0)
    return yield* finish(Outcome.CommitPending({ txId, votes, pending, heuristics, protocol: "3pc", mode }))
  return yield* finish(Outcome.Committed({ txId, votes, heuristics, protocol: "3pc", mode }))
})

const canCommit = Effect.fn("ThreePhaseCommit.canCommit")(function* (
  participant: AnyThreePhaseParticipant,
  ctx: MemberContext,
  work: unknown,
  timeout: Duration.Duration
) {
  yield* Effect.annotateCurrentSpan({ txId: ctx.txId, branch: ctx.branch, phase: "prepare" })
  return yield* timed(() => participant.prepare(ctx, work), ctx, "prepare", timeout)
})

const preCommit = Effect.fn("ThreePhaseCommit.precommit")(function* (
  participant: AnyThreePhaseParticipant,
  ctx: MemberContext
) {
  yield* Effect.annotateCurrentSpan({ txId: ctx.txId, branch: ctx.branch, phase: "precommit" })
  return yield* contained(() => participant.precommit(ctx), ctx, "precommit")
})

const doCommit = Effect.fn("ThreePhaseCommit.commit")(function* (
  participant: AnyThreePhaseParticipant,
  ctx: MemberContext,
  callTimeout: Duration.Duration,
  schedule: Schedule.Schedule<unknown, BranchCallError | TimeoutError>
) {
  yield* Effect.annotateCurrentSpan({ txId: ctx.txId, branch: ctx.branch, phase: "commit" })
  return yield* timed(() => participant.commit(ctx), ctx, "commit", callTimeout).pipe(Effect.retry(schedule))
})

/**
 * Options of a member's agent.
 * @since 0.1.0
 */
export interface AgentOptions extends Omit<TerminateOptions, "from"> {
  /**
   * How long the agent waits without news (its own state not moving) before it runs the
   * termination protocol. Default 20 s.
   *
   * Classic mode needs it at least `minimumAgentTimeout` of the coordinator's options
   * (1.25 × (`canCommitTimeout + precommitTimeout`)); shorter, a slow but live coordinator is taken
   * for a dead one and the transaction can block or split. The agent cannot check it (the
   * coordinator's timeouts are not recorded with the vote): `run` checks it against its own
   * `agentTimeout` option, so give the agents that value. Quorum mode is atomic whatever the
   * timeouts; a short one only makes aborts and blocking more likely.
   */
  readonly timeout?: Duration.DurationInput
}

/** What a member recorded with its yes vote: the transaction's members and (since it is recorded) mode. */
interface RecordedVote {
  readonly members: ReadonlyArray<TransactionId.BranchName>
  readonly mode: Mode | undefined
}

const describeMode = (mode: ResolvedMode): string =>
  mode.kind === "classic" ? "classic" : `quorum (Vc=${mode.commit}, Va=${mode.abort})`

/**
 * A member's agent: after the member voted yes, it waits `timeout` for news from the coordinator
 * (its own durable state moving on); hearing nothing, it runs the termination protocol with the
 * peers it can reach, and again every `timeout` while blocked, until its own member is committed
 * or aborted. Returns the decision that finished its member.
 *
 * It terminates under the rules the transaction ran with: before its first termination it reads
 * its member's recorded yes vote (`inDoubt`) and uses the recorded members and mode over its own
 * `members` and `mode` options, as `recover` and `watch` do (an agent counting the wrong members,
 * or applying classic rules to a quorum transaction, can split it). The options apply only while
 * the member has not voted, and to votes recorded without a mode. While the record cannot be read
 * (the call fails) it does not terminate; it waits another `timeout`.
 *
 * `peers` are handles to the other members (those missing count as unreachable; those that are not
 * recorded members are ignored); `reachable` is asked with `from = self.name`.
 * @since 0.1.0
 */
export const agent: (
  txId: string,
  self: AnyThreePhaseParticipant,
  peers: ReadonlyArray<AnyThreePhaseParticipant>,
  options?: AgentOptions
) => Effect.Effect<Termination, InvalidTransactionError | InvalidQuorumError> = (
  txId,
  self,
  peers,
  options = {}
) => runAgent(txId, self, peers, options, undefined)

const runAgent = Effect.fn("ThreePhaseCommit.agent")(function* (
  txId: string,
  self: AnyThreePhaseParticipant,
  peers: ReadonlyArray<AnyThreePhaseParticipant>,
  options: AgentOptions,
  known: RecordedVote | undefined
) {
  const everyone = [self, ...peers.filter((q) => q !== self && q?.name !== self?.name)]
  const fromOptions = plan(txId, everyone, options)
  // Its own mode may not fit the peers it was given (explicit quorum sizes of a transaction with
  // more members than it knows) while the recorded vote, which wins anyway, fits: read the vote
  // under a provisional classic plan (for the gid) and fail only when no vote is recorded.
  let provisional = false
  let p =
    Either.isLeft(fromOptions) && fromOptions.left._tag === "InvalidQuorumError" && options.mode !== undefined
      ? yield* Either.match(plan(txId, everyone, { ...options, mode: "classic" }), {
          onLeft: () => fromOptions,
          onRight: (classic) => {
            provisional = true
            return Either.right(classic)
          }
        })
      : yield* fromOptions
  const me = p.members.find((m) => m.name === self.name)!
  yield* Effect.annotateCurrentSpan({ txId: p.txId, branch: me.name, mode: p.mode.kind })
  const timeout = Duration.decode(options.timeout ?? defaults.agentTimeout)
  const callTimeout = Duration.decode(options.callTimeout ?? defaults.callTimeout)
  const own = timed(() => self.state(me.ctx), me.ctx, "state", callTimeout).pipe(
    Effect.map(Option.some),
    Effect.catchAll(() => Effect.succeed(Option.none<State>()))
  )
  // The plan under the recorded vote: the recorded members (peers outside them are dropped) and
  // the recorded mode, which wins over this agent's own options.
  const planFor = (vote: RecordedVote) =>
    Effect.gen(function* () {
      const names = new Set<string>(vote.members)
      const recorded = yield* plan(
        txId,
        everyone.filter((q) => names.has(q.name)),
        {
          ...options,
          members: vote.members,
          ...(vote.mode === undefined ? {} : { mode: vote.mode })
        }
      )
      const before = provisional ? "invalid for the peers given" : describeMode(p.mode)
      const after = describeMode(recorded.mode)
      if (options.mode !== undefined && before !== after)
        yield* Effect.logWarning(
          `3PC agent ${me.name} on ${p.txId}: its mode option is ${before} but the vote recorded ${after}; terminating under the recorded mode`
        )
      return recorded
    })
  // Once found, the vote is fixed: it is written once, before the member votes yes.
  let vote: RecordedVote | undefined = known
  if (vote === undefined && provisional) {
    const scan = yield* contained(() => self.inDoubt, { txId: p.txId, branch: me.name }, "recover").pipe(
      Effect.timeout(callTimeout),
      Effect.option
    )
    const mine = Option.isSome(scan) ? scan.value.find((b) => b.gid === me.ctx.gid) : undefined
    // No vote to go by: its own options are all there is, and they are invalid.
    if (mine?.members === undefined)
      return yield* Either.isLeft(fromOptions) ? fromOptions.left : Effect.die(fromOptions)
    vote = { members: mine.members, mode: mine.mode }
  }
  if (vote !== undefined) p = yield* planFor(vote)
  const decidedBy = (state: "committed" | "aborted", rule: string): Termination =>
    state === "committed"
      ? Termination.Committed({
          txId: p.txId,
          rule,
          observed: [{ branch: me.name, state }],
          pending: [],
          heuristics: []
        })
      : Termination.Aborted({
          txId: p.txId,
          rule,
          observed: [{ branch: me.name, state }],
          pending: [],
          heuristics: []
        })
  let last = yield* own
  while (true) {
    yield* Effect.sleep(timeout)
    const now = yield* own
    if (Option.isSome(now) && isFinal(now.value))
      return decidedBy(now.value, "told by the coordinator or a peer")
    if (Option.isSome(now) && (Option.isNone(last) || last.value !== now.value)) {
      last = now // news from the coordinator: keep waiting
      continue
    }
    if (vote === undefined) {
      const scan = yield* contained(() => self.inDoubt, { txId: p.txId, branch: me.name }, "recover").pipe(
        Effect.timeout(callTimeout),
        Effect.option
      )
      if (Option.isNone(scan)) {
        yield* Effect.logDebug(`3PC agent ${me.name} cannot read its vote on ${p.txId}; waiting`)
        last = yield* own
        continue
      }
      const mine = scan.value.find((b) => b.gid === me.ctx.gid)
      if (mine?.members !== undefined) {
        vote = { members: mine.members, mode: mine.mode }
        p = yield* planFor(vote)
      }
    }
    const t = yield* terminatePlan(p, { ...options, from: me.name })
    if (t._tag !== "Blocked" && !t.pending.includes(me.name)) return t
    if (t._tag === "Blocked") yield* Effect.logDebug(`3PC agent ${me.name} blocked on ${p.txId}: ${t.reason}`)
    last = yield* own
  }
})

/**
 * What a recovery pass over 3PC members did.
 * @since 0.1.0
 */
export interface RecoveryReport {
  readonly committed: ReadonlyArray<TransactionId.TransactionId>
  readonly aborted: ReadonlyArray<TransactionId.TransactionId>
  readonly blocked: ReadonlyArray<{ readonly txId: TransactionId.TransactionId; readonly reason: string }>
  /**
   * Branches found ended against their transaction's decision (rolled back, or committed, by
   * hand), in 2PC's record shape; also recorded in the `TransactionLog` when one is in the context.
   */
  readonly heuristics: ReadonlyArray<HeuristicRecord>
  /** Members a decision could not reach yet (a later pass, or their agents, finish them). */
  readonly pending: ReadonlyArray<{
    readonly txId: TransactionId.TransactionId
    readonly branch: TransactionId.BranchName
  }>
  /** Prepared branches that never recorded a yes vote, rolled back (the coordinator cannot have precommitted). */
  readonly unvotedRolledBack: number
  /** Prepared branches that never recorded a yes vote, left alone (`unvoted: "leave"`). */
  readonly unvotedLeft: number
  /** Participants whose in-doubt scan failed. */
  readonly unscanned: ReadonlyArray<string>
  /**
   * Prepared branches younger than `orphanAfter` left to their coordinator, each counted once as
   * 2PC's `youngLeft` counts them: an unvoted one, and every branch found of a transaction whose
   * found branches are all young (it is not terminated; a later pass is).
   */
  readonly youngLeft: number
  /**
   * Another deployment's gids the scans found and left alone, per participant, as in 2PC's report
   * (`Recovery.ForeignGids`; every one `prepared`): gids of another namespace than `namespace`, and
   * gids a participant does not own (`owns`) that no participant of the pass owns. Their
   * transactions are also listed in `blocked`, with the reason.
   */
  readonly foreign: ReadonlyArray<ForeignGids>
}

/**
 * Options of `recover`.
 * @since 0.1.0
 */
export interface RecoverOptions extends Omit<TerminateOptions, "members"> {
  /**
   * Recover only the gids of this namespace; branches of another namespace, voted or not, are left alone
   * (reported `blocked` and `foreign`). Omitted: every namespace. Either way a branch's peers are
   * probed under the namespace of the gid the scan found, and a gid its participant does not own
   * (`ThreePhaseParticipant.owns`) is left alone too (reported `blocked` and `foreign`, unless
   * another participant of the pass owns it), as is a transaction one of whose peers does not own
   * its gid.
   */
  readonly namespace?: string
  /** Prepared branches younger than this are left to their coordinator. Default 30 s. */
  readonly orphanAfter?: Duration.DurationInput
  /**
   * What to do with a prepared branch that recorded no yes vote. `"rollback"` (default) is safe
   * for 3PC (nobody can have precommitted). Use `"leave"` when 2PC transactions share the
   * databases and gid namespace: such a branch may be a 2PC branch, which only 2PC `Recovery`
   * (with its log) may resolve. Run this pass first, then 2PC `Recovery`.
   */
  readonly unvoted?: "rollback" | "leave"
  /** How many transactions are terminated at a time (default 16): they are independent. */
  readonly concurrency?: number
}

/** The namespace of a scanned gid (`Some(undefined)` when it has none; `None` when unparsable). */
const gidNamespace = (gid: string): Option.Option<string | undefined> =>
  Option.map(TransactionId.parseGid(gid), (g) => g.namespace)

/** `options` with `namespace` replaced by the given one (removed when undefined). */
const withNamespace = <O extends { readonly namespace?: string }>(
  options: O,
  namespace: string | undefined
): Omit<O, "namespace"> & { readonly namespace?: string } => {
  const { namespace: _ignored, ...rest } = options
  return namespace === undefined ? rest : { ...rest, namespace }
}

/**
 * One recovery pass (after a restart, or as a standby coordinator): every in-doubt branch of the
 * given participants is driven by the termination protocol over its recorded members. Idempotent.
 * @since 0.1.0
 */
export const recover: (
  participants: ReadonlyArray<AnyThreePhaseParticipant>,
  options?: RecoverOptions
) => Effect.Effect<RecoveryReport> = Effect.fn("ThreePhaseCommit.recover")(function* (
  participants: ReadonlyArray<AnyThreePhaseParticipant>,
  options: RecoverOptions = {}
) {
  const now = yield* Clock.currentTimeMillis
  const orphanAfter = Duration.toMillis(Duration.decode(options.orphanAfter ?? Duration.seconds(30)))
  const callTimeout = Duration.decode(options.callTimeout ?? defaults.callTimeout)
  const scans = yield* Effect.forEach(
    participants,
    (q) =>
      // Bounded: a participant that never answers is reported unscanned, not waited for.
      contained(() => q.inDoubt, { txId: "", branch: q.name }, "recover").pipe(
        Effect.timeout(callTimeout),
        Effect.map((found) => ({
          name: q.name,
          ok: true,
          found: found.map((b) => ({ participant: q, branch: b }))
        })),
        Effect.catchAll(() => Effect.succeed({ name: q.name, ok: false, found: [] }))
      ),
    { concurrency: "unbounded" }
  )
  // Keyed by namespace and txId: a branch's gids are rebuilt from the namespace of the gid the scan
  // found (not from `options.namespace`, which would probe gids that do not exist).
  const byTx = new Map<
    string,
    {
      txId: TransactionId.TransactionId
      namespace: string | undefined
      members: ReadonlyArray<TransactionId.BranchName> | undefined
      mode: Mode | undefined
      young: boolean
      /** Every gid found of the transaction (all young while `young`). */
      gids: ReadonlyArray<TransactionId.Gid>
    }
  >()
  const unvoted: Array<{ participant: AnyThreePhaseParticipant; branch: InDoubtMember }> = []
  const blocked: Array<{ txId: TransactionId.TransactionId; reason: string }> = []
  /** Gids of the young branches left (a gid two scans found counts once). */
  const youngLeft = new Set<string>()
  const foreign = foreignGids(participants)
  for (const found of scans.flatMap((s) => s.found)) {
    // `now` was read before the scans and `preparedAt` is the answer's arrival minus the server's
    // age: a branch prepared a moment ago can look prepared after `now`. With `orphanAfter` 0 no
    // age is compared at all (as in `Recovery`), so such a branch is not spared as young.
    const young = orphanAfter > 0 && now - found.branch.preparedAt < orphanAfter
    const namespace = gidNamespace(found.branch.gid)
    // Another namespace's branches are left alone, voted or not: an unvoted one may be that
    // deployment's 2PC branch, whose commit decision only its own log knows.
    if (
      options.namespace !== undefined &&
      Option.isSome(namespace) &&
      namespace.value !== options.namespace
    ) {
      foreign.add(found.participant.name, found.branch.gid, true)
      blocked.push({
        txId: found.branch.txId,
        reason: `gid ${found.branch.gid} is not in namespace ${JSON.stringify(options.namespace)}: left to its own recovery`
      })
      continue
    }
    // A gid its participant does not own (`owns`) is another deployment's, sharing this database
    // under the same participant names, or another participant's in the same database: voted or
    // not, it is left to whoever owns it. Driven from here, every member uncertain, it was aborted
    // under its own coordinator's feet; unvoted, it was rolled back (it may be a 2PC branch whose
    // commit decision only that deployment's log knows). A gid that another participant of this
    // pass owns is that one's to report: its own scan finds it.
    if (found.participant.owns !== undefined && !found.participant.owns(found.branch.gid)) {
      const gid = found.branch.gid
      if (!participants.some((q) => q.name === found.branch.branch && q.owns?.(gid) === true)) {
        foreign.add(found.participant.name, gid, true)
        blocked.push({
          txId: found.branch.txId,
          reason: `${found.participant.name} does not own gid ${gid}: left to the deployment that does`
        })
      }
      continue
    }
    if (found.branch.members === undefined) {
      if (young) youngLeft.add(found.branch.gid)
      else unvoted.push(found)
      continue
    }
    if (Option.isNone(namespace)) {
      blocked.push({ txId: found.branch.txId, reason: `unparsable gid ${JSON.stringify(found.branch.gid)}` })
      continue
    }
    const key = `${namespace.value ?? ""}/${found.branch.txId}`
    const entry = byTx.get(key)
    const gids = [...(entry?.gids ?? []), found.branch.gid]
    if (entry === undefined || entry.young)
      byTx.set(key, {
        txId: found.branch.txId,
        namespace: namespace.value,
        members: found.branch.members,
        mode: found.branch.mode,
        young,
        gids
      })
    else byTx.set(key, { ...entry, gids })
  }
  // A transaction is left young when every branch found of it is: each of them is left, not just
  // one per transaction (2PC counts branches; before, a young transaction of three counted one).
  for (const { young, gids } of byTx.values()) if (young) for (const gid of gids) youngLeft.add(gid)
  const leave = options.unvoted === "leave"
  // Only while still unvoted: a yes vote recorded since the scan (a slow process between its
  // PREPARE and its vote) makes the branch a member that others may be precommitted on.
  let unvotedRolledBack = 0
  const heuristics: Array<HeuristicRecord> = []
  for (const b of leave ? [] : unvoted) {
    const ack = yield* timed(
      () => b.participant.rollback(b.branch, { onlyIfUnvoted: true }),
      b.branch,
      "rollback",
      callTimeout
    ).pipe(Effect.option)
    if (Option.isSome(ack) && ack.value === "RolledBack") unvotedRolledBack++
    // Committed by hand between the scan and this rollback, which presumed abort.
    if (Option.isSome(ack) && ack.value === "HeuristicCommit") {
      const h = heuristicOf({ ctx: b.branch }, "abort")
      yield* recordHeuristics(b.branch.txId, "abort", [h], callTimeout)
      heuristics.push({ txId: b.branch.txId, decision: "abort", ...h })
    }
  }
  const committed: Array<TransactionId.TransactionId> = []
  const aborted: Array<TransactionId.TransactionId> = []
  const pending: Array<{ txId: TransactionId.TransactionId; branch: TransactionId.BranchName }> = []
  // Transactions are terminated side by side, a bounded number at a time (they are independent):
  // one at a time, a member that never answers cost each transaction a state read and a commit's
  // retries, about 6 × callTimeout, before the next one's committable branches were touched (a
  // review measured 23 s for 20 transactions at a 200 ms callTimeout: 48 minutes for 100 at 5 s).
  // Results are reported in scan order.
  const terminations = yield* Effect.forEach(
    [...byTx.values()],
    ({ txId, namespace, members, mode, young }) =>
      Effect.gen(function* () {
        if (young) return undefined
        const names = new Set(members)
        const p = plan(
          txId,
          participants.filter((q) => names.has(q.name)),
          // The mode recorded with the vote wins over this process's own `mode` option.
          withNamespace(
            {
              ...options,
              ...(members === undefined ? {} : { members }),
              ...(mode === undefined ? {} : { mode })
            },
            namespace
          )
        )
        if (Either.isLeft(p)) return { _tag: "Invalid" as const, txId, reason: p.left.message }
        return yield* terminatePlan(p.right, { ...options, from: options.from ?? "recovery" })
      }),
    { concurrency: options.concurrency ?? defaults.recoverConcurrency }
  )
  for (const t of terminations) {
    if (t === undefined) continue
    if (t._tag === "Invalid") {
      blocked.push({ txId: t.txId, reason: t.reason })
      continue
    }
    if (t._tag === "Blocked") {
      blocked.push({ txId: t.txId, reason: t.reason })
      continue
    }
    ;(t._tag === "Committed" ? committed : aborted).push(t.txId)
    for (const branch of t.pending) pending.push({ txId: t.txId, branch })
    const decision = t._tag === "Committed" ? "commit" : "abort"
    for (const h of t.heuristics) heuristics.push({ txId: t.txId, decision, ...h })
  }
  return {
    committed,
    aborted,
    blocked,
    heuristics,
    pending,
    unvotedRolledBack,
    unvotedLeft: leave ? unvoted.length : 0,
    unscanned: scans.filter((s) => !s.ok).map((s) => s.name),
    youngLeft: youngLeft.size,
    foreign: foreign.report()
  } satisfies RecoveryReport
})

/**
 * A participant-side daemon: every `interval` it scans `self`'s in-doubt branches and runs an
 * `agent` for each one not already watched (over the namespace of the gid it found; with
 * `namespace`, only that namespace's gids; never one `self` does not own, `owns`). Fork it next to
 * the participant; it never ends.
 * @since 0.1.0
 */
export const watch = (
  self: AnyThreePhaseParticipant,
  peers: ReadonlyArray<AnyThreePhaseParticipant>,
  options: AgentOptions & { readonly interval?: Duration.DurationInput } = {}
): Effect.Effect<never> =>
  Effect.gen(function* () {
    const watching = yield* Ref.make<ReadonlySet<string>>(new Set())
    const interval = Duration.decode(options.interval ?? options.timeout ?? defaults.agentTimeout)
    const callTimeout = Duration.decode(options.callTimeout ?? defaults.callTimeout)
    const scan = Effect.gen(function* () {
      // Bounded: a scan that never answers would hold the daemon for ever; it scans again instead.
      const found = yield* contained(() => self.inDoubt, { txId: "", branch: self.name }, "recover").pipe(
        Effect.timeout(callTimeout),
        Effect.catchAll(() => Effect.succeed([] as ReadonlyArray<InDoubtMember>))
      )
      for (const b of found) {
        if ((yield* Ref.get(watching)).has(b.gid)) continue
        const members = b.members
        if (members === undefined) continue // never voted yes: `recover` rolls it back once old
        const namespace = gidNamespace(b.gid)
        if (Option.isNone(namespace)) continue
        if (options.namespace !== undefined && namespace.value !== options.namespace) continue
        // Another deployment's branch in this database (or another participant's): its agents'.
        if (self.owns !== undefined && !self.owns(b.gid)) continue
        yield* Ref.update(watching, (s) => new Set([...s, b.gid]))
        const names = new Set(members)
        yield* runAgent(
          b.txId,
          self,
          peers.filter((q) => names.has(q.name)),
          withNamespace(
            { ...options, members, ...(b.mode === undefined ? {} : { mode: b.mode }) },
            namespace.value
          ),
          // The scan read the vote already.
          { members, mode: b.mode }
        ).pipe(
          Effect.ignore,
          Effect.ensuring(
            Ref.update(watching, (s) => {
              const next = new Set(s)
              next.delete(b.gid)
              return next
            })
          ),
          Effect.fork
        )
      }
    })
    return yield* scan.pipe(Effect.repeat(Schedule.spaced(interval)), Effect.andThen(Effect.never))
  })
