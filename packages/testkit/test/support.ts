import { execFile } from "node:child_process"
import { fileURLToPath } from "node:url"

/**
 * Seeds per protocol for the CI-sized runs: `ACCORD_SIM_SEEDS`, default 4,000: what fits in about
 * two minutes for all four protocols on two cores (10,000 take about four; see docs/testkit.md).
 */
export const ciSeeds = Number(process.env.ACCORD_SIM_SEEDS ?? "4000")

const simBin = fileURLToPath(new URL("../dist/bin/sim.js", import.meta.url))

export interface CliSummary {
  readonly protocol: string
  readonly variant: string
  readonly seeds: number
  readonly violations: number
  readonly failingSeeds: ReadonlyArray<number>
  readonly violationKinds: Readonly<Record<string, number>>
  readonly faultsInjected: number
  readonly faults: Readonly<Record<string, number>>
  readonly elapsed: number
}

/** Runs the built `sim` CLI (worker threads on every core) and parses its last line. */
export const sim = (
  args: ReadonlyArray<string>
): Promise<{ code: number; stdout: string; summary: CliSummary }> =>
  new Promise((resolve, reject) => {
    execFile(process.execPath, [simBin, ...args], { maxBuffer: 64 * 1024 * 1024 }, (error, stdout) => {
      const lines = stdout.trim().split("\n")
      try {
        const summary = JSON.parse(lines[lines.length - 1]!) as CliSummary
        resolve({ code: error === null ? 0 : (error.code as number), stdout, summary })
      } catch (e) {
        reject(
          new Error(`sim ${args.join(" ")} printed no JSON summary: ${String(e)}\n${stdout.slice(-2000)}`)
        )
      }
    })
  })
