import { existsSync, mkdtempSync, readFileSync, rmSync } from "node:fs"
import { tmpdir } from "node:os"
import { join } from "node:path"
import { TestDatabase } from "@accord/postgres"
import { afterAll, beforeAll, describe, expect, it, vi } from "vitest"
import { run, start, summaryOf } from "./support.js"

const server = await TestDatabase.server()
const prefix = "s22_bt_sig_"
const names = [`${prefix}bank_a`, `${prefix}bank_b`, `${prefix}coordinator`]
const dir = mkdtempSync(join(tmpdir(), "accord-t-bank-sig-"))
// At the top: a describe's own afterAll does not run when it is skipped (no server).
afterAll(() => rmSync(dir, { recursive: true, force: true }))

const dropAll = async () => {
  if (server === undefined) return
  for (const name of names) await TestDatabase.dropDatabase(server.adminUrl, name)
}

describe.skipIf(server === undefined)("bank transfer stopped by a signal", () => {
  const adminUrl = server?.adminUrl ?? ""
  const args = (...rest: ReadonlyArray<string>) => [
    "--pg",
    adminUrl,
    "--db-prefix",
    prefix,
    "--json",
    ...rest
  ]

  beforeAll(async () => {
    await dropAll()
    const r = await run(args("--fresh", "--transfers", "0", "--accounts", "100"))
    expect(r.code, r.stderr).toBe(0)
  }, 120_000)
  afterAll(dropAll)

  // 128 + the signal's number, as a shell reports a process the signal ended (and as order-saga does).
  it.each([
    ["SIGTERM", 143],
    ["SIGINT", 130]
  ] as const)(
    "a run stopped by %s exits %i with one line, and the next run finishes what it left",
    async (signal, code) => {
      const journal = join(dir, `journal-${signal}.jsonl`)
      const { child, done } = start(
        args("--transfers", "1000000", "--concurrency", "4", "--journal", journal)
      )
      await vi.waitFor(
        () => {
          const outcomes = existsSync(journal)
            ? readFileSync(journal, "utf8").split('"event":"outcome"').length - 1
            : 0
          if (outcomes < 20) throw new Error(`only ${outcomes} outcomes so far`)
        },
        { timeout: 60_000, interval: 50 }
      )
      child.kill(signal)
      const stopped = await done
      expect(stopped.code, stopped.stderr).toBe(code)
      expect(stopped.stderr).toMatch(new RegExp(`bank-transfer: ${signal}: interrupted`))
      expect(stopped.stderr).not.toMatch(/\n\s+at /)

      const r = await run(args("--transfers", "0"))
      expect(r.code, r.stderr).toBe(0)
      const s = summaryOf(r)
      expect(s.total).toBe(s.expectedTotal)
      expect(s.preparedLeft).toBe(0)
      const left = await TestDatabase.preparedOnServer(adminUrl)
      expect(left.filter((p) => names.includes(p.database))).toEqual([])
    },
    180_000
  )
})

describe("bank transfer on embedded PGlite stopped by a signal", () => {
  const dataDir = join(dir, "pglite")
  const args = (...rest: ReadonlyArray<string>) => ["--data-dir", dataDir, "--json", ...rest]

  beforeAll(async () => {
    const r = await run(args("--fresh", "--transfers", "0", "--accounts", "100"))
    expect(r.code, r.stderr).toBe(0)
  }, 120_000)

  // PGlite's work is all in this process: before the workload yielded to the event loop between
  // transfers, the signal handler never ran and the run went on to its end (exit 0, no line).
  it("a run stopped by SIGTERM exits 143 with one line within seconds, and the next run finishes what it left", async () => {
    const journal = join(dir, "journal-pglite.jsonl")
    const { child, done } = start(args("--transfers", "1000000", "--concurrency", "4", "--journal", journal))
    await vi.waitFor(
      () => {
        const outcomes = existsSync(journal)
          ? readFileSync(journal, "utf8").split('"event":"outcome"').length - 1
          : 0
        if (outcomes < 20) throw new Error(`only ${outcomes} outcomes so far`)
      },
      { timeout: 90_000, interval: 50 }
    )
    child.kill("SIGTERM")
    const stopped = await Promise.race([
      done,
      new Promise<undefined>((resolve) => setTimeout(() => resolve(undefined), 10_000))
    ])
    if (stopped === undefined) {
      child.kill("SIGKILL")
      await done
      expect.fail("the run had not stopped 10 s after SIGTERM")
    }
    expect(stopped.code, stopped.stderr).toBe(143)
    expect(stopped.stderr.match(/bank-transfer: /g)).toHaveLength(1)
    expect(stopped.stderr).toMatch(/bank-transfer: SIGTERM: interrupted/)
    expect(stopped.stderr).not.toMatch(/\n\s+at /)

    const r = await run(args("--transfers", "0"))
    expect(r.code, r.stderr).toBe(0)
    const s = summaryOf(r)
    expect(s.backend).toBe("pglite")
    expect(s.seeded).toBe(false)
    expect(s.total).toBe(s.expectedTotal)
    expect(s.preparedLeft).toBe(0)
    expect(s.halfApplied).toBe(0)
    expect(s.ledgerMismatches).toBe(0)
  }, 240_000)
})
