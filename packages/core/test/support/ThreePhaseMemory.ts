import { type Duration, Effect, Ref } from "effect"
import type { CommitAck } from "../../src/Participant.js"
import { Vote } from "../../src/Participant.js"
import type {
  InDoubtMember,
  Mode,
  State,
  ThreePhaseParticipant,
  ThreePhaseRollbackAck
} from "../../src/ThreePhaseCommit.js"
import { BranchCallError } from "../../src/TransactionError.js"
import * as TransactionId from "../../src/TransactionId.js"

/** What a test scripts a memory 3PC participant to do. */
export interface Behaviour {
  readonly vote?: "yes" | "no"
  readonly prepareDelay?: Duration.DurationInput
}

interface Entry {
  readonly state: State
  readonly members: ReadonlyArray<TransactionId.BranchName> | undefined
  readonly mode?: Mode | undefined
}

/**
 * An in-memory 3PC participant whose records survive `crash()`/`restart()` (they stand for the
 * database's durable state); while crashed every call fails, as a dead process would.
 */
export const make = (name: string, behaviour: Behaviour = {}) =>
  Effect.gen(function* () {
    const calls = yield* Ref.make<ReadonlyArray<string>>([])
    const entries = yield* Ref.make<ReadonlyMap<string, Entry>>(new Map())
    const down = yield* Ref.make(false)
    const branch = name as TransactionId.BranchName
    const record = (call: string) => Ref.update(calls, (c) => [...c, call])
    const get = (gid: string) => Ref.get(entries).pipe(Effect.map((m) => m.get(gid)))
    const set = (gid: string, entry: Entry) => Ref.update(entries, (m) => new Map([...m, [gid, entry]]))
    const alive = (
      ctx: { txId: string },
      phase: "prepare" | "precommit" | "preabort" | "commit" | "rollback" | "state"
    ) =>
      Effect.gen(function* () {
        if (yield* Ref.get(down)) {
          return yield* new BranchCallError({
            txId: ctx.txId,
            branch,
            phase,
            reason: "connection refused",
            inDoubt: true
          })
        }
      })
    // Moves uncertain → `to`; any other state stays (precommitted and preaborted exclude each other).
    const move = (gid: string, to: "precommitted" | "preaborted") =>
      Effect.gen(function* () {
        const entry = yield* get(gid)
        if (entry === undefined) return "initial" as State
        if (entry.state === "uncertain") {
          yield* set(gid, { ...entry, state: to })
          return to as State
        }
        return entry.state
      })
    const participant: ThreePhaseParticipant<unknown> = {
      name: branch,
      verify: Effect.void,
      prepare: (ctx, _work) =>
        Effect.gen(function* () {
          yield* alive(ctx, "prepare")
          yield* record(`prepare:${ctx.branch}`)
          if (behaviour.prepareDelay !== undefined) yield* Effect.sleep(behaviour.prepareDelay)
          const existing = yield* get(ctx.gid)
          if (existing?.state === "aborted") return Vote.No({ reason: "rolled back before it prepared" })
          if (behaviour.vote === "no") {
            yield* set(ctx.gid, { state: "aborted", members: undefined })
            return Vote.No({ reason: "insufficient funds", sqlState: "23514" })
          }
          yield* set(ctx.gid, { state: "uncertain", members: ctx.members, mode: ctx.mode })
          return Vote.Prepared()
        }),
      precommit: (ctx) =>
        alive(ctx, "precommit").pipe(
          Effect.zipRight(record(`precommit:${ctx.branch}`)),
          Effect.zipRight(move(ctx.gid, "precommitted"))
        ),
      preabort: (ctx) =>
        alive(ctx, "preabort").pipe(
          Effect.zipRight(record(`preabort:${ctx.branch}`)),
          Effect.zipRight(move(ctx.gid, "preaborted"))
        ),
      commit: (ctx) =>
        Effect.gen(function* () {
          yield* alive(ctx, "commit")
          yield* record(`commit:${ctx.branch}`)
          const entry = yield* get(ctx.gid)
          if (entry === undefined || entry.state === "aborted" || entry.state === "initial") {
            return "HeuristicRollback" as CommitAck
          }
          yield* set(ctx.gid, { ...entry, state: "committed" })
          return "Committed" as CommitAck
        }),
      rollback: (ctx, options) =>
        Effect.gen(function* () {
          yield* alive(ctx, "rollback")
          yield* record(`rollback:${ctx.branch}`)
          const entry = yield* get(ctx.gid)
          if (entry?.state === "committed") return "HeuristicCommit" as ThreePhaseRollbackAck
          // Never over a precommitted member: the rollback refuses and says so.
          if (entry?.state === "precommitted" && options?.overPrecommit !== true)
            return "Precommitted" as ThreePhaseRollbackAck
          // Told to fence only an unvoted member: one that recorded its yes vote is left alone.
          if (
            options?.onlyIfUnvoted === true &&
            entry !== undefined &&
            entry.state !== "aborted" &&
            entry.state !== "initial"
          )
            return "Voted" as ThreePhaseRollbackAck
          // Also fences a gid that is not prepared yet: its prepare will vote No.
          yield* set(ctx.gid, { state: "aborted", members: entry?.members, mode: entry?.mode })
          return "RolledBack" as ThreePhaseRollbackAck
        }),
      state: (ctx) =>
        alive(ctx, "state").pipe(
          Effect.zipRight(get(ctx.gid)),
          Effect.map((e) => e?.state ?? "initial")
        ),
      inDoubt: Ref.get(entries).pipe(
        Effect.map((m) =>
          [...m.entries()]
            .filter(
              ([, e]) => e.state === "uncertain" || e.state === "precommitted" || e.state === "preaborted"
            )
            .map(([gid, e]): InDoubtMember => {
              const parsed = TransactionId.parseGid(gid)
              if (parsed._tag === "None") throw new Error(`bad gid ${gid}`)
              return { ...parsed.value, preparedAt: 0, state: e.state, members: e.members, mode: e.mode }
            })
        )
      ),
      forget: () => Effect.void,
      fromOperations: (list) => list
    }
    return {
      participant,
      calls: Ref.get(calls),
      /** The state of this participant's branch of `txId`. */
      stateOf: (txId: string, namespace?: string) =>
        get(TransactionId.gid(txId as TransactionId.TransactionId, branch, namespace)).pipe(
          Effect.map((e) => e?.state ?? "initial")
        ),
      crash: Ref.set(down, true),
      restart: Ref.set(down, false)
    }
  })

export type Memory = Effect.Effect.Success<ReturnType<typeof make>>
