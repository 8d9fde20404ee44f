import { Either } from "effect"
import { describe, expect, it } from "vitest"
import * as Modes from "../src/Modes.js"
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

describe("benchmark modes", () => {
  const mode = (name: string, optIn?: boolean): Modes.Mode => ({
    name,
    backend: "postgres",
    ...(optIn === undefined ? {} : { optIn }),
    open: () => Promise.reject(new Error("not opened here"))
  })
  const all = [mode("raw2pc"), mode("accord2pc"), mode("accord-calls-by-hand", true)]

  it("runs every mode but the opt-in ones by default", () => {
    expect(Modes.select(all, undefined).map((m) => m.name)).toEqual(["raw2pc", "accord2pc"])
  })

  it("runs an opt-in mode when --modes names it", () => {
    expect(Modes.select(all, ["raw2pc", "accord-calls-by-hand"]).map((m) => m.name)).toEqual([
      "raw2pc",
      "accord-calls-by-hand"
    ])
  })

  it("--help states the defaults the parser applies", () => {
    const options = Either.getOrThrow(parse())
    expect(Options.usage).toContain(
      `--duration S        seconds measured per cell (default ${options.duration})`
    )
    expect(Options.usage).toContain(
      `--warmup S          warm-up seconds per cell (default ${options.warmup})`
    )
    expect(Options.usage).toContain(`(default ${options.rounds})`)
  })
})
