import { Cause, Duration, Effect, Exit, Fiber } from "effect"
import { type BranchContext, type CommitAck, Vote } from "@accord/core/Participant"
import * as ThreePhaseCommit from "@accord/core/ThreePhaseCommit"
import { BranchCallError } from "@accord/core/TransactionError"
import * as TransactionId from "@accord/core/TransactionId"
import type * as Invariants from "../Invariants.js"
import type * as Rng from "../Rng.js"
import * as SimNetwork from "../SimNetwork.js"
import type * as SimParticipant from "../SimParticipant.js"
import * as World from "./world.js"

type State = ThreePhaseCommit.State

interface Entry {
  state: State
  readonly members: ReadonlyArray<TransactionId.BranchName>
  readonly mode: ThreePhaseCommit.Mode | undefined
  readonly txId: TransactionId.TransactionId
  readonly branch: TransactionId.BranchName
  readonly preparedAt: number
}

/** An in-memory 3PC member: durable states per gid, fenced gids, and the ghost count of commits applied. */
export class Member {
  readonly node: SimNetwork.Node
  readonly entries = new Map<string, Entry>()
  readonly fenced = new Set<string>()
  readonly applied = new Map<string, number>()
  readonly participant: ThreePhaseCommit.ThreePhaseParticipant<SimParticipant.Work>
  constructor(
    readonly name: string,
    now: () => number
  ) {
    const node = SimNetwork.node(name)
    this.node = node
    const entries = this.entries
    const fenced = this.fenced
    const applied = this.applied
    const stateOf = (ctx: BranchContext): State =>
      entries.get(ctx.gid)?.state ?? (fenced.has(ctx.gid) ? "aborted" : "initial")
    const move = (ctx: BranchContext, from: State, to: State): State => {
      const e = entries.get(ctx.gid)
      if (e !== undefined && e.state === from) e.state = to
      return stateOf(ctx)
    }
    const prepared = (s: State) => s === "uncertain" || s === "precommitted" || s === "preaborted"
    this.participant = {
      name: name as TransactionId.BranchName,
      verify: Effect.void,
      prepare: (ctx, work) =>
        Effect.gen(function* () {
          const epoch = node.epoch
          yield* Effect.sleep(Duration.millis(work.millis))
          if (node.epoch !== epoch || !node.up) {
            return yield* new BranchCallError({
              txId: ctx.txId,
              branch: ctx.branch,
              phase: "prepare",
              reason: "crashed during the work",
              inDoubt: true
            })
          }
          if (fenced.has(ctx.gid)) return Vote.No({ reason: "gid fenced by a rollback" })
          if (work.vote === "no") return Vote.No({ reason: "check constraint", sqlState: "23514" })
          if (work.vote === "readOnly") return Vote.ReadOnly()
          if (entries.has(ctx.gid)) return Vote.No({ reason: `gid ${ctx.gid} exists`, sqlState: "42710" })
          entries.set(ctx.gid, {
            state: "uncertain",
            members: ctx.members,
            mode: ctx.mode,
            txId: ctx.txId,
            branch: ctx.branch,
            preparedAt: now()
          })
          return Vote.Prepared()
        }),
      precommit: (ctx) => Effect.sync(() => move(ctx, "uncertain", "precommitted")),
      preabort: (ctx) => Effect.sync(() => move(ctx, "uncertain", "preaborted")),
      commit: (ctx) =>
        Effect.sync((): CommitAck => {
          const e = entries.get(ctx.gid)
          if (e !== undefined && prepared(e.state)) {
            e.state = "committed"
            applied.set(ctx.gid, (applied.get(ctx.gid) ?? 0) + 1)
            return "Committed"
          }
          return e?.state === "committed" ? "Committed" : "HeuristicRollback"
        }),
      rollback: (ctx, options) =>
        Effect.sync((): ThreePhaseCommit.ThreePhaseRollbackAck => {
          const e = entries.get(ctx.gid)
          if (e === undefined) {
            fenced.add(ctx.gid)
            return "RolledBack"
          }
          if (e.state === "committed") return "HeuristicCommit"
          // Never over a precommit (as PgThreePhaseParticipant's conditional fence): refuse, say so.
          if (e.state === "precommitted" && options?.overPrecommit !== true) return "Precommitted"
          if (options?.onlyIfUnvoted === true && e.state !== "aborted") return "Voted"
          e.state = "aborted"
          return "RolledBack"
        }),
      state: (ctx) => Effect.sync(() => stateOf(ctx)),
      inDoubt: Effect.sync(() =>
        [...entries.entries()]
          .filter(([, e]) => prepared(e.state))
          .map(([gid, e]) => ({
            gid: gid as TransactionId.Gid,
            txId: e.txId,
            branch: e.branch,
            preparedAt: e.preparedAt,
            state: e.state,
            members: e.members,
            mode: e.mode
          }))
      ),
      forget: () => Effect.void
    }
  }
}

/** A member as process `from` reaches it through the network. */
const wrap = (
  world: World.World,
  from: SimNetwork.Process,
  m: Member
): ThreePhaseCommit.ThreePhaseParticipant<SimParticipant.Work> => {
  const call = <A>(
    op: "prepare" | "precommit" | "preabort" | "commit" | "rollback" | "state" | "recover",
    ctx: BranchContext | undefined,
    act: Effect.Effect<A, BranchCallError>
  ) => world.net.call(from, m.node, op, ctx, act)
  const p = m.participant
  return {
    name: p.name,
    verify: p.verify,
    prepare: (ctx, work) => call("prepare", ctx, p.prepare(ctx, work)),
    precommit: (ctx) => call("precommit", ctx, p.precommit(ctx)),
    preabort: (ctx) => call("preabort", ctx, p.preabort(ctx)),
    commit: (ctx) => call("commit", ctx, p.commit(ctx)),
    rollback: (ctx, options) => call("rollback", ctx, p.rollback(ctx, options)),
    state: (ctx) => call("state", ctx, p.state(ctx)),
    inDoubt: call("recover", undefined, p.inDoubt),
    forget: p.forget
  }
}

const simWork = (rng: Rng.Rng): SimParticipant.Work => {
  const roll = rng.next()
  return {
    vote: roll < 0.06 ? "no" : roll < 0.09 ? "readOnly" : "yes",
    millis: rng.int(0, rng.chance(0.1) ? 300 : 20)
  }
}

interface Plan {
  readonly txId: TransactionId.TransactionId
  readonly startAt: number
  readonly members: ReadonlyArray<{ readonly member: Member; readonly work: SimParticipant.Work }>
  told: Invariants.Told
}

export const run = (world: World.World, faultsOfQuorum: boolean, classicAnyway = false) =>
  Effect.gen(function* () {
    const { rng, trace, injector } = world
    const quorum = faultsOfQuorum && !classicAnyway
    const mode: ThreePhaseCommit.Mode = quorum ? "quorum" : "classic"
    const members = Array.from({ length: rng.int(3, 5) }, (_, i) => new Member(`p${i}`, world.now))
    const plans: Array<Plan> = []
    for (let i = 0, n = rng.int(1, 2); i < n; i++) {
      const txId = yield* TransactionId.make
      const size = rng.int(2, members.length)
      const chosen = [...members].sort(() => rng.next() - 0.5).slice(0, size)
      const plan: Plan = {
        txId,
        startAt: rng.int(0, 50),
        members: chosen.map((member) => ({ member, work: simWork(rng) })),
        told: "Crashed"
      }
      plans.push(plan)
      trace.add(
        "sim",
        `plan tx ${txId.slice(-6)} (${mode}) at +${plan.startAt}ms: ${plan.members.map((m) => `${m.member.name}:${m.work.vote}`).join(" ")}`
      )
    }
    const options = {
      mode,
      canCommitTimeout: Duration.millis(rng.pick([100, 400])),
      precommitTimeout: Duration.millis(rng.pick([50, 200])),
      commitTimeout: Duration.millis(rng.pick([200, 2000])),
      callTimeout: Duration.millis(rng.pick([30, 100]))
    }
    const agentTimeout = Duration.sum(
      Duration.sum(options.canCommitTimeout, options.precommitTimeout),
      Duration.millis(rng.int(50, 500))
    )
    yield* World.scheduleNodeCrashes(
      world,
      members.map((m) => m.node)
    )
    if (faultsOfQuorum && injector.roll("partition")) {
      // A partition: members (and the coordinator) split in two for a while.
      const at = rng.int(0, 400)
      const sides = new Map<string, number>([
        ["coordinator", rng.int(0, 1)],
        ...members.map((m) => [m.name, rng.int(0, 1)] as const)
      ])
      trace.add("sim", `schedule: partition at +${at}ms`)
      yield* Effect.forkDaemon(
        Effect.sleep(Duration.millis(at)).pipe(Effect.andThen(world.net.partition(sides, rng.int(100, 3000))))
      )
    }

    // Every member's agent watches its in-doubt branches and terminates them when the coordinator goes quiet.
    const agents = yield* Effect.forEach(members, (m) => {
      const process = new SimNetwork.Process(`agent-${m.name}`, trace, injector, undefined, m.name)
      const self = wrap(world, process, m)
      const peers = members.filter((q) => q !== m).map((q) => wrap(world, process, q))
      return Effect.fork(
        ThreePhaseCommit.watch(self, peers, {
          mode,
          timeout: agentTimeout,
          interval: agentTimeout,
          callTimeout: options.callTimeout
        })
      )
    })

    const crashAt = injector.roll("coordinatorCrash") ? rng.int(1, plans.length * 20) : undefined
    if (crashAt !== undefined) trace.add("sim", `schedule: coordinator dies at boundary ${crashAt}`)
    const coordinator = new SimNetwork.Process("coordinator", trace, injector, crashAt)
    const runTx = (plan: Plan) =>
      Effect.gen(function* () {
        yield* Effect.sleep(Duration.millis(plan.startAt))
        const branches = plan.members.map((m) =>
          ThreePhaseCommit.branch(wrap(world, coordinator, m.member), m.work)
        )
        const exit = yield* Effect.exit(ThreePhaseCommit.run(branches, { ...options, txId: plan.txId }))
        plan.told = Exit.isSuccess(exit) ? exit.value._tag : "Failed"
        trace.add(
          "coordinator",
          `tx ${plan.txId.slice(-6)} told ${plan.told}${Exit.isFailure(exit) ? `: ${Cause.pretty(exit.cause).split("\n")[0]}` : ""}`
        )
      })
    yield* coordinator.run(Effect.forEach(plans, runTx, { concurrency: "unbounded", discard: true }))

    // Let the agents work under the faults for a while, then heal and settle.
    yield* Effect.sleep(Duration.millis(rng.int(0, 2000)))
    yield* World.heal(
      world,
      members.map((m) => m.node)
    )
    let settled = false
    for (let pass = 1; pass <= 6 && !settled; pass++) {
      const process = new SimNetwork.Process(`recover-${pass}`, trace, injector, undefined)
      const report = yield* ThreePhaseCommit.recover(
        members.map((m) => wrap(world, process, m)),
        {
          mode,
          orphanAfter: Duration.zero,
          callTimeout: Duration.millis(200)
        }
      )
      trace.add(
        process.name,
        `committed ${report.committed.length}, aborted ${report.aborted.length}, blocked ${report.blocked.length}, unvoted ${report.unvotedRolledBack}`
      )
      yield* world.net.drained
      settled = members.every((m) =>
        [...m.entries.values()].every((e) => e.state === "committed" || e.state === "aborted")
      )
    }
    yield* Effect.forEach(agents, Fiber.interrupt, { discard: true })
    if (!settled)
      world.violations.push(
        "settled: 3PC members still in doubt after the faults healed and 6 recovery passes"
      )
    return plans
  })

export const finals = (plans: ReadonlyArray<Plan>): Array<Invariants.TransactionFinal> =>
  plans.map((plan) => ({
    txId: plan.txId,
    told: plan.told,
    decisions: [],
    branches: plan.members.map(({ member, work }) => {
      const gid = TransactionId.gid(plan.txId, member.name as TransactionId.BranchName)
      const state = member.entries.get(gid)?.state
      return {
        branch: member.name,
        writes: work.vote === "yes",
        applied: member.applied.get(gid) ?? 0,
        prepared: state === "uncertain" || state === "precommitted" || state === "preaborted"
      }
    })
  }))
