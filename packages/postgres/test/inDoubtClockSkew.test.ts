/**
 * The in-doubt scan's ages are the database server's, whatever the recovery host's clock says.
 * Recovery compares `preparedAt` with its own `Clock`: a `preparedAt` read from the server's clock
 * (`pg_prepared_xacts.prepared`) makes a host whose clock is ahead roll back live branches as
 * orphans, and one whose clock is behind leave orphans prepared as if young. The host's skew is
 * played by an Effect `Clock` N minutes off the real one, under which both the scan and recovery
 * run (as they would on a skewed host).
 */
import { type Participant, Recovery, TransactionId, TransactionLog, ThreePhaseCommit } from "@accord/core"
import { afterAll, beforeAll, describe, expect, it } from "@effect/vitest"
import { Duration, Effect } from "effect"
import postgres from "postgres"
import * as PgParticipant from "../src/PgParticipant.js"
import * as PgThreePhaseParticipant from "../src/PgThreePhaseParticipant.js"
import * as TestDatabase from "../src/TestDatabase.js"
import {
  adjust,
  bankParticipants,
  createBank,
  prepareOnly,
  preparedIn,
  skewedClock
} from "./support/pg2pc.js"

const server = await TestDatabase.server()
const DB_A = "accord_t_pg_skew_a"
const DB_B = "accord_t_pg_skew_b"
const SKEW_MS = 10 * 60_000

describe.skipIf(server === undefined)("in-doubt ages under a skewed recovery host clock", () => {
  const adminUrl = server?.adminUrl ?? ""
  let a: postgres.Sql
  let b: postgres.Sql

  beforeAll(async () => {
    a = postgres(await createBank(adminUrl, DB_A, 10, 100), { max: 4, onnotice: () => {} })
    b = postgres(await createBank(adminUrl, DB_B, 10, 100), { max: 4, onnotice: () => {} })
  }, 60_000)

  afterAll(async () => {
    // Whatever a failed test left prepared is rolled back before the databases go.
    for (const [sql, db] of [
      [a, DB_A],
      [b, DB_B]
    ] as const) {
      if (sql === undefined) continue
      for (const p of await preparedIn(adminUrl, [db])) await sql.unsafe(`rollback prepared '${p.gid}'`)
      await sql.end({ timeout: 5 })
    }
    const left = await preparedIn(adminUrl, [DB_A, DB_B])
    await TestDatabase.dropDatabase(adminUrl, DB_A)
    await TestDatabase.dropDatabase(adminUrl, DB_B)
    expect(left).toEqual([])
  }, 60_000)

  const participants = bankParticipants(() => [a, b])

  const preparedGids = Effect.promise(async () =>
    (await preparedIn(adminUrl, [DB_A, DB_B])).map((p) => p.gid)
  )

  const recover = (ps: ReadonlyArray<Participant.AnyParticipant>, orphanAfter: Duration.DurationInput) =>
    Recovery.run(ps, { orphanAfter }).pipe(Effect.provide(TransactionLog.layerMemory))

  for (const offset of [SKEW_MS, -SKEW_MS]) {
    it.live(
      `a branch prepared just now is young (its server-side age) on a host whose clock is ${offset / 60_000} min off`,
      () =>
        Effect.gen(function* () {
          const [pa, pb] = yield* participants
          const { ctxs } = yield* prepareOnly([pa, pb], 1, 1)
          const found = yield* pa.inDoubt.pipe(Effect.withClock(skewedClock(offset)))
          const hostNow = Date.now() + offset
          yield* Effect.all([pa.rollback(ctxs[0]!), pb.rollback(ctxs[1]!)])
          const mine = found.find((f) => f.gid === ctxs[0]!.gid)
          expect(mine).toBeDefined()
          // Its age on the host's clock is its age on the server: a second at most, not the skew.
          expect(Math.abs(hostNow - mine!.preparedAt)).toBeLessThan(1_000)
        })
    )
  }

  it.live("a host whose clock is ahead leaves a branch prepared a second ago alone (young)", () =>
    Effect.gen(function* () {
      const [pa, pb] = yield* participants
      const { ctxs } = yield* prepareOnly([pa, pb], 2, 1)
      const report = yield* recover([pa, pb], Duration.seconds(30)).pipe(
        Effect.withClock(skewedClock(SKEW_MS))
      )
      const gids = yield* preparedGids
      yield* Effect.all([pa.rollback(ctxs[0]!), pb.rollback(ctxs[1]!)])
      expect(report.branchesRolledBack).toBe(0)
      expect(report.youngLeft).toBe(2)
      expect(gids).toEqual(expect.arrayContaining(ctxs.map((c) => c.gid)))
    })
  )

  it.live(
    "a host whose clock is behind presumes abort for a branch whose server-side age passed orphanAfter",
    () =>
      Effect.gen(function* () {
        const [pa, pb] = yield* participants
        const { ctxs } = yield* prepareOnly([pa, pb], 3, 1)
        // Held prepared past orphanAfter (by the server's clock and the real one alike).
        yield* Effect.sleep(Duration.millis(2_500))
        const report = yield* recover([pa, pb], Duration.seconds(2)).pipe(
          Effect.withClock(skewedClock(-SKEW_MS))
        )
        const gids = yield* preparedGids
        expect(report.youngLeft).toBe(0)
        expect(report.branchesRolledBack).toBe(2)
        expect(gids.filter((g) => ctxs.some((c) => c.gid === g))).toEqual([])
      })
  )

  it.live(
    "3PC recovery (shares the scan): a host whose clock is ahead leaves a just-prepared branch alone",
    () =>
      Effect.gen(function* () {
        const q = yield* PgThreePhaseParticipant.make({ name: "bank-a", sql: a })
        const pa = yield* PgParticipant.make({ name: "bank-a", sql: a })
        const txId = yield* TransactionId.make
        const ctx = { txId, branch: pa.name, gid: TransactionId.gid(txId, pa.name) }
        expect((yield* pa.prepare(ctx, adjust(4, 1)))._tag).toBe("Prepared")
        const report = yield* ThreePhaseCommit.recover([q], { orphanAfter: Duration.seconds(30) }).pipe(
          Effect.withClock(skewedClock(SKEW_MS))
        )
        const gids = yield* preparedGids
        yield* pa.rollback(ctx)
        expect(report.youngLeft).toBe(1)
        expect(gids).toContain(ctx.gid)
      })
  )
})
