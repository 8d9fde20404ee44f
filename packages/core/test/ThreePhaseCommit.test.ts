import { describe, expect, it } from "@effect/vitest"
import { Clock, Deferred, Duration, Effect, Either, Fiber, Option, Ref, TestClock } from "effect"
import { type Participant, branch as branch2pc } from "../src/Participant.js"
import * as Recovery from "../src/Recovery.js"
import * as ThreePhaseCommit from "../src/ThreePhaseCommit.js"
import * as TransactionId from "../src/TransactionId.js"
import * as TransactionLog from "../src/TransactionLog.js"
import * as TwoPhaseCommit from "../src/TwoPhaseCommit.js"
import * as MemoryParticipant from "./support/MemoryParticipant.js"
import * as Network from "./support/Network.js"
import * as ThreePhaseMemory from "./support/ThreePhaseMemory.js"

type P3 = ThreePhaseCommit.AnyThreePhaseParticipant

const agentTimeout = Duration.seconds(20)

/** A copy of `p` whose `method` never answers and signals `stopped`: the coordinator died before that call. */
const stopAt = (p: P3, method: "precommit" | "commit", stopped: Deferred.Deferred<void>): P3 => ({
  ...p,
  [method]: () => Deferred.succeed(stopped, undefined).pipe(Effect.andThen(Effect.never))
})

/** A copy of `p` that signals `done` after its own precommit landed. */
const signalAfterPrecommit = (p: P3, done: Deferred.Deferred<void>): P3 => ({
  ...p,
  precommit: (ctx) => p.precommit(ctx).pipe(Effect.tap(() => Deferred.succeed(done, undefined)))
})

/** The context a member gets for `txId` among `members`. */
const memberContext =
  (txId: TransactionId.TransactionId, members: ReadonlyArray<TransactionId.BranchName>) =>
  (m: ThreePhaseMemory.Memory) => ({
    txId,
    branch: m.participant.name,
    gid: TransactionId.gid(txId, m.participant.name),
    members
  })

/** A copy of `p` whose first `state` read answers "initial": a view taken before its vote. */
const staleFirstRead = (p: P3) =>
  Ref.make(0).pipe(
    Effect.map(
      (reads): P3 => ({
        ...p,
        state: (ctx) =>
          Ref.getAndUpdate(reads, (n) => n + 1).pipe(
            Effect.flatMap((n) => (n === 0 ? Effect.succeed("initial" as const) : p.state(ctx)))
          )
      })
    )
  )

/** Runs the coordinator until `stopped` fires, then kills it (interrupts its fiber). */
const runUntil = (
  branches: ReadonlyArray<ThreePhaseCommit.AnyBranch>,
  stopped: Deferred.Deferred<void>,
  options: ThreePhaseCommit.Options
) =>
  Effect.raceFirst(
    ThreePhaseCommit.run(branches, options).pipe(Effect.map(Option.some)),
    Deferred.await(stopped).pipe(Effect.as(Option.none<ThreePhaseCommit.Outcome>()))
  )

const three = Effect.all([
  ThreePhaseMemory.make("bank-a"),
  ThreePhaseMemory.make("bank-b"),
  ThreePhaseMemory.make("bank-c")
])

/** `three` with a fresh transaction id and the member context of each of them in it. */
const threeInOneTx = Effect.gen(function* () {
  const ms = yield* three
  const txId = yield* TransactionId.make
  const ctxOf = memberContext(
    txId,
    ms.map((m) => m.participant.name)
  )
  return { ms, txId, ctxOf }
})

const statesOf = (members: ReadonlyArray<ThreePhaseMemory.Memory>, txId: string, namespace?: string) =>
  Effect.forEach(members, (m) => m.stateOf(txId, namespace))

const forkAgents = (
  txId: string,
  members: ReadonlyArray<ThreePhaseMemory.Memory>,
  options: ThreePhaseCommit.AgentOptions = {}
) =>
  Effect.forEach(members, (m) =>
    ThreePhaseCommit.agent(
      txId,
      m.participant,
      members.map((x) => x.participant),
      { timeout: agentTimeout, ...options }
    ).pipe(Effect.fork)
  )

describe("ThreePhaseCommit.run", () => {
  it.effect("commits every member through CanCommit, PreCommit and DoCommit", () =>
    Effect.gen(function* () {
      const [a, b] = yield* Effect.all([ThreePhaseMemory.make("bank-a"), ThreePhaseMemory.make("bank-b")])
      const outcome = yield* ThreePhaseCommit.run([
        ThreePhaseCommit.branch(a.participant, "debit"),
        ThreePhaseCommit.branch(b.participant, "credit")
      ])
      expect(outcome._tag).toBe("Committed")
      expect(outcome.protocol).toBe("3pc")
      expect(outcome.mode).toBe("classic")
      expect(yield* statesOf([a, b], outcome.txId)).toEqual(["committed", "committed"])
      expect(yield* a.calls).toEqual(["prepare:bank-a", "precommit:bank-a", "commit:bank-a"])
    })
  )

  it.effect("aborts on a No vote without precommitting anyone", () =>
    Effect.gen(function* () {
      const a = yield* ThreePhaseMemory.make("bank-a")
      const b = yield* ThreePhaseMemory.make("bank-b", { vote: "no" })
      const outcome = yield* ThreePhaseCommit.run([
        ThreePhaseCommit.branch(a.participant, 1),
        ThreePhaseCommit.branch(b.participant, 2)
      ])
      expect(outcome._tag).toBe("Aborted")
      if (outcome._tag !== "Aborted") return
      expect(outcome.reason).toBe("bank-b: insufficient funds")
      expect(yield* statesOf([a, b], outcome.txId)).toEqual(["aborted", "aborted"])
      expect(yield* a.calls).toEqual(["prepare:bank-a", "rollback:bank-a"])
    })
  )

  it.effect("turns a vote slower than canCommitTimeout into an abort, and fences the late prepare", () =>
    Effect.gen(function* () {
      const a = yield* ThreePhaseMemory.make("bank-a")
      const slow = yield* ThreePhaseMemory.make("bank-b", { prepareDelay: Duration.seconds(20) })
      const fiber = yield* ThreePhaseCommit.run(
        [ThreePhaseCommit.branch(a.participant, 1), ThreePhaseCommit.branch(slow.participant, 2)],
        { canCommitTimeout: Duration.seconds(2) }
      ).pipe(Effect.fork)
      yield* TestClock.adjust(Duration.millis(1999))
      expect(fiber.unsafePoll()).toBeNull()
      yield* TestClock.adjust(Duration.millis(1))
      const outcome = yield* Fiber.join(fiber)
      expect(outcome._tag).toBe("Aborted")
      if (outcome._tag !== "Aborted") return
      expect(outcome.reason).toContain("prepare of branch bank-b")
      expect(outcome.reason).toContain("timed out after 2000 ms")
      // The timed-out branch was rolled back (fenced) before it prepared: it stays aborted.
      expect(yield* statesOf([a, slow], outcome.txId)).toEqual(["aborted", "aborted"])
    })
  )

  it.effect(
    "a PreCommit ack missing after precommitTimeout: the coordinator terminates itself and commits",
    () =>
      Effect.gen(function* () {
        const [a, b, c] = yield* three
        const deaf: P3 = { ...c.participant, precommit: () => Effect.never }
        const fiber = yield* ThreePhaseCommit.run(
          [
            ThreePhaseCommit.branch(a.participant, null),
            ThreePhaseCommit.branch(b.participant, null),
            ThreePhaseCommit.branch(deaf, null)
          ],
          { precommitTimeout: Duration.seconds(3), callTimeout: Duration.seconds(1) }
        ).pipe(Effect.fork)
        yield* TestClock.adjust(Duration.millis(2999))
        expect(fiber.unsafePoll()).toBeNull()
        expect(yield* statesOf([a, b, c], (yield* a.participant.inDoubt)[0]!.txId)).toEqual([
          "precommitted",
          "precommitted",
          "uncertain"
        ])
        // precommitTimeout, then the termination protocol's precommit of c (callTimeout), then commit.
        yield* TestClock.adjust(Duration.seconds(2))
        const outcome = yield* Fiber.join(fiber)
        expect(outcome._tag).toBe("Committed")
        expect(yield* statesOf([a, b, c], outcome.txId)).toEqual(["committed", "committed", "committed"])
      })
  )

  it.effect(
    "quorum mode: with fewer than Vc PreCommit acks and no abort quorum the coordinator reports Blocked",
    () =>
      Effect.gen(function* () {
        const [a, b, c] = yield* three
        const deaf = (m: ThreePhaseMemory.Memory): P3 => ({
          ...m.participant,
          precommit: () => Effect.never,
          preabort: () => Effect.never
        })
        const fiber = yield* ThreePhaseCommit.run(
          [
            ThreePhaseCommit.branch(a.participant, null),
            ThreePhaseCommit.branch(deaf(b), null),
            ThreePhaseCommit.branch(deaf(c), null)
          ],
          { mode: "quorum", precommitTimeout: Duration.seconds(1), callTimeout: Duration.seconds(1) }
        ).pipe(Effect.fork)
        yield* TestClock.adjust(Duration.seconds(10))
        const outcome = yield* Fiber.join(fiber)
        expect(outcome._tag).toBe("Blocked")
        expect(outcome.mode).toBe("quorum")
        // Nothing was decided: a stays precommitted, b and c uncertain, for the agents to finish.
        expect(yield* statesOf([a, b, c], outcome.txId)).toEqual(["precommitted", "uncertain", "uncertain"])
      })
  )

  it.effect("quorum mode commits once the commit quorum acknowledged PreCommit", () =>
    Effect.gen(function* () {
      const [a, b, c] = yield* three
      const outcome = yield* ThreePhaseCommit.run(
        [a, b, c].map((m) => ThreePhaseCommit.branch(m.participant, null)),
        { mode: "quorum" }
      )
      expect(outcome._tag).toBe("Committed")
      expect(outcome.mode).toBe("quorum")
      expect(yield* statesOf([a, b, c], outcome.txId)).toEqual(["committed", "committed", "committed"])
    })
  )

  it.effect("refuses quorum sizes with Vc + Va <= V before sending anything", () =>
    Effect.gen(function* () {
      const [a, b, c] = yield* three
      const error = yield* ThreePhaseCommit.run(
        [a, b, c].map((m) => ThreePhaseCommit.branch(m.participant, null)),
        { mode: { commit: 2, abort: 1 } }
      ).pipe(Effect.flip)
      expect(error._tag).toBe("InvalidQuorumError")
      expect(error.message).toContain("Vc + Va must exceed V")
      expect(yield* a.calls).toEqual([])
      const tooBig = yield* ThreePhaseCommit.run(
        [a, b].map((m) => ThreePhaseCommit.branch(m.participant, null)),
        { mode: { commit: 3, abort: 2 } }
      ).pipe(Effect.flip)
      expect(tooBig._tag).toBe("InvalidQuorumError")
      expect(Either.isLeft(ThreePhaseCommit.resolveMode({ commit: 1.5, abort: 3 }, 3))).toBe(true)
      expect(ThreePhaseCommit.resolveMode("quorum", 5)).toEqual(
        Either.right({ kind: "quorum", members: 5, commit: 3, abort: 3 })
      )
    })
  )

  it.effect("refuses unknown or duplicate participants with typed errors", () =>
    Effect.gen(function* () {
      const [a, b, c] = yield* three
      const txId = yield* TransactionId.make
      const unknown = yield* ThreePhaseCommit.terminate(txId, [a.participant, c.participant], {
        members: ["bank-a", "bank-b"]
      }).pipe(Effect.flip)
      expect(unknown._tag).toBe("InvalidTransactionError")
      expect(unknown.message).toContain('unknown participant "bank-c"')
      const twice = yield* ThreePhaseCommit.run([
        ThreePhaseCommit.branch(a.participant, 1),
        ThreePhaseCommit.branch(a.participant, 2)
      ]).pipe(Effect.flip)
      expect(twice._tag).toBe("InvalidTransactionError")
      const badQuorum = yield* ThreePhaseCommit.terminate(txId, [a.participant, b.participant], {
        mode: { commit: 1, abort: 1 }
      }).pipe(Effect.flip)
      expect(badQuorum._tag).toBe("InvalidQuorumError")
      const badId = yield* ThreePhaseCommit.agent("not-a-ulid", a.participant, [b.participant]).pipe(
        Effect.flip
      )
      expect(badId._tag).toBe("InvalidTransactionError")
      expect(yield* a.calls).toEqual([])
    })
  )
})

describe("ThreePhaseCommit.agent (coordinator stops)", () => {
  it.effect(
    "coordinator stops after all PreCommit acks: the members commit by themselves after their timeout",
    () =>
      Effect.gen(function* () {
        const [a, b, c] = yield* three
        const stopped = yield* Deferred.make<void>()
        const txId = yield* TransactionId.make
        const result = yield* runUntil(
          [a, b, c].map((m) => ThreePhaseCommit.branch(stopAt(m.participant, "commit", stopped), null)),
          stopped,
          { txId }
        )
        expect(Option.isNone(result)).toBe(true)
        expect(yield* statesOf([a, b, c], txId)).toEqual(["precommitted", "precommitted", "precommitted"])
        const agents = yield* forkAgents(txId, [a, b, c])
        yield* TestClock.adjust(Duration.millis(19_999))
        expect(yield* statesOf([a, b, c], txId)).toEqual(["precommitted", "precommitted", "precommitted"])
        yield* TestClock.adjust(Duration.millis(1))
        const decisions = yield* Effect.forEach(agents, Fiber.join)
        expect(decisions.map((d) => d._tag)).toEqual(["Committed", "Committed", "Committed"])
        expect(yield* statesOf([a, b, c], txId)).toEqual(["committed", "committed", "committed"])
      })
  )

  it.effect("coordinator stops after the votes, before any PreCommit: the members abort by themselves", () =>
    Effect.gen(function* () {
      const [a, b, c] = yield* three
      const stopped = yield* Deferred.make<void>()
      const txId = yield* TransactionId.make
      yield* runUntil(
        [a, b, c].map((m) => ThreePhaseCommit.branch(stopAt(m.participant, "precommit", stopped), null)),
        stopped,
        { txId }
      )
      expect(yield* statesOf([a, b, c], txId)).toEqual(["uncertain", "uncertain", "uncertain"])
      const agents = yield* forkAgents(txId, [a, b, c])
      yield* TestClock.adjust(agentTimeout)
      const decisions = yield* Effect.forEach(agents, Fiber.join)
      expect(decisions.map((d) => d._tag)).toEqual(["Aborted", "Aborted", "Aborted"])
      expect(yield* statesOf([a, b, c], txId)).toEqual(["aborted", "aborted", "aborted"])
    })
  )

  it.effect(
    "side by side: the same two stops leave 2PC branches prepared until recovery, while 3PC finishes",
    () =>
      Effect.gen(function* () {
        const log = yield* TransactionLog.makeMemory
        const withLog = <A, E>(e: Effect.Effect<A, E, TransactionLog.TransactionLog>) =>
          Effect.provideService(e, TransactionLog.TransactionLog, log)

        // 2PC, stop 1: after the votes, before the decision is written.
        const x = yield* MemoryParticipant.make("bank-a")
        const y = yield* MemoryParticipant.make("bank-b")
        const stop1 = yield* Deferred.make<void>()
        const deadLog: TransactionLog.TransactionLog["Type"] = {
          ...log,
          decide: () => Deferred.succeed(stop1, undefined).pipe(Effect.andThen(Effect.never))
        }
        const tx1 = yield* TransactionId.make
        yield* Effect.raceFirst(
          TwoPhaseCommit.run([branch2pc(x.participant, 1), branch2pc(y.participant, 2)], { txId: tx1 }).pipe(
            Effect.provideService(TransactionLog.TransactionLog, deadLog)
          ),
          Deferred.await(stop1)
        )
        // 2PC, stop 2: after the commit decision, before any COMMIT PREPARED (the analogue of
        // "after every PreCommit ack").
        const stop2 = yield* Deferred.make<void>()
        const noCommit = (p: Participant<unknown>): Participant<unknown> => ({
          ...p,
          commit: () => Deferred.succeed(stop2, undefined).pipe(Effect.andThen(Effect.never))
        })
        const tx2 = yield* TransactionId.make
        yield* Effect.raceFirst(
          withLog(
            TwoPhaseCommit.run(
              [branch2pc(noCommit(x.participant), 1), branch2pc(noCommit(y.participant), 2)],
              {
                txId: tx2
              }
            )
          ),
          Deferred.await(stop2)
        )

        // 3PC, the same two stops.
        const [a, b] = yield* Effect.all([ThreePhaseMemory.make("bank-a"), ThreePhaseMemory.make("bank-b")])
        const s3a = yield* Deferred.make<void>()
        const tx3 = yield* TransactionId.make
        yield* runUntil(
          [a, b].map((m) => ThreePhaseCommit.branch(stopAt(m.participant, "precommit", s3a), null)),
          s3a,
          { txId: tx3 }
        )
        const s3b = yield* Deferred.make<void>()
        const tx4 = yield* TransactionId.make
        yield* runUntil(
          [a, b].map((m) => ThreePhaseCommit.branch(stopAt(m.participant, "commit", s3b), null)),
          s3b,
          { txId: tx4 }
        )
        const agents = [...(yield* forkAgents(tx3, [a, b])), ...(yield* forkAgents(tx4, [a, b]))]

        // An hour later: 3PC decided by itself; 2PC is still prepared (its locks would be held).
        yield* TestClock.adjust(Duration.hours(1))
        yield* Effect.forEach(agents, Fiber.join)
        expect(yield* statesOf([a, b], tx3)).toEqual(["aborted", "aborted"])
        expect(yield* statesOf([a, b], tx4)).toEqual(["committed", "committed"])
        const states2pc = yield* x.states
        expect(states2pc.get(TransactionId.gid(tx1, x.participant.name))).toBe("prepared")
        expect(states2pc.get(TransactionId.gid(tx2, x.participant.name))).toBe("prepared")

        // Only when recovery runs (the coordinator's log is back) do the 2PC branches end.
        const report = yield* withLog(Recovery.run([x.participant, y.participant], { orphanAfter: 0 }))
        expect(report.branchesCommitted).toBe(2)
        expect(report.branchesRolledBack).toBe(2)
        expect((yield* x.states).get(TransactionId.gid(tx1, x.participant.name))).toBe("aborted")
        expect((yield* y.states).get(TransactionId.gid(tx2, y.participant.name))).toBe("committed")
      })
  )

  it.effect(
    "a member that crashes while precommitted learns the outcome after its restart and converges",
    () =>
      Effect.gen(function* () {
        const [a, b, c] = yield* three
        // c crashes right after it acknowledged PreCommit.
        const crashing: P3 = {
          ...c.participant,
          precommit: (ctx) => c.participant.precommit(ctx).pipe(Effect.tap(() => c.crash))
        }
        const fiber = yield* ThreePhaseCommit.run(
          [
            ThreePhaseCommit.branch(a.participant, null),
            ThreePhaseCommit.branch(b.participant, null),
            ThreePhaseCommit.branch(crashing, null)
          ],
          { commitTimeout: Duration.seconds(10) }
        ).pipe(Effect.fork)
        yield* TestClock.adjust(Duration.seconds(10))
        const outcome = yield* Fiber.join(fiber)
        expect(outcome._tag).toBe("CommitPending")
        if (outcome._tag !== "CommitPending") return
        expect(outcome.pending).toEqual(["bank-c"])
        expect(yield* statesOf([a, b, c], outcome.txId)).toEqual(["committed", "committed", "precommitted"])

        // c restarts; its participant-side watcher finds the precommitted branch and asks its peers.
        yield* c.restart
        const watcher = yield* ThreePhaseCommit.watch(c.participant, [a.participant, b.participant], {
          timeout: agentTimeout
        }).pipe(Effect.fork)
        yield* TestClock.adjust(agentTimeout)
        yield* TestClock.adjust(agentTimeout)
        expect(yield* c.stateOf(outcome.txId)).toBe("committed")
        yield* Fiber.interrupt(watcher)
      })
  )

  it.effect(
    "recover drives every in-doubt member after a restart, and rolls back branches that never voted",
    () =>
      Effect.gen(function* () {
        const [a, b] = yield* Effect.all([ThreePhaseMemory.make("bank-a"), ThreePhaseMemory.make("bank-b")])
        const stopped = yield* Deferred.make<void>()
        const txId = yield* TransactionId.make
        // Coordinator dies after a's precommit landed (b never got one).
        const done = yield* Deferred.make<void>()
        yield* runUntil(
          [
            ThreePhaseCommit.branch(signalAfterPrecommit(a.participant, done), null),
            ThreePhaseCommit.branch(
              {
                ...b.participant,
                precommit: () =>
                  Deferred.await(done).pipe(
                    Effect.andThen(Deferred.succeed(stopped, undefined)),
                    Effect.andThen(Effect.never)
                  )
              },
              null
            )
          ],
          stopped,
          { txId }
        )
        expect(yield* statesOf([a, b], txId)).toEqual(["precommitted", "uncertain"])
        const report = yield* ThreePhaseCommit.recover([a.participant, b.participant], { orphanAfter: 0 })
        expect(report.committed).toEqual([txId])
        expect(yield* statesOf([a, b], txId)).toEqual(["committed", "committed"])
        const again = yield* ThreePhaseCommit.recover([a.participant, b.participant], { orphanAfter: 0 })
        expect(again.committed).toEqual([])
      })
  )
})

describe("ThreePhaseCommit rollback never overrides a precommit", () => {
  for (const mode of ["classic", "quorum"] as const) {
    it.effect(`a ${mode} terminator that decided abort on a stale view re-evaluates and commits`, () =>
      Effect.gen(function* () {
        const ms = yield* Effect.all([
          ThreePhaseMemory.make("bank-a"),
          ThreePhaseMemory.make("bank-b"),
          ThreePhaseMemory.make("bank-c")
        ])
        const txId = yield* TransactionId.make
        const members = ms.map((m) => m.participant.name)
        const ctxOf = memberContext(txId, members)
        // The coordinator had every yes vote and precommitted everyone (then died)...
        for (const m of ms) {
          expect((yield* m.participant.prepare(ctxOf(m), null))._tag).toBe("Prepared")
          expect(yield* m.participant.precommit(ctxOf(m))).toBe("precommitted")
        }
        // ...but the terminator's first read of bank-c was taken before bank-c voted.
        const staleC = yield* staleFirstRead(ms[2]!.participant)
        const t = yield* ThreePhaseCommit.terminate(txId, [ms[0]!.participant, ms[1]!.participant, staleC], {
          mode
        })
        expect(t._tag).toBe("Committed")
        expect(yield* statesOf(ms, txId)).toEqual(["committed", "committed", "committed"])
      })
    )
  }

  for (const mode of ["classic", "quorum"] as const) {
    it.effect(
      `a ${mode} terminator that saw a voted member as unvoted fences it only if unvoted, and commits`,
      () =>
        Effect.gen(function* () {
          const { ms, txId, ctxOf } = yield* threeInOneTx
          // Everyone voted yes; the coordinator precommitted a and b, then died before c...
          for (const m of ms) expect((yield* m.participant.prepare(ctxOf(m), null))._tag).toBe("Prepared")
          expect(yield* ms[0]!.participant.precommit(ctxOf(ms[0]!))).toBe("precommitted")
          expect(yield* ms[1]!.participant.precommit(ctxOf(ms[1]!))).toBe("precommitted")
          // ...and the terminator's first read of c was taken before c voted: "initial".
          // Rolling every member back on that view would abort c while a and b refuse: a split.
          const staleC = yield* staleFirstRead(ms[2]!.participant)
          const t = yield* ThreePhaseCommit.terminate(
            txId,
            [ms[0]!.participant, ms[1]!.participant, staleC],
            {
              mode
            }
          )
          expect(t._tag).toBe("Committed")
          expect(yield* statesOf(ms, txId)).toEqual(["committed", "committed", "committed"])
        })
    )
  }

  it.effect("a terminator that saw a member unvoted fences it first, then aborts the others", () =>
    Effect.gen(function* () {
      const { ms, txId, ctxOf } = yield* threeInOneTx
      for (const m of ms.slice(0, 2))
        expect((yield* m.participant.prepare(ctxOf(m), null))._tag).toBe("Prepared")
      const t = yield* ThreePhaseCommit.terminate(
        txId,
        ms.map((m) => m.participant)
      )
      expect(t._tag).toBe("Aborted")
      expect(yield* statesOf(ms, txId)).toEqual(["aborted", "aborted", "aborted"])
      // The fence holds: c's late prepare votes No.
      const late = yield* ms[2]!.participant.prepare(ctxOf(ms[2]!), null)
      expect(late._tag).toBe("No")
    })
  )

  it.effect(
    "classic: a precommit that lands after a terminator rolled the others back is rolled back too",
    () =>
      Effect.gen(function* () {
        const { ms, txId, ctxOf } = yield* threeInOneTx
        // Everyone voted yes; a terminator read every member uncertain, and the coordinator's
        // precommit of a landed after that read.
        for (const m of ms) expect((yield* m.participant.prepare(ctxOf(m), null))._tag).toBe("Prepared")
        expect(yield* ms[0]!.participant.precommit(ctxOf(ms[0]!))).toBe("precommitted")
        const reads = yield* Ref.make(0)
        const staleA: P3 = {
          ...ms[0]!.participant,
          state: (ctx) =>
            Ref.getAndUpdate(reads, (n) => n + 1).pipe(
              Effect.flatMap((n) =>
                n === 0 ? Effect.succeed("uncertain" as const) : ms[0]!.participant.state(ctx)
              )
            )
        }
        // The terminator aborts: b and c are rolled back, a refuses (precommitted). An aborted member
        // means nobody can ever commit (the coordinator commits only once every member is
        // precommitted): a is rolled back over its precommit. Before, it refused every rollback and
        // the transaction never ended (Blocked), a's branch prepared for ever.
        const t = yield* ThreePhaseCommit.terminate(txId, [staleA, ms[1]!.participant, ms[2]!.participant])
        expect(t._tag).toBe("Aborted")
        expect(yield* statesOf(ms, txId)).toEqual(["aborted", "aborted", "aborted"])
      })
  )

  it.effect("rollback told onlyIfUnvoted refuses a voted member and fences an unvoted one", () =>
    Effect.gen(function* () {
      const [a, b] = yield* three
      const txId = yield* TransactionId.make
      const ctx = (m: ThreePhaseMemory.Memory) => ({
        txId,
        branch: m.participant.name,
        gid: TransactionId.gid(txId, m.participant.name),
        members: [a!.participant.name, b!.participant.name]
      })
      yield* a!.participant.prepare(ctx(a!), null)
      expect(yield* a!.participant.rollback(ctx(a!), { onlyIfUnvoted: true })).toBe("Voted")
      expect(yield* a!.stateOf(txId)).toBe("uncertain")
      expect(yield* b!.participant.rollback(ctx(b!), { onlyIfUnvoted: true })).toBe("RolledBack")
      expect((yield* b!.participant.prepare(ctx(b!), null))._tag).toBe("No")
    })
  )

  it.effect("rollback of a precommitted member refuses and leaves it precommitted", () =>
    Effect.gen(function* () {
      const a = yield* ThreePhaseMemory.make("bank-a")
      const txId = yield* TransactionId.make
      const ctx = { txId, branch: a.participant.name, gid: TransactionId.gid(txId, a.participant.name) }
      yield* a.participant.prepare({ ...ctx, members: [a.participant.name] }, null)
      yield* a.participant.precommit(ctx)
      expect(yield* a.participant.rollback(ctx)).toBe("Precommitted")
      expect(yield* a.stateOf(txId)).toBe("precommitted")
    })
  )
})

describe("ThreePhaseCommit recovery uses the mode recorded with the vote", () => {
  it.effect("recover without a mode option finishes a quorum transaction by the quorum rules", () =>
    Effect.gen(function* () {
      const ms = yield* Effect.all([
        ThreePhaseMemory.make("bank-a"),
        ThreePhaseMemory.make("bank-b"),
        ThreePhaseMemory.make("bank-c")
      ])
      const [a, b, c] = ms
      const txId = yield* TransactionId.make
      const members = ms.map((m) => m.participant.name)
      const ctxOf = memberContext(txId, members)
      // A quorum transaction: the coordinator precommitted a, then died; b and c's agents formed
      // the abort quorum (Va = 2) and died before rolling anyone back.
      const p = ThreePhaseCommit.plan(
        txId,
        ms.map((m) => m.participant),
        { mode: "quorum" }
      )
      if (Either.isLeft(p)) return yield* Effect.die(p.left)
      for (const [i, m] of ms.entries()) {
        expect((yield* m.participant.prepare(p.right.members[i]!.ctx, null))._tag).toBe("Prepared")
      }
      expect(yield* a!.participant.precommit(ctxOf(a!))).toBe("precommitted")
      expect(yield* b!.participant.preabort(ctxOf(b!))).toBe("preaborted")
      expect(yield* c!.participant.preabort(ctxOf(c!))).toBe("preaborted")
      // A restarted process recovers with its default (classic) options.
      const report = yield* ThreePhaseCommit.recover(
        ms.map((m) => m.participant),
        { orphanAfter: 0 }
      )
      expect(report.aborted).toEqual([txId])
      expect(report.blocked).toEqual([])
      expect(yield* statesOf(ms, txId)).toEqual(["aborted", "aborted", "aborted"])
    })
  )
})

describe("ThreePhaseCommit recovery of branches scanned before their vote", () => {
  /** What a scan reports for m's branch of txId prepared with no vote recorded. */
  const unvotedFound = (
    m: ThreePhaseMemory.Memory,
    txId: TransactionId.TransactionId,
    preparedAt: number
  ) => ({
    txId,
    branch: m.participant.name,
    gid: TransactionId.gid(txId, m.participant.name),
    preparedAt,
    state: "uncertain" as const,
    members: undefined,
    mode: undefined
  })
  it.effect("recover rolls back an unvoted branch only if it is still unvoted", () =>
    Effect.gen(function* () {
      const [a, b] = yield* three
      const txId = yield* TransactionId.make
      const members = [a!.participant.name, b!.participant.name]
      const ctx = (m: ThreePhaseMemory.Memory) => ({
        txId,
        branch: m.participant.name,
        gid: TransactionId.gid(txId, m.participant.name),
        members
      })
      // a's scan saw the branch prepared with no vote; a's vote landed right after the scan.
      yield* a!.participant.prepare(ctx(a!), null)
      const scannedEarly: P3 = {
        ...a!.participant,
        inDoubt: a!.participant.inDoubt.pipe(
          Effect.map((found) => found.map((f) => ({ ...f, members: undefined })))
        )
      }
      const report = yield* ThreePhaseCommit.recover([scannedEarly, b!.participant], { orphanAfter: 0 })
      expect(report.unvotedRolledBack).toBe(0)
      expect(yield* a!.stateOf(txId)).toBe("uncertain")
      // Still unvoted (b prepared nothing and recorded nothing): rolled back.
      const unvotedB: P3 = {
        ...b!.participant,
        inDoubt: Effect.succeed([unvotedFound(b!, txId, 0)])
      }
      const second = yield* ThreePhaseCommit.recover([unvotedB], { orphanAfter: 0 })
      expect(second.unvotedRolledBack).toBe(1)
      expect(yield* b!.stateOf(txId)).toBe("aborted")
      yield* a!.participant.rollback(ctx(a!))
    })
  )
  it.effect(
    "with orphanAfter 0 an unvoted branch is rolled back even when its scan answers later than recover read its clock",
    () =>
      Effect.gen(function* () {
        const [, b] = yield* three
        const txId = yield* TransactionId.make
        // The Postgres participant's preparedAt is the answer's arrival minus the server-measured age:
        // a branch prepared a moment ago can carry a preparedAt after the instant recover started.
        const lateAnswer: P3 = {
          ...b!.participant,
          inDoubt: Effect.gen(function* () {
            yield* TestClock.adjust(Duration.millis(5))
            return [unvotedFound(b!, txId, (yield* Clock.currentTimeMillis) - 1)]
          })
        }
        const report = yield* ThreePhaseCommit.recover([lateAnswer], { orphanAfter: 0 })
        expect(report.unvotedRolledBack).toBe(1)
        expect(yield* b!.stateOf(txId)).toBe("aborted")
      })
  )
})

describe("ThreePhaseCommit recovery of namespaced gids", () => {
  /** The coordinator (namespace "ns") dies after a's precommit landed; b stays uncertain. */
  const precommitOnlyA = (a: ThreePhaseMemory.Memory, b: ThreePhaseMemory.Memory) =>
    Effect.gen(function* () {
      const stopped = yield* Deferred.make<void>()
      const done = yield* Deferred.make<void>()
      const txId = yield* TransactionId.make
      yield* runUntil(
        [
          ThreePhaseCommit.branch(signalAfterPrecommit(a.participant, done), null),
          ThreePhaseCommit.branch(
            {
              ...b.participant,
              precommit: () =>
                Deferred.await(done).pipe(
                  Effect.andThen(Deferred.succeed(stopped, undefined)),
                  Effect.andThen(Effect.never)
                )
            },
            null
          )
        ],
        stopped,
        { txId, namespace: "ns" }
      )
      expect(yield* statesOf([a, b], txId, "ns")).toEqual(["precommitted", "uncertain"])
      return txId
    })

  it.effect("recover without the namespace option drives the gids the scan found", () =>
    Effect.gen(function* () {
      const [a, b] = yield* Effect.all([ThreePhaseMemory.make("bank-a"), ThreePhaseMemory.make("bank-b")])
      const txId = yield* precommitOnlyA(a, b)
      const report = yield* ThreePhaseCommit.recover([a.participant, b.participant], { orphanAfter: 0 })
      expect(report.committed).toEqual([txId])
      expect(report.aborted).toEqual([])
      expect(yield* statesOf([a, b], txId, "ns")).toEqual(["committed", "committed"])
    })
  )

  it.effect("recover with another namespace leaves the branch alone", () =>
    Effect.gen(function* () {
      const [a, b] = yield* Effect.all([ThreePhaseMemory.make("bank-a"), ThreePhaseMemory.make("bank-b")])
      const txId = yield* precommitOnlyA(a, b)
      const report = yield* ThreePhaseCommit.recover([a.participant, b.participant], {
        orphanAfter: 0,
        namespace: "other"
      })
      expect(report.committed).toEqual([])
      expect(report.aborted).toEqual([])
      expect(report.blocked.map((x) => x.txId)).toEqual([txId, txId])
      expect(yield* statesOf([a, b], txId, "ns")).toEqual(["precommitted", "uncertain"])
    })
  )

  it.effect("watch runs its agents over the gids the scan found", () =>
    Effect.gen(function* () {
      const [a, b] = yield* Effect.all([ThreePhaseMemory.make("bank-a"), ThreePhaseMemory.make("bank-b")])
      const txId = yield* precommitOnlyA(a, b)
      const watcher = yield* ThreePhaseCommit.watch(b.participant, [a.participant], {
        timeout: agentTimeout
      }).pipe(Effect.fork)
      yield* TestClock.adjust(agentTimeout)
      yield* TestClock.adjust(agentTimeout)
      expect(yield* b.stateOf(txId, "ns")).toBe("committed")
      yield* Fiber.interrupt(watcher)
    })
  )
})

describe("ThreePhaseCommit under a partition", () => {
  /** The coordinator precommits bank-a only, then dies. */
  const precommitOnlyA = (members: ReadonlyArray<ThreePhaseMemory.Memory>, mode: ThreePhaseCommit.Mode) =>
    Effect.gen(function* () {
      const [a, b, c] = members as [ThreePhaseMemory.Memory, ThreePhaseMemory.Memory, ThreePhaseMemory.Memory]
      const done = yield* Deferred.make<void>()
      const stopped = yield* Deferred.make<void>()
      const hang: P3["precommit"] = () =>
        Deferred.await(done).pipe(
          Effect.andThen(Deferred.succeed(stopped, undefined)),
          Effect.andThen(Effect.never)
        )
      const txId = yield* TransactionId.make
      yield* runUntil(
        [
          ThreePhaseCommit.branch(signalAfterPrecommit(a.participant, done), null),
          ThreePhaseCommit.branch({ ...b.participant, precommit: hang }, null),
          ThreePhaseCommit.branch({ ...c.participant, precommit: hang }, null)
        ],
        stopped,
        { txId, mode }
      )
      expect(yield* statesOf([a, b, c], txId)).toEqual(["precommitted", "uncertain", "uncertain"])
      return txId
    })

  it.effect(
    "classic mode: the uncertain side waits for the member it cannot reach instead of aborting; all commit on heal",
    () =>
      Effect.gen(function* () {
        const [a, b, c] = yield* three
        const net = yield* Network.make
        const txId = yield* precommitOnlyA([a, b, c], "classic")
        yield* net.split(["bank-a"], ["bank-b", "bank-c"])
        const agents = yield* forkAgents(txId, [a, b, c], { reachable: net.reachable })
        yield* TestClock.adjust(agentTimeout)
        // a's side sees a precommitted and commits. Until 2026-12-06 b's side, seeing b and c
        // uncertain, aborted them: one member committed, two aborted (the documented anomaly). An
        // unreachable member may be precommitted or committed, so the uncertain side now waits.
        expect(yield* statesOf([a, b, c], txId)).toEqual(["committed", "uncertain", "uncertain"])
        expect(agents[1]!.unsafePoll()).toBeNull()
        expect(agents[2]!.unsafePoll()).toBeNull()
        yield* net.heal
        yield* TestClock.adjust(agentTimeout)
        const decisions = yield* Effect.forEach(agents, Fiber.join)
        expect(decisions.map((d) => d._tag)).toEqual(["Committed", "Committed", "Committed"])
        expect(yield* statesOf([a, b, c], txId)).toEqual(["committed", "committed", "committed"])
      })
  )

  it.effect("quorum mode never does: the minority blocks, then converges when the partition heals", () =>
    Effect.gen(function* () {
      const [a, b, c] = yield* three
      const net = yield* Network.make
      const txId = yield* precommitOnlyA([a, b, c], "quorum")
      yield* net.split(["bank-a"], ["bank-b", "bank-c"])
      const agents = yield* forkAgents(txId, [a, b, c], { reachable: net.reachable, mode: "quorum" })
      yield* TestClock.adjust(agentTimeout)
      // The majority {b, c} forms the abort quorum (Va = 2); a is alone and blocks.
      expect(yield* statesOf([a, b, c], txId)).toEqual(["precommitted", "aborted", "aborted"])
      expect(agents[0]!.unsafePoll()).toBeNull()
      yield* TestClock.adjust(Duration.minutes(5))
      expect(yield* a.stateOf(txId)).toBe("precommitted")
      yield* net.heal
      yield* TestClock.adjust(agentTimeout)
      const decisions = yield* Effect.forEach(agents, Fiber.join)
      expect(decisions.map((d) => d._tag)).toEqual(["Aborted", "Aborted", "Aborted"])
      expect(yield* statesOf([a, b, c], txId)).toEqual(["aborted", "aborted", "aborted"])
    })
  )

  it.effect("quorum mode commits on the side holding the commit quorum; the minority learns it on heal", () =>
    Effect.gen(function* () {
      const [a, b, c] = yield* three
      const net = yield* Network.make
      const stopped = yield* Deferred.make<void>()
      const txId = yield* TransactionId.make
      const doneA = yield* Deferred.make<void>()
      const doneB = yield* Deferred.make<void>()
      yield* runUntil(
        [
          ThreePhaseCommit.branch(signalAfterPrecommit(a.participant, doneA), null),
          ThreePhaseCommit.branch(signalAfterPrecommit(b.participant, doneB), null),
          ThreePhaseCommit.branch(
            {
              ...c.participant,
              precommit: () =>
                Effect.all([Deferred.await(doneA), Deferred.await(doneB)]).pipe(
                  Effect.andThen(Deferred.succeed(stopped, undefined)),
                  Effect.andThen(Effect.never)
                )
            },
            null
          )
        ],
        stopped,
        { txId, mode: "quorum" }
      )
      yield* net.split(["bank-a", "bank-b"], ["bank-c"])
      const agents = yield* forkAgents(txId, [a, b, c], { reachable: net.reachable, mode: "quorum" })
      yield* TestClock.adjust(agentTimeout)
      expect(yield* statesOf([a, b, c], txId)).toEqual(["committed", "committed", "uncertain"])
      yield* net.heal
      yield* TestClock.adjust(agentTimeout)
      yield* Effect.forEach(agents, Fiber.join)
      expect(yield* statesOf([a, b, c], txId)).toEqual(["committed", "committed", "committed"])
    })
  )

  it.effect("quorum mode: terminators on both sides of every split of five members never disagree", () =>
    Effect.gen(function* () {
      const splits: ReadonlyArray<ReadonlyArray<number>> = [[0], [0, 1], [0, 1, 2], [1, 2], [2, 3, 4], [0, 4]]
      for (const precommittedCount of [0, 1, 2, 3, 5]) {
        for (const side of splits) {
          const members = yield* Effect.forEach([0, 1, 2, 3, 4], (i) => ThreePhaseMemory.make(`m${i}`))
          const ps = members.map((m) => m.participant)
          const txId = yield* TransactionId.make
          const ctx = (i: number) => ({
            txId,
            branch: ps[i]!.name,
            gid: TransactionId.gid(txId, ps[i]!.name),
            members: ps.map((p) => p.name)
          })
          for (const [i, p] of ps.entries()) yield* p.prepare(ctx(i), null)
          for (let i = 0; i < precommittedCount; i++) yield* ps[i]!.precommit(ctx(i))
          const left = side.map((i) => ps[i]!)
          const right = ps.filter((_, i) => !side.includes(i))
          const members5 = ps.map((p) => p.name)
          const [l, r] = yield* Effect.all(
            [
              ThreePhaseCommit.terminate(txId, left, { members: members5, mode: "quorum" }),
              ThreePhaseCommit.terminate(txId, right, { members: members5, mode: "quorum" })
            ],
            { concurrency: "unbounded" }
          )
          const decided = [l._tag, r._tag].filter((t) => t !== "Blocked")
          expect(new Set(decided).size).toBeLessThanOrEqual(1)
          const final = yield* statesOf(members, txId)
          expect(final.includes("committed") && final.includes("aborted")).toBe(false)
        }
      }
    })
  )

  it.effect(
    "quorum mode, 12 seeded runs: random crash points and partitions, agents everywhere, one decision after heal",
    () =>
      Effect.gen(function* () {
        for (let seed = 1; seed <= 12; seed++) {
          // A small deterministic generator per seed (mulberry32).
          let t = seed * 0x9e3779b9
          const next = () => {
            t = (t + 0x6d2b79f5) | 0
            let r = Math.imul(t ^ (t >>> 15), 1 | t)
            r ^= r + Math.imul(r ^ (r >>> 7), 61 | r)
            return ((r ^ (r >>> 14)) >>> 0) / 4294967296
          }
          const members = yield* Effect.forEach([0, 1, 2, 3, 4], (i) => ThreePhaseMemory.make(`m${i}`))
          const ps = members.map((m) => m.participant)
          const names = ps.map((p) => p.name as string)
          const txId = yield* TransactionId.make
          const ctx = (i: number) => ({
            txId,
            branch: ps[i]!.name,
            gid: TransactionId.gid(txId, ps[i]!.name),
            members: ps.map((p) => p.name)
          })
          // The coordinator: every member votes yes, then it precommits a random subset and dies.
          for (const [i, p] of ps.entries()) yield* p.prepare(ctx(i), null)
          const precommitted = ps.map(() => next() < 0.4)
          for (const [i, p] of ps.entries()) if (precommitted[i]) yield* p.precommit(ctx(i))
          // A random split into two sides; it heals after a random number of agent rounds.
          const net = yield* Network.make
          const left = names.filter(() => next() < 0.5)
          yield* net.split(
            left,
            names.filter((n) => !left.includes(n))
          )
          const agents = yield* forkAgents(txId, members, { reachable: net.reachable, mode: "quorum" })
          const rounds = 1 + Math.floor(next() * 3)
          for (let r = 0; r < rounds; r++) {
            yield* TestClock.adjust(agentTimeout)
            const states = yield* statesOf(members, txId)
            expect(states.includes("committed") && states.includes("aborted")).toBe(false)
          }
          yield* net.heal
          // An agent whose own state moved (another terminator's precommit or pre-abort) takes that
          // as news and waits one more round, so give the healed group a few rounds.
          for (let r = 0; r < 10 && agents.some((f) => f.unsafePoll() === null); r++) {
            yield* TestClock.adjust(agentTimeout)
          }
          expect(agents.map((f) => f.unsafePoll() === null)).toEqual([false, false, false, false, false])
          const decisions = yield* Effect.forEach(agents, Fiber.join)
          const final = yield* statesOf(members, txId)
          expect(new Set(final).size).toBe(1)
          expect(new Set(decisions.map((d) => d._tag)).size).toBe(1)
          // Commit only if some member had been precommitted (all voted yes, the coordinator said so).
          if (final[0] === "committed") expect(precommitted.some(Boolean)).toBe(true)
        }
      }),
    60_000
  )
})
