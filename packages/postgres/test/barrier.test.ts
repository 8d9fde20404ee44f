/**
 * The barrier on real PostgreSQL (postgres.js) and on PGlite: normal, rollback, compensation
 * before action, compensation twice, action twice, and concurrent action/compensation races.
 */
import { Saga, SagaLog } from "@accord/core"
import { PGlite } from "@electric-sql/pglite"
import { afterAll, beforeAll, describe, expect, it } from "@effect/vitest"
import { eq, sql as dsql } from "drizzle-orm"
import { integer, pgTable, text } from "drizzle-orm/pg-core"
import { drizzle } from "drizzle-orm/pg-proxy"
import { Effect, Either, Exit, Option, Schedule } from "effect"
import postgres from "postgres"
import * as Barrier from "../src/Barrier.js"
import * as TestDatabase from "../src/TestDatabase.js"

const server = await TestDatabase.server()
const DB = "accord_t_saga_barrier"

const STOCK_DDL = `create table if not exists stock (
  sku text primary key,
  qty int not null check (qty >= 0)
)`

// A drizzle table to build queries with; the barrier session runs them on its transaction.
const stock = pgTable("stock", { sku: text("sku").primaryKey(), qty: integer("qty").notNull() })
const builder = drizzle(async () => ({ rows: [] }))

const reserve = (sku: string) => (s: Barrier.BarrierSession) =>
  s
    .query<{ qty: number }>("update stock set qty = qty - 1 where sku = $1 returning qty", [sku])
    .then((r) => r[0]?.qty)
const release = (sku: string) => (s: Barrier.BarrierSession) =>
  s.execute(
    builder
      .update(stock)
      .set({ qty: dsql`${stock.qty} + 1` })
      .where(eq(stock.sku, sku))
  )

const suite = (
  label: string,
  open: () => Promise<{ conn: Barrier.Connection; close: () => Promise<void> }>
) =>
  describe(`Barrier on ${label}`, () => {
    let conn: Barrier.Connection
    let close: () => Promise<void>
    let n = 0
    beforeAll(async () => {
      ;({ conn, close } = await open())
      await Barrier.migrate(conn)
      await Barrier.migrate(conn) // idempotent
    }, 60_000)
    afterAll(async () => {
      await close?.()
    }, 60_000)

    const query = async <T>(text: string, params: Array<unknown> = []): Promise<Array<T>> =>
      typeof conn === "function"
        ? ((await conn.unsafe(text, params as Array<postgres.ParameterOrJSON<never>>)) as unknown as Array<T>)
        : (await conn.query<T>(text, params)).rows

    /** A fresh SKU with `qty` units and a fresh gid. */
    const fresh = async (qty: number) => {
      n++
      const sku = `sku-${label}-${n}`
      await query(STOCK_DDL)
      await query("insert into stock (sku, qty) values ($1, $2)", [sku, qty])
      return {
        sku,
        gid: `G${n}-${Date.now()}`,
        qtyNow: async () =>
          (await query<{ qty: number }>("select qty from stock where sku = $1", [sku]))[0]?.qty
      }
    }
    const rows = (gid: string) =>
      query<{ op: string; reason: string }>(
        "select op, reason from accord_saga_barrier where gid = $1 order by op",
        [gid]
      )

    it.live("normal: the action applies once, then its compensation undoes it", () =>
      Effect.gen(function* () {
        const t = yield* Effect.promise(() => fresh(5))
        const action = yield* Barrier.run(
          conn,
          { gid: t.gid, branch: "reserve", op: "action" },
          reserve(t.sku)
        )
        expect(action).toEqual({ _tag: "Applied", value: 4 })
        const undo = yield* Barrier.run(
          conn,
          { gid: t.gid, branch: "reserve", op: "compensation" },
          release(t.sku)
        )
        expect(undo._tag).toBe("Applied")
        expect(yield* Effect.promise(t.qtyNow)).toBe(5)
        expect(yield* Effect.promise(() => rows(t.gid))).toEqual([
          { op: "action", reason: "action" },
          { op: "compensation", reason: "compensation" }
        ])
      })
    )

    it.live(
      "rollback: a failing work rolls its barrier row back and surfaces the SQLSTATE; a retry applies",
      () =>
        Effect.gen(function* () {
          const t = yield* Effect.promise(() => fresh(0))
          const failed = yield* Effect.either(
            Barrier.run(conn, { gid: t.gid, branch: "reserve", op: "action" }, reserve(t.sku))
          )
          expect(Either.isLeft(failed) && failed.left).toMatchObject({
            _tag: "BarrierWorkError",
            sqlState: "23514",
            connectionLost: false
          })
          expect(yield* Effect.promise(() => rows(t.gid))).toEqual([])
          expect(Either.isLeft(failed) && Barrier.toStepError(failed.left)._tag).toBe("StepBusinessError")
          // A JavaScript error in the work rolls back too, without a SQLSTATE.
          const thrown = yield* Effect.either(
            Barrier.run(conn, { gid: t.gid, branch: "reserve", op: "action" }, async () => {
              throw new Error("validation failed")
            })
          )
          expect(Either.isLeft(thrown) && thrown.left.reason).toContain("validation failed")
          expect(yield* Effect.promise(() => rows(t.gid))).toEqual([])
          yield* Effect.promise(() => query("update stock set qty = 3 where sku = $1", [t.sku]))
          const retried = yield* Barrier.run(
            conn,
            { gid: t.gid, branch: "reserve", op: "action" },
            reserve(t.sku)
          )
          expect(retried).toEqual({ _tag: "Applied", value: 2 })
        })
    )

    it.live("compensation before action: a null compensation, and the late action is refused", () =>
      Effect.gen(function* () {
        const t = yield* Effect.promise(() => fresh(5))
        let released = 0
        const undo = yield* Barrier.run(
          conn,
          { gid: t.gid, branch: "reserve", op: "compensation" },
          async (s) => {
            released++
            return release(t.sku)(s)
          }
        )
        expect(undo._tag).toBe("NullCompensation")
        expect(released).toBe(0)
        const late = yield* Barrier.run(conn, { gid: t.gid, branch: "reserve", op: "action" }, reserve(t.sku))
        expect(late._tag).toBe("Refused")
        expect(yield* Effect.promise(t.qtyNow)).toBe(5)
        expect(yield* Effect.promise(() => rows(t.gid))).toEqual([
          { op: "action", reason: "null-compensation" },
          { op: "compensation", reason: "null-compensation" }
        ])
        // Repeating the compensation is a duplicate, still no work.
        expect(
          (yield* Barrier.run(conn, { gid: t.gid, branch: "reserve", op: "compensation" }, release(t.sku)))
            ._tag
        ).toBe("Duplicate")
        expect(released).toBe(0)
      })
    )

    it.live("compensation twice: undone once, the second is skipped as a duplicate", () =>
      Effect.gen(function* () {
        const t = yield* Effect.promise(() => fresh(5))
        yield* Barrier.run(conn, { gid: t.gid, branch: "reserve", op: "action" }, reserve(t.sku))
        const first = yield* Barrier.run(
          conn,
          { gid: t.gid, branch: "reserve", op: "compensation" },
          release(t.sku)
        )
        const second = yield* Barrier.run(
          conn,
          { gid: t.gid, branch: "reserve", op: "compensation" },
          release(t.sku)
        )
        expect([first._tag, second._tag]).toEqual(["Applied", "Duplicate"])
        expect(yield* Effect.promise(t.qtyNow)).toBe(5)
      })
    )

    it.live("action twice: applied once, the duplicate returns the first result", () =>
      Effect.gen(function* () {
        const t = yield* Effect.promise(() => fresh(5))
        const first = yield* Barrier.run(
          conn,
          { gid: t.gid, branch: "reserve", op: "action" },
          reserve(t.sku)
        )
        const second = yield* Barrier.run(
          conn,
          { gid: t.gid, branch: "reserve", op: "action" },
          reserve(t.sku)
        )
        expect(first).toEqual({ _tag: "Applied", value: 4 })
        expect(second).toEqual({ _tag: "Duplicate", value: 4 })
        expect(yield* Effect.promise(t.qtyNow)).toBe(4)
      })
    )

    it.live("branches are independent: the same gid with another branch is not a duplicate", () =>
      Effect.gen(function* () {
        const t = yield* Effect.promise(() => fresh(5))
        yield* Barrier.run(conn, { gid: t.gid, branch: "reserve", op: "action" }, reserve(t.sku))
        const other = yield* Barrier.run(
          conn,
          { gid: t.gid, branch: "reserve-2", op: "action" },
          reserve(t.sku)
        )
        expect(other._tag).toBe("Applied")
        expect(yield* Effect.promise(t.qtyNow)).toBe(3)
      })
    )

    it.live(
      "racing action and compensation of one branch end consistent: undone, or null-compensated and refused",
      () =>
        Effect.gen(function* () {
          const t = yield* Effect.promise(() => fresh(1000))
          const verdicts = yield* Effect.forEach(
            Array.from({ length: 40 }, (_, i) => i),
            (i) =>
              Effect.all(
                [
                  Barrier.run(conn, { gid: t.gid, branch: `b${i}`, op: "action" }, reserve(t.sku)),
                  Barrier.run(conn, { gid: t.gid, branch: `b${i}`, op: "compensation" }, release(t.sku))
                ],
                { concurrency: 2 }
              ).pipe(Effect.map(([a, c]) => `${a._tag}/${c._tag}`)),
            { concurrency: 8 }
          )
          for (const v of verdicts) expect(["Applied/Applied", "Refused/NullCompensation"]).toContain(v)
          expect(yield* Effect.promise(t.qtyNow)).toBe(1000)
        })
    )

    it.live(
      "saga steps behind the barrier: a crashed saga resumed re-runs steps without double effects",
      () =>
        Effect.gen(function* () {
          const t = yield* Effect.promise(() => fresh(10))
          const fail = { charge: true }
          const saga = Saga.make({
            name: "reserve-and-charge",
            steps: [
              Saga.step<number | undefined>({
                name: "reserve",
                action: (ctx) => Barrier.sagaAction(conn, ctx, reserve(t.sku)),
                compensation: (ctx) => Barrier.sagaCompensation(conn, ctx, release(t.sku))
              }),
              Saga.step<unknown>({
                name: "charge",
                action: () =>
                  fail.charge
                    ? Effect.fail(new Saga.StepBusinessError({ reason: "card declined" }))
                    : Effect.succeed(1),
                retry: Schedule.recurs(0)
              })
            ]
          })
          const log = yield* SagaLog.makeMemory
          // Killed right after the reserve's StepCompleted could not be written: the reserve ran, unrecorded.
          let written = 0
          const crashing: SagaLog.SagaLog["Type"] = {
            ...log,
            start: (r, l) => Effect.tap(log.start(r, l), () => written++),
            append: (r, o) => (++written > 2 ? Effect.die("killed") : log.append(r, o))
          }
          const exit = yield* Effect.exit(
            Saga.run(saga, null, { sagaId: t.gid, owner: "n1" }).pipe(
              Effect.provideService(SagaLog.SagaLog, crashing)
            )
          )
          expect(Exit.isFailure(exit)).toBe(true)
          expect(yield* Effect.promise(t.qtyNow)).toBe(9)
          // The killed orchestrator's lease runs out; the restarted one (same owner, new token) takes over.
          const dead = Option.getOrThrow(yield* log.load(t.gid))
          yield* log.restore({ ...dead, leaseUntil: 0 })
          const outcome = yield* Saga.resume(Saga.registry([saga]), t.gid, { owner: "n1" }).pipe(
            Effect.provideService(SagaLog.SagaLog, log)
          )
          expect(outcome).toMatchObject({ _tag: "Compensated", undone: ["reserve"] })
          expect(yield* Effect.promise(t.qtyNow)).toBe(10)
        })
    )
  })

if (server === undefined) {
  describe.skip("Barrier on PostgreSQL (no server)", () => {
    it("skipped", () => {})
  })
} else {
  const adminUrl = server.adminUrl
  suite("PostgreSQL", async () => {
    const url = await TestDatabase.createDatabase(adminUrl, DB)
    const sql = postgres(url, { max: 10, onnotice: () => {} })
    return {
      conn: sql,
      close: async () => {
        await sql.end({ timeout: 5 })
        await TestDatabase.dropDatabase(adminUrl, DB)
      }
    }
  })
}

suite("PGlite", async () => {
  const db = await PGlite.create()
  return { conn: db, close: () => db.close() }
})
