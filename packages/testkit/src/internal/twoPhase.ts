import { Cause, Duration, Effect, Exit, Fiber } from "effect"
import * as Participant from "@accord/core/Participant"
import * as Recovery from "@accord/core/Recovery"
import * as TransactionId from "@accord/core/TransactionId"
import { TransactionLog } from "@accord/core/TransactionLog"
import * as TwoPhaseCommit from "@accord/core/TwoPhaseCommit"
import * as Broken from "../Broken.js"
import type * as Invariants from "../Invariants.js"
import type * as Rng from "../Rng.js"
import * as SimLog from "../SimLog.js"
import * as SimNetwork from "../SimNetwork.js"
import * as SimParticipant from "../SimParticipant.js"
import * as World from "./world.js"

/** A participant plugged into the 2PC/3PC simulation. */
export interface Plugged<Work> {
  readonly participant: Participant.Participant<Work>
  /** The work of one branch, drawn from the run's generator; `writes: false` when it changes nothing. */
  readonly work: (rng: Rng.Rng) => { readonly work: Work; readonly writes: boolean }
  /** Called when the simulator crashes this participant: drop volatile state (open work). */
  readonly onCrash?: Effect.Effect<void>
  readonly onRestart?: Effect.Effect<void>
}

// biome-ignore lint/suspicious/noExplicitAny: each plugged participant has its own work type
export type AnyPlugged = Plugged<any>

export type Variant = "correct" | "commit-before-decision" | "log-loses-decisions"

export interface Target {
  readonly name: string
  // biome-ignore lint/suspicious/noExplicitAny: work type erased
  readonly participant: Participant.Participant<any>
  readonly node: SimNetwork.Node
  readonly draw: (rng: Rng.Rng) => { readonly work: unknown; readonly writes: boolean }
  readonly sim?: SimParticipant.SimParticipant
  /** gids this participant acknowledged as committed (seen by the network). */
  readonly acked: Set<string>
}

const simWork = (rng: Rng.Rng): { work: SimParticipant.Work; writes: boolean } => {
  const roll = rng.next()
  const vote = roll < 0.08 ? "no" : roll < 0.16 ? "readOnly" : "yes"
  return { work: { vote, millis: rng.int(0, rng.chance(0.1) ? 400 : 20) }, writes: vote === "yes" }
}

export const makeTargets = (
  world: World.World,
  plugged: ReadonlyArray<AnyPlugged> | undefined
): Array<Target> => {
  if (plugged !== undefined) {
    return plugged.map((p) => ({
      name: p.participant.name,
      participant: p.participant,
      node: SimNetwork.node(p.participant.name, {
        ...(p.onCrash === undefined ? {} : { onCrash: p.onCrash }),
        ...(p.onRestart === undefined ? {} : { onRestart: p.onRestart })
      }),
      draw: p.work,
      acked: new Set()
    }))
  }
  const n = world.rng.int(2, 4)
  return Array.from({ length: n }, (_, i) => {
    const sim = SimParticipant.make(`p${i}`, world.now)
    return {
      name: sim.participant.name,
      participant: sim.participant,
      node: sim.node,
      draw: simWork,
      sim,
      acked: new Set()
    }
  })
}

export interface TxPlan {
  readonly txId: TransactionId.TransactionId
  readonly startAt: number
  readonly branches: ReadonlyArray<{
    readonly target: Target
    readonly work: unknown
    readonly writes: boolean
  }>
  told: Invariants.Told
}

export const planTransactions = (world: World.World, targets: ReadonlyArray<Target>, count: number) =>
  Effect.gen(function* () {
    const plans: Array<TxPlan> = []
    for (let i = 0; i < count; i++) {
      const txId = yield* TransactionId.make
      const size = world.rng.chance(0.15) ? 1 : world.rng.int(2, targets.length)
      const chosen = [...targets].sort(() => world.rng.next() - 0.5).slice(0, size)
      const branches = chosen.map((target) => ({ target, ...target.draw(world.rng) }))
      const startAt = world.rng.int(0, 50)
      plans.push({ txId, startAt, branches, told: "Crashed" })
      world.trace.add(
        "sim",
        `plan tx ${txId.slice(-6)} at +${startAt}ms: ${branches.map((b) => `${b.target.name}:${b.target.sim === undefined ? (b.writes ? "writes" : "reads") : (b.work as SimParticipant.Work).vote}`).join(" ")}`
      )
    }
    return plans
  })

/** Watches commit acknowledgements: a branch must never commit before its decision is durable. */
export const watchWriteAhead = (world: World.World, log: SimLog.SimLog, targets: ReadonlyArray<Target>) => {
  const byName = new Map(targets.map((t) => [t.name, t]))
  world.net.observers.push((op, ctx, node, exit) => {
    if (ctx === undefined || !Exit.isSuccess(exit)) return
    const target = byName.get(node.name)
    if (op === "commit" && exit.value === "Committed") {
      target?.acked.add(ctx.gid)
      const decision = log.decisions.get(ctx.txId)
      if (decision === undefined || decision.decision !== "commit") {
        world.violations.push(
          `write-ahead: tx ${ctx.txId.slice(-6)} branch ${ctx.branch} committed while the log held ${decision?.decision ?? "no decision"}`
        )
      }
    }
    if (op === "onePhaseCommit" && (exit.value as { _tag?: string })._tag === "Committed")
      target?.acked.add(ctx.gid)
  })
}

const runRecovery = (
  world: World.World,
  log: SimLog.SimLog,
  targets: ReadonlyArray<Target>,
  process: SimNetwork.Process,
  orphanAfter: Duration.Duration
) => {
  const participants = targets.map((t) => world.net.wrap(process, t.node, t.participant))
  return process.run(
    Recovery.run(participants, {
      orphanAfter,
      callTimeout: Duration.millis(200)
    }).pipe(Effect.provideService(TransactionLog, log.service(process)))
  )
}

/** Runs one seed of the 2PC simulation; returns the transactions' final states. */
export const run = (world: World.World, plugged: ReadonlyArray<AnyPlugged> | undefined, variant: Variant) =>
  Effect.gen(function* () {
    const { rng, trace, injector } = world
    const log = new SimLog.SimLog(injector, trace, world.now, variant === "log-loses-decisions")
    const targets = makeTargets(world, plugged)
    watchWriteAhead(world, log, targets)
    const plans = yield* planTransactions(world, targets, rng.int(1, 3))
    const options = {
      prepareTimeout: Duration.millis(rng.pick([50, 200, 1000])),
      callTimeout: Duration.millis(rng.pick([20, 100, 500])),
      transactionTimeout: Duration.millis(rng.pick([300, 2000, 10_000]))
    }
    const crashAt = injector.roll("coordinatorCrash") ? rng.int(1, plans.length * 14) : undefined
    if (crashAt !== undefined) trace.add("sim", `schedule: coordinator dies at boundary ${crashAt}`)
    const coordinator = new SimNetwork.Process("coordinator", trace, injector, crashAt)
    yield* World.scheduleNodeCrashes(
      world,
      targets.map((t) => t.node)
    )

    let sweep: Fiber.RuntimeFiber<unknown> | undefined
    if (injector.roll("concurrentSweep")) {
      const at = rng.int(0, 200)
      trace.add("sim", `schedule: a recovery sweep (orphanAfter 0) runs at +${at}ms`)
      const sweeper = new SimNetwork.Process("sweeper", trace, injector, undefined)
      sweep = yield* Effect.fork(
        Effect.sleep(Duration.millis(at)).pipe(
          Effect.andThen(runRecovery(world, log, targets, sweeper, Duration.zero))
        )
      )
    }

    const protocol = variant === "commit-before-decision" ? Broken.commitBeforeDecision : TwoPhaseCommit.run
    const runTx = (plan: TxPlan) =>
      Effect.gen(function* () {
        yield* Effect.sleep(Duration.millis(plan.startAt))
        const branches = plan.branches.map((b) =>
          Participant.branch(world.net.wrap(coordinator, b.target.node, b.target.participant), b.work)
        )
        const exit = yield* Effect.exit(
          // The plan's own txId (the invariants need it before the run), with one phase for a lone
          // branch all the same: the simulation checks that path too, as a run without a txId takes it.
          protocol(branches, { ...options, txId: plan.txId, onePhase: true }).pipe(
            Effect.provideService(TransactionLog, log.service(coordinator))
          )
        )
        plan.told = Exit.isSuccess(exit) ? exit.value._tag : "Failed"
        trace.add(
          "coordinator",
          `tx ${plan.txId.slice(-6)} told ${plan.told}${Exit.isFailure(exit) ? `: ${describeCause(exit)}` : ""}`
        )
      })
    yield* coordinator.run(Effect.forEach(plans, runTx, { concurrency: "unbounded", discard: true }))

    if (coordinator.crashed) {
      // A fresh coordinator starts after a while and runs recovery; it may crash too.
      yield* Effect.sleep(Duration.millis(rng.int(0, 1000)))
      const orphanAfter = Duration.millis(rng.pick([0, 100, 30_000]))
      const second = injector.roll("coordinatorCrash") ? rng.int(1, 20) : undefined
      const restarted = new SimNetwork.Process("recovery", trace, injector, second)
      trace.add("recovery", `starts (orphanAfter ${Duration.format(orphanAfter)})`)
      const exit = yield* runRecovery(world, log, targets, restarted, orphanAfter)
      trace.add(
        "recovery",
        `ended: ${Exit.isSuccess(exit) ? JSON.stringify(summarize(exit.value)) : describeCause(exit)}`
      )
    }
    if (sweep !== undefined) yield* Fiber.join(sweep).pipe(Effect.ignore)

    yield* settle(world, log, targets)
    return { plans, targets, log }
  })

const summarize = (r: Recovery.RecoveryReport) => ({
  finished: r.transactionsFinished,
  committed: r.branchesCommitted,
  rolledBack: r.branchesRolledBack,
  presumedAborts: r.presumedAborts,
  young: r.youngLeft,
  unresolved: r.unresolved.length
})

const describeCause = (exit: Exit.Exit<unknown, unknown>): string => {
  if (Exit.isSuccess(exit)) return ""
  if (Cause.isInterruptedOnly(exit.cause)) return "interrupted (crashed)"
  const failure = Cause.squash(exit.cause)
  return failure instanceof Error ? failure.message : String(failure)
}

/** Heals the world and runs recovery until nothing is prepared and no decision is unfinished. */
const settle = (world: World.World, log: SimLog.SimLog, targets: ReadonlyArray<Target>) =>
  Effect.gen(function* () {
    yield* World.heal(
      world,
      targets.map((t) => t.node)
    )
    for (let pass = 1; pass <= 4; pass++) {
      const process = new SimNetwork.Process(`settle-${pass}`, world.trace, world.injector, undefined)
      const exit = yield* runRecovery(world, log, targets, process, Duration.zero)
      world.trace.add(
        process.name,
        Exit.isSuccess(exit) ? JSON.stringify(summarize(exit.value)) : `failed: ${describeCause(exit)}`
      )
      yield* world.net.drained
      const prepared = yield* Effect.forEach(targets, (t) =>
        t.participant.inDoubt.pipe(Effect.orElseSucceed(() => []))
      )
      const unfinished = [...log.decisions.keys()].filter((id) => !log.completed.has(id))
      if (prepared.every((p) => p.length === 0) && unfinished.length === 0) return
    }
    world.violations.push("settled: recovery did not settle in 4 passes after the faults healed")
  })

/** Builds the checker's view of each transaction. */
export const finals = (
  plans: ReadonlyArray<TxPlan>,
  log: SimLog.SimLog
): Effect.Effect<Array<Invariants.TransactionFinal>> =>
  Effect.forEach(plans, (plan) =>
    Effect.gen(function* () {
      const branches = yield* Effect.forEach(plan.branches, (b) =>
        Effect.gen(function* () {
          const gid = TransactionId.gid(plan.txId, b.target.name as TransactionId.BranchName)
          const ctx = { txId: plan.txId, branch: b.target.name as TransactionId.BranchName, gid }
          const state = yield* b.target.participant
            .state(ctx)
            .pipe(Effect.orElseSucceed(() => "aborted" as const))
          const applied =
            b.target.sim !== undefined
              ? b.target.sim.applied.filter((a) => a.gid === gid).length
              : b.target.acked.has(gid) || state === "committed"
                ? 1
                : 0
          return { branch: b.target.name, writes: b.writes, applied, prepared: state === "prepared" }
        })
      )
      const durable = log.decisions.get(plan.txId)?.decision
      return {
        txId: plan.txId,
        told: plan.told,
        branches,
        decisions: log.observed.get(plan.txId) ?? [],
        ...(durable === undefined ? {} : { durable })
      }
    })
  )
