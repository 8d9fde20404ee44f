/**
 * The 2PC Promise facade (`Coordinator.TwoPhaseCoordinator`) over real PostgreSQL participants and a
 * PostgreSQL log: what `timeout` bounds, and what executeTransaction reports when a connection is
 * lost at the commit point (in doubt or pending, never failed or aborted). A TCP proxy in front of a
 * participant or the log cuts the connection on the statement under test.
 */
import { Coordinator, TransactionError } from "@accord/core"
import { afterAll, beforeAll, describe, expect, it } from "@effect/vitest"
import { Effect, Layer } from "effect"
import postgres from "postgres"
import * as PgParticipant from "../src/PgParticipant.js"
import * as PgTransactionLog from "../src/PgTransactionLog.js"
import * as TestDatabase from "../src/TestDatabase.js"
import { createBank, preparedIn } from "./support/pg2pc.js"
import * as TcpProxy from "./support/tcpProxy.js"

const server = await TestDatabase.server()
const DB_A = "accord_t_facade_a"
const DB_B = "accord_t_facade_b"
const DB_LOG = "accord_t_facade_log"

type Transfer = { id: number; amount: number }
const operations = {
  debit: (s: PgParticipant.BranchSession, p: Transfer) =>
    s.query("update accounts set balance = balance - $2 where id = $1", [p.id, p.amount]),
  credit: (s: PgParticipant.BranchSession, p: Transfer) =>
    s.query("update accounts set balance = balance + $2 where id = $1", [p.id, p.amount]),
  slowCredit: async (s: PgParticipant.BranchSession, p: Transfer) => {
    await s.query("update accounts set balance = balance + $2 where id = $1", [p.id, p.amount])
    await s.query("select pg_sleep(0.8)")
  }
}

/** A simple-protocol COMMIT (one-phase), not COMMIT PREPARED. */
const carriesCommit = (chunk: Buffer) => chunk.includes("COMMIT\u0000") && !chunk.includes("PREPARED")
const carriesCommitPrepared = (chunk: Buffer) => chunk.includes("COMMIT PREPARED")
const carriesDecision = (chunk: Buffer) => chunk.includes("insert into accord_decision")

describe.skipIf(server === undefined)("TwoPhaseCoordinator on PostgreSQL", () => {
  const adminUrl = server?.adminUrl ?? ""
  let urlA: string
  let urlB: string
  let urlLog: string
  const pools: Array<postgres.Sql> = []
  const pool = (url: string) => {
    const sql = postgres(url, { max: 4, onnotice: () => {} })
    pools.push(sql)
    return sql
  }
  const balanceOf = async (url: string, id: number) => {
    const sql = pool(url)
    const rows = await sql<{ balance: number }[]>`select balance from accounts where id = ${id}`
    return rows[0]!.balance
  }
  /** A coordinator with a PostgreSQL log and participants a and b (on the given pools). */
  const coordinatorOn = async (
    sqlA: postgres.Sql,
    sqlB: postgres.Sql,
    options: { timeout: number; logSql?: postgres.Sql }
  ) => {
    const a = await Effect.runPromise(PgParticipant.make({ name: "a", sql: sqlA, operations }))
    const b = await Effect.runPromise(PgParticipant.make({ name: "b", sql: sqlB, operations }))
    const coordinator = new Coordinator.TwoPhaseCoordinator({
      timeout: options.timeout,
      log: Layer.orDie(PgTransactionLog.layer({ sql: options.logSql ?? pool(urlLog) }))
    })
    await coordinator.registerParticipant(a)
    await coordinator.registerParticipant(b)
    return { coordinator, a, b }
  }
  /** Polls (bounded) until nothing is prepared in the bank databases. */
  const nothingPreparedSoon = async () => {
    for (let i = 0; i < 100; i++) {
      if ((await preparedIn(adminUrl, [DB_A, DB_B])).length === 0) return []
      await new Promise((r) => setTimeout(r, 50))
    }
    return preparedIn(adminUrl, [DB_A, DB_B])
  }

  beforeAll(async () => {
    urlA = await createBank(adminUrl, DB_A, 10, 100)
    urlB = await createBank(adminUrl, DB_B, 10, 100)
    urlLog = await TestDatabase.createDatabase(adminUrl, DB_LOG)
  }, 60_000)

  afterAll(async () => {
    for (const sql of pools) await sql.end({ timeout: 5 })
    const left = await preparedIn(adminUrl, [DB_A, DB_B])
    for (const db of [DB_A, DB_B, DB_LOG]) await TestDatabase.dropDatabase(adminUrl, db)
    expect(left).toEqual([])
  }, 60_000)

  it("aborts within the timeout when a prepare is still working, and leaves nothing prepared", async () => {
    const { coordinator } = await coordinatorOn(pool(urlA), pool(urlB), { timeout: 300 })
    const started = Date.now()
    const result = await coordinator.executeTransaction([
      ["a", "debit", { id: 1, amount: 10 }],
      ["b", "slowCredit", { id: 1, amount: 10 }]
    ])
    expect(Date.now() - started).toBeLessThan(2_000)
    expect(result.status).toBe("aborted")
    expect(result.committed).toBe(false)
    expect(result.reason).toMatch(/^b: .*timed out/)
    expect(await nothingPreparedSoon()).toEqual([])
    expect(await balanceOf(urlA, 1)).toBe(100)
    expect(await balanceOf(urlB, 1)).toBe(100)
    await coordinator.dispose()
  }, 30_000)

  it("resolves commit-pending, not failed, when a COMMIT PREPARED's connection is lost; recovery finishes it", async () => {
    const proxy = await TcpProxy.start(urlB)
    const { coordinator } = await coordinatorOn(pool(urlA), pool(proxy.url(urlB)), { timeout: 1_000 })
    const cut = proxy.freezeWhen(carriesCommitPrepared, { deliver: false }).then(() => proxy.close())
    const result = await coordinator.executeTransaction([
      ["a", "debit", { id: 2, amount: 10 }],
      ["b", "credit", { id: 2, amount: 10 }]
    ])
    await cut
    expect(result.committed).toBe(true)
    expect(result.status).toBe("commit-pending")
    expect(result.pending).toEqual(["b"])
    expect(await balanceOf(urlA, 2)).toBe(90)
    expect((await preparedIn(adminUrl, [DB_B])).map((p) => p.gid)).toEqual([`accord_${result.txId}_b`])
    await coordinator.dispose()

    // A coordinator restarted on the same log finishes the commit.
    const restarted = await coordinatorOn(pool(urlA), pool(urlB), { timeout: 1_000 })
    const report = await restarted.coordinator.recover({ orphanAfter: 0 })
    expect(report.unresolved).toEqual([])
    expect(await balanceOf(urlB, 2)).toBe(110)
    expect(await nothingPreparedSoon()).toEqual([])
    await restarted.coordinator.dispose()
  }, 30_000)

  it("rejects a one-phase COMMIT whose answer was lost as an in-doubt BranchCallError, never as aborted", async () => {
    const proxy = await TcpProxy.start(urlA)
    const { coordinator } = await coordinatorOn(pool(proxy.url(urlA)), pool(urlB), { timeout: 1_000 })
    // The server gets the COMMIT (and commits); its answer never comes back. The link is cut a
    // moment later: cut in the same tick, a COMMIT still queued in the proxy's socket was dropped
    // with it under load (CI, 2026-12-07), and the server rolled back instead.
    const cut = proxy
      .freezeWhen(carriesCommit, { deliver: true })
      .then(() => new Promise((resolve) => setTimeout(resolve, 200)))
      .then(() => proxy.close())
    const error = await coordinator.executeTransaction([["a", "debit", { id: 3, amount: 10 }]]).then(
      (r) => r,
      (e: unknown) => e
    )
    await cut
    expect(error).toBeInstanceOf(TransactionError.BranchCallError)
    expect(error).toMatchObject({ _tag: "BranchCallError", phase: "onePhaseCommit", inDoubt: true })
    expect((error as Error).message).toContain("(in doubt)")
    // It did commit: an "aborted" answer would have been a lie.
    expect(await balanceOf(urlA, 3)).toBe(90)
    await coordinator.dispose()
  }, 30_000)

  it("rejects with LogError when the commit decision's connection is lost; the branches stay for recovery", async () => {
    const proxy = await TcpProxy.start(urlLog)
    const { coordinator } = await coordinatorOn(pool(urlA), pool(urlB), {
      timeout: 1_000,
      logSql: pool(proxy.url(urlLog))
    })
    // The insert never reaches the log: no decision was written.
    const cut = proxy.freezeWhen(carriesDecision, { deliver: false }).then(() => proxy.close())
    const error = await coordinator
      .executeTransaction([
        ["a", "debit", { id: 4, amount: 10 }],
        ["b", "credit", { id: 4, amount: 10 }]
      ])
      .then(
        (r) => r,
        (e: unknown) => e
      )
    await cut
    expect(error).toBeInstanceOf(TransactionError.LogError)
    expect(error).toMatchObject({ _tag: "LogError", operation: "decide" })
    expect((await preparedIn(adminUrl, [DB_A, DB_B])).length).toBe(2)
    await coordinator.dispose()

    // Recovery on the reachable log presumes the undecided transaction aborted.
    const restarted = await coordinatorOn(pool(urlA), pool(urlB), { timeout: 1_000 })
    const report = await restarted.coordinator.recover({ orphanAfter: 0 })
    expect(report.unresolved).toEqual([])
    expect(await nothingPreparedSoon()).toEqual([])
    expect(await balanceOf(urlA, 4)).toBe(100)
    expect(await balanceOf(urlB, 4)).toBe(100)
    await restarted.coordinator.dispose()
  }, 30_000)
})
