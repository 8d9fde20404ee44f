/**
 * Finds a PostgreSQL server for integration tests and creates throw-away databases on it.
 *
 * Order: `ACCORD_PG_URL` if set; else a testcontainers PostgreSQL started with
 * `max_prepared_transactions` when a Docker engine answers; else none, and the caller skips its
 * real-PostgreSQL tests, loudly. With `ACCORD_REQUIRE_PG=1` (CI), finding none is an error.
 *
 * @since 0.1.0
 */
import postgres from "postgres"

/**
 * A server to test against.
 * @since 0.1.0
 */
export interface TestServer {
  /** A superuser URL to the server's `postgres` database. */
  readonly adminUrl: string
  readonly source: "ACCORD_PG_URL" | "testcontainers"
}

let cached: Promise<TestServer | undefined> | undefined

const banner = (reason: string): void => {
  const line = "=".repeat(78)
  process.stderr.write(
    `\n${line}\n  REAL-POSTGRESQL TESTS SKIPPED: ${reason}\n  Set ACCORD_PG_URL=postgres://user@host:5432/postgres (a server with\n  max_prepared_transactions > 0) or start a Docker engine to run them.\n${line}\n\n`
  )
}

const startContainer = async (): Promise<TestServer | undefined> => {
  try {
    // Optional: only loaded when no URL is given.
    const tc = await import("testcontainers")
    await tc.getContainerRuntimeClient()
    const container = await new tc.GenericContainer("postgres:16-alpine")
      .withEnvironment({ POSTGRES_HOST_AUTH_METHOD: "trust" })
      .withCommand(["postgres", "-c", "max_prepared_transactions=64", "-c", "max_connections=300"])
      .withExposedPorts(5432)
      .withWaitStrategy(tc.Wait.forLogMessage(/database system is ready to accept connections/, 2))
      .start()
    return {
      adminUrl: `postgres://postgres@${container.getHost()}:${container.getMappedPort(5432)}/postgres`,
      source: "testcontainers"
    }
  } catch {
    return undefined
  }
}

/**
 * The server to test against, or `undefined` (after a loud banner) when there is none.
 * @since 0.1.0
 */
export const server = (): Promise<TestServer | undefined> => {
  cached ??= (async () => {
    const url = process.env.ACCORD_PG_URL
    if (url !== undefined && url !== "") return { adminUrl: url, source: "ACCORD_PG_URL" as const }
    const started = await startContainer()
    if (started !== undefined) return started
    if (process.env.ACCORD_REQUIRE_PG === "1") {
      throw new Error("ACCORD_REQUIRE_PG=1 but no PostgreSQL: set ACCORD_PG_URL")
    }
    banner("no ACCORD_PG_URL and no Docker engine answered")
    return undefined
  })()
  return cached
}

/**
 * The URL of database `name` on the server of `adminUrl`.
 * @since 0.1.0
 */
export const urlFor = (adminUrl: string, name: string): string => {
  const url = new URL(adminUrl)
  url.pathname = `/${name}`
  return url.toString()
}

const identifier = (name: string): string => {
  if (!/^[a-z_][a-z0-9_]{0,62}$/.test(name)) throw new Error(`bad database name ${name}`)
  return `"${name}"`
}

/**
 * Resolves every prepared transaction of database `name` (rolled back) so it can be dropped.
 * @since 0.1.0
 */
export const rollbackPrepared = async (adminUrl: string, name: string): Promise<number> => {
  const sql = postgres(urlFor(adminUrl, name), { max: 1, onnotice: () => {} })
  try {
    const rows = await sql<{ gid: string }[]>`
      select gid from pg_prepared_xacts where database = current_database()`
    for (const { gid } of rows) await sql.unsafe(`ROLLBACK PREPARED '${gid.replaceAll("'", "''")}'`)
    return rows.length
  } finally {
    await sql.end({ timeout: 5 })
  }
}

/**
 * Drops (if present) and creates database `name`; returns its URL.
 * @since 0.1.0
 */
export const createDatabase = async (adminUrl: string, name: string): Promise<string> => {
  await dropDatabase(adminUrl, name)
  const admin = postgres(adminUrl, { max: 1, onnotice: () => {} })
  try {
    await admin.unsafe(`create database ${identifier(name)}`)
  } finally {
    await admin.end({ timeout: 5 })
  }
  return urlFor(adminUrl, name)
}

/**
 * Drops database `name` after rolling back its prepared transactions and closing its sessions.
 * @since 0.1.0
 */
export const dropDatabase = async (adminUrl: string, name: string): Promise<void> => {
  const admin = postgres(adminUrl, { max: 1, onnotice: () => {} })
  try {
    const exists = await admin`select 1 from pg_database where datname = ${name}`
    if (exists.length === 0) return
    await rollbackPrepared(adminUrl, name)
    await admin.unsafe(`drop database if exists ${identifier(name)} with (force)`)
  } finally {
    await admin.end({ timeout: 5 })
  }
}

/**
 * Prepared transactions on the whole server (should be none after a test run).
 * @since 0.1.0
 */
export const preparedOnServer = async (
  adminUrl: string
): Promise<ReadonlyArray<{ gid: string; database: string }>> => {
  const admin = postgres(adminUrl, { max: 1, onnotice: () => {} })
  try {
    return await admin<{ gid: string; database: string }[]>`select gid, database from pg_prepared_xacts`
  } finally {
    await admin.end({ timeout: 5 })
  }
}
