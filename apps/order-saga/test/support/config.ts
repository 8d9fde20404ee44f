/**
 * Run configurations for the tests: small, fast, and isolated (own PGlite folder or own databases).
 */
import { mkdirSync, mkdtempSync, rmSync } from "node:fs"
import { tmpdir } from "node:os"
import { join } from "node:path"
import { TestDatabase } from "@accord/postgres"
import { defaultFaults, type RunConfig, serviceNames } from "../../src/Config.js"

const testRoot = join(tmpdir(), "accord-order-saga-tests")
mkdirSync(testRoot, { recursive: true })

export const testConfig = (overrides: Partial<RunConfig> & { readonly name: string }): RunConfig => {
  const { name, ...rest } = overrides
  return {
    orders: 16,
    concurrency: 8,
    fresh: true,
    seed: 7,
    runId: `t${Date.now().toString(36)}`,
    killOrchestratorAfter: undefined,
    retryStuck: false,
    json: true,
    progress: false,
    pgUrl: undefined,
    dataRoot: mkdtempSync(join(testRoot, `${name}-`)),
    dbPrefix: `accord_t_order_${name}_`,
    customers: 20,
    stockBase: 4,
    faults: { ...defaultFaults, slowRate: 0.1, slowMillis: 6000 },
    timing: { stepTimeoutMillis: 2500, retries: 4, retryBaseMillis: 20, leaseMillis: 3000 },
    ...rest
  }
}

/** Drops the databases of a run configuration (or removes its PGlite folders). */
export const dropDatabases = async (config: RunConfig): Promise<void> => {
  rmSync(config.dataRoot, { recursive: true, force: true })
  if (config.pgUrl === undefined) return
  for (const name of [...serviceNames, "saga"])
    await TestDatabase.dropDatabase(config.pgUrl, `${config.dbPrefix}${name}`)
}
