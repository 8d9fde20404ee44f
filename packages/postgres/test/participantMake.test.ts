/**
 * `PgParticipant.make` against a server that does not answer, and its errors. Found by a review
 * (2026-12-07): `make` ran its checks without a bound (a server that accepted connections and
 * never answered held it until postgres.js's 30 s connect timeout), and its failures read
 * "begin of branch bh in  failed: ..." (a phase of no transaction, with an empty txId).
 */
import { TransactionError } from "@accord/core"
import { describe, expect, it } from "@effect/vitest"
import { Duration, Effect, Either } from "effect"
import postgres from "postgres"
import * as PgParticipant from "../src/PgParticipant.js"
import * as TestDatabase from "../src/TestDatabase.js"
import * as TcpProxy from "./support/tcpProxy.js"

const server = await TestDatabase.server()

describe.skipIf(server === undefined)("PgParticipant.make", () => {
  const adminUrl = server?.adminUrl ?? ""

  it.live("fails with a ConfigurationError at verifyTimeout when the server never answers", () =>
    Effect.gen(function* () {
      const proxy = yield* Effect.acquireRelease(
        Effect.promise(() => TcpProxy.start(adminUrl)),
        (p) => Effect.promise(() => p.close())
      )
      // Every connection's start-up reaches the server; its answers never come back.
      yield* Effect.sync(() => void proxy.freezeWhen(() => true, { deliver: true }))
      const sql = yield* Effect.acquireRelease(
        Effect.sync(() => postgres(proxy.url(adminUrl), { max: 2, onnotice: () => {} })),
        (s) => Effect.promise(() => s.end({ timeout: 1 }))
      )
      const started = performance.now()
      const made = yield* Effect.either(
        PgParticipant.make({ name: "silent", sql, verifyTimeout: Duration.millis(500) })
      )
      const took = performance.now() - started
      expect(Either.isLeft(made) && made.left).toBeInstanceOf(TransactionError.ConfigurationError)
      if (Either.isLeft(made)) expect(made.left.message).toContain("did not answer its checks within 500")
      // 500 ms, plus at most the cancel bound; before: postgres.js's 30 s connect timeout.
      expect(took).toBeLessThan(6_000)
    }).pipe(Effect.scoped)
  )

  it.live("names no transaction when its checks fail", () =>
    Effect.gen(function* () {
      // Nothing listens on this port: the connection is refused.
      const sql = yield* Effect.acquireRelease(
        Effect.sync(() =>
          postgres("postgres://postgres@127.0.0.1:1/postgres", { max: 1, onnotice: () => {} })
        ),
        (s) => Effect.promise(() => s.end({ timeout: 1 }))
      )
      const made = yield* Effect.either(PgParticipant.make({ name: "nowhere", sql }))
      expect(Either.isLeft(made) && made.left._tag).toBe("BranchCallError")
      if (Either.isLeft(made)) {
        expect(made.left).toMatchObject({ phase: "verify", branch: "nowhere" })
        expect(made.left.message).toMatch(/^verify of branch nowhere failed: /)
      }
    }).pipe(Effect.scoped)
  )
})
