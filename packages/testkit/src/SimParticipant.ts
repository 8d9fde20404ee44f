/**
 * An in-memory participant that behaves like a PostgreSQL branch with Accord's marker rows:
 * prepared branches and commit markers are durable (they survive a crash), work in progress is
 * not. It keeps a ghost history (every commit actually applied, with its virtual time) that the
 * invariant checkers read; the protocol only sees the `Participant` interface.
 *
 * @since 0.1.0
 */
import { Duration, Effect } from "effect"
import {
  type BranchContext,
  type BranchState,
  type CommitAck,
  type InDoubtBranch,
  OnePhaseResult,
  type Participant,
  type RollbackAck,
  Vote
} from "@accord/core/Participant"
import { BranchCallError } from "@accord/core/TransactionError"
import type { BranchName, Gid, TransactionId } from "@accord/core/TransactionId"
import * as SimNetwork from "./SimNetwork.js"

/**
 * What a branch does: how long its work takes and how it votes.
 * @since 0.1.0
 */
export interface Work {
  readonly vote: "yes" | "no" | "readOnly"
  readonly millis: number
}

/**
 * One applied commit, as the ghost history records it.
 * @since 0.1.0
 */
export interface Applied {
  readonly gid: Gid
  readonly txId: TransactionId
  readonly at: number
  readonly onePhase: boolean
}

/**
 * A simulated participant with its node (crash/restart) and ghost history.
 * @since 0.1.0
 */
export interface SimParticipant {
  readonly participant: Participant<Work>
  readonly node: SimNetwork.Node
  /** Every commit applied, in order (a gid twice means work applied twice). */
  readonly applied: ReadonlyArray<Applied>
  /** Prepared branches now (durable). */
  readonly prepared: ReadonlyMap<Gid, InDoubtBranch>
}

/**
 * `PgParticipant`'s default `markerGrace`: `forget` leaves younger markers alone.
 * @since 0.1.0
 */
export const defaultMarkerGrace = Duration.minutes(5)

/**
 * Makes a simulated participant named `name`; `now` reads virtual time. Like `PgParticipant`,
 * `forget` removes only markers older than `markerGrace`: a marker is what refuses a late duplicate
 * of a committed branch's prepare (and answers a late commit `Committed`), so removing it at once
 * let a prepare delivered again after recovery completed the transaction prepare the branch anew,
 * and a duplicated commit apply it twice.
 * @since 0.1.0
 */
export const make = (
  name: string,
  now: () => number,
  markerGrace: Duration.DurationInput = defaultMarkerGrace
): SimParticipant => {
  const graceMillis = Duration.toMillis(Duration.decode(markerGrace))
  const prepared = new Map<Gid, InDoubtBranch>()
  /** Commit markers by gid, with the virtual time each was written. */
  const markers = new Map<Gid, number>()
  const applied: Array<Applied> = []
  const node = SimNetwork.node(name)
  const crashed = (ctx: BranchContext, phase: "prepare" | "onePhaseCommit") =>
    new BranchCallError({
      txId: ctx.txId,
      branch: ctx.branch,
      phase,
      reason: "participant crashed during the work",
      inDoubt: true
    })
  const runWork = (ctx: BranchContext, work: Work, phase: "prepare" | "onePhaseCommit") =>
    Effect.gen(function* () {
      const epoch = node.epoch
      yield* Effect.sleep(Duration.millis(work.millis))
      // The branch's open transaction dies with the process: nothing of it remains.
      if (node.epoch !== epoch || !node.up) return yield* crashed(ctx, phase)
    })
  const participant: Participant<Work> = {
    name: name as BranchName,
    verify: Effect.void,
    prepare: (ctx, work) =>
      Effect.gen(function* () {
        yield* runWork(ctx, work, "prepare")
        if (work.vote === "no") return Vote.No({ reason: "check constraint", sqlState: "23514" })
        if (work.vote === "readOnly") return Vote.ReadOnly()
        // The marker row's key (and the server-wide gid) makes a second prepare of a gid fail.
        if (prepared.has(ctx.gid) || markers.has(ctx.gid)) {
          return Vote.No({ reason: `gid ${ctx.gid} exists`, sqlState: "42710" })
        }
        prepared.set(ctx.gid, { gid: ctx.gid, txId: ctx.txId, branch: ctx.branch, preparedAt: now() })
        return Vote.Prepared()
      }),
    commitOnePhase: (ctx, work) =>
      Effect.gen(function* () {
        yield* runWork(ctx, work, "onePhaseCommit")
        if (work.vote === "no") return OnePhaseResult.No({ reason: "check constraint", sqlState: "23514" })
        if (work.vote === "readOnly") return OnePhaseResult.ReadOnly()
        if (markers.has(ctx.gid)) return OnePhaseResult.No({ reason: "duplicate marker", sqlState: "23505" })
        markers.set(ctx.gid, now())
        applied.push({ gid: ctx.gid, txId: ctx.txId, at: now(), onePhase: true })
        return OnePhaseResult.Committed()
      }),
    commit: (ctx) =>
      Effect.sync((): CommitAck => {
        if (prepared.delete(ctx.gid)) {
          markers.set(ctx.gid, now())
          applied.push({ gid: ctx.gid, txId: ctx.txId, at: now(), onePhase: false })
          return "Committed"
        }
        return markers.has(ctx.gid) ? "Committed" : "HeuristicRollback"
      }),
    rollback: (ctx) =>
      Effect.sync((): RollbackAck => {
        if (prepared.delete(ctx.gid)) return "RolledBack"
        return markers.has(ctx.gid) ? "HeuristicCommit" : "RolledBack"
      }),
    state: (ctx) =>
      Effect.sync(
        (): BranchState =>
          prepared.has(ctx.gid) ? "prepared" : markers.has(ctx.gid) ? "committed" : "aborted"
      ),
    inDoubt: Effect.sync(() => [...prepared.values()]),
    forget: (ctxs) =>
      Effect.sync(() => {
        for (const ctx of ctxs) {
          const written = markers.get(ctx.gid)
          if (written !== undefined && now() - written >= graceMillis) markers.delete(ctx.gid)
        }
      })
  }
  return { participant, node, applied, prepared }
}
