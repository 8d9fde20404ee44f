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

describe("the barrier/ledger agreement on compensations", () => {
  let config: RunConfig
  const dbs = {} as Record<ServiceName, Database.Db>

  beforeAll(async () => {
    config = testConfig({ name: "inv" })
    for (const name of serviceNames) {
      await Database.ensure(dbTarget(config, name), true)
      dbs[name] = await Database.open(dbTarget(config, name))
      await Services.migrateAndSeed(dbs[name], name, config)
    }
  })
  afterAll(async () => {
    for (const name of serviceNames) await dbs[name]?.close()
    await dropDatabases(config)
  })

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
