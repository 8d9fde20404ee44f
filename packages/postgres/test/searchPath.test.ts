/**
 * A branch's (or a barrier step's) work that moves `search_path` (`SET LOCAL search_path = tenant`,
 * the usual multi-tenant pattern) cannot move or break Accord's own statements that run after it in
 * the same transaction: the tables are found once, when the participant is made or the barrier first
 * used, and named with their schema from then on.
 * - `tenant_x` holds the user's table only: a marker or barrier statement naming the table bare
 *   failed there (relation does not exist) and the branch voted No, the step failed.
 * - `tenant_y` holds its own copies of Accord's tables too (migrations run per tenant schema): the
 *   marker landed in the tenant's copy, so the state checks (on pool connections, default
 *   search_path) read a committed branch as rolled back.
 */
import { Participant, ThreePhaseCommit, TransactionLog, TwoPhaseCommit } from "@accord/core"
import { afterAll, beforeAll, describe, expect, it } from "@effect/vitest"
import { Effect } from "effect"
import postgres from "postgres"
import * as Barrier from "../src/Barrier.js"
import type { PGlite } from "@electric-sql/pglite"
import { ctxFor, endAndDrop } from "./support/pg2pc.js"
import * as PgParticipant from "../src/PgParticipant.js"
import * as PgThreePhaseParticipant from "../src/PgThreePhaseParticipant.js"
import * as TestDatabase from "../src/TestDatabase.js"

const server = await TestDatabase.server()
const DBS = ["accord_t_search_path_a", "accord_t_search_path_b"] as const
const START = 100

/** In each database: `tenant_x.accounts`, `tenant_y.accounts`, `tenant_x.stock`, `tenant_y.stock`. */
const TENANT_DDL = ["tenant_x", "tenant_y"].map(
  (tenant) => `create schema ${tenant};
create table ${tenant}.accounts (id int primary key, balance int not null check (balance >= 0));
insert into ${tenant}.accounts select g, ${START} from generate_series(1, 10) g;
create table ${tenant}.stock (sku text primary key, qty int not null check (qty >= 0));`
)

/** Moves `amount` on `tenant`'s account `id` after switching the transaction's search_path to it. */
const adjustIn =
  (tenant: string, id: number, amount: number) => async (session: PgParticipant.BranchSession) => {
    await session.query(`set local search_path = ${tenant}`)
    return session.query(`update ${tenant}.accounts set balance = balance + $2 where id = $1`, [id, amount])
  }

/**
 * The same, but as a DO block: its command tag reports no changed rows, so the branch takes the
 * other marker path (the insert that checks for a transaction id, then PREPARE on its own).
 */
const adjustQuietlyIn =
  (tenant: string, id: number, amount: number) => async (session: PgParticipant.BranchSession) => {
    await session.query(`set local search_path = ${tenant}`)
    return session.query(
      `do $$ begin update ${tenant}.accounts set balance = balance + ${Number(amount)} where id = ${Number(id)}; end $$`
    )
  }

describe.skipIf(server === undefined)("Accord's tables under a search_path the work changes", () => {
  const adminUrl = server?.adminUrl ?? ""
  const pools: Array<postgres.Sql> = []
  const pool = (i: number) => pools[i]!

  beforeAll(async () => {
    for (const name of DBS) {
      const url = await TestDatabase.createDatabase(adminUrl, name)
      const sql = postgres(url, { max: 6, onnotice: () => {} })
      for (const ddl of TENANT_DDL) await sql.unsafe(ddl).simple()
      pools.push(sql)
    }
    // Accord's tables in public (the default search_path), made by the participants and the barrier.
    await Effect.runPromise(
      Effect.all(pools.map((sql, i) => PgThreePhaseParticipant.make({ name: `bank-${i}`, sql })))
    )
    for (const sql of pools) await Barrier.migrate(sql)
    // tenant_y's own copies of them.
    for (const sql of pools) {
      await sql
        .unsafe(`create table tenant_y.accord_branch (like public.accord_branch including all);
create table tenant_y.accord_3pc_state (like public.accord_3pc_state including all);
create table tenant_y.accord_saga_barrier (like public.accord_saga_barrier including all);`)
        .simple()
    }
  }, 60_000)

  afterAll(() => endAndDrop(adminUrl, pools, DBS, DBS), 60_000)

  const balance = (i: number, tenant: string, id: number) =>
    Effect.promise(async () => {
      const rows = await pool(i).unsafe<{ balance: number }[]>(
        `select balance from ${tenant}.accounts where id = $1`,
        [id]
      )
      return rows[0]!.balance
    })

  const markersIn = (i: number, table: string, txId: string) =>
    Effect.promise(async () =>
      (
        await pool(i).unsafe<{ branch: string }[]>(`select branch from ${table} where tx_id = $1`, [txId])
      ).map((r) => r.branch)
    )

  const twoPhase = Effect.suspend(() =>
    Effect.all([
      PgParticipant.make({ name: "bank-a", sql: pool(0) }),
      PgParticipant.make({ name: "bank-b", sql: pool(1) })
    ])
  )

  it.live("2PC: a work that sets search_path to a schema without Accord's tables commits", () =>
    Effect.gen(function* () {
      const [pa, pb] = yield* twoPhase
      const outcome = yield* TwoPhaseCommit.run([
        Participant.branch(pa, adjustIn("tenant_x", 1, -10)),
        Participant.branch(pb, adjustQuietlyIn("tenant_x", 1, 10))
      ]).pipe(Effect.provide(TransactionLog.layerMemory))
      expect(outcome._tag).toBe("Committed")
      expect(yield* balance(0, "tenant_x", 1)).toBe(START - 10)
      expect(yield* balance(1, "tenant_x", 1)).toBe(START + 10)
      // Both markers are where the state checks look: each branch reads as committed.
      for (const [i, p] of [pa, pb].entries()) {
        const ctx = { txId: outcome.txId, branch: p.name, gid: outcome.votes[i]!.gid }
        expect(yield* p.state(ctx)).toBe("committed")
        // A COMMIT PREPARED driven again (recovery after a lost answer) finds the marker.
        expect(yield* p.commit(ctx)).toBe("Committed")
      }
    })
  )

  it.live(
    "2PC: with a schema that holds its own accord_branch, the marker goes to Accord's table and the branch reads committed",
    () =>
      Effect.gen(function* () {
        const [pa, pb] = yield* twoPhase
        const outcome = yield* TwoPhaseCommit.run([
          Participant.branch(pa, adjustIn("tenant_y", 2, -10)),
          Participant.branch(pb, adjustQuietlyIn("tenant_y", 2, 10))
        ]).pipe(Effect.provide(TransactionLog.layerMemory))
        expect(outcome._tag).toBe("Committed")
        expect(yield* balance(0, "tenant_y", 2)).toBe(START - 10)
        expect(yield* balance(1, "tenant_y", 2)).toBe(START + 10)
        for (const [i, p] of [pa, pb].entries()) {
          const ctx = { txId: outcome.txId, branch: p.name, gid: outcome.votes[i]!.gid }
          expect(yield* p.state(ctx)).toBe("committed")
          // Not a heuristic rollback: the branch committed.
          expect(yield* p.commit(ctx)).toBe("Committed")
          expect(yield* markersIn(i, "public.accord_branch", outcome.txId)).toEqual([p.name])
          expect(yield* markersIn(i, "tenant_y.accord_branch", outcome.txId)).toEqual([])
        }
      })
  )

  it.live(
    "3PC: a committed branch whose work set search_path to a schema with its own accord_branch reads committed",
    () =>
      Effect.gen(function* () {
        const [a, b] = yield* Effect.all([
          PgThreePhaseParticipant.make({ name: "bank-a", sql: pool(0) }),
          PgThreePhaseParticipant.make({ name: "bank-b", sql: pool(1) })
        ])
        const outcome = yield* ThreePhaseCommit.run([
          ThreePhaseCommit.branch(a, adjustIn("tenant_y", 3, -10)),
          ThreePhaseCommit.branch(b, adjustIn("tenant_y", 3, 10))
        ])
        expect(outcome._tag).toBe("Committed")
        expect(yield* balance(0, "tenant_y", 3)).toBe(START - 10)
        expect(yield* balance(1, "tenant_y", 3)).toBe(START + 10)
        for (const [i, p] of [a, b].entries()) {
          expect(yield* p.state({ txId: outcome.txId, branch: p.name, gid: outcome.votes[i]!.gid })).toBe(
            "committed"
          )
          expect(yield* markersIn(i, "public.accord_branch", outcome.txId)).toEqual([p.name])
          expect(yield* markersIn(i, "tenant_y.accord_branch", outcome.txId)).toEqual([])
        }
      })
  )

  for (const tenant of ["tenant_x", "tenant_y"]) {
    it.live(
      `barrier: a step whose work sets search_path = ${tenant} keeps its row and result in Accord's table`,
      () =>
        Effect.gen(function* () {
          const conn = pool(0)
          const sku = `sku-${tenant}`
          const gid = `saga-${tenant}-${Date.now()}`
          yield* Effect.promise(() => conn.unsafe(`insert into ${tenant}.stock values ($1, 5)`, [sku]))
          const reserve = async (s: Barrier.BarrierSession) => {
            await s.query(`set local search_path = ${tenant}`)
            const rows = await s.query<{ qty: number }>(
              `update ${tenant}.stock set qty = qty - 1 where sku = $1 returning qty`,
              [sku]
            )
            return { left: rows[0]!.qty }
          }
          const target = { gid, branch: "reserve", op: "action" } as const
          const first = yield* Barrier.run(conn, target, reserve)
          expect(first).toEqual({ _tag: "Applied", value: { left: 4 } })
          // Delivered again: skipped, with the first run's result.
          const again = yield* Barrier.run(conn, target, reserve)
          expect(again).toEqual({ _tag: "Duplicate", value: { left: 4 } })
          const qty = yield* Effect.promise(() =>
            conn.unsafe<{ qty: number }[]>(`select qty from ${tenant}.stock where sku = $1`, [sku])
          )
          expect(qty[0]!.qty).toBe(4)
          const rows = (table: string) =>
            Effect.promise(() =>
              conn.unsafe<{ op: string; result: unknown }[]>(
                `select op, result from ${table} where gid = $1`,
                [gid]
              )
            )
          expect(Array.from(yield* rows("public.accord_saga_barrier"))).toEqual([
            { op: "action", result: { left: 4 } }
          ])
          if (tenant === "tenant_y")
            expect(Array.from(yield* rows("tenant_y.accord_saga_barrier"))).toEqual([])
          // A compensation after the action: its rows land in Accord's table too, and it is not a null compensation.
          const undo = yield* Barrier.run(conn, { ...target, op: "compensation" }, async (s) => {
            await s.query(`set local search_path = ${tenant}`)
            await s.query(`update ${tenant}.stock set qty = qty + 1 where sku = $1`, [sku])
          })
          expect(undo._tag).toBe("Applied")
          expect((yield* rows("public.accord_saga_barrier")).map((r) => r.op).sort()).toEqual([
            "action",
            "compensation"
          ])
        })
    )
  }
})

describe("Accord's tables under a search_path the work changes, on PGlite", () => {
  let db: PGlite

  beforeAll(async () => {
    db = await PgParticipant.openPglite()
    for (const ddl of TENANT_DDL) await db.exec(ddl)
  }, 60_000)

  afterAll(async () => {
    await db?.close()
  }, 60_000)

  it.live(
    "a branch and a barrier step whose work sets search_path keep Accord's rows where they are read",
    () =>
      Effect.gen(function* () {
        const p = yield* PgParticipant.makePglite({ name: "bank-a", db })
        yield* Effect.promise(() => Barrier.migrate(db))
        yield* Effect.promise(() =>
          db.exec(`create table tenant_y.accord_branch (like public.accord_branch including all);
create table tenant_y.accord_saga_barrier (like public.accord_saga_barrier including all);`)
        )
        for (const tenant of ["tenant_x", "tenant_y"]) {
          const ctx = yield* ctxFor("bank-a")
          // DO: no changed rows reported, so the marker goes through the insert that checks for an xid.
          expect((yield* p.prepare(ctx, adjustQuietlyIn(tenant, 4, -1)))._tag).toBe("Prepared")
          expect(yield* p.commit(ctx)).toBe("Committed")
          expect(yield* p.state(ctx)).toBe("committed")

          const target = { gid: `saga-${tenant}`, branch: "reserve", op: "action" } as const
          const work = async (s: Barrier.BarrierSession) => {
            await s.query(`set local search_path = ${tenant}`)
            return tenant
          }
          expect(yield* Barrier.run(db, target, work)).toEqual({ _tag: "Applied", value: tenant })
          expect(yield* Barrier.run(db, target, work)).toEqual({ _tag: "Duplicate", value: tenant })
        }
        const count = (table: string) =>
          Effect.promise(async () => (await db.query(`select 1 from ${table}`)).rows.length)
        expect(yield* count("public.accord_branch")).toBe(2)
        expect(yield* count("public.accord_saga_barrier")).toBe(2)
        expect(yield* count("tenant_y.accord_branch")).toBe(0)
        expect(yield* count("tenant_y.accord_saga_barrier")).toBe(0)
      })
  )
})
