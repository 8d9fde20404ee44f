/**
 * A lone branch commits in one phase (no PREPARE, no decision). One that changed nothing is
 * reported ReadOnly, as the two-phase path reports it; before, one phase had no ReadOnly result
 * and such a branch was reported as a Prepared vote.
 */
import { describe, expect, it } from "@effect/vitest"
import { Effect } from "effect"
import { fromPromiseParticipant, TwoPhaseCoordinator } from "../src/Coordinator.js"
import { branch, defaults, OnePhaseResult, type Participant, Vote } from "../src/Participant.js"
import type * as TransactionId from "../src/TransactionId.js"
import * as TwoPhaseCommit from "../src/TwoPhaseCommit.js"
import { withLog } from "./support/withLog.js"

/** A core participant whose every branch changes nothing: it says so in both phases' terms. */
const readOnlyParticipant = (name: string, calls: Array<string>): Participant<unknown> => ({
  name: name as TransactionId.BranchName,
  verify: Effect.void,
  prepare: (ctx) => Effect.sync(() => calls.push(`prepare:${ctx.branch}`)).pipe(Effect.as(Vote.ReadOnly())),
  commitOnePhase: (ctx) =>
    Effect.sync(() => calls.push(`onePhase:${ctx.branch}`)).pipe(Effect.as(OnePhaseResult.ReadOnly())),
  commit: () => Effect.succeed("Committed"),
  rollback: () => Effect.succeed("RolledBack"),
  state: () => Effect.succeed("committed"),
  inDoubt: defaults.inDoubt,
  forget: defaults.forget,
  fromOperations: (list) => list
})

describe("a lone read-only branch, one phase", () => {
  it.effect("a core participant's ReadOnly one-phase result is reported as a ReadOnly vote", () =>
    withLog((log) =>
      Effect.gen(function* () {
        const calls: Array<string> = []
        const outcome = yield* TwoPhaseCommit.run([branch(readOnlyParticipant("bank-a", calls), "lookup")])
        expect(calls).toEqual(["onePhase:bank-a"])
        expect(outcome._tag).toBe("Committed")
        if (outcome._tag !== "Committed") return
        expect(outcome.onePhase).toBe(true)
        expect(outcome.votes.map((v) => v.vote._tag)).toEqual(["ReadOnly"])
        // One phase writes no decision, read-only or not.
        expect((yield* log.snapshot).decisions.size).toBe(0)
      })
    )
  )

  it.effect("reports the same vote as the two-phase path does for the same branch", () =>
    withLog(() =>
      Effect.gen(function* () {
        const participant = readOnlyParticipant("bank-a", [])
        const onePhase = yield* TwoPhaseCommit.run([branch(participant, "lookup")])
        const twoPhase = yield* TwoPhaseCommit.run([branch(participant, "lookup")], { onePhase: false })
        expect(twoPhase._tag).toBe("Committed")
        expect(onePhase._tag).toBe("Committed")
        expect(onePhase.votes.map((v) => v.vote)).toEqual(twoPhase.votes.map((v) => v.vote))
      })
    )
  )

  it.effect('a Promise participant answering "read-only" to a one-phase branch is reported ReadOnly', () =>
    withLog(() =>
      Effect.gen(function* () {
        const calls: Array<string> = []
        const adapted = fromPromiseParticipant({
          name: "bank-a",
          prepare: async () => "read-only",
          commit: async () => {
            calls.push("commit")
          },
          rollback: async () => {
            calls.push("rollback")
          }
        })
        const outcome = yield* TwoPhaseCommit.run([branch(adapted, [{ operation: "lookup", params: {} }])])
        expect(outcome._tag).toBe("Committed")
        expect(outcome.votes.map((v) => v.vote._tag)).toEqual(["ReadOnly"])
        // A branch that changed nothing is finished at its answer: nothing more is sent.
        expect(calls).toEqual([])
      })
    )
  )

  it("the Promise facade reports a lone core participant's read-only branch as read-only", async () => {
    const coordinator = new TwoPhaseCoordinator({ timeout: 2_000, log: "memory" })
    const calls: Array<string> = []
    const participant = readOnlyParticipant("bank-a", calls)
    await coordinator.registerParticipant(participant)
    const result = await coordinator.executeTransaction([[participant, "lookup", {}]])
    expect(result.status).toBe("committed")
    expect(result.votes).toEqual([{ participant: "bank-a", vote: "read-only" }])
    expect(calls).toEqual(["onePhase:bank-a"])
    await coordinator.dispose()
  })
})
