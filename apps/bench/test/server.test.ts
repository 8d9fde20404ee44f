import * as TestDatabase from "@accord/postgres/TestDatabase"
import { describe, expect, it } from "vitest"
import * as Server from "../src/Server.js"

const server = await TestDatabase.server()

describe.skipIf(server === undefined)("statement counting on the wire", () => {
  const adminUrl = server?.adminUrl ?? ""

  it("counts each executed statement once, classified, without postgres.js's debug hook", async () => {
    const sql = Server.pool(adminUrl, 1)
    const gid = `accord_bench_count_test_${process.pid}`
    try {
      // postgres.js captures a stack trace per query when `debug` is set: the pools must not set it.
      expect(sql.options.debug).toBeFalsy()
      await sql`select 1 as warm` // the connection, its startup and type fetch: not counted below
      Server.resetCounters()
      // A parameterised statement: parsed and described once, then bound and executed each time.
      for (let i = 0; i < 3; i++) expect(await sql`select ${i}::int as n`).toEqual([{ n: i }])
      expect(Server.snapshotCounters()).toMatchObject({
        statements: 3,
        prepares: 0,
        commitPrepared: 0,
        rollbackPrepared: 0
      })
      // A simple-protocol message of two statements counts two.
      await sql.unsafe("select 1; select 2").simple()
      expect(Server.snapshotCounters().statements).toBe(5)
      // BEGIN, the statement, PREPARE TRANSACTION (extended protocol), then ROLLBACK PREPARED.
      await sql.begin(async (tx) => {
        await tx`select ${gid}::text as g`
        await tx.prepare(gid)
      })
      await sql.unsafe(`ROLLBACK PREPARED '${gid}'`)
      // The same through one simple message, then COMMIT PREPARED.
      await sql.unsafe(`BEGIN; PREPARE TRANSACTION '${gid}'`).simple()
      await sql.unsafe(`COMMIT PREPARED '${gid}'`)
      expect(Server.snapshotCounters()).toMatchObject({
        statements: 12,
        prepares: 2,
        commitPrepared: 1,
        rollbackPrepared: 1
      })
    } finally {
      await sql.unsafe(`ROLLBACK PREPARED '${gid}'`).catch(() => undefined)
      await sql.end({ timeout: 5 })
    }
  })

  it("counts per database as well, so that a branch's own PREPAREs can be told apart", async () => {
    const sql = Server.pool(adminUrl, 1)
    const database = new URL(adminUrl).pathname.slice(1) || "postgres"
    const gid = `accord_bench_count_db_test_${process.pid}`
    try {
      await sql`select 1 as warm`
      Server.resetCounters()
      await sql.begin(async (tx) => {
        await tx`select 1 as x`
        await tx.prepare(gid)
      })
      await sql.unsafe(`COMMIT PREPARED '${gid}'`)
      const counted = Server.snapshotCounters()
      expect(counted.byDatabase[database]).toEqual({
        statements: 4,
        prepares: 1,
        commitPrepared: 1,
        rollbackPrepared: 0
      })
      // A snapshot is a copy.
      Server.resetCounters()
      expect(counted.byDatabase[database]?.prepares).toBe(1)
      expect(Server.snapshotCounters().byDatabase[database]).toBeUndefined()
    } finally {
      await sql.unsafe(`ROLLBACK PREPARED '${gid}'`).catch(() => undefined)
      await sql.end({ timeout: 5 })
    }
  })
})

describe.skipIf(server === undefined)("one run per set of benchmark databases", () => {
  const adminUrl = server?.adminUrl ?? ""

  it("refuses a second run on the same databases, naming the first's session, until it ends", async () => {
    const prefix = `accord_bench_claim_${process.pid}_`
    const first = await Server.claim(adminUrl, prefix)
    try {
      await expect(Server.claim(adminUrl, prefix)).rejects.toThrow(
        new RegExp(
          `another benchmark run is using the databases ${prefix}\\* on this server \\(its session: pid \\d+\\)`
        )
      )
      // Another prefix is other databases: not refused.
      const other = await Server.claim(adminUrl, `${prefix}x_`)
      await other.release()
    } finally {
      await first.release()
    }
    const again = await Server.claim(adminUrl, prefix)
    await again.release()
  })
})
