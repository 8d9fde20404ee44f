/**
 * Runs an Effect as a Promise that rejects with the typed error itself (`_tag`, its fields), not
 * Effect's `FiberFailure` around it, for the Promise forms of the API.
 */
import { Cause, Effect, Exit } from "effect"

export const runTyped = <A, E>(
  effect: Effect.Effect<A, E>,
  options?: { readonly signal?: AbortSignal }
): Promise<A> =>
  Effect.runPromiseExit(effect, options).then((exit) => {
    if (Exit.isSuccess(exit)) return exit.value
    throw Cause.squash(exit.cause)
  })
