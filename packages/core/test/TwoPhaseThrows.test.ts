/**
 * A participant method that throws when called, instead of returning an Effect (a bug), is the
 * same defect as an Effect that dies: a failed call in doubt, handled by the protocol and by
 * recovery, never the end of the run or of the recovery pass.
 */
import { describe, expect, it } from "@effect/vitest"
import { Duration, Effect, Fiber, Schedule, TestClock } from "effect"
import type * as Participant from "../src/Participant.js"
import { branch } from "../src/Participant.js"
import * as Recovery from "../src/Recovery.js"
import * as TransactionId from "../src/TransactionId.js"
import * as TransactionLog from "../src/TransactionLog.js"
import * as TwoPhaseCommit from "../src/TwoPhaseCommit.js"
import * as MemoryParticipant from "./support/MemoryParticipant.js"
import { withLog } from "./support/withLog.js"

/** `p` with `method` throwing on its first `times` calls. */
const throwing = <K extends "prepare" | "commit" | "rollback">(
  p: Participant.Participant<unknown>,
  method: K,
  times = Number.POSITIVE_INFINITY
): Participant.Participant<unknown> => {
  let left = times
  const original = p[method] as (...args: ReadonlyArray<unknown>) => unknown
  return {
    ...p,
    [method]: (...args: ReadonlyArray<unknown>) => {
      if (left-- > 0) throw new Error(`bug in ${method}`)
      return original(...args)
    }
  }
}

const states = (m: Effect.Effect.Success<ReturnType<typeof MemoryParticipant.make>>) =>
  Effect.map(m.states, (s) => [...s.values()])

describe("TwoPhaseCommit.run: a participant method that throws", () => {
  it.effect("a commit that throws once after the decision is retried: Committed", () =>
    withLog(() =>
      Effect.gen(function* () {
        const a = yield* MemoryParticipant.make("bank-a")
        const b = yield* MemoryParticipant.make("bank-b")
        const outcome = yield* TwoPhaseCommit.run(
          [branch(a.participant, 1), branch(throwing(b.participant, "commit", 1), 2)],
          { commitSchedule: Schedule.recurs(3) }
        )
        expect(outcome._tag).toBe("Committed")
        expect(yield* states(b)).toEqual(["committed"])
      })
    )
  )

  it.effect("a prepare that throws is a No vote: the others are rolled back", () =>
    withLog(() =>
      Effect.gen(function* () {
        const a = yield* MemoryParticipant.make("bank-a")
        const b = yield* MemoryParticipant.make("bank-b")
        const c = yield* MemoryParticipant.make("bank-c")
        const outcome = yield* TwoPhaseCommit.run([
          branch(a.participant, 1),
          branch(throwing(b.participant, "prepare"), 2),
          branch(c.participant, 3)
        ])
        expect(outcome._tag).toBe("Aborted")
        if (outcome._tag === "Aborted") expect(outcome.reason).toContain("bug in prepare")
        expect([...(yield* states(a)), ...(yield* states(c))]).toEqual(["aborted", "aborted"])
      })
    )
  )

  it.effect("a rollback that throws does not cut the other branches' rollbacks", () =>
    withLog(() =>
      Effect.gen(function* () {
        const a = yield* MemoryParticipant.make("bank-a")
        const b = yield* MemoryParticipant.make("bank-b")
        const c = yield* MemoryParticipant.make("bank-c", { vote: "no" })
        const d = yield* MemoryParticipant.make("bank-d")
        const outcome = yield* TwoPhaseCommit.run([
          branch(a.participant, 1),
          branch(throwing(b.participant, "rollback"), 2),
          branch(c.participant, 3),
          branch(d.participant, 4)
        ])
        expect(outcome._tag).toBe("Aborted")
        expect([...(yield* states(a)), ...(yield* states(d))]).toEqual(["aborted", "aborted"])
        // b's rollback never ran: left prepared, for recovery.
        expect(yield* states(b)).toEqual(["prepared"])
      })
    )
  )
})

describe("Recovery.run: a participant method that throws", () => {
  it.effect("is reported unresolved; the other participants' transactions are recovered", () =>
    Effect.gen(function* () {
      const log = yield* TransactionLog.makeMemory
      const a = yield* MemoryParticipant.make("bank-a")
      const b = yield* MemoryParticipant.make("bank-b")
      yield* TestClock.setTime(10_000)
      const decided = (p: typeof a) =>
        Effect.gen(function* () {
          const txId = yield* TransactionId.make
          const gid = TransactionId.gid(txId, p.participant.name)
          yield* p.seedPrepared(gid)
          yield* log.decide({
            txId,
            decision: "commit",
            branches: [{ branch: p.participant.name, gid }],
            decidedAt: 1_000
          })
        })
      yield* decided(a)
      yield* decided(b)
      const pass = yield* Recovery.run(
        [throwing(a.participant, "commit"), throwing(b.participant, "rollback")],
        { orphanAfter: Duration.zero }
      ).pipe(Effect.provideService(TransactionLog.TransactionLog, log), Effect.fork)
      // The failed call is retried on recovery's schedule.
      yield* TestClock.adjust(Duration.minutes(1))
      const report = yield* Fiber.join(pass)
      expect(yield* states(b)).toEqual(["committed"])
      expect(report.branchesCommitted).toBe(1)
      expect(report.unresolved.map((u) => [u.branch, u.reason.includes("bug in commit")])).toEqual([
        ["bank-a", true]
      ])
      expect(yield* states(a)).toEqual(["prepared"])
    })
  )
})

describe("Recovery.run: a participant's batched finish that throws", () => {
  it.effect("leaves its decisions to the per-decision path; the others are finished", () =>
    Effect.gen(function* () {
      const log = yield* TransactionLog.makeMemory
      const a = yield* MemoryParticipant.make("bank-a")
      const b = yield* MemoryParticipant.make("bank-b")
      const batching = (
        p: Participant.Participant<unknown>,
        bug: boolean
      ): Participant.Participant<unknown> => ({
        ...p,
        finishMany: (phase, ctxs) => {
          if (bug) throw new Error("bug in finishMany")
          return Effect.forEach(ctxs, (ctx) =>
            Effect.map(
              phase === "commit" ? p.commit(ctx) : p.rollback(ctx),
              (ack) => ack === "Committed"
            ).pipe(Effect.orElseSucceed(() => false))
          )
        }
      })
      for (const p of [a, b]) {
        const txId = yield* TransactionId.make
        const gid = TransactionId.gid(txId, p.participant.name)
        yield* p.seedPrepared(gid)
        yield* log.decide({
          txId,
          decision: "commit",
          branches: [{ branch: p.participant.name, gid }],
          decidedAt: 0
        })
      }
      // Before: the pass died, and bank-b's decision stayed unfinished.
      const report = yield* Recovery.run([batching(a.participant, true), batching(b.participant, false)], {
        orphanAfter: Duration.zero
      }).pipe(Effect.provideService(TransactionLog.TransactionLog, log))
      expect(report.transactionsFinished).toBe(2)
      expect([...(yield* a.states).values(), ...(yield* b.states).values()]).toEqual([
        "committed",
        "committed"
      ])
    })
  )
})
