import { describe, expect, it } from "vitest"
import { run } from "./support.js"

const oneLine = (stderr: string) => stderr.trim().split("\n")

// Each case starts node processes: seconds apiece on a busy 2-core machine, so not the 5 s default.
describe("command line", { timeout: 60_000 }, () => {
  it("refuses an unknown flag with one line and exit code 2", async () => {
    const r = await run(["--bogus"])
    expect(r.code).toBe(2)
    expect(oneLine(r.stderr)).toHaveLength(1)
    expect(r.stderr).toMatch(/bogus/)
    expect(r.stderr).not.toMatch(/\n\s+at /)
  })

  it("refuses a malformed number with one line saying what is expected", async () => {
    const r = await run(["--transfers", "many"])
    expect(r.code).toBe(2)
    expect(oneLine(r.stderr)).toEqual([expect.stringMatching(/--transfers must be an integer/)])
  })

  it("refuses a negative number written as a separate argument, saying what is expected", async () => {
    for (const [flag, value] of [
      ["--transfers", "-1"],
      ["--concurrency", "-4"],
      ["--accounts", "-10"]
    ] as const) {
      const r = await run([flag, value])
      expect(r.code).toBe(2)
      expect(oneLine(r.stderr)).toEqual([
        expect.stringMatching(new RegExp(`${flag} must be an integer from \\d+ to \\d+, got "${value}"`))
      ])
    }
  })

  it("refuses --data-dir beside --pg (one of them would be ignored)", async () => {
    const r = await run(["--pg", "postgres://postgres@127.0.0.1:5432/postgres", "--data-dir", "/tmp/x"])
    expect(r.code).toBe(2)
    expect(oneLine(r.stderr)).toEqual([
      expect.stringMatching(/--data-dir is for the embedded PGlite databases/)
    ])
  })

  it("refuses an unknown protocol", async () => {
    const r = await run(["--protocol", "4pc"])
    expect(r.code).toBe(2)
    expect(oneLine(r.stderr)).toEqual([expect.stringMatching(/--protocol must be 2pc or 3pc/)])
  })

  it("refuses a --pg that is not a postgres URL", async () => {
    const r = await run(["--pg", "mysql://x"])
    expect(r.code).toBe(2)
    expect(oneLine(r.stderr)).toEqual([expect.stringMatching(/--pg must be a URL/)])
  })

  it("reports an unreachable server in one line with what to do, and exits 1", async () => {
    const r = await run(["--pg", "postgres://postgres@127.0.0.1:1/postgres", "--json"])
    expect(r.code).toBe(1)
    expect(oneLine(r.stderr)).toEqual([
      expect.stringMatching(/cannot reach PostgreSQL at .*start the server/)
    ])
    expect(r.stdout).toBe("")
  })

  it("prints usage with --help", async () => {
    const r = await run(["--help"])
    expect(r.code).toBe(0)
    expect(r.stdout).toMatch(/--transfers N/)
  })
})
