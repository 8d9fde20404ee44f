/**
 * Driver faults that a live server cannot produce on demand (a server with
 * max_prepared_transactions = 0, a connection lost exactly during PREPARE or COMMIT PREPARED),
 * played by a scripted postgres.js stand-in. Everything Postgres decides is tested on a real
 * server in participant.test.ts.
 */
import { TransactionError } from "@accord/core"
import { describe, expect, it } from "@effect/vitest"
import { Effect, Either } from "effect"
import type postgres from "postgres"
import * as PgParticipant from "../src/PgParticipant.js"
import * as Pipeline from "../src/Pipeline.js"
import { ctxFor } from "./support/pg2pc.js"

type Answer = (text: string) => Promise<ReadonlyArray<unknown>>

const lost = (code: string) => Object.assign(new Error(`connection lost (${code})`), { code })

/** A stand-in for a postgres.js pool that answers each statement with `answer` and records it. */
const scripted = (answer: Answer) => {
  const sent: Array<string> = []
  let released = 0
  const run = (text: string) => {
    sent.push(text)
    const pending = answer(text)
    return Object.assign(pending, { cancel: () => undefined, simple: () => pending })
  }
  const connection = () => Object.assign(() => undefined, { unsafe: run, release: () => void released++ })
  const sql = Object.assign(() => undefined, {
    unsafe: run,
    options: { max: 4 },
    reserve: async () => connection()
  }) as unknown as postgres.Sql
  return { sql, sent, released: () => released }
}

/** A server with 2PC enabled whose marker table is `public.accord_branch`. */
const healthy: Answer = async (text) => {
  if (text.startsWith("show")) return [{ max_prepared_transactions: "64" }]
  if (text.includes("to_regclass")) return [{ nspname: "public" }]
  return []
}

describe("PgParticipant driver faults", () => {
  it.effect("max_prepared_transactions = 0 fails make with the fix, before any other statement", () =>
    Effect.gen(function* () {
      const server = scripted(async () => [{ max_prepared_transactions: "0" }])
      const made = yield* Effect.either(PgParticipant.make({ name: "bank-a", sql: server.sql }))
      expect(Either.isLeft(made) && made.left).toBeInstanceOf(TransactionError.ConfigurationError)
      if (Either.isLeft(made)) {
        expect(made.left.message).toContain("ALTER SYSTEM SET max_prepared_transactions = 64;")
        expect(made.left.message).toContain("pg_ctlcluster 15 main restart")
        expect(made.left.message).toContain("max_prepared_transactions=64")
      }
      expect(server.sent).toEqual(["show max_prepared_transactions"])
    })
  )

  for (const code of ["57P01", "ECONNRESET", "CONNECTION_CLOSED"]) {
    it.effect(`a connection lost (${code}) during COMMIT PREPARED is in doubt`, () =>
      Effect.gen(function* () {
        const server = scripted(async (text) => {
          if (text.startsWith("COMMIT PREPARED")) throw lost(code)
          return healthy(text)
        })
        const p = yield* PgParticipant.make({ name: "bank-a", sql: server.sql })
        const result = yield* Effect.either(p.commit(yield* ctxFor("bank-a")))
        expect(Either.isLeft(result) && result.left._tag).toBe("BranchCallError")
        if (Either.isLeft(result)) {
          expect(result.left.inDoubt).toBe(true)
          expect(result.left.phase).toBe("commit")
        }
      })
    )
  }

  it.effect(
    "a connection lost during PREPARE is a failed call (the coordinator rolls the gid back), not a vote",
    () =>
      Effect.gen(function* () {
        const server = scripted(async (text) => {
          if (text.startsWith("PREPARE TRANSACTION")) throw lost("ECONNRESET")
          if (text.startsWith('insert into "public"."accord_branch"')) return [{ marked: 1 }]
          return healthy(text)
        })
        const p = yield* PgParticipant.make({ name: "bank-a", sql: server.sql })
        const ctx = yield* ctxFor("bank-a")
        const result = yield* Effect.either(p.prepare(ctx, (s) => s.query("update accounts set balance = 0")))
        expect(Either.isLeft(result) && result.left._tag).toBe("BranchCallError")
        if (Either.isLeft(result)) expect(result.left.inDoubt).toBe(true)
        expect(server.sent.slice(-5)).toEqual([
          "BEGIN",
          "update accounts set balance = 0",
          "RESET ROLE",
          expect.stringContaining('insert into "public"."accord_branch"'),
          `PREPARE TRANSACTION '${ctx.gid}'`
        ])
        // A dropped connection is not handed back to the pool.
        expect(server.released()).toBe(0)
      })
  )

  // A cancel request that reaches the session while it runs BEGIN fails BEGIN, and a statement
  // already sent behind it then runs outside any transaction and commits on its own (measured on a
  // real server under a storm of pg_cancel_backend: docs/postgres.md). The work is only sent once
  // BEGIN has answered, for a function work and for a pipelined one.
  for (const [kind, work] of [
    ["function", (s: PgParticipant.BranchSession) => s.query("update accounts set balance = 0")],
    ["pipelined", Pipeline.make([{ text: "update accounts set balance = 0" }])]
  ] as const) {
    it.live(
      `a BEGIN that fails sends none of the ${kind} work: nothing can run outside the transaction`,
      () =>
        Effect.gen(function* () {
          const server = scripted(async (text) => {
            if (text === "BEGIN") {
              await new Promise((resolve) => setTimeout(resolve, 20))
              throw Object.assign(new Error("canceling statement due to user request"), { code: "57014" })
            }
            return healthy(text)
          })
          const p = yield* PgParticipant.make({ name: "bank-a", sql: server.sql })
          const from = server.sent.length
          const result = yield* Effect.either(p.prepare(yield* ctxFor("bank-a"), work))
          expect(Either.isLeft(result) && result.left._tag).toBe("BranchCallError")
          expect(server.sent.slice(from)).toEqual(["BEGIN", "ROLLBACK"])
        })
    )
  }

  it.effect(
    "a refused COMMIT of a one-phase branch is a No with its SQLSTATE; the connection is released",
    () =>
      Effect.gen(function* () {
        const server = scripted(async (text) => {
          if (text === "COMMIT")
            throw Object.assign(new Error("could not serialize access"), { code: "40001" })
          return healthy(text)
        })
        const p = yield* PgParticipant.make({ name: "bank-a", sql: server.sql })
        const result = yield* p.commitOnePhase(yield* ctxFor("bank-a"), (s) => s.query("update t set x = 1"))
        expect(result._tag).toBe("No")
        if (result._tag === "No") expect(result.sqlState).toBe("40001")
        expect(server.released()).toBe(1)
        expect(server.sent.filter((q) => q === "ROLLBACK")).toEqual([])
      })
  )
})
