/**
 * Kill -9 torture on a real PostgreSQL: the bank-transfer demo runs in a child process that is
 * SIGKILLed at random moments, cycle after cycle; the PostgreSQL server itself is restarted (once
 * cleanly, once with `stop -m immediate`); after each cycle the demo runs recovery only. At the
 * end the databases are checked against the journal of everything the client was told:
 * - the total of all balances is conserved and every balance agrees with the ledger;
 * - nothing of ours is left in `pg_prepared_xacts`;
 * - every transfer reported Committed (or CommitPending) is applied exactly once in both banks;
 * - every transfer reported Aborted is applied nowhere; any other is applied in both or neither;
 * - no ledger row exists without a journalled intent.
 *
 * @since 0.1.0
 */
import { type ChildProcess, execFile, spawn } from "node:child_process"
import { existsSync, readFileSync, rmSync, statSync } from "node:fs"
import { tmpdir } from "node:os"
import { join } from "node:path"
import postgres from "postgres"
import * as Rng from "./Rng.js"

/**
 * Options of a torture run.
 * @since 0.1.0
 */
export interface Options {
  /** Superuser URL of the server (e.g. postgres://postgres@127.0.0.1:5432/postgres). */
  readonly pg: string
  /** Path of the demo's `dist/main.js`. */
  readonly demo: string
  readonly cycles: number
  /**
   * Protocol per cycle: one, `both` (alternating 2pc and 3pc), or `auto` (both when the demo
   * supports 3pc, else 2pc).
   */
  readonly protocol: "2pc" | "3pc" | "both" | "auto"
  /** Transfers each cycle asks for (the kill usually comes first). */
  readonly transfersPerCycle: number
  readonly concurrency: number
  /** Accounts per bank (few accounts: more contention, more refusals). */
  readonly accounts: number
  /** Database name prefix; the run drops and recreates `<prefix>bank_a`, `bank_b`, `coordinator`. */
  readonly dbPrefix: string
  readonly seed: number
  /** Restart the PostgreSQL server during the run (needs `pg_ctlcluster` and the rights to use it). */
  readonly serverRestarts: boolean
  /** `<version>/<name>` of the cluster to restart. */
  readonly cluster: string
  /** Keep the databases at the end (default: dropped). */
  readonly keep: boolean
  /** Progress lines go here. */
  readonly log: (line: string) => void
}

/**
 * The verdict of a torture run (the JSON summary).
 * @since 0.1.0
 */
export interface Summary {
  readonly cycles: number
  readonly transfers: number
  readonly committed: number
  readonly aborted: number
  readonly commitPending: number
  readonly unknown: number
  readonly violations: number
  readonly violationDetails: ReadonlyArray<string>
  readonly preparedLeft: number
  readonly serverRestarts: number
  readonly kills: number
  readonly recoveryKills: number
  readonly expectedTotal: number
  readonly total: number
  readonly protocols: Readonly<Record<string, number>>
  readonly seed: number
  readonly elapsed: number
}

/**
 * What a run proves, as the CLI's exit code says it: `violations` (exit 1) when any check failed;
 * `inconclusive` (exit 1 too) when no kill landed, because every demo run finished before its kill
 * time (too few `--transfers` for the 20-3,000 ms kill window): then nothing about crashes was
 * checked, only a clean run; `passed` otherwise.
 * @since 0.1.0
 */
export const verdict = (
  summary: Pick<Summary, "violations" | "kills">
): "violations" | "inconclusive" | "passed" =>
  summary.violations > 0 ? "violations" : summary.kills === 0 ? "inconclusive" : "passed"

interface ChildResult {
  readonly code: number | null
  readonly signal: NodeJS.Signals | null
  readonly stdout: string
  readonly stderr: string
  readonly killed: boolean
}

interface Running {
  readonly done: Promise<ChildResult>
  readonly exited: () => boolean
  readonly kill: () => void
}

const startChild = (demo: string, args: ReadonlyArray<string>): Running => {
  let exited = false
  let child: ChildProcess | undefined
  let killed = false
  const done = new Promise<ChildResult>((resolve) => {
    child = spawn(process.execPath, [demo, ...args], { stdio: ["ignore", "pipe", "pipe"] })
    let stdout = ""
    let stderr = ""
    child.stdout?.on("data", (d: Buffer) => {
      stdout += d.toString()
    })
    child.stderr?.on("data", (d: Buffer) => {
      stderr = (stderr + d.toString()).slice(-4000)
    })
    child.on("exit", (code, signal) => {
      exited = true
      resolve({ code, signal, stdout, stderr, killed })
    })
  })
  return {
    done,
    exited: () => exited,
    kill: () => {
      if (exited) return
      killed = true
      child?.kill("SIGKILL")
    }
  }
}

const runChild = (
  demo: string,
  args: ReadonlyArray<string>,
  killAfterMillis?: number
): Promise<ChildResult> =>
  new Promise((resolve) => {
    const child: ChildProcess = spawn(process.execPath, [demo, ...args], {
      stdio: ["ignore", "pipe", "pipe"]
    })
    let stdout = ""
    let stderr = ""
    let killed = false
    child.stdout?.on("data", (d: Buffer) => {
      stdout += d.toString()
    })
    child.stderr?.on("data", (d: Buffer) => {
      stderr = (stderr + d.toString()).slice(-4000)
    })
    const timer =
      killAfterMillis === undefined
        ? undefined
        : setTimeout(() => {
            killed = child.exitCode === null
            child.kill("SIGKILL")
          }, killAfterMillis)
    child.on("exit", (code, signal) => {
      if (timer !== undefined) clearTimeout(timer)
      resolve({ code, signal, stdout, stderr, killed })
    })
  })

const exec = (file: string, args: ReadonlyArray<string>): Promise<string> =>
  new Promise((resolve, reject) => {
    execFile(file, args, { timeout: 120_000 }, (error, stdout, stderr) => {
      if (error !== null) reject(new Error(`${file} ${args.join(" ")}: ${stderr || error.message}`))
      else resolve(stdout)
    })
  })

const sleep = (millis: number) => new Promise<void>((resolve) => setTimeout(resolve, millis))

const urlFor = (adminUrl: string, database: string): string => {
  const url = new URL(adminUrl)
  url.pathname = `/${database}`
  return url.toString()
}

/** Waits until the server answers a query again, after a restart this run performed. */
const waitForServer = async (url: string, log: (line: string) => void): Promise<void> => {
  for (let attempt = 0; attempt < 120; attempt++) {
    const sql = postgres(url, { max: 1, connect_timeout: 2, onnotice: () => {} })
    try {
      await sql`SELECT 1`
      return
    } catch {
      if (attempt % 10 === 9) log(`  waiting for PostgreSQL (${attempt + 1} s)`)
      await sleep(1000)
    } finally {
      await sql.end({ timeout: 1 }).catch(() => {})
    }
  }
  throw new Error("PostgreSQL did not come back within 120 s")
}

/**
 * At start-up the server must answer at once: a refused connection or login is a mistake on the
 * command line, not a restart to wait for.
 */
const checkServer = async (url: string): Promise<void> => {
  const sql = postgres(url, { max: 1, connect_timeout: 10, onnotice: () => {} })
  try {
    await sql`SELECT 1`
  } catch (error) {
    throw new Error(`cannot connect to PostgreSQL at ${redact(url)}: ${firstLine(error)}`)
  } finally {
    await sql.end({ timeout: 1 }).catch(() => {})
  }
}

/**
 * The cluster the run restarts must exist and be running before anything is seeded: otherwise the
 * run would fail at its first restart, with transfers in flight.
 */
const checkCluster = async (cluster: string): Promise<void> => {
  const match = /^(\d+(?:\.\d+)?)\/([^/\s]+)$/.exec(cluster)
  if (match === null)
    throw new Error(`--cluster takes <version>/<name> (e.g. 15/main), not ${JSON.stringify(cluster)}`)
  try {
    await exec("pg_ctlcluster", ["--skip-systemctl-redirect", match[1]!, match[2]!, "status"])
  } catch (error) {
    throw new Error(
      `cannot restart cluster ${cluster} (pg_ctlcluster: ${firstLine(error).replace(/^pg_ctlcluster [^:]*: /, "")}); pass --cluster <version>/<name> of the server, or --no-server-restarts`
    )
  }
}

const firstLine = (error: unknown): string =>
  (error instanceof Error ? error.message : String(error)).trim().split("\n")[0] ?? ""

const redact = (url: string): string => {
  try {
    const parsed = new URL(url)
    if (parsed.password !== "") parsed.password = "***"
    return parsed.toString()
  } catch {
    return "(an invalid URL)"
  }
}

const lastJson = (stdout: string): Record<string, unknown> | undefined => {
  const line = stdout.trim().split("\n").pop()
  if (line === undefined) return undefined
  try {
    return JSON.parse(line) as Record<string, unknown>
  } catch {
    return undefined
  }
}

type Outcome = "Committed" | "Aborted" | "CommitPending" | "Unknown"
interface Intent {
  readonly txId: string
  readonly protocol: string
  readonly from: { readonly bank: "a" | "b"; readonly account: number }
  readonly to: { readonly bank: "a" | "b"; readonly account: number }
  readonly amount: number
}

/**
 * Runs the torture and checks the end state. Never throws for a violation: it is counted.
 * @since 0.1.0
 */
export const run = async (options: Options): Promise<Summary> => {
  const started = performance.now()
  const rng = Rng.make(options.seed)
  const log = options.log
  const names = {
    a: `${options.dbPrefix}bank_a`,
    b: `${options.dbPrefix}bank_b`,
    coordinator: `${options.dbPrefix}coordinator`
  }
  const journal = join(tmpdir(), `accord-torture-${process.pid}-${options.seed}.jsonl`)
  rmSync(journal, { force: true })
  if (!existsSync(options.demo))
    throw new Error(`the bank-transfer demo is not built: ${options.demo} (run pnpm build)`)
  const journalSize = () => (existsSync(journal) ? statSync(journal).size : 0)
  const demoArgs = (extra: ReadonlyArray<string>) => [
    "--pg",
    options.pg,
    "--db-prefix",
    options.dbPrefix,
    "--json",
    ...extra
  ]

  const recover = async (cycle: number, mayKill: boolean): Promise<{ killed: number }> => {
    let killed = 0
    for (let attempt = 1; ; attempt++) {
      // Sometimes recovery itself is killed: the next one must finish its work.
      const kill = mayKill && attempt === 1 && rng.chance(0.15) ? rng.int(50, 800) : undefined
      const result = await runChild(options.demo, demoArgs(["--transfers", "0"]), kill)
      if (result.killed) {
        killed++
        log(`  cycle ${cycle}: recovery killed after ${kill} ms`)
        continue
      }
      if (result.code === 0 && lastJson(result.stdout) !== undefined) return { killed }
      if (attempt >= 5) {
        throw new Error(
          `recovery failed ${attempt} times; last exit ${result.code}: ${result.stderr.slice(-1500)}`
        )
      }
      log(
        `  cycle ${cycle}: recovery exited ${result.code} (${result.stderr.trim().split("\n").pop() ?? ""}); retrying`
      )
      await waitForServer(options.pg, log)
      await sleep(500)
    }
  }

  /** Leaves nothing prepared in our databases (counted by the check first), drops them unless --keep. */
  const cleanUp = async (): Promise<void> => {
    for (const db of [names.a, names.b, names.coordinator]) {
      const sql = postgres(urlFor(options.pg, db), { max: 1, connect_timeout: 10, onnotice: () => {} })
      try {
        const left = await sql<
          Array<{ gid: string }>
        >`SELECT gid FROM pg_prepared_xacts WHERE database = current_database()`
        for (const { gid } of left) await sql.unsafe(`ROLLBACK PREPARED '${gid.replaceAll("'", "''")}'`)
      } catch {
        // the database may not exist, or the server may be down after a failed restart
      } finally {
        await sql.end({ timeout: 2 }).catch(() => {})
      }
    }
    if (!options.keep) {
      const admin = postgres(options.pg, { max: 1, connect_timeout: 10, onnotice: () => {} })
      for (const db of [names.a, names.b, names.coordinator]) {
        await admin.unsafe(`DROP DATABASE IF EXISTS "${db.replaceAll('"', "")}" WITH (FORCE)`).catch(() => {})
      }
      await admin.end({ timeout: 2 }).catch(() => {})
    }
    rmSync(journal, { force: true })
  }

  if (options.serverRestarts && options.cycles >= 1) await checkCluster(options.cluster)
  await checkServer(options.pg)

  let serverRestarts = 0
  let kills = 0
  let recoveryKills = 0
  const protocols: Record<string, number> = {}
  const violations: Array<string> = []
  const intents = new Map<string, Intent>()
  const outcomes = new Map<string, Outcome>()
  let preparedLeft = 0
  let expectedTotal = 0
  let total = 0
  // The demo run of the current cycle, while it runs: a run cut short must stop it first.
  let current: Running | undefined
  // From the first seeding on, every way out (a verdict, or a failure part-way such as a refused
  // server restart) leaves nothing of ours prepared, drops our databases and removes the journal.
  try {
    log(`seeding ${names.a}, ${names.b} (${options.accounts} accounts each)`)
    const seeded = await runChild(
      options.demo,
      demoArgs(["--fresh", "--transfers", "0", "--accounts", String(options.accounts)])
    )
    if (seeded.code !== 0)
      throw new Error(`seeding failed (exit ${seeded.code}): ${seeded.stderr.slice(-1500)}`)

    let protocolChoice = options.protocol
    if (protocolChoice === "auto") {
      const probe = await runChild(options.demo, demoArgs(["--transfers", "0", "--protocol", "3pc"]))
      protocolChoice = probe.code === 0 ? "both" : "2pc"
      if (protocolChoice === "2pc")
        log(`the demo refuses --protocol 3pc (${probe.stderr.trim().split("\n").pop()}); torturing 2pc only`)
    }

    // Which cycles restart the server: one clean restart, one immediate stop (crash) then start.
    const restartCycle = options.serverRestarts && options.cycles >= 1 ? Math.min(1, options.cycles - 1) : -1
    const crashCycle = options.serverRestarts && options.cycles >= 2 ? Math.min(2, options.cycles - 1) : -1
    const [version, cluster] = options.cluster.split("/") as [string, string]
    const pgctl = (...args: Array<string>) =>
      exec("pg_ctlcluster", ["--skip-systemctl-redirect", version, cluster, ...args])

    for (let cycle = 0; cycle < options.cycles; cycle++) {
      const protocol = protocolChoice === "both" ? (cycle % 2 === 0 ? "2pc" : "3pc") : protocolChoice
      protocols[protocol] = (protocols[protocol] ?? 0) + 1
      const before = journalSize()
      const child = startChild(
        options.demo,
        demoArgs([
          "--transfers",
          String(options.transfersPerCycle),
          "--concurrency",
          String(options.concurrency),
          "--journal",
          journal,
          "--protocol",
          protocol
        ])
      )
      current = child
      // The kill lands while transfers are in flight: wait for the first journal line of this cycle.
      for (let waited = 0; waited < 30_000 && !child.exited() && journalSize() === before; waited += 20)
        await sleep(20)
      const killAfter = rng.int(20, 3000)
      const killer = setTimeout(child.kill, killAfter)
      let server = ""
      if (cycle === restartCycle || cycle === crashCycle) {
        await sleep(rng.int(0, Math.max(10, killAfter - 10)))
        if (cycle === restartCycle) {
          server = "server restarted"
          await pgctl("restart")
        } else {
          server = "server stopped -m immediate, started"
          await pgctl("stop", "-m", "immediate")
          await pgctl("start")
        }
        serverRestarts++
      }
      const result = await child.done
      clearTimeout(killer)
      current = undefined
      if (result.killed) kills++
      log(
        `cycle ${cycle + 1}/${options.cycles} ${protocol}: ${result.killed ? `SIGKILL after ${killAfter} ms` : `exited ${result.code}`}${server ? `; ${server}` : ""}`
      )
      if (!result.killed && result.code !== 0 && server === "") {
        log(`  the demo failed on its own: ${result.stderr.trim().split("\n").slice(-3).join(" | ")}`)
      }
      await waitForServer(options.pg, log)
      recoveryKills += (await recover(cycle + 1, true)).killed
    }
    // A last recovery that nobody kills.
    await recover(options.cycles + 1, false)

    // The check, with our own queries.
    if (existsSync(journal)) {
      for (const line of readFileSync(journal, "utf8").split("\n")) {
        if (line.trim() === "") continue
        let entry: { event?: string; txId?: string; outcome?: Outcome } & Partial<Intent>
        try {
          entry = JSON.parse(line)
        } catch {
          continue // the last line of a killed writer may be torn
        }
        if (entry.event === "intent" && entry.txId !== undefined) intents.set(entry.txId, entry as Intent)
        if (entry.event === "outcome" && entry.txId !== undefined && entry.outcome !== undefined)
          outcomes.set(entry.txId, entry.outcome)
      }
    }
    const bankA = postgres(urlFor(options.pg, names.a), { max: 1, onnotice: () => {} })
    const bankB = postgres(urlFor(options.pg, names.b), { max: 1, onnotice: () => {} })
    const admin = postgres(options.pg, { max: 1, onnotice: () => {} })
    try {
      const prepared = await admin<Array<{ gid: string; database: string }>>`
        SELECT gid, database FROM pg_prepared_xacts WHERE database IN ${admin([names.a, names.b, names.coordinator])}`
      preparedLeft = prepared.length
      for (const p of prepared) violations.push(`prepared left: ${p.gid} in ${p.database}`)
      const ledgers: Record<"a" | "b", Map<string, { account: number; delta: number }>> = {
        a: new Map(),
        b: new Map()
      }
      for (const [bank, sql] of [
        ["a", bankA],
        ["b", bankB]
      ] as const) {
        const [meta] = await sql<
          Array<{ seeded: string | null }>
        >`SELECT value AS seeded FROM bank_meta WHERE key = 'seeded_total'`
        const [sums] = await sql<Array<{ total: string; negative: number }>>`
          SELECT coalesce(sum(balance), 0)::text AS total, count(*) FILTER (WHERE balance < 0)::int AS negative FROM accounts`
        const [mismatch] = await sql<Array<{ n: number }>>`
          SELECT count(*)::int AS n FROM accounts a
            LEFT JOIN (SELECT account, sum(delta) AS moved FROM ledger GROUP BY account) l ON l.account = a.id
           WHERE a.balance <> 1000 + coalesce(l.moved, 0)`
        expectedTotal += Number(meta?.seeded ?? Number.NaN)
        total += Number(sums?.total ?? 0)
        if ((sums?.negative ?? 0) > 0) violations.push(`bank ${bank}: ${sums?.negative} negative balances`)
        if ((mismatch?.n ?? 0) > 0)
          violations.push(`bank ${bank}: ${mismatch?.n} balances disagree with the ledger`)
        for (const row of await sql<
          Array<{ tx_id: string; account: number; delta: string }>
        >`SELECT tx_id, account, delta::text FROM ledger`) {
          ledgers[bank].set(row.tx_id, { account: row.account, delta: Number(row.delta) })
        }
      }
      if (total !== expectedTotal) violations.push(`total: ${total} but ${expectedTotal} was seeded`)
      for (const bank of ["a", "b"] as const) {
        for (const txId of ledgers[bank].keys()) {
          if (!intents.has(txId))
            violations.push(`phantom: ledger row ${txId} in bank ${bank} with no journalled intent`)
        }
      }
      for (const [txId, intent] of intents) {
        const told = outcomes.get(txId)
        const from = ledgers[intent.from.bank].get(txId)
        const to = ledgers[intent.to.bank].get(txId)
        const applied = (from === undefined ? 0 : 1) + (to === undefined ? 0 : 1)
        if (told === "Committed" || told === "CommitPending") {
          if (applied !== 2) violations.push(`${txId} told ${told} but applied on ${applied} of 2 banks`)
          else if (
            from?.delta !== -intent.amount ||
            to?.delta !== intent.amount ||
            from.account !== intent.from.account ||
            to.account !== intent.to.account
          ) {
            violations.push(`${txId} told ${told} but its ledger rows do not match the transfer`)
          }
        } else if (told === "Aborted") {
          if (applied !== 0) violations.push(`${txId} told Aborted but applied on ${applied} bank(s)`)
        } else if (applied === 1) {
          violations.push(`${txId} (${told ?? "no outcome: killed"}) applied on one bank only`)
        }
      }
    } finally {
      await Promise.all([bankA.end({ timeout: 2 }), bankB.end({ timeout: 2 }), admin.end({ timeout: 2 })])
    }
  } catch (error) {
    if (current !== undefined) {
      current.kill()
      await current.done
    }
    // Recovery first, so that with --keep the databases are left in a consistent state; bounded,
    // because the server may be the thing that failed.
    log("the run failed part-way; recovering and cleaning up")
    await runChild(options.demo, demoArgs(["--transfers", "0"]), 30_000)
    throw error
  } finally {
    await cleanUp()
  }
  const count = (o: Outcome) => [...outcomes.values()].filter((v) => v === o).length
  return {
    cycles: options.cycles,
    transfers: intents.size,
    committed: count("Committed"),
    aborted: count("Aborted"),
    commitPending: count("CommitPending"),
    unknown: intents.size - count("Committed") - count("Aborted") - count("CommitPending"),
    violations: violations.length,
    violationDetails: violations.slice(0, 50),
    preparedLeft,
    serverRestarts,
    kills,
    recoveryKills,
    expectedTotal,
    total,
    protocols,
    seed: options.seed,
    elapsed: Math.round(performance.now() - started) / 1000
  }
}
