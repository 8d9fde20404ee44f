/**
 * Saga-log helpers of the PgSagaLog suites: the log on a suite's back-end, a database with one pool
 * per orchestrator "process", an orchestrator killed between two records, and the expiry of its lease.
 */
import { SagaLog } from "@accord/core"
import { afterAll, beforeAll } from "@effect/vitest"
import { Effect } from "effect"
import postgres from "postgres"
import * as PgSagaLog from "../../src/PgSagaLog.js"
import * as TestDatabase from "../../src/TestDatabase.js"
import { type Backend, useBackend } from "./backends.js"

export type Log = SagaLog.SagaLog["Type"]

/**
 * The back-end of the enclosing `describe` (see `useBackend`): its connection, and `withLog`, which
 * runs `f` with a PgSagaLog on it, provided and handed to `f` for inspection.
 */
export const sagaLogOn = (open: () => Promise<Backend>) => {
  const conn = useBackend(open)
  const withLog = <A, E>(f: (log: Log) => Effect.Effect<A, E, SagaLog.SagaLog>) =>
    Effect.flatMap(PgSagaLog.make(conn()), (log) => Effect.provideService(f(log), SagaLog.SagaLog, log))
  return { conn, withLog }
}

/**
 * A fresh database `db` on the server for the tests of the enclosing `describe`: `url()` gives its
 * address (inside a test), and `pool(target, max)` opens a pool, one per "process", on it (or on
 * `target`, say a proxy to it). After the tests every pool is ended (waiting at most `endTimeout`
 * seconds) and the database dropped.
 */
export const usePoolsOnDatabase = (
  adminUrl: string,
  db: string,
  options: { readonly max: number; readonly endTimeout: number }
) => {
  let url = ""
  const pools: Array<postgres.Sql> = []
  beforeAll(async () => {
    url = await TestDatabase.createDatabase(adminUrl, db)
  }, 60_000)
  afterAll(async () => {
    for (const p of pools) await p.end({ timeout: options.endTimeout })
    await TestDatabase.dropDatabase(adminUrl, db)
  }, 60_000)
  const pool = (target = url, max = options.max) => {
    const sql = postgres(target, { max, onnotice: () => {} })
    pools.push(sql)
    return sql
  }
  return { url: () => url, pool }
}

/** The log of an orchestrator that dies (the process is killed) instead of writing record `after + 1`. */
export const crashing = (log: Log, after: number): Log => {
  let written = 0
  const guard = <A, E>(write: Effect.Effect<A, E>) =>
    Effect.suspend(() => {
      // Counted before the write, so concurrent writers (a parallel group) cannot both slip
      // through; a write in flight when the process "dies" lands (as it would on a real socket
      // whose statement was sent), never after the resumption started.
      if (written >= after) return Effect.die("orchestrator killed")
      written++
      return Effect.uninterruptible(write)
    })
  return { ...log, start: (r, l) => guard(log.start(r, l)), append: (r, o) => guard(log.append(r, o)) }
}

/** The passage of time for a dead orchestrator's lease, on the database's clock. */
export const expireLease = (conn: PgSagaLog.PgConnection, sagaId: string): Promise<unknown> => {
  const text = "update accord_saga set lease_until = now() - interval '1 second' where saga_id = $1"
  return typeof conn === "function" ? conn.unsafe(text, [sagaId]) : conn.query(text, [sagaId])
}
