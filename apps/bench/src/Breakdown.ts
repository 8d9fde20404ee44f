/**
 * `--breakdown [N]`: where the coordinator process spends client CPU per transaction, piece by
 * piece, each Accord piece beside its hand-written twin.
 *
 * Every shape runs SEQUENTIALLY (one operation at a time), N times after a warm-up of N/10. The
 * whole list runs twice (interleaved rounds, so a burst of load on the shared machine falls on
 * all shapes alike); a shape reports the median of its rounds. Client CPU is `process.cpuUsage`
 * (user + system, every thread of this process), statements come from the pools' counter.
 *
 * Shapes (twin first, then the Accord piece it explains):
 * - `raw branch` / `PgParticipant branch`: one branch on bank A, prepared then committed.
 * - `raw decision insert` / `PgTransactionLog.decide`: the forced commit decision (plus, for the
 *   log, its batched completion).
 * - `promises only` / `core only, async participants`: the coordinator's control flow with Promise
 *   participants (with direct calls, as PgParticipant's) and a log that answer after `setImmediate`,
 *   no database.
 * - `raw2pc transaction` / `accord SQL by hand` / `accord calls, Promise-sequenced` /
 *   `accord2pc transaction`: one whole transfer, as in the table modes. The second sends Accord's
 *   statements from a hand-written script (its gap to `raw2pc` is the SQL's); the third makes
 *   Accord's own participant and log calls from a Promise script (its gap to the second is that
 *   code's); the gap from it to `accord2pc` is the protocol program's.
 *
 * @since 0.1.0
 */
import { Participant, TransactionId, TransactionLog, TwoPhaseCommit } from "@accord/core"
import * as Migrations from "@accord/postgres/Migrations"
import * as PgParticipant from "@accord/postgres/PgParticipant"
import * as PgTransactionLog from "@accord/postgres/PgTransactionLog"
import { Effect, Either, Exit, Layer, ManagedRuntime, Option, Scope } from "effect"
import type postgres from "postgres"
import * as CoreOverhead from "./CoreOverhead.js"
import * as Modes from "./Modes.js"
import * as Server from "./Server.js"

/**
 * One measured round of one shape.
 * @since 0.1.0
 */
export interface Round {
  readonly wallMicrosPerOp: number
  readonly cpuMicrosPerOp: number
  readonly statementsPerOp: number
}

/**
 * One shape's result: the median of its rounds, and the rounds.
 * @since 0.1.0
 */
export interface Row extends Round {
  readonly shape: string
  /** The hand-written shape this Accord piece is compared with. */
  readonly twin?: string
  /** CPU µs/op above the twin's (Accord rows only). */
  readonly cpuMicrosOverTwin?: number
  readonly rounds: ReadonlyArray<Round>
}

/**
 * The breakdown's result.
 * @since 0.1.0
 */
export interface Result {
  /** Measured operations per shape and round. */
  readonly operations: number
  /** Warm-up operations per shape and round. */
  readonly warmup: number
  /** Interleaved rounds; each row is the median of its rounds. */
  readonly rounds: number
  readonly rows: ReadonlyArray<Row>
  /** Prepared transactions left in the bank databases afterwards (must be 0). */
  readonly preparedLeft: number
}

/** A shape opened for the whole run. */
interface Instance {
  readonly op: () => Promise<void>
  /**
   * Writes what the operations left queued in the background (batched completions), so their
   * statements are counted with the shape; returns how many statements it sent for itself.
   */
  readonly settle?: () => Promise<number>
  readonly close: () => Promise<void>
}

interface Shape {
  readonly name: string
  readonly twin?: string
  readonly open: () => Promise<Instance>
}

const rounds = 2

type Log = PgTransactionLog.PgTransactionLog

/** Opens Accord pieces in a scope closed with the instance (as Modes.ts does). */
const withScope = async <A>(build: Effect.Effect<A, unknown, Scope.Scope>) => {
  const scope = Effect.runSync(Scope.make())
  const value = await Effect.runPromise(Scope.extend(build, scope))
  return { value, close: () => Effect.runPromise(Scope.close(scope, Exit.void)) }
}

const closeAll = (...pools: ReadonlyArray<postgres.Sql>) =>
  Promise.all(pools.map((p) => p.end({ timeout: 5 }))).then(() => {})

/**
 * Writes a log's queued completions: any read waits for them first. The read is one statement of
 * the settle's own.
 */
const settleLog = (log: Log) => async () => {
  await Effect.runPromise(log.decision(Effect.runSync(TransactionId.make)))
  return 1
}

const updateWork =
  (account: number, delta: number): PgParticipant.PgWork =>
  async (session) => {
    await session.query("UPDATE accounts SET balance = balance + $1 WHERE id = $2", [delta, account])
  }

// Apart from the raw2pc mode's ids (`<pid>_<n>`), which share raw_decisions with these.
let rawCounter = 0
const rawId = () => `${process.pid}_bd${++rawCounter}`

const rawBranch = (dbs: Server.Databases): Shape => ({
  name: "raw branch",
  open: async () => {
    const a = Server.pool(dbs.a, 1)
    return {
      op: async () => {
        const [x] = Server.pickAccounts()
        const gid = `rawbench_${rawId()}_a`
        try {
          await a.begin(async (tx) => {
            await tx`UPDATE accounts SET balance = balance + ${1} WHERE id = ${x}`
            await tx.prepare(gid)
          })
          await a.unsafe(`COMMIT PREPARED '${gid}'`)
        } catch (e) {
          await a.unsafe(`ROLLBACK PREPARED '${gid}'`).catch(() => {})
          throw e
        }
      },
      close: () => closeAll(a)
    }
  }
})

const pgParticipantBranch = (dbs: Server.Databases): Shape => ({
  name: "PgParticipant branch",
  twin: "raw branch",
  open: async () => {
    // One branch at a time plus a connection for phase 2, as the accord modes size their pools.
    const a = Server.pool(dbs.a, 2)
    const p = await Effect.runPromise(PgParticipant.make({ name: "bank-a", sql: a }))
    return {
      op: async () => {
        const [x] = Server.pickAccounts()
        // The id is part of the piece: TwoPhaseCommit.run makes one per transaction too.
        const txId = Effect.runSync(TransactionId.make)
        const ctx = { txId, branch: p.name, gid: TransactionId.gid(txId, p.name) }
        const vote = await Effect.runPromise(p.prepare(ctx, updateWork(x, 1)))
        if (vote._tag !== "Prepared") throw new Error(`PgParticipant branch voted ${vote._tag}`)
        const ack = await Effect.runPromise(p.commit(ctx)).catch(async (e: unknown) => {
          await Effect.runPromise(Effect.ignore(p.rollback(ctx)))
          throw e
        })
        if (ack !== "Committed") throw new Error(`PgParticipant commit answered ${ack}`)
      },
      close: () => closeAll(a)
    }
  }
})

const rawDecisionInsert = (dbs: Server.Databases): Shape => ({
  name: "raw decision insert",
  open: async () => {
    const coordinator = Modes.decisionPool(dbs.coordinator, 1)
    return {
      op: async () => {
        const id = rawId()
        const gidA = `rawbench_${id}_a`
        const gidB = `rawbench_${id}_b`
        await coordinator`INSERT INTO raw_decisions (tx_id, decision, gids) VALUES (${id}, 'commit', ${[gidA, gidB]})`
      },
      close: () => closeAll(coordinator)
    }
  }
})

const logDecide = (dbs: Server.Databases): Shape => ({
  name: "PgTransactionLog.decide",
  twin: "raw decision insert",
  open: async () => {
    const coordinator = Server.pool(dbs.coordinator, 2)
    const opened = await withScope(PgTransactionLog.make({ sql: coordinator }))
    const log = opened.value
    const branchA = Either.getOrThrow(TransactionId.parseBranchName("bank-a"))
    const branchB = Either.getOrThrow(TransactionId.parseBranchName("bank-b"))
    return {
      op: async () => {
        const txId = Effect.runSync(TransactionId.make)
        await Effect.runPromise(
          Effect.zipRight(
            log.decide({
              txId,
              decision: "commit",
              branches: [
                { branch: branchA, gid: TransactionId.gid(txId, branchA) },
                { branch: branchB, gid: TransactionId.gid(txId, branchB) }
              ],
              decidedAt: Date.now()
            }),
            log.complete(txId)
          )
        )
      },
      settle: settleLog(log),
      close: async () => {
        await opened.close()
        await closeAll(coordinator)
      }
    }
  }
})

/** Answers on a later turn of the event loop, as a database driver's callback does. */
const later = <A>(value: A): Effect.Effect<A> =>
  Effect.async<A>((resume) => {
    setImmediate(() => resume(Effect.succeed(value)))
  })

/** Answers on a later turn of the event loop, with direct calls as PgParticipant's. */
const asyncParticipant = (name: string) =>
  CoreOverhead.promiseParticipant(
    name,
    (value) => new Promise((resolve) => setImmediate(() => resolve(value)))
  )

const asyncLog: TransactionLog.TransactionLog["Type"] = {
  decide: (record) => later(record),
  decision: () => Effect.succeed(Option.none()),
  complete: () => Effect.void,
  unfinished: () => Effect.succeed([]),
  recordHeuristic: () => Effect.void,
  heuristics: Effect.succeed([])
}

const tick = () => new Promise<void>((resolve) => setImmediate(resolve))

const promisesOnly: Shape = {
  name: "promises only",
  open: async () => ({
    // The same waits as the core shape: two prepares, the decision, two commits.
    op: async () => {
      await Promise.all([tick(), tick()])
      await tick()
      await Promise.all([tick(), tick()])
    },
    close: async () => {}
  })
}

const coreOnly: Shape = {
  name: "core only, async participants",
  twin: "promises only",
  open: async () => {
    const runtime = ManagedRuntime.make(Layer.succeed(TransactionLog.TransactionLog, asyncLog))
    const a = asyncParticipant("a")
    const b = asyncParticipant("b")
    return {
      op: async () => {
        const outcome = await runtime.runPromise(
          TwoPhaseCommit.run([Participant.branch(a, null), Participant.branch(b, null)])
        )
        if (outcome._tag !== "Committed") throw new Error(`core only: ${outcome._tag}`)
      },
      close: () => runtime.dispose()
    }
  }
}

const raw2pc = (dbs: Server.Databases): Shape => ({
  name: "raw2pc transaction",
  open: async () => {
    const mode = Modes.rawModes(dbs).find((m) => m.name === "raw2pc")!
    const instance = await mode.open(1)
    return { op: instance.tx, close: instance.close }
  }
})

/**
 * Accord's statements for one transfer, sent by hand with postgres.js and Promises: per branch BEGIN
 * pipelined with the UPDATE, then the marker and the PREPARE in one simple-protocol message; the
 * forced decision insert; the two COMMIT PREPAREDs. What `accord2pc` sends, without the coordinator's
 * code (Effect runtime, participant and log wrappers): the gap to `raw2pc` is the SQL's, the gap
 * from here to `accord2pc` is the code's.
 */
const accordSqlByHand = (dbs: Server.Databases): Shape => ({
  name: "accord SQL by hand",
  twin: "raw2pc transaction",
  open: async () => {
    const a = Server.pool(dbs.a, 2)
    const b = Server.pool(dbs.b, 2)
    const coordinator = Modes.decisionPool(dbs.coordinator, 1)
    await Promise.all([a, b].map((sql) => sql.unsafe(Migrations.participantDdl).simple()))
    const branch = async (sql: postgres.Sql, gid: string, account: number, delta: number) => {
      // The transfer's id, as Accord's marker names the global transaction.
      const id = gid.slice("rawbench_".length, -"_a".length)
      const conn = await sql.reserve()
      try {
        const [, updated] = await Promise.all([
          conn.unsafe("BEGIN"),
          conn.unsafe("UPDATE accounts SET balance = balance + $1 WHERE id = $2", [delta, account], {
            prepare: true
          })
        ])
        if (updated.count !== 1) throw new Error("accord SQL by hand: the UPDATE matched no row")
        await conn
          .unsafe(
            `RESET ROLE; insert into accord_branch (gid, tx_id, branch) values ('${gid}', '${id}', 'bank'); PREPARE TRANSACTION '${gid}'`
          )
          .simple()
      } catch (e) {
        await conn.unsafe("ROLLBACK").catch(() => {})
        throw e
      } finally {
        conn.release()
      }
    }
    return {
      op: () => Modes.byHandTransfer({ a, b, coordinator }, rawId(), branch),
      close: () => closeAll(a, b, coordinator)
    }
  }
})

/**
 * Accord's own participant and log calls for one transfer, sequenced by a plain Promise script
 * (`Modes.accordCallsTransfer`, the `accord-calls-by-hand` mode). Its gap to `accord SQL by hand`
 * is the participant's and the log's code; the gap from here to `accord2pc` is the protocol
 * program's.
 */
const accordCallsByHand = (dbs: Server.Databases): Shape => ({
  name: "accord calls, Promise-sequenced",
  twin: "accord SQL by hand",
  open: async () => {
    const { pa, pb, log, close } = await Modes.openPieces(dbs, 2, false)
    const transfer = Modes.accordCallsTransfer(pa, pb, log)
    return {
      op: () => {
        const [x, y] = Server.pickAccounts()
        return transfer([updateWork(x, -1), updateWork(y, 1)])
      },
      settle: settleLog(log),
      close
    }
  }
})

/** The `accord2pc` mode of Modes.ts at concurrency 1, with its log at hand to settle it. */
const accord2pc = (dbs: Server.Databases): Shape => ({
  name: "accord2pc transaction",
  twin: "accord calls, Promise-sequenced",
  open: async () => {
    const { pa, pb, log, close } = await Modes.openPieces(dbs, 2, false)
    const runtime = ManagedRuntime.make(Layer.succeed(TransactionLog.TransactionLog, log))
    return {
      op: async () => {
        const [x, y] = Server.pickAccounts()
        const outcome = await runtime.runPromise(
          TwoPhaseCommit.run([
            Participant.branch(pa, updateWork(x, -1)),
            Participant.branch(pb, updateWork(y, 1))
          ])
        )
        if (outcome._tag === "Aborted") throw new Error(outcome.reason)
      },
      settle: settleLog(log),
      close: async () => {
        await runtime.dispose()
        await close()
      }
    }
  }
})

/**
 * The shapes, each twin before the Accord piece it explains.
 * @since 0.1.0
 */
export const shapes = (dbs: Server.Databases): ReadonlyArray<Shape> => [
  rawBranch(dbs),
  pgParticipantBranch(dbs),
  rawDecisionInsert(dbs),
  logDecide(dbs),
  promisesOnly,
  coreOnly,
  raw2pc(dbs),
  accordSqlByHand(dbs),
  accordCallsByHand(dbs),
  accord2pc(dbs)
]

const round1 = (value: number, digits = 1) => Math.round(value * 10 ** digits) / 10 ** digits

const measureRound = async (instance: Instance, n: number, warmup: number): Promise<Round> => {
  for (let i = 0; i < warmup; i++) await instance.op()
  // The warm-up's queued writes must not land in the measured count.
  await instance.settle?.()
  Server.resetCounters()
  const cpu0 = process.cpuUsage()
  const t0 = performance.now()
  for (let i = 0; i < n; i++) await instance.op()
  const wall = performance.now() - t0
  const cpu = process.cpuUsage(cpu0)
  const own = (await instance.settle?.()) ?? 0
  const statements = Server.snapshotCounters().statements - own
  return {
    wallMicrosPerOp: round1((wall * 1000) / n),
    cpuMicrosPerOp: round1((cpu.user + cpu.system) / n),
    statementsPerOp: round1(statements / n, 2)
  }
}

const median = (values: ReadonlyArray<number>) => {
  const sorted = [...values].sort((x, y) => x - y)
  const mid = Math.floor(sorted.length / 2)
  return sorted.length % 2 === 1 ? sorted[mid]! : (sorted[mid - 1]! + sorted[mid]!) / 2
}

/**
 * Runs the breakdown on the benchmark databases (see `Server.setup`): `n` operations per shape and
 * round after `n / 10` of warm-up, two interleaved rounds.
 * @since 0.1.0
 */
export const run = async (
  adminUrl: string,
  dbs: Server.Databases,
  n: number,
  log: (line: string) => void = () => {}
): Promise<Result> => {
  const list = shapes(dbs)
  const warmup = Math.max(1, Math.round(n / 10))
  const opened: Array<Instance> = []
  const measured = new Map<string, Array<Round>>(list.map((s) => [s.name, []]))
  try {
    for (const shape of list) opened.push(await shape.open())
    for (let r = 0; r < rounds; r++) {
      for (const [i, shape] of list.entries()) {
        const round = await measureRound(opened[i]!, n, warmup)
        measured.get(shape.name)!.push(round)
        log(
          `round ${r + 1} ${shape.name.padEnd(30)} ${String(round.cpuMicrosPerOp).padStart(7)} us CPU/op  ${String(round.wallMicrosPerOp).padStart(7)} us wall/op  ${round.statementsPerOp} stmts/op`
        )
      }
    }
  } finally {
    for (const instance of opened.reverse()) {
      await instance.close().catch((e: unknown) => log(`breakdown: closing a shape failed: ${String(e)}`))
    }
  }
  const byName = new Map(
    list.map((shape) => {
      const rs = measured.get(shape.name)!
      const row: Row = {
        shape: shape.name,
        ...(shape.twin === undefined ? {} : { twin: shape.twin }),
        wallMicrosPerOp: round1(median(rs.map((x) => x.wallMicrosPerOp))),
        cpuMicrosPerOp: round1(median(rs.map((x) => x.cpuMicrosPerOp))),
        statementsPerOp: round1(median(rs.map((x) => x.statementsPerOp)), 2),
        rounds: rs
      }
      return [shape.name, row] as const
    })
  )
  const rows = list.map((shape): Row => {
    const row = byName.get(shape.name)!
    const twin = shape.twin === undefined ? undefined : byName.get(shape.twin)
    return twin === undefined
      ? row
      : { ...row, cpuMicrosOverTwin: round1(row.cpuMicrosPerOp - twin.cpuMicrosPerOp) }
  })
  const preparedLeft = await Server.preparedIn(adminUrl, [dbs.a, dbs.b])
  return { operations: n, warmup, rounds, rows, preparedLeft }
}

/**
 * The result as a markdown table.
 * @since 0.1.0
 */
export const markdown = (result: Result): string => {
  const lines = result.rows.map(
    (r) =>
      `| ${r.shape} | ${r.wallMicrosPerOp} | ${r.cpuMicrosPerOp} | ${r.statementsPerOp} | ${
        r.cpuMicrosOverTwin === undefined
          ? ""
          : `${r.cpuMicrosOverTwin >= 0 ? "+" : ""}${r.cpuMicrosOverTwin} vs ${r.twin}`
      } |`
  )
  return `Client CPU per operation, sequential (c = 1), ${result.operations} operations per shape after ${result.warmup} of warm-up, median of ${result.rounds} interleaved rounds:

| shape | wall us/op | CPU us/op | statements/op | CPU vs twin |
|---|---:|---:|---:|---|
${lines.join("\n")}

Prepared transactions left: ${result.preparedLeft}
`
}
