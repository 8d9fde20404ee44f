/**
 * The coordinator log's failure paths on real PostgreSQL: a group-commit batch in flight when the
 * log closes, a batch that fails (statement timeout) and the error each waiting caller gets, and
 * reads of the log while a completion write hangs on a connection that stopped answering.
 */
import { TransactionId, type TransactionLog } from "@accord/core"
import { afterAll, beforeAll, describe, expect, it } from "@effect/vitest"
import { Effect, Either, Exit, Option, Scope } from "effect"
import postgres from "postgres"
import * as PgParticipant from "../src/PgParticipant.js"
import * as PgTransactionLog from "../src/PgTransactionLog.js"
import * as TestDatabase from "../src/TestDatabase.js"
import * as TcpProxy from "./support/tcpProxy.js"

const server = await TestDatabase.server()
const DB = "accord_t_log_failures"

const record = (txId: TransactionId.TransactionId, decision: TransactionLog.Decision = "commit") => ({
  txId,
  decision,
  branches: [
    { branch: "a" as TransactionId.BranchName, gid: TransactionId.gid(txId, "a" as TransactionId.BranchName) }
  ],
  decidedAt: Date.now()
})

/** `p`'s outcome, or "pending" when it has not settled within `ms`. */
const within = <A>(p: Promise<A>, ms: number): Promise<A | "pending"> =>
  Promise.race([p, new Promise<"pending">((resolve) => setTimeout(() => resolve("pending"), ms))])

describe.skipIf(server === undefined)("PgTransactionLog failure paths on PostgreSQL", () => {
  const adminUrl = server?.adminUrl ?? ""
  let url = ""
  const pools: Array<postgres.Sql> = []
  const pool = (target: string, max = 4, options: postgres.Options<never> = {}) => {
    const sql = postgres(target, { max, onnotice: () => {}, ...options })
    pools.push(sql)
    return sql
  }

  beforeAll(async () => {
    url = await TestDatabase.createDatabase(adminUrl, DB)
  }, 60_000)

  afterAll(async () => {
    for (const sql of pools) await sql.end({ timeout: 5 })
    await TestDatabase.dropDatabase(adminUrl, DB)
  }, 60_000)

  /**
   * A connection that inserts `txId`'s decision and keeps its transaction open: every other
   * insert of that key waits for it.
   */
  const blockKey = (sql: postgres.Sql, txId: string) =>
    Effect.gen(function* () {
      const held = yield* Effect.acquireRelease(
        Effect.promise(() => sql.reserve()),
        (r) => Effect.sync(() => r.release())
      )
      yield* Effect.promise(() => held.unsafe("begin"))
      yield* Effect.promise(
        () =>
          held`insert into accord_decision (tx_id, decision, branches, decided_at) values (${txId}, 'abort', '[]'::jsonb, now())`
      )
      return { rollback: () => held.unsafe("rollback") }
    })

  it.live(
    "closing the log settles the decisions of a group-commit batch still in flight: none is left waiting",
    () =>
      Effect.gen(function* () {
        const sql = pool(url)
        const scope = yield* Scope.make()
        const log = yield* PgTransactionLog.make({ sql, groupCommit: { writers: 1 } }).pipe(
          Scope.extend(scope)
        )
        const blocked = yield* TransactionId.make
        const blocker = yield* blockKey(pool(url, 1), blocked).pipe(Scope.extend(scope))
        // The first decision finds no insert in flight and is written at once: it waits on the lock.
        const direct = log.direct!.decide(record(blocked))
        yield* Effect.sleep("100 millis")
        // The next ones queue; the writer takes them and its insert waits on the same lock.
        const other = yield* TransactionId.make
        const queued = [log.direct!.decide(record(blocked, "abort")), log.direct!.decide(record(other))]
        yield* Effect.sleep("300 millis")
        yield* Scope.close(scope, Exit.void)
        yield* Effect.promise(() => blocker.rollback())
        const answers = yield* Effect.promise(() =>
          Promise.all([direct, ...queued].map((s) => within(s.result, 3_000)))
        )
        // Every caller has an answer. The writer had taken the first queued decision (it was waiting
        // for one) and its insert was cancelled: "may or may not have been written". The other
        // was still queued, never sent: "log closed".
        expect(answers.map((a) => (a === "pending" ? "pending" : a._tag))).toEqual(["Right", "Left", "Left"])
        const [, inFlight, neverSent] = answers as Array<Either.Either<unknown, Error>>
        expect(Either.isLeft(inFlight!) && inFlight.left.message).toContain(
          "may or may not have been written"
        )
        expect(Either.isLeft(neverSent!) && neverSent.left.message).toContain("log closed")
      }),
    30_000
  )

  it.live(
    "a batch that fails (statement timeout) fails each waiting decision with its own txId, unwritten",
    () =>
      Effect.scoped(
        Effect.gen(function* () {
          yield* PgTransactionLog.make({ sql: pool(url) })
          const sql = pool(url, 4, { connection: { statement_timeout: 1_000 } })
          const log = yield* PgTransactionLog.make({ sql, groupCommit: { writers: 1 }, migrate: false })
          const blocked = yield* TransactionId.make
          const blocker = yield* blockKey(pool(url, 1), blocked)
          const direct = log.direct!.decide(record(blocked))
          yield* Effect.sleep("100 millis")
          const fresh = yield* Effect.forEach(Array.from({ length: 3 }), () => TransactionId.make)
          // The writer takes the first queued decision alone (it was waiting for one), the others
          // form the next batch: the blocked key in both, so both inserts time out.
          const queued = [blocked, blocked, ...fresh].map((txId) => ({
            txId,
            started: log.direct!.decide(record(txId, txId === blocked ? "abort" : "commit"))
          }))
          const answers = yield* Effect.promise(() => Promise.all(queued.map((q) => q.started.result)))
          yield* Effect.promise(() => blocker.rollback())
          yield* Effect.promise(() => direct.result)
          for (const [i, answer] of answers.entries()) {
            expect(Either.isLeft(answer)).toBe(true)
            if (Either.isLeft(answer)) {
              expect(answer.left.txId).toBe(queued[i]!.txId)
              expect(answer.left.message).toContain("statement timeout")
            }
          }
          // Nothing of the failed batch was written.
          const rows = yield* Effect.promise(
            () =>
              pool(url, 1)<{ tx_id: string }[]>`select tx_id from accord_decision where tx_id = any(${fresh})`
          )
          expect(rows).toEqual([])
        })
      ),
    30_000
  )

  it.live(
    "reads of the log do not wait for ever behind a completion write hung on a connection that stopped answering",
    () =>
      Effect.gen(function* () {
        const proxy = yield* Effect.promise(() => TcpProxy.start(url))
        const proxied = pool(proxy.url(url), 2)
        const started = Date.now()
        const seen = yield* Effect.scoped(
          Effect.gen(function* () {
            const log = yield* PgTransactionLog.make({ sql: proxied, completionGather: 0 })
            const txId = yield* TransactionId.make
            yield* log.decide(record(txId))
            const frozen = proxy.freezeWhen((chunk) => chunk.includes("set completed_at"), { deliver: false })
            yield* log.complete(txId)
            yield* Effect.promise(() => frozen)
            // Recovery's scan and a decision read, on the pool's other connection.
            const unfinished = yield* log.unfinished().pipe(Effect.timeout("15 seconds"), Effect.option)
            const decision = yield* log.decision(txId).pipe(Effect.timeout("15 seconds"), Effect.option)
            return {
              unfinished: Option.map(unfinished, (rows) => rows.map((d) => d.txId).includes(txId)),
              decision: Option.map(decision, (d) => Option.isSome(d))
            }
          })
        ).pipe(Effect.ensuring(Effect.promise(() => proxy.close())))
        // Answered, and the completion not written yet reads as unfinished (recovery re-drives it).
        expect(seen.unfinished).toEqual(Option.some(true))
        expect(seen.decision).toEqual(Option.some(true))
        // One bounded wait for the reads (the second does not wait again behind the same hung write),
        // the close's flush bound, the abandoned statement's bound.
        expect(Date.now() - started).toBeLessThan(5_000 + 5_000 + 5_000 + 3_000)
      }),
    60_000
  )
})

describe("PgTransactionLog under a TestClock (PGlite)", () => {
  let db: import("@electric-sql/pglite").PGlite
  beforeAll(async () => {
    db = await PgParticipant.openPglite()
  }, 60_000)
  afterAll(async () => {
    await db?.close()
  })

  // `it.effect` runs on a TestClock that only moves when a test adjusts it: the log's own waits
  // must not depend on it (the completer's gather already uses a plain timer).
  it.effect("group commit with a maxWait of milliseconds does not stall concurrent decisions", () =>
    Effect.scoped(
      Effect.gen(function* () {
        const log = yield* PgTransactionLog.makePglite(db, { groupCommit: { maxWait: "5 millis" } })
        const records = yield* Effect.forEach(Array.from({ length: 8 }), () =>
          Effect.map(TransactionId.make, (txId) => record(txId))
        )
        const held = yield* Effect.promise(() =>
          within(Promise.all(records.map((r) => log.direct!.decide(r).result)), 2_000)
        )
        expect(held).not.toBe("pending")
        if (held !== "pending") expect(held.map((a) => Either.isRight(a))).toEqual(records.map(() => true))
      })
    )
  )
})
