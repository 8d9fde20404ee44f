import * as TestDatabase from "@accord/postgres/TestDatabase"
import { afterAll, describe, expect, it } from "vitest"
import * as Breakdown from "../src/Breakdown.js"
import * as Server from "../src/Server.js"
import { dropSetup } from "./support/databases.js"

const server = await TestDatabase.server()

// Databases of their own, apart from those of a benchmark run on the same server.
const prefix = "accord_bench_breakdown_test_"

describe.skipIf(server === undefined)("CPU breakdown on PostgreSQL", () => {
  const adminUrl = server?.adminUrl ?? ""

  afterAll(() => dropSetup(adminUrl, prefix))

  it("measures every shape with client CPU, counts each piece's statements and leaves nothing prepared", async () => {
    const dbs = await Server.setup(adminUrl, prefix)
    const result = await Breakdown.run(adminUrl, dbs, 20)
    const row = (shape: string) => {
      const found = result.rows.find((r) => r.shape === shape)
      expect(found, shape).toBeDefined()
      return found!
    }

    expect(result.rows.map((r) => r.shape)).toEqual([
      "raw branch",
      "PgParticipant branch",
      "raw decision insert",
      "PgTransactionLog.decide",
      "promises only",
      "core only, async participants",
      "raw2pc transaction",
      "accord SQL by hand",
      "accord calls, Promise-sequenced",
      "accord2pc transaction"
    ])
    for (const r of result.rows) {
      expect(r.rounds, r.shape).toHaveLength(2)
      for (const round of r.rounds) expect(round.cpuMicrosPerOp, r.shape).toBeGreaterThan(0)
      expect(r.wallMicrosPerOp, r.shape).toBeGreaterThan(0)
    }
    // BEGIN, UPDATE, PREPARE TRANSACTION, COMMIT PREPARED.
    expect(row("raw branch").statementsPerOp).toBe(4)
    // BEGIN, UPDATE, RESET ROLE + marker INSERT + PREPARE TRANSACTION (one message, three
    // statements), COMMIT PREPARED.
    expect(row("PgParticipant branch").statementsPerOp).toBe(6)
    expect(row("raw decision insert").statementsPerOp).toBe(1)
    // The decision insert, plus the batched completions (at most one update per operation).
    expect(row("PgTransactionLog.decide").statementsPerOp).toBeGreaterThan(1)
    expect(row("PgTransactionLog.decide").statementsPerOp).toBeLessThanOrEqual(2)
    expect(row("promises only").statementsPerOp).toBe(0)
    expect(row("core only, async participants").statementsPerOp).toBe(0)
    // Two branches of 4, the decision insert.
    expect(row("raw2pc transaction").statementsPerOp).toBe(9)
    // Two branches of 6, the decision insert: Accord's statements, sent by hand.
    expect(row("accord SQL by hand").statementsPerOp).toBe(13)
    // Accord's own calls send what accord2pc sends: the same statements and batched completions.
    expect(row("accord calls, Promise-sequenced").statementsPerOp).toBeGreaterThan(13)
    expect(row("accord2pc transaction").statementsPerOp).toBeGreaterThan(13)

    const pairs = result.rows.filter((r) => r.twin !== undefined)
    expect(pairs.map((r) => r.twin)).toEqual([
      "raw branch",
      "raw decision insert",
      "promises only",
      "raw2pc transaction",
      "accord SQL by hand",
      "accord calls, Promise-sequenced"
    ])
    for (const r of pairs) {
      expect(r.cpuMicrosOverTwin).toBeCloseTo(r.cpuMicrosPerOp - row(r.twin!).cpuMicrosPerOp, 0)
    }
    expect(result.preparedLeft).toBe(0)
    expect(Breakdown.markdown(result)).toContain("| accord2pc transaction |")
  }, 120_000)
})
