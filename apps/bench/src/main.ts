#!/usr/bin/env node
/**
 * `pnpm bench -- --pg URL [--duration S] [--json]`: Accord against hand-written SQL 2PC and local
 * commits, in one process run. See docs/performance.md.
 *
 * @since 0.1.0
 */
import { mkdirSync, writeFileSync } from "node:fs"
import { cpus, totalmem } from "node:os"
import { join, resolve } from "node:path"
import { Either } from "effect"
import postgres from "postgres"
import * as Breakdown from "./Breakdown.js"
import * as CoreOverhead from "./CoreOverhead.js"
import * as Modes from "./Modes.js"
import * as Options from "./Options.js"
import * as RecoveryBench from "./RecoveryBench.js"
import * as Report from "./Report.js"
import * as Runner from "./Runner.js"
import * as Server from "./Server.js"
import * as Soak from "./Soak.js"

const fail = (message: string, code: number): never => {
  process.stderr.write(`bench: ${message}\n`)
  process.exit(code)
}

const parsed = Options.parse(process.argv.slice(2), process.env)
if (Either.isLeft(parsed)) fail(parsed.left.message, 2)
const options = Either.getOrThrow(parsed)
if (options.help) {
  process.stdout.write(`${Options.usage}\n`)
  process.exit(0)
}
if (options.pg === undefined) fail("pass --pg URL (a PostgreSQL superuser URL) or set ACCORD_PG_URL", 2)
const adminUrl = options.pg!

const log = (line: string) => process.stderr.write(`${line}\n`)

const serverInfo = async () => {
  const admin = postgres(adminUrl, { max: 1, onnotice: () => {}, connect_timeout: 5 })
  try {
    const [row] = await admin<{ version: string; fsync: string; sc: string; method: string }[]>`
      SELECT current_setting('server_version') AS version, current_setting('fsync') AS fsync,
             current_setting('synchronous_commit') AS sc, current_setting('wal_sync_method') AS method`
    return row!
  } finally {
    await admin.end({ timeout: 5 })
  }
}

const writeResults = (name: string, files: Record<string, string>) => {
  const dir = resolve(options.out)
  mkdirSync(dir, { recursive: true })
  const written: Array<string> = []
  for (const [ext, text] of Object.entries(files)) {
    const path = join(dir, `${name}.${ext}`)
    writeFileSync(path, text)
    written.push(path)
  }
  return written
}

const stamp = new Date().toISOString().replace(/[:.]/g, "-")

const main = async () => {
  const info = await serverInfo().catch((e: unknown) =>
    fail(
      `cannot reach PostgreSQL (${e instanceof Error ? e.message.split("\n")[0] : String(e)}): check --pg`,
      1
    )
  )
  // Held until the process exits: a second run on the same databases is refused, not mixed in.
  await Server.claim(adminUrl, options.dbPrefix)
  const dbs = await Server.setup(adminUrl, options.dbPrefix)
  const meta = {
    date: new Date().toISOString(),
    node: process.version,
    cpus: `${cpus().length} x ${cpus()[0]?.model ?? "?"}`,
    memory: `${Math.round(totalmem() / 2 ** 30)} GiB`,
    postgres: `${info.version}, fsync=${info.fsync}, synchronous_commit=${info.sc}, wal_sync_method=${info.method}`,
    duration: `${options.warmup} s warm-up + ${options.duration} s measured per cell, in ${options.rounds} interleaved slices`
  }

  if (options.recovery !== undefined) {
    const result = await RecoveryBench.run(adminUrl, dbs, options.recovery, log)
    const files = writeResults(`recovery-${stamp}`, {
      json: `${JSON.stringify({ meta, ...result }, null, 2)}\n`
    })
    log(`wrote ${files.join(", ")}`)
    process.stdout.write(`${JSON.stringify({ kind: "recovery", meta, ...result })}\n`)
    return
  }
  if (options.breakdown !== undefined) {
    const result = await Breakdown.run(adminUrl, dbs, options.breakdown, log)
    const breakdownMeta = {
      ...meta,
      duration: `${result.operations} sequential operations per shape after ${result.warmup} of warm-up, in ${result.rounds} interleaved rounds`
    }
    const files = writeResults(`breakdown-${stamp}`, {
      json: `${JSON.stringify({ meta: breakdownMeta, ...result }, null, 2)}\n`
    })
    if (!options.json) process.stdout.write(Breakdown.markdown(result))
    log(`wrote ${files.join(", ")}`)
    if (options.json) {
      process.stdout.write(
        `${JSON.stringify({ kind: "breakdown", meta: breakdownMeta, ...result, files })}\n`
      )
    }
    return
  }
  if (options.soak !== undefined) {
    const result = await Soak.run(dbs, options.soak, options.soakConcurrency, log)
    const files = writeResults(`soak-${stamp}`, { json: `${JSON.stringify({ meta, ...result }, null, 2)}\n` })
    log(`wrote ${files.join(", ")}`)
    process.stdout.write(`${JSON.stringify({ kind: "soak", meta, ...result })}\n`)
    return
  }

  const all: ReadonlyArray<Modes.Mode> = [
    ...Modes.rawModes(dbs),
    ...Modes.accordModes(dbs),
    ...Modes.sagaModes(dbs),
    ...(options.pglite ? Modes.pgliteModes() : [])
  ]
  const modes = Modes.select(all, options.modes)
  const missing = Modes.missingModes()
  const coreOverhead = await CoreOverhead.measure()
  for (const o of coreOverhead)
    log(`core overhead: ${o.shape}: ${o.cpuMicrosPerTx} us CPU/tx, ${o.wallMicrosPerTx} us wall/tx`)
  const cells: Array<Runner.Cell> = []
  // Interleaved: at each concurrency, every mode runs a slice, then every mode again, `rounds`
  // times; a cell is the sum of its slices. The shared machine's bursts of load then fall on
  // all modes alike instead of on whichever mode happened to run during them.
  for (const c of options.concurrency) {
    const active = modes.filter((m) => !(m.backend === "pglite" && c > 8))
    const slices = new Map<string, Array<Runner.Slice>>(active.map((m) => [m.name, []]))
    for (let r = 0; r < options.rounds; r++) {
      for (const mode of active) {
        // PGlite instances take seconds to open: one slice for the whole cell.
        const whole = mode.backend === "pglite"
        if (whole && r > 0) continue
        // A slice that cannot run (the server restarting under us, say) is recorded as an error
        // of its cell; the run goes on with the other cells.
        const measured = await Runner.slice(mode, c, {
          warmupSeconds: whole ? options.warmup : options.warmup / options.rounds,
          seconds: whole ? options.duration : options.duration / options.rounds,
          adminUrl
        }).catch((e: unknown) => Runner.failedSlice(e))
        slices.get(mode.name)!.push(measured)
      }
    }
    for (const mode of active) {
      const cell = Runner.combine(mode, c, slices.get(mode.name)!, mode.backend === "postgres")
      cells.push(cell)
      log(
        `${mode.name.padEnd(18)} c=${String(c).padStart(2)}  ${String(cell.tps).padStart(7)} tps  p50 ${cell.p50Ms} ms  p99 ${cell.p99Ms} ms  wal ${cell.walSyncsPerTx}/tx  stmts ${cell.statementsPerTx}/tx${cell.errors > 0 ? `  errors ${cell.errors}: ${cell.firstError}` : ""}`
      )
    }
  }
  const baselines = new Map(modes.filter((m) => m.baseline !== undefined).map((m) => [m.name, m.baseline!]))
  const withRatios = Report.withRatios(cells, baselines)
  const targets = Report.targets(withRatios)
  const preparedLeft = await Server.preparedIn(adminUrl, [dbs.a, dbs.b])
  if (preparedLeft > 0) {
    // Reported in the summary, then not left holding slots and locks on the server.
    const rolledBack = await Server.rollBackLeftovers([dbs.a, dbs.b])
    log(`rolled back ${rolledBack} transactions left prepared in the benchmark's databases`)
  }
  const warnings = Report.warnings(withRatios, preparedLeft)
  for (const w of warnings) log(`WARNING: ${w}`)
  const overheadMd = `\nCoordinator alone (instant participants, no database, sequential):\n\n| shape | CPU us/tx | wall us/tx |\n|---|---:|---:|\n${coreOverhead.map((o) => `| ${o.shape} | ${o.cpuMicrosPerTx} | ${o.wallMicrosPerTx} |`).join("\n")}\n`
  const md = `# Accord benchmark, ${meta.date}\n\n${Report.markdown(withRatios, meta, { preparedLeft })}${overheadMd}${
    missing.length > 0 ? `\nNot measured: ${missing.map((m) => `${m.mode} (${m.reason})`).join("; ")}\n` : ""
  }`
  const errors = withRatios.reduce((acc, c) => acc + c.errors, 0)
  const summary = {
    kind: "bench",
    meta,
    warnings,
    errors,
    preparedLeft,
    cells: withRatios,
    targets,
    coreOverhead,
    missing
  }
  const files = writeResults(`bench-${stamp}`, {
    md,
    json: `${JSON.stringify(summary, null, 2)}\n`,
    svg: Report.svg(withRatios, `Accord vs hand-written 2PC, tps by concurrency (${meta.date.slice(0, 16)})`)
  })
  writeResults("latest", {
    md,
    json: `${JSON.stringify(summary, null, 2)}\n`,
    svg: Report.svg(withRatios, `Accord vs hand-written 2PC, tps by concurrency (${meta.date.slice(0, 16)})`)
  })
  if (!options.json) process.stdout.write(md)
  log(`wrote ${files.join(", ")}`)
  if (options.json) process.stdout.write(`${JSON.stringify({ ...summary, files })}\n`)
}

main().then(
  () => process.exit(0),
  (e: unknown) => {
    if (process.env.ACCORD_DEBUG === "1") console.error(e)
    fail(e instanceof Error ? e.message.split("\n")[0]! : String(e), 1)
  }
)
