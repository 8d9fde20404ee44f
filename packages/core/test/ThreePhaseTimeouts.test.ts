import { describe, expect, it } from "@effect/vitest"
import { Duration, Effect, Either, Fiber, TestClock } from "effect"
import * as ThreePhaseCommit from "../src/ThreePhaseCommit.js"
import * as TransactionId from "../src/TransactionId.js"
import * as Network from "./support/Network.js"
import * as ThreePhaseMemory from "./support/ThreePhaseMemory.js"

type P3 = ThreePhaseCommit.AnyThreePhaseParticipant

/** A copy of `p` whose `method` takes `delay` before it reaches the member (a slow link). */
const slow = (p: P3, method: "precommit" | "rollback", delay: Duration.DurationInput): P3 => ({
  ...p,
  [method]: (...args: Parameters<P3[typeof method]>) =>
    Effect.sleep(delay).pipe(
      Effect.zipRight((p[method] as (...a: typeof args) => Effect.Effect<unknown>)(...args))
    )
})

const statesOf = (members: ReadonlyArray<ThreePhaseMemory.Memory>, txId: string) =>
  Effect.forEach(members, (m) => m.stateOf(txId))

describe("ThreePhaseCommit timeouts: agents must outwait the coordinator (classic mode)", () => {
  it.effect(
    "an agent whose timeout is shorter than the coordinator's phases takes a slow, live coordinator for dead: it aborts, and the precommit that lands late is rolled back",
    () =>
      Effect.gen(function* () {
        const [a, b, c] = yield* Effect.all([
          ThreePhaseMemory.make("bank-a"),
          ThreePhaseMemory.make("bank-b"),
          ThreePhaseMemory.make("bank-c")
        ])
        const txId = yield* TransactionId.make
        // The coordinator is alive but its PreCommit messages take 21 s, within its precommitTimeout
        // of 25 s. It declares agents of 45 s, which bank-a's agent below does not honour (20 s).
        const coordinator = yield* ThreePhaseCommit.run(
          [a, b, c].map((m) => ThreePhaseCommit.branch(slow(m.participant, "precommit", "21 seconds"), null)),
          { txId, precommitTimeout: Duration.seconds(25), agentTimeout: Duration.seconds(45) }
        ).pipe(Effect.fork)
        yield* TestClock.adjust(0)
        expect(yield* statesOf([a, b, c], txId)).toEqual(["uncertain", "uncertain", "uncertain"])
        // bank-a's agent reaches bank-c over a slow link (2 s).
        const agentA = yield* ThreePhaseCommit.agent(
          txId,
          a.participant,
          [b.participant, slow(c.participant, "rollback", "2 seconds")],
          { timeout: Duration.seconds(20) }
        ).pipe(Effect.fork)
        // At 20 s the agent sees three uncertain members and aborts; at 21 s the coordinator's
        // precommit of bank-c lands before the agent's rollback does, which c refuses.
        yield* TestClock.adjust(Duration.seconds(60))
        const outcome = yield* Fiber.join(coordinator)
        // The coordinator cannot commit (a and b are aborted). Until 2026-12-06 no classic rule could
        // end it: c stayed precommitted (prepared, holding its locks), the outcome Blocked, and once
        // a and b crashed c's agent, seeing only c, committed it: a split. An aborted member is a
        // classic abort quorum (Va = 1), so c is rolled back over its precommit.
        expect(outcome._tag).toBe("Aborted")
        expect(yield* statesOf([a, b, c], txId)).toEqual(["aborted", "aborted", "aborted"])
        yield* Fiber.interrupt(agentA)
        // a and b crash; c's agent sees only itself, aborted: nothing to split any more.
        yield* a.crash
        yield* b.crash
        const agentC = yield* ThreePhaseCommit.agent(txId, c.participant, [a.participant, b.participant], {
          timeout: Duration.seconds(45)
        }).pipe(Effect.fork)
        yield* TestClock.adjust(Duration.seconds(46))
        expect((yield* Fiber.join(agentC))._tag).toBe("Aborted")
        expect(yield* statesOf([a, b, c], txId)).toEqual(["aborted", "aborted", "aborted"])
      })
  )

  it.effect(
    "run refuses, before sending anything, classic phases that the agents' timeout does not outlast",
    () =>
      Effect.gen(function* () {
        const [a, b] = yield* Effect.all([ThreePhaseMemory.make("bank-a"), ThreePhaseMemory.make("bank-b")])
        const branches = [
          ThreePhaseCommit.branch(a.participant, 1),
          ThreePhaseCommit.branch(b.participant, 2)
        ]
        // Default agents wait 20 s; 10 s + 25 s of coordinator phases need at least 43.75 s.
        const refused = yield* ThreePhaseCommit.run(branches, {
          precommitTimeout: Duration.seconds(25)
        }).pipe(Effect.either)
        expect(Either.isLeft(refused)).toBe(true)
        if (Either.isRight(refused)) return
        expect(refused.left).toMatchObject({
          _tag: "UnsafeTimeoutError",
          agentTimeoutMillis: 20_000,
          minimumMillis: 43_750
        })
        expect(refused.left.message).toContain("agentTimeout")
        expect(yield* a.calls).toEqual([])
        expect(yield* b.calls).toEqual([])
        // An explicit agent timeout above the bound is accepted.
        const outcome = yield* ThreePhaseCommit.run(branches, {
          precommitTimeout: Duration.seconds(25),
          agentTimeout: Duration.seconds(45)
        })
        expect(outcome._tag).toBe("Committed")
      })
  )

  it.effect("the bound is 1.25 × (canCommitTimeout + precommitTimeout); the defaults fit it", () =>
    Effect.gen(function* () {
      expect(Duration.toMillis(ThreePhaseCommit.minimumAgentTimeout())).toBe(18_750)
      expect(
        Duration.lessThanOrEqualTo(
          ThreePhaseCommit.minimumAgentTimeout(),
          ThreePhaseCommit.defaults.agentTimeout
        )
      ).toBe(true)
      const check = (canCommit: number, precommit: number, agent: number) =>
        ThreePhaseCommit.checkAgentTimeout({
          canCommitTimeout: Duration.seconds(canCommit),
          precommitTimeout: Duration.seconds(precommit),
          agentTimeout: Duration.seconds(agent)
        })
      expect(Either.isRight(check(10, 6, 20))).toBe(true) // exactly 20 s
      expect(Either.isLeft(check(10, 7, 20))).toBe(true)
      // Quorum mode is safe under wrong timeouts (a too eager agent only costs liveness): no check.
      expect(
        Either.isRight(
          ThreePhaseCommit.checkAgentTimeout({
            mode: "quorum",
            canCommitTimeout: Duration.seconds(60),
            agentTimeout: Duration.seconds(1)
          })
        )
      ).toBe(true)
    })
  )
})

/**
 * Five members m0..m4 of a quorum transaction (V = 5, Vc = 3, Va = 3), each asked to vote with the mode
 * recorded, and m0 then asked to precommit: a coordinator that precommitted m0 only, then died. The
 * answers are returned for the test to check.
 */
const quorumPrecommittedAtM0 = Effect.gen(function* () {
  const ms = yield* Effect.forEach([0, 1, 2, 3, 4], (i) => ThreePhaseMemory.make(`m${i}`))
  const ps = ms.map((m) => m.participant)
  const txId = yield* TransactionId.make
  const p = ThreePhaseCommit.plan(txId, ps, { mode: "quorum" })
  if (Either.isLeft(p)) return yield* Effect.die(p.left)
  const votes = yield* Effect.forEach(ps, (q, i) => q.prepare(p.right.members[i]!.ctx, null))
  const precommit = yield* ps[0]!.precommit(p.right.members[0]!.ctx)
  return { ms, ps, txId, votes, precommit }
})

describe("ThreePhaseCommit.agent terminates under the mode recorded with the vote", () => {
  it.effect(
    "an agent started in classic mode on a quorum transaction follows the recorded quorum: no split under a partition",
    () =>
      Effect.gen(function* () {
        // A quorum transaction (V = 5, Vc = 3, Va = 3): every member voted yes with the mode recorded;
        // the coordinator precommitted m0 only, then died.
        const { ms, ps, txId, votes, precommit } = yield* quorumPrecommittedAtM0
        expect(votes.map((v) => v._tag)).toEqual(["Prepared", "Prepared", "Prepared", "Prepared", "Prepared"])
        expect(precommit).toBe("precommitted")
        const net = yield* Network.make
        yield* net.split(["m0", "m1"], ["m2", "m3", "m4"])
        // m1's agent was started with the default (classic) options; the others with quorum.
        const agents = yield* Effect.forEach(ps, (q, i) =>
          ThreePhaseCommit.agent(txId, q, ps, {
            timeout: Duration.seconds(20),
            reachable: net.reachable,
            ...(i === 1 ? {} : { mode: "quorum" as const })
          }).pipe(Effect.fork)
        )
        yield* TestClock.adjust(Duration.seconds(20))
        // {m2, m3, m4} hold the abort quorum and abort. Under classic rules m1 would commit m0 and
        // itself (a precommitted member, every reachable one precommitted): a split.
        const during = yield* statesOf(ms, txId)
        expect(during.slice(2)).toEqual(["aborted", "aborted", "aborted"])
        expect(during.includes("committed")).toBe(false)
        expect(agents[1]!.unsafePoll()).toBeNull()
        yield* net.heal
        for (let r = 0; r < 5 && agents.some((f) => f.unsafePoll() === null); r++) {
          yield* TestClock.adjust(Duration.seconds(20))
        }
        const decisions = yield* Effect.forEach(agents, Fiber.join)
        expect(new Set(decisions.map((d) => d._tag))).toEqual(new Set(["Aborted"]))
        expect(yield* statesOf(ms, txId)).toEqual(["aborted", "aborted", "aborted", "aborted", "aborted"])
      })
  )

  it.effect("an agent given only some peers still counts every recorded member", () =>
    Effect.gen(function* () {
      const { ms, ps, txId } = yield* quorumPrecommittedAtM0
      // m1's agent only knows m0: two members, so Vc = 2 by its own count. The transaction has five
      // (Vc = 3): one precommitted and one uncertain member make no commit quorum.
      const agent = yield* ThreePhaseCommit.agent(txId, ps[1]!, [ps[0]!], {
        timeout: Duration.seconds(20),
        mode: "quorum"
      }).pipe(Effect.fork)
      yield* TestClock.adjust(Duration.seconds(20))
      expect(agent.unsafePoll()).toBeNull()
      expect(yield* statesOf(ms, txId)).toEqual([
        "precommitted",
        "uncertain",
        "uncertain",
        "uncertain",
        "uncertain"
      ])
      // The other three hold the abort quorum; had m1 committed by its own count, this would split.
      const others = yield* ThreePhaseCommit.terminate(txId, ps.slice(2), {
        members: ps.map((q) => q.name),
        mode: "quorum"
      })
      expect(others._tag).toBe("Aborted")
      const final = yield* statesOf(ms, txId)
      expect(final.includes("committed") && final.includes("aborted")).toBe(false)
      yield* Fiber.interrupt(agent)
    })
  )
})
