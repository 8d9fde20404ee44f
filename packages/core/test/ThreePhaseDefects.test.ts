/**
 * A 3PC participant whose call dies (a bug, or a rejected Promise under `Effect.promise`: a
 * defect, not a typed failure) is handled as a failed call, as 2PC handles it: a No vote in
 * CanCommit, a commit retried, a member unreachable for a scan. It used to end the whole run with
 * the raw defect: after the commit decision, one member committed and the other left prepared.
 */
import { describe, expect, it } from "@effect/vitest"
import { Effect, Exit, Ref } from "effect"
import * as ThreePhaseCommit from "../src/ThreePhaseCommit.js"
import * as TransactionId from "../src/TransactionId.js"
import * as ThreePhaseMemory from "./support/ThreePhaseMemory.js"

type P3 = ThreePhaseCommit.AnyThreePhaseParticipant

/** `p`, whose first `n` calls to `method` die with a rejected Promise. */
const dyingFirst = (p: P3, method: "prepare" | "commit" | "precommit", n: number) =>
  Effect.map(Ref.make(0), (calls): P3 => {
    const die = Effect.promise<never>(() => Promise.reject(new Error(`ECONNRESET in ${method}`)))
    const wrap =
      <Args extends Array<unknown>, A, E>(f: (...args: Args) => Effect.Effect<A, E>) =>
      (...args: Args) =>
        Effect.flatMap(
          Ref.getAndUpdate(calls, (c) => c + 1),
          (c) => (c < n ? die : f(...args))
        )
    return { ...p, [method]: wrap(p[method] as (...args: Array<unknown>) => Effect.Effect<unknown, unknown>) }
  })

describe("3PC: a participant's defect is a failed call, not the end of the run", () => {
  // Live: the retry waits out its backoff on the real clock.
  it.live("a commit whose first attempt dies is retried: both members commit", () =>
    Effect.gen(function* () {
      const [a, b] = yield* Effect.all([ThreePhaseMemory.make("bank-a"), ThreePhaseMemory.make("bank-b")])
      const flaky = yield* dyingFirst(b!.participant, "commit", 1)
      const exit = yield* Effect.exit(
        ThreePhaseCommit.run([
          ThreePhaseCommit.branch(a!.participant, null),
          ThreePhaseCommit.branch(flaky, null)
        ])
      )
      expect(Exit.isSuccess(exit)).toBe(true)
      if (Exit.isSuccess(exit)) {
        expect(exit.value._tag).toBe("Committed")
        expect(yield* Effect.forEach([a!, b!], (m) => m.stateOf(exit.value.txId))).toEqual([
          "committed",
          "committed"
        ])
      }
    })
  )

  it.effect(
    "a prepare that dies is a No vote: the transaction aborts and the member that voted yes is rolled back",
    () =>
      Effect.gen(function* () {
        const [a, b] = yield* Effect.all([ThreePhaseMemory.make("bank-a"), ThreePhaseMemory.make("bank-b")])
        const broken = yield* dyingFirst(b!.participant, "prepare", 1)
        const exit = yield* Effect.exit(
          ThreePhaseCommit.run([
            ThreePhaseCommit.branch(a!.participant, null),
            ThreePhaseCommit.branch(broken, null)
          ])
        )
        expect(Exit.isSuccess(exit)).toBe(true)
        if (Exit.isSuccess(exit)) {
          expect(exit.value._tag).toBe("Aborted")
          const [stateA] = yield* Effect.forEach([a!], (m) => m.stateOf(exit.value.txId))
          expect(["aborted", "initial"]).toContain(stateA)
        }
      })
  )

  it.effect("a precommit that dies counts as not precommitted, never as the run's end", () =>
    Effect.gen(function* () {
      const [a, b] = yield* Effect.all([ThreePhaseMemory.make("bank-a"), ThreePhaseMemory.make("bank-b")])
      const broken = yield* dyingFirst(b!.participant, "precommit", 1)
      const exit = yield* Effect.exit(
        ThreePhaseCommit.run([
          ThreePhaseCommit.branch(a!.participant, null),
          ThreePhaseCommit.branch(broken, null)
        ])
      )
      expect(Exit.isSuccess(exit)).toBe(true)
    })
  )
})

describe("3PC termination beside a member whose vote record is gone", () => {
  it.effect(
    "a member reading initial beside a precommitted one blocks the terminator: nothing is aborted",
    () =>
      Effect.gen(function* () {
        const [a, b] = yield* Effect.all([ThreePhaseMemory.make("bank-a"), ThreePhaseMemory.make("bank-b")])
        const outcome = yield* ThreePhaseCommit.run([
          ThreePhaseCommit.branch(a!.participant, null),
          ThreePhaseCommit.branch(b!.participant, null)
        ])
        expect(outcome._tag).toBe("Committed")
        // As after a forget of a committed bank-a while bank-b is still precommitted.
        const forgotten: P3 = { ...a!.participant, state: () => Effect.succeed("initial" as const) }
        const precommitted: P3 = { ...b!.participant, state: () => Effect.succeed("precommitted" as const) }
        const rollbacks = yield* Ref.make(0)
        const counted = (p: P3): P3 => ({
          ...p,
          rollback: (ctx, options) =>
            Effect.zipRight(
              Ref.update(rollbacks, (n) => n + 1),
              p.rollback(ctx, options)
            )
        })
        const t = yield* ThreePhaseCommit.terminate(outcome.txId, [counted(forgotten), counted(precommitted)])
        expect(t._tag).toBe("Blocked")
        expect(yield* Ref.get(rollbacks)).toBe(0)
      })
  )
})

describe("3PC recover beside a member that never answers", () => {
  it.live("terminates transactions side by side: 10 of them take about one termination, not ten", () =>
    Effect.gen(function* () {
      const [a, b] = yield* Effect.all([ThreePhaseMemory.make("bank-a"), ThreePhaseMemory.make("bank-b")])
      const names = [a!.participant.name, b!.participant.name]
      const txIds: Array<TransactionId.TransactionId> = []
      for (let i = 0; i < 10; i++) {
        const txId = yield* TransactionId.make
        txIds.push(txId)
        for (const m of [a!, b!]) {
          const ctx = {
            txId,
            branch: m.participant.name,
            gid: TransactionId.gid(txId, m.participant.name),
            members: names
          }
          expect((yield* m.participant.prepare(ctx, null))._tag).toBe("Prepared")
        }
        // The coordinator precommitted bank-a, then died: commit is the only outcome.
        yield* a!.participant.precommit({ txId, branch: names[0]!, gid: TransactionId.gid(txId, names[0]!) })
      }
      // bank-b's scan answers; every call on its branches then hangs (a frozen connection).
      const hung: P3 = {
        ...b!.participant,
        state: () => Effect.never,
        precommit: () => Effect.never,
        commit: () => Effect.never,
        rollback: () => Effect.never
      }
      const began = performance.now()
      const report = yield* ThreePhaseCommit.recover([a!.participant, hung], {
        orphanAfter: 0,
        callTimeout: "200 millis"
      })
      const elapsed = performance.now() - began
      // One termination costs a few call timeouts (a state read, a precommit, a commit and its
      // retries); one at a time, ten of them took about ten times that.
      expect(elapsed).toBeLessThan(5_000)
      expect(report.blocked).toEqual([])
      expect(new Set(report.committed)).toEqual(new Set(txIds))
      expect(report.pending.map((p) => p.txId)).toEqual(expect.arrayContaining(txIds))
      expect(yield* Effect.forEach(txIds, (txId) => a!.stateOf(txId))).toEqual(txIds.map(() => "committed"))
    })
  )
})
