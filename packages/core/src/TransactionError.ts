/**
 * The typed errors of Accord's protocols. Each carries what an operator needs to act on it.
 *
 * Families (README.md, "What the outcomes mean"): invalid input (nothing was sent), configuration, a branch call
 * that failed (transient or in doubt), log failures, and timeouts.
 *
 * @since 0.1.0
 */
import { Schema } from "effect"

/**
 * The protocol phase an error or a span belongs to.
 * @since 0.1.0
 */
export const Phase = Schema.Literal(
  "verify",
  "begin",
  "prepare",
  "precommit",
  "preabort",
  "commit",
  "rollback",
  "onePhaseCommit",
  "state",
  "recover",
  "decide",
  "complete",
  "action",
  "compensation"
)
/** @since 0.1.0 */
export type Phase = typeof Phase.Type

/**
 * The input of a transaction was refused before anything was sent to a participant:
 * empty operations, unknown or duplicate participants, a hostile gid or name.
 * @since 0.1.0
 */
export class InvalidTransactionError extends Schema.TaggedError<InvalidTransactionError>()(
  "InvalidTransactionError",
  { reason: Schema.String }
) {
  override get message(): string {
    return this.reason
  }
}

/**
 * A participant's environment cannot take part in the protocol (for example
 * `max_prepared_transactions = 0`). The message says how to fix it.
 * @since 0.1.0
 */
export class ConfigurationError extends Schema.TaggedError<ConfigurationError>()("ConfigurationError", {
  participant: Schema.String,
  reason: Schema.String,
  fix: Schema.String
}) {
  override get message(): string {
    return `${this.participant}: ${this.reason}. Fix: ${this.fix}`
  }
}

/**
 * A call to a branch failed. `inDoubt` is true when the participant may have acted
 * (connection lost after the request was sent): such a call is retried or resolved by
 * recovery, never treated as a definite failure.
 * @since 0.1.0
 */
export class BranchCallError extends Schema.TaggedError<BranchCallError>()("BranchCallError", {
  txId: Schema.String,
  branch: Schema.String,
  phase: Phase,
  reason: Schema.String,
  inDoubt: Schema.Boolean,
  sqlState: Schema.optional(Schema.String)
}) {
  override get message(): string {
    // A call outside any transaction (a participant's verify) has no txId to name.
    const within = this.txId === "" ? "" : ` in ${this.txId}`
    return `${this.phase} of branch ${this.branch}${within} failed${this.inDoubt ? " (in doubt)" : ""}: ${this.reason}`
  }
}

/**
 * A participant's defect (a bug, or a rejected Promise under `Effect.promise`) in a call to branch
 * `ctx`, as the failed call, in doubt, that a coordinator handles like any other failed call.
 * @since 0.1.0
 */
export const participantDefect = (
  ctx: { readonly txId: string; readonly branch: string },
  phase: Phase,
  defect: unknown
): BranchCallError =>
  new BranchCallError({
    txId: ctx.txId,
    branch: ctx.branch,
    phase,
    reason: `the participant failed unexpectedly: ${defect instanceof Error ? defect.message : String(defect)}`,
    inDoubt: true
  })

/**
 * The coordinator (or saga) log could not be read or written.
 * @since 0.1.0
 */
export class LogError extends Schema.TaggedError<LogError>()("LogError", {
  operation: Schema.String,
  txId: Schema.optional(Schema.String),
  reason: Schema.String
}) {
  override get message(): string {
    return `log ${this.operation}${this.txId ? ` for ${this.txId}` : ""} failed: ${this.reason}`
  }
}

/**
 * A wait exceeded its configured bound.
 * @since 0.1.0
 */
export class TimeoutError extends Schema.TaggedError<TimeoutError>()("TimeoutError", {
  txId: Schema.String,
  branch: Schema.optional(Schema.String),
  phase: Phase,
  millis: Schema.Number
}) {
  override get message(): string {
    return `${this.phase}${this.branch ? ` of branch ${this.branch}` : ""} in ${this.txId} timed out after ${this.millis} ms`
  }
}
