import { Either, Effect } from "effect"
import {
  type BranchContext,
  type CommitAck,
  defaults,
  type Direct,
  fromStarted,
  OnePhaseResult,
  type Participant,
  type Started,
  Vote
} from "../../src/Participant.js"
import { BranchCallError } from "../../src/TransactionError.js"
import type * as TransactionId from "../../src/TransactionId.js"

/** What a test scripts a Promise participant to do. Delays are real milliseconds. */
export interface Behaviour {
  readonly prepareMs?: number
  /** `fail`: the call fails (the branch may be prepared); `throw`: `direct.prepare` itself throws (a bug). */
  readonly prepare?: "yes" | "no" | "fail" | "throw"
  /** Direct commit calls that fail (in doubt) before one succeeds. */
  readonly commitFailures?: number
  /** How long an abandoned call takes to clean up. */
  readonly cleanUpMs?: number
}

/**
 * A participant whose calls are Promises underneath, with `direct` calls and Effect twins built
 * over them (as PgParticipant does). `calls` records `prepare:<branch>` for every started call and
 * `effect:prepare:<branch>` when the coordinator went through the Effect twin; `abandoned` and
 * `cleanedUp` record the interruptions and when their clean-up finished.
 */
export const make = (name: string, behaviour: Behaviour = {}) => {
  const calls: Array<string> = []
  const abandoned: Array<string> = []
  const cleanedUp: Array<string> = []
  let commitFailures = behaviour.commitFailures ?? 0

  /** A call that answers after `ms`, or, abandoned, cleans up for `cleanUpMs` and settles. */
  const call = <A>(
    label: string,
    ms: number,
    answer: () => Either.Either<A, BranchCallError>
  ): Started<A, BranchCallError> => {
    calls.push(label)
    let abandon: () => void = () => undefined
    const result = new Promise<Either.Either<A, BranchCallError>>((resolve) => {
      const timer = setTimeout(() => resolve(answer()), ms)
      abandon = () => {
        clearTimeout(timer)
        abandoned.push(label)
        setTimeout(() => {
          cleanedUp.push(label)
          resolve(Either.left(failure(label, "abandoned")))
        }, behaviour.cleanUpMs ?? 0)
      }
    })
    return { result, abandon: () => abandon() }
  }

  const failure = (label: string, reason: string) =>
    new BranchCallError({
      txId: "",
      branch: name,
      phase: "prepare",
      reason: `${label}: ${reason}`,
      inDoubt: true
    })

  const direct: Omit<Direct<unknown>, "twins"> = {
    prepare: (ctx: BranchContext) => {
      if (behaviour.prepare === "throw") throw new Error(`bug in ${ctx.branch}`)
      return call<Vote>(`prepare:${ctx.branch}`, behaviour.prepareMs ?? 0, () => {
        switch (behaviour.prepare) {
          case "no":
            return Either.right(Vote.No({ reason: "insufficient funds" }))
          case "fail":
            return Either.left(failure(`prepare:${ctx.branch}`, "connection lost"))
          default:
            return Either.right(Vote.Prepared())
        }
      })
    },
    commitOnePhase: (ctx: BranchContext) =>
      call(`commitOnePhase:${ctx.branch}`, 0, () => Either.right(OnePhaseResult.Committed())),
    commit: (ctx: BranchContext) =>
      call<CommitAck>(`commit:${ctx.branch}`, 0, () => {
        if (commitFailures > 0) {
          commitFailures--
          return Either.left(failure(`commit:${ctx.branch}`, "connection lost"))
        }
        return Either.right("Committed")
      })
  }

  const twin =
    <Args extends ReadonlyArray<unknown>, A>(
      label: string,
      start: (...args: Args) => Started<A, BranchCallError>
    ) =>
    (...args: Args) =>
      Effect.suspend(() => {
        calls.push(`effect:${label}:${(args[0] as BranchContext).branch}`)
        return fromStarted(() => start(...args))
      })

  const twins = {
    prepare: twin("prepare", direct.prepare),
    commitOnePhase: twin("commitOnePhase", direct.commitOnePhase),
    commit: twin("commit", direct.commit)
  }
  const participant: Participant<unknown> = {
    name: name as TransactionId.BranchName,
    ...defaults,
    ...twins,
    rollback: (ctx) =>
      Effect.sync(() => {
        calls.push(`rollback:${ctx.branch}`)
        return "RolledBack" as const
      }),
    state: () => Effect.succeed("aborted" as const),
    direct: { ...direct, twins }
  }
  return { participant, calls, abandoned, cleanedUp }
}
