/**
 * The 2PC Promise facade's defects found by the 2026-12-07 review: each test failed on the code
 * before its fix.
 */
import { Effect, Layer } from "effect"
import { describe, expect, it } from "vitest"
import { TwoPhaseCoordinator, type PromiseParticipant } from "../src/Coordinator.js"
import { longTimer } from "../src/internal/concurrently.js"
import { LogError } from "../src/TransactionError.js"
import * as TransactionLog from "../src/TransactionLog.js"

const sleep = (ms: number) => new Promise<void>((resolve) => setTimeout(resolve, ms))

/** A Promise participant recording its calls; each method can be replaced. */
const participant = (name: string, overrides: Partial<PromiseParticipant> = {}) => {
  const calls: Array<string> = []
  const p: PromiseParticipant = {
    name,
    prepare: async () => {
      calls.push("prepare")
      return "prepared"
    },
    commit: async () => {
      calls.push("commit")
    },
    rollback: async () => {
      calls.push("rollback")
    },
    ...overrides
  }
  return { p, calls }
}

describe("TwoPhaseCoordinator: a lone Promise branch", () => {
  it("a commit that fails once is retried (it was left prepared: one phase, no decision, no retry)", async () => {
    const coordinator = new TwoPhaseCoordinator({ timeout: 5_000, log: "memory" })
    let failures = 1
    const { p, calls } = participant("bank-a", {
      commit: async () => {
        calls.push("commit")
        if (failures-- > 0) throw new Error("connection reset")
      }
    })
    await coordinator.registerParticipant(p)
    const result = await coordinator.executeTransaction([[p, "debit", { amount: 10 }]])
    expect(result.status).toBe("committed")
    expect(calls).toEqual(["prepare", "commit", "commit"])
    await coordinator.dispose()
  })

  it("a read-only lone branch reports its read-only vote", async () => {
    const coordinator = new TwoPhaseCoordinator({ log: "memory" })
    const { p, calls } = participant("bank-a", { prepare: async () => "read-only" })
    await coordinator.registerParticipant(p)
    const result = await coordinator.executeTransaction([[p, "read", {}]])
    expect(result.status).toBe("committed")
    expect(result.votes).toEqual([{ participant: "bank-a", vote: "read-only" }])
    expect(calls).toEqual([])
    await coordinator.dispose()
  })
})

describe("TwoPhaseCoordinator: registration", () => {
  it("a transaction started right after an unawaited registration waits for it", async () => {
    const coordinator = new TwoPhaseCoordinator({ log: "memory" })
    const a = participant("bank-a")
    const b = participant("bank-b")
    await coordinator.registerParticipant(a.p)
    const registering = coordinator.registerParticipant(b.p)
    const result = await coordinator.executeTransaction([
      [a.p, "debit", {}],
      [b.p, "credit", {}]
    ])
    expect(result.status).toBe("committed")
    await registering
    await coordinator.dispose()
  })

  it("a log whose set-up never ends fails the call with LogError by the timeout, and dispose ends", async () => {
    const hanging = Layer.effect(
      TransactionLog.TransactionLog,
      Effect.zipRight(Effect.never, TransactionLog.makeMemory)
    )
    const coordinator = new TwoPhaseCoordinator({ timeout: 300, log: hanging })
    const started = Date.now()
    const outcome = await Promise.race([
      coordinator.registerParticipant(participant("bank-a").p).then(
        () => "registered",
        (e: unknown) => e
      ),
      sleep(3_000).then(() => "still pending")
    ])
    expect(outcome).toBeInstanceOf(LogError)
    expect(Date.now() - started).toBeLessThan(2_000)
    const disposed = await Promise.race([
      coordinator.dispose().then(() => "disposed"),
      sleep(3_000).then(() => "hung")
    ])
    expect(disposed).toBe("disposed")
  })
})

describe("TwoPhaseCoordinator: dispose", () => {
  it("waits for the log's finalizer (its last flush), however short the timeout", async () => {
    let finalized = false
    const slowToClose = Layer.scoped(
      TransactionLog.TransactionLog,
      Effect.zipLeft(
        TransactionLog.makeMemory,
        Effect.addFinalizer(() =>
          Effect.delay(
            Effect.sync(() => {
              finalized = true
            }),
            "300 millis"
          )
        )
      )
    )
    const coordinator = new TwoPhaseCoordinator({ timeout: 100, log: slowToClose })
    await coordinator.registerParticipant(participant("bank-a").p)
    await coordinator.dispose()
    expect(finalized).toBe(true)
  })
})

describe("TwoPhaseCoordinator: work left after a result", () => {
  it("dispose waits for an abort's rollbacks, which go on past the deadline", async () => {
    const coordinator = new TwoPhaseCoordinator({ timeout: 200, log: "memory" })
    const a = participant("bank-a", { prepare: async () => ({ vote: "no", reason: "declined" }) })
    let rolledBack = false
    const b = participant("bank-b", {
      rollback: async () => {
        await sleep(500)
        rolledBack = true
      }
    })
    await coordinator.registerParticipant(a.p)
    await coordinator.registerParticipant(b.p)
    const result = await coordinator.executeTransaction([
      [a.p, "debit", {}],
      [b.p, "credit", {}]
    ])
    expect(result.status).toBe("aborted")
    expect(rolledBack).toBe(false)
    // Before: dispose resolved at once, and a caller ending its pools then cut the rollback off.
    await coordinator.dispose()
    expect(rolledBack).toBe(true)
  })

  it("with a timeout past 2^31 ms, dispose still waits for the rollback of a late yes", async () => {
    const coordinator = new TwoPhaseCoordinator({ timeout: 2 ** 31 + 1, prepareTimeout: 100, log: "memory" })
    const late = participant("bank-a", {
      prepare: async () => {
        await sleep(300)
        return "prepared"
      },
      rollback: async () => {
        late.calls.push("rollback")
      }
    })
    const other = participant("bank-b")
    await coordinator.registerParticipant(late.p)
    await coordinator.registerParticipant(other.p)
    const result = await coordinator.executeTransaction([
      [late.p, "debit", {}],
      [other.p, "credit", {}]
    ])
    expect(result.status).toBe("aborted")
    // Before: the wait's raw setTimeout overflowed to 1 ms, so dispose resolved before the late
    // yes was rolled back.
    await coordinator.dispose()
    expect(late.calls.filter((c) => c === "rollback").length).toBeGreaterThanOrEqual(2)
  })

  it("while dispose waits for a prepare that never answers, the process is kept alive; after, not", async () => {
    const timers = () => process.getActiveResourcesInfo().filter((r) => r === "Timeout").length
    const coordinator = new TwoPhaseCoordinator({ timeout: 200, log: "memory" })
    const hung = participant("bank-a", { prepare: () => new Promise(() => undefined) })
    const no = participant("bank-b", { prepare: async () => ({ vote: "no", reason: "declined" }) })
    await coordinator.registerParticipant(hung.p)
    await coordinator.registerParticipant(no.p)
    const result = await coordinator.executeTransaction([
      [hung.p, "debit", {}],
      [no.p, "credit", {}]
    ])
    expect(result.status).toBe("aborted")
    const idle = timers()
    const disposing = coordinator.dispose()
    // Only the settle bound (unref'd) held dispose's wait: the process could exit mid-`await`.
    expect(timers()).toBe(idle + 1)
    await disposing
    expect(timers()).toBe(idle)
  })

  it("the wait for a prepare that never answers does not keep the process alive", () => {
    const timers = () => process.getActiveResourcesInfo().filter((r) => r === "Timeout").length
    const before = timers()
    const cancel = longTimer(60_000, () => undefined, { unref: true })
    expect(timers()).toBe(before)
    cancel()
  })
})

describe("TwoPhaseCoordinator: a log's bug", () => {
  const buggy = (override: Partial<TransactionLog.TransactionLog["Type"]>) =>
    Layer.effect(
      TransactionLog.TransactionLog,
      Effect.map(TransactionLog.makeMemory, (log) => ({ ...log, direct: undefined, ...override }))
    )

  it("a completion that dies after every branch committed does not reject: committed", async () => {
    const coordinator = new TwoPhaseCoordinator({
      log: buggy({ complete: () => Effect.die(new Error("complete bug")) })
    })
    const a = participant("bank-a")
    const b = participant("bank-b")
    await coordinator.registerParticipant(a.p)
    await coordinator.registerParticipant(b.p)
    const result = await coordinator.executeTransaction([
      [a.p, "debit", {}],
      [b.p, "credit", {}]
    ])
    expect(result.status).toBe("committed")
    await coordinator.dispose()
  })

  it("a decision write that dies rejects with LogError, not the raw defect", async () => {
    const coordinator = new TwoPhaseCoordinator({
      log: buggy({ decide: () => Effect.die(new Error("decide bug")) })
    })
    const a = participant("bank-a")
    const b = participant("bank-b")
    await coordinator.registerParticipant(a.p)
    await coordinator.registerParticipant(b.p)
    const error = await coordinator
      .executeTransaction([
        [a.p, "debit", {}],
        [b.p, "credit", {}]
      ])
      .then(
        () => undefined,
        (e: unknown) => e
      )
    expect(error).toBeInstanceOf(LogError)
    expect((error as LogError).message).toContain("decide bug")
    await coordinator.dispose()
  })
})

describe("TwoPhaseCoordinator: callbacks that are plain functions", () => {
  it("a commit that returns nothing (not a Promise) commits", async () => {
    const coordinator = new TwoPhaseCoordinator({ log: "memory" })
    const commits: Array<string> = []
    const plain = {
      name: "bank-a",
      prepare: async () => true,
      commit: (txId: string) => {
        commits.push(txId)
      },
      rollback: () => undefined
    } as unknown as PromiseParticipant
    const other = participant("bank-b")
    await coordinator.registerParticipant(plain)
    await coordinator.registerParticipant(other.p)
    const result = await coordinator.executeTransaction([
      [plain, "debit", {}],
      [other.p, "credit", {}]
    ])
    expect(result.status).toBe("committed")
    expect(commits).toHaveLength(1)
    await coordinator.dispose()
  })
})

describe("PromiseParticipant's type", () => {
  it("takes the documented prepare(txId, operations, { signal }) (it failed to typecheck)", async () => {
    const typed: PromiseParticipant = {
      name: "typed",
      prepare: async (_txId, _operations, { signal }) => !signal.aborted,
      commit: async () => undefined,
      rollback: async () => undefined
    }
    const coordinator = new TwoPhaseCoordinator({ log: "memory" })
    await coordinator.registerParticipant(typed)
    expect((await coordinator.executeTransaction([[typed, "x", {}]])).status).toBe("committed")
    await coordinator.dispose()
  })
})
