/**
 * A step whose COMMIT reached the database but whose service lost the connection before the answer
 * (the barrier reports the connection lost: in doubt). The service must not answer that as "rolled
 * back": the saga would read the step as not applied, and when it then gives up (the database stays
 * unreachable during its retries) it would skip the step's compensation: an order cancelled with its
 * stock still reserved. Real PostgreSQL behind a TCP proxy that forwards the inventory database's
 * COMMIT, then cuts every inventory connection and refuses new ones for a few seconds.
 */
import net from "node:net"
import { Saga, SagaLog } from "@accord/core"
import { TestDatabase } from "@accord/postgres"
import { Effect } from "effect"
import { afterAll, describe, expect, it } from "vitest"
import { dbTarget, type RunConfig, serviceNames } from "../src/Config.js"
import * as Database from "../src/Database.js"
import * as Orchestrator from "../src/Orchestrator.js"
import * as OrderSaga from "../src/OrderSaga.js"
import * as Services from "../src/Services.js"
import { dropDatabases, testConfig } from "./support/config.js"

const server = await TestDatabase.server()

/** A proxy to the server that, once armed, forwards the next COMMIT sent to `database` and cuts. */
const commitCutter = async (database: string, target: { host: string; port: number }) => {
  let armed = false
  let refusing = false
  let cut = false
  let reopen: ReturnType<typeof setTimeout> | undefined
  const links = new Set<{ client: net.Socket; upstream: net.Socket; db: () => string }>()
  const proxy = net.createServer((client) => {
    if (refusing) {
      client.destroy()
      return
    }
    const upstream = net.connect(target.port, target.host)
    let db = ""
    // postgres.js prepares `commit` once per connection, then only binds it by statement name.
    const commitNames = new Set<string>()
    const link = { client, upstream, db: () => db }
    links.add(link)
    client.on("data", (buf: Buffer) => {
      const s = buf.toString("latin1")
      if (db === "") {
        const m = s.match(/database\0([a-z0-9_]+)\0/)
        if (m?.[1] !== undefined) db = m[1]
      }
      for (const m of s.matchAll(/P[\s\S]{4}([^\0]*)\0commit\0/g))
        if (m[1] !== undefined) commitNames.add(m[1])
      // A COMMIT statement, not the word inside another (the barrier's statements set
      // `synchronous_commit`, which the first version of this match took for the COMMIT).
      const isCommit =
        /\bcommit\b/i.test(s) ||
        [...commitNames].some((n) => n !== "" && s.includes(`B`) && s.includes(`\0${n}\0`))
      upstream.write(buf)
      if (armed && db === database && isCommit && !/begin/i.test(s)) {
        armed = false
        refusing = true
        cut = true
        // The COMMIT goes on to the server (end() flushes it); the service never hears back, and
        // loses every connection to this database.
        for (const l of links)
          if (l.db() === database) {
            l.client.destroy()
            l.upstream.end()
          }
        // Refuse new connections (ECONNREFUSED: the service fails fast) for longer than the
        // step's retries last, then listen again on the same port.
        proxy.close()
        reopen = setTimeout(() => {
          refusing = false
          proxy.listen(port, "127.0.0.1")
        }, 3000)
      }
    })
    upstream.on("data", (b: Buffer) => {
      if (!client.destroyed) client.write(b)
    })
    client.on("error", () => {})
    upstream.on("error", () => {})
    client.on("close", () => {
      links.delete(link)
      upstream.end()
    })
    upstream.on("close", () => client.destroy())
  })
  await new Promise<void>((resolve) => proxy.listen(0, "127.0.0.1", resolve))
  const port = (proxy.address() as net.AddressInfo).port
  return {
    port,
    arm: () => {
      armed = true
    },
    wasCut: () => cut,
    close: () =>
      new Promise<void>((resolve) => {
        clearTimeout(reopen)
        for (const l of links) {
          l.client.destroy()
          l.upstream.destroy()
        }
        if (proxy.listening) proxy.close(() => resolve())
        else resolve()
      })
  }
}

describe.skipIf(server === undefined)(
  "a step whose commit landed while its service lost the database",
  () => {
    const adminUrl = server?.adminUrl ?? ""
    let config: RunConfig | undefined
    afterAll(async () => {
      if (config !== undefined) await dropDatabases({ ...config, pgUrl: adminUrl })
    })

    it("is in doubt, so the saga compensates it: the order is cancelled and its stock released", async () => {
      const base = testConfig({
        name: "inflight",
        orders: 1,
        faults: { declineRate: 0, slowRate: 0, slowMillis: 0, duplicateRate: 0, dropRate: 0 }
      })
      const admin = new URL(adminUrl)
      const proxy = await commitCutter(`${base.dbPrefix}inventory`, {
        host: admin.hostname,
        port: Number(admin.port === "" ? 5432 : admin.port)
      })
      const proxied = new URL(adminUrl)
      proxied.hostname = "127.0.0.1"
      proxied.port = String(proxy.port)
      config = { ...base, pgUrl: proxied.toString() }
      const services: Services.RunningService[] = []
      try {
        for (const name of serviceNames)
          await Database.ensure(dbTarget({ ...base, pgUrl: adminUrl }, name), true)
        for (const name of serviceNames) services.push(await Services.start(name, config))
        const endpoint = (name: (typeof serviceNames)[number]) => ({
          service: name,
          baseUrl: `http://127.0.0.1:${services[serviceNames.indexOf(name)]!.port}`
        })
        const saga = OrderSaga.make(
          {
            endpoints: {
              orders: endpoint("orders"),
              inventory: endpoint("inventory"),
              payment: endpoint("payment"),
              shipping: endpoint("shipping")
            },
            duplicateRate: 0,
            random: Math.random
          },
          config.timing
        )
        const [order] = Orchestrator.planOf(config)
        proxy.arm()
        const outcome = await Effect.runPromise(
          Effect.gen(function* () {
            const log = yield* SagaLog.makeMemory
            return yield* Saga.run(saga, order!, { sagaId: order!.orderId }).pipe(
              Effect.provideService(SagaLog.SagaLog, log)
            )
          })
        )
        expect(proxy.wasCut()).toBe(true)
        for (const s of services) await s.close()
        services.length = 0
        const read = async <T>(name: string, sql: string) => {
          const db = await Database.open(dbTarget({ ...base, pgUrl: adminUrl }, name as "orders"))
          try {
            return await db.query<T>(sql, [])
          } finally {
            await db.close()
          }
        }
        const orders = await read<{ status: string }>("orders", "select status from orders")
        expect(orders.map((o) => o.status)).toEqual(["cancelled"])
        // The reserve that committed was compensated: released, nothing left reserved.
        const reservations = await read<{ status: string }>("inventory", "select status from reservations")
        expect(reservations.map((r) => r.status)).toEqual(["released"])
        const reserved = await read<{ n: number }>(
          "inventory",
          "select coalesce(sum(reserved), 0)::int as n from stock"
        )
        expect(reserved[0]?.n).toBe(0)
        // The inventory database was unreachable for longer than the step's retries: given up.
        expect(outcome._tag).toBe("Compensated")
        if (outcome._tag === "Compensated") {
          expect(outcome.cause.step).toBe("reserve-stock")
          expect(outcome.cause.kind).toBe("inDoubt")
          expect(outcome.undone).toContain("reserve-stock")
        }
      } finally {
        for (const s of services) await s.close()
        await proxy.close()
      }
    }, 60_000)
  }
)
