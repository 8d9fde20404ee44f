/**
 * The invariants of the demo, checked after a run from the services' own databases (not from the
 * orchestrator's account): what the money and the goods say happened.
 *
 * 1. Stock: on hand + reserved = initial − shipped, per product; with reserved and shipped summed from
 *    the reservation rows, and on hand replayed from the stock ledger.
 * 2. Every charge is captured for a completed order, or refunded; every completed order was captured.
 * 3. No order is left pending.
 * 4. No compensation (and no action) took effect twice: the ledgers have at most one release, refund,
 *    cancel (and reserve, charge, schedule) per order.
 * 4b. The barriers and the ledgers agree on compensations: every compensation the barrier of a service
 *    recorded as applied has exactly one compensation effect in that service's own data (a release
 *    event, a refund event, a shipment cancel event, a cancelled order), and every such effect has an
 *    applied compensation row. (A "more than one compensation row per step" count cannot fail: the
 *    barrier's primary key (gid, branch, op) allows one.)
 * 5. A cancelled (compensated) order holds no live reservation, charge or shipment.
 * 6. A completed order was fulfilled in every service: its reservation (its product and quantity) is
 *    shipped, its shipment is scheduled, its charge is captured for its amount. (Without this, a
 *    completed order whose stock stayed reserved or was released, or whose shipment was cancelled,
 *    passed every other check: the stock balances either way and the charge is captured.)
 *
 * @since 0.1.0
 */
import { eq, inArray } from "drizzle-orm"
import { type Db, drizzleOf } from "./Database.js"
import * as Schema from "./Schema.js"
import * as StepBarrier from "./StepBarrier.js"

/**
 * The figures and the verdict.
 * @since 0.1.0
 */
export interface Report {
  readonly orders: {
    readonly total: number
    readonly completed: number
    readonly cancelled: number
    readonly pending: number
  }
  readonly stock: {
    readonly initial: number
    readonly onHand: number
    readonly reserved: number
    readonly shipped: number
    /** Products where on hand + reserved != initial − shipped (or the counters disagree with the rows). */
    readonly unbalancedProducts: ReadonlyArray<string>
  }
  readonly charges: {
    readonly total: number
    readonly captured: number
    readonly refunded: number
    /** Authorized but neither captured nor refunded. */
    readonly open: number
    readonly capturedWithoutCompletedOrder: number
    readonly completedOrdersWithoutCapture: number
  }
  readonly compensations: {
    /** Applied compensations recorded by the barriers (all services). */
    readonly applied: number
    readonly nullCompensations: number
    /** (order, kind) pairs with more than one ledger entry: must be 0. */
    readonly effectsTwice: number
    /**
     * Applied compensation rows in a barrier without exactly one compensation effect in the same
     * service's data, plus compensation effects without an applied compensation row: must be 0.
     */
    readonly unmatched: number
  }
  /** Cancelled orders that still hold a reservation, a charge or a shipment. */
  readonly compensatedWithLiveEffects: number
  /**
   * Completed orders without a shipped reservation of their product and quantity, a scheduled
   * shipment of them, or a charge captured for their amount.
   */
  readonly completedOrdersUnfulfilled: number
  readonly checks: {
    readonly stockBalanced: boolean
    readonly chargesSettled: boolean
    readonly noPendingOrders: boolean
    readonly noCompensationTwice: boolean
    readonly compensationsMatchBarrier: boolean
    readonly compensatedOrdersClean: boolean
    readonly completedOrdersFulfilled: boolean
  }
  readonly invariantsHold: boolean
}

/**
 * The four services' databases.
 * @since 0.1.0
 */
export interface ServiceDbs {
  readonly orders: Db
  readonly inventory: Db
  readonly payment: Db
  readonly shipping: Db
}

const num = (v: unknown): number => Number(v ?? 0)

const barrierFigures = async (db: Db): Promise<{ applied: number; nulls: number }> => {
  const [row] = await db.query<{ applied: unknown; nulls: unknown }>(
    `select count(*) filter (where op = 'compensation' and reason = 'compensation') as applied,
            count(*) filter (where op = 'compensation' and reason <> 'compensation') as nulls
       from ${StepBarrier.barrierTable}`
  )
  return { applied: num(row?.applied), nulls: num(row?.nulls) }
}

/**
 * Each service's compensation effects, one row per effect, keyed by order id (= saga id = the
 * barrier's gid): the order service's cancelled orders, and the release / refund / cancel events of
 * the others' ledgers.
 */
const compensationEffects = {
  orders: "select id as gid from orders where status = 'cancelled'",
  inventory: "select order_id as gid from stock_events where kind = 'release'",
  payment: "select order_id as gid from payment_events where kind = 'refund'",
  shipping: "select order_id as gid from shipping_events where kind = 'cancel'"
} as const

/**
 * Applied compensation rows of a service's barrier that do not match exactly one compensation
 * effect in its data, plus effects (by order) that no applied compensation row accounts for.
 */
const unmatchedCompensations = async (db: Db, effects: string): Promise<number> => {
  const [row] = await db.query<{ n: unknown }>(
    `select count(*) as n
       from (select gid, count(*) as rows from ${StepBarrier.barrierTable}
              where op = 'compensation' and reason = 'compensation' group by gid) b
       full join (select gid, count(*) as effects from (${effects}) e group by gid) e on e.gid = b.gid
      where b.gid is null or e.gid is null or b.rows <> 1 or e.effects <> 1`
  )
  return num(row?.n)
}

const effectsTwice = async (db: Db, table: string): Promise<number> => {
  const [row] = await db.query<{ n: unknown }>(
    `select count(*) as n from (select order_id, kind from ${table} group by order_id, kind having count(*) > 1) t`
  )
  return num(row?.n)
}

/**
 * Checks every invariant.
 * @since 0.1.0
 */
export const check = async (dbs: ServiceDbs): Promise<Report> => {
  const orders = await drizzleOf(dbs.orders)
    .select({
      id: Schema.orders.id,
      status: Schema.orders.status,
      sku: Schema.orders.sku,
      quantity: Schema.orders.quantity,
      amountCents: Schema.orders.amountCents
    })
    .from(Schema.orders)
  const orderStatus = new Map(orders.map((o) => [o.id, o.status]))
  const count = (status: string) => orders.filter((o) => o.status === status).length

  // 1. stock
  const stock = await dbs.inventory.query<{
    sku: string
    initial: number
    on_hand: number
    reserved: number
    shipped: number
    rows_reserved: unknown
    rows_shipped: unknown
    ledger_on_hand: unknown
  }>(
    `select s.sku, s.initial, s.on_hand, s.reserved, s.shipped,
            coalesce((select sum(quantity) from reservations r where r.sku = s.sku and r.status = 'reserved'), 0) as rows_reserved,
            coalesce((select sum(quantity) from reservations r where r.sku = s.sku and r.status = 'shipped'), 0) as rows_shipped,
            s.initial
              - coalesce((select sum(quantity) from stock_events e where e.sku = s.sku and e.kind = 'reserve'), 0)
              + coalesce((select sum(quantity) from stock_events e where e.sku = s.sku and e.kind = 'release'), 0)
              as ledger_on_hand
       from stock s order by s.sku`
  )
  const unbalancedProducts = stock
    .filter((s) => {
      const reserved = num(s.rows_reserved)
      const shipped = num(s.rows_shipped)
      return (
        s.on_hand + reserved !== s.initial - shipped ||
        s.reserved !== reserved ||
        s.shipped !== shipped ||
        s.on_hand !== num(s.ledger_on_hand)
      )
    })
    .map((s) => s.sku)
  const sum = (f: (s: (typeof stock)[number]) => number) => stock.reduce((acc, s) => acc + f(s), 0)

  // 2. charges
  const charges = await drizzleOf(dbs.payment)
    .select({
      orderId: Schema.charges.orderId,
      status: Schema.charges.status,
      amountCents: Schema.charges.amountCents
    })
    .from(Schema.charges)
  const captured = charges.filter((c) => c.status === "captured")
  const capturedOrders = new Set(captured.map((c) => c.orderId))
  const capturedWithoutCompletedOrder = captured.filter(
    (c) => orderStatus.get(c.orderId) !== "completed"
  ).length
  const completedOrdersWithoutCapture = orders.filter(
    (o) => o.status === "completed" && !capturedOrders.has(o.id)
  ).length
  const open = charges.filter((c) => c.status === "authorized").length

  // 4. nothing took effect twice
  const barriers = await Promise.all(
    [dbs.orders, dbs.inventory, dbs.payment, dbs.shipping].map(barrierFigures)
  )
  const twice =
    (await effectsTwice(dbs.inventory, "stock_events")) +
    (await effectsTwice(dbs.payment, "payment_events")) +
    (await effectsTwice(dbs.shipping, "shipping_events"))
  const unmatched =
    (await unmatchedCompensations(dbs.orders, compensationEffects.orders)) +
    (await unmatchedCompensations(dbs.inventory, compensationEffects.inventory)) +
    (await unmatchedCompensations(dbs.payment, compensationEffects.payment)) +
    (await unmatchedCompensations(dbs.shipping, compensationEffects.shipping))

  // 5. cancelled orders hold nothing
  const liveReservations = await drizzleOf(dbs.inventory)
    .select({ orderId: Schema.reservations.orderId })
    .from(Schema.reservations)
    .where(inArray(Schema.reservations.status, ["reserved", "shipped"]))
  const liveCharges = charges.filter((c) => c.status === "authorized" || c.status === "captured")
  const liveShipments = await drizzleOf(dbs.shipping)
    .select({ orderId: Schema.shipments.orderId })
    .from(Schema.shipments)
    .where(eq(Schema.shipments.status, "scheduled"))
  const live = new Set([...liveReservations, ...liveCharges, ...liveShipments].map((r) => r.orderId))
  const compensatedWithLiveEffects = orders.filter((o) => o.status === "cancelled" && live.has(o.id)).length

  // 6. completed orders were fulfilled everywhere
  const reservationOf = new Map(
    (
      await drizzleOf(dbs.inventory)
        .select({
          orderId: Schema.reservations.orderId,
          sku: Schema.reservations.sku,
          quantity: Schema.reservations.quantity,
          status: Schema.reservations.status
        })
        .from(Schema.reservations)
    ).map((r) => [r.orderId, r])
  )
  const shipmentOf = new Map(
    (
      await drizzleOf(dbs.shipping)
        .select({
          orderId: Schema.shipments.orderId,
          sku: Schema.shipments.sku,
          quantity: Schema.shipments.quantity,
          status: Schema.shipments.status
        })
        .from(Schema.shipments)
    ).map((s) => [s.orderId, s])
  )
  const chargeOf = new Map(charges.map((c) => [c.orderId, c]))
  const completedOrdersUnfulfilled = orders.filter((o) => {
    if (o.status !== "completed") return false
    const r = reservationOf.get(o.id)
    const s = shipmentOf.get(o.id)
    const c = chargeOf.get(o.id)
    const shipped = r?.status === "shipped" && r.sku === o.sku && r.quantity === o.quantity
    const scheduled = s?.status === "scheduled" && s.sku === o.sku && s.quantity === o.quantity
    const paid = c?.status === "captured" && Number(c.amountCents) === Number(o.amountCents)
    return !(shipped && scheduled && paid)
  }).length

  const checks = {
    stockBalanced: unbalancedProducts.length === 0,
    chargesSettled: open === 0 && capturedWithoutCompletedOrder === 0 && completedOrdersWithoutCapture === 0,
    noPendingOrders: count("pending") === 0,
    noCompensationTwice: twice === 0,
    compensationsMatchBarrier: unmatched === 0,
    compensatedOrdersClean: compensatedWithLiveEffects === 0,
    completedOrdersFulfilled: completedOrdersUnfulfilled === 0
  }
  return {
    orders: {
      total: orders.length,
      completed: count("completed"),
      cancelled: count("cancelled"),
      pending: count("pending")
    },
    stock: {
      initial: sum((s) => s.initial),
      onHand: sum((s) => s.on_hand),
      reserved: sum((s) => num(s.rows_reserved)),
      shipped: sum((s) => num(s.rows_shipped)),
      unbalancedProducts
    },
    charges: {
      total: charges.length,
      captured: captured.length,
      refunded: charges.filter((c) => c.status === "refunded").length,
      open,
      capturedWithoutCompletedOrder,
      completedOrdersWithoutCapture
    },
    compensations: {
      applied: barriers.reduce((acc, b) => acc + b.applied, 0),
      nullCompensations: barriers.reduce((acc, b) => acc + b.nulls, 0),
      effectsTwice: twice,
      unmatched
    },
    compensatedWithLiveEffects,
    completedOrdersUnfulfilled,
    checks,
    invariantsHold: Object.values(checks).every(Boolean)
  }
}
