/**
 * Deployments that share a coordinator log (or a database) under the same participant names, told
 * apart by their gid namespace (`Participant.owns`): recovery leaves the other's decisions and
 * branches alone, and a transaction in a namespace its participants do not own is refused.
 */
import { describe, expect, it } from "@effect/vitest"
import { Duration, Effect, Either } from "effect"
import type * as Participant from "../src/Participant.js"
import { branch } from "../src/Participant.js"
import * as Recovery from "../src/Recovery.js"
import * as TransactionId from "../src/TransactionId.js"
import * as TransactionLog from "../src/TransactionLog.js"
import * as TwoPhaseCommit from "../src/TwoPhaseCommit.js"
import * as MemoryParticipant from "./support/MemoryParticipant.js"

/** `p` owning only the gids of `namespace` (none: gids built without one) under its own name. */
const ownedBy = (
  p: Participant.Participant<unknown>,
  namespace?: string
): Participant.Participant<unknown> => ({
  ...p,
  owns: (gid) => {
    const parsed = TransactionId.parseGid(gid)
    return parsed._tag === "Some" && parsed.value.branch === p.name && parsed.value.namespace === namespace
  }
})

describe("Recovery.run with participants that know their namespace", () => {
  it.effect("leaves a decision of another deployment sharing the log to that deployment", () =>
    Effect.gen(function* () {
      const log = yield* TransactionLog.makeMemory
      const main = yield* MemoryParticipant.make("main")
      // Deployment y decided to commit; its branch on its own "main" is still prepared elsewhere.
      const txId = yield* TransactionId.make
      const gid = TransactionId.gid(txId, main.participant.name, "y")
      yield* log.decide({
        txId,
        decision: "commit",
        branches: [{ branch: main.participant.name, gid }],
        decidedAt: 0
      })
      // Deployment x's recovery, over its own "main".
      const report = yield* Recovery.run([ownedBy(main.participant, "x")], {
        orphanAfter: Duration.zero
      }).pipe(Effect.provideService(TransactionLog.TransactionLog, log))
      // Before: x sent y's gid to its own database, found it gone, recorded a heuristic and
      // completed y's decision (y then rolled its prepared branch back as a duplicate).
      expect(report.heuristics).toEqual([])
      expect(report.transactionsFinished).toBe(0)
      expect(yield* main.calls).toEqual([])
      const snapshot = yield* log.snapshot
      expect(snapshot.completed.has(txId)).toBe(false)
      expect(snapshot.heuristics).toEqual([])
    })
  )

  it.effect("ignores in-doubt gids of another participant in the same database", () =>
    Effect.gen(function* () {
      const log = yield* TransactionLog.makeMemory
      const a = yield* MemoryParticipant.make("bank-a")
      const orphan = yield* TransactionId.make
      yield* a.seedPrepared(TransactionId.gid(orphan, a.participant.name))
      // bank-b shares bank-a's database and is not registered with this recovery: bank-a's scan
      // sees its prepared gid too.
      const other = yield* TransactionId.make
      const otherGid = TransactionId.gid(other, "bank-b" as TransactionId.BranchName)
      const sharing: Participant.Participant<unknown> = {
        ...a.participant,
        inDoubt: Effect.map(a.participant.inDoubt, (found) => [
          ...found,
          { gid: otherGid, txId: other, branch: "bank-b" as TransactionId.BranchName, preparedAt: 0 }
        ])
      }
      const report = yield* Recovery.run([sharing], { orphanAfter: Duration.zero }).pipe(
        Effect.provideService(TransactionLog.TransactionLog, log)
      )
      // Before: an abort decision was written for bank-b's transaction, and the pass reported
      // "participant bank-b is not registered" (every pass).
      expect(report.unresolved).toEqual([])
      expect(report.presumedAborts).toBe(1)
      expect([...(yield* a.states).values()]).toEqual(["aborted"])
      expect((yield* log.snapshot).decisions.has(other)).toBe(false)
    })
  )
})

describe("TwoPhaseCommit.run with participants that know their namespace", () => {
  it.effect("refuses a transaction in a namespace the participants do not own, before anything is sent", () =>
    Effect.gen(function* () {
      const log = yield* TransactionLog.makeMemory
      const a = yield* MemoryParticipant.make("bank-a")
      const b = yield* MemoryParticipant.make("bank-b")
      const run = TwoPhaseCommit.run(
        [branch(ownedBy(a.participant, "shop"), 1), branch(ownedBy(b.participant, "shop"), 2)],
        {
          namespace: "other"
        }
      ).pipe(Effect.provideService(TransactionLog.TransactionLog, log))
      const refused = yield* Effect.either(run)
      expect(Either.isLeft(refused) && refused.left._tag).toBe("InvalidTransactionError")
      expect([...(yield* a.calls), ...(yield* b.calls)]).toEqual([])
      // In the participants' own namespace it commits.
      const ok = yield* TwoPhaseCommit.run(
        [branch(ownedBy(a.participant, "shop"), 1), branch(ownedBy(b.participant, "shop"), 2)],
        { namespace: "shop" }
      ).pipe(Effect.provideService(TransactionLog.TransactionLog, log))
      expect(ok._tag).toBe("Committed")
    })
  )
})
