/**
 * A PostgreSQL database as a 3PC participant (postgres.js, or PGlite embedded), built on
 * `PgParticipant`: the same options, the same `PgWork`, the same branch (BEGIN; work; marker row;
 * `PREPARE TRANSACTION`).
 *
 * What 3PC adds is one row per branch in `accord_3pc_state`, written and committed in the same
 * database in its own short transaction (never inside the prepared one, whose locks would block it).
 * Both tables are named with the schema found when the participant is made (as `PgParticipant`
 * does), so a work's `SET LOCAL search_path` cannot hide a committed branch's marker.
 * - after `PREPARE TRANSACTION` succeeds: `uncertain`, with the transaction's member list and mode
 *   (quorum sizes), so recovery terminates it under the rules it ran with. Only then
 *   does the participant vote yes, so a prepared branch without a row never voted yes. A row the
 *   server refuses (not a lost answer) rolls the branch back at once: a No vote;
 * - PreCommit: `uncertain → precommitted`; pre-abort: `uncertain → preaborted`. Both are
 *   conditional updates of that one row, so they exclude each other under any concurrency;
 * - rollback: the row becomes `aborted` *before* `ROLLBACK PREPARED`. For a gid that is not prepared
 *   yet this is a fence: the branch's own vote then finds `aborted` and rolls itself back. The fence
 *   is conditional: a `precommitted` row is not overwritten (the same row lock orders it against
 *   PreCommit) unless the caller passes `overPrecommit` (a terminator seeing an abort quorum:
 *   Va members aborted or preaborted, one aborted member in classic mode); the rollback then refuses, answering `Precommitted` (`HeuristicCommit` once the
 *   branch committed), so a terminator that decided abort on a stale view re-evaluates. Told
 *   `onlyIfUnvoted`, it fences only while no yes vote is recorded (else `Voted`).
 *
 * The member's state is derived from durable facts only, so it survives restarts:
 * committed = marker row present (`accord_branch`, committed with the branch); otherwise the
 * recorded row (`initial` when none). Two statements, in this order: the state row, then the
 * marker (a later snapshot). A row is only written after `PREPARE TRANSACTION` (or as a fence,
 * before `ROLLBACK PREPARED`), so a `PREPARE` + yes vote landing after the row read is seen with no
 * row (`initial`), and a `COMMIT PREPARED` landing after it is seen by its marker: never aborted.
 * Only the protocol's fence makes a member `aborted`. A branch rolled back by hand behind the
 * protocol's back (`ROLLBACK PREPARED` of its gid after the vote) keeps its recorded state: the
 * protocol decides as it would have, and a commit finding the branch gone without its marker
 * answers `HeuristicRollback`, reported as a heuristic outcome (read as `aborted`, as before
 * 2026-12-07, it made terminators decide abort against precommitted members, which refuse: the
 * transaction stayed blocked with their rows locked).
 *
 * @since 0.1.0
 */
import { Participant, type ThreePhaseCommit, TransactionError, TransactionId } from "@accord/core"
import type { PGlite } from "@electric-sql/pglite"
import { Duration, Effect, Either, Option } from "effect"
import {
  type Client,
  defaultCancelTimeout,
  fromPglite,
  fromPostgres,
  resultTransforms,
  runScript,
  statement
} from "./internal/client.js"
import { type PgFailure, toFailure } from "./internal/errors.js"
import { schemaOf, tableName } from "./internal/pgBranch.js"
import * as PgParticipant from "./PgParticipant.js"

/**
 * A 3PC participant on Postgres.
 * @since 0.1.0
 */
export interface PgThreePhaseParticipant
  extends ThreePhaseCommit.ThreePhaseParticipant<PgParticipant.PgWork> {
  readonly driver: "postgres" | "pglite"
  /** The underlying 2PC participant (same branches), e.g. for `Recovery` or operators. */
  readonly twoPhase: PgParticipant.PgParticipant
  /**
   * Its gids: `accord[-<namespace>]_<txId>_<name>` under its own name and namespace, the branches
   * its in-doubt scan reports. 3PC `run` refuses another namespace; recovery, termination and agents
   * leave another deployment's branches in this database alone.
   */
  readonly owns: (gid: TransactionId.Gid) => boolean
}

/**
 * DDL of the 3PC state table, idempotent, serialised by the same advisory lock as Accord's other DDL.
 * @since 0.1.0
 */
export const ddl = `select pg_advisory_xact_lock(1633907300);
create table if not exists accord_3pc_state (
  gid text primary key,
  tx_id text not null,
  branch text not null,
  state text not null check (state in ('uncertain', 'precommitted', 'preaborted', 'aborted')),
  members text not null default '',
  updated_at timestamptz not null default now()
);`

/**
 * The statements on Accord's tables, built once when the participant is made, with the tables'
 * schema-qualified names as the pool's connections found them (as `PgParticipant` names its marker
 * table: a work's `SET LOCAL search_path` cannot move the marker away from where `marker` looks).
 */
interface Statements {
  /** A conflicting row is returned unchanged: a fence (`aborted`) written first wins. */
  readonly vote: string
  readonly move: string
  /**
   * Returns no row when the fence refuses: the member is precommitted and $4 (overPrecommit) is
   * false, or $5 (onlyIfUnvoted) is true and the member recorded its yes vote (any row not
   * `aborted`). The insert and the vote's insert conflict on the same key, so exactly one of them
   * comes first.
   */
  readonly fence: string
  readonly row: string
  readonly marker: string
  readonly rows: string
  /**
   * Never the row of a branch still prepared: it is the branch's recorded yes vote, and without it
   * recovery would take the branch for one that never voted and roll it back, even after a commit
   * decision (a `forget` called too early, by a caller or an operator's script).
   */
  readonly forget: string
}

const statementsOn = (markers: string, states: string): Statements => ({
  vote:
    `insert into ${states} as s (gid, tx_id, branch, state, members) values ($1, $2, $3, 'uncertain', $4) ` +
    "on conflict (gid) do update set state = s.state returning state",
  move: `update ${states} set state = $2, updated_at = now() where gid = $1 and state = 'uncertain' returning state`,
  fence:
    `insert into ${states} as s (gid, tx_id, branch, state) values ($1, $2, $3, 'aborted') ` +
    "on conflict (gid) do update set state = 'aborted', updated_at = now() " +
    "where s.state = 'aborted' or (not $5 and (s.state <> 'precommitted' or $4)) " +
    "returning state",
  row: `select state from ${states} where gid = $1`,
  marker: `select exists (select 1 from ${markers} where gid = $1) as committed`,
  rows: `select gid, state, members from ${states} where gid = any($1::text[])`,
  forget:
    `delete from ${states} where gid = any($1::text[]) and gid not in ` +
    "(select gid from pg_prepared_xacts where database = current_database())"
})

type Recorded = "uncertain" | "precommitted" | "preaborted" | "aborted"

/** Assigns the branch a transaction id, so that it always prepares (3PC has no read-only vote). */
const STILL_PREPARED_SQL =
  "select exists (select 1 from pg_prepared_xacts where gid = $1 and database = current_database()) as prepared"
const FORCE_XID_SQL = "select pg_current_xact_id()"

// The `members` column holds the yes vote: `<mode>|<member>,<member>...`, the mode being `classic`
// or `quorum:<Vc>:<Va>` (rows written before the mode was recorded hold the member list only).
const encodeVote = (ctx: ThreePhaseCommit.MemberContext): string => {
  const members = ctx.members.join(",")
  const mode = ctx.mode
  if (mode === undefined) return members
  if (mode === "classic" || mode === "quorum") return `${mode}|${members}`
  return `quorum:${mode.commit}:${mode.abort}|${members}`
}

const parseMode = (text: string): ThreePhaseCommit.Mode | undefined => {
  if (text === "classic" || text === "quorum") return text
  const match = /^quorum:(\d+):(\d+)$/.exec(text)
  return match === null ? undefined : { commit: Number(match[1]), abort: Number(match[2]) }
}

const parseVote = (
  text: string | null | undefined
): { members: ReadonlyArray<string> | undefined; mode: ThreePhaseCommit.Mode | undefined } => {
  if (text === null || text === undefined || text === "") return { members: undefined, mode: undefined }
  const bar = text.indexOf("|")
  if (bar < 0) return { members: text.split(","), mode: undefined }
  const members = text.slice(bar + 1)
  return { members: members === "" ? undefined : members.split(","), mode: parseMode(text.slice(0, bar)) }
}

const build = (
  pg: PgParticipant.PgParticipant,
  client: Client,
  cancelTimeout: Duration.Duration,
  tables: Tables,
  migrate: boolean,
  namespace: string | undefined
): Effect.Effect<
  PgThreePhaseParticipant,
  TransactionError.ConfigurationError | TransactionError.BranchCallError
> =>
  Effect.gen(function* () {
    const name = pg.name
    const fail = (ctx: { readonly txId: string }, phase: TransactionError.Phase) => (f: PgFailure) =>
      new TransactionError.BranchCallError({
        txId: ctx.txId,
        branch: name,
        phase,
        reason: f.message,
        inDoubt: f.connectionLost,
        sqlState: f.sqlState
      })
    const query = <T>(
      text: string,
      params: ReadonlyArray<unknown>,
      ctx: { readonly txId: string },
      phase: TransactionError.Phase
    ) => statement<T>(client, text, params, cancelTimeout).pipe(Effect.mapError(fail(ctx, phase)))

    // migrate: false on a database without the state table (as `tables` found it). Found here, not
    // at the first vote: every vote and every rollback's fence writes that table, so a branch
    // prepared there could be rolled back by nobody but an operator.
    if (!migrate && !tables.stateTable) {
      return yield* new TransactionError.ConfigurationError({
        participant: name,
        reason: "the 3PC state table accord_3pc_state does not exist and migrate is false",
        fix: "run PgThreePhaseParticipant.ddl once as a role that may create tables in this database, or let the participant create it (omit migrate: false)"
      })
    }
    // The migration as before, then (once) where the tables are, when `tables` did not say yet.
    // The state table's DDL only when it is missing: PostgreSQL checks CREATE on the schema before
    // `if not exists`, so a role that may not create tables failed here on a database whose state
    // table was there and only the 2PC participant's later tables were not (those are its to
    // create, or to go without, with its warning).
    const found =
      migrate && !tables.ready && tables.stateTable
        ? yield* existing(client, cancelTimeout, name)
        : migrate && !tables.ready
          ? yield* runScript(client, ddl, cancelTimeout).pipe(
              Effect.mapError(toFailure),
              Effect.mapError(
                (failure) =>
                  new TransactionError.ConfigurationError({
                    participant: name,
                    reason: `cannot create accord_3pc_state: ${failure.message}`,
                    fix: "run PgThreePhaseParticipant.ddl as a role that may create tables in this database"
                  })
              ),
              Effect.zipRight(existing(client, cancelTimeout, name))
            )
          : tables
    const { markerSchema, stateSchema } = found
    if (typeof markerSchema !== "string" || typeof stateSchema !== "string") {
      // Created, yet not found through the pool's search_path: named bare, the vote and fence
      // statements would follow whatever search_path a work sets.
      return yield* new TransactionError.ConfigurationError({
        participant: name,
        reason: "accord_branch or accord_3pc_state is not on this pool's search_path",
        fix: "give the pool a search_path whose first schema is the one Accord's tables belong in"
      })
    }
    const sqls = statementsOn(
      tableName("accord_branch", markerSchema),
      tableName("accord_3pc_state", stateSchema)
    )

    const state = Effect.fn("PgThreePhaseParticipant.state")(function* (ctx: Participant.BranchContext) {
      yield* Effect.annotateCurrentSpan({ txId: ctx.txId, branch: ctx.branch, gid: ctx.gid, phase: "state" })
      // Order matters: the row, then the marker, in a later snapshot (see the module doc). Whether
      // the branch is still prepared does not matter: a voted branch gone without its marker was
      // rolled back by hand and keeps its recorded state.
      const recorded = (yield* query<{ state: Recorded }>(sqls.row, [ctx.gid], ctx, "state"))[0]?.state
      const committed =
        (yield* query<{ committed: boolean }>(sqls.marker, [ctx.gid], ctx, "state"))[0]?.committed === true
      if (committed) return "committed" as const
      if (recorded === "aborted") {
        // `rollback` writes the fence (this row: aborted) before it sends ROLLBACK PREPARED. Cut
        // between the two (a lost connection, a crash), the branch stayed prepared, holding its row
        // locks for good, while this row said aborted and every terminator, agent and recovery took
        // the member for finished. The fence has decided: the rollback is finished here, and a
        // failure to do so fails this read (nothing counts the member finished).
        const prepared = yield* query<{ prepared: boolean }>(STILL_PREPARED_SQL, [ctx.gid], ctx, "state")
        if (prepared[0]?.prepared === true) yield* pg.rollback(ctx)
      }
      return recorded ?? ("initial" as const)
    })

    const prepare = Effect.fn("PgThreePhaseParticipant.prepare")(function* (
      ctx: ThreePhaseCommit.MemberContext,
      work: PgParticipant.PgWork
    ) {
      yield* Effect.annotateCurrentSpan({
        txId: ctx.txId,
        branch: ctx.branch,
        gid: ctx.gid,
        phase: "prepare"
      })
      const vote = yield* pg.prepare(ctx, async (session) => {
        const result = await work(session)
        await session.query(FORCE_XID_SQL)
        return result
      })
      if (vote._tag !== "Prepared") return vote
      // The yes vote, with the members, is durable before it is sent; first writer wins against a fence.
      const voted = yield* Effect.either(
        statement<{ state: Recorded }>(
          client,
          sqls.vote,
          [ctx.gid, ctx.txId, ctx.branch, encodeVote(ctx)],
          cancelTimeout
        )
      )
      if (Either.isLeft(voted)) {
        const failure = voted.left
        if (failure.connectionLost || failure.sqlState === undefined)
          return yield* fail(ctx, "prepare")(failure)
        // Refused by the server: no yes vote exists, so nobody can be precommitted on this member
        // and its branch is rolled back here. Left prepared, it would wait for the coordinator's
        // rollback, which fences the gid in the same table first and can be refused the same way
        // (a full disk, a revoked grant): the branch and its row locks would stay until rolled back
        // by hand.
        yield* pg.rollback(ctx)
        return Participant.Vote.No({
          reason: `cannot record the yes vote: ${failure.message}`,
          sqlState: failure.sqlState
        })
      }
      const recorded = voted.right
      if (recorded[0]?.state === "aborted") {
        yield* pg.rollback(ctx)
        return Participant.Vote.No({ reason: "rolled back by the termination protocol before it voted" })
      }
      return vote
    })

    const move = (to: "precommitted" | "preaborted") =>
      Effect.fn(`PgThreePhaseParticipant.${to === "precommitted" ? "precommit" : "preabort"}`)(function* (
        ctx: Participant.BranchContext
      ) {
        const phase = to === "precommitted" ? "precommit" : "preabort"
        yield* Effect.annotateCurrentSpan({ txId: ctx.txId, branch: ctx.branch, gid: ctx.gid, phase })
        const moved = yield* query<{ state: Recorded }>(sqls.move, [ctx.gid, to], ctx, phase)
        // A row still `uncertain` proves the branch was not rolled back through the protocol (the
        // fence comes first), so a precommit that moved it needs no second look. A pre-abort does
        // look: a quorum-mode terminator may have committed an uncertain member directly, and a
        // committed member must never count towards an abort quorum.
        if (moved.length === 1 && to === "precommitted") return "precommitted" as const
        return yield* state(ctx)
      })

    const rollback = Effect.fn("PgThreePhaseParticipant.rollback")(function* (
      ctx: Participant.BranchContext,
      options?: ThreePhaseCommit.RollbackOptions
    ) {
      yield* Effect.annotateCurrentSpan({
        txId: ctx.txId,
        branch: ctx.branch,
        gid: ctx.gid,
        phase: "rollback"
      })
      const fenced = yield* query<{ state: Recorded }>(
        sqls.fence,
        [ctx.gid, ctx.txId, ctx.branch, options?.overPrecommit === true, options?.onlyIfUnvoted === true],
        ctx,
        "rollback"
      )
      if (fenced.length === 0) {
        // Refused: left alone. Its state tells whether it has committed since.
        const now = yield* state(ctx)
        return now === "committed"
          ? ("HeuristicCommit" as const)
          : now === "precommitted"
            ? ("Precommitted" as const)
            : ("Voted" as const)
      }
      return yield* pg.rollback(ctx)
    })

    const inDoubt: PgThreePhaseParticipant["inDoubt"] = Effect.gen(function* () {
      const branches = yield* pg.inDoubt
      if (branches.length === 0) return []
      const rows = yield* query<{ gid: string; state: Recorded; members: string }>(
        sqls.rows,
        [branches.map((b) => b.gid)],
        { txId: "" },
        "recover"
      )
      const byGid = new Map(rows.map((r) => [r.gid, r]))
      return branches.map((b): ThreePhaseCommit.InDoubtMember => {
        const row = byGid.get(b.gid)
        const vote = parseVote(row?.members)
        return {
          ...b,
          state: row?.state ?? "initial",
          members: vote.members as ThreePhaseCommit.InDoubtMember["members"],
          mode: vote.mode
        }
      })
    }).pipe(Effect.withSpan("PgThreePhaseParticipant.inDoubt", { attributes: { branch: name } }))

    const forget = (ctxs: ReadonlyArray<Participant.BranchContext>) =>
      ctxs.length === 0
        ? Effect.void
        : pg
            .forget(ctxs)
            .pipe(
              Effect.zipRight(query(sqls.forget, [ctxs.map((c) => c.gid)], { txId: "" }, "complete")),
              Effect.asVoid
            )

    // The rule of its scan (`PgParticipant.inDoubt`: its own name and namespace only).
    const owns = (gid: TransactionId.Gid): boolean =>
      Option.exists(
        TransactionId.parseGid(gid),
        (parsed) => parsed.branch === name && parsed.namespace === namespace
      )

    const participant: PgThreePhaseParticipant = {
      name,
      driver: pg.driver,
      twoPhase: pg,
      owns,
      verify: pg.verify,
      prepare,
      precommit: move("precommitted"),
      preabort: move("preaborted"),
      commit: pg.commit,
      rollback,
      state,
      inDoubt,
      forget,
      ...(pg.fromOperations === undefined ? {} : { fromOperations: pg.fromOperations })
    }
    return participant
  })

/**
 * A 3PC participant on a postgres.js pool: `PgParticipant.make`'s options and checks, plus the
 * `accord_3pc_state` table. The pool needs at least 2 connections (a branch holds one while its
 * state row is written on another).
 * @since 0.1.0
 */
export const make = (
  options: PgParticipant.Options
): Effect.Effect<
  PgThreePhaseParticipant,
  TransactionError.ConfigurationError | TransactionError.BranchCallError
> =>
  Effect.gen(function* () {
    // Its state reads go by column name: under a column transform (postgres.pascal turns `state`
    // into `State`) a gid fenced `aborted` read as unrecorded and its prepare voted yes.
    const transforms = resultTransforms(options.sql)
    if (transforms.length > 0) {
      return yield* new TransactionError.ConfigurationError({
        participant: options.name,
        reason: `the pool has ${transforms.join(", ")} result transforms (postgres.camel or the like); the 3PC participant reads its state rows by column name`,
        fix: "give the 3PC participant a postgres.js pool without `transform`"
      })
    }
    const client = fromPostgres(options.sql)
    const cancelTimeout = Duration.decode(options.cancelTimeout ?? defaultCancelTimeout)
    const tables = yield* existing(client, cancelTimeout, options.name)
    const pg = yield* PgParticipant.make(tables.ready ? { ...options, migrate: false } : options)
    return yield* build(pg, client, cancelTimeout, tables, options.migrate !== false, options.namespace)
  })

/**
 * A 3PC participant on PGlite (`PgParticipant.makePglite`'s options; branches hold the PGlite gate
 * from BEGIN through COMMIT/ROLLBACK PREPARED). PGlite runs with fsync off: demos and tests only.
 * @since 0.1.0
 */
export const makePglite = (
  options: PgParticipant.PgliteOptions
): Effect.Effect<
  PgThreePhaseParticipant,
  TransactionError.ConfigurationError | TransactionError.BranchCallError
> =>
  Effect.gen(function* () {
    const client = fromPglite(options.db as PGlite)
    const cancelTimeout = Duration.decode(options.cancelTimeout ?? defaultCancelTimeout)
    const tables = yield* existing(client, cancelTimeout, options.name)
    const pg = yield* PgParticipant.makePglite(tables.ready ? { ...options, migrate: false } : options)
    return yield* build(pg, client, cancelTimeout, tables, options.migrate !== false, options.namespace)
  })

/** Which of Accord's participant tables exist, and where, as `existing` found them. */
interface Tables {
  /**
   * Every one: the marker table, its index, `accord_branch_forgotten` beside it and the state
   * table. Until 2026-12-07 the forgotten table was not looked for: on a database migrated by an
   * older release this participant told its 2PC participant `migrate: false` whatever it was given,
   * so the forgotten table was never created and `forget` kept measuring `markerGrace` from each
   * marker's creation (recovery's forget deleted a long-prepared branch's marker at once, and a
   * coordinator re-driving its commit read a false `HeuristicRollback`). Only `migrate: false`
   * keeps that rule now (with the 2PC participant's warning), until `Migrations.participant` runs.
   * The same holds for `accord_branch_seen` and `accord_branch_grace` (`gcMarkers`' sightings and
   * declared graces, 2026-12-07): a database migrated before them is upgraded unless `migrate: false`.
   */
  readonly ready: boolean
  /** The state table `accord_3pc_state` (checked against `migrate: false`). */
  readonly stateTable: boolean
  /** The schemas of `accord_branch` and `accord_3pc_state` as the pool's `search_path` finds them. */
  readonly markerSchema: string | null | undefined
  readonly stateSchema: string | null | undefined
}

// `accord_branch_forgotten`, `accord_branch_seen` and `accord_branch_grace` are looked for in the
// marker table's schema, where the migration puts them (`format('%I', null)` fails, hence the `case`);
// `forgotten` is true when all three are there.
const EXISTING_SQL =
  "select to_regclass('accord_branch') is not null and to_regclass('accord_branch_created_at') is not null " +
  "as markers, to_regclass('accord_3pc_state') is not null as state_table, " +
  "m.nspname as marker_schema, case when m.nspname is null then false " +
  "else to_regclass(format('%I.accord_branch_forgotten', m.nspname)) is not null " +
  "and to_regclass(format('%I.accord_branch_seen', m.nspname)) is not null " +
  "and to_regclass(format('%I.accord_branch_grace', m.nspname)) is not null end as forgotten, " +
  `${schemaOf("'accord_3pc_state'")} as state_schema ` +
  `from (select ${schemaOf("'accord_branch'")} as nspname) m`

/**
 * Which of Accord's participant tables exist already, and in which schema, in one statement (it also answers the
 * `migrate: false` check). When all do, no DDL is sent at all: any lock the DDL takes on a table
 * that prepared branches hold ROW EXCLUSIVE on (their marker and state rows) would wait for them,
 * so a participant restarting with in-doubt branches must not send it
 * (`Migrations.participantDdl` itself creates the marker table and its index only when missing, and
 * `accord_branch_forgotten` as a table of its own, without touching the marker table).
 */
const existing = (client: Client, cancelTimeout: Duration.Duration, name: string) =>
  statement<{
    markers: boolean
    state_table: boolean
    forgotten: boolean
    marker_schema: string | null
    state_schema: string | null
  }>(client, EXISTING_SQL, [], cancelTimeout).pipe(
    Effect.map(
      (rows): Tables => ({
        ready: rows[0]?.markers === true && rows[0]?.forgotten === true && rows[0]?.state_table === true,
        stateTable: rows[0]?.state_table === true,
        markerSchema: rows[0]?.marker_schema,
        stateSchema: rows[0]?.state_schema
      })
    ),
    Effect.mapError(
      (f) =>
        new TransactionError.BranchCallError({
          txId: "",
          branch: String(name),
          phase: "begin",
          reason: f.message,
          inDoubt: false,
          sqlState: f.sqlState
        })
    )
  )
