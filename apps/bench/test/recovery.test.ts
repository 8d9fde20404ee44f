import * as TestDatabase from "@accord/postgres/TestDatabase"
import { afterAll, describe, expect, it } from "vitest"
import * as RecoveryBench from "../src/RecoveryBench.js"
import * as Server from "../src/Server.js"
import { dropSetup } from "./support/databases.js"

const server = await TestDatabase.server()

// Databases of their own, apart from those of a benchmark run on the same server.
const prefix = "accord_bench_recovery_test_"

describe("recovery benchmark batches", () => {
  it("takes all N at once when the server has room for 2N branches, else a quarter of the free slots", () => {
    expect(RecoveryBench.batchSize(20_100, 10_000)).toBe(10_000)
    expect(RecoveryBench.batchSize(64, 10_000)).toBe(16)
    expect(RecoveryBench.batchSize(64, 20)).toBe(16)
    expect(RecoveryBench.batchSize(2 * 20 + 64, 20)).toBe(20)
    expect(RecoveryBench.batchSize(3, 100)).toBe(1)
    // Never more transactions in one pass than accounts (each holds its own row until recovered).
    expect(RecoveryBench.batchSize(1_000_000, 50_000)).toBe(Server.accounts)
  })
})

describe.skipIf(server === undefined)("recovery benchmark on PostgreSQL", () => {
  const adminUrl = server?.adminUrl ?? ""

  afterAll(() => dropSetup(adminUrl, prefix))

  it("leaves N transactions in doubt, recovery commits every branch, and nothing stays prepared", async () => {
    const dbs = await Server.setup(adminUrl, prefix)
    const n = 40
    const result = await RecoveryBench.run(adminUrl, dbs, n, () => {})
    expect(result.inDoubt.transactions).toBe(n)
    // 40 transactions do not fit in one pass under 64 slots: several batches, every branch committed.
    expect(result.inDoubt.batches).toBe(Math.ceil(n / result.inDoubt.batchSize))
    expect(result.inDoubt.branchesCommitted).toBe(2 * n)
    expect(result.inDoubt.recoverySeconds).toBeGreaterThan(0)
    expect(result.unacknowledged.transactionsFinished).toBe(n)
    expect(result.unacknowledged.branchesCommitted).toBe(2 * n)
    expect(result.unacknowledged.heuristics).toBe(0)
    // Two per transaction (a COMMIT PREPARED per branch, each gid gone and answered by one marker
    // query per round), plus the pass's own handful (log read, prepared scans, completion, clean-up).
    expect(result.unacknowledged.statementsPerTransaction).toBeGreaterThanOrEqual(2)
    expect(result.unacknowledged.statementsPerTransaction).toBeLessThanOrEqual(2 + 20 / n)
    expect(result.preparedLeft).toBe(0)
  })
})
