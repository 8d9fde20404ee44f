#!/usr/bin/env node
/**
 * `pnpm sim -- [--protocol <2pc|3pc|3pc-quorum|saga>] --seed N`      one seed, its trace and verdict
 * `pnpm sim -- [--protocol P] [--seeds N] [--from S] [--json] [--workers W] [--variant V] [--stop-after K]`
 *                                                                   N seeds, one JSON summary last
 * The protocol defaults to 2pc. Exit code 1 when any invariant is violated, 2 for a bad command line.
 */
import { availableParallelism } from "node:os"
import { Worker, isMainThread, parentPort, workerData } from "node:worker_threads"
import { parseArgs } from "node:util"
import * as Simulator from "../Simulator.js"

interface Job {
  readonly protocol: Simulator.Protocol
  readonly variant: Simulator.Variant
  readonly from: number
  readonly seeds: number
  readonly stopAfterFailures?: number
}

/** The variants each protocol runs: `correct`, and the deliberately broken ones it knows. */
const variantsOf: Readonly<Record<Simulator.Protocol, ReadonlyArray<Simulator.Variant>>> = {
  "2pc": ["correct", "commit-before-decision", "log-loses-decisions"],
  "3pc": ["correct"],
  "3pc-quorum": ["correct", "classic-under-partitions"],
  saga: ["correct", "saga-compensate-forward", "saga-skip-retry"]
}

const usage = `usage: sim [--protocol <${Simulator.protocols.join("|")}>] [--seed N | --seeds N [--from S]] [--json] [--trace]
           [--workers W] [--variant V] [--stop-after K]
  --protocol P    the protocol to simulate (default 2pc)
  --seed N        run one seed and print its trace and verdict (exit 1 on a violation)
  --seeds N       run seeds from..from+N-1 (default 1000) on W worker threads (default: every core);
                  JSON summary last; not with --seed
  --variant V     correct (default) or a deliberately broken variant of the protocol: commit-before-decision,
                  log-loses-decisions (2pc), saga-compensate-forward, saga-skip-retry (saga),
                  classic-under-partitions (3pc-quorum)
  --stop-after K  each worker stops after K failing seeds (to show a broken variant is caught)`

const runJob = (job: Job) =>
  Simulator.runMany({
    protocol: job.protocol,
    variant: job.variant,
    from: job.from,
    seeds: job.seeds,
    ...(job.stopAfterFailures === undefined ? {} : { stopAfterFailures: job.stopAfterFailures })
  })

const merge = (parts: ReadonlyArray<Simulator.Summary>, elapsedMillis: number) => {
  const sum = (pick: (p: Simulator.Summary) => Readonly<Record<string, number>>) => {
    const out: Record<string, number> = {}
    for (const p of parts) for (const [k, v] of Object.entries(pick(p))) out[k] = (out[k] ?? 0) + v
    return out
  }
  const seeds = parts.reduce((n, p) => n + p.seeds, 0)
  return {
    protocol: parts[0]!.protocol,
    variant: parts[0]!.variant,
    seeds,
    firstSeed: Math.min(...parts.map((p) => p.firstSeed)),
    violations: parts.reduce((n, p) => n + p.violations, 0),
    failingSeeds: parts.flatMap((p) => p.failingSeeds).sort((a, b) => a - b),
    violationKinds: sum((p) => p.violationKinds),
    faultsInjected: parts.reduce((n, p) => n + p.faultsInjected, 0),
    faults: sum((p) => p.faults),
    transactions: parts.reduce((n, p) => n + p.transactions, 0),
    elapsed: elapsedMillis / 1000,
    seedsPerSecond: Math.round(seeds / (elapsedMillis / 1000))
  }
}

/** A command line the simulator cannot run: its message and the usage, exit code 2. */
class UsageError extends Error {}

/** `text` as a whole number at least `min`, or undefined when the flag was not given. */
const wholeNumber = (flag: string, text: string | undefined, min: number): number | undefined => {
  if (text === undefined) return undefined
  if (!/^\d+$/.test(text) || Number(text) < min) {
    throw new UsageError(`--${flag} takes a whole number of at least ${min}, not ${JSON.stringify(text)}`)
  }
  return Number(text)
}

const parse = (argv: Array<string>) => {
  try {
    return parseArgs({
      args: argv,
      strict: true,
      options: {
        protocol: { type: "string", default: "2pc" },
        seed: { type: "string" },
        seeds: { type: "string" },
        from: { type: "string" },
        variant: { type: "string", default: "correct" },
        workers: { type: "string" },
        "stop-after": { type: "string" },
        json: { type: "boolean", default: false },
        trace: { type: "boolean", default: false },
        help: { type: "boolean", default: false }
      },
      allowPositionals: false
    })
  } catch (error) {
    throw new UsageError(error instanceof Error ? error.message : String(error))
  }
}

const main = async () => {
  // `pnpm sim -- --seed 1` hands the script a leading "--".
  const argv = process.argv.slice(2)
  if (argv[0] === "--") argv.shift()
  const { values } = parse(argv)
  if (values.help) {
    console.log(usage)
    return 0
  }
  const protocol = values.protocol as Simulator.Protocol
  if (!Simulator.protocols.includes(protocol)) {
    throw new UsageError(
      `unknown protocol ${JSON.stringify(protocol)}: one of ${Simulator.protocols.join(", ")}`
    )
  }
  const variant = values.variant as Simulator.Variant
  if (!variantsOf[protocol].includes(variant)) {
    throw new UsageError(
      `--variant ${JSON.stringify(variant)} is not a variant of ${protocol}: one of ${variantsOf[protocol].join(", ")}`
    )
  }
  if (values.seed !== undefined && (values.seeds !== undefined || values.from !== undefined)) {
    throw new UsageError("--seed runs one seed: it does not combine with --seeds or --from")
  }
  const seed = wholeNumber("seed", values.seed, 0)
  const seeds = wholeNumber("seeds", values.seeds, 1) ?? 1000
  const from = wholeNumber("from", values.from, 0) ?? 0
  const workersAsked = wholeNumber("workers", values.workers, 1)
  const stopAfter = wholeNumber("stop-after", values["stop-after"], 1)
  if (seed !== undefined) {
    const result = await Simulator.run({ protocol, seed, variant })
    if (values.json)
      console.log(JSON.stringify({ ...result, trace: values.trace ? result.trace : undefined }))
    else console.log(Simulator.format(result))
    return result.ok ? 0 : 1
  }
  const workers = Math.max(1, Math.min(workersAsked ?? availableParallelism(), seeds))
  const started = performance.now()
  const chunk = Math.ceil(seeds / workers)
  const jobs: Array<Job> = []
  for (let i = 0; i < workers; i++) {
    const start = from + i * chunk
    const count = Math.min(chunk, from + seeds - start)
    if (count > 0) {
      jobs.push({
        protocol,
        variant,
        from: start,
        seeds: count,
        ...(stopAfter === undefined ? {} : { stopAfterFailures: stopAfter })
      })
    }
  }
  const parts = await Promise.all(
    jobs.map(
      (job) =>
        new Promise<Simulator.Summary>((resolve, reject) => {
          // Effect allocates many short-lived objects: a larger young generation saves ~20% in GC.
          const worker = new Worker(new URL(import.meta.url), {
            workerData: job,
            resourceLimits: { maxYoungGenerationSizeMb: 192 }
          })
          worker.once("message", resolve)
          worker.once("error", reject)
        })
    )
  )
  const summary = merge(parts, performance.now() - started)
  if (!values.json) {
    for (const seed of summary.failingSeeds.slice(0, 3)) {
      console.log(Simulator.format(await Simulator.run({ protocol, seed, variant })))
      console.log()
    }
    if (summary.failingSeeds.length > 3)
      console.log(`... and ${summary.failingSeeds.length - 3} more failing seeds`)
  }
  console.log(JSON.stringify(summary))
  return summary.violations === 0 ? 0 : 1
}

if (isMainThread) {
  main().then(
    (code) => {
      process.exitCode = code
    },
    (error: unknown) => {
      if (error instanceof UsageError) console.error(`${error.message}\n${usage}`)
      else console.error(error)
      process.exitCode = 2
    }
  )
} else {
  runJob(workerData as Job).then((summary) => parentPort?.postMessage(summary))
}
