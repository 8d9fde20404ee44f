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
  afterAll(async () => {
    await dropAll()
    rmSync(dir, { recursive: true, force: true })
  })

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
