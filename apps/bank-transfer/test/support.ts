/**
 * Runs the built demo (`dist/main.js`) as a child process, as a user would.
 */
import { type ChildProcess, spawn } from "node:child_process"
import { existsSync } from "node:fs"
import { fileURLToPath } from "node:url"

export const mainJs = fileURLToPath(new URL("../dist/main.js", import.meta.url))

if (!existsSync(mainJs)) {
  throw new Error(`${mainJs} is missing: run \`pnpm --filter @accord/bank-transfer build\` first`)
}

export interface DemoRun {
  readonly code: number | null
  readonly signal: NodeJS.Signals | null
  readonly stdout: string
  readonly stderr: string
}

export interface RecoverySummary {
  readonly branchesCommitted: number
  readonly branchesRolledBack: number
  readonly foreign: ReadonlyArray<{
    readonly participant: string
    readonly count: number
    readonly prepared: number
    readonly gids: ReadonlyArray<string>
  }>
}

export interface Summary {
  readonly ok: boolean
  readonly protocol: string
  readonly backend: string
  readonly committed: number
  readonly aborted: number
  readonly commitPending: number
  readonly unknown: number
  readonly abortReasons: {
    readonly insufficientFunds: number
    readonly lockTimeout: number
    readonly other: number
  }
  readonly expectedTotal: number
  readonly total: number
  readonly preparedLeft: number
  readonly preparedLeftGids: ReadonlyArray<{
    readonly bank: "a" | "b"
    readonly gid: string
    readonly owner: "demo" | "accord" | "other"
  }>
  readonly halfApplied: number
  readonly ledgerMismatches: number
  readonly seeded: boolean
  readonly recovery: {
    readonly atStart: RecoverySummary
    readonly atEnd: RecoverySummary
  }
  readonly tps: number
  readonly p50Ms: number
  readonly p99Ms: number
}

/** Starts the demo; the caller waits on `done` (or kills `child`). */
export const start = (args: ReadonlyArray<string>, env: NodeJS.ProcessEnv = {}) => {
  const child: ChildProcess = spawn(process.execPath, [mainJs, ...args], {
    env: { ...process.env, ACCORD_PG_URL: "", ...env },
    stdio: ["ignore", "pipe", "pipe"]
  })
  let stdout = ""
  let stderr = ""
  child.stdout!.on("data", (d: Buffer) => {
    stdout += d.toString()
  })
  child.stderr!.on("data", (d: Buffer) => {
    stderr += d.toString()
  })
  const done = new Promise<DemoRun>((resolve) => {
    child.on("close", (code, signal) => resolve({ code, signal, stdout, stderr }))
  })
  return { child, done }
}

export const run = (args: ReadonlyArray<string>, env?: NodeJS.ProcessEnv): Promise<DemoRun> =>
  start(args, env).done

/** The JSON summary: the last line of stdout. */
export const summaryOf = (r: DemoRun): Summary => {
  const lines = r.stdout.trim().split("\n")
  const last = lines[lines.length - 1] ?? ""
  try {
    return JSON.parse(last) as Summary
  } catch {
    throw new Error(
      `no JSON summary (exit ${r.code}); stdout: ${r.stdout.slice(-500)}; stderr: ${r.stderr.slice(-2000)}`
    )
  }
}
