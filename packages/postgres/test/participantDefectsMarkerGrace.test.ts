/**
 * `markerGrace` runs from when `forget` first saw a marker, not from the marker's `created_at`
 * (the branch's BEGIN). Before, recovery's `forget` deleted at once the marker of a branch that had
 * been prepared longer than the grace (exactly the branches recovery resolves), and a coordinator
 * still re-driving its COMMIT PREPARED reported a HeuristicRollback that never happened.
 */
import { TransactionId } from "@accord/core"
import { afterAll, beforeAll, describe, expect, it } from "@effect/vitest"
import { Duration, Effect } from "effect"
import postgres from "postgres"
import * as Migrations from "../src/Migrations.js"
import type { BranchSession } from "../src/PgParticipant.js"
import * as PgParticipant from "../src/PgParticipant.js"
import * as TestDatabase from "../src/TestDatabase.js"

const server = await TestDatabase.server()
const DB = "accord_t_participant_defects_grace"
const DB_OLD = "accord_t_participant_defects_grace_old"

const ctxOf = (name: string, namespace?: string) =>
  Effect.map(TransactionId.make, (txId) => ({
    txId,
    branch: name as TransactionId.BranchName,
    gid: TransactionId.gid(txId, name as TransactionId.BranchName, namespace)
  }))

const bump = (s: BranchSession) => s.query("update t set v = v + 1 where id = 1")

describe.skipIf(server === undefined)("markerGrace from when a marker was forgotten", () => {
  const adminUrl = server?.adminUrl ?? ""
  let sql: postgres.Sql

  beforeAll(async () => {
    sql = postgres(await TestDatabase.createDatabase(adminUrl, DB), { max: 4, onnotice: () => {} })
    await sql.unsafe("create table t (id int primary key, v int not null); insert into t values (1, 0)")
  }, 60_000)
  afterAll(async () => {
    await sql?.end({ timeout: 5 })
    const left = await TestDatabase.preparedOnServer(adminUrl)
    await TestDatabase.dropDatabase(adminUrl, DB)
    expect(left.filter((p) => p.database === DB)).toEqual([])
  }, 60_000)

  const markers = () =>
    Effect.promise(async () =>
      (await sql<{ gid: string }[]>`select gid from accord_branch`).map((r) => r.gid)
    )

  /** A branch prepared long before recovery commits it: its marker is an hour old once committed. */
  const committedLongAfterBegin = (p: PgParticipant.PgParticipant, namespace?: string) =>
    Effect.gen(function* () {
      const ctx = yield* ctxOf(p.name, namespace)
      expect((yield* p.prepare(ctx, bump))._tag).toBe("Prepared")
      expect(yield* p.commit(ctx)).toBe("Committed")
      yield* Effect.promise(
        () => sql`update accord_branch set created_at = now() - interval '1 hour' where gid = ${ctx.gid}`
      )
      return ctx
    })

  it.live(
    "recovery's forget keeps the marker of a long-prepared branch: a re-driven commit is Committed",
    () =>
      Effect.gen(function* () {
        const p = yield* PgParticipant.make({ name: "bank-a", sql, markerGrace: Duration.minutes(5) })
        const ctx = yield* committedLongAfterBegin(p)
        yield* p.forget([ctx])
        expect(yield* markers()).toContain(ctx.gid)
        // The coordinator, still retrying its COMMIT PREPARED.
        expect(yield* p.commit(ctx)).toBe("Committed")
        expect(yield* p.state(ctx)).toBe("committed")
      })
  )

  it.live("a marker forgotten more than markerGrace ago goes at a later forget, with its stamp", () =>
    Effect.gen(function* () {
      const p = yield* PgParticipant.make({ name: "bank-a", sql, markerGrace: Duration.minutes(5) })
      const old = yield* committedLongAfterBegin(p)
      yield* p.forget([old])
      yield* Effect.promise(
        () =>
          sql`update accord_branch_forgotten set forgotten_at = now() - interval '6 minutes' where gid = ${old.gid}`
      )
      const fresh = yield* committedLongAfterBegin(p)
      yield* p.forget([fresh])
      const left = yield* markers()
      expect(left).not.toContain(old.gid)
      expect(left).toContain(fresh.gid)
      const stamps = yield* Effect.promise(async () =>
        (await sql<{ gid: string }[]>`select gid from accord_branch_forgotten`).map((r) => r.gid)
      )
      expect(stamps).not.toContain(old.gid)
      expect(stamps).toContain(fresh.gid)
    })
  )

  it.live("a later forget stamps nothing again: the first stamp's time counts", () =>
    Effect.gen(function* () {
      const p = yield* PgParticipant.make({ name: "bank-a", sql, markerGrace: Duration.minutes(5) })
      const ctx = yield* committedLongAfterBegin(p)
      yield* p.forget([ctx])
      yield* Effect.promise(
        () =>
          sql`update accord_branch_forgotten set forgotten_at = now() - interval '6 minutes' where gid = ${ctx.gid}`
      )
      // Forgotten again (a second recovery): the marker is due, and goes.
      yield* p.forget([ctx])
      expect(yield* markers()).not.toContain(ctx.gid)
    })
  )

  it.live("another namespace's or another branch's forgotten markers are left to their own participant", () =>
    Effect.gen(function* () {
      const grace = { markerGrace: Duration.minutes(5) }
      const plain = yield* PgParticipant.make({ name: "bank-a", sql, ...grace })
      const other = yield* PgParticipant.make({ name: "bank-a", sql, namespace: "other", ...grace })
      const sibling = yield* PgParticipant.make({ name: "bank-b", sql, ...grace })
      const theirs = yield* committedLongAfterBegin(other, "other")
      const siblings = yield* committedLongAfterBegin(sibling)
      yield* other.forget([theirs])
      yield* sibling.forget([siblings])
      yield* Effect.promise(
        () => sql`update accord_branch_forgotten set forgotten_at = now() - interval '6 minutes'`
      )
      yield* plain.forget([yield* committedLongAfterBegin(plain)])
      const left = yield* markers()
      expect(left).toContain(theirs.gid)
      expect(left).toContain(siblings.gid)
    })
  )
})

describe.skipIf(server === undefined)("a marker table migrated by an older release", () => {
  const adminUrl = server?.adminUrl ?? ""
  let url: string

  beforeAll(async () => {
    url = await TestDatabase.createDatabase(adminUrl, DB_OLD)
  }, 60_000)
  afterAll(async () => {
    const left = await TestDatabase.preparedOnServer(adminUrl)
    await TestDatabase.dropDatabase(adminUrl, DB_OLD)
    expect(left.filter((p) => p.database === DB_OLD)).toEqual([])
  }, 60_000)

  it.live("is upgraded in place beside a prepared branch, without waiting for its lock", () =>
    Effect.gen(function* () {
      const sql = postgres(url, { max: 4, onnotice: () => {} })
      yield* Effect.addFinalizer(() => Effect.promise(() => sql.end({ timeout: 5 })))
      // The marker table as the previous release created it, and an orphaned branch holding a lock on it.
      yield* Effect.promise(() =>
        sql.unsafe(`create table t (id int primary key, v int not null); insert into t values (1, 0);
          create table accord_branch (gid text primary key, tx_id text not null, branch text not null,
            created_at timestamptz not null default now());
          create index accord_branch_created_at on accord_branch (created_at)`)
      )
      const orphan = yield* ctxOf("bank-a")
      const holder = yield* Effect.promise(() => sql.reserve())
      yield* Effect.promise(() =>
        holder.unsafe(
          `begin; insert into accord_branch (gid, tx_id, branch) values ('${orphan.gid}', '${orphan.txId}', 'bank-a'); prepare transaction '${orphan.gid}'`
        )
      )
      holder.release()
      const started = Date.now()
      const p = yield* PgParticipant.make({ name: "bank-a", sql, verifyTimeout: Duration.seconds(5) })
      expect(Date.now() - started).toBeLessThan(5_000)
      const tables = yield* Effect.promise(
        () => sql`select to_regclass('accord_branch_forgotten') is not null as present`
      )
      expect(tables[0]?.present).toBe(true)
      // Idempotent: a second migration changes nothing.
      yield* Migrations.participant(sql)
      expect(yield* p.commit(orphan)).toBe("Committed")
      yield* p.forget([orphan])
      expect((yield* p.state(orphan)) as string).toBe("committed")
    }).pipe(Effect.scoped)
  )
})
