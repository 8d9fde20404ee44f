/**
 * A PGlite branch whose work never returns (it awaits something that never answers: a hung HTTP
 * call, a forgotten promise). Its caller gives up (prepareTimeout); the branch's transaction must
 * then be rolled back within `cancelTimeout`, so that the instance and the gate are usable again,
 * as a postgres.js branch's connection is cleaned within the same bound. Until 2026-12-07 the
 * PGlite transaction stayed open for ever: PGlite's transaction mutex stayed taken (every later
 * statement on the instance, COMMIT/ROLLBACK PREPARED and recovery included, waited for ever) and
 * the gate stayed held for the branch (every PGlite branch of the process voted No, busy).
 */
import { Participant, TransactionId, TwoPhaseCommit } from "@accord/core"
import { describe, expect, it } from "@effect/vitest"
import { Duration, Effect } from "effect"
import * as PgParticipant from "../src/PgParticipant.js"
import * as PgTransactionLog from "../src/PgTransactionLog.js"
import { adjust } from "./support/pg2pc.js"
import { usePgliteBanks } from "./support/pglite.js"

const ctxOf = (txId: TransactionId.TransactionId, branch: string) => ({
  txId,
  branch: branch as TransactionId.BranchName,
  gid: TransactionId.gid(txId, branch as TransactionId.BranchName)
})

describe("a PGlite branch whose work never returns", () => {
  const banks = usePgliteBanks()

  it.live("is rolled back once its caller gives up: the instance and the gate are usable again", () =>
    Effect.gen(function* () {
      const gate = PgParticipant.makeGate()
      const options = { gate, lockTimeout: Duration.millis(300), cancelTimeout: Duration.millis(300) }
      const pa = yield* PgParticipant.makePglite({ name: "bank-a", db: banks.dbA, ...options })
      const pb = yield* PgParticipant.makePglite({ name: "bank-b", db: banks.dbB, ...options })
      const outcome = yield* TwoPhaseCommit.run(
        [
          Participant.branch(pa, async (s) => {
            await s.query("update accounts set balance = balance - 1 where id = 1")
            await new Promise(() => {})
          }),
          Participant.branch(pb, adjust(1, 1))
        ],
        { prepareTimeout: Duration.millis(200), callTimeout: Duration.millis(500) }
      ).pipe(Effect.provide(PgTransactionLog.layerPglite(banks.dbLog)), Effect.timeout(Duration.seconds(5)))
      expect(outcome._tag).toBe("Aborted")
      // The hung work's update was rolled back, the instance answers, nothing is left prepared.
      const rows = yield* Effect.promise(() =>
        banks.dbA.query<{ balance: number }>("select balance from accounts where id = 1")
      ).pipe(Effect.timeout(Duration.seconds(2)))
      expect(rows.rows[0]!.balance).toBe(100)
      expect(gate.holder).toBeUndefined()
      // A fresh transaction on the same rows commits.
      const again = yield* TwoPhaseCommit.run([
        Participant.branch(pa, adjust(1, -1)),
        Participant.branch(pb, adjust(1, 1))
      ]).pipe(Effect.provide(PgTransactionLog.layerPglite(banks.dbLog)), Effect.timeout(Duration.seconds(3)))
      expect(again._tag).toBe("Committed")
    })
  )

  it.live("a work that returns late finds its session closed: its statements fail, nothing leaks", () =>
    Effect.gen(function* () {
      const gate = PgParticipant.makeGate()
      const pa = yield* PgParticipant.makePglite({
        name: "bank-a",
        db: banks.dbA,
        gate,
        cancelTimeout: Duration.millis(200)
      })
      let release: () => void = () => {}
      const late = new Promise<unknown>((resolve) => {
        release = () => resolve(undefined)
      })
      let lateResult: unknown = "not run"
      const txId = yield* TransactionId.make
      const vote = yield* pa
        .prepare(ctxOf(txId, "bank-a"), async (s) => {
          await s.query("update accounts set balance = balance - 1 where id = 2")
          await late
          // The caller gave up long ago: this statement must not run in any transaction.
          lateResult = await s.query("update accounts set balance = 0 where id = 2").then(
            () => "ran",
            () => "refused"
          )
        })
        .pipe(Effect.timeout(Duration.millis(100)), Effect.either)
      expect(vote._tag).toBe("Left")
      const balance = yield* Effect.promise(() =>
        banks.dbA.query<{ balance: number }>("select balance from accounts where id = 2")
      ).pipe(Effect.timeout(Duration.seconds(2)))
      expect(balance.rows[0]!.balance).toBe(100)
      expect(gate.holder).toBeUndefined()
      release()
      yield* Effect.sleep(Duration.millis(50))
      expect(lateResult).toBe("refused")
      const after = yield* Effect.promise(() =>
        banks.dbA.query<{ balance: number }>("select balance from accounts where id = 2")
      )
      expect(after.rows[0]!.balance).toBe(100)
    })
  )
})
