/**
 * `sql.notify()` in a barrier step (review of 2026-12-07): postgres.js sends a reserved
 * connection's `notify` through its pool, `select pg_notify(...)` on another connection, committed
 * at once. The step's `sql` let it through, so a step that then rolled back (its work failed, or its
 * result was refused) had notified anyway, and a retried step notified once per attempt. A
 * postgres.js branch refuses it (`PgParticipant`); a barrier step now refuses it the same way.
 */
import { type StepContext, StepBusinessError } from "@accord/core/Saga"
import { afterAll, beforeAll, describe, expect, it } from "@effect/vitest"
import { Effect, Either } from "effect"
import postgres from "postgres"
import * as Barrier from "../src/Barrier.js"
import * as TestDatabase from "../src/TestDatabase.js"

const server = await TestDatabase.server()
const DB = "fixe_barrier_notify"
const CHANNEL = "fixe_orders"

describe.skipIf(server === undefined)("sql.notify() in a barrier step", () => {
  const adminUrl = server?.adminUrl ?? ""
  let sql: postgres.Sql
  let listener: postgres.Sql
  /** What `CHANNEL` delivered, in commit order. */
  const got: Array<string> = []
  const waiters: Array<() => void> = []
  /**
   * Sends `payload` on `CHANNEL` from the pool (autocommitted) and waits for it: whatever a step
   * notified before it has been delivered by then (notifications keep commit order).
   */
  const notifiedAfterwards = (payload: string) =>
    Effect.promise(async () => {
      const arrived = new Promise<void>((resolve) => {
        const check = () => (got.includes(payload) ? resolve() : waiters.push(check))
        check()
      })
      await sql.notify(CHANNEL, payload)
      await arrived
    })
  const orderIds = async () =>
    (await sql<{ id: number }[]>`select id from orders order by id`).map((r) => r.id)
  const barrierRows = async (gid: string) =>
    (await sql<{ op: string }[]>`select op from accord_saga_barrier where gid = ${gid}`).map((r) => r.op)

  beforeAll(async () => {
    const url = await TestDatabase.createDatabase(adminUrl, DB)
    sql = postgres(url, { max: 3, onnotice: () => {} })
    listener = postgres(url, { max: 1, onnotice: () => {} })
    await Barrier.migrate(sql)
    await sql`create table orders (id int primary key)`
    await listener.listen(CHANNEL, (payload) => {
      got.push(payload)
      for (const w of waiters.splice(0)) w()
    })
  }, 60_000)
  afterAll(async () => {
    await listener?.end({ timeout: 5 })
    await sql?.end({ timeout: 5 })
    await TestDatabase.dropDatabase(adminUrl, DB)
  }, 60_000)

  it.live("is refused: the step fails, its work and barrier row roll back, and nothing is notified", () =>
    Effect.gen(function* () {
      got.length = 0
      const gid = "fixe-notify-1"
      const run = yield* Barrier.run(sql, { gid, branch: "place", op: "action" }, async (s) => {
        await s.sql!`insert into orders values (1)`
        await s.sql!.notify(CHANNEL, "order 1 placed")
      }).pipe(Effect.either)
      expect(Either.isLeft(run)).toBe(true)
      if (Either.isLeft(run)) {
        expect(run.left).toMatchObject({ _tag: "BarrierWorkError", sqlState: "0A000", connectionLost: false })
        expect(run.left.message).toMatch(/notify.*refused in a barrier step/)
      }
      yield* notifiedAfterwards("after 1")
      expect(got).toEqual(["after 1"])
      expect(yield* Effect.promise(orderIds)).not.toContain(1)
      expect(yield* Effect.promise(() => barrierRows(gid))).toEqual([])
    })
  )

  it.live("a work that catches the refusal still fails, rolled back", () =>
    Effect.gen(function* () {
      got.length = 0
      const gid = "fixe-notify-2"
      const run = yield* Barrier.run(sql, { gid, branch: "place", op: "action" }, async (s) => {
        await s.sql!`insert into orders values (2)`
        try {
          await s.sql!.notify(CHANNEL, "order 2 placed")
        } catch {
          // ignored by the work
        }
        return "placed"
      }).pipe(Effect.either)
      expect(Either.isLeft(run)).toBe(true)
      if (Either.isLeft(run)) expect(run.left.message).toMatch(/notify.*refused in a barrier step/)
      yield* notifiedAfterwards("after 2")
      expect(got).toEqual(["after 2"])
      expect(yield* Effect.promise(orderIds)).not.toContain(2)
      expect(yield* Effect.promise(() => barrierRows(gid))).toEqual([])
    })
  )

  it.live(
    "the refusal fails a saga step once, as a definite (business) error: a retry would be refused again",
    () =>
      Effect.gen(function* () {
        got.length = 0
        const ctx: StepContext = {
          sagaId: "fixe-notify-3",
          sagaName: "fixe-notify",
          step: "place",
          key: "fixe-notify-3/place",
          input: null,
          outputs: {},
          attempt: 1
        }
        const failed = yield* Barrier.sagaAction(sql, ctx, async (s) => {
          await s.sql!.notify(CHANNEL, "order 3 placed")
        }).pipe(Effect.flip)
        expect(failed).toBeInstanceOf(StepBusinessError)
        yield* notifiedAfterwards("after 3")
        expect(got).toEqual(["after 3"])
      })
  )

  it.live("a compensation's work is refused too", () =>
    Effect.gen(function* () {
      got.length = 0
      const gid = "fixe-notify-4"
      yield* Barrier.run(sql, { gid, branch: "place", op: "action" }, (s) =>
        s.query("insert into orders values (4)")
      )
      const undo = yield* Barrier.run(sql, { gid, branch: "place", op: "compensation" }, async (s) => {
        await s.sql!`delete from orders where id = 4`
        await s.sql!.notify(CHANNEL, "order 4 cancelled")
      }).pipe(Effect.either)
      expect(Either.isLeft(undo)).toBe(true)
      yield* notifiedAfterwards("after 4")
      expect(got).toEqual(["after 4"])
      expect(yield* Effect.promise(orderIds)).toContain(4)
      expect(yield* Effect.promise(() => barrierRows(gid))).toEqual(["action"])
    })
  )

  // Not a defect found: a guard. On a reserved connection postgres.js has none of the pool's own
  // methods that would run elsewhere (a LISTEN connection, a transaction or reservation of its own,
  // a replication stream); `notify` is the only one it has, and the step's handle must not add them.
  it.live("the pool's listen, begin, reserve and subscribe are not on the step's handle", () =>
    Effect.gen(function* () {
      const run = yield* Barrier.run(
        sql,
        { gid: "fixe-notify-6", branch: "place", op: "action" },
        async (s) => {
          const handle = s.sql as unknown as Record<string, unknown>
          return ["listen", "begin", "reserve", "subscribe", "largeObject"].filter(
            (m) => handle[m] !== undefined
          )
        }
      )
      expect(run).toEqual({ _tag: "Applied", value: [] })
    })
  )

  it.live("the notification sent after the step committed (from the pool) is delivered", () =>
    Effect.gen(function* () {
      got.length = 0
      const gid = "fixe-notify-5"
      const run = yield* Barrier.run(sql, { gid, branch: "place", op: "action" }, (s) =>
        s.query("insert into orders values (5)")
      )
      expect(run._tag).toBe("Applied")
      yield* notifiedAfterwards("order 5 placed")
      expect(got).toEqual(["order 5 placed"])
    })
  )
})
