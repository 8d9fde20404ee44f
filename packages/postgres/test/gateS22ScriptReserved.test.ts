/**
 * A script (a migration) interrupted on a reserved connection that stopped answering: given up on,
 * the connection is destroyed, as a statement's is, so that it is never reused while the script may
 * still run on it. Until 2026-12-07 `runScript` only cancelled and waited: the connection stayed
 * reserved with the script pending on it, and whatever its owner sent next (or, released, the
 * pool) waited behind it until the partition healed. A TCP proxy freezes that one link: the script
 * never reaches the server and nothing comes back.
 */
import { afterAll, beforeAll, describe, expect, it } from "@effect/vitest"
import { Duration, Effect, Option } from "effect"
import postgres from "postgres"
import { fromPostgres, statement } from "../src/internal/client.js"
import * as Migrations from "../src/Migrations.js"
import * as TestDatabase from "../src/TestDatabase.js"
import * as TcpProxy from "./support/tcpProxy.js"

const server = await TestDatabase.server()
const DB = "s22_gate_script_reserved"
const TIMEOUT_MS = 500

describe.skipIf(server === undefined)("an interrupted script on a frozen reserved connection", () => {
  const adminUrl = server?.adminUrl ?? ""
  let url: string

  beforeAll(async () => {
    url = await TestDatabase.createDatabase(adminUrl, DB)
  }, 60_000)

  afterAll(async () => {
    await TestDatabase.dropDatabase(adminUrl, DB)
  }, 60_000)

  /** A TCP proxy to the database and a one-connection pool through it, closed with the scope. */
  const proxiedPool = Effect.gen(function* () {
    const proxy = yield* Effect.acquireRelease(
      Effect.promise(() => TcpProxy.start(url)),
      (p) => Effect.promise(() => p.close())
    )
    const pool = yield* Effect.acquireRelease(
      Effect.sync(() => postgres(proxy.url(url), { max: 1, onnotice: () => {} })),
      (sql) => Effect.promise(() => sql.end({ timeout: 1 }))
    )
    return { proxy, pool }
  })

  /** The pool's one connection answers again, as a new session (the old one was destroyed). */
  const answersAsNewSession = (pool: postgres.Sql, old: number) =>
    Effect.promise(() => pool<{ pid: number }[]>`select pg_backend_pid() as pid`).pipe(
      Effect.timeoutOption(Duration.seconds(5)),
      Effect.map(Option.map((rows) => rows[0]!.pid !== old))
    )

  it.live(
    "Migrations.participant on a reserved connection, interrupted: bounded, and the connection is destroyed",
    () =>
      Effect.gen(function* () {
        const { proxy, pool } = yield* proxiedPool
        const conn = yield* Effect.promise(() => pool.reserve())
        const [old] = yield* Effect.promise(() => conn<{ pid: number }[]>`select pg_backend_pid() as pid`)
        const frozen = proxy.freezeWhen((chunk) => chunk.includes("do $accord$"), { deliver: false })
        const started = Date.now()
        const outcome = yield* Migrations.participant(conn).pipe(
          Effect.timeout(Duration.millis(TIMEOUT_MS)),
          Effect.either
        )
        const elapsed = Date.now() - started
        yield* Effect.promise(() => frozen)
        expect(outcome._tag).toBe("Left")
        // The timeout, the wait for the cancelled script (the migrations' 5 s), and slack.
        expect(elapsed).toBeLessThan(TIMEOUT_MS + 5_000 + 1_500)
        expect(yield* answersAsNewSession(pool, old!.pid)).toEqual(Option.some(true))
      }).pipe(Effect.scoped),
    20_000
  )

  it.live(
    "a statement through a Client over a reserved connection, interrupted: the connection is destroyed too",
    () =>
      Effect.gen(function* () {
        const { proxy, pool } = yield* proxiedPool
        const conn = yield* Effect.promise(() => pool.reserve())
        const [old] = yield* Effect.promise(() => conn<{ pid: number }[]>`select pg_backend_pid() as pid`)
        const frozen = proxy.freezeWhen((chunk) => chunk.includes("select 'stuck'"), { deliver: false })
        const outcome = yield* statement(
          fromPostgres(conn),
          "select 'stuck'",
          undefined,
          Duration.millis(300)
        ).pipe(Effect.timeout(Duration.millis(TIMEOUT_MS)), Effect.either)
        yield* Effect.promise(() => frozen)
        expect(outcome._tag).toBe("Left")
        expect(yield* answersAsNewSession(pool, old!.pid)).toEqual(Option.some(true))
      }).pipe(Effect.scoped),
    20_000
  )
})
