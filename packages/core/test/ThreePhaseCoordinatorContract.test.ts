/**
 * The 3PC Promise facade's contract, checked for the defects fixed in the 2PC facade: registration,
 * the error for a clashing name, what `timeout` bounds and refuses, and dispose.
 */
import { Effect } from "effect"
import { describe, expect, it } from "vitest"
import type * as ThreePhaseCommit from "../src/ThreePhaseCommit.js"
import { ThreePhaseCoordinator } from "../src/ThreePhaseCoordinator.js"
import * as ThreePhaseMemory from "./support/ThreePhaseMemory.js"

const members = (...names: ReadonlyArray<[string, ThreePhaseMemory.Behaviour?]>) =>
  Effect.runPromise(Effect.forEach(names, ([name, behaviour]) => ThreePhaseMemory.make(name, behaviour)))

const rejection = (promise: Promise<unknown>): Promise<unknown> =>
  promise.then(
    (value) => ({ resolved: value }),
    (e: unknown) => e
  )

describe("ThreePhaseCoordinator contract", () => {
  it("keeps a registered participant usable after a second registration of it was refused", async () => {
    const [a, b] = await members(["bank-a"], ["bank-b"])
    const coordinator = new ThreePhaseCoordinator({ timeout: 2_000 })
    await coordinator.registerParticipant(a!.participant)
    await coordinator.registerParticipant(b!.participant)
    await expect(coordinator.registerParticipant(a!.participant)).rejects.toMatchObject({
      _tag: "InvalidTransactionError",
      reason: expect.stringContaining("already registered")
    })
    const result = await coordinator.executeTransaction([
      [a!.participant, "debit", 1],
      [b!.participant, "credit", 1]
    ])
    expect(result.status).toBe("committed")
    await coordinator.dispose()
  })

  it("names the clash when an operation passes a different object under a registered name", async () => {
    const [a, b, impostor] = await members(["bank-a"], ["bank-b"], ["bank-a"])
    const coordinator = new ThreePhaseCoordinator({ timeout: 2_000 })
    await coordinator.registerParticipant(a!.participant)
    await coordinator.registerParticipant(b!.participant)
    await expect(
      coordinator.executeTransaction([
        [impostor!.participant, "debit", 1],
        [b!.participant, "credit", 1]
      ])
    ).rejects.toMatchObject({
      _tag: "InvalidTransactionError",
      reason: expect.stringContaining('another participant named "bank-a" is registered')
    })
    expect(await Effect.runPromise(impostor!.calls)).toEqual([])
    expect(await Effect.runPromise(b!.calls)).toEqual([])
    await coordinator.dispose()
  })

  it("rejects timeouts that are not positive durations when it is constructed", () => {
    for (const option of [
      "timeout",
      "canCommitTimeout",
      "precommitTimeout",
      "commitTimeout",
      "callTimeout",
      "agentTimeout"
    ] as const) {
      for (const value of [0, -1, Number.NaN, "soon"]) {
        expect(() => new ThreePhaseCoordinator({ [option]: value } as never), `${option}: ${value}`).toThrow(
          expect.objectContaining({
            _tag: "InvalidTransactionError",
            reason: expect.stringContaining(`${option} must be a positive duration`)
          })
        )
      }
    }
  })

  it("bounds the abort path by timeout: a rollback that never answers does not hold the caller for 5 s", async () => {
    const [a, b] = await members(["bank-a"], ["bank-b", { vote: "no" }])
    const hanging: ThreePhaseCommit.AnyThreePhaseParticipant = {
      ...a!.participant,
      rollback: () => Effect.never
    }
    const coordinator = new ThreePhaseCoordinator({ timeout: 100 })
    await coordinator.registerParticipant(hanging)
    await coordinator.registerParticipant(b!.participant)
    const started = Date.now()
    const result = await coordinator.executeTransaction([
      [hanging, "debit", 1],
      [b!.participant, "credit", 1]
    ])
    expect(result.status).toBe("aborted")
    // Before: the rollback waited the hidden 5 s callTimeout whatever `timeout` said.
    expect(Date.now() - started).toBeLessThan(1_500)
    await coordinator.dispose()
  }, 10_000)

  it("waits for transactions in flight before dispose completes", async () => {
    const [a, b] = await members(["bank-a", { prepareDelay: "50 millis" }], ["bank-b"])
    const coordinator = new ThreePhaseCoordinator({ timeout: 2_000 })
    await coordinator.registerParticipant(a!.participant)
    await coordinator.registerParticipant(b!.participant)
    const events: Array<string> = []
    const running = coordinator
      .executeTransaction([
        [a!.participant, "debit", 1],
        [b!.participant, "credit", 1]
      ])
      .then((r) => {
        events.push(`transaction ${r.status}`)
        return r
      })
    const disposed = coordinator.dispose().then(() => events.push("disposed"))
    const result = await rejection(running)
    await disposed
    expect(result).toMatchObject({ resolved: { status: "committed" } })
    expect(events).toEqual(["transaction committed", "disposed"])
    // Idempotent: a second dispose is the same promise.
    expect(coordinator.dispose()).toBe(coordinator.dispose())
  })

  it("stops the agents startAgents started when it is disposed", async () => {
    const [a] = await members(["bank-a"])
    let polls = 0
    const polled: ThreePhaseCommit.AnyThreePhaseParticipant = {
      ...a!.participant,
      inDoubt: Effect.sync(() => polls++).pipe(Effect.zipRight(a!.participant.inDoubt))
    }
    const coordinator = new ThreePhaseCoordinator({ timeout: 10 })
    await coordinator.registerParticipant(polled)
    const stop = await coordinator.startAgents({ timeout: 50, interval: 10 })
    await new Promise((r) => setTimeout(r, 50))
    expect(polls).toBeGreaterThan(0)
    await coordinator.dispose()
    const after = polls
    await new Promise((r) => setTimeout(r, 100))
    expect(polls).toBe(after)
    // The stop function stays callable after dispose.
    await expect(stop()).resolves.toBeUndefined()
  })

  it("rejects every call after dispose with a typed CoordinatorDisposedError, sending nothing", async () => {
    const [a, b] = await members(["bank-a"], ["bank-b"])
    const coordinator = new ThreePhaseCoordinator({ timeout: 2_000 })
    await coordinator.registerParticipant(a!.participant)
    await coordinator.dispose()
    const calls: Array<[string, () => Promise<unknown>]> = [
      ["registerParticipant", () => coordinator.registerParticipant(b!.participant)],
      ["executeTransaction", () => coordinator.executeTransaction([[a!.participant, "debit", 1]])],
      ["recover", () => coordinator.recover()],
      ["startAgents", () => coordinator.startAgents({ timeout: 50 })]
    ]
    for (const [call, run] of calls) {
      const error = await rejection(run())
      expect(error, call).toBeInstanceOf(Error)
      expect(error, call).toMatchObject({ _tag: "CoordinatorDisposedError", call })
    }
    expect(await Effect.runPromise(a!.calls)).toEqual([])
    expect(await Effect.runPromise(b!.calls)).toEqual([])
  })
})
