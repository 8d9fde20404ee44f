/**
 * The saga tables as drizzle `pg-core` definitions, and their DDL (idempotent, serialised by an
 * advisory lock so several processes may run it at start-up at once). `PgSagaLog.make` runs
 * `sagaLogDdl`; `Barrier.migrate` runs `barrierDdl`. Checks, primary keys, the foreign key and the
 * indexes carry the names PostgreSQL gave them under this DDL (`test/schemaMatchesDdl.test.ts`
 * compares the catalogs). The 2PC and 3PC tables are in `Schema`.
 *
 * - `accord_saga`: one row per saga: type, input, status, and the lease (`owner`, `lease_until`)
 *   of the orchestrator running it. `next_seq` numbers its records; bumping it in the same
 *   statement as an insert fences appends by owner.
 * - `accord_saga_record`: the saga's history, `(saga_id, seq)`, the record as JSON.
 * - `accord_saga_barrier`: in each *service* database, one row per `(gid, branch, op)` written in
 *   the same local transaction as the step's work (the DTM barrier).
 *
 * @since 0.1.0
 */
import { sql } from "drizzle-orm"
import {
  check,
  foreignKey,
  index,
  integer,
  jsonb,
  pgTable,
  primaryKey,
  text,
  timestamp
} from "drizzle-orm/pg-core"

/**
 * A saga (saga log database).
 * @since 0.1.0
 */
export const accordSaga = pgTable(
  "accord_saga",
  {
    sagaId: text("saga_id").primaryKey(),
    sagaType: text("saga_type").notNull(),
    input: jsonb("input"),
    status: text("status", { enum: ["running", "completed", "compensated", "stuck"] }).notNull(),
    owner: text("owner"),
    leaseUntil: timestamp("lease_until", { withTimezone: true }),
    nextSeq: integer("next_seq").notNull(),
    createdAt: timestamp("created_at", { withTimezone: true }).notNull().defaultNow(),
    updatedAt: timestamp("updated_at", { withTimezone: true }).notNull().defaultNow()
  },
  (t) => [
    index("accord_saga_running").on(t.createdAt).where(sql`status = 'running'`),
    index("accord_saga_status").on(t.status, t.createdAt),
    check("accord_saga_status_check", sql`status in ('running', 'completed', 'compensated', 'stuck')`)
  ]
)

/**
 * One record of a saga's history (saga log database).
 * @since 0.1.0
 */
export const accordSagaRecord = pgTable(
  "accord_saga_record",
  {
    sagaId: text("saga_id").notNull(),
    seq: integer("seq").notNull(),
    kind: text("kind").notNull(),
    step: text("step"),
    payload: jsonb("payload").notNull(),
    at: timestamp("at", { withTimezone: true }).notNull().defaultNow()
  },
  (t) => [
    primaryKey({ name: "accord_saga_record_pkey", columns: [t.sagaId, t.seq] }),
    foreignKey({
      name: "accord_saga_record_saga_id_fkey",
      columns: [t.sagaId],
      foreignColumns: [accordSaga.sagaId]
    }).onDelete("cascade")
  ]
)

/**
 * A barrier row (each service database). `op` is `action` or `compensation`; `reason` is what
 * wrote it: `action`, `compensation`, or `null-compensation` (a compensation that found no action:
 * it writes both rows, and the `action` row then refuses the late action).
 * @since 0.1.0
 */
export const accordSagaBarrier = pgTable(
  "accord_saga_barrier",
  {
    gid: text("gid").notNull(),
    branch: text("branch").notNull(),
    op: text("op", { enum: ["action", "compensation"] }).notNull(),
    reason: text("reason", { enum: ["action", "compensation", "null-compensation"] }).notNull(),
    result: jsonb("result"),
    createdAt: timestamp("created_at", { withTimezone: true }).notNull().defaultNow()
  },
  (t) => [
    primaryKey({ name: "accord_saga_barrier_pkey", columns: [t.gid, t.branch, t.op] }),
    check("accord_saga_barrier_op_check", sql`op in ('action', 'compensation')`),
    check("accord_saga_barrier_reason_check", sql`reason in ('action', 'compensation', 'null-compensation')`)
  ]
)

// Any fixed key, distinct from the 2PC tables' lock: "asag" in ASCII.
// Then, for the rest of the script (one implicit transaction), no NOTICE for a table or index that
// exists already: every service start printed them.
const LOCK = "select pg_advisory_xact_lock(1634951527); set local client_min_messages = warning;"

/**
 * DDL of the saga log tables.
 * @since 0.1.0
 */
export const sagaLogDdl = `${LOCK}
create table if not exists accord_saga (
  saga_id text primary key,
  saga_type text not null,
  input jsonb,
  status text not null check (status in ('running', 'completed', 'compensated', 'stuck')),
  owner text,
  lease_until timestamptz,
  next_seq integer not null,
  created_at timestamptz not null default now(),
  updated_at timestamptz not null default now()
);
create index if not exists accord_saga_running on accord_saga (created_at) where status = 'running';
create index if not exists accord_saga_status on accord_saga (status, created_at);
create table if not exists accord_saga_record (
  saga_id text not null references accord_saga (saga_id) on delete cascade,
  seq integer not null,
  kind text not null,
  step text,
  payload jsonb not null,
  at timestamptz not null default now(),
  primary key (saga_id, seq)
);`

/**
 * DDL of the barrier table.
 * @since 0.1.0
 */
export const barrierDdl = `${LOCK}
create table if not exists accord_saga_barrier (
  gid text not null,
  branch text not null,
  op text not null check (op in ('action', 'compensation')),
  reason text not null check (reason in ('action', 'compensation', 'null-compensation')),
  result jsonb,
  created_at timestamptz not null default now(),
  primary key (gid, branch, op)
);`
