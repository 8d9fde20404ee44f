#!/usr/bin/env node
/**
 * `pnpm torture -- --pg URL [--cycles N] [--json] [--protocol auto|2pc|3pc|both] [--transfers N]
 *   [--concurrency C] [--accounts A] [--seed S] [--no-server-restarts] [--cluster 15/main] [--keep]`
 * Exit code 1 when any violation is found, or when no kill landed (inconclusive: see `Torture.verdict`);
 * 2 when the run could not be made or finished (see the usage text and docs/testkit.md).
 */
import { fileURLToPath } from "node:url"
import { parseArgs } from "node:util"
import * as Torture from "../Torture.js"

const usage = `usage: torture --pg URL [--cycles N] [--json] [--protocol auto|2pc|3pc|both] [--transfers N]
               [--concurrency C] [--accounts A] [--seed S] [--no-server-restarts] [--cluster 15/main]
               [--db-prefix P] [--demo PATH] [--keep]
  --pg URL              a PostgreSQL superuser URL (or ACCORD_PG_URL); the server must allow 2PC
  --cycles N            kill -9 cycles (default 12); cycle 2 restarts the server, cycle 3 stops it
                        with -m immediate, unless --no-server-restarts
  --transfers N         transfers per demo run (default 400); too few and no kill lands (inconclusive)
  --concurrency C       concurrent transfers per demo run (default 16)
  --accounts A          accounts per bank (default 50)
  --protocol P          2pc, 3pc, both (alternating) or auto (both when the demo supports 3pc)
  --seed S              replay a kill schedule
  --db-prefix P         database name prefix (default accord_t_torture_), dropped at the end unless --keep
  --cluster V/N         the cluster to restart (default 15/main); checked with pg_ctlcluster before the run
Exit code 0 when no violation was found and at least one kill landed; 1 when a violation was found or
no kill landed (inconclusive); 2 when the run could not be made or finished: a bad command line, a
server that refuses the connection or login at start, a cluster pg_ctlcluster cannot find, or a
failure part-way (a refused restart, seeding or recovery that fails). After a failure part-way the
databases are recovered, then dropped (unless --keep); nothing of the run is left prepared.`

/** A command line torture cannot run: one line on stderr, exit code 2. */
class UsageError extends Error {}

/** `text` as a whole number at least `min`. */
const wholeNumber = (flag: string, text: string, min: number): number => {
  if (!/^\d+$/.test(text) || Number(text) < min) {
    throw new UsageError(`--${flag} takes a whole number of at least ${min}, not ${JSON.stringify(text)}`)
  }
  return Number(text)
}

const main = async () => {
  // `pnpm sim -- --seed 1` hands the script a leading "--".
  const argv = process.argv.slice(2)
  if (argv[0] === "--") argv.shift()
  const { values } = parseArgs({
    args: argv,
    strict: true,
    options: {
      pg: { type: "string" },
      cycles: { type: "string", default: "12" },
      json: { type: "boolean", default: false },
      protocol: { type: "string", default: "auto" },
      transfers: { type: "string", default: "400" },
      concurrency: { type: "string", default: "16" },
      accounts: { type: "string", default: "50" },
      seed: { type: "string" },
      "db-prefix": { type: "string", default: "accord_t_torture_" },
      "no-server-restarts": { type: "boolean", default: false },
      cluster: { type: "string", default: "15/main" },
      demo: { type: "string" },
      keep: { type: "boolean", default: false },
      help: { type: "boolean", default: false }
    },
    allowPositionals: false
  })
  if (values.help) {
    console.log(usage)
    return 0
  }
  const pg = values.pg ?? process.env.ACCORD_PG_URL
  if (pg === undefined) {
    console.error("torture needs a PostgreSQL superuser URL: --pg URL (or ACCORD_PG_URL)")
    return 2
  }
  const protocol = values.protocol as Torture.Options["protocol"]
  if (!["2pc", "3pc", "both", "auto"].includes(protocol)) {
    console.error(`--protocol must be 2pc, 3pc, both or auto, got ${protocol}`)
    return 2
  }
  const cycles = wholeNumber("cycles", values.cycles, 1)
  const transfersPerCycle = wholeNumber("transfers", values.transfers, 1)
  const concurrency = wholeNumber("concurrency", values.concurrency, 1)
  const accounts = wholeNumber("accounts", values.accounts, 2) // a transfer needs two accounts (the demo refuses fewer)
  const seed =
    values.seed === undefined ? Math.floor(Math.random() * 2 ** 31) : wholeNumber("seed", values.seed, 0)
  const summary = await Torture.run({
    pg,
    demo:
      values.demo ?? fileURLToPath(new URL("../../../../apps/bank-transfer/dist/main.js", import.meta.url)),
    cycles,
    protocol,
    transfersPerCycle,
    concurrency,
    accounts,
    dbPrefix: values["db-prefix"],
    seed,
    serverRestarts: !values["no-server-restarts"],
    cluster: values.cluster,
    keep: values.keep,
    log: (line) => process.stderr.write(`${line}\n`)
  })
  if (!values.json) {
    console.log(
      `${summary.cycles} cycles, ${summary.transfers} transfers (${summary.committed} committed, ${summary.aborted} aborted, ${summary.commitPending} pending, ${summary.unknown} cut off by a kill), ${summary.kills} kills, ${summary.recoveryKills} recovery kills, ${summary.serverRestarts} server restarts`
    )
    console.log(
      `total ${summary.total} (seeded ${summary.expectedTotal}), prepared left ${summary.preparedLeft}`
    )
    for (const v of summary.violationDetails) console.log(`VIOLATION ${v}`)
    console.log(
      summary.violations === 0
        ? "no violations"
        : `${summary.violations} violation(s); replay with --seed ${summary.seed}`
    )
  }
  const found = Torture.verdict(summary)
  if (found === "inconclusive") {
    console.error(
      "INCONCLUSIVE: no kill landed (every demo run finished before its kill time), so no crash was checked; raise --transfers"
    )
  }
  console.log(JSON.stringify(summary))
  return found === "passed" ? 0 : 1
}

main().then(
  (code) => {
    process.exitCode = code
  },
  (error: unknown) => {
    // One line: the reason; a failure part-way may add the demo's last stderr lines after it.
    console.error(error instanceof Error ? error.message.trim() : String(error))
    process.exitCode = 2
  }
)
