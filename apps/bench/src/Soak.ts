/**
 * `--soak S`: accord2pc at a fixed concurrency for S seconds, sampling the process's RSS and heap
 * every second, to show whether memory grows with the number of transactions.
 *
 * @since 0.1.0
 */
import * as Modes from "./Modes.js"
import type * as Server from "./Server.js"

const mb = (bytes: number) => Math.round((bytes / 2 ** 20) * 10) / 10

/** Least-squares slope of `ys` over `xs`. */
const slope = (xs: ReadonlyArray<number>, ys: ReadonlyArray<number>) => {
  const n = xs.length
  if (n < 2) return 0
  const mx = xs.reduce((s, x) => s + x, 0) / n
  const my = ys.reduce((s, y) => s + y, 0) / n
  let num = 0
  let den = 0
  for (let i = 0; i < n; i++) {
    num += (xs[i]! - mx) * (ys[i]! - my)
    den += (xs[i]! - mx) ** 2
  }
  return den === 0 ? 0 : num / den
}

/**
 * Runs the soak.
 * @since 0.1.0
 */
export const run = async (
  dbs: Server.Databases,
  seconds: number,
  concurrency: number,
  log: (line: string) => void
) => {
  const mode = Modes.accordModes(dbs).find((m) => m.name === "accord2pc")!
  const instance = await mode.open(concurrency)
  const samples: Array<{ t: number; rssMb: number; heapMb: number; transactions: number }> = []
  let done = 0
  let errors = 0
  const started = performance.now()
  const end = started + seconds * 1000
  // With `node --expose-gc`, a full collection before each sample shows the retained heap rather
  // than whatever garbage the collector has not reached yet.
  const gc = (globalThis as { gc?: () => void }).gc
  const sample = () => {
    gc?.()
    const m = process.memoryUsage()
    samples.push({
      t: Math.round((performance.now() - started) / 100) / 10,
      rssMb: mb(m.rss),
      heapMb: mb(m.heapUsed),
      transactions: done
    })
  }
  sample()
  const timer = setInterval(() => {
    sample()
    const last = samples[samples.length - 1]!
    if (samples.length % 15 === 0)
      log(`soak: ${last.t} s, ${done} tx, RSS ${last.rssMb} MB, heap ${last.heapMb} MB`)
  }, 1000)
  try {
    await Promise.all(
      Array.from({ length: concurrency }, async () => {
        while (performance.now() < end) {
          try {
            await instance.tx()
            done++
          } catch {
            errors++
          }
        }
      })
    )
  } finally {
    clearInterval(timer)
    sample()
    await instance.close()
  }
  // The first 10% is warm-up (JIT, pools, caches); the trend is read over the rest.
  const steady = samples.slice(Math.floor(samples.length / 10))
  const xs = steady.map((s) => s.t / 60)
  return {
    gcBeforeSample: gc !== undefined,
    seconds,
    concurrency,
    transactions: done,
    errors,
    tps: Math.round(done / seconds),
    rssStartMb: samples[0]!.rssMb,
    rssAfterWarmupMb: steady[0]!.rssMb,
    rssEndMb: samples[samples.length - 1]!.rssMb,
    rssMaxMb: Math.max(...samples.map((s) => s.rssMb)),
    rssSlopeMbPerMinute:
      Math.round(
        slope(
          xs,
          steady.map((s) => s.rssMb)
        ) * 100
      ) / 100,
    heapSlopeMbPerMinute:
      Math.round(
        slope(
          xs,
          steady.map((s) => s.heapMb)
        ) * 100
      ) / 100,
    samples
  }
}
