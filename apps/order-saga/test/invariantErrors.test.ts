/**
 * A database error while the invariants are checked names its cause. A review (2026-12-07) saw the
 * demo end with `order-saga: Failed query: select ... params:` alone when a service database stopped
 * accepting connections: drizzle's message is the query text, the driver's (and its SQLSTATE) is its
 * cause, and only the message was printed.
 */
import { TestDatabase } from "@accord/postgres"
import postgres from "postgres"
import { afterAll, describe, expect, it } from "vitest"
import { dbTarget, serviceNames } from "../src/Config.js"
import * as Database from "../src/Database.js"
import * as Run from "../src/Run.js"
import { testConfig } from "./support/config.js"

const server = await TestDatabase.server()

describe.skipIf(server === undefined)("the invariant check on a database that refuses connections", () => {
  const adminUrl = server?.adminUrl ?? ""
  const config = testConfig({ name: "inverr", pgUrl: adminUrl, dbPrefix: `s22_os_inverr_${process.pid}_` })
  afterAll(async () => {
    const admin = postgres(adminUrl, { max: 1, onnotice: () => {} })
    try {
      await admin
        .unsafe(`alter database "${config.dbPrefix}orders" with allow_connections true`)
        .catch(() => {})
    } finally {
      await admin.end({ timeout: 5 })
    }
    for (const name of serviceNames) await TestDatabase.dropDatabase(adminUrl, `${config.dbPrefix}${name}`)
  })

  it("fails with the driver's message and SQLSTATE, not the query text alone", async () => {
    for (const name of serviceNames) await Database.ensure(dbTarget(config, name), true)
    const admin = postgres(adminUrl, { max: 1, onnotice: () => {} })
    try {
      await admin.unsafe(`alter database "${config.dbPrefix}orders" with allow_connections false`)
    } finally {
      await admin.end({ timeout: 5 })
    }
    const failure = await Run.checkInvariants(config).then(
      () => undefined,
      (error: unknown) => error
    )
    expect(failure).toBeInstanceOf(Run.DemoError)
    const message = (failure as Error).message
    expect(message).toMatch(/^checking the invariants failed: /)
    expect(message).toContain(`database "${config.dbPrefix}orders" is not currently accepting connections`)
    expect(message).toContain("[SQLSTATE 55000]")
    // main's one line for any error says the same.
    expect(Run.explain(failure)).toBe(message)
  })
})
