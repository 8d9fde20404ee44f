/**
 * Child process entry of one service: `node service.js <name> <config-json>`. Reports its port to the
 * parent over IPC, stops on `{ type: "stop" }`, on SIGINT/SIGTERM, or when the parent goes away.
 *
 * @since 0.1.0
 */
import type { RunConfig, ServiceName } from "../Config.js"
import * as Services from "../Services.js"

const [name, json] = process.argv.slice(2)
const config = JSON.parse(json ?? "{}") as RunConfig

// Only while the parent listens: after it has gone, a send fails with ERR_IPC_CHANNEL_CLOSED.
const tell = (message: Record<string, unknown>): void => {
  if (process.connected) process.send?.(message)
}

let stop = async (): Promise<void> => {
  // Not started yet: nothing to close.
  process.exit(0)
}
// Ctrl-C reaches the whole process group; the parent stops us too, both end in one stop.
for (const signal of ["SIGINT", "SIGTERM"] as const) process.on(signal, () => void stop())
process.on("disconnect", () => void stop())

const main = async (): Promise<void> => {
  const service = await Services.start(name as ServiceName, config)
  let stopping = false
  stop = async (): Promise<void> => {
    if (stopping) return
    stopping = true
    await service.close()
    tell({ type: "stopped", name, dropped: service.dropped() })
    if (process.connected) process.disconnect()
    process.exit(0)
  }
  if (!process.connected) return stop()
  process.on("message", (message: { type?: string }) => {
    if (message?.type === "stop") void stop()
  })
  tell({ type: "ready", name, port: service.port })
}

main().catch((error: unknown) => {
  tell({ type: "error", name, message: error instanceof Error ? error.message : String(error) })
  process.exit(1)
})
