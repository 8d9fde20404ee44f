/**
 * `make` for a role that may not create tables (42501), on databases migrated by older releases.
 * fa0773f let `PgParticipant.make` go on with the older rules when the migration was refused and
 * the marker table was there; it did so even without `accord_branch_forgotten`, where `forget`
 * deletes a long-prepared branch's marker at once (a false HeuristicRollback): that stays a
 * `ConfigurationError`, as before. And a 3PC participant on a database the previous release
 * migrated (state table there, only `accord_branch_seen` / `accord_branch_grace` missing) sent its
 * state table's DDL, which PostgreSQL refuses for lack of CREATE before it reads `if not exists`:
 * its `make` failed, where before this stop it sent no DDL there.
 */
import { afterAll, describe, expect, it } from "@effect/vitest"
import { Cause, Duration, Effect, Exit } from "effect"
import postgres from "postgres"
import * as PgParticipant from "../src/PgParticipant.js"
import * as PgThreePhaseParticipant from "../src/PgThreePhaseParticipant.js"
import * as TestDatabase from "../src/TestDatabase.js"

const server = await TestDatabase.server()
const DB_MARKERS_ONLY = "s22_mk3_markers_only"
const DB_3PC = "s22_mk3_3pc"
const DB_GC = "s22_mk3_gc"
const ROLE = "s22_mk3_app"

const MARKERS = `create table accord_branch (gid text primary key, tx_id text not null, branch text not null,
    created_at timestamptz not null default now());
  create index accord_branch_created_at on accord_branch (created_at);`
const FORGOTTEN = `create table accord_branch_forgotten (gid text primary key, branch text not null,
    forgotten_at timestamptz not null default now());
  create index accord_branch_forgotten_at on accord_branch_forgotten (forgotten_at);`

describe.skipIf(server === undefined)("make for a role that may not create tables; gcMarkers' bound", () => {
  const adminUrl = server?.adminUrl ?? ""
  const pools: Array<postgres.Sql> = []

  /** A database with `ddl`, and a pool on it as a role with DML grants only. */
  const restricted = (name: string, ddl: string, grants: string) =>
    Effect.promise(async () => {
      const url = await TestDatabase.createDatabase(adminUrl, name)
      const admin = postgres(url, { max: 1, onnotice: () => {} })
      pools.push(admin)
      await admin.unsafe(`do $$ begin
          if not exists (select from pg_roles where rolname = '${ROLE}') then create role ${ROLE} login; end if;
        end $$`)
      await admin.unsafe(`${ddl}
        revoke create on schema public from public; grant usage on schema public to ${ROLE}; ${grants}`)
      const u = new URL(url)
      u.username = ROLE
      const app = postgres(u.toString(), { max: 2, onnotice: () => {} })
      pools.push(app)
      return app
    })

  afterAll(async () => {
    for (const p of pools) await p.end({ timeout: 5 })
    for (const db of [DB_MARKERS_ONLY, DB_3PC, DB_GC]) await TestDatabase.dropDatabase(adminUrl, db)
    const admin = postgres(adminUrl, { max: 1, onnotice: () => {} })
    await admin.unsafe(`drop role if exists ${ROLE}`)
    await admin.end({ timeout: 5 })
  }, 60_000)

  it.live(
    "without accord_branch_forgotten: a ConfigurationError naming the missing tables, no participant",
    () =>
      Effect.gen(function* () {
        const app = yield* restricted(
          DB_MARKERS_ONLY,
          MARKERS,
          `grant select, insert, delete on accord_branch to ${ROLE};`
        )
        const made = yield* Effect.exit(PgParticipant.make({ name: "bank-a", sql: app }))
        expect(Exit.isFailure(made)).toBe(true)
        const pretty = Exit.isFailure(made) ? Cause.pretty(made.cause) : ""
        expect(pretty).toContain("ConfigurationError")
        expect(pretty).toContain("accord_branch_forgotten")
      }).pipe(Effect.scoped)
  )

  it.live("a 3PC participant on the previous release's tables (state table there) is made", () =>
    Effect.gen(function* () {
      const app = yield* restricted(
        DB_3PC,
        `${MARKERS} ${FORGOTTEN} ${PgThreePhaseParticipant.ddl}`,
        `grant select, insert, delete on accord_branch, accord_branch_forgotten to ${ROLE};
         grant select, insert, update, delete on accord_3pc_state to ${ROLE};`
      )
      const made = yield* Effect.exit(PgThreePhaseParticipant.make({ name: "bank-b", sql: app }))
      expect(Exit.isFailure(made) ? Cause.pretty(made.cause) : "made").toBe("made")
    }).pipe(Effect.scoped)
  )

  it.live("gcMarkers refuses an age past 100 years before sending anything (it failed with 22008)", () =>
    Effect.gen(function* () {
      const sql = postgres(yield* Effect.promise(() => TestDatabase.createDatabase(adminUrl, DB_GC)), {
        max: 2,
        onnotice: () => {}
      })
      pools.push(sql)
      const p = yield* PgParticipant.make({ name: "bank-a", sql })
      const refused = yield* Effect.flip(p.gcMarkers(Duration.days(3_000_000)))
      expect(refused._tag).toBe("ConfigurationError")
      expect(yield* p.gcMarkers(Duration.days(36_525))).toBe(0)
    }).pipe(Effect.scoped)
  )
})
