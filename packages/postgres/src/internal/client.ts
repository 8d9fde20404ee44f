/**
 * The little that Accord needs from a driver, over postgres.js and PGlite alike: a parameterised
 * query returning rows, and a multi-statement script (simple protocol).
 */
import type { PGlite, Results } from "@electric-sql/pglite"
import { Participant } from "@accord/core"
import { Duration, Effect, type Either, identity } from "effect"
import type postgres from "postgres"
import type { Result } from "../Pipeline.js"
import { type PgFailure, toFailure } from "./errors.js"

/** A connection pool (postgres.js) or a PGlite instance, seen as Promises. */
export interface Client {
  readonly kind: "postgres" | "pglite"
  readonly query: <T>(text: string, params?: ReadonlyArray<unknown>) => Promise<Array<T>>
  /** `query`, with the driver's cancel when it has one (postgres.js). */
  readonly send: <T>(text: string, params?: ReadonlyArray<unknown>) => Promise<Array<T>> & Cancellable
  /** The driver's own pending query (postgres.js: cancellable, see `runScript`). */
  readonly script: (text: string) => Promise<unknown> & Cancellable
  /**
   * Cancels a statement `send` returned, where that is safe on this connection; true when it asked.
   * See `cancelOnPool` and `cancelIfRunning`.
   */
  readonly cancel: (pending: Cancellable) => boolean
  /**
   * On a reserved connection (`sql.reserve()`) only: destroys it (`destroyReserved`), for a
   * statement given up on. A pool's connections are postgres.js's, and PGlite has none.
   */
  readonly destroy: (() => void) | undefined
}

/**
 * Whether parameterised statements go as named prepared statements: yes unless the pool was made
 * with `prepare: false` (pgbouncer in transaction mode). An unnamed parameterised statement costs
 * postgres.js two round trips (describe, then bind and execute); a named one is described once per
 * connection.
 */
export const usesPreparedStatements = (sql: postgres.Sql): boolean =>
  (sql as { options?: { prepare?: boolean } }).options?.prepare !== false

/**
 * The result transforms a postgres.js pool applies (`postgres.camel`, `postgres.toCamel`, a `row`
 * transform, ...), by kind: empty when none. They rename result columns and, for `value`, the keys
 * inside JSON values, which Accord's logs read back by name and as stored.
 */
export const resultTransforms = (sql: postgres.Sql): ReadonlyArray<"column" | "value" | "row"> => {
  const transform = (
    sql as unknown as { options?: { transform?: Record<string, { from?: unknown } | undefined> } }
  ).options?.transform
  return (["column", "value", "row"] as const).filter((kind) => typeof transform?.[kind]?.from === "function")
}

/**
 * Why a log refuses `sql` (`undefined` when it has no result transforms): `what` names the log.
 */
export const transformRefusal = (sql: postgres.Sql, what: string): string | undefined => {
  const kinds = resultTransforms(sql)
  return kinds.length === 0
    ? undefined
    : `${what} needs a postgres.js pool without result transforms; this one has ${kinds.join(", ")} transforms ` +
        "(postgres.camel or the like), which rename the log's columns and the keys inside the JSON it keeps " +
        "(saga inputs and outputs would come back changed). Give the log a pool of its own, without `transform`."
}

/** Sends one statement on a pool or a reserved connection, prepared when `prepare` (see above). */
export const sendOn = (
  sql: postgres.Sql,
  prepare: boolean,
  text: string,
  params: ReadonlyArray<unknown> | undefined
) => {
  const args = (params ?? []) as Array<postgres.ParameterOrJSON<never>>
  return args.length > 0 && prepare ? sql.unsafe(text, args, { prepare: true }) : sql.unsafe(text, args)
}

/** A postgres.js pool as a `Client`. */
export const fromPostgres = (sql: postgres.Sql): Client => {
  const prepare = usesPreparedStatements(sql)
  return {
    kind: "postgres",
    query: async <T>(text: string, params?: ReadonlyArray<unknown>) =>
      (await sendOn(sql, prepare, text, params)) as unknown as Array<T>,
    send: <T>(text: string, params?: ReadonlyArray<unknown>) =>
      sendOn(sql, prepare, text, params) as unknown as Promise<Array<T>> & Cancellable,
    script: (text) => sql.unsafe(text).simple() as unknown as Promise<unknown> & Cancellable,
    cancel: cancelRule(sql),
    destroy: isReserved(sql) ? () => void destroyReserved(sql) : undefined
  }
}

/** A PGlite instance as a `Client`. */
export const fromPglite = (db: PGlite): Client => ({
  kind: "pglite",
  query: async <T>(text: string, params?: ReadonlyArray<unknown>) =>
    (await db.query<T>(text, params as Array<unknown> | undefined)).rows,
  send: <T>(text: string, params?: ReadonlyArray<unknown>) =>
    db.query<T>(text, params as Array<unknown> | undefined).then((r) => r.rows),
  script: (text) => db.exec(text),
  // PGlite runs one statement at a time in this process; a statement cannot be cancelled.
  cancel: () => false,
  destroy: undefined
})

/** A postgres.js pool or a PGlite instance as a `Client`. */
export const clientOf = (conn: postgres.Sql | PGlite): Client =>
  typeof conn === "function" ? fromPostgres(conn) : fromPglite(conn)

/** postgres.js's debug-free cancel: a pending query can be cancelled by the server. */
export interface Cancellable {
  readonly cancel?: () => void
}

/**
 * Cancels `pending` on the server only if it is the statement its connection is running (postgres.js
 * marks it `active`); true when it did. postgres.js never settles a cancelled statement that is
 * written but waiting its turn (it sends the cancel request when that turn comes and moves on), and
 * drops a cancelled one still queued behind a statement being described without sending the next:
 * either leaves its caller waiting for ever. The statements behind the cancelled one fail in the
 * transaction it aborted.
 */
export const cancelIfRunning = (pending: Cancellable): boolean => {
  if ((pending as { readonly active?: boolean }).active !== true) return false
  pending.cancel?.()
  return true
}

/**
 * Cancels `pending`, a statement sent through a pool, when it is the statement its connection is
 * running with nothing written behind it, or when it is still waiting in the pool's own queue (not
 * yet written to a connection: postgres.js takes it out of the queue and fails it with 57014); true
 * when it did.
 *
 * A cancel request cancels whatever its session runs when the request arrives, and the statement
 * may end first. The patched driver then writes nothing more on the connection until the server has
 * taken the request (`test/driverCancelHold.test.ts`), but a statement already written behind it
 * (a pool pipelines onto busy connections once all of them are busy) would be hit: another caller's.
 * So such a statement is not cancelled, nor one that is itself written and waiting behind another
 * (unpatched, postgres.js gave it the answer of the statement behind it,
 * `test/driverPipelineCancel.test.ts`). A statement left alone runs and settles by itself; it is
 * autocommitted, so it holds nothing open.
 */
export const cancelOnPool = (pending: Cancellable): boolean => {
  const q = pending as {
    readonly state?: unknown
    readonly active?: boolean
    readonly writtenBehind?: () => number
  }
  if (q.state != null && (q.active !== true || (q.writtenBehind?.() ?? 0) > 0)) return false
  pending.cancel?.()
  return true
}

/** Whether `sql` is a reserved connection (`sql.reserve()`), not a pool. */
const isReserved = (sql: postgres.Sql): boolean =>
  typeof (sql as { release?: unknown }).release === "function"

/** The cancel rule for statements sent on `sql`: `cancelIfRunning` on a reserved connection, else `cancelOnPool`. */
const cancelRule = (sql: postgres.Sql): ((pending: Cancellable) => boolean) =>
  isReserved(sql) ? cancelIfRunning : cancelOnPool

/** The pid of the session `query` was written to (postgres.js sets its `state`); `undefined` if not written yet. */
export const pidOf = (query: unknown): number | undefined => {
  const pid = (query as { readonly state?: { readonly pid?: unknown } | null }).state?.pid
  return typeof pid === "number" ? pid : undefined
}

/**
 * Terminates the session `pid` through the pool `sql`, waiting at most `ms`: a statement that could
 * not be written in time (no free connection) is dropped, so that it never runs later, when the pid
 * may be another session's. (A written one is left alone: cancelling it would open a connection to a
 * server that may not answer.) The caller then destroys its reserved connection on this side.
 */
export const terminateBackend = async (
  sql: postgres.Sql,
  pid: number | undefined,
  ms: number
): Promise<void> => {
  if (pid === undefined) return
  const terminate = sql.unsafe("select pg_terminate_backend($1)", [pid])
  const terminated = await Promise.race([settle(terminate), delay(ms)])
  if (terminated === "timeout" && pidOf(terminate) === undefined) terminate.cancel()
}

/**
 * The row count of a postgres.js answer (an Array carrying the command's `count`): rows affected by
 * INSERT, UPDATE, DELETE or MERGE, or returned.
 */
export const countOf = (rows: ReadonlyArray<unknown>): number =>
  (rows as { readonly count?: number | null }).count ?? rows.length

/** A PGlite answer as a `Pipeline.Result`: rows affected, or returned when more. */
export const pgliteResult = (r: Results<Record<string, unknown>>): Result => ({
  rows: r.rows,
  count: Math.max(r.affectedRows ?? 0, r.rows.length)
})

/** A settled Promise, without throwing: the value or the failure as `PgFailure`. */
export type Settled<A> =
  | { readonly ok: true; readonly value: A }
  | { readonly ok: false; readonly failure: PgFailure }

/** Settles `p` into a `Settled`. */
export const settle = <A>(p: Promise<A>): Promise<Settled<A>> =>
  p.then(
    (value) => ({ ok: true, value }),
    (error: unknown) => ({ ok: false, failure: toFailure(error) })
  )

/** The `send` a statement body is given: each statement settled, never thrown, and cancellable. */
export type Send = <T>(text: string, params?: ReadonlyArray<unknown>) => Promise<Settled<Array<T>>>

/**
 * A call that can be abandoned once. Listeners run when it is, at once if it already was: plain
 * callbacks, not a Promise per call, because every branch and log call of every transaction makes
 * one and most are never abandoned.
 */
export class Abandonment {
  abandoned = false
  private listeners: Array<() => void> | undefined
  listen(listener: () => void): void {
    if (this.abandoned) listener()
    else if (this.listeners === undefined) this.listeners = [listener]
    else this.listeners.push(listener)
  }
  abandon(): void {
    if (this.abandoned) return
    this.abandoned = true
    const listeners = this.listeners
    this.listeners = undefined
    if (listeners !== undefined) for (const listener of listeners) listener()
  }
}

/**
 * `p`, unless `abandonment` happens and `ms` more pass before `p` settles: then `gaveUp()` (its value,
 * or its throw as a rejection). One timer, set only on abandonment and cleared when `p` settles.
 */
export const unlessAbandoned = <A, B>(
  p: Promise<A>,
  abandonment: Abandonment,
  ms: number,
  gaveUp: () => B
): Promise<A | B> =>
  new Promise<A | B>((resolve, reject) => {
    let settled = false
    let timer: ReturnType<typeof setTimeout> | undefined
    const stop = () => {
      settled = true
      if (timer !== undefined) clearTimeout(timer)
    }
    p.then(
      (value) => {
        stop()
        resolve(value)
      },
      (error: unknown) => {
        stop()
        reject(error)
      }
    )
    abandonment.listen(() => {
      if (settled) return
      timer = setTimeout(() => {
        if (settled) return
        settled = true
        try {
          resolve(gaveUp())
        } catch (error) {
          reject(error)
        }
      }, timerMillis(ms))
    })
  })

/**
 * `done`, unless abandoned and `ms` more passed first: then a rejection, as a started call's
 * result does when its clean-up outlives the bound (its caller has stopped listening).
 */
export const unlessGivenUp = <A>(
  done: Promise<A>,
  abandonment: Abandonment,
  ms: number,
  what: string
): Promise<A> =>
  unlessAbandoned(done, abandonment, ms, () => {
    throw new Error(`${what} still running after ${ms} ms`)
  })

/**
 * Statements over `client` as ONE started call (`Participant.Started`): `body` sends them through
 * the `send` it is given and resolves with the outcome. Abandoned, the statements in flight are
 * cancelled where `client.cancel` finds it safe (running, or not yet written) and the result settles
 * once the body has, or rejects `cancelMs` later.
 */
export const startVia = <A, E>(
  client: Client,
  cancelMs: number,
  body: (send: Send) => Promise<Either.Either<A, E>>
): Participant.Started<A, E> => {
  const inflight: Array<Cancellable> = []
  const abandonment = new Abandonment()
  abandonment.listen(() => {
    for (const q of inflight) client.cancel(q)
  })
  const done = body(<T>(text: string, params?: ReadonlyArray<unknown>) => {
    const sent = client.send<T>(text, params)
    inflight.push(sent)
    return settle(sent)
  })
  return {
    result: unlessGivenUp(done, abandonment, cancelMs, "abandoned statements"),
    abandon: () => abandonment.abandon()
  }
}

/**
 * `startVia` as ONE Effect, in place of one `Effect.async` per statement: on a small machine each
 * costs as much CPU as a round trip. Interrupted, it cancels and waits as `startVia` abandons.
 */
export const viaPromise = <A, E>(
  client: Client,
  cancelMs: number,
  body: (send: Send) => Promise<Either.Either<A, E>>
): Effect.Effect<A, E> => Participant.fromStarted(() => startVia(client, cancelMs, body))

/** Node's largest timer delay; a longer one would fire after 1 ms. */
const MAX_TIMER_MS = 2_147_483_647

/** `ms` as a timer delay (at most about 24.8 days: Node's timer limit). */
const timerMillis = (ms: number) => Math.min(Math.max(0, ms), MAX_TIMER_MS)

/** Resolves with "timeout" after `ms` (at most about 24.8 days: Node's timer limit). */
export const delay = (ms: number): Promise<"timeout"> =>
  new Promise((resolve) => setTimeout(() => resolve("timeout"), timerMillis(ms)))

/**
 * Whether `p` settles within `ms`: one timer, cleared when it does. For a canceler (the function an
 * `Effect.async` returns): it runs uninterruptibly, so an `Effect.timeout` inside it cannot stop the
 * wait it bounds (the timeout interrupts the waiting fiber, and that interruption waits for the
 * Promise), only a bound in the Promise itself can.
 */
export const settlesWithin = (p: Promise<unknown>, ms: number): Promise<boolean> =>
  new Promise<boolean>((resolve) => {
    const timer = setTimeout(() => resolve(false), timerMillis(ms))
    const done = () => {
      clearTimeout(timer)
      resolve(true)
    }
    p.then(done, done)
  })

/**
 * Closes a reserved connection (`sql.reserve()`) at once, through `destroy()` from Accord's
 * postgres.js patch: what was sent on it fails with CONNECTION_CLOSED and the pool reconnects it as
 * a new session. False for a pool (postgres.js owns its connections) or an unpatched driver.
 */
export const destroyReserved = (sql: postgres.Sql): boolean => {
  const reserved = sql as { destroy?: unknown }
  if (!isReserved(sql) || typeof reserved.destroy !== "function") return false
  ;(reserved.destroy as () => void)()
  return true
}

/**
 * What `statement` and `runScript` share: `send()`'s answer as an Effect, its failure through
 * `failed`. Interrupted, it is cancelled where `connection.cancel` finds that safe, and the
 * interruption waits at most `cancelTimeout` for it to settle (`wait` "cancelled": only for one it
 * cancelled, or one on a reserved connection); not settled by then, a reserved connection is
 * destroyed (`connection.destroy`), so that it is never reused while the statement may still run.
 */
const sendCancellable = <A, E>(
  send: () => Promise<A> & Cancellable,
  failed: (error: unknown) => E,
  connection: Pick<Client, "cancel" | "destroy">,
  cancelTimeout: Duration.Duration,
  wait: "always" | "cancelled"
): Effect.Effect<A, E> =>
  Effect.async<A, E>((resume) => {
    const pending = send()
    pending.then(
      (value) => resume(Effect.succeed(value)),
      (error: unknown) => resume(Effect.fail(failed(error)))
    )
    return Effect.promise(async () => {
      const cancelled = connection.cancel(pending)
      if (!cancelled && wait === "cancelled" && connection.destroy === undefined) return
      const settled = await settlesWithin(pending, Duration.toMillis(cancelTimeout))
      if (!settled) connection.destroy?.()
    })
  })

/**
 * Runs one statement as an Effect. When interrupted, the statement is cancelled (postgres.js: when
 * it is running, or, on a pool, not yet written; never one written and waiting behind another, see
 * `cancelOnPool`) and the interruption waits, at most `cancelTimeout`, for the statement to settle.
 * Then it gives up: the interruption returns even when the connection stopped answering (a network
 * partition: the cancel request may reach the server, the statement's answer never comes). Given
 * up on a reserved connection, that connection is destroyed, so that it is never reused while the
 * statement may still be running on it (a reserved `Sql`, or a `Client` over one: until 2026-12-07
 * only the former was). On a pool's connection (a `Client` over a pool, or a pool `Sql`) the
 * driver owns the connection and cannot close it: the statement is autocommitted, so no
 * transaction stays open there, but the connection stays busy with it until the server or the
 * network answers, and postgres.js may pipeline later statements behind it when every other
 * connection of the pool is busy too (they then wait as long; each caller's own interruption is
 * bounded the same way). See docs/postgres.md.
 */
export const statement = <T>(
  client: Client | postgres.Sql,
  text: string,
  params: ReadonlyArray<unknown> | undefined,
  cancelTimeout: Duration.Duration
): Effect.Effect<Array<T>, PgFailure> =>
  typeof client === "function"
    ? sendCancellable(
        // `sendOn`, as `send` does: only the driver's own pending query can be cancelled.
        () =>
          sendOn(client, usesPreparedStatements(client), text, params) as unknown as Promise<Array<T>> &
            Cancellable,
        toFailure,
        { cancel: cancelRule(client), destroy: () => void destroyReserved(client) },
        cancelTimeout,
        "always"
      )
    : sendCancellable(() => client.send<T>(text, params), toFailure, client, cancelTimeout, "always")

/**
 * Runs a multi-statement script (a migration) as an Effect. When interrupted, the script is
 * cancelled on the server as `statement` cancels a statement, and the interruption waits at most
 * `cancelTimeout` for it to settle. Before (until 2026-12-07), an interrupted migration went on
 * running: one waiting on a lock held for good kept its pool connection, and each retry of the
 * set-up (the facade's `logSetupTimeout`) queued one more, until the pool had none left. A script
 * that was not cancelled is not waited for (it goes on either way: PGlite cannot cancel one), except
 * on a reserved connection, which, given up on, is destroyed as `statement` destroys it: until
 * 2026-12-07 it was handed back with the script maybe still running on it, and what its owner sent
 * next waited behind that script.
 */
export const runScript = (
  client: Client,
  text: string,
  cancelTimeout: Duration.Duration
): Effect.Effect<void, unknown> =>
  // Fails with the driver's own error: callers read it with `toFailure`, `Migrations` hands it on.
  Effect.asVoid(sendCancellable(() => client.script(text), identity, client, cancelTimeout, "cancelled"))

/**
 * Wraps `query`'s own `resolve` and `reject` (the ones postgres.js calls with its outcome) so that
 * `onSettled` is told first, before the promise settles and so before any of its callbacks run.
 */
const settledFirst = (
  query: Cancellable & Promise<unknown> & { resolve?: unknown; reject?: unknown },
  onSettled: (query: Cancellable & Promise<unknown>, failed: boolean, error: unknown) => void
): void => {
  const { resolve, reject } = query
  if (typeof resolve !== "function" || typeof reject !== "function") return
  query.resolve = (value: unknown) => {
    onSettled(query, false, undefined)
    return (resolve as (value: unknown) => unknown)(value)
  }
  query.reject = (error: unknown) => {
    onSettled(query, true, error)
    return (reject as (error: unknown) => unknown)(error)
  }
}

/** A work's `sql.release()` or `sql.destroy()`, refused at once (see `guardedSql`). */
const refuseToGiveBack = (method: string) => (): never => {
  throw new Error(
    `sql.${method}() is refused on a work's connection: Accord ends the transaction and gives the connection back itself; given back now, the pool's other users would run their statements inside this open transaction`
  )
}

/**
 * `conn` as a work sees it (`BranchSession.sql`): `onRun(query)` is called for each statement it
 * runs (tagged template, `unsafe`, `file`) just before postgres.js executes it, and may refuse it
 * (an `Error`: the statement fails with it, nothing is sent). The caller tracks the statement there
 * (to cancel it). Fragments (a query nested in another) are never run, so never seen.
 *
 * `onSettled`, when given, is told when a statement `onRun` let through settles (failed or not,
 * with its error), before the work's own callbacks on it run (see `settledFirst`).
 *
 * `notify`, when given, replaces `conn.notify`: postgres.js sends a reserved connection's
 * `notify(channel, payload)` through its pool (`select pg_notify(...)` on another connection,
 * committed at once), outside the transaction of the connection it was called on.
 *
 * `release()` and `destroy()` (a reserved connection's own, not in the `Sql` type a work is given)
 * are refused: the caller ends the transaction and gives the connection back. Released by a work,
 * the connection went back to the pool with its transaction open, and the next statements of the
 * pool's other users ran inside it: their autocommitted writes answered as done, then rolled back
 * with the work's transaction.
 */
export const guardedSql = (
  conn: postgres.Sql,
  onRun: (query: Cancellable & Promise<unknown>) => Error | undefined,
  notify?: (channel: string, payload: unknown) => Promise<unknown>,
  onSettled?: (query: Cancellable & Promise<unknown>, failed: boolean, error: unknown) => void
) => {
  const guard = (made: unknown): unknown => {
    const query = made as { handler?: unknown; reject?: unknown }
    if (
      !(made instanceof Promise) ||
      typeof query.handler !== "function" ||
      typeof query.reject !== "function"
    )
      return made
    const run = query.handler as (q: unknown) => unknown
    const reject = query.reject as (error: unknown) => void
    query.handler = (q: unknown) => {
      const pending = q as Cancellable & Promise<unknown> & { resolve?: unknown; reject?: unknown }
      const refused = onRun(pending)
      if (refused !== undefined) return reject(refused)
      // Told settled as postgres.js settles it, before the callbacks of the work run: a callback
      // given to `.then` before the query ran (`` sql`...`.then(() => ...) ``) is registered before
      // any the caller can add in `onRun`, so it ran first and saw the query still pending.
      if (onSettled !== undefined) settledFirst(pending, onSettled)
      return run(q)
    }
    return made
  }
  return new Proxy(conn, {
    apply: (target, thisArg, args) => guard(Reflect.apply(target, thisArg, args)),
    get: (target, key, receiver) => {
      if (key === "notify" && notify !== undefined) return notify
      if (key === "release" || key === "destroy") return refuseToGiveBack(key)
      const value: unknown = Reflect.get(target, key, receiver)
      return (key === "unsafe" || key === "file") && typeof value === "function"
        ? (...args: Array<unknown>) => guard(Reflect.apply(value, target, args))
        : value
    }
  }) as postgres.Sql
}

/** Whether the character code `c` may continue an SQL identifier (so `$` there starts no dollar quote). */
const isIdentifierChar = (c: number): boolean =>
  (c >= 48 && c <= 57) || (c >= 65 && c <= 90) || (c >= 97 && c <= 122) || c === 95 || c === 36 || c > 127

/** Whether the character code `c` may start an SQL identifier or keyword. */
const isIdentifierStart = (c: number): boolean =>
  (c >= 65 && c <= 90) || (c >= 97 && c <= 122) || c === 95 || c > 127

/** Whether `text` holds, from `at`, the `length` characters of `word` (lower case), in any case. */
const isWord = (text: string, at: number, length: number, word: string): boolean => {
  if (length !== word.length) return false
  for (let k = 0; k < length; k++) if ((text.charCodeAt(at + k) | 32) !== word.charCodeAt(k)) return false
  return true
}

const DOLLAR_TAG = /\$(?:[A-Za-z_\u0080-\uffff][A-Za-z0-9_\u0080-\uffff]*)?\$/y

/**
 * What may separate two words of a statement, as a regular expression's source: whitespace or a
 * comment (`--` to the end of the line, or `/* *\/`, not nested). For the patterns given to
 * `statementStartingWith`: `rollback /* undo *\/ to savepoint a` is `rollback to savepoint a`.
 * Every alternative starts with its own character and the block comment is the classic unambiguous
 * form, so matching is linear: the first version allowed one level of nesting with overlapping
 * alternatives, and `rollback /* /* a *\/ ... *\/` with a few dozen inner comments backtracked for
 * seconds, on the event loop. A nested comment between `ROLLBACK` and `TO` is read as a plain
 * `ROLLBACK` (a needless No vote, never a missed one). A `--` comment ends at a carriage return as
 * well as a line feed, as PostgreSQL ends it: read to the next line feed, `prepare --\rtransaction
 * 'x'` was not seen as the PREPARE TRANSACTION that PostgreSQL runs.
 */
export const SQL_GAP = String.raw`(?:\s|--[^\n\r]*(?:[\n\r]|$)|/\*[^*]*\*+(?:[^*/][^*]*\*+)*/)`

/** Runs of `SQL_GAP`, to write a matched statement start as its words (`PREPARE TRANSACTION`). */
const SQL_GAPS = new RegExp(`${SQL_GAP}+`, "g")

/** `match` (of `statementStartingWith`) as its words, upper case, one space apart. */
export const statementWords = (match: string): string => match.replace(SQL_GAPS, " ").toUpperCase()

/** Where the comments and whitespace from `at` end in `text` (`--` to a line end, nested `/* *\/`). */
const skipGap = (text: string, at: number): number => {
  const n = text.length
  let i = at
  while (i < n) {
    const c = text.charCodeAt(i)
    if (c === 32 || (c >= 9 && c <= 13)) i++
    else if (c === 45 && text.charCodeAt(i + 1) === 45) {
      // -- to the end of the line: a line feed or a carriage return, as PostgreSQL reads it
      i += 2
      while (i < n && text.charCodeAt(i) !== 10 && text.charCodeAt(i) !== 13) i++
    } else if (c === 47 && text.charCodeAt(i + 1) === 42) {
      // /* ... */, nested as PostgreSQL nests them
      let depth = 1
      i += 2
      while (i < n && depth > 0) {
        if (text.charCodeAt(i) === 47 && text.charCodeAt(i + 1) === 42) {
          depth++
          i += 2
        } else if (text.charCodeAt(i) === 42 && text.charCodeAt(i + 1) === 47) {
          depth--
          i += 2
        } else i++
      }
    } else break
  }
  return i
}

/** Where the word (identifier or keyword) at `at` ends: `at` if none starts there. */
const wordEnd = (text: string, at: number): number => {
  if (at >= text.length || !isIdentifierStart(text.charCodeAt(at))) return at
  let j = at + 1
  while (j < text.length && isIdentifierChar(text.charCodeAt(j))) j++
  return j
}

/** Where the word at `at` ends if it is `word` (lower case), in any case; else -1. */
const wordIs = (text: string, at: number, word: string): number => {
  const end = wordEnd(text, at)
  return isWord(text, at, end - at, word) ? end : -1
}

/**
 * Where `CREATE [OR REPLACE] FUNCTION|PROCEDURE` at `at` ends (a statement that may hold a
 * SQL-standard body, `BEGIN ATOMIC ... END`, PostgreSQL 14), else -1. Read word by word, with any
 * comments between (nested ones too, which a regular expression cannot match: such a body went
 * unread, its `;` taken as statement ends, its END as a COMMIT: a needless No).
 */
const routineHeadEnd = (text: string, at: number): number => {
  const created = wordIs(text, at, "create")
  if (created < 0) return -1
  let next = skipGap(text, created)
  const or = wordIs(text, next, "or")
  if (or >= 0) {
    const replaced = wordIs(text, skipGap(text, or), "replace")
    if (replaced < 0) return -1
    next = skipGap(text, replaced)
  }
  const fn = wordIs(text, next, "function")
  return fn >= 0 ? fn : wordIs(text, next, "procedure")
}

/**
 * The first statement of the SQL text `text` (one statement, or several separated by `;`, as the
 * simple protocol runs them) that starts with `head` (a sticky regular expression; `SQL_GAP` between
 * its words): its match, or `undefined`. Quoted strings (`'...'`, `E'...'`, `"..."`,
 * `$tag$...$tag$`) and comments (`--`, nested `/* *\/`) are skipped, so a `;` or a keyword inside
 * them starts nothing: a function body or a DO block that says COMMIT is not read as a COMMIT of the
 * session. So is a SQL-standard body (`CREATE FUNCTION|PROCEDURE ... BEGIN ATOMIC ...; ...; END`):
 * its `;` end no statement. A scan of the text, without allocation; a text without `;` has one
 * statement, and only its start is tested.
 *
 * The body ends where PostgreSQL's grammar ends it: at the first `END` right after one of its `;`
 * (or right after `ATOMIC`, an empty body). Each statement of a body ends with `;` and the body's END
 * follows one (`BEGIN ATOMIC RETURN 1 END` is a syntax error), while no other END can follow a `;`:
 * a CASE's END follows an expression, and so does an `end` that is a column label (`select 1 end`,
 * no AS needed for a keyword since PostgreSQL 14), and PostgreSQL takes an END after a body's `;` as
 * the body's end even where a statement END could begin (`...; end transaction; end` is a syntax
 * error at TRANSACTION). The first version counted CASE and END instead, and a column label threw the
 * count off: `begin atomic select 1 case; end; insert ...; commit` left it one END short, and the
 * COMMIT after the body, which PostgreSQL runs, was read as part of the body (a missed COMMIT: the
 * branch voted ReadOnly with its row committed outside the coordinator); `select 1 end` closed it
 * early (a needless No).
 */
export const statementStartingWith = (text: string, head: RegExp): string | undefined => {
  const found = scanWhole(text, head, false)
  // `standard_conforming_strings = off` (set by the work, by its role or database, or by the
  // server's configuration) makes a backslash escape a quote in '...' too: `'a\'; commit; --'` is
  // then one statement with no COMMIT, and `'a\''; commit; --'` a string, then a COMMIT that the
  // standard reading puts inside a string. The session's setting is not known here, so a text with
  // a backslash is read both ways, and a statement found either way counts (a needless No at
  // worst, never a missed COMMIT). Until 2026-12-07 only the standard reading was made.
  return found !== undefined || text.indexOf("\\") < 0 ? found : scanWhole(text, head, true)
}

/** `statementStartingWith` under one reading of '...' strings (`backslashes`: as with `standard_conforming_strings = off`). */
const scanWhole = (text: string, head: RegExp, backslashes: boolean): string | undefined => {
  const found = scan(text, head, 0, true, backslashes)
  // A body that never ends: PostgreSQL refuses such a text whole (a syntax error, before any of
  // its statements runs), unless it read the text otherwise than this scan did. Unsure, then, where
  // the body ended: every `;` after its start is read as one that may start a statement (a
  // needless No at worst, never a missed COMMIT).
  return typeof found === "number"
    ? (scan(text, head, found, false, backslashes) as string | undefined)
    : found
}

/**
 * `statementStartingWith` from `from` (0, or the start of a body that never ended, with `bodies`
 * false: no body is then read). A number: a body opened there and the text ended inside it.
 * `backslashes`: a backslash escapes the next character in every '...' string, not only in E'...'.
 */
const scan = (
  text: string,
  head: RegExp,
  from: number,
  bodies: boolean,
  backslashes: boolean
): string | number | undefined => {
  const n = text.length
  let atStart = from === 0
  // Inside CREATE FUNCTION|PROCEDURE: its words are read, for a body `BEGIN ATOMIC ... END`.
  let routine = false
  let parens = 0
  /** Inside a body `BEGIN ATOMIC ... END`. */
  let body = false
  /** In a body, the last token was its `;` or ATOMIC: an END now ends the body. */
  let endMayFollow = false
  /** Where the body began (after its ATOMIC). */
  let bodyFrom = 0
  let i = from
  while (i < n) {
    const c = text.charCodeAt(i)
    // Only a blank, `-` or `/` can start a gap: other characters skip the call (on every token).
    if (c === 32 || (c >= 9 && c <= 13) || c === 45 || c === 47) {
      const gapEnd = skipGap(text, i)
      if (gapEnd !== i) {
        i = gapEnd
        continue
      }
    }
    if (c === 59) {
      if (body) endMayFollow = true
      else atStart = true
      i++
      continue
    }
    if (atStart) {
      atStart = false
      head.lastIndex = i
      const found = head.exec(text)
      if (found !== null) return found[0]
      // The rest of this statement only matters for where it ends.
      if (text.indexOf(";", i) < 0) return undefined
      // `c`: most statements are not CREATE, and are not read for it.
      const headEnd = bodies && (c | 32) === 99 ? routineHeadEnd(text, i) : -1
      routine = headEnd >= 0
      parens = 0
      if (routine) {
        i = headEnd
        continue
      }
    }
    if (body) {
      const ends =
        endMayFollow &&
        (c | 32) === 101 &&
        isWord(text, i, 3, "end") &&
        (i + 3 >= n || !isIdentifierChar(text.charCodeAt(i + 3)))
      endMayFollow = false
      if (ends) {
        // The statement goes on to its `;` (nothing of a routine after its body opens another).
        body = false
        routine = false
        i += 3
        continue
      }
    }
    if (c === 39) {
      // '...' ('' inside), or E'...' (backslash escapes too)
      const escapes =
        backslashes ||
        (i > 0 &&
          (text.charCodeAt(i - 1) | 32) === 101 &&
          (i < 2 || !isIdentifierChar(text.charCodeAt(i - 2))))
      i++
      while (i < n) {
        const d = text.charCodeAt(i)
        if (escapes && d === 92) i += 2
        else if (d === 39) {
          if (text.charCodeAt(i + 1) === 39) i += 2
          else break
        } else i++
      }
      i++
      continue
    }
    if (c === 34) {
      // "identifier" ("" inside)
      i++
      while (i < n) {
        if (text.charCodeAt(i) === 34) {
          if (text.charCodeAt(i + 1) === 34) i += 2
          else break
        } else i++
      }
      i++
      continue
    }
    if (c === 36 && (i === 0 || !isIdentifierChar(text.charCodeAt(i - 1)))) {
      DOLLAR_TAG.lastIndex = i
      const tag = DOLLAR_TAG.exec(text)
      if (tag !== null) {
        const close = text.indexOf(tag[0], i + tag[0].length)
        i = close < 0 ? n : close + tag[0].length
        continue
      }
    }
    if (isIdentifierStart(c) && (i === 0 || !isIdentifierChar(text.charCodeAt(i - 1)))) {
      let j = i + 1
      while (j < n && isIdentifierChar(text.charCodeAt(j))) j++
      if (routine && !body && parens === 0 && isWord(text, i, j - i, "begin")) {
        const atomic = wordIs(text, skipGap(text, j), "atomic")
        if (atomic >= 0) {
          body = true
          endMayFollow = true
          j = atomic
          bodyFrom = j
        }
      }
      i = j
      continue
    }
    if (routine && !body) {
      if (c === 40) parens++
      else if (c === 41) parens--
    }
    i++
  }
  return body ? bodyFrom : undefined
}

/** The default bound on waiting for a cancelled statement to settle. */
export const defaultCancelTimeout = Duration.seconds(5)
