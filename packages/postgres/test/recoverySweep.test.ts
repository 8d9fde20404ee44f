import { TransactionId } from "@accord/core"
import type { PGlite } from "@electric-sql/pglite"
import { afterAll, beforeAll, describe, expect, it } from "@effect/vitest"
import { Cause, Duration, Effect, Fiber, Logger } from "effect"
import * as PgParticipant from "../src/PgParticipant.js"
import * as PgRecovery from "../src/PgRecovery.js"
import * as PgTransactionLog from "../src/PgTransactionLog.js"

describe("PgRecovery.sweep", () => {
  let dbA: PGlite
  let dbLog: PGlite
  beforeAll(async () => {
    ;[dbA, dbLog] = await Promise.all([PgParticipant.openPglite(), PgParticipant.openPglite()])
  }, 120_000)
  afterAll(async () => {
    await dbA?.close()
    await dbLog?.close()
  })

  it.live("a pass that dies (a log's bug) is logged and the sweep goes on", () =>
    Effect.scoped(
      Effect.gen(function* () {
        // A participant's bug no longer ends a pass (it is a failed call, reported unresolved); a
        // log's bug still does.
        const pa = yield* PgParticipant.makePglite({ name: "bank-a", db: dbA })
        const realLog = yield* PgTransactionLog.makePglite(dbLog)
        let reads = 0
        const log: typeof realLog = {
          ...realLog,
          unfinished: (options) =>
            Effect.suspend(() => {
              reads++
              return reads === 1 ? Effect.die(new Error("log bug")) : realLog.unfinished(options)
            })
        }
        const logged: Array<string> = []
        const capture = Logger.make(({ cause, message }) => {
          logged.push(`${String(message)} ${Cause.pretty(cause)}`)
        })
        const fiber = yield* PgRecovery.sweep({
          participants: [pa],
          log,
          every: Duration.millis(20),
          options: { orphanAfter: 0 }
        }).pipe(Effect.provide(Logger.replace(Logger.defaultLogger, capture)), Effect.fork)
        yield* Effect.sleep(Duration.millis(500))
        const exit = yield* Fiber.poll(fiber)
        yield* Fiber.interrupt(fiber)
        expect(exit._tag).toBe("None")
        expect(reads).toBeGreaterThan(1)
        expect(logged.some((l) => l.includes("recovery pass failed") && l.includes("log bug"))).toBe(true)
      })
    )
  )

  it.live("a pass that leaves branches unresolved is logged by the sweep, not dropped", () =>
    Effect.scoped(
      Effect.gen(function* () {
        const pa = yield* PgParticipant.makePglite({ name: "bank-a", db: dbA })
        const log = yield* PgTransactionLog.makePglite(dbLog)
        const txId = yield* TransactionId.make
        // The decision names a participant this sweep was not given: it stays in doubt.
        yield* log.decide({
          txId,
          decision: "commit",
          branches: [
            {
              branch: "bank-gone" as TransactionId.BranchName,
              gid: TransactionId.gid(txId, "bank-gone" as TransactionId.BranchName)
            }
          ],
          decidedAt: Date.now() - 60_000
        })
        const logged: Array<string> = []
        const capture = Logger.make(({ message }) => {
          logged.push(JSON.stringify(message))
        })
        const fiber = yield* PgRecovery.sweep({
          participants: [pa],
          log,
          every: Duration.seconds(10),
          options: { orphanAfter: 0, gc: false }
        }).pipe(Effect.provide(Logger.replace(Logger.defaultLogger, capture)), Effect.fork)
        yield* Effect.sleep(Duration.millis(500))
        yield* Fiber.interrupt(fiber)
        expect(
          logged.some((l) => l.includes("unresolved") && l.includes(txId) && l.includes("bank-gone"))
        ).toBe(true)
      })
    )
  )
})
