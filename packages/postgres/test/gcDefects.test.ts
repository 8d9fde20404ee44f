/**
 * Garbage collection of completed transactions (`PgRecovery.run`'s `gc`) and of markers
 * (`PgParticipant.gcMarkers`), against real PostgreSQL:
 * - another deployment's completed decisions (same participant names, another gid namespace) are
 *   left out of gc's page in SQL, so however many of them there are, this deployment's own are
 *   still purged;
 * - a duration or a limit that is not valid is refused with a `ConfigurationError` before anything
 *   is deleted (Effect's `Duration.decode` turns NaN or a negative number into zero: "at once");
 * - `gcMarkers` ages a forgotten marker by its forget stamp, as `forget` does, never by the
 *   branch's BEGIN, so it cannot delete a marker still inside its `markerGrace`.
 */
import { type TransactionError, TransactionId } from "@accord/core"
import { afterAll, beforeAll, beforeEach, describe, expect, it } from "@effect/vitest"
import type { PGlite } from "@electric-sql/pglite"
import { Duration, Effect, Either } from "effect"
import postgres from "postgres"
import type { BranchSession } from "../src/PgParticipant.js"
import * as PgParticipant from "../src/PgParticipant.js"
import * as PgRecovery from "../src/PgRecovery.js"
import * as PgTransactionLog from "../src/PgTransactionLog.js"
import * as TestDatabase from "../src/TestDatabase.js"

const server = await TestDatabase.server()
const DB_BANK = "fixb_gc_defects_bank"
const DB_LOG = "fixb_gc_defects_log"

const bankA = "bank-a" as TransactionId.BranchName

const ctxOf = (namespace?: string) =>
  Effect.map(TransactionId.make, (txId) => ({
    txId,
    branch: bankA,
    gid: TransactionId.gid(txId, bankA, namespace)
  }))

const bump = (s: BranchSession) => s.query("update t set v = v + 1 where id = 1")

const refusal = <A, E extends { readonly _tag: string }>(effect: Effect.Effect<A, E>) =>
  Effect.map(Effect.either(effect), (result) => (Either.isLeft(result) ? result.left._tag : "succeeded"))

/** A completed commit decision of bank-a in `namespace`, completed `ageSeconds` ago (`age` sets it). */
const completedDecision = (
  log: PgTransactionLog.PgTransactionLog,
  namespace: string | undefined,
  ageSeconds: number,
  age: (txId: string, seconds: number) => Promise<unknown>
) =>
  Effect.gen(function* () {
    const ctx = yield* ctxOf(namespace)
    yield* log.decide({
      txId: ctx.txId,
      decision: "commit",
      branches: [{ branch: ctx.branch, gid: ctx.gid }],
      decidedAt: Date.now()
    })
    yield* log.complete(ctx.txId)
    yield* Effect.promise(() => age(ctx.txId, ageSeconds))
    return ctx.txId
  })

/**
 * Other deployments' decisions (`foreign` namespaces, `undefined` for none) completed before this
 * one's: without a filter in SQL they are the oldest, 3 per namespace, and fill every page of
 * `limit` 3. This deployment's 4 must still all be purged, in two passes; theirs stay.
 */
const starvation = (
  log: PgTransactionLog.PgTransactionLog,
  p: PgParticipant.PgParticipant,
  own: string | undefined,
  foreign: ReadonlyArray<string | undefined>,
  age: (txId: string, seconds: number) => Promise<unknown>
) =>
  Effect.gen(function* () {
    const theirs: Array<TransactionId.TransactionId> = []
    for (const [n, namespace] of foreign.entries()) {
      for (let i = 0; i < 3; i++)
        theirs.push(yield* completedDecision(log, namespace, 36_000 - n * 10 - i, age))
    }
    const ours: Array<TransactionId.TransactionId> = []
    for (let i = 0; i < 4; i++) ours.push(yield* completedDecision(log, own, 60, age))
    let purged = 0
    for (let pass = 0; pass < 2; pass++) {
      const report = yield* PgRecovery.run({
        participants: [p],
        log,
        options: { orphanAfter: Duration.hours(1), gc: { after: Duration.seconds(1), limit: 3 } }
      })
      purged += report.decisionsPurged
    }
    expect(purged).toBe(4)
    for (const txId of ours) expect((yield* log.decision(txId))._tag).toBe("None")
    // The other deployments' stay, for their own recovery.
    for (const txId of theirs) expect((yield* log.decision(txId))._tag).toBe("Some")
    yield* log.purge(theirs)
  })

describe("another deployment sharing a PGlite log and the participant names", () => {
  let dbBank: PGlite
  let dbLog: PGlite
  beforeAll(async () => {
    ;[dbBank, dbLog] = await Promise.all([PgParticipant.openPglite(), PgParticipant.openPglite()])
  }, 120_000)
  afterAll(async () => {
    await Promise.all([dbBank?.close(), dbLog?.close()])
  })

  it.live("a page full of its decisions does not stop this deployment's purging", () =>
    Effect.gen(function* () {
      const log = yield* PgTransactionLog.makePglite(dbLog, { completion: "immediate" })
      const p = yield* PgParticipant.makePglite({ name: bankA, db: dbBank, markerGrace: Duration.zero })
      yield* starvation(log, p, undefined, ["other", "another"], (txId, seconds) =>
        dbLog.query(
          "update accord_decision set completed_at = now() - make_interval(secs => $2::float8) where tx_id = $1",
          [txId, seconds]
        )
      )
    }).pipe(Effect.scoped)
  )
})

describe.skipIf(server === undefined)("garbage collection", () => {
  const adminUrl = server?.adminUrl ?? ""
  let bank: postgres.Sql
  let logSql: postgres.Sql

  beforeAll(async () => {
    bank = postgres(await TestDatabase.createDatabase(adminUrl, DB_BANK), { max: 4, onnotice: () => {} })
    logSql = postgres(await TestDatabase.createDatabase(adminUrl, DB_LOG), { max: 4, onnotice: () => {} })
    await bank.unsafe("create table t (id int primary key, v int not null); insert into t values (1, 0)")
  }, 60_000)
  // Each test starts from no markers and no decisions (the migrations run at each test's make).
  beforeEach(async () => {
    await bank.unsafe(
      "do $$ begin if to_regclass('accord_branch') is not null then delete from accord_branch; delete from accord_branch_forgotten; end if; end $$"
    )
    await logSql.unsafe(
      "do $$ begin if to_regclass('accord_decision') is not null then delete from accord_decision; end if; end $$"
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

  const age = (txId: string, seconds: number) =>
    logSql`update accord_decision set completed_at = now() - make_interval(secs => ${seconds}) where tx_id = ${txId}`

  /** A branch prepared long before it commits: its marker's `created_at` is two days old. */
  const committedLongAfterBegin = (p: PgParticipant.PgParticipant) =>
    Effect.gen(function* () {
      const ctx = yield* ctxOf()
      expect((yield* p.prepare(ctx, bump))._tag).toBe("Prepared")
      expect(yield* p.commit(ctx)).toBe("Committed")
      yield* Effect.promise(
        () => bank`update accord_branch set created_at = now() - interval '2 days' where gid = ${ctx.gid}`
      )
      return ctx
    })

  describe("another deployment sharing the log and the participant names", () => {
    const scenario = (own: string | undefined, foreign: ReadonlyArray<string | undefined>) =>
      Effect.gen(function* () {
        const log = yield* PgTransactionLog.make({ sql: logSql, completion: "immediate" })
        const p = yield* PgParticipant.make({
          name: bankA,
          sql: bank,
          markerGrace: Duration.zero,
          ...(own === undefined ? {} : { namespace: own })
        })
        yield* starvation(log, p, own, foreign, age)
      }).pipe(Effect.scoped)

    it.live("a page full of its decisions does not stop this deployment's purging (it has a namespace)", () =>
      scenario(undefined, ["other"])
    )
    it.live(
      "a page full of its decisions does not stop this deployment's purging (this one has a namespace)",
      () => scenario("mine", [undefined])
    )
    it.live("nor do twelve deployments' decisions, each filling a page", () =>
      scenario(
        "mine",
        Array.from({ length: 12 }, (_, i) => `other${i}`)
      )
    )
  })

  describe("durations and limits that are not valid are refused", () => {
    for (const [label, after] of [
      ["NaN", Number.NaN],
      ["a negative number", -60_000],
      ["a negative string", "-5 minutes"],
      ["infinity", Duration.infinity],
      ["not a duration", "soon"]
    ] as const) {
      it.live(`gc.after ${label}: a ConfigurationError, and nothing purged`, () =>
        Effect.gen(function* () {
          const log = yield* PgTransactionLog.make({ sql: logSql, completion: "immediate" })
          const p = yield* PgParticipant.make({ name: bankA, sql: bank, markerGrace: Duration.zero })
          const txId = yield* completedDecision(log, undefined, 1, age)
          const outcome = yield* refusal(
            PgRecovery.run({
              participants: [p],
              log,
              options: { gc: { after: after as Duration.DurationInput } }
            }).pipe(Effect.catchAllDefect((defect) => Effect.fail({ _tag: `defect: ${String(defect)}` })))
          )
          expect(outcome).toBe("ConfigurationError")
          expect((yield* log.decision(txId))._tag).toBe("Some")
          yield* log.purge([txId])
        }).pipe(Effect.scoped)
      )
    }

    for (const limit of [0, -1, 1.5, Number.NaN]) {
      it.live(`gc.limit ${limit}: a ConfigurationError`, () =>
        Effect.gen(function* () {
          const log = yield* PgTransactionLog.make({ sql: logSql, completion: "immediate" })
          const p = yield* PgParticipant.make({ name: bankA, sql: bank })
          expect(yield* refusal(PgRecovery.run({ participants: [p], log, options: { gc: { limit } } }))).toBe(
            "ConfigurationError"
          )
        }).pipe(Effect.scoped)
      )
    }

    for (const [label, olderThan] of [
      ["NaN", Number.NaN],
      ["a negative number", -1],
      ["zero", 0],
      ["infinity", Duration.infinity]
    ] as const) {
      it.live(`gcMarkers(${label}): a ConfigurationError, and no marker deleted`, () =>
        Effect.gen(function* () {
          const p = yield* PgParticipant.make({ name: bankA, sql: bank, markerGrace: Duration.zero })
          const ctx = yield* committedLongAfterBegin(p)
          expect(yield* refusal(p.gcMarkers(olderThan))).toBe("ConfigurationError")
          expect(yield* markers()).toContain(ctx.gid)
          expect(yield* p.gcMarkers(Duration.days(1))).toBeGreaterThanOrEqual(1)
        })
      )
    }

    it.live("gcMarkers with an age shorter than the participant's markerGrace: a ConfigurationError", () =>
      Effect.gen(function* () {
        const p = yield* PgParticipant.make({ name: bankA, sql: bank, markerGrace: Duration.minutes(5) })
        const ctx = yield* committedLongAfterBegin(p)
        yield* Effect.promise(
          () =>
            bank`update accord_branch set created_at = now() - interval '2 minutes' where gid = ${ctx.gid}`
        )
        const refused = yield* Effect.either(p.gcMarkers(Duration.minutes(1)))
        expect(Either.isLeft(refused) && refused.left._tag).toBe("ConfigurationError")
        expect(
          Either.isLeft(refused) && (refused.left as TransactionError.ConfigurationError).participant
        ).toBe(bankA)
        expect(yield* markers()).toContain(ctx.gid)
        yield* Effect.promise(() => bank`delete from accord_branch where gid = ${ctx.gid}`)
      })
    )
  })

  describe("gcMarkers ages a forgotten marker by its forget stamp", () => {
    it.live(
      "keeps the marker of a long-prepared branch forgotten just now: a re-driven commit is Committed",
      () =>
        Effect.gen(function* () {
          const p = yield* PgParticipant.make({ name: bankA, sql: bank, markerGrace: Duration.minutes(5) })
          const ctx = yield* committedLongAfterBegin(p)
          // Recovery completed the transaction and forgot its markers: the grace runs from now.
          yield* p.forget([ctx])
          // The operator's daily backstop runs inside that grace.
          const collected = yield* p.gcMarkers(Duration.days(1))
          // A coordinator still retrying its COMMIT PREPARED finds the marker (before: the backstop
          // had deleted it by its two-day-old created_at, and this read HeuristicRollback).
          expect(yield* p.commit(ctx)).toBe("Committed")
          expect(collected).toBe(0)
          expect(yield* markers()).toContain(ctx.gid)
          // Forgotten longer ago than the backstop's age: it goes, and so does its stamp.
          yield* Effect.promise(
            () =>
              bank`update accord_branch_forgotten set forgotten_at = now() - interval '25 hours' where gid = ${ctx.gid}`
          )
          expect(yield* p.gcMarkers(Duration.days(1))).toBe(1)
          expect(yield* markers()).not.toContain(ctx.gid)
          const stamps = yield* Effect.promise(
            () => bank`select gid from accord_branch_forgotten where gid = ${ctx.gid}`
          )
          expect(stamps.length).toBe(0)
        })
    )

    it.live("still collects an old marker that no forget ever saw (the backstop)", () =>
      Effect.gen(function* () {
        const p = yield* PgParticipant.make({ name: bankA, sql: bank, markerGrace: Duration.minutes(5) })
        const ctx = yield* committedLongAfterBegin(p)
        expect(yield* p.gcMarkers(Duration.days(1))).toBe(1)
        expect(yield* markers()).not.toContain(ctx.gid)
      })
    )
  })

  it.live(
    "gc.after shorter than markerGrace purges the decision but keeps its markers for markerGrace after the forget",
    () =>
      Effect.gen(function* () {
        // Pins why gc.after needs no bound from markerGrace: the grace runs from the forget that gc
        // makes, whatever gc.after is.
        const log = yield* PgTransactionLog.make({ sql: logSql, completion: "immediate" })
        const p = yield* PgParticipant.make({ name: bankA, sql: bank, markerGrace: Duration.minutes(5) })
        const ctx = yield* committedLongAfterBegin(p)
        yield* log.decide({
          txId: ctx.txId,
          decision: "commit",
          branches: [{ branch: ctx.branch, gid: ctx.gid }],
          decidedAt: Date.now()
        })
        yield* log.complete(ctx.txId)
        const report = yield* PgRecovery.run({
          participants: [p],
          log,
          options: { orphanAfter: Duration.hours(1), gc: { after: Duration.zero } }
        })
        expect(report.decisionsPurged).toBeGreaterThanOrEqual(1)
        expect((yield* log.decision(ctx.txId))._tag).toBe("None")
        expect(yield* markers()).toContain(ctx.gid)
        expect(yield* p.commit(ctx)).toBe("Committed")
      }).pipe(Effect.scoped)
  )
})
