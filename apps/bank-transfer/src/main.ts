#!/usr/bin/env node
/**
 * `pnpm demo -- [options]`: moves money between accounts in two bank databases with 2PC (or
 * 3PC), starting with recovery so a run that was killed is finished by the next one.
 *
 * Exit codes: 0 success; 1 a problem the message explains (server, configuration); 2 bad
 * command line; 3 an invariant failed (total not conserved, something left prepared); 130 stopped
 * by SIGINT, 143 by SIGTERM (128 + the signal's number).
 *
 * @since 0.1.0
 */
import { Cause, Effect, Either, Exit, Fiber, Option } from "effect"
import * as Demo from "./Demo.js"
import { DemoError } from "./DemoError.js"
import * as Options from "./Options.js"

const fail = (message: string, code: number): never => {
  process.stderr.write(`bank-transfer: ${message}\n`)
  process.exit(code)
}

const parsed = Options.parse(process.argv.slice(2), process.env)
if (Either.isLeft(parsed)) fail(parsed.left.message, 2)
const options = Either.getOrThrow(parsed)
if (options.help) {
  process.stdout.write(`${Options.usage}\n`)
  process.exit(0)
}

/** 128 + the signal's number, as shells report a process a signal ended. */
const signalExit = (signal: NodeJS.Signals): number => (signal === "SIGINT" ? 130 : 143)

const fiber = Effect.runFork(Demo.main(options))
// SIGINT/SIGTERM: one line, the run is interrupted, exit 128 + the number of the first signal.
let stoppedBy: NodeJS.Signals | undefined
for (const signal of ["SIGINT", "SIGTERM"] as const) {
  process.on(signal, () => {
    // A second signal does not wait for the run to stop.
    if (stoppedBy !== undefined) process.exit(signalExit(signal))
    stoppedBy = signal
    process.stderr.write(
      `bank-transfer: ${signal}: interrupted; in-flight transfers are left to recovery (run again)\n`
    )
    Effect.runFork(Fiber.interrupt(fiber))
  })
}

const exit = await Effect.runPromise(Fiber.await(fiber))
if (Exit.isSuccess(exit)) {
  process.exit(exit.value.ok ? 0 : 3)
} else {
  const failure = Cause.failureOption(exit.cause)
  if (Option.isSome(failure)) {
    const e = failure.value
    fail(e instanceof DemoError ? e.message : String((e as { message?: unknown }).message ?? e), 1)
  } else if (Cause.isInterruptedOnly(exit.cause)) {
    process.exit(signalExit(stoppedBy ?? "SIGINT"))
  } else {
    // A defect: a bug, not a user error. Keep it to one line unless asked for detail.
    const squashed = Cause.squash(exit.cause)
    const text = squashed instanceof Error ? squashed.message.split("\n")[0] : String(squashed)
    if (process.env.ACCORD_DEBUG === "1") process.stderr.write(`${Cause.pretty(exit.cause)}\n`)
    fail(`unexpected failure: ${text} (set ACCORD_DEBUG=1 for details)`, 1)
  }
}
