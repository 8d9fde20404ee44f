/**
 * A PGlite session that set a role of its own keeps it after a branch: the branch restores the
 * role it began with for its own transaction only (a `RESET ROLE` there switched the session to the
 * superuser for good), and its prepared transaction is owned by that role, which commits it.
 */
import { TransactionId } from "@accord/core"
import { describe, expect, it } from "@effect/vitest"
import { Duration, Effect } from "effect"
import * as PgParticipant from "../src/PgParticipant.js"

describe("PgParticipant on PGlite with a session role", () => {
  it.live(
    "keeps the session's role after a branch, and its prepared branch is that role's to commit",
    () =>
      Effect.gen(function* () {
        const db = yield* Effect.promise(() => PgParticipant.openPglite())
        const user = () =>
          Effect.promise(() => db.query<{ u: string }>("select current_user as u")).pipe(
            Effect.map((r) => r.rows[0]!.u)
          )
        yield* Effect.promise(() =>
          db.exec(
            "create table acc (id int primary key, v int); insert into acc values (1, 0); create role app; grant all on acc to app; grant all on schema public to app"
          )
        )
        const p = yield* PgParticipant.makePglite({
          name: "bank-a",
          db,
          gate: PgParticipant.makeGate(),
          lockTimeout: Duration.seconds(2)
        })
        yield* Effect.promise(() => db.exec("grant all on accord_branch to app; set role app"))
        expect(yield* user()).toBe("app")
        const one = yield* TransactionId.make
        const r = yield* p.commitOnePhase(
          { txId: one, branch: p.name, gid: TransactionId.gid(one, p.name) },
          async (s) => {
            await s.query("update acc set v = v + 1 where id = 1")
          }
        )
        expect(r._tag).toBe("Committed")
        // Before: "postgres", for every later query of the application on this instance.
        expect(yield* user()).toBe("app")
        const two = yield* TransactionId.make
        const ctx = { txId: two, branch: p.name, gid: TransactionId.gid(two, p.name) }
        const vote = yield* p.prepare(ctx, async (s) => {
          await s.query("set local role postgres")
          await s.query("update acc set v = v + 1 where id = 1")
        })
        expect(vote._tag).toBe("Prepared")
        const owners = yield* Effect.promise(() =>
          db.query<{ owner: string }>("select owner from pg_prepared_xacts")
        )
        expect(owners.rows.map((o) => o.owner)).toEqual(["app"])
        expect(yield* user()).toBe("app")
        expect(yield* p.commit(ctx)).toBe("Committed")
        yield* Effect.promise(() => db.close())
      }),
    60_000
  )
})
