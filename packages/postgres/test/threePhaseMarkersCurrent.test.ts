/**
 * A 3PC participant on a database migrated by the release before `accord_branch_seen` and
 * `accord_branch_grace` (the marker table, `accord_branch_forgotten` and the 3PC state table)
 * upgrades it as a 2PC participant does, unless made with `migrate: false`. Before, finding the
 * marker, forgotten and state tables it told its 2PC participant `migrate: false` whatever it was
 * given: the new tables were never created and `gcMarkers` kept its old rules (a marker no forget
 * saw aged from its branch's BEGIN; another participant's longer `markerGrace` ignored), with a
 * warning, on every start.
 */
import { afterAll, beforeAll, describe, expect, it } from "@effect/vitest"
import { Effect } from "effect"
import postgres from "postgres"
import * as PgThreePhaseParticipant from "../src/PgThreePhaseParticipant.js"
import * as TestDatabase from "../src/TestDatabase.js"
import { endAndDrop } from "./support/pg2pc.js"

const server = await TestDatabase.server()
const DB_UPGRADED = "s22_3pc_current_upgraded"
const DB_KEPT = "s22_3pc_current_kept"
const DBS = [DB_UPGRADED, DB_KEPT] as const

/** Accord's participant tables as the previous release created them. */
const PREVIOUS_RELEASE_DDL = `create table accord_branch (gid text primary key, tx_id text not null,
    branch text not null, created_at timestamptz not null default now());
  create index accord_branch_created_at on accord_branch (created_at);
  create table accord_branch_forgotten (gid text primary key, branch text not null,
    forgotten_at timestamptz not null default now());
  create index accord_branch_forgotten_at on accord_branch_forgotten (forgotten_at);
  ${PgThreePhaseParticipant.ddl}`

describe.skipIf(server === undefined)(
  "a 3PC participant on tables migrated before gcMarkers' sightings",
  () => {
    const adminUrl = server?.adminUrl ?? ""
    const pools: Array<postgres.Sql> = []

    beforeAll(async () => {
      for (const name of DBS) {
        const sql = postgres(await TestDatabase.createDatabase(adminUrl, name), {
          max: 4,
          onnotice: () => {}
        })
        await sql.unsafe(PREVIOUS_RELEASE_DDL)
        pools.push(sql)
      }
    }, 60_000)

    afterAll(() => endAndDrop(adminUrl, pools, DBS, DBS), 60_000)

    const currentTables = (sql: postgres.Sql) =>
      Effect.promise(async () => {
        const [row] = await sql<{ seen: boolean; grace: boolean }[]>`select
        to_regclass('accord_branch_seen') is not null as seen,
        to_regclass('accord_branch_grace') is not null as grace`
        return row!
      })

    it.live("is upgraded: the sightings and graces tables are created and its grace declared", () =>
      Effect.gen(function* () {
        const sql = pools[0]!
        yield* PgThreePhaseParticipant.make({ name: "bank-a", sql })
        expect(yield* currentTables(sql)).toEqual({ seen: true, grace: true })
        const declared = yield* Effect.promise(() => sql`select branch from accord_branch_grace`)
        expect(declared.map((r) => r.branch)).toEqual(["bank-a"])
      })
    )

    it.live("made with migrate: false, leaves the tables as they are", () =>
      Effect.gen(function* () {
        const sql = pools[1]!
        yield* PgThreePhaseParticipant.make({ name: "bank-a", sql, migrate: false })
        expect(yield* currentTables(sql)).toEqual({ seen: false, grace: false })
      })
    )
  }
)
