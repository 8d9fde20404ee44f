/**
 * postgres.js 3.4.9 and a statement cancelled while it waits its turn on a connection (written
 * behind another: a pool pipelines onto a busy connection once all of them are busy). When the
 * statement ahead was answered, the driver sent the cancel request, skipped the cancelled statement
 * and made the one behind it the running query: that one then took the cancelled statement's answer
 * (its rows, or its 57014), each later statement the answer before its own, and the cancelled one
 * never settled. Measured here before the patch: `select 'three'` resolved with `['two']`.
 *
 * Accord's patch (`patches/postgres@3.4.9.patch`) makes the cancelled statement the running query,
 * answered with its own answer. It also keeps a pool from executing a query cancelled before the
 * pool got it (a query reaches the pool a microtask after it is first awaited): that parked the
 * pool's connection with nothing running on it, for good. These tests fail without the patch, in
 * the ESM and CommonJS builds alike.
 */
import { createRequire } from "node:module"
import postgres from "postgres"
import { describe, expect, it } from "vitest"
import * as TestDatabase from "../src/TestDatabase.js"
import * as TcpProxy from "./support/tcpProxy.js"

const server = await TestDatabase.server()
const require = createRequire(import.meta.url)
const builds: ReadonlyArray<readonly [string, typeof postgres]> = [
  ["ESM", postgres],
  ["CommonJS", require("postgres") as typeof postgres]
]

type Outcome =
  | { readonly ok: true; readonly v: ReadonlyArray<unknown> }
  | { readonly ok: false; readonly code: unknown }

/** How a statement settled within `ms` ("unsettled" when it did not), without throwing. */
const outcome = (q: PromiseLike<ReadonlyArray<postgres.Row>>, ms: number): Promise<Outcome | "unsettled"> =>
  Promise.race([
    q.then(
      (rows): Outcome => ({ ok: true, v: rows.map((r) => r["v"]) }),
      (error: { code?: unknown }): Outcome => ({ ok: false, code: error.code })
    ),
    new Promise<"unsettled">((resolve) => setTimeout(() => resolve("unsettled"), ms))
  ])

const sleep = (ms: number) => new Promise((resolve) => setTimeout(resolve, ms))

describe.skipIf(server === undefined)("postgres.js: a pipelined statement cancelled while it waits", () => {
  const adminUrl = server?.adminUrl ?? ""

  for (const [build, driver] of builds) {
    it(`${build}: it is answered with its own answer and the statement behind it with its own`, async () => {
      const pool = driver(adminUrl, { max: 1, onnotice: () => {} })
      try {
        await pool`select 1`
        const ahead = pool.unsafe("select pg_sleep(0.3), 'one' as v").execute()
        const cancelled = pool.unsafe("select pg_sleep(0.3), 'two' as v").execute()
        const behind = pool.unsafe("select 'three' as v").execute()
        // (`execute()`: a postgres.js query is sent when first awaited, or when told to.)
        await sleep(100)
        // Written, not running: the connection is still answering `ahead`.
        expect((cancelled as unknown as { active: boolean }).active).toBe(false)
        cancelled.cancel()
        const [a, c, b] = await Promise.all([
          outcome(ahead, 3_000),
          outcome(cancelled, 3_000),
          outcome(behind, 3_000)
        ])
        expect(a).toEqual({ ok: true, v: ["one"] })
        // The cancel request reaches it while it sleeps.
        expect(c).toEqual({ ok: false, code: "57014" })
        expect(b).toEqual({ ok: true, v: ["three"] })
        await expect(pool`select 'after' as v`).resolves.toEqual([{ v: "after" }])
      } finally {
        await pool.end({ timeout: 5 })
      }
    })

    it(`${build}: a quick one settles too, and no later statement is given its answer`, async () => {
      const pool = driver(adminUrl, { max: 1, onnotice: () => {} })
      try {
        await pool`select 1`
        const ahead = pool.unsafe("select pg_sleep(0.3), 'one' as v").execute()
        const cancelled = pool.unsafe("select 'two' as v").execute()
        const behind = pool.unsafe("select 'three' as v").execute()
        const last = pool.unsafe("select 'four' as v").execute()
        await sleep(100)
        cancelled.cancel()
        const [c, b, l] = await Promise.all([
          outcome(cancelled, 3_000),
          outcome(behind, 3_000),
          outcome(last, 3_000)
        ])
        await ahead
        // Its answer, or the cancel's error if the request came in time: either way its own.
        expect([
          JSON.stringify({ ok: true, v: ["two"] }),
          JSON.stringify({ ok: false, code: "57014" })
        ]).toContain(JSON.stringify(c))
        // A cancel request that arrives late may still hit a later statement (PostgreSQL cancels
        // whatever the session is running); what must never happen is another statement's answer.
        for (const [o, own] of [
          [b, "three"],
          [l, "four"]
        ] as const) {
          expect(o).not.toBe("unsettled")
          if (o !== "unsettled" && o.ok) expect(o.v).toEqual([own])
        }
      } finally {
        await pool.end({ timeout: 5 })
      }
    })

    it(`${build}: one cancelled in the tick it was started leaves the pool its connection`, async () => {
      const pool = driver(adminUrl, { max: 1, onnotice: () => {} })
      try {
        await pool`select 1`
        // Started, not yet handed to the pool (that happens a microtask later), then cancelled.
        const cancelled = pool.unsafe("select 'two' as v").execute()
        cancelled.cancel()
        expect(await outcome(cancelled, 3_000)).toEqual({ ok: false, code: "57014" })
        // Unpatched, the pool's only connection was parked with nothing running: this hung.
        expect(await outcome(pool.unsafe("select 'three' as v").execute(), 3_000)).toEqual({
          ok: true,
          v: ["three"]
        })
      } finally {
        await pool.end({ timeout: 5 })
      }
    })

    it(`${build}: one cancelled while its connection opens leaves the pool that connection`, async () => {
      // Found by a review (2026-12-07): ten 2PC prepares timing out at once on a 10-connection pool
      // left all ten connections opened and idle on the server but parked as "connecting" in the
      // pool, for good: every later statement and reserve() waited for ever. A statement handed to
      // a closed connection becomes that connection's first statement once it has opened; cancelled
      // in between, it was skipped, and the connection never told the pool it was ready.
      const proxy = await TcpProxy.start(adminUrl)
      const pool = driver(proxy.url(adminUrl), { max: 1, onnotice: () => {} })
      try {
        // The server's answers to the connection's start-up are held: it is still opening.
        const opening = proxy.freezeWhen(() => true, { deliver: true })
        const cancelled = pool.unsafe("select 'two' as v").execute()
        await opening
        cancelled.cancel()
        expect(await outcome(cancelled, 3_000)).toEqual({ ok: false, code: "57014" })
        proxy.unfreeze()
        expect(await outcome(pool.unsafe("select 'three' as v").execute(), 3_000)).toEqual({
          ok: true,
          v: ["three"]
        })
        const reserved = await Promise.race([pool.reserve(), sleep(3_000).then(() => undefined)])
        expect(reserved).toBeDefined()
        reserved?.release()
      } finally {
        proxy.unfreeze()
        await pool.end({ timeout: 5 })
        await proxy.close()
      }
    })
  }
})
