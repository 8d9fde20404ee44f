/**
 * Command-line flags of the demo, parsed into a `RunConfig`. A bad flag is a `UsageError` with one
 * line of explanation.
 *
 * @since 0.1.0
 */
import { resolve } from "node:path"
import { parseArgs } from "node:util"
import { defaultFaults, defaultTiming, type RunConfig } from "./Config.js"
import * as Plan from "./Plan.js"

/**
 * A bad command line.
 * @since 0.1.0
 */
export class UsageError extends Error {
  override readonly name = "UsageError"
}

/**
 * The help text.
 * @since 0.1.0
 */
export const usage = `Usage: pnpm demo:saga -- [options]

Places orders through four HTTP services (orders, inventory, payment, shipping), each a process
with its own database, as sagas with compensations; then checks the invariants from their databases.

  --orders N                    orders to place (default 200)
  --concurrency C               sagas in flight at once (default 8)
  --fresh                       drop and re-seed the databases first
  --pg URL                      use PostgreSQL (databases accord_order_*; default: $ACCORD_PG_URL, else PGlite)
  --db-prefix P                 database name prefix on the server (default accord_order_: accord_order_orders, ...)
  --data-dir DIR                PGlite folders (default .accord-data/order-saga); given, it runs PGlite
                                even when $ACCORD_PG_URL is set (not with --pg)
  --kill-orchestrator-after N   SIGKILL the orchestrator once N orders have started, restart it, resume
  --retry-stuck                 first retry every saga the log holds as stuck, any run's on this prefix
                                (they keep the invariants from holding); once per run; not while
                                another run is live on the same --db-prefix
  --json                        print one JSON object as the last line of stdout (the summary table goes to stderr)
  --no-progress                 no progress bar
  --seed N                      seed of the catalogue, customers and orders (default 42)
  --customers N                 customers (default 50)
  --decline-rate R              share of customers whose card is declined (default ${defaultFaults.declineRate});
                                applied to the existing customers too
  --slow-rate R                 share of orders the shipping service answers late (default ${defaultFaults.slowRate})
  --slow-ms MS                  how late (default ${defaultFaults.slowMillis})
  --duplicate-rate R            share of requests delivered twice (default ${defaultFaults.duplicateRate})
  --drop-rate R                 share of responses dropped after the service acted (default ${defaultFaults.dropRate})
  --step-timeout-ms MS          per-attempt timeout of a step (default ${defaultTiming.stepTimeoutMillis})
  --retries N                   retries of a step before it is given up (default ${defaultTiming.retries})
  --lease-ms MS                 saga lease in the log (default ${defaultTiming.leaseMillis})
  -h, --help                    this text
`

const options = {
  orders: { type: "string" },
  concurrency: { type: "string" },
  fresh: { type: "boolean" },
  pg: { type: "string" },
  "data-dir": { type: "string" },
  "db-prefix": { type: "string" },
  "kill-orchestrator-after": { type: "string" },
  "retry-stuck": { type: "boolean" },
  json: { type: "boolean" },
  "no-progress": { type: "boolean" },
  seed: { type: "string" },
  customers: { type: "string" },
  "decline-rate": { type: "string" },
  "slow-rate": { type: "string" },
  "slow-ms": { type: "string" },
  "duplicate-rate": { type: "string" },
  "drop-rate": { type: "string" },
  "step-timeout-ms": { type: "string" },
  retries: { type: "string" },
  "lease-ms": { type: "string" },
  help: { type: "boolean", short: "h" }
} as const

const integer = (
  flag: string,
  text: string | undefined,
  fallback: number,
  min: number,
  max: number
): number => {
  if (text === undefined) return fallback
  // A negative whole number gets the range message below, which says what is expected.
  if (!/^-?\d+$/.test(text))
    throw new UsageError(`--${flag} must be a whole number, got ${JSON.stringify(text)}`)
  const n = Number(text)
  if (n < min || n > max) throw new UsageError(`--${flag} must be between ${min} and ${max}, got ${n}`)
  return n
}

const rate = (flag: string, text: string | undefined, fallback: number): number => {
  if (text === undefined) return fallback
  const n = Number(text)
  // Decimal notation only: Number() also reads "0x1", "0b1" and " " (as 1, 1 and 0).
  if (!/^-?(\d+(\.\d*)?|\.\d+)$/.test(text) || !Number.isFinite(n) || n < 0 || n > 1)
    throw new UsageError(`--${flag} must be a number between 0 and 1, got ${JSON.stringify(text)}`)
  return n
}

/** The flags that take a number (a negative one is passed on to the number check). */
const numericFlags = new Set(
  [
    "orders",
    "concurrency",
    "kill-orchestrator-after",
    "seed",
    "customers",
    "decline-rate",
    "slow-rate",
    "slow-ms",
    "duplicate-rate",
    "drop-rate",
    "step-timeout-ms",
    "retries",
    "lease-ms"
  ].map((flag) => `--${flag}`)
)

/** The database name prefix: on a server, `<prefix>orders`, ... `<prefix>saga`. */
const dbPrefixOf = (text: string | undefined, onServer: boolean): string => {
  if (text === undefined) return "accord_order_"
  if (!onServer)
    throw new UsageError("--db-prefix names databases on a server: it needs --pg (or $ACCORD_PG_URL)")
  if (!/^[a-z_][a-z0-9_]{0,40}$/.test(text))
    throw new UsageError(`--db-prefix must match [a-z_][a-z0-9_]{0,40}, got ${JSON.stringify(text)}`)
  return text
}

/**
 * Parses the command line; `undefined` when help was asked for.
 * @since 0.1.0
 */
export const parse = (
  argv: ReadonlyArray<string>,
  env: Readonly<Record<string, string | undefined>> = process.env
): RunConfig | undefined => {
  // pnpm passes a literal "--" through to the script: drop it.
  const given = argv.filter((a) => a !== "--")
  // `--orders -5`: parseArgs refuses a value starting with a dash as "ambiguous"; joined as
  // `--orders=-5` it reaches the number check, which says what is expected.
  const args: Array<string> = []
  for (let i = 0; i < given.length; i++) {
    const arg = given[i]!
    const next = given[i + 1]
    if (numericFlags.has(arg) && next !== undefined && /^-(\d|\.\d)/.test(next)) {
      args.push(`${arg}=${next}`)
      i++
    } else args.push(arg)
  }
  let values: ReturnType<typeof parseArgs<{ options: typeof options }>>["values"]
  try {
    ;({ values } = parseArgs({
      args,
      options,
      strict: true,
      allowPositionals: false
    }))
  } catch (error) {
    throw new UsageError(error instanceof Error ? error.message.split("\n")[0]! : String(error))
  }
  if (values.help === true) return undefined
  const orders = integer("orders", values.orders, 200, 1, 100_000)
  if (values.pg !== undefined && values["data-dir"] !== undefined) {
    // One of them would be ignored without a word: --data-dir is where PGlite keeps its databases.
    throw new UsageError("--data-dir is for the embedded PGlite databases; with --pg they are on the server")
  }
  // An explicit --data-dir asks for PGlite: ACCORD_PG_URL (a default) does not override it.
  const fromEnv = values["data-dir"] !== undefined || env.ACCORD_PG_URL === "" ? undefined : env.ACCORD_PG_URL
  const pgUrl = values.pg ?? fromEnv
  if (pgUrl !== undefined) {
    // Say where the bad URL came from: the flag, or the environment.
    const source = values.pg === undefined ? "$ACCORD_PG_URL" : "--pg"
    let url: URL
    try {
      url = new URL(pgUrl)
    } catch {
      throw new UsageError(
        `${source} must be a URL like postgres://user@host:5432/postgres, got ${JSON.stringify(pgUrl)}`
      )
    }
    if (url.protocol !== "postgres:" && url.protocol !== "postgresql:")
      throw new UsageError(`${source} must be a postgres:// URL, got ${JSON.stringify(pgUrl)}`)
  }
  const kill = values["kill-orchestrator-after"]
  const killOrchestratorAfter =
    kill === undefined ? undefined : integer("kill-orchestrator-after", kill, 0, 1, orders)
  const stockBase = Math.ceil((orders * Plan.averageQuantity) / 6)
  return {
    orders,
    concurrency: integer("concurrency", values.concurrency, 8, 1, 256),
    fresh: values.fresh === true,
    seed: integer("seed", values.seed, 42, 0, 2 ** 31 - 1),
    runId: `r${Date.now().toString(36)}`,
    killOrchestratorAfter,
    retryStuck: values["retry-stuck"] === true,
    json: values.json === true,
    progress: values["no-progress"] !== true,
    pgUrl,
    dataRoot: resolve(values["data-dir"] ?? ".accord-data/order-saga"),
    dbPrefix: dbPrefixOf(values["db-prefix"], pgUrl !== undefined),
    customers: integer("customers", values.customers, 50, 1, 100_000),
    stockBase,
    faults: {
      declineRate: rate("decline-rate", values["decline-rate"], defaultFaults.declineRate),
      slowRate: rate("slow-rate", values["slow-rate"], defaultFaults.slowRate),
      slowMillis: integer("slow-ms", values["slow-ms"], defaultFaults.slowMillis, 0, 600_000),
      duplicateRate: rate("duplicate-rate", values["duplicate-rate"], defaultFaults.duplicateRate),
      dropRate: rate("drop-rate", values["drop-rate"], defaultFaults.dropRate)
    },
    timing: {
      stepTimeoutMillis: integer(
        "step-timeout-ms",
        values["step-timeout-ms"],
        defaultTiming.stepTimeoutMillis,
        10,
        600_000
      ),
      retries: integer("retries", values.retries, defaultTiming.retries, 0, 100),
      retryBaseMillis: defaultTiming.retryBaseMillis,
      leaseMillis: integer("lease-ms", values["lease-ms"], defaultTiming.leaseMillis, 100, 600_000)
    }
  }
}
