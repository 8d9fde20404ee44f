/**
 * The one error the demo shows a user: what went wrong and what to do, on one line.
 *
 * @since 0.1.0
 */
import { Data } from "effect"

/**
 * A failure the user can act on. `message` says what happened and what to do.
 * @since 0.1.0
 */
export class DemoError extends Data.TaggedError("DemoError")<{ readonly message: string }> {}

const codeOf = (e: unknown): string | undefined => {
  if (typeof e !== "object" || e === null) return undefined
  const code = (e as { code?: unknown }).code
  return typeof code === "string" ? code : undefined
}

const textOf = (e: unknown): string => {
  if (e instanceof Error) return e.message.split("\n")[0]!
  if (typeof e === "object" && e !== null && "message" in e)
    return String((e as { message: unknown }).message)
  return String(e)
}

/**
 * Turns a driver error met while connecting to `where` into a message with the fix.
 * @since 0.1.0
 */
export const fromConnectError = (
  where: string,
  e: unknown,
  source: "--pg" | "ACCORD_PG_URL" = "--pg"
): DemoError => {
  const code = codeOf(e)
  const text = textOf(e)
  // The URL came from --pg, or from ACCORD_PG_URL when no --pg was given: say which to fix.
  const fix =
    source === "--pg"
      ? "pass another --pg URL (omit --pg to use embedded PGlite)"
      : "fix ACCORD_PG_URL or pass --pg URL (pass --data-dir DIR, or set ACCORD_PG_URL= empty, to use embedded PGlite)"
  const flag = source === "--pg" ? "--pg" : "ACCORD_PG_URL"
  switch (code) {
    case "ECONNREFUSED":
    case "ENOTFOUND":
    case "EHOSTUNREACH":
    case "ETIMEDOUT":
    case "CONNECT_TIMEOUT":
    case "CONNECTION_CLOSED":
    case "CONNECTION_ENDED":
    case "CONNECTION_DESTROYED":
    case "EAI_AGAIN":
      return new DemoError({
        message: `cannot reach PostgreSQL at ${where} (${code}): start the server or ${fix}`
      })
    case "28P01":
    case "28000":
      return new DemoError({
        message: `PostgreSQL at ${where} refused the login (${text}): fix the user/password in ${flag}`
      })
    case "3D000":
      return new DemoError({
        message: `database in ${where} does not exist (${text}): point ${flag} at an existing database such as /postgres`
      })
    case "42501":
      return new DemoError({
        message: `PostgreSQL at ${where} refused (${text}): the ${flag} user must be allowed to create databases (a superuser)`
      })
    default:
      return new DemoError({ message: `PostgreSQL at ${where} failed: ${text}${code ? ` (${code})` : ""}` })
  }
}

/**
 * A URL with its password hidden, for messages.
 * @since 0.1.0
 */
export const redact = (url: string): string => {
  try {
    const u = new URL(url)
    if (u.password !== "") u.password = "***"
    return u.toString()
  } catch {
    return "<invalid URL>"
  }
}
