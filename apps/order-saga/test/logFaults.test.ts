/**
 * The orchestrator over a saga log that fails now and then (a terminated backend, a server that
 * restarted). A review (2026-12-07) terminated the saga database's connections during a run: the
 * orders whose `log.start` failed were only logged as a warning and then lost (in neither the saga
 * log nor the orders database; the run said `pending 4` with every invariant holding), and one failed
 * `log.list` in the final wait ended the run with sagas still running. Here the log is the in-memory
 * one behind a wrapper that fails chosen calls; the services are real (PGlite), in this process.
 */
import { SagaLog, TransactionError } from "@accord/core"
import { Effect } from "effect"
import { afterAll, beforeAll, describe, expect, it } from "vitest"
import { dbTarget, type RunConfig, serviceNames } from "../src/Config.js"
import * as Database from "../src/Database.js"
import type { Endpoint } from "../src/Http.js"
import * as Orchestrator from "../src/Orchestrator.js"
import * as Services from "../src/Services.js"
import { dropDatabases, testConfig } from "./support/config.js"

type Log = SagaLog.SagaLog["Type"]

const dropped = (operation: string, sagaId?: string) =>
  new TransactionError.LogError({
    operation,
    ...(sagaId === undefined ? {} : { txId: sagaId }),
    reason: "terminating connection due to administrator command"
  })

/** The log, with `start`, `load` and `list` failing while `fails` says so (counting calls per saga). */
const flaky = (
  log: Log,
  fails: {
    readonly start?: (sagaId: string, call: number) => boolean
    readonly load?: (sagaId: string, call: number) => boolean
    readonly list?: (call: number) => boolean
  }
): Log => {
  const calls = new Map<string, number>()
  const count = (key: string) => {
    const n = (calls.get(key) ?? 0) + 1
    calls.set(key, n)
    return n
  }
  return {
    ...log,
    start: (record, lease) =>
      Effect.suspend(() =>
        fails.start?.(record.sagaId, count(`start ${record.sagaId}`))
          ? Effect.fail(dropped("start", record.sagaId))
          : log.start(record, lease)
      ),
    load: (sagaId) =>
      Effect.suspend(() =>
        fails.load?.(sagaId, count(`load ${sagaId}`))
          ? Effect.fail(dropped("load", sagaId))
          : log.load(sagaId)
      ),
    list: (options) =>
      Effect.suspend(() => (fails.list?.(count("list")) ? Effect.fail(dropped("list")) : log.list(options)))
  }
}

describe("the orchestrator over a saga log that fails now and then", () => {
  const base = testConfig({
    name: "logfaults",
    orders: 4,
    concurrency: 4,
    faults: { declineRate: 0, slowRate: 0, slowMillis: 0, duplicateRate: 0, dropRate: 0 }
  })
  const services: Services.RunningService[] = []
  let endpoints: Record<(typeof serviceNames)[number], Endpoint>
  let runs = 0

  beforeAll(async () => {
    for (const name of serviceNames) await Database.ensure(dbTarget(base, name), true)
    for (const name of serviceNames) services.push(await Services.start(name, base))
    endpoints = Object.fromEntries(
      services.map((s) => [s.name, { service: s.name, baseUrl: `http://127.0.0.1:${s.port}` }])
    ) as typeof endpoints
  })
  afterAll(async () => {
    for (const s of services) await s.close()
    await dropDatabases(base)
  })

  /** A run of its own (own order ids) over the in-memory log wrapped by `wrap`. */
  const place = (wrap: (log: Log) => Log) => {
    const config: RunConfig = { ...base, runId: `${base.runId}x${++runs}` }
    return {
      orders: Orchestrator.planOf(config),
      tally: Effect.runPromise(
        Effect.gen(function* () {
          const log = yield* SagaLog.makeMemory
          return yield* Orchestrator.place(config, endpoints, {}).pipe(
            Effect.provideService(SagaLog.SagaLog, wrap(log))
          )
        })
      )
    }
  }

  it("tries a start the log did not record again: every order runs to its end", async () => {
    // The first start of every saga fails, as when the log's connections were terminated.
    const { tally } = place((log) => flaky(log, { start: (_, call) => call === 1 }))
    const t = await tally
    expect(t.notStarted).toEqual([])
    expect(t.pending).toBe(0)
    expect(t.completed + t.compensated).toBe(base.orders)
  })

  it("reports an order whose start the log never records as not started, not as lost", async () => {
    let first: string | undefined
    const run = place((log) => flaky(log, { start: (sagaId) => sagaId === first }))
    first = run.orders[0]!.orderId
    const t = await run.tally
    expect(t.notStarted).toEqual([
      { orderId: first, cause: expect.stringMatching(/log start for .* failed/) }
    ])
    expect(t.pending).toBe(0)
    expect(t.completed + t.compensated).toBe(base.orders - 1)
  })

  it("tries a failed poll of the final wait again: the run does not end with sagas running", async () => {
    const { tally } = place((log) => flaky(log, { list: (call) => call <= 2 }))
    const t = await tally
    expect(t.notStarted).toEqual([])
    expect(t.pending).toBe(0)
    expect(t.completed + t.compensated).toBe(base.orders)
  })

  it("tries its other failed reads of the log again (which orders it knows, the tally)", async () => {
    // Every saga's first load fails (on the way in), and its second (the tally).
    const { tally } = place((log) => flaky(log, { load: (_, call) => call <= 2 }))
    const t = await tally
    expect(t.notStarted).toEqual([])
    expect(t.pending).toBe(0)
    expect(t.completed + t.compensated).toBe(base.orders)
  })
})
