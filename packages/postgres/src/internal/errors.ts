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

const LOST_CODES = new Set([
  // admin_shutdown, crash_shutdown, cannot_connect_now, connection exceptions
  "57P01",
  "57P02",
  "57P03",
  "08000",
  "08003",
  "08006",
  "08001",
  "08004",
  // node / postgres.js
  "ECONNRESET",
  "ECONNREFUSED",
  "EPIPE",
  "ETIMEDOUT",
  "CONNECTION_CLOSED",
  "CONNECTION_ENDED",
  "CONNECTION_DESTROYED",
  "CONNECT_TIMEOUT"
])

const field = (error: unknown, key: string): unknown =>
  typeof error === "object" && error !== null && key in error
    ? (error as Record<string, unknown>)[key]
    : undefined

/** Reduces any thrown value to a `PgFailure`. */
export const toFailure = (error: unknown): PgFailure => {
  const code = field(error, "code")
  const codeText = typeof code === "string" ? code : undefined
  const sqlState = codeText !== undefined && /^[0-9A-Z]{5}$/.test(codeText) ? codeText : undefined
  const rawMessage = error instanceof Error ? error.message : String(error)
  const message = sqlState === undefined ? rawMessage : `${sqlState} ${rawMessage}`
  return { sqlState, message, connectionLost: codeText !== undefined && LOST_CODES.has(codeText) }
}

/** SQLSTATE 42704: undefined_object (the gid is not prepared). */
export const UNDEFINED_OBJECT = "42704"
