/**
 * The four services: orders, inventory, payment, shipping. Each owns its database, seeds it from the
 * plan, and answers `POST /<op>` with JSON. Every mutating request runs through the barrier in one
 * local transaction with its work, keyed by (saga id, step, action|compensation).
 *
 * Business rules live in the data: stock cannot go below zero (a CHECK constraint), a declined card
 * is a flag on the customer row, a slow shipment is a property of the order (so its retries are
 * slow too).
 *
 * @since 0.1.0
 */
import { setTimeout as sleep } from "node:timers/promises"
import { dbTarget, type RunConfig, type ServiceName, serviceNames } from "./Config.js"
import * as Database from "./Database.js"
import type { Db, Queryable } from "./Database.js"
import * as Http from "./Http.js"
import type { Handler, Reply } from "./Http.js"
import * as Plan from "./Plan.js"
import * as Schema from "./Schema.js"
import * as StepBarrier from "./StepBarrier.js"

/**
 * A definite business refusal: answered 409, never retried.
 * @since 0.1.0
 */
export class BusinessRuleError extends Error {
  constructor(
    readonly code: string,
    message: string
  ) {
    super(message)
  }
}

/**
 * The request fields every step carries.
 * @since 0.1.0
 */
export interface StepRequest {
  readonly sagaId: string
  readonly step: string
}

const text = (body: Record<string, unknown>, field: string): string => {
  const value = body[field]
  if (typeof value !== "string" || value === "")
    throw new BusinessRuleError("bad_request", `missing ${field}`)
  return value
}

const int = (body: Record<string, unknown>, field: string): number => {
  const value = body[field]
  if (typeof value !== "number" || !Number.isInteger(value) || value <= 0)
    throw new BusinessRuleError("bad_request", `bad ${field}`)
  return value
}

/**
 * Wraps a step's work in the barrier and turns its outcome into a reply. A duplicate is answered
 * with the current state (`lookup`), so the caller gets the same answer as the first delivery.
 */
const barrierHandler =
  (
    db: Db,
    op: StepBarrier.BarrierOp,
    work: (tx: Queryable, body: Record<string, unknown>) => Promise<unknown>,
    lookup: (body: Record<string, unknown>) => Promise<unknown>
  ): Handler =>
  async (body) => {
    let outcome: StepBarrier.BarrierOutcome<unknown>
    try {
      const key = { gid: text(body, "sagaId"), branch: text(body, "step"), op }
      outcome = await StepBarrier.run(db, key, (tx) => work(tx, body))
    } catch (error) {
      if (error instanceof BusinessRuleError)
        return { status: 409, body: { error: error.code, message: error.message } }
      // The connection to the database was lost with the COMMIT possibly on the wire: the step may
      // have taken effect. Never answer that as "rolled back" (the saga would skip its compensation).
      if (error instanceof StepBarrier.InDoubtError) return Http.inDoubt(error.reason)
      // The database answered the failure: the transaction, barrier row included, rolled back.
      return Http.rolledBack(String((error as Error)?.message ?? error))
    }
    // From here the step took effect (or had already): a failure of `lookup` propagates, and the
    // server answers it as in doubt, not as rolled back.
    switch (outcome._tag) {
      case "Applied":
        return { status: 200, body: { status: "applied", result: outcome.value } }
      case "Duplicate":
        return { status: 200, body: { status: "duplicate", result: outcome.value ?? (await lookup(body)) } }
      case "NullCompensation":
        return { status: 200, body: { status: "null-compensation", result: null } }
      case "Refused":
        return {
          status: 409,
          body: {
            error: "refused",
            message: "the step was already compensated; the late action is refused"
          }
        }
    }
  }

const one = async <T>(q: Queryable, sql: string, params: ReadonlyArray<unknown>): Promise<T | null> =>
  (await q.query<T>(sql, params))[0] ?? null

// ---------------------------------------------------------------- orders

const ordersService = (db: Db): Record<string, Handler> => {
  const lookup = async (body: Record<string, unknown>) =>
    one(db, "select id, status from orders where id = $1", [text(body, "orderId")])
  return {
    create: barrierHandler(
      db,
      "action",
      async (tx, body) =>
        one(
          tx,
          `insert into orders (id, customer_id, sku, quantity, amount_cents, status)
           values ($1, $2, $3, $4, $5, 'pending') returning id, status`,
          [
            text(body, "orderId"),
            text(body, "customerId"),
            text(body, "sku"),
            int(body, "quantity"),
            int(body, "amountCents")
          ]
        ),
      lookup
    ),
    cancel: barrierHandler(
      db,
      "compensation",
      async (tx, body) => {
        const row = await one<{ status: string }>(
          tx,
          `update orders set status = 'cancelled', reason = $2, updated_at = now()
           where id = $1 and status = 'pending' returning status`,
          [text(body, "orderId"), typeof body.reason === "string" ? body.reason : null]
        )
        if (row === null)
          throw new BusinessRuleError("not_pending", `order ${String(body.orderId)} is not pending`)
        return row
      },
      lookup
    ),
    complete: barrierHandler(
      db,
      "action",
      async (tx, body) => {
        const row = await one<{ status: string }>(
          tx,
          `update orders set status = 'completed', updated_at = now()
           where id = $1 and status = 'pending' returning id, status`,
          [text(body, "orderId")]
        )
        if (row === null)
          throw new BusinessRuleError("not_pending", `order ${String(body.orderId)} is not pending`)
        return row
      },
      lookup
    )
  }
}

// ---------------------------------------------------------------- inventory

const inventoryService = (db: Db): Record<string, Handler> => {
  const lookup = async (body: Record<string, unknown>) =>
    one(db, "select order_id, sku, quantity, status from reservations where order_id = $1", [
      text(body, "orderId")
    ])
  return {
    reserve: barrierHandler(
      db,
      "action",
      async (tx, body) => {
        const orderId = text(body, "orderId")
        const sku = text(body, "sku")
        const quantity = int(body, "quantity")
        try {
          const row = await one(
            tx,
            "update stock set on_hand = on_hand - $2, reserved = reserved + $2 where sku = $1 returning on_hand",
            [sku, quantity]
          )
          if (row === null) throw new BusinessRuleError("unknown_sku", `no product ${sku}`)
        } catch (error) {
          if (Database.sqlState(error) === "23514")
            throw new BusinessRuleError("out_of_stock", `not enough ${sku} for ${quantity}`)
          throw error
        }
        await tx.query(
          "insert into reservations (order_id, sku, quantity, status) values ($1, $2, $3, 'reserved')",
          [orderId, sku, quantity]
        )
        await tx.query(
          "insert into stock_events (order_id, sku, kind, quantity) values ($1, $2, 'reserve', $3)",
          [orderId, sku, quantity]
        )
        return { orderId, sku, quantity, status: "reserved" }
      },
      lookup
    ),
    release: barrierHandler(
      db,
      "compensation",
      async (tx, body) => {
        const orderId = text(body, "orderId")
        const row = await one<{ sku: string; quantity: number }>(
          tx,
          "update reservations set status = 'released' where order_id = $1 and status = 'reserved' returning sku, quantity",
          [orderId]
        )
        if (row === null) throw new BusinessRuleError("not_reserved", `order ${orderId} holds no reservation`)
        await tx.query("update stock set on_hand = on_hand + $2, reserved = reserved - $2 where sku = $1", [
          row.sku,
          row.quantity
        ])
        await tx.query(
          "insert into stock_events (order_id, sku, kind, quantity) values ($1, $2, 'release', $3)",
          [orderId, row.sku, row.quantity]
        )
        return { orderId, status: "released" }
      },
      lookup
    ),
    ship: barrierHandler(
      db,
      "action",
      async (tx, body) => {
        const orderId = text(body, "orderId")
        const row = await one<{ sku: string; quantity: number }>(
          tx,
          "update reservations set status = 'shipped' where order_id = $1 and status = 'reserved' returning sku, quantity",
          [orderId]
        )
        if (row === null) throw new BusinessRuleError("not_reserved", `order ${orderId} holds no reservation`)
        await tx.query("update stock set reserved = reserved - $2, shipped = shipped + $2 where sku = $1", [
          row.sku,
          row.quantity
        ])
        await tx.query(
          "insert into stock_events (order_id, sku, kind, quantity) values ($1, $2, 'ship', $3)",
          [orderId, row.sku, row.quantity]
        )
        return { orderId, status: "shipped" }
      },
      lookup
    )
  }
}

// ---------------------------------------------------------------- payment

const paymentService = (db: Db): Record<string, Handler> => {
  const lookup = async (body: Record<string, unknown>) =>
    one(db, "select order_id, amount_cents::int as amount_cents, status from charges where order_id = $1", [
      text(body, "orderId")
    ])
  return {
    charge: barrierHandler(
      db,
      "action",
      async (tx, body) => {
        const orderId = text(body, "orderId")
        const customerId = text(body, "customerId")
        const amountCents = int(body, "amountCents")
        const customer = await one<{ card_status: string }>(
          tx,
          "select card_status from customers where id = $1",
          [customerId]
        )
        if (customer === null) throw new BusinessRuleError("unknown_customer", `no customer ${customerId}`)
        if (customer.card_status === "declined")
          throw new BusinessRuleError("card_declined", `the card of ${customerId} was declined`)
        await tx.query(
          "insert into charges (order_id, customer_id, amount_cents, status) values ($1, $2, $3, 'authorized')",
          [orderId, customerId, amountCents]
        )
        await tx.query(
          "insert into payment_events (order_id, kind, amount_cents) values ($1, 'charge', $2)",
          [orderId, amountCents]
        )
        return { orderId, amountCents, status: "authorized" }
      },
      lookup
    ),
    refund: barrierHandler(
      db,
      "compensation",
      async (tx, body) => {
        const orderId = text(body, "orderId")
        const row = await one<{ amount_cents: number }>(
          tx,
          "update charges set status = 'refunded' where order_id = $1 and status = 'authorized' returning amount_cents::int as amount_cents",
          [orderId]
        )
        if (row === null) throw new BusinessRuleError("not_authorized", `order ${orderId} has no open charge`)
        await tx.query(
          "insert into payment_events (order_id, kind, amount_cents) values ($1, 'refund', $2)",
          [orderId, row.amount_cents]
        )
        return { orderId, status: "refunded" }
      },
      lookup
    ),
    capture: barrierHandler(
      db,
      "action",
      async (tx, body) => {
        const orderId = text(body, "orderId")
        const row = await one<{ amount_cents: number }>(
          tx,
          "update charges set status = 'captured' where order_id = $1 and status = 'authorized' returning amount_cents::int as amount_cents",
          [orderId]
        )
        if (row === null) throw new BusinessRuleError("not_authorized", `order ${orderId} has no open charge`)
        await tx.query(
          "insert into payment_events (order_id, kind, amount_cents) values ($1, 'capture', $2)",
          [orderId, row.amount_cents]
        )
        return { orderId, status: "captured" }
      },
      lookup
    )
  }
}

// ---------------------------------------------------------------- shipping

/**
 * Whether the shipping service is slow for an order (its own rule, stable across retries).
 * @since 0.1.0
 */
export const isSlowShipment = (orderId: string, slowRate: number): boolean =>
  Plan.unitHash(`${orderId}:slow`) < slowRate

const shippingService = (db: Db, config: RunConfig): Record<string, Handler> => {
  const lookup = async (body: Record<string, unknown>) =>
    one(db, "select order_id, status from shipments where order_id = $1", [text(body, "orderId")])
  const schedule = barrierHandler(
    db,
    "action",
    async (tx, body) => {
      const orderId = text(body, "orderId")
      await tx.query(
        "insert into shipments (order_id, sku, quantity, status) values ($1, $2, $3, 'scheduled')",
        [orderId, text(body, "sku"), int(body, "quantity")]
      )
      await tx.query("insert into shipping_events (order_id, kind) values ($1, 'schedule')", [orderId])
      return { orderId, status: "scheduled" }
    },
    lookup
  )
  return {
    // A busy carrier: for some orders the service takes longer than the orchestrator waits. It then
    // acts anyway, late: the barrier decides whether that late action still counts.
    schedule: async (body) => {
      if (typeof body.orderId === "string" && isSlowShipment(body.orderId, config.faults.slowRate))
        await sleep(config.faults.slowMillis)
      return schedule(body)
    },
    cancel: barrierHandler(
      db,
      "compensation",
      async (tx, body) => {
        const orderId = text(body, "orderId")
        const row = await one(
          tx,
          "update shipments set status = 'cancelled' where order_id = $1 and status = 'scheduled' returning order_id",
          [orderId]
        )
        if (row === null) throw new BusinessRuleError("not_scheduled", `order ${orderId} has no shipment`)
        await tx.query("insert into shipping_events (order_id, kind) values ($1, 'cancel')", [orderId])
        return { orderId, status: "cancelled" }
      },
      lookup
    )
  }
}

// ---------------------------------------------------------------- lifecycle

/**
 * The DDL of a service's database.
 * @since 0.1.0
 */
export const ddl: Record<ServiceName, string> = {
  orders: Schema.ordersDdl,
  inventory: Schema.inventoryDdl,
  payment: Schema.paymentDdl,
  shipping: Schema.shippingDdl
}

/**
 * The catalogue and customers of a run configuration.
 * @since 0.1.0
 */
export const worldOf = (config: RunConfig) =>
  Plan.world({
    seed: config.seed,
    stockBase: config.stockBase,
    customers: config.customers,
    declineRate: config.faults.declineRate
  })

/**
 * Creates a service's tables and the barrier table, and seeds reference data (idempotent).
 * @since 0.1.0
 */
export const migrateAndSeed = async (db: Db, name: ServiceName, config: RunConfig): Promise<void> => {
  await db.exec(ddl[name])
  await StepBarrier.migrate(db)
  const { products, customers } = worldOf(config)
  if (name === "inventory") {
    await db.transaction(async (tx) => {
      for (const p of products)
        await tx.query(
          `insert into stock (sku, initial, on_hand, reserved, shipped) values ($1, $2, $2, 0, 0)
           on conflict (sku) do nothing`,
          [p.sku, p.initialStock]
        )
    })
  }
  if (name === "payment") {
    await db.transaction(async (tx) => {
      for (const c of customers)
        await tx.query(
          // Each run's --decline-rate (and --seed) decides the cards, on an existing database too.
          `insert into customers (id, name, card_status) values ($1, $2, $3)
           on conflict (id) do update set name = excluded.name, card_status = excluded.card_status
           where (customers.name, customers.card_status) is distinct from (excluded.name, excluded.card_status)`,
          [c.id, c.name, c.declined ? "declined" : "ok"]
        )
    })
  }
}

/**
 * A running service.
 * @since 0.1.0
 */
export interface RunningService {
  readonly name: ServiceName
  readonly port: number
  /** The service's own database handle (tests read it; a PGlite folder has one owner at a time). */
  readonly db: Db
  readonly dropped: () => number
  readonly close: () => Promise<void>
}

/**
 * Opens a service's database (which must exist), migrates and seeds it, and serves it on loopback.
 * @since 0.1.0
 */
export const start = async (
  name: ServiceName,
  config: RunConfig,
  options?: { readonly port?: number }
): Promise<RunningService> => {
  const db = await Database.open(dbTarget(config, name))
  try {
    await migrateAndSeed(db, name, config)
  } catch (error) {
    await db.close()
    throw error
  }
  const handlers =
    name === "orders"
      ? ordersService(db)
      : name === "inventory"
        ? inventoryService(db)
        : name === "payment"
          ? paymentService(db)
          : shippingService(db, config)
  let dropped = 0
  const server = await Http.serve({
    handlers,
    dropRate: config.faults.dropRate,
    random: Plan.random(config.seed + 101 * (serviceNames.indexOf(name) + 1) + Date.now()),
    onDrop: () => {
      dropped++
    },
    ...(options?.port === undefined ? {} : { port: options.port })
  })
  return {
    name,
    port: server.port,
    db,
    dropped: () => dropped,
    close: async () => {
      await server.close()
      await db.close()
    }
  }
}

/** @since 0.1.0 */
export type { Reply }
