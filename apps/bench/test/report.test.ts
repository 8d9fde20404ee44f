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
  ["accord2pc-pipelined", "raw2pc"],
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

  it("judges the pipelined transfer against the same targets, under its own name", () => {
    const cells = Report.withRatios(
      [
        cell("raw2pc", 1, 600, 1.6),
        cell("accord2pc", 1, 450, 2),
        cell("accord2pc-pipelined", 1, 580, 1.7),
        cell("raw2pc", 8, 1200, 6),
        cell("accord2pc-pipelined", 8, 1000, 7)
      ],
      baselines
    )
    const byName = new Map(Report.targets(cells).map((t) => [t.target, t]))
    expect(byName.get("accord2pc >= 0.95x raw2pc at 1")?.met).toBe(false)
    expect(byName.get("accord2pc-pipelined >= 0.95x raw2pc at 1")).toEqual({
      target: "accord2pc-pipelined >= 0.95x raw2pc at 1",
      measured: "0.967x",
      met: true
    })
    expect(byName.get("accord2pc-pipelined p50 at 1 <= raw2pc p50 + 0.3 ms")?.met).toBe(true)
    expect(byName.get("accord2pc-pipelined >= 0.95x raw2pc at 8")?.met).toBe(false)
    expect(byName.has("accord2pc-pipelined >= 0.95x raw2pc at 32")).toBe(false)
  })

  it("draws one line per mode in the chart and a row per cell in the table", () => {
    const cells = [cell("local", 1, 100, 1), cell("local", 8, 400, 2), cell("raw2pc", 1, 50, 2)]
    const svg = Report.svg(cells, "t")
    expect(svg.match(/<polyline/g)).toHaveLength(2)
    expect(svg).toContain("</svg>")
    const md = Report.markdown(cells, { run: "test" })
    expect(md.split("\n").filter((l) => l.startsWith("| local |"))).toHaveLength(2)
  })

  it("judges 'group not below accord2pc at 1' exactly, with no tolerance", () => {
    const cells = Report.withRatios(
      [cell("raw2pc", 1, 600, 1.6), cell("accord2pc", 1, 300, 2), cell("accord2pc-group", 1, 295, 2)],
      baselines
    )
    const t = Report.targets(cells).find((x) => x.target === "accord2pc-group not below accord2pc at 1")
    expect(t?.met).toBe(false)
  })

  it("prints a p50 below the baseline's with its own sign", () => {
    const cells = Report.withRatios([cell("raw2pc", 1, 600, 1.6), cell("accord2pc", 1, 610, 1.5)], baselines)
    const t = Report.targets(cells).find((x) => x.target === "accord2pc p50 at 1 <= raw2pc p50 + 0.3 ms")
    expect(t).toEqual({ target: "accord2pc p50 at 1 <= raw2pc p50 + 0.3 ms", measured: "-0.1 ms", met: true })
  })

  it("fails the read-only target when the read-only branch itself sent a PREPARE, however rarely", () => {
    // 300 transactions: the writer prepared each (300), the read-only branch 3 of them: 1.01 per
    // transaction in all, which rounds to 1 and used to pass as "the writer's one".
    const ro = cell("accord-readonly", 1, 75, 2, {
      transactions: 300,
      preparesPerTx: 1,
      commitPreparedPerTx: 1,
      readOnlyBranch: { transactions: 300, prepares: 3, phase2: 3 }
    })
    const t = Report.targets([ro]).find((x) => x.target.startsWith("read-only branch"))
    expect(t?.met).toBe(false)
    const clean = cell("accord-readonly", 1, 75, 2, {
      preparesPerTx: 1,
      commitPreparedPerTx: 1,
      readOnlyBranch: { transactions: 300, prepares: 0, phase2: 0 }
    })
    expect(Report.targets([clean]).find((x) => x.target.startsWith("read-only branch"))?.met).toBe(true)
  })

  it("shows a cell's errors inside the table and warns at the top about errors and prepared leftovers", () => {
    const cells = [
      cell("raw2pc", 1, 600, 1.6),
      cell("accord2pc", 1, 300, 2, {
        errors: 7,
        firstError: "maximum number | of prepared transactions reached"
      })
    ]
    const md = Report.markdown(cells, { run: "test" }, { preparedLeft: 3 })
    const header = md.split("\n").find((l) => l.startsWith("| mode |"))!
    const row = md.split("\n").find((l) => l.startsWith("| accord2pc |"))!
    // As many cells as the header (GitHub drops the excess of a row), the error text escaped.
    const cellsOf = (line: string) => line.split(/(?<!\\)\|/).length
    expect(cellsOf(row)).toBe(cellsOf(header))
    expect(header).toContain("errors")
    expect(row).toContain("7")
    expect(md.split("\n")[0]).toMatch(/^\*\*WARNING/)
    expect(md).toContain("7 failed transactions")
    expect(md).toContain("3 transactions were left prepared")
    expect(Report.warnings(cells, 0)).toEqual([expect.stringContaining("7 failed transactions")])
    expect(Report.warnings([cell("raw2pc", 1, 600, 1.6)], 0)).toEqual([])
  })

  it("labels PGlite lines in the chart's legend as PGlite", () => {
    const svg = Report.svg(
      [cell("local-pglite", 1, 900, 1, { backend: "pglite" }), cell("local", 1, 100, 1)],
      "t"
    )
    expect(svg).toContain("local-pglite (PGlite, fsync off)")
    expect(svg).not.toContain("local (PGlite")
  })
})
