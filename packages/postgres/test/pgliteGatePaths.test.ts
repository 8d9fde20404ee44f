/**
 * The PGlite gate on every path a branch can end by: after each, the instance must be usable (a
 * fresh transaction touching the same rows commits within a short bound), and while a branch is
 * prepared a second transaction must be refused as busy within its `lockTimeout`, never hang.
 */
import { Participant, TransactionId, TwoPhaseCommit } from "@accord/core"
import { describe, expect, it } from "@effect/vitest"
import { Deferred, Duration, Effect, Fiber } from "effect"
import { Gate, type Instance } from "../src/internal/gate.js"
import * as PgParticipant from "../src/PgParticipant.js"
import * as PgRecovery from "../src/PgRecovery.js"
import * as PgTransactionLog from "../src/PgTransactionLog.js"
import { adjust } from "./support/pg2pc.js"
import { usePgliteBanks } from "./support/pglite.js"

const ctxOf = (txId: TransactionId.TransactionId, branch: string) => ({
  txId,
  branch: branch as TransactionId.BranchName,
  gid: TransactionId.gid(txId, branch as TransactionId.BranchName)
})

describe("the PGlite gate on every path", () => {
  const banks = usePgliteBanks()

  /** Two participants on a gate of their own, with a short lockTimeout. */
  const setup = Effect.gen(function* () {
    const gate = PgParticipant.makeGate()
    const options = { gate, lockTimeout: Duration.millis(300), cancelTimeout: Duration.millis(500) }
    const pa = yield* PgParticipant.makePglite({ name: "bank-a", db: banks.dbA, ...options })
    const pb = yield* PgParticipant.makePglite({ name: "bank-b", db: banks.dbB, ...options })
    const log = yield* PgTransactionLog.makePglite(banks.dbLog)
    return { gate, pa, pb, log }
  })

  /** A fresh two-branch transaction on the same rows commits within 3 s; the gate is free after it. */
  const usable = (
    pa: PgParticipant.PgParticipant,
    pb: PgParticipant.PgParticipant,
    gate: PgParticipant.Gate
  ) =>
    Effect.gen(function* () {
      expect(gate.holder).toBeUndefined()
      const outcome = yield* TwoPhaseCommit.run([
        Participant.branch(pa, adjust(1, -1)),
        Participant.branch(pb, adjust(1, 1))
      ]).pipe(Effect.provide(PgTransactionLog.layerPglite(banks.dbLog)), Effect.timeout(Duration.seconds(3)))
      expect(outcome._tag).toBe("Committed")
      expect(gate.holder).toBeUndefined()
    })

  const recover = (
    pa: PgParticipant.PgParticipant,
    pb: PgParticipant.PgParticipant,
    log: PgTransactionLog.PgTransactionLog
  ) => PgRecovery.run({ participants: [pa, pb], log, options: { orphanAfter: Duration.zero } })

  it.live("commit", () =>
    Effect.gen(function* () {
      const { gate, pa, pb } = yield* setup
      const outcome = yield* TwoPhaseCommit.run([
        Participant.branch(pa, adjust(2, -1)),
        Participant.branch(pb, adjust(2, 1))
      ]).pipe(Effect.provide(PgTransactionLog.layerPglite(banks.dbLog)))
      expect(outcome._tag).toBe("Committed")
      yield* usable(pa, pb, gate)
    }).pipe(Effect.scoped)
  )

  it.live("rollback after the other branch's No vote, and a No vote itself", () =>
    Effect.gen(function* () {
      const { gate, pa, pb } = yield* setup
      const outcome = yield* TwoPhaseCommit.run([
        Participant.branch(pa, adjust(2, -1)),
        Participant.branch(pb, adjust(2, -10_000))
      ]).pipe(Effect.provide(PgTransactionLog.layerPglite(banks.dbLog)))
      expect(outcome._tag).toBe("Aborted")
      yield* usable(pa, pb, gate)
    }).pipe(Effect.scoped)
  )

  it.live("work throwing a JavaScript error", () =>
    Effect.gen(function* () {
      const { gate, pa, pb } = yield* setup
      const outcome = yield* TwoPhaseCommit.run([
        Participant.branch(pa, adjust(2, -1)),
        Participant.branch(pb, async () => {
          throw new Error("boom")
        })
      ]).pipe(Effect.provide(PgTransactionLog.layerPglite(banks.dbLog)))
      expect(outcome._tag).toBe("Aborted")
      yield* usable(pa, pb, gate)
    }).pipe(Effect.scoped)
  )

  it.live("prepare timeout: the work outlives prepareTimeout", () =>
    Effect.gen(function* () {
      const { gate, pa, pb } = yield* setup
      const outcome = yield* TwoPhaseCommit.run(
        [
          Participant.branch(pa, adjust(2, -1)),
          Participant.branch(pb, async (s) => {
            await s.query("update accounts set balance = balance + 1 where id = 2")
            await new Promise((r) => setTimeout(r, 300))
          })
        ],
        { prepareTimeout: Duration.millis(100) }
      ).pipe(Effect.provide(PgTransactionLog.layerPglite(banks.dbLog)))
      expect(outcome._tag).toBe("Aborted")
      yield* usable(pa, pb, gate)
    }).pipe(Effect.scoped)
  )

  it.live("prepared with its coordinator gone: busy within lockTimeout, then recovery rolls it back", () =>
    Effect.gen(function* () {
      const { gate, pa, pb, log } = yield* setup
      const txId = yield* TransactionId.make
      expect((yield* pa.prepare(ctxOf(txId, "bank-a"), adjust(3, -1)))._tag).toBe("Prepared")
      const other = yield* TransactionId.make
      const started = Date.now()
      const vote = yield* pa
        .prepare(ctxOf(other, "bank-a"), adjust(3, -1))
        .pipe(Effect.timeout(Duration.seconds(3)))
      expect(Date.now() - started).toBeLessThan(2_000)
      expect(vote._tag).toBe("No")
      if (vote._tag === "No") {
        expect(vote.reason).toContain("busy")
        expect(vote.sqlState).toBe("55P03")
      }
      // The instance itself still answers statements that take no row lock.
      expect(
        (yield* Effect.promise(() => banks.dbA.query("select count(*) from accounts"))).rows.length
      ).toBe(1)
      const report = yield* recover(pa, pb, log)
      expect(report.branchesRolledBack).toBe(1)
      yield* usable(pa, pb, gate)
    }).pipe(Effect.scoped)
  )

  it.live("prepared with its coordinator gone after a commit decision: recovery commits it", () =>
    Effect.gen(function* () {
      const { gate, pa, pb, log } = yield* setup
      const txId = yield* TransactionId.make
      const a = ctxOf(txId, "bank-a")
      const b = ctxOf(txId, "bank-b")
      expect((yield* pa.prepare(a, adjust(4, -1)))._tag).toBe("Prepared")
      expect((yield* pb.prepare(b, adjust(4, 1)))._tag).toBe("Prepared")
      yield* log.decide({ txId, decision: "commit", branches: [a, b], decidedAt: Date.now() })
      const report = yield* recover(pa, pb, log)
      expect(report.branchesCommitted).toBe(2)
      yield* usable(pa, pb, gate)
    }).pipe(Effect.scoped)
  )

  for (const point of ["during the work", "after both prepared", "during phase 2"] as const) {
    it.live(`the coordinator interrupted ${point}: recovery (if needed) leaves the instance usable`, () =>
      Effect.gen(function* () {
        const { gate, pa, pb, log } = yield* setup
        const reached = yield* Deferred.make<void>()
        const release = yield* Deferred.make<void>()
        const work: PgParticipant.PgWork = async (s) => {
          await s.query("update accounts set balance = balance + 1 where id = 5")
          if (point === "during the work") {
            Effect.runSync(Deferred.succeed(reached, undefined))
            await Effect.runPromise(Deferred.await(release))
          }
        }
        const stall = (p: PgParticipant.PgParticipant): Participant.AnyParticipant =>
          point === "during the work"
            ? p
            : {
                ...p,
                direct: undefined,
                ...(point === "after both prepared"
                  ? {}
                  : {
                      commit: () => Deferred.succeed(reached, undefined).pipe(Effect.andThen(Effect.never))
                    })
              }
        const logLayer = PgTransactionLog.layerPglite(banks.dbLog)
        const run =
          point === "after both prepared"
            ? Effect.gen(function* () {
                // The decision write never returns: the coordinator sits between phases.
                const txId = yield* TransactionId.make
                const a = ctxOf(txId, "bank-a")
                const b = ctxOf(txId, "bank-b")
                yield* pa.prepare(a, work)
                yield* pb.prepare(b, adjust(5, -1))
                yield* Deferred.succeed(reached, undefined)
                return yield* Effect.never
              })
            : TwoPhaseCommit.run([
                Participant.branch(stall(pa), work),
                Participant.branch(stall(pb), adjust(5, -1))
              ]).pipe(Effect.provide(logLayer))
        const fiber = yield* Effect.fork(run)
        yield* Deferred.await(reached)
        yield* Fiber.interrupt(fiber).pipe(Effect.timeout(Duration.seconds(3)))
        yield* Deferred.succeed(release, undefined)
        // Whatever is left prepared keeps the gate (busy, not a hang) until recovery resolves it.
        yield* Effect.sleep(Duration.millis(50))
        yield* recover(pa, pb, log)
        yield* usable(pa, pb, gate)
      }).pipe(Effect.scoped)
    )
  }

  it.live("a branch interrupted in the tick that admits it through the gate leaves the gate (50 tries)", () =>
    Effect.gen(function* () {
      const { gate, pa } = yield* setup
      let stuck = 0
      for (let i = 0; i < 50; i++) {
        const holder = yield* TransactionId.make
        const held = yield* gate.enterHold(holder, `held-${i}`, Duration.seconds(1))
        expect(held).toBeDefined()
        const txId = yield* TransactionId.make
        const branch = yield* Effect.fork(pa.prepare(ctxOf(txId, "bank-a"), (s) => s.query("select 1")))
        yield* Effect.sleep(Duration.millis(2))
        // The holder's COMMIT PREPARED admits the waiting branch as its caller interrupts it.
        gate.leaveHold(held!)
        yield* Fiber.interrupt(branch)
        if (gate.holder !== undefined) {
          stuck++
          // Frees the branch's hold for the next try, as a COMMIT PREPARED of its gid would.
          gate.resolving(TransactionId.gid(txId, "bank-a" as TransactionId.BranchName), banks.dbA)(true)
        }
      }
      expect(stuck).toBe(0)
    }).pipe(Effect.scoped)
  )

  it.live(
    "a branch interrupted after the gate admitted it, before its transaction started, leaves the gate",
    () =>
      Effect.gen(function* () {
        // The interruption lands right after the admission, before the hold reaches the branch. In
        // production this window is reached when the runtime yields there (every 2048 operations);
        // this gate makes it certain.
        class InterruptedOnAdmission extends Gate {
          override enterHold(txId: string, gid: string, timeout: Duration.Duration, instance?: Instance) {
            return super
              .enterHold(txId, gid, timeout, instance)
              .pipe(Effect.tap(() => Effect.flatMap(Effect.fiberId, (id) => Effect.interruptWith(id))))
          }
        }
        const gate = new InterruptedOnAdmission()
        const pa = yield* PgParticipant.makePglite({ name: "bank-a", db: banks.dbA, gate })
        const txId = yield* TransactionId.make
        const exit = yield* Effect.exit(pa.prepare(ctxOf(txId, "bank-a"), adjust(6, -1)))
        expect(exit._tag).toBe("Failure")
        expect(gate.holder).toBeUndefined()
        expect(
          yield* Effect.promise(() => banks.dbA.query("select gid from pg_prepared_xacts"))
        ).toMatchObject({
          rows: []
        })
      })
  )
})
