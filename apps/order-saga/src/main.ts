/**
 * `pnpm demo:saga -- [options]`: the order-processing saga demo. See `--help` and docs/order-saga.md.
 *
 * @since 0.1.0
 */
import cliProgress from "cli-progress"
import * as Cli from "./Cli.js"
import * as Run from "./Run.js"
import * as Summary from "./Summary.js"

const fail = (message: string, code: number): never => {
  process.stderr.write(`order-saga: ${message}\n`)
  process.exit(code)
}

const main = async (): Promise<void> => {
  let config: ReturnType<typeof Cli.parse>
  try {
    config = Cli.parse(process.argv.slice(2))
  } catch (error) {
    if (error instanceof Cli.UsageError) return fail(`${error.message} (see --help)`, 2)
    throw error
  }
  if (config === undefined) {
    process.stdout.write(Cli.usage)
    return
  }
  const tty = process.stderr.isTTY === true && config.progress
  const bar = tty
    ? new cliProgress.SingleBar(
        {
          format:
            " {bar} {value}/{total} sagas ended | {completed} completed, {compensated} compensated, {stuck} stuck",
          hideCursor: true,
          stream: process.stderr
        },
        cliProgress.Presets.shades_classic
      )
    : undefined
  const counts = { completed: 0, compensated: 0, stuck: 0, pending: 0 }
  const ended = new Set<string>()
  let barStarted = false
  const say = (text: string) => {
    if (bar !== undefined && barStarted) bar.stop()
    barStarted = false
    if (!config.json || tty) process.stderr.write(`${text}\n`)
  }
  // SIGINT/SIGTERM: one line, the processes are stopped, exit 128 + the signal's number.
  const controller = new AbortController()
  let stoppedBy: NodeJS.Signals | undefined
  for (const signal of ["SIGINT", "SIGTERM"] as const) {
    process.on(signal, () => {
      // A second signal does not wait for the processes to stop.
      if (stoppedBy !== undefined) process.exit(signal === "SIGINT" ? 130 : 143)
      stoppedBy = signal
      if (bar !== undefined && barStarted) bar.stop()
      process.stderr.write(`order-saga: ${signal}: stopping the services and the orchestrator\n`)
      controller.abort(signal)
    })
  }
  const result = await Run.run(
    config,
    {
      phase: (text) => {
        say(`- ${text}`)
        if (text.startsWith("placing orders") || text.startsWith("orchestrator killed")) {
          bar?.start(config.orders, ended.size, counts)
          barStarted = bar !== undefined
        }
      },
      finished: (orderId, status) => {
        if (ended.has(orderId)) return
        ended.add(orderId)
        counts[status]++
        bar?.update(ended.size, counts)
      },
      killed: (n) => say(`- SIGKILL orchestrator after ${n} orders started`)
    },
    controller.signal
  ).catch((error: unknown) => {
    if (stoppedBy !== undefined && error instanceof Run.InterruptedError) {
      process.exit(stoppedBy === "SIGINT" ? 130 : 143)
    }
    throw error
  })
  if (bar !== undefined && barStarted) bar.stop()
  if (!config.json) process.stdout.write(Summary.table(config, result))
  else {
    // The table (invariants included) on stderr, as the bank demo does; stdout is the JSON line.
    process.stderr.write(Summary.table(config, result))
    process.stdout.write(`${JSON.stringify(Summary.json(config, result))}\n`)
  }
  process.exitCode =
    result.invariants.invariantsHold && result.tally.pending === 0 && result.tally.notStarted.length === 0
      ? 0
      : 1
}

// The cause too (SQLSTATE, driver message): a failed query's own message is only its text.
main().catch((error: unknown) => fail(Run.explain(error), 1))
