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
 * Without a `log` option the decisions live in memory, and the coordinator says so (a warning at
 * construction, `durable === false`): a commit decision lost with the process lets recovery presume
 * abort for a transaction that already committed some branches. Pass a durable log (for example
 * `@accord/postgres`'s `PgTransactionLog.layer`) in production, or `log: "memory"` to choose memory
 * knowingly (tests, demos).
 *
 * `registerParticipant` runs the participant's `verify`, bounded by `verifyTimeout` (default 10 s);
 * a transaction waits only for the verifies of the participants it names.
 *
 * `dispose()` refuses new calls, waits for the calls in flight, then releases the runtime and the
 * log's resources; a call after it rejects with `CoordinatorDisposedError`.
 *
 * @since 0.1.0
 */
import { Cause, Duration, Effect, Either, Exit, Fiber, Layer, ManagedRuntime, Schema } from "effect"
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
import { longTimer } from "./internal/concurrently.js"
import * as Recovery from "./Recovery.js"
import { BranchCallError, ConfigurationError, InvalidTransactionError, LogError } from "./TransactionError.js"
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
    options: { readonly signal: AbortSignal }
  ) => Promise<boolean | "prepared" | "read-only" | { readonly vote: "no"; readonly reason: string }>
  readonly commit: (txId: string) => Promise<void>
  readonly rollback: (txId: string) => Promise<void>
  /** Optional: the branch's state for recovery. */
  readonly state?: (txId: string) => Promise<BranchState>
}

/**
 * Adapts a Promise participant to the core interface. Throws `InvalidTransactionError` for a bad
 * name or a `prepare`, `commit` or `rollback` (or a given `state`) that is not a function: a
 * misspelt `commit` would otherwise surface only after a commit decision, leaving branches prepared.
 * `onAbandoned` receives the clean-up of each prepare the coordinator gave up on (the rollback of
 * a late yes), for the coordinator's `dispose` to wait for.
 * @since 0.1.0
 */
export const fromPromiseParticipant = (
  p: PromiseParticipant,
  options: { readonly onAbandoned?: (cleanUp: Promise<void>) => void } = {}
): Participant<ReadonlyArray<OperationCall>> => {
  const parsed = TransactionId.parseBranchName(p?.name)
  if (Either.isLeft(parsed)) throw parsed.left
  const name = parsed.right
  for (const method of ["prepare", "commit", "rollback", "state"] as const) {
    const f: unknown = p[method]
    if (typeof f !== "function" && (method !== "state" || f !== undefined)) {
      throw new InvalidTransactionError({
        reason: `participant ${name}: ${method} must be a function${method === "state" ? " when given" : ""}, got ${typeof f}`
      })
    }
  }
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
      // A callback that returns a plain value (a synchronous function) or throws is taken as the
      // Promise it stands for; `f().then` would fail a commit that ran, or turn a value into a failure.
      try: () => new Promise<A>((resolve) => resolve(f())),
      catch: (e) => callError(ctx, phase, e)
    })
  const toVote = (answer: Awaited<ReturnType<PromiseParticipant["prepare"]>>): Vote =>
    answer === true || answer === "prepared"
      ? Vote.Prepared()
      : answer === "read-only"
        ? Vote.ReadOnly()
        : Vote.No({
            // A JavaScript caller may leave the reason out: "undefined" is no reason.
            reason:
              typeof answer === "object" &&
              answer !== null &&
              typeof answer.reason === "string" &&
              answer.reason !== ""
                ? answer.reason
                : "participant voted no"
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
        const cleanUp = answer
          .then((a) => (toVote(a)._tag === "Prepared" ? p.rollback(ctx.txId) : undefined))
          .then(
            () => undefined,
            () => undefined
          )
        options.onAbandoned?.(cleanUp)
      })
    })
  const adapted: Participant<ReadonlyArray<OperationCall>> = {
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
                ? Effect.succeed(OnePhase.ReadOnly())
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
  promiseParticipants.add(adapted)
  return adapted
}

/**
 * Participants adapted from Promise participants. Such a participant cannot list its in-doubt
 * branches, so recovery only reaches it through the log's decisions: a lone branch of one takes
 * both phases (its decision logged) instead of one phase, whose commit, if it fails or goes
 * unanswered, no one could retry.
 */
const promiseParticipants = new WeakSet<object>()

const isCoreParticipant = (p: unknown): p is AnyParticipant =>
  typeof p === "object" && p !== null && "verify" in p && Effect.isEffect((p as { verify: unknown }).verify)

/**
 * Options of the Promise coordinators.
 * @since 0.1.0
 */
export interface CoordinatorOptions {
  /**
   * Bound on the whole transaction, in milliseconds (or a Duration), from the first prepare to the
   * last acknowledgement; positive. Before the commit decision it aborts the transaction (a prepare
   * that answers later is rolled back); after it, the result is `commit-pending`. Default 30 s.
   */
  readonly timeout?: number | Duration.DurationInput
  /** Bound on each branch's prepare; positive. Default: `timeout`. */
  readonly prepareTimeout?: number | Duration.DurationInput
  /**
   * Bound on each participant's `verify` at registration; positive. Default 10 s. A verify still
   * unanswered then (a server that accepts the connection and never replies) fails the
   * registration with a `ConfigurationError` naming the participant, which is not registered.
   */
  readonly verifyTimeout?: number | Duration.DurationInput
  /**
   * The coordinator log, where commit decisions are forced before any branch commits. Pass a
   * durable one in production (`PgTransactionLog.layer(...)`). `"memory"` chooses an in-memory log
   * knowingly: decisions are lost with the process. Omitted: in memory too, with a warning.
   */
  readonly log?: Layer.Layer<TransactionLog, unknown> | "memory"
  /**
   * Bound on the set-up of `log` (its connection and migrations), from the call that starts it;
   * positive. Default: `timeout`, or one minute if that is longer. While the set-up runs, each call
   * waits for it up to `timeout`, then rejects with `LogError` (nothing sent); a set-up that
   * finishes in time is then used. One that fails, or has not finished by this bound (a server
   * that never answers, a migration waiting on a lock held for good), is abandoned (interrupted,
   * what it acquired released), and the next call sets the log up afresh.
   */
  readonly logSetupTimeout?: number | Duration.DurationInput
  /** Gid namespace for this deployment: 1-16 characters of `[a-z0-9]` (checked at construction). */
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
  /**
   * Branches that ended against the decision: someone rolled them back by hand after a commit
   * decision, or committed them by hand in an aborted transaction (also recorded in the log for
   * operators). Present only when there are some.
   */
  readonly heuristics?: ReadonlyArray<{ readonly participant: string; readonly detail: string }>
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

/**
 * A positive bound (a number is milliseconds); a bad one is refused before anything runs.
 * @internal
 */
export const toBound = (option: string, value: number | Duration.DurationInput): Duration.Duration => {
  const refuse = () =>
    new InvalidTransactionError({
      reason: `${option} must be a positive duration (milliseconds or a Duration), got ${String(value)}`
    })
  // Duration.millis turns NaN and negative numbers into zero; they are refused here instead.
  if (typeof value === "number" && !(value > 0)) throw refuse()
  let duration: Duration.Duration
  try {
    duration = typeof value === "number" ? Duration.millis(value) : Duration.decode(value)
  } catch {
    throw refuse()
  }
  if (!Duration.greaterThan(duration, Duration.zero)) throw refuse()
  return duration
}

/**
 * A call made after `dispose()`: nothing was sent.
 * @since 0.1.0
 */
export class CoordinatorDisposedError extends Schema.TaggedError<CoordinatorDisposedError>()(
  "CoordinatorDisposedError",
  { call: Schema.String }
) {
  override get message(): string {
    return `${this.call} was called after the coordinator was disposed; nothing was sent`
  }
}

/**
 * The calls in flight of a Promise coordinator, and the work they leave behind, for its `dispose`
 * to wait for. Once closed, a new call rejects with `CoordinatorDisposedError` without running.
 * @internal
 */
export class InFlight {
  private readonly calls = new Set<Promise<void>>()
  private closing: Promise<void> | undefined

  get closed(): boolean {
    return this.closing !== undefined
  }

  /** Runs `call` unless closed, tracked until it settles. */
  run<A>(name: string, call: () => Promise<A>): Promise<A> {
    if (this.closing !== undefined) return Promise.reject(new CoordinatorDisposedError({ call: name }))
    const running = call()
    this.follow(running)
    return running
  }

  /**
   * Tracks work a call started that may outlive it (the rollback of a prepare that answered after
   * the coordinator gave up), until it settles; `close` waits for it too, even when it starts later.
   */
  follow(work: Promise<unknown>): void {
    const settled = work.then(
      () => undefined,
      () => undefined
    )
    this.calls.add(settled)
    void settled.then(() => this.calls.delete(settled))
  }

  /** Refuses new calls and resolves once the calls in flight have settled; the same promise each time. */
  close(): Promise<void> {
    this.closing ??= this.drain()
    return this.closing
  }

  private async drain(): Promise<void> {
    // The bounds of the work followed here do not keep the process alive (without `dispose`, a
    // process with nothing else to do may exit); while `dispose` waits for it, this does, so the
    // code after `await dispose()` runs.
    const keepAlive = this.calls.size > 0 ? setInterval(() => undefined, 1 << 30) : undefined
    try {
      // A call in flight may leave work behind as it ends: wait until nothing is left.
      while (this.calls.size > 0) await Promise.all([...this.calls])
    } finally {
      clearInterval(keepAlive)
    }
  }
}

/**
 * Resolves once `work` has settled (resolved or rejected: its failure is its own caller's to
 * report), or once `bound` has passed. The timer does not outlive it, and any bound works (a raw
 * `setTimeout` fires after 1 ms past 2^31 ms). `keepAlive`: the timer keeps the process alive
 * meanwhile, for a wait that is awaited (`dispose`'s: the code after `await dispose()` runs);
 * without it, a wait only `dispose` follows (`InFlight.follow`) lets a process with nothing else to
 * do exit.
 */
const settleWithin = (
  work: Promise<unknown>,
  bound: Duration.Duration,
  options: { readonly keepAlive: boolean }
): Promise<void> => {
  let cancel: () => void = () => undefined
  const late = new Promise<void>((resolve) => {
    cancel = longTimer(Duration.toMillis(bound), resolve, { unref: !options.keepAlive })
  })
  return Promise.race([
    work.then(
      () => undefined,
      () => undefined
    ),
    late
  ]).finally(() => cancel())
}

/**
 * Default bound on a participant's `verify` at registration.
 * @internal
 */
export const defaultVerifyTimeout: Duration.Duration = Duration.seconds(10)

/**
 * The least default bound on the log's set-up (`logSetupTimeout`): migrations may wait on locks
 * longer than a transaction's `timeout`.
 * @internal
 */
export const defaultLogSetupTimeout: Duration.Duration = Duration.minutes(1)

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

/** One build of the layer: its runtime, and whether (and how) the build ended. */
interface Build<R> {
  readonly runtime: ManagedRuntime.ManagedRuntime<R, unknown>
  /** Settles when the build finished, failed, or was abandoned at `setupTimeout`. */
  readonly ready: Promise<Exit.Exit<unknown, unknown>>
  /** True once the build finished and is in use: calls then go straight to the runtime. */
  built: boolean
  /** The release of its runtime, once started. */
  released: Promise<void> | undefined
}

/**
 * A `ManagedRuntime` over a layer whose build may fail (a log whose database is unreachable at
 * start-up) or hang (a server that accepts the connection and never answers, migrations waiting
 * on a lock held for good). `ManagedRuntime` keeps its one build: every later call rejected with
 * the first error, or waited for ever, although the database came back. Here a build that fails,
 * or that has not finished within `setupTimeout`, is abandoned (its runtime disposed: the build
 * interrupted and what it acquired released) and the next call starts a fresh one; a slow build
 * that finishes within `setupTimeout` is used, however many calls gave up on it meanwhile.
 * @internal
 */
export class RebuildingRuntime<R> {
  /** The build calls use: running or finished. Undefined until the first call, and after one is abandoned. */
  private current: Build<R> | undefined
  /** Abandoned builds whose runtimes are still being released, for `dispose` to wait for. */
  private readonly releasing = new Set<Promise<void>>()

  /**
   * `callTimeout` bounds each call's wait for a build in progress: the call then rejects with
   * `LogError`, nothing sent, and the build goes on. `setupTimeout` bounds the build itself: past
   * it the build is abandoned, and the next call starts a fresh one. Each build arms one timer
   * (its `setupTimeout`), and each call that waits for one arms one; a call on a finished build
   * arms none (a timer per call cost 71-101 µs on the benchmark box).
   */
  constructor(
    private readonly layer: Layer.Layer<R, unknown>,
    private readonly callTimeout: Duration.Duration,
    private readonly setupTimeout: Duration.Duration = callTimeout
  ) {}

  run<A, E>(effect: Effect.Effect<A, E, R>): Promise<A> {
    this.current ??= this.start()
    const build = this.current
    if (build.built) return runToPromise(build.runtime, effect)
    return this.afterBuild(build, effect)
  }

  /** Starts a build, bounded by `setupTimeout`. */
  private start(): Build<R> {
    const runtime = ManagedRuntime.make(this.layer)
    let cancel: () => void = () => undefined
    // Not keeping the process alive by itself: a call waiting for the build does (its own bound).
    const abandoned = new Promise<Exit.Exit<never, LogError>>((resolve) => {
      cancel = longTimer(
        Duration.toMillis(this.setupTimeout),
        () =>
          resolve(
            Exit.fail(
              new LogError({
                operation: "open",
                reason: `the coordinator log's set-up did not finish within ${Duration.format(this.setupTimeout)} (logSetupTimeout), so it was abandoned; nothing was sent, and the next call sets it up again`
              })
            )
          ),
        { unref: true }
      )
    })
    const build: Build<R> = {
      runtime,
      built: false,
      released: undefined,
      ready: Promise.race([Effect.runPromiseExit(runtime.runtimeEffect), abandoned]).then((exit) => {
        cancel()
        if (Exit.isSuccess(exit) && this.current === build) build.built = true
        else this.abandon(build)
        return exit
      })
    }
    return build
  }

  /** Waits up to `callTimeout` for `build`, then runs `effect` on it. */
  private async afterBuild<A, E>(build: Build<R>, effect: Effect.Effect<A, E, R>): Promise<A> {
    let cancel: () => void = () => undefined
    const late = new Promise<Exit.Exit<never, LogError>>((resolve) => {
      cancel = longTimer(Duration.toMillis(this.callTimeout), () =>
        resolve(
          Exit.fail(
            new LogError({
              operation: "open",
              reason: `the coordinator log was not ready within ${Duration.format(this.callTimeout)} (is its server answering?); nothing was sent, and the next call waits for it again`
            })
          )
        )
      )
    })
    const exit = await Promise.race([build.ready, late]).finally(() => cancel())
    if (Exit.isFailure(exit)) throw Cause.squash(exit.cause)
    return runToPromise(build.runtime, effect)
  }

  /** Gives `build` up: the next call starts a fresh one; its runtime is released meanwhile. */
  private abandon(build: Build<R>): void {
    if (this.current === build) this.current = undefined
    const released = this.release(build)
    this.releasing.add(released)
    void released.then(() => this.releasing.delete(released))
  }

  /** Disposes `build`'s runtime once: the build interrupted if running, its finalizers run. */
  private release(build: Build<R>): Promise<void> {
    build.released ??= build.runtime.dispose().catch(() => undefined)
    return build.released
  }

  /**
   * Releases the runtime, its finalizers (the log's last flush) awaited. A build that never
   * finished, and abandoned ones still being released, are waited for up to `callTimeout` (one
   * that hangs uninterruptibly is left to itself).
   */
  dispose(): Promise<void> {
    const build = this.current
    this.current = undefined
    const waits: Array<Promise<void>> = [...this.releasing].map((r) =>
      settleWithin(r, this.callTimeout, { keepAlive: true })
    )
    if (build !== undefined) {
      waits.push(
        build.built
          ? build.runtime.dispose()
          : settleWithin(this.release(build), this.callTimeout, { keepAlive: true })
      )
    }
    return Promise.all(waits).then(() => undefined)
  }
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
      if (participant === undefined) {
        return Effect.fail(
          new InvalidTransactionError({
            reason: `unknown participant ${JSON.stringify(name)}: register it with registerParticipant first`
          })
        )
      }
      if (typeof ref !== "string" && adapt(ref) !== participant) {
        return Effect.fail(
          new InvalidTransactionError({
            reason: `another participant named ${JSON.stringify(name)} is registered: pass the registered object or its name`
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

/** A commit outcome's heuristics in plain words, as a spread: nothing when there are none. */
const heuristicReports = (heuristics: ReadonlyArray<TwoPhaseCommit.Heuristic>) =>
  heuristics.length === 0
    ? {}
    : { heuristics: heuristics.map(({ branch, detail }) => ({ participant: branch, detail })) }

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
      ...heuristicReports(o.heuristics),
      outcome
    }),
    CommitPending: (o): TransactionResult => ({
      committed: true,
      status: "commit-pending",
      txId: o.txId,
      votes: voteReports(o.votes),
      pending: o.pending,
      ...heuristicReports(o.heuristics),
      outcome
    }),
    Aborted: (o): TransactionResult => ({
      committed: false,
      status: "aborted",
      txId: o.txId,
      votes: voteReports(o.votes),
      reason: o.reason,
      ...heuristicReports(o.heuristics ?? []),
      outcome
    })
  })

/** What the registry needs of a participant: its name and its configuration check. */
interface Verifiable {
  readonly name: string
  readonly verify: Effect.Effect<void, unknown>
}

/**
 * Registration shared by the Promise coordinators: unique valid names, `verify` run once and
 * bounded by `verifyTimeout`. A participant counts as registered once its verify succeeds; while it
 * runs its name is taken, and only transactions that name it wait for it.
 * @internal
 */
export class Registry<P extends Verifiable> {
  /** The registered (verified) participants by name. */
  readonly participants = new Map<string, P>()
  /** Participants whose verify is running, by name. */
  private readonly verifying = new Map<string, Promise<void>>()
  /** The participant each accepted object stands for, when it was adapted. */
  private readonly adapted = new WeakMap<object, P>()

  /**
   * `admit` turns what was passed into a participant or refuses it (before the name is checked).
   */
  constructor(
    private readonly options: {
      readonly verifyTimeout: Duration.Duration
      readonly admit: (candidate: unknown) => Effect.Effect<P, InvalidTransactionError>
    }
  ) {}

  /** The participant `p` stands for: itself, or its adapter once registered. */
  adapt = (p: unknown): P | undefined => {
    if (typeof p !== "object" || p === null) return undefined
    return this.adapted.get(p) ?? (p as P)
  }

  register(candidate: unknown, run: (e: Effect.Effect<void, unknown>) => Promise<void>): Promise<void> {
    const { verifyTimeout, admit } = this.options
    // Checked and the name taken synchronously, before `run` waits for anything (the log's
    // set-up): a transaction started right after an unawaited registration waits for its verify
    // instead of finding the name unknown, and a second registration of it is refused.
    const admitted = Effect.runSyncExit(
      Effect.gen(this, function* () {
        if (typeof candidate !== "object" || candidate === null) {
          return yield* new InvalidTransactionError({ reason: "a participant must be an object with a name" })
        }
        const participant = yield* admit(candidate)
        const name = yield* TransactionId.parseBranchName(participant.name)
        if (this.participants.has(name) || this.verifying.has(name)) {
          return yield* new InvalidTransactionError({
            reason: `a participant named ${name} is already registered`
          })
        }
        return { participant, name }
      })
    )
    if (Exit.isFailure(admitted)) return Promise.reject(Cause.squash(admitted.cause))
    const { participant, name } = admitted.value
    let release: () => void = () => undefined
    const pending = new Promise<void>((resolve) => {
      release = resolve
    })
    this.verifying.set(name, pending)
    // Configuration problems (e.g. max_prepared_transactions = 0) surface here, before any work.
    // Unbounded, a server that accepts the connection and never replies held this registration,
    // `dispose` and every transaction naming the participant for ever.
    const verify = participant.verify.pipe(
      Effect.timeoutFail({
        duration: verifyTimeout,
        onTimeout: () =>
          new ConfigurationError({
            participant: name,
            reason: `verify did not answer within ${Duration.format(verifyTimeout)}, so it was not registered`,
            fix: "check that its server is reachable and answers (one that accepts connections but never replies looks like this), or raise the coordinator's verifyTimeout"
          })
      }),
      Effect.tap(() =>
        Effect.sync(() => {
          // Only once accepted: a refused registration of an object must not replace the adapter
          // a registered one is known by.
          if (participant !== candidate) this.adapted.set(candidate as object, participant)
          this.participants.set(name, participant)
        })
      )
    )
    // The name is freed however the call ends: a failed verify, or a run that never started it
    // (the log could not be set up).
    return run(verify).finally(() => {
      if (this.verifying.get(name) === pending) this.verifying.delete(name)
      release()
    })
  }

  /**
   * Resolves once the verifies of the participants named by `operations` (objects or names) have
   * ended, so that a transaction sees them registered or refused; others are not waited for.
   */
  ready(operations: unknown): Promise<void> {
    if (!Array.isArray(operations) || this.verifying.size === 0) return Promise.resolve()
    const waits: Array<Promise<void>> = []
    for (const triple of operations) {
      const ref: unknown = Array.isArray(triple) ? triple[0] : undefined
      const name =
        typeof ref === "string"
          ? ref
          : typeof ref === "object" && ref !== null
            ? (ref as { name?: unknown }).name
            : undefined
      const pending = typeof name === "string" ? this.verifying.get(name) : undefined
      if (pending !== undefined) waits.push(pending)
    }
    return Promise.all(waits).then(() => undefined)
  }

  /** Resolves once every verify running now has ended (each is bounded by `verifyTimeout`). */
  settled(): Promise<void> {
    return Promise.all([...this.verifying.values()]).then(() => undefined)
  }
}

/**
 * The Promise facade over `TwoPhaseCommit.run`, with the seed's names.
 * @since 0.1.0
 */
export class TwoPhaseCoordinator {
  /** False when commit decisions live in memory only (no `log`, or `log: "memory"`). */
  readonly durable: boolean
  private readonly runtime: RebuildingRuntime<TransactionLog>
  private readonly registry: Registry<AnyParticipant>
  private readonly options: TwoPhaseCommit.Options
  private readonly inFlight = new InFlight()
  private disposed: Promise<void> | undefined

  /** Throws `InvalidTransactionError` for a timeout that is not a positive duration. */
  constructor(options: CoordinatorOptions = {}) {
    const timeout = toBound("timeout", options.timeout ?? TwoPhaseCommit.defaults.transactionTimeout)
    const verifyTimeout =
      options.verifyTimeout === undefined
        ? defaultVerifyTimeout
        : toBound("verifyTimeout", options.verifyTimeout)
    // A prepare that answers yes after the coordinator gave up is rolled back then; `dispose` waits
    // for that rollback, up to `timeout` (a prepare that never answers must not hold it for ever).
    const onAbandoned = (cleanUp: Promise<void>) =>
      this.inFlight.follow(settleWithin(cleanUp, timeout, { keepAlive: false }))
    this.registry = new Registry<AnyParticipant>({
      verifyTimeout,
      admit: (p) =>
        isCoreParticipant(p)
          ? Effect.succeed(p)
          : Effect.try({
              try: () => fromPromiseParticipant(p as PromiseParticipant, { onAbandoned }),
              catch: (e) =>
                e instanceof InvalidTransactionError ? e : new InvalidTransactionError({ reason: String(e) })
            })
    })
    this.options = {
      transactionTimeout: timeout,
      // An abort's rollbacks go on after its result (each bounded by `callTimeout`): `dispose`
      // waits for them, so ending the participants' pools after it does not cut them off.
      onBackground: (fiber) => this.inFlight.follow(Effect.runPromise(Fiber.await(fiber))),
      prepareTimeout:
        options.prepareTimeout === undefined ? timeout : toBound("prepareTimeout", options.prepareTimeout),
      ...(options.namespace === undefined ? {} : { namespace: options.namespace })
    }
    if (options.namespace !== undefined && !TransactionId.namespacePattern.test(options.namespace)) {
      throw new InvalidTransactionError({
        reason: `invalid namespace ${JSON.stringify(options.namespace)}: use 1-16 characters of [a-z0-9]`
      })
    }
    const log = options.log ?? "memory"
    if (log !== "memory" && !Layer.isLayer(log)) {
      throw new InvalidTransactionError({
        reason: `log must be a Layer providing TransactionLog (e.g. PgTransactionLog.layer(...)) or "memory", got ${
          typeof log === "string" ? JSON.stringify(log) : typeof log
        }`
      })
    }
    this.durable = log !== "memory"
    if (options.log === undefined) {
      // Not silent: a user who believes the log durable would lose commit decisions on a crash.
      Effect.runSync(
        Effect.logWarning(
          "TwoPhaseCoordinator: no `log` option, so commit decisions are kept in memory and lost with " +
            "this process (recovery after a crash can then roll back branches of a committed " +
            'transaction). Pass a durable log (e.g. PgTransactionLog.layer(...)), or log: "memory" ' +
            "to choose memory knowingly."
        )
      )
    }
    const logSetupTimeout =
      options.logSetupTimeout === undefined
        ? Duration.max(timeout, defaultLogSetupTimeout)
        : toBound("logSetupTimeout", options.logSetupTimeout)
    this.runtime = new RebuildingRuntime(log === "memory" ? layerMemory : log, timeout, logSetupTimeout)
  }

  /** Runs `call` unless disposed, tracked so that `dispose` waits for it. */
  private track<A>(name: string, call: () => Promise<A>): Promise<A> {
    return this.inFlight.run(name, call)
  }

  /**
   * Registers a participant (core or Promise-style). Rejects with `InvalidTransactionError` for a
   * bad or duplicate name (or a Promise participant missing a method), with a
   * `ConfigurationError` when it cannot take part, its `verify` unanswered after `verifyTimeout`
   * included, and with `LogError` when the log cannot be set up (its database unreachable) or is
   * not set up within `timeout` (see `logSetupTimeout`).
   */
  registerParticipant(participant: AnyParticipant | PromiseParticipant): Promise<void> {
    return this.track("registerParticipant", () =>
      this.registry.register(participant, (e) => this.runtime.run(e))
    )
  }

  /**
   * Runs one global transaction. Resolves with its outcome (`committed`, `commit-pending` or
   * `aborted`); rejects only for invalid input (`InvalidTransactionError`, nothing sent), an
   * in-doubt one-phase commit (`BranchCallError` with `inDoubt: true`), a log that cannot be
   * written at the commit point (`LogError`), or a call after `dispose` (`CoordinatorDisposedError`).
   */
  executeTransaction(operations: ReadonlyArray<OperationTriple>): Promise<TransactionResult> {
    return this.track("executeTransaction", async () => {
      await this.registry.ready(operations)
      // `TwoPhaseCommit.run` bounds everything by `timeout` (`transactionTimeout`), the commit
      // decision's log write included.
      const program = groupOperations(operations, this.registry.participants, this.registry.adapt).pipe(
        Effect.flatMap((branches) =>
          TwoPhaseCommit.run(
            branches,
            branches.length === 1 && promiseParticipants.has(branches[0]!.participant)
              ? { ...this.options, onePhase: false }
              : this.options
          )
        ),
        Effect.map(toResult)
      )
      return this.runtime.run(program)
    })
  }

  /** Runs one recovery pass over the registered participants. */
  recover(options?: Recovery.Options): Promise<Recovery.RecoveryReport> {
    return this.track("recover", () =>
      this.runtime.run(Recovery.run([...this.registry.participants.values()], options))
    )
  }

  /**
   * Refuses new calls, waits for the calls in flight to settle (and for the rollback of a prepare
   * that answered yes after the coordinator gave up, up to `timeout`), then releases the
   * coordinator's runtime and its log's resources (writer fibers, scopes). Calling it again
   * returns the same promise.
   */
  dispose(): Promise<void> {
    this.disposed ??= this.inFlight.close().then(() => this.runtime.dispose())
    return this.disposed
  }
}
