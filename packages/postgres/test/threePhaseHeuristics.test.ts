/**
 * 3PC on real PostgreSQL when an operator rolls a member's prepared branch back by hand
 * (`ROLLBACK PREPARED '<gid>'`) behind the protocol's back, after the member voted yes: the
 * transaction's decision stands, and the branch that ended against it is reported and recorded as a
 * heuristic outcome, as 2PC does.
 */
import { ThreePhaseCommit, TransactionId, TransactionLog } from "@accord/core"
import { afterAll, beforeAll, describe, expect, it } from "@effect/vitest"
import { Effect } from "effect"
import postgres from "postgres"
import * as PgThreePhaseParticipant from "../src/PgThreePhaseParticipant.js"
import * as TestDatabase from "../src/TestDatabase.js"
import { adjust, createBank, endAndDrop } from "./support/pg2pc.js"

const server = await TestDatabase.server()
const DBS = ["accord_t_3pc_heur_a", "accord_t_3pc_heur_b"] as const
const rolledBackDetail = "branch was rolled back outside the protocol after the commit decision"

type Pg3 = PgThreePhaseParticipant.PgThreePhaseParticipant

describe.skipIf(server === undefined)("PgThreePhaseParticipant: a branch rolled back by hand", () => {
  const adminUrl = server?.adminUrl ?? ""
  const pools: Array<postgres.Sql> = []
  const pool = (i: number) => pools[i]!

  beforeAll(async () => {
    for (const name of DBS)
      pools.push(postgres(await createBank(adminUrl, name, 10, 100), { max: 4, onnotice: () => {} }))
  }, 60_000)

  afterAll(() => endAndDrop(adminUrl, pools, DBS, DBS), 60_000)

  const members = Effect.suspend(() =>
    Effect.all([
      PgThreePhaseParticipant.make({ name: "bank-a", sql: pool(0) }),
      PgThreePhaseParticipant.make({ name: "bank-b", sql: pool(1) })
    ])
  )
  const balances = (id: number) =>
    Effect.promise(() =>
      Promise.all(
        pools.map((sql) => sql<{ balance: number }[]>`select balance from accounts where id = ${id}`)
      )
    ).pipe(Effect.map((rows) => rows.map((r) => r[0]!.balance)))
  /** An operator's `ROLLBACK PREPARED` of `gid` on database `i`, outside the protocol. */
  const rollBackByHand = (i: number, gid: string) =>
    Effect.promise(() => pool(i).unsafe(`rollback prepared '${gid}'`))
  const ctxOf = (txId: TransactionId.TransactionId, p: Pg3): ThreePhaseCommit.MemberContext => ({
    txId,
    branch: p.name,
    gid: TransactionId.gid(txId, p.name),
    members: ["bank-a" as TransactionId.BranchName, "bank-b" as TransactionId.BranchName],
    mode: "classic"
  })
  const cleanUp = (ps: ReadonlyArray<Pg3>, txId: TransactionId.TransactionId) =>
    Effect.forEach(ps, (p) => p.rollback(ctxOf(txId, p), { overPrecommit: true }).pipe(Effect.ignore), {
      discard: true
    })

  it.live(
    "every member precommitted, then one rolled back by hand: it still reads precommitted; terminate commits the rest and reports and records the heuristic",
    () =>
      Effect.gen(function* () {
        const [a, b] = yield* members
        const log = yield* TransactionLog.makeMemory
        const txId = yield* TransactionId.make
        yield* Effect.gen(function* () {
          // The coordinator had both yes votes and both PreCommit acks, then died before DoCommit.
          for (const [i, p] of [a, b].entries()) {
            expect((yield* p.prepare(ctxOf(txId, p), adjust(1, i === 0 ? -10 : 10)))._tag).toBe("Prepared")
            expect(yield* p.precommit(ctxOf(txId, p))).toBe("precommitted")
          }
          yield* rollBackByHand(0, ctxOf(txId, a).gid)
          // Its recorded state is the protocol's; the lost branch is a heuristic, found by the commit.
          // (Before: read as "aborted", so every terminator decided abort, b refused as precommitted,
          // and the transaction stayed Blocked with b's rows locked.)
          const t = yield* ThreePhaseCommit.terminate(txId, [a, b]).pipe(
            Effect.provideService(TransactionLog.TransactionLog, log)
          )
          expect(t._tag).toBe("Committed")
          expect(yield* a.state(ctxOf(txId, a))).toBe("precommitted")
          const gid = ctxOf(txId, a).gid
          expect(t._tag === "Committed" && t.heuristics).toEqual([
            { branch: "bank-a", gid, detail: rolledBackDetail }
          ])
          expect(yield* log.heuristics).toEqual([
            { txId, branch: "bank-a", gid, decision: "commit", detail: rolledBackDetail }
          ])
          expect(yield* b.state(ctxOf(txId, b))).toBe("committed")
        }).pipe(Effect.ensuring(cleanUp([a, b], txId)))
        // b's credit committed; a's debit was undone by hand: what the heuristic record tells.
        expect(yield* balances(1)).toEqual([100, 110])
      }),
    30_000
  )

  it.live(
    "run: a branch rolled back by hand between PreCommit and DoCommit is reported and recorded",
    () =>
      Effect.gen(function* () {
        const [a, b] = yield* members
        const log = yield* TransactionLog.makeMemory
        // The operator strikes right after bank-a acknowledged its PreCommit.
        const struck: Pg3 = {
          ...a,
          precommit: (ctx) => a.precommit(ctx).pipe(Effect.tap(() => rollBackByHand(0, ctx.gid)))
        }
        const outcome = yield* ThreePhaseCommit.run([
          ThreePhaseCommit.branch(struck, adjust(2, -10)),
          ThreePhaseCommit.branch(b, adjust(2, 10))
        ]).pipe(Effect.provideService(TransactionLog.TransactionLog, log))
        expect(outcome._tag).toBe("Committed")
        const gid = TransactionId.gid(outcome.txId, a.name)
        expect(outcome._tag === "Committed" && outcome.heuristics).toEqual([
          { branch: "bank-a", gid, detail: rolledBackDetail }
        ])
        expect(yield* log.heuristics).toEqual([
          { txId: outcome.txId, branch: "bank-a", gid, decision: "commit", detail: rolledBackDetail }
        ])
        expect(yield* balances(2)).toEqual([100, 110])
      }),
    30_000
  )
})
