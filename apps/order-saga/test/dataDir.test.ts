/**
 * Where the demo keeps its data, and what an existing database takes from the command line (found
 * by a review, 2026-12-07):
 * - an explicit --data-dir runs PGlite even when ACCORD_PG_URL is set (it was ignored without a word);
 * - the PGlite template folder is written inside --data-dir (it went to the data dir's parent);
 * - --decline-rate applies to the customers of an existing database (they kept their old cards).
 */
import { existsSync, mkdtempSync, rmSync } from "node:fs"
import { tmpdir } from "node:os"
import { join } from "node:path"
import { afterAll, describe, expect, it } from "vitest"
import * as Cli from "../src/Cli.js"
import { dbTarget, defaultFaults } from "../src/Config.js"
import * as Database from "../src/Database.js"
import * as Services from "../src/Services.js"
import { testConfig } from "./support/config.js"

const envUrl = { ACCORD_PG_URL: "postgres://postgres@127.0.0.1:5432/postgres" }

describe("--data-dir and ACCORD_PG_URL", () => {
  it("an explicit --data-dir runs PGlite, whatever ACCORD_PG_URL says", () => {
    const config = Cli.parse(["--data-dir", "/tmp/accord-saga-x"], envUrl)
    expect(config?.pgUrl).toBeUndefined()
    expect(config?.dataRoot).toBe("/tmp/accord-saga-x")
  })

  it("without --data-dir, ACCORD_PG_URL is the default server", () => {
    expect(Cli.parse([], envUrl)?.pgUrl).toBe(envUrl.ACCORD_PG_URL)
  })

  it("--pg beside --data-dir is still refused", () => {
    expect(() => Cli.parse(["--pg", envUrl.ACCORD_PG_URL, "--data-dir", "/tmp/x"], {})).toThrow(
      Cli.UsageError
    )
  })
})

describe("PGlite folders", () => {
  const outer = mkdtempSync(join(tmpdir(), "accord-saga-datadir-"))
  afterAll(() => rmSync(outer, { recursive: true, force: true }))

  it("writes nothing outside --data-dir", { timeout: 120_000 }, async () => {
    const dataRoot = join(outer, "data")
    const config = testConfig({ name: "datadir", dataRoot })
    await Database.ensure(dbTarget(config, "orders"), false)
    expect(existsSync(join(dataRoot, "orders", "PG_VERSION"))).toBe(true)
    expect(existsSync(join(outer, ".pglite-template"))).toBe(false)
    expect(existsSync(join(dataRoot, ".pglite-template", "PG_VERSION"))).toBe(true)
  })

  it("--decline-rate takes effect on an existing database", { timeout: 120_000 }, async () => {
    const dataRoot = join(outer, "decline")
    const declined = async (declineRate: number) => {
      const config = testConfig({
        name: "decline",
        dataRoot,
        customers: 20,
        faults: { ...defaultFaults, declineRate }
      })
      const target = dbTarget(config, "payment")
      await Database.ensure(target, false)
      const db = await Database.open(target)
      try {
        await Services.migrateAndSeed(db, "payment", config)
        const [row] = await db.query<{ n: number }>(
          "select count(*)::int as n from customers where card_status = 'declined'"
        )
        return row?.n
      } finally {
        await db.close()
      }
    }
    expect(await declined(0)).toBe(0)
    expect(await declined(0.5)).toBe(10)
    expect(await declined(0)).toBe(0)
  })
})
