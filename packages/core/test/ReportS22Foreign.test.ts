/**
 * A recovery pass reports the gids of another deployment that it met and left alone (`foreign`),
 * per participant: before, it skipped them silently and an operator had no sign of, say, another
 * deployment's branch holding locks prepared in this deployment's database.
 */
import { describe, expect, it } from "@effect/vitest"
import { Duration, Effect } from "effect"
import { Vote } from "../src/Participant.js"
import type * as Participant from "../src/Participant.js"
import * as Recovery from "../src/Recovery.js"
import * as ThreePhaseCommit from "../src/ThreePhaseCommit.js"
import * as TransactionId from "../src/TransactionId.js"
import * as MemoryParticipant from "./support/MemoryParticipant.js"
import * as ThreePhaseMemory from "./support/ThreePhaseMemory.js"
import { withLog } from "./support/withLog.js"

/** `p` owning only the gids of `namespace` (none: gids built without one) under its own name. */
const ownedBy = <P extends { readonly name: TransactionId.BranchName }>(p: P, namespace?: string): P => ({
  ...p,
  owns: (gid: TransactionId.Gid) => {
    const parsed = TransactionId.parseGid(gid)
    return parsed._tag === "Some" && parsed.value.branch === p.name && parsed.value.namespace === namespace
  }
})

/** A gid of a new transaction on `branch`, in `namespace`. */
const newGid = (branch: TransactionId.BranchName, namespace?: string) =>
  Effect.map(TransactionId.make, (txId) => ({ txId, gid: TransactionId.gid(txId, branch, namespace) }))

const now = { orphanAfter: Duration.zero }

describe("Recovery.run reports another deployment's gids it leaves alone", () => {
  it.effect("a decision of another deployment sharing the log: counted, listed, not driven", () =>
    withLog((log) =>
      Effect.gen(function* () {
        const main = yield* MemoryParticipant.make("main")
        const { txId, gid } = yield* newGid(main.participant.name, "y")
        yield* log.decide({
          txId,
          decision: "commit",
          branches: [{ branch: main.participant.name, gid }],
          decidedAt: 0
        })
        const report = yield* Recovery.run([ownedBy(main.participant, "x")], now)
        expect(report.foreign).toEqual([{ participant: "main", count: 1, prepared: 0, gids: [gid] }])
        // Left alone: nothing sent, the decision still unfinished.
        expect(yield* main.calls).toEqual([])
        expect((yield* log.snapshot).completed.has(txId)).toBe(false)
      })
    )
  )

  it.effect("another deployment's branch prepared in this database: counted as prepared, left prepared", () =>
    withLog((log) =>
      Effect.gen(function* () {
        const main = yield* MemoryParticipant.make("main")
        const theirs = yield* newGid(main.participant.name, "y")
        const ours = yield* newGid(main.participant.name, "x")
        yield* main.seedPrepared(theirs.gid)
        yield* main.seedPrepared(ours.gid)
        const report = yield* Recovery.run([ownedBy(main.participant, "x")], now)
        expect(report.foreign).toEqual([{ participant: "main", count: 1, prepared: 1, gids: [theirs.gid] }])
        // This deployment's own orphan is presumed aborted as before; the other's stays prepared.
        expect(report.presumedAborts).toBe(1)
        const states = yield* main.states
        expect(states.get(theirs.gid)).toBe("prepared")
        expect(states.get(ours.gid)).toBe("aborted")
        expect((yield* log.snapshot).decisions.has(theirs.txId)).toBe(false)
      })
    )
  )

  it.effect("a gid named by a logged decision and found prepared counts once, as prepared", () =>
    withLog((log) =>
      Effect.gen(function* () {
        const main = yield* MemoryParticipant.make("main")
        const { txId, gid } = yield* newGid(main.participant.name, "y")
        yield* log.decide({
          txId,
          decision: "commit",
          branches: [{ branch: main.participant.name, gid }],
          decidedAt: 0
        })
        yield* main.seedPrepared(gid)
        const report = yield* Recovery.run([ownedBy(main.participant, "x")], now)
        expect(report.foreign).toEqual([{ participant: "main", count: 1, prepared: 1, gids: [gid] }])
        expect((yield* main.states).get(gid)).toBe("prepared")
      })
    )
  )

  it.effect("lists at most foreignListed gids, in the order met, and counts them all", () =>
    withLog(() =>
      Effect.gen(function* () {
        const main = yield* MemoryParticipant.make("main")
        const gids: Array<TransactionId.Gid> = []
        for (let i = 0; i < Recovery.foreignListed + 3; i++) {
          const { gid } = yield* newGid(main.participant.name, "y")
          gids.push(gid)
          yield* main.seedPrepared(gid)
        }
        const report = yield* Recovery.run([ownedBy(main.participant, "x")], now)
        expect(report.foreign).toHaveLength(1)
        expect(report.foreign[0]!.count).toBe(Recovery.foreignListed + 3)
        expect(report.foreign[0]!.prepared).toBe(Recovery.foreignListed + 3)
        expect(report.foreign[0]!.gids).toEqual(gids.slice(0, Recovery.foreignListed))
      })
    )
  )

  it.effect("reports per participant, in the order given, only those that met any", () =>
    withLog(() =>
      Effect.gen(function* () {
        const a = yield* MemoryParticipant.make("bank-a")
        const b = yield* MemoryParticipant.make("bank-b")
        const c = yield* MemoryParticipant.make("bank-c")
        const onA = yield* newGid(a.participant.name, "y")
        const onC1 = yield* newGid(c.participant.name, "y")
        const onC2 = yield* newGid(c.participant.name, "z")
        yield* a.seedPrepared(onA.gid)
        yield* c.seedPrepared(onC1.gid)
        yield* c.seedPrepared(onC2.gid)
        const report = yield* Recovery.run(
          [ownedBy(c.participant, "x"), ownedBy(b.participant, "x"), ownedBy(a.participant, "x")],
          now
        )
        expect(report.foreign).toEqual([
          { participant: "bank-c", count: 2, prepared: 2, gids: [onC1.gid, onC2.gid] },
          { participant: "bank-a", count: 1, prepared: 1, gids: [onA.gid] }
        ])
      })
    )
  )

  it.effect(
    "another participant's gid in the same database: reported unless a participant of the pass owns it",
    () =>
      withLog(() =>
        Effect.gen(function* () {
          const a = yield* MemoryParticipant.make("bank-a")
          const b = yield* MemoryParticipant.make("bank-b")
          const other = yield* newGid(b.participant.name)
          // bank-b's branch, prepared in bank-a's database: bank-a's scan sees it.
          const sharing: Participant.Participant<unknown> = {
            ...a.participant,
            inDoubt: Effect.map(a.participant.inDoubt, (found) => [
              ...found,
              { gid: other.gid, txId: other.txId, branch: b.participant.name, preparedAt: 0 }
            ])
          }
          // bank-b not registered here: nobody in this pass will end it.
          const alone = yield* Recovery.run([sharing], now)
          expect(alone.foreign).toEqual([{ participant: "bank-a", count: 1, prepared: 1, gids: [other.gid] }])
          // bank-b registered (and owning it): its own scan is the one to find it.
          const together = yield* Recovery.run([sharing, b.participant], now)
          expect(together.foreign).toEqual([])
        })
      )
  )

  it.effect("a pass that meets nothing foreign reports none", () =>
    withLog(() =>
      Effect.gen(function* () {
        const main = yield* MemoryParticipant.make("main")
        const ours = yield* newGid(main.participant.name, "x")
        yield* main.seedPrepared(ours.gid)
        const report = yield* Recovery.run([ownedBy(main.participant, "x")], now)
        expect(report.presumedAborts).toBe(1)
        expect(report.foreign).toEqual([])
      })
    )
  )
})

describe("ThreePhaseCommit.recover reports another deployment's gids it leaves alone", () => {
  /** Deployment `namespace` prepared a transaction over `members` and voted yes everywhere. */
  const prepared = (members: ReadonlyArray<ThreePhaseMemory.Memory>, namespace: string) =>
    Effect.gen(function* () {
      const txId = yield* TransactionId.make
      const names = members.map((m) => m.participant.name)
      const gids: Array<TransactionId.Gid> = []
      for (const m of members) {
        const gid = TransactionId.gid(txId, m.participant.name, namespace)
        gids.push(gid)
        expect(
          yield* m.participant.prepare({ txId, branch: m.participant.name, gid, members: names }, "w")
        ).toEqual(Vote.Prepared())
      }
      return { txId, gids }
    })

  it.effect("gids its participants do not own: per participant, as 2PC's report, and still blocked", () =>
    Effect.gen(function* () {
      const a = yield* ThreePhaseMemory.make("bank-a")
      const b = yield* ThreePhaseMemory.make("bank-b")
      const theirs = yield* prepared([a, b], "y")
      const report = yield* ThreePhaseCommit.recover(
        [ownedBy(a.participant, "x"), ownedBy(b.participant, "x")],
        now
      )
      expect(report.foreign).toEqual([
        { participant: "bank-a", count: 1, prepared: 1, gids: [theirs.gids[0]] },
        { participant: "bank-b", count: 1, prepared: 1, gids: [theirs.gids[1]] }
      ])
      expect(report.blocked.map((t) => t.txId)).toEqual([theirs.txId, theirs.txId])
      expect(report.aborted).toEqual([])
      expect([yield* a.stateOf(theirs.txId, "y"), yield* b.stateOf(theirs.txId, "y")]).toEqual([
        "uncertain",
        "uncertain"
      ])
    })
  )

  it.effect("gids of another namespace than the pass's: reported, this namespace's terminated", () =>
    Effect.gen(function* () {
      const a = yield* ThreePhaseMemory.make("bank-a")
      const b = yield* ThreePhaseMemory.make("bank-b")
      const theirs = yield* prepared([a, b], "y")
      const ours = yield* prepared([a, b], "x")
      const report = yield* ThreePhaseCommit.recover([a.participant, b.participant], {
        ...now,
        namespace: "x"
      })
      expect(report.aborted).toEqual([ours.txId])
      expect(report.foreign).toEqual([
        { participant: "bank-a", count: 1, prepared: 1, gids: [theirs.gids[0]] },
        { participant: "bank-b", count: 1, prepared: 1, gids: [theirs.gids[1]] }
      ])
      expect(yield* a.stateOf(theirs.txId, "y")).toBe("uncertain")
    })
  )

  it.effect("nothing foreign: none reported", () =>
    Effect.gen(function* () {
      const a = yield* ThreePhaseMemory.make("bank-a")
      const ours = yield* prepared([a], "x")
      const report = yield* ThreePhaseCommit.recover([ownedBy(a.participant, "x")], now)
      expect(report.aborted).toEqual([ours.txId])
      expect(report.foreign).toEqual([])
    })
  )
})
