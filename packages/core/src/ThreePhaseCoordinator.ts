/**
 * The Promise facade of three-phase commit, with the same shape as the 2PC facade:
 *
 * ```ts
 * const coordinator = new ThreePhaseCoordinator({ timeout: 5_000, mode: "classic" })
 * await coordinator.registerParticipant(bankA)   // ThreePhaseParticipants, e.g. PgThreePhaseParticipant
 * await coordinator.registerParticipant(bankB)
 * const result = await coordinator.executeTransaction([
 *   [bankA, "debit", { account: 1, amount: 10 }],
 *   [bankB, "credit", { account: 7, amount: 10 }]
 * ])
 * result.committed // true | false; result.protocol === "3pc"
 * ```
 *
 * 3PC keeps no coordinator log (see `ThreePhaseCommit`): after a crash, `recover()` (or the
 * members' agents, `startAgents()`) finishes every in-doubt transaction from the members' states.
 *
 * Timeouts (classic mode): the members' agents must outwait the coordinator's phases,
 * `agentTimeout ≥ 1.25 × (canCommitTimeout + precommitTimeout)`. The coordinator does not stretch
 * anything to make that hold: `executeTransaction` and `startAgents` reject an unsafe combination
 * with `UnsafeTimeoutError` before anything is sent. `agentTimeout` (default 20 s) is both what
 * `startAgents` runs its agents with and what the members' own agents (`ThreePhaseCommit.watch`)
 * must be given.
 *
 * `timeout` bounds each phase and each single call (a rollback, a state query, a commit attempt),
 * not the whole transaction: it only lowers the per-phase defaults (10 s, 5 s, 10 s; 5 s per call),
 * because raising the phases would break the agents' bound. Every timeout must be a positive
 * duration; a bad one throws `InvalidTransactionError` at construction.
 *
 * The facade keeps no commit decisions in memory: the members' durable records (`precommitted`,
 * ...) are the 3PC state, so there is no `log` option. It keeps only the registered participants
 * and the agents `startAgents` runs.
 *
 * `dispose()` refuses new calls, waits for the calls in flight, stops the agents `startAgents`
 * started, then releases the runtime; a call after it rejects with `CoordinatorDisposedError`.
 *
 * @since 0.1.0
 */
import { Duration, Effect, Either, Fiber, ManagedRuntime, Layer } from "effect"
import {
  InFlight,
  type OperationTriple as TwoPhaseOperationTriple,
  Registry,
  type TransactionResult,
  defaultVerifyTimeout,
  groupOperations,
  runToPromise,
  toBound,
  voteReports
} from "./Coordinator.js"
import type { AnyParticipant, OperationCall } from "./Participant.js"
import * as ThreePhaseCommit from "./ThreePhaseCommit.js"
import { InvalidTransactionError } from "./TransactionError.js"

/**
 * Options of the 3PC Promise coordinator.
 * @since 0.1.0
 */
export interface CoordinatorOptions {
  /**
   * Bound on each phase and each single call, in milliseconds (or a Duration); positive. It caps
   * the defaults (phases 10 s, 5 s, 10 s; calls 5 s) and only lowers them, so it never breaks the
   * agents' bound. It is not a bound on the whole transaction, which runs several phases.
   */
  readonly timeout?: number | Duration.DurationInput
  /**
   * `"classic"` (default), `"quorum"` or explicit `{ commit, abort }` quorum sizes (integers, at
   * least 1; checked against the members of each transaction). Anything else throws
   * `InvalidQuorumError` at construction, saying what was given.
   */
  readonly mode?: ThreePhaseCommit.Mode
  /** Bound on each member's prepare and vote (default 10 s, or `timeout` when lower). */
  readonly canCommitTimeout?: number | Duration.DurationInput
  /** Bound on the PreCommit phase (default 5 s, or `timeout` when lower). */
  readonly precommitTimeout?: number | Duration.DurationInput
  /** Bound on the DoCommit phase (default 10 s, or `timeout` when lower). */
  readonly commitTimeout?: number | Duration.DurationInput
  /**
   * Bound on each single call outside the phases: a rollback after a No vote, the termination
   * protocol's state queries, each commit attempt (default 5 s, or `timeout` when lower).
   */
  readonly callTimeout?: number | Duration.DurationInput
  /**
   * The members' agents' timeout: `startAgents` runs its agents with it, and the members' own
   * agents (`ThreePhaseCommit.watch` in their processes) must be given it. Classic mode needs it
   * at least 1.25 × (`canCommitTimeout + precommitTimeout`); otherwise `executeTransaction` and
   * `startAgents` reject with `UnsafeTimeoutError` before anything is sent. Default 20 s.
   */
  readonly agentTimeout?: number | Duration.DurationInput
  /**
   * Bound on each participant's `verify` at registration; positive. Default 10 s. A verify still
   * unanswered then fails the registration with a `ConfigurationError` naming the participant.
   */
  readonly verifyTimeout?: number | Duration.DurationInput
  /** Gid namespace for this deployment. */
  readonly namespace?: string
}

/**
 * What `executeTransaction` resolves to: the 2PC facade's result plus `protocol: "3pc"`, and the
 * status `"blocked"` (quorum mode: no quorum reachable; the agents finish it).
 * @since 0.1.0
 */
export interface ThreePhaseResult extends Omit<TransactionResult, "status" | "outcome"> {
  readonly protocol: "3pc"
  readonly mode: "classic" | "quorum"
  readonly status: TransactionResult["status"] | "blocked"
  readonly outcome: ThreePhaseCommit.Outcome
}

/**
 * An operation triple: the 3PC participant (or its registered name), the operation, its parameters.
 * @since 0.1.0
 */
export type OperationTriple = readonly [
  participant: ThreePhaseCommit.AnyThreePhaseParticipant | string,
  operation: OperationCall["operation"],
  params?: unknown
]

const isThreePhase = (p: unknown): p is ThreePhaseCommit.AnyThreePhaseParticipant =>
  typeof p === "object" &&
  p !== null &&
  "verify" in p &&
  Effect.isEffect((p as { verify: unknown }).verify) &&
  typeof (p as { precommit?: unknown }).precommit === "function" &&
  typeof (p as { preabort?: unknown }).preabort === "function"

/** An outcome's heuristics in plain words, as the 2PC facade gives them: nothing when there are none. */
const heuristicReports = (heuristics: ReadonlyArray<{ readonly branch: string; readonly detail: string }>) =>
  heuristics.length === 0
    ? {}
    : { heuristics: heuristics.map(({ branch, detail }) => ({ participant: branch, detail })) }

/**
 * Turns a 3PC outcome into the Promise API's result.
 * @since 0.1.0
 */
export const toResult = (outcome: ThreePhaseCommit.Outcome): ThreePhaseResult => {
  const base = {
    protocol: "3pc" as const,
    mode: outcome.mode,
    txId: outcome.txId,
    votes: voteReports(outcome.votes),
    outcome
  }
  return ThreePhaseCommit.Outcome.$match(outcome, {
    Committed: (o): ThreePhaseResult => ({
      ...base,
      committed: true,
      status: "committed",
      ...heuristicReports(o.heuristics)
    }),
    CommitPending: (o): ThreePhaseResult => ({
      ...base,
      committed: true,
      status: "commit-pending",
      pending: o.pending,
      ...heuristicReports(o.heuristics)
    }),
    Aborted: (o): ThreePhaseResult => ({
      ...base,
      committed: false,
      status: "aborted",
      reason: o.reason,
      ...heuristicReports(o.heuristics ?? [])
    }),
    Blocked: (o): ThreePhaseResult => ({ ...base, committed: false, status: "blocked", reason: o.reason })
  })
}

/**
 * The Promise facade over `ThreePhaseCommit.run`.
 * @since 0.1.0
 */
export class ThreePhaseCoordinator {
  private readonly runtime = ManagedRuntime.make(Layer.empty)
  private readonly registry: Registry<ThreePhaseCommit.AnyThreePhaseParticipant>
  private readonly options: ThreePhaseCommit.Options & { readonly callTimeout: Duration.Duration }
  private readonly inFlight = new InFlight()
  private readonly agents = new Set<Fiber.RuntimeFiber<unknown, unknown>>()
  private disposed: Promise<void> | undefined

  /**
   * Throws `InvalidTransactionError` for a timeout that is not a positive duration and
   * `InvalidQuorumError` for a mode that is not one.
   */
  constructor(options: CoordinatorOptions = {}) {
    if (options.mode !== undefined) {
      const mode = ThreePhaseCommit.checkMode(options.mode)
      if (Either.isLeft(mode)) throw mode.left
    }
    this.registry = new Registry({
      verifyTimeout:
        options.verifyTimeout === undefined
          ? defaultVerifyTimeout
          : toBound("verifyTimeout", options.verifyTimeout),
      admit: (p) =>
        isThreePhase(p)
          ? Effect.succeed(p)
          : new InvalidTransactionError({
              reason:
                "a 3PC participant needs verify, prepare, precommit, preabort, commit, rollback and state"
            })
    })
    const cap = options.timeout === undefined ? undefined : toBound("timeout", options.timeout)
    const bound = (
      option: "canCommitTimeout" | "precommitTimeout" | "commitTimeout" | "callTimeout",
      fallback: Duration.Duration
    ) => {
      const explicit = options[option]
      return explicit !== undefined
        ? toBound(option, explicit)
        : cap === undefined
          ? fallback
          : Duration.min(cap, fallback)
    }
    this.options = {
      canCommitTimeout: bound("canCommitTimeout", ThreePhaseCommit.defaults.canCommitTimeout),
      precommitTimeout: bound("precommitTimeout", ThreePhaseCommit.defaults.precommitTimeout),
      commitTimeout: bound("commitTimeout", ThreePhaseCommit.defaults.commitTimeout),
      callTimeout: bound("callTimeout", ThreePhaseCommit.defaults.callTimeout),
      agentTimeout:
        options.agentTimeout === undefined
          ? ThreePhaseCommit.defaults.agentTimeout
          : toBound("agentTimeout", options.agentTimeout),
      ...(options.mode === undefined ? {} : { mode: options.mode }),
      ...(options.namespace === undefined ? {} : { namespace: options.namespace })
    }
  }

  /**
   * Registers a 3PC participant. Rejects with `InvalidTransactionError` for something that is not
   * one, or a bad or duplicate name, and with a `ConfigurationError` when it cannot take part, its
   * `verify` unanswered after `verifyTimeout` included.
   */
  registerParticipant(participant: ThreePhaseCommit.AnyThreePhaseParticipant): Promise<void> {
    return this.inFlight.run("registerParticipant", () =>
      this.registry.register(participant, (e) => runToPromise(this.runtime, e))
    )
  }

  /**
   * Runs one global transaction with 3PC. Rejects only for invalid input (nothing was sent:
   * `InvalidTransactionError`, `InvalidQuorumError`, `UnsafeTimeoutError`) or a call after
   * `dispose` (`CoordinatorDisposedError`).
   */
  executeTransaction(operations: ReadonlyArray<OperationTriple>): Promise<ThreePhaseResult> {
    return this.inFlight.run("executeTransaction", () => this.execute(operations))
  }

  private async execute(operations: ReadonlyArray<OperationTriple>): Promise<ThreePhaseResult> {
    await this.registry.ready(operations)
    // The facade's grouping only reads `name` and `fromOperations`, which 3PC participants share
    // with 2PC ones.
    const registered = this.registry.participants as unknown as ReadonlyMap<string, AnyParticipant>
    const program = groupOperations(
      operations as unknown as ReadonlyArray<TwoPhaseOperationTriple>,
      registered,
      (p) => (isThreePhase(p) ? (p as unknown as AnyParticipant) : undefined)
    ).pipe(
      Effect.flatMap((branches) =>
        ThreePhaseCommit.run(branches as unknown as ReadonlyArray<ThreePhaseCommit.AnyBranch>, this.options)
      ),
      Effect.map(toResult)
    )
    return runToPromise(this.runtime, program)
  }

  /** One recovery pass: the termination protocol for every in-doubt branch of the registered participants. */
  recover(options?: ThreePhaseCommit.RecoverOptions): Promise<ThreePhaseCommit.RecoveryReport> {
    return this.inFlight.run("recover", () =>
      runToPromise(
        this.runtime,
        ThreePhaseCommit.recover([...this.registry.participants.values()], {
          ...(this.options.mode === undefined ? {} : { mode: this.options.mode }),
          ...(this.options.namespace === undefined ? {} : { namespace: this.options.namespace }),
          callTimeout: this.options.callTimeout,
          ...options
        })
      )
    )
  }

  /**
   * Runs every registered participant's agent in this process (`ThreePhaseCommit.watch`), as the
   * participants' own processes would, with the coordinator's `agentTimeout` unless `timeout` is
   * given. In classic mode a `timeout` below 1.25 × (`canCommitTimeout + precommitTimeout`) is
   * rejected with `UnsafeTimeoutError` (no agent started). Resolves to a function that stops them;
   * `dispose` stops them too.
   */
  startAgents(
    options: ThreePhaseCommit.AgentOptions & { readonly interval?: Duration.DurationInput } = {}
  ): Promise<() => Promise<void>> {
    return this.inFlight.run("startAgents", () => this.runAgents(options))
  }

  private async runAgents(
    options: ThreePhaseCommit.AgentOptions & { readonly interval?: Duration.DurationInput }
  ): Promise<() => Promise<void>> {
    // Every registered participant gets an agent: those still being verified are waited for.
    await this.registry.settled()
    const all = [...this.registry.participants.values()]
    const agentOptions = {
      ...(this.options.mode === undefined ? {} : { mode: this.options.mode }),
      ...(this.options.namespace === undefined ? {} : { namespace: this.options.namespace }),
      callTimeout: this.options.callTimeout,
      ...options,
      timeout: options.timeout ?? this.options.agentTimeout ?? ThreePhaseCommit.defaults.agentTimeout
    }
    const start = Effect.gen(this, function* () {
      if (agentOptions.mode !== undefined) yield* ThreePhaseCommit.checkMode(agentOptions.mode)
      yield* ThreePhaseCommit.checkAgentTimeout({
        ...this.options,
        agentTimeout: agentOptions.timeout
      })
      return yield* Effect.forEach(all, (p) =>
        Effect.forkDaemon(
          ThreePhaseCommit.watch(
            p,
            all.filter((q) => q !== p),
            agentOptions
          )
        )
      )
    })
    const fibers = await runToPromise(this.runtime, start)
    for (const fiber of fibers) this.agents.add(fiber)
    // Not through the runtime: stopping stays possible after dispose (a no-op by then).
    return () =>
      Effect.runPromise(Fiber.interruptAll(fibers)).then(() => {
        for (const fiber of fibers) this.agents.delete(fiber)
      })
  }

  /**
   * Refuses new calls, waits for the calls in flight to settle, stops the agents `startAgents`
   * started, then releases the coordinator's runtime. Calling it again returns the same promise.
   */
  dispose(): Promise<void> {
    this.disposed ??= this.inFlight
      .close()
      .then(() => Effect.runPromise(Fiber.interruptAll([...this.agents])))
      .then(() => {
        this.agents.clear()
        return this.runtime.dispose()
      })
    return this.disposed
  }
}
