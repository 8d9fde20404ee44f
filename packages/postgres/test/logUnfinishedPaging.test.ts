/**
 * `PgTransactionLog.unfinished` pages with a keyset cursor (`after`) on (decided_at, tx_id): going
 * page by page from the last record of each page lists every unfinished decision once, in the
 * order of one unbounded read, whatever the page size; rows with equal decided_at (to the
 * microsecond, or only to the millisecond the records carry) are neither repeated nor skipped; a
 * cursor whose row was purged meanwhile still continues; and the index serves the page.
 *
 * Database `accord_t_log_paging_<pid>`, dropped at the end.
 */
import type { TransactionId, TransactionLog } from "@accord/core"
import { afterAll, beforeAll, describe, expect, it } from "@effect/vitest"
import { Effect, type Scope } from "effect"
import postgres from "postgres"
import * as PgTransactionLog from "../src/PgTransactionLog.js"
import * as TestDatabase from "../src/TestDatabase.js"

const server = await TestDatabase.server()
const DB = `accord_t_log_paging_${process.pid}`

const scopedLive = <A, E>(name: string, f: () => Effect.Effect<A, E, Scope.Scope>, timeout?: number) =>
  it.live(name, () => Effect.scoped(f()), timeout)

const id = (s: string) => s as TransactionId.TransactionId

/** Every page after `after`, `limit` at a time, each starting after the last record of the one before. */
const allPages = (log: PgTransactionLog.PgTransactionLog, limit: number) =>
  Effect.gen(function* () {
    const seen: Array<TransactionLog.DecisionRecord> = []
    let after: TransactionLog.UnfinishedCursor | undefined
    // Bounded: a log that ignored the cursor would hand out the first page for ever.
    for (let page = 0; page < 100; page++) {
      const rows = yield* log.unfinished({ limit, ...(after === undefined ? {} : { after }) })
      seen.push(...rows)
      const last = rows[rows.length - 1]
      if (rows.length < limit || last === undefined) return seen
      after = { decidedAt: last.decidedAt, txId: last.txId }
    }
    return seen
  })

describe.skipIf(server === undefined)("PgTransactionLog.unfinished pages with a keyset cursor", () => {
  const adminUrl = server?.adminUrl ?? ""
  let sql: postgres.Sql
  /** What the log's pool sent, with its parameters. */
  const sent: Array<{ text: string; params: ReadonlyArray<unknown> }> = []

  beforeAll(async () => {
    const url = await TestDatabase.createDatabase(adminUrl, DB)
    sql = postgres(url, {
      max: 4,
      onnotice: () => {},
      debug: (_connection, text, params) => {
        sent.push({ text, params: params as ReadonlyArray<unknown> })
      }
    })
  }, 60_000)

  afterAll(async () => {
    await sql?.end({ timeout: 5 })
    await TestDatabase.dropDatabase(adminUrl, DB)
  }, 60_000)

  const reset = Effect.promise(() => sql.unsafe("truncate accord_decision"))

  scopedLive(
    "every unfinished decision once, in order, whatever the page size, equal decided_at included",
    () =>
      Effect.gen(function* () {
        const log = yield* PgTransactionLog.make({ sql, completion: "immediate" })
        yield* reset
        const base = Date.now() - 60_000
        // Written by the log: four in one millisecond, two in the next, one later; one completed.
        const decided = [
          ["t-c", base],
          ["t-a", base],
          ["t-d", base],
          ["t-b", base],
          ["t-f", base + 1],
          ["t-e", base + 1],
          ["t-g", base + 5],
          ["t-done", base]
        ] as const
        for (const [txId, decidedAt] of decided) {
          yield* log.decide({ txId: id(txId), decision: "commit", branches: [], decidedAt })
        }
        yield* log.complete(id("t-done"))
        // Written by hand with sub-millisecond precision: all read as `base + 2` ms, but they are
        // stored 0.4 ms and 0.1 ms past it, in the opposite order of their ids.
        yield* Effect.promise(
          () => sql`
            insert into accord_decision (tx_id, decision, branches, decided_at) values
              ('t-x1', 'abort', '[]', to_timestamp(${base + 2}::float8 / 1000.0) + interval '400 microseconds'),
              ('t-x2', 'abort', '[]', to_timestamp(${base + 2}::float8 / 1000.0) + interval '100 microseconds')`
        )
        const whole = (yield* log.unfinished()).map((d) => d.txId)
        expect(whole).toEqual(["t-a", "t-b", "t-c", "t-d", "t-e", "t-f", "t-x2", "t-x1", "t-g"])
        for (const limit of [1, 2, 3, 4, 9, 10]) {
          const paged = (yield* allPages(log, limit)).map((d) => d.txId)
          expect({ limit, paged }).toEqual({ limit, paged: whole })
        }
      })
  )

  scopedLive("a page continues after a cursor whose decision was completed and purged meanwhile", () =>
    Effect.gen(function* () {
      const log = yield* PgTransactionLog.make({ sql, completion: "immediate" })
      yield* reset
      const base = Date.now() - 60_000
      for (const [txId, decidedAt] of [
        ["u-1", base],
        ["u-2", base],
        ["u-3", base],
        ["u-4", base + 1]
      ] as const) {
        yield* log.decide({ txId: id(txId), decision: "commit", branches: [], decidedAt })
      }
      const first = yield* log.unfinished({ limit: 2 })
      expect(first.map((d) => d.txId)).toEqual(["u-1", "u-2"])
      yield* log.complete(id("u-2"))
      expect(yield* log.purge([id("u-2")])).toBe(1)
      const next = yield* log.unfinished({ limit: 2, after: { decidedAt: base, txId: id("u-2") } })
      expect(next.map((d) => d.txId)).toEqual(["u-3", "u-4"])
    })
  )

  scopedLive("the cursor's page is read through the unfinished-decisions index, not by a scan", () =>
    Effect.gen(function* () {
      const log = yield* PgTransactionLog.make({ sql, completion: "immediate" })
      yield* reset
      const base = Date.now() - 3_600_000
      // Many rows, most of them completed, so the planner has a reason to prefer the partial index.
      yield* Effect.promise(
        () => sql`
          insert into accord_decision (tx_id, decision, branches, decided_at, completed_at)
          select 'v-' || lpad(g::text, 6, '0'), 'commit', '[]', to_timestamp((${base}::float8 + g / 4) / 1000.0),
                 case when g % 10 = 0 then null else now() end
          from generate_series(1, 20000) g`
      )
      yield* Effect.promise(() => sql`analyze accord_decision`)
      const first = yield* log.unfinished({ limit: 100 })
      const last = first[first.length - 1]!
      sent.length = 0
      const next = yield* log.unfinished({
        limit: 100,
        after: { decidedAt: last.decidedAt, txId: last.txId }
      })
      expect(next).toHaveLength(100)
      const statement = sent.find((s) => s.text.includes("accord_decision") && s.text.includes("> ("))
      expect(statement).toBeDefined()
      const plan = yield* Effect.promise(() =>
        sql.unsafe(`explain ${statement!.text}`, statement!.params as Array<postgres.ParameterOrJSON<never>>)
      )
      const text = plan.map((r) => Object.values(r)[0]).join("\n")
      expect(text).toContain("accord_decision_unfinished")
      expect(text).not.toContain("Seq Scan")
      // The scan starts at the cursor (an index condition on decided_at), not at the oldest row.
      expect(text).toMatch(/Index Cond: .*decided_at >=/)
    })
  )
})
