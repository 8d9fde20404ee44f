/**
 * An interrupted PgSagaLog write is cancelled on the server. `Saga` bounds every saga-log call by the
 * lease (`leaseFor`) and interrupts it when that bound passes; the statement must then stop on the
 * server (not keep waiting on a row lock, holding its pool connection, and land later, after the
 * orchestrator gave up on it), and the interruption must return promptly.
 */
import type { SagaLog } from "@accord/core"
import { describe, expect, it } from "@effect/vitest"
import { Effect, Exit, Option } from "effect"
import * as PgSagaLog from "../src/PgSagaLog.js"
import * as TestDatabase from "../src/TestDatabase.js"
import { usePoolsOnDatabase } from "./support/sagaLog.js"

const server = await TestDatabase.server()
const DB = "accord_t_saga_log_cancel"

interface Waiting {
  readonly pid: number
  readonly state: string | null
  readonly wait_event_type: string | null
  readonly query: string
}

describe.skipIf(server === undefined)("PgSagaLog statements interrupted on PostgreSQL", () => {
  const adminUrl = server?.adminUrl ?? ""
  const { pool } = usePoolsOnDatabase(adminUrl, DB, { max: 4, endTimeout: 1 })

  it("an append interrupted while it waits on a row lock is cancelled on the server", async () => {
    const logPool = pool()
    const lockPool = pool(undefined, 1)
    const observer = pool(undefined, 1)
    const log = await Effect.runPromise(PgSagaLog.make(logPool))
    const sagaId = "cancel-1"
    const owner = "p1"
    await Effect.runPromise(
      log.start({ _tag: "SagaStarted", sagaId, sagaType: "t", input: null }, { owner, leaseFor: "1 minute" })
    )

    // Another session holds the saga's row, as a concurrent writer (a sweeper's claim) would.
    const locker = await lockPool.reserve()
    await locker`begin`
    await locker`select 1 from accord_saga where saga_id = ${sagaId} for update`
    try {
      // The statements of the log's sessions (not the observer's, not the locker's) waiting on a lock.
      const waiting = () =>
        observer<Array<Waiting>>`
          select pid, state, wait_event_type, query from pg_stat_activity
          where datname = ${DB} and pid <> pg_backend_pid() and state = 'active'
            and wait_event_type = 'Lock'`

      const started = Date.now()
      const exit = await Effect.runPromiseExit(
        log.append({ _tag: "StepStarted", sagaId, step: "s1" }, owner).pipe(Effect.timeout("300 millis"))
      )
      const returnedAfter = Date.now() - started
      // The bound fired (the write could not finish behind the lock) and the interruption returned promptly.
      expect(Exit.isFailure(exit) && JSON.stringify(exit.cause)).toContain("TimeoutException")
      expect(returnedAfter).toBeLessThan(2_000)

      // Within ~1 s of the interruption, nothing of the log still waits on the lock on the server.
      let still: Array<Waiting> = await waiting()
      for (let i = 0; i < 20 && still.length > 0; i++) {
        await new Promise((resolve) => setTimeout(resolve, 50))
        still = await waiting()
      }
      expect(
        still.map((r) => ({ state: r.state, wait: r.wait_event_type, query: r.query.slice(0, 40) }))
      ).toEqual([])
    } finally {
      await locker`rollback`
      locker.release()
    }

    // And the given-up write never lands once the lock is gone: only SagaStarted is in the log.
    await new Promise((resolve) => setTimeout(resolve, 200))
    const history = await Effect.runPromise(log.load(sagaId))
    expect(Option.getOrThrow(history).records.map((r: SagaLog.SagaRecord) => r._tag)).toEqual(["SagaStarted"])

    // The log's pool still works: the same append, unhindered, succeeds.
    await Effect.runPromise(log.append({ _tag: "StepStarted", sagaId, step: "s1" }, owner))
    const after = await Effect.runPromise(log.load(sagaId))
    expect(Option.getOrThrow(after).records.map((r) => r._tag)).toEqual(["SagaStarted", "StepStarted"])
  }, 30_000)
})
