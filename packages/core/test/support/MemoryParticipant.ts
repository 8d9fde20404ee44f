import { type Duration, Effect, Ref } from "effect"
import {
  type BranchContext,
  type BranchState,
  type CommitAck,
  OnePhaseResult,
  type Participant,
  type RollbackAck,
  Vote,
  defaults
} from "../../src/Participant.js"
import { BranchCallError } from "../../src/TransactionError.js"
import * as TransactionId from "../../src/TransactionId.js"

/** What a test scripts a memory participant to do. */
export interface Behaviour {
  readonly vote?: "yes" | "no" | "readOnly"
  readonly prepareDelay?: Duration.DurationInput
  /** Commit calls that fail (in doubt) before one succeeds. */
  readonly commitFailures?: number
}

/** An in-memory participant double recording every call. */
export const make = (name: string, behaviour: Behaviour = {}) =>
  Effect.gen(function* () {
    const calls = yield* Ref.make<ReadonlyArray<string>>([])
    const branches = yield* Ref.make<ReadonlyMap<string, BranchState & string>>(new Map())
    const preparedAt = new Map<string, number>()
    const commitFailures = yield* Ref.make(behaviour.commitFailures ?? 0)
    const work = yield* Ref.make<ReadonlyArray<unknown>>([])
    const record = (call: string) => Ref.update(calls, (c) => [...c, call])
    const setState = (gid: string, state: BranchState) =>
      Ref.update(branches, (m) => new Map([...m, [gid, state]]))
    const participant: Participant<unknown> = {
      name: name as TransactionId.BranchName,
      verify: Effect.void,
      prepare: (ctx: BranchContext, w: unknown) =>
        Effect.gen(function* () {
          yield* record(`prepare:${ctx.branch}`)
          yield* Ref.update(work, (list) => [...list, w])
          if (behaviour.prepareDelay !== undefined) yield* Effect.sleep(behaviour.prepareDelay)
          if (behaviour.vote === "no") return Vote.No({ reason: "insufficient funds", sqlState: "23514" })
          if (behaviour.vote === "readOnly") return Vote.ReadOnly()
          yield* setState(ctx.gid, "prepared")
          return Vote.Prepared()
        }),
      commitOnePhase: (ctx, w) =>
        Effect.gen(function* () {
          yield* record(`onePhase:${ctx.branch}`)
          yield* Ref.update(work, (list) => [...list, w])
          if (behaviour.vote === "no")
            return OnePhaseResult.No({ reason: "insufficient funds", sqlState: "23514" })
          yield* setState(ctx.gid, "committed")
          return OnePhaseResult.Committed()
        }),
      commit: (ctx) =>
        Effect.gen(function* () {
          yield* record(`commit:${ctx.branch}`)
          const left = yield* Ref.getAndUpdate(commitFailures, (n) => Math.max(0, n - 1))
          if (left > 0) {
            return yield* new BranchCallError({
              txId: ctx.txId,
              branch: ctx.branch,
              phase: "commit",
              reason: "connection reset",
              inDoubt: true
            })
          }
          const state = (yield* Ref.get(branches)).get(ctx.gid)
          if (state === "prepared" || state === "committed") {
            yield* setState(ctx.gid, "committed")
            return "Committed" as CommitAck
          }
          return "HeuristicRollback" as CommitAck
        }),
      rollback: (ctx) =>
        Effect.gen(function* () {
          yield* record(`rollback:${ctx.branch}`)
          const state = (yield* Ref.get(branches)).get(ctx.gid)
          if (state === "committed") return "HeuristicCommit" as RollbackAck
          if (state === "prepared") yield* setState(ctx.gid, "aborted")
          return "RolledBack" as RollbackAck
        }),
      state: (ctx) => Ref.get(branches).pipe(Effect.map((m) => m.get(ctx.gid) ?? "aborted")),
      inDoubt: Ref.get(branches).pipe(
        Effect.map((m) =>
          [...m.entries()]
            .filter(([, s]) => s === "prepared")
            .map(([gid]) => {
              const parsed = TransactionId.parseGid(gid)
              if (parsed._tag === "None") throw new Error(`bad gid ${gid}`)
              return {
                gid: parsed.value.gid,
                txId: parsed.value.txId,
                branch: parsed.value.branch,
                preparedAt: preparedAt.get(gid) ?? 0
              }
            })
        )
      ),
      forget: defaults.forget,
      fromOperations: (list) => list
    }
    return {
      participant,
      calls: Ref.get(calls),
      work: Ref.get(work),
      states: Ref.get(branches),
      /** Pretends the branch was prepared by an earlier, crashed coordinator (at `at`, default 0). */
      seedPrepared: (gid: string, at = 0) =>
        Effect.zipRight(
          Effect.sync(() => preparedAt.set(gid, at)),
          setState(gid, "prepared")
        ),
      /** Simulates an operator's manual ROLLBACK PREPARED. */
      forceRollback: (gid: string) => setState(gid, "aborted")
    }
  })
