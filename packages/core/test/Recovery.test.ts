import { describe, expect, it } from "@effect/vitest"
import { Clock, Duration, Effect, Fiber, Schedule, TestClock } from "effect"
import { branch } from "../src/Participant.js"
import * as Recovery from "../src/Recovery.js"
import * as TransactionId from "../src/TransactionId.js"
import * as TransactionLog from "../src/TransactionLog.js"
import * as TwoPhaseCommit from "../src/TwoPhaseCommit.js"
import * as MemoryParticipant from "./support/MemoryParticipant.js"

const setup = Effect.gen(function* () {
  const log = yield* TransactionLog.makeMemory
  const a = yield* MemoryParticipant.make("bank-a")
  const b = yield* MemoryParticipant.make("bank-b")
  return { log, a, b }
})

/** A commit decision over both branches, as a coordinator that died before phase 2 left it. */
const commitDecisionFor = (
  { log, a, b }: Effect.Effect.Success<typeof setup>,
  prepare: { readonly a: boolean; readonly b: boolean }
) =>
  Effect.gen(function* () {
    const txId = yield* TransactionId.make
    const gidA = TransactionId.gid(txId, a.participant.name)
    const gidB = TransactionId.gid(txId, b.participant.name)
    yield* prepare.a ? a.seedPrepared(gidA) : a.forceRollback(gidA)
    yield* prepare.b ? b.seedPrepared(gidB) : b.forceRollback(gidB)
    yield* log.decide({
      txId,
      decision: "commit",
      branches: [
        { branch: a.participant.name, gid: gidA },
        { branch: b.participant.name, gid: gidB }
      ],
      decidedAt: 0
    })
    return { txId, gidA, gidB }
  })

/** A commit decision logged at `decidedAt` whose one branch, on `gone`, stays prepared. */
const stuckDecision = (
  log: TransactionLog.TransactionLog["Type"],
  gone: Effect.Effect.Success<ReturnType<typeof MemoryParticipant.make>>,
  decidedAt: number
) =>
  Effect.gen(function* () {
    const txId = yield* TransactionId.make
    const gid = TransactionId.gid(txId, gone.participant.name)
    yield* gone.seedPrepared(gid)
    yield* log.decide({
      txId,
      decision: "commit",
      branches: [{ branch: gone.participant.name, gid }],
      decidedAt
    })
  })

describe("Recovery.run", () => {
  it.effect("reads unfinished decisions in pages of `limit`: 100,000 unless told otherwise", () =>
    Effect.gen(function* () {
      const { log, a, b } = yield* setup
      const asked: Array<number | undefined> = []
      const counting: typeof log = {
        ...log,
        unfinished: (options) => {
          asked.push(options?.limit)
          return log.unfinished(options)
        }
      }
      const pass = (options: Recovery.Options) =>
        Recovery.run([a.participant, b.participant], { orphanAfter: 0, ...options }).pipe(
          Effect.provideService(TransactionLog.TransactionLog, counting)
        )
      yield* pass({})
      yield* pass({ limit: 10 })
      expect(asked).toEqual([100_000, 10])
    })
  )

  it.effect(
    "one pass pages through the log: a decision behind more than `limit` stuck ones is still finished",
    () =>
      Effect.gen(function* () {
        const log = yield* TransactionLog.makeMemory
        const a = yield* MemoryParticipant.make("bank-a")
        // A participant gone for good: every commit fails.
        const gone = yield* MemoryParticipant.make("bank-gone", { commitFailures: Number.POSITIVE_INFINITY })
        yield* TestClock.setTime(100_000)
        // Three old decisions that stay unfinished, two of them decided in the same millisecond
        // (they straddle the first page's end).
        for (const decidedAt of [1_000, 2_000, 2_000]) yield* stuckDecision(log, gone, decidedAt)
        // A newer decision whose branches committed, but whose completion record was lost: only
        // the log names it (no branch is left in doubt for the orphan scan to meet).
        const txId = yield* TransactionId.make
        const gidA = TransactionId.gid(txId, a.participant.name)
        yield* a.seedPrepared(gidA)
        yield* a.participant.commit({ txId, branch: a.participant.name, gid: gidA })
        // Rolled back by hand after its commit decision: a heuristic outcome to report.
        const manual = yield* TransactionId.make
        const gidManual = TransactionId.gid(manual, a.participant.name)
        yield* a.forceRollback(gidManual)
        for (const [id, gid, decidedAt] of [
          [txId, gidA, 3_000],
          [manual, gidManual, 3_000]
        ] as const) {
          yield* log.decide({
            txId: id,
            decision: "commit",
            branches: [{ branch: a.participant.name, gid }],
            decidedAt
          })
        }
        const pages: Array<number> = []
        const counting: typeof log = {
          ...log,
          unfinished: (options) => log.unfinished(options).pipe(Effect.tap((page) => pages.push(page.length)))
        }
        const report = yield* Recovery.run([a.participant, gone.participant], {
          limit: 2,
          retrySchedule: Schedule.stop
        }).pipe(Effect.provideService(TransactionLog.TransactionLog, counting))
        expect(report.transactionsFinished).toBe(2)
        const completed = (yield* log.snapshot).completed
        expect(completed.has(txId)).toBe(true)
        expect(completed.has(manual)).toBe(true)
        expect(report.heuristics.map((h) => h.gid)).toEqual([gidManual])
        expect((yield* log.snapshot).heuristics.map((h) => h.gid)).toEqual([gidManual])
        expect(report.unresolved.filter((u) => u.branch === gone.participant.name)).toHaveLength(3)
        // Pages of two, read one after the other, the last one short.
        expect(pages).toEqual([2, 2, 1])
      })
  )

  it.effect("a pass stops paging at decisions decided after it began, however many keep arriving", () =>
    Effect.gen(function* () {
      const log = yield* TransactionLog.makeMemory
      const gone = yield* MemoryParticipant.make("bank-gone", { commitFailures: Number.POSITIVE_INFINITY })
      yield* TestClock.setTime(100_000)
      const stuck = (decidedAt: number) => stuckDecision(log, gone, decidedAt)
      yield* stuck(1_000)
      yield* stuck(2_000)
      // Every read finds one more unfinished decision, decided now (a busy coordinator).
      let reads = 0
      const busy: typeof log = {
        ...log,
        unfinished: (options) =>
          Effect.suspend(() => {
            reads++
            // Without a stop the pass would read for ever: fail the test instead of hanging.
            if (reads > 10) return Effect.dieMessage("the pass kept reading")
            return Effect.zipRight(Effect.flatMap(Clock.currentTimeMillis, stuck), log.unfinished(options))
          })
      }
      yield* Recovery.run([gone.participant], {
        orphanAfter: 0,
        limit: 1,
        retrySchedule: Schedule.stop
      }).pipe(Effect.provideService(TransactionLog.TransactionLog, busy))
      // Two old decisions, then the first page ending with one decided as the pass began.
      expect(reads).toBe(3)
    })
  )

  it.effect("commits the branches of a commit decision whose phase 2 never ran", () =>
    Effect.gen(function* () {
      const world = yield* setup
      const { log, a, b } = world
      const { txId, gidA, gidB } = yield* commitDecisionFor(world, { a: true, b: true })
      const report = yield* Recovery.run([a.participant, b.participant], { orphanAfter: 0 }).pipe(
        Effect.provideService(TransactionLog.TransactionLog, log)
      )
      expect(report.transactionsFinished).toBe(1)
      expect(report.branchesCommitted).toBe(2)
      expect((yield* a.states).get(gidA)).toBe("committed")
      expect((yield* b.states).get(gidB)).toBe("committed")
      expect((yield* log.snapshot).completed.has(txId)).toBe(true)
    })
  )

  it.effect(
    "a commit decision met through one old orphan is driven on all its branches before it completes",
    () =>
      Effect.gen(function* () {
        const { log, a, b } = yield* setup
        yield* TestClock.setTime(100_000)
        const txId = yield* TransactionId.make
        const gidA = TransactionId.gid(txId, a.participant.name)
        const gidB = TransactionId.gid(txId, b.participant.name)
        // A prepared 40 s ago, B 15 s ago (a slow prepare), the decision 10 s ago; the coordinator died.
        yield* a.seedPrepared(gidA, 60_000)
        yield* b.seedPrepared(gidB, 85_000)
        yield* log.decide({
          txId,
          decision: "commit",
          branches: [
            { branch: a.participant.name, gid: gidA },
            { branch: b.participant.name, gid: gidB }
          ],
          decidedAt: 90_000
        })
        const pass = Recovery.run([a.participant, b.participant]).pipe(
          Effect.provideService(TransactionLog.TransactionLog, log)
        )
        // A is an orphan (older than orphanAfter, 30 s); the decision and B are young.
        const first = yield* pass
        expect(first.branchesCommitted).toBe(2)
        expect((yield* b.states).get(gidB)).toBe("committed")
        expect((yield* log.snapshot).completed.has(txId)).toBe(true)
        yield* TestClock.adjust(Duration.seconds(30))
        const second = yield* pass
        expect(second.branchesRolledBack).toBe(0)
        expect(second.heuristics).toEqual([])
        expect((yield* a.states).get(gidA)).toBe("committed")
        expect((yield* b.states).get(gidB)).toBe("committed")
      })
  )

  it.effect(
    "a commit decision with a branch this recovery cannot reach is not completed, and that branch commits later",
    () =>
      Effect.gen(function* () {
        const { log, a, b } = yield* setup
        yield* TestClock.setTime(40_000)
        const txId = yield* TransactionId.make
        const gidA = TransactionId.gid(txId, a.participant.name)
        const gidB = TransactionId.gid(txId, b.participant.name)
        yield* a.seedPrepared(gidA, 0)
        yield* b.seedPrepared(gidB, 0)
        yield* log.decide({
          txId,
          decision: "commit",
          branches: [
            { branch: a.participant.name, gid: gidA },
            { branch: b.participant.name, gid: gidB }
          ],
          decidedAt: 35_000
        })
        // Only A's participant is given; the decision is young (5 s), so A is met as an orphan.
        const onlyA = yield* Recovery.run([a.participant]).pipe(
          Effect.provideService(TransactionLog.TransactionLog, log)
        )
        expect(onlyA.branchesCommitted).toBe(1)
        expect(onlyA.unresolved.map((u) => u.branch)).toEqual(["bank-b"])
        expect((yield* log.snapshot).completed.has(txId)).toBe(false)
        const both = yield* Recovery.run([a.participant, b.participant], { orphanAfter: 0 }).pipe(
          Effect.provideService(TransactionLog.TransactionLog, log)
        )
        expect(both.branchesRolledBack).toBe(0)
        expect((yield* a.states).get(gidA)).toBe("committed")
        expect((yield* b.states).get(gidB)).toBe("committed")
        expect((yield* log.snapshot).completed.has(txId)).toBe(true)
      })
  )

  it.effect("presumes abort for an orphan by writing the abort decision, then rolls it back", () =>
    Effect.gen(function* () {
      const { log, a, b } = yield* setup
      const txId = yield* TransactionId.make
      const gidA = TransactionId.gid(txId, a.participant.name)
      yield* a.seedPrepared(gidA)
      const report = yield* Recovery.run([a.participant, b.participant], { orphanAfter: 0 }).pipe(
        Effect.provideService(TransactionLog.TransactionLog, log)
      )
      expect(report.presumedAborts).toBe(1)
      expect(report.branchesRolledBack).toBe(1)
      expect((yield* a.states).get(gidA)).toBe("aborted")
      expect((yield* log.snapshot).decisions.get(txId)?.decision).toBe("abort")
    })
  )

  it.effect("leaves young orphans to their coordinator", () =>
    Effect.gen(function* () {
      const { log, a } = yield* setup
      yield* TestClock.setTime(10_000)
      const txId = yield* TransactionId.make
      yield* a.seedPrepared(TransactionId.gid(txId, a.participant.name))
      // The double reports preparedAt 0: 10 s old.
      const report = yield* Recovery.run([a.participant], { orphanAfter: Duration.seconds(30) }).pipe(
        Effect.provideService(TransactionLog.TransactionLog, log)
      )
      expect(report.youngLeft).toBe(1)
      expect((yield* log.snapshot).decisions.size).toBe(0)
    })
  )

  it.effect("changes nothing when run a second time", () =>
    Effect.gen(function* () {
      const { log, a, b } = yield* setup
      const txId = yield* TransactionId.make
      yield* a.seedPrepared(TransactionId.gid(txId, a.participant.name))
      const provide = Effect.provideService(TransactionLog.TransactionLog, log)
      yield* Recovery.run([a.participant, b.participant], { orphanAfter: 0 }).pipe(provide)
      const before = { log: yield* log.snapshot, a: yield* a.states }
      const second = yield* Recovery.run([a.participant, b.participant], { orphanAfter: 0 }).pipe(provide)
      expect(second).toEqual({
        transactionsFinished: 0,
        branchesCommitted: 0,
        branchesRolledBack: 0,
        presumedAborts: 0,
        youngLeft: 0,
        heuristics: [],
        unresolved: [],
        foreign: []
      })
      expect(yield* log.snapshot).toEqual(before.log)
      expect(yield* a.states).toEqual(before.a)
    })
  )

  it.effect("finishes a CommitPending transaction and completes its entry", () =>
    Effect.gen(function* () {
      const log = yield* TransactionLog.makeMemory
      const a = yield* MemoryParticipant.make("bank-a", { commitFailures: 3 })
      const b = yield* MemoryParticipant.make("bank-b")
      const provide = Effect.provideService(TransactionLog.TransactionLog, log)
      const fiber = yield* TwoPhaseCommit.run([branch(a.participant, 1), branch(b.participant, 2)], {
        transactionTimeout: Duration.seconds(1),
        commitSchedule: Schedule.spaced(Duration.seconds(1))
      }).pipe(provide, Effect.fork)
      yield* TestClock.adjust(Duration.seconds(2))
      const outcome = yield* Fiber.join(fiber)
      expect(outcome._tag).toBe("CommitPending")
      const young = yield* Recovery.run([a.participant, b.participant], {
        retrySchedule: Schedule.recurs(5)
      }).pipe(provide)
      // Two seconds old: its coordinator may still be in phase 2, so the default grace leaves it.
      expect(young.transactionsFinished).toBe(0)
      const report = yield* Recovery.run([a.participant, b.participant], {
        orphanAfter: 0,
        retrySchedule: Schedule.recurs(5)
      }).pipe(provide)
      expect(report.transactionsFinished).toBe(1)
      expect((yield* log.snapshot).completed.has(outcome.txId)).toBe(true)
      expect([...(yield* a.states).values()]).toEqual(["committed"])
    })
  )

  it.effect(
    "never splits a transaction when it races the coordinator",
    () =>
      Effect.gen(function* () {
        // Many transactions against a recovery loop that presumes abort at once (orphanAfter 0):
        // whichever decision lands first holds for every branch.
        const log = yield* TransactionLog.makeMemory
        const a = yield* MemoryParticipant.make("bank-a", { prepareDelay: Duration.millis(5) })
        const b = yield* MemoryParticipant.make("bank-b", { prepareDelay: Duration.millis(7) })
        const provide = Effect.provideService(TransactionLog.TransactionLog, log)
        const transactions = yield* Effect.forEach(
          Array.from({ length: 50 }, (_, i) => i),
          (i) =>
            Effect.sleep(Duration.millis(i)).pipe(
              Effect.zipRight(TwoPhaseCommit.run([branch(a.participant, i), branch(b.participant, i)])),
              provide,
              Effect.fork
            )
        )
        const recovery = yield* Recovery.run([a.participant, b.participant], { orphanAfter: 0 }).pipe(
          provide,
          Effect.repeat(Schedule.spaced(Duration.millis(3))),
          Effect.fork
        )
        yield* TestClock.adjust(Duration.millis(200))
        const outcomes = yield* Effect.forEach(transactions, Fiber.join)
        yield* Fiber.interrupt(recovery)
        yield* Recovery.run([a.participant, b.participant], { orphanAfter: 0 }).pipe(provide)
        const statesA = yield* a.states
        const statesB = yield* b.states
        for (const outcome of outcomes) {
          const sa = statesA.get(TransactionId.gid(outcome.txId, a.participant.name))
          const sb = statesB.get(TransactionId.gid(outcome.txId, b.participant.name))
          expect(sa).toBe(sb)
          expect(sa).toBe(outcome._tag === "Committed" ? "committed" : "aborted")
        }
        expect(outcomes.some((o) => o._tag === "Aborted")).toBe(true)
      }),
    30_000
  )

  it.effect("records a commit that finds its branch rolled back by hand as heuristic", () =>
    Effect.gen(function* () {
      const world = yield* setup
      const { log, a, b } = world
      // bank-b's branch was rolled back by hand after the commit decision.
      yield* commitDecisionFor(world, { a: true, b: false })
      const report = yield* Recovery.run([a.participant, b.participant], { orphanAfter: 0 }).pipe(
        Effect.provideService(TransactionLog.TransactionLog, log)
      )
      expect(report.heuristics.map((h) => [h.branch, h.decision])).toEqual([["bank-b", "commit"]])
      expect((yield* log.heuristics).length).toBe(1)
    })
  )
  it.effect(
    "rolls back a gid prepared again after its transaction completed instead of committing it twice",
    () =>
      Effect.gen(function* () {
        const { log, a, b } = yield* setup
        const provide = Effect.provideService(TransactionLog.TransactionLog, log)
        const outcome = yield* TwoPhaseCommit.run([branch(a.participant, 1), branch(b.participant, 2)]).pipe(
          provide
        )
        expect(outcome._tag).toBe("Committed")
        // A late duplicate of the prepare delivers the work again under the same gid.
        const gidA = TransactionId.gid(outcome.txId, a.participant.name)
        yield* a.seedPrepared(gidA)
        const report = yield* Recovery.run([a.participant, b.participant], { orphanAfter: 0 }).pipe(provide)
        expect(report.branchesCommitted).toBe(0)
        expect(report.branchesRolledBack).toBe(1)
        expect(report.heuristics.map((h) => h.detail)).toEqual([
          "branch prepared again after its transaction completed (duplicate delivery); rolled back"
        ])
        expect((yield* a.states).get(gidA)).toBe("aborted")
      })
  )
})
