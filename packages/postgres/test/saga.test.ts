/**
 * PgSagaLog on real PostgreSQL (and PGlite): records, fencing, resumption after a crash at every
 * record, stuck sagas, operator retry.
 */
import { Saga, SagaLog, SagaOrchestrator } from "@accord/core"
import { describe, expect, it } from "@effect/vitest"
import { Effect, Either, Exit, Option, Schedule } from "effect"
import * as TestDatabase from "../src/TestDatabase.js"
import { type Backend, onPostgresAndPGlite } from "./support/backends.js"
import { crashing, sagaLogOn, expireLease } from "./support/sagaLog.js"

const server = await TestDatabase.server()
const DB = "accord_t_saga_log"

/** Steps that record what they did in a plain map (the world is not what is under test here). */
const world = () => {
  const applied = new Set<string>()
  const calls: Array<string> = []
  const mk = (name: string, fail: "no" | "business" | "compensation" = "no") =>
    Saga.step<unknown>({
      name,
      action: (ctx) =>
        Effect.suspend(() => {
          calls.push(`action:${name}`)
          if (fail === "business")
            return Effect.fail(new Saga.StepBusinessError({ reason: `${name} refused` }))
          applied.add(ctx.key)
          return Effect.succeed({ done: name, n: ctx.attempt })
        }),
      compensation: (ctx) =>
        Effect.suspend(() => {
          calls.push(`compensation:${name}`)
          if (fail === "compensation")
            return Effect.fail(new Saga.StepTransientError({ reason: `${name} undo failed` }))
          applied.delete(ctx.key)
          return Effect.void
        }),
      retry: Schedule.recurs(1),
      compensationRetry: Schedule.recurs(1)
    })
  return { applied, calls, mk }
}

/** A promise and the function that settles it. */
const gate = () => {
  let open: () => void = () => {}
  const opened = new Promise<void>((resolve) => {
    open = resolve
  })
  return { opened, open }
}

const suite = (label: string, open: () => Promise<Backend>) =>
  describe(`PgSagaLog on ${label}`, () => {
    const { conn, withLog } = sagaLogOn(open)

    it.live("records a saga's history in order and reloads it", () =>
      withLog((log) =>
        Effect.gen(function* () {
          const w = world()
          const saga = Saga.make({
            name: "order",
            steps: [w.mk("a"), Saga.parallel("g", [w.mk("b"), w.mk("c")])]
          })
          const outcome = yield* Saga.run(saga, { orderId: 7, items: ["x"] })
          expect(outcome._tag).toBe("Completed")
          const history = Option.getOrThrow(yield* log.load(outcome.sagaId))
          expect(history).toMatchObject({
            sagaType: "order",
            input: { orderId: 7, items: ["x"] },
            status: "completed",
            owner: null
          })
          // The group's members interleave freely; the rest is in order.
          const tags = history.records.map((r) => r._tag)
          expect(tags.slice(0, 3)).toEqual(["SagaStarted", "StepStarted", "StepCompleted"])
          expect([...tags.slice(3, 7)].sort()).toEqual([
            "StepCompleted",
            "StepCompleted",
            "StepStarted",
            "StepStarted"
          ])
          expect(tags[7]).toBe("SagaEnded")
          const completedA = history.records[2]
          expect(completedA).toMatchObject({ _tag: "StepCompleted", step: "a", output: { done: "a", n: 1 } })
          const ended = history.records[7]
          expect(ended?._tag === "SagaEnded" && ended.outcome).toEqual(outcome)
          // An ended saga resumes to its recorded outcome without running anything.
          const calls = w.calls.length
          expect(yield* Saga.resume(Saga.registry([saga]), outcome.sagaId)).toEqual(outcome)
          expect(w.calls.length).toBe(calls)
        })
      )
    )

    it.live("fences writes by owner and refuses a second start of one id", () =>
      withLog((log) =>
        Effect.gen(function* () {
          const id = `fence-${Date.now()}`
          const started = SagaLog.SagaRecord.SagaStarted({ sagaId: id, sagaType: "t", input: null })
          yield* log.start(started, { owner: "me", leaseFor: "1 minute" })
          const again = yield* Effect.either(log.start(started, { owner: "you", leaseFor: "1 minute" }))
          expect(Either.isLeft(again) && again.left).toMatchObject({ _tag: "SagaBusyError", owner: "me" })
          const foreign = yield* Effect.either(
            log.append(SagaLog.SagaRecord.StepStarted({ sagaId: id, step: "a" }), "you")
          )
          expect(Either.isLeft(foreign) && foreign.left._tag).toBe("LeaseLostError")
          const busy = yield* Effect.either(log.claim(id, { owner: "you", leaseFor: "1 minute" }))
          expect(Either.isLeft(busy) && busy.left._tag).toBe("SagaBusyError")
          expect(yield* log.renewLease(id, { owner: "you", leaseFor: "1 minute" })).toBe(false)
          expect(yield* log.renewLease(id, { owner: "me", leaseFor: "1 minute" })).toBe(true)
          yield* log.release(id, "me")
          const claimed = yield* log.claim(id, { owner: "you", leaseFor: "1 minute" })
          expect(claimed.owner).toBe("you")
          yield* log.append(SagaLog.SagaRecord.StepStarted({ sagaId: id, step: "a" }), "you")
          const stale = yield* Effect.either(
            log.append(SagaLog.SagaRecord.StepCompleted({ sagaId: id, step: "a", output: 1 }), "me")
          )
          expect(Either.isLeft(stale) && stale.left._tag).toBe("LeaseLostError")
          expect(Option.getOrThrow(yield* log.load(id)).records.map((r) => r._tag)).toEqual([
            "SagaStarted",
            "StepStarted"
          ])
          const missing = yield* Effect.either(log.claim("nope-nope", { owner: "x", leaseFor: "1 second" }))
          expect(Either.isLeft(missing) && missing.left._tag).toBe("SagaNotFoundError")
        })
      )
    )

    it.live("claimAbandoned takes running sagas whose lease expired, never live or ended ones", () =>
      withLog((log) =>
        Effect.gen(function* () {
          const tag = `${label.toLowerCase()}-${Date.now()}`
          const started = (id: string) =>
            SagaLog.SagaRecord.SagaStarted({ sagaId: id, sagaType: "abandon", input: null })
          yield* log.start(started(`live-${tag}`), { owner: "alive", leaseFor: "1 minute" })
          yield* log.start(started(`dead-${tag}`), { owner: "dead", leaseFor: "1 millis" })
          yield* log.start(started(`done-${tag}`), { owner: "done", leaseFor: "1 millis" })
          const done = Saga.Outcome.Completed({ sagaId: `done-${tag}`, outputs: {} })
          yield* log.append(SagaLog.SagaRecord.SagaEnded({ sagaId: `done-${tag}`, outcome: done }), "done")
          yield* Effect.sleep("5 millis") // let the 1 ms lease pass on the database clock
          const claimed = (yield* log.claimAbandoned({
            owner: "sweeper",
            leaseFor: "1 minute",
            limit: 100
          })).map((h) => h.sagaId)
          expect(claimed).toContain(`dead-${tag}`)
          expect(claimed).not.toContain(`live-${tag}`)
          expect(claimed).not.toContain(`done-${tag}`)
          const again = (yield* log.claimAbandoned({
            owner: "sweeper-2",
            leaseFor: "1 minute",
            limit: 100
          })).map((h) => h.sagaId)
          expect(again).not.toContain(`dead-${tag}`)
          expect(Option.getOrThrow(yield* log.load(`dead-${tag}`)).owner).toBe("sweeper")
        })
      )
    )

    it.live(
      "killed after each record, resumed by the restarted orchestrator: same end state as an uninterrupted run",
      () =>
        withLog((log) =>
          Effect.gen(function* () {
            const definition = (w: ReturnType<typeof world>) =>
              Saga.make({
                name: "crashy",
                steps: [w.mk("a"), Saga.parallel("g", [w.mk("b"), w.mk("c")]), w.mk("d", "business")]
              })
            const ref = world()
            const refOutcome = yield* Saga.run(definition(ref), null)
            expect(refOutcome._tag).toBe("Compensated")
            const total = Option.getOrThrow(yield* log.load(refOutcome.sagaId)).records.length
            for (let k = 1; k < total; k++) {
              const w = world()
              const saga = definition(w)
              const id = `crash-${label}-${k}-${Date.now()}`
              const exit = yield* Effect.exit(
                Saga.run(saga, null, { sagaId: id, owner: "node-1" }).pipe(
                  Effect.provideService(SagaLog.SagaLog, crashing(log, k))
                )
              )
              expect(Exit.isFailure(exit)).toBe(true)
              expect(Option.getOrThrow(yield* log.load(id)).records.length).toBe(k)
              // The restarted process has the same configured owner but not the dead drive's token:
              // it must wait for that lease to run out.
              const early = yield* Effect.either(Saga.resume(Saga.registry([saga]), id, { owner: "node-1" }))
              expect(Either.isLeft(early) && early.left._tag).toBe("SagaBusyError")
              yield* Effect.promise(() => expireLease(conn(), id))
              const resumed = yield* Saga.resume(Saga.registry([saga]), id, { owner: "node-1" })
              const summary = (o: Saga.Outcome) => ({
                k,
                tag: o._tag,
                cause: o._tag === "Compensated" ? o.cause.step : "",
                // A resumed run may add null compensations of in-doubt steps (b, c, d never
                // acted or were undone): what must agree is every step the reference undid.
                undidReference:
                  o._tag === "Compensated" && refOutcome._tag === "Compensated"
                    ? refOutcome.undone.every((step) => o.undone.includes(step))
                    : false
              })
              expect(summary(resumed)).toEqual({ ...summary(refOutcome), k })
              expect(w.applied.size).toBe(0)
              expect(Option.getOrThrow(yield* log.load(id)).status).toBe("compensated")
            }
          })
        ),
      60_000
    )

    it.live("two orchestrators configured with one owner never drive one saga at once", () =>
      withLog((log) =>
        Effect.gen(function* () {
          const charging = gate()
          const replied = gate()
          let charges = 0
          const define = () =>
            new SagaOrchestrator.SagaOrchestrator({
              name: "replicated",
              owner: "node-1",
              log,
              retries: 0
            }).addStep({
              name: "charge",
              action: async () => {
                charges++
                if (charges === 1) {
                  charging.open()
                  await replied.opened
                }
                return charges
              }
            })
          const [a, b] = [define(), define()]
          const id = `replicas-${label.toLowerCase()}-${Date.now()}`
          const first = a.execute(null, { sagaId: id })
          yield* Effect.promise(() => charging.opened)
          const second = yield* Effect.promise(() =>
            b.resume(id).then(
              () => "resumed",
              (e: { readonly _tag?: string }) => e._tag
            )
          )
          expect(second).toBe("SagaBusyError")
          replied.open()
          expect(yield* Effect.promise(() => first)).toMatchObject({ status: "completed" })
          expect(charges).toBe(1)
          const history = Option.getOrThrow(yield* log.load(id))
          expect(history.records.filter((r) => r._tag === "StepStarted").length).toBe(1)
          expect(history.owner).toBeNull()
        })
      )
    )

    it.live("a stuck saga is recorded durably, listed for operators, and retryStuck finishes it", () =>
      withLog((log) =>
        Effect.gen(function* () {
          let broken = true
          const applied = new Set<string>()
          const saga = Saga.make({
            name: "stuckable",
            steps: [
              Saga.step<unknown>({
                name: "charge",
                action: (ctx) => Effect.sync(() => applied.add(ctx.key)),
                compensation: (ctx) =>
                  broken
                    ? Effect.fail(new Saga.StepTransientError({ reason: "refund API down" }))
                    : Effect.sync(() => applied.delete(ctx.key)),
                compensationRetry: Schedule.recurs(2)
              }),
              Saga.step<unknown>({
                name: "ship",
                action: () => Effect.fail(new Saga.StepBusinessError({ reason: "no carrier" }))
              })
            ]
          })
          const stuck = yield* Saga.run(saga, null)
          expect(stuck).toMatchObject({ _tag: "Stuck", step: "charge", phase: "compensation" })
          const listed = yield* log.list({ status: "stuck" })
          expect(listed.map((h) => h.sagaId)).toContain(stuck.sagaId)
          // A sweep does not pick stuck sagas up: they wait for an operator.
          expect(
            (yield* log.claimAbandoned({ owner: "sweeper", leaseFor: "1 second", limit: 1000 })).map(
              (h) => h.sagaId
            )
          ).not.toContain(stuck.sagaId)
          broken = false
          const done = yield* Saga.retryStuck(Saga.registry([saga]), stuck.sagaId, {
            note: "refund API back"
          })
          expect(done).toMatchObject({ _tag: "Compensated", undone: ["charge"] })
          expect(applied.size).toBe(0)
          const history = Option.getOrThrow(yield* log.load(stuck.sagaId))
          expect(history.status).toBe("compensated")
          expect(history.records.filter((r) => r._tag === "SagaEnded").length).toBe(2)
        })
      )
    )
  })

onPostgresAndPGlite(server, { db: DB, max: 4, skipped: "PgSagaLog on PostgreSQL (no server)" }, suite)
