/**
 * 3PC on real PostgreSQL: three bank databases, transfers between them, coordinators that stop at
 * chosen points, participant agents, partitions, and the same stops under 2PC for comparison.
 */
import {
  Participant,
  Recovery,
  ThreePhaseCommit,
  TransactionId,
  TransactionLog,
  TwoPhaseCommit
} from "@accord/core"
import { afterAll, beforeAll, describe, expect, it } from "@effect/vitest"
import { Deferred, Duration, Effect, Fiber, Option, Ref } from "effect"
import postgres from "postgres"
import type * as PgParticipant from "../src/PgParticipant.js"
import * as PgThreePhaseParticipant from "../src/PgThreePhaseParticipant.js"
import * as TestDatabase from "../src/TestDatabase.js"
import { endAndDrop } from "./support/pg2pc.js"

const server = await TestDatabase.server()
const DBS = ["accord_t_3pc_a", "accord_t_3pc_b", "accord_t_3pc_c"] as const
const START = 1_000
const ACCOUNTS = 60

type P3 = ThreePhaseCommit.AnyThreePhaseParticipant
type Pg3 = PgThreePhaseParticipant.PgThreePhaseParticipant

const adjust = (id: number, amount: number) => (session: PgParticipant.BranchSession) =>
  session.query("update accounts set balance = balance + $2 where id = $1", [id, amount])

/** Agents wait this long without news; well above what a live coordinator needs here. */
const agentTimeout = Duration.millis(400)

describe.skipIf(server === undefined)("PgThreePhaseParticipant on PostgreSQL", () => {
  const adminUrl = server?.adminUrl ?? ""
  const urls: Array<string> = []
  const pools: Array<postgres.Sql> = []
  const pool = (i: number) => pools[i]!

  beforeAll(async () => {
    for (const name of DBS) {
      const url = await TestDatabase.createDatabase(adminUrl, name)
      urls.push(url)
      const sql = postgres(url, { max: 6, onnotice: () => {} })
      await sql.unsafe(
        "create table accounts (id int primary key, balance int not null check (balance >= 0))"
      )
      await sql.unsafe(`insert into accounts select g, ${START} from generate_series(1, ${ACCOUNTS}) g`)
      pools.push(sql)
    }
  }, 60_000)

  afterAll(() => endAndDrop(adminUrl, pools, DBS, DBS), 60_000)

  const participants = Effect.gen(function* () {
    const a = yield* PgThreePhaseParticipant.make({ name: "bank-a", sql: pool(0) })
    const b = yield* PgThreePhaseParticipant.make({ name: "bank-b", sql: pool(1) })
    const c = yield* PgThreePhaseParticipant.make({ name: "bank-c", sql: pool(2) })
    return [a, b, c] as const
  })

  const balance = (i: number, id: number) =>
    Effect.promise(async () => {
      const rows = await pool(i)<{ balance: number }[]>`select balance from accounts where id = ${id}`
      return rows[0]!.balance
    })
  const total = Effect.promise(async () => {
    let sum = 0
    for (const sql of pools) {
      const rows = await sql<{ total: number }[]>`select sum(balance)::int as total from accounts`
      sum += rows[0]!.total
    }
    return sum
  })
  const prepared = Effect.promise(async () =>
    (await TestDatabase.preparedOnServer(adminUrl))
      .filter((p) => (DBS as ReadonlyArray<string>).includes(p.database))
      .map((p) => p.gid)
  )
  /** Tries to update a row with a short lock_timeout: "locked" when a prepared branch holds it. */
  const tryUpdate = (i: number, id: number) =>
    Effect.promise(() =>
      pool(i)
        .begin(async (tx) => {
          await tx.unsafe("set local lock_timeout = '200ms'")
          await tx.unsafe("update accounts set balance = balance where id = $1", [id])
          return "updated" as const
        })
        .catch((e: { code?: string }) =>
          e.code === "55P03" ? ("locked" as const) : (`error ${e.code}` as const)
        )
    )
  const stateOf = (p: P3, txId: string) =>
    p.state({
      txId: txId as TransactionId.TransactionId,
      branch: p.name,
      gid: TransactionId.gid(txId as TransactionId.TransactionId, p.name)
    })
  const statesOf = (ps: ReadonlyArray<P3>, txId: string) =>
    Effect.forEach(ps, (p) => stateOf(p, txId).pipe(Effect.orDie))

  /** Three participants and a fresh transaction over them, with each member's context. */
  const threeMemberTransaction = Effect.gen(function* () {
    const [a, b, c] = yield* participants
    const ps = [a, b, c] as const
    const txId = yield* TransactionId.make
    const members = ps.map((p) => p.name)
    const ctxOf = (p: P3) => ({ txId, branch: p.name, gid: TransactionId.gid(txId, p.name), members })
    return { a, b, c, ps, txId, ctxOf }
  })
  /** Account `id` moved by a committed three-member transfer (-2 in a, +1 in b and c); nothing prepared. */
  const transferCommitted = (id: number) =>
    Effect.gen(function* () {
      expect(yield* balance(0, id)).toBe(START - 2)
      expect(yield* balance(1, id)).toBe(START + 1)
      expect(yield* balance(2, id)).toBe(START + 1)
      expect(yield* prepared).toEqual([])
    })

  /** A copy of `p` whose first `state` read answers "initial": a view taken before its vote. */
  const staleFirstRead = (p: P3): P3 => {
    let reads = 0
    return { ...p, state: (ctx) => (reads++ === 0 ? Effect.succeed("initial" as const) : p.state(ctx)) }
  }
  /** Rolls back whatever of the transaction's branches is still prepared (a test's clean-up). */
  const rollBackAll = (
    ps: ReadonlyArray<PgThreePhaseParticipant.PgThreePhaseParticipant>,
    ctxOf: (p: P3) => Participant.BranchContext
  ) => Effect.forEach(ps, (p) => p.twoPhase.rollback(ctxOf(p)).pipe(Effect.ignore), { discard: true })

  const stopAt = (p: P3, method: "precommit" | "commit", stopped: Deferred.Deferred<void>): P3 => ({
    ...p,
    [method]: () => Deferred.succeed(stopped, undefined).pipe(Effect.andThen(Effect.never))
  })
  const signalAfterPrecommit = (p: P3, done: Deferred.Deferred<void>): P3 => ({
    ...p,
    precommit: (ctx) => p.precommit(ctx).pipe(Effect.tap(() => Deferred.succeed(done, undefined)))
  })
  const runUntil = (
    branches: ReadonlyArray<ThreePhaseCommit.AnyBranch>,
    stopped: Deferred.Deferred<void>,
    options: ThreePhaseCommit.Options
  ) =>
    Effect.raceFirst(
      ThreePhaseCommit.run(branches, options).pipe(Effect.map(Option.some)),
      Deferred.await(stopped).pipe(Effect.as(Option.none<ThreePhaseCommit.Outcome>()))
    )
  const agents = (txId: string, ps: ReadonlyArray<P3>, options: ThreePhaseCommit.AgentOptions = {}) =>
    Effect.forEach(ps, (p) =>
      ThreePhaseCommit.agent(txId, p, ps, { timeout: agentTimeout, ...options }).pipe(Effect.fork)
    )

  it.live(
    "state never reads a branch that prepares and votes yes during the call as aborted",
    () =>
      Effect.gen(function* () {
        const [, , c] = yield* participants
        // An observer on bank-c whose second state() statement waits until the branch prepared
        // and voted (a slow network between the two statements).
        let armed = false
        let seen = 0
        let release!: () => void
        const gate = new Promise<void>((r) => {
          release = r
        })
        let reached!: () => void
        const atGate = new Promise<void>((r) => {
          reached = r
        })
        const raw = pool(2)
        const slow = new Proxy(raw, {
          get(target, key) {
            if (key === "unsafe")
              return (...args: Parameters<typeof raw.unsafe>) => {
                if (armed && ++seen === 2) {
                  reached()
                  return gate.then(() => target.unsafe(...args))
                }
                return target.unsafe(...args)
              }
            return Reflect.get(target, key)
          }
        })
        const observer = yield* PgThreePhaseParticipant.make({ name: "bank-c", sql: slow })
        const txId = yield* TransactionId.make
        const ctx = {
          txId,
          branch: c.name,
          gid: TransactionId.gid(txId, c.name),
          members: [c.name]
        }
        armed = true
        const read = yield* observer.state(ctx).pipe(Effect.fork)
        yield* Effect.promise(() => atGate)
        const seenState = yield* Effect.gen(function* () {
          const vote = yield* c.prepare(ctx, adjust(50, 1))
          expect(vote._tag).toBe("Prepared")
          expect(yield* stateOf(c, txId)).toBe("uncertain")
          release()
          return yield* Fiber.join(read)
        }).pipe(Effect.ensuring(c.rollback(ctx).pipe(Effect.ignore)))
        expect(["initial", "uncertain"]).toContain(seenState)
        expect(yield* stateOf(c, txId)).toBe("aborted")
        expect(yield* prepared).toEqual([])
      }),
    30_000
  )

  it.live(
    "rollback never overwrites a precommit: it refuses, and a stale aborting terminator re-evaluates and commits",
    () =>
      Effect.gen(function* () {
        const { a, b, c, ps, txId, ctxOf } = yield* threeMemberTransaction
        // The coordinator had every yes vote and precommitted everyone, then died.
        yield* Effect.gen(function* () {
          for (const [i, p] of ps.entries()) {
            expect((yield* p.prepare(ctxOf(p), adjust(51, i === 0 ? -2 : 1)))._tag).toBe("Prepared")
            expect(yield* p.precommit(ctxOf(p))).toBe("precommitted")
          }
          expect(yield* a.rollback(ctxOf(a))).toBe("Precommitted")
          expect(yield* stateOf(a, txId)).toBe("precommitted")
          // A quorum terminator whose first read of bank-c predates bank-c's vote decides abort.
          const t = yield* ThreePhaseCommit.terminate(txId, [a, b, staleFirstRead(c)], { mode: "quorum" })
          expect(t._tag).toBe("Committed")
          expect(yield* statesOf(ps, txId)).toEqual(["committed", "committed", "committed"])
          expect(yield* a.rollback(ctxOf(a))).toBe("HeuristicCommit")
        }).pipe(Effect.ensuring(rollBackAll(ps, ctxOf)))
        yield* transferCommitted(51)
      }),
    30_000
  )

  for (const [mode, id] of [
    ["classic", 53],
    ["quorum", 55]
  ] as const) {
    it.live(
      `a ${mode} terminator that saw a voted member as unvoted fences it only if unvoted (refused: Voted), and commits`,
      () =>
        Effect.gen(function* () {
          const { a, b, c, ps, txId, ctxOf } = yield* threeMemberTransaction
          yield* Effect.gen(function* () {
            for (const [i, p] of ps.entries()) {
              expect((yield* p.prepare(ctxOf(p), adjust(id, i === 0 ? -2 : 1)))._tag).toBe("Prepared")
            }
            // The coordinator precommitted a and b, then died before c: c voted and is uncertain.
            expect(yield* a.precommit(ctxOf(a))).toBe("precommitted")
            expect(yield* b.precommit(ctxOf(b))).toBe("precommitted")
            expect(yield* c.rollback(ctxOf(c), { onlyIfUnvoted: true })).toBe("Voted")
            expect(yield* a.rollback(ctxOf(a), { onlyIfUnvoted: true })).toBe("Precommitted")
            expect(yield* statesOf(ps, txId)).toEqual(["precommitted", "precommitted", "uncertain"])
            // A terminator whose first read of c predates c's vote sees "a member had not voted yes";
            // rolling everyone back on that view would abort c while a and b refuse: a split.
            const t = yield* ThreePhaseCommit.terminate(txId, [a, b, staleFirstRead(c)], { mode })
            expect(t._tag).toBe("Committed")
            expect(yield* statesOf(ps, txId)).toEqual(["committed", "committed", "committed"])
          }).pipe(Effect.ensuring(rollBackAll(ps, ctxOf)))
          yield* transferCommitted(id)
        }),
      30_000
    )
  }

  it.live(
    "rollback told onlyIfUnvoted fences a gid before its prepare (the vote becomes No) and rolls back an aborted one",
    () =>
      Effect.gen(function* () {
        const [a] = yield* participants
        const txId = yield* TransactionId.make
        const ctx = { txId, branch: a.name, gid: TransactionId.gid(txId, a.name), members: [a.name] }
        yield* Effect.gen(function* () {
          expect(yield* a.rollback(ctx, { onlyIfUnvoted: true })).toBe("RolledBack")
          const vote = yield* a.prepare(ctx, adjust(54, 5))
          expect(vote._tag).toBe("No")
          expect(yield* stateOf(a, txId)).toBe("aborted")
          // Already aborted: the fence answers as a rollback, idempotently.
          expect(yield* a.rollback(ctx, { onlyIfUnvoted: true })).toBe("RolledBack")
        }).pipe(Effect.ensuring(a.twoPhase.rollback(ctx).pipe(Effect.ignore)))
        expect(yield* balance(0, 54)).toBe(START)
        expect(yield* prepared).toEqual([])
      }),
    30_000
  )

  it.live(
    "the mode is recorded with the yes vote: a default recover finishes a quorum transaction by the quorum rules",
    () =>
      Effect.gen(function* () {
        const [a, b, c] = yield* participants
        const ps = [a, b, c] as const
        const txId = yield* TransactionId.make
        const p = ThreePhaseCommit.plan(txId, ps, { mode: "quorum" })
        if (p._tag === "Left") return yield* Effect.die(p.left)
        const ctx = (i: number) => p.right.members[i]!.ctx
        yield* Effect.gen(function* () {
          for (const [i, q] of ps.entries()) {
            expect((yield* q.prepare(ctx(i), adjust(52, i === 0 ? -2 : 1)))._tag).toBe("Prepared")
          }
          // The coordinator precommitted a, then died; b and c formed the abort quorum (Va = 2).
          expect(yield* a.precommit(ctx(0))).toBe("precommitted")
          expect(yield* b.preabort(ctx(1))).toBe("preaborted")
          expect(yield* c.preabort(ctx(2))).toBe("preaborted")
          const found = (yield* a.inDoubt).find((d) => d.txId === txId)
          expect(found?.mode).toEqual({ commit: 2, abort: 2 })
          // A restarted process recovers with its default (classic) options.
          const report = yield* ThreePhaseCommit.recover(ps, { orphanAfter: 0 })
          expect(report.aborted).toEqual([txId])
          expect(yield* statesOf(ps, txId)).toEqual(["aborted", "aborted", "aborted"])
        }).pipe(
          Effect.ensuring(
            Effect.forEach(ps, (q, i) => q.twoPhase.rollback(ctx(i)).pipe(Effect.ignore), { discard: true })
          )
        )
        for (const i of [0, 1, 2]) expect(yield* balance(i, 52)).toBe(START)
        expect(yield* prepared).toEqual([])
      }),
    30_000
  )

  it.live(
    "commits a transfer in three phases and leaves nothing prepared",
    () =>
      Effect.gen(function* () {
        const [a, b] = yield* participants
        const before = yield* total
        const outcome = yield* ThreePhaseCommit.run([
          ThreePhaseCommit.branch(a, adjust(1, -10)),
          ThreePhaseCommit.branch(b, adjust(1, 10))
        ])
        expect(outcome._tag).toBe("Committed")
        expect(yield* balance(0, 1)).toBe(START - 10)
        expect(yield* balance(1, 1)).toBe(START + 10)
        expect(yield* total).toBe(before)
        expect(yield* statesOf([a, b], outcome.txId)).toEqual(["committed", "committed"])
        expect(yield* prepared).toEqual([])
      }),
    30_000
  )

  it.live(
    "a CHECK violation is a No vote: both branches roll back and nothing is precommitted",
    () =>
      Effect.gen(function* () {
        const [a, b] = yield* participants
        const outcome = yield* ThreePhaseCommit.run([
          ThreePhaseCommit.branch(a, adjust(2, -(START + 1))),
          ThreePhaseCommit.branch(b, adjust(2, START + 1))
        ])
        expect(outcome._tag).toBe("Aborted")
        if (outcome._tag !== "Aborted") return
        expect(outcome.reason).toContain("23514")
        expect(yield* statesOf([a, b], outcome.txId)).toEqual(["initial", "aborted"])
        expect(yield* balance(1, 2)).toBe(START)
        expect(yield* prepared).toEqual([])
      }),
    30_000
  )

  it.live(
    "coordinator stops after all PreCommit acks: the participants commit by themselves, the transfer applied",
    () =>
      Effect.gen(function* () {
        const [a, b] = yield* participants
        const stopped = yield* Deferred.make<void>()
        const txId = yield* TransactionId.make
        yield* runUntil(
          [
            ThreePhaseCommit.branch(stopAt(a, "commit", stopped), adjust(3, -25)),
            ThreePhaseCommit.branch(stopAt(b, "commit", stopped), adjust(3, 25))
          ],
          stopped,
          { txId }
        )
        expect(yield* statesOf([a, b], txId)).toEqual(["precommitted", "precommitted"])
        expect((yield* prepared).length).toBe(2)
        const started = Date.now()
        const fibers = yield* agents(txId, [a, b])
        const decisions = yield* Effect.forEach(fibers, Fiber.join)
        expect(decisions.map((d) => d._tag)).toEqual(["Committed", "Committed"])
        expect(Date.now() - started).toBeGreaterThanOrEqual(Duration.toMillis(agentTimeout) - 5)
        expect(yield* prepared).toEqual([])
        expect(yield* balance(0, 3)).toBe(START - 25)
        expect(yield* balance(1, 3)).toBe(START + 25)
      }),
    30_000
  )

  it.live(
    "coordinator stops after the votes, before PreCommit: the participants abort by themselves",
    () =>
      Effect.gen(function* () {
        const [a, b] = yield* participants
        const stopped = yield* Deferred.make<void>()
        const txId = yield* TransactionId.make
        yield* runUntil(
          [
            ThreePhaseCommit.branch(stopAt(a, "precommit", stopped), adjust(4, -25)),
            ThreePhaseCommit.branch(stopAt(b, "precommit", stopped), adjust(4, 25))
          ],
          stopped,
          { txId }
        )
        expect(yield* statesOf([a, b], txId)).toEqual(["uncertain", "uncertain"])
        const decisions = yield* Effect.forEach(yield* agents(txId, [a, b]), Fiber.join)
        expect(decisions.map((d) => d._tag)).toEqual(["Aborted", "Aborted"])
        expect(yield* prepared).toEqual([])
        expect(yield* balance(0, 4)).toBe(START)
        expect(yield* balance(1, 4)).toBe(START)
      }),
    30_000
  )

  it.live(
    "side by side: under 2PC the same stops leave branches prepared, rows locked, until recovery; 3PC finishes alone",
    () =>
      Effect.gen(function* () {
        const [a, b] = yield* participants
        const x = a.twoPhase
        const y = b.twoPhase
        const log = yield* TransactionLog.makeMemory

        // 2PC stop 1: after the votes, before the decision (account 5).
        const stop1 = yield* Deferred.make<void>()
        const deadLog: TransactionLog.TransactionLog["Type"] = {
          ...log,
          decide: () => Deferred.succeed(stop1, undefined).pipe(Effect.andThen(Effect.never))
        }
        yield* Effect.raceFirst(
          TwoPhaseCommit.run([
            Participant.branch(x, adjust(5, -7)),
            Participant.branch(y, adjust(5, 7))
          ]).pipe(Effect.provideService(TransactionLog.TransactionLog, deadLog)),
          Deferred.await(stop1)
        )
        // 2PC stop 2: after the commit decision, before COMMIT PREPARED (account 6).
        const stop2 = yield* Deferred.make<void>()
        const noCommit = (p: Participant.AnyParticipant): Participant.AnyParticipant => ({
          ...p,
          commit: () => Deferred.succeed(stop2, undefined).pipe(Effect.andThen(Effect.never))
        })
        yield* Effect.raceFirst(
          TwoPhaseCommit.run([
            Participant.branch(noCommit(x), adjust(6, -7)),
            Participant.branch(noCommit(y), adjust(6, 7))
          ]).pipe(Effect.provideService(TransactionLog.TransactionLog, log)),
          Deferred.await(stop2)
        )
        // 3PC, the same two stops (accounts 7 and 8).
        const s3 = yield* Deferred.make<void>()
        const tx3 = yield* TransactionId.make
        yield* runUntil(
          [
            ThreePhaseCommit.branch(stopAt(a, "precommit", s3), adjust(7, -7)),
            ThreePhaseCommit.branch(stopAt(b, "precommit", s3), adjust(7, 7))
          ],
          s3,
          { txId: tx3 }
        )
        const s4 = yield* Deferred.make<void>()
        const tx4 = yield* TransactionId.make
        yield* runUntil(
          [
            ThreePhaseCommit.branch(stopAt(a, "commit", s4), adjust(8, -7)),
            ThreePhaseCommit.branch(stopAt(b, "commit", s4), adjust(8, 7))
          ],
          s4,
          { txId: tx4 }
        )
        expect((yield* prepared).length).toBe(8)
        for (const id of [5, 6, 7, 8]) expect(yield* tryUpdate(0, id)).toBe("locked")

        // The 3PC members' agents finish their transactions; nobody touches the 2PC ones.
        const fibers = [...(yield* agents(tx3, [a, b])), ...(yield* agents(tx4, [a, b]))]
        yield* Effect.forEach(fibers, Fiber.join)
        expect(yield* tryUpdate(0, 7)).toBe("updated")
        expect(yield* tryUpdate(0, 8)).toBe("updated")
        expect(yield* balance(0, 7)).toBe(START)
        expect(yield* balance(0, 8)).toBe(START - 7)
        // 2PC: still prepared, still locked, long after the 3PC members finished.
        yield* Effect.sleep(Duration.millis(Duration.toMillis(agentTimeout) * 2))
        expect(yield* tryUpdate(0, 5)).toBe("locked")
        expect(yield* tryUpdate(1, 6)).toBe("locked")
        expect((yield* prepared).length).toBe(4)

        // Recovery returns (with the log): stop 1 is presumed aborted, stop 2 committed.
        const report = yield* Recovery.run([x, y], { orphanAfter: 0 }).pipe(
          Effect.provideService(TransactionLog.TransactionLog, log)
        )
        expect(report.branchesCommitted).toBe(2)
        expect(report.branchesRolledBack).toBe(2)
        expect(yield* prepared).toEqual([])
        expect(yield* tryUpdate(0, 5)).toBe("updated")
        expect(yield* balance(0, 5)).toBe(START)
        expect(yield* balance(1, 6)).toBe(START + 7)
      }),
    30_000
  )

  it.live(
    "a participant that crashes while precommitted restarts, learns the outcome and converges",
    () =>
      Effect.gen(function* () {
        const [a, b] = yield* participants
        const stopped = yield* Deferred.make<void>()
        const txId = yield* TransactionId.make
        yield* runUntil(
          [
            ThreePhaseCommit.branch(stopAt(a, "commit", stopped), adjust(9, -30)),
            ThreePhaseCommit.branch(stopAt(b, "commit", stopped), adjust(9, 30))
          ],
          stopped,
          { txId }
        )
        // b's process dies: its pool is gone, nobody can reach it. a's agent decides alone.
        const crashed = yield* Ref.make(true)
        const reachable: ThreePhaseCommit.Reachability = (_from, to) =>
          to === "bank-b" ? Ref.get(crashed).pipe(Effect.map((down) => !down)) : Effect.succeed(true)
        const bPool = postgres(urls[1]!, { max: 3, onnotice: () => {} })
        const decision = yield* ThreePhaseCommit.agent(txId, a, [b], { timeout: agentTimeout, reachable })
        expect(decision._tag).toBe("Committed")
        if (decision._tag !== "Committed") return
        expect(decision.pending).toEqual(["bank-b"])
        expect(yield* stateOf(a, txId)).toBe("committed")

        // b restarts: a fresh process (pool, participant) finds its precommitted branch in
        // pg_prepared_xacts + accord_3pc_state and asks its peers.
        yield* Ref.set(crashed, false)
        const restarted = yield* PgThreePhaseParticipant.make({ name: "bank-b", sql: bPool })
        const found = yield* restarted.inDoubt
        expect(found.map((f) => [f.txId, f.state, f.members])).toEqual([
          [txId, "precommitted", ["bank-a", "bank-b"]]
        ])
        const report = yield* ThreePhaseCommit.recover([restarted, a], { orphanAfter: 0 })
        expect(report.committed).toEqual([txId])
        expect(yield* stateOf(restarted, txId)).toBe("committed")
        expect(yield* prepared).toEqual([])
        expect(yield* balance(1, 9)).toBe(START + 30)
        yield* Effect.promise(() => bPool.end({ timeout: 5 }))
      }),
    30_000
  )

  /** The coordinator precommits bank-a only, then dies (accounts `id`: a -10, b +5, c +5). */
  const precommitOnlyA = (ps: readonly [Pg3, Pg3, Pg3], id: number, mode: ThreePhaseCommit.Mode) =>
    Effect.gen(function* () {
      const [a, b, c] = ps
      const done = yield* Deferred.make<void>()
      const stopped = yield* Deferred.make<void>()
      const hang: P3["precommit"] = () =>
        Deferred.await(done).pipe(
          Effect.andThen(Deferred.succeed(stopped, undefined)),
          Effect.andThen(Effect.never)
        )
      const txId = yield* TransactionId.make
      yield* runUntil(
        [
          ThreePhaseCommit.branch(signalAfterPrecommit(a, done), adjust(id, -10)),
          ThreePhaseCommit.branch({ ...b, precommit: hang }, adjust(id, 5)),
          ThreePhaseCommit.branch({ ...c, precommit: hang }, adjust(id, 5))
        ],
        stopped,
        { txId, mode }
      )
      expect(yield* statesOf(ps, txId)).toEqual(["precommitted", "uncertain", "uncertain"])
      return txId
    })

  const partition = Effect.gen(function* () {
    const split = yield* Ref.make(true)
    const reachable: ThreePhaseCommit.Reachability = (from, to) =>
      Ref.get(split).pipe(Effect.map((s) => !s || (from === "bank-a") === (to === "bank-a")))
    return { reachable, heal: Ref.set(split, false) }
  })

  it.live(
    "classic mode under a partition {a} | {b, c}: the uncertain side waits for a instead of aborting, and all commit on heal",
    () =>
      Effect.gen(function* () {
        const ps = yield* participants
        const net = yield* partition
        const before = yield* total
        const txId = yield* precommitOnlyA(ps, 10, "classic")
        const fibers = yield* agents(txId, ps, { reachable: net.reachable })
        // a's side sees a precommitted and commits it. Until 2026-12-06 b's and c's agents, seeing
        // only uncertain members, aborted: a's debit committed, the credits rolled back (money
        // disappeared). a may be committed, so they wait for it.
        yield* Fiber.join(fibers[0]!)
        yield* Effect.sleep(Duration.millis(Duration.toMillis(agentTimeout) * 3))
        expect(fibers[1]!.unsafePoll()).toBeNull()
        expect(fibers[2]!.unsafePoll()).toBeNull()
        expect(yield* statesOf(ps, txId)).toEqual(["committed", "uncertain", "uncertain"])
        yield* net.heal
        const decisions = yield* Effect.forEach(fibers.slice(1), Fiber.join)
        expect(decisions.map((d) => d._tag)).toEqual(["Committed", "Committed"])
        expect(yield* statesOf(ps, txId)).toEqual(["committed", "committed", "committed"])
        expect(yield* total).toBe(before)
        expect(yield* prepared).toEqual([])
      }),
    30_000
  )

  it.live(
    "quorum mode under the same partition never diverges: the minority blocks, then converges on heal",
    () =>
      Effect.gen(function* () {
        const ps = yield* participants
        const net = yield* partition
        const before = yield* total
        const txId = yield* precommitOnlyA(ps, 11, "quorum")
        const fibers = yield* agents(txId, ps, { reachable: net.reachable, mode: "quorum" })
        // {b, c} hold the abort quorum (Va = 2 of 3) and abort; a (alone, precommitted) blocks.
        yield* Effect.forEach(fibers.slice(1), Fiber.join)
        expect(yield* statesOf(ps, txId)).toEqual(["precommitted", "aborted", "aborted"])
        yield* Effect.sleep(Duration.millis(Duration.toMillis(agentTimeout) * 3))
        expect(fibers[0]!.unsafePoll()).toBeNull()
        expect(yield* stateOf(ps[0], txId)).toBe("precommitted")
        expect(yield* prepared).toHaveLength(1)
        yield* net.heal
        const aDecision = yield* Fiber.join(fibers[0]!)
        expect(aDecision._tag).toBe("Aborted")
        expect(yield* statesOf(ps, txId)).toEqual(["aborted", "aborted", "aborted"])
        expect(yield* total).toBe(before)
        expect(yield* prepared).toEqual([])
      }),
    30_000
  )

  it.live(
    "recover rolls back a prepared branch that never recorded its vote, and fences a late prepare",
    () =>
      Effect.gen(function* () {
        const [a, b] = yield* participants
        const txId = yield* TransactionId.make
        const gid = TransactionId.gid(txId, a.name)
        // A branch prepared through the 2PC participant: prepared, but no yes vote recorded.
        yield* a.twoPhase.prepare({ txId, branch: a.name, gid }, adjust(12, -1))
        const found = yield* a.inDoubt
        expect(found.find((f) => f.gid === gid)).toMatchObject({ state: "initial", members: undefined })
        const report = yield* ThreePhaseCommit.recover([a, b], { orphanAfter: 0 })
        expect(report.unvotedRolledBack).toBe(1)
        expect(yield* stateOf(a, txId)).toBe("aborted")
        // The fence: the same gid can no longer vote yes.
        const vote = yield* a.prepare(
          { txId, branch: a.name, gid, members: [a.name, b.name] },
          adjust(12, -1)
        )
        expect(vote._tag).toBe("No")
        expect(yield* prepared).toEqual([])
        expect(yield* balance(0, 12)).toBe(START)
      }),
    30_000
  )

  it.live(
    "concurrent transfers whose coordinators die at different points converge after a restart's recover",
    () =>
      Effect.gen(function* () {
        const [a, b] = yield* participants
        const before = yield* total
        const stops = ["none", "precommit", "commit"] as const
        const runs = yield* Effect.forEach(
          Array.from({ length: 30 }, (_, i) => i),
          (i) =>
            Effect.gen(function* () {
              const stop = stops[i % 3]!
              const stopped = yield* Deferred.make<void>()
              const wrap = (p: P3) => (stop === "none" ? p : stopAt(p, stop, stopped))
              const txId = yield* TransactionId.make
              const result = yield* runUntil(
                [
                  ThreePhaseCommit.branch(wrap(a), adjust(21 + i, -(i + 1))),
                  ThreePhaseCommit.branch(wrap(b), adjust(21 + i, i + 1))
                ],
                stopped,
                { txId }
              )
              return { i, stop, txId, finished: Option.isSome(result) }
            }),
          { concurrency: 10 }
        )
        expect(runs.filter((r) => r.finished).map((r) => r.stop)).toEqual(Array(10).fill("none"))
        expect((yield* prepared).length).toBe(40)
        // The coordinator process restarts: one recovery pass finishes everything from the members' records.
        const report = yield* ThreePhaseCommit.recover([a, b], { orphanAfter: 0 })
        expect(report.committed.length).toBe(10)
        expect(report.aborted.length).toBe(10)
        expect(report.blocked).toEqual([])
        expect(yield* prepared).toEqual([])
        expect(yield* total).toBe(before)
        for (const r of runs) {
          const moved = r.stop === "precommit" ? 0 : r.i + 1
          expect(yield* balance(1, 21 + r.i)).toBe(START + moved)
        }
      }),
    30_000
  )

  it.live(
    "the Promise facade runs a 3PC transfer on Postgres participants",
    () =>
      Effect.gen(function* () {
        const { ThreePhaseCoordinator } = yield* Effect.promise(
          () => import("@accord/core/ThreePhaseCoordinator")
        )
        const a = yield* PgThreePhaseParticipant.make({
          name: "bank-a",
          sql: pool(0),
          operations: { adjust: (s, p: { id: number; amount: number }) => adjust(p.id, p.amount)(s) }
        })
        const b = yield* PgThreePhaseParticipant.make({
          name: "bank-b",
          sql: pool(1),
          operations: { adjust: (s, p: { id: number; amount: number }) => adjust(p.id, p.amount)(s) }
        })
        const coordinator = new ThreePhaseCoordinator({ timeout: 5_000, mode: "quorum" })
        const result = yield* Effect.promise(async () => {
          await coordinator.registerParticipant(a)
          await coordinator.registerParticipant(b)
          const r = await coordinator.executeTransaction([
            [a, "adjust", { id: 13, amount: -40 }],
            [b, "adjust", { id: 13, amount: 40 }]
          ])
          await coordinator.dispose()
          return r
        })
        expect(result).toMatchObject({
          committed: true,
          status: "committed",
          protocol: "3pc",
          mode: "quorum"
        })
        expect(yield* balance(0, 13)).toBe(START - 40)
        expect(yield* balance(1, 13)).toBe(START + 40)
        expect(yield* prepared).toEqual([])
      }),
    30_000
  )
})
