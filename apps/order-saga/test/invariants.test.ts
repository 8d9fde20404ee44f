/**
 * The invariant checks must be able to fail. Four services' databases on PGlite, written by hand:
 * a barrier that recorded a compensation whose effect is not in the service's ledger, and a
 * compensation effect no barrier row accounts for, must both be reported; a consistent compensation
 * must not.
 */
import { afterAll, beforeAll, describe, expect, it } from "vitest"
import { dbTarget, type RunConfig, type ServiceName, serviceNames } from "../src/Config.js"
import * as Database from "../src/Database.js"
import * as Invariants from "../src/Invariants.js"
import * as Services from "../src/Services.js"
import { dropDatabases, testConfig } from "./support/config.js"

/** Seeded databases of the four services for one describe block, closed and dropped after it. */
const servicesFor = (name: string, dbs: Record<ServiceName, Database.Db>) => {
  let config: RunConfig
  beforeAll(async () => {
    config = testConfig({ name })
    for (const service of serviceNames) {
      await Database.ensure(dbTarget(config, service), true)
      dbs[service] = await Database.open(dbTarget(config, service))
      await Services.migrateAndSeed(dbs[service], service, config)
    }
  })
  afterAll(async () => {
    for (const service of serviceNames) await dbs[service]?.close()
    await dropDatabases(config)
  })
}

describe("the barrier/ledger agreement on compensations", () => {
  const dbs = {} as Record<ServiceName, Database.Db>
  servicesFor("inv", dbs)

  const barrierRow = (db: Database.Db, gid: string, branch: string, op: string, reason: string) =>
    db.query("insert into accord_saga_barrier (gid, branch, op, reason) values ($1, $2, $3, $4)", [
      gid,
      branch,
      op,
      reason
    ])

  it("holds for a compensation the barrier recorded and the ledger shows once", async () => {
    // A shipment scheduled then cancelled, both through the barrier.
    await barrierRow(dbs.shipping, "O1", "schedule-shipping", "action", "action")
    await dbs.shipping.query(
      "insert into shipments (order_id, sku, quantity, status) values ('O1', 'SKU-001', 1, 'cancelled')"
    )
    await dbs.shipping.query("insert into shipping_events (order_id, kind) values ('O1', 'schedule')")
    await barrierRow(dbs.shipping, "O1", "schedule-shipping", "compensation", "compensation")
    await dbs.shipping.query("insert into shipping_events (order_id, kind) values ('O1', 'cancel')")
    const report = await Invariants.check(dbs)
    expect(report.compensations.unmatched).toBe(0)
    expect(report.checks.compensationsMatchBarrier).toBe(true)
    expect(report.invariantsHold).toBe(true)
  })

  it("fails for an applied compensation in the barrier with no effect in the ledger", async () => {
    // The barrier says the refund of O2 was applied; the payment ledger has no refund for O2.
    await barrierRow(dbs.payment, "O2", "charge-payment", "action", "action")
    await barrierRow(dbs.payment, "O2", "charge-payment", "compensation", "compensation")
    const report = await Invariants.check(dbs)
    // The verdict first: before this check existed, this state passed every invariant.
    expect(report.invariantsHold).toBe(false)
    expect(report.compensations.unmatched).toBe(1)
    expect(report.checks.compensationsMatchBarrier).toBe(false)
    await dbs.payment.query("delete from accord_saga_barrier where gid = 'O2'")
  })

  it("fails for a compensation effect that no applied barrier row accounts for", async () => {
    // A release in the stock ledger that did not go through the barrier (the reservation and the
    // stock counters agree with it, so the stock check alone does not see it).
    await dbs.inventory.query(
      "insert into stock_events (order_id, sku, kind, quantity) values ('O3', 'SKU-001', 'reserve', 1), ('O3', 'SKU-001', 'release', 1)"
    )
    await dbs.inventory.query(
      "insert into reservations (order_id, sku, quantity, status) values ('O3', 'SKU-001', 1, 'released')"
    )
    const report = await Invariants.check(dbs)
    // The verdict first: before this check existed, this state passed every invariant.
    expect(report.invariantsHold).toBe(false)
    expect(report.compensations.unmatched).toBe(1)
    expect(report.checks.compensationsMatchBarrier).toBe(false)
    expect(report.checks.stockBalanced).toBe(true)
    expect(report.checks.noCompensationTwice).toBe(true)
  })
})

/**
 * A completed order must have been fulfilled in every service, not only paid: its stock shipped (the
 * reservation of its product and quantity moved to shipped), its shipment scheduled, its charge
 * captured for its amount. Before this check, a completed order whose stock was still reserved (the
 * post-pivot ship-stock step stuck), or had been released, or whose shipment had been cancelled,
 * passed every invariant: the stock still balanced and the charge was captured.
 */
describe("completed orders are fulfilled", () => {
  const dbs = {} as Record<ServiceName, Database.Db>
  servicesFor("inv-done", dbs)

  /**
   * A completed order of one SKU-001 for 500 cents: the order, its captured charge, its shipment
   * (`shipment`), and its reservation (`reservation`: the stock counters and ledger kept consistent).
   */
  const completedOrder = async (
    id: string,
    reservation: "shipped" | "reserved" | "released" | "none",
    shipment: "scheduled" | "cancelled",
    capturedCents = 500
  ) => {
    await dbs.orders.query(
      "insert into orders (id, customer_id, sku, quantity, amount_cents, status) values ($1, 'C001', 'SKU-001', 1, 500, 'completed')",
      [id]
    )
    await dbs.payment.query(
      "insert into charges (order_id, customer_id, amount_cents, status) values ($1, 'C001', $2, 'captured')",
      [id, capturedCents]
    )
    await dbs.payment.query(
      "insert into payment_events (order_id, kind, amount_cents) values ($1, 'charge', $2), ($1, 'capture', $2)",
      [id, capturedCents]
    )
    await dbs.shipping.query(
      "insert into shipments (order_id, sku, quantity, status) values ($1, 'SKU-001', 1, $2)",
      [id, shipment]
    )
    await dbs.shipping.query("insert into shipping_events (order_id, kind) values ($1, 'schedule')", [id])
    if (shipment === "cancelled") {
      await dbs.shipping.query("insert into shipping_events (order_id, kind) values ($1, 'cancel')", [id])
      await dbs.shipping.query(
        "insert into accord_saga_barrier (gid, branch, op, reason) values ($1, 'schedule-shipping', 'compensation', 'compensation')",
        [id]
      )
    }
    if (reservation === "none") return
    await dbs.inventory.query(
      "insert into reservations (order_id, sku, quantity, status) values ($1, 'SKU-001', 1, $2)",
      [id, reservation]
    )
    await dbs.inventory.query(
      "insert into stock_events (order_id, sku, kind, quantity) values ($1, 'SKU-001', 'reserve', 1)",
      [id]
    )
    if (reservation === "shipped") {
      await dbs.inventory.query(
        "update stock set on_hand = on_hand - 1, shipped = shipped + 1 where sku = 'SKU-001'"
      )
      await dbs.inventory.query(
        "insert into stock_events (order_id, sku, kind, quantity) values ($1, 'SKU-001', 'ship', 1)",
        [id]
      )
    } else if (reservation === "reserved") {
      await dbs.inventory.query(
        "update stock set on_hand = on_hand - 1, reserved = reserved + 1 where sku = 'SKU-001'"
      )
    } else {
      await dbs.inventory.query(
        "insert into stock_events (order_id, sku, kind, quantity) values ($1, 'SKU-001', 'release', 1)",
        [id]
      )
      await dbs.inventory.query(
        "insert into accord_saga_barrier (gid, branch, op, reason) values ($1, 'reserve-stock', 'compensation', 'compensation')",
        [id]
      )
    }
  }

  const forget = async (id: string) => {
    // Undo the stock counters of `id`'s reservation, then delete its rows everywhere.
    const [r] = await dbs.inventory.query<{ quantity: number; status: string }>(
      "select quantity, status from reservations where order_id = $1",
      [id]
    )
    if (r?.status === "shipped")
      await dbs.inventory.query(
        "update stock set on_hand = on_hand + $1, shipped = shipped - $1 where sku = 'SKU-001'",
        [r.quantity]
      )
    if (r?.status === "reserved")
      await dbs.inventory.query(
        "update stock set on_hand = on_hand + $1, reserved = reserved - $1 where sku = 'SKU-001'",
        [r.quantity]
      )
    await dbs.orders.query("delete from orders where id = $1", [id])
    await dbs.payment.query("delete from charges where order_id = $1", [id])
    await dbs.payment.query("delete from payment_events where order_id = $1", [id])
    await dbs.shipping.query("delete from shipments where order_id = $1", [id])
    await dbs.shipping.query("delete from shipping_events where order_id = $1", [id])
    await dbs.inventory.query("delete from reservations where order_id = $1", [id])
    await dbs.inventory.query("delete from stock_events where order_id = $1", [id])
    for (const db of [dbs.inventory, dbs.shipping])
      await db.query("delete from accord_saga_barrier where gid = $1", [id])
  }

  it("holds for a completed order shipped, scheduled and captured for its amount", async () => {
    await completedOrder("D1", "shipped", "scheduled")
    try {
      const report = await Invariants.check(dbs)
      expect(report.checks.stockBalanced).toBe(true)
      expect(report.completedOrdersUnfulfilled).toBe(0)
      expect(report.invariantsHold).toBe(true)
    } finally {
      await forget("D1")
    }
  })

  for (const [name, reservation, shipment, cents] of [
    ["its stock still reserved (never shipped)", "reserved", "scheduled", 500],
    ["its reservation released", "released", "scheduled", 500],
    ["no reservation at all", "none", "scheduled", 500],
    ["its shipment cancelled", "shipped", "cancelled", 500],
    ["a charge captured for another amount", "shipped", "scheduled", 499]
  ] as const) {
    it(`fails for a completed order with ${name}`, async () => {
      await completedOrder("D2", reservation, shipment, cents)
      try {
        const report = await Invariants.check(dbs)
        // The other checks do not see it: the stock balances, the charge is captured.
        expect(report.checks.stockBalanced).toBe(true)
        expect(report.charges.completedOrdersWithoutCapture).toBe(0)
        expect(report.invariantsHold).toBe(false)
        expect(report.checks.completedOrdersFulfilled).toBe(false)
        expect(report.completedOrdersUnfulfilled).toBe(1)
      } finally {
        await forget("D2")
      }
    })
  }
})
