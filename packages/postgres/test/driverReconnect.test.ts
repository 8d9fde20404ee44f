/**
 * postgres.js 3.4.9 and a connection that dies while it is reserved (a backend terminated by an
 * operator, a server restart, a dropped network), which is how a branch loses its connection:
 *
 * - a statement sent on the reserved connection after its socket closed scheduled a write on a
 *   null socket: an uncaught TypeError that ended the process;
 * - a `reserve()` waiting for that connection was handed to its reconnect and then dropped (the
 *   reconnect's first ReadyForQuery discards a reserve request, expecting it still queued), so it
 *   never resolved; and the closed socket's last error was replayed on the reconnected one,
 *   rejecting the next request with the old 57P01;
 * - a `reserve()` refused by an unreachable server (ECONNREFUSED while it restarts) stayed in the
 *   pool's queue, and the next connection to open was handed to it, a request already rejected:
 *   that connection was lost to the pool for good.
 *
 * Accord's patch (`patches/postgres@3.4.9.patch`) fixes all four; these tests fail without it.
 */
import { createRequire } from "node:module"
import net from "node:net"
import postgres from "postgres"
import { afterAll, describe, expect, it } from "vitest"
import * as TestDatabase from "../src/TestDatabase.js"

const server = await TestDatabase.server()

describe.skipIf(server === undefined)("postgres.js when a reserved connection dies", () => {
  const adminUrl = server?.adminUrl ?? ""
  const admin = postgres(adminUrl, { max: 1, onnotice: () => {} })
  afterAll(() => admin.end({ timeout: 5 }))

  /** A reserved connection inside a transaction, and its backend's pid. */
  const reserveInTransaction = async (pool: postgres.Sql) => {
    const first = await pool.reserve()
    await first`begin`
    const [row] = await first<{ pid: number }[]>`select pg_backend_pid() as pid`
    return { first, pid: row!.pid }
  }

  const within = <A>(promise: Promise<A>, ms: number) =>
    Promise.race([promise, new Promise<"timed out">((resolve) => setTimeout(() => resolve("timed out"), ms))])

  it("a statement on a reserved connection whose socket has closed fails instead of ending the process", async () => {
    const pool = postgres(adminUrl, { max: 1, onnotice: () => {} })
    try {
      const { first, pid } = await reserveInTransaction(pool)
      await admin`select pg_terminate_backend(${pid})`
      await new Promise((resolve) => setTimeout(resolve, 300)) // the close is processed
      const late = await within(
        first`select 1`.then(
          () => "answered",
          (e: { code?: string }) => e.code
        ),
        5_000
      )
      expect(late).toBe("CONNECTION_CLOSED")
      // The pool reconnects on demand.
      expect(await within(pool`select 2 as two`, 10_000)).toEqual([{ two: 2 }])
    } finally {
      await pool.end({ timeout: 5 })
    }
  }, 30_000)

  it("a reserve() waiting for the pool's one connection gets it when the reserved one dies", async () => {
    const pool = postgres(adminUrl, { max: 1, onnotice: () => {} })
    try {
      const { pid } = await reserveInTransaction(pool)
      const waiting = pool.reserve() // the pool's only connection is reserved: this waits
      await admin`select pg_terminate_backend(${pid})`
      const second = await within(waiting, 10_000)
      expect(second).not.toBe("timed out")
      if (second !== "timed out") {
        expect(await second`select 1 as one`).toEqual([{ one: 1 }])
        second.release()
      }
      expect(await within(pool`select 2 as two`, 10_000)).toEqual([{ two: 2 }])
    } finally {
      await pool.end({ timeout: 5 })
    }
  }, 30_000)

  for (const [build, driver] of [
    ["ESM", postgres],
    ["CommonJS", createRequire(import.meta.url)("postgres") as typeof postgres]
  ] as const) {
    it(`${build}: a reserve() refused by an unreachable server does not take the pool's connection once it is back`, async () => {
      // A port that refuses connections (ECONNREFUSED, as while a server restarts), then forwards
      // to the server. Unpatched, each reserve() that failed to connect stayed in the pool's queue,
      // and the next connection to open was handed to it, already rejected: lost for good.
      const target = new URL(adminUrl)
      const gate = net.createServer()
      await new Promise<void>((resolve) => gate.listen(0, "127.0.0.1", resolve))
      const port = (gate.address() as net.AddressInfo).port
      await new Promise<void>((resolve) => gate.close(() => resolve()))
      const sockets = new Set<net.Socket>()
      const forward = net.createServer((client) => {
        const upstream = net.connect(Number(target.port || 5432), target.hostname)
        for (const s of [client, upstream]) {
          sockets.add(s)
          s.on("error", () => undefined)
        }
        client.pipe(upstream)
        upstream.pipe(client)
      })
      const proxied = new URL(adminUrl)
      proxied.hostname = "127.0.0.1"
      proxied.port = String(port)
      const pool = driver(proxied.toString(), { max: 1, onnotice: () => {} })
      try {
        for (let i = 0; i < 2; i++)
          await expect(pool.reserve()).rejects.toMatchObject({ code: "ECONNREFUSED" })
        await new Promise<void>((resolve) => forward.listen(port, "127.0.0.1", resolve))
        expect(await within(pool`select 'back' as v`, 5_000)).toEqual([{ v: "back" }])
        const reserved = await within(pool.reserve(), 5_000)
        expect(reserved).not.toBe("timed out")
        if (reserved !== "timed out") reserved.release()
      } finally {
        await pool.end({ timeout: 5 })
        for (const s of sockets) s.destroy()
        await new Promise<void>((resolve) => forward.close(() => resolve()))
      }
    }, 30_000)
  }
})
