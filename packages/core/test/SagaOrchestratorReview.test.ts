import { Chunk, Duration, Effect, Schedule } from "effect"
import { describe, expect, it } from "vitest"
import * as Saga from "../src/Saga.js"
import { InvalidSagaError } from "../src/Saga.js"
import { SagaOrchestrator, classify } from "../src/SagaOrchestrator.js"

describe("SagaOrchestrator: what a production caller gets wrong", () => {
  it("an empty saga id is refused, not replaced by a fresh one (a retried execute would run twice)", async () => {
    let charges = 0
    const saga = new SagaOrchestrator().addStep({ name: "charge", action: async () => void charges++ })
    await expect(saga.execute({}, { sagaId: "" })).rejects.toBeInstanceOf(InvalidSagaError)
    await expect(saga.execute({}, { sagaId: "" })).rejects.toBeInstanceOf(InvalidSagaError)
    expect(charges).toBe(0)
  })

  it("an error that says it may have acted stays in doubt even when it is also retryable", () => {
    const both = Object.assign(new Error("socket closed after send"), { retryable: true, inDoubt: true })
    expect(classify(both)._tag).toBe("StepInDoubtError")
    expect(classify({ _tag: "StepInDoubtError", retryable: true, message: "x" })._tag).toBe(
      "StepInDoubtError"
    )
  })

  it("a retryable in-doubt rejection that keeps failing is compensated: it may have charged", async () => {
    const refunds: Array<string> = []
    const result = await new SagaOrchestrator({ retryDelay: 1 })
      .addStep({
        name: "charge",
        retries: 1,
        action: async () => {
          throw Object.assign(new Error("reply lost"), { retryable: true, inDoubt: true })
        },
        compensation: async (ctx) => void refunds.push(ctx.key)
      })
      .execute()
    expect(result.status).toBe("compensated")
    expect(refunds).toEqual([`${result.sagaId}/charge`])
  })

  it.each([
    ["timeout", { timeout: Number.NaN }],
    ["timeout", { timeout: -1 }],
    ["timeout", { timeout: 0 }],
    ["compensationTimeout", { compensationTimeout: Number.NaN }],
    ["retries", { retries: -1 }],
    ["retries", { retries: 1.5 }],
    ["compensationRetries", { compensationRetries: Number.NaN }]
  ] as const)("a step's %s of %j is refused with InvalidSagaError, and nothing runs", (option, bad) => {
    let calls = 0
    const saga = new SagaOrchestrator()
    expect(() => saga.addStep({ name: "charge", action: async () => void calls++, ...bad })).toThrow(
      InvalidSagaError
    )
    expect(() => saga.addStep({ name: "charge", action: async () => void calls++, ...bad })).toThrow(option)
    expect(calls).toBe(0)
  })

  it("a parallel group with one bad member is refused whole: the orchestrator is left as it was", async () => {
    const saga = new SagaOrchestrator().addStep({ name: "a", action: async () => 1 })
    expect(() =>
      saga.addParallel([
        { name: "b", action: async () => 2 },
        { name: "c", action: async () => 3, retries: -1 }
      ])
    ).toThrow("step c: retries must be a whole number, 0 or more, got -1")
    const result = await saga.execute()
    expect(result.outputs).toEqual({ a: 1 })
  })

  it.each([
    ["stepTimeout", { stepTimeout: Number.NaN }],
    ["leaseFor", { leaseFor: 0 }],
    ["retries", { retries: Number.NaN }],
    ["compensationRetries", { compensationRetries: -2 }],
    ["retryDelay", { retryDelay: -5 }]
  ] as const)("an orchestrator's %s of %j is refused with InvalidSagaError", (option, bad) => {
    expect(() => new SagaOrchestrator(bad)).toThrow(InvalidSagaError)
    expect(() => new SagaOrchestrator(bad)).toThrow(option)
  })

  it("a barrier's errors are classified as Barrier.toStepError reads them, not all as business", () => {
    // Found by a review (2026-12-07): a BarrierWorkError whose connection was lost after its COMMIT
    // was a business failure through the facade: not retried, not compensated, the stock kept.
    const barrier = (fields: Record<string, unknown>) =>
      Object.assign(new Error("action of f-1/reserve failed"), { _tag: "BarrierWorkError", ...fields })
    expect(classify(barrier({ connectionLost: true }))._tag).toBe("StepInDoubtError")
    expect(classify(barrier({ connectionLost: false, sqlState: "40001" }))._tag).toBe("StepTransientError")
    expect(classify(barrier({ connectionLost: false, sqlState: "57014" }))._tag).toBe("StepTransientError")
    expect(classify(barrier({ connectionLost: false }))._tag).toBe("StepTransientError")
    expect(classify(barrier({ connectionLost: false, sqlState: "23514" }))._tag).toBe("StepBusinessError")
    expect(classify({ _tag: "BarrierResultDecodeError", message: "x" })._tag).toBe("StepInDoubtError")
    expect(classify({ _tag: "BarrierResultRefusedError", message: "x" })._tag).toBe("StepBusinessError")
  })

  it("a bad or duplicate step name, or an empty group, is refused when added, not at the first execute", async () => {
    const saga = new SagaOrchestrator().addStep({ name: "reserve", action: async () => "ok" })
    expect(() => saga.addStep({ name: "has space", action: async () => 1 })).toThrow(InvalidSagaError)
    expect(() => saga.addStep({ name: "has space", action: async () => 1 })).toThrow(/invalid step name/)
    expect(() => saga.addStep({ name: "reserve", action: async () => 1 })).toThrow(
      /duplicate step name reserve/
    )
    expect(() => saga.addParallel([])).toThrow(/is empty/)
    expect(() =>
      saga.addParallel([
        { name: "a", action: async () => 1 },
        { name: "reserve", action: async () => 1 }
      ])
    ).toThrow(/duplicate step name reserve/)
    // Each refusal left the orchestrator as it was: default names go on from the steps it has.
    saga.addStep({ action: async () => "second" })
    expect(saga.saga.units.map((u) => u.name)).toEqual(["reserve", "step-2"])
    const result = await saga.execute({})
    expect(result.status).toBe("completed")
  })

  it("a NaN step timeout (an unset environment variable) would time every attempt out after calling it", async () => {
    // What the validation prevents: before it, the action was called, aborted at once, retried, then
    // compensated as in doubt, on every saga.
    let calls = 0
    const saga = new SagaOrchestrator({ retryDelay: 1 })
    let thrown: unknown
    try {
      saga.addStep({
        name: "charge",
        timeout: Number(process.env.ACCORD_UNSET_TIMEOUT_FOR_TEST),
        retries: 1,
        action: async () => {
          calls++
          return 1
        }
      })
    } catch (e) {
      thrown = e
    }
    expect(thrown).toBeInstanceOf(InvalidSagaError)
    expect(calls).toBe(0)
  })
})

describe("SagaOrchestrator: retry schedules are bounded", () => {
  /** The delays a step's schedule would wait before each retry, for `n` failures. */
  const delaysOf = (schedule: Schedule.Schedule<unknown, Saga.AttemptError>, n: number) =>
    Effect.runSync(
      Schedule.run(
        Schedule.delays(schedule),
        0,
        Array.from({ length: n }, () => new Saga.StepTransientError({ reason: "503" }))
      )
    ).pipe(Chunk.toReadonlyArray, (ds) => ds.map(Duration.toMillis))

  it("a long compensation retry budget waits at most a few seconds between attempts, as the Effect default does", () => {
    const saga = new SagaOrchestrator().addStep({
      name: "charge",
      action: async () => 1,
      compensation: async () => {},
      compensationRetries: 30,
      retries: 20
    }).saga
    const step = saga.units[0] as Saga.Step<unknown, never>
    const compensation = delaysOf(step.compensationRetry, 30)
    const action = delaysOf(step.retry, 20)
    expect(compensation).toHaveLength(30)
    expect(action).toHaveLength(20)
    // Uncapped, the 30th wait was 100 ms × 2^29 (about 600 days) and the saga sat in its
    // compensation for years before anyone was told it was stuck.
    expect(Math.max(...compensation)).toBeLessThanOrEqual(5_000 * 1.2)
    expect(Math.max(...action)).toBeLessThanOrEqual(5_000 * 1.2)
  })

  it("maxRetryDelay sets the cap", () => {
    const saga = new SagaOrchestrator({ retryDelay: 10, maxRetryDelay: 50 }).addStep({
      name: "charge",
      action: async () => 1,
      compensation: async () => {},
      compensationRetries: 12
    }).saga
    const step = saga.units[0] as Saga.Step<unknown, never>
    expect(Math.max(...delaysOf(step.compensationRetry, 12))).toBeLessThanOrEqual(50 * 1.2)
    expect(() => new SagaOrchestrator({ maxRetryDelay: Number.NaN })).toThrow("maxRetryDelay")
  })
})
