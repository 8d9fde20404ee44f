/**
 * The benchmark's command line.
 *
 * @since 0.1.0
 */
import { parseArgs } from "node:util"
import { Data, Either } from "effect"

/** @since 0.1.0 */
export interface Options {
  /** Superuser URL of the PostgreSQL server (also `ACCORD_PG_URL`). */
  readonly pg: string | undefined
  /** Seconds measured per cell (mode x concurrency). */
  readonly duration: number
  /** Seconds of warm-up before each cell's measurement. */
  readonly warmup: number
  /** Slices per cell, interleaved across modes. */
  readonly rounds: number
  readonly concurrency: ReadonlyArray<number>
  /** Only these modes (default: all). */
  readonly modes: ReadonlyArray<string> | undefined
  readonly pglite: boolean
  readonly json: boolean
  readonly out: string
  /** `--recovery N`: leave N in-doubt transactions and time their recovery (instead of the table). */
  readonly recovery: number | undefined
  /**
   * `--breakdown [N]`: N sequential operations per shape (default 2000) explaining the client CPU
   * of each Accord piece against its hand-written twin (instead of the table).
   */
  readonly breakdown: number | undefined
  /** `--soak S`: accord2pc at concurrency 32 for S seconds, sampling RSS (instead of the table). */
  readonly soak: number | undefined
  /** Clients of the soak run. */
  readonly soakConcurrency: number
  readonly dbPrefix: string
  readonly help: boolean
}

/** @since 0.1.0 */
export class UsageError extends Data.TaggedError("UsageError")<{ readonly message: string }> {}

/** @since 0.1.0 */
export const usage = `Usage: pnpm bench -- --pg URL [options]

Measures Accord's 2PC against hand-written SQL 2PC and local commits in one run.

Options:
  --pg URL            PostgreSQL superuser URL (or ACCORD_PG_URL)
  --duration S        seconds measured per cell (default 3)
  --warmup S          warm-up seconds per cell (default 1)
  --rounds R          slices per cell, interleaved across modes (default 2)
  --concurrency LIST  comma-separated client counts (default 1,8,32)
  --modes LIST        only these modes (default all but the opt-in ones, which run only
                      when named: accord-calls-by-hand, Accord's calls sequenced by a
                      Promise script; raw2pc-group, raw2pc with its decisions batched;
                      raw2pc-pipelined, raw2pc with each branch in one message)
  --no-pglite         skip the PGlite rows
  --out DIR           results folder (default results)
  --recovery N        leave N in-doubt transactions and time recovery
  --breakdown [N]     client CPU per operation, Accord pieces against hand-written SQL,
                      N sequential operations per shape (default 2000)
  --soak S            accord2pc for S seconds, sampling RSS
  --soak-concurrency C  clients of the soak (default 32; each holds 2 of max_prepared_transactions)
  --db-prefix P       database name prefix (default accord_bench_)
  --json              print the JSON summary as the last line of stdout`

const positive = (flag: string, raw: string | undefined, fallback: number | undefined) => {
  if (raw === undefined) return Either.right(fallback)
  const n = Number(raw)
  if (!Number.isFinite(n) || n < 0) {
    return Either.left(
      new UsageError({ message: `${flag} must be a non-negative number, got ${JSON.stringify(raw)}` })
    )
  }
  return Either.right(n)
}

/**
 * Operations per shape of `--breakdown` given without a count.
 * @since 0.1.0
 */
export const defaultBreakdown = 2000

/** `--breakdown` takes an optional count: given none (last, or before another flag), the default. */
const withBreakdownCount = (args: ReadonlyArray<string>): Array<string> =>
  args.map((arg, i) =>
    arg === "--breakdown" && (args[i + 1] === undefined || args[i + 1]!.startsWith("-"))
      ? `--breakdown=${defaultBreakdown}`
      : arg
  )

/** @since 0.1.0 */
export const parse = (
  argv: ReadonlyArray<string>,
  env: NodeJS.ProcessEnv
): Either.Either<Options, UsageError> => {
  const args = withBreakdownCount(argv[0] === "--" ? argv.slice(1) : argv)
  let values: ReturnType<typeof spec>["values"]
  try {
    values = spec(args).values
  } catch (e) {
    return Either.left(
      new UsageError({ message: `${e instanceof Error ? e.message.split("\n")[0] : e} (see --help)` })
    )
  }
  const duration = positive("--duration", values.duration, 3)
  const warmup = positive("--warmup", values.warmup, 1)
  const rounds = positive("--rounds", values.rounds, 2)
  const recovery = positive("--recovery", values.recovery, undefined)
  const breakdown = positive("--breakdown", values.breakdown, undefined)
  const soak = positive("--soak", values.soak, undefined)
  const soakConcurrency = positive("--soak-concurrency", values["soak-concurrency"], 32)
  for (const e of [duration, warmup, rounds, recovery, breakdown, soak, soakConcurrency])
    if (Either.isLeft(e)) return Either.left(e.left)
  const breakdownCount = Either.getOrThrow(breakdown)
  if (breakdownCount !== undefined && (!Number.isInteger(breakdownCount) || breakdownCount < 1)) {
    return Either.left(
      new UsageError({ message: `--breakdown must be a positive integer, got ${values.breakdown}` })
    )
  }
  const concurrency = (values.concurrency ?? "1,8,32").split(",").map(Number)
  if (concurrency.some((c) => !Number.isInteger(c) || c < 1 || c > 256)) {
    return Either.left(
      new UsageError({
        message: `--concurrency must be a list of integers 1..256, got ${values.concurrency}`
      })
    )
  }
  const dbPrefix = values["db-prefix"] ?? "accord_bench_"
  if (!/^[a-z_][a-z0-9_]{0,40}$/.test(dbPrefix)) {
    return Either.left(new UsageError({ message: `--db-prefix must match [a-z_][a-z0-9_]{0,40}` }))
  }
  return Either.right({
    pg: values.pg ?? (env.ACCORD_PG_URL === "" ? undefined : env.ACCORD_PG_URL),
    duration: Either.getOrThrow(duration)!,
    warmup: Either.getOrThrow(warmup)!,
    rounds: Math.max(1, Math.round(Either.getOrThrow(rounds)!)),
    concurrency,
    modes: values.modes?.split(","),
    pglite: !(values["no-pglite"] ?? false),
    json: values.json ?? false,
    out: values.out ?? "results",
    recovery: Either.getOrThrow(recovery),
    breakdown: breakdownCount,
    soak: Either.getOrThrow(soak),
    soakConcurrency: Math.max(1, Math.round(Either.getOrThrow(soakConcurrency)!)),
    dbPrefix,
    help: values.help ?? false
  })
}

const spec = (args: Array<string>) =>
  parseArgs({
    args,
    strict: true,
    allowPositionals: false,
    options: {
      pg: { type: "string" },
      duration: { type: "string" },
      warmup: { type: "string" },
      rounds: { type: "string" },
      concurrency: { type: "string" },
      modes: { type: "string" },
      "no-pglite": { type: "boolean" },
      out: { type: "string" },
      recovery: { type: "string" },
      breakdown: { type: "string" },
      soak: { type: "string" },
      "soak-concurrency": { type: "string" },
      "db-prefix": { type: "string" },
      json: { type: "boolean" },
      help: { type: "boolean", short: "h" }
    }
  })
