/**
 * The orchestrator: places the run's orders as sagas, `concurrency` at a time, over a Postgres saga log.
 *
 * On (re)start it asks the log which of the run's orders it already knows. Those were started by an
 * orchestrator that died: a background sweep claims them once their lease has expired and drives
 * them to their end. The others are placed now. The run is over when every order's saga has ended;
 * the tally is read back from the log. A start the log did not record is tried again (a bounded
 * schedule); an order that still could not be started is reported as not started, not dropped.
 * With `retryStuck`, every saga the log holds as stuck when it starts (any run's on this saga log) is
 * retried first; the CLI sets it for a run's first orchestrator only (see `Run.run`).
 *
 * @since 0.1.0
 */
import { Saga, SagaLog } from "@accord/core"
import { PgSagaLog } from "@accord/postgres"
import { Data, Duration, Effect, Either, Fiber, Option, Schedule } from "effect"
import { dbTarget, type RunConfig } from "./Config.js"
import * as Database from "./Database.js"
import type { Endpoint } from "./Http.js"
import * as OrderSaga from "./OrderSaga.js"
import * as Plan from "./Plan.js"
import { worldOf } from "./Services.js"

/**
 * How one order ended (or not).
 * @since 0.1.0
 */
export type OrderStatus = "completed" | "compensated" | "stuck" | "pending"

/**
 * The orchestrator's account of a run, read from the saga log.
 * @since 0.1.0
 */
export interface Tally {
  readonly completed: number
  readonly compensated: number
  readonly stuck: number
  readonly pending: number
  /** Compensated orders by cause ("out of stock", "card declined", "shipping timeout", ...). */
  readonly causes: Readonly<Record<string, number>>
  /**
   * Sagas finished through the sweep: those a dead orchestrator left, and this one's own whose
   * drive failed mid-saga (the log unreachable, the lease lost) and that the sweep took over.
   */
  readonly resumed: number
  /** Requests the transport delivered twice. */
  readonly duplicatesSent: number
  readonly stuckSagas: ReadonlyArray<StuckSaga>
  /**
   * Orders of this run the saga log does not know: their start was never recorded (the log kept
   * failing), so nothing of them ran. Not counted as pending.
   */
  readonly notStarted: ReadonlyArray<{ readonly orderId: string; readonly cause: string }>
  /**
   * Sagas not of this run the log holds as stuck (earlier runs', or a concurrent run's on the same
   * saga log): their effects keep the invariants from holding until they are retried
   * (`--retry-stuck`) or resolved by hand.
   */
  readonly earlierStuck: ReadonlyArray<StuckSaga>
  /**
   * With `retryStuck`: the sagas the log held as stuck when this orchestrator started, retried before
   * it placed any order, and how each ended (or why not). `Run.run` reports the first orchestrator's
   * (the only one that retries) through `Listener.retried`, so a killed one's are not lost.
   */
  readonly retriedStuck: ReadonlyArray<{ readonly sagaId: string; readonly result: string }>
}

/**
 * A saga that ended stuck: which step, and why.
 * @since 0.1.0
 */
export interface StuckSaga {
  readonly sagaId: string
  readonly step: string
  readonly cause: string
}

/**
 * Progress callbacks.
 * @since 0.1.0
 */
export interface Listener {
  readonly started?: (orderId: string) => void
  readonly finished?: (orderId: string, status: OrderStatus, resumed: boolean) => void
  /** The transport delivered a request twice. */
  readonly duplicated?: () => void
  /** With `retryStuck`: a stuck saga was retried (`result` as in `Tally.retriedStuck`). */
  readonly retried?: (sagaId: string, result: string) => void
}

const statusOf = (outcome: Saga.Outcome): OrderStatus =>
  outcome._tag === "Completed" ? "completed" : outcome._tag === "Compensated" ? "compensated" : "stuck"

/**
 * How often a failed saga log call is tried again: a read (the orchestrator's own `load`/`list`) or a
 * start the log did not record. A dropped connection (the server restarted, a backend terminated)
 * is reconnected by the next try; about 10 s in all, then the failure stands.
 */
const logRetry = Schedule.exponential(Duration.millis(100), 2).pipe(
  Schedule.union(Schedule.spaced(Duration.seconds(2))),
  Schedule.jittered,
  Schedule.intersect(Schedule.recurs(8))
)

/** The log does not know the order: its start was not recorded, nothing of it ran. */
class NotStartedError extends Data.TaggedError("NotStartedError")<{
  readonly orderId: string
  readonly reason: string
}> {}

/**
 * The run's orders (the same in every process for the same configuration).
 * @since 0.1.0
 */
export const planOf = (config: RunConfig): ReadonlyArray<Plan.OrderInput> => {
  const { products, customers } = worldOf(config)
  return Plan.orders({ seed: config.seed, runId: config.runId, count: config.orders, products, customers })
}

/**
 * Runs (or resumes) the run's orders to their end and returns the tally from the log.
 * @since 0.1.0
 */
export const run = (
  config: RunConfig,
  endpoints: Readonly<Record<"orders" | "inventory" | "payment" | "shipping", Endpoint>>,
  listener: Listener = {}
): Promise<Tally> =>
  Effect.runPromise(
    Effect.scoped(
      Effect.gen(function* () {
        const db = yield* Effect.acquireRelease(
          Effect.promise(() => Database.open(dbTarget(config, "saga"))),
          (db) => Effect.promise(() => db.close())
        )
        const conn = db.driver.kind === "pglite" ? db.driver.db : db.driver.sql
        const log = yield* PgSagaLog.make(conn)
        return yield* place(config, endpoints, listener).pipe(Effect.provideService(SagaLog.SagaLog, log))
      })
    )
  )

/**
 * Places (or resumes) the run's orders over the `SagaLog` in context and returns the tally from it.
 * @since 0.1.0
 */
export const place = Effect.fn("Orchestrator.place")(function* (
  config: RunConfig,
  endpoints: Readonly<Record<"orders" | "inventory" | "payment" | "shipping", Endpoint>>,
  listener: Listener
) {
  const log = yield* SagaLog.SagaLog
  let duplicatesSent = 0
  const saga = OrderSaga.make(
    {
      endpoints,
      duplicateRate: config.faults.duplicateRate,
      random: Plan.random(config.seed * 7919 + process.pid),
      onDuplicate: () => {
        duplicatesSent++
        listener.duplicated?.()
      }
    },
    config.timing
  )
  const registry = Saga.registry([saga])
  // Two owners, not one: if a saga's lease runs out while this process is still driving it (a stall
  // longer than the lease), the sweep below may claim it. With distinct owners the log's fencing
  // then stops the first driver (LeaseLostError); with one owner both would drive the same saga.
  const owner = `orchestrator-${process.pid}-${Date.now().toString(36)}`
  const sweepOwner = `${owner}-sweep`
  const leaseFor = Duration.millis(config.timing.leaseMillis)
  const orders = planOf(config)
  const planned = new Set(orders.map((o) => o.orderId))

  // The orchestrator's own reads of the log: a transient failure is tried again, not the end of the run.
  const load = (sagaId: string) => log.load(sagaId).pipe(Effect.retry(logRetry))

  // --retry-stuck: a stuck saga (a compensation gave up) holds its order's effects until an operator
  // acts; retried here with fresh retries, before this run's orders. Every saga the log holds as stuck
  // now, whichever run it belongs to (a live run's on the same log too: the log's claims keep a saga
  // from being driven twice, yet the retry acts on that run's orders; the docs say not to). Each result
  // is told to the listener as it comes: this process may be killed before its tally is sent.
  const retriedStuck: Array<{ sagaId: string; result: string }> = []
  if (config.retryStuck) {
    const stuck = yield* log.list({ status: "stuck" }).pipe(Effect.retry(logRetry))
    yield* Effect.forEach(
      stuck,
      (history) =>
        Saga.retryStuck(registry, history.sagaId, { owner, leaseFor, note: "order-saga --retry-stuck" }).pipe(
          Effect.map((outcome): string => statusOf(outcome)),
          Effect.catchAll((error) => Effect.succeed(`not retried: ${error.message}`)),
          Effect.tap((result) =>
            Effect.sync(() => {
              retriedStuck.push({ sagaId: history.sagaId, result })
              listener.retried?.(history.sagaId, result)
            }).pipe(Effect.zipRight(Effect.logInfo(`--retry-stuck: saga ${history.sagaId}: ${result}`)))
          )
        ),
      { concurrency: config.concurrency, discard: true }
    )
  }

  // Which orders did a previous orchestrator already start?
  const known = new Set<string>()
  for (const order of orders) {
    const history = yield* load(order.orderId)
    if (Option.isNone(history)) continue
    known.add(order.orderId)
    listener.started?.(order.orderId)
    const ended = Saga.replay(history.value.records).ended
    if (Option.isSome(ended)) listener.finished?.(order.orderId, statusOf(ended.value), false)
  }

  let resumed = 0
  // Abandoned sagas (a dead orchestrator's, whose lease expired) are claimed and finished here.
  const sweeper = yield* Saga.sweep(registry, {
    owner: sweepOwner,
    leaseFor,
    concurrency: config.concurrency
  }).pipe(
    Effect.tap((outcomes) =>
      Effect.sync(() => {
        for (const outcome of outcomes) {
          resumed++
          if (planned.has(outcome.sagaId)) listener.finished?.(outcome.sagaId, statusOf(outcome), true)
        }
      })
    ),
    Effect.catchAll((error) => Effect.logWarning(`sweep failed: ${error.message}`)),
    Effect.repeat(Schedule.spaced(Duration.millis(Math.max(50, config.timing.leaseMillis / 4)))),
    Effect.fork
  )

  // One try at running an order's saga. When it fails, the log says whether its start was recorded:
  // if it was, the saga stays in the log as running and the sweep below picks it up once its lease
  // expires (log unreachable mid-saga, lease lost). If it was not (Saga.run does not retry its start
  // write), nothing of it ran and starting it again is safe: `NotStartedError`. A log that cannot be
  // read counts as not recorded: a start that did land makes the next try fail with SagaBusyError,
  // which says the saga is in the log.
  const runOnce = (order: Plan.OrderInput) =>
    Saga.run(saga, order, { sagaId: order.orderId, owner, leaseFor }).pipe(
      Effect.map(Option.some),
      Effect.catchAll((error) =>
        (error._tag === "SagaBusyError"
          ? Effect.succeed(true)
          : log.load(order.orderId).pipe(
              // Bounded: the log just failed to answer within the lease, and may not answer at all.
              Effect.timeout(leaseFor),
              Effect.either,
              Effect.map((loaded) => Either.isRight(loaded) && Option.isSome(loaded.right))
            )
        ).pipe(
          Effect.flatMap((recorded) =>
            recorded
              ? Effect.as(
                  Effect.logWarning(
                    `saga ${order.orderId}: ${error.message} (it stays in the log as running: the sweep finishes it)`
                  ),
                  Option.none()
                )
              : Effect.fail(new NotStartedError({ orderId: order.orderId, reason: error.message }))
          )
        )
      )
    )
  const notStartedCause = new Map<string, string>()
  yield* Effect.forEach(
    orders.filter((o) => !known.has(o.orderId)),
    (order) =>
      Effect.sync(() => listener.started?.(order.orderId)).pipe(
        Effect.zipRight(runOnce(order).pipe(Effect.retry(logRetry))),
        Effect.tap((outcome) =>
          Option.isSome(outcome)
            ? Effect.sync(() => listener.finished?.(order.orderId, statusOf(outcome.value), false))
            : Effect.void
        ),
        // Still not started after the retries: reported as such in the tally, not lost.
        Effect.catchAll((error) =>
          Effect.sync(() => notStartedCause.set(order.orderId, error.reason)).pipe(
            Effect.zipRight(
              Effect.logWarning(
                `order ${order.orderId}: its start was not confirmed after the retries (the log could not be read, or did not have it; the final tally says whether it was started): ${error.reason}`
              )
            )
          )
        )
      ),
    { concurrency: config.concurrency, discard: true }
  )

  // Wait for the sweep to finish every saga still running (ours are done; the dead one's remain).
  yield* log.list({ status: "running" }).pipe(
    // One failed poll (a dropped connection) is tried again: it ended the run with sagas running.
    Effect.retry(logRetry),
    Effect.repeat({
      until: (running) => running.length === 0,
      schedule: Schedule.spaced(Duration.millis(100))
    }),
    // Bounded: what is still running then is reported as pending, not waited for forever.
    Effect.timeoutOption(Duration.millis(config.timing.leaseMillis * 4 + 60_000))
  )
  yield* Fiber.interrupt(sweeper)

  const statuses: Record<OrderStatus, number> = { completed: 0, compensated: 0, stuck: 0, pending: 0 }
  const causes: Record<string, number> = {}
  const stuckSagas: Array<StuckSaga> = []
  const notStarted: Array<{ orderId: string; cause: string }> = []
  for (const order of orders) {
    const history = yield* load(order.orderId)
    if (Option.isNone(history)) {
      notStarted.push({
        orderId: order.orderId,
        cause: notStartedCause.get(order.orderId) ?? "its start is not in the saga log"
      })
      continue
    }
    const ended = Saga.replay(history.value.records).ended
    if (Option.isNone(ended)) {
      statuses.pending++
      continue
    }
    const outcome = ended.value
    statuses[statusOf(outcome)]++
    const cause = OrderSaga.causeOf(outcome)
    if (cause !== undefined) causes[cause] = (causes[cause] ?? 0) + 1
    if (outcome._tag === "Stuck")
      stuckSagas.push({ sagaId: outcome.sagaId, step: outcome.step, cause: outcome.cause })
  }
  // Stuck sagas not of this run (earlier runs', or a concurrent run's on the same log): this run's tally
  // does not count them, yet their orders' effects make the invariants fail; the summary names them.
  const earlierStuck: Array<StuckSaga> = []
  for (const stuck of yield* log.list({ status: "stuck" }).pipe(Effect.retry(logRetry))) {
    if (planned.has(stuck.sagaId)) continue
    const history = yield* load(stuck.sagaId)
    const ended = Option.flatMap(history, (h) => Saga.replay(h.records).ended)
    if (Option.isSome(ended) && ended.value._tag === "Stuck")
      earlierStuck.push({ sagaId: stuck.sagaId, step: ended.value.step, cause: ended.value.cause })
  }
  return {
    ...statuses,
    causes,
    resumed,
    duplicatesSent,
    stuckSagas,
    notStarted,
    earlierStuck,
    retriedStuck
  } satisfies Tally
})
