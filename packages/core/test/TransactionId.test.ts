import { describe, expect, it } from "@effect/vitest"
import { Effect, Either, Option, Random, TestClock } from "effect"
import * as TransactionId from "../src/TransactionId.js"

describe("TransactionId", () => {
  it.effect("makes time-sortable ULIDs that are deterministic for a seeded Random", () =>
    Effect.gen(function* () {
      yield* TestClock.setTime(1_700_000_000_000)
      const first = yield* TransactionId.make.pipe(Effect.withRandom(Random.make(7)))
      const again = yield* TransactionId.make.pipe(Effect.withRandom(Random.make(7)))
      yield* TestClock.setTime(1_700_000_000_001)
      const later = yield* TransactionId.make
      expect(first).toMatch(TransactionId.transactionIdPattern)
      expect(again).toBe(first)
      expect(later > first).toBe(true)
    })
  )

  it.effect("builds gids that parse back to their parts and stay under 200 bytes", () =>
    Effect.gen(function* () {
      const txId = yield* TransactionId.make
      const branch = "b".repeat(64) as TransactionId.BranchName
      const gid = TransactionId.gid(txId, branch, "prod")
      expect(Buffer.byteLength(gid)).toBeLessThan(200)
      const parsed = Option.getOrThrow(TransactionId.parseGid(gid))
      expect(parsed).toEqual({ gid, txId, branch, namespace: "prod" })
      expect(TransactionId.toSqlLiteral(gid)).toBe(`'${gid}'`)
    })
  )

  it("refuses hostile gids and names", () => {
    const hostile = [
      "accord_01ARZ3NDEKTSV4RRFFQ69G5FAV_a'; drop table accounts; --",
      "accord_01ARZ3NDEKTSV4RRFFQ69G5FAV_a\\",
      "accord_01ARZ3NDEKTSV4RRFFQ69G5FAV_",
      "other_01ARZ3NDEKTSV4RRFFQ69G5FAV_a",
      `accord_01ARZ3NDEKTSV4RRFFQ69G5FAV_${"a".repeat(200)}`,
      ""
    ]
    for (const gid of hostile) expect(Either.isLeft(TransactionId.validateGid(gid))).toBe(true)
    expect(Either.isLeft(TransactionId.parseBranchName("a_b"))).toBe(true)
    expect(Either.isLeft(TransactionId.parseBranchName("a'b"))).toBe(true)
    expect(Either.isRight(TransactionId.parseBranchName("bank-a.eu1"))).toBe(true)
  })
})
