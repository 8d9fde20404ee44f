/**
 * Two deployments sharing a coordinator log under the same participant names, told apart by their
 * gid namespace: `PgParticipant.owns` keeps each one's recovery off the other's decisions, and a
 * transaction in a namespace its participants do not own is refused.
 */
import { Participant, TransactionId, TwoPhaseCommit, TransactionLog } from "@accord/core"
import type { PGlite } from "@electric-sql/pglite"
import { afterAll, beforeAll, describe, expect, it } from "@effect/vitest"
import { Effect, Either } from "effect"
import * as PgParticipant from "../src/PgParticipant.js"
import * as PgRecovery from "../src/PgRecovery.js"
import * as PgTransactionLog from "../src/PgTransactionLog.js"

describe("PgParticipant.owns", () => {
  let dbX: PGlite
  let dbY: PGlite
  let dbLog: PGlite
  beforeAll(async () => {
    ;[dbX, dbY, dbLog] = await Promise.all([
      PgParticipant.openPglite(),
      PgParticipant.openPglite(),
      PgParticipant.openPglite()
    ])
    for (const db of [dbX, dbY]) await db.exec("create table t (x int)")
  }, 120_000)
  afterAll(async () => {
    await Promise.all([dbX?.close(), dbY?.close(), dbLog?.close()])
  })

  it.live("one deployment's recovery leaves the other's decision in a shared log alone", () =>
    Effect.scoped(
      Effect.gen(function* () {
        const log = yield* PgTransactionLog.makePglite(dbLog)
        const mainX = yield* PgParticipant.makePglite({ name: "main", db: dbX, namespace: "x" })
        const mainY = yield* PgParticipant.makePglite({ name: "main", db: dbY, namespace: "y" })
        // Deployment y prepared its branch and decided to commit; its coordinator stopped there.
        const txId = yield* TransactionId.make
        const ctx = { txId, branch: mainY.name, gid: TransactionId.gid(txId, mainY.name, "y") }
        expect((yield* mainY.prepare(ctx, (s) => s.query("insert into t values (1)")))._tag).toBe("Prepared")
        yield* log.decide({
          txId,
          decision: "commit",
          branches: [{ branch: ctx.branch, gid: ctx.gid }],
          decidedAt: 0
        })
        // Deployment x's recovery, over its own "main".
        const report = yield* PgRecovery.run({ participants: [mainX], log, options: { orphanAfter: 0 } })
        // Before: x sent y's gid to its own database, found it gone without a marker, recorded a
        // heuristic and completed y's decision; y's recovery then rolled y's branch back as a duplicate.
        expect(report.heuristics).toEqual([])
        expect(report.transactionsFinished).toBe(0)
        expect((yield* log.heuristics).length).toBe(0)
        // y's own recovery commits it.
        const own = yield* PgRecovery.run({ participants: [mainY], log, options: { orphanAfter: 0 } })
        expect(own.branchesCommitted).toBe(1)
        expect(
          (yield* Effect.promise(() => dbY.query<{ n: number }>("select count(*)::int as n from t"))).rows[0]!
            .n
        ).toBe(1)
      })
    )
  )

  it.live(
    "a transaction in another namespace than its participant's is refused before anything is sent",
    () =>
      Effect.gen(function* () {
        const mainX = yield* PgParticipant.makePglite({ name: "main", db: dbX, namespace: "x" })
        const refused = yield* Effect.either(
          TwoPhaseCommit.run([Participant.branch(mainX, (s) => s.query("insert into t values (2)"))], {
            namespace: "y"
          }).pipe(Effect.provide(TransactionLog.layerMemory))
        )
        expect(Either.isLeft(refused) && refused.left._tag).toBe("InvalidTransactionError")
        const ok = yield* TwoPhaseCommit.run(
          [Participant.branch(mainX, (s) => s.query("insert into t values (2)"))],
          {
            namespace: "x"
          }
        ).pipe(Effect.provide(TransactionLog.layerMemory))
        expect(ok._tag).toBe("Committed")
      })
  )
})
