/**
 * The seed's Promise API over the Effect core:
 *
 * ```ts
 * const coordinator = new TwoPhaseCoordinator({ timeout: 5_000 })
 * await coordinator.registerParticipant(bankA)
 * await coordinator.registerParticipant(bankB)
 * const result = await coordinator.executeTransaction([
 *   [bankA, "debit", { account: 1, amount: 10 }],
 *   [bankB, "credit", { account: 7, amount: 10 }]
 * ])
 * result.committed // true | false; result.reason says why not
 * ```
 *
 * Several operations for one participant run in that participant's one branch, in order.
 * Without a `log` option the decisions live in memory: fine for tests, not for money. Pass a
 * durable log (for example `@accord/postgres`'s `PgTransactionLog`) in production.
 *
 * @since 0.1.0
 */
import { Cause, Duration, Effect, Either, Exit, type Layer, ManagedRuntime } from "effect"
import {
  type AnyParticipant,
  type BranchState,
  type CommitAck,
  type OnePhaseResult,
  type OperationCall,
  type Participant,
  type RollbackAck,
  Vote,
  defaults as participantDefaults,
  OnePhaseResult as OnePhase
} from "./Participant.js"
import * as Recovery from "./Recovery.js"
import { BranchCallError, InvalidTransactionError } from "./TransactionError.js"
import * as TransactionId from "./TransactionId.js"
import { type TransactionLog, layerMemory } from "./TransactionLog.js"
import * as TwoPhaseCommit from "./TwoPhaseCommit.js"

/**
 * A participant written with Promises, for users who do not write Effect. `prepare` receives the
 * branch's operations in order and answers `true`/`"prepared"`, `"read-only"`, or `false` /
 * `{ vote: "no", reason }`; a rejection is a No vote. `commit` and `rollback` must be idempotent.
 * @since 0.1.0
 */
export interface PromiseParticipant {
  readonly name: string
  /**
   * `signal` aborts when the coordinator stops waiting (the prepare timed out or the transaction was
   * interrupted): the transaction then aborts, so a prepare that still answers yes afterwards is
   * rolled back (`rollback` is called once it settles) rather than left prepared.
   */
  readonly prepare: (
    txId: string,
    operations: ReadonlyArray<OperationCall>,
    options?: { readonly signal: AbortSignal }
  ) => Promise<boolean | "prepared" | "read-only" | { readonly vote: "no"; readonly reason: string }>
  readonly commit: (txId: string) => Promise<void>
  readonly rollback: (txId: string) => Promise<void>
  /** Optional: the branch's state for recovery. */
  readonly state?: (txId: string) => Promise<BranchState>
}

/**
 * Adapts a Promise participant to the core interface.
 * @since 0.1.0
 */
export const fromPromiseParticipant = (p: PromiseParticipant): Participant<ReadonlyArray<OperationCall>> => {
  const parsed = TransactionId.parseBranchName(p?.name)
  if (Either.isLeft(parsed)) throw parsed.left
  const name = parsed.right
  const callError = (
    ctx: { txId: string },
    phase: "prepare" | "commit" | "rollback" | "state" | "onePhaseCommit",
    e: unknown
  ) =>
    new BranchCallError({
      txId: ctx.txId,
      branch: name,
      phase,
      reason: e instanceof Error ? e.message : String(e),
      inDoubt: phase !== "prepare"
    })
  const attempt = <A>(
    ctx: { txId: string },
    phase: "prepare" | "commit" | "rollback" | "state" | "onePhaseCommit",
    f: () => Promise<A>
  ) =>
    Effect.tryPromise({
      try: f,
      catch: (e) => callError(ctx, phase, e)
    })
  const toVote = (answer: Awaited<ReturnType<PromiseParticipant["prepare"]>>): Vote =>
    answer === true || answer === "prepared"
      ? Vote.Prepared()
      : answer === "read-only"
        ? Vote.ReadOnly()
        : Vote.No({
            reason: typeof answer === "object" && answer !== null ? answer.reason : "participant voted no"
          })
  /**
   * The prepare Promise, not left running unseen when the coordinator stops waiting: the signal
   * aborts, and if the prepare still answers yes, the branch is rolled back then. A prepare the
   * coordinator gave up on is a No vote (or, one phase, nothing sent after it), so the transaction
   * never commits it; without this a rollback sent before a late PREPARE would leave it prepared,
   * and a Promise participant reports no in-doubt branches for recovery to find.
   */
  const prepare = (ctx: { txId: string }, work: ReadonlyArray<OperationCall>) =>
    Effect.async<Vote>((resume) => {
      const controller = new AbortController()
      let abandoned = false
      const answer = Promise.resolve().then(() => p.prepare(ctx.txId, work, { signal: controller.signal }))
      answer.then(
        (a) => abandoned || resume(Effect.succeed(toVote(a))),
        (e: unknown) =>
          abandoned || resume(Effect.succeed(Vote.No({ reason: callError(ctx, "prepare", e).reason })))
      )
      return Effect.sync(() => {
        abandoned = true
        controller.abort()
        answer
          .then((a) => (toVote(a)._tag === "Prepared" ? p.rollback(ctx.txId) : undefined))
          .catch(() => undefined)
      })
    })
  return {
    name,
    verify: participantDefaults.verify,
    prepare,
    commitOnePhase: (ctx, work) =>
      prepare(ctx, work).pipe(
        Effect.flatMap(
          (vote): Effect.Effect<OnePhaseResult, BranchCallError> =>
            vote._tag === "No"
              ? Effect.succeed(OnePhase.No({ reason: vote.reason }))
              : vote._tag === "ReadOnly"
                ? Effect.succeed(OnePhase.Committed())
                : attempt(ctx, "onePhaseCommit", () => p.commit(ctx.txId)).pipe(
                    Effect.as(OnePhase.Committed())
                  )
        )
      ),
    commit: (ctx) => attempt(ctx, "commit", () => p.commit(ctx.txId)).pipe(Effect.as<CommitAck>("Committed")),
    rollback: (ctx) =>
      attempt(ctx, "rollback", () => p.rollback(ctx.txId)).pipe(Effect.as<RollbackAck>("RolledBack")),
    state: (ctx) =>
      p.state === undefined
        ? Effect.fail(
            new BranchCallError({
              txId: ctx.txId,
              branch: name,
              phase: "state",
              reason: "participant cannot report branch state",
              inDoubt: false
            })
          )
        : attempt(ctx, "state", () => p.state!(ctx.txId)),
    inDoubt: participantDefaults.inDoubt,
    forget: participantDefaults.forget,
    fromOperations: (calls) => calls
  }
}

const isCoreParticipant = (p: unknown): p is AnyParticipant =>
  typeof p === "object" && p !== null && "verify" in p && Effect.isEffect((p as { verify: unknown }).verify)

/**
 * Options of the Promise coordinators.
 * @since 0.1.0
 */
export interface CoordinatorOptions {
  /** Bound on the whole transaction, in milliseconds (or a Duration). Default 30 s. */
  readonly timeout?: number | Duration.DurationInput
  /** Bound on each branch's prepare. Default: `timeout`. */
  readonly prepareTimeout?: number | Duration.DurationInput
  /** The coordinator log. Default: in memory (not durable). */
  readonly log?: Layer.Layer<TransactionLog, unknown>
  /** Gid namespace for this deployment. */
  readonly namespace?: string
}

/**
 * A branch's vote as the Promise API reports it.
 * @since 0.1.0
 */
export interface VoteReport {
  readonly participant: string
  readonly vote: "prepared" | "read-only" | "no"
  readonly reason?: string
  readonly sqlState?: string
}

/**
 * What `executeTransaction` resolves to.
 * @since 0.1.0
 */
export interface TransactionResult {
  /** True when the decision is commit (`status` says whether every branch acknowledged yet). */
  readonly committed: boolean
  readonly status: "committed" | "commit-pending" | "aborted"
  readonly txId: string
  readonly votes: ReadonlyArray<VoteReport>
  /** Why the transaction aborted. */
  readonly reason?: string
  /** Branches that have not acknowledged the commit yet (recovery finishes them). */
  readonly pending?: ReadonlyArray<string>
  /** The typed outcome of the Effect core. */
  readonly outcome: TwoPhaseCommit.Outcome
}

/**
 * An operation triple: the participant (or its registered name), the operation, its parameters.
 * @since 0.1.0
 */
export type OperationTriple = readonly [
  participant: AnyParticipant | PromiseParticipant | string,
  operation: OperationCall["operation"],
  params?: unknown
]

const toDuration = (value: number | Duration.DurationInput): Duration.Duration =>
  typeof value === "number" ? Duration.millis(value) : Duration.decode(value)

/**
 * Runs an effect on a runtime and rejects with the typed error itself (not a wrapper).
 * @internal
 */
export const runToPromise = async <A, E, R>(
  runtime: ManagedRuntime.ManagedRuntime<R, unknown>,
  effect: Effect.Effect<A, E, R>
): Promise<A> => {
  const exit = await runtime.runPromiseExit(effect)
  if (Exit.isSuccess(exit)) return exit.value
  throw Cause.squash(exit.cause)
}

/**
 * Groups operation triples into one branch per participant, in order; validates before anything is sent.
 * @internal
 */
export const groupOperations = (
  operations: ReadonlyArray<OperationTriple>,
  registered: ReadonlyMap<string, AnyParticipant>,
  adapt: (p: AnyParticipant | PromiseParticipant) => AnyParticipant | undefined
): Effect.Effect<ReadonlyArray<{ participant: AnyParticipant; work: unknown }>, InvalidTransactionError> =>
  Effect.suspend(() => {
    if (!Array.isArray(operations) || operations.length === 0) {
      return Effect.fail(
        new InvalidTransactionError({ reason: "executeTransaction needs at least one operation" })
      )
    }
    const calls = new Map<string, { participant: AnyParticipant; calls: Array<OperationCall> }>()
    for (const triple of operations) {
      if (!Array.isArray(triple) || triple.length < 2) {
        return Effect.fail(
          new InvalidTransactionError({ reason: "each operation is [participant, operation, params]" })
        )
      }
      const [ref, operation, params] = triple
      const name = typeof ref === "string" ? ref : ref?.name
      const participant = name === undefined ? undefined : registered.get(name)
      if (participant === undefined || (typeof ref !== "string" && adapt(ref) !== participant)) {
        return Effect.fail(
          new InvalidTransactionError({
            reason: `unknown participant ${JSON.stringify(name)}: register it with registerParticipant first`
          })
        )
      }
      if (typeof operation !== "string" && typeof operation !== "function") {
        return Effect.fail(
          new InvalidTransactionError({ reason: `operation for ${name} must be a name or a function` })
        )
      }
      const entry = calls.get(participant.name) ?? { participant, calls: [] }
      entry.calls.push({ operation, params })
      calls.set(participant.name, entry)
    }
    const branches: Array<{ participant: AnyParticipant; work: unknown }> = []
    for (const { participant, calls: list } of calls.values()) {
      if (participant.fromOperations === undefined) {
        return Effect.fail(
          new InvalidTransactionError({
            reason: `participant ${participant.name} does not accept operations`
          })
        )
      }
      const fromOperations = participant.fromOperations
      const work = Either.try({
        try: () => fromOperations(list),
        catch: (e) =>
          e instanceof InvalidTransactionError
            ? e
            : new InvalidTransactionError({
                reason: `${participant.name} refused its operations: ${e instanceof Error ? e.message : String(e)}`
              })
      })
      if (Either.isLeft(work)) return Effect.fail(work.left)
      branches.push({ participant, work: work.right })
    }
    return Effect.succeed(branches)
  })

/**
 * Reports votes in plain words.
 * @internal
 */
export const voteReports = (votes: ReadonlyArray<TwoPhaseCommit.BranchVote>): ReadonlyArray<VoteReport> =>
  votes.map(({ branch, vote }) =>
    Vote.$match(vote, {
      Prepared: (): VoteReport => ({ participant: branch, vote: "prepared" }),
      ReadOnly: (): VoteReport => ({ participant: branch, vote: "read-only" }),
      No: ({ reason, sqlState }): VoteReport => ({
        participant: branch,
        vote: "no",
        reason,
        ...(sqlState === undefined ? {} : { sqlState })
      })
    })
  )

/**
 * Turns a core outcome into the Promise API's result.
 * @internal
 */
export const toResult = (outcome: TwoPhaseCommit.Outcome): TransactionResult =>
  TwoPhaseCommit.Outcome.$match(outcome, {
    Committed: (o): TransactionResult => ({
      committed: true,
      status: "committed",
      txId: o.txId,
      votes: voteReports(o.votes),
      outcome
    }),
    CommitPending: (o): TransactionResult => ({
      committed: true,
      status: "commit-pending",
      txId: o.txId,
      votes: voteReports(o.votes),
      pending: o.pending,
      outcome
    }),
    Aborted: (o): TransactionResult => ({
      committed: false,
      status: "aborted",
      txId: o.txId,
      votes: voteReports(o.votes),
      reason: o.reason,
      outcome
    })
  })

/**
 * Registration shared by the Promise coordinators: unique valid names, `verify` run once.
 * @internal
 */
export class Registry {
  readonly participants = new Map<string, AnyParticipant>()
  private readonly adapted = new WeakMap<object, AnyParticipant>()
  private readonly verifying: Array<Promise<void>> = []

  adapt = (p: AnyParticipant | PromiseParticipant): AnyParticipant | undefined => {
    if (isCoreParticipant(p)) return p
    if (typeof p !== "object" || p === null) return undefined
    return this.adapted.get(p)
  }

  register(
    p: AnyParticipant | PromiseParticipant,
    run: (e: Effect.Effect<void, unknown>) => Promise<void>
  ): Promise<void> {
    const attempt = Effect.gen(this, function* () {
      if (typeof p !== "object" || p === null) {
        return yield* new InvalidTransactionError({ reason: "a participant must be an object with a name" })
      }
      let participant: AnyParticipant
      if (isCoreParticipant(p)) participant = p
      else {
        participant = yield* Effect.try({
          try: () => fromPromiseParticipant(p as PromiseParticipant),
          catch: (e) =>
            e instanceof InvalidTransactionError ? e : new InvalidTransactionError({ reason: String(e) })
        })
        this.adapted.set(p, participant)
      }
      yield* TransactionId.parseBranchName(participant.name)
      if (this.participants.has(participant.name)) {
        return yield* new InvalidTransactionError({
          reason: `a participant named ${participant.name} is already registered`
        })
      }
      this.participants.set(participant.name, participant)
      // Configuration problems (e.g. max_prepared_transactions = 0) surface here, before any work.
      yield* participant.verify.pipe(
        Effect.tapError(() => Effect.sync(() => this.participants.delete(participant.name)))
      )
    })
    const pending = run(attempt)
    this.verifying.push(pending.catch(() => undefined))
    return pending
  }

  settled(): Promise<void> {
    return Promise.all(this.verifying).then(() => undefined)
  }
}

/**
 * The Promise facade over `TwoPhaseCommit.run`, with the seed's names.
 * @since 0.1.0
 */
export class TwoPhaseCoordinator {
  private readonly runtime: ManagedRuntime.ManagedRuntime<TransactionLog, unknown>
  private readonly registry = new Registry()
  private readonly options: TwoPhaseCommit.Options

  constructor(options: CoordinatorOptions = {}) {
    const timeout = toDuration(options.timeout ?? TwoPhaseCommit.defaults.transactionTimeout)
    this.options = {
      transactionTimeout: timeout,
      prepareTimeout:
        options.prepareTimeout === undefined
          ? Duration.min(timeout, TwoPhaseCommit.defaults.prepareTimeout)
          : toDuration(options.prepareTimeout),
      ...(options.namespace === undefined ? {} : { namespace: options.namespace })
    }
    this.runtime = ManagedRuntime.make(options.log ?? layerMemory)
  }

  /**
   * Registers a participant (core or Promise-style). Rejects with `InvalidTransactionError` for a
   * bad or duplicate name and with the participant's `ConfigurationError` when it cannot take part.
   */
  registerParticipant(participant: AnyParticipant | PromiseParticipant): Promise<void> {
    return this.registry.register(participant, (e) => runToPromise(this.runtime, e))
  }

  /** Runs one global transaction. Rejects only for invalid input, an in-doubt one-phase commit, or an unwritable log. */
  async executeTransaction(operations: ReadonlyArray<OperationTriple>): Promise<TransactionResult> {
    await this.registry.settled()
    const program = groupOperations(operations, this.registry.participants, this.registry.adapt).pipe(
      Effect.flatMap((branches) => TwoPhaseCommit.run(branches, this.options)),
      Effect.map(toResult)
    )
    return runToPromise(this.runtime, program)
  }

  /** Runs one recovery pass over the registered participants. */
  recover(options?: Recovery.Options): Promise<Recovery.RecoveryReport> {
    return runToPromise(this.runtime, Recovery.run([...this.registry.participants.values()], options))
  }

  /** Releases the coordinator's runtime (and its log's resources). */
  dispose(): Promise<void> {
    return this.runtime.dispose()
  }
}
