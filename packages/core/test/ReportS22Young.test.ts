/**
 * Young work a recovery pass leaves for a later one is in its report, counted the same way by 2PC
 * `Recovery.run` and 3PC `recover`: one per prepared branch left (`youngLeft`). Before, 3PC counted
 * a young voted transaction once whatever the number of its branches, against its own doc
 * ("Young branches") and 2PC's count.
 */
import { describe, expect, it } from "@effect/vitest"
import { Duration, Effect, TestClock } from "effect"
import { Vote } from "../src/Participant.js"
import * as Recovery from "../src/Recovery.js"
import * as ThreePhaseCommit from "../src/ThreePhaseCommit.js"
import * as TransactionId from "../src/TransactionId.js"
import * as MemoryParticipant from "./support/MemoryParticipant.js"
import * as ThreePhaseMemory from "./support/ThreePhaseMemory.js"
import { withLog } from "./support/withLog.js"

/** The doubles report branches prepared at 0: at 10 s they are young under a 30 s `orphanAfter`. */
const young = { orphanAfter: Duration.seconds(30) }

/** A transaction over `members` whose coordinator died after every member voted yes. */
const votedYes = (members: ReadonlyArray<ThreePhaseMemory.Memory>) =>
  Effect.gen(function* () {
    const txId = yield* TransactionId.make
    const names = members.map((m) => m.participant.name)
    for (const m of members) {
      const gid = TransactionId.gid(txId, m.participant.name)
      expect(
        yield* m.participant.prepare({ txId, branch: m.participant.name, gid, members: names }, "w")
      ).toEqual(Vote.Prepared())
    }
    return txId
  })

const trio = Effect.all([
  ThreePhaseMemory.make("bank-a"),
  ThreePhaseMemory.make("bank-b"),
  ThreePhaseMemory.make("bank-c")
])

describe("ThreePhaseCommit.recover reports the young branches it leaves", () => {
  it.effect("every branch of a young transaction, not one per transaction", () =>
    Effect.gen(function* () {
      yield* TestClock.setTime(10_000)
      const members = yield* trio
      const txId = yield* votedYes(members)
      const report = yield* ThreePhaseCommit.recover(
        members.map((m) => m.participant),
        young
      )
      expect(report.youngLeft).toBe(3)
      // Left: not terminated, not blocked, nothing sent after the prepares.
      expect([...report.committed, ...report.aborted, ...report.blocked.map((b) => b.txId)]).toEqual([])
      for (const m of members) {
        expect(yield* m.stateOf(txId)).toBe("uncertain")
        expect((yield* m.calls).filter((c) => !c.startsWith("prepare:"))).toEqual([])
      }
    })
  )

  it.effect("counts young transactions' branches together, each once", () =>
    Effect.gen(function* () {
      yield* TestClock.setTime(10_000)
      const [a, b, c] = yield* trio
      yield* votedYes([a, b])
      yield* votedYes([b, c])
      yield* votedYes([a, b, c])
      const report = yield* ThreePhaseCommit.recover([a.participant, b.participant, c.participant], young)
      expect(report.youngLeft).toBe(7)
    })
  )

  it.effect("a later pass, once they are old, terminates them and leaves none", () =>
    Effect.gen(function* () {
      yield* TestClock.setTime(10_000)
      const members = yield* trio
      const txId = yield* votedYes(members)
      const participants = members.map((m) => m.participant)
      expect((yield* ThreePhaseCommit.recover(participants, young)).youngLeft).toBe(3)
      yield* TestClock.setTime(60_000)
      const later = yield* ThreePhaseCommit.recover(participants, young)
      expect(later.youngLeft).toBe(0)
      expect(later.aborted).toEqual([txId])
    })
  )

  it.effect("agrees with 2PC's count for the same young branches", () =>
    Effect.gen(function* () {
      yield* TestClock.setTime(10_000)
      const members = yield* trio
      yield* votedYes(members)
      const threePhase = yield* ThreePhaseCommit.recover(
        members.map((m) => m.participant),
        young
      )
      // The same shape in 2PC: one transaction prepared on three participants, no decision.
      const twoPhase = yield* withLog(() =>
        Effect.gen(function* () {
          const ps = yield* Effect.all([
            MemoryParticipant.make("bank-a"),
            MemoryParticipant.make("bank-b"),
            MemoryParticipant.make("bank-c")
          ])
          const txId = yield* TransactionId.make
          for (const p of ps) yield* p.seedPrepared(TransactionId.gid(txId, p.participant.name))
          return yield* Recovery.run(
            ps.map((p) => p.participant),
            young
          )
        })
      )
      expect(twoPhase.youngLeft).toBe(3)
      expect(threePhase.youngLeft).toBe(twoPhase.youngLeft)
    })
  )
})
