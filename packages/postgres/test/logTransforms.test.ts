/**
 * Accord's logs on a postgres.js pool with result transforms (`postgres.camel`, common in
 * applications): they read their rows by column name and keep sagas' inputs and outputs as JSON, so
 * such a pool is refused at `make` with the reason, instead of failing later or handing back
 * changed data.
 */
import { SagaLog } from "@accord/core"
import { afterAll, beforeAll, describe, expect, it } from "@effect/vitest"
import { Effect, Either, Option } from "effect"
import postgres from "postgres"
import * as PgSagaLog from "../src/PgSagaLog.js"
import * as PgTransactionLog from "../src/PgTransactionLog.js"
import * as TestDatabase from "../src/TestDatabase.js"

const server = await TestDatabase.server()
const DB = "accord_t_log_transforms"

describe.skipIf(server === undefined)("the logs on a pool with result transforms", () => {
  const adminUrl = server?.adminUrl ?? ""
  let url = ""
  const pools: Array<postgres.Sql> = []
  const pool = (options: postgres.Options<{}> = {}) => {
    const sql = postgres(url, { max: 2, onnotice: () => {}, ...options })
    pools.push(sql)
    return sql
  }

  beforeAll(async () => {
    url = await TestDatabase.createDatabase(adminUrl, DB)
  }, 60_000)
  afterAll(async () => {
    for (const sql of pools) await sql.end({ timeout: 5 })
    await TestDatabase.dropDatabase(adminUrl, DB)
  }, 60_000)

  it.live(
    "PgSagaLog refuses a postgres.camel pool at make, with the reason; a plain pool keeps the input as it was",
    () =>
      Effect.gen(function* () {
        const made = yield* Effect.either(PgSagaLog.make(pool({ transform: postgres.camel })))
        expect(Either.isLeft(made)).toBe(true)
        if (Either.isLeft(made)) {
          expect(made.left.operation).toBe("make")
          expect(made.left.message).toContain("without result transforms")
        }
        const log = yield* PgSagaLog.make(pool())
        const input = { order_id: 7, line_items: [{ unit_price: 3 }] }
        yield* log.start(SagaLog.SagaRecord.SagaStarted({ sagaId: "t-1", sagaType: "order", input }), {
          owner: "p1",
          leaseFor: "10 seconds"
        })
        const loaded = yield* log.load("t-1")
        expect(Option.map(loaded, (h) => h.input)).toEqual(Option.some(input))
      }).pipe(Effect.scoped)
  )

  it.live("PgTransactionLog refuses a pool with a column transform at make", () =>
    Effect.gen(function* () {
      for (const transform of [postgres.camel, { column: { from: postgres.toCamel } }]) {
        const made = yield* Effect.either(PgTransactionLog.make({ sql: pool({ transform }) }))
        expect(Either.isLeft(made)).toBe(true)
        if (Either.isLeft(made)) expect(made.left.message).toContain("without result transforms")
      }
      // A plain pool is taken.
      const log = yield* PgTransactionLog.make({ sql: pool() })
      expect(typeof log.decide).toBe("function")
    }).pipe(Effect.scoped)
  )
})
