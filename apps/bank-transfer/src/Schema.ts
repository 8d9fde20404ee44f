/**
 * The tables of one bank database (drizzle schema) and the DDL that creates them.
 *
 * - `accounts`: the balances; `CHECK (balance >= 0)` is what refuses an overdraft, so an
 *   insufficient-funds transfer is a No vote decided by the database itself.
 * - `ledger`: one row per transfer branch applied here, written inside the branch; its primary
 *   key makes "applied exactly once" something the database enforces and anyone can check.
 * - `bank_meta`: what was seeded (the total this bank started with).
 *
 * @since 0.1.0
 */
import { sql } from "drizzle-orm"
import { bigint, check, integer, pgTable, text, timestamp } from "drizzle-orm/pg-core"

/** @since 0.1.0 */
export const accounts = pgTable(
  "accounts",
  {
    id: integer("id").primaryKey(),
    balance: bigint("balance", { mode: "number" }).notNull()
  },
  (t) => [check("accounts_balance_non_negative", sql`${t.balance} >= 0`)]
)

/** @since 0.1.0 */
export const ledger = pgTable("ledger", {
  txId: text("tx_id").primaryKey(),
  account: integer("account").notNull(),
  delta: bigint("delta", { mode: "number" }).notNull(),
  appliedAt: timestamp("applied_at", { withTimezone: true }).notNull().defaultNow()
})

/** @since 0.1.0 */
export const meta = pgTable("bank_meta", {
  key: text("key").primaryKey(),
  value: text("value").notNull()
})

/**
 * The DDL matching the tables above (kept beside them; the demo has no migration tool).
 * @since 0.1.0
 */
export const createTables = [
  `CREATE TABLE IF NOT EXISTS accounts (
     id integer PRIMARY KEY,
     balance bigint NOT NULL,
     CONSTRAINT accounts_balance_non_negative CHECK (balance >= 0))`,
  `CREATE TABLE IF NOT EXISTS ledger (
     tx_id text PRIMARY KEY,
     account integer NOT NULL,
     delta bigint NOT NULL,
     applied_at timestamptz NOT NULL DEFAULT now())`,
  `CREATE TABLE IF NOT EXISTS bank_meta (key text PRIMARY KEY, value text NOT NULL)`
] as const

/** @since 0.1.0 */
export const dropTables = [
  "DROP TABLE IF EXISTS ledger",
  "DROP TABLE IF EXISTS accounts",
  "DROP TABLE IF EXISTS bank_meta"
] as const
