import { Effect } from "effect"
import * as TransactionLog from "../../src/TransactionLog.js"

/** Runs `body` with a fresh in-memory transaction log, provided and handed to it for inspection. */
export const withLog = <A, E>(
  body: (
    log: Effect.Effect.Success<typeof TransactionLog.makeMemory>
  ) => Effect.Effect<A, E, TransactionLog.TransactionLog>
) =>
  Effect.gen(function* () {
    const log = yield* TransactionLog.makeMemory
    return yield* body(log).pipe(Effect.provideService(TransactionLog.TransactionLog, log))
  })
