/**
 * A barrier on a postgres.js pool with a column transform (`transform: postgres.camel`,
 * `postgres.pascal`), and a barrier row deleted by another session while a compensation runs
 * (review of 2026-12-07).
 *
 * The barrier read its own result columns by name: on a pascal pool `guarded` came back `Guarded`,
 * so every action was refused as if its work had deleted its row (0A000), and `reason` came back
 * `Reason`, so a late action after a null compensation answered Duplicate instead of Refused. They
 * are read by position now, as a participant's are. And the refusal of a run whose row was deleted
 * blamed the work even when a `Barrier.purge` with too short a retention had deleted it.
 */
import { afterAll, beforeAll, describe, expect, it } from "@effect/vitest"
import { Effect, Either } from "effect"
import postgres from "postgres"
import * as Barrier from "../src/Barrier.js"
import * as TestDatabase from "../src/TestDatabase.js"

const server = await TestDatabase.server()
const DB = "s22_bar2_transform"

const transforms = [
  ["postgres.camel", postgres.camel],
  ["postgres.pascal", postgres.pascal]
] as const

describe.skipIf(server === undefined)("a barrier on a pool with a column transform", () => {
  const adminUrl = server?.adminUrl ?? ""
  let url = ""
  let plain: postgres.Sql

  beforeAll(async () => {
    url = await TestDatabase.createDatabase(adminUrl, DB)
    plain = postgres(url, { max: 3, onnotice: () => {} })
    await Barrier.migrate(plain)
    await plain.unsafe("create table rv (k text, n int check (n > 0))")
  }, 60_000)

  afterAll(async () => {
    await plain?.end({ timeout: 5 })
    await TestDatabase.dropDatabase(adminUrl, DB)
  }, 60_000)

  for (const [name, transform] of transforms) {
    it.live(`${name}: an action applies, then is a Duplicate with its result; its compensation applies`, () =>
      Effect.acquireUseRelease(
        Effect.promise(async () => {
          const sql = postgres(url, { max: 3, onnotice: () => {}, transform })
          await Barrier.migrate(sql)
          return sql
        }),
        (sql) =>
          Effect.gen(function* () {
            const gid = `s22b-${name}-${Date.now()}`
            const target = { gid, branch: "b", op: "action" as const }
            const applied = yield* Effect.either(
              Barrier.run(sql, target, async (s) => {
                await s.query("insert into rv (k, n) values ($1, 1)", [gid])
                return { order_id: 7 }
              })
            )
            expect(Either.isRight(applied) ? applied.right : applied.left.message).toEqual({
              _tag: "Applied",
              value: { order_id: 7 }
            })
            const again = yield* Barrier.run(sql, target, async () => ({ order_id: 8 }))
            expect(again).toEqual({ _tag: "Duplicate", value: { order_id: 7 } })
            const compensated = yield* Barrier.run(sql, { ...target, op: "compensation" }, async (s) => {
              await s.query("delete from rv where k = $1", [gid])
            })
            expect(compensated._tag).toBe("Applied")
            const rows = yield* Effect.promise(
              () => plain`select count(*)::int as n from rv where k = ${gid}`
            )
            expect(rows[0]!.n).toBe(0)
          }),
        (sql) => Effect.promise(() => sql.end({ timeout: 5 }))
      )
    )

    it.live(`${name}: a late action after a null compensation is Refused`, () =>
      Effect.acquireUseRelease(
        Effect.promise(async () => {
          const sql = postgres(url, { max: 3, onnotice: () => {}, transform })
          await Barrier.migrate(sql)
          return sql
        }),
        (sql) =>
          Effect.gen(function* () {
            const gid = `s22b-${name}-late-${Date.now()}`
            const target = { gid, branch: "b", op: "compensation" as const }
            const nothing = yield* Barrier.run(sql, target, async () => "undo")
            expect(nothing._tag).toBe("NullCompensation")
            const late = yield* Barrier.run(sql, { ...target, op: "action" }, async () => "late")
            expect(late._tag).toBe("Refused")
            const repeated = yield* Barrier.run(sql, target, async () => "undo")
            expect(repeated._tag).toBe("Duplicate")
          }),
        (sql) => Effect.promise(() => sql.end({ timeout: 5 }))
      )
    )
  }

  it.live(
    "a compensation whose action's row a purge deleted meanwhile: refused, and the message says so",
    () =>
      Effect.gen(function* () {
        const gid = `s22b-purged-${Date.now()}`
        yield* Barrier.run(plain, { gid, branch: "b", op: "action" }, async () => "acted")
        yield* Effect.sleep("50 millis")
        const first = yield* Effect.either(
          Barrier.run(plain, { gid, branch: "b", op: "compensation" }, async (s) => {
            await s.query("insert into rv (k, n) values ($1, 1)", [gid])
            // Another session: a purge with a retention far shorter than the saga's life.
            await Barrier.purge(plain, { olderThan: "10 millis" })
          })
        )
        expect(
          Either.isLeft(first) && first.left._tag === "BarrierWorkError" ? first.left.sqlState : first
        ).toBe("0A000")
        if (Either.isLeft(first)) {
          expect(first.left.message).toContain("was deleted while the work ran")
          expect(first.left.message).toContain("by another session")
          expect(first.left.message).toContain("Barrier.purge")
        }
        const rows = yield* Effect.promise(() => plain`select count(*)::int as n from rv where k = ${gid}`)
        expect(rows[0]!.n).toBe(0)
      })
  )
})
