/**
 * SIGTERM (or Ctrl-C) to the demo stops its service and orchestrator processes with one line and
 * no stack trace. The services used to print ERR_IPC_CHANNEL_CLOSED traces: they answered the
 * parent's disconnect by sending it a message (found by a review, 2026-12-07).
 */
import { execFileSync, spawn } from "node:child_process"
import { mkdtempSync, rmSync } from "node:fs"
import { tmpdir } from "node:os"
import { join } from "node:path"
import { describe, expect, it } from "vitest"

const main = join(import.meta.dirname, "..", "dist", "main.js")

const childrenOf = (pid: number): Array<number> => {
  try {
    return execFileSync("ps", ["-o", "pid=", "--ppid", String(pid)], { encoding: "utf8" })
      .split("\n")
      .filter((l) => l.trim() !== "")
      .map(Number)
  } catch {
    return []
  }
}

const alive = (pid: number): boolean => {
  try {
    process.kill(pid, 0)
    return true
  } catch {
    return false
  }
}

describe("the demo on SIGTERM", () => {
  for (const signal of ["SIGTERM", "SIGINT"] as const) {
    it(`stops its children quietly on ${signal}`, { timeout: 120_000 }, async () => {
      const dataDir = mkdtempSync(join(tmpdir(), "accord-saga-signal-"))
      try {
        const child = spawn(
          process.execPath,
          [main, "--data-dir", dataDir, "--orders", "2000", "--concurrency", "2", "--no-progress"],
          { env: { ...process.env, ACCORD_PG_URL: "" }, stdio: ["ignore", "pipe", "pipe"] }
        )
        let stderr = ""
        const placing = new Promise<void>((resolve) => {
          child.stderr.on("data", (d: Buffer) => {
            stderr += d.toString()
            if (stderr.includes("placing orders")) resolve()
          })
        })
        const exit = new Promise<number | null>((resolve) => child.on("exit", (code) => resolve(code)))
        await placing
        // "placing orders" is printed just before the orchestrator is forked.
        let workers = childrenOf(child.pid!)
        for (let waited = 0; workers.length < 5 && waited < 10_000; waited += 50) {
          await new Promise((resolve) => setTimeout(resolve, 50))
          workers = childrenOf(child.pid!)
        }
        expect(workers.length).toBe(5) // four services and the orchestrator
        child.kill(signal)
        const code = await exit
        // Let the children write whatever they would write after the parent is gone.
        await new Promise((resolve) => setTimeout(resolve, 1500))
        expect(stderr).not.toContain("ERR_IPC_CHANNEL_CLOSED")
        expect(stderr).not.toMatch(/\n\s+at /)
        const after = stderr.slice(stderr.indexOf("placing orders")).split("\n").slice(1)
        expect(after.filter((l) => l.trim() !== "")).toEqual([
          expect.stringMatching(new RegExp(`^order-saga: ${signal}`))
        ])
        expect(code).toBe(signal === "SIGTERM" ? 143 : 130)
        expect(workers.filter(alive)).toEqual([])
      } finally {
        rmSync(dataDir, { recursive: true, force: true })
      }
    })
  }
})
