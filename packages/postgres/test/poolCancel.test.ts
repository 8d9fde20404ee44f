/**
 * Interrupting a statement Accord sent through a pool (the logs' reads and writes, `COMMIT
 * PREPARED`, recovery's reads): `statement` and `startVia` in `internal/client.ts`.
 *
 * A pool pipelines onto a busy connection once all of its connections are busy, so such a statement
 * may be written and waiting behind another. Cancelling it then gave its answer to the statement
 * behind it (unpatched postgres.js) or sent a cancel request that, once the statement had ended,
 * cancelled the statement behind it: another caller's. Accord now leaves a waiting statement to run
 * and settle, and cancels only one that is running or not yet written. Both tests here failed
 * before: the statement behind got `['two']` (unpatched driver) or 57014 (patched).
 */
import { Duration, Effect, Either, Exit, Fiber } from "effect"
import postgres from "postgres"
import { describe, expect, it } from "vitest"
import { fromPostgres, type Send, startVia, statement } from "../src/internal/client.js"
import * as TestDatabase from "../src/TestDatabase.js"
import * as TcpProxy from "./support/tcpProxy.js"

const server = await TestDatabase.server()
const sleep = (ms: number) => new Promise((resolve) => setTimeout(resolve, ms))

describe.skipIf(server === undefined)("a pool statement interrupted while it waits behind another", () => {
  const adminUrl = server?.adminUrl ?? ""

  /** A one-connection pool kept busy 300 ms by `ahead`; `run` gets the pool and the Client. */
  const withBusyPool = async (run: (pool: postgres.Sql) => Promise<void>) => {
    const pool = postgres(adminUrl, { max: 1, onnotice: () => {} })
    try {
      await pool`select 1`
      const ahead = pool.unsafe("select pg_sleep(0.3), 'one' as v").execute()
      await run(pool)
      await expect(ahead).resolves.toEqual([expect.objectContaining({ v: "one" })])
      await expect(pool`select 'after' as v`).resolves.toEqual([{ v: "after" }])
    } finally {
      await pool.end({ timeout: 5 })
    }
  }

  it("`statement`: the interruption waits for it, and the statement behind gets its own answer", async () => {
    await withBusyPool(async (pool) => {
      const fiber = Effect.runFork(
        statement<{ v: string }>(fromPostgres(pool), "select 'two' as v", [], Duration.seconds(5))
      )
      const behind = pool.unsafe("select pg_sleep(0.2), 'three' as v").execute()
      await sleep(100)
      const exit = await Effect.runPromise(Fiber.interrupt(fiber))
      expect(Exit.isInterrupted(exit)).toBe(true)
      await expect(behind).resolves.toEqual([expect.objectContaining({ v: "three" })])
    })
  })

  it("`startVia`: the abandoned call settles with its statement's own answer, and the one behind gets its own", async () => {
    await withBusyPool(async (pool) => {
      const started = startVia(fromPostgres(pool), 5_000, async (send: Send) => {
        const sent = await send<{ v: string }>("select 'two' as v")
        return sent.ok ? Either.right(sent.value.map((r) => r.v)) : Either.left(sent.failure)
      })
      const behind = pool.unsafe("select pg_sleep(0.2), 'three' as v").execute()
      await sleep(100)
      started.abandon()
      await expect(started.result).resolves.toEqual(Either.right(["two"]))
      await expect(behind).resolves.toEqual([expect.objectContaining({ v: "three" })])
    })
  })

  it("a running statement with another written behind it is left to finish: a late cancel request would hit the one behind", async () => {
    // The cancel request is held at a proxy, so a request sent would arrive after the running
    // statement ended, while the one behind runs: that one failed with 57014 before this rule.
    const proxy = await TcpProxy.start(adminUrl)
    const pool = postgres(proxy.url(adminUrl), { max: 1, onnotice: () => {} })
    try {
      await pool`select 1`
      const held = proxy.freezeWhen((chunk) => chunk.length === 16 && chunk.readInt32BE(4) === 80877102, {
        deliver: false
      })
      let requested = false
      void held.then(() => {
        requested = true
      })
      const fiber = Effect.runFork(
        statement<{ v: string }>(
          fromPostgres(pool),
          "select pg_sleep(0.2), 'running' as v",
          [],
          Duration.seconds(5)
        )
      )
      await sleep(50)
      const behind = pool.unsafe("select pg_sleep(0.4), 'behind' as v").execute()
      await sleep(50)
      const exit = await Effect.runPromise(Fiber.interrupt(fiber))
      expect(Exit.isInterrupted(exit)).toBe(true)
      await sleep(100)
      proxy.unfreeze()
      await expect(behind).resolves.toEqual([expect.objectContaining({ v: "behind" })])
      expect(requested).toBe(false)
      await expect(pool`select 'after' as v`).resolves.toEqual([{ v: "after" }])
    } finally {
      proxy.unfreeze()
      await pool.end({ timeout: 5 })
      await proxy.close()
    }
  })

  it("a running statement alone on its connection is still cancelled", async () => {
    const pool = postgres(adminUrl, { max: 1, onnotice: () => {} })
    try {
      await pool`select 1`
      const fiber = Effect.runFork(
        statement(fromPostgres(pool), "select pg_sleep(5), 'long' as v", [], Duration.seconds(5))
      )
      await sleep(100)
      const began = performance.now()
      const exit = await Effect.runPromise(Fiber.interrupt(fiber))
      expect(Exit.isInterrupted(exit)).toBe(true)
      expect(performance.now() - began).toBeLessThan(2_000)
      await expect(pool`select 'after' as v`).resolves.toEqual([{ v: "after" }])
    } finally {
      await pool.end({ timeout: 5 })
    }
  })

  it("a statement still in the pool's queue (no connection free) is cancelled at once", async () => {
    const pool = postgres(adminUrl, { max: 1, onnotice: () => {} })
    try {
      const reserved = await pool.reserve()
      const fiber = Effect.runFork(
        statement(fromPostgres(pool), "select 'queued' as v", [], Duration.seconds(5))
      )
      await sleep(50)
      const began = performance.now()
      const exit = await Effect.runPromise(Fiber.interrupt(fiber))
      // It never waits for the reserved connection: the pool took it out of its queue.
      expect(performance.now() - began).toBeLessThan(1_000)
      expect(Exit.isInterrupted(exit)).toBe(true)
      reserved.release()
      await expect(pool`select 'after' as v`).resolves.toEqual([{ v: "after" }])
    } finally {
      await pool.end({ timeout: 5 })
    }
  })
})
