/**
 * A branch whose connection stops answering after `reserve()` (the network to that one connection
 * partitioned, or its server stuck), played by a TCP proxy that freezes the branch's link on its
 * BEGIN, or later on its marker and PREPARE: those never answer, nor does the clean-up's ROLLBACK.
 * The branch's call must still end within its bounds as a failure, the transaction must not stay
 * open (or prepared) on the server, and the pool must get its connection back, never reused while
 * a transaction may be open on it. Also `destroy()`, which Accord's postgres.js patch adds to a
 * reserved connection for this.
 */
import { Participant, TransactionLog, TwoPhaseCommit } from "@accord/core"
import { afterAll, beforeAll, describe, expect, it } from "@effect/vitest"
import { Duration, Effect } from "effect"
import postgres from "postgres"
import * as PgParticipant from "../src/PgParticipant.js"
import * as TestDatabase from "../src/TestDatabase.js"
import { adjust, balance, createBank, preparedIn, transfer } from "./support/pg2pc.js"
import * as TcpProxy from "./support/tcpProxy.js"

const server = await TestDatabase.server()
const DB = "accord_t_pg_branch_cleanup"
/** The application_name of the proxied pool's sessions, to find them in pg_stat_activity. */
const APP = "accord-frozen-branch"
const CANCEL_MS = 300
const PREPARE_TIMEOUT_MS = 500

const within = <A>(promise: Promise<A>, ms: number) =>
  Promise.race([promise, new Promise<"timed out">((resolve) => setTimeout(() => resolve("timed out"), ms))])

describe.skipIf(server === undefined)("postgres.js reserve().destroy() (Accord's patch)", () => {
  const adminUrl = server?.adminUrl ?? ""

  it("fails what was sent on a frozen reserved connection and the pool reconnects it", async () => {
    const proxy = await TcpProxy.start(adminUrl)
    const pool = postgres(proxy.url(adminUrl), { max: 1, onnotice: () => {} })
    try {
      await pool`select 1`
      const conn = await pool.reserve()
      const [old] = await conn<{ pid: number }[]>`select pg_backend_pid() as pid`
      const frozen = proxy.freezeWhen((chunk) => chunk.includes("select 'stuck'"), { deliver: false })
      const stuck = conn.unsafe("select 'stuck'").then(
        () => "answered",
        (e: { code?: string }) => e.code
      )
      await frozen
      expect(await within(stuck, 300)).toBe("timed out")
      ;(conn as unknown as { destroy: () => void }).destroy()
      expect(await within(stuck, 2_000)).toBe("CONNECTION_CLOSED")
      // The pool's one connection comes back as a new session, and the stuck one is not reused.
      const fresh = await within(pool<{ pid: number }[]>`select pg_backend_pid() as pid`, 5_000)
      expect(fresh).not.toBe("timed out")
      if (fresh !== "timed out") expect(fresh[0]!.pid).not.toBe(old!.pid)
      expect(proxy.frozen()).toBe(1)
    } finally {
      await pool.end({ timeout: 1 })
      await proxy.close()
    }
  }, 30_000)

  it("is a no-op once the connection is no longer the reservation's", async () => {
    const pool = postgres(adminUrl, { max: 1, onnotice: () => {} })
    try {
      const first = await pool.reserve()
      const [before] = await first<{ pid: number }[]>`select pg_backend_pid() as pid`
      first.release()
      const second = await pool.reserve() // the pool's one connection again
      ;(first as unknown as { destroy: () => void }).destroy()
      const [after] = await within(second<{ pid: number }[]>`select pg_backend_pid() as pid`, 5_000).then(
        (rows) => (rows === "timed out" ? [undefined] : rows)
      )
      expect(after?.pid).toBe(before!.pid)
      second.release()
    } finally {
      await pool.end({ timeout: 5 })
    }
  }, 30_000)
})

describe.skipIf(server === undefined)("a branch whose connection stops answering", () => {
  const adminUrl = server?.adminUrl ?? ""
  let url: string
  let direct: postgres.Sql
  let admin: postgres.Sql

  beforeAll(async () => {
    url = await createBank(adminUrl, DB, 10, 100)
    direct = postgres(url, { max: 4, onnotice: () => {} })
    admin = postgres(adminUrl, { max: 1, onnotice: () => {} })
  }, 60_000)

  afterAll(async () => {
    await direct?.end({ timeout: 5 })
    const left = await preparedIn(adminUrl, [DB])
    await admin?.end({ timeout: 5 })
    await TestDatabase.dropDatabase(adminUrl, DB)
    expect(left).toEqual([])
  }, 60_000)

  /** The proxied pool's sessions still on the server, and those of them inside a transaction. */
  const sessions = async () => {
    const rows = await admin<{ state: string | null }[]>`
      select state from pg_stat_activity where datname = ${DB} and application_name = ${APP}`
    return {
      all: rows.length,
      inTransaction: rows.filter((r) => r.state?.startsWith("idle in transaction")).length
    }
  }

  /** Holds `n` connections of `pool` at once, runs a statement on each, then releases them. */
  const holdAtOnce = async (pool: postgres.Sql, n: number) => {
    const held = await Promise.all(Array.from({ length: n }, () => pool.reserve()))
    try {
      return await Promise.all(
        held.map(async (conn) => (await conn<{ one: number }[]>`select 1 as one`)[0]!.one)
      )
    } finally {
      for (const conn of held) conn.release()
    }
  }

  const cases = [
    {
      name: "nothing reaches the server after the reserve",
      freezeOn: TcpProxy.carriesBegin,
      deliver: false
    },
    {
      name: "BEGIN and the work reach the server, no answer comes back (the transaction is open there)",
      freezeOn: TcpProxy.carriesBegin,
      deliver: true
    },
    {
      name: "the marker and PREPARE never reach the server (the transaction is open there)",
      freezeOn: TcpProxy.carriesPrepare,
      deliver: false
    },
    {
      name: "the marker and PREPARE reach the server, no answer comes back (prepared there)",
      freezeOn: TcpProxy.carriesPrepare,
      deliver: true
    }
  ]

  for (const { name, freezeOn, deliver } of cases) {
    it.live(
      `${name}: the call fails in bounded time, nothing stays open or prepared, the pool gets its connection back`,
      () => {
        let proxy: TcpProxy.TcpProxy | undefined
        let pool: postgres.Sql | undefined
        return Effect.gen(function* () {
          proxy = yield* Effect.promise(() => TcpProxy.start(url))
          const proxied = postgres(proxy.url(url), {
            max: 2,
            onnotice: () => {},
            connection: { application_name: APP }
          })
          pool = proxied
          const pa = yield* PgParticipant.make({
            name: "bank-a",
            sql: proxied,
            cancelTimeout: Duration.millis(CANCEL_MS)
          })
          const pb = yield* PgParticipant.make({ name: "bank-b", sql: direct })
          const log = Effect.provide(TransactionLog.layerMemory)

          const frozen = proxy.freezeWhen(freezeOn, { deliver })
          const started = Date.now()
          const outcome = yield* TwoPhaseCommit.run(
            [
              // No parameters: BEGIN and the update go in one simple-protocol chunk.
              Participant.branch(pa, (s) =>
                s.query("update accounts set balance = balance - 10 where id = 1")
              ),
              Participant.branch(pb, adjust(2, 10))
            ],
            { prepareTimeout: Duration.millis(PREPARE_TIMEOUT_MS) }
          ).pipe(log)
          const elapsed = Date.now() - started
          expect(yield* Effect.promise(() => within(frozen, 0))).not.toBe("timed out")
          expect(proxy.frozen()).toBe(1)

          // A failure (the branch's call timed out), in bounded time: the prepare timeout, then at
          // most three clean-up steps, then the abort's ROLLBACK PREPARED on the pool.
          expect(outcome._tag).toBe("Aborted")
          if (outcome._tag === "Aborted") expect(outcome.reason).toContain("timed out")
          expect(elapsed).toBeLessThan(PREPARE_TIMEOUT_MS + 3 * CANCEL_MS + 2_000)

          // The transaction is not left open on the server (it held account 1's row lock), nor
          // prepared (the abort rolled it back by gid).
          expect((yield* Effect.promise(sessions)).inTransaction).toBe(0)
          expect(yield* Effect.promise(() => preparedIn(adminUrl, [DB]))).toEqual([])

          // Full capacity again: both connections of the pool, within a bound, while the
          // frozen link still holds everything it got.
          const both = yield* Effect.promise(() => within(holdAtOnce(proxied, 2), 5_000))
          expect(both).toEqual([1, 1])
          for (let i = 0; i < 3; i++) {
            expect((yield* transfer(pa, pb, 3, 4, 1).pipe(log))._tag).toBe("Committed")
          }

          // The partition heals: what the frozen link held arrives late and changes nothing.
          proxy.unfreeze()
          yield* Effect.sleep(Duration.millis(300))
          expect(yield* balance(direct, 1)).toBe(100)
          expect(yield* balance(direct, 2)).toBe(100)
          expect(yield* Effect.promise(() => preparedIn(adminUrl, [DB]))).toEqual([])
          expect((yield* Effect.promise(sessions)).inTransaction).toBe(0)
          expect(yield* Effect.promise(() => within(holdAtOnce(proxied, 2), 5_000))).toEqual([1, 1])
        }).pipe(
          Effect.ensuring(
            Effect.promise(async () => {
              await pool?.end({ timeout: 1 })
              await proxy?.close()
              // No session of the pool is left behind on the server.
              let left = await sessions()
              for (let i = 0; i < 50 && left.all > 0; i++) {
                await new Promise((resolve) => setTimeout(resolve, 100))
                left = await sessions()
              }
              expect(left).toEqual({ all: 0, inTransaction: 0 })
            })
          )
        )
      },
      30_000
    )
  }
})
