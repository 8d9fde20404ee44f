/**
 * `Saga.sweep` on PostgreSQL keeps its `concurrency` slots busy: a slot freed while a long saga
 * still runs claims the next abandoned saga at once (one `claimAbandoned` statement per freed slot,
 * `FOR UPDATE SKIP LOCKED`), and never more than `concurrency` sagas are claimed at a time. Until
 * 2026-12-07 the sweep awaited a whole batch before claiming more: the reviewer's run (concurrency
 * 2, one saga of 4 s and five of 100 ms) left the freed slot empty from 0.47 s to 4.36 s.
 */
import { Saga, SagaLog } from "@accord/core"
import { describe, expect, it } from "@effect/vitest"
import { Clock, Duration, Effect, Option } from "effect"
import * as PgSagaLog from "../src/PgSagaLog.js"
import * as TestDatabase from "../src/TestDatabase.js"
import { usePoolsOnDatabase } from "./support/sagaLog.js"

const server = await TestDatabase.server()
const DB = "accord_t_saga_sweep_slots"

describe.skipIf(server === undefined)("Saga sweep slots on PostgreSQL", () => {
  const adminUrl = server?.adminUrl ?? ""
  const { pool } = usePoolsOnDatabase(adminUrl, DB, { max: 6, endTimeout: 5 })

  it.live(
    "a slot freed while a long saga runs recovers the other abandoned sagas before it ends",
    () =>
      Effect.gen(function* () {
        const ended = new Map<string, number>()
        let active = 0
        let maxActive = 0
        const saga = Saga.make({
          name: "slots",
          steps: [
            Saga.step<unknown>({
              name: "work",
              timeout: "1 minute",
              action: (ctx) =>
                Effect.gen(function* () {
                  active++
                  maxActive = Math.max(maxActive, active)
                  yield* Effect.sleep(Duration.millis((ctx.input as { readonly ms: number }).ms))
                  ended.set(ctx.sagaId, yield* Clock.currentTimeMillis)
                  return "done"
                }).pipe(Effect.ensuring(Effect.sync(() => active--)))
            })
          ]
        })
        const log = yield* PgSagaLog.make(pool())
        // A dead orchestrator's sagas, oldest first: the long one is claimed in the first batch.
        const sagas = [
          ["long-0", 2_500],
          ["short-1", 100],
          ["short-2", 100],
          ["short-3", 100],
          ["short-4", 100],
          ["short-5", 100]
        ] as const
        for (const [sagaId, ms] of sagas) {
          yield* log.start(SagaLog.SagaRecord.SagaStarted({ sagaId, sagaType: "slots", input: { ms } }), {
            owner: "dead",
            leaseFor: "1 millis"
          })
          yield* Effect.sleep("3 millis")
        }
        const outcomes = yield* Saga.sweep(Saga.registry([saga]), {
          owner: "node",
          leaseFor: "1 second",
          concurrency: 2
        }).pipe(Effect.provideService(SagaLog.SagaLog, log))
        expect(outcomes.map((o) => o._tag)).toEqual(Array(6).fill("Completed"))
        const longEnded = ended.get("long-0")!
        for (const [sagaId] of sagas.slice(1)) expect(ended.get(sagaId)!).toBeLessThan(longEnded)
        expect(maxActive).toBe(2)
        for (const [sagaId] of sagas) {
          expect(Option.getOrThrow(yield* log.load(sagaId))).toMatchObject({
            status: "completed",
            owner: null
          })
        }
      }),
    30_000
  )
})
