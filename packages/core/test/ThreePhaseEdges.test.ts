import { describe, expect, it } from "@effect/vitest"
import { Effect, Ref } from "effect"
import * as ThreePhaseCommit from "../src/ThreePhaseCommit.js"
import * as TransactionId from "../src/TransactionId.js"
import * as ThreePhaseMemory from "./support/ThreePhaseMemory.js"

type P3 = ThreePhaseCommit.AnyThreePhaseParticipant

/** A copy of `p` whose first `state` read answers "uncertain": a view taken before the coordinator moved on. */
const staleUncertainFirstRead = (p: P3) =>
  Ref.make(0).pipe(
    Effect.map(
      (reads): P3 => ({
        ...p,
        state: (ctx) =>
          Ref.getAndUpdate(reads, (n) => n + 1).pipe(
            Effect.flatMap((n) => (n === 0 ? Effect.succeed("uncertain" as const) : p.state(ctx)))
          )
      })
    )
  )

const statesOf = (members: ReadonlyArray<ThreePhaseMemory.Memory>, txId: string) =>
  Effect.forEach(members, (m) => m.stateOf(txId))

describe("ThreePhaseCommit: a terminator whose abort meets committed members", () => {
  it.effect(
    "a classic terminator that saw every member uncertain, while they all committed meanwhile, reports Committed, not Aborted",
    () =>
      Effect.gen(function* () {
        const ms = yield* Effect.all([ThreePhaseMemory.make("bank-a"), ThreePhaseMemory.make("bank-b")])
        // The coordinator is alive and fast: it precommits and commits every member...
        const outcome = yield* ThreePhaseCommit.run(
          ms.map((m) => ThreePhaseCommit.branch(m.participant, null))
        )
        expect(outcome._tag).toBe("Committed")
        // ...while a terminator (an agent, a standby) had read every member before that: uncertain.
        const stale = yield* Effect.forEach(ms, (m) => staleUncertainFirstRead(m.participant))
        const t = yield* ThreePhaseCommit.terminate(outcome.txId, stale)
        // Its rollbacks all answer HeuristicCommit: the transaction committed. Reporting it as
        // aborted (to an agent, to recover's report) contradicts the members' durable states.
        expect(t._tag).toBe("Committed")
        expect(yield* statesOf(ms, outcome.txId)).toEqual(["committed", "committed"])
      })
  )
})

describe("ThreePhaseCommit.recover with a namespace", () => {
  it.effect("leaves another namespace's unvoted branch alone (it may be that deployment's 2PC branch)", () =>
    Effect.gen(function* () {
      const b = yield* ThreePhaseMemory.make("bank-b")
      const txId = yield* TransactionId.make
      // A prepared branch of namespace "ns" without a 3PC vote: another deployment's 2PC branch,
      // whose commit decision only that deployment's log knows, or its 3PC branch between PREPARE
      // and vote.
      const scanned: P3 = {
        ...b.participant,
        inDoubt: Effect.succeed([
          {
            txId,
            branch: b.participant.name,
            gid: TransactionId.gid(txId, b.participant.name, "ns"),
            preparedAt: 0,
            state: "initial" as const,
            members: undefined,
            mode: undefined
          }
        ])
      }
      const report = yield* ThreePhaseCommit.recover([scanned], { orphanAfter: 0, namespace: "other" })
      // Told to recover namespace "other" only: nothing of "ns" is touched.
      expect(yield* b.calls).toEqual([])
      expect(yield* b.stateOf(txId, "ns")).toBe("initial")
      expect(report.unvotedRolledBack).toBe(0)
      expect(report.blocked.map((x) => x.txId)).toEqual([txId])
    })
  )
})
