/** Review of the Promise facades: calls that must settle, options that must be checked. */
import { Effect, Either, Layer } from "effect"
import { describe, expect, it } from "vitest"
import { type PromiseParticipant, TwoPhaseCoordinator } from "../src/Coordinator.js"
import { InvalidSagaError } from "../src/Saga.js"
import * as SagaLog from "../src/SagaLog.js"
import { SagaOrchestrator } from "../src/SagaOrchestrator.js"
import * as ThreePhaseCommit from "../src/ThreePhaseCommit.js"
import { ThreePhaseCoordinator } from "../src/ThreePhaseCoordinator.js"
import { ConfigurationError, InvalidTransactionError, LogError } from "../src/TransactionError.js"
import * as TransactionLog from "../src/TransactionLog.js"
import { debitCredit, registerAll } from "./support/coordinator.js"
import * as MemoryParticipant from "./support/MemoryParticipant.js"
import * as ThreePhaseMemory from "./support/ThreePhaseMemory.js"

/** Resolves to what `promise` settles with, or to `"still waiting"` after `ms`. */
const within = <A>(promise: Promise<A>, ms: number): Promise<A | "still waiting" | { rejected: unknown }> =>
  Promise.race([
    promise.catch((e: unknown) => ({ rejected: e })),
    new Promise<"still waiting">((resolve) => setTimeout(() => resolve("still waiting"), ms))
  ])

/** A memory 2PC participant whose `verify` never answers (a server that accepts and never replies). */
const silent2pc = async (name: string) => {
  const double = await Effect.runPromise(MemoryParticipant.make(name))
  return { ...double, participant: { ...double.participant, verify: Effect.never } }
}

describe("TwoPhaseCoordinator: a verify that never answers", () => {
  it("fails the registration after verifyTimeout with a ConfigurationError naming the participant", async () => {
    const coordinator = new TwoPhaseCoordinator({ timeout: 5_000, verifyTimeout: 100, log: "memory" })
    const silent = await silent2pc("bank-a")
    // Before: registerParticipant never settled.
    const registered = await within(coordinator.registerParticipant(silent.participant), 2_000)
    expect(registered).toMatchObject({ rejected: expect.any(ConfigurationError) })
    const error = (registered as { rejected: ConfigurationError }).rejected
    expect(error.participant).toBe("bank-a")
    expect(error.message).toContain("verify did not answer within 100ms")
    // Removed: a transaction naming it is refused, nothing sent.
    await expect(coordinator.executeTransaction([[silent.participant, "debit", {}]])).rejects.toThrow(
      /unknown participant "bank-a"/
    )
    expect(await Effect.runPromise(silent.calls)).toEqual([])
    expect(await within(coordinator.dispose(), 2_000)).toBeUndefined()
  }, 5_000)

  it("does not hold transactions that do not use the participant being verified", async () => {
    const coordinator = new TwoPhaseCoordinator({ timeout: 5_000, verifyTimeout: 1_500, log: "memory" })
    const silent = await silent2pc("bank-a")
    const b = await Effect.runPromise(MemoryParticipant.make("bank-b"))
    const c = await Effect.runPromise(MemoryParticipant.make("bank-c"))
    const pending = coordinator.registerParticipant(silent.participant).catch((e: unknown) => e)
    await registerAll(coordinator, b.participant, c.participant)
    // Before: every transaction waited for every registration's verify.
    const result = await within(debitCredit(coordinator, b.participant, c.participant), 500)
    expect(result).toMatchObject({ status: "committed" })
    expect(await pending).toBeInstanceOf(ConfigurationError)
    await coordinator.dispose()
  }, 5_000)

  it("makes a transaction that names the participant wait for its verify, then refuse it", async () => {
    const coordinator = new TwoPhaseCoordinator({ timeout: 5_000, verifyTimeout: 100, log: "memory" })
    const silent = await silent2pc("bank-a")
    const pending = coordinator.registerParticipant(silent.participant).catch((e: unknown) => e)
    const result = await within(coordinator.executeTransaction([["bank-a", "debit", {}]]), 2_000)
    expect(result).toMatchObject({ rejected: expect.any(InvalidTransactionError) })
    expect(await pending).toBeInstanceOf(ConfigurationError)
    await coordinator.dispose()
  }, 5_000)

  it("refuses a verifyTimeout that is not a positive duration at construction", () => {
    expect(() => new TwoPhaseCoordinator({ verifyTimeout: 0, log: "memory" })).toThrow(
      InvalidTransactionError
    )
    expect(() => new TwoPhaseCoordinator({ verifyTimeout: Number.NaN, log: "memory" })).toThrow(
      /verifyTimeout must be a positive duration/
    )
  })
})

describe("TwoPhaseCoordinator: Promise participants", () => {
  it("refuses at registration a Promise participant without prepare, commit or rollback functions", async () => {
    const coordinator = new TwoPhaseCoordinator({ timeout: 5_000, log: "memory" })
    // A typo (`comit`): before, it registered, prepared its branch, and the commit then failed for
    // ever (commit-pending, the branch left prepared).
    const typo = {
      name: "bank-a",
      prepare: async () => "prepared" as const,
      comit: async () => undefined,
      rollback: async () => undefined
    } as unknown as PromiseParticipant
    await expect(coordinator.registerParticipant(typo)).rejects.toThrow(
      /participant bank-a: commit must be a function/
    )
    await coordinator.dispose()
  })

  it("dispose waits for the rollback of a prepare that answered yes after the coordinator gave up", async () => {
    const coordinator = new TwoPhaseCoordinator({ timeout: 100, log: "memory" })
    let state: "none" | "prepared" | "rolled back" = "none"
    const late: PromiseParticipant = {
      name: "bank-a",
      prepare: async () => {
        // Answers 50 ms after the coordinator gave up, within the `timeout` dispose waits for it.
        await new Promise((resolve) => setTimeout(resolve, 150))
        state = "prepared"
        return "prepared"
      },
      commit: async () => undefined,
      rollback: async () => {
        if (state === "prepared") state = "rolled back"
      }
    }
    const quick = await Effect.runPromise(MemoryParticipant.make("bank-b"))
    await registerAll(coordinator, late, quick.participant)
    const result = await debitCredit(coordinator, late, quick.participant)
    expect(result.status).toBe("aborted")
    await coordinator.dispose()
    // Before: dispose resolved at once, and a process exiting then left the branch prepared.
    expect(state).toBe("rolled back")
  })

  it("dispose stops waiting for a prepare the coordinator gave up on after timeout", async () => {
    const coordinator = new TwoPhaseCoordinator({ timeout: 100, log: "memory" })
    const never: PromiseParticipant = {
      name: "bank-a",
      prepare: () => new Promise(() => undefined),
      commit: async () => undefined,
      rollback: async () => undefined
    }
    const quick = await Effect.runPromise(MemoryParticipant.make("bank-b"))
    await registerAll(coordinator, never, quick.participant)
    expect((await debitCredit(coordinator, never, quick.participant)).status).toBe("aborted")
    expect(await within(coordinator.dispose(), 1_000)).toBeUndefined()
  }, 5_000)
})

describe("TwoPhaseCoordinator: its log", () => {
  it("a log that cannot be set up fails that call with its error, and the next call sets it up again", async () => {
    // Found by a review (2026-12-07): the runtime kept the failed build, so every later call
    // rejected with the first error (a log database unreachable at start-up) although it came back.
    let builds = 0
    const flaky = Layer.effect(
      TransactionLog.TransactionLog,
      Effect.suspend(() =>
        ++builds === 1
          ? Effect.fail(new LogError({ operation: "migrate", reason: "connect ECONNREFUSED" }))
          : TransactionLog.makeMemory
      )
    )
    const coordinator = new TwoPhaseCoordinator({ timeout: 5_000, log: flaky })
    const a = await Effect.runPromise(MemoryParticipant.make("bank-a"))
    const b = await Effect.runPromise(MemoryParticipant.make("bank-b"))
    await expect(coordinator.registerParticipant(a.participant)).rejects.toBeInstanceOf(LogError)
    await registerAll(coordinator, a.participant, b.participant)
    const result = await debitCredit(coordinator, a.participant, b.participant)
    expect(result.status).toBe("committed")
    expect(builds).toBe(2)
    await coordinator.dispose()
  })

  it("refuses an invalid namespace at construction, saying the rule", () => {
    // Before: accepted, then every executeTransaction refused "invalid namespace".
    expect(() => new TwoPhaseCoordinator({ timeout: 1_000, log: "memory", namespace: "Bad_NS" })).toThrow(
      /invalid namespace "Bad_NS": use 1-16 characters of \[a-z0-9\]/
    )
  })

  it('refuses a log option that is neither a Layer nor "memory" at construction', () => {
    // Before: accepted (and reported durable); every call then failed with "Not a valid effect".
    for (const log of ["disk", {}, 42]) {
      expect(() => new TwoPhaseCoordinator({ timeout: 1_000, log: log as unknown as "memory" })).toThrow(
        InvalidTransactionError
      )
    }
  })
})

describe("TwoPhaseCoordinator: a No vote without a reason", () => {
  it('is reported as the participant\'s No, not as "undefined"', async () => {
    const coordinator = new TwoPhaseCoordinator({ timeout: 5_000, log: "memory" })
    const voter = (name: string, answer: unknown): PromiseParticipant => ({
      name,
      prepare: async () => answer as "prepared",
      commit: async () => {},
      rollback: async () => {}
    })
    const yes = voter("bank-a", "prepared")
    const no = voter("bank-b", { vote: "no" })
    await coordinator.registerParticipant(yes)
    await coordinator.registerParticipant(no)
    const result = await coordinator.executeTransaction([
      [yes, "debit", {}],
      [no, "credit", {}]
    ])
    expect(result.status).toBe("aborted")
    expect(result.reason).toBe("bank-b: participant voted no")
    await coordinator.dispose()
  })
})

describe("ThreePhaseCoordinator: verify and mode", () => {
  it("fails the registration of a member whose verify never answers after verifyTimeout", async () => {
    const coordinator = new ThreePhaseCoordinator({ timeout: 2_000, verifyTimeout: 100 })
    const member = await Effect.runPromise(ThreePhaseMemory.make("bank-a"))
    const silent = { ...member.participant, verify: Effect.never }
    const registered = await within(coordinator.registerParticipant(silent), 2_000)
    expect(registered).toMatchObject({
      rejected: { _tag: "ConfigurationError", participant: "bank-a" }
    })
    await expect(coordinator.executeTransaction([["bank-a", "debit", 1]])).rejects.toThrow(
      /unknown participant "bank-a"/
    )
    expect(await within(coordinator.dispose(), 2_000)).toBeUndefined()
  }, 5_000)

  it("refuses a mode it does not know at construction, saying what was given and what is accepted", () => {
    // Before: accepted, and every transaction then failed with "Vc=NaN, Va=NaN: quorum sizes must be integers".
    const mode = "Quorum" as unknown as ThreePhaseCommit.Mode
    expect(() => new ThreePhaseCoordinator({ mode })).toThrow(
      'unknown 3PC mode "Quorum" (did you mean "quorum"?): use "classic", "quorum" or { commit, abort } quorum sizes'
    )
    expect(() => new ThreePhaseCoordinator({ mode: "paxos" as unknown as ThreePhaseCommit.Mode })).toThrow(
      /unknown 3PC mode "paxos": use "classic", "quorum"/
    )
    expect(
      () => new ThreePhaseCoordinator({ mode: { commit: 2 } as unknown as ThreePhaseCommit.Mode })
    ).toThrow(/quorum sizes must be integers, got \{ commit: 2, abort: undefined \}/)
    expect(() => new ThreePhaseCoordinator({ mode: { commit: 2, abort: 2 } })).not.toThrow()
  })

  it("refuses startAgents with a mode it does not know, starting no agent", async () => {
    const coordinator = new ThreePhaseCoordinator({ timeout: 2_000 })
    const member = await Effect.runPromise(ThreePhaseMemory.make("bank-a"))
    await coordinator.registerParticipant(member.participant)
    // Before: the agents started, each to fail on the first transaction it watched.
    await expect(
      coordinator.startAgents({ mode: "Quorum" as unknown as ThreePhaseCommit.Mode })
    ).rejects.toMatchObject({ _tag: "InvalidQuorumError", reason: expect.stringContaining('"Quorum"') })
    await coordinator.dispose()
  })

  it("says what mode was given and what is accepted when ThreePhaseCommit.run refuses it", async () => {
    const [a, b] = await Effect.runPromise(
      Effect.forEach(["bank-a", "bank-b"], (name) => ThreePhaseMemory.make(name))
    )
    const error = await Effect.runPromise(
      ThreePhaseCommit.run(
        [a!, b!].map((m) => ThreePhaseCommit.branch(m.participant, null)),
        { mode: "Quorum" as unknown as ThreePhaseCommit.Mode }
      ).pipe(Effect.flip)
    )
    expect(error._tag).toBe("InvalidQuorumError")
    expect(error.message).toBe(
      'invalid 3PC mode: unknown 3PC mode "Quorum" (did you mean "quorum"?): use "classic", "quorum" or { commit, abort } quorum sizes'
    )
    expect(await Effect.runPromise(a!.calls)).toEqual([])
    const sizes = ThreePhaseCommit.resolveMode({ commit: 2, abort: 1 }, 3)
    expect(Either.isLeft(sizes) && sizes.left.message).toBe(
      "invalid quorum (V=3, Vc=2, Va=1): Vc + Va must exceed V, or a commit quorum and an abort quorum could form on two sides of a partition"
    )
  })
})

describe("SagaOrchestrator: calls that must settle, steps that must be steps", () => {
  it("rejects execute with LogError when the log stops answering as the saga ends, within leaseFor", async () => {
    const memory = await Effect.runPromise(SagaLog.makeMemory)
    let ended = false
    // A log that stops answering once the saga has ended (a partition right after the last write).
    const log: SagaLog.SagaLog["Type"] = {
      ...memory,
      append: (record, owner) =>
        memory.append(record, owner).pipe(
          Effect.tap(() =>
            Effect.sync(() => {
              if (record._tag === "SagaEnded") ended = true
            })
          )
        ),
      load: (sagaId) => (ended ? Effect.never : memory.load(sagaId))
    }
    const saga = new SagaOrchestrator({ log, leaseFor: 200 }).addStep({
      name: "charge",
      action: async () => 1
    })
    // Before: the facade's read-back of the outputs was unbounded and execute never settled.
    const result = await within(saga.execute(), 2_000)
    expect(ended).toBe(true)
    expect(result).toMatchObject({ rejected: { _tag: "LogError", operation: "load" } })
  }, 5_000)

  it("refuses at addStep an action or compensation that is not a function", () => {
    const saga = new SagaOrchestrator()
    // Before: accepted, and each execute then ran the saga into a business failure ("spec.action is
    // not a function") and compensated the steps before it.
    expect(() =>
      saga.addStep({ name: "charge", action: "charge" as unknown as () => Promise<void> })
    ).toThrow("step charge: action must be a function, got string")
    expect(() =>
      saga.addParallel([
        { name: "a", action: async () => 1 },
        { name: "b", action: async () => 1, compensation: {} as unknown as () => Promise<void> }
      ])
    ).toThrow(InvalidSagaError)
    expect(() => saga.addStep({ name: "ok", action: async () => 1 })).not.toThrow()
  })
})
