import { describe, expect, it } from "vitest"
import type { Mode } from "../src/Modes.js"
import * as Runner from "../src/Runner.js"

const mode = (extra: Partial<Mode> = {}): Mode => ({
  name: "m",
  backend: "postgres",
  open: () => Promise.reject(new Error("not opened in this test")),
  ...extra
})

const slice = (extra: Partial<Runner.Slice> = {}): Runner.Slice => ({
  warmDone: 0,
  warmErrors: 0,
  done: 100,
  errors: 0,
  firstError: undefined,
  seconds: 1,
  latencies: [],
  walSyncs: 0,
  statements: 0,
  prepares: 0,
  commitPrepared: 0,
  byDatabase: {},
  ...extra
})

describe("combining slices into a cell", () => {
  it("divides the measured window's statements, PREPAREs and COMMIT PREPAREDs by the same transactions", () => {
    // 90 committed and 10 failed transactions in the measured window, 5 failures in warm-up (whose
    // statements were not counted): every transaction of the window sent 2 PREPAREs, 9 statements.
    const cell = Runner.combine(
      mode(),
      1,
      [
        slice({
          done: 90,
          errors: 10,
          warmErrors: 5,
          warmDone: 45,
          statements: 900,
          prepares: 200,
          commitPrepared: 200,
          walSyncs: 750
        })
      ],
      true
    )
    expect(cell.transactions).toBe(90)
    expect(cell.errors).toBe(15)
    expect(cell.statementsPerTx).toBe(9)
    expect(cell.preparesPerTx).toBe(2)
    expect(cell.commitPreparedPerTx).toBe(2)
    // WAL syncs span warm-up and window: 150 transactions ran.
    expect(cell.walSyncsPerTx).toBe(5)
  })

  it("takes percentiles from the measured latencies of every slice, and tps from measured time", () => {
    const cell = Runner.combine(
      mode(),
      1,
      [
        slice({ done: 50, seconds: 0.5, latencies: Array.from({ length: 50 }, (_, i) => i + 1) }),
        slice({ done: 50, seconds: 0.5, latencies: Array.from({ length: 50 }, (_, i) => 100 - i) })
      ],
      true
    )
    expect(cell.tps).toBe(100)
    expect(cell.p50Ms).toBe(50)
    expect(cell.p99Ms).toBe(99)
  })

  it("counts the PREPAREs and phase-2 statements sent to the read-only branch's database", () => {
    const cell = Runner.combine(
      mode({ readOnlyDatabase: "bank_b" }),
      1,
      [
        slice({
          done: 100,
          prepares: 103,
          byDatabase: {
            bank_a: { statements: 500, prepares: 100, commitPrepared: 100, rollbackPrepared: 0 },
            bank_b: { statements: 303, prepares: 3, commitPrepared: 2, rollbackPrepared: 1 }
          }
        }),
        slice({
          done: 50,
          byDatabase: { bank_b: { statements: 50, prepares: 0, commitPrepared: 0, rollbackPrepared: 0 } }
        })
      ],
      true
    )
    expect(cell.readOnlyBranch).toEqual({ transactions: 150, prepares: 3, phase2: 3 })
    expect(Runner.combine(mode(), 1, [slice()], true).readOnlyBranch).toBeUndefined()
  })
})
