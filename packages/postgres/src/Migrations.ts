/**
 * The DDL of Accord's tables (see `Schema`), idempotent and serialised by an advisory lock so that
 * several processes can run it at start-up at once. Each table is created only when it does not
 * exist yet: `create index if not exists` would take a lock on the existing table, and a prepared
 * branch holds a lock on `accord_branch` (its marker row) until COMMIT PREPARED, so a participant
 * starting beside an orphaned branch would wait for ever (and hang PGlite). Later additions to an
 * existing table (`accord_heuristic_once`) are likewise guarded by a catalog check, so they run once;
 * a later addition to the marker table is a table of its own (`accord_branch_forgotten`,
 * `accord_branch_seen`, `accord_branch_grace`), never an `alter table accord_branch`, which would
 * wait for those locks.
 * `PgParticipant.make` runs `participant` (only when one of its tables is missing; a role that may
 * not create them keeps the older rules there, with a warning, if the marker table is there),
 * `PgTransactionLog.make` runs `log`; both are exported for users who prefer to migrate ahead of
 * time (e.g. with a role that may create tables, granting the participants' role what
 * docs/postgres.md lists).
 *
 * @since 0.1.0
 */
import type { PGlite } from "@electric-sql/pglite"
import { Effect } from "effect"
import type postgres from "postgres"
import { clientOf, defaultCancelTimeout, runScript } from "./internal/client.js"

// Any fixed key: "acrd" in ASCII.
const LOCK = "select pg_advisory_xact_lock(1633907300);"

/**
 * DDL of the marker table, run in every participant database.
 * @since 0.1.0
 */
export const participantDdl = `${LOCK}
do $accord$
declare
  marker_schema text;
begin
  if to_regclass('accord_branch') is null then
    create table accord_branch (
      gid text primary key,
      tx_id text not null,
      branch text not null,
      created_at timestamptz not null default now()
    );
    create index accord_branch_created_at on accord_branch (created_at);
  end if;
  -- When \`forget\` first saw each marker (its grace runs from then). A table of its own, beside the
  -- marker table, rather than a column of it: adding a column locks accord_branch, which prepared
  -- branches hold a lock on until COMMIT PREPARED (a database upgraded beside an orphaned branch
  -- would wait for ever, and PGlite would hang). Created once, in the marker table's schema.
  select n.nspname into marker_schema from pg_class c join pg_namespace n on n.oid = c.relnamespace
    where c.oid = to_regclass('accord_branch');
  if to_regclass(format('%I.accord_branch_forgotten', marker_schema)) is null then
    execute format(
      'create table %I.accord_branch_forgotten (gid text primary key, branch text not null, forgotten_at timestamptz not null default now())',
      marker_schema
    );
    execute format(
      'create index accord_branch_forgotten_at on %I.accord_branch_forgotten (forgotten_at)',
      marker_schema
    );
  end if;
  -- When gcMarkers saw each gid prepared, and first saw it no longer prepared: a marker seen that
  -- way is aged from that second sighting (after its commit), not from its branch's BEGIN.
  if to_regclass(format('%I.accord_branch_seen', marker_schema)) is null then
    execute format(
      'create table %I.accord_branch_seen (gid text primary key, seen_at timestamptz not null, prepared boolean not null)',
      marker_schema
    );
  end if;
  -- The markerGrace each participant declared when made ('' for no namespace): gcMarkers keeps a
  -- branch's markers that long, whichever participant of the database calls it.
  if to_regclass(format('%I.accord_branch_grace', marker_schema)) is null then
    execute format(
      'create table %I.accord_branch_grace (namespace text not null, branch text not null, grace float8 not null, declared_at timestamptz not null default now(), primary key (namespace, branch))',
      marker_schema
    );
  end if;
end $accord$;`

/**
 * DDL of the coordinator log tables, run in the log database.
 * @since 0.1.0
 */
export const logDdl = `${LOCK}
do $accord$ begin
  if to_regclass('accord_decision') is null then
    create table accord_decision (
      tx_id text primary key,
      decision text not null check (decision in ('commit', 'abort')),
      branches jsonb not null,
      decided_at timestamptz not null,
      completed_at timestamptz
    );
    create index accord_decision_unfinished on accord_decision (decided_at) where completed_at is null;
  end if;
  if to_regclass('accord_heuristic') is null then
    create table accord_heuristic (
      id bigint generated always as identity primary key,
      tx_id text not null,
      branch text not null,
      gid text not null,
      decision text not null check (decision in ('commit', 'abort')),
      detail text not null,
      recorded_at timestamptz not null default now()
    );
  end if;
  -- A heuristic outcome is recorded once (PgTransactionLog inserts with "on conflict do nothing").
  -- Databases created before this index may hold duplicates: the first record (lowest id) of each
  -- is kept, the later ones deleted, then the index is built. md5(detail): a detail of any length
  -- fits the index.
  if to_regclass('accord_heuristic_once') is null then
    -- No insert may land between the delete and the index build (it could be a duplicate).
    lock table accord_heuristic in share row exclusive mode;
    delete from accord_heuristic dup using accord_heuristic kept
    where kept.tx_id = dup.tx_id and kept.gid = dup.gid and kept.decision = dup.decision
      and md5(kept.detail) = md5(dup.detail) and kept.id < dup.id;
    create unique index accord_heuristic_once on accord_heuristic (tx_id, gid, decision, md5(detail));
  end if;
end $accord$;`

/**
 * A database to migrate: a postgres.js `sql` or a PGlite instance.
 * @since 0.1.0
 */
export type Target = postgres.Sql | PGlite

// Cancelled on the server when interrupted, not left waiting on a lock. Fails with the driver's
// own error (its `code`, `severity`, `detail`), as before the cancellation.
const run = (target: Target, ddl: string): Effect.Effect<void, Error> =>
  runScript(clientOf(target), ddl, defaultCancelTimeout).pipe(
    Effect.mapError((error) => (error instanceof Error ? error : new Error(String(error))))
  )

/**
 * Creates the marker table (participant databases). Idempotent.
 * @since 0.1.0
 */
export const participant = (target: Target): Effect.Effect<void, Error> => run(target, participantDdl)

/**
 * Creates the coordinator log tables. Idempotent.
 * @since 0.1.0
 */
export const log = (target: Target): Effect.Effect<void, Error> => run(target, logDdl)
