/**
 * `gcMarkers` is the operator's backstop for old markers; two Accord deployments (namespaces) may
 * share a participant database, and each must collect only its own markers: another namespace's
 * marker is how that deployment tells a committed branch from one rolled back by hand.
 */
import { afterAll, beforeAll, describe, expect, it } from "@effect/vitest"
import { Duration, Effect } from "effect"
import postgres from "postgres"
import * as PgParticipant from "../src/PgParticipant.js"
import * as TestDatabase from "../src/TestDatabase.js"

const server = await TestDatabase.server()
const DB = "accord_t_participant_gc"

describe.skipIf(server === undefined)("PgParticipant.gcMarkers", () => {
  const adminUrl = server?.adminUrl ?? ""
  let sql: postgres.Sql

  beforeAll(async () => {
    sql = postgres(await TestDatabase.createDatabase(adminUrl, DB), { max: 4, onnotice: () => {} })
  }, 60_000)
  afterAll(async () => {
    await sql?.end({ timeout: 5 })
    await TestDatabase.dropDatabase(adminUrl, DB)
  }, 60_000)

  it.live("collects only the old markers of its own namespace", () =>
    Effect.gen(function* () {
      const plain = yield* PgParticipant.make({ name: "bank-a", sql })
      const other = yield* PgParticipant.make({ name: "bank-a", sql, namespace: "other" })
      const markers = () =>
        Effect.promise(async () =>
          (await sql<{ gid: string }[]>`select gid from accord_branch order by gid`).map((r) => r.gid)
        )
      yield* Effect.promise(
        () => sql`insert into accord_branch (gid, tx_id, branch, created_at) values
          ('accord_01OLD_bank-a', '01OLD', 'bank-a', now() - interval '2 days'),
          ('accord-other_01OLD_bank-a', '01OLD', 'bank-a', now() - interval '2 days'),
          ('accord_01NEW_bank-a', '01NEW', 'bank-a', now())`
      )
      expect(yield* plain.gcMarkers(Duration.days(1))).toBe(1)
      expect(yield* markers()).toEqual(["accord-other_01OLD_bank-a", "accord_01NEW_bank-a"])
      expect(yield* other.gcMarkers(Duration.days(1))).toBe(1)
      expect(yield* markers()).toEqual(["accord_01NEW_bank-a"])
    })
  )
})
