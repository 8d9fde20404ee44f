import { describe, expect, it } from "@effect/vitest"
import { Duration, Effect, Either, Fiber, Ref, TestClock } from "effect"
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

describe("ThreePhaseCommit.agent given the transaction's explicit quorum sizes and some peers", () => {
  it.effect("terminates under the recorded vote instead of failing on its own options", () =>
    Effect.gen(function* () {
      const ms = yield* Effect.forEach(["m0", "m1", "m2", "m3", "m4"], (n) => ThreePhaseMemory.make(n))
      const mode = { commit: 3, abort: 4 }
      const planned = ThreePhaseCommit.plan(
        yield* TransactionId.make,
        ms.map((m) => m.participant),
        { mode }
      )
      if (Either.isLeft(planned)) return yield* planned.left
      const { txId, members } = planned.right
      // Every member voted yes (recording V=5, Vc=3, Va=4); the coordinator precommitted m0, m1
      // and m2 (a commit quorum), then died.
      for (const [i, m] of ms.entries()) yield* m.participant.prepare(members[i]!.ctx, null)
      for (const i of [0, 1, 2]) yield* ms[i]!.participant.precommit(members[i]!.ctx)
      // m0's agent is started with the transaction's quorum sizes and the peers it knows. Its own
      // options count V=3 (Va=4 cannot form), but the vote recorded the members and the mode: the
      // documented contract is that they win once the member voted.
      const agent = yield* ThreePhaseCommit.agent(
        txId,
        ms[0]!.participant,
        [ms[1]!.participant, ms[2]!.participant],
        {
          mode,
          timeout: Duration.seconds(20)
        }
      ).pipe(Effect.either, Effect.fork)
      yield* TestClock.adjust(Duration.seconds(21))
      const result = yield* Fiber.join(agent)
      expect(Either.isRight(result) ? result.right._tag : result.left.message).toBe("Committed")
      expect(yield* statesOf(ms, txId)).toEqual([
        "committed",
        "committed",
        "committed",
        "uncertain",
        "uncertain"
      ])
    })
  )
})
