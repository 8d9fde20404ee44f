/**
 * The command line: a bad flag is refused with one line on stderr and exit code 2, before anything
 * is started (docs/order-saga.md: "A bad flag or an unreachable server prints one line").
 */
import { execFile } from "node:child_process"
import { join } from "node:path"
import { describe, expect, it } from "vitest"
import * as Cli from "../src/Cli.js"

const main = join(import.meta.dirname, "..", "dist", "main.js")

const run = (args: ReadonlyArray<string>) =>
  new Promise<{ code: number | null; stdout: string; stderr: string }>((resolve) => {
    execFile(
      process.execPath,
      [main, ...args],
      { env: { ...process.env, ACCORD_PG_URL: "" }, timeout: 60_000 },
      (error, stdout, stderr) =>
        resolve({ code: error === null ? 0 : ((error as { code?: number }).code ?? null), stdout, stderr })
    )
  })

const lines = (text: string): ReadonlyArray<string> => text.split("\n").filter((l) => l !== "")

const usageMessage = (argv: ReadonlyArray<string>, env: Record<string, string> = {}): string => {
  try {
    Cli.parse(argv, env)
  } catch (error) {
    if (error instanceof Cli.UsageError) return error.message
    throw error
  }
  return "(accepted)"
}

describe("command line", () => {
  it("refuses an unknown flag, a bad number and a bad URL with one line and exit code 2", async () => {
    for (const args of [
      ["--bogus"],
      ["--orders", "0"],
      ["--pg", "not a url"],
      ["--json", "--drop-rate", "2"]
    ]) {
      const r = await run(args)
      expect(r.code).toBe(2)
      expect(r.stdout).toBe("")
      expect(lines(r.stderr)).toEqual([expect.stringMatching(/^order-saga: .*\(see --help\)$/)])
    }
  })

  it("refuses a negative number written as a separate argument, saying what is expected", () => {
    for (const [flag, value, range] of [
      ["--orders", "-5", "1 and 100000"],
      ["--concurrency", "-1", "1 and 256"],
      ["--slow-ms", "-1", "0 and 600000"],
      ["--retries", "-2", "0 and 100"],
      ["--kill-orchestrator-after", "-1", "1 and 200"]
    ] as const)
      expect(usageMessage([flag, value])).toBe(`${flag} must be between ${range}, got ${value}`)
    expect(usageMessage(["--orders", "-1.5"])).toBe('--orders must be a whole number, got "-1.5"')
    expect(usageMessage(["--decline-rate", "-0.5"])).toBe(
      '--decline-rate must be a number between 0 and 1, got "-0.5"'
    )
  })

  it("refuses --data-dir beside --pg (one of them would be ignored)", () => {
    expect(
      usageMessage(["--pg", "postgres://postgres@127.0.0.1:5432/postgres", "--data-dir", "/tmp/x"])
    ).toBe("--data-dir is for the embedded PGlite databases; with --pg they are on the server")
  })

  it("refuses a rate that is not written as a decimal number", () => {
    for (const value of ["0x1", "0b1", " ", "1e-1x"])
      expect(usageMessage(["--drop-rate", value])).toMatch(/^--drop-rate must be a number between 0 and 1/)
    expect(usageMessage(["--drop-rate", "0.25"])).toBe("(accepted)")
    expect(usageMessage(["--drop-rate", "1"])).toBe("(accepted)")
  })

  it("names $ACCORD_PG_URL, not --pg, when the URL from the environment is bad", () => {
    expect(usageMessage([], { ACCORD_PG_URL: "localhost:5432" })).toMatch(/^\$ACCORD_PG_URL must be/)
    expect(usageMessage(["--pg", "localhost:5432"], { ACCORD_PG_URL: "" })).toMatch(/^--pg must be/)
  })
})
