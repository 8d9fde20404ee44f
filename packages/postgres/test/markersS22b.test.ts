/**
 * `accord_branch_seen` and `accord_branch_grace` against real PostgreSQL, where a review found:
 * - a participant made with a `markerGrace` of `Duration.infinity` (or 10,000 years) declared it, and
 *   every other participant's `gcMarkers` of the namespace then failed with 22008 (`now()` minus it
 *   is out of range). `make` now refuses a grace that is not finite, negative or past 100 years,
 *   and `gcMarkers` reads a declared grace as at most 100 years;
 * - a role that may not create tables failed `make` on a database the previous release had
 *   migrated (the DDL was always sent, and now had tables to create). No DDL is sent when every
 *   table is there, and a 42501 with the marker table there keeps the older rules, with a warning
 *   naming the tables missing;
 * - the warning said a role needed INSERT and UPDATE on `accord_branch_grace`; its upsert needs
 *   SELECT too. The grants docs/postgres.md lists are enough, checked with a role holding only them;
 * - two `gcMarkers` at once, or a `gcMarkers` beside a `forget`, deadlocked (40P01): they locked rows
 *   in different orders. They lock in one order where they can, and retry a deadlock.
 *
 * Databases `s22_mk2_*` and role `s22_mk2_app`, dropped at the end; nothing is left prepared.
 */
import { TransactionId } from "@accord/core"
import { afterAll, beforeAll, beforeEach, describe, expect, it } from "@effect/vitest"
import { Cause, Duration, Effect, Exit, Fiber, Logger } from "effect"
import postgres from "postgres"
import * as Migrations from "../src/Migrations.js"
import type { BranchSession } from "../src/PgParticipant.js"
import * as PgParticipant from "../src/PgParticipant.js"
import * as TestDatabase from "../src/TestDatabase.js"

const server = await TestDatabase.server()
const DB = "s22_mk2_main"
const DB_OLD = "s22_mk2_old"
const DB_FRESH = "s22_mk2_fresh"
const DB_GRANTS = "s22_mk2_grants"
const ROLE = "s22_mk2_app"

const ctxOf = (name: string) =>
  Effect.map(TransactionId.make, (txId) => ({
    txId,
    branch: name as TransactionId.BranchName,
    gid: TransactionId.gid(txId, name as TransactionId.BranchName)
  }))
const touch = (s: BranchSession) => s.query("select pg_current_xact_id()")

/** The warnings logged where `collect` is provided. */
const warningsLogged = () => {
  const warnings: Array<string> = []
  const collect = Logger.replace(
    Logger.defaultLogger,
    Logger.make(({ logLevel, message }) => {
      if (logLevel._tag === "Warning")
        warnings.push(Array.isArray(message) ? message.join(" ") : String(message))
    })
  )
  return { warnings, collect }
}

/** The tables and indexes the release before `accord_branch_seen` created. */
const PREVIOUS_RELEASE_DDL = `create table accord_branch (gid text primary key, tx_id text not null, branch text not null, created_at timestamptz not null default now());
  create index accord_branch_created_at on accord_branch (created_at);
  create table accord_branch_forgotten (gid text primary key, branch text not null, forgotten_at timestamptz not null default now());
  create index accord_branch_forgotten_at on accord_branch_forgotten (forgotten_at);`

/** What docs/postgres.md says a participant's role needs, beside USAGE on the schema. */
const DOCUMENTED_GRANTS = `grant select, insert, delete on accord_branch to ${ROLE};
  grant select, insert, delete on accord_branch_forgotten to ${ROLE};
  grant select, insert, update, delete on accord_branch_seen to ${ROLE};
  grant select, insert, update on accord_branch_grace to ${ROLE};`

/** `url` as the restricted role. */
const asRole = (url: string) => {
  const u = new URL(url)
  u.username = ROLE
  return postgres(u.toString(), { max: 2, onnotice: () => {} })
}

/** The failure's pretty form, or undefined for a success (what a failed expectation prints). */
const prettyOf = <A, E>(exit: Exit.Exit<A, E>): string | undefined =>
  Exit.isFailure(exit) ? Cause.pretty(exit.cause) : undefined

const failureOf = <A, E>(exit: Exit.Exit<A, E>): E | undefined =>
  Exit.isFailure(exit) && exit.cause._tag === "Fail" ? exit.cause.error : undefined

describe.skipIf(server === undefined)("accord_branch_seen and accord_branch_grace, reviewed", () => {
  const adminUrl = server?.adminUrl ?? ""
  let url = ""
  let bank: postgres.Sql

  beforeAll(async () => {
    const admin = postgres(adminUrl, { max: 1, onnotice: () => {} })
    await admin.unsafe(`drop role if exists ${ROLE}`)
    await admin.unsafe(`create role ${ROLE} login`)
    await admin.end({ timeout: 5 })
    url = await TestDatabase.createDatabase(adminUrl, DB)
    bank = postgres(url, { max: 6, onnotice: () => {} })
    await Effect.runPromise(Migrations.participant(bank))
  }, 60_000)
  beforeEach(async () => {
    await bank.unsafe(
      "delete from accord_branch; delete from accord_branch_forgotten; delete from accord_branch_seen; delete from accord_branch_grace"
    )
  })
  afterAll(async () => {
    await bank?.end({ timeout: 5 })
    const left = await TestDatabase.preparedOnServer(adminUrl)
    await TestDatabase.rollbackPrepared(adminUrl, DB)
    for (const db of [DB, DB_OLD, DB_FRESH, DB_GRANTS]) await TestDatabase.dropDatabase(adminUrl, db)
    const admin = postgres(adminUrl, { max: 1, onnotice: () => {} })
    await admin.unsafe(`drop role if exists ${ROLE}`)
    await admin.end({ timeout: 5 })
    expect(left.filter((p) => p.database.startsWith("s22_mk2_"))).toEqual([])
  }, 60_000)

  describe("markerGrace bounds", () => {
    it.live("make refuses a markerGrace that is not finite, negative, or past 100 years", () =>
      Effect.gen(function* () {
        for (const markerGrace of [
          Duration.infinity,
          Duration.days(3_652_500),
          -1,
          Number.NaN,
          "-5 minutes" as Duration.DurationInput
        ]) {
          const made = yield* Effect.exit(PgParticipant.make({ name: "keeper", sql: bank, markerGrace }))
          expect(failureOf(made)).toMatchObject({ _tag: "ConfigurationError", participant: "keeper" })
          expect(String(failureOf(made)?.reason)).toContain("markerGrace")
        }
        // Nothing declared by the refused ones; 100 years (and 0) still accepted.
        expect(yield* Effect.promise(() => bank`select branch from accord_branch_grace`)).toEqual([])
        yield* PgParticipant.make({ name: "keeper", sql: bank, markerGrace: Duration.days(36_525) })
        yield* PgParticipant.make({ name: "zero", sql: bank, markerGrace: 0 })
        const rows = yield* Effect.promise(
          () =>
            bank<
              { branch: string; grace: number }[]
            >`select branch, grace from accord_branch_grace order by branch`
        )
        expect(rows.map((r) => [r.branch, Number(r.grace)])).toEqual([
          ["keeper", 36_525 * 86_400],
          ["zero", 0]
        ])
      }).pipe(Effect.scoped)
    )

    it.live("a declared grace past the bound (by hand, or an older release) breaks no one's gcMarkers", () =>
      Effect.gen(function* () {
        yield* PgParticipant.make({ name: "keeper", sql: bank, markerGrace: "1 second" })
        const other = yield* PgParticipant.make({ name: "other", sql: bank, markerGrace: "1 second" })
        for (const grace of ["Infinity", "1e12", "NaN"]) {
          yield* Effect.promise(
            () => bank`update accord_branch_grace set grace = ${grace}::float8 where branch = 'keeper'`
          )
          yield* Effect.promise(
            () => bank`insert into accord_branch (gid, tx_id, branch, created_at) values
              ('accord_01OLDK_keeper', '01OLDK', 'keeper', now() - interval '2 days'),
              ('accord_01OLDO_other', '01OLDO', 'other', now() - interval '2 days')
              on conflict do nothing`
          )
          // The other's marker goes; the keeper's stays (its grace read as 100 years).
          expect(yield* other.gcMarkers("1 day")).toBe(1)
          const left = yield* Effect.promise(() => bank<{ gid: string }[]>`select gid from accord_branch`)
          expect(left.map((r) => r.gid)).toEqual(["accord_01OLDK_keeper"])
        }
      }).pipe(Effect.scoped)
    )
  })

  describe("a role that may not create tables", () => {
    it.live(
      "makes on a database the previous release migrated, warned of the tables missing, with the older rules",
      () =>
        Effect.gen(function* () {
          const oldUrl = yield* Effect.promise(() => TestDatabase.createDatabase(adminUrl, DB_OLD))
          const admin = postgres(oldUrl, { max: 1, onnotice: () => {} })
          yield* Effect.promise(async () => {
            await admin.unsafe(PREVIOUS_RELEASE_DDL)
            await admin.unsafe(`revoke create on schema public from public; grant usage on schema public to ${ROLE};
              grant select, insert, delete on accord_branch, accord_branch_forgotten to ${ROLE}`)
            await admin.end({ timeout: 5 })
          })
          const app = asRole(oldUrl)
          yield* Effect.addFinalizer(() => Effect.promise(() => app.end({ timeout: 5 })))
          const { warnings, collect } = warningsLogged()
          const p = yield* PgParticipant.make({ name: "bank-a", sql: app }).pipe(Effect.provide(collect))
          expect(warnings).toHaveLength(1)
          expect(warnings[0]).toContain(
            "accord_branch_seen, accord_branch_grace are missing beside accord_branch"
          )
          expect(warnings[0]).toContain("42501")
          expect(warnings[0]).not.toContain("accord_branch_forgotten,")
          // The older rules: a marker no forget saw aged from its creation, without the new tables.
          const ctx = yield* ctxOf("bank-a")
          expect((yield* p.prepare(ctx, touch))._tag).toBe("Prepared")
          expect(yield* p.commit(ctx)).toBe("Committed")
          yield* Effect.promise(
            () => app`insert into accord_branch (gid, tx_id, branch, created_at)
              values ('accord_01OLD_bank-a', '01OLD', 'bank-a', now() - interval '2 days')`
          )
          expect(yield* p.gcMarkers("1 day")).toBe(1)
          const tables = yield* Effect.promise(
            () => app`select to_regclass('accord_branch_seen') is null as none`
          )
          expect(tables[0]?.none).toBe(true)
        }).pipe(Effect.scoped),
      60_000
    )

    it.live("make sends no DDL when every table is there (it waited for the migration's lock)", () =>
      Effect.gen(function* () {
        // Another process holding the migration's advisory lock: the DDL would wait for it.
        const holder = yield* Effect.promise(() => bank.reserve())
        yield* Effect.promise(() => holder.unsafe("select pg_advisory_lock(1633907300)"))
        const made = yield* Effect.exit(
          PgParticipant.make({ name: "bank-a", sql: bank, verifyTimeout: "3 seconds" })
        ).pipe(
          Effect.ensuring(
            Effect.promise(async () => {
              await holder.unsafe("select pg_advisory_unlock(1633907300)")
              holder.release()
            })
          )
        )
        expect(prettyOf(made)).toBeUndefined()
        expect(Exit.isSuccess(made)).toBe(true)
      }).pipe(Effect.scoped)
    )

    it.live("on a database without the marker table: a ConfigurationError naming it", () =>
      Effect.gen(function* () {
        const freshUrl = yield* Effect.promise(() => TestDatabase.createDatabase(adminUrl, DB_FRESH))
        const admin = postgres(freshUrl, { max: 1, onnotice: () => {} })
        yield* Effect.promise(async () => {
          await admin.unsafe(
            `revoke create on schema public from public; grant usage on schema public to ${ROLE}`
          )
          await admin.end({ timeout: 5 })
        })
        const app = asRole(freshUrl)
        yield* Effect.addFinalizer(() => Effect.promise(() => app.end({ timeout: 5 })))
        const made = yield* Effect.exit(PgParticipant.make({ name: "bank-a", sql: app }))
        const error = failureOf(made)
        expect(error).toMatchObject({ _tag: "ConfigurationError" })
        expect(String(error?.reason)).toMatch(/^cannot create Accord's marker tables accord_branch, /)
        expect(String(error?.reason)).toContain("42501")
      }).pipe(Effect.scoped)
    )
  })

  describe("grants", () => {
    it.live(
      "a role with the documented grants makes, prepares, commits, forgets and collects, unwarned; without SELECT on accord_branch_grace it is told to grant it",
      () =>
        Effect.gen(function* () {
          const grantsUrl = yield* Effect.promise(() => TestDatabase.createDatabase(adminUrl, DB_GRANTS))
          const admin = postgres(grantsUrl, { max: 1, onnotice: () => {} })
          yield* Effect.addFinalizer(() => Effect.promise(() => admin.end({ timeout: 5 })))
          yield* Migrations.participant(admin)
          yield* Effect.promise(() =>
            admin.unsafe(`revoke create on schema public from public; grant usage on schema public to ${ROLE};
              ${DOCUMENTED_GRANTS}`)
          )
          const app = asRole(grantsUrl)
          yield* Effect.addFinalizer(() => Effect.promise(() => app.end({ timeout: 5 })))
          const { warnings, collect } = warningsLogged()
          const p = yield* PgParticipant.make({ name: "bank-a", sql: app, markerGrace: "1 second" }).pipe(
            Effect.provide(collect)
          )
          expect(warnings).toEqual([])
          const ctx = yield* ctxOf("bank-a")
          const unseen = yield* ctxOf("bank-a")
          expect((yield* p.prepare(ctx, touch))._tag).toBe("Prepared")
          try {
            expect(yield* p.gcMarkers("1 second")).toBe(0) // records the sighting (insert)
            expect(yield* p.commit(ctx)).toBe("Committed")
            expect((yield* p.prepare(unseen, touch))._tag).toBe("Prepared")
            expect(yield* p.commit(unseen)).toBe("Committed")
            expect(yield* p.gcMarkers("1 second")).toBe(0) // moves it (update)
            yield* p.forget([unseen]) // stamps it (insert)
            yield* Effect.sleep(Duration.millis(1_300))
            // Its stamp past the grace: marker and stamp deleted (forgetting a gid with no marker).
            yield* p.forget([yield* ctxOf("bank-a")])
            expect(yield* p.gcMarkers("1 second")).toBe(1) // ctx's marker and sighting (delete)
            const left = yield* Effect.promise(
              () => admin`select (select count(*)::int from accord_branch) as m,
                (select count(*)::int from accord_branch_forgotten) as f,
                (select count(*)::int from accord_branch_seen) as s`
            )
            expect(left[0]).toEqual({ m: 0, f: 0, s: 0 })
          } finally {
            yield* Effect.promise(() => TestDatabase.rollbackPrepared(adminUrl, DB_GRANTS))
          }
          // Without SELECT, the upsert declaring the grace is refused; the warning names SELECT.
          yield* Effect.promise(() => admin.unsafe(`revoke select on accord_branch_grace from ${ROLE}`))
          const second = warningsLogged()
          yield* PgParticipant.make({ name: "bank-a", sql: app, markerGrace: "1 second" }).pipe(
            Effect.provide(second.collect)
          )
          expect(second.warnings).toHaveLength(1)
          expect(second.warnings[0]).toContain("permission denied for table accord_branch_grace")
          expect(second.warnings[0]).toContain("GRANT SELECT, INSERT, UPDATE ON accord_branch_grace")
        }).pipe(Effect.scoped),
      60_000
    )
  })

  describe("deadlocks", () => {
    /** Waits until `n` sessions of the database wait for a lock, running a statement like `like`. */
    const waiting = (n: number, like = "%") =>
      Effect.promise(async () => {
        for (let i = 0; i < 200; i++) {
          const r = await bank`select count(*)::int as n from pg_stat_activity where datname = ${DB}
            and wait_event_type = 'Lock' and query like ${like}`
          if ((r[0]?.n ?? 0) >= n) return true
          await new Promise((res) => setTimeout(res, 25))
        }
        return false
      })

    it.live(
      "two gcMarkers at once, one moving a gid the other records: both succeed",
      () =>
        Effect.gen(function* () {
          const p = yield* PgParticipant.make({ name: "bank-a", sql: bank, markerGrace: "1 second" })
          const ctxs = [yield* ctxOf("bank-a"), yield* ctxOf("bank-a"), yield* ctxOf("bank-a")]
          for (const c of ctxs) expect((yield* p.prepare(c, touch))._tag).toBe("Prepared")
          try {
            expect(yield* p.gcMarkers("1 day")).toBe(0)
            const order = (yield* Effect.promise(
              () =>
                bank<
                  { gid: string }[]
                >`select gid from pg_prepared_xacts where gid = any(${ctxs.map((c) => c.gid)})`
            )).map((r) => r.gid)
            const byGid = (gid: string | undefined) => ctxs.find((c) => c.gid === gid) ?? ctxs[0]!
            const [h, g, r] = order
            // B moves r and waits on h's sighting; A then moves g, and both need each other's rows
            // in the two orders the old statements locked them in.
            expect(yield* p.commit(byGid(r))).toBe("Committed")
            const x = yield* Effect.promise(() => bank.reserve())
            yield* Effect.promise(() => x.unsafe("begin"))
            yield* Effect.promise(() => x`select 1 from accord_branch_seen where gid = ${h ?? ""} for update`)
            const b = yield* Effect.fork(Effect.exit(p.gcMarkers("1 day")))
            expect(yield* waiting(1, "with prepared_now%")).toBe(true)
            expect(yield* p.commit(byGid(g))).toBe("Committed")
            const a = yield* Effect.fork(Effect.exit(p.gcMarkers("1 day")))
            expect(yield* waiting(2, "with prepared_now%")).toBe(true)
            yield* Effect.promise(() => x.unsafe("commit"))
            x.release()
            const ea = yield* Fiber.join(a)
            const eb = yield* Fiber.join(b)
            expect(prettyOf(ea)).toBeUndefined()
            expect(prettyOf(eb)).toBeUndefined()
            // h still prepared, r seen gone (g's row depends on which call wrote it last).
            const seen = yield* Effect.promise(
              () => bank<{ gid: string; prepared: boolean }[]>`select gid, prepared from accord_branch_seen
                where gid = any(${[h ?? "", r ?? ""]}) order by gid = ${h ?? ""} desc`
            )
            expect(seen).toEqual([
              { gid: h, prepared: true },
              { gid: r, prepared: false }
            ])
          } finally {
            yield* Effect.promise(() => TestDatabase.rollbackPrepared(adminUrl, DB))
          }
        }).pipe(Effect.scoped),
      60_000
    )

    it.live(
      "a deadlock with another transaction is retried, by gcMarkers and by forget",
      () =>
        Effect.gen(function* () {
          const p = yield* PgParticipant.make({ name: "bank-a", sql: bank, markerGrace: "1 second" })
          /**
           * Markers A then B (heap and `created_at` order), both due; another transaction locks B,
           * `call` deletes A and waits for B, then the other transaction asks for A: PostgreSQL ends
           * the first waiter, the call, with 40P01. Sent again, it waits for the other transaction
           * and deletes both.
           */
          const deadlocked = <A, E>(call: Effect.Effect<A, E>) =>
            Effect.gen(function* () {
              yield* Effect.promise(
                () => bank`insert into accord_branch (gid, tx_id, branch, created_at) values
                  ('accord_01A_bank-a', '01A', 'bank-a', now() - interval '3 days')`
              )
              yield* Effect.promise(
                () => bank`insert into accord_branch (gid, tx_id, branch, created_at) values
                  ('accord_01B_bank-a', '01B', 'bank-a', now() - interval '2 days')`
              )
              yield* Effect.promise(
                () => bank`insert into accord_branch_forgotten (gid, branch, forgotten_at) values
                  ('accord_01A_bank-a', 'bank-a', now() - interval '2 days'),
                  ('accord_01B_bank-a', 'bank-a', now() - interval '2 days')`
              )
              const x = yield* Effect.promise(() => bank.reserve())
              yield* Effect.promise(() => x.unsafe("begin"))
              yield* Effect.promise(
                () => x`select 1 from accord_branch where gid = 'accord_01B_bank-a' for update`
              )
              const fiber = yield* Effect.fork(Effect.exit(call))
              expect(yield* waiting(1)).toBe(true)
              // Granted once the call is ended by the deadlock detector.
              yield* Effect.promise(
                () => x`select 1 from accord_branch where gid = 'accord_01A_bank-a' for update`
              )
              yield* Effect.promise(() => x.unsafe("commit"))
              x.release()
              const exit = yield* Fiber.join(fiber)
              expect(prettyOf(exit)).toBeUndefined()
              const left = yield* Effect.promise(
                () => bank`select (select count(*)::int from accord_branch) as m,
                  (select count(*)::int from accord_branch_forgotten) as f`
              )
              expect(left[0]).toEqual({ m: 0, f: 0 })
              return exit
            })
          const gc = yield* deadlocked(p.gcMarkers("1 day"))
          expect(Exit.isSuccess(gc) && gc.value).toBe(2)
          yield* deadlocked(p.forget([yield* ctxOf("bank-a")]))
        }).pipe(Effect.scoped),
      60_000
    )

    it.live(
      "gcMarkers beside a forget deleting the same stamps: both succeed",
      () =>
        Effect.gen(function* () {
          const p = yield* PgParticipant.make({ name: "bank-a", sql: bank, markerGrace: "1 second" })
          yield* Effect.promise(
            () => bank`insert into accord_branch (gid, tx_id, branch, created_at) values
              ('accord_01G_bank-a', '01G', 'bank-a', now() - interval '3 days'),
              ('accord_01H_bank-a', '01H', 'bank-a', now() - interval '2 days')`
          )
          yield* Effect.promise(
            () => bank`insert into accord_branch_forgotten (gid, branch, forgotten_at) values
              ('accord_01G_bank-a', 'bank-a', now() - interval '2 days'),
              ('accord_01H_bank-a', 'bank-a', now() - interval '2 days')`
          )
          const x = yield* Effect.promise(() => bank.reserve())
          yield* Effect.promise(() => x.unsafe("begin"))
          yield* Effect.promise(
            () => x`select 1 from accord_branch where gid = 'accord_01H_bank-a' for update`
          )
          const g = yield* Effect.fork(Effect.exit(p.gcMarkers("1 day")))
          expect(yield* waiting(1)).toBe(true)
          const other = yield* ctxOf("bank-a")
          const f = yield* Effect.fork(Effect.exit(p.forget([other])))
          expect(yield* waiting(2)).toBe(true)
          yield* Effect.promise(() => x.unsafe("commit"))
          x.release()
          const eg = yield* Fiber.join(g)
          const ef = yield* Fiber.join(f)
          expect(prettyOf(eg)).toBeUndefined()
          expect(prettyOf(ef)).toBeUndefined()
          const left = yield* Effect.promise(
            () => bank`select (select count(*)::int from accord_branch) as m,
              (select count(*)::int from accord_branch_forgotten) as f`
          )
          expect(left[0]).toEqual({ m: 0, f: 0 })
        }).pipe(Effect.scoped),
      60_000
    )
  })
})
