import { describe, expect, it } from "vitest"
import * as Simulator from "../src/Simulator.js"
import { ciSeeds, sim } from "./support.js"

describe("3PC simulation", () => {
  it(`classic mode stays atomic over ${ciSeeds} seeds of crash failures`, { timeout: 600_000 }, async () => {
    const { code, summary } = await sim(["--protocol", "3pc", "--seeds", String(ciSeeds), "--json"])
    expect(summary.seeds).toBe(ciSeeds)
    expect(summary.failingSeeds).toEqual([])
    expect(code).toBe(0)
    expect(summary.faults["coordinator-crash"] ?? 0).toBeGreaterThan(0)
    expect(summary.faults["participant-crash"] ?? 0).toBeGreaterThan(0)
    // Classic 3PC promises nothing under lost messages or partitions, so none are injected.
    expect(summary.faults.partition ?? 0).toBe(0)
    expect(summary.faults.drop ?? 0).toBe(0)
  })

  it(
    `quorum mode never splits its decision over ${ciSeeds} seeds with partitions`,
    { timeout: 600_000 },
    async () => {
      const { code, summary } = await sim(["--protocol", "3pc-quorum", "--seeds", String(ciSeeds), "--json"])
      expect(summary.failingSeeds).toEqual([])
      expect(code).toBe(0)
      for (const kind of [
        "partition",
        "coordinator-crash",
        "participant-crash",
        "drop",
        "lost-response",
        "delay"
      ]) {
        expect(summary.faults[kind] ?? 0).toBeGreaterThan(0)
      }
    }
  )

  it(
    "catches classic mode splitting its decision under the same partitions",
    { timeout: 600_000 },
    async () => {
      // Since 2026-12-06 classic mode waits for unreachable members instead of aborting without
      // them, and no longer splits in the first 10,000 seeds; it still can, under partitions and
      // late messages (the race in docs/3pc.md). Seed 31749 was the first of 40,000 to split.
      const { code, summary } = await sim([
        "--protocol",
        "3pc-quorum",
        "--variant",
        "classic-under-partitions",
        "--seeds",
        "1",
        "--from",
        "31749",
        "--json"
      ])
      expect(code).toBe(1)
      expect(summary.violationKinds.atomicity ?? 0).toBeGreaterThan(0)
    }
  )

  it("replays a seed exactly", { timeout: 60_000 }, async () => {
    for (const protocol of ["3pc", "3pc-quorum"] as const) {
      const first = await Simulator.run({ protocol, seed: 48 })
      const second = await Simulator.run({ protocol, seed: 48 })
      expect(second.trace).toEqual(first.trace)
    }
  })
})
