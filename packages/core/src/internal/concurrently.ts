import { Cause, Clock, Duration, Effect, type Either, Exit, Fiber, Option } from "effect"
import { fromStarted, type Started } from "../Participant.js"

/**
 * Runs `f` over `items` concurrently, results in order. A transaction has a handful of branches;
 * plain fork/join costs a third of `Effect.forEach({ concurrency: "unbounded" })` (measured on this
 * hot path), and the children are interrupted with the caller, as forks are.
 */
export const forEachConcurrently = <A, B, E, R>(
  items: ReadonlyArray<A>,
  f: (item: A, index: number) => Effect.Effect<B, E, R>
): Effect.Effect<Array<B>, E, R> => {
  if (items.length === 1) return Effect.map(f(items[0]!, 0), (b) => [b])
  return Effect.gen(function* () {
    const fibers: Array<Fiber.RuntimeFiber<B, E>> = []
    for (let i = 0; i < items.length; i++) fibers.push(yield* Effect.fork(f(items[i]!, i)))
    const results: Array<B> = []
    for (const fiber of fibers) results.push(yield* Fiber.join(fiber))
    return results
  })
}

/** Node's largest timer delay; a longer one fires after 1 ms instead (with a warning). */
const MAX_TIMER_MS = 2_147_483_647

/**
 * `setTimeout` for any delay: re-armed past Node's limit, never for an infinite one. Returns a
 * cancel. `unref`: the timer does not keep the process alive.
 */
export const longTimer = (
  ms: number,
  fire: () => void,
  options?: { readonly unref?: boolean }
): (() => void) => {
  if (!(ms < Number.POSITIVE_INFINITY)) return () => undefined
  let handle: ReturnType<typeof setTimeout>
  const arm = (left: number) => {
    handle = setTimeout(
      () => (left > MAX_TIMER_MS ? arm(left - MAX_TIMER_MS) : fire()),
      Math.min(left, MAX_TIMER_MS)
    )
    if (options?.unref === true) handle.unref?.()
  }
  arm(Math.max(0, ms))
  return () => clearTimeout(handle)
}

/** The constructor of Effect's live clock: its sleeps are plain `setTimeout`s. */
const LiveClock = Clock.make().constructor

/**
 * Runs `f` over `items` concurrently under ONE bound for all of them: each result is `Some` when
 * its call finished within `bound`, `None` when it had not (that call is interrupted, and the
 * interruption awaited, before this returns).
 *
 * Cost matters here (the 2-core benchmark box): `Effect.timeout` races two extra fibers per use
 * (about 115 µs), a sleeping timer fiber plus its interruption about 50 µs, `Fiber.join` merges the
 * child's FiberRefs back. So the children only count down, the caller waits in one `Effect.async`,
 * and with Effect's live clock the bound is a plain `setTimeout` in that same callback. Any other
 * `Clock` (`TestClock`, the simulator's virtual clock) gets a sleeping fiber, so tests and
 * simulations drive the same bound through their own time.
 */
export const forEachWithin = <A, B, R>(
  items: ReadonlyArray<A>,
  f: (item: A, index: number) => Effect.Effect<B, never, R>,
  bound: Duration.Duration
): Effect.Effect<Array<Option.Option<B>>, never, R> =>
  Effect.gen(function* () {
    const results: Array<Option.Option<B>> = items.map(() => Option.none())
    if (items.length === 0) return results
    const clock = yield* Effect.clock
    let left = items.length
    let wake: (() => void) | undefined
    // A call that dies (a bug in a participant) ends the wait at once and is re-raised below, as
    // `forEachStarted` does, instead of being taken for a call that never answered.
    let died: Cause.Cause<never> | undefined
    const fibers: Array<Fiber.RuntimeFiber<void>> = []
    for (let i = 0; i < items.length; i++) {
      fibers.push(
        yield* Effect.fork(
          Effect.flatMap(Effect.exit(f(items[i]!, i)), (exit) =>
            Effect.sync(() => {
              if (Exit.isSuccess(exit)) results[i] = Option.some(exit.value)
              else if (!Cause.isInterruptedOnly(exit.cause)) died ??= exit.cause
              if (--left === 0 || died !== undefined) wake?.()
            })
          )
        )
      )
    }
    const live = clock.constructor === LiveClock
    const timer = live
      ? undefined
      : yield* Effect.fork(
          Effect.zipRight(
            Effect.sleep(bound),
            Effect.sync(() => wake?.())
          )
        )
    yield* Effect.async<void>((resume) => {
      if (left === 0 || died !== undefined) return resume(Effect.void)
      let cancel: (() => void) | undefined
      wake = () => {
        wake = undefined
        cancel?.()
        resume(Effect.void)
      }
      if (live) cancel = longTimer(Duration.toMillis(bound), () => wake?.())
      return Effect.sync(() => {
        wake = undefined
        cancel?.()
      })
    })
    if (timer !== undefined) yield* Fiber.interrupt(timer)
    if (left > 0) {
      yield* Fiber.interruptAll(fibers.filter((_, i) => Option.isNone(results[i]!)))
    }
    if (died !== undefined) return yield* Effect.failCause(died)
    return results
  })

/**
 * `forEachWithin` for calls that are started Promises (`Participant.direct`): no fiber per call.
 * ONE `Effect.async` starts every call, counts them down and holds the bound's `setTimeout`; when
 * the bound fires, the unfinished calls are abandoned and their clean-up awaited before this
 * returns, as `forEachWithin` awaits the interruption of its fibers. Interrupted itself, it
 * abandons every unfinished call and awaits them too. Under any clock but Effect's live one it is
 * `forEachWithin` over `fromStarted`, so `TestClock` and the simulator drive the bound.
 */
export const forEachStarted = <A, B, E>(
  items: ReadonlyArray<A>,
  start: (item: A, index: number) => Started<B, E>,
  bound: Duration.Duration
): Effect.Effect<Array<Option.Option<Either.Either<B, E>>>> =>
  Effect.flatMap(Effect.clock, (clock) => {
    if (clock.constructor !== LiveClock) {
      return forEachWithin(items, (item, i) => Effect.either(fromStarted(() => start(item, i))), bound)
    }
    const results: Array<Option.Option<Either.Either<B, E>>> = items.map(() => Option.none())
    if (items.length === 0) return Effect.succeed(results)
    return Effect.async<Array<Option.Option<Either.Either<B, E>>>>((resume) => {
      let left = items.length
      let finished = false
      const calls: Array<Started<B, E>> = []
      /** Abandons the unfinished calls; resolves once every call has settled. */
      const abandonRest = () => {
        const waits: Array<Promise<unknown>> = []
        for (let i = 0; i < calls.length; i++) {
          if (Option.isNone(results[i]!)) {
            calls[i]!.abandon()
            waits.push(calls[i]!.result.catch(() => undefined))
          }
        }
        return Promise.all(waits).then(() => undefined)
      }
      let cancelTimer: () => void = () => undefined
      const end = () => {
        finished = true
        cancelTimer()
      }
      for (let i = 0; i < items.length; i++) {
        let call: Started<B, E>
        try {
          call = start(items[i]!, i)
        } catch (defect) {
          // A bug in the participant: the calls already started are abandoned, not leaked.
          end()
          abandonRest().then(() => resume(Effect.die(defect)))
          return
        }
        calls.push(call)
        call.result.then(
          (either) => {
            if (finished) return
            results[i] = Option.some(either)
            if (--left === 0) {
              end()
              resume(Effect.succeed(results))
            }
          },
          (defect: unknown) => {
            if (finished) return
            end()
            abandonRest().then(() => resume(Effect.die(defect)))
          }
        )
      }
      cancelTimer = longTimer(Duration.toMillis(bound), () => {
        if (finished) return
        end()
        abandonRest().then(() => resume(Effect.succeed(results)))
      })
      return Effect.promise(() => {
        if (finished) return Promise.resolve()
        end()
        return abandonRest()
      })
    })
  })
