/**
 * postgres.js 3.4.9 and a cancel request that arrives after its statement ended. PostgreSQL's cancel
 * request names a session, not a statement: it cancels whatever the session runs when the request
 * arrives. When the statement it was sent for ended first (its answer crossing the request), the
 * driver wrote the next statement on the connection at once, and the request cancelled that one:
 * on a pool, another caller's statement failed with 57014. Accord cancels a running pool statement
 * when it gives up on it (a decision write, a COMMIT PREPARED, a recovery read past its bound).
 *
 * Accord's patch (`patches/postgres@3.4.9.patch`) writes nothing more on the connection until the
 * server has taken the request (it closes the request's socket once it has signalled the session;
 * a session idle between statements drops the signal). A TCP proxy holds the cancel request here,
 * so the statement it was sent for ends first, every time. The first test fails without the patch,
 * in the ESM and CommonJS builds alike.
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

/** A CancelRequest message: length 16, code 80877102, then the session's pid and key. */
const isCancelRequest = (chunk: Buffer): boolean => chunk.length === 16 && chunk.readInt32BE(4) === 80877102

type Outcome = { readonly ok: true; readonly v: unknown } | { readonly ok: false; readonly code: unknown }

const outcome = (q: PromiseLike<ReadonlyArray<postgres.Row>>): Promise<Outcome> =>
  Promise.resolve(q).then(
    (rows): Outcome => ({ ok: true, v: rows[0]?.["v"] }),
    (error: { code?: unknown }): Outcome => ({ ok: false, code: error.code })
  )

const sleep = (ms: number) => new Promise((resolve) => setTimeout(resolve, ms))

describe.skipIf(server === undefined)(
  "postgres.js: a cancel request that arrives after its statement ended",
  () => {
    const adminUrl = server?.adminUrl ?? ""

    for (const [build, driver] of builds) {
      it(`${build}: does not cancel the next statement written on the connection`, async () => {
        const proxy = await TcpProxy.start(adminUrl)
        const pool = driver(proxy.url(adminUrl), { max: 1, onnotice: () => {} })
        try {
          await pool`select 1`
          const held = proxy.freezeWhen(isCancelRequest, { deliver: false })
          const first = pool.unsafe("select pg_sleep(0.2), 'first' as v").execute()
          await sleep(50)
          expect((first as unknown as { active: boolean }).active).toBe(true)
          const cancelling = first.cancel()
          await held
          // The request is held at the proxy: the statement ends on its own.
          expect(await outcome(first)).toEqual({ ok: true, v: "first" })
          // Another caller's statement on the pool's one connection, then the request arrives.
          const next = outcome(pool.unsafe("select pg_sleep(0.4), 'next' as v").execute())
          await sleep(100)
          proxy.unfreeze()
          await cancelling
          expect(await next).toEqual({ ok: true, v: "next" })
          // And the connection goes on serving.
          expect(await outcome(pool`select 'after' as v`)).toEqual({ ok: true, v: "after" })
        } finally {
          proxy.unfreeze()
          await pool.end({ timeout: 5 })
          await proxy.close()
        }
      })

      it(`${build}: a running statement is still cancelled`, async () => {
        const pool = driver(adminUrl, { max: 1, onnotice: () => {} })
        try {
          await pool`select 1`
          const long = pool.unsafe("select pg_sleep(5), 'long' as v").execute()
          await sleep(100)
          const started = Date.now()
          await long.cancel()
          expect(await outcome(long)).toEqual({ ok: false, code: "57014" })
          expect(Date.now() - started).toBeLessThan(2_000)
          expect(await outcome(pool`select 'after' as v`)).toEqual({ ok: true, v: "after" })
        } finally {
          await pool.end({ timeout: 5 })
        }
      })
    }
  }
)
