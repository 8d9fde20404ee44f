/**
 * The `sim` command line refuses what it cannot run, with a message and exit code 2. It ran
 * `--seed abc` as "seed NaN: ok" (exit 0), crashed on `--seeds abc` with a TypeError, and printed a
 * stack trace for an unknown flag (found by a review, 2026-12-07).
 */
import { execFile } from "node:child_process"
import { fileURLToPath } from "node:url"
import { describe, expect, it } from "vitest"

const simBin = fileURLToPath(new URL("../dist/bin/sim.js", import.meta.url))

const run = (args: ReadonlyArray<string>): Promise<{ code: number; stdout: string; stderr: string }> =>
  new Promise((resolve) => {
    execFile(process.execPath, [simBin, ...args], (error, stdout, stderr) => {
      resolve({ code: error === null ? 0 : (error.code as number), stdout, stderr })
    })
  })

describe("sim's command line", () => {
  for (const [args, message] of [
    [["--seed", "abc"], '--seed takes a whole number of at least 0, not "abc"'],
    [["--seeds", "abc"], '--seeds takes a whole number of at least 1, not "abc"'],
    [["--seeds", "0"], '--seeds takes a whole number of at least 1, not "0"'],
    [["--workers=-1"], '--workers takes a whole number of at least 1, not "-1"'],
    [["--bogus"], "Unknown option '--bogus'"]
  ] as const) {
    it(`refuses ${args.join(" ")} with exit code 2`, async () => {
      const { code, stdout, stderr } = await run(args)
      expect(code).toBe(2)
      expect(stdout).toBe("")
      expect(stderr.split("\n")[0]).toContain(message)
      expect(stderr).not.toMatch(/\n\s+at /)
    })
  }

  it("runs a valid seed", async () => {
    const { code, stdout } = await run(["--seed", "3"])
    expect(code).toBe(0)
    expect(stdout).toContain("seed 3: ok")
  })
})
