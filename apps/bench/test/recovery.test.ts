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

describe("recovery target (10,000 in-doubt transactions in <= 10 s)", () => {
  const inDoubt = (extra: Partial<RecoveryBench.InDoubtResult> = {}): RecoveryBench.InDoubtResult => ({
    transactions: 10_000,
    batchSize: 10_000,
    batches: 1,
    branchesCommitted: 20_000,
    recoverySeconds: 6,
    coordinatorCpuSeconds: 3,
    transactionsPerSecond: 1667,
    extrapolatedSecondsFor10000: 6,
    ...extra
  })
  const met = (r: RecoveryBench.InDoubtResult, preparedLeft = 0) => RecoveryBench.target(r, preparedLeft).met

  it("is met by 10,000 in one pass within 10 s with every branch committed and nothing left", () => {
    expect(met(inDoubt())).toBe(true)
    expect(met(inDoubt({ recoverySeconds: 10.5 }))).toBe(false)
    expect(met(inDoubt({ branchesCommitted: 19_990 }))).toBe(false)
    expect(met(inDoubt(), 4)).toBe(false)
  })

  it("is not judged from fewer than 10,000 or from batches (extrapolated only)", () => {
    const small = RecoveryBench.target(
      inDoubt({ transactions: 2000, batchSize: 2000, branchesCommitted: 4000, recoverySeconds: 1 }),
      0
    )
    expect(small.met).toBeNull()
    expect(small.measured).toContain("2000")
    expect(met(inDoubt({ batchSize: 16, batches: 625 }))).toBeNull()
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
