/**
 * The two back-ends the saga-log and barrier suites run on: real PostgreSQL (postgres.js), in a
 * throw-away database, when a server is found; and an in-memory PGlite, always.
 */
import { PGlite } from "@electric-sql/pglite"
import { afterAll, beforeAll, describe, it } from "@effect/vitest"
import postgres from "postgres"
import * as TestDatabase from "../../src/TestDatabase.js"

/** An open connection of a suite and how to let it go (and drop what it created). */
export interface Backend {
  readonly conn: postgres.Sql | PGlite
  readonly close: () => Promise<void>
}

/**
 * Declares `suite` on PostgreSQL, in a fresh database `db` reached through a pool of `max`
 * connections and dropped on close (or, without a server, a skipped `describe` named `skipped`), then
 * on PGlite.
 */
export const onPostgresAndPGlite = (
  server: TestDatabase.TestServer | undefined,
  options: { readonly db: string; readonly max: number; readonly skipped: string },
  suite: (label: string, open: () => Promise<Backend>) => void
): void => {
  if (server === undefined) {
    describe.skip(options.skipped, () => {
      it("skipped", () => {})
    })
  } else {
    const adminUrl = server.adminUrl
    suite("PostgreSQL", async () => {
      const url = await TestDatabase.createDatabase(adminUrl, options.db)
      const sql = postgres(url, { max: options.max, onnotice: () => {} })
      return {
        conn: sql,
        close: async () => {
          await sql.end({ timeout: 5 })
          await TestDatabase.dropDatabase(adminUrl, options.db)
        }
      }
    })
  }

  suite("PGlite", async () => {
    const db = await PGlite.create()
    return { conn: db, close: () => db.close() }
  })
}

/**
 * Opens the back-end before the tests of the enclosing `describe` and closes it after them; the
 * returned function gives its connection (inside a test).
 */
export const useBackend = (open: () => Promise<Backend>): (() => Backend["conn"]) => {
  let backend: Backend | undefined
  beforeAll(async () => {
    backend = await open()
  }, 60_000)
  afterAll(async () => {
    await backend?.close()
  }, 60_000)
  return () => {
    if (backend === undefined) throw new Error("the back-end is open only inside the suite's tests")
    return backend.conn
  }
}
