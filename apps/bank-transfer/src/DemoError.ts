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
export const fromConnectError = (where: string, e: unknown): DemoError => {
  const code = codeOf(e)
  const text = textOf(e)
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
        message: `cannot reach PostgreSQL at ${where} (${code}): start the server or pass another --pg URL (omit --pg to use embedded PGlite)`
      })
    case "28P01":
    case "28000":
      return new DemoError({
        message: `PostgreSQL at ${where} refused the login (${text}): fix the user/password in --pg`
      })
    case "3D000":
      return new DemoError({
        message: `database in ${where} does not exist (${text}): point --pg at an existing database such as /postgres`
      })
    case "42501":
      return new DemoError({
        message: `PostgreSQL at ${where} refused (${text}): the --pg user must be allowed to create databases (a superuser)`
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
