/**
 * Two demo runs on the same databases: the one that finishes first reports its own invariants
 * only. It used to fail them falsely, counting the other run's in-flight prepared branches as
 * "prepared left" and reading bank A and bank B at different moments while the other run
 * committed between the reads (found by a review, 2026-12-07).
 */
import { TestDatabase } from "@accord/postgres"
import postgres from "postgres"
import { afterAll, describe, expect, it } from "vitest"
import { run, start, summaryOf } from "./support.js"

const server = await TestDatabase.server()
const prefix = `accord_t_bankconc_${process.pid}_`
const names = [`${prefix}bank_a`, `${prefix}bank_b`, `${prefix}coordinator`]

describe.skipIf(server === undefined)("two bank demos on the same databases", () => {
  const adminUrl = server?.adminUrl ?? ""
  const args = (...rest: ReadonlyArray<string>) => [
    "--pg",
    adminUrl,
    "--db-prefix",
    prefix,
    "--json",
    ...rest
  ]

  afterAll(async () => {
    for (const name of names) {
      const sql = postgres(TestDatabase.urlFor(adminUrl, name), { max: 1, onnotice: () => {} })
      await sql`SELECT gid FROM pg_prepared_xacts WHERE database = current_database()`
        .then((rows) =>
          Promise.all(
            rows.map((r) => sql.unsafe(`ROLLBACK PREPARED '${String(r.gid).replaceAll("'", "''")}'`))
          )
        )
        .catch(() => {})
      await sql.end({ timeout: 2 })
      await TestDatabase.dropDatabase(adminUrl, name)
    }
  })

  it("the run that finishes first counts only what it is responsible for", { timeout: 300_000 }, async () => {
    const seeded = await run(args("--fresh", "--transfers", "0"))
    expect(seeded.code).toBe(0)
    // The other run: still transferring when the short runs below finish.
    const long = start(args("--transfers", "100000", "--concurrency", "16"))
    try {
      await new Promise((resolve) => setTimeout(resolve, 4000))
      for (let i = 0; i < 3; i++) {
        const short = await run(args("--transfers", "100", "--concurrency", "8"))
        const summary = summaryOf(short)
        expect({
          ok: summary.ok,
          preparedLeft: summary.preparedLeft,
          halfApplied: summary.halfApplied,
          total: summary.total
        }).toEqual({ ok: true, preparedLeft: 0, halfApplied: 0, total: summary.expectedTotal })
        expect(short.code).toBe(0)
      }
    } finally {
      long.child.kill("SIGKILL")
      await long.done
    }
    // What the killed run left in doubt is finished by the next run, which then checks everything.
    const after = summaryOf(await run(args("--transfers", "0")))
    expect(after.ok).toBe(true)
    expect(after.preparedLeft).toBe(0)
  })
})
