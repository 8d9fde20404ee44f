/**
 * The orchestrator: places the run's orders as sagas, `concurrency` at a time, over a Postgres saga log.
 *
 * On (re)start it asks the log which of the run's orders it already knows. Those were started by an
 * orchestrator that died: a background sweep claims them once their lease has expired and drives
 * them to their end. The others are placed now. The run is over when every order's saga has ended;
 * the tally is read back from the log.
 *
 * @since 0.1.0
 */
import { Saga, SagaLog } from "@accord/core"
import { PgSagaLog } from "@accord/postgres"
import { Duration, Effect, Fiber, Option, Schedule } from "effect"
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
  /** Sagas this orchestrator finished for a dead one (through the sweep). */
  readonly resumed: number
  /** Requests the transport delivered twice. */
  readonly duplicatesSent: number
  readonly stuckSagas: ReadonlyArray<{
    readonly sagaId: string
    readonly step: string
    readonly cause: string
  }>
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
}

const statusOf = (outcome: Saga.Outcome): OrderStatus =>
  outcome._tag === "Completed" ? "completed" : outcome._tag === "Compensated" ? "compensated" : "stuck"

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

const place = Effect.fn("Orchestrator.place")(function* (
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

  // Which orders did a previous orchestrator already start?
  const known = new Set<string>()
  for (const order of orders) {
    const history = yield* log.load(order.orderId)
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

  yield* Effect.forEach(
    orders.filter((o) => !known.has(o.orderId)),
    (order) =>
      Effect.sync(() => listener.started?.(order.orderId)).pipe(
        Effect.zipRight(Saga.run(saga, order, { sagaId: order.orderId, owner, leaseFor })),
        Effect.tap((outcome) =>
          Effect.sync(() => listener.finished?.(order.orderId, statusOf(outcome), false))
        ),
        // A saga that could not run to its end here (log unreachable, lease lost) stays in the log as
        // running: the sweep below picks it up once its lease expires.
        Effect.catchAll((error) => Effect.logWarning(`saga ${order.orderId}: ${error.message}`))
      ),
    { concurrency: config.concurrency, discard: true }
  )

  // Wait for the sweep to finish every saga still running (ours are done; the dead one's remain).
  yield* log.list({ status: "running" }).pipe(
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
  const stuckSagas: Array<{ sagaId: string; step: string; cause: string }> = []
  for (const order of orders) {
    const history = yield* log.load(order.orderId)
    const ended = Option.flatMap(history, (h) => Saga.replay(h.records).ended)
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
  return { ...statuses, causes, resumed, duplicatesSent, stuckSagas } satisfies Tally
})
