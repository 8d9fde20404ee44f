/**
 * The demo's command line: parsed and checked before anything touches a database.
 *
 * @since 0.1.0
 */
import { parseArgs } from "node:util"
import { Data, Either } from "effect"

/**
 * The commit protocol a run uses.
 * @since 0.1.0
 */
export type Protocol = "2pc" | "3pc"

/**
 * The demo's settings.
 * @since 0.1.0
 */
export interface Options {
  /** A superuser URL of a real PostgreSQL server; `undefined` runs embedded PGlite. */
  readonly pg: string | undefined
  /** Where `pg` came from, for messages (default `--pg`). */
  readonly pgSource?: "--pg" | "ACCORD_PG_URL"
  /** Where the PGlite instances keep their data (when `pg` is undefined). */
  readonly dataDir: string
  /** Prefix of the three database names on a real server (`<prefix>bank_a`, ...). */
  readonly dbPrefix: string
  readonly fresh: boolean
  readonly transfers: number
  readonly concurrency: number
  readonly accounts: number
  readonly protocol: Protocol
  readonly json: boolean
  readonly journal: string | undefined
  readonly help: boolean
}

/**
 * A command line the demo refuses; `message` is one line saying what to do.
 * @since 0.1.0
 */
export class UsageError extends Data.TaggedError("UsageError")<{ readonly message: string }> {}

/**
 * The usage text.
 * @since 0.1.0
 */
export const usage = `Usage: pnpm demo -- [options]

Moves money between accounts in two bank databases with two-phase commit.

Options:
  --pg URL             real PostgreSQL (superuser URL, e.g. postgres://postgres@127.0.0.1:5432/postgres);
                       also read from ACCORD_PG_URL. Default: embedded PGlite in --data-dir
  --data-dir DIR       PGlite data folder (default .accord-data/bank-transfer); given, it runs PGlite
                       even when ACCORD_PG_URL is set (not with --pg)
  --db-prefix P        database name prefix on a real server (default accord_)
  --fresh              drop and re-seed the demo data
  --transfers N        transfers to run (default 2000; 0 runs recovery and the summary only)
  --concurrency C      transfers in flight at once (default 16)
  --accounts N         accounts per bank when seeding (default 1000)
  --protocol P         2pc (default) or 3pc
  --journal FILE       append one JSON line per transfer intent and per outcome
  --json               print one JSON summary object as the last line of stdout
  -h, --help           this text`

const integer = (flag: string, raw: string | undefined, fallback: number, min: number, max: number) => {
  if (raw === undefined) return Either.right(fallback)
  if (!/^\d+$/.test(raw) || Number(raw) < min || Number(raw) > max) {
    return Either.left(
      new UsageError({
        message: `${flag} must be an integer from ${min} to ${max}, got ${JSON.stringify(raw)}`
      })
    )
  }
  return Either.right(Number(raw))
}

/**
 * Parses the arguments (without `node` and the script); unknown flags are refused.
 * @since 0.1.0
 */
export const parse = (
  argv: ReadonlyArray<string>,
  env: NodeJS.ProcessEnv
): Either.Either<Options, UsageError> => {
  // `pnpm demo -- --x` passes the `--` through on some pnpm versions.
  const given = argv[0] === "--" ? argv.slice(1) : [...argv]
  // `--transfers -1`: parseArgs refuses a value starting with a dash as "ambiguous"; joined as
  // `--transfers=-1` it reaches the range check, which says what is expected.
  const args: Array<string> = []
  for (let i = 0; i < given.length; i++) {
    const arg = given[i]!
    const next = given[i + 1]
    if (numericFlags.has(arg) && next !== undefined && /^-\d/.test(next)) {
      args.push(`${arg}=${next}`)
      i++
    } else args.push(arg)
  }
  let values: ReturnType<typeof parseSpec>["values"]
  try {
    values = parseSpec(args).values
  } catch (e) {
    const text = e instanceof Error ? e.message.split("\n")[0]! : String(e)
    return Either.left(new UsageError({ message: `${text} (see --help)` }))
  }
  const transfers = integer("--transfers", values.transfers, 2000, 0, 10_000_000)
  if (Either.isLeft(transfers)) return Either.left(transfers.left)
  const concurrency = integer("--concurrency", values.concurrency, 16, 1, 1024)
  if (Either.isLeft(concurrency)) return Either.left(concurrency.left)
  const accounts = integer("--accounts", values.accounts, 1000, 2, 1_000_000)
  if (Either.isLeft(accounts)) return Either.left(accounts.left)
  const protocol = values.protocol ?? "2pc"
  if (protocol !== "2pc" && protocol !== "3pc") {
    return Either.left(
      new UsageError({ message: `--protocol must be 2pc or 3pc, got ${JSON.stringify(protocol)}` })
    )
  }
  const dbPrefix = values["db-prefix"] ?? "accord_"
  if (!/^[a-z_][a-z0-9_]{0,40}$/.test(dbPrefix)) {
    return Either.left(
      new UsageError({
        message: `--db-prefix must match [a-z_][a-z0-9_]{0,40}, got ${JSON.stringify(dbPrefix)}`
      })
    )
  }
  if (values.pg !== undefined && values["data-dir"] !== undefined) {
    // One of them would be ignored without a word: --data-dir is where PGlite keeps its databases.
    return Either.left(
      new UsageError({
        message: "--data-dir is for the embedded PGlite databases; with --pg they are on the server"
      })
    )
  }
  // An explicit --data-dir asks for PGlite: ACCORD_PG_URL (a default) does not override it.
  const fromEnv = values["data-dir"] !== undefined || env.ACCORD_PG_URL === "" ? undefined : env.ACCORD_PG_URL
  const pgRaw = values.pg ?? fromEnv
  const pgSource = values.pg === undefined ? "ACCORD_PG_URL" : "--pg"
  if (pgRaw !== undefined) {
    let url: URL | undefined
    try {
      url = new URL(pgRaw)
    } catch {
      url = undefined
    }
    if (url === undefined || (url.protocol !== "postgres:" && url.protocol !== "postgresql:")) {
      return Either.left(
        new UsageError({
          message: `${pgSource} must be a URL like postgres://postgres@127.0.0.1:5432/postgres, got ${JSON.stringify(pgRaw)}`
        })
      )
    }
  }
  return Either.right({
    pg: pgRaw,
    pgSource,
    dataDir: values["data-dir"] ?? ".accord-data/bank-transfer",
    dbPrefix,
    fresh: values.fresh ?? false,
    transfers: transfers.right,
    concurrency: concurrency.right,
    accounts: accounts.right,
    protocol,
    json: values.json ?? false,
    journal: values.journal,
    help: values.help ?? false
  })
}

const numericFlags = new Set(["--transfers", "--concurrency", "--accounts"])

const parseSpec = (args: Array<string>) =>
  parseArgs({
    args,
    strict: true,
    allowPositionals: false,
    options: {
      pg: { type: "string" },
      "data-dir": { type: "string" },
      "db-prefix": { type: "string" },
      fresh: { type: "boolean" },
      transfers: { type: "string" },
      concurrency: { type: "string" },
      accounts: { type: "string" },
      protocol: { type: "string" },
      journal: { type: "string" },
      json: { type: "boolean" },
      help: { type: "boolean", short: "h" }
    }
  })
