import { Clock, Effect, Option } from "effect"
import { type InDoubtBranch, OnePhaseResult, type Participant, Vote } from "@accord/core/Participant"
import * as TransactionId from "@accord/core/TransactionId"
import { describe, expect, it } from "vitest"
import * as Simulator from "../src/Simulator.js"

interface Put {
  readonly key: string
  readonly value: number
}

/**
 * A user's own participant: a tiny key-value store. `durablePrepare: false` is a bug a user could
 * write: prepared branches live in memory only and vanish when the process restarts.
 */
const makeStore = (name: string, options: { readonly durablePrepare: boolean }) =>
  Effect.gen(function* () {
    const prepared = new Map<string, { readonly put: Put; readonly at: number }>()
    const committed = new Set<string>()
    const data = new Map<string, number>()
    const participant: Participant<Put> = {
      name: name as TransactionId.BranchName,
      verify: Effect.void,
      prepare: (ctx, put) =>
        Effect.gen(function* () {
          if (prepared.has(ctx.gid) || committed.has(ctx.gid)) return Vote.No({ reason: "duplicate gid" })
          prepared.set(ctx.gid, { put, at: yield* Clock.currentTimeMillis })
          return Vote.Prepared()
        }),
      commitOnePhase: (ctx, put) =>
        Effect.sync(() => {
          if (committed.has(ctx.gid)) return OnePhaseResult.No({ reason: "duplicate gid" })
          data.set(put.key, put.value)
          committed.add(ctx.gid)
          return OnePhaseResult.Committed()
        }),
      commit: (ctx) =>
        Effect.sync(() => {
          const entry = prepared.get(ctx.gid)
          if (entry !== undefined) {
            prepared.delete(ctx.gid)
            data.set(entry.put.key, entry.put.value)
            committed.add(ctx.gid)
            return "Committed" as const
          }
          return committed.has(ctx.gid) ? ("Committed" as const) : ("HeuristicRollback" as const)
        }),
      rollback: (ctx) =>
        Effect.sync(() => {
          if (prepared.delete(ctx.gid)) return "RolledBack" as const
          return committed.has(ctx.gid) ? ("HeuristicCommit" as const) : ("RolledBack" as const)
        }),
      state: (ctx) =>
        Effect.sync(() =>
          prepared.has(ctx.gid) ? "prepared" : committed.has(ctx.gid) ? "committed" : "aborted"
        ),
      inDoubt: Effect.sync(() =>
        [...prepared.entries()].flatMap(
          ([gid, { at }]): Array<InDoubtBranch> =>
            Option.match(TransactionId.parseGid(gid), {
              onNone: () => [],
              onSome: (p) => [{ gid: p.gid, txId: p.txId, branch: p.branch, preparedAt: at }]
            })
        )
      ),
      forget: () => Effect.void
    }
    const plugged: Simulator.Plugged<Put> = {
      participant,
      work: (rng) => ({ work: { key: `k${rng.int(0, 9)}`, value: rng.int(0, 100) }, writes: true }),
      onCrash: Effect.sync(() => {
        if (!options.durablePrepare) prepared.clear()
      })
    }
    return plugged
  })

const stores = (durablePrepare: boolean) =>
  Effect.all([
    makeStore("alpha", { durablePrepare }),
    makeStore("beta", { durablePrepare }),
    makeStore("gamma", { durablePrepare })
  ])

describe("plugging your own participant", () => {
  it("a correct participant passes the 2PC simulation", { timeout: 300_000 }, async () => {
    const summary = await Simulator.runMany({ protocol: "2pc", seeds: 400, participants: stores(true) })
    expect(summary.failingSeeds).toEqual([])
    expect(summary.faultsInjected).toBeGreaterThan(0)
  })

  it(
    "a participant that keeps prepared branches in memory only is caught",
    { timeout: 300_000 },
    async () => {
      const summary = await Simulator.runMany({
        protocol: "2pc",
        seeds: 2000,
        participants: stores(false),
        stopAfterFailures: 3
      })
      expect(summary.failingSeeds.length).toBeGreaterThan(0)
      const failing = await Simulator.run({
        protocol: "2pc",
        seed: summary.failingSeeds[0]!,
        participants: stores(false)
      })
      expect(failing.ok).toBe(false)
      expect(Simulator.format(failing)).toContain("VIOLATION")
    }
  )
})
