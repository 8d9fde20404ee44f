import { describe, expect, it } from "vitest"
import * as Json from "../src/Json.js"

describe("Json.roundTripProblem", () => {
  it("accepts what JSON gives back unchanged", () => {
    for (const v of [null, 0, -0, 1.5, "x", true, [], {}, [1, [2, { a: "b" }]], { "a-b": [null] }])
      expect(Json.roundTripProblem(v, "v")).toBeUndefined()
    const shared = { n: 1 }
    expect(Json.roundTripProblem({ a: shared, b: shared }, "v")).toBeUndefined()
    expect(Json.roundTripProblem(Object.create(null) as object, "v")).toBeUndefined()
  })

  it("names where a value would come back different", () => {
    const cyclic: Record<string, unknown> = {}
    cyclic.self = cyclic
    const holed = [1, 2, 3]
    delete holed[1]
    const indexed = Object.assign([1], { extra: true })
    const cases: ReadonlyArray<readonly [unknown, string]> = [
      [{ at: new Date(0) }, "v.at is a Date"],
      [{ n: 10n }, "v.n is a bigint"],
      [[1, Number.NaN], "v[1] is NaN"],
      [{ x: Number.POSITIVE_INFINITY }, "v.x is Infinity"],
      [{ u: undefined }, "v.u is undefined"],
      [{ "a b": () => 1 }, 'v["a b"] is a function'],
      [new Map(), "v is a Map"],
      [{ [Symbol("s")]: 1 }, "v has a symbol key"],
      [cyclic, "v.self is circular"],
      [holed, "v[1] is a hole"],
      [indexed, "v.extra is not an index"],
      [undefined, "v is undefined"]
    ]
    for (const [value, where] of cases) expect(Json.roundTripProblem(value, "v")).toContain(where)
  })
})

describe("strings PostgreSQL's jsonb cannot store", () => {
  const emoji = "\u{1F600}"
  const half = emoji.slice(0, 1)

  it("roundTripProblem refuses a NUL or a lone surrogate, in a value or a key, and says where", () => {
    expect(Json.roundTripProblem({ note: "a\u0000b" }, "v")).toContain("v.note holds a NUL character")
    expect(Json.roundTripProblem(["ok", `cut ${half}`], "v")).toContain("v[1] holds a lone UTF-16 surrogate")
    expect(Json.roundTripProblem(emoji.slice(1), "v")).toContain("v holds a lone UTF-16 surrogate")
    expect(Json.roundTripProblem({ [`k${half}`]: 1 }, "v")).toContain("its key holds a lone UTF-16 surrogate")
    expect(Json.roundTripProblem({ "k\u0000": 1 }, "v")).toContain("its key holds a NUL character")
    // Whole characters, escapes written as text and U+FFFD itself are fine.
    for (const v of [emoji, `${emoji}${emoji}`, "\\u0000", "\uFFFD", { [emoji]: emoji }])
      expect(Json.roundTripProblem(v, "v")).toBeUndefined()
  })

  it("text replaces each NUL and lone surrogate with U+FFFD and leaves other text as it is", () => {
    expect(Json.text(`declined: ${half} a\u0000b ${emoji}`)).toBe(`declined: \uFFFD a\uFFFDb ${emoji}`)
    expect(Json.text(`${emoji.slice(1)}${half}`)).toBe("\uFFFD\uFFFD")
    const plain = `no problem here ${emoji}`
    expect(Json.text(plain)).toBe(plain)
    expect(Json.roundTripProblem(Json.text(`x\u0000${half}`), "v")).toBeUndefined()
  })
})
