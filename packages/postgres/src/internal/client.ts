/**
 * The little that Accord needs from a driver, over postgres.js and PGlite alike: a parameterised
 * query returning rows, and a multi-statement script (simple protocol).
 */
import type { PGlite } from "@electric-sql/pglite"
import { Duration, Effect } from "effect"
import type postgres from "postgres"
import { type PgFailure, toFailure } from "./errors.js"

/** A connection pool (postgres.js) or a PGlite instance, seen as Promises. */
export interface Client {
  readonly kind: "postgres" | "pglite"
  readonly query: <T>(text: string, params?: ReadonlyArray<unknown>) => Promise<Array<T>>
  readonly script: (text: string) => Promise<void>
}

/** A postgres.js pool as a `Client`. */
export const fromPostgres = (sql: postgres.Sql): Client => ({
  kind: "postgres",
  query: async <T>(text: string, params?: ReadonlyArray<unknown>) =>
    (await sql.unsafe(text, (params ?? []) as Array<postgres.ParameterOrJSON<never>>)) as unknown as Array<T>,
  script: async (text) => {
    await sql.unsafe(text).simple()
  }
})

/** A PGlite instance as a `Client`. */
export const fromPglite = (db: PGlite): Client => ({
  kind: "pglite",
  query: async <T>(text: string, params?: ReadonlyArray<unknown>) =>
    (await db.query<T>(text, params as Array<unknown> | undefined)).rows,
  script: async (text) => {
    await db.exec(text)
  }
})

/** postgres.js's debug-free cancel: a pending query can be cancelled by the server. */
interface Cancellable {
  readonly cancel?: () => void
}

/**
 * Runs one statement as an Effect. When interrupted, the statement is cancelled on the server
 * (postgres.js) and the interruption waits, up to `cancelTimeout`, for the statement to settle, so
 * the connection is not reused while a statement is still running on it.
 */
export const statement = <T>(
  client: Client | postgres.Sql,
  text: string,
  params: ReadonlyArray<unknown> | undefined,
  cancelTimeout: Duration.Duration
): Effect.Effect<Array<T>, PgFailure> =>
  Effect.async<Array<T>, PgFailure>((resume) => {
    let pending: Promise<Array<T>> & Cancellable
    if (typeof client === "function") {
      pending = client.unsafe(
        text,
        (params ?? []) as Array<postgres.ParameterOrJSON<never>>
      ) as unknown as Promise<Array<T>> & Cancellable
    } else {
      pending = client.query<T>(text, params)
    }
    pending.then(
      (rows) => resume(Effect.succeed(rows)),
      (error: unknown) => resume(Effect.fail(toFailure(error)))
    )
    return Effect.promise(() => {
      pending.cancel?.()
      return pending.then(
        () => undefined,
        () => undefined
      )
    }).pipe(Effect.timeout(cancelTimeout), Effect.ignore)
  })

/** The default bound on waiting for a cancelled statement to settle. */
export const defaultCancelTimeout = Duration.seconds(5)
