/**
 * A process dies with a branch prepared on a file-backed PGlite: the data directory only reopens
 * with `max_prepared_transactions`, which both of Accord's openers pass; before recovery a new
 * transaction is refused as busy (never a hang on the prepared branch's row lock); recovery
 * finishes the branch and the instance is usable again.
 */
import { mkdtempSync, rmSync } from "node:fs"
import { tmpdir } from "node:os"
import { join } from "node:path"
import { TransactionId } from "@accord/core"
import { PGlite } from "@electric-sql/pglite"
import { afterAll, beforeAll, describe, expect, it } from "@effect/vitest"
import { Duration, Effect } from "effect"
import * as PgParticipant from "../src/PgParticipant.js"
import * as PgRecovery from "../src/PgRecovery.js"
import * as PgTransactionLog from "../src/PgTransactionLog.js"
import { adjust, BANK_DDL } from "./support/pg2pc.js"

const ctxOf = (txId: TransactionId.TransactionId, branch: string) => ({
  txId,
  branch: branch as TransactionId.BranchName,
  gid: TransactionId.gid(txId, branch as TransactionId.BranchName)
})

const balanceOf = (db: PGlite, id: number) =>
  Effect.promise(
    async () =>
      (await db.query<{ balance: number }>("select balance from accounts where id = $1", [id])).rows[0]
        ?.balance
  )

describe("a file-backed PGlite participant restarted with a branch prepared", () => {
  let root: string
  let dbLog: PGlite

  beforeAll(async () => {
    root = mkdtempSync(join(tmpdir(), "accord-pglite-restart-"))
    dbLog = await PgParticipant.openPglite()
  }, 60_000)

  afterAll(async () => {
    await dbLog.close()
    rmSync(root, { recursive: true, force: true })
  })

  for (const opener of ["openPglite", "openPgliteCloned"] as const) {
    it.live(
      `${opener} reopens it, a new branch is busy until recovery commits the old one`,
      () =>
        Effect.gen(function* () {
          const dir = join(root, opener)
          const first = yield* Effect.promise(() => PgParticipant.openPgliteCloned(dir))
          yield* Effect.promise(async () => {
            await first.exec(BANK_DDL)
            await first.exec("insert into accounts select g, 100 from generate_series(1, 3) g")
          })
          const before = yield* PgParticipant.makePglite({
            name: "bank-d",
            db: first,
            gate: PgParticipant.makeGate()
          })
          const txId = yield* TransactionId.make
          const ctx = ctxOf(txId, "bank-d")
          expect((yield* before.prepare(ctx, adjust(1, -7)))._tag).toBe("Prepared")
          const log = yield* PgTransactionLog.makePglite(dbLog)
          yield* log.decide({ txId, decision: "commit", branches: [ctx], decidedAt: Date.now() })
          // The process dies before COMMIT PREPARED.
          yield* Effect.promise(() => first.close())

          // PGlite's own open, without the setting, refuses the directory. The message is PGlite's
          // (its server's FATAL "maximum number of prepared transactions reached" goes to stderr).
          const plain = yield* Effect.either(Effect.tryPromise(() => PGlite.create(dir)))
          expect(plain._tag).toBe("Left")
          if (plain._tag === "Left") expect(String(plain.left.cause)).toContain("failed to initialize")

          const reopened = yield* Effect.promise(() =>
            opener === "openPglite" ? PgParticipant.openPglite(dir) : PgParticipant.openPgliteCloned(dir)
          )
          const gate = PgParticipant.makeGate()
          const after = yield* PgParticipant.makePglite({
            name: "bank-d",
            db: reopened,
            gate,
            lockTimeout: Duration.millis(300)
          })
          expect(gate.holder).toBeDefined()
          const other = yield* TransactionId.make
          const startedAt = Date.now()
          const refused = yield* after
            .commitOnePhase(ctxOf(other, "bank-d"), adjust(1, -1))
            .pipe(Effect.timeout(Duration.seconds(3)))
          expect(Date.now() - startedAt).toBeLessThan(2_000)
          expect(refused._tag).toBe("No")
          if (refused._tag === "No") expect(refused.sqlState).toBe("55P03")

          const report = yield* PgRecovery.run({
            participants: [after],
            log,
            options: { orphanAfter: Duration.zero }
          })
          expect(report.branchesCommitted).toBe(1)
          expect(gate.holder).toBeUndefined()
          const again = yield* TransactionId.make
          const ok = yield* after
            .commitOnePhase(ctxOf(again, "bank-d"), adjust(1, -1))
            .pipe(Effect.timeout(Duration.seconds(3)))
          expect(ok._tag).toBe("Committed")
          expect(yield* balanceOf(reopened, 1)).toBe(92)
          expect(
            (yield* Effect.promise(() => reopened.query("select gid from pg_prepared_xacts"))).rows
          ).toEqual([])
          yield* Effect.promise(() => reopened.close())
        }).pipe(Effect.scoped),
      120_000
    )
  }

  it.live(
    "a prepared transaction that is not Accord's, found at start-up, makes branches busy instead of hanging the instance",
    () =>
      Effect.gen(function* () {
        const db = yield* Effect.promise(() => PgParticipant.openPglite())
        yield* Effect.promise(async () => {
          await db.exec(BANK_DDL)
          await db.exec("insert into accounts select g, 100 from generate_series(1, 3) g")
          await db.exec(
            "begin; update accounts set balance = 0 where id = 2; prepare transaction 'by-hand-1'"
          )
        })
        const gate = PgParticipant.makeGate()
        const p = yield* PgParticipant.makePglite({
          name: "bank-e",
          db,
          gate,
          lockTimeout: Duration.millis(300)
        })
        // Not Accord's: recovery leaves it alone.
        expect(yield* p.inDoubt).toEqual([])
        const txId = yield* TransactionId.make
        const vote = yield* p
          .commitOnePhase(ctxOf(txId, "bank-e"), adjust(2, 1))
          .pipe(Effect.timeout(Duration.seconds(3)))
        expect(vote._tag).toBe("No")
        if (vote._tag === "No") expect(vote.reason).toContain("by-hand-1")
        // Resolved by hand, the next scan (recovery's) sees it gone and frees the gate.
        yield* Effect.promise(() => db.exec("rollback prepared 'by-hand-1'"))
        expect(yield* p.inDoubt).toEqual([])
        expect(gate.holder).toBeUndefined()
        const again = yield* TransactionId.make
        const ok = yield* p
          .commitOnePhase(ctxOf(again, "bank-e"), adjust(2, 1))
          .pipe(Effect.timeout(Duration.seconds(3)))
        expect(ok._tag).toBe("Committed")
        yield* Effect.promise(() => db.close())
      }),
    60_000
  )
})
