/**
 * A PGlite instance closed while one of its branches holds the gate (prepared, or held at start-up
 * for a transaction found prepared) must not keep the gate held: no COMMIT/ROLLBACK PREPARED can
 * ever leave it through a closed instance, and every other PGlite participant sharing the gate
 * would be busy for ever. Before the fix, each of these transactions voted busy after `lockTimeout`.
 */
import type { PGlite } from "@electric-sql/pglite"
import { Participant, TransactionId, TwoPhaseCommit } from "@accord/core"
import { afterEach, describe, expect, it } from "@effect/vitest"
import { Duration, Effect, Fiber } from "effect"
import * as PgParticipant from "../src/PgParticipant.js"
import * as PgTransactionLog from "../src/PgTransactionLog.js"
import { adjust } from "./support/pg2pc.js"
import { seedBank } from "./support/pglite.js"

const lockTimeout = Duration.seconds(3)
/**
 * Each test opens four PGlite instances (WebAssembly, CPU-bound): 11 s in a quiet CI run, 47 s with
 * the simulator's campaigns sharing the two cores (as CI's other packages' tests do).
 */
const TEST_TIMEOUT = 180_000

const opened: Array<PGlite> = []
const open = Effect.promise(async () => {
  const db = await PgParticipant.openPglite()
  await seedBank(db)
  opened.push(db)
  return db
})

afterEach(async () => {
  for (const db of opened.splice(0)) if (!db.closed) await db.close()
})

describe("the PGlite gate after an instance is closed", () => {
  /** A gate of its own, a victim instance to close, and two bank instances with a log. */
  const setup = Effect.gen(function* () {
    const gate = PgParticipant.makeGate()
    const options = { gate, lockTimeout }
    const [dbGone, dbB, dbC, dbLog] = [yield* open, yield* open, yield* open, yield* open]
    const gone = yield* PgParticipant.makePglite({ name: "bank-gone", db: dbGone, ...options })
    const pb = yield* PgParticipant.makePglite({ name: "bank-b", db: dbB, ...options })
    const pc = yield* PgParticipant.makePglite({ name: "bank-c", db: dbC, ...options })
    const transfer = TwoPhaseCommit.run([
      Participant.branch(pb, adjust(1, -1)),
      Participant.branch(pc, adjust(1, 1))
    ]).pipe(Effect.provide(PgTransactionLog.layerPglite(dbLog)))
    return { gate, dbGone, gone, transfer }
  })

  /** Prepares a branch on `participant` and leaves it prepared: the gate is held for it. */
  const prepareOne = (participant: PgParticipant.PgParticipant) =>
    Effect.gen(function* () {
      const txId = yield* TransactionId.make
      const ctx = { txId, branch: participant.name, gid: TransactionId.gid(txId, participant.name) }
      const vote = yield* participant.prepare(ctx, adjust(2, 5))
      expect(vote._tag).toBe("Prepared")
      return txId
    })

  it.live(
    "a branch prepared on the closed instance: the next transaction enters at once",
    () =>
      Effect.gen(function* () {
        const { gate, dbGone, gone, transfer } = yield* setup
        const held = yield* prepareOne(gone)
        expect(gate.holder).toBe(held)
        yield* Effect.promise(() => dbGone.close())
        const started = Date.now()
        const outcome = yield* transfer
        expect(outcome._tag).toBe("Committed")
        expect(Date.now() - started).toBeLessThan(Duration.toMillis(lockTimeout))
        expect(gate.holder).toBeUndefined()
      }),
    TEST_TIMEOUT
  )

  it.live(
    "a branch waiting for the gate is admitted once the holder's instance is closed",
    () =>
      Effect.gen(function* () {
        const { gate, dbGone, gone, transfer } = yield* setup
        const held = yield* prepareOne(gone)
        const waiting = yield* Effect.fork(transfer)
        yield* Effect.sleep(Duration.millis(300))
        // Still waiting behind the prepared branch.
        expect(gate.holder).toBe(held)
        const closedAt = Date.now()
        yield* Effect.promise(() => dbGone.close())
        const outcome = yield* Fiber.join(waiting)
        expect(outcome._tag).toBe("Committed")
        expect(Date.now() - closedAt).toBeLessThan(Duration.toMillis(lockTimeout) - 300)
        expect(gate.holder).toBeUndefined()
      }),
    TEST_TIMEOUT
  )

  it.live(
    "a transaction found prepared at start-up, on an instance since closed",
    () =>
      Effect.gen(function* () {
        const gate = PgParticipant.makeGate()
        const dbGone = yield* open
        yield* Effect.promise(() =>
          dbGone.exec(
            "begin; update accounts set balance = balance + 1 where id = 3; prepare transaction 'by_hand_1'"
          )
        )
        yield* PgParticipant.makePglite({ name: "bank-gone", db: dbGone, gate, lockTimeout })
        expect(gate.holder).toBeDefined()
        yield* Effect.promise(() => dbGone.close())
        const [dbB, dbLog] = [yield* open, yield* open]
        const pb = yield* PgParticipant.makePglite({ name: "bank-b", db: dbB, gate, lockTimeout })
        const outcome = yield* TwoPhaseCommit.run([Participant.branch(pb, adjust(1, 1))]).pipe(
          Effect.provide(PgTransactionLog.layerPglite(dbLog))
        )
        expect(outcome._tag).toBe("Committed")
        expect(gate.holder).toBeUndefined()
      }),
    TEST_TIMEOUT
  )

  it.live(
    "an open holder still holds: a branch behind it is busy after lockTimeout",
    () =>
      Effect.gen(function* () {
        const gate = PgParticipant.makeGate()
        const short = Duration.millis(400)
        const [dbA, dbB, dbLog] = [yield* open, yield* open, yield* open]
        const pa = yield* PgParticipant.makePglite({ name: "bank-a", db: dbA, gate, lockTimeout: short })
        const pb = yield* PgParticipant.makePglite({ name: "bank-b", db: dbB, gate, lockTimeout: short })
        const held = yield* prepareOne(pa)
        const outcome = yield* TwoPhaseCommit.run([Participant.branch(pb, adjust(1, 1))]).pipe(
          Effect.provide(PgTransactionLog.layerPglite(dbLog))
        )
        expect(outcome._tag).toBe("Aborted")
        expect(gate.holder).toBe(held)
        yield* pa.rollback({ txId: held, branch: pa.name, gid: TransactionId.gid(held, pa.name) })
        expect(gate.holder).toBeUndefined()
      }),
    TEST_TIMEOUT
  )
})
