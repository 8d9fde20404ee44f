import { Effect, Option } from "effect"
import { describe, expect, it } from "vitest"
import { InvalidSagaError } from "../src/Saga.js"
import { SagaBusyError } from "../src/SagaLog.js"
import { SagaOrchestrator, business, inDoubt, transient } from "../src/SagaOrchestrator.js"

/** A promise and the function that settles it. */
const gate = () => {
  let open: () => void = () => {}
  const opened = new Promise<void>((resolve) => {
    open = resolve
  })
  return { opened, open }
}

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

  it("a compensation that keeps failing is retried, then resolves to stuck; retryStuck finishes it once fixed", async () => {
    let fixed = false
    let attempts = 0
    const saga = new SagaOrchestrator({ retryDelay: 1, compensationRetries: 2 })
      .addStep({
        name: "charge",
        action: async () => "ch_1",
        compensation: async () => {
          attempts++
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
    // The first attempt and its two retries.
    expect(attempts).toBe(3)
    fixed = true
    const done = await saga.retryStuck(stuck.sagaId)
    expect(done).toMatchObject({ status: "compensated", failedStep: "ship", compensated: ["charge"] })
    expect(attempts).toBe(4)
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

  it("resume while this orchestrator's execute of the saga is in flight rejects with SagaBusyError", async () => {
    const charging = gate()
    const replied = gate()
    const ledger = { balance: 100, events: [] as Array<string> }
    let calls = 0
    const saga = new SagaOrchestrator({ name: "order", owner: "node-1", retries: 0 })
      .addStep({
        name: "reserve",
        action: async () => "r",
        compensation: async () => void ledger.events.push("release")
      })
      .addStep({
        name: "charge",
        action: async () => {
          calls++
          charging.open()
          await replied.opened
          ledger.balance -= 10
          ledger.events.push("charged")
          return "tx-1"
        },
        compensation: async (ctx) => {
          if (ctx.completed) {
            ledger.balance += 10
            ledger.events.push("refund")
          }
        }
      })
    const first = saga.execute({}, { sagaId: "s-2" })
    await charging.opened
    await expect(saga.resume("s-2")).rejects.toBeInstanceOf(SagaBusyError)
    replied.open()
    expect(await first).toMatchObject({ status: "completed" })
    expect(calls).toBe(1)
    expect(ledger).toEqual({ balance: 90, events: ["charged"] })
  })

  it("two orchestrators configured with one owner do not drive one saga at once", async () => {
    const charging = gate()
    const replied = gate()
    let calls = 0
    const define = (o: SagaOrchestrator) =>
      o.addStep({
        name: "charge",
        action: async () => {
          calls++
          charging.open()
          await replied.opened
          return "tx-1"
        }
      })
    const a = define(new SagaOrchestrator({ name: "order", owner: "node-1" }))
    const b = define(new SagaOrchestrator({ name: "order", owner: "node-1", log: a.log }))
    const first = a.execute(null, { sagaId: "replicas-1" })
    await charging.opened
    await expect(b.resume("replicas-1")).rejects.toMatchObject({ _tag: "SagaBusyError" })
    await expect(b.retryStuck("replicas-1")).rejects.toMatchObject({ _tag: "SagaBusyError" })
    const owner = Option.getOrThrow(await Effect.runPromise(a.log.load("replicas-1"))).owner
    expect(owner).toMatch(/^node-1\/run-[0-9a-z]{16}$/)
    replied.open()
    expect(await first).toMatchObject({ status: "completed" })
    expect(calls).toBe(1)
  })

  it("rejects with the typed error itself, not a FiberFailure wrapper", async () => {
    const saga = new SagaOrchestrator().addStep({ name: "a", action: async () => 1 })
    await expect(saga.execute(null, { sagaId: "not a valid id" })).rejects.toBeInstanceOf(InvalidSagaError)
    await saga.execute(null, { sagaId: "taken-1" })
    await expect(saga.execute(null, { sagaId: "taken-1" })).rejects.toBeInstanceOf(SagaBusyError)
    await expect(saga.resume("missing-1")).rejects.toMatchObject({ _tag: "SagaNotFoundError" })
  })
})
