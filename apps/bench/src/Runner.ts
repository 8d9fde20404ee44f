/**
 * Runs one cell: a mode at a concurrency, warm-up then a fixed measured window, with `concurrency`
 * closed-loop clients. WAL syncs are read around the whole cell (warm-up included) once the cell's
 * backends have exited, and divided by every transaction the cell ran.
 *
 * @since 0.1.0
 */
import type { Mode } from "./Modes.js"
import * as Server from "./Server.js"

/**
 * One row of the results.
 * @since 0.1.0
 */
export interface Cell {
  readonly mode: string
  readonly backend: "postgres" | "pglite"
  readonly concurrency: number
  readonly transactions: number
  readonly errors: number
  readonly firstError: string | undefined
  readonly seconds: number
  readonly tps: number
  readonly p50Ms: number
  readonly p99Ms: number
  /** Server-wide `pg_stat_wal.wal_sync` delta per transaction (warm-up included); null on PGlite. */
  readonly walSyncsPerTx: number | null
  /** Counted in the driver; null where the driver cannot be hooked (PGlite branches). */
  readonly statementsPerTx: number | null
  readonly preparesPerTx: number | null
  readonly commitPreparedPerTx: number | null
  /** tps / baseline tps at the same concurrency, same run. */
  ratio?: number | undefined
  baseline?: string | undefined
  /** p50 minus the baseline's p50, in ms. */
  p50DeltaMs?: number | undefined
}

/** @since 0.1.0 */
export const quantile = (sorted: ReadonlyArray<number>, q: number): number => {
  if (sorted.length === 0) return 0
  return sorted[Math.min(sorted.length - 1, Math.max(0, Math.ceil(q * sorted.length) - 1))]!
}

const drive = async (
  tx: () => Promise<void>,
  concurrency: number,
  millis: number,
  latencies: Array<number> | undefined
): Promise<{ done: number; errors: number; firstError: string | undefined }> => {
  const end = performance.now() + millis
  let done = 0
  let errors = 0
  let firstError: string | undefined
  const client = async () => {
    while (performance.now() < end) {
      const t0 = performance.now()
      try {
        await tx()
        done++
        latencies?.push(performance.now() - t0)
      } catch (e) {
        errors++
        firstError ??= e instanceof Error ? e.message.split("\n")[0] : String(e)
      }
    }
  }
  await Promise.all(Array.from({ length: concurrency }, client))
  return { done, errors, firstError }
}

const round = (x: number, digits = 2) => Math.round(x * 10 ** digits) / 10 ** digits

/**
 * What one slice of a cell measured (a cell is several slices, interleaved with the other modes).
 * @since 0.1.0
 */
export interface Slice {
  readonly warmDone: number
  readonly done: number
  readonly errors: number
  readonly firstError: string | undefined
  readonly seconds: number
  readonly latencies: ReadonlyArray<number>
  readonly walSyncs: number
  readonly statements: number
  readonly prepares: number
  readonly commitPrepared: number
}

/**
 * Opens `mode`, warms it up, measures it for `seconds`, closes it, and reads the WAL syncs the
 * slice caused (warm-up included) once its backends have exited.
 * @since 0.1.0
 */
export const slice = async (
  mode: Mode,
  concurrency: number,
  options: { readonly warmupSeconds: number; readonly seconds: number; readonly adminUrl: string | undefined }
): Promise<Slice> => {
  const usesServer = mode.backend === "postgres" && options.adminUrl !== undefined
  const walBefore = usesServer ? await Server.walSyncs(options.adminUrl!) : 0
  const instance = await mode.open(concurrency)
  const latencies: Array<number> = []
  let warm: Awaited<ReturnType<typeof drive>>
  let measured: Awaited<ReturnType<typeof drive>>
  let counts: ReturnType<typeof Server.snapshotCounters>
  let seconds: number
  try {
    warm = await drive(instance.tx, concurrency, options.warmupSeconds * 1000, undefined)
    Server.resetCounters()
    const t0 = performance.now()
    measured = await drive(instance.tx, concurrency, options.seconds * 1000, latencies)
    seconds = (performance.now() - t0) / 1000
    counts = Server.snapshotCounters()
  } finally {
    await instance.close()
  }
  const walAfter = usesServer ? await Server.walSyncs(options.adminUrl!) : 0
  return {
    warmDone: warm.done,
    done: measured.done,
    errors: measured.errors + warm.errors,
    firstError: measured.firstError ?? warm.firstError,
    seconds,
    latencies,
    walSyncs: walAfter - walBefore,
    statements: counts.statements,
    prepares: counts.prepares,
    commitPrepared: counts.commitPrepared
  }
}

/**
 * A slice that could not run at all.
 * @since 0.1.0
 */
export const failedSlice = (e: unknown): Slice => ({
  warmDone: 0,
  done: 0,
  errors: 1,
  firstError: e instanceof Error ? e.message.split("\n")[0] : String(e),
  seconds: 0,
  latencies: [],
  walSyncs: 0,
  statements: 0,
  prepares: 0,
  commitPrepared: 0
})

/**
 * Sums the slices of one mode at one concurrency into a row.
 * @since 0.1.0
 */
export const combine = (
  mode: Mode,
  concurrency: number,
  slices: ReadonlyArray<Slice>,
  usesServer: boolean
): Cell => {
  const sum = (f: (s: Slice) => number) => slices.reduce((acc, s) => acc + f(s), 0)
  const done = sum((s) => s.done)
  const seconds = sum((s) => s.seconds)
  const latencies = slices.flatMap((s) => s.latencies).sort((x, y) => x - y)
  const n = Math.max(1, done)
  return {
    mode: mode.name,
    backend: mode.backend,
    concurrency,
    transactions: done,
    errors: sum((s) => s.errors),
    firstError: slices.find((s) => s.firstError !== undefined)?.firstError,
    seconds: round(seconds),
    tps: seconds > 0 ? round(done / seconds, 1) : 0,
    p50Ms: round(quantile(latencies, 0.5), 3),
    p99Ms: round(quantile(latencies, 0.99), 3),
    walSyncsPerTx: usesServer
      ? round(
          sum((s) => s.walSyncs) /
            Math.max(
              1,
              sum((s) => s.warmDone + s.done)
            ),
          3
        )
      : null,
    statementsPerTx: mode.uncounted
      ? null
      : round(sum((s) => s.statements) / Math.max(1, done + sum((s) => s.errors))),
    preparesPerTx: mode.uncounted ? null : round(sum((s) => s.prepares) / n),
    commitPreparedPerTx: mode.uncounted ? null : round(sum((s) => s.commitPrepared) / n)
  }
}
