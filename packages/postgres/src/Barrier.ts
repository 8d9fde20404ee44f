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
 * Concurrent action and compensation of one branch serialise on the primary key of the action row.
 *
 * Use gid = saga id and branch = step name: `fromKey(ctx.key)`. `sagaAction` / `sagaCompensation`
 * wrap this for saga steps.
 *
 * @since 0.1.0
 */
import type { PGlite, Transaction } from "@electric-sql/pglite"
import type { CompensationContext, StepContext } from "@accord/core/Saga"
import { StepBusinessError, type StepError, StepInDoubtError, StepTransientError } from "@accord/core/Saga"
import { Effect, Schema } from "effect"
import type postgres from "postgres"
import { toFailure } from "./internal/errors.js"
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
 *   first run's work returned (as JSON), `null` for a null compensation.
 * - `NullCompensation`: a compensation found no action: nothing to undo; the late action will be refused.
 * - `Refused`: an action arrived after its (null) compensation; the work did not run.
 * @since 0.1.0
 */
export type Result<A> =
  | { readonly _tag: "Applied"; readonly value: A }
  | { readonly _tag: "Duplicate"; readonly value: unknown }
  | { readonly _tag: "NullCompensation" }
  | { readonly _tag: "Refused"; readonly reason: string }

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
 * The barrier's identity.
 * @since 0.1.0
 */
export interface Target {
  readonly gid: string
  readonly branch: string
  readonly op: Op
}

/**
 * Splits a saga idempotency key `<sagaId>/<step>` into gid and branch.
 * @since 0.1.0
 */
export const fromKey = (key: string): { readonly gid: string; readonly branch: string } => {
  const at = key.lastIndexOf("/")
  return at < 0 ? { gid: key, branch: "" } : { gid: key.slice(0, at), branch: key.slice(at + 1) }
}

/**
 * Creates `accord_saga_barrier` (idempotent); run it at service start.
 * @since 0.1.0
 */
export const migrate = async (conn: Connection): Promise<void> => {
  if (typeof conn === "function") await conn.unsafe(barrierDdl).simple()
  else await conn.exec(barrierDdl)
}

type Query = <T>(text: string, params?: ReadonlyArray<unknown>) => Promise<Array<T>>

const INSERT =
  "insert into accord_saga_barrier (gid, branch, op, reason) values ($1, $2, $3, $4) on conflict do nothing returning 1 as ok"

/** The barrier protocol inside an open transaction. */
const protocol = async <A>(
  query: Query,
  session: BarrierSession,
  target: Target,
  work: (s: BarrierSession) => Promise<A>
): Promise<Result<A>> => {
  const { gid, branch, op } = target
  const insert = async (rowOp: Op, reason: string) =>
    (await query<{ ok: number }>(INSERT, [gid, branch, rowOp, reason])).length === 1
  const existing = async (rowOp: Op) =>
    (
      await query<{ reason: string; result: unknown }>(
        "select reason, result from accord_saga_barrier where gid = $1 and branch = $2 and op = $3",
        [gid, branch, rowOp]
      )
    )[0]
  if (op === "action") {
    if (!(await insert("action", "action"))) {
      const row = await existing("action")
      return row?.reason === "null-compensation"
        ? { _tag: "Refused", reason: "the compensation of this step already ran (null compensation)" }
        : { _tag: "Duplicate", value: row?.result ?? null }
    }
  } else {
    const actionMissing = await insert("action", "null-compensation")
    if (!(await insert("compensation", actionMissing ? "null-compensation" : "compensation"))) {
      return { _tag: "Duplicate", value: (await existing("compensation"))?.result ?? null }
    }
    if (actionMissing) return { _tag: "NullCompensation" }
  }
  const value = await work(session)
  await query(
    "update accord_saga_barrier set result = $4::text::jsonb where gid = $1 and branch = $2 and op = $3",
    [gid, branch, op, JSON.stringify(value ?? null)]
  )
  return { _tag: "Applied", value }
}

const sessionOf = (query: Query, sql?: postgres.Sql): BarrierSession => ({
  query: <T = Record<string, unknown>>(text: string, params?: ReadonlyArray<unknown>) =>
    query<T>(text, params),
  execute: <T = Record<string, unknown>>(q: { toSQL(): { sql: string; params: ReadonlyArray<unknown> } }) => {
    const built = q.toSQL()
    return query<T>(built.sql, built.params)
  },
  ...(sql === undefined ? {} : { sql })
})

const onPostgres = <A>(sql: postgres.Sql, target: Target, work: (s: BarrierSession) => Promise<A>) =>
  sql.begin(async (tx) => {
    const query: Query = async <T>(text: string, params?: ReadonlyArray<unknown>) =>
      (await tx.unsafe(text, (params ?? []) as Array<postgres.ParameterOrJSON<never>>)) as unknown as Array<T>
    // The transaction handle offers the tagged-template API of `Sql` (what `BranchSession.sql` promises).
    return protocol(query, sessionOf(query, tx as unknown as postgres.Sql), target, work)
  }) as Promise<Result<A>>

const onPglite = <A>(db: PGlite, target: Target, work: (s: BarrierSession) => Promise<A>) =>
  db.transaction(async (tx: Transaction) => {
    const query: Query = async <T>(text: string, params?: ReadonlyArray<unknown>) =>
      (await tx.query<T>(text, params as Array<unknown> | undefined)).rows
    return protocol(query, sessionOf(query), target, work)
  })

/**
 * Runs `work` in a local transaction guarded by the barrier row of `target`.
 * @since 0.1.0
 */
export const run = <A>(
  conn: Connection,
  target: Target,
  work: (session: BarrierSession) => Promise<A>
): Effect.Effect<Result<A>, BarrierWorkError> =>
  Effect.tryPromise({
    try: () => (typeof conn === "function" ? onPostgres(conn, target, work) : onPglite(conn, target, work)),
    catch: (error) => {
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
    Effect.withSpan("Barrier.run", {
      attributes: { gid: target.gid, branch: target.branch, phase: target.op }
    })
  )

/**
 * `run` as a Promise; rejects with `BarrierWorkError`.
 * @since 0.1.0
 */
export const runPromise = <A>(
  conn: Connection,
  target: Target,
  work: (session: BarrierSession) => Promise<A>
): Promise<Result<A>> => Effect.runPromise(run(conn, target, work))

// SQLSTATE classes worth retrying: serialization failure / deadlock (40), insufficient resources
// (53), operator intervention (57, e.g. a statement timeout 57014), connection exceptions (08).
const TRANSIENT_CLASSES = new Set(["40", "53", "57", "08"])

/**
 * Reads a barrier failure as a saga step failure: a lost connection is in doubt; serialization
 * failures, deadlocks and resource shortages are transient; anything else (a CHECK or unique
 * violation: the business said no) is definite.
 * @since 0.1.0
 */
export const toStepError = (error: BarrierWorkError): StepError =>
  error.connectionLost
    ? new StepInDoubtError({ reason: error.reason })
    : error.sqlState !== undefined && TRANSIENT_CLASSES.has(error.sqlState.slice(0, 2))
      ? new StepTransientError({ reason: error.reason })
      : error.sqlState === undefined
        ? new StepTransientError({ reason: error.reason })
        : new StepBusinessError({ reason: error.reason })

/**
 * A saga action whose local work runs behind the barrier of `ctx.key`: a duplicate returns the
 * first run's result; an action refused after its compensation fails as a business error.
 * @since 0.1.0
 */
export const sagaAction = <A>(
  conn: Connection,
  ctx: StepContext,
  work: (session: BarrierSession) => Promise<A>
): Effect.Effect<A, StepError> =>
  run(conn, { ...fromKey(ctx.key), op: "action" }, work).pipe(
    Effect.mapError(toStepError),
    Effect.flatMap(
      (result): Effect.Effect<A, StepError> =>
        result._tag === "Applied"
          ? Effect.succeed(result.value)
          : result._tag === "Duplicate"
            ? Effect.succeed(result.value as A)
            : result._tag === "Refused"
              ? Effect.fail(new StepBusinessError({ reason: result.reason }))
              : Effect.die(new Error("unreachable: an action cannot be a null compensation"))
    )
  )

/**
 * A saga compensation whose local work runs behind the barrier of `ctx.key` (duplicates and null
 * compensations succeed without running the work).
 * @since 0.1.0
 */
export const sagaCompensation = <A>(
  conn: Connection,
  ctx: CompensationContext<A>,
  work: (session: BarrierSession) => Promise<unknown>
): Effect.Effect<void, StepError> =>
  run(conn, { ...fromKey(ctx.key), op: "compensation" }, work).pipe(
    Effect.mapError(toStepError),
    Effect.asVoid
  )
