/**
 * The orchestrator killed between any two log records, then resumed by another orchestrator's
 * sweep: the end state must equal that of an uninterrupted run with the same step behaviour.
 * Exhaustive: for every k, the process dies when it tries to write record k+1 (so exactly k
 * records are durable), whatever its steps had already done to the world.
 */
import { describe, expect, it } from "@effect/vitest"
import { Deferred, Effect, Exit, Fiber, Option, Schedule, TestClock } from "effect"
import * as Saga from "../src/Saga.js"
import { SagaLog, makeMemory } from "../src/SagaLog.js"
import { LogError } from "../src/TransactionError.js"
import { type StepSpec, World, step } from "./SagaWorld.js"

type Unit = StepSpec | { readonly group: ReadonlyArray<StepSpec> }

const build = (world: World, name: string, units: ReadonlyArray<Unit>) =>
  Saga.make({
    name,
    steps: units.map((u, i) =>
      "group" in u
        ? Saga.parallel(
            `g${i}`,
            u.group.map((s) => step(world, s))
          )
        : step(world, u)
    )
  })

type Log = Effect.Effect.Success<typeof makeMemory>

/** A log that dies (the process is killed) instead of writing record number `after + 1`. */
const crashingLog = (log: Log, after: number): SagaLog["Type"] => {
  let written = 0
  const guard = <A, E>(write: Effect.Effect<A, E>): Effect.Effect<A, E> =>
    Effect.suspend(() => {
      // Counted before the write, so concurrent writers (a parallel group) cannot both slip
      // through; a write in flight when the process "dies" lands (as it would on a real socket
      // whose statement was sent), never after the resumption started.
      if (written >= after) return Effect.die("orchestrator killed")
      written++
      return Effect.uninterruptible(write)
    })
  return {
    ...log,
    start: (record, lease) => guard(log.start(record, lease)),
    append: (record, owner) => guard(log.append(record, owner))
  }
}

interface EndState {
  readonly tag: string
  readonly where: string
  readonly undone: ReadonlyArray<string>
  readonly applied: ReadonlyArray<string>
}

const endState = (outcome: Saga.Outcome, world: World): EndState => ({
  tag: outcome._tag,
  where:
    outcome._tag === "Compensated"
      ? outcome.cause.step
      : outcome._tag === "Stuck"
        ? `${outcome.step}:${outcome.phase}`
        : "",
  // Steps whose effect a compensation actually undid. A resumed run may also compensate a step that
  // was in doubt but never acted (a null compensation): listed in `undone`, but no effect.
  undone: [...world.undoneCount.keys()].sort(),
  applied: world.appliedSteps
})

const reference = (name: string, units: ReadonlyArray<Unit>) =>
  Effect.gen(function* () {
    const world = new World()
    const log = yield* makeMemory
    const outcome = yield* Saga.run(build(world, name, units), { n: 1 }).pipe(
      Effect.provideService(SagaLog, log)
    )
    const records = (yield* log.records).length
    return { state: endState(outcome, world), records, world }
  })

const crashThenResume = (name: string, units: ReadonlyArray<Unit>, k: number, secondCrash?: number) =>
  Effect.gen(function* () {
    const world = new World()
    const saga = build(world, name, units)
    const log = yield* makeMemory
    const exit = yield* Effect.exit(
      Saga.run(saga, { n: 1 }, { sagaId: `crash-${k}`, owner: "first", leaseFor: "10 seconds" }).pipe(
        Effect.provideService(SagaLog, crashingLog(log, k))
      )
    )
    expect(Exit.isFailure(exit)).toBe(true)
    expect((yield* log.records).length).toBe(k)
    // The first orchestrator is dead; its lease runs out; another one sweeps.
    yield* TestClock.adjust("11 seconds")
    const registry = Saga.registry([saga])
    if (secondCrash !== undefined) {
      yield* Effect.exit(
        Saga.sweep(registry, { owner: "second", leaseFor: "10 seconds" }).pipe(
          Effect.provideService(SagaLog, crashingLog(log, k + secondCrash))
        )
      )
      yield* TestClock.adjust("11 seconds")
    }
    const outcome =
      secondCrash === undefined
        ? yield* Saga.sweep(registry, { owner: "third", leaseFor: "10 seconds" }).pipe(
            Effect.provideService(SagaLog, log),
            Effect.tap((os) => expect(os.length).toBe(1)),
            Effect.map((os) => os[0]!)
          )
        : // The second orchestrator may have finished it: resume by id returns the recorded end.
          yield* Saga.resume(registry, `crash-${k}`, { owner: "third" }).pipe(
            Effect.provideService(SagaLog, log)
          )
    const history = Option.getOrThrow(yield* log.load(`crash-${k}`))
    expect(history.status).not.toBe("running")
    return endState(outcome, world)
  })

const scenarios: ReadonlyArray<{ readonly name: string; readonly units: ReadonlyArray<Unit> }> = [
  { name: "all-ok", units: [{ name: "a" }, { name: "b" }, { name: "c" }] },
  {
    name: "business-at-c",
    units: [{ name: "a" }, { name: "b" }, { name: "c", action: "business" }, { name: "d" }]
  },
  {
    name: "in-doubt-at-c",
    units: [{ name: "a" }, { name: "b" }, { name: "c", action: "inDoubt", retries: 1 }]
  },
  {
    name: "transient-then-ok",
    units: [
      { name: "a", action: { transientTimes: 1 } },
      { name: "b", action: { inDoubtTimes: 1 } },
      { name: "c" }
    ]
  },
  {
    name: "group-member-fails",
    units: [
      { name: "a" },
      { group: [{ name: "x" }, { name: "y", action: "business" }, { name: "z" }] },
      { name: "d" }
    ]
  },
  { name: "group-ok", units: [{ group: [{ name: "x" }, { name: "y" }] }, { name: "d" }] },
  {
    name: "compensation-flaky",
    units: [
      { name: "a", compensation: { failTimes: 2 }, compensationRetries: 5 },
      { name: "b", compensation: "none" },
      { name: "c", action: "business" }
    ]
  },
  {
    name: "compensation-stuck",
    units: [
      { name: "a" },
      { name: "b", compensation: "never", compensationRetries: 1 },
      { name: "c", action: "business" }
    ]
  },
  {
    name: "pivot-then-stuck",
    units: [
      { name: "a" },
      { name: "p", pivot: true, compensation: "none" },
      { name: "c", action: "business" }
    ]
  },
  {
    name: "pivot-ok",
    units: [{ name: "a" }, { name: "p", pivot: true, compensation: "none" }, { name: "c" }]
  }
]

describe("Saga resumption after a crash at every log record", () => {
  for (const scenario of scenarios) {
    it.effect(
      `${scenario.name}: killed after each k records, resumed by a sweep, same end state`,
      () =>
        Effect.gen(function* () {
          const ref = yield* reference(scenario.name, scenario.units)
          expect(ref.records).toBeGreaterThan(2)
          for (let k = 1; k < ref.records; k++) {
            const resumed = yield* crashThenResume(scenario.name, scenario.units, k)
            expect({ k, ...resumed }).toEqual({ k, ...ref.state })
          }
        }),
      30_000
    )
  }

  for (const scenario of scenarios.filter((s) =>
    ["business-at-c", "group-member-fails", "compensation-flaky"].includes(s.name)
  )) {
    it.effect(
      `${scenario.name}: killed twice (in the run and in the first resumption), same end state`,
      () =>
        Effect.gen(function* () {
          {
            const ref = yield* reference(scenario.name, scenario.units)
            for (let k = 1; k < ref.records; k++) {
              for (let j = 0; j < 4; j++) {
                const resumed = yield* crashThenResume(scenario.name, scenario.units, k, j)
                expect({ scenario: scenario.name, k, j, ...resumed }).toEqual({
                  scenario: scenario.name,
                  k,
                  j,
                  ...ref.state
                })
              }
            }
          }
        }),
      60_000
    )
  }

  it.effect(
    "an uninterrupted run compensates each step once; a resumed one at least once, never a live effect left",
    () =>
      Effect.gen(function* () {
        const units = scenarios.find((s) => s.name === "business-at-c")!.units
        const ref = yield* reference("once", units)
        expect([...ref.world.compensationCalls.values()]).toEqual([1, 1])
        expect(ref.world.appliedSteps).toEqual([])
      })
  )

  it.effect("resume by id refuses while the first owner's lease is live, then continues", () =>
    Effect.gen(function* () {
      const world = new World()
      const saga = build(world, "by-id", [{ name: "a" }, { name: "b" }])
      const log = yield* makeMemory
      yield* Effect.exit(
        Saga.run(saga, null, { sagaId: "by-id-1", owner: "first", leaseFor: "10 seconds" }).pipe(
          Effect.provideService(SagaLog, crashingLog(log, 3))
        )
      )
      const registry = Saga.registry([saga])
      const busy = yield* Effect.exit(
        Saga.resume(registry, "by-id-1", { owner: "second" }).pipe(Effect.provideService(SagaLog, log))
      )
      expect(Exit.isFailure(busy) && JSON.stringify(busy.cause)).toContain("SagaBusyError")
      yield* TestClock.adjust("11 seconds")
      const outcome = yield* Saga.resume(registry, "by-id-1", { owner: "second" }).pipe(
        Effect.provideService(SagaLog, log)
      )
      expect(outcome._tag).toBe("Completed")
      expect(world.appliedSteps).toEqual(["a", "b"])
      const missing = yield* Effect.exit(
        Saga.resume(registry, "nope").pipe(Effect.provideService(SagaLog, log))
      )
      expect(Exit.isFailure(missing) && JSON.stringify(missing.cause)).toContain("SagaNotFoundError")
    })
  )

  it.effect(
    "a step started by an earlier run stays in doubt: if its re-attempts fail, it is still compensated",
    () =>
      Effect.gen(function* () {
        // The first run applies `reserve`, then cannot write StepCompleted (the log is down) and gives up.
        const applied = new Set<string>()
        let attempts = 0
        const saga = Saga.make({
          name: "in-doubt-on-resume",
          steps: [
            Saga.step<unknown>({
              name: "reserve",
              action: (ctx) =>
                Effect.suspend((): Effect.Effect<string, Saga.StepError> => {
                  attempts++
                  if (attempts === 1) {
                    applied.add(ctx.key)
                    return Effect.succeed("ok")
                  }
                  return Effect.fail(new Saga.StepTransientError({ reason: "503" }))
                }),
              compensation: (ctx) => Effect.sync(() => applied.delete(ctx.key)),
              retry: Schedule.recurs(2)
            })
          ]
        })
        const log = yield* makeMemory
        const failing: SagaLog["Type"] = {
          ...log,
          append: (record, owner) =>
            record._tag === "StepCompleted"
              ? Effect.fail(new LogError({ operation: "append", reason: "log unreachable" }))
              : log.append(record, owner)
        }
        const first = yield* Effect.exit(
          Saga.run(saga, null, { sagaId: "doubt-1", owner: "a", leaseFor: "10 seconds" }).pipe(
            Effect.provideService(SagaLog, failing)
          )
        )
        expect(Exit.isFailure(first)).toBe(true)
        expect(applied.size).toBe(1)
        yield* TestClock.adjust("11 seconds")
        const [outcome] = yield* Saga.sweep(Saga.registry([saga]), { owner: "b" }).pipe(
          Effect.provideService(SagaLog, log)
        )
        expect(outcome).toMatchObject({ _tag: "Compensated", undone: ["reserve"] })
        if (outcome?._tag === "Compensated")
          expect(outcome.cause).toMatchObject({ kind: "transient", inDoubt: true })
        expect(applied.size).toBe(0)
      })
  )
  it.effect("a sweep fences a saga from its first driver even when both use one owner name", () =>
    Effect.gen(function* () {
      const release = yield* Deferred.make<void>()
      const saga = Saga.make({
        name: "fenced",
        steps: [
          Saga.step<unknown>({
            name: "slow",
            // The first driver hangs here, its lease not renewed (as when it is starved).
            action: () => Deferred.await(release).pipe(Effect.as("late")),
            timeout: "1 hour"
          }),
          Saga.step<unknown>({ name: "next", action: () => Effect.succeed("ok") })
        ]
      })
      const log = yield* makeMemory
      const starved: SagaLog["Type"] = { ...log, renewLease: () => Effect.succeed(true) }
      const first = yield* Saga.run(saga, null, {
        sagaId: "fence-1",
        owner: "node-1",
        leaseFor: "3 seconds"
      }).pipe(Effect.provideService(SagaLog, starved), Effect.exit, Effect.fork)
      yield* TestClock.adjust("4 seconds")
      const swept = yield* Saga.sweep(Saga.registry([saga]), { owner: "node-1" }).pipe(
        Effect.provideService(SagaLog, log),
        Effect.fork
      )
      yield* TestClock.adjust("1 second")
      const claimedBy = Option.getOrThrow(yield* log.load("fence-1")).owner
      expect(claimedBy).toMatch(/^node-1\/sweep-[0-9a-z]+$/)
      yield* Deferred.succeed(release, undefined)
      const firstExit = yield* Fiber.join(first)
      // The first driver's next write is refused: the sweep's claim fenced it.
      expect(Exit.isFailure(firstExit)).toBe(true)
      const [outcome] = yield* Fiber.join(swept)
      expect(outcome?._tag).toBe("Completed")
    })
  )
})
