/**
 * Deliberately broken protocol variants, built from the core's own pieces composed in the wrong
 * order. They exist to prove that the simulator's checkers can fail: a checker that never
 * catches these is itself broken. Never use them for anything else.
 *
 * @since 0.1.0
 */
import { Clock, Duration, Effect, Option } from "effect"
import { type AnyBranch, Vote } from "@accord/core/Participant"
import * as Saga from "@accord/core/Saga"
import type { BranchCallError, InvalidTransactionError, LogError } from "@accord/core/TransactionError"
import * as TransactionId from "@accord/core/TransactionId"
import { TransactionLog } from "@accord/core/TransactionLog"
import * as TwoPhaseCommit from "@accord/core/TwoPhaseCommit"

/**
 * 2PC that runs phase 2 *before* forcing its commit decision: it prepares every branch, commits
 * them one by one, and only then writes the decision. A crash between two commits leaves a
 * committed branch beside a prepared one that recovery, finding no decision, presumes aborted.
 * @since 0.1.0
 */
export const commitBeforeDecision = (
  branches: ReadonlyArray<AnyBranch>,
  options: TwoPhaseCommit.Options = {}
): Effect.Effect<
  TwoPhaseCommit.Outcome,
  InvalidTransactionError | BranchCallError | LogError,
  TransactionLog
> =>
  Effect.gen(function* () {
    const txId =
      options.txId === undefined
        ? yield* TransactionId.make
        : yield* TransactionId.parseTransactionId(options.txId)
    const resolved = yield* TwoPhaseCommit.validate(branches, txId, options.namespace)
    const callTimeout = Duration.decode(options.callTimeout ?? TwoPhaseCommit.defaults.callTimeout)
    const prepareTimeout = Duration.decode(options.prepareTimeout ?? TwoPhaseCommit.defaults.prepareTimeout)
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
    const refused = votes.findIndex((v) => v._tag === "No")
    if (refused >= 0) {
      yield* Effect.forEach(
        resolved,
        (r) => r.participant.rollback(r.ctx).pipe(Effect.timeout(callTimeout), Effect.ignore),
        {
          discard: true
        }
      )
      return TwoPhaseCommit.Outcome.Aborted({ txId, votes: branchVotes, reason: "a branch refused" })
    }
    const writers = resolved.filter((_, i) => votes[i]!._tag === "Prepared")
    // The bug: phase 2 first, one branch after the other...
    for (const r of writers) {
      yield* r.participant.commit(r.ctx).pipe(Effect.timeout(callTimeout), Effect.option)
    }
    // ...and the decision last.
    const log = yield* TransactionLog
    yield* log.decide({
      txId,
      decision: "commit",
      branches: writers.map((r) => ({ branch: r.ctx.branch, gid: r.ctx.gid })),
      decidedAt: yield* Clock.currentTimeMillis
    })
    yield* log.complete(txId)
    return TwoPhaseCommit.Outcome.Committed({ txId, votes: branchVotes, onePhase: false, heuristics: [] })
  })

/**
 * A saga runner that compensates in *forward* order (the first step undone first), built from a
 * core `Saga` definition's own steps. It retries as the steps say, but keeps no log.
 * @since 0.1.0
 */
export const sagaCompensatingForward = <R>(
  saga: Saga.Saga<R>,
  options: { readonly sagaId: string }
): Effect.Effect<Saga.Outcome, never, R> =>
  Effect.gen(function* () {
    const started: Array<Saga.Step<unknown, R>> = []
    const outputs: Record<string, unknown> = {}
    for (const unit of saga.units) {
      const steps = unit._tag === "Step" ? [unit] : unit.steps
      for (const step of steps) {
        started.push(step)
        const ctx = {
          sagaId: options.sagaId,
          sagaName: saga.name,
          step: step.name,
          key: `${options.sagaId}/${step.name}`,
          input: {},
          outputs,
          attempt: 1
        }
        const result = yield* Effect.either(
          step.action(ctx).pipe(
            Effect.timeoutFail({
              duration: step.timeout,
              onTimeout: () => new Saga.StepInDoubtError({ reason: "timeout" })
            }),
            Effect.retry({ schedule: step.retry, while: (e) => e._tag !== "StepBusinessError" })
          )
        )
        if (result._tag === "Right") {
          outputs[step.name] = result.right
          continue
        }
        // The bug: compensations in the order the steps ran.
        const undone: Array<string> = []
        for (const done of started) {
          if (done.compensation === undefined) continue
          const output = done.name in outputs ? Option.some(outputs[done.name]) : Option.none()
          const compensated = yield* Effect.either(
            done
              .compensation({ ...ctx, step: done.name, key: `${options.sagaId}/${done.name}`, output })
              .pipe(
                Effect.timeoutFail({
                  duration: done.compensationTimeout,
                  onTimeout: () => new Saga.StepInDoubtError({ reason: "timeout" })
                }),
                Effect.retry(done.compensationRetry)
              )
          )
          if (compensated._tag === "Left") {
            return Saga.Outcome.Stuck({
              sagaId: options.sagaId,
              step: done.name,
              phase: "compensation",
              cause: compensated.left.message
            })
          }
          undone.push(done.name)
        }
        return Saga.Outcome.Compensated({
          sagaId: options.sagaId,
          cause: { step: step.name, kind: "business", reason: result.left.message, inDoubt: false },
          undone
        })
      }
    }
    return Saga.Outcome.Completed({ sagaId: options.sagaId, outputs })
  })
