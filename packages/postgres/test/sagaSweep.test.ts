/**
 * Several orchestrators share one saga log: abandoned sagas are claimed with row leases
 * (FOR UPDATE SKIP LOCKED) and no saga ever runs in two orchestrators at once. Measured with an
 * overlap detector around every step, on real PostgreSQL with one pool per orchestrator.
 */
import { Saga, SagaLog } from "@accord/core"
import { describe, expect, it } from "@effect/vitest"
import { Duration, Effect, Option, Random, Schema } from "effect"
import postgres from "postgres"
import * as PgSagaLog from "../src/PgSagaLog.js"
import * as TestDatabase from "../src/TestDatabase.js"
import { usePoolsOnDatabase } from "./support/sagaLog.js"

const server = await TestDatabase.server()
const DB = "accord_t_saga_sweep"
const SAGAS = 40

/** Counts, per saga, the steps in flight; any count above one is an overlap. */
class OverlapDetector {
  readonly active = new Map<string, number>()
  readonly runsBy = new Map<string, Set<string>>()
  readonly actions = new Map<string, number>()
  overlaps = 0
  enter(sagaId: string, key: string) {
    const n = (this.active.get(sagaId) ?? 0) + 1
    this.active.set(sagaId, n)
    if (n > 1) this.overlaps++
    this.actions.set(key, (this.actions.get(key) ?? 0) + 1)
  }
  exit(sagaId: string) {
    this.active.set(sagaId, (this.active.get(sagaId) ?? 1) - 1)
  }
}

describe.skipIf(server === undefined)("Saga sweep on PostgreSQL", () => {
  const adminUrl = server?.adminUrl ?? ""
  const { url, pool } = usePoolsOnDatabase(adminUrl, DB, { max: 6, endTimeout: 5 })

  it.live(
    "two orchestrators sweeping one log concurrently never run one saga at the same time",
    () =>
      Effect.gen(function* () {
        const detector = new OverlapDetector()
        const step = (name: string) =>
          Saga.step<unknown>({
            name,
            action: (ctx) =>
              Effect.gen(function* () {
                detector.enter(ctx.sagaId, ctx.key)
                yield* Effect.sleep(Duration.millis(yield* Random.nextIntBetween(2, 25)))
                detector.exit(ctx.sagaId)
                return name
              }),
            timeout: "10 seconds"
          })
        // Sequential steps: two steps of one saga in flight at once would mean two orchestrators.
        const saga = Saga.make({ name: "swept", steps: [step("a"), step("b"), step("c"), step("d")] })
        const registry = Saga.registry([saga])

        // A crashed orchestrator left SAGAS sagas behind: started, some with a step in doubt, lease gone.
        const seedLog = yield* PgSagaLog.make(pool())
        for (let i = 0; i < SAGAS; i++) {
          const sagaId = `swept-${String(i).padStart(3, "0")}`
          yield* seedLog.start(SagaLog.SagaRecord.SagaStarted({ sagaId, sagaType: "swept", input: { i } }), {
            owner: "dead",
            leaseFor: "1 millis"
          })
          if (i % 3 === 0)
            yield* seedLog.append(SagaLog.SagaRecord.StepStarted({ sagaId, step: "a" }), "dead")
        }

        // Unequal batch sizes, so one orchestrator comes back for more while the other still works.
        const orchestrator = (owner: string, limit: number) =>
          Effect.gen(function* () {
            const log = yield* PgSagaLog.make(pool())
            const finished: Array<string> = []
            // Sweep until a pass finds nothing left to claim.
            while (true) {
              const outcomes = yield* Saga.sweep(registry, {
                owner,
                leaseFor: "3 seconds",
                limit,
                concurrency: limit
              }).pipe(Effect.provideService(SagaLog.SagaLog, log))
              if (outcomes.length === 0) break
              for (const o of outcomes) finished.push(o.sagaId)
            }
            return finished
          })

        const [one, two] = yield* Effect.all([orchestrator("orch-1", 2), orchestrator("orch-2", 7)], {
          concurrency: 2
        })
        expect(detector.overlaps).toBe(0)
        // Each saga finished exactly once, by one of them; both did part of the work.
        expect([...one, ...two].sort()).toEqual(
          Array.from({ length: SAGAS }, (_, i) => `swept-${String(i).padStart(3, "0")}`)
        )
        expect(one.length).toBeGreaterThan(0)
        expect(two.length).toBeGreaterThan(0)
        // Every step ran once: nothing was run twice by two orchestrators.
        expect([...detector.actions.values()].every((n) => n === 1)).toBe(true)
        expect(detector.actions.size).toBe(SAGAS * 4)
        const check = yield* PgSagaLog.make(pool())
        expect((yield* check.list({ status: "running" })).length).toBe(0)
        expect((yield* check.list({ status: "completed" })).length).toBe(SAGAS)
        const sample = Option.getOrThrow(yield* check.load("swept-000"))
        expect(sample.owner).toBeNull()
        yield* Effect.log(
          `sweep split: orch-1 ${one.length}, orch-2 ${two.length}, overlaps ${detector.overlaps}`
        )
      }),
    120_000
  )

  it.live("SagaStarted is forced even on a pool whose sessions run with synchronous_commit = off", () =>
    Effect.gen(function* () {
      const relaxed = postgres(url(), {
        max: 1,
        onnotice: () => {},
        connection: { synchronous_commit: "off" }
      })
      const reader = pool()
      const log = yield* PgSagaLog.make(relaxed)
      // A backend's WAL statistics reach pg_stat_wal when it flushes them (at the latest when it
      // exits): read after the writing connection has closed.
      const syncs = () =>
        Effect.promise(async () => {
          await new Promise((resolve) => setTimeout(resolve, 200))
          await reader`select pg_stat_force_next_flush()`
          const [row] = await reader<{ n: number }[]>`select wal_sync::float8 as n from pg_stat_wal`
          return row!.n
        })
      const before = yield* syncs()
      const n = 20
      for (let i = 0; i < n; i++) {
        yield* log.start(
          SagaLog.SagaRecord.SagaStarted({ sagaId: `forced-${i}`, sagaType: "forced", input: null }),
          {
            owner: "me",
            leaseFor: Duration.seconds(30)
          }
        )
      }
      yield* Effect.promise(() => relaxed.end({ timeout: 5 }))
      // One WAL flush per forced start (other sessions' flushes only add). Unforced on this pool,
      // twenty starts in a few milliseconds were flushed by the WAL writer in one or two syncs.
      expect((yield* syncs()) - before).toBeGreaterThanOrEqual(n)
    })
  )

  it.live(
    "sagas a sweep cannot drive (no definition, an output that no longer decodes) do not stop it recovering the rest",
    () =>
      Effect.gen(function* () {
        // Found by a review (2026-12-07): the oldest abandoned sagas were claimed first by every
        // batch; given back (no definition, an undecodable output) and claimed again, they ended
        // each sweep, so no later saga was ever recovered (0 outcomes sweep after sweep).
        const log = yield* PgSagaLog.make(pool())
        const crashed = (sagaId: string, sagaType: string, output?: unknown) =>
          Effect.gen(function* () {
            const owner = `dead/${sagaId}`
            yield* log.start(SagaLog.SagaRecord.SagaStarted({ sagaId, sagaType, input: null }), {
              owner,
              leaseFor: "1 millis"
            })
            yield* log.append(SagaLog.SagaRecord.StepStarted({ sagaId, step: "a" }), owner)
            if (output !== undefined)
              yield* log.append(SagaLog.SagaRecord.StepCompleted({ sagaId, step: "a", output }), owner)
            yield* Effect.sleep(Duration.millis(3))
          })
        for (let i = 0; i < 8; i++) yield* crashed(`retired-${i}`, "retired")
        for (let i = 0; i < 8; i++) yield* crashed(`dated-${i}`, "dated", "not a date")
        yield* crashed("order-1", "order")
        let ran = 0
        const order = Saga.make({
          name: "order",
          steps: [Saga.step({ name: "a", action: () => Effect.sync(() => ++ran) })]
        })
        const dated = Saga.make({
          name: "dated",
          steps: [Saga.step({ name: "a", action: () => Effect.succeed(new Date(0)), output: Schema.Date })]
        })
        const outcomes = yield* Saga.sweep(Saga.registry<never>([order, dated]), {
          owner: "node",
          leaseFor: "5 seconds"
        }).pipe(Effect.provideService(SagaLog.SagaLog, log))
        expect(outcomes.map((o) => o.sagaId)).toEqual(["order-1"])
        expect(ran).toBe(1)
        // The others are still there, running, for an orchestrator that can drive them.
        const running = yield* log.list({ status: "running" })
        expect(running.filter((h) => /^(retired|dated)-/.test(h.sagaId))).toHaveLength(16)
      })
  )

  it.live("claimAbandoned from many concurrent sweepers hands each abandoned saga to exactly one", () =>
    Effect.gen(function* () {
      const seedLog = yield* PgSagaLog.make(pool())
      for (let i = 0; i < 60; i++) {
        yield* seedLog.start(
          SagaLog.SagaRecord.SagaStarted({ sagaId: `claim-${i}`, sagaType: "claimed", input: null }),
          { owner: "dead", leaseFor: "1 millis" }
        )
      }
      const logs = yield* Effect.all([1, 2, 3, 4].map(() => PgSagaLog.make(pool())))
      const claims = yield* Effect.all(
        logs.map((log, n) =>
          Effect.gen(function* () {
            const mine: Array<string> = []
            while (true) {
              const got = yield* log.claimAbandoned({ owner: `sweeper-${n}`, leaseFor: "1 minute", limit: 3 })
              if (got.length === 0) break
              for (const h of got) {
                expect(h.owner).toBe(`sweeper-${n}`)
                if (h.sagaType === "claimed") mine.push(h.sagaId)
              }
            }
            return mine
          })
        ),
        { concurrency: "unbounded" }
      )
      const all = claims.flat()
      expect(all.length).toBe(60)
      expect(new Set(all).size).toBe(60)
    })
  )

  it.live(
    "a saga whose step outlasts its lease keeps it by renewing: a concurrent sweeper claims nothing",
    () =>
      Effect.gen(function* () {
        const log = yield* PgSagaLog.make(pool())
        const other = yield* PgSagaLog.make(pool())
        const saga = Saga.make({
          name: "long-step",
          steps: [
            Saga.step<unknown>({
              name: "slow",
              action: () => Effect.sleep("1500 millis").pipe(Effect.as("done"))
            })
          ]
        })
        const fiber = yield* Effect.fork(
          Saga.run(saga, null, { sagaId: "long-step-1", owner: "worker", leaseFor: "600 millis" }).pipe(
            Effect.provideService(SagaLog.SagaLog, log)
          )
        )
        // Sample the other sweeper's view while the step runs (2.5 leases long).
        let stolen = 0
        for (let i = 0; i < 12; i++) {
          yield* Effect.sleep("100 millis")
          const got = yield* other.claimAbandoned({ owner: "thief", leaseFor: "1 minute", limit: 10 })
          stolen += got.filter((h) => h.sagaId === "long-step-1").length
        }
        const outcome = yield* Effect.fromFiber(fiber)
        expect(outcome._tag).toBe("Completed")
        expect(stolen).toBe(0)
      })
  )
})
