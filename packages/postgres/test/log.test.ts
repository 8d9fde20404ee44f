import { TransactionId, type TransactionLog } from "@accord/core"
import { afterAll, beforeAll, describe, expect, it } from "@effect/vitest"
import { getTableColumns, getTableName } from "drizzle-orm"
import { Effect, Logger, LogLevel, Option } from "effect"
import type postgres from "postgres"
import * as PgParticipant from "../src/PgParticipant.js"
import * as PgTransactionLog from "../src/PgTransactionLog.js"
import * as Schema from "../src/Schema.js"
import * as TestDatabase from "../src/TestDatabase.js"
import { type CountingSql, countingPool } from "./support/pg2pc.js"

/** Real clock and randomness (ids and ages matter here), with a scope. */
const scopedLive = <A, E>(
  name: string,
  f: () => Effect.Effect<A, E, import("effect").Scope.Scope>,
  timeout?: number
) => it.live(name, () => Effect.scoped(f()), timeout)

const server = await TestDatabase.server()
const DB_LOG = "accord_t_pg_log"

const record = (
  decision: TransactionLog.Decision,
  txId: TransactionId.TransactionId,
  decidedAt = Date.now()
) => ({
  txId,
  decision,
  branches: [
    {
      branch: "a" as TransactionId.BranchName,
      gid: TransactionId.gid(txId, "a" as TransactionId.BranchName)
    },
    { branch: "b" as TransactionId.BranchName, gid: TransactionId.gid(txId, "b" as TransactionId.BranchName) }
  ],
  decidedAt
})

/** A heuristic outcome on branch "a" of `txId` (a commit decision, the branch rolled back by hand). */
const heuristic = (txId: TransactionId.TransactionId) => ({
  ...record("commit", txId).branches[0]!,
  txId,
  decision: "commit" as const,
  detail: "rolled back by hand"
})

const inserts = (pool: CountingSql) =>
  pool.statements.filter((s) => s.startsWith("insert into accord_decision")).length

/** Statements that mark decisions completed (one per `complete` when immediate, one per batch when batched). */
const updates = (pool: CountingSql) =>
  pool.statements.filter((s) => s.startsWith("update accord_decision set completed_at")).length

/** Decides `count` fresh commits (and completes them when asked); returns their txIds. */
const decideCommits = (
  log: PgTransactionLog.PgTransactionLog,
  count: number,
  options: { readonly complete?: boolean; readonly concurrency?: number | "unbounded" } = {}
) =>
  Effect.forEach(
    Array.from({ length: count }),
    () =>
      Effect.gen(function* () {
        const txId = yield* TransactionId.make
        yield* log.decide(record("commit", txId))
        if (options.complete === true) yield* log.complete(txId)
        return txId
      }),
    { concurrency: options.concurrency ?? 16 }
  )

/** The behaviour every log must have, on whichever database `log` runs. */
const contract = (
  name: string,
  makeLog: () => Effect.Effect<PgTransactionLog.PgTransactionLog, unknown, import("effect").Scope.Scope>,
  /** A read of the log's database outside the log, as an operator's SQL would see it. */
  select: () => (
    text: string,
    params: ReadonlyArray<unknown>
  ) => Promise<ReadonlyArray<Record<string, unknown>>>
) => {
  scopedLive(
    `${name}: a decision's branches are stored as a jsonb array, whether written alone or in a batch`,
    () =>
      Effect.gen(function* () {
        const log = yield* makeLog()
        const alone = yield* TransactionId.make
        yield* log.decide(record("commit", alone))
        const together = yield* Effect.forEach(Array.from({ length: 8 }), () => TransactionId.make)
        yield* Effect.forEach(together, (txId) => log.decide(record("commit", txId)), {
          concurrency: "unbounded"
        })
        for (const txId of [alone, ...together]) {
          const rows = yield* Effect.promise(() =>
            select()(
              "select jsonb_typeof(branches) as kind, branches->1->>'gid' as gid from accord_decision where tx_id = $1",
              [txId]
            )
          )
          expect(rows).toEqual([
            { kind: "array", gid: TransactionId.gid(txId, "b" as TransactionId.BranchName) }
          ])
        }
      })
  )

  scopedLive(`${name}: the first decision written wins`, () =>
    Effect.gen(function* () {
      const log = yield* makeLog()
      const txId = yield* TransactionId.make
      const first = yield* log.decide(record("commit", txId, 1_700_000_000_123))
      expect(first.decision).toBe("commit")
      const second = yield* log.decide(record("abort", txId))
      expect(second).toEqual(first)
      const read = yield* log.decision(txId)
      expect(Option.getOrThrow(read)).toEqual(first)
    })
  )

  scopedLive(`${name}: completed decisions leave the unfinished list, oldest first`, () =>
    Effect.gen(function* () {
      const log = yield* makeLog()
      const older = yield* TransactionId.make
      const newer = yield* TransactionId.make
      yield* log.decide(record("commit", newer, Date.now()))
      yield* log.decide(record("abort", older, Date.now() - 60_000))
      const before = (yield* log.unfinished()).map((d) => d.txId)
      expect(before.indexOf(older)).toBeLessThan(before.indexOf(newer))
      expect(before.indexOf(older)).toBeGreaterThanOrEqual(0)
      expect((yield* log.unfinished({ olderThanMillis: 30_000 })).map((d) => d.txId)).toContain(older)
      expect((yield* log.unfinished({ olderThanMillis: 30_000 })).map((d) => d.txId)).not.toContain(newer)
      yield* log.complete(older)
      yield* log.complete(newer)
      const after = (yield* log.unfinished()).map((d) => d.txId)
      expect(after).not.toContain(older)
      expect(after).not.toContain(newer)
      expect((yield* log.completed()).map((d) => d.txId)).toEqual(expect.arrayContaining([older, newer]))
      expect(yield* log.purge([older, newer])).toBe(2)
      expect(Option.isNone(yield* log.decision(older))).toBe(true)
    })
  )

  scopedLive(`${name}: completeMany completes in one write and decisions then report completedAt`, () =>
    Effect.gen(function* () {
      const log = yield* makeLog()
      const a = yield* TransactionId.make
      const b = yield* TransactionId.make
      yield* log.decide(record("commit", a, Date.now()))
      yield* log.decide(record("commit", b, Date.now()))
      expect(Option.getOrThrow(yield* log.decision(a)).completedAt).toBeUndefined()
      yield* log.completeMany!([a, b])
      const unfinished = (yield* log.unfinished()).map((d) => d.txId)
      expect(unfinished).not.toContain(a)
      expect(unfinished).not.toContain(b)
      const read = Option.getOrThrow(yield* log.decision(a))
      expect(read.completedAt).toBeGreaterThan(0)
      // A late presumed abort sees the completed commit (recovery refuses to re-commit a re-prepared gid).
      const winner = yield* log.decide(record("abort", b))
      expect(winner.decision).toBe("commit")
      expect(winner.completedAt).toBeGreaterThan(0)
    })
  )

  scopedLive(`${name}: a completion is seen by the next read of the same log`, () =>
    Effect.gen(function* () {
      const log = yield* makeLog()
      const [txId] = yield* decideCommits(log, 1)
      yield* log.complete(txId!)
      expect((yield* log.unfinished()).map((d) => d.txId)).not.toContain(txId)
      expect(Option.getOrThrow(yield* log.decision(txId!)).completedAt).toBeGreaterThan(0)
      expect((yield* log.completed()).map((d) => d.txId)).toContain(txId)
      expect(yield* log.purge([txId!])).toBe(1)
    })
  )

  scopedLive(
    `${name}: 200 concurrent transactions decided then completed all leave the unfinished list`,
    () =>
      Effect.gen(function* () {
        const log = yield* makeLog()
        const txIds = yield* decideCommits(log, 200, { complete: true, concurrency: "unbounded" })
        const unfinished = new Set((yield* log.unfinished()).map((d) => d.txId))
        expect(txIds.filter((txId) => unfinished.has(txId))).toEqual([])
      })
  )

  scopedLive(`${name}: closing the log writes the completions still queued`, () =>
    Effect.gen(function* () {
      const txIds = yield* Effect.scoped(
        Effect.gen(function* () {
          const log = yield* makeLog()
          const txIds = yield* decideCommits(log, 50)
          // Queued back to back and the scope closes at once: no read flushes them.
          yield* Effect.forEach(txIds, (txId) => log.complete(txId), { discard: true })
          return txIds
        })
      )
      const reopened = yield* makeLog()
      for (const txId of txIds) {
        expect(Option.getOrThrow(yield* reopened.decision(txId)).completedAt).toBeGreaterThan(0)
      }
    })
  )

  scopedLive(`${name}: heuristic outcomes are recorded`, () =>
    Effect.gen(function* () {
      const log = yield* makeLog()
      const h = heuristic(yield* TransactionId.make)
      yield* log.recordHeuristic(h)
      expect(yield* log.heuristics).toContainEqual(h)
    })
  )

  scopedLive(`${name}: the same heuristic outcome recorded twice is one record`, () =>
    Effect.gen(function* () {
      const log = yield* makeLog()
      const h = heuristic(yield* TransactionId.make)
      yield* Effect.all([log.recordHeuristic(h), log.recordHeuristic(h)], { concurrency: 2 })
      yield* log.recordHeuristic(h)
      expect((yield* log.heuristics).filter((r) => r.txId === h.txId)).toEqual([h])
    })
  )

  scopedLive(`${name}: unfinished decisions page by page with a cursor, equal decidedAt included`, () =>
    Effect.gen(function* () {
      const log = yield* makeLog()
      const decidedAt = Date.now() - 120_000
      const txIds = yield* Effect.forEach(Array.from({ length: 7 }), () => TransactionId.make)
      for (const [i, txId] of txIds.entries()) yield* log.decide(record("commit", txId, decidedAt + (i % 2)))
      const whole = (yield* log.unfinished()).map((d) => d.txId)
      const paged: Array<string> = []
      let after: TransactionLog.UnfinishedCursor | undefined
      for (let page = 0; page < 1_000; page++) {
        const rows = yield* log.unfinished({ limit: 3, ...(after === undefined ? {} : { after }) })
        paged.push(...rows.map((d) => d.txId))
        const last = rows[rows.length - 1]
        if (rows.length < 3 || last === undefined) break
        after = { decidedAt: last.decidedAt, txId: last.txId }
      }
      expect(paged).toEqual(whole)
      for (const txId of txIds) expect(paged).toContain(txId)
    })
  )
}

describe.skipIf(server === undefined)("PgTransactionLog on PostgreSQL", () => {
  const adminUrl = server?.adminUrl ?? ""
  let pool: CountingSql
  let other: postgres.Sql

  beforeAll(async () => {
    const url = await TestDatabase.createDatabase(adminUrl, DB_LOG)
    pool = countingPool(url, 8)
    other = countingPool(url, 4).sql
  }, 60_000)

  afterAll(async () => {
    await pool?.sql.end({ timeout: 5 })
    await other?.end({ timeout: 5 })
    await TestDatabase.dropDatabase(adminUrl, DB_LOG)
  }, 60_000)

  const select = () => (text: string, params: ReadonlyArray<unknown>) =>
    other.unsafe(text, params as Array<postgres.ParameterOrJSON<never>>) as unknown as Promise<
      ReadonlyArray<Record<string, unknown>>
    >
  contract("postgres.js", () => PgTransactionLog.make({ sql: pool.sql }), select)
  contract(
    "postgres.js with group commit",
    () => PgTransactionLog.make({ sql: pool.sql, groupCommit: true }),
    select
  )
  contract(
    "postgres.js with immediate completion",
    () => PgTransactionLog.make({ sql: pool.sql, completion: "immediate" }),
    select
  )

  scopedLive("batched completion writes 200 concurrent completions in far fewer updates", () =>
    Effect.gen(function* () {
      const log = yield* PgTransactionLog.make({ sql: pool.sql })
      const before = updates(pool)
      const txIds = yield* decideCommits(log, 200, { complete: true, concurrency: "unbounded" })
      const unfinished = new Set((yield* log.unfinished()).map((d) => d.txId))
      expect(txIds.filter((txId) => unfinished.has(txId))).toEqual([])
      const sent = updates(pool) - before
      expect(sent).toBeGreaterThan(0)
      expect(sent).toBeLessThan(50)
    })
  )

  scopedLive("batched completion writes a lone completion without waiting for company or a read", () =>
    Effect.gen(function* () {
      const log = yield* PgTransactionLog.make({ sql: pool.sql })
      const [txId] = yield* decideCommits(log, 1)
      const before = updates(pool)
      yield* log.complete(txId!)
      // `complete` returned before the write; the next read waits for that one update, no more.
      yield* log.unfinished({ limit: 1 })
      expect(updates(pool) - before).toBe(1)
      const [row] = yield* Effect.promise(
        () =>
          other<
            { done: boolean }[]
          >`select completed_at is not null as done from accord_decision where tx_id = ${txId!}`
      )
      expect(row?.done).toBe(true)
    })
  )

  scopedLive(
    "immediate completion writes one update per complete, visible to another pool when it returns",
    () =>
      Effect.gen(function* () {
        const log = yield* PgTransactionLog.make({ sql: pool.sql, completion: "immediate" })
        const txIds = yield* decideCommits(log, 3)
        const before = updates(pool)
        for (const txId of txIds) {
          yield* log.complete(txId)
          const [row] = yield* Effect.promise(
            () =>
              other<
                { done: boolean }[]
              >`select completed_at is not null as done from accord_decision where tx_id = ${txId}`
          )
          expect(row?.done).toBe(true)
        }
        expect(updates(pool) - before).toBe(3)
      })
  )

  scopedLive("a failed completion write is logged and dropped; the writer goes on", () =>
    Effect.gen(function* () {
      // A trigger refuses to complete the txIds listed in accord_t_poison.
      yield* Effect.promise(() =>
        pool.sql
          .unsafe(`
          create table if not exists accord_t_poison (tx_id text primary key);
          create or replace function accord_t_refuse() returns trigger language plpgsql as $$
          begin
            if exists (select 1 from accord_t_poison where tx_id = new.tx_id) then
              raise exception 'completion refused for %', new.tx_id;
            end if;
            return new;
          end $$;
          drop trigger if exists accord_t_refuse on accord_decision;
          create trigger accord_t_refuse before update on accord_decision
            for each row execute function accord_t_refuse();`)
          .simple()
      )
      yield* Effect.addFinalizer(() =>
        Effect.promise(() => pool.sql.unsafe("drop trigger if exists accord_t_refuse on accord_decision"))
      )
      const warnings: Array<string> = []
      const capture = Logger.make(({ logLevel, message }) => {
        if (logLevel === LogLevel.Warning) warnings.push(String(message))
      })
      const log = yield* PgTransactionLog.make({ sql: pool.sql }).pipe(
        Effect.provide(Logger.replace(Logger.defaultLogger, capture))
      )
      const [poisoned, healthy] = yield* decideCommits(log, 2)
      yield* Effect.promise(() => pool.sql`insert into accord_t_poison (tx_id) values (${poisoned!})`)
      yield* log.complete(poisoned!)
      // The read waits for the failed write too: a drop settles the flush.
      expect((yield* log.unfinished()).map((d) => d.txId)).toContain(poisoned)
      expect(warnings).toHaveLength(1)
      yield* log.complete(healthy!)
      const unfinished = (yield* log.unfinished()).map((d) => d.txId)
      expect(unfinished).toContain(poisoned)
      expect(unfinished).not.toContain(healthy)
      expect(warnings).toHaveLength(1)
    })
  )

  scopedLive("the tables match the drizzle schema", () =>
    Effect.gen(function* () {
      yield* PgTransactionLog.make({ sql: pool.sql })
      yield* Effect.promise(() => pool.sql.unsafe("create table if not exists accord_t_dummy (x int)"))
      yield* PgParticipant.make({ name: "schema-check", sql: pool.sql })
      for (const table of [Schema.accordBranch, Schema.accordDecision, Schema.accordHeuristic]) {
        const rows = yield* Effect.promise(
          () =>
            pool.sql<{ column_name: string }[]>`
              select column_name from information_schema.columns where table_name = ${getTableName(table)} order by column_name`
        )
        const expected = Object.values(getTableColumns(table))
          .map((c) => c.name)
          .sort()
        expect(rows.map((r) => r.column_name)).toEqual(expected)
      }
    })
  )

  scopedLive("group commit writes concurrent decisions in fewer inserts, each row first-writer-wins", () =>
    Effect.gen(function* () {
      const log = yield* PgTransactionLog.make({ sql: pool.sql, groupCommit: { maxBatch: 64 } })
      const txIds = yield* Effect.forEach(Array.from({ length: 200 }), () => TransactionId.make)
      const before = inserts(pool)
      // Every txId is decided twice at once, commit and abort: exactly one of them holds.
      const results = yield* Effect.forEach(
        txIds.flatMap((txId) => [record("commit", txId), record("abort", txId)]),
        (r) => log.decide(r),
        { concurrency: "unbounded" }
      )
      const writes = inserts(pool) - before
      expect(writes).toBeLessThan(200)
      for (const [i, txId] of txIds.entries()) {
        const [x, y] = [results[2 * i]!, results[2 * i + 1]!]
        expect(x.txId).toBe(txId)
        expect(x).toEqual(y)
        expect(Option.getOrThrow(yield* log.decision(txId)).decision).toBe(x.decision)
      }
    })
  )

  scopedLive("group commit writes a lone decision at once, in one insert", () =>
    Effect.gen(function* () {
      // A wait for company far longer than any insert takes here: a lone decision that waited for
      // it would show, while a slow forced write on a busy machine stays well inside the bound.
      const log = yield* PgTransactionLog.make({ sql: pool.sql, groupCommit: { maxWait: "3 seconds" } })
      const txId = yield* TransactionId.make
      const before = inserts(pool)
      const started = Date.now()
      yield* log.decide(record("commit", txId))
      expect(Date.now() - started).toBeLessThan(1_500)
      expect(inserts(pool) - before).toBe(1)
    })
  )

  scopedLive("two coordinator processes sharing the log agree on every decision", () =>
    Effect.gen(function* () {
      const one = yield* PgTransactionLog.make({ sql: pool.sql, groupCommit: true })
      const two = yield* PgTransactionLog.make({ sql: other })
      const txIds = yield* Effect.forEach(Array.from({ length: 50 }), () => TransactionId.make)
      const pairs = yield* Effect.forEach(
        txIds,
        (txId) =>
          Effect.all([one.decide(record("commit", txId)), two.decide(record("abort", txId))], {
            concurrency: 2
          }),
        { concurrency: 10 }
      )
      for (const [x, y] of pairs) expect(x).toEqual(y)
    })
  )
})

describe("PgTransactionLog on PGlite", () => {
  let db: import("@electric-sql/pglite").PGlite
  beforeAll(async () => {
    db = await PgParticipant.openPglite()
  }, 60_000)
  afterAll(async () => {
    await db?.close()
  })
  const select = () => async (text: string, params: ReadonlyArray<unknown>) =>
    (await db.query<Record<string, unknown>>(text, [...params])).rows
  contract("PGlite", () => PgTransactionLog.makePglite(db), select)
  contract("PGlite with group commit", () => PgTransactionLog.makePglite(db, { groupCommit: true }), select)
  contract(
    "PGlite with immediate completion",
    () => PgTransactionLog.makePglite(db, { completion: "immediate" }),
    select
  )
})
