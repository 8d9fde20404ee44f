import { Either } from "effect"
import { describe, expect, it } from "vitest"
import * as Options from "../src/Options.js"

const parse = (...argv: ReadonlyArray<string>) => Options.parse(argv, {})

describe("benchmark options", () => {
  it("reads the operation count of --breakdown", () => {
    const options = Either.getOrThrow(parse("--", "--pg", "postgres://x/postgres", "--breakdown", "50"))
    expect(options.breakdown).toBe(50)
    expect(options.pg).toBe("postgres://x/postgres")
  })

  it("takes the default count for --breakdown given without one, last or before another flag", () => {
    expect(Either.getOrThrow(parse("--breakdown")).breakdown).toBe(Options.defaultBreakdown)
    const before = Either.getOrThrow(parse("--breakdown", "--json"))
    expect(before.breakdown).toBe(Options.defaultBreakdown)
    expect(before.json).toBe(true)
  })

  it("leaves the breakdown off unless asked for", () => {
    expect(Either.getOrThrow(parse("--pg", "postgres://x/postgres")).breakdown).toBeUndefined()
  })

  it("refuses a breakdown count that is not a positive integer", () => {
    for (const bad of ["0", "2.5", "many"]) {
      const parsed = parse("--breakdown", bad)
      expect(Either.isLeft(parsed) && parsed.left.message).toMatch(/--breakdown must be/)
    }
  })
})
