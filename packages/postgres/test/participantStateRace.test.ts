/**
 * `PgParticipant.state` asked while the branch's `COMMIT PREPARED` runs on another connection. It
 * read `pg_prepared_xacts` and the marker in one statement: the statement's snapshot came first and
 * `pg_prepared_xacts` was read live after it, so a commit ending in between read as neither
 * prepared nor committed: "aborted" for a committed branch (a review measured 882 in 6,000). It must
 * answer "prepared" or "committed", never "aborted".
 */
import { Effect } from "effect"
import postgres from "postgres"
import { afterAll, beforeAll, describe, expect, it } from "vitest"
import * as PgParticipant from "../src/PgParticipant.js"
import * as TestDatabase from "../src/TestDatabase.js"
import { ctxFor } from "./support/pg2pc.js"

const server = await TestDatabase.server()
const DB = "accord_t_state_race"

describe.skipIf(server === undefined)("PgParticipant.state during COMMIT PREPARED", () => {
  const adminUrl = server?.adminUrl ?? ""
  let sql: postgres.Sql
  let committer: postgres.Sql

  beforeAll(async () => {
    const url = await TestDatabase.createDatabase(adminUrl, DB)
    sql = postgres(url, { max: 4, onnotice: () => {} })
    committer = postgres(url, { max: 1, onnotice: () => {} })
    await sql`create table items (id int primary key)`
  }, 60_000)

  afterAll(async () => {
    await sql?.end({ timeout: 5 })
    await committer?.end({ timeout: 5 })
    await TestDatabase.rollbackPrepared(adminUrl, DB)
    await TestDatabase.dropDatabase(adminUrl, DB)
  }, 60_000)

  it("answers prepared or committed, never aborted, for a branch being committed", async () => {
    const p = await Effect.runPromise(PgParticipant.make({ name: "items", sql }))
    const answers = { prepared: 0, committed: 0, aborted: 0 }
    for (let i = 0; i < 800; i++) {
      const ctx = await Effect.runPromise(ctxFor("items"))
      const vote = await Effect.runPromise(
        p.prepare(ctx, (s) => s.query("insert into items (id) values ($1)", [i]))
      )
      expect(vote._tag).toBe("Prepared")
      // Accord's gid (checked by prepare), committed by hand on another connection.
      const commit = committer.unsafe(`commit prepared '${ctx.gid}'`).execute()
      // Asked at a different point of the commit each time.
      for (let k = 0; k < i % 4; k++) await new Promise((resolve) => setImmediate(resolve))
      const state = await Effect.runPromise(p.state(ctx))
      await commit
      answers[state as keyof typeof answers]++
    }
    expect(answers.aborted).toBe(0)
    expect(answers.prepared + answers.committed).toBe(800)
    expect((await sql`select count(*)::int as n from items`)[0]!["n"]).toBe(800)
  }, 120_000)
})
