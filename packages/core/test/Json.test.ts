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
