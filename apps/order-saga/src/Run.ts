/**
 * One demo run, as processes: four service processes and an orchestrator process, each with its own
 * database. The orchestrator may be SIGKILLed after N orders have started and is then restarted; the
 * new one resumes from the saga log. When every saga has ended the services are stopped and the
 * invariants are checked from their databases.
 *
 * @since 0.1.0
 */
import { type ChildProcess, fork } from "node:child_process"
import { existsSync } from "node:fs"
import { basename, dirname, join } from "node:path"
import { fileURLToPath } from "node:url"
import { dbTarget, type RunConfig, type ServiceName, serviceNames } from "./Config.js"
import * as Database from "./Database.js"
import type { Endpoint } from "./Http.js"
import * as Invariants from "./Invariants.js"
import type { OrderStatus, Tally } from "./Orchestrator.js"

/**
 * What a run produced.
 * @since 0.1.0
 */
export interface Result {
  readonly tally: Tally
  readonly invariants: Invariants.Report
  /** How many times the orchestrator was killed (and restarted). */
  readonly orchestratorKills: number
  /** Requests the transport delivered twice (by every orchestrator of the run, the killed one too). */
  readonly duplicatesSent: number
  /** Responses the services dropped after acting. */
  readonly droppedResponses: number
  readonly elapsedMillis: number
}

/**
 * Progress callbacks.
 * @since 0.1.0
 */
export interface Hooks {
  readonly phase?: (text: string) => void
  readonly started?: (orderId: string) => void
  readonly finished?: (orderId: string, status: OrderStatus) => void
  readonly killed?: (afterStarted: number) => void
}

/**
 * A failure of the demo's machinery (not of an order): printed as one line by the CLI.
 * @since 0.1.0
 */
export class DemoError extends Error {
  override readonly name: string = "DemoError"
}

const binDir = (): string => {
  const here = dirname(fileURLToPath(import.meta.url))
  // Under vitest this module runs from src/; the children always run compiled code from dist/.
  const dir = basename(here) === "src" ? join(here, "..", "dist", "bin") : join(here, "bin")
  if (!existsSync(join(dir, "service.js")))
    throw new DemoError(`${dir}/service.js is missing: build first (pnpm --filter @accord/order-saga build)`)
  return dir
}

type Message = { readonly type: string } & Record<string, unknown>

const waitFor = (child: ChildProcess, what: string, type: string, timeoutMillis: number): Promise<Message> =>
  new Promise((resolve, reject) => {
    const timer = setTimeout(
      () => reject(new DemoError(`${what} did not become ready within ${timeoutMillis} ms`)),
      timeoutMillis
    )
    const onMessage = (m: Message) => {
      if (m.type === type) {
        cleanup()
        resolve(m)
      } else if (m.type === "error") {
        cleanup()
        reject(new DemoError(`${what}: ${String(m.message)}`))
      }
    }
    const onExit = (code: number | null) => {
      cleanup()
      reject(new DemoError(`${what} exited (code ${code}) before ${type}`))
    }
    const cleanup = () => {
      clearTimeout(timer)
      child.off("message", onMessage)
      child.off("exit", onExit)
    }
    child.on("message", onMessage)
    child.on("exit", onExit)
  })

const exited = (child: ChildProcess): Promise<void> =>
  child.exitCode !== null || child.signalCode !== null
    ? Promise.resolve()
    : new Promise((resolve) => child.once("exit", () => resolve()))

/**
 * Checks that the databases can be reached and creates (or, with `fresh`, re-creates) them.
 * @since 0.1.0
 */
export const prepareDatabases = async (config: RunConfig): Promise<void> => {
  try {
    for (const name of [...serviceNames, "saga"] as const)
      await Database.ensure(dbTarget(config, name), config.fresh)
  } catch (error) {
    const reason = error instanceof Error ? error.message : String(error)
    throw new DemoError(
      config.pgUrl === undefined
        ? `cannot prepare the PGlite folders under ${config.dataRoot}: ${reason}`
        : `cannot reach PostgreSQL at ${redact(config.pgUrl)}: ${reason}`
    )
  }
}

/**
 * A URL without its password, for messages.
 * @since 0.1.0
 */
export const redact = (url: string): string => {
  try {
    const u = new URL(url)
    if (u.password !== "") u.password = "***"
    return u.toString()
  } catch {
    return "(unparsable URL)"
  }
}

/**
 * An error as one line: its message, then its causes' (`error.cause`, innermost last), each with its
 * code (a SQLSTATE, or a socket error's `ECONNREFUSED`). A failed drizzle query's message is the
 * query text; what went wrong (the database is not accepting connections, ...) is in its cause.
 * @since 0.1.0
 */
export const explain = (error: unknown): string => {
  const parts: Array<string> = []
  const seen = new Set<unknown>()
  let current: unknown = error
  while (current !== undefined && current !== null && !seen.has(current) && parts.length < 5) {
    seen.add(current)
    const message = current instanceof Error ? current.message : String(current)
    const cause = current instanceof Error ? current.cause : undefined
    const firstLine = message.split("\n")[0]!.trim()
    // A wrapper's message (a query's text) is cut short; its cause says what happened.
    const text = cause !== undefined && firstLine.length > 160 ? `${firstLine.slice(0, 160)}...` : firstLine
    const code = Database.sqlState(current)
    parts.push(
      code === undefined ? text : `${text} [${/^[0-9A-Z]{5}$/.test(code) ? "SQLSTATE " : ""}${code}]`
    )
    current = cause
  }
  return parts.join(": ")
}

/**
 * Checks the invariants from the services' databases (the services must be stopped). A database
 * error fails with a `DemoError` that names its cause (see `explain`).
 * @since 0.1.0
 */
export const checkInvariants = async (config: RunConfig): Promise<Invariants.Report> => {
  const dbs = await Promise.all(serviceNames.map((name) => Database.open(dbTarget(config, name), { max: 2 })))
  try {
    const [orders, inventory, payment, shipping] = dbs as [Database.Db, Database.Db, Database.Db, Database.Db]
    return await Invariants.check({ orders, inventory, payment, shipping })
  } catch (error) {
    throw new DemoError(`checking the invariants failed: ${explain(error)}`)
  } finally {
    await Promise.all(dbs.map((db) => db.close()))
  }
}

/**
 * The run was stopped through its `AbortSignal` (SIGINT/SIGTERM to the CLI).
 * @since 0.1.0
 */
export class InterruptedError extends DemoError {
  override readonly name = "InterruptedError"
}

/**
 * Stops a service process with SIGTERM (it closes its database, also while it is still starting);
 * SIGKILL after `graceMillis`.
 */
const stopService = async (child: ChildProcess, graceMillis: number): Promise<void> => {
  if (child.exitCode !== null || child.signalCode !== null) return
  child.kill("SIGTERM")
  const timer = setTimeout(() => child.kill("SIGKILL"), graceMillis)
  await exited(child)
  clearTimeout(timer)
}

/**
 * Runs the demo end to end. Aborting `signal` stops the processes (the orchestrator is SIGKILLed,
 * as `--kill-orchestrator-after` does; the services close their databases) and fails the run with
 * an `InterruptedError`.
 * @since 0.1.0
 */
export const run = async (config: RunConfig, hooks: Hooks = {}, signal?: AbortSignal): Promise<Result> => {
  const began = Date.now()
  const bin = binDir()
  const interrupted = () => new InterruptedError(`interrupted (${String(signal?.reason ?? "aborted")})`)
  hooks.phase?.(config.pgUrl === undefined ? "preparing PGlite databases" : "preparing PostgreSQL databases")
  await prepareDatabases(config)
  if (signal?.aborted) throw interrupted()

  const children = new Set<ChildProcess>()
  const services = new Map<ServiceName, ChildProcess>()
  const spawn = (script: string, args: ReadonlyArray<string>): ChildProcess => {
    // The child's stdout goes to our stderr: Effect's logger (the orchestrator's warnings, the
    // sweep's) writes to stdout, and ignored they were lost; our stdout is the summary (with
    // --json, the JSON line alone).
    const child = fork(join(bin, script), [...args], { stdio: ["ignore", 2, "inherit", "ipc"] })
    children.add(child)
    child.once("exit", () => children.delete(child))
    return child
  }
  const isService = (child: ChildProcess) => [...services.values()].includes(child)
  // Every wait below ends when its process exits: stopping the processes ends the run.
  const onAbort = () => {
    for (const child of children)
      if (isService(child)) void stopService(child, 10_000)
      else child.kill("SIGKILL")
  }
  signal?.addEventListener("abort", onAbort, { once: true })
  try {
    hooks.phase?.("starting services")
    const endpoints = {} as Record<ServiceName, Endpoint>
    await Promise.all(
      serviceNames.map(async (name) => {
        const child = spawn("service.js", [name, JSON.stringify(config)])
        services.set(name, child)
        const ready = await waitFor(child, `service ${name}`, "ready", 120_000)
        endpoints[name] = { service: name, baseUrl: `http://127.0.0.1:${Number(ready.port)}` }
      })
    )

    hooks.phase?.("placing orders")
    let kills = 0
    let duplicatesSent = 0
    let tally: Tally | undefined
    const started = new Set<string>()
    // --retry-stuck acts once per run: the first orchestrator retries what the log holds as stuck and
    // tells each result as it comes (it may be killed before its tally); a restarted one does not
    // retry again (it would retry this run's own sagas that got stuck before the kill).
    const retriedStuck: Array<{ sagaId: string; result: string }> = []
    while (tally === undefined) {
      if (signal?.aborted) throw interrupted()
      const orchestratorConfig: RunConfig = kills === 0 ? config : { ...config, retryStuck: false }
      const orchestrator = spawn("orchestrator.js", [
        JSON.stringify(orchestratorConfig),
        JSON.stringify(endpoints)
      ])
      const killAt = kills === 0 ? config.killOrchestratorAfter : undefined
      let killedNow = false
      orchestrator.on("message", (m: Message) => {
        if (m.type === "started" && typeof m.orderId === "string") {
          if (!started.has(m.orderId)) {
            started.add(m.orderId)
            hooks.started?.(m.orderId)
          }
          if (killAt !== undefined && !killedNow && started.size >= killAt) {
            killedNow = true
            orchestrator.kill("SIGKILL")
            hooks.killed?.(started.size)
          }
        }
        if (m.type === "duplicated") duplicatesSent++
        if (m.type === "retried" && typeof m.sagaId === "string" && typeof m.result === "string")
          retriedStuck.push({ sagaId: m.sagaId, result: m.result })
        if (m.type === "finished" && typeof m.orderId === "string")
          hooks.finished?.(m.orderId, m.status as OrderStatus)
      })
      try {
        const done = await waitFor(orchestrator, "orchestrator", "done", 30 * 60_000)
        tally = { ...(done.tally as Tally), retriedStuck }
        await exited(orchestrator)
      } catch (error) {
        if (signal?.aborted) throw interrupted()
        if (!killedNow) throw error
        await exited(orchestrator)
        kills++
        hooks.phase?.(
          `orchestrator killed after ${started.size} orders started; restarting, it resumes from the log`
        )
      }
    }

    hooks.phase?.("stopping services")
    let dropped = 0
    await Promise.all(
      [...services.values()].map(async (child) => {
        child.send({ type: "stop" })
        const stopped = await waitFor(child, "service", "stopped", 30_000).catch(() => undefined)
        dropped += Number(stopped?.dropped ?? 0)
        await exited(child)
      })
    )

    hooks.phase?.("checking invariants")
    const invariants = await checkInvariants(config)
    return {
      tally,
      invariants,
      orchestratorKills: kills,
      duplicatesSent,
      droppedResponses: dropped,
      elapsedMillis: Date.now() - began
    }
  } catch (error) {
    throw signal?.aborted ? interrupted() : error
  } finally {
    signal?.removeEventListener("abort", onAbort)
    await Promise.all(
      [...children].map((child) => {
        if (isService(child)) return stopService(child, 10_000)
        child.kill("SIGKILL")
        return exited(child)
      })
    )
  }
}
