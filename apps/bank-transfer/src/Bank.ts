/**
 * One bank database: seeding, the work a transfer runs in its branch, and the checks the summary
 * reads (balances, ledger, prepared transactions).
 *
 * @since 0.1.0
 */
import type { PgWork } from "@accord/postgres/PgParticipant"
import * as Pipeline from "@accord/postgres/Pipeline"
import { eq, sql } from "drizzle-orm"
import { drizzle } from "drizzle-orm/postgres-js"
import * as Schema from "./Schema.js"

/**
 * Plain SQL on a bank's setup connection (postgres.js or PGlite behind it).
 * @since 0.1.0
 */
export interface Db {
  readonly query: <T = Record<string, unknown>>(
    text: string,
    params?: ReadonlyArray<unknown>
  ) => Promise<Array<T>>
  /** Runs `statements` in one local transaction. */
  readonly transaction: (
    statements: ReadonlyArray<{ text: string; params?: ReadonlyArray<unknown> }>
  ) => Promise<void>
}

/**
 * What a bank's branch of a transfer runs (queries on the branch's connection).
 * @since 0.1.0
 */
export type Work = PgWork

/** The balance every account is seeded with. @since 0.1.0 */
export const initialBalance = 1000

// Builds drizzle queries without a connection; they run on the branch's connection.
const builder = drizzle.mock()

/**
 * The work of one side of a transfer in its bank: move `delta` on `account` and write the ledger
 * row, inside the branch. A debit past zero violates `CHECK (balance >= 0)`: the database refuses
 * and the branch votes No; so does an account that does not exist (the UPDATE must find one row).
 * The two statements do not depend on each other, so they are a `Pipeline`: on a PostgreSQL server
 * a branch's BEGIN, both statements, its marker and its PREPARE go in one round trip.
 * @since 0.1.0
 */
export const applyWork = (txId: string, account: number, delta: number): PgWork =>
  Pipeline.make([
    {
      query: builder
        .update(Schema.accounts)
        .set({ balance: sql`${Schema.accounts.balance} + ${delta}` })
        .where(eq(Schema.accounts.id, account)),
      check: Pipeline.expectRows(1)
    },
    builder.insert(Schema.ledger).values({ txId, account, delta })
  ])

/**
 * The seed id of the dataset `db` holds (written by `seed`), or `undefined` when it holds none (no
 * tables, or a dataset seeded before seed ids existed). Two banks belong to one dataset only when
 * both hold the same seed id: a run killed between seeding bank A and bank B leaves them different.
 * @since 0.1.0
 */
export const seedIdOf = async (db: Db): Promise<string | undefined> => {
  const rows = await db.query<{ present: boolean }>(
    "SELECT to_regclass('bank_meta') IS NOT NULL AND to_regclass('accounts') IS NOT NULL AND to_regclass('ledger') IS NOT NULL AS present"
  )
  if (rows[0]?.present !== true) return undefined
  const meta = await db.query<{ seed_id: string | null; seeded: number }>(
    `SELECT (SELECT value FROM bank_meta WHERE key = 'seed_id') AS seed_id,
            (SELECT count(*)::int FROM bank_meta WHERE key = 'seeded_total') AS seeded`
  )
  const row = meta[0]
  return row !== undefined && row.seeded === 1 && typeof row.seed_id === "string" && row.seed_id !== ""
    ? row.seed_id
    : undefined
}

/**
 * True when the two banks hold one dataset: both seeded by the same `seed` run (same seed id).
 * Otherwise (either unseeded, or a seed interrupted between the banks) both must be re-seeded.
 * @since 0.1.0
 */
export const sameDataset = (a: string | undefined, b: string | undefined): boolean =>
  a !== undefined && a === b

/**
 * Drops the demo tables and seeds `accounts` accounts of `initialBalance` each, recording the
 * seeded total and `seedId` (shared by both banks of one dataset) in `bank_meta`, all in one local
 * transaction.
 * @since 0.1.0
 */
export const seed = (db: Db, accounts: number, seedId: string): Promise<void> =>
  db.transaction([
    ...Schema.dropTables.map((text) => ({ text })),
    ...Schema.createTables.map((text) => ({ text })),
    {
      text: "INSERT INTO accounts (id, balance) SELECT g, $2::bigint FROM generate_series(1, $1::int) AS g",
      params: [accounts, initialBalance]
    },
    {
      text: "INSERT INTO bank_meta (key, value) VALUES ('seeded_total', $1::text), ('accounts', $2::text), ('seed_id', $3::text)",
      params: [String(accounts * initialBalance), String(accounts), seedId]
    }
  ])

/**
 * What a bank holds now.
 * @since 0.1.0
 */
export interface BankState {
  readonly seededTotal: number
  readonly accounts: number
  readonly total: number
  readonly negative: number
  /** Accounts whose balance differs from seed + ledger deltas (should be 0). */
  readonly ledgerMismatches: number
}

/**
 * Reads balances, the seeded total and the ledger agreement.
 * @since 0.1.0
 */
export const state = async (db: Db): Promise<BankState> => {
  const [meta] = await db.query<{ seeded: string; accounts: string }>(
    `SELECT (SELECT value FROM bank_meta WHERE key = 'seeded_total') AS seeded,
            (SELECT value FROM bank_meta WHERE key = 'accounts') AS accounts`
  )
  const [sums] = await db.query<{ total: string; negative: number }>(
    "SELECT coalesce(sum(balance), 0)::text AS total, count(*) FILTER (WHERE balance < 0)::int AS negative FROM accounts"
  )
  const [mismatch] = await db.query<{ n: number }>(
    `SELECT count(*)::int AS n
       FROM accounts a
       LEFT JOIN (SELECT account, sum(delta) AS moved FROM ledger GROUP BY account) l ON l.account = a.id
      WHERE a.balance <> $1::bigint + coalesce(l.moved, 0)`,
    [initialBalance]
  )
  return {
    seededTotal: Number(meta?.seeded ?? 0),
    accounts: Number(meta?.accounts ?? 0),
    total: Number(sums?.total ?? 0),
    negative: sums?.negative ?? 0,
    ledgerMismatches: mismatch?.n ?? 0
  }
}

/**
 * Transaction ids with a ledger row in this bank.
 * @since 0.1.0
 */
export const ledgerTxIds = async (db: Db): Promise<Set<string>> => {
  const rows = await db.query<{ tx_id: string }>("SELECT tx_id FROM ledger")
  return new Set(rows.map((r) => r.tx_id))
}

/**
 * The database server's clock now, as text (to compare with `pg_prepared_xacts.prepared`).
 * @since 0.1.0
 */
export const now = async (db: Db): Promise<string> => {
  const [row] = await db.query<{ now: string }>("SELECT clock_timestamp()::text AS now")
  return row?.now ?? ""
}

/**
 * How many gids `PreparedLeft.gids` lists at most (`count` has them all).
 * @since 0.1.0
 */
export const preparedListed = 10

/**
 * Prepared transactions left in one bank database.
 * @since 0.1.0
 */
export interface PreparedLeft {
  readonly count: number
  /** The first `preparedListed` of their gids, oldest first. */
  readonly gids: ReadonlyArray<string>
}

/**
 * Prepared transactions left in this database (any gid, not only Accord's), or with `preparedBefore`
 * (a time of this server's clock, from `now`) only those prepared before it: a recovery pass that
 * started at that time has finished every branch prepared before, so any of those still here is
 * left over; a branch prepared after it belongs to a run still in flight on the same databases.
 * @since 0.1.0
 */
export const preparedLeft = async (db: Db, preparedBefore?: string): Promise<PreparedLeft> => {
  const rows = await db.query<{ gid: string; n: number }>(
    `SELECT gid, (count(*) OVER ())::int AS n
       FROM pg_prepared_xacts
      WHERE database = current_database() AND ($1::timestamptz IS NULL OR prepared < $1::timestamptz)
      ORDER BY prepared, gid
      LIMIT ${preparedListed}`,
    [preparedBefore ?? null]
  )
  return { count: rows[0]?.n ?? 0, gids: rows.map((r) => r.gid) }
}
