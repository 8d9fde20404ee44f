/**
 * The commit decision's write on real PostgreSQL: bounded by the transaction's deadline when the
 * log's connection stops answering (its Promise-level `decide`, abandoned by the coordinator's one
 * timer), and never answered with the caller's own record unwritten when the row it lost to is
 * purged before the read.
 */
import { Participant, Recovery, TransactionId, TransactionLog, TwoPhaseCommit } from "@accord/core"
import { afterAll, beforeAll, describe, expect, it } from "@effect/vitest"
import { Duration, Effect } from "effect"
import postgres from "postgres"
import * as PgParticipant from "../src/PgParticipant.js"
import * as PgTransactionLog from "../src/PgTransactionLog.js"
import * as TestDatabase from "../src/TestDatabase.js"
import * as TcpProxy from "./support/tcpProxy.js"

const server = await TestDatabase.server()
const DBS = { a: "accord_t_decide_a", b: "accord_t_decide_b", log: "accord_t_decide_log" } as const

describe.skipIf(server === undefined)("the commit decision's write on PostgreSQL", () => {
  const adminUrl = server?.adminUrl ?? ""
  const urls: Record<keyof typeof DBS, string> = { a: "", b: "", log: "" }
  const pools: Array<postgres.Sql> = []
  const pool = (url: string, max = 4) => {
    const sql = postgres(url, { max, onnotice: () => {} })
    pools.push(sql)
    return sql
  }

  beforeAll(async () => {
    for (const [key, name] of Object.entries(DBS)) {
      urls[key as keyof typeof DBS] = await TestDatabase.createDatabase(adminUrl, name)
    }
    for (const name of [DBS.a, DBS.b]) {
      const sql = postgres(TestDatabase.urlFor(adminUrl, name), { max: 1, onnotice: () => {} })
      await sql.unsafe("create table if not exists t (id int primary key, n int not null)")
      await sql.unsafe("insert into t values (1, 0) on conflict do nothing")
      await sql.end()
    }
  }, 60_000)

  afterAll(async () => {
    for (const sql of pools) await sql.end({ timeout: 5 })
    for (const name of Object.values(DBS)) {
      await TestDatabase.rollbackPrepared(adminUrl, name)
      await TestDatabase.dropDatabase(adminUrl, name)
    }
  }, 60_000)

  const bump: PgParticipant.PgWork = async (session) => {
    await session.query("update t set n = n + 1 where id = 1")
  }

  it.live("a log offers decide as a started Promise, its own twin, with and without group commit", () =>
    Effect.scoped(
      Effect.gen(function* () {
        const sql = pool(urls.log)
        for (const groupCommit of [false, true]) {
          const log = yield* PgTransactionLog.make({ sql, groupCommit })
          expect(log.direct?.twins.decide).toBe(log.decide)
          // Concurrent decisions (batched under group commit) each get the decision that holds.
          const records = yield* Effect.forEach(Array.from({ length: 20 }), () =>
            Effect.map(
              TransactionId.make,
              (txId): TransactionLog.DecisionRecord => ({
                txId,
                decision: "commit",
                branches: [],
                decidedAt: Date.now()
              })
            )
          )
          const held = yield* Effect.forEach(records, (r) => log.decide(r), { concurrency: "unbounded" })
          expect(held.map((r) => r.txId)).toEqual(records.map((r) => r.txId))
        }
      })
    )
  )

  it.live(
    "a log whose connection stops answering fails the run with LogError at the deadline; recovery presumes abort, nothing stays prepared",
    () =>
      Effect.scoped(
        Effect.gen(function* () {
          const proxy = yield* Effect.acquireRelease(
            Effect.promise(() => TcpProxy.start(urls.log)),
            (p) => Effect.promise(() => p.close())
          )
          const hungSql = pool(proxy.url(urls.log), 2)
          const hung = yield* PgTransactionLog.make({ sql: hungSql })
          const a = yield* PgParticipant.make({ name: "bank-a", sql: pool(urls.a) })
          const b = yield* PgParticipant.make({ name: "bank-b", sql: pool(urls.b) })
          // The decision's insert leaves, and nothing of that connection reaches the server again.
          const frozen = proxy.freezeWhen((chunk) => chunk.includes("insert into accord_decision"), {
            deliver: false
          })
          const started = Date.now()
          const result = yield* TwoPhaseCommit.run(
            [Participant.branch(a, bump), Participant.branch(b, bump)],
            {
              transactionTimeout: Duration.seconds(1)
            }
          ).pipe(Effect.provideService(TransactionLog.TransactionLog, hung), Effect.either)
          const took = Date.now() - started
          yield* Effect.promise(() => frozen)
          expect(result._tag).toBe("Left")
          if (result._tag === "Left") {
            expect(result.left._tag).toBe("LogError")
            expect(result.left.message).toContain("may or may not have been written")
          }
          // The deadline plus the abandoned statement's clean-up bound, not for ever.
          expect(took).toBeLessThan(1_000 + 5_000 + 1_000)
          // Both branches stayed prepared; recovery on a log that answers presumes abort.
          const prepared = yield* Effect.promise(() => TestDatabase.preparedOnServer(adminUrl))
          expect(prepared.filter((p) => p.database === DBS.a || p.database === DBS.b)).toHaveLength(2)
          const log = yield* PgTransactionLog.make({ sql: pool(urls.log) })
          const report = yield* Recovery.run([a, b], { orphanAfter: 0 }).pipe(
            Effect.provideService(TransactionLog.TransactionLog, log)
          )
          expect(report.branchesRolledBack).toBe(2)
          expect(report.presumedAborts).toBe(1)
          const left = yield* Effect.promise(() => TestDatabase.preparedOnServer(adminUrl))
          expect(left.filter((p) => p.database === DBS.a || p.database === DBS.b)).toEqual([])
          for (const url of [urls.a, urls.b]) {
            const rows = yield* Effect.promise(() => pool(url, 1)`select n from t where id = 1`)
            expect(rows[0]?.n).toBe(0)
          }
        })
      ),
    30_000
  )

  it.live(
    "closing a log whose completion write hangs on a connection that stopped answering ends in bounded time",
    () =>
      Effect.gen(function* () {
        const proxy = yield* Effect.promise(() => TcpProxy.start(urls.log))
        const hungSql = pool(proxy.url(urls.log), 2)
        const txId = yield* TransactionId.make
        const frozen = proxy.freezeWhen((chunk) => chunk.includes("set completed_at"), { deliver: false })
        const started = yield* Effect.scoped(
          Effect.gen(function* () {
            const log = yield* PgTransactionLog.make({ sql: hungSql })
            yield* log.complete(txId)
            yield* Effect.promise(() => frozen)
            return Date.now()
          })
        )
        const took = Date.now() - started
        yield* Effect.promise(() => proxy.close())
        // The close's flush gives up after 5 s, then the writer's statement is abandoned (its own bound).
        expect(took).toBeLessThan(5_000 + 5_000 + 2_000)
      }),
    30_000
  )

  it.live("a decision that lost its insert to a row purged before the read is written, not assumed", () =>
    Effect.scoped(
      Effect.gen(function* () {
        const sql = pool(urls.log)
        const admin = pool(urls.log, 1)
        const first = yield* PgTransactionLog.make({ sql })
        const txId = yield* TransactionId.make
        const bankA = "bank-a" as TransactionId.BranchName
        const branches = [{ branch: bankA, gid: TransactionId.gid(txId, bankA) }]
        yield* first.decide({
          txId,
          decision: "commit",
          branches,
          decidedAt: Date.now()
        })
        // The row the next insert loses to is purged between that insert and the read after it.
        let armed = true
        const purging = new Proxy(sql, {
          get(target, prop, receiver) {
            if (prop !== "unsafe") return Reflect.get(target, prop, receiver)
            return (text: string, ...rest: Array<unknown>) => {
              const read =
                text.startsWith("select") && text.includes("from accord_decision where tx_id = any")
              if (armed && read) {
                armed = false
                return admin`delete from accord_decision where tx_id = ${txId}`.then(() =>
                  (target.unsafe as (...args: Array<unknown>) => Promise<unknown>)(text, ...rest)
                )
              }
              return (target.unsafe as (...args: Array<unknown>) => unknown)(text, ...rest)
            }
          }
        })
        const second = yield* PgTransactionLog.make({ sql: purging, migrate: false })
        const holding = yield* second.decide({
          txId,
          decision: "abort",
          branches,
          decidedAt: Date.now()
        })
        expect(armed).toBe(false)
        const stored = yield* Effect.promise(
          () => admin<{ decision: string }[]>`select decision from accord_decision where tx_id = ${txId}`
        )
        // What decide answered is what the log holds.
        expect(stored.map((r) => r.decision)).toEqual([holding.decision])
      })
    )
  )
})
