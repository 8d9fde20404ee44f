/**
 * ACCORD_PG_URL is a default, not an order (found by a review, 2026-12-07): an explicit --data-dir
 * runs embedded PGlite (it was silently ignored and the demo went to the server), and a server the
 * URL of ACCORD_PG_URL cannot reach is reported as ACCORD_PG_URL's, not as "--pg" that was never given.
 */
import { Either } from "effect"
import { describe, expect, it } from "vitest"
import * as Options from "../src/Options.js"
import { run } from "./support.js"

const envUrl = { ACCORD_PG_URL: "postgres://postgres@127.0.0.1:1/postgres" }

describe("--data-dir and ACCORD_PG_URL", { timeout: 60_000 }, () => {
  it("an explicit --data-dir runs PGlite, whatever ACCORD_PG_URL says", () => {
    const parsed = Options.parse(["--data-dir", "/tmp/accord-bank-x"], envUrl)
    expect(Either.isRight(parsed) && parsed.right.pg).toBe(undefined)
    expect(Either.isRight(parsed) && parsed.right.dataDir).toBe("/tmp/accord-bank-x")
  })

  it("without --data-dir, ACCORD_PG_URL is the default server", () => {
    const parsed = Options.parse([], envUrl)
    expect(Either.isRight(parsed) && parsed.right.pg).toBe(envUrl.ACCORD_PG_URL)
  })

  it("an unreachable ACCORD_PG_URL is named as such in the one-line error", async () => {
    const r = await run(["--transfers", "0"], envUrl)
    expect(r.code).not.toBe(0)
    const lines = r.stderr.trim().split("\n")
    expect(lines).toHaveLength(1)
    expect(lines[0]).toMatch(/fix ACCORD_PG_URL/)
    expect(lines[0]).not.toMatch(/another --pg URL/)
  })

  it("an unreachable --pg is named as such", async () => {
    const r = await run(["--transfers", "0", "--pg", envUrl.ACCORD_PG_URL])
    expect(r.stderr.trim().split("\n")[0]).toMatch(/pass another --pg URL/)
  })
})
