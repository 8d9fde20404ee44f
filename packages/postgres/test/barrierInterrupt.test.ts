/**
 * An interrupted barrier run (a saga step's timeout) gives its transaction up on the server: the
 * statement it was waiting on is cancelled and the transaction rolls back, barrier row included. It
 * must not keep waiting, holding its pool connection and the uncommitted barrier row (which would
 * block the step's retry and compensation behind it), and land later, after the saga gave up on it.
 */
import { PGlite } from "@electric-sql/pglite"
import { afterAll, beforeAll, describe, expect, it } from "@effect/vitest"
import { Deferred, Effect, Option } from "effect"
import postgres from "postgres"
import * as Barrier from "../src/Barrier.js"
import * as Pipeline from "../src/Pipeline.js"
import * as TestDatabase from "../src/TestDatabase.js"

const server = await TestDatabase.server()
const DB = "accord_t_saga_barrier_interrupt"

describe.skipIf(server === undefined)("Barrier runs interrupted on PostgreSQL", () => {
  const adminUrl = server?.adminUrl ?? ""
  let sql: postgres.Sql
  let locks: postgres.Sql
  beforeAll(async () => {
    const url = await TestDatabase.createDatabase(adminUrl, DB)
    sql = postgres(url, { max: 2, onnotice: () => {} })
    locks = postgres(url, { max: 1, onnotice: () => {} })
    await Barrier.migrate(sql)
    await sql`create table stock (sku text primary key, qty int not null check (qty >= 0))`
  }, 60_000)
  afterAll(async () => {
    await sql?.end({ timeout: 5 })
    await locks?.end({ timeout: 5 })
    await TestDatabase.dropDatabase(adminUrl, DB)
  }, 60_000)

  const qtyOf = async (sku: string) => (await sql`select qty from stock where sku = ${sku}`)[0]?.qty
  const reserve = (sku: string) => (s: Barrier.BarrierSession) =>
    s.query<{ qty: number }>("update stock set qty = qty - 1 where sku = $1 returning qty", [sku])
  const release = (sku: string) => (s: Barrier.BarrierSession) =>
    s.query("update stock set qty = qty + 1 where sku = $1", [sku])

  /** Another session holds the SKU's row, as a concurrent business transaction would. */
  const holdRow = async (sku: string) => {
    const holder = await locks.reserve()
    await holder`begin`
    await holder`select qty from stock where sku = ${sku} for update`
    return async () => {
      await holder`rollback`
      holder.release()
    }
  }

  it.live(
    "an action interrupted while its work waits on a lock rolls back: the compensation is a null compensation and the late action never lands",
    () =>
      Effect.gen(function* () {
        const sku = "interrupt-1"
        const gid = `G-interrupt-1-${Date.now()}`
        yield* Effect.promise(() => sql`insert into stock (sku, qty) values (${sku}, 5)`)
        const unhold = yield* Effect.promise(() => holdRow(sku))
        // The step's timeout: the action is interrupted while its update waits on the held row.
        const timedOut = yield* Barrier.run(sql, { gid, branch: "reserve", op: "action" }, reserve(sku)).pipe(
          Effect.timeout("300 millis"),
          Effect.option
        )
        expect(Option.isNone(timedOut)).toBe(true)
        // The saga compensates the step in doubt; it must not wait behind the given-up action.
        const undo = yield* Barrier.run(
          sql,
          { gid, branch: "reserve", op: "compensation" },
          release(sku)
        ).pipe(Effect.timeout("3 seconds"), Effect.either, Effect.ensuring(Effect.promise(unhold)))
        expect(undo).toMatchObject({ _tag: "Right", right: { _tag: "NullCompensation" } })
        const rows = yield* Effect.promise(
          () => sql`select op, reason from accord_saga_barrier where gid = ${gid} order by op`
        )
        expect(rows.map((r) => `${r.op}:${r.reason}`)).toEqual([
          "action:null-compensation",
          "compensation:null-compensation"
        ])
        expect(yield* Effect.promise(() => qtyOf(sku))).toBe(5)
      })
  )

  it.live(
    "runPromise aborted through its signal (a facade step's timeout) rolls back like an interrupted run",
    () =>
      Effect.gen(function* () {
        // Found by a review (2026-12-07): runPromise took no signal, so a facade step that timed out
        // left its run waiting on the lock with its barrier row uncommitted; the compensation's
        // barrier insert queued behind it until the saga was Stuck, and the action landed later.
        const sku = "interrupt-signal"
        const gid = `G-interrupt-signal-${Date.now()}`
        yield* Effect.promise(() => sql`insert into stock (sku, qty) values (${sku}, 5)`)
        const unhold = yield* Effect.promise(() => holdRow(sku))
        const controller = new AbortController()
        setTimeout(() => controller.abort(), 300)
        const started = performance.now()
        const action = yield* Effect.promise(() =>
          Barrier.runPromise(sql, { gid, branch: "reserve", op: "action" }, reserve(sku), {
            signal: controller.signal
          }).then(
            () => "resolved",
            () => "rejected"
          )
        )
        expect(action).toBe("rejected")
        expect(performance.now() - started).toBeLessThan(3_000)
        const undo = yield* Effect.promise(() =>
          Barrier.runPromise(sql, { gid, branch: "reserve", op: "compensation" }, release(sku))
        ).pipe(Effect.timeout("3 seconds"), Effect.either, Effect.ensuring(Effect.promise(unhold)))
        expect(undo).toMatchObject({ _tag: "Right", right: { _tag: "NullCompensation" } })
        expect(yield* Effect.promise(() => qtyOf(sku))).toBe(5)
      })
  )

  it.live(
    "a pipelined action interrupted while its first statement waits on a lock rolls back too: the statements behind it are not cancelled",
    () =>
      Effect.gen(function* () {
        const sku = "interrupt-pipelined"
        const gid = `G-interrupt-pl-${Date.now()}`
        yield* Effect.promise(() => sql`insert into stock (sku, qty) values (${sku}, 5)`)
        const unhold = yield* Effect.promise(() => holdRow(sku))
        // Both statements are sent before the first answer: the second waits behind the first.
        // Cancelling it as well left postgres.js waiting for it for ever, and the transaction open.
        const action = Pipeline.make([
          {
            text: "update stock set qty = qty - 1 where sku = $1",
            params: [sku],
            check: Pipeline.expectRows(1)
          },
          { text: "select qty from stock where sku = $1", params: [sku] }
        ])
        const timedOut = yield* Barrier.run(sql, { gid, branch: "reserve", op: "action" }, action).pipe(
          Effect.timeout("300 millis"),
          Effect.option
        )
        expect(Option.isNone(timedOut)).toBe(true)
        const undo = yield* Barrier.run(
          sql,
          { gid, branch: "reserve", op: "compensation" },
          release(sku)
        ).pipe(Effect.timeout("3 seconds"), Effect.either, Effect.ensuring(Effect.promise(unhold)))
        expect(undo).toMatchObject({ _tag: "Right", right: { _tag: "NullCompensation" } })
        expect(yield* Effect.promise(() => qtyOf(sku))).toBe(5)
        // Its transaction was rolled back and its connection given back. Cancelling the statement
        // behind the running one as well left postgres.js waiting for that one's answer for ever:
        // the session stayed idle in its aborted transaction and the pool lost the connection.
        const stuck = yield* Effect.promise(
          () => sql`select state from pg_stat_activity
            where datname = current_database() and state like 'idle in transaction%'`
        )
        expect(stuck).toEqual([])
      })
  )

  it.live("interrupted runs give their pool connections back: an unrelated step still runs", () =>
    Effect.gen(function* () {
      const sku = "interrupt-2"
      const other = "interrupt-2-other"
      const gid = `G-interrupt-2-${Date.now()}`
      yield* Effect.promise(() => sql`insert into stock (sku, qty) values (${sku}, 5), (${other}, 5)`)
      const unhold = yield* Effect.promise(() => holdRow(sku))
      // As many interrupted attempts as the pool has connections (max 2).
      for (const branch of ["a", "b"]) {
        const timedOut = yield* Barrier.run(sql, { gid, branch, op: "action" }, reserve(sku)).pipe(
          Effect.timeout("300 millis"),
          Effect.option
        )
        expect(Option.isNone(timedOut)).toBe(true)
      }
      const unrelated = yield* Barrier.run(sql, { gid, branch: "c", op: "action" }, reserve(other)).pipe(
        Effect.timeout("3 seconds"),
        Effect.either,
        Effect.ensuring(Effect.promise(unhold))
      )
      expect(unrelated).toMatchObject({ _tag: "Right", right: { _tag: "Applied" } })
      // The interrupted attempts never land, even once the row is free again.
      const landed = yield* Effect.promise(
        () => sql`select branch from accord_saga_barrier where gid = ${gid} order by branch`
      )
      expect(landed.map((r) => r.branch)).toEqual(["c"])
      expect(yield* Effect.promise(() => qtyOf(sku))).toBe(5)
    })
  )

  it.live(
    "a work's tagged-template statement waiting on a lock is cancelled too: the compensation does not wait behind it",
    () =>
      Effect.gen(function* () {
        const sku = "interrupt-tagged"
        const gid = `G-interrupt-tagged-${Date.now()}`
        yield* Effect.promise(() => sql`insert into stock (sku, qty) values (${sku}, 5)`)
        const unhold = yield* Effect.promise(() => holdRow(sku))
        // `s.sql` bypassed the run's tracking: the update kept waiting on the held row with its
        // uncommitted barrier row, and the compensation timed out behind it.
        const timedOut = yield* Barrier.run(sql, { gid, branch: "reserve", op: "action" }, async (s) =>
          s.sql!`update stock set qty = qty - 1 where sku = ${sku} returning qty`.then((rows) =>
            Array.from(rows)
          )
        ).pipe(Effect.timeout("300 millis"), Effect.option)
        expect(Option.isNone(timedOut)).toBe(true)
        const undo = yield* Barrier.run(
          sql,
          { gid, branch: "reserve", op: "compensation" },
          release(sku)
        ).pipe(Effect.timeout("2 seconds"), Effect.either, Effect.ensuring(Effect.promise(unhold)))
        expect(undo).toMatchObject({ _tag: "Right", right: { _tag: "NullCompensation" } })
        expect(yield* Effect.promise(() => qtyOf(sku))).toBe(5)
      })
  )

  it.live(
    "a work that never returns after its first statement has its session ended 5 s after the interruption: locks and barrier row freed",
    () =>
      Effect.gen(function* () {
        const sku = "interrupt-hung"
        const gid = `G-interrupt-hung-${Date.now()}`
        yield* Effect.promise(() => sql`insert into stock (sku, qty) values (${sku}, 5)`)
        // The work updates the row, then waits on something that is not a statement and never
        // comes back (an HTTP call without a timeout, say): its transaction stayed open for ever,
        // holding the row, the barrier row and a pool connection; the compensation waited behind it.
        const timedOut = yield* Barrier.run(sql, { gid, branch: "reserve", op: "action" }, async (s) => {
          await reserve(sku)(s)
          return new Promise<never>(() => undefined)
        }).pipe(Effect.timeout("200 millis"), Effect.option)
        expect(Option.isNone(timedOut)).toBe(true)
        const began = performance.now()
        const undo = yield* Barrier.run(
          sql,
          { gid, branch: "reserve", op: "compensation" },
          release(sku)
        ).pipe(Effect.timeout("10 seconds"), Effect.either)
        expect(undo).toMatchObject({ _tag: "Right", right: { _tag: "NullCompensation" } })
        // Freed once the bound (5 s after the interruption) ended the session, not before.
        expect(performance.now() - began).toBeGreaterThan(3_000)
        expect(yield* Effect.promise(() => qtyOf(sku))).toBe(5)
        const open = yield* Effect.promise(
          () => sql`select count(*)::int as n from pg_stat_activity
            where datname = current_database() and state like 'idle in transaction%'`
        )
        expect(open[0]?.n).toBe(0)
        // The pool (max 2) has both its connections: two runs at once go through.
        const both = yield* Effect.all(
          ["x", "y"].map((branch) =>
            Barrier.run(sql, { gid: `${gid}-after`, branch, op: "action" }, (s) => s.query("select 1"))
          ),
          { concurrency: 2 }
        ).pipe(Effect.timeout("5 seconds"))
        expect(both.map((r) => r._tag)).toEqual(["Applied", "Applied"])
      }),
    30_000
  )
})

describe.skipIf(server === undefined)("Barrier runs interrupted on a pool shared with other callers", () => {
  const adminUrl = server?.adminUrl ?? ""
  const DB_SHARED = "accord_t_saga_barrier_shared"
  let shared: postgres.Sql
  beforeAll(async () => {
    const url = await TestDatabase.createDatabase(adminUrl, DB_SHARED)
    shared = postgres(url, { max: 1, onnotice: () => {} })
    await Barrier.migrate(shared)
  }, 60_000)
  afterAll(async () => {
    await shared?.end({ timeout: 5 })
    await TestDatabase.dropDatabase(adminUrl, DB_SHARED)
  }, 60_000)

  it.live(
    "a cancel request sent for an interrupted run never reaches another caller's statement on that pool",
    () =>
      Effect.gen(function* () {
        // Runs whose work takes about as long as their timeout, so that many are interrupted just
        // as their statement ends; meanwhile another caller keeps using the pool's one connection.
        // Under `sql.begin` the connection went back to the pool at once, and a late cancel request
        // then cancelled that caller's statement (a review counted 47 of 480).
        let stop = false
        const others = { ran: 0, cancelled: 0, failed: [] as Array<unknown> }
        const other = (async () => {
          while (!stop) {
            try {
              await shared`select pg_sleep(0.003)`
              others.ran++
            } catch (error) {
              if ((error as { code?: unknown }).code === "57014") others.cancelled++
              else others.failed.push(error)
            }
          }
        })()
        const stamp = Date.now()
        let interrupted = 0
        for (let i = 0; i < 150; i++) {
          const outcome = yield* Barrier.run(
            shared,
            { gid: `G-shared-${stamp}-${i}`, branch: "step", op: "action" },
            (s) => s.query("select pg_sleep(0.02)")
          ).pipe(Effect.timeout(`${20 + (i % 10)} millis`), Effect.option)
          if (Option.isNone(outcome)) interrupted++
        }
        stop = true
        yield* Effect.promise(() => other)
        expect(interrupted).toBeGreaterThan(0)
        expect(others.ran).toBeGreaterThan(0)
        expect(others.failed).toEqual([])
        expect(others.cancelled).toBe(0)
        // The pool still has its connection, clean.
        expect(yield* Effect.promise(() => shared`select 'ok' as v`)).toEqual([{ v: "ok" }])
      }),
    60_000
  )
})

describe("Barrier runs interrupted on PGlite", () => {
  let db: PGlite
  beforeAll(async () => {
    db = await PGlite.create()
    await Barrier.migrate(db)
    await db.exec(
      "create table stock (sku text primary key, qty int not null); insert into stock values ('s', 5)"
    )
  }, 60_000)
  afterAll(async () => {
    await db?.close()
  }, 60_000)

  it.live("an action interrupted while its work awaits something else rolls back at its next statement", () =>
    Effect.gen(function* () {
      const gate = yield* Deferred.make<void>()
      const target = { gid: "G-pglite-interrupt", branch: "reserve" } as const
      // The work waits on something that is not a statement (an HTTP call, say) past the step's timeout.
      const timedOut = yield* Barrier.run(db, { ...target, op: "action" }, async (s) => {
        await Effect.runPromise(Deferred.await(gate))
        return s.query("update stock set qty = qty - 1 where sku = 's'")
      }).pipe(Effect.timeout("100 millis"), Effect.option)
      expect(Option.isNone(timedOut)).toBe(true)
      yield* Deferred.succeed(gate, undefined)
      const undo = yield* Barrier.run(db, { ...target, op: "compensation" }, (s) =>
        s.query("update stock set qty = qty + 1 where sku = 's'")
      ).pipe(Effect.timeout("3 seconds"))
      expect(undo._tag).toBe("NullCompensation")
      const qty = yield* Effect.promise(() => db.query<{ qty: number }>("select qty from stock"))
      expect(qty.rows[0]?.qty).toBe(5)
    })
  )

  it.live(
    "an action whose work never returns is rolled back 5 s after the interruption: the instance is free again",
    () =>
      Effect.gen(function* () {
        const target = { gid: `G-pglite-hung-${Date.now()}`, branch: "reserve" } as const
        // PGlite is one session: the open transaction of a work that never returned held every
        // later statement on the instance, the compensation's included, for ever.
        const timedOut = yield* Barrier.run(db, { ...target, op: "action" }, async (s) => {
          await s.query("update stock set qty = qty - 1 where sku = 's'")
          return new Promise<never>(() => undefined)
        }).pipe(Effect.timeout("100 millis"), Effect.option)
        expect(Option.isNone(timedOut)).toBe(true)
        const undo = yield* Barrier.run(db, { ...target, op: "compensation" }, (s) =>
          s.query("update stock set qty = qty + 1 where sku = 's'")
        ).pipe(Effect.timeout("10 seconds"), Effect.either)
        expect(undo).toMatchObject({ _tag: "Right", right: { _tag: "NullCompensation" } })
        const qty = yield* Effect.promise(() => db.query<{ qty: number }>("select qty from stock"))
        expect(qty.rows[0]?.qty).toBe(5)
      }),
    30_000
  )
})
