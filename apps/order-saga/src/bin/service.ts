/**
 * Child process entry of one service: `node service.js <name> <config-json>`. Reports its port to the
 * parent over IPC, stops on `{ type: "stop" }` or when the parent goes away.
 *
 * @since 0.1.0
 */
import type { RunConfig, ServiceName } from "../Config.js"
import * as Services from "../Services.js"

const [name, json] = process.argv.slice(2)
const config = JSON.parse(json ?? "{}") as RunConfig

const main = async (): Promise<void> => {
  const service = await Services.start(name as ServiceName, config)
  let stopping = false
  const stop = async (): Promise<void> => {
    if (stopping) return
    stopping = true
    await service.close()
    process.send?.({ type: "stopped", name, dropped: service.dropped() })
    process.disconnect?.()
    process.exit(0)
  }
  process.on("message", (message: { type?: string }) => {
    if (message?.type === "stop") void stop()
  })
  process.on("disconnect", () => void stop())
  process.send?.({ type: "ready", name, port: service.port })
}

main().catch((error: unknown) => {
  process.send?.({ type: "error", name, message: error instanceof Error ? error.message : String(error) })
  process.exit(1)
})
