import { describe, expect, it } from "@effect/vitest"
import { Effect } from "effect"
import type * as ThreePhaseCommit from "../src/ThreePhaseCommit.js"
import * as TransactionId from "../src/TransactionId.js"
import { type OperationTriple, ThreePhaseCoordinator } from "../src/ThreePhaseCoordinator.js"
import * as MemoryParticipant from "./support/MemoryParticipant.js"
import * as ThreePhaseMemory from "./support/ThreePhaseMemory.js"

type Member = ThreePhaseMemory.Memory

const members = (...names: ReadonlyArray<[string, ThreePhaseMemory.Behaviour?]>) =>
  Effect.runPromise(Effect.forEach(names, ([name, behaviour]) => ThreePhaseMemory.make(name, behaviour)))

/**
 * A transaction of `a` and `b` whose coordinator died after both voted yes and after precommitting
 * the members in `precommitted` only; returns its id.
 */
const diedAfterVotes = async (a: Member, b: Member, precommitted: ReadonlyArray<Member>) => {
  const txId = await Effect.runPromise(TransactionId.make)
  const ctx = (p: ThreePhaseCommit.AnyThreePhaseParticipant) => ({
    txId,
    branch: p.name,
    gid: TransactionId.gid(txId, p.name),
    members: [a.participant.name, b.participant.name]
  })
  await Effect.runPromise(
    Effect.gen(function* () {
      yield* a.participant.prepare(ctx(a.participant), null)
      yield* b.participant.prepare(ctx(b.participant), null)
      for (const m of precommitted) yield* m.participant.precommit(ctx(m.participant))
    })
  )
  return txId
}

describe("ThreePhaseCoordinator (Promise facade)", () => {
  it("commits and reports the 2PC facade's shape plus protocol", async () => {
    const [a, b] = await members(["bank-a"], ["bank-b"])
    const coordinator = new ThreePhaseCoordinator({ timeout: 2_000 })
    await coordinator.registerParticipant(a!.participant)
    await coordinator.registerParticipant(b!.participant)
    const result = await coordinator.executeTransaction([
      [a!.participant, "debit", { account: 1, amount: 10 }],
      ["bank-b", "credit", { account: 7, amount: 10 }]
    ])
    expect(result.committed).toBe(true)
    expect(result.status).toBe("committed")
    expect(result.protocol).toBe("3pc")
    expect(result.mode).toBe("classic")
    expect(TransactionId.transactionIdPattern.test(result.txId)).toBe(true)
    expect(result.votes).toEqual([
      { participant: "bank-a", vote: "prepared" },
      { participant: "bank-b", vote: "prepared" }
    ])
    expect(await Effect.runPromise(a!.stateOf(result.txId))).toBe("committed")
    await coordinator.dispose()
  })

  it("aborts with the refusing participant's reason", async () => {
    const [a, b] = await members(["bank-a"], ["bank-b", { vote: "no" }])
    const coordinator = new ThreePhaseCoordinator({ mode: "quorum" })
    await coordinator.registerParticipant(a!.participant)
    await coordinator.registerParticipant(b!.participant)
    const result = await coordinator.executeTransaction([
      [a!.participant, "debit", 10],
      [b!.participant, "credit", 10]
    ])
    expect(result).toMatchObject({ committed: false, status: "aborted", protocol: "3pc", mode: "quorum" })
    expect(result.reason).toBe("bank-b: insufficient funds")
    expect(result.votes[1]).toEqual({
      participant: "bank-b",
      vote: "no",
      reason: "insufficient funds",
      sqlState: "23514"
    })
    await coordinator.dispose()
  })

  it("rejects unknown participants, 2PC-only participants and bad quorums with typed errors", async () => {
    const [a, b] = await members(["bank-a"], ["bank-b"])
    const twoPhase = await Effect.runPromise(MemoryParticipant.make("legacy"))
    const coordinator = new ThreePhaseCoordinator({ mode: { commit: 1, abort: 1 } })
    await coordinator.registerParticipant(a!.participant)
    await expect(coordinator.registerParticipant(a!.participant)).rejects.toMatchObject({
      _tag: "InvalidTransactionError"
    })
    await expect(
      coordinator.registerParticipant(
        twoPhase.participant as unknown as ThreePhaseCommit.AnyThreePhaseParticipant
      )
    ).rejects.toMatchObject({ _tag: "InvalidTransactionError" })
    await expect(coordinator.executeTransaction([[b!.participant, "credit", 1]])).rejects.toMatchObject({
      _tag: "InvalidTransactionError",
      reason: expect.stringContaining("unknown participant")
    })
    await coordinator.registerParticipant(b!.participant)
    await expect(
      coordinator.executeTransaction([
        [a!.participant, "debit", 1],
        [b!.participant, "credit", 1]
      ])
    ).rejects.toMatchObject({ _tag: "InvalidQuorumError" })
    expect(await Effect.runPromise(a!.calls)).toEqual([])
    await coordinator.dispose()
  })

  it("startAgents finishes a transaction whose coordinator died, from the members' own records", async () => {
    const [a, b] = await members(["bank-a"], ["bank-b"])
    // A coordinator that died after precommitting bank-a only.
    const txId = await diedAfterVotes(a!, b!, [a!])
    const committed = [a!, b!].map((m) => {
      let resolve: () => void = () => undefined
      const done = new Promise<void>((r) => {
        resolve = r
      })
      const participant: ThreePhaseCommit.AnyThreePhaseParticipant = {
        ...m.participant,
        commit: (c) => m.participant.commit(c).pipe(Effect.tap(() => Effect.sync(resolve)))
      }
      return { participant, done }
    })
    // Agents of 50 ms are only safe for a coordinator whose phases take at most 40 ms (10 ms each here).
    const coordinator = new ThreePhaseCoordinator({ timeout: 10 })
    for (const { participant } of committed) await coordinator.registerParticipant(participant)
    const stop = await coordinator.startAgents({ timeout: 50, interval: 20 })
    await Promise.all(committed.map((c) => c.done))
    await stop()
    expect(await Effect.runPromise(a!.stateOf(txId))).toBe("committed")
    expect(await Effect.runPromise(b!.stateOf(txId))).toBe("committed")
    await coordinator.dispose()
  })

  it("rejects coordinator phases that the agents' timeout does not outlast, before anything is sent", async () => {
    const [a, b] = await members(["bank-a"], ["bank-b"])
    // Agents wait 20 s by default; 10 s + 25 s of phases need 43.75 s.
    const coordinator = new ThreePhaseCoordinator({ precommitTimeout: 25_000 })
    await coordinator.registerParticipant(a!.participant)
    await coordinator.registerParticipant(b!.participant)
    const operations: ReadonlyArray<OperationTriple> = [
      [a!.participant, "debit", 1],
      [b!.participant, "credit", 1]
    ]
    await expect(coordinator.executeTransaction(operations)).rejects.toMatchObject({
      _tag: "UnsafeTimeoutError",
      agentTimeoutMillis: 20_000,
      minimumMillis: 43_750
    })
    expect(await Effect.runPromise(a!.calls)).toEqual([])
    expect(await Effect.runPromise(b!.calls)).toEqual([])
    await coordinator.dispose()
    // Declaring agents that wait long enough makes the same phases acceptable; quorum mode needs no bound.
    for (const options of [
      { precommitTimeout: 25_000, agentTimeout: 45_000 },
      { precommitTimeout: 25_000, mode: "quorum" as const }
    ]) {
      const ok = new ThreePhaseCoordinator(options)
      await ok.registerParticipant(a!.participant)
      await ok.registerParticipant(b!.participant)
      expect((await ok.executeTransaction(operations)).status).toBe("committed")
      await ok.dispose()
    }
  })

  it("startAgents rejects an agent timeout shorter than the coordinator's phases", async () => {
    const [a, b] = await members(["bank-a"], ["bank-b"])
    const coordinator = new ThreePhaseCoordinator()
    await coordinator.registerParticipant(a!.participant)
    await coordinator.registerParticipant(b!.participant)
    await expect(coordinator.startAgents({ timeout: 50 })).rejects.toMatchObject({
      _tag: "UnsafeTimeoutError",
      agentTimeoutMillis: 50,
      minimumMillis: 18_750
    })
    await coordinator.dispose()
  })

  it("startAgents without a timeout runs agents with the coordinator's agentTimeout", async () => {
    const [a, b] = await members(["bank-a"], ["bank-b"])
    // A coordinator that died after the votes, before any PreCommit.
    const txId = await diedAfterVotes(a!, b!, [])
    const coordinator = new ThreePhaseCoordinator({ timeout: 10, agentTimeout: 60 })
    await coordinator.registerParticipant(a!.participant)
    await coordinator.registerParticipant(b!.participant)
    const stop = await coordinator.startAgents()
    const deadline = Date.now() + 3_000
    while (Date.now() < deadline && (await Effect.runPromise(a!.stateOf(txId))) !== "aborted") {
      await new Promise((r) => setTimeout(r, 10))
    }
    await stop()
    expect(await Effect.runPromise(a!.stateOf(txId))).toBe("aborted")
    expect(await Effect.runPromise(b!.stateOf(txId))).toBe("aborted")
    await coordinator.dispose()
  })
})
