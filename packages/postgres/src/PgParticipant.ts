/**
 * A PostgreSQL database as a 2PC participant (postgres.js, or PGlite embedded).
 *
 * One branch = one connection held for the branch: `BEGIN`; the caller's work; a marker row in
 * `accord_branch`; `PREPARE TRANSACTION '<gid>'`. Phase 2 is `COMMIT PREPARED` / `ROLLBACK PREPARED`
 * by gid from any connection of the same database. The marker makes every branch's state exact:
 * prepared = listed in `pg_prepared_xacts`; committed = marker present; rolled back = neither.
 *
 * - The marker table is found once, when the participant is made (after its migration), through
 *   the pool's `search_path`, and named with its schema from then on: a work that runs
 *   `SET LOCAL search_path = tenant` cannot make the marker that follows it miss the table, or land
 *   in a tenant schema's own `accord_branch`, where the state checks would not see it.
 * - A gid reaches SQL only after `TransactionId.validateGid`, quoted by `toSqlLiteral` (PREPARE takes
 *   a literal, never a bind parameter).
 * - Any error in the work is a `No` vote carrying the SQLSTATE and message.
 * - A branch that changed nothing (no transaction id assigned) votes `ReadOnly` and commits at
 *   once: no marker, no PREPARE, no phase 2.
 * - The connection goes back to the pool on every path; after an interruption its running statement
 *   is cancelled and the transaction rolled back first, and a connection that cannot be cleaned
 *   within `cancelTimeout` is terminated, never returned in a transaction.
 *
 * @since 0.1.0
 */
import { createHash } from "node:crypto"
import { existsSync, mkdirSync, readFileSync, renameSync, rmSync, writeFileSync } from "node:fs"
import { createRequire } from "node:module"
import { tmpdir } from "node:os"
import { join, resolve as resolvePath } from "node:path"
import { Participant, TransactionError, TransactionId } from "@accord/core"
import { PGlite, type Transaction } from "@electric-sql/pglite"
import { Clock, Duration, Effect, Either, Option, Schedule } from "effect"
import type postgres from "postgres"
import {
  Abandonment,
  type Client,
  defaultCancelTimeout,
  fromPglite,
  fromPostgres,
  pgliteResult,
  runScript,
  settlesWithin,
  settle,
  startVia,
  statement,
  unlessAbandoned,
  unlessGivenUp,
  usesPreparedStatements,
  viaPromise
} from "./internal/client.js"
import { type PgFailure, toFailure, UNDEFINED_OBJECT } from "./internal/errors.js"
import { Gate, shared as sharedGate } from "./internal/gate.js"
import * as Branch from "./internal/pgBranch.js"
import type { Ending, Mode, StageFailure } from "./internal/pgBranch.js"
import { runTyped } from "./internal/promise.js"
import { finiteDuration } from "./internal/retention.js"
import * as Migrations from "./Migrations.js"
import type * as Pipeline from "./Pipeline.js"

/**
 * What a branch's work receives: queries bound to the branch's one connection and transaction.
 * @since 0.1.0
 */
export interface BranchSession {
  /** A parameterised statement (`$1`, `$2`, ...); resolves to its rows. */
  readonly query: <T = Record<string, unknown>>(
    text: string,
    params?: ReadonlyArray<unknown>
  ) => Promise<Array<T>>
  /**
   * A parameterised statement; resolves to its rows and how many rows it affected or returned (what
   * a `Pipeline` check reads).
   */
  readonly statement: (text: string, params?: ReadonlyArray<unknown>) => Promise<Pipeline.Result>
  /** Runs a drizzle query builder (anything with `toSQL()`) on the branch. */
  readonly execute: <T = Record<string, unknown>>(query: {
    toSQL(): { sql: string; params: ReadonlyArray<unknown> }
  }) => Promise<Array<T>>
  /** postgres.js only: tagged templates on the branch's reserved connection. */
  readonly sql?: postgres.Sql
}

/**
 * A branch's work on a Postgres participant.
 * @since 0.1.0
 */
export type PgWork = (session: BranchSession) => Promise<unknown>

/**
 * A named operation the Promise facade can call as `[participant, "name", params]`.
 * @since 0.1.0
 */
export type Operation<Params = never> = (session: BranchSession, params: Params) => Promise<unknown>

/**
 * A Postgres participant: the core `Participant` plus marker housekeeping.
 * @since 0.1.0
 */
export interface PgParticipant extends Participant.Participant<PgWork> {
  readonly driver: "postgres" | "pglite"
  /**
   * Deletes markers older than `olderThan`; returns how many. A marker `forget` has seen is aged
   * from that forget (its stamp in `accord_branch_forgotten`). A marker no forget saw is aged from
   * the first call that found its gid no longer prepared, when an earlier call saw it prepared (each
   * call records the namespace's prepared gids in `accord_branch_seen`), so from after its commit;
   * otherwise from its creation, its branch's BEGIN, which precedes the commit by however long the
   * work ran and the branch stayed prepared (a branch prepared and committed between two calls, and
   * every branch committed before the first call after these tables were added or the job first
   * ran, is seen by none). Whoever calls this, a marker is kept at least the `markerGrace` its own
   * participant declared when made (`accord_branch_grace`). Recovery needs the marker to tell
   * "committed" from "rolled back by hand": pick an age well past your longest recovery delay plus
   * the time between two calls plus the longest a branch may run and stay prepared unseen, e.g.
   * `"7 days"` daily. A deadlock with another call or a `forget` (40P01) is retried a few times.
   * `PgRecovery` removes the markers of completed transactions precisely; this is the backstop.
   * Only markers of this participant's namespace (`namespace`, or none) are deleted: another
   * deployment sharing the database keeps its own. `olderThan` must be a positive, finite duration
   * of at least `markerGrace` and at most 100 years, or this fails with a `ConfigurationError`
   * before anything is deleted.
   */
  readonly gcMarkers: (
    olderThan: Duration.DurationInput
  ) => Effect.Effect<number, TransactionError.ConfigurationError | TransactionError.BranchCallError>
}

/**
 * Options common to both drivers.
 * @since 0.1.0
 */
export interface CommonOptions {
  /** The branch name: 1-64 characters of `[A-Za-z0-9.-]`, unique within a coordinator. */
  readonly name: string
  /** Only report in-doubt branches of this gid namespace (see `TwoPhaseCommit.Options.namespace`). */
  readonly namespace?: string
  /** Named operations for the Promise facade. */
  readonly operations?: Readonly<Record<string, Operation<never>>>
  /** Bound on cleaning up an interrupted branch (cancel, wait, roll back). Default 5 s. */
  readonly cancelTimeout?: Duration.DurationInput
  /**
   * Bound on `make`'s checks (max_prepared_transactions, the marker table's migration and
   * schema): a server that accepts connections and never answers fails `make` with a
   * `ConfigurationError` after it. Default 10 s.
   */
  readonly verifyTimeout?: Duration.DurationInput
  /**
   * Run the marker-table migration in `make` (default true). Nothing is sent when every table is
   * there already. A role that may not create tables (42501), on a database whose marker table is
   * there but not every later table beside it, is warned and keeps the rules of the tables it has,
   * as with `false`.
   */
  readonly migrate?: boolean
  /**
   * How long a marker stays after `forget` first saw it (default 5 minutes). A coordinator may
   * still be re-driving `COMMIT PREPARED` after recovery completed its transaction; it must then
   * find the marker, or it would report a heuristic rollback that did not happen. Keep it above the
   * coordinator's `transactionTimeout`. A later `forget` (a later `PgRecovery` pass) deletes it.
   * `make` declares it in `accord_branch_grace` (the latest declaration of a name counts), so that
   * `gcMarkers` keeps the markers that long too, even when called by another participant of the
   * database with a shorter grace. A finite duration of zero or more, at most 100 years, or `make`
   * fails with a `ConfigurationError`.
   */
  readonly markerGrace?: Duration.DurationInput
}

/**
 * Options of a postgres.js participant.
 * @since 0.1.0
 */
export interface Options extends CommonOptions {
  /** A postgres.js pool on the participant database (its role must be able to PREPARE); `max` at least 2. */
  readonly sql: postgres.Sql
  /**
   * Most branches holding a connection of the pool at once, counted over every participant made on
   * the same `sql` (they share one limit). Default: the pool's `max` minus one, so that a
   * connection is always left for `COMMIT PREPARED`: otherwise branches waiting for rows locked by
   * prepared transactions can take every connection, and the commits that would release those
   * locks wait for a connection for ever. Set by the pool's first participant; another one on the
   * same pool asking for a different number fails `make` with a `ConfigurationError`.
   */
  readonly maxBranches?: number
}

/**
 * Options of a PGlite participant.
 * @since 0.1.0
 */
export interface PgliteOptions extends CommonOptions {
  /** A PGlite instance started with `max_prepared_transactions` (see `openPglite`). */
  readonly db: PGlite
  /**
   * How long a branch waits for the PGlite gate before voting No. The gate is held from BEGIN to
   * COMMIT/ROLLBACK PREPARED; a branch whose coordinator never comes back holds it until recovery
   * resolves the branch. A branch kept out by a transaction found prepared that no participant
   * resolves is refused at once (see `makePglite`). Default 10 s.
   */
  readonly lockTimeout?: Duration.DurationInput
  /**
   * The exclusivity gate. Default: one gate shared by all PGlite participants of the process (see
   * `internal/gate.ts` for why a per-instance mutex deadlocks across instances).
   */
  readonly gate?: Gate
}

/**
 * The PGlite exclusivity gate (see `PgliteOptions.gate`).
 * @since 0.1.0
 */
export type { Gate }

/**
 * A fresh gate, for PGlite participants that must not share the process-wide one.
 * @since 0.1.0
 */
export const makeGate = (): Gate => new Gate()

/**
 * Starts PGlite with prepared transactions enabled (PGlite's default is 0), in memory when
 * `dataDir` is undefined. PGlite runs with fsync off: fine for demos and tests, not durable.
 * A data directory holding a prepared transaction only reopens with the same setting. A folder on
 * disk is locked (`accord.lock`) until the instance is closed: see `openLocked`.
 * @since 0.1.0
 */
export const openPglite = (dataDir?: string): Promise<PGlite> =>
  dataDir === undefined || dataDir.includes("://")
    ? PGlite.create(dataDir, { startParams: pgliteStartParams })
    : openLocked(dataDir, () => PGlite.create(dataDir, { startParams: pgliteStartParams }))

const pgliteStartParams = [...PGlite.defaultStartParams, "-c", "max_prepared_transactions=64"]

// The data directories this process holds open through the openers below.
const lockedHere = new Set<string>()

const processAlive = (pid: number): boolean => {
  try {
    process.kill(pid, 0)
    return true
  } catch (error) {
    return (error as NodeJS.ErrnoException).code === "EPERM"
  }
}

/**
 * PGlite does not lock its data directory: two processes (two runs of the bank demo on the same
 * `--data-dir`) each ran a server over the same files and overwrote each other's pages, silently.
 * The openers hold `accord.lock` (the process id) in the folder until the instance is closed: a
 * folder held by another live process, or by another open instance of this one, is refused; the
 * lock of a process that died without closing is taken over.
 */
const openLocked = async (dataDir: string, create: () => Promise<PGlite>): Promise<PGlite> => {
  mkdirSync(dataDir, { recursive: true })
  const path = join(resolvePath(dataDir), "accord.lock")
  const refuse = (holder: string) =>
    new Error(
      `PGlite data directory ${dataDir} is already open ${holder}: PGlite does not share a data directory ` +
        `(each opener runs its own server over the same files). Close it there first; if no such process uses it, delete ${path}.`
    )
  for (let attempt = 0; ; attempt++) {
    try {
      writeFileSync(path, String(process.pid), { flag: "wx" })
      break
    } catch (error) {
      if ((error as NodeJS.ErrnoException).code !== "EEXIST" || attempt > 0) {
        if ((error as NodeJS.ErrnoException).code === "EEXIST") throw refuse("in another process")
        throw error
      }
    }
    if (lockedHere.has(path)) throw refuse("in this process (another PGlite instance)")
    const pid = Number.parseInt(readFileSync(path, "utf8"), 10)
    if (pid !== process.pid && Number.isInteger(pid) && pid > 0 && processAlive(pid))
      throw refuse(`in process ${pid}`)
    // Left by a process that is gone (or by an earlier run that had this pid): stale.
    rmSync(path, { force: true })
  }
  lockedHere.add(path)
  const release = () => {
    lockedHere.delete(path)
    rmSync(path, { force: true })
  }
  let db: PGlite
  try {
    db = await create()
  } catch (error) {
    release()
    throw error
  }
  const close = db.close.bind(db)
  db.close = async () => {
    try {
      await close()
    } finally {
      release()
    }
  }
  return db
}

// Where PGlite is installed: `import.meta.resolve` under Node's ESM loader; Vite and vitest
// rewrite `import.meta` without it (openPgliteCloned threw a TypeError in a vitest suite), so
// then the CommonJS resolution of the same package.
const pgliteLocation = (): string =>
  typeof import.meta.resolve === "function"
    ? import.meta.resolve("@electric-sql/pglite")
    : createRequire(import.meta.url).resolve("@electric-sql/pglite")

// One dump of a fresh instance per PGlite build, in the OS temp folder.
const pgliteTemplatePath = (): string =>
  join(
    tmpdir(),
    `accord-pglite-template-${createHash("sha1").update(pgliteLocation()).digest("hex").slice(0, 12)}.tar`
  )

/**
 * `openPglite(dataDir)` for a folder on disk, but a folder without data is cloned from a dump of a
 * fresh instance (1-4 s) instead of running initdb (15-20 s on a small machine). The dump is made
 * from a throw-away instance on first use and shared by later calls, across processes.
 * @since 0.1.0
 */
export const openPgliteCloned = async (dataDir: string): Promise<PGlite> => {
  mkdirSync(dataDir, { recursive: true })
  if (existsSync(join(dataDir, "PG_VERSION"))) return openPglite(dataDir)
  return openLocked(dataDir, () => clonePglite(dataDir))
}

const clonePglite = async (dataDir: string): Promise<PGlite> => {
  const template = pgliteTemplatePath()
  if (!existsSync(template)) {
    const fresh = await openPglite()
    const dump = await fresh.dumpDataDir("none")
    await fresh.close()
    const partial = `${template}.${process.pid}`
    writeFileSync(partial, Buffer.from(await dump.arrayBuffer()))
    renameSync(partial, template)
  }
  return PGlite.create(dataDir, {
    loadDataDir: new Blob([readFileSync(template)]),
    startParams: pgliteStartParams
  })
}

// ---------------------------------------------------------------------------------------------
// SQL

/**
 * The statements that name the marker table, built once when the participant is made, with the
 * table's schema-qualified name (see `Branch.TABLE_SCHEMA_SQL`): the branch's marker runs after the
 * work in its transaction, under whatever `search_path` the work set, and the checks below must
 * look in the table it wrote.
 */
interface Statements {
  readonly branch: Branch.MarkerStatements
  readonly markers: string
  readonly markerExists: string
  /** Whether the gid is prepared now, in this database (`state` reads the marker after it). */
  readonly prepared: string
  /**
   * `forget`: `$1` gids, `$2` markerGrace in seconds, `$3` this participant's branch name, `$4` its
   * namespace's gid pattern (see `forgetOn`).
   */
  readonly forget: string
  /**
   * `gcMarkers`: `$1` the age in seconds, `$2` this participant's namespace's gid pattern (another
   * deployment sharing the database needs its markers), `$3` the namespace (`''` for none). See
   * `gcOn`.
   */
  readonly gc: string
  /**
   * `make`: this participant's `markerGrace` declared (`$1` namespace, `''` for none; `$2` name;
   * `$3` seconds), the latest declaration counting; undefined without `accord_branch_grace`.
   */
  readonly declareGrace: string | undefined
}

/**
 * `forget` with the grace measured from when the markers were forgotten: each marker of `$1` is
 * stamped in `accord_branch_forgotten` (first stamp wins, so two recoveries agree), and the markers
 * of this participant (branch `$3`, namespace pattern `$4`) stamped more than `$2` seconds ago are
 * deleted with their stamps. Until 2026-12-07 the grace ran from the marker's `created_at`, the
 * branch's BEGIN: recovery's `forget` deleted the marker of a branch prepared longer than the grace
 * (exactly the branches recovery resolves) at once, and a coordinator re-driving its COMMIT
 * PREPARED then reported a HeuristicRollback that never happened. The table stays bounded: every
 * forgotten marker goes at a later `forget` (each recovery pass that completes or collects
 * anything calls it), or by `gcMarkers`.
 */
const forgetOn = (table: string, forgotten: string): string => {
  const due =
    "branch = $3::text and gid like $4::text and forgotten_at < now() - make_interval(secs => $2::float8)"
  return (
    `with stamped as (insert into ${forgotten} (gid, branch) select gid, branch from ${table} ` +
    "where gid = any($1::text[]) and $2::float8 > 0 on conflict (gid) do nothing returning 1), " +
    // A zero grace deletes the markers at once, unstamped.
    `gone as (delete from ${table} where gid in (select gid from ${forgotten} where ${due}) ` +
    "or ($2::float8 <= 0 and gid = any($1::text[])) returning gid) " +
    // The markers first, then their stamps: the order `gcOn` locks them in (until 2026-12-07 the
    // stamps went first, and a forget beside a gcMarkers deadlocked, 40P01).
    `delete from ${forgotten} f where ${due} and (f.gid in (select gid from gone) ` +
    `or not exists (select 1 from ${table} m where m.gid = f.gid))`
  )
}

/**
 * The forget of a database whose `accord_branch_forgotten` is missing (made with `migrate: false`
 * against markers migrated by an older release): the grace from the marker's `created_at`, as
 * before (see `forgetOn`); `make` warns.
 */
const forgetByCreation = (table: string): string =>
  `delete from ${table} where gid = any($1::text[]) and created_at < now() - make_interval(secs => $2::float8) ` +
  "and $3::text is not null and $4::text is not null"

/**
 * The longest `markerGrace` `make` accepts, 100 years: it is declared for every participant's
 * `gcMarkers` (`accord_branch_grace`), which subtracts it from `now()`, and PostgreSQL's timestamps
 * end at 4713 BC (until 2026-12-07 one participant made with `Duration.infinity`, or 10,000 years,
 * failed every other participant's `gcMarkers` of its namespace with 22008). `gcOn` also reads a
 * declared grace as at most this.
 */
const maxMarkerGrace = Duration.days(36_525)
const maxMarkerGraceSeconds = Duration.toSeconds(maxMarkerGrace)

/**
 * `gcMarkers` with a forgotten marker aged from its stamp, as `forget` ages it: until 2026-12-07 it
 * went by `created_at` alone, and deleted the marker of a branch prepared longer than the age as
 * soon as recovery committed and forgot it, inside its `markerGrace`; a coordinator re-driving that
 * COMMIT PREPARED then reported a HeuristicRollback that never happened. A stamp is never older than
 * its marker's `created_at` (forget stamps markers that exist), so the `created_at` condition
 * keeps the index scan; stamps past the age go too (those of markers deleted here, or by hand).
 *
 * With `current` (`accord_branch_seen` and `accord_branch_grace`; `$3` this participant's namespace,
 * `''` for none), two more rules:
 * - Every marker is kept at least the `markerGrace` its branch's participant declared when it was
 *   made (`accord_branch_grace`), from its forget stamp, its sighting or its `created_at` as below,
 *   whoever calls. Until 2026-12-07 the age was only checked against the caller's own grace: a
 *   participant with a shorter grace sharing the database and namespace deleted the markers another
 *   participant still kept for its coordinators re-driving COMMIT PREPARED.
 * - A marker no forget saw is aged from when a `gcMarkers` call first found its gid no longer
 *   prepared, if an earlier call saw it prepared; from its `created_at` (its BEGIN) otherwise. Each
 *   call records every prepared gid of the namespace, and moves the gids it recorded that are no
 *   longer prepared to that call's time (`clock_timestamp()`, read after `pg_prepared_xacts`: after
 *   the commit). Until 2026-12-07 every such marker was aged from its BEGIN: a branch prepared longer
 *   than the age, committed by recovery whose completion or forget then failed, lost its marker to
 *   the next call, and the next recovery pass, finding the gid gone without it, recorded a
 *   heuristic rollback of a branch that had committed. A marker whose gid no call saw prepared is
 *   still aged from its BEGIN, which precedes its commit by however long its work ran and it stayed
 *   prepared: a branch prepared between two calls and committed before the second is seen by none,
 *   and so is every branch committed before the first call after an upgrade to these tables (or
 *   after the job is first scheduled).
 * - The sightings are one upsert in gid order (the gids prepared now, and those recorded prepared
 *   that no longer are), so that two calls at once lock them in one order.
 * A stamp or a sighting goes only with its marker (or once its marker is gone): left behind, the
 * marker would be aged from an earlier time. One statement: its snapshot predates the sightings it
 * writes, but a gid prepared at that snapshot has no visible marker to delete, and one recorded
 * prepared by an earlier call is still recorded so in it.
 */
const gcOn = (table: string, forgotten: string, current: CurrentTables | undefined): string => {
  const cutoff = "now() - make_interval(secs => $1::float8)"
  if (current === undefined) {
    return (
      `with gone as (delete from ${table} m where m.created_at < ${cutoff} ` +
      "and m.gid like $2 and $3::text is not null " +
      `and not exists (select 1 from ${forgotten} f where f.gid = m.gid ` +
      `and f.forgotten_at >= ${cutoff}) returning 1), ` +
      `stamps as (delete from ${forgotten} where gid like $2 and forgotten_at < ${cutoff}) ` +
      "select count(*)::int as deleted from gone"
    )
  }
  const { seen, grace } = current
  // The marker's keep: the age, or its branch's declared grace if longer, that grace taken as at
  // most `maxMarkerGrace` (`make` refuses more, but a row written by hand or by an older release
  // could hold more, or Infinity, and `now()` minus it is out of range: 22008 failed every call).
  const keep =
    "now() - make_interval(secs => greatest($1::float8, least(coalesce((select g.grace from " +
    `${grace} g where g.namespace = $3::text and g.branch = m.branch), 0), ${maxMarkerGraceSeconds})))`
  return (
    "with prepared_now as materialized (select gid from pg_prepared_xacts " +
    "where database = current_database() and gid like $2::text), " +
    // One upsert, in gid order, both for the gids prepared now and for those recorded prepared that
    // no longer are: until 2026-12-07 they were two statements locking the rows in two orders
    // (`pg_prepared_xacts`' and the table's), and two calls at once deadlocked (40P01).
    `sighted as (insert into ${seen} (gid, seen_at, prepared) select gid, at, prepared from (` +
    "select gid, now() as at, true as prepared from prepared_now union all " +
    `select s.gid, clock_timestamp(), false from ${seen} s where s.prepared and s.gid like $2::text ` +
    "and s.gid not in (select gid from prepared_now)) sighting order by gid " +
    "on conflict (gid) do update set seen_at = excluded.seen_at, prepared = excluded.prepared), " +
    // `created_at < cutoff` first: the index scan (every time below is at least `created_at`).
    `gone as (delete from ${table} m where m.created_at < ${cutoff} and m.gid like $2::text ` +
    `and case when exists (select 1 from ${forgotten} f where f.gid = m.gid) ` +
    `then exists (select 1 from ${forgotten} f where f.gid = m.gid and f.forgotten_at < ${keep}) ` +
    `else m.created_at < ${keep} and not exists (select 1 from ${seen} s where s.gid = m.gid ` +
    `and (s.prepared or s.seen_at >= ${keep})) end ` +
    "returning m.gid), " +
    `stamps as (delete from ${forgotten} f where f.gid like $2::text and f.forgotten_at < ${cutoff} ` +
    `and (f.gid in (select gid from gone) or not exists (select 1 from ${table} m where m.gid = f.gid))), ` +
    `unseen as (delete from ${seen} s where s.gid like $2::text and not s.prepared and s.seen_at < ${cutoff} ` +
    `and (s.gid in (select gid from gone) or not exists (select 1 from ${table} m where m.gid = s.gid))) ` +
    "select count(*)::int as deleted from gone"
  )
}

/** The tables of the migration that added `accord_branch_seen` and `accord_branch_grace`. */
interface CurrentTables {
  readonly seen: string
  readonly grace: string
}

const statementsOn = (
  table: string,
  forgotten: string | undefined,
  current: CurrentTables | undefined
): Statements => ({
  branch: Branch.markerStatements(table),
  markers: `select gid from ${table} where gid = any($1::text[])`,
  markerExists: `select exists (select 1 from ${table} where gid = $1) as committed`,
  prepared:
    "select exists (select 1 from pg_prepared_xacts where gid = $1 and database = current_database()) as prepared",
  forget: forgotten === undefined ? forgetByCreation(table) : forgetOn(table, forgotten),
  gc:
    forgotten === undefined
      ? `with gone as (delete from ${table} where created_at < now() - make_interval(secs => $1::float8) ` +
        "and gid like $2 and $3::text is not null returning 1) select count(*)::int as deleted from gone"
      : gcOn(table, forgotten, current),
  declareGrace:
    current === undefined
      ? undefined
      : `insert into ${current.grace} (namespace, branch, grace) values ($1, $2, $3) ` +
        "on conflict (namespace, branch) do update set grace = excluded.grace, declared_at = now()"
})

/**
 * Each branch's age as the server measures it (its own clock on both ends), never its `prepared`
 * timestamp: the scan's caller turns the age into a time on its own clock (see `inDoubt`), so that
 * a skew between the recovery host and the database cannot make an orphan look young or a live
 * branch old. `clock_timestamp()` is read per row, after the row's PREPARE: never a negative age.
 */
const IN_DOUBT_SQL =
  "select gid, greatest(0, extract(epoch from (clock_timestamp() - prepared)) * 1000)::float8 as age_ms " +
  "from pg_prepared_xacts where database = current_database() and gid like $1 order by prepared"
/**
 * The marker table's schema (`Branch.TABLE_SCHEMA_SQL`, `$1` = 'accord_branch') and whether
 * `accord_branch_forgotten`, `accord_branch_seen` and `accord_branch_grace` are each there beside it
 * (`format('%I', null)` fails, hence the `case`s).
 */
const FOUND_SQL =
  "select s.nspname, " +
  ["forgotten", "seen", "grace"]
    .map(
      (table) =>
        `case when s.nspname is null then false ` +
        `else to_regclass(format('%I.accord_branch_${table}', s.nspname)) is not null end as ${table}`
    )
    .join(", ") +
  ` from (${Branch.TABLE_SCHEMA_SQL}) s`

/** What `FOUND_SQL` found: the marker table's schema, and the tables missing beside it. */
interface Found {
  readonly markerSchema: unknown
  readonly missing: ReadonlyArray<string>
}

const foundOf = (rows: ReadonlyArray<object>): Found => {
  const markerSchema = column(rows[0], 0)
  const missing = ["accord_branch_forgotten", "accord_branch_seen", "accord_branch_grace"].filter(
    (_, i) => column(rows[0], i + 1) !== true
  )
  return { markerSchema, missing: typeof markerSchema === "string" ? missing : ["accord_branch", ...missing] }
}
const ALL_PREPARED_SQL = "select gid from pg_prepared_xacts where database = current_database()"

// ---------------------------------------------------------------------------------------------
// Branch execution

const noop = () => undefined

/**
 * The `i`th column of a row of Accord's own statements, by position: a pool's column transform
 * (`transform: postgres.camel`, `postgres.pascal`, `postgres.kebab`) renames the columns
 * (`max_prepared_transactions` came back as `maxPreparedTransactions`, and `make` reported
 * `max_prepared_transactions is 0`), but keeps their order.
 */
const column = (row: object | undefined, i: number): unknown =>
  row === undefined ? undefined : Object.values(row)[i]

/**
 * A postgres.js branch as a started call around `internal/pgBranch.run` (one Promise). Abandoned,
 * the branch is stopped and the result settles after its clean-up (each step of which is bounded
 * by `cancelTimeout`), or rejects after three of them.
 */
const startPgBranch = (
  sql: postgres.Sql,
  statements: Branch.MarkerStatements,
  prepare: boolean,
  slots: Branch.Slots,
  ctx: Participant.BranchContext,
  mode: Mode,
  work: PgWork,
  cancelTimeout: Duration.Duration
): Participant.Started<Ending, StageFailure> => {
  const control = new Branch.Control()
  const cancelMs = Duration.toMillis(cancelTimeout)
  const done = Branch.run(sql, statements, prepare, slots, control, ctx, mode, work, cancelMs).then(
    (ending) => Either.right(ending),
    (failure: StageFailure) => Either.left(failure)
  )
  return {
    result: unlessGivenUp(done, control, 3 * cancelMs, `branch ${ctx.gid}'s clean-up`),
    abandon: () => control.abandon()
  }
}

/** A started call with its value mapped (the abandon is the same). */
const mapStarted = <A, E, B, E2>(
  call: Participant.Started<A, E>,
  f: (done: Either.Either<A, E>) => Either.Either<B, E2>
): Participant.Started<B, E2> => ({ result: call.result.then(f), abandon: call.abandon })

class PgliteStageError {
  constructor(
    readonly stage: StageFailure["stage"],
    readonly cause: unknown
  ) {}
}

/**
 * The session's own virtual transaction id (`<backend>/<local id>`): a new one for every
 * transaction, a work's `COMMIT; BEGIN` included, and untouched by `RESET ALL`. Read from
 * `pg_lock_status()` (not the `pg_locks` view, whose lock the prepared transaction would keep).
 */
const PGLITE_VXID_SQL =
  "(select l.virtualxid from pg_lock_status() l where l.locktype = 'virtualxid' " +
  "and l.pid = pg_backend_pid() and l.virtualxid = l.virtualtransaction limit 1)"

/**
 * Marks the branch's transaction (PGlite): `set_config(..., is_local => true)` ends with it, and the
 * transaction's virtual id, for when the work's `RESET ALL` cleared the setting (see
 * `PGLITE_BRANCH_CHECK_SQL`). Also reads the role the session runs as, for the check to restore.
 */
const PGLITE_BRANCH_MARK_SQL = `select set_config('accord.branch_gid', $1, true), current_user::text as role, ${PGLITE_VXID_SQL} as vxid`

/**
 * After the work, before the marker or COMMIT (PGlite): the role the session ran as when the branch
 * began, for this transaction only (a work's `SET LOCAL ROLE` made the marker insert fail with 42501
 * where that role may not write `accord_branch`, and would leave the prepared transaction owned by
 * that role, which only it or a superuser may COMMIT PREPARED; a `RESET ROLE` there outlived the
 * branch and switched a session that had set a role of its own to the superuser for good), then
 * whether this is still the branch's transaction: its mark (`$2`) is there, or, when a work's
 * `RESET ALL` cleared it (which voted No for sound work until 2026-12-07), the transaction's virtual
 * id is still the one read at BEGIN (`$3`). The id is only read then (`or` stops at a mark found).
 */
const PGLITE_BRANCH_CHECK_SQL =
  "select set_config('role', $1, true), " +
  `coalesce(current_setting('accord.branch_gid', true) = $2 or ${PGLITE_VXID_SQL} = $3, false) as same`

/**
 * Whether the work ended the branch's transaction itself (`COMMIT`, `ROLLBACK`, `PREPARE
 * TRANSACTION`, perhaps followed by `BEGIN`): the mark set after BEGIN is gone. PGlite gives no
 * command tags to watch as postgres.js does, and did not notice: a work ending in `ROLLBACK` voted
 * ReadOnly with its writes gone while the other branches committed, one ending in `COMMIT` voted
 * ReadOnly with its writes committed outside the decision, and a one-phase branch ending in
 * `ROLLBACK` reported Committed. The same `WorkFailed` (25000) as the postgres.js path; a
 * transaction an error aborted (the work caught it) is 25P02, as there.
 */
const pgliteEndedByWork = async (
  tx: Transaction,
  ctx: Participant.BranchContext,
  begun: { readonly role: string; readonly vxid: string | null }
): Promise<PgFailure | undefined> => {
  let checked: Awaited<ReturnType<Transaction["query"]>>
  try {
    checked = await tx.query(PGLITE_BRANCH_CHECK_SQL, [begun.role, ctx.gid, begun.vxid])
  } catch (error) {
    if (toFailure(error).sqlState !== "25P02") throw error
    return {
      sqlState: "25P02",
      connectionLost: false,
      message: "the transaction was aborted by a statement error that the work caught; rolled back"
    }
  }
  if ((checked.rows[0] as { same?: unknown } | undefined)?.same === true) return undefined
  return {
    sqlState: "25000",
    connectionLost: false,
    message:
      "the work ended the branch's transaction itself (COMMIT, ROLLBACK or PREPARE TRANSACTION): a branch's work must not BEGIN, COMMIT, ROLLBACK or PREPARE; what it wrote before that is not under the coordinator's decision"
  }
}

/**
 * A PGlite branch in one `transaction()`. Abandoned (its caller gave up), the work is waited for at
 * most `cancelMs` more, as a postgres.js branch's is; then the transaction is rolled back and its
 * session closed (a statement the work sends later fails with PGlite's "Transaction is closed"):
 * a work that never returned kept PGlite's transaction mutex, and so the instance (every later
 * statement on it, COMMIT PREPARED and recovery included) and the gate, for ever.
 */
const runPgliteBranch = async (
  db: PGlite,
  statements: Branch.MarkerStatements,
  ctx: Participant.BranchContext,
  mode: Mode,
  work: PgWork,
  abandonment: Abandonment,
  cancelMs: number
) => {
  let stage: StageFailure["stage"] = "begin"
  try {
    return await db.transaction<Ending>(async (tx) => {
      // Transaction-local, and the transaction's virtual id: what tells, after the work, whether
      // it ended the transaction (see `PGLITE_BRANCH_CHECK_SQL`).
      const begun = (await tx.query<{ role: string; vxid: string | null }>(PGLITE_BRANCH_MARK_SQL, [ctx.gid]))
        .rows[0]!
      const session: BranchSession = {
        query: async <T>(text: string, params?: ReadonlyArray<unknown>) =>
          (await tx.query<T>(text, params as Array<unknown> | undefined)).rows,
        statement: async (text, params) =>
          pgliteResult(await tx.query<Record<string, unknown>>(text, params as Array<unknown> | undefined)),
        execute: async <T>(q: { toSQL(): { sql: string; params: ReadonlyArray<unknown> } }) => {
          const { sql, params } = q.toSQL()
          return (await tx.query<T>(sql, params as Array<unknown>)).rows
        }
      }
      let worked: Promise<unknown>
      try {
        worked = Promise.resolve(work(session))
      } catch (error) {
        worked = Promise.reject(error)
      }
      const given = await unlessAbandoned(settle(worked), abandonment, cancelMs, () => "timeout" as const)
      if (given === "timeout") {
        await tx.rollback()
        return {
          _tag: "WorkFailed",
          failure: {
            sqlState: undefined,
            connectionLost: false,
            message: `the branch's work had not returned ${cancelMs} ms after its caller gave up: rolled back`
          }
        }
      }
      if (!given.ok) {
        await tx.rollback()
        return { _tag: "WorkFailed", failure: given.failure }
      }
      stage = "marker"
      const ended = await pgliteEndedByWork(tx, ctx, begun)
      if (ended !== undefined) {
        // Rolls back whatever the work left open (a warning when nothing is).
        await tx.rollback()
        return { _tag: "WorkFailed", failure: ended }
      }
      if (mode === "onePhase") {
        // PGlite sends COMMIT when this callback returns.
        stage = "end"
        return { _tag: "Committed" }
      }
      const marked = await tx.query(statements.marker, [ctx.gid, ctx.txId, ctx.branch])
      stage = "end"
      if (marked.rows.length === 0) return { _tag: "ReadOnly" }
      await tx.exec(`PREPARE TRANSACTION ${TransactionId.toSqlLiteral(ctx.gid)}`)
      // PGlite's own COMMIT that follows finds no transaction: a warning, nothing else.
      return { _tag: "Prepared" }
    })
  } catch (error) {
    throw new PgliteStageError(stage, error)
  }
}

const pgliteBranch = (
  db: PGlite,
  statements: Branch.MarkerStatements,
  gate: Gate,
  lockTimeout: Duration.Duration,
  ctx: Participant.BranchContext,
  mode: Mode,
  work: PgWork,
  cancelTimeout: Duration.Duration,
  releaseGone: Effect.Effect<void>
): Effect.Effect<Ending, StageFailure> => {
  // Once the transaction has started, its promise leaves the gate. Before that, an interruption
  // landing after the admission (inside the wait's restore but after its own clean-up, or pending
  // until the next restore, which then fails at once without starting anything) must leave it
  // here, or the gate stays held for a branch that never ran: every later branch is busy for ever.
  // Only a hold the gate gave this fiber is left here: a branch still waiting behind its own gid (a
  // retry while its earlier run is prepared) would free that run's hold.
  let started = false
  return Effect.uninterruptibleMask((restore) =>
    Effect.gen(function* () {
      // The hold this branch's entry took: the one it leaves.
      const enter = restore(gate.enterHold(ctx.txId, ctx.gid, lockTimeout, db))
      let ticket = yield* enter
      // Refused at once by prepared transactions on this instance that no participant resolves:
      // one resolved by hand since lets this branch in without waiting for the next in-doubt scan
      // to notice.
      if (ticket === undefined && gate.closedByForeign(db)) {
        yield* restore(releaseGone)
        ticket = yield* enter
      }
      if (ticket === undefined) {
        return yield* Effect.fail<StageFailure>({
          stage: "busy",
          failure: {
            sqlState: "55P03",
            connectionLost: false,
            message: gate.closedByForeign(db)
              ? `PGlite participant closed by prepared transactions nothing here resolves: ${gate.holderDescriptionFor(db)}`
              : `PGlite participant busy for more than ${Duration.format(lockTimeout)}: held by ${gate.holderDescriptionFor(db)}`
          }
        })
      }
      const held = ticket
      return yield* restore(
        Effect.async<Ending, StageFailure>((resume) => {
          started = true
          const abandonment = new Abandonment()
          const pending = runPgliteBranch(
            db,
            statements,
            ctx,
            mode,
            work,
            abandonment,
            Duration.toMillis(cancelTimeout)
          )
          // The gate is left here, on the promise, so that it is left even after an interruption; by
          // this branch's hold, never a later one of the same gid. Prepared, the hold stays until a
          // COMMIT/ROLLBACK PREPARED of the gid leaves it (`Gate.resolving`; one that ran before
          // this callback, the branch's caller having given up, has left it already).
          pending.then(
            (ending) => {
              if (ending._tag !== "Prepared") gate.leaveHold(held)
              else gate.markPrepared(held)
              resume(Effect.succeed(ending))
            },
            (error: unknown) => {
              gate.leaveHold(held)
              const stage = error instanceof PgliteStageError ? error.stage : "begin"
              const cause = error instanceof PgliteStageError ? error.cause : error
              resume(Effect.fail({ stage, failure: toFailure(cause) }))
            }
          )
          // Bounded in the Promise: a canceler runs uninterruptibly, an Effect.timeout would not end
          // it (see `settlesWithin`). The gate stays held until the branch settles.
          return Effect.promise(() => {
            abandonment.abandon()
            // The work's bound, then the ROLLBACK behind it.
            return settlesWithin(pending, 2 * Duration.toMillis(cancelTimeout))
          })
        })
      )
    }).pipe(
      Effect.onInterrupt(() =>
        Effect.flatMap(Effect.fiberId, (by) =>
          Effect.sync(() => {
            if (!started) gate.leaveHeldBy(ctx.gid, by, db)
          })
        )
      )
    )
  )
}

// ---------------------------------------------------------------------------------------------
// The participant

/**
 * How a driver runs a branch: as a started Promise (postgres.js, which then offers `direct` calls)
 * or as an Effect (PGlite, whose gate is an Effect).
 */
type BranchRunner =
  | {
      readonly _tag: "Started"
      readonly start: (
        ctx: Participant.BranchContext,
        mode: Mode,
        work: PgWork
      ) => Participant.Started<Ending, StageFailure>
    }
  | {
      readonly _tag: "Effect"
      readonly branch: (
        ctx: Participant.BranchContext,
        mode: Mode,
        work: PgWork
      ) => Effect.Effect<Ending, StageFailure>
    }

interface Driver {
  readonly kind: "postgres" | "pglite"
  readonly client: Client
  /** Made once the marker table is found, with the statements that name it. */
  readonly runner: (statements: Branch.MarkerStatements) => BranchRunner
  /**
   * Called as a COMMIT/ROLLBACK PREPARED of `gid` is sent; what it returns, with what the answer
   * found (`true` the gid ended, `false` it was gone). PGlite: leaves the gate's hold that answer is
   * about (`Gate.resolving`).
   */
  readonly resolving: (gid: TransactionId.Gid) => (ended: boolean) => void
  readonly fix: string
}

const callError = (
  ctx: { readonly txId: string; readonly branch: string },
  phase: TransactionError.Phase,
  failure: PgFailure,
  inDoubt: boolean
) =>
  new TransactionError.BranchCallError({
    txId: ctx.txId,
    branch: ctx.branch,
    phase,
    reason: failure.message,
    inDoubt,
    sqlState: failure.sqlState
  })

const build = Effect.fn("PgParticipant.make")(function* (driver: Driver, options: CommonOptions) {
  const name = yield* Either.mapLeft(
    TransactionId.parseBranchName(options.name),
    (e) =>
      new TransactionError.ConfigurationError({
        participant: String(options.name),
        reason: e.reason,
        fix: "name the participant with 1-64 characters of [A-Za-z0-9.-]"
      })
  )
  if (options.namespace !== undefined && !TransactionId.namespacePattern.test(options.namespace)) {
    return yield* new TransactionError.ConfigurationError({
      participant: name,
      reason: `invalid namespace ${JSON.stringify(options.namespace)}`,
      fix: "use 1-16 characters of [a-z0-9]"
    })
  }
  const cancelTimeout = Duration.decode(options.cancelTimeout ?? defaultCancelTimeout)
  const client = driver.client
  const query = <T>(text: string, params?: ReadonlyArray<unknown>) =>
    statement<T>(client, text, params, cancelTimeout)
  const operations = options.operations ?? {}
  // Checked before decoding, as `gcMarkers`' age is: `Duration.decode` reads NaN or a negative
  // number as zero. At most `maxMarkerGrace`: it is declared for every participant's `gcMarkers`.
  const grace = finiteDuration(options.markerGrace ?? Duration.minutes(5))
  if (Option.isNone(grace) || Duration.greaterThan(grace.value, maxMarkerGrace)) {
    return yield* new TransactionError.ConfigurationError({
      participant: name,
      reason: `markerGrace must be a finite duration of zero or more, at most 100 years (${Duration.format(maxMarkerGrace)}; got ${
        Duration.isDuration(options.markerGrace)
          ? Duration.format(options.markerGrace)
          : String(options.markerGrace)
      })`,
      fix: 'give markerGrace a little more than the coordinator\'s transactionTimeout, e.g. markerGrace: "5 minutes"'
    })
  }
  const markerGrace = Duration.toSeconds(grace.value)
  const self = { txId: "", branch: name }

  const findTables = query<object>(FOUND_SQL, ["accord_branch"]).pipe(
    Effect.map(foundOf),
    Effect.mapError((f) => callError(self, "verify", f, false))
  )
  // The checks and the migration; then where the marker table is as the pool's connections see it
  // (every statement naming it, the branch's marker included, uses that schema from now on), and
  // `denied` when the role could not create the later tables beside it.
  const verify: Effect.Effect<
    { readonly found: Found; readonly denied: string | undefined },
    TransactionError.ConfigurationError | TransactionError.BranchCallError
  > = Effect.gen(function* () {
    const rows = yield* query<object>("show max_prepared_transactions").pipe(
      Effect.mapError((f) => callError(self, "verify", f, false))
    )
    const value = Number(column(rows[0], 0) ?? 0)
    if (!(value > 0)) {
      return yield* new TransactionError.ConfigurationError({
        participant: name,
        reason: `max_prepared_transactions is ${value} on this server, so PREPARE TRANSACTION is refused`,
        fix: driver.fix
      })
    }
    const before = yield* findTables
    // No DDL when every table is there (as `PgThreePhaseParticipant` checks): until 2026-12-07 it
    // was always sent, and a role that may not create tables failed `make` on a database the
    // previous release had migrated, where that release's DDL did nothing.
    if (options.migrate === false || before.missing.length === 0) return { found: before, denied: undefined }
    const migrated = yield* runScript(client, Migrations.participantDdl, cancelTimeout).pipe(
      Effect.mapError(toFailure),
      Effect.either
    )
    if (Either.isRight(migrated)) return { found: yield* findTables, denied: undefined }
    const failure = migrated.left
    if (failure.sqlState !== "42501") return yield* callError(self, "verify", failure, false)
    // The marker table and its stamps are there (a database the previous release migrated), only
    // later tables are not: the rules of the tables there, with `migrate: false`'s warning, rather
    // than no participant. Without the stamps, `forget` would delete a long-prepared branch's marker
    // at once (a false HeuristicRollback): no participant then, as before.
    if (typeof before.markerSchema === "string" && !before.missing.includes("accord_branch_forgotten"))
      return { found: before, denied: failure.message }
    return yield* new TransactionError.ConfigurationError({
      participant: name,
      reason: `cannot create Accord's marker tables ${before.missing.join(", ")}: ${failure.message}`,
      fix: "create them once with a role that may (the Effect Migrations.participant(sql), or the DDL in Migrations.participantDdl), then pass migrate: false; or GRANT CREATE ON SCHEMA public to this role"
    })
  }).pipe(Effect.withSpan("PgParticipant.verify", { attributes: { branch: name } }))

  // Bounded: a server that accepts connections and never answers fails `make` at `verifyTimeout`.
  const verifyTimeout = Duration.decode(options.verifyTimeout ?? Duration.seconds(10))
  const { found, denied } = yield* verify.pipe(
    Effect.timeoutFail({
      duration: verifyTimeout,
      onTimeout: () =>
        new TransactionError.ConfigurationError({
          participant: name,
          reason: `the server did not answer its checks within ${Duration.format(verifyTimeout)}`,
          fix: "check that the server is reachable and answering (its address, a firewall, a full connection limit), or raise verifyTimeout"
        })
    })
  )
  const { markerSchema, missing } = found
  if (typeof markerSchema !== "string") {
    // Refused here rather than at the first branch: a marker statement naming the table bare would
    // follow whatever `search_path` a work sets, and every branch would vote No until someone
    // created the table.
    return yield* new TransactionError.ConfigurationError({
      participant: name,
      ...(options.migrate === false
        ? {
            reason: "the marker table accord_branch does not exist and migrate is false",
            fix: "create it once with a role that may (the Effect Migrations.participant(sql), or the DDL in Migrations.participantDdl), or let the participant create it (omit migrate: false)"
          }
        : {
            reason: "the marker table accord_branch is not on this pool's search_path after its migration",
            fix: "give the pool a search_path whose first schema is the one Accord's tables belong in"
          })
    })
  }
  const hasForgotten = !missing.includes("accord_branch_forgotten")
  const isCurrent = missing.length === 0
  const absent = `${missing.join(", ")} ${missing.length === 1 ? "is" : "are"} missing beside accord_branch`
  const why =
    denied === undefined
      ? "migrated by an older release, and migrate is false"
      : `migrated by an older release, and this role may not create tables: ${denied}`
  const upgrade =
    "Run the Effect Migrations.participant(sql) once (Effect.runPromise from Promise code) as a role that may create tables, then GRANT this participant's role SELECT, INSERT, DELETE ON accord_branch_forgotten; SELECT, INSERT, UPDATE, DELETE ON accord_branch_seen; SELECT, INSERT, UPDATE ON accord_branch_grace."
  if (!hasForgotten) {
    yield* Effect.logWarning(
      `participant ${name}: ${absent} (${why}): forget keeps measuring markerGrace from each marker's creation, which can report a false HeuristicRollback for a branch recovery commits, and gcMarkers ages every marker from its creation. ${upgrade}`
    )
  } else if (!isCurrent) {
    yield* Effect.logWarning(
      `participant ${name}: ${absent} (${why}): gcMarkers keeps aging a marker no forget saw from its branch's BEGIN, and keeps markers only for the caller's markerGrace, which can delete a marker recovery or a coordinator still needs. ${upgrade}`
    )
  }
  const sqls = statementsOn(
    Branch.tableName("accord_branch", markerSchema),
    hasForgotten ? Branch.tableName("accord_branch_forgotten", markerSchema) : undefined,
    isCurrent
      ? {
          seen: Branch.tableName("accord_branch_seen", markerSchema),
          grace: Branch.tableName("accord_branch_grace", markerSchema)
        }
      : undefined
  )
  // Declared for the `gcMarkers` of every participant of the database (see `gcOn`). Not fatal: a
  // role that may not write it (tables migrated by another role) only goes without that protection.
  if (sqls.declareGrace !== undefined) {
    yield* query(sqls.declareGrace, [options.namespace ?? "", name, markerGrace]).pipe(
      Effect.timeoutFail({
        duration: verifyTimeout,
        onTimeout: () => ({ message: `no answer within ${Duration.format(verifyTimeout)}` })
      }),
      Effect.catchAll((failure) =>
        Effect.logWarning(
          `participant ${name}: could not declare its markerGrace in accord_branch_grace (${failure.message}): gcMarkers called by another participant of this database with a shorter markerGrace may delete this one's markers before its grace ends. GRANT SELECT, INSERT, UPDATE ON accord_branch_grace to this participant's role (the upsert reads its key).`
        )
      )
    )
  }

  /** How a prepared branch's ending is a vote. */
  const voteOf = (
    ctx: Participant.BranchContext,
    ended: Either.Either<Ending, StageFailure>
  ): Either.Either<Participant.Vote, TransactionError.BranchCallError> => {
    if (Either.isRight(ended)) {
      const ending = ended.right
      switch (ending._tag) {
        case "WorkFailed":
          return Either.right(
            Participant.Vote.No({ reason: ending.failure.message, sqlState: ending.failure.sqlState })
          )
        case "ReadOnly":
          return Either.right(Participant.Vote.ReadOnly())
        default:
          return Either.right(Participant.Vote.Prepared())
      }
    }
    const { stage, failure } = ended.left
    // Busy, or the server refused the marker or the PREPARE: nothing is prepared, a definite No.
    if (
      stage === "busy" ||
      (stage !== "begin" && !failure.connectionLost && failure.sqlState !== undefined)
    ) {
      return Either.right(Participant.Vote.No({ reason: failure.message, sqlState: failure.sqlState }))
    }
    // Could not start, or the connection dropped: the coordinator rolls the gid back to be sure.
    return Either.left(callError(ctx, "prepare", failure, stage === "end"))
  }

  /** How a one-phase branch's ending is a result. */
  const onePhaseOf = (
    ctx: Participant.BranchContext,
    ended: Either.Either<Ending, StageFailure>
  ): Either.Either<Participant.OnePhaseResult, TransactionError.BranchCallError> => {
    if (Either.isRight(ended)) {
      const ending = ended.right
      return Either.right(
        ending._tag === "WorkFailed"
          ? Participant.OnePhaseResult.No({
              reason: ending.failure.message,
              sqlState: ending.failure.sqlState
            })
          : Participant.OnePhaseResult.Committed()
      )
    }
    const { stage, failure } = ended.left
    if (stage === "busy" || (stage === "end" && !failure.connectionLost && failure.sqlState !== undefined)) {
      return Either.right(
        Participant.OnePhaseResult.No({ reason: failure.message, sqlState: failure.sqlState })
      )
    }
    // A COMMIT whose answer was lost may have committed.
    return Either.left(callError(ctx, "onePhaseCommit", failure, stage === "end"))
  }

  const cancelMs = Duration.toMillis(cancelTimeout)
  /**
   * `COMMIT PREPARED` or `ROLLBACK PREPARED` by gid. A gid already gone is idempotent success; then
   * the marker tells what became of it (present = committed), so a branch resolved outside the
   * protocol is reported as a heuristic outcome. Abandoned, the statement in flight is cancelled.
   */
  const startFinish = (
    ctx: Participant.BranchContext,
    phase: "commit" | "rollback"
  ): Participant.Started<
    "finished" | "goneCommitted" | "goneNotCommitted",
    TransactionError.BranchCallError
  > => {
    const gid = TransactionId.validateGid(ctx.gid)
    if (Either.isLeft(gid)) {
      const refused = callError(
        ctx,
        phase,
        { sqlState: undefined, message: gid.left.reason, connectionLost: false },
        false
      )
      return { result: Promise.resolve(Either.left(refused)), abandon: noop }
    }
    const verb = phase === "commit" ? "COMMIT" : "ROLLBACK"
    return startVia(client, cancelMs, async (send) => {
      const resolved = driver.resolving(gid.right)
      const done = await send(`${verb} PREPARED ${TransactionId.toSqlLiteral(gid.right)}`)
      if (done.ok) {
        resolved(true)
        return Either.right("finished" as const)
      }
      if (done.failure.sqlState !== UNDEFINED_OBJECT) {
        return Either.left(callError(ctx, phase, done.failure, done.failure.connectionLost))
      }
      resolved(false)
      const marker = await send<object>(sqls.markerExists, [ctx.gid])
      if (!marker.ok) return Either.left(callError(ctx, phase, marker.failure, marker.failure.connectionLost))
      return Either.right(
        column(marker.value[0], 0) === true ? ("goneCommitted" as const) : ("goneNotCommitted" as const)
      )
    })
  }

  const startCommit = (
    ctx: Participant.BranchContext
  ): Participant.Started<Participant.CommitAck, TransactionError.BranchCallError> =>
    mapStarted(startFinish(ctx, "commit"), (done) =>
      Either.map(done, (result) =>
        result === "goneNotCommitted" ? ("HeuristicRollback" as const) : ("Committed" as const)
      )
    )

  const commit = (ctx: Participant.BranchContext) => Participant.fromStarted(() => startCommit(ctx))

  // prepare and commitOnePhase: over the started branch when the driver has one (postgres.js), so
  // that the Effect and the Promise-level calls are one implementation.
  const runner = driver.runner(sqls.branch)
  let prepare: Participant.Participant<PgWork>["prepare"]
  let commitOnePhase: Participant.Participant<PgWork>["commitOnePhase"]
  let direct: Participant.Direct<PgWork> | undefined
  if (runner._tag === "Started") {
    const startPrepare = (ctx: Participant.BranchContext, work: PgWork) =>
      mapStarted(runner.start(ctx, "prepare", work), (ended) => voteOf(ctx, ended))
    const startOnePhase = (ctx: Participant.BranchContext, work: PgWork) =>
      mapStarted(runner.start(ctx, "onePhase", work), (ended) => onePhaseOf(ctx, ended))
    prepare = (ctx, work) => Participant.fromStarted(() => startPrepare(ctx, work))
    commitOnePhase = (ctx, work) => Participant.fromStarted(() => startOnePhase(ctx, work))
    direct = {
      prepare: startPrepare,
      commitOnePhase: startOnePhase,
      commit: startCommit,
      twins: { prepare, commitOnePhase, commit }
    }
  } else {
    prepare = (ctx, work) =>
      Effect.flatMap(Effect.either(runner.branch(ctx, "prepare", work)), (ended) => voteOf(ctx, ended))
    commitOnePhase = (ctx, work) =>
      Effect.flatMap(Effect.either(runner.branch(ctx, "onePhase", work)), (ended) => onePhaseOf(ctx, ended))
  }

  /**
   * Recovery's batch: every gid's `COMMIT PREPARED` / `ROLLBACK PREPARED` sent at once (the pool
   * pipelines them over its connections); the gids already gone are looked up in one marker query.
   * `true` = the branch now stands as decided (finished by this call, or earlier: marker present
   * after a commit, absent after a rollback). Anything else (connection lost, a gone branch that
   * ended against the decision, an invalid gid) is `false` and goes through `commit` / `rollback`,
   * which retries and reports heuristics.
   */
  const finishMany = (phase: "commit" | "rollback", ctxs: ReadonlyArray<Participant.BranchContext>) =>
    viaPromise(client, cancelMs, async (send): Promise<Either.Either<ReadonlyArray<boolean>>> => {
      const verb = phase === "commit" ? "COMMIT" : "ROLLBACK"
      const gone: Array<number> = []
      const oks = await Promise.all(
        ctxs.map(async (ctx, i) => {
          const gid = TransactionId.validateGid(ctx.gid)
          if (Either.isLeft(gid)) return false
          const resolved = driver.resolving(gid.right)
          const r = await send(`${verb} PREPARED ${TransactionId.toSqlLiteral(gid.right)}`)
          if (r.ok) resolved(true)
          else if (r.failure.sqlState === UNDEFINED_OBJECT) {
            resolved(false)
            gone.push(i)
          }
          return r.ok
        })
      )
      if (gone.length > 0) {
        const marked = await send<object>(sqls.markers, [gone.map((i) => ctxs[i]!.gid)])
        if (marked.ok) {
          const present = new Set(marked.value.map((row) => column(row, 0)))
          for (const i of gone) {
            if (present.has(ctxs[i]!.gid) === (phase === "commit")) oks[i] = true
          }
        }
      }
      return Either.right(oks)
    })

  const rollback = (ctx: Participant.BranchContext) =>
    Effect.map(
      Participant.fromStarted(() => startFinish(ctx, "rollback")),
      (result) => (result === "goneCommitted" ? ("HeuristicCommit" as const) : ("RolledBack" as const))
    )

  const state = Effect.fn("PgParticipant.state")(function* (ctx: Participant.BranchContext) {
    yield* Effect.annotateCurrentSpan({ txId: ctx.txId, branch: ctx.branch, gid: ctx.gid, phase: "state" })
    const failed = Effect.mapError((f: PgFailure) => callError(ctx, "state", f, f.connectionLost))
    const prepared = yield* failed(query<object>(sqls.prepared, [ctx.gid]))
    if (column(prepared[0], 0) === true) return "prepared" as const
    // Two statements, in this order: the gid gone, then the marker in a later snapshot. PostgreSQL
    // makes COMMIT PREPARED visible before it drops the gid from pg_prepared_xacts, so a snapshot
    // taken after the gid was seen gone sees a committed branch's marker. In one statement the
    // snapshot came first and pg_prepared_xacts was read live after it: a COMMIT PREPARED ending in
    // between read as neither prepared nor committed, "aborted" (882 times in 6,000 in a review's
    // race; participantStateRace.test.ts).
    const marker = yield* failed(query<object>(sqls.markerExists, [ctx.gid]))
    return column(marker[0], 0) === true ? ("committed" as const) : ("aborted" as const)
  })

  /**
   * `preparedAt` is on the caller's `Clock` (the recovery host's, which compares it with its own
   * `Clock.currentTimeMillis`): the time the answer arrived minus the age the server measured. The
   * age the caller computes is then the server's, whatever the skew between the two clocks, less
   * at most the time between the caller's reading of its clock and the answer (a branch looks
   * younger by that, never older).
   */
  const inDoubt: Effect.Effect<
    ReadonlyArray<Participant.InDoubtBranch>,
    TransactionError.BranchCallError
  > = query<object>(IN_DOUBT_SQL, [TransactionId.gidLikePattern(options.namespace)]).pipe(
    Effect.zip(Clock.currentTimeMillis),
    Effect.map(([rows, answeredAt]) =>
      rows.flatMap((row) => {
        const parsed = TransactionId.parseGid(String(column(row, 0)))
        if (parsed._tag === "None") return []
        // Another deployment's branches (another namespace, or one where this has none) are not
        // ours, nor are those of another participant sharing this database.
        if (parsed.value.namespace !== options.namespace || parsed.value.branch !== name) return []
        return [
          {
            gid: parsed.value.gid,
            txId: parsed.value.txId,
            branch: parsed.value.branch,
            preparedAt: answeredAt - Number(column(row, 1))
          }
        ]
      })
    ),
    Effect.mapError((f) => callError(self, "recover", f, f.connectionLost)),
    Effect.withSpan("PgParticipant.inDoubt", { attributes: { branch: name } })
  )

  // `forget` and `gcMarkers` lock markers, then stamps and sightings, in one order where they can
  // (see `forgetOn`, `gcOn`); what order a statement's rows are locked in is still the server's,
  // and a deadlock (40P01) only ends one statement, which changed nothing and is sent again, at
  // most three more times. Until 2026-12-07 a deadlock failed the call.
  const retryDeadlock = <A>(effect: Effect.Effect<A, PgFailure>) =>
    Effect.retry(effect, {
      while: (failure) => failure.sqlState === "40P01",
      schedule: Schedule.jittered(Schedule.exponential(Duration.millis(20))),
      times: 3
    })

  const forget = (ctxs: ReadonlyArray<Participant.BranchContext>) =>
    ctxs.length === 0
      ? Effect.void
      : retryDeadlock(
          query(sqls.forget, [
            ctxs.map((c) => c.gid),
            markerGrace,
            name,
            TransactionId.gidLikePattern(options.namespace)
          ])
        ).pipe(
          Effect.asVoid,
          Effect.mapError((f) => callError(self, "complete", f, false)),
          Effect.withSpan("PgParticipant.forget", { attributes: { branch: name, count: ctxs.length } })
        )

  const gcMarkers = (
    olderThan: Duration.DurationInput
  ): Effect.Effect<number, TransactionError.ConfigurationError | TransactionError.BranchCallError> => {
    // Checked before decoding: `Duration.decode` reads NaN or a negative number as zero, and a zero
    // age deletes every marker, those recovery and a re-driving coordinator still need included.
    const refuse = (reason: string) =>
      Effect.fail(
        new TransactionError.ConfigurationError({
          participant: name,
          reason,
          fix: 'give gcMarkers an age well past your longest recovery delay and at least markerGrace, e.g. gcMarkers("7 days")'
        })
      )
    const age = finiteDuration(olderThan)
    if (age._tag === "None" || Duration.toMillis(age.value) <= 0) {
      return refuse(`gcMarkers: olderThan must be a positive, finite duration (got ${String(olderThan)})`)
    }
    // `now()` minus more than that is out of PostgreSQL's range (22008): nothing would be collected.
    if (Duration.greaterThan(age.value, maxMarkerGrace)) {
      return refuse(
        `gcMarkers: olderThan must be at most 100 years (${Duration.format(maxMarkerGrace)}; got ${Duration.format(age.value)})`
      )
    }
    if (Duration.toSeconds(age.value) < markerGrace) {
      return refuse(
        `gcMarkers: olderThan (${Duration.format(age.value)}) is shorter than markerGrace (${Duration.format(
          Duration.seconds(markerGrace)
        )}): it would delete markers forget keeps for a coordinator still re-driving COMMIT PREPARED`
      )
    }
    return retryDeadlock(
      query<object>(sqls.gc, [
        Duration.toSeconds(age.value),
        TransactionId.gidLikePattern(options.namespace),
        options.namespace ?? ""
      ])
    ).pipe(
      Effect.map((rows) => Number(column(rows[0], 0) ?? 0)),
      Effect.mapError((f) => callError(self, "complete", f, false)),
      Effect.withSpan("PgParticipant.gcMarkers", { attributes: { branch: name } })
    )
  }

  const fromOperations = (calls: ReadonlyArray<Participant.OperationCall>): PgWork => {
    const steps = calls.map((call) => {
      if (typeof call.operation === "function") return call.operation as unknown as Operation<unknown>
      const op = Object.hasOwn(operations, call.operation) ? operations[call.operation] : undefined
      if (op === undefined) {
        const known = Object.keys(operations)
        throw new TransactionError.InvalidTransactionError({
          reason: `participant ${name} has no operation ${JSON.stringify(call.operation)}${
            known.length === 0 ? "" : ` (known: ${known.join(", ")})`
          }`
        })
      }
      return op as Operation<unknown>
    })
    return async (session) => {
      const results: Array<unknown> = []
      for (const [i, step] of steps.entries()) results.push(await step(session, calls[i]!.params))
      return results
    }
  }

  // Its gids: `accord[-<namespace>]_<txId>_<name>` (a txId has no `_`). Checked for every branch
  // of every transaction (`TwoPhaseCommit.run` refuses a namespace this participant's recovery would
  // never scan), so two string comparisons, no parse.
  const gidPrefix = options.namespace === undefined ? "accord_" : `accord-${options.namespace}_`
  const gidSuffix = `_${name}`
  const owns = (gid: TransactionId.Gid): boolean =>
    gid.startsWith(gidPrefix) &&
    gid.endsWith(gidSuffix) &&
    !gid.slice(gidPrefix.length, gid.length - gidSuffix.length).includes("_")
  const participant: PgParticipant = {
    name,
    driver: driver.kind,
    owns,
    verify,
    prepare,
    commitOnePhase,
    commit,
    ...(direct === undefined ? {} : { direct }),
    rollback,
    state,
    inDoubt,
    forget,
    finishMany,
    gcMarkers,
    fromOperations
  }
  return participant
})

const postgresFix =
  "as a superuser run `ALTER SYSTEM SET max_prepared_transactions = 64;` and restart PostgreSQL " +
  "(e.g. `pg_ctlcluster 15 main restart`); with docker compose, start postgres with " +
  '`command: ["postgres", "-c", "max_prepared_transactions=64"]`. It must be at least max_connections ' +
  "when every connection may hold a prepared branch."

/**
 * A participant on a postgres.js pool. Checks `max_prepared_transactions` (a `ConfigurationError`
 * with the fix when it is 0), creates the marker table and finds its schema, before any work can run.
 * @since 0.1.0
 */
export const make = (
  options: Options
): Effect.Effect<PgParticipant, TransactionError.ConfigurationError | TransactionError.BranchCallError> =>
  Effect.suspend(() => {
    const cancelTimeout = Duration.decode(options.cancelTimeout ?? defaultCancelTimeout)
    const slots = slotsOf(options)
    if (Either.isLeft(slots)) return Effect.fail(slots.left)
    const prepare = usesPreparedStatements(options.sql)
    return Effect.zipRight(
      poolSizeWarning(options),
      build(
        {
          kind: "postgres",
          client: fromPostgres(options.sql),
          runner: (statements) => ({
            _tag: "Started",
            start: (ctx, mode, work) =>
              startPgBranch(options.sql, statements, prepare, slots.right, ctx, mode, work, cancelTimeout)
          }),
          resolving: () => noop,
          fix: postgresFix
        },
        options
      )
    )
  })

/**
 * A warning when the pool has one connection: a branch then holds it while it waits for rows
 * locked by a prepared transaction whose `COMMIT PREPARED` needs a connection, so both wait until
 * a timeout ends the branch (the rule "one connection always free for COMMIT PREPARED" cannot hold).
 * Not refused: such a pool works where transactions never wait on each other's rows.
 */
const poolSizeWarning = (options: Options): Effect.Effect<void> => {
  const max = Number((options.sql as { options?: { max?: number } }).options?.max ?? 10)
  return max >= 2
    ? Effect.void
    : Effect.logWarning(
        `participant ${options.name}: its pool has max ${max}: a branch waiting for a row locked by a prepared transaction holds the only connection, and the COMMIT PREPARED that would free the row waits for it until a timeout ends the branch; give the pool max 2 or more`
      )
}

/**
 * The branch slots of each postgres.js pool, shared by every participant made on it. The rule
 * "one connection always free for COMMIT PREPARED" is the pool's: with slots per participant, two
 * participants on one pool of 3 took all three connections with branches waiting on a prepared
 * row's lock, and the COMMIT PREPARED that would free it waited for a connection until it timed out.
 */
const poolSlots = new WeakMap<postgres.Sql, { readonly slots: Branch.Slots; readonly max: number }>()

/**
 * The pool's slots: made by its first participant (`maxBranches`, default the pool's `max` minus
 * one); a later participant must ask for the same number or none.
 */
const slotsOf = (options: Options): Either.Either<Branch.Slots, TransactionError.ConfigurationError> => {
  const known = poolSlots.get(options.sql)
  if (known === undefined) {
    const poolSize = Number((options.sql as { options?: { max?: number } }).options?.max ?? 10)
    const max = Math.max(1, options.maxBranches ?? poolSize - 1)
    const slots = new Branch.Slots(max)
    poolSlots.set(options.sql, { slots, max })
    return Either.right(slots)
  }
  if (options.maxBranches !== undefined && Math.max(1, options.maxBranches) !== known.max) {
    return Either.left(
      new TransactionError.ConfigurationError({
        participant: String(options.name),
        reason: `maxBranches ${options.maxBranches} differs from the ${known.max} this pool's branches already share with another participant`,
        fix: `give every participant on one pool the same maxBranches (or none: the first one's applies), or give this participant a pool of its own`
      })
    )
  }
  return Either.right(known.slots)
}

/**
 * `make` as a Promise, for the Promise API (`TwoPhaseCoordinator`): rejects with the
 * `ConfigurationError` or `BranchCallError` itself (`_tag`, `fix`), not Effect's `FiberFailure`
 * around it, which `Effect.runPromise(make(...))` rejects with.
 * @since 0.1.0
 */
export const makePromise = (options: Options): Promise<PgParticipant> => runTyped(make(options))

/**
 * What a transaction found prepared at start-up that a PGlite participant does not resolve is,
 * and what resolves it: the refusal its branches get, and the warning, name it.
 */
const foreignReason = (gid: string, namespace: string | undefined): string => {
  const parsed = TransactionId.parseGid(gid)
  const resolvedHow = "; the next branch or in-doubt scan sees it gone"
  if (Option.isNone(parsed)) {
    return `'${gid}', prepared outside Accord: COMMIT PREPARED or ROLLBACK PREPARED it${resolvedHow}`
  }
  const { branch } = parsed.value
  const withRecovery =
    `register a participant named ${branch} on this instance with recovery ` +
    `(PgParticipant.makePglite({ name: "${branch}", ${parsed.value.namespace === undefined ? "" : `namespace: "${parsed.value.namespace}", `}db, gate }) ` +
    "among PgRecovery.run's participants), which commits it or rolls it back as its transaction log decided"
  return parsed.value.namespace === namespace
    ? `'${gid}', an Accord branch of participant ${branch} (a former name of this participant, or another participant on this instance): ${withRecovery}, or resolve it by hand as that log says${resolvedHow}`
    : `'${gid}', an Accord branch of ${parsed.value.namespace === undefined ? "no namespace" : `namespace ${parsed.value.namespace}`} (another deployment): ${withRecovery} against that deployment's log, or resolve it by hand as that log says${resolvedHow}`
}

/**
 * A participant on a PGlite instance. Branches hold the PGlite gate from BEGIN through
 * COMMIT/ROLLBACK PREPARED, so no statement ever waits for a row held by a prepared transaction
 * (which would hang the single-session instance, and with it the process). Give each PGlite
 * instance one participant.
 *
 * Transactions found prepared at start-up hold the gate until they are resolved. This
 * participant's own (its name, its namespace) are resolved by recovery, and branches wait for it
 * (`lockTimeout`). Any other (another participant name, as after a rename or on an older data
 * directory; another namespace; one prepared by hand) stays held too, since a branch beside it
 * could wait for ever on its row locks, but it closes the gate outright to this instance: its
 * branches are refused at once with a `No` (55P03) naming each such gid and what resolves it, and a
 * warning saying the same is logged when the participant is made and at each in-doubt scan while it
 * lasts. The branches of other PGlite instances on the gate pass it (they cannot wait on its
 * locks). Such a gid is not rolled back here: its commit decision may be in a log, and only
 * recovery with that log may presume an abort. A participant of the gid's name made on the same instance and gate, registered
 * with recovery, resolves it (and branches wait for that instead of being refused); one resolved by
 * hand is let go at the next branch or in-doubt scan.
 * @since 0.1.0
 */
export const makePglite = (
  options: PgliteOptions
): Effect.Effect<PgParticipant, TransactionError.ConfigurationError | TransactionError.BranchCallError> =>
  Effect.gen(function* () {
    const cancelTimeout = Duration.decode(options.cancelTimeout ?? defaultCancelTimeout)
    const lockTimeout = Duration.decode(options.lockTimeout ?? Duration.seconds(10))
    const gate = options.gate ?? sharedGate
    // Lets go of the foreign gids gone since (defined below, once the participant is made).
    let releaseForeign: Effect.Effect<void> = Effect.void
    const releaseGone = Effect.suspend(() => releaseForeign)
    const participant = yield* build(
      {
        kind: "pglite",
        client: fromPglite(options.db),
        runner: (statements) => ({
          _tag: "Effect",
          branch: (ctx, mode, work) =>
            pgliteBranch(
              options.db,
              statements,
              gate,
              lockTimeout,
              ctx,
              mode,
              work,
              cancelTimeout,
              releaseGone
            )
        }),
        resolving: (gid) => gate.resolving(gid, options.db),
        fix: 'open PGlite with PgParticipant.openPglite(dataDir), i.e. startParams: [...PGlite.defaultStartParams, "-c", "max_prepared_transactions=64"]'
      },
      options
    )
    // Every prepared transaction of this database holds row locks a branch could wait on for ever
    // (PGlite's wait is synchronous: the whole process stops), its own and others alike. The gate
    // is held for all of them; recovery resolves its own; the others close it (see above).
    const client = fromPglite(options.db)
    const allPrepared = statement<{ gid: string }>(client, ALL_PREPARED_SQL, [], cancelTimeout).pipe(
      Effect.map((rows) => new Set(rows.map((row) => row.gid))),
      Effect.mapError((f) =>
        callError({ txId: "", branch: participant.name }, "recover", f, f.connectionLost)
      )
    )
    const leftover = new Set((yield* participant.inDoubt).map((b) => b.gid as string))
    const foreign = new Set([...(yield* allPrepared)].filter((gid) => !leftover.has(gid)))
    gate.holdFor([...leftover], undefined, options.db)
    for (const gid of foreign) gate.holdForeign(gid, foreignReason(gid, options.namespace), options.db)
    // Only the gids still held as foreign: one a participant of its name took over (for its
    // recovery) makes branches wait, not be refused, and is not this participant's to report.
    const warnForeign = Effect.suspend(() => {
      const refusing = [...foreign].filter((gid) => gate.heldForeign(gid, options.db))
      return refusing.length === 0
        ? Effect.void
        : Effect.logWarning(
            `participant ${participant.name}: every PGlite branch on its instance is refused while these transactions are prepared there, which it does not resolve: ${refusing.map((gid) => foreignReason(gid, options.namespace)).join("; ")}`
          )
    })
    // Each gid is let go only if the hold it had when the scan was sent is still there and the scan
    // found it gone (`Gate.resolving`): never a branch's hold of the same gid entered since.
    releaseForeign = Effect.suspend(() => {
      if (foreign.size === 0) return Effect.void
      const resolved = [...foreign].map((gid) => [gid, gate.resolving(gid, options.db)] as const)
      return Effect.map(allPrepared, (present) => {
        for (const [gid, gone] of resolved) {
          if (present.has(gid)) continue
          foreign.delete(gid)
          gone(false)
        }
      })
    }).pipe(Effect.ignore)
    yield* warnForeign
    const inDoubt = Effect.tap(participant.inDoubt, () => Effect.zipRight(releaseForeign, warnForeign))
    return { ...participant, inDoubt }
  })
