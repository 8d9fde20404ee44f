/**
 * A 3PC participant on a database migrated by an older release (the marker table and the 3PC state
 * table, no `accord_branch_forgotten`) upgrades it as a 2PC participant does, unless made with
 * `migrate: false`: its `markerGrace` then runs from `forget`, not from the branch's BEGIN. Before,
 * finding the marker and state tables it told its 2PC participant `migrate: false` whatever it was
 * given, so the upgrade never ran: recovery's `forget` deleted at once the marker of a branch
 * prepared longer than the grace, and a coordinator re-driving its commit read a HeuristicRollback
 * that never happened.
 */
import { TransactionId } from "@accord/core"
import { afterAll, beforeAll, describe, expect, it } from "@effect/vitest"
import { Duration, Effect } from "effect"
import postgres from "postgres"
import * as PgThreePhaseParticipant from "../src/PgThreePhaseParticipant.js"
import * as TestDatabase from "../src/TestDatabase.js"
import { endAndDrop } from "./support/pg2pc.js"

const server = await TestDatabase.server()
const DB_UPGRADED = "fixa_3pc_grace_upgraded"
const DB_KEPT = "fixa_3pc_grace_kept"
const DBS = [DB_UPGRADED, DB_KEPT] as const

/** Accord's participant tables as the previous release created them. */
const OLD_RELEASE_DDL = `create table t (id int primary key, v int not null); insert into t values (1, 0);
  create table accord_branch (gid text primary key, tx_id text not null, branch text not null,
    created_at timestamptz not null default now());
  create index accord_branch_created_at on accord_branch (created_at);
  ${PgThreePhaseParticipant.ddl}`

describe.skipIf(server === undefined)("a 3PC participant on tables migrated by an older release", () => {
  const adminUrl = server?.adminUrl ?? ""
  const pools: Array<postgres.Sql> = []

  beforeAll(async () => {
    for (const name of DBS) {
      const sql = postgres(await TestDatabase.createDatabase(adminUrl, name), { max: 4, onnotice: () => {} })
      await sql.unsafe(OLD_RELEASE_DDL)
      pools.push(sql)
    }
  }, 60_000)

  afterAll(() => endAndDrop(adminUrl, pools, DBS, DBS), 60_000)

  const forgottenTable = (sql: postgres.Sql) =>
    Effect.promise(
      async () =>
        (
          await sql<
            { present: boolean }[]
          >`select to_regclass('accord_branch_forgotten') is not null as present`
        )[0]!.present
    )

  /**
   * An orphaned branch prepared by the older release (marker and yes vote recorded), holding its
   * lock on the marker table: the upgrade must not wait for it.
   */
  const orphanOn = (sql: postgres.Sql) =>
    Effect.gen(function* () {
      const txId = yield* TransactionId.make
      const branch = "bank-a" as TransactionId.BranchName
      const ctx = { txId, branch, gid: TransactionId.gid(txId, branch) }
      const holder = yield* Effect.promise(() => sql.reserve())
      yield* Effect.promise(() =>
        holder.unsafe(
          `begin; update t set v = v + 1 where id = 1;
           insert into accord_branch (gid, tx_id, branch) values ('${ctx.gid}', '${txId}', 'bank-a');
           prepare transaction '${ctx.gid}'`
        )
      )
      holder.release()
      yield* Effect.promise(
        () =>
          sql`insert into accord_3pc_state (gid, tx_id, branch, state, members)
              values (${ctx.gid}, ${txId}, 'bank-a', 'uncertain', 'classic|bank-a')`
      )
      return ctx
    })

  it.live(
    "is upgraded beside a prepared branch, and keeps a long-prepared branch's marker through forget",
    () =>
      Effect.gen(function* () {
        const sql = pools[0]!
        const orphan = yield* orphanOn(sql)
        const started = Date.now()
        const p = yield* PgThreePhaseParticipant.make({
          name: "bank-a",
          sql,
          markerGrace: Duration.minutes(5),
          verifyTimeout: Duration.seconds(5)
        })
        expect(Date.now() - started).toBeLessThan(5_000)
        // Recovery commits the branch, prepared an hour ago, and forgets it.
        expect(yield* p.commit(orphan)).toBe("Committed")
        yield* Effect.promise(
          () => sql`update accord_branch set created_at = now() - interval '1 hour' where gid = ${orphan.gid}`
        )
        yield* p.forget([orphan])
        // The coordinator, still retrying its COMMIT PREPARED: not a heuristic outcome. Before: the
        // 2PC participant was told migrate: false, the marker went at once (its grace counted from
        // the branch's BEGIN), and this answered HeuristicRollback.
        expect(yield* p.commit(orphan)).toBe("Committed")
        expect(yield* p.state(orphan)).toBe("committed")
        expect(yield* forgottenTable(sql)).toBe(true)
      })
  )

  it.live("made with migrate: false, keeps the old tables (and the old grace rule) as they are", () =>
    Effect.gen(function* () {
      const sql = pools[1]!
      const orphan = yield* orphanOn(sql)
      const p = yield* PgThreePhaseParticipant.make({ name: "bank-a", sql, migrate: false })
      expect(yield* forgottenTable(sql)).toBe(false)
      expect(yield* p.commit(orphan)).toBe("Committed")
      expect(yield* p.state(orphan)).toBe("committed")
    })
  )
})
