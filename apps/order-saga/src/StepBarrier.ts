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
 * Runs `work` in one local transaction with the barrier row. An error thrown by `work` rolls the
 * barrier row back with it and is rethrown as it was thrown (so a business refusal stays one).
 * @since 0.1.0
 */
export const run = async <A>(
  db: Db,
  key: { readonly gid: string; readonly branch: string; readonly op: BarrierOp },
  work: (tx: Queryable) => Promise<A>
): Promise<BarrierOutcome<A>> => {
  let thrown: { readonly error: unknown } | undefined
  try {
    return await Barrier.runPromise(connectionOf(db), key, async (session) => {
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
  } catch (error) {
    throw thrown === undefined ? error : thrown.error
  }
}

/**
 * Creates the barrier table.
 * @since 0.1.0
 */
export const migrate = (db: Db): Promise<void> => Barrier.migrate(connectionOf(db))
