/**
 * The simulated network between coordinators and participants, and the processes that crash.
 *
 * Every call to a participant goes through `Network.call`: the request travels (a few virtual
 * milliseconds, sometimes much longer), may be dropped, may be delivered twice, and the answer may
 * be lost after the participant acted (the in-doubt case). Delivery runs in its own fiber, so a
 * request outlives a caller that timed out or crashed, exactly as a packet in flight does.
 *
 * A `Process` is a coordinator (or recovery, or saga orchestrator) that can crash at any of its
 * durable boundaries: before and after each branch call and each log write. A crash interrupts
 * the process's fiber; from then on it sends nothing.
 *
 * @since 0.1.0
 */
import { Deferred, Duration, Effect, Exit, Fiber } from "effect"
import type { BranchContext, Participant } from "@accord/core/Participant"
import { BranchCallError, type Phase } from "@accord/core/TransactionError"
import type * as Faults from "./Faults.js"
import type * as Trace from "./Trace.js"

/**
 * A process that can crash at one of its boundaries.
 * @since 0.1.0
 */
/**
 * Where a dead process's fibers stop, for good. Not `Effect.never`, which holds a `setInterval` to
 * keep Node alive: a fiber of the dead process that outlives its run (a coordinator's rollback on a
 * daemon fiber, bounded by a timer of the simulated clock, which stops with the run) kept the
 * simulator's worker thread, and so the `sim` process, from ever exiting.
 */
const dead: Effect.Effect<never> = Effect.async<never>(() => {})

export class Process {
  crashed = false
  boundaries = 0
  fiber: Fiber.RuntimeFiber<unknown, unknown> | undefined = undefined
  constructor(
    readonly name: string,
    readonly trace: Trace.Trace,
    readonly injector: Faults.Injector,
    /** The boundary (1-based count) at which the process dies; undefined: it does not. */
    readonly crashAt: number | undefined,
    /** The host it runs on, for partitions (default: its own name). */
    readonly host: string = name
  ) {}
  /** A durable boundary: the process may die here, and a dead process never gets past one. */
  boundary(label: string): Effect.Effect<void> {
    return Effect.suspend(() => {
      if (this.crashed) return dead
      this.boundaries++
      if (this.crashAt !== undefined && this.boundaries === this.crashAt && !this.injector.healed) {
        this.crashed = true
        this.injector.inject("coordinator-crash", this.name, `crashed ${label}`)
        const fiber = this.fiber
        return fiber === undefined ? dead : Fiber.interruptFork(fiber).pipe(Effect.andThen(dead))
      }
      return Effect.void
    })
  }
  /** Runs `effect` as this process: the fiber a crash interrupts. */
  run<A, E, R>(effect: Effect.Effect<A, E, R>): Effect.Effect<Exit.Exit<A, E>, never, R> {
    return Effect.gen(this, function* () {
      const fiber = yield* Effect.fork(effect)
      this.fiber = fiber
      return yield* Fiber.await(fiber)
    })
  }
}

/**
 * A participant's host as the network sees it: up or down, and an epoch bumped by each crash.
 * @since 0.1.0
 */
export interface Node {
  readonly name: string
  up: boolean
  epoch: number
  /** Loses the participant's volatile state (its work in progress, its connections). */
  readonly onCrash: Effect.Effect<void>
  readonly onRestart: Effect.Effect<void>
}

/**
 * Makes a node for a participant; `onCrash`/`onRestart` let a plugged implementation drop its
 * volatile state.
 * @since 0.1.0
 */
export const node = (
  name: string,
  hooks: { readonly onCrash?: Effect.Effect<void>; readonly onRestart?: Effect.Effect<void> } = {}
): Node => ({
  name,
  up: true,
  epoch: 0,
  onCrash: hooks.onCrash ?? Effect.void,
  onRestart: hooks.onRestart ?? Effect.void
})

/**
 * An observer of completed deliveries (used by the invariant checkers, e.g. "no commit before the
 * decision is durable").
 * @since 0.1.0
 */
export type Observer = (
  op: Phase,
  ctx: BranchContext | undefined,
  node: Node,
  exit: Exit.Exit<unknown, unknown>
) => void

/**
 * The simulated network.
 * @since 0.1.0
 */
export class Network {
  /** The side of a partition each host is on; hosts not listed are on side 0. Empty: no partition. */
  readonly sides = new Map<string, number>()
  private inFlightCount = 0
  private idle: Array<() => void> = []
  readonly observers: Array<Observer> = []
  constructor(
    readonly injector: Faults.Injector,
    readonly trace: Trace.Trace
  ) {}

  private latency(who: string, what: string): Duration.Duration {
    const inj = this.injector
    if (inj.roll("longDelay")) {
      const millis = inj.rng.int(50, 2000)
      inj.inject("delay", who, `${what} held ${millis}ms`)
      return Duration.millis(millis)
    }
    return Duration.millis(inj.healed ? 1 : inj.rng.int(0, 5))
  }

  /** Crashes a node now; it restarts after `downMillis`. */
  crash(target: Node, downMillis: number): Effect.Effect<void> {
    return Effect.gen(this, function* () {
      if (!target.up || this.injector.healed) return
      target.up = false
      target.epoch++
      this.injector.inject("participant-crash", target.name, `down for ${downMillis}ms`)
      yield* target.onCrash
      yield* Effect.sleep(Duration.millis(downMillis))
      yield* this.restart(target)
    })
  }

  /** Splits the hosts into sides for `millis`, then heals the partition. */
  partition(sides: ReadonlyMap<string, number>, millis: number): Effect.Effect<void> {
    return Effect.gen(this, function* () {
      if (this.injector.healed) return
      for (const [host, side] of sides) this.sides.set(host, side)
      const groups = new Map<number, Array<string>>()
      for (const [host, side] of sides) groups.set(side, [...(groups.get(side) ?? []), host])
      this.injector.inject(
        "partition",
        "network",
        `${[...groups.values()].map((g) => `{${g.join(",")}}`).join(" | ")} for ${millis}ms`
      )
      yield* Effect.sleep(Duration.millis(millis))
      this.healPartition()
    })
  }

  /** Ends any partition. */
  healPartition(): void {
    if (this.sides.size === 0) return
    this.sides.clear()
    this.trace.add("network", "partition healed")
  }

  /** Restarts a node that is down (no-op when up). */
  restart(target: Node): Effect.Effect<void> {
    return Effect.gen(this, function* () {
      if (target.up) return
      target.up = true
      this.trace.add(target.name, "restarted")
      yield* target.onRestart
    })
  }

  /**
   * Sends one call from `from` to `target` and waits for its answer.
   * `act` is what the participant does when the request arrives.
   */
  call<A>(
    from: Process,
    target: Node,
    op: Phase,
    ctx: BranchContext | undefined,
    act: Effect.Effect<A, BranchCallError>
  ): Effect.Effect<A, BranchCallError> {
    return this.send(
      from,
      target,
      op,
      ctx,
      act,
      (reason, inDoubt) =>
        new BranchCallError({ txId: ctx?.txId ?? "", branch: target.name, phase: op, reason, inDoubt })
    )
  }

  /**
   * Sends any request (a saga step's action, a 3PC call) and waits for its answer; `error` builds
   * the caller's error when the request is lost (`inDoubt: false`) or its answer is (`inDoubt: true`).
   */
  send<A, E>(
    from: Process,
    target: Node,
    op: Phase,
    ctx: { readonly txId: string } | undefined,
    act: Effect.Effect<A, E>,
    error: (reason: string, inDoubt: boolean) => E,
    options: {
      /** False: never delivered twice. Default true. */
      readonly idempotent?: boolean
    } = {}
  ): Effect.Effect<A, E> {
    const what = `${op}${ctx === undefined ? "" : ` ${ctx.txId.slice(-6)}`}`
    // Any call may be delivered twice (a client retry, a proxy), prepares included: a participant
    // must refuse a second prepare of a gid and recovery must not commit it (Recovery's rule since
    // 1c193cd). Saga actions opt out: see internal/saga.ts.
    const idempotent = options.idempotent ?? true
    return Effect.gen(this, function* () {
      yield* from.boundary(`before ${what} -> ${target.name}`)
      const reply = yield* Deferred.make<A, E>()
      const inj = this.injector
      const deliver = Effect.gen(this, function* () {
        yield* Effect.sleep(this.latency(target.name, `request ${what}`))
        if (inj.roll("dropRequest")) {
          inj.inject("drop", target.name, `request ${what} lost`)
          yield* Effect.sleep(Duration.millis(inj.rng.int(1, 50)))
          return yield* Deferred.fail(reply, error("connection reset before the request arrived", false))
        }
        if (this.sides.size > 0 && (this.sides.get(from.host) ?? 0) !== (this.sides.get(target.name) ?? 0)) {
          this.trace.add(target.name, `unreachable from ${from.name}: ${what} (partition)`)
          yield* Effect.sleep(Duration.millis(inj.rng.int(1, 30)))
          return yield* Deferred.fail(reply, error("unreachable: network partition", false))
        }
        if (!target.up) {
          this.trace.add(target.name, `refused ${what} (down)`)
          return yield* Deferred.fail(reply, error("connection refused: participant down", false))
        }
        const epoch = target.epoch
        const duplicate = idempotent && inj.roll("duplicate")
        const exit = yield* Effect.exit(act)
        this.trace.add(target.name, `${what} from ${from.name} -> ${describe(exit)}`)
        for (const observe of this.observers) observe(op, ctx as BranchContext | undefined, target, exit)
        if (duplicate) {
          inj.inject("duplicate", target.name, `${what} delivered again`)
          this.sent()
          yield* Effect.forkDaemon(
            Effect.sleep(Duration.millis(inj.rng.int(0, 100))).pipe(
              Effect.andThen(
                Effect.suspend(() => {
                  if (!target.up) return Effect.void
                  return Effect.exit(act).pipe(
                    Effect.tap((again) =>
                      Effect.sync(() => {
                        this.trace.add(target.name, `duplicate ${what} -> ${describe(again)}`)
                        for (const observe of this.observers)
                          observe(op, ctx as BranchContext | undefined, target, again)
                      })
                    )
                  )
                })
              ),
              Effect.ensuring(Effect.sync(() => this.done()))
            )
          )
        }
        if (target.epoch !== epoch) {
          return yield* Deferred.fail(reply, error("connection lost: participant crashed", true))
        }
        if (inj.roll("loseResponse")) {
          const hang = inj.rng.chance(0.5)
          inj.inject("lost-response", target.name, `answer to ${what} lost${hang ? " (caller hangs)" : ""}`)
          // A hanging caller outlives every call timeout the simulations configure (at most 1 s), and
          // then sees the connection drop, as TCP keepalive would tell it.
          yield* Effect.sleep(Duration.millis(hang ? inj.rng.int(2000, 4000) : inj.rng.int(1, 20)))
          return yield* Deferred.fail(reply, error("connection lost after the request was sent", true))
        }
        yield* Effect.sleep(this.latency(target.name, `answer to ${what}`))
        yield* Deferred.complete(reply, exit)
      })
      this.sent()
      yield* Effect.forkDaemon(deliver.pipe(Effect.ensuring(Effect.sync(() => this.done()))))
      const result = yield* Effect.exit(Deferred.await(reply))
      yield* from.boundary(`after ${what} <- ${target.name}`)
      return yield* result
    })
  }

  /** Requests and duplicates still travelling or being answered. */
  get inFlight(): number {
    return this.inFlightCount
  }
  private sent(): void {
    this.inFlightCount++
  }
  private done(): void {
    this.inFlightCount--
    if (this.inFlightCount === 0) {
      const waiting = this.idle
      this.idle = []
      for (const resume of waiting) resume()
    }
  }

  /** Waits (in virtual time) until no request or duplicate is in flight. */
  get drained(): Effect.Effect<void> {
    return Effect.async<void>((resume) => {
      if (this.inFlightCount === 0) return resume(Effect.void)
      this.idle.push(() => resume(Effect.void))
    })
  }

  /** A participant as `from` sees it through this network. */
  wrap<Work>(from: Process, target: Node, participant: Participant<Work>): Participant<Work> {
    const call = <A>(op: Phase, ctx: BranchContext | undefined, act: Effect.Effect<A, BranchCallError>) =>
      this.call(from, target, op, ctx, act)
    const wrapped: Participant<Work> = {
      name: participant.name,
      verify: participant.verify,
      prepare: (ctx, work) => call("prepare", ctx, participant.prepare(ctx, work)),
      commitOnePhase: (ctx, work) => call("onePhaseCommit", ctx, participant.commitOnePhase(ctx, work)),
      commit: (ctx) => call("commit", ctx, participant.commit(ctx)),
      rollback: (ctx) => call("rollback", ctx, participant.rollback(ctx)),
      state: (ctx) => call("state", ctx, participant.state(ctx)),
      inDoubt: call("recover", undefined, participant.inDoubt),
      forget: (ctxs) => call("complete", undefined, participant.forget(ctxs))
    }
    return participant.fromOperations === undefined
      ? wrapped
      : { ...wrapped, fromOperations: participant.fromOperations }
  }
}

const describe = (exit: Exit.Exit<unknown, unknown>): string => {
  if (Exit.isSuccess(exit)) {
    const v = exit.value
    if (v === undefined) return "ok"
    if (typeof v === "string") return v
    if (Array.isArray(v)) return `[${v.length}]`
    if (typeof v === "object" && v !== null && "_tag" in v) return String((v as { _tag: unknown })._tag)
    return "ok"
  }
  return "failed"
}
