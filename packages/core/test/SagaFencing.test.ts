/**
 * Leases fence drives of a saga, not processes: every run, resume, sweep and operator action holds
 * the lease under a token of its own, so two drives under one configured owner never drive one
 * saga at once, and the end of a saga is never mistaken for the loss of its lease.
 */
import { describe, expect, it } from "@effect/vitest"
import { Deferred, Effect, Exit, Fiber, Option, TestClock } from "effect"
import * as Saga from "../src/Saga.js"
import { SagaLog, SagaRecord, makeMemory } from "../src/SagaLog.js"

type Log = Effect.Effect.Success<typeof makeMemory>

/** A saga whose first step waits for `gate` on its first attempt only, then a second step. */
const gated = (gate: Deferred.Deferred<void>, calls: { slow: number; next: number }) =>
  Saga.make({
    name: "gated",
    steps: [
      Saga.step<unknown>({
        name: "slow",
        action: () =>
          Effect.suspend(() => {
            calls.slow++
            return calls.slow === 1 ? Deferred.await(gate).pipe(Effect.as("first")) : Effect.succeed("again")
          }),
        timeout: "1 hour"
      }),
      Saga.step<unknown>({
        name: "next",
        action: () => Effect.sync(() => ++calls.next)
      })
    ]
  })

const endedRecords = (log: Log, sagaId: string) =>
  Effect.map(
    log.load(sagaId),
    (h) => Option.getOrThrow(h).records.filter((r) => r._tag === "SagaEnded").length
  )

describe("Saga lease fencing", () => {
  it.effect("a heartbeat landing after SagaEnded was written leaves a completed saga completed", () =>
    Effect.gen(function* () {
      const memory = yield* makeMemory
      // A durable log's SagaEnded write: the row (status, lease released) commits, the reply is slow
      // (two heartbeats land before it, yet within the lease, which bounds every log call).
      const slowReply: SagaLog["Type"] = {
        ...memory,
        append: (record, owner) =>
          record._tag === "SagaEnded"
            ? Effect.zipRight(memory.append(record, owner), Effect.sleep("25 millis"))
            : memory.append(record, owner)
      }
      const saga = Saga.make({
        name: "quick",
        steps: [Saga.step({ name: "a", action: () => Effect.succeed(1) })]
      })
      const fiber = yield* Saga.run(saga, null, { sagaId: "ending-1", leaseFor: "30 millis" }).pipe(
        Effect.provideService(SagaLog, slowReply),
        Effect.exit,
        Effect.fork
      )
      yield* TestClock.adjust("100 millis")
      const exit = yield* Fiber.join(fiber)
      expect(Exit.isSuccess(exit) && exit.value._tag).toBe("Completed")
      expect(Option.getOrThrow(yield* memory.load("ending-1")).status).toBe("completed")
    })
  )

  it.effect("each drive holds the lease under its own token, prefixed by the configured owner", () =>
    Effect.gen(function* () {
      const log = yield* makeMemory
      const gate = yield* Deferred.make<void>()
      const run = yield* Saga.run(gated(gate, { slow: 0, next: 0 }), null, {
        sagaId: "token-1",
        owner: "node-1"
      }).pipe(Effect.provideService(SagaLog, log), Effect.fork)
      yield* TestClock.adjust("1 second")
      const owner = Option.getOrThrow(yield* log.load("token-1")).owner
      expect(owner).toMatch(/^node-1\/run-[0-9a-z]{16}$/)
      yield* Deferred.succeed(gate, undefined)
      expect((yield* Fiber.join(run))._tag).toBe("Completed")
    })
  )

  it.effect("resume under the owner of a run still in flight is refused, and the run finishes alone", () =>
    Effect.gen(function* () {
      const log = yield* makeMemory
      const gate = yield* Deferred.make<void>()
      const calls = { slow: 0, next: 0 }
      const saga = gated(gate, calls)
      const run = yield* Saga.run(saga, null, { sagaId: "twice-1", owner: "node-1" }).pipe(
        Effect.provideService(SagaLog, log),
        Effect.fork
      )
      yield* TestClock.adjust("1 second")
      const second = yield* Saga.resume(Saga.registry([saga]), "twice-1", { owner: "node-1" }).pipe(
        Effect.provideService(SagaLog, log),
        Effect.either
      )
      expect(second._tag === "Left" && second.left._tag).toBe("SagaBusyError")
      yield* Deferred.succeed(gate, undefined)
      expect((yield* Fiber.join(run))._tag).toBe("Completed")
      expect(calls).toEqual({ slow: 1, next: 1 })
    })
  )

  it.effect("retryStuck under the owner of a run still in flight is refused and runs nothing", () =>
    Effect.gen(function* () {
      const log = yield* makeMemory
      const gate = yield* Deferred.make<void>()
      const calls = { slow: 0, next: 0 }
      const saga = gated(gate, calls)
      const run = yield* Saga.run(saga, null, { sagaId: "retry-live-1", owner: "node-1" }).pipe(
        Effect.provideService(SagaLog, log),
        Effect.fork
      )
      yield* TestClock.adjust("1 second")
      const retried = yield* Saga.retryStuck(Saga.registry([saga]), "retry-live-1", { owner: "node-1" }).pipe(
        Effect.provideService(SagaLog, log),
        Effect.either
      )
      expect(retried._tag === "Left" && retried.left._tag).toBe("SagaBusyError")
      expect(calls.slow).toBe(1)
      yield* Deferred.succeed(gate, undefined)
      expect((yield* Fiber.join(run))._tag).toBe("Completed")
      expect(calls).toEqual({ slow: 1, next: 1 })
      const history = Option.getOrThrow(yield* log.load("retry-live-1"))
      expect(history.records.some((r) => r._tag === "OperatorAction")).toBe(false)
    })
  )

  it.effect(
    "a drive under the same owner takes over once the first's lease expired, and the first is fenced",
    () =>
      Effect.gen(function* () {
        const log = yield* makeMemory
        // The first drive's heartbeat does nothing (its process is starved), so its lease runs out.
        const starved: SagaLog["Type"] = { ...log, renewLease: () => Effect.succeed(true) }
        const firstReply = yield* Deferred.make<void>()
        const secondReply = yield* Deferred.make<void>()
        const calls = { slow: 0, next: 0 }
        const saga = Saga.make({
          name: "takeover",
          steps: [
            Saga.step<unknown>({
              name: "slow",
              action: () =>
                Effect.suspend(() => {
                  calls.slow++
                  return Deferred.await(calls.slow === 1 ? firstReply : secondReply).pipe(
                    Effect.as(calls.slow)
                  )
                }),
              timeout: "1 hour"
            }),
            Saga.step<unknown>({ name: "next", action: () => Effect.sync(() => ++calls.next) })
          ]
        })
        const first = yield* Saga.run(saga, null, {
          sagaId: "takeover-1",
          owner: "node-1",
          leaseFor: "3 seconds"
        }).pipe(Effect.provideService(SagaLog, starved), Effect.exit, Effect.fork)
        yield* TestClock.adjust("4 seconds")
        // The restarted (or second) process under the same owner needs no token of the first.
        const second = yield* Saga.resume(Saga.registry([saga]), "takeover-1", { owner: "node-1" }).pipe(
          Effect.provideService(SagaLog, log),
          Effect.fork
        )
        yield* TestClock.adjust("1 second")
        expect(calls.slow).toBe(2)
        // The first drive wakes up while the second is mid-step: its writes must be refused.
        yield* Deferred.succeed(firstReply, undefined)
        const firstExit = yield* Fiber.join(first)
        expect(Exit.isFailure(firstExit) && JSON.stringify(firstExit.cause)).toContain("LeaseLostError")
        expect(calls.next).toBe(0)
        yield* Deferred.succeed(secondReply, undefined)
        expect((yield* Fiber.join(second))._tag).toBe("Completed")
        expect(calls).toEqual({ slow: 2, next: 1 })
        expect(yield* endedRecords(log, "takeover-1")).toBe(1)
      })
  )

  it.effect("retryStuck of a saga whose type is not registered writes nothing and leaves it to a sweep", () =>
    Effect.gen(function* () {
      const log = yield* makeMemory
      yield* log.start(SagaRecord.SagaStarted({ sagaId: "unknown-1", sagaType: "elsewhere", input: null }), {
        owner: "gone",
        leaseFor: "10 millis"
      })
      yield* TestClock.adjust("1 second")
      const exit = yield* Saga.retryStuck(Saga.registry<never>([]), "unknown-1", { owner: "ops" }).pipe(
        Effect.provideService(SagaLog, log),
        Effect.exit
      )
      expect(Exit.isFailure(exit)).toBe(true)
      const history = Option.getOrThrow(yield* log.load("unknown-1"))
      // Before: an OperatorAction "retry" was appended first, then the run failed.
      expect(history.records.map((r) => r._tag)).toEqual(["SagaStarted"])
      expect(history.owner ?? null).toBeNull()
    })
  )

  it.effect("a saga that ended between resume's look and its claim is not left leased", () =>
    Effect.gen(function* () {
      const log = yield* makeMemory
      const saga = Saga.make({
        name: "raced",
        steps: [Saga.step({ name: "a", action: () => Effect.succeed(1) })]
      })
      const done = yield* Saga.run(saga, null, { sagaId: "raced-1" }).pipe(
        Effect.provideService(SagaLog, log)
      )
      const ended = Option.getOrThrow(yield* log.load("raced-1"))
      // What resume saw before the other drive wrote SagaEnded: still running.
      const stale: SagaLog["Type"] = {
        ...log,
        load: () =>
          Effect.succeed(
            Option.some({ ...ended, status: "running" as const, records: ended.records.slice(0, -1) })
          )
      }
      const outcome = yield* Saga.resume(Saga.registry([saga]), "raced-1", { owner: "node-2" }).pipe(
        Effect.provideService(SagaLog, stale)
      )
      expect(outcome).toEqual(done)
      const after = Option.getOrThrow(yield* log.load("raced-1"))
      expect({ owner: after.owner, leaseUntil: after.leaseUntil, status: after.status }).toEqual({
        owner: null,
        leaseUntil: null,
        status: "completed"
      })
    })
  )
})
