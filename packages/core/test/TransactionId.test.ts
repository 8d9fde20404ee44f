import { describe, expect, it } from "@effect/vitest"
import { vi } from "vitest"
import { Effect, Either, Option, Random, TestClock } from "effect"
import * as TransactionId from "../src/TransactionId.js"
import { CROCKFORD } from "../src/internal/entropy.js"

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

  it.effect("draws the random part from crypto.getRandomValues under Effect's built-in Random", () =>
    Effect.gen(function* () {
      // The pool is refilled on the next draw that does not fit; draw until a refill is seen.
      const real = globalThis.crypto.getRandomValues.bind(globalThis.crypto)
      const fill = vi.spyOn(globalThis.crypto, "getRandomValues")
      try {
        // Real bytes, except the first 16 of the refill: known ones, which the next id must carry.
        const known = Array.from({ length: 16 }, (_, i) => (i * 7 + 3) & 0xff)
        fill.mockImplementation(((array: Uint8Array) => {
          real(array)
          array.set(known)
          return array
        }) as typeof globalThis.crypto.getRandomValues)
        let made = ""
        for (let i = 0; i < 300 && fill.mock.calls.length === 0; i++) made = yield* TransactionId.make
        // The id whose draw refilled the pool took its first 16 bytes, 5 bits each.
        expect(fill).toHaveBeenCalledTimes(1)
        expect(made.slice(10)).toBe(known.map((b) => CROCKFORD[b & 31]).join(""))
        expect(made).toMatch(TransactionId.transactionIdPattern)
      } finally {
        fill.mockRestore()
      }
    })
  )

  it.effect("leaves crypto alone under a provided Random; ids made at one instant are distinct", () =>
    Effect.gen(function* () {
      const fill = vi.spyOn(globalThis.crypto, "getRandomValues")
      try {
        for (let i = 0; i < 300; i++) yield* TransactionId.make.pipe(Effect.withRandom(Random.make(i)))
        expect(fill).not.toHaveBeenCalled()
      } finally {
        fill.mockRestore()
      }
      // 2,000 ids at one instant under the built-in Random: all distinct (80 bits each).
      yield* TestClock.setTime(1_700_000_000_000)
      const ids = new Set<string>()
      for (let i = 0; i < 2000; i++) ids.add(yield* TransactionId.make)
      expect(ids.size).toBe(2000)
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
