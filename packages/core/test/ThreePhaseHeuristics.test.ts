import { describe, expect, it } from "@effect/vitest"
import { Duration, Effect, Fiber, Option, Ref, TestClock } from "effect"
import type { BranchContext, CommitAck } from "../src/Participant.js"
import * as ThreePhaseCommit from "../src/ThreePhaseCommit.js"
import { BranchCallError } from "../src/TransactionError.js"
import * as ThreePhaseCoordinator from "../src/ThreePhaseCoordinator.js"
import * as TransactionId from "../src/TransactionId.js"
import * as TransactionLog from "../src/TransactionLog.js"
import * as ThreePhaseMemory from "./support/ThreePhaseMemory.js"

type P3 = ThreePhaseCommit.AnyThreePhaseParticipant

const rolledBackDetail = "branch was rolled back outside the protocol after the commit decision"
const committedDetail = "branch was committed outside the protocol although the transaction aborted"

/**
 * A copy of `p` whose prepared branch an operator rolled back by hand after its yes vote: its
 * recorded 3PC state moves on as usual, but a commit finds the branch gone (`HeuristicRollback`).
 */
const rolledBackByHand = (p: P3): P3 => ({
  ...p,
  commit: (ctx) => p.commit(ctx).pipe(Effect.as("HeuristicRollback" as CommitAck))
})

/** A copy of `p` whose prepared branch an operator committed by hand: a rollback finds it committed. */
const committedByHand = (p: P3): P3 => ({
  ...p,
  rollback: (ctx) => p.commit(ctx).pipe(Effect.as("HeuristicCommit" as const))
})

/** A copy of `p` whose first precommit does not answer (lost): the coordinator has to terminate. */
const firstPrecommitLost = (p: P3) =>
  Ref.make(0).pipe(
    Effect.map(
      (n): P3 => ({
        ...p,
        precommit: (ctx) =>
          Ref.getAndUpdate(n, (k) => k + 1).pipe(
            Effect.flatMap((k) =>
              k === 0
                ? Effect.fail(
                    new BranchCallError({
                      txId: ctx.txId,
                      branch: ctx.branch,
                      phase: "precommit",
                      reason: "connection lost",
                      inDoubt: true
                    })
                  )
                : p.precommit(ctx)
            )
          )
      })
    )
  )

/** The context of `name`'s branch of `txId` among `members`. */
const ctxOf = (txId: TransactionId.TransactionId, name: string, members: ReadonlyArray<string>) => ({
  txId,
  branch: name as TransactionId.BranchName,
  gid: TransactionId.gid(txId, name as TransactionId.BranchName),
  members: members as ReadonlyArray<TransactionId.BranchName>,
  mode: "classic" as const
})

/** Prepares and precommits every member by hand: a coordinator that died just before DoCommit. */
const precommitAll = (txId: TransactionId.TransactionId, ps: ReadonlyArray<P3>) =>
  Effect.forEach(ps, (p) => {
    const ctx = ctxOf(
      txId,
      p.name,
      ps.map((q) => q.name)
    )
    return p.prepare(ctx, null).pipe(Effect.zipRight(p.precommit(ctx as BranchContext)))
  })

const withLog = <A, E>(f: (log: TransactionLog.TransactionLog["Type"]) => Effect.Effect<A, E>) =>
  Effect.flatMap(TransactionLog.makeMemory, (log) =>
    f(log).pipe(Effect.provideService(TransactionLog.TransactionLog, log))
  )

describe("ThreePhaseCommit heuristics: a branch that ended against the decision", () => {
  it.effect(
    "phase 3: a member rolled back by hand is reported and recorded in the log when one is given",
    () =>
      withLog((log) =>
        Effect.gen(function* () {
          const [a, b] = yield* Effect.all([ThreePhaseMemory.make("bank-a"), ThreePhaseMemory.make("bank-b")])
          const outcome = yield* ThreePhaseCommit.run([
            ThreePhaseCommit.branch(rolledBackByHand(a.participant), null),
            ThreePhaseCommit.branch(b.participant, null)
          ])
          expect(outcome._tag).toBe("Committed")
          const gid = TransactionId.gid(outcome.txId, "bank-a" as TransactionId.BranchName)
          expect(outcome._tag === "Committed" && outcome.heuristics).toEqual([
            { branch: "bank-a", gid, detail: rolledBackDetail }
          ])
          // The same record shape as 2PC's (TwoPhaseCommit records it with decision "commit").
          expect(yield* log.heuristics).toEqual([
            { txId: outcome.txId, branch: "bank-a", gid, decision: "commit", detail: rolledBackDetail }
          ])
        })
      )
  )

  it.effect("phase 3: CommitPending carries the heuristics of the members that did answer", () =>
    Effect.gen(function* () {
      const [a, b] = yield* Effect.all([ThreePhaseMemory.make("bank-a"), ThreePhaseMemory.make("bank-b")])
      const bDownAtCommit: P3 = {
        ...b.participant,
        commit: (ctx) => b.crash.pipe(Effect.zipRight(b.participant.commit(ctx)))
      }
      const fiber = yield* ThreePhaseCommit.run([
        ThreePhaseCommit.branch(rolledBackByHand(a.participant), null),
        ThreePhaseCommit.branch(bDownAtCommit, null)
      ]).pipe(Effect.fork)
      yield* TestClock.adjust(Duration.seconds(11))
      const outcome = yield* Fiber.join(fiber)
      expect(outcome._tag).toBe("CommitPending")
      if (outcome._tag !== "CommitPending") return
      expect(outcome.pending).toEqual(["bank-b"])
      expect(outcome.heuristics).toEqual([
        {
          branch: "bank-a",
          gid: TransactionId.gid(outcome.txId, "bank-a" as TransactionId.BranchName),
          detail: rolledBackDetail
        }
      ])
    })
  )

  it.effect(
    "a coordinator that finishes by its termination protocol reports a hand rollback in Committed",
    () =>
      withLog((log) =>
        Effect.gen(function* () {
          const [a, b] = yield* Effect.all([ThreePhaseMemory.make("bank-a"), ThreePhaseMemory.make("bank-b")])
          // b's first PreCommit is lost: the coordinator precommits it through the termination
          // protocol and commits there; a's branch was rolled back by hand meanwhile.
          const lossy = yield* firstPrecommitLost(b.participant)
          const outcome = yield* ThreePhaseCommit.run([
            ThreePhaseCommit.branch(rolledBackByHand(a.participant), null),
            ThreePhaseCommit.branch(lossy, null)
          ])
          expect(outcome._tag).toBe("Committed")
          if (outcome._tag !== "Committed") return
          const gid = TransactionId.gid(outcome.txId, "bank-a" as TransactionId.BranchName)
          expect(outcome.heuristics).toEqual([{ branch: "bank-a", gid, detail: rolledBackDetail }])
          expect(yield* log.heuristics).toEqual([
            { txId: outcome.txId, branch: "bank-a", gid, decision: "commit", detail: rolledBackDetail }
          ])
          expect(yield* b.stateOf(outcome.txId)).toBe("committed")
        })
      )
  )

  it.effect(
    "a No vote aborts; a member committed by hand meanwhile is reported and recorded (decision abort)",
    () =>
      withLog((log) =>
        Effect.gen(function* () {
          const a = yield* ThreePhaseMemory.make("bank-a")
          const b = yield* ThreePhaseMemory.make("bank-b", { vote: "no" })
          const outcome = yield* ThreePhaseCommit.run([
            ThreePhaseCommit.branch(committedByHand(a.participant), null),
            ThreePhaseCommit.branch(b.participant, null)
          ])
          expect(outcome._tag).toBe("Aborted")
          if (outcome._tag !== "Aborted") return
          const gid = TransactionId.gid(outcome.txId, "bank-a" as TransactionId.BranchName)
          expect(outcome.heuristics).toEqual([{ branch: "bank-a", gid, detail: committedDetail }])
          expect(yield* log.heuristics).toEqual([
            { txId: outcome.txId, branch: "bank-a", gid, decision: "abort", detail: committedDetail }
          ])
        })
      )
  )

  it.effect("terminate: an abort that stands reports the member it found committed by hand", () =>
    Effect.gen(function* () {
      const [a, b] = yield* Effect.all([ThreePhaseMemory.make("bank-a"), ThreePhaseMemory.make("bank-b")])
      const txId = yield* TransactionId.make
      // Both voted yes and nobody precommitted (the coordinator died after CanCommit); a was
      // committed by hand, which a rollback discovers.
      const ps = [committedByHand(a.participant), b.participant]
      yield* Effect.forEach(ps, (p) => p.prepare(ctxOf(txId, p.name, ["bank-a", "bank-b"]), null))
      const t = yield* ThreePhaseCommit.terminate(txId, ps)
      expect(t._tag).toBe("Aborted")
      expect(t._tag === "Aborted" && t.heuristics).toEqual([
        {
          branch: "bank-a",
          gid: TransactionId.gid(txId, "bank-a" as TransactionId.BranchName),
          detail: committedDetail
        }
      ])
      expect(yield* b.stateOf(txId)).toBe("aborted")
    })
  )

  it.effect(
    "terminate after a coordinator died before DoCommit: commits, reports and records the hand rollback",
    () =>
      withLog((log) =>
        Effect.gen(function* () {
          const [a, b] = yield* Effect.all([ThreePhaseMemory.make("bank-a"), ThreePhaseMemory.make("bank-b")])
          const txId = yield* TransactionId.make
          const ps = [rolledBackByHand(a.participant), b.participant]
          yield* precommitAll(txId, ps)
          const t = yield* ThreePhaseCommit.terminate(txId, ps)
          expect(t._tag).toBe("Committed")
          const gid = TransactionId.gid(txId, "bank-a" as TransactionId.BranchName)
          expect(t._tag === "Committed" && t.heuristics).toEqual([
            { branch: "bank-a", gid, detail: rolledBackDetail }
          ])
          expect(yield* log.heuristics).toEqual([
            { txId, branch: "bank-a", gid, decision: "commit", detail: rolledBackDetail }
          ])
        })
      )
  )

  it.effect("recover reports the heuristics of the transactions it finished, as 2PC Recovery does", () =>
    Effect.gen(function* () {
      const [a, b] = yield* Effect.all([ThreePhaseMemory.make("bank-a"), ThreePhaseMemory.make("bank-b")])
      const txId = yield* TransactionId.make
      const ps = [rolledBackByHand(a.participant), b.participant]
      yield* precommitAll(txId, ps)
      const report = yield* ThreePhaseCommit.recover(ps, { orphanAfter: 0 })
      expect(report.committed).toEqual([txId])
      expect(report.heuristics).toEqual([
        {
          txId,
          branch: "bank-a",
          gid: TransactionId.gid(txId, "bank-a" as TransactionId.BranchName),
          decision: "commit",
          detail: rolledBackDetail
        }
      ])
    })
  )

  it.effect("an agent's termination carries the heuristics it met", () =>
    Effect.gen(function* () {
      const [a, b] = yield* Effect.all([ThreePhaseMemory.make("bank-a"), ThreePhaseMemory.make("bank-b")])
      const txId = yield* TransactionId.make
      const ps = [rolledBackByHand(a.participant), b.participant]
      yield* precommitAll(txId, ps)
      const fiber = yield* ThreePhaseCommit.agent(txId, b.participant, [ps[0]!]).pipe(Effect.fork)
      yield* TestClock.adjust(Duration.seconds(20))
      const t = yield* Fiber.join(fiber)
      expect(t._tag).toBe("Committed")
      expect(t._tag === "Committed" && t.heuristics.map((h) => h.branch)).toEqual(["bank-a"])
    })
  )

  it("the Promise facade's result lists a 3PC outcome's heuristics, as the 2PC facade's does", () => {
    const txId = "01J0000000000000000000000A" as TransactionId.TransactionId
    const gid = TransactionId.gid(txId, "bank-a" as TransactionId.BranchName)
    const result = ThreePhaseCoordinator.toResult(
      ThreePhaseCommit.Outcome.Committed({
        txId,
        votes: [],
        heuristics: [{ branch: "bank-a" as TransactionId.BranchName, gid, detail: rolledBackDetail }],
        protocol: "3pc",
        mode: "classic"
      })
    )
    expect(result.heuristics).toEqual([{ participant: "bank-a", detail: rolledBackDetail }])
  })
})

describe("ThreePhaseCommit: scans that never answer", () => {
  it.effect("recover bounds each participant's in-doubt scan by callTimeout and reports it unscanned", () =>
    Effect.gen(function* () {
      const [a, b] = yield* Effect.all([ThreePhaseMemory.make("bank-a"), ThreePhaseMemory.make("bank-b")])
      const txId = yield* TransactionId.make
      yield* precommitAll(txId, [a.participant, b.participant])
      // b's database stopped answering (a black-holed connection): its scan never returns.
      const hung: P3 = { ...b.participant, inDoubt: Effect.never }
      const fiber = yield* ThreePhaseCommit.recover([a.participant, hung], {
        orphanAfter: 0,
        callTimeout: Duration.seconds(1)
      }).pipe(Effect.fork)
      yield* TestClock.adjust(Duration.seconds(1))
      const report = yield* Fiber.poll(fiber)
      // Before: the pass waited for the scan for ever.
      expect(Option.isSome(report)).toBe(true)
      if (Option.isNone(report) || report.value._tag !== "Success") return
      expect(report.value.value.unscanned).toEqual(["bank-b"])
      expect(report.value.value.committed).toEqual([txId])
    })
  )

  it.effect("watch bounds its scan, so a scan that never answers does not stop the daemon", () =>
    Effect.gen(function* () {
      const a = yield* ThreePhaseMemory.make("bank-a")
      const scans = yield* Ref.make(0)
      const flaky: P3 = {
        ...a.participant,
        inDoubt: Ref.getAndUpdate(scans, (n) => n + 1).pipe(
          Effect.flatMap((n) => (n === 0 ? Effect.never : a.participant.inDoubt))
        )
      }
      const fiber = yield* ThreePhaseCommit.watch(flaky, [], {
        interval: Duration.seconds(20),
        callTimeout: Duration.seconds(5)
      }).pipe(Effect.fork)
      yield* TestClock.adjust(Duration.seconds(5))
      yield* TestClock.adjust(Duration.seconds(20))
      // Before: the first scan held the daemon for ever; no second scan.
      expect(yield* Ref.get(scans)).toBe(2)
      yield* Fiber.interrupt(fiber)
    })
  )
})
