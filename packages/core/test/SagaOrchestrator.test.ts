import { describe, expect, it } from "vitest"
import { SagaOrchestrator, business, inDoubt, transient } from "../src/SagaOrchestrator.js"

describe("SagaOrchestrator (Promise facade)", () => {
  it("names each orchestrator with 80 random bits unless given an owner", () => {
    const owners = Array.from({ length: 500 }, () => new SagaOrchestrator().owner)
    for (const owner of owners) expect(owner).toMatch(/^orchestrator-[0-9a-hjkmnp-tv-z]{16}$/)
    expect(new Set(owners).size).toBe(owners.length)
    expect(new SagaOrchestrator({ owner: "node-1" }).owner).toBe("node-1")
  })

  it("runs the steps in order with their keys and earlier outputs, resolving to completed", async () => {
    const seen: Array<string> = []
    const saga = new SagaOrchestrator({ name: "order" })
      .addStep({
        name: "create",
        action: async (ctx) => {
          seen.push(ctx.key)
          return { orderId: 42 }
        }
      })
      .addStep({
        action: async (ctx) => {
          seen.push(ctx.key)
          return { reservedFor: (ctx.outputs.create as { orderId: number }).orderId }
        },
        compensation: async () => {}
      })
    const result = await saga.execute({ sku: "A" })
    expect(result.status).toBe("completed")
    expect(result.outputs).toEqual({ create: { orderId: 42 }, "step-2": { reservedFor: 42 } })
    expect(seen).toEqual([`${result.sagaId}/create`, `${result.sagaId}/step-2`])
    expect(result.sagaId).toMatch(/^[0-9A-HJKMNP-TV-Z]{26}$/)
  })

  it("a rejected action compensates the completed steps in reverse and resolves to compensated", async () => {
    const undone: Array<string> = []
    const saga = new SagaOrchestrator()
      .addStep({ name: "a", action: async () => 1, compensation: async () => void undone.push("a") })
      .addStep({ name: "b", action: async () => 2, compensation: async () => void undone.push("b") })
      .addStep({
        name: "c",
        action: async () => {
          throw new Error("card declined")
        },
        compensation: async () => void undone.push("c")
      })
    const result = await saga.execute()
    expect(result).toMatchObject({
      status: "compensated",
      failedStep: "c",
      error: "card declined",
      compensated: ["b", "a"]
    })
    expect(undone).toEqual(["b", "a"])
  })

  it("classifies rejections: transient and in-doubt errors are retried, business ones are not", async () => {
    let calls = 0
    const retried = await new SagaOrchestrator({ retryDelay: 1 })
      .addStep({
        name: "flaky",
        retries: 3,
        action: async () => {
          calls++
          if (calls === 1) throw transient("503")
          if (calls === 2) throw inDoubt("socket closed")
          if (calls === 3) throw Object.assign(new Error("busy"), { retryable: true })
          return "ok"
        }
      })
      .execute()
    expect(retried.status).toBe("completed")
    expect(calls).toBe(4)
    let businessCalls = 0
    const refused = await new SagaOrchestrator({ retryDelay: 1 })
      .addStep({
        name: "pay",
        retries: 3,
        action: async () => {
          businessCalls++
          throw business("insufficient funds")
        }
      })
      .execute()
    expect(refused.status).toBe("compensated")
    expect(businessCalls).toBe(1)
  })

  it("a step timeout aborts the attempt's signal and counts as in doubt: the step is compensated", async () => {
    let aborted = false
    let compensatedWith: { output: unknown; completed: boolean } | undefined
    const result = await new SagaOrchestrator({ retryDelay: 1 })
      .addStep({
        name: "slow",
        timeout: 20,
        retries: 0,
        action: (ctx) =>
          new Promise((_, reject) => {
            ctx.signal.addEventListener("abort", () => {
              aborted = true
              reject(new Error("aborted"))
            })
          }),
        compensation: async (ctx) => {
          compensatedWith = { output: ctx.output, completed: ctx.completed }
        }
      })
      .execute()
    expect(result).toMatchObject({ status: "compensated", failedStep: "slow", compensated: ["slow"] })
    expect(aborted).toBe(true)
    expect(compensatedWith).toEqual({ output: undefined, completed: false })
  })

  it("a compensation that keeps failing resolves to stuck; retryStuck finishes it once fixed", async () => {
    let fixed = false
    const saga = new SagaOrchestrator({ retryDelay: 1, compensationRetries: 2 })
      .addStep({
        name: "charge",
        action: async () => "ch_1",
        compensation: async () => {
          if (!fixed) throw new Error("refund API down")
        }
      })
      .addStep({
        name: "ship",
        action: async () => {
          throw new Error("no carrier")
        }
      })
    const stuck = await saga.execute()
    expect(stuck).toMatchObject({ status: "stuck", failedStep: "charge", error: "refund API down" })
    fixed = true
    const done = await saga.retryStuck(stuck.sagaId)
    expect(done).toMatchObject({ status: "compensated", failedStep: "ship", compensated: ["charge"] })
  })

  it("parallel steps run together and a failing member compensates its completed siblings", async () => {
    const undone: Array<string> = []
    const result = await new SagaOrchestrator()
      .addStep({ name: "order", action: async () => 1, compensation: async () => void undone.push("order") })
      .addParallel([
        { name: "reserve", action: async () => 2, compensation: async () => void undone.push("reserve") },
        {
          name: "charge",
          action: async () => {
            throw new Error("declined")
          },
          compensation: async () => void undone.push("charge")
        }
      ])
      .execute()
    expect(result).toMatchObject({
      status: "compensated",
      failedStep: "charge",
      compensated: ["reserve", "order"]
    })
    expect(undone).toEqual(["reserve", "order"])
  })
})
