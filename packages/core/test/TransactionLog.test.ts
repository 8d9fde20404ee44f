import { describe, expect, it } from "@effect/vitest"
import { Effect, TestClock } from "effect"
import type * as TransactionId from "../src/TransactionId.js"
import * as TransactionLog from "../src/TransactionLog.js"

const id = (s: string) => s as TransactionId.TransactionId

describe("the in-memory TransactionLog", () => {
  it.effect("unfinished pages follow a cursor on (decidedAt, txId), equal decidedAt included", () =>
    Effect.gen(function* () {
      const log = yield* TransactionLog.makeMemory
      yield* TestClock.setTime(10_000)
      for (const [txId, decidedAt] of [
        ["c", 1_000],
        ["a", 1_000],
        ["b", 1_000],
        ["e", 2_000],
        ["d", 2_000],
        ["done", 1_000]
      ] as const) {
        yield* log.decide({ txId: id(txId), decision: "commit", branches: [], decidedAt })
      }
      yield* log.complete(id("done"))
      const ids = (rows: ReadonlyArray<TransactionLog.DecisionRecord>) => rows.map((d) => d.txId)
      expect(ids(yield* log.unfinished())).toEqual(["a", "b", "c", "d", "e"])
      expect(ids(yield* log.unfinished({ limit: 2 }))).toEqual(["a", "b"])
      expect(ids(yield* log.unfinished({ limit: 2, after: { decidedAt: 1_000, txId: id("b") } }))).toEqual([
        "c",
        "d"
      ])
      expect(ids(yield* log.unfinished({ limit: 2, after: { decidedAt: 2_000, txId: id("d") } }))).toEqual([
        "e"
      ])
      expect(ids(yield* log.unfinished({ after: { decidedAt: 2_000, txId: id("e") } }))).toEqual([])
    })
  )

  it.effect(
    "records a heuristic outcome once; a different outcome of the same branch is its own record",
    () =>
      Effect.gen(function* () {
        const log = yield* TransactionLog.makeMemory
        const record: TransactionLog.HeuristicRecord = {
          txId: id("t"),
          branch: "bank-a" as TransactionId.BranchName,
          gid: "accord_t_bank-a" as TransactionId.Gid,
          decision: "commit",
          detail: "branch was rolled back outside the protocol after the commit decision"
        }
        const other = { ...record, detail: "branch prepared again after its transaction completed" }
        yield* log.recordHeuristic(record)
        yield* log.recordHeuristic(other)
        yield* log.recordHeuristic(record)
        expect(yield* log.heuristics).toEqual([record, other])
      })
  )
})
