import { describe, expect, it } from "vitest"
import * as Simulator from "../src/Simulator.js"
import { ciSeeds, sim } from "./support.js"

describe("saga simulation", () => {
  it(
    `holds every saga invariant over ${ciSeeds} seeds with faults injected`,
    { timeout: 600_000 },
    async () => {
      const { code, summary } = await sim(["--protocol", "saga", "--seeds", String(ciSeeds), "--json"])
      expect(summary.seeds).toBe(ciSeeds)
      expect(summary.failingSeeds).toEqual([])
      expect(summary.violations).toBe(0)
      expect(code).toBe(0)
      for (const kind of [
        "coordinator-crash",
        "participant-crash",
        "drop",
        "lost-response",
        "delay",
        "log-failure"
      ]) {
        expect(summary.faults[kind] ?? 0).toBeGreaterThan(0)
      }
    }
  )

  it("catches an orchestrator that compensates in forward order", { timeout: 600_000 }, async () => {
    const { code, summary } = await sim([
      "--protocol",
      "saga",
      "--variant",
      "saga-compensate-forward",
      "--seeds",
      String(ciSeeds),
      "--stop-after",
      "25",
      "--json"
    ])
    expect(code).toBe(1)
    expect(summary.violationKinds.order ?? 0).toBeGreaterThan(0)
  })

  it("catches an orchestrator that skips the compensation's retries", { timeout: 600_000 }, async () => {
    const { code, summary } = await sim([
      "--protocol",
      "saga",
      "--variant",
      "saga-skip-retry",
      "--seeds",
      String(ciSeeds),
      "--stop-after",
      "25",
      "--json"
    ])
    expect(code).toBe(1)
    expect(summary.violationKinds.stuck ?? 0).toBeGreaterThan(0)
  })

  it("replays a seed exactly", { timeout: 60_000 }, async () => {
    for (const seed of [3, 4242]) {
      const first = await Simulator.run({ protocol: "saga", seed })
      const second = await Simulator.run({ protocol: "saga", seed })
      expect(second.trace).toEqual(first.trace)
      expect(second.violations).toEqual(first.violations)
    }
  })
})
