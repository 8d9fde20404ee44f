/**
 * How a transfer is committed: `2pc` through `TwoPhaseCommit.run`, `3pc` through
 * `ThreePhaseCommit` with Postgres three-phase participants.
 *
 * @since 0.1.0
 */
import { Participant, ThreePhaseCommit, TransactionLog, TwoPhaseCommit } from "@accord/core"
import { Effect } from "effect"
import type { DemoError } from "./DemoError.js"
import type { Environment } from "./Environment.js"
import type { Execute, Result } from "./Workload.js"

const fromOutcome = (outcome: TwoPhaseCommit.Outcome): Result =>
  TwoPhaseCommit.Outcome.$match(outcome, {
    Committed: (): Result => ({ _tag: "Committed" }),
    CommitPending: (): Result => ({ _tag: "CommitPending" }),
    Aborted: ({ reason, votes }): Result => {
      const no = votes.find((v) => v.vote._tag === "No")
      const sqlState = no !== undefined && no.vote._tag === "No" ? no.vote.sqlState : undefined
      return { _tag: "Aborted", reason, sqlState }
    }
  })

/**
 * Two-phase commit, presumed abort, with the environment's coordinator log.
 * @since 0.1.0
 */
export const twoPhase =
  (env: Environment): Execute =>
  (txId, work) =>
    TwoPhaseCommit.run(
      [
        Participant.branch(env.banks[0].participant, work.a),
        Participant.branch(env.banks[1].participant, work.b)
      ],
      { txId }
    ).pipe(Effect.map(fromOutcome), Effect.provideService(TransactionLog.TransactionLog, env.log))

const fromThreePhase = (outcome: ThreePhaseCommit.Outcome): Result =>
  ThreePhaseCommit.Outcome.$match(outcome, {
    Committed: (): Result => ({ _tag: "Committed" }),
    CommitPending: (): Result => ({ _tag: "CommitPending" }),
    Aborted: ({ reason, votes }): Result => {
      const no = votes.find((v) => v.vote._tag === "No")
      const sqlState = no !== undefined && no.vote._tag === "No" ? no.vote.sqlState : undefined
      return { _tag: "Aborted", reason, sqlState }
    },
    // Quorum mode only (the demo runs classic): undecided, resolved by recovery.
    Blocked: ({ reason }): Result => ({ _tag: "Undecided", reason })
  })

/**
 * Three-phase commit, classic mode: no coordinator log; the members' precommit rows carry the
 * decision, and recovery (or the members' termination protocol) finishes what a crash left.
 * @since 0.1.0
 */
export const threePhase = (env: Environment): Effect.Effect<Execute, DemoError> =>
  Effect.succeed((txId, work) =>
    ThreePhaseCommit.run(
      [
        ThreePhaseCommit.branch(env.banks[0].threePhase, work.a),
        ThreePhaseCommit.branch(env.banks[1].threePhase, work.b)
      ],
      { txId }
    ).pipe(Effect.map(fromThreePhase))
  )
