/**
 * The Promise facade of `Saga`, with the seed's names:
 *
 * ```ts
 * const saga = new SagaOrchestrator({ name: "order" })
 *   .addStep({ name: "reserve", action: (ctx) => inventory.reserve(ctx.key), compensation: (ctx) => inventory.release(ctx.key) })
 *   .addStep({ name: "charge", action: (ctx) => payment.charge(ctx.key), compensation: (ctx) => payment.refund(ctx.key) })
 * const result = await saga.execute({ orderId: 42 })   // { status: "completed" | "compensated" | "stuck", ... }
 * ```
 *
 * Steps run at least once; use `ctx.key` (`<sagaId>/<step>`) to make them idempotent. A rejected
 * action is a definite (business) failure unless the error says otherwise: throw
 * `SagaOrchestrator.transient(reason)` / `SagaOrchestrator.inDoubt(reason)`, or an error with
 * `retryable: true` / `inDoubt: true`. A rejected compensation is the other way round: it is retried
 * (`compensationRetries`, then the saga is stuck) unless it throws `SagaOrchestrator.business(reason)`
 * (or an error with `_tag: "StepBusinessError"`), which makes the saga stuck at once. Timed-out
 * attempts are aborted through `ctx.signal`. An action or compensation may be a plain function: a
 * value it returns is its result, a synchronous throw its rejection.
 *
 * What an action resolves to is logged, and is what later steps and compensations read after a
 * resume: it must be plain JSON, or the step gives an `output` schema (`Schema.Date`,
 * `Schema.BigInt`, ...) to encode it with. Anything else (a Date, a bigint, a class instance, an
 * `undefined` field) is refused before the completion is logged: the step fails (`outputRefused`,
 * not retried) and, having acted, is compensated with `output: undefined`. An action that resolves
 * to `undefined` as a whole (a void step) completes: `outputs` has its name, with `undefined`.
 *
 * A time or count that is not one (NaN, negative, a fractional count, a zero timeout or lease), or
 * an action or compensation that is not a function, is refused when given: the constructor,
 * `addStep` and `addParallel` throw `InvalidSagaError`.
 *
 * A saga's outcome (completed, compensated, stuck) resolves the promise. A promise rejects with the
 * typed error itself (its `_tag` says which), never a wrapper: `InvalidSagaError` (definition or id
 * refused; nothing ran), `LogError` (the log failed, or did not answer within `leaseFor`; the
 * read-back of an ended saga's outputs too), `SagaBusyError` (another drive holds the saga:
 * `execute` with an id already started, `resume` / `retryStuck` while a drive, even this
 * orchestrator's own `execute`, holds a live lease), `LeaseLostError` (this drive's lease expired
 * and another took the saga over: it stopped at once, and the saga goes on there).
 *
 * @since 0.1.0
 */
import { Cause, Duration, Effect, Either, Exit, Option, Schedule, type Schema } from "effect"
import * as Saga from "./Saga.js"
import { SagaLog, makeMemory } from "./SagaLog.js"
import { LogError } from "./TransactionError.js"
import { secureChars } from "./internal/entropy.js"

/**
 * What a Promise action receives.
 * @since 0.1.0
 */
export interface ActionContext extends Saga.StepContext {
  /** Aborted when the attempt times out or the saga is interrupted. */
  readonly signal: AbortSignal
}

/**
 * What a Promise compensation receives. `output` is `undefined` when the action's completion was
 * never recorded: it may not have run at all, or it ran but its output was refused (not plain
 * JSON, no `output` schema); `completed` tells the two cases with a recorded output apart.
 * @since 0.1.0
 */
export interface CompensationContext<A = unknown> extends Saga.StepContext {
  readonly signal: AbortSignal
  readonly output: A | undefined
  readonly completed: boolean
}

/**
 * A step of the facade. Times are milliseconds. `I` is the encoded side of the `output` schema.
 * @since 0.1.0
 */
export interface StepSpec<A = unknown, I = A> {
  /** Default `step-<n>`. */
  readonly name?: string
  /** Resolves to (or returns) the step's output: plain JSON, or what the `output` schema encodes. */
  readonly action: (ctx: ActionContext) => A | PromiseLike<A>
  /** Retried when it rejects, unless with `business(reason)`; what it resolves to is ignored. */
  readonly compensation?: (ctx: CompensationContext<A>) => unknown
  /**
   * How the output is logged (see `Saga.step`'s `output`): encoded before the completion is logged,
   * decoded for later steps and compensations, after a resume too. Absent: it must be plain JSON.
   */
  readonly output?: Schema.Schema<A, I, never>
  /** Per attempt; default the orchestrator's `stepTimeout` (30 000). */
  readonly timeout?: number
  /** Retries after the first attempt; default the orchestrator's `retries` (3). */
  readonly retries?: number
  readonly compensationTimeout?: number
  /** Default the orchestrator's `compensationRetries` (10); past them the saga is stuck. */
  readonly compensationRetries?: number
  readonly pivot?: boolean
}

/**
 * Options of the orchestrator.
 * @since 0.1.0
 */
export interface OrchestratorOptions {
  /** The saga type name (for resumption). Default `"saga"`. */
  readonly name?: string
  /** The saga log (e.g. from `PgSagaLog.make`). Default: a fresh in-memory log (not durable). */
  readonly log?: SagaLog["Type"]
  /** This orchestrator's identity in leases. */
  readonly owner?: string
  /** Lease duration in ms (default 30 000). */
  readonly leaseFor?: number
  /** Default per-attempt timeout of actions and compensations, ms (default 30 000). */
  readonly stepTimeout?: number
  /** Default retries of actions (default 3). */
  readonly retries?: number
  /** Default retries of compensations (default 10). */
  readonly compensationRetries?: number
  /** First retry delay in ms, doubling (default 100). */
  readonly retryDelay?: number
  /**
   * Longest wait between two attempts, ms (default 5 000, as `Saga.defaults.compensationRetry`).
   * Doubling without a bound, a budget of 30 compensation retries waited years before the saga
   * was reported stuck.
   */
  readonly maxRetryDelay?: number
}

/**
 * The result of `execute`.
 * @since 0.1.0
 */
export interface SagaResult {
  readonly status: "completed" | "compensated" | "stuck"
  readonly sagaId: string
  /** Outputs of the completed steps (all of them when `completed`). */
  readonly outputs: Readonly<Record<string, unknown>>
  /** The step that failed (compensated) or is stuck. */
  readonly failedStep?: string
  readonly error?: string
  /** Steps compensated, in order. */
  readonly compensated: ReadonlyArray<string>
  readonly outcome: Saga.Outcome
}

/**
 * Makes a throwable transient failure (retried).
 * @since 0.1.0
 */
export const transient = (reason: string): Saga.StepTransientError => new Saga.StepTransientError({ reason })
/**
 * Makes a throwable in-doubt failure (retried; compensated if the step fails for good).
 * @since 0.1.0
 */
export const inDoubt = (reason: string): Saga.StepInDoubtError => new Saga.StepInDoubtError({ reason })
/**
 * Makes a throwable definite business failure (not retried).
 * @since 0.1.0
 */
export const business = (reason: string): Saga.StepBusinessError => new Saga.StepBusinessError({ reason })

/**
 * Classifies a rejection of a Promise action: unmarked, it is a definite business failure. A
 * `sqlState` (a `Barrier.runPromise` rejection's, say) of class 40, 53, 57 or 08, or 55P03 (lock
 * timeout) or 55006 (object in use), makes it transient, as `Barrier.toStepError` reads it.
 * @since 0.1.0
 */
export const classify = (error: unknown): Saga.StepError => {
  if (
    error instanceof Saga.StepBusinessError ||
    error instanceof Saga.StepTransientError ||
    error instanceof Saga.StepInDoubtError
  ) {
    return error
  }
  const record = typeof error === "object" && error !== null ? (error as Record<string, unknown>) : {}
  const reason = error instanceof Error ? error.message : String(error)
  const sqlState = typeof record.sqlState === "string" ? record.sqlState : undefined
  // In doubt first: an error that says the call may have acted must be compensated if the step
  // fails for good, even when it also says it may be retried (both are retried). A lost database
  // connection (`connectionLost`, as `@accord/postgres`'s `BarrierWorkError` says) may have
  // committed, and so may a barrier duplicate whose stored result no longer decodes.
  if (
    record._tag === "StepInDoubtError" ||
    record.inDoubt === true ||
    record.connectionLost === true ||
    record._tag === "BarrierResultDecodeError"
  )
    return new Saga.StepInDoubtError({ reason })
  // A serialization failure, deadlock, resource shortage or statement timeout (SQLSTATE classes
  // 40, 53, 57, 08), a lock timeout or object in use (55P03, 55006), or a barrier work that threw
  // outside SQL: worth another attempt, as `Barrier.toStepError` reads them. (Before, the facade
  // failed such a step for good at once.)
  if (
    record._tag === "StepTransientError" ||
    record.retryable === true ||
    (sqlState !== undefined && Saga.isTransientSqlState(sqlState)) ||
    (record._tag === "BarrierWorkError" && sqlState === undefined)
  )
    return new Saga.StepTransientError({ reason })
  return new Saga.StepBusinessError({ reason })
}

/**
 * Classifies a rejection of a Promise compensation. Unlike an action's, an unmarked one is transient:
 * a compensation must be driven to its end, and a refund API that is down for a moment is the
 * common case, so it is retried per `compensationRetries` before the saga is stuck. (It was read as
 * a business failure, as an action's is, which the engine never retries: the first failure made
 * the saga stuck and `compensationRetries` did nothing.) Only an error that says it is definite,
 * `business(reason)` or `_tag: "StepBusinessError"`, or one that every attempt would meet again
 * (a `BarrierResultRefusedError`, or `Saga.isDefiniteCompensationSqlState`: a barrier's refused
 * `notify`, a work that ended the barrier's transaction itself), stops the retries: the saga is
 * stuck at once.
 * @since 0.1.0
 */
export const classifyCompensation = (error: unknown): Saga.StepError => {
  const classified = classify(error)
  const record = typeof error === "object" && error !== null ? (error as Record<string, unknown>) : {}
  const definite =
    error instanceof Saga.StepBusinessError ||
    record._tag === "StepBusinessError" ||
    record._tag === "BarrierResultRefusedError" ||
    (typeof record.sqlState === "string" && Saga.isDefiniteCompensationSqlState(record.sqlState))
  return classified._tag === "StepBusinessError" && !definite
    ? new Saga.StepTransientError({ reason: classified.reason })
    : classified
}

/**
 * Calls a Promise action or compensation. `new Promise(resolve => resolve(f(...)))` accepts a plain
 * function too: a value it returns is its result, a synchronous throw its rejection (a non-Promise
 * value used to fail with "... .then is not a function": an action as a business failure, a
 * compensation stuck).
 */
const callPromise = <A>(
  f: (signal: AbortSignal) => A | PromiseLike<A>,
  classifyError: (error: unknown) => Saga.StepError
): Effect.Effect<A, Saga.StepError> =>
  Effect.tryPromise({
    try: (signal) => new Promise<A>((resolve) => resolve(f(signal))),
    catch: classifyError
  })

/** Runs `effect`; a failure rejects with the typed error (or the defect) itself, not a `FiberFailure`. */
const runToPromise = async <A, E>(effect: Effect.Effect<A, E>): Promise<A> => {
  const exit = await Effect.runPromiseExit(effect)
  if (Exit.isSuccess(exit)) return exit.value
  throw Cause.squash(exit.cause)
}

/**
 * The result of an ended saga, its outputs read back from the log. The read is bounded by the
 * lease, as the drive's own log calls are: unbounded, a log that stopped answering as the saga
 * ended left the promise unsettled for ever. It then rejects with `LogError` (the saga has ended:
 * `resume` reads its result once the log answers).
 */
const toResult = (
  outcome: Saga.Outcome,
  log: SagaLog["Type"],
  saga: Saga.Saga<never>,
  bound: Duration.Duration
) =>
  log.load(outcome.sagaId).pipe(
    Effect.timeoutFail({
      duration: bound,
      onTimeout: () =>
        new LogError({
          operation: "load",
          txId: outcome.sagaId,
          reason: `the saga log did not answer within ${Duration.format(bound)} (the lease) when the result was read back; the saga has ended (${outcome._tag})`
        })
    }),
    Effect.flatMap((h) => {
      const state = Option.map(h, (x) => Saga.replay(x.records))
      // The log keeps outputs encoded: read them back as the steps saw them.
      return Effect.map(
        Option.match(state, {
          onNone: () => Effect.succeed(new Map<string, unknown>()),
          onSome: (s) => Saga.decodeOutputs(saga, outcome.sagaId, s.completed)
        }),
        (decoded) => ({ state, outputs: Object.fromEntries(decoded) })
      )
    }),
    Effect.map(({ state, outputs }) =>
      Saga.Outcome.$match(outcome, {
        Completed: (o): SagaResult => ({
          status: "completed",
          sagaId: o.sagaId,
          // From the log, decoded: `resolveStuck`'s outcome carries them encoded.
          outputs: Option.isSome(state) ? outputs : o.outputs,
          compensated: [],
          outcome
        }),
        Compensated: (o): SagaResult => ({
          status: "compensated",
          sagaId: o.sagaId,
          outputs,
          failedStep: o.cause.step,
          error: o.cause.reason,
          compensated: o.undone,
          outcome
        }),
        Stuck: (o): SagaResult => ({
          status: "stuck",
          sagaId: o.sagaId,
          outputs,
          failedStep: o.step,
          error: o.cause,
          compensated: Option.match(state, { onNone: () => [], onSome: (s) => s.undone }),
          outcome
        })
      })
    )
  )

/**
 * Refuses a number of the facade's options that `Duration.millis` or `Schedule.recurs` would
 * silently bend: `Duration.millis` turns NaN and negative numbers into zero (every attempt would
 * be called and then time out at once, retried, then compensated as in doubt), and a lease of zero
 * is lost before the first step. Throws `InvalidSagaError`, as `Coordinator` does for its timeouts.
 */
const checkNumbers = (
  where: string,
  values: Readonly<Record<string, number | undefined>>,
  kinds: Readonly<Record<string, "duration" | "finiteDuration" | "delay" | "count">>
): void => {
  for (const [option, value] of Object.entries(values)) {
    if (value === undefined) continue
    const kind = kinds[option]
    const ok =
      typeof value === "number" &&
      (kind === "duration"
        ? value > 0
        : kind === "finiteDuration"
          ? value > 0 && Number.isFinite(value)
          : kind === "delay"
            ? value >= 0 && Number.isFinite(value)
            : Number.isSafeInteger(value) && value >= 0)
    if (!ok) {
      const expected =
        kind === "count"
          ? "a whole number, 0 or more"
          : kind === "delay"
            ? "a finite number of milliseconds, 0 or more"
            : kind === "finiteDuration"
              ? "a finite number of milliseconds above 0"
              : "a number of milliseconds above 0"
      throw new Saga.InvalidSagaError({
        reason: `${where}: ${option} must be ${expected}, got ${String(value)}`
      })
    }
  }
}

const stepNumberKinds = {
  timeout: "duration",
  retries: "count",
  compensationTimeout: "duration",
  compensationRetries: "count"
} as const

/**
 * The Promise facade. The constructor, `addStep` and `addParallel` throw `InvalidSagaError` for a
 * time or count that is not one (NaN, negative, a fractional count, a zero timeout or lease) and
 * for an action or compensation that is not a function.
 * @since 0.1.0
 */
export class SagaOrchestrator {
  readonly name: string
  readonly log: SagaLog["Type"]
  /** This orchestrator's identity; each drive holds its lease under `<owner>/<kind>-<token>`. */
  readonly owner: string
  private readonly options: OrchestratorOptions
  // biome-ignore lint/suspicious/noExplicitAny: existential step output, as in Saga
  private readonly units: Array<Saga.Step<any, never> | Saga.Group<never>> = []
  private count = 0

  constructor(options: OrchestratorOptions = {}) {
    checkNumbers(
      "SagaOrchestrator",
      {
        leaseFor: options.leaseFor,
        stepTimeout: options.stepTimeout,
        retries: options.retries,
        compensationRetries: options.compensationRetries,
        retryDelay: options.retryDelay,
        maxRetryDelay: options.maxRetryDelay
      },
      {
        leaseFor: "finiteDuration",
        stepTimeout: "duration",
        retries: "count",
        compensationRetries: "count",
        retryDelay: "delay",
        maxRetryDelay: "delay"
      }
    )
    this.options = options
    this.name = options.name ?? "saga"
    this.log = options.log ?? Effect.runSync(makeMemory)
    this.owner = options.owner ?? `orchestrator-${secureChars(16).toLowerCase()}`
  }

  /** `position`: the step's place after the steps added so far, for its default name. */
  private checkStep(spec: StepSpec<unknown, unknown>, position = 1): void {
    const where = `step ${spec?.name ?? `step-${this.count + position}`}`
    // Unchecked, a step that is not one ran: each execute failed it as a business failure
    // ("... is not a function") and compensated the steps before it.
    if (typeof spec !== "object" || spec === null) {
      throw new Saga.InvalidSagaError({ reason: `${where}: a step must be an object with an action` })
    }
    if (typeof spec.action !== "function") {
      throw new Saga.InvalidSagaError({
        reason: `${where}: action must be a function, got ${typeof spec.action}`
      })
    }
    if (spec.compensation !== undefined && typeof spec.compensation !== "function") {
      throw new Saga.InvalidSagaError({
        reason: `${where}: compensation must be a function when given, got ${typeof spec.compensation}`
      })
    }
    checkNumbers(
      where,
      {
        timeout: spec.timeout,
        retries: spec.retries,
        compensationTimeout: spec.compensationTimeout,
        compensationRetries: spec.compensationRetries
      },
      stepNumberKinds
    )
  }

  private toStep<A, I>(spec: StepSpec<A, I>): Saga.Step<A, never> {
    this.count++
    const delay = Duration.millis(this.options.retryDelay ?? 100)
    const maxDelay = Duration.millis(this.options.maxRetryDelay ?? 5_000)
    // Doubling up to `maxDelay` (`union` waits the shorter of the two), then jittered, like `Saga.defaults`.
    const schedule = (times: number) =>
      Schedule.exponential(delay, 2).pipe(
        Schedule.union(Schedule.spaced(maxDelay)),
        Schedule.jittered,
        Schedule.intersect(Schedule.recurs(times))
      )
    const compensation = spec.compensation
    return Saga.step<A, never, I>({
      name: spec.name ?? `step-${this.count}`,
      action: (ctx) => callPromise((signal) => spec.action({ ...ctx, signal }), classify),
      ...(spec.output === undefined ? {} : { output: spec.output }),
      ...(compensation === undefined
        ? {}
        : {
            compensation: (ctx: Saga.CompensationContext<A>) =>
              callPromise(
                (signal) =>
                  compensation({
                    ...ctx,
                    signal,
                    output: Option.getOrUndefined(ctx.output),
                    completed: Option.isSome(ctx.output)
                  }),
                classifyCompensation
              ).pipe(Effect.asVoid)
          }),
      retry: schedule(spec.retries ?? this.options.retries ?? 3),
      timeout: Duration.millis(spec.timeout ?? this.options.stepTimeout ?? 30_000),
      compensationRetry: schedule(spec.compensationRetries ?? this.options.compensationRetries ?? 10),
      compensationTimeout: Duration.millis(spec.compensationTimeout ?? this.options.stepTimeout ?? 30_000),
      pivot: spec.pivot ?? false
    })
  }

  /**
   * Adds `unit` when the saga with it is well formed (names, duplicates, an empty group, a pivot
   * in a group): refused here, not at the first `execute`. A refused unit leaves the orchestrator
   * as it was.
   */
  // biome-ignore lint/suspicious/noExplicitAny: existential step output, as in Saga
  private add(unit: Saga.Step<any, never> | Saga.Group<never>, countBefore: number): this {
    const checked = Saga.validate(Saga.make({ name: this.name, steps: [...this.units, unit] }))
    if (Either.isLeft(checked)) {
      this.count = countBefore
      throw checked.left
    }
    this.units.push(unit)
    return this
  }

  /** Adds a step after the existing ones. */
  addStep<A = unknown, I = A>(spec: StepSpec<A, I>): this {
    this.checkStep(spec as StepSpec<unknown, unknown>)
    const countBefore = this.count
    return this.add(this.toStep(spec), countBefore)
  }

  /** Adds a group of steps that run concurrently. */
  // biome-ignore lint/suspicious/noExplicitAny: each member has an output type of its own
  addParallel(specs: ReadonlyArray<StepSpec<any, any>>, name?: string): this {
    // All checked before any is added: a bad member leaves the orchestrator as it was.
    if (!Array.isArray(specs)) {
      throw new Saga.InvalidSagaError({ reason: "addParallel takes an array of steps" })
    }
    for (const [i, spec] of specs.entries()) this.checkStep(spec, i + 1)
    const countBefore = this.count
    return this.add(
      Saga.parallel(
        name ?? `group-${this.units.length + 1}`,
        specs.map((s) => this.toStep(s))
      ),
      countBefore
    )
  }

  /** The Effect definition behind the facade. */
  get saga(): Saga.Saga<never> {
    return Saga.make({ name: this.name, steps: this.units })
  }

  private lease() {
    return { owner: this.owner, leaseFor: Duration.millis(this.options.leaseFor ?? 30_000) }
  }

  private runOutcome(effect: Effect.Effect<Saga.Outcome, Saga.SagaError, SagaLog>): Promise<SagaResult> {
    return runToPromise(
      effect.pipe(
        Effect.flatMap((o) => toResult(o, this.log, this.saga, this.lease().leaseFor)),
        Effect.provideService(SagaLog, this.log)
      )
    )
  }

  /**
   * Runs the saga to its end. Rejects (with the typed error) only when it could not be driven to
   * an end: invalid definition or id, log failure, id already started, lease lost.
   */
  execute(input?: unknown, options?: { readonly sagaId?: string }): Promise<SagaResult> {
    const { owner, leaseFor } = this.lease()
    return this.runOutcome(
      Saga.run(this.saga, input ?? null, {
        owner,
        leaseFor,
        // An empty id is refused by `Saga.run`, not replaced by a fresh one: a caller deriving the
        // id from its order would otherwise run the saga again on every retry of `execute`.
        ...(options?.sagaId === undefined ? {} : { sagaId: options.sagaId })
      })
    )
  }

  /** Resumes a saga of this type from the log; rejects with `SagaBusyError` while a drive holds its lease. */
  resume(sagaId: string): Promise<SagaResult> {
    return this.runOutcome(Saga.resume(Saga.registry([this.saga]), sagaId, this.lease()))
  }

  /** Claims abandoned sagas of the log and runs them to their end. */
  sweep(options?: { readonly limit?: number }): Promise<ReadonlyArray<SagaResult>> {
    const effect = Saga.sweep(Saga.registry([this.saga]), {
      ...this.lease(),
      ...(options?.limit === undefined ? {} : { limit: options.limit })
    })
    return runToPromise(
      effect.pipe(
        Effect.flatMap((os) =>
          Effect.forEach(os, (o) => toResult(o, this.log, this.saga, this.lease().leaseFor))
        ),
        Effect.provideService(SagaLog, this.log)
      )
    )
  }

  /** Operator: runs a stuck saga's compensation (or post-pivot step) again. */
  retryStuck(sagaId: string): Promise<SagaResult> {
    return this.runOutcome(Saga.retryStuck(Saga.registry([this.saga]), sagaId, this.lease()))
  }

  /** Operator: declares a stuck saga fixed by hand. */
  resolveStuck(
    sagaId: string,
    note: string,
    options?: { readonly alsoCompensated?: ReadonlyArray<string> }
  ): Promise<SagaResult> {
    return this.runOutcome(Saga.resolveStuck(sagaId, note, { ...this.lease(), ...options }))
  }
}
