import { execFile, execFileSync } from "node:child_process"
import { fileURLToPath } from "node:url"
import { describe, expect, it } from "vitest"

const pgUrl = process.env.ACCORD_PG_URL
const required = process.env.ACCORD_REQUIRE_PG === "1"
const tortureBin = fileURLToPath(new URL("../dist/bin/torture.js", import.meta.url))
const canRestartServer = (() => {
  try {
    execFileSync("pg_ctlcluster", ["--help"], { stdio: "ignore" })
    return true
  } catch {
    return false
  }
})()

if (pgUrl === undefined) {
  const reason = "torture.test.ts needs a server (no ACCORD_PG_URL)"
  if (required) throw new Error(`${reason}, and ACCORD_REQUIRE_PG=1`)
  const line = "!".repeat(78)
  console.warn(
    `\n${line}\n  REAL-POSTGRESQL TESTS SKIPPED: ${reason}\n  Set ACCORD_PG_URL=postgres://postgres@127.0.0.1:5432/postgres to run them.\n${line}\n`
  )
}

interface TortureSummary {
  readonly cycles: number
  readonly transfers: number
  readonly committed: number
  readonly violations: number
  readonly violationDetails: ReadonlyArray<string>
  readonly preparedLeft: number
  readonly serverRestarts: number
  readonly kills: number
}

describe.skipIf(pgUrl === undefined)("kill -9 torture on PostgreSQL", () => {
  it("loses nothing, applies nothing twice and leaves nothing prepared", { timeout: 900_000 }, async () => {
    const args = [
      tortureBin,
      "--pg",
      pgUrl!,
      "--cycles",
      process.env.ACCORD_TORTURE_CYCLES ?? "4",
      // Each cycle's kill comes 20-3,000 ms into its run: enough transfers that a run lasts past
      // it. With 150 a run finished first on a fast machine, every cycle: "no kill landed" (seen
      // in CI at 1ef1023..554c46d and, measured after, on the older code too).
      "--transfers",
      "3000",
      "--seed",
      "20261127",
      "--db-prefix",
      "accord_t_torture_ci_",
      "--json",
      ...(canRestartServer ? [] : ["--no-server-restarts"])
    ]
    const stdout = await new Promise<string>((resolve, reject) =>
      execFile(process.execPath, args, { maxBuffer: 16 * 1024 * 1024 }, (error, out, err) => {
        const last = out.trim().split("\n").pop() ?? ""
        if (last.startsWith("{")) resolve(out)
        else reject(new Error(`torture failed: ${error?.message}\n${err.slice(-3000)}`))
      })
    )
    const summary = JSON.parse(stdout.trim().split("\n").pop()!) as TortureSummary
    expect(summary.violationDetails).toEqual([])
    expect(summary.violations).toBe(0)
    expect(summary.preparedLeft).toBe(0)
    expect(summary.transfers).toBeGreaterThan(0)
    expect(summary.kills).toBeGreaterThan(0)
    if (canRestartServer) expect(summary.serverRestarts).toBeGreaterThanOrEqual(2)
  })
})
