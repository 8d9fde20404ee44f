import { Duration, Effect, Exit, Option, Schedule } from "effect"
import * as Saga from "@accord/core/Saga"
import * as SagaLog from "@accord/core/SagaLog"
import * as TransactionId from "@accord/core/TransactionId"
import * as Broken from "../Broken.js"
import * as SimLog from "../SimLog.js"
import * as SimNetwork from "../SimNetwork.js"
import * as World from "./world.js"

export type Variant = "correct" | "saga-compensate-forward" | "saga-skip-retry"

/** What one simulated step's service will do, drawn from the seed. */
export interface StepPlan {
  readonly name: string
  /** The action fails for good (a business refusal) on its first attempt. */
  readonly refuses: boolean
  /** Attempts that fail transiently (before acting) before one succeeds. */
  readonly transientFailures: number
  readonly hasCompensation: boolean
  /** Compensation attempts that fail before one succeeds; Infinity: it never succeeds. */
  readonly compensationFailures: number
}

/**
 * A saga step of your own plugged into the simulator: its action and compensation (called with the
 * step's idempotency key, through the simulated network: dropped, late, duplicated, lost answers)
 * and `observe`, the ground truth the checkers read afterwards.
 */
export interface PluggedStep {
  readonly name: string
  readonly action: (key: string) => Effect.Effect<unknown, Saga.StepError>
  readonly compensation?: (key: string) => Effect.Effect<void, Saga.StepError>
  /** Whether `key`'s action ever took effect, and how many times its effect was undone. */
  readonly observe: (
    key: string
  ) => Effect.Effect<{ readonly applied: boolean; readonly compensations: number }>
}

/** The retries the simulation configures: the checker knows them. */
export const actionRetries = 3
export const compensationRetries = 4

/** A service behind one step, with the barrier semantics of `@accord/postgres` Barrier and a ghost history. */
export class Service {
  readonly node: SimNetwork.Node
  readonly applied = new Set<string>()
  readonly compensated = new Map<string, number>()
  readonly nullCompensated = new Set<string>()
  /** Keys whose action the orchestrator sent at least once (ghost). */
  readonly actionSent = new Set<string>()
  /** Compensation attempts sent, by orchestrator process (a spent schedule shows here). */
  readonly compensationAttempts = new Map<string, number>()
  /** Compensation effects in order, with virtual time. */
  readonly undone: Array<{ readonly key: string; readonly at: number }> = []
  private transientLeft: number
  private compensationLeft: number
  constructor(
    readonly plan: StepPlan,
    readonly world: World.World,
    readonly user?: PluggedStep
  ) {
    this.node = SimNetwork.node(`svc-${plan.name}`)
    this.transientLeft = plan.transientFailures
    this.compensationLeft = plan.compensationFailures
  }
  action(key: string): Effect.Effect<string, Saga.StepError> {
    const user = this.user
    if (user !== undefined) return user.action(key).pipe(Effect.as(`${key}:done`))
    return Effect.suspend((): Effect.Effect<string, Saga.StepError> => {
      if (this.nullCompensated.has(key)) {
        return Effect.fail(
          new Saga.StepBusinessError({ reason: "refused: compensated before the action arrived" })
        )
      }
      if (this.applied.has(key)) return Effect.succeed(`${key}:done`)
      if (this.plan.refuses)
        return Effect.fail(new Saga.StepBusinessError({ reason: "refused by the service" }))
      if (this.transientLeft > 0) {
        this.transientLeft--
        return Effect.fail(new Saga.StepTransientError({ reason: "service unavailable" }))
      }
      this.applied.add(key)
      return Effect.succeed(`${key}:done`)
    })
  }
  compensation(key: string): Effect.Effect<void, Saga.StepError> {
    const user = this.user
    if (user?.compensation !== undefined) {
      return user.compensation(key).pipe(
        Effect.tap(() =>
          Effect.sync(() => {
            if (!this.undone.some((u) => u.key === key)) this.undone.push({ key, at: this.world.now() })
          })
        )
      )
    }
    return Effect.suspend((): Effect.Effect<void, Saga.StepError> => {
      if (this.compensationLeft > 0) {
        this.compensationLeft--
        return Effect.fail(new Saga.StepTransientError({ reason: "compensation failed" }))
      }
      if ((this.compensated.get(key) ?? 0) > 0 || this.nullCompensated.has(key)) return Effect.void
      if (!this.applied.has(key)) {
        this.nullCompensated.add(key)
        return Effect.void
      }
      this.compensated.set(key, (this.compensated.get(key) ?? 0) + 1)
      this.undone.push({ key, at: this.world.now() })
      return Effect.void
    })
  }
}

/** Reads a plugged step's ground truth into the service's ghost state, for the checkers. */
export const observe = (services: ReadonlyArray<Service>, sagaId: string) =>
  Effect.forEach(
    services,
    (svc) =>
      svc.user === undefined
        ? Effect.void
        : svc.user.observe(`${sagaId}/${svc.plan.name}`).pipe(
            Effect.tap(({ applied, compensations }) =>
              Effect.sync(() => {
                const key = `${sagaId}/${svc.plan.name}`
                if (applied) svc.applied.add(key)
                svc.compensated.set(key, compensations)
              })
            )
          ),
    { discard: true }
  )

const lost = (reason: string, inDoubt: boolean): Saga.StepError =>
  inDoubt ? new Saga.StepInDoubtError({ reason }) : new Saga.StepTransientError({ reason })

/** The saga definition as process `from` runs it (every call goes through the network). */
export const definition = (
  world: World.World,
  services: ReadonlyArray<Service>,
  from: SimNetwork.Process,
  variant: Variant
) =>
  Saga.make({
    name: "sim",
    steps: services.map((svc) =>
      Saga.step({
        name: svc.plan.name,
        action: (ctx) => {
          svc.actionSent.add(ctx.key)
          // An action request is delivered at most once (late, perhaps): a step whose attempts all
          // failed definitely ("did not act") is not compensated, so a replayed request would apply
          // work nobody undoes. Compensations may be replayed.
          return world.net.send(from, svc.node, "action", { txId: ctx.sagaId }, svc.action(ctx.key), lost, {
            idempotent: false
          })
        },
        ...(svc.plan.hasCompensation
          ? {
              compensation: (ctx: Saga.CompensationContext<string>) =>
                Effect.sync(() =>
                  svc.compensationAttempts.set(from.name, (svc.compensationAttempts.get(from.name) ?? 0) + 1)
                ).pipe(
                  Effect.andThen(
                    world.net.send(
                      from,
                      svc.node,
                      "compensation",
                      { txId: ctx.sagaId },
                      svc.compensation(ctx.key),
                      lost,
                      {
                        idempotent: true
                      }
                    )
                  )
                )
            }
          : {}),
        retry: Schedule.spaced(Duration.millis(20)).pipe(Schedule.intersect(Schedule.recurs(actionRetries))),
        timeout: Duration.millis(300),
        compensationRetry:
          variant === "saga-skip-retry"
            ? Schedule.stop
            : Schedule.spaced(Duration.millis(20)).pipe(
                Schedule.intersect(Schedule.recurs(compensationRetries))
              ),
        compensationTimeout: Duration.millis(300)
      })
    )
  })

/** The saga log as process `process` uses it: crash boundaries around writes, failing writes. */
const logFor = (
  world: World.World,
  log: SagaLog.SagaLog["Type"],
  process: SimNetwork.Process
): SagaLog.SagaLog["Type"] => {
  const write = <A, E>(label: string, sagaId: string, effect: Effect.Effect<A, E>) =>
    SimLog.durableWrite(world.injector, process, "saga-log", label, sagaId, effect)
  return {
    ...log,
    start: (record, lease) => write("start", record.sagaId, log.start(record, lease)),
    append: (record, owner) => write(record._tag, record.sagaId, log.append(record, owner))
  }
}

export interface SagaFinal {
  readonly sagaId: string
  readonly told: string
  readonly final: Option.Option<Saga.Outcome>
}

export const run = (world: World.World, variant: Variant, plugged?: ReadonlyArray<PluggedStep>) =>
  Effect.gen(function* () {
    const { rng, trace, injector } = world
    const count = plugged?.length ?? rng.int(2, 5)
    const refuser = rng.chance(0.35) ? rng.int(0, count - 1) : -1
    // Plugged steps behave as they are written; the simulator's own steps draw their behaviour.
    const plans: Array<StepPlan> =
      plugged?.map((step) => ({
        name: step.name,
        refuses: false,
        transientFailures: 0,
        hasCompensation: step.compensation !== undefined,
        compensationFailures: 0
      })) ??
      Array.from({ length: count }, (_, i) => ({
        name: `step${i}`,
        refuses: i === refuser,
        transientFailures: rng.chance(0.3) ? rng.int(1, actionRetries + 1) : 0,
        hasCompensation: rng.chance(0.9),
        compensationFailures: rng.chance(0.08)
          ? Number.POSITIVE_INFINITY
          : rng.chance(0.3)
            ? rng.int(1, compensationRetries)
            : 0
      }))
    for (const p of plans) {
      trace.add(
        "sim",
        `plan ${p.name}: ${p.refuses ? "refuses" : `${p.transientFailures} transient failures`}, ${
          p.hasCompensation ? `compensation fails ${p.compensationFailures}x` : "no compensation"
        }`
      )
    }
    const services = plans.map((p, i) => new Service(p, world, plugged?.[i]))
    yield* World.scheduleNodeCrashes(
      world,
      services.map((s) => s.node)
    )
    const durable = yield* SagaLog.makeMemory
    const sagaId = yield* TransactionId.make
    const leaseFor = Duration.millis(500)
    const canCrash = variant !== "saga-compensate-forward"
    const crashAt = canCrash && injector.roll("coordinatorCrash") ? rng.int(1, count * 8) : undefined
    if (crashAt !== undefined) trace.add("sim", `schedule: orchestrator dies at boundary ${crashAt}`)
    const orchestrator = new SimNetwork.Process("orchestrator", trace, injector, crashAt)
    let told = "Crashed"
    const exit = yield* orchestrator.run(
      variant === "saga-compensate-forward"
        ? Broken.sagaCompensatingForward(definition(world, services, orchestrator, variant), { sagaId })
        : Saga.run(
            definition(world, services, orchestrator, variant),
            { order: 1 },
            { sagaId, owner: "first", leaseFor }
          ).pipe(Effect.provideService(SagaLog.SagaLog, logFor(world, durable, orchestrator)))
    )
    if (Exit.isSuccess(exit)) told = exit.value._tag
    else if (!orchestrator.crashed) told = "Failed"
    trace.add("orchestrator", `saga told ${told}`)

    // Other orchestrators sweep abandoned sagas; the first may crash too.
    let final: Option.Option<Saga.Outcome> = Option.none()
    if (variant === "saga-compensate-forward") {
      final = Exit.isSuccess(exit) ? Option.some(exit.value) : Option.none()
      yield* World.heal(
        world,
        services.map((s) => s.node)
      )
    } else {
      for (let round = 1; round <= 12; round++) {
        if (round === 3)
          yield* World.heal(
            world,
            services.map((s) => s.node)
          )
        const history = yield* durable.load(sagaId)
        const ended = Option.flatMap(history, (h) => Saga.replay(h.records).ended)
        if (Option.isSome(ended)) {
          final = ended
          break
        }
        if (Option.isNone(history)) break // the start was never written: nothing ran
        yield* Effect.sleep(leaseFor.pipe(Duration.sum(Duration.millis(10))))
        const again = round === 1 && injector.roll("coordinatorCrash") ? rng.int(1, count * 6) : undefined
        const sweeper = new SimNetwork.Process(`sweeper-${round}`, trace, injector, again)
        const swept = yield* sweeper.run(
          Saga.sweep(Saga.registry([definition(world, services, sweeper, variant)]), {
            owner: `sweeper-${round}`,
            leaseFor
          }).pipe(Effect.provideService(SagaLog.SagaLog, logFor(world, durable, sweeper)))
        )
        trace.add(
          sweeper.name,
          Exit.isSuccess(swept)
            ? `resumed ${swept.value.map((o) => o._tag).join(",") || "nothing"}`
            : "crashed or failed"
        )
      }
      if (!injector.healed)
        yield* World.heal(
          world,
          services.map((s) => s.node)
        )
      yield* world.net.drained
      const history = yield* durable.load(sagaId)
      if (Option.isSome(history) && Option.isNone(final)) {
        world.violations.push(
          `liveness: saga ${sagaId.slice(-6)} still running after the faults healed and 12 sweeps`
        )
      }
    }
    yield* observe(services, sagaId)
    return { services, result: { sagaId, told, final } satisfies SagaFinal }
  })

/** The saga invariants. */
export const check = (world: World.World, services: ReadonlyArray<Service>, saga: SagaFinal): void => {
  const v = world.violations
  const id = saga.sagaId.slice(-6)
  if (Option.isNone(saga.final)) {
    // Never started (the start record failed): nothing may have run.
    for (const s of services)
      if (s.applied.size > 0) v.push(`outcome: saga ${id} never recorded yet ${s.plan.name} was applied`)
    return
  }
  const outcome = saga.final.value
  if (saga.told !== "Crashed" && saga.told !== "Failed" && saga.told !== outcome._tag) {
    v.push(`outcome: saga ${id} told ${saga.told} but ended ${outcome._tag}`)
  }
  for (const s of services) {
    const key = `${saga.sagaId}/${s.plan.name}`
    const applied = s.applied.has(key)
    const undone = s.compensated.get(key) ?? 0
    if (undone > 1) v.push(`compensation: ${s.plan.name} compensated ${undone} times`)
    if ((undone > 0 || s.nullCompensated.has(key)) && !s.actionSent.has(key)) {
      v.push(`compensation: ${s.plan.name} compensated but its action was never started`)
    }
    if (outcome._tag === "Completed") {
      if (!applied) v.push(`outcome: saga ${id} Completed but ${s.plan.name} was never applied`)
      if (undone > 0) v.push(`outcome: saga ${id} Completed but ${s.plan.name} was compensated`)
    }
    if (outcome._tag === "Compensated" && applied && s.plan.hasCompensation && undone !== 1) {
      v.push(`compensation: saga ${id} Compensated but ${s.plan.name} (applied) compensated ${undone} times`)
    }
  }
  if (outcome._tag === "Stuck") {
    const stuck = services.find((s) => s.plan.name === outcome.step)
    if (outcome.phase !== "compensation")
      v.push(`stuck: saga ${id} stuck in ${outcome.phase} of ${outcome.step} with no pivot`)
    else if (stuck !== undefined) {
      const spent = Math.max(0, ...stuck.compensationAttempts.values())
      if (spent < compensationRetries + 1) {
        v.push(
          `stuck: saga ${id} Stuck on ${outcome.step} after ${spent} compensation attempt(s) in one run; its schedule allows ${compensationRetries + 1}`
        )
      }
    }
  }
  if (outcome._tag === "Compensated") {
    const stuckForever = services.find(
      (s) =>
        !Number.isFinite(s.plan.compensationFailures) &&
        s.applied.has(`${saga.sagaId}/${s.plan.name}`) &&
        s.plan.hasCompensation
    )
    if (stuckForever !== undefined)
      v.push(`stuck: saga ${id} Compensated although ${stuckForever.plan.name}'s compensation never succeeds`)
  }
  // Compensations run in reverse order of the steps.
  const times = services.map((s) => s.undone.find((u) => u.key === `${saga.sagaId}/${s.plan.name}`)?.at)
  for (let i = 0; i < services.length; i++) {
    for (let j = i + 1; j < services.length; j++) {
      const ti = times[i]
      const tj = times[j]
      if (ti !== undefined && tj !== undefined && tj > ti) {
        v.push(`order: ${services[i]!.plan.name} compensated before the later ${services[j]!.plan.name}`)
      }
    }
  }
}
