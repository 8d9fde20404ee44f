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
  /**
   * Modes with a read-only branch: what was sent to that branch's database in the measured
   * window, exact counts (a read-only branch must see no PREPARE and no phase-2 statement).
   */
  readonly readOnlyBranch?:
    | { readonly transactions: number; readonly prepares: number; readonly phase2: number }
    | undefined
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
  readonly warmErrors: number
  readonly done: number
  /** Failed transactions of the measured window (those of the warm-up are `warmErrors`). */
  readonly errors: number
  readonly firstError: string | undefined
  readonly seconds: number
  readonly latencies: ReadonlyArray<number>
  readonly walSyncs: number
  readonly statements: number
  readonly prepares: number
  readonly commitPrepared: number
  /** The measured window's counts by database (see `Server.counters`). */
  readonly byDatabase: Readonly<Record<string, Server.Counts>>
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
    warmErrors: warm.errors,
    done: measured.done,
    errors: measured.errors,
    firstError: measured.firstError ?? warm.firstError,
    seconds,
    latencies,
    walSyncs: walAfter - walBefore,
    statements: counts.statements,
    prepares: counts.prepares,
    commitPrepared: counts.commitPrepared,
    byDatabase: counts.byDatabase
  }
}

/**
 * A slice that could not run at all.
 * @since 0.1.0
 */
export const failedSlice = (e: unknown): Slice => ({
  warmDone: 0,
  warmErrors: 0,
  done: 0,
  errors: 1,
  firstError: e instanceof Error ? e.message.split("\n")[0] : String(e),
  seconds: 0,
  latencies: [],
  walSyncs: 0,
  statements: 0,
  prepares: 0,
  commitPrepared: 0,
  byDatabase: {}
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
  // The counters cover the measured window: its every transaction, committed or failed, sent
  // statements. WAL syncs are read around warm-up and window: every transaction of both.
  const attempted = done + sum((s) => s.errors)
  const n = Math.max(1, attempted)
  const ran = Math.max(1, attempted + sum((s) => s.warmDone + s.warmErrors))
  const readOnly = mode.readOnlyDatabase
  const onReadOnly = (f: (c: Server.Counts) => number) =>
    readOnly === undefined
      ? 0
      : sum((s) => {
          const c = s.byDatabase[readOnly]
          return c === undefined ? 0 : f(c)
        })
  return {
    mode: mode.name,
    backend: mode.backend,
    concurrency,
    transactions: done,
    errors: sum((s) => s.errors + s.warmErrors),
    firstError: slices.find((s) => s.firstError !== undefined)?.firstError,
    seconds: round(seconds),
    tps: seconds > 0 ? round(done / seconds, 1) : 0,
    p50Ms: round(quantile(latencies, 0.5), 3),
    p99Ms: round(quantile(latencies, 0.99), 3),
    walSyncsPerTx: usesServer ? round(sum((s) => s.walSyncs) / ran, 3) : null,
    statementsPerTx: mode.uncounted ? null : round(sum((s) => s.statements) / n),
    preparesPerTx: mode.uncounted ? null : round(sum((s) => s.prepares) / n),
    commitPreparedPerTx: mode.uncounted ? null : round(sum((s) => s.commitPrepared) / n),
    readOnlyBranch:
      readOnly === undefined || mode.uncounted
        ? undefined
        : {
            transactions: attempted,
            prepares: onReadOnly((c) => c.prepares),
            phase2: onReadOnly((c) => c.commitPrepared + c.rollbackPrepared)
          }
  }
}
