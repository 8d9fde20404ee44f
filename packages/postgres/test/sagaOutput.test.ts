/**
 * A step's output through the saga log, on real PostgreSQL (postgres.js) and on PGlite: under an
 * output schema a Date and a bigint reach later steps and compensations unchanged after a resume;
 * without one, an output that would not come back the same is refused before its completion is
 * logged (one action, no retry, the step compensated); plain JSON and records written before output
 * schemas read as they did.
 */
import { Saga, SagaLog, SagaOrchestrator } from "@accord/core"
import { describe, expect, it } from "@effect/vitest"
import { Effect, Either, Option, Schedule, Schema } from "effect"
import type postgres from "postgres"
import * as TestDatabase from "../src/TestDatabase.js"
import { type Backend, onPostgresAndPGlite } from "./support/backends.js"
import { type Log, crashing, sagaLogOn, expireLease as expireLeaseOn } from "./support/sagaLog.js"

const server = await TestDatabase.server()
const DB = "accord_t_saga_output"

const AT = new Date("2024-02-29T12:34:56.789Z")
const TOTAL = 12_345_678_901_234_567_890n
const Receipt = Schema.Struct({ at: Schema.Date, total: Schema.BigInt })
type Receipt = typeof Receipt.Type

/** Records of a run that writes SagaStarted, StepStarted and StepCompleted of its first step, then dies. */
const AFTER_FIRST_COMPLETION = 3

const suite = (label: string, open: () => Promise<Backend>) =>
  describe(`saga step outputs through PgSagaLog on ${label}`, () => {
    const { conn, withLog } = sagaLogOn(open)

    const sqlQuery = <T>(text: string, params: ReadonlyArray<unknown>) =>
      Effect.promise(async () => {
        const db = conn()
        return typeof db === "function"
          ? ((await db.unsafe(text, params as Array<postgres.ParameterOrJSON<never>>)) as unknown as Array<T>)
          : (await db.query<T>(text, params as Array<unknown>)).rows
      })
    /** The passage of time for a dead orchestrator's lease, on the database's clock. */
    const expireLease = (sagaId: string) => Effect.promise(() => expireLeaseOn(conn(), sagaId))
    /** The JSON a record kind of a step holds in the database. */
    const payloads = (sagaId: string, kind: string) =>
      sqlQuery<{ payload: Record<string, unknown> }>(
        "select payload from accord_saga_record where saga_id = $1 and kind = $2 order by seq",
        [sagaId, kind]
      ).pipe(Effect.map((rows) => rows.map((r) => r.payload)))

    const idOf = (name: string) => `${name}-${label.toLowerCase()}-${Date.now()}`

    /** charge (a Receipt) → invoice (reads it) → ship (refused): what each step and compensation saw. */
    const receipts = (output: "schema" | "none") => {
      const seen = {
        charge: 0,
        invoice: [] as Array<unknown>,
        chargeCompensation: [] as Array<Option.Option<unknown>>,
        invoiceCompensation: [] as Array<unknown>
      }
      const charge = Saga.step({
        name: "charge",
        action: () =>
          Effect.sync((): Receipt => {
            seen.charge++
            return { at: new Date(AT.getTime()), total: TOTAL }
          }),
        ...(output === "schema" ? { output: Receipt } : {}),
        compensation: (ctx) => Effect.sync(() => void seen.chargeCompensation.push(ctx.output)),
        retry: Schedule.recurs(3)
      })
      const saga = Saga.make({
        name: `receipts-${output}`,
        steps: [
          charge,
          Saga.step({
            name: "invoice",
            action: (ctx) =>
              Effect.sync(() => {
                seen.invoice.push(ctx.outputs.charge)
                return { invoiced: true }
              }),
            compensation: (ctx) => Effect.sync(() => void seen.invoiceCompensation.push(ctx.outputs.charge))
          }),
          Saga.step({
            name: "ship",
            action: () => Effect.fail(new Saga.StepBusinessError({ reason: "no carrier" }))
          })
        ]
      })
      return { saga, seen }
    }

    const expectReceipt = (value: unknown) => {
      const receipt = value as Receipt
      expect(receipt.at).toBeInstanceOf(Date)
      expect(receipt.at.getTime()).toBe(AT.getTime())
      expect(typeof receipt.total).toBe("bigint")
      expect(receipt.total).toBe(TOTAL)
    }

    it.live(
      "resumed from the log, later steps and compensations get a Date and a bigint output under a schema unchanged",
      () =>
        withLog((log) =>
          Effect.gen(function* () {
            const { saga, seen } = receipts("schema")
            const id = idOf("receipt-resume")
            const crashed = yield* Effect.exit(
              Saga.run(saga, null, { sagaId: id }).pipe(
                Effect.provideService(SagaLog.SagaLog, crashing(log, AFTER_FIRST_COMPLETION))
              )
            )
            expect(crashed._tag).toBe("Failure")
            expect(seen.charge).toBe(1)
            expect(seen.invoice).toEqual([])
            // The log holds the encoded form: plain JSON.
            expect(yield* payloads(id, "StepCompleted")).toEqual([
              { step: "charge", output: { at: AT.toISOString(), total: TOTAL.toString() } }
            ])
            yield* expireLease(id)
            const outcome = yield* Saga.resume(Saga.registry([saga]), id)
            expect(outcome).toMatchObject({ _tag: "Compensated", cause: { step: "ship", kind: "business" } })
            expect(seen.charge).toBe(1)
            expect(seen.invoice).toHaveLength(1)
            expectReceipt(seen.invoice[0])
            expect(seen.invoiceCompensation).toHaveLength(1)
            expectReceipt(seen.invoiceCompensation[0])
            expect(seen.chargeCompensation).toHaveLength(1)
            const compensated = seen.chargeCompensation[0]!
            expect(Option.isSome(compensated)).toBe(true)
            expectReceipt(Option.getOrThrow(compensated))
          })
        ),
      30_000
    )

    it.live("a completed saga's outputs are logged encoded and read back decoded by resume", () =>
      withLog(() =>
        Effect.gen(function* () {
          const charge = Saga.step({
            name: "charge",
            action: () => Effect.succeed({ at: new Date(AT.getTime()), total: TOTAL }),
            output: Receipt
          })
          const saga = Saga.make({ name: "receipts-completed", steps: [charge] })
          const id = idOf("receipt-completed")
          const outcome = yield* Saga.run(saga, null, { sagaId: id })
          expect(outcome._tag).toBe("Completed")
          expectReceipt(outcome._tag === "Completed" ? outcome.outputs.charge : undefined)
          const [ended] = yield* payloads(id, "SagaEnded")
          expect(ended).toMatchObject({
            outcome: { outputs: { charge: { at: AT.toISOString(), total: TOTAL.toString() } } }
          })
          expect(yield* Saga.resume(Saga.registry([saga]), id)).toEqual(outcome)
        })
      )
    )

    it.live(
      "without a schema an output holding a Date and a bigint is refused before its completion is logged: one action, no retry, the saga ends compensated",
      () =>
        withLog((log) =>
          Effect.gen(function* () {
            const { saga, seen } = receipts("none")
            const id = idOf("bigint-refused")
            const outcome = yield* Saga.run(saga, null, { sagaId: id })
            expect(outcome).toMatchObject({
              _tag: "Compensated",
              cause: { step: "charge", kind: "outputRefused", inDoubt: true },
              undone: ["charge"]
            })
            expect(outcome._tag === "Compensated" && outcome.cause.reason).toContain("output.at is a Date")
            expect(seen.charge).toBe(1)
            expect(seen.invoice).toEqual([])
            // The action acted, so it is compensated; its output was never logged.
            expect(seen.chargeCompensation).toEqual([Option.none()])
            const history = Option.getOrThrow(yield* log.load(id))
            expect(history.status).toBe("compensated")
            expect(history.owner).toBeNull()
            expect(history.records.map((r) => r._tag)).toEqual([
              "SagaStarted",
              "StepStarted",
              "StepFailed",
              "CompensationStarted",
              "CompensationCompleted",
              "SagaEnded"
            ])
            // Nothing is left for a sweep, and asking again runs nothing.
            expect(
              (yield* log.claimAbandoned({ owner: "sweeper", leaseFor: "1 second", limit: 1000 })).map(
                (h) => h.sagaId
              )
            ).not.toContain(id)
            expect(yield* Saga.resume(Saga.registry([saga]), id)).toEqual(outcome)
            expect(seen.charge).toBe(1)
          })
        )
    )

    it.live("without a schema a bare bigint output is refused too, and says where", () =>
      withLog(() =>
        Effect.gen(function* () {
          let actions = 0
          const saga = Saga.make({
            name: "bare-bigint",
            steps: [
              Saga.step({
                name: "count",
                action: () => Effect.sync(() => BigInt(++actions)),
                retry: Schedule.recurs(5)
              })
            ]
          })
          const outcome = yield* Saga.run(saga, null, { sagaId: idOf("bare-bigint") })
          expect(outcome).toMatchObject({ _tag: "Compensated", cause: { kind: "outputRefused" } })
          expect(outcome._tag === "Compensated" && outcome.cause.reason).toContain("output is a bigint")
          expect(actions).toBe(1)
        })
      )
    )

    it.live(
      "plain JSON outputs, null and a void output are logged and read back unchanged after a resume",
      () =>
        withLog((log) =>
          Effect.gen(function* () {
            const plain = { n: 1.5, s: "x", list: [1, null, "y"], nested: { ok: true, none: null } }
            const seen: Array<Readonly<Record<string, unknown>>> = []
            const saga = Saga.make({
              name: "plain-json",
              steps: [
                Saga.step({ name: "plain", action: () => Effect.succeed(structuredClone(plain)) }),
                Saga.step({ name: "nothing", action: () => Effect.succeed(null) }),
                Saga.step({ name: "void", action: () => Effect.void }),
                Saga.step({ name: "read", action: (ctx) => Effect.sync(() => void seen.push(ctx.outputs)) })
              ]
            })
            const id = idOf("plain-json")
            // SagaStarted, then StepStarted and StepCompleted of plain, nothing and void.
            yield* Effect.exit(
              Saga.run(saga, null, { sagaId: id }).pipe(
                Effect.provideService(SagaLog.SagaLog, crashing(log, 7))
              )
            )
            expect(seen).toEqual([])
            yield* expireLease(id)
            const outcome = yield* Saga.resume(Saga.registry([saga]), id)
            expect(outcome._tag).toBe("Completed")
            expect(seen).toEqual([{ plain, nothing: null, void: undefined }])
            expect("void" in (seen[0] ?? {})).toBe(true)
          })
        )
    )

    it.live(
      "records written before output schemas read as they did, and decode under a schema added since",
      () =>
        withLog((log) =>
          Effect.gen(function* () {
            const seen: Array<unknown> = []
            const Dated = Schema.Struct({ at: Schema.Date, note: Schema.String })
            const define = (output?: typeof Dated) =>
              Saga.make({
                name: "old-rows",
                steps: [
                  Saga.step({
                    name: "charge",
                    action: (): Effect.Effect<typeof Dated.Type> =>
                      Effect.die("a completed step does not run again"),
                    ...(output === undefined ? {} : { output })
                  }),
                  Saga.step({
                    name: "invoice",
                    action: (ctx) => Effect.sync(() => void seen.push(ctx.outputs.charge))
                  })
                ]
              })
            // What the log held for a step that returned { at: Date, note } before this change: the
            // Date as JSON.stringify wrote it.
            const oldRows = (id: string, output: unknown) =>
              Effect.gen(function* () {
                yield* log.start(
                  SagaLog.SagaRecord.SagaStarted({ sagaId: id, sagaType: "old-rows", input: null }),
                  {
                    owner: "old",
                    leaseFor: "1 minute"
                  }
                )
                yield* log.append(SagaLog.SagaRecord.StepStarted({ sagaId: id, step: "charge" }), "old")
                yield* log.append(
                  SagaLog.SagaRecord.StepCompleted({ sagaId: id, step: "charge", output }),
                  "old"
                )
                yield* expireLease(id)
              })
            const asBefore = idOf("old-rows-plain")
            yield* oldRows(asBefore, { at: AT.toISOString(), note: "n" })
            expect(yield* Saga.resume(Saga.registry([define()]), asBefore)).toMatchObject({
              _tag: "Completed"
            })
            expect(seen).toEqual([{ at: AT.toISOString(), note: "n" }])

            const decoded = idOf("old-rows-schema")
            yield* oldRows(decoded, { at: AT.toISOString(), note: "n" })
            const outcome = yield* Saga.resume(Saga.registry([define(Dated)]), decoded)
            expect(outcome._tag === "Completed" && outcome.outputs.charge).toEqual({ at: AT, note: "n" })
            expect(seen[1]).toEqual({ at: AT, note: "n" })

            // A logged output the schema cannot read: nothing runs, the lease is given back, the saga waits.
            const unreadable = idOf("old-rows-unreadable")
            yield* oldRows(unreadable, { at: "not a date", note: "n" })
            const failed = yield* Effect.either(Saga.resume(Saga.registry([define(Dated)]), unreadable))
            expect(Either.isLeft(failed) && failed.left).toMatchObject({
              _tag: "StepOutputDecodeError",
              sagaId: unreadable,
              step: "charge"
            })
            expect(seen).toHaveLength(2)
            const history = Option.getOrThrow(yield* log.load(unreadable))
            expect(history).toMatchObject({ status: "running", owner: null })
            expect(history.records.map((r) => r._tag)).toEqual([
              "SagaStarted",
              "StepStarted",
              "StepCompleted"
            ])
          })
        )
    )

    it.live(
      "a record the log cannot write (a bigint input) fails with a typed LogError, and nothing runs",
      () =>
        withLog((log) =>
          Effect.gen(function* () {
            let actions = 0
            const saga = Saga.make({
              name: "bigint-input",
              steps: [Saga.step({ name: "a", action: () => Effect.sync(() => void actions++) })]
            })
            const id = idOf("bigint-input")
            const started = yield* Effect.either(Saga.run(saga, { amount: 1n }, { sagaId: id }))
            expect(Either.isLeft(started) && started.left).toMatchObject({
              _tag: "LogError",
              operation: "start"
            })
            expect(actions).toBe(0)
            expect(Option.isNone(yield* log.load(id))).toBe(true)
          })
        )
    )

    it.live(
      "the Promise facade: an output schema carries a Date and a bigint across a resume; without one the step is refused and compensated",
      () =>
        withLog((log) =>
          Effect.gen(function* () {
            const seen: Array<unknown> = []
            const undone: Array<{ output: unknown; completed: boolean }> = []
            const define = (l: Log, output: boolean) =>
              new SagaOrchestrator.SagaOrchestrator({
                name: output ? "facade-receipts" : "facade-plain",
                log: l,
                retries: 2
              })
                .addStep({
                  name: "charge",
                  action: async () => ({ at: new Date(AT.getTime()), total: TOTAL }),
                  compensation: async (ctx) =>
                    void undone.push({ output: ctx.output, completed: ctx.completed }),
                  ...(output ? { output: Receipt } : {})
                })
                .addStep({
                  name: "invoice",
                  action: async (ctx) => {
                    seen.push(ctx.outputs.charge)
                    return "invoiced"
                  }
                })
            const id = idOf("facade-resume")
            const crashed = yield* Effect.promise(() =>
              define(crashing(log, AFTER_FIRST_COMPLETION), true)
                .execute(null, { sagaId: id })
                .then(
                  () => "finished",
                  () => "killed"
                )
            )
            expect(crashed).toBe("killed")
            yield* expireLease(id)
            const resumed = yield* Effect.promise(() => define(log, true).resume(id))
            expect(resumed.status).toBe("completed")
            expect(seen).toHaveLength(1)
            expectReceipt(seen[0])
            expectReceipt(resumed.outputs.charge)

            const refused = yield* Effect.promise(() => define(log, false).execute(null))
            expect(refused).toMatchObject({
              status: "compensated",
              failedStep: "charge",
              compensated: ["charge"]
            })
            expect(refused.error).toContain("output.at is a Date")
            expect(undone).toEqual([{ output: undefined, completed: false }])
            expect(seen).toHaveLength(1)
          })
        ),
      30_000
    )

    /**
     * PostgreSQL's jsonb refuses a NUL (22P05) and a lone UTF-16 surrogate (22P02). A step's output
     * or failure reason holding one made the log refuse the record: the saga stayed running, each
     * sweep ran the step's action again and failed the same way, and nothing was compensated.
     */
    const HALF = "\u{1F600}".slice(0, 1)
    const twoSteps = (name: string, second: () => Effect.Effect<unknown, Saga.StepBusinessError>) => {
      const seen = { reserve: 0, reserveUndone: 0, second: 0 }
      const saga = Saga.make({
        name,
        steps: [
          Saga.step({
            name: "reserve",
            action: () => Effect.sync(() => void seen.reserve++),
            compensation: () => Effect.sync(() => void seen.reserveUndone++)
          }),
          Saga.step({
            name: "second",
            action: () =>
              Effect.suspend(() => {
                seen.second++
                return second()
              }),
            compensation: () => Effect.void
          })
        ]
      })
      return { saga, seen }
    }
    const endsCompensatedOnce = (
      log: Log,
      id: string,
      seen: { reserve: number; reserveUndone: number; second: number }
    ) =>
      Effect.gen(function* () {
        const history = Option.getOrThrow(yield* log.load(id))
        expect(history.status).toBe("compensated")
        expect(history.owner).toBeNull()
        expect(seen).toEqual({ reserve: 1, reserveUndone: 1, second: 1 })
        // Nothing left for a sweep to run again.
        expect(
          (yield* log.claimAbandoned({ owner: "sweeper", leaseFor: "1 second", limit: 1000 })).map(
            (h) => h.sagaId
          )
        ).not.toContain(id)
      })

    for (const [what, text, where] of [
      ["a NUL", "a\u0000b", "output.note holds a NUL character"],
      ["a lone surrogate", `cut ${HALF}`, "output.note holds a lone UTF-16 surrogate"]
    ] as const) {
      it.live(
        `an output string holding ${what} is refused like a bigint: one action, the saga ends compensated`,
        () =>
          withLog((log) =>
            Effect.gen(function* () {
              const { saga, seen } = twoSteps(`jsonb-output-${what.replace(/ /g, "-")}`, () =>
                Effect.succeed({ note: text })
              )
              const id = idOf("jsonb-output")
              const outcome = yield* Saga.run(saga, null, { sagaId: id })
              expect(outcome).toMatchObject({
                _tag: "Compensated",
                cause: { step: "second", kind: "outputRefused" }
              })
              expect(outcome._tag === "Compensated" && outcome.cause.reason).toContain(where)
              yield* endsCompensatedOnce(log, id, seen)
            })
          )
      )

      it.live(
        `a failure reason holding ${what} is logged with U+FFFD in its place: the saga ends compensated`,
        () =>
          withLog((log) =>
            Effect.gen(function* () {
              const { saga, seen } = twoSteps(`jsonb-reason-${what.replace(/ /g, "-")}`, () =>
                Effect.fail(new Saga.StepBusinessError({ reason: `declined: ${text}` }))
              )
              const id = idOf("jsonb-reason")
              const outcome = yield* Saga.run(saga, null, { sagaId: id })
              expect(outcome).toMatchObject({
                _tag: "Compensated",
                cause: { step: "second", kind: "business" }
              })
              const reason = outcome._tag === "Compensated" ? outcome.cause.reason : ""
              expect(reason).toContain("\uFFFD")
              expect(reason.includes("\u0000") || reason.includes(HALF)).toBe(false)
              yield* endsCompensatedOnce(log, id, seen)
              // The log holds the same reason the caller got, and resume answers the same outcome.
              const [failed] = yield* payloads(id, "StepFailed")
              expect(failed).toMatchObject({ failure: { reason } })
              expect(yield* Saga.resume(Saga.registry([saga]), id)).toEqual(outcome)
            })
          )
      )
    }
  })

onPostgresAndPGlite(server, { db: DB, max: 4, skipped: "saga step outputs on PostgreSQL (no server)" }, suite)
