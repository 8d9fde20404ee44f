import { describe, expect, it } from "@effect/vitest"
import { Duration, Effect, Either, Fiber, Metric, Option, Schedule, TestClock, Tracer } from "effect"
import type * as Participant from "../src/Participant.js"
import { branch, fromStarted } from "../src/Participant.js"
import { LogError } from "../src/TransactionError.js"
import * as TransactionId from "../src/TransactionId.js"
import * as TransactionLog from "../src/TransactionLog.js"
import * as TwoPhaseCommit from "../src/TwoPhaseCommit.js"
import * as MemoryParticipant from "./support/MemoryParticipant.js"
import { withLog } from "./support/withLog.js"

describe("TwoPhaseCommit.run", () => {
  it.live("a participant that dies in prepare (a bug) is a No vote: the others are rolled back at once", () =>
    withLog(() =>
      Effect.gen(function* () {
        const a = yield* MemoryParticipant.make("bank-a")
        const b = yield* MemoryParticipant.make("bank-b")
        const buggy: Participant.Participant<unknown> = {
          ...b.participant,
          prepare: () => Effect.dieMessage("cannot read properties of undefined")
        }
        const started = Date.now()
        const outcome = yield* TwoPhaseCommit.run([branch(a.participant, "debit"), branch(buggy, "credit")], {
          prepareTimeout: Duration.seconds(5)
        })
        // Before: the defect was dropped and the run waited out prepareTimeout, "timed out".
        expect(Date.now() - started).toBeLessThan(2_000)
        expect(outcome._tag).toBe("Aborted")
        if (outcome._tag === "Aborted")
          expect(outcome.reason).toContain("cannot read properties of undefined")
        expect([...(yield* a.states).values()]).toEqual(["aborted"])
      })
    )
  )

  it.effect("commits both branches after forcing the commit decision", () =>
    withLog((log) =>
      Effect.gen(function* () {
        const a = yield* MemoryParticipant.make("bank-a")
        const b = yield* MemoryParticipant.make("bank-b")
        const outcome = yield* TwoPhaseCommit.run([
          branch(a.participant, "debit"),
          branch(b.participant, "credit")
        ])
        expect(outcome._tag).toBe("Committed")
        const snapshot = yield* log.snapshot
        const decision = snapshot.decisions.get(outcome.txId)
        expect(decision?.decision).toBe("commit")
        expect(decision?.branches.map((x) => x.branch)).toEqual(["bank-a", "bank-b"])
        expect(snapshot.completed.has(outcome.txId)).toBe(true)
        expect([...(yield* a.states).values()]).toEqual(["committed"])
        expect([...(yield* b.states).values()]).toEqual(["committed"])
        expect(yield* a.calls).toEqual(["prepare:bank-a", "commit:bank-a"])
      })
    )
  )

  it.effect("aborts on a No vote, rolls back the prepared branch and writes no decision", () =>
    withLog((log) =>
      Effect.gen(function* () {
        const a = yield* MemoryParticipant.make("bank-a")
        const b = yield* MemoryParticipant.make("bank-b", { vote: "no" })
        const outcome = yield* TwoPhaseCommit.run([branch(a.participant, 1), branch(b.participant, 2)])
        expect(outcome._tag).toBe("Aborted")
        if (outcome._tag !== "Aborted") return
        expect(outcome.reason).toBe("bank-b: insufficient funds")
        expect(outcome.votes.map((v) => v.vote._tag)).toEqual(["Prepared", "No"])
        expect((yield* log.snapshot).decisions.size).toBe(0)
        expect([...(yield* a.states).values()]).toEqual(["aborted"])
        expect(yield* b.calls).toEqual(["prepare:bank-b"])
      })
    )
  )

  it.effect("turns a prepare that outlives prepareTimeout into a No vote and rolls it back", () =>
    withLog(() =>
      Effect.gen(function* () {
        const a = yield* MemoryParticipant.make("bank-a")
        const slow = yield* MemoryParticipant.make("bank-b", { prepareDelay: Duration.seconds(20) })
        const fiber = yield* TwoPhaseCommit.run([branch(a.participant, 1), branch(slow.participant, 2)], {
          prepareTimeout: Duration.seconds(2)
        }).pipe(Effect.fork)
        yield* TestClock.adjust(Duration.seconds(2))
        const outcome = yield* Fiber.join(fiber)
        expect(outcome._tag).toBe("Aborted")
        if (outcome._tag === "Aborted") expect(outcome.reason).toContain("timed out after 2000 ms")
        // The slow branch may yet become prepared: it is rolled back by gid too.
        expect(yield* slow.calls).toEqual(["prepare:bank-b", "rollback:bank-b"])
      })
    )
  )

  it.effect("commits a single branch in one phase with no log write", () =>
    withLog((log) =>
      Effect.gen(function* () {
        const a = yield* MemoryParticipant.make("bank-a")
        const outcome = yield* TwoPhaseCommit.run([branch(a.participant, 1)])
        expect(outcome._tag).toBe("Committed")
        if (outcome._tag === "Committed") expect(outcome.onePhase).toBe(true)
        expect(yield* a.calls).toEqual(["onePhase:bank-a"])
        expect((yield* log.snapshot).decisions.size).toBe(0)
      })
    )
  )

  it.effect(
    "a single branch under a txId the caller gave goes through both phases, so a second run of that id aborts",
    () =>
      withLog((log) =>
        Effect.gen(function* () {
          const a = yield* MemoryParticipant.make("bank-a")
          const txId = yield* TransactionId.make
          const first = yield* TwoPhaseCommit.run([branch(a.participant, 1)], { txId })
          expect(first._tag).toBe("Committed")
          if (first._tag === "Committed") expect(first.onePhase).toBe(false)
          expect((yield* log.snapshot).decisions.get(txId)?.decision).toBe("commit")
          // The retry, later: before, one phase again, and the work committed twice.
          yield* TestClock.adjust(Duration.seconds(1))
          const again = yield* TwoPhaseCommit.run([branch(a.participant, 1)], { txId })
          expect(again._tag).toBe("Aborted")
          if (again._tag === "Aborted") expect(again.reason).toContain("already has a commit decision")
          expect(yield* a.calls).toEqual([
            "prepare:bank-a",
            "commit:bank-a",
            "prepare:bank-a",
            "rollback:bank-a"
          ])
        })
      )
  )

  it.effect("onePhase overrides the default either way", () =>
    withLog((log) =>
      Effect.gen(function* () {
        const a = yield* MemoryParticipant.make("bank-a")
        const txId = yield* TransactionId.make
        const given = yield* TwoPhaseCommit.run([branch(a.participant, 1)], { txId, onePhase: true })
        expect(given._tag === "Committed" && given.onePhase).toBe(true)
        const fresh = yield* TwoPhaseCommit.run([branch(a.participant, 2)], { onePhase: false })
        expect(fresh._tag === "Committed" && fresh.onePhase).toBe(false)
        expect(yield* a.calls).toEqual(["onePhase:bank-a", "prepare:bank-a", "commit:bank-a"])
        expect([...(yield* log.snapshot).decisions.keys()]).toEqual([fresh.txId])
      })
    )
  )

  it.effect("leaves read-only branches out of the decision and of phase 2", () =>
    withLog((log) =>
      Effect.gen(function* () {
        const a = yield* MemoryParticipant.make("bank-a")
        const b = yield* MemoryParticipant.make("bank-b")
        const reader = yield* MemoryParticipant.make("audit", { vote: "readOnly" })
        const outcome = yield* TwoPhaseCommit.run([
          branch(a.participant, 1),
          branch(b.participant, 2),
          branch(reader.participant, 3)
        ])
        expect(outcome._tag).toBe("Committed")
        expect(yield* reader.calls).toEqual(["prepare:audit"])
        const decision = (yield* log.snapshot).decisions.get(outcome.txId)
        expect(decision?.branches.map((x) => x.branch)).toEqual(["bank-a", "bank-b"])
      })
    )
  )

  it.effect("writes nothing when every branch is read-only", () =>
    withLog((log) =>
      Effect.gen(function* () {
        const a = yield* MemoryParticipant.make("a", { vote: "readOnly" })
        const b = yield* MemoryParticipant.make("b", { vote: "readOnly" })
        const outcome = yield* TwoPhaseCommit.run([branch(a.participant, 1), branch(b.participant, 2)])
        expect(outcome._tag).toBe("Committed")
        expect((yield* log.snapshot).decisions.size).toBe(0)
      })
    )
  )

  it.effect("retries phase 2 with its schedule until the branch acknowledges", () =>
    withLog((log) =>
      Effect.gen(function* () {
        const a = yield* MemoryParticipant.make("bank-a", { commitFailures: 3 })
        const b = yield* MemoryParticipant.make("bank-b")
        const fiber = yield* TwoPhaseCommit.run([branch(a.participant, 1), branch(b.participant, 2)], {
          commitSchedule: Schedule.spaced(Duration.millis(100))
        }).pipe(Effect.fork)
        yield* TestClock.adjust(Duration.millis(300))
        const outcome = yield* Fiber.join(fiber)
        expect(outcome._tag).toBe("Committed")
        expect((yield* a.calls).filter((c) => c.startsWith("commit"))).toHaveLength(4)
        expect((yield* log.snapshot).completed.has(outcome.txId)).toBe(true)
      })
    )
  )

  it.effect(
    "a decision write that never answers fails the run with LogError at the deadline, branches left prepared",
    () =>
      Effect.gen(function* () {
        const memory = yield* TransactionLog.makeMemory
        // The log's connection hangs: the commit decision's insert never answers.
        const hung: TransactionLog.TransactionLog["Type"] = { ...memory, decide: () => Effect.never }
        const a = yield* MemoryParticipant.make("bank-a")
        const b = yield* MemoryParticipant.make("bank-b")
        const fiber = yield* TwoPhaseCommit.run([branch(a.participant, 1), branch(b.participant, 2)], {
          transactionTimeout: Duration.seconds(5)
        }).pipe(Effect.provideService(TransactionLog.TransactionLog, hung), Effect.either, Effect.fork)
        yield* TestClock.adjust(Duration.seconds(6))
        const result = yield* Fiber.join(fiber)
        expect(result._tag).toBe("Left")
        if (result._tag === "Left") {
          expect(result.left._tag).toBe("LogError")
          expect(result.left.message).toContain("may or may not have been written")
        }
        // Not told anything after the decision point: recovery decides (presumed abort here).
        expect((yield* a.calls).filter((c) => c.startsWith("commit") || c.startsWith("rollback"))).toEqual([])
      })
  )

  it.effect(
    "a log's Promise-level decide is used while decide is its twin, and abandoned at the deadline",
    () =>
      Effect.gen(function* () {
        const memory = yield* TransactionLog.makeMemory
        let started = 0
        let abandoned = 0
        // A log whose decide is a Promise underneath, hung: it settles only once abandoned.
        const startHung = (): Participant.Started<TransactionLog.DecisionRecord, LogError> => {
          started++
          let settle: (e: Either.Either<TransactionLog.DecisionRecord, LogError>) => void = () => undefined
          const result = new Promise<Either.Either<TransactionLog.DecisionRecord, LogError>>((r) => {
            settle = r
          })
          return {
            result,
            abandon: () => {
              abandoned++
              settle(Either.left(new LogError({ operation: "decide", reason: "abandoned" })))
            }
          }
        }
        const decide = (_record: TransactionLog.DecisionRecord) => fromStarted(() => startHung())
        const hung: TransactionLog.TransactionLog["Type"] = {
          ...memory,
          decide,
          direct: { decide: () => startHung(), twins: { decide } }
        }
        const a = yield* MemoryParticipant.make("bank-a")
        const b = yield* MemoryParticipant.make("bank-b")
        const run = TwoPhaseCommit.run([branch(a.participant, 1), branch(b.participant, 2)], {
          transactionTimeout: Duration.seconds(5)
        })
        const fiber = yield* run.pipe(
          Effect.provideService(TransactionLog.TransactionLog, hung),
          Effect.either,
          Effect.fork
        )
        yield* TestClock.adjust(Duration.seconds(6))
        const result = yield* Fiber.join(fiber)
        expect(result._tag === "Left" && result.left._tag).toBe("LogError")
        expect([started, abandoned]).toEqual([1, 1])
        // A wrapper that replaces decide is called, not bypassed by the Promise-level call.
        let wrapped = 0
        const audited: TransactionLog.TransactionLog["Type"] = {
          ...hung,
          decide: (record) => Effect.sync(() => wrapped++).pipe(Effect.andThen(memory.decide(record)))
        }
        const outcome = yield* run.pipe(Effect.provideService(TransactionLog.TransactionLog, audited))
        expect(outcome._tag).toBe("Committed")
        expect([wrapped, started]).toEqual([1, 1])
      })
  )

  it.effect("reports CommitPending, never Aborted, when a branch does not acknowledge in time", () =>
    withLog((log) =>
      Effect.gen(function* () {
        const a = yield* MemoryParticipant.make("bank-a", { commitFailures: 1_000 })
        const b = yield* MemoryParticipant.make("bank-b")
        const fiber = yield* TwoPhaseCommit.run([branch(a.participant, 1), branch(b.participant, 2)], {
          transactionTimeout: Duration.seconds(5),
          commitSchedule: Schedule.spaced(Duration.millis(500))
        }).pipe(Effect.fork)
        yield* TestClock.adjust(Duration.seconds(6))
        const outcome = yield* Fiber.join(fiber)
        expect(outcome._tag).toBe("CommitPending")
        if (outcome._tag === "CommitPending") expect(outcome.pending).toEqual(["bank-a"])
        const snapshot = yield* log.snapshot
        expect(snapshot.decisions.get(outcome.txId)?.decision).toBe("commit")
        expect(snapshot.completed.has(outcome.txId)).toBe(false)
      })
    )
  )

  it.effect("aborts when recovery presumed abort under the same key first", () =>
    withLog((log) =>
      Effect.gen(function* () {
        const a = yield* MemoryParticipant.make("bank-a")
        const b = yield* MemoryParticipant.make("bank-b")
        const txId = yield* TransactionId.make
        yield* log.decide({ txId, decision: "abort", branches: [], decidedAt: 0 })
        const outcome = yield* TwoPhaseCommit.run([branch(a.participant, 1), branch(b.participant, 2)], {
          txId
        })
        expect(outcome._tag).toBe("Aborted")
        expect([...(yield* a.states).values()]).toEqual(["aborted"])
        expect([...(yield* b.states).values()]).toEqual(["aborted"])
      })
    )
  )

  it.effect("refuses empty, duplicate and badly named branches before calling anyone", () =>
    withLog(() =>
      Effect.gen(function* () {
        const a = yield* MemoryParticipant.make("bank-a")
        const hostile = yield* MemoryParticipant.make("x'; drop table accounts; --")
        const empty = yield* TwoPhaseCommit.run([]).pipe(Effect.flip)
        expect(empty._tag).toBe("InvalidTransactionError")
        const twice = yield* TwoPhaseCommit.run([branch(a.participant, 1), branch(a.participant, 2)]).pipe(
          Effect.flip
        )
        expect(twice.message).toContain("appears in two branches")
        const bad = yield* TwoPhaseCommit.run([
          branch(a.participant, 1),
          branch(hostile.participant, 2)
        ]).pipe(Effect.flip)
        expect(bad._tag).toBe("InvalidTransactionError")
        const badTx = yield* TwoPhaseCommit.run([branch(a.participant, 1)], { txId: "1'; --" }).pipe(
          Effect.flip
        )
        expect(badTx._tag).toBe("InvalidTransactionError")
        expect(yield* a.calls).toEqual([])
        expect(yield* hostile.calls).toEqual([])
      })
    )
  )

  it.effect("reports a branch rolled back by hand after the decision as a heuristic outcome", () =>
    withLog((log) =>
      Effect.gen(function* () {
        const a = yield* MemoryParticipant.make("bank-a")
        const b = yield* MemoryParticipant.make("bank-b")
        const txId = yield* TransactionId.make
        // The operator's ROLLBACK PREPARED lands between prepare and phase 2.
        const forcing: typeof b.participant = {
          ...b.participant,
          commit: (ctx) => b.forceRollback(ctx.gid).pipe(Effect.zipRight(b.participant.commit(ctx)))
        }
        const outcome = yield* TwoPhaseCommit.run([branch(a.participant, 1), branch(forcing, 2)], { txId })
        expect(outcome._tag).toBe("Committed")
        if (outcome._tag === "Committed") expect(outcome.heuristics.map((h) => h.branch)).toEqual(["bank-b"])
        expect((yield* log.heuristics).map((h) => h.branch)).toEqual(["bank-b"])
        expect(Option.isSome(yield* log.decision(txId))).toBe(true)
      })
    )
  )
})

/** A tracer that keeps every span it starts, with its attributes. */
const recordingTracer = () => {
  const spans: Array<Tracer.Span> = []
  const tracer = Tracer.make({
    span: (name, parent, context, links, startTime, kind) => {
      const attributes = new Map<string, unknown>()
      const span: Tracer.Span = {
        _tag: "Span",
        name,
        spanId: `span-${spans.length}`,
        traceId: "trace",
        parent,
        context,
        status: { _tag: "Started", startTime },
        attributes,
        links,
        sampled: true,
        kind,
        end: () => undefined,
        attribute: (key, value) => {
          attributes.set(key, value)
        },
        event: () => undefined,
        addLinks: () => undefined
      }
      spans.push(span)
      return span
    },
    context: (f) => f()
  })
  return { spans, tracer }
}

describe("TwoPhaseCommit.run observability", () => {
  it.effect(
    "the run's span carries the txId, branches, phase timings and outcome; the metrics count it",
    () =>
      withLog(() =>
        Effect.gen(function* () {
          const committed = Metric.tagged(TwoPhaseCommit.outcomes, "outcome", "Committed")
          const aborted = Metric.tagged(TwoPhaseCommit.outcomes, "outcome", "Aborted")
          const before = [(yield* Metric.value(committed)).count, (yield* Metric.value(aborted)).count]
          const latencyBefore = (yield* Metric.value(TwoPhaseCommit.latency)).count
          const { spans, tracer } = recordingTracer()
          const a = yield* MemoryParticipant.make("bank-a")
          const b = yield* MemoryParticipant.make("bank-b")
          const no = yield* MemoryParticipant.make("bank-c", { vote: "no" })
          const ok = yield* TwoPhaseCommit.run([branch(a.participant, 1), branch(b.participant, 2)]).pipe(
            Effect.withTracer(tracer)
          )
          const refused = yield* TwoPhaseCommit.run([
            branch(a.participant, 3),
            branch(no.participant, 4)
          ]).pipe(Effect.withTracer(tracer))
          const runs = spans.filter((s) => s.name === "TwoPhaseCommit.run")
          expect(runs).toHaveLength(2)
          expect(Object.fromEntries(runs[0]!.attributes)).toEqual({
            txId: ok.txId,
            branches: "bank-a,bank-b",
            prepareMs: 0,
            decideMs: 0,
            outcome: "Committed",
            ms: 0
          })
          expect(Object.fromEntries(runs[1]!.attributes)).toEqual({
            txId: refused.txId,
            branches: "bank-a,bank-c",
            prepareMs: 0,
            aborted: "bank-c: insufficient funds",
            outcome: "Aborted",
            ms: 0
          })
          expect((yield* Metric.value(committed)).count - before[0]!).toBe(1)
          expect((yield* Metric.value(aborted)).count - before[1]!).toBe(1)
          expect((yield* Metric.value(TwoPhaseCommit.latency)).count - latencyBefore).toBe(2)
        })
      )
  )
})

describe("TwoPhaseCommit.run and the tracer", () => {
  /** A participant that records the name of the span its prepare runs under. */
  const spanSeeing = (participant: Participant.Participant<unknown>, seen: Array<string>) => ({
    ...participant,
    prepare: (ctx: Participant.BranchContext, work: unknown) =>
      Effect.currentSpan.pipe(
        Effect.match({ onFailure: () => "none", onSuccess: (span) => span.name }),
        Effect.tap((name) => Effect.sync(() => seen.push(name))),
        Effect.zipRight(participant.prepare(ctx, work))
      )
  })

  it.effect("under Effect's built-in tracer the run makes no span and annotates none of the caller's", () =>
    withLog(() =>
      Effect.gen(function* () {
        const seen: Array<string> = []
        const a = yield* MemoryParticipant.make("bank-a")
        const b = yield* MemoryParticipant.make("bank-b")
        const [outcome, callerAttributes] = yield* Effect.gen(function* () {
          const outcome = yield* TwoPhaseCommit.run([
            branch(spanSeeing(a.participant, seen), 1),
            branch(b.participant, 2)
          ])
          return [outcome, (yield* Effect.currentSpan).attributes.size] as const
        }).pipe(Effect.withSpan("caller"))
        expect(outcome._tag).toBe("Committed")
        expect(seen).toEqual(["caller"])
        expect(callerAttributes).toBe(0)
      })
    )
  )

  it.effect("under any other tracer the branch calls run inside the run's span", () =>
    withLog(() =>
      Effect.gen(function* () {
        const seen: Array<string> = []
        const { spans, tracer } = recordingTracer()
        const a = yield* MemoryParticipant.make("bank-a")
        const b = yield* MemoryParticipant.make("bank-b")
        yield* TwoPhaseCommit.run([
          branch(spanSeeing(a.participant, seen), 1),
          branch(b.participant, 2)
        ]).pipe(Effect.withSpan("caller"), Effect.withTracer(tracer))
        expect(seen).toEqual(["TwoPhaseCommit.run"])
        const caller = spans.find((s) => s.name === "caller")!
        expect(caller.attributes.size).toBe(0)
      })
    )
  )
})

describe("TwoPhaseCommit.run under the live clock", () => {
  // Node fires a timer longer than 2^31-1 ms after 1 ms: a 30-day or infinite bound must not.
  for (const [label, bound] of [
    ["30 days", Duration.days(30)],
    ["infinite", Duration.infinity]
  ] as const) {
    it.live(`a ${label} bound does not cut a 20 ms prepare short`, () =>
      withLog(() =>
        Effect.gen(function* () {
          const slow = (m: Effect.Effect.Success<ReturnType<typeof MemoryParticipant.make>>) => ({
            ...m.participant,
            prepare: (ctx: Parameters<typeof m.participant.prepare>[0], work: unknown) =>
              Effect.zipRight(Effect.sleep(Duration.millis(20)), m.participant.prepare(ctx, work as never))
          })
          const a = yield* MemoryParticipant.make("bank-a")
          const b = yield* MemoryParticipant.make("bank-b")
          const outcome = yield* TwoPhaseCommit.run([branch(slow(a), "debit"), branch(slow(b), "credit")], {
            prepareTimeout: bound,
            transactionTimeout: bound,
            callTimeout: bound
          })
          expect(outcome._tag).toBe("Committed")
        })
      )
    )
  }
})
