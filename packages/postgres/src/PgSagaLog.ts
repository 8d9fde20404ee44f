/**
 * The core `SagaLog` on a Postgres database (postgres.js or PGlite), tables in `SagaSchema`.
 *
 * Every write is one autocommitted statement. `SagaStarted`, `StepStarted`, `CompensationStarted`,
 * `SagaEnded` and `OperatorAction` are forced (`synchronous_commit = on` for that statement) before
 * the orchestrator acts on them: `StepStarted` is durable before the action runs, which is what
 * makes an interrupted step recognisable as in doubt, and `CompensationStarted` (with the
 * `StepFailed` before it) before a compensation runs, so that a saga that has begun to go backwards
 * never goes forward again. `StepCompleted`, `StepFailed` and `CompensationCompleted` are written
 * with `synchronous_commit = off` (`forceAll: true` forces them too): losing one in a database
 * crash only repeats an idempotent step or compensation, and the next forced record flushes them.
 *
 * Ownership: an append bumps `accord_saga.next_seq` *where owner = $owner* and inserts the record
 * with that number in the same statement; an orchestrator that lost its lease writes nothing.
 * Lease times are the database's `now()`, so orchestrators need no synchronised clocks.
 * `renewLease` extends a lease only while it is live (`lease_until > clock_timestamp()`): a renewal
 * whose drive gave up on it (held in the network, or written behind another statement on a busy pool
 * connection, where no cancel stops it) and that lands after the lease ran out does not revive it.
 * Until 2026-12-07 it did, and kept the lapsed saga from every sweep for one more lease from whenever
 * it landed (`test/leaseS22Renewal.test.ts`).
 * `claimAbandoned` picks running sagas with an expired lease `FOR UPDATE SKIP LOCKED` and takes
 * them over in one statement: concurrent sweepers never claim the same saga.
 *
 * Interruption: `Saga` bounds every log call by the lease (`leaseFor`) and interrupts it when the
 * bound passes. Every statement of a log call runs through `statement` (internal/client.ts):
 * interrupted, it is cancelled on the server (postgres.js), so a given-up write neither keeps
 * waiting on a row lock, holding its pool connection, nor lands later. The interruption does not
 * wait for the cancelled statement by default (`cancelTimeout`, option of `make`, default 0): the
 * statement is autocommitted and fenced by the lease owner, so waiting buys the drive nothing, and
 * a drive must stop within its lease even when the connection stopped answering. PGlite has no
 * cancel: its statement runs to completion. The migration in `make` (a multi-statement script,
 * under no lease) is not cancelled. Until 2026-12-06 the log's statements went through
 * `Effect.tryPromise`, which an interruption abandoned while they kept running on the server.
 *
 * @since 0.1.0
 */
import type { PGlite } from "@electric-sql/pglite"
import {
  type Lease,
  LeaseLostError,
  SagaBusyError,
  type SagaHistory,
  SagaLog,
  SagaNotFoundError,
  type SagaRecord,
  type SagaStatus
} from "@accord/core/SagaLog"
import { LogError } from "@accord/core/TransactionError"
import { Duration, Effect, Layer, Option } from "effect"
import type postgres from "postgres"
import { clientOf, runScript, statement, transformRefusal } from "./internal/client.js"
import { toFailure } from "./internal/errors.js"
import { purgeWith, type Retention } from "./internal/retention.js"
import { sagaLogDdl } from "./SagaSchema.js"

/**
 * A postgres.js pool or a PGlite instance.
 * @since 0.1.0
 */
export type PgConnection = postgres.Sql | PGlite

/**
 * Creates the saga log tables (idempotent).
 * @since 0.1.0
 */
export const migrate = (conn: PgConnection): Promise<void> =>
  clientOf(conn)
    .script(sagaLogDdl)
    .then(() => undefined)

const PURGE_SQL =
  "with gone as (delete from accord_saga where saga_id = any(array(" +
  "select saga_id from accord_saga where status in ('completed', 'compensated') " +
  "and updated_at < now() - make_interval(secs => $1::float8) limit $2" +
  ")) returning 1) select count(*)::int as n from gone"

/**
 * Deletes the sagas that ended (`completed` or `compensated`) more than `olderThan` ago by the
 * database's clock, with their records, `batch` sagas per statement (default 1,000); resolves with
 * how many went. Running and stuck sagas are never deleted (a stuck one waits for an operator).
 * Nothing is deleted otherwise, so a busy service runs this periodically.
 *
 * **The retention rule.** A saga id is also an idempotency key: `Saga.run` with the id of a saga in
 * the log is refused (`SagaBusyError`), with the id of a purged one it runs again. So `olderThan`
 * must exceed the longest time after which a caller may still retry a `run`/`execute` with the same
 * id, and the barrier rows of the same sagas should be kept at least as long (`Barrier.purge`).
 * @since 0.1.0
 */
export const purge = (conn: PgConnection, options: Retention): Promise<number> =>
  purgeWith("PgSagaLog.purge", clientOf(conn), PURGE_SQL, options)

const millis = (lease: Lease): number => Duration.toMillis(Duration.decode(lease.leaseFor))

interface SagaRow {
  readonly saga_id: string
  readonly saga_type: string
  readonly input: unknown
  readonly status: SagaStatus
  readonly owner: string | null
  readonly lease_until_ms: number | string | null
}

interface RecordRow {
  readonly kind: string
  readonly payload: Record<string, unknown>
}

const SAGA_COLUMNS =
  "saga_id, saga_type, input, status, owner, (extract(epoch from lease_until) * 1000)::float8 as lease_until_ms"

const SAGA_COLUMNS_OF_S =
  "s.saga_id, s.saga_type, s.input, s.status, s.owner, (extract(epoch from s.lease_until) * 1000)::float8 as lease_until_ms"

const statusOfRecord = (record: SagaRecord): SagaStatus | null => {
  if (record._tag === "SagaEnded") {
    const tag = record.outcome._tag
    return tag === "Completed" ? "completed" : tag === "Compensated" ? "compensated" : "stuck"
  }
  if (record._tag === "OperatorAction" && record.action === "retry") return "running"
  return null
}

const payloadOf = (record: SagaRecord): string => {
  const { _tag, sagaId, ...rest } = record
  return JSON.stringify(rest)
}

/**
 * The JSON text of `value`, or a `LogError` when `JSON.stringify` throws (a bigint, a cycle): a
 * record the log cannot write fails the write, typed, instead of killing the caller's fiber. `Saga`
 * never hands over such an output (it encodes or refuses it first); a caller's own records might.
 */
const jsonOf = (operation: string, sagaId: string, value: () => string) =>
  Effect.try({
    try: value,
    catch: (error) =>
      new LogError({
        operation,
        txId: sagaId,
        reason: `the record is not JSON: ${error instanceof Error ? error.message : String(error)}`
      })
  })

/**
 * Records that are forced (flushed to disk before the call returns): each one written before an
 * effect it announces. StepStarted must be durable before the action runs, CompensationStarted
 * before the compensation runs, SagaEnded before the caller hears the outcome. The others may be
 * lost in a crash of the *database* without harm, since the WAL is sequential and the next forced
 * record flushes them: a lost StepCompleted re-runs the step (at least once, in doubt), a lost
 * CompensationCompleted re-runs the compensation (which must be idempotent anyway).
 *
 * A lost StepFailed is harmless only while nothing has acted on it: until 2026-12-07
 * CompensationStarted was not forced either, so a crash after a compensation had run could lose
 * the whole backward path, and the resumed saga re-ran the failed step, went forward and ended
 * Completed with the earlier steps' effects compensated (`test/sagaLogForced.test.ts`).
 */
const mustForce = (record: SagaRecord): boolean =>
  record._tag === "SagaStarted" ||
  record._tag === "StepStarted" ||
  record._tag === "CompensationStarted" ||
  record._tag === "SagaEnded" ||
  record._tag === "OperatorAction"

const toHistory = (row: SagaRow, records: ReadonlyArray<RecordRow>): SagaHistory => ({
  sagaId: row.saga_id,
  sagaType: row.saga_type,
  input: row.input,
  status: row.status,
  owner: row.owner,
  leaseUntil: row.lease_until_ms === null ? null : Number(row.lease_until_ms),
  records: records.map((r) => ({ ...r.payload, _tag: r.kind, sagaId: row.saga_id }) as unknown as SagaRecord)
})

/**
 * A `SagaLog` on `conn`; runs the migration first.
 * @since 0.1.0
 */
export const make = (
  conn: PgConnection,
  options?: {
    /** Force every record, not only those that must be (default false: see `mustForce`). */
    readonly forceAll?: boolean
    /**
     * How long an interrupted statement (a log call past its bound, e.g. the lease `Saga` puts on
     * it) is waited for after its cancel is sent before the interruption returns anyway (default
     * 0: not waited for). A drive's log call fails after at most `leaseFor` + `cancelTimeout`;
     * with more than 0, the cancel's answer is awaited that long (the whole bound is spent only on
     * a connection that stopped answering).
     */
    readonly cancelTimeout?: Duration.DurationInput
  }
): Effect.Effect<SagaLog["Type"], LogError> =>
  Effect.gen(function* () {
    const refused = typeof conn === "function" ? transformRefusal(conn, "PgSagaLog") : undefined
    if (refused !== undefined) return yield* new LogError({ operation: "make", reason: refused })
    const forceAll = options?.forceAll ?? false
    const client = clientOf(conn)
    const cancelTimeout = Duration.decode(options?.cancelTimeout ?? Duration.zero)
    const query = <T>(
      operation: string,
      sagaId: string | undefined,
      text: string,
      params: ReadonlyArray<unknown>
    ) =>
      statement<T>(client, text, params, cancelTimeout).pipe(
        Effect.mapError(
          (failure) =>
            new LogError({
              operation,
              ...(sagaId === undefined ? {} : { txId: sagaId }),
              reason: failure.message
            })
        )
      )
    yield* runScript(client, sagaLogDdl, cancelTimeout).pipe(
      Effect.mapError(toFailure),
      Effect.mapError((failure) => new LogError({ operation: "migrate", reason: failure.message }))
    )

    const records = (sagaId: string) =>
      query<RecordRow>(
        "load",
        sagaId,
        "select kind, payload from accord_saga_record where saga_id = $1 order by seq",
        [sagaId]
      )

    const loadRow = (sagaId: string) =>
      query<SagaRow>("load", sagaId, `select ${SAGA_COLUMNS} from accord_saga where saga_id = $1`, [
        sagaId
      ]).pipe(Effect.map((rows) => Option.fromNullable(rows[0])))

    const load = (sagaId: string) =>
      Effect.gen(function* () {
        const row = yield* loadRow(sagaId)
        if (Option.isNone(row)) return Option.none<SagaHistory>()
        return Option.some(toHistory(row.value, yield* records(sagaId)))
      })

    const service: SagaLog["Type"] = {
      start: (record, lease) =>
        Effect.gen(function* () {
          const input = yield* jsonOf("start", record.sagaId, () => JSON.stringify(record.input ?? null))
          const payload = yield* jsonOf("start", record.sagaId, () => payloadOf(record))
          const rows = yield* query<{ seq: number }>(
            "start",
            record.sagaId,
            `with ins as (
               insert into accord_saga (saga_id, saga_type, input, status, owner, lease_until, next_seq)
               values ($1, $2, $3::text::jsonb, 'running', $4, now() + $5::float8 * interval '1 millisecond', 1)
               on conflict (saga_id) do nothing
               returning saga_id
             )
             insert into accord_saga_record (saga_id, seq, kind, step, payload)
             select saga_id, 1, 'SagaStarted', null, $6::text::jsonb
             from ins, (select set_config('synchronous_commit', 'on', true) as forced) as f
             returning seq`,
            [record.sagaId, record.sagaType, input, lease.owner, millis(lease), payload]
          )
          if (rows.length === 0) {
            const existing = yield* loadRow(record.sagaId)
            return yield* Effect.fail(
              new SagaBusyError({
                sagaId: record.sagaId,
                owner: Option.match(existing, { onNone: () => "", onSome: (r) => r.owner ?? "" })
              })
            )
          }
        }),
      append: (record, owner) =>
        Effect.gen(function* () {
          const status = statusOfRecord(record)
          const ends = record._tag === "SagaEnded"
          const payload = yield* jsonOf("append", record.sagaId, () => payloadOf(record))
          const rows = yield* query<{ seq: number }>(
            "append",
            record.sagaId,
            `with s as (
               update accord_saga set next_seq = next_seq + 1, updated_at = now(),
                 status = coalesce($5::text, status),
                 owner = case when $6::boolean then null else owner end,
                 lease_until = case when $6::boolean then null else lease_until end
               where saga_id = $1 and owner = $2
               returning next_seq
             )
             insert into accord_saga_record (saga_id, seq, kind, step, payload)
             select $1, next_seq, $3, $4, $7::text::jsonb
             from s, (select set_config('synchronous_commit', $8::text, true) as durability) as f
             returning seq`,
            [
              record.sagaId,
              owner,
              record._tag,
              "step" in record ? record.step : null,
              status,
              ends,
              payload,
              forceAll || mustForce(record) ? "on" : "off"
            ]
          )
          if (rows.length === 0)
            return yield* Effect.fail(new LeaseLostError({ sagaId: record.sagaId, owner }))
        }),
      load,
      claim: (sagaId, lease) =>
        Effect.gen(function* () {
          const rows = yield* query<SagaRow>(
            "claim",
            sagaId,
            `update accord_saga set owner = $2, lease_until = now() + $3::float8 * interval '1 millisecond', updated_at = now()
             where saga_id = $1 and (owner is null or owner = $2 or lease_until < now())
             returning ${SAGA_COLUMNS}`,
            [sagaId, lease.owner, millis(lease)]
          )
          const row = rows[0]
          if (row === undefined) {
            const existing = yield* loadRow(sagaId)
            if (Option.isNone(existing)) return yield* Effect.fail(new SagaNotFoundError({ sagaId }))
            return yield* Effect.fail(new SagaBusyError({ sagaId, owner: existing.value.owner ?? "" }))
          }
          return toHistory(row, yield* records(sagaId))
        }),
      claimAbandoned: (options) =>
        Effect.gen(function* () {
          const rows = yield* query<SagaRow>(
            "claimAbandoned",
            undefined,
            `with c as (
               select saga_id from accord_saga
               where status = 'running' and (owner is null or lease_until < now())
                 and ($4::text[] is null or saga_type = any($4::text[]))
                 and saga_id <> all($5::text[])
               order by created_at
               limit $3
               for update skip locked
             )
             update accord_saga s set owner = $1, lease_until = now() + $2::float8 * interval '1 millisecond', updated_at = now()
             from c where s.saga_id = c.saga_id
             returning ${SAGA_COLUMNS_OF_S}`,
            [options.owner, millis(options), options.limit, options.types ?? null, options.exclude ?? []]
          )
          return yield* Effect.forEach(rows, (row) =>
            Effect.map(records(row.saga_id), (rs) => toHistory(row, rs))
          )
        }),
      // Fenced by the lease being live when the row is checked (`clock_timestamp()`, not the
      // statement's start): one that lands after the lease ran out was given up by its drive, and
      // must not revive it. The new lease counts from the statement's start (`now()`), so one that
      // waited on a row lock extends it no further than from when it arrived.
      renewLease: (sagaId, lease) =>
        query<{ ok: number }>(
          "renewLease",
          sagaId,
          `update accord_saga set lease_until = now() + $3::float8 * interval '1 millisecond'
           where saga_id = $1 and owner = $2 and lease_until > clock_timestamp() returning 1 as ok`,
          [sagaId, lease.owner, millis(lease)]
        ).pipe(Effect.map((rows) => rows.length === 1)),
      release: (sagaId, owner) =>
        query(
          "release",
          sagaId,
          "update accord_saga set owner = null, lease_until = null where saga_id = $1 and owner = $2",
          [sagaId, owner]
        ).pipe(Effect.asVoid),
      list: (options) =>
        query<SagaRow>(
          "list",
          undefined,
          `select ${SAGA_COLUMNS} from accord_saga where ($1::text is null or status = $1)
           order by created_at, saga_id limit $2`,
          [options?.status ?? null, options?.limit ?? 1000]
        ).pipe(Effect.map((rows) => rows.map((r) => toHistory(r, []))))
    }
    return service
  })

/**
 * A layer providing the `SagaLog` on `conn`.
 * @since 0.1.0
 */
export const layer = (
  conn: PgConnection,
  options?: { readonly forceAll?: boolean; readonly cancelTimeout?: Duration.DurationInput }
): Layer.Layer<SagaLog, LogError> => Layer.effect(SagaLog, make(conn, options))
