import { describe, expect, it } from "@effect/vitest"
import { Duration, Effect, Either, Fiber, Option, Schedule, TestClock } from "effect"
import * as Saga from "../src/Saga.js"
import { SagaLog, makeMemory } from "../src/SagaLog.js"
import { type StepSpec, World, step } from "./SagaWorld.js"

const withLog = <A, E>(f: (log: Effect.Effect.Success<typeof makeMemory>) => Effect.Effect<A, E, SagaLog>) =>
  Effect.flatMap(makeMemory, (log) => Effect.provideService(f(log), SagaLog, log))

const linear = (world: World, specs: ReadonlyArray<StepSpec>) =>
  Saga.make({ name: "linear", steps: specs.map((s) => step(world, s)) })

const names = ["a", "b", "c", "d"] as const

describe("Saga", () => {
  it.effect("completes every step in order and hands each the outputs of the earlier ones", () =>
    withLog((log) =>
      Effect.gen(function* () {
        const world = new World()
        const outcome = yield* Saga.run(
          linear(
            world,
            names.map((name) => ({ name }))
          ),
          { order: 1 }
        )
        expect(outcome._tag).toBe("Completed")
        if (outcome._tag !== "Completed") return
        expect(Object.keys(outcome.outputs)).toEqual(["a", "b", "c", "d"])
        expect(world.order).toEqual(["action:a", "action:b", "action:c", "action:d"])
        expect(Object.keys(world.seenOutputs.get("c") ?? {})).toEqual(["a", "b"])
        expect(world.keys).toEqual(names.map((n) => `${outcome.sagaId}/${n}`))
        const history = Option.getOrThrow(yield* log.load(outcome.sagaId))
        expect(history.status).toBe("completed")
        expect(history.owner).toBeNull()
        expect(history.records.map((r) => r._tag)).toEqual([
          "SagaStarted",
          ...names.flatMap(() => ["StepStarted", "StepCompleted"]),
          "SagaEnded"
        ])
      })
    )
  )

  for (let failAt = 0; failAt < names.length; failAt++) {
    it.effect(
      `a definite failure at step ${names[failAt]} compensates exactly the earlier steps, once each, in reverse`,
      () =>
        withLog((log) =>
          Effect.gen(function* () {
            const world = new World()
            const specs = names.map(
              (name, i): StepSpec => ({ name, action: i === failAt ? "business" : "ok" })
            )
            const outcome = yield* Saga.run(linear(world, specs), null)
            expect(outcome._tag).toBe("Compensated")
            if (outcome._tag !== "Compensated") return
            const before = names.slice(0, failAt)
            expect(outcome.cause).toMatchObject({ step: names[failAt], kind: "business", inDoubt: false })
            expect(outcome.undone).toEqual([...before].reverse())
            expect(world.order.filter((o) => o.startsWith("compensation:"))).toEqual(
              [...before].reverse().map((n) => `compensation:${n}`)
            )
            for (const n of before) expect(world.undoneCount.get(n)).toBe(1)
            expect(world.compensationCalls.get(names[failAt]!)).toBeUndefined()
            expect(world.actionCalls.get(names[failAt]!)).toBe(1) // business failures are not retried
            for (const n of names.slice(failAt + 1)) expect(world.actionCalls.get(n)).toBeUndefined()
            expect(world.appliedSteps).toEqual([])
            expect(Option.getOrThrow(yield* log.load(outcome.sagaId)).status).toBe("compensated")
          })
        )
    )
  }

  it.effect("a transient failure is retried with the step's schedule and then succeeds", () =>
    withLog(() =>
      Effect.gen(function* () {
        const world = new World()
        const outcome = yield* Saga.run(
          linear(world, [{ name: "a" }, { name: "b", action: { transientTimes: 2 }, retries: 2 }]),
          null
        )
        expect(outcome._tag).toBe("Completed")
        expect(world.actionCalls.get("b")).toBe(3)
        expect(new Set(world.keys.filter((k) => k.endsWith("/b"))).size).toBe(1) // one key across retries
      })
    )
  )

  it.effect("transient failures past the schedule fail the step without compensating it", () =>
    withLog(() =>
      Effect.gen(function* () {
        const world = new World()
        const outcome = yield* Saga.run(
          linear(world, [{ name: "a" }, { name: "b", action: "transient", retries: 2 }]),
          null
        )
        expect(outcome._tag).toBe("Compensated")
        if (outcome._tag !== "Compensated") return
        expect(outcome.cause).toMatchObject({ step: "b", kind: "transient", inDoubt: false })
        expect(world.actionCalls.get("b")).toBe(3)
        expect(outcome.undone).toEqual(["a"])
      })
    )
  )

  it.effect("an in-doubt step that fails for good is compensated too (it may have acted)", () =>
    withLog(() =>
      Effect.gen(function* () {
        const world = new World()
        const outcome = yield* Saga.run(
          linear(world, [{ name: "a" }, { name: "b", action: "inDoubt", retries: 1 }]),
          null
        )
        expect(outcome._tag).toBe("Compensated")
        if (outcome._tag !== "Compensated") return
        expect(outcome.cause).toMatchObject({ step: "b", kind: "inDoubt", inDoubt: true })
        expect(outcome.undone).toEqual(["b", "a"])
        expect(world.appliedSteps).toEqual([])
      })
    )
  )

  it.effect("an in-doubt attempt followed by a transient one still compensates the step", () =>
    withLog(() =>
      Effect.gen(function* () {
        const world = new World()
        let calls = 0
        const flaky = Saga.step<unknown>({
          name: "b",
          action: () =>
            Effect.suspend(
              (): Effect.Effect<never, Saga.StepError> =>
                ++calls === 1
                  ? Effect.fail(new Saga.StepInDoubtError({ reason: "lost" }))
                  : Effect.fail(new Saga.StepTransientError({ reason: "503" }))
            ),
          compensation: world.compensation({ name: "b" }),
          retry: Schedule.recurs(1)
        })
        const outcome = yield* Saga.run(
          Saga.make({ name: "mixed", steps: [step(world, { name: "a" }), flaky] }),
          null
        )
        expect(outcome._tag).toBe("Compensated")
        if (outcome._tag !== "Compensated") return
        expect(outcome.cause).toMatchObject({ kind: "transient", inDoubt: true })
        expect(outcome.undone).toEqual(["b", "a"])
      })
    )
  )

  it.effect(
    "a step timeout is an in-doubt failure: retried, then the step is compensated with no output",
    () =>
      withLog(() =>
        Effect.gen(function* () {
          const world = new World()
          const outputs: Array<Option.Option<unknown>> = []
          const saga = Saga.make({
            name: "timeouts",
            steps: [
              step(world, { name: "a" }),
              Saga.step<unknown>({
                name: "b",
                action: world.action({ name: "b", action: "hang" }),
                compensation: (ctx) => Effect.sync(() => outputs.push(ctx.output)),
                timeout: Duration.seconds(2),
                retry: Schedule.spaced(Duration.seconds(1)).pipe(Schedule.intersect(Schedule.recurs(1)))
              })
            ]
          })
          const fiber = yield* Effect.fork(Saga.run(saga, null))
          yield* TestClock.adjust(Duration.seconds(2))
          expect(Option.isNone(yield* Fiber.poll(fiber))).toBe(true)
          yield* TestClock.adjust(Duration.seconds(3))
          const outcome = yield* Fiber.join(fiber)
          expect(outcome._tag).toBe("Compensated")
          if (outcome._tag !== "Compensated") return
          expect(outcome.cause).toMatchObject({ step: "b", kind: "timeout", inDoubt: true })
          expect(outcome.undone).toEqual(["b", "a"])
          expect(outputs).toEqual([Option.none()])
          expect(world.actionCalls.get("b")).toBe(2)
        })
      )
  )

  it.effect("a compensation timeout is retried: a compensation that hangs once then succeeds completes", () =>
    withLog(() =>
      Effect.gen(function* () {
        const world = new World()
        const saga = Saga.make({
          name: "comp-timeout",
          steps: [
            step(
              world,
              { name: "a", compensation: { hangTimes: 1 } },
              { compensationTimeout: Duration.seconds(1) }
            ),
            step(world, { name: "b", action: "business" })
          ]
        })
        const fiber = yield* Effect.fork(Saga.run(saga, null))
        yield* TestClock.adjust(Duration.seconds(1))
        const outcome = yield* Fiber.join(fiber)
        expect(outcome._tag).toBe("Compensated")
        expect(world.compensationCalls.get("a")).toBe(2)
        expect(world.undoneCount.get("a")).toBe(1)
      })
    )
  )

  it.effect("a compensation that always times out ends the saga Stuck", () =>
    withLog(() =>
      Effect.gen(function* () {
        const world = new World()
        const saga = Saga.make({
          name: "comp-hang",
          steps: [
            step(
              world,
              { name: "a", compensation: "hang", compensationRetries: 2 },
              { compensationTimeout: "1 second" }
            ),
            step(world, { name: "b", action: "business" })
          ]
        })
        const fiber = yield* Effect.fork(Saga.run(saga, null))
        yield* TestClock.adjust(Duration.seconds(3))
        const outcome = yield* Fiber.join(fiber)
        expect(outcome).toMatchObject({ _tag: "Stuck", step: "a", phase: "compensation" })
        expect(world.compensationCalls.get("a")).toBe(3)
      })
    )
  )

  it.effect("a compensation failing a few times then succeeding is retried with its own schedule", () =>
    withLog(() =>
      Effect.gen(function* () {
        const world = new World()
        const saga = linear(world, [
          { name: "a" },
          { name: "b", compensation: { failTimes: 3 }, compensationRetries: 5 },
          { name: "c", action: "business" }
        ])
        const outcome = yield* Saga.run(saga, null)
        expect(outcome._tag).toBe("Compensated")
        if (outcome._tag !== "Compensated") return
        expect(outcome.undone).toEqual(["b", "a"])
        expect(world.compensationCalls.get("b")).toBe(4)
        expect(world.undoneCount.get("b")).toBe(1)
      })
    )
  )

  it.effect(
    "a compensation that never succeeds ends Stuck, recorded in the log, earlier steps untouched",
    () =>
      withLog((log) =>
        Effect.gen(function* () {
          const world = new World()
          const saga = linear(world, [
            { name: "a" },
            { name: "b", compensation: "never", compensationRetries: 2 },
            { name: "c", action: "business" }
          ])
          const outcome = yield* Saga.run(saga, null)
          expect(outcome).toMatchObject({ _tag: "Stuck", step: "b", phase: "compensation" })
          expect(world.compensationCalls.get("b")).toBe(3)
          expect(world.compensationCalls.get("a")).toBeUndefined()
          const stuck = yield* log.list({ status: "stuck" })
          expect(stuck.map((s) => s.sagaId)).toEqual([outcome.sagaId])
          const failed = yield* Effect.either(Saga.orFail(outcome))
          expect(Either.isLeft(failed) && failed.left._tag).toBe("SagaStuckError")
        })
      )
  )

  it.effect("retryStuck runs the stuck compensation again and finishes the saga", () =>
    withLog((log) =>
      Effect.gen(function* () {
        const world = new World()
        let broken = true
        const saga = Saga.make({
          name: "fixable",
          steps: [
            step(world, { name: "a" }),
            Saga.step<unknown>({
              name: "b",
              action: world.action({ name: "b" }),
              compensation: (ctx) =>
                broken
                  ? Effect.fail(new Saga.StepTransientError({ reason: "refund service down" }))
                  : world.compensation({ name: "b" })(ctx),
              compensationRetry: Schedule.recurs(1)
            }),
            step(world, { name: "c", action: "business" })
          ]
        })
        const registry = Saga.registry([saga])
        const stuck = yield* Saga.run(saga, null)
        expect(stuck._tag).toBe("Stuck")
        // An operator fixes the refund service and retries.
        broken = false
        const outcome = yield* Saga.retryStuck(registry, stuck.sagaId, { note: "refund service fixed" })
        expect(outcome._tag).toBe("Compensated")
        if (outcome._tag !== "Compensated") return
        expect(outcome.undone).toEqual(["b", "a"])
        expect(outcome.cause.step).toBe("c")
        expect(world.appliedSteps).toEqual([])
        expect(Option.getOrThrow(yield* log.load(stuck.sagaId)).status).toBe("compensated")
        // Resuming an ended saga returns its recorded outcome and runs nothing.
        const calls = world.order.length
        expect((yield* Saga.resume(registry, stuck.sagaId))._tag).toBe("Compensated")
        expect(world.order.length).toBe(calls)
      })
    )
  )

  it.effect("resolveStuck records an operator's manual fix and ends the saga", () =>
    withLog((log) =>
      Effect.gen(function* () {
        const world = new World()
        const saga = linear(world, [
          { name: "a", compensation: "never", compensationRetries: 0 },
          { name: "b", action: "business" }
        ])
        const stuck = yield* Saga.run(saga, null)
        const resolved = yield* Saga.resolveStuck(stuck.sagaId, "refunded by hand, ticket 42")
        expect(resolved).toMatchObject({ _tag: "Compensated", undone: ["a"] })
        const history = Option.getOrThrow(yield* log.load(stuck.sagaId))
        expect(history.status).toBe("compensated")
        expect(history.records.some((r) => r._tag === "OperatorAction" && r.note.includes("ticket 42"))).toBe(
          true
        )
        expect(Either.isLeft(yield* Effect.either(Saga.resolveStuck(stuck.sagaId, "again")))).toBe(true)
      })
    )
  )

  it.effect(
    "resolveStuck refuses to end a saga whose earlier steps were never compensated, unless they were by hand",
    () =>
      withLog((log) =>
        Effect.gen(function* () {
          // Found by a review (2026-12-07): ship failed, charge's refund stuck, the operator refunded
          // by hand and resolved: the saga ended Compensated with reserve never released, and
          // nothing would ever release it.
          const world = new World()
          const saga = linear(world, [
            { name: "reserve" },
            { name: "charge", compensation: "never", compensationRetries: 0 },
            { name: "ship", action: "business" }
          ])
          const stuck = yield* Saga.run(saga, null)
          expect(stuck).toMatchObject({ _tag: "Stuck", step: "charge", phase: "compensation" })
          const refused = yield* Effect.either(Saga.resolveStuck(stuck.sagaId, "refunded by hand"))
          expect(Either.isLeft(refused) && refused.left._tag).toBe("InvalidSagaError")
          expect(Either.isLeft(refused) && refused.left.message).toContain(
            "reserve acted and was not compensated yet"
          )
          // Refused, it stays stuck (not claimed, nothing written).
          expect(Option.getOrThrow(yield* log.load(stuck.sagaId)).status).toBe("stuck")
          const resolved = yield* Saga.resolveStuck(stuck.sagaId, "refunded and released by hand", {
            alsoCompensated: ["reserve"]
          })
          expect(resolved).toMatchObject({ _tag: "Compensated", undone: ["charge", "reserve"] })
        })
      )
  )

  it.effect("a parallel group with one failing member compensates its completed members concurrently", () =>
    withLog(() =>
      Effect.gen(function* () {
        const world = new World()
        const slowUndo = (name: string) =>
          Saga.step<unknown>({
            name,
            action: world.action({ name }),
            compensation: (ctx) =>
              Effect.gen(function* () {
                world.active++
                world.maxActive = Math.max(world.maxActive, world.active)
                yield* Effect.sleep(Duration.millis(10))
                world.active--
                yield* world.compensation({ name })(ctx)
              }),
            retry: Schedule.recurs(0)
          })
        const saga = Saga.make({
          name: "group",
          steps: [
            step(world, { name: "order" }),
            Saga.parallel("fulfil", [
              slowUndo("reserve"),
              slowUndo("charge"),
              step(world, { name: "ship", action: "business" })
            ]),
            step(world, { name: "notify" })
          ]
        })
        const fiber = yield* Effect.fork(Saga.run(saga, null))
        yield* TestClock.adjust(Duration.millis(10)) // both compensations sleep at the same time
        const outcome = yield* Fiber.join(fiber)
        expect(outcome._tag).toBe("Compensated")
        if (outcome._tag !== "Compensated") return
        expect(outcome.cause.step).toBe("ship")
        expect([...outcome.undone.slice(0, 2)].sort()).toEqual(["charge", "reserve"])
        expect(outcome.undone[2]).toBe("order")
        expect(world.maxActive).toBe(2)
        expect(world.compensationCalls.get("ship")).toBeUndefined()
        expect(world.actionCalls.get("notify")).toBeUndefined()
        expect(world.appliedSteps).toEqual([])
      })
    )
  )

  it.effect("members of a parallel group run concurrently", () =>
    withLog(() =>
      Effect.gen(function* () {
        const world = new World()
        const slow = (name: string) =>
          Saga.step<unknown>({
            name,
            action: (ctx) => Effect.sleep("1 second").pipe(Effect.zipRight(world.action({ name })(ctx)))
          })
        const fiber = yield* Effect.fork(
          Saga.run(
            Saga.make({ name: "par", steps: [Saga.parallel("g", [slow("x"), slow("y"), slow("z")])] }),
            null
          )
        )
        yield* TestClock.adjust(Duration.seconds(1))
        const outcome = yield* Fiber.join(fiber)
        expect(outcome._tag).toBe("Completed")
      })
    )
  )

  it.effect("a failing pivot compensates the steps before it", () =>
    withLog(() =>
      Effect.gen(function* () {
        const world = new World()
        const saga = linear(world, [
          { name: "a" },
          { name: "pivot", action: "business", compensation: "none", pivot: true },
          { name: "c" }
        ])
        const outcome = yield* Saga.run(saga, null)
        expect(outcome).toMatchObject({ _tag: "Compensated", undone: ["a"] })
      })
    )
  )

  it.effect(
    "after the pivot the saga only retries forward: transient failures are retried to completion",
    () =>
      withLog(() =>
        Effect.gen(function* () {
          const world = new World()
          const saga = linear(world, [
            { name: "a" },
            { name: "pivot", compensation: "none", pivot: true },
            { name: "c", action: { transientTimes: 3 }, retries: 5 }
          ])
          const outcome = yield* Saga.run(saga, null)
          expect(outcome._tag).toBe("Completed")
          expect(world.compensationCalls.size).toBe(0)
        })
      )
  )

  it.effect("a step after the pivot that fails for good leaves the saga Stuck, nothing compensated", () =>
    withLog((log) =>
      Effect.gen(function* () {
        const world = new World()
        let broken = true
        const saga = Saga.make({
          name: "pivoted",
          steps: [
            step(world, { name: "a" }),
            step(world, { name: "pivot", compensation: "none", pivot: true }),
            Saga.step<unknown>({
              name: "c",
              action: (ctx) =>
                broken
                  ? Effect.fail(new Saga.StepBusinessError({ reason: "carrier refused" }))
                  : world.action({ name: "c" })(ctx),
              compensation: world.compensation({ name: "c" })
            })
          ]
        })
        const outcome = yield* Saga.run(saga, null)
        expect(outcome).toMatchObject({ _tag: "Stuck", step: "c", phase: "action" })
        expect(world.compensationCalls.size).toBe(0)
        expect(Option.getOrThrow(yield* log.load(outcome.sagaId)).status).toBe("stuck")
        broken = false
        const retried = yield* Saga.retryStuck(Saga.registry([saga]), outcome.sagaId)
        expect(retried._tag).toBe("Completed")
        expect(world.appliedSteps).toEqual(["a", "c", "pivot"])
      })
    )
  )

  it.effect("runOrFail returns the outputs or a typed SagaCompensatedError", () =>
    withLog(() =>
      Effect.gen(function* () {
        const world = new World()
        const outputs = yield* Saga.runOrFail(linear(world, [{ name: "a" }]), null)
        expect(outputs).toEqual({ a: { step: "a", value: "a-out" } })
        const failed = yield* Effect.either(
          Saga.runOrFail(linear(world, [{ name: "x" }, { name: "y", action: "business" }]), null)
        )
        expect(Either.isLeft(failed) && failed.left).toMatchObject({
          _tag: "SagaCompensatedError",
          step: "y",
          undone: ["x"]
        })
      })
    )
  )

  it.effect("invalid definitions and ids are refused before anything runs", () =>
    withLog((log) =>
      Effect.gen(function* () {
        const world = new World()
        const dup = linear(world, [{ name: "a" }, { name: "a" }])
        const e1 = yield* Effect.either(Saga.run(dup, null))
        expect(Either.isLeft(e1) && e1.left._tag).toBe("InvalidSagaError")
        const e2 = yield* Effect.either(Saga.run(linear(world, [{ name: "a/b" }]), null))
        expect(Either.isLeft(e2) && e2.left._tag).toBe("InvalidSagaError")
        const e3 = yield* Effect.either(
          Saga.run(linear(world, [{ name: "a" }]), null, { sagaId: "x'; drop" })
        )
        expect(Either.isLeft(e3) && e3.left._tag).toBe("InvalidSagaError")
        const pivotInGroup = Saga.make({
          name: "bad",
          steps: [Saga.parallel("g", [step(world, { name: "p", pivot: true })])]
        })
        const e4 = yield* Effect.either(Saga.run(pivotInGroup, null))
        expect(Either.isLeft(e4) && e4.left._tag).toBe("InvalidSagaError")
        expect(world.order).toEqual([])
        expect(yield* log.list()).toEqual([])
      })
    )
  )

  it.effect("a saga id is used once: starting it again is refused", () =>
    withLog(() =>
      Effect.gen(function* () {
        const world = new World()
        const saga = linear(world, [{ name: "a" }])
        yield* Saga.run(saga, null, { sagaId: "order-1" })
        const again = yield* Effect.either(Saga.run(saga, null, { sagaId: "order-1" }))
        expect(Either.isLeft(again) && again.left._tag).toBe("SagaBusyError")
        // It said "is owned by " and nothing: an ended saga has no owner.
        expect(Either.isLeft(again) && again.left.message).toBe(
          "saga order-1 exists already and no drive owns it (it has ended, or waits for recovery): a saga id is started once"
        )
        expect(world.actionCalls.get("a")).toBe(1)
      })
    )
  )

  it.effect("the lease is renewed while a long step runs and released at the end", () =>
    withLog((log) =>
      Effect.gen(function* () {
        const world = new World()
        const saga = Saga.make({
          name: "long",
          steps: [
            Saga.step<unknown>({
              name: "slow",
              action: (ctx) =>
                Effect.sleep("25 seconds").pipe(Effect.zipRight(world.action({ name: "slow" })(ctx))),
              timeout: "1 minute"
            })
          ]
        })
        const fiber = yield* Effect.fork(
          Saga.run(saga, null, { sagaId: "long-1", owner: "me", leaseFor: "9 seconds" })
        )
        yield* TestClock.adjust("20 seconds")
        const mid = Option.getOrThrow(yield* log.load("long-1"))
        expect(mid.owner).toMatch(/^me\/run-[0-9a-z]{16}$/)
        // Nobody can claim it: the lease keeps being renewed.
        expect(yield* log.claimAbandoned({ owner: "other", leaseFor: "9 seconds", limit: 10 })).toEqual([])
        yield* TestClock.adjust("5 seconds")
        expect((yield* Fiber.join(fiber))._tag).toBe("Completed")
        expect(Option.getOrThrow(yield* log.load("long-1")).owner).toBeNull()
      })
    )
  )

  it.effect("a saga whose lease was taken over stops with LeaseLostError", () =>
    withLog((log) =>
      Effect.gen(function* () {
        const world = new World()
        const saga = Saga.make({
          name: "stolen",
          steps: [
            Saga.step<unknown>({
              name: "slow",
              action: (ctx) =>
                Effect.sleep("20 seconds").pipe(Effect.zipRight(world.action({ name: "slow" })(ctx))),
              timeout: "1 minute"
            })
          ]
        })
        const fiber = yield* Effect.fork(
          Saga.run(saga, null, { sagaId: "stolen-1", owner: "me", leaseFor: "9 seconds" })
        )
        yield* TestClock.adjust("1 second")
        // Simulate a partition: someone else takes the saga over (as a sweep would after expiry).
        const held = Option.getOrThrow(yield* log.load("stolen-1")).owner ?? ""
        yield* log.release("stolen-1", held)
        expect((yield* log.claimAbandoned({ owner: "other", leaseFor: "1 minute", limit: 1 })).length).toBe(1)
        yield* TestClock.adjust("3 seconds")
        const exit = yield* Effect.either(Fiber.join(fiber))
        expect(Either.isLeft(exit) && exit.left._tag).toBe("LeaseLostError")
        expect(world.actionCalls.get("slow")).toBeUndefined()
      })
    )
  )
})
