/**
 * With --json the summary table (invariants included) goes to stderr and the JSON line alone to
 * stdout, as the bank demo does: without a terminal nothing but the JSON line was printed, though
 * the docs said the invariants are printed. --db-prefix names the server's databases (they were
 * fixed: two runs on one server shared them). Found by a review, 2026-12-07.
 */
import { execFile } from "node:child_process"
import { mkdtempSync, rmSync } from "node:fs"
import { tmpdir } from "node:os"
import { join } from "node:path"
import postgres from "postgres"
import { describe, expect, it } from "vitest"
import * as Cli from "../src/Cli.js"
import { serviceNames } from "../src/Config.js"

const main = join(import.meta.dirname, "..", "dist", "main.js")
const pgUrl = process.env.ACCORD_PG_URL

const run = (args: ReadonlyArray<string>) =>
  new Promise<{ code: number | null; stdout: string; stderr: string }>((resolve) => {
    execFile(
      process.execPath,
      [main, ...args],
      { env: { ...process.env, ACCORD_PG_URL: "" }, timeout: 240_000 },
      (error, stdout, stderr) =>
        resolve({ code: error === null ? 0 : ((error as { code?: number }).code ?? null), stdout, stderr })
    )
  })

describe("--db-prefix", () => {
  const url = "postgres://postgres@127.0.0.1:5432/postgres"
  it("names the databases on the server", () => {
    expect(Cli.parse(["--pg", url, "--db-prefix", "my_saga_"], {})?.dbPrefix).toBe("my_saga_")
    expect(Cli.parse(["--pg", url], {})?.dbPrefix).toBe("accord_order_")
  })

  it("refuses a prefix that is not a plain lower-case name, or one without a server", () => {
    expect(() => Cli.parse(["--pg", url, "--db-prefix", "My-Saga"], {})).toThrow(/--db-prefix must match/)
    expect(() => Cli.parse(["--db-prefix", "my_"], {})).toThrow(/needs --pg/)
  })
})

describe("--json without a terminal", () => {
  it(
    "prints the summary table with the invariants on stderr, the JSON line alone on stdout",
    { timeout: 240_000 },
    async () => {
      const dataDir = mkdtempSync(join(tmpdir(), "accord-saga-json-"))
      try {
        const r = await run(["--data-dir", dataDir, "--orders", "3", "--json", "--slow-rate", "0"])
        expect(r.code).toBe(0)
        const out = r.stdout.trim().split("\n")
        expect(out).toHaveLength(1)
        expect(JSON.parse(out[0]!).invariantsHold).toBe(true)
        expect(r.stderr).toContain("=> invariants hold")
      } finally {
        rmSync(dataDir, { recursive: true, force: true })
      }
    }
  )
})

describe.skipIf(pgUrl === undefined)("--db-prefix on a server", () => {
  it("creates and uses the databases of its prefix", { timeout: 240_000 }, async () => {
    const prefix = `accord_t_sagapfx_${process.pid}_`
    const admin = postgres(pgUrl!, { max: 1, onnotice: () => {} })
    try {
      const r = await run([
        "--pg",
        pgUrl!,
        "--db-prefix",
        prefix,
        "--orders",
        "3",
        "--json",
        "--slow-rate",
        "0"
      ])
      expect(r.code).toBe(0)
      const rows = await admin<Array<{ datname: string }>>`
        SELECT datname FROM pg_database WHERE starts_with(datname, ${prefix}) ORDER BY datname`
      expect(rows.map((row) => row.datname)).toEqual(
        [...serviceNames, "saga"].map((name) => `${prefix}${name}`).sort()
      )
    } finally {
      for (const name of [...serviceNames, "saga"])
        await admin.unsafe(`DROP DATABASE IF EXISTS "${prefix}${name}" WITH (FORCE)`).catch(() => {})
      await admin.end({ timeout: 2 })
    }
  })
})
