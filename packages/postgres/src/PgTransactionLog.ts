/**
 * The coordinator log (`TransactionLog`) in a PostgreSQL database (postgres.js) or PGlite.
 *
 * `decide` is `insert ... on conflict (tx_id) do nothing returning`, then a read of the row that
 * holds when the insert lost: the first writer wins, whether it is a coordinator's commit or
 * recovery's presumed abort. The insert runs with `synchronous_commit = on` forced for its own
 * transaction (`set_config(..., true)` inside the statement: one round trip, same effect as
 * `SET LOCAL`), so a commit decision is on disk before any branch is told to commit, whatever the
 * database's default.
 *
 * Completion (`completion`): `complete` only queues the txId and returns; one writer fiber marks
 * queued transactions completed, one `update ... where tx_id = any($1)` per batch, not forced
 * (`synchronous_commit = off`). A lone completion is written at once; completions queued while a
 * write is in flight go in the next one. Reads of this log (`decision`, `unfinished`, `completed`,
 * `purge`) first wait until every completion queued before them is written (at most 5 s: past it,
 * e.g. a completion write hung on a connection that stopped answering, the read goes on without
 * them, logged as a warning, and they read as unfinished), and closing the log's scope writes what
 * is still queued (waiting at most 5 s), so within a process a completion is seen as soon as
 * `complete` returns. Another process may see it a little later. A completion that is
 * never written (crash, failed write: logged as a warning and dropped) leaves the decision
 * unfinished, which only makes recovery re-drive idempotent COMMIT/ROLLBACK PREPAREDs.
 * `completion: "immediate"` writes each completion before `complete` returns, as one update.
 *
 * Sharing: several coordinator processes may use one log database at once. Keys are ULIDs (no
 * coordination needed to make them), every decision is a first-writer-wins insert, and recovery in
 * any process goes through the same key, so no lease is needed for correctness.
 *
 * Group commit (`groupCommit`): concurrent decisions are written by ONE multi-row insert (one WAL
 * flush). A decision that finds no insert in flight is written at once, by its caller;
 * decisions arriving while a write is in flight form the next batch (up to `maxBatch`), which
 * waits at most `maxWait` for company. First writer wins still holds row by row. Closing the log
 * answers every queued decision: "log closed" when it was never sent, "may or may not have been
 * written" when its batch was being written (the insert is cancelled; recovery decides).
 *
 * `decide` is the Effect twin of a started Promise (`direct.decide`, with or without group
 * commit): the coordinator bounds the commit decision's write by the transaction's deadline with
 * one timer and no fiber.
 *
 * @since 0.1.0
 */
import { Participant, TransactionError, TransactionLog as CoreLog } from "@accord/core"
import type { PGlite } from "@electric-sql/pglite"
import {
  Cause,
  Chunk,
  Deferred,
  Duration,
  Effect,
  Either,
  Exit,
  Layer,
  Option,
  Queue,
  type Scope
} from "effect"
import type postgres from "postgres"
import {
  type Client,
  defaultCancelTimeout,
  fromPglite,
  fromPostgres,
  runScript,
  transformRefusal,
  type Send,
  startVia,
  statement,
  viaPromise
} from "./internal/client.js"
import { type PgFailure, toFailure } from "./internal/errors.js"
import * as Migrations from "./Migrations.js"

/**
 * Group commit settings.
 * @since 0.1.0
 */
export interface GroupCommit {
  /** How long a batch that already has company waits for more. Default 200 µs (below 1 ms: one event-loop turn). */
  readonly maxWait?: Duration.DurationInput
  /** Most decisions in one insert. Default 64. */
  readonly maxBatch?: number
  /** Inserts in flight at once (each a batch): one forms while another is flushed. Default 2. */
  readonly writers?: number
}

/**
 * Options of a Postgres log.
 * @since 0.1.0
 */
export interface Options {
  /** Batch concurrent decisions into one forced write; `true` for the defaults. */
  readonly groupCommit?: GroupCommit | boolean
  /** Run the log-table migration in `make` (default true). */
  readonly migrate?: boolean
  /**
   * How `complete` writes. `"batched"` (default): `complete` queues the txId and returns at once; a
   * writer fiber completes queued transactions in one update per batch (up to 256), and this log's
   * reads wait for what was queued before them. `"immediate"`: `complete` waits for its own update.
   * Either way a completion is not forced to disk.
   */
  readonly completion?: "batched" | "immediate"
  /**
   * Batched completion: how long a batch with room left waits for more completions before its
   * update is sent (default 20 ms, at most 60 s; 0 = write at once). This takes the
   * per-transaction completion statement off a lightly loaded coordinator too; a read of this log
   * (`unfinished`, ...) cuts the wait short, and another process's recovery would at worst
   * re-drive idempotent commits.
   */
  readonly completionGather?: Duration.DurationInput
}

type LogService = CoreLog.TransactionLog["Type"]

/**
 * The log service plus housekeeping used by `PgRecovery`.
 * @since 0.1.0
 */
export interface PgTransactionLog extends LogService {
  /** Completed decisions, oldest completion first (their markers may be forgotten). */
  readonly completed: (options?: {
    readonly limit?: number
    /** Only decisions completed at least this long ago. */
    readonly olderThanMillis?: number
    /**
     * Only decisions every branch of which is named here (a recovery's own participants): without
     * it, the oldest `limit` completed decisions of other services' participants, which this
     * recovery may not purge, would fill every page for good.
     */
    readonly branches?: ReadonlyArray<string>
    /**
     * Leaves out decisions with a branch named `branch` whose gid matches the LIKE pattern
     * `gidLike` (e.g. `TransactionId.gidLikePattern(namespace)`): another deployment's, sharing
     * this log under the same participant names in another gid namespace, which would otherwise
     * fill every page just the same.
     */
    readonly excluding?: ReadonlyArray<{ readonly branch: string; readonly gidLike: string }>
  }) => Effect.Effect<ReadonlyArray<CoreLog.DecisionRecord>, TransactionError.LogError>
  /** Deletes completed decisions; returns how many. */
  readonly purge: (
    txIds: ReadonlyArray<CoreLog.DecisionRecord["txId"]>
  ) => Effect.Effect<number, TransactionError.LogError>
}

const COLUMNS =
  "tx_id, decision, branches, round(extract(epoch from decided_at) * 1000)::float8 as decided_at_ms, " +
  "round(extract(epoch from completed_at) * 1000)::float8 as completed_at_ms"

/**
 * A batch's rows are inserted in txId order, then arrival order (within one txId the first record
 * is the one inserted, the rest lose to it). Each insert waits for another writer's uncommitted
 * row of the same txId: two processes' batches holding the same transactions in different orders
 * (recovery presuming abort while the live coordinator commits) would otherwise wait on each
 * other, a deadlock (40P01) that fails one batch.
 */
const DECIDE_SQL = `insert into accord_decision (tx_id, decision, branches, decided_at)
select d.tx_id, d.decision, d.branches::jsonb, to_timestamp(d.decided_at_ms / 1000.0)
from unnest($1::text[], $2::text[], $3::text[], $4::float8[]) with ordinality as d(tx_id, decision, branches, decided_at_ms, n),
     (select set_config('synchronous_commit', 'on', true) as forced) as f
where f.forced is not null
order by d.tx_id, d.n
on conflict (tx_id) do nothing
returning tx_id`
/**
 * `DECIDE_SQL` for one record (the usual case without group commit): no arrays to unnest. The
 * branches go as text cast to jsonb on the server: a `$3::jsonb` parameter would make postgres.js
 * JSON-encode the already encoded text again and store a jsonb string, not the array.
 */
const DECIDE_ONE_SQL = `insert into accord_decision (tx_id, decision, branches, decided_at)
select $1::text, $2::text, $3::text::jsonb, to_timestamp($4::float8 / 1000.0)
from (select set_config('synchronous_commit', 'on', true) as forced) as f
where f.forced is not null
on conflict (tx_id) do nothing
returning tx_id`
const READ_SQL = `select ${COLUMNS} from accord_decision where tx_id = any($1::text[])`
const COMPLETE_SQL = `update accord_decision set completed_at = now()
from (select set_config('synchronous_commit', 'off', true) as relaxed) as f
where tx_id = $1 and completed_at is null and f.relaxed is not null`
const COMPLETE_MANY_SQL = `update accord_decision set completed_at = now()
from (select set_config('synchronous_commit', 'off', true) as relaxed) as f
where tx_id = any($1::text[]) and completed_at is null and f.relaxed is not null`
/**
 * One page of unfinished decisions in the order of (decided_at, tx_id), served by the partial index
 * `accord_decision_unfinished (decided_at) where completed_at is null`: an index range scan from the
 * cursor's decided_at, then an incremental sort on tx_id within equal decided_at (checked by
 * `test/logUnfinishedPaging.test.ts`; so no index on (decided_at, tx_id), which an upgrade would have
 * to build on a live log table). The `after` form continues past the cursor decision, compared
 * with its own stored `decided_at` (microseconds), not with the record's `decidedAt` (rounded to
 * milliseconds): after a row written with sub-millisecond precision (by hand, or another tool)
 * the next page would otherwise start before it again, or past rows it should hold. Only when the
 * cursor's row is gone (purged meanwhile, so completed) is its millisecond value used, exact for
 * what `decide` writes (`to_timestamp(ms / 1000.0)`).
 * Two statements rather than one with `$3 is null or ...`: a generic plan would not narrow the scan.
 */
const UNFINISHED_SQL = `select ${COLUMNS} from accord_decision
where completed_at is null and decided_at <= now() - make_interval(secs => $1::float8)
order by decided_at, tx_id limit $2`
const UNFINISHED_AFTER_SQL = `select ${COLUMNS} from accord_decision
where completed_at is null and decided_at <= now() - make_interval(secs => $1::float8)
  and (decided_at, tx_id) > (
    coalesce(
      (select c.decided_at from accord_decision c where c.tx_id = $3::text),
      to_timestamp($4::float8 / 1000.0)),
    $3::text)
order by decided_at, tx_id limit $2`
const COMPLETED_SQL = `select ${COLUMNS} from accord_decision
where completed_at is not null and completed_at <= now() - make_interval(secs => $2::float8)
order by completed_at limit $1`
/**
 * `COMPLETED_SQL` for some branches: `$3` the branch names every branch must have (null: any),
 * `$4`/`$5` (branch, gid LIKE pattern) pairs no branch may match (see `completed`'s `excluding`).
 */
const COMPLETED_OF_SQL = `select ${COLUMNS} from accord_decision
where completed_at is not null and completed_at <= now() - make_interval(secs => $2::float8)
  and not exists (
    select 1 from jsonb_array_elements(branches) b
    where ($3::text[] is not null and not (b->>'branch' = any($3::text[])))
       or exists (
         select 1 from unnest($4::text[], $5::text[]) x(branch, gid_like)
         where b->>'branch' = x.branch and b->>'gid' like x.gid_like))
order by completed_at limit $1`
const PURGE_SQL = `with gone as (delete from accord_decision where tx_id = any($1::text[]) and completed_at is not null returning 1)
select count(*)::int as deleted from gone`
/**
 * Written once: the unique index `accord_heuristic_once` (tx_id, gid, decision, md5(detail)) turns a
 * second insert of the same record (another recovery, or the coordinator and a recovery) into
 * nothing. No conflict target: on a database migrated ahead of time by an older Accord (no unique
 * index yet) the insert still succeeds, rather than failing every recovery pass.
 */
const HEURISTIC_INSERT_SQL = `insert into accord_heuristic (tx_id, branch, gid, decision, detail) values ($1, $2, $3, $4, $5)
on conflict do nothing`
const HEURISTICS_SQL = "select tx_id, branch, gid, decision, detail from accord_heuristic order by id"

interface DecisionRow {
  readonly tx_id: string
  readonly decision: string
  readonly branches: unknown
  readonly decided_at_ms: number
  readonly completed_at_ms: number | null
}

const toRecord = (row: DecisionRow): CoreLog.DecisionRecord => ({
  txId: row.tx_id as CoreLog.DecisionRecord["txId"],
  decision: row.decision === "commit" ? "commit" : "abort",
  // A jsonb string holding the array: what single decisions were stored as before DECIDE_ONE_SQL
  // cast its text parameter on the server; such rows are still read right.
  branches: (typeof row.branches === "string"
    ? JSON.parse(row.branches)
    : row.branches) as CoreLog.DecisionRecord["branches"],
  decidedAt: Number(row.decided_at_ms),
  ...(row.completed_at_ms === null || row.completed_at_ms === undefined
    ? {}
    : { completedAt: Number(row.completed_at_ms) })
})

const logError = (operation: string, txId?: string) => (failure: PgFailure) =>
  new TransactionError.LogError({ operation, txId, reason: failure.message })

const build = (client: Client, options: Options) =>
  Effect.gen(function* () {
    const cancelTimeout = defaultCancelTimeout
    const query = <T>(text: string, params?: ReadonlyArray<unknown>) =>
      statement<T>(client, text, params, cancelTimeout)

    if (options.migrate !== false) {
      // Cancelled when interrupted (a set-up abandoned past its bound), not left waiting on a lock.
      yield* runScript(client, Migrations.logDdl, cancelTimeout).pipe(
        Effect.mapError(toFailure),
        Effect.mapError(
          (failure) => new TransactionError.LogError({ operation: "migrate", reason: failure.message })
        )
      )
    }

    /**
     * Writes a batch; returns, per input record, the decision that holds. One Promise for the
     * statements (this is on every transaction's path); abandoned, the statement in flight is
     * cancelled. A record whose insert lost but whose row is gone by the read (purged in between:
     * the other writer's transaction had completed) is inserted again, so what comes back is
     * always a decision that is in the log, never the caller's own record unwritten.
     */
    const cancelMs = Duration.toMillis(cancelTimeout)
    const writeBody =
      (records: ReadonlyArray<CoreLog.DecisionRecord>) =>
      async (
        send: Send
      ): Promise<Either.Either<ReadonlyArray<CoreLog.DecisionRecord>, TransactionError.LogError>> => {
        const failed = logError("decide", records.length === 1 ? records[0]!.txId : undefined)
        const branches = (r: CoreLog.DecisionRecord) =>
          JSON.stringify(r.branches.map((b) => ({ branch: b.branch, gid: b.gid })))
        const holding = new Map<string, CoreLog.DecisionRecord>()
        let pending = records
        for (let attempt = 0; attempt < 3 && pending.length > 0; attempt++) {
          const one = pending.length === 1 ? pending[0]! : undefined
          const inserted = await (one !== undefined
            ? send<{ tx_id: string }>(DECIDE_ONE_SQL, [one.txId, one.decision, branches(one), one.decidedAt])
            : send<{ tx_id: string }>(DECIDE_SQL, [
                pending.map((r) => r.txId),
                pending.map((r) => r.decision),
                pending.map(branches),
                pending.map((r) => r.decidedAt)
              ]))
          if (!inserted.ok) return Either.left(failed(inserted.failure))
          const won = new Set(inserted.value.map((r) => r.tx_id))
          // Within one batch the first record of a txId is the one inserted; the rest lost to it.
          const losers: Array<string> = []
          for (const r of pending) {
            if (won.has(r.txId)) {
              if (!holding.has(r.txId)) holding.set(r.txId, r)
            } else losers.push(r.txId)
          }
          if (losers.length > 0) {
            const rows = await send<DecisionRow>(READ_SQL, [losers])
            if (!rows.ok) return Either.left(failed(rows.failure))
            for (const row of rows.value) holding.set(row.tx_id, toRecord(row))
          }
          pending = pending.filter((r) => !holding.has(r.txId))
        }
        if (pending.length > 0) {
          return Either.left(
            failed({
              sqlState: undefined,
              connectionLost: false,
              message:
                records.length === 1
                  ? "the decision lost its insert three times and was gone each time by the read"
                  : `the decisions of ${pending.map((r) => r.txId).join(", ")} in this batch lost their insert three times and were gone each time by the read`
            })
          )
        }
        return Either.right(records.map((r) => holding.get(r.txId)!))
      }
    const writeBatch = (records: ReadonlyArray<CoreLog.DecisionRecord>) =>
      viaPromise(client, cancelMs, writeBody(records))
    // One decision as a started Promise: the core bounds it by the transaction's deadline with a
    // timer, no fiber (`TransactionLog` `direct`); `decide` is its Effect twin.
    const startDecide = (
      record: CoreLog.DecisionRecord
    ): Participant.Started<CoreLog.DecisionRecord, TransactionError.LogError> => {
      const started = startVia(client, cancelMs, writeBody([record]))
      return { result: started.result.then(Either.map((rows) => rows[0]!)), abandon: started.abandon }
    }

    // With group commit, a decision that finds no insert in flight is still written at once by
    // `startDecide`; the others queue for the writers. Either way `decide` is the Effect twin of a
    // started Promise, so the coordinator bounds it with one timer and no fiber.
    const settings =
      options.groupCommit === undefined || options.groupCommit === false
        ? undefined
        : options.groupCommit === true
          ? {}
          : options.groupCommit
    const start =
      settings === undefined
        ? startDecide
        : yield* batcher(
            writeBatch,
            startDecide,
            Duration.decode(settings.maxWait ?? Duration.micros(200n)),
            Math.max(1, settings.maxBatch ?? 64),
            Math.max(1, settings.writers ?? 2)
          )
    const decide = (record: CoreLog.DecisionRecord) => Participant.fromStarted(() => start(record))

    // `complete` is a started Promise too (queued, or one statement), so the coordinator bounds it
    // with a timer and no fiber; the Effect `complete` is its twin.
    const completeOne = (txId: string): Participant.Started<void, TransactionError.LogError> =>
      startVia(client, cancelMs, async (send) => {
        const done = await send(COMPLETE_SQL, [txId])
        return done.ok ? Either.void : Either.left(logError("complete", txId)(done.failure))
      })
    const completion =
      options.completion === "immediate"
        ? { complete: completeOne, flush: Effect.void }
        : yield* completer(
            (txIds) => query(COMPLETE_MANY_SQL, [txIds]).pipe(Effect.mapError(logError("complete"))),
            completeOne,
            Duration.toMillis(Duration.decode(options.completionGather ?? Duration.millis(20)))
          )
    const { flush } = completion
    const complete = (txId: CoreLog.DecisionRecord["txId"]) =>
      Participant.fromStarted(() => completion.complete(txId))
    const direct = { decide: start, complete: completion.complete, twins: { decide, complete } }

    const log: PgTransactionLog = {
      // No span here: this is on every transaction's path; the run's span times the decision.
      decide,
      direct,
      decision: (txId) =>
        flush.pipe(
          Effect.zipRight(query<DecisionRow>(READ_SQL, [[txId]])),
          Effect.map((rows) => Option.map(Option.fromNullable(rows[0]), toRecord)),
          Effect.mapError(logError("decision", txId))
        ),
      complete,
      completeMany: (txIds) =>
        query(COMPLETE_MANY_SQL, [txIds]).pipe(
          Effect.asVoid,
          Effect.mapError(logError("complete")),
          Effect.withSpan("PgTransactionLog.completeMany", { attributes: { count: txIds.length } })
        ),
      unfinished: (opts) =>
        flush.pipe(
          Effect.zipRight(
            opts?.after === undefined
              ? query<DecisionRow>(UNFINISHED_SQL, [(opts?.olderThanMillis ?? 0) / 1000, opts?.limit ?? null])
              : query<DecisionRow>(UNFINISHED_AFTER_SQL, [
                  (opts.olderThanMillis ?? 0) / 1000,
                  opts.limit ?? null,
                  opts.after.txId,
                  opts.after.decidedAt
                ])
          ),
          Effect.map((rows) => rows.map(toRecord)),
          Effect.mapError(logError("unfinished"))
        ),
      recordHeuristic: (h) =>
        query(HEURISTIC_INSERT_SQL, [h.txId, h.branch, h.gid, h.decision, h.detail]).pipe(
          Effect.asVoid,
          Effect.mapError(logError("recordHeuristic", h.txId))
        ),
      heuristics: query<{ tx_id: string; branch: string; gid: string; decision: string; detail: string }>(
        HEURISTICS_SQL
      ).pipe(
        Effect.map((rows) =>
          rows.map(
            (row): CoreLog.HeuristicRecord => ({
              txId: row.tx_id as CoreLog.HeuristicRecord["txId"],
              branch: row.branch as CoreLog.HeuristicRecord["branch"],
              gid: row.gid as CoreLog.HeuristicRecord["gid"],
              decision: row.decision === "commit" ? "commit" : "abort",
              detail: row.detail
            })
          )
        ),
        Effect.mapError(logError("heuristics"))
      ),
      completed: (opts) =>
        flush.pipe(
          Effect.zipRight(
            opts?.branches === undefined && (opts?.excluding ?? []).length === 0
              ? query<DecisionRow>(COMPLETED_SQL, [opts?.limit ?? 1000, (opts?.olderThanMillis ?? 0) / 1000])
              : query<DecisionRow>(COMPLETED_OF_SQL, [
                  opts?.limit ?? 1000,
                  (opts?.olderThanMillis ?? 0) / 1000,
                  opts?.branches ?? null,
                  (opts?.excluding ?? []).map((x) => x.branch),
                  (opts?.excluding ?? []).map((x) => x.gidLike)
                ])
          ),
          Effect.map((rows) => rows.map(toRecord)),
          Effect.mapError(logError("completed"))
        ),
      purge: (txIds) =>
        txIds.length === 0
          ? Effect.succeed(0)
          : flush.pipe(
              Effect.zipRight(query<{ deleted: number }>(PURGE_SQL, [txIds])),
              Effect.map((rows) => Number(rows[0]?.deleted ?? 0)),
              Effect.mapError(logError("purge"))
            )
    }
    return log
  })

interface Pending {
  readonly record: CoreLog.DecisionRecord
  readonly settle: (exit: Exit.Exit<CoreLog.DecisionRecord, TransactionError.LogError>) => void
}

type Started = Participant.Started<CoreLog.DecisionRecord, TransactionError.LogError>

/**
 * `writers` fibers drain the queue: whatever queued while the writes were in flight goes in the
 * next insert. A lone decision is written at once (`startOne`). Returns `decide` as a started
 * Promise: a queued decision settles when its batch does; abandoned while queued, it settles at
 * once (it may still be written with its batch: the first writer wins, recovery reads what holds).
 */
const batcher = (
  writeBatch: (
    records: ReadonlyArray<CoreLog.DecisionRecord>
  ) => Effect.Effect<ReadonlyArray<CoreLog.DecisionRecord>, TransactionError.LogError>,
  startOne: (record: CoreLog.DecisionRecord) => Started,
  maxWait: Duration.Duration,
  maxBatch: number,
  writers: number
) =>
  Effect.gen(function* () {
    const queue = yield* Queue.unbounded<Pending>()
    /** Inserts in flight (the writers' and direct ones). */
    let busy = 0
    // Setting a sub-millisecond timer is not possible in Node: below 1 ms, wait one scheduler turn.
    // A plain timer, not Effect's Clock: under a TestClock a batch with company would wait for ever.
    const wait = Duration.lessThan(maxWait, Duration.millis(1))
      ? Effect.yieldNow()
      : realSleep(Duration.toMillis(maxWait))
    const closedError = (txId: string) =>
      new TransactionError.LogError({ operation: "decide", txId, reason: "log closed" })
    const write = (batch: Array<Pending>) =>
      Effect.gen(function* () {
        if (batch.length > 1 && batch.length < maxBatch && Duration.greaterThan(maxWait, Duration.zero)) {
          yield* wait
          batch.push(...Chunk.toArray(yield* Queue.takeUpTo(queue, maxBatch - batch.length)))
        }
        busy++
        const exit = yield* Effect.exit(writeBatch(batch.map((p) => p.record))).pipe(
          Effect.ensuring(Effect.sync(() => busy--))
        )
        for (const [i, p] of batch.entries()) p.settle(Exit.map(exit, (rows) => rows[i]!))
      })
    // A batch taken from the queue is settled on every path: a writer interrupted by the log's
    // close (its insert cancelled, or still gathering) answers each of its decisions that it may or
    // may not have been written, instead of leaving their callers waiting for ever. The take and
    // the installing of that answer are one step (masked), so no batch falls between them.
    const writer = Effect.uninterruptibleMask((restore) =>
      Effect.flatMap(restore(Queue.takeBetween(queue, 1, maxBatch)), (taken) => {
        const batch = Chunk.toArray(taken)
        return restore(write(batch)).pipe(
          Effect.onInterrupt(() =>
            Effect.sync(() => {
              for (const p of batch) {
                p.settle(
                  Exit.fail(
                    new TransactionError.LogError({
                      operation: "decide",
                      txId: p.record.txId,
                      reason:
                        "the log was closed while this decision was being written: it may or may not have been written; recovery decides"
                    })
                  )
                )
              }
            })
          )
        )
      })
    ).pipe(Effect.forever)
    for (let i = 0; i < writers; i++) yield* Effect.forkScoped(writer)
    yield* Effect.addFinalizer(() =>
      Effect.gen(function* () {
        const left = yield* Queue.takeAll(queue)
        for (const p of left) p.settle(Exit.fail(closedError(p.record.txId)))
        yield* Queue.shutdown(queue)
      })
    )
    return (record: CoreLog.DecisionRecord): Started => {
      if (busy === 0) {
        // No insert in flight: write at once (no queue, no hand-off), so a lone transaction pays
        // nothing for group commit; the ones arriving meanwhile queue up.
        busy++
        const started = startOne(record)
        return {
          result: started.result.finally(() => {
            busy--
          }),
          abandon: started.abandon
        }
      }
      let resolve: (answer: Either.Either<CoreLog.DecisionRecord, TransactionError.LogError>) => void =
        () => {}
      const result = new Promise<Either.Either<CoreLog.DecisionRecord, TransactionError.LogError>>((r) => {
        resolve = r
      })
      let settled = false
      const answer = (value: Either.Either<CoreLog.DecisionRecord, TransactionError.LogError>) => {
        if (settled) return
        settled = true
        resolve(value)
      }
      // A batch's failure names no transaction: each caller's error names its own.
      const own = (error: TransactionError.LogError) =>
        error.txId === undefined
          ? new TransactionError.LogError({
              operation: error.operation,
              txId: record.txId,
              reason: error.reason
            })
          : error
      const settle = (exit: Exit.Exit<CoreLog.DecisionRecord, TransactionError.LogError>) =>
        answer(
          Exit.isSuccess(exit)
            ? Either.right(exit.value)
            : Either.left(
                Option.getOrElse(
                  Option.map(Cause.failureOption(exit.cause), own),
                  () =>
                    new TransactionError.LogError({
                      operation: "decide",
                      txId: record.txId,
                      reason: Cause.pretty(exit.cause)
                    })
                )
              )
        )
      if (!Queue.unsafeOffer(queue, { record, settle })) answer(Either.left(closedError(record.txId)))
      return {
        result,
        abandon: () =>
          answer(
            Either.left(
              new TransactionError.LogError({
                operation: "decide",
                txId: record.txId,
                reason: "abandoned while queued for a group write (it may still be written with its batch)"
              })
            )
          )
      }
    }
  })

/** Most completions in one update. */
const COMPLETE_BATCH = 256
/** How long closing the log waits for queued completions to be written. */
const CLOSE_FLUSH_TIMEOUT = Duration.seconds(5)
/**
 * How long a read of this log waits for the completions queued before it. Past it the read goes
 * on without them: a completion not written yet reads as unfinished, which is what another process
 * sees anyway (recovery re-drives idempotent commits), whereas a completion write hung on a
 * connection that stopped answering would otherwise hold every read, recovery's scan included,
 * until the network gave up on that connection (minutes or more).
 */
const READ_FLUSH_MILLIS = 5_000

/** A plain timer as an Effect (not Effect's Clock: a TestClock must not stall the log), cleared when interrupted. */
const realSleep = (millis: number) =>
  Effect.async<void>((resume) => {
    const timer = setTimeout(() => resume(Effect.void), millis)
    return Effect.sync(() => clearTimeout(timer))
  })

/**
 * One writer fiber drains the completion queue, one update per batch: it takes what is queued as
 * soon as it is idle (no timer), so a lone completion is written at once and completions queued
 * during a write go in the next. `flush` waits until every completion queued before it has been
 * written, or dropped after a failed write: `enqueued` and `settled` count them, in queue order.
 */
/** A completion handed to the background writer: answered at once (it is not forced). */
const queued: Participant.Started<void, never> = { result: Promise.resolve(Either.void), abandon: () => {} }

const completer = (
  writeMany: (txIds: ReadonlyArray<string>) => Effect.Effect<unknown, TransactionError.LogError>,
  writeOne: (txId: string) => Participant.Started<void, TransactionError.LogError>,
  gatherMillis: number
) =>
  Effect.gen(function* () {
    const queue = yield* Queue.unbounded<string>()
    let enqueued = 0
    let settled = 0
    let closed = false
    let waiters: Array<{ readonly upTo: number; readonly done: Deferred.Deferred<void> }> = []

    const release = Effect.suspend(() => {
      const ready = waiters.filter((w) => w.upTo <= settled)
      waiters = waiters.filter((w) => w.upTo > settled)
      return Effect.forEach(ready, (w) => Deferred.succeed(w.done, undefined), { discard: true })
    })

    // A batch smaller than COMPLETE_BATCH waits up to `gatherMillis` for company (a plain timer, not
    // Effect's Clock: a TestClock must not stall the log); a read that needs it cuts the wait short.
    let hurry: (() => void) | undefined
    const gather = Effect.promise(
      () =>
        new Promise<void>((resolve) => {
          const timer = setTimeout(
            () => {
              hurry = undefined
              resolve()
            },
            Math.min(gatherMillis, 60_000)
          )
          hurry = () => {
            hurry = undefined
            clearTimeout(timer)
            resolve()
          }
        })
    )

    const flush = Effect.suspend(() => {
      const upTo = enqueued
      if (settled >= upTo) return Effect.void
      hurry?.()
      return Deferred.make<void>().pipe(
        Effect.flatMap((done) =>
          // Checked again with the push, in one step: the writer may have settled meanwhile.
          Effect.suspend(() => {
            if (settled >= upTo) return Effect.void
            waiters.push({ upTo, done })
            return Deferred.await(done)
          })
        )
      )
    })

    // A read's flush: bounded (READ_FLUSH_MILLIS), then the read goes on with a warning. Until the
    // writer settles anything more, later reads do not wait again (`stalledAt`): each would pay the
    // whole bound behind the same hung write.
    let stalledAt = -1
    const flushForRead = Effect.suspend(() =>
      settled >= enqueued || settled === stalledAt
        ? Effect.void
        : Effect.raceFirst(
            flush.pipe(Effect.as(true)),
            realSleep(READ_FLUSH_MILLIS).pipe(Effect.as(false))
          ).pipe(
            Effect.flatMap((written) => {
              if (written) return Effect.void
              stalledAt = settled
              return Effect.logWarning(
                `PgTransactionLog: queued completions still not written after ${READ_FLUSH_MILLIS} ms; reading without them (they read as unfinished)`
              )
            })
          )
    )

    const writer = Effect.gen(function* () {
      const first = yield* Queue.take(queue)
      if (
        gatherMillis > 0 &&
        !closed &&
        (yield* Queue.size(queue)) < COMPLETE_BATCH - 1 &&
        waiters.length === 0
      ) {
        yield* gather
      }
      const batch = [first, ...(yield* Queue.takeUpTo(queue, COMPLETE_BATCH - 1))]
      const exit = yield* Effect.exit(writeMany(batch))
      if (Exit.isFailure(exit) && !Cause.isInterruptedOnly(exit.cause)) {
        // Dropped: these decisions stay unfinished and recovery re-drives their idempotent commits.
        yield* Effect.logWarning(
          `PgTransactionLog: ${batch.length} completion(s) not written; recovery will finish them again`,
          exit.cause
        )
      }
      settled += batch.length
      yield* release
    }).pipe(Effect.forever)
    yield* Effect.forkScoped(writer)

    // Added after the fork, so it runs before the writer is interrupted.
    yield* Effect.addFinalizer(() =>
      Effect.gen(function* () {
        closed = true
        // Interruptible, or the timeout could not end the wait: a finalizer runs uninterruptibly, so a
        // writer hung on a connection that stopped answering would hold the close for ever.
        yield* flush.pipe(Effect.interruptible, Effect.timeout(CLOSE_FLUSH_TIMEOUT), Effect.ignore)
        // Nothing more will be written: no read may wait for it.
        settled = Math.max(settled, enqueued)
        yield* release
        yield* Queue.shutdown(queue)
      })
    )

    return {
      complete: (txId: string): Participant.Started<void, TransactionError.LogError> => {
        // After the scope closed, there is no writer: write directly.
        if (closed) return writeOne(txId)
        enqueued++
        Queue.unsafeOffer(queue, txId)
        return queued
      },
      flush: flushForRead
    }
  })

/**
 * A log on a postgres.js pool (creates its tables unless `migrate: false`). Scoped: group commit
 * and batched completion run writer fibers for the scope's lifetime; closing the scope writes the
 * completions still queued.
 * @since 0.1.0
 */
export const make = (
  options: Options & { readonly sql: postgres.Sql }
): Effect.Effect<PgTransactionLog, TransactionError.LogError, Scope.Scope> => {
  const refused = transformRefusal(options.sql, "PgTransactionLog")
  return refused === undefined
    ? build(fromPostgres(options.sql), options)
    : Effect.fail(new TransactionError.LogError({ operation: "make", reason: refused }))
}

/**
 * A log on a PGlite instance (not durable: PGlite runs with fsync off).
 * @since 0.1.0
 */
export const makePglite = (
  db: PGlite,
  options: Options = {}
): Effect.Effect<PgTransactionLog, TransactionError.LogError, Scope.Scope> => build(fromPglite(db), options)

/**
 * The core `TransactionLog` service on a postgres.js pool.
 * @since 0.1.0
 */
export const layer = (
  options: Options & { readonly sql: postgres.Sql }
): Layer.Layer<CoreLog.TransactionLog, TransactionError.LogError> =>
  Layer.scoped(CoreLog.TransactionLog, make(options))

/**
 * The core `TransactionLog` service on PGlite.
 * @since 0.1.0
 */
export const layerPglite = (
  db: PGlite,
  options: Options = {}
): Layer.Layer<CoreLog.TransactionLog, TransactionError.LogError> =>
  Layer.scoped(CoreLog.TransactionLog, makePglite(db, options))
