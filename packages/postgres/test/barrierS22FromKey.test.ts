/**
 * `Barrier.fromKey` of a key without a `/` (review of 2026-12-07): it answered the key as the gid
 * and an empty branch, the same gid and branch as the key with a `/` after it (`"k"` and `"k/"`
 * shared their barrier rows). It now throws: such a key is no saga idempotency key.
 */
import { afterAll, beforeAll, describe, expect, it } from "@effect/vitest"
import type { PGlite } from "@electric-sql/pglite"
import type { CompensationContext } from "@accord/core/Saga"
import { Cause, Effect, Exit } from "effect"
import * as Barrier from "../src/Barrier.js"
import * as PgParticipant from "../src/PgParticipant.js"

describe("Barrier.fromKey", () => {
  let db: PGlite
  beforeAll(async () => {
    db = await PgParticipant.openPglite()
    await Barrier.migrate(db)
  }, 60_000)
  afterAll(async () => {
    await db?.close()
  })

  it("splits a saga key at its last slash", () => {
    expect(Barrier.fromKey("saga-1/reserve")).toEqual({ gid: "saga-1", branch: "reserve" })
    expect(Barrier.fromKey("tenant/saga-1/reserve")).toEqual({ gid: "tenant/saga-1", branch: "reserve" })
  })

  it("refuses a key without a slash instead of answering an empty branch", () => {
    expect(() => Barrier.fromKey("no-slash")).toThrow(/not a saga idempotency key/)
  })

  it.live("a saga step given such a key dies before anything is sent", () =>
    Effect.gen(function* () {
      const ctx = { key: "no-slash", output: undefined } as unknown as CompensationContext<unknown>
      let ran = false
      const exit = yield* Effect.exit(
        Barrier.sagaCompensation(db, ctx, async () => {
          ran = true
        })
      )
      expect(Exit.isFailure(exit) && Cause.isDie(exit.cause)).toBe(true)
      expect(ran).toBe(false)
    })
  )
})
