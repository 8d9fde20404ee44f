/**
 * Accord's tables as drizzle `pg-core` definitions, for applications that want to query them
 * (dashboards, operator tools). `Migrations` creates them; the two are kept in step by a test.
 *
 * - `accord_branch`: the marker row a branch inserts inside its own transaction before
 *   `PREPARE TRANSACTION`. Prepared = in `pg_prepared_xacts`; committed = marker present; rolled
 *   back = neither. Lives in every participant database.
 * - `accord_branch_forgotten`: when `forget` first saw a marker; the marker goes `markerGrace` later.
 * - `accord_branch_seen`: the gids `gcMarkers` saw prepared, and when it first saw each no longer
 *   prepared; such a marker is aged from then, after its commit, not from its branch's BEGIN.
 * - `accord_branch_grace`: the `markerGrace` each participant declared; `gcMarkers` keeps a
 *   branch's markers that long, whoever calls it.
 * - `accord_decision`: the coordinator log, one row per global transaction, first writer wins.
 * - `accord_heuristic`: branches that ended against their decision (resolved by hand), each outcome
 *   once (`accord_heuristic_once`: txId, gid, decision and the md5 of the detail).
 * - `accord_3pc_state`: the 3PC state of a branch (`PgThreePhaseParticipant.ddl` creates it), in
 *   each 3PC participant database.
 *
 * The saga tables are in `SagaSchema`. Checks, primary keys and indexes carry the names
 * PostgreSQL gave them under Accord's DDL (`test/schemaMatchesDdl.test.ts` compares the catalogs).
 *
 * @since 0.1.0
 */
import { sql } from "drizzle-orm"
import {
  bigint,
  boolean,
  check,
  doublePrecision,
  index,
  jsonb,
  pgTable,
  primaryKey,
  text,
  timestamp,
  uniqueIndex
} from "drizzle-orm/pg-core"

/**
 * The marker row of a branch (participant databases).
 * @since 0.1.0
 */
export const accordBranch = pgTable(
  "accord_branch",
  {
    gid: text("gid").primaryKey(),
    txId: text("tx_id").notNull(),
    branch: text("branch").notNull(),
    createdAt: timestamp("created_at", { withTimezone: true }).notNull().defaultNow()
  },
  (t) => [index("accord_branch_created_at").on(t.createdAt)]
)

/**
 * When `forget` first saw a branch's marker (participant databases, beside `accord_branch`): the
 * marker is deleted by a later `forget` once this is older than the participant's `markerGrace`.
 * @since 0.1.0
 */
export const accordBranchForgotten = pgTable(
  "accord_branch_forgotten",
  {
    gid: text("gid").primaryKey(),
    branch: text("branch").notNull(),
    forgottenAt: timestamp("forgotten_at", { withTimezone: true }).notNull().defaultNow()
  },
  (t) => [index("accord_branch_forgotten_at").on(t.forgottenAt)]
)

/**
 * A gid `gcMarkers` saw prepared (participant databases, beside `accord_branch`): `prepared` while
 * it was still prepared at the last call, `seen_at` that call's time; then, from the first call
 * that found it no longer prepared, `prepared` false and `seen_at` that call's time, which is after
 * the branch's commit. `gcMarkers` ages the marker from that time rather than from its `created_at`
 * (the branch's BEGIN), and deletes the row with it.
 * @since 0.1.0
 */
export const accordBranchSeen = pgTable("accord_branch_seen", {
  gid: text("gid").primaryKey(),
  seenAt: timestamp("seen_at", { withTimezone: true }).notNull(),
  prepared: boolean("prepared").notNull()
})

/**
 * The `markerGrace` (seconds) a participant declared when it was made, per gid namespace (`''` for
 * none) and branch name; the latest declaration counts (participant databases, beside
 * `accord_branch`). `gcMarkers` keeps each marker at least its branch's grace, whichever
 * participant of the database calls it.
 * @since 0.1.0
 */
export const accordBranchGrace = pgTable(
  "accord_branch_grace",
  {
    namespace: text("namespace").notNull(),
    branch: text("branch").notNull(),
    grace: doublePrecision("grace").notNull(),
    declaredAt: timestamp("declared_at", { withTimezone: true }).notNull().defaultNow()
  },
  (t) => [primaryKey({ name: "accord_branch_grace_pkey", columns: [t.namespace, t.branch] })]
)

/**
 * The decision of a global transaction (coordinator log database).
 * @since 0.1.0
 */
export const accordDecision = pgTable(
  "accord_decision",
  {
    txId: text("tx_id").primaryKey(),
    decision: text("decision", { enum: ["commit", "abort"] }).notNull(),
    branches: jsonb("branches").$type<ReadonlyArray<{ branch: string; gid: string }>>().notNull(),
    decidedAt: timestamp("decided_at", { withTimezone: true }).notNull(),
    completedAt: timestamp("completed_at", { withTimezone: true })
  },
  (t) => [
    index("accord_decision_unfinished").on(t.decidedAt).where(sql`completed_at is null`),
    check("accord_decision_decision_check", sql`decision in ('commit', 'abort')`)
  ]
)

/**
 * A heuristic outcome (coordinator log database).
 * @since 0.1.0
 */
export const accordHeuristic = pgTable(
  "accord_heuristic",
  {
    id: bigint("id", { mode: "number" }).primaryKey().generatedAlwaysAsIdentity(),
    txId: text("tx_id").notNull(),
    branch: text("branch").notNull(),
    gid: text("gid").notNull(),
    decision: text("decision", { enum: ["commit", "abort"] }).notNull(),
    detail: text("detail").notNull(),
    recordedAt: timestamp("recorded_at", { withTimezone: true }).notNull().defaultNow()
  },
  (t) => [
    check("accord_heuristic_decision_check", sql`decision in ('commit', 'abort')`),
    uniqueIndex("accord_heuristic_once").on(t.txId, t.gid, t.decision, sql`md5(detail)`)
  ]
)

/**
 * The 3PC state of a branch (each 3PC participant database): `uncertain` once its yes vote is
 * recorded, then `precommitted` or `preaborted`; `aborted` is also the fence written before a
 * rollback. `members` is the recorded yes vote, `<mode>|<member>,<member>...` (`''` when none);
 * read it, do not write it: `PgThreePhaseParticipant` owns these rows (`forget` deletes them).
 * @since 0.1.0
 */
export const accord3pcState = pgTable(
  "accord_3pc_state",
  {
    gid: text("gid").primaryKey(),
    txId: text("tx_id").notNull(),
    branch: text("branch").notNull(),
    state: text("state", { enum: ["uncertain", "precommitted", "preaborted", "aborted"] }).notNull(),
    members: text("members").notNull().default(""),
    updatedAt: timestamp("updated_at", { withTimezone: true }).notNull().defaultNow()
  },
  () => [
    check(
      "accord_3pc_state_state_check",
      sql`state in ('uncertain', 'precommitted', 'preaborted', 'aborted')`
    )
  ]
)
