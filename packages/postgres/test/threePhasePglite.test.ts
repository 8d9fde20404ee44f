/**
 * 3PC on PGlite (embedded PostgreSQL): the same participant code as on a server, each member its
 * own PGlite instance (in memory here; a data directory works the same, fsync off).
 */
import { ThreePhaseCommit, TransactionId } from "@accord/core"
import { mkdtemp, rm } from "node:fs/promises"
import { tmpdir } from "node:os"
import { join } from "node:path"
import type { PGlite } from "@electric-sql/pglite"
import { afterAll, beforeAll, describe, expect, it } from "@effect/vitest"
import { Deferred, Duration, Effect, Fiber, Option } from "effect"
import * as PgParticipant from "../src/PgParticipant.js"
import * as PgThreePhaseParticipant from "../src/PgThreePhaseParticipant.js"

const adjust = (id: number, amount: number) => (session: PgParticipant.BranchSession) =>
  session.query("update accounts set balance = balance + $2 where id = $1", [id, amount])

const balanceOf = (db: PGlite, id: number) =>
  Effect.promise(
    async () =>
      (await db.query<{ balance: number }>("select balance from accounts where id = $1", [id])).rows[0]
        ?.balance
  )

/**
 * Runs a transfer whose members never answer `phase` (the coordinator stops there), returning its
 * txId once the first member is asked for it.
 */
const runStoppingAt = (
  phase: "precommit" | "commit",
  branches: ReadonlyArray<readonly [ThreePhaseCommit.AnyThreePhaseParticipant, ReturnType<typeof adjust>]>
) =>
  Effect.gen(function* () {
    const stopped = yield* Deferred.make<void>()
    const stop = (
      p: ThreePhaseCommit.AnyThreePhaseParticipant
    ): ThreePhaseCommit.AnyThreePhaseParticipant => ({
      ...p,
      [phase]: () => Deferred.succeed(stopped, undefined).pipe(Effect.andThen(Effect.never))
    })
    const txId = yield* TransactionId.make
    yield* Effect.raceFirst(
      ThreePhaseCommit.run(
        branches.map(([p, work]) => ThreePhaseCommit.branch(stop(p), work)),
        { txId }
      ).pipe(Effect.map(Option.some)),
      Deferred.await(stopped).pipe(Effect.as(Option.none()))
    )
    return txId
  })

const prepared = (dbs: ReadonlyArray<PGlite>) =>
  Effect.promise(async () => {
    const gids: Array<string> = []
    for (const db of dbs)
      gids.push(
        ...(await db.query<{ gid: string }>("select gid from pg_prepared_xacts")).rows.map((r) => r.gid)
      )
    return gids
  })

describe("PgThreePhaseParticipant on PGlite", () => {
  let dbA: PGlite
  let dbB: PGlite

  beforeAll(async () => {
    dbA = await PgParticipant.openPglite()
    dbB = await PgParticipant.openPglite()
    for (const db of [dbA, dbB]) {
      await db.exec("create table accounts (id int primary key, balance int not null check (balance >= 0))")
      await db.exec("insert into accounts select g, 100 from generate_series(1, 10) g")
    }
  }, 60_000)

  afterAll(async () => {
    for (const db of [dbA, dbB]) {
      expect((await db.query("select gid from pg_prepared_xacts")).rows).toEqual([])
      await db.close()
    }
  })

  const participants = () =>
    Effect.all([
      PgThreePhaseParticipant.makePglite({ name: "bank-a", db: dbA }),
      PgThreePhaseParticipant.makePglite({ name: "bank-b", db: dbB })
    ])

  it.live("commits a transfer in three phases", () =>
    Effect.gen(function* () {
      const [a, b] = yield* participants()
      const outcome = yield* ThreePhaseCommit.run([
        ThreePhaseCommit.branch(a, adjust(1, -10)),
        ThreePhaseCommit.branch(b, adjust(1, 10))
      ])
      expect(outcome._tag).toBe("Committed")
      expect(yield* balanceOf(dbA, 1)).toBe(90)
      expect(yield* balanceOf(dbB, 1)).toBe(110)
      expect(yield* prepared([dbA, dbB])).toEqual([])
    })
  )

  it.live(
    "coordinator stops after all PreCommit acks: the members' agents commit, nothing stays prepared",
    () =>
      Effect.gen(function* () {
        const [a, b] = yield* participants()
        const txId = yield* runStoppingAt("commit", [
          [a, adjust(2, -20)],
          [b, adjust(2, 20)]
        ])
        expect((yield* prepared([dbA, dbB])).length).toBe(2)
        const found = yield* a.inDoubt
        expect(found.map((f) => f.state)).toEqual(["precommitted"])
        const agents = yield* Effect.forEach([a, b], (p) =>
          ThreePhaseCommit.agent(txId, p, [a, b], { timeout: Duration.millis(200) }).pipe(Effect.fork)
        )
        const decisions = yield* Effect.forEach(agents, Fiber.join)
        expect(decisions.map((d) => d._tag)).toEqual(["Committed", "Committed"])
        expect(yield* prepared([dbA, dbB])).toEqual([])
        expect(yield* balanceOf(dbA, 2)).toBe(80)
        expect(yield* balanceOf(dbB, 2)).toBe(120)
      })
  )

  it.live(
    "a PGlite member closed while precommitted reopens from its data directory and recover finishes it",
    () =>
      Effect.gen(function* () {
        const dir = yield* Effect.promise(() => mkdtemp(join(tmpdir(), "accord-3pc-")))
        // Seeded on the first open only: a statement touching account 3 while its branch is
        // prepared would wait for ever (PGlite's lock waits never time out).
        const open = (path: string, seed: boolean) =>
          Effect.promise(async () => {
            const db = await PgParticipant.openPglite(path)
            if (seed) {
              await db.exec(
                "create table accounts (id int primary key, balance int not null check (balance >= 0))"
              )
              await db.exec("insert into accounts select g, 100 from generate_series(1, 10) g")
            }
            return db
          })
        let dbC = yield* open(dir, true)
        const c = yield* PgThreePhaseParticipant.makePglite({ name: "bank-c", db: dbC })
        const [a] = yield* participants()
        const txId = yield* runStoppingAt("commit", [
          [a, adjust(3, -5)],
          [c, adjust(3, 5)]
        ])
        // bank-c's process stops with its branch precommitted, and starts again from the same directory.
        yield* Effect.promise(() => dbC.close())
        dbC = yield* open(dir, false)
        const restarted = yield* PgThreePhaseParticipant.makePglite({ name: "bank-c", db: dbC })
        expect((yield* restarted.inDoubt).map((f) => [f.txId, f.state])).toEqual([[txId, "precommitted"]])
        const report = yield* ThreePhaseCommit.recover([a, restarted], { orphanAfter: 0 })
        expect(report.committed).toEqual([txId])
        expect(yield* prepared([dbA, dbC])).toEqual([])
        expect(yield* balanceOf(dbA, 3)).toBe(95)
        expect(yield* balanceOf(dbC, 3)).toBe(105)
        yield* Effect.promise(() => dbC.close())
        yield* Effect.promise(() => rm(dir, { recursive: true, force: true }))
      }),
    120_000
  )

  it.live("a No vote aborts: the yes-voter is rolled back and both instances take a new transaction", () =>
    Effect.gen(function* () {
      const [a, b] = yield* participants()
      const outcome = yield* ThreePhaseCommit.run([
        ThreePhaseCommit.branch(a, adjust(4, -10)),
        ThreePhaseCommit.branch(b, adjust(4, -1_000))
      ])
      expect(outcome._tag).toBe("Aborted")
      expect(yield* prepared([dbA, dbB])).toEqual([])
      const next = yield* ThreePhaseCommit.run([
        ThreePhaseCommit.branch(a, adjust(4, -10)),
        ThreePhaseCommit.branch(b, adjust(4, 10))
      ]).pipe(Effect.timeout(Duration.seconds(5)))
      expect(next._tag).toBe("Committed")
      expect(yield* balanceOf(dbA, 4)).toBe(90)
      expect(yield* balanceOf(dbB, 4)).toBe(110)
    })
  )

  it.live(
    "coordinator stops before PreCommit: recover aborts the uncertain members and the instances are usable",
    () =>
      Effect.gen(function* () {
        const [a, b] = yield* participants()
        const txId = yield* runStoppingAt("precommit", [
          [a, adjust(5, -5)],
          [b, adjust(5, 5)]
        ])
        expect((yield* prepared([dbA, dbB])).length).toBe(2)
        expect((yield* a.inDoubt).map((f) => f.state)).toEqual(["uncertain"])
        const report = yield* ThreePhaseCommit.recover([a, b], { orphanAfter: 0 })
        expect(report.aborted).toEqual([txId])
        expect(yield* prepared([dbA, dbB])).toEqual([])
        expect(yield* balanceOf(dbA, 5)).toBe(100)
        const next = yield* ThreePhaseCommit.run([
          ThreePhaseCommit.branch(a, adjust(5, -1)),
          ThreePhaseCommit.branch(b, adjust(5, 1))
        ]).pipe(Effect.timeout(Duration.seconds(5)))
        expect(next._tag).toBe("Committed")
      })
  )

  it.live(
    "state rows are written beside another transaction's prepared branch in the same session without waiting",
    () =>
      Effect.gen(function* () {
        const gate = PgParticipant.makeGate()
        const options = { gate, lockTimeout: Duration.millis(300) }
        const a = yield* PgThreePhaseParticipant.makePglite({ name: "bank-a", db: dbA, ...options })
        const b = yield* PgThreePhaseParticipant.makePglite({ name: "bank-b", db: dbB, ...options })
        // T1 prepares on both instances and its coordinator goes away: both gates are held.
        const t1 = yield* TransactionId.make
        const members = [a.name, b.name]
        const member = (p: { readonly name: string }, txId: string) =>
          ({
            txId,
            branch: p.name,
            gid: TransactionId.gid(txId as TransactionId.TransactionId, p.name as TransactionId.BranchName),
            members,
            mode: "classic"
          }) as unknown as ThreePhaseCommit.MemberContext
        expect((yield* a.prepare(member(a, t1), adjust(6, -1)))._tag).toBe("Prepared")
        expect((yield* b.prepare(member(b, t1), adjust(6, 1)))._tag).toBe("Prepared")
        // T1's own state moves, and T2's fence and state reads, run beside the prepared branches.
        const within = <A, E>(e: Effect.Effect<A, E>) => e.pipe(Effect.timeout(Duration.seconds(2)))
        expect(yield* within(a.precommit(member(a, t1)))).toBe("precommitted")
        const t2 = yield* TransactionId.make
        expect(yield* within(b.rollback(member(b, t2)))).toBe("RolledBack")
        expect(yield* within(b.state(member(b, t2)))).toBe("aborted")
        // A T2 branch on the held instance is refused as busy, not hung on T1's row lock.
        const vote = yield* within(a.prepare(member(a, t2), adjust(6, -1)))
        expect(vote._tag).toBe("No")
        const report = yield* ThreePhaseCommit.recover([a, b], { orphanAfter: 0 })
        expect(report.committed).toEqual([t1])
        expect(yield* prepared([dbA, dbB])).toEqual([])
        expect(gate.holder).toBeUndefined()
        expect(yield* balanceOf(dbA, 6)).toBe(99)
        expect(yield* balanceOf(dbB, 6)).toBe(101)
      })
  )
})
