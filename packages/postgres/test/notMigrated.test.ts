/**
 * Accord's tables missing where a participant or barrier is used without its migration: refused up
 * front with the fix, never named bare. A bare name follows whatever `search_path` a work sets, so a
 * participant made with `migrate: false` before its table existed wrote its markers into a tenant
 * schema's own copy of the table once one existed, and voted No on every branch until then.
 */
import { TransactionError } from "@accord/core"
import { afterAll, beforeAll, describe, expect, it } from "@effect/vitest"
import { Effect } from "effect"
import postgres from "postgres"
import * as Barrier from "../src/Barrier.js"
import * as Migrations from "../src/Migrations.js"
import * as PgParticipant from "../src/PgParticipant.js"
import * as TestDatabase from "../src/TestDatabase.js"
import { endAndDrop } from "./support/pg2pc.js"

const server = await TestDatabase.server()
const DB = "accord_t_not_migrated"

describe.skipIf(server === undefined)("Accord's tables not migrated", () => {
  const adminUrl = server?.adminUrl ?? ""
  let sql: postgres.Sql

  beforeAll(async () => {
    sql = postgres(await TestDatabase.createDatabase(adminUrl, DB), { max: 4, onnotice: () => {} })
    // A tenant schema with its own copy of the barrier table, and a stock row the step would take.
    await sql
      .unsafe(`create schema tenant;
create table tenant.stock (sku text primary key, qty int not null);
insert into tenant.stock values ('a', 5);
create table tenant.accord_saga_barrier (gid text, branch text, op text, result jsonb,
  created_at timestamptz default now(), primary key (gid, branch, op));`)
      .simple()
  }, 60_000)

  afterAll(() => endAndDrop(adminUrl, [sql], [DB], [DB]), 60_000)

  it.live(
    "PgParticipant.make with migrate: false refuses a database without accord_branch, with the fix",
    () =>
      Effect.gen(function* () {
        const error = yield* Effect.flip(PgParticipant.make({ name: "bank-a", sql, migrate: false }))
        expect(error).toBeInstanceOf(TransactionError.ConfigurationError)
        expect(error).toMatchObject({
          reason: "the marker table accord_branch does not exist and migrate is false",
          fix: expect.stringContaining("Migrations.participant(sql)")
        })
        // Migrated by hand, the same options make a participant whose markers name public's table.
        yield* Migrations.participant(sql)
        const participant = yield* PgParticipant.make({ name: "bank-a", sql, migrate: false })
        expect(participant.name).toBe("bank-a")
      })
  )

  it.live("a barrier step on a connection without accord_saga_barrier is refused before its work runs", () =>
    Effect.gen(function* () {
      let ran = 0
      const take = async (s: Barrier.BarrierSession) => {
        ran++
        await s.query("set local search_path = tenant")
        return s.query("update tenant.stock set qty = qty - 1 where sku = 'a'")
      }
      const target = { gid: `saga-nm-${Date.now()}`, branch: "reserve", op: "action" } as const
      const refused = yield* Effect.flip(Barrier.run(sql, target, take))
      expect(refused._tag).toBe("BarrierWorkError")
      expect(refused.message).toContain("Barrier.migrate")
      expect(refused).toMatchObject({ sqlState: "42P01", connectionLost: false })
      expect(ran).toBe(0)
      const tenantRows = yield* Effect.promise(() =>
        sql.unsafe<{ n: number }[]>("select count(*)::int as n from tenant.accord_saga_barrier")
      )
      expect(tenantRows[0]!.n).toBe(0)
      // Migrated, the next step finds the table (looked up again) and keeps its row in public's.
      yield* Effect.promise(() => Barrier.migrate(sql))
      const applied = yield* Barrier.run(sql, target, take)
      expect(applied._tag).toBe("Applied")
      const rows = yield* Effect.promise(() =>
        sql.unsafe<{ pub: number; ten: number }[]>(
          "select (select count(*)::int from public.accord_saga_barrier) as pub, (select count(*)::int from tenant.accord_saga_barrier) as ten"
        )
      )
      expect(rows[0]).toEqual({ pub: 1, ten: 0 })
    })
  )
})
