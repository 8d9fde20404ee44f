import { describe, expect, it } from "vitest"
import { summarise } from "../src/ProfileSummary.js"

/** A profile of one function `name` sampled `samples` times, 1 ms each. */
const profile = (name: string, samples: number) => ({
  nodes: [
    { id: 1, callFrame: { functionName: "(root)", url: "", lineNumber: -1 }, children: [2] },
    { id: 2, callFrame: { functionName: name, url: "file:///x/packages/core/src/A.js", lineNumber: 0 } }
  ],
  samples: Array.from({ length: samples }, () => 2),
  timeDeltas: Array.from({ length: samples }, () => 1000)
})

describe("ProfileSummary", () => {
  it("sums every profile it is given (node ids repeat across profiles)", () => {
    const out = summarise("a, b", [profile("first", 30), profile("second", 10)], 5)
    expect(out).toMatch(/75\.0%\s+30 ms\s+first/)
    expect(out).toMatch(/25\.0%\s+10 ms\s+second/)
    expect(out).toMatch(/100\.0%\s+40 ms\s+@accord\/core/)
  })

  it("lists at most `top` functions", () => {
    const out = summarise("a", [profile("first", 30), profile("second", 10)], 1)
    expect(out).toContain("first")
    expect(out).not.toContain("second")
  })
})
