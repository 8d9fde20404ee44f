/**
 * Two 3PC deployments sharing the same PostgreSQL databases under the same participant names, told
 * apart by their gid namespace (`PgThreePhaseParticipant.owns`): one deployment's termination,
 * agents and recovery leave the other's prepared branches alone, and a transaction in a namespace
 * its participants do not own is refused before anything is sent.
 */
import { ThreePhaseCommit, TransactionId } from "@accord/core"
import { afterAll, beforeAll, describe, expect, it } from "@effect/vitest"
import { Duration, Effect, Either } from "effect"
import postgres from "postgres"
import type * as PgParticipant from "../src/PgParticipant.js"
import * as PgThreePhaseParticipant from "../src/PgThreePhaseParticipant.js"
import * as TestDatabase from "../src/TestDatabase.js"
import { endAndDrop, preparedIn } from "./support/pg2pc.js"

const server = await TestDatabase.server()
const DBS = ["fixa_3pc_owns_a", "fixa_3pc_owns_b"] as const

const insert = (x: number) => (session: PgParticipant.BranchSession) =>
  session.query("insert into t values ($1)", [x])

describe.skipIf(server === undefined)("PgThreePhaseParticipant.owns", () => {
  const adminUrl = server?.adminUrl ?? ""
  const pools: Array<postgres.Sql> = []

  beforeAll(async () => {
    for (const name of DBS) {
      const sql = postgres(await TestDatabase.createDatabase(adminUrl, name), { max: 6, onnotice: () => {} })
      await sql.unsafe("create table t (x int)")
      pools.push(sql)
    }
  }, 60_000)

  afterAll(() => endAndDrop(adminUrl, pools, DBS, DBS), 60_000)

  /** bank-a and bank-b of `namespace`, on the shared databases. */
  const deployment = (namespace: string) =>
    Effect.all([
      PgThreePhaseParticipant.make({ name: "bank-a", sql: pools[0]!, namespace }),
      PgThreePhaseParticipant.make({ name: "bank-b", sql: pools[1]!, namespace })
    ])

  /** Deployment green prepared a transaction and voted yes on both; its coordinator died there. */
  const preparedByGreen = Effect.gen(function* () {
    const green = yield* deployment("green")
    const txId = yield* TransactionId.make
    const names = green.map((p) => p.name)
    for (const p of green) {
      const ctx = { txId, branch: p.name, gid: TransactionId.gid(txId, p.name, "green"), members: names }
      expect((yield* p.prepare(ctx, insert(1)))._tag).toBe("Prepared")
    }
    return { green, txId, gids: green.map((p) => TransactionId.gid(txId, p.name, "green")) }
  })

  const prepared = Effect.promise(() => preparedIn(adminUrl, DBS)).pipe(
    Effect.map((rows) => rows.map((r) => r.gid).sort())
  )
  /** The recorded states of `gids`, in the order given. */
  const stateRows = (gids: ReadonlyArray<string>) =>
    Effect.forEach(gids, (gid, i) =>
      Effect.promise(
        async () =>
          (await pools[i]!<{ state: string }[]>`select state from accord_3pc_state where gid = ${gid}`)[0]
            ?.state
      )
    )
  const rowsOfT = Effect.forEach(pools, (sql) =>
    Effect.promise(async () => (await sql<{ n: number }[]>`select count(*)::int as n from t`)[0]!.n)
  )

  /** Green's own recovery ends its transaction: nothing stays prepared. */
  const greenRecovers = (green: ReadonlyArray<PgThreePhaseParticipant.PgThreePhaseParticipant>) =>
    Effect.gen(function* () {
      const report = yield* ThreePhaseCommit.recover(green, { orphanAfter: 0 })
      expect(report.blocked).toEqual([])
      expect(yield* prepared).toEqual([])
      return report
    })

  it.live("owns the gids of its own name and namespace only", () =>
    Effect.gen(function* () {
      const [a] = yield* deployment("blue")
      const txId = yield* TransactionId.make
      const bankB = "bank-b" as TransactionId.BranchName
      expect(a.owns(TransactionId.gid(txId, a.name, "blue"))).toBe(true)
      expect(a.owns(TransactionId.gid(txId, a.name, "green"))).toBe(false)
      expect(a.owns(TransactionId.gid(txId, a.name))).toBe(false)
      expect(a.owns(TransactionId.gid(txId, bankB, "blue"))).toBe(false)
      const plain = yield* PgThreePhaseParticipant.make({ name: "bank-a", sql: pools[0]! })
      expect(plain.owns(TransactionId.gid(txId, a.name))).toBe(true)
      expect(plain.owns(TransactionId.gid(txId, a.name, "blue"))).toBe(false)
    })
  )

  it.live("run refuses a namespace its participants do not own, before anything is sent", () =>
    Effect.gen(function* () {
      const [a, b] = yield* deployment("blue")
      const before = yield* rowsOfT
      const branches = [ThreePhaseCommit.branch(a, insert(2)), ThreePhaseCommit.branch(b, insert(2))]
      const refused = yield* Effect.either(ThreePhaseCommit.run(branches, { namespace: "green" }))
      // Before: committed under green's gids, which blue's recovery never scans (and green's
      // recovery would take for its own).
      expect(Either.isLeft(refused) && refused.left._tag).toBe("InvalidTransactionError")
      expect(yield* rowsOfT).toEqual(before)
      expect(yield* prepared).toEqual([])
      const ok = yield* ThreePhaseCommit.run(branches, { namespace: "blue" })
      expect(ok._tag).toBe("Committed")
      expect(yield* rowsOfT).toEqual(before.map((n) => n + 1))
    })
  )

  it.live("terminate over another deployment's namespace leaves its prepared branches alone", () =>
    Effect.gen(function* () {
      const blue = yield* deployment("blue")
      const { green, txId, gids } = yield* preparedByGreen
      const refused = yield* Effect.either(ThreePhaseCommit.terminate(txId, blue, { namespace: "green" }))
      // Before: blue's participants reached green's uncertain branches in the shared databases
      // and aborted green's transaction under its coordinator's feet.
      expect(Either.isLeft(refused) && refused.left._tag).toBe("InvalidTransactionError")
      expect(yield* prepared).toEqual([...gids].sort())
      expect(yield* stateRows(gids)).toEqual(["uncertain", "uncertain"])
      expect((yield* greenRecovers(green)).aborted).toEqual([txId])
    })
  )

  it.live("an agent over another deployment's namespace leaves its prepared branches alone", () =>
    Effect.gen(function* () {
      const [a, b] = yield* deployment("blue")
      const { green, txId, gids } = yield* preparedByGreen
      const refused = yield* Effect.either(
        ThreePhaseCommit.agent(txId, a, [b], { namespace: "green", timeout: Duration.millis(200) }).pipe(
          Effect.timeout(Duration.seconds(5))
        )
      )
      // Before: after 200 ms without news the agent aborted green's transaction.
      expect(Either.isLeft(refused) && refused.left._tag).toBe("InvalidTransactionError")
      expect(yield* prepared).toEqual([...gids].sort())
      expect(yield* stateRows(gids)).toEqual(["uncertain", "uncertain"])
      expect((yield* greenRecovers(green)).aborted).toEqual([txId])
    })
  )

  it.live("recover with no namespace leaves another deployment's prepared branch alone", () =>
    Effect.gen(function* () {
      const blue = yield* deployment("blue")
      const { green, txId, gids } = yield* preparedByGreen
      const report = yield* ThreePhaseCommit.recover(blue, { orphanAfter: 0 })
      expect(report.aborted).toEqual([])
      expect(report.committed).toEqual([])
      expect(report.unvotedRolledBack).toBe(0)
      expect(yield* prepared).toEqual([...gids].sort())
      expect(yield* stateRows(gids)).toEqual(["uncertain", "uncertain"])
      expect((yield* greenRecovers(green)).aborted).toEqual([txId])
    })
  )
})
