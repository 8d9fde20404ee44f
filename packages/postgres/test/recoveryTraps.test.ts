/**
 * Recovery against the traps of 2PC on a real PostgreSQL server: recovery racing a coordinator's
 * PREPARE and decision (citus#1029), foreign prepared transactions, lost connections during
 * COMMIT PREPARED, heuristic outcomes, two recoveries at once, an unreachable participant.
 */
import { Participant, TransactionId, TransactionLog, TwoPhaseCommit } from "@accord/core"
import { afterAll, beforeAll, describe, expect, it } from "@effect/vitest"
import { Deferred, Duration, Effect, Fiber, Schedule, type Scope } from "effect"
import net from "node:net"
import postgres from "postgres"
import * as PgParticipant from "../src/PgParticipant.js"
import * as PgRecovery from "../src/PgRecovery.js"
import * as PgTransactionLog from "../src/PgTransactionLog.js"
import * as TestDatabase from "../src/TestDatabase.js"
import {
  adjust,
  balance,
  bankParticipants,
  branchContext,
  createBank,
  endAndDrop,
  prepareOnly,
  preparedIn,
  skewedClock
} from "./support/pg2pc.js"

const server = await TestDatabase.server()
const DB_A = "accord_t_rtrap_a"
const DB_B = "accord_t_rtrap_b"
const DB_C = "accord_t_rtrap_c"
const DB_OTHER = "accord_t_rtrap_other"
const DB_LOG = "accord_t_rtrap_log"

const scopedLive = <A, E>(name: string, f: () => Effect.Effect<A, E, Scope.Scope>, timeout = 60_000) =>
  it.live(name, () => Effect.scoped(f()), timeout)

/** A participant without its Promise-level calls, so that wrapped Effect calls are the ones used. */
const effectOnly = (p: PgParticipant.PgParticipant): Participant.AnyParticipant => {
  const { direct: _direct, ...rest } = p
  return rest
}

/**
 * A TCP proxy to PostgreSQL that can cut a connection right after forwarding a chosen statement
 * (the server runs it, its answer is lost: ECONNRESET for the client), or partition every link,
 * present and future (nothing forwarded either way, no close: an unreachable host).
 */
const startProxy = async (target: string) => {
  const upstreamUrl = new URL(target)
  const links = new Set<{ client: net.Socket; upstream: net.Socket }>()
  let cutOn: ((chunk: Buffer) => boolean) | undefined
  let partitioned = false
  let cuts = 0
  const server = net.createServer((client) => {
    const upstream = net.connect(Number(upstreamUrl.port || 5432), upstreamUrl.hostname)
    const link = { client, upstream }
    links.add(link)
    let cut = false
    client.on("data", (chunk: Buffer) => {
      if (partitioned) return
      upstream.write(chunk)
      if (cutOn?.(chunk)) {
        cut = true
        cuts++
        client.destroy()
      }
    })
    upstream.on("data", (chunk: Buffer) => {
      if (cut) upstream.destroy()
      else if (!partitioned) client.write(chunk)
    })
    client.on("close", () => {
      if (!cut && !partitioned) upstream.destroy()
    })
    upstream.on("close", () => {
      if (!partitioned) client.destroy()
    })
    client.on("error", () => undefined)
    upstream.on("error", () => undefined)
  })
  await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve))
  const port = (server.address() as net.AddressInfo).port
  const url = new URL(target)
  url.hostname = "127.0.0.1"
  url.port = String(port)
  return {
    url: url.toString(),
    cutAfter: (match: ((chunk: Buffer) => boolean) | undefined) => {
      cutOn = match
    },
    cuts: () => cuts,
    partition: () => {
      partitioned = true
    },
    /** Ends the partition: the links it held are closed (their connections are lost), new ones work. */
    heal: () => {
      partitioned = false
      for (const link of links) {
        link.client.destroy()
        link.upstream.destroy()
      }
      links.clear()
    },
    close: async () => {
      for (const link of links) {
        link.client.destroy()
        link.upstream.destroy()
      }
      await new Promise<void>((resolve) => server.close(() => resolve()))
    }
  }
}

describe.skipIf(server === undefined)("Recovery traps on PostgreSQL", () => {
  const adminUrl = server?.adminUrl ?? ""
  let a: postgres.Sql
  let b: postgres.Sql
  let logSql: postgres.Sql
  let urlA = ""
  let urlB = ""
  let urlC = ""
  let urlOther = ""

  beforeAll(async () => {
    urlA = await createBank(adminUrl, DB_A, 200, 100)
    urlB = await createBank(adminUrl, DB_B, 200, 100)
    urlC = await createBank(adminUrl, DB_C, 100, 100)
    urlOther = await createBank(adminUrl, DB_OTHER, 100, 100)
    a = postgres(urlA, { max: 8, onnotice: () => {} })
    b = postgres(urlB, { max: 8, onnotice: () => {} })
    logSql = postgres(await TestDatabase.createDatabase(adminUrl, DB_LOG), { max: 8, onnotice: () => {} })
  }, 60_000)

  afterAll(
    () =>
      endAndDrop(
        adminUrl,
        [a, b, logSql],
        [DB_A, DB_B, DB_C, DB_OTHER],
        [DB_A, DB_B, DB_C, DB_OTHER, DB_LOG]
      ),
    60_000
  )

  const participants = bankParticipants(() => [a, b])
  const prepared = () =>
    Effect.promise(async () => (await preparedIn(adminUrl, [DB_A, DB_B, DB_C])).map((p) => p.gid))
  const now = { orphanAfter: Duration.zero }
  const logUrl = () => TestDatabase.urlFor(adminUrl, DB_LOG)
  const total = (sql: postgres.Sql) =>
    Effect.promise(
      async () => (await sql<{ t: number }[]>`select sum(balance)::int as t from accounts`)[0]!.t
    )

  // 1. citus#1029: recovery racing a coordinator's PREPARE and decision.

  scopedLive(
    "a branch prepared while another branch's PREPARE is in flight, presumed aborted by recovery: the coordinator's late commit decision loses and it rolls back",
    () =>
      Effect.gen(function* () {
        const [pa, pb] = yield* participants
        const log = yield* PgTransactionLog.make({ sql: logSql })
        const aPrepared = yield* Deferred.make<void>()
        const releaseB = yield* Deferred.make<void>()
        const releaseBPromise = Effect.runPromise(Deferred.await(releaseB))
        const watchedA: Participant.AnyParticipant = {
          ...effectOnly(pa),
          prepare: (ctx, work) =>
            pa
              .prepare(ctx, work as PgParticipant.PgWork)
              .pipe(Effect.tap(() => Deferred.succeed(aPrepared, undefined)))
        }
        // bank-b's work is slow: its PREPARE is still to come when recovery runs.
        const slowB: PgParticipant.PgWork = async (s) => {
          await releaseBPromise
          return s.query("update accounts set balance = balance + 3 where id = $1", [1])
        }
        const coordinator = yield* TwoPhaseCommit.run(
          [Participant.branch(watchedA, adjust(1, -3)), Participant.branch(effectOnly(pb), slowB)],
          { prepareTimeout: Duration.seconds(30) }
        ).pipe(Effect.provideService(TransactionLog.TransactionLog, log), Effect.fork)
        yield* Deferred.await(aPrepared)
        // bank-a's branch is old enough for this recovery (orphanAfter 0) and has no decision.
        const report = yield* PgRecovery.run({ participants: [pa, pb], log, options: now })
        expect(report.presumedAborts).toBe(1)
        expect(report.branchesRolledBack).toBe(1)
        yield* Deferred.succeed(releaseB, undefined)
        const outcome = yield* Fiber.join(coordinator)
        expect(outcome._tag).toBe("Aborted")
        expect((yield* log.decision(outcome.txId)).pipe((d) => d._tag === "Some" && d.value.decision)).toBe(
          "abort"
        )
        expect(yield* balance(a, 1)).toBe(100)
        expect(yield* balance(b, 1)).toBe(100)
        expect(yield* pa.state(branchContext(outcome.txId, pa))).toBe("aborted")
        expect(yield* pb.state(branchContext(outcome.txId, pb))).toBe("aborted")
        expect(yield* prepared()).toEqual([])
      })
  )

  scopedLive(
    "every branch prepared, recovery's presumed abort lands before the coordinator's commit decision: the coordinator rolls back",
    () =>
      Effect.gen(function* () {
        const [pa, pb] = yield* participants
        const inner = yield* PgTransactionLog.make({ sql: logSql })
        const deciding = yield* Deferred.make<void>()
        const release = yield* Deferred.make<void>()
        // A coordinator that stalls (GC pause, slow network) just before its decision write.
        const slowLog: TransactionLog.TransactionLog["Type"] = {
          ...inner,
          decide: (record) =>
            record.decision === "commit"
              ? Deferred.succeed(deciding, undefined).pipe(
                  Effect.zipRight(Deferred.await(release)),
                  Effect.zipRight(inner.decide(record))
                )
              : inner.decide(record)
        }
        const coordinator = yield* TwoPhaseCommit.run([
          Participant.branch(pa, adjust(2, -4)),
          Participant.branch(pb, adjust(2, 4))
        ]).pipe(Effect.provideService(TransactionLog.TransactionLog, slowLog), Effect.fork)
        yield* Deferred.await(deciding)
        const report = yield* PgRecovery.run({ participants: [pa, pb], log: inner, options: now })
        expect(report.presumedAborts).toBe(1)
        expect(report.branchesRolledBack).toBe(2)
        yield* Deferred.succeed(release, undefined)
        const outcome = yield* Fiber.join(coordinator)
        expect(outcome._tag).toBe("Aborted")
        expect(yield* balance(a, 2)).toBe(100)
        expect(yield* balance(b, 2)).toBe(100)
        expect(yield* prepared()).toEqual([])
      })
  )

  scopedLive(
    "the coordinator's commit decision lands before recovery's presumed abort: recovery commits the branches, never rolls them back",
    () =>
      Effect.gen(function* () {
        const [pa, pb] = yield* participants
        const log = yield* PgTransactionLog.make({ sql: logSql })
        const { txId, ctxs } = yield* prepareOnly([pa, pb], 3, 5)
        // Recovery sees the branches prepared; the coordinator's decision is written meanwhile.
        const racingB: Participant.AnyParticipant = {
          ...effectOnly(pb),
          inDoubt: pb.inDoubt.pipe(
            Effect.tap(() =>
              log
                .decide({ txId, decision: "commit", branches: ctxs, decidedAt: Date.now() })
                .pipe(Effect.orDie)
            )
          )
        }
        const report = yield* PgRecovery.run({ participants: [pa, racingB], log, options: now })
        expect(report.presumedAborts).toBe(0)
        expect(report.branchesCommitted).toBe(2)
        expect(report.branchesRolledBack).toBe(0)
        expect(yield* balance(a, 3)).toBe(95)
        expect(yield* balance(b, 3)).toBe(105)
        expect(yield* prepared()).toEqual([])
      })
  )

  scopedLive(
    "recovery racing the coordinator's completion: a branch the coordinator committed meanwhile is not a heuristic",
    () =>
      Effect.gen(function* () {
        const [pa, pb] = yield* participants
        const log = yield* PgTransactionLog.make({ sql: logSql, completion: "immediate" })
        const { txId, ctxs } = yield* prepareOnly([pa, pb], 4, 2)
        yield* log.decide({ txId, decision: "commit", branches: ctxs, decidedAt: Date.now() })
        // Recovery scans bank-b and sees its branch prepared; the coordinator then finishes phase 2
        // and completes before recovery's decision insert.
        const racingB: Participant.AnyParticipant = {
          ...effectOnly(pb),
          inDoubt: pb.inDoubt.pipe(
            Effect.tap(() =>
              Effect.all([pa.commit(ctxs[0]!), pb.commit(ctxs[1]!)]).pipe(
                Effect.zipRight(log.complete(txId)),
                Effect.orDie
              )
            )
          )
        }
        // Recovery read the unfinished decisions just before the coordinator's decision was written.
        const lateLog: PgTransactionLog.PgTransactionLog = { ...log, unfinished: () => Effect.succeed([]) }
        const report = yield* PgRecovery.run({ participants: [pa, racingB], log: lateLog, options: now })
        expect(report.heuristics).toEqual([])
        expect((yield* log.heuristics).filter((h) => h.txId === txId)).toEqual([])
        expect(report.branchesRolledBack).toBe(0)
        expect(yield* balance(a, 4)).toBe(98)
        expect(yield* balance(b, 4)).toBe(102)
        expect(yield* prepared()).toEqual([])
      })
  )

  scopedLive(
    "young is measured against the database server's clock: a recovery host whose clock is behind still presumes abort with orphanAfter 0",
    () =>
      Effect.gen(function* () {
        const [pa, pb] = yield* participants
        const log = yield* PgTransactionLog.make({ sql: logSql })
        yield* prepareOnly([pa, pb], 5, 1)
        const report = yield* PgRecovery.run({ participants: [pa, pb], log, options: now }).pipe(
          Effect.withClock(skewedClock(-60_000))
        )
        expect(report.youngLeft).toBe(0)
        expect(report.branchesRolledBack).toBe(2)
        expect(yield* prepared()).toEqual([])
      })
  )

  // 2. pg_prepared_xacts is cluster-wide.

  scopedLive(
    "foreign prepared transactions are never touched: another gid in the same database, Accord gids of another database or namespace",
    () =>
      Effect.gen(function* () {
        const [pa, pb] = yield* participants
        const log = yield* PgTransactionLog.make({ sql: logSql })
        const foreignTx = yield* TransactionId.make
        const foreign = {
          sameDb: "someone_else_tx_1",
          sameDbNamespaced: TransactionId.gid(foreignTx, "bank-a" as TransactionId.BranchName, "other"),
          // What another Accord deployment with the same branch name prepares in its own database.
          otherDb: TransactionId.gid(foreignTx, "bank-a" as TransactionId.BranchName)
        }
        const other = postgres(urlOther, { max: 1, onnotice: () => {} })
        const prepareForeign = (sql: postgres.Sql, gid: string, id: number) =>
          Effect.promise(() =>
            sql.begin(async (tx) => {
              await tx.unsafe(`update accounts set balance = balance + 1 where id = ${id}`)
              await tx.prepare(gid)
            })
          )
        yield* prepareForeign(a, foreign.sameDb, 97)
        yield* prepareForeign(a, foreign.sameDbNamespaced, 98)
        yield* prepareForeign(other, foreign.otherDb, 99)
        const ours = yield* prepareOnly([pa, pb], 6, 1)
        const report = yield* PgRecovery.run({ participants: [pa, pb], log, options: now })
        const stillPrepared = yield* Effect.promise(() => TestDatabase.preparedOnServer(adminUrl))
        const finish = Effect.promise(async () => {
          await a.unsafe(`rollback prepared '${foreign.sameDb}'`)
          await a.unsafe(`rollback prepared '${foreign.sameDbNamespaced}'`)
          await other.unsafe(`rollback prepared '${foreign.otherDb}'`)
          await other.end({ timeout: 5 })
        })
        yield* finish
        expect(report.branchesRolledBack).toBe(2)
        expect(report.heuristics).toEqual([])
        expect(report.unresolved).toEqual([])
        expect(stillPrepared).toEqual(
          expect.arrayContaining([
            { gid: foreign.sameDb, database: DB_A },
            { gid: foreign.sameDbNamespaced, database: DB_A },
            { gid: foreign.otherDb, database: DB_OTHER }
          ])
        )
        expect(stillPrepared.map((p) => p.gid)).not.toContain(ours.ctxs[0]!.gid)
        expect((yield* log.decision(foreignTx))._tag).toBe("None")
        expect(yield* balance(a, 97)).toBe(100)
        expect(yield* prepared()).toEqual([])
      })
  )

  // 3. Connection loss during COMMIT PREPARED.

  scopedLive(
    "COMMIT PREPARED whose answer is lost (ECONNRESET) leaves the decision unfinished and reported; the next pass completes it",
    () =>
      Effect.gen(function* () {
        const proxy = yield* Effect.acquireRelease(
          Effect.promise(() => startProxy(urlA)),
          (p) => Effect.promise(() => p.close())
        )
        const viaProxy = postgres(proxy.url, { max: 4, onnotice: () => {} })
        yield* Effect.addFinalizer(() => Effect.promise(() => viaProxy.end({ timeout: 5 })))
        const pa = yield* PgParticipant.make({ name: "bank-a", sql: viaProxy })
        const pb = yield* PgParticipant.make({ name: "bank-b", sql: b })
        const log = yield* PgTransactionLog.make({ sql: logSql })
        const { txId, ctxs } = yield* prepareOnly([pa, pb], 7, 6)
        yield* log.decide({ txId, decision: "commit", branches: ctxs, decidedAt: Date.now() })
        proxy.cutAfter((chunk) => chunk.includes("COMMIT PREPARED"))
        const first = yield* PgRecovery.run({
          participants: [pa, pb],
          log,
          options: { ...now, callTimeout: Duration.seconds(2) }
        })
        proxy.cutAfter(undefined)
        expect(proxy.cuts()).toBeGreaterThan(0)
        expect(first.unresolved.map((u) => [u.txId, u.branch])).toContainEqual([txId, "bank-a"])
        expect((yield* log.unfinished()).map((d) => d.txId)).toContain(txId)
        // The server did commit it: the answer only was lost.
        expect(yield* balance(a, 7)).toBe(94)
        const second = yield* PgRecovery.run({ participants: [pa, pb], log, options: now })
        expect(second.heuristics).toEqual([])
        expect((yield* log.unfinished()).map((d) => d.txId)).not.toContain(txId)
        expect(yield* balance(b, 7)).toBe(106)
        expect(yield* prepared()).toEqual([])
      })
  )

  scopedLive(
    "recovery's connection terminated (57P01) during its COMMIT PREPAREDs: nothing is completed that did not commit, and the decision ends committed",
    () =>
      Effect.gen(function* () {
        // Its own pool, without postgres.js's type fetch on connect (a killed fetch is an unhandled rejection in the driver).
        const victim = postgres(urlA, {
          max: 6,
          onnotice: () => {},
          fetch_types: false,
          connection: { application_name: "victim" }
        })
        yield* Effect.addFinalizer(() => Effect.promise(() => victim.end({ timeout: 5 })))
        const pa = yield* PgParticipant.make({ name: "bank-a", sql: victim })
        const pb = yield* PgParticipant.make({ name: "bank-b", sql: b })
        const log = yield* PgTransactionLog.make({ sql: logSql })
        const txs = yield* Effect.forEach(
          Array.from({ length: 12 }, (_, i) => 10 + i),
          (id) =>
            prepareOnly([pa, pb], id, 1).pipe(
              Effect.tap(({ txId, ctxs }) =>
                log.decide({ txId, decision: "commit", branches: ctxs, decidedAt: Date.now() })
              )
            )
        )
        let killed = 0
        const killer = yield* Effect.promise(() =>
          logSql.unsafe(
            `select pg_terminate_backend(pid) from pg_stat_activity where datname = '${DB_A}' and application_name = 'victim'`
          )
        ).pipe(
          Effect.tap((rows) => {
            killed += rows.length
          }),
          Effect.repeat(Schedule.spaced(Duration.millis(2))),
          Effect.fork
        )
        const first = yield* PgRecovery.run({
          participants: [pa, pb],
          log,
          options: { ...now, retrySchedule: Schedule.recurs(0) }
        }).pipe(Effect.either)
        yield* Fiber.interrupt(killer)
        expect(killed).toBeGreaterThan(0)
        // Checked and finished on another pool: a termination still in flight may hit the victim's.
        const checkA = yield* PgParticipant.make({ name: "bank-a", sql: a })
        const unfinished = new Set((yield* log.unfinished()).map((d) => d.txId))
        for (const { txId, ctxs } of txs) {
          // A completed decision has every branch committed.
          if (!unfinished.has(txId)) expect(yield* checkA.state(ctxs[0]!)).toBe("committed")
        }
        expect(first._tag === "Left" || first.right.heuristics.length === 0).toBe(true)
        const second = yield* PgRecovery.run({ participants: [checkA, pb], log, options: now })
        expect(second.heuristics).toEqual([])
        for (const { txId, ctxs } of txs) {
          expect(yield* checkA.state(ctxs[0]!)).toBe("committed")
          expect(yield* pb.state(ctxs[1]!)).toBe("committed")
          expect((yield* log.unfinished()).map((d) => d.txId)).not.toContain(txId)
        }
        expect(yield* prepared()).toEqual([])
      })
  )

  // 4. Heuristic outcomes.

  scopedLive("a branch committed by hand after the abort decision is reported as a heuristic commit", () =>
    Effect.gen(function* () {
      const [pa, pb] = yield* participants
      const log = yield* PgTransactionLog.make({ sql: logSql })
      const { txId, ctxs } = yield* prepareOnly([pa, pb], 45, 5)
      yield* log.decide({ txId, decision: "abort", branches: ctxs, decidedAt: Date.now() })
      yield* Effect.promise(() => a.unsafe(`COMMIT PREPARED '${ctxs[0]!.gid}'`))
      const report = yield* PgRecovery.run({ participants: [pa, pb], log, options: now })
      expect(report.heuristics.map((h) => [h.txId, h.branch, h.decision])).toEqual([
        [txId, "bank-a", "abort"]
      ])
      expect((yield* log.heuristics).filter((h) => h.txId === txId).map((h) => h.branch)).toEqual(["bank-a"])
      expect(yield* balance(a, 45)).toBe(95)
      expect(yield* balance(b, 45)).toBe(100)
      expect(yield* prepared()).toEqual([])
    })
  )

  scopedLive(
    "an orphan's branch committed by hand before recovery presumed abort is reported as a heuristic commit",
    () =>
      Effect.gen(function* () {
        const [pa, pb] = yield* participants
        const log = yield* PgTransactionLog.make({ sql: logSql })
        const { txId, ctxs } = yield* prepareOnly([pa, pb], 46, 5)
        // No decision was ever written; an operator commits bank-a's branch by hand.
        yield* Effect.promise(() => a.unsafe(`COMMIT PREPARED '${ctxs[0]!.gid}'`))
        const report = yield* PgRecovery.run({ participants: [pa, pb], log, options: now })
        expect(report.heuristics.map((h) => [h.txId, h.branch, h.decision])).toEqual([
          [txId, "bank-a", "abort"]
        ])
        expect(yield* balance(a, 46)).toBe(95)
        expect(yield* balance(b, 46)).toBe(100)
        expect(yield* prepared()).toEqual([])
      })
  )

  // 5. Two recoveries at once on one log.

  scopedLive(
    "two recovery processes at once on the same log and databases: both end, no errors, no double effects, no heuristics",
    () =>
      Effect.gen(function* () {
        const pools = [0, 1].map(() => ({
          a: postgres(urlA, { max: 6, onnotice: () => {} }),
          b: postgres(urlB, { max: 6, onnotice: () => {} }),
          log: postgres(logUrl(), { max: 6, onnotice: () => {} })
        }))
        yield* Effect.addFinalizer(() =>
          Effect.promise(async () => {
            for (const p of pools) await Promise.all([p.a.end(), p.b.end(), p.log.end()])
          })
        )
        const [pa, pb] = yield* participants
        const log = yield* PgTransactionLog.make({ sql: logSql })
        const beforeA = yield* total(a)
        const beforeB = yield* total(b)
        const committed = yield* Effect.forEach(
          Array.from({ length: 8 }, (_, i) => 50 + i),
          (id) =>
            prepareOnly([pa, pb], id, 1).pipe(
              Effect.tap(({ txId, ctxs }) =>
                log.decide({ txId, decision: "commit", branches: ctxs, decidedAt: Date.now() })
              )
            )
        )
        const orphans = yield* Effect.forEach(
          Array.from({ length: 8 }, (_, i) => 100 + i),
          (id) => prepareOnly([pa, pb], id, 1)
        )
        const processes = yield* Effect.forEach(pools, (pool) =>
          Effect.gen(function* () {
            const qa = yield* PgParticipant.make({ name: "bank-a", sql: pool.a })
            const qb = yield* PgParticipant.make({ name: "bank-b", sql: pool.b })
            const qlog = yield* PgTransactionLog.make({ sql: pool.log })
            return { qa, qb, qlog }
          })
        )
        const reports = yield* Effect.forEach(
          processes,
          ({ qa, qb, qlog }) => PgRecovery.run({ participants: [qa, qb], log: qlog, options: now }),
          { concurrency: "unbounded" }
        )
        for (const r of reports) {
          expect(r.heuristics).toEqual([])
          expect(r.unresolved).toEqual([])
        }
        expect(reports[0]!.presumedAborts + reports[1]!.presumedAborts).toBe(8)
        expect(
          (yield* log.heuristics).filter((h) => [...committed, ...orphans].some((t) => t.txId === h.txId))
        ).toEqual([])
        for (const { ctxs } of committed) expect(yield* pa.state(ctxs[0]!)).toBe("committed")
        for (const { ctxs } of orphans) expect(yield* pb.state(ctxs[1]!)).toBe("aborted")
        expect(yield* total(a)).toBe(beforeA - 8)
        expect(yield* total(b)).toBe(beforeB + 8)
        expect(yield* prepared()).toEqual([])
      }),
    120_000
  )

  // 6. An unreachable participant.

  scopedLive(
    "a participant unreachable during a pass: the other transactions finish, its own stay and are reported, the pass ends in bounded time",
    () =>
      Effect.gen(function* () {
        const proxy = yield* Effect.acquireRelease(
          Effect.promise(() => startProxy(urlC)),
          (p) => Effect.promise(() => p.close())
        )
        const viaProxy = postgres(proxy.url, { max: 4, onnotice: () => {}, connect_timeout: 2 })
        yield* Effect.addFinalizer(() => Effect.promise(() => viaProxy.end({ timeout: 1 })))
        const [pa, pb] = yield* participants
        const pc = yield* PgParticipant.make({
          name: "bank-c",
          sql: viaProxy,
          cancelTimeout: Duration.millis(300)
        })
        const log = yield* PgTransactionLog.make({ sql: logSql })
        const reachable = yield* prepareOnly([pa, pb], 80, 1)
        yield* log.decide({
          txId: reachable.txId,
          decision: "commit",
          branches: reachable.ctxs,
          decidedAt: Date.now()
        })
        const orphan = yield* prepareOnly([pa, pb], 81, 1)
        const withC = yield* prepareOnly([pa, pc], 82, 1)
        yield* log.decide({
          txId: withC.txId,
          decision: "commit",
          branches: withC.ctxs,
          decidedAt: Date.now()
        })
        proxy.partition()
        const started = Date.now()
        const report = yield* PgRecovery.run({
          participants: [pa, pb, pc],
          log,
          options: { ...now, callTimeout: Duration.millis(500), retrySchedule: Schedule.recurs(1) }
        }).pipe(Effect.timeout(Duration.seconds(30)))
        const elapsed = Date.now() - started
        proxy.heal()
        expect(elapsed).toBeLessThan(15_000)
        expect(yield* pa.state(reachable.ctxs[0]!)).toBe("committed")
        expect(yield* pb.state(orphan.ctxs[1]!)).toBe("aborted")
        expect(yield* pa.state(withC.ctxs[0]!)).toBe("committed")
        expect(report.unresolved.map((u) => u.branch)).toContain("bank-c")
        expect((yield* log.unfinished()).map((d) => d.txId)).toContain(withC.txId)
        // Reachable again: the next pass finishes it.
        const again = yield* PgRecovery.run({ participants: [pa, pb, pc], log, options: now })
        expect(again.unresolved).toEqual([])
        expect((yield* log.unfinished()).map((d) => d.txId)).not.toContain(withC.txId)
        expect(yield* balance(a, 82)).toBe(99)
        expect(yield* prepared()).toEqual([])
      })
  )
})
