/**
 * The demo end to end, as processes: four HTTP services and the orchestrator, each with its own
 * database, with declined cards, stock running out, a slow carrier, duplicated requests and dropped
 * answers. Whatever happens, the services' own databases must satisfy the invariants and no saga
 * may be left pending; killing the orchestrator mid-run must not change that.
 */
import { TestDatabase } from "@accord/postgres"
import { afterAll, describe, expect, it } from "vitest"
import type { RunConfig } from "../src/Config.js"
import * as Run from "../src/Run.js"
import { dropDatabases, testConfig } from "./support/config.js"

const server = await TestDatabase.server()
const configs: RunConfig[] = []

afterAll(async () => {
  for (const config of configs) await dropDatabases(config)
  // The saga demo never prepares a transaction; nothing of ours may be left prepared.
  if (server !== undefined) {
    const ours = (await TestDatabase.preparedOnServer(server.adminUrl)).filter((p) =>
      p.database.startsWith("accord_t_order_")
    )
    expect(ours).toEqual([])
  }
})

const expectSound = (result: Run.Result, orders: number): void => {
  const { tally, invariants } = result
  expect(invariants.checks).toEqual({
    stockBalanced: true,
    chargesSettled: true,
    noPendingOrders: true,
    noCompensationTwice: true,
    compensationsMatchBarrier: true,
    compensatedOrdersClean: true,
    completedOrdersFulfilled: true
  })
  expect(invariants.invariantsHold).toBe(true)
  expect(tally.pending).toBe(0)
  expect(tally.stuck).toBe(0)
  expect(tally.completed + tally.compensated).toBe(orders)
  // The orchestrator's account (the saga log) agrees with the orders service's own table.
  expect(invariants.orders).toMatchObject({
    completed: tally.completed,
    cancelled: tally.compensated,
    pending: 0
  })
}

describe("order saga on PGlite", () => {
  it("every order ends completed or compensated, under duplicated and dropped messages", async () => {
    const config = testConfig({
      name: "lite",
      faults: { declineRate: 0.2, slowRate: 0.1, slowMillis: 6000, duplicateRate: 0.3, dropRate: 0.1 }
    })
    configs.push(config)
    const result = await Run.run(config)
    expectSound(result, config.orders)
    // The mix really happened: some of each outcome, duplicates sent, answers dropped.
    expect(result.tally.completed).toBeGreaterThan(0)
    expect(result.tally.causes["card declined"]).toBeGreaterThan(0)
    expect(result.tally.causes["out of stock"]).toBeGreaterThan(0)
    expect(result.duplicatesSent).toBeGreaterThan(0)
    expect(result.droppedResponses).toBeGreaterThan(0)
  })
})

describe.skipIf(server === undefined)("order saga on real PostgreSQL", () => {
  it("every order ends completed or compensated; every request delivered twice charges once", async () => {
    const config = testConfig({
      name: "pg",
      pgUrl: server!.adminUrl,
      faults: { declineRate: 0.2, slowRate: 0.1, slowMillis: 6000, duplicateRate: 1, dropRate: 0.1 }
    })
    configs.push(config)
    const result = await Run.run(config)
    expectSound(result, config.orders)
    expect(result.duplicatesSent).toBeGreaterThanOrEqual(config.orders)
    expect(result.invariants.charges.captured).toBe(result.tally.completed)
  })

  it("an orchestrator killed mid-run is restarted and the sweep resumes its sagas", async () => {
    const config = testConfig({
      name: "kill",
      pgUrl: server!.adminUrl,
      orders: 24,
      killOrchestratorAfter: 10,
      faults: { declineRate: 0.15, slowRate: 0.05, slowMillis: 6000, duplicateRate: 0.1, dropRate: 0.05 }
    })
    configs.push(config)
    const result = await Run.run(config)
    expect(result.orchestratorKills).toBe(1)
    expect(result.tally.resumed).toBeGreaterThan(0)
    expectSound(result, config.orders)
  })
})
