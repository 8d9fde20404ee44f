/**
 * Barrier commits are durable whatever the service database's `synchronous_commit` (review of
 * 2026-12-07). With `synchronous_commit = off` (a common throughput setting) a crash of the service
 * database lost a null compensation's barrier row while the saga log, in another database, had
 * durably recorded the saga as compensated: the late action was then applied instead of refused.
 * The barrier's statements now set `synchronous_commit = on` for their transaction.
 */
import { afterAll, beforeAll, describe, expect, it } from "@effect/vitest"
import { Effect } from "effect"
import postgres from "postgres"
import * as Barrier from "../src/Barrier.js"
import * as TestDatabase from "../src/TestDatabase.js"

const server = await TestDatabase.server()
const DB = "fixg_barrier_durable"

describe.skipIf(server === undefined)("barrier commits on a session with synchronous_commit = off", () => {
  const adminUrl = server?.adminUrl ?? ""
  let url = ""
  let reader: postgres.Sql

  beforeAll(async () => {
    url = await TestDatabase.createDatabase(adminUrl, DB)
    reader = postgres(url, { max: 1, onnotice: () => {} })
    await Barrier.migrate(reader)
    await reader`create table stock (sku text primary key, qty int not null)`
    await reader`insert into stock values ('a', 1000000)`
  }, 60_000)
  afterAll(async () => {
    await reader?.end({ timeout: 5 })
    await TestDatabase.dropDatabase(adminUrl, DB)
  }, 60_000)

  /** WAL flushes so far, read after the writing connection closed (its statistics then reach pg_stat_wal). */
  const syncs = Effect.promise(async () => {
    await new Promise((resolve) => setTimeout(resolve, 200))
    await reader`select pg_stat_force_next_flush()`
    const [row] = await reader<{ n: number }[]>`select wal_sync::float8 as n from pg_stat_wal`
    return row!.n
  })

  /** WAL flushes while `n` barrier runs (`target(i)`, `work`) commit on a pool whose sessions run unforced. */
  const flushesFor = (
    n: number,
    target: (i: number) => Barrier.Target,
    work: (s: Barrier.BarrierSession) => Promise<unknown>
  ) =>
    Effect.gen(function* () {
      const relaxed = postgres(url, { max: 1, onnotice: () => {}, connection: { synchronous_commit: "off" } })
      yield* Effect.promise(() => Barrier.migrate(relaxed))
      const before = yield* syncs
      for (let i = 0; i < n; i++) yield* Barrier.run(relaxed, target(i), work)
      yield* Effect.promise(() => relaxed.end({ timeout: 5 }))
      return (yield* syncs) - before
    })

  const n = 20
  const reserve = (s: Barrier.BarrierSession) =>
    s.query("update stock set qty = qty - 1 where sku = 'a'").then(() => undefined)

  it.live("a null compensation's barrier row is flushed at its commit", () =>
    Effect.gen(function* () {
      const flushes = yield* flushesFor(
        n,
        (i) => ({ gid: `null-comp-${i}`, branch: "reserve", op: "compensation" }),
        reserve
      )
      // One WAL flush per forced commit (other sessions' flushes only add); unforced, twenty
      // commits in a few milliseconds were flushed by the WAL writer in one or two syncs.
      expect(flushes).toBeGreaterThanOrEqual(n)
      const rows = yield* Effect.promise(
        () => reader<{ n: number }[]>`select count(*)::int as n from accord_saga_barrier
          where gid like 'null-comp-%' and op = 'action' and reason = 'null-compensation'`
      )
      expect(rows[0]?.n).toBe(n)
    })
  )

  it.live("an action's barrier row and work are flushed at its commit", () =>
    Effect.gen(function* () {
      const flushes = yield* flushesFor(
        n,
        (i) => ({ gid: `action-${i}`, branch: "reserve", op: "action" }),
        reserve
      )
      expect(flushes).toBeGreaterThanOrEqual(n)
    })
  )

  it.live("a work that turns synchronous_commit off for its transaction is still flushed at commit", () =>
    Effect.gen(function* () {
      const flushes = yield* flushesFor(
        n,
        (i) => ({ gid: `relaxing-${i}`, branch: "reserve", op: "action" }),
        async (s) => {
          await s.query("set local synchronous_commit = off")
          await reserve(s)
        }
      )
      expect(flushes).toBeGreaterThanOrEqual(n)
    })
  )
  it.live(
    "a setting other than off is kept as it is inside the barrier's transaction (never weakened or changed)",
    () =>
      Effect.gen(function* () {
        // Found by a review (2026-12-07, helper 82): `on` was set over `remote_apply` (weaker: no wait
        // for the standby to replay) and over `local` (then waiting for a synchronous standby).
        for (const setting of ["local", "remote_write", "remote_apply", "on"]) {
          const conn = postgres(url, {
            max: 1,
            onnotice: () => {},
            connection: { synchronous_commit: setting }
          })
          const seen = yield* Barrier.run(
            conn,
            { gid: `kept-${setting}-${Date.now()}`, branch: "b", op: "action" },
            async (s) =>
              (await s.query<{ v: string }>("select current_setting('synchronous_commit') as v"))[0]!.v
          )
          yield* Effect.promise(() => conn.end({ timeout: 5 }))
          expect(seen).toMatchObject({ _tag: "Applied", value: setting })
        }
      })
  )
})
