import { Effect } from "effect"
import { type BranchCallError, type Phase, participantDefect } from "../TransactionError.js"

/**
 * A participant's call, suspended: a method that throws instead of returning an Effect, or an
 * Effect that dies (a participant's bug), is a failed call, in doubt (`participantDefect`), that
 * the protocol or recovery handles like any failed call.
 */
export const guardedCall = <A, E>(
  ctx: { readonly txId: string; readonly branch: string },
  phase: Phase,
  call: () => Effect.Effect<A, E>
): Effect.Effect<A, E | BranchCallError> =>
  Effect.catchAllDefect(Effect.suspend(call), (defect) => Effect.fail(participantDefect(ctx, phase, defect)))
