/**
 * A 3PC participant on a postgres.js pool with result transforms is refused at `make`: it reads its
 * state rows by column name, and under `postgres.pascal` (`state` read back as `State`) a gid fenced
 * `aborted` by a terminator read as unrecorded, so its late prepare voted yes.
 */
import { TransactionError } from "@accord/core"
import { afterAll, beforeAll, describe, expect, it } from "@effect/vitest"
import { Effect, Either } from "effect"
import postgres from "postgres"
import * as PgThreePhaseParticipant from "../src/PgThreePhaseParticipant.js"
import * as TestDatabase from "../src/TestDatabase.js"

const server = await TestDatabase.server()
const DB = "accord_t_3pc_transforms"

describe.skipIf(server === undefined)("PgThreePhaseParticipant on a pool with result transforms", () => {
  const adminUrl = server?.adminUrl ?? ""
  const pools: Array<postgres.Sql> = []
  let url = ""
  beforeAll(async () => {
    url = await TestDatabase.createDatabase(adminUrl, DB)
  }, 60_000)
  afterAll(async () => {
    for (const sql of pools) await sql.end({ timeout: 5 })
    await TestDatabase.dropDatabase(adminUrl, DB)
  }, 60_000)

  it.live("is refused at make with a ConfigurationError; a plain pool is taken", () =>
    Effect.gen(function* () {
      for (const transform of [postgres.pascal, postgres.camel]) {
        const sql = postgres(url, { max: 2, onnotice: () => {}, transform })
        pools.push(sql)
        const made = yield* Effect.either(PgThreePhaseParticipant.make({ name: "bank-a", sql }))
        expect(Either.isLeft(made)).toBe(true)
        if (Either.isLeft(made)) {
          expect(made.left).toBeInstanceOf(TransactionError.ConfigurationError)
          expect(made.left.message).toContain("transforms")
        }
      }
      const plain = postgres(url, { max: 2, onnotice: () => {} })
      pools.push(plain)
      const p = yield* PgThreePhaseParticipant.make({ name: "bank-a", sql: plain })
      expect(p.name).toBe("bank-a")
    })
  )
})
