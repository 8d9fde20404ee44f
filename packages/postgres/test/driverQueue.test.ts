/**
 * postgres.js 3.4.9 keeps a pool's connection lists (idle, busy, reserved, ...) in a queue whose
 * `shift()` leaves a dead slot behind and only resets once the queue is empty. A pool that always
 * keeps an idle connection (PgParticipant keeps one free for COMMIT PREPARED by design) never
 * empties its idle list, so the list grows by a slot per query or reserve for ever, and every
 * `remove()` scans all of it: measured here, 13,000 -> 8,000 queries/s and +1.7 MB over 200,000
 * queries, and the same heap growth in the 32-client soak. Accord ships a patch
 * (`patches/postgres@3.4.9.patch`, applied through pnpm's `patchedDependencies`); this test fails
 * if the installed postgres.js lacks it, in its ESM and CommonJS builds alike.
 */
import { createRequire } from "node:module"
import { dirname, join } from "node:path"
import { pathToFileURL } from "node:url"
import v8 from "node:v8"
import vm from "node:vm"
import { describe, expect, it } from "vitest"

interface DriverQueue {
  readonly length: number
  push(x: unknown): unknown
  shift(): unknown
}
type MakeQueue = () => DriverQueue

const require = createRequire(import.meta.url)
// The package's `exports` hide its files; its CommonJS entry is `cjs/src/index.js`.
const root = join(dirname(require.resolve("postgres")), "..", "..")

v8.setFlagsFromString("--expose-gc")
const gc = vm.runInNewContext("gc") as () => void

const heapAfterGc = () => {
  gc()
  gc()
  return process.memoryUsage().heapUsed
}

describe("the postgres.js pool queue (patched)", () => {
  it("a queue that never empties keeps its size however many items pass through it", async () => {
    const esm = ((await import(pathToFileURL(join(root, "src", "queue.js")).href)) as { default: MakeQueue })
      .default
    const cjs = require(join(root, "cjs", "src", "queue.js")) as MakeQueue
    for (const Queue of [esm, cjs]) {
      const queue = Queue()
      queue.push(-1)
      const before = heapAfterGc()
      for (let i = 0; i < 1_000_000; i++) {
        queue.push(i)
        queue.shift()
      }
      const grown = heapAfterGc() - before
      expect(queue.length).toBe(1)
      expect(queue.shift()).toBe(999_999)
      // Unpatched: a million dead slots, about 8 MB. Patched: at most a few hundred.
      expect(grown).toBeLessThan(2 * 1024 * 1024)
    }
  })
})
