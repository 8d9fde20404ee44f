/** Review of the Promise facade: what a caller moving money is told. */
import { Effect } from "effect"
import { describe, expect, it } from "vitest"
import type { Participant } from "../src/Participant.js"
import { TwoPhaseCoordinator } from "../src/Coordinator.js"
import { debitCredit, registerAll } from "./support/coordinator.js"
import * as MemoryParticipant from "./support/MemoryParticipant.js"

describe("TwoPhaseCoordinator: heuristics", () => {
  it("names a branch rolled back by hand after the commit decision in the result, in plain words", async () => {
    const coordinator = new TwoPhaseCoordinator({ timeout: 5_000, log: "memory" })
    const a = await Effect.runPromise(MemoryParticipant.make("bank-a"))
    const b = await Effect.runPromise(MemoryParticipant.make("bank-b"))
    // An operator runs ROLLBACK PREPARED on bank-a's branch just before the coordinator commits it.
    const forced: Participant<unknown> = {
      ...a.participant,
      commit: (ctx) => a.forceRollback(ctx.gid).pipe(Effect.zipRight(a.participant.commit(ctx)))
    }
    await registerAll(coordinator, forced, b.participant)
    const result = await debitCredit(coordinator, forced, b.participant)
    expect(result.status).toBe("committed")
    // Before: only `result.outcome.heuristics` said so; `committed: true` and nothing else.
    expect(result.heuristics).toEqual([
      {
        participant: "bank-a",
        detail: "branch was rolled back outside the protocol after the commit decision"
      }
    ])
    await coordinator.dispose()
  })

  it("leaves heuristics out of a result that has none", async () => {
    const coordinator = new TwoPhaseCoordinator({ timeout: 5_000, log: "memory" })
    const a = await Effect.runPromise(MemoryParticipant.make("bank-a"))
    const b = await Effect.runPromise(MemoryParticipant.make("bank-b"))
    await registerAll(coordinator, a.participant, b.participant)
    const result = await debitCredit(coordinator, a.participant, b.participant)
    expect(result.status).toBe("committed")
    expect("heuristics" in result).toBe(false)
    await coordinator.dispose()
  })
})

describe("TwoPhaseCoordinator: heuristics on abort", () => {
  it("names a branch committed by hand in an aborted result", async () => {
    const coordinator = new TwoPhaseCoordinator({ timeout: 5_000, log: "memory" })
    const a = await Effect.runPromise(MemoryParticipant.make("bank-a"))
    const b = await Effect.runPromise(MemoryParticipant.make("bank-b", { vote: "no" }))
    const byHand: Participant<unknown> = {
      ...a.participant,
      rollback: () => Effect.succeed("HeuristicCommit" as const)
    }
    await registerAll(coordinator, byHand, b.participant)
    const result = await debitCredit(coordinator, byHand, b.participant)
    expect(result.status).toBe("aborted")
    expect(result.heuristics?.map((h) => h.participant)).toEqual(["bank-a"])
    await coordinator.dispose()
  })
})
