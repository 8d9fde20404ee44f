/**
 * Migrations run at every service start (`make` of the participant, the logs, `Barrier.migrate`):
 * on tables that exist they must say nothing. The saga log's and the barrier's printed a
 * multi-line NOTICE object per table and index ("already exists, skipping") through postgres.js's
 * default `onnotice` on every start (found by a review, 2026-12-07).
 */
import { describe, expect, it } from "vitest"
import postgres from "postgres"
import * as Barrier from "../src/Barrier.js"
import * as Migrations from "../src/Migrations.js"
import * as PgSagaLog from "../src/PgSagaLog.js"
import * as TestDatabase from "../src/TestDatabase.js"
import { Effect } from "effect"

const server = await TestDatabase.server()
const DB = "accord_t_migrations_quiet"

describe.skipIf(server === undefined)("migrations on existing tables", () => {
  it("print no notice", async () => {
    const adminUrl = server?.adminUrl ?? ""
    const url = await TestDatabase.createDatabase(adminUrl, DB)
    const notices: Array<unknown> = []
    const sql = postgres(url, { max: 1, onnotice: (n) => notices.push(n.message) })
    try {
      const all = async () => {
        await PgSagaLog.migrate(sql)
        await Barrier.migrate(sql)
        await Effect.runPromise(Migrations.participant(sql))
        await Effect.runPromise(Migrations.log(sql))
      }
      await all()
      notices.length = 0
      await all()
      expect(notices).toEqual([])
      // The setting was for the migration's own transaction only.
      expect((await sql`show client_min_messages`)[0]!.client_min_messages).toBe("notice")
    } finally {
      await sql.end({ timeout: 5 })
      await TestDatabase.dropDatabase(adminUrl, DB)
    }
  })
})
