/**
 * A step's output is what the log keeps of it: under an `output` schema it is logged encoded and read
 * back decoded (in the run and after a resume alike); without one it must be plain JSON, else it is
 * refused before its completion is logged and the step, which did act, is compensated. On the
 * in-memory log, which keeps what it is given by reference: the engine hands it only plain JSON, so
 * the values a resume reads here are the ones `PgSagaLog` gives back (tested there too).
 */
import { describe, expect, it } from "@effect/vitest"
import { Effect, Either, Option, Schedule, Schema, TestClock } from "effect"
import * as Saga from "../src/Saga.js"
import { SagaLog, SagaRecord, makeMemory } from "../src/SagaLog.js"
import { SagaOrchestrator } from "../src/SagaOrchestrator.js"

type Log = Effect.Effect.Success<typeof makeMemory>

const withLog = <A, E>(f: (log: Log) => Effect.Effect<A, E, SagaLog>) =>
  Effect.flatMap(makeMemory, (log) => Effect.provideService(f(log), SagaLog, log))

/** The log of an orchestrator that dies before its `after + 1`-th write. */
const crashing = (log: Log, after: number): Log => {
  let written = 0
  const guard = <A, E>(write: Effect.Effect<A, E>) =>
    Effect.suspend(() => {
      if (written >= after) return Effect.die("orchestrator killed")
      written++
      return write
    })
  return { ...log, start: (r, l) => guard(log.start(r, l)), append: (r, o) => guard(log.append(r, o)) }
}

const AT = new Date("2024-02-29T12:34:56.789Z")
const TOTAL = 12_345_678_901_234_567_890n
const Receipt = Schema.Struct({ at: Schema.Date, total: Schema.BigInt })

const completedOutput = (log: Log, sagaId: string, step: string) =>
  Effect.map(log.load(sagaId), (h) =>
    Option.getOrThrow(h).records.flatMap((r) =>
      r._tag === "StepCompleted" && r.step === step ? [r.output] : []
    )
  )

describe("Saga step outputs", () => {
  it.effect(
    "under an output schema the log holds the encoded output and a resume hands later steps the decoded one",
    () =>
      withLog((log) =>
        Effect.gen(function* () {
          const seen: Array<unknown> = []
          const saga = Saga.make({
            name: "receipts",
            steps: [
              Saga.step({
                name: "charge",
                action: () => Effect.succeed({ at: AT, total: TOTAL }),
                output: Receipt
              }),
              Saga.step({
                name: "invoice",
                action: (ctx) => Effect.sync(() => void seen.push(ctx.outputs.charge))
              })
            ]
          })
          // SagaStarted, StepStarted and StepCompleted of charge, then the orchestrator dies.
          yield* Effect.exit(
            Saga.run(saga, null, { sagaId: "receipt-1" }).pipe(
              Effect.provideService(SagaLog, crashing(log, 3))
            )
          )
          expect(yield* completedOutput(log, "receipt-1", "charge")).toEqual([
            { at: AT.toISOString(), total: TOTAL.toString() }
          ])
          yield* TestClock.adjust("1 minute") // the dead drive's lease runs out
          const outcome = yield* Saga.resume(Saga.registry([saga]), "receipt-1")
          expect(seen).toEqual([{ at: AT, total: TOTAL }])
          expect(outcome._tag === "Completed" && outcome.outputs).toEqual({
            charge: { at: AT, total: TOTAL },
            invoice: undefined
          })
          const ended = Option.getOrThrow(yield* log.load("receipt-1")).records.at(-1)
          expect(ended?._tag === "SagaEnded" && ended.outcome).toMatchObject({
            outputs: { charge: { at: AT.toISOString(), total: TOTAL.toString() } }
          })
        })
      )
  )

  it.effect(
    "in an uninterrupted run later steps read what a resume would: the output as its schema decodes it",
    () =>
      withLog(() =>
        Effect.gen(function* () {
          const seen: Array<unknown> = []
          const saga = Saga.make({
            name: "decoded-in-run",
            steps: [
              Saga.step({
                name: "charge",
                action: () => Effect.succeed({ at: AT, total: TOTAL, scratch: "not in the schema" }),
                output: Receipt
              }),
              Saga.step({
                name: "invoice",
                action: (ctx) => Effect.sync(() => void seen.push(ctx.outputs.charge))
              })
            ]
          })
          yield* Saga.run(saga, null)
          expect(seen).toEqual([{ at: AT, total: TOTAL }])
        })
      )
  )

  it.effect("a compensation gets the decoded output of its completed step", () =>
    withLog(() =>
      Effect.gen(function* () {
        const undone: Array<Option.Option<unknown>> = []
        const saga = Saga.make({
          name: "decoded-compensation",
          steps: [
            Saga.step({
              name: "charge",
              action: () => Effect.succeed({ at: AT, total: TOTAL }),
              output: Receipt,
              compensation: (ctx) => Effect.sync(() => void undone.push(ctx.output))
            }),
            Saga.step({
              name: "ship",
              action: () => Effect.fail(new Saga.StepBusinessError({ reason: "no" }))
            })
          ]
        })
        expect((yield* Saga.run(saga, null))._tag).toBe("Compensated")
        expect(undone).toEqual([Option.some({ at: AT, total: TOTAL })])
      })
    )
  )

  it.effect(
    "without a schema a Date output is refused before its completion is logged: not retried, compensated with no output",
    () =>
      withLog((log) =>
        Effect.gen(function* () {
          let actions = 0
          const undone: Array<Option.Option<unknown>> = []
          const saga = Saga.make({
            name: "refused",
            steps: [
              Saga.step({
                name: "charge",
                action: () => Effect.sync(() => ({ id: ++actions, at: new Date(AT.getTime()) })),
                compensation: (ctx) => Effect.sync(() => void undone.push(ctx.output)),
                retry: Schedule.recurs(5)
              }),
              Saga.step({ name: "invoice", action: () => Effect.die("must not run") })
            ]
          })
          const outcome = yield* Saga.run(saga, null, { sagaId: "refused-1" })
          expect(outcome).toMatchObject({
            _tag: "Compensated",
            cause: { step: "charge", kind: "outputRefused", inDoubt: true },
            undone: ["charge"]
          })
          expect(outcome._tag === "Compensated" && outcome.cause.reason).toContain("output.at is a Date")
          expect(actions).toBe(1)
          expect(undone).toEqual([Option.none()])
          expect(yield* completedOutput(log, "refused-1", "charge")).toEqual([])
        })
      )
  )

  it.effect("every kind of value JSON would not give back is refused, and where it sits is named", () =>
    withLog(() =>
      Effect.gen(function* () {
        const cases: ReadonlyArray<readonly [unknown, string]> = [
          [{ n: 1n }, "output.n is a bigint"],
          [{ m: new Map() }, "output.m is a Map"],
          [{ s: [1, new Set()] }, "output.s[1] is a Set"],
          [{ gone: undefined }, "output.gone is undefined"],
          [{ x: Number.NaN }, "output.x is NaN"],
          [Object.assign(new Array<number>(2), { 0: 1 }), "output[1] is a hole"],
          [new (class Money {})(), "output is a Money"]
        ]
        for (const [value, where] of cases) {
          const saga = Saga.make({
            name: "kinds",
            steps: [Saga.step({ name: "s", action: () => Effect.succeed(value) })]
          })
          const outcome = yield* Saga.run(saga, null)
          expect(outcome._tag === "Compensated" && outcome.cause).toMatchObject({ kind: "outputRefused" })
          expect(outcome._tag === "Compensated" && outcome.cause.reason).toContain(where)
        }
      })
    )
  )

  it.effect("an output schema whose encoded side is not plain JSON is refused the same way", () =>
    withLog(() =>
      Effect.gen(function* () {
        const saga = Saga.make({
          name: "self-encoded",
          steps: [Saga.step({ name: "s", action: () => Effect.succeed(AT), output: Schema.DateFromSelf })]
        })
        const outcome = yield* Saga.run(saga, null)
        expect(outcome._tag === "Compensated" && outcome.cause.kind).toBe("outputRefused")
        expect(outcome._tag === "Compensated" && outcome.cause.reason).toContain(
          "the output schema's encoded form must be plain JSON: output is a Date"
        )
      })
    )
  )

  it.effect("plain JSON, null and a void output are kept as they are", () =>
    withLog(() =>
      Effect.gen(function* () {
        const plain = { n: -1.5, list: [1, null, "x"], nested: { ok: true } }
        const saga = Saga.make({
          name: "plain",
          steps: [
            Saga.step({ name: "plain", action: () => Effect.succeed(plain) }),
            Saga.step({ name: "nothing", action: () => Effect.succeed(null) }),
            Saga.step({ name: "void", action: () => Effect.void })
          ]
        })
        const outcome = yield* Saga.run(saga, null)
        expect(outcome._tag === "Completed" && outcome.outputs).toEqual({
          plain,
          nothing: null,
          void: undefined
        })
      })
    )
  )

  it.effect("after the pivot, a refused output leaves the saga stuck at that step's action", () =>
    withLog(() =>
      Effect.gen(function* () {
        const saga = Saga.make({
          name: "after-pivot",
          steps: [
            Saga.step({ name: "ship", action: () => Effect.succeed("shipped"), pivot: true }),
            Saga.step({ name: "notify", action: () => Effect.succeed({ sentAt: new Date(AT.getTime()) }) })
          ]
        })
        const outcome = yield* Saga.run(saga, null)
        expect(outcome).toMatchObject({ _tag: "Stuck", step: "notify", phase: "action" })
        expect(outcome._tag === "Stuck" && outcome.cause).toContain("outputRefused: ")
      })
    )
  )

  it.effect(
    "a logged output the schema cannot decode stops the resume before anything runs and frees the saga",
    () =>
      withLog((log) =>
        Effect.gen(function* () {
          const saga = Saga.make({
            name: "unreadable",
            steps: [
              Saga.step({
                name: "charge",
                action: () => Effect.die("completed: not run again"),
                output: Receipt
              }),
              Saga.step({ name: "invoice", action: () => Effect.die("must not run") })
            ]
          })
          yield* log.restore({
            sagaId: "unreadable-1",
            sagaType: "unreadable",
            input: null,
            status: "running",
            owner: null,
            leaseUntil: null,
            records: [
              SagaRecord.SagaStarted({ sagaId: "unreadable-1", sagaType: "unreadable", input: null }),
              SagaRecord.StepStarted({ sagaId: "unreadable-1", step: "charge" }),
              SagaRecord.StepCompleted({
                sagaId: "unreadable-1",
                step: "charge",
                output: { at: "soon", total: "1" }
              })
            ]
          })
          const resumed = yield* Effect.either(Saga.resume(Saga.registry([saga]), "unreadable-1"))
          expect(Either.isLeft(resumed) && resumed.left).toBeInstanceOf(Saga.StepOutputDecodeError)
          expect(Either.isLeft(resumed) && resumed.left).toMatchObject({
            sagaId: "unreadable-1",
            step: "charge"
          })
          const history = Option.getOrThrow(yield* log.load("unreadable-1"))
          expect(history).toMatchObject({ status: "running", owner: null })
          expect(history.records).toHaveLength(3)
        })
      )
  )

  it("the Promise facade: a step resolving to a Date is refused and compensated; with an output schema it is kept", async () => {
    const undone: Array<{ readonly output: unknown; readonly completed: boolean }> = []
    const define = (withSchema: boolean) =>
      new SagaOrchestrator({ retries: 3 })
        .addStep({
          name: "book",
          action: async () => ({ at: new Date(AT.getTime()), total: TOTAL }),
          compensation: async (ctx) => void undone.push({ output: ctx.output, completed: ctx.completed }),
          ...(withSchema ? { output: Receipt } : {})
        })
        .addStep({
          name: "fail",
          action: async () => {
            throw new Error("declined")
          }
        })
    const refused = await define(false).execute()
    expect(refused).toMatchObject({ status: "compensated", failedStep: "book", compensated: ["book"] })
    expect(refused.error).toContain("output.at is a Date")
    expect(undone).toEqual([{ output: undefined, completed: false }])
    const kept = await define(true).execute()
    expect(kept).toMatchObject({ status: "compensated", failedStep: "fail", compensated: ["book"] })
    expect(kept.outputs).toEqual({ book: { at: AT, total: TOTAL } })
    expect(undone[1]).toEqual({ output: { at: AT, total: TOTAL }, completed: true })
  })
})
