/**
 * The `torture` command line refuses what it cannot run at once, with one line and exit code 2,
 * and a run that fails part-way leaves nothing behind (found by a review, 2026-12-07):
 * - `--cycles abc` ran 0 cycles ("INCONCLUSIVE"), `--seed abc` reported seed null;
 * - an unreachable server or a wrong login was retried for 120 s before failing;
 * - a failing server restart (`--cluster 99/nonexistent`) exited 2 leaving prepared transactions,
 *   its databases and its journal.
 */
import { execFile } from "node:child_process"
import { chmodSync, mkdtempSync, readdirSync, rmSync, writeFileSync } from "node:fs"
import { tmpdir } from "node:os"
import { join } from "node:path"
import { fileURLToPath } from "node:url"
import postgres from "postgres"
import { afterAll, describe, expect, it } from "vitest"

const pgUrl = process.env.ACCORD_PG_URL
const tortureBin = fileURLToPath(new URL("../dist/bin/torture.js", import.meta.url))

interface Exit {
  readonly code: number
  readonly stdout: string
  readonly stderr: string
  readonly millis: number
}

const run = (args: ReadonlyArray<string>, env: NodeJS.ProcessEnv = process.env): Promise<Exit> => {
  const started = performance.now()
  return new Promise((resolve) => {
    execFile(process.execPath, [tortureBin, ...args], { env, timeout: 170_000 }, (error, stdout, stderr) => {
      resolve({
        code: error === null ? 0 : typeof error.code === "number" ? error.code : -1,
        stdout,
        stderr,
        millis: performance.now() - started
      })
    })
  })
}

const expectRefused = (exit: Exit, message: string | RegExp) => {
  expect(exit.code).toBe(2)
  expect(exit.stdout).toBe("")
  expect(exit.stderr.trim().split("\n")).toHaveLength(1)
  expect(exit.stderr).toMatch(message)
}

describe("torture's command line", () => {
  for (const [flag, value, min] of [
    ["cycles", "abc", 1],
    ["cycles", "0", 1],
    ["transfers", "abc", 1],
    ["concurrency", "1.5", 1],
    ["accounts", "-3", 2],
    ["accounts", "1", 2],
    ["seed", "abc", 0]
  ] as const) {
    it(`refuses --${flag} ${value} with one line and exit code 2`, async () => {
      const exit = await run(["--pg", "postgres://nobody@127.0.0.1:1/postgres", `--${flag}=${value}`])
      expectRefused(exit, `--${flag} takes a whole number of at least ${min}, not "${value}"`)
    })
  }

  it("fails at once when the server refuses connections", { timeout: 60_000 }, async () => {
    const exit = await run(["--pg", "postgres://postgres@127.0.0.1:1/postgres", "--no-server-restarts"])
    expectRefused(exit, /cannot connect to PostgreSQL/)
    expect(exit.millis).toBeLessThan(20_000)
  })
})

describe.skipIf(pgUrl === undefined)("torture against a server", () => {
  const prefix = `fixer_torture_${process.pid}_`
  const admin = postgres(pgUrl ?? "", { max: 1, onnotice: () => {} })
  const ours = async () => {
    const dbs = await admin<Array<{ datname: string }>>`
      SELECT datname FROM pg_database WHERE datname LIKE ${`${prefix}%`}`
    const prepared = await admin<Array<{ gid: string }>>`
      SELECT gid FROM pg_prepared_xacts WHERE database LIKE ${`${prefix}%`}`
    return { databases: dbs.length, prepared: prepared.length }
  }
  afterAll(async () => {
    for (const db of ["bank_a", "bank_b", "coordinator"]) {
      const sql = postgres(new URL(`/${prefix}${db}`, pgUrl).toString(), { max: 1, onnotice: () => {} })
      await sql`SELECT gid FROM pg_prepared_xacts WHERE database = current_database()`
        .then((rows) =>
          Promise.all(
            rows.map((r) => sql.unsafe(`ROLLBACK PREPARED '${String(r.gid).replaceAll("'", "''")}'`))
          )
        )
        .catch(() => {})
      await sql.end({ timeout: 2 })
      await admin.unsafe(`DROP DATABASE IF EXISTS "${prefix}${db}" WITH (FORCE)`).catch(() => {})
    }
    await admin.end({ timeout: 2 })
  })

  it("fails at once on a login the server refuses", { timeout: 60_000 }, async () => {
    const url = new URL(pgUrl!)
    url.username = "no_such_role_accord"
    const exit = await run(["--pg", url.toString(), "--no-server-restarts"])
    expectRefused(exit, /cannot connect to PostgreSQL/)
    expect(exit.millis).toBeLessThan(20_000)
  })

  it("refuses a cluster it cannot restart before touching the server", { timeout: 60_000 }, async () => {
    const exit = await run([
      "--pg",
      pgUrl!,
      "--cluster",
      "99/nonexistent",
      "--cycles",
      "2",
      "--db-prefix",
      prefix
    ])
    expectRefused(exit, /99\/nonexistent/)
    expect(await ours()).toEqual({ databases: 0, prepared: 0 })
  })

  it(
    "leaves no prepared transaction, database or journal when a restart fails mid-run",
    { timeout: 170_000 },
    async () => {
      // A pg_ctlcluster that knows the cluster but fails to restart it.
      const bin = mkdtempSync(join(tmpdir(), "accord-fake-pgctl-"))
      const fake = join(bin, "pg_ctlcluster")
      writeFileSync(
        fake,
        '#!/bin/sh\n[ "$4" = status ] && exit 0\necho "restart refused by the test" >&2\nexit 1\n'
      )
      chmodSync(fake, 0o755)
      const journals = () => readdirSync(tmpdir()).filter((f) => f.startsWith("accord-torture-"))
      const journalsBefore = journals()
      try {
        const exit = await run(
          ["--pg", pgUrl!, "--cycles", "2", "--transfers", "3000", "--seed", "7", "--db-prefix", prefix],
          { ...process.env, PATH: `${bin}:${process.env.PATH ?? ""}` }
        )
        expect(exit.code).toBe(2)
        expect(exit.stderr).toContain("restart refused by the test")
        expect(await ours()).toEqual({ databases: 0, prepared: 0 })
        expect(journals().filter((f) => !journalsBefore.includes(f))).toEqual([])
      } finally {
        rmSync(bin, { recursive: true, force: true })
      }
    }
  )
})
