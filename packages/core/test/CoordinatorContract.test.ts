/**
 * The Promise facade's contract as a production user relies on it: what `timeout` bounds, what
 * each outcome resolves or rejects with, registration, concurrency, the default log, and dispose.
 */
import { Effect, Layer } from "effect"
import { afterEach, describe, expect, it, vi } from "vitest"
import { type PromiseParticipant, TwoPhaseCoordinator } from "../src/Coordinator.js"
import { InvalidTransactionError, LogError } from "../src/TransactionError.js"
import { debitCredit, registerAll } from "./support/coordinator.js"
import * as TransactionLog from "../src/TransactionLog.js"

/** A Promise participant that records its calls; each call can be delayed or never answer. */
const recording = (
  name: string,
  script: { prepareMs?: number; commitHangs?: boolean } = {}
): { participant: PromiseParticipant; calls: Array<string> } => {
  const calls: Array<string> = []
  const participant: PromiseParticipant = {
    name,
    prepare: async (txId) => {
      calls.push(`prepare ${txId}`)
      if (script.prepareMs !== undefined) await new Promise((r) => setTimeout(r, script.prepareMs))
      return "prepared"
    },
    commit: async (txId) => {
      calls.push(`commit ${txId}`)
      if (script.commitHangs) return new Promise<void>(() => undefined)
    },
    rollback: async (txId) => {
      calls.push(`rollback ${txId}`)
    }
  }
  return { participant, calls }
}

/** A memory log whose release is recorded in `events`. */
const observedLog = (events: Array<string>) =>
  Layer.scoped(
    TransactionLog.TransactionLog,
    Effect.acquireRelease(TransactionLog.makeMemory, () => Effect.sync(() => events.push("log released")))
  )

const rejection = (promise: Promise<unknown>): Promise<unknown> =>
  promise.then(
    (value) => ({ resolved: value }),
    (e: unknown) => e
  )

afterEach(() => {
  vi.restoreAllMocks()
})

describe("TwoPhaseCoordinator contract", () => {
  it("keeps a registered participant usable after a second registration of it was refused", async () => {
    const coordinator = new TwoPhaseCoordinator({ timeout: 5_000, log: "memory" })
    const a = recording("bank-a")
    const b = recording("bank-b")
    await registerAll(coordinator, a.participant, b.participant)
    // A retried start-up registers again: refused as a duplicate...
    await expect(coordinator.registerParticipant(a.participant)).rejects.toBeInstanceOf(
      InvalidTransactionError
    )
    // ...and the participant registered first still takes part.
    const result = await debitCredit(coordinator, a.participant, b.participant)
    expect(result.status).toBe("committed")
    await coordinator.dispose()
  })

  it("names the clash when an operation passes a different object under a registered name", async () => {
    const coordinator = new TwoPhaseCoordinator({ timeout: 5_000, log: "memory" })
    const a = recording("bank-a")
    await coordinator.registerParticipant(a.participant)
    const impostor = recording("bank-a")
    await expect(coordinator.executeTransaction([[impostor.participant, "debit", {}]])).rejects.toThrow(
      /another participant named "bank-a" is registered/
    )
    expect(impostor.calls).toEqual([])
    await coordinator.dispose()
  })

  it("runs concurrent transactions on one coordinator independently", async () => {
    const coordinator = new TwoPhaseCoordinator({ timeout: 5_000, log: "memory" })
    const a = recording("bank-a", { prepareMs: 5 })
    const b = recording("bank-b", { prepareMs: 5 })
    await registerAll(coordinator, a.participant, b.participant)
    const results = await Promise.all(
      Array.from({ length: 50 }, () =>
        coordinator.executeTransaction([
          [a.participant, "debit", {}],
          [b.participant, "credit", {}]
        ])
      )
    )
    expect(results.every((r) => r.status === "committed")).toBe(true)
    const txIds = new Set(results.map((r) => r.txId))
    expect(txIds.size).toBe(50)
    for (const txId of txIds) {
      expect(a.calls).toEqual(expect.arrayContaining([`prepare ${txId}`, `commit ${txId}`]))
      expect(b.calls).toEqual(expect.arrayContaining([`prepare ${txId}`, `commit ${txId}`]))
    }
    await coordinator.dispose()
  })

  it("bounds the whole transaction by timeout: a commit that never answers resolves as commit-pending", async () => {
    const coordinator = new TwoPhaseCoordinator({ timeout: 300, log: "memory" })
    const a = recording("bank-a")
    const b = recording("bank-b", { commitHangs: true })
    await registerAll(coordinator, a.participant, b.participant)
    const started = Date.now()
    const result = await debitCredit(coordinator, a.participant, b.participant)
    expect(Date.now() - started).toBeLessThan(1_000)
    // Decided commit: never reported as failed or aborted.
    expect(result.committed).toBe(true)
    expect(result.status).toBe("commit-pending")
    expect(result.pending).toEqual(["bank-b"])
    await coordinator.dispose()
  })

  it("lets a prepare use the whole timeout, as documented (no hidden 10 s cap per prepare)", async () => {
    vi.useFakeTimers()
    try {
      const coordinator = new TwoPhaseCoordinator({ timeout: 60_000, log: "memory" })
      const a = recording("bank-a", { prepareMs: 12_000 })
      const b = recording("bank-b")
      await registerAll(coordinator, a.participant, b.participant)
      const pending = coordinator.executeTransaction([
        [a.participant, "debit", {}],
        [b.participant, "credit", {}]
      ])
      await vi.advanceTimersByTimeAsync(13_000)
      const result = await pending
      expect(result.reason).toBeUndefined()
      expect(result.status).toBe("committed")
      await coordinator.dispose()
    } finally {
      vi.useRealTimers()
    }
  })

  it("rejects a timeout that is not a positive duration when it is constructed", () => {
    for (const timeout of [0, -1, Number.NaN]) {
      expect(() => new TwoPhaseCoordinator({ timeout, log: "memory" })).toThrow(InvalidTransactionError)
    }
    expect(() => new TwoPhaseCoordinator({ timeout: 1_000, prepareTimeout: 0, log: "memory" })).toThrow(
      /prepareTimeout/
    )
  })

  it("rejects with the log's typed LogError, a real Error, when the commit decision cannot be written", async () => {
    const failing = Layer.effect(
      TransactionLog.TransactionLog,
      Effect.map(TransactionLog.makeMemory, (log) => ({
        ...log,
        decide: (record: TransactionLog.DecisionRecord) =>
          Effect.fail(new LogError({ operation: "decide", txId: record.txId, reason: "disk full" }))
      }))
    )
    const coordinator = new TwoPhaseCoordinator({ timeout: 200, log: failing })
    const a = recording("bank-a")
    const b = recording("bank-b")
    await registerAll(coordinator, a.participant, b.participant)
    const error = await rejection(
      coordinator.executeTransaction([
        [a.participant, "debit", {}],
        [b.participant, "credit", {}]
      ])
    )
    expect(error).toBeInstanceOf(Error)
    expect(error).toBeInstanceOf(LogError)
    expect((error as LogError)._tag).toBe("LogError")
    expect((error as LogError).message).toMatch(/^log decide for [0-9A-Z]{26} failed: disk full$/)
    await coordinator.dispose()
  })

  it("bounds the commit decision's log write by timeout: a log that never answers rejects with LogError", async () => {
    const hanging = Layer.effect(
      TransactionLog.TransactionLog,
      Effect.map(TransactionLog.makeMemory, (log) => ({ ...log, decide: () => Effect.never }))
    )
    const coordinator = new TwoPhaseCoordinator({ timeout: 200, log: hanging })
    const a = recording("bank-a")
    const b = recording("bank-b")
    await registerAll(coordinator, a.participant, b.participant)
    const started = Date.now()
    const outcome = await Promise.race([
      rejection(
        coordinator.executeTransaction([
          [a.participant, "debit", {}],
          [b.participant, "credit", {}]
        ])
      ),
      new Promise((resolve) => setTimeout(() => resolve("still waiting after 3 s"), 3_000))
    ])
    expect(outcome).toBeInstanceOf(LogError)
    expect((outcome as LogError).message).toMatch(/may or may not have been written/)
    expect(Date.now() - started).toBeLessThan(1_000)
    await coordinator.dispose()
  })

  it("says so when the decision log defaults to memory, and is quiet when it is chosen explicitly", async () => {
    const printed: Array<string> = []
    vi.spyOn(console, "log").mockImplementation((...args: Array<unknown>) => {
      printed.push(args.map(String).join(" "))
    })
    const implicit = new TwoPhaseCoordinator({ timeout: 1_000 })
    expect(implicit.durable).toBe(false)
    expect(printed.join("\n")).toMatch(/level=WARN.*kept in memory.*choose memory knowingly/)
    printed.length = 0
    const explicit = new TwoPhaseCoordinator({ timeout: 1_000, log: "memory" })
    expect(explicit.durable).toBe(false)
    const durable = new TwoPhaseCoordinator({ timeout: 1_000, log: TransactionLog.layerMemory })
    expect(durable.durable).toBe(true)
    expect(printed).toEqual([])
    await Promise.all([implicit.dispose(), explicit.dispose(), durable.dispose()])
  })

  it("waits for transactions in flight before it releases the log on dispose", async () => {
    const events: Array<string> = []
    const coordinator = new TwoPhaseCoordinator({ timeout: 5_000, log: observedLog(events) })
    const a = recording("bank-a", { prepareMs: 100 })
    const b = recording("bank-b")
    await registerAll(coordinator, a.participant, b.participant)
    const inFlight = coordinator
      .executeTransaction([
        [a.participant, "debit", {}],
        [b.participant, "credit", {}]
      ])
      .then((r) => {
        events.push(`transaction ${r.status}`)
        return r
      })
    await new Promise((r) => setTimeout(r, 20))
    const disposed = coordinator.dispose()
    await disposed
    expect(events).toEqual(["transaction committed", "log released"])
    expect((await inFlight).status).toBe("committed")
    // Disposing twice is harmless.
    await coordinator.dispose()
    expect(events).toEqual(["transaction committed", "log released"])
  })

  it("rejects every call after dispose with a typed CoordinatorDisposedError, sending nothing", async () => {
    const coordinator = new TwoPhaseCoordinator({ timeout: 5_000, log: "memory" })
    const a = recording("bank-a")
    const b = recording("bank-b")
    await registerAll(coordinator, a.participant, b.participant)
    await coordinator.dispose()
    const errors = await Promise.all(
      [
        coordinator.executeTransaction([
          [a.participant, "debit", {}],
          [b.participant, "credit", {}]
        ]),
        coordinator.registerParticipant(recording("bank-c").participant),
        coordinator.recover()
      ].map(rejection)
    )
    for (const error of errors) {
      expect(error).toBeInstanceOf(Error)
      expect((error as { _tag?: string })._tag).toBe("CoordinatorDisposedError")
      expect((error as Error).message).toMatch(/disposed/)
    }
    expect(a.calls).toEqual([])
    expect(b.calls).toEqual([])
  })
})
