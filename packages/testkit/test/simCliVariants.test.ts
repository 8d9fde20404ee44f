/**
 * `sim` refuses a variant its protocol does not have, and `--seed` with `--seeds`, instead of
 * running something else: `--variant bogus` and a variant of another protocol ran the correct
 * implementation and reported 0 violations; `--seed 1 --seeds 5` ignored --seeds (found by a
 * review, 2026-12-07). The protocol is optional and defaults to 2pc, as the usage now says.
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

describe("sim's variants and seeds", () => {
  for (const [args, message] of [
    [["--seed", "1", "--variant", "bogus"], '--variant "bogus" is not a variant of 2pc'],
    [
      ["--protocol", "2pc", "--seed", "1", "--variant", "saga-skip-retry"],
      '--variant "saga-skip-retry" is not a variant of 2pc'
    ],
    [
      ["--protocol", "saga", "--seeds", "2", "--variant", "commit-before-decision"],
      "is not a variant of saga"
    ],
    [
      ["--protocol", "3pc", "--seed", "1", "--variant", "classic-under-partitions"],
      "is not a variant of 3pc"
    ],
    [["--seed", "1", "--seeds", "5"], "--seed runs one seed: it does not combine with --seeds or --from"],
    [["--seed", "1", "--from", "5"], "--seed runs one seed: it does not combine with --seeds or --from"],
    [["--protocol", "4pc", "--seed", "1"], 'unknown protocol "4pc"']
  ] as const) {
    it(`refuses ${args.join(" ")} with exit code 2`, async () => {
      const { code, stdout, stderr } = await run(args)
      expect(code).toBe(2)
      expect(stdout).toBe("")
      expect(stderr.split("\n")[0]).toContain(message)
    })
  }

  it("runs a protocol's own broken variant", async () => {
    const { code, stdout } = await run([
      "--protocol",
      "3pc-quorum",
      "--seed",
      "1",
      "--variant",
      "classic-under-partitions"
    ])
    expect([0, 1]).toContain(code)
    expect(stdout).toContain("variant classic-under-partitions")
  })

  it("defaults the protocol to 2pc, as the usage says", async () => {
    const { code, stdout } = await run(["--seed", "3"])
    expect(code).toBe(0)
    expect(stdout).toContain("protocol 2pc, seed 3: ok")
    const help = await run(["--help"])
    expect(help.stdout).toContain("[--protocol <")
    expect(help.stdout).toContain("(default 2pc)")
  })
})
