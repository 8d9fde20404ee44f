/**
 * The benchmark's databases on the server, its connection pools with a statement counter, and
 * the server-wide WAL sync counter.
 *
 * @since 0.1.0
 */
import * as net from "node:net"
import postgres from "postgres"

/**
 * What was counted: statements, and among them PREPARE TRANSACTIONs, COMMIT PREPAREDs and
 * ROLLBACK PREPAREDs.
 * @since 0.1.0
 */
export interface Counts {
  statements: number
  prepares: number
  commitPrepared: number
  rollbackPrepared: number
}

const zero = (): Counts => ({ statements: 0, prepares: 0, commitPrepared: 0, rollbackPrepared: 0 })

/**
 * Statements sent by every pool of this process, classified. Counted on the driver's sockets, from
 * the protocol messages it writes (see `countingSocket`). `byDatabase` splits the same counts by
 * the database of the pool that sent them (a branch's own PREPAREs, say); statements counted by
 * `count` (the PGlite wrapper) are in the totals only.
 * @since 0.1.0
 */
export const counters: Counts & { byDatabase: Record<string, Counts> } = { ...zero(), byDatabase: {} }

/** @since 0.1.0 */
export const resetCounters = (): void => {
  counters.statements = 0
  counters.prepares = 0
  counters.commitPrepared = 0
  counters.rollbackPrepared = 0
  counters.byDatabase = {}
}

/** @since 0.1.0 */
export const snapshotCounters = (): Counts & { readonly byDatabase: Readonly<Record<string, Counts>> } => ({
  statements: counters.statements,
  prepares: counters.prepares,
  commitPrepared: counters.commitPrepared,
  rollbackPrepared: counters.rollbackPrepared,
  byDatabase: Object.fromEntries(Object.entries(counters.byDatabase).map(([k, v]) => [k, { ...v }]))
})

type Kind = "prepare" | "commitPrepared" | "rollbackPrepared" | "other"

/** What a statement is, by the start of its text. */
const kindOf = (head: string): Kind => {
  const upper = head.trimStart().slice(0, 24).toUpperCase()
  if (upper.startsWith("PREPARE TRANSACTION")) return "prepare"
  if (upper.startsWith("COMMIT PREPARED")) return "commitPrepared"
  if (upper.startsWith("ROLLBACK PREPARED")) return "rollbackPrepared"
  return "other"
}

const add = (into: Counts, kind: Kind): void => {
  into.statements++
  if (kind !== "other") into[kind === "prepare" ? "prepares" : kind]++
}

/** Counts one executed statement of kind `kind`, sent to `database` if known. */
const countKind = (kind: Kind, database?: string): void => {
  add(counters, kind)
  if (database === undefined) return
  const own = counters.byDatabase[database] ?? zero()
  counters.byDatabase[database] = own
  add(own, kind)
}

/**
 * Counts the statements of one message by its text (simple-protocol queries on the wire and the
 * PGlite wrapper). A multi-statement message (Accord's marker + PREPARE) counts each statement:
 * the table reports SQL statements, not round trips. Splitting on `;` is enough for the texts
 * measured here (no literal in them holds one).
 * @since 0.1.0
 */
export const count = (query: string, database?: string): void => {
  for (const statement of query.split(";"))
    if (statement.trim() !== "") countKind(kindOf(statement), database)
}

/** @since 0.1.0 */
export const applicationName = "accord-bench"

/** Where a NUL-terminated string that starts at `at` ends (the NUL's index). */
const cstringEnd = (buf: Uint8Array, at: number, limit: number): number => {
  let i = at
  while (i < limit && buf[i] !== 0) i++
  return i
}

/**
 * Counts the statements in the frontend protocol messages of one socket write: each `Execute` of
 * the extended protocol is one statement, classified by the `Parse` its `Bind` names (a named
 * statement is parsed once per connection and executed many times); a simple `Query` counts each
 * statement of its text. postgres.js writes whole messages per `write`; a connection's first
 * message (startup, or a cancel request) has no type byte and is skipped.
 */
const wireCounter = (database: string | undefined) => {
  let started = false
  const parsed = new Map<string, Kind>()
  let bound: Kind = "other"
  return (chunk: unknown): void => {
    if (!(chunk instanceof Uint8Array)) return
    const buf = Buffer.from(chunk.buffer, chunk.byteOffset, chunk.byteLength)
    let at = 0
    if (!started) {
      started = true
      if (buf.length < 4) return
      at = buf.readInt32BE(0)
    }
    while (at + 5 <= buf.length) {
      const type = buf[at]!
      const end = at + 1 + buf.readInt32BE(at + 1)
      const body = at + 5
      if (type === 0x51 /* Q */) {
        count(buf.toString("utf8", body, Math.max(body, end - 1)), database)
      } else if (type === 0x50 /* P */) {
        const nameEnd = cstringEnd(buf, body, end)
        const text = nameEnd + 1
        parsed.set(
          buf.toString("latin1", body, nameEnd),
          kindOf(buf.toString("latin1", text, Math.min(end, text + 24)))
        )
      } else if (type === 0x42 /* B */) {
        const portalEnd = cstringEnd(buf, body, end)
        const nameEnd = cstringEnd(buf, portalEnd + 1, end)
        bound = parsed.get(buf.toString("latin1", portalEnd + 1, nameEnd)) ?? "other"
      } else if (type === 0x45 /* E */) {
        countKind(bound, database)
      }
      at = end
    }
  }
}

/**
 * A connected TCP socket (or Unix socket, for a `host` that is a path) whose writes are counted by
 * `wireCounter`: postgres.js's `socket` option, which takes a socket already connected.
 *
 * Why not postgres.js's `debug` hook: with `debug` set, postgres.js captures a stack trace
 * (`new Error()`) for every query it builds, about 15-18 µs of client CPU per statement here,
 * 10% of `raw2pc`'s whole profile: the counter cost more than some of what it measured.
 */
const countingSocket = (options: {
  host: ReadonlyArray<string>
  port: ReadonlyArray<number>
  path?: string | false
  database?: string
}) =>
  new Promise<net.Socket>((resolve, reject) => {
    const socket =
      typeof options.path === "string" && options.path !== ""
        ? net.connect(options.path)
        : net.connect(options.port[0] ?? 5432, options.host[0] ?? "localhost")
    const counted = wireCounter(options.database)
    const write = socket.write.bind(socket) as (...args: Array<unknown>) => boolean
    socket.write = ((...args: Array<unknown>) => {
      counted(args[0])
      return write(...args)
    }) as typeof socket.write
    socket.once("connect", () => {
      socket.off("error", reject)
      resolve(socket)
    })
    socket.once("error", reject)
  })

/**
 * A pool on `url` whose statements are counted; `connection` adds run-time parameters of its
 * sessions.
 * @since 0.1.0
 */
export const pool = (
  url: string,
  max: number,
  connection: Readonly<Record<string, string>> = {}
): postgres.Sql => {
  const options: postgres.Options<{}> & { readonly socket: typeof countingSocket } = {
    max,
    connect_timeout: 10,
    idle_timeout: 0,
    onnotice: () => {},
    // postgres.js's documented `socket` option (a function returning a connected socket), missing
    // from its type declarations.
    socket: countingSocket,
    connection: { application_name: applicationName, lock_timeout: 2000, ...connection }
  }
  return postgres(url, options)
}

/** @since 0.1.0 */
export const urlFor = (adminUrl: string, name: string): string => {
  const url = new URL(adminUrl)
  url.pathname = `/${name}`
  return url.toString()
}

/**
 * The three databases: two banks and the coordinator.
 * @since 0.1.0
 */
export interface Databases {
  readonly a: string
  readonly b: string
  readonly coordinator: string
}

/** Accounts per bank; transfers pick two at random, so lock conflicts are rare. @since 0.1.0 */
export const accounts = 10_000

/**
 * The names of the three databases under `prefix`.
 * @since 0.1.0
 */
export const databaseNames = (prefix: string) =>
  ({ a: `${prefix}a`, b: `${prefix}b`, coordinator: `${prefix}coordinator` }) as const

/**
 * Claims the benchmark's databases under `prefix` for this run: a session advisory lock in the admin
 * URL's database, held by one connection until `release` (or until the process exits). A second run
 * on the same databases is refused before it touches anything: its set-up would roll back the first
 * run's prepared branches as a killed run's leftovers (a COMMIT PREPARED of that run then fails,
 * `prepared transaction ... is busy` or `does not exist`), re-seed its accounts under it, and both
 * runs' WAL and statement figures would mix.
 * @since 0.1.0
 */
export const claim = async (adminUrl: string, prefix: string): Promise<{ release: () => Promise<void> }> => {
  const key = `accord-bench:${prefix}`
  const holder = postgres(adminUrl, { max: 1, onnotice: () => {}, connect_timeout: 5 })
  try {
    const [row] = await holder<{ ok: boolean }[]>`SELECT pg_try_advisory_lock(hashtext(${key})) AS ok`
    if (row?.ok !== true) {
      const [other] = await holder<{ pid: number | null }[]>`
        SELECT (SELECT l.pid FROM pg_locks l WHERE l.locktype = 'advisory' AND l.granted
          AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database())
          AND l.objid = (hashtext(${key})::bigint & 4294967295)::oid LIMIT 1) AS pid`
      throw new Error(
        `another benchmark run is using the databases ${prefix}* on this server (its session: pid ${other?.pid ?? "?"}); wait for it to end, or pass another --db-prefix`
      )
    }
  } catch (error) {
    await holder.end({ timeout: 5 })
    throw error
  }
  return { release: () => holder.end({ timeout: 5 }) }
}

/**
 * Creates (if missing) the databases and (re)creates the tables; resolves leftovers of a killed run.
 * @since 0.1.0
 */
export const setup = async (adminUrl: string, prefix: string): Promise<Databases> => {
  const names = databaseNames(prefix)
  const admin = postgres(adminUrl, { max: 1, onnotice: () => {} })
  try {
    const [setting] = await admin<
      { value: number }[]
    >`SELECT current_setting('max_prepared_transactions')::int AS value`
    if ((setting?.value ?? 0) === 0) {
      throw new Error(
        "max_prepared_transactions = 0 on the server: ALTER SYSTEM SET max_prepared_transactions = 64 and restart"
      )
    }
    for (const name of Object.values(names)) {
      const exists = await admin`SELECT 1 FROM pg_database WHERE datname = ${name}`
      if (exists.length === 0) await admin.unsafe(`CREATE DATABASE "${name}"`)
    }
  } finally {
    await admin.end({ timeout: 5 })
  }
  const urls = {
    a: urlFor(adminUrl, names.a),
    b: urlFor(adminUrl, names.b),
    coordinator: urlFor(adminUrl, names.coordinator)
  }
  for (const url of [urls.a, urls.b]) {
    const sql = postgres(url, { max: 1, onnotice: () => {} })
    try {
      // Branches a killed run left prepared (these databases belong to the benchmark, whose data is
      // re-seeded below): roll them all back, so no slot of max_prepared_transactions stays taken.
      await rollBackAllPrepared(sql)
      await sql.unsafe(`DROP TABLE IF EXISTS accord_branch`)
      await sql.unsafe(`DROP TABLE IF EXISTS accounts`)
      await sql.unsafe(
        `CREATE TABLE accounts (id integer PRIMARY KEY, balance bigint NOT NULL CHECK (balance >= 0))`
      )
      await sql.unsafe(
        `INSERT INTO accounts (id, balance) SELECT g, 1000000000 FROM generate_series(1, ${accounts}) AS g`
      )
      await sql.unsafe(`VACUUM ANALYZE accounts`)
    } finally {
      await sql.end({ timeout: 5 })
    }
  }
  const coordinator = postgres(urls.coordinator, { max: 1, onnotice: () => {} })
  try {
    // The logs of earlier runs name branches rolled back above: start from empty logs.
    await coordinator.unsafe(`DROP TABLE IF EXISTS raw_decisions, accord_decision, accord_heuristic`)
    await coordinator.unsafe(
      `CREATE TABLE raw_decisions (tx_id text PRIMARY KEY, decision text NOT NULL, gids text[] NOT NULL, decided_at timestamptz NOT NULL DEFAULT now())`
    )
  } finally {
    await coordinator.end({ timeout: 5 })
  }
  return urls
}

/**
 * The server's WAL sync count (`pg_stat_wal.wal_sync`, cluster-wide), read once this process's
 * benchmark backends have exited so their statistics are flushed.
 * @since 0.1.0
 */
export const walSyncs = async (adminUrl: string): Promise<number> => {
  const admin = postgres(adminUrl, { max: 1, onnotice: () => {} })
  try {
    for (let i = 0; i < 100; i++) {
      const [row] = await admin<{ n: number }[]>`
        SELECT count(*)::int AS n FROM pg_stat_activity WHERE application_name = ${applicationName}`
      if ((row?.n ?? 0) === 0) break
      await new Promise((r) => setTimeout(r, 20))
    }
    const [row] = await admin<{ wal_sync: string }[]>`SELECT wal_sync::text FROM pg_stat_wal`
    return Number(row?.wal_sync ?? 0)
  } finally {
    await admin.end({ timeout: 5 })
  }
}

/**
 * Random distinct accounts `[x, y]`.
 * @since 0.1.0
 */
export const pickAccounts = (): readonly [number, number] => {
  const x = 1 + Math.floor(Math.random() * accounts)
  let y = 1 + Math.floor(Math.random() * accounts)
  if (y === x) y = (y % accounts) + 1
  return [x, y]
}

const rollBackAllPrepared = async (sql: postgres.Sql): Promise<number> => {
  const leftovers = await sql<{ gid: string }[]>`
    SELECT gid FROM pg_prepared_xacts WHERE database = current_database()`
  for (const { gid } of leftovers) await sql.unsafe(`ROLLBACK PREPARED '${gid.replaceAll("'", "''")}'`)
  return leftovers.length
}

/**
 * Rolls back every transaction left prepared in the benchmark's own databases `urls` (a run that
 * ends with some reports them first); returns how many.
 * @since 0.1.0
 */
export const rollBackLeftovers = async (urls: ReadonlyArray<string>): Promise<number> => {
  let n = 0
  for (const url of urls) {
    const sql = postgres(url, { max: 1, onnotice: () => {} })
    try {
      n += await rollBackAllPrepared(sql)
    } finally {
      await sql.end({ timeout: 5 })
    }
  }
  return n
}

/**
 * Prepared transactions left in the given databases (should be 0 after a run).
 * @since 0.1.0
 */
export const preparedIn = async (adminUrl: string, urls: ReadonlyArray<string>): Promise<number> => {
  const admin = postgres(adminUrl, { max: 1, onnotice: () => {} })
  try {
    const names = urls.map((u) => new URL(u).pathname.slice(1))
    const [row] = await admin<{ n: number }[]>`
      SELECT count(*)::int AS n FROM pg_prepared_xacts WHERE database IN ${admin(names)}`
    return row?.n ?? 0
  } finally {
    await admin.end({ timeout: 5 })
  }
}
