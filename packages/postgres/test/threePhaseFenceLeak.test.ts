/**
 * A 3PC rollback writes its fence (the member's state row: aborted) before it sends ROLLBACK
 * PREPARED. Cut between the two (the connection lost, the process dead), the branch stayed
 * prepared for good, holding its row locks, while its row said aborted: `run`, the member's agent,
 * `watch` and `recover` all took the member for finished and never rolled it back (found by a
 * review, 2026-12-07, with a proxy cutting the link at the ROLLBACK PREPARED). Here the fence is
 * written by hand and the ROLLBACK PREPARED never sent: reading the member's state finishes the
 * rollback the fence decided, and recovery leaves nothing prepared.
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
const DB = "accord_t_3pc_fence_leak"

const adjust = (id: number, amount: number) => (session: PgParticipant.BranchSession) =>
  session.query("update accounts set balance = balance + $2 where id = $1", [id, amount])

describe.skipIf(server === undefined)(
  "a 3PC member whose fence was written and whose rollback was not",
  () => {
    const adminUrl = server?.adminUrl ?? ""
    let sql: postgres.Sql

    beforeAll(async () => {
      const url = await TestDatabase.createDatabase(adminUrl, DB)
      sql = postgres(url, { max: 4, onnotice: () => {} })
      await sql.unsafe("create table accounts (id int primary key, balance int not null)")
      await sql.unsafe("insert into accounts select g, 100 from generate_series(1, 10) g")
    }, 60_000)

    afterAll(() => endAndDrop(adminUrl, [sql], [DB], [DB]), 60_000)

    const preparedFenced = (p: PgThreePhaseParticipant.PgThreePhaseParticipant, id: number) =>
      Effect.gen(function* () {
        const txId = yield* TransactionId.make
        const gid = Either.getOrThrow(TransactionId.validateGid(`accord_${txId}_bank-a`))
        const ctx = { txId, branch: p.name, gid, members: [p.name, "bank-b" as TransactionId.BranchName] }
        expect((yield* p.prepare(ctx, adjust(id, -5)))._tag).toBe("Prepared")
        // The fence committed; the ROLLBACK PREPARED after it never reached the server.
        yield* Effect.promise(() => sql`update accord_3pc_state set state = 'aborted' where gid = ${gid}`)
        expect((yield* Effect.promise(() => preparedIn(adminUrl, [DB]))).map((x) => x.gid)).toEqual([gid])
        return ctx
      })

    it.live("reading its state finishes the rollback", () =>
      Effect.gen(function* () {
        const p = yield* PgThreePhaseParticipant.make({ name: "bank-a", sql })
        const ctx = yield* preparedFenced(p, 1)
        expect(yield* p.state(ctx)).toBe("aborted")
        // Before: still prepared, the row locked, and nothing would ever roll it back.
        expect(yield* Effect.promise(() => preparedIn(adminUrl, [DB]))).toEqual([])
        const balance = yield* Effect.promise(() => sql`select balance from accounts where id = 1`)
        expect(balance[0]!.balance).toBe(100)
      })
    )

    it.live("recovery leaves nothing prepared", () =>
      Effect.gen(function* () {
        const p = yield* PgThreePhaseParticipant.make({ name: "bank-a", sql })
        yield* preparedFenced(p, 2)
        yield* ThreePhaseCommit.recover([p], {
          callTimeout: Duration.seconds(2),
          orphanAfter: Duration.zero
        }).pipe(Effect.ignore)
        expect(yield* Effect.promise(() => preparedIn(adminUrl, [DB]))).toEqual([])
      })
    )
  }
)
