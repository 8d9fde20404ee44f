/**
 * The transaction-control scanner under `standard_conforming_strings = off`: a backslash then escapes
 * a quote in a plain '...' string, so a COMMIT that the standard reading puts inside a string runs.
 * The session's setting is not known to the scanner (the work, its role, its database or the server
 * may set it), so a text with a backslash is read both ways. Until 2026-12-07 only the standard
 * reading was made: a failed text work whose COMMIT had run was not seen to have ended its
 * transaction.
 */
import { afterAll, beforeAll, describe, expect, it } from "@effect/vitest"
import postgres from "postgres"
import { statementStartingWith } from "../src/internal/client.js"
import { ENDING_STATEMENT } from "../src/internal/pgBranch.js"
import * as TestDatabase from "../src/TestDatabase.js"

const server = await TestDatabase.server()
const DB = "s22_scanner_backslash"

/** Read with backslash escapes: a string `x'`, then a COMMIT. Read as standard: one statement. */
const HIDDEN_COMMIT = "select 'x\\''; commit; select ''"

describe("the scanner and backslash-escaped quotes", () => {
  it("finds the COMMIT that runs when standard_conforming_strings is off", () => {
    expect(statementStartingWith(HIDDEN_COMMIT, ENDING_STATEMENT)).toMatch(/^commit/i)
  })

  it("still finds nothing in texts whose backslashes hide no statement either way", () => {
    expect(statementStartingWith("select 'a\\b'; select E'c\\'d'", ENDING_STATEMENT)).toBeUndefined()
    expect(statementStartingWith("select '\\'; select 1", ENDING_STATEMENT)).toBeUndefined()
    expect(statementStartingWith("insert into t values ('C:\\dir')", ENDING_STATEMENT)).toBeUndefined()
  })

  it("keeps the standard reading's finds (a needless No at worst)", () => {
    // Standard: a string `a\`, then a COMMIT; with backslash escapes the COMMIT is inside a string.
    expect(statementStartingWith("select 'a\\'; commit; select '", ENDING_STATEMENT)).toMatch(/^commit/i)
  })
})

describe.skipIf(server === undefined)(
  "the scanner and standard_conforming_strings = off, on PostgreSQL",
  () => {
    const adminUrl = server?.adminUrl ?? ""
    let sql: postgres.Sql
    beforeAll(async () => {
      const url = await TestDatabase.createDatabase(adminUrl, DB)
      sql = postgres(url, { max: 1, onnotice: () => {} })
      await sql.unsafe("create table t (id int)")
    }, 60_000)
    afterAll(async () => {
      await sql?.end({ timeout: 5 })
      await TestDatabase.dropDatabase(adminUrl, DB)
    }, 60_000)

    it("the server runs the COMMIT the scanner now finds", async () => {
      const conn = await sql.reserve()
      try {
        await conn.unsafe("set standard_conforming_strings = off")
        await conn.unsafe("begin")
        await conn.unsafe("insert into t values (1)")
        await conn.unsafe(HIDDEN_COMMIT)
        // A SAVEPOINT outside a transaction fails (25P01): the text ended it.
        const ended = await conn.unsafe("savepoint s22_probe").then(
          () => false,
          () => true
        )
        if (!ended) await conn.unsafe("rollback")
        expect(ended).toBe(true)
        expect((await conn.unsafe("select count(*)::int as n from t"))[0]!.n).toBe(1)
      } finally {
        await conn.unsafe("reset standard_conforming_strings")
        conn.release()
      }
    })
  }
)
