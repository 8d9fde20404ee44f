/**
 * `gcMarkers` against real PostgreSQL, where it used to delete markers recovery or a coordinator
 * still needed:
 * - a marker no forget saw was aged from its branch's BEGIN: a branch prepared longer than the age,
 *   committed by recovery whose completion and forget then failed, lost its marker to the next
 *   `gcMarkers`, and the next recovery pass recorded a heuristic rollback of a committed branch.
 *   A gid a call saw prepared is now aged from the first call that found it no longer prepared;
 * - a marker was kept only for the calling participant's `markerGrace`: another participant of the
 *   same database and namespace with a longer grace lost its markers early, forgotten or not. Each
 *   participant now declares its grace when made (`accord_branch_grace`), and `gcMarkers` keeps
 *   each branch's markers at least that long, whoever calls it;
 * - both need `accord_branch_seen` and `accord_branch_grace`, which the migration adds to a
 *   database the previous release migrated, beside a prepared branch, without waiting for its lock.
 * The sightings also work on PGlite, and calls from several processes at once agree.
 *
 * Databases `s22_markers_*`, dropped at the end; nothing is left prepared.
 */
import { TransactionId } from "@accord/core"
import { afterAll, beforeAll, beforeEach, describe, expect, it } from "@effect/vitest"
import type { PGlite } from "@electric-sql/pglite"
import { Duration, Effect } from "effect"
import postgres from "postgres"
import * as Migrations from "../src/Migrations.js"
import type { BranchSession } from "../src/PgParticipant.js"
import * as PgParticipant from "../src/PgParticipant.js"
import * as PgRecovery from "../src/PgRecovery.js"
import * as PgTransactionLog from "../src/PgTransactionLog.js"
import * as TestDatabase from "../src/TestDatabase.js"

const server = await TestDatabase.server()
const DB_BANK = "s22_markers_bank"
const DB_LOG = "s22_markers_log"
const DB_OLD = "s22_markers_old"

const ctxOf = (name: string) =>
  Effect.map(TransactionId.make, (txId) => ({
    txId,
    branch: name as TransactionId.BranchName,
    gid: TransactionId.gid(txId, name as TransactionId.BranchName)
  }))

const bump = (s: BranchSession) => s.query("update t set v = v + 1 where id = 1")

/** The age the tests give `gcMarkers`; a branch is "long prepared" once prepared longer. */
const AGE = Duration.seconds(1)
/**
 * Real time for a prepared branch to grow older than `AGE` (its marker's `created_at` is its BEGIN,
 * written inside the prepared transaction, which nothing can backdate).
 */
const outlive = Effect.sleep(Duration.millis(1_500))

describe.skipIf(server === undefined)("gcMarkers and the markers others still need", () => {
  const adminUrl = server?.adminUrl ?? ""
  let bank: postgres.Sql
  let logSql: postgres.Sql

  beforeAll(async () => {
    bank = postgres(await TestDatabase.createDatabase(adminUrl, DB_BANK), { max: 4, onnotice: () => {} })
    logSql = postgres(await TestDatabase.createDatabase(adminUrl, DB_LOG), { max: 4, onnotice: () => {} })
    await bank.unsafe("create table t (id int primary key, v int not null); insert into t values (1, 0)")
  }, 60_000)
  // Each test starts from no markers, stamps or sightings (the migration runs at each test's make).
  beforeEach(async () => {
    await bank.unsafe(
      "do $$ begin if to_regclass('accord_branch') is not null then delete from accord_branch; " +
        "delete from accord_branch_forgotten; end if; " +
        "if to_regclass('accord_branch_seen') is not null then delete from accord_branch_seen; end if; " +
        "if to_regclass('accord_branch_grace') is not null then delete from accord_branch_grace; end if; end $$"
    )
  })
  afterAll(async () => {
    await bank?.end({ timeout: 5 })
    await logSql?.end({ timeout: 5 })
    const left = await TestDatabase.preparedOnServer(adminUrl)
    await TestDatabase.dropDatabase(adminUrl, DB_BANK)
    await TestDatabase.dropDatabase(adminUrl, DB_LOG)
    expect(left.filter((p) => p.database === DB_BANK || p.database === DB_LOG)).toEqual([])
  }, 60_000)

  const markers = () =>
    Effect.promise(async () =>
      (await bank<{ gid: string }[]>`select gid from accord_branch`).map((r) => r.gid)
    )

  describe("a branch prepared longer than the age", () => {
    it.live(
      "committed by recovery that then failed to complete it keeps its marker: the next pass records no heuristic",
      () =>
        Effect.gen(function* () {
          const log = yield* PgTransactionLog.make({ sql: logSql, completion: "immediate" })
          const p = yield* PgParticipant.make({ name: "bank-a", sql: bank, markerGrace: AGE })
          const ctx = yield* ctxOf("bank-a")
          expect((yield* p.prepare(ctx, bump))._tag).toBe("Prepared")
          yield* log.decide({
            txId: ctx.txId,
            decision: "commit",
            branches: [{ branch: ctx.branch, gid: ctx.gid }],
            // Older than recovery's orphanAfter: a pass drives it.
            decidedAt: Date.now() - 3_600_000
          })
          // The operator's periodic backstop runs while the branch waits, prepared.
          expect(yield* p.gcMarkers(AGE)).toBe(0)
          yield* outlive
          // Recovery commits it; its completion and forget are lost (the log did not answer).
          expect(yield* p.commit(ctx)).toBe("Committed")
          // The backstop runs again before the next recovery pass.
          const collected = yield* p.gcMarkers(AGE)
          const report = yield* PgRecovery.run({ participants: [p], log, options: { gc: false } })
          // Before: the marker, aged from the branch's BEGIN, was deleted here, and the pass found the
          // gid gone without it under an unfinished commit decision: a heuristic rollback, recorded.
          expect(report.heuristics).toEqual([])
          expect(yield* log.heuristics).toEqual([])
          expect(collected).toBe(0)
          expect(report.transactionsFinished).toBe(1)
          const decision = yield* log.decision(ctx.txId)
          expect(decision._tag === "Some" && decision.value.completedAt !== undefined).toBe(true)
          expect(yield* p.state(ctx)).toBe("committed")
        }).pipe(Effect.scoped)
    )

    it.live("a marker whose gid a call saw prepared is aged from after its commit, then collected", () =>
      Effect.gen(function* () {
        const p = yield* PgParticipant.make({ name: "bank-a", sql: bank, markerGrace: AGE })
        const ctx = yield* ctxOf("bank-a")
        expect((yield* p.prepare(ctx, bump))._tag).toBe("Prepared")
        expect(yield* p.gcMarkers(AGE)).toBe(0)
        yield* outlive
        expect(yield* p.commit(ctx)).toBe("Committed")
        // Its BEGIN is older than the age; its commit is not.
        expect(yield* p.gcMarkers(AGE)).toBe(0)
        expect(yield* markers()).toContain(ctx.gid)
        const seen = yield* Effect.promise(
          () => bank<{ prepared: boolean }[]>`select prepared from accord_branch_seen where gid = ${ctx.gid}`
        )
        expect(seen.map((r) => r.prepared)).toEqual([false])
        // Committed longer ago than the age: the backstop collects it, and its sighting with it.
        yield* outlive
        expect(yield* p.gcMarkers(AGE)).toBe(1)
        expect(yield* markers()).not.toContain(ctx.gid)
        const left = yield* Effect.promise(() => bank`select gid from accord_branch_seen`)
        expect(left.length).toBe(0)
      })
    )

    it.live("a gid seen prepared and then rolled back leaves no sighting behind", () =>
      Effect.gen(function* () {
        const p = yield* PgParticipant.make({ name: "bank-a", sql: bank, markerGrace: AGE })
        const ctx = yield* ctxOf("bank-a")
        expect((yield* p.prepare(ctx, bump))._tag).toBe("Prepared")
        expect(yield* p.gcMarkers(AGE)).toBe(0)
        expect(yield* p.rollback(ctx)).toBe("RolledBack")
        expect(yield* p.gcMarkers(AGE)).toBe(0)
        yield* outlive
        expect(yield* p.gcMarkers(AGE)).toBe(0)
        const left = yield* Effect.promise(() => bank`select gid from accord_branch_seen`)
        expect(left.length).toBe(0)
      })
    )
  })

  it.live("calls from several processes at once, beside prepared branches, all succeed and agree", () =>
    Effect.gen(function* () {
      const p = yield* PgParticipant.make({ name: "bank-a", sql: bank, markerGrace: AGE })
      const others = yield* Effect.forEach(["bank-b", "bank-c", "bank-d"], (name) =>
        PgParticipant.make({ name, sql: bank, markerGrace: AGE })
      )
      // Prepared branches of several participants (one each: they update the same row), and old
      // markers no forget saw, for the calls to sight and collect together.
      const prepared = yield* Effect.forEach(others, (o) =>
        Effect.gen(function* () {
          const ctx = yield* ctxOf(o.name)
          expect((yield* o.prepare(ctx, (s) => s.query("select pg_current_xact_id()")))._tag).toBe("Prepared")
          return [o, ctx] as const
        })
      )
      yield* Effect.promise(
        () => bank`insert into accord_branch (gid, tx_id, branch, created_at)
          select 'accord_01OLD' || i || '_bank-a', '01OLD' || i, 'bank-a', now() - interval '2 days'
          from generate_series(1, 50) i`
      )
      for (let round = 0; round < 10; round++) {
        const counts = yield* Effect.all(
          Array.from({ length: 4 }, () => p.gcMarkers(AGE)),
          { concurrency: "unbounded" }
        )
        expect(counts.reduce((a, b) => a + b, 0)).toBe(round === 0 ? 50 : 0)
      }
      const seen = yield* Effect.promise(
        () =>
          bank<
            { gid: string; prepared: boolean }[]
          >`select gid, prepared from accord_branch_seen order by gid`
      )
      expect(seen).toEqual(
        prepared.map(([, ctx]) => ({ gid: ctx.gid, prepared: true })).sort((a, b) => (a.gid < b.gid ? -1 : 1))
      )
      for (const [o, ctx] of prepared) expect(yield* o.rollback(ctx)).toBe("RolledBack")
    })
  )

  describe("two participants of different markerGrace on one database and namespace", () => {
    /** A committed branch of `p` whose marker is two days old, forgotten `forgottenAgo` ago. */
    const forgottenMarker = (p: PgParticipant.PgParticipant, forgottenAgo: string) =>
      Effect.gen(function* () {
        const ctx = yield* ctxOf(p.name)
        expect((yield* p.prepare(ctx, bump))._tag).toBe("Prepared")
        expect(yield* p.commit(ctx)).toBe("Committed")
        yield* p.forget([ctx])
        yield* Effect.promise(
          () => bank`update accord_branch set created_at = now() - interval '2 days' where gid = ${ctx.gid}`
        )
        yield* Effect.promise(
          () =>
            bank`update accord_branch_forgotten set forgotten_at = now() - ${forgottenAgo}::interval where gid = ${ctx.gid}`
        )
        return ctx
      })

    it.live("the shorter grace's gcMarkers keeps the longer grace's forgotten marker for that grace", () =>
      Effect.gen(function* () {
        const long = yield* PgParticipant.make({ name: "bank-a", sql: bank, markerGrace: Duration.hours(1) })
        const short = yield* PgParticipant.make({
          name: "bank-b",
          sql: bank,
          markerGrace: Duration.minutes(1)
        })
        const ctx = yield* forgottenMarker(long, "10 minutes")
        // Valid for its caller (5 minutes is at least its own grace), but bank-a's forget keeps
        // this marker for an hour: its coordinators may still be re-driving COMMIT PREPARED.
        expect(yield* short.gcMarkers(Duration.minutes(5))).toBe(0)
        expect(yield* markers()).toContain(ctx.gid)
        // Before: deleted by bank-b's call, and this read HeuristicRollback.
        expect(yield* long.commit(ctx)).toBe("Committed")
        // bank-a's own forget keeps it as well, inside its grace.
        yield* long.forget([ctx])
        expect(yield* markers()).toContain(ctx.gid)
      })
    )

    it.live("past the longer grace, the shorter grace's gcMarkers collects it, and its stamp", () =>
      Effect.gen(function* () {
        const long = yield* PgParticipant.make({ name: "bank-a", sql: bank, markerGrace: Duration.hours(1) })
        const short = yield* PgParticipant.make({
          name: "bank-b",
          sql: bank,
          markerGrace: Duration.minutes(1)
        })
        const ctx = yield* forgottenMarker(long, "2 hours")
        const own = yield* forgottenMarker(short, "10 minutes")
        expect(yield* short.gcMarkers(Duration.minutes(5))).toBe(2)
        expect(yield* markers()).not.toContain(ctx.gid)
        expect(yield* markers()).not.toContain(own.gid)
        const stamps = yield* Effect.promise(() => bank`select gid from accord_branch_forgotten`)
        expect(stamps.length).toBe(0)
      })
    )

    it.live(
      "the shorter grace's gcMarkers keeps the longer grace's marker no forget saw for that grace",
      () =>
        Effect.gen(function* () {
          const long = yield* PgParticipant.make({
            name: "bank-a",
            sql: bank,
            markerGrace: Duration.hours(1)
          })
          const short = yield* PgParticipant.make({
            name: "bank-b",
            sql: bank,
            markerGrace: Duration.minutes(1)
          })
          // Committed, and begun ten minutes ago: bank-a's coordinator, whose transactionTimeout its
          // grace exceeds, may still be re-driving its COMMIT PREPARED.
          const ctx = yield* ctxOf("bank-a")
          expect((yield* long.prepare(ctx, bump))._tag).toBe("Prepared")
          expect(yield* long.commit(ctx)).toBe("Committed")
          yield* Effect.promise(
            () =>
              bank`update accord_branch set created_at = now() - interval '10 minutes' where gid = ${ctx.gid}`
          )
          expect(yield* short.gcMarkers(Duration.minutes(5))).toBe(0)
          // Before: deleted by bank-b's call, and this read HeuristicRollback.
          expect(yield* long.commit(ctx)).toBe("Committed")
          yield* Effect.promise(
            () =>
              bank`update accord_branch set created_at = now() - interval '2 hours' where gid = ${ctx.gid}`
          )
          expect(yield* short.gcMarkers(Duration.minutes(5))).toBe(1)
          expect(yield* markers()).not.toContain(ctx.gid)
        })
    )

    it.live("each participant declares its grace when made; the latest declaration counts", () =>
      Effect.gen(function* () {
        yield* PgParticipant.make({ name: "bank-a", sql: bank, markerGrace: Duration.hours(2) })
        yield* PgParticipant.make({ name: "bank-a", sql: bank, markerGrace: Duration.hours(1) })
        yield* PgParticipant.make({ name: "bank-b", sql: bank })
        yield* PgParticipant.make({
          name: "bank-b",
          sql: bank,
          namespace: "other",
          markerGrace: Duration.zero
        })
        const rows = yield* Effect.promise(
          () =>
            bank<{ namespace: string; branch: string; grace: number }[]>`select namespace, branch, grace
              from accord_branch_grace order by namespace, branch`
        )
        expect(rows).toEqual([
          { namespace: "", branch: "bank-a", grace: 3600 },
          { namespace: "", branch: "bank-b", grace: 300 },
          { namespace: "other", branch: "bank-b", grace: 0 }
        ])
      })
    )
  })
})

describe("gcMarkers on PGlite", () => {
  let db: PGlite
  beforeAll(async () => {
    db = await PgParticipant.openPglite()
    await db.exec("create table t (id int primary key, v int not null); insert into t values (1, 0)")
  }, 120_000)
  afterAll(async () => {
    await db?.close()
  })

  it.live("ages a marker whose gid a call saw prepared from after its commit", () =>
    Effect.gen(function* () {
      const p = yield* PgParticipant.makePglite({ name: "bank-a", db, markerGrace: AGE })
      const markers = () =>
        Effect.promise(async () =>
          (await db.query<{ gid: string }>("select gid from accord_branch")).rows.map((r) => r.gid)
        )
      const ctx = yield* ctxOf("bank-a")
      expect((yield* p.prepare(ctx, bump))._tag).toBe("Prepared")
      expect(yield* p.gcMarkers(AGE)).toBe(0)
      yield* outlive
      expect(yield* p.commit(ctx)).toBe("Committed")
      expect(yield* p.gcMarkers(AGE)).toBe(0)
      expect(yield* markers()).toContain(ctx.gid)
      yield* outlive
      expect(yield* p.gcMarkers(AGE)).toBe(1)
      expect(yield* markers()).not.toContain(ctx.gid)
    })
  )
})

describe.skipIf(server === undefined)("a participant database migrated by the previous release", () => {
  const adminUrl = server?.adminUrl ?? ""
  let url: string

  beforeAll(async () => {
    url = await TestDatabase.createDatabase(adminUrl, DB_OLD)
  }, 60_000)
  afterAll(async () => {
    const left = await TestDatabase.preparedOnServer(adminUrl)
    await TestDatabase.dropDatabase(adminUrl, DB_OLD)
    expect(left.filter((p) => p.database === DB_OLD)).toEqual([])
  }, 60_000)

  it.live(
    "is upgraded in place beside a prepared branch, keeping its stamps, without waiting for its lock",
    () =>
      Effect.gen(function* () {
        const sql = postgres(url, { max: 4, onnotice: () => {} })
        yield* Effect.addFinalizer(() => Effect.promise(() => sql.end({ timeout: 5 })))
        // The tables as the previous release created them, a stamp, and an orphaned branch holding a
        // lock on the marker table.
        yield* Effect.promise(() =>
          sql.unsafe(`create table t (id int primary key, v int not null); insert into t values (1, 0);
          create table accord_branch (gid text primary key, tx_id text not null, branch text not null,
            created_at timestamptz not null default now());
          create index accord_branch_created_at on accord_branch (created_at);
          create table accord_branch_forgotten (gid text primary key, branch text not null,
            forgotten_at timestamptz not null default now());
          create index accord_branch_forgotten_at on accord_branch_forgotten (forgotten_at);
          insert into accord_branch (gid, tx_id, branch) values ('accord_01STAMPED_bank-a', '01STAMPED', 'bank-a');
          insert into accord_branch_forgotten (gid, branch) values ('accord_01STAMPED_bank-a', 'bank-a')`)
        )
        const orphan = yield* ctxOf("bank-a")
        const holder = yield* Effect.promise(() => sql.reserve())
        yield* Effect.promise(() =>
          holder.unsafe(
            `begin; insert into accord_branch (gid, tx_id, branch) values ('${orphan.gid}', '${orphan.txId}', 'bank-a'); prepare transaction '${orphan.gid}'`
          )
        )
        holder.release()
        // Made with migrate: false, it keeps the previous rule (and warns) until the migration runs.
        const before = yield* PgParticipant.make({ name: "bank-a", sql, migrate: false })
        expect(yield* before.gcMarkers(Duration.days(1))).toBe(0)
        const started = Date.now()
        const p = yield* PgParticipant.make({ name: "bank-a", sql, verifyTimeout: Duration.seconds(5) })
        expect(Date.now() - started).toBeLessThan(5_000)
        const shape = yield* Effect.promise(
          () => sql<{ seen: boolean; grace: number | null; stamps: number }[]>`select
            to_regclass('accord_branch_seen') is not null as seen,
            (select grace from accord_branch_grace where namespace = '' and branch = 'bank-a') as grace,
            (select count(*)::int from accord_branch_forgotten) as stamps`
        )
        expect(shape[0]).toEqual({ seen: true, grace: 300, stamps: 1 })
        // Idempotent: a second migration changes nothing.
        yield* Migrations.participant(sql)
        // The orphan is sighted, and committed; the old stamp ages as before.
        expect(yield* p.gcMarkers(Duration.days(1))).toBe(0)
        expect(yield* p.commit(orphan)).toBe("Committed")
        yield* Effect.promise(
          () => sql`update accord_branch_forgotten set forgotten_at = now() - interval '2 days'`
        )
        yield* Effect.promise(() => sql`update accord_branch set created_at = now() - interval '3 days'`)
        expect(yield* p.gcMarkers(Duration.days(1))).toBe(1)
        expect(yield* p.state(orphan)).toBe("committed")
      }).pipe(Effect.scoped)
  )
})
