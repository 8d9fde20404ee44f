/**
 * What the benchmark measures. Every mode is the same transfer (debit one account, credit another)
 * done a different way:
 *
 * - `local`: one database, BEGIN / two UPDATEs / COMMIT, hand-written with postgres.js.
 * - `raw2pc`: across two databases, hand-written: parallel BEGIN/UPDATE/PREPARE TRANSACTION, a
 *   forced decision INSERT in a third database, parallel COMMIT PREPARED.
 * - `raw2pc-group` (opt-in): the same with the decision rows batched by hand (group commit).
 * - `raw2pc-pipelined` (opt-in): the same with each branch sent as one message
 *   (`BEGIN; UPDATE ...; PREPARE TRANSACTION ...`).
 * - `accord2pc`: the same through `TwoPhaseCommit.run` with `PgParticipant`s and `PgTransactionLog`.
 * - `accord2pc-group`: the same with the group-commit decision log.
 * - `accord2pc-pipelined`: `accord2pc` with each branch's UPDATE given as a `Pipeline` work, so that
 *   BEGIN, the UPDATE, the marker and the PREPARE go in one write.
 * - `accord1pc`: both UPDATEs in one branch through Accord (one-phase commit).
 * - `accord-readonly`: one writing branch (both UPDATEs) + one read-only branch.
 * - `accord-saga`: a two-step saga (debit, credit) whose steps run behind the barrier.
 * - `local-pglite`, `accord2pc-pglite`: PGlite (embedded, fsync off) rows, labelled as such.
 *
 * @since 0.1.0
 */
import { mkdtempSync, rmSync } from "node:fs"
import { tmpdir } from "node:os"
import { join } from "node:path"
import { Participant, Saga, SagaLog, TransactionId, TransactionLog, TwoPhaseCommit } from "@accord/core"
import * as Barrier from "@accord/postgres/Barrier"
import * as PgParticipant from "@accord/postgres/PgParticipant"
import * as PgSagaLog from "@accord/postgres/PgSagaLog"
import * as PgTransactionLog from "@accord/postgres/PgTransactionLog"
import * as Pipeline from "@accord/postgres/Pipeline"
import type { PGlite } from "@electric-sql/pglite"
import { Duration, Effect, Either, Exit, Layer, ManagedRuntime, Scope } from "effect"
import type postgres from "postgres"
import * as Server from "./Server.js"

/**
 * A mode opened for one cell: `tx` runs one transfer.
 * @since 0.1.0
 */
export interface Instance {
  readonly tx: () => Promise<void>
  readonly close: () => Promise<void>
}

/**
 * A benchmark mode.
 * @since 0.1.0
 */
export interface Mode {
  readonly name: string
  readonly backend: "postgres" | "pglite"
  /** The mode this one is compared with (same run). */
  readonly baseline?: string
  /** Statements are not counted (PGlite branches run inside PGlite's own transaction API). */
  readonly uncounted?: boolean
  /** Runs only when named in `--modes` (an explanation of a gap, not a row issue 6 asks for). */
  readonly optIn?: boolean
  /** The database of this mode's read-only branch, whose PREPAREs and phase-2 statements are checked. */
  readonly readOnlyDatabase?: string
  readonly open: (concurrency: number) => Promise<Instance>
}

const closeAll = (...pools: ReadonlyArray<postgres.Sql>) =>
  Promise.all(pools.map((p) => p.end({ timeout: 5 }))).then(() => {})

let rawCounter = 0

/** A hand-written coordinator's forced decision write for one transfer. */
type Decide = (id: string, gidA: string, gidB: string) => Promise<unknown>

/**
 * The hand-written coordinator's pool on its database: its sessions run with `synchronous_commit =
 * on` whatever the server's or the database's default, so that its decision INSERT is forced as
 * Accord's is (`PgTransactionLog` sets it for its decision statement).
 * @since 0.1.0
 */
export const decisionPool = (url: string, max: number): postgres.Sql =>
  Server.pool(url, max, { synchronous_commit: "on" })

/** One INSERT per decision, forced (`decisionPool`). */
const decideAlone =
  (coordinator: postgres.Sql): Decide =>
  (id, gidA, gidB) =>
    coordinator`INSERT INTO raw_decisions (tx_id, decision, gids) VALUES (${id}, 'commit', ${[gidA, gidB]})`

/**
 * Group commit by hand: a decision that finds no INSERT in flight is written at once; the ones that
 * arrive while it is in flight are written together by ONE multi-row INSERT (one WAL flush) as soon
 * as it returns. What the author measured as "batching the decision rows".
 */
const decideGrouped = (coordinator: postgres.Sql): Decide => {
  interface Pending {
    readonly id: string
    readonly gidA: string
    readonly gidB: string
    readonly resolve: () => void
    readonly reject: (error: unknown) => void
  }
  let queue: Array<Pending> = []
  let writing = false
  const write = async (batch: ReadonlyArray<Pending>): Promise<void> => {
    writing = true
    try {
      await coordinator`INSERT INTO raw_decisions (tx_id, decision, gids)
        SELECT t, 'commit', ARRAY[ga, gb] FROM unnest(${batch.map((p) => p.id)}::text[],
          ${batch.map((p) => p.gidA)}::text[], ${batch.map((p) => p.gidB)}::text[]) AS u(t, ga, gb)`
      for (const p of batch) p.resolve()
    } catch (error) {
      for (const p of batch) p.reject(error)
    }
    writing = false
    if (queue.length > 0) {
      const next = queue
      queue = []
      void write(next)
    }
  }
  return (id, gidA, gidB) =>
    new Promise<void>((resolve, reject) => {
      queue.push({ id, gidA, gidB, resolve, reject })
      if (!writing) {
        const next = queue
        queue = []
        void write(next)
      }
    })
}

/**
 * A hand-written coordinator's transfer: both branches prepared in parallel by `branch`, a forced
 * decision INSERT, both COMMIT PREPAREDs in parallel; on any failure before the decision, both gids
 * rolled back (presumed abort, as a hand-written coordinator must: never leave a branch prepared).
 * `raw2pc` and the breakdown's "accord SQL by hand" differ only in `branch`.
 * @since 0.1.0
 */
export const byHandTransfer = async (
  pools: { readonly a: postgres.Sql; readonly b: postgres.Sql; readonly coordinator: postgres.Sql },
  id: string,
  branch: (sql: postgres.Sql, gid: string, account: number, delta: number) => Promise<unknown>,
  decide: Decide = decideAlone(pools.coordinator)
): Promise<void> => {
  const { a, b } = pools
  const [x, y] = Server.pickAccounts()
  const gidA = `rawbench_${id}_a`
  const gidB = `rawbench_${id}_b`
  try {
    // Both branches settle before a failure rolls back: with `Promise.all` the ROLLBACK PREPARED of
    // a branch still preparing came first and its PREPARE then left it prepared for good (seen when
    // max_prepared_transactions ran out at c = 32).
    const prepared = await Promise.allSettled([branch(a, gidA, x, -1), branch(b, gidB, y, 1)])
    for (const p of prepared) if (p.status === "rejected") throw p.reason
    await decide(id, gidA, gidB)
  } catch (e) {
    await Promise.allSettled([
      a.unsafe(`ROLLBACK PREPARED '${gidA}'`),
      b.unsafe(`ROLLBACK PREPARED '${gidB}'`)
    ])
    throw e
  }
  await Promise.all([a.unsafe(`COMMIT PREPARED '${gidA}'`), b.unsafe(`COMMIT PREPARED '${gidB}'`)])
}

/** The hand-written branch: `sql.begin`, the UPDATE, `tx.prepare`. */
const rawBranch = (sql: postgres.Sql, gid: string, account: number, delta: number) =>
  sql.begin(async (tx) => {
    await tx`UPDATE accounts SET balance = balance + ${delta} WHERE id = ${account}`
    await tx.prepare(gid)
  })

/**
 * The hand-written branch in one message: `BEGIN; UPDATE ...; PREPARE TRANSACTION '...'` as one
 * simple-protocol query (the account, the amount and the gid are the script's own numbers and
 * name, never input), so one round trip, as `accord2pc-pipelined` sends its branch. If the UPDATE
 * fails the server skips the PREPARE and ends the implicit transaction.
 */
const rawPipelinedBranch = async (sql: postgres.Sql, gid: string, account: number, delta: number) => {
  // On a reserved connection, as `sql.begin` uses one: postgres.js refuses BEGIN on a pool's.
  const conn = await sql.reserve()
  try {
    await conn
      .unsafe(
        `BEGIN; UPDATE accounts SET balance = balance + ${Math.trunc(delta)} WHERE id = ${Math.trunc(account)}; PREPARE TRANSACTION '${gid}'`
      )
      .simple()
  } catch (error) {
    await conn.unsafe("ROLLBACK").catch(() => undefined)
    throw error
  } finally {
    conn.release()
  }
}

/**
 * A hand-written 2PC mode: `branch` for each side, the decisions written one by one or batched
 * (`grouped`). Every one but `raw2pc` itself is opt-in and compared with it.
 */
const byHandMode = (
  dbs: Server.Databases,
  name: string,
  branch: (sql: postgres.Sql, gid: string, account: number, delta: number) => Promise<unknown>,
  grouped: boolean
): Mode => ({
  name,
  backend: "postgres",
  ...(name === "raw2pc" ? {} : { baseline: "raw2pc", optIn: true }),
  open: async (concurrency) => {
    const a = Server.pool(dbs.a, concurrency)
    const b = Server.pool(dbs.b, concurrency)
    const coordinator = decisionPool(dbs.coordinator, concurrency)
    const decide = grouped ? decideGrouped(coordinator) : decideAlone(coordinator)
    return {
      tx: () => byHandTransfer({ a, b, coordinator }, `${process.pid}_${++rawCounter}`, branch, decide),
      close: () => closeAll(a, b, coordinator)
    }
  }
})

/**
 * The hand-written baselines on PostgreSQL.
 * @since 0.1.0
 */
export const rawModes = (dbs: Server.Databases): ReadonlyArray<Mode> => [
  {
    name: "local",
    backend: "postgres",
    open: async (concurrency) => {
      const a = Server.pool(dbs.a, concurrency)
      return {
        tx: async () => {
          const [x, y] = Server.pickAccounts()
          await a.begin(async (tx) => {
            await tx`UPDATE accounts SET balance = balance - 1 WHERE id = ${x}`
            await tx`UPDATE accounts SET balance = balance + 1 WHERE id = ${y}`
          })
        },
        close: () => closeAll(a)
      }
    }
  },
  byHandMode(dbs, "raw2pc", rawBranch, false),
  byHandMode(dbs, "raw2pc-pipelined", rawPipelinedBranch, false),
  byHandMode(dbs, "raw2pc-group", rawBranch, true)
]

type Log = TransactionLog.TransactionLog["Type"]

/** Opens Accord pieces in a scope closed with the instance. */
const withScope = async <A>(build: Effect.Effect<A, unknown, Scope.Scope>) => {
  const scope = Effect.runSync(Scope.make())
  const value = await Effect.runPromise(Scope.extend(build, scope))
  return { value, close: () => Effect.runPromise(Scope.close(scope, Exit.void)) }
}

const accordTx = (log: Log) => {
  const runtime = ManagedRuntime.make(Layer.succeed(TransactionLog.TransactionLog, log))
  return {
    run: async (branches: ReadonlyArray<Participant.AnyBranch>) => {
      const outcome = await runtime.runPromise(TwoPhaseCommit.run(branches))
      if (outcome._tag === "Aborted") throw new Error(outcome.reason)
    },
    dispose: () => runtime.dispose()
  }
}

const updateWork =
  (moves: ReadonlyArray<readonly [number, number]>): PgParticipant.PgWork =>
  async (session) => {
    for (const [account, delta] of moves) {
      await session.query("UPDATE accounts SET balance = balance + $1 WHERE id = $2", [delta, account])
    }
  }

/** The same UPDATE as a pipelined work (`Pipeline`): sent with BEGIN, the marker and the PREPARE. */
const moveStatement = (account: number, delta: number): PgParticipant.PgWork =>
  Pipeline.make([
    { text: "UPDATE accounts SET balance = balance + $1 WHERE id = $2", params: [delta, account] }
  ])

const readWork: PgParticipant.PgWork = async (session) => {
  await session.query("SELECT balance FROM accounts WHERE id = $1", [
    1 + Math.floor(Math.random() * Server.accounts)
  ])
}

/**
 * One transfer made of Accord's own participant and log calls, sequenced by a plain Promise script
 * instead of `TwoPhaseCommit.run`: both PgParticipant prepares as started Promise calls
 * (`Participant.directCall`), the log's `decide` and `complete`, both commits. Nothing else: no
 * phase bounds, no abort path, no metrics. Its gap to `accord2pc` is the protocol program's
 * (fiber, generator, phase bounds, metrics); its gap to `raw2pc` is Accord's SQL and the
 * participant's and log's code.
 * @since 0.1.0
 */
export const accordCallsTransfer = (
  pa: Participant.Participant<PgParticipant.PgWork>,
  pb: Participant.Participant<PgParticipant.PgWork>,
  log: Log
) => {
  const prepare = [pa, pb].map((p) => Participant.directCall(p, "prepare")!)
  const commit = [pa, pb].map((p) => Participant.directCall(p, "commit")!)
  return async (moves: readonly [PgParticipant.PgWork, PgParticipant.PgWork]): Promise<void> => {
    const txId = Effect.runSync(TransactionId.make)
    const resolved = Either.getOrThrow(
      TwoPhaseCommit.validate([Participant.branch(pa, moves[0]), Participant.branch(pb, moves[1])], txId)
    )
    const votes = await Promise.all(
      resolved.map((r, i) => prepare[i]!(r.ctx, r.work as PgParticipant.PgWork).result)
    )
    // Not a coordinator: before the decision it only rolls back what it prepared, as raw2pc does,
    // so the bench leaves nothing behind.
    const rollBack = (reason: string) =>
      Promise.all(
        resolved.map((r, i) => Effect.runPromise(Effect.ignore([pa, pb][i]!.rollback(r.ctx))))
      ).then(() => {
        throw new Error(`accord calls by hand: ${reason}`)
      })
    if (!votes.every((v) => Either.isRight(v) && v.right._tag === "Prepared")) {
      return rollBack("a branch did not prepare")
    }
    const branches = resolved.map((r) => ({ branch: r.ctx.branch, gid: r.ctx.gid }))
    const decided = await Effect.runPromise(
      Effect.either(log.decide({ txId, decision: "commit", branches, decidedAt: Date.now() }))
    )
    if (Either.isLeft(decided)) return rollBack(`the decision was not written: ${decided.left.message}`)
    const acks = await Promise.all(resolved.map((r, i) => commit[i]!(r.ctx).result))
    if (!acks.every(Either.isRight)) throw new Error("accord calls by hand: a commit failed")
    await Effect.runPromise(log.complete(txId))
  }
}

/**
 * Two PgParticipants (bank A and B) and a PgTransactionLog on the benchmark databases, `poolSize`
 * connections a pool, the log with group commit if asked; `close` closes the pieces, then the pools.
 * @since 0.1.0
 */
export const openPieces = async (dbs: Server.Databases, poolSize: number, groupCommit: boolean) => {
  const a = Server.pool(dbs.a, poolSize)
  const b = Server.pool(dbs.b, poolSize)
  const coordinator = Server.pool(dbs.coordinator, poolSize)
  const opened = await withScope(
    Effect.gen(function* () {
      const pa = yield* PgParticipant.make({ name: "bank-a", sql: a })
      const pb = yield* PgParticipant.make({ name: "bank-b", sql: b })
      const log = yield* PgTransactionLog.make(
        groupCommit
          ? { sql: coordinator, groupCommit: { maxWait: Duration.micros(200n), maxBatch: 64 } }
          : { sql: coordinator }
      )
      return { pa, pb, log }
    })
  )
  return {
    ...opened.value,
    close: async () => {
      await opened.close()
      await closeAll(a, b, coordinator)
    }
  }
}

/**
 * Accord on PostgreSQL.
 * @since 0.1.0
 */
export const accordModes = (dbs: Server.Databases): ReadonlyArray<Mode> => {
  const open =
    (shape: "2pc" | "pipelined" | "1pc" | "readonly" | "calls", groupCommit: boolean) =>
    async (concurrency: number): Promise<Instance> => {
      const { pa, pb, log, close } = await openPieces(dbs, concurrency + 1, groupCommit)
      const accord = accordTx(log)
      const byHand = accordCallsTransfer(pa, pb, log)
      return {
        tx: () => {
          const [x, y] = Server.pickAccounts()
          switch (shape) {
            case "calls":
              return byHand([updateWork([[x, -1]]), updateWork([[y, 1]])])
            case "2pc":
              return accord.run([
                Participant.branch(pa, updateWork([[x, -1]])),
                Participant.branch(pb, updateWork([[y, 1]]))
              ])
            case "pipelined":
              return accord.run([
                Participant.branch(pa, moveStatement(x, -1)),
                Participant.branch(pb, moveStatement(y, 1))
              ])
            case "1pc":
              return accord.run([
                Participant.branch(
                  pa,
                  updateWork([
                    [x, -1],
                    [y, 1]
                  ])
                )
              ])
            case "readonly":
              return accord.run([
                Participant.branch(
                  pa,
                  updateWork([
                    [x, -1],
                    [y, 1]
                  ])
                ),
                Participant.branch(pb, readWork)
              ])
          }
        },
        close: async () => {
          await accord.dispose()
          await close()
        }
      }
    }
  return [
    { name: "accord2pc", backend: "postgres", baseline: "raw2pc", open: open("2pc", false) },
    { name: "accord2pc-group", backend: "postgres", baseline: "raw2pc", open: open("2pc", true) },
    {
      name: "accord2pc-pipelined",
      backend: "postgres",
      baseline: "raw2pc",
      open: open("pipelined", false)
    },
    { name: "accord1pc", backend: "postgres", baseline: "local", open: open("1pc", false) },
    {
      name: "accord-readonly",
      backend: "postgres",
      baseline: "raw2pc",
      // The read-only branch is bank B's (`readWork`).
      readOnlyDatabase: new URL(dbs.b).pathname.slice(1),
      open: open("readonly", false)
    },
    {
      name: "accord-calls-by-hand",
      backend: "postgres",
      baseline: "raw2pc",
      optIn: true,
      open: open("calls", false)
    }
  ]
}

const seedPglite = async (db: PGlite) => {
  await db.exec(`CREATE TABLE IF NOT EXISTS accounts (id integer PRIMARY KEY, balance bigint NOT NULL CHECK (balance >= 0));
    TRUNCATE accounts;
    INSERT INTO accounts (id, balance) SELECT g, 1000000000 FROM generate_series(1, ${Server.accounts}) AS g;`)
}

/**
 * PGlite rows (embedded, fsync off: not comparable with the server rows for durability).
 * @since 0.1.0
 */
export const pgliteModes = (): ReadonlyArray<Mode> => [
  {
    name: "local-pglite",
    backend: "pglite",
    open: async () => {
      const dir = mkdtempSync(join(tmpdir(), "accord-bench-"))
      const db = await PgParticipant.openPgliteCloned(join(dir, "a"))
      await seedPglite(db)
      return {
        tx: async () => {
          const [x, y] = Server.pickAccounts()
          await db.transaction(async (tx) => {
            Server.count("BEGIN")
            Server.count("UPDATE")
            await tx.query("UPDATE accounts SET balance = balance - 1 WHERE id = $1", [x])
            Server.count("UPDATE")
            await tx.query("UPDATE accounts SET balance = balance + 1 WHERE id = $1", [y])
            Server.count("COMMIT")
          })
        },
        close: async () => {
          await db.close()
          rmSync(dir, { recursive: true, force: true })
        }
      }
    }
  },
  {
    name: "accord2pc-pglite",
    backend: "pglite",
    baseline: "local-pglite",
    uncounted: true,
    open: async () => {
      const dir = mkdtempSync(join(tmpdir(), "accord-bench-"))
      const a = await PgParticipant.openPgliteCloned(join(dir, "a"))
      const b = await PgParticipant.openPgliteCloned(join(dir, "b"))
      const c = await PgParticipant.openPgliteCloned(join(dir, "coordinator"))
      await seedPglite(a)
      await seedPglite(b)
      const opened = await withScope(
        Effect.gen(function* () {
          const pa = yield* PgParticipant.makePglite({ name: "bank-a", db: a })
          const pb = yield* PgParticipant.makePglite({ name: "bank-b", db: b })
          const log = yield* PgTransactionLog.makePglite(c)
          return { pa, pb, log }
        })
      )
      const { pa, pb, log } = opened.value
      const accord = accordTx(log)
      return {
        tx: () => {
          const [x, y] = Server.pickAccounts()
          return accord.run([
            Participant.branch(pa, updateWork([[x, -1]])),
            Participant.branch(pb, updateWork([[y, 1]]))
          ])
        },
        close: async () => {
          await accord.dispose()
          await opened.close()
          await Promise.all([a.close(), b.close(), c.close()])
          rmSync(dir, { recursive: true, force: true })
        }
      }
    }
  }
]

/**
 * The saga row (`accord-saga`): a two-step saga (debit in bank A, credit in bank B), each step a
 * local transaction behind the barrier, the saga log in the coordinator database.
 * @since 0.1.0
 */
export const sagaModes = (dbs: Server.Databases): ReadonlyArray<Mode> => [
  {
    name: "accord-saga",
    backend: "postgres",
    baseline: "raw2pc",
    open: async (concurrency) => {
      const a = Server.pool(dbs.a, concurrency + 1)
      const b = Server.pool(dbs.b, concurrency + 1)
      const coordinator = Server.pool(dbs.coordinator, concurrency + 1)
      await Barrier.migrate(a)
      await Barrier.migrate(b)
      const move =
        (account: number, delta: number) =>
        async (session: Barrier.BarrierSession): Promise<null> => {
          await session.query("UPDATE accounts SET balance = balance + $1 WHERE id = $2", [delta, account])
          return null
        }
      type Input = { readonly x: number; readonly y: number }
      const saga = Saga.make({
        name: "bench-transfer",
        steps: [
          Saga.step({
            name: "debit",
            action: (ctx) => Barrier.sagaAction(a, ctx, move((ctx.input as Input).x, -1)),
            compensation: (ctx) => Barrier.sagaCompensation(a, ctx, move((ctx.input as Input).x, 1))
          }),
          Saga.step({
            name: "credit",
            action: (ctx) => Barrier.sagaAction(b, ctx, move((ctx.input as Input).y, 1)),
            compensation: (ctx) => Barrier.sagaCompensation(b, ctx, move((ctx.input as Input).y, -1))
          })
        ]
      })
      const log = await Effect.runPromise(PgSagaLog.make(coordinator))
      const runtime = ManagedRuntime.make(Layer.succeed(SagaLog.SagaLog, log))
      return {
        tx: async () => {
          const [x, y] = Server.pickAccounts()
          const outcome = await runtime.runPromise(Saga.run(saga, { x, y }))
          if (outcome._tag !== "Completed") throw new Error(`saga ${outcome._tag}`)
        },
        close: async () => {
          await runtime.dispose()
          await closeAll(a, b, coordinator)
        }
      }
    }
  }
]

/**
 * The modes a run measures: those named in `--modes`, else every mode but the opt-in ones.
 * @since 0.1.0
 */
export const select = (
  all: ReadonlyArray<Mode>,
  names: ReadonlyArray<string> | undefined
): ReadonlyArray<Mode> =>
  names === undefined ? all.filter((m) => m.optIn !== true) : all.filter((m) => names.includes(m.name))

/**
 * Modes of issue 6 this build cannot measure, with the reason.
 * @since 0.1.0
 */
export const missingModes = (): ReadonlyArray<{ readonly mode: string; readonly reason: string }> => []
