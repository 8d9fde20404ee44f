/**
 * Sagas: a long transaction as a sequence of local steps, each undone by a compensation when a
 * later step fails for good (docs/saga.md).
 *
 * - Steps run forward in order; a `parallel` group runs its members concurrently. Each step has an
 *   action, an optional compensation, a retry `Schedule` and a per-attempt timeout, and its
 *   compensation has its own schedule and timeout.
 * - A step fails in one of three ways, told apart in the types: `StepBusinessError` (definite: the
 *   step did not act, never retried), `StepTransientError` (did not act, retried) and
 *   `StepInDoubtError` / `StepTimeoutError` (may have acted, retried; if the step still fails it is
 *   compensated too, so a compensation must tolerate "the action never ran").
 * - When a step fails for good, the started steps are compensated in reverse order (a group's
 *   members concurrently). A compensation that keeps failing past its schedule ends the saga
 *   `Stuck`: recorded in the log, returned as an outcome, never dropped; an operator clears it
 *   with `retryStuck` or `resolveStuck`.
 * - A `pivot` step is the point of no return: once it completed, the saga only goes forward, and a
 *   later step that fails for good leaves the saga `Stuck` (phase "action") for an operator.
 *
 * **Steps run at least once**, not exactly once: after a crash, a step that started but whose
 * completion is not in the log is run again, and a timed-out attempt may have acted before the
 * retry. Every action and compensation receives a stable idempotency key `<sagaId>/<step>`; make the
 * step idempotent with it (for Postgres, `Barrier` in `@accord/postgres` does this).
 *
 * Every record is written to the `SagaLog` before the effect it announces, so `resume` continues a
 * crashed saga exactly where it stopped and reaches the end state an uninterrupted run would.
 *
 * **Outputs survive the log faithfully, or are refused.** A step's output is logged as JSON and is
 * what later steps and compensations read after a resume. With an `output` schema it is encoded
 * before the completion is logged and decoded on reload (Dates, bigints come back as they were);
 * without one it must be plain JSON (survive `JSON.parse(JSON.stringify(v))` unchanged). An output
 * that cannot be kept is refused before its completion is logged: the step fails for good
 * (`outputRefused`, not retried) *after it acted*, so it is compensated with the rest.
 *
 * **A defect in a step is a failure of that step, in doubt.** An action that dies (`Effect.die`, a
 * synchronous throw) fails for good at once, not retried (the same bug dies again), and may have
 * acted before it died, so it is compensated with the rest; a compensation that dies leaves the
 * saga `Stuck`. The defect is logged (`Effect.logError`) with its cause. Interruption is not a
 * defect and still stops the drive (a lost lease).
 *
 * @since 0.1.0
 */
import { Cause, Clock, Data, Duration, Effect, Either, Metric, Option, Schedule, Schema } from "effect"
import {
  type Lease,
  LeaseLostError,
  type SagaBusyError,
  type SagaHistory,
  SagaLog,
  SagaNotFoundError,
  SagaRecord
} from "./SagaLog.js"
import { LogError } from "./TransactionError.js"
import * as Json from "./Json.js"
import * as TransactionId from "./TransactionId.js"
import { randomChars } from "./internal/entropy.js"

// ---------------------------------------------------------------------------------------------
// Step failures
// ---------------------------------------------------------------------------------------------

/**
 * A definite business failure: the step did not act and retrying cannot help (out of stock,
 * card declined). Never retried; the step is not compensated.
 * @since 0.1.0
 */
export class StepBusinessError extends Schema.TaggedError<StepBusinessError>()("StepBusinessError", {
  reason: Schema.String
}) {
  override get message(): string {
    return this.reason
  }
}

/**
 * Whether a step's SQL failure (its SQLSTATE) is worth another attempt: serialization failure or
 * deadlock (class 40), insufficient resources (53), operator intervention such as a statement
 * timeout (57), connection exceptions (08), and of class 55 only "busy for now", lock_not_available
 * (55P03, a `lock_timeout` or NOWAIT) and object_in_use (55006); 55000 (an object in the wrong
 * state) is not. The one rule of `@accord/postgres`'s `Barrier.toStepError` and the Promise
 * facade's `classify`.
 * @since 0.1.0
 */
export const isTransientSqlState = (sqlState: string): boolean =>
  TRANSIENT_SQL_STATES.has(sqlState) || TRANSIENT_SQL_CLASSES.has(sqlState.slice(0, 2))

const TRANSIENT_SQL_CLASSES = new Set(["40", "53", "57", "08"])
const TRANSIENT_SQL_STATES = new Set(["55P03", "55006"])

/**
 * Whether a compensation's SQL failure is met again on every attempt, so that retrying it cannot
 * help: class 0A (feature not supported, e.g. a `notify` the barrier refused) and 25000 (the work
 * ended the barrier's transaction itself: its first part was committed with the barrier row, and a
 * retry would answer Duplicate without running the rest). Every other compensation failure is
 * retried. The one rule of `Barrier.toCompensationStepError` and the facade's `classifyCompensation`.
 * @since 0.1.0
 */
export const isDefiniteCompensationSqlState = (sqlState: string): boolean =>
  sqlState.startsWith("0A") || sqlState === "25000"

/**
 * A transient failure: the step did not act (refused before doing anything, e.g. HTTP 503); retried.
 * @since 0.1.0
 */
export class StepTransientError extends Schema.TaggedError<StepTransientError>()("StepTransientError", {
  reason: Schema.String
}) {
  override get message(): string {
    return this.reason
  }
}

/**
 * The step may have acted (connection lost after the request was sent); retried, and compensated if
 * the step fails for good.
 * @since 0.1.0
 */
export class StepInDoubtError extends Schema.TaggedError<StepInDoubtError>()("StepInDoubtError", {
  reason: Schema.String
}) {
  override get message(): string {
    return this.reason
  }
}

/**
 * An attempt exceeded the step's (or compensation's) timeout. In doubt: it may have acted.
 * @since 0.1.0
 */
export class StepTimeoutError extends Schema.TaggedError<StepTimeoutError>()("StepTimeoutError", {
  step: Schema.String,
  phase: Schema.Literal("action", "compensation"),
  millis: Schema.Number
}) {
  override get message(): string {
    return `${this.phase} of step ${this.step} timed out after ${this.millis} ms`
  }
}

/**
 * What an action or a compensation may fail with.
 * @since 0.1.0
 */
export type StepError = StepBusinessError | StepTransientError | StepInDoubtError

/**
 * What a retry schedule sees: a step error or a timeout.
 * @since 0.1.0
 */
export type AttemptError = StepError | StepTimeoutError

/**
 * How a step failed for good, as the log and the outcome record it. `inDoubt` is true when any
 * attempt may have acted (then the step is compensated). `outputRefused`: the action succeeded
 * (acted), but its output could not be kept faithfully in the log (see `step`'s `output`); it was
 * refused before the completion was logged, not retried, and the step is compensated (`inDoubt`).
 * @since 0.1.0
 */
export interface StepFailure {
  readonly step: string
  readonly kind: "business" | "transient" | "inDoubt" | "timeout" | "outputRefused"
  readonly reason: string
  readonly inDoubt: boolean
}

// ---------------------------------------------------------------------------------------------
// Saga errors and outcome
// ---------------------------------------------------------------------------------------------

/**
 * The saga definition, id or input was refused; nothing ran.
 * @since 0.1.0
 */
export class InvalidSagaError extends Schema.TaggedError<InvalidSagaError>()("InvalidSagaError", {
  reason: Schema.String
}) {
  override get message(): string {
    return this.reason
  }
}

/**
 * `runOrFail`: the saga did not complete; its completed steps were compensated.
 * @since 0.1.0
 */
export class SagaCompensatedError extends Schema.TaggedError<SagaCompensatedError>()("SagaCompensatedError", {
  sagaId: Schema.String,
  step: Schema.String,
  reason: Schema.String,
  undone: Schema.Array(Schema.String)
}) {
  override get message(): string {
    return `saga ${this.sagaId} compensated: step ${this.step} failed: ${this.reason}`
  }
}

/**
 * The saga is stuck: a compensation (or, after the pivot, an action) kept failing past its
 * schedule. It is recorded in the log with status `stuck`; an operator must act
 * (`retryStuck` / `resolveStuck`).
 * @since 0.1.0
 */
export class SagaStuckError extends Schema.TaggedError<SagaStuckError>()("SagaStuckError", {
  sagaId: Schema.String,
  step: Schema.String,
  phase: Schema.Literal("action", "compensation"),
  cause: Schema.String
}) {
  override get message(): string {
    return `saga ${this.sagaId} stuck at the ${this.phase} of step ${this.step}: ${this.cause}`
  }
}

/**
 * A step's output could not be kept faithfully in the saga log, so it was refused before its
 * completion was logged. Without an `output` schema the value is not plain JSON (`reason` says
 * where: a Date, a bigint, a Map, an `undefined` field, NaN, ...); with one, the schema rejected the
 * value, encoded it to something that is not plain JSON, or does not decode its own encoding.
 *
 * The action had already run: the step fails for good with kind `outputRefused` (never retried:
 * the same code returns the same kind of value on every attempt, and each attempt would act again)
 * and is compensated like a step in doubt, its compensation getting `output: None`. Its `message`
 * is the failure's `reason`.
 * @since 0.1.0
 */
export class StepOutputRefusedError extends Schema.TaggedError<StepOutputRefusedError>()(
  "StepOutputRefusedError",
  {
    sagaId: Schema.String,
    step: Schema.String,
    reason: Schema.String
  }
) {
  override get message(): string {
    return `output of step ${this.step} of saga ${this.sagaId} refused before its completion was logged (the action had run: the step is compensated, or after the pivot the saga is stuck): ${this.reason}; it would not come back the same after a resume. Pass an output schema (the \`output\` option, e.g. Schema.Date, Schema.BigInt) or return plain JSON`
  }
}

/**
 * A completed step's logged output does not decode with the step's `output` schema (the schema
 * changed incompatibly, or a value logged without a schema does not fit it). Nothing ran: the
 * drive (resume, sweep, operator retry) stops and gives its lease back, and the saga stays in the
 * log as it was, for a drive with a definition that reads it.
 * @since 0.1.0
 */
export class StepOutputDecodeError extends Schema.TaggedError<StepOutputDecodeError>()(
  "StepOutputDecodeError",
  {
    sagaId: Schema.String,
    step: Schema.String,
    reason: Schema.String
  }
) {
  override get message(): string {
    return `saga ${this.sagaId}: the logged output of step ${this.step} does not decode with its output schema: ${this.reason}`
  }
}

/**
 * The errors of running a saga (not its outcome).
 * @since 0.1.0
 */
export type SagaError =
  | LogError
  | InvalidSagaError
  | SagaNotFoundError
  | LeaseLostError
  | SagaBusyError
  | StepOutputDecodeError

/**
 * The end of a saga.
 * - `Completed`: every step completed; `outputs` by step name.
 * - `Compensated`: a step failed for good (`cause`); the steps in `undone` were compensated, in the
 *   order their compensations ran.
 * - `Stuck`: `step`'s compensation (or, after the pivot, its action) kept failing; an operator must act.
 *   When several members of a parallel group are stuck (compensations, or actions after the
 *   pivot), `step` is the first in definition order and `cause` names the others with their causes.
 * @since 0.1.0
 */
export type Outcome = Data.TaggedEnum<{
  Completed: { readonly sagaId: string; readonly outputs: Readonly<Record<string, unknown>> }
  Compensated: {
    readonly sagaId: string
    readonly cause: StepFailure
    readonly undone: ReadonlyArray<string>
  }
  Stuck: {
    readonly sagaId: string
    readonly step: string
    readonly phase: "action" | "compensation"
    readonly cause: string
  }
}>
/** @since 0.1.0 */
export const Outcome = Data.taggedEnum<Outcome>()

// ---------------------------------------------------------------------------------------------
// Definitions
// ---------------------------------------------------------------------------------------------

/**
 * What an action receives.
 * @since 0.1.0
 */
export interface StepContext {
  readonly sagaId: string
  /** The saga type name. */
  readonly sagaName: string
  readonly step: string
  /** `<sagaId>/<step>`: the same for every attempt, retry and resumption of this step. */
  readonly key: string
  /** The saga's input, as given to `run` (JSON). */
  readonly input: unknown
  /**
   * Outputs of the steps completed so far, by step name, as the log gives them back: decoded with
   * the step's `output` schema (the same values in an uninterrupted run and after a resume).
   */
  readonly outputs: Readonly<Record<string, unknown>>
  /** 1-based attempt number within this run of the step. */
  readonly attempt: number
}

/**
 * What a compensation receives. `output` is `None` when the action's completion was never
 * recorded (in doubt): the action may or may not have run, and the compensation must cope with both.
 * That includes an action that ran but whose output was refused (`outputRefused`): it did act, and
 * the compensation undoes it by `key`, without its output.
 * @since 0.1.0
 */
export interface CompensationContext<A> extends StepContext {
  readonly output: Option.Option<A>
}

/**
 * A step of a saga.
 * @since 0.1.0
 */
export interface Step<A, R> {
  readonly _tag: "Step"
  readonly name: string
  readonly action: (ctx: StepContext) => Effect.Effect<A, StepError, R>
  /**
   * How the output is logged (a schema whose `Type` is `A`, see `StepOptions`); absent: it must be
   * plain JSON. Typed loosely so that a step of any output still fits `Step<any, R>`, even one whose
   * action never succeeds (`A` = never): a schema's types are invariant.
   */
  readonly output?: Schema.Schema.AnyNoContext
  /** Undoes the action; absent for steps with nothing to undo (reads, the pivot). */
  compensation?(ctx: CompensationContext<A>): Effect.Effect<void, StepError, R>
  readonly retry: Schedule.Schedule<unknown, AttemptError>
  readonly timeout: Duration.Duration
  readonly compensationRetry: Schedule.Schedule<unknown, AttemptError>
  readonly compensationTimeout: Duration.Duration
  readonly pivot: boolean
}

/**
 * Steps that run concurrently and fail together.
 * @since 0.1.0
 */
export interface Group<R> {
  readonly _tag: "Group"
  readonly name: string
  // biome-ignore lint/suspicious/noExplicitAny: existential step output; the log stores it as JSON
  readonly steps: ReadonlyArray<Step<any, R>>
}

/**
 * A saga definition. `name` is its type: `resume` finds the definition of a logged saga by it.
 * @since 0.1.0
 */
export interface Saga<R> {
  readonly name: string
  // biome-ignore lint/suspicious/noExplicitAny: existential step output; the log stores it as JSON
  readonly units: ReadonlyArray<Step<any, R> | Group<R>>
}

/**
 * Defaults of step options.
 * @since 0.1.0
 */
export const defaults = {
  retry: Schedule.exponential(Duration.millis(100), 2).pipe(
    Schedule.jittered,
    Schedule.intersect(Schedule.recurs(3))
  ),
  timeout: Duration.seconds(30),
  compensationRetry: Schedule.exponential(Duration.millis(100), 2).pipe(
    Schedule.union(Schedule.spaced(Duration.seconds(5))),
    Schedule.jittered,
    Schedule.intersect(Schedule.recurs(10))
  ),
  compensationTimeout: Duration.seconds(30),
  leaseFor: Duration.seconds(30)
} as const

/**
 * Options of a step. `I` is the encoded side of the `output` schema.
 * @since 0.1.0
 */
export interface StepOptions<A, R, I = A> {
  /** `[A-Za-z0-9._-]{1,64}`, unique in the saga. */
  readonly name: string
  /**
   * The forward action. Its output is written to the log and is what later steps and compensations
   * read, after a resume too: without an `output` schema it must be plain JSON, else it is refused
   * (the step fails with kind `outputRefused` and is compensated).
   */
  readonly action: (ctx: StepContext) => Effect.Effect<A, StepError, R>
  /**
   * How the output is kept in the log: encoded with this schema before the completion is logged and
   * decoded when the saga is reloaded, so a `Date` comes back a `Date`, a `bigint` a `bigint`. Its
   * *encoded* side must be plain JSON (`Schema.Date`, `Schema.BigInt`, `Schema.DateFromNumber`; not
   * `Schema.DateFromSelf`). Later steps see the decoded value in an uninterrupted run too (fields the
   * schema does not know are dropped in both). Without it the output must be plain JSON.
   */
  readonly output?: Schema.Schema<A, I, never>
  readonly compensation?: (ctx: CompensationContext<A>) => Effect.Effect<void, StepError, R>
  /** Retries of the action (business failures are never retried). Default `defaults.retry`. */
  readonly retry?: Schedule.Schedule<unknown, AttemptError>
  /** Bound on each attempt of the action. Default 30 s. */
  readonly timeout?: Duration.DurationInput
  /** Retries of the compensation; past them the saga is Stuck. Default `defaults.compensationRetry`. */
  readonly compensationRetry?: Schedule.Schedule<unknown, AttemptError>
  /** Bound on each attempt of the compensation. Default 30 s. */
  readonly compensationTimeout?: Duration.DurationInput
  /** Once this step completes the saga only goes forward. */
  readonly pivot?: boolean
}

/**
 * Defines a step.
 * @since 0.1.0
 */
export const step = <A, R = never, I = A>(options: StepOptions<A, R, I>): Step<A, R> => ({
  _tag: "Step",
  name: options.name,
  action: options.action,
  ...(options.output === undefined ? {} : { output: options.output }),
  ...(options.compensation === undefined ? {} : { compensation: options.compensation }),
  retry: options.retry ?? defaults.retry,
  timeout: Duration.decode(options.timeout ?? defaults.timeout),
  compensationRetry: options.compensationRetry ?? defaults.compensationRetry,
  compensationTimeout: Duration.decode(options.compensationTimeout ?? defaults.compensationTimeout),
  pivot: options.pivot ?? false
})

/**
 * Defines a group of steps that run concurrently. If one fails for good, the others are let finish
 * and every member that completed (or is in doubt) is compensated, concurrently.
 * @since 0.1.0
 */
// biome-ignore lint/suspicious/noExplicitAny: existential step output
export const parallel = <R>(name: string, steps: ReadonlyArray<Step<any, R>>): Group<R> => ({
  _tag: "Group",
  name,
  steps
})

/**
 * Defines a saga.
 * @since 0.1.0
 */
export const make = <R>(options: {
  readonly name: string
  // biome-ignore lint/suspicious/noExplicitAny: existential step output
  readonly steps: ReadonlyArray<Step<any, R> | Group<R>>
}): Saga<R> => ({ name: options.name, units: options.steps })

/**
 * Saga definitions by type name, for `resume` and `sweep`.
 * @since 0.1.0
 */
export type Registry<R> = ReadonlyMap<string, Saga<R>>

/**
 * Builds a registry.
 * @since 0.1.0
 */
export const registry = <R>(sagas: ReadonlyArray<Saga<R>>): Registry<R> =>
  new Map(sagas.map((s) => [s.name, s]))

const stepNamePattern = /^[A-Za-z0-9._-]{1,64}$/
const sagaIdPattern = /^[A-Za-z0-9._:-]{1,128}$/

/**
 * Checks a definition: unique well-formed names, no pivot inside a group, at least one step.
 * @since 0.1.0
 */
export const validate = <R>(saga: Saga<R>): Either.Either<Saga<R>, InvalidSagaError> => {
  const fail = (reason: string) =>
    Either.left(new InvalidSagaError({ reason: `saga ${saga.name}: ${reason}` }))
  if (typeof saga.name !== "string" || !stepNamePattern.test(saga.name)) {
    return Either.left(new InvalidSagaError({ reason: `invalid saga name ${JSON.stringify(saga.name)}` }))
  }
  const seen = new Set<string>()
  let count = 0
  for (const unit of saga.units) {
    const members = unit._tag === "Group" ? unit.steps : [unit]
    if (unit._tag === "Group" && members.length === 0) return fail(`group ${unit.name} is empty`)
    for (const s of members) {
      if (!stepNamePattern.test(s.name))
        return fail(`invalid step name ${JSON.stringify(s.name)}: use [A-Za-z0-9._-]{1,64}`)
      if (seen.has(s.name)) return fail(`duplicate step name ${s.name}`)
      if (unit._tag === "Group" && s.pivot)
        return fail(`the pivot ${s.name} cannot be inside a parallel group`)
      seen.add(s.name)
      count++
    }
  }
  return count === 0 ? fail("a saga needs at least one step") : Either.right(saga)
}

// ---------------------------------------------------------------------------------------------
// Replay: the state of a saga reconstructed from its log records
// ---------------------------------------------------------------------------------------------

/**
 * A saga's state as its records describe it.
 * @since 0.1.0
 */
export interface Replayed {
  readonly started: ReadonlySet<string>
  /** Outputs as logged (encoded, for steps with an `output` schema: see `decodeOutputs`). */
  readonly completed: ReadonlyMap<string, unknown>
  readonly failed: ReadonlyMap<string, StepFailure>
  readonly compensationStarted: ReadonlySet<string>
  /** Steps compensated, in order. */
  readonly undone: ReadonlyArray<string>
  /** The recorded end, unless an operator asked for a retry after it. */
  readonly ended: Option.Option<Outcome>
}

/**
 * Folds a saga's records into its state.
 * @since 0.1.0
 */
export const replay = (records: ReadonlyArray<SagaRecord>): Replayed => {
  const started = new Set<string>()
  const completed = new Map<string, unknown>()
  const failed = new Map<string, StepFailure>()
  const compensationStarted = new Set<string>()
  const undone: Array<string> = []
  let ended: Option.Option<Outcome> = Option.none()
  for (const r of records) {
    switch (r._tag) {
      case "StepStarted":
        started.add(r.step)
        break
      case "StepCompleted":
        completed.set(r.step, r.output)
        failed.delete(r.step)
        break
      case "StepFailed":
        failed.set(r.step, r.failure)
        break
      case "CompensationStarted":
        compensationStarted.add(r.step)
        break
      case "CompensationCompleted":
        if (!undone.includes(r.step)) undone.push(r.step)
        break
      case "SagaEnded":
        ended = Option.some(r.outcome)
        break
      case "OperatorAction":
        if (r.action === "retry") ended = Option.none()
        break
      case "SagaStarted":
        break
    }
  }
  return { started, completed, failed, compensationStarted, undone, ended }
}

// ---------------------------------------------------------------------------------------------
// The engine
// ---------------------------------------------------------------------------------------------

/**
 * Options of `run`.
 * @since 0.1.0
 */
export interface RunOptions {
  /** The saga id (default: a fresh ULID). `[A-Za-z0-9._:-]{1,128}`. */
  readonly sagaId?: string
  /**
   * This orchestrator's identity (default `"orchestrator"`). The lease itself is held under
   * `<owner>/run-<token>`, unique to this run (see `driveLease`).
   */
  readonly owner?: string
  /** How long a lease lasts; renewed every third of it while the saga runs. Default 30 s. */
  readonly leaseFor?: Duration.DurationInput
}

// biome-ignore lint/suspicious/noExplicitAny: existential step output
type AnyStep<R> = Step<any, R>

interface Running<R> {
  readonly saga: Saga<R>
  readonly sagaId: string
  readonly input: unknown
  readonly owner: string
  readonly log: SagaLog["Type"]
  /** Outputs of the completed steps as the steps read them (decoded). */
  readonly completed: Map<string, unknown>
  /** The same outputs as logged (encoded): what `SagaEnded` records. */
  readonly logged: Map<string, unknown>
  /** Set just before `SagaEnded` is written: that write releases the lease, so the heartbeat must not mistake it for a loss. */
  readonly ending: { value: boolean }
}

/**
 * The lease of one drive of a saga (a run, a resume, a sweep, an operator action), held under
 * `<owner>/<kind>-<token>`: the configured owner stays visible to operators, and 80 random bits
 * (`internal/entropy.ts`) make the token unique to this drive. Leases fence drives, not processes:
 * a second drive under the same configured owner (the orchestrator resuming a saga it is still
 * running, two replicas configured alike) is refused while the first's lease is live, and the
 * appends of whichever drive lost the lease are rejected. A restarted process needs no old token:
 * it takes the saga over once the dead drive's lease has expired.
 */
const driveLease = (
  kind: "run" | "resume" | "sweep" | "retry" | "resolve",
  options?: { readonly owner?: string | undefined; readonly leaseFor?: Duration.DurationInput | undefined }
): Effect.Effect<Lease> =>
  Effect.map(randomChars(4), (token) => ({
    owner: `${options?.owner ?? "orchestrator"}/${kind}-${token.toLowerCase()}`,
    leaseFor: options?.leaseFor ?? defaults.leaseFor
  }))

const outputsOf = (completed: ReadonlyMap<string, unknown>): Readonly<Record<string, unknown>> =>
  Object.fromEntries(completed)

// ---------------------------------------------------------------------------------------------
// Outputs in the log: encoded and checked before the completion is logged, decoded on reload
// ---------------------------------------------------------------------------------------------

/** An output as the step's successors read it, and as the log records it. */
interface KeptOutput {
  readonly value: unknown
  readonly logged: unknown
}

/**
 * What to log for `s`'s output, checked before the completion is logged (`Json.encodeKept`; a
 * void output is kept: the log reads a missing output back as `undefined`). With a schema, the
 * logged form is also decoded back, so that this run's later steps see exactly what a resumed run
 * would (and a schema that cannot read its own encoding is caught now, not at the next resume).
 */
const keepOutput = <R>(
  run: Running<R>,
  s: AnyStep<R>,
  value: unknown
): Effect.Effect<KeptOutput, StepOutputRefusedError> => {
  const refuse = (reason: string) => new StepOutputRefusedError({ sagaId: run.sagaId, step: s.name, reason })
  const schema = s.output
  return Effect.gen(function* () {
    const logged = yield* Json.encodeKept(value, schema, "output").pipe(Effect.mapError(refuse))
    if (schema === undefined) return { value, logged }
    const decoded = yield* Schema.decodeUnknown(schema)(logged).pipe(
      Effect.mapError((e) => refuse(`the output schema does not decode its own encoded form: ${e.message}`))
    )
    return { value: decoded, logged }
  }).pipe(
    // A schema whose transformation throws is a bug in the step's definition, found after the
    // action acted: refused like any output that cannot be kept, not a defect that killed the drive
    // (the saga stayed running, and every sweep ran the action again and died the same way).
    Effect.catchAllDefect((defect) =>
      Effect.fail(refuse(`the output schema threw: ${defectMessage(defect)}`))
    )
  )
}

/** What a defect says, for a reason in the log. */
const defectMessage = (defect: unknown): string => (defect instanceof Error ? defect.message : String(defect))

/**
 * The outputs of a saga's completed steps as its steps read them: each logged output (`Replayed`'s
 * `completed`) decoded with its step's `output` schema. An output of a step without a schema, or of
 * a step the definition no longer has, is returned as logged, so logs written before output schemas
 * read as they always did. Fails with `StepOutputDecodeError` when a logged output does not decode.
 * @since 0.1.0
 */
export const decodeOutputs = <R>(
  saga: Saga<R>,
  sagaId: string,
  logged: ReadonlyMap<string, unknown>
): Effect.Effect<Map<string, unknown>, StepOutputDecodeError> => {
  const steps = new Map<string, AnyStep<R>>()
  for (const unit of saga.units)
    for (const s of unit._tag === "Group" ? unit.steps : [unit]) steps.set(s.name, s)
  return Effect.forEach(logged, ([name, output]) => {
    const schema = steps.get(name)?.output
    return schema === undefined
      ? Effect.succeed([name, output] as const)
      : Schema.decodeUnknown(schema)(output).pipe(
          Effect.map((value) => [name, value] as const),
          Effect.mapError((e) => new StepOutputDecodeError({ sagaId, step: name, reason: e.message })),
          // A decoding that throws does not read the output either (it was a defect of the drive).
          Effect.catchAllDefect((defect) =>
            Effect.fail(
              new StepOutputDecodeError({
                sagaId,
                step: name,
                reason: `the output schema threw: ${defectMessage(defect)}`
              })
            )
          )
        )
  }).pipe(Effect.map((entries) => new Map(entries)))
}

/** A recorded outcome as the caller reads it: a `Completed` one's outputs decoded (they are logged encoded). */
const decodeOutcome = <R>(
  saga: Saga<R> | undefined,
  outcome: Outcome
): Effect.Effect<Outcome, StepOutputDecodeError> =>
  saga === undefined || outcome._tag !== "Completed"
    ? Effect.succeed(outcome)
    : Effect.map(decodeOutputs(saga, outcome.sagaId, new Map(Object.entries(outcome.outputs))), (decoded) =>
        Outcome.Completed({ sagaId: outcome.sagaId, outputs: outputsOf(decoded) })
      )

/** How a step failed for good; the reason as the log can store it (`Json.text`). */
const failureOf = (step: string, error: AttemptError, inDoubt: boolean): StepFailure => {
  switch (error._tag) {
    case "StepBusinessError":
      return { step, kind: "business", reason: Json.text(error.reason), inDoubt }
    case "StepTransientError":
      return { step, kind: "transient", reason: Json.text(error.reason), inDoubt }
    case "StepInDoubtError":
      return { step, kind: "inDoubt", reason: Json.text(error.reason), inDoubt: true }
    case "StepTimeoutError":
      return { step, kind: "timeout", reason: Json.text(error.message), inDoubt: true }
  }
}

const isInDoubt = (e: AttemptError): boolean => e._tag === "StepInDoubtError" || e._tag === "StepTimeoutError"

/**
 * A defect of an action's or compensation's attempts (`Effect.die`, a synchronous throw) as an
 * in-doubt failure, after the retries (so it is not retried: the same bug dies again). Left as a
 * defect it killed the drive: the steps that had completed were not compensated and the saga stayed
 * running until a sweep, which ran the action again and died the same way. Interruption (a lost
 * lease) passes through unchanged.
 */
const defectAsFailure = <A, R>(
  step: string,
  phase: "action" | "compensation",
  attempts: Effect.Effect<A, AttemptError, R>
): Effect.Effect<A, AttemptError, R> =>
  Effect.catchAllCause(attempts, (cause) => {
    if (Cause.isInterrupted(cause)) return Effect.failCause(cause)
    return Option.match(Cause.dieOption(cause), {
      onNone: () => Effect.failCause(cause),
      onSome: (defect) => {
        const reason = `${phase} of step ${step} died (a defect, not retried): ${defectMessage(defect)}`
        return Effect.zipRight(Effect.logError(reason, cause), Effect.fail(new StepInDoubtError({ reason })))
      }
    })
  })

const runAction = Effect.fn("Saga.action")(function* <R>(
  run: Running<R>,
  s: AnyStep<R>,
  startedBefore: boolean
) {
  yield* Effect.annotateCurrentSpan({ sagaId: run.sagaId, step: s.name, phase: "action" })
  yield* run.log.append(SagaRecord.StepStarted({ sagaId: run.sagaId, step: s.name }), run.owner)
  const outputs = outputsOf(run.completed)
  let attempt = 0
  // A step already started by an earlier run, without a recorded end, may have acted then: it is in
  // doubt whatever the new attempts say, so if it fails now it is still compensated.
  let inDoubt = startedBefore
  const once = Effect.suspend(() => {
    attempt++
    return s
      .action({
        sagaId: run.sagaId,
        sagaName: run.saga.name,
        step: s.name,
        key: `${run.sagaId}/${s.name}`,
        input: run.input,
        outputs,
        attempt
      })
      .pipe(
        Effect.timeoutFail({
          duration: s.timeout,
          onTimeout: () =>
            new StepTimeoutError({ step: s.name, phase: "action", millis: Duration.toMillis(s.timeout) })
        }),
        Effect.tapError((e: AttemptError) =>
          Effect.sync(() => {
            if (isInDoubt(e)) inDoubt = true
          })
        )
      )
  })
  const result = yield* Effect.either(
    defectAsFailure(
      s.name,
      "action",
      Effect.retry(once, { schedule: s.retry, while: (e: AttemptError) => e._tag !== "StepBusinessError" })
    )
  )
  if (Either.isRight(result)) {
    const kept = yield* Effect.either(keepOutput(run, s, result.right))
    if (Either.isRight(kept)) {
      yield* run.log.append(
        SagaRecord.StepCompleted({ sagaId: run.sagaId, step: s.name, output: kept.right.logged }),
        run.owner
      )
      return Either.right(kept.right)
    }
    // The action ran and acted, but its output cannot be logged faithfully. Logging the completion
    // anyway would hand later steps (after a resume) a lossy copy, or not be writable at all (a
    // bigint: the completion never landed and every resume ran the action again, forever). Retrying
    // is no better: the same code returns the same kind of value, and each attempt acts again. So
    // the step fails for good *after acting*: in doubt, hence compensated with the rest, and since
    // no completion is logged its compensation gets `output: None`, as for any step in doubt.
    const refused: StepFailure = {
      step: s.name,
      kind: "outputRefused",
      reason: Json.text(kept.left.message),
      inDoubt: true
    }
    yield* Effect.annotateCurrentSpan({ failure: refused.kind })
    yield* run.log.append(
      SagaRecord.StepFailed({ sagaId: run.sagaId, step: s.name, failure: refused }),
      run.owner
    )
    return Either.left(refused)
  }
  const failure = failureOf(s.name, result.left, inDoubt)
  yield* Effect.annotateCurrentSpan({ failure: failure.kind })
  yield* run.log.append(SagaRecord.StepFailed({ sagaId: run.sagaId, step: s.name, failure }), run.owner)
  return Either.left(failure)
})

const runCompensation = Effect.fn("Saga.compensation")(function* <R>(run: Running<R>, s: AnyStep<R>) {
  yield* Effect.annotateCurrentSpan({ sagaId: run.sagaId, step: s.name, phase: "compensation" })
  const compensation = s.compensation
  if (compensation === undefined) return Option.none<string>()
  yield* run.log.append(SagaRecord.CompensationStarted({ sagaId: run.sagaId, step: s.name }), run.owner)
  const output = run.completed.has(s.name) ? Option.some(run.completed.get(s.name)) : Option.none()
  const outputs = outputsOf(run.completed)
  let attempt = 0
  const once = Effect.suspend(() => {
    attempt++
    return compensation({
      sagaId: run.sagaId,
      sagaName: run.saga.name,
      step: s.name,
      key: `${run.sagaId}/${s.name}`,
      input: run.input,
      outputs,
      attempt,
      output
    }).pipe(
      Effect.timeoutFail({
        duration: s.compensationTimeout,
        onTimeout: () =>
          new StepTimeoutError({
            step: s.name,
            phase: "compensation",
            millis: Duration.toMillis(s.compensationTimeout)
          })
      })
    )
  })
  const result = yield* Effect.either(
    defectAsFailure(
      s.name,
      "compensation",
      Effect.retry(once, {
        schedule: s.compensationRetry,
        while: (e: AttemptError) => e._tag !== "StepBusinessError"
      })
    )
  )
  if (Either.isLeft(result)) {
    // Not retried further: the saga becomes Stuck (the caller records it).
    yield* Effect.annotateCurrentSpan({ stuck: true })
    return Option.some(result.left.message)
  }
  yield* run.log.append(SagaRecord.CompensationCompleted({ sagaId: run.sagaId, step: s.name }), run.owner)
  return Option.none<string>()
})

/**
 * Sagas ended, by outcome (`outcome` tag: Completed, Compensated, Stuck).
 * @since 0.1.0
 */
export const outcomes = Metric.counter("accord_saga_outcomes_total", {
  description: "sagas ended, by outcome",
  incremental: true
})

const end = <R>(run: Running<R>, outcome: Outcome) =>
  Effect.suspend(() => {
    // The SagaEnded write releases the lease: a heartbeat landing after it commits finds no lease
    // to renew, which is the end, not a loss (a lease really lost is caught by the write's fence).
    run.ending.value = true
    // The log keeps a completed saga's outputs as it keeps each step's: encoded.
    const recorded =
      outcome._tag === "Completed"
        ? Outcome.Completed({ sagaId: outcome.sagaId, outputs: outputsOf(run.logged) })
        : outcome
    return run.log.append(SagaRecord.SagaEnded({ sagaId: run.sagaId, outcome: recorded }), run.owner)
  }).pipe(
    Effect.zipRight(Metric.increment(Metric.tagged(outcomes, "outcome", outcome._tag))),
    Effect.as(outcome)
  )

/** Which steps must be compensated: started (completed, in doubt, or failed in doubt), with a compensation. */
const needsCompensation = <R>(s: AnyStep<R>, state: Replayed): boolean => {
  if (s.compensation === undefined || !state.started.has(s.name)) return false
  const failure = state.failed.get(s.name)
  return failure === undefined || failure.inDoubt
}

const compensate = Effect.fn("Saga.compensate")(function* <R>(
  run: Running<R>,
  state: Replayed,
  cause: StepFailure
) {
  yield* Effect.annotateCurrentSpan({ sagaId: run.sagaId, phase: "compensation", failedStep: cause.step })
  const undone = [...state.undone]
  for (let i = run.saga.units.length - 1; i >= 0; i--) {
    const unit = run.saga.units[i]!
    const members = (unit._tag === "Group" ? unit.steps : [unit]).filter(
      (s) => needsCompensation(s, state) && !undone.includes(s.name)
    )
    if (members.length === 0) continue
    const results = yield* Effect.forEach(
      members,
      (s) => runCompensation(run, s).pipe(Effect.map((stuck) => ({ step: s.name, stuck }))),
      { concurrency: "unbounded" }
    )
    for (const r of results) if (Option.isNone(r.stuck)) undone.push(r.step)
    const stuck = results.flatMap((r) =>
      Option.isSome(r.stuck) ? [{ step: r.step, cause: r.stuck.value }] : []
    )
    const [first, ...others] = stuck
    if (first !== undefined) {
      // The outcome has room for one step; other members of the group stuck with it are named in
      // the cause, so that an operator who fixes things by hand (`resolveStuck`) knows of them all.
      const also = others.map((o) => `; ${o.step}'s compensation is stuck too: ${o.cause}`).join("")
      return yield* end(
        run,
        Outcome.Stuck({
          sagaId: run.sagaId,
          step: first.step,
          phase: "compensation",
          cause: Json.text(`${first.cause}${also}`)
        })
      )
    }
  }
  return yield* end(run, Outcome.Compensated({ sagaId: run.sagaId, cause, undone }))
})

const stepIndex = <R>(saga: Saga<R>): Map<string, number> => {
  const index = new Map<string, number>()
  let i = 0
  for (const unit of saga.units)
    for (const s of unit._tag === "Group" ? unit.steps : [unit]) index.set(s.name, i++)
  return index
}

/** The failure that sends the saga backwards: the earliest failed step in definition order. */
const firstFailure = <R>(
  saga: Saga<R>,
  failed: ReadonlyMap<string, StepFailure>
): Option.Option<StepFailure> => {
  const index = stepIndex(saga)
  const sorted = [...failed.values()].sort((a, b) => (index.get(a.step) ?? 0) - (index.get(b.step) ?? 0))
  return Option.fromNullable(sorted[0])
}

const pivotPassed = <R>(saga: Saga<R>, completed: ReadonlyMap<string, unknown>): boolean =>
  saga.units.some((u) => u._tag === "Step" && u.pivot && completed.has(u.name))

/** Drives a saga from its replayed state to its end. */
const drive = Effect.fn("Saga.drive")(function* <R>(run: Running<R>, records: ReadonlyArray<SagaRecord>) {
  let state = replay(records)
  if (Option.isSome(state.ended)) return yield* decodeOutcome(run.saga, state.ended.value)
  // Outputs already logged are decoded by the caller before the drive takes over (`continueClaimed`).
  const backwards = pivotPassed(run.saga, state.completed)
    ? Option.none()
    : firstFailure(run.saga, state.failed)
  if (Option.isSome(backwards)) return yield* compensate(run, state, backwards.value)
  const started = new Set(state.started)
  const failed = new Map(state.failed)
  for (const unit of run.saga.units) {
    const members = (unit._tag === "Group" ? unit.steps : [unit]).filter((s) => !run.completed.has(s.name))
    if (members.length === 0) continue
    const afterPivot = pivotPassed(run.saga, run.completed)
    const results = yield* Effect.forEach(
      members,
      (s) => {
        started.add(s.name)
        const startedBefore = state.started.has(s.name) && state.failed.get(s.name)?.inDoubt !== false
        return runAction(run, s, startedBefore).pipe(Effect.map((r) => ({ step: s.name, r })))
      },
      { concurrency: "unbounded" }
    )
    for (const { step: name, r } of results) {
      if (Either.isRight(r)) {
        run.completed.set(name, r.right.value)
        run.logged.set(name, r.right.logged)
      } else failed.set(name, r.left)
    }
    const unitFailures = new Map(
      [...failed].filter(([name]) => members.some((m) => m.name === name) && !run.completed.has(name))
    )
    const failure = firstFailure(run.saga, unitFailures)
    if (Option.isSome(failure)) {
      if (afterPivot) {
        // Other members of the group that failed with it are named in the cause (see `compensate`).
        const also = members
          .flatMap((m) => {
            const f = unitFailures.get(m.name)
            return f === undefined || m.name === failure.value.step ? [] : [f]
          })
          .map((f) => `; ${f.step}'s action failed too: ${f.kind}: ${f.reason}`)
          .join("")
        return yield* end(
          run,
          Outcome.Stuck({
            sagaId: run.sagaId,
            step: failure.value.step,
            phase: "action",
            cause: Json.text(`${failure.value.kind}: ${failure.value.reason}${also}`)
          })
        )
      }
      state = { ...state, started, failed, completed: new Map(run.completed) }
      return yield* compensate(run, state, failure.value)
    }
  }
  return yield* end(run, Outcome.Completed({ sagaId: run.sagaId, outputs: outputsOf(run.completed) }))
})

/**
 * Milliseconds on a monotonic clock (`Clock.currentTimeNanos`: Node's `hrtime` under the live
 * clock, the test clock in tests), for a drive's own lease accounting. The wall clock
 * (`currentTimeMillis`, `Date.now`) can step back (NTP): a drive whose renewals failed then
 * believed it held the lease by that much longer than the log did, and ran its step on while
 * another drive that had claimed the lapsed saga ran it too (a review measured two at once).
 */
const leaseClock = Effect.map(Clock.currentTimeNanos, (nanos) => Number(nanos / 1_000_000n))

/**
 * Runs `work` while renewing the lease every third of `leaseFor`; if the lease is lost, `work` is
 * interrupted. Lost means: the log says another drive owns the saga, or the drive could not renew
 * it (log unreachable, renewals failing or unanswered) before it lapsed. A lapsed lease may be
 * claimed by another process at any moment, which then runs the step again: so the step is stopped
 * when the lease runs out, as this process's clock counts it from the sending of the claim or the
 * last successful renewal (never later than the log's own expiry, which is counted from when the
 * statement reached the database). `takenAt` is when the claim (or start) that took the lease was sent,
 * on `leaseClock`.
 */
const withLease = <A, E, R>(
  log: SagaLog["Type"],
  sagaId: string,
  lease: Lease,
  takenAt: number,
  ending: { readonly value: boolean },
  work: Effect.Effect<A, E, R>
): Effect.Effect<A, E | LeaseLostError, R> => {
  const leaseMs = Duration.toMillis(Duration.decode(lease.leaseFor))
  const every = Math.max(1, Math.floor(leaseMs / 3))
  const lost = new LeaseLostError({ sagaId, owner: lease.owner })
  const heartbeat = Effect.gen(function* () {
    let heldUntil = takenAt + leaseMs
    while (true) {
      const now = yield* leaseClock
      // Once SagaEnded is being written the lease no longer matters (that write is fenced itself).
      yield* Effect.sleep(
        Duration.millis(ending.value ? every : Math.max(0, Math.min(every, heldUntil - now)))
      )
      if (ending.value) continue
      const sentAt = yield* leaseClock
      if (sentAt >= heldUntil) return yield* Effect.fail(lost)
      // A renewal still unanswered when the lease runs out is a loss too.
      const renewed = yield* Effect.either(log.renewLease(sagaId, lease)).pipe(
        Effect.timeout(Duration.millis(heldUntil - sentAt)),
        Effect.option
      )
      if (Option.isSome(renewed) && Either.isRight(renewed.value)) {
        if (renewed.value.right) heldUntil = sentAt + leaseMs
        else if (!ending.value) return yield* Effect.fail(lost)
      }
      // A failed renewal is tried again at the next beat, while the lease lasts.
    }
  })
  return Effect.raceFirst(work, heartbeat)
}

/**
 * The log as a drive uses it: every call bounded by the lease (`leaseFor`). A write that has not
 * answered within the lease is of no use (the lease may have passed to another drive by then), and
 * unbounded, a log connection that stopped answering held the drive for ever while its heartbeat,
 * on another connection, kept the lease alive, so that no sweep could take the saga over. It fails
 * with `LogError`; whether the write landed is unknown, and a later drive reads the log as it is.
 */
const boundedLog = (log: SagaLog["Type"], leaseFor: Duration.DurationInput): SagaLog["Type"] => {
  const bound = Duration.decode(leaseFor)
  const within =
    (operation: string, sagaId: string | undefined) =>
    <A, E>(call: Effect.Effect<A, E>): Effect.Effect<A, E | LogError> =>
      Effect.timeoutFail(call, {
        duration: bound,
        onTimeout: () =>
          new LogError({
            operation,
            ...(sagaId === undefined ? {} : { txId: sagaId }),
            reason: `the saga log did not answer within ${Duration.format(bound)} (the lease)`
          })
      })
  return {
    start: (record, lease) => within("start", record.sagaId)(log.start(record, lease)),
    append: (record, owner) => within("append", record.sagaId)(log.append(record, owner)),
    load: (sagaId) => within("load", sagaId)(log.load(sagaId)),
    claim: (sagaId, lease) => within("claim", sagaId)(log.claim(sagaId, lease)),
    claimAbandoned: (options) => within("claimAbandoned", undefined)(log.claimAbandoned(options)),
    renewLease: (sagaId, lease) => within("renewLease", sagaId)(log.renewLease(sagaId, lease)),
    release: (sagaId, owner) => within("release", sagaId)(log.release(sagaId, owner)),
    list: (options) => within("list", undefined)(log.list(options))
  }
}

/** The `SagaLog` of a drive holding leases of `leaseFor` (default `defaults.leaseFor`), bounded by it. */
const driveLog = (leaseFor: Duration.DurationInput | undefined) =>
  Effect.map(SagaLog, (log) => boundedLog(log, leaseFor ?? defaults.leaseFor))

/**
 * Runs a new saga to its end: `Completed`, `Compensated` or `Stuck`. The start and every step are
 * recorded in the `SagaLog` first; the saga holds a lease while it runs.
 * @since 0.1.0
 */
export const run: <R>(
  saga: Saga<R>,
  input: unknown,
  options?: RunOptions
) => Effect.Effect<Outcome, SagaError, SagaLog | R> = Effect.fn("Saga.run")(function* <R>(
  saga: Saga<R>,
  input: unknown,
  options?: RunOptions
) {
  yield* validate(saga)
  const sagaId = options?.sagaId ?? (yield* TransactionId.make)
  if (!sagaIdPattern.test(sagaId)) {
    return yield* Effect.fail(new InvalidSagaError({ reason: `invalid saga id ${JSON.stringify(sagaId)}` }))
  }
  yield* Effect.annotateCurrentSpan({ sagaId, saga: saga.name })
  const lease = yield* driveLease("run", options)
  const log = yield* driveLog(lease.leaseFor)
  const started = SagaRecord.SagaStarted({ sagaId, sagaType: saga.name, input })
  const takenAt = yield* leaseClock
  yield* log.start(started, lease)
  const running: Running<R> = {
    saga,
    sagaId,
    input,
    owner: lease.owner,
    log,
    completed: new Map(),
    logged: new Map(),
    ending: { value: false }
  }
  return yield* withLease(log, sagaId, lease, takenAt, running.ending, drive(running, [started]))
})

/**
 * Runs a new saga and returns its outputs; a compensated or stuck saga is a typed failure.
 * @since 0.1.0
 */
export const runOrFail = <R>(
  saga: Saga<R>,
  input: unknown,
  options?: RunOptions
): Effect.Effect<
  Readonly<Record<string, unknown>>,
  SagaError | SagaCompensatedError | SagaStuckError,
  SagaLog | R
> => Effect.flatMap(run(saga, input, options), orFail)

/**
 * Turns an outcome into the outputs, or a typed failure.
 * @since 0.1.0
 */
export const orFail = (
  outcome: Outcome
): Effect.Effect<Readonly<Record<string, unknown>>, SagaCompensatedError | SagaStuckError> =>
  Outcome.$match(outcome, {
    Completed: (o) => Effect.succeed(o.outputs),
    Compensated: (o) =>
      Effect.fail(
        new SagaCompensatedError({
          sagaId: o.sagaId,
          step: o.cause.step,
          reason: o.cause.reason,
          undone: [...o.undone]
        })
      ),
    Stuck: (o) =>
      Effect.fail(new SagaStuckError({ sagaId: o.sagaId, step: o.step, phase: o.phase, cause: o.cause }))
  })

/**
 * Options of `resume` and `retryStuck`.
 * @since 0.1.0
 */
export interface ResumeOptions {
  /** As in `RunOptions`: the lease is held under `<owner>/<kind>-<token>`, unique to this call. */
  readonly owner?: string
  readonly leaseFor?: Duration.DurationInput
}

/** The claimed saga's definition; without one, the lease just taken is given back and it fails. */
const definitionOf = <R>(sagas: Registry<R>, history: SagaHistory, lease: Lease) =>
  Effect.gen(function* () {
    const saga = sagas.get(history.sagaType)
    if (saga !== undefined) return saga
    yield* (yield* driveLog(lease.leaseFor)).release(history.sagaId, lease.owner)
    return yield* Effect.fail(
      new InvalidSagaError({
        reason: `saga ${history.sagaId}: no definition registered for type ${history.sagaType}`
      })
    )
  })

const continueClaimed = <R>(
  sagas: Registry<R>,
  history: SagaHistory,
  lease: Lease,
  takenAt: number,
  extra: ReadonlyArray<SagaRecord> = []
): Effect.Effect<Outcome, SagaError, SagaLog | R> =>
  Effect.gen(function* () {
    const log = yield* driveLog(lease.leaseFor)
    const saga = yield* definitionOf(sagas, history, lease)
    yield* validate(saga)
    // Claims work on ended sagas too: one that ended after the caller last looked is not driven
    // again, and the lease just taken on it is given back.
    const state = replay([...history.records, ...extra])
    if (Option.isSome(state.ended)) {
      yield* log.release(history.sagaId, lease.owner)
      return yield* decodeOutcome(saga, state.ended.value)
    }
    // A logged output this definition cannot read: nothing runs, the lease is given back and the
    // saga waits in the log, as it does for a type with no definition.
    const completed = yield* decodeOutputs(saga, history.sagaId, state.completed).pipe(
      Effect.tapError(() => log.release(history.sagaId, lease.owner))
    )
    const running: Running<R> = {
      saga,
      sagaId: history.sagaId,
      input: history.input,
      owner: lease.owner,
      log,
      completed,
      logged: new Map(state.completed),
      ending: { value: false }
    }
    return yield* withLease(
      log,
      history.sagaId,
      lease,
      takenAt,
      running.ending,
      drive(running, [...history.records, ...extra])
    )
  })

/**
 * Resumes a saga from its log records with the same definition (found by type name): a step that
 * started without completing is run again (at least once) or compensated, whichever an
 * uninterrupted run would have done. An ended saga returns its recorded outcome and runs nothing.
 * Fails with `SagaBusyError` while another drive holds a live lease, even one under the same owner
 * (this orchestrator's own `run` of the saga still in flight).
 * @since 0.1.0
 */
export const resume: <R>(
  sagas: Registry<R>,
  sagaId: string,
  options?: ResumeOptions
) => Effect.Effect<Outcome, SagaError, SagaLog | R> = Effect.fn("Saga.resume")(function* <R>(
  sagas: Registry<R>,
  sagaId: string,
  options?: ResumeOptions
) {
  yield* Effect.annotateCurrentSpan({ sagaId })
  const log = yield* driveLog(options?.leaseFor)
  const existing = yield* log.load(sagaId)
  if (Option.isNone(existing)) return yield* Effect.fail(new SagaNotFoundError({ sagaId }))
  const ended = replay(existing.value.records).ended
  if (Option.isSome(ended)) return yield* decodeOutcome(sagas.get(existing.value.sagaType), ended.value)
  const lease = yield* driveLease("resume", options)
  const takenAt = yield* leaseClock
  const history = yield* log.claim(sagaId, lease)
  return yield* continueClaimed(sagas, history, lease, takenAt)
})

/**
 * `value` as a whole number of at least `min` for a count (`limit`, `concurrency`): `fallback` when
 * omitted, `min` for NaN, rounded down, infinity as the largest safe integer (a claim's SQL `limit`
 * takes no fraction, NaN or infinity; a NaN `limit` claimed without bound).
 */
const wholeAtLeast = (value: number | undefined, fallback: number, min: number): number => {
  if (value === undefined) return fallback
  if (Number.isNaN(value)) return min
  return Math.max(min, Math.floor(Math.min(value, Number.MAX_SAFE_INTEGER)))
}

/**
 * Claims up to `limit` abandoned sagas (running, lease expired) and runs each to its end, at most
 * `concurrency` at a time (default 8): each slot claims the next abandoned saga as soon as its drive
 * ends, whatever the other slots are still driving, until a claim finds none. Returns the outcomes
 * of the sagas finished, in the order they were claimed; a saga that could not be finished now
 * (lease lost, log error, no definition, a drive that died) is logged and left for a later sweep.
 * Fails with `LogError` when a claim fails, once the drives in flight have ended.
 * Several orchestrators may sweep one log at once: a saga is claimed by one of them at a time.
 * Claims are recorded under `<owner>/sweep-<token>`, unique per sweep (see `driveLease`).
 * @since 0.1.0
 */
export const sweep: <R>(
  sagas: Registry<R>,
  options: {
    readonly owner: string
    readonly leaseFor?: Duration.DurationInput
    readonly limit?: number
    readonly concurrency?: number
  }
) => Effect.Effect<ReadonlyArray<Outcome>, LogError, SagaLog | R> = Effect.fn("Saga.sweep")(function* <R>(
  sagas: Registry<R>,
  options: {
    readonly owner: string
    readonly leaseFor?: Duration.DurationInput
    readonly limit?: number
    readonly concurrency?: number
  }
) {
  // Each sweep claims under its own token, so that a saga this process is still driving under
  // `owner` (its lease starved, say) and the same saga claimed here are fenced from each other.
  const lease = yield* driveLease("sweep", options)
  const log = yield* driveLog(lease.leaseFor)
  const limit = wholeAtLeast(options.limit, 100, 0)
  const concurrency = wholeAtLeast(options.concurrency, 8, 1)
  const types = [...sagas.keys()]
  // Outcomes by claim order; `None` for a saga not finished now.
  const results: Array<Option.Option<Outcome>> = []
  const seen = new Set<string>()
  // Of those, the ones not finished by this sweep, the only ones a claim must leave out: a saga it
  // finished has ended, so no claim returns it. (Excluding every saga seen sent one id more per
  // claim, and with a claim per freed slot that grew as the square of `limit`.)
  const unfinished = new Set<string>()
  let reserved = 0
  // Cleared when a claim finds nothing new, or fails: no slot claims again.
  let open = true
  let claimFailure: Option.Option<LogError> = Option.none()

  // A saga is claimed only when a slot is free to drive it: claimed all at once, the sagas waiting
  // for a slot had leases nobody renewed, which lapsed behind long drives (another sweeper then
  // took them over, and this one's drive of them failed).
  const claim = (slots: number) =>
    Effect.gen(function* () {
      // Checked and reserved in one synchronous step, so that slots claiming at once stay within `limit`.
      const wanted = open ? Math.min(slots, limit - reserved) : 0
      if (wanted <= 0) return []
      reserved += wanted
      const takenAt = yield* leaseClock
      // Only sagas this sweep has a definition for, and none it has taken already: one it gave back
      // (an output it cannot decode) is claimable again at once, and being the oldest it was
      // claimed first again, every time: the sweep ended there and no later saga was recovered.
      const claimed = yield* log
        .claimAbandoned({ ...lease, limit: wanted, types, exclude: [...unfinished] })
        .pipe(
          Effect.onError(() =>
            Effect.sync(() => {
              reserved -= wanted
            })
          )
        )
      // A log that ignores those filters: a saga given back by this sweep (no definition, an output
      // it cannot decode) is given back again, and the sweep stops claiming rather than claim it
      // over and over.
      // (A saga this sweep finished that is running again, say an operator's retry whose process
      // died, is claimed as any other: only the unfinished ones are left out.)
      const again = claimed.filter((h) => unfinished.has(h.sagaId))
      const fresh = claimed.filter((h) => !unfinished.has(h.sagaId))
      for (const h of fresh) {
        seen.add(h.sagaId)
        unfinished.add(h.sagaId)
      }
      reserved -= wanted - fresh.length
      if (claimed.length < wanted || again.length > 0) open = false
      yield* Effect.forEach(again, (h) => log.release(h.sagaId, lease.owner), { discard: true })
      return fresh.map((history) => ({ history, takenAt, index: results.push(Option.none()) - 1 }))
    })
  type Claimed = Effect.Effect.Success<ReturnType<typeof claim>>[number]

  // A drive that fails or dies ends that saga's drive only, never the sweep: the saga stays in the
  // log for the next sweep. Interruption (of the sweep) passes through.
  const driveClaimed = ({ history, takenAt, index }: Claimed) =>
    continueClaimed(sagas, history, lease, takenAt).pipe(
      Effect.flatMap((outcome) =>
        Effect.sync(() => {
          results[index] = Option.some(outcome)
          unfinished.delete(history.sagaId)
        })
      ),
      Effect.catchAllCause((cause) => {
        if (Cause.isInterruptedOnly(cause)) return Effect.failCause(cause)
        const failure = Cause.failureOption(cause)
        return Option.isSome(failure)
          ? Effect.logWarning(`saga sweep: ${history.sagaId} not finished now: ${failure.value.message}`)
          : Effect.logError(`saga sweep: ${history.sagaId} not finished now: its drive died`, cause)
      })
    )

  // One slot: drives its saga, then claims the next one, until a claim finds nothing (or fails) or
  // the sweep has claimed `limit` sagas.
  const slot = (first: Claimed) =>
    Effect.gen(function* () {
      let next: Claimed | undefined = first
      while (next !== undefined) {
        yield* driveClaimed(next)
        next = undefined
        const claimed = yield* Effect.either(claim(1))
        if (Either.isLeft(claimed)) {
          open = false
          if (Option.isNone(claimFailure)) claimFailure = Option.some(claimed.left)
        } else next = claimed.right[0]
      }
    })

  // The first claim fills every slot in one statement; later claims take one saga per slot freed.
  const first = yield* claim(concurrency)
  yield* Effect.forEach(first, slot, { concurrency: "unbounded", discard: true })
  // A saga that could not be finished now stays in the log for the next sweep; only log failures
  // of the sweep itself are errors.
  if (Option.isSome(claimFailure)) return yield* Effect.fail(claimFailure.value)
  return results.flatMap((r) => (Option.isSome(r) ? [r.value] : []))
})

/**
 * Operator: runs a stuck saga again from where it stuck (the failed compensation, or after the pivot
 * the failed action), with fresh retries. Records an `OperatorAction` first. Fails with
 * `SagaBusyError` while any drive (even one under the same owner) holds a live lease on the saga.
 * @since 0.1.0
 */
export const retryStuck: <R>(
  sagas: Registry<R>,
  sagaId: string,
  options?: ResumeOptions & { readonly note?: string }
) => Effect.Effect<Outcome, SagaError, SagaLog | R> = Effect.fn("Saga.retryStuck")(function* <R>(
  sagas: Registry<R>,
  sagaId: string,
  options?: ResumeOptions & { readonly note?: string }
) {
  yield* Effect.annotateCurrentSpan({ sagaId })
  const lease = yield* driveLease("retry", options)
  const log = yield* driveLog(lease.leaseFor)
  const takenAt = yield* leaseClock
  const history = yield* log.claim(sagaId, lease)
  const ended = replay(history.records).ended
  if (Option.isSome(ended) && ended.value._tag !== "Stuck") {
    yield* log.release(sagaId, lease.owner)
    return yield* decodeOutcome(sagas.get(history.sagaType), ended.value)
  }
  // Refused before the retry record is written: written first, it left the saga "running" with
  // no driver, out of the stuck list.
  yield* definitionOf(sagas, history, lease)
  const action = SagaRecord.OperatorAction({
    sagaId,
    action: "retry",
    note: Json.text(options?.note ?? "retry")
  })
  yield* log.append(action, lease.owner)
  return yield* continueClaimed(sagas, history, lease, takenAt, [action])
})

/**
 * Operator: declares a stuck saga resolved by hand. A saga stuck in a compensation ends
 * `Compensated` (the stuck step, and every member of its group stuck with it, counted as undone);
 * one stuck after the pivot ends `Completed`, whose outputs are as logged (encoded, for steps with
 * an `output` schema: it takes no definition to decode them with; `resume` with one returns them
 * decoded). Nothing runs.
 *
 * A compensation that stuck leaves the steps before it not compensated yet. Ending the saga would
 * leave them so for good (nothing would run them), so the resolve is refused (`InvalidSagaError`
 * naming them) unless `alsoCompensated` lists them: compensated by hand too. To have them run,
 * `retryStuck` once the stuck compensation can succeed.
 * @since 0.1.0
 */
export const resolveStuck: (
  sagaId: string,
  note: string,
  options?: ResumeOptions & { readonly alsoCompensated?: ReadonlyArray<string> }
) => Effect.Effect<Outcome, SagaError, SagaLog> = Effect.fn("Saga.resolveStuck")(function* (
  sagaId: string,
  note: string,
  options?: ResumeOptions & { readonly alsoCompensated?: ReadonlyArray<string> }
) {
  yield* Effect.annotateCurrentSpan({ sagaId })
  const lease = yield* driveLease("resolve", options)
  const log = yield* driveLog(lease.leaseFor)
  const history = yield* log.claim(sagaId, lease)
  const state = replay(history.records)
  if (Option.isNone(state.ended) || state.ended.value._tag !== "Stuck") {
    yield* log.release(sagaId, lease.owner)
    return yield* Effect.fail(new InvalidSagaError({ reason: `saga ${sagaId} is not stuck` }))
  }
  const stuck = state.ended.value
  // The compensations started and not finished: the stuck step and the members of its group stuck
  // with it (the cause names them all; before, only the first was counted undone).
  const stuckSteps = [...state.compensationStarted].filter((s) => !state.undone.includes(s))
  const alsoCompensated = new Set(options?.alsoCompensated ?? [])
  // Steps that acted, or may have (started and not failed for certain), and whose compensation
  // never ran: those before the stuck one.
  const owing =
    stuck.phase === "compensation"
      ? [...state.started].filter(
          (s) =>
            !state.undone.includes(s) &&
            !stuckSteps.includes(s) &&
            !(state.failed.get(s)?.inDoubt === false && !state.completed.has(s))
        )
      : []
  const left = owing.filter((s) => !alsoCompensated.has(s))
  if (left.length > 0) {
    yield* log.release(sagaId, lease.owner)
    return yield* Effect.fail(
      new InvalidSagaError({
        reason: `saga ${sagaId}: ${left.join(", ")} acted and ${left.length === 1 ? "was" : "were"} not compensated yet (the compensation stuck before ${left.length === 1 ? "it" : "them"}): retryStuck once ${stuckSteps.join(", ")} can be compensated, or compensate ${left.length === 1 ? "it" : "them"} by hand too and resolve with alsoCompensated`
      })
    )
  }
  yield* log.append(
    SagaRecord.OperatorAction({ sagaId, action: "resolve", note: Json.text(note) }),
    lease.owner
  )
  const outcome: Outcome =
    stuck.phase === "action"
      ? Outcome.Completed({ sagaId, outputs: outputsOf(state.completed) })
      : Outcome.Compensated({
          sagaId,
          cause: Option.getOrElse(firstFailure({ name: history.sagaType, units: [] }, state.failed), () => ({
            step: stuck.step,
            kind: "business" as const,
            reason: stuck.cause,
            inDoubt: false
          })),
          undone: [
            ...state.undone,
            ...(stuckSteps.includes(stuck.step) ? stuckSteps : [stuck.step, ...stuckSteps]),
            ...owing.filter((s) => alsoCompensated.has(s))
          ]
        })
  yield* log.append(SagaRecord.SagaEnded({ sagaId, outcome }), lease.owner)
  return outcome
})
