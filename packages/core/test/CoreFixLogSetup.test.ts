/**
 * The 2PC facade's wait for its log's set-up. Each call waits for a set-up in progress up to
 * `timeout` and then rejects with `LogError`; a set-up that finishes is used; one that fails, or
 * has not finished within `logSetupTimeout`, is abandoned (interrupted, what it acquired released)
 * and the next call starts a fresh one. Before, a set-up that hung was never replaced: every call
 * rejected for ever although the log's server had come back.
 */
import { Duration, Effect, Layer } from "effect"
import { afterEach, describe, expect, it, vi } from "vitest"
import { RebuildingRuntime, TwoPhaseCoordinator } from "../src/Coordinator.js"
import { LogError } from "../src/TransactionError.js"
import * as TransactionLog from "../src/TransactionLog.js"
import { debitCredit, registerAll } from "./support/coordinator.js"
import * as MemoryParticipant from "./support/MemoryParticipant.js"

const sleep = (ms: number) => new Promise<void>((resolve) => setTimeout(resolve, ms))

/** The value or the error `promise` settles with, or "still pending" after `ms`. */
const settled = (promise: Promise<unknown>, ms = 3_000): Promise<unknown> =>
  Promise.race([
    promise.then(
      (value) => ({ value }),
      (error: unknown) => error
    ),
    sleep(ms).then(() => "still pending")
  ])

/** Whether `condition` held within `ms` (checked every 10 ms). */
const eventually = async (condition: () => boolean, ms = 3_000): Promise<boolean> => {
  const end = Date.now() + ms
  while (!condition()) {
    if (Date.now() > end) return false
    await sleep(10)
  }
  return true
}

/**
 * A log layer whose first set-up acquires a resource and then hangs (`hang`), and whose later
 * set-ups succeed at once. Counts builds, releases and interruptions.
 */
const hangsOnce = (hang: Effect.Effect<never>) => {
  const seen = { builds: 0, released: 0, interrupted: 0 }
  const layer = Layer.scoped(
    TransactionLog.TransactionLog,
    Effect.suspend(() =>
      ++seen.builds > 1
        ? TransactionLog.makeMemory
        : Effect.zipRight(
            Effect.addFinalizer(() =>
              Effect.sync(() => {
                seen.released++
              })
            ),
            Effect.onInterrupt(hang, () =>
              Effect.sync(() => {
                seen.interrupted++
              })
            )
          )
    )
  )
  return { layer, seen }
}

const participants = async () => ({
  a: (await Effect.runPromise(MemoryParticipant.make("bank-a"))).participant,
  b: (await Effect.runPromise(MemoryParticipant.make("bank-b"))).participant
})

afterEach(() => {
  vi.restoreAllMocks()
})

describe("TwoPhaseCoordinator: a log set-up that hangs", () => {
  it("is abandoned at logSetupTimeout (interrupted, released), and the next call sets the log up afresh", async () => {
    const { layer, seen } = hangsOnce(Effect.never)
    const coordinator = new TwoPhaseCoordinator({ timeout: 200, logSetupTimeout: 600, log: layer })
    const { a, b } = await participants()
    const started = Date.now()
    expect(await settled(coordinator.registerParticipant(a))).toBeInstanceOf(LogError)
    expect(Date.now() - started).toBeLessThan(600)
    // A call while it still hangs waits up to `timeout` for it too, and starts no second set-up.
    expect(await settled(coordinator.registerParticipant(a))).toBeInstanceOf(LogError)
    expect(seen.builds).toBe(1)
    // At logSetupTimeout: interrupted, and what it had acquired released.
    expect(await eventually(() => seen.released === 1)).toBe(true)
    expect(seen.interrupted).toBe(1)
    await registerAll(coordinator, a, b)
    expect(seen.builds).toBe(2)
    expect((await debitCredit(coordinator, a, b)).status).toBe("committed")
    expect(await settled(coordinator.dispose())).toEqual({ value: undefined })
  })

  it("is replaced even when it hangs where it cannot be interrupted, and dispose still ends", async () => {
    const { layer, seen } = hangsOnce(Effect.uninterruptible(Effect.never))
    const coordinator = new TwoPhaseCoordinator({ timeout: 200, logSetupTimeout: 400, log: layer })
    const { a, b } = await participants()
    expect(await settled(coordinator.registerParticipant(a))).toBeInstanceOf(LogError)
    await sleep(400)
    // The abandoned set-up cannot be interrupted: the next call does not wait for it.
    const started = Date.now()
    await registerAll(coordinator, a, b)
    expect(Date.now() - started).toBeLessThan(1_000)
    expect(seen.builds).toBe(2)
    expect((await debitCredit(coordinator, a, b)).status).toBe("committed")
    // dispose waits for the abandoned set-up's release up to `timeout`, then ends.
    expect(await settled(coordinator.dispose())).toEqual({ value: undefined })
  })

  it("rejects every call with LogError within timeout while it runs: none waits for it longer", async () => {
    const { layer } = hangsOnce(Effect.never)
    const coordinator = new TwoPhaseCoordinator({ timeout: 150, logSetupTimeout: 60_000, log: layer })
    const { a } = await participants()
    for (let i = 0; i < 3; i++) {
      const started = Date.now()
      expect(await settled(coordinator.registerParticipant(a))).toBeInstanceOf(LogError)
      expect(Date.now() - started).toBeLessThan(1_000)
    }
    expect(await settled(coordinator.dispose())).toEqual({ value: undefined })
  })
})

describe("TwoPhaseCoordinator: a slow log set-up", () => {
  it("that finishes after timeout but within logSetupTimeout is used once done, not set up again", async () => {
    let builds = 0
    let done = false
    const slow = Layer.effect(
      TransactionLog.TransactionLog,
      Effect.suspend(() => {
        builds++
        return Effect.delay(
          Effect.tap(TransactionLog.makeMemory, () => {
            done = true
          }),
          "700 millis"
        )
      })
    )
    const coordinator = new TwoPhaseCoordinator({ timeout: 200, log: slow })
    const { a, b } = await participants()
    expect(await settled(coordinator.registerParticipant(a))).toBeInstanceOf(LogError)
    expect(await eventually(() => done)).toBe(true)
    await registerAll(coordinator, a, b)
    expect((await debitCredit(coordinator, a, b)).status).toBe("committed")
    expect(builds).toBe(1)
    await coordinator.dispose()
  })

  it("that fails releases what it acquired, and the next call sets the log up afresh", async () => {
    let builds = 0
    let released = 0
    const failsOnce = Layer.scoped(
      TransactionLog.TransactionLog,
      Effect.suspend(() =>
        ++builds > 1
          ? TransactionLog.makeMemory
          : Effect.zipRight(
              Effect.addFinalizer(() =>
                Effect.sync(() => {
                  released++
                })
              ),
              Effect.fail(new LogError({ operation: "migrate", reason: "lock timeout" }))
            )
      )
    )
    const coordinator = new TwoPhaseCoordinator({ timeout: 1_000, log: failsOnce })
    const { a, b } = await participants()
    expect(await settled(coordinator.registerParticipant(a))).toBeInstanceOf(LogError)
    expect(await eventually(() => released === 1)).toBe(true)
    await registerAll(coordinator, a, b)
    expect((await debitCredit(coordinator, a, b)).status).toBe("committed")
    expect(builds).toBe(2)
    await coordinator.dispose()
  })

  it("refuses a logSetupTimeout that is not a positive duration at construction", () => {
    expect(() => new TwoPhaseCoordinator({ timeout: 1_000, log: "memory", logSetupTimeout: 0 })).toThrow(
      /logSetupTimeout/
    )
  })
})

describe("RebuildingRuntime once its build finished", () => {
  it("runs each call without arming a timer", async () => {
    const runtime = new RebuildingRuntime(TransactionLog.layerMemory, Duration.seconds(1))
    await runtime.run(Effect.void)
    const timers = vi.spyOn(globalThis, "setTimeout")
    for (let i = 0; i < 20; i++) expect(await runtime.run(Effect.succeed(i))).toBe(i)
    expect(timers).not.toHaveBeenCalled()
    await runtime.dispose()
  })
})
