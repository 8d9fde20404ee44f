/**
 * Child process entry of the orchestrator: `node orchestrator.js <config-json> <endpoints-json>`.
 * Reports progress and the final tally to the parent over IPC. It may be SIGKILLed at any moment
 * (`--kill-orchestrator-after`); a new one resumes from the saga log.
 *
 * @since 0.1.0
 */
import type { RunConfig } from "../Config.js"
import type { Endpoint } from "../Http.js"
import * as Orchestrator from "../Orchestrator.js"

const [configJson, endpointsJson] = process.argv.slice(2)
const config = JSON.parse(configJson ?? "{}") as RunConfig
const endpoints = JSON.parse(endpointsJson ?? "{}") as Record<
  "orders" | "inventory" | "payment" | "shipping",
  Endpoint
>

process.on("disconnect", () => process.exit(1))

// Only while the parent listens: after it has gone, a send fails with ERR_IPC_CHANNEL_CLOSED.
const tell = (message: Record<string, unknown>): void => {
  if (process.connected) process.send?.(message)
}

Orchestrator.run(config, endpoints, {
  started: (orderId) => tell({ type: "started", orderId }),
  finished: (orderId, status, resumed) => tell({ type: "finished", orderId, status, resumed }),
  duplicated: () => tell({ type: "duplicated" }),
  retried: (sagaId, result) => tell({ type: "retried", sagaId, result })
}).then(
  (tally) => {
    process.send?.({ type: "done", tally }, () => {
      process.disconnect?.()
      process.exit(0)
    })
  },
  (error: unknown) => {
    process.send?.({ type: "error", message: error instanceof Error ? error.message : String(error) }, () =>
      process.exit(1)
    )
  }
)
