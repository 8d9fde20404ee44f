/**
 * The demo's program: open the databases, recover, seed if needed, run the transfers, recover
 * again (finishing any CommitPending), then check the invariants and print the summary.
 *
 * @since 0.1.0
 */
import { randomUUID } from "node:crypto"
import { type Recovery, ThreePhaseCommit, TransactionId } from "@accord/core"
import * as PgRecovery from "@accord/postgres/PgRecovery"
import cliProgress from "cli-progress"
import { Duration, Effect, Option } from "effect"
import * as Bank from "./Bank.js"
import { DemoError } from "./DemoError.js"
import * as Environment from "./Environment.js"
import * as Journal from "./Journal.js"
import type { Options } from "./Options.js"
import * as Protocol from "./Protocol.js"
import * as Workload from "./Workload.js"

/**
 * The JSON summary (the last line of stdout with `--json`).
 * @since 0.1.0
 */
export interface Summary {
  readonly ok: boolean
  readonly protocol: string
  readonly backend: "postgres" | "pglite"
  readonly transfers: number
  readonly concurrency: number
  readonly committed: number
  readonly aborted: number
  readonly commitPending: number
  readonly unknown: number
  readonly abortReasons: {
    readonly insufficientFunds: number
    readonly lockTimeout: number
    readonly other: number
    /** Up to three distinct reasons of the `other` aborts. */
    readonly otherSamples: ReadonlyArray<string>
  }
  readonly expectedTotal: number
  readonly total: number
  /** Transactions left prepared in the bank databases (any gid; must be 0). */
  readonly preparedLeft: number
  /**
   * The gids `preparedLeft` counts (the first `Bank.preparedListed` of each bank, oldest first),
   * with whose each is: see `PreparedGid`.
   */
  readonly preparedLeftGids: ReadonlyArray<PreparedGid>
  /** Transfers whose ledger row is in one bank only (atomicity broken; must be 0). */
  readonly halfApplied: number
  /** Accounts whose balance disagrees with seed + ledger (must be 0). */
  readonly ledgerMismatches: number
  readonly negativeBalances: number
  readonly recovery: {
    readonly atStart: RecoverySummary
    readonly atEnd: RecoverySummary
  }
  readonly seeded: boolean
  readonly tps: number
  readonly p50Ms: number
  readonly p99Ms: number
  readonly elapsedMs: number
  readonly errors: ReadonlyArray<string>
}

/**
 * A transaction left prepared in a bank database, and whose it is: `demo`, a branch of this demo
 * (an Accord gid of the bank's participant, no namespace), which recovery finishes (run again);
 * `accord`, an Accord gid of another deployment (another gid namespace or participant name), left
 * to that deployment's recovery; `other`, not an Accord gid at all (prepared by hand or by another
 * program). The demo's recovery never touches the last two: they are resolved by hand, or by their
 * owner, with `COMMIT PREPARED` or `ROLLBACK PREPARED` in that database.
 * @since 0.1.0
 */
export interface PreparedGid {
  readonly bank: "a" | "b"
  readonly gid: string
  readonly owner: "demo" | "accord" | "other"
}

interface RecoverySummary {
  readonly transactionsFinished: number
  /** Branches committed, or found committed already (commits are idempotent). */
  readonly branchesCommitted: number
  /**
   * Branches rolled back, or found not prepared: an abort decision's rollbacks are idempotent, so a
   * branch that never prepared (or was rolled back already) counts here too.
   */
  readonly branchesRolledBack: number
  readonly presumedAborts: number
  /** 3PC transactions the termination protocol committed / aborted. */
  readonly threePhaseCommitted: number
  readonly threePhaseAborted: number
  readonly heuristics: number
  readonly unresolved: number
  /**
   * Another deployment's gids the passes met and left alone, per participant (`Recovery.ForeignGids`:
   * the 2PC pass's, then the 3PC pass's; empty when none). Gids prepared by hand are not among them
   * (the participants' scans read their own gids only): `preparedLeftGids` lists those.
   */
  readonly foreign: ReadonlyArray<Recovery.ForeignGids>
  readonly millis: number
}

const recover = (env: Environment.Environment) =>
  Effect.gen(function* () {
    const started = performance.now()
    // 3PC first: a 3PC branch that voted yes may have to COMMIT, which only the termination
    // protocol knows; 2PC recovery would presume it aborted. Branches without a 3PC vote are left
    // to 2PC recovery, which resolves them from the coordinator log.
    const three = yield* ThreePhaseCommit.recover(
      env.banks.map((b) => b.threePhase),
      { orphanAfter: Duration.zero, unvoted: "leave" }
    )
    if (three.blocked.length > 0 || three.pending.length > 0 || three.unscanned.length > 0) {
      return yield* new DemoError({
        message: `3PC recovery could not finish ${three.blocked.length + three.pending.length} transaction(s)${
          three.unscanned.length > 0 ? ` (could not scan ${three.unscanned.join(", ")})` : ""
        }: check that both bank databases are reachable and run again`
      })
    }
    // No transaction of this process is in flight, and a live one of another process is safe:
    // the presumed abort is an insert under the transaction's key and the first writer wins.
    const report = yield* PgRecovery.run({
      participants: env.banks.map((b) => b.participant),
      log: env.log,
      options: { orphanAfter: Duration.zero }
    })
    return {
      transactionsFinished: report.transactionsFinished + three.committed.length + three.aborted.length,
      branchesCommitted: report.branchesCommitted,
      branchesRolledBack: report.branchesRolledBack,
      presumedAborts: report.presumedAborts,
      threePhaseCommitted: three.committed.length,
      threePhaseAborted: three.aborted.length + three.unvotedRolledBack,
      heuristics: report.heuristics.length,
      unresolved: report.unresolved.length,
      foreign: [...report.foreign, ...three.foreign],
      millis: Math.round(performance.now() - started)
    } satisfies RecoverySummary
  }).pipe(
    Effect.mapError((e) =>
      e instanceof DemoError ? e : new DemoError({ message: `recovery failed: ${e.message}` })
    )
  )

const db = <A>(what: string, f: () => Promise<A>) =>
  Effect.tryPromise({
    try: f,
    catch: (e) =>
      new DemoError({
        message: `${what} failed: ${e instanceof Error ? e.message.split("\n")[0] : String(e)}`
      })
  })

const progressBar = (options: Options) => {
  if (options.transfers === 0 || !process.stderr.isTTY) return undefined
  const bar = new cliProgress.SingleBar(
    {
      format: "transfers {bar} {value}/{total} | {committed} committed, {aborted} aborted | {tps} tps",
      hideCursor: true,
      stream: process.stderr
    },
    cliProgress.Presets.shades_classic
  )
  bar.start(options.transfers, 0, { committed: 0, aborted: 0, tps: 0 })
  return bar
}

/**
 * Runs the demo; the summary's `ok` says whether every invariant held.
 * @since 0.1.0
 */
export const main = (options: Options): Effect.Effect<Summary, DemoError> =>
  Effect.scoped(
    Effect.gen(function* () {
      // Opened first: a path it cannot write is refused before any database is created or seeded.
      const journal = yield* openJournal(options)
      yield* Effect.addFinalizer(() => Effect.sync(() => journal.close()))
      const env = yield* Environment.open(options)
      const execute = yield* protocolFor(options, env)
      const atStart = yield* recover(env)

      const [a, b] = env.banks
      // Seeding is two local transactions (one per bank): a run killed between them leaves the
      // banks on different datasets. Both carry the id of the seed run that wrote them; the dataset
      // is reused only when both hold the same id, otherwise both are seeded again.
      const seedA = yield* db("reading bank A", () => Bank.seedIdOf(a.db))
      const seedB = yield* db("reading bank B", () => Bank.seedIdOf(b.db))
      const seeding = options.fresh || !Bank.sameDataset(seedA, seedB)
      if (seeding) {
        const seedId = randomUUID()
        yield* db("seeding bank A", () => Bank.seed(a.db, options.accounts, seedId))
        yield* db("seeding bank B", () => Bank.seed(b.db, options.accounts, seedId))
      }
      const before = yield* db("reading bank A", () => Bank.state(a.db))

      const bar = progressBar(options)
      const barStarted = performance.now()
      const stats = yield* Workload.run({
        transfers: options.transfers,
        concurrency: options.concurrency,
        accounts: before.accounts,
        protocol: options.protocol,
        execute,
        journal,
        tick: (s) => {
          const done = s.committed + s.aborted + s.commitPending + s.unknown
          if (bar !== undefined && (done % 25 === 0 || done === options.transfers)) {
            const tps = Math.round(done / ((performance.now() - barStarted) / 1000))
            bar.update(done, { committed: s.committed, aborted: s.aborted, tps })
          }
        }
      }).pipe(Effect.ensuring(Effect.sync(() => bar?.stop())))

      // Finishes what the run left CommitPending (and anything a crash left behind). Branches
      // prepared before it started are all finished by it; later ones are another run's, in flight.
      const recoveryStartedA = yield* db("reading bank A", () => Bank.now(a.db))
      const recoveryStartedB = yield* db("reading bank B", () => Bank.now(b.db))
      const atEnd = yield* recover(env)
      const { stateA, stateB, preparedA, preparedB, halfApplied } = yield* check(
        env,
        recoveryStartedA,
        recoveryStartedB
      )

      const done = stats.committed + stats.aborted + stats.commitPending + stats.unknown
      const summaryBase = {
        protocol: options.protocol,
        backend: env.backend,
        transfers: options.transfers,
        concurrency: options.concurrency,
        committed: stats.committed,
        aborted: stats.aborted,
        commitPending: stats.commitPending,
        unknown: stats.unknown,
        abortReasons: {
          insufficientFunds: stats.insufficientFunds,
          lockTimeout: stats.lockTimeouts,
          other: stats.otherAborts,
          otherSamples: stats.otherReasons
        },
        expectedTotal: stateA.seededTotal + stateB.seededTotal,
        total: stateA.total + stateB.total,
        preparedLeft: preparedA.count + preparedB.count,
        preparedLeftGids: [...gidsOf(env.banks[0], preparedA), ...gidsOf(env.banks[1], preparedB)],
        halfApplied,
        ledgerMismatches: stateA.ledgerMismatches + stateB.ledgerMismatches,
        negativeBalances: stateA.negative + stateB.negative,
        recovery: { atStart, atEnd },
        seeded: seeding,
        tps: stats.elapsedMs > 0 ? Math.round((done / stats.elapsedMs) * 1000 * 10) / 10 : 0,
        p50Ms: round(Workload.quantile(stats.latenciesMs, 0.5)),
        p99Ms: round(Workload.quantile(stats.latenciesMs, 0.99)),
        elapsedMs: Math.round(stats.elapsedMs),
        errors: stats.errors
      }
      const ok =
        summaryBase.total === summaryBase.expectedTotal &&
        summaryBase.preparedLeft === 0 &&
        halfApplied === 0 &&
        summaryBase.ledgerMismatches === 0 &&
        summaryBase.negativeBalances === 0
      const summary: Summary = { ok, ...summaryBase }
      const human = table(summary, env)
      if (options.json) {
        process.stderr.write(human)
        process.stdout.write(`${JSON.stringify(summary)}\n`)
      } else {
        process.stdout.write(human)
      }
      return summary
    })
  )

/** What the invariant check reads from both banks. */
interface Check {
  readonly stateA: Bank.BankState
  readonly stateB: Bank.BankState
  readonly preparedA: Bank.PreparedLeft
  readonly preparedB: Bank.PreparedLeft
  readonly halfApplied: number
}

const holds = (c: Check): boolean =>
  c.stateA.total + c.stateB.total === c.stateA.seededTotal + c.stateB.seededTotal &&
  c.preparedA.count + c.preparedB.count === 0 &&
  c.halfApplied === 0 &&
  c.stateA.ledgerMismatches + c.stateB.ledgerMismatches === 0 &&
  c.stateA.negative + c.stateB.negative === 0

const readBoth = (env: Environment.Environment, preparedBeforeA: string, preparedBeforeB: string) => {
  const [a, b] = env.banks
  const readBank = (bank: Environment.BankHandle, label: string, preparedBefore: string) =>
    Effect.all(
      [
        db(`reading ${label}`, () => Bank.ledgerTxIds(bank.db)),
        db(`reading ${label}`, () => Bank.state(bank.db)),
        db(`reading ${label}`, () => Bank.preparedLeft(bank.db, preparedBefore))
      ] as const,
      { concurrency: 1 }
    )
  // Both banks at once: the two reads are as close in time as two databases allow.
  return Effect.all(
    [readBank(a, "bank A", preparedBeforeA), readBank(b, "bank B", preparedBeforeB)] as const,
    {
      concurrency: 2
    }
  ).pipe(
    Effect.map(([[idsA, stateA, preparedA], [idsB, stateB, preparedB]]): Check => {
      let halfApplied = 0
      for (const id of idsA) if (!idsB.has(id)) halfApplied++
      for (const id of idsB) if (!idsA.has(id)) halfApplied++
      return { stateA, stateB, preparedA, preparedB, halfApplied }
    })
  )
}

/**
 * The invariant check. Bank A and bank B are two databases, read one after the other: another run
 * on the same databases may commit a transfer between the two reads (applied in A, not yet in B).
 * So a check that does not hold is read again, up to `checkAttempts` times `checkPause` apart: a
 * transfer of this run cannot change any more (none is in flight and recovery has finished), so a
 * violation of this run's is seen on every read; one caused by another run's commit in flight is not.
 */
const check = (env: Environment.Environment, preparedBeforeA: string, preparedBeforeB: string) =>
  Effect.gen(function* () {
    let last = yield* readBoth(env, preparedBeforeA, preparedBeforeB)
    for (let attempt = 1; attempt < checkAttempts && !holds(last); attempt++) {
      yield* Effect.sleep(checkPause)
      last = yield* readBoth(env, preparedBeforeA, preparedBeforeB)
    }
    return last
  })

const checkAttempts = 10
const checkPause = Duration.millis(300)

const openJournal = (options: Options) => {
  const path = options.journal
  if (path === undefined) return Effect.succeed(Journal.none)
  return Effect.try({
    try: () => Journal.open(path),
    catch: (e) =>
      new DemoError({
        message: `--journal ${path} cannot be opened for appending (${e instanceof Error ? e.message.split("\n")[0] : String(e)}): pass a writable file path`
      })
  })
}

const protocolFor = (options: Options, env: Environment.Environment) =>
  options.protocol === "2pc" ? Effect.succeed(Protocol.twoPhase(env)) : Protocol.threePhase(env)

/** Whose a gid left prepared in `bank` is (see `PreparedGid`). */
const ownerOf = (bank: Environment.BankHandle, gid: string): PreparedGid["owner"] => {
  const parsed = TransactionId.parseGid(gid)
  if (Option.isNone(parsed)) return "other"
  const p = bank.participant
  const ours =
    p.owns?.(parsed.value.gid) ?? (parsed.value.namespace === undefined && parsed.value.branch === p.name)
  return ours ? "demo" : "accord"
}

const gidsOf = (bank: Environment.BankHandle, left: Bank.PreparedLeft): ReadonlyArray<PreparedGid> =>
  left.gids.map((gid) => ({ bank: bank.name, gid, owner: ownerOf(bank, gid) }))

const ownerText: Record<PreparedGid["owner"], string> = {
  demo: "the demo's",
  accord: "another Accord deployment's",
  other: "not Accord's"
}

/** The "prepared left" row: the count, the gids listed, and what to do about them. */
const describePrepared = (s: Summary): string => {
  if (s.preparedLeft === 0) return "0"
  const listed = s.preparedLeftGids
    .map((g) => `bank ${g.bank.toUpperCase()} '${g.gid}' (${ownerText[g.owner]})`)
    .join(", ")
  const more =
    s.preparedLeft > s.preparedLeftGids.length
      ? `, and ${s.preparedLeft - s.preparedLeftGids.length} more`
      : ""
  const notOurs = s.preparedLeftGids.filter((g) => g.owner !== "demo").length
  const ours = s.preparedLeftGids.length - notOurs
  const todo = [
    ...(notOurs > 0
      ? [
          `${notOurs} not the demo's (its recovery leaves them alone): resolve each by hand in its bank's database with COMMIT PREPARED '<gid>' or ROLLBACK PREPARED '<gid>', as whoever prepared it decided`
        ]
      : []),
    ...(ours > 0 ? [`${ours} the demo's: run again with --transfers 0, its recovery finishes them`] : []),
    // The unlisted ones may be anybody's: where to see them all.
    ...(more !== ""
      ? [
          "the rest unlisted: see them all with SELECT gid, database FROM pg_prepared_xacts, and resolve any that are not the demo's by hand"
        ]
      : [])
  ]
  return `${s.preparedLeft}: ${listed}${more}; ${todo.join("; ")}`
}

const describeForeign = (foreign: ReadonlyArray<Recovery.ForeignGids>) =>
  foreign.length === 0
    ? ""
    : `; left alone, another deployment's: ${foreign
        .map(
          (f) =>
            `${f.participant} ${f.count} (${f.gids.map((g) => `'${g}'`).join(", ")}${f.count > f.gids.length ? ", ..." : ""})`
        )
        .join(", ")}`

const describeRecovery = (r: RecoverySummary) =>
  `2PC: ${r.branchesCommitted} branches committed or found committed, ${r.branchesRolledBack} rolled back or found not prepared; 3PC: ${r.threePhaseCommitted} committed, ${r.threePhaseAborted} aborted${describeForeign(r.foreign)} (${r.millis} ms)`

const round = (x: number) => Math.round(x * 100) / 100

const table = (s: Summary, env: Environment.Environment): string => {
  const rows: Array<[string, string]> = [
    [
      "protocol",
      `${s.protocol} on ${s.backend === "pglite" ? "embedded PGlite (not durable)" : "PostgreSQL"}`
    ],
    ["banks", `${env.banks[0].location}; ${env.banks[1].location}`],
    ["transfers", `${s.transfers} at concurrency ${s.concurrency}${s.seeded ? " (freshly seeded)" : ""}`],
    ["committed", String(s.committed)],
    [
      "aborted",
      `${s.aborted} (insufficient funds ${s.abortReasons.insufficientFunds}, lock timeout ${s.abortReasons.lockTimeout}, other ${s.abortReasons.other})`
    ],
    ["commit pending", `${s.commitPending} (finished by recovery)`],
    ...(s.abortReasons.other > 0
      ? ([["other aborts", s.abortReasons.otherSamples.join(" | ")]] as Array<[string, string]>)
      : []),
    ...(s.unknown > 0
      ? ([["no outcome", `${s.unknown}: ${s.errors[0] ?? ""}`]] as Array<[string, string]>)
      : []),
    ["recovery at start", describeRecovery(s.recovery.atStart)],
    ["recovery at end", describeRecovery(s.recovery.atEnd)],
    [
      "total / expected",
      `${s.total} / ${s.expectedTotal} ${s.total === s.expectedTotal ? "(conserved)" : "(NOT CONSERVED)"}`
    ],
    ["prepared left", describePrepared(s)],
    ["half-applied transfers", String(s.halfApplied)],
    ["ledger mismatches", String(s.ledgerMismatches)],
    ["throughput", `${s.tps} transfers/s over ${(s.elapsedMs / 1000).toFixed(1)} s`],
    ["latency", `p50 ${s.p50Ms} ms, p99 ${s.p99Ms} ms`],
    ["result", s.ok ? "OK: every invariant holds" : "FAILED: an invariant does not hold"]
  ]
  const width = Math.max(...rows.map(([k]) => k.length))
  return `\n${rows.map(([k, v]) => `  ${k.padEnd(width)}  ${v}`).join("\n")}\n\n`
}
