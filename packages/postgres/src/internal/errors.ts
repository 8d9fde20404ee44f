/**
 * Reading driver errors (postgres.js and PGlite) as SQLSTATE + message, and telling a lost
 * connection (the statement may have run: in doubt) from a definite refusal.
 */

/** A driver error reduced to what Accord reports. */
export interface PgFailure {
  readonly sqlState: string | undefined
  readonly message: string
  /** The connection dropped: the server may or may not have executed the statement. */
  readonly connectionLost: boolean
}

/**
 * Errors of the driver or the network: the socket closed, or could not be written or reached
 * (postgres.js's CONNECTION_* codes, node's network errors). The statement may have run.
 */
const DRIVER_LOST = new Set([
  "ECONNRESET",
  "ECONNREFUSED",
  "ECONNABORTED",
  "EPIPE",
  "ETIMEDOUT",
  "EHOSTUNREACH",
  "ENETUNREACH",
  "ENETDOWN",
  "ENOTCONN",
  "CONNECTION_CLOSED",
  "CONNECTION_ENDED",
  "CONNECTION_DESTROYED",
  "CONNECT_TIMEOUT"
])

/**
 * SQLSTATEs of a lost connection (admin_shutdown, crash_shutdown, cannot_connect_now, connection
 * exceptions), read as such only for an error that carries no severity (see `toFailure`).
 */
const LOST_SQLSTATES = new Set(["57P01", "57P02", "57P03", "08000", "08003", "08006", "08001", "08004"])

const field = (error: unknown, key: string): unknown =>
  typeof error === "object" && error !== null && key in error
    ? (error as Record<string, unknown>)[key]
    : undefined

/**
 * The severity a server gave its error (postgres.js: `severity`, never translated, else the
 * translated `severity_local`; PGlite: `severity`); `undefined` for an error that is not a server's.
 */
const severityOf = (error: unknown): string | undefined => {
  const severity = field(error, "severity") ?? field(error, "severity_local")
  return typeof severity === "string" ? severity : undefined
}

/**
 * Whether an error tells that the connection is gone (the statement may have run: in doubt).
 *
 * - A driver or network error (`DRIVER_LOST`): yes.
 * - A server's error: only when its severity is FATAL or PANIC (the server ends the session with
 *   it: 57P01 admin shutdown, an idle-session timeout, ...). The SQLSTATE alone does not tell: an
 *   ordinary ERROR may carry a connection class code on a healthy session (`dblink_connect` to a
 *   server that is down raises 08001, `RAISE ... USING ERRCODE = '08006'` anything), and read as
 *   lost, the branch's connection was neither rolled back nor released: it stayed idle in an
 *   aborted transaction and the pool lost it for good.
 * - An error with a SQLSTATE but no severity is no server's message (a stand-in, or a wrapper that
 *   copied the code): read by its code, as before.
 */
const isConnectionLost = (
  code: string | undefined,
  sqlState: string | undefined,
  error: unknown
): boolean => {
  if (code === undefined) return false
  if (DRIVER_LOST.has(code)) return true
  if (sqlState === undefined) return false
  const severity = severityOf(error)
  if (severity === undefined) return LOST_SQLSTATES.has(sqlState)
  return severity === "FATAL" || severity === "PANIC"
}

/** Reduces any thrown value to a `PgFailure`. */
export const toFailure = (error: unknown): PgFailure => {
  const code = field(error, "code")
  const codeText = typeof code === "string" ? code : undefined
  const sqlState = codeText !== undefined && /^[0-9A-Z]{5}$/.test(codeText) ? codeText : undefined
  const rawMessage = error instanceof Error ? error.message : String(error)
  const message = sqlState === undefined ? rawMessage : `${sqlState} ${rawMessage}`
  return { sqlState, message, connectionLost: isConnectionLost(codeText, sqlState, error) }
}

/** SQLSTATE 42704: undefined_object (the gid is not prepared). */
export const UNDEFINED_OBJECT = "42704"
