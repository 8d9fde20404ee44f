/**
 * Which saga records are forced. Found by a review (2026-12-07, helper 78): `StepFailed`,
 * `CompensationStarted` and `CompensationCompleted` were written with `synchronous_commit = off`,
 * with no forced record between the decision to go backwards and `SagaEnded`. A crash of the log's
 * database then lost them after a compensation had acted: the resumed saga saw the failed step as
 * in doubt, ran it again, went forward and ended Completed with its reservation released.
 * `CompensationStarted` is now forced before each compensation acts (and, the WAL being
 * sequential, the `StepFailed` before it with it).
 */
import { SagaLog } from "@accord/core"
import { describe, expect, it } from "@effect/vitest"
import { Duration, Effect } from "effect"
import postgres from "postgres"
import * as PgSagaLog from "../src/PgSagaLog.js"
import * as TestDatabase from "../src/TestDatabase.js"
import { usePoolsOnDatabase } from "./support/sagaLog.js"

const server = await TestDatabase.server()
const DB = "accord_t_saga_log_forced"

describe.skipIf(server === undefined)("saga records forced on PostgreSQL", () => {
  const adminUrl = server?.adminUrl ?? ""
  const { url, pool } = usePoolsOnDatabase(adminUrl, DB, { max: 4, endTimeout: 5 })

  /** WAL flushes so far, read after the writing connection closed (its statistics then reach pg_stat_wal). */
  const syncs = (reader: postgres.Sql) =>
    Effect.promise(async () => {
      await new Promise((resolve) => setTimeout(resolve, 200))
      await reader`select pg_stat_force_next_flush()`
      const [row] = await reader<{ n: number }[]>`select wal_sync::float8 as n from pg_stat_wal`
      return row!.n
    })

  /** WAL flushes while `n` sagas each append `record(sagaId)` on a pool whose sessions run unforced. */
  const flushesFor = (label: string, n: number, record: (sagaId: string) => SagaLog.SagaRecord) =>
    Effect.gen(function* () {
      const reader = pool()
      const setup = yield* PgSagaLog.make(reader)
      for (let i = 0; i < n; i++) {
        const sagaId = `${label}-${i}`
        yield* setup.start(SagaLog.SagaRecord.SagaStarted({ sagaId, sagaType: "forced", input: null }), {
          owner: sagaId,
          leaseFor: Duration.seconds(30)
        })
      }
      const relaxed = postgres(url(), {
        max: 1,
        onnotice: () => {},
        connection: { synchronous_commit: "off" }
      })
      const log = yield* PgSagaLog.make(relaxed)
      const before = yield* syncs(reader)
      for (let i = 0; i < n; i++) {
        const sagaId = `${label}-${i}`
        yield* log.append(record(sagaId), sagaId)
      }
      yield* Effect.promise(() => relaxed.end({ timeout: 5 }))
      return (yield* syncs(reader)) - before
    })

  it.live("CompensationStarted is forced before the compensation acts", () =>
    Effect.gen(function* () {
      const n = 20
      const flushes = yield* flushesFor("comp", n, (sagaId) =>
        SagaLog.SagaRecord.CompensationStarted({ sagaId, step: "reserve" })
      )
      // One WAL flush per forced record (other sessions' flushes only add); unforced, twenty
      // appends in a few milliseconds were flushed by the WAL writer in one or two syncs.
      expect(flushes).toBeGreaterThanOrEqual(n)
    })
  )
})
