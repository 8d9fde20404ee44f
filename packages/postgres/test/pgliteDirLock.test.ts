/**
 * PGlite does not lock its data directory: two processes (two runs of the bank demo on its default
 * `--data-dir`) each start their own server over the same files and overwrite each other's pages.
 * `openPglite` / `openPgliteCloned` on a folder refuse it while another live process (or another
 * open instance of this one) has it open, and take over the lock of a process that died.
 */
import { type ChildProcess, spawn } from "node:child_process"
import { mkdtempSync, rmSync } from "node:fs"
import { tmpdir } from "node:os"
import { join } from "node:path"
import { afterAll, beforeAll, describe, expect, it } from "vitest"
import * as PgParticipant from "../src/PgParticipant.js"

const dist = new URL("../dist/PgParticipant.js", import.meta.url).href

/** A child process holding `dir` open through Accord's opener; resolves once it is open. */
const holder = (dir: string) =>
  new Promise<ChildProcess>((resolve, reject) => {
    const child = spawn(
      process.execPath,
      [
        "--input-type=module",
        "-e",
        `const m = await import(${JSON.stringify(dist)}); await m.openPglite(${JSON.stringify(dir)}); console.log("open"); setInterval(() => {}, 1000)`
      ],
      { stdio: ["ignore", "pipe", "inherit"] }
    )
    child.stdout!.on("data", (d: Buffer) => {
      if (d.toString().includes("open")) resolve(child)
    })
    child.on("exit", (code) => reject(new Error(`holder exited with ${code}`)))
  })

describe("a PGlite data directory open in two places", () => {
  let root: string
  beforeAll(() => {
    root = mkdtempSync(join(tmpdir(), "accord-pglite-lock-"))
  })
  afterAll(() => rmSync(root, { recursive: true, force: true }))

  it("is refused while another process has it open, and taken over once that process is killed", async () => {
    const dir = join(root, "shared")
    const first = await PgParticipant.openPgliteCloned(dir)
    await first.close()
    const child = await holder(dir)
    try {
      const second = await PgParticipant.openPglite(dir).then(
        async (db) => {
          await db.close()
          return "opened"
        },
        (error: unknown) => String(error)
      )
      expect(second).toContain(`process ${child.pid}`)
      const cloned = await PgParticipant.openPgliteCloned(dir).then(
        async (db) => {
          await db.close()
          return "opened"
        },
        (error: unknown) => String(error)
      )
      expect(cloned).toContain("already open")
    } finally {
      const exited = new Promise((r) => child.once("exit", r))
      child.kill("SIGKILL")
      await exited
    }
    // Killed without closing: its lock is stale.
    const after = await PgParticipant.openPglite(dir)
    expect((await after.query("select 1 as one")).rows).toEqual([{ one: 1 }])
    // Open in this process: a second instance is refused too; closed, the folder reopens.
    await expect(PgParticipant.openPglite(dir)).rejects.toThrow(/already open/)
    await after.close()
    const again = await PgParticipant.openPglite(dir)
    await again.close()
  }, 120_000)
})
