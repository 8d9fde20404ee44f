/**
 * Two-phase commit, presumed abort (README.md, "Two-phase commit" and "What the outcomes mean").
 *
 * 1. Every branch prepares concurrently, each bounded by `prepareTimeout`; a timeout or a failed
 *    call counts as a No vote.
 * 2. All Prepared/ReadOnly: the commit decision is forced to the log (first writer wins, so
 *    recovery's presumed abort cannot race it); otherwise the prepared branches are rolled back
 *    and nothing is written.
 * 3. Phase 2 runs concurrently, each branch retried with `commitSchedule` until it acknowledges
 *    or the transaction's deadline passes; then the outcome is `CommitPending` and recovery
 *    finishes it. After a commit decision the outcome is never `Aborted`.
 *
 * A single branch commits in one phase (no PREPARE, no log) unless the caller gave the txId (see
 * `Options.txId`); ReadOnly branches skip phase 2.
 *
 * @since 0.1.0
 */
import {
  type Clock,
  Data,
  Duration,
  Effect,
  Either,
  Fiber,
  FiberRef,
  Metric,
  MetricBoundaries,
  Option,
  Schedule
} from "effect"
import {
  type AnyParticipant,
  type AnyBranch,
  type BranchContext,
  type CommitAck,
  type Direct,
  directCall,
  OnePhaseResult,
  type RollbackAck,
  type Started,
  Vote
} from "./Participant.js"
import {
  BranchCallError,
  InvalidTransactionError,
  LogError,
  participantDefect,
  TimeoutError
} from "./TransactionError.js"
import { forEachStarted, forEachWithin } from "./internal/concurrently.js"
import * as TransactionId from "./TransactionId.js"
import { type DecisionRecord, heuristicDetail, TransactionLog } from "./TransactionLog.js"

/**
 * Bounds and retry policy of one transaction. Every wait is explicit.
 * @since 0.1.0
 */
export interface Options {
  /**
   * Use this id instead of a fresh one (it must be a ULID). A run under an id whose commit decision
   * is still in the log aborts (its work would apply twice), so such a run goes through both phases,
   * one branch included (see `onePhase`): a one-phase commit writes no decision, and a retry under
   * the same id would commit again. Still not an idempotency key once the decision is purged from
   * the log: make retries idempotent in the work itself too (a unique key, or the barrier).
   */
  readonly txId?: string
  /**
   * Whether a lone branch commits in one phase (no PREPARE, no decision). Default: when no `txId`
   * is given. `true` with a `txId` is for work that is idempotent by itself: a second run of the id
   * is then not refused.
   */
  readonly onePhase?: boolean
  /** A per-deployment gid namespace (`[a-z0-9]{1,16}`), so recovery only touches its own branches. */
  readonly namespace?: string
  /** Bound on each branch's prepare (work included). A timeout is a No vote. Default 10 s. */
  readonly prepareTimeout?: Duration.DurationInput
  /** Bound on each single commit or rollback call. Default 5 s. */
  readonly callTimeout?: Duration.DurationInput
  /** Bound on the whole transaction. Before the decision it aborts; after, it yields CommitPending. Default 30 s. */
  readonly transactionTimeout?: Duration.DurationInput
  /** Retry policy of phase-2 calls. Default: exponential from 10 ms, factor 2, jittered, capped at 1 s. */
  readonly commitSchedule?: Schedule.Schedule<unknown, BranchCallError | TimeoutError>
  /**
   * Receives each fiber the run leaves running after its outcome: an abort's rollbacks (and the
   * abort decision that fences a caller's `txId`), which go on past the deadline, each bounded by
   * `callTimeout`. Await them (`Fiber.await`) before ending the participants' pools, or those
   * branches stay prepared until recovery. The Promise facade's `dispose` does.
   */
  readonly onBackground?: (work: Fiber.RuntimeFiber<void>) => void
}

/**
 * The defaults of `Options`.
 * @since 0.1.0
 */
export const defaults = {
  prepareTimeout: Duration.seconds(10),
  callTimeout: Duration.seconds(5),
  transactionTimeout: Duration.seconds(30),
  commitSchedule: Schedule.exponential(Duration.millis(10), 2).pipe(
    Schedule.jittered,
    Schedule.union(Schedule.spaced(Duration.seconds(1)))
  )
} as const

/**
 * A branch's vote as reported in an outcome.
 * @since 0.1.0
 */
export interface BranchVote {
  readonly branch: TransactionId.BranchName
  readonly gid: TransactionId.Gid
  readonly vote: Vote
}

/**
 * A branch that ended against the decision (someone resolved it by hand).
 * @since 0.1.0
 */
export interface Heuristic {
  readonly branch: TransactionId.BranchName
  readonly gid: TransactionId.Gid
  readonly detail: string
}

/**
 * The outcome of a transaction.
 * - `Committed`: the decision is commit and every writing branch acknowledged.
 * - `CommitPending`: the decision is commit and durable; `pending` branches have not acknowledged
 *   yet. The outcome is still commit: recovery finishes it.
 * - `Aborted`: nothing was committed; `reason` names the branch and its cause. `heuristics`, when
 *   present, names branches someone committed by hand all the same.
 * @since 0.1.0
 */
export type Outcome = Data.TaggedEnum<{
  Committed: {
    readonly txId: TransactionId.TransactionId
    readonly votes: ReadonlyArray<BranchVote>
    readonly onePhase: boolean
    readonly heuristics: ReadonlyArray<Heuristic>
  }
  CommitPending: {
    readonly txId: TransactionId.TransactionId
    readonly votes: ReadonlyArray<BranchVote>
    readonly pending: ReadonlyArray<TransactionId.BranchName>
    /** Branches that acknowledged, but had been rolled back by hand (also recorded in the log). */
    readonly heuristics: ReadonlyArray<Heuristic>
  }
  Aborted: {
    readonly txId: TransactionId.TransactionId
    readonly votes: ReadonlyArray<BranchVote>
    readonly reason: string
    /**
     * Present only when a rollback found its branch committed: someone committed it by hand
     * (also recorded in the log). Those branches are the exception to "nothing was committed".
     */
    readonly heuristics?: ReadonlyArray<Heuristic>
  }
}>
/** @since 0.1.0 */
export const Outcome = Data.taggedEnum<Outcome>()

/** Transactions by outcome. @since 0.1.0 */
export const outcomes = Metric.counter("accord_2pc_outcomes_total", {
  description: "2PC transactions by outcome",
  incremental: true
})
const outcomeCounters = {
  Committed: Metric.tagged(outcomes, "outcome", "Committed"),
  CommitPending: Metric.tagged(outcomes, "outcome", "CommitPending"),
  Aborted: Metric.tagged(outcomes, "outcome", "Aborted")
} as const

/** Transaction latency. @since 0.1.0 */
export const latency = Metric.histogram(
  "accord_2pc_latency_ms",
  MetricBoundaries.exponential({ start: 0.5, factor: 2, count: 16 }),
  "2PC transaction latency in milliseconds"
)

interface Resolved {
  readonly ctx: BranchContext
  readonly participant: AnyParticipant
  readonly work: unknown
}

/**
 * Checks a transaction's branches and builds their contexts; nothing is sent.
 * @since 0.1.0
 */
export const validate = (
  branches: ReadonlyArray<AnyBranch>,
  txId: TransactionId.TransactionId,
  namespace?: string
): Either.Either<ReadonlyArray<Resolved>, InvalidTransactionError> => {
  if (!Array.isArray(branches) || branches.length === 0) {
    return Either.left(new InvalidTransactionError({ reason: "a transaction needs at least one branch" }))
  }
  if (namespace !== undefined && !TransactionId.namespacePattern.test(namespace)) {
    return Either.left(
      new InvalidTransactionError({ reason: `invalid namespace ${JSON.stringify(namespace)}` })
    )
  }
  const seen = new Set<string>()
  const resolved: Array<Resolved> = []
  for (const b of branches) {
    if (b === null || typeof b !== "object" || b.participant === undefined || b.participant === null) {
      return Either.left(new InvalidTransactionError({ reason: "a branch has no participant" }))
    }
    const name = TransactionId.parseBranchName(b.participant.name)
    if (Either.isLeft(name)) return Either.left(name.left)
    if (seen.has(name.right)) {
      return Either.left(
        new InvalidTransactionError({
          reason: `participant ${name.right} appears in two branches; put its work in one branch`
        })
      )
    }
    seen.add(name.right)
    const gid = TransactionId.validateGid(
      namespace === undefined ? `accord_${txId}_${name.right}` : `accord-${namespace}_${txId}_${name.right}`
    )
    if (Either.isLeft(gid)) return Either.left(gid.left)
    // A participant of another namespace would prepare a branch its own recovery never finds.
    if (b.participant.owns !== undefined && !b.participant.owns(gid.right)) {
      return Either.left(
        new InvalidTransactionError({
          reason: `participant ${name.right} does not own gid ${gid.right}: give the transaction the participant's namespace (${
            namespace === undefined ? "none was given" : `${namespace} was given`
          })`
        })
      )
    }
    resolved.push({
      ctx: { txId, branch: name.right, gid: gid.right },
      participant: b.participant,
      work: b.work
    })
  }
  return Either.right(resolved)
}

interface PrepareResult {
  readonly vote: Vote
  /** False when the vote is No because the call failed or timed out: the branch may still be prepared. */
  readonly definite: boolean
}

/** What each branch call answers. */
interface CallAnswer {
  readonly prepare: Vote
  readonly commitOnePhase: OnePhaseResult
  readonly commit: CommitAck
}
type BranchCall = keyof CallAnswer

/** Every branch's Promise-level `call` (see `Participant.direct`), or undefined unless all have it. */
const directOf = <K extends BranchCall>(
  resolved: ReadonlyArray<Resolved>,
  call: K
): ReadonlyArray<Direct<unknown>[K]> | undefined => {
  const calls: Array<Direct<unknown>[K]> = []
  for (const r of resolved) {
    const direct = directCall(r.participant, call)
    if (direct === undefined) return undefined
    calls.push(direct)
  }
  return calls
}

/**
 * Every branch's `call` concurrently under ONE bound: `Some` with the answer or the failure when
 * it came in time, `None` when it had not (that call was interrupted or abandoned). Promise-level
 * calls inside one `Effect.async` when every branch has them, a fiber per call otherwise.
 *
 * The hot path carries no span or timeout per branch call: on the benchmark box a span costs about
 * 25 µs, an `Effect.fn` wrapper about 40 µs and an `Effect.timeout` about 115 µs, against about
 * 110 µs of client CPU for a whole statement round trip; the run's span carries the phase timings.
 */
const callAll = <K extends BranchCall>(
  resolved: ReadonlyArray<Resolved>,
  call: K,
  bound: Duration.Duration
): Effect.Effect<Array<Option.Option<Either.Either<CallAnswer[K], BranchCallError>>>> => {
  // `commit` ignores the work it is passed; the casts only pick one member of a union by `call`.
  const direct = directOf(resolved, call) as
    | ReadonlyArray<(ctx: BranchContext, work: unknown) => Started<CallAnswer[K], BranchCallError>>
    | undefined
  if (direct !== undefined) {
    return forEachStarted(resolved, (r, i) => startGuarded(r, call, direct[i]!), bound)
  }
  return forEachWithin(
    resolved,
    (r) =>
      Effect.either(
        // Suspended: a participant method that throws instead of returning an Effect is the same
        // defect as one whose Effect dies.
        Effect.suspend(() =>
          (
            r.participant[call] as (
              ctx: BranchContext,
              work: unknown
            ) => Effect.Effect<CallAnswer[K], BranchCallError>
          )(r.ctx, r.work)
        ).pipe(
          // A bug in a participant (a defect) is a failed call, in doubt: a prepare that died is a
          // No vote whose branch is rolled back with the others, a commit that died is retried.
          Effect.catchAllDefect((defect) => Effect.fail(died(r, call, defect)))
        )
      ),
    bound
  )
}

/** A participant's defect in `call` as the failed call, in doubt, that the coordinator handles. */
const died = (r: Resolved, call: BranchCall, defect: unknown) =>
  participantDefect(r.ctx, call === "commitOnePhase" ? "onePhaseCommit" : call, defect)

/**
 * Starts a direct call so that a defect (the call throws, or its `result` rejects) is the same
 * failed call, in doubt, as its Effect twin's defect is above: a No vote whose branch is rolled back
 * with the others, a commit retried through the slow path. Without it the one participant's bug
 * killed the whole run, after the commit decision too, and left prepared branches to recovery.
 * One `catch` per call: no fiber, no timer.
 */
const startGuarded = <A>(
  r: Resolved,
  call: BranchCall,
  start: (ctx: BranchContext, work: unknown) => Started<A, BranchCallError>
): Started<A, BranchCallError> => {
  let started: Started<A, BranchCallError>
  try {
    started = start(r.ctx, r.work)
  } catch (defect) {
    return { result: Promise.resolve(Either.left(died(r, call, defect))), abandon: () => undefined }
  }
  return {
    result: started.result.catch((defect: unknown) => Either.left(died(r, call, defect))),
    abandon: started.abandon
  }
}

/**
 * A prepare's answer as a vote. A failed prepare is a No vote; the branch may still become
 * prepared, so it is rolled back with the others (`definite: false`).
 */
const toPrepareResult = (done: Either.Either<Vote, BranchCallError>): PrepareResult =>
  Either.isRight(done)
    ? { vote: done.right, definite: true }
    : { vote: Vote.No({ reason: done.left.message }), definite: false }

/**
 * Prepares every branch concurrently under one bound for the whole phase (one timer, not one per
 * branch); a branch that has not answered when it fires is interrupted and counts as No.
 */
const preparePhase = (resolved: ReadonlyArray<Resolved>, bound: Duration.Duration) =>
  Effect.map(callAll(resolved, "prepare", bound), (results) =>
    resolved.map((r, i): PrepareResult => {
      const result = results[i]!
      if (Option.isSome(result)) return toPrepareResult(result.value)
      return {
        vote: Vote.No({
          reason: new TimeoutError({
            txId: r.ctx.txId,
            branch: r.ctx.branch,
            phase: "prepare",
            millis: Duration.toMillis(bound)
          }).message
        }),
        definite: false
      }
    })
  )

/** One phase-2 call bounded by `callTimeout`, retried with `schedule` (the slow path). */
const commitBranch = (
  r: Resolved,
  callTimeout: Duration.Duration,
  schedule: Schedule.Schedule<unknown, BranchCallError | TimeoutError>
) =>
  Effect.suspend(() => r.participant.commit(r.ctx)).pipe(
    Effect.timeoutFail({
      duration: callTimeout,
      onTimeout: () =>
        new TimeoutError({
          txId: r.ctx.txId,
          branch: r.ctx.branch,
          phase: "commit",
          millis: Duration.toMillis(callTimeout)
        })
    }),
    // After the commit decision a commit that dies (a participant's bug) is retried like any
    // failed commit, until the deadline: a defect here must not end the run, which would hide
    // from the caller that the transaction commits.
    Effect.catchAllDefect((defect) => Effect.fail(died(r, "commit", defect))),
    Effect.retry(schedule),
    Effect.withSpan("TwoPhaseCommit.commitRetry", { attributes: { txId: r.ctx.txId, branch: r.ctx.branch } })
  )

/**
 * Phase 2. First attempt: every commit call concurrently under one timer of
 * `min(callTimeout, remaining)`, no per-call wrapping. The calls that failed or had not answered
 * then go through the slow path (per-call timeout and `schedule`) until the deadline.
 */
const commitPhase = (
  writers: ReadonlyArray<Resolved>,
  callTimeout: Duration.Duration,
  schedule: Schedule.Schedule<unknown, BranchCallError | TimeoutError>,
  deadline: number,
  clock: Clock.Clock
) =>
  Effect.gen(function* () {
    const now = clock.unsafeCurrentTimeMillis()
    const remaining = Duration.millis(Math.max(0, deadline - now))
    const first = yield* callAll(writers, "commit", Duration.min(callTimeout, remaining))
    const acks: Array<Option.Option<CommitAck>> = first.map((o) =>
      Option.isSome(o) && Either.isRight(o.value) ? Option.some(o.value.right) : Option.none()
    )
    const again = writers.flatMap((_, i) => (Option.isNone(acks[i]!) ? [i] : []))
    if (again.length === 0) return acks
    const left = Duration.millis(Math.max(0, deadline - clock.unsafeCurrentTimeMillis()))
    const retried = yield* forEachWithin(
      again,
      (i) => Effect.option(commitBranch(writers[i]!, callTimeout, schedule)),
      left
    )
    for (const [k, i] of again.entries()) acks[i] = Option.flatten(retried[k]!)
    return acks
  })

const rollbackBranch = (
  r: Resolved,
  callTimeout: Duration.Duration,
  schedule: Schedule.Schedule<unknown, BranchCallError | TimeoutError>
) =>
  // Retried within `callTimeout`, then left: a branch still prepared is an orphan that recovery
  // presumes aborted. The caller is not kept waiting for it.
  Effect.suspend(() => r.participant.rollback(r.ctx)).pipe(
    Effect.retry(schedule),
    Effect.timeoutOption(callTimeout),
    Effect.catchAll(() => Effect.succeed(Option.none())),
    // A rollback that dies (a participant's bug) is left to recovery like one that failed; it
    // must not turn the abort into a defect nor cut the other branches' rollbacks short.
    Effect.catchAllDefect(() => Effect.succeed(Option.none())),
    Effect.withSpan("TwoPhaseCommit.rollback", { attributes: { txId: r.ctx.txId, branch: r.ctx.branch } })
  )

const onePhase = (r: Resolved, timeout: Duration.Duration) =>
  Effect.gen(function* () {
    const done = (yield* callAll([r], "commitOnePhase", timeout))[0]!
    if (Option.isNone(done)) {
      // The COMMIT may have been sent: the outcome is unknown, not failed.
      return yield* new BranchCallError({
        txId: r.ctx.txId,
        branch: r.ctx.branch,
        phase: "onePhaseCommit",
        reason: `no answer within ${Duration.format(timeout)}`,
        inDoubt: true
      })
    }
    const result = yield* done.value
    const committed = (vote: Vote) =>
      Outcome.Committed({
        txId: r.ctx.txId,
        votes: [{ branch: r.ctx.branch, gid: r.ctx.gid, vote }],
        onePhase: true,
        heuristics: []
      })
    return OnePhaseResult.$match(result, {
      Committed: () => committed(Vote.Prepared()),
      // Reported as the two-phase path reports a branch that changed nothing.
      ReadOnly: () => committed(Vote.ReadOnly()),
      No: ({ reason, sqlState }) =>
        Outcome.Aborted({
          txId: r.ctx.txId,
          votes: [{ branch: r.ctx.branch, gid: r.ctx.gid, vote: Vote.No({ reason, sqlState }) }],
          reason: `${r.ctx.branch}: ${reason}`
        })
    })
  })

/**
 * Writes the commit decision; a failed write is retried because the insert may have landed
 * (the first writer wins, so a retry returns whichever decision holds). The retry machinery is
 * only built after a failure. The write and its retries are bounded by the transaction's deadline:
 * a log that does not answer (its connection hung) fails the run with `LogError` at the deadline
 * instead of holding it for ever; the decision may or may not have been written, so the branches
 * stay prepared and recovery decides (it finds the decision, or presumes abort). This is on every
 * transaction's path, so the first write's bound is one `setTimeout` under the live clock, no
 * racing fibers: `forEachStarted` over the log's Promise-level `decide` when it has one (no fiber
 * at all), else `forEachWithin` (one fork, about 18 µs of CPU on the benchmark box).
 */
const decideCommit = (record: DecisionRecord, deadline: number) =>
  Effect.flatMap(TransactionLog, (log) =>
    decideWithin(log, record, deadline).pipe(
      // A log's bug (a defect) at the commit point: the decision may or may not have been written,
      // as when the log does not answer; the run fails with `LogError` and recovery decides.
      Effect.catchAllDefect((defect) =>
        Effect.fail(
          new LogError({
            operation: "decide",
            txId: record.txId,
            reason: `the log failed unexpectedly: ${defect instanceof Error ? defect.message : String(defect)}; the commit decision may or may not have been written; recovery decides`
          })
        )
      )
    )
  )

const decideWithin = (log: TransactionLog["Type"], record: DecisionRecord, deadline: number) =>
  Effect.flatMap(Effect.clock, (clock) => {
    const unanswered = (millis: number) =>
      new LogError({
        operation: "decide",
        txId: record.txId,
        reason: `no answer within ${millis} ms (the transaction's deadline): the commit decision may or may not have been written; recovery decides`
      })
    const bound = Math.max(1, deadline - clock.unsafeCurrentTimeMillis())
    const direct = log.direct !== undefined && log.direct.twins.decide === log.decide ? log.direct : undefined
    return Effect.flatMap(
      direct !== undefined
        ? forEachStarted([record], (r) => direct.decide(r), Duration.millis(bound))
        : forEachWithin([record], (r) => Effect.either(log.decide(r)), Duration.millis(bound)),
      ([answer]) => {
        if (answer === undefined || Option.isNone(answer)) return Effect.fail(unanswered(bound))
        if (Either.isRight(answer.value)) return Effect.succeed(answer.value.right)
        const first = answer.value.left
        const now = clock.unsafeCurrentTimeMillis()
        if (deadline <= now) return Effect.fail(first)
        // Each retry bounded by what is left, so a hung attempt ends at the deadline too; an
        // attempt that fails keeps its own error when the schedule gives up.
        const attempt = Effect.suspend(() => {
          const left = Math.max(1, deadline - clock.unsafeCurrentTimeMillis())
          return log
            .decide(record)
            .pipe(Effect.timeoutFail({ duration: Duration.millis(left), onTimeout: () => unanswered(left) }))
        })
        return attempt.pipe(
          Effect.retry(
            Schedule.exponential(Duration.millis(10), 2).pipe(
              Schedule.jittered,
              Schedule.upTo(Duration.millis(deadline - now))
            )
          )
        )
      }
    )
  })

/**
 * Marks the transaction complete, bounded by its deadline (at least 1 ms, so it is sent): a log
 * that does not answer must not hold the outcome, which is known already. A completion not written
 * leaves the decision unfinished, and recovery re-drives its idempotent phase 2. On every committed
 * transaction's path, so through the log's Promise-level `complete` when it has one (one timer, no
 * fiber), else one fork.
 */
const completeWithin = (
  log: TransactionLog["Type"],
  txId: TransactionId.TransactionId,
  deadline: number,
  clock: Clock.Clock
): Effect.Effect<void> => {
  const bound = Duration.millis(Math.max(1, deadline - clock.unsafeCurrentTimeMillis()))
  const direct = log.direct
  // A log's bug (a defect) here is a completion not written, like a failed one: the outcome is
  // known already and must not turn into a rejection.
  return (
    direct?.complete !== undefined && direct.twins.complete === log.complete
      ? Effect.asVoid(forEachStarted([txId], direct.complete, bound))
      : Effect.asVoid(
          forEachWithin([txId], (t) => Effect.either(Effect.suspend(() => log.complete(t))), bound)
        )
  ).pipe(Effect.catchAllDefect(() => Effect.void))
}

/**
 * Whether the decision that holds is this run's own record, read back (after a write that failed
 * but landed): the same moment and the same branches.
 */
const isSameDecision = (held: DecisionRecord, own: DecisionRecord): boolean =>
  held.decidedAt === own.decidedAt &&
  held.branches.length === own.branches.length &&
  held.branches.every((b, i) => b.gid === own.branches[i]!.gid)

/**
 * Runs one global transaction with two-phase commit.
 *
 * Fails only with invalid input (nothing sent), an in-doubt one-phase commit, or a log that
 * cannot be written at the commit point (the branches stay prepared; recovery resolves them).
 * @since 0.1.0
 */
export const run = (
  branches: ReadonlyArray<AnyBranch>,
  options: Options = {}
): Effect.Effect<Outcome, InvalidTransactionError | BranchCallError | LogError, TransactionLog> =>
  Effect.tracerWith((tracer) =>
    tracer === builtInTracer
      ? runTransaction(branches, options, false)
      : Effect.withSpan(runTransaction(branches, options, true), "TwoPhaseCommit.run", {
          captureStackTrace: false
        })
  )

/**
 * Effect's built-in tracer, whose spans go nowhere. Under it the run makes no span: on the benchmark
 * box the span cost about 100 µs of client CPU per transaction (8% of a two-branch transfer) for
 * nothing. Any other tracer (`@effect/opentelemetry`, `Effect.withTracer`) gets the span.
 */
const builtInTracer = Effect.runSync(Effect.tracer)

const runTransaction = Effect.fnUntraced(function* (
  branches: ReadonlyArray<AnyBranch>,
  options: Options,
  traced: boolean
) {
  const clock = yield* Effect.clock
  const started = clock.unsafeCurrentTimeMillis()
  const txId =
    options.txId === undefined
      ? yield* TransactionId.make
      : yield* TransactionId.parseTransactionId(options.txId)
  const resolved = yield* validate(branches, txId, options.namespace)
  if (traced) {
    yield* Effect.annotateCurrentSpan({ txId, branches: resolved.map((r) => r.ctx.branch).join(",") })
  }
  const prepareTimeout = Duration.decode(options.prepareTimeout ?? defaults.prepareTimeout)
  const callTimeout = Duration.decode(options.callTimeout ?? defaults.callTimeout)
  const transactionTimeout = Duration.decode(options.transactionTimeout ?? defaults.transactionTimeout)
  const schedule = options.commitSchedule ?? defaults.commitSchedule
  const deadline = started + Duration.toMillis(transactionTimeout)

  // Phase timings and the abort reason, written to the span with the outcome in one step. A run
  // that fails instead (a log that cannot be written at the commit point) ends its span with the
  // error, its txId and branches, without these.
  const timings: Record<string, string | number> = {}
  const finish = (outcome: Outcome) =>
    Effect.withFiberRuntime<Outcome>((fiber) => {
      const ms = clock.unsafeCurrentTimeMillis() - started
      // What `annotateCurrentSpan`, `Metric.increment` and `Metric.update` do, as one operation:
      // each of those is several fiber steps, on every transaction's path.
      const span = traced ? fiber.currentSpan : undefined
      if (span?._tag === "Span") {
        for (const [key, value] of Object.entries(timings)) span.attribute(key, value)
        span.attribute("outcome", outcome._tag)
        span.attribute("ms", ms)
      }
      const labels = fiber.getFiberRef(FiberRef.currentMetricLabels)
      outcomeCounters[outcome._tag].unsafeUpdate(1, labels)
      latency.unsafeUpdate(ms, labels)
      return Effect.succeed(outcome)
    })

  // One phase writes no decision: under a txId the caller gave (a retry, perhaps), both phases by
  // default, so that the marker or the log's first-writer-wins decision refuses a second run.
  if (resolved.length === 1 && (options.onePhase ?? options.txId === undefined)) {
    return yield* finish(yield* onePhase(resolved[0]!, Duration.min(prepareTimeout, transactionTimeout)))
  }

  const prepareBound = Duration.min(prepareTimeout, transactionTimeout)
  const prepared = yield* preparePhase(resolved, prepareBound)
  timings.prepareMs = clock.unsafeCurrentTimeMillis() - started
  const votes: ReadonlyArray<BranchVote> = resolved.map((r, i) => ({
    branch: r.ctx.branch,
    gid: r.ctx.gid,
    vote: prepared[i]!.vote
  }))
  const refused = votes.find((v) => v.vote._tag === "No")

  const abort = (why: string) =>
    Effect.gen(function* () {
      let reason = why
      // Branches that refused definitely rolled back themselves; the rest may be prepared.
      const toRollBack = resolved.filter(
        (_, i) => prepared[i]!.vote._tag === "Prepared" || !prepared[i]!.definite
      )
      // A branch whose prepare has no definite answer is rolled back by its gid, which is built
      // from the txId. Under a txId the caller gave, an earlier run of the same txId (a retry after
      // a crash or an unanswered decision) may hold that gid prepared under its logged commit
      // decision, and this run's prepare timed out waiting on its locks: rolling the gid back would
      // undo a committed transaction. So an abort decision is written first (first writer wins,
      // as recovery does): if it holds, nothing under this txId commits and the gids are rolled
      // back; if a commit decision holds instead, or the log does not answer, those branches are
      // left to that decision and recovery.
      const uncertain = resolved.filter(
        (_, i) => prepared[i]!.vote._tag !== "Prepared" && !prepared[i]!.definite
      )
      // Both the abort decision and the rollbacks run on past the deadline (see below): the outcome
      // waits for them at most until the transaction's deadline (and at most `callTimeout`), so an
      // unanswered call does not hold it past `transactionTimeout`, but none is cut at that bound.
      // Each runs on a daemon fiber, bounded by `callTimeout` with its retries, and is answered, so
      // a branch is not left prepared, holding its row locks until recovery, because its rollback
      // (or the decision that fences it) was sent just as the deadline passed (an abort at a
      // prepare bound equal to the deadline, the Promise facade's default, left 1 ms: the
      // `ROLLBACK PREPARED` was cancelled and the branch stayed prepared for `orphanAfter`). A
      // coordinator that dies takes them with it; a branch still prepared after that is an orphan
      // that recovery presumes aborted, or, fenced, an abort decision that recovery finishes.
      const fencing = options.txId !== undefined && uncertain.length > 0
      // Each answer kept as it comes, so those in before the bound count even if others are not.
      const acks: Array<RollbackAck | undefined> = toRollBack.map(() => undefined)
      const log = yield* TransactionLog
      // A branch found committed although the decision is abort (committed by hand) is recorded
      // for operators by its rollback's own fiber, bounded by `callTimeout`: one answered after the
      // outcome is recorded too (recovery could not find it: its gid is gone). Those answered in
      // time are also reported in the outcome, as a heuristic rollback is after a commit decision.
      const detail = heuristicDetail.abort
      // Heuristic records not written yet, or lost: the abort decision is then not completed, so
      // that recovery drives the branch again and records it (as on the commit path).
      let unrecorded = 0
      const rollback = (r: Resolved, i: number) =>
        Effect.flatMap(rollbackBranch(r, callTimeout, schedule), (ack) => {
          if (Option.isNone(ack)) return Effect.void
          acks[i] = ack.value
          if (ack.value !== "HeuristicCommit") return Effect.void
          unrecorded++
          return log
            .recordHeuristic({ txId, branch: r.ctx.branch, gid: r.ctx.gid, decision: "abort", detail })
            .pipe(
              Effect.timeoutOption(callTimeout),
              Effect.flatMap((done) =>
                Effect.sync(() => {
                  if (Option.isSome(done)) unrecorded--
                })
              ),
              Effect.ignore,
              Effect.catchAllDefect(() => Effect.void)
            )
        })
      // The fence's answer: undefined while it has none.
      let fence: Option.Option<DecisionRecord> | undefined
      const rolling: Array<Fiber.RuntimeFiber<void>> = []
      for (const [i, r] of toRollBack.entries()) {
        if (!(fencing && uncertain.includes(r))) rolling.push(yield* Effect.forkDaemon(rollback(r, i)))
      }
      if (fencing) {
        const record: DecisionRecord = {
          txId,
          decision: "abort",
          branches: toRollBack.map((r) => ({ branch: r.ctx.branch, gid: r.ctx.gid })),
          decidedAt: clock.unsafeCurrentTimeMillis()
        }
        rolling.push(
          yield* Effect.forkDaemon(
            Effect.gen(function* () {
              const held = yield* log.decide(record).pipe(
                Effect.timeoutOption(callTimeout),
                Effect.orElseSucceed(() => Option.none()),
                Effect.catchAllDefect(() => Effect.succeed(Option.none()))
              )
              fence = held
              if (Option.isSome(held) && held.value.decision === "abort") {
                yield* Effect.forEach(
                  toRollBack,
                  (r, i) => (uncertain.includes(r) ? rollback(r, i) : Effect.void),
                  { concurrency: "unbounded", discard: true }
                )
              }
            })
          )
        )
      }
      if (options.onBackground !== undefined) for (const fiber of rolling) options.onBackground(fiber)
      const left = Duration.millis(Math.max(1, deadline - clock.unsafeCurrentTimeMillis()))
      yield* Effect.timeoutOption(Fiber.awaitAll(rolling), Duration.min(callTimeout, left))
      const fenced = fence !== undefined && Option.isSome(fence) && fence.value.decision === "abort"
      if (fencing && !fenced) {
        const names = uncertain.map((r) => r.ctx.branch).join(", ")
        reason =
          fence === undefined
            ? `${reason}; ${names} not rolled back yet: the abort decision that fences an earlier run of transaction id ${txId} had no answer by the deadline: they are rolled back if it holds, else recovery decides`
            : `${reason}; ${names} not rolled back: ${
                Option.isSome(fence)
                  ? `transaction id ${txId} has a commit decision from an earlier run, whose branches these gids may be`
                  : "the log did not answer the abort decision, so an earlier run of this transaction id may hold these gids; recovery decides"
              }`
      }
      const heuristics: Array<Heuristic> = toRollBack
        .filter((_, i) => acks[i] === "HeuristicCommit")
        .map((r) => ({ branch: r.ctx.branch, gid: r.ctx.gid, detail }))
      if (fenced && unrecorded === 0 && acks.every((a) => a !== undefined)) {
        yield* completeWithin(log, txId, deadline, clock)
      }
      timings.aborted = reason
      return yield* finish(
        Outcome.Aborted(
          heuristics.length === 0 ? { txId, votes, reason } : { txId, votes, reason, heuristics }
        )
      )
    })

  if (refused !== undefined) {
    return yield* abort(`${refused.branch}: ${(refused.vote as Extract<Vote, { _tag: "No" }>).reason}`)
  }
  const writers = resolved.filter((_, i) => prepared[i]!.vote._tag === "Prepared")
  if (writers.length === 0) {
    return yield* finish(Outcome.Committed({ txId, votes, onePhase: false, heuristics: [] }))
  }
  if (clock.unsafeCurrentTimeMillis() >= deadline) {
    return yield* abort(
      `transaction timed out after ${Duration.format(transactionTimeout)} before its decision`
    )
  }

  const decidedAt = clock.unsafeCurrentTimeMillis()
  const record: DecisionRecord = {
    txId,
    decision: "commit",
    branches: writers.map((r) => ({ branch: r.ctx.branch, gid: r.ctx.gid })),
    decidedAt
  }
  const decision = yield* decideCommit(record, deadline)
  if (decision.decision === "abort") {
    return yield* abort(
      "an abort decision holds for this transaction id: recovery presumed it aborted before its commit decision was written, or a run under the same id aborted"
    )
  }
  if (decision !== record && !isSameDecision(decision, record)) {
    // The first writer won, and it was not this run: `txId` (given in `options`) was used before
    // and its commit decision is not this run's. Committing under it would apply the work twice
    // (recovery rolls such branches back as duplicates), so this run's branches are rolled back.
    return yield* abort(
      `transaction id ${txId} already has a commit decision from an earlier run; use a fresh id for each transaction`
    )
  }

  // Phase 2: from here the outcome is commit, whatever happens.
  timings.decideMs = clock.unsafeCurrentTimeMillis() - decidedAt
  const acks = yield* commitPhase(writers, callTimeout, schedule, deadline, clock)
  const pending = writers.filter((_, i) => Option.isNone(acks[i]!)).map((r) => r.ctx.branch)
  const log = yield* TransactionLog
  const heuristics: Array<Heuristic> = []
  // A heuristic that could not be recorded by the deadline keeps the decision incomplete: recovery
  // then drives the branch again, finds its gid gone without its marker, and records it.
  let recorded = true
  for (const [i, r] of writers.entries()) {
    const ack = acks[i]!
    if (Option.isSome(ack) && ack.value === "HeuristicRollback") {
      const detail = heuristicDetail.commit
      heuristics.push({ branch: r.ctx.branch, gid: r.ctx.gid, detail })
      const done = yield* log
        .recordHeuristic({ txId, branch: r.ctx.branch, gid: r.ctx.gid, decision: "commit", detail })
        .pipe(
          Effect.timeoutOption(Duration.millis(Math.max(1, deadline - clock.unsafeCurrentTimeMillis()))),
          Effect.orElseSucceed(() => Option.none()),
          Effect.catchAllDefect(() => Effect.succeed(Option.none()))
        )
      if (Option.isNone(done)) recorded = false
    }
  }
  if (pending.length > 0) {
    return yield* finish(Outcome.CommitPending({ txId, votes, pending, heuristics }))
  }
  // Not forced: if it is lost, recovery re-drives the commits, which are idempotent.
  if (recorded) yield* completeWithin(log, txId, deadline, clock)
  return yield* finish(Outcome.Committed({ txId, votes, onePhase: false, heuristics }))
})
