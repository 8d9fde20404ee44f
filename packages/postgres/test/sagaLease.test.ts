/**
 * Leases and log writes of a saga under faults, on real PostgreSQL through PgSagaLog: a drive whose
 * lease lapses while its step runs, a sweeper that dies mid-drive, a log connection that stops
 * answering. One pool per "process".
 */
import { Saga, SagaLog } from "@accord/core"
import { LogError } from "@accord/core/TransactionError"
import { describe, expect, it } from "@effect/vitest"
import { Effect, Exit, Fiber, Option } from "effect"
import * as PgSagaLog from "../src/PgSagaLog.js"
import * as TestDatabase from "../src/TestDatabase.js"
import { usePoolsOnDatabase } from "./support/sagaLog.js"
import * as TcpProxy from "./support/tcpProxy.js"

const server = await TestDatabase.server()
const DB = "accord_t_saga_lease"

const within = <A>(promise: Promise<A>, ms: number) =>
  Promise.race([promise, new Promise<"timed out">((resolve) => setTimeout(() => resolve("timed out"), ms))])

describe.skipIf(server === undefined)("Saga leases and log faults on PostgreSQL", () => {
  const adminUrl = server?.adminUrl ?? ""
  const { url, pool } = usePoolsOnDatabase(adminUrl, DB, { max: 4, endTimeout: 1 })

  const kinds = (log: SagaLog.SagaLog["Type"], sagaId: string) =>
    Effect.map(log.load(sagaId), (h) => Option.getOrThrow(h).records.map((r) => r._tag))

  it.live(
    "a drive that cannot renew its lease stops its step when the lease lapses, before another process re-runs it",
    () =>
      Effect.gen(function* () {
        const real = yield* PgSagaLog.make(pool())
        // The first process's renewals fail (its log unreachable for renewals), its other writes work.
        const starved: SagaLog.SagaLog["Type"] = {
          ...real,
          renewLease: (sagaId) =>
            Effect.fail(new LogError({ operation: "renewLease", txId: sagaId, reason: "unreachable" }))
        }
        let inFlight = 0
        let overlaps = 0
        let runs = 0
        const saga = Saga.make({
          name: "starved",
          steps: [
            Saga.step<string>({
              name: "slow",
              action: () =>
                Effect.suspend(() => {
                  runs++
                  inFlight++
                  if (inFlight > 1) overlaps++
                  return Effect.sleep("1200 millis").pipe(
                    Effect.as("done"),
                    Effect.ensuring(Effect.sync(() => inFlight--))
                  )
                }),
              timeout: "10 seconds"
            })
          ]
        })
        const first = yield* Effect.fork(
          Saga.run(saga, null, { sagaId: "starved-1", owner: "p1", leaseFor: "400 millis" }).pipe(
            Effect.provideService(SagaLog.SagaLog, starved)
          )
        )
        const other = yield* PgSagaLog.make(pool())
        // Process 2 sweeps every 50 ms until it took the saga over.
        let outcomes: ReadonlyArray<Saga.Outcome> = []
        for (let i = 0; i < 60 && outcomes.length === 0; i++) {
          yield* Effect.sleep("50 millis")
          outcomes = yield* Saga.sweep(Saga.registry([saga]), { owner: "p2", leaseFor: "5 seconds" }).pipe(
            Effect.provideService(SagaLog.SagaLog, other)
          )
        }
        const firstExit = yield* Fiber.await(first)
        expect(outcomes.map((o) => o._tag)).toEqual(["Completed"])
        expect(Exit.isFailure(firstExit) && JSON.stringify(firstExit.cause)).toContain("LeaseLostError")
        expect(runs).toBe(2)
        expect(overlaps).toBe(0)
        const records = yield* kinds(other, "starved-1")
        expect(records.filter((k) => k === "StepCompleted")).toHaveLength(1)
      }),
    20_000
  )
  it.live(
    "a completion write that never answers fails the drive within its lease, and the saga is swept after it",
    () =>
      Effect.gen(function* () {
        const proxy = yield* Effect.promise(() => TcpProxy.start(url()))
        yield* Effect.addFinalizer(() => Effect.promise(() => proxy.close()))
        const frozenLog = yield* PgSagaLog.make(pool(proxy.url(url())))
        let runs = 0
        const saga = Saga.make({
          name: "frozen-write",
          steps: [
            Saga.step<string>({
              name: "work",
              action: () =>
                Effect.sync(() => {
                  runs++
                  return "done"
                })
            })
          ]
        })
        // The completion's statement goes out and its link freezes: no answer, no error, ever.
        const froze = proxy.freezeWhen((chunk) => chunk.includes("StepCompleted"), { deliver: false })
        const started = Date.now()
        const exit = yield* Effect.promise(() =>
          within(
            Effect.runPromiseExit(
              Saga.run(saga, null, { sagaId: "frozen-1", owner: "p1", leaseFor: "600 millis" }).pipe(
                Effect.provideService(SagaLog.SagaLog, frozenLog)
              )
            ),
            15_000
          )
        )
        yield* Effect.promise(() => froze)
        expect(exit).not.toBe("timed out")
        if (exit === "timed out") return
        expect(Exit.isFailure(exit) && JSON.stringify(exit.cause)).toContain("LogError")
        // Within its lease (600 ms) plus scheduling slack: not held by the frozen statement.
        expect(Date.now() - started).toBeLessThan(3_000)
        // Another process finishes it once the lease has run out (the hung drive renews it no more).
        const other = yield* PgSagaLog.make(pool())
        let outcomes: ReadonlyArray<Saga.Outcome> = []
        for (let i = 0; i < 60 && outcomes.length === 0; i++) {
          yield* Effect.sleep("100 millis")
          outcomes = yield* Saga.sweep(Saga.registry([saga]), { owner: "p2" }).pipe(
            Effect.provideService(SagaLog.SagaLog, other)
          )
        }
        expect(outcomes.map((o) => o._tag)).toEqual(["Completed"])
        expect(runs).toBe(2)
      }).pipe(Effect.scoped),
    30_000
  )
})
