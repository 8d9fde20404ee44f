import { describe, expect, it } from "@effect/vitest"
import { Effect } from "effect"
import * as Saga from "../src/Saga.js"
import { SagaLog, makeMemory } from "../src/SagaLog.js"
import { World, step } from "./SagaWorld.js"

const withLog = <A, E>(f: (log: Effect.Effect.Success<typeof makeMemory>) => Effect.Effect<A, E, SagaLog>) =>
  Effect.flatMap(makeMemory, (log) => Effect.provideService(f(log), SagaLog, log))

describe("Saga: what an operator is told", () => {
  it.effect(
    "when several compensations of a group are stuck, the Stuck outcome names every one of them",
    () =>
      withLog(() =>
        Effect.gen(function* () {
          const world = new World()
          const saga = Saga.make({
            name: "group-stuck",
            steps: [
              step(world, { name: "order" }),
              Saga.parallel("hold", [
                step(world, { name: "reserve", compensation: "never", compensationRetries: 0 }),
                step(world, { name: "charge", compensation: "never", compensationRetries: 0 })
              ]),
              step(world, { name: "ship", action: "business" })
            ]
          })
          const outcome = yield* Saga.run(saga, null)
          expect(outcome).toMatchObject({ _tag: "Stuck", step: "reserve", phase: "compensation" })
          if (outcome._tag !== "Stuck") return
          // The refund of `charge` failed too: an operator reading the outcome (or SagaStuckError)
          // must learn it, or resolve the saga after releasing the stock only.
          expect(outcome.cause).toContain("reserve undo failed")
          expect(outcome.cause).toContain("charge")
          expect(outcome.cause).toContain("charge undo failed")
          const error = yield* Effect.flip(Saga.orFail(outcome))
          expect(error.message).toContain("charge")
        })
      )
  )
})

describe("Saga: what an operator is told after the pivot", () => {
  it.effect(
    "when several actions of a group after the pivot fail, the Stuck outcome names every one of them",
    () =>
      withLog(() =>
        Effect.gen(function* () {
          const world = new World()
          const saga = Saga.make({
            name: "group-stuck-forward",
            steps: [
              step(world, { name: "charge", pivot: true, compensation: "none" }),
              Saga.parallel("fulfil", [
                step(world, { name: "ship", action: "business" }),
                step(world, { name: "invoice", action: "business" })
              ])
            ]
          })
          const outcome = yield* Saga.run(saga, null)
          expect(outcome).toMatchObject({ _tag: "Stuck", step: "ship", phase: "action" })
          if (outcome._tag !== "Stuck") return
          expect(outcome.cause).toContain("ship refused")
          expect(outcome.cause).toContain("invoice refused")
        })
      )
  )
})
