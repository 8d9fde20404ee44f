/**
 * The saga log: the durable history of every saga, from which a crashed orchestrator's sagas are
 * resumed (docs/saga.md).
 *
 * Records are appended in order per saga: `SagaStarted(input)`, `StepStarted`, `StepCompleted(output)`,
 * `StepFailed(failure)`, `CompensationStarted`, `CompensationCompleted`, `SagaEnded(outcome)`, and
 * `OperatorAction` for a human clearing a stuck saga. `StepStarted` is written (forced) *before* an
 * action runs: a step started without a completion is in doubt, it may have acted.
 *
 * Ownership: a running saga has one owner holding a lease (`owner`, `leaseUntil`). The owner renews
 * the lease while it works; appends are fenced by owner (a process that lost its lease cannot write);
 * a saga whose lease expired is *abandoned* and another orchestrator claims it (`claimAbandoned`).
 * The log compares owners as plain strings; `Saga` gives every drive of a saga (run, resume, sweep,
 * operator action) an owner of its own, `<configured owner>/<kind>-<token>`, so that two drives
 * under one configured owner fence each other like any two orchestrators.
 *
 * @since 0.1.0
 */
import { Clock, Context, Data, Duration, Effect, Layer, Option, Ref, Schema } from "effect"
import type { Outcome, StepFailure } from "./Saga.js"
import type { LogError } from "./TransactionError.js"

/**
 * One record of a saga's history. `StepCompleted.output` (and a `Completed` outcome's outputs) is
 * plain JSON: the step's output, encoded with its `output` schema when it has one.
 * @since 0.1.0
 */
export type SagaRecord = Data.TaggedEnum<{
  SagaStarted: { readonly sagaId: string; readonly sagaType: string; readonly input: unknown }
  StepStarted: { readonly sagaId: string; readonly step: string }
  StepCompleted: { readonly sagaId: string; readonly step: string; readonly output: unknown }
  StepFailed: { readonly sagaId: string; readonly step: string; readonly failure: StepFailure }
  CompensationStarted: { readonly sagaId: string; readonly step: string }
  CompensationCompleted: { readonly sagaId: string; readonly step: string }
  SagaEnded: { readonly sagaId: string; readonly outcome: Outcome }
  OperatorAction: { readonly sagaId: string; readonly action: "retry" | "resolve"; readonly note: string }
}>
/** @since 0.1.0 */
export const SagaRecord = Data.taggedEnum<SagaRecord>()

/**
 * Where a saga stands: running (or abandoned, if its lease expired) or ended.
 * @since 0.1.0
 */
export type SagaStatus = "running" | "completed" | "compensated" | "stuck"

/**
 * A saga as the log knows it.
 * @since 0.1.0
 */
export interface SagaHistory {
  readonly sagaId: string
  readonly sagaType: string
  readonly input: unknown
  readonly status: SagaStatus
  readonly owner: string | null
  /** Epoch milliseconds. */
  readonly leaseUntil: number | null
  readonly records: ReadonlyArray<SagaRecord>
}

/**
 * An owner and how long its lease lasts from now.
 * @since 0.1.0
 */
export interface Lease {
  readonly owner: string
  readonly leaseFor: Duration.DurationInput
}

/**
 * The caller no longer owns the saga (its lease expired and another orchestrator claimed it).
 * The caller must stop working on the saga at once.
 * @since 0.1.0
 */
export class LeaseLostError extends Schema.TaggedError<LeaseLostError>()("LeaseLostError", {
  sagaId: Schema.String,
  owner: Schema.String
}) {
  override get message(): string {
    return `saga ${this.sagaId}: ${this.owner} lost its lease`
  }
}

/**
 * The saga is owned by another live orchestrator (its lease has not expired).
 * @since 0.1.0
 */
export class SagaBusyError extends Schema.TaggedError<SagaBusyError>()("SagaBusyError", {
  sagaId: Schema.String,
  owner: Schema.String
}) {
  override get message(): string {
    // No owner: the saga has ended (or its drive stopped and it waits for a sweep); a saga id is
    // started once.
    return this.owner === ""
      ? `saga ${this.sagaId} exists already and no drive owns it (it has ended, or waits for recovery): a saga id is started once`
      : `saga ${this.sagaId} is owned by ${this.owner}`
  }
}

/**
 * The log has no saga with this id.
 * @since 0.1.0
 */
export class SagaNotFoundError extends Schema.TaggedError<SagaNotFoundError>()("SagaNotFoundError", {
  sagaId: Schema.String
}) {
  override get message(): string {
    return `no saga ${this.sagaId} in the log`
  }
}

/**
 * The saga log service.
 * @since 0.1.0
 */
export class SagaLog extends Context.Tag("@accord/core/SagaLog")<
  SagaLog,
  {
    /** Records the start (with input) and takes the lease. Fails with `SagaBusyError` if the id exists. */
    readonly start: (
      record: SagaRecord & { readonly _tag: "SagaStarted" },
      lease: Lease
    ) => Effect.Effect<void, LogError | SagaBusyError>
    /** Appends a record, forced, if `owner` still owns the saga. `SagaEnded` also sets the status and releases the lease. */
    readonly append: (record: SagaRecord, owner: string) => Effect.Effect<void, LogError | LeaseLostError>
    /** The saga's history, if the log knows it. */
    readonly load: (sagaId: string) => Effect.Effect<Option.Option<SagaHistory>, LogError>
    /**
     * Takes the lease of one saga (to resume it by id): succeeds if nobody holds a live lease, or the
     * caller's owner string already does (so an owner string must stand for one drive, never for a
     * whole process). Works on ended sagas too (an operator retrying a stuck one).
     */
    readonly claim: (
      sagaId: string,
      lease: Lease
    ) => Effect.Effect<SagaHistory, LogError | SagaBusyError | SagaNotFoundError>
    /**
     * Claims up to `limit` running sagas whose lease expired, oldest first, skipping rows others are
     * claiming. Optional filters (a log may ignore them; a sweep then ends early instead): only
     * sagas of these `types`, and none of the `exclude`d ids (sagas this sweep gave back already:
     * claimed first again, they kept every later saga from being recovered).
     */
    readonly claimAbandoned: (
      options: Lease & {
        readonly limit: number
        readonly types?: ReadonlyArray<string>
        readonly exclude?: ReadonlyArray<string>
      }
    ) => Effect.Effect<ReadonlyArray<SagaHistory>, LogError>
    /**
     * Extends the caller's lease; `false` when the caller no longer owns the saga, or (a log that can
     * receive a renewal late, such as `PgSagaLog`) when its lease had already run out: the drive has
     * given that lease up, and a late renewal must not revive it.
     */
    readonly renewLease: (sagaId: string, lease: Lease) => Effect.Effect<boolean, LogError>
    /** Gives the lease up (the saga becomes claimable at once if it is still running). */
    readonly release: (sagaId: string, owner: string) => Effect.Effect<void, LogError>
    /** Sagas by status, oldest first, without their records (e.g. `stuck` for operators). */
    readonly list: (options?: {
      readonly status?: SagaStatus
      readonly limit?: number
    }) => Effect.Effect<ReadonlyArray<SagaHistory>, LogError>
  }
>() {}

/**
 * The status a `SagaEnded` outcome leaves the saga in.
 * @since 0.1.0
 */
export const statusOf = (outcome: Outcome): SagaStatus =>
  outcome._tag === "Completed" ? "completed" : outcome._tag === "Compensated" ? "compensated" : "stuck"

interface Entry {
  sagaId: string
  sagaType: string
  input: unknown
  status: SagaStatus
  owner: string | null
  leaseUntil: number | null
  records: Array<SagaRecord>
  createdAt: number
}

const snapshot = (e: Entry, withRecords = true): SagaHistory => ({
  sagaId: e.sagaId,
  sagaType: e.sagaType,
  input: e.input,
  status: e.status,
  owner: e.owner,
  leaseUntil: e.leaseUntil,
  records: withRecords ? [...e.records] : []
})

/**
 * The in-memory log's extra operations for tests.
 * @since 0.1.0
 */
export interface MemoryExtras {
  /** Every record of every saga, in append order. */
  readonly records: Effect.Effect<ReadonlyArray<SagaRecord>>
  /** Replaces (or creates) a saga's entry: used to simulate a crash at any point of a history. */
  readonly restore: (history: SagaHistory) => Effect.Effect<void>
}

/**
 * An in-memory log for unit tests and the simulator. Not durable. Lease times come from `Clock`.
 * Records are kept as given, by reference, not copied through JSON: `Saga` hands it each step's
 * output already encoded (`output` schema) and checked as plain JSON, so a resume from it reads
 * what a resume from a durable log reads.
 * @since 0.1.0
 */
export const makeMemory: Effect.Effect<SagaLog["Type"] & MemoryExtras> = Effect.gen(function* () {
  const state = yield* Ref.make(new Map<string, Entry>())
  const all = yield* Ref.make<ReadonlyArray<SagaRecord>>([])
  const until = (lease: Lease) =>
    Clock.currentTimeMillis.pipe(
      Effect.map((now) => now + Duration.toMillis(Duration.decode(lease.leaseFor)))
    )
  const get = (sagaId: string) => Ref.get(state).pipe(Effect.map((m) => m.get(sagaId)))
  return {
    start: (record, lease) =>
      Effect.gen(function* () {
        const leaseUntil = yield* until(lease)
        const createdAt = yield* Clock.currentTimeMillis
        // Check and insert in one synchronous step: no other fiber can interleave.
        const existing = yield* Ref.modify(state, (m) => {
          const found = m.get(record.sagaId)
          if (found !== undefined) return [found, m] as const
          const next = new Map(m).set(record.sagaId, {
            sagaId: record.sagaId,
            sagaType: record.sagaType,
            input: record.input,
            status: "running",
            owner: lease.owner,
            leaseUntil,
            records: [record],
            createdAt
          })
          return [undefined, next] as const
        })
        if (existing !== undefined) {
          return yield* Effect.fail(new SagaBusyError({ sagaId: record.sagaId, owner: existing.owner ?? "" }))
        }
        yield* Ref.update(all, (rs) => [...rs, record])
      }),
    append: (record, owner) =>
      Effect.gen(function* () {
        const entry = yield* get(record.sagaId)
        if (entry === undefined || entry.owner !== owner) {
          return yield* Effect.fail(new LeaseLostError({ sagaId: record.sagaId, owner }))
        }
        entry.records.push(record)
        if (record._tag === "SagaEnded") {
          entry.status = statusOf(record.outcome)
          entry.owner = null
          entry.leaseUntil = null
        } else if (record._tag === "OperatorAction" && record.action === "retry") {
          entry.status = "running"
        }
        yield* Ref.update(all, (rs) => [...rs, record])
      }),
    load: (sagaId) =>
      get(sagaId).pipe(Effect.map((e) => Option.map(Option.fromNullable(e), (x) => snapshot(x)))),
    claim: (sagaId, lease) =>
      Effect.gen(function* () {
        const now = yield* Clock.currentTimeMillis
        const leaseUntil = yield* until(lease)
        const entry = yield* get(sagaId)
        if (entry === undefined) return yield* Effect.fail(new SagaNotFoundError({ sagaId }))
        if (entry.owner !== null && entry.owner !== lease.owner && (entry.leaseUntil ?? 0) > now) {
          return yield* Effect.fail(new SagaBusyError({ sagaId, owner: entry.owner }))
        }
        entry.owner = lease.owner
        entry.leaseUntil = leaseUntil
        return snapshot(entry)
      }),
    claimAbandoned: (options) =>
      Effect.gen(function* () {
        const now = yield* Clock.currentTimeMillis
        const leaseUntil = yield* until(options)
        const types = options.types === undefined ? undefined : new Set(options.types)
        const exclude = new Set(options.exclude ?? [])
        const entries = [...(yield* Ref.get(state)).values()]
          .filter(
            (e) =>
              e.status === "running" &&
              (e.owner === null || (e.leaseUntil ?? 0) < now) &&
              (types === undefined || types.has(e.sagaType)) &&
              !exclude.has(e.sagaId)
          )
          .sort((a, b) => a.createdAt - b.createdAt)
          .slice(0, options.limit)
        for (const e of entries) {
          e.owner = options.owner
          e.leaseUntil = leaseUntil
        }
        return entries.map((e) => snapshot(e))
      }),
    renewLease: (sagaId, lease) =>
      Effect.gen(function* () {
        const leaseUntil = yield* until(lease)
        const entry = yield* get(sagaId)
        if (entry === undefined || entry.owner !== lease.owner) return false
        entry.leaseUntil = leaseUntil
        return true
      }),
    release: (sagaId, owner) =>
      Effect.flatMap(get(sagaId), (entry) =>
        Effect.sync(() => {
          if (entry !== undefined && entry.owner === owner) {
            entry.owner = null
            entry.leaseUntil = null
          }
        })
      ),
    list: (options) =>
      Ref.get(state).pipe(
        Effect.map((m) => {
          const rows = [...m.values()]
            .filter((e) => options?.status === undefined || e.status === options.status)
            .sort((a, b) => a.createdAt - b.createdAt)
            .map((e) => snapshot(e, false))
          return options?.limit === undefined ? rows : rows.slice(0, options.limit)
        })
      ),
    records: Ref.get(all),
    restore: (history) =>
      Effect.gen(function* () {
        const createdAt = yield* Clock.currentTimeMillis
        yield* Ref.update(state, (m) =>
          new Map(m).set(history.sagaId, {
            sagaId: history.sagaId,
            sagaType: history.sagaType,
            input: history.input,
            status: history.status,
            owner: history.owner,
            leaseUntil: history.leaseUntil,
            records: [...history.records],
            createdAt
          })
        )
      })
  }
})

/**
 * A layer with a fresh in-memory log.
 * @since 0.1.0
 */
export const layerMemory: Layer.Layer<SagaLog> = Layer.effect(SagaLog, makeMemory)
