import { describe, expect, it } from "vitest"
import * as Report from "../src/Report.js"
import type { Cell } from "../src/Runner.js"

const cell = (
  mode: string,
  concurrency: number,
  tps: number,
  p50Ms: number,
  extra: Partial<Cell> = {}
): Cell => ({
  mode,
  backend: "postgres",
  concurrency,
  transactions: tps * 4,
  errors: 0,
  firstError: undefined,
  seconds: 4,
  tps,
  p50Ms,
  p99Ms: p50Ms * 3,
  walSyncsPerTx: 1,
  statementsPerTx: 4,
  preparesPerTx: 0,
  commitPreparedPerTx: 0,
  ...extra
})

const baselines = new Map([
  ["accord2pc", "raw2pc"],
  ["accord2pc-group", "raw2pc"],
  ["accord1pc", "local"]
])

describe("benchmark report", () => {
  it("compares each mode with its baseline at the same concurrency", () => {
    const cells = Report.withRatios(
      [
        cell("raw2pc", 1, 600, 1.6),
        cell("accord2pc", 1, 570, 1.8),
        cell("raw2pc", 8, 1200, 6),
        cell("accord2pc", 8, 600, 12)
      ],
      baselines
    )
    const at1 = cells.find((c) => c.mode === "accord2pc" && c.concurrency === 1)!
    const at8 = cells.find((c) => c.mode === "accord2pc" && c.concurrency === 8)!
    expect(at1.ratio).toBe(0.95)
    expect(at1.p50DeltaMs).toBe(0.2)
    expect(at8.ratio).toBe(0.5)
    expect(cells.find((c) => c.mode === "raw2pc")?.ratio).toBeUndefined()
  })

  it("judges the targets from the measured cells, failing the missed ones", () => {
    const cells = Report.withRatios(
      [
        cell("raw2pc", 1, 600, 1.6),
        cell("accord2pc", 1, 300, 3),
        cell("raw2pc", 32, 1300, 20),
        cell("accord2pc-group", 32, 1800, 15),
        cell("local", 1, 1300, 0.7),
        cell("accord1pc", 1, 1290, 0.72, { preparesPerTx: 0 })
      ],
      baselines
    )
    const targets = Report.targets(cells)
    const byName = new Map(targets.map((t) => [t.target, t.met]))
    expect(byName.get("accord2pc >= 0.95x raw2pc at 1")).toBe(false)
    expect(byName.get("accord2pc p50 at 1 <= raw2pc p50 + 0.3 ms")).toBe(false)
    expect(byName.get("accord2pc-group >= 1.3x raw2pc at 32")).toBe(true)
    expect(byName.get("accord1pc >= 0.95x local at 1")).toBe(true)
    expect(byName.get("accord1pc sends no PREPARE")).toBe(true)
  })

  it("draws one line per mode in the chart and a row per cell in the table", () => {
    const cells = [cell("local", 1, 100, 1), cell("local", 8, 400, 2), cell("raw2pc", 1, 50, 2)]
    const svg = Report.svg(cells, "t")
    expect(svg.match(/<polyline/g)).toHaveLength(2)
    expect(svg).toContain("</svg>")
    const md = Report.markdown(cells, { run: "test" })
    expect(md.split("\n").filter((l) => l.startsWith("| local |"))).toHaveLength(2)
  })
})
