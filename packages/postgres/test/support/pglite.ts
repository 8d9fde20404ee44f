/**
 * Shared set-up of the PGlite participant suites: two bank instances (accounts 1..10 holding 100
 * each) and a transaction-log instance, open for the tests of the enclosing `describe`.
 */
import type { PGlite } from "@electric-sql/pglite"
import { afterAll, beforeAll, expect } from "@effect/vitest"
import * as PgParticipant from "../../src/PgParticipant.js"
import { BANK_DDL } from "./pg2pc.js"

/** Creates `accounts` 1..10, each holding 100. */
export const seedBank = async (db: PGlite) => {
  await db.exec(BANK_DDL)
  await db.exec("insert into accounts (id, balance) select g, 100 from generate_series(1, 10) g")
}

/** The instances of a suite; set before its tests run. */
export interface PgliteBanks {
  readonly dbA: PGlite
  readonly dbB: PGlite
  readonly dbLog: PGlite
}

/**
 * Opens two seeded bank instances and a log instance before the enclosing `describe`'s tests; after
 * them, checks that neither bank has a transaction left prepared and closes all three.
 */
export const usePgliteBanks = (): PgliteBanks => {
  const banks = {} as { dbA: PGlite; dbB: PGlite; dbLog: PGlite }

  beforeAll(async () => {
    banks.dbA = await PgParticipant.openPglite()
    banks.dbB = await PgParticipant.openPglite()
    banks.dbLog = await PgParticipant.openPglite()
    await seedBank(banks.dbA)
    await seedBank(banks.dbB)
  }, 60_000)

  afterAll(async () => {
    for (const db of [banks.dbA, banks.dbB]) {
      expect((await db.query("select gid from pg_prepared_xacts")).rows).toEqual([])
      await db.close()
    }
    await banks.dbLog.close()
  })

  return banks
}
