import { mkdtempSync, rmSync } from "node:fs"
import { tmpdir } from "node:os"
import { join } from "node:path"
import { afterAll, describe, expect, it } from "vitest"
import { run, summaryOf } from "./support.js"

const dir = mkdtempSync(join(tmpdir(), "accord-t-bank-"))
afterAll(() => rmSync(dir, { recursive: true, force: true }))

describe("bank transfer on embedded PGlite", () => {
  it("conserves the total, leaves nothing prepared, and shows database-refused aborts", async () => {
    const r = await run([
      "--data-dir",
      dir,
      "--fresh",
      "--transfers",
      "150",
      "--concurrency",
      "8",
      "--accounts",
      "50",
      "--json"
    ])
    expect(r.code, r.stderr).toBe(0)
    const s = summaryOf(r)
    expect(s.backend).toBe("pglite")
    expect(s.protocol).toBe("2pc")
    expect(s.seeded).toBe(true)
    expect(s.committed + s.aborted + s.commitPending).toBe(150)
    expect(s.committed).toBeGreaterThan(0)
    expect(s.abortReasons.insufficientFunds).toBeGreaterThan(0)
    expect(s.total).toBe(s.expectedTotal)
    expect(s.expectedTotal).toBe(2 * 50 * 1000)
    expect(s.preparedLeft).toBe(0)
    expect(s.halfApplied).toBe(0)
    expect(s.ledgerMismatches).toBe(0)
  }, 120_000)

  it("reuses the existing dataset, and --transfers 0 runs only recovery and the summary", async () => {
    const r = await run(["--data-dir", dir, "--transfers", "0", "--json"])
    expect(r.code, r.stderr).toBe(0)
    const s = summaryOf(r)
    expect(s.seeded).toBe(false)
    expect(s.committed + s.aborted).toBe(0)
    expect(s.total).toBe(s.expectedTotal)
    expect(s.preparedLeft).toBe(0)
  }, 60_000)
})

describe("bank transfer on embedded PGlite with 3PC", () => {
  it("conserves the total and leaves nothing prepared; the JSON names the protocol", async () => {
    const r = await run([
      "--data-dir",
      dir,
      "--protocol",
      "3pc",
      "--transfers",
      "80",
      "--concurrency",
      "8",
      "--json"
    ])
    expect(r.code, r.stderr).toBe(0)
    const s = summaryOf(r)
    expect(s.protocol).toBe("3pc")
    expect(s.committed + s.aborted + s.commitPending).toBe(80)
    expect(s.committed).toBeGreaterThan(0)
    expect(s.total).toBe(s.expectedTotal)
    expect(s.preparedLeft).toBe(0)
    expect(s.halfApplied).toBe(0)
  }, 120_000)
})
