/**
 * A test double of the services a saga's steps call: a keyed store where an action applies once
 * per idempotency key and a compensation undoes it (a late action after a compensation is refused,
 * like the Postgres barrier). Effects are synchronous, so an interrupted step is atomic here.
 */
import { Effect, Schedule } from "effect"
import * as Saga from "../src/Saga.js"

export type ActionBehaviour =
  | "ok"
  | "business"
  | "transient"
  | "inDoubt"
  | "hang"
  | { readonly transientTimes: number }
  | { readonly inDoubtTimes: number }
export type CompensationBehaviour =
  | "ok"
  | "never"
  | "hang"
  | { readonly failTimes: number }
  | { readonly hangTimes: number }

export interface StepSpec {
  readonly name: string
  readonly action?: ActionBehaviour
  readonly compensation?: CompensationBehaviour | "none"
  readonly pivot?: boolean
  readonly retries?: number
  readonly compensationRetries?: number
}

export class World {
  readonly applied = new Set<string>()
  readonly blocked = new Set<string>()
  readonly actionCalls = new Map<string, number>()
  readonly compensationCalls = new Map<string, number>()
  /** Compensations that undid an applied action, by step. */
  readonly undoneCount = new Map<string, number>()
  readonly order: Array<string> = []
  readonly keys: Array<string> = []
  readonly seenOutputs = new Map<string, Readonly<Record<string, unknown>>>()
  active = 0
  maxActive = 0

  private bump(map: Map<string, number>, step: string): number {
    const n = (map.get(step) ?? 0) + 1
    map.set(step, n)
    return n
  }

  action(spec: StepSpec) {
    const behaviour = spec.action ?? "ok"
    return (ctx: Saga.StepContext): Effect.Effect<unknown, Saga.StepError> =>
      Effect.suspend((): Effect.Effect<unknown, Saga.StepError> => {
        const n = this.bump(this.actionCalls, ctx.step)
        this.keys.push(ctx.key)
        this.seenOutputs.set(ctx.step, ctx.outputs)
        this.order.push(`action:${ctx.step}`)
        const apply = () => {
          if (this.blocked.has(ctx.key)) return false
          this.applied.add(ctx.key)
          return true
        }
        if (behaviour === "hang") return Effect.never
        if (behaviour === "business")
          return Effect.fail(new Saga.StepBusinessError({ reason: `${ctx.step} refused` }))
        if (behaviour === "transient")
          return Effect.fail(new Saga.StepTransientError({ reason: `${ctx.step} 503` }))
        if (behaviour === "inDoubt") {
          apply()
          return Effect.fail(new Saga.StepInDoubtError({ reason: `${ctx.step} reply lost` }))
        }
        if (typeof behaviour === "object" && "transientTimes" in behaviour && n <= behaviour.transientTimes) {
          return Effect.fail(new Saga.StepTransientError({ reason: `${ctx.step} 503 (${n})` }))
        }
        if (typeof behaviour === "object" && "inDoubtTimes" in behaviour && n <= behaviour.inDoubtTimes) {
          apply()
          return Effect.fail(new Saga.StepInDoubtError({ reason: `${ctx.step} reply lost (${n})` }))
        }
        if (!apply())
          return Effect.fail(new Saga.StepBusinessError({ reason: `${ctx.step} refused: compensated` }))
        return Effect.succeed({ step: ctx.step, value: `${ctx.step}-out` })
      })
  }

  compensation(spec: StepSpec) {
    const behaviour = spec.compensation ?? "ok"
    return (ctx: Saga.CompensationContext<unknown>): Effect.Effect<void, Saga.StepError> =>
      Effect.suspend((): Effect.Effect<void, Saga.StepError> => {
        const n = this.bump(this.compensationCalls, ctx.step)
        this.order.push(`compensation:${ctx.step}`)
        if (behaviour === "never")
          return Effect.fail(new Saga.StepTransientError({ reason: `${ctx.step} undo failed` }))
        if (behaviour === "hang") return Effect.never
        if (typeof behaviour === "object" && "failTimes" in behaviour && n <= behaviour.failTimes) {
          return Effect.fail(new Saga.StepTransientError({ reason: `${ctx.step} undo failed (${n})` }))
        }
        if (typeof behaviour === "object" && "hangTimes" in behaviour && n <= behaviour.hangTimes)
          return Effect.never
        return Effect.sync(() => {
          this.blocked.add(ctx.key)
          if (this.applied.delete(ctx.key)) this.bump(this.undoneCount, ctx.step)
        })
      })
  }

  /** The steps whose effect is in place, sorted: what must agree between runs. */
  get appliedSteps(): ReadonlyArray<string> {
    return [...this.applied].map((k) => k.split("/")[1] ?? k).sort()
  }
}

export const step = (world: World, spec: StepSpec, extra: Partial<Saga.StepOptions<unknown, never>> = {}) =>
  Saga.step<unknown>({
    name: spec.name,
    action: world.action(spec),
    ...(spec.compensation === "none" ? {} : { compensation: world.compensation(spec) }),
    retry: Schedule.recurs(spec.retries ?? 2),
    compensationRetry: Schedule.recurs(spec.compensationRetries ?? 3),
    ...(spec.pivot ? { pivot: true } : {}),
    ...extra
  })
