/**
 * Review of the 2PC hot path: what a participant's bug (a defect) does to the outcome, on the
 * Effect path and on the direct (Promise-level) path alike, and that a heuristic outcome is
 * reported in every commit outcome.
 */
import { describe, expect, it } from "@effect/vitest"
import { Duration, Effect, Either, Fiber, Schedule, TestClock } from "effect"
import type * as Participant from "../src/Participant.js"
import { branch } from "../src/Participant.js"
import * as Recovery from "../src/Recovery.js"
import { LogError } from "../src/TransactionError.js"
import * as TransactionId from "../src/TransactionId.js"
import * as TransactionLog from "../src/TransactionLog.js"
import * as TwoPhaseCommit from "../src/TwoPhaseCommit.js"
import * as MemoryParticipant from "./support/MemoryParticipant.js"
import * as PromiseParticipant from "./support/PromiseParticipant.js"
import { withLog } from "./support/withLog.js"

/** `p` with its direct `call` replaced by one whose result rejects (a bug), twins untouched. */
const rejecting = (
  p: Participant.Participant<unknown>,
  call: "prepare" | "commit" | "commitOnePhase",
  times = Number.POSITIVE_INFINITY,
  afterMs = 0
): Participant.Participant<unknown> => {
  const direct = p.direct!
  let left = times
  const original = direct[call] as unknown as (
    ...a: ReadonlyArray<unknown>
  ) => Participant.Started<unknown, unknown>
  const broken = (...args: ReadonlyArray<unknown>): Participant.Started<unknown, unknown> => {
    if (left <= 0) return original(...args)
    left--
    return {
      result: new Promise<never>((_, reject) =>
        setTimeout(() => reject(new Error(`bug in ${call}`)), afterMs)
      ),
      abandon: () => undefined
    }
  }
  return { ...p, direct: { ...direct, [call]: broken } }
}

describe("TwoPhaseCommit.run: a participant's defect", () => {
  it.effect("after the commit decision, a commit that keeps dying is CommitPending, never a defect", () =>
    withLog((log) =>
      Effect.gen(function* () {
        const a = yield* MemoryParticipant.make("bank-a")
        const b = yield* MemoryParticipant.make("bank-b")
        const buggy: Participant.Participant<unknown> = {
          ...b.participant,
          commit: () => Effect.dieMessage("cannot read properties of undefined")
        }
        const fiber = yield* TwoPhaseCommit.run([branch(a.participant, 1), branch(buggy, 2)], {
          transactionTimeout: Duration.seconds(5),
          commitSchedule: Schedule.spaced(Duration.millis(500))
        }).pipe(Effect.exit, Effect.fork)
        yield* TestClock.adjust(Duration.seconds(6))
        const exit = yield* Fiber.join(fiber)
        // Before: the run died with the defect after the decision was forced, so the caller could
        // not tell that the transaction commits (recovery commits it later).
        expect(exit._tag).toBe("Success")
        if (exit._tag !== "Success") return
        expect(exit.value._tag).toBe("CommitPending")
        if (exit.value._tag === "CommitPending") expect(exit.value.pending).toEqual(["bank-b"])
        expect((yield* log.snapshot).decisions.get(exit.value.txId)?.decision).toBe("commit")
      })
    )
  )

  it.effect(
    "a rollback that dies does not turn an abort into a defect; the other branches are rolled back",
    () =>
      withLog(() =>
        Effect.gen(function* () {
          const a = yield* MemoryParticipant.make("bank-a")
          const b = yield* MemoryParticipant.make("bank-b")
          const c = yield* MemoryParticipant.make("bank-c", { vote: "no" })
          const buggy: Participant.Participant<unknown> = {
            ...a.participant,
            rollback: () => Effect.dieMessage("cannot read properties of undefined")
          }
          const exit = yield* Effect.exit(
            TwoPhaseCommit.run([branch(buggy, 1), branch(b.participant, 2), branch(c.participant, 3)])
          )
          expect(exit._tag).toBe("Success")
          if (exit._tag === "Success") expect(exit.value._tag).toBe("Aborted")
          expect([...(yield* b.states).values()]).toEqual(["aborted"])
        })
      )
  )

  it.live(
    "a direct prepare that rejects is a No vote as its Effect twin's is: the others are rolled back",
    () =>
      withLog((log) =>
        Effect.gen(function* () {
          const a = PromiseParticipant.make("bank-a")
          const b = PromiseParticipant.make("bank-b")
          const outcome = yield* Effect.either(
            TwoPhaseCommit.run([
              branch(a.participant, 1),
              branch(rejecting(b.participant, "prepare", 1, 20), 2)
            ])
          )
          // Before: the run died; bank-a, prepared, was left for recovery.
          expect(Either.isRight(outcome) && outcome.right._tag).toBe("Aborted")
          if (Either.isRight(outcome) && outcome.right._tag === "Aborted")
            expect(outcome.right.reason).toContain("bug in prepare")
          expect(a.calls).toContain("rollback:bank-a")
          expect((yield* log.snapshot).decisions.size).toBe(0)
        })
      )
  )

  it.live("a direct commit that rejects is retried through its Effect twin, as a died commit is", () =>
    withLog((log) =>
      Effect.gen(function* () {
        const a = PromiseParticipant.make("bank-a")
        const b = PromiseParticipant.make("bank-b")
        const outcome = yield* Effect.either(
          TwoPhaseCommit.run([branch(a.participant, 1), branch(rejecting(b.participant, "commit", 1), 2)], {
            commitSchedule: Schedule.spaced(Duration.millis(5))
          })
        )
        // Before: the run died after the commit decision.
        expect(Either.isRight(outcome) && outcome.right._tag).toBe("Committed")
        expect(b.calls).toContain("effect:commit:bank-b")
        if (Either.isRight(outcome))
          expect((yield* log.snapshot).completed.has(outcome.right.txId)).toBe(true)
      })
    )
  )

  it.live(
    "a direct one-phase commit that rejects fails in doubt with its txId, as its Effect twin does",
    () =>
      withLog(() =>
        Effect.gen(function* () {
          const a = PromiseParticipant.make("bank-a")
          const result = yield* Effect.either(
            TwoPhaseCommit.run([branch(rejecting(a.participant, "commitOnePhase"), 1)])
          )
          expect(Either.isLeft(result) && result.left._tag).toBe("BranchCallError")
          if (Either.isLeft(result) && result.left._tag === "BranchCallError") {
            expect(result.left.inDoubt).toBe(true)
            expect(result.left.phase).toBe("onePhaseCommit")
            expect(result.left.txId).toMatch(/^[0-9A-Z]{26}$/)
          }
        })
      )
  )
})

describe("TwoPhaseCommit.run: heuristics", () => {
  it.effect("a CommitPending outcome still reports a branch rolled back by hand", () =>
    withLog(() =>
      Effect.gen(function* () {
        const a = yield* MemoryParticipant.make("bank-a")
        const b = yield* MemoryParticipant.make("bank-b", { commitFailures: 1_000 })
        const forcing: Participant.Participant<unknown> = {
          ...a.participant,
          commit: (ctx) => a.forceRollback(ctx.gid).pipe(Effect.zipRight(a.participant.commit(ctx)))
        }
        const fiber = yield* TwoPhaseCommit.run([branch(forcing, 1), branch(b.participant, 2)], {
          transactionTimeout: Duration.seconds(5),
          commitSchedule: Schedule.spaced(Duration.millis(500))
        }).pipe(Effect.fork)
        yield* TestClock.adjust(Duration.seconds(6))
        const outcome = yield* Fiber.join(fiber)
        expect(outcome._tag).toBe("CommitPending")
        // Before: CommitPending had no heuristics; the caller never learned bank-a was rolled back.
        expect(
          (outcome as { heuristics?: ReadonlyArray<{ branch: string }> }).heuristics?.map((h) => h.branch)
        ).toEqual(["bank-a"])
      })
    )
  )
})

describe("TwoPhaseCommit.run: heuristics on abort", () => {
  it.effect("an Aborted outcome reports a branch committed by hand before its rollback, and logs it", () =>
    withLog((log) =>
      Effect.gen(function* () {
        const a = yield* MemoryParticipant.make("bank-a")
        const b = yield* MemoryParticipant.make("bank-b")
        const c = yield* MemoryParticipant.make("bank-c", { vote: "no" })
        // An operator ran COMMIT PREPARED on bank-b's branch by hand before the coordinator's rollback.
        const committedByHand: Participant.Participant<unknown> = {
          ...b.participant,
          rollback: () => Effect.succeed("HeuristicCommit" as const)
        }
        const outcome = yield* TwoPhaseCommit.run([
          branch(a.participant, 1),
          branch(committedByHand, 2),
          branch(c.participant, 3)
        ])
        expect(outcome._tag).toBe("Aborted")
        // Before: nothing said so; "Aborted: nothing was committed" was false for bank-b.
        expect(
          (outcome as { heuristics?: ReadonlyArray<{ branch: string }> }).heuristics?.map((h) => h.branch)
        ).toEqual(["bank-b"])
        const recorded = (yield* log.snapshot).heuristics
        expect(recorded.map((h) => [h.branch, h.decision])).toEqual([["bank-b", "abort"]])
      })
    )
  )
})

describe("TwoPhaseCommit.run: a heuristic the log does not take", () => {
  it.effect("leaves the decision incomplete, so recovery finds the branch again and records it", () =>
    Effect.gen(function* () {
      const memory = yield* TransactionLog.makeMemory
      let refuse = true
      const flaky: TransactionLog.TransactionLog["Type"] = {
        ...memory,
        direct: undefined,
        recordHeuristic: (record) =>
          refuse
            ? Effect.fail(
                new LogError({ operation: "recordHeuristic", txId: record.txId, reason: "connection reset" })
              )
            : memory.recordHeuristic(record)
      }
      const a = yield* MemoryParticipant.make("bank-a")
      const b = yield* MemoryParticipant.make("bank-b")
      // An operator ran ROLLBACK PREPARED on bank-b's branch by hand before the coordinator's commit.
      const rolledBackByHand: Participant.Participant<unknown> = {
        ...b.participant,
        commit: (ctx) => b.forceRollback(ctx.gid).pipe(Effect.zipRight(b.participant.commit(ctx)))
      }
      const outcome = yield* TwoPhaseCommit.run([branch(a.participant, 1), branch(rolledBackByHand, 2)]).pipe(
        Effect.provideService(TransactionLog.TransactionLog, flaky)
      )
      expect(outcome._tag).toBe("Committed")
      if (outcome._tag === "Committed") expect(outcome.heuristics.map((h) => h.branch)).toEqual(["bank-b"])
      // Before: the decision was completed all the same, and the heuristic was recorded nowhere.
      expect((yield* memory.snapshot).completed.has(outcome.txId)).toBe(false)
      refuse = false
      yield* Recovery.run([a.participant, b.participant], { orphanAfter: 0 }).pipe(
        Effect.provideService(TransactionLog.TransactionLog, flaky)
      )
      const recorded = (yield* memory.snapshot).heuristics
      expect(recorded.map((h) => [h.branch, h.decision])).toEqual([["bank-b", "commit"]])
    })
  )
})

describe("TwoPhaseCommit.run: an abort at the transaction's deadline", () => {
  it.effect(
    "rolls back the prepared branches after the outcome, instead of leaving them prepared for recovery",
    () =>
      withLog(() =>
        Effect.gen(function* () {
          // The prepare bound equals the deadline (the Promise facade's default): the abort has no
          // time left. Its rollbacks were cut at 1 ms, so a prepared branch whose rollback takes a
          // moment stayed prepared, holding its locks until recovery presumed it aborted.
          const a = yield* MemoryParticipant.make("bank-a")
          const slowRollback: Participant.Participant<unknown> = {
            ...a.participant,
            rollback: (ctx) => Effect.delay(a.participant.rollback(ctx), Duration.millis(50))
          }
          const b = yield* MemoryParticipant.make("bank-b", { prepareDelay: Duration.seconds(10) })
          const fiber = yield* TwoPhaseCommit.run([branch(slowRollback, 1), branch(b.participant, 2)], {
            prepareTimeout: Duration.seconds(1),
            transactionTimeout: Duration.seconds(1)
          }).pipe(Effect.fork)
          yield* TestClock.adjust(Duration.seconds(1))
          // The abort waits at most 1 ms (what is left of the deadline, at least 1 ms).
          yield* TestClock.adjust(Duration.millis(1))
          const outcome = yield* Fiber.join(fiber)
          expect(outcome._tag).toBe("Aborted")
          expect([...(yield* a.states).values()]).toEqual(["prepared"])
          // The outcome did not wait for it; the rollback goes on and lands.
          yield* TestClock.adjust(Duration.millis(49))
          expect([...(yield* a.states).values()]).toEqual(["aborted"])
        })
      )
  )
  it.effect("records a branch its late rollback finds committed by hand, after the outcome", () =>
    withLog((log) =>
      Effect.gen(function* () {
        // An operator ran COMMIT PREPARED on bank-a's branch by hand; its rollback answers after the
        // outcome. Nothing else could find it (its gid is gone, the other branch never prepared):
        // the late answer was dropped and the split transaction recorded nowhere.
        const a = yield* MemoryParticipant.make("bank-a")
        const committedByHand: Participant.Participant<unknown> = {
          ...a.participant,
          rollback: () => Effect.delay(Effect.succeed("HeuristicCommit" as const), Duration.millis(50))
        }
        const b = yield* MemoryParticipant.make("bank-b", { prepareDelay: Duration.seconds(10) })
        const fiber = yield* TwoPhaseCommit.run([branch(committedByHand, 1), branch(b.participant, 2)], {
          prepareTimeout: Duration.seconds(1),
          transactionTimeout: Duration.seconds(1)
        }).pipe(Effect.fork)
        yield* TestClock.adjust(Duration.millis(1001))
        const outcome = yield* Fiber.join(fiber)
        expect(outcome._tag).toBe("Aborted")
        expect((outcome as { heuristics?: unknown }).heuristics).toBeUndefined()
        yield* TestClock.adjust(Duration.millis(50))
        const recorded = (yield* log.snapshot).heuristics
        expect(recorded.map((h) => [h.branch, h.decision])).toEqual([["bank-a", "abort"]])
      })
    )
  )

  it.effect(
    "a fenced abort whose heuristic the log did not take is not completed, so recovery drives it again",
    () =>
      Effect.gen(function* () {
        const memory = yield* TransactionLog.makeMemory
        const flaky: TransactionLog.TransactionLog["Type"] = {
          ...memory,
          direct: undefined,
          recordHeuristic: (record) =>
            Effect.fail(
              new LogError({ operation: "recordHeuristic", txId: record.txId, reason: "connection reset" })
            )
        }
        const a = yield* MemoryParticipant.make("bank-a")
        const committedByHand: Participant.Participant<unknown> = {
          ...a.participant,
          rollback: () => Effect.succeed("HeuristicCommit" as const)
        }
        const b = yield* MemoryParticipant.make("bank-b", { prepareDelay: Duration.seconds(10) })
        const txId = yield* TransactionId.make
        const fiber = yield* TwoPhaseCommit.run([branch(committedByHand, 1), branch(b.participant, 2)], {
          txId,
          prepareTimeout: Duration.millis(100),
          transactionTimeout: Duration.seconds(1)
        }).pipe(Effect.provideService(TransactionLog.TransactionLog, flaky), Effect.fork)
        yield* TestClock.adjust(Duration.seconds(2))
        const outcome = yield* Fiber.join(fiber)
        expect(outcome._tag).toBe("Aborted")
        expect((yield* memory.snapshot).decisions.get(txId)?.decision).toBe("abort")
        // Before: completed all the same, and the heuristic was recorded nowhere.
        expect((yield* memory.snapshot).completed.has(txId)).toBe(false)
      })
  )

  it.effect(
    "under a caller's txId, fences and rolls back a branch whose prepare had no answer, after the outcome",
    () =>
      Effect.gen(function* () {
        // Under a txId the caller gave, a branch whose prepare gave no answer is rolled back only
        // once an abort decision holds (an earlier run may own the gid). At a prepare bound equal
        // to the deadline that decision had 1 ms: a log taking 20 ms to answer left the branch
        // prepared, holding its locks, until recovery.
        const memory = yield* TransactionLog.makeMemory
        const slowLog: TransactionLog.TransactionLog["Type"] = {
          ...memory,
          decide: (record) => Effect.delay(memory.decide(record), Duration.millis(20))
        }
        const a = yield* MemoryParticipant.make("bank-a")
        const b = yield* MemoryParticipant.make("bank-b")
        // b's PREPARE lands late (10 ms after the bound cut its call): the branch is prepared all the same.
        const late: Participant.Participant<unknown> = {
          ...b.participant,
          prepare: (ctx, w) =>
            Effect.zipRight(
              Effect.forkDaemon(Effect.delay(b.participant.prepare(ctx, w), Duration.millis(1010))),
              Effect.never
            )
        }
        const txId = yield* TransactionId.make
        const fiber = yield* TwoPhaseCommit.run([branch(a.participant, 1), branch(late, 2)], {
          txId,
          prepareTimeout: Duration.seconds(1),
          transactionTimeout: Duration.seconds(1)
        }).pipe(Effect.provideService(TransactionLog.TransactionLog, slowLog), Effect.fork)
        yield* TestClock.adjust(Duration.millis(1001))
        const outcome = yield* Fiber.join(fiber)
        expect(outcome._tag).toBe("Aborted")
        if (outcome._tag === "Aborted") expect(outcome.reason).toContain("not rolled back yet")
        yield* TestClock.adjust(Duration.millis(10))
        expect([...(yield* b.states).values()]).toEqual(["prepared"])
        yield* TestClock.adjust(Duration.millis(10))
        // The fence held (nothing under this txId commits), and the daemon rolled the gid back.
        expect((yield* memory.snapshot).decisions.get(txId)?.decision).toBe("abort")
        expect([...(yield* b.states).values()]).toEqual(["aborted"])
        expect([...(yield* a.states).values()]).toEqual(["aborted"])
      })
  )
})

describe("TwoPhaseCommit.run: a transaction id used twice", () => {
  it.effect("a second run under a txId that already committed does not commit its branches", () =>
    withLog((log) =>
      Effect.gen(function* () {
        const txId = yield* TransactionId.make
        const a = yield* MemoryParticipant.make("bank-a")
        const b = yield* MemoryParticipant.make("bank-b")
        const first = yield* TwoPhaseCommit.run(
          [branch(a.participant, "debit 10"), branch(b.participant, "credit 10")],
          {
            txId
          }
        )
        expect(first._tag).toBe("Committed")
        // The caller retries the same transfer under the same id (as an idempotency key), later.
        yield* TestClock.adjust(Duration.seconds(1))
        const c = yield* MemoryParticipant.make("bank-a")
        const d = yield* MemoryParticipant.make("bank-b")
        const second = yield* TwoPhaseCommit.run(
          [branch(c.participant, "debit 10"), branch(d.participant, "credit 10")],
          {
            txId
          }
        )
        // Before: the second run took the first run's commit decision for its own and committed
        // the transfer a second time (recovery would have rolled those branches back as duplicates).
        expect(second._tag).toBe("Aborted")
        if (second._tag === "Aborted") expect(second.reason).toContain("already")
        expect([...(yield* c.states).values()]).toEqual(["aborted"])
        expect([...(yield* d.states).values()]).toEqual(["aborted"])
        // The first run's decision stands.
        expect((yield* log.snapshot).decisions.get(first.txId)?.decidedAt).toBe(0)
      })
    )
  )
})

describe("TwoPhaseCommit.run: a decision write that fails, then succeeds", () => {
  it.effect(
    "a first write that landed but failed is retried and read back as this run's own: Committed",
    () =>
      Effect.gen(function* () {
        const memory = yield* TransactionLog.makeMemory
        let calls = 0
        // Lands, then loses its answer (connection reset); a log that reads back copies, as Postgres does.
        const flaky: TransactionLog.TransactionLog["Type"] = {
          ...memory,
          decide: (record) =>
            Effect.flatMap(
              memory.decide({ ...record, branches: record.branches.map((b) => ({ ...b })) }),
              (held) =>
                ++calls === 1
                  ? Effect.fail(
                      new LogError({ operation: "decide", txId: record.txId, reason: "connection reset" })
                    )
                  : Effect.succeed({ ...held })
            )
        }
        const a = yield* MemoryParticipant.make("bank-a")
        const b = yield* MemoryParticipant.make("bank-b")
        const fiber = yield* TwoPhaseCommit.run([branch(a.participant, 1), branch(b.participant, 2)], {
          transactionTimeout: Duration.seconds(5)
        }).pipe(Effect.provideService(TransactionLog.TransactionLog, flaky), Effect.fork)
        yield* TestClock.adjust(Duration.seconds(1))
        const outcome = yield* Fiber.join(fiber)
        expect(outcome._tag).toBe("Committed")
        expect(calls).toBe(2)
        expect([...(yield* a.states).values(), ...(yield* b.states).values()]).toEqual([
          "committed",
          "committed"
        ])
      })
  )
})
