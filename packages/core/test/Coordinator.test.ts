import { describe, expect, it } from "vitest"
import { Effect } from "effect"
import { TwoPhaseCoordinator, type PromiseParticipant } from "../src/Coordinator.js"
import { ConfigurationError, InvalidTransactionError } from "../src/TransactionError.js"
import { debitCredit, registerAll } from "./support/coordinator.js"
import * as MemoryParticipant from "./support/MemoryParticipant.js"

const promiseParticipant = (name: string, answer: "prepared" | "no" = "prepared") => {
  const seen: Array<string> = []
  const participant: PromiseParticipant = {
    name,
    prepare: async (_txId, operations) => {
      seen.push(
        `prepare ${operations.map((o) => `${String(o.operation)}(${JSON.stringify(o.params)})`).join(",")}`
      )
      return answer === "no" ? { vote: "no", reason: "card declined" } : "prepared"
    },
    commit: async () => {
      seen.push("commit")
    },
    rollback: async () => {
      seen.push("rollback")
    }
  }
  return { participant, seen }
}

describe("TwoPhaseCoordinator (Promise facade)", () => {
  it("runs several operations of one participant in its one branch, in order", async () => {
    const coordinator = new TwoPhaseCoordinator({ timeout: 5_000 })
    const a = promiseParticipant("bank-a")
    const b = promiseParticipant("bank-b")
    await registerAll(coordinator, a.participant, b.participant)
    const result = await coordinator.executeTransaction([
      [a.participant, "debit", { amount: 10 }],
      [b.participant, "credit", { amount: 10 }],
      [a.participant, "fee", { amount: 1 }]
    ])
    expect(result.committed).toBe(true)
    expect(result.status).toBe("committed")
    expect(result.txId).toMatch(/^[0-9A-Z]{26}$/)
    expect(result.votes).toEqual([
      { participant: "bank-a", vote: "prepared" },
      { participant: "bank-b", vote: "prepared" }
    ])
    expect(a.seen).toEqual(['prepare debit({"amount":10}),fee({"amount":1})', "commit"])
    await coordinator.dispose()
  })

  /** A Promise participant with a scripted prepare delay and rollbacks that may never answer. */
  const scripted = (
    name: string,
    script: { prepareMs?: number; vote?: "no"; rollbackHangs?: boolean } = {}
  ) => {
    const state = {
      value: "none" as "none" | "prepared" | "committed" | "rolled back",
      calls: [] as Array<string>
    }
    let signal: AbortSignal | undefined
    const participant: PromiseParticipant = {
      name,
      prepare: async (_txId, _operations, options) => {
        signal = options?.signal
        state.calls.push("prepare")
        if (script.prepareMs !== undefined)
          await new Promise((resolve) => setTimeout(resolve, script.prepareMs))
        if (script.vote === "no") return { vote: "no", reason: "insufficient funds" }
        state.value = "prepared"
        state.calls.push("prepared")
        return "prepared"
      },
      commit: async () => {
        state.calls.push("commit")
        state.value = "committed"
      },
      rollback: async () => {
        state.calls.push("rollback")
        if (script.rollbackHangs) return new Promise<void>(() => undefined)
        if (state.value === "prepared") state.value = "rolled back"
      }
    }
    return { participant, state, signal: () => signal }
  }
  const sleep = (ms: number) => new Promise((resolve) => setTimeout(resolve, ms))

  it("answers an abort within its timeout even when a rollback does not answer", async () => {
    const coordinator = new TwoPhaseCoordinator({ timeout: 150 })
    const a = scripted("bank-a", { rollbackHangs: true })
    const b = scripted("bank-b", { vote: "no" })
    await registerAll(coordinator, a.participant, b.participant)
    const started = Date.now()
    const result = await debitCredit(coordinator, a.participant, b.participant)
    // Before: it waited for the rollback's own 5 s bound.
    expect(result.status).toBe("aborted")
    expect(Date.now() - started).toBeLessThan(1_000)
    expect(a.state.calls).toContain("rollback")
    // dispose waits for that rollback, bounded by its own 5 s (callTimeout), not for ever.
    const disposing = Date.now()
    await coordinator.dispose()
    expect(Date.now() - disposing).toBeLessThan(7_000)
  }, 15_000)

  it("rolls back a prepare that answers yes after the coordinator gave up on it (two branches and one)", async () => {
    const coordinator = new TwoPhaseCoordinator({ timeout: 100 })
    const slow = scripted("bank-a", { prepareMs: 250 })
    const quick = scripted("bank-b")
    await registerAll(coordinator, slow.participant, quick.participant)
    const two = await debitCredit(coordinator, slow.participant, quick.participant)
    expect(two.status).toBe("aborted")
    expect(slow.signal()?.aborted).toBe(true)
    await sleep(400)
    // The coordinator's rollback came before the late PREPARE; the late yes was rolled back too.
    expect(slow.state.value).toBe("rolled back")
    expect(quick.state.value).toBe("rolled back")

    const alone = scripted("bank-c", { prepareMs: 250 })
    await coordinator.registerParticipant(alone.participant)
    const one = await coordinator.executeTransaction([[alone.participant, "debit", {}]]).then(
      (r) => r.status,
      (e: unknown) => (e as { _tag?: string })._tag
    )
    // A lone Promise branch takes both phases: a prepare that timed out is an abort, known at
    // once (it was reported in doubt, as if its commit might have been sent).
    expect(one).toBe("aborted")
    await sleep(400)
    expect(alone.state.value).toBe("rolled back")
    expect(alone.state.calls.filter((c) => c !== "rollback")).toEqual(["prepare", "prepared"])
    expect(alone.state.calls.at(-1)).toBe("rollback")
    await coordinator.dispose()
  })

  it("resolves an abort with committed false, the votes and the reason", async () => {
    const coordinator = new TwoPhaseCoordinator()
    const a = promiseParticipant("orders")
    const b = promiseParticipant("payments", "no")
    await registerAll(coordinator, a.participant, b.participant)
    const result = await coordinator.executeTransaction([
      ["orders", "create", {}],
      ["payments", "charge", {}]
    ])
    expect(result.committed).toBe(false)
    expect(result.reason).toBe("payments: card declined")
    expect(result.votes[1]).toEqual({ participant: "payments", vote: "no", reason: "card declined" })
    expect(a.seen).toEqual(["prepare create({})", "rollback"])
    await coordinator.dispose()
  })

  it("rejects empty operations, unknown participants and duplicate names with typed errors", async () => {
    const coordinator = new TwoPhaseCoordinator()
    const a = promiseParticipant("bank-a")
    const stranger = promiseParticipant("bank-x")
    await coordinator.registerParticipant(a.participant)
    await expect(
      coordinator.registerParticipant(promiseParticipant("bank-a").participant)
    ).rejects.toBeInstanceOf(InvalidTransactionError)
    await expect(
      coordinator.registerParticipant(promiseParticipant("bad'name").participant)
    ).rejects.toBeInstanceOf(InvalidTransactionError)
    await expect(coordinator.executeTransaction([])).rejects.toBeInstanceOf(InvalidTransactionError)
    await expect(coordinator.executeTransaction([[stranger.participant, "x", {}]])).rejects.toThrow(
      /unknown participant "bank-x"/
    )
    expect(a.seen).toEqual([])
    expect(stranger.seen).toEqual([])
    await coordinator.dispose()
  })

  it("surfaces a participant's configuration error at registration, before any work", async () => {
    const coordinator = new TwoPhaseCoordinator()
    const double = await Effect.runPromise(MemoryParticipant.make("bank-a"))
    const misconfigured = {
      ...double.participant,
      verify: Effect.fail(
        new ConfigurationError({
          participant: "bank-a",
          reason: "max_prepared_transactions is 0",
          fix: "ALTER SYSTEM SET max_prepared_transactions = 64 and restart"
        })
      )
    }
    await expect(coordinator.registerParticipant(misconfigured)).rejects.toBeInstanceOf(ConfigurationError)
    await expect(coordinator.executeTransaction([[misconfigured, "x", {}]])).rejects.toBeInstanceOf(
      InvalidTransactionError
    )
    expect(await Effect.runPromise(double.calls)).toEqual([])
    await coordinator.dispose()
  })

  it("drives core participants and recovers through the same facade", async () => {
    const coordinator = new TwoPhaseCoordinator({ timeout: "5 seconds" })
    const a = await Effect.runPromise(MemoryParticipant.make("bank-a"))
    const b = await Effect.runPromise(MemoryParticipant.make("bank-b"))
    await registerAll(coordinator, a.participant, b.participant)
    const result = await coordinator.executeTransaction([
      [a.participant, "debit", 5],
      [b.participant, "credit", 5]
    ])
    expect(result.committed).toBe(true)
    expect(await Effect.runPromise(a.work)).toEqual([[{ operation: "debit", params: 5 }]])
    const report = await coordinator.recover({ orphanAfter: 0 })
    expect(report.unresolved).toEqual([])
    await coordinator.dispose()
  })
  it("turns a participant refusing its operations into a typed error, not a defect", async () => {
    const coordinator = new TwoPhaseCoordinator()
    const double = await Effect.runPromise(MemoryParticipant.make("bank-a"))
    const picky = {
      ...double.participant,
      fromOperations: () => {
        throw new Error("unknown operation teleport")
      }
    }
    await coordinator.registerParticipant(picky)
    await expect(coordinator.executeTransaction([[picky, "teleport", {}]])).rejects.toThrow(
      "bank-a refused its operations: unknown operation teleport"
    )
    expect(await Effect.runPromise(double.calls)).toEqual([])
    await coordinator.dispose()
  })
})
