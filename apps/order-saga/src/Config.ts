/**
 * The configuration of a demo run, shared by the parent, the services and the orchestrator
 * (it travels to the child processes as JSON).
 *
 * @since 0.1.0
 */

/**
 * The four services.
 * @since 0.1.0
 */
export const serviceNames = ["orders", "inventory", "payment", "shipping"] as const
/** @since 0.1.0 */
export type ServiceName = (typeof serviceNames)[number]

/**
 * Where a database lives: a PGlite folder, or a database on a PostgreSQL server.
 * @since 0.1.0
 */
export type DbTarget =
  | { readonly kind: "pglite"; readonly dataDir: string }
  | { readonly kind: "postgres"; readonly url: string; readonly database: string }

/**
 * Failure mix and transport faults.
 * @since 0.1.0
 */
export interface Faults {
  /** Share of customers whose card the payment service declines. */
  readonly declineRate: number
  /** Share of orders for which the shipping service answers late (after `slowMillis`). */
  readonly slowRate: number
  readonly slowMillis: number
  /** Share of requests the orchestrator's transport delivers twice (concurrently). */
  readonly duplicateRate: number
  /** Share of requests after which a service acts, then drops the connection without answering. */
  readonly dropRate: number
}

/**
 * Step timing: per-call timeout and retry policy.
 * @since 0.1.0
 */
export interface Timing {
  readonly stepTimeoutMillis: number
  readonly retries: number
  readonly retryBaseMillis: number
  /** Lease of a saga in the log; an orchestrator that stops renewing it loses the saga to a sweep. */
  readonly leaseMillis: number
}

/**
 * A whole run.
 * @since 0.1.0
 */
export interface RunConfig {
  readonly orders: number
  readonly concurrency: number
  readonly fresh: boolean
  readonly seed: number
  readonly runId: string
  readonly killOrchestratorAfter: number | undefined
  /**
   * Before placing orders, retry (`Saga.retryStuck`) every saga the log holds as stuck, whichever run
   * it belongs to; once per run (the first orchestrator only).
   */
  readonly retryStuck: boolean
  readonly json: boolean
  readonly progress: boolean
  /** `undefined`: PGlite folders under `dataRoot`. */
  readonly pgUrl: string | undefined
  readonly dataRoot: string
  /** Database name prefix on PostgreSQL (`accord_order_` for the demo, `accord_t_order_` in tests). */
  readonly dbPrefix: string
  readonly customers: number
  readonly stockBase: number
  readonly faults: Faults
  readonly timing: Timing
}

/**
 * Default failure mix: some declines, some slow shipments, a few duplicated and dropped messages.
 * @since 0.1.0
 */
export const defaultFaults: Faults = {
  declineRate: 0.1,
  slowRate: 0.04,
  slowMillis: 6000,
  duplicateRate: 0.05,
  dropRate: 0.03
}

/** @since 0.1.0 */
export const defaultTiming: Timing = {
  stepTimeoutMillis: 2500,
  retries: 4,
  retryBaseMillis: 25,
  leaseMillis: 5000
}

/**
 * The database of a service (or of the saga log, `"saga"`).
 * @since 0.1.0
 */
export const dbTarget = (config: RunConfig, name: ServiceName | "saga"): DbTarget =>
  config.pgUrl === undefined
    ? { kind: "pglite", dataDir: `${config.dataRoot}/${name}` }
    : { kind: "postgres", url: config.pgUrl, database: `${config.dbPrefix}${name}` }
