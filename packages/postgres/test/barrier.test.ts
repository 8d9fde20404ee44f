/**
 * The barrier on real PostgreSQL (postgres.js) and on PGlite: normal, rollback, compensation
 * before action, compensation twice, action twice, concurrent action/compensation races, and what a
 * duplicate returns: the first run's result exactly (plain JSON, or through a result schema), or a
 * refusal before commit when it could not be returned faithfully.
 */
import { Saga, SagaLog } from "@accord/core"
import { afterAll, beforeAll, describe, expect, it } from "@effect/vitest"
import { eq, sql as dsql } from "drizzle-orm"
import { integer, pgTable, text } from "drizzle-orm/pg-core"
import { drizzle } from "drizzle-orm/pg-proxy"
import { Effect, Either, Exit, Option, Schedule, Schema } from "effect"
import type postgres from "postgres"
import * as Barrier from "../src/Barrier.js"
import * as TestDatabase from "../src/TestDatabase.js"
import { onPostgresAndPGlite } from "./support/backends.js"

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
          // The Promise form rejects with the same typed error (it rejected with Effect's
          // FiberFailure around it, which `toStepError` could not read).
          const rejected = yield* Effect.promise(() =>
            Barrier.runPromise(conn, { gid: t.gid, branch: "reserve", op: "action" }, reserve(t.sku)).then(
              () => undefined,
              (error: unknown) => error
            )
          )
          expect(rejected).toMatchObject({ _tag: "BarrierWorkError", sqlState: "23514" })
          expect(Barrier.toStepError(rejected as Barrier.BarrierError)._tag).toBe("StepBusinessError")
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

    const ctxOf = (gid: string, step: string): Saga.StepContext => ({
      sagaId: gid,
      sagaName: "barrier-results",
      step,
      key: `${gid}/${step}`,
      input: null,
      outputs: {},
      attempt: 1
    })
    const Receipt = Schema.Struct({ qty: Schema.Number, at: Schema.Date, total: Schema.BigInt })
    const receipt = (sku: string) => async (s: Barrier.BarrierSession) => ({
      qty: (await reserve(sku)(s)) ?? -1,
      at: new Date("2024-02-29T12:34:56.789Z"),
      total: 12_345_678_901_234_567_890n
    })

    it.live("a duplicate under a result schema returns the first run's Date and bigint exactly", () =>
      Effect.gen(function* () {
        const t = yield* Effect.promise(() => fresh(5))
        const target = { gid: t.gid, branch: "reserve", op: "action" } as const
        const first = yield* Barrier.run(conn, target, receipt(t.sku), { result: Receipt })
        const second = yield* Barrier.run(conn, target, receipt(t.sku), { result: Receipt })
        expect(first._tag).toBe("Applied")
        expect(second._tag).toBe("Duplicate")
        const value = second._tag === "Duplicate" ? second.value : undefined
        expect(value?.at).toBeInstanceOf(Date)
        expect(value?.at.getTime()).toBe(Date.parse("2024-02-29T12:34:56.789Z"))
        expect(value?.total).toBe(12_345_678_901_234_567_890n)
        expect(value).toEqual(first._tag === "Applied" ? first.value : undefined)
        expect(yield* Effect.promise(t.qtyNow)).toBe(4)
        // The same through a saga step: the retry gets the value the first attempt got.
        const u = yield* Effect.promise(() => fresh(5))
        const ctx = ctxOf(u.gid, "reserve")
        const once = yield* Barrier.sagaAction(conn, ctx, receipt(u.sku), { result: Receipt })
        const again = yield* Barrier.sagaAction(conn, ctx, receipt(u.sku), { result: Receipt })
        expect(again).toEqual(once)
        expect(again.at).toBeInstanceOf(Date)
        expect(typeof again.total).toBe("bigint")
        expect(yield* Effect.promise(u.qtyNow)).toBe(4)
      })
    )

    it.live(
      "without a schema, a Date or bigint result is refused before commit: typed, the work and the barrier row rolled back, a later JSON result applies",
      () =>
        Effect.gen(function* () {
          const t = yield* Effect.promise(() => fresh(5))
          const target = { gid: t.gid, branch: "reserve", op: "action" } as const
          for (const bad of [{ at: new Date() }, { total: 1n }]) {
            const refused = yield* Effect.either(
              Barrier.run(conn, target, async (s) => ({ ...bad, qty: await reserve(t.sku)(s) }))
            )
            expect(Either.isLeft(refused) && refused.left._tag).toBe("BarrierResultRefusedError")
            const error = Either.isLeft(refused) ? refused.left : undefined
            expect(error?.message).toMatch(/result\.(at|total)/)
            expect(error?.message).toContain("schema")
            expect(error && Barrier.toStepError(error)._tag).toBe("StepBusinessError")
            expect(yield* Effect.promise(() => rows(t.gid))).toEqual([])
            expect(yield* Effect.promise(t.qtyNow)).toBe(5)
          }
          expect(yield* Barrier.run(conn, target, reserve(t.sku))).toEqual({ _tag: "Applied", value: 4 })
          expect(yield* Barrier.run(conn, target, reserve(t.sku))).toEqual({ _tag: "Duplicate", value: 4 })
        })
    )

    it.live("without a schema, every value that JSON would change is refused, naming where it is", () =>
      Effect.gen(function* () {
        class Money {
          constructor(readonly cents: number) {}
        }
        const circular: Record<string, unknown> = {}
        circular.self = circular
        const cases: ReadonlyArray<readonly [unknown, string]> = [
          [5n, "result is a bigint"],
          [Number.NaN, "result is NaN"],
          [{ x: Number.POSITIVE_INFINITY }, "result.x is Infinity"],
          [{ a: 1, b: undefined }, "result.b is undefined"],
          [[1, undefined], "result[1] is undefined"],
          // biome-ignore lint/suspicious/noSparseArray: the hole is the point
          [[1, , 3], "result[1] is a hole"],
          [{ when: [new Date(0)] }, "result.when[0] is a Date"],
          [new Map([["a", 1]]), "result is a Map"],
          [{ s: new Set([1]) }, "result.s is a Set"],
          [{ m: new Money(5) }, "result.m is a Money"],
          [{ f: () => 1 }, "result.f is a function"],
          [{ s: Symbol("x") }, "result.s is a symbol"],
          [{ [Symbol("k")]: 1 }, "result has a symbol key"],
          [Object.assign([1], { extra: true }), "result.extra is not an index"],
          [circular, "result.self is circular"]
        ]
        for (const [value, where] of cases) {
          const t = yield* Effect.promise(() => fresh(5))
          const refused = yield* Effect.either(
            Barrier.run(conn, { gid: t.gid, branch: "b", op: "action" }, async () => value)
          )
          expect(Either.isLeft(refused) && refused.left._tag, where).toBe("BarrierResultRefusedError")
          expect(Either.isLeft(refused) && refused.left.message).toContain(where)
          expect(yield* Effect.promise(() => rows(t.gid))).toEqual([])
        }
      })
    )

    it.live(
      "plain JSON still comes back on a duplicate without a schema; a void result comes back undefined",
      () =>
        Effect.gen(function* () {
          const t = yield* Effect.promise(() => fresh(5))
          const plain = {
            n: 1.5,
            s: "x\u00e9",
            list: [1, "two", null, true, { deep: [] }],
            none: null,
            z: -3
          }
          const cases: ReadonlyArray<readonly [string, unknown]> = [
            ["plain", plain],
            ["null", null],
            ["void", undefined],
            ["string", "done"],
            ["empty", {}]
          ]
          for (const [branch, value] of cases) {
            const target = { gid: t.gid, branch, op: "action" } as const
            expect(yield* Barrier.run(conn, target, async () => value)).toEqual({ _tag: "Applied", value })
            const again = yield* Barrier.run(conn, target, async () => "not run")
            expect(again).toStrictEqual({ _tag: "Duplicate", value })
          }
          // A void saga step: the retry returns undefined too.
          const ctx = ctxOf(t.gid, "void-step")
          expect(yield* Barrier.sagaAction(conn, ctx, async () => undefined)).toBeUndefined()
          expect(yield* Barrier.sagaAction(conn, ctx, async () => undefined)).toBeUndefined()
          // Rows from the session are plain arrays on both drivers: returning them as they are works.
          const rowsTarget = { gid: t.gid, branch: "rows", op: "action" } as const
          const read = (s: Barrier.BarrierSession) =>
            s.query<{ sku: string; qty: number }>("select sku, qty from stock where sku = $1", [t.sku])
          const firstRows = yield* Barrier.run(conn, rowsTarget, read)
          expect(yield* Barrier.run(conn, rowsTarget, read)).toEqual({
            _tag: "Duplicate",
            value: firstRows._tag === "Applied" ? firstRows.value : undefined
          })
        })
    )

    it.live(
      "rows written before result schemas: a void result's null comes back null, a stringified Date decodes under a schema",
      () =>
        Effect.gen(function* () {
          const t = yield* Effect.promise(() => fresh(5))
          const old = (branch: string, json: string) =>
            query(
              "insert into accord_saga_barrier (gid, branch, op, reason, result) values ($1, $2, 'action', 'action', $3::text::jsonb)",
              [t.gid, branch, json]
            )
          yield* Effect.promise(() => old("void", "null"))
          yield* Effect.promise(() => old("dated", `{"at":"2024-01-02T03:04:05.006Z"}`))
          expect(
            yield* Barrier.run(conn, { gid: t.gid, branch: "void", op: "action" }, async () => 1)
          ).toEqual({
            _tag: "Duplicate",
            value: null
          })
          const dated = yield* Barrier.run(
            conn,
            { gid: t.gid, branch: "dated", op: "action" },
            async () => ({ at: new Date() }),
            { result: Schema.Struct({ at: Schema.Date }) }
          )
          expect(dated).toEqual({ _tag: "Duplicate", value: { at: new Date("2024-01-02T03:04:05.006Z") } })
        })
    )

    it.live(
      "a stored result that fails the schema's decode is a typed error, in doubt for the saga (the work had committed)",
      () =>
        Effect.gen(function* () {
          const t = yield* Effect.promise(() => fresh(5))
          const target = { gid: t.gid, branch: "reserve", op: "action" } as const
          yield* Barrier.run(conn, target, async (s) => ({ qty: await reserve(t.sku)(s), total: "lots" }))
          const Total = Schema.Struct({ qty: Schema.Number, total: Schema.BigInt })
          const failed = yield* Effect.either(
            Barrier.run(conn, target, async () => ({ qty: 0, total: 0n }), { result: Total })
          )
          expect(Either.isLeft(failed) && failed.left._tag).toBe("BarrierResultDecodeError")
          expect(Either.isLeft(failed) && failed.left.message).toContain("lots")
          const step = yield* Effect.flip(
            Barrier.sagaAction(conn, ctxOf(t.gid, "reserve"), async () => ({ qty: 0, total: 0n }), {
              result: Total
            })
          )
          expect(step._tag).toBe("StepInDoubtError")
          expect(yield* Effect.promise(t.qtyNow)).toBe(4)
        })
    )

    it.live("a schema whose encoded side is not JSON, or a value it rejects, is refused before commit", () =>
      Effect.gen(function* () {
        const t = yield* Effect.promise(() => fresh(5))
        const target = { gid: t.gid, branch: "reserve", op: "action" } as const
        const selfEncoded = yield* Effect.either(
          Barrier.run(conn, target, async (s) => ({ at: new Date(), qty: await reserve(t.sku)(s) }), {
            result: Schema.Struct({ at: Schema.DateFromSelf, qty: Schema.Unknown })
          })
        )
        expect(Either.isLeft(selfEncoded) && selfEncoded.left.message).toContain("result.at is a Date")
        const Positive = Schema.Number.pipe(Schema.positive())
        const rejected = yield* Effect.either(
          Barrier.run(conn, target, async (s) => ((await reserve(t.sku)(s)) ?? 0) - 10, { result: Positive })
        )
        expect(Either.isLeft(rejected) && rejected.left._tag).toBe("BarrierResultRefusedError")
        expect(yield* Effect.promise(() => rows(t.gid))).toEqual([])
        expect(yield* Effect.promise(t.qtyNow)).toBe(5)
      })
    )

    it.live(
      "a saga step whose result cannot be kept fails once as a business error, not retried, and the saga turns back",
      () =>
        Effect.gen(function* () {
          const t = yield* Effect.promise(() => fresh(5))
          let attempts = 0
          const saga = Saga.make({
            name: "unkeepable-result",
            steps: [
              Saga.step<{ readonly total: bigint }>({
                name: "reserve",
                action: (ctx) =>
                  Barrier.sagaAction(conn, ctx, async (s) => {
                    attempts++
                    await reserve(t.sku)(s)
                    return { total: 1n }
                  }),
                compensation: (ctx) => Barrier.sagaCompensation(conn, ctx, release(t.sku)),
                retry: Schedule.recurs(5)
              })
            ]
          })
          const outcome = yield* Saga.run(saga, null, { sagaId: t.gid }).pipe(
            Effect.provideServiceEffect(SagaLog.SagaLog, SagaLog.makeMemory)
          )
          expect(outcome).toMatchObject({ _tag: "Compensated", cause: { step: "reserve", kind: "business" } })
          expect(attempts).toBe(1)
          expect(yield* Effect.promise(t.qtyNow)).toBe(5)
        })
    )

    it.live("a saga compensation's result is not kept: a compensation returning a Date still applies", () =>
      Effect.gen(function* () {
        const t = yield* Effect.promise(() => fresh(5))
        const ctx = ctxOf(t.gid, "reserve")
        yield* Barrier.sagaAction(conn, ctx, reserve(t.sku))
        const undo = { ...ctx, output: Option.some(4) }
        const undone = async (s: Barrier.BarrierSession) => {
          await release(t.sku)(s)
          return new Date()
        }
        yield* Barrier.sagaCompensation(conn, undo, undone)
        yield* Barrier.sagaCompensation(conn, undo, undone)
        expect(yield* Effect.promise(t.qtyNow)).toBe(5)
        expect(yield* Effect.promise(() => rows(t.gid))).toEqual([
          { op: "action", reason: "action" },
          { op: "compensation", reason: "compensation" }
        ])
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

onPostgresAndPGlite(server, { db: DB, max: 10, skipped: "Barrier on PostgreSQL (no server)" }, suite)
