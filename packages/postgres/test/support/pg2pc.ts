/**
 * Shared set-up of the pg2pc integration tests: bank databases with a CHECK (balance >= 0),
 * pools that count the statements they send, and end-of-file checks.
 */
import { Participant, TransactionId, TwoPhaseCommit } from "@accord/core"
import { expect } from "@effect/vitest"
import { Clock, Effect } from "effect"
import postgres from "postgres"
import { type BranchSession, make as makeParticipant, type PgParticipant } from "../../src/PgParticipant.js"
import * as TestDatabase from "../../src/TestDatabase.js"

export const BANK_DDL = `create table accounts (
  id int primary key,
  balance int not null check (balance >= 0)
)`

export interface CountingSql {
  readonly sql: postgres.Sql
  /** Every statement text sent through this pool, in order. */
  readonly statements: Array<string>
}

/** A pool whose statements are recorded (postgres.js `debug`). */
export const countingPool = (url: string, max = 8): CountingSql => {
  const statements: Array<string> = []
  const sql = postgres(url, {
    max,
    onnotice: () => {},
    debug: (_connection, query) => {
      statements.push(query)
    }
  })
  return { sql, statements }
}

/** Creates a bank database with `accounts` 1..n, each holding `balance`. */
export const createBank = async (adminUrl: string, name: string, accounts: number, balance: number) => {
  const url = await TestDatabase.createDatabase(adminUrl, name)
  const sql = postgres(url, { max: 1, onnotice: () => {} })
  try {
    await sql.unsafe(BANK_DDL)
    await sql.unsafe(
      `insert into accounts (id, balance) select g, ${Number(balance)} from generate_series(1, ${Number(accounts)}) g`
    )
  } finally {
    await sql.end({ timeout: 5 })
  }
  return url
}

/** Moves `amount` out of (negative) or into (positive) an account, inside a branch. */
export const adjust = (id: number, amount: number) => (session: BranchSession) =>
  session.query("update accounts set balance = balance + $2 where id = $1", [id, amount])

export const balance = (sql: postgres.Sql, id: number) =>
  Effect.promise(async () => {
    const rows = await sql<{ balance: number }[]>`select balance from accounts where id = ${id}`
    return rows[0]?.balance
  })

export const total = (sql: postgres.Sql) =>
  Effect.promise(async () => {
    const rows = await sql<{ total: number }[]>`select coalesce(sum(balance), 0)::int as total from accounts`
    return rows[0]!.total
  })

/** Accord gids prepared in the given databases. */
export const preparedIn = async (adminUrl: string, databases: ReadonlyArray<string>) =>
  (await TestDatabase.preparedOnServer(adminUrl)).filter((p) => databases.includes(p.database))

/** A fresh branch context (txId, branch, gid) for calling a participant directly. */
export const ctxFor = (name: string) =>
  Effect.map(TransactionId.make, (txId) => ({
    txId,
    branch: name as TransactionId.BranchName,
    gid: TransactionId.gid(txId, name as TransactionId.BranchName)
  }))

/** `amount` from account `from` in `pa` to account `to` in `pb`, through 2PC (needs a TransactionLog). */
export const transfer = (pa: PgParticipant, pb: PgParticipant, from: number, to: number, amount: number) =>
  TwoPhaseCommit.run([
    Participant.branch(pa, adjust(from, -amount)),
    Participant.branch(pb, adjust(to, amount))
  ])

/** The branch context of participant `p` in transaction `txId`. */
export const branchContext = (
  txId: TransactionId.TransactionId,
  p: Participant.AnyParticipant
): Participant.BranchContext => ({
  txId,
  branch: p.name,
  gid: TransactionId.gid(txId, p.name)
})

/**
 * Prepares `amount` from p[0]/id to p[1]/id (and more) without deciding: a coordinator that stops
 * there. Each vote must be Prepared.
 */
export const prepareOnly = (participants: ReadonlyArray<PgParticipant>, id: number, amount: number) =>
  Effect.gen(function* () {
    const txId = yield* TransactionId.make
    const ctxs = participants.map((p) => branchContext(txId, p))
    for (const [i, p] of participants.entries()) {
      const vote = yield* p.prepare(ctxs[i]!, adjust(id, i === 0 ? -amount : amount))
      expect(vote._tag).toBe("Prepared")
    }
    return { txId, ctxs }
  })

/** A clock `offsetMillis` off the real one (a host whose clock is skewed against the database's). */
export const skewedClock = (offsetMillis: number): Clock.Clock => {
  const live = Clock.make()
  return {
    [Clock.ClockTypeId]: Clock.ClockTypeId,
    unsafeCurrentTimeMillis: () => live.unsafeCurrentTimeMillis() + offsetMillis,
    unsafeCurrentTimeNanos: () => live.unsafeCurrentTimeNanos() + BigInt(offsetMillis) * 1_000_000n,
    currentTimeMillis: Effect.sync(() => live.unsafeCurrentTimeMillis() + offsetMillis),
    currentTimeNanos: Effect.sync(() => live.unsafeCurrentTimeNanos() + BigInt(offsetMillis) * 1_000_000n),
    sleep: (d) => live.sleep(d)
  }
}

/** Participants "bank-a" and "bank-b" on the pools `pools()` gives (read when the effect runs). */
export const bankParticipants = (pools: () => readonly [postgres.Sql, postgres.Sql]) =>
  Effect.suspend(() => {
    const [a, b] = pools()
    return Effect.all([
      makeParticipant({ name: "bank-a", sql: a }),
      makeParticipant({ name: "bank-b", sql: b })
    ])
  })

/**
 * The end of a suite: ends `pools` (those opened), drops `databases`, and checks that none of
 * `checked` had a transaction left prepared.
 */
export const endAndDrop = async (
  adminUrl: string,
  pools: ReadonlyArray<postgres.Sql | undefined>,
  checked: ReadonlyArray<string>,
  databases: ReadonlyArray<string>
) => {
  for (const pool of pools) await pool?.end({ timeout: 5 })
  const left = await preparedIn(adminUrl, checked)
  for (const db of databases) await TestDatabase.dropDatabase(adminUrl, db)
  expect(left).toEqual([])
}

/**
 * `endAndDrop`, after checking that no session of `checked` was left idle in a transaction (a
 * branch that gave its connection back without rolling back).
 */
export const endAndDropNothingOpen = async (
  adminUrl: string,
  pools: ReadonlyArray<postgres.Sql | undefined>,
  checked: ReadonlyArray<string>,
  databases: ReadonlyArray<string>
) => {
  const admin = postgres(adminUrl, { max: 1, onnotice: () => {} })
  let stuck: ReadonlyArray<unknown>
  try {
    stuck = await admin`
      select datname, state from pg_stat_activity
      where datname in ${admin(checked)} and state like 'idle in transaction%'`
  } finally {
    await admin.end({ timeout: 5 })
  }
  await endAndDrop(adminUrl, pools, checked, databases)
  expect(stuck).toEqual([])
}
