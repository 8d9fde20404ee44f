/**
 * Interrupted migrations and their errors (review of 2026-12-07, helper 82, after the migrations
 * became cancellable): on PGlite, which cannot cancel a statement, the interruption waited the
 * whole `cancelTimeout` (5 s) for nothing; and `Migrations.*` failed with a new Error carrying
 * neither the driver's `code` nor its other fields, where callers read `code`.
 */
import { describe, expect, it } from "@effect/vitest"
import { Effect, Either } from "effect"
import postgres from "postgres"
import * as Migrations from "../src/Migrations.js"
import * as PgParticipant from "../src/PgParticipant.js"
import * as TestDatabase from "../src/TestDatabase.js"

const server = await TestDatabase.server()

describe("an interrupted migration", () => {
  it.live(
    "on PGlite returns at once (nothing can cancel it there, so nothing is waited for)",
    () =>
      Effect.gen(function* () {
        const db = yield* Effect.promise(() => PgParticipant.openPglite())
        let release!: () => void
        const held = new Promise<void>((resolve) => {
          release = resolve
        })
        // PGlite is one session: the migration queues behind this open transaction.
        const tx = db.transaction(async (t) => {
          await t.query("select 1")
          await held
        })
        yield* Effect.sleep("50 millis")
        const t0 = Date.now()
        const run = yield* Effect.either(Migrations.participant(db).pipe(Effect.timeout("200 millis")))
        const took = Date.now() - t0
        release()
        yield* Effect.promise(() => tx)
        yield* Effect.promise(() => db.close())
        expect(Either.isLeft(run)).toBe(true)
        expect(took).toBeLessThan(2_000)
      }),
    60_000
  )
})

describe.skipIf(server === undefined)("a failed migration on PostgreSQL", () => {
  it.live("fails with the driver's own error, its code included", () =>
    Effect.gen(function* () {
      const url = new URL(server!.adminUrl)
      url.pathname = "/accord_t_no_such_database"
      const sql = postgres(url.toString(), { max: 1, onnotice: () => {} })
      const run = yield* Effect.either(Migrations.log(sql))
      yield* Effect.promise(() => sql.end({ timeout: 5 }))
      expect(Either.isLeft(run) && (run.left as { code?: unknown }).code).toBe("3D000")
    })
  )
})
