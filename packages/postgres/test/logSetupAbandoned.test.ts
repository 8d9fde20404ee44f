/**
 * A coordinator log whose migration waits on a lock held elsewhere, behind the Promise facade
 * (`logSetupTimeout`). Found by a review (2026-12-07, helper 81): an abandoned set-up left its
 * migration statement waiting on the lock on a pool connection, and each fresh set-up queued one
 * more, until the pool had no connection left for anything else. The migration is now cancelled
 * on the server when its set-up is abandoned.
 */
import { Coordinator, type TransactionError } from "@accord/core"
import { describe, expect, it } from "@effect/vitest"
import postgres from "postgres"
import * as PgTransactionLog from "../src/PgTransactionLog.js"
import * as TestDatabase from "../src/TestDatabase.js"
import { usePoolsOnDatabase } from "./support/sagaLog.js"

const server = await TestDatabase.server()
const DB = "accord_t_log_setup_abandoned"
const APP = "accord_t_log_setup"

describe.skipIf(server === undefined)("an abandoned log set-up on PostgreSQL", () => {
  const adminUrl = server?.adminUrl ?? ""
  const { url, pool } = usePoolsOnDatabase(adminUrl, DB, { max: 4, endTimeout: 5 })

  it("cancels its migration, so set-ups retried behind a held lock do not take the whole pool", async () => {
    const admin = pool()
    // The log's migration serialises on this advisory lock: held here, it waits.
    const locker = await pool().reserve()
    await locker.unsafe("begin")
    await locker.unsafe("select pg_advisory_xact_lock(1633907300)") // Migrations' LOCK
    const sql = postgres(url(), { max: 4, onnotice: () => {}, connection: { application_name: APP } })
    const coordinator = new Coordinator.TwoPhaseCoordinator({
      timeout: 300,
      logSetupTimeout: 800,
      log: PgTransactionLog.layer({ sql })
    })
    const waiting = async () =>
      (
        await admin<Array<{ n: number }>>`
          select count(*)::int as n from pg_stat_activity
          where application_name = ${APP} and wait_event_type = 'Lock'`
      )[0]!.n
    try {
      const seen: Array<number> = []
      for (let i = 0; i < 5; i++) {
        const call = await coordinator
          .registerParticipant({
            name: `p${i}`,
            prepare: async () => "prepared" as const,
            commit: async () => undefined,
            rollback: async () => undefined
          })
          .then(
            () => "resolved",
            (e: TransactionError.LogError | Error) => ("_tag" in e ? e._tag : e.message)
          )
        expect(call).toBe("LogError")
        await new Promise((resolve) => setTimeout(resolve, 900))
        seen.push(await waiting())
      }
      // One set-up at a time waits on the lock (the current one); before, 1, 2, 3, 4, 4.
      expect(Math.max(...seen)).toBeLessThanOrEqual(1)
      // And the pool still answers its other users.
      const t0 = Date.now()
      await sql`select 1`
      expect(Date.now() - t0).toBeLessThan(2_000)
    } finally {
      await locker.unsafe("rollback")
      locker.release()
      await coordinator.dispose().catch(() => undefined)
      await sql.end({ timeout: 5 })
    }
  }, 60_000)
})
