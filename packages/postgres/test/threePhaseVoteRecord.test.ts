/**
 * 3PC on real PostgreSQL when the yes vote cannot be recorded: the state table is missing (a schema
 * managed by hand, `migrate: false`), or its write is refused. A branch is prepared before its vote
 * is written, and every later rollback (the coordinator's, recovery's) fences the gid in that same
 * table first: a branch left prepared there holds its row locks until someone rolls it back by hand.
 */
import { ThreePhaseCommit, TransactionError } from "@accord/core"
import { afterAll, beforeAll, describe, expect, it } from "@effect/vitest"
import { Effect, Either } from "effect"
import postgres from "postgres"
import * as Migrations from "../src/Migrations.js"
import * as PgThreePhaseParticipant from "../src/PgThreePhaseParticipant.js"
import * as TestDatabase from "../src/TestDatabase.js"
import { adjust, createBank, endAndDrop } from "./support/pg2pc.js"

const server = await TestDatabase.server()
const DBS = ["accord_t_3pc_vote_a", "accord_t_3pc_vote_b"] as const

describe.skipIf(server === undefined)("PgThreePhaseParticipant when the vote cannot be recorded", () => {
  const adminUrl = server?.adminUrl ?? ""
  const pools: Array<postgres.Sql> = []
  const pool = (i: number) => pools[i]!

  beforeAll(async () => {
    for (const name of DBS)
      pools.push(postgres(await createBank(adminUrl, name, 10, 100), { max: 4, onnotice: () => {} }))
  }, 60_000)

  afterAll(() => endAndDrop(adminUrl, pools, DBS, DBS), 60_000)

  const prepared = Effect.promise(async () =>
    (await TestDatabase.preparedOnServer(adminUrl))
      .filter((p) => (DBS as ReadonlyArray<string>).includes(p.database))
      .map((p) => p.gid)
  )

  it.live(
    "make with migrate: false refuses a database without accord_3pc_state (ConfigurationError with the fix)",
    () =>
      Effect.gen(function* () {
        // The schema made by hand as PgParticipant's own fix says: the marker table only.
        yield* Migrations.participant(pool(0)).pipe(Effect.orDie)
        const made = yield* Effect.either(
          PgThreePhaseParticipant.make({ name: "bank-a", sql: pool(0), migrate: false })
        )
        expect(Either.isLeft(made)).toBe(true)
        if (Either.isLeft(made)) {
          expect(made.left).toBeInstanceOf(TransactionError.ConfigurationError)
          expect(made.left.message).toContain("accord_3pc_state")
        }
        expect(yield* prepared).toEqual([])
      }),
    30_000
  )

  it.live(
    "a prepare whose yes vote is refused rolls its branch back: a definite No, nothing stays prepared",
    () =>
      Effect.gen(function* () {
        const a = yield* PgThreePhaseParticipant.make({ name: "bank-a", sql: pool(0) })
        const b = yield* PgThreePhaseParticipant.make({ name: "bank-b", sql: pool(1) })
        // bank-b's state table refuses every write (as with a full disk or a revoked grant): its
        // vote cannot be recorded, and neither can the fence that the coordinator's rollback writes.
        yield* Effect.promise(() =>
          pool(1).unsafe(`
            create function refuse_vote() returns trigger language plpgsql as $$
            begin raise exception 'vote refused' using errcode = '53100'; end $$;
            create trigger refuse_vote before insert on accord_3pc_state
              for each row execute function refuse_vote();`)
        )
        const outcome = yield* ThreePhaseCommit.run([
          ThreePhaseCommit.branch(a, adjust(1, -10)),
          ThreePhaseCommit.branch(b, adjust(1, 10))
        ])
        expect(outcome._tag).toBe("Aborted")
        // The member rolled its own unvoted branch back; nothing holds the account rows.
        expect(yield* prepared).toEqual([])
        yield* Effect.promise(() => pool(1).unsafe("drop trigger refuse_vote on accord_3pc_state"))
        const balances = yield* Effect.promise(() =>
          Promise.all(
            pools.map((sql) => sql<{ balance: number }[]>`select balance from accounts where id = 1`)
          )
        )
        expect(balances.map((rows) => rows[0]!.balance)).toEqual([100, 100])
      }),
    30_000
  )
})
