/**
 * Invariant checkers. Each takes what a run left behind (the ghost histories of participants
 * and log, the outcomes callers were told) and returns the violations it finds, in words.
 *
 * @since 0.1.0
 */
import type { TransactionId } from "@accord/core/TransactionId"

/**
 * What the caller of one atomic-commit transaction was told.
 * - `Committed`, `CommitPending`, `Aborted`: the protocol's outcomes.
 * - `Blocked`: (3PC quorum) the coordinator could not decide; the members' agents will.
 * - `Failed`: an error (in-doubt one-phase commit, log unavailable): nothing is promised.
 * - `Crashed`: the coordinator died first: nothing is promised.
 * @since 0.1.0
 */
export type Told = "Committed" | "CommitPending" | "Aborted" | "Blocked" | "Failed" | "Crashed"

/**
 * One branch of a transaction as the checker sees it after the run settled.
 * @since 0.1.0
 */
export interface BranchFinal {
  readonly branch: string
  /** The branch's work changes data (so it must follow the decision). */
  readonly writes: boolean
  /** How many times its work was applied (committed). */
  readonly applied: number
  /** Still prepared after recovery settled. */
  readonly prepared: boolean
}

/**
 * A transaction after the run settled.
 * @since 0.1.0
 */
export interface TransactionFinal {
  readonly txId: TransactionId
  readonly told: Told
  readonly branches: ReadonlyArray<BranchFinal>
  /** Every decision value the log handed out for it, in order (more than one: it changed). */
  readonly decisions: ReadonlyArray<string>
  /** The decision the log holds after the run settled (2PC), if any. */
  readonly durable?: "commit" | "abort"
}

/**
 * Atomic commit: atomicity, exactly-once application, outcome matches state, decision stable,
 * nothing left prepared.
 * @since 0.1.0
 */
export const atomicCommit = (tx: TransactionFinal): Array<string> => {
  const out: Array<string> = []
  const id = tx.txId.slice(-6)
  const writers = tx.branches.filter((b) => b.writes)
  const committed = writers.filter((b) => b.applied > 0)
  const notCommitted = writers.filter((b) => b.applied === 0)
  if (committed.length > 0 && notCommitted.length > 0) {
    out.push(
      `atomicity: tx ${id} committed on ${committed.map((b) => b.branch).join(",")} but not on ${notCommitted.map((b) => b.branch).join(",")}`
    )
  }
  for (const b of tx.branches) {
    if (b.applied > 1) out.push(`exactly-once: tx ${id} branch ${b.branch} applied ${b.applied} times`)
    if (!b.writes && b.applied > 0) out.push(`read-only: tx ${id} branch ${b.branch} applied work`)
    if (b.prepared) out.push(`settled: tx ${id} branch ${b.branch} still prepared after recovery`)
  }
  if ((tx.told === "Committed" || tx.told === "CommitPending") && notCommitted.length > 0) {
    out.push(
      `outcome: tx ${id} told ${tx.told} but ${notCommitted.map((b) => b.branch).join(",")} not committed`
    )
  }
  if (tx.told === "Aborted" && committed.length > 0) {
    out.push(`outcome: tx ${id} told Aborted but ${committed.map((b) => b.branch).join(",")} committed`)
  }
  if (tx.durable === "commit" && notCommitted.length > 0) {
    out.push(
      `decision: tx ${id} has a durable commit decision but ${notCommitted.map((b) => b.branch).join(",")} not committed`
    )
  }
  if (tx.durable === "abort" && committed.length > 0) {
    out.push(
      `decision: tx ${id} has a durable abort decision but ${committed.map((b) => b.branch).join(",")} committed`
    )
  }
  if (tx.decisions.length > 1) out.push(`decision: tx ${id} decision changed: ${tx.decisions.join(" -> ")}`)
  return out
}
