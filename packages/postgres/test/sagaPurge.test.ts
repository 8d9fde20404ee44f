/**
 * `PgSagaLog.purge`: ended sagas (completed, compensated) older than the retention are deleted with
 * their records, in batches; running and stuck sagas are kept whatever their age; a purged saga's id
 * runs again (the retention rule the doc states). PostgreSQL and PGlite.
 */
import { Saga } from "@accord/core"
import { describe, expect, it } from "@effect/vitest"
import { Effect, Schedule } from "effect"
import * as PgSagaLog from "../src/PgSagaLog.js"
import * as TestDatabase from "../src/TestDatabase.js"
import { type Backend, onPostgresAndPGlite } from "./support/backends.js"
import { sagaLogOn } from "./support/sagaLog.js"

const server = await TestDatabase.server()

const step = (name: string, fail: "no" | "action" | "compensation" = "no") =>
  Saga.step<string>({
    name,
    action: () =>
      fail === "action"
        ? Effect.fail(new Saga.StepBusinessError({ reason: `${name} refused` }))
        : Effect.succeed(name),
    compensation: () =>
      fail === "compensation"
        ? Effect.fail(new Saga.StepTransientError({ reason: "undo failed" }))
        : Effect.void,
    retry: Schedule.recurs(0),
    compensationRetry: Schedule.recurs(0)
  })

const suite = (label: string, open: () => Promise<Backend>) =>
  describe(`PgSagaLog.purge on ${label}`, () => {
    const { conn, withLog } = sagaLogOn(open)
    const query = async <T>(text: string): Promise<Array<T>> => {
      const c = conn()
      return typeof c === "function"
        ? ((await c.unsafe(text)) as unknown as Array<T>)
        : (await c.query<T>(text)).rows
    }
    const statuses = () =>
      Effect.promise(async () =>
        (
          await query<{ saga_id: string; status: string }>(
            "select saga_id, status from accord_saga order by saga_id"
          )
        ).map((r) => `${r.saga_id}:${r.status}`)
      )

    it.live(
      "deletes only ended sagas older than the retention, with their records; a purged id runs again",
      () =>
        withLog((log) =>
          Effect.gen(function* () {
            const completed = Saga.make({ name: "ok", steps: [step("a")] })
            const compensated = Saga.make({ name: "no", steps: [step("a"), step("b", "action")] })
            const stuck = Saga.make({
              name: "stuck",
              steps: [step("a", "compensation"), step("b", "action")]
            })
            for (let i = 0; i < 3; i++) yield* Saga.run(completed, null, { sagaId: `done-${i}` })
            yield* Saga.run(compensated, null, { sagaId: "undone-0" })
            expect((yield* Saga.run(stuck, null, { sagaId: "stuck-0" }))._tag).toBe("Stuck")
            yield* log.start(
              { _tag: "SagaStarted", sagaId: "running-0", sagaType: "ok", input: null },
              { owner: "elsewhere", leaseFor: "1 minute" }
            )
            yield* Saga.run(completed, null, { sagaId: "recent-0" })
            yield* Effect.promise(() =>
              query(
                "update accord_saga set updated_at = now() - interval '3 days' where saga_id <> 'recent-0'"
              )
            )

            expect(yield* Effect.promise(() => PgSagaLog.purge(conn(), { olderThan: "7 days" }))).toBe(0)
            // Batches of 2: the four old ended sagas in three statements.
            expect(
              yield* Effect.promise(() => PgSagaLog.purge(conn(), { olderThan: "1 day", batch: 2 }))
            ).toBe(4)
            expect(yield* statuses()).toEqual(["recent-0:completed", "running-0:running", "stuck-0:stuck"])
            const orphans = yield* Effect.promise(() =>
              query<{ n: number }>(
                "select count(*)::int as n from accord_saga_record r where not exists (select 1 from accord_saga s where s.saga_id = r.saga_id)"
              )
            )
            expect(orphans[0]?.n).toBe(0)
            // What the retention rule warns about: the id of a purged saga runs again; a kept one is refused.
            expect((yield* Saga.run(completed, null, { sagaId: "done-0" }))._tag).toBe("Completed")
            const again = yield* Effect.either(Saga.run(completed, null, { sagaId: "recent-0" }))
            expect(again._tag === "Left" && again.left._tag).toBe("SagaBusyError")
          })
        )
    )

    it("refuses a retention or batch that is not positive", async () => {
      for (const olderThan of [0, -1, "soon", Number.POSITIVE_INFINITY]) {
        await expect(
          PgSagaLog.purge(conn(), {
            olderThan: olderThan as Parameters<typeof PgSagaLog.purge>[1]["olderThan"]
          })
        ).rejects.toThrow(RangeError)
      }
      await expect(PgSagaLog.purge(conn(), { olderThan: "1 day", batch: 0 })).rejects.toThrow(RangeError)
    })
  })

onPostgresAndPGlite(
  server,
  { db: "accord_t_saga_purge", max: 6, skipped: "PgSagaLog.purge on PostgreSQL (no server)" },
  suite
)
