/**
 * The services' view of the barrier (`Barrier` from @accord/postgres): run a step's local work in one
 * transaction with its barrier row, so that a duplicate delivery is skipped, a compensation before its
 * action is a null compensation, and a late action after it is refused.
 *
 * This module only adapts it to the demo's `Db` handle and keeps the services' business refusals
 * (thrown inside the work, which rolls back with its barrier row) distinguishable from failures.
 *
 * @since 0.1.0
 */
import { Barrier } from "@accord/postgres"
import { Cause, Effect, Exit } from "effect"
import type { Db, Queryable } from "./Database.js"

/**
 * Which side of a step a request is.
 * @since 0.1.0
 */
export type BarrierOp = Barrier.Op

/**
 * What the barrier did with a request.
 * @since 0.1.0
 */
export type BarrierOutcome<A> = Barrier.Result<A>

/**
 * The barrier table (one per service database): one row per (saga, step, op) that took effect;
 * `reason` is 'action', 'compensation' or 'null-compensation'.
 * @since 0.1.0
 */
export const barrierTable = "accord_saga_barrier"

const connectionOf = (db: Db): Barrier.Connection =>
  db.driver.kind === "pglite" ? db.driver.db : db.driver.sql

/**
 * The barrier's transaction may have committed: the connection was lost after the work ran (while
 * the barrier's statements or the COMMIT were on the wire). The step may have taken effect; only a
 * later delivery (answered by the barrier) can tell.
 * @since 0.1.0
 */
export class InDoubtError extends Error {
  constructor(readonly reason: string) {
    super(`in doubt: ${reason}`)
  }
}

/**
 * Runs `work` in one local transaction with the barrier row. An error thrown by `work` rolls the
 * barrier row back with it and is rethrown as it was thrown (so a business refusal stays one): the
 * COMMIT was never sent. Any other failure is the barrier's `BarrierWorkError`: rethrown as it is
 * when the database answered it (rolled back), as `InDoubtError` when the connection was lost (the
 * COMMIT may have landed).
 * @since 0.1.0
 */
export const run = async <A>(
  db: Db,
  key: { readonly gid: string; readonly branch: string; readonly op: BarrierOp },
  work: (tx: Queryable) => Promise<A>
): Promise<BarrierOutcome<A>> => {
  let thrown: { readonly error: unknown } | undefined
  const exit = await Effect.runPromiseExit(
    Barrier.run(connectionOf(db), key, async (session) => {
      try {
        return await work({
          query: <T>(text: string, params?: ReadonlyArray<unknown>) =>
            session.query<T>(text, params === undefined ? [] : [...params])
        })
      } catch (error) {
        thrown = { error }
        throw error
      }
    })
  )
  if (Exit.isSuccess(exit)) return exit.value
  if (thrown !== undefined) throw thrown.error
  const error = Cause.squash(exit.cause)
  if (error instanceof Barrier.BarrierWorkError && error.connectionLost) throw new InDoubtError(error.reason)
  throw error
}

/**
 * Creates the barrier table.
 * @since 0.1.0
 */
export const migrate = (db: Db): Promise<void> => Barrier.migrate(connectionOf(db))
