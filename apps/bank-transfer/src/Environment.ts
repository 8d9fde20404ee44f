/**
 * Opens the demo's three databases (bank A, bank B, the coordinator log) on a real PostgreSQL
 * server or on embedded PGlite, checking the configuration before anything is created or seeded.
 *
 * @since 0.1.0
 */
import { join, resolve } from "node:path"
import type { Participant } from "@accord/core"
import * as PgParticipant from "@accord/postgres/PgParticipant"
import * as PgThreePhaseParticipant from "@accord/postgres/PgThreePhaseParticipant"
import * as PgTransactionLog from "@accord/postgres/PgTransactionLog"
import type { PGlite } from "@electric-sql/pglite"
import { Effect, type Scope } from "effect"
import postgres from "postgres"
import type { Db } from "./Bank.js"
import { DemoError, fromConnectError, redact } from "./DemoError.js"
import type { Options } from "./Options.js"

/**
 * One bank: its setup connection and its 2PC participant.
 * @since 0.1.0
 */
export interface BankHandle {
  readonly name: "a" | "b"
  readonly db: Db
  readonly participant: Participant.Participant<PgParticipant.PgWork>
  /** The same database as a 3PC participant (its `twoPhase` is `participant`). */
  readonly threePhase: PgThreePhaseParticipant.PgThreePhaseParticipant
  /** Where it lives, for messages. */
  readonly location: string
}

/**
 * Everything a run needs.
 * @since 0.1.0
 */
export interface Environment {
  readonly backend: "postgres" | "pglite"
  readonly banks: readonly [BankHandle, BankHandle]
  readonly log: PgTransactionLog.PgTransactionLog
  readonly coordinator: Db
  /** Raw handles, for 3PC participants built on the same connections. */
  readonly raw:
    | {
        readonly _tag: "postgres"
        readonly a: postgres.Sql
        readonly b: postgres.Sql
        readonly coordinator: postgres.Sql
      }
    | { readonly _tag: "pglite"; readonly a: PGlite; readonly b: PGlite; readonly coordinator: PGlite }
}

const fixMaxPrepared =
  "run ALTER SYSTEM SET max_prepared_transactions = 64; then restart PostgreSQL (or start it with -c max_prepared_transactions=64, as docker-compose.yml does)"

const postgresDb = (sql: postgres.Sql): Db => ({
  query: <T>(text: string, params?: ReadonlyArray<unknown>) =>
    sql.unsafe(text, (params ?? []) as Array<postgres.ParameterOrJSON<never>>) as unknown as Promise<
      Array<T>
    >,
  transaction: async (statements) => {
    await sql.begin(async (tx) => {
      for (const s of statements)
        await tx.unsafe(s.text, (s.params ?? []) as Array<postgres.ParameterOrJSON<never>>)
    })
  }
})

const pgliteDb = (db: PGlite): Db => ({
  query: async <T>(text: string, params?: ReadonlyArray<unknown>) =>
    (await db.query<T>(text, params === undefined ? undefined : [...params])).rows,
  transaction: async (statements) => {
    await db.transaction(async (tx) => {
      for (const s of statements) await tx.query(s.text, s.params === undefined ? undefined : [...s.params])
    })
  }
})

const connect = (url: string, max: number) =>
  Effect.acquireRelease(
    Effect.sync(() =>
      postgres(url, {
        max,
        connect_timeout: 5,
        idle_timeout: 30,
        onnotice: () => {},
        // A cross-database lock cycle (two transfers waiting on each other's prepared rows in
        // different banks) cannot be seen by either server; a bounded lock wait turns it into a
        // refusal (No vote) instead of a hang.
        connection: { lock_timeout: 2000, application_name: "accord-bank-transfer" }
      })
    ),
    (sql) => Effect.promise(() => sql.end({ timeout: 5 }).catch(() => undefined))
  )

const attempt = <A>(where: string, f: () => Promise<A>, source?: Options["pgSource"]) =>
  Effect.tryPromise({ try: f, catch: (e) => fromConnectError(where, e, source) })

const databaseUrl = (adminUrl: string, name: string): string => {
  const url = new URL(adminUrl)
  url.pathname = `/${name}`
  return url.toString()
}

const openPostgres = Effect.fn("BankTransfer.openPostgres")(function* (options: Options, adminUrl: string) {
  const where = redact(adminUrl)
  const admin = yield* connect(adminUrl, 1)
  const [setting] = yield* attempt(
    where,
    () => admin<{ value: number }[]>`SELECT current_setting('max_prepared_transactions')::int AS value`,
    options.pgSource
  )
  if ((setting?.value ?? 0) === 0) {
    return yield* new DemoError({
      message: `PostgreSQL at ${where} has max_prepared_transactions = 0, so it cannot prepare transactions: ${fixMaxPrepared}`
    })
  }
  // Both banks are on this server, so a run holds up to two prepared branches per transfer in
  // flight; past the setting, PREPARE fails (53200) and the transfers abort for no reason of their own.
  const maxPrepared = setting?.value ?? 0
  if (2 * options.concurrency > maxPrepared) {
    return yield* new DemoError({
      message: `--concurrency ${options.concurrency} needs up to ${2 * options.concurrency} prepared transactions, but PostgreSQL at ${where} has max_prepared_transactions = ${maxPrepared}: ${maxPrepared >= 2 ? `pass --concurrency ${Math.floor(maxPrepared / 2)} or less, or raise max_prepared_transactions` : "raise max_prepared_transactions to at least 2"}`
    })
  }
  const names = {
    a: `${options.dbPrefix}bank_a`,
    b: `${options.dbPrefix}bank_b`,
    coordinator: `${options.dbPrefix}coordinator`
  }
  for (const name of Object.values(names)) {
    const exists = yield* attempt(
      where,
      () => admin`SELECT 1 FROM pg_database WHERE datname = ${name}`,
      options.pgSource
    )
    if (exists.length === 0) {
      yield* attempt(where, () => admin.unsafe(`CREATE DATABASE "${name}"`), options.pgSource).pipe(
        // Another process may have created it meanwhile (42P04 duplicate_database).
        Effect.catchIf(
          (e) => e.message.includes("42P04") || e.message.includes("already exists"),
          () => Effect.void
        )
      )
    }
  }
  const pool = options.concurrency + 2
  const a = yield* connect(databaseUrl(adminUrl, names.a), pool)
  const b = yield* connect(databaseUrl(adminUrl, names.b), pool)
  const coordinator = yield* connect(databaseUrl(adminUrl, names.coordinator), pool)
  // The 3PC participant wraps a 2PC one on the same pool; it skips the marker-table DDL when the
  // tables exist (that DDL would wait for the lock every prepared branch holds, i.e. hang after
  // a crash, before recovery could run).
  const participantA = yield* PgThreePhaseParticipant.make({ name: "bank-a", sql: a })
  const participantB = yield* PgThreePhaseParticipant.make({ name: "bank-b", sql: b })
  const log = yield* PgTransactionLog.make({ sql: coordinator })
  return {
    backend: "postgres",
    banks: [
      {
        name: "a",
        db: postgresDb(a),
        participant: participantA.twoPhase,
        threePhase: participantA,
        location: `${where} database ${names.a}`
      },
      {
        name: "b",
        db: postgresDb(b),
        participant: participantB.twoPhase,
        threePhase: participantB,
        location: `${where} database ${names.b}`
      }
    ],
    log,
    coordinator: postgresDb(coordinator),
    raw: { _tag: "postgres", a, b, coordinator }
  } satisfies Environment
})

const openPglite = Effect.fn("BankTransfer.openPglite")(function* (options: Options) {
  const root = resolve(options.dataDir)
  const open = (name: string) =>
    Effect.acquireRelease(
      Effect.tryPromise({
        try: () => PgParticipant.openPgliteCloned(join(root, name)),
        catch: (e) =>
          new DemoError({
            message: `cannot open the embedded database in ${join(root, name)} (${e instanceof Error ? e.message.split("\n")[0] : String(e)}): delete that folder or pass another --data-dir`
          })
      }),
      (db) => Effect.promise(() => db.close().catch(() => undefined))
    )
  const a = yield* open("a")
  const b = yield* open("b")
  const coordinator = yield* open("coordinator")
  const participantA = yield* PgThreePhaseParticipant.makePglite({ name: "bank-a", db: a })
  const participantB = yield* PgThreePhaseParticipant.makePglite({ name: "bank-b", db: b })
  const log = yield* PgTransactionLog.makePglite(coordinator)
  return {
    backend: "pglite",
    banks: [
      {
        name: "a",
        db: pgliteDb(a),
        participant: participantA.twoPhase,
        threePhase: participantA,
        location: join(root, "a")
      },
      {
        name: "b",
        db: pgliteDb(b),
        participant: participantB.twoPhase,
        threePhase: participantB,
        location: join(root, "b")
      }
    ],
    log,
    coordinator: pgliteDb(coordinator),
    raw: { _tag: "pglite", a, b, coordinator }
  } satisfies Environment
})

/**
 * Opens the environment the options ask for; released with the scope.
 * @since 0.1.0
 */
export const open = (options: Options): Effect.Effect<Environment, DemoError, Scope.Scope> => {
  const opened: Effect.Effect<Environment, unknown, Scope.Scope> =
    options.pg === undefined ? openPglite(options) : openPostgres(options, options.pg)
  return Effect.mapError(opened, (e) => (e instanceof DemoError ? e : new DemoError({ message: oneLine(e) })))
}

const oneLine = (e: unknown): string => {
  const text =
    e instanceof Error
      ? e.message
      : typeof e === "object" && e !== null && "message" in e
        ? String((e as { message: unknown }).message)
        : String(e)
  return text.split("\n")[0]!
}
