import { TestDatabase } from "@accord/postgres"
import postgres from "postgres"
import { afterAll, beforeAll, describe, expect, it } from "vitest"
import { run, summaryOf } from "./support.js"

const server = await TestDatabase.server()
const prefix = "s22_bt_prep_"
const names = [`${prefix}bank_a`, `${prefix}bank_b`, `${prefix}coordinator`]
// Prepared by hand in the bank databases: not an Accord gid; an Accord gid of another deployment
// (another namespace); and one of the demo's own (bank A's participant, no namespace), an orphan.
const byHand = "s22_bt_by_hand"
const otherDeployment = "accord-s22other_01KAAAAAAAAAAAAAAAAAAAAAAA_bank-b"
const demoOrphan = "accord_01KBBBBBBBBBBBBBBBBBBBBBBB_bank-a"
// A decision of another deployment sharing the coordinator log under the same participant names.
const loggedForeign = "accord-s22other_01KCCCCCCCCCCCCCCCCCCCCCCC_bank-a"

const prepare = async (url: string, gid: string) => {
  const sql = postgres(url, { max: 1, onnotice: () => {} })
  try {
    await sql.begin(async (tx) => {
      await tx`SELECT 1`
      await tx.prepare(gid)
    })
  } finally {
    await sql.end({ timeout: 5 })
  }
}

/** Rolls back whatever of this file's gids is still prepared. */
const rollBackOurs = async (adminUrl: string) => {
  for (const p of await TestDatabase.preparedOnServer(adminUrl)) {
    if (!names.includes(p.database)) continue
    const sql = postgres(TestDatabase.urlFor(adminUrl, p.database), { max: 1, onnotice: () => {} })
    try {
      await sql.unsafe(`ROLLBACK PREPARED '${p.gid.replace(/'/g, "''")}'`)
    } finally {
      await sql.end({ timeout: 5 })
    }
  }
}

const dropAll = async () => {
  if (server === undefined) return
  await rollBackOurs(server.adminUrl)
  for (const name of names) await TestDatabase.dropDatabase(server.adminUrl, name)
}

describe.skipIf(server === undefined)("transactions left prepared that are not the demo's", () => {
  const adminUrl = server?.adminUrl ?? ""
  const args = (...rest: ReadonlyArray<string>) => [
    "--pg",
    adminUrl,
    "--db-prefix",
    prefix,
    "--json",
    ...rest
  ]

  beforeAll(dropAll)
  afterAll(dropAll)

  it("are named with whose they are and what to do, in the table and the JSON; the demo's own orphan is rolled back", async () => {
    const first = await run(args("--fresh", "--transfers", "20", "--concurrency", "2", "--accounts", "50"))
    expect(first.code, first.stderr).toBe(0)
    const s0 = summaryOf(first)
    expect(s0.preparedLeft).toBe(0)
    expect(s0.preparedLeftGids).toEqual([])

    await prepare(TestDatabase.urlFor(adminUrl, names[0]!), byHand)
    await prepare(TestDatabase.urlFor(adminUrl, names[1]!), otherDeployment)
    await prepare(TestDatabase.urlFor(adminUrl, names[0]!), demoOrphan)
    const log = postgres(TestDatabase.urlFor(adminUrl, names[2]!), { max: 1, onnotice: () => {} })
    try {
      await log`INSERT INTO accord_decision (tx_id, decision, branches, decided_at)
                VALUES ('01KCCCCCCCCCCCCCCCCCCCCCCC', 'commit',
                        ${JSON.stringify([{ branch: "bank-a", gid: loggedForeign }])}::text::jsonb, now())`
    } finally {
      await log.end({ timeout: 5 })
    }

    const r = await run(args("--transfers", "0"))
    // Something is left prepared: an invariant does not hold.
    expect(r.code, r.stderr).toBe(3)
    const s = summaryOf(r)
    expect(s.ok).toBe(false)
    expect(s.total).toBe(s.expectedTotal)
    expect(s.preparedLeft).toBe(2)
    expect(s.preparedLeftGids).toEqual([
      { bank: "a", gid: byHand, owner: "other" },
      { bank: "b", gid: otherDeployment, owner: "accord" }
    ])
    // The demo's own orphan was presumed aborted: found prepared, rolled back.
    expect(s.recovery.atStart.branchesRolledBack).toBeGreaterThanOrEqual(1)
    expect(s.recovery.atStart.foreign).toEqual([
      { participant: "bank-a", count: 1, prepared: 0, gids: [loggedForeign] }
    ])
    // The table (stderr with --json) names them, whose they are, and what to do.
    const row = r.stderr.split("\n").find((l) => l.trim().startsWith("prepared left")) ?? ""
    expect(row).toContain(`bank A '${byHand}' (not Accord's)`)
    expect(row).toContain(`bank B '${otherDeployment}' (another Accord deployment's)`)
    expect(row).toMatch(/2 not the demo's.*resolve each by hand.*COMMIT PREPARED.*ROLLBACK PREPARED/)
    expect(r.stderr).toMatch(/recovery at start .*rolled back or found not prepared/)
    expect(r.stderr).toContain(`left alone, another deployment's: bank-a 1 ('${loggedForeign}')`)

    // Resolved by hand, as the table says: the next run holds every invariant.
    await rollBackOurs(adminUrl)
    const after = await run(args("--transfers", "0"))
    expect(after.code, after.stderr).toBe(0)
    const s2 = summaryOf(after)
    expect(s2.preparedLeft).toBe(0)
    expect(s2.preparedLeftGids).toEqual([])
    const left = await TestDatabase.preparedOnServer(adminUrl)
    expect(left.filter((p) => names.includes(p.database))).toEqual([])
  }, 180_000)
})
