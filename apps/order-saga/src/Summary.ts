/**
 * The run's summary: a table for people, one JSON object for machines.
 *
 * @since 0.1.0
 */
import type { RunConfig } from "./Config.js"
import type { Result } from "./Run.js"

/**
 * The JSON summary (the last line of stdout with `--json`).
 * @since 0.1.0
 */
export const json = (config: RunConfig, result: Result) => {
  const { tally, invariants } = result
  return {
    backend: config.pgUrl === undefined ? "pglite" : "postgres",
    orders: config.orders,
    concurrency: config.concurrency,
    runId: config.runId,
    completed: tally.completed,
    compensated: tally.compensated,
    stuck: tally.stuck,
    pending: tally.pending,
    notStarted: tally.notStarted.length,
    causes: tally.causes,
    orchestratorKills: result.orchestratorKills,
    resumed: tally.resumed,
    duplicatesSent: result.duplicatesSent,
    droppedResponses: result.droppedResponses,
    elapsedMillis: result.elapsedMillis,
    ordersPerSecond: Math.round((config.orders / (result.elapsedMillis / 1000)) * 10) / 10,
    stuckSagas: tally.stuckSagas,
    notStartedOrders: tally.notStarted,
    earlierStuck: tally.earlierStuck,
    retriedStuck: tally.retriedStuck,
    invariants,
    invariantsHold: invariants.invariantsHold
  }
}

const mark = (ok: boolean): string => (ok ? "ok  " : "FAIL")

/**
 * The human summary.
 * @since 0.1.0
 */
export const table = (config: RunConfig, result: Result): string => {
  const { tally, invariants: inv } = result
  const pad = (label: string, value: number | string) => `  ${label.padEnd(14)}${String(value).padStart(7)}`
  const causes = Object.entries(tally.causes)
    .sort((a, b) => b[1] - a[1])
    .map(([cause, n]) => `${cause} ${n}`)
    .join(", ")
  const where =
    config.pgUrl === undefined ? `PGlite (${config.dataRoot})` : `PostgreSQL (${config.dbPrefix}*)`
  const lines = [
    "",
    `Order saga: ${config.orders} orders, concurrency ${config.concurrency}, ${where}, ${(result.elapsedMillis / 1000).toFixed(1)} s`,
    pad("completed", tally.completed),
    `${pad("compensated", tally.compensated)}${causes === "" ? "" : `   ${causes}`}`,
    pad("stuck", tally.stuck),
    pad("pending", tally.pending),
    ...(tally.notStarted.length > 0 ? [pad("not started", tally.notStarted.length)] : []),
    ...(result.orchestratorKills > 0
      ? [
          `  orchestrator killed ${result.orchestratorKills}x; ${tally.resumed} sagas resumed from the log by the sweep`
        ]
      : []),
    `  transport faults: ${result.duplicatesSent} requests delivered twice, ${result.droppedResponses} responses dropped after acting`,
    ...tally.stuckSagas.map((s) => `  STUCK ${s.sagaId} at ${s.step}: ${s.cause}`),
    ...tally.notStarted.map(
      (o) =>
        `  NOT STARTED ${o.orderId}: the saga log did not record its start (${o.cause}); nothing of it ran`
    ),
    ...tally.retriedStuck.map((r) => `  --retry-stuck: ${r.sagaId} ${r.result}`),
    ...tally.earlierStuck.map((s) => `  STUCK (not this run) ${s.sagaId} at ${s.step}: ${s.cause}`),
    ...(tally.earlierStuck.length > 0 || tally.stuckSagas.length > 0
      ? [
          "  stuck sagas hold their orders' effects until an operator acts: once the cause is fixed, run again",
          "  with --retry-stuck (retries every stuck saga of this --db-prefix's log: Saga.retryStuck; not while another",
          "  run is live on it), or resolve them by hand (Saga.resolveStuck)"
        ]
      : []),
    "",
    "Invariants (read from the services' own databases):",
    `  ${mark(inv.checks.stockBalanced)} stock: on hand ${inv.stock.onHand} + reserved ${inv.stock.reserved} = initial ${inv.stock.initial} - shipped ${inv.stock.shipped}${inv.stock.unbalancedProducts.length > 0 ? ` (unbalanced: ${inv.stock.unbalancedProducts.join(", ")})` : ""}`,
    `  ${mark(inv.checks.chargesSettled)} charges: ${inv.charges.captured} captured for completed orders, ${inv.charges.refunded} refunded, ${inv.charges.open} open, ${inv.charges.capturedWithoutCompletedOrder} captured without a completed order, ${inv.charges.completedOrdersWithoutCapture} completed orders without capture`,
    `  ${mark(inv.checks.noPendingOrders)} orders: ${inv.orders.completed} completed, ${inv.orders.cancelled} cancelled, ${inv.orders.pending} pending`,
    `  ${mark(inv.checks.noCompensationTwice)} compensations: ${inv.compensations.applied} applied, ${inv.compensations.nullCompensations} null; ${inv.compensations.effectsTwice} effects twice in the ledgers`,
    `  ${mark(inv.checks.compensationsMatchBarrier)} barriers and ledgers agree: ${inv.compensations.unmatched} applied compensations without exactly one effect (or effects without one)`,
    `  ${mark(inv.checks.compensatedOrdersClean)} compensated orders holding a reservation, charge or shipment: ${inv.compensatedWithLiveEffects}`,
    `  ${mark(inv.checks.completedOrdersFulfilled)} completed orders not shipped, not scheduled or not captured for their amount: ${inv.completedOrdersUnfulfilled}`,
    `  => invariants ${inv.invariantsHold ? "hold" : "VIOLATED"}`,
    ""
  ]
  return lines.join("\n")
}
