/**
 * What `PgThreePhaseParticipant.make` sends at start-up: it looks for its state table once.
 */
import { TransactionError } from "@accord/core"
import { afterAll, beforeAll, describe, expect, it } from "@effect/vitest"
import { Effect, Either } from "effect"
import postgres from "postgres"
import * as Migrations from "../src/Migrations.js"
import * as PgThreePhaseParticipant from "../src/PgThreePhaseParticipant.js"
import * as TestDatabase from "../src/TestDatabase.js"

const server = await TestDatabase.server()
const DB = "accord_t_3pc_startup"

describe.skipIf(server === undefined)("PgThreePhaseParticipant.make start-up", () => {
  const adminUrl = server?.adminUrl ?? ""
  const statements: Array<string> = []
  let sql: postgres.Sql | undefined

  beforeAll(async () => {
    const url = await TestDatabase.createDatabase(adminUrl, DB)
    // Counts every statement the pool sends.
    sql = postgres(url, { max: 4, onnotice: () => {}, debug: (_connection, query) => statements.push(query) })
  }, 60_000)

  afterAll(async () => {
    await sql?.end({ timeout: 5 })
    await TestDatabase.dropDatabase(adminUrl, DB)
  }, 60_000)

  it.live(
    "with migrate: false on a database without accord_3pc_state, it checks for the table in one statement",
    () =>
      Effect.gen(function* () {
        // A schema made by hand: the marker table only.
        yield* Migrations.participant(sql!).pipe(Effect.orDie)
        statements.length = 0
        const made = yield* Effect.either(
          PgThreePhaseParticipant.make({ name: "bank-a", sql: sql!, migrate: false })
        )
        expect(Either.isLeft(made) && made.left).toBeInstanceOf(TransactionError.ConfigurationError)
        // Before: once with the participant tables, then again alone (two round trips).
        expect(statements.filter((s) => s.includes("accord_3pc_state"))).toHaveLength(1)
      }),
    30_000
  )
})
