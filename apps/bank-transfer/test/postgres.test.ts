import { existsSync, mkdtempSync, readFileSync, rmSync } from "node:fs"
import { tmpdir } from "node:os"
import { join } from "node:path"
import { TestDatabase } from "@accord/postgres"
import postgres from "postgres"
import { afterAll, beforeAll, describe, expect, it, vi } from "vitest"
import { run, start, summaryOf } from "./support.js"

const server = await TestDatabase.server()
const prefix = "accord_t_bank_"
const names = [`${prefix}bank_a`, `${prefix}bank_b`, `${prefix}coordinator`]
// Prefixes of runs that must be refused before creating anything (dropped in case they were not).
const refusedNames = ["accord_t_bankcfg_", "accord_t_bankjrn_"].flatMap((p) => [
  `${p}bank_a`,
  `${p}bank_b`,
  `${p}coordinator`
])
const dir = mkdtempSync(join(tmpdir(), "accord-t-bank-pg-"))

const oneLineOf = (stderr: string) => stderr.trim().split("\n")

const dropAll = async () => {
  if (server === undefined) return
  for (const name of [...names, ...refusedNames]) await TestDatabase.dropDatabase(server.adminUrl, name)
}

describe.skipIf(server === undefined)("bank transfer on real PostgreSQL", () => {
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
  afterAll(async () => {
    await dropAll()
    rmSync(dir, { recursive: true, force: true })
  })

  const databasesNamed = async (namePrefix: string) => {
    const sql = postgres(adminUrl, { max: 1, onnotice: () => {} })
    try {
      const rows = await sql<
        { datname: string }[]
      >`SELECT datname FROM pg_database WHERE starts_with(datname, ${namePrefix})`
      return rows.map((r) => r.datname)
    } finally {
      await sql.end({ timeout: 5 })
    }
  }

  it("refuses a --concurrency whose prepared branches exceed max_prepared_transactions, before creating anything", async () => {
    const sql = postgres(adminUrl, { max: 1, onnotice: () => {} })
    const [row] = await sql<
      { n: number }[]
    >`SELECT current_setting('max_prepared_transactions')::int AS n`.finally(() => sql.end({ timeout: 5 }))
    // Both banks live on this server: a run holds up to two prepared branches per transfer in flight.
    const tooMany = Math.floor(row!.n / 2) + 1
    const unusedPrefix = "accord_t_bankcfg_"
    const r = await run([
      "--pg",
      adminUrl,
      "--db-prefix",
      unusedPrefix,
      "--concurrency",
      String(tooMany),
      "--json"
    ])
    expect(r.code).toBe(1)
    expect(oneLineOf(r.stderr)).toEqual([
      expect.stringMatching(/--concurrency .*max_prepared_transactions = \d+.*--concurrency \d+ or/)
    ])
    expect(r.stdout).toBe("")
    expect(await databasesNamed(unusedPrefix)).toEqual([])
  }, 60_000)

  it("refuses a --journal it cannot write, before creating anything", async () => {
    const unusedPrefix = "accord_t_bankjrn_"
    const r = await run([
      "--pg",
      adminUrl,
      "--db-prefix",
      unusedPrefix,
      "--journal",
      join(dir, "missing-folder", "journal.jsonl"),
      "--json"
    ])
    expect(r.code).toBe(1)
    expect(oneLineOf(r.stderr)).toEqual([expect.stringMatching(/--journal .*missing-folder.*ENOENT/)])
    expect(r.stdout).toBe("")
    expect(await databasesNamed(unusedPrefix)).toEqual([])
  }, 60_000)

  it("creates its databases, conserves the total, leaves nothing prepared, and shows aborts", async () => {
    const r = await run(args("--fresh", "--transfers", "400", "--concurrency", "8", "--accounts", "100"))
    expect(r.code, r.stderr).toBe(0)
    const s = summaryOf(r)
    expect(s.backend).toBe("postgres")
    expect(s.committed + s.aborted + s.commitPending).toBe(400)
    expect(s.committed).toBeGreaterThan(0)
    expect(s.abortReasons.insufficientFunds).toBeGreaterThan(0)
    expect(s.total).toBe(s.expectedTotal)
    expect(s.expectedTotal).toBe(2 * 100 * 1000)
    expect(s.preparedLeft).toBe(0)
    expect(s.halfApplied).toBe(0)
    expect(s.ledgerMismatches).toBe(0)
  }, 120_000)

  it.each([
    "2pc",
    "3pc"
  ])("a %s run killed with SIGKILL is finished by the next: total conserved, nothing prepared, outcomes told hold", async (protocol) => {
    const journal = join(dir, `journal-${protocol}.jsonl`)
    const { child, done } = start(
      args("--transfers", "1000000", "--concurrency", "16", "--protocol", protocol, "--journal", journal)
    )
    // Kill it once it is well into the run.
    await vi.waitFor(
      () => {
        const outcomes = existsSync(journal)
          ? readFileSync(journal, "utf8").split('"event":"outcome"').length - 1
          : 0
        if (outcomes < 300) throw new Error(`only ${outcomes} outcomes so far`)
      },
      { timeout: 60_000, interval: 50 }
    )
    child.kill("SIGKILL")
    const killed = await done
    expect(killed.signal).toBe("SIGKILL")

    // Recovery runs whatever protocol the next run names: both passes run every time.
    const r = await run(args("--transfers", "0"))
    expect(r.code, r.stderr).toBe(0)
    const s = summaryOf(r)
    expect(s.total).toBe(s.expectedTotal)
    expect(s.preparedLeft).toBe(0)
    expect(s.halfApplied).toBe(0)
    expect(s.ledgerMismatches).toBe(0)

    // Every outcome the killed run told holds in the databases, exactly once.
    const lines = readFileSync(journal, "utf8")
      .split("\n")
      .filter((l) => l.startsWith("{"))
      .map((l) => JSON.parse(l) as { event: string; txId: string; outcome?: string })
    const told = lines.filter((l) => l.event === "outcome")
    const intents = new Set(lines.filter((l) => l.event === "intent").map((l) => l.txId))
    for (const t of told) expect(intents.has(t.txId)).toBe(true)
    for (const name of [names[0]!, names[1]!]) {
      const sql = postgres(TestDatabase.urlFor(adminUrl, name), { max: 1, onnotice: () => {} })
      try {
        const rows = await sql<{ tx_id: string }[]>`SELECT tx_id FROM ledger`
        const applied = new Set(rows.map((x) => x.tx_id))
        for (const t of told) {
          if (t.outcome === "Committed" || t.outcome === "CommitPending")
            expect(applied.has(t.txId), t.txId).toBe(true)
          if (t.outcome === "Aborted") expect(applied.has(t.txId), t.txId).toBe(false)
        }
      } finally {
        await sql.end({ timeout: 5 })
      }
    }
    const left = await TestDatabase.preparedOnServer(adminUrl)
    expect(left.filter((p) => names.includes(p.database))).toEqual([])
  }, 180_000)

  it("a seed interrupted between the banks (A re-seeded, B old) is seeded again by the next run", async () => {
    const first = await run(args("--fresh", "--transfers", "50", "--concurrency", "4", "--accounts", "100"))
    expect(first.code, first.stderr).toBe(0)
    expect(summaryOf(first).seeded).toBe(true)
    // What a run killed after seeding bank A and before seeding bank B leaves: bank B holds the old
    // dataset, with the credit of a transfer whose debit was in the old bank A; bank A holds a new
    // dataset (its own seed, its own seed id), and no longer that debit.
    const sqlA = postgres(TestDatabase.urlFor(adminUrl, names[0]!), { max: 1, onnotice: () => {} })
    const sqlB = postgres(TestDatabase.urlFor(adminUrl, names[1]!), { max: 1, onnotice: () => {} })
    try {
      await sqlB.begin(async (tx) => {
        await tx`UPDATE accounts SET balance = balance + 777 WHERE id = 1`
        await tx`INSERT INTO ledger (tx_id, account, delta) VALUES ('half-seed-credit', 1, 777)`
      })
      await sqlA.begin(async (tx) => {
        await tx`DELETE FROM ledger`
        await tx`UPDATE accounts SET balance = 1000`
        await tx`UPDATE bank_meta SET value = 'a-newer-seed' WHERE key = 'seed_id'`
        await tx`INSERT INTO bank_meta (key, value) VALUES ('seed_id', 'a-newer-seed') ON CONFLICT DO NOTHING`
      })
    } finally {
      await sqlA.end({ timeout: 5 })
      await sqlB.end({ timeout: 5 })
    }
    const r = await run(args("--transfers", "20", "--concurrency", "4"))
    expect(r.code, r.stderr).toBe(0)
    const s = summaryOf(r)
    expect(s.seeded).toBe(true)
    expect(s.total).toBe(s.expectedTotal)
    expect(s.halfApplied).toBe(0)
    expect(s.ledgerMismatches).toBe(0)
    // And the dataset the re-seed wrote is reused as one by the run after.
    const again = await run(args("--transfers", "0"))
    expect(again.code, again.stderr).toBe(0)
    expect(summaryOf(again).seeded).toBe(false)
  }, 120_000)
})
