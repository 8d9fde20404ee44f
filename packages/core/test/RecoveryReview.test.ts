import { describe, expect, it } from "@effect/vitest"
import { Cause, Duration, Effect, Fiber, Logger, Schedule, TestClock } from "effect"
import * as Recovery from "../src/Recovery.js"
import * as TransactionId from "../src/TransactionId.js"
import * as TransactionLog from "../src/TransactionLog.js"
import * as MemoryParticipant from "./support/MemoryParticipant.js"

describe("Recovery review", () => {
  it.effect(
    "a heuristic of a decision that stays unfinished (another branch unreachable) is recorded once, not on every pass",
    () =>
      Effect.gen(function* () {
        const log = yield* TransactionLog.makeMemory
        const a = yield* MemoryParticipant.make("bank-a")
        const b = yield* MemoryParticipant.make("bank-b")
        const txId = yield* TransactionId.make
        const gidA = TransactionId.gid(txId, a.participant.name)
        const gidB = TransactionId.gid(txId, b.participant.name)
        // A was rolled back by hand after the commit decision; B's participant is gone (not given).
        yield* a.forceRollback(gidA)
        yield* b.seedPrepared(gidB)
        yield* log.decide({
          txId,
          decision: "commit",
          branches: [
            { branch: a.participant.name, gid: gidA },
            { branch: b.participant.name, gid: gidB }
          ],
          decidedAt: 0
        })
        const pass = Recovery.run([a.participant], { orphanAfter: 0, retrySchedule: Schedule.stop }).pipe(
          Effect.provideService(TransactionLog.TransactionLog, log)
        )
        const reports = [yield* pass, yield* pass, yield* pass]
        for (const r of reports) expect(r.unresolved.map((u) => u.branch)).toEqual(["bank-b"])
        // Still a heuristic outcome of the transaction, so each pass reports it ...
        expect(reports.map((r) => r.heuristics.map((h) => h.branch))).toEqual([
          ["bank-a"],
          ["bank-a"],
          ["bank-a"]
        ])
        // ... but the operators' record holds it once.
        expect((yield* log.heuristics).map((h) => [h.txId, h.branch, h.gid])).toEqual([
          [txId, "bank-a", gidA]
        ])
      })
  )

  it.effect("a pass that dies (a log's bug) is logged and the sweep goes on", () =>
    Effect.gen(function* () {
      // A participant's bug no longer ends a pass (it is a failed call, reported unresolved); a
      // log's bug still does.
      const memory = yield* TransactionLog.makeMemory
      const a = yield* MemoryParticipant.make("bank-a")
      let reads = 0
      const log: TransactionLog.TransactionLog["Type"] = {
        ...memory,
        unfinished: (options) =>
          Effect.suspend(() => {
            reads++
            return reads === 1 ? Effect.die(new Error("log bug")) : memory.unfinished(options)
          })
      }
      const logged: Array<string> = []
      const capture = Logger.make(({ cause, message }) => {
        logged.push(`${String(message)} ${Cause.pretty(cause)}`)
      })
      const fiber = yield* Recovery.sweep([a.participant], Duration.seconds(10), { orphanAfter: 0 }).pipe(
        Effect.provideService(TransactionLog.TransactionLog, log),
        Effect.provide(Logger.replace(Logger.defaultLogger, capture)),
        Effect.fork
      )
      yield* TestClock.adjust(Duration.seconds(35))
      const exit = yield* Fiber.poll(fiber)
      yield* Fiber.interrupt(fiber)
      expect(exit._tag).toBe("None")
      expect(reads).toBe(4)
      expect(logged.some((l) => l.includes("recovery pass failed") && l.includes("log bug"))).toBe(true)
    })
  )
})

describe("Recovery.sweep reporting", () => {
  it.effect("a pass that leaves branches unresolved is logged by the sweep, not dropped", () =>
    Effect.gen(function* () {
      const log = yield* TransactionLog.makeMemory
      const a = yield* MemoryParticipant.make("bank-a")
      const txId = yield* TransactionId.make
      const gidA = TransactionId.gid(txId, a.participant.name)
      yield* a.seedPrepared(gidA)
      // The decision names a participant this sweep was not given: it stays in doubt.
      yield* log.decide({
        txId,
        decision: "commit",
        branches: [
          { branch: a.participant.name, gid: gidA },
          {
            branch: "bank-gone" as TransactionId.BranchName,
            gid: TransactionId.gid(txId, "bank-gone" as TransactionId.BranchName)
          }
        ],
        decidedAt: 0
      })
      const logged: Array<string> = []
      const capture = Logger.make(({ message }) => {
        logged.push(JSON.stringify(message))
      })
      const fiber = yield* Recovery.sweep([a.participant], Duration.seconds(10), { orphanAfter: 0 }).pipe(
        Effect.provideService(TransactionLog.TransactionLog, log),
        Effect.provide(Logger.replace(Logger.defaultLogger, capture)),
        Effect.fork
      )
      yield* TestClock.adjust(Duration.seconds(1))
      yield* Fiber.interrupt(fiber)
      expect(logged.some((l) => l.includes("unresolved") && l.includes("bank-gone"))).toBe(true)
    })
  )
})
