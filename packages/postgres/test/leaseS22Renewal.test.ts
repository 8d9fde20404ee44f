/**
 * A lease renewal that its drive gave up on, landing on the server after the lease ran out, must not
 * extend the lease: the drive has stopped, and a revived lease keeps every sweep off the saga for one
 * more lease from whenever the renewal lands (unbounded: it may have waited in the network, or behind
 * another statement on its pool connection, for any time). Before the fence (2026-12-07) it did.
 */
import { Saga, SagaLog } from "@accord/core"
import { describe, expect, it } from "@effect/vitest"
import { Deferred, Effect, Exit, Fiber } from "effect"
import type postgres from "postgres"
import * as PgSagaLog from "../src/PgSagaLog.js"
import * as TestDatabase from "../src/TestDatabase.js"
import { usePoolsOnDatabase } from "./support/sagaLog.js"
import * as TcpProxy from "./support/tcpProxy.js"

const server = await TestDatabase.server()
const DB = "s22_lease_renewal"

interface LeaseRow {
  readonly owner: string | null
  readonly lease_until_ms: number
  readonly expired: boolean
}

describe.skipIf(server === undefined)("late lease renewals on PostgreSQL", () => {
  const adminUrl = server?.adminUrl ?? ""
  const { url, pool } = usePoolsOnDatabase(adminUrl, DB, { max: 2, endTimeout: 1 })

  const leaseOf = (sql: postgres.Sql, sagaId: string) =>
    Effect.promise(async () => {
      const rows = await sql.unsafe<Array<LeaseRow>>(
        `select owner, (extract(epoch from lease_until) * 1000)::float8 as lease_until_ms,
           lease_until < now() as expired
         from accord_saga where saga_id = $1`,
        [sagaId]
      )
      return rows[0]
    })

  /** Waits on the database until the saga's lease has run out by its clock. */
  const untilExpired = (sql: postgres.Sql, sagaId: string) =>
    Effect.promise(() =>
      sql.unsafe(
        `select pg_sleep(greatest(0, extract(epoch from lease_until - clock_timestamp())) + 0.05)
         from accord_saga where saga_id = $1`,
        [sagaId]
      )
    )

  /** A one-step saga whose first attempt never ends (its drive dies with the lease), later ones succeed. */
  const hangingOnce = (name: string) =>
    Effect.gen(function* () {
      const started = yield* Deferred.make<void>()
      const counter = { runs: 0 }
      const saga = Saga.make({
        name,
        steps: [
          Saga.step<string>({
            name: "work",
            action: () =>
              Effect.suspend(() => {
                counter.runs++
                return counter.runs === 1
                  ? Effect.zipRight(Deferred.succeed(started, undefined), Effect.never)
                  : Effect.succeed("done")
              })
          })
        ]
      })
      return { saga, started, counter }
    })

  it.live(
    "a renewal held in the network until its lease ran out does not revive the lease when it lands",
    () =>
      Effect.gen(function* () {
        const proxy = yield* Effect.promise(() => TcpProxy.start(url()))
        yield* Effect.addFinalizer(() => Effect.promise(() => proxy.close()))
        // One connection, so that a statement sent after the renewal runs after it on the server.
        const logPool = pool(proxy.url(url()), 1)
        const log = yield* PgSagaLog.make(logPool)
        const observer = pool(undefined, 1)
        const { saga, counter } = yield* hangingOnce("late-renewal")
        // The first renewal's statement is held on its way (a partition of that connection): the
        // server gets it only when the link is unfrozen. The cancel request sent when the drive
        // gives up travels on a connection of its own and finds nothing running.
        const froze = proxy.freezeWhen((chunk) => chunk.includes("update accord_saga set lease_until"), {
          deliver: false
        })
        const first = yield* Effect.fork(
          Saga.run(saga, null, { sagaId: "late-1", owner: "p1", leaseFor: "600 millis" }).pipe(
            Effect.provideService(SagaLog.SagaLog, log)
          )
        )
        yield* Effect.promise(() => froze)
        const exit = yield* Fiber.await(first)
        expect(Exit.isFailure(exit) && JSON.stringify(exit.cause)).toContain("LeaseLostError")

        yield* untilExpired(observer, "late-1")
        const lapsed = yield* leaseOf(observer, "late-1")
        expect(lapsed?.expired).toBe(true)

        // The renewal lands now, long after its drive gave it up.
        proxy.unfreeze()
        yield* Effect.promise(() => logPool.unsafe("select 1"))
        const after = yield* leaseOf(observer, "late-1")
        expect(after).toEqual(lapsed)

        // So another process takes the lapsed saga over at once, and finishes it.
        const other = yield* PgSagaLog.make(pool())
        const outcomes = yield* Saga.sweep(Saga.registry([saga]), { owner: "p2" }).pipe(
          Effect.provideService(SagaLog.SagaLog, other)
        )
        expect(outcomes.map((o) => o._tag)).toEqual(["Completed"])
        expect(counter.runs).toBe(2)
      }).pipe(Effect.scoped),
    30_000
  )

  it.live(
    "a renewal written behind a long statement on its pool connection does not revive the lease when it runs",
    () =>
      Effect.gen(function* () {
        // The log shares a one-connection pool with the application, whose statement outlasts the lease.
        const shared = pool(undefined, 1)
        const log = yield* PgSagaLog.make(shared)
        const observer = pool(undefined, 1)
        const { saga, started, counter } = yield* hangingOnce("pipelined-renewal")
        const first = yield* Effect.fork(
          Saga.run(saga, null, { sagaId: "late-2", owner: "p1", leaseFor: "600 millis" }).pipe(
            Effect.provideService(SagaLog.SagaLog, log)
          )
        )
        yield* Deferred.await(started)
        // (`execute`: a postgres.js query is sent when awaited, this one at once.) The renewal is
        // written behind it (postgres.js pipelines on a busy connection) and, being
        // written behind another caller's statement, is not cancelled when its drive gives up.
        const busy = shared.unsafe("select pg_sleep(2)").execute()
        const exit = yield* Fiber.await(first)
        expect(Exit.isFailure(exit) && JSON.stringify(exit.cause)).toContain("LeaseLostError")
        yield* untilExpired(observer, "late-2")
        const lapsed = yield* leaseOf(observer, "late-2")
        expect(lapsed?.expired).toBe(true)

        yield* Effect.promise(() => busy)
        yield* Effect.promise(() => shared.unsafe("select 1"))
        const after = yield* leaseOf(observer, "late-2")
        expect(after).toEqual(lapsed)

        const other = yield* PgSagaLog.make(pool())
        const outcomes = yield* Saga.sweep(Saga.registry([saga]), { owner: "p2" }).pipe(
          Effect.provideService(SagaLog.SagaLog, other)
        )
        expect(outcomes.map((o) => o._tag)).toEqual(["Completed"])
        expect(counter.runs).toBe(2)
      }),
    30_000
  )
})
