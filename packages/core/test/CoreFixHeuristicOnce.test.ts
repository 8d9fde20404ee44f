/**
 * A branch committed by hand in an aborted transaction is one heuristic outcome, recorded once,
 * whoever meets it: the coordinator's rollback and a later recovery pass used to write it with two
 * different detail texts, and the log's once-only identity (txId, gid, decision, detail) then
 * kept both, so an operator's heuristics report listed that branch twice.
 */
import { describe, expect, it } from "@effect/vitest"
import { Duration, Effect, Ref, Schedule } from "effect"
import {
  branch,
  type BranchState,
  defaults,
  type Participant,
  type RollbackAck,
  Vote
} from "../src/Participant.js"
import * as Recovery from "../src/Recovery.js"
import { BranchCallError } from "../src/TransactionError.js"
import * as TransactionId from "../src/TransactionId.js"
import * as TwoPhaseCommit from "../src/TwoPhaseCommit.js"
import * as MemoryParticipant from "./support/MemoryParticipant.js"
import { withLog } from "./support/withLog.js"

/** Fast bounds: a rollback that keeps failing is given up within 100 ms. */
const quick = {
  prepareTimeout: Duration.millis(100),
  callTimeout: Duration.millis(100),
  commitSchedule: Schedule.spaced(Duration.millis(10))
} as const

/** A participant whose branch an operator commits by hand as soon as it is prepared. */
const committedByHand = (name: string) =>
  Effect.gen(function* () {
    const states = yield* Ref.make<ReadonlyMap<string, BranchState>>(new Map())
    const participant: Participant<unknown> = {
      name: name as TransactionId.BranchName,
      verify: Effect.void,
      prepare: (ctx) =>
        Ref.update(states, (m) => new Map([...m, [ctx.gid, "committed" as const]])).pipe(
          Effect.as(Vote.Prepared())
        ),
      commitOnePhase: () => Effect.dieMessage("not used"),
      commit: () => Effect.succeed("Committed"),
      rollback: (ctx) =>
        Effect.map(
          Ref.get(states),
          (m): RollbackAck => (m.get(ctx.gid) === "committed" ? "HeuristicCommit" : "RolledBack")
        ),
      state: (ctx) => Effect.map(Ref.get(states), (m) => m.get(ctx.gid) ?? "aborted"),
      inDoubt: defaults.inDoubt,
      forget: defaults.forget
    }
    return participant
  })

/** `p` whose rollbacks fail while `failing` holds (its connection is down during the coordinator's abort). */
const rollbackFailsWhile = (p: Participant<unknown>, failing: Ref.Ref<boolean>): Participant<unknown> => ({
  ...p,
  rollback: (ctx) =>
    Effect.flatMap(Ref.get(failing), (down) =>
      down
        ? new BranchCallError({
            txId: ctx.txId,
            branch: ctx.branch,
            phase: "rollback",
            reason: "connection reset",
            inDoubt: true
          })
        : p.rollback(ctx)
    )
})

describe("a heuristic commit in an aborted transaction is recorded once", () => {
  it.live("coordinator (no decision written) then recovery presuming abort: one record of the branch", () =>
    withLog((log) =>
      Effect.gen(function* () {
        const down = yield* Ref.make(true)
        const a = yield* MemoryParticipant.make("bank-a")
        const bankA = rollbackFailsWhile(a.participant, down)
        const bankB = yield* committedByHand("bank-b")
        const c = yield* MemoryParticipant.make("bank-c", { vote: "no" })
        const outcome = yield* TwoPhaseCommit.run(
          [branch(bankA, "debit"), branch(bankB, "credit"), branch(c.participant, "fee")],
          quick
        )
        expect(outcome._tag).toBe("Aborted")
        expect(outcome._tag === "Aborted" ? outcome.heuristics?.map((h) => h.branch) : undefined).toEqual([
          "bank-b"
        ])
        // bank-a stayed prepared (its rollback failed): an orphan for recovery, which presumes
        // abort and asks the others what became of their branches.
        expect([...(yield* a.states).values()]).toEqual(["prepared"])
        yield* Ref.set(down, false)
        const report = yield* Recovery.run([bankA, bankB, c.participant], { orphanAfter: 0 })
        expect(report.presumedAborts).toBe(1)
        expect([...(yield* a.states).values()]).toEqual(["aborted"])
        const recorded = (yield* log.heuristics).filter((h) => h.txId === outcome.txId)
        expect(recorded.map((h) => [h.branch, h.decision])).toEqual([["bank-b", "abort"]])
      })
    )
  )

  it.live("coordinator (abort decision written, fencing its txId) then recovery driving it: one record", () =>
    withLog((log) =>
      Effect.gen(function* () {
        const down = yield* Ref.make(true)
        const a = yield* MemoryParticipant.make("bank-a")
        // bank-a's prepare never answers: a No vote without a definite answer, so under a given
        // txId the abort is fenced by an abort decision before bank-a is rolled back.
        const bankA = rollbackFailsWhile({ ...a.participant, prepare: () => Effect.never }, down)
        const bankB = yield* committedByHand("bank-b")
        const txId = Effect.runSync(TransactionId.make)
        const outcome = yield* TwoPhaseCommit.run([branch(bankA, "debit"), branch(bankB, "credit")], {
          ...quick,
          txId
        })
        expect(outcome._tag).toBe("Aborted")
        expect(outcome._tag === "Aborted" ? outcome.heuristics?.map((h) => h.branch) : undefined).toEqual([
          "bank-b"
        ])
        // bank-a's rollback failed: the abort decision stays unfinished, and recovery drives it,
        // meeting bank-b's heuristic commit again.
        const decision = (yield* log.snapshot).decisions.get(outcome.txId)
        expect(decision?.decision).toBe("abort")
        expect((yield* log.snapshot).completed.has(outcome.txId)).toBe(false)
        yield* Ref.set(down, false)
        const report = yield* Recovery.run([bankA, bankB], { orphanAfter: 0 })
        expect(report.heuristics.map((h) => h.branch)).toEqual(["bank-b"])
        const recorded = (yield* log.heuristics).filter((h) => h.txId === outcome.txId)
        expect(recorded.map((h) => [h.branch, h.decision])).toEqual([["bank-b", "abort"]])
        expect(recorded[0]?.detail).toBe(outcome._tag === "Aborted" ? outcome.heuristics?.[0]?.detail : "")
      })
    )
  )

  it.live("coordinator and two recovery passes leave one record", () =>
    withLog((log) =>
      Effect.gen(function* () {
        const down = yield* Ref.make(true)
        const a = yield* MemoryParticipant.make("bank-a")
        const bankA = rollbackFailsWhile(a.participant, down)
        const bankB = yield* committedByHand("bank-b")
        const c = yield* MemoryParticipant.make("bank-c", { vote: "no" })
        const outcome = yield* TwoPhaseCommit.run(
          [branch(bankA, "debit"), branch(bankB, "credit"), branch(c.participant, "fee")],
          quick
        )
        yield* Ref.set(down, false)
        yield* Recovery.run([bankA, bankB, c.participant], { orphanAfter: 0 })
        yield* Recovery.run([bankA, bankB, c.participant], { orphanAfter: 0 })
        expect((yield* log.heuristics).filter((h) => h.txId === outcome.txId)).toHaveLength(1)
      })
    )
  )
})
