/**
 * postgres.js 3.4.9 fetches the server's array types as the first statement of every new
 * connection (unless the pool says `fetch_types: false`), from its `ReadyForQuery` handler, which
 * drops the Promise of that fetch. When the fetch failed (its backend terminated or cancelled, the
 * network dropped) nothing handled the rejection: under Node's default `--unhandled-rejections=throw`
 * the **process ended**, a coordinator with it. Accord reconnects a connection after every cancel it
 * sends, so the window opens on each of those.
 *
 * Accord's patch (`patches/postgres@3.4.9.patch`) handles that rejection: the connection's close (or
 * its next ReadyForQuery) already settles what was waiting on it. This test fails without it (vitest
 * reports the unhandled rejection, and the test's own listener records it).
 */
import postgres from "postgres"
import { afterAll, describe, expect, it } from "vitest"
import * as TestDatabase from "../src/TestDatabase.js"
import * as TcpProxy from "./support/tcpProxy.js"

const server = await TestDatabase.server()

describe.skipIf(server === undefined)("postgres.js: a new connection whose array-type fetch fails", () => {
  const adminUrl = server?.adminUrl ?? ""
  const admin = postgres(adminUrl, { max: 1, fetch_types: false, onnotice: () => {} })
  afterAll(() => admin.end({ timeout: 5 }))

  it("does not leave an unhandled rejection, and the pool runs the next statement once it reconnects", async () => {
    const unhandled: Array<unknown> = []
    const onUnhandled = (reason: unknown) => unhandled.push(reason)
    process.prependListener("unhandledRejection", onUnhandled)
    const proxy = await TcpProxy.start(adminUrl)
    const application = `accord_typefetch_${process.pid}`
    const pool = postgres(proxy.url(adminUrl), {
      max: 1,
      onnotice: () => {},
      connection: { application_name: application }
    })
    try {
      // Held at the proxy: the type fetch is written, the server never sees it.
      const frozen = proxy.freezeWhen((chunk) => chunk.includes("typarray"), { deliver: false })
      const first = pool`select 'first' as v`.execute()
      await frozen
      const [row] = await admin<{ pid: number }[]>`
        select pid from pg_stat_activity where application_name = ${application}`
      await admin`select pg_terminate_backend(${row!.pid})`
      await new Promise((resolve) => setTimeout(resolve, 200))
      // The fetch gets the server's 57P01 and the close; the statement that waited on that
      // connection fails with it, as every statement waiting on a connection that dies does.
      proxy.unfreeze()
      await expect(first).rejects.toMatchObject({ code: "57P01" })
      await new Promise((resolve) => setTimeout(resolve, 100))
      expect(unhandled).toEqual([])
      // The pool reconnects (fetching the types again) and runs the next statement.
      await expect(pool`select 'next' as v`).resolves.toEqual([{ v: "next" }])
    } finally {
      process.removeListener("unhandledRejection", onUnhandled)
      await pool.end({ timeout: 5 })
      await proxy.close()
    }
  })
})
