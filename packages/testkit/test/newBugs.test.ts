/**
 * Plausible coordinator bugs that are NOT among the library's `Broken` variants, written here and
 * swapped into the simulator in place of the core's own code (`vi.mock`), to show that the
 * checkers catch bugs nobody wrote them for.
 */
import type * as ThreePhaseCommitModule from "@accord/core/ThreePhaseCommit"
import type * as RecoveryModule from "@accord/core/Recovery"
import type { BranchName } from "@accord/core/TransactionId"
import type * as TwoPhaseCommitModule from "@accord/core/TwoPhaseCommit"
import { describe, expect, it, vi } from "vitest"
import * as Simulator from "../src/Simulator.js"

/** Which bug is swapped in; "none" runs the core's own code. */
const bug = vi.hoisted(() => ({
  current: "none" as
    | "none"
    | "committed-before-durable"
    | "recovery-ignores-decisions"
    | "recovery-reads-then-rolls-back"
    | "recovery-aborts-untouched-decisions"
    | "terminator-without-quorum"
}))

/** Seeds per bug (each run stops at its third failing seed): `ACCORD_SIM_BUG_SEEDS`, default 1,000. */
const seeds = Number(process.env.ACCORD_SIM_BUG_SEEDS ?? "1000")

/**
 * 2PC that tells its caller Committed as soon as every branch voted yes, and writes the decision
 * and runs phase 2 in the background.
 */
vi.mock("@accord/core/TwoPhaseCommit", async (importOriginal) => {
  const original = await importOriginal<typeof TwoPhaseCommitModule>()
  const { Clock, Duration, Effect, Schedule } = await import("effect")
  const { Vote } = await import("@accord/core/Participant")
  const TransactionId = await import("@accord/core/TransactionId")
  const { TransactionLog } = await import("@accord/core/TransactionLog")
  const committedBeforeDurable: typeof original.run = (branches, options = {}) =>
    Effect.gen(function* () {
      const txId = yield* TransactionId.parseTransactionId(options.txId!)
      const resolved = yield* original.validate(branches, txId, options.namespace)
      const prepareTimeout = Duration.decode(options.prepareTimeout ?? original.defaults.prepareTimeout)
      const callTimeout = Duration.decode(options.callTimeout ?? original.defaults.callTimeout)
      const votes = yield* Effect.forEach(
        resolved,
        (r) =>
          r.participant.prepare(r.ctx, r.work).pipe(
            Effect.timeout(prepareTimeout),
            Effect.catchAll((e) => Effect.succeed(Vote.No({ reason: e.message })))
          ),
        { concurrency: "unbounded" }
      )
      const branchVotes = resolved.map((r, i) => ({ branch: r.ctx.branch, gid: r.ctx.gid, vote: votes[i]! }))
      if (votes.some((v) => v._tag === "No")) {
        yield* Effect.forEach(
          resolved,
          (r) => r.participant.rollback(r.ctx).pipe(Effect.timeout(callTimeout), Effect.ignore),
          { discard: true, concurrency: "unbounded" }
        )
        return original.Outcome.Aborted({ txId, votes: branchVotes, reason: "a branch refused" })
      }
      const writers = resolved.filter((_, i) => votes[i]!._tag === "Prepared")
      const log = yield* TransactionLog
      // The bug: the decision is forced (and phase 2 run) after the caller has heard Committed.
      yield* Effect.forkDaemon(
        Effect.gen(function* () {
          yield* log
            .decide({
              txId,
              decision: "commit",
              branches: writers.map((r) => ({ branch: r.ctx.branch, gid: r.ctx.gid })),
              decidedAt: yield* Clock.currentTimeMillis
            })
            .pipe(Effect.retry(Schedule.recurs(5)))
          yield* Effect.forEach(
            writers,
            (r) =>
              r.participant.commit(r.ctx).pipe(Effect.timeout(callTimeout), Effect.retry(Schedule.recurs(5))),
            { concurrency: "unbounded", discard: true }
          )
          yield* log.complete(txId)
        }).pipe(Effect.ignore)
      )
      return original.Outcome.Committed({ txId, votes: branchVotes, onePhase: false, heuristics: [] })
    })
  return {
    ...original,
    run: ((branches, options) =>
      bug.current === "committed-before-durable"
        ? committedBeforeDurable(branches, options)
        : original.run(branches, options)) as typeof original.run
  }
})

/**
 * Two recoveries that presume abort for a transaction that has a commit decision:
 * - `recovery-ignores-decisions`: every in-doubt branch is rolled back ("presumed abort"), the
 *   unfinished decisions are marked complete without being driven;
 * - `recovery-reads-then-rolls-back`: the orphan path reads the decision and rolls back when there
 *   is none, instead of inserting an abort decision (citus#1029: the coordinator's commit decision
 *   can land between the read and the rollback).
 */
vi.mock("@accord/core/Recovery", async (importOriginal) => {
  const original = await importOriginal<typeof RecoveryModule>()
  const { Duration, Effect, Option } = await import("effect")
  const { TransactionLog } = await import("@accord/core/TransactionLog")
  const ignoresDecisions: typeof original.run = (participants, options = {}) =>
    Effect.gen(function* () {
      const log = yield* TransactionLog
      const callTimeout = Duration.decode(options.callTimeout ?? original.defaults.callTimeout)
      let rolledBack = 0
      for (const p of participants) {
        const found = yield* p.inDoubt.pipe(Effect.orElseSucceed(() => []))
        for (const b of found) {
          const ack = yield* p
            .rollback({ txId: b.txId, branch: b.branch, gid: b.gid })
            .pipe(Effect.timeout(callTimeout), Effect.option)
          if (Option.isSome(ack)) rolledBack++
        }
      }
      const unfinished = yield* log.unfinished()
      for (const d of unfinished) yield* log.complete(d.txId)
      return {
        transactionsFinished: unfinished.length,
        branchesCommitted: 0,
        branchesRolledBack: rolledBack,
        presumedAborts: 0,
        youngLeft: 0,
        heuristics: [],
        unresolved: [],
        foreign: []
      }
    })
  const readsThenRollsBack: typeof original.run = (participants, options) =>
    Effect.flatMap(TransactionLog, (log) =>
      original.run(participants, options).pipe(
        Effect.provideService(TransactionLog, {
          ...log,
          // The bug: "insert unless one exists" done as a read; the abort is never stored.
          decide: (record) =>
            record.decision === "abort"
              ? Effect.map(
                  log.decision(record.txId),
                  Option.getOrElse(() => record)
                )
              : log.decide(record)
        })
      )
    )
  const abortsUntouched: typeof original.run = (participants, options) =>
    Effect.gen(function* () {
      const log = yield* TransactionLog
      const byName = new Map(participants.map((p) => [p.name as string, p]))
      for (const d of yield* log.unfinished()) {
        if (d.decision !== "commit") continue
        const ctxs = d.branches.map((b) => ({ txId: d.txId, branch: b.branch, gid: b.gid }))
        const states = yield* Effect.forEach(ctxs, (ctx) => {
          const p = byName.get(ctx.branch)
          return p === undefined
            ? Effect.succeed("unknown")
            : p.state(ctx).pipe(Effect.orElseSucceed(() => "unknown"))
        })
        if (!states.every((s) => s === "prepared")) continue
        // The bug: "no branch has committed yet, so the coordinator died before phase 2 and
        // aborting is safe", for a transaction whose commit decision is in the log.
        yield* Effect.forEach(ctxs, (ctx) => byName.get(ctx.branch)!.rollback(ctx).pipe(Effect.ignore), {
          discard: true
        })
        yield* log.complete(d.txId)
      }
      return yield* original.run(participants, options)
    })
  return {
    ...original,
    run: ((participants, options) =>
      bug.current === "recovery-aborts-untouched-decisions"
        ? abortsUntouched(participants, options)
        : bug.current === "recovery-ignores-decisions"
          ? ignoresDecisions(participants, options)
          : bug.current === "recovery-reads-then-rolls-back"
            ? readsThenRollsBack(participants, options)
            : original.run(participants, options)) as typeof original.run
  }
})

/**
 * A 3PC member agent whose terminator commits as soon as one reachable member is precommitted
 * (classic 3PC's rule), without a precommit quorum, even in quorum mode; otherwise it runs the
 * core's own termination protocol.
 */
vi.mock("@accord/core/ThreePhaseCommit", async (importOriginal) => {
  const original = await importOriginal<typeof ThreePhaseCommitModule>()
  const { Duration, Effect, Option, Schedule } = await import("effect")
  const TransactionId = await import("@accord/core/TransactionId")
  const brokenWatch: typeof original.watch = (self, peers, options = {}) =>
    Effect.gen(function* () {
      const timeout = Duration.decode(options.timeout ?? original.defaults.agentTimeout)
      const callTimeout = Duration.decode(options.callTimeout ?? original.defaults.callTimeout)
      const everyone = [self, ...peers]
      const pass = Effect.gen(function* () {
        const found = yield* self.inDoubt.pipe(Effect.orElseSucceed(() => []))
        const now = yield* Effect.clockWith((c) => c.currentTimeMillis)
        for (const b of found) {
          if (b.members === undefined || now - b.preparedAt < Duration.toMillis(timeout)) continue
          const members = everyone.filter((q) => b.members!.includes(q.name))
          const ctxOf = (name: string) => ({
            txId: b.txId,
            branch: name as BranchName,
            gid: TransactionId.gid(b.txId, name as BranchName),
            members: b.members!,
            mode: b.mode
          })
          const states = yield* Effect.forEach(
            members,
            (q) => q.state(ctxOf(q.name)).pipe(Effect.timeout(callTimeout), Effect.option),
            { concurrency: "unbounded" }
          )
          if (states.some((s) => Option.isSome(s) && s.value === "precommitted")) {
            // The bug: one precommitted member is taken for a commit decision.
            yield* Effect.forEach(
              members,
              (q) => q.commit(ctxOf(q.name)).pipe(Effect.timeout(callTimeout), Effect.ignore),
              { concurrency: "unbounded", discard: true }
            )
            continue
          }
          yield* original
            .terminate(b.txId, members, {
              ...options,
              members: b.members,
              ...(b.mode === undefined ? {} : { mode: b.mode }),
              from: self.name
            })
            .pipe(Effect.ignore)
        }
      })
      return yield* pass.pipe(Effect.repeat(Schedule.spaced(timeout)), Effect.andThen(Effect.never))
    })
  return {
    ...original,
    watch: ((self, peers, options) =>
      bug.current === "terminator-without-quorum"
        ? brokenWatch(self, peers, options)
        : original.watch(self, peers, options)) as typeof original.watch
  }
})

const runWith = async (which: typeof bug.current, protocol: Simulator.Protocol) => {
  bug.current = which
  try {
    return await Simulator.runMany({ protocol, seeds, stopAfterFailures: 3 })
  } finally {
    bug.current = "none"
  }
}

describe("plausible bugs the Broken variants do not cover", () => {
  it("the swap leaves the correct protocols passing", { timeout: 600_000 }, async () => {
    for (const protocol of ["2pc", "3pc-quorum"] as const) {
      const summary = await runWith("none", protocol)
      expect(summary.failingSeeds).toEqual([])
    }
  })

  it(
    "a coordinator that reports Committed before its decision is durable",
    { timeout: 600_000 },
    async () => {
      const summary = await runWith("committed-before-durable", "2pc")
      expect(summary.failingSeeds.length).toBeGreaterThan(0)
    }
  )

  it("a recovery that presumes abort for a decided transaction", { timeout: 600_000 }, async () => {
    const summary = await runWith("recovery-ignores-decisions", "2pc")
    expect(summary.failingSeeds.length).toBeGreaterThan(0)
  })

  it(
    "a recovery that reads the decision and rolls back when none is there",
    { timeout: 600_000 },
    async () => {
      const summary = await runWith("recovery-reads-then-rolls-back", "2pc")
      expect(summary.failingSeeds.length).toBeGreaterThan(0)
    }
  )

  it(
    "a recovery that aborts a commit decision none of whose branches has committed yet",
    { timeout: 600_000 },
    async () => {
      // The caller was told nothing (its coordinator died after the decision), every branch ends
      // rolled back: only the log's durable commit decision says the outcome is wrong.
      const summary = await runWith("recovery-aborts-untouched-decisions", "2pc")
      expect(summary.failingSeeds.length).toBeGreaterThan(0)
      expect(summary.violationKinds.decision ?? 0).toBeGreaterThan(0)
    }
  )

  it("a 3PC terminator that commits without a precommit quorum", { timeout: 600_000 }, async () => {
    const summary = await runWith("terminator-without-quorum", "3pc-quorum")
    expect(summary.failingSeeds.length).toBeGreaterThan(0)
  })
})
