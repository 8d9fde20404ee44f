/**
 * A barrier run's BEGIN or COMMIT on a connection that stopped answering (found by the lease
 * review of 2026-12-07, `leaseS22BarrierCommit.test.ts`). Neither is one of the run's tracked
 * statements, and the run awaited them without a bound: the caller's interruption returned, but the
 * run's reserved connection was never given back nor closed (a pool of one served nothing more),
 * and a COMMIT held on its way left the session idle in its transaction, holding the barrier row
 * that the step's compensation waited for. Now, `ABANDON_MS` (the cancel bound) after the
 * interruption, the connection is closed and its session terminated by pid.
 */
import { describe, expect, it } from "@effect/vitest"
import { Duration, Effect, Either, Option } from "effect"
import * as Barrier from "../src/Barrier.js"
import { defaultCancelTimeout } from "../src/internal/client.js"
import * as TestDatabase from "../src/TestDatabase.js"
import { usePoolsOnDatabase } from "./support/sagaLog.js"
import * as TcpProxy from "./support/tcpProxy.js"

const server = await TestDatabase.server()
const DB = "s22_barrier_commit_bound"

/** The simple-protocol Query message of `text` (the barrier's BEGIN and COMMIT are sent so). */
const queryMessage = (text: string) => {
  const body = Buffer.from(`${text}\u0000`, "latin1")
  const head = Buffer.alloc(5)
  head.write("Q", 0, "latin1")
  head.writeInt32BE(body.length + 4, 1)
  return Buffer.concat([head, body])
}
const carries = (text: string) => {
  const message = queryMessage(text)
  return (chunk: Buffer) => chunk.includes(message)
}

const BOUND = 2 * Duration.toMillis(defaultCancelTimeout)

const within = <A>(promise: PromiseLike<A>, ms: number) =>
  Promise.race([promise, new Promise<"timed out">((resolve) => setTimeout(() => resolve("timed out"), ms))])

describe.skipIf(server === undefined)("a barrier run whose BEGIN or COMMIT meets a frozen connection", () => {
  const adminUrl = server?.adminUrl ?? ""
  const { url, pool } = usePoolsOnDatabase(adminUrl, DB, { max: 1, endTimeout: 1 })

  /** Runs an action on a pool of one through a proxy that freezes at `text`; then the pool must serve again. */
  const frozenAt = (text: string, deliver: boolean, gid: string) =>
    Effect.gen(function* () {
      const proxy = yield* Effect.promise(() => TcpProxy.start(url()))
      yield* Effect.addFinalizer(() => Effect.promise(() => proxy.close()))
      const direct = pool(undefined, 2)
      yield* Effect.promise(() => Barrier.migrate(direct))
      const sql = pool(proxy.url(url()), 1)
      const froze = proxy.freezeWhen(carries(text), { deliver })
      const started = Date.now()
      const outcome = yield* Barrier.run(sql, { gid, branch: "b1", op: "action" }, async () => "done").pipe(
        Effect.timeout("1 second"),
        Effect.option
      )
      yield* Effect.promise(() => froze)
      expect(Option.isNone(outcome)).toBe(true)
      expect(Date.now() - started).toBeLessThan(3_000)
      // The pool's only connection is closed on this side, and the pool opens a new one.
      const next = yield* Effect.promise(() => within(sql.unsafe("select 1 as one"), BOUND))
      proxy.unfreeze()
      expect(next).not.toBe("timed out")
      return { direct, sql }
    })

  it.live(
    "a COMMIT whose answer never comes: the pool of one serves again within the bound",
    () =>
      Effect.gen(function* () {
        const gid = `s22-frozen-commit-${Date.now()}`
        const { direct } = yield* frozenAt("commit", true, gid)
        // The server had the COMMIT: the action committed, and a later delivery is a duplicate.
        const again = yield* Barrier.run(direct, { gid, branch: "b1", op: "action" }, async () => "again")
        expect(again).toEqual({ _tag: "Duplicate", value: "done" })
      }).pipe(Effect.scoped),
    30_000
  )

  it.live(
    "a BEGIN whose answer never comes: the pool of one serves again within the bound",
    () =>
      Effect.gen(function* () {
        const gid = `s22-frozen-begin-${Date.now()}`
        const { direct } = yield* frozenAt("begin", false, gid)
        const later = yield* Barrier.run(direct, { gid, branch: "b1", op: "action" }, async () => "later")
        expect(later).toEqual({ _tag: "Applied", value: "later" })
      }).pipe(Effect.scoped),
    30_000
  )

  it.live(
    "a COMMIT held on its way: its session is terminated, and the compensation is a null compensation",
    () =>
      Effect.gen(function* () {
        const proxy = yield* Effect.promise(() => TcpProxy.start(url()))
        yield* Effect.addFinalizer(() => Effect.promise(() => proxy.close()))
        const direct = pool(undefined, 2)
        yield* Effect.promise(() => Barrier.migrate(direct))
        const sql = pool(proxy.url(url()), 2)
        const froze = proxy.freezeWhen(carries("commit"), { deliver: false })
        const gid = `s22-held-commit-${Date.now()}`
        const outcome = yield* Barrier.run(sql, { gid, branch: "b1", op: "action" }, async () => "done").pipe(
          Effect.timeout("1 second"),
          Effect.option
        )
        yield* Effect.promise(() => froze)
        expect(Option.isNone(outcome)).toBe(true)
        // The compensation's barrier insert waits on the action's uncommitted row until the stuck
        // session is terminated (its transaction rolled back): a null compensation.
        const undo = yield* Barrier.run(
          direct,
          { gid, branch: "b1", op: "compensation" },
          async () => "undone"
        ).pipe(Effect.timeout(Duration.millis(BOUND)), Effect.either)
        proxy.unfreeze()
        expect(Either.isRight(undo) ? undo.right : Either.isLeft(undo) && undo.left._tag).toEqual({
          _tag: "NullCompensation"
        })
        // The late action is refused.
        const late = yield* Barrier.run(direct, { gid, branch: "b1", op: "action" }, async () => "late")
        expect(late._tag).toBe("Refused")
      }).pipe(Effect.scoped),
    30_000
  )
})
