/**
 * The sub-transaction barrier (after DTM): makes a saga step's local Postgres work idempotent and
 * safe against reordering, by inserting a barrier row `(gid, branch, op)` in the *same* local
 * transaction as the work.
 *
 * - action: insert `(gid, branch, 'action')`. Already there → the work is skipped: `Duplicate`
 *   (a retry or a redelivery), or `Refused` if the row was written by a null compensation.
 * - compensation: insert `(gid, branch, 'action')` marked `null-compensation` first. If that
 *   insert succeeds, the action never ran: nothing to undo (`NullCompensation`), and the row now
 *   refuses the late action (no hanging reservation). Then insert `(gid, branch, 'compensation')`;
 *   already there → `Duplicate`. Otherwise the compensation's work runs: `Applied`.
 * - The work and the barrier rows commit or roll back together: a failing work rolls its barrier
 *   row back and surfaces as `BarrierWorkError` with the SQLSTATE, never swallowed; the step can
 *   be retried.
 * - **A compensation's work that fails is retried** (`toCompensationStepError`, on the step's
 *   `compensationRetry`, default 10 more attempts), and only its SQL rolls back: whatever it did
 *   outside the database before failing (an HTTP call, a message, a file) is done again at every
 *   attempt. A compensation's work must be idempotent outside the database (an idempotency key
 *   from `ctx.key`), or keep its non-SQL effects out of the barrier's work (an outbox row in it,
 *   sent after). Retries off: `compensationRetry: Schedule.stop` on the step
 *   (`SagaOrchestrator`: `compensationRetries: 0`); the first failure then makes the saga Stuck.
 *   (Since 2026-12-07; before, the first failure did, and a lock timeout left the saga Stuck.)
 * - The work must not end the barrier's transaction (COMMIT, ROLLBACK) and then fail: what it wrote
 *   before may be committed with the row, so the run is a definite failure, SQLSTATE 25000
 *   (`endedByWork`), unless the server says the transaction rolled back at the work's last
 *   statement, sent alone (its COMMIT refused: nothing kept, read by its SQLSTATE). Nor delete or
 *   re-key barrier rows: such a run is refused and rolled back, SQLSTATE 0A000 (`refuseRowGone`;
 *   so is a run whose row another session, a purge with too short a retention, deleted).
 * - The barrier's own result rows are read by position (`column`): a postgres.js pool with a
 *   column transform (`postgres.camel`, `postgres.pascal`) may be shared with the application.
 * - What the work returned is kept in the row (jsonb) and handed back on a duplicate, so a retry sees
 *   the value the first run saw. With a `result` schema it is encoded before commit and decoded on a
 *   duplicate (Dates, bigints, ... come back as they were). Without one it must be plain JSON (it
 *   survives `JSON.parse(JSON.stringify(v))` unchanged); anything else is refused *before commit*
 *   with `BarrierResultRefusedError`, so the work rolls back with its row and nothing is half-done.
 * - The barrier table is found once per pool or PGlite instance (by `migrate`, or by the first run
 *   on it) through the connection's `search_path`, and named with its schema from then on: a work
 *   that runs `SET LOCAL search_path = tenant` cannot make the statements that follow it in the
 *   transaction (the result's update) miss the table or write a tenant schema's own copy of it.
 * - On postgres.js the work's `sql.notify()` is refused (the run fails with `BarrierWorkError`,
 *   SQLSTATE 0A000, and rolls back, even if the work caught the refusal): postgres.js would send it
 *   through the pool, outside the step's transaction, at once. Notify after the step, or write an
 *   outbox row in it.
 * - The commit is durable (`synchronous_commit` raised to `on` for the barrier's transaction when
 *   the session's or database's setting is `off`; any other setting kept): a barrier row lost in a crash after the saga log recorded its step would
 *   let a repeated action apply again, or a late action apply after its null compensation.
 * Concurrent action and compensation of one branch serialise on the primary key of the action row.
 * An interrupted run (a step's timeout) cancels the statement the server is running for it
 * (postgres.js; through `query`, `statement`, `execute` or the tagged templates of `sql` alike) and
 * fails any later one, so its transaction rolls back instead of holding its connection and barrier
 * row. On postgres.js a run has a connection of its own (`sql.reserve()`); one that was sent a cancel
 * request is closed after the rollback, never given back to the pool, where the late request could
 * cancel another caller's statement. Its BEGIN and COMMIT are not cancelled, but given 5 s after the
 * interruption: a connection that has not answered by then is closed and its session terminated.
 *
 * Use gid = saga id and branch = step name: `fromKey(ctx.key)`. `sagaAction` / `sagaCompensation`
 * wrap this for saga steps.
 *
 * @since 0.1.0
 */
import type { PGlite, Transaction } from "@electric-sql/pglite"
import type { CompensationContext, StepContext } from "@accord/core/Saga"
import {
  isDefiniteCompensationSqlState,
  isTransientSqlState,
  StepBusinessError,
  type StepError,
  StepInDoubtError,
  StepTransientError
} from "@accord/core/Saga"
import * as Json from "@accord/core/Json"
import { Cause, Duration, Effect, Exit, Schema } from "effect"
import type postgres from "postgres"
import {
  Abandonment,
  type Cancellable,
  cancelIfRunning,
  clientOf,
  countOf,
  defaultCancelTimeout,
  delay,
  destroyReserved,
  guardedSql,
  pgliteResult,
  pidOf,
  SQL_GAP,
  statementStartingWith,
  terminateBackend,
  unlessAbandoned
} from "./internal/client.js"
import { toFailure } from "./internal/errors.js"
import { ENDING_STATEMENT, TABLE_SCHEMA_SQL, tableName } from "./internal/pgBranch.js"
import { runTyped } from "./internal/promise.js"
import { checkRetention, deleteInBatches, type Retention } from "./internal/retention.js"
import type { BranchSession } from "./PgParticipant.js"
import { barrierDdl } from "./SagaSchema.js"

/**
 * What the work receives: queries on the local transaction (the same shape as 2PC's `BranchSession`).
 * @since 0.1.0
 */
export type BarrierSession = BranchSession

/**
 * A postgres.js pool or a PGlite instance.
 * @since 0.1.0
 */
export type Connection = postgres.Sql | PGlite

/**
 * Which half of a step.
 * @since 0.1.0
 */
export type Op = "action" | "compensation"

/**
 * The barrier's verdict.
 * - `Applied`: the work ran and committed with its barrier row.
 * - `Duplicate`: this op already ran for this branch; the work was skipped. `value` is what the
 *   first run's work returned: decoded with the `result` schema when one is given (then `D` is
 *   `A | undefined`), else the stored JSON (`D` is `unknown`: rows written before results were
 *   checked may hold a lossy copy). `undefined` when the first run returned `undefined`, and for a
 *   compensation repeated after a null compensation (no work ever ran). Rows written before
 *   `undefined` was kept apart from `null` give `null` for a void result.
 * - `NullCompensation`: a compensation found no action: nothing to undo; the late action will be refused.
 * - `Refused`: an action arrived after its (null) compensation; the work did not run.
 * @since 0.1.0
 */
export type Result<A, D = unknown> =
  | { readonly _tag: "Applied"; readonly value: A }
  | { readonly _tag: "Duplicate"; readonly value: D }
  | { readonly _tag: "NullCompensation" }
  | { readonly _tag: "Refused"; readonly reason: string }

/**
 * Options of `run` / `sagaAction`.
 * @since 0.1.0
 */
export interface RunOptions<A, I> {
  /**
   * How the work's result is kept for a duplicate: encoded with this schema inside the transaction,
   * before commit (its encoded side must be plain JSON: `Schema.Date`, `Schema.BigInt`, not
   * `Schema.DateFromSelf`), and decoded on a duplicate. Without it the result must be plain JSON.
   */
  readonly result: Schema.Schema<A, I, never>
}

/**
 * The work (or the barrier's own statements) failed; the local transaction, barrier row included,
 * was rolled back. `connectionLost`: the commit may or may not have happened (in doubt).
 * @since 0.1.0
 */
export class BarrierWorkError extends Schema.TaggedError<BarrierWorkError>()("BarrierWorkError", {
  gid: Schema.String,
  branch: Schema.String,
  op: Schema.Literal("action", "compensation"),
  reason: Schema.String,
  sqlState: Schema.optional(Schema.String),
  connectionLost: Schema.Boolean
}) {
  override get message(): string {
    return `${this.op} of ${this.gid}/${this.branch} failed: ${this.reason}`
  }
}

/**
 * The work's result could not be kept faithfully for a duplicate, so the barrier refused it before
 * commit: the work and its barrier row were rolled back, nothing took effect. Without a `result`
 * schema the value is not plain JSON (`reason` says where: a Date, a bigint, a Map, an `undefined`
 * field, NaN, ...); with one, the schema rejected the value or encoded it to something that is not
 * plain JSON. Retrying the same code gives the same refusal: pass a result schema or return plain JSON.
 * @since 0.1.0
 */
export class BarrierResultRefusedError extends Schema.TaggedError<BarrierResultRefusedError>()(
  "BarrierResultRefusedError",
  {
    gid: Schema.String,
    branch: Schema.String,
    op: Schema.Literal("action", "compensation"),
    reason: Schema.String
  }
) {
  override get message(): string {
    return `${this.op} of ${this.gid}/${this.branch} refused before commit (the work was rolled back): ${this.reason}; it would not come back the same on a duplicate. Pass a result schema (the \`result\` option, e.g. Schema.Date, Schema.BigInt) or return plain JSON`
  }
}

/**
 * A duplicate: the op had already committed, but its stored result does not decode with the given
 * `result` schema (the schema changed, or the row was written without it).
 * @since 0.1.0
 */
export class BarrierResultDecodeError extends Schema.TaggedError<BarrierResultDecodeError>()(
  "BarrierResultDecodeError",
  {
    gid: Schema.String,
    branch: Schema.String,
    op: Schema.Literal("action", "compensation"),
    reason: Schema.String
  }
) {
  override get message(): string {
    return `${this.op} of ${this.gid}/${this.branch} already ran, but its stored result does not decode with the result schema: ${this.reason}`
  }
}

/**
 * What the barrier fails with.
 * @since 0.1.0
 */
export type BarrierError = BarrierWorkError | BarrierResultRefusedError | BarrierResultDecodeError

/**
 * The barrier's identity.
 * @since 0.1.0
 */
export interface Target {
  readonly gid: string
  readonly branch: string
  readonly op: Op
}

/**
 * Splits a saga idempotency key `<sagaId>/<step>` into gid and branch (at its last `/`). A key
 * without a `/` is no saga key: it throws (a defect: the saga never makes one) rather than answer
 * an empty branch, which gave `"k"` the barrier rows of `"k/"`.
 * @since 0.1.0
 */
export const fromKey = (key: string): { readonly gid: string; readonly branch: string } => {
  const at = key.lastIndexOf("/")
  if (at < 0)
    throw new TypeError(
      `Barrier.fromKey: ${JSON.stringify(key)} is not a saga idempotency key <sagaId>/<step> (it has no "/"); pass a saga step's ctx.key, or give the gid and branch yourself`
    )
  return { gid: key.slice(0, at), branch: key.slice(at + 1) }
}

/** The barrier's statements, on the table's schema-qualified name (see `statementsOf`). */
interface Statements {
  readonly insert: string
  /**
   * The row, its result as text: SQL NULL (a result of `undefined`) and JSON null stay apart,
   * whatever the driver's jsonb parser.
   */
  readonly existing: string
  /**
   * The result, kept in the op's row after the work; answers whether the branch's action row is
   * still there (no row at all: the op's own row is gone). See `refuseRowGone`.
   */
  readonly keep: string
  readonly purge: string
}

/**
 * `synchronous_commit = on` for the rest of the transaction, set inside the statement that needs it
 * (no extra round trip) when the session's or the database's setting is `off`; any other setting
 * (`local`, `remote_write`, `remote_apply`: durable, and chosen for replication) is kept as it is
 * (the first version set `on` over them: `remote_apply` weakened, `local` made to wait for a
 * synchronous standby, `barrierFixDurable.test.ts`). A barrier row lost in a
 * crash of the service database (`synchronous_commit = off` is a common throughput setting) while
 * the saga log, in another database, durably recorded the step compensated let a late action apply
 * instead of being refused. Every transaction that writes a row runs `insert`; the `keep` after the
 * work sets it again, so a work that turned it off for its transaction does not relax the commit.
 * (A `keep` that matches no row sets nothing: a work that deleted its barrier row is refused,
 * `refuseRowGone`, so no transaction commits unforced.)
 */
const FORCED =
  "(select set_config('synchronous_commit', case current_setting('synchronous_commit') " +
  "when 'off' then 'on' else current_setting('synchronous_commit') end, true) as forced) as f"

const statementsOn = (table: string): Statements => ({
  insert: `insert into ${table} (gid, branch, op, reason) select $1::text, $2::text, $3::text, $4::text from ${FORCED} on conflict do nothing returning 1 as ok, pg_current_xact_id()::text as xid`,
  existing: `select reason, result::text as result from ${table} where gid = $1 and branch = $2 and op = $3`,
  keep:
    `update ${table} set result = $4::text::jsonb from ${FORCED} where gid = $1 and branch = $2 and op = $3 ` +
    `returning exists(select 1 from ${table} where gid = $1 and branch = $2 and op = 'action') as guarded`,
  purge:
    `with gone as (delete from ${table} where ctid = any(array(` +
    `select ctid from ${table} where created_at < now() - make_interval(secs => $1::float8) limit $2` +
    ")) returning 1) select count(*)::int as n from gone"
})

/**
 * The barrier table is not on the connection's search_path (not migrated yet): the step is refused
 * before anything is sent. Never named bare: a step's later statements would follow whatever
 * `search_path` its work set, into a tenant schema's own copy of the table.
 */
const notMigrated = () =>
  Object.assign(
    new Error(
      'relation "accord_saga_barrier" is not on this connection\'s search_path; run Barrier.migrate(conn) once at service start'
    ),
    { code: "42P01" }
  )

/** Each connection's statements, once its table was found. */
const found = new WeakMap<Connection, Promise<Statements>>()

/**
 * The statements of `conn`: the barrier table is looked up once per pool or PGlite instance (one
 * statement, on the first run or `migrate`), not per run. Not found (or the look-up failed), it is
 * looked up again next time.
 */
const statementsOf = (conn: Connection): Promise<Statements> => {
  const known = found.get(conn)
  if (known !== undefined) return known
  const drop = () => {
    if (found.get(conn) === looked) found.delete(conn)
  }
  const looked: Promise<Statements> = clientOf(conn)
    .query<object>(TABLE_SCHEMA_SQL, ["accord_saga_barrier"])
    .then((rows) => {
      const schema = rows[0] === undefined ? undefined : Object.values(rows[0])[0]
      if (typeof schema === "string") return statementsOn(tableName("accord_saga_barrier", schema))
      drop()
      throw notMigrated()
    })
  looked.catch(drop)
  found.set(conn, looked)
  return looked
}

/**
 * Creates `accord_saga_barrier` (idempotent), then finds its schema for the runs on `conn`; run it
 * at service start.
 * @since 0.1.0
 */
export const migrate = async (conn: Connection): Promise<void> => {
  if (typeof conn === "function") await conn.unsafe(barrierDdl).simple()
  else await conn.exec(barrierDdl)
  await statementsOf(conn)
}

/**
 * Deletes barrier rows older than `olderThan` (by the database's clock), `batch` rows per statement
 * (default 1,000, each its own short transaction, so that a large backlog never holds many row
 * locks at once); resolves with how many were deleted. Barrier rows are never deleted otherwise,
 * so a busy service runs this periodically.
 *
 * **The retention rule.** A deleted row no longer protects its step: an action delivered again
 * after its row is gone runs again (no `Duplicate`), and one delivered after a null compensation's
 * row is gone is no longer `Refused` (a hanging action). So `olderThan` must be longer than the
 * longest time after which anything may still deliver an action or compensation of a step: the
 * saga's whole life (its `leaseFor`, sweeps, retries and operator `retry`/`resolve`) plus any
 * message redelivery window of your transport. Days, not minutes. Rows are never more than that
 * window old when they matter, so time is the only rule needed; `olderThan` must be positive.
 * @since 0.1.0
 */
export const purge = async (conn: Connection, options: Retention): Promise<number> => {
  // A retention or batch that is not valid rejects before anything is sent.
  const retention = checkRetention("Barrier.purge", options)
  return deleteInBatches(clientOf(conn), (await statementsOf(conn)).purge, retention)
}

type Query = <T>(text: string, params?: ReadonlyArray<unknown>) => Promise<Array<T>>

/**
 * How a result is kept in the barrier row: `store` runs inside the transaction, before commit, and
 * throws `BarrierResultRefusedError` (rolling the work back); `load` reads a duplicate's row.
 * Stored as jsonb text; `null` (SQL NULL) is a result of `undefined`.
 */
interface Codec<A> {
  readonly store: (value: A, target: Target) => Promise<string | null>
  readonly load: (stored: string | null, target: Target) => Effect.Effect<A, BarrierResultDecodeError>
}

const refuse = (target: Target, reason: string) =>
  new BarrierResultRefusedError({ gid: target.gid, branch: target.branch, op: target.op, reason })

/** Kept with `Json.encodeKept` before commit; a refusal throws `BarrierResultRefusedError`. */
const store = async <A, I>(
  value: A,
  schema: Schema.Schema<A, I, never> | undefined,
  target: Target
): Promise<string | null> => {
  const kept = await Effect.runPromiseExit(Json.encodeKept(value, schema, "result"))
  if (Exit.isFailure(kept)) {
    throw refuse(target, kept.cause._tag === "Fail" ? kept.cause.error : Cause.pretty(kept.cause))
  }
  return kept.value === undefined ? null : JSON.stringify(kept.value)
}

const plainJson: Codec<unknown> = {
  store: (value, target) => store(value, undefined, target),
  load: (stored) => Effect.sync(() => (stored === null ? undefined : JSON.parse(stored)))
}

const withSchema = <A, I>(schema: Schema.Schema<A, I, never>): Codec<A> => {
  const decode = Schema.decodeUnknown(schema)
  return {
    store: (value, target) => store(value, schema, target),
    load: (stored, target) =>
      decode(stored === null ? undefined : JSON.parse(stored)).pipe(
        Effect.mapError(
          (error) =>
            new BarrierResultDecodeError({
              gid: target.gid,
              branch: target.branch,
              op: target.op,
              reason: error.message
            })
        )
      )
  }
}

/**
 * What the transaction decided. A duplicate carries the stored text, decoded after the commit; a
 * compensation repeated after a null compensation is told apart (it has no result).
 */
type Decision<A> =
  | { readonly _tag: "Applied"; readonly value: A }
  | { readonly _tag: "Duplicate"; readonly stored: string | null }
  | { readonly _tag: "NullCompensation"; readonly repeated: boolean }
  | { readonly _tag: "Refused"; readonly reason: string }

/** How long an interrupted run's work may still take before its transaction is ended for it. */
const ABANDON_MS = Duration.toMillis(defaultCancelTimeout)

/** The work had not returned `ABANDON_MS` after the run was interrupted (see `boundedAfterAbort`). */
class WorkAbandoned extends Error {}

/**
 * `work(session)`, given at most `ABANDON_MS` more once the run is interrupted. A work waiting on
 * something that is not a statement (an HTTP call without a timeout, say) kept its transaction open
 * until it returned, with its barrier row and row locks held and the step's compensation waiting
 * behind them (on PGlite, every statement of the instance): for ever if it never returned. It is
 * then ended: rolled back on PGlite; on postgres.js its connection is closed, which ends the session on the
 * server (`onPostgres`).
 */
const boundedAfterAbort = <A>(
  work: (s: BarrierSession) => Promise<A>,
  session: BarrierSession,
  signal: AbortSignal
): Promise<A> => {
  let worked: Promise<A>
  try {
    worked = Promise.resolve(work(session))
  } catch (error) {
    worked = Promise.reject(error)
  }
  return unlessInterrupted(worked, signal, () => {
    throw new WorkAbandoned(
      `the barrier work had not returned ${ABANDON_MS} ms after the run was interrupted: its transaction was ended`
    )
  })
}

/** `p`, unless the run is interrupted (`signal`) and `ABANDON_MS` more pass first: then `gaveUp()`. */
const unlessInterrupted = <A>(p: Promise<A>, signal: AbortSignal, gaveUp: () => never): Promise<A> => {
  const abandonment = new Abandonment()
  const abandon = () => abandonment.abandon()
  if (signal.aborted) abandon()
  else signal.addEventListener("abort", abandon, { once: true })
  return unlessAbandoned(p, abandonment, ABANDON_MS, gaveUp).finally(() =>
    signal.removeEventListener("abort", abandon)
  )
}

/**
 * The run's BEGIN or COMMIT had not answered `ABANDON_MS` after the run was interrupted: its
 * connection stopped answering (see `onPostgres`).
 */
class ConnectionAbandoned extends Error {}

/**
 * `conn`'s BEGIN or COMMIT, given at most `ABANDON_MS` more once the run is interrupted. Neither is
 * one of the run's tracked statements (a COMMIT is not cancelled: it may be committing), and a
 * connection that stopped answering (frozen in the network) kept the run waiting on it for ever,
 * its reserved connection neither given back nor closed (a pool whose connections all froze so
 * served nothing more) and, for a COMMIT held on its way, the session idle in its transaction on
 * the server, holding the barrier row that the step's compensation waits for (review of
 * 2026-12-07, `leaseS22BarrierCommit.test.ts`, `barrierS22CommitBound.test.ts`). Not interrupted,
 * it is awaited as long as it takes.
 */
const endOrBegin = (conn: postgres.ReservedSql, text: "begin" | "commit", signal: AbortSignal) => {
  const sent = conn.unsafe(text)
  return {
    sent,
    answered: unlessInterrupted(Promise.resolve(sent), signal, () => {
      throw new ConnectionAbandoned(
        `the barrier's ${text.toUpperCase()} had not answered ${ABANDON_MS} ms after the run was interrupted: its connection was closed and its session terminated`
      )
    })
  }
}

/**
 * The `i`th column of a row of the barrier's own statements, by position: a postgres.js pool's
 * column transform (`transform: postgres.camel`, `postgres.pascal`) renames the columns but keeps
 * their order. Read by name, `guarded` came back `Guarded` on a pascal pool and every action was
 * refused as if its work had deleted its row (0A000), and `reason` came back `Reason`, so a late
 * action after a null compensation answered Duplicate instead of Refused (review of 2026-12-07).
 * The values are not touched: camel's value transform rewrites JSON only, and the stored result is
 * read as text.
 */
const column = (row: object | undefined, i: number): unknown =>
  row === undefined ? undefined : Object.values(row)[i]

/** The barrier protocol inside an open transaction. */
const protocol = async <A>(
  statements: Statements,
  query: Query,
  session: BarrierSession,
  target: Target,
  work: (s: BarrierSession) => Promise<A>,
  codec: Codec<A>,
  signal: AbortSignal,
  run: Interruptible
): Promise<Decision<A>> => {
  const { sent } = run
  const { gid, branch, op } = target
  // The transaction that holds the barrier row (see `endedByWork`).
  let xid: string | undefined
  const insert = async (rowOp: Op, reason: string) => {
    const rows = await query<object>(statements.insert, [gid, branch, rowOp, reason])
    if (rows.length === 1) xid = column(rows[0], 1) as string
    return rows.length === 1
  }
  const existing = async (rowOp: Op) => {
    const row = (await query<object>(statements.existing, [gid, branch, rowOp]))[0]
    return row === undefined
      ? undefined
      : { reason: column(row, 0) as string, result: column(row, 1) as string | null }
  }
  if (op === "action") {
    if (!(await insert("action", "action"))) {
      const row = await existing("action")
      return row?.reason === "null-compensation"
        ? { _tag: "Refused", reason: "the compensation of this step already ran (null compensation)" }
        : { _tag: "Duplicate", stored: row?.result ?? null }
    }
  } else {
    const actionMissing = await insert("action", "null-compensation")
    if (!(await insert("compensation", actionMissing ? "null-compensation" : "compensation"))) {
      const row = await existing("compensation")
      return row?.reason === "null-compensation"
        ? { _tag: "NullCompensation", repeated: true }
        : { _tag: "Duplicate", stored: row?.result ?? null }
    }
    if (actionMissing) return { _tag: "NullCompensation", repeated: false }
  }
  const workFrom = sent.length
  const value = await boundedAfterAbort(work, session, signal).catch(async (error: unknown) => {
    throw await endedByWork(error, query, xid, signal, run, workFrom)
  })
  // Before commit: a result that cannot be kept faithfully throws here and rolls the work back.
  // After the work, under whatever search_path it set: hence the schema-qualified table.
  const stored = await codec.store(value, target)
  const kept = await query<object>(statements.keep, [gid, branch, op, stored])
  if (column(kept[0], 0) !== true) throw refuseRowGone(target)
  return { _tag: "Applied", value }
}

/**
 * The refusal of a work that deleted (or re-keyed) its barrier row, or, in a compensation, its
 * action's. It committed unguarded: a retry or a redelivery ran the work again, a late action
 * applied after its compensation, and `keep`, matching no row, did not force the commit (a work
 * that had set `synchronous_commit = off` committed so). Read at `keep`, after the work, so the
 * run fails and rolls back whole. SQLSTATE 0A000, as `refuseNotify`: the same work is refused on
 * every attempt, so `toStepError` and `toCompensationStepError` do not retry it.
 *
 * The action's row a compensation finds is committed and not locked by it, so another session can
 * delete it meanwhile too: a `Barrier.purge` whose retention is shorter than the saga's life. The
 * message says the row was deleted, by the work or by such a session (it blamed the work alone, and
 * sent the operator of a Stuck saga looking in the wrong place; review of 2026-12-07).
 */
const refuseRowGone = (target: Target): Error =>
  Object.assign(
    new Error(
      `the barrier row of ${target.gid}/${target.branch} (${target.op === "action" ? "the action's own" : "its action's or its own"}) was deleted while the work ran, by the work or by another session (a Barrier.purge whose retention is shorter than the saga's life): the step would commit unguarded (a retry or a late action would apply again), so it was rolled back; a barrier work must not delete or re-key accord_saga_barrier rows, and Barrier.purge's olderThan must outlive every saga`
    ),
    { code: "0A000" }
  )

/**
 * The error of a work that failed: `error`, unless the work had ended the barrier's transaction
 * itself (COMMIT, or ROLLBACK) before failing. What it wrote before that was committed outside the
 * barrier, with the barrier row, so a retry would find the row and answer Duplicate without running
 * the rest: a compensation half applied and recorded as done (helper 82, 2026-12-07). That is a
 * definite failure, SQLSTATE 25000 (invalid transaction state): `toStepError` and
 * `toCompensationStepError` do not retry it (an action is compensated, a compensation is Stuck for
 * an operator). Told by asking the server which transaction it is in (one round trip, on failure
 * only): the same one is still the barrier's; a failed question (the connection lost) leaves
 * `error` as it is (in doubt). An aborted transaction (the question fails with 25P02) is ended
 * (ROLLBACK, then BEGIN, so that the run's own ROLLBACK still finds a transaction) and the server
 * asked whether the barrier's transaction committed (`pg_xact_status`; three more round trips): if
 * so the work had ended it (COMMIT, BEGIN, a failing statement), 25000 whatever its texts show (a
 * COMMIT in a nested fragment, whose text the barrier does not see, was read as not ended, and a
 * compensation was retried into a Duplicate with half its undo applied: review of 2026-12-07).
 * Rolled back, it is read by the texts (`endedThenAborted`): ROLLBACK, BEGIN, a failing statement
 * may have autocommitted something between the two, which a retry would repeat; with no ending
 * statement seen, `error` as it is. If that check fails too, the texts alone decide.
 *
 * Except when the server also says that the barrier's transaction was rolled back
 * (`pg_xact_status`, same round trip) and the work ended it with its last statement
 * (`endedLast`): its own COMMIT that the server refused (40001 at commit, a deferred constraint,
 * 40P01) and answered by rolling the whole transaction back, barrier row included; or its own
 * ROLLBACK. Nothing of the step was then kept and nothing ran after, so another attempt is safe:
 * `error`, read by its SQLSTATE. (It was 25000, and a compensation whose COMMIT met a serialization
 * failure went Stuck on its first attempt.) A transaction that committed, or is prepared, stays
 * 25000, and so does a work that sent anything after its transaction ended (autocommitted, outside
 * the barrier: a retry would repeat it) or while its ending statement was in flight (`endedLast`),
 * or a statement whose text the barrier did not see.
 */
const endedByWork = async (
  error: unknown,
  query: Query,
  xid: string | undefined,
  signal: AbortSignal,
  run: Interruptible,
  workFrom: number
): Promise<unknown> => {
  if (xid === undefined || signal.aborted || error instanceof WorkAbandoned) return error
  const { sent } = run
  // The barrier's own statements are recorded in `sent` when sent (at `own`): not the work's.
  const own = new Set<number>()
  const ask = <T>(text: string, params?: ReadonlyArray<unknown>) => {
    own.add(sent.length)
    return query<T>(text, params)
  }
  const workSent = () => sent.filter((_, i) => i >= workFrom && !own.has(i))
  const now = await ask<object>(
    "select pg_current_xact_id_if_assigned()::text as xid, pg_xact_status($1::xid8) as status",
    [xid]
  ).then(
    (rows) => ({
      xid: (column(rows[0], 0) ?? null) as string | null,
      status: (column(rows[0], 1) ?? null) as string | null
    }),
    async (failure: unknown) => {
      // Not 25P02 (the connection lost): not ended, in doubt as the work's failure says.
      if (toFailure(failure).sqlState !== "25P02") return { xid, status: null }
      // 25P02: a transaction is open and aborted, the barrier's or one the work opened after
      // ending it. Ended here and the barrier's asked about; the failure that aborted it is kept
      // for `explained` (the statements that succeed here would forget it).
      const aborting = run.aborting
      const committed = await (async () => {
        await ask("rollback")
        await ask("begin")
        const rows = await ask<object>("select pg_xact_status($1::xid8)", [xid])
        return column(rows[0], 0) === "committed"
      })().then(
        (yes) => yes,
        () => false
      )
      run.aborting = aborting
      return { xid: committed || endedThenAborted(workSent()) ? null : xid, status: null }
    }
  )
  if (now.xid === xid) return error
  // Read once the question answered: a statement the work left running after it threw (a tagged
  // template runs a microtask after its call) is in `sent` by then.
  if (now.status === "aborted" && endedLast(workSent())) return error
  const failure = toFailure(error)
  return Object.assign(
    new Error(
      `the work ended the barrier's transaction itself (COMMIT or ROLLBACK) and then failed: what it wrote before is not under the barrier (a retry would find its barrier row and not run the rest); ${failure.message}`
    ),
    { code: "25000" }
  )
}

/**
 * A lone `COMMIT`, `END`, `ROLLBACK` or `ABORT` (`WORK`/`TRANSACTION` or not; comments and one `;`
 * around it or not); `AND CHAIN`, which opens another transaction, is not one.
 */
const LONE_END = new RegExp(
  `^${SQL_GAP}*(?:commit|end|rollback|abort)(?:${SQL_GAP}+(?:work|transaction))?(?:${SQL_GAP}*;)?${SQL_GAP}*$`,
  "i"
)

/** Whether `s`'s text is known and ends no transaction (`ENDING_STATEMENT`, anywhere in it). */
const endsNothing = (s: Sent): boolean =>
  s.text !== undefined && statementStartingWith(s.text, ENDING_STATEMENT) === undefined

/**
 * Whether the work's statements (`workSent`, in the order recorded) end with a lone COMMIT or
 * ROLLBACK (`LONE_END`, answered) that was the first of them to end a transaction: the barrier's
 * transaction was then open until it (a failed statement aborts a transaction, it does not end it),
 * and nothing ran after it. Every text must be known (a tagged template with a fragment in it is
 * not) and read by the scanner that finds a branch's ending statements (`ENDING_STATEMENT`).
 *
 * The order recorded is not always the order run: `query`, `statement` and `execute` are recorded
 * when called, a tagged template when postgres.js runs it, a microtask later, so
 * `` s.sql`rollback`.execute() `` then `s.query("insert ...")`, awaited together, ran the ROLLBACK
 * first and the INSERT after it, autocommitted outside the barrier, while the record read
 * [insert, rollback] (review of 2026-12-07: the run was read by the work's own error, retried, and
 * the retry inserted again). So the END must also have been recorded alone (`alone`: every
 * statement recorded before it had answered, hence ran before it), and nothing recorded after it.
 */
const endedLast = (workSent: ReadonlyArray<Sent>): boolean => {
  const last = workSent.at(-1)
  return (
    last?.failed !== undefined &&
    last.alone &&
    last.text !== undefined &&
    LONE_END.test(last.text) &&
    workSent.slice(0, -1).every(endsNothing)
  )
}

/**
 * Whether the work may have ended the barrier's transaction before the transaction now open and
 * aborted (the diagnosis failed with 25P02): one of its statements has a known text with an ending
 * statement in it (`ENDING_STATEMENT`). COMMIT, BEGIN, then a failing statement left the work's own
 * transaction aborted, and the diagnosis, failing in it, read "not ended": the failure's own
 * SQLSTATE (a business 23514 for an action whose first part and barrier row had committed; a
 * compensation retried into a Duplicate with only half its undo applied). Read as ended (25000). An
 * ending statement that did not run (after a failed one in the same text) reads as ended all the
 * same: a definite failure where a retry was safe, never a retry of a half-committed work. A work
 * whose texts are not known and show no ending statement is read as not ended. Asked only once the
 * server said the barrier's transaction did not commit (or could not say: see `endedByWork`), so a
 * COMMIT whose text is not known (a nested fragment) is found all the same.
 */
const endedThenAborted = (workSent: ReadonlyArray<Sent>): boolean =>
  workSent.some((s) => s.text !== undefined && !endsNothing(s))

const sessionOf = (query: Query, statement: Statement, sql?: postgres.Sql): BarrierSession => ({
  query: <T = Record<string, unknown>>(text: string, params?: ReadonlyArray<unknown>) =>
    query<T>(text, params),
  statement,
  execute: <T = Record<string, unknown>>(q: { toSQL(): { sql: string; params: ReadonlyArray<unknown> } }) => {
    const built = q.toSQL()
    return query<T>(built.sql, built.params)
  },
  ...(sql === undefined ? {} : { sql })
})

/**
 * A statement sent for a run: its text when known; whether it failed, once it settled; whether it
 * was recorded alone, every statement recorded before it settled (see `endedLast`).
 */
interface Sent {
  readonly text: string | undefined
  failed: boolean | undefined
  readonly alone: boolean
}

/**
 * The text of a postgres.js query run through the work's `sql` (`unsafe`, `file` once read, or a
 * tagged template, its parameters as `$n`); `undefined` when a fragment is nested in it (another
 * `sql` template or helper: its text is not at hand) or the shape is not known (`file` is tracked
 * before its file is read: no text yet).
 */
const textOf = (q: unknown): string | undefined => {
  const { strings, args } = q as { strings?: unknown; args?: unknown }
  if (!Array.isArray(strings) || strings.length === 0 || !strings.every((s) => typeof s === "string"))
    return undefined
  const values = Array.isArray(args) ? args : []
  const nested = values.some(
    (a: unknown) =>
      typeof a === "object" &&
      a !== null &&
      (a instanceof Promise || typeof (a as { build?: unknown }).build === "function")
  )
  return nested
    ? undefined
    : strings.reduce((text: string, s: string, i: number) => (i === 0 ? s : `${text}$${i}${s}`), "")
}

/** A statement as sent: postgres.js's pending query can be cancelled on the server. */
type Send<R> = (text: string, params?: ReadonlyArray<unknown>) => PromiseLike<R> & Cancellable

/** A statement's rows and count (`BranchSession.statement`). */
type Statement = BarrierSession["statement"]

/**
 * The run's statements, given up when the run is interrupted (a saga step's timeout): the statement
 * the server is running for it is cancelled (postgres.js; PGlite cannot cancel) and any later one
 * fails at once, so the transaction rolls back with its barrier row. Left alone, it kept waiting (on
 * a lock, say) while holding its connection and its uncommitted barrier row, which blocked the
 * step's retry and compensation behind it, and it could land after the caller had given up on it.
 * The interruption does not wait for the rollback. `cancelSent` says whether a cancel request went
 * (see `onPostgres`: that connection is then closed, never given back).
 */
class Interruptible {
  readonly inflight = new Set<Cancellable>()
  cancelSent = false
  /** Every statement sent for the run, in order (the barrier's and the work's: see `endedByWork`). */
  readonly sent: Array<Sent> = []
  /**
   * The failure that aborted the run's transaction, if it is aborted (see `explained`): the last
   * statement failure with a server SQLSTATE other than 25P02, forgotten when a statement succeeds
   * after it (a `ROLLBACK TO SAVEPOINT` recovered from it). A driver error raised before anything
   * was sent aborts nothing, and is not kept.
   */
  aborting: unknown = undefined
  constructor(readonly signal: AbortSignal) {
    signal.addEventListener("abort", () => {
      for (const pending of this.inflight) if (cancelIfRunning(pending)) this.cancelSent = true
    })
  }
  /** Why no statement may be sent any more, if so. */
  refusal(): Error | undefined {
    return this.signal.aborted
      ? new Error("the barrier run was interrupted; its transaction rolls back")
      : undefined
  }
  /** The entry in `sent` of each statement still in flight. */
  private readonly entries = new Map<Cancellable, Sent>()
  /** Keeps `pending` (of `text`, when known) cancellable until it settles, and in `sent`. */
  track<R>(pending: PromiseLike<R> & Cancellable, text: string | undefined): PromiseLike<R> & Cancellable {
    const entry: Sent = { text, failed: undefined, alone: this.inflight.size === 0 }
    this.inflight.add(pending)
    this.entries.set(pending, entry)
    this.sent.push(entry)
    pending.then(
      () => this.settled(pending, false, undefined),
      (error: unknown) => this.settled(pending, true, error)
    )
    return pending
  }
  /**
   * Records that `pending` settled, once: by its own callback (`track`) or, for the work's tagged
   * templates, by `guardedSql` as postgres.js settles it, before the work's callbacks on it run. A
   * work's `` sql`insert ...`.then(() => s.query("commit")) `` registered its callback before the
   * run's, so its COMMIT was recorded while the INSERT still counted as in flight (not `alone`) and
   * a COMMIT the server refused (40001 at commit) read 25000 instead of 40001 (review of 2026-12-07).
   */
  settled(pending: Cancellable, failed: boolean, error: unknown): void {
    const entry = this.entries.get(pending)
    if (entry === undefined) return
    this.entries.delete(pending)
    this.inflight.delete(pending)
    if (failed) {
      const sqlState = toFailure(error).sqlState
      if (sqlState !== undefined && sqlState !== "25P02") this.aborting = error
    } else this.aborting = undefined
    entry.failed = failed
  }

  /**
   * `error`, or, when it is 25P02 (the transaction was already aborted), the failure that aborted
   * it (`aborting`): a work that caught an error and went on met 25P02 at its next statement (or the
   * barrier's own), and the step was classified by 25P02, a business failure, where the error it
   * swallowed said why (a 40001 serialization failure is worth another attempt; until 2026-12-07 it
   * was never retried). The failure keeps its SQLSTATE; its message says both.
   */
  explained(error: unknown): unknown {
    const cause = this.aborting
    if (cause === undefined || cause === error || toFailure(error).sqlState !== "25P02") return error
    const sqlState = toFailure(cause).sqlState
    const message = cause instanceof Error ? cause.message : String(cause)
    return Object.assign(
      new Error(
        `${message} (the work caught it and went on; its next statement then failed: ${toFailure(error).message})`
      ),
      { code: sqlState }
    )
  }
  /** `send`, refused once interrupted and tracked. */
  sender<R>(send: Send<R>): (text: string, params?: ReadonlyArray<unknown>) => Promise<R> {
    return async (text, params) => {
      const refused = this.refusal()
      if (refused !== undefined) throw refused
      return await this.track(send(text, params), text)
    }
  }
}

/**
 * The refusal of `sql.notify(channel)` in a barrier step. postgres.js sends a reserved connection's
 * `notify` through its pool (`select pg_notify(...)` on another connection, committed at once), so
 * a step that then rolled back (its work failed, its result was refused, it was interrupted) had
 * notified anyway, and a retried step notified once per attempt. Refused as a postgres.js branch
 * refuses it (`PgParticipant`): thrown at once, and the run fails and rolls back even if the work
 * caught it. SQLSTATE 0A000 (feature not supported): a definite failure, which `toStepError` and
 * `toCompensationStepError` do not retry, as the same work would be refused again.
 */
const refuseNotify = (channel: string): Error =>
  Object.assign(
    new Error(
      `sql.notify(${JSON.stringify(channel)}) is refused in a barrier step: postgres.js would send it on another connection, outside the step's transaction, at once (even if the step then rolled back); notify after the step completed, or write an outbox row in the step`
    ),
    { code: "0A000" }
  )

/**
 * The run on a connection of its own (`sql.reserve()`): BEGIN, the barrier protocol and the work,
 * COMMIT; ROLLBACK on any failure. The work's `sql` (tagged templates) is tracked and refused like
 * its `query`, and its `notify` refused (`refuseNotify`). A connection that was sent a cancel request is closed (`destroyReserved`) rather than
 * given back to the pool: the request travels on a connection of its own and can reach the session
 * late, when it cancels whatever the pool's next user runs there (a review measured 47 of 480 of
 * another caller's statements on a one-connection pool cancelled, under `sql.begin`, which always
 * gave the connection back).
 */
const onPostgres = async <A>(
  statements: Statements,
  sql: postgres.Sql,
  target: Target,
  work: (s: BarrierSession) => Promise<A>,
  codec: Codec<A>,
  signal: AbortSignal
): Promise<Decision<A>> => {
  const conn = await sql.reserve()
  const run = new Interruptible(signal)
  const send = run.sender(
    (text, params) =>
      conn.unsafe(text, (params ?? []) as Array<postgres.ParameterOrJSON<never>>) as unknown as PromiseLike<
        postgres.RowList<Array<Record<string, unknown>>>
      > &
        Cancellable
  )
  // Plain arrays, as on PGlite (postgres.js answers an Array subclass carrying `count`, `command`,
  // ...): rows returned as they are stay plain JSON, and come back the same on a duplicate.
  const query: Query = async <T>(text: string, params?: ReadonlyArray<unknown>) =>
    Array.from(await send(text, params)) as Array<T>
  const statement: Statement = async (text, params) => {
    const rows = await send(text, params)
    return { rows: Array.from(rows), count: countOf(rows) }
  }
  // `sql.notify()` is refused: see `refuseNotify`. Kept to fail the run even if the work caught it.
  let notifyRefused: Error | undefined
  const tagged = guardedSql(
    conn,
    (q) => run.refusal() ?? void run.track(q, textOf(q)),
    (channel) => {
      notifyRefused ??= refuseNotify(channel)
      throw notifyRefused
    },
    (q, failed, error) => run.settled(q, failed, error)
  )
  let clean = false
  // Given back or closed already (`giveUp`), not again in `finally`.
  let gone = false
  let begun: unknown
  /**
   * A connection that stopped answering: closed at once, first, so that a pool of one has a
   * connection for the terminate, then its session terminated by pid (known from its BEGIN, even
   * unanswered), since the close may never reach the server either.
   */
  const giveUp = async () => {
    gone = true
    if (!destroyReserved(conn)) conn.release()
    await terminateBackend(sql, pidOf(begun), ABANDON_MS)
  }
  try {
    const begin = endOrBegin(conn, "begin", signal)
    begun = begin.sent
    await begin.answered
    const decision = await protocol(
      statements,
      query,
      sessionOf(query, statement, tagged),
      target,
      work,
      codec,
      signal,
      run
    )
    // The work caught the refusal and went on: still rolled back, as if it had not caught it.
    if (notifyRefused !== undefined) throw notifyRefused
    // The work's own ROLLBACK (or an error it swallowed) leaves COMMIT nothing to commit.
    const committed = await endOrBegin(conn, "commit", signal).answered
    clean = true
    if (committed.command === "ROLLBACK")
      throw new Error(
        "the transaction was rolled back before its COMMIT (by the work, or after an error it caught)"
      )
    return decision
  } catch (error) {
    // A work that never returned: its session waits, idle in its transaction, for a statement that
    // will not come. Closing the connection (below, as not clean) ends it on the server at once
    // (the backend reads end-of-file and rolls back), where a pg_terminate_backend would need a
    // free connection of the same pool, which the step's compensation waiting on the barrier row
    // may hold. A BEGIN, COMMIT or ROLLBACK that does not answer (a connection that stopped
    // answering) has its connection closed and its session terminated (`giveUp`).
    if (error instanceof ConnectionAbandoned) await giveUp()
    else if (!(error instanceof WorkAbandoned)) {
      const rolledBack = await Promise.race([
        conn.unsafe("rollback").then(
          () => true,
          () => false
        ),
        delay(ABANDON_MS)
      ])
      if (rolledBack === "timeout") await giveUp()
      clean = rolledBack === true
    }
    throw run.explained(error)
  } finally {
    if (gone) {
      // closed in `giveUp`
    } else if (!clean || run.cancelSent) {
      if (!destroyReserved(conn)) conn.release()
    } else conn.release()
  }
}

const onPglite = <A>(
  statements: Statements,
  db: PGlite,
  target: Target,
  work: (s: BarrierSession) => Promise<A>,
  codec: Codec<A>,
  signal: AbortSignal
) =>
  db.transaction(async (tx: Transaction) => {
    const run = new Interruptible(signal)
    const send = run.sender((text, params) =>
      tx.query<Record<string, unknown>>(text, params as Array<unknown> | undefined)
    )
    const query: Query = async <T>(text: string, params?: ReadonlyArray<unknown>) =>
      (await send(text, params)).rows as Array<T>
    const statement: Statement = async (text, params) => pgliteResult(await send(text, params))
    try {
      return await protocol(statements, query, sessionOf(query, statement), target, work, codec, signal, run)
    } catch (error) {
      throw run.explained(error)
    }
  })

/** A decision with the duplicate's result decoded. */
type Verdict<A> =
  | { readonly _tag: "Applied"; readonly value: A }
  | { readonly _tag: "Duplicate"; readonly value: A }
  | { readonly _tag: "NullCompensation"; readonly repeated: boolean }
  | { readonly _tag: "Refused"; readonly reason: string }

/** The look-up of the barrier table failed (see `statementsOf`), before the step's transaction. */
class LookupFailed {
  constructor(readonly cause: unknown) {}
}

/** The transaction, with a duplicate's stored result decoded after it. */
const decide = <A>(
  conn: Connection,
  target: Target,
  work: (session: BarrierSession) => Promise<A>,
  codec: Codec<A>
): Effect.Effect<Verdict<A>, BarrierError> =>
  Effect.tryPromise({
    try: async (signal) => {
      const statements = await statementsOf(conn).catch((error: unknown) => {
        throw new LookupFailed(error)
      })
      return typeof conn === "function"
        ? onPostgres(statements, conn, target, work, codec, signal)
        : onPglite(statements, conn, target, work, codec, signal)
    },
    catch: (error): BarrierError => {
      if (error instanceof BarrierResultRefusedError) return error
      if (error instanceof LookupFailed) {
        // Nothing of the step was sent: never in doubt.
        const failure = toFailure(error.cause)
        return new BarrierWorkError({
          gid: target.gid,
          branch: target.branch,
          op: target.op,
          reason: `cannot look up the barrier table: ${failure.message}`,
          ...(failure.sqlState === undefined ? {} : { sqlState: failure.sqlState }),
          connectionLost: false
        })
      }
      const failure = toFailure(error)
      return new BarrierWorkError({
        gid: target.gid,
        branch: target.branch,
        op: target.op,
        reason: failure.message,
        ...(failure.sqlState === undefined ? {} : { sqlState: failure.sqlState }),
        connectionLost: failure.connectionLost
      })
    }
  }).pipe(
    Effect.flatMap(
      (decision): Effect.Effect<Verdict<A>, BarrierResultDecodeError> =>
        decision._tag === "Duplicate"
          ? Effect.map(codec.load(decision.stored, target), (value) => ({ _tag: "Duplicate", value }))
          : Effect.succeed(decision)
    ),
    Effect.withSpan("Barrier.run", {
      attributes: { gid: target.gid, branch: target.branch, phase: target.op }
    })
  )

/** Without a schema the stored JSON stands for A: `store` let through only values it equals. */
const codecOf = <A, I>(options: RunOptions<A, I> | undefined): Codec<A> =>
  options === undefined ? (plainJson as Codec<A>) : withSchema(options.result)

const runWith = <A>(
  conn: Connection,
  target: Target,
  work: (session: BarrierSession) => Promise<A>,
  codec: Codec<A>
): Effect.Effect<Result<A, A | undefined>, BarrierError> =>
  Effect.map(
    decide(conn, target, work, codec),
    (verdict): Result<A, A | undefined> =>
      verdict._tag !== "NullCompensation"
        ? verdict
        : verdict.repeated
          ? // Repeating a null compensation is a duplicate (as it always was), with no result.
            { _tag: "Duplicate", value: undefined }
          : { _tag: "NullCompensation" }
  )

/**
 * Runs `work` in a local transaction guarded by the barrier row of `target`. With `options.result`
 * the work's result is encoded with that schema before commit and a duplicate's is decoded with it;
 * without, the result must be plain JSON or the barrier refuses it before commit
 * (`BarrierResultRefusedError`).
 * @since 0.1.0
 */
export const run: {
  <A, I>(
    conn: Connection,
    target: Target,
    work: (session: BarrierSession) => Promise<A>,
    options: RunOptions<A, I>
  ): Effect.Effect<Result<A, A | undefined>, BarrierError>
  <A>(
    conn: Connection,
    target: Target,
    work: (session: BarrierSession) => Promise<A>
  ): Effect.Effect<Result<A>, BarrierError>
} = <A, I>(
  conn: Connection,
  target: Target,
  work: (session: BarrierSession) => Promise<A>,
  options?: RunOptions<A, I>
): Effect.Effect<Result<A, A | undefined>, BarrierError> => runWith(conn, target, work, codecOf(options))

/**
 * How `runPromise` is stopped: `signal` (a saga facade step's `ctx.signal`) interrupts the run as
 * interrupting `run` does: its statement is cancelled, its transaction and barrier row rolled back.
 * @since 0.1.0
 */
export interface PromiseOptions {
  readonly signal?: AbortSignal
}

/**
 * `run` as a Promise; rejects with a `BarrierError` (or, aborted through `signal`, with the
 * interruption). Pass a saga facade step's `ctx.signal`: without it a step that timed out left its
 * run waiting (on a row lock, say) with its barrier row uncommitted, the compensation's barrier
 * insert queued behind it until the saga was Stuck, and the abandoned action applied later.
 * @since 0.1.0
 */
export const runPromise: {
  <A, I>(
    conn: Connection,
    target: Target,
    work: (session: BarrierSession) => Promise<A>,
    options: RunOptions<A, I> & PromiseOptions
  ): Promise<Result<A, A | undefined>>
  <A>(
    conn: Connection,
    target: Target,
    work: (session: BarrierSession) => Promise<A>,
    options?: PromiseOptions
  ): Promise<Result<A>>
} = <A, I>(
  conn: Connection,
  target: Target,
  work: (session: BarrierSession) => Promise<A>,
  options?: Partial<RunOptions<A, I>> & PromiseOptions
): Promise<Result<A, A | undefined>> =>
  // The `BarrierError` itself, not Effect's `FiberFailure` around it: a Promise caller reads its
  // `_tag` and `sqlState`, or hands it to `toStepError`.
  runTyped(
    runWith(
      conn,
      target,
      work,
      codecOf(options?.result === undefined ? undefined : { result: options.result })
    ),
    options?.signal === undefined ? undefined : { signal: options.signal }
  )

/**
 * Reads a barrier failure as a saga step failure, the way an **action**'s is read: a lost
 * connection is in doubt; serialization failures and deadlocks (class 40), resource shortages
 * (53), operator intervention such as a statement timeout (57), connection exceptions (08), a lock
 * timeout (55P03) and an object in use (55006) are transient, and so is a work that threw without
 * a SQLSTATE; anything else (a CHECK or unique violation: the business said no; 55000; a `notify`
 * the barrier refused, or a barrier row the work deleted, 0A000) is definite. A result refused
 * before commit is definite too, and a duplicate whose stored result does not decode is in doubt
 * (see below). A compensation's failure is read by `toCompensationStepError`.
 * @since 0.1.0
 */
export const toStepError = (error: BarrierError): StepError => {
  switch (error._tag) {
    case "BarrierResultRefusedError":
      // Business (definite): the work rolled back with its row, so the step did not act (nothing to
      // compensate), and the same code returns the same kind of value on every attempt: retrying
      // would loop until the retry budget runs out and then fail anyway. Fail once, loudly.
      return new StepBusinessError({ reason: error.message })
    case "BarrierResultDecodeError":
      // In doubt, not business: this is a duplicate, the work *did* commit on its first run. A
      // business error would mark the step "did not act" and leave its effect uncompensated; in
      // doubt makes the saga retry (a fixed schema may be deployed) and, failing that, compensate it.
      return new StepInDoubtError({ reason: error.message })
    case "BarrierWorkError":
      return error.connectionLost
        ? new StepInDoubtError({ reason: error.reason })
        : error.sqlState === undefined || isTransientSqlState(error.sqlState)
          ? new StepTransientError({ reason: error.reason })
          : new StepBusinessError({ reason: error.reason })
  }
}

/**
 * Reads a barrier failure as a saga step failure the way a **compensation**'s is read: a
 * compensation must be driven to its end, so a work that failed (and rolled back with its barrier
 * row, so another attempt is safe) is retried on the step's `compensationRetry`, whatever its
 * SQLSTATE, before the saga is Stuck. A CHECK violation or a raised exception may depend on rows
 * that other transactions change, and a lock timeout (55P03) is the common case; one that fails
 * every time only reaches Stuck after the retry budget. Definite (Stuck at once) are only the
 * refusals that the same work meets on every attempt: a result the barrier refused before commit,
 * and `isDefiniteCompensationSqlState` (class 0A: a `notify` the barrier refused in the step, a
 * barrier row the work deleted, or a statement the server does not support; 25000: a work that
 * ended the barrier's transaction, see `endedByWork`). A lost connection, and a duplicate whose
 * stored result does not decode, are in doubt as for an action. Every retry runs the work again,
 * its effects outside the database included (see the module doc).
 * (A compensation was read as an action, so the first lock timeout left the saga Stuck at once,
 * whatever its `compensationRetry`.)
 * @since 0.1.0
 */
export const toCompensationStepError = (error: BarrierError): StepError => {
  const read = toStepError(error)
  return read._tag === "StepBusinessError" &&
    error._tag === "BarrierWorkError" &&
    !(error.sqlState !== undefined && isDefiniteCompensationSqlState(error.sqlState))
    ? new StepTransientError({ reason: read.reason })
    : read
}

/**
 * A saga action whose local work runs behind the barrier of `ctx.key`: a duplicate returns the
 * first run's result (decoded with `options.result` when given; without it the result must be plain
 * JSON, else the step fails before commit as a business error); an action refused after its
 * compensation fails as a business error.
 * @since 0.1.0
 */
export const sagaAction: {
  <A, I>(
    conn: Connection,
    ctx: StepContext,
    work: (session: BarrierSession) => Promise<A>,
    options: RunOptions<A, I>
  ): Effect.Effect<A, StepError>
  <A>(
    conn: Connection,
    ctx: StepContext,
    work: (session: BarrierSession) => Promise<A>
  ): Effect.Effect<A, StepError>
} = <A, I>(
  conn: Connection,
  ctx: StepContext,
  work: (session: BarrierSession) => Promise<A>,
  options?: RunOptions<A, I>
): Effect.Effect<A, StepError> =>
  // Suspended: a key that is no saga key (`fromKey`) is a defect of this effect, not a throw.
  Effect.suspend(() => decide(conn, { ...fromKey(ctx.key), op: "action" }, work, codecOf(options))).pipe(
    Effect.mapError(toStepError),
    Effect.flatMap(
      (result): Effect.Effect<A, StepError> =>
        result._tag === "Applied" || result._tag === "Duplicate"
          ? Effect.succeed(result.value)
          : result._tag === "Refused"
            ? Effect.fail(new StepBusinessError({ reason: result.reason }))
            : Effect.die(new Error("unreachable: an action cannot be a null compensation"))
    )
  )

/**
 * A saga compensation whose local work runs behind the barrier of `ctx.key` (duplicates and null
 * compensations succeed without running the work). What the work returns is not kept: the saga
 * never reads it, so it need not be JSON. A failure is read by `toCompensationStepError`: retried on
 * the step's `compensationRetry` unless the barrier refused the work, so what the work does outside
 * the database must be idempotent (see the module doc; `compensationRetry: Schedule.stop` turns the
 * retries off).
 * @since 0.1.0
 */
export const sagaCompensation = <A>(
  conn: Connection,
  ctx: CompensationContext<A>,
  work: (session: BarrierSession) => Promise<unknown>
): Effect.Effect<void, StepError> =>
  Effect.suspend(() =>
    run(conn, { ...fromKey(ctx.key), op: "compensation" }, async (session): Promise<void> => {
      await work(session)
    })
  ).pipe(Effect.mapError(toCompensationStepError), Effect.asVoid)
