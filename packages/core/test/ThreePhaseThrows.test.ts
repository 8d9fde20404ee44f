/**
 * A 3PC participant method that throws when called, instead of returning an Effect (a bug in the
 * participant), is handled exactly like an `Effect.die` of that call: a failed call, in doubt. The
 * calls used to be made outside the defect guards, so the throw escaped them: a commit that threw
 * rejected the whole run with the other member committed, a prepare or precommit that threw ended
 * the run with the other members left prepared or precommitted, and the termination protocol,
 * agents, `recover` and `watch` died on a throwing `state`, `rollback` or `inDoubt`.
 */
import { describe, expect, it } from "@effect/vitest"
import { Duration, Effect, Exit, Fiber, Option, Schedule, TestClock } from "effect"
import * as ThreePhaseCommit from "../src/ThreePhaseCommit.js"
import { ThreePhaseCoordinator } from "../src/ThreePhaseCoordinator.js"
import * as TransactionId from "../src/TransactionId.js"
import * as ThreePhaseMemory from "./support/ThreePhaseMemory.js"

type P3 = ThreePhaseCommit.AnyThreePhaseParticipant
type Method = "prepare" | "precommit" | "preabort" | "commit" | "rollback" | "state"

/** `p` whose `method` throws synchronously every time it is called. */
const throwing = (p: P3, method: Method): P3 => ({
  ...p,
  [method]: () => {
    throw new Error(`sync ${method} bug`)
  }
})

/** `p` whose `inDoubt` getter throws. */
const throwingScan = (p: P3): P3 =>
  Object.defineProperty({ ...p }, "inDoubt", {
    get: () => {
      throw new Error("sync inDoubt bug")
    }
  })

const pair = Effect.all([ThreePhaseMemory.make("bank-a"), ThreePhaseMemory.make("bank-b")])

/** No backoff: the commit retries run at once under the test clock. */
const noWait = { commitSchedule: Schedule.recurs(2) }

/** A transaction of `members` whose coordinator died after they all voted yes and after precommitting `precommitted`. */
const diedAfterVotes = (
  members: ReadonlyArray<ThreePhaseMemory.Memory>,
  precommitted: ReadonlyArray<number>
) =>
  Effect.gen(function* () {
    const txId = yield* TransactionId.make
    const names = members.map((m) => m.participant.name)
    const ctx = (name: TransactionId.BranchName) => ({
      txId,
      branch: name,
      gid: TransactionId.gid(txId, name),
      members: names
    })
    for (const m of members) yield* m.participant.prepare(ctx(m.participant.name), null)
    for (const i of precommitted) yield* members[i]!.participant.precommit(ctx(names[i]!))
    return txId
  })

describe("3PC run: a participant call that throws is a failed call", () => {
  it.effect("a commit that throws leaves its member pending: CommitPending, the other committed", () =>
    Effect.gen(function* () {
      const [a, b] = yield* pair
      const exit = yield* Effect.exit(
        ThreePhaseCommit.run(
          [
            ThreePhaseCommit.branch(throwing(a!.participant, "commit"), null),
            ThreePhaseCommit.branch(b!.participant, null)
          ],
          noWait
        )
      )
      expect(Exit.isSuccess(exit)).toBe(true)
      if (Exit.isFailure(exit)) return
      const outcome = exit.value
      expect(outcome._tag).toBe("CommitPending")
      if (outcome._tag === "CommitPending") expect(outcome.pending).toEqual(["bank-a"])
      // As after an Effect.die: bank-a stays precommitted for its agent or `recover`.
      expect(yield* Effect.forEach([a!, b!], (m) => m.stateOf(outcome.txId))).toEqual([
        "precommitted",
        "committed"
      ])
    })
  )

  it.effect(
    "a prepare that throws is a No vote: the transaction aborts and the other member is rolled back",
    () =>
      Effect.gen(function* () {
        const [a, b] = yield* pair
        const exit = yield* Effect.exit(
          ThreePhaseCommit.run([
            ThreePhaseCommit.branch(throwing(a!.participant, "prepare"), null),
            ThreePhaseCommit.branch(b!.participant, null)
          ])
        )
        expect(Exit.isSuccess(exit)).toBe(true)
        if (Exit.isFailure(exit)) return
        const outcome = exit.value
        expect(outcome._tag).toBe("Aborted")
        if (outcome._tag === "Aborted") expect(outcome.reason).toContain("sync prepare bug")
        expect(yield* b!.stateOf(outcome.txId)).toBe("aborted")
      })
  )

  it.effect(
    "a precommit that throws counts as not acknowledged: the termination protocol finishes both",
    () =>
      Effect.gen(function* () {
        const [a, b] = yield* pair
        const exit = yield* Effect.exit(
          ThreePhaseCommit.run(
            [
              ThreePhaseCommit.branch(throwing(a!.participant, "precommit"), null),
              ThreePhaseCommit.branch(b!.participant, null)
            ],
            noWait
          )
        )
        expect(Exit.isSuccess(exit)).toBe(true)
        if (Exit.isFailure(exit)) return
        const outcome = exit.value
        // bank-b is precommitted and bank-a voted yes: commit, nobody left precommitted.
        expect(outcome._tag).toBe("Committed")
        expect(yield* Effect.forEach([a!, b!], (m) => m.stateOf(outcome.txId))).toEqual([
          "committed",
          "committed"
        ])
      })
  )

  it.effect(
    "a rollback that throws after a No vote leaves that member to recovery: the others are rolled back",
    () =>
      Effect.gen(function* () {
        const [a, b, c] = yield* Effect.all([
          ThreePhaseMemory.make("bank-a"),
          ThreePhaseMemory.make("bank-b", { vote: "no" }),
          ThreePhaseMemory.make("bank-c")
        ])
        const exit = yield* Effect.exit(
          ThreePhaseCommit.run([
            ThreePhaseCommit.branch(throwing(a!.participant, "rollback"), null),
            ThreePhaseCommit.branch(b!.participant, null),
            ThreePhaseCommit.branch(c!.participant, null)
          ])
        )
        expect(Exit.isSuccess(exit)).toBe(true)
        if (Exit.isFailure(exit)) return
        const outcome = exit.value
        expect(outcome._tag).toBe("Aborted")
        expect(yield* Effect.forEach([a!, c!], (m) => m.stateOf(outcome.txId))).toEqual([
          "uncertain",
          "aborted"
        ])
      })
  )
})

describe("3PC termination, agents and recovery: a participant call that throws is a failed call", () => {
  it.effect("terminate counts a member whose state call throws as unreachable, and still commits it", () =>
    Effect.gen(function* () {
      const [a, b] = yield* pair
      const txId = yield* diedAfterVotes([a!, b!], [0])
      const t = yield* ThreePhaseCommit.terminate(txId, [a!.participant, throwing(b!.participant, "state")], {
        retrySchedule: Schedule.recurs(1)
      })
      expect(t._tag).toBe("Committed")
      expect(t.observed).toEqual([
        { branch: "bank-a", state: "precommitted" },
        { branch: "bank-b", state: "unreachable" }
      ])
      expect(yield* Effect.forEach([a!, b!], (m) => m.stateOf(txId))).toEqual(["committed", "committed"])
    })
  )

  it.effect("terminate leaves a member whose commit throws pending and commits the others", () =>
    Effect.gen(function* () {
      const [a, b] = yield* pair
      const txId = yield* diedAfterVotes([a!, b!], [0, 1])
      const t = yield* ThreePhaseCommit.terminate(
        txId,
        [a!.participant, throwing(b!.participant, "commit")],
        {
          retrySchedule: Schedule.recurs(1)
        }
      )
      expect(t._tag).toBe("Committed")
      if (t._tag === "Committed") expect(t.pending).toEqual(["bank-b"])
      expect(yield* a!.stateOf(txId)).toBe("committed")
    })
  )

  it.effect("terminate does not abort over a member whose rollback throws: it is left pending", () =>
    Effect.gen(function* () {
      const [a, b] = yield* pair
      const txId = yield* diedAfterVotes([a!, b!], [])
      const t = yield* ThreePhaseCommit.terminate(
        txId,
        [a!.participant, throwing(b!.participant, "rollback")],
        {
          retrySchedule: Schedule.recurs(1)
        }
      )
      expect(t._tag).toBe("Aborted")
      if (t._tag === "Aborted") expect(t.pending).toEqual(["bank-b"])
      expect(yield* Effect.forEach([a!, b!], (m) => m.stateOf(txId))).toEqual(["aborted", "uncertain"])
    })
  )

  it.effect("quorum terminate counts a member whose preabort throws as not preaborted", () =>
    Effect.gen(function* () {
      const [a, b, c] = yield* Effect.all([
        ThreePhaseMemory.make("bank-a"),
        ThreePhaseMemory.make("bank-b"),
        ThreePhaseMemory.make("bank-c")
      ])
      const txId = yield* diedAfterVotes([a!, b!, c!], [])
      // Va = 2 of 3: bank-a and bank-c preabort, bank-b's preabort throws.
      const t = yield* ThreePhaseCommit.terminate(
        txId,
        [a!.participant, throwing(b!.participant, "preabort"), c!.participant],
        { mode: "quorum" }
      )
      expect(t._tag).toBe("Aborted")
      expect(yield* Effect.forEach([a!, b!, c!], (m) => m.stateOf(txId))).toEqual([
        "aborted",
        "aborted",
        "aborted"
      ])
    })
  )

  it.effect("an agent whose own state call throws keeps waiting and finishes its member from its peers", () =>
    Effect.gen(function* () {
      const [a, b] = yield* pair
      const txId = yield* diedAfterVotes([a!, b!], [0])
      const fiber = yield* Effect.fork(
        ThreePhaseCommit.agent(txId, throwing(b!.participant, "state"), [a!.participant], {
          timeout: Duration.seconds(20)
        })
      )
      yield* TestClock.adjust(Duration.seconds(20))
      const t = yield* Fiber.join(fiber)
      expect(t._tag).toBe("Committed")
      expect(yield* Effect.forEach([a!, b!], (m) => m.stateOf(txId))).toEqual(["committed", "committed"])
    })
  )

  it.effect("recover reports a participant whose inDoubt throws as unscanned and recovers the others", () =>
    Effect.gen(function* () {
      const [a, b] = yield* pair
      const txId = yield* diedAfterVotes([a!, b!], [0])
      const report = yield* ThreePhaseCommit.recover([a!.participant, throwingScan(b!.participant)], {
        orphanAfter: 0
      })
      expect(report.unscanned).toEqual(["bank-b"])
      expect(report.committed).toEqual([txId])
      expect(yield* Effect.forEach([a!, b!], (m) => m.stateOf(txId))).toEqual(["committed", "committed"])
    })
  )

  it.effect(
    "recover survives an unvoted branch whose rollback throws: it is not counted as rolled back",
    () =>
      Effect.gen(function* () {
        const [a] = yield* Effect.all([ThreePhaseMemory.make("bank-a")])
        const txId = yield* TransactionId.make
        const gid = TransactionId.gid(txId, a!.participant.name)
        // A prepared branch that never recorded a yes vote.
        const unvoted: P3 = {
          ...throwing(a!.participant, "rollback"),
          inDoubt: Effect.succeed([
            { txId, branch: a!.participant.name, gid, preparedAt: 0, state: "initial", members: undefined }
          ])
        }
        const report = yield* ThreePhaseCommit.recover([unvoted], { orphanAfter: 0 })
        expect(report.unvotedRolledBack).toBe(0)
        expect(report.unscanned).toEqual([])
      })
  )

  it.effect("watch keeps running beside a participant whose inDoubt throws", () =>
    Effect.gen(function* () {
      const [a, b] = yield* pair
      const fiber = yield* Effect.fork(
        ThreePhaseCommit.watch(throwingScan(b!.participant), [a!.participant], {
          interval: Duration.seconds(1)
        })
      )
      yield* TestClock.adjust(Duration.seconds(3))
      expect(Option.isNone(yield* Fiber.poll(fiber))).toBe(true)
      yield* Fiber.interrupt(fiber)
    })
  )
})

describe("ThreePhaseCoordinator: a participant method that throws", () => {
  it("a commit that throws resolves commit-pending instead of rejecting with the raw error", async () => {
    const [a, b] = await Effect.runPromise(pair)
    const broken = throwing(a!.participant, "commit")
    const coordinator = new ThreePhaseCoordinator({ timeout: 300 })
    try {
      await coordinator.registerParticipant(broken)
      await coordinator.registerParticipant(b!.participant)
      const result = await coordinator.executeTransaction([
        [broken, "debit"],
        [b!.participant, "credit"]
      ])
      expect(result.status).toBe("commit-pending")
      expect(result.committed).toBe(true)
      expect(result.pending).toEqual(["bank-a"])
    } finally {
      await coordinator.dispose()
    }
  })

  it("a prepare that throws resolves aborted, with the other member rolled back", async () => {
    const [a, b] = await Effect.runPromise(pair)
    const broken = throwing(a!.participant, "prepare")
    const coordinator = new ThreePhaseCoordinator({ timeout: 300 })
    try {
      await coordinator.registerParticipant(broken)
      await coordinator.registerParticipant(b!.participant)
      const result = await coordinator.executeTransaction([
        [broken, "debit"],
        [b!.participant, "credit"]
      ])
      expect(result.status).toBe("aborted")
      expect(await Effect.runPromise(b!.stateOf(result.txId))).toBe("aborted")
    } finally {
      await coordinator.dispose()
    }
  })
})

// Already contained before the fix (Effect makes a non-Effect a defect where it is run, inside the
// guard): pinned here beside the throws, its Promise-facade analogue.
describe("3PC run: a participant method that returns something other than an Effect", () => {
  it.effect("a commit that returns a plain value is a failed call: CommitPending, the other committed", () =>
    Effect.gen(function* () {
      const [a, b] = yield* pair
      const plain: P3 = {
        ...a!.participant,
        commit: () => "Committed" as unknown as Effect.Effect<"Committed">
      }
      const exit = yield* Effect.exit(
        ThreePhaseCommit.run(
          [ThreePhaseCommit.branch(plain, null), ThreePhaseCommit.branch(b!.participant, null)],
          noWait
        )
      )
      expect(Exit.isSuccess(exit)).toBe(true)
      if (Exit.isFailure(exit)) return
      expect(exit.value._tag).toBe("CommitPending")
      expect(yield* b!.stateOf(exit.value.txId)).toBe("committed")
    })
  )
})
