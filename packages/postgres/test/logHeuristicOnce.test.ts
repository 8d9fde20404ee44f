/**
 * A heuristic outcome is recorded once in `accord_heuristic`, however many writers meet it (two
 * recoveries, or a coordinator's CommitPending path and a recovery): the unique index
 * `accord_heuristic_once` (tx_id, gid, decision, md5(detail)) and `on conflict do nothing`. The
 * migration upgrades a table created before the index, deleting the later duplicates it may hold.
 *
 * Databases `accord_t_heuristic_*_<pid>`, dropped at the end.
 */
import type { TransactionId, TransactionLog } from "@accord/core"
import { afterAll, beforeAll, describe, expect, it } from "@effect/vitest"
import { Effect, type Scope } from "effect"
import postgres from "postgres"
import * as Migrations from "../src/Migrations.js"
import * as PgTransactionLog from "../src/PgTransactionLog.js"
import * as TestDatabase from "../src/TestDatabase.js"

const server = await TestDatabase.server()
const LIVE_DB = `accord_t_heuristic_live_${process.pid}`
const OLD_DB = `accord_t_heuristic_old_${process.pid}`

const scopedLive = <A, E>(name: string, f: () => Effect.Effect<A, E, Scope.Scope>, timeout?: number) =>
  it.live(name, () => Effect.scoped(f()), timeout)

const heuristic = (txId: string, detail: string): TransactionLog.HeuristicRecord => ({
  txId: txId as TransactionId.TransactionId,
  branch: "bank-a" as TransactionId.BranchName,
  gid: `accord_${txId}_bank-a` as TransactionId.Gid,
  decision: "commit",
  detail
})

/** `accord_heuristic` as Accord created it before `accord_heuristic_once`. */
const HEURISTIC_TABLE_BEFORE = `
create table accord_heuristic (
  id bigint generated always as identity primary key,
  tx_id text not null,
  branch text not null,
  gid text not null,
  decision text not null check (decision in ('commit', 'abort')),
  detail text not null,
  recorded_at timestamptz not null default now()
)`

describe.skipIf(server === undefined)("heuristic outcomes are recorded once", () => {
  const adminUrl = server?.adminUrl ?? ""
  let one: postgres.Sql
  let two: postgres.Sql

  beforeAll(async () => {
    const url = await TestDatabase.createDatabase(adminUrl, LIVE_DB)
    one = postgres(url, { max: 4, onnotice: () => {} })
    two = postgres(url, { max: 4, onnotice: () => {} })
  }, 60_000)

  afterAll(async () => {
    await one?.end({ timeout: 5 })
    await two?.end({ timeout: 5 })
    await TestDatabase.dropDatabase(adminUrl, LIVE_DB)
    await TestDatabase.dropDatabase(adminUrl, OLD_DB)
  }, 60_000)

  const rowsOf = (txId: string) =>
    Effect.promise(
      () => one<{ id: string; detail: string }[]>`
        select id, detail from accord_heuristic where tx_id = ${txId} order by id`
    )

  scopedLive("two processes recording the same outcome at once leave one record", () =>
    Effect.gen(function* () {
      // Two logs on two pools: two coordinator or recovery processes sharing the log database.
      const first = yield* PgTransactionLog.make({ sql: one })
      const second = yield* PgTransactionLog.make({ sql: two })
      const record = heuristic(
        "TX-CONCURRENT",
        "branch was rolled back outside the protocol after the commit decision"
      )
      yield* Effect.all(
        Array.from({ length: 8 }, (_, i) => (i % 2 === 0 ? first : second).recordHeuristic(record)),
        { concurrency: "unbounded" }
      )
      expect((yield* rowsOf("TX-CONCURRENT")).map((r) => r.detail)).toEqual([record.detail])
      expect((yield* first.heuristics).filter((h) => h.txId === record.txId)).toEqual([record])
    })
  )

  scopedLive("a different outcome of the same branch is a record of its own", () =>
    Effect.gen(function* () {
      const log = yield* PgTransactionLog.make({ sql: one })
      const byHand = heuristic(
        "TX-TWO-OUTCOMES",
        "branch was rolled back outside the protocol after the commit decision"
      )
      const duplicate = heuristic(
        "TX-TWO-OUTCOMES",
        "branch prepared again after its transaction completed (duplicate delivery); rolled back"
      )
      yield* log.recordHeuristic(byHand)
      yield* log.recordHeuristic(duplicate)
      yield* log.recordHeuristic(byHand)
      expect((yield* rowsOf("TX-TWO-OUTCOMES")).map((r) => r.detail)).toEqual([
        byHand.detail,
        duplicate.detail
      ])
    })
  )

  scopedLive("a detail of any length is recorded (the index holds its md5)", () =>
    Effect.gen(function* () {
      const log = yield* PgTransactionLog.make({ sql: one })
      // Incompressible: too long for a btree entry as text.
      const detail = Array.from({ length: 2_000 }, () => Math.random().toString(36).slice(2, 8)).join("")
      const record = heuristic("TX-LONG", detail)
      yield* log.recordHeuristic(record)
      yield* log.recordHeuristic(record)
      expect((yield* rowsOf("TX-LONG")).map((r) => r.detail)).toEqual([detail])
    })
  )

  scopedLive(
    "the migration upgrades a table that already holds duplicates: the first of each is kept, and again is a no-op",
    () =>
      Effect.gen(function* () {
        const url = yield* Effect.promise(() => TestDatabase.createDatabase(adminUrl, OLD_DB))
        const sql = postgres(url, { max: 2, onnotice: () => {} })
        yield* Effect.addFinalizer(() => Effect.promise(() => sql.end({ timeout: 5 })))
        yield* Effect.promise(() => sql.unsafe(HEURISTIC_TABLE_BEFORE))
        const a = heuristic("TX-OLD-A", "rolled back by hand")
        const b = heuristic("TX-OLD-B", "rolled back by hand")
        const insert = (h: TransactionLog.HeuristicRecord) =>
          Effect.promise(
            () => sql`
              insert into accord_heuristic (tx_id, branch, gid, decision, detail)
              values (${h.txId}, ${h.branch}, ${h.gid}, ${h.decision}, ${h.detail})`
          )
        // a three times, b twice, interleaved; a with another detail and a with the other decision once each.
        for (const h of [
          a,
          b,
          a,
          { ...a, detail: "another outcome" },
          b,
          a,
          { ...a, decision: "abort" as const }
        ]) {
          yield* insert(h)
        }
        yield* Migrations.log(sql)
        const rows = () =>
          Effect.promise(
            () => sql<{ id: string; tx_id: string; decision: string; detail: string }[]>`
              select id::text, tx_id, decision, detail from accord_heuristic order by id`
          )
        const kept = [
          { id: "1", tx_id: "TX-OLD-A", decision: "commit", detail: "rolled back by hand" },
          { id: "2", tx_id: "TX-OLD-B", decision: "commit", detail: "rolled back by hand" },
          { id: "4", tx_id: "TX-OLD-A", decision: "commit", detail: "another outcome" },
          { id: "7", tx_id: "TX-OLD-A", decision: "abort", detail: "rolled back by hand" }
        ]
        expect(yield* rows()).toEqual(kept)
        // Run again (every process migrates at start-up), then write through the log.
        yield* Migrations.log(sql)
        const log = yield* PgTransactionLog.make({ sql })
        yield* log.recordHeuristic(a)
        yield* log.recordHeuristic(b)
        expect(yield* rows()).toEqual(kept)
        const [index] = yield* Effect.promise(
          () => sql<{ definition: string }[]>`
            select indexdef as definition from pg_indexes where indexname = 'accord_heuristic_once'`
        )
        expect(index?.definition).toContain("UNIQUE")
      })
  )
})
