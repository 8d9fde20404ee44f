/**
 * Brief lock contention behind the barrier (review of 2026-12-07). With the service database's
 * `lock_timeout = 300ms` and another transaction holding the stock row for 1 s, a compensation
 * failed with 55P03 (lock_not_available), which `toStepError` read as a business error: never
 * retried, the saga Stuck after 625 ms whatever its `compensationRetry`. An action hitting 55P03
 * failed for good too. 55P03 and 55006 (object_in_use) are now transient, and a compensation's
 * failure is retried on its schedule unless the barrier itself refused it.
 */
import { Saga, SagaLog } from "@accord/core"
import { afterAll, beforeAll, describe, expect, it } from "@effect/vitest"
import { Duration, Effect, Either, Schedule } from "effect"
import postgres from "postgres"
import * as Barrier from "../src/Barrier.js"
import * as TestDatabase from "../src/TestDatabase.js"

const server = await TestDatabase.server()
const DB = "fixg_barrier_transient"

/** A work error as the barrier reports it (its SQLSTATE, the connection intact). */
const workError = (op: Barrier.Op, sqlState: string) =>
  new Barrier.BarrierWorkError({
    gid: "g",
    branch: "reserve",
    op,
    reason: "x",
    sqlState,
    connectionLost: false
  })

describe("Barrier.toStepError reads lock contention as transient", () => {
  it.each(["55P03", "55006"])("%s (the lock or object is busy for now) is transient", (sqlState) => {
    expect(Barrier.toStepError(workError("action", sqlState))._tag).toBe("StepTransientError")
  })

  it.each(["55000", "23514", "0A000"])("%s stays a definite (business) failure of an action", (sqlState) => {
    expect(Barrier.toStepError(workError("action", sqlState))._tag).toBe("StepBusinessError")
  })
})

describe("Barrier.toCompensationStepError drives a compensation to its end", () => {
  it.each([
    "55P03",
    "23514",
    "42703",
    "P0001"
  ])("a work failing with %s is retried (transient)", (sqlState) => {
    expect(Barrier.toCompensationStepError(workError("compensation", sqlState))._tag).toBe(
      "StepTransientError"
    )
  })

  it("a lost connection stays in doubt", () => {
    const lost = new Barrier.BarrierWorkError({
      gid: "g",
      branch: "reserve",
      op: "compensation",
      reason: "gone",
      connectionLost: true
    })
    expect(Barrier.toCompensationStepError(lost)._tag).toBe("StepInDoubtError")
  })

  it("the barrier's own refusals are definite: a refused notify (0A000), a result refused before commit", () => {
    expect(Barrier.toCompensationStepError(workError("compensation", "0A000"))._tag).toBe("StepBusinessError")
    const refused = new Barrier.BarrierResultRefusedError({
      gid: "g",
      branch: "reserve",
      op: "compensation",
      reason: "result is a Date"
    })
    expect(Barrier.toCompensationStepError(refused)._tag).toBe("StepBusinessError")
  })
})

describe.skipIf(server === undefined)("saga steps behind the barrier under a brief lock_timeout", () => {
  const adminUrl = server?.adminUrl ?? ""
  let sql: postgres.Sql
  let n = 0

  beforeAll(async () => {
    const url = await TestDatabase.createDatabase(adminUrl, DB)
    // As the reviewer's service database: every session of it gives up on a lock after 300 ms.
    const admin = postgres(adminUrl, { max: 1, onnotice: () => {} })
    try {
      await admin.unsafe(`alter database ${DB} set lock_timeout = '300ms'`)
    } finally {
      await admin.end({ timeout: 5 })
    }
    sql = postgres(url, { max: 4, onnotice: () => {} })
    await Barrier.migrate(sql)
    await sql`create table stock (sku text primary key, qty int not null check (qty >= 0))`
  }, 60_000)
  afterAll(async () => {
    await sql?.end({ timeout: 5 })
    await TestDatabase.dropDatabase(adminUrl, DB)
  }, 60_000)

  /** A fresh SKU with `qty` units and a fresh saga id. */
  const fresh = (qty: number) =>
    Effect.promise(async () => {
      n++
      const sku = `sku-${n}`
      await sql`insert into stock (sku, qty) values (${sku}, ${qty})`
      return { sku, sagaId: `fixg-${n}-${Date.now()}` }
    })
  const qtyOf = (sku: string) =>
    Effect.promise(
      async () => (await sql<{ qty: number }[]>`select qty from stock where sku = ${sku}`)[0]?.qty
    )

  /**
   * Another transaction takes the row of `sku` (`for update`) and holds it for `ms`; resolves once
   * the lock is held, with the promise of its release.
   */
  const holdRow = (sku: string, ms: number) =>
    Effect.promise(async () => {
      const holder = await sql.reserve()
      await holder`begin`
      await holder`select 1 from stock where sku = ${sku} for update`
      const released = new Promise<void>((resolve) => setTimeout(resolve, ms)).then(async () => {
        await holder`commit`
        holder.release()
      })
      return { released }
    })

  const reserve = (sku: string) => (s: Barrier.BarrierSession) =>
    s.query("update stock set qty = qty - 1 where sku = $1", [sku]).then(() => undefined)
  const release = (sku: string) => (s: Barrier.BarrierSession) =>
    s.query("update stock set qty = qty + 1 where sku = $1", [sku]).then(() => undefined)

  const runSaga = (saga: Saga.Saga<never>, sagaId: string) =>
    Saga.run(saga, null, { sagaId }).pipe(Effect.provideServiceEffect(SagaLog.SagaLog, SagaLog.makeMemory))

  it.live("a compensation waiting on a row held for 1 s is retried and applies: Compensated, not Stuck", () =>
    Effect.gen(function* () {
      const t = yield* fresh(5)
      let hold: { released: Promise<void> } | undefined
      let compensations = 0
      const saga = Saga.make({
        name: "lock-contention-compensation",
        steps: [
          Saga.step<void>({
            name: "reserve",
            action: (ctx) => Barrier.sagaAction(sql, ctx, reserve(t.sku)),
            compensation: (ctx) =>
              Barrier.sagaCompensation(sql, ctx, (s) => {
                compensations++
                return release(t.sku)(s)
              }),
            compensationRetry: Schedule.spaced(Duration.millis(100)).pipe(
              Schedule.intersect(Schedule.recurs(20))
            )
          }),
          Saga.step<void>({
            name: "charge",
            // The card is declined while another transaction holds the stock row for 1 s.
            action: () =>
              Effect.flatMap(
                Effect.tap(holdRow(t.sku, 1_000), (h) => {
                  hold = h
                }),
                () => Effect.fail(new Saga.StepBusinessError({ reason: "card declined" }))
              )
          })
        ]
      })
      const outcome = yield* runSaga(saga, t.sagaId)
      yield* Effect.promise(() => hold?.released ?? Promise.resolve())
      expect(outcome).toMatchObject({ _tag: "Compensated", undone: ["reserve"] })
      // The first attempt at least hit the lock timeout (300 ms) before the row was released.
      expect(compensations).toBeGreaterThan(1)
      expect(yield* qtyOf(t.sku)).toBe(5)
    })
  )

  it.live("an action waiting on a row held for 1 s is retried and applies once: Completed", () =>
    Effect.gen(function* () {
      const t = yield* fresh(5)
      const hold = yield* holdRow(t.sku, 1_000)
      let attempts = 0
      const saga = Saga.make({
        name: "lock-contention-action",
        steps: [
          Saga.step<void>({
            name: "reserve",
            action: (ctx) =>
              Barrier.sagaAction(sql, ctx, (s) => {
                attempts++
                return reserve(t.sku)(s)
              }),
            compensation: (ctx) => Barrier.sagaCompensation(sql, ctx, release(t.sku)),
            retry: Schedule.spaced(Duration.millis(100)).pipe(Schedule.intersect(Schedule.recurs(20)))
          })
        ]
      })
      const outcome = yield* runSaga(saga, t.sagaId)
      yield* Effect.promise(() => hold.released)
      expect(outcome._tag).toBe("Completed")
      expect(attempts).toBeGreaterThan(1)
      expect(yield* qtyOf(t.sku)).toBe(4)
    })
  )

  it.live(
    "a single lock timeout of a barrier run is a BarrierWorkError 55P03, transient as a step error",
    () =>
      Effect.gen(function* () {
        const t = yield* fresh(5)
        const hold = yield* holdRow(t.sku, 1_000)
        const run = yield* Effect.either(
          Barrier.run(sql, { gid: t.sagaId, branch: "reserve", op: "action" }, reserve(t.sku))
        )
        yield* Effect.promise(() => hold.released)
        expect(Either.isLeft(run) && run.left).toMatchObject({ _tag: "BarrierWorkError", sqlState: "55P03" })
        expect(Either.isLeft(run) && Barrier.toStepError(run.left)._tag).toBe("StepTransientError")
        expect(yield* qtyOf(t.sku)).toBe(5)
      })
  )

  it.live(
    "a compensation failing the same way every time is retried on its schedule, then the saga is Stuck",
    () =>
      Effect.gen(function* () {
        const t = yield* fresh(0)
        let compensations = 0
        const saga = Saga.make({
          name: "deterministic-compensation-failure",
          steps: [
            Saga.step<void>({
              name: "reserve",
              action: (ctx) => Barrier.sagaAction(sql, ctx, async () => undefined),
              // qty 0 - 1 violates the CHECK on every attempt.
              compensation: (ctx) =>
                Barrier.sagaCompensation(sql, ctx, (s) => {
                  compensations++
                  return reserve(t.sku)(s)
                }),
              compensationRetry: Schedule.recurs(3)
            }),
            Saga.step<void>({
              name: "charge",
              action: () => Effect.fail(new Saga.StepBusinessError({ reason: "card declined" }))
            })
          ]
        })
        const outcome = yield* runSaga(saga, t.sagaId)
        expect(outcome).toMatchObject({ _tag: "Stuck", step: "reserve", phase: "compensation" })
        expect(outcome._tag === "Stuck" && outcome.cause).toMatch(/check constraint/)
        expect(compensations).toBe(4)
        expect(yield* qtyOf(t.sku)).toBe(0)
      })
  )

  it.live(
    "a compensation whose notify the barrier refuses is Stuck at once (the same work is refused again)",
    () =>
      Effect.gen(function* () {
        const t = yield* fresh(5)
        let compensations = 0
        const saga = Saga.make({
          name: "refused-compensation",
          steps: [
            Saga.step<void>({
              name: "reserve",
              action: (ctx) => Barrier.sagaAction(sql, ctx, reserve(t.sku)),
              compensation: (ctx) =>
                Barrier.sagaCompensation(sql, ctx, async (s) => {
                  compensations++
                  await release(t.sku)(s)
                  await s.sql!.notify("fixg_released", t.sku)
                }),
              compensationRetry: Schedule.recurs(3)
            }),
            Saga.step<void>({
              name: "charge",
              action: () => Effect.fail(new Saga.StepBusinessError({ reason: "card declined" }))
            })
          ]
        })
        const outcome = yield* runSaga(saga, t.sagaId)
        expect(outcome).toMatchObject({ _tag: "Stuck", step: "reserve", phase: "compensation" })
        expect(compensations).toBe(1)
        expect(yield* qtyOf(t.sku)).toBe(4)
      })
  )
})
