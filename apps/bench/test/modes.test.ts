import * as TestDatabase from "@accord/postgres/TestDatabase"
import postgres from "postgres"
import { afterAll, describe, expect, it } from "vitest"
import * as Modes from "../src/Modes.js"
import * as Server from "../src/Server.js"
import { dropSetup } from "./support/databases.js"

const server = await TestDatabase.server()

// Databases of their own, apart from those of a benchmark run on the same server.
const prefix = "accord_bench_modes_test_"

describe.skipIf(server === undefined)("opt-in modes on PostgreSQL", () => {
  const adminUrl = server?.adminUrl ?? ""

  afterAll(() => dropSetup(adminUrl, prefix))

  it("a by-hand transfer whose other branch fails leaves nothing prepared, even when that branch prepares late", async () => {
    const dbs = await Server.setup(adminUrl, prefix)
    const pools = {
      a: Server.pool(dbs.a, 2),
      b: Server.pool(dbs.b, 2),
      coordinator: Server.pool(dbs.coordinator, 2)
    }
    const id = `late_${process.pid}`
    try {
      // Branch b fails at once; branch a prepares 100 ms later, after the failure is known.
      let branchA: Promise<unknown> = Promise.resolve()
      const branch = (sql: postgres.Sql, gid: string) => {
        if (sql === pools.b) return Promise.reject(new Error("branch b refused"))
        branchA = new Promise((resolve) => setTimeout(resolve, 100)).then(() =>
          sql.begin(async (tx) => {
            await tx.prepare(gid)
          })
        )
        return branchA
      }
      await expect(Modes.byHandTransfer(pools, id, branch)).rejects.toThrow("branch b refused")
      await branchA.catch(() => undefined)
      expect(await Server.preparedIn(adminUrl, [dbs.a, dbs.b])).toBe(0)
    } finally {
      await Server.rollBackLeftovers([dbs.a, dbs.b])
      await Promise.all([pools.a.end(), pools.b.end(), pools.coordinator.end()])
    }
  })

  it("the pipelined transfers, by hand and through Accord, commit with one PREPARE per branch and move no money out of the banks", async () => {
    const dbs = await Server.setup(adminUrl, prefix)
    const raw = Modes.rawModes(dbs).find((m) => m.name === "raw2pc-pipelined")!
    const accord = Modes.accordModes(dbs).find((m) => m.name === "accord2pc-pipelined")!
    expect(raw.optIn).toBe(true)
    expect(accord.optIn).toBeUndefined()
    const totals = async () => {
      const sums: Array<number> = []
      for (const url of [dbs.a, dbs.b]) {
        const sql = postgres(url, { max: 1, onnotice: () => {} })
        try {
          const [row] = await sql<
            { total: string }[]
          >`SELECT sum(balance)::bigint::text AS total FROM accounts`
          sums.push(Number(row!.total))
        } finally {
          await sql.end({ timeout: 5 })
        }
      }
      return sums[0]! + sums[1]!
    }
    const before = await totals()
    for (const mode of [raw, accord]) {
      const instance = await mode.open(4)
      Server.resetCounters()
      try {
        await Promise.all(
          Array.from({ length: 4 }, async () => {
            for (let i = 0; i < 10; i++) await instance.tx()
          })
        )
      } finally {
        await instance.close()
      }
      const counted = Server.snapshotCounters()
      expect(counted.prepares, mode.name).toBe(80)
      expect(counted.commitPrepared, mode.name).toBe(80)
    }
    expect(await totals()).toBe(before)
    expect(await Server.preparedIn(adminUrl, [dbs.a, dbs.b])).toBe(0)
  }, 60_000)

  it("raw2pc-group writes concurrent decisions in fewer INSERTs, one row each, and commits every transfer", async () => {
    const dbs = await Server.setup(adminUrl, prefix)
    const mode = Modes.rawModes(dbs).find((m) => m.name === "raw2pc-group")!
    expect(mode.optIn).toBe(true)
    const instance = await mode.open(16)
    const transfers = 160
    Server.resetCounters()
    try {
      await Promise.all(
        Array.from({ length: 16 }, async () => {
          for (let i = 0; i < transfers / 16; i++) await instance.tx()
        })
      )
    } finally {
      await instance.close()
    }
    const counted = Server.snapshotCounters()
    // Per transfer: 2 x (BEGIN, UPDATE, PREPARE), 2 COMMIT PREPARED; the decisions share INSERTs.
    const inserts = counted.statements - transfers * 8
    expect(inserts).toBeGreaterThan(0)
    expect(inserts).toBeLessThan(transfers)
    expect(counted.prepares).toBe(2 * transfers)
    expect(counted.commitPrepared).toBe(2 * transfers)
    const coordinator = postgres(dbs.coordinator, { max: 1, onnotice: () => {} })
    try {
      const [row] = await coordinator<{ n: number; gids: number }[]>`
        SELECT count(*)::int AS n, sum(cardinality(gids))::int AS gids FROM raw_decisions`
      expect(row).toEqual({ n: transfers, gids: 2 * transfers })
    } finally {
      await coordinator.end({ timeout: 5 })
    }
    expect(await Server.preparedIn(adminUrl, [dbs.a, dbs.b])).toBe(0)
  }, 60_000)

  it("raw2pc's decision INSERT is forced even where the coordinator database defaults to synchronous_commit = off", async () => {
    const dbs = await Server.setup(adminUrl, prefix)
    const name = new URL(dbs.coordinator).pathname.slice(1)
    const admin = postgres(adminUrl, { max: 1, onnotice: () => {} })
    await admin.unsafe(`ALTER DATABASE "${name}" SET synchronous_commit = off`)
    const mode = Modes.rawModes(dbs).find((m) => m.name === "raw2pc")!
    const instance = await mode.open(1)
    try {
      await instance.tx()
      // The setting the decision INSERT ran under, as its own session saw it.
      const [row] = await admin<{ settings: string | null }[]>`
        SELECT (SELECT array_to_string(setconfig, ',') FROM pg_db_role_setting s
                 JOIN pg_database d ON d.oid = s.setdatabase WHERE d.datname = ${name}) AS settings`
      expect(row?.settings).toContain("synchronous_commit=off")
      const sql = Modes.decisionPool(dbs.coordinator, 1)
      try {
        const [sc] = await sql<{ synchronous_commit: string }[]>`SHOW synchronous_commit`
        expect(sc?.synchronous_commit).toBe("on")
      } finally {
        await sql.end({ timeout: 5 })
      }
    } finally {
      await instance.close()
      await admin.unsafe(`ALTER DATABASE "${name}" RESET synchronous_commit`)
      await admin.end({ timeout: 5 })
    }
    expect(await Server.preparedIn(adminUrl, [dbs.a, dbs.b])).toBe(0)
  }, 30_000)
})
