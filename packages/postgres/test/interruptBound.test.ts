/**
 * A participant call whose connection stops answering (a TCP proxy freezes that one link: the
 * statement never reaches the server, nothing comes back, not even a close) must still give way to
 * its interruption: `Effect.timeout` around `state`, `inDoubt`, `forget`, `rollback` or `commit`
 * returns within the timeout plus `cancelTimeout` (the bounded wait for the cancelled statement),
 * not when the partition heals. The cancel request itself goes over a new link and reaches the
 * server, where there is nothing to cancel: the statement never settles.
 */
import type { Participant } from "@accord/core"
import { afterAll, beforeAll, describe, expect, it } from "@effect/vitest"
import { Duration, Effect, Option } from "effect"
import postgres from "postgres"
import { statement } from "../src/internal/client.js"
import * as PgParticipant from "../src/PgParticipant.js"
import * as TestDatabase from "../src/TestDatabase.js"
import { ctxFor } from "./support/pg2pc.js"
import * as TcpProxy from "./support/tcpProxy.js"

const server = await TestDatabase.server()
const DB = "accord_t_pg_interrupt_bound"
const CANCEL_MS = 300
const TIMEOUT_MS = 500
/** The bound the interruption must keep: the timeout, the cancel wait, and slack for a slow host. */
const BOUND_MS = TIMEOUT_MS + CANCEL_MS + 1_000

describe.skipIf(server === undefined)("an interrupted participant call on a frozen connection", () => {
  const adminUrl = server?.adminUrl ?? ""
  let url: string

  beforeAll(async () => {
    url = await TestDatabase.createDatabase(adminUrl, DB)
  }, 60_000)

  afterAll(async () => {
    await TestDatabase.dropDatabase(adminUrl, DB)
  }, 60_000)

  /** A TCP proxy to the database and a pool of `max` connections through it, closed with the scope. */
  const proxiedPool = (max: number) =>
    Effect.gen(function* () {
      const proxy = yield* Effect.acquireRelease(
        Effect.promise(() => TcpProxy.start(url)),
        (p) => Effect.promise(() => p.close())
      )
      const pool = yield* Effect.acquireRelease(
        Effect.sync(() => postgres(proxy.url(url), { max, onnotice: () => {} })),
        (sql) => Effect.promise(() => sql.end({ timeout: 1 }))
      )
      return { proxy, pool }
    })

  const cases: ReadonlyArray<{
    readonly name: string
    /** Picks the call's statement among what the pool sends (in a Parse or a simple Query message). */
    readonly freezeOn: (chunk: Buffer) => boolean
    readonly call: (
      p: PgParticipant.PgParticipant,
      ctx: Participant.BranchContext
    ) => Effect.Effect<unknown, unknown>
  }> = [
    {
      name: "state",
      freezeOn: (chunk) => chunk.includes("current_database()) as prepared"),
      call: (p, ctx) => p.state(ctx)
    },
    {
      name: "inDoubt",
      freezeOn: (chunk) => chunk.includes("from pg_prepared_xacts where database"),
      call: (p) => p.inDoubt
    },
    {
      name: "forget",
      freezeOn: (chunk) => chunk.includes(`delete from "public"."accord_branch" where gid`),
      call: (p, ctx) => p.forget([ctx])
    },
    {
      name: "rollback",
      freezeOn: (chunk) => chunk.includes("ROLLBACK PREPARED"),
      call: (p, ctx) => p.rollback(ctx)
    },
    {
      name: "commit",
      freezeOn: (chunk) => chunk.includes("COMMIT PREPARED"),
      call: (p, ctx) => p.commit(ctx)
    }
  ]

  for (const { name, freezeOn, call } of cases) {
    it.live(
      `${name} under Effect.timeout(${TIMEOUT_MS} ms) returns within the timeout plus cancelTimeout, and the participant still answers`,
      () =>
        Effect.gen(function* () {
          const { proxy, pool } = yield* proxiedPool(2)
          const p = yield* PgParticipant.make({
            name: "bank-a",
            sql: pool,
            cancelTimeout: Duration.millis(CANCEL_MS)
          })
          const ctx = yield* ctxFor("bank-a")
          const frozen = proxy.freezeWhen(freezeOn, { deliver: false })
          const started = Date.now()
          const outcome = yield* call(p, ctx).pipe(Effect.timeout(Duration.millis(TIMEOUT_MS)), Effect.either)
          const elapsed = Date.now() - started
          yield* Effect.promise(() => frozen)
          expect(proxy.frozen()).toBe(1)
          expect(outcome._tag).toBe("Left")
          if (outcome._tag === "Left") expect(String(outcome.left)).toContain("TimeoutException")
          expect(elapsed).toBeGreaterThanOrEqual(TIMEOUT_MS - 50)
          expect(elapsed).toBeLessThan(BOUND_MS)

          // The frozen link is not the pool's only connection: the participant still answers.
          const fresh = yield* ctxFor("bank-a")
          const state = yield* p.state(fresh).pipe(Effect.timeoutOption(Duration.seconds(5)))
          expect(state).toEqual(Option.some("aborted"))
        }).pipe(Effect.scoped),
      // A hang (the defect) fails here rather than holding the suite.
      15_000
    )
  }

  it.live(
    "a statement on a reserved connection, interrupted: bounded, and the connection is destroyed (never reused while the statement may run)",
    () =>
      Effect.gen(function* () {
        const { proxy, pool } = yield* proxiedPool(1)
        const conn = yield* Effect.promise(() => pool.reserve())
        const [old] = yield* Effect.promise(() => conn<{ pid: number }[]>`select pg_backend_pid() as pid`)
        const frozen = proxy.freezeWhen((chunk) => chunk.includes("select 'stuck'"), { deliver: false })
        const started = Date.now()
        const outcome = yield* statement(conn, "select 'stuck'", undefined, Duration.millis(CANCEL_MS)).pipe(
          Effect.timeout(Duration.millis(TIMEOUT_MS)),
          Effect.either
        )
        const elapsed = Date.now() - started
        yield* Effect.promise(() => frozen)
        expect(outcome._tag).toBe("Left")
        expect(elapsed).toBeLessThan(BOUND_MS)
        // Destroyed: the pool's one connection comes back as a new session.
        const fresh = yield* Effect.promise(
          () => pool<{ pid: number }[]>`select pg_backend_pid() as pid`
        ).pipe(Effect.timeoutOption(Duration.seconds(5)))
        expect(Option.map(fresh, (rows) => rows[0]!.pid !== old!.pid)).toEqual(Option.some(true))
      }).pipe(Effect.scoped),
    15_000
  )

  it.live("a hung call's gid is never left prepared (none was prepared)", () =>
    Effect.promise(async () => {
      const left = (await TestDatabase.preparedOnServer(adminUrl)).filter((p) => p.database === DB)
      expect(left).toEqual([])
    })
  )
})

describe("an interrupted PGlite branch whose work does not return", () => {
  it.live(
    `prepare under Effect.timeout(${TIMEOUT_MS} ms) returns within the timeout plus two cancelTimeouts; the transaction is rolled back and the gate left without waiting for the work`,
    () =>
      Effect.gen(function* () {
        const db = yield* Effect.acquireRelease(
          Effect.promise(() => PgParticipant.openPglite()),
          (d) => Effect.promise(() => d.close())
        )
        const gate = PgParticipant.makeGate()
        const p = yield* PgParticipant.makePglite({
          name: "bank-a",
          db,
          gate,
          cancelTimeout: Duration.millis(CANCEL_MS)
        })
        let release: (error: Error) => void = () => undefined
        const stuck = new Promise<never>((_, reject) => {
          release = reject
        })
        const ctx = yield* ctxFor("bank-a")
        const started = Date.now()
        const outcome = yield* p
          .prepare(ctx, async (s) => {
            await s.query("select 1")
            await stuck
          })
          .pipe(Effect.timeout(Duration.millis(TIMEOUT_MS)), Effect.either)
        const elapsed = Date.now() - started
        expect(outcome._tag).toBe("Left")
        // The work's extra cancelTimeout, then the rollback's (de89130).
        expect(elapsed).toBeLessThan(BOUND_MS + CANCEL_MS)
        // Rolled back without waiting for the work (until de89130 the gate stayed held, and PGlite's
        // transaction open, until the work settled: for ever for a work that never does).
        expect(gate.holder).toBeUndefined()
        expect((yield* Effect.promise(() => db.query<{ one: number }>("select 1 as one"))).rows).toEqual([
          { one: 1 }
        ])
        // The work fails at last: nothing changes.
        release(new Error("released"))
        yield* Effect.sleep(Duration.millis(200))
        expect(gate.holder).toBeUndefined()
        expect(yield* p.inDoubt).toEqual([])
      }).pipe(Effect.scoped),
    15_000
  )
})
