/**
 * Participants with Promise-level calls (`Participant.direct`): the coordinator runs a phase's
 * calls in one `Effect.async` instead of one fiber per call, with the same outcomes, bounds and
 * interruptions as the Effect calls.
 */
import { describe, expect, it } from "@effect/vitest"
import { Duration, Effect, Exit, Fiber, Schedule, TestClock } from "effect"
import { branch } from "../src/Participant.js"
import * as TwoPhaseCommit from "../src/TwoPhaseCommit.js"
import * as PromiseParticipant from "./support/PromiseParticipant.js"
import { withLog } from "./support/withLog.js"

describe("TwoPhaseCommit.run over direct calls (live clock)", () => {
  it.live("calls prepare and commit directly, never through the Effect twins, and commits", () =>
    withLog((log) =>
      Effect.gen(function* () {
        const a = PromiseParticipant.make("bank-a", { prepareMs: 5 })
        const b = PromiseParticipant.make("bank-b", { prepareMs: 10 })
        const outcome = yield* TwoPhaseCommit.run([branch(a.participant, 1), branch(b.participant, 2)])
        expect(outcome._tag).toBe("Committed")
        expect(a.calls).toEqual(["prepare:bank-a", "commit:bank-a"])
        expect(b.calls).toEqual(["prepare:bank-b", "commit:bank-b"])
        expect((yield* log.snapshot).completed.has(outcome.txId)).toBe(true)
      })
    )
  )

  it.live("a single branch commits in one phase through its direct call", () =>
    withLog((log) =>
      Effect.gen(function* () {
        const a = PromiseParticipant.make("bank-a")
        const outcome = yield* TwoPhaseCommit.run([branch(a.participant, 1)])
        expect(outcome._tag === "Committed" && outcome.onePhase).toBe(true)
        expect(a.calls).toEqual(["commitOnePhase:bank-a"])
        expect((yield* log.snapshot).decisions.size).toBe(0)
      })
    )
  )

  it.live("a prepare past prepareTimeout is abandoned, its clean-up awaited, and it counts as a No", () =>
    withLog((log) =>
      Effect.gen(function* () {
        const a = PromiseParticipant.make("bank-a")
        const slow = PromiseParticipant.make("bank-b", { prepareMs: 10_000, cleanUpMs: 50 })
        const outcome = yield* TwoPhaseCommit.run([branch(a.participant, 1), branch(slow.participant, 2)], {
          prepareTimeout: Duration.millis(100)
        })
        expect(outcome._tag).toBe("Aborted")
        if (outcome._tag === "Aborted") expect(outcome.reason).toContain("timed out after 100 ms")
        // Abandoned and cleaned up before the phase ended; then rolled back by gid, as it may be prepared.
        expect(slow.abandoned).toEqual(["prepare:bank-b"])
        expect(slow.cleanedUp).toEqual(["prepare:bank-b"])
        expect(slow.calls).toEqual(["prepare:bank-b", "rollback:bank-b"])
        expect(a.calls).toEqual(["prepare:bank-a", "rollback:bank-a"])
        expect((yield* log.snapshot).decisions.size).toBe(0)
      })
    )
  )

  it.live("a failed prepare is a No that may still be prepared: it is rolled back too", () =>
    withLog(() =>
      Effect.gen(function* () {
        const a = PromiseParticipant.make("bank-a")
        const lost = PromiseParticipant.make("bank-b", { prepare: "fail" })
        const outcome = yield* TwoPhaseCommit.run([branch(a.participant, 1), branch(lost.participant, 2)])
        expect(outcome._tag).toBe("Aborted")
        if (outcome._tag === "Aborted") expect(outcome.reason).toContain("connection lost")
        expect(lost.calls).toEqual(["prepare:bank-b", "rollback:bank-b"])
      })
    )
  )

  it.live("a definite No is not rolled back; the prepared branch is", () =>
    withLog(() =>
      Effect.gen(function* () {
        const a = PromiseParticipant.make("bank-a")
        const refuses = PromiseParticipant.make("bank-b", { prepare: "no" })
        const outcome = yield* TwoPhaseCommit.run([branch(a.participant, 1), branch(refuses.participant, 2)])
        expect(outcome._tag === "Aborted" && outcome.reason).toBe("bank-b: insufficient funds")
        expect(refuses.calls).toEqual(["prepare:bank-b"])
        expect(a.calls).toEqual(["prepare:bank-a", "rollback:bank-a"])
      })
    )
  )

  it.live("a failed first commit goes on through the Effect call with its retry schedule", () =>
    withLog((log) =>
      Effect.gen(function* () {
        const a = PromiseParticipant.make("bank-a", { commitFailures: 2 })
        const b = PromiseParticipant.make("bank-b")
        const outcome = yield* TwoPhaseCommit.run([branch(a.participant, 1), branch(b.participant, 2)], {
          commitSchedule: Schedule.spaced(Duration.millis(5))
        })
        expect(outcome._tag).toBe("Committed")
        expect(a.calls).toEqual([
          "prepare:bank-a",
          "commit:bank-a",
          "effect:commit:bank-a",
          "commit:bank-a",
          "effect:commit:bank-a",
          "commit:bank-a"
        ])
        expect(b.calls).toEqual(["prepare:bank-b", "commit:bank-b"])
        expect((yield* log.snapshot).completed.has(outcome.txId)).toBe(true)
      })
    )
  )

  it.live("a wrapper that replaces commit is called, not bypassed by the direct call", () =>
    withLog(() =>
      Effect.gen(function* () {
        const a = PromiseParticipant.make("bank-a")
        const b = PromiseParticipant.make("bank-b")
        const wrapped: string[] = []
        const audited = {
          ...a.participant,
          commit: (ctx: Parameters<typeof a.participant.commit>[0]) =>
            Effect.zipRight(
              Effect.sync(() => wrapped.push(ctx.branch)),
              a.participant.commit(ctx)
            )
        }
        const outcome = yield* TwoPhaseCommit.run([branch(audited, 1), branch(b.participant, 2)])
        expect(outcome._tag).toBe("Committed")
        expect(wrapped).toEqual(["bank-a"])
        // Prepare is still the participant's own, so it stays direct.
        expect(a.calls).toEqual(["prepare:bank-a", "effect:commit:bank-a", "commit:bank-a"])
        // One branch without a direct commit puts the whole phase on the Effect calls.
        expect(b.calls).toEqual(["prepare:bank-b", "effect:commit:bank-b", "commit:bank-b"])
      })
    )
  )

  it.live("interrupting the transaction abandons every unfinished direct call and awaits its clean-up", () =>
    withLog((log) =>
      Effect.gen(function* () {
        const a = PromiseParticipant.make("bank-a", { prepareMs: 10_000, cleanUpMs: 30 })
        const b = PromiseParticipant.make("bank-b", { prepareMs: 10_000, cleanUpMs: 60 })
        const fiber = yield* Effect.fork(
          TwoPhaseCommit.run([branch(a.participant, 1), branch(b.participant, 2)])
        )
        yield* Effect.sleep(Duration.millis(50))
        yield* Fiber.interrupt(fiber)
        expect(a.cleanedUp).toEqual(["prepare:bank-a"])
        expect(b.cleanedUp).toEqual(["prepare:bank-b"])
        expect((yield* log.snapshot).decisions.size).toBe(0)
      })
    )
  )

  it.live(
    "a direct call that throws is a No vote, as its Effect twin's defect is; the others are rolled back",
    () =>
      withLog(() =>
        Effect.gen(function* () {
          const a = PromiseParticipant.make("bank-a", { prepareMs: 10_000, cleanUpMs: 20 })
          const broken = PromiseParticipant.make("bank-b", { prepare: "throw" })
          const exit = yield* Effect.exit(
            TwoPhaseCommit.run([branch(a.participant, 1), branch(broken.participant, 2)], {
              prepareTimeout: Duration.millis(100)
            })
          )
          // Before: the run died with the defect (the Effect path made it a No vote).
          expect(Exit.isSuccess(exit) && exit.value._tag).toBe("Aborted")
          const vote = Exit.isSuccess(exit) ? exit.value.votes[1]?.vote : undefined
          expect(vote?._tag === "No" && vote.reason).toContain("bug in bank-b")
          expect(a.cleanedUp).toEqual(["prepare:bank-a"])
          expect(a.calls).toContain("rollback:bank-a")
        })
      )
  )
})

describe("TwoPhaseCommit.run over direct calls (test clock)", () => {
  it.effect("the bound follows TestClock: the calls go through fibers then", () =>
    withLog(() =>
      Effect.gen(function* () {
        const a = PromiseParticipant.make("bank-a")
        const slow = PromiseParticipant.make("bank-b", { prepareMs: 10_000 })
        const fiber = yield* TwoPhaseCommit.run([branch(a.participant, 1), branch(slow.participant, 2)], {
          prepareTimeout: Duration.seconds(2)
        }).pipe(Effect.fork)
        // Let both calls start before moving the clock.
        yield* Effect.promise(() => new Promise((resolve) => setTimeout(resolve, 20)))
        yield* TestClock.adjust(Duration.seconds(2))
        const outcome = yield* Fiber.join(fiber)
        expect(outcome._tag === "Aborted" && outcome.reason).toContain("timed out after 2000 ms")
        expect(slow.abandoned).toEqual(["prepare:bank-b"])
      })
    )
  )
})
