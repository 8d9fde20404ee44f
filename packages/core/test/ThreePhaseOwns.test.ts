/**
 * 3PC deployments that share databases under the same participant names, told apart by their gid
 * namespace (`ThreePhaseParticipant.owns`): recovery, termination and agents leave the other
 * deployment's branches alone, and a transaction in a namespace its participants do not own is
 * refused before anything is sent.
 */
import { describe, expect, it } from "@effect/vitest"
import { Duration, Effect, Either, Fiber, TestClock } from "effect"
import { Vote } from "../src/Participant.js"
import * as ThreePhaseCommit from "../src/ThreePhaseCommit.js"
import * as TransactionId from "../src/TransactionId.js"
import * as ThreePhaseMemory from "./support/ThreePhaseMemory.js"

type P3 = ThreePhaseCommit.AnyThreePhaseParticipant

/** `p` owning only the gids of `namespace` (none: gids built without one) under its own name. */
const ownedBy = (p: P3, namespace?: string): P3 => ({
  ...p,
  owns: (gid) => {
    const parsed = TransactionId.parseGid(gid)
    return parsed._tag === "Some" && parsed.value.branch === p.name && parsed.value.namespace === namespace
  }
})

/**
 * Deployment "y" prepared a transaction over `members` (the same databases and participant names
 * as deployment "x") and voted yes everywhere; its coordinator died before PreCommit.
 */
const preparedByY = (members: ReadonlyArray<ThreePhaseMemory.Memory>) =>
  Effect.gen(function* () {
    const txId = yield* TransactionId.make
    const names = members.map((m) => m.participant.name)
    for (const m of members) {
      const ctx = {
        txId,
        branch: m.participant.name,
        gid: TransactionId.gid(txId, m.participant.name, "y"),
        members: names
      }
      expect(yield* m.participant.prepare(ctx, "work of y")).toEqual(Vote.Prepared())
    }
    return txId
  })

const pair = Effect.all([ThreePhaseMemory.make("bank-a"), ThreePhaseMemory.make("bank-b")])

/** Every call made on `members` after their prepare. */
const callsAfterPrepare = (members: ReadonlyArray<ThreePhaseMemory.Memory>) =>
  Effect.map(
    Effect.forEach(members, (m) => m.calls),
    (calls) => calls.flat().filter((c) => !c.startsWith("prepare:"))
  )

describe("ThreePhaseCommit.recover with participants that know their namespace", () => {
  it.effect("leaves another deployment's branch under the same participant names alone", () =>
    Effect.gen(function* () {
      const [a, b] = yield* pair
      const txId = yield* preparedByY([a, b])
      // Deployment x's recovery, over its own bank-a and bank-b, namespace omitted.
      const report = yield* ThreePhaseCommit.recover(
        [ownedBy(a.participant, "x"), ownedBy(b.participant, "x")],
        {
          orphanAfter: 0
        }
      )
      // Before: every member uncertain, so x's recovery aborted y's transaction under y's feet.
      expect(report.aborted).toEqual([])
      expect(report.committed).toEqual([])
      expect(report.blocked.map((t) => t.txId)).toEqual([txId, txId])
      expect(report.blocked[0]!.reason).toMatch(/bank-a does not own gid accord-y_/)
      expect(yield* callsAfterPrepare([a, b])).toEqual([])
      expect([yield* a.stateOf(txId, "y"), yield* b.stateOf(txId, "y")]).toEqual(["uncertain", "uncertain"])
      // y's own recovery finishes it.
      const own = yield* ThreePhaseCommit.recover(
        [ownedBy(a.participant, "y"), ownedBy(b.participant, "y")],
        {
          orphanAfter: 0
        }
      )
      expect(own.aborted).toEqual([txId])
    })
  )

  it.effect("leaves an unvoted branch of another participant sharing its database alone", () =>
    Effect.gen(function* () {
      const a = yield* ThreePhaseMemory.make("bank-a")
      // bank-c shares bank-a's database (its prepared 2PC branch, no 3PC vote) and is not
      // registered with this recovery: bank-a's scan sees its gid too.
      const other = yield* TransactionId.make
      const sharing: P3 = {
        ...ownedBy(a.participant),
        inDoubt: Effect.map(a.participant.inDoubt, (found) => [
          ...found,
          {
            gid: TransactionId.gid(other, "bank-c" as TransactionId.BranchName),
            txId: other,
            branch: "bank-c" as TransactionId.BranchName,
            preparedAt: 0,
            state: "initial" as const,
            members: undefined
          }
        ])
      }
      const report = yield* ThreePhaseCommit.recover([sharing], { orphanAfter: 0 })
      // Before: bank-a rolled back bank-c's gid as an unvoted 3PC branch of its own.
      expect(report.unvotedRolledBack).toBe(0)
      expect(yield* a.calls).toEqual([])
      expect(report.blocked).toEqual([
        {
          txId: other,
          reason: `bank-a does not own gid ${TransactionId.gid(other, "bank-c" as TransactionId.BranchName)}: left to the deployment that does`
        }
      ])
    })
  )

  it.effect("reports nothing for a gid that another participant of the same pass owns", () =>
    Effect.gen(function* () {
      // bank-a and bank-b share one database: each scan sees both branches of the transaction.
      const [a, b] = yield* pair
      const txId = yield* TransactionId.make
      const names = [a.participant.name, b.participant.name]
      for (const m of [a, b]) {
        yield* m.participant.prepare(
          {
            txId,
            branch: m.participant.name,
            gid: TransactionId.gid(txId, m.participant.name),
            members: names
          },
          "w"
        )
      }
      const both = Effect.map(Effect.all([a.participant.inDoubt, b.participant.inDoubt]), ([x, y]) => [
        ...x,
        ...y
      ])
      const report = yield* ThreePhaseCommit.recover(
        [
          { ...ownedBy(a.participant), inDoubt: both },
          { ...ownedBy(b.participant), inDoubt: both }
        ],
        { orphanAfter: 0 }
      )
      expect(report.aborted).toEqual([txId])
      expect(report.blocked).toEqual([])
    })
  )
})

describe("ThreePhaseCommit.run and plan with participants that know their namespace", () => {
  it.effect("refuses a transaction in a namespace its participants do not own, before anything is sent", () =>
    Effect.gen(function* () {
      const [a, b] = yield* pair
      const branches = [
        ThreePhaseCommit.branch(ownedBy(a.participant, "x"), "debit"),
        ThreePhaseCommit.branch(ownedBy(b.participant, "x"), "credit")
      ]
      const refused = yield* Effect.either(ThreePhaseCommit.run(branches, { namespace: "y" }))
      // Before: committed in namespace y, where x's recovery never looks for its branches.
      expect(Either.isLeft(refused) && refused.left._tag).toBe("InvalidTransactionError")
      expect(Either.isLeft(refused) && refused.left.message).toMatch(
        /participant bank-a does not own gid accord-y_.*: give the transaction the participant's namespace \(y was given\)/
      )
      expect([...(yield* a.calls), ...(yield* b.calls)]).toEqual([])
      // Its own namespace runs.
      expect((yield* ThreePhaseCommit.run(branches, { namespace: "x" }))._tag).toBe("Committed")
    })
  )

  it("plan refuses a participant without a namespace a namespaced transaction, and the other way round", () => {
    const named = { name: "bank-a" } as unknown as P3
    const txId = "01JF0000000000000000000000"
    expect(Either.isLeft(ThreePhaseCommit.plan(txId, [ownedBy(named)], { namespace: "x" }))).toBe(true)
    expect(Either.isLeft(ThreePhaseCommit.plan(txId, [ownedBy(named, "x")]))).toBe(true)
    expect(Either.isRight(ThreePhaseCommit.plan(txId, [ownedBy(named, "x")], { namespace: "x" }))).toBe(true)
    // A participant that cannot tell (no `owns`) takes any namespace, as before.
    expect(Either.isRight(ThreePhaseCommit.plan(txId, [named], { namespace: "x" }))).toBe(true)
  })
})

describe("ThreePhaseCommit termination and agents with participants that know their namespace", () => {
  it.effect("terminate refuses another deployment's namespace and sends nothing", () =>
    Effect.gen(function* () {
      const [a, b] = yield* pair
      const txId = yield* preparedByY([a, b])
      const refused = yield* Effect.either(
        ThreePhaseCommit.terminate(txId, [ownedBy(a.participant, "x"), ownedBy(b.participant, "x")], {
          namespace: "y"
        })
      )
      // Before: every member uncertain and reached: aborted y's transaction.
      expect(Either.isLeft(refused) && refused.left._tag).toBe("InvalidTransactionError")
      expect(yield* callsAfterPrepare([a, b])).toEqual([])
      expect([yield* a.stateOf(txId, "y"), yield* b.stateOf(txId, "y")]).toEqual(["uncertain", "uncertain"])
    })
  )

  it.effect("an agent refuses another deployment's namespace and sends nothing", () =>
    Effect.gen(function* () {
      const [a, b] = yield* pair
      const txId = yield* preparedByY([a, b])
      const fiber = yield* ThreePhaseCommit.agent(
        txId,
        ownedBy(a.participant, "x"),
        [ownedBy(b.participant, "x")],
        {
          namespace: "y",
          timeout: Duration.seconds(20)
        }
      ).pipe(Effect.either, Effect.fork)
      yield* TestClock.adjust(Duration.seconds(60))
      const result = yield* Fiber.join(fiber)
      // Before: after 20 s without news it terminated y's transaction (aborted every member).
      expect(Either.isLeft(result) && result.left._tag).toBe("InvalidTransactionError")
      expect(yield* callsAfterPrepare([a, b])).toEqual([])
      expect([yield* a.stateOf(txId, "y"), yield* b.stateOf(txId, "y")]).toEqual(["uncertain", "uncertain"])
    })
  )

  it.effect("watch runs no agent for a branch its participant does not own", () =>
    Effect.gen(function* () {
      const [a, b] = yield* pair
      const txId = yield* preparedByY([a, b])
      const fiber = yield* ThreePhaseCommit.watch(
        ownedBy(a.participant, "x"),
        [ownedBy(b.participant, "x")],
        {
          timeout: Duration.seconds(20)
        }
      ).pipe(Effect.fork)
      yield* TestClock.adjust(Duration.seconds(120))
      yield* Fiber.interrupt(fiber)
      // Before: its agent for y's gid terminated y's transaction (every member uncertain: aborted).
      expect(yield* callsAfterPrepare([a, b])).toEqual([])
      expect([yield* a.stateOf(txId, "y"), yield* b.stateOf(txId, "y")]).toEqual(["uncertain", "uncertain"])
    })
  )
})
