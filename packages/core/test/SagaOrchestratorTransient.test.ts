/**
 * Lock contention through the Promise facade (review of 2026-12-07): a barrier action failing with
 * 55P03 (lock_not_available, a brief `lock_timeout`) was a definite business failure, so the step
 * was never retried and the saga turned back although the lock was released a moment later. 55P03
 * and 55006 (object_in_use) are now transient, as `Barrier.toStepError` reads them; the rest of
 * class 55 (55000, object not in prerequisite state) stays definite.
 */
import { describe, expect, it } from "vitest"
import { SagaOrchestrator, classify, classifyCompensation } from "../src/SagaOrchestrator.js"

/** A rejection as `Barrier.runPromise` gives it: a `BarrierWorkError` with its SQLSTATE. */
const barrierError = (sqlState: string) =>
  Object.assign(new Error(`action of s-1/reserve failed (${sqlState})`), {
    _tag: "BarrierWorkError",
    sqlState,
    connectionLost: false
  })

describe("SagaOrchestrator: SQLSTATEs of a busy lock or object", () => {
  it.each(["55P03", "55006"])("an action's %s is transient", (sqlState) => {
    expect(classify(barrierError(sqlState))._tag).toBe("StepTransientError")
    // Any rejection carrying the SQLSTATE, not only the barrier's.
    expect(classify({ sqlState, message: "busy" })._tag).toBe("StepTransientError")
  })

  it.each(["55000", "0A000", "23514"])("an action's %s stays a definite failure", (sqlState) => {
    expect(classify(barrierError(sqlState))._tag).toBe("StepBusinessError")
  })

  it("a compensation's 55P03 is retried, as any unmarked compensation failure", () => {
    expect(classifyCompensation(barrierError("55P03"))._tag).toBe("StepTransientError")
    expect(classifyCompensation(barrierError("23514"))._tag).toBe("StepTransientError")
  })

  it("a compensation refused the same way at every attempt is definite, as Barrier.toCompensationStepError reads it", () => {
    // A barrier's refused notify (0A000) and a result it refused before commit would be refused again.
    expect(classifyCompensation(barrierError("0A000"))._tag).toBe("StepBusinessError")
    // A work that ended the barrier's transaction and then failed: a retry would answer Duplicate.
    expect(classifyCompensation(barrierError("25000"))._tag).toBe("StepBusinessError")
    expect(
      classifyCompensation(Object.assign(new Error("result refused"), { _tag: "BarrierResultRefusedError" }))
        ._tag
    ).toBe("StepBusinessError")
  })

  it("an action that hits a lock timeout, then gets the lock, completes without compensation", async () => {
    let attempts = 0
    const released: Array<string> = []
    const result = await new SagaOrchestrator({ retryDelay: 1 })
      .addStep({
        name: "reserve",
        retries: 3,
        action: async () => {
          attempts++
          if (attempts === 1) throw barrierError("55P03")
          return "reserved"
        },
        compensation: async () => void released.push("reserve")
      })
      .execute({})
    expect(result.status).toBe("completed")
    expect(result.outputs).toEqual({ reserve: "reserved" })
    expect(attempts).toBe(2)
    expect(released).toEqual([])
  })
})
