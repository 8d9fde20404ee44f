import { describe, expect, it } from "vitest"
import * as Torture from "../src/Torture.js"

describe("the torture's verdict", () => {
  it("passes only a run that killed something and found no violation", () => {
    expect(Torture.verdict({ violations: 0, kills: 3 })).toBe("passed")
    // Every demo run finished before its kill time: only a clean run was checked, no crash.
    expect(Torture.verdict({ violations: 0, kills: 0 })).toBe("inconclusive")
    expect(Torture.verdict({ violations: 2, kills: 0 })).toBe("violations")
    expect(Torture.verdict({ violations: 1, kills: 5 })).toBe("violations")
  })
})
