/**
 * A saga stuck in an earlier run (a compensation gave up) and `--retry-stuck`. A review (2026-12-07)
 * found no way to clear one: once the payment database refused connections long enough for a refund
 * to give up, every later run exited 1 "invariants VIOLATED" (the stuck order stays pending) while its
 * own tally said stuck 0, and nothing said why. Now the summary names the earlier run's stuck sagas and
 * how to clear them, and `--retry-stuck` retries them (`Saga.retryStuck`) before the run.
 *
 * The same runs show two more of that review's findings: the orchestrator's log lines reach stderr
 * (its stdout was ignored, and Effect's logger writes there) while stdout stays one JSON line, and the
 * summary's header names the databases by their `--db-prefix` (it said `accord_order_*`).
 *
 * The stuck saga is made with the real saga definition and services, but a payment endpoint that
 * answers every charge "in doubt" (503) and refuses every refund (409): the charge is given up in doubt,
 * its refund refused for good, and the saga ends Stuck in its compensation.
 *
 * A later review (2026-12-07) found `--retry-stuck` with `--kill-orchestrator-after` lost the retries
 * from the report (`retriedStuck: []`, no table line: only the last orchestrator's tally was kept),
 * and the restarted orchestrator retried every stuck saga again. Now the first orchestrator alone
 * retries and tells each result as it comes; the summary labels the stuck sagas it did not clear
 * "STUCK (not this run)" (they may be a concurrent run's, not an earlier one's).
 */
import { execFile } from "node:child_process"
import { join } from "node:path"
import { Saga, SagaLog } from "@accord/core"
import { PgSagaLog, TestDatabase } from "@accord/postgres"
import { Effect, Schedule } from "effect"
import { afterAll, describe, expect, it } from "vitest"
import { dbTarget, type RunConfig, serviceNames } from "../src/Config.js"
import * as Database from "../src/Database.js"
import * as Http from "../src/Http.js"
import * as Orchestrator from "../src/Orchestrator.js"
import * as OrderSaga from "../src/OrderSaga.js"
import * as Services from "../src/Services.js"
import { testConfig } from "./support/config.js"

const server = await TestDatabase.server()
const main = join(import.meta.dirname, "..", "dist", "main.js")

const demo = (args: ReadonlyArray<string>) =>
  new Promise<{ code: number | null; stdout: string; stderr: string }>((resolve) => {
    execFile(process.execPath, [main, ...args], { timeout: 240_000 }, (error, stdout, stderr) =>
      resolve({ code: error === null ? 0 : ((error as { code?: number }).code ?? null), stdout, stderr })
    )
  })

/** A saga of an earlier run, left Stuck in the compensation of charge-payment, in `config`'s saga log. */
const stuckSaga = async (config: RunConfig): Promise<{ sagaId: string; outcome: Saga.Outcome }> => {
  const services: Services.RunningService[] = []
  const payment = await Http.serve({
    handlers: {
      charge: async () => Http.inDoubt("the card network did not answer"),
      refund: async () => ({ status: 409, body: { error: "refund_refused", message: "refunds are closed" } })
    },
    dropRate: 0,
    random: Math.random
  })
  const saga = await Database.open(dbTarget(config, "saga"))
  try {
    for (const name of ["orders", "inventory", "shipping"] as const)
      services.push(await Services.start(name, config))
    const endpoint = (service: (typeof serviceNames)[number], port: number) => ({
      service,
      baseUrl: `http://127.0.0.1:${port}`
    })
    const definition = OrderSaga.make(
      {
        endpoints: {
          orders: endpoint("orders", services[0]!.port),
          inventory: endpoint("inventory", services[1]!.port),
          payment: endpoint("payment", payment.port),
          shipping: endpoint("shipping", services[2]!.port)
        },
        duplicateRate: 0,
        random: Math.random
      },
      { ...config.timing, retries: 0 }
    )
    const [order] = Orchestrator.planOf({ ...config, runId: "earlier" })
    const outcome = await Effect.runPromise(
      Effect.gen(function* () {
        const log = yield* PgSagaLog.make(saga.driver.kind === "postgres" ? saga.driver.sql : saga.driver.db)
        return yield* Saga.run(definition, order!, { sagaId: order!.orderId }).pipe(
          Effect.provideService(SagaLog.SagaLog, log)
        )
      })
    )
    return { sagaId: order!.orderId, outcome }
  } finally {
    for (const s of services) await s.close()
    await payment.close()
    await saga.close()
  }
}

/**
 * A saga of a type the order saga's registry does not know, left Stuck in `config`'s saga log: its
 * compensation fails every time (no retries) after its second step failed. `--retry-stuck` cannot
 * retry it ("not retried": no definition), so every orchestrator that retried would report it.
 */
const foreignStuckSaga = async (config: RunConfig, sagaId: string): Promise<Saga.Outcome> => {
  const definition = Saga.make({
    name: "foreign-saga",
    steps: [
      Saga.step({
        name: "hold",
        action: () => Effect.succeed({ held: true }),
        compensation: () => Effect.fail(new Saga.StepTransientError({ reason: "the release is refused" })),
        compensationRetry: Schedule.recurs(0)
      }),
      Saga.step({
        name: "refuse",
        action: () => Effect.fail(new Saga.StepBusinessError({ reason: "refused" }))
      })
    ]
  })
  const saga = await Database.open(dbTarget(config, "saga"))
  try {
    return await Effect.runPromise(
      Effect.gen(function* () {
        const log = yield* PgSagaLog.make(saga.driver.kind === "postgres" ? saga.driver.sql : saga.driver.db)
        return yield* Saga.run(definition, {}, { sagaId }).pipe(Effect.provideService(SagaLog.SagaLog, log))
      })
    )
  } finally {
    await saga.close()
  }
}

/** The demo's command line for `orders` orders on `prefix`'s databases: no faults, short leases. */
const demoArgs = (adminUrl: string, prefix: string, config: RunConfig, orders: number) => [
  "--pg",
  adminUrl,
  "--db-prefix",
  prefix,
  "--orders",
  String(orders),
  "--seed",
  String(config.seed),
  "--customers",
  String(config.customers),
  "--json",
  "--decline-rate",
  "0",
  "--slow-rate",
  "0",
  "--duplicate-rate",
  "0",
  "--drop-rate",
  "0",
  "--lease-ms",
  "3000"
]

/** Drops the services' and the saga log's databases of `prefix`. */
const dropDemoDatabases = async (adminUrl: string, prefix: string) => {
  for (const name of [...serviceNames, "saga"]) await TestDatabase.dropDatabase(adminUrl, `${prefix}${name}`)
}

describe.skipIf(server === undefined)("a saga stuck in an earlier run", () => {
  const adminUrl = server?.adminUrl ?? ""
  const prefix = `s22_os_stuck_${process.pid}_`
  const config = testConfig({
    name: "stuck",
    pgUrl: adminUrl,
    dbPrefix: prefix,
    orders: 2,
    faults: { declineRate: 0, slowRate: 0, slowMillis: 0, duplicateRate: 0, dropRate: 0 }
  })
  // The demo's flags for the same world (catalogue, customers) as `config`.
  const args = demoArgs(adminUrl, prefix, config, 2)
  afterAll(() => dropDemoDatabases(adminUrl, prefix))

  it(
    "is named in the next run's summary with how to clear it, and --retry-stuck clears it",
    { timeout: 600_000 },
    async () => {
      for (const name of [...serviceNames, "saga"] as const)
        await Database.ensure(dbTarget(config, name), true)
      const stuck = await stuckSaga(config)
      expect(stuck.outcome._tag).toBe("Stuck")
      if (stuck.outcome._tag === "Stuck") {
        expect(stuck.outcome.step).toBe("charge-payment")
        expect(stuck.outcome.phase).toBe("compensation")
      }

      // A run without the flag: its own orders end, the earlier stuck one keeps its order pending.
      const before = await demo(args)
      expect(before.code).toBe(1)
      const summary = JSON.parse(before.stdout.trim()) as Record<string, unknown>
      expect(summary.stuck).toBe(0)
      expect(summary.invariantsHold).toBe(false)
      expect(summary.earlierStuck).toEqual([
        { sagaId: stuck.sagaId, step: "charge-payment", cause: expect.any(String) }
      ])
      expect(before.stderr).toContain(`STUCK (not this run) ${stuck.sagaId} at charge-payment`)
      expect(before.stderr).toContain("--retry-stuck")
      expect(before.stderr).toContain(`PostgreSQL (${prefix}*)`)

      // With --retry-stuck the refund is retried (the real payment service: a refund before any
      // charge is a null compensation), the saga ends compensated and the invariants hold.
      const after = await demo([...args, "--retry-stuck"])
      const lines = after.stdout.trim().split("\n")
      expect(lines).toHaveLength(1)
      const json = JSON.parse(lines[0]!) as Record<string, unknown>
      expect(json.retriedStuck).toEqual([{ sagaId: stuck.sagaId, result: "compensated" }])
      expect(json.earlierStuck).toEqual([])
      expect(json.invariantsHold).toBe(true)
      expect(after.code).toBe(0)
      // The orchestrator's own log line (Effect's logger, in the child) reached stderr.
      expect(after.stderr).toMatch(
        new RegExp(`level=INFO .*message="--retry-stuck: saga ${stuck.sagaId}: compensated"`)
      )
    }
  )
})

describe.skipIf(server === undefined)("--retry-stuck with --kill-orchestrator-after", () => {
  const adminUrl = server?.adminUrl ?? ""
  const prefix = `s22_os2_retrykill_${process.pid}_`
  const config = testConfig({
    name: "retrykill",
    pgUrl: adminUrl,
    dbPrefix: prefix,
    orders: 4,
    faults: { declineRate: 0, slowRate: 0, slowMillis: 0, duplicateRate: 0, dropRate: 0 }
  })
  const args = demoArgs(adminUrl, prefix, config, 4)
  afterAll(() => dropDemoDatabases(adminUrl, prefix))

  it(
    "retries once per run, by the first orchestrator, and the report keeps its results",
    { timeout: 600_000 },
    async () => {
      for (const name of [...serviceNames, "saga"] as const)
        await Database.ensure(dbTarget(config, name), true)
      const stuck = await stuckSaga(config)
      expect(stuck.outcome._tag).toBe("Stuck")
      const foreignId = "foreign-earlier-1"
      const foreign = await foreignStuckSaga(config, foreignId)
      expect(foreign._tag).toBe("Stuck")

      const run = await demo([...args, "--retry-stuck", "--kill-orchestrator-after", "1"])
      const lines = run.stdout.trim().split("\n")
      expect(lines).toHaveLength(1)
      const json = JSON.parse(lines[0]!) as Record<string, unknown>
      expect(json.orchestratorKills).toBe(1)
      // The killed (first) orchestrator's retries are in the report, each once.
      const retried = json.retriedStuck as Array<{ sagaId: string; result: string }>
      expect([...retried].sort((a, b) => a.sagaId.localeCompare(b.sagaId))).toEqual([
        { sagaId: stuck.sagaId, result: "compensated" },
        { sagaId: foreignId, result: expect.stringMatching(/^not retried: /) }
      ])
      expect(run.stderr).toContain(`  --retry-stuck: ${stuck.sagaId} compensated`)
      // Only the first orchestrator retried: the restarted one found the foreign saga still stuck
      // and, retrying, logged it a second time.
      const logged = run.stderr.match(new RegExp(`message="--retry-stuck: saga ${foreignId}: `, "g")) ?? []
      expect(logged).toHaveLength(1)
      // The one it could not clear is named as not this run's.
      expect(json.earlierStuck).toEqual([{ sagaId: foreignId, step: "hold", cause: expect.any(String) }])
      expect(run.stderr).toContain(`STUCK (not this run) ${foreignId} at hold`)
      expect(json.stuck).toBe(0)
      expect(json.pending).toBe(0)
      expect(json.invariantsHold).toBe(true)
      expect(run.code).toBe(0)
    }
  )
})
