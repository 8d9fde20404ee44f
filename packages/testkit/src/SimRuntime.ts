/**
 * A deterministic runtime for simulations: one thread, a FIFO task queue instead of Node's event
 * loop, and a virtual clock that only moves when every fiber is waiting. Given the same program
 * and the same seed, every run interleaves fibers identically, so a failing seed replays exactly.
 *
 * It plays the role of Effect's `TestClock`, but advances time itself: `Effect.sleep`, timeouts
 * and `Schedule` retries all go through its `Clock`, and the driver jumps straight to the next
 * timer once the task queue is empty (no real waiting, no `setTimeout`).
 *
 * @since 0.1.0
 */
import { Clock, Duration, Effect, type Exit, LogLevel, Logger, Random, type Scheduler } from "effect"

const ClockTypeId: typeof Clock.ClockTypeId = Clock.ClockTypeId

interface Timer {
  readonly at: number
  readonly seq: number
  readonly fire: () => void
}

/**
 * A FIFO scheduler: tasks run in the order they were scheduled, never on Node's event loop.
 * @since 0.1.0
 */
export class QueueScheduler implements Scheduler.Scheduler {
  private tasks: Array<() => void> = []
  private head = 0
  /** Tasks run so far (a cheap measure of work done). */
  executed = 0
  shouldYield(): number | false {
    return false
  }
  scheduleTask(task: () => void): void {
    this.tasks.push(task)
  }
  /** Runs tasks until none is left. */
  drain(): void {
    while (this.head < this.tasks.length) {
      const task = this.tasks[this.head]!
      this.head++
      this.executed++
      task()
      if (this.head > 4096 && this.head * 2 > this.tasks.length) {
        this.tasks = this.tasks.slice(this.head)
        this.head = 0
      }
    }
    this.tasks = []
    this.head = 0
  }
  get idle(): boolean {
    return this.head >= this.tasks.length
  }
}

/**
 * A virtual clock: `sleep` registers a timer; time moves only when the driver fires the next one.
 * @since 0.1.0
 */
export class VirtualClock implements Clock.Clock {
  readonly [ClockTypeId]: typeof Clock.ClockTypeId = ClockTypeId
  private now: number
  private seq = 0
  private timers: Array<Timer> = []
  constructor(start: number) {
    this.now = start
  }
  // Jittered schedules sleep fractional milliseconds; time is kept exact and read like Date.now().
  unsafeCurrentTimeMillis(): number {
    return Math.floor(this.now)
  }
  unsafeCurrentTimeNanos(): bigint {
    return BigInt(Math.round(this.now * 1_000_000))
  }
  readonly currentTimeMillis: Effect.Effect<number> = Effect.sync(() => Math.floor(this.now))
  readonly currentTimeNanos: Effect.Effect<bigint> = Effect.sync(() => this.unsafeCurrentTimeNanos())
  sleep(duration: Duration.Duration): Effect.Effect<void> {
    return Effect.async<void>((resume) => {
      const millis = Duration.toMillis(duration)
      if (!Number.isFinite(millis)) return
      const timer: Timer = {
        at: this.now + Math.max(0, millis),
        seq: this.seq++,
        fire: () => resume(Effect.void)
      }
      this.insert(timer)
      return Effect.sync(() => {
        const i = this.timers.indexOf(timer)
        if (i >= 0) this.timers.splice(i, 1)
      })
    })
  }
  private insert(timer: Timer): void {
    // Sorted by time, then by creation order; timers are few, a linear insert is fine.
    let i = this.timers.length
    while (i > 0) {
      const prev = this.timers[i - 1]!
      if (prev.at < timer.at || (prev.at === timer.at && prev.seq < timer.seq)) break
      i--
    }
    this.timers.splice(i, 0, timer)
  }
  /** Fires the earliest timer, moving time forward to it; false when no timer is pending. */
  fireNext(): boolean {
    const timer = this.timers.shift()
    if (timer === undefined) return false
    if (timer.at > this.now) this.now = timer.at
    timer.fire()
    return true
  }
  get pendingTimers(): number {
    return this.timers.length
  }
}

/**
 * Why a simulated program stopped without finishing.
 * @since 0.1.0
 */
export class SimulationStalledError extends Error {
  constructor(readonly reason: string) {
    super(reason)
  }
}

/**
 * Options of `runDeterministic`.
 * @since 0.1.0
 */
export interface RunOptions {
  /** Seed of the `Random` service the program sees. */
  readonly seed: number
  /** Virtual epoch milliseconds at start. Default 1_700_000_000_000. */
  readonly startMillis?: number
  /** Stop after this many virtual milliseconds (a protocol that never ends is a finding). Default 1 hour. */
  readonly maxVirtualMillis?: number
  /**
   * When no task and no timer is left but the program has not finished, it waits on something
   * outside the simulation (a user participant doing real I/O): yield to Node this many times
   * before declaring a stall. Default 1000. Real I/O makes a run non-deterministic.
   */
  readonly externalWaits?: number
}

/**
 * The result of a deterministic run.
 * @since 0.1.0
 */
export interface RunResult<A, E> {
  readonly exit: Exit.Exit<A, E>
  readonly virtualMillis: number
  readonly tasks: number
}

/**
 * Runs a program on a fresh virtual clock and FIFO scheduler with a seeded `Random`.
 * The program may use the `VirtualClock` it is given (for example to read time synchronously).
 * @since 0.1.0
 */
export const runDeterministic = async <A, E>(
  program: (clock: VirtualClock) => Effect.Effect<A, E>,
  options: RunOptions
): Promise<RunResult<A, E>> => {
  const start = options.startMillis ?? 1_700_000_000_000
  const limit = start + (options.maxVirtualMillis ?? 3_600_000)
  const clock = new VirtualClock(start)
  const scheduler = new QueueScheduler()
  const effect = program(clock).pipe(
    Effect.withClock(clock),
    Effect.withRandom(Random.make(options.seed)),
    // Spans cost time and nobody exports them here; the protocols' own log lines would drown
    // the trace (each run records what matters in its own trace).
    Effect.withTracerEnabled(false),
    Logger.withMinimumLogLevel(LogLevel.None)
  )
  const fiber = Effect.runFork(effect, { scheduler })
  let externalWaits = options.externalWaits ?? 1000
  for (;;) {
    scheduler.drain()
    const exit = fiber.unsafePoll()
    if (exit !== null) {
      return { exit, virtualMillis: clock.unsafeCurrentTimeMillis() - start, tasks: scheduler.executed }
    }
    if (clock.unsafeCurrentTimeMillis() > limit) {
      throw new SimulationStalledError(`still running after ${limit - start} virtual ms`)
    }
    if (!clock.fireNext()) {
      if (externalWaits-- <= 0) throw new SimulationStalledError("no runnable fiber and no timer: deadlock")
      await new Promise<void>((resolve) => setImmediate(resolve))
    }
  }
}
