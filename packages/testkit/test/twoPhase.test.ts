import { describe, expect, it } from "vitest"
import * as Simulator from "../src/Simulator.js"
import { ciSeeds, sim } from "./support.js"

describe("2PC simulation", () => {
  it(`holds every invariant over ${ciSeeds} seeds with faults injected`, { timeout: 600_000 }, async () => {
    const { code, summary } = await sim(["--protocol", "2pc", "--seeds", String(ciSeeds), "--json"])
    expect(summary.seeds).toBe(ciSeeds)
    expect(summary.violations).toBe(0)
    expect(summary.failingSeeds).toEqual([])
    expect(code).toBe(0)
    // The run exercised every kind of fault, not a calm network.
    for (const kind of [
      "coordinator-crash",
      "participant-crash",
      "drop",
      "lost-response",
      "duplicate",
      "delay",
      "log-failure"
    ]) {
      expect(summary.faults[kind] ?? 0).toBeGreaterThan(0)
    }
  })

  it(
    "catches a coordinator that commits branches before forcing its decision",
    { timeout: 600_000 },
    async () => {
      const { code, summary } = await sim([
        "--protocol",
        "2pc",
        "--variant",
        "commit-before-decision",
        "--seeds",
        String(ciSeeds),
        "--stop-after",
        "25",
        "--json"
      ])
      expect(code).toBe(1)
      expect(summary.violations).toBeGreaterThan(0)
      // Caught by the state itself (a branch committed beside one rolled back), not only by the
      // write-ahead watch.
      expect(summary.violationKinds.atomicity ?? 0).toBeGreaterThan(0)
      expect(summary.violationKinds["write-ahead"] ?? 0).toBeGreaterThan(0)
    }
  )

  it(
    "catches a log that acknowledges commit decisions without keeping them",
    { timeout: 600_000 },
    async () => {
      const { code, summary } = await sim([
        "--protocol",
        "2pc",
        "--variant",
        "log-loses-decisions",
        "--seeds",
        String(ciSeeds),
        "--stop-after",
        "25",
        "--json"
      ])
      expect(code).toBe(1)
      expect(summary.violationKinds.atomicity ?? 0).toBeGreaterThan(0)
    }
  )

  it("replays a seed exactly: same seed, same trace", async () => {
    for (const seed of [7, 1234, 99_999]) {
      const first = await Simulator.run({ protocol: "2pc", seed })
      const second = await Simulator.run({ protocol: "2pc", seed })
      expect(second.trace).toEqual(first.trace)
      expect(second.faults).toEqual(first.faults)
      expect(first.trace.length).toBeGreaterThan(3)
    }
    const a = await Simulator.run({ protocol: "2pc", seed: 1 })
    const b = await Simulator.run({ protocol: "2pc", seed: 2 })
    expect(a.trace).not.toEqual(b.trace)
  })

  it("prints a failing seed's violation, trace and replay command", { timeout: 120_000 }, async () => {
    const { summary } = await sim([
      "--protocol",
      "2pc",
      "--variant",
      "commit-before-decision",
      "--seeds",
      "200",
      "--stop-after",
      "1",
      "--json"
    ])
    const seed = summary.failingSeeds[0] ?? -1
    const text = Simulator.format(
      await Simulator.run({ protocol: "2pc", seed, variant: "commit-before-decision" })
    )
    expect(text).toContain("VIOLATION")
    expect(text).toContain("trace:")
    expect(text).toContain(
      `replay: pnpm sim -- --protocol 2pc --seed ${seed} --variant commit-before-decision`
    )
  })
})
