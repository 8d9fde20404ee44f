/**
 * `Saga.sweep` keeps its `concurrency` slots busy: a slot freed by a drive that ended claims the
 * next abandoned saga at once, whatever the other slots are still driving. Until 2026-12-07 it
 * claimed a batch of `concurrency` sagas and awaited the whole batch before claiming more, so one
 * long saga (steps may run far longer than the lease) kept this orchestrator from recovering any
 * other abandoned saga until it ended. The other tests pin what sweep did before and still does:
 * no saga claimed before a slot can drive it, the `limit`, the drives that fail or die, sagas
 * given back, a failing claim, interruption, the outcomes returned.
 */
import { describe, expect, it } from "@effect/vitest"
import { Cause, Clock, Duration, Effect, Exit, Fiber, Logger, Option, Schema, TestClock } from "effect"
import * as Saga from "../src/Saga.js"
import { SagaLog, SagaRecord, makeMemory } from "../src/SagaLog.js"
import { LogError } from "../src/TransactionError.js"

type Log = Effect.Effect.Success<typeof makeMemory>

/** When each saga's step started and ended (test clock), and how many ran at once. */
class Probe {
  readonly started = new Map<string, number>()
  readonly ended = new Map<string, number>()
  readonly interrupted = new Set<string>()
  active = 0
  maxActive = 0
}

/** One step that works for `input.ms` milliseconds. */
const timed = (probe: Probe) =>
  Saga.make({
    name: "timed",
    steps: [
      Saga.step<unknown>({
        name: "work",
        timeout: "1 hour",
        action: (ctx) =>
          Effect.gen(function* () {
            probe.started.set(ctx.sagaId, yield* Clock.currentTimeMillis)
            probe.active++
            probe.maxActive = Math.max(probe.maxActive, probe.active)
            yield* Effect.sleep(Duration.millis((ctx.input as { readonly ms: number }).ms))
            probe.ended.set(ctx.sagaId, yield* Clock.currentTimeMillis)
            return "done"
          }).pipe(
            Effect.ensuring(Effect.sync(() => probe.active--)),
            Effect.onInterrupt(() => Effect.sync(() => probe.interrupted.add(ctx.sagaId)))
          )
      })
    ]
  })

/** Sagas left running by a dead orchestrator, oldest first; their leases have run out. */
const abandon = (log: Log, sagas: ReadonlyArray<readonly [sagaId: string, ms: number]>, sagaType = "timed") =>
  Effect.gen(function* () {
    for (const [sagaId, ms] of sagas) {
      yield* log.start(SagaRecord.SagaStarted({ sagaId, sagaType, input: { ms } }), {
        owner: "dead",
        leaseFor: "1 millis"
      })
      yield* TestClock.adjust("1 millis")
    }
    yield* TestClock.adjust("10 millis")
  })

const status = (log: Log, sagaId: string) => Effect.map(log.load(sagaId), (h) => Option.getOrThrow(h).status)

/** The sagas `claimAbandoned` handed out, call by call. */
const countingClaims = (log: Log) => {
  const calls: Array<ReadonlyArray<string>> = []
  const counted: SagaLog["Type"] = {
    ...log,
    claimAbandoned: (options) =>
      Effect.tap(log.claimAbandoned(options), (claimed) =>
        Effect.sync(() => calls.push(claimed.map((h) => h.sagaId)))
      )
  }
  return { calls, log: counted }
}

const shorts = ["short-1", "short-2", "short-3", "short-4", "short-5"] as const

describe("Saga.sweep slots", () => {
  it.effect("a slot freed while a long saga still runs claims the next abandoned saga at once", () =>
    Effect.gen(function* () {
      const probe = new Probe()
      const log = yield* makeMemory
      yield* abandon(log, [["long-0", 4_000], ...shorts.map((id) => [id, 100] as const)])
      const t0 = yield* Clock.currentTimeMillis
      const sweep = yield* Saga.sweep(Saga.registry([timed(probe)]), {
        owner: "node",
        leaseFor: "1 second",
        concurrency: 2
      }).pipe(Effect.provideService(SagaLog, log), Effect.fork)
      // The reviewer's run: the slot freed at 0.1 s stayed empty until the long saga ended at 4 s.
      yield* TestClock.adjust("1 second")
      for (const id of shorts) expect(yield* status(log, id)).toBe("completed")
      expect(yield* status(log, "long-0")).toBe("running")
      expect([...shorts].map((id) => probe.started.get(id)! - t0)).toEqual([0, 100, 200, 300, 400])
      yield* TestClock.adjust("4 seconds")
      const outcomes = yield* Fiber.join(sweep)
      expect(probe.ended.get("long-0")! - t0).toBe(4_000)
      expect(outcomes.map((o) => o._tag)).toEqual(Array(6).fill("Completed"))
    })
  )

  it.effect("never drives more than `concurrency` sagas at once, and fills every slot", () =>
    Effect.gen(function* () {
      const probe = new Probe()
      const log = yield* makeMemory
      yield* abandon(
        log,
        Array.from({ length: 12 }, (_, i) => [`s-${i}`, 50 + ((i * 37) % 200)] as const)
      )
      const sweep = yield* Saga.sweep(Saga.registry([timed(probe)]), {
        owner: "node",
        concurrency: 3
      }).pipe(Effect.provideService(SagaLog, log), Effect.fork)
      yield* TestClock.adjust("10 seconds")
      const outcomes = yield* Fiber.join(sweep)
      expect(outcomes).toHaveLength(12)
      expect(probe.maxActive).toBe(3)
    })
  )

  it.effect("claims no saga before a slot is free to drive it (a waiting claim's lease is not renewed)", () =>
    Effect.gen(function* () {
      const probe = new Probe()
      const log = yield* makeMemory
      yield* abandon(log, [["long-0", 4_000], ...shorts.map((id) => [id, 100] as const)])
      const sweep = yield* Saga.sweep(Saga.registry([timed(probe)]), {
        owner: "node",
        leaseFor: "1 second",
        concurrency: 2
      }).pipe(Effect.provideService(SagaLog, log), Effect.fork)
      for (const at of [50, 150, 250]) {
        yield* TestClock.adjust("100 millis")
        const held = []
        for (const id of ["long-0", ...shorts]) {
          const h = Option.getOrThrow(yield* log.load(id))
          if (h.status === "running" && h.owner?.startsWith("node/sweep-")) held.push(id)
        }
        // At most the long saga and the one short saga being driven: the rest are unclaimed.
        expect(held.includes("long-0")).toBe(true)
        expect({ at, held: held.length <= 2 }).toEqual({ at, held: true })
      }
      yield* TestClock.adjust("5 seconds")
      expect(yield* Fiber.join(sweep)).toHaveLength(6)
    })
  )

  it.effect("claims at most `limit` sagas, and leaves the rest to the next sweep", () =>
    Effect.gen(function* () {
      const probe = new Probe()
      const log = yield* makeMemory
      yield* abandon(log, [["long-0", 2_000], ...shorts.map((id) => [id, 100] as const)])
      const registry = Saga.registry([timed(probe)])
      const sweep = yield* Saga.sweep(registry, { owner: "node", limit: 4, concurrency: 2 }).pipe(
        Effect.provideService(SagaLog, log),
        Effect.fork
      )
      yield* TestClock.adjust("5 seconds")
      const outcomes = yield* Fiber.join(sweep)
      expect(outcomes.map((o) => o.sagaId).sort()).toEqual(["long-0", "short-1", "short-2", "short-3"])
      expect(probe.started.has("short-4")).toBe(false)
      expect(yield* status(log, "short-4")).toBe("running")
      const next = yield* Saga.sweep(registry, { owner: "node", limit: 4, concurrency: 2 }).pipe(
        Effect.provideService(SagaLog, log),
        Effect.fork
      )
      yield* TestClock.adjust("1 second")
      expect((yield* Fiber.join(next)).map((o) => o.sagaId)).toEqual(["short-4", "short-5"])
    })
  )

  it.effect("slots freed at the same moment together claim no more than `limit`", () =>
    Effect.gen(function* () {
      const probe = new Probe()
      const memory = yield* makeMemory
      yield* abandon(
        memory,
        Array.from({ length: 10 }, (_, i) => [`s-${i}`, 100] as const)
      )
      const { calls, log } = countingClaims(memory)
      const sweep = yield* Saga.sweep(Saga.registry([timed(probe)]), {
        owner: "node",
        limit: 5,
        concurrency: 3
      }).pipe(Effect.provideService(SagaLog, log), Effect.fork)
      yield* TestClock.adjust("1 second")
      expect((yield* Fiber.join(sweep)).map((o) => o.sagaId)).toEqual(["s-0", "s-1", "s-2", "s-3", "s-4"])
      expect(calls.flat()).toEqual(["s-0", "s-1", "s-2", "s-3", "s-4"])
      expect(probe.started.size).toBe(5)
    })
  )

  it.effect("returns the outcomes in the order the sagas were claimed (oldest first)", () =>
    Effect.gen(function* () {
      const probe = new Probe()
      const log = yield* makeMemory
      yield* abandon(log, [
        ["a", 300],
        ["b", 100],
        ["c", 100],
        ["d", 50]
      ])
      const sweep = yield* Saga.sweep(Saga.registry([timed(probe)]), { owner: "node", concurrency: 2 }).pipe(
        Effect.provideService(SagaLog, log),
        Effect.fork
      )
      yield* TestClock.adjust("1 second")
      const outcomes = yield* Fiber.join(sweep)
      expect(outcomes.map((o) => o.sagaId)).toEqual(["a", "b", "c", "d"])
      expect(outcomes[0]).toMatchObject({ _tag: "Completed", outputs: { work: "done" } })
    })
  )

  it.effect("a drive that fails or dies is logged, and the other slots go on sweeping", () =>
    Effect.gen(function* () {
      const probe = new Probe()
      const memory = yield* makeMemory
      yield* abandon(memory, [["fails", 100], ["dies", 100], ...shorts.map((id) => [id, 100] as const)])
      const log: SagaLog["Type"] = {
        ...memory,
        append: (record, owner) =>
          record.sagaId === "fails"
            ? Effect.fail(new LogError({ operation: "append", reason: "log unreachable" }))
            : record.sagaId === "dies"
              ? Effect.die(new Error("log bug"))
              : memory.append(record, owner)
      }
      const logged: Array<string> = []
      const capture = Logger.make(({ cause, message }) => {
        logged.push(`${String(message)} ${Cause.pretty(cause)}`)
      })
      const sweep = yield* Saga.sweep(Saga.registry([timed(probe)]), { owner: "node", concurrency: 2 }).pipe(
        Effect.provideService(SagaLog, log),
        Effect.provide(Logger.replace(Logger.defaultLogger, capture)),
        Effect.fork
      )
      yield* TestClock.adjust("2 seconds")
      const outcomes = yield* Fiber.join(sweep)
      expect(outcomes.map((o) => o.sagaId)).toEqual([...shorts])
      // Both stay in the log for a later sweep.
      expect(yield* status(memory, "fails")).toBe("running")
      expect(yield* status(memory, "dies")).toBe("running")
      expect(logged.some((l) => l.includes("fails not finished now") && l.includes("log unreachable"))).toBe(
        true
      )
      expect(logged.some((l) => l.includes("dies not finished now") && l.includes("log bug"))).toBe(true)
    })
  )

  it.effect("a saga the sweep gave back is not claimed again by the same sweep", () =>
    Effect.gen(function* () {
      const probe = new Probe()
      const memory = yield* makeMemory
      // Its logged output no longer decodes: the sweep gives it back at once, still running.
      yield* memory.start(SagaRecord.SagaStarted({ sagaId: "dated-0", sagaType: "dated", input: null }), {
        owner: "dead",
        leaseFor: "1 millis"
      })
      yield* memory.append(SagaRecord.StepStarted({ sagaId: "dated-0", step: "a" }), "dead")
      yield* memory.append(
        SagaRecord.StepCompleted({ sagaId: "dated-0", step: "a", output: "not a date" }),
        "dead"
      )
      yield* TestClock.adjust("1 millis")
      yield* abandon(memory, [["long-0", 1_000], ...shorts.map((id) => [id, 100] as const)])
      const dated = Saga.make({
        name: "dated",
        steps: [Saga.step({ name: "a", action: () => Effect.succeed(new Date(0)), output: Schema.Date })]
      })
      const { calls, log } = countingClaims(memory)
      const sweep = yield* Saga.sweep(Saga.registry<never>([timed(probe), dated]), {
        owner: "node",
        concurrency: 2
      }).pipe(Effect.provideService(SagaLog, log), Effect.fork)
      yield* TestClock.adjust("2 seconds")
      const outcomes = yield* Fiber.join(sweep)
      expect(outcomes.map((o) => o.sagaId).sort()).toEqual(["long-0", ...shorts])
      expect(calls.flat().filter((id) => id === "dated-0")).toHaveLength(1)
      expect(Option.getOrThrow(yield* memory.load("dated-0"))).toMatchObject({
        status: "running",
        owner: null
      })
    })
  )

  it.effect("with a log that ignores the filters, a saga given back ends the sweep instead of spinning", () =>
    Effect.gen(function* () {
      const probe = new Probe()
      const memory = yield* makeMemory
      yield* abandon(memory, [["retired-0", 100]], "retired")
      yield* abandon(memory, [["long-0", 1_000], ...shorts.map((id) => [id, 100] as const)])
      const { calls, log } = countingClaims(memory)
      const ignoring: SagaLog["Type"] = {
        ...log,
        claimAbandoned: ({ types: _types, exclude: _exclude, ...options }) => log.claimAbandoned(options)
      }
      const sweep = yield* Saga.sweep(Saga.registry([timed(probe)]), { owner: "node", concurrency: 2 }).pipe(
        Effect.provideService(SagaLog, ignoring),
        Effect.fork
      )
      yield* TestClock.adjust("5 seconds")
      const exit = yield* Fiber.await(sweep)
      expect(Exit.isSuccess(exit)).toBe(true)
      // Claimed once, given back, claimed again and given back: then the sweep stopped claiming.
      expect(calls.flat().filter((id) => id === "retired-0")).toHaveLength(2)
      expect(calls.length).toBeLessThanOrEqual(4)
      expect(Option.getOrThrow(yield* memory.load("retired-0"))).toMatchObject({
        status: "running",
        owner: null
      })
    })
  )

  it.effect("a claim that fails lets the drives in flight end, then fails the sweep", () =>
    Effect.gen(function* () {
      const probe = new Probe()
      const memory = yield* makeMemory
      yield* abandon(memory, [["long-0", 1_000], ...shorts.map((id) => [id, 100] as const)])
      let claims = 0
      const log: SagaLog["Type"] = {
        ...memory,
        claimAbandoned: (options) =>
          Effect.suspend(() =>
            ++claims === 2
              ? Effect.fail(new LogError({ operation: "claimAbandoned", reason: "log unreachable" }))
              : memory.claimAbandoned(options)
          )
      }
      const sweep = yield* Saga.sweep(Saga.registry([timed(probe)]), { owner: "node", concurrency: 2 }).pipe(
        Effect.provideService(SagaLog, log),
        Effect.fork
      )
      yield* TestClock.adjust("2 seconds")
      const exit = yield* Fiber.await(sweep)
      expect(Exit.isFailure(exit) && Cause.failureOption(exit.cause)).toMatchObject(
        Option.some({ _tag: "LogError", operation: "claimAbandoned" })
      )
      // The long saga was not cut short by the other slot's failed claim.
      expect(probe.interrupted.size).toBe(0)
      expect(yield* status(memory, "long-0")).toBe("completed")
      expect(yield* status(memory, "short-1")).toBe("completed")
      expect(claims).toBe(2)
    })
  )

  it.effect("interrupting the sweep interrupts its drives and claims nothing more", () =>
    Effect.gen(function* () {
      const probe = new Probe()
      const memory = yield* makeMemory
      yield* abandon(memory, [["long-0", 4_000], ...shorts.map((id) => [id, 100] as const)])
      const { calls, log } = countingClaims(memory)
      const sweep = yield* Saga.sweep(Saga.registry([timed(probe)]), {
        owner: "node",
        leaseFor: "1 second",
        concurrency: 2
      }).pipe(Effect.provideService(SagaLog, log), Effect.fork)
      yield* TestClock.adjust("150 millis")
      yield* Fiber.interrupt(sweep)
      // Every drive in flight was interrupted, the long one among them.
      const inFlight = [...probe.started.keys()].filter((id) => !probe.ended.has(id))
      expect([...probe.interrupted].sort()).toEqual(inFlight.sort())
      expect(probe.interrupted.has("long-0")).toBe(true)
      expect(probe.active).toBe(0)
      const claimed = calls.length
      yield* TestClock.adjust("10 seconds")
      expect(calls.length).toBe(claimed)
      const notEnded = ["long-0", ...shorts].filter((id) => !probe.ended.has(id))
      // The interrupted drives' leases run out: the next sweep takes them over.
      const next = yield* Saga.sweep(Saga.registry([timed(probe)]), { owner: "node", concurrency: 8 }).pipe(
        Effect.provideService(SagaLog, memory),
        Effect.fork
      )
      yield* TestClock.adjust("5 seconds")
      expect((yield* Fiber.join(next)).map((o) => o.sagaId).sort()).toEqual(notEnded)
    })
  )
  it.effect("a limit or concurrency that is not a whole number claims whole numbers (NaN limit: none)", () =>
    Effect.gen(function* () {
      const probe = new Probe()
      const log = yield* makeMemory
      yield* abandon(log, [
        ["a", 10],
        ["b", 10],
        ["c", 10],
        ["d", 10]
      ])
      const counted = countingClaims(log)
      const run = (options: { readonly limit?: number; readonly concurrency?: number }) =>
        Effect.gen(function* () {
          const sweep = yield* Saga.sweep(Saga.registry([timed(probe)]), { owner: "node", ...options }).pipe(
            Effect.provideService(SagaLog, counted.log),
            Effect.fork
          )
          yield* TestClock.adjust("1 second")
          return yield* Fiber.join(sweep)
        })
      // NaN claimed without bound before (the old loop claimed nothing): now nothing.
      expect(yield* run({ limit: Number.NaN })).toHaveLength(0)
      // 2.5 is 2; a concurrency of 1.5 is 1 slot.
      expect(yield* run({ limit: 2.5, concurrency: 1.5 })).toHaveLength(2)
      expect(probe.maxActive).toBe(1)
      expect(counted.calls.flat().length).toBe(2)
    })
  )
  it.effect(
    "a claim leaves out only the sagas this sweep has not finished (not every saga it has seen)",
    () =>
      Effect.gen(function* () {
        const probe = new Probe()
        const log = yield* makeMemory
        yield* abandon(
          log,
          Array.from({ length: 20 }, (_, i) => [`e-${i}`, 10] as const)
        )
        const excluded: Array<number> = []
        const counted: SagaLog["Type"] = {
          ...log,
          claimAbandoned: (options) =>
            Effect.suspend(() => {
              excluded.push(options.exclude?.length ?? 0)
              return log.claimAbandoned(options)
            })
        }
        const sweep = yield* Saga.sweep(Saga.registry([timed(probe)]), {
          owner: "node",
          concurrency: 2
        }).pipe(Effect.provideService(SagaLog, counted), Effect.fork)
        yield* TestClock.adjust("10 seconds")
        expect(yield* Fiber.join(sweep)).toHaveLength(20)
        // At most the sagas in flight; before, each claim carried every saga seen (up to 19 here).
        expect(Math.max(...excluded)).toBeLessThanOrEqual(2)
      })
  )
  it.effect(
    "a saga this sweep finished that runs again (an operator's retry whose process died) does not end the sweep",
    () =>
      Effect.gen(function* () {
        // Found by a review (2026-12-07, helper 82): it was taken for a log that ignores `exclude`, so
        // the sweep stopped claiming and saga c waited for the next sweep.
        const probe = new Probe()
        const log = yield* makeMemory
        yield* abandon(log, [
          ["a", 100],
          ["b", 1_000],
          ["c", 100]
        ])
        const sweep = yield* Saga.sweep(Saga.registry([timed(probe)]), {
          owner: "node",
          concurrency: 1
        }).pipe(Effect.provideService(SagaLog, log), Effect.fork)
        yield* TestClock.adjust("500 millis")
        expect(yield* status(log, "a")).toBe("completed")
        yield* log.claim("a", { owner: "op", leaseFor: "1 millis" })
        yield* log.append(SagaRecord.OperatorAction({ sagaId: "a", action: "retry", note: "retry" }), "op")
        yield* TestClock.adjust("5 seconds")
        yield* Fiber.join(sweep)
        expect(yield* status(log, "c")).toBe("completed")
      })
  )
})
