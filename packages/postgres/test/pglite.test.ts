import { mkdtempSync, rmSync } from "node:fs"
import { tmpdir } from "node:os"
import { join } from "node:path"
import { Participant, TransactionError, TransactionId, TwoPhaseCommit } from "@accord/core"
import type { PGlite } from "@electric-sql/pglite"
import { PGlite as PGliteClass } from "@electric-sql/pglite"
import { describe, expect, it } from "@effect/vitest"
import { Duration, Effect, Either } from "effect"
import * as PgParticipant from "../src/PgParticipant.js"
import * as PgRecovery from "../src/PgRecovery.js"
import * as PgTransactionLog from "../src/PgTransactionLog.js"
import { adjust, transfer } from "./support/pg2pc.js"
import { seedBank, usePgliteBanks } from "./support/pglite.js"

const balanceOf = (db: PGlite, id: number) =>
  Effect.promise(
    async () =>
      (await db.query<{ balance: number }>("select balance from accounts where id = $1", [id])).rows[0]
        ?.balance
  )

const prepared = (db: PGlite) =>
  Effect.promise(async () =>
    (await db.query<{ gid: string }>("select gid from pg_prepared_xacts")).rows.map((r) => r.gid)
  )

describe("PgParticipant on PGlite", () => {
  const banks = usePgliteBanks()

  const participants = Effect.gen(function* () {
    const pa = yield* PgParticipant.makePglite({ name: "bank-a", db: banks.dbA })
    const pb = yield* PgParticipant.makePglite({ name: "bank-b", db: banks.dbB })
    return { pa, pb }
  })

  const logLayer = () => PgTransactionLog.layerPglite(banks.dbLog)

  it.live("PGlite participants have no direct calls: their branches go through the gate's Effects", () =>
    Effect.gen(function* () {
      const { pa } = yield* participants
      expect(pa.direct).toBeUndefined()
      expect(Participant.directCall(pa, "prepare")).toBeUndefined()
    })
  )

  it.live("both branches commit", () =>
    Effect.gen(function* () {
      const { pa, pb } = yield* participants
      const outcome = yield* transfer(pa, pb, 1, 1, 10).pipe(Effect.provide(logLayer()))
      expect(outcome._tag).toBe("Committed")
      expect(yield* balanceOf(banks.dbA, 1)).toBe(90)
      expect(yield* balanceOf(banks.dbB, 1)).toBe(110)
      expect(yield* prepared(banks.dbA)).toEqual([])
    })
  )

  it.live("a CHECK violation is a No vote with 23514 and nothing stays prepared", () =>
    Effect.gen(function* () {
      const { pa, pb } = yield* participants
      const outcome = yield* transfer(pa, pb, 2, 2, 1_000).pipe(Effect.provide(logLayer()))
      expect(outcome._tag).toBe("Aborted")
      if (outcome._tag === "Aborted") expect(outcome.reason).toContain("23514")
      expect(yield* balanceOf(banks.dbA, 2)).toBe(100)
      expect(yield* balanceOf(banks.dbB, 2)).toBe(100)
      expect(yield* prepared(banks.dbA)).toEqual([])
      expect(yield* prepared(banks.dbB)).toEqual([])
    })
  )

  it.live("concurrent transfers across two instances neither deadlock nor lose money", () =>
    Effect.gen(function* () {
      const { pa, pb } = yield* participants
      const outcomes = yield* Effect.forEach(
        Array.from({ length: 40 }, (_, i) => i),
        (i) =>
          i % 2 === 0
            ? transfer(pa, pb, 3 + (i % 5), 3 + ((i + 1) % 5), 1)
            : TwoPhaseCommit.run([
                Participant.branch(pb, adjust(3 + (i % 5), -1)),
                Participant.branch(pa, adjust(3 + ((i + 2) % 5), 1))
              ]),
        { concurrency: 8 }
      ).pipe(Effect.provide(logLayer()))
      expect(outcomes.every((o) => o._tag === "Committed")).toBe(true)
      const sum = async (db: PGlite) =>
        (await db.query<{ t: number }>("select sum(balance)::int as t from accounts")).rows[0]!.t
      expect(
        (yield* Effect.promise(() => sum(banks.dbA))) + (yield* Effect.promise(() => sum(banks.dbB)))
      ).toBe(2_000)
    })
  )

  it.live("a read-only branch votes ReadOnly and prepares nothing", () =>
    Effect.gen(function* () {
      const { pa, pb } = yield* participants
      const outcome = yield* TwoPhaseCommit.run([
        Participant.branch(pa, (s) => s.query("select balance from accounts where id = 1")),
        Participant.branch(pb, adjust(9, 1))
      ]).pipe(Effect.provide(logLayer()))
      expect(outcome._tag).toBe("Committed")
      expect(outcome.votes.find((v) => v.branch === "bank-a")!.vote._tag).toBe("ReadOnly")
      expect(yield* balanceOf(banks.dbB, 9)).toBe(101)
    })
  )

  it.live(
    "max_prepared_transactions = 0 (PGlite's default) is a ConfigurationError before any work",
    () =>
      Effect.gen(function* () {
        const plain = yield* Effect.promise(() => PGliteClass.create())
        const result = yield* Effect.either(PgParticipant.makePglite({ name: "plain", db: plain }))
        expect(Either.isLeft(result)).toBe(true)
        if (Either.isLeft(result)) {
          expect(result.left).toBeInstanceOf(TransactionError.ConfigurationError)
          expect(result.left.message).toContain("max_prepared_transactions is 0")
          expect(result.left.message).toContain("max_prepared_transactions=64")
        }
        const tables = yield* Effect.promise(() =>
          plain.query("select 1 from pg_tables where tablename = 'accord_branch'")
        )
        expect(tables.rows).toEqual([])
        yield* Effect.promise(() => plain.close())
      }),
    60_000
  )

  it.live(
    "a branch left prepared holds the instance: others vote No after lockTimeout, recovery frees it",
    () =>
      Effect.gen(function* () {
        const gate = PgParticipant.makeGate()
        const pa = yield* PgParticipant.makePglite({
          name: "bank-a",
          db: banks.dbA,
          gate,
          lockTimeout: Duration.millis(200)
        })
        const txId = yield* TransactionId.make
        const ctx = { txId, branch: pa.name, gid: TransactionId.gid(txId, pa.name) }
        // A coordinator prepares, then never comes back.
        expect((yield* pa.prepare(ctx, adjust(10, -1)))._tag).toBe("Prepared")
        const other = yield* TransactionId.make
        const vote = yield* pa.prepare(
          { txId: other, branch: pa.name, gid: TransactionId.gid(other, pa.name) },
          adjust(10, -1)
        )
        expect(vote._tag).toBe("No")
        if (vote._tag === "No") expect(vote.reason).toContain("busy")
        const log = yield* PgTransactionLog.makePglite(banks.dbLog)
        const report = yield* PgRecovery.run({
          participants: [pa],
          log,
          options: { orphanAfter: Duration.zero }
        })
        expect(report.branchesRolledBack).toBe(1)
        const again = yield* TransactionId.make
        const next = yield* pa.commitOnePhase(
          { txId: again, branch: pa.name, gid: TransactionId.gid(again, pa.name) },
          adjust(10, -1)
        )
        expect(next._tag).toBe("Committed")
        expect(yield* balanceOf(banks.dbA, 10)).toBe(99)
      }).pipe(Effect.scoped)
  )

  it.live(
    "a data directory reopened with a prepared branch stays held until recovery resolves it",
    () =>
      Effect.gen(function* () {
        const dir = mkdtempSync(join(tmpdir(), "accord-pglite-"))
        try {
          const first = yield* Effect.promise(() => PgParticipant.openPglite(dir))
          yield* Effect.promise(() => seedBank(first))
          const before = yield* PgParticipant.makePglite({
            name: "bank-c",
            db: first,
            gate: PgParticipant.makeGate()
          })
          const txId = yield* TransactionId.make
          const ctx = { txId, branch: before.name, gid: TransactionId.gid(txId, before.name) }
          expect((yield* before.prepare(ctx, adjust(1, -1)))._tag).toBe("Prepared")
          yield* Effect.promise(() => first.close())

          const reopened = yield* Effect.promise(() => PgParticipant.openPglite(dir))
          const gate = PgParticipant.makeGate()
          const after = yield* PgParticipant.makePglite({
            name: "bank-c",
            db: reopened,
            gate,
            lockTimeout: Duration.millis(200)
          })
          expect((yield* after.inDoubt).map((b) => b.gid)).toEqual([ctx.gid])
          // Touching the locked row now would hang PGlite for ever: the gate refuses instead.
          const other = yield* TransactionId.make
          const refused = yield* after.commitOnePhase(
            { txId: other, branch: after.name, gid: TransactionId.gid(other, after.name) },
            adjust(1, -1)
          )
          expect(refused._tag).toBe("No")
          const log = yield* PgTransactionLog.makePglite(banks.dbLog)
          yield* log.decide({ txId, decision: "commit", branches: [ctx], decidedAt: Date.now() })
          const report = yield* PgRecovery.run({
            participants: [after],
            log,
            options: { orphanAfter: Duration.zero }
          })
          expect(report.branchesCommitted).toBe(1)
          const ok = yield* after.commitOnePhase(
            { txId: other, branch: after.name, gid: TransactionId.gid(other, after.name) },
            adjust(1, -1)
          )
          expect(ok._tag).toBe("Committed")
          expect(yield* balanceOf(reopened, 1)).toBe(98)
          expect(yield* prepared(reopened)).toEqual([])
          yield* Effect.promise(() => reopened.close())
        } finally {
          rmSync(dir, { recursive: true, force: true })
        }
      }).pipe(Effect.scoped),
    120_000
  )
})
