/**
 * The order saga: create the order, then reserve stock and charge the card in parallel, then schedule
 * shipping (the pivot), then capture the charge, ship the stock and complete the order in parallel.
 *
 * ```
 * create-order ─┬─ reserve-stock ─┬─ schedule-shipping (pivot) ─┬─ capture-payment
 *               └─ charge-payment ┘                              ├─ ship-stock
 *                                                                └─ complete-order
 * ```
 * Before the pivot any failure compensates what ran (cancel order, release stock, refund, cancel
 * shipment); after it the saga only goes forward. Every call carries the step's idempotency key, and
 * every service runs it through its barrier: at-least-once delivery, effect exactly once.
 *
 * @since 0.1.0
 */
import { Saga } from "@accord/core"
import { Duration, Effect, Schedule } from "effect"
import type { Timing } from "./Config.js"
import * as Http from "./Http.js"
import type { OrderInput } from "./Plan.js"

/**
 * The saga type name (the log resumes sagas by it).
 * @since 0.1.0
 */
export const sagaType = "place-order"

/**
 * The services' base URLs and the transport's fault settings.
 * @since 0.1.0
 */
export interface Transport {
  readonly endpoints: Readonly<Record<"orders" | "inventory" | "payment" | "shipping", Http.Endpoint>>
  readonly duplicateRate: number
  readonly random: () => number
  readonly onDuplicate?: () => void
}

/**
 * Reads a call's failure as a step failure: a business refusal is definite (not compensated), an
 * answer saying the service rolled back is transient (the step did not act), and anything in doubt
 * (no answer, or the service lost its database with the COMMIT possibly sent) is in doubt: retried,
 * and compensated if the step is given up.
 * @since 0.1.0
 */
export const toStepError = (error: Http.CallError): Saga.StepError => {
  switch (error._tag) {
    case "ServiceRejectedError":
      return new Saga.StepBusinessError({ reason: `${error.code}: ${error.reason}` })
    case "ServiceUnavailableError":
      return new Saga.StepTransientError({ reason: error.message })
    case "ServiceInDoubtError":
      return new Saga.StepInDoubtError({ reason: error.message })
  }
}

/**
 * Builds the saga over a transport.
 * @since 0.1.0
 */
export const make = (transport: Transport, timing: Timing): Saga.Saga<never> => {
  const send =
    (
      service: keyof Transport["endpoints"],
      op: string,
      fields: (input: OrderInput) => Record<string, unknown>
    ) =>
    (ctx: Saga.StepContext): Effect.Effect<unknown, Saga.StepError> => {
      const input = ctx.input as OrderInput
      return Http.call({
        endpoint: transport.endpoints[service],
        op,
        body: { sagaId: ctx.sagaId, step: ctx.step, ...fields(input) },
        idempotencyKey: ctx.key,
        duplicateRate: transport.duplicateRate,
        random: transport.random,
        ...(transport.onDuplicate === undefined ? {} : { onDuplicate: transport.onDuplicate })
      }).pipe(Effect.mapError(toStepError))
    }
  const compensate =
    (
      service: keyof Transport["endpoints"],
      op: string,
      fields: (input: OrderInput) => Record<string, unknown>
    ) =>
    (ctx: Saga.CompensationContext<unknown>): Effect.Effect<void, Saga.StepError> =>
      Effect.asVoid(send(service, op, fields)(ctx))

  const timeout = Duration.millis(timing.stepTimeoutMillis)
  const base = Duration.millis(timing.retryBaseMillis)
  const retry = Schedule.exponential(base, 2).pipe(
    Schedule.jittered,
    Schedule.intersect(Schedule.recurs(timing.retries))
  )
  // Compensations and post-pivot steps must end: retried much longer, capped at a second apart.
  const persistent = Schedule.exponential(base, 2).pipe(
    Schedule.union(Schedule.spaced(Duration.seconds(1))),
    Schedule.jittered,
    Schedule.intersect(Schedule.recurs(30))
  )
  const order = (i: OrderInput) => ({ orderId: i.orderId })
  const common = { timeout, retry, compensationTimeout: timeout, compensationRetry: persistent }

  return Saga.make({
    name: sagaType,
    steps: [
      Saga.step({
        name: "create-order",
        ...common,
        action: send("orders", "create", (i) => ({ ...i })),
        compensation: compensate("orders", "cancel", order)
      }),
      Saga.parallel("reserve-and-charge", [
        Saga.step({
          name: "reserve-stock",
          ...common,
          action: send("inventory", "reserve", (i) => ({
            orderId: i.orderId,
            sku: i.sku,
            quantity: i.quantity
          })),
          compensation: compensate("inventory", "release", order)
        }),
        Saga.step({
          name: "charge-payment",
          ...common,
          action: send("payment", "charge", (i) => ({
            orderId: i.orderId,
            customerId: i.customerId,
            amountCents: i.amountCents
          })),
          compensation: compensate("payment", "refund", order)
        })
      ]),
      Saga.step({
        name: "schedule-shipping",
        ...common,
        // A carrier that does not answer in time is not asked again and again: one retry, then undo.
        retry: Schedule.exponential(base, 2).pipe(Schedule.jittered, Schedule.intersect(Schedule.recurs(1))),
        pivot: true,
        action: send("shipping", "schedule", (i) => ({
          orderId: i.orderId,
          sku: i.sku,
          quantity: i.quantity
        })),
        compensation: compensate("shipping", "cancel", order)
      }),
      Saga.parallel("finish", [
        Saga.step({
          name: "capture-payment",
          ...common,
          retry: persistent,
          action: send("payment", "capture", order)
        }),
        Saga.step({
          name: "ship-stock",
          ...common,
          retry: persistent,
          action: send("inventory", "ship", order)
        }),
        Saga.step({
          name: "complete-order",
          ...common,
          retry: persistent,
          action: send("orders", "complete", order)
        })
      ])
    ]
  })
}

/**
 * Why a compensated saga was undone, in the demo's words.
 * @since 0.1.0
 */
export const causeOf = (outcome: Saga.Outcome): string | undefined => {
  if (outcome._tag !== "Compensated") return undefined
  const { step, kind, reason } = outcome.cause
  if (step === "reserve-stock" && kind === "business")
    return reason.startsWith("out_of_stock") ? "out of stock" : reason
  if (step === "charge-payment" && kind === "business")
    return reason.startsWith("card_declined") ? "card declined" : reason
  if (step === "schedule-shipping") return "shipping timeout"
  return `${step}: ${kind}`
}
