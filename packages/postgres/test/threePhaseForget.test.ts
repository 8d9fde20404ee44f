/**
 * 3PC `forget` on real PostgreSQL must not delete the state row of a branch that is still prepared:
 * that row is its recorded yes vote (and members), and without it recovery would take the branch for
 * one that never voted and roll it back, even after a commit decision.
 */
import { TransactionId } from "@accord/core"
import { afterAll, beforeAll, describe, expect, it } from "@effect/vitest"
import { Effect, Either } from "effect"
import postgres from "postgres"
import type * as PgParticipant from "../src/PgParticipant.js"
import * as PgThreePhaseParticipant from "../src/PgThreePhaseParticipant.js"
import * as TestDatabase from "../src/TestDatabase.js"
import { endAndDrop } from "./support/pg2pc.js"

const server = await TestDatabase.server()
const DB = "accord_t_3pc_forget"

const adjust = (id: number, amount: number) => (session: PgParticipant.BranchSession) =>
  session.query("update accounts set balance = balance + $2 where id = $1", [id, amount])

describe.skipIf(server === undefined)("PgThreePhaseParticipant.forget", () => {
  const adminUrl = server?.adminUrl ?? ""
  let sql: postgres.Sql

  beforeAll(async () => {
    const url = await TestDatabase.createDatabase(adminUrl, DB)
    sql = postgres(url, { max: 4, onnotice: () => {} })
    await sql.unsafe("create table accounts (id int primary key, balance int not null)")
    await sql.unsafe("insert into accounts select g, 100 from generate_series(1, 10) g")
  }, 60_000)

  afterAll(() => endAndDrop(adminUrl, [sql], [DB], [DB]), 60_000)

  it.live(
    "keeps the recorded vote of a branch still prepared, and forgets it once the branch is finished",
    () =>
      Effect.gen(function* () {
        const p = yield* PgThreePhaseParticipant.make({ name: "bank-a", sql })
        const txId = yield* TransactionId.make
        const gid = Either.getOrThrow(TransactionId.validateGid(`accord_${txId}_bank-a`))
        const ctx = {
          txId,
          branch: p.name,
          gid,
          members: [p.name, "bank-b" as TransactionId.BranchName]
        }
        const vote = yield* p.prepare(ctx, adjust(1, -5))
        expect(vote._tag).toBe("Prepared")
        const rows = () =>
          Effect.promise(() => sql.unsafe("select state from accord_3pc_state where gid = $1", [gid]))
        try {
          // Too early (a coordinator's or operator's mistake): the vote must survive it.
          yield* p.forget([ctx])
          expect((yield* rows()).map((r) => r.state)).toEqual(["uncertain"])
          const found = (yield* p.inDoubt).filter((m) => m.gid === gid)
          expect(found.map((m) => [m.state, m.members])).toEqual([["uncertain", ["bank-a", "bank-b"]]])
        } finally {
          yield* p.rollback(ctx).pipe(Effect.ignore)
        }
        // Finished: now it is forgotten.
        yield* p.forget([ctx])
        expect(yield* rows()).toHaveLength(0)
      }),
    30_000
  )
})
